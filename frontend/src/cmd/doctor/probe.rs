//! What `doctor` reads, all of it read-only and none of it privileged: the kernel's view of the
//! IOMMU, interrupts, modules and LSMs (sysfs and procfs), `/dev/vfio/vfio`, the files that load
//! modules and enable the socket unit, the policy, the caller's memlock limit and, through the
//! socket, the helper. Every tree has a root (`--sysfs-root`, `--proc-root`, `--dev-root`, and
//! `--etc-root` for the rest of the filesystem: `/etc`, `/usr/lib`, `/lib/modules`, `/run`), so
//! the tests run it on fixture trees.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use vfio_gate_policy::{NameResolver, Policy, PolicyError};
use vfio_gate_protocol::{DeviceInfo, Request, Response};

use crate::client::Client;
use crate::cmd::unexpected;
use crate::error::Error;
use crate::memlock::Limit;
use crate::offline::{self, Host};
use crate::sys;

/// The modules a VM with a device needs: the VFIO core, the driver that hands devices over, and
/// the one that parks their group companions (module names as `/sys/module` spells them).
pub const MODULES: [&str; 3] = ["vfio", "vfio_pci", "pci_stub"];

/// Where modules-load.d files live, in systemd-modules-load's order (the first file of a name
/// wins), below the filesystem root.
pub const MODULES_LOAD_DIRS: [&str; 5] = [
    "etc/modules-load.d",
    "run/modules-load.d",
    "usr/local/lib/modules-load.d",
    "usr/lib/modules-load.d",
    "lib/modules-load.d",
];

/// Where an installed `vfio-gate.socket` may be, below the filesystem root.
pub const UNIT_DIRS: [&str; 4] = [
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
    "usr/local/lib/systemd/system",
];

/// The unit that makes systemd listen on the helper's socket.
pub const SOCKET_UNIT: &str = "vfio-gate.socket";

/// The trees `doctor` reads.
#[derive(Debug, Clone)]
pub struct Roots {
    /// `/sys`.
    pub sys: PathBuf,
    /// `/proc`.
    pub proc: PathBuf,
    /// `/dev`.
    pub dev: PathBuf,
    /// `/`, for `/etc`, `/usr/lib`, `/lib/modules`, `/run`.
    pub root: PathBuf,
}

/// A kernel module's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModState {
    /// Loaded now (`/sys/module/NAME/initstate`).
    Loaded,
    /// Part of the kernel image (`modules.builtin`).
    BuiltIn,
    /// Not loaded; the module directory has it.
    Available,
    /// Not loaded, and the module directory does not have it.
    Missing,
    /// Not loaded, and there is no module directory to tell.
    Unknown,
}

/// One of [`MODULES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: &'static str,
    pub state: ModState,
    /// The modules-load.d file (or `/etc/modules`) that loads it at boot.
    pub at_boot: Option<PathBuf>,
}

/// `/dev/vfio/vfio`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Missing,
    /// Something else than a character device.
    NotCharDevice,
    CharDevice {
        mode: u32,
        uid: u32,
    },
}

/// The helper's socket and its unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub path: PathBuf,
    /// The path exists and is a socket (`Some(false)`: exists, not a socket).
    pub present: Option<bool>,
    /// systemd is the init system (`/run/systemd/system` exists).
    pub systemd: bool,
    /// Where `vfio-gate.socket` is installed.
    pub unit: Option<PathBuf>,
    /// `sockets.target.wants/vfio-gate.socket` exists.
    pub enabled: bool,
}

/// Everything the checks look at.
#[derive(Debug)]
pub struct Facts {
    pub roots: Roots,
    /// `uname -r`.
    pub release: Option<String>,
    /// The kernel's parameters (what comes before `--` on `/proc/cmdline`).
    pub cmdline: Option<Vec<String>>,
    /// `vendor_id` of `/proc/cpuinfo`: GenuineIntel, AuthenticAMD, …
    pub cpu_vendor: Option<String>,
    /// How many IOMMU groups the kernel made.
    pub groups: usize,
    /// The ACPI tables that describe an IOMMU: DMAR (Intel VT-d), IVRS (AMD-Vi).
    pub dmar: bool,
    pub ivrs: bool,
    /// Per Intel IOMMU unit: whether its extended capabilities have interrupt remapping (bit 3).
    pub intel_ir: Vec<bool>,
    /// The interrupt chips of `/proc/interrupts` that remap (`IR-PCI-MSI`, `IR-IO-APIC`).
    pub ir_chips: BTreeSet<String>,
    /// `vfio_iommu_type1`'s `allow_unsafe_interrupts`, when the module is there to say.
    pub allow_unsafe_interrupts: Option<bool>,
    pub modules: Vec<Module>,
    /// The module directory of the running kernel, if there is one.
    pub modules_dir: Option<PathBuf>,
    pub vfio_node: Node,
    pub socket: Socket,
    /// `/sys/kernel/security/lsm`: the LSMs enabled at boot.
    pub lsm: Option<String>,
    /// The running kernel's landlock ABI (see [`sys::landlock_abi`]).
    pub landlock: Result<i32, Errno>,
    pub memlock: Result<Limit, Errno>,
    /// The policy file's path, and the policy as the helper would load it.
    pub policy_path: PathBuf,
    pub policy: Result<Policy, PolicyError>,
    /// The helper's answer to a list request.
    pub helper: Result<Vec<DeviceInfo>, Error>,
    /// Who a limits.d line names for the caller: `@vm-users` when they are in that group, else
    /// their user name.
    pub limits_subject: String,
}

impl Facts {
    /// Reads everything. Never fails: what cannot be read is a fact too.
    pub fn read(roots: Roots, host: &Host, policy_path: &Path, client: &Client) -> Self {
        let proc_file = |rel: &str| std::fs::read_to_string(roots.proc.join(rel)).ok();
        let release = proc_file("sys/kernel/osrelease")
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty());
        let cmdline = proc_file("cmdline").map(|c| kernel_params(&c));
        let cpu_vendor = proc_file("cpuinfo").and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("vendor_id"))
                .and_then(|rest| rest.split(':').nth(1))
                .map(|v| v.trim().to_owned())
        });
        let acpi = roots.sys.join("firmware/acpi/tables");
        let modules_dir = release.as_deref().and_then(|r| modules_dir(&roots.root, r));
        let modules = modules(&roots, modules_dir.as_deref());
        let socket = socket(&roots.root, client.socket());
        let policy = host.load_policy(policy_path);
        let limits_subject = limits_subject(&host.etc);
        Facts {
            release,
            cmdline,
            cpu_vendor,
            groups: count_dir(&roots.sys.join("kernel/iommu_groups")),
            // The tables are root-only (0400), but anyone may see that they exist.
            dmar: acpi.join("DMAR").symlink_metadata().is_ok(),
            ivrs: acpi.join("IVRS").symlink_metadata().is_ok(),
            intel_ir: intel_ir(&roots.sys),
            ir_chips: proc_file("interrupts")
                .map(|t| ir_chips(&t))
                .unwrap_or_default(),
            allow_unsafe_interrupts: std::fs::read_to_string(
                roots
                    .sys
                    .join("module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"),
            )
            .ok()
            .map(|v| matches!(v.trim(), "Y" | "y" | "1")),
            modules,
            modules_dir,
            vfio_node: node(&roots.dev.join("vfio/vfio")),
            socket,
            lsm: std::fs::read_to_string(roots.sys.join("kernel/security/lsm"))
                .ok()
                .map(|l| l.trim().to_owned()),
            landlock: sys::landlock_abi(),
            memlock: Limit::current(),
            policy_path: policy_path.to_owned(),
            policy,
            helper: list(client),
            limits_subject,
            roots,
        }
    }

    /// A kernel parameter's value (`intel_iommu=on` → `on`); the last one counts, as in the
    /// kernel. `Some("")` for a parameter without a value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.cmdline
            .as_ref()?
            .iter()
            .rev()
            .find_map(|p| match p.split_once('=') {
                Some((k, v)) if k == name => Some(v),
                None if p == name => Some(""),
                _ => None,
            })
    }
}

/// The kernel's own parameters: the words of `/proc/cmdline` before `--` (the rest is init's).
pub fn kernel_params(cmdline: &str) -> Vec<String> {
    cmdline
        .split_whitespace()
        .take_while(|w| *w != "--")
        .map(str::to_owned)
        .collect()
}

/// The remapping interrupt chips named in `/proc/interrupts`: `IR-PCI-MSI-0000:00:02.0` and
/// `IR-PCI-MSI` are both `IR-PCI-MSI`.
pub fn ir_chips(interrupts: &str) -> BTreeSet<String> {
    interrupts
        .split_whitespace()
        .filter(|w| w.starts_with("IR-"))
        .map(|w| w.split('-').take(3).collect::<Vec<_>>().join("-"))
        .collect()
}

fn count_dir(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| rd.filter_map(Result::ok).count())
}

/// Bit 3 (IR) of each Intel IOMMU unit's extended capability register
/// (`/sys/class/iommu/dmarN/intel-iommu/ecap`, hex).
fn intel_ir(sys: &Path) -> Vec<bool> {
    let Ok(rd) = std::fs::read_dir(sys.join("class/iommu")) else {
        return Vec::new();
    };
    let mut units: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
    units.sort();
    units
        .iter()
        .filter_map(|u| std::fs::read_to_string(u.join("intel-iommu/ecap")).ok())
        .filter_map(|e| u64::from_str_radix(e.trim().trim_start_matches("0x"), 16).ok())
        .map(|ecap| ecap & (1 << 3) != 0)
        .collect()
}

/// `/lib/modules/RELEASE` (or `/usr/lib/modules/RELEASE`), if it exists.
fn modules_dir(root: &Path, release: &str) -> Option<PathBuf> {
    ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(release))
        .find(|d| d.is_dir())
}

/// A module's name as `/sys/module` spells it, from a name or a path in `modules.dep` and
/// `modules.builtin` (`kernel/drivers/vfio/pci/vfio-pci.ko.xz` → `vfio_pci`).
pub fn module_name(word: &str) -> String {
    let base = word.rsplit('/').next().unwrap_or(word);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// The module names a modules.dep-like file lists (the part before each line's colon, or the
/// whole line for modules.builtin).
fn listed_modules(file: &Path) -> Option<BTreeSet<String>> {
    let text = std::fs::read_to_string(file).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect(),
    )
}

/// The modules that `modules-load.d` (or Debian's `/etc/modules`) loads at boot, each with the
/// file that names it.
pub fn boot_modules(root: &Path) -> BTreeMap<String, PathBuf> {
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in MODULES_LOAD_DIRS {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".conf") {
                // An earlier directory's file of the same name overrides this one.
                files.entry(name).or_insert_with(|| e.path());
            }
        }
    }
    let mut sources: Vec<PathBuf> = files.into_values().collect();
    sources.push(root.join("etc/modules"));
    let mut out = BTreeMap::new();
    for file in sources {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            let word = line.split_whitespace().next().unwrap_or("");
            if word.is_empty() || word.starts_with(['#', ';']) {
                continue;
            }
            out.entry(module_name(word)).or_insert_with(|| file.clone());
        }
    }
    out
}

fn modules(roots: &Roots, dir: Option<&Path>) -> Vec<Module> {
    let builtin = dir.and_then(|d| listed_modules(&d.join("modules.builtin")));
    let available = dir.and_then(|d| listed_modules(&d.join("modules.dep")));
    let at_boot = boot_modules(&roots.root);
    MODULES
        .iter()
        .map(|&name| {
            let sys = roots.sys.join("module").join(name);
            let listed =
                |set: &Option<BTreeSet<String>>| set.as_ref().is_some_and(|s| s.contains(name));
            let state = if sys.join("initstate").exists() {
                ModState::Loaded
            } else if listed(&builtin) || (builtin.is_none() && sys.is_dir()) {
                // Without modules.builtin: a /sys/module directory without initstate is a
                // built-in module with parameters.
                ModState::BuiltIn
            } else if listed(&available) {
                ModState::Available
            } else if available.is_some() {
                ModState::Missing
            } else {
                ModState::Unknown
            };
            Module {
                name,
                state,
                at_boot: at_boot.get(name).cloned(),
            }
        })
        .collect()
}

fn node(path: &Path) -> Node {
    match std::fs::metadata(path) {
        Err(_) => Node::Missing,
        Ok(m) if m.file_type().is_char_device() => Node::CharDevice {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
        },
        Ok(_) => Node::NotCharDevice,
    }
}

fn socket(root: &Path, path: &Path) -> Socket {
    let present = match std::fs::metadata(path) {
        Ok(m) => Some(m.file_type().is_socket()),
        Err(_) => None,
    };
    let unit = UNIT_DIRS
        .iter()
        .map(|d| root.join(d).join(SOCKET_UNIT))
        .find(|p| p.symlink_metadata().is_ok());
    let enabled = [
        "etc/systemd/system",
        "usr/lib/systemd/system",
        "lib/systemd/system",
    ]
    .iter()
    .any(|d| {
        root.join(d)
            .join("sockets.target.wants")
            .join(SOCKET_UNIT)
            .symlink_metadata()
            .is_ok()
    });
    Socket {
        path: path.to_owned(),
        present,
        systemd: root.join("run/systemd/system").is_dir(),
        unit,
        enabled,
    }
}

/// The helper's device list, as the caller sees it.
fn list(client: &Client) -> Result<Vec<DeviceInfo>, Error> {
    let request = Request::List;
    match client.call(&request)? {
        Response::Devices(devices) => Ok(devices),
        other => Err(unexpected(&request, &other)),
    }
}

/// `@vm-users` when the caller is in that group (the group the shipped examples grant), else
/// the caller's user name; `@vm-users` when neither can be told.
fn limits_subject(etc: &Path) -> String {
    let me = offline::caller();
    let files = vfio_gate_policy::EtcFiles::new(etc);
    let in_vm_users = files
        .gid("vm-users")
        .is_some_and(|g| me.gid == g || me.groups.contains(&g));
    if in_vm_users {
        return "@vm-users".to_owned();
    }
    vfio_gate_policy::account_of(etc, me.uid)
        .ok()
        .flatten()
        .map_or_else(|| "@vm-users".to_owned(), |(name, _)| name)
}

/// Whether an I/O error is a permission problem (the caller may not read the file).
pub fn is_permission(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_parameters_stop_where_init_s_begin() {
        assert_eq!(
            kernel_params("BOOT_IMAGE=/vmlinuz intel_iommu=on quiet -- --init-arg x\n"),
            ["BOOT_IMAGE=/vmlinuz", "intel_iommu=on", "quiet"]
        );
    }

    #[test]
    fn remapping_chips_lose_their_device_suffix() {
        let text = "\
            CPU0       CPU1
   0:         42          0  IR-IO-APIC    2-edge      timer
  24:          0          0  IR-PCI-MSI-0000:00:02.0    0-edge      e1000e
  25:          0          0  IR-PCI-MSIX-0000:01:00.0    0-edge      nvme0q0
  26:          0          0  PCI-MSI 458752-edge      virtio0
";
        let chips: Vec<String> = ir_chips(text).into_iter().collect();
        assert_eq!(chips, ["IR-IO-APIC", "IR-PCI-MSI", "IR-PCI-MSIX"]);
        assert!(ir_chips("  0:  1  IO-APIC  2-edge  timer\n").is_empty());
    }

    #[test]
    fn module_names_come_from_paths_and_dashes() {
        for (word, name) in [
            ("kernel/drivers/vfio/pci/vfio-pci.ko.xz", "vfio_pci"),
            ("kernel/drivers/vfio/vfio.ko", "vfio"),
            ("pci-stub", "pci_stub"),
            ("kernel/drivers/pci/pci-stub.ko.zst", "pci_stub"),
        ] {
            assert_eq!(module_name(word), name);
        }
    }

    #[test]
    fn boot_modules_follow_the_directory_order_and_etc_modules() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["etc/modules-load.d", "usr/lib/modules-load.d"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        // /etc's file of the same name masks /usr/lib's.
        std::fs::write(root.join("etc/modules-load.d/vfio-gate.conf"), "# none\n").unwrap();
        std::fs::write(
            root.join("usr/lib/modules-load.d/vfio-gate.conf"),
            "vfio-pci\npci-stub\n",
        )
        .unwrap();
        std::fs::write(
            root.join("usr/lib/modules-load.d/other.conf"),
            "; comment\n  \nvfio-pci\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/modules"), "pci_stub ids=1234:5678\n").unwrap();
        let m = boot_modules(root);
        assert_eq!(
            m.get("vfio_pci"),
            Some(&root.join("usr/lib/modules-load.d/other.conf"))
        );
        assert_eq!(m.get("pci_stub"), Some(&root.join("etc/modules")));
        assert_eq!(m.len(), 2);
    }
}
