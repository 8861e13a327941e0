//! Writes with a time limit, so a write the kernel blocks cannot wedge the helper.
//!
//! Unbinding a device from vfio-pci blocks in the kernel for as long as a process holds it
//! ("blocked until released by user"). The helper checks first (an open group node answers EBUSY)
//! but a VM can open the group between the check and the write. So every write runs on a thread
//! of its own and the caller waits a bounded time: if the write has not returned by then, the
//! caller gets [`SysfsError::Blocked`], the mutation lock is released, and the device is marked
//! so that no later write touches it until the blocked one completes (when the VM exits).

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vfio_gate_host::{DriverName, PciView, SysfsError};
use vfio_gate_policy::DeviceFacts;
use vfio_gate_protocol::PciAddress;

use super::{Kernel, NodeOwner};

/// A [`Kernel`] whose writes give up waiting after `timeout`.
pub struct Bounded {
    inner: Arc<dyn Kernel>,
    timeout: Duration,
    stuck: Arc<Mutex<BTreeSet<PciAddress>>>,
}

impl std::fmt::Debug for Bounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bounded")
            .field("timeout", &self.timeout)
            .field("stuck", &self.stuck)
            .finish_non_exhaustive()
    }
}

impl Bounded {
    pub fn new(inner: Arc<dyn Kernel>, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stuck: Arc::default(),
        }
    }

    /// Devices with a write still blocked in the kernel.
    pub fn stuck(&self) -> Vec<PciAddress> {
        self.stuck
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    fn write(
        &self,
        dev: PciAddress,
        op: &'static str,
        f: impl FnOnce(&dyn Kernel) -> Result<(), SysfsError> + Send + 'static,
    ) -> Result<(), SysfsError> {
        if self
            .stuck
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&dev)
        {
            return Err(SysfsError::StillBlocked { dev, op });
        }
        let (tx, rx) = mpsc::channel();
        let inner = self.inner.clone();
        let stuck = self.stuck.clone();
        std::thread::Builder::new()
            .name("sysfs-write".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let result = f(&*inner);
                // If nobody is waiting any more, this write was reported as blocked: clear the
                // mark now that the kernel has let it through.
                if tx.send(result).is_err() {
                    stuck.lock().unwrap_or_else(|e| e.into_inner()).remove(&dev);
                }
            })
            .map_err(|source| SysfsError::Write {
                path: format!("(thread for {op} on {dev})").into(),
                source,
            })?;
        match rx.recv_timeout(self.timeout) {
            Ok(result) => result,
            Err(_) => {
                let mut stuck = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
                // The write may have finished between the timeout and taking the lock.
                match rx.try_recv() {
                    Ok(result) => result,
                    Err(_) => {
                        stuck.insert(dev);
                        drop(rx);
                        Err(SysfsError::Blocked {
                            dev,
                            op,
                            secs: self.timeout.as_secs(),
                        })
                    }
                }
            }
        }
    }
}

impl PciView for Bounded {
    fn devices(&self) -> Result<Vec<PciAddress>, SysfsError> {
        self.inner.devices()
    }
    fn exists(&self, dev: PciAddress) -> bool {
        self.inner.exists(dev)
    }
    fn facts(&self, dev: PciAddress) -> Result<DeviceFacts, SysfsError> {
        self.inner.facts(dev)
    }
    fn driver(&self, dev: PciAddress) -> Result<Option<DriverName>, SysfsError> {
        self.inner.driver(dev)
    }
    fn driver_override(&self, dev: PciAddress) -> Result<Option<DriverName>, SysfsError> {
        self.inner.driver_override(dev)
    }
    fn iommu_group(&self, dev: PciAddress) -> Result<Option<u32>, SysfsError> {
        self.inner.iommu_group(dev)
    }
    fn group_members(&self, group: u32) -> Result<Vec<PciAddress>, SysfsError> {
        self.inner.group_members(group)
    }
    fn header_type(&self, dev: PciAddress) -> Result<Option<u8>, SysfsError> {
        self.inner.header_type(dev)
    }
    fn boot_vga(&self, dev: PciAddress) -> Result<bool, SysfsError> {
        self.inner.boot_vga(dev)
    }
    fn sriov_numvfs(&self, dev: PciAddress) -> Result<u32, SysfsError> {
        self.inner.sriov_numvfs(dev)
    }
}

impl Kernel for Bounded {
    fn group_node(&self, group: u32) -> Result<Option<NodeOwner>, SysfsError> {
        self.inner.group_node(group)
    }
    fn group_in_use(&self, group: u32) -> Result<bool, SysfsError> {
        self.inner.group_in_use(group)
    }
    fn set_override(&self, dev: PciAddress, name: Option<&DriverName>) -> Result<(), SysfsError> {
        let name = name.cloned();
        self.write(dev, "writing driver_override", move |k| {
            k.set_override(dev, name.as_ref())
        })
    }
    fn unbind(&self, dev: PciAddress) -> Result<(), SysfsError> {
        self.write(dev, "unbinding", move |k| k.unbind(dev))
    }
    fn probe(&self, dev: PciAddress) -> Result<(), SysfsError> {
        self.write(dev, "probing", move |k| k.probe(dev))
    }
    fn chown_group_node(&self, group: u32, owner: NodeOwner) -> Result<(), SysfsError> {
        self.inner.chown_group_node(group, owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::sim::SimKernel;
    use std::time::Instant;

    #[test]
    fn a_blocked_unbind_returns_in_bounded_time_and_marks_the_device() {
        let sim = Arc::new(SimKernel::guest_layout());
        let k = Bounded::new(sim.clone(), Duration::from_millis(200));
        let dev: PciAddress = "01:00.0".parse().unwrap();
        k.set_override(dev, DriverName::new("vfio-pci").as_ref())
            .unwrap();
        k.unbind(dev).unwrap();
        k.probe(dev).unwrap();
        sim.hold_group(8);
        let t = Instant::now();
        let e = k.unbind(dev).unwrap_err();
        assert!(matches!(e, SysfsError::Blocked { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(k.stuck(), vec![dev]);
        // Later writes to that device are refused at once rather than queued behind it.
        assert!(matches!(k.probe(dev), Err(SysfsError::StillBlocked { .. })));
        // Other devices are unaffected.
        let other: PciAddress = "00:06.1".parse().unwrap();
        k.set_override(other, None).unwrap();
        // The VM exits: the blocked write completes and the mark goes.
        sim.let_go_group(8);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !k.stuck().is_empty() {
            assert!(Instant::now() < deadline, "the mark was never cleared");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(sim.driver(dev).unwrap(), None);
    }
}
