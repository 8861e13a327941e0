//! What the parts of a guest image are made with: what a run asks for ([`RunSpec`]), the Rust
//! target of the guest binaries, and [`Tree`], the cpio archive an initramfs part is written
//! into, with the modes its files get.
//!
//! A leaf: the image builders (`guest`, and `systemd` through it) and `extra`, the test-only
//! additions, build on it, and it knows none of them.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::cpio::{Archive, Meta};

/// The Rust target of the guest binaries. Naming it explicitly keeps `+crt-static` away from
/// build scripts and proc-macros, which are built for the host without it.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The modes of an image's directories, plain files and executables (all owned by root).
pub(crate) const DIR: Meta = Meta::root(0o755);
pub(crate) const FILE: Meta = Meta::root(0o644);
pub(crate) const EXEC: Meta = Meta::root(0o755);

/// What the guest's `/init` does once the helper's socket is up.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Run this script with `sh` as root, output on the second serial port, then power off.
    Script(PathBuf),
    /// An interactive root shell on the console.
    Shell,
}

/// Everything a run puts in the overlay.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub mode: Mode,
    pub policy: PathBuf,
}

/// A cpio archive that creates each file's parent directories (root 0755) the first time.
pub(crate) struct Tree {
    pub(crate) archive: Archive,
    dirs: BTreeSet<String>,
}

impl Tree {
    pub(crate) fn new() -> Tree {
        Tree {
            archive: Archive::new(),
            dirs: BTreeSet::new(),
        }
    }

    fn parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            if self.dirs.insert(dir.to_string()) {
                self.archive.dir(dir, DIR);
            }
            at += i + 1;
        }
    }

    pub(crate) fn dir(&mut self, path: &str, meta: Meta) {
        self.parents(path);
        self.dirs.insert(path.to_string());
        self.archive.dir(path, meta);
    }

    pub(crate) fn file(&mut self, path: &str, meta: Meta, data: &[u8]) {
        self.parents(path);
        self.archive.file(path, meta, data);
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.archive.symlink(path, target);
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.archive.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_created_once() {
        let mut t = Tree::new();
        t.file("usr/bin/a", EXEC, b"");
        t.file("usr/bin/b", EXEC, b"");
        assert_eq!(
            t.dirs.iter().map(String::as_str).collect::<Vec<_>>(),
            ["usr", "usr/bin"]
        );
    }
}
