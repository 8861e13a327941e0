//! Binding: the policy, the one IOMMU group, the holder, the guards, the whole-group plan, the
//! write-ahead lease, all-or-nothing execution, and the hand-over of `/dev/vfio/<group>`.

use std::time::{Duration, Instant};

use vfio_gate_host::PciView;
use vfio_gate_host::groups::{Member, viable};
use vfio_gate_host::plan::{self, MemberState, PlanError, PolicyAnswers};
use vfio_gate_policy::Decision;
use vfio_gate_protocol::{
    BindReport, BusyReason, DenyReason, Driver, MAX_BIND_DEVICES, PciAddress, Plan, Response,
    RuleRef, WireError,
};

use super::{Outcome, Service, internal, now, sysfs_error};
use crate::audit::{self, Record};
use crate::kernel::{Kernel, NodeOwner};
use crate::peer::Peer;
use crate::sequence::{self, Rollback};
use crate::state::{Lease, LeasedDevice, Phase};

/// A bind as the client asked for it (`Request::Bind`).
#[derive(Debug, Clone, Copy)]
pub(super) struct BindRequest<'a> {
    /// The devices named, primary first.
    pub devices: &'a [PciAddress],
    pub driver: Driver,
    /// The client agrees that members it did not name move too (`--group`).
    pub whole_group: bool,
    /// Plan and check only; change nothing.
    pub dry_run: bool,
    /// Tie the lease to the connection (`vfio-gate run`).
    pub hold: bool,
}

impl Service {
    /// Binds the devices `req` names, with every member of their IOMMU group that has to move:
    /// read the named devices → policy → one group → lock → holder → guards → plan (a dry run
    /// answers here) → quota → write-ahead lease → execute or roll back → commit.
    pub(super) fn bind(
        &self,
        peer: &Peer,
        req: BindRequest<'_>,
        record: &mut Record,
    ) -> Result<Outcome, WireError> {
        record.devices = req.devices.to_vec();
        let named = self.read_named(req.devices)?;
        // The policy first: a request it denies is answered with the deciding rule, whatever the
        // device's state. Then the guards, which no policy can override.
        self.check_policy(peer, &named, req.driver, record)?;
        let group = self.one_group(&named, record)?;
        let _lock = self.lock();
        self.check_holder(peer, group, record)?;
        // The guards under the lock: the host's use of a device changes as drivers move (a NIC's
        // interface vanishes while another client's bind runs), and the group's holder answers
        // first.
        self.check_guards(&named, record)?;
        let members = self.group_states(group).map_err(internal)?;
        let plan = self.plan(peer, group, &members, &named, req, record)?;
        self.check_companions(group, &plan, &members, req, record)?;
        self.check_not_open_elsewhere(group, &members, !req.dry_run)?;
        if req.dry_run {
            return Ok(Outcome::reply(self.bound(group, plan, req.driver, true)));
        }
        self.check_quota(peer, record)?;
        let lease = self.write_ahead(peer, group, &plan, req.hold)?;
        self.execute_or_roll_back(&lease, peer, req.driver)?;
        self.commit(lease)?;
        Ok(Outcome {
            response: self.bound(group, plan, req.driver, false),
            tied: req.hold.then_some(group),
        })
    }

    /// The named devices, as sysfs shows them: one to [`MAX_BIND_DEVICES`], none twice.
    fn read_named(&self, named: &[PciAddress]) -> Result<Vec<MemberState>, WireError> {
        let bad = |reason: String| WireError::BadRequest { reason };
        if named.is_empty() {
            return Err(bad("a bind names at least one device".into()));
        }
        if named.len() > MAX_BIND_DEVICES {
            return Err(bad(format!(
                "a bind names at most {MAX_BIND_DEVICES} devices"
            )));
        }
        if (1..named.len()).any(|i| named[..i].contains(&named[i])) {
            return Err(bad("a device is named twice".into()));
        }
        named
            .iter()
            .map(|&dev| self.member_state(dev).map_err(|e| sysfs_error(dev, e)))
            .collect()
    }

    /// The policy's answer for each named device; the first that is denied decides.
    fn check_policy(
        &self,
        peer: &Peer,
        named: &[MemberState],
        driver: Driver,
        record: &mut Record,
    ) -> Result<(), WireError> {
        let subject = peer.subject();
        for m in named {
            if let Decision::Deny(rule) = self.policy.decide(&subject, &m.facts, driver) {
                let short = m.facts.address.short();
                let detail = match &rule {
                    Some(r) => format!("rule {r} denies binding {short} to {driver}"),
                    None => format!("no policy rule lets you bind {short} to {driver}"),
                };
                record.deny_by(rule.clone());
                return Err(WireError::Denied {
                    why: DenyReason::Policy,
                    rule,
                    detail,
                });
            }
        }
        Ok(())
    }

    /// The IOMMU group every named device is in: a bind moves one group.
    fn one_group(&self, named: &[MemberState], record: &mut Record) -> Result<u32, WireError> {
        let primary = named[0].facts.address;
        let Some(group) = self
            .kernel
            .iommu_group(primary)
            .map_err(|e| sysfs_error(primary, e))?
        else {
            // No IOMMU group: the guard says so, and how to turn the IOMMU on.
            self.guard(&named[0], record)?;
            return Err(internal(format!("{primary} has no IOMMU group")));
        };
        for m in &named[1..] {
            let dev = m.facts.address;
            let g = self.kernel.iommu_group(dev).ok().flatten();
            if g != Some(group) {
                return Err(WireError::BadRequest {
                    reason: format!(
                        "{} is in IOMMU group {group} but {} is in {}: bind one group at a time",
                        primary.short(),
                        dev.short(),
                        g.map_or("none".into(), |g| g.to_string())
                    ),
                });
            }
        }
        Ok(group)
    }

    /// A group belongs to one user at a time: refuse if anyone (the caller included) holds it.
    fn check_holder(&self, peer: &Peer, group: u32, record: &mut Record) -> Result<(), WireError> {
        let Some(lease) = self.state.read(group).map_err(internal)? else {
            return Ok(());
        };
        if lease.owner_uid != peer.uid {
            record.deny();
            return Err(WireError::Held {
                group: Some(group),
                uid: lease.owner_uid,
                since: lease.since,
            });
        }
        let held: Vec<String> = lease.devices.iter().map(|d| d.device.short()).collect();
        Err(WireError::Busy {
            why: BusyReason::YouHoldIt {
                group,
                devices: lease.devices.iter().map(|d| d.device).collect(),
            },
            detail: format!(
                "you already hold group {group} ({}); release it first (vfio-gate release {})",
                held.join(", "),
                held[0]
            ),
        })
    }

    /// The built-in guards for each of `members`.
    fn check_guards<'m>(
        &self,
        members: impl IntoIterator<Item = &'m MemberState>,
        record: &mut Record,
    ) -> Result<(), WireError> {
        members.into_iter().try_for_each(|m| self.guard(m, record))
    }

    /// What the bind does to every member of `group`, decided by the policy for each member it
    /// moves; recorded as allowed, with the rule that lets the primary device move.
    fn plan(
        &self,
        peer: &Peer,
        group: u32,
        members: &[MemberState],
        named: &[MemberState],
        req: BindRequest<'_>,
        record: &mut Record,
    ) -> Result<Plan, WireError> {
        let subject = peer.subject();
        let asking = PolicyAnswers {
            policy: &self.policy,
            subject: &subject,
            primary: named[0].facts,
            driver: req.driver,
        };
        let plan = plan::plan(
            group,
            members,
            req.devices,
            req.driver,
            &asking,
            self.tuning.viability,
        );
        match plan {
            Ok(plan) => {
                record.allow();
                record.rule = primary_rule(&plan, req.devices[0]);
                record.devices = moved(&plan);
                Ok(plan)
            }
            Err(PlanError::Denied { rule, reason, .. }) => {
                record.deny_by(rule.clone());
                Err(WireError::Denied {
                    why: DenyReason::Policy,
                    rule,
                    detail: reason,
                })
            }
            Err(PlanError::Impossible { device, reason }) => {
                record.deny();
                Err(WireError::Denied {
                    why: DenyReason::GroupPlan { device },
                    rule: None,
                    detail: reason,
                })
            }
        }
    }

    /// The members the plan moves that the client did not name: refused unless the client agreed
    /// to move the whole group, and guarded like the named ones.
    fn check_companions(
        &self,
        group: u32,
        plan: &Plan,
        members: &[MemberState],
        req: BindRequest<'_>,
        record: &mut Record,
    ) -> Result<(), WireError> {
        let moved = moved(plan);
        let companions: Vec<&MemberState> = members
            .iter()
            .filter(|m| !req.devices.contains(&m.facts.address) && moved.contains(&m.facts.address))
            .collect();
        if !req.whole_group && plan::moves_companions(plan, req.devices) {
            record.deny();
            return Err(needs_group(group, plan, &companions));
        }
        self.check_guards(companions, record)
    }

    /// A group with a member already on vfio-pci has a node a process may have open — a VM set up
    /// without vfio-gate (libvirt, `vfio-pci.ids=` and a hand-started QEMU). Adopting such a
    /// group would hand a running VM's devices to the caller: refused. The helper opens only nodes
    /// it owns, so a node someone else owns is taken first (`take`) and given back if in use; a
    /// dry run (`take` false) looks only at a node root owns.
    fn check_not_open_elsewhere(
        &self,
        group: u32,
        members: &[MemberState],
        take: bool,
    ) -> Result<(), WireError> {
        let Some(on_vfio) = members
            .iter()
            .find(|m| m.driver.as_ref().is_some_and(|d| d.is(Driver::VfioPci)))
        else {
            return Ok(());
        };
        let Ok(Some(owner)) = self.kernel.group_node(group) else {
            return Ok(());
        };
        if owner != NodeOwner::ROOT {
            if !take {
                return Ok(());
            }
            self.kernel
                .chown_group_node(group, NodeOwner::ROOT)
                .map_err(internal)?;
        }
        let in_use = self.kernel.group_in_use(group);
        if !matches!(in_use, Ok(false)) && owner != NodeOwner::ROOT {
            let _ = self.kernel.chown_group_node(group, owner);
        }
        match in_use {
            Ok(false) => Ok(()),
            Ok(true) => Err(WireError::Busy {
                why: BusyReason::HeldOutsideVfioGate {
                    device: on_vfio.facts.address,
                },
                detail: format!(
                    "a process that vfio-gate did not start has {} open ({} is on vfio-pci outside \
                     vfio-gate): whoever runs it must stop it first",
                    self.node_path(group),
                    on_vfio.facts.address.short()
                ),
            }),
            Err(e) => Err(internal(e)),
        }
    }

    /// The policy's cap on groups held at once by one user.
    fn check_quota(&self, peer: &Peer, record: &mut Record) -> Result<(), WireError> {
        let Some(max) = self.policy.settings().max_groups_per_user else {
            return Ok(());
        };
        let held = self.leases_of(peer.uid).len();
        if held < max as usize {
            return Ok(());
        }
        record.deny();
        Err(WireError::Denied {
            why: DenyReason::GroupLimit {
                held: u32::try_from(held).unwrap_or(u32::MAX),
                max,
            },
            rule: None,
            detail: format!(
                "you already hold {held} IOMMU group(s), the policy's limit (max_groups_per_user = {max}); release one first"
            ),
        })
    }

    /// Write-ahead: the lease, with every moved member's original state, is on disk before the
    /// first sysfs write.
    fn write_ahead(
        &self,
        peer: &Peer,
        group: u32,
        plan: &Plan,
        hold: bool,
    ) -> Result<Lease, WireError> {
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
        // Moved and adopted members alike: a release must know every device the caller held.
        for s in &plan.steps {
            if let Some(driver) = s.action.target() {
                let original = sequence::original_state(&self.kernel, s.device)
                    .map_err(|e| sysfs_error(s.device, e))?;
                lease.devices.push(LeasedDevice {
                    device: s.device,
                    driver,
                    original,
                    ids: (s.vendor, s.device_id),
                });
            }
        }
        self.state.write(&lease).map_err(internal)?;
        crate::fault::point("bind:lease-written");
        Ok(lease)
    }

    /// Carries the lease out; on any failure puts every member back and says how that went.
    fn execute_or_roll_back(
        &self,
        lease: &Lease,
        peer: &Peer,
        driver: Driver,
    ) -> Result<(), WireError> {
        let Err(reason) = self.execute(lease, peer, driver) else {
            return Ok(());
        };
        let group = lease.group;
        let reason = match self.undo(lease, lease.devices.len()) {
            Ok(()) => {
                let _ = self.state.remove(group);
                format!("{reason}; every member of group {group} was put back as it was")
            }
            Err(why) => format!(
                "{reason}; putting group {group} back did not complete ({why}); the lease is kept so an admin can see it"
            ),
        };
        Err(WireError::Failed { reason })
    }

    /// The bind is done: the lease says so.
    fn commit(&self, mut lease: Lease) -> Result<(), WireError> {
        lease.phase = Phase::Applied;
        lease.updated = now();
        self.state.write(&lease).map_err(internal)?;
        crate::fault::point("bind:lease-applied");
        Ok(())
    }

    /// The answer to a bind (or a dry run) of `plan`.
    fn bound(&self, group: u32, plan: Plan, driver: Driver, dry_run: bool) -> Response {
        Response::Bound(BindReport {
            plan,
            dry_run,
            vfio_node: (driver == Driver::VfioPci).then(|| self.node_path(group)),
        })
    }

    /// Binds every member of the lease, then hands the group node over. Undoes nothing itself:
    /// on error the caller rolls back the whole group.
    pub(super) fn execute(&self, lease: &Lease, peer: &Peer, driver: Driver) -> Result<(), String> {
        for d in lease.devices.iter().filter(|d| !d.adopted()) {
            sequence::bind(&self.kernel, d.device, d.driver, &d.original)
                .map_err(|e| e.to_string())?;
        }
        crate::fault::point("bind:members-bound");
        if driver != Driver::VfioPci {
            return Ok(());
        }
        let members: Vec<Member> = self
            .group_states(lease.group)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|m| Member {
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
    pub(super) fn hand_over(&self, group: u32, owner: NodeOwner) -> Result<(), String> {
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
    pub(super) fn undo(&self, lease: &Lease, n: usize) -> Result<(), String> {
        let mut problems = Vec::new();
        // Adopted members were never touched: nothing to put back.
        for d in lease.devices[..n].iter().rev().filter(|d| !d.adopted()) {
            if let Rollback::Incomplete(why) =
                sequence::roll_back(&self.kernel, d.device, &d.original)
            {
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
}

/// The devices `plan` gives the caller: moved or adopted.
fn moved(plan: &Plan) -> Vec<PciAddress> {
    plan.steps
        .iter()
        .filter(|s| s.action.target().is_some())
        .map(|s| s.device)
        .collect()
}

/// The rule that lets the caller have `primary`.
fn primary_rule(plan: &Plan, primary: PciAddress) -> Option<RuleRef> {
    plan.steps
        .iter()
        .find(|s| s.device == primary)
        .and_then(|s| s.action.rule().cloned())
}

/// The refusal of a plan that moves members the client did not name.
fn needs_group(group: u32, plan: &Plan, companions: &[&MemberState]) -> WireError {
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
    WireError::NeedsGroup {
        group,
        // The frontend says which devices were named; the reason says what stands in the way.
        reason: format!(
            "{} must leave {} host driver for pci-stub",
            moved.join(", "),
            if moved.len() == 1 { "its" } else { "their" }
        ),
        plan: plan.clone(),
    }
}
