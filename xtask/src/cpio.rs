//! A writer for the `newc` cpio format, the one the kernel unpacks as an initramfs.
//!
//! Writing it ourselves means no staging directory and no `cpio` tool: the guest's files are
//! described in memory (owner and mode included, so the policy file is root:root 0644 without
//! any `chown` on the host) and serialised in one pass. The kernel accepts several archives
//! concatenated, each padded to 4 bytes, so the per-run overlay (fresh binaries, the script,
//! the policy) is simply appended to the cached base archive.
//!
//! Format (see the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`): each
//! entry is the magic `070701`, thirteen 8-digit hex fields, the NUL-terminated name padded to
//! 4 bytes, then the data padded to 4 bytes; the archive ends with an entry named `TRAILER!!!`.

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// An in-memory cpio archive being built.
#[derive(Debug, Default)]
pub struct Archive {
    buf: Vec<u8>,
    next_ino: u32,
}

/// Owner and permission bits of an entry.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub uid: u32,
    pub gid: u32,
    pub perm: u32,
}

impl Meta {
    pub const fn root(perm: u32) -> Meta {
        Meta {
            uid: 0,
            gid: 0,
            perm,
        }
    }
}

struct Header<'a> {
    name: &'a str,
    mode: u32,
    meta: Meta,
    nlink: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

impl Archive {
    pub fn new() -> Archive {
        // Inode numbers matter to the kernel only for regular files with nlink > 1 (hard
        // links); every entry here has nlink 1 (2 for directories), so numbering restarts
        // harmlessly in an appended archive.
        Archive {
            buf: Vec::new(),
            next_ino: 1,
        }
    }

    pub fn dir(&mut self, path: &str, meta: Meta) {
        self.entry(Header {
            name: path,
            mode: S_IFDIR | meta.perm,
            meta,
            nlink: 2,
            rdev: (0, 0),
            data: &[],
        });
    }

    pub fn file(&mut self, path: &str, meta: Meta, data: &[u8]) {
        self.entry(Header {
            name: path,
            mode: S_IFREG | meta.perm,
            meta,
            nlink: 1,
            rdev: (0, 0),
            data,
        });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(Header {
            name: path,
            mode: S_IFLNK | 0o777,
            meta: Meta::root(0o777),
            nlink: 1,
            rdev: (0, 0),
            data: target.as_bytes(),
        });
    }

    pub fn char_device(&mut self, path: &str, meta: Meta, major: u32, minor: u32) {
        self.entry(Header {
            name: path,
            mode: S_IFCHR | meta.perm,
            meta,
            nlink: 1,
            rdev: (major, minor),
            data: &[],
        });
    }

    fn entry(&mut self, h: Header<'_>) {
        let name = h.name.trim_start_matches('/');
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(ino, &h, name);
        self.buf.extend_from_slice(h.data);
        self.pad();
    }

    fn header(&mut self, ino: u32, h: &Header<'_>, name: &str) {
        let fields = [
            ino,
            h.mode,
            h.meta.uid,
            h.meta.gid,
            h.nlink,
            0, // mtime: fixed, so archives are reproducible
            u32::try_from(h.data.len()).expect("cpio entries are smaller than 4 GiB"),
            0, // devmajor
            0, // devminor
            h.rdev.0,
            h.rdev.1,
            u32::try_from(name.len() + 1).expect("short name"),
            0, // check (unused by newc)
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    /// Ends the archive with its trailer and returns the bytes (a multiple of 4 long).
    pub fn finish(mut self) -> Vec<u8> {
        self.entry(Header {
            name: "TRAILER!!!",
            mode: 0,
            meta: Meta::root(0),
            nlink: 1,
            rdev: (0, 0),
            data: &[],
        });
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn layout_is_newc_and_aligned() {
        let mut a = Archive::new();
        a.dir("etc", Meta::root(0o755));
        a.file("/etc/x", Meta::root(0o644), b"hello");
        let bytes = a.finish();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(&bytes[..6], b"070701");
        // The first header: 6 + 13 * 8 = 110 bytes, then "etc\0" -> 114, padded to 116.
        assert_eq!(&bytes[110..114], b"etc\0");
        assert_eq!(&bytes[116..122], b"070701");
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    /// Cross-checks against GNU cpio where it is installed (it is on the dev machines).
    #[test]
    fn gnu_cpio_lists_what_we_wrote() {
        if Command::new("cpio").arg("--version").output().is_err() {
            return;
        }
        let mut a = Archive::new();
        a.dir("bin", Meta::root(0o755));
        a.file("bin/tool", Meta::root(0o755), &[1, 2, 3]);
        a.symlink("bin/sh", "tool");
        a.file(
            "home/alice/.profile",
            Meta {
                uid: 1000,
                gid: 1000,
                perm: 0o600,
            },
            b"x",
        );
        let bytes = a.finish();
        let mut child = Command::new("cpio")
            .args(["-t", "-v", "--numeric-uid-gid", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        let listing = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{listing}");
        assert!(listing.contains("bin/tool"), "{listing}");
        assert!(listing.contains("bin/sh -> tool"), "{listing}");
        assert!(listing.contains("-rw-------"), "{listing}");
        assert!(listing.contains("1000"), "{listing}");
    }
}
