//! Bringing leases and group nodes back in line with sysfs: at start, and after changes.

use vfio_gate_host::PciView;
use vfio_gate_protocol::Driver;

use super::Service;
use crate::audit;
use crate::kernel::{Kernel, NodeOwner};
use crate::state::{Lease, Phase};

impl Service {
    /// Gives `/dev/vfio/<group>` back to root, if it still exists.
    pub(super) fn reset_node(&self, group: u32) {
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
    pub(super) fn reconcile_nodes(&self) {
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

    /// Brings every lease on disk to a consistent end before the first client is served: a
    /// half-done bind is rolled back, a half-done release finished, a tied lease (its connection
    /// died with the previous process) released, an applied lease checked against sysfs.
    /// Devices that vanished are dropped from their lease; a different device that appeared at
    /// the same address is never touched. Called with the mutation lock held.
    pub(super) fn reconcile_leases(&self) {
        let (leases, problems) = self.state.all();
        for p in problems {
            audit::Line::new("lease-unreadable")
                .field("error", p)
                .emit();
        }
        for lease in leases {
            if let Some(lease) = self.drop_vanished_members(lease) {
                self.settle(lease);
            }
        }
    }

    /// Drops from `lease` every member that is gone or is now a different device (each
    /// reported), and keeps the record in step. `None` when no member is left: the lease is
    /// removed.
    fn drop_vanished_members(&self, mut lease: Lease) -> Option<Lease> {
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
            return None;
        }
        if lease.devices.len() != before {
            let _ = self.state.write(&lease);
        }
        Some(lease)
    }

    /// Ends one lease as its phase says, and reports what was done: a tied lease is released, an
    /// applied one whose members are all on their target driver kept, an unfinished or undone
    /// bind rolled back, an unfinished release finished.
    fn settle(&self, lease: Lease) {
        let group = lease.group;
        let all_on_target = lease.devices.iter().all(|d| {
            self.kernel
                .driver(d.device)
                .ok()
                .flatten()
                .is_some_and(|n| n.is(d.driver))
        });
        let (action, result) = match lease.phase {
            Phase::Applied if lease.tied => {
                self.release_orphan(group, None);
                return;
            }
            Phase::Applied if all_on_target => ("kept", Ok(())),
            Phase::Intent => (
                "rolled back a bind the previous helper did not finish",
                self.roll_back_lease(&lease),
            ),
            Phase::Applied => (
                "rolled back: members were no longer on their drivers",
                self.roll_back_lease(&lease),
            ),
            Phase::Releasing => (
                "finished a release the previous helper did not finish",
                self.release_group(lease)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            ),
        };
        let mut line = audit::Line::new("reconcile");
        line.field("group", group).field("action", action);
        match result {
            Ok(()) => line.field("result", "ok"),
            Err(e) => line
                .field("result", "failed")
                .field("error", e)
                .priority(audit::Priority::Error),
        };
        line.emit();
    }

    /// Puts every member of `lease` back and, if that worked, removes the lease.
    fn roll_back_lease(&self, lease: &Lease) -> Result<(), String> {
        let result = self.undo(lease, lease.devices.len());
        if result.is_ok() {
            let _ = self.state.remove(lease.group);
        }
        result
    }
}
