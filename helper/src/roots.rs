//! Every file-system root the helper reads or writes, as one value.
//!
//! The helper touches five trees: sysfs (devices, drivers, IOMMU groups — and its only writes),
//! procfs (mounts and swap, for the in-use guard), the account files (`etc/passwd` and
//! `etc/group`: the policy's user and group names, an admin's `explain --user`), its state
//! directory (leases) and the VFIO group nodes. Each root is a command-line option whose default is
//! the production path, and [`Roots`] carries all of them together to every reader: the landlock
//! layout (what the sandbox grants), the name reader, the host view behind the in-use guard, the
//! kernel interface and the service. Nothing else in the helper names `/sys`, `/proc`, `/etc` or
//! `/dev/vfio`, so a test can point the whole helper — sandbox included — at fixture trees.

use std::path::PathBuf;

/// The trees the helper works on; [`Roots::default`] is production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// The sysfs mount (`/sys`, `--sysfs-root`).
    pub sys: PathBuf,
    /// The procfs mount (`/proc`, `--proc-root`). On a real procfs, `self` is the reading
    /// process: mounts are the helper's own mount namespace's.
    pub proc: PathBuf,
    /// The directory holding `etc/passwd` and `etc/group` (`/`, `--etc-root`).
    pub etc: PathBuf,
    /// Lease records (`/run/vfio-gate`, `--state-dir`).
    pub state: PathBuf,
    /// VFIO group nodes handed to users (`/dev/vfio`, `--vfio-dir`).
    pub vfio: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            sys: "/sys".into(),
            proc: "/proc".into(),
            etc: "/".into(),
            state: "/run/vfio-gate".into(),
            vfio: "/dev/vfio".into(),
        }
    }
}

impl Roots {
    /// The account database: `ETC/etc/passwd`.
    pub fn passwd(&self) -> PathBuf {
        self.etc.join("etc/passwd")
    }

    /// The group database: `ETC/etc/group`.
    pub fn group(&self) -> PathBuf {
        self.etc.join("etc/group")
    }
}
