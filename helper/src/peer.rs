//! Who is on the other end of a connection, as the kernel attests it.
//!
//! The uid, gid and pid come from `SO_PEERCRED` and the supplementary groups from
//! `SO_PEERGROUPS`, both recorded by the kernel when the client connected. Nothing the client
//! sends can change them, and no name service is consulted (the helper may run sandboxed, where
//! NSS modules cannot work).

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use vfio_gate_policy::Subject;

/// The credentials of a connected client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// Supplementary groups (may include `gid`).
    pub groups: Vec<u32>,
}

impl Peer {
    /// Reads the credentials of the peer of `stream`.
    pub fn of(stream: &UnixStream) -> io::Result<Self> {
        let creds = getsockopt(stream, PeerCredentials).map_err(io::Error::from)?;
        let groups = crate::sys::peer_groups(stream.as_fd())?;
        Ok(Peer {
            uid: creds.uid(),
            gid: creds.gid(),
            pid: creds.pid(),
            groups,
        })
    }

    /// The policy's view of this peer.
    pub fn subject(&self) -> Subject {
        Subject {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socketpair_sees_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let p = Peer::of(&a).unwrap();
        assert_eq!(p.uid, nix::unistd::getuid().as_raw());
        assert_eq!(p.gid, nix::unistd::getgid().as_raw());
        assert_eq!(p.pid, std::process::id() as i32);
        let mut ours: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut got = p.groups.clone();
        ours.sort();
        got.sort();
        assert_eq!(got, ours);
    }
}
