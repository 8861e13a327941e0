//! The kernel's PCI driver-binding interface, behind one narrow trait.
//!
//! Everything the helper does to a device is one of three writes — `driver_override`, the current
//! driver's `unbind`, the bus's `drivers_probe` — plus reads of a handful of attributes. [`Kernel`]
//! names exactly those operations. [`Sysfs`] implements them on a sysfs tree whose root is a
//! parameter (`/sys` in production, a fixture directory in tests); [`SimKernel`] implements the
//! same semantics in memory, with fault injection, so the sequences in [`crate::ops`] are tested
//! fast, failures included, without touching any real device.
//!
//! This module is the only place in vfio-gate that writes to sysfs, and the only place that
//! changes `/dev/vfio/<group>` nodes (their owner and mode: the user's key to the group).
//! [`Bounded`] wraps any [`Kernel`] so that a write the kernel blocks (unbinding a device a VM
//! still holds) cannot wedge the helper.

mod bounded;
mod real;
mod sim;

use std::fmt;
use std::io;
use std::path::PathBuf;

use vfio_gate_protocol::{Driver, PciAddress};

pub use bounded::Bounded;
pub use real::Sysfs;
pub use sim::{SimDevice, SimKernel, SimOp};

/// The identity of a device as sysfs reports it, used by the policy matchers.
pub use vfio_gate_policy::DeviceFacts;

/// A kernel driver name as read from sysfs (`e1000e`, `snd_hda_intel`, `vfio-pci`).
///
/// Validated so it can be written back to `driver_override` safely: 1–64 characters from
/// `[A-Za-z0-9_.:+-]`, never a path separator, whitespace or a newline.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DriverName(String);

impl DriverName {
    pub fn new(name: &str) -> Option<Self> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:+-".contains(&b));
        ok.then(|| Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the kernel's name for `driver`.
    pub fn is(&self, driver: Driver) -> bool {
        self.0 == driver.as_str()
    }
}

impl From<Driver> for DriverName {
    fn from(d: Driver) -> Self {
        Self(d.as_str().to_owned())
    }
}

impl fmt::Display for DriverName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DriverName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A sysfs attribute or operation failed. Keeps the path and the errno.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("no PCI device {0}")]
    NoDevice(PciAddress),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds {value:?}, which is not what the kernel writes there")]
    Unexpected { path: PathBuf, value: String },
    #[error(
        "{op} for {dev} is still blocked in the kernel after {secs} s: a process (a VM) still holds the device; stop it and the write will complete"
    )]
    Blocked {
        dev: PciAddress,
        op: &'static str,
        secs: u64,
    },
    #[error(
        "an earlier {op} for {dev} is still blocked in the kernel; stop the VM holding the device, then retry"
    )]
    StillBlocked { dev: PciAddress, op: &'static str },
}

impl SysfsError {
    /// The errno of a failed read or write, for audit lines and tests.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            SysfsError::Read { source, .. } | SysfsError::Write { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

/// The operations vfio-gate performs on the kernel's PCI driver model.
///
/// Reads come first; the three writes at the end are the whole write surface.
pub trait Kernel: Send + Sync {
    /// Every PCI device, sorted by address.
    fn devices(&self) -> Result<Vec<PciAddress>, SysfsError>;
    /// Whether `dev` exists now.
    fn exists(&self, dev: PciAddress) -> bool;
    /// Vendor, device, subsystem ids and class of `dev`.
    fn facts(&self, dev: PciAddress) -> Result<DeviceFacts, SysfsError>;
    /// The driver bound to `dev` (the `driver` link), if any.
    fn driver(&self, dev: PciAddress) -> Result<Option<DriverName>, SysfsError>;
    /// The `driver_override` in force, if any (`(null)` reads as `None`).
    fn driver_override(&self, dev: PciAddress) -> Result<Option<DriverName>, SysfsError>;
    /// The IOMMU group of `dev`, `None` when there is none (IOMMU off).
    fn iommu_group(&self, dev: PciAddress) -> Result<Option<u32>, SysfsError>;
    /// The members of IOMMU group `group`, sorted.
    fn group_members(&self, group: u32) -> Result<Vec<PciAddress>, SysfsError>;
    /// The configuration header type (byte 0x0e of config space), if readable.
    fn header_type(&self, dev: PciAddress) -> Result<Option<u8>, SysfsError>;
    /// Whether `dev` is the boot VGA device (`boot_vga` reads 1).
    fn boot_vga(&self, dev: PciAddress) -> Result<bool, SysfsError>;
    /// Enabled SR-IOV virtual functions (`sriov_numvfs`; 0 when the device has no SR-IOV).
    fn sriov_numvfs(&self, dev: PciAddress) -> Result<u32, SysfsError>;
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
