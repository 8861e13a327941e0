//! The read-only view of a host's PCI devices: the trait, its names and its errors.

use std::fmt;
use std::io;
use std::path::PathBuf;

use vfio_gate_policy::DeviceFacts;
use vfio_gate_protocol::{Driver, PciAddress};

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

/// What vfio-gate reads about PCI devices. The helper's write interface extends it; tests
/// implement it in memory; [`crate::SysfsView`] reads it from a sysfs tree.
pub trait PciView: Send + Sync {
    /// Every PCI device, sorted by address.
    fn devices(&self) -> Result<Vec<PciAddress>, SysfsError>;
    /// Whether `dev` exists now.
    fn exists(&self, dev: PciAddress) -> bool;
    /// Vendor, device, subsystem ids, class and physical slot of `dev`.
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
}
