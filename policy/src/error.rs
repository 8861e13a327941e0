//! Why a policy was refused. Every message names the file (and line, when there is one) and the
//! next step, because the reader is an admin looking at a helper that refused to start.

use std::io;
use std::path::PathBuf;

/// A policy that could not be loaded. The helper serves nothing while its policy is bad.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot open the policy file {}: {source}{}", path.display(), open_hint(source))]
    Open { path: PathBuf, source: io::Error },

    #[error(
        "the policy file {} is a symbolic link, which is not followed: replace the link with \
         the file itself (root-owned, mode 644)",
        path.display()
    )]
    Symlink { path: PathBuf },

    #[error("cannot stat the policy file {}: {source}", path.display())]
    Stat { path: PathBuf, source: io::Error },

    #[error(
        "the policy file {} is a {kind}, not a regular file: point the helper at the policy \
         file itself",
        path.display()
    )]
    NotRegularFile { path: PathBuf, kind: &'static str },

    #[error(
        "the policy file {} is owned by uid {uid}, not root, so that user could grant \
         themselves any device: run `chown root:root {0} && chmod 644 {0}`",
        path.display()
    )]
    NotOwnedByRoot { path: PathBuf, uid: u32 },

    #[error(
        "the policy file {} has mode {mode:04o}: it is writable by {}, who could grant \
         themselves any device: run `chmod go-w {0}`",
        path.display(),
        writable_by(*mode)
    )]
    WritableByOthers { path: PathBuf, mode: u32 },

    #[error(
        "the policy file {} is larger than {limit} bytes, which no policy needs: check that \
         this is the right file",
        path.display()
    )]
    TooLarge { path: PathBuf, limit: u64 },

    #[error("cannot read the policy file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error("{file}:{line}: the policy is not valid UTF-8: save it as UTF-8")]
    NotUtf8 { file: String, line: u32 },

    #[error("{file}:{line}: TOML syntax error: {message}")]
    Syntax {
        file: String,
        line: u32,
        message: String,
    },

    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: u32,
        message: String,
    },

    #[error("cannot open the policy directory {}: {source}", path.display())]
    DirOpen { path: PathBuf, source: io::Error },

    #[error(
        "the policy directory {} is a symbolic link, which is not followed: replace the link \
         with the directory itself (root-owned, mode 755)",
        path.display()
    )]
    DirSymlink { path: PathBuf },

    #[error(
        "{} is a {kind}, not a directory: drop-ins go in the directory policy.d next to the \
         main policy file; move it away",
        path.display()
    )]
    NotADirectory { path: PathBuf, kind: &'static str },

    #[error(
        "the policy directory {} is owned by uid {uid}, not root, so that user could replace \
         the policy files in it: run `chown root:root {0} && chmod 755 {0}`",
        path.display()
    )]
    DirNotOwnedByRoot { path: PathBuf, uid: u32 },

    #[error(
        "the policy directory {} has mode {mode:04o}: it is writable by {}, who could replace \
         the policy files in it: run `chmod go-w {0}`",
        path.display(),
        writable_by(*mode)
    )]
    DirWritableByOthers { path: PathBuf, mode: u32 },

    #[error("cannot list the policy directory {}: {source}", path.display())]
    DirRead { path: PathBuf, source: io::Error },

    #[error(
        "{file}:{line}: policy version {version} is not supported: this vfio-gate reads \
         version 1 (write `version = 1`, or install the vfio-gate release that wrote this file)"
    )]
    UnsupportedVersion {
        file: String,
        line: u32,
        version: i64,
    },
}

impl PolicyError {
    /// The line the error points at, for errors about the policy's content.
    pub fn line(&self) -> Option<u32> {
        match self {
            PolicyError::NotUtf8 { line, .. }
            | PolicyError::Syntax { line, .. }
            | PolicyError::Invalid { line, .. }
            | PolicyError::UnsupportedVersion { line, .. } => Some(*line),
            _ => None,
        }
    }

    /// The file or directory the error is about, as it appears in the message.
    pub fn file(&self) -> String {
        match self {
            PolicyError::Open { path, .. }
            | PolicyError::Symlink { path }
            | PolicyError::Stat { path, .. }
            | PolicyError::NotRegularFile { path, .. }
            | PolicyError::NotOwnedByRoot { path, .. }
            | PolicyError::WritableByOthers { path, .. }
            | PolicyError::TooLarge { path, .. }
            | PolicyError::Read { path, .. }
            | PolicyError::DirOpen { path, .. }
            | PolicyError::DirSymlink { path }
            | PolicyError::NotADirectory { path, .. }
            | PolicyError::DirNotOwnedByRoot { path, .. }
            | PolicyError::DirWritableByOthers { path, .. }
            | PolicyError::DirRead { path, .. } => path.display().to_string(),
            PolicyError::NotUtf8 { file, .. }
            | PolicyError::Syntax { file, .. }
            | PolicyError::Invalid { file, .. }
            | PolicyError::UnsupportedVersion { file, .. } => file.clone(),
        }
    }
}

fn open_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => {
            " (create it, root-owned and mode 644; a file holding only `version = 1` denies everything)"
        }
        io::ErrorKind::PermissionDenied => " (the helper must run as root to read it)",
        _ => "",
    }
}

fn writable_by(mode: u32) -> &'static str {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "its group and everyone",
        (true, false) => "its group",
        _ => "everyone",
    }
}
