//! Lease records: what vfio-gate did to a device, written before it does it.
//!
//! One file per held IOMMU group in the state directory (`/run/vfio-gate`, kept across idle exits
//! by systemd's `RuntimeDirectoryPreserve=yes`): a group belongs to one user at a time. A record
//! is written atomically — temp file, fsync, rename, fsync the directory — *before* the first
//! sysfs write of a bind (phase `intent`), then updated (`applied`), and removed once a release
//! has restored every member. For each member vfio-gate moved it holds the target driver and the
//! original driver and override, so a release by a later helper process restores the right state.
//!
//! The format is plain `key=value` lines so an admin can read it; parsing is strict and a record
//! that does not parse, or whose file name disagrees with its content, is reported, never trusted.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag, open, openat, renameat};
use nix::sys::stat::{Mode, fstat};
use nix::unistd::{UnlinkatFlags, fsync, geteuid, unlinkat};
use vfio_gate_host::DriverName;
use vfio_gate_protocol::{Driver, PciAddress};

use crate::sequence::Original;

const MAGIC: &str = "vfio-gate-lease 3";
const SUFFIX: &str = ".lease";
const MAX_RECORD: u64 = 4096;

/// Where a lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Written before the first sysfs write of a bind.
    Intent,
    /// The device is on the target driver.
    Applied,
    /// A release has started.
    Releasing,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Intent => "intent",
            Phase::Applied => "applied",
            Phase::Releasing => "releasing",
        }
    }
}

/// One member of a held group that vfio-gate moved, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedDevice {
    pub device: PciAddress,
    pub driver: Driver,
    pub original: Original,
    /// Vendor and device ids when bound: a different device that appears at the same address
    /// (hot-plug) is never touched on the strength of this record.
    pub ids: (u16, u16),
}

/// One IOMMU group held by one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub group: u32,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub phase: Phase,
    /// Seconds since the Unix epoch when the bind started.
    pub since: u64,
    /// Seconds since the Unix epoch of the last change of phase.
    pub updated: u64,
    /// The lease lives as long as its holder's connection (`vfio-gate run`): a helper that
    /// starts and finds it knows that connection died with the previous process.
    pub tied: bool,
    /// The members moved, in the order they were bound (released in reverse).
    pub devices: Vec<LeasedDevice>,
}

impl LeasedDevice {
    /// Whether the device was already on its target driver when bound (adopted: a reservation,
    /// `vfio-pci.ids=`): nothing was written for it, and a release leaves it there.
    pub fn adopted(&self) -> bool {
        self.original
            .driver
            .as_ref()
            .is_some_and(|d| d.is(self.driver))
    }
}

impl Lease {
    /// The member `dev`, if vfio-gate moved it.
    pub fn device(&self, dev: PciAddress) -> Option<&LeasedDevice> {
        self.devices.iter().find(|d| d.device == dev)
    }
}

/// The state directory or a record in it is unusable.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("opening the state directory {path}: {errno}")]
    OpenDir { path: PathBuf, errno: Errno },
    #[error(
        "the state directory {path} is owned by uid {uid}, not by the helper (uid {expected}); fix: chown root:root {path}"
    )]
    DirOwner {
        path: PathBuf,
        uid: u32,
        expected: u32,
    },
    #[error(
        "the state directory {path} has mode {mode:o}; it must not be group- or world-writable (fix: chmod 0700 {path})"
    )]
    DirMode { path: PathBuf, mode: u32 },
    #[error("{op} lease record {name}: {errno}")]
    Io {
        op: &'static str,
        name: String,
        errno: Errno,
    },
    #[error("lease record {name} is corrupt or foreign: {why}")]
    Corrupt { name: String, why: String },
}

/// The open state directory.
#[derive(Debug)]
pub struct StateDir {
    dir: OwnedFd,
    path: PathBuf,
    /// `mutations.lock`, whose `flock` serialises mutations across helper processes: the one
    /// serving clients and one started to hold a reserved device that just appeared.
    lock: File,
}

/// The name of the lock file in the state directory.
const LOCK_FILE: &str = "mutations.lock";

/// Holds the state directory's mutation lock until dropped.
#[derive(Debug)]
pub struct MutationLock(#[allow(dead_code)] Flock<File>);

fn file_name(group: u32) -> String {
    format!("group-{group}{SUFFIX}")
}

impl StateDir {
    /// Opens (creating it 0700 if missing) the state directory and checks that nobody but the
    /// helper's own uid can write to it: a record there decides what a release restores.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let err = |errno| StateError::OpenDir {
            path: path.to_owned(),
            errno,
        };
        match nix::unistd::mkdir(path, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(err(e)),
        }
        let dir = open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(err)?;
        let st = fstat(&dir).map_err(err)?;
        let euid = geteuid().as_raw();
        if st.st_uid != euid {
            return Err(StateError::DirOwner {
                path: path.to_owned(),
                uid: st.st_uid,
                expected: euid,
            });
        }
        if st.st_mode & 0o022 != 0 {
            return Err(StateError::DirMode {
                path: path.to_owned(),
                mode: st.st_mode & 0o7777,
            });
        }
        let lock = openat(
            &dir,
            LOCK_FILE,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|errno| StateError::Io {
            op: "opening",
            name: LOCK_FILE.into(),
            errno,
        })?;
        Ok(Self {
            dir,
            path: path.to_owned(),
            lock: File::from(lock),
        })
    }

    /// Waits for, then holds, the lock that serialises sysfs mutations across helper processes
    /// (within one process a mutex does it first). Released when the guard drops.
    pub fn lock_mutations(&self) -> Result<MutationLock, StateError> {
        let io = |errno| StateError::Io {
            op: "locking",
            name: LOCK_FILE.into(),
            errno,
        };
        loop {
            // A duplicate shares the open file description, so its flock is the file's; dropping
            // the guard unlocks it.
            let dup = self
                .lock
                .try_clone()
                .map_err(|e| io(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
            match Flock::lock(dup, FlockArg::LockExclusive) {
                Ok(held) => return Ok(MutationLock(held)),
                Err((_, Errno::EINTR)) => continue,
                Err((_, errno)) => return Err(io(errno)),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `lease` atomically: temp file, fsync, rename over the record, fsync the directory.
    pub fn write(&self, lease: &Lease) -> Result<(), StateError> {
        let name = file_name(lease.group);
        let tmp = format!(".{name}.tmp");
        let io = |op, errno| StateError::Io {
            op,
            name: name.clone(),
            errno,
        };
        match unlinkat(&self.dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(io("removing a stale temp file for", e)),
        }
        let fd = openat(
            &self.dir,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io("creating", e))?;
        let mut file = File::from(fd);
        file.write_all(lease.to_string().as_bytes()).map_err(|e| {
            io(
                "writing",
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
        fsync(file.as_fd()).map_err(|e| io("syncing", e))?;
        drop(file);
        renameat(&self.dir, tmp.as_str(), &self.dir, name.as_str())
            .map_err(|e| io("renaming", e))?;
        fsync(&self.dir).map_err(|e| io("syncing the directory for", e))
    }

    /// The record for `group`, if there is one.
    pub fn read(&self, group: u32) -> Result<Option<Lease>, StateError> {
        let name = file_name(group);
        let fd = match openat(
            &self.dir,
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(errno) => {
                return Err(StateError::Io {
                    op: "opening",
                    name,
                    errno,
                });
            }
        };
        let mut file = File::from(fd);
        let meta = file.metadata().map_err(|e| StateError::Io {
            op: "inspecting",
            name: name.clone(),
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        if !meta.is_file() || meta.uid() != geteuid().as_raw() {
            return Err(StateError::Corrupt {
                name,
                why: "not a regular file owned by the helper".into(),
            });
        }
        let mut text = String::new();
        (&mut file)
            .take(MAX_RECORD)
            .read_to_string(&mut text)
            .map_err(|e| StateError::Corrupt {
                name: name.clone(),
                why: e.to_string(),
            })?;
        let lease: Lease = text.parse().map_err(|why| StateError::Corrupt {
            name: name.clone(),
            why,
        })?;
        if lease.group != group {
            return Err(StateError::Corrupt {
                name,
                why: format!("names group {}", lease.group),
            });
        }
        Ok(Some(lease))
    }

    /// Removes the record for `group` (no error if it is already gone).
    pub fn remove(&self, group: u32) -> Result<(), StateError> {
        let name = file_name(group);
        match unlinkat(&self.dir, name.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(errno) => {
                return Err(StateError::Io {
                    op: "removing",
                    name,
                    errno,
                });
            }
        }
        fsync(&self.dir).map_err(|errno| StateError::Io {
            op: "syncing the directory after removing",
            name,
            errno,
        })
    }

    /// The groups that have a record, by file name.
    pub fn groups(&self) -> Result<Vec<u32>, StateError> {
        let entries = std::fs::read_dir(&self.path).map_err(|e| StateError::OpenDir {
            path: self.path.clone(),
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        let mut out: Vec<u32> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.strip_prefix("group-")?
                    .strip_suffix(SUFFIX)?
                    .parse()
                    .ok()
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every readable lease, and the problems with the unreadable ones.
    pub fn all(&self) -> (Vec<Lease>, Vec<StateError>) {
        let mut leases = Vec::new();
        let mut problems = Vec::new();
        match self.groups() {
            Ok(groups) => {
                for g in groups {
                    match self.read(g) {
                        Ok(Some(l)) => leases.push(l),
                        Ok(None) => {}
                        Err(e) => problems.push(e),
                    }
                }
            }
            Err(e) => problems.push(e),
        }
        (leases, problems)
    }
}

fn opt(d: &Option<DriverName>) -> &str {
    d.as_ref().map_or("-", DriverName::as_str)
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{MAGIC}")?;
        writeln!(f, "group={}", self.group)?;
        writeln!(f, "owner_uid={}", self.owner_uid)?;
        writeln!(f, "owner_gid={}", self.owner_gid)?;
        writeln!(f, "phase={}", self.phase.as_str())?;
        writeln!(f, "since={}", self.since)?;
        writeln!(f, "updated={}", self.updated)?;
        writeln!(f, "tied={}", if self.tied { "yes" } else { "no" })?;
        for d in &self.devices {
            // address, target driver, original driver, original override ("-" for none),
            // vendor:device
            writeln!(
                f,
                "member={} {} {} {} {:04x}:{:04x}",
                d.device,
                d.driver,
                opt(&d.original.driver),
                opt(&d.original.driver_override),
                d.ids.0,
                d.ids.1
            )?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Lease {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(format!("does not start with {MAGIC:?}"));
        }
        let mut fields = std::collections::BTreeMap::new();
        let mut devices: Vec<LeasedDevice> = Vec::new();
        let driver_name = |v: &str| -> Result<Option<DriverName>, String> {
            if v == "-" {
                Ok(None)
            } else {
                DriverName::new(v)
                    .map(Some)
                    .ok_or_else(|| format!("bad driver name {v:?}"))
            }
        };
        for line in lines {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("bad line {line:?}"))?;
            if k == "member" {
                let parts: Vec<&str> = v.split(' ').collect();
                let [addr, target, orig, over, ids] = parts[..] else {
                    return Err(format!("bad member line {line:?}"));
                };
                let hex4 = |h: &str| {
                    (h.len() == 4 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                        .then(|| u16::from_str_radix(h, 16).ok())
                        .flatten()
                };
                let ids = ids
                    .split_once(':')
                    .and_then(|(v, d)| Some((hex4(v)?, hex4(d)?)))
                    .ok_or_else(|| format!("bad ids in {line:?}"))?;
                let device: PciAddress = addr.parse().map_err(|e| format!("{e}"))?;
                if devices.iter().any(|d| d.device == device) {
                    return Err(format!("{device} listed twice"));
                }
                devices.push(LeasedDevice {
                    device,
                    driver: target.parse().map_err(|e| format!("{e}"))?,
                    original: Original {
                        driver: driver_name(orig)?,
                        driver_override: driver_name(over)?,
                    },
                    ids,
                });
            } else if fields.insert(k, v).is_some() {
                return Err(format!("duplicate key {k:?}"));
            }
        }
        let mut take = |k: &str| fields.remove(k).ok_or_else(|| format!("missing {k}"));
        let number = |k: &str, v: &str| v.parse::<u64>().map_err(|_| format!("bad {k}"));
        let lease = Lease {
            group: take("group")?
                .parse()
                .map_err(|_| "bad group".to_string())?,
            owner_uid: take("owner_uid")?
                .parse()
                .map_err(|_| "bad owner_uid".to_string())?,
            owner_gid: take("owner_gid")?
                .parse()
                .map_err(|_| "bad owner_gid".to_string())?,
            phase: match take("phase")? {
                "intent" => Phase::Intent,
                "applied" => Phase::Applied,
                "releasing" => Phase::Releasing,
                other => return Err(format!("unknown phase {other:?}")),
            },
            since: number("since", take("since")?)?,
            updated: number("updated", take("updated")?)?,
            tied: match take("tied")? {
                "yes" => true,
                "no" => false,
                other => return Err(format!("bad tied {other:?}")),
            },
            devices,
        };
        if let Some(k) = fields.keys().next() {
            return Err(format!("unknown key {k:?}"));
        }
        if lease.devices.is_empty() {
            return Err("no members".into());
        }
        Ok(lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn lease(group: u32) -> Lease {
        Lease {
            group,
            owner_uid: 1000,
            owner_gid: 1000,
            phase: Phase::Intent,
            since: 1_764_000_000,
            updated: 1_764_000_001,
            tied: true,
            devices: vec![
                LeasedDevice {
                    device: "05:02.0".parse().unwrap(),
                    driver: Driver::VfioPci,
                    original: Original {
                        driver: None,
                        driver_override: None,
                    },
                    ids: (0x1234, 0x11e8),
                },
                LeasedDevice {
                    device: "05:01.0".parse().unwrap(),
                    driver: Driver::PciStub,
                    original: Original {
                        driver: DriverName::new("e1000"),
                        driver_override: DriverName::new("e1000"),
                    },
                    ids: (0x8086, 0x100e),
                },
            ],
        }
    }

    #[test]
    fn the_mutation_lock_excludes_another_holder_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let a = StateDir::open(dir.path()).unwrap();
        // A second open of the directory stands for a second helper process: its own open file
        // description of the lock file.
        let b = StateDir::open(dir.path()).unwrap();
        let held = a.lock_mutations().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _l = b.lock_mutations().unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "the second holder got the lock while the first held it"
        );
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the lock is free once the guard drops");
        waiter.join().unwrap();
    }

    #[test]
    fn records_round_trip_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        let mut l = lease(11);
        state.write(&l).unwrap();
        l.phase = Phase::Applied;
        state.write(&l).unwrap();
        assert_eq!(state.read(11).unwrap(), Some(l.clone()));
        assert_eq!(state.groups().unwrap(), vec![11]);
        let names: Vec<_> = std::fs::read_dir(state.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != LOCK_FILE)
            .collect();
        assert_eq!(names.len(), 1, "no temp file left: {names:?}");
        let (all, problems) = state.all();
        assert_eq!((all, problems.len()), (vec![l], 0));
        state.remove(11).unwrap();
        state.remove(11).unwrap();
        assert_eq!(state.read(11).unwrap(), None);
    }

    #[test]
    fn corrupt_and_foreign_records_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let path = tmp.path().join("group-11.lease");
        let good = lease(11).to_string();
        for bad in [
            "garbage".to_string(),
            good.replace("phase=intent", "phase=maybe"),
            good.clone() + "extra=1\n",
            good.replace("e1000 e1000", "../x e1000"),
            good.replace(
                "member=0000:05:02.0 vfio-pci - - 1234:11e8",
                "member=0000:05:02.0 vfio-pci - 1234:11e8",
            ),
            good.replace("0000:05:01.0", "0000:05:02.0"),
            good.replace("vfio-pci", "e1000e"),
            good.replace("1234:11e8", "1234:11e"),
            good.replace("tied=yes", "tied=maybe"),
            good.replace("updated=1764000001\n", ""),
            good.lines()
                .filter(|l| !l.starts_with("member"))
                .collect::<Vec<_>>()
                .join("\n"),
            lease(12).to_string(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            assert!(
                matches!(state.read(11), Err(StateError::Corrupt { .. })),
                "accepted:\n{bad}"
            );
        }
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert!(state.read(11).is_err(), "symlinks are not followed");
        let (_, problems) = state.all();
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn refuses_a_writable_directory() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            StateDir::open(tmp.path()),
            Err(StateError::DirMode { .. })
        ));
    }
}
