//! What the helper does with one decoded request: decide, act, answer.
//!
//! The caller's identity comes from the kernel ([`Peer`]); the request only names a device and a
//! target driver, both already validated by the protocol types. Every sysfs mutation, and the
//! lease bookkeeping around it, happens under one lock, so concurrent clients cannot interleave
//! writes to the same device or race for it.

// Handlers return `Result<_, (WireError, Verdict)>` so `?` carries the audit verdict with the
// error. The error is large but built at most once per request: boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use vfio_gate_policy::{Decision, Policy};
use vfio_gate_protocol::{
    BindReport, DeviceInfo, Driver, Holder, PciAddress, ReleaseReport, Request, Response, RuleRef,
    WireError,
};

use crate::ops::{self, BindError, Rollback};
use crate::peer::Peer;
use crate::state::{Lease, Phase, StateDir};
use crate::sysfs::{Kernel, SysfsError};

/// What the audit line needs besides the response.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `Some(true)` allowed, `Some(false)` denied, `None` when no decision was needed (list).
    pub allowed: Option<bool>,
    pub rule: Option<RuleRef>,
}

/// The helper's request handler.
pub struct Service {
    kernel: Box<dyn Kernel>,
    policy: Policy,
    state: StateDir,
    mutations: Mutex<()>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn internal(e: impl std::fmt::Display) -> WireError {
    WireError::Internal {
        reason: e.to_string(),
    }
}

fn sysfs_error(dev: PciAddress, e: SysfsError) -> WireError {
    match e {
        SysfsError::NoDevice(_) => WireError::NotFound { device: dev },
        other => internal(other),
    }
}

impl Service {
    pub fn new(kernel: Box<dyn Kernel>, policy: Policy, state: StateDir) -> Self {
        Self {
            kernel,
            policy,
            state,
            mutations: Mutex::new(()),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is the kernel's state, re-read after locking: a poisoned lock carries
        // nothing stale, so carry on rather than wedge every later client.
        self.mutations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles one request from `peer`.
    pub fn handle(&self, peer: &Peer, req: &Request) -> (Response, Verdict) {
        let result = match req {
            Request::List => self.list(peer).map(|r| (r, Verdict::default())),
            Request::Bind { device, driver } => self.bind(peer, *device, *driver),
            Request::Release { device } => self.release(peer, *device),
        };
        match result {
            Ok(ok) => ok,
            Err((e, verdict)) => (Response::Error(e), verdict),
        }
    }

    fn list(&self, peer: &Peer) -> Result<Response, (WireError, Verdict)> {
        let fail = |e| (internal(e), Verdict::default());
        let subject = peer.subject();
        let mut out = Vec::new();
        for dev in self.kernel.devices().map_err(fail)? {
            // A device can vanish between the directory listing and the reads: skip it.
            let Ok(facts) = self.kernel.facts(dev) else {
                continue;
            };
            let holder = self.state.read(dev).ok().flatten().map(|l| Holder {
                uid: l.owner_uid,
                driver: l.driver,
                since: l.since,
            });
            out.push(DeviceInfo {
                address: dev,
                vendor: facts.vendor,
                device: facts.device,
                subsystem_vendor: facts.subsystem_vendor,
                subsystem_device: facts.subsystem_device,
                class: facts.class,
                driver: self
                    .kernel
                    .driver(dev)
                    .ok()
                    .flatten()
                    .map(|d| d.to_string()),
                driver_override: self
                    .kernel
                    .driver_override(dev)
                    .ok()
                    .flatten()
                    .map(|d| d.to_string()),
                iommu_group: self.kernel.iommu_group(dev).ok().flatten(),
                allowed: self.policy.allowed_drivers(&subject, &facts),
                holder,
            });
        }
        Ok(Response::Devices(out))
    }

    fn bind(
        &self,
        peer: &Peer,
        dev: PciAddress,
        driver: Driver,
    ) -> Result<(Response, Verdict), (WireError, Verdict)> {
        let facts = self
            .kernel
            .facts(dev)
            .map_err(|e| (sysfs_error(dev, e), Verdict::default()))?;
        let rule = match self.policy.decide(&peer.subject(), &facts, driver) {
            Decision::Allow(rule) => rule,
            Decision::Deny(rule) => {
                let reason = match &rule {
                    Some(r) => format!("rule {r} denies binding {dev} to {driver}"),
                    None => format!(
                        "no policy rule lets uid {} bind {dev} to {driver}",
                        peer.uid
                    ),
                };
                let verdict = Verdict {
                    allowed: Some(false),
                    rule: rule.clone(),
                };
                return Err((WireError::Denied { rule, reason }, verdict));
            }
        };
        let verdict = Verdict {
            allowed: Some(true),
            rule: Some(rule.clone()),
        };
        let fail = |e: WireError| (e, verdict.clone());

        let _guard = self.lock();
        match self.state.read(dev).map_err(|e| fail(internal(e)))? {
            Some(lease) if lease.owner_uid == peer.uid => {
                return Err(fail(WireError::Busy {
                    reason: format!(
                        "you already hold {dev} on {}; release it first (vfio-gate release {})",
                        lease.driver,
                        dev.short()
                    ),
                }));
            }
            Some(lease) => {
                return Err(fail(WireError::Denied {
                    rule: None,
                    reason: format!(
                        "{dev} is held by uid {} on {}; only one user holds a device at a time",
                        lease.owner_uid, lease.driver
                    ),
                }));
            }
            None => {}
        }
        let original =
            ops::original_state(&*self.kernel, dev).map_err(|e| fail(sysfs_error(dev, e)))?;
        let mut lease = Lease {
            device: dev,
            owner_uid: peer.uid,
            driver,
            original: original.clone(),
            phase: Phase::Intent,
            since: now(),
        };
        // Write-ahead: the record exists before the first sysfs write.
        self.state.write(&lease).map_err(|e| fail(internal(e)))?;
        match ops::bind(&*self.kernel, dev, driver, &original) {
            Ok(()) => {
                lease.phase = Phase::Applied;
                self.state.write(&lease).map_err(|e| fail(internal(e)))?;
                Ok((
                    Response::Bound(BindReport {
                        device: dev,
                        driver,
                        previous_driver: original.driver.map(|d| d.to_string()),
                        iommu_group: self.kernel.iommu_group(dev).ok().flatten(),
                        rule,
                    }),
                    verdict,
                ))
            }
            Err(e) => {
                let restored = match &e {
                    BindError::AlreadyOnTarget { .. } => true,
                    BindError::Step { rollback, .. } | BindError::NotBound { rollback, .. } => {
                        *rollback == Rollback::Restored
                    }
                };
                // Keep the record when the device is in an unknown state, so it is not forgotten.
                if restored {
                    let _ = self.state.remove(dev);
                }
                let wire = match e {
                    BindError::AlreadyOnTarget { .. } => WireError::Busy {
                        reason: format!(
                            "{dev} is already on {driver}, bound outside vfio-gate; ask an admin to give it back to its host driver first"
                        ),
                    },
                    other => WireError::Failed {
                        reason: other.to_string(),
                    },
                };
                Err(fail(wire))
            }
        }
    }

    fn release(
        &self,
        peer: &Peer,
        dev: PciAddress,
    ) -> Result<(Response, Verdict), (WireError, Verdict)> {
        let _guard = self.lock();
        let plain = |e| (e, Verdict::default());
        let Some(mut lease) = self.state.read(dev).map_err(|e| plain(internal(e)))? else {
            if !self.kernel.exists(dev) {
                return Err(plain(WireError::NotFound { device: dev }));
            }
            return Err((
                WireError::Denied {
                    rule: None,
                    reason: format!(
                        "{dev} is not held through vfio-gate; there is nothing to release"
                    ),
                },
                Verdict {
                    allowed: Some(false),
                    rule: None,
                },
            ));
        };
        if lease.owner_uid != peer.uid && peer.uid != 0 {
            return Err((
                WireError::Denied {
                    rule: None,
                    reason: format!(
                        "{dev} is held by uid {}; only that user or root can release it",
                        lease.owner_uid
                    ),
                },
                Verdict {
                    allowed: Some(false),
                    rule: None,
                },
            ));
        }
        let verdict = Verdict {
            allowed: Some(true),
            rule: None,
        };
        if !self.kernel.exists(dev) {
            // The device went away (hot-unplug, remove): the kernel freed its override with it.
            let _ = self.state.remove(dev);
            return Err((WireError::NotFound { device: dev }, verdict));
        }
        lease.phase = Phase::Releasing;
        self.state
            .write(&lease)
            .map_err(|e| (internal(e), verdict.clone()))?;
        let released = ops::release(&*self.kernel, dev, &lease.original).map_err(|e| {
            (
                WireError::Failed {
                    reason: format!("{e}; the lease is kept, retry the release"),
                },
                verdict.clone(),
            )
        })?;
        self.state
            .remove(dev)
            .map_err(|e| (internal(e), verdict.clone()))?;
        Ok((
            Response::Released(ReleaseReport {
                device: dev,
                expected_driver: released.expected.map(|d| d.to_string()),
                restored_driver: released.restored.map(|d| d.to_string()),
            }),
            verdict,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::{SimKernel, SimOp};
    use std::sync::Arc;
    use vfio_gate_policy::NameResolver;

    struct Names;
    impl NameResolver for Names {
        fn uid(&self, user: &str) -> Option<u32> {
            match user {
                "alice" => Some(1000),
                "bob" => Some(1001),
                _ => None,
            }
        }
        fn gid(&self, group: &str) -> Option<u32> {
            (group == "vm-users").then_some(1100)
        }
    }

    const POLICY: &str = r#"
version = 1

[[rule]]
name = "alice's NIC and test devices"
subjects = { users = ["alice"], groups = ["vm-users"] }
devices = [
  { address = "01:00.0", vendor = "8086", device = "10d3" },
  { address = "00:06.*" },
]
drivers = ["vfio-pci"]

[[rule]]
name = "testdev on stub"
subjects = { groups = ["vm-users"] }
devices = [{ address = "00:06.1" }]
drivers = ["pci-stub"]

[[rule]]
name = "storage, if it were allowed"
subjects = { users = ["alice"] }
devices = [{ address = "03:00.0" }]
drivers = ["vfio-pci"]

[[deny]]
name = "never storage"
devices = [{ class = "01xxxx" }]
"#;

    fn alice() -> Peer {
        Peer {
            uid: 1000,
            gid: 1000,
            pid: 10,
            groups: vec![1000, 1100],
        }
    }
    fn bob() -> Peer {
        Peer {
            uid: 1001,
            gid: 1001,
            pid: 11,
            groups: vec![1001],
        }
    }
    fn a(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        kernel: Arc<SimKernel>,
        service: Service,
    }

    /// Lets the test keep a handle on the simulated kernel the service owns.
    struct Shared(Arc<SimKernel>);
    impl Kernel for Shared {
        fn devices(&self) -> Result<Vec<PciAddress>, SysfsError> {
            self.0.devices()
        }
        fn exists(&self, d: PciAddress) -> bool {
            self.0.exists(d)
        }
        fn facts(&self, d: PciAddress) -> Result<crate::sysfs::DeviceFacts, SysfsError> {
            self.0.facts(d)
        }
        fn driver(&self, d: PciAddress) -> Result<Option<crate::sysfs::DriverName>, SysfsError> {
            self.0.driver(d)
        }
        fn driver_override(
            &self,
            d: PciAddress,
        ) -> Result<Option<crate::sysfs::DriverName>, SysfsError> {
            self.0.driver_override(d)
        }
        fn iommu_group(&self, d: PciAddress) -> Result<Option<u32>, SysfsError> {
            self.0.iommu_group(d)
        }
        fn set_override(
            &self,
            d: PciAddress,
            n: Option<&crate::sysfs::DriverName>,
        ) -> Result<(), SysfsError> {
            self.0.set_override(d, n)
        }
        fn unbind(&self, d: PciAddress) -> Result<(), SysfsError> {
            self.0.unbind(d)
        }
        fn probe(&self, d: PciAddress) -> Result<(), SysfsError> {
            self.0.probe(d)
        }
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let kernel = Arc::new(SimKernel::guest_layout());
        let policy = Policy::parse(POLICY, "policy.toml", &Names).unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        let service = Service::new(Box::new(Shared(kernel.clone())), policy, state);
        Fixture {
            _tmp: tmp,
            kernel,
            service,
        }
    }

    fn bind(s: &Service, p: &Peer, dev: &str, driver: Driver) -> (Response, Verdict) {
        s.handle(
            p,
            &Request::Bind {
                device: a(dev),
                driver,
            },
        )
    }

    fn release(s: &Service, p: &Peer, dev: &str) -> (Response, Verdict) {
        s.handle(p, &Request::Release { device: a(dev) })
    }

    #[test]
    fn alice_binds_and_releases() {
        let f = fixture();
        let (resp, verdict) = bind(&f.service, &alice(), "01:00.0", Driver::VfioPci);
        let Response::Bound(report) = resp else {
            panic!("{resp:?}")
        };
        assert_eq!(report.previous_driver.as_deref(), Some("e1000e"));
        assert_eq!(report.iommu_group, Some(8));
        assert_eq!(report.rule.name, "alice's NIC and test devices");
        assert_eq!(verdict.allowed, Some(true));
        assert_eq!(
            f.kernel
                .device(a("01:00.0"))
                .unwrap()
                .driver
                .unwrap()
                .as_str(),
            "vfio-pci"
        );
        let lease = f.service.state.read(a("01:00.0")).unwrap().unwrap();
        assert_eq!((lease.owner_uid, lease.phase), (1000, Phase::Applied));

        let (resp, _) = release(&f.service, &alice(), "01:00.0");
        let Response::Released(r) = resp else {
            panic!("{resp:?}")
        };
        assert_eq!(r.restored_driver.as_deref(), Some("e1000e"));
        assert_eq!(f.service.state.read(a("01:00.0")).unwrap(), None);
    }

    #[test]
    fn decisions_table() {
        // Ok(granting rule) or Err(deciding deny rule, None for the default deny).
        type Expected = Result<&'static str, Option<&'static str>>;
        let table: &[(Peer, &str, Driver, Expected)] = &[
            (alice(), "00:06.1", Driver::PciStub, Ok("testdev on stub")),
            (alice(), "00:06.0", Driver::PciStub, Err(None)),
            (bob(), "01:00.0", Driver::VfioPci, Err(None)),
            (
                alice(),
                "03:00.0",
                Driver::VfioPci,
                Err(Some("never storage")),
            ),
            (alice(), "00:1b.0", Driver::VfioPci, Err(None)),
        ];
        for (peer, dev, driver, expected) in table {
            let f = fixture();
            let before = f.kernel.log();
            let (resp, verdict) = bind(&f.service, peer, dev, *driver);
            match (expected, &resp) {
                (Ok(rule), Response::Bound(r)) => assert_eq!(r.rule.name, *rule),
                (Err(rule), Response::Error(WireError::Denied { rule: got, .. })) => {
                    assert_eq!(got.as_ref().map(|r| r.name.as_str()), *rule, "{dev}");
                    assert_eq!(verdict.allowed, Some(false));
                    assert_eq!(f.kernel.log(), before, "a denied bind writes nothing");
                }
                _ => panic!("{peer:?} {dev} {driver}: expected {expected:?}, got {resp:?}"),
            }
        }
    }

    #[test]
    fn one_holder_at_a_time_and_only_the_holder_releases() {
        let f = fixture();
        assert!(matches!(
            bind(&f.service, &alice(), "01:00.0", Driver::VfioPci).0,
            Response::Bound(_)
        ));
        let (resp, _) = bind(&f.service, &alice(), "01:00.0", Driver::VfioPci);
        assert!(
            matches!(resp, Response::Error(WireError::Busy { .. })),
            "{resp:?}"
        );
        let (resp, _) = release(&f.service, &bob(), "01:00.0");
        assert!(
            matches!(resp, Response::Error(WireError::Denied { .. })),
            "{resp:?}"
        );
        assert_eq!(
            f.kernel
                .device(a("01:00.0"))
                .unwrap()
                .driver
                .unwrap()
                .as_str(),
            "vfio-pci"
        );
        let root = Peer {
            uid: 0,
            gid: 0,
            pid: 1,
            groups: vec![],
        };
        assert!(matches!(
            release(&f.service, &root, "01:00.0").0,
            Response::Released(_)
        ));
    }

    #[test]
    fn not_found_and_nothing_to_release() {
        let f = fixture();
        let (resp, _) = bind(&f.service, &alice(), "07:00.0", Driver::VfioPci);
        assert_eq!(
            resp,
            Response::Error(WireError::NotFound {
                device: a("07:00.0")
            })
        );
        let (resp, _) = release(&f.service, &alice(), "07:00.0");
        assert_eq!(
            resp,
            Response::Error(WireError::NotFound {
                device: a("07:00.0")
            })
        );
        let (resp, _) = release(&f.service, &alice(), "01:00.0");
        assert!(matches!(resp, Response::Error(WireError::Denied { .. })));
    }

    #[test]
    fn a_kernel_failure_is_rolled_back_and_leaves_no_lease() {
        let f = fixture();
        f.kernel.fail_next(SimOp::Unbind, a("01:00.0"), libc::EBUSY);
        let (resp, _) = bind(&f.service, &alice(), "01:00.0", Driver::VfioPci);
        let Response::Error(WireError::Failed { reason }) = resp else {
            panic!("{resp:?}")
        };
        assert!(reason.contains("restored"), "{reason}");
        assert_eq!(f.service.state.read(a("01:00.0")).unwrap(), None);
        let d = f.kernel.device(a("01:00.0")).unwrap();
        assert_eq!(d.driver.unwrap().as_str(), "e1000e");
        assert_eq!(d.driver_override, None);
    }

    #[test]
    fn list_shows_what_the_caller_may_do_and_who_holds_what() {
        let f = fixture();
        bind(&f.service, &alice(), "00:06.1", Driver::PciStub);
        let Response::Devices(devs) = f.service.handle(&bob(), &Request::List).0 else {
            panic!()
        };
        assert_eq!(devs.len(), 10);
        assert!(
            devs.iter().all(|d| d.allowed.is_empty()),
            "bob may do nothing"
        );
        let tdev = devs.iter().find(|d| d.address == a("00:06.1")).unwrap();
        assert_eq!(tdev.holder.as_ref().map(|h| h.uid), Some(1000));
        assert_eq!(tdev.driver.as_deref(), Some("pci-stub"));
        let Response::Devices(devs) = f.service.handle(&alice(), &Request::List).0 else {
            panic!()
        };
        let nic = devs.iter().find(|d| d.address == a("01:00.0")).unwrap();
        assert_eq!(nic.allowed, vec![Driver::VfioPci]);
        let nvme = devs.iter().find(|d| d.address == a("03:00.0")).unwrap();
        assert!(nvme.allowed.is_empty());
        assert_eq!((nvme.class, nvme.iommu_group), (0x010802, Some(10)));
    }
}
