//! RLIMIT_MEMLOCK, the first failure after a successful bind: VFIO pins all of a guest's RAM
//! for the device's DMA, and the kernel counts the pinned pages against the VMM's memlock limit
//! (`vfio_pin_pages_remote: RLIMIT_MEMLOCK exceeded`, then QEMU's `VFIO_MAP_DMA failed: Cannot
//! allocate memory`). Shared by `vfio-gate doctor --memory SIZE` (the check and its exact fix)
//! and `vfio-gate run` (a warning when QEMU's `-m` asks for more than the limit allows).
//!
//! The fix is the admin's, through what already sets resource limits (`docs/memlock.md` says
//! why vfio-gate does not raise limits itself): `pam_limits` for login sessions
//! (`/etc/security/limits.d/`, in KiB, at the next login), `LimitMEMLOCK=` for a systemd unit,
//! `DefaultLimitMEMLOCK=` for every unit. The size asked for is the guest's RAM plus libvirt's
//! margin of 1 GiB (option ROMs, MMIO regions, the VMM's own pinned buffers).

use std::ffi::OsString;
use std::path::Path;

use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};

/// What libvirt adds to the guest's RAM for the memlock limit it sets on QEMU.
pub const MARGIN: u64 = 1 << 30;

/// The RAM QEMU gives a guest without `-m` (most machine types, x86's pc and q35 included).
pub const QEMU_DEFAULT_RAM: u64 = 128 << 20;

/// The limits.d file `doctor` names.
pub const LIMITS_FILE: &str = "/etc/security/limits.d/vfio-gate.conf";

/// The systemd drop-in `doctor` names for `DefaultLimitMEMLOCK=`, and its directory (which
/// systemd does not create).
pub const SYSTEMD_DROP_IN: &str = "/etc/systemd/system.conf.d/vfio-gate.conf";
const SYSTEMD_DROP_IN_DIR: &str = "/etc/systemd/system.conf.d";

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A resource limit pair; `None` is unlimited (`RLIM_INFINITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// What the kernel checks (`ulimit -l`).
    pub soft: Option<u64>,
    /// How far the process may raise `soft` itself (`ulimit -H -l`).
    pub hard: Option<u64>,
}

impl Limit {
    /// This process's RLIMIT_MEMLOCK, which the programs it starts inherit.
    pub fn current() -> nix::Result<Self> {
        let (soft, hard) = getrlimit(Resource::RLIMIT_MEMLOCK)?;
        let finite = |v: u64| (v != RLIM_INFINITY).then_some(v);
        Ok(Self {
            soft: finite(soft),
            hard: finite(hard),
        })
    }

    /// Whether `bytes` can be pinned under the soft limit.
    pub fn allows(&self, bytes: u64) -> bool {
        self.soft.is_none_or(|s| s >= bytes)
    }

    /// Whether the hard limit lets the user raise the soft one to `bytes` without an admin.
    pub fn hard_allows(&self, bytes: u64) -> bool {
        self.hard.is_none_or(|h| h >= bytes)
    }

    /// "8 MiB (hard limit 8 MiB)", "unlimited".
    pub fn describe(&self) -> String {
        let one = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), human);
        if self.soft == self.hard {
            one(self.soft)
        } else {
            format!("{} (hard limit {})", one(self.soft), one(self.hard))
        }
    }
}

/// A size as `--memory` and QEMU's `-m` take it: a number (a fraction is allowed) with an
/// optional suffix B, K, M, G, T (powers of 1024, either case, an optional trailing "iB" or
/// "B"), in `default_unit` without one — MiB for `-m` and `--memory`, bytes for QEMU's `size=`
/// properties.
pub fn parse_size(text: &str, default_unit: u64) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let unit = match suffix.to_ascii_lowercase().as_str() {
        "" => default_unit,
        "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => GIB << 10,
        _ => {
            return Err(format!(
                "{text:?} is not a size: give a number with K, M, G or T"
            ));
        }
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 6 {
        return Err(format!(
            "{text:?} is not a size: give a number with K, M, G or T (64M, 8G, 2048 for MiB)"
        ));
    }
    let whole: u64 = whole
        .parse()
        .map_err(|_| format!("{text:?} is not a size"))?;
    let scale = 10u64.pow(u32::try_from(frac.len()).unwrap_or(0));
    let frac_value: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse()
            .map_err(|_| format!("{text:?} is not a size"))?
    };
    let bytes = whole
        .checked_mul(unit)
        .and_then(|b| b.checked_add(frac_value.checked_mul(unit)? / scale))
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes == 0 {
        return Err(format!("{text:?} is zero"));
    }
    Ok(bytes)
}

/// `--memory`'s parser: [`parse_size`] in MiB.
pub fn memory_arg(text: &str) -> Result<u64, String> {
    parse_size(text, MIB)
}

/// "8 MiB", "1 GiB", "1.5 GiB", "640 KiB", "100 B".
pub fn human(bytes: u64) -> String {
    for (unit, name) in [(GIB << 10, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes >= unit {
            let tenths = (bytes * 10 + unit / 2) / unit;
            return if tenths % 10 == 0 {
                format!("{} {name}", tenths / 10)
            } else {
                format!("{}.{} {name}", tenths / 10, tenths % 10)
            };
        }
    }
    format!("{bytes} B")
}

/// What the memlock limit must be for a guest with `guest` bytes of RAM, in bytes: the RAM plus
/// [`MARGIN`], rounded up to a whole KiB (limits.conf counts in KiB).
pub fn needed(guest: u64) -> u64 {
    guest.div_ceil(KIB).saturating_add(MARGIN / KIB) * KIB
}

/// `bytes` as systemd's `LimitMEMLOCK=` takes it: the largest unit that divides it ("2G").
pub fn systemd_value(bytes: u64) -> String {
    for (unit, suffix) in [(GIB, "G"), (MIB, "M"), (KIB, "K")] {
        if bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// The exact fix for a memlock limit below `need` bytes, for `who` (`@vm-users` or a user name)
/// in limits.d: login sessions, systemd units, and the user's own `ulimit` when the hard limit
/// allows it.
pub fn fix(need: u64, who: &str, limit: &Limit) -> String {
    let kib = need / KIB;
    let sd = systemd_value(need);
    let mut fix = String::new();
    if limit.hard_allows(need) {
        fix.push_str(&format!(
            "Your hard limit allows it, so in the shell that starts the VM: ulimit -l {kib}. \
             To make it last, an admin: "
        ));
    } else {
        fix.push_str("An admin (root) raises it: ");
    }
    fix.push_str(&format!(
        "for login sessions, echo '{who} - memlock {kib}' > {LIMITS_FILE} (KiB; pam_limits \
         applies it at the next login: log out and in again); for a VM started by a systemd unit, \
         LimitMEMLOCK={sd} in the unit's [Service] section (systemctl edit UNIT); for every unit \
         and every user's systemd instance, mkdir -p {SYSTEMD_DROP_IN_DIR} && printf \
         '[Manager]\\nDefaultLimitMEMLOCK={sd}\\n' > {SYSTEMD_DROP_IN}, then systemctl \
         daemon-reexec. docs/memlock.md says which applies \
         where"
    ));
    fix
}

/// The guest RAM a QEMU command line asks for, and the arguments that say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuMemory {
    pub bytes: u64,
    /// "-m 4G", "-object memory-backend-ram,…size=4G", "QEMU's default of 128 MiB".
    pub source: String,
}

/// Whether `program` (a path or a name) looks like QEMU: `qemu-system-*` or `qemu-kvm`.
pub fn is_qemu(program: &str) -> bool {
    let name = Path::new(program)
        .file_name()
        .map_or(program.into(), |n| n.to_string_lossy());
    name.starts_with("qemu-system-") || name == "qemu-kvm"
}

/// The guest RAM of a QEMU command line (`args` without the program): the last `-m`/`--m`
/// (`-m 4G`, `-m 4096` in MiB, `-m size=4G,maxmem=8G`, `-m 4G,slots=2`), or the sum of the
/// `-object memory-backend-*,size=` objects when that is more (NUMA nodes, `memory-backend=`);
/// QEMU's default of 128 MiB without either. `None` when a size does not parse (QEMU will say).
pub fn qemu_memory(args: &[OsString]) -> Option<QemuMemory> {
    let mut m: Option<QemuMemory> = None;
    let mut backends = 0u64;
    let mut backend_count = 0;
    let mut it = args.iter().map(|a| a.to_string_lossy());
    while let Some(arg) = it.next() {
        let option = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'));
        match option {
            Some("m") => {
                let value = it.next()?;
                let size = value.split(',').enumerate().find_map(|(i, item)| {
                    match item.split_once('=') {
                        Some(("size", v)) => Some(v),
                        None if i == 0 => Some(item),
                        _ => None,
                    }
                })?;
                m = Some(QemuMemory {
                    bytes: parse_size(size, MIB).ok()?,
                    source: format!("{arg} {value}"),
                });
            }
            Some("object") => {
                let value = it.next()?;
                if value.starts_with("memory-backend-") {
                    if let Some(size) = value.split(',').find_map(|i| i.strip_prefix("size=")) {
                        backends = backends.saturating_add(parse_size(size, 1).ok()?);
                        backend_count += 1;
                    }
                }
            }
            _ => {}
        }
    }
    match m {
        Some(m) if m.bytes >= backends => Some(m),
        _ if backend_count > 0 => Some(QemuMemory {
            bytes: backends,
            source: if backend_count == 1 {
                "its memory-backend object".to_owned()
            } else {
                format!("its {backend_count} memory-backend objects")
            },
        }),
        _ => Some(QemuMemory {
            bytes: QEMU_DEFAULT_RAM,
            source: "QEMU's default, without -m".to_owned(),
        }),
    }
}

/// `vfio-gate run`'s warning before it starts `command` on vfio-pci devices: when the command is
/// QEMU and its guest RAM is more than the memlock limit lets it pin. `None` otherwise.
pub fn run_warning(command: &[OsString], limit: &Limit) -> Option<String> {
    let (program, args) = command.split_first()?;
    let program = program.to_string_lossy();
    if !is_qemu(&program) {
        return None;
    }
    let name = Path::new(program.as_ref())
        .file_name()
        .map_or_else(|| program.to_string(), |n| n.to_string_lossy().into_owned());
    let memory = qemu_memory(args)?;
    if limit.allows(memory.bytes) {
        return None;
    }
    let need = needed(memory.bytes);
    let size = systemd_value(memory.bytes.div_ceil(MIB) * MIB);
    let raise = if limit.hard_allows(need) {
        format!(
            "raise it first (your hard limit allows it): ulimit -l {}",
            need / KIB
        )
    } else {
        format!(
            "an admin must raise it to {} ({} KiB) for you",
            human(need),
            need / KIB
        )
    };
    Some(format!(
        "{name} asks for {} of guest RAM ({}), which VFIO pins, but your memlock limit (ulimit -l) \
         is {}: the VM will fail to map its memory for the device (VFIO_MAP_DMA failed: Cannot \
         allocate memory). To give it the RAM and libvirt's 1 GiB margin, {raise}; vfio-gate \
         doctor --memory {size} gives the exact fix",
        human(memory.bytes),
        memory.source,
        limit.describe(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn sizes_parse_as_qemu_and_limits_conf_count_them() {
        for (text, unit, bytes) in [
            ("64M", MIB, 64 * MIB),
            ("8G", MIB, 8 * GIB),
            ("2048", MIB, 2 * GIB),
            ("1.5G", MIB, 3 * GIB / 2),
            ("512k", MIB, 512 * KIB),
            ("4GiB", MIB, 4 * GIB),
            ("1t", MIB, GIB << 10),
            ("4096", 1, 4096),
            ("1G", 1, GIB),
        ] {
            assert_eq!(parse_size(text, unit), Ok(bytes), "{text}");
        }
        for bad in ["", "G", "1X", "-1G", "0", "1.2.3G", "99999999999999999999G"] {
            assert!(parse_size(bad, MIB).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_are_shown_in_the_largest_unit() {
        assert_eq!(human(8 * MIB), "8 MiB");
        assert_eq!(human(GIB), "1 GiB");
        assert_eq!(human(3 * GIB / 2), "1.5 GiB");
        assert_eq!(human(64 * KIB), "64 KiB");
        assert_eq!(human(100), "100 B");
        assert_eq!(systemd_value(2 * GIB), "2G");
        assert_eq!(systemd_value(1088 * MIB), "1088M");
        assert_eq!(systemd_value(1025 * KIB), "1025K");
    }

    #[test]
    fn the_need_is_the_guest_ram_plus_a_gib_in_whole_kib() {
        assert_eq!(needed(GIB), 2 * GIB);
        assert_eq!(needed(64 * MIB) / KIB, 1_114_112);
        assert_eq!(needed(1), GIB + KIB);
    }

    #[test]
    fn the_limit_compares_the_soft_value_and_says_both() {
        let l = Limit {
            soft: Some(8 * MIB),
            hard: Some(64 * MIB),
        };
        assert!(l.allows(8 * MIB) && !l.allows(8 * MIB + 1));
        assert!(l.hard_allows(64 * MIB) && !l.hard_allows(GIB));
        assert_eq!(l.describe(), "8 MiB (hard limit 64 MiB)");
        let same = Limit {
            soft: Some(8 * MIB),
            hard: Some(8 * MIB),
        };
        assert_eq!(same.describe(), "8 MiB");
        let none = Limit {
            soft: None,
            hard: None,
        };
        assert!(none.allows(u64::MAX) && none.hard_allows(u64::MAX));
        assert_eq!(none.describe(), "unlimited");
    }

    #[test]
    fn the_fix_names_limits_d_in_kib_and_systemd_in_units() {
        let low = Limit {
            soft: Some(8 * MIB),
            hard: Some(8 * MIB),
        };
        let f = fix(needed(GIB), "@vm-users", &low);
        assert!(f.starts_with("An admin (root) raises it: "), "{f}");
        assert!(
            f.contains(
                "echo '@vm-users - memlock 2097152' > /etc/security/limits.d/vfio-gate.conf"
            ),
            "{f}"
        );
        assert!(f.contains("at the next login"), "{f}");
        assert!(
            f.contains("LimitMEMLOCK=2G in the unit's [Service] section"),
            "{f}"
        );
        assert!(
            f.contains(
                "mkdir -p /etc/systemd/system.conf.d && printf \
                 '[Manager]\\nDefaultLimitMEMLOCK=2G\\n' > \
                 /etc/systemd/system.conf.d/vfio-gate.conf, then systemctl daemon-reexec"
            ),
            "{f}"
        );
        let high_hard = Limit {
            soft: Some(8 * MIB),
            hard: None,
        };
        assert!(fix(needed(GIB), "alice", &high_hard).starts_with(
            "Your hard limit allows it, so in the shell that starts the VM: ulimit -l 2097152."
        ));
    }

    #[test]
    fn qemu_is_recognised_by_its_program_name() {
        for q in [
            "qemu-system-x86_64",
            "/usr/bin/qemu-system-aarch64",
            "qemu-kvm",
            "/usr/libexec/qemu-kvm",
        ] {
            assert!(is_qemu(q), "{q}");
        }
        for other in [
            "sh",
            "qemu-img",
            "virsh",
            "/usr/bin/kvm-ok",
            "my-qemu-system-x86_64",
        ] {
            assert!(!is_qemu(other), "{other}");
        }
    }

    #[test]
    fn qemu_memory_comes_from_m_in_every_form() {
        let m = |a: &[&str]| qemu_memory(&args(a)).map(|m| (m.bytes, m.source));
        assert_eq!(m(&["-m", "4G"]), Some((4 * GIB, "-m 4G".into())));
        assert_eq!(m(&["-m", "2048"]), Some((2 * GIB, "-m 2048".into())));
        assert_eq!(m(&["--m", "1G"]), Some((GIB, "--m 1G".into())));
        assert_eq!(
            m(&["-m", "size=3G,slots=2,maxmem=8G"]),
            Some((3 * GIB, "-m size=3G,slots=2,maxmem=8G".into()))
        );
        assert_eq!(
            m(&["-m", "2G,maxmem=4G"]),
            Some((2 * GIB, "-m 2G,maxmem=4G".into()))
        );
        // The last -m wins, as in QEMU.
        assert_eq!(
            m(&["-m", "1G", "-name", "vm", "-m", "64"]),
            Some((64 * MIB, "-m 64".into()))
        );
        assert_eq!(
            m(&["-M", "q35", "-nodefaults"]),
            Some((128 * MIB, "QEMU's default, without -m".into()))
        );
        // Backends in bytes by default; the larger of -m and their sum.
        assert_eq!(
            m(&[
                "-m",
                "1G",
                "-object",
                "memory-backend-ram,id=n0,size=2G",
                "-object",
                "memory-backend-memfd,id=n1,size=2147483648",
                "-object",
                "iothread,id=io0",
            ]),
            Some((4 * GIB, "its 2 memory-backend objects".into()))
        );
        assert_eq!(
            m(&[
                "-m",
                "8G",
                "-object",
                "memory-backend-file,id=m,size=8G,mem-path=/dev/shm/x"
            ]),
            Some((8 * GIB, "-m 8G".into()))
        );
        // What QEMU itself would refuse: no guess.
        assert_eq!(m(&["-m", "lots"]), None);
        assert_eq!(m(&["-m"]), None);
    }

    #[test]
    fn run_warns_only_for_qemu_above_the_limit() {
        let low = Limit {
            soft: Some(8 * MIB),
            hard: Some(8 * MIB),
        };
        let w = run_warning(&args(&["/usr/bin/qemu-system-x86_64", "-m", "1G"]), &low).unwrap();
        assert_eq!(
            w,
            "qemu-system-x86_64 asks for 1 GiB of guest RAM (-m 1G), which VFIO pins, but your \
             memlock limit (ulimit -l) is 8 MiB: the VM will fail to map its memory for the device \
             (VFIO_MAP_DMA failed: Cannot allocate memory). To give it the RAM and libvirt's 1 GiB \
             margin, an admin must raise it to 2 GiB (2097152 KiB) for you; vfio-gate doctor \
             --memory 1G gives the exact fix"
        );
        let soft_only = Limit {
            soft: Some(8 * MIB),
            hard: None,
        };
        let w = run_warning(&args(&["qemu-kvm", "-m", "size=1536"]), &soft_only).unwrap();
        assert!(
            w.contains("raise it first (your hard limit allows it): ulimit -l 2621440;"),
            "{w}"
        );
        assert!(w.contains("doctor --memory 1536M"), "{w}");
        let enough = Limit {
            soft: Some(GIB),
            hard: Some(GIB),
        };
        assert_eq!(
            run_warning(&args(&["qemu-system-x86_64", "-m", "1G"]), &enough),
            None
        );
        assert_eq!(run_warning(&args(&["sh", "-c", "qemu -m 64G"]), &low), None);
        let default = run_warning(&args(&["qemu-system-x86_64"]), &low).unwrap();
        assert!(
            default.contains("128 MiB of guest RAM (QEMU's default, without -m)"),
            "{default}"
        );
    }
}
