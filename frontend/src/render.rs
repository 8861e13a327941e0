//! What the commands' output has in common: text tables, the group plan as `bind`, `run` and
//! `explain` show it, the words for groups, guards, ids and policy files, and the JSON writer.
//!
//! Each command's own text and JSON live with the command (`crate::cmd`). Everything here
//! returns text or writes to the `Write` it is given, and leaves the printing to the caller.

use std::fmt;
use std::io::{self, Write};

use serde::Serialize;
use vfio_gate_policy::PolicySource;
use vfio_gate_protocol::{Guard, Plan, PlanStep, StepAction};

use crate::pci_ids::{PciNames, Wanted};

/// A text table: left-aligned columns separated by two spaces, no trailing whitespace. Its
/// `Display` is the lines of the table, header first, each ending in a newline.
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
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Writes `value` as pretty JSON and a newline.
pub fn write_json(w: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *w, value).map_err(io::Error::from)?;
    writeln!(w)
}

/// "8086:10d3": a vendor and device id as lspci prints them.
pub fn ids(vendor: u16, device: u16) -> String {
    format!("{vendor:04x}:{device:04x}")
}

/// "IOMMU group 11" or "no IOMMU group".
pub fn group_name(group: Option<u32>) -> String {
    group.map_or_else(
        || "no IOMMU group".to_owned(),
        |g| format!("IOMMU group {g}"),
    )
}

/// "a", "a and b", "a, b and c".
pub fn join_words(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// "1 warning", "2 warnings".
pub fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// "/etc/vfio-gate/policy.toml and 2 drop-ins".
pub fn files_text(files: &[PolicySource]) -> String {
    match files {
        [] => "no file".to_owned(),
        [main] => main.path.clone(),
        [main, rest @ ..] => format!(
            "{} and {} drop-in{}",
            main.path,
            rest.len(),
            if rest.len() == 1 { "" } else { "s" }
        ),
    }
}

/// A short name for a guard, for tables and headings.
pub fn guard_label(g: Guard) -> &'static str {
    match g {
        Guard::BootVga => "boot VGA",
        Guard::HostInUse => "in use by the host",
        Guard::NotEndpoint => "not an endpoint",
        Guard::SriovEnabled => "SR-IOV VFs enabled",
        Guard::NoIommuGroup => "no IOMMU group",
    }
}

/// The ids of a plan's members whose names the plan table shows.
pub fn plan_names(plan: &Plan) -> Wanted {
    let mut wanted = Wanted::default();
    for s in &plan.steps {
        wanted.add_device(s.vendor, s.device_id);
    }
    wanted
}

/// "→ vfio-pci (rule 'lab', /etc/vfio-gate/policy.toml:12)", "stays on vfio-pci: yours as it is
/// (rule 'lab', …)" (adopted: already on the driver asked for) or "stays on pcieport: keeps the
/// group viable".
pub fn action_text(step: &PlanStep) -> String {
    match &step.action {
        StepAction::Bind { driver, rule } => {
            format!(
                "→ {driver} (rule '{}', {}:{})",
                rule.name, rule.file, rule.line
            )
        }
        StepAction::Adopt { driver, rule } => {
            format!(
                "stays on {driver}: yours as it is (rule '{}', {}:{})",
                rule.name, rule.file, rule.line
            )
        }
        StepAction::Keep { reason } => match &step.driver {
            Some(d) => format!("stays on {d}: {reason}"),
            None => format!("stays without a driver: {reason}"),
        },
    }
}

/// The members a plan takes as they are (already on the driver asked for): "00:06.0 on vfio-pci".
pub fn adopted(plan: &Plan) -> Vec<String> {
    let mut steps: Vec<&PlanStep> = plan.steps.iter().collect();
    steps.sort_by_key(|s| s.device);
    steps
        .iter()
        .filter_map(|s| match &s.action {
            StepAction::Adopt { driver, .. } => Some(format!("{} on {driver}", s.device.short())),
            StepAction::Bind { .. } | StepAction::Keep { .. } => None,
        })
        .collect()
}

/// The line a bind (or its dry run) prints under the plan when it takes members as they are:
/// nothing moves for them, and a release leaves them there. `None` when it adopts nothing.
pub fn adopt_note(plan: &Plan, dry_run: bool) -> Option<String> {
    let adopted = adopted(plan);
    if adopted.is_empty() {
        return None;
    }
    let (it, them) = if adopted.len() == 1 {
        ("it", "it")
    } else {
        ("they", "them")
    };
    let what = join_words(&adopted);
    Some(if dry_run {
        format!(
            "Already there: {what}; the bind takes {them} as {it} {}, with no unbind or probe, \
             and a release leaves {them} there\n",
            if adopted.len() == 1 { "is" } else { "are" }
        )
    } else {
        format!(
            "Nothing moved for {what}: taken as {it} {}, with no unbind or probe; a release \
             leaves {them} there\n",
            if adopted.len() == 1 { "was" } else { "were" }
        )
    })
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
        let mut row = vec![s.device.short(), ids(s.vendor, s.device_id)];
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

/// The plan table under a title line, indented by two spaces.
pub fn plan_block(title: &str, plan: &Plan, names: &PciNames) -> String {
    let mut text = format!("{title}\n");
    for line in plan_table(plan, names).to_string().lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Test data the commands' tests share.

    use vfio_gate_protocol::{
        BindReport, Driver, MemberKind, PciAddress, Plan, PlanStep, RuleRef, StepAction,
    };

    pub fn addr(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    pub fn rule(name: &str, line: u32) -> RuleRef {
        RuleRef {
            name: name.into(),
            file: "/etc/vfio-gate/policy.toml".into(),
            line,
        }
    }
    /// The test guest's group 11: a PCIe-to-PCI bridge, an e1000 and an edu device.
    pub fn group_11() -> Plan {
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

    /// [`group_11`] with the edu device already on vfio-pci (`vfio-pci.ids=`, a reservation):
    /// the bind takes it as it is.
    pub fn group_11_adopting() -> Plan {
        let mut plan = group_11();
        let edu = &mut plan.steps[0];
        edu.driver = Some("vfio-pci".into());
        edu.action = StepAction::Adopt {
            driver: Driver::VfioPci,
            rule: rule("lab", 12),
        };
        plan
    }

    /// A bind of [`group_11`].
    pub fn bind_report(vfio_node: Option<&str>, dry_run: bool) -> BindReport {
        BindReport {
            plan: group_11(),
            dry_run,
            vfio_node: vfio_node.map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use vfio_gate_protocol::MemberKind;

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let mut t = Table::new(vec!["A", "LONGER", "C"]);
        t.push(vec!["xyz".into(), "1".into(), "end".into()]);
        t.push(vec!["é".into(), "".into(), "".into()]);
        assert_eq!(t.to_string(), "A    LONGER  C\nxyz  1       end\né\n");
    }

    #[test]
    fn plan_table_shows_member_ids_kind_driver_and_action() {
        let plan = group_11();
        assert_eq!(
            plan_table(&plan, &PciNames::default()).to_string(),
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
    fn an_adopted_member_stays_where_it_is_and_the_note_says_nothing_moved() {
        let plan = group_11_adopting();
        let table = plan_table(&plan, &PciNames::default()).to_string();
        assert!(
            table.contains(
                "05:02.0  1234:11e8  endpoint  vfio-pci  stays on vfio-pci: yours as it is (rule \
                 'lab', /etc/vfio-gate/policy.toml:12)"
            ),
            "{table}"
        );
        assert_eq!(adopted(&plan), ["05:02.0 on vfio-pci"]);
        assert_eq!(
            adopt_note(&plan, false).unwrap(),
            "Nothing moved for 05:02.0 on vfio-pci: taken as it was, with no unbind or probe; a \
             release leaves it there\n"
        );
        assert_eq!(
            adopt_note(&plan, true).unwrap(),
            "Already there: 05:02.0 on vfio-pci; the bind takes it as it is, with no unbind or \
             probe, and a release leaves it there\n"
        );
        assert_eq!(adopt_note(&group_11(), false), None);
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
    fn words_for_lists_counts_and_files() {
        assert_eq!(join_words(&[]), "");
        assert_eq!(join_words(&["a".into()]), "a");
        assert_eq!(join_words(&["a".into(), "b".into()]), "a and b");
        assert_eq!(
            join_words(&["a".into(), "b".into(), "c".into()]),
            "a, b and c"
        );
        assert_eq!(
            (count(1, "note"), count(2, "note")),
            ("1 note".to_owned(), "2 notes".to_owned())
        );
        assert_eq!(ids(0x8086, 0xe), "8086:000e");
        let file = |path: &str| PolicySource {
            path: path.into(),
            sha256: String::new(),
        };
        assert_eq!(files_text(&[]), "no file");
        assert_eq!(files_text(&[file("/p.toml")]), "/p.toml");
        assert_eq!(
            files_text(&[
                file("/p.toml"),
                file("/policy.d/a.toml"),
                file("/policy.d/b.toml")
            ]),
            "/p.toml and 2 drop-ins"
        );
    }
}
