//! Reading the policy file, with the checks sshd calls StrictModes.
//!
//! The file decides who may hand devices to their VMs, so whoever can write it is as powerful as
//! root. The checks run on the *open* file descriptor (`fstat`), not on the path, so the file
//! cannot be swapped between the check and the read; the final path component is opened with
//! `O_NOFOLLOW`, so a symlink is refused rather than followed somewhere else.

use std::fs::{File, FileType, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::error::PolicyError;
use crate::parse::line_of;

/// The largest policy file read. Real policies are a few kilobytes; the bound keeps a mistaken
/// path (a log, a disk image) from being read into the helper's memory.
pub const MAX_POLICY_SIZE: u64 = 1 << 20;

/// Opens, checks and reads `path`, which must be owned by `owner` (root in production).
pub(crate) fn read_checked(path: &Path, owner: u32) -> Result<String, PolicyError> {
    let mut file = open_no_follow(path)?;
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

fn open_no_follow(path: &Path) -> Result<File, PolicyError> {
    OpenOptions::new()
        .read(true)
        // O_NONBLOCK: opening a FIFO must not hang the helper; fstat then refuses it.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| {
            // O_NOFOLLOW reports a symlink as ELOOP; tell that apart from a real loop.
            let is_link = source.raw_os_error() == Some(libc::ELOOP)
                && path
                    .symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink());
            if is_link {
                PolicyError::Symlink {
                    path: path.to_owned(),
                }
            } else {
                PolicyError::Open {
                    path: path.to_owned(),
                    source,
                }
            }
        })
}

fn describe(t: FileType) -> &'static str {
    if t.is_dir() {
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
