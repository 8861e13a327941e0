//! Where the listening socket comes from: systemd socket activation, or `--listen PATH`.
//!
//! Under socket activation PID 1 (or any activator speaking the same protocol) owns the socket and
//! passes it as fd 3 with `LISTEN_FDS=1` and `LISTEN_PID` set to our pid. A `LISTEN_PID` naming
//! another process means the variables were inherited by mistake: refuse rather than guess.
//! These are the only environment variables the helper reads.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::sys::socket::{SockType, UnixAddr, getsockname, getsockopt, sockopt};
use nix::sys::stat::{SFlag, fstat};

/// The first fd passed by socket activation (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// Why the helper has no socket to serve.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error(
        "no listening socket: start vfio-gated through its socket unit (systemctl start vfio-gate.socket) or pass --listen PATH"
    )]
    NoSocket,
    #[error(
        "LISTEN_PID is {found:?} but this process is {ours}: the activation variables are not meant for us"
    )]
    WrongPid { found: String, ours: u32 },
    #[error(
        "LISTEN_FDS is {0:?}; vfio-gated takes exactly one socket (ListenStream= once, Accept=no)"
    )]
    FdCount(String),
    #[error("both socket activation (LISTEN_FDS) and --listen were given; use one")]
    Ambiguous,
    #[error("fd 3 passed by the activator is not usable: {0}")]
    BadFd(String),
    #[error("binding {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
}

/// The activation variables, read once at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivationEnv {
    pub listen_pid: Option<String>,
    pub listen_fds: Option<String>,
}

impl ActivationEnv {
    pub fn from_process() -> Self {
        // Only these two variables are read; see the module docs.
        let var = |k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
        Self {
            listen_pid: var("LISTEN_PID"),
            listen_fds: var("LISTEN_FDS"),
        }
    }
}

/// Obtains the listening socket: `--listen PATH` if given, else the activation fd.
pub fn take_listener(
    listen: Option<&Path>,
    env: &ActivationEnv,
) -> Result<UnixListener, ActivationError> {
    match (listen, &env.listen_fds) {
        (Some(_), Some(_)) => Err(ActivationError::Ambiguous),
        (Some(path), None) => bind_path(path),
        (None, Some(fds)) => {
            let ours = std::process::id();
            match &env.listen_pid {
                Some(p) if p.parse::<u32>().ok() == Some(ours) => {}
                other => {
                    return Err(ActivationError::WrongPid {
                        found: other.clone().unwrap_or_default(),
                        ours,
                    });
                }
            }
            if fds != "1" {
                return Err(ActivationError::FdCount(fds.clone()));
            }
            let fd = crate::sys::take_inherited_fd(LISTEN_FDS_START)
                .ok_or_else(|| ActivationError::BadFd("not open".into()))?;
            check_listening_unix_socket(&fd)?;
            nix::fcntl::fcntl(
                &fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(|e| ActivationError::BadFd(e.to_string()))?;
            Ok(UnixListener::from(fd))
        }
        (None, None) => Err(ActivationError::NoSocket),
    }
}

fn check_listening_unix_socket(fd: &OwnedFd) -> Result<(), ActivationError> {
    let bad = |what: String| ActivationError::BadFd(what);
    let st = fstat(fd.as_fd()).map_err(|e| bad(e.to_string()))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(bad("not a socket".into()));
    }
    getsockname::<UnixAddr>(fd.as_raw_fd()).map_err(|e| bad(format!("not a Unix socket ({e})")))?;
    if getsockopt(fd, sockopt::SockType).map_err(|e| bad(e.to_string()))? != SockType::Stream {
        return Err(bad("not a stream socket".into()));
    }
    if !getsockopt(fd, sockopt::AcceptConn).map_err(|e| bad(e.to_string()))? {
        return Err(bad("not listening".into()));
    }
    Ok(())
}

fn bind_path(path: &Path) -> Result<UnixListener, ActivationError> {
    match std::fs::symlink_metadata(path) {
        // A stale socket from an earlier run: it is replaced below. Anything else is not ours.
        Ok(m) if m.file_type().is_socket() => {}
        Ok(_) => {
            return Err(ActivationError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(_) => {}
    }
    let bind_err = |source| ActivationError::Bind {
        path: path.to_owned(),
        source,
    };
    // Bind and listen under a temporary name, then rename into place: a client never finds the
    // path before the socket listens (bind and listen are two syscalls), nor finds it missing
    // while a stale socket is replaced.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(bind_err)?;
    // Anyone may connect; the policy decides what they may do.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            bind_err(e)
        })?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_without_any_socket() {
        assert!(matches!(
            take_listener(None, &ActivationEnv::default()),
            Err(ActivationError::NoSocket)
        ));
    }

    #[test]
    fn refuses_a_foreign_listen_pid_and_bad_counts() {
        let env = ActivationEnv {
            listen_pid: Some("1".into()),
            listen_fds: Some("1".into()),
        };
        assert!(matches!(
            take_listener(None, &env),
            Err(ActivationError::WrongPid { .. })
        ));
        let env = ActivationEnv {
            listen_pid: Some(std::process::id().to_string()),
            listen_fds: Some("2".into()),
        };
        assert!(matches!(
            take_listener(None, &env),
            Err(ActivationError::FdCount(_))
        ));
        let env = ActivationEnv {
            listen_pid: None,
            listen_fds: Some("1".into()),
        };
        assert!(matches!(
            take_listener(None, &env),
            Err(ActivationError::WrongPid { .. })
        ));
    }

    #[test]
    fn refuses_both_sources_and_non_socket_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let env = ActivationEnv {
            listen_pid: Some(std::process::id().to_string()),
            listen_fds: Some("1".into()),
        };
        assert!(matches!(
            take_listener(Some(&tmp.path().join("s")), &env),
            Err(ActivationError::Ambiguous)
        ));
        let file = tmp.path().join("f");
        std::fs::write(&file, "keep me").unwrap();
        assert!(matches!(
            take_listener(Some(&file), &ActivationEnv::default()),
            Err(ActivationError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }

    #[test]
    fn binds_a_path_and_replaces_a_stale_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.sock");
        drop(take_listener(Some(&path), &ActivationEnv::default()).unwrap());
        let l = take_listener(Some(&path), &ActivationEnv::default()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        drop(l);
    }
}
