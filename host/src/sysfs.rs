//! [`PciView`] on a sysfs tree.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use vfio_gate_policy::{DeviceFacts, SlotName};
use vfio_gate_protocol::PciAddress;

use crate::view::{DriverName, PciView, SysfsError};

/// Sysfs attribute files are at most a page; anything longer is not what we expect.
const MAX_ATTR: u64 = 4096;

/// The PCI part of a sysfs tree rooted at `root` (`/sys` in production), read-only.
///
/// Paths are built only from the root, fixed attribute names and a [`PciAddress`], whose text
/// form cannot contain `/` or `..`.
#[derive(Debug, Clone)]
pub struct SysfsView {
    root: PathBuf,
}

impl SysfsView {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/bus/pci`.
    pub fn pci_dir(&self) -> PathBuf {
        self.root.join("bus/pci")
    }

    /// `ROOT/bus/pci/devices/ADDR` (a symlink into `ROOT/devices`).
    pub fn device_dir(&self, dev: PciAddress) -> PathBuf {
        self.pci_dir().join("devices").join(dev.to_string())
    }

    /// The device's modalias (`pci:v00008086d000010D3sv…bc02sc00i00`): what udev matches the
    /// kernel's module alias tables against ([`crate::modalias`]).
    pub fn modalias(&self, dev: PciAddress) -> Result<String, SysfsError> {
        if !self.exists(dev) {
            return Err(SysfsError::NoDevice(dev));
        }
        self.read_attr(&self.device_dir(dev).join("modalias"))
    }

    /// The kernel module of the driver bound to `dev` (the `driver/module` link: `e1000e`,
    /// `snd_hda_intel`); `None` when no driver is bound, or when the driver has no module link
    /// (some built-in drivers, such as pcieport).
    pub fn driver_module(&self, dev: PciAddress) -> Result<Option<String>, SysfsError> {
        self.link_name(dev, "driver/module")
    }

    fn read_attr(&self, path: &Path) -> Result<String, SysfsError> {
        let mut text = String::new();
        fs::File::open(path)
            .and_then(|f| f.take(MAX_ATTR).read_to_string(&mut text))
            .map_err(|source| SysfsError::Read {
                path: path.to_owned(),
                source,
            })?;
        Ok(text.trim_end_matches('\n').to_owned())
    }

    /// The physical slot `dev` sits in: the `/sys/bus/pci/slots/NAME` whose `address`
    /// (`DDDD:BB:DD`, no function) is the device's. Slots are few; absent or unreadable → none.
    fn physical_slot(&self, dev: PciAddress) -> Option<SlotName> {
        let want = format!(
            "{:04x}:{:02x}:{:02x}",
            dev.domain(),
            dev.bus(),
            dev.device()
        );
        let slots = fs::read_dir(self.pci_dir().join("slots")).ok()?;
        slots.filter_map(Result::ok).find_map(|e| {
            let name = SlotName::new(e.file_name().to_str()?)?;
            let address = self.read_attr(&e.path().join("address")).ok()?;
            (address == want).then_some(name)
        })
    }

    fn read_hex(&self, dev: PciAddress, attr: &str) -> Result<u32, SysfsError> {
        let path = self.device_dir(dev).join(attr);
        let text = self.read_attr(&path)?;
        text.strip_prefix("0x")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or(SysfsError::Unexpected { path, value: text })
    }

    fn read_u16(&self, dev: PciAddress, attr: &str) -> Result<u16, SysfsError> {
        let v = self.read_hex(dev, attr)?;
        u16::try_from(v).map_err(|_| SysfsError::Unexpected {
            path: self.device_dir(dev).join(attr),
            value: format!("{v:#x}"),
        })
    }

    /// The last component of a symlink under the device directory, if the link exists.
    fn link_name(&self, dev: PciAddress, link: &str) -> Result<Option<String>, SysfsError> {
        let path = self.device_dir(dev).join(link);
        match fs::read_link(&path) {
            Ok(target) => {
                let name = target
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned);
                name.map(Some).ok_or(SysfsError::Unexpected {
                    path,
                    value: target.display().to_string(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if self.exists(dev) {
                    Ok(None)
                } else {
                    Err(SysfsError::NoDevice(dev))
                }
            }
            Err(source) => Err(SysfsError::Read { path, source }),
        }
    }
}

impl PciView for SysfsView {
    fn devices(&self) -> Result<Vec<PciAddress>, SysfsError> {
        let dir = self.pci_dir().join("devices");
        let entries = fs::read_dir(&dir).map_err(|source| SysfsError::Read {
            path: dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| SysfsError::Read {
                path: dir.clone(),
                source,
            })?;
            // Anything that is not a PCI address is not ours to look at.
            if let Some(addr) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(addr);
            }
        }
        out.sort();
        Ok(out)
    }

    fn exists(&self, dev: PciAddress) -> bool {
        self.device_dir(dev).join("vendor").exists()
    }

    fn facts(&self, dev: PciAddress) -> Result<DeviceFacts, SysfsError> {
        if !self.exists(dev) {
            return Err(SysfsError::NoDevice(dev));
        }
        Ok(DeviceFacts {
            address: dev,
            vendor: self.read_u16(dev, "vendor")?,
            device: self.read_u16(dev, "device")?,
            subsystem_vendor: self.read_u16(dev, "subsystem_vendor")?,
            subsystem_device: self.read_u16(dev, "subsystem_device")?,
            class: self.read_hex(dev, "class")? & 0x00ff_ffff,
            physical_slot: self.physical_slot(dev),
        })
    }

    fn driver(&self, dev: PciAddress) -> Result<Option<DriverName>, SysfsError> {
        let path = self.device_dir(dev).join("driver");
        match self.link_name(dev, "driver")? {
            None => Ok(None),
            Some(name) => DriverName::new(&name)
                .map(Some)
                .ok_or(SysfsError::Unexpected { path, value: name }),
        }
    }

    fn driver_override(&self, dev: PciAddress) -> Result<Option<DriverName>, SysfsError> {
        let path = self.device_dir(dev).join("driver_override");
        let text = self.read_attr(&path)?;
        if text == "(null)" || text.is_empty() {
            return Ok(None);
        }
        DriverName::new(&text)
            .map(Some)
            .ok_or(SysfsError::Unexpected { path, value: text })
    }

    fn iommu_group(&self, dev: PciAddress) -> Result<Option<u32>, SysfsError> {
        let path = self.device_dir(dev).join("iommu_group");
        match self.link_name(dev, "iommu_group")? {
            None => Ok(None),
            Some(n) => n
                .parse()
                .map(Some)
                .map_err(|_| SysfsError::Unexpected { path, value: n }),
        }
    }

    fn group_members(&self, group: u32) -> Result<Vec<PciAddress>, SysfsError> {
        let dir = self
            .root
            .join("kernel/iommu_groups")
            .join(group.to_string())
            .join("devices");
        let entries = fs::read_dir(&dir).map_err(|source| SysfsError::Read {
            path: dir.clone(),
            source,
        })?;
        let mut out: Vec<PciAddress> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        out.sort();
        Ok(out)
    }

    fn header_type(&self, dev: PciAddress) -> Result<Option<u8>, SysfsError> {
        let path = self.device_dir(dev).join("config");
        let mut head = [0u8; 16];
        match fs::File::open(&path).and_then(|mut f| f.read_exact(&mut head)) {
            Ok(()) => Ok(Some(head[0x0e])),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::UnexpectedEof =>
            {
                Ok(None)
            }
            Err(source) => Err(SysfsError::Read { path, source }),
        }
    }

    fn boot_vga(&self, dev: PciAddress) -> Result<bool, SysfsError> {
        let path = self.device_dir(dev).join("boot_vga");
        match self.read_attr(&path) {
            Ok(v) => Ok(v == "1"),
            // Only VGA-class devices have the attribute.
            Err(SysfsError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn sriov_numvfs(&self, dev: PciAddress) -> Result<u32, SysfsError> {
        let path = self.device_dir(dev).join("sriov_numvfs");
        match self.read_attr(&path) {
            Ok(v) => v
                .parse()
                .map_err(|_| SysfsError::Unexpected { path, value: v }),
            Err(SysfsError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn modalias_and_the_bound_driver_s_module() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        let dev: PciAddress = "01:00.0".parse().unwrap();
        let real = sys.join("devices/pci0000:00/0000:01:00.0");
        fs::create_dir_all(&real).unwrap();
        fs::create_dir_all(sys.join("bus/pci/devices")).unwrap();
        symlink(&real, sys.join("bus/pci/devices/0000:01:00.0")).unwrap();
        fs::write(real.join("vendor"), "0x8086\n").unwrap();
        let alias = "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00";
        fs::write(real.join("modalias"), format!("{alias}\n")).unwrap();
        let v = SysfsView::new(sys);
        assert_eq!(v.modalias(dev).unwrap(), alias);
        // No driver: no module.
        assert_eq!(v.driver_module(dev).unwrap(), None);
        // A driver without a module link (built in): none either.
        let pcieport = sys.join("bus/pci/drivers/pcieport");
        fs::create_dir_all(&pcieport).unwrap();
        symlink(&pcieport, real.join("driver")).unwrap();
        assert_eq!(v.driver_module(dev).unwrap(), None);
        // A module's driver: the module's name.
        fs::remove_file(real.join("driver")).unwrap();
        let e1000e = sys.join("bus/pci/drivers/e1000e");
        fs::create_dir_all(&e1000e).unwrap();
        fs::create_dir_all(sys.join("module/e1000e")).unwrap();
        symlink(sys.join("module/e1000e"), e1000e.join("module")).unwrap();
        symlink(&e1000e, real.join("driver")).unwrap();
        assert_eq!(v.driver_module(dev).unwrap().as_deref(), Some("e1000e"));
        let gone: PciAddress = "02:00.0".parse().unwrap();
        assert!(matches!(v.modalias(gone), Err(SysfsError::NoDevice(_))));
        assert!(matches!(
            v.driver_module(gone),
            Err(SysfsError::NoDevice(_))
        ));
    }
}
