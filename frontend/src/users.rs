//! User names for uids, from `/etc/passwd`.
//!
//! Only the local file is read (no NSS, so no LDAP or systemd-homed names): it needs no library
//! and cannot hang. A uid without an entry is shown as its number.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;

pub const PASSWD: &str = "/etc/passwd";

/// Names for a set of uids.
#[derive(Debug, Default, Clone)]
pub struct UserNames(HashMap<u32, String>);

impl UserNames {
    /// Reads `path` for the wanted uids; a missing or unreadable file gives no names.
    pub fn load(path: &Path, wanted: &BTreeSet<u32>) -> Self {
        if wanted.is_empty() {
            return Self::default();
        }
        std::fs::File::open(path)
            .map(|f| Self::parse(BufReader::new(f), wanted))
            .unwrap_or_default()
    }

    /// Parses passwd lines (`name:password:uid:gid:gecos:home:shell`); the first entry for a uid
    /// wins, as with getpwuid.
    pub fn parse(reader: impl BufRead, wanted: &BTreeSet<u32>) -> Self {
        let mut names = HashMap::new();
        for line in reader.split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line);
            let mut fields = line.split(':');
            let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(uid) = uid.parse::<u32>() else {
                continue;
            };
            if !name.is_empty() && wanted.contains(&uid) {
                names.entry(uid).or_insert_with(|| name.to_owned());
            }
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

/// The uid of the user called `name` in the passwd file at `path` (the first entry wins, as with
/// getpwnam); `None` when there is no such entry or the file cannot be read.
pub fn uid_of(path: &Path, name: &str) -> Option<u32> {
    let file = std::fs::File::open(path).ok()?;
    parse_uid_of(BufReader::new(file), name)
}

fn parse_uid_of(reader: impl BufRead, name: &str) -> Option<u32> {
    if name.is_empty() {
        return None;
    }
    reader.split(b'\n').map_while(Result::ok).find_map(|line| {
        let line = String::from_utf8_lossy(&line);
        let mut fields = line.split(':');
        match (fields.next(), fields.next(), fields.next()) {
            (Some(n), Some(_), Some(uid)) if n == name => uid.parse::<u32>().ok(),
            _ => None,
        }
    })
}

/// The effective uid of this process: the one the helper sees (`SO_PEERCRED`) and hands group
/// nodes to.
pub fn my_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_wanted_uids_and_falls_back_to_numbers() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n\
                      # not a comment format, but harmless\n\
                      alice:x:1000:1100:Alice:/home/alice:/bin/sh\n\
                      evil:x:1000:1000::/:/bin/sh\n\
                      broken\n\
                      bob:x:notanumber:0::/:/bin/sh\n\
                      bob:x:1001:1001::/home/bob:/bin/sh";
        let wanted = BTreeSet::from([1000, 1001, 4242]);
        let n = UserNames::parse(passwd.as_bytes(), &wanted);
        assert_eq!(n.display(1000), "alice");
        assert_eq!(n.display(1001), "bob");
        assert_eq!(n.display(4242), "4242");
        // Not wanted, so not kept.
        assert_eq!(n.display(0), "0");
    }

    #[test]
    fn names_resolve_to_the_first_uid_given_them() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n\
                      broken\n\
                      bob:x:notanumber:0::/:/bin/sh\n\
                      bob:x:1001:1001::/home/bob:/bin/sh\n\
                      bob:x:1002:1002::/home/bob:/bin/sh";
        assert_eq!(parse_uid_of(passwd.as_bytes(), "root"), Some(0));
        assert_eq!(parse_uid_of(passwd.as_bytes(), "bob"), Some(1001));
        assert_eq!(parse_uid_of(passwd.as_bytes(), "bo"), None);
        assert_eq!(parse_uid_of(passwd.as_bytes(), "broken"), None);
        assert_eq!(parse_uid_of(passwd.as_bytes(), ""), None);
        assert_eq!(uid_of(Path::new("/nonexistent/passwd"), "root"), None);
    }

    #[test]
    fn a_missing_file_gives_numbers() {
        let n = UserNames::load(Path::new("/nonexistent/passwd"), &BTreeSet::from([0]));
        assert_eq!(n.display(0), "0");
    }
}
