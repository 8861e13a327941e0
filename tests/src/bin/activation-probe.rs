//! `activation-probe --log FILE [--stay]`: a stand-in service for testing socket activation.
//!
//! Started by `socket-activate` (or systemd), it appends one line to FILE saying what it was
//! given — `pid=… listen_pid_ok=yes|no fds=… names=… fd3_listening=yes|no` — then accepts one
//! connection and closes it, and exits (or, with `--stay`, keeps accepting until killed). The
//! guest's own tests use it to check the activation harness without the real helper.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::process::ExitCode;

use nix::sys::socket::{getsockopt, sockopt};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut log, mut stay) = (None, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--log" => log = args.next(),
            "--stay" => stay = true,
            _ => log = None,
        }
    }
    let Some(log) = log else {
        eprintln!("usage: activation-probe --log FILE [--stay]");
        return ExitCode::from(2);
    };

    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let pid = std::process::id();
    let listen_pid_ok = var("LISTEN_PID") == pid.to_string();
    let fds = var("LISTEN_FDS");
    let ours = listen_pid_ok && fds == "1";
    // SAFETY: fd 3 is ours only when LISTEN_PID names this process and LISTEN_FDS=1 (the
    // sd_listen_fds contract); otherwise it is not touched. Nothing else in this process owns it.
    let listener = ours.then(|| unsafe { OwnedFd::from_raw_fd(3) });
    let listening = listener
        .as_ref()
        .is_some_and(|fd| getsockopt(fd, sockopt::AcceptConn).unwrap_or(false));
    let line = format!(
        "pid={pid} listen_pid_ok={} fds={fds} names={} fd3_listening={}\n",
        yes(listen_pid_ok),
        var("LISTEN_FDNAMES"),
        yes(listening)
    );
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("activation-probe: writing {log}: {e}");
        return ExitCode::FAILURE;
    }
    let Some(fd) = listener.filter(|_| listening) else {
        return ExitCode::FAILURE;
    };
    let listener = UnixListener::from(fd);
    loop {
        match listener.accept() {
            Ok((conn, _)) => drop(conn),
            Err(e) => {
                eprintln!("activation-probe: accept: {e}");
                return ExitCode::FAILURE;
            }
        }
        if !stay {
            return ExitCode::SUCCESS;
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
