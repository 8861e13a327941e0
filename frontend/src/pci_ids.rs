//! Vendor, device and class names from the PCI ID database (`pci.ids`, as lspci uses).
//!
//! The file is about 1.5 MB of text, so it is read lazily: only when a table is printed, in one
//! streaming pass that keeps just the names of the ids on screen. It is optional: a missing or
//! unreadable file means ids without names, never an error.
//!
//! The format, one entry per line, children indented by tabs:
//! ```text
//! # comment
//! 8086  Intel Corporation                       vendor
//! \t10d3  82574L Gigabit Network Connection     device of that vendor
//! \t\t8086 a01f  Gigabit CT Desktop Adapter     subsystem (ignored here)
//! C 02  Network controller                      class
//! \t00  Ethernet controller                     subclass
//! \t\t00  ...                                   programming interface (ignored here)
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Where distributions install the database (Debian: `pci.ids`; Fedora, Arch: `hwdata`).
pub const DEFAULT_PATHS: [&str; 2] = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"];

/// The ids a caller wants names for.
#[derive(Debug, Default, Clone)]
pub struct Wanted {
    vendors: BTreeSet<u16>,
    devices: BTreeSet<(u16, u16)>,
    classes: BTreeSet<u8>,
    subclasses: BTreeSet<(u8, u8)>,
}

impl Wanted {
    /// Asks for a device's vendor and device names, and its class and subclass names.
    /// `class` is the 24-bit class code (class, subclass, programming interface).
    pub fn add(&mut self, vendor: u16, device: u16, class: u32) {
        let (base, sub) = class_parts(class);
        self.vendors.insert(vendor);
        self.devices.insert((vendor, device));
        self.classes.insert(base);
        self.subclasses.insert((base, sub));
    }

    /// Asks for a device's vendor and device names only (no class).
    pub fn add_device(&mut self, vendor: u16, device: u16) {
        self.vendors.insert(vendor);
        self.devices.insert((vendor, device));
    }

    fn count(&self) -> usize {
        self.vendors.len() + self.devices.len() + self.classes.len() + self.subclasses.len()
    }
}

fn class_parts(class: u32) -> (u8, u8) {
    (((class >> 16) & 0xff) as u8, ((class >> 8) & 0xff) as u8)
}

/// The names found for the [`Wanted`] ids.
#[derive(Debug, Default, Clone)]
pub struct PciNames {
    vendors: HashMap<u16, String>,
    devices: HashMap<(u16, u16), String>,
    classes: HashMap<u8, String>,
    subclasses: HashMap<(u8, u8), String>,
}

/// Where the parser is: which top-level entry the indented lines belong to.
#[derive(Clone, Copy)]
enum Section {
    None,
    Vendor(u16),
    Class(u8),
}

impl PciNames {
    /// Reads the first database that exists: `explicit` if given, else [`DEFAULT_PATHS`].
    /// Never fails: no file, or an unreadable one, gives no names.
    pub fn load(explicit: Option<&Path>, wanted: &Wanted) -> Self {
        let candidates: Vec<PathBuf> = match explicit {
            Some(p) => vec![p.to_owned()],
            None => DEFAULT_PATHS.iter().map(PathBuf::from).collect(),
        };
        candidates
            .iter()
            .find_map(|p| File::open(p).ok())
            .map(|f| Self::parse(BufReader::new(f), wanted))
            .unwrap_or_default()
    }

    /// One pass over the database, keeping only wanted names. A read error ends the pass with
    /// what was found so far. Stops early once every wanted id has a name.
    pub fn parse(mut reader: impl BufRead, wanted: &Wanted) -> Self {
        let mut names = Self::default();
        let mut section = Section::None;
        let mut line = Vec::new();
        let total = wanted.count();
        while names.count() < total {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = trim_end(&line);
            if text.is_empty() || text[0] == b'#' {
                continue;
            }
            let depth = text.iter().take_while(|&&b| b == b'\t').count();
            let entry = &text[depth..];
            match depth {
                0 => {
                    section = if let Some(rest) = entry.strip_prefix(b"C ") {
                        match id_and_name(rest, 2) {
                            Some((c, name)) => {
                                let c = c as u8;
                                if wanted.classes.contains(&c) {
                                    names.classes.insert(c, name);
                                }
                                Section::Class(c)
                            }
                            None => Section::None,
                        }
                    } else {
                        match id_and_name(entry, 4) {
                            Some((v, name)) => {
                                let v = v as u16;
                                if wanted.vendors.contains(&v) {
                                    names.vendors.insert(v, name);
                                }
                                Section::Vendor(v)
                            }
                            // Some other list (pci.ids has none today): skip its children.
                            None => Section::None,
                        }
                    };
                }
                1 => match section {
                    Section::Vendor(v) => {
                        if let Some((d, name)) = id_and_name(entry, 4) {
                            let key = (v, d as u16);
                            if wanted.devices.contains(&key) {
                                names.devices.insert(key, name);
                            }
                        }
                    }
                    Section::Class(c) => {
                        if let Some((s, name)) = id_and_name(entry, 2) {
                            let key = (c, s as u8);
                            if wanted.subclasses.contains(&key) {
                                names.subclasses.insert(key, name);
                            }
                        }
                    }
                    Section::None => {}
                },
                _ => {}
            }
        }
        names
    }

    /// "Intel Corporation 82574L Gigabit Network Connection", or "Intel Corporation device 10d3"
    /// when only the vendor is known; `None` when the vendor is unknown.
    pub fn device_name(&self, vendor: u16, device: u16) -> Option<String> {
        let v = self.vendors.get(&vendor)?;
        Some(match self.devices.get(&(vendor, device)) {
            Some(d) => format!("{v} {d}"),
            None => format!("{v} device {device:04x}"),
        })
    }

    /// The device's own name without its vendor ("QEMU edu device"), for narrow tables; else
    /// what [`device_name`](Self::device_name) gives.
    pub fn short_device_name(&self, vendor: u16, device: u16) -> Option<String> {
        match self.devices.get(&(vendor, device)) {
            Some(d) => Some(d.clone()),
            None => self.device_name(vendor, device),
        }
    }

    /// The subclass name ("Ethernet controller"), else the class name, from the database or, for
    /// the class, from the PCI specification's short list built in here.
    pub fn class_name(&self, class: u32) -> Option<&str> {
        let (base, sub) = class_parts(class);
        self.subclasses
            .get(&(base, sub))
            .or_else(|| self.classes.get(&base))
            .map(String::as_str)
            .or_else(|| builtin_class_name(base))
    }

    fn count(&self) -> usize {
        self.vendors.len() + self.devices.len() + self.classes.len() + self.subclasses.len()
    }

    /// True when not a single name was found (no database, most likely).
    pub fn is_empty(&self) -> bool {
        self.vendors.is_empty()
    }
}

fn trim_end(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &line[..end]
}

/// Parses `<hex id of `digits` digits><whitespace><name>`.
fn id_and_name(entry: &[u8], digits: usize) -> Option<(u32, String)> {
    let id = entry.get(..digits)?;
    let rest = entry.get(digits..)?;
    if !id.iter().all(u8::is_ascii_hexdigit) || !rest.first()?.is_ascii_whitespace() {
        return None;
    }
    let id = u32::from_str_radix(std::str::from_utf8(id).ok()?, 16).ok()?;
    let name = String::from_utf8_lossy(rest).trim().to_owned();
    (!name.is_empty()).then_some((id, name))
}

/// Base class names from the PCI Code and ID Assignment specification, for when there is no
/// database.
fn builtin_class_name(base: u8) -> Option<&'static str> {
    Some(match base {
        0x00 => "Unclassified device",
        0x01 => "Mass storage controller",
        0x02 => "Network controller",
        0x03 => "Display controller",
        0x04 => "Multimedia controller",
        0x05 => "Memory controller",
        0x06 => "Bridge",
        0x07 => "Communication controller",
        0x08 => "Generic system peripheral",
        0x09 => "Input device controller",
        0x0a => "Docking station",
        0x0b => "Processor",
        0x0c => "Serial bus controller",
        0x0d => "Wireless controller",
        0x0e => "Intelligent controller",
        0x0f => "Satellite communications controller",
        0x10 => "Encryption controller",
        0x11 => "Signal processing controller",
        0x12 => "Processing accelerators",
        0x13 => "Non-Essential Instrumentation",
        0x40 => "Coprocessor",
        0xff => "Unassigned class",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../tests/data/pci.ids");

    fn names_for(ids: &[(u16, u16, u32)]) -> PciNames {
        let mut wanted = Wanted::default();
        for &(v, d, c) in ids {
            wanted.add(v, d, c);
        }
        PciNames::parse(FIXTURE.as_bytes(), &wanted)
    }

    #[test]
    fn finds_vendor_device_and_class_names() {
        let n = names_for(&[(0x8086, 0x10d3, 0x020000), (0x1b36, 0x0005, 0x00ff00)]);
        assert_eq!(
            n.device_name(0x8086, 0x10d3).as_deref(),
            Some("Intel Corporation 82574L Gigabit Network Connection")
        );
        assert_eq!(
            n.device_name(0x1b36, 0x0005).as_deref(),
            Some("Red Hat, Inc. QEMU PCI Test Device")
        );
        assert_eq!(n.class_name(0x020000), Some("Ethernet controller"));
        assert_eq!(n.class_name(0x00ff00), Some("Unclassified device"));
    }

    #[test]
    fn keeps_only_what_was_asked_for() {
        let n = names_for(&[(0x8086, 0x10d3, 0x020000)]);
        // Same vendor, other device: the vendor is known, the device is not.
        assert_eq!(
            n.device_name(0x8086, 0x100e).as_deref(),
            Some("Intel Corporation device 100e")
        );
        assert_eq!(n.device_name(0x1af4, 0x1000), None);
        assert_eq!(n.devices.len(), 1);
        assert_eq!(n.vendors.len(), 1);
    }

    #[test]
    fn unknown_ids_fall_back_without_failing() {
        let n = names_for(&[(0xabcd, 0x0001, 0x0c0330)]);
        assert_eq!(n.device_name(0xabcd, 0x0001), None);
        // Serial bus controller / USB is absent from the fixture: the built-in class name.
        assert_eq!(n.class_name(0x0c0330), Some("Serial bus controller"));
        assert_eq!(n.class_name(0x7a0000), None);
    }

    #[test]
    fn device_lines_belong_to_their_own_vendor_only() {
        // 0x1000 appears as a device of 1af4 and 1b36 in the fixture; the subsystem line under
        // 8086:10d3 (8086 a01f) must not be taken for a device either.
        let n = names_for(&[(0x1af4, 0x1000, 0x020000), (0x8086, 0xa01f, 0x020000)]);
        assert_eq!(
            n.device_name(0x1af4, 0x1000).as_deref(),
            Some("Red Hat, Inc. Virtio network device")
        );
        assert_eq!(
            n.device_name(0x8086, 0xa01f).as_deref(),
            Some("Intel Corporation device a01f")
        );
    }

    #[test]
    fn subclass_lines_belong_to_their_own_class() {
        // "00" is a subclass of both class 01 and class 02 in the fixture.
        let n = names_for(&[(0, 0, 0x010000), (0, 0, 0x020000), (0, 0, 0x010800)]);
        assert_eq!(n.class_name(0x010000), Some("SCSI storage controller"));
        assert_eq!(n.class_name(0x020000), Some("Ethernet controller"));
        assert_eq!(
            n.class_name(0x010802),
            Some("Non-Volatile memory controller")
        );
    }

    #[test]
    fn tolerates_crlf_garbage_and_invalid_utf8() {
        let text =
            b"# c\r\n8086  Intel\r\n\t10d3  NIC \xff\r\nzzzz  junk\n\tzzzz\nC xx  bad\n\t00  x\n";
        let mut w = Wanted::default();
        w.add(0x8086, 0x10d3, 0x020000);
        let n = PciNames::parse(&text[..], &w);
        assert_eq!(
            n.device_name(0x8086, 0x10d3).as_deref(),
            Some("Intel NIC \u{fffd}")
        );
    }

    #[test]
    fn a_missing_file_gives_no_names() {
        let mut w = Wanted::default();
        w.add(0x8086, 0x10d3, 0x020000);
        let n = PciNames::load(Some(Path::new("/nonexistent/pci.ids")), &w);
        assert!(n.is_empty());
        assert_eq!(n.device_name(0x8086, 0x10d3), None);
        assert_eq!(n.class_name(0x020000), Some("Network controller"));
    }
}
