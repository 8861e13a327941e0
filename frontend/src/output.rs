//! Rendering: tables and sentences for people, JSON for scripts.
//!
//! Everything here writes to a `Write` it is given and returns the I/O error, so a closed stdout
//! (`vfio-gate list | head -1`) surfaces as an error the caller can treat as a quiet exit.

use std::collections::BTreeSet;
use std::io::{self, Write};

use serde::Serialize;
use vfio_gate_protocol::{BindReport, DeviceInfo, Driver, ReleaseReport};

use crate::pci_ids::{PciNames, Wanted};
use crate::users::UserNames;

/// A text table: left-aligned columns separated by two spaces, no trailing whitespace.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: Vec<&'static str>) -> Self {
        Self {
            headers,
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one cell per header.
    pub fn push(&mut self, row: Vec<String>) {
        debug_assert_eq!(row.len(), self.headers.len());
        self.rows.push(row);
    }

    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
                }
            }
            writeln!(w, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// The ids of `devices` whose names the device table shows.
pub fn wanted_names(devices: &[DeviceInfo]) -> Wanted {
    let mut wanted = Wanted::default();
    for d in devices {
        wanted.add(d.vendor, d.device, d.class);
    }
    wanted
}

/// The uids of the devices' holders.
pub fn holder_uids(devices: &[DeviceInfo]) -> BTreeSet<u32> {
    devices
        .iter()
        .filter_map(|d| d.holder.as_ref().map(|h| h.uid))
        .collect()
}

/// The `list` table, sorted by address. The NAME column is left out when the PCI ID database
/// gave no names at all (it is not installed), rather than being a column of dashes.
pub fn device_table(devices: &[DeviceInfo], names: &PciNames, users: &UserNames) -> Table {
    let with_names = !names.is_empty();
    let mut headers = vec![
        "ADDRESS", "IDS", "CLASS", "DRIVER", "GROUP", "ALLOWED", "HOLDER",
    ];
    if with_names {
        headers.push("NAME");
    }
    let mut table = Table::new(headers);
    let mut sorted: Vec<&DeviceInfo> = devices.iter().collect();
    sorted.sort_by_key(|d| d.address);
    for d in sorted {
        let mut row = vec![
            d.address.short(),
            format!("{:04x}:{:04x}", d.vendor, d.device),
            names
                .class_name(d.class)
                .map_or_else(|| format!("{:06x}", d.class), str::to_owned),
            d.driver.clone().unwrap_or_else(|| "-".to_owned()),
            d.iommu_group
                .map_or_else(|| "-".to_owned(), |g| g.to_string()),
            drivers(&d.allowed),
            d.holder
                .as_ref()
                .map_or_else(|| "-".to_owned(), |h| users.display(h.uid)),
        ];
        if with_names {
            row.push(
                names
                    .device_name(d.vendor, d.device)
                    .unwrap_or_else(|| "-".to_owned()),
            );
        }
        table.push(row);
    }
    table
}

fn drivers(list: &[Driver]) -> String {
    if list.is_empty() {
        return "-".to_owned();
    }
    list.iter()
        .map(|d| d.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// `/dev/vfio/<group>`, the node a vfio-pci device is used through.
pub fn vfio_node(driver: Driver, group: Option<u32>) -> Option<String> {
    match (driver, group) {
        (Driver::VfioPci, Some(g)) => Some(format!("/dev/vfio/{g}")),
        _ => None,
    }
}

/// "01:00.0 is now on vfio-pci (was e1000e; IOMMU group 8, /dev/vfio/8), granted by rule 'x'
/// (/etc/vfio-gate/policy.toml:12).", then how to release it.
pub fn bind_summary(r: &BindReport) -> String {
    let addr = r.device.short();
    let was = match &r.previous_driver {
        Some(d) => format!("was {d}"),
        None => "had no driver".to_owned(),
    };
    let group = match (r.iommu_group, vfio_node(r.driver, r.iommu_group)) {
        (Some(g), Some(node)) => format!("IOMMU group {g}, {node}"),
        (Some(g), None) => format!("IOMMU group {g}"),
        (None, _) => "no IOMMU group".to_owned(),
    };
    format!(
        "{addr} is now on {} ({was}; {group}), granted by rule {}.\n\
         Release it with: vfio-gate release {addr}\n",
        r.driver, r.rule
    )
}

/// True when the device went back to the driver it had before the bind.
pub fn restored_as_expected(r: &ReleaseReport) -> bool {
    r.restored_driver == r.expected_driver
}

/// What `release` prints on stdout.
pub fn release_summary(r: &ReleaseReport) -> String {
    let addr = r.device.short();
    match (&r.expected_driver, &r.restored_driver) {
        (Some(e), Some(now)) if e == now => format!("{addr} is back on {now}.\n"),
        (None, None) => {
            format!("{addr} is released (it had no driver before, and has none now).\n")
        }
        (_, Some(now)) => format!("{addr} is released, and is now on {now}.\n"),
        (_, None) => format!("{addr} is released, and now has no driver.\n"),
    }
}

/// Why a release needs a look, when the device did not go back to its previous driver.
pub fn release_warning(r: &ReleaseReport) -> Option<String> {
    if restored_as_expected(r) {
        return None;
    }
    let addr = r.device;
    let now = r
        .restored_driver
        .as_deref()
        .map_or_else(|| "has no driver".to_owned(), |d| format!("is on {d}"));
    Some(match &r.expected_driver {
        Some(expected) => {
            let module = expected.replace('-', "_");
            format!(
                "{} did not go back to its host driver {expected}: it {now}. Check the kernel \
                 log (dmesg) for errors from {expected}, and whether its module is loaded \
                 (lsmod | grep {module}; an admin can load it with modprobe {module}). An admin \
                 can then re-probe the device: echo {addr} > /sys/bus/pci/drivers_probe",
                addr.short()
            )
        }
        None => format!(
            "{} had no driver before it was bound, but it {now} after the release (a driver \
             may have been loaded in the meantime). Check that this is what you want",
            addr.short()
        ),
    })
}

/// What `bind --json` prints: the helper's report plus the node to open.
#[derive(Debug, Serialize)]
pub struct BindJson<'a> {
    #[serde(flatten)]
    pub report: &'a BindReport,
    /// `/dev/vfio/<group>` for a vfio-pci bind with a group, else null.
    pub vfio_node: Option<String>,
}

/// What `release --json` prints: the helper's report plus whether it went as expected.
#[derive(Debug, Serialize)]
pub struct ReleaseJson<'a> {
    #[serde(flatten)]
    pub report: &'a ReleaseReport,
    pub restored_as_expected: bool,
}

/// Writes `value` as pretty JSON and a newline.
pub fn write_json(w: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *w, value).map_err(io::Error::from)?;
    writeln!(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_gate_protocol::{Holder, PciAddress, RuleRef};

    fn addr(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    fn device(a: &str, driver: Option<&str>, group: Option<u32>) -> DeviceInfo {
        DeviceInfo {
            address: addr(a),
            vendor: 0x8086,
            device: 0x10d3,
            subsystem_vendor: 0x8086,
            subsystem_device: 0,
            class: 0x020000,
            driver: driver.map(str::to_owned),
            driver_override: None,
            iommu_group: group,
            allowed: vec![],
            holder: None,
        }
    }

    fn render(t: &Table) -> String {
        let mut out = Vec::new();
        t.write_to(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let mut t = Table::new(vec!["A", "LONGER", "C"]);
        t.push(vec!["xyz".into(), "1".into(), "end".into()]);
        t.push(vec!["é".into(), "".into(), "".into()]);
        assert_eq!(render(&t), "A    LONGER  C\nxyz  1       end\né\n");
    }

    #[test]
    fn device_table_without_names_shows_ids_and_dashes() {
        let mut held = device("0000:01:00.0", Some("vfio-pci"), Some(8));
        held.allowed = vec![Driver::VfioPci, Driver::PciStub];
        held.holder = Some(Holder {
            uid: 4242,
            driver: Driver::VfioPci,
            since: 0,
        });
        let mut other = device("0001:00:1f.7", None, None);
        other.class = 0x7a0000;
        let bare = device("0000:00:02.0", Some("e1000e"), Some(2));
        let t = device_table(
            &[held, other, bare],
            &PciNames::default(),
            &UserNames::default(),
        );
        assert_eq!(
            render(&t),
            "\
ADDRESS       IDS        CLASS               DRIVER    GROUP  ALLOWED            HOLDER
00:02.0       8086:10d3  Network controller  e1000e    2      -                  -
01:00.0       8086:10d3  Network controller  vfio-pci  8      vfio-pci,pci-stub  4242
0001:00:1f.7  8086:10d3  7a0000              -         -      -                  -
"
        );
    }

    #[test]
    fn device_table_with_names_adds_a_name_column_and_holder_names() {
        let mut d = device("01:00.0", Some("e1000e"), Some(8));
        d.holder = Some(Holder {
            uid: 1000,
            driver: Driver::VfioPci,
            since: 0,
        });
        let mut unknown = device("02:00.0", None, Some(9));
        unknown.vendor = 0xabcd;
        let names = PciNames::parse(
            include_str!("../tests/data/pci.ids").as_bytes(),
            &wanted_names(&[d.clone(), unknown.clone()]),
        );
        let users = UserNames::parse(
            "alice:x:1000:1100::/:/bin/sh\n".as_bytes(),
            &holder_uids(&[d.clone()]),
        );
        let text = render(&device_table(&[unknown, d], &names, &users));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("HOLDER  NAME"), "{text}");
        assert!(
            lines[1].starts_with("01:00.0  8086:10d3  Ethernet controller  e1000e  8      -"),
            "{text}"
        );
        assert!(
            lines[1].ends_with("alice   Intel Corporation 82574L Gigabit Network Connection"),
            "{text}"
        );
        assert!(lines[2].starts_with("02:00.0  abcd:10d3"), "{text}");
        assert!(lines[2].ends_with("-       -"), "{text}");
    }

    fn bind_report(driver: Driver, previous: Option<&str>, group: Option<u32>) -> BindReport {
        BindReport {
            device: addr("01:00.0"),
            driver,
            previous_driver: previous.map(str::to_owned),
            iommu_group: group,
            rule: RuleRef {
                name: "lab".into(),
                file: "/etc/vfio-gate/policy.toml".into(),
                line: 12,
            },
        }
    }

    #[test]
    fn bind_summary_names_driver_group_node_rule_and_release_command() {
        assert_eq!(
            bind_summary(&bind_report(Driver::VfioPci, Some("e1000e"), Some(8))),
            "01:00.0 is now on vfio-pci (was e1000e; IOMMU group 8, /dev/vfio/8), granted by \
             rule 'lab' (/etc/vfio-gate/policy.toml:12).\n\
             Release it with: vfio-gate release 01:00.0\n"
        );
        let stub = bind_summary(&bind_report(Driver::PciStub, None, Some(3)));
        assert!(
            stub.starts_with("01:00.0 is now on pci-stub (had no driver; IOMMU group 3), "),
            "{stub}"
        );
        let none = bind_summary(&bind_report(Driver::VfioPci, None, None));
        assert!(none.contains("(had no driver; no IOMMU group)"), "{none}");
    }

    fn release_report(expected: Option<&str>, restored: Option<&str>) -> ReleaseReport {
        ReleaseReport {
            device: addr("01:00.0"),
            expected_driver: expected.map(str::to_owned),
            restored_driver: restored.map(str::to_owned),
        }
    }

    #[test]
    fn release_as_expected_has_no_warning() {
        let r = release_report(Some("e1000e"), Some("e1000e"));
        assert_eq!(release_summary(&r), "01:00.0 is back on e1000e.\n");
        assert_eq!(release_warning(&r), None);
        let r = release_report(None, None);
        assert!(release_summary(&r).contains("had no driver before"));
        assert_eq!(release_warning(&r), None);
    }

    #[test]
    fn release_to_another_driver_warns_with_what_to_check() {
        let r = release_report(Some("snd_hda_intel"), None);
        assert_eq!(
            release_summary(&r),
            "01:00.0 is released, and now has no driver.\n"
        );
        let w = release_warning(&r).unwrap();
        assert!(
            w.starts_with(
                "01:00.0 did not go back to its host driver snd_hda_intel: it has no driver."
            ),
            "{w}"
        );
        assert!(
            w.contains("dmesg") && w.contains("modprobe snd_hda_intel"),
            "{w}"
        );
        let r = release_report(Some("vfio-pci"), Some("pci-stub"));
        let w = release_warning(&r).unwrap();
        assert!(
            w.contains("it is on pci-stub") && w.contains("lsmod | grep vfio_pci"),
            "{w}"
        );
        assert!(release_warning(&release_report(None, Some("e1000e"))).is_some());
    }

    #[test]
    fn bind_json_flattens_the_report() {
        let r = bind_report(Driver::VfioPci, Some("e1000e"), Some(8));
        let mut out = Vec::new();
        write_json(
            &mut out,
            &BindJson {
                report: &r,
                vfio_node: vfio_node(r.driver, r.iommu_group),
            },
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["device"], "0000:01:00.0");
        assert_eq!(v["driver"], "vfio-pci");
        assert_eq!(v["previous_driver"], "e1000e");
        assert_eq!(v["iommu_group"], 8);
        assert_eq!(v["rule"]["line"], 12);
        assert_eq!(v["vfio_node"], "/dev/vfio/8");
    }
}
