//! The checks: each a pure function of the [`Facts`], answering ok, warn or fail with what was
//! found and, unless ok, the fix. Their order is the order a host is set up in: the kernel and
//! its IOMMU, the modules and the VFIO node, the policy and the sandbox, the helper, then what
//! the caller can do with it.

use nix::errno::Errno;
use serde::Serialize;
use vfio_gate_host::groups::ViabilityRule;
use vfio_gate_policy::{PolicyError, Settings};
use vfio_gate_protocol::PROTOCOL_VERSION;

use super::probe::{Facts, ModState, Node, is_permission};
use crate::error::DEFAULT_POLICY;
use crate::memlock::{self, MARGIN, human, needed};
use crate::render::join_words;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    pub fn word(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// A stable name (`iommu_groups`), for scripts and `grep`.
    pub name: &'static str,
    pub status: Level,
    /// What was found, in a sentence.
    pub found: String,
    /// What to do about it; `None` when the check is ok.
    pub fix: Option<String>,
}

fn ok(name: &'static str, found: impl Into<String>) -> Check {
    Check {
        name,
        status: Level::Ok,
        found: found.into(),
        fix: None,
    }
}

fn warn(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        status: Level::Warn,
        found: found.into(),
        fix: Some(fix.into()),
    }
}

fn fail(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        status: Level::Fail,
        found: found.into(),
        fix: Some(fix.into()),
    }
}

/// Every check, in order. `memory` is `--memory` (bytes of guest RAM).
pub fn all(f: &Facts, memory: Option<u64>) -> Vec<Check> {
    vec![
        kernel(f),
        iommu_groups(f),
        iommu_firmware(f),
        iommu_cmdline(f),
        interrupt_remapping(f),
        acs_override(f),
        modules(f),
        vfio_node(f),
        policy(f),
        landlock(f),
        socket(f),
        helper(f),
        granted_devices(f),
        memlock(f, memory),
    ]
}

/// Where kernel parameters go, and how they take effect.
const GRUB: &str = "(GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub; or your boot \
                    loader's equivalent), then reboot";

/// Whose IOMMU this is: from the ACPI table that describes it, else from the CPU's vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Intel,
    Amd,
    Other,
}

fn vendor(f: &Facts) -> Vendor {
    if f.dmar {
        Vendor::Intel
    } else if f.ivrs {
        Vendor::Amd
    } else {
        match f.cpu_vendor.as_deref() {
            Some("GenuineIntel") => Vendor::Intel,
            Some("AuthenticAMD" | "HygonGenuine") => Vendor::Amd,
            _ => Vendor::Other,
        }
    }
}

fn cpu(f: &Facts) -> String {
    f.cpu_vendor.as_deref().map_or_else(
        || "CPU vendor unknown".to_owned(),
        |v| format!("CPU vendor {v}"),
    )
}

/// How to turn the IOMMU on, for this vendor.
fn iommu_on_fix(v: Vendor) -> String {
    match v {
        Vendor::Intel => format!(
            "Enable VT-d (Intel Virtualization Technology for Directed I/O) in the firmware \
             settings and add intel_iommu=on to the kernel command line {GRUB}"
        ),
        Vendor::Amd => "Enable AMD-Vi (often called IOMMU, under AMD CBS or NBIO) in the \
                        firmware settings and reboot: AMD's IOMMU needs no kernel parameter \
                        (amd_iommu=on is not a valid option; iommu=pt is optional)"
            .to_owned(),
        Vendor::Other => "Enable the IOMMU in the firmware settings (VT-d on Intel, AMD-Vi on \
                          AMD; in a VM, give it a virtual IOMMU, e.g. QEMU's -device \
                          intel-iommu,intremap=on on -machine q35,kernel-irqchip=split), then \
                          reboot"
            .to_owned(),
    }
}

/// How to make the firmware describe the IOMMU, for this vendor.
fn firmware_fix(v: Vendor) -> String {
    match v {
        Vendor::Intel => {
            "Enable VT-d (Intel Virtualization Technology for Directed I/O) in the \
                          firmware settings, then reboot"
        }
        Vendor::Amd => {
            "Enable AMD-Vi (often called IOMMU, under AMD CBS or NBIO) in the \
                        firmware settings, then reboot"
        }
        Vendor::Other => {
            "Enable the IOMMU in the firmware settings (VT-d on Intel, AMD-Vi on \
                          AMD; in a VM, give it a virtual IOMMU), then reboot"
        }
    }
    .to_owned()
}

fn kernel(f: &Facts) -> Check {
    let Some(release) = &f.release else {
        return warn(
            "kernel",
            format!(
                "cannot read {}: the kernel's version, and so its viability rule, is unknown",
                f.roots.proc.join("sys/kernel/osrelease").display()
            ),
            "Check that /proc is mounted",
        );
    };
    match ViabilityRule::for_release(release) {
        ViabilityRule::DmaOwnership => ok(
            "kernel",
            format!(
                "Linux {release}: a group is usable when no driver of its members claims DMA \
                 ownership (the rule since 5.19: vfio-pci, pci-stub, pcieport and no driver \
                 leave it unclaimed)"
            ),
        ),
        ViabilityRule::Legacy => ok(
            "kernel",
            format!(
                "Linux {release}: the rule before 5.19 applies: every member of a group must \
                 be without a driver, on vfio-pci or pci-stub, or a bridge (vfio-gate plans \
                 groups by it)"
            ),
        ),
    }
}

fn iommu_groups(f: &Facts) -> Check {
    let dir = f.roots.sys.join("kernel/iommu_groups");
    if f.groups > 0 {
        return ok(
            "iommu_groups",
            format!("{} IOMMU groups in {}", f.groups, dir.display()),
        );
    }
    fail(
        "iommu_groups",
        format!(
            "no IOMMU groups in {}: the IOMMU is off, so no device can be handed to a VM",
            dir.display()
        ),
        iommu_on_fix(vendor(f)),
    )
}

fn iommu_firmware(f: &Facts) -> Check {
    let tables = f.roots.sys.join("firmware/acpi/tables");
    let described = match (f.dmar, f.ivrs) {
        (true, _) => Some("DMAR: an Intel VT-d IOMMU"),
        (false, true) => Some("IVRS: an AMD-Vi IOMMU"),
        (false, false) => None,
    };
    match described {
        Some(what) => ok(
            "iommu_firmware",
            format!(
                "the firmware describes its IOMMU in ACPI {what} ({})",
                cpu(f)
            ),
        ),
        None if f.groups > 0 => ok(
            "iommu_firmware",
            format!(
                "no ACPI DMAR or IVRS table in {}, but the kernel has IOMMU groups: another \
                 IOMMU (virtio-iommu, or a non-x86 one) provides them",
                tables.display()
            ),
        ),
        None => fail(
            "iommu_firmware",
            format!(
                "no ACPI DMAR or IVRS table in {}: the firmware describes no IOMMU ({})",
                tables.display(),
                cpu(f)
            ),
            firmware_fix(vendor(f)),
        ),
    }
}

fn iommu_cmdline(f: &Facts) -> Check {
    const NAME: &str = "iommu_cmdline";
    if f.cmdline.is_none() {
        return warn(
            NAME,
            format!("cannot read {}", f.roots.proc.join("cmdline").display()),
            "Check that /proc is mounted",
        );
    }
    let v = vendor(f);
    let intel = f.param("intel_iommu");
    let amd = f.param("amd_iommu");
    let iommu = f.param("iommu");
    let pt = if iommu == Some("pt") {
        "; iommu=pt keeps host devices on the fast identity mapping"
    } else {
        ""
    };
    if iommu == Some("off") {
        return fail(
            NAME,
            "iommu=off is on the kernel command line: the kernel leaves the IOMMU off",
            format!("Remove iommu=off from the kernel command line {GRUB}"),
        );
    }
    // Not a valid option whatever the CPU: the kernel logs "AMD-Vi: Unknown option - 'on'".
    let bogus_amd = amd == Some("on");
    let found = match v {
        Vendor::Intel => match intel {
            Some(off) if off.split(',').any(|o| o == "off") => {
                return fail(
                    NAME,
                    format!("intel_iommu={off} is on the kernel command line: VT-d is off"),
                    format!("Replace it with intel_iommu=on {GRUB}"),
                );
            }
            Some(on) if on.split(',').any(|o| o == "on") => {
                format!("intel_iommu={on} turns VT-d on{pt}")
            }
            _ if f.groups > 0 => format!(
                "no intel_iommu=on on the kernel command line, and this kernel has turned VT-d on \
                 by default (it has IOMMU groups){pt}"
            ),
            _ => {
                return fail(
                    NAME,
                    "no intel_iommu=on on the kernel command line, and this kernel leaves VT-d \
                     off without it (no IOMMU groups)",
                    format!("Add intel_iommu=on to the kernel command line {GRUB}"),
                );
            }
        },
        Vendor::Amd => match amd {
            Some(off) if off.split(',').any(|o| o == "off") => {
                return fail(
                    NAME,
                    format!("amd_iommu={off} is on the kernel command line: AMD-Vi is off"),
                    format!(
                        "Remove amd_iommu={off} from the kernel command line {GRUB}: AMD-Vi is on \
                         by default"
                    ),
                );
            }
            _ => format!("AMD-Vi needs no kernel parameter: it is on by default{pt}"),
        },
        Vendor::Other => format!(
            "the IOMMU's vendor is unknown (no DMAR or IVRS table, {}): no parameter checked{pt}",
            cpu(f)
        ),
    };
    if bogus_amd {
        return warn(
            NAME,
            format!(
                "{found}; amd_iommu=on is on the command line too, which is not a valid option \
                 (the kernel logs \"AMD-Vi: Unknown option - 'on'\" and ignores it)"
            ),
            format!(
                "Drop amd_iommu=on from the kernel command line {GRUB}: AMD's IOMMU is on by \
                 default, and on Intel it does nothing"
            ),
        );
    }
    ok(NAME, found)
}

fn interrupt_remapping(f: &Facts) -> Check {
    const NAME: &str = "interrupt_remapping";
    let unsafe_allowed = f.allow_unsafe_interrupts == Some(true)
        || f.param("vfio_iommu_type1.allow_unsafe_interrupts")
            .is_some_and(|v| matches!(v, "1" | "Y" | "y" | ""));
    let unsafe_fix = "Remove allow_unsafe_interrupts (options vfio_iommu_type1 \
                      allow_unsafe_interrupts=1 in /etc/modprobe.d, or \
                      vfio_iommu_type1.allow_unsafe_interrupts=1 on the kernel command line) \
                      unless you trust every guest: without interrupt remapping a guest can \
                      forge interrupts (MSI writes) to the host";
    if f.groups == 0 {
        return warn(
            NAME,
            "not checked: the IOMMU is off (see iommu_groups)",
            "Turn the IOMMU on first; interrupt remapping comes with it on most hardware",
        );
    }
    if !f.ir_chips.is_empty() {
        let chips: Vec<String> = f.ir_chips.iter().cloned().collect();
        let found = format!(
            "on: interrupts go through {} ({})",
            join_words(&chips),
            f.roots.proc.join("interrupts").display()
        );
        if unsafe_allowed {
            return warn(
                NAME,
                format!(
                    "{found}, and vfio_iommu_type1 allows unsafe interrupts anyway \
                     (allow_unsafe_interrupts=Y), which it then never needs"
                ),
                unsafe_fix,
            );
        }
        return ok(NAME, found);
    }
    let supported = !f.intel_ir.is_empty() && f.intel_ir.iter().all(|b| *b);
    if unsafe_allowed {
        return warn(
            NAME,
            "off, and vfio_iommu_type1 allows unsafe interrupts (allow_unsafe_interrupts=Y): \
             devices are handed to VMs without interrupt isolation",
            unsafe_fix,
        );
    }
    if supported {
        return fail(
            NAME,
            "off, although the IOMMU supports it (ecap bit 3 of every unit in \
             /sys/class/iommu): vfio refuses to attach groups (VFIO_SET_IOMMU: Operation not \
             permitted, \"No interrupt remapping support\")",
            format!(
                "Remove intremap=off (or intremap=no_x2apic_optout) from the kernel command \
                 line {GRUB}, and enable x2APIC in the firmware settings"
            ),
        );
    }
    fail(
        NAME,
        "off: no remapping interrupt chip (IR-) in /proc/interrupts, so vfio refuses to attach \
         groups (VFIO_SET_IOMMU: Operation not permitted, \"No interrupt remapping support\")",
        "Enable interrupt remapping in the firmware settings (on Intel it comes with VT-d and \
         x2APIC; in a VM, QEMU's -device intel-iommu,intremap=on). Only if you trust every \
         guest: echo 'options vfio_iommu_type1 allow_unsafe_interrupts=1' > \
         /etc/modprobe.d/vfio-unsafe-interrupts.conf",
    )
}

fn acs_override(f: &Facts) -> Check {
    const NAME: &str = "acs_override";
    match f.param("pcie_acs_override") {
        Some(v) => warn(
            NAME,
            format!(
                "pcie_acs_override={v} is on the kernel command line (a patched kernel's \
                 option): the kernel then splits IOMMU groups it cannot prove isolated, so the \
                 groups vfio-gate plans by no longer say which devices can reach each other"
            ),
            format!(
                "Remove pcie_acs_override= from the kernel command line {GRUB}, unless you \
                 accept that a VM may reach the other devices behind the same bridge; a slot \
                 with ACS (or a CPU-attached slot) gives a device its own group"
            ),
        ),
        None => ok(
            NAME,
            "no pcie_acs_override on the kernel command line: IOMMU groups are the hardware's",
        ),
    }
}

fn modules(f: &Facts) -> Check {
    const NAME: &str = "modules";
    let state_word = |s: ModState| match s {
        ModState::Loaded => "loaded",
        ModState::BuiltIn => "built in",
        ModState::Available => "not loaded",
        ModState::Missing => "not in this kernel",
        ModState::Unknown => "not loaded",
    };
    let states: Vec<String> = f
        .modules
        .iter()
        .map(|m| format!("{} {}", m.name, state_word(m.state)))
        .collect();
    let mut found = join_words(&states);
    let names = |pred: &dyn Fn(ModState) -> bool| -> Vec<String> {
        f.modules
            .iter()
            .filter(|m| pred(m.state))
            .map(|m| m.name.to_owned())
            .collect()
    };
    let missing = names(&|s| s == ModState::Missing);
    let unknown = names(&|s| s == ModState::Unknown);
    let unloaded = names(&|s| s == ModState::Available);
    // vfio comes with vfio_pci: whatever loads vfio_pci loads it too.
    let vfio_pci_modular = f
        .modules
        .iter()
        .any(|m| m.name == "vfio_pci" && m.state != ModState::BuiltIn);
    let not_at_boot: Vec<String> = f
        .modules
        .iter()
        .filter(|m| m.state != ModState::BuiltIn && m.at_boot.is_none())
        .filter(|m| !(m.name == "vfio" && vfio_pci_modular))
        .map(|m| m.name.to_owned())
        .collect();
    let mut boot_files: Vec<String> = f
        .modules
        .iter()
        .filter_map(|m| m.at_boot.as_ref())
        .map(|p| p.display().to_string())
        .collect();
    boot_files.sort();
    boot_files.dedup();
    if !boot_files.is_empty() {
        found.push_str(&format!("; loaded at boot by {}", join_words(&boot_files)));
    }
    let load_d = "install -m 0644 dist/modules-load.d/vfio-gate.conf /etc/modules-load.d/ (the \
                  package installs it), so that they load at every boot";
    let modprobe = |which: &[String]| {
        let dashed: Vec<String> = which.iter().map(|m| m.replace('_', "-")).collect();
        format!("modprobe -a {}", dashed.join(" "))
    };
    if !missing.is_empty() {
        return fail(
            NAME,
            format!(
                "{found}: {} has no {}",
                f.modules_dir.as_ref().map_or_else(
                    || "the module directory".to_owned(),
                    |d| d.display().to_string()
                ),
                join_words(&missing)
            ),
            "Boot a kernel built with VFIO, VFIO_PCI and PCI_STUB (Debian's, Ubuntu's and \
             Fedora's are), or install its modules package",
        );
    }
    if !unknown.is_empty() {
        let dir = f.release.as_deref().map_or_else(
            || "the module directory".to_owned(),
            |r| format!("/lib/modules/{r}"),
        );
        return fail(
            NAME,
            format!("{found}, and there is no {dir} to load them from"),
            format!(
                "Install the modules of the running kernel (or boot one that has them), then, \
                 as root: {}; and {load_d}",
                modprobe(&unknown)
            ),
        );
    }
    if !unloaded.is_empty() {
        return warn(
            NAME,
            format!("{found}: without them a bind leaves the device with no driver"),
            format!("As root: {} now; and {load_d}", modprobe(&unloaded)),
        );
    }
    if !not_at_boot.is_empty() {
        return warn(
            NAME,
            format!(
                "{found}, but nothing loads {} at boot (no modules-load.d file names {})",
                join_words(&not_at_boot),
                if not_at_boot.len() == 1 { "it" } else { "them" }
            ),
            format!("As root: {load_d}"),
        );
    }
    ok(NAME, found)
}

fn vfio_node(f: &Facts) -> Check {
    const NAME: &str = "vfio_node";
    let path = f.roots.dev.join("vfio/vfio");
    let shown = path.display();
    let rule = "/etc/udev/rules.d/70-vfio.rules with KERNEL==\"vfio\", SUBSYSTEM==\"misc\", \
                MODE=\"0666\"";
    match &f.vfio_node {
        Node::Missing => {
            let vfio_loaded = f.modules.iter().any(|m| {
                m.name == "vfio" && matches!(m.state, ModState::Loaded | ModState::BuiltIn)
            });
            fail(
                NAME,
                if vfio_loaded {
                    format!(
                        "no {shown}, although vfio is loaded (a kernel without the VFIO container, or /dev not populated)"
                    )
                } else {
                    format!("no {shown}: the vfio module is not loaded")
                },
                if vfio_loaded {
                    "Check that /dev is a devtmpfs (mount | grep ' /dev ') and that the kernel \
                     has CONFIG_VFIO_CONTAINER; QEMU opens /dev/vfio/vfio for every assigned \
                     device"
                        .to_owned()
                } else {
                    "As root: modprobe vfio-pci (it loads vfio, which creates the node; see \
                     modules)"
                        .to_owned()
                },
            )
        }
        Node::NotCharDevice => fail(
            NAME,
            format!("{shown} is not a character device"),
            format!("As root: rm {shown}, then modprobe -r vfio-pci vfio && modprobe vfio-pci"),
        ),
        Node::CharDevice { mode, uid } if mode & 0o666 == 0o666 => ok(
            NAME,
            format!("{shown} is there, mode {mode:04o} (owner uid {uid}): anyone may open it"),
        ),
        Node::CharDevice { mode, uid } => fail(
            NAME,
            format!(
                "{shown} has mode {mode:04o} (owner uid {uid}): a VM started as you cannot open \
                 it, although the kernel creates it 0666"
            ),
            format!(
                "As root: chmod 0666 {shown} now; a udev rule changed it (grep -rn vfio \
                 /etc/udev/rules.d /usr/lib/udev/rules.d): remove that rule, or override it \
                 with {rule}"
            ),
        ),
    }
}

fn policy(f: &Facts) -> Check {
    const NAME: &str = "policy";
    let path = f.policy_path.display();
    let check_cmd = if f.policy_path.as_os_str() == DEFAULT_POLICY {
        "vfio-gate policy check".to_owned()
    } else {
        format!("vfio-gate policy check {path}")
    };
    match &f.policy {
        Ok(p) => ok(
            NAME,
            format!(
                "{} loads as the helper loads it: {}, {}",
                crate::render::files_text(p.sources()),
                crate::render::count(p.rules().len(), "rule"),
                crate::render::count(p.reservations().len(), "reservation"),
            ),
        ),
        Err(PolicyError::Open { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            fail(
                NAME,
                format!("no policy at {path}: the helper refuses to start without one"),
                format!(
                    "As root: install -m 0644 dist/policy.toml {path} (it grants nothing; the \
                     package installs it), then write rules (docs/policy.md) and run {check_cmd}"
                ),
            )
        }
        Err(PolicyError::Open { source, .. } | PolicyError::Read { source, .. })
            if is_permission(source) =>
        {
            warn(
                NAME,
                format!(
                    "you may not read {path}, so its settings (sandbox_floor) are not checked; \
                     the helper reads it as root"
                ),
                format!("Run vfio-gate doctor as root, or ask the admin to run {check_cmd}"),
            )
        }
        Err(e) => fail(
            NAME,
            format!("refused: {e}"),
            format!(
                "The helper serves nothing until it loads. {check_cmd} shows every problem at \
                 its file and line"
            ),
        ),
    }
}

fn landlock(f: &Facts) -> Check {
    const NAME: &str = "landlock";
    let (floor, unsandboxed, whose) = match &f.policy {
        Ok(p) => (
            p.settings().sandbox_floor,
            p.settings().allow_unsandboxed,
            "",
        ),
        Err(_) => (
            Settings::DEFAULT_SANDBOX_FLOOR,
            false,
            " (the default: the policy was not read)",
        ),
    };
    let lsm_file = f.roots.sys.join("kernel/security/lsm");
    let listed = f
        .lsm
        .as_deref()
        .map(|l| l.split(',').any(|m| m.trim() == "landlock"));
    // The LSM list, when it can be read, says whether landlock is on; the system call, its ABI.
    let abi = match (listed, f.landlock) {
        (Some(false), _) => Err(Errno::EOPNOTSUPP),
        (_, abi) => abi,
    };
    match abi {
        Ok(abi) if abi >= i32::from(floor) => ok(
            NAME,
            format!(
                "landlock ABI {abi}, at or above the policy's sandbox_floor of {floor}{whose}: \
                 the helper sandboxes itself with what ABI {abi} offers"
            ),
        ),
        Ok(abi) => fail(
            NAME,
            format!(
                "landlock ABI {abi}, below the policy's sandbox_floor of {floor}{whose}: the \
                 helper refuses to start"
            ),
            format!(
                "Boot a newer kernel (with landlock ABI {floor} or later), or, knowingly, lower \
                 sandbox_floor in [settings] of {}",
                f.policy_path.display()
            ),
        ),
        Err(e) => {
            let why = match (e, &f.lsm) {
                (Errno::EOPNOTSUPP, Some(l)) => format!(
                    "landlock is built into this kernel but not enabled: {} lists {l}",
                    lsm_file.display()
                ),
                (Errno::EOPNOTSUPP, None) => {
                    "landlock is built into this kernel but not enabled".to_owned()
                }
                (Errno::ENOSYS, _) => "this kernel has no landlock".to_owned(),
                (other, _) => format!("landlock cannot be used: {other}"),
            };
            let enable = match &f.lsm {
                Some(l) if !l.is_empty() => format!(
                    "Add landlock to the LSMs on the kernel command line, keeping the others: \
                     lsm={l},landlock {GRUB}"
                ),
                _ => format!(
                    "Boot a kernel with landlock (Linux 5.13 or later, CONFIG_SECURITY_LANDLOCK) \
                     and landlock in lsm= on its command line {GRUB}"
                ),
            };
            if unsandboxed {
                warn(
                    NAME,
                    format!(
                        "{why}; the policy sets allow_unsandboxed = true, so the helper serves \
                         without its sandbox"
                    ),
                    format!("{enable}, then remove allow_unsandboxed from the policy"),
                )
            } else {
                fail(
                    NAME,
                    format!("{why}: the helper refuses to serve unsandboxed"),
                    format!(
                        "{enable}; or, knowingly, set allow_unsandboxed = true in [settings] of \
                         {}",
                        f.policy_path.display()
                    ),
                )
            }
        }
    }
}

fn socket(f: &Facts) -> Check {
    const NAME: &str = "socket";
    let s = &f.socket;
    let path = s.path.display();
    let unit = match (&s.unit, s.enabled) {
        (_, true) => "vfio-gate.socket is enabled".to_owned(),
        (Some(u), false) => format!("vfio-gate.socket ({}) is not enabled", u.display()),
        (None, false) => "vfio-gate.socket is not installed".to_owned(),
    };
    let install = "Install the package (apt install ./vfio-gate_VERSION_amd64.deb), or the units \
                   as README's install section says";
    match (s.present, s.systemd) {
        (Some(true), true) if s.enabled => ok(NAME, format!("{unit}, and {path} is there")),
        (Some(true), true) => warn(
            NAME,
            format!("{path} is there, but {unit}: it will be gone after a reboot"),
            if s.unit.is_some() {
                "As root: systemctl enable vfio-gate.socket".to_owned()
            } else {
                format!("{install}; then: systemctl enable vfio-gate.socket")
            },
        ),
        (Some(true), false) => ok(
            NAME,
            format!(
                "{path} is there (systemd is not the init system here: something else listens \
                 on it, e.g. vfio-gated --listen)"
            ),
        ),
        (Some(false), _) => fail(
            NAME,
            format!("{path} exists but is not a socket"),
            format!(
                "As root: remove {path} and restart what listens there (systemctl restart \
                 vfio-gate.socket)"
            ),
        ),
        (None, true) => fail(
            NAME,
            format!("no {path}, and {unit}"),
            match (&s.unit, s.enabled) {
                (_, true) => "As root: systemctl restart vfio-gate.socket; systemctl status \
                              vfio-gate.socket says why it is not listening"
                    .to_owned(),
                (Some(_), false) => "As root: systemctl enable --now vfio-gate.socket".to_owned(),
                (None, false) => {
                    format!("{install}; then: systemctl enable --now vfio-gate.socket")
                }
            },
        ),
        (None, false) => fail(
            NAME,
            format!("no {path} (and systemd is not the init system here)"),
            "Start the helper as root from your init system: vfio-gated --listen \
             /run/vfio-gate.sock (or pass --socket PATH to vfio-gate for another path)",
        ),
    }
}

fn helper(f: &Facts) -> Check {
    const NAME: &str = "helper";
    let path = f.socket.path.display();
    match &f.helper {
        Ok(devices) => ok(
            NAME,
            format!(
                "vfio-gated answers on {path} at protocol version {PROTOCOL_VERSION} ({} \
                 listed)",
                crate::render::count(devices.len(), "device")
            ),
        ),
        Err(e) => {
            let d = e.details();
            fail(
                NAME,
                e.chain(),
                d.next_step
                    .unwrap_or_else(|| "See the helper's log (journalctl -u vfio-gated)".into()),
            )
        }
    }
}

fn granted_devices(f: &Facts) -> Check {
    const NAME: &str = "granted_devices";
    let Ok(devices) = &f.helper else {
        return warn(
            NAME,
            "unknown: the helper did not answer (see helper)",
            "Fix the helper first; meanwhile an admin can see every grant with vfio-gate policy \
             report",
        );
    };
    let granted: Vec<String> = devices
        .iter()
        .filter(|d| !d.allowed.is_empty())
        .map(|d| {
            let drivers: Vec<&str> = d.allowed.iter().map(|x| x.as_str()).collect();
            format!("{} ({})", d.address.short(), drivers.join(", "))
        })
        .collect();
    if granted.is_empty() {
        return warn(
            NAME,
            "the policy lets you bind no device of this host",
            format!(
                "Ask the admin for a [[rule]] in {DEFAULT_POLICY} that names you (or a group of \
                 yours) and the device; vfio-gate explain ADDR says what decides a device"
            ),
        );
    }
    const SHOWN: usize = 8;
    let mut list = granted.iter().take(SHOWN).cloned().collect::<Vec<_>>();
    if granted.len() > SHOWN {
        list.push(format!("{} more", granted.len() - SHOWN));
    }
    ok(
        NAME,
        format!(
            "the policy lets you bind {}: {}",
            crate::render::count(granted.len(), "device"),
            join_words(&list)
        ),
    )
}

fn memlock(f: &Facts, memory: Option<u64>) -> Check {
    const NAME: &str = "memlock";
    let limit = match f.memlock {
        Ok(l) => l,
        Err(e) => {
            return warn(
                NAME,
                format!("cannot read your RLIMIT_MEMLOCK: {e}"),
                "Check ulimit -l in your shell",
            );
        }
    };
    let shown = limit.describe();
    let Some(guest) = memory else {
        return match limit.soft {
            None => ok(
                NAME,
                "your memlock limit (ulimit -l) is unlimited: a VM may pin all its RAM",
            ),
            Some(soft) if soft > MARGIN => ok(
                NAME,
                format!(
                    "your memlock limit (ulimit -l) is {shown}: enough for a guest of up to {} \
                     with libvirt's 1 GiB margin (vfio-gate doctor --memory SIZE checks a size)",
                    human(soft - MARGIN)
                ),
            ),
            Some(soft) => warn(
                NAME,
                format!(
                    "your memlock limit (ulimit -l) is {shown}: VFIO pins all of a guest's RAM, \
                     so a VM with a device and more than {} of RAM fails (VFIO_MAP_DMA failed: \
                     Cannot allocate memory)",
                    human(soft)
                ),
                "Run vfio-gate doctor --memory SIZE with your guest's RAM (e.g. --memory 8G) for \
                 the exact limit and where to set it",
            ),
        };
    };
    let need = needed(guest);
    let fix = memlock::fix(need, &f.limits_subject, &limit);
    if limit.allows(need) {
        ok(
            NAME,
            format!(
                "your memlock limit (ulimit -l) is {shown}: enough for a guest of {} with \
                 libvirt's 1 GiB margin ({} KiB)",
                human(guest),
                need / 1024
            ),
        )
    } else if limit.allows(guest) {
        warn(
            NAME,
            format!(
                "your memlock limit (ulimit -l) is {shown}: enough for the {} of guest RAM, but \
                 not for libvirt's 1 GiB margin on top (option ROMs, MMIO, the VMM's own pinned \
                 buffers): {} KiB",
                human(guest),
                need / 1024
            ),
            fix,
        )
    } else {
        fail(
            NAME,
            format!(
                "your memlock limit (ulimit -l) is {shown}, below the {} a guest of {} pins: \
                 QEMU fails with VFIO_MAP_DMA failed: Cannot allocate memory. It needs {} KiB \
                 with libvirt's 1 GiB margin",
                human(guest),
                human(guest),
                need / 1024
            ),
            fix,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use vfio_gate_policy::{EtcFiles, Policy};
    use vfio_gate_protocol::WireError;

    use super::*;
    use crate::cmd::doctor::probe::{Module, Roots, Socket};
    use crate::error::Error;
    use crate::memlock::Limit;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn policy(text: &str) -> Result<vfio_gate_policy::Policy, PolicyError> {
        Policy::parse(
            text,
            "/etc/vfio-gate/policy.toml",
            &EtcFiles::new("/nonexistent"),
        )
    }

    /// A healthy Intel host, as the facts say it.
    fn facts() -> Facts {
        Facts {
            roots: Roots {
                sys: "/sys".into(),
                proc: "/proc".into(),
                dev: "/dev".into(),
                root: "/".into(),
            },
            release: Some("6.1.0-56-amd64".into()),
            cmdline: Some(vec!["intel_iommu=on".into()]),
            cpu_vendor: Some("GenuineIntel".into()),
            groups: 12,
            dmar: true,
            ivrs: false,
            intel_ir: vec![true],
            ir_chips: BTreeSet::from(["IR-PCI-MSI".to_owned()]),
            allow_unsafe_interrupts: Some(false),
            modules: ["vfio", "vfio_pci", "pci_stub"]
                .map(|name| Module {
                    name,
                    state: ModState::Loaded,
                    at_boot: Some("/usr/lib/modules-load.d/vfio-gate.conf".into()),
                })
                .to_vec(),
            modules_dir: Some("/lib/modules/6.1.0-56-amd64".into()),
            vfio_node: Node::CharDevice {
                mode: 0o666,
                uid: 0,
            },
            socket: Socket {
                path: "/run/vfio-gate.sock".into(),
                present: Some(true),
                systemd: true,
                unit: Some("/usr/lib/systemd/system/vfio-gate.socket".into()),
                enabled: true,
            },
            lsm: Some("lockdown,capability,landlock".into()),
            landlock: Ok(4),
            memlock: Ok(Limit {
                soft: Some(8 * MIB),
                hard: Some(8 * MIB),
            }),
            policy_path: PathBuf::from(DEFAULT_POLICY),
            policy: policy("version = 1\n"),
            helper: Ok(vec![]),
            limits_subject: "@vm-users".into(),
        }
    }

    #[test]
    fn every_check_has_a_fix_unless_ok() {
        for c in all(&facts(), Some(GIB)) {
            assert_eq!(c.fix.is_none(), c.status == Level::Ok, "{c:?}");
        }
    }

    #[test]
    fn memlock_is_ok_warn_or_fail_against_the_ram_and_the_margin() {
        let mut f = facts();
        let at = |f: &mut Facts, soft: Option<u64>, hard: Option<u64>, memory| {
            f.memlock = Ok(Limit { soft, hard });
            memlock(f, memory)
        };
        let c = at(&mut f, Some(8 * MIB), Some(8 * MIB), Some(GIB));
        assert_eq!(c.status, Level::Fail, "{c:?}");
        assert!(c.fix.unwrap().starts_with("An admin (root) raises it: "));
        let c = at(&mut f, Some(8 * MIB), None, Some(GIB));
        assert_eq!(c.status, Level::Fail, "{c:?}");
        assert!(c.fix.unwrap().starts_with(
            "Your hard limit allows it, so in the shell that starts the VM: ulimit -l 2097152."
        ));
        let c = at(&mut f, Some(3 * GIB / 2), Some(3 * GIB / 2), Some(GIB));
        assert_eq!(c.status, Level::Warn, "{c:?}");
        assert!(
            c.found
                .contains("enough for the 1 GiB of guest RAM, but not for")
        );
        let c = at(&mut f, Some(2 * GIB), Some(2 * GIB), Some(GIB));
        assert_eq!(c.status, Level::Ok, "{c:?}");
        let c = at(&mut f, None, None, Some(64 * GIB));
        assert_eq!(c.status, Level::Ok, "{c:?}");
        let c = at(&mut f, Some(4 * GIB), Some(4 * GIB), None);
        assert_eq!(
            (c.status, c.found.as_str()),
            (
                Level::Ok,
                "your memlock limit (ulimit -l) is 4 GiB: enough for a guest of up to 3 GiB with \
                 libvirt's 1 GiB margin (vfio-gate doctor --memory SIZE checks a size)"
            )
        );
        let c = at(&mut f, Some(GIB), Some(GIB), None);
        assert_eq!(c.status, Level::Warn, "{c:?}");
        let c = at(&mut f, None, None, None);
        assert_eq!(c.status, Level::Ok, "{c:?}");
    }

    #[test]
    fn landlock_below_the_floor_or_absent_fails() {
        let mut f = facts();
        f.policy = policy("version = 1\n[settings]\nsandbox_floor = 6\n");
        let c = landlock(&f);
        assert_eq!(c.status, Level::Fail, "{c:?}");
        assert_eq!(
            c.found,
            "landlock ABI 4, below the policy's sandbox_floor of 6: the helper refuses to start"
        );
        f.landlock = Ok(6);
        assert_eq!(landlock(&f).status, Level::Ok);
        f.landlock = Err(Errno::ENOSYS);
        f.lsm = None;
        let c = landlock(&f);
        assert_eq!(
            c.found,
            "this kernel has no landlock: the helper refuses to serve unsandboxed"
        );
        assert!(c.fix.unwrap().starts_with("Boot a kernel with landlock"));
        // The policy unreadable: the default floor, said as such.
        f.landlock = Ok(1);
        f.policy = Err(PolicyError::Read {
            path: DEFAULT_POLICY.into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
        let c = landlock(&f);
        assert_eq!(c.status, Level::Ok);
        assert!(
            c.found
                .contains("sandbox_floor of 1 (the default: the policy was not read)")
        );
        let c = policy_check(&f);
        assert_eq!(c.status, Level::Warn, "{c:?}");
    }

    fn policy_check(f: &Facts) -> Check {
        super::policy(f)
    }

    #[test]
    fn an_unknown_vendor_without_groups_is_told_to_enable_the_iommu() {
        let mut f = facts();
        f.dmar = false;
        f.cpu_vendor = Some("CentaurHauls".into());
        f.groups = 0;
        f.cmdline = Some(vec![]);
        let c = iommu_groups(&f);
        assert_eq!(c.status, Level::Fail);
        assert!(c.fix.unwrap().contains("VT-d on Intel, AMD-Vi on AMD"));
        let c = iommu_cmdline(&f);
        assert_eq!(c.status, Level::Ok, "{c:?}");
        assert!(c.found.contains("CPU vendor CentaurHauls"), "{c:?}");
    }

    #[test]
    fn a_helper_that_refuses_to_serve_is_a_failure_with_its_next_step() {
        let mut f = facts();
        f.helper = Err(Error::Helper(WireError::Unavailable {
            reason: "the policy is refused".into(),
        }));
        let c = helper(&f);
        assert_eq!(c.status, Level::Fail);
        assert!(
            c.fix.as_deref().unwrap().contains("vfio-gate policy check"),
            "{c:?}"
        );
        assert_eq!(granted_devices(&f).status, Level::Warn);
    }
}
