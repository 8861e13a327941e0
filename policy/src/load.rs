//! Reading the policy files, with the checks sshd calls StrictModes.
//!
//! The files decide who may hand devices to their VMs, so whoever can write them — or replace
//! them — is as powerful as root. So:
//!
//! - The main file's directory is opened first, and everything else is opened *relative to that
//!   open directory* (`openat`): the main file, the `policy.d` directory beside it, and each
//!   drop-in relative to the open `policy.d`. Once a directory has been checked, no path is
//!   resolved again through a name someone could swap.
//! - Files are opened with `O_NOFOLLOW` and `policy.d` with `O_DIRECTORY | O_NOFOLLOW`, so a
//!   symlink is refused rather than followed, wherever it points.
//! - The checks run on the open descriptors (`fstat`): each file must be a regular file owned by
//!   the expected owner (root) and not writable by its group or others; each directory must be
//!   owned by the owner and not writable by its group or others (or someone else could put a
//!   file there, or rename one away).
//! - Any failure refuses the whole policy, naming the file. Nothing is ever skipped, except the
//!   entries of `policy.d` that are not drop-ins by name (hidden, or not ending in `.toml`).
//!
//! The system calls (`openat`, `fdopendir`/`readdir`) go through `nix`'s safe wrappers, so the
//! crate holds no `unsafe` code.

use std::ffi::OsStr;
use std::fs::{File, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{self, OFlag};
use nix::sys::stat::Mode;

use crate::diagnostic::line_of;
use crate::error::PolicyError;

/// The largest policy file read. Real policies are a few kilobytes; the bound keeps a mistaken
/// path (a log, a disk image) from being read into the helper's memory.
pub const MAX_POLICY_SIZE: u64 = 1 << 20;

/// The drop-in directory's name, beside the main policy file.
pub const DROP_IN_DIR: &str = "policy.d";

/// How policy files are opened: never through a symlink; a FIFO must not hang the helper
/// (fstat then refuses it); never as a controlling terminal.
const FILE_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_CLOEXEC);

/// How `policy.d` is opened: a directory, and not through a symlink.
const DROP_IN_DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// How an open directory is opened again (as `.`) to list it: the directory itself.
const LIST_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// One policy file as read: its path as shown in messages and rule references, and its text.
pub(crate) type SourceText = (String, String);

/// Opens, checks and reads the policy at `path` and its drop-ins, in load order: the main file,
/// then `policy.d/*.toml` beside it in byte order of their names. Every file and both
/// directories must be owned by `owner` (root in production) and not group/world-writable.
pub(crate) fn read_policy(path: &Path, owner: u32) -> Result<Vec<SourceText>, PolicyError> {
    let open_error = |source| PolicyError::Open {
        path: path.to_owned(),
        source,
    };
    let name = path.file_name().ok_or_else(|| {
        open_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "that is not the path of a file",
        ))
    })?;
    let dir_path = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // A directory that cannot be opened is reported as the file that cannot be, which is what
    // the admin asked for (and the hint says to create it).
    let dir = Dir::open(dir_path).map_err(open_error)?;

    // The file first, then its directory: the checks are all made before anything is used,
    // and the file's own problems are the likelier ones, so they are reported first.
    let main = dir
        .open_at(name, FILE_FLAGS)
        .map_err(|e| file_open_error(path, e))?;
    let text = check_and_read(main, path, owner)?;
    check_dir(&dir, dir_path, owner)?;
    let mut files = vec![(path.display().to_string(), text)];

    let drop_in_path = path.with_file_name(DROP_IN_DIR);
    let Some(drop_ins) = open_drop_in_dir(&dir, &drop_in_path)? else {
        return Ok(files);
    };
    check_dir(&drop_ins, &drop_in_path, owner)?;
    let names = drop_ins.entries().map_err(|source| PolicyError::DirRead {
        path: drop_in_path.clone(),
        source,
    })?;
    for name in drop_in_names(names) {
        let file_path = drop_in_path.join(OsStr::from_bytes(&name));
        if std::str::from_utf8(&name).is_err() {
            return Err(PolicyError::Open {
                path: file_path,
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    "its name is not valid UTF-8, so it cannot be cited in decisions: rename it",
                ),
            });
        }
        let file = drop_ins
            .open_at(OsStr::from_bytes(&name), FILE_FLAGS)
            .map_err(|e| file_open_error(&file_path, e))?;
        let text = check_and_read(file, &file_path, owner)?;
        files.push((file_path.display().to_string(), text));
    }
    Ok(files)
}

/// The entries of `policy.d` that are drop-ins, in load order: names ending in `.toml` and not
/// starting with `.` (editor swap files, `.#lock` files, `.` and `..`), sorted by their bytes
/// (so the order is the same in every locale). Everything else is ignored by name alone; a
/// drop-in by name that is not a readable regular file refuses the policy.
fn drop_in_names(mut names: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    names.retain(|n| !n.starts_with(b".") && n.ends_with(b".toml"));
    names.sort();
    names
}

/// Checks an open policy file — a regular file owned by `owner`, not writable by its group or
/// others, at most [`MAX_POLICY_SIZE`] bytes — and reads it.
fn check_and_read(mut file: File, path: &Path, owner: u32) -> Result<String, PolicyError> {
    let meta = file.metadata().map_err(|source| PolicyError::Stat {
        path: path.to_owned(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(PolicyError::NotRegularFile {
            path: path.to_owned(),
            kind: describe(meta.file_type()),
        });
    }
    if meta.uid() != owner {
        return Err(PolicyError::NotOwnedByRoot {
            path: path.to_owned(),
            uid: meta.uid(),
        });
    }
    // With a POSIX ACL the group bits are the ACL mask, so a named user or group with write
    // access also sets 0o020 and is refused here.
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(PolicyError::WritableByOthers {
            path: path.to_owned(),
            mode,
        });
    }
    let too_large = || PolicyError::TooLarge {
        path: path.to_owned(),
        limit: MAX_POLICY_SIZE,
    };
    if meta.len() > MAX_POLICY_SIZE {
        return Err(too_large());
    }
    // Bounded even though the size was checked: the file may grow between fstat and read.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&mut file)
        .take(MAX_POLICY_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > MAX_POLICY_SIZE {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        PolicyError::NotUtf8 {
            file: path.display().to_string(),
            // `valid` is a valid UTF-8 prefix, so this conversion cannot fail.
            line: line_of(std::str::from_utf8(valid).unwrap_or(""), valid.len()),
        }
    })
}

/// Checks an open directory that holds policy files: owned by `owner`, not writable by its
/// group or others (who could otherwise add, replace or remove the files in it).
fn check_dir(dir: &Dir, path: &Path, owner: u32) -> Result<(), PolicyError> {
    let meta = dir.0.metadata().map_err(|source| PolicyError::DirOpen {
        path: path.to_owned(),
        source,
    })?;
    if !meta.file_type().is_dir() {
        return Err(PolicyError::NotADirectory {
            path: path.to_owned(),
            kind: describe(meta.file_type()),
        });
    }
    if meta.uid() != owner {
        return Err(PolicyError::DirNotOwnedByRoot {
            path: path.to_owned(),
            uid: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(PolicyError::DirWritableByOthers {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Opens `policy.d` relative to the main file's open directory; `None` if there is none.
fn open_drop_in_dir(dir: &Dir, path: &Path) -> Result<Option<Dir>, PolicyError> {
    match dir.open_at(OsStr::new(DROP_IN_DIR), DROP_IN_DIR_FLAGS) {
        Ok(file) => Ok(Some(Dir(file))),
        Err(e) => match errno(&e) {
            Some(Errno::ENOENT) => Ok(None),
            // O_NOFOLLOW with O_DIRECTORY: a symlink fails with ENOTDIR (or ELOOP on some
            // kernels), like anything else that is not a directory. Refused either way; the
            // file type only words the message.
            Some(Errno::ELOOP | Errno::ENOTDIR) => {
                let kind = path
                    .symlink_metadata()
                    .map_or("file", |m| describe(m.file_type()));
                Err(if kind == "symbolic link" {
                    PolicyError::DirSymlink {
                        path: path.to_owned(),
                    }
                } else {
                    PolicyError::NotADirectory {
                        path: path.to_owned(),
                        kind,
                    }
                })
            }
            _ => Err(PolicyError::DirOpen {
                path: path.to_owned(),
                source: e,
            }),
        },
    }
}

fn file_open_error(path: &Path, source: io::Error) -> PolicyError {
    // The name is opened relative to its directory, so it is a single component: O_NOFOLLOW's
    // ELOOP can only mean the file itself is a symlink.
    if errno(&source) == Some(Errno::ELOOP) {
        PolicyError::Symlink {
            path: path.to_owned(),
        }
    } else {
        PolicyError::Open {
            path: path.to_owned(),
            source,
        }
    }
}

fn describe(t: FileType) -> &'static str {
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// An open directory: the anchor every further open is made relative to.
struct Dir(File);

impl Dir {
    /// Opens the directory at `path` (following symlinks on the way: what is checked is the
    /// directory reached, through its open descriptor).
    fn open(path: &Path) -> io::Result<Dir> {
        OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).bits())
            .open(path)
            .map(Dir)
    }

    /// `openat(2)` of the single component `name` relative to this directory.
    fn open_at(&self, name: &OsStr, flags: OFlag) -> io::Result<File> {
        if name.as_bytes().contains(&b'/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a single path component",
            ));
        }
        if name.as_bytes().contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the name contains a NUL byte",
            ));
        }
        // No O_CREAT in any of the flags used here, so the mode is never read.
        let fd = fcntl::openat(self.0.as_fd(), name, flags, Mode::empty())?;
        Ok(File::from(fd))
    }

    /// The names in this directory (`.` and `..` included), in the order the kernel gives them.
    fn entries(&self) -> io::Result<Vec<Vec<u8>>> {
        // A second descriptor for the same directory (with its own offset), for the stream to
        // own: reopening "." relative to the open directory reaches the same directory.
        let mut stream = nix::dir::Dir::openat(self.0.as_fd(), ".", LIST_FLAGS, Mode::empty())?;
        let names = stream
            .iter()
            .map(|entry| Ok(entry?.file_name().to_bytes().to_vec()))
            .collect::<nix::Result<Vec<Vec<u8>>>>()?;
        Ok(names)
    }
}

/// The errno behind an I/O error, if it came from a system call.
fn errno(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::io;
    use std::os::unix::ffi::OsStrExt;

    use super::{Dir, FILE_FLAGS, drop_in_names};

    #[test]
    fn a_directory_is_listed_whole() {
        // More names than one getdents(2) buffer holds, so the stream is read in several calls.
        let tmp = tempfile::tempdir().unwrap();
        let mut want: Vec<Vec<u8>> = (0..600)
            .map(|i| format!("{i:04}-a-drop-in-with-a-rather-long-name-to-fill-the-buffer.toml"))
            .map(String::into_bytes)
            .collect();
        for name in &want {
            std::fs::write(tmp.path().join(OsStr::from_bytes(name)), "").unwrap();
        }
        let dir = Dir::open(tmp.path()).unwrap();
        let mut got = dir.entries().unwrap();
        // Listing again gives the same names: each listing has its own descriptor and offset.
        let mut again = dir.entries().unwrap();
        want.extend([b".".to_vec(), b"..".to_vec()]);
        want.sort();
        got.sort();
        again.sort();
        assert_eq!(got, want);
        assert_eq!(again, want);
    }

    #[test]
    fn only_single_components_are_opened() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        std::fs::write(tmp.path().join("sub/f.toml"), "").unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        let names: [&[u8]; 3] = [b"sub/f.toml", b"/etc/passwd", b"f\0.toml"];
        for name in names {
            let err = dir
                .open_at(OsStr::from_bytes(name), FILE_FLAGS)
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}: {err}");
        }
    }

    #[test]
    fn drop_ins_by_name_in_byte_order() {
        let names: Vec<Vec<u8>> = [
            "b.toml",
            ".",
            "..",
            "a.toml",
            ".hidden.toml",
            "README",
            "10-x.toml",
            "9-x.toml",
            "Z.toml",
            "x.toml~",
            "x.toml.rpmsave",
            "x.TOML",
            ".toml",
            "é.toml",
            "toml",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let got: Vec<String> = drop_in_names(names)
            .into_iter()
            .map(|n| String::from_utf8(n).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                "10-x.toml",
                "9-x.toml",
                "Z.toml",
                "a.toml",
                "b.toml",
                "é.toml"
            ]
        );
    }
}
