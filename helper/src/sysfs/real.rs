//! [`Kernel`] on a sysfs tree.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use vfio_gate_protocol::PciAddress;

use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use vfio_gate_policy::SlotName;

use super::{DeviceFacts, DriverName, Kernel, NodeOwner, SysfsError};

/// Sysfs attribute files are at most a page; anything longer is not what we expect.
const MAX_ATTR: u64 = 4096;

/// The PCI part of a sysfs tree rooted at `root` (`/sys` in production).
///
/// Paths are built only from the root, fixed attribute names and a [`PciAddress`], whose text
/// form cannot contain `/` or `..`. Writes open existing files only (never `O_CREAT`), so pointed
/// at a fixture directory the helper cannot create files there either.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
    vfio_dir: PathBuf,
}

impl Sysfs {
    /// The sysfs mounted at `root`, with VFIO group nodes in `vfio_dir` (`/dev/vfio`).
    pub fn new(root: impl Into<PathBuf>, vfio_dir: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            vfio_dir: vfio_dir.into(),
        }
    }

    fn node_path(&self, group: u32) -> PathBuf {
        // A number: never a path separator or `..`.
        self.vfio_dir.join(group.to_string())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn pci(&self) -> PathBuf {
        self.root.join("bus/pci")
    }

    fn device_dir(&self, dev: PciAddress) -> PathBuf {
        self.pci().join("devices").join(dev.to_string())
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
        let slots = fs::read_dir(self.pci().join("slots")).ok()?;
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

    fn write_attr(&self, path: &Path, value: &[u8]) -> Result<(), SysfsError> {
        // One write(2) of the whole value: sysfs store methods see exactly one call. O_TRUNC is
        // what `echo >` does on every sysfs tool's path (kernfs ignores the size change); it makes
        // a plain-file fixture tree hold the last value written, as sysfs shows it.
        let result = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .and_then(|mut f| f.write(value))
            .and_then(|n| {
                if n == value.len() {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "short write to sysfs",
                    ))
                }
            });
        result.map_err(|source| SysfsError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

impl Kernel for Sysfs {
    fn devices(&self) -> Result<Vec<PciAddress>, SysfsError> {
        let dir = self.pci().join("devices");
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

    fn group_node(&self, group: u32) -> Result<Option<NodeOwner>, SysfsError> {
        let path = self.node_path(group);
        match fs::symlink_metadata(&path) {
            Ok(m) => Ok(Some(NodeOwner {
                uid: m.uid(),
                gid: m.gid(),
                mode: m.mode() & 0o7777,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SysfsError::Read { path, source }),
        }
    }

    fn group_in_use(&self, group: u32) -> Result<bool, SysfsError> {
        let path = self.node_path(group);
        // A group node opens once at a time: EBUSY means someone (a VM) has it. Opening it
        // ourselves for an instant is the kernel's own cheap answer.
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(_) => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(SysfsError::Read { path, source }),
        }
    }

    fn set_override(&self, dev: PciAddress, name: Option<&DriverName>) -> Result<(), SysfsError> {
        // Clearing needs a newline: a zero-length write returns 0 and leaves the override set.
        let value = match name {
            Some(n) => format!("{n}\n"),
            None => "\n".to_owned(),
        };
        self.write_attr(
            &self.device_dir(dev).join("driver_override"),
            value.as_bytes(),
        )
    }

    fn unbind(&self, dev: PciAddress) -> Result<(), SysfsError> {
        // Through the device's own `driver` link, so no path is built from a driver name.
        let path = self.device_dir(dev).join("driver/unbind");
        self.write_attr(&path, dev.to_string().as_bytes())
    }

    fn probe(&self, dev: PciAddress) -> Result<(), SysfsError> {
        let path = self.pci().join("drivers_probe");
        self.write_attr(&path, dev.to_string().as_bytes())
    }

    fn chown_group_node(&self, group: u32, owner: NodeOwner) -> Result<(), SysfsError> {
        let path = self.node_path(group);
        let fail = |e: nix::Error| SysfsError::Write {
            path: path.clone(),
            source: io::Error::from(e),
        };
        let meta = fs::symlink_metadata(&path).map_err(|source| SysfsError::Write {
            path: path.clone(),
            source,
        })?;
        // Only ever a character device: never a symlink or a file planted in its place.
        if !meta.file_type().is_char_device() {
            return Err(SysfsError::Unexpected {
                path,
                value: "not a character device".into(),
            });
        }
        // Only the owner may chmod without CAP_FOWNER, which the helper does not keep: take the
        // node first if someone else owns it, set the mode, then give it away.
        let chown = |uid: u32, gid: u32| {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &path,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(fail)
        };
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            chown(me, meta.gid())?;
        }
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &path,
            nix::sys::stat::Mode::from_bits_truncate(owner.mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(fail)?;
        chown(owner.uid, owner.gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A minimal fixture tree in the shape of /sys: reads behave like sysfs; writes land in plain
    /// files (there is no kernel behind them), which is enough to check what is written where.
    fn fixture() -> (tempfile::TempDir, Sysfs, PciAddress) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let dev = "0000:01:00.0";
        let real = root.join("devices/pci0000:00/0000:00:02.0").join(dev);
        fs::create_dir_all(&real).unwrap();
        fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
        fs::create_dir_all(root.join("bus/pci/drivers/e1000e")).unwrap();
        fs::create_dir_all(root.join("kernel/iommu_groups/8")).unwrap();
        for (attr, v) in [
            ("vendor", "0x8086\n"),
            ("device", "0x10d3\n"),
            ("subsystem_vendor", "0x8086\n"),
            ("subsystem_device", "0x0000\n"),
            ("class", "0x020000\n"),
            ("driver_override", "(null)\n"),
        ] {
            fs::write(real.join(attr), v).unwrap();
        }
        symlink(&real, root.join("bus/pci/devices").join(dev)).unwrap();
        symlink(root.join("bus/pci/drivers/e1000e"), real.join("driver")).unwrap();
        symlink(root.join("kernel/iommu_groups/8"), real.join("iommu_group")).unwrap();
        fs::write(root.join("bus/pci/drivers/e1000e/unbind"), "").unwrap();
        fs::write(root.join("bus/pci/drivers_probe"), "").unwrap();
        fs::create_dir_all(root.join("bus/pci/slots/7")).unwrap();
        fs::write(root.join("bus/pci/slots/7/address"), "0000:01:00\n").unwrap();
        fs::create_dir_all(root.join("bus/pci/slots/8")).unwrap();
        fs::write(root.join("bus/pci/slots/8/address"), "0000:02:00\n").unwrap();
        let sysfs = Sysfs::new(root, root.join("dev-vfio"));
        (tmp, sysfs, dev.parse().unwrap())
    }

    #[test]
    fn reads_what_sysfs_shows() {
        let (_tmp, s, dev) = fixture();
        assert_eq!(s.devices().unwrap(), vec![dev]);
        let f = s.facts(dev).unwrap();
        assert_eq!((f.vendor, f.device, f.class), (0x8086, 0x10d3, 0x020000));
        assert_eq!(f.physical_slot.map(|s| s.to_string()).as_deref(), Some("7"));
        assert_eq!(s.driver(dev).unwrap().unwrap().as_str(), "e1000e");
        assert_eq!(s.driver_override(dev).unwrap(), None);
        assert_eq!(s.iommu_group(dev).unwrap(), Some(8));
        let missing: PciAddress = "02:00.0".parse().unwrap();
        assert!(!s.exists(missing));
        assert!(matches!(s.driver(missing), Err(SysfsError::NoDevice(_))));
        assert!(matches!(s.facts(missing), Err(SysfsError::NoDevice(_))));
    }

    #[test]
    fn writes_go_to_the_documented_files() {
        let (tmp, s, dev) = fixture();
        let root = tmp.path();
        s.set_override(dev, Some(&DriverName::new("vfio-pci").unwrap()))
            .unwrap();
        let ov = root.join("bus/pci/devices/0000:01:00.0/driver_override");
        assert_eq!(fs::read_to_string(&ov).unwrap(), "vfio-pci\n");
        s.set_override(dev, None).unwrap();
        assert_eq!(fs::read_to_string(&ov).unwrap(), "\n");
        s.unbind(dev).unwrap();
        let unbind = root.join("bus/pci/drivers/e1000e/unbind");
        assert_eq!(fs::read_to_string(unbind).unwrap(), "0000:01:00.0");
        s.probe(dev).unwrap();
        let probe = root.join("bus/pci/drivers_probe");
        assert_eq!(fs::read_to_string(probe).unwrap(), "0000:01:00.0");
    }

    #[test]
    fn writes_never_create_files() {
        let (tmp, s, _) = fixture();
        let ghost: PciAddress = "07:00.0".parse().unwrap();
        let err = s.probe(ghost);
        assert!(err.is_ok(), "drivers_probe exists in the fixture");
        assert!(s.set_override(ghost, None).is_err());
        assert!(!tmp.path().join("bus/pci/devices/0000:07:00.0").exists());
        fs::remove_file(tmp.path().join("bus/pci/drivers_probe")).unwrap();
        let e = s.probe(ghost).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert!(!tmp.path().join("bus/pci/drivers_probe").exists());
    }

    #[test]
    fn garbage_in_sysfs_is_reported_not_trusted() {
        let (tmp, s, dev) = fixture();
        let dir = tmp.path().join("bus/pci/devices/0000:01:00.0");
        fs::write(dir.join("driver_override"), "../../etc\n").unwrap();
        assert!(matches!(
            s.driver_override(dev),
            Err(SysfsError::Unexpected { .. })
        ));
        fs::write(dir.join("vendor"), "8086\n").unwrap();
        assert!(matches!(s.facts(dev), Err(SysfsError::Unexpected { .. })));
    }
}
