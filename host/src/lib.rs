//! What vfio-gate knows about this host's PCI devices, read-only.
//!
//! Both the privileged helper (which acts on it) and the unprivileged CLI (which explains
//! decisions offline, for an auditor without the helper) read the host through this crate, so
//! they reach the same answers:
//!
//! - [`PciView`] is what is read about a device — ids, class, driver, `driver_override`, IOMMU
//!   group and its members, header type, `boot_vga`, SR-IOV — and [`SysfsView`] reads it from a
//!   sysfs tree whose root is a parameter (`/sys` in production, a fixture in tests).
//! - [`groups`] classifies group members and says whether a group is *viable*: since Linux 5.19,
//!   when no bound driver claims kernel DMA ownership (vfio-pci, pci-stub, pcieport and no driver
//!   do not; host drivers do); before, when every member was driver-less, on a vfio driver, on
//!   pci-stub, or a bridge.
//! - [`usage`] finds what the host itself uses below a device (mounted filesystems, swap, network
//!   interfaces with addresses or routes).
//! - [`guards`] turns those facts into refusals no policy can override.
//! - [`plan`] decides, purely, what binding some devices of a group does to every member.
//!
//! Nothing here writes anything — the helper's `kernel` module is the only writer in vfio-gate —
//! and nothing here is `unsafe`.

#![forbid(unsafe_code)]

pub mod explain;
pub mod groups;
pub mod guards;
pub mod modalias;
pub mod plan;
pub mod reserve;
mod sysfs;
#[cfg(test)]
mod testing;
pub mod usage;
mod view;

pub use sysfs::SysfsView;
pub use view::{DriverName, PciView, SysfsError};
