//! Holding reserved devices (`[[reserve]]`): early at boot for every one of them
//! (`vfio-gated --reserve`, run by `vfio-gate-reserve.service` before udev's coldplug loads host
//! drivers), and for one device that appears later (`--reserve-device ADDR`, from the udev rule).
//!
//! A hold is the bind sequence without a user: set `driver_override` to the reservation's driver,
//! unbind whatever driver got there first, probe, verify — rolled back if the device does not
//! end up on that driver. A device already held is left alone; one a lease holds is the lease's
//! until released (the release returns it to the reservation); one the host uses (a guard) is
//! never taken. Each device gets one audit line saying which of these it was.

use vfio_gate_host::guards;
use vfio_gate_host::reserve::{self, Held};
use vfio_gate_host::{DriverName, PciView};
use vfio_gate_protocol::{Driver, PciAddress, Reservation};

use super::Service;
use crate::audit::{self, Priority};
use crate::kernel::Kernel;
use crate::sequence::{self, BindError, Original};

/// What holding one device came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldResult {
    /// It was already on the reservation's driver, with the override set: nothing written.
    Already,
    /// Put on the reservation's driver before any host driver bound it (it had no driver, or
    /// already had the right driver and only needed its override).
    Held,
    /// A host driver had bound it first (built into the kernel, or loaded from the initramfs):
    /// moved anyway. `boot-config` prints what claims it earlier.
    Late { was: String },
    /// It was on the other VM driver (`vfio-pci.ids=` where the reservation says pci-stub):
    /// moved to the reservation's.
    Moved { was: String },
    /// A lease holds its group: the reservation applies when the lease ends.
    Leased { uid: u32 },
    /// A built-in guard protects it (the host uses it): never taken.
    Refused { reason: String },
    /// Reservations disagree on its driver: held by none.
    Conflict { reason: String },
    /// The kernel did not put it on the driver; the device was put back as it was (or the
    /// reason says how far that went).
    Failed { reason: String },
}

impl HoldResult {
    fn word(&self) -> &'static str {
        match self {
            HoldResult::Already => "already",
            HoldResult::Held => "held",
            HoldResult::Late { .. } => "late",
            HoldResult::Moved { .. } => "moved",
            HoldResult::Leased { .. } => "leased",
            HoldResult::Refused { .. } => "refused",
            HoldResult::Conflict { .. } => "conflict",
            HoldResult::Failed { .. } => "failed",
        }
    }
}

/// What a `--reserve` run did, device by device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReserveReport {
    pub devices: Vec<(PciAddress, HoldResult)>,
}

impl ReserveReport {
    /// Devices the kernel would not put on their reservation's driver.
    pub fn failed(&self) -> usize {
        self.devices
            .iter()
            .filter(|(_, r)| matches!(r, HoldResult::Failed { .. }))
            .count()
    }
}

impl Service {
    /// Holds every device the policy reserves (`only`: just that one, if the policy reserves
    /// it), under the mutation lock. One audit line per device, and a summary line.
    pub fn apply_reservations(&self, only: Option<PciAddress>) -> ReserveReport {
        let _lock = self.lock();
        let holds = match only {
            None => reserve::holds(&self.kernel, &self.policy),
            Some(dev) => reserve::held(&self.kernel, &self.policy, dev).map(|h| vec![(dev, h)]),
        };
        let holds = match holds {
            Ok(h) => h,
            Err(e) => {
                audit::Line::new("reserve-error").field("error", e).emit();
                return ReserveReport {
                    devices: only
                        .map(|dev| {
                            (
                                dev,
                                HoldResult::Failed {
                                    reason: "reading sysfs failed".into(),
                                },
                            )
                        })
                        .into_iter()
                        .collect(),
                };
            }
        };
        let mut report = ReserveReport::default();
        for (dev, held) in holds {
            let result = match &held {
                Held::No => continue,
                Held::Conflict(reason) => HoldResult::Conflict {
                    reason: reason.clone(),
                },
                Held::Yes(r) => self.hold(dev, r),
            };
            reserve_line(dev, held.reservation(), &result);
            report.devices.push((dev, result));
        }
        let count = |w: &str| report.devices.iter().filter(|(_, r)| r.word() == w).count();
        audit::Line::new("reserve-done")
            .field("devices", report.devices.len())
            .field("held", count("held") + count("already"))
            .field("late", count("late"))
            .field("moved", count("moved"))
            .field("leased", count("leased"))
            .field("refused", count("refused"))
            .field("conflicts", count("conflict"))
            .field("failed", report.failed())
            .emit();
        report
    }

    /// Puts `dev` on `r`'s driver, unless a lease or a guard says otherwise.
    fn hold(&self, dev: PciAddress, r: &Reservation) -> HoldResult {
        let group = self.kernel.iommu_group(dev).ok().flatten();
        if let Some(g) = group
            && let Ok(Some(lease)) = self.state.read(g)
        {
            return HoldResult::Leased {
                uid: lease.owner_uid,
            };
        }
        let m = match self.member_state(dev) {
            Ok(m) => m,
            Err(e) => {
                return HoldResult::Failed {
                    reason: e.to_string(),
                };
            }
        };
        let original = match sequence::original_state(&self.kernel, dev) {
            Ok(o) => o,
            Err(e) => {
                return HoldResult::Failed {
                    reason: e.to_string(),
                };
            }
        };
        let target = DriverName::from(r.driver);
        if original.driver.as_ref() == Some(&target) {
            if original.driver_override.as_ref() == Some(&target) {
                return HoldResult::Already;
            }
            // On the right driver already (`ids=`): the override keeps it there through any
            // later unbind and probe.
            return match self.kernel.set_override(dev, Some(&target)) {
                Ok(()) => HoldResult::Held,
                Err(e) => HoldResult::Failed {
                    reason: e.to_string(),
                },
            };
        }
        match guards::check(&self.kernel, &*self.host, dev, m.kind) {
            Ok(None) => {}
            Ok(Some(refusal)) => {
                return HoldResult::Refused {
                    reason: refusal.reason,
                };
            }
            Err(e) => {
                return HoldResult::Refused {
                    reason: format!("the guards cannot tell whether the host uses it: {e}"),
                };
            }
        }
        match sequence::bind(&self.kernel, dev, r.driver, &original) {
            Ok(()) => classify(&original),
            Err(BindError::AlreadyOnTarget { .. }) => HoldResult::Already,
            Err(e) => HoldResult::Failed {
                reason: e.to_string(),
            },
        }
    }
}

/// What a hold from `original` was: early (no driver yet), late (a host driver was first), or a
/// move between the two VM drivers.
fn classify(original: &Original) -> HoldResult {
    match &original.driver {
        None => HoldResult::Held,
        Some(d) if d.is(Driver::VfioPci) || d.is(Driver::PciStub) => {
            HoldResult::Moved { was: d.to_string() }
        }
        Some(d) => HoldResult::Late { was: d.to_string() },
    }
}

fn reserve_line(dev: PciAddress, r: Option<&Reservation>, result: &HoldResult) {
    let mut line = audit::Line::new("reserve");
    line.field("device", dev);
    if let Some(r) = r {
        line.field("driver", r.driver)
            .field("rule", &r.rule.name)
            .field("rule_at", format!("{}:{}", r.rule.file, r.rule.line));
        if let Some(primary) = r.companion_of {
            line.field("companion_of", primary);
        }
    }
    line.field("result", result.word()).priority(match result {
        HoldResult::Already | HoldResult::Held => Priority::Info,
        HoldResult::Moved { .. } | HoldResult::Leased { .. } => Priority::Notice,
        HoldResult::Late { .. } | HoldResult::Refused { .. } | HoldResult::Conflict { .. } => {
            Priority::Warning
        }
        HoldResult::Failed { .. } => Priority::Error,
    });
    match result {
        HoldResult::Late { was } => {
            line.field("was", was).field(
                "fix",
                format!(
                    "{was} bound it before vfio-gate-reserve.service ran (built into the kernel, \
                     or loaded from the initramfs): `vfio-gate boot-config` prints the modprobe.d \
                     lines and kernel parameters that claim it first"
                ),
            );
        }
        HoldResult::Moved { was } => {
            line.field("was", was);
        }
        HoldResult::Leased { uid } => {
            line.field("owner_uid", uid);
        }
        HoldResult::Refused { reason }
        | HoldResult::Conflict { reason }
        | HoldResult::Failed { reason } => {
            line.field("reason", reason);
        }
        HoldResult::Already | HoldResult::Held => {}
    }
    line.emit();
}
