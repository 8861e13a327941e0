//! The bind and release sequences, written once against [`Kernel`].
//!
//! Bind: record the original driver and override → write the override → unbind the current
//! driver → `drivers_probe` → re-read the `driver` link (a probe "succeeds" even when nothing
//! binds) → on any failure, roll back to the recorded state and say whether that worked.
//!
//! Release: restore the recorded override (a newline clears it) → unbind → `drivers_probe` →
//! re-read the `driver` link and report whether the original driver came back.

use std::fmt;

use vfio_gate_host::{DriverName, SysfsError};
use vfio_gate_protocol::{Driver, PciAddress};

use crate::kernel::Kernel;

/// The state of a device before vfio-gate touched it: what release and rollback restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub driver: Option<DriverName>,
    pub driver_override: Option<DriverName>,
}

/// The steps of a bind or release, named in errors and audit lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    ReadState,
    SetOverride,
    Unbind,
    Probe,
    Verify,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::ReadState => "reading the device's state",
            Step::SetOverride => "writing driver_override",
            Step::Unbind => "unbinding the current driver",
            Step::Probe => "writing drivers_probe",
            Step::Verify => "checking the bound driver",
        })
    }
}

/// How a rollback ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollback {
    /// The device is back on its original driver with its original override.
    Restored,
    /// It is not: the message says what state it was left in.
    Incomplete(String),
}

impl fmt::Display for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rollback::Restored => f.write_str("the device was restored to its previous driver"),
            Rollback::Incomplete(why) => write!(f, "rolling back did not complete: {why}"),
        }
    }
}

/// A bind did not happen.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{dev} is already on {driver}")]
    AlreadyOnTarget { dev: PciAddress, driver: Driver },
    #[error("{step} for {dev} failed: {source}; {rollback}")]
    Step {
        dev: PciAddress,
        step: Step,
        #[source]
        source: SysfsError,
        rollback: Rollback,
    },
    #[error(
        "{dev} did not bind to {target} (driver now: {}); is the {} module loaded? {rollback}",
        found.as_ref().map_or("none", DriverName::as_str), target.module()
    )]
    NotBound {
        dev: PciAddress,
        target: Driver,
        found: Option<DriverName>,
        rollback: Rollback,
    },
}

/// A release did not happen, or only partly.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{step} for {dev} failed: {source}")]
    Step {
        dev: PciAddress,
        step: Step,
        #[source]
        source: SysfsError,
    },
}

/// What a release left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub expected: Option<DriverName>,
    pub restored: Option<DriverName>,
}

/// Reads the state that release and rollback will restore.
pub fn original_state(k: &dyn Kernel, dev: PciAddress) -> Result<Original, SysfsError> {
    Ok(Original {
        driver: k.driver(dev)?,
        driver_override: k.driver_override(dev)?,
    })
}

/// Binds `dev` to `target`. On error the device has been rolled back (the error says whether
/// that worked). `original` must be what [`original_state`] read just before, under the same
/// mutation lock, and is what the caller records in the lease before calling this.
pub fn bind(
    k: &dyn Kernel,
    dev: PciAddress,
    target: Driver,
    original: &Original,
) -> Result<(), BindError> {
    if original.driver.as_ref().is_some_and(|d| d.is(target)) {
        return Err(BindError::AlreadyOnTarget {
            dev,
            driver: target,
        });
    }
    let fail = |step, source| BindError::Step {
        dev,
        step,
        source,
        rollback: roll_back(k, dev, original),
    };
    k.set_override(dev, Some(&target.into()))
        .map_err(|e| fail(Step::SetOverride, e))?;
    crate::fault::point("bind:override-set");
    if original.driver.is_some() {
        k.unbind(dev).map_err(|e| fail(Step::Unbind, e))?;
    }
    crate::fault::point("bind:unbound");
    k.probe(dev).map_err(|e| fail(Step::Probe, e))?;
    crate::fault::point("bind:probed");
    let found = k.driver(dev).map_err(|e| fail(Step::Verify, e))?;
    if found.as_ref().is_some_and(|d| d.is(target)) {
        Ok(())
    } else {
        Err(BindError::NotBound {
            dev,
            target,
            found,
            rollback: roll_back(k, dev, original),
        })
    }
}

/// Puts `dev` back to `original`, best effort, and says how far it got.
pub fn roll_back(k: &dyn Kernel, dev: PciAddress, original: &Original) -> Rollback {
    let mut problems = Vec::new();
    if let Err(e) = k.set_override(dev, original.driver_override.as_ref()) {
        problems.push(e.to_string());
    }
    match k.driver(dev) {
        Ok(current) if current == original.driver => return summarize(k, dev, original, problems),
        Ok(Some(_)) => {
            if let Err(e) = k.unbind(dev) {
                problems.push(e.to_string());
            }
        }
        Ok(None) => {}
        Err(e) => problems.push(e.to_string()),
    }
    if original.driver.is_some()
        && let Err(e) = k.probe(dev)
    {
        problems.push(e.to_string());
    }
    summarize(k, dev, original, problems)
}

fn summarize(
    k: &dyn Kernel,
    dev: PciAddress,
    original: &Original,
    mut problems: Vec<String>,
) -> Rollback {
    match original_state(k, dev) {
        Ok(now) if now == *original && problems.is_empty() => Rollback::Restored,
        Ok(now) => {
            if now != *original {
                problems.push(format!(
                    "driver is {} (was {}), override is {} (was {})",
                    show(&now.driver),
                    show(&original.driver),
                    show(&now.driver_override),
                    show(&original.driver_override)
                ));
            }
            Rollback::Incomplete(problems.join("; "))
        }
        Err(e) => {
            problems.push(e.to_string());
            Rollback::Incomplete(problems.join("; "))
        }
    }
}

fn show(d: &Option<DriverName>) -> &str {
    d.as_ref().map_or("none", DriverName::as_str)
}

/// Gives `dev` back: restore the recorded override, unbind, re-probe, and report which driver
/// took it. A host driver that does not come back is reported, not an error: the device is no
/// longer on the target driver, so the lease is over either way.
pub fn release(
    k: &dyn Kernel,
    dev: PciAddress,
    original: &Original,
) -> Result<Released, ReleaseError> {
    let fail = |step, source| ReleaseError::Step { dev, step, source };
    // Already as it was (a release that a previous helper finished for this member before it
    // died): touch nothing. Unbinding and re-probing a host driver that is back would take the
    // device away from the host for a moment (a NIC's interface goes down and comes back).
    let now = original_state(k, dev).map_err(|e| fail(Step::ReadState, e))?;
    if now == *original {
        return Ok(Released {
            expected: original.driver.clone(),
            restored: now.driver,
        });
    }
    k.set_override(dev, original.driver_override.as_ref())
        .map_err(|e| fail(Step::SetOverride, e))?;
    crate::fault::point("release:override-restored");
    if k.driver(dev)
        .map_err(|e| fail(Step::ReadState, e))?
        .is_some()
    {
        k.unbind(dev).map_err(|e| fail(Step::Unbind, e))?;
    }
    crate::fault::point("release:unbound");
    k.probe(dev).map_err(|e| fail(Step::Probe, e))?;
    crate::fault::point("release:probed");
    let restored = k.driver(dev).map_err(|e| fail(Step::Verify, e))?;
    Ok(Released {
        expected: original.driver.clone(),
        restored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::sim::{SimKernel, SimOp};

    fn a(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    fn name(s: &str) -> Option<DriverName> {
        DriverName::new(s)
    }

    fn bind_from_scratch(
        k: &SimKernel,
        dev: PciAddress,
        target: Driver,
    ) -> (Original, Result<(), BindError>) {
        let original = original_state(k, dev).unwrap();
        let r = bind(k, dev, target, &original);
        (original, r)
    }

    #[test]
    fn bind_then_release_restores_the_host_driver() {
        let k = SimKernel::guest_layout();
        let dev = a("01:00.0");
        let (original, r) = bind_from_scratch(&k, dev, Driver::VfioPci);
        r.unwrap();
        let d = k.device(dev).unwrap();
        assert_eq!(d.driver, name("vfio-pci"));
        assert_eq!(d.driver_override, name("vfio-pci"));
        assert_eq!(
            k.log(),
            [
                "override 0000:01:00.0 vfio-pci",
                "unbind 0000:01:00.0 e1000e",
                "probe 0000:01:00.0"
            ]
        );
        let released = release(&k, dev, &original).unwrap();
        assert_eq!(released.restored, name("e1000e"));
        assert_eq!(released.expected, released.restored);
        let d = k.device(dev).unwrap();
        assert_eq!((d.driver, d.driver_override), (name("e1000e"), None));
    }

    #[test]
    fn driverless_device_binds_without_unbind_and_goes_back_to_none() {
        let k = SimKernel::guest_layout();
        let dev = a("00:06.1");
        let (original, r) = bind_from_scratch(&k, dev, Driver::PciStub);
        r.unwrap();
        assert!(!k.log().iter().any(|l| l.starts_with("unbind")));
        assert_eq!(k.device(dev).unwrap().driver, name("pci-stub"));
        let released = release(&k, dev, &original).unwrap();
        assert_eq!(released.restored, None);
        assert_eq!(k.device(dev).unwrap().driver_override, None);
    }

    #[test]
    fn probe_that_binds_nothing_is_caught_and_rolled_back() {
        let k = SimKernel::guest_layout();
        k.unload_driver("vfio-pci");
        let dev = a("01:00.0");
        let (_, r) = bind_from_scratch(&k, dev, Driver::VfioPci);
        match r {
            Err(BindError::NotBound {
                found: None,
                rollback: Rollback::Restored,
                ..
            }) => {}
            other => panic!("expected NotBound with a restored device, got {other:?}"),
        }
        let d = k.device(dev).unwrap();
        assert_eq!((d.driver, d.driver_override), (name("e1000e"), None));
    }

    #[test]
    fn vfio_pci_refusing_a_bridge_is_caught() {
        let k = SimKernel::guest_layout();
        let dev = a("04:00.0");
        let (_, r) = bind_from_scratch(&k, dev, Driver::VfioPci);
        assert!(matches!(
            r,
            Err(BindError::NotBound {
                rollback: Rollback::Restored,
                ..
            })
        ));
        assert_eq!(k.device(dev).unwrap().driver_override, None);
    }

    #[test]
    fn failures_at_each_step_roll_back() {
        for (op, step) in [
            (SimOp::SetOverride, Step::SetOverride),
            (SimOp::Unbind, Step::Unbind),
            (SimOp::Probe, Step::Probe),
        ] {
            let k = SimKernel::guest_layout();
            let dev = a("01:00.0");
            k.fail_next(op, dev, libc::EIO);
            let (_, r) = bind_from_scratch(&k, dev, Driver::VfioPci);
            match r {
                Err(BindError::Step {
                    step: s,
                    rollback: Rollback::Restored,
                    ref source,
                    ..
                }) => {
                    assert_eq!(s, step);
                    assert_eq!(source.raw_os_error(), Some(libc::EIO));
                }
                other => panic!("{op:?}: expected a rolled-back Step error, got {other:?}"),
            }
            let d = k.device(dev).unwrap();
            assert_eq!(
                (d.driver, d.driver_override),
                (name("e1000e"), None),
                "{op:?}"
            );
        }
    }

    #[test]
    fn a_failed_rollback_is_reported() {
        let k = SimKernel::guest_layout();
        let dev = a("01:00.0");
        k.fail_next(SimOp::Probe, dev, libc::EIO);
        // The rollback's own probe fails too: e1000e cannot come back.
        k.fail_next(SimOp::Probe, dev, libc::EIO);
        let (_, r) = bind_from_scratch(&k, dev, Driver::VfioPci);
        match r {
            Err(BindError::Step {
                rollback: Rollback::Incomplete(why),
                ..
            }) => {
                assert!(why.contains("driver is none (was e1000e)"), "{why}");
            }
            other => panic!("expected an incomplete rollback, got {other:?}"),
        }
    }

    #[test]
    fn an_existing_override_is_recorded_and_restored() {
        let k = SimKernel::guest_layout();
        let dev = a("01:00.0");
        k.set_override(dev, name("e1000e").as_ref()).unwrap();
        let (original, r) = bind_from_scratch(&k, dev, Driver::VfioPci);
        r.unwrap();
        assert_eq!(original.driver_override, name("e1000e"));
        release(&k, dev, &original).unwrap();
        let d = k.device(dev).unwrap();
        assert_eq!(
            (d.driver, d.driver_override),
            (name("e1000e"), name("e1000e"))
        );
    }

    #[test]
    fn already_on_target_touches_nothing() {
        let k = SimKernel::guest_layout();
        let dev = a("01:00.0");
        let (_, r) = bind_from_scratch(&k, dev, Driver::VfioPci);
        r.unwrap();
        let before = k.log().len();
        let (_, r) = bind_from_scratch(&k, dev, Driver::VfioPci);
        assert!(matches!(r, Err(BindError::AlreadyOnTarget { .. })));
        assert_eq!(k.log().len(), before);
    }

    #[test]
    fn release_reports_a_host_driver_that_did_not_return() {
        let k = SimKernel::guest_layout();
        let dev = a("01:00.0");
        let (original, r) = bind_from_scratch(&k, dev, Driver::VfioPci);
        r.unwrap();
        k.unload_driver("e1000e");
        let released = release(&k, dev, &original).unwrap();
        assert_eq!(released.expected, name("e1000e"));
        assert_eq!(released.restored, None);
    }

    #[test]
    fn releasing_a_device_already_restored_touches_nothing() {
        let k = SimKernel::guest_layout();
        let dev = a("01:00.0");
        let (original, r) = bind_from_scratch(&k, dev, Driver::VfioPci);
        r.unwrap();
        release(&k, dev, &original).unwrap();
        let writes = k.log().len();
        let again = release(&k, dev, &original).unwrap();
        assert_eq!(again.restored, name("e1000e"));
        assert_eq!(k.log().len(), writes, "no second unbind and probe");
    }

    #[test]
    fn release_step_failures_name_the_step() {
        let k = SimKernel::guest_layout();
        let dev = a("01:00.0");
        let (original, r) = bind_from_scratch(&k, dev, Driver::VfioPci);
        r.unwrap();
        k.fail_next(SimOp::Unbind, dev, libc::EBUSY);
        match release(&k, dev, &original) {
            Err(ReleaseError::Step {
                step: Step::Unbind, ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }
}
