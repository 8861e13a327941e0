//! Binding: the whole-group plan, the write-ahead lease, all-or-nothing execution, and the
//! hand-over of `/dev/vfio/<group>`.

// See the parent module about the `(WireError, Verdict)` error type.
#![allow(clippy::result_large_err)]

use super::*;

impl Service {
    pub(super) fn bind(
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
                return Err((
                    WireError::Denied {
                        why: DenyReason::Policy,
                        rule,
                        detail: reason,
                    },
                    verdict,
                ));
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
                        why: BusyReason::YouHoldIt {
                            group,
                            devices: lease.devices.iter().map(|d| d.device).collect(),
                        },
                        detail: format!(
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
                return Err((
                    WireError::Denied {
                        why: DenyReason::Policy,
                        rule,
                        detail: reason,
                    },
                    verdict,
                ));
            }
            Err(PlanError::Impossible { device, reason }) => {
                verdict.allowed = Some(false);
                return Err((
                    WireError::Denied {
                        why: DenyReason::GroupPlan { device },
                        rule: None,
                        detail: reason,
                    },
                    verdict,
                ));
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
                        why: DenyReason::GroupLimit {
                            held: u32::try_from(held).unwrap_or(u32::MAX),
                            max,
                        },
                        rule: None,
                        detail: format!(
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
                let original = sequence::original_state(&self.kernel, s.device)
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
    pub(super) fn execute(&self, lease: &Lease, peer: &Peer, driver: Driver) -> Result<(), String> {
        for d in &lease.devices {
            sequence::bind(&self.kernel, d.device, d.driver, &d.original)
                .map_err(|e| e.to_string())?;
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
            .map(|m| vfio_gate_host::groups::Member {
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
        for d in lease.devices[..n].iter().rev() {
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
