//! `vfio-gate boot-config`: what claims reserved devices before their host drivers do, for
//! drivers that bind before userspace — the modprobe.d file, the kernel command line, the
//! initramfs rebuild — computed from the policy's `[[reserve]]`s and this host's devices, printed
//! (or as JSON); with `--write`, as root, the modprobe.d file written (`write`).
//!
//! What each reserved device gets, companions (the other endpoints of a reserved device's IOMMU
//! group, held by `companions`) exactly like devices a reservation names, on the driver that
//! holds them:
//!
//! - its host driver module — the module bound to it now (its `driver/module` link), unless that
//!   is vfio-pci or pci-stub; else every module whose `modules.alias` pattern matches its
//!   `modalias` — gets `softdep MODULE pre: DRIVER`, so modprobe loads the driver that holds the
//!   device whenever it loads the host driver. A module built into the kernel
//!   (`modules.builtin.alias`) cannot be ordered: a note says only the kernel command line claims
//!   the device first.
//! - its `vendor:device` ids go to `DRIVER.ids=` on the kernel command line and, with `--ids`, to
//!   `options DRIVER ids=` in the file. Ids claim every device with those ids: a warning names
//!   every other device of this host that has them. Ids reserved on both drivers are left out
//!   (ids cannot tell the devices apart).
//!
//! Devices the helper would not hold are left out with a warning: a built-in guard protects them
//! (as `policy check` and `vfio-gated --reserve` decide), or reservations disagree on them.

mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use vfio_gate_host::modalias::AliasTable;
use vfio_gate_host::reserve::Held;
use vfio_gate_host::{PciView, SysfsError, SysfsView};
use vfio_gate_policy::DeviceFacts;
use vfio_gate_protocol::{Driver, PciAddress, RuleRef};

use super::Context;
use crate::cli::BootConfigArgs;
use crate::error::{DEFAULT_POLICY, Error, Status};
use crate::json::{self, PolicyJson, Reserved, Rule};
use crate::offline::{self, Evaluator, HoldRefusal, Host};
use crate::render::{Table, guard_label, ids, join_words};

pub use write::FILE_NAME;

/// Where `--write` puts the file unless `--modprobe-d` says otherwise.
pub const MODPROBE_D: &str = "/etc/modprobe.d";

/// The initramfs rebuild commands: distributions, command.
pub const INITRAMFS: [(&str, &str); 3] = [
    ("Debian, Ubuntu", "update-initramfs -u"),
    ("Fedora", "dracut -f"),
    ("Arch", "mkinitcpio -P"),
];

/// `vfio-gate boot-config [--write] [--ids] [--policy PATH] [--modules-dir DIR]`.
pub fn run(
    ctx: &Context<'_>,
    args: &BootConfigArgs,
    out: &mut impl Write,
) -> Result<Status, Error> {
    if args.write {
        // Before anything is read: a user who cannot write the file learns it first.
        write::check_root(&args.command_line(true))?;
    }
    let host = Host::from(&args.host);
    let policy_path = offline::absolute(&args.policy);
    let policy = host.load_policy(&policy_path).map_err(Error::Policy)?;
    let view = host.view();
    let host_use = host.host_use();
    let evaluator = Evaluator {
        policy: &policy,
        view: &view,
        host_use: &host_use,
        rule: offline::viability(),
        sysfs: &host.sysfs,
    };
    let holds = evaluator.holds()?;
    let path = policy_path.display().to_string();
    let modules_dir = args.modules_dir.clone().unwrap_or_else(default_modules_dir);
    let config = if holds.is_empty() {
        None
    } else {
        let table = AliasTable::load(&modules_dir).map_err(|source| Error::ModuleAliases {
            dir: modules_dir.clone(),
            source,
        })?;
        let devices = host.devices()?;
        let sysfs_error = |source| Error::Sysfs {
            sysfs: host.sysfs.clone(),
            source,
        };
        let found =
            Found::read(&evaluator, &view, &table, &holds, &devices).map_err(sysfs_error)?;
        Some(BootConfig::new(found, &path, args.ids))
    };
    let target = args.modprobe_d.join(FILE_NAME);
    let written = match (&config, args.write) {
        (Some(c), true) => Some(write::write_conf(&args.modprobe_d, &c.file)?),
        _ => None,
    };
    let reservations = policy.reservations().len();
    let sha = policy.sha256();
    let doc = BootConfigJson::new(
        PolicyJson::new(Some(&path), Some(&sha), policy.sources()),
        &modules_dir,
        &target,
        config.as_ref(),
        args.ids,
        written.as_deref(),
    );
    ctx.print(out, &doc, || match &config {
        None => nothing_text(&path, reservations, args),
        Some(c) => config_text(c, args, &target, written.as_deref()),
    })?;
    Ok(Status::Ok)
}

/// `/lib/modules/RELEASE` of the running kernel.
fn default_modules_dir() -> PathBuf {
    let release = offline::kernel_release().unwrap_or_else(|| "RELEASE".to_owned());
    Path::new("/lib/modules").join(release)
}

/// A module that would drive a reserved device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostModule {
    /// The module name, as modprobe knows it.
    pub module: String,
    /// Built into the kernel: no modprobe.d line orders it.
    pub builtin: bool,
    /// How it was found: `bound` (the device's driver now) or `alias` (its `modalias` matches
    /// the module's pattern in `modules.alias` or `modules.builtin.alias`).
    pub source: &'static str,
}

/// One device the policy holds from boot, as read from this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldDevice {
    pub address: PciAddress,
    /// Hex, 4 digits: "8086".
    pub vendor: String,
    pub device: String,
    /// The driver that holds it.
    pub driver: Driver,
    /// The `[[reserve]]` that holds it.
    pub rule: RuleRef,
    /// Held as another endpoint of this reserved device's IOMMU group.
    pub companion_of: Option<PciAddress>,
    /// The driver bound to it now.
    pub current_driver: Option<String>,
    /// The host drivers that would take it; empty when none is known.
    pub host_modules: Vec<HostModule>,
    /// Why it is left out of the configuration (the helper would not hold it), if it is.
    pub left_out: Option<String>,
    ids: (u16, u16),
}

/// A device reservations disagree on: held by none, left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub address: PciAddress,
    pub reason: String,
}

/// What was read from the host: the held devices, the conflicts, and every device (for the ids).
#[derive(Debug, Clone)]
pub struct Found {
    pub held: Vec<HeldDevice>,
    pub conflicts: Vec<Conflict>,
    /// Every device of the host: address and ids.
    pub all: Vec<(PciAddress, u16, u16)>,
}

impl Found {
    /// Reads, for each hold, the device's ids, driver and host driver modules, and whether the
    /// helper would refuse to hold it.
    pub fn read(
        evaluator: &Evaluator<'_>,
        view: &SysfsView,
        table: &AliasTable,
        holds: &[(PciAddress, Held)],
        devices: &[DeviceFacts],
    ) -> Result<Self, SysfsError> {
        let mut held = Vec::new();
        let mut conflicts = Vec::new();
        for (dev, h) in holds {
            let r = match h {
                Held::No => continue,
                Held::Conflict(reason) => {
                    conflicts.push(Conflict {
                        address: *dev,
                        reason: reason.clone(),
                    });
                    continue;
                }
                Held::Yes(r) => r,
            };
            let facts = view.facts(*dev)?;
            let current = view.driver(*dev)?;
            let left_out = evaluator
                .hold_refusal(*dev, r.driver)
                .map(|refusal| match refusal {
                    HoldRefusal::Guard(g) => format!(
                        "vfio-gated refuses to reserve it: {} ({})",
                        guard_label(g.guard),
                        g.reason
                    ),
                    HoldRefusal::CannotTell(e) => format!(
                        "vfio-gated refuses to reserve it: whether a built-in guard protects it \
                         cannot be told ({e})"
                    ),
                });
            held.push(HeldDevice {
                address: *dev,
                vendor: format!("{:04x}", facts.vendor),
                device: format!("{:04x}", facts.device),
                driver: r.driver,
                rule: r.rule.clone(),
                companion_of: r.companion_of,
                current_driver: current.as_ref().map(ToString::to_string),
                host_modules: host_modules(view, table, *dev, current.as_ref())?,
                left_out,
                ids: (facts.vendor, facts.device),
            });
        }
        let all = devices
            .iter()
            .map(|d| (d.address, d.vendor, d.device))
            .collect();
        Ok(Self {
            held,
            conflicts,
            all,
        })
    }
}

/// The host drivers that would take `dev`: the module bound to it now unless that is vfio-pci
/// or pci-stub (or, for a built-in driver without a module link, the driver itself, built in);
/// else every module whose alias matches its modalias.
pub fn host_modules(
    view: &SysfsView,
    table: &AliasTable,
    dev: PciAddress,
    current: Option<&vfio_gate_host::DriverName>,
) -> Result<Vec<HostModule>, SysfsError> {
    let matches = table.modules_for(&view.modalias(dev)?);
    let builtin = |m: &str| matches.iter().any(|x| x.module == m && x.builtin);
    match current {
        Some(d) if !d.is(Driver::VfioPci) && !d.is(Driver::PciStub) => {
            Ok(vec![match view.driver_module(dev)? {
                Some(module) => HostModule {
                    builtin: builtin(&module),
                    module,
                    source: "bound",
                },
                // Only built-in drivers lack the link.
                None => HostModule {
                    module: d.to_string(),
                    builtin: true,
                    source: "bound",
                },
            }])
        }
        _ => Ok(matches
            .into_iter()
            .filter(|m| !Driver::ALL.iter().any(|d| d.module() == m.module))
            .map(|m| HostModule {
                module: m.module,
                builtin: m.builtin,
                source: "alias",
            })
            .collect()),
    }
}

/// `softdep MODULE pre: DRIVER...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Softdep {
    pub module: String,
    pub drivers: BTreeSet<Driver>,
    /// The devices it is for.
    pub devices: Vec<PciAddress>,
}

impl Softdep {
    pub fn line(&self) -> String {
        let drivers: Vec<&str> = self.drivers.iter().map(|d| d.as_str()).collect();
        format!("softdep {} pre: {}", self.module, drivers.join(" "))
    }
}

/// A built-in host driver module and the devices it would take first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Builtin {
    pub module: String,
    pub devices: Vec<PciAddress>,
}

/// Ids one driver claims (`DRIVER.ids=`) and the other devices of this host they catch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SameIds {
    /// "1234:11e8".
    pub ids: String,
    pub vendor: String,
    pub device: String,
    /// The driver whose `ids=` holds them.
    pub driver: Driver,
    /// The reserved devices with these ids.
    pub reserved: Vec<PciAddress>,
    /// The other devices of this host with these ids: `ids=` claims them too.
    pub others: Vec<PciAddress>,
}

/// Ids reserved on both drivers: left out of every `ids=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixedIds {
    pub ids: String,
    pub vendor: String,
    pub device: String,
    pub devices: Vec<(PciAddress, Driver)>,
}

/// The whole boot configuration for one policy on this host.
#[derive(Debug, Clone)]
pub struct BootConfig {
    pub found: Found,
    pub softdeps: Vec<Softdep>,
    pub builtin: Vec<Builtin>,
    /// Per driver (vfio-pci first), the ids it claims, sorted.
    pub ids: Vec<(Driver, Vec<(u16, u16)>)>,
    pub same_ids: Vec<SameIds>,
    pub mixed_ids: Vec<MixedIds>,
    /// `options DRIVER ids=…`, what `--ids` adds to the file.
    pub options_lines: Vec<String>,
    /// `vfio-pci.ids=…`, `pci-stub.ids=…`.
    pub kernel_parameters: Vec<String>,
    /// The modprobe.d file.
    pub file: String,
}

impl BootConfig {
    /// The configuration for what `found` says, from the policy at `policy` (named in the
    /// file's header), with the `options … ids=` lines in the file when `with_ids`.
    pub fn new(found: Found, policy: &str, with_ids: bool) -> Self {
        let kept: Vec<&HeldDevice> = found.held.iter().filter(|d| d.left_out.is_none()).collect();

        let mut softdeps: BTreeMap<String, Softdep> = BTreeMap::new();
        let mut builtin: BTreeMap<String, Vec<PciAddress>> = BTreeMap::new();
        for d in &kept {
            for m in &d.host_modules {
                if m.builtin {
                    builtin.entry(m.module.clone()).or_default().push(d.address);
                    continue;
                }
                let s = softdeps.entry(m.module.clone()).or_insert_with(|| Softdep {
                    module: m.module.clone(),
                    drivers: BTreeSet::new(),
                    devices: Vec::new(),
                });
                s.drivers.insert(d.driver);
                s.devices.push(d.address);
            }
        }

        // Which drivers each pair of ids is reserved on.
        let mut by_ids: BTreeMap<(u16, u16), Vec<&HeldDevice>> = BTreeMap::new();
        for d in &kept {
            by_ids.entry(d.ids).or_default().push(d);
        }
        let mut per_driver: BTreeMap<Driver, Vec<(u16, u16)>> = BTreeMap::new();
        let mut same_ids = Vec::new();
        let mut mixed_ids = Vec::new();
        for (pair, devices) in &by_ids {
            let drivers: BTreeSet<Driver> = devices.iter().map(|d| d.driver).collect();
            let (vendor, device) = (format!("{:04x}", pair.0), format!("{:04x}", pair.1));
            let [driver] = drivers.iter().copied().collect::<Vec<_>>()[..] else {
                mixed_ids.push(MixedIds {
                    ids: ids(pair.0, pair.1),
                    vendor,
                    device,
                    devices: devices.iter().map(|d| (d.address, d.driver)).collect(),
                });
                continue;
            };
            per_driver.entry(driver).or_default().push(*pair);
            let reserved: Vec<PciAddress> = devices.iter().map(|d| d.address).collect();
            let others: Vec<PciAddress> = found
                .all
                .iter()
                .filter(|(a, v, d)| (*v, *d) == *pair && !reserved.contains(a))
                .map(|(a, _, _)| *a)
                .collect();
            if !others.is_empty() {
                same_ids.push(SameIds {
                    ids: ids(pair.0, pair.1),
                    vendor,
                    device,
                    driver,
                    reserved,
                    others,
                });
            }
        }
        let ids_list = |pairs: &[(u16, u16)]| {
            pairs
                .iter()
                .map(|(v, d)| ids(*v, *d))
                .collect::<Vec<_>>()
                .join(",")
        };
        let options_lines = per_driver
            .iter()
            .map(|(driver, pairs)| format!("options {driver} ids={}", ids_list(pairs)))
            .collect();
        let kernel_parameters = per_driver
            .iter()
            .map(|(driver, pairs)| format!("{driver}.ids={}", ids_list(pairs)))
            .collect();
        let mut config = Self {
            found,
            softdeps: softdeps.into_values().collect(),
            builtin: builtin
                .into_iter()
                .map(|(module, devices)| Builtin { module, devices })
                .collect(),
            ids: per_driver.into_iter().collect(),
            same_ids,
            mixed_ids,
            options_lines,
            kernel_parameters,
            file: String::new(),
        };
        config.file = config.modprobe_file(policy, with_ids);
        config
    }

    /// The modprobe.d file: a header, the softdep lines, and with `with_ids` the options lines.
    /// Comments only on lines of their own (modprobe.d has no trailing comments).
    fn modprobe_file(&self, policy: &str, with_ids: bool) -> String {
        let mut f = String::new();
        f.push_str(
            "# Written by `vfio-gate boot-config --write` from the reservations ([[reserve]]) of\n",
        );
        let _ = writeln!(f, "# {policy}");
        f.push_str(
            "# Run it again when they change: it replaces this file.\n\
             #\n\
             # softdep: whenever modprobe loads the host driver of a reserved device, it loads the\n\
             # driver that holds the device first, so that one is there to claim it (through the\n\
             # driver_override vfio-gate-reserve.service sets before udev loads host drivers).\n",
        );
        if self.found.held.iter().all(|d| d.left_out.is_some()) {
            f.push_str(
                "# Nothing to order: vfio-gated would hold none of the reserved devices (vfio-gate\n\
                 # boot-config says why).\n",
            );
        } else if self.softdeps.is_empty() {
            f.push_str("# No reserved device has a host driver that is a loadable module.\n");
        }
        for s in &self.softdeps {
            let devices: Vec<String> = s.devices.iter().map(|d| d.short()).collect();
            let _ = writeln!(f, "# {} would take {}", s.module, join_words(&devices));
            let _ = writeln!(f, "{}", s.line());
        }
        if with_ids && !self.options_lines.is_empty() {
            f.push_str(
                "#\n\
                 # options ids=: as it loads, the driver claims every device with these\n\
                 # vendor:device ids, not only the reserved ones.\n",
            );
            for line in &self.options_lines {
                let _ = writeln!(f, "{line}");
            }
        }
        f
    }

    /// Every warning, as printed: devices left out, conflicts, mixed ids, same ids.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for d in &self.found.held {
            if let Some(why) = &d.left_out {
                w.push(format!("{} is left out: {why}", d.address.short()));
            }
        }
        for c in &self.found.conflicts {
            w.push(format!(
                "{} is left out: it is {}, so it is held by neither (vfio-gate policy check)",
                c.address.short(),
                c.reason
            ));
        }
        for m in &self.mixed_ids {
            let on: Vec<String> = m
                .devices
                .iter()
                .map(|(a, d)| format!("{} on {d}", a.short()))
                .collect();
            w.push(format!(
                "{} is reserved as {}: ids= cannot tell these apart, so {} is in no ids= line \
                 (the reservations still hold each on its own driver)",
                m.ids,
                join_words(&on),
                m.ids
            ));
        }
        for s in &self.same_ids {
            let reserved: Vec<String> = s.reserved.iter().map(|a| a.short()).collect();
            let others: Vec<String> = s.others.iter().map(|a| a.short()).collect();
            w.push(format!(
                "{driver}.ids={ids} (and options {driver} ids=) claims every {ids} device of this \
                 host, not only {}: also {}. Use the ids only if that is what you want; the \
                 softdep lines and vfio-gate-reserve.service hold exactly the reserved devices",
                join_words(&reserved),
                join_words(&others),
                driver = s.driver,
                ids = s.ids,
            ));
        }
        w
    }

    /// Every note, as printed: the built-in host drivers.
    pub fn notes(&self) -> Vec<String> {
        self.builtin
            .iter()
            .map(|b| {
                let devices: Vec<String> = b.devices.iter().map(|a| a.short()).collect();
                format!(
                    "{} is built into this kernel (modules.builtin.alias): no modprobe.d line \
                     can order it, so only the kernel command line claims {} before it does",
                    b.module,
                    join_words(&devices)
                )
            })
            .collect()
    }
}

/// The per-device table: DEVICE, IDS, DRIVER (bound now), HOST DRIVER (the modules that would
/// take it), RESERVED (the driver that holds it), BY (the reservation).
pub fn device_table(held: &[HeldDevice]) -> Table {
    let mut table = Table::new(vec![
        "DEVICE",
        "IDS",
        "DRIVER",
        "HOST DRIVER",
        "RESERVED",
        "BY",
    ]);
    for d in held {
        let reserved = match d.companion_of {
            None => d.driver.to_string(),
            Some(p) => format!("{} (companion of {})", d.driver, p.short()),
        };
        let modules = if d.left_out.is_some() {
            "left out (see below)".to_owned()
        } else if d.host_modules.is_empty() {
            "none known".to_owned()
        } else {
            let names: Vec<String> = d
                .host_modules
                .iter()
                .map(|m| {
                    let mut how = vec![if m.source == "bound" {
                        "bound now"
                    } else {
                        "modules.alias"
                    }];
                    if m.builtin {
                        how.push("built in");
                    }
                    format!("{} ({})", m.module, how.join(", "))
                })
                .collect();
            names.join(", ")
        };
        table.push(vec![
            d.address.short(),
            format!("{}:{}", d.vendor, d.device),
            d.current_driver.clone().unwrap_or_else(|| "-".to_owned()),
            modules,
            reserved,
            format!("'{}' ({}:{})", d.rule.name, d.rule.file, d.rule.line),
        ]);
    }
    table
}

/// The text of `boot-config` when there is something to configure.
pub fn config_text(
    c: &BootConfig,
    args: &BootConfigArgs,
    target: &Path,
    written: Option<&Path>,
) -> String {
    let mut t = String::from("Held from boot on this host:\n");
    for line in device_table(&c.found.held).to_string().lines() {
        let _ = writeln!(t, "  {line}");
    }
    let _ = writeln!(t, "\n{}:", target.display());
    t.push_str(&c.file);
    if !args.ids && !c.options_lines.is_empty() {
        let _ = writeln!(
            t,
            "\nWith --ids the file would also claim the devices by their ids (options DRIVER \
             ids=...), as the kernel command line below does."
        );
    }
    if !c.kernel_parameters.is_empty() {
        let _ = writeln!(
            t,
            "\nKernel command line, for host drivers built into the kernel or loaded from the \
             initramfs:\n  {}",
            c.kernel_parameters.join(" ")
        );
        let _ = writeln!(
            t,
            "Add them to GRUB_CMDLINE_LINUX in /etc/default/grub, then run update-grub (Fedora: \
             grub2-mkconfig -o /boot/grub2/grub.cfg); with systemd-boot, add them to \
             /etc/kernel/cmdline. vfio-gate never writes the bootloader's configuration."
        );
    }
    let _ = writeln!(
        t,
        "\nRebuild the initramfs after changing the file, when a host driver is loaded from it:"
    );
    let width = INITRAMFS.iter().map(|(d, _)| d.len()).max().unwrap_or(0);
    for (distributions, command) in INITRAMFS {
        let _ = writeln!(t, "  {distributions:<width$}  {command}");
    }
    let notes = c.notes();
    let warnings = c.warnings();
    if !notes.is_empty() || !warnings.is_empty() {
        t.push('\n');
    }
    for n in notes {
        let _ = writeln!(t, "note: {n}");
    }
    for w in warnings {
        let _ = writeln!(t, "warning: {w}");
    }
    t.push('\n');
    match written {
        Some(path) => {
            let _ = writeln!(
                t,
                "Wrote {}. Next: rebuild the initramfs (above) if a host driver is loaded from \
                 it, and put the kernel parameters in place if you use them; then reboot.",
                path.display()
            );
        }
        None => {
            let _ = writeln!(
                t,
                "Nothing was written. To write {}: sudo {}",
                target.display(),
                args.command_line(true)
            );
        }
    }
    t
}

/// The text of `boot-config` when the policy holds nothing on this host.
pub fn nothing_text(policy: &str, reservations: usize, args: &BootConfigArgs) -> String {
    let what = if reservations == 0 {
        format!("{policy} reserves no device")
    } else {
        format!(
            "the reservations of {policy} hold no device on this host (vfio-gate policy check \
             {policy} says what each matches)"
        )
    };
    let written = if args.write {
        " Nothing was written."
    } else {
        ""
    };
    format!(
        "Nothing to claim at boot: {what}.{written} To hold a device from boot, add a [[reserve]] \
         to the policy (docs/policy.md, \"Reservations\"), check it with vfio-gate policy check, \
         then run vfio-gate boot-config again.\n"
    )
}

/// `boot-config --json`.
#[derive(Debug, Serialize)]
pub struct BootConfigJson<'a> {
    pub policy: PolicyJson,
    pub modules_dir: String,
    /// The modprobe.d file `--write` writes.
    pub path: String,
    /// Every device the policy holds from boot here, with its host driver modules; those left
    /// out have `left_out`.
    pub devices: Vec<HeldJson>,
    /// Devices reservations disagree on (held by none).
    pub conflicts: Vec<ConflictJson>,
    pub softdep_lines: Vec<String>,
    /// `options DRIVER ids=…`: in `file` only with `--ids`.
    pub options_lines: &'a [String],
    pub ids_in_file: bool,
    pub kernel_parameters: &'a [String],
    /// Host driver modules built into the kernel, and the devices they would take.
    pub builtin_modules: Vec<BuiltinJson>,
    /// Ids whose `ids=` claims other devices of this host too.
    pub same_ids: Vec<SameIdsJson>,
    /// Ids reserved on both drivers, in no `ids=`.
    pub mixed_ids: Vec<MixedIdsJson>,
    pub initramfs: Vec<InitramfsJson>,
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
    /// The modprobe.d file; `null` when the policy holds nothing here.
    pub file: Option<&'a str>,
    /// Where `--write` wrote it; `null` without `--write` (or with nothing to write).
    pub written: Option<String>,
}

/// A device held from boot, as read from this host.
#[derive(Debug, Serialize)]
pub struct HeldJson {
    pub address: String,
    pub short: String,
    pub vendor: String,
    pub device: String,
    /// The driver bound to it now.
    pub driver: Option<String>,
    /// The driver that holds it and the `[[reserve]]` that says so.
    pub reserved: Reserved,
    /// The host drivers that would take it; empty when none is known.
    pub host_modules: Vec<HostModuleJson>,
    /// Why it is left out of the configuration (the helper would not hold it), if it is.
    pub left_out: Option<String>,
}

/// A module that would drive a reserved device: its name, whether it is built into the kernel,
/// and how it was found (`bound`: the device's driver now; `alias`: `modules.alias`).
#[derive(Debug, Serialize)]
pub struct HostModuleJson {
    pub module: String,
    pub builtin: bool,
    pub source: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ConflictJson {
    pub address: String,
    pub short: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct BuiltinJson {
    pub module: String,
    pub devices: Vec<String>,
}

/// Ids one driver claims (`DRIVER.ids=`) and the other devices of this host they catch.
#[derive(Debug, Serialize)]
pub struct SameIdsJson {
    /// "1234:11e8".
    pub ids: String,
    pub vendor: String,
    pub device: String,
    pub driver: &'static str,
    /// The reserved devices with these ids.
    pub reserved: Vec<String>,
    /// The other devices of this host with these ids: `ids=` claims them too.
    pub others: Vec<String>,
}

/// Ids reserved on both drivers.
#[derive(Debug, Serialize)]
pub struct MixedIdsJson {
    pub ids: String,
    pub vendor: String,
    pub device: String,
    /// Each device with these ids and the driver that holds it.
    pub devices: Vec<MixedDeviceJson>,
}

#[derive(Debug, Serialize)]
pub struct MixedDeviceJson {
    pub address: String,
    pub driver: &'static str,
}

#[derive(Debug, Serialize)]
pub struct InitramfsJson {
    pub distributions: &'static str,
    pub command: &'static str,
}

fn addresses(list: &[PciAddress]) -> Vec<String> {
    list.iter().copied().map(json::address).collect()
}

impl<'a> BootConfigJson<'a> {
    fn new(
        policy: PolicyJson,
        modules_dir: &Path,
        target: &Path,
        config: Option<&'a BootConfig>,
        ids: bool,
        written: Option<&Path>,
    ) -> Self {
        Self {
            policy,
            modules_dir: modules_dir.display().to_string(),
            path: target.display().to_string(),
            devices: config.map_or_else(Vec::new, |c| {
                c.found
                    .held
                    .iter()
                    .map(|d| HeldJson {
                        address: json::address(d.address),
                        short: d.address.short(),
                        vendor: d.vendor.clone(),
                        device: d.device.clone(),
                        driver: d.current_driver.clone(),
                        reserved: Reserved {
                            driver: d.driver.as_str(),
                            rule: Rule::from(&d.rule),
                            companion_of: d.companion_of.map(json::address),
                        },
                        host_modules: d
                            .host_modules
                            .iter()
                            .map(|m| HostModuleJson {
                                module: m.module.clone(),
                                builtin: m.builtin,
                                source: m.source,
                            })
                            .collect(),
                        left_out: d.left_out.clone(),
                    })
                    .collect()
            }),
            conflicts: config.map_or_else(Vec::new, |c| {
                c.found
                    .conflicts
                    .iter()
                    .map(|x| ConflictJson {
                        address: json::address(x.address),
                        short: x.address.short(),
                        reason: x.reason.clone(),
                    })
                    .collect()
            }),
            softdep_lines: config
                .map_or_else(Vec::new, |c| c.softdeps.iter().map(Softdep::line).collect()),
            options_lines: config.map_or(&[], |c| &c.options_lines),
            ids_in_file: ids && config.is_some_and(|c| !c.options_lines.is_empty()),
            kernel_parameters: config.map_or(&[], |c| &c.kernel_parameters),
            builtin_modules: config.map_or_else(Vec::new, |c| {
                c.builtin
                    .iter()
                    .map(|b| BuiltinJson {
                        module: b.module.clone(),
                        devices: addresses(&b.devices),
                    })
                    .collect()
            }),
            same_ids: config.map_or_else(Vec::new, |c| {
                c.same_ids
                    .iter()
                    .map(|x| SameIdsJson {
                        ids: x.ids.clone(),
                        vendor: x.vendor.clone(),
                        device: x.device.clone(),
                        driver: x.driver.as_str(),
                        reserved: addresses(&x.reserved),
                        others: addresses(&x.others),
                    })
                    .collect()
            }),
            mixed_ids: config.map_or_else(Vec::new, |c| {
                c.mixed_ids
                    .iter()
                    .map(|x| MixedIdsJson {
                        ids: x.ids.clone(),
                        vendor: x.vendor.clone(),
                        device: x.device.clone(),
                        devices: x
                            .devices
                            .iter()
                            .map(|(a, d)| MixedDeviceJson {
                                address: json::address(*a),
                                driver: d.as_str(),
                            })
                            .collect(),
                    })
                    .collect()
            }),
            initramfs: INITRAMFS
                .iter()
                .map(|(distributions, command)| InitramfsJson {
                    distributions,
                    command,
                })
                .collect(),
            notes: config.map_or_else(Vec::new, BootConfig::notes),
            warnings: config.map_or_else(Vec::new, BootConfig::warnings),
            file: config.map(|c| c.file.as_str()),
            written: written.map(|p| p.display().to_string()),
        }
    }
}

impl BootConfigArgs {
    /// This command as a user can paste it, with `--write` when `write`: the options given
    /// (policy, modules directory, `--ids`, `--modprobe-d`) and nothing else.
    pub fn command_line(&self, write: bool) -> String {
        let mut line = String::from("vfio-gate boot-config");
        if write {
            line.push_str(" --write");
        }
        if self.ids {
            line.push_str(" --ids");
        }
        if self.policy != Path::new(DEFAULT_POLICY) {
            let _ = write!(
                line,
                " --policy {}",
                crate::cli::shell_quote(&self.policy.display().to_string())
            );
        }
        if let Some(dir) = &self.modules_dir {
            let _ = write!(
                line,
                " --modules-dir {}",
                crate::cli::shell_quote(&dir.display().to_string())
            );
        }
        if self.modprobe_d != Path::new(MODPROBE_D) {
            let _ = write!(
                line,
                " --modprobe-d {}",
                crate::cli::shell_quote(&self.modprobe_d.display().to_string())
            );
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{addr, rule};

    fn held(a: &str, ids: (u16, u16), driver: Driver, module: &str) -> HeldDevice {
        HeldDevice {
            address: addr(a),
            vendor: format!("{:04x}", ids.0),
            device: format!("{:04x}", ids.1),
            driver,
            rule: rule("r", 3),
            companion_of: None,
            current_driver: Some(module.to_owned()),
            host_modules: vec![HostModule {
                module: module.to_owned(),
                builtin: false,
                source: "bound",
            }],
            left_out: None,
            ids,
        }
    }

    #[test]
    fn one_softdep_line_per_module_with_every_driver_it_must_wait_for() {
        // Two 82574Ls on e1000e, one reserved for each driver; an 82540EM on e1000.
        let found = Found {
            held: vec![
                held("01:00.0", (0x8086, 0x10d3), Driver::PciStub, "e1000e"),
                held("02:00.0", (0x8086, 0x10d3), Driver::VfioPci, "e1000e"),
                held("05:01.0", (0x8086, 0x100e), Driver::VfioPci, "e1000"),
            ],
            conflicts: vec![],
            all: vec![
                (addr("01:00.0"), 0x8086, 0x10d3),
                (addr("02:00.0"), 0x8086, 0x10d3),
                (addr("05:01.0"), 0x8086, 0x100e),
                (addr("06:00.0"), 0x8086, 0x100e),
            ],
        };
        let c = BootConfig::new(found, "/p.toml", true);
        let lines: Vec<String> = c.softdeps.iter().map(Softdep::line).collect();
        assert_eq!(
            lines,
            [
                "softdep e1000 pre: vfio-pci",
                "softdep e1000e pre: vfio-pci pci-stub"
            ]
        );
        // 8086:10d3 is on both drivers: in no ids= line, with a warning.
        assert_eq!(c.options_lines, ["options vfio-pci ids=8086:100e"]);
        assert_eq!(c.kernel_parameters, ["vfio-pci.ids=8086:100e"]);
        assert_eq!(c.mixed_ids.len(), 1);
        assert_eq!(c.same_ids.len(), 1);
        assert_eq!(c.same_ids[0].others, [addr("06:00.0")]);
        let warnings = c.warnings();
        assert!(
            warnings[0].starts_with(
                "8086:10d3 is reserved as 01:00.0 on pci-stub and 02:00.0 on vfio-pci:"
            ),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("not only 05:01.0: also 06:00.0"),
            "{warnings:?}"
        );
        assert!(c.file.contains(
            "# e1000e would take 01:00.0 and 02:00.0\nsoftdep e1000e pre: vfio-pci pci-stub\n"
        ));
        assert!(
            c.file.ends_with("options vfio-pci ids=8086:100e\n"),
            "{}",
            c.file
        );
    }
}
