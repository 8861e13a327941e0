//! Rendering: tables and sentences for people, JSON for scripts.
//!
//! Everything here writes to a `Write` it is given and returns the I/O error, so a closed stdout
//! (`vfio-gate list | head -1`) surfaces as an error the caller can treat as a quiet exit.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;
use vfio_gate_protocol::{
    BindReport, DeviceInfo, Driver, PciAddress, Plan, PlanStep, ReleaseReport, ReleasedGroup,
    RestoredDevice, StepAction,
};

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
            d.holder.as_ref().map_or_else(
                || "-".to_owned(),
                |h| {
                    if h.tied {
                        format!("{} (run)", users.display(h.uid))
                    } else {
                        users.display(h.uid)
                    }
                },
            ),
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

/// The ids of a plan's members whose names the plan table shows.
pub fn plan_names(plan: &Plan) -> Wanted {
    let mut wanted = Wanted::default();
    for s in &plan.steps {
        wanted.add_device(s.vendor, s.device_id);
    }
    wanted
}

/// "→ vfio-pci (rule 'lab', /etc/vfio-gate/policy.toml:12)" or "stays on pcieport: keeps the
/// group viable".
pub fn action_text(step: &PlanStep) -> String {
    match &step.action {
        StepAction::Bind { driver, rule } => {
            format!(
                "→ {driver} (rule '{}', {}:{})",
                rule.name, rule.file, rule.line
            )
        }
        StepAction::Keep { reason } => match &step.driver {
            Some(d) => format!("stays on {d}: {reason}"),
            None => format!("stays without a driver: {reason}"),
        },
    }
}

/// The plan as a table, one member a row in address order: MEMBER, IDS, NAME (when the PCI ID
/// database is there), KIND, DRIVER (before), ACTION.
pub fn plan_table(plan: &Plan, names: &PciNames) -> Table {
    let with_names = !names.is_empty();
    let mut headers = vec!["MEMBER", "IDS"];
    if with_names {
        headers.push("NAME");
    }
    headers.extend(["KIND", "DRIVER", "ACTION"]);
    let mut table = Table::new(headers);
    let mut steps: Vec<&PlanStep> = plan.steps.iter().collect();
    steps.sort_by_key(|s| s.device);
    for s in steps {
        let mut row = vec![
            s.device.short(),
            format!("{:04x}:{:04x}", s.vendor, s.device_id),
        ];
        if with_names {
            row.push(
                names
                    .short_device_name(s.vendor, s.device_id)
                    .unwrap_or_else(|| "-".to_owned()),
            );
        }
        row.extend([
            s.kind.to_string(),
            s.driver.clone().unwrap_or_else(|| "-".to_owned()),
            action_text(s),
        ]);
        table.push(row);
    }
    table
}

/// "IOMMU group 11" or "no IOMMU group".
pub fn group_name(group: Option<u32>) -> String {
    group.map_or_else(
        || "no IOMMU group".to_owned(),
        |g| format!("IOMMU group {g}"),
    )
}

/// The plan table under a title line, indented by two spaces.
pub fn plan_block(title: &str, plan: &Plan, names: &PciNames) -> String {
    let mut table = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = plan_table(plan, names).write_to(&mut table);
    let mut text = format!("{title}\n");
    for line in String::from_utf8_lossy(&table).lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// The members a plan moves, other than `named`: "05:01.0 on pci-stub".
fn moved_others(plan: &Plan, named: &[PciAddress]) -> Vec<String> {
    plan.steps
        .iter()
        .filter(|s| !named.contains(&s.device))
        .filter_map(|s| match &s.action {
            StepAction::Bind { driver, .. } => Some(format!("{} on {driver}", s.device.short())),
            StepAction::Keep { .. } => None,
        })
        .collect()
}

/// The members a plan leaves alone: "04:00.0 on pcieport".
fn kept(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .filter(|s| matches!(s.action, StepAction::Keep { .. }))
        .map(|s| match &s.driver {
            Some(d) => format!("{} on {d}", s.device.short()),
            None => format!("{} without a driver", s.device.short()),
        })
        .collect()
}

/// "a", "a and b", "a, b and c".
fn join_words(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The next step of a refusal for want of `--group`: "re-run with --group to also put 05:01.0 on
/// pci-stub and leave 04:00.0 on pcieport: vfio-gate bind 05:02.0 --to vfio-pci --group".
pub fn needs_group_step(plan: &Plan, named: &[PciAddress], rerun: &str) -> String {
    let moved = moved_others(plan, named);
    let kept = kept(plan);
    let what = match (moved.is_empty(), kept.is_empty()) {
        (false, false) => format!(
            "also put {} and leave {}",
            join_words(&moved),
            join_words(&kept)
        ),
        (false, true) => format!("also put {}", join_words(&moved)),
        (true, false) => format!("bind the group as a whole and leave {}", join_words(&kept)),
        (true, true) => "bind the group as a whole".to_owned(),
    };
    format!("Re-run with --group to {what}: {rerun}")
}

/// Who owns a group node and with which mode, as `stat` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeOwner {
    pub uid: u32,
    /// The permission bits (`0o600`).
    pub mode: u32,
}

impl NodeOwner {
    pub fn stat(path: &Path) -> io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            uid: m.uid(),
            mode: m.mode() & 0o7777,
        })
    }
}

/// What a successful bind prints after the plan: whose the group is now and how to give it back.
/// `node` is what `stat` said about the report's `/dev/vfio/N` (checked, not assumed).
pub fn bind_outcome(
    r: &BindReport,
    primary: PciAddress,
    node: Option<&io::Result<NodeOwner>>,
    users: &UserNames,
) -> String {
    let release = format!("Release with: vfio-gate release {}", primary.short());
    let group = group_name(r.plan.group);
    match (&r.vfio_node, node) {
        (Some(path), Some(Ok(owner))) => format!(
            "{group} is yours: {path} (owner {}, mode {:04o}). {release}\n",
            users.display(owner.uid),
            owner.mode
        ),
        (Some(path), _) => format!("{group} is yours: {path}. {release}\n"),
        (None, _) => {
            let mut drivers: Vec<String> = r
                .plan
                .steps
                .iter()
                .filter(|s| s.device == primary)
                .filter_map(|s| match &s.action {
                    StepAction::Bind { driver, .. } => Some(driver.to_string()),
                    StepAction::Keep { .. } => None,
                })
                .collect();
            let on = drivers
                .pop()
                .map(|d| format!(" on {d}"))
                .unwrap_or_default();
            format!(
                "{group} is yours ({}{on}; no host driver will touch it). {release}\n",
                primary.short()
            )
        }
    }
}

/// What is wrong with the group node the helper handed over, if anything.
pub fn node_warning(path: &str, node: &io::Result<NodeOwner>, me: u32) -> Option<String> {
    match node {
        Err(e) => Some(format!(
            "cannot check {path}: {e}. If your VM cannot open it, see ls -l /dev/vfio and the \
             helper's log (journalctl -u vfio-gated.service)"
        )),
        Ok(o) if o.uid != me => Some(format!(
            "{path} is owned by uid {}, not by you (uid {me}): the helper should have handed it to \
             you; see its log (journalctl -u vfio-gated.service)",
            o.uid
        )),
        Ok(o) if o.mode & 0o077 != 0 => Some(format!(
            "{path} has mode {:04o}: other users may open it too; an admin should check the udev \
             rules for /dev/vfio",
            o.mode
        )),
        Ok(_) => None,
    }
}

/// The note `vfio-gate run` prints before it starts the command: "05:02.0 is on vfio-pci
/// (/dev/vfio/11) while qemu-system-x86_64 runs". Every device the bind moved is named, the ones
/// the user named first, in their order.
pub fn run_note(r: &BindReport, named: &[PciAddress], program: &str) -> String {
    let mut moved: Vec<(PciAddress, Driver)> = r
        .plan
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            StepAction::Bind { driver, .. } => Some((s.device, *driver)),
            StepAction::Keep { .. } => None,
        })
        .collect();
    moved.sort_by_key(|(d, _)| (named.iter().position(|n| n == d).unwrap_or(usize::MAX), *d));
    let node = r
        .vfio_node
        .as_ref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    let what = match moved.split_first() {
        None => format!("{} is yours{node}", group_name(r.plan.group)),
        Some(((first, driver), rest)) => {
            let mut parts = vec![format!("{} is on {driver}", first.short())];
            parts.extend(
                rest.iter()
                    .map(|(d, drv)| format!("{} on {drv}", d.short())),
            );
            format!("{}{node}", join_words(&parts))
        }
    };
    format!("{what} while {program} runs")
}

/// The note `vfio-gate run` prints after the release: "released IOMMU group 11".
pub fn run_released_note(r: &ReleaseReport) -> String {
    let mut groups: Vec<String> = r.groups.iter().map(|g| group_name(g.group)).collect();
    groups.sort();
    if groups.is_empty() {
        "the helper had nothing left to release".to_owned()
    } else {
        format!("released {}", join_words(&groups))
    }
}

/// The last line of a dry run.
pub fn dry_run_note(run_it: &str) -> String {
    format!("dry run: nothing was changed; run without --dry-run to do it: {run_it}\n")
}

/// True when the device went back to the driver it had before the bind.
pub fn restored_as_expected(d: &RestoredDevice) -> bool {
    d.restored_driver == d.expected_driver
}

/// The uids of the users whose groups a release gave back.
pub fn owner_uids(r: &ReleaseReport) -> BTreeSet<u32> {
    r.groups.iter().map(|g| g.owner_uid).collect()
}

/// What `release` prints on stdout: each group given back (in group order), then one line per
/// device in it, in address order. A group held by someone other than `me` says whose it was.
/// `nothing` is the line printed when nothing was released.
pub fn release_summary(r: &ReleaseReport, me: u32, users: &UserNames, nothing: &str) -> String {
    if r.groups.is_empty() {
        return format!("{nothing}\n");
    }
    let mut groups: Vec<&ReleasedGroup> = r.groups.iter().collect();
    groups.sort_by_key(|g| g.group);
    let mut text = String::new();
    for g in groups {
        let mut title = format!("Released {}", group_name(g.group));
        if g.owner_uid != me {
            title.push_str(&format!(" (held by {})", users.display(g.owner_uid)));
        }
        if g.devices.is_empty() {
            text.push_str(&format!("{title}; vfio-gate had moved no device in it.\n"));
            continue;
        }
        text.push_str(&title);
        text.push_str(":\n");
        let mut devices: Vec<&RestoredDevice> = g.devices.iter().collect();
        devices.sort_by_key(|d| d.device);
        for d in devices {
            text.push_str("  ");
            text.push_str(&restored_line(d));
            text.push('\n');
        }
    }
    text
}

/// "05:01.0 is back on e1000", or what became of it instead.
pub fn restored_line(d: &RestoredDevice) -> String {
    let addr = d.device.short();
    match (&d.expected_driver, &d.restored_driver) {
        (Some(e), Some(now)) if e == now => format!("{addr} is back on {now}"),
        (None, None) => format!("{addr} is released (it had no driver before, and has none now)"),
        (_, Some(now)) => format!("{addr} is released, and is now on {now}"),
        (_, None) => format!("{addr} is released, and now has no driver"),
    }
}

/// Every device a release gave back, in group then address order.
pub fn released_devices(r: &ReleaseReport) -> Vec<&RestoredDevice> {
    let mut groups: Vec<&ReleasedGroup> = r.groups.iter().collect();
    groups.sort_by_key(|g| g.group);
    let mut all = Vec::new();
    for g in groups {
        let mut devices: Vec<&RestoredDevice> = g.devices.iter().collect();
        devices.sort_by_key(|d| d.device);
        all.extend(devices);
    }
    all
}

/// Why a released device needs a look, when it did not go back to its previous driver.
pub fn release_warning(d: &RestoredDevice) -> Option<String> {
    if restored_as_expected(d) {
        return None;
    }
    let addr = d.device;
    let now = d
        .restored_driver
        .as_deref()
        .map_or_else(|| "has no driver".to_owned(), |d| format!("is on {d}"));
    Some(match &d.expected_driver {
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

/// What `release --json` prints: the helper's report (`groups`, each with `group`, `owner_uid`
/// and `devices`) plus whether every device went back to the driver it had before.
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
    use vfio_gate_protocol::{Holder, MemberKind, RuleRef};

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
            group: Some(8),
            tied: false,
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
            group: Some(8),
            tied: true,
        });
        let mut unknown = device("02:00.0", None, Some(9));
        unknown.vendor = 0xabcd;
        let names = PciNames::parse(
            include_str!("../tests/data/pci.ids").as_bytes(),
            &wanted_names(&[d.clone(), unknown.clone()]),
        );
        assert_eq!(holder_uids(&[d.clone()]), BTreeSet::from([1000]));
        let users = UserNames::from_pairs([(1000, "alice")]);
        let text = render(&device_table(&[unknown, d], &names, &users));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("HOLDER       NAME"), "{text}");
        assert!(
            lines[1].starts_with(
                "01:00.0  8086:10d3  Ethernet controller  e1000e  8      -        alice (run)"
            ),
            "{text}"
        );
        assert!(
            lines[1].ends_with("alice (run)  Intel Corporation 82574L Gigabit Network Connection"),
            "{text}"
        );
        assert!(lines[2].starts_with("02:00.0  abcd:10d3"), "{text}");
        assert!(lines[2].ends_with("-            -"), "{text}");
    }

    fn rule(name: &str, line: u32) -> RuleRef {
        RuleRef {
            name: name.into(),
            file: "/etc/vfio-gate/policy.toml".into(),
            line,
        }
    }

    /// The test guest's group 11: a PCIe-to-PCI bridge, an e1000 and an edu device.
    fn group_11() -> Plan {
        let step = |a: &str, kind, vendor, device_id, driver: Option<&str>, action| PlanStep {
            device: addr(a),
            kind,
            vendor,
            device_id,
            driver: driver.map(str::to_owned),
            action,
        };
        Plan {
            group: Some(11),
            // Out of order on purpose: the table sorts by address.
            steps: vec![
                step(
                    "05:02.0",
                    MemberKind::Endpoint,
                    0x1234,
                    0x11e8,
                    None,
                    StepAction::Bind {
                        driver: Driver::VfioPci,
                        rule: rule("lab", 12),
                    },
                ),
                step(
                    "04:00.0",
                    MemberKind::Bridge,
                    0x1b36,
                    0x000e,
                    Some("pcieport"),
                    StepAction::Keep {
                        reason: "keeps the group viable".into(),
                    },
                ),
                step(
                    "05:01.0",
                    MemberKind::Endpoint,
                    0x8086,
                    0x100e,
                    Some("e1000"),
                    StepAction::Bind {
                        driver: Driver::PciStub,
                        rule: rule("companions", 20),
                    },
                ),
            ],
        }
    }

    #[test]
    fn plan_table_shows_member_ids_kind_driver_and_action() {
        let plan = group_11();
        assert_eq!(
            render(&plan_table(&plan, &PciNames::default())),
            "\
MEMBER   IDS        KIND      DRIVER    ACTION
04:00.0  1b36:000e  bridge    pcieport  stays on pcieport: keeps the group viable
05:01.0  8086:100e  endpoint  e1000     → pci-stub (rule 'companions', /etc/vfio-gate/policy.toml:20)
05:02.0  1234:11e8  endpoint  -         → vfio-pci (rule 'lab', /etc/vfio-gate/policy.toml:12)
"
        );
        let names = PciNames::parse(
            include_str!("../tests/data/pci.ids").as_bytes(),
            &plan_names(&plan),
        );
        let block = plan_block("IOMMU group 11:", &plan, &names);
        assert_eq!(
            block,
            "\
IOMMU group 11:
  MEMBER   IDS        NAME                                 KIND      DRIVER    ACTION
  04:00.0  1b36:000e  QEMU PCIe-to-PCI bridge              bridge    pcieport  stays on pcieport: keeps the group viable
  05:01.0  8086:100e  82540EM Gigabit Ethernet Controller  endpoint  e1000     → pci-stub (rule 'companions', /etc/vfio-gate/policy.toml:20)
  05:02.0  1234:11e8  QEMU edu device                      endpoint  -         → vfio-pci (rule 'lab', /etc/vfio-gate/policy.toml:12)
"
        );
    }

    #[test]
    fn a_kept_member_without_a_driver_says_so() {
        let step = PlanStep {
            device: addr("00:1f.0"),
            kind: MemberKind::OtherBridge,
            vendor: 0x8086,
            device_id: 0x2918,
            driver: None,
            action: StepAction::Keep {
                reason: "no driver claims DMA".into(),
            },
        };
        assert_eq!(
            action_text(&step),
            "stays without a driver: no driver claims DMA"
        );
    }

    #[test]
    fn the_needs_group_step_names_what_else_moves_and_what_stays() {
        let plan = group_11();
        assert_eq!(
            needs_group_step(&plan, &[addr("05:02.0")], "vfio-gate bind 05:02.0 --group"),
            "Re-run with --group to also put 05:01.0 on pci-stub and leave 04:00.0 on pcieport: \
             vfio-gate bind 05:02.0 --group"
        );
        // Both endpoints named: nothing else moves.
        let step = needs_group_step(&plan, &[addr("05:02.0"), addr("05:01.0")], "X");
        assert_eq!(
            step,
            "Re-run with --group to bind the group as a whole and leave 04:00.0 on pcieport: X"
        );
        assert_eq!(
            join_words(&["a".into(), "b".into(), "c".into()]),
            "a, b and c"
        );
    }

    fn report(vfio_node: Option<&str>, dry_run: bool) -> BindReport {
        BindReport {
            plan: group_11(),
            dry_run,
            vfio_node: vfio_node.map(str::to_owned),
        }
    }

    #[test]
    fn bind_outcome_names_the_node_its_owner_and_the_release_command() {
        let users = UserNames::from_pairs([(1000, "alice")]);
        let r = report(Some("/dev/vfio/11"), false);
        let owner = Ok(NodeOwner {
            uid: 1000,
            mode: 0o600,
        });
        assert_eq!(
            bind_outcome(&r, addr("05:02.0"), Some(&owner), &users),
            "IOMMU group 11 is yours: /dev/vfio/11 (owner alice, mode 0600). Release with: \
             vfio-gate release 05:02.0\n"
        );
        let missing = Err(io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(
            bind_outcome(&r, addr("05:02.0"), Some(&missing), &users),
            "IOMMU group 11 is yours: /dev/vfio/11. Release with: vfio-gate release 05:02.0\n"
        );
        let stub = bind_outcome(&report(None, false), addr("05:01.0"), None, &users);
        assert_eq!(
            stub,
            "IOMMU group 11 is yours (05:01.0 on pci-stub; no host driver will touch it). \
             Release with: vfio-gate release 05:01.0\n"
        );
    }

    #[test]
    fn the_run_note_names_what_moved_and_the_node() {
        let r = report(Some("/dev/vfio/11"), false);
        assert_eq!(
            run_note(&r, &[addr("05:02.0")], "qemu-system-x86_64"),
            "05:02.0 is on vfio-pci and 05:01.0 on pci-stub (/dev/vfio/11) while \
             qemu-system-x86_64 runs"
        );
        assert_eq!(
            run_note(&r, &[addr("05:01.0"), addr("05:02.0")], "sh"),
            "05:01.0 is on pci-stub and 05:02.0 on vfio-pci (/dev/vfio/11) while sh runs"
        );
        let mut nothing_moved = report(None, false);
        nothing_moved.plan.steps.clear();
        assert_eq!(
            run_note(&nothing_moved, &[addr("05:02.0")], "sh"),
            "IOMMU group 11 is yours while sh runs"
        );
        let released = ReleaseReport {
            groups: vec![ReleasedGroup {
                group: Some(11),
                owner_uid: 0,
                devices: vec![],
            }],
        };
        assert_eq!(run_released_note(&released), "released IOMMU group 11");
        assert_eq!(
            run_released_note(&ReleaseReport { groups: vec![] }),
            "the helper had nothing left to release"
        );
    }

    #[test]
    fn node_warnings_catch_another_owner_a_loose_mode_and_a_missing_node() {
        let ok = Ok(NodeOwner {
            uid: 1000,
            mode: 0o600,
        });
        assert_eq!(node_warning("/dev/vfio/11", &ok, 1000), None);
        let w = node_warning("/dev/vfio/11", &ok, 1001).unwrap();
        assert!(
            w.contains("owned by uid 1000, not by you (uid 1001)"),
            "{w}"
        );
        let loose = Ok(NodeOwner {
            uid: 1000,
            mode: 0o666,
        });
        let w = node_warning("/dev/vfio/11", &loose, 1000).unwrap();
        assert!(w.contains("mode 0666"), "{w}");
        let missing = Err(io::Error::from(io::ErrorKind::NotFound));
        let w = node_warning("/dev/vfio/11", &missing, 1000).unwrap();
        assert!(w.starts_with("cannot check /dev/vfio/11: "), "{w}");
    }

    #[test]
    fn bind_json_is_the_report() {
        let mut out = Vec::new();
        write_json(&mut out, &report(Some("/dev/vfio/11"), false)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["plan"]["group"], 11);
        assert_eq!(v["dry_run"], false);
        assert_eq!(v["vfio_node"], "/dev/vfio/11");
        assert_eq!(v["plan"]["steps"][0]["device"], "0000:05:02.0");
        assert_eq!(
            v["plan"]["steps"][0]["action"]["Bind"]["driver"],
            "vfio-pci"
        );
    }

    fn restored(a: &str, expected: Option<&str>, restored: Option<&str>) -> RestoredDevice {
        RestoredDevice {
            device: addr(a),
            expected_driver: expected.map(str::to_owned),
            restored_driver: restored.map(str::to_owned),
        }
    }

    fn group(g: Option<u32>, owner_uid: u32, devices: Vec<RestoredDevice>) -> ReleasedGroup {
        ReleasedGroup {
            group: g,
            owner_uid,
            devices,
        }
    }

    #[test]
    fn release_summary_lists_each_device_in_address_order() {
        let r = ReleaseReport {
            groups: vec![group(
                Some(11),
                1000,
                vec![
                    restored("05:02.0", None, None),
                    restored("05:01.0", Some("e1000"), Some("e1000")),
                ],
            )],
        };
        let users = UserNames::default();
        assert_eq!(
            release_summary(&r, 1000, &users, "-"),
            "Released IOMMU group 11:\n  \
             05:01.0 is back on e1000\n  \
             05:02.0 is released (it had no driver before, and has none now)\n"
        );
        assert!(
            released_devices(&r)
                .into_iter()
                .all(|d| release_warning(d).is_none())
        );
        let empty = ReleaseReport {
            groups: vec![group(None, 1000, vec![])],
        };
        assert_eq!(
            release_summary(&empty, 1000, &users, "-"),
            "Released no IOMMU group; vfio-gate had moved no device in it.\n"
        );
        let nothing = ReleaseReport { groups: vec![] };
        assert_eq!(
            release_summary(&nothing, 1000, &users, "Nothing to release."),
            "Nothing to release.\n"
        );
    }

    #[test]
    fn release_summary_groups_devices_and_names_other_holders() {
        let users = UserNames::from_pairs([(1001, "bob")]);
        let r = ReleaseReport {
            groups: vec![
                group(
                    Some(12),
                    1001,
                    vec![restored("06:00.0", Some("e1000e"), Some("e1000e"))],
                ),
                group(
                    Some(11),
                    4242,
                    vec![
                        restored("05:02.0", None, None),
                        restored("05:01.0", Some("e1000"), Some("pci-stub")),
                    ],
                ),
            ],
        };
        assert_eq!(owner_uids(&r), BTreeSet::from([1001, 4242]));
        assert_eq!(
            release_summary(&r, 1001, &users, "-"),
            "Released IOMMU group 11 (held by 4242):\n  \
             05:01.0 is released, and is now on pci-stub\n  \
             05:02.0 is released (it had no driver before, and has none now)\n\
             Released IOMMU group 12:\n  \
             06:00.0 is back on e1000e\n"
        );
        let order: Vec<String> = released_devices(&r)
            .iter()
            .map(|d| d.device.short())
            .collect();
        assert_eq!(order, ["05:01.0", "05:02.0", "06:00.0"]);
    }

    #[test]
    fn release_to_another_driver_warns_with_what_to_check() {
        let d = restored("01:00.0", Some("snd_hda_intel"), None);
        assert_eq!(
            restored_line(&d),
            "01:00.0 is released, and now has no driver"
        );
        let w = release_warning(&d).unwrap();
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
        let w = release_warning(&restored("01:00.0", Some("vfio-pci"), Some("pci-stub"))).unwrap();
        assert!(
            w.contains("it is on pci-stub") && w.contains("lsmod | grep vfio_pci"),
            "{w}"
        );
        assert!(release_warning(&restored("01:00.0", None, Some("e1000e"))).is_some());
    }
}
