//! `runas USER CMD [ARGS…]`: run a command as USER, with all of USER's groups.
//!
//! Like `su USER -c`, without a shell in between and without NSS: the user comes from
//! `/etc/passwd`, the supplementary groups from every `/etc/group` line listing the user. Sets
//! the groups, then the gid, then the uid (the order that keeps the right to change each),
//! sets `HOME`, `USER` and `LOGNAME`, and execs CMD (searched in `PATH`). Must run as root.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
use vfio_gate_tests::users::{find_user, groups_of};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args[0].starts_with('-') {
        eprintln!("usage: runas USER CMD [ARGS...]");
        return ExitCode::from(2);
    }
    match run(&args[0], &args[1], &args[2..]) {
        // `run` only returns on failure: exec replaced the process otherwise.
        Err(e) => {
            eprintln!("runas: {e}");
            ExitCode::from(126)
        }
    }
}

fn run(name: &str, cmd: &str, args: &[String]) -> Result<std::convert::Infallible, String> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("reading {p}: {e}"));
    let user = find_user(&read("/etc/passwd")?, name)
        .ok_or_else(|| format!("no user {name:?} in /etc/passwd"))?;
    let gids: Vec<Gid> = groups_of(&read("/etc/group")?, &user)
        .into_iter()
        .map(Gid::from_raw)
        .collect();
    let gid = Gid::from_raw(user.gid);
    let uid = Uid::from_raw(user.uid);
    setgroups(&gids).map_err(|e| format!("setgroups({gids:?}): {e} (runas must run as root)"))?;
    setresgid(gid, gid, gid).map_err(|e| format!("setresgid({gid}): {e}"))?;
    setresuid(uid, uid, uid).map_err(|e| format!("setresuid({uid}): {e}"))?;
    let err = Command::new(cmd)
        .args(args)
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("SHELL", &user.shell)
        .exec();
    Err(format!("cannot run {cmd}: {err}"))
}
