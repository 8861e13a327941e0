//! What the helper does with one decoded request: decide, act, answer.
//!
//! The caller's identity comes from the kernel ([`Peer`]); the request only names devices and a
//! target driver, both already validated by the protocol types. A bind is planned for the whole
//! IOMMU group ([`crate::plan`]), checked against the built-in guards ([`crate::guards`]) and the
//! policy, recorded in a lease before the first write ([`crate::state`]), carried out all or
//! nothing, and finished by handing `/dev/vfio/<group>` to the caller. Every sysfs mutation, and
//! the lease bookkeeping around it, happens under one lock, so concurrent clients cannot
//! interleave writes or race for a group.

// Handlers return `Result<_, (WireError, Verdict)>` so `?` carries the audit verdict with the
// error. The error is large but built at most once per request: boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vfio_gate_policy::{Decision, Policy};
use vfio_gate_protocol::{
    BindReport, DeviceInfo, Driver, DriverVerdict, ExplainReport, GuardFinding, Holder,
    MAX_BIND_DEVICES, PciAddress, ReleaseReport, ReleaseTarget, ReleasedGroup, Request, Response,
    RestoredDevice, RuleRef, StepAction, WireError,
};

use crate::audit;
use crate::groups::{ViabilityRule, viable};
use crate::guards::{self, HostUse};
use crate::ops::{self, Rollback};
use crate::peer::Peer;
use crate::plan::{self, MemberState, PlanError, PolicyAnswers};
use crate::state::{Lease, LeasedDevice, Phase, StateDir};
use crate::sysfs::{Bounded, Kernel, NodeOwner, PciView, SysfsError};

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
    /// Where group nodes live, for reports (`/dev/vfio`).
    pub vfio_dir: PathBuf,
    pub viability: ViabilityRule,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            write_timeout: Duration::from_secs(10),
            node_timeout: Duration::from_secs(10),
            vfio_dir: "/dev/vfio".into(),
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
            reason: e.to_string(),
        },
        other => internal(other),
    }
}

impl Service {
    pub fn new(
        kernel: Arc<dyn Kernel>,
        host: Box<dyn HostUse>,
        policy: Policy,
        state: StateDir,
        tuning: Tuning,
    ) -> Self {
        let service = Self {
            kernel: Bounded::new(kernel, tuning.write_timeout),
            host,
            policy,
            state,
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
        self.tuning
            .vfio_dir
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

    fn bind(
        &self,
        peer: &Peer,
        named: &[PciAddress],
        driver: Driver,
        whole_group: bool,
        dry_run: bool,
        hold: bool,
    ) -> Result<(Response, Verdict), (WireError, Verdict)> {
        let mut verdict = Verdict {
            devices: named.to_vec(),
            ..Verdict::default()
        };
        let bad = |reason: String, v: &Verdict| (WireError::BadRequest { reason }, v.clone());
        let Some(&primary) = named.first() else {
            return Err(bad("a bind names at least one device".into(), &verdict));
        };
        if named.len() > MAX_BIND_DEVICES {
            return Err(bad(
                format!("a bind names at most {MAX_BIND_DEVICES} devices"),
                &verdict,
            ));
        }
        if (1..named.len()).any(|i| named[..i].contains(&named[i])) {
            return Err(bad("a device is named twice".into(), &verdict));
        }
        let mut named_states = Vec::with_capacity(named.len());
        for &dev in named {
            named_states.push(
                self.member_state(dev)
                    .map_err(|e| (sysfs_error(dev, e), verdict.clone()))?,
            );
        }
        // The policy first: a request it denies is answered with the deciding rule, whatever the
        // device's state. Then the guards, which no policy can override.
        let subject = peer.subject();
        for m in &named_states {
            if let Decision::Deny(rule) = self.policy.decide(&subject, &m.facts, driver) {
                let short = m.facts.address.short();
                let reason = match &rule {
                    Some(r) => format!("rule {r} denies binding {short} to {driver}"),
                    None => format!("no policy rule lets you bind {short} to {driver}"),
                };
                verdict.allowed = Some(false);
                verdict.rule = rule.clone();
                return Err((WireError::Denied { rule, reason }, verdict));
            }
        }
        let Some(group) = self
            .kernel
            .iommu_group(primary)
            .map_err(|e| (sysfs_error(primary, e), verdict.clone()))?
        else {
            // No IOMMU group: the guard says so, and how to turn the IOMMU on.
            self.guard(&named_states[0], &verdict)?;
            return Err((internal(format!("{primary} has no IOMMU group")), verdict));
        };
        for &dev in &named[1..] {
            let g = self.kernel.iommu_group(dev).ok().flatten();
            if g != Some(group) {
                return Err(bad(
                    format!(
                        "{} is in IOMMU group {group} but {} is in {}: bind one group at a time",
                        primary.short(),
                        dev.short(),
                        g.map_or("none".into(), |g| g.to_string())
                    ),
                    &verdict,
                ));
            }
        }

        let _guard = self.lock();
        match self.state.read(group) {
            Ok(Some(lease)) if lease.owner_uid == peer.uid => {
                let held: Vec<String> = lease.devices.iter().map(|d| d.device.short()).collect();
                return Err((
                    WireError::Busy {
                        reason: format!(
                            "you already hold group {group} ({}); release it first (vfio-gate release {})",
                            held.join(", "),
                            held[0]
                        ),
                    },
                    verdict,
                ));
            }
            Ok(Some(lease)) => {
                verdict.allowed = Some(false);
                return Err((
                    WireError::Held {
                        group: Some(group),
                        uid: lease.owner_uid,
                        since: lease.since,
                    },
                    verdict,
                ));
            }
            Ok(None) => {}
            Err(e) => return Err((internal(e), verdict)),
        }
        // The guards under the lock: the host's use of a device changes as drivers move (a NIC's
        // interface vanishes while another client's bind runs), and the group's owner answers
        // first.
        for m in &named_states {
            self.guard(m, &verdict)?;
        }

        let members = self
            .kernel
            .group_members(group)
            .and_then(|ms| {
                ms.into_iter()
                    .map(|d| self.member_state(d))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| (internal(e), verdict.clone()))?;
        let asking = PolicyAnswers {
            policy: &self.policy,
            subject: &subject,
            primary: named_states[0].facts,
            driver,
        };
        let plan = match plan::plan(
            group,
            &members,
            named,
            driver,
            &asking,
            self.tuning.viability,
        ) {
            Ok(p) => p,
            Err(PlanError::Denied { rule, reason, .. }) => {
                verdict.allowed = Some(false);
                verdict.rule = rule.clone();
                return Err((WireError::Denied { rule, reason }, verdict));
            }
            Err(PlanError::Impossible { reason, .. }) => {
                verdict.allowed = Some(false);
                return Err((WireError::Denied { rule: None, reason }, verdict));
            }
        };
        verdict.allowed = Some(true);
        verdict.rule = plan.steps.iter().find_map(|s| match &s.action {
            StepAction::Bind { rule, .. } if s.device == primary => Some(rule.clone()),
            _ => None,
        });
        verdict.devices = plan
            .steps
            .iter()
            .filter(|s| matches!(s.action, StepAction::Bind { .. }))
            .map(|s| s.device)
            .collect();
        let companions: Vec<&MemberState> = members
            .iter()
            .filter(|m| {
                !named.contains(&m.facts.address) && verdict.devices.contains(&m.facts.address)
            })
            .collect();
        if !whole_group && plan::moves_companions(&plan, named) {
            let moved: Vec<String> = companions
                .iter()
                .map(|m| {
                    format!(
                        "{} ({})",
                        m.facts.address.short(),
                        m.driver.as_ref().map_or("no driver", |d| d.as_str())
                    )
                })
                .collect();
            verdict.allowed = Some(false);
            return Err((
                WireError::NeedsGroup {
                    group,
                    // The frontend says which devices were named; the reason says what stands
                    // in the way.
                    reason: format!(
                        "{} must leave {} host driver for pci-stub",
                        moved.join(", "),
                        if moved.len() == 1 { "its" } else { "their" }
                    ),
                    plan,
                },
                verdict,
            ));
        }
        for m in &companions {
            self.guard(m, &verdict)?;
        }
        if dry_run {
            return Ok((
                Response::Bound(BindReport {
                    plan,
                    dry_run: true,
                    vfio_node: (driver == Driver::VfioPci).then(|| self.node_path(group)),
                }),
                verdict,
            ));
        }

        if let Some(max) = self.policy.settings().max_groups_per_user {
            let held = self.leases_of(peer.uid).len();
            if held >= max as usize {
                verdict.allowed = Some(false);
                return Err((
                    WireError::Denied {
                        rule: None,
                        reason: format!(
                            "you already hold {held} IOMMU group(s), the policy's limit (max_groups_per_user = {max}); release one first"
                        ),
                    },
                    verdict,
                ));
            }
        }

        // Write-ahead: the lease, with every original state, exists before the first write.
        let mut lease = Lease {
            group,
            owner_uid: peer.uid,
            owner_gid: peer.gid,
            phase: Phase::Intent,
            since: now(),
            updated: now(),
            tied: hold,
            devices: Vec::new(),
        };
        for s in &plan.steps {
            if let StepAction::Bind { driver, .. } = s.action {
                let original = ops::original_state(&self.kernel, s.device)
                    .map_err(|e| (sysfs_error(s.device, e), verdict.clone()))?;
                lease.devices.push(LeasedDevice {
                    device: s.device,
                    driver,
                    original,
                    ids: (s.vendor, s.device_id),
                });
            }
        }
        self.state
            .write(&lease)
            .map_err(|e| (internal(e), verdict.clone()))?;
        crate::fault::point("bind:lease-written");
        if let Err(reason) = self.execute(&lease, peer, driver) {
            let restored = self.undo(&lease, lease.devices.len());
            let reason = match restored {
                Ok(()) => {
                    let _ = self.state.remove(group);
                    format!("{reason}; every member of group {group} was put back as it was")
                }
                Err(why) => format!(
                    "{reason}; putting group {group} back did not complete ({why}); the lease is kept so an admin can see it"
                ),
            };
            return Err((WireError::Failed { reason }, verdict));
        }
        lease.phase = Phase::Applied;
        lease.updated = now();
        self.state
            .write(&lease)
            .map_err(|e| (internal(e), verdict.clone()))?;
        crate::fault::point("bind:lease-applied");
        if hold {
            verdict.held_group = Some(group);
        }
        Ok((
            Response::Bound(BindReport {
                plan,
                dry_run: false,
                vfio_node: (driver == Driver::VfioPci).then(|| self.node_path(group)),
            }),
            verdict,
        ))
    }

    /// Binds every member of the lease, then hands the group node over. Undoes nothing itself:
    /// on error the caller rolls back the whole group.
    fn execute(&self, lease: &Lease, peer: &Peer, driver: Driver) -> Result<(), String> {
        for d in &lease.devices {
            ops::bind(&self.kernel, d.device, d.driver, &d.original).map_err(|e| e.to_string())?;
        }
        crate::fault::point("bind:members-bound");
        if driver != Driver::VfioPci {
            return Ok(());
        }
        let members: Vec<_> = self
            .kernel
            .group_members(lease.group)
            .and_then(|ms| {
                ms.into_iter()
                    .map(|d| self.member_state(d))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|m| crate::groups::Member {
                address: m.facts.address,
                kind: m.kind,
                driver: m.driver,
            })
            .collect();
        if let Err(blockers) = viable(&members, self.tuning.viability) {
            let b: Vec<String> = blockers.iter().map(ToString::to_string).collect();
            return Err(format!(
                "group {} is still not viable: {}",
                lease.group,
                b.join(", ")
            ));
        }
        self.hand_over(
            lease.group,
            NodeOwner {
                uid: peer.uid,
                gid: peer.gid,
                mode: self.policy.settings().node_mode,
            },
        )
    }

    /// Waits (bounded) for `/dev/vfio/<group>` and gives it to `owner`.
    fn hand_over(&self, group: u32, owner: NodeOwner) -> Result<(), String> {
        let started = Instant::now();
        let mut said = false;
        loop {
            match self.kernel.group_node(group) {
                Ok(Some(_)) => break,
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            if started.elapsed() > self.tuning.node_timeout {
                return Err(format!(
                    "{} did not appear within {} s (is devtmpfs mounted on /dev, is vfio loaded?)",
                    self.node_path(group),
                    self.tuning.node_timeout.as_secs()
                ));
            }
            if !said && started.elapsed() > Duration::from_secs(1) {
                said = true;
                audit::Line::new("waiting")
                    .field("node", self.node_path(group))
                    .emit();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kernel
            .chown_group_node(group, owner)
            .map_err(|e| e.to_string())?;
        crate::fault::point("bind:node-handed-over");
        Ok(())
    }

    /// Rolls back the first `n` members of `lease`, last first.
    fn undo(&self, lease: &Lease, n: usize) -> Result<(), String> {
        let mut problems = Vec::new();
        for d in lease.devices[..n].iter().rev() {
            if let Rollback::Incomplete(why) = ops::roll_back(&self.kernel, d.device, &d.original) {
                problems.push(format!("{}: {why}", d.device.short()));
            }
        }
        self.reset_node(lease.group);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Gives `/dev/vfio/<group>` back to root, if it still exists.
    fn reset_node(&self, group: u32) {
        if let Ok(Some(owner)) = self.kernel.group_node(group)
            && owner != NodeOwner::ROOT
            && let Err(e) = self.kernel.chown_group_node(group, NodeOwner::ROOT)
        {
            audit::Line::new("node-error")
                .field("group", group)
                .field("error", e)
                .emit();
        }
    }

    /// Makes every group node's owner match the leases: the holder's for applied leases on
    /// vfio-pci, root's otherwise. Never leaves a node with someone who no longer holds it.
    fn reconcile_nodes(&self) {
        let (leases, _) = self.state.all();
        let Ok(devices) = self.kernel.devices() else {
            return;
        };
        let mut groups: Vec<u32> = devices
            .iter()
            .filter_map(|d| self.kernel.iommu_group(*d).ok().flatten())
            .collect();
        groups.sort();
        groups.dedup();
        for g in groups {
            let want = leases
                .iter()
                .find(|l| {
                    l.group == g
                        && l.phase == Phase::Applied
                        && l.devices.iter().any(|d| d.driver == Driver::VfioPci)
                })
                .map_or(NodeOwner::ROOT, |l| NodeOwner {
                    uid: l.owner_uid,
                    gid: l.owner_gid,
                    mode: self.policy.settings().node_mode,
                });
            if let Ok(Some(have)) = self.kernel.group_node(g)
                && have != want
            {
                let _ = self.kernel.chown_group_node(g, want);
            }
        }
    }

    fn find_lease(&self, dev: PciAddress) -> Result<Option<Lease>, WireError> {
        if let Some(g) = self.kernel.iommu_group(dev).ok().flatten()
            && let Some(l) = self.state.read(g).map_err(internal)?
        {
            return Ok(Some(l));
        }
        // The device may have vanished (and its group with it): look through every lease.
        let (leases, _) = self.state.all();
        Ok(leases.into_iter().find(|l| l.device(dev).is_some()))
    }

    /// Gives back the groups `target` names, for `peer`.
    fn release(
        &self,
        peer: &Peer,
        target: ReleaseTarget,
    ) -> Result<(Response, Verdict), (WireError, Verdict)> {
        let mut verdict = Verdict::default();
        let admin = self.policy.is_admin(&peer.subject());
        let _guard = self.lock();
        let leases: Vec<Lease> = match target {
            ReleaseTarget::Device(dev) => {
                verdict.devices = vec![dev];
                let Some(lease) = self.find_lease(dev).map_err(|e| (e, verdict.clone()))? else {
                    if !self.kernel.exists(dev) {
                        return Err((WireError::NotFound { device: dev }, verdict));
                    }
                    verdict.allowed = Some(false);
                    return Err((
                        WireError::Denied {
                            rule: None,
                            reason: format!(
                                "{} is not held through vfio-gate; there is nothing to release",
                                dev.short()
                            ),
                        },
                        verdict,
                    ));
                };
                if lease.owner_uid != peer.uid && !admin {
                    verdict.allowed = Some(false);
                    return Err((
                        WireError::Held {
                            group: Some(lease.group),
                            uid: lease.owner_uid,
                            since: lease.since,
                        },
                        verdict,
                    ));
                }
                vec![lease]
            }
            ReleaseTarget::Mine => self.leases_of(peer.uid),
            ReleaseTarget::User(uid) => {
                if uid != peer.uid && !admin {
                    verdict.allowed = Some(false);
                    return Err((
                        WireError::Denied {
                            rule: None,
                            reason: "only an admin (root, or [settings] admins in the policy) may release another user's devices".to_string(),
                        },
                        verdict,
                    ));
                }
                self.leases_of(uid)
            }
        };
        verdict.allowed = Some(true);
        verdict.devices = leases
            .iter()
            .flat_map(|l| l.devices.iter().map(|d| d.device))
            .collect();
        let mut groups = Vec::new();
        for lease in leases {
            groups.push(
                self.release_group(lease)
                    .map_err(|e| (e, verdict.clone()))?,
            );
        }
        Ok((Response::Released(ReleaseReport { groups }), verdict))
    }

    /// What a bind would meet, for the caller or (admins) another user: the policy's verdict
    /// per driver with every rule that spoke, the guards, the group plan. Changes nothing.
    fn explain(
        &self,
        peer: &Peer,
        dev: PciAddress,
        driver: Option<Driver>,
        uid: Option<u32>,
    ) -> Result<(Response, Verdict), (WireError, Verdict)> {
        let mut verdict = Verdict {
            devices: vec![dev],
            ..Verdict::default()
        };
        let subject = match uid {
            None => peer.subject(),
            Some(u) if u == peer.uid => peer.subject(),
            Some(u) => {
                if !self.policy.is_admin(&peer.subject()) {
                    verdict.allowed = Some(false);
                    return Err((
                        WireError::Denied {
                            rule: None,
                            reason: "only an admin (root, or [settings] admins in the policy) may ask about another user".into(),
                        },
                        verdict,
                    ));
                }
                match vfio_gate_policy::account_of(std::path::Path::new("/"), u) {
                    Ok(Some((_, s))) => s,
                    Ok(None) => {
                        return Err((
                            WireError::BadRequest {
                                reason: format!("no user with uid {u} in /etc/passwd"),
                            },
                            verdict,
                        ));
                    }
                    Err(e) => return Err((internal(format!("reading /etc/passwd: {e}")), verdict)),
                }
            }
        };
        let m = self
            .member_state(dev)
            .map_err(|e| (sysfs_error(dev, e), verdict.clone()))?;
        let drivers = driver.map_or_else(|| Driver::ALL.to_vec(), |d| vec![d]);
        let verdicts: Vec<DriverVerdict> = drivers
            .iter()
            .map(|&d| {
                let e = self.policy.explain(&subject, &m.facts, d);
                DriverVerdict {
                    driver: d,
                    allowed: e.decision.is_allowed(),
                    rule: e.decision.rule().cloned(),
                    allows: e.allows,
                    denies: e.denies,
                }
            })
            .collect();
        let guards = match guards::check(&self.kernel, &*self.host, dev, m.kind) {
            Ok(None) => Vec::new(),
            Ok(Some(r)) => vec![GuardFinding {
                guard: r.guard,
                reason: r.reason,
            }],
            Err(e) => return Err((internal(e), verdict)),
        };
        let group = self.kernel.iommu_group(dev).ok().flatten();
        let vfio_allowed = verdicts
            .iter()
            .any(|v| v.driver == Driver::VfioPci && v.allowed);
        let plan = match group {
            Some(g) if vfio_allowed => Some(self.plan_for(&subject, g, &m, Driver::VfioPci)),
            _ => None,
        };
        let holder = group
            .and_then(|g| self.state.read(g).ok().flatten())
            .map(|l| Holder {
                uid: l.owner_uid,
                driver: l.device(dev).map_or(Driver::VfioPci, |d| d.driver),
                since: l.since,
                group: Some(l.group),
                tied: l.tied,
            });
        Ok((
            Response::Explained(ExplainReport {
                device: dev,
                vendor: m.facts.vendor,
                device_id: m.facts.device,
                class: m.facts.class,
                driver: m.driver.map(|d| d.to_string()),
                iommu_group: group,
                uid: subject.uid,
                verdicts,
                guards,
                plan,
                holder,
                policy_sha256: self.policy.sha256(),
            }),
            verdict,
        ))
    }

    /// The whole-group plan a bind of `m` to `driver` by `subject` would carry out.
    fn plan_for(
        &self,
        subject: &vfio_gate_policy::Subject,
        group: u32,
        m: &MemberState,
        driver: Driver,
    ) -> Result<vfio_gate_protocol::Plan, String> {
        let members = self
            .kernel
            .group_members(group)
            .and_then(|ms| {
                ms.into_iter()
                    .map(|d| self.member_state(d))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| e.to_string())?;
        let asking = PolicyAnswers {
            policy: &self.policy,
            subject,
            primary: m.facts,
            driver,
        };
        plan::plan(
            group,
            &members,
            &[m.facts.address],
            driver,
            &asking,
            self.tuning.viability,
        )
        .map_err(|e| e.to_string())
    }

    fn leases_of(&self, uid: u32) -> Vec<Lease> {
        let (leases, _) = self.state.all();
        leases.into_iter().filter(|l| l.owner_uid == uid).collect()
    }

    /// Releases one group: refuses at once if a process holds its node, else restores every
    /// member (last bound first), takes the node back and removes the lease. Called with the
    /// mutation lock held.
    fn release_group(&self, mut lease: Lease) -> Result<ReleasedGroup, WireError> {
        let group = lease.group;
        let vfio = lease.devices.iter().any(|d| d.driver == Driver::VfioPci);
        if vfio {
            // Take the node back before looking: the helper opens only nodes it owns (it keeps
            // no CAP_DAC_OVERRIDE), and a user who is releasing should lose it anyway.
            self.reset_node(group);
            if self.kernel.group_in_use(group).unwrap_or(true) {
                let _ = self.kernel.chown_group_node(
                    group,
                    NodeOwner {
                        uid: lease.owner_uid,
                        gid: lease.owner_gid,
                        mode: self.policy.settings().node_mode,
                    },
                );
                return Err(WireError::Busy {
                    reason: format!(
                        "group {group} is in use — stop the VM first (a process holds {})",
                        self.node_path(group)
                    ),
                });
            }
        }
        lease.phase = Phase::Releasing;
        lease.updated = now();
        self.state.write(&lease).map_err(internal)?;
        crate::fault::point("release:lease-releasing");
        let mut restored = Vec::new();
        while let Some(d) = lease.devices.last().cloned() {
            if self.same_device(&d) {
                match ops::release(&self.kernel, d.device, &d.original) {
                    Ok(r) => restored.push(RestoredDevice {
                        device: d.device,
                        expected_driver: r.expected.map(|n| n.to_string()),
                        restored_driver: r.restored.map(|n| n.to_string()),
                    }),
                    Err(e) => {
                        // Keep what is still held, so a retry releases exactly that.
                        let _ = self.state.write(&lease);
                        return Err(match e {
                            ops::ReleaseError::Step { source, .. }
                                if matches!(
                                    source,
                                    SysfsError::Blocked { .. } | SysfsError::StillBlocked { .. }
                                ) =>
                            {
                                WireError::Busy {
                                    reason: format!(
                                        "{source}; the release of group {group} will finish when you retry after the VM is gone"
                                    ),
                                }
                            }
                            other => WireError::Failed {
                                reason: format!("{other}; the lease is kept, retry the release"),
                            },
                        });
                    }
                }
            } else {
                audit::Line::new("lease-member-gone")
                    .field("group", group)
                    .field("device", d.device)
                    .emit();
            }
            lease.devices.pop();
            // Record the progress, so a helper that dies now finishes only what is left.
            if !lease.devices.is_empty() {
                let _ = self.state.write(&lease);
            }
        }
        self.reset_node(group);
        crate::fault::point("release:node-reset");
        self.state.remove(group).map_err(internal)?;
        restored.reverse();
        Ok(ReleasedGroup {
            group: Some(group),
            owner_uid: lease.owner_uid,
            devices: restored,
        })
    }

    /// Whether the device recorded in a lease is still the one at that address: present, with
    /// the same vendor and device ids.
    fn same_device(&self, d: &LeasedDevice) -> bool {
        self.kernel
            .facts(d.device)
            .is_ok_and(|f| (f.vendor, f.device) == d.ids)
    }

    /// The connection that held `group` (a `hold` bind) is gone: release it, or keep trying
    /// while a process still has the group open.
    pub fn release_tied(&self, group: u32, peer: &Peer) {
        let _guard = self.lock();
        self.release_orphan(group, Some(peer.uid));
    }

    /// Tries once more every tied lease whose connection is gone. Returns how many remain.
    pub fn retry_orphans(&self) -> usize {
        let pending: Vec<u32> = self.orphans().iter().copied().collect();
        if !pending.is_empty() {
            let _guard = self.lock();
            for group in pending {
                self.release_orphan(group, None);
            }
        }
        self.orphans().len()
    }

    fn orphans(&self) -> MutexGuard<'_, BTreeSet<u32>> {
        self.orphans.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Releases the tied lease of `group` (owned by `uid`, if given), with the lock held.
    fn release_orphan(&self, group: u32, uid: Option<u32>) {
        let lease = match self.state.read(group) {
            Ok(Some(l)) if l.tied && uid.is_none_or(|u| u == l.owner_uid) => l,
            // Released meanwhile (the client sent its release, or an admin did): done.
            _ => {
                self.orphans().remove(&group);
                return;
            }
        };
        let owner = lease.owner_uid;
        let mut line = audit::Line::new("tied-release");
        line.field("group", group).field("owner_uid", owner);
        match self.release_group(lease) {
            Ok(_) => {
                self.orphans().remove(&group);
                line.field("result", "ok");
            }
            Err(e) => {
                self.orphans().insert(group);
                line.field("result", "pending").field("error", e);
            }
        }
        line.emit();
    }

    /// Brings every lease on disk to a consistent end before the first client is served: a
    /// half-done bind is rolled back, a half-done release finished, a tied lease (its connection
    /// died with the previous process) released, an applied lease checked against sysfs.
    /// Devices that vanished are dropped from their lease; a different device that appeared at
    /// the same address is never touched. Called with the mutation lock held.
    fn reconcile_leases(&self) {
        let (leases, problems) = self.state.all();
        for p in problems {
            audit::Line::new("lease-unreadable")
                .field("error", p)
                .emit();
        }
        for mut lease in leases {
            let group = lease.group;
            let before = lease.devices.len();
            lease.devices.retain(|d| {
                let same = self.same_device(d);
                if !same {
                    let action = if self.kernel.exists(d.device) {
                        "left alone: a different device is at that address now"
                    } else {
                        "dropped: the device is gone"
                    };
                    audit::Line::new("reconcile")
                        .field("group", group)
                        .field("device", d.device)
                        .field("action", action)
                        .emit();
                }
                same
            });
            if lease.devices.is_empty() {
                let _ = self.state.remove(group);
                continue;
            }
            if lease.devices.len() != before {
                let _ = self.state.write(&lease);
            }
            let all_on_target = lease.devices.iter().all(|d| {
                self.kernel
                    .driver(d.device)
                    .ok()
                    .flatten()
                    .is_some_and(|n| n.is(d.driver))
            });
            let n = lease.devices.len();
            let (action, result) = match lease.phase {
                Phase::Applied if lease.tied => {
                    self.release_orphan(group, None);
                    continue;
                }
                Phase::Applied if all_on_target => ("kept", Ok(())),
                Phase::Intent | Phase::Applied => {
                    let r = self.undo(&lease, n);
                    if r.is_ok() {
                        let _ = self.state.remove(group);
                    }
                    let action = if lease.phase == Phase::Intent {
                        "rolled back a bind the previous helper did not finish"
                    } else {
                        "rolled back: members were no longer on their drivers"
                    };
                    (action, r)
                }
                Phase::Releasing => (
                    "finished a release the previous helper did not finish",
                    self.release_group(lease.clone())
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                ),
            };
            let mut line = audit::Line::new("reconcile");
            line.field("group", group).field("action", action);
            match result {
                Ok(()) => line.field("result", "ok"),
                Err(e) => line.field("result", "failed").field("error", e),
            };
            line.emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::{SimDevice, SimKernel, SimOp};
    use vfio_gate_policy::NameResolver;
    use vfio_gate_protocol::{Guard, Plan};

    struct Names;
    impl NameResolver for Names {
        fn uid(&self, user: &str) -> Option<u32> {
            match user {
                "alice" => Some(1000),
                "bob" => Some(1001),
                "carol" => Some(1002),
                _ => None,
            }
        }
        fn gid(&self, group: &str) -> Option<u32> {
            (group == "vm-users").then_some(1100)
        }
    }

    /// The guest's default policy (tests/vm/policy.toml), plus a rule that would hand out the
    /// host's disk and NIC, to show the guards win over the policy.
    const POLICY: &str = r#"
[settings]
admins = { users = ["carol"] }

[[rule]]
name = "alice's NIC and test devices"
subjects = { users = ["alice"], groups = ["vm-users"] }
devices = [
  { address = "01:00.0", vendor = "8086", device = "10d3" },
  { address = "00:06.*" },
  { address = "00:1b.0" },
]
drivers = ["vfio-pci"]

[[rule]]
name = "group 11"
subjects = { groups = ["vm-users"], users = ["bob"] }
devices = [{ address = "05:0?.0" }]
drivers = ["vfio-pci"]
companions = ["pci-stub"]

[[rule]]
name = "testdev on stub"
subjects = { groups = ["vm-users"] }
devices = [{ address = "00:06.1" }]
drivers = ["pci-stub"]

[[rule]]
name = "everything, for the guards to refuse"
subjects = { users = ["alice"] }
devices = [{ address = "02:00.0" }, { address = "03:00.0" }, { address = "04:00.0" }, { address = "00:1f.0" }, { address = "0a:00.0" }, { address = "0b:00.0" }, { address = "0c:00.0" }]
drivers = ["vfio-pci", "pci-stub"]

[[deny]]
name = "never storage"
devices = [{ class = "01xxxx" }]
subjects = { users = ["bob"] }
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
    fn root() -> Peer {
        Peer {
            uid: 0,
            gid: 0,
            pid: 1,
            groups: vec![],
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

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let kernel = Arc::new(SimKernel::guest_layout());
        // Devices the guest does not have, for the guards it cannot show.
        kernel.add_device(SimDevice {
            boot_vga: true,
            ..SimDevice::endpoint("0a:00.0", 0x1234, 0x1111, 0x030000, Some("bochs-drm"))
                .in_group(20)
        });
        kernel.add_device(SimDevice {
            sriov_numvfs: 4,
            ..SimDevice::endpoint("0b:00.0", 0x8086, 0x1521, 0x020000, Some("igb")).in_group(21)
        });
        kernel.add_device(SimDevice::endpoint(
            "0c:00.0",
            0x8086,
            0x1521,
            0x020000,
            Some("igb"),
        ));
        kernel.load_driver("igb");
        let policy = Policy::parse(POLICY, "policy.toml", &Names).unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        let tuning = Tuning {
            write_timeout: Duration::from_millis(300),
            node_timeout: Duration::from_millis(300),
            ..Tuning::default()
        };
        let service = Service::new(
            kernel.clone(),
            Box::new(kernel.clone()),
            policy,
            state,
            tuning,
        );
        Fixture {
            _tmp: tmp,
            kernel,
            service,
        }
    }

    fn bind_req(devs: &[&str], driver: Driver, group: bool, dry_run: bool) -> Request {
        Request::Bind {
            devices: devs.iter().map(|d| a(d)).collect(),
            driver,
            group,
            dry_run,
            hold: false,
        }
    }

    fn bind(s: &Service, p: &Peer, dev: &str, driver: Driver) -> (Response, Verdict) {
        s.handle(p, &bind_req(&[dev], driver, false, false))
    }

    fn release(s: &Service, p: &Peer, dev: &str) -> (Response, Verdict) {
        s.handle(
            p,
            &Request::Release {
                target: ReleaseTarget::Device(a(dev)),
            },
        )
    }

    fn driver_of(k: &SimKernel, dev: &str) -> Option<String> {
        k.device(a(dev)).unwrap().driver.map(|d| d.to_string())
    }

    fn summary(plan: &Plan) -> Vec<String> {
        plan.steps
            .iter()
            .map(|s| match &s.action {
                StepAction::Bind { driver, .. } => format!("{} -> {driver}", s.device.short()),
                StepAction::Keep { .. } => format!("{} keep", s.device.short()),
            })
            .collect()
    }

    #[test]
    fn alice_binds_and_releases_and_gets_the_node() {
        let f = fixture();
        let (resp, verdict) = bind(&f.service, &alice(), "01:00.0", Driver::VfioPci);
        let Response::Bound(report) = resp else {
            panic!("{resp:?}")
        };
        assert_eq!(summary(&report.plan), ["01:00.0 -> vfio-pci"]);
        assert_eq!(report.vfio_node.as_deref(), Some("/dev/vfio/8"));
        assert_eq!(verdict.rule.unwrap().name, "alice's NIC and test devices");
        assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("vfio-pci"));
        assert_eq!(
            f.kernel.node(8),
            Some(NodeOwner {
                uid: 1000,
                gid: 1000,
                mode: 0o600
            })
        );
        let lease = f.service.state.read(8).unwrap().unwrap();
        assert_eq!((lease.owner_uid, lease.phase), (1000, Phase::Applied));

        let (resp, _) = release(&f.service, &alice(), "01:00.0");
        let Response::Released(r) = resp else {
            panic!("{resp:?}")
        };
        assert_eq!(
            r.groups[0].devices[0].restored_driver.as_deref(),
            Some("e1000e")
        );
        assert_eq!(f.service.state.read(8).unwrap(), None);
        assert_eq!(
            f.kernel.node(8),
            None,
            "the node goes with the last vfio-pci member"
        );
    }

    #[test]
    fn group_11_needs_group_then_binds_edu_with_e1000_on_stub() {
        let f = fixture();
        let before = f.kernel.log();
        let (resp, verdict) = bind(&f.service, &alice(), "05:02.0", Driver::VfioPci);
        let Response::Error(WireError::NeedsGroup {
            group,
            plan,
            reason,
        }) = resp
        else {
            panic!("{resp:?}")
        };
        assert_eq!(group, 11);
        assert!(reason.contains("05:01.0 (e1000)"), "{reason}");
        assert_eq!(
            summary(&plan),
            ["04:00.0 keep", "05:01.0 -> pci-stub", "05:02.0 -> vfio-pci"]
        );
        assert_eq!(verdict.allowed, Some(false));
        assert_eq!(f.kernel.log(), before, "a refusal writes nothing");

        // --dry-run: the same plan, nothing written.
        let (resp, _) = f.service.handle(
            &alice(),
            &bind_req(&["05:02.0"], Driver::VfioPci, true, true),
        );
        let Response::Bound(report) = resp else {
            panic!("{resp:?}")
        };
        assert!(report.dry_run);
        assert_eq!(
            summary(&report.plan),
            ["04:00.0 keep", "05:01.0 -> pci-stub", "05:02.0 -> vfio-pci"]
        );
        assert_eq!(f.kernel.log(), before, "a dry run writes nothing");
        assert_eq!(f.service.state.read(11).unwrap(), None);

        let (resp, _) = f.service.handle(
            &alice(),
            &bind_req(&["05:02.0"], Driver::VfioPci, true, false),
        );
        assert!(matches!(resp, Response::Bound(_)), "{resp:?}");
        assert_eq!(driver_of(&f.kernel, "05:02.0").as_deref(), Some("vfio-pci"));
        assert_eq!(driver_of(&f.kernel, "05:01.0").as_deref(), Some("pci-stub"));
        assert_eq!(driver_of(&f.kernel, "04:00.0"), None);
        assert_eq!(
            f.kernel.node(11),
            Some(NodeOwner {
                uid: 1000,
                gid: 1000,
                mode: 0o600
            })
        );

        // Bob, whom the policy allows group 11 too, can touch no member while alice holds it.
        for dev in ["05:01.0", "05:02.0"] {
            let (resp, _) = bind(&f.service, &bob(), dev, Driver::VfioPci);
            assert!(
                matches!(
                    resp,
                    Response::Error(WireError::Held {
                        group: Some(11),
                        uid: 1000,
                        ..
                    })
                ),
                "{resp:?}"
            );
            let (resp, _) = release(&f.service, &bob(), dev);
            assert!(
                matches!(resp, Response::Error(WireError::Held { .. })),
                "{resp:?}"
            );
        }

        let (resp, _) = release(&f.service, &alice(), "05:01.0");
        let Response::Released(r) = resp else {
            panic!("{resp:?}")
        };
        assert_eq!(r.groups[0].devices.len(), 2);
        assert_eq!(driver_of(&f.kernel, "05:01.0").as_deref(), Some("e1000"));
        assert_eq!(driver_of(&f.kernel, "05:02.0"), None);
        assert_eq!(f.kernel.node(11), None);
        let d = f.kernel.device(a("05:01.0")).unwrap();
        assert_eq!(d.driver_override, None);
    }

    #[test]
    fn a_failure_midway_through_a_group_plan_restores_every_member() {
        let f = fixture();
        // 05:01.0 goes to pci-stub first, then 05:02.0's probe fails.
        f.kernel.fail_next(SimOp::Probe, a("05:02.0"), libc::EIO);
        let (resp, _) = f.service.handle(
            &alice(),
            &bind_req(&["05:02.0"], Driver::VfioPci, true, false),
        );
        let Response::Error(WireError::Failed { reason }) = resp else {
            panic!("{resp:?}")
        };
        assert!(reason.contains("put back as it was"), "{reason}");
        assert!(
            f.kernel.log().iter().any(|l| l == "probe 0000:05:01.0"),
            "the companion was bound first"
        );
        for (dev, driver) in [
            ("04:00.0", None),
            ("05:01.0", Some("e1000")),
            ("05:02.0", None),
        ] {
            let d = f.kernel.device(a(dev)).unwrap();
            assert_eq!(d.driver.map(|d| d.to_string()).as_deref(), driver, "{dev}");
            assert_eq!(d.driver_override, None, "{dev}");
        }
        assert_eq!(f.service.state.read(11).unwrap(), None);
        assert_eq!(f.kernel.node(11), None);
    }

    #[test]
    fn guards_refuse_whatever_the_policy_says() {
        let f = fixture();
        let before = f.kernel.log();
        for (dev, guard) in [
            ("03:00.0", Guard::HostInUse),
            ("02:00.0", Guard::HostInUse),
            ("04:00.0", Guard::NotEndpoint),
            ("00:1f.0", Guard::NotEndpoint),
            ("0a:00.0", Guard::BootVga),
            ("0b:00.0", Guard::SriovEnabled),
            ("0c:00.0", Guard::NoIommuGroup),
        ] {
            for driver in Driver::ALL {
                let (resp, verdict) = bind(&f.service, &alice(), dev, driver);
                match resp {
                    Response::Error(WireError::Refused {
                        guard: g, reason, ..
                    }) => {
                        assert_eq!(g, guard, "{dev}: {reason}");
                        assert_eq!(verdict.allowed, Some(false));
                    }
                    other => panic!("{dev} {driver}: {other:?}"),
                }
            }
        }
        assert_eq!(f.kernel.log(), before);
    }

    #[test]
    fn release_of_a_group_in_use_is_refused_at_once() {
        let f = fixture();
        assert!(matches!(
            bind(&f.service, &alice(), "01:00.0", Driver::VfioPci).0,
            Response::Bound(_)
        ));
        f.kernel.hold_group(8);
        let started = Instant::now();
        let (resp, _) = release(&f.service, &alice(), "01:00.0");
        let Response::Error(WireError::Busy { reason }) = resp else {
            panic!("{resp:?}")
        };
        assert!(
            reason.contains("group 8 is in use — stop the VM first"),
            "{reason}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        // Others are served meanwhile.
        assert!(matches!(
            f.service.handle(&bob(), &Request::List).0,
            Response::Devices(_)
        ));
        f.kernel.let_go_group(8);
        assert!(matches!(
            release(&f.service, &alice(), "01:00.0").0,
            Response::Released(_)
        ));
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
                bob(),
                "03:00.0",
                Driver::VfioPci,
                Err(Some("never storage")),
            ),
            (
                alice(),
                "00:1b.0",
                Driver::VfioPci,
                Ok("alice's NIC and test devices"),
            ),
        ];
        for (peer, dev, driver, expected) in table {
            let f = fixture();
            let before = f.kernel.log();
            let (resp, verdict) = bind(&f.service, peer, dev, *driver);
            match (expected, &resp) {
                (Ok(rule), Response::Bound(_)) => assert_eq!(verdict.rule.unwrap().name, *rule),
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
            matches!(resp, Response::Error(WireError::Held { .. })),
            "{resp:?}"
        );
        assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("vfio-pci"));
        assert!(matches!(
            release(&f.service, &root(), "01:00.0").0,
            Response::Released(_)
        ));
    }

    #[test]
    fn bad_requests() {
        let f = fixture();
        for req in [
            bind_req(&[], Driver::VfioPci, false, false),
            bind_req(&["01:00.0", "01:00.0"], Driver::VfioPci, false, false),
            bind_req(&["01:00.0", "00:06.0"], Driver::VfioPci, false, false),
        ] {
            let (resp, _) = f.service.handle(&alice(), &req);
            assert!(
                matches!(resp, Response::Error(WireError::BadRequest { .. })),
                "{req:?}: {resp:?}"
            );
        }
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
        assert!(reason.contains("put back"), "{reason}");
        assert_eq!(f.service.state.read(8).unwrap(), None);
        let d = f.kernel.device(a("01:00.0")).unwrap();
        assert_eq!(d.driver.unwrap().as_str(), "e1000e");
        assert_eq!(d.driver_override, None);
    }

    #[test]
    fn nodes_are_reconciled_with_the_leases_at_start() {
        let f = fixture();
        assert!(matches!(
            bind(&f.service, &alice(), "01:00.0", Driver::VfioPci).0,
            Response::Bound(_)
        ));
        // The node was re-created behind vfio-gate's back (udev, a rebind): root's again.
        f.kernel.chown_group_node(8, NodeOwner::ROOT).unwrap();
        let again = Service::new(
            f.kernel.clone(),
            Box::new(f.kernel.clone()),
            Policy::parse(POLICY, "policy.toml", &Names).unwrap(),
            StateDir::open(f.service.state.path()).unwrap(),
            Tuning::default(),
        );
        assert_eq!(f.kernel.node(8).unwrap().uid, 1000);
        drop(again);
    }

    #[test]
    fn list_shows_what_the_caller_may_do_and_who_holds_what() {
        let f = fixture();
        let (resp, _) = bind(&f.service, &alice(), "00:06.1", Driver::PciStub);
        assert!(matches!(resp, Response::Bound(_)), "{resp:?}");
        let Response::Devices(devs) = f.service.handle(&bob(), &Request::List).0 else {
            panic!()
        };
        assert!(
            devs.iter()
                .filter(|d| d.address.bus() != 5)
                .all(|d| d.allowed.is_empty()),
            "bob may only have group 11"
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
        assert_eq!((nvme.class, nvme.iommu_group), (0x010802, Some(10)));
    }

    fn carol() -> Peer {
        Peer {
            uid: 1002,
            gid: 1002,
            pid: 12,
            groups: vec![1002],
        }
    }

    fn hold_req(devs: &[&str], driver: Driver, group: bool) -> Request {
        Request::Bind {
            devices: devs.iter().map(|d| a(d)).collect(),
            driver,
            group,
            dry_run: false,
            hold: true,
        }
    }

    fn restart(f: &Fixture) -> Service {
        Service::new(
            f.kernel.clone(),
            Box::new(f.kernel.clone()),
            Policy::parse(POLICY, "policy.toml", &Names).unwrap(),
            StateDir::open(f.service.state.path()).unwrap(),
            Tuning {
                write_timeout: Duration::from_millis(300),
                node_timeout: Duration::from_millis(300),
                ..Tuning::default()
            },
        )
    }

    #[test]
    fn a_held_bind_is_released_when_its_connection_goes() {
        let f = fixture();
        let (resp, verdict) = f
            .service
            .handle(&alice(), &hold_req(&["01:00.0"], Driver::VfioPci, false));
        assert!(matches!(resp, Response::Bound(_)), "{resp:?}");
        assert_eq!(verdict.held_group, Some(8));
        assert!(f.service.state.read(8).unwrap().unwrap().tied);
        let Response::Devices(devs) = f.service.handle(&bob(), &Request::List).0 else {
            panic!()
        };
        let nic = devs.iter().find(|d| d.address == a("01:00.0")).unwrap();
        assert!(nic.holder.as_ref().unwrap().tied);
        // A VM still has the group open when the connection drops: the release waits for it.
        f.kernel.hold_group(8);
        f.service.release_tied(8, &alice());
        assert_eq!(f.service.retry_orphans(), 1);
        assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("vfio-pci"));
        f.kernel.let_go_group(8);
        assert_eq!(f.service.retry_orphans(), 0);
        assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("e1000e"));
        assert_eq!(f.service.state.read(8).unwrap(), None);
        assert_eq!(f.kernel.node(8), None);
    }

    #[test]
    fn an_untied_lease_survives_a_restart_and_a_tied_one_does_not() {
        let f = fixture();
        assert!(matches!(
            bind(&f.service, &alice(), "01:00.0", Driver::VfioPci).0,
            Response::Bound(_)
        ));
        let (resp, _) = f
            .service
            .handle(&alice(), &hold_req(&["05:02.0"], Driver::VfioPci, true));
        assert!(matches!(resp, Response::Bound(_)), "{resp:?}");
        let _again = restart(&f);
        assert_eq!(
            driver_of(&f.kernel, "01:00.0").as_deref(),
            Some("vfio-pci"),
            "kept"
        );
        assert_eq!(f.kernel.node(8).unwrap().uid, 1000);
        assert_eq!(
            driver_of(&f.kernel, "05:02.0"),
            None,
            "tied: released at start"
        );
        assert_eq!(driver_of(&f.kernel, "05:01.0").as_deref(), Some("e1000"));
        assert_eq!(f.service.state.read(11).unwrap(), None);
    }

    #[test]
    fn a_half_done_bind_is_rolled_back_at_start() {
        let f = fixture();
        // The previous helper died after writing its intent and moving the companion only.
        let lease = Lease {
            group: 11,
            owner_uid: 1000,
            owner_gid: 1000,
            phase: Phase::Intent,
            since: 1,
            updated: 1,
            tied: false,
            devices: vec![
                LeasedDevice {
                    device: a("05:01.0"),
                    driver: Driver::PciStub,
                    original: ops::Original {
                        driver: crate::sysfs::DriverName::new("e1000"),
                        driver_override: None,
                    },
                    ids: (0x8086, 0x100e),
                },
                LeasedDevice {
                    device: a("05:02.0"),
                    driver: Driver::VfioPci,
                    original: ops::Original {
                        driver: None,
                        driver_override: None,
                    },
                    ids: (0x1234, 0x11e8),
                },
            ],
        };
        f.service.state.write(&lease).unwrap();
        let stub = crate::sysfs::DriverName::new("pci-stub").unwrap();
        f.kernel.set_override(a("05:01.0"), Some(&stub)).unwrap();
        f.kernel.unbind(a("05:01.0")).unwrap();
        f.kernel.probe(a("05:01.0")).unwrap();
        assert_eq!(driver_of(&f.kernel, "05:01.0").as_deref(), Some("pci-stub"));
        let _again = restart(&f);
        assert_eq!(driver_of(&f.kernel, "05:01.0").as_deref(), Some("e1000"));
        assert_eq!(f.kernel.device(a("05:01.0")).unwrap().driver_override, None);
        assert_eq!(f.service.state.read(11).unwrap(), None);
    }

    #[test]
    fn a_half_done_release_is_finished_and_strangers_are_left_alone() {
        let f = fixture();
        let (resp, _) = f.service.handle(
            &alice(),
            &bind_req(&["05:02.0"], Driver::VfioPci, true, false),
        );
        assert!(matches!(resp, Response::Bound(_)), "{resp:?}");
        let mut lease = f.service.state.read(11).unwrap().unwrap();
        lease.phase = Phase::Releasing;
        f.service.state.write(&lease).unwrap();
        // A different device appeared where the e1000 was.
        f.kernel.remove_device(a("05:01.0"));
        f.kernel.add_device(
            crate::sysfs::SimDevice::endpoint("05:01.0", 0x10ec, 0x8139, 0x020000, None)
                .in_group(11),
        );
        let _again = restart(&f);
        assert_eq!(
            driver_of(&f.kernel, "05:02.0"),
            None,
            "the release was finished"
        );
        let stranger = f.kernel.device(a("05:01.0")).unwrap();
        assert_eq!(
            (stranger.driver, stranger.driver_override),
            (None, None),
            "never touched"
        );
        assert_eq!(f.service.state.read(11).unwrap(), None);
    }

    #[test]
    fn corrupt_records_are_reported_and_left_alone() {
        let f = fixture();
        std::fs::write(f.service.state.path().join("group-8.lease"), "not a lease").unwrap();
        let _again = restart(&f);
        assert_eq!(
            std::fs::read_to_string(f.service.state.path().join("group-8.lease")).unwrap(),
            "not a lease"
        );
        assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("e1000e"));
    }

    #[test]
    fn admins_release_anyone_users_only_their_own() {
        let f = fixture();
        assert!(matches!(
            bind(&f.service, &alice(), "01:00.0", Driver::VfioPci).0,
            Response::Bound(_)
        ));
        assert!(matches!(
            bind(&f.service, &alice(), "00:06.1", Driver::PciStub).0,
            Response::Bound(_)
        ));
        let release_user = |p: &Peer, uid| {
            f.service
                .handle(
                    p,
                    &Request::Release {
                        target: ReleaseTarget::User(uid),
                    },
                )
                .0
        };
        assert!(matches!(
            release_user(&bob(), 1000),
            Response::Error(WireError::Denied { .. })
        ));
        let (resp, _) = release(&f.service, &carol(), "01:00.0");
        let Response::Released(r) = resp else {
            panic!("{resp:?}")
        };
        assert_eq!(r.groups[0].owner_uid, 1000);
        let Response::Released(r) = release_user(&carol(), 1000) else {
            panic!()
        };
        assert_eq!(r.groups.len(), 1, "the pci-stub group");
        assert_eq!(driver_of(&f.kernel, "00:06.1"), None);
        // --all for a user who holds nothing releases nothing, successfully.
        let (resp, _) = f.service.handle(
            &bob(),
            &Request::Release {
                target: ReleaseTarget::Mine,
            },
        );
        assert_eq!(resp, Response::Released(ReleaseReport { groups: vec![] }));
    }

    #[test]
    fn release_all_gives_back_every_group_of_the_caller() {
        let f = fixture();
        assert!(matches!(
            bind(&f.service, &alice(), "01:00.0", Driver::VfioPci).0,
            Response::Bound(_)
        ));
        assert!(matches!(
            bind(&f.service, &alice(), "00:1b.0", Driver::VfioPci).0,
            Response::Bound(_)
        ));
        let (resp, _) = f.service.handle(
            &alice(),
            &Request::Release {
                target: ReleaseTarget::Mine,
            },
        );
        let Response::Released(r) = resp else {
            panic!("{resp:?}")
        };
        assert_eq!(r.groups.len(), 2);
        assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("e1000e"));
        assert_eq!(
            driver_of(&f.kernel, "00:1b.0").as_deref(),
            Some("snd_hda_intel")
        );
    }

    #[test]
    fn node_mode_and_group_limit_come_from_the_policy() {
        let tmp = tempfile::tempdir().unwrap();
        let kernel = Arc::new(SimKernel::guest_layout());
        let text = POLICY.replacen(
            "[settings]\n",
            "[settings]\nnode_mode = \"0660\"\nmax_groups_per_user = 1\n",
            1,
        );
        let policy = Policy::parse(&text, "policy.toml", &Names).unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        let service = Service::new(
            kernel.clone(),
            Box::new(kernel.clone()),
            policy,
            state,
            Tuning::default(),
        );
        assert!(matches!(
            bind(&service, &alice(), "01:00.0", Driver::VfioPci).0,
            Response::Bound(_)
        ));
        assert_eq!(
            kernel.node(8),
            Some(NodeOwner {
                uid: 1000,
                gid: 1000,
                mode: 0o660
            })
        );
        let (resp, _) = bind(&service, &alice(), "00:1b.0", Driver::VfioPci);
        let Response::Error(WireError::Denied { reason, .. }) = resp else {
            panic!("{resp:?}")
        };
        assert!(reason.contains("max_groups_per_user = 1"), "{reason}");
        assert_eq!(
            driver_of(&kernel, "00:1b.0").as_deref(),
            Some("snd_hda_intel")
        );
    }

    #[test]
    fn explain_says_what_a_bind_would_meet_without_doing_it() {
        let f = fixture();
        let before = f.kernel.log();
        let explain = |p: &Peer, dev: &str, uid| {
            f.service
                .handle(
                    p,
                    &Request::Explain {
                        device: a(dev),
                        driver: None,
                        uid,
                    },
                )
                .0
        };
        let Response::Explained(e) = explain(&alice(), "05:02.0", None) else {
            panic!()
        };
        assert_eq!(e.uid, 1000);
        let vfio = &e.verdicts[0];
        assert!(vfio.allowed && vfio.rule.as_ref().unwrap().name == "group 11");
        assert!(
            !e.verdicts[1].allowed,
            "pci-stub is not granted for 05:02.0"
        );
        let plan = e.plan.unwrap().unwrap();
        assert_eq!(
            summary(&plan),
            ["04:00.0 keep", "05:01.0 -> pci-stub", "05:02.0 -> vfio-pci"]
        );
        assert!(e.guards.is_empty());
        assert_eq!(e.policy_sha256, f.service.policy().sha256());

        // The guard shows, and so does the deny rule that decides for bob.
        let Response::Explained(e) = explain(&alice(), "03:00.0", None) else {
            panic!()
        };
        assert_eq!(e.guards[0].guard, vfio_gate_protocol::Guard::HostInUse);
        // Only admins ask about others.
        assert!(matches!(
            explain(&bob(), "01:00.0", Some(1000)),
            Response::Error(WireError::Denied { .. })
        ));
        assert_eq!(f.kernel.log(), before, "explain writes nothing");
    }
}
