//! Turning the user and group names an admin writes into the ids the kernel reports.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The largest `/etc/passwd` or `/etc/group` read. Far beyond any real host; a bound all the same.
const MAX_DB_SIZE: u64 = 64 << 20;

/// Resolves user and group names to ids, once, when the policy is loaded.
pub trait NameResolver {
    /// The uid of `user`, or `None` if there is no such user.
    fn uid(&self, user: &str) -> Option<u32>;
    /// The gid of `group`, or `None` if there is no such group.
    fn gid(&self, group: &str) -> Option<u32>;
    /// Why lookups may be failing (for example an unreadable database), reported among the
    /// policy's warnings when a name does not resolve. None by default.
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Names from `ROOT/etc/passwd` and `ROOT/etc/group`, read directly.
///
/// Deliberately not NSS: the helper is a static binary in a sandbox, and a policy that depended
/// on LDAP being reachable at start-up would be a policy that changes meaning with the network.
/// Users and groups known only to a directory service must be named by `uids` / `gids`.
///
/// Each file is read once, on the first lookup that needs it. An unreadable file resolves
/// nothing (every name then matches nobody, which fails closed) and is reported by
/// [`NameResolver::problems`].
pub struct EtcFiles {
    root: PathBuf,
    passwd: OnceLock<Result<HashMap<String, u32>, String>>,
    group: OnceLock<Result<HashMap<String, u32>, String>>,
}

impl EtcFiles {
    /// `root` is `/` in production, a directory holding `etc/passwd` and `etc/group` in tests.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        EtcFiles {
            root: root.into(),
            passwd: OnceLock::new(),
            group: OnceLock::new(),
        }
    }

    fn db<'a>(
        &self,
        cell: &'a OnceLock<Result<HashMap<String, u32>, String>>,
        name: &str,
    ) -> &'a Result<HashMap<String, u32>, String> {
        cell.get_or_init(|| {
            let path = self.root.join("etc").join(name);
            read_db(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        })
    }
}

impl fmt::Debug for EtcFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcFiles")
            .field("root", &self.root)
            .finish()
    }
}

impl NameResolver for EtcFiles {
    fn uid(&self, user: &str) -> Option<u32> {
        self.db(&self.passwd, "passwd")
            .as_ref()
            .ok()?
            .get(user)
            .copied()
    }

    fn gid(&self, group: &str) -> Option<u32> {
        self.db(&self.group, "group")
            .as_ref()
            .ok()?
            .get(group)
            .copied()
    }

    fn problems(&self) -> Vec<String> {
        [
            self.db(&self.passwd, "passwd"),
            self.db(&self.group, "group"),
        ]
        .into_iter()
        .filter_map(|r| r.as_ref().err().cloned())
        .collect()
    }
}

/// Reads a colon-separated database (`name:password:id:...`) into name → id. The first entry
/// for a name wins, as with the files backend of NSS. Comments, blank lines, NIS compat entries
/// (`+`/`-`) and malformed lines are skipped.
fn read_db(path: &Path) -> io::Result<HashMap<String, u32>> {
    let mut bytes = Vec::new();
    File::open(path)?
        .take(MAX_DB_SIZE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_DB_SIZE {
        return Err(io::Error::other(format!("larger than {MAX_DB_SIZE} bytes")));
    }
    Ok(parse_db(&String::from_utf8_lossy(&bytes)))
}

fn parse_db(text: &str) -> HashMap<String, u32> {
    let mut map = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with(['#', '+', '-']) {
            continue;
        }
        let mut fields = line.split(':');
        let (Some(name), Some(_password), Some(id)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        // Plain decimal only: `u32::from_str` would also take a leading '+'.
        if name.is_empty() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(id) = id.parse::<u32>() {
            map.entry(name.to_owned()).or_insert(id);
        }
    }
    map
}

/// Every account in `ROOT/etc/passwd` with its primary group and the supplementary groups
/// `ROOT/etc/group` lists it in: the subjects a report or an explanation is about. The first
/// entry for a name wins; malformed lines are skipped. Unreadable files give an error.
pub fn accounts(root: &Path) -> io::Result<Vec<(String, crate::Subject)>> {
    let read = |name: &str| -> io::Result<String> {
        let mut bytes = Vec::new();
        File::open(root.join("etc").join(name))?
            .take(MAX_DB_SIZE + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_DB_SIZE {
            return Err(io::Error::other(format!(
                "{name} is larger than {MAX_DB_SIZE} bytes"
            )));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    let digits = |f: &str| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit());
    let mut members: HashMap<String, Vec<u32>> = HashMap::new();
    for line in read("group")?.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with(['#', '+', '-']) || !digits(f[2]) {
            continue;
        }
        let Ok(gid) = f[2].parse::<u32>() else {
            continue;
        };
        for user in f[3].split(',').filter(|u| !u.is_empty()) {
            members.entry(user.to_owned()).or_default().push(gid);
        }
    }
    let mut out: Vec<(String, crate::Subject)> = Vec::new();
    for line in read("passwd")?.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with(['#', '+', '-']) || !digits(f[2]) || !digits(f[3]) {
            continue;
        }
        let (Ok(uid), Ok(gid)) = (f[2].parse::<u32>(), f[3].parse::<u32>()) else {
            continue;
        };
        if out.iter().any(|(n, _)| n == f[0]) {
            continue;
        }
        let mut groups = members.get(f[0]).cloned().unwrap_or_default();
        groups.sort_unstable();
        groups.dedup();
        out.push((f[0].to_owned(), crate::Subject { uid, gid, groups }));
    }
    Ok(out)
}

/// The account with `uid`, as [`accounts`] reads it.
pub fn account_of(root: &Path, uid: u32) -> io::Result<Option<(String, crate::Subject)>> {
    Ok(accounts(root)?.into_iter().find(|(_, s)| s.uid == uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n\
             # a comment\n\
             \n\
             alice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
             bob:x:1001:1001::/home/bob:/bin/sh\n\
             alice:x:2000:2000:shadowed duplicate:/:/bin/false\n\
             +nis::::::\n\
             broken:x\n\
             weird:x:+12:0::/:/bin/false\n\
             huge:x:99999999999:0::/:/bin/false\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nvm-users:x:1100:alice\nbob:x:1001:\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn accounts_have_their_groups() {
        let dir = fixture();
        let all = accounts(dir.path()).unwrap();
        let (name, alice) = account_of(dir.path(), 1000).unwrap().unwrap();
        assert_eq!(name, "alice");
        assert_eq!(alice.gid, 1000);
        assert!(alice.groups.contains(&1100), "{alice:?}");
        assert!(all.len() >= 2);
        assert!(account_of(dir.path(), 4242).unwrap().is_none());
    }

    #[test]
    fn resolves_from_files() {
        let dir = fixture();
        let names = EtcFiles::new(dir.path());
        // (name, expected uid)
        for (user, uid) in [
            ("root", Some(0)),
            ("alice", Some(1000)),
            ("bob", Some(1001)),
            ("nobody", Some(65534)),
            ("carol", None),
            ("broken", None),
            ("weird", None),
            ("huge", None),
            ("+nis", None),
            ("", None),
            ("vm-users", None),
        ] {
            assert_eq!(names.uid(user), uid, "{user}");
        }
        for (group, gid) in [
            ("vm-users", Some(1100)),
            ("root", Some(0)),
            ("bob", Some(1001)),
            ("alice", None),
        ] {
            assert_eq!(names.gid(group), gid, "{group}");
        }
        assert!(names.problems().is_empty());
    }

    #[test]
    fn missing_files_resolve_nothing_and_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let names = EtcFiles::new(dir.path());
        assert_eq!(names.uid("root"), None);
        assert_eq!(names.gid("root"), None);
        let problems = names.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("etc/passwd"), "{problems:?}");
        assert!(problems[1].contains("etc/group"), "{problems:?}");
    }
}
