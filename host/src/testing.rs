//! A read-only view of the test guest's layout in memory, for this crate's unit tests.

use std::collections::BTreeMap;

use vfio_gate_policy::DeviceFacts;
use vfio_gate_protocol::PciAddress;

use crate::view::{DriverName, PciView, SysfsError};

/// One device of [`FakeView`].
#[derive(Debug, Clone)]
pub struct FakeDevice {
    pub facts: DeviceFacts,
    pub group: Option<u32>,
    pub driver: Option<DriverName>,
    pub driver_override: Option<DriverName>,
    /// Header type 1 (a PCI bridge) instead of 0.
    pub bridge: bool,
}

/// PCI devices in memory.
#[derive(Debug, Clone, Default)]
pub struct FakeView {
    pub devices: BTreeMap<PciAddress, FakeDevice>,
}

impl FakeView {
    /// The QEMU test guest's devices, groups and drivers (docs/guest.md).
    pub fn guest_layout() -> Self {
        let mut v = FakeView::default();
        for (addr, vendor, device, class, group, driver, bridge) in [
            ("00:00.0", 0x8086, 0x29c0, 0x060000, 0, None, false),
            (
                "00:02.0",
                0x1b36,
                0x000c,
                0x060400,
                1,
                Some("pcieport"),
                true,
            ),
            ("00:06.0", 0x1234, 0x11e8, 0x00ff00, 5, None, false),
            ("00:06.1", 0x1b36, 0x0005, 0x00ff00, 5, None, false),
            (
                "00:1b.0",
                0x8086,
                0x293e,
                0x040300,
                6,
                Some("snd_hda_intel"),
                false,
            ),
            (
                "01:00.0",
                0x8086,
                0x10d3,
                0x020000,
                8,
                Some("e1000e"),
                false,
            ),
            ("03:00.0", 0x1b36, 0x0010, 0x010802, 10, Some("nvme"), false),
            ("04:00.0", 0x1b36, 0x000e, 0x060400, 11, None, true),
            (
                "05:01.0",
                0x8086,
                0x100e,
                0x020000,
                11,
                Some("e1000"),
                false,
            ),
            ("05:02.0", 0x1234, 0x11e8, 0x00ff00, 11, None, false),
        ] {
            let address: PciAddress = addr.parse().expect("a valid address");
            v.devices.insert(
                address,
                FakeDevice {
                    facts: DeviceFacts {
                        address,
                        vendor,
                        device,
                        subsystem_vendor: vendor,
                        subsystem_device: 0,
                        class,
                        physical_slot: None,
                    },
                    group: Some(group),
                    driver: driver.and_then(DriverName::new),
                    driver_override: None,
                    bridge,
                },
            );
        }
        v
    }

    fn get(&self, dev: PciAddress) -> Result<&FakeDevice, SysfsError> {
        self.devices.get(&dev).ok_or(SysfsError::NoDevice(dev))
    }
}

impl PciView for FakeView {
    fn devices(&self) -> Result<Vec<PciAddress>, SysfsError> {
        Ok(self.devices.keys().copied().collect())
    }
    fn exists(&self, dev: PciAddress) -> bool {
        self.devices.contains_key(&dev)
    }
    fn facts(&self, dev: PciAddress) -> Result<DeviceFacts, SysfsError> {
        Ok(self.get(dev)?.facts)
    }
    fn driver(&self, dev: PciAddress) -> Result<Option<DriverName>, SysfsError> {
        Ok(self.get(dev)?.driver.clone())
    }
    fn driver_override(&self, dev: PciAddress) -> Result<Option<DriverName>, SysfsError> {
        Ok(self.get(dev)?.driver_override.clone())
    }
    fn iommu_group(&self, dev: PciAddress) -> Result<Option<u32>, SysfsError> {
        Ok(self.get(dev)?.group)
    }
    fn group_members(&self, group: u32) -> Result<Vec<PciAddress>, SysfsError> {
        Ok(self
            .devices
            .values()
            .filter(|d| d.group == Some(group))
            .map(|d| d.facts.address)
            .collect())
    }
    fn header_type(&self, dev: PciAddress) -> Result<Option<u8>, SysfsError> {
        Ok(Some(u8::from(self.get(dev)?.bridge)))
    }
    fn boot_vga(&self, dev: PciAddress) -> Result<bool, SysfsError> {
        self.get(dev).map(|_| false)
    }
    fn sriov_numvfs(&self, dev: PciAddress) -> Result<u32, SysfsError> {
        self.get(dev).map(|_| 0)
    }
}
