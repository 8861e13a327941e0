//! The helper's only unsafe code: the calls nix 0.32 does not wrap — `SO_PEERGROUPS`,
//! `PR_GET/SET_SECUREBITS`, `close_range(2)` — and taking ownership of the inherited activation
//! socket. The crate root denies `unsafe_code`; this module alone is allowed it, and each block
//! says why it is sound. (`no_new_privs` goes through `nix::sys::prctl`.)
//!
//! Safety assumptions, stated once: every pointer handed to the kernel points into a live Rust
//! buffer whose length is passed alongside it, and file descriptors are borrowed for the duration
//! of the call only, except [`take_inherited_fd`], which takes ownership of an fd the activator
//! passed us, exactly once.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The supplementary groups of the peer of a connected Unix socket (`SO_PEERGROUPS`, Linux 4.13),
/// as the kernel recorded them at `connect(2)`.
pub fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    const GID: usize = size_of::<libc::gid_t>();
    // NGROUPS_MAX is 65536; start small, grow to what the kernel says it needs.
    let mut buf: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = (buf.len() * GID) as libc::socklen_t;
        // SAFETY: `buf` is valid for writes of `len` bytes; the kernel writes at most `len` bytes
        // and stores the size it wrote (or needs, on ERANGE) in `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            buf.truncate(len as usize / GID);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        let needed = len as usize / GID;
        if err.raw_os_error() == Some(libc::ERANGE) && needed > buf.len() && needed <= 65536 {
            buf.resize(needed, 0);
            continue;
        }
        return Err(err);
    }
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of an inherited file descriptor (the activation socket, fd 3).
///
/// Returns `None` if it was already taken or `fd` is not open.
pub fn take_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return None;
    }
    nix::fcntl::fcntl(
        // SAFETY: fcntl(F_GETFD) only inspects the descriptor; an fd that is not open yields
        // EBADF, which we report as `None`.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .ok()?;
    // SAFETY: `fd` is open (checked above) and was passed to this process by its activator for
    // it to own; nothing else in the process refers to it, and TAKEN ensures one owner.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The process's securebits (`PR_GET_SECUREBITS`).
pub fn securebits() -> io::Result<u32> {
    // SAFETY: PR_GET_SECUREBITS takes no pointer arguments and only returns a value.
    let rc = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as u32)
    }
}

/// Sets the process's securebits (`PR_SET_SECUREBITS`; needs CAP_SETPCAP).
pub fn set_securebits(bits: u32) -> io::Result<()> {
    // SAFETY: PR_SET_SECUREBITS takes the bits by value; no memory is shared with the kernel.
    let rc = unsafe { libc::prctl(libc::PR_SET_SECUREBITS, libc::c_ulong::from(bits), 0, 0, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Closes every file descriptor from `first` to `last` inclusive (`close_range(2)`, Linux 5.9).
pub fn close_range(first: RawFd, last: RawFd) -> io::Result<()> {
    if first > last {
        return Ok(());
    }
    // SAFETY: close_range only closes descriptors. The caller passes a range that holds no
    // descriptor any Rust object owns (inherited ones that were never wrapped).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            last as libc::c_uint,
            0 as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
