//! Confinement of the helper, applied once at start-up before the first byte from a client is
//! read: inherited file descriptors closed ([`close_inherited_fds`]), capabilities reduced to
//! CAP_CHOWN with the securebits locked ([`caps`]), then a landlock domain that allows only the
//! files the helper reads and writes ([`landlock`]).
//!
//! Why CAP_CHOWN and nothing else: the sysfs files the helper writes (`driver_override`,
//! `unbind`, `drivers_probe`) and its state directory belong to root, and the helper runs as uid
//! 0, so ordinary permission checks let it write them; handing `/dev/vfio/<group>` to a user is a
//! `chown`, which needs CAP_CHOWN. Nothing needs CAP_DAC_OVERRIDE: the helper changes a node's
//! mode only while it owns the node, and takes a node back (chown to root) before opening it.

pub mod caps;
pub mod landlock;

use std::os::fd::{AsRawFd, RawFd};

/// Closes every descriptor the helper inherited except stdin/stdout/stderr and `keep` (the
/// listening socket): whatever an activator or a parent left open is not the helper's. Call it
/// before opening anything else.
pub fn close_inherited_fds(keep: &impl AsRawFd) -> std::io::Result<()> {
    let keep: RawFd = keep.as_raw_fd();
    crate::sys::close_range(3, keep - 1)?;
    crate::sys::close_range(keep.max(2) + 1, RawFd::MAX)
}

/// Closes every descriptor the helper inherited but stdin/stdout/stderr (a run with no socket:
/// `--reserve`). Call it before opening anything else.
pub fn close_all_inherited_fds() -> std::io::Result<()> {
    crate::sys::close_range(3, RawFd::MAX)
}
