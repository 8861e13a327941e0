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
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};

/// The pid of the running command, 0 when there is none (read by the signal handler).
static COMMAND_PID: AtomicI32 = AtomicI32::new(0);

/// The signals handled while the command runs: the two the terminal sends to the whole
/// foreground process group (kept away from this process), and the two passed on to the command.
const HANDLED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn do_nothing(_signal: libc::c_int) {}

extern "C" fn forward(signal: libc::c_int) {
    let pid = COMMAND_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: `__errno_location` returns this thread's errno slot, valid for the thread's
        // life; saving and restoring it keeps the interrupted code's errno intact.
        let saved = unsafe { *libc::__errno_location() };
        // SAFETY: kill is async-signal-safe and touches no memory of ours. `pid` is the
        // command's: it is set to 0 before the command is reaped, so it cannot have been reused.
        unsafe {
            libc::kill(pid, signal);
        }
        // SAFETY: as above.
        unsafe {
            *libc::__errno_location() = saved;
        }
    }
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before it is used.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; both calls only write to it, and cannot fail for valid
    // signal numbers.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// The signal handling of `vfio-gate run`, from just after the bind until the process exits.
/// Dropping it puts back the handlers and the signal mask found at [`Supervisor::install`].
#[derive(Debug)]
pub struct Supervisor {
    saved: Vec<(libc::c_int, libc::sigaction)>,
    old_mask: libc::sigset_t,
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
        let all = signal_set(&HANDLED);
        // SAFETY: as in signal_set.
        let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid sigset_t values; this only changes this thread's mask.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old_mask) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let mut me = Self {
            saved: Vec::new(),
            old_mask,
            blocked: true,
        };
        let do_nothing = do_nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
        let forward = forward as extern "C" fn(libc::c_int) as libc::sighandler_t;
        for (signal, handler) in [
            (libc::SIGINT, do_nothing),
            (libc::SIGQUIT, do_nothing),
            (libc::SIGTERM, forward),
            (libc::SIGHUP, forward),
            (libc::SIGCHLD, libc::SIG_DFL),
        ] {
            // SAFETY: sigaction is plain data; every field is set below or valid as zero.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = handler;
            // Restart interrupted system calls; no other flag (in particular not SA_SIGINFO: the
            // handlers take one argument).
            action.sa_flags = libc::SA_RESTART;
            // Each handler runs with the four signals blocked, so they do not nest.
            action.sa_mask = all;
            // SAFETY: as above.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: both pointers are valid; the handlers are async-signal-safe (one does
            // nothing, the other calls kill and touches errno and an atomic).
            if unsafe { libc::sigaction(signal, &action, &mut old) } != 0 {
                // Dropping `me` restores what was changed so far.
                return Err(io::Error::last_os_error());
            }
            me.saved.push((signal, old));
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
                let saved = self.saved.clone();
                let old_mask = self.old_mask;
                // SAFETY: the closure runs in the child between fork and exec, where only
                // async-signal-safe calls are allowed: it makes only sigaction and sigprocmask
                // calls, on values copied in before the fork, and allocates nothing.
                unsafe {
                    cmd.pre_exec(move || {
                        for (signal, old) in &saved {
                            libc::sigaction(*signal, old, std::ptr::null_mut());
                        }
                        libc::sigprocmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut());
                        Ok(())
                    });
                }
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
        let pid = child.id();
        COMMAND_PID.store(i32::try_from(pid).unwrap_or(0), Ordering::SeqCst);
        // Signals that arrived since `install` are delivered now, and reach the command.
        self.unblock();
        let wake = UnixStream::pair().ok();
        let (waited, helper_closed) = std::thread::scope(|scope| {
            let watcher = wake.as_ref().map(|(_, quiet)| {
                let quiet = quiet.as_raw_fd();
                scope.spawn(move || watch(conn.as_raw_fd(), quiet, on_close))
            });
            wait_without_reaping(pid);
            COMMAND_PID.store(0, Ordering::SeqCst);
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
            // SAFETY: `old_mask` is the valid mask saved by install; this only changes this
            // thread's mask.
            unsafe {
                libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut());
            }
            self.blocked = false;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        COMMAND_PID.store(0, Ordering::SeqCst);
        for (signal, old) in self.saved.drain(..).rev() {
            // SAFETY: `old` is what sigaction returned for this signal; restoring it is valid.
            unsafe {
                libc::sigaction(signal, &old, std::ptr::null_mut());
            }
        }
        self.unblock();
    }
}

/// Returns once process `pid` (our child) has ended, leaving it to be reaped.
fn wait_without_reaping(pid: u32) {
    let id: libc::id_t = pid;
    loop {
        // SAFETY: siginfo_t is plain data, written by waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is valid for writing; WNOWAIT leaves the child waitable, so the
        // standard library's wait still reaps it.
        let rc = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Waits until the helper closes `conn` (returns true, after calling `on_close`) or `quiet`
/// becomes readable (returns false).
fn watch(conn: RawFd, quiet: RawFd, on_close: impl FnOnce()) -> bool {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: conn,
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            },
            libc::pollfd {
                fd: quiet,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call; both
        // descriptors stay open until this thread is joined.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        if fds[1].revents != 0 {
            return false;
        }
        let r = fds[0].revents;
        if r & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 {
            on_close();
            return true;
        }
        if r & libc::POLLIN != 0 && peer_closed(conn) {
            on_close();
            return true;
        }
        if r != 0 {
            // Bytes nobody asked for, or a descriptor poll cannot watch: stop watching rather
            // than spin. The release that follows reports whatever is wrong.
            return false;
        }
    }
}

/// Whether a readable socket is readable because its peer closed it.
fn peer_closed(fd: RawFd) -> bool {
    let mut byte = [0u8; 1];
    // SAFETY: `byte` is valid for one byte of writing; MSG_PEEK leaves the data in the socket.
    let n = unsafe {
        libc::recv(
            fd,
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
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
}
