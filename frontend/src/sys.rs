//! The frontend's only `unsafe` code: what the compiler cannot check, each block with the
//! argument that makes it sound. Everything else goes through nix's safe wrappers.
//!
//! - Signal handlers ([`catch`], [`restore`], [`start_with`]): installing a handler is unsafe
//!   because the handler may run between any two instructions of any thread, so it must be
//!   async-signal-safe. The only handlers installed are the two below, so the argument is made
//!   once, here, beside them; [`SavedAction`] can only be made by [`catch`], so putting one back
//!   puts back what the process had.
//! - What `vfio-gate run`'s command starts with ([`start_with`]): code that runs in the child
//!   between `fork` and `exec`.
//! - The local time ([`localtime`]): `localtime_r(3)`, which nix does not wrap.
//! - The running kernel's landlock ABI ([`landlock_abi`]): `landlock_create_ruleset(2)` with its
//!   version flag, for `vfio-gate doctor`; libc has only the raw system call.

#![allow(unsafe_code)]

use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, kill, sigaction, sigprocmask,
};
use nix::unistd::Pid;

/// The pid signals are passed on to ([`Catch::Forward`]), 0 when there is none.
static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

/// Sets the process that [`Catch::Forward`] passes signals on to, or with `None` stops passing
/// them on. Clear it before that process is reaped, so that a late signal never reaches a pid
/// the kernel has given to another process.
pub fn forward_to(pid: Option<Pid>) {
    FORWARD_TO.store(pid.map_or(0, Pid::as_raw), Ordering::SeqCst);
}

/// What a caught signal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catch {
    /// Nothing: the signal is caught and dropped. (Unlike an ignored signal, a caught one is
    /// back to its default in a program started by `exec`.)
    Nothing,
    /// Passed on to the process of [`forward_to`], if there is one.
    Forward,
    /// The default action.
    Default,
}

extern "C" fn do_nothing(_signal: libc::c_int) {}

extern "C" fn forward(signal: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::SeqCst);
    if pid > 0 {
        // kill(2) may set errno: keep the interrupted code's.
        let saved = Errno::last_raw();
        if let Ok(signal) = Signal::try_from(signal) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
        Errno::set_raw(saved);
    }
}

/// A signal's action before [`catch`] changed it, to put back with [`restore`].
#[derive(Debug, Clone, Copy)]
pub struct SavedAction {
    signal: Signal,
    action: SigAction,
}

/// Sets what `signal` does; `mask` is blocked while a handler runs. Interrupted system calls
/// are restarted. Returns the action it replaces.
pub fn catch(signal: Signal, how: Catch, mask: SigSet) -> nix::Result<SavedAction> {
    let handler = match how {
        Catch::Nothing => SigHandler::Handler(do_nothing),
        Catch::Forward => SigHandler::Handler(forward),
        Catch::Default => SigHandler::SigDfl,
    };
    let action = SigAction::new(handler, SaFlags::SA_RESTART, mask);
    // SAFETY: both handlers are async-signal-safe: `do_nothing` does nothing; `forward` reads an
    // atomic, converts an integer, calls kill(2) and saves and restores errno, and allocates
    // nothing. Neither takes the siginfo argument, and SA_SIGINFO is not set.
    let old = unsafe { sigaction(signal, &action) }?;
    Ok(SavedAction {
        signal,
        action: old,
    })
}

/// Puts back the action [`catch`] replaced. Errors are ignored: the action came from the kernel
/// for this very signal, so putting it back cannot be refused.
pub fn restore(saved: &SavedAction) {
    // SAFETY: this is the action the process had for this signal before `catch` (only `catch`
    // makes a SavedAction), so whatever handler it names was installed, and vouched for, by
    // whoever installed it first. sigaction(2) is async-signal-safe, as `start_with` needs.
    let _ = unsafe { sigaction(saved.signal, &saved.action) };
}

/// Makes the program `cmd` starts begin with `actions` put back and `mask` as its signal mask,
/// set in the child just before `exec` (the standard library leaves the mask as it is, and an
/// ignored signal would stay ignored across `exec`). Errors there are ignored.
pub fn start_with(cmd: &mut Command, actions: Vec<SavedAction>, mask: SigSet) {
    let child = move || {
        for saved in &actions {
            restore(saved);
        }
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&mask), None);
        Ok(())
    };
    // SAFETY: `child` runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: it makes only sigaction(2) and sigprocmask(2) calls, on values moved in
    // before the fork, and allocates nothing.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, child);
    }
}

/// `t` (seconds since the Unix epoch) broken down in the local time zone (`TZ`, else
/// `/etc/localtime`) by `localtime_r(3)`; `None` when the C library cannot convert it.
pub fn localtime(t: libc::time_t) -> Option<libc::tm> {
    let mut tm = libc::tm {
        tm_sec: 0,
        tm_min: 0,
        tm_hour: 0,
        tm_mday: 0,
        tm_mon: 0,
        tm_year: 0,
        tm_wday: 0,
        tm_yday: 0,
        tm_isdst: 0,
        tm_gmtoff: 0,
        tm_zone: std::ptr::null(),
    };
    // SAFETY: both pointers are valid for the duration of the call and do not alias;
    // `localtime_r` writes only to `tm` and is the thread-safe variant.
    let result = unsafe { libc::localtime_r(&t, &mut tm) };
    (!result.is_null()).then_some(tm)
}

/// `landlock_create_ruleset(2)`'s flag that asks for the highest landlock ABI the running kernel
/// supports instead of creating a ruleset (`LANDLOCK_CREATE_RULESET_VERSION`, which libc does not
/// define).
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

/// The running kernel's landlock ABI version (1, 2, …), or the errno that says why there is none:
/// `ENOSYS` (not built in), `EOPNOTSUPP` (built in, not enabled at boot). Creates nothing and
/// restricts nothing: the `landlock` crate asks the same question only on its way to sandboxing
/// the caller, which `vfio-gate doctor` must not be.
pub fn landlock_abi() -> Result<i32, Errno> {
    // SAFETY: with LANDLOCK_CREATE_RULESET_VERSION the kernel requires a null attribute pointer
    // and a zero size, reads and writes no memory of ours, and returns the ABI version or -1 with
    // errno; no descriptor is created.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        Err(Errno::last())
    } else {
        Ok(i32::try_from(v).unwrap_or(i32::MAX))
    }
}
