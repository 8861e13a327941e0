//! Releasing: one group, the caller's, or a user's (admins); and the leases tied to a
//! connection that closed, retried while a VM still holds the group.

// See the parent module about the `(WireError, Verdict)` error type.
#![allow(clippy::result_large_err)]

use super::*;

impl Service {
    pub(super) fn find_lease(&self, dev: PciAddress) -> Result<Option<Lease>, WireError> {
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
    pub(super) fn release(
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
                            why: DenyReason::NotHeld { device: dev },
                            rule: None,
                            detail: format!(
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
                        WireError::NotAdmin {
                            detail: "only an admin (root, or [settings] admins in the policy) may release another user's devices".to_string(),
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

    pub(super) fn leases_of(&self, uid: u32) -> Vec<Lease> {
        let (leases, _) = self.state.all();
        leases.into_iter().filter(|l| l.owner_uid == uid).collect()
    }

    /// Releases one group: refuses at once if a process holds its node, else restores every
    /// member (last bound first), takes the node back and removes the lease. Called with the
    /// mutation lock held.
    pub(super) fn release_group(&self, mut lease: Lease) -> Result<ReleasedGroup, WireError> {
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
                    why: BusyReason::GroupInUse { group },
                    detail: format!(
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
                match sequence::release(&self.kernel, d.device, &d.original) {
                    Ok(r) => restored.push(RestoredDevice {
                        device: d.device,
                        expected_driver: r.expected.map(|n| n.to_string()),
                        restored_driver: r.restored.map(|n| n.to_string()),
                    }),
                    Err(e) => {
                        // Keep what is still held, so a retry releases exactly that.
                        let _ = self.state.write(&lease);
                        return Err(match e {
                            sequence::ReleaseError::Step { source, dev, .. }
                                if matches!(
                                    source,
                                    SysfsError::Blocked { .. } | SysfsError::StillBlocked { .. }
                                ) =>
                            {
                                WireError::Busy {
                                    why: BusyReason::BlockedInKernel { device: dev },
                                    detail: format!(
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
    pub(super) fn same_device(&self, d: &LeasedDevice) -> bool {
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

    pub(super) fn orphans(&self) -> MutexGuard<'_, BTreeSet<u32>> {
        self.orphans.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Releases the tied lease of `group` (owned by `uid`, if given), with the lock held.
    pub(super) fn release_orphan(&self, group: u32, uid: Option<u32>) {
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
}
