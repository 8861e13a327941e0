//! What the helper does with one decoded request: decide, act, answer.
//!
//! The caller's identity comes from the kernel ([`Peer`]); the request only names devices and a
//! target driver, both already validated by the protocol types. A bind is planned for the whole
//! IOMMU group ([`vfio_gate_host::plan`]), checked against the built-in guards ([`vfio_gate_host::guards`]) and the
//! policy, recorded in a lease before the first write ([`crate::state`]), carried out all or
//! nothing, and finished by handing `/dev/vfio/<group>` to the caller. Every sysfs mutation, and
//! the lease bookkeeping around it, happens under one lock, so concurrent clients cannot
//! interleave writes or race for a group.

// Handlers return `Result<_, (WireError, Verdict)>` so `?` carries the audit verdict with the
// error. The error is large but built at most once per request: boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vfio_gate_policy::{Decision, Policy};
use vfio_gate_protocol::{
    BindReport, BusyReason, DenyReason, DeviceInfo, Driver, Holder, MAX_BIND_DEVICES, PciAddress,
    ReleaseReport, ReleaseTarget, ReleasedGroup, Request, Response, RestoredDevice, RuleRef,
    StepAction, WireError,
};

use vfio_gate_host::groups::{ViabilityRule, viable};
use vfio_gate_host::guards::{self, HostUse};
use vfio_gate_host::plan::{self, MemberState, PlanError, PolicyAnswers};
use vfio_gate_host::{PciView, SysfsError};

use crate::audit;
use crate::kernel::{Bounded, Kernel, NodeOwner};
use crate::peer::Peer;
use crate::roots::Roots;
use crate::sequence::{self, Rollback};
use crate::state::{Lease, LeasedDevice, Phase, StateDir};

/// What the audit line needs besides the response.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `Some(true)` allowed, `Some(false)` denied, `None` when no decision was needed (list).
    pub allowed: Option<bool>,
    pub rule: Option<RuleRef>,
    /// Every device the request touched or asked about.
    pub devices: Vec<PciAddress>,
    /// A bind with `hold` created this group's lease, tied to the requesting connection: the
    /// connection handler releases it when the connection closes.
    pub held_group: Option<u32>,
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

mod bind;
mod explain;
mod reconcile;
mod release;
#[cfg(test)]
mod tests;

impl Service {
    pub fn new(
        kernel: Arc<dyn Kernel>,
        host: Box<dyn HostUse>,
        policy: Policy,
        state: StateDir,
        roots: Roots,
        tuning: Tuning,
    ) -> Self {
        let service = Self {
            kernel: Bounded::new(kernel, tuning.write_timeout),
            host,
            policy,
            state,
            roots,
            tuning,
            mutations: Mutex::new(()),
            orphans: Mutex::default(),
        };
        let guard = service.lock();
        service.reconcile_leases();
        service.reconcile_nodes();
        drop(guard);
        service
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is the kernel's state, re-read after locking: a poisoned lock carries
        // nothing stale, so carry on rather than wedge every later client.
        self.mutations.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn node_path(&self, group: u32) -> String {
        self.roots
            .vfio
            .join(group.to_string())
            .display()
            .to_string()
    }

    /// Handles one request from `peer`.
    pub fn handle(&self, peer: &Peer, req: &Request) -> (Response, Verdict) {
        let result = match req {
            Request::List => self.list(peer).map(|r| (r, Verdict::default())),
            Request::Bind {
                devices,
                driver,
                group,
                dry_run,
                hold,
            } => self.bind(peer, devices, *driver, *group, *dry_run, *hold),
            Request::Release { target } => self.release(peer, *target),
            Request::Explain {
                device,
                driver,
                uid,
            } => self.explain(peer, *device, *driver, *uid),
        };
        match result {
            Ok(ok) => ok,
            Err((e, verdict)) => (Response::Error(e), verdict),
        }
    }

    fn list(&self, peer: &Peer) -> Result<Response, (WireError, Verdict)> {
        let fail = |e| (internal(e), Verdict::default());
        let subject = peer.subject();
        let (leases, _) = self.state.all();
        let mut holders = BTreeMap::new();
        for l in &leases {
            for d in &l.devices {
                holders.insert(
                    d.device,
                    Holder {
                        uid: l.owner_uid,
                        driver: d.driver,
                        since: l.since,
                        group: Some(l.group),
                        tied: l.tied,
                    },
                );
            }
        }
        let mut out = Vec::new();
        for dev in self.kernel.devices().map_err(fail)? {
            // A device can vanish between the directory listing and the reads: skip it.
            let Ok(facts) = self.kernel.facts(dev) else {
                continue;
            };
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
                holder: holders.get(&dev).cloned(),
            });
        }
        Ok(Response::Devices(out))
    }

    fn member_state(&self, dev: PciAddress) -> Result<MemberState, SysfsError> {
        plan::member_state(&self.kernel, dev)
    }

    fn guard(&self, m: &MemberState, verdict: &Verdict) -> Result<(), (WireError, Verdict)> {
        let deny = |e: WireError| {
            (
                e,
                Verdict {
                    allowed: Some(false),
                    ..verdict.clone()
                },
            )
        };
        match guards::check(&self.kernel, &*self.host, m.facts.address, m.kind) {
            Ok(None) => Ok(()),
            Ok(Some(r)) => Err(deny(WireError::Refused {
                device: r.device,
                guard: r.guard,
                reason: r.reason,
            })),
            Err(e) => Err(deny(internal(e))),
        }
    }
}
