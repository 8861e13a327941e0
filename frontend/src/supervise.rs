//! Running the command of `vfio-gate run` while the lease is held.
//!
//! The lease lives as long as the connection to the helper, so this process must outlive the
//! command, then release, then exit with the command's status:
//!
//! - The terminal sends Ctrl-C (SIGINT) and Ctrl-\ (SIGQUIT) to the whole foreground process
//!   group, command included. This process catches them with a handler that does nothing.
//! - SIGTERM and SIGHUP sent to this process (by `kill`, by a closing terminal, by a service
//!   manager) are passed on to the command, which decides for both.
//! - SIGCHLD is set to its default, so that the command can be waited for even if this process
//!   was started with it ignored.
//! - The four signals are blocked from before the command is started until its pid is known, so
//!   none is lost in between. The command starts with the signal mask and the dispositions this
//!   process had before, restored in the child just before `exec` (the standard library leaves
//!   the mask as it is, and an ignored signal would stay ignored across `exec`): Ctrl-C stops
//!   the command as it would without vfio-gate, and a command started from a background job
//!   still ignores what a background job ignores.
//! - The command's exit is awaited without reaping it (`waitid` with `WNOWAIT`); the pid is
//!   forgotten before the process is reaped, so a late signal never reaches a recycled pid.
//! - Meanwhile a thread watches the connection: if the helper closes it while the command runs,
//!   the lease is over and the user is told at once.
//!
//! The socket is close-on-exec (as every descriptor the standard library opens), so the command
//! never holds the connection: when this process dies, even by SIGKILL, the connection closes and
//! the helper releases the devices.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::sys::socket::{MsgFlags, recv};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use crate::sys::{self, Catch, SavedAction};

/// The signals handled while the command runs: the two the terminal sends to the whole
/// foreground process group (kept away from this process), and the two passed on to the command.
const HANDLED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGHUP,
];

/// The signal handling of `vfio-gate run`, from just after the bind until the process exits.
/// Dropping it puts back the handlers and the signal mask found at [`Supervisor::install`].
#[derive(Debug)]
pub struct Supervisor {
    saved: Vec<SavedAction>,
    old_mask: SigSet,
    blocked: bool,
}

/// How the command ended.
#[derive(Debug)]
pub enum Outcome {
    /// It ran and ended with this status.
    Exited(ExitStatus),
    /// It could not be started.
    NotStarted(io::Error),
}

/// What [`Supervisor::run`] saw.
#[derive(Debug)]
pub struct Finished {
    pub outcome: Outcome,
    /// The helper closed the connection while the command ran (the lease is over).
    pub helper_closed: bool,
}

impl Supervisor {
    /// Blocks the four signals and installs their handlers. Call [`Supervisor::run`] next, which
    /// unblocks them once the command's pid is known.
    pub fn install() -> io::Result<Self> {
        let all: SigSet = HANDLED.into_iter().collect();
        let mut old_mask = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&all), Some(&mut old_mask))?;
        let mut me = Self {
            saved: Vec::new(),
            old_mask,
            blocked: true,
        };
        for (signal, how) in [
            (Signal::SIGINT, Catch::Nothing),
            (Signal::SIGQUIT, Catch::Nothing),
            (Signal::SIGTERM, Catch::Forward),
            (Signal::SIGHUP, Catch::Forward),
            (Signal::SIGCHLD, Catch::Default),
        ] {
            // Each handler runs with the four signals blocked, so they do not nest. On an error,
            // dropping `me` restores what was changed so far.
            me.saved.push(sys::catch(signal, how, all)?);
        }
        Ok(me)
    }

    /// Starts `command` (program and arguments) as this user, with this process's environment
    /// and standard streams, waits for it to end and watches `conn` meanwhile. `on_close` is
    /// called, once, as soon as the helper closes the connection while the command runs.
    pub fn run(
        &mut self,
        command: &[OsString],
        conn: &UnixStream,
        on_close: impl FnOnce() + Send,
    ) -> Finished {
        let spawned = match command.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args);
                sys::start_with(&mut cmd, self.saved.clone(), self.old_mask);
                cmd.spawn()
            }
            None => Err(io::Error::new(io::ErrorKind::InvalidInput, "no command")),
        };
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                self.unblock();
                return Finished {
                    outcome: Outcome::NotStarted(e),
                    helper_closed: false,
                };
            }
        };
        let pid = i32::try_from(child.id()).ok().map(Pid::from_raw);
        sys::forward_to(pid);
        // Signals that arrived since `install` are delivered now, and reach the command.
        self.unblock();
        let wake = UnixStream::pair().ok();
        let (waited, helper_closed) = std::thread::scope(|scope| {
            let watcher = wake.as_ref().map(|(_, quiet)| {
                let quiet = quiet.as_fd();
                scope.spawn(move || watch(conn.as_fd(), quiet, on_close))
            });
            if let Some(pid) = pid {
                wait_without_reaping(pid);
            }
            sys::forward_to(None);
            let waited = child.wait();
            if let Some((stop, _)) = &wake {
                let mut stop: &UnixStream = stop;
                let _ = stop.write_all(&[1]);
            }
            let closed = watcher.is_some_and(|w| w.join().unwrap_or(false));
            (waited, closed)
        });
        let outcome = match waited {
            Ok(status) => Outcome::Exited(status),
            // The command ran but could not be reaped (not expected): report a failure of it.
            Err(_) => Outcome::Exited(ExitStatus::from_raw(1 << 8)),
        };
        Finished {
            outcome,
            helper_closed,
        }
    }

    fn unblock(&mut self) {
        if self.blocked {
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
            self.blocked = false;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        sys::forward_to(None);
        for saved in self.saved.drain(..).rev() {
            sys::restore(&saved);
        }
        self.unblock();
    }
}

/// Returns once process `pid` (our child) has ended, leaving it to be reaped (`WNOWAIT`), so
/// that the standard library's wait still reaps it.
fn wait_without_reaping(pid: Pid) {
    while waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) == Err(Errno::EINTR) {}
}

/// Waits until the helper closes `conn` (returns true, after calling `on_close`) or `quiet`
/// becomes readable (returns false).
fn watch(conn: BorrowedFd<'_>, quiet: BorrowedFd<'_>, on_close: impl FnOnce()) -> bool {
    // A helper that closes its end makes the socket hang up (POLLHUP); one that only shuts down
    // its writing makes it readable with nothing to read (`peer_closed`). POLLRDHUP would say
    // the latter too, but nix 0.32 does not know the flag.
    let closed = PollFlags::POLLHUP | PollFlags::POLLERR;
    loop {
        let mut fds = [
            PollFd::new(conn, PollFlags::POLLIN),
            PollFd::new(quiet, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
        // `None` means bits nix does not know: stop watching, as for any answer not understood.
        if fds[1].revents() != Some(PollFlags::empty()) {
            return false;
        }
        let Some(r) = fds[0].revents() else {
            return false;
        };
        if r.intersects(closed) {
            on_close();
            return true;
        }
        if r.contains(PollFlags::POLLIN) && peer_closed(conn) {
            on_close();
            return true;
        }
        if !r.is_empty() {
            // Bytes nobody asked for, or a descriptor poll cannot watch: stop watching rather
            // than spin. The release that follows reports whatever is wrong.
            return false;
        }
    }
}

/// Whether a readable socket is readable because its peer closed it.
fn peer_closed(fd: BorrowedFd<'_>) -> bool {
    let mut byte = [0u8; 1];
    // MSG_PEEK leaves the data in the socket.
    recv(
        fd.as_raw_fd(),
        &mut byte,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) == Ok(0)
}

/// The exit status a shell would give: the command's code, or 128+N when signal N killed it.
pub fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return u8::try_from(code & 0xff).unwrap_or(1);
    }
    if let Some(signal) = status.signal() {
        return u8::try_from(128 + (signal & 0x7f)).unwrap_or(255);
    }
    1
}

/// The exit status for a command that could not be started, as a shell gives it: 127 when it was
/// not found, 126 otherwise (not executable, not a valid executable).
pub fn not_started_code(e: &io::Error) -> u8 {
    if e.kind() == io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_those_of_a_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(255 << 8)), 255);
        // Killed by SIGKILL (9), by SIGSEGV (11) with a core dump (0x80).
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(11 | 0x80)), 139);
        assert_eq!(not_started_code(&io::ErrorKind::NotFound.into()), 127);
        assert_eq!(
            not_started_code(&io::ErrorKind::PermissionDenied.into()),
            126
        );
    }

    #[test]
    fn the_watch_sees_the_helper_close_or_stop_writing_and_stops_when_told() {
        let (_stop, quiet) = UnixStream::pair().unwrap();
        let watched = |conn: &UnixStream| {
            let mut called = false;
            let seen = watch(conn.as_fd(), quiet.as_fd(), || called = true);
            (seen, called)
        };
        let (conn, helper) = UnixStream::pair().unwrap();
        drop(helper);
        assert_eq!(watched(&conn), (true, true), "closed");
        let (conn, helper) = UnixStream::pair().unwrap();
        helper.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(watched(&conn), (true, true), "shut down for writing");
        drop(helper);

        let (conn, _helper) = UnixStream::pair().unwrap();
        let (mut stop, quiet) = UnixStream::pair().unwrap();
        stop.write_all(&[1]).unwrap();
        assert!(!watch(conn.as_fd(), quiet.as_fd(), || panic!("not closed")));
    }
}
