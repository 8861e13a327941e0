//! Shared code of the end-to-end tests and of the small programs the test guest runs.
//!
//! The guest programs (`src/bin/`) are built statically and installed in the QEMU guest's
//! `/usr/bin` by `cargo xtask` (see `docs/guest.md`):
//! - `runas USER CMD…` — run a command as a user with all their groups, as `su` would;
//! - `socket-activate` — systemd-style socket activation of the helper;
//! - `activation-probe` — a stand-in service that reports what socket activation gave it;
//! - `rawframe` — a protocol client that can send hostile bytes;
//! - `measure` — median wall time of a command, in milliseconds.
//!
//! They avoid NSS on purpose: glibc's `getpwnam` in a static binary needs shared NSS modules at
//! run time, which the guest does not have. [`users`] reads `/etc/passwd` and `/etc/group`
//! directly.

pub mod users {
    //! `/etc/passwd` and `/etc/group`, read directly.

    /// One `/etc/passwd` entry.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct User {
        pub name: String,
        pub uid: u32,
        pub gid: u32,
        pub home: String,
        pub shell: String,
    }

    /// Finds `name` in the text of `/etc/passwd`.
    pub fn find_user(passwd: &str, name: &str) -> Option<User> {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 || f[0] != name {
                return None;
            }
            Some(User {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
                shell: f[6].to_string(),
            })
        })
    }

    /// The user's groups: their primary group first, then every group of `/etc/group` whose
    /// member list names them, each once.
    pub fn groups_of(group: &str, user: &User) -> Vec<u32> {
        let mut gids = vec![user.gid];
        for line in group.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                continue;
            }
            let Ok(gid) = f[2].parse::<u32>() else {
                continue;
            };
            if f[3].split(',').any(|m| m.trim() == user.name) && !gids.contains(&gid) {
                gids.push(gid);
            }
        }
        gids
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
            alice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
            bob:x:1001:1001::/home/bob:/bin/sh\n\
            broken:x:notanumber:1:::\n";
        const GROUP: &str = "root:x:0:\nalice:x:1000:\nbob:x:1001:\n\
            vm-users:x:1100:alice,carol\nwheel:x:10:carol\n";

        #[test]
        fn users_and_their_groups() {
            let alice = find_user(PASSWD, "alice").unwrap();
            assert_eq!((alice.uid, alice.gid), (1000, 1000));
            assert_eq!(alice.home, "/home/alice");
            assert_eq!(groups_of(GROUP, &alice), [1000, 1100]);
            let bob = find_user(PASSWD, "bob").unwrap();
            assert_eq!(groups_of(GROUP, &bob), [1001]);
            assert!(find_user(PASSWD, "carol").is_none());
            assert!(find_user(PASSWD, "broken").is_none());
            assert!(find_user(PASSWD, "ali").is_none());
        }
    }
}

pub mod hex {
    //! Hex strings for hand-written frames: `"05000000 01ff"`.

    /// Decodes hex digits, ignoring whitespace, `_` and `:` between bytes.
    pub fn decode(s: &str) -> Result<Vec<u8>, String> {
        let digits: Vec<u8> = s
            .bytes()
            .filter(|b| !b.is_ascii_whitespace() && *b != b'_' && *b != b':')
            .collect();
        if digits.len() % 2 != 0 {
            return Err(format!("odd number of hex digits in {s:?}"));
        }
        digits
            .chunks(2)
            .map(|pair| {
                let text = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
                u8::from_str_radix(text, 16).map_err(|_| format!("{text:?} is not a hex byte"))
            })
            .collect()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn decodes_with_separators() {
            assert_eq!(super::decode("05 00_00:00ff").unwrap(), [5, 0, 0, 0, 0xff]);
            assert_eq!(super::decode("").unwrap(), Vec::<u8>::new());
            assert!(super::decode("abc").is_err());
            assert!(super::decode("zz").is_err());
        }
    }
}

/// The median of some durations in milliseconds (the mean of the middle two for an even count).
pub fn median_ms(samples: &mut [f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    Some(if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn median() {
        assert_eq!(super::median_ms(&mut []), None);
        assert_eq!(super::median_ms(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(super::median_ms(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
