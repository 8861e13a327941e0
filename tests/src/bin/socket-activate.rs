//! `socket-activate --socket PATH [OPTIONS] -- PROG [ARGS…]`: socket activation as systemd does
//! it for an `Accept=no` socket unit, for the busybox test guest.
//!
//! Binds and listens on PATH (mode 0666 by default) once, and keeps the socket for its whole
//! life. Then, forever: wait until a client is queued on the socket, start PROG with the
//! listening socket as fd 3 and `LISTEN_FDS=1`, `LISTEN_PID=<PROG's pid>`, `LISTEN_FDNAMES`, wait
//! for PROG to exit (idle timeout, crash, kill), log how it ended, and wait for the next client.
//! Clients that arrive while PROG is stopped stay queued in the socket's backlog, so none is
//! lost between two activations.
//!
//! A PROG that exits while clients are still queued (it fails at start-up, say) is restarted
//! with a growing delay, up to 2 s, instead of in a tight loop.
//!
//! Options: `--mode OCTAL` (socket file mode), `--fdname NAME` (`LISTEN_FDNAMES`, default
//! `vfio-gate.socket`), `--pidfile FILE` (PROG's pid while it runs). Log lines go to stdout.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, execve, fork, getpid};

/// The fd systemd passes the first socket as (`SD_LISTEN_FDS_START`).
const LISTEN_FD: i32 = 3;

struct Options {
    socket: String,
    mode: u32,
    fdname: String,
    pidfile: Option<String>,
    program: Vec<String>,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: socket-activate --socket PATH [--mode OCTAL] [--fdname NAME] [--pidfile FILE] -- PROG [ARGS...]"
    );
    ExitCode::from(2)
}

fn parse() -> Option<Options> {
    let mut args = std::env::args().skip(1);
    let mut o = Options {
        socket: String::new(),
        mode: 0o666,
        fdname: "vfio-gate.socket".into(),
        pidfile: None,
        program: Vec::new(),
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--socket" => o.socket = args.next()?,
            "--mode" => o.mode = u32::from_str_radix(&args.next()?, 8).ok()?,
            "--fdname" => o.fdname = args.next()?,
            "--pidfile" => o.pidfile = Some(args.next()?),
            "--" => {
                o.program = args.collect();
                break;
            }
            _ => return None,
        }
    }
    (!o.socket.is_empty() && !o.program.is_empty()).then_some(o)
}

fn log(msg: &str) {
    let up = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let up = up.split_whitespace().next().unwrap_or("?");
    println!("[{up}] socket-activate: {msg}");
}

fn main() -> ExitCode {
    let Some(o) = parse() else {
        return usage();
    };
    match serve(&o) {
        Ok(never) => match never {},
        Err(e) => {
            log(&format!("error: {e}"));
            ExitCode::FAILURE
        }
    }
}

fn serve(o: &Options) -> Result<std::convert::Infallible, String> {
    if std::fs::symlink_metadata(&o.socket).is_ok_and(|m| m.file_type().is_socket()) {
        // A socket file left by an earlier instance: nobody listens on it any more.
        let _ = std::fs::remove_file(&o.socket);
    }
    let listener =
        UnixListener::bind(&o.socket).map_err(|e| format!("binding {}: {e}", o.socket))?;
    std::fs::set_permissions(&o.socket, std::fs::Permissions::from_mode(o.mode))
        .map_err(|e| format!("chmod {}: {e}", o.socket))?;
    log(&format!("listening on {} (mode {:o})", o.socket, o.mode));

    // Everything exec needs, prepared before any fork.
    let program: Vec<CString> = o
        .program
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| format!("NUL in argument {a:?}")))
        .collect::<Result<_, _>>()?;
    let mut backoff = Duration::ZERO;
    loop {
        wait_readable(listener.as_fd())?;
        let started = Instant::now();
        let child = spawn(&listener, &program, &o.fdname)?;
        log(&format!("activated {} as pid {child}", o.program[0]));
        if let Some(p) = &o.pidfile {
            let _ = std::fs::write(p, format!("{child}\n"));
        }
        let status = loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => break format!("exit status {code}"),
                Ok(WaitStatus::Signaled(_, sig, _)) => break format!("killed by {sig:?}"),
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("waitpid({child}): {e}")),
            }
        };
        if let Some(p) = &o.pidfile {
            let _ = std::fs::remove_file(p);
        }
        let pending = is_readable(listener.as_fd(), PollTimeout::ZERO)?;
        log(&format!(
            "pid {child} ended after {:.3} s: {status}{}",
            started.elapsed().as_secs_f64(),
            if pending {
                "; clients still queued"
            } else {
                ""
            }
        ));
        // Restarting at once a program that ends while clients wait would spin.
        backoff = if pending {
            (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(2))
        } else {
            Duration::ZERO
        };
        std::thread::sleep(backoff);
    }
}

fn is_readable(fd: BorrowedFd<'_>, timeout: PollTimeout) -> Result<bool, String> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(format!("poll: {e}")),
    }
}

fn wait_readable(fd: BorrowedFd<'_>) -> Result<(), String> {
    while !is_readable(fd, PollTimeout::NONE)? {}
    Ok(())
}

/// Forks and execs the service with the listener as fd 3.
fn spawn(listener: &UnixListener, program: &[CString], fdname: &str) -> Result<Pid, String> {
    // SAFETY: this program is single-threaded (no thread is ever started), so the child of
    // `fork` may run ordinary code, allocation included, until it execs.
    match unsafe { fork() } {
        Err(e) => Err(format!("fork: {e}")),
        Ok(ForkResult::Parent { child }) => Ok(child),
        Ok(ForkResult::Child) => {
            let err = exec_service(listener, program, fdname);
            eprintln!("socket-activate: cannot start {:?}: {err}", program[0]);
            std::process::exit(127)
        }
    }
}

/// In the forked child: put the socket on fd 3, set the environment, exec. Returns only on error.
fn exec_service(listener: &UnixListener, program: &[CString], fdname: &str) -> String {
    let fd = listener.as_raw_fd();
    if fd == LISTEN_FD {
        // dup2 onto itself would keep close-on-exec set.
        if let Err(e) = fcntl(listener.as_fd(), FcntlArg::F_SETFD(FdFlag::empty())) {
            return format!("clearing close-on-exec on fd 3: {e}");
        }
    } else {
        // SAFETY: plain dup2 on integers: `fd` is the listener, open for the whole call; fd 3
        // is not owned by any Rust object in this process (stdio is 0-2 and the listener is
        // the only other fd we open), so replacing it invalidates nothing. The new fd has
        // close-on-exec cleared, as the service needs.
        if unsafe { nix::libc::dup2(fd, LISTEN_FD) } != LISTEN_FD {
            return format!("dup2 to fd 3: {}", std::io::Error::last_os_error());
        }
    }
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| !k.as_bytes().starts_with(b"LISTEN_"))
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    for kv in [
        "LISTEN_FDS=1".to_string(),
        format!("LISTEN_PID={}", getpid()),
        format!("LISTEN_FDNAMES={fdname}"),
    ] {
        env.push(CString::new(kv).expect("no NUL"));
    }
    match execve(&program[0], program, &env) {
        Err(e) => e.to_string(),
        Ok(never) => match never {},
    }
}
