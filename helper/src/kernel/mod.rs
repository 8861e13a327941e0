//! The kernel's PCI driver-binding interface, behind one narrow trait.
//!
//! Everything the helper does to a device is one of three writes — `driver_override`, the current
//! driver's `unbind`, the bus's `drivers_probe` — plus reads of a handful of attributes. [`Kernel`]
//! names exactly those operations. [`Sysfs`] implements them on a sysfs tree whose root is a
//! parameter (`/sys` in production, a fixture directory in tests). In test builds only,
//! `sim::SimKernel` implements the same semantics in memory, with fault injection, so the
//! sequences in [`crate::sequence`] and the service are tested fast, failures included, without
//! touching any real device; it is not part of the release library.
//!
//! This module is the only place in vfio-gate that writes to sysfs, and the only place that
//! changes `/dev/vfio/<group>` nodes (their owner and mode: the user's key to the group).
//! [`Bounded`] wraps any [`Kernel`] so that a write the kernel blocks (unbinding a device a VM
//! still holds) cannot wedge the helper.

mod bounded;
#[cfg(test)]
pub mod sim;
mod sysfs;

use vfio_gate_host::{DriverName, PciView, SysfsError};
use vfio_gate_protocol::PciAddress;

pub use bounded::Bounded;
pub use sysfs::Sysfs;

/// The operations vfio-gate performs on the kernel's PCI driver model: the reads of
/// [`PciView`], the state of group nodes, and the writes — the whole write surface.
pub trait Kernel: PciView {
    /// The owner of `/dev/vfio/<group>`, if the node exists.
    fn group_node(&self, group: u32) -> Result<Option<NodeOwner>, SysfsError>;
    /// Whether a process holds `/dev/vfio/<group>` open (opening it ourselves gives EBUSY).
    fn group_in_use(&self, group: u32) -> Result<bool, SysfsError>;

    /// Sets (`Some`) or clears (`None`) `driver_override`. Does not unbind or probe.
    fn set_override(&self, dev: PciAddress, name: Option<&DriverName>) -> Result<(), SysfsError>;
    /// Unbinds `dev` from its current driver.
    fn unbind(&self, dev: PciAddress) -> Result<(), SysfsError>;
    /// Asks the bus to probe `dev` (`drivers_probe`). Success does not mean a driver bound.
    fn probe(&self, dev: PciAddress) -> Result<(), SysfsError>;
    /// Sets the owner and mode of `/dev/vfio/<group>` (never following a symlink).
    fn chown_group_node(&self, group: u32, owner: NodeOwner) -> Result<(), SysfsError>;
}

/// Owner and permission bits of a `/dev/vfio/<group>` node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeOwner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl NodeOwner {
    /// How udev creates group nodes, and how vfio-gate leaves them when no one holds the group.
    pub const ROOT: NodeOwner = NodeOwner {
        uid: 0,
        gid: 0,
        mode: 0o600,
    };
}
