//! The landlock domain the helper serves from.
//!
//! Built from the helper's own [`Roots`] at start-up ([`grants`]) and applied once, before any
//! thread exists, so every connection thread and every writer thread inherits it:
//! - **read** the sysfs trees the helper reads (`bus/pci`, `devices`, `kernel/iommu_groups`,
//!   `class/{block,net,nvme-subsystem}`, `fs/btrfs`), `/proc/self`, `/proc/swaps` (the
//!   in-use guards) and `/etc/passwd`, `/etc/group` (an admin's `explain --user`), each under its
//!   root;
//! - **write** only the sysfs files the helper writes: `bus/pci/drivers_probe`, each loaded
//!   driver's `unbind`, each device's `driver_override` — found at start-up, so a driver loaded
//!   later is not writable until the next start (the helper exits when idle);
//! - **read-write** the state directory, and read-write on `/dev/vfio` (opening a group node is
//!   the kernel's "is a VM using it?" check; handing a node over is a chown, which landlock does
//!   not govern);
//! - **nothing else**: no execute anywhere, no TCP/UDP bind or connect (ABI ≥ 4), abstract Unix
//!   sockets and signals scoped to the domain (ABI ≥ 6).
//!
//! One target ABI, [`TARGET_ABI`], the newest the `landlock` crate knows; older kernels get what
//! they support (best effort), down to the policy's `sandbox_floor`, and the start log names what
//! is missing. A kernel without landlock is refused unless the policy says `allow_unsandboxed`.

use std::path::{Path, PathBuf};

use crate::roots::Roots;

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, LandlockStatus, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope,
};

/// The landlock ABI the helper is written for.
pub const TARGET_ABI: ABI = ABI::V10;

/// The paths a ruleset grants, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Read files and list directories beneath these.
    pub read: Vec<PathBuf>,
    /// Write (and truncate) exactly these files.
    pub write_files: Vec<PathBuf>,
    /// Read, write, create and remove files beneath these.
    pub read_write: Vec<PathBuf>,
    /// Open device nodes beneath these for reading and writing.
    pub devices: Vec<PathBuf>,
}

/// The sandbox could not be set up as required; the helper refuses to serve.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("building the landlock ruleset: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    #[error(
        "this kernel has no landlock (status: {0}); vfio-gated refuses to serve unsandboxed. Boot a kernel with landlock (lsm=...,landlock) or, knowingly, set allow_unsandboxed = true in [settings]"
    )]
    Unavailable(String),
    #[error(
        "this kernel's landlock ABI is {abi}, below the policy's sandbox_floor of {floor}; missing: {missing}"
    )]
    BelowFloor {
        abi: i32,
        floor: u8,
        missing: String,
    },
}

/// How much of the ruleset the kernel enforces (landlock's [`RulesetStatus`], after the policy's
/// floor and `allow_unsandboxed` have been applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Everything the helper asks for ([`TARGET_ABI`]).
    Full,
    /// What this kernel's ABI supports, at or above the policy's `sandbox_floor`.
    Partial,
    /// Nothing: no landlock, and the policy says `allow_unsandboxed = true`.
    Unsandboxed,
}

impl std::fmt::Display for Status {
    /// The start line's `sandbox=` value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Full => "full",
            Status::Partial => "partial",
            Status::Unsandboxed => "none",
        })
    }
}

/// How the sandbox ended up, for the start log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The kernel's landlock ABI (0: none).
    pub abi: i32,
    pub status: Status,
    /// What the kernel's ABI lacks compared with [`TARGET_ABI`].
    pub missing: Vec<&'static str>,
}

/// What the helper's domain grants for the trees at `roots`. Call it while every path is still
/// visible: the writable files are listed from the sysfs tree as it is now.
pub fn grants(roots: &Roots) -> Grants {
    let sys = &roots.sys;
    let mut g = Grants::default();
    for rel in [
        "bus/pci",
        "devices",
        "kernel/iommu_groups",
        "class/block",
        "class/net",
        "class/nvme-subsystem",
        "fs/btrfs",
    ] {
        g.read.push(sys.join(rel));
    }
    g.read.push(roots.proc.join("self"));
    g.read.push(roots.proc.join("swaps"));
    // Accounts, for an admin's `explain --user`.
    g.read.push(roots.passwd());
    g.read.push(roots.group());

    let pci = sys.join("bus/pci");
    g.write_files.push(pci.join("drivers_probe"));
    g.write_files
        .extend(children(&pci.join("drivers")).map(|d| d.join("unbind")));
    g.write_files
        .extend(children(&pci.join("devices")).map(|d| d.join("driver_override")));
    g.write_files.retain(|p| p.exists());

    g.read_write.push(roots.state.clone());
    g.devices.push(roots.vfio.clone());
    g
}

fn children(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
}

fn rules(
    paths: &[PathBuf],
    access: BitFlags<AccessFs>,
) -> impl Iterator<Item = Result<PathBeneath<PathFd>, landlock::RulesetError>> + '_ {
    // A path that does not exist on this host (no btrfs, no nvme-subsystem class) grants
    // nothing: skipping it only narrows the sandbox.
    paths.iter().filter_map(move |p| {
        PathFd::new(p)
            .ok()
            .map(|fd| Ok(PathBeneath::new(fd, access)))
    })
}

/// The helper's ruleset for `grants`, not yet enforced. Tests apply it in a child process.
pub fn ruleset(grants: &Grants) -> Result<RulesetCreated, SandboxError> {
    let abi = TARGET_ABI;
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let write_file = AccessFs::WriteFile | AccessFs::Truncate;
    let read_write = read | write_file | AccessFs::MakeReg | AccessFs::RemoveFile;
    let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::ReadDir;
    let created = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?
        .add_rules(rules(&grants.read, read))?
        .add_rules(rules(&grants.write_files, write_file))?
        .add_rules(rules(&grants.read_write, read_write))?
        .add_rules(rules(&grants.devices, device))?;
    Ok(created)
}

/// What a kernel of landlock ABI `abi` lacks that the helper would use.
pub fn missing_features(abi: i32) -> Vec<&'static str> {
    [
        (1, "filesystem access control (ABI 1)"),
        (2, "control of moving files between directories (ABI 2)"),
        (3, "control of truncation (ABI 3)"),
        (4, "denial of TCP bind and connect (ABI 4)"),
        (5, "control of device ioctls (ABI 5)"),
        (6, "scoping of abstract Unix sockets and signals (ABI 6)"),
        (8, "denial of UDP (ABI 8)"),
    ]
    .into_iter()
    .filter(|(v, _)| abi < *v)
    .map(|(_, what)| what)
    .collect()
}

/// Enforces the helper's ruleset on the calling thread (and every thread it creates later).
pub fn enforce(
    grants: &Grants,
    floor: u8,
    allow_unsandboxed: bool,
) -> Result<Report, SandboxError> {
    let status = ruleset(grants)?.restrict_self()?;
    let abi = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi as i32,
        LandlockStatus::NotEnabled | LandlockStatus::NotImplemented => 0,
    };
    let missing = missing_features(abi);
    let report = |status| Report {
        abi,
        status,
        missing: missing.clone(),
    };
    match status.ruleset {
        RulesetStatus::NotEnforced if allow_unsandboxed => Ok(report(Status::Unsandboxed)),
        RulesetStatus::NotEnforced => {
            Err(SandboxError::Unavailable(format!("{:?}", status.landlock)))
        }
        _ if abi < i32::from(floor) => Err(SandboxError::BelowFloor {
            abi,
            floor,
            missing: missing.join(", "),
        }),
        RulesetStatus::PartiallyEnforced => Ok(report(Status::Partial)),
        RulesetStatus::FullyEnforced => Ok(report(Status::Full)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_line_words_for_each_status() {
        // `sandbox=full|partial|none` on the start line (docs/audit.md).
        let words = [Status::Full, Status::Partial, Status::Unsandboxed].map(|s| s.to_string());
        assert_eq!(words, ["full", "partial", "none"]);
    }

    #[test]
    fn every_root_reaches_the_grants() {
        let roots = Roots {
            sys: "/r/sys".into(),
            proc: "/r/proc".into(),
            etc: "/r/accounts".into(),
            state: "/r/state".into(),
            vfio: "/r/vfio".into(),
        };
        let g = grants(&roots);
        for read in [
            "/r/sys/bus/pci",
            "/r/proc/self",
            "/r/proc/swaps",
            "/r/accounts/etc/passwd",
            "/r/accounts/etc/group",
        ] {
            assert!(g.read.contains(&PathBuf::from(read)), "{read}: {g:?}");
        }
        assert_eq!(g.read_write, [PathBuf::from("/r/state")]);
        assert_eq!(g.devices, [PathBuf::from("/r/vfio")]);
        // Nothing outside the roots: the production paths appear only through Roots::default.
        let all = g
            .read
            .iter()
            .chain(&g.write_files)
            .chain(&g.read_write)
            .chain(&g.devices);
        for p in all {
            assert!(p.starts_with("/r"), "{p:?} is outside the roots");
        }
    }
}
