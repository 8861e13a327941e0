//! The VFIO group and container ioctls (`linux/vfio.h`), the only unsafe code of the VFIO test
//! programs. Shared by `vfio-probe` and `vfio-viability`.
//!
//! Every VFIO ioctl is `_IO(VFIO_TYPE, VFIO_BASE + n)`: no size or direction is encoded, whatever
//! the argument, hence nix's `*_bad` macros with `request_code_none!`.

use std::ffi::CString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::libc::{c_char, c_int};

/// `VFIO_TYPE` (`';'`).
const VFIO_TYPE: u8 = b';';
/// `VFIO_BASE`.
const VFIO_BASE: u8 = 100;
/// `VFIO_API_VERSION`: what `VFIO_GET_API_VERSION` answers on every kernel since 3.6.
pub const VFIO_API_VERSION: c_int = 0;
/// `VFIO_TYPE1_IOMMU`.
pub const VFIO_TYPE1_IOMMU: c_int = 1;
/// `VFIO_GROUP_FLAGS_VIABLE`.
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;

/// `struct vfio_group_status`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct GroupStatus {
    argsz: u32,
    flags: u32,
}

nix::ioctl_none_bad!(
    get_api_version,
    nix::request_code_none!(VFIO_TYPE, VFIO_BASE)
);
nix::ioctl_write_int_bad!(
    check_extension,
    nix::request_code_none!(VFIO_TYPE, VFIO_BASE + 1)
);
nix::ioctl_write_int_bad!(set_iommu, nix::request_code_none!(VFIO_TYPE, VFIO_BASE + 2));
nix::ioctl_readwrite_bad!(
    group_get_status,
    nix::request_code_none!(VFIO_TYPE, VFIO_BASE + 3),
    GroupStatus
);
nix::ioctl_write_ptr_bad!(
    group_set_container,
    nix::request_code_none!(VFIO_TYPE, VFIO_BASE + 4),
    c_int
);
nix::ioctl_write_ptr_bad!(
    group_get_device_fd,
    nix::request_code_none!(VFIO_TYPE, VFIO_BASE + 6),
    c_char
);

/// A failed step of the VFIO sequence: what was being done and the errno (or what was wrong).
#[derive(Debug)]
pub struct StepError {
    pub step: String,
    pub errno: Option<Errno>,
    pub detail: String,
}

impl StepError {
    fn errno(step: impl Into<String>, errno: Errno) -> Self {
        Self {
            step: step.into(),
            errno: Some(errno),
            detail: errno.desc().to_owned(),
        }
    }

    fn other(step: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            step: step.into(),
            errno: None,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno {
            // `EACCES (Permission denied)`: the symbolic name is what the tests look for.
            Some(e) => write!(f, "{}: {e:?} ({})", self.step, self.detail),
            None => write!(f, "{}: {}", self.step, self.detail),
        }
    }
}

fn open_rw(path: &str) -> Result<File, StepError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
            StepError::errno(format!("open {path}"), errno)
        })
}

/// An open `/dev/vfio/<group>`.
#[derive(Debug)]
pub struct Group {
    file: File,
}

impl Group {
    /// Opens `/dev/vfio/<number>` read-write, as a VMM does.
    pub fn open(number: u32) -> Result<Self, StepError> {
        Ok(Self {
            file: open_rw(&format!("/dev/vfio/{number}"))?,
        })
    }

    /// `VFIO_GROUP_GET_STATUS`: whether the kernel considers the group viable.
    pub fn viable(&self) -> Result<bool, StepError> {
        let mut status = GroupStatus {
            argsz: std::mem::size_of::<GroupStatus>() as u32,
            flags: 0,
        };
        // SAFETY: the fd is an open group node for the lifetime of `self`; the kernel reads
        // `argsz` and writes `flags` of a properly sized, aligned `struct vfio_group_status` that
        // lives on our stack for the whole call.
        unsafe { group_get_status(self.file.as_raw_fd(), &mut status) }
            .map_err(|e| StepError::errno("VFIO_GROUP_GET_STATUS", e))?;
        Ok(status.flags & VFIO_GROUP_FLAGS_VIABLE != 0)
    }

    /// `VFIO_GROUP_SET_CONTAINER`.
    pub fn set_container(&self, container: &Container) -> Result<(), StepError> {
        let fd: c_int = container.file.as_raw_fd();
        // SAFETY: both fds are open for the call; the kernel reads one int through the pointer,
        // which points at a live local.
        unsafe { group_set_container(self.file.as_raw_fd(), &fd) }
            .map_err(|e| StepError::errno("VFIO_GROUP_SET_CONTAINER", e))?;
        Ok(())
    }

    /// `VFIO_GROUP_GET_DEVICE_FD` for `address` (`0000:05:02.0`).
    pub fn device(&self, address: &str) -> Result<OwnedFd, StepError> {
        let step = format!("VFIO_GROUP_GET_DEVICE_FD {address}");
        let name = CString::new(address)
            .map_err(|_| StepError::other(step.clone(), "the address contains a NUL byte"))?;
        // SAFETY: the fd is an open group node; the kernel reads a NUL-terminated string through
        // the pointer, and `name` outlives the call.
        let fd = unsafe { group_get_device_fd(self.file.as_raw_fd(), name.as_ptr()) }
            .map_err(|e| StepError::errno(step, e))?;
        // SAFETY: on success the ioctl returns a new file descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// An open `/dev/vfio/vfio`.
#[derive(Debug)]
pub struct Container {
    file: File,
}

impl Container {
    pub fn open() -> Result<Self, StepError> {
        Ok(Self {
            file: open_rw("/dev/vfio/vfio")?,
        })
    }

    /// `VFIO_GET_API_VERSION`.
    pub fn api_version(&self) -> Result<c_int, StepError> {
        // SAFETY: the fd is an open container; this ioctl takes no argument.
        unsafe { get_api_version(self.file.as_raw_fd()) }
            .map_err(|e| StepError::errno("VFIO_GET_API_VERSION", e))
    }

    /// `VFIO_CHECK_EXTENSION`: whether the container supports `extension`.
    pub fn has_extension(&self, extension: c_int) -> Result<bool, StepError> {
        // SAFETY: the fd is an open container; the argument is passed by value.
        let r = unsafe { check_extension(self.file.as_raw_fd(), extension as _) }
            .map_err(|e| StepError::errno(format!("VFIO_CHECK_EXTENSION {extension}"), e))?;
        Ok(r > 0)
    }

    /// `VFIO_SET_IOMMU`.
    pub fn set_iommu(&self, iommu: c_int) -> Result<(), StepError> {
        // SAFETY: the fd is an open container; the argument is passed by value.
        unsafe { set_iommu(self.file.as_raw_fd(), iommu as _) }
            .map_err(|e| StepError::errno(format!("VFIO_SET_IOMMU {iommu}"), e))?;
        Ok(())
    }
}

/// Everything a VMM keeps open to use one device.
#[derive(Debug)]
pub struct Session {
    pub container: Container,
    pub group: Group,
    pub device: OwnedFd,
}

/// The whole sequence a VMM runs: container, API version, TYPE1 extension, group, VIABLE,
/// SET_CONTAINER, SET_IOMMU TYPE1, GET_DEVICE_FD.
pub fn open_device(group: u32, address: &str) -> Result<Session, StepError> {
    let container = Container::open()?;
    let version = container.api_version()?;
    if version != VFIO_API_VERSION {
        return Err(StepError::other(
            "VFIO_GET_API_VERSION",
            format!("version {version}, expected {VFIO_API_VERSION}"),
        ));
    }
    if !container.has_extension(VFIO_TYPE1_IOMMU)? {
        return Err(StepError::other(
            format!("VFIO_CHECK_EXTENSION {VFIO_TYPE1_IOMMU}"),
            "the container does not support VFIO_TYPE1_IOMMU",
        ));
    }
    let g = Group::open(group)?;
    if !g.viable()? {
        return Err(StepError::other(
            "VFIO_GROUP_GET_STATUS",
            format!("group {group} is not viable"),
        ));
    }
    g.set_container(&container)?;
    container.set_iommu(VFIO_TYPE1_IOMMU)?;
    let device = g.device(address)?;
    Ok(Session {
        container,
        group: g,
        device,
    })
}
