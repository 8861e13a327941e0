//! What the policy may know about a device: [`DeviceFacts`], read from sysfs by the caller, and
//! the [`SlotName`] among them. The matchers read these; nothing here knows about rules.

use std::fmt;

use serde::{Serialize, Serializer};
use vfio_gate_protocol::PciAddress;

/// What the policy may look at about a device, read from sysfs by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeviceFacts {
    pub address: PciAddress,
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: u16,
    pub subsystem_device: u16,
    /// The 24-bit class code (`class` in sysfs): base class, subclass, programming interface.
    pub class: u32,
    /// The physical slot the device sits in: the name of the `/sys/bus/pci/slots/NAME`
    /// directory whose `address` file names this device's bus and device number, when the
    /// platform describes its slots (ACPI, PCIe hotplug). `None` when it does not.
    pub physical_slot: Option<SlotName>,
}

/// The name of a physical PCI slot, as the kernel names the directory `/sys/bus/pci/slots/NAME`:
/// 1 to [`SlotName::MAX_LEN`] characters of `[A-Za-z0-9._-]`, neither `.` nor `..`.
///
/// A fixed-capacity value so that [`DeviceFacts`] stays `Copy`, and always safe to use as a
/// single path component.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotName {
    bytes: [u8; SlotName::MAX_LEN],
    len: u8,
}

impl SlotName {
    /// The longest slot name accepted. Real ones are short ("3", "Slot-2", "0-1").
    pub const MAX_LEN: usize = 32;

    /// `Some` when `name` is a valid slot name.
    pub fn new(name: &str) -> Option<Self> {
        let ok = (1..=Self::MAX_LEN).contains(&name.len())
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return None;
        }
        let mut bytes = [0; Self::MAX_LEN];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Some(SlotName {
            bytes,
            len: name.len() as u8,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (checked in `new`), so this never takes the fallback.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SlotName({:?})", self.as_str())
    }
}

impl std::str::FromStr for SlotName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        SlotName::new(s).ok_or_else(|| {
            format!(
                "physical_slot {s:?} is not a slot name: give the name of a directory under \
                 /sys/bus/pci/slots/ (1 to {} characters of letters, digits, '.', '_' and '-'), \
                 for example \"3\" or \"Slot-2\"",
                SlotName::MAX_LEN
            )
        })
    }
}

impl Serialize for SlotName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}
