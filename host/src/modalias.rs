//! Which kernel modules would drive a device: the kernel's module alias tables.
//!
//! Every PCI device has a *modalias*, `SYS/bus/pci/devices/<addr>/modalias`, such as
//! `pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00`: vendor, device, subsystem ids and
//! class. Every module that drives PCI devices declares glob patterns over that string, which
//! `depmod` collects into `/lib/modules/<release>/modules.alias`
//! (`alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e`); drivers built into the kernel are listed
//! the same way in `modules.builtin.alias`. udev loads, for each new device, every module whose
//! pattern matches its modalias (`kmod load`), exactly as `modprobe $MODALIAS` would.
//!
//! vfio-gate reads these tables to say which host driver would take a device that is held from
//! boot and has never been bound to it (`vfio-gate boot-config`): the module that needs a
//! `softdep … pre: vfio-pci`, or, when it is built in, that only the kernel command line can
//! claim the device first. Matching is `fnmatch(3)` without flags, as kmod does: `*`, `?` and
//! bracket expressions (`[0-9]`, `[!a]`).

use std::fs;
use std::io::{self, Read};
use std::path::Path;

/// The alias tables are a few MiB on a distribution kernel; anything far larger is not one.
const MAX_TABLE: u64 = 64 << 20;

/// A module that matches a modalias.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ModuleMatch {
    /// The module name as modprobe and modprobe.d know it (`e1000e`, `snd_hda_intel`).
    pub module: String,
    /// Built into the kernel (`modules.builtin.alias`): no modprobe.d line can order it.
    pub builtin: bool,
}

/// The `pci:` aliases of one kernel's modules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AliasTable {
    entries: Vec<(String, ModuleMatch)>,
}

impl AliasTable {
    /// Reads `modules.alias` and, if present, `modules.builtin.alias` from `dir`
    /// (`/lib/modules/<release>`). A missing `modules.alias` is an error: without it nothing can
    /// be said about host drivers.
    pub fn load(dir: &Path) -> io::Result<Self> {
        let mut table = Self::default();
        table.add(&read_table(&dir.join("modules.alias"))?, false);
        match read_table(&dir.join("modules.builtin.alias")) {
            Ok(text) => table.add(&text, true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(table)
    }

    /// Adds the `alias pci:… MODULE` lines of `text`; other lines (other buses, comments) are
    /// left out.
    pub fn add(&mut self, text: &str, builtin: bool) {
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some("alias"), Some(pattern), Some(module), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                continue;
            };
            if pattern.starts_with("pci:") {
                self.entries.push((
                    pattern.to_owned(),
                    ModuleMatch {
                        module: module.to_owned(),
                        builtin,
                    },
                ));
            }
        }
    }

    /// Every module whose pattern matches `modalias`, sorted and without repeats.
    pub fn modules_for(&self, modalias: &str) -> Vec<ModuleMatch> {
        let mut out: Vec<ModuleMatch> = self
            .entries
            .iter()
            .filter(|(pattern, _)| glob_match(pattern.as_bytes(), modalias.as_bytes()))
            .map(|(_, m)| m.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn read_table(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    fs::File::open(path)?
        .take(MAX_TABLE)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// `fnmatch(pattern, text, 0)`: `*` any run, `?` any one byte, `[set]` one byte of the set
/// (ranges `a-z`, negation with `!` or `^`, `]` first is literal), `\x` the byte `x`.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative with one backtrack point: the last `*` and where it started matching.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = bracket(&pattern[p..], text[t]) {
                        if matched {
                            p += next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        // An unterminated bracket is a literal `[`.
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                c => {
                    if c == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the bracket expression at the start of `pattern` (`[` included):
/// `Some((matched, length of the expression))`, or `None` if it is not terminated.
fn bracket(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &b = pattern.get(i)?;
        if b == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&e| e != b']') {
            let end = pattern[i + 2];
            if (b..=end).contains(&c) {
                matched = true;
            }
            i += 3;
        } else {
            if b == c {
                matched = true;
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E1000E: &str = "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00";

    #[test]
    fn globs_match_as_fnmatch_does() {
        for (p, t, want) in [
            ("pci:v00008086d000010D3sv*sd*bc*sc*i*", E1000E, true),
            ("pci:v00008086d000010D4sv*sd*bc*sc*i*", E1000E, false),
            ("pci:v*d*sv*sd*bc02sc00i*", E1000E, true),
            ("pci:v*d*sv*sd*bc03sc*i*", E1000E, false),
            ("pci:v0000808?d*", E1000E, true),
            ("pci:v0000808[0-9]d*", E1000E, true),
            ("pci:v0000808[!6]d*", E1000E, false),
            ("pci:v0000808[^5]d*", E1000E, true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("[]a]", "]", true),
            ("[a", "[a", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
        ] {
            assert_eq!(glob_match(p.as_bytes(), t.as_bytes()), want, "{p} ~ {t}");
        }
    }

    #[test]
    fn the_table_names_every_module_that_matches() {
        let mut t = AliasTable::default();
        t.add(
            "# Aliases extracted from modules themselves.\n\
             alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e\n\
             alias pci:v*d*sv*sd*bc02sc00i* some_generic_nic\n\
             alias usb:v8086p*d*dc*dsc*dp*ic*isc*ip*in* not_pci\n\
             alias pci:v00001AF4d00001041sv*sd*bc*sc*i* virtio_pci\n\
             alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci\n\
             garbage line\n",
            false,
        );
        t.add("alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e\n", true);
        let got = t.modules_for(E1000E);
        assert_eq!(
            got,
            vec![
                ModuleMatch {
                    module: "e1000e".into(),
                    builtin: false
                },
                ModuleMatch {
                    module: "e1000e".into(),
                    builtin: true
                },
                ModuleMatch {
                    module: "some_generic_nic".into(),
                    builtin: false
                },
            ]
        );
        assert!(t.modules_for("pci:v00001234d000011E8sv*").is_empty());
    }

    #[test]
    fn loading_needs_modules_alias_but_not_the_builtin_table() {
        let dir = tempfile::tempdir().unwrap();
        assert!(AliasTable::load(dir.path()).is_err());
        fs::write(
            dir.path().join("modules.alias"),
            "alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e\n",
        )
        .unwrap();
        let t = AliasTable::load(dir.path()).unwrap();
        assert_eq!(t.modules_for(E1000E).len(), 1);
    }
}
