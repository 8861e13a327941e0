//! Users: names for uids and uids for names, read with the policy crate's reader of
//! `/etc/passwd` (the one the helper resolves the policy's names with), and who we are.
//!
//! Only the local files are read (no NSS, so no LDAP or systemd-homed names): they need no
//! library and cannot hang. A uid without an entry is shown as its number.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use vfio_gate_policy::{EtcFiles, NameResolver, accounts};

/// The root whose `etc/passwd` names users, unless `--etc-root` says otherwise.
pub const ETC_ROOT: &str = "/";

/// The passwd file under `etc_root`, for messages.
pub fn passwd(etc_root: &Path) -> PathBuf {
    etc_root.join("etc/passwd")
}

/// Names for a set of uids.
#[derive(Debug, Default, Clone)]
pub struct UserNames(HashMap<u32, String>);

impl UserNames {
    /// Names the wanted uids from `ETC_ROOT/etc/passwd`: the first account with each uid, as
    /// getpwuid finds it. A missing or unreadable file gives no names.
    pub fn load(etc_root: &Path, wanted: &BTreeSet<u32>) -> Self {
        if wanted.is_empty() {
            return Self::default();
        }
        let mut names = HashMap::new();
        for (name, account) in accounts(etc_root).unwrap_or_default() {
            if wanted.contains(&account.uid) {
                names.entry(account.uid).or_insert(name);
            }
        }
        Self(names)
    }

    /// Names given as (uid, name) pairs, the first for a uid winning (for tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (u32, &'a str)>) -> Self {
        let mut names = HashMap::new();
        for (uid, name) in pairs {
            names.entry(uid).or_insert_with(|| name.to_owned());
        }
        Self(names)
    }

    /// The user's name, or the uid as text.
    pub fn display(&self, uid: u32) -> String {
        self.0.get(&uid).cloned().unwrap_or_else(|| uid.to_string())
    }

    /// The user's name, if the file has one.
    pub fn name(&self, uid: u32) -> Option<&str> {
        self.0.get(&uid).map(String::as_str)
    }
}

/// The uid of the user called `name` in `ETC_ROOT/etc/passwd`, as the helper resolves a name in
/// the policy (the first entry wins, as with getpwnam); `None` when there is no such entry or
/// the file cannot be read.
pub fn uid_of(etc_root: &Path, name: &str) -> Option<u32> {
    EtcFiles::new(etc_root).uid(name)
}

/// The effective uid of this process: the one the helper sees (`SO_PEERCRED`) and hands group
/// nodes to.
pub fn my_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etc(passwd: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\n").unwrap();
        dir
    }

    #[test]
    fn names_wanted_uids_and_falls_back_to_numbers() {
        let dir = etc("root:x:0:0:root:/root:/bin/sh\n\
                       alice:x:1000:1100:Alice:/home/alice:/bin/sh\n\
                       toor:x:1000:1000::/:/bin/sh\n\
                       broken\n\
                       bob:x:notanumber:0::/:/bin/sh\n\
                       bob:x:1001:1001::/home/bob:/bin/sh");
        let wanted = BTreeSet::from([1000, 1001, 4242]);
        let n = UserNames::load(dir.path(), &wanted);
        assert_eq!(n.display(1000), "alice", "the first entry with a uid wins");
        assert_eq!(n.display(1001), "bob");
        assert_eq!(n.display(4242), "4242");
        // Not wanted, so not kept.
        assert_eq!(n.display(0), "0");
    }

    #[test]
    fn names_resolve_to_the_first_uid_given_them() {
        let dir = etc("root:x:0:0:root:/root:/bin/sh\n\
                       bob:x:1001:1001::/home/bob:/bin/sh\n\
                       bob:x:1002:1002::/home/bob:/bin/sh");
        assert_eq!(uid_of(dir.path(), "root"), Some(0));
        assert_eq!(uid_of(dir.path(), "bob"), Some(1001));
        assert_eq!(uid_of(dir.path(), "bo"), None);
        assert_eq!(uid_of(dir.path(), ""), None);
        assert_eq!(uid_of(Path::new("/nonexistent"), "root"), None);
    }

    #[test]
    fn a_missing_file_gives_numbers() {
        let n = UserNames::load(Path::new("/nonexistent"), &BTreeSet::from([0]));
        assert_eq!(n.display(0), "0");
        assert_eq!(passwd(Path::new(ETC_ROOT)), Path::new("/etc/passwd"));
    }
}
