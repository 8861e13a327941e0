//! Releasing: one group, the caller's, or a user's (admins); and the leases tied to a
//! connection that closed, retried while a VM still holds the group.

use std::collections::BTreeSet;
use std::sync::MutexGuard;

use vfio_gate_host::reserve::{self, Held};
use vfio_gate_host::{DriverName, PciView, SysfsError};
use vfio_gate_protocol::{
    BusyReason, DenyReason, Driver, PciAddress, ReleaseReport, ReleaseTarget, ReleasedGroup,
    Response, RestoredDevice, WireError,
};

use super::{Service, internal, now};
use crate::audit::{self, Record};
use crate::kernel::{Kernel, NodeOwner};
use crate::peer::Peer;
use crate::sequence::{self, Original, ReleaseError};
use crate::state::{Lease, LeasedDevice, Phase};

impl Service {
    /// Gives back the groups `target` names, for `peer`: who may release what, then each group
    /// in turn, under the lock.
    pub(super) fn release(
        &self,
        peer: &Peer,
        target: ReleaseTarget,
        record: &mut Record,
    ) -> Result<Response, WireError> {
        let admin = self.policy.is_admin(&peer.subject());
        let _lock = self.lock();
        let leases = self.leases_to_release(peer, target, admin, record)?;
        record.allow();
        record.devices = leases
            .iter()
            .flat_map(|l| l.devices.iter().map(|d| d.device))
            .collect();
        let groups = leases
            .into_iter()
            .map(|lease| self.release_group(lease))
            .collect::<Result<_, _>>()?;
        Ok(Response::Released(ReleaseReport { groups }))
    }

    /// The leases `target` names that `peer` (an admin if `admin`) may release.
    fn leases_to_release(
        &self,
        peer: &Peer,
        target: ReleaseTarget,
        admin: bool,
        record: &mut Record,
    ) -> Result<Vec<Lease>, WireError> {
        match target {
            ReleaseTarget::Device(dev) => {
                record.devices = vec![dev];
                self.lease_of_device(peer, dev, admin, record)
                    .map(|lease| vec![lease])
            }
            ReleaseTarget::Mine => Ok(self.leases_of(peer.uid)),
            ReleaseTarget::User(uid) if uid == peer.uid || admin => Ok(self.leases_of(uid)),
            ReleaseTarget::User(_) => {
                record.deny();
                Err(WireError::NotAdmin {
                    detail: "only an admin (root, or [settings] admins in the policy) may release another user's devices".to_string(),
                })
            }
        }
    }

    /// The lease that holds `dev`, if its holder is `peer` or `peer` is an admin.
    fn lease_of_device(
        &self,
        peer: &Peer,
        dev: PciAddress,
        admin: bool,
        record: &mut Record,
    ) -> Result<Lease, WireError> {
        let Some(lease) = self.find_lease(dev)? else {
            if !self.kernel.exists(dev) {
                return Err(WireError::NotFound { device: dev });
            }
            record.deny();
            return Err(WireError::Denied {
                why: DenyReason::NotHeld { device: dev },
                rule: None,
                detail: format!(
                    "{} is not held through vfio-gate; there is nothing to release",
                    dev.short()
                ),
            });
        };
        if lease.owner_uid != peer.uid && !admin {
            record.deny();
            return Err(WireError::Held {
                group: Some(lease.group),
                uid: lease.owner_uid,
                since: lease.since,
            });
        }
        Ok(lease)
    }

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

    pub(super) fn leases_of(&self, uid: u32) -> Vec<Lease> {
        let (leases, _) = self.state.all();
        leases.into_iter().filter(|l| l.owner_uid == uid).collect()
    }

    /// Releases one group: refuses at once if a process holds its node, else restores every
    /// member (last bound first), takes the node back and removes the lease. Called with the
    /// mutation lock held.
    pub(super) fn release_group(&self, mut lease: Lease) -> Result<ReleasedGroup, WireError> {
        let group = lease.group;
        self.take_node_back(&lease)?;
        lease.phase = Phase::Releasing;
        lease.updated = now();
        self.state.write(&lease).map_err(internal)?;
        crate::fault::point("release:lease-releasing");
        let devices = self.restore_members(&mut lease)?;
        self.reset_node(group);
        crate::fault::point("release:node-reset");
        self.state.remove(group).map_err(internal)?;
        Ok(ReleasedGroup {
            group: Some(group),
            owner_uid: lease.owner_uid,
            devices,
        })
    }

    /// For a group on vfio-pci, takes `/dev/vfio/<group>` back from its holder before looking
    /// whether a process has it open: the helper opens only nodes it owns (it keeps no
    /// CAP_DAC_OVERRIDE), and a user who is releasing should lose it anyway. A group in use is
    /// given back to its holder and refused.
    fn take_node_back(&self, lease: &Lease) -> Result<(), WireError> {
        let group = lease.group;
        if !lease.devices.iter().any(|d| d.driver == Driver::VfioPci) {
            return Ok(());
        }
        self.reset_node(group);
        if !self.kernel.group_in_use(group).unwrap_or(true) {
            return Ok(());
        }
        let holder = NodeOwner {
            uid: lease.owner_uid,
            gid: lease.owner_gid,
            mode: self.policy.settings().node_mode,
        };
        let _ = self.kernel.chown_group_node(group, holder);
        Err(WireError::Busy {
            why: BusyReason::GroupInUse { group },
            detail: format!(
                "group {group} is in use — stop the VM first (a process holds {})",
                self.node_path(group)
            ),
        })
    }

    /// Restores the members of `lease`, last bound first, recording the progress in the lease so
    /// that a helper that dies midway finishes only what is left. Members gone or replaced are
    /// left alone. Returns what was restored, in bind order.
    fn restore_members(&self, lease: &mut Lease) -> Result<Vec<RestoredDevice>, WireError> {
        let mut restored = Vec::new();
        while let Some(d) = lease.devices.last().cloned() {
            if self.same_device(&d) {
                match sequence::release(&self.kernel, d.device, &self.return_to(&d)) {
                    Ok(r) => restored.push(RestoredDevice {
                        device: d.device,
                        expected_driver: r.expected.map(|n| n.to_string()),
                        restored_driver: r.restored.map(|n| n.to_string()),
                    }),
                    Err(e) => {
                        // Keep what is still held, so a retry releases exactly that.
                        let _ = self.state.write(lease);
                        return Err(release_error(lease.group, e));
                    }
                }
            } else {
                audit::Line::new("lease-member-gone")
                    .field("group", lease.group)
                    .field("device", d.device)
                    .emit();
            }
            lease.devices.pop();
            if !lease.devices.is_empty() {
                let _ = self.state.write(lease);
            }
        }
        restored.reverse();
        Ok(restored)
    }

    /// Where a released member goes: back to its reservation's driver if the policy holds it
    /// from boot (vfio-gate never hands a reserved device to a host driver), else to the driver
    /// and override it had before the bind.
    pub(super) fn return_to(&self, d: &LeasedDevice) -> Original {
        match reserve::held(&self.kernel, &self.policy, d.device) {
            Ok(Held::Yes(r)) => {
                let name = DriverName::from(r.driver);
                Original {
                    driver: Some(name.clone()),
                    driver_override: Some(name),
                }
            }
            _ => d.original.clone(),
        }
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
                line.field("result", "pending")
                    .field("error", e)
                    .priority(audit::Priority::Notice);
            }
        }
        line.emit();
    }
}

/// The answer to a release that stopped at a member: busy while the kernel blocks the write (a
/// VM still holds the device), failed otherwise; the lease is kept either way.
fn release_error(group: u32, e: ReleaseError) -> WireError {
    match e {
        ReleaseError::Step { source, dev, .. }
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
    }
}
