//! [`Kernel`] on a sysfs tree: the reads of [`SysfsView`], plus the writes.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use vfio_gate_host::{DriverName, PciView, SysfsError, SysfsView};
use vfio_gate_policy::DeviceFacts;
use vfio_gate_protocol::PciAddress;

use super::{Kernel, NodeOwner};

/// The PCI part of a sysfs tree rooted at `root` (`/sys` in production), and the VFIO group
/// nodes in `vfio_dir`.
///
/// Paths are built only from the root, fixed attribute names and a [`PciAddress`], whose text
/// form cannot contain `/` or `..`. Writes open existing files only (never `O_CREAT`), so pointed
/// at a fixture directory the helper cannot create files there either.
#[derive(Debug, Clone)]
pub struct Sysfs {
    view: SysfsView,
    vfio_dir: PathBuf,
}

impl Sysfs {
    /// The sysfs mounted at `root`, with VFIO group nodes in `vfio_dir` (`/dev/vfio`).
    pub fn new(root: impl Into<PathBuf>, vfio_dir: impl Into<PathBuf>) -> Self {
        Self {
            view: SysfsView::new(root),
            vfio_dir: vfio_dir.into(),
        }
    }

    pub fn root(&self) -> &Path {
        self.view.root()
    }

    fn node_path(&self, group: u32) -> PathBuf {
        // A number: never a path separator or `..`.
        self.vfio_dir.join(group.to_string())
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

impl PciView for Sysfs {
    fn devices(&self) -> Result<Vec<PciAddress>, SysfsError> {
        self.view.devices()
    }
    fn exists(&self, dev: PciAddress) -> bool {
        self.view.exists(dev)
    }
    fn facts(&self, dev: PciAddress) -> Result<DeviceFacts, SysfsError> {
        self.view.facts(dev)
    }
    fn driver(&self, dev: PciAddress) -> Result<Option<DriverName>, SysfsError> {
        self.view.driver(dev)
    }
    fn driver_override(&self, dev: PciAddress) -> Result<Option<DriverName>, SysfsError> {
        self.view.driver_override(dev)
    }
    fn iommu_group(&self, dev: PciAddress) -> Result<Option<u32>, SysfsError> {
        self.view.iommu_group(dev)
    }
    fn group_members(&self, group: u32) -> Result<Vec<PciAddress>, SysfsError> {
        self.view.group_members(group)
    }
    fn header_type(&self, dev: PciAddress) -> Result<Option<u8>, SysfsError> {
        self.view.header_type(dev)
    }
    fn boot_vga(&self, dev: PciAddress) -> Result<bool, SysfsError> {
        self.view.boot_vga(dev)
    }
    fn sriov_numvfs(&self, dev: PciAddress) -> Result<u32, SysfsError> {
        self.view.sriov_numvfs(dev)
    }
}

impl Kernel for Sysfs {
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
            &self.view.device_dir(dev).join("driver_override"),
            value.as_bytes(),
        )
    }

    fn unbind(&self, dev: PciAddress) -> Result<(), SysfsError> {
        // Through the device's own `driver` link, so no path is built from a driver name.
        let path = self.view.device_dir(dev).join("driver/unbind");
        self.write_attr(&path, dev.to_string().as_bytes())
    }

    fn probe(&self, dev: PciAddress) -> Result<(), SysfsError> {
        let path = self.view.pci_dir().join("drivers_probe");
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
