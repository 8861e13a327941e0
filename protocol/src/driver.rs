//! The two drivers vfio-gate hands devices to.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A target driver. There are exactly two: `vfio-pci` gives a user process the device through
/// `/dev/vfio/<group>`; `pci-stub` only occupies the driver slot so no host driver touches the
/// device (used to make an IOMMU group viable without giving anyone access to that member).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Driver {
    #[serde(rename = "vfio-pci")]
    VfioPci,
    #[serde(rename = "pci-stub")]
    PciStub,
}

impl Driver {
    pub const ALL: [Driver; 2] = [Driver::VfioPci, Driver::PciStub];

    /// The name the kernel uses, in `driver_override` and under `/sys/bus/pci/drivers/`.
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::VfioPci => "vfio-pci",
            Driver::PciStub => "pci-stub",
        }
    }

    /// The kernel module providing the driver (what `modprobe` and `/sys/module` call it).
    pub fn module(self) -> &'static str {
        match self {
            Driver::VfioPci => "vfio_pci",
            Driver::PciStub => "pci_stub",
        }
    }
}

/// A driver name other than the two targets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a driver vfio-gate binds to: use vfio-pci or pci-stub")]
pub struct UnknownDriver(pub String);

impl FromStr for Driver {
    type Err = UnknownDriver;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vfio-pci" => Ok(Driver::VfioPci),
            "pci-stub" => Ok(Driver::PciStub),
            other => Err(UnknownDriver(other.chars().take(64).collect())),
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_two_names() {
        for d in Driver::ALL {
            assert_eq!(d.as_str().parse::<Driver>().unwrap(), d);
        }
        for bad in [
            "vfio_pci",
            "VFIO-PCI",
            "e1000e",
            "",
            "vfio-pci\n",
            "../vfio-pci",
        ] {
            assert!(bad.parse::<Driver>().is_err(), "{bad:?}");
        }
    }
}
