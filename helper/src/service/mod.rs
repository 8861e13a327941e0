//! What the helper does with one decoded request: decide, act, answer.
//!
//! The caller's identity comes from the kernel ([`Peer`]); the request only names devices and a
//! target driver, both already validated by the protocol types. A bind (`bind.rs`) reads the named
//! devices, asks the policy, finds their one IOMMU group, then — under the lock — checks who holds
//! the group, the built-in guards ([`vfio_gate_host::guards`]) and the whole-group plan
//! ([`vfio_gate_host::plan`]); a dry run ends there. Otherwise the per-user quota, a lease written
//! before the first sysfs write ([`crate::state`]), the writes all or nothing
//! ([`crate::sequence`]), and the commit, with `/dev/vfio/<group>` handed to the caller. A
//! release (`release.rs`) runs the same sequence backwards; `explain` decides without acting;
//! [`Service::reconcile`] brings leases left by a previous helper to an end. Every sysfs mutation,
//! and the lease bookkeeping around it, happens under one lock, so concurrent clients cannot
//! interleave writes or race for a group.
//!
//! Each handler answers with an [`Outcome`] — the response, and the group whose lease is now tied
//! to the connection, if any — and notes on the side, in an [`crate::audit::Record`], what the
//! request's audit line says: the decision, the deciding rule, the devices concerned.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vfio_gate_host::groups::ViabilityRule;
use vfio_gate_host::guards::{self, HostUse};
use vfio_gate_host::plan::{self, MemberState};
use vfio_gate_host::reserve;
use vfio_gate_host::{PciView, SysfsError};
use vfio_gate_policy::{Policy, Subject};
use vfio_gate_protocol::{
    BusyReason, DeviceInfo, Holder, PciAddress, Request, Response, WireError,
};

use crate::audit::Record;
use crate::kernel::{Bounded, Kernel};
use crate::peer::Peer;
use crate::roots::Roots;
use crate::state::{MutationLock, StateDir};

mod bind;
mod explain;
mod reconcile;
mod release;
#[cfg(test)]
mod reserve_tests;
mod reserving;
#[cfg(test)]
mod tests;

use bind::BindRequest;
pub use reserving::{HoldResult, ReserveReport};

/// What a handled request leaves for its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The answer to send.
    pub response: Response,
    /// The IOMMU group whose lease a `hold` bind (`vfio-gate run`) just tied to this connection:
    /// the connection handler releases it when the connection closes
    /// ([`Service::release_tied`]).
    pub tied: Option<u32>,
}

impl Outcome {
    /// An answer that ties nothing to the connection.
    pub fn reply(response: Response) -> Self {
        Self {
            response,
            tied: None,
        }
    }
}

/// Held while the service mutates sysfs or its leases (see [`Service::lock`]).
struct Exclusive<'a> {
    _threads: MutexGuard<'a, ()>,
    _processes: Option<MutationLock>,
}

/// Knobs of the service, with production defaults.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// How long a sysfs write may block before the caller is told (see [`Bounded`]).
    pub write_timeout: Duration,
    /// How long to wait for `/dev/vfio/<group>` to appear after a bind.
    pub node_timeout: Duration,
    pub viability: ViabilityRule,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            write_timeout: Duration::from_secs(10),
            node_timeout: Duration::from_secs(10),
            viability: ViabilityRule::DmaOwnership,
        }
    }
}

/// The helper's request handler.
pub struct Service {
    kernel: Bounded,
    host: Box<dyn HostUse>,
    policy: Policy,
    state: StateDir,
    /// Where group nodes are (for reports) and accounts are read (an admin's `explain --user`).
    roots: Roots,
    tuning: Tuning,
    mutations: Mutex<()>,
    /// Tied leases whose connection is gone but whose group a process still holds open: released
    /// as soon as it lets go ([`Service::retry_orphans`]).
    orphans: Mutex<BTreeSet<u32>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("state", &self.state)
            .field("tuning", &self.tuning)
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
        e @ (SysfsError::Blocked { .. } | SysfsError::StillBlocked { .. }) => WireError::Busy {
            why: BusyReason::BlockedInKernel { device: dev },
            detail: e.to_string(),
        },
        other => internal(other),
    }
}

impl Service {
    /// A handler over `kernel` and `host`, deciding under `policy`, keeping leases in `state`.
    /// Touches nothing: [`Service::reconcile`] is the start-up step that does.
    pub fn new(
        kernel: Arc<dyn Kernel>,
        host: Box<dyn HostUse>,
        policy: Policy,
        state: StateDir,
        roots: Roots,
        tuning: Tuning,
    ) -> Self {
        Self {
            kernel: Bounded::new(kernel, tuning.write_timeout),
            host,
            policy,
            state,
            roots,
            tuning,
            mutations: Mutex::new(()),
            orphans: Mutex::default(),
        }
    }

    /// Brings every lease a previous helper left to a consistent end with sysfs, and every group
    /// node's owner in line with the leases (`reconcile.rs`). Start-up calls it once, before
    /// serving; constructing a service changes nothing.
    pub fn reconcile(&self) {
        let _lock = self.lock();
        self.reconcile_leases();
        self.reconcile_nodes();
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Serialises mutations: between this helper's threads (a mutex), then between helper
    /// processes (the state directory's lock: a helper started to hold a reserved device that
    /// just appeared may run beside the one serving clients).
    fn lock(&self) -> Exclusive<'_> {
        // The guarded data is the kernel's state, re-read after locking: a poisoned lock carries
        // nothing stale, so carry on rather than wedge every later client.
        let threads = self.mutations.lock().unwrap_or_else(|e| e.into_inner());
        let processes = match self.state.lock_mutations() {
            Ok(l) => Some(l),
            Err(e) => {
                // Never seen on the tmpfs /run: go on with the in-process lock rather than
                // refuse everything, and say so.
                crate::audit::Line::new("lock-error")
                    .field("error", e)
                    .emit();
                None
            }
        };
        Exclusive {
            _threads: threads,
            _processes: processes,
        }
    }

    fn node_path(&self, group: u32) -> String {
        self.roots
            .vfio
            .join(group.to_string())
            .display()
            .to_string()
    }

    /// Handles one request from `peer`, noting in `record` what its audit line says.
    pub fn handle(&self, peer: &Peer, req: &Request, record: &mut Record) -> Outcome {
        let result = match req {
            Request::List => self.list(peer).map(Outcome::reply),
            Request::Bind {
                devices,
                driver,
                group,
                dry_run,
                hold,
            } => {
                let req = BindRequest {
                    devices,
                    driver: *driver,
                    whole_group: *group,
                    dry_run: *dry_run,
                    hold: *hold,
                };
                self.bind(peer, req, record)
            }
            Request::Release { target } => self.release(peer, *target, record).map(Outcome::reply),
            Request::Explain {
                device,
                driver,
                uid,
            } => self
                .explain(peer, *device, *driver, *uid, record)
                .map(Outcome::reply),
        };
        result.unwrap_or_else(|e| Outcome::reply(Response::Error(e)))
    }

    /// Every PCI device, with what the caller may bind it to and who holds it.
    fn list(&self, peer: &Peer) -> Result<Response, WireError> {
        let subject = peer.subject();
        let holders = self.holders();
        let devices = self.kernel.devices().map_err(internal)?;
        Ok(Response::Devices(
            devices
                .into_iter()
                .filter_map(|dev| self.device_info(dev, &subject, &holders))
                .collect(),
        ))
    }

    /// Who holds each leased device.
    fn holders(&self) -> BTreeMap<PciAddress, Holder> {
        let (leases, _) = self.state.all();
        let mut holders = BTreeMap::new();
        for l in &leases {
            for d in &l.devices {
                let holder = Holder {
                    uid: l.owner_uid,
                    driver: d.driver,
                    since: l.since,
                    group: Some(l.group),
                    tied: l.tied,
                };
                holders.insert(d.device, holder);
            }
        }
        holders
    }

    /// One line of `list`; `None` for a device that vanished since the directory listing.
    fn device_info(
        &self,
        dev: PciAddress,
        subject: &Subject,
        holders: &BTreeMap<PciAddress, Holder>,
    ) -> Option<DeviceInfo> {
        let facts = self.kernel.facts(dev).ok()?;
        let name = |n: Option<vfio_gate_host::DriverName>| n.map(|d| d.to_string());
        Some(DeviceInfo {
            address: dev,
            vendor: facts.vendor,
            device: facts.device,
            subsystem_vendor: facts.subsystem_vendor,
            subsystem_device: facts.subsystem_device,
            class: facts.class,
            driver: name(self.kernel.driver(dev).ok().flatten()),
            driver_override: name(self.kernel.driver_override(dev).ok().flatten()),
            iommu_group: self.kernel.iommu_group(dev).ok().flatten(),
            allowed: self.policy.allowed_drivers(subject, &facts),
            holder: holders.get(&dev).cloned(),
            reserved: reserve::held(&self.kernel, &self.policy, dev)
                .ok()
                .and_then(|h| h.reservation().cloned()),
        })
    }

    fn member_state(&self, dev: PciAddress) -> Result<MemberState, SysfsError> {
        plan::member_state(&self.kernel, dev)
    }

    /// Every member of `group`, as sysfs shows it now.
    fn group_states(&self, group: u32) -> Result<Vec<MemberState>, SysfsError> {
        self.kernel
            .group_members(group)?
            .into_iter()
            .map(|d| self.member_state(d))
            .collect()
    }

    /// The built-in guards for one device; a refusal, or a guard that cannot tell, denies.
    fn guard(&self, m: &MemberState, record: &mut Record) -> Result<(), WireError> {
        let refusal = match guards::check(&self.kernel, &*self.host, m.facts.address, m.kind) {
            Ok(None) => return Ok(()),
            Ok(Some(r)) => WireError::Refused {
                device: r.device,
                guard: r.guard,
                reason: r.reason,
            },
            Err(e) => internal(e),
        };
        record.deny();
        Err(refusal)
    }
}
