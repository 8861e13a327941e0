//! A simulated kernel: the semantics of [`Kernel`] in memory, for fast tests of the sequences and
//! the service. Compiled for tests only (`#[cfg(test)]`): never in the release library.
//!
//! It models what the real kernel does and what bites careful implementations (see
//! `shared/anchors.md`): `driver_override` neither unbinds nor loads a module; a probe binds the
//! override's driver if it is loaded, else nothing; `drivers_probe` reports success even when
//! nothing bound (vfio-pci refusing a bridge, a driver not loaded); unbinding a device with no
//! driver fails because its `driver/unbind` file does not exist; `/dev/vfio/<group>` exists while
//! a member is on vfio-pci and is re-created root:root 0600 whenever it reappears; unbinding a
//! vfio-pci device whose group a process holds blocks until the process lets go. Faults can be
//! injected per operation and device, and every call is logged so tests can assert the order of
//! writes.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};

use vfio_gate_host::{DriverName, PciView, SysfsError};
use vfio_gate_policy::DeviceFacts;
use vfio_gate_protocol::PciAddress;

use super::{Kernel, NodeOwner};

/// One simulated PCI function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimDevice {
    pub facts: DeviceFacts,
    pub iommu_group: Option<u32>,
    /// The host driver whose id table matches this device (what a probe binds with no override).
    pub native: Option<DriverName>,
    pub driver: Option<DriverName>,
    pub driver_override: Option<DriverName>,
    /// Bridges have a non-normal header: vfio-pci's probe refuses them.
    pub bridge: bool,
    pub boot_vga: bool,
    pub sriov_numvfs: u32,
    /// What the host uses the device for (mounted filesystems, interfaces with addresses).
    pub host_uses: Vec<String>,
}

impl SimDevice {
    /// An endpoint bound to its native driver, which is loaded.
    pub fn endpoint(
        addr: &str,
        vendor: u16,
        device: u16,
        class: u32,
        native: Option<&str>,
    ) -> Self {
        let native = native.map(|n| DriverName::new(n).expect("valid driver name"));
        SimDevice {
            facts: DeviceFacts {
                address: addr.parse().expect("valid address"),
                vendor,
                device,
                subsystem_vendor: vendor,
                subsystem_device: 0,
                class,
                physical_slot: None,
            },
            iommu_group: None,
            driver: native.clone(),
            native,
            driver_override: None,
            bridge: false,
            boot_vga: false,
            sriov_numvfs: 0,
            host_uses: Vec::new(),
        }
    }

    pub fn in_group(mut self, group: u32) -> Self {
        self.iommu_group = Some(group);
        self
    }

    pub fn bridge(mut self) -> Self {
        self.bridge = true;
        self
    }

    pub fn used_by_host(mut self, what: &str) -> Self {
        self.host_uses.push(what.to_owned());
        self
    }
}

/// The operations faults can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimOp {
    SetOverride,
    Unbind,
    Probe,
}

#[derive(Debug)]
struct Fault {
    op: SimOp,
    dev: PciAddress,
    errno: i32,
}

#[derive(Debug, Default)]
struct Inner {
    devices: BTreeMap<PciAddress, SimDevice>,
    loaded: BTreeSet<String>,
    faults: Vec<Fault>,
    log: Vec<String>,
    /// `/dev/vfio/<group>` nodes that exist, with their owner.
    nodes: BTreeMap<u32, NodeOwner>,
    /// Groups a (simulated) process holds open.
    held: BTreeSet<u32>,
}

impl Inner {
    /// Creates or removes group nodes to match the drivers, as the kernel and udev do.
    fn sync_nodes(&mut self) {
        let vfio_groups: BTreeSet<u32> = self
            .devices
            .values()
            .filter(|d| d.driver.as_ref().is_some_and(|n| n.as_str() == "vfio-pci"))
            .filter_map(|d| d.iommu_group)
            .collect();
        self.nodes.retain(|g, _| vfio_groups.contains(g));
        for g in vfio_groups {
            self.nodes.entry(g).or_insert(NodeOwner::ROOT);
        }
    }
}

/// An in-memory PCI bus with driver binding semantics.
#[derive(Debug)]
pub struct SimKernel {
    inner: Mutex<Inner>,
    released: Condvar,
}

impl Default for SimKernel {
    fn default() -> Self {
        Self::new()
    }
}

impl SimKernel {
    /// An empty bus with vfio-pci and pci-stub loaded.
    pub fn new() -> Self {
        let inner = Inner {
            loaded: ["vfio-pci", "pci-stub"].map(str::to_owned).into(),
            ..Inner::default()
        };
        Self {
            inner: Mutex::new(inner),
            released: Condvar::new(),
        }
    }

    /// The test guest's layout (docs/guest.md), with its host drivers loaded.
    pub fn guest_layout() -> Self {
        let k = Self::new();
        for d in [
            SimDevice::endpoint("00:00.0", 0x8086, 0x29c0, 0x060000, None)
                .in_group(0)
                .bridge(),
            SimDevice::endpoint("00:02.0", 0x1b36, 0x000c, 0x060400, Some("pcieport"))
                .in_group(1)
                .bridge(),
            SimDevice::endpoint("00:03.0", 0x1b36, 0x000c, 0x060400, Some("pcieport"))
                .in_group(2)
                .bridge(),
            SimDevice::endpoint("00:04.0", 0x1b36, 0x000c, 0x060400, Some("pcieport"))
                .in_group(3)
                .bridge(),
            SimDevice::endpoint("00:05.0", 0x1b36, 0x000c, 0x060400, Some("pcieport"))
                .in_group(4)
                .bridge(),
            SimDevice::endpoint("00:06.0", 0x1234, 0x11e8, 0x00ff00, None).in_group(5),
            SimDevice::endpoint("00:06.1", 0x1b36, 0x0005, 0x00ff00, None).in_group(5),
            SimDevice::endpoint("00:1b.0", 0x8086, 0x293e, 0x040300, Some("snd_hda_intel"))
                .in_group(6),
            SimDevice::endpoint("01:00.0", 0x8086, 0x10d3, 0x020000, Some("e1000e")).in_group(8),
            SimDevice::endpoint("02:00.0", 0x1af4, 0x1041, 0x020000, Some("virtio-pci"))
                .in_group(9)
                .used_by_host("interface eth1 is up with address 10.0.2.15/24"),
            SimDevice::endpoint("03:00.0", 0x1b36, 0x0010, 0x010802, Some("nvme"))
                .in_group(10)
                .used_by_host("nvme0n1 is mounted on /mnt/data"),
            SimDevice::endpoint("00:1f.0", 0x8086, 0x2918, 0x060100, None).in_group(7),
            SimDevice::endpoint("00:1f.2", 0x8086, 0x2922, 0x010601, None).in_group(7),
            SimDevice::endpoint("00:1f.3", 0x8086, 0x2930, 0x0c0500, None).in_group(7),
            SimDevice::endpoint("04:00.0", 0x1b36, 0x000e, 0x060400, None)
                .in_group(11)
                .bridge(),
            SimDevice::endpoint("05:01.0", 0x8086, 0x100e, 0x020000, Some("e1000")).in_group(11),
            SimDevice::endpoint("05:02.0", 0x1234, 0x11e8, 0x00ff00, None).in_group(11),
        ] {
            k.add_device(d);
        }
        for m in [
            "snd_hda_intel",
            "e1000e",
            "virtio-pci",
            "nvme",
            "e1000",
            "pcieport",
        ] {
            k.load_driver(m);
        }
        k
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the state from the assertions that follow.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_device(&self, d: SimDevice) {
        self.lock().devices.insert(d.facts.address, d);
    }

    pub fn remove_device(&self, dev: PciAddress) {
        self.lock().devices.remove(&dev);
    }

    pub fn load_driver(&self, name: &str) {
        self.lock().loaded.insert(name.to_owned());
    }

    pub fn unload_driver(&self, name: &str) {
        let mut inner = self.lock();
        inner.loaded.remove(name);
        for d in inner.devices.values_mut() {
            if d.driver.as_ref().is_some_and(|n| n.as_str() == name) {
                d.driver = None;
            }
        }
    }

    /// The next `op` on `dev` fails with `errno` (one shot; several may be queued).
    pub fn fail_next(&self, op: SimOp, dev: PciAddress, errno: i32) {
        self.lock().faults.push(Fault { op, dev, errno });
    }

    /// `DRIVER.ids=` at boot: `dev` is bound to `driver` by its ids, with no override.
    pub fn claim_for(&self, dev: &str, driver: &str) {
        let mut inner = self.lock();
        let dev: PciAddress = dev.parse().expect("a valid address");
        if let Some(d) = inner.devices.get_mut(&dev) {
            d.driver = DriverName::new(driver);
        }
        inner.sync_nodes();
    }

    /// A process opens `/dev/vfio/<group>` (as a VM would) and keeps it open.
    pub fn hold_group(&self, group: u32) {
        self.lock().held.insert(group);
    }

    /// The process holding `group` exits; writes blocked on it complete.
    pub fn let_go_group(&self, group: u32) {
        self.lock().held.remove(&group);
        self.released.notify_all();
    }

    /// The owner of `/dev/vfio/<group>`, if it exists.
    pub fn node(&self, group: u32) -> Option<NodeOwner> {
        self.lock().nodes.get(&group).copied()
    }

    /// A snapshot of one device.
    pub fn device(&self, dev: PciAddress) -> Option<SimDevice> {
        self.lock().devices.get(&dev).cloned()
    }

    /// Every write so far, in order, as `op address [value]`.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    fn take_fault(inner: &mut Inner, op: SimOp, dev: PciAddress) -> Option<i32> {
        let i = inner
            .faults
            .iter()
            .position(|f| f.op == op && f.dev == dev)?;
        Some(inner.faults.remove(i).errno)
    }

    fn path(dev: PciAddress, attr: &str) -> PathBuf {
        PathBuf::from(format!("/sim/bus/pci/devices/{dev}/{attr}"))
    }

    fn write_err(dev: PciAddress, attr: &str, errno: i32) -> SysfsError {
        SysfsError::Write {
            path: Self::path(dev, attr),
            source: io::Error::from_raw_os_error(errno),
        }
    }

    fn read<T>(&self, dev: PciAddress, f: impl FnOnce(&SimDevice) -> T) -> Result<T, SysfsError> {
        self.lock()
            .devices
            .get(&dev)
            .map(f)
            .ok_or(SysfsError::NoDevice(dev))
    }
}

impl PciView for SimKernel {
    fn devices(&self) -> Result<Vec<PciAddress>, SysfsError> {
        Ok(self.lock().devices.keys().copied().collect())
    }

    fn exists(&self, dev: PciAddress) -> bool {
        self.lock().devices.contains_key(&dev)
    }

    fn facts(&self, dev: PciAddress) -> Result<DeviceFacts, SysfsError> {
        self.read(dev, |d| d.facts)
    }

    fn driver(&self, dev: PciAddress) -> Result<Option<DriverName>, SysfsError> {
        self.read(dev, |d| d.driver.clone())
    }

    fn driver_override(&self, dev: PciAddress) -> Result<Option<DriverName>, SysfsError> {
        self.read(dev, |d| d.driver_override.clone())
    }

    fn iommu_group(&self, dev: PciAddress) -> Result<Option<u32>, SysfsError> {
        self.read(dev, |d| d.iommu_group)
    }

    fn group_members(&self, group: u32) -> Result<Vec<PciAddress>, SysfsError> {
        let inner = self.lock();
        let members: Vec<PciAddress> = inner
            .devices
            .values()
            .filter(|d| d.iommu_group == Some(group))
            .map(|d| d.facts.address)
            .collect();
        if members.is_empty() {
            return Err(SysfsError::Read {
                path: PathBuf::from(format!("/sim/kernel/iommu_groups/{group}/devices")),
                source: io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        Ok(members)
    }

    fn header_type(&self, dev: PciAddress) -> Result<Option<u8>, SysfsError> {
        self.read(dev, |d| Some(u8::from(d.bridge)))
    }

    fn boot_vga(&self, dev: PciAddress) -> Result<bool, SysfsError> {
        self.read(dev, |d| d.boot_vga)
    }

    fn sriov_numvfs(&self, dev: PciAddress) -> Result<u32, SysfsError> {
        self.read(dev, |d| d.sriov_numvfs)
    }
}

impl Kernel for SimKernel {
    fn group_node(&self, group: u32) -> Result<Option<NodeOwner>, SysfsError> {
        Ok(self.node(group))
    }

    fn group_in_use(&self, group: u32) -> Result<bool, SysfsError> {
        Ok(self.lock().held.contains(&group))
    }

    fn chown_group_node(&self, group: u32, owner: NodeOwner) -> Result<(), SysfsError> {
        let mut inner = self.lock();
        inner.log.push(format!(
            "chown /dev/vfio/{group} {}:{} {:o}",
            owner.uid, owner.gid, owner.mode
        ));
        match inner.nodes.get_mut(&group) {
            Some(n) => {
                *n = owner;
                Ok(())
            }
            None => Err(SysfsError::Write {
                path: PathBuf::from(format!("/dev/vfio/{group}")),
                source: io::Error::from_raw_os_error(libc::ENOENT),
            }),
        }
    }

    fn set_override(&self, dev: PciAddress, name: Option<&DriverName>) -> Result<(), SysfsError> {
        let mut inner = self.lock();
        let shown = name.map_or("(clear)", DriverName::as_str);
        inner.log.push(format!("override {dev} {shown}"));
        if let Some(errno) = Self::take_fault(&mut inner, SimOp::SetOverride, dev) {
            return Err(Self::write_err(dev, "driver_override", errno));
        }
        let d = inner
            .devices
            .get_mut(&dev)
            .ok_or_else(|| Self::write_err(dev, "driver_override", libc::ENOENT))?;
        d.driver_override = name.cloned();
        Ok(())
    }

    fn unbind(&self, dev: PciAddress) -> Result<(), SysfsError> {
        let mut inner = self.lock();
        let current = inner.devices.get(&dev).and_then(|d| d.driver.clone());
        let shown = current.as_ref().map_or("-", DriverName::as_str);
        inner.log.push(format!("unbind {dev} {shown}"));
        if let Some(errno) = Self::take_fault(&mut inner, SimOp::Unbind, dev) {
            return Err(Self::write_err(dev, "driver/unbind", errno));
        }
        // vfio-pci's remove waits until userspace lets go of the device.
        loop {
            let blocked = inner.devices.get(&dev).is_some_and(|d| {
                d.driver.as_ref().is_some_and(|n| n.as_str() == "vfio-pci")
                    && d.iommu_group.is_some_and(|g| inner.held.contains(&g))
            });
            if !blocked {
                break;
            }
            inner = self.released.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        match inner.devices.get_mut(&dev) {
            Some(d) if d.driver.is_some() => {
                d.driver = None;
                inner.sync_nodes();
                Ok(())
            }
            // No driver: the `driver/unbind` path does not exist.
            _ => Err(Self::write_err(dev, "driver/unbind", libc::ENOENT)),
        }
    }

    fn probe(&self, dev: PciAddress) -> Result<(), SysfsError> {
        let mut inner = self.lock();
        inner.log.push(format!("probe {dev}"));
        if let Some(errno) = Self::take_fault(&mut inner, SimOp::Probe, dev) {
            return Err(SysfsError::Write {
                path: PathBuf::from("/sim/bus/pci/drivers_probe"),
                source: io::Error::from_raw_os_error(errno),
            });
        }
        let loaded = inner.loaded.clone();
        let d = inner
            .devices
            .get_mut(&dev)
            .ok_or_else(|| SysfsError::Write {
                path: PathBuf::from("/sim/bus/pci/drivers_probe"),
                source: io::Error::from_raw_os_error(libc::ENODEV),
            })?;
        if d.driver.is_some() {
            return Ok(());
        }
        // Only the override's driver may bind; without one, the native driver's id table matches.
        let candidate = match &d.driver_override {
            Some(o) => {
                let generic = o.as_str() == "vfio-pci" || o.as_str() == "pci-stub";
                (generic || d.native.as_ref() == Some(o)).then(|| o.clone())
            }
            None => d.native.clone(),
        };
        if let Some(c) = candidate {
            let refused = c.as_str() == "vfio-pci" && (d.bridge || d.iommu_group.is_none());
            if loaded.contains(c.as_str()) && !refused {
                d.driver = Some(c);
            }
        }
        inner.sync_nodes();
        // Success whether or not anything bound, as the real drivers_probe.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    #[test]
    fn override_then_unbind_then_probe_binds_the_override() {
        let k = SimKernel::guest_layout();
        let dev = a("01:00.0");
        let vfio = DriverName::new("vfio-pci").unwrap();
        k.set_override(dev, Some(&vfio)).unwrap();
        assert_eq!(
            k.driver(dev).unwrap().unwrap().as_str(),
            "e1000e",
            "override alone unbinds nothing"
        );
        k.unbind(dev).unwrap();
        k.probe(dev).unwrap();
        assert_eq!(k.driver(dev).unwrap(), Some(vfio));
    }

    #[test]
    fn probe_succeeds_binding_nothing() {
        let k = SimKernel::guest_layout();
        let bridge = a("04:00.0");
        k.set_override(bridge, Some(&DriverName::new("vfio-pci").unwrap()))
            .unwrap();
        k.probe(bridge).unwrap();
        assert_eq!(k.driver(bridge).unwrap(), None);
        let dev = a("00:06.0");
        k.unload_driver("pci-stub");
        k.set_override(dev, Some(&DriverName::new("pci-stub").unwrap()))
            .unwrap();
        k.probe(dev).unwrap();
        assert_eq!(k.driver(dev).unwrap(), None);
    }

    #[test]
    fn unbind_without_driver_fails_and_faults_fire_once() {
        let k = SimKernel::guest_layout();
        let e = k.unbind(a("00:06.0")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let dev = a("01:00.0");
        k.fail_next(SimOp::Unbind, dev, libc::EBUSY);
        assert_eq!(k.unbind(dev).unwrap_err().raw_os_error(), Some(libc::EBUSY));
        k.unbind(dev).unwrap();
    }
}

#[cfg(test)]
mod node_tests {
    use super::*;

    #[test]
    fn group_nodes_follow_vfio_pci_and_come_back_as_root() {
        let k = SimKernel::guest_layout();
        let dev: PciAddress = "01:00.0".parse().unwrap();
        let vfio = DriverName::new("vfio-pci").unwrap();
        k.set_override(dev, Some(&vfio)).unwrap();
        k.unbind(dev).unwrap();
        assert_eq!(k.node(8), None);
        k.probe(dev).unwrap();
        assert_eq!(k.node(8), Some(NodeOwner::ROOT));
        let alice = NodeOwner {
            uid: 1000,
            gid: 1000,
            mode: 0o600,
        };
        k.chown_group_node(8, alice).unwrap();
        assert_eq!(k.node(8), Some(alice));
        // A rebind re-creates the node as root's.
        k.unbind(dev).unwrap();
        assert_eq!(k.node(8), None);
        k.probe(dev).unwrap();
        assert_eq!(k.node(8), Some(NodeOwner::ROOT));
    }

    #[test]
    fn unbinding_a_held_vfio_device_blocks_until_let_go() {
        let k = std::sync::Arc::new(SimKernel::guest_layout());
        let dev: PciAddress = "01:00.0".parse().unwrap();
        k.set_override(dev, Some(&DriverName::new("vfio-pci").unwrap()))
            .unwrap();
        k.unbind(dev).unwrap();
        k.probe(dev).unwrap();
        k.hold_group(8);
        assert!(k.group_in_use(8).unwrap());
        let k2 = k.clone();
        let t = std::thread::spawn(move || k2.unbind(dev));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            !t.is_finished(),
            "the unbind must block while the group is held"
        );
        // Other operations are not blocked meanwhile.
        assert!(k.exists(dev));
        k.let_go_group(8);
        t.join().unwrap().unwrap();
        assert_eq!(k.driver(dev).unwrap(), None);
    }
}

impl vfio_gate_host::guards::HostUse for SimKernel {
    fn uses(&self, dev: PciAddress) -> Result<Vec<String>, String> {
        self.read(dev, |d| d.host_uses.clone())
            .map_err(|e| e.to_string())
    }
}
