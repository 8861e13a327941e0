//! Rendering of the audit commands: `explain`, `policy check` and `policy report`, for people
//! (text) and for scripts (the JSON documents defined here).

use std::fmt::Write as _;

use serde::Serialize;
use vfio_gate_host::plan::moves_companions;
use vfio_gate_policy::{Finding, PolicySource, Severity};
use vfio_gate_protocol::{Driver, DriverVerdict, ExplainReport, Guard, Holder, Plan, RuleRef};

use crate::localtime;
use crate::offline::PermissionRow;
use crate::output::{Table, group_name, plan_block};
use crate::pci_ids::{PciNames, Wanted};
use crate::users::UserNames;

/// Where an explanation comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The helper answered.
    Helper,
    /// Computed here from these policy files (main file first) and this host's sysfs.
    Offline(Vec<PolicySource>),
}

/// "'lab' (/etc/vfio-gate/policy.toml:12)".
fn rule_text(r: &RuleRef) -> String {
    format!("'{}' ({}:{})", r.name, r.file, r.line)
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

/// The ids whose names an explanation shows: the device, its class, the plan's members.
pub fn explain_names(r: &ExplainReport) -> Wanted {
    let mut wanted = Wanted::default();
    wanted.add(r.vendor, r.device_id, r.class);
    if let Some(Ok(plan)) = &r.plan {
        for s in &plan.steps {
            wanted.add_device(s.vendor, s.device_id);
        }
    }
    wanted
}

/// The uids an explanation names: whom it is for, and the holder.
pub fn explain_uids(r: &ExplainReport) -> std::collections::BTreeSet<u32> {
    let mut uids = std::collections::BTreeSet::from([r.uid]);
    if let Some(h) = &r.holder {
        uids.insert(h.uid);
    }
    uids
}

/// One driver's verdict: the decision with its rule, then the other rules that match.
fn verdict_lines(v: &DriverVerdict) -> Vec<String> {
    let head = format!("{:<8}  ", v.driver.as_str());
    let pad = " ".repeat(head.len() + 9);
    let mut lines = Vec::new();
    match (&v.rule, v.allowed) {
        (Some(rule), true) => {
            lines.push(format!("{head}ALLOWED  by rule {}", rule_text(rule)));
            for other in v.allows.iter().filter(|r| *r != rule) {
                lines.push(format!("{pad}also allowed by {}", rule_text(other)));
            }
        }
        (Some(rule), false) => {
            lines.push(format!("{head}DENIED   by rule {}", rule_text(rule)));
            for other in v.denies.iter().filter(|r| *r != rule) {
                lines.push(format!("{pad}also denied by {}", rule_text(other)));
            }
            for allow in &v.allows {
                lines.push(format!(
                    "{pad}overrides the allow {} (deny wins)",
                    rule_text(allow)
                ));
            }
        }
        (None, _) => {
            lines.push(format!("{head}DENIED   no rule matches: denied by default"));
        }
    }
    lines
}

fn holder_text(h: &Holder, users: &UserNames) -> String {
    let when = localtime::when(h.since, localtime::now_unix());
    let tied = if h.tied {
        "; until the command of its vfio-gate run exits"
    } else {
        ""
    };
    format!(
        "{} since {when} (on {}{tied})",
        users.display(h.uid),
        h.driver
    )
}

/// Why there is no plan, when the report has none.
fn no_plan_reason(r: &ExplainReport) -> String {
    let short = r.device.short();
    if r.iommu_group.is_none() {
        return format!("No group plan: {short} has no IOMMU group");
    }
    match r.verdicts.iter().find(|v| v.driver == Driver::VfioPci) {
        Some(_) => "No group plan: the policy does not allow vfio-pci".to_owned(),
        None => "No group plan: a pci-stub bind moves only the device itself".to_owned(),
    }
}

fn plan_section(r: &ExplainReport, plan: &Plan, names: &PciNames) -> String {
    let title = format!("With vfio-pci, {} would be:", group_name(plan.group));
    let mut text = plan_block(&title, plan, names);
    let short = r.device.short();
    if r.guards.is_empty() {
        if moves_companions(plan, &[r.device]) {
            let _ = writeln!(
                text,
                "  The bind moves other members too, so it needs --group: vfio-gate bind {short} --group"
            );
        } else {
            let _ = writeln!(text, "  The bind: vfio-gate bind {short}");
        }
    }
    text
}

/// The explanation for people. `users` names the uids of [`explain_uids`].
pub fn explain_text(
    r: &ExplainReport,
    names: &PciNames,
    users: &UserNames,
    source: &Source,
) -> String {
    let mut t = String::new();
    let short = r.device.short();
    let ids = format!("{:04x}:{:04x}", r.vendor, r.device_id);
    match names.device_name(r.vendor, r.device_id) {
        Some(name) => {
            let _ = writeln!(t, "{short}  {ids}  {name}");
        }
        None => {
            let _ = writeln!(t, "{short}  {ids}");
        }
    }
    let class = match names.class_name(r.class) {
        Some(n) => format!("{:06x} ({n})", r.class),
        None => format!("{:06x}", r.class),
    };
    let _ = writeln!(t, "  class    {class}");
    let _ = writeln!(t, "  driver   {}", r.driver.as_deref().unwrap_or("none"));
    let _ = writeln!(t, "  group    {}", group_name(r.iommu_group));
    let held = match (&r.holder, source) {
        (Some(h), _) => holder_text(h, users),
        (None, Source::Helper) => "nobody".to_owned(),
        (None, Source::Offline(_)) => {
            "not known offline (the helper keeps the leases: vfio-gate list shows them)".to_owned()
        }
    };
    let _ = writeln!(t, "  held by  {held}");

    let who = match users.name(r.uid) {
        Some(name) => format!("{name} (uid {})", r.uid),
        None => format!("uid {}", r.uid),
    };
    let _ = writeln!(t, "For {who}:");
    for v in &r.verdicts {
        for line in verdict_lines(v) {
            let _ = writeln!(t, "  {line}");
        }
    }

    if r.guards.is_empty() {
        let _ = writeln!(t, "Guards: none refuses {short} now");
    } else {
        let _ = writeln!(
            t,
            "Refused now by a built-in guard, whatever the policy says:"
        );
        for g in &r.guards {
            let _ = writeln!(t, "  {}: {}", guard_label(g.guard), g.reason);
        }
    }

    match &r.plan {
        Some(Ok(plan)) => t.push_str(&plan_section(r, plan, names)),
        Some(Err(reason)) => {
            let _ = writeln!(
                t,
                "No plan works for {} with vfio-pci: {reason}",
                group_name(r.iommu_group)
            );
        }
        None => {
            let _ = writeln!(t, "{}", no_plan_reason(r));
        }
    }

    match source {
        Source::Helper => {
            let _ = writeln!(t, "Policy sha256 {} (the helper's)", r.policy_sha256);
        }
        Source::Offline(files) => {
            let _ = writeln!(
                t,
                "Policy sha256 {} ({}, read offline)",
                r.policy_sha256,
                files_text(files)
            );
        }
    }
    t
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

/// "1 warning", "2 warnings".
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// How many findings of each severity: (errors, warnings, notes).
pub fn tally(findings: &[Finding]) -> (usize, usize, usize) {
    let n = |s| findings.iter().filter(|f| f.severity == s).count();
    (n(Severity::Error), n(Severity::Warning), n(Severity::Info))
}

/// `policy check` for people: one `file:line: severity: message` line per finding, then the
/// summary. `loaded` is the loaded policy's files and hash, `None` when it was refused.
pub fn check_text(
    path: &str,
    findings: &[Finding],
    loaded: Option<(&[PolicySource], &str)>,
) -> String {
    let mut t = String::new();
    for f in findings {
        let _ = writeln!(t, "{f}");
    }
    let (errors, warnings, notes) = tally(findings);
    match loaded {
        None => {
            let _ = writeln!(
                t,
                "policy check: {path} is refused ({}): the helper would serve nothing with it",
                count(errors, "error")
            );
        }
        Some((files, sha)) => {
            let verdict = if warnings == 0 { "clean" } else { "loads" };
            let _ = writeln!(
                t,
                "policy check: {} {verdict}: {}, {}; sha256 {sha}",
                files_text(files),
                count(warnings, "warning"),
                count(notes, "note")
            );
        }
    }
    t
}

/// `policy check --json`.
#[derive(Debug, Serialize)]
pub struct CheckJson<'a> {
    /// The main policy file checked.
    pub policy: &'a str,
    /// Whether the policy loads (the helper would serve it).
    pub loaded: bool,
    /// The policy hash, when it loads.
    pub sha256: Option<&'a str>,
    /// The files loaded, main file first, each with its own hash.
    pub files: &'a [PolicySource],
    /// Every finding, sorted by file and line: severity, file, line (0: the file as a whole),
    /// rule (or null), message.
    pub findings: &'a [Finding],
    pub errors: usize,
    pub warnings: usize,
    pub notes: usize,
    /// The exit status: 0 clean, 8 warnings, 9 errors.
    pub exit_code: u8,
}

/// The ids whose names a report shows.
pub fn report_names(rows: &[PermissionRow]) -> Wanted {
    let mut wanted = Wanted::default();
    for r in rows {
        wanted.add_device(r.vendor, r.device_id);
    }
    wanted
}

/// The `policy report` table, in the rows' order (user, then device, then driver).
pub fn report_table(rows: &[PermissionRow], names: &PciNames) -> Table {
    let with_names = !names.is_empty();
    let mut headers = vec!["USER", "UID", "DEVICE", "IDS"];
    if with_names {
        headers.push("NAME");
    }
    headers.extend(["DRIVER", "RULE", "WHERE", "GUARD"]);
    let mut table = Table::new(headers);
    for r in rows {
        let mut row = vec![
            r.user.clone(),
            r.uid.to_string(),
            r.device.short(),
            format!("{:04x}:{:04x}", r.vendor, r.device_id),
        ];
        if with_names {
            row.push(
                names
                    .short_device_name(r.vendor, r.device_id)
                    .unwrap_or_else(|| "-".to_owned()),
            );
        }
        let guard = match (&r.guard, &r.guard_error) {
            (Some(g), _) => format!("refused: {}", guard_label(g.guard)),
            (None, Some(_)) => "cannot tell".to_owned(),
            (None, None) => "-".to_owned(),
        };
        row.extend([
            r.driver.to_string(),
            r.rule.name.clone(),
            format!("{}:{}", r.rule.file, r.rule.line),
            guard,
        ]);
        table.push(row);
    }
    table
}

/// The line under the report table.
pub fn report_summary(rows: &[PermissionRow], files: &[PolicySource], sha: &str) -> String {
    let users: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.user.as_str()).collect();
    let guarded = rows.iter().filter(|r| r.guard.is_some()).count();
    let mut line = if rows.is_empty() {
        "The policy grants nothing to anyone on this host".to_owned()
    } else {
        format!(
            "{} for {}",
            count(rows.len(), "permission"),
            count(users.len(), "user")
        )
    };
    if guarded > 0 {
        let _ = write!(
            line,
            " ({guarded} refused now by a built-in guard: vfio-gate explain ADDR --policy PATH says why)"
        );
    }
    format!("{line}; {}, sha256 {sha}\n", files_text(files))
}

/// `policy report --json`.
#[derive(Debug, Serialize)]
pub struct ReportJson<'a> {
    pub policy: &'a str,
    pub sha256: &'a str,
    pub files: &'a [PolicySource],
    /// One row per (user, device, driver) the policy grants, sorted by user, device, driver.
    pub rows: &'a [PermissionRow],
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_gate_protocol::GuardFinding;

    fn rule(name: &str, line: u32) -> RuleRef {
        RuleRef {
            name: name.into(),
            file: "/p.toml".into(),
            line,
        }
    }

    fn verdict(
        allowed: bool,
        rule_: Option<RuleRef>,
        allows: &[RuleRef],
        denies: &[RuleRef],
    ) -> DriverVerdict {
        DriverVerdict {
            driver: Driver::VfioPci,
            allowed,
            rule: rule_,
            allows: allows.to_vec(),
            denies: denies.to_vec(),
        }
    }

    #[test]
    fn verdicts_name_the_deciding_rule_and_the_others() {
        let lab = rule("lab", 3);
        let more = rule("more", 9);
        let fence = rule("fence", 20);
        assert_eq!(
            verdict_lines(&verdict(
                true,
                Some(lab.clone()),
                &[lab.clone(), more.clone()],
                &[]
            )),
            [
                "vfio-pci  ALLOWED  by rule 'lab' (/p.toml:3)",
                "                   also allowed by 'more' (/p.toml:9)",
            ]
        );
        assert_eq!(
            verdict_lines(&verdict(false, Some(fence.clone()), &[lab], &[fence])),
            [
                "vfio-pci  DENIED   by rule 'fence' (/p.toml:20)",
                "                   overrides the allow 'lab' (/p.toml:3) (deny wins)",
            ]
        );
        assert_eq!(
            verdict_lines(&verdict(false, None, &[], &[])),
            ["vfio-pci  DENIED   no rule matches: denied by default"]
        );
    }

    #[test]
    fn an_explanation_without_a_group_says_why_there_is_no_plan() {
        let r = ExplainReport {
            device: "01:00.0".parse().unwrap(),
            vendor: 0x8086,
            device_id: 0x10d3,
            class: 0x020000,
            driver: Some("e1000e".into()),
            iommu_group: None,
            uid: 4242,
            verdicts: vec![verdict(false, None, &[], &[])],
            guards: vec![GuardFinding {
                guard: Guard::NoIommuGroup,
                reason: "01:00.0 has no IOMMU group".into(),
            }],
            plan: None,
            holder: None,
            policy_sha256: "ab".repeat(32),
        };
        let text = explain_text(
            &r,
            &PciNames::default(),
            &UserNames::default(),
            &Source::Helper,
        );
        assert_eq!(
            text,
            format!(
                "\
01:00.0  8086:10d3
  class    020000 (Network controller)
  driver   e1000e
  group    no IOMMU group
  held by  nobody
For uid 4242:
  vfio-pci  DENIED   no rule matches: denied by default
Refused now by a built-in guard, whatever the policy says:
  no IOMMU group: 01:00.0 has no IOMMU group
No group plan: 01:00.0 has no IOMMU group
Policy sha256 {} (the helper's)
",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn the_check_summary_counts_and_names_the_files() {
        let files = [
            PolicySource {
                path: "/p.toml".into(),
                sha256: "1".into(),
            },
            PolicySource {
                path: "/policy.d/a.toml".into(),
                sha256: "2".into(),
            },
        ];
        let warning = Finding {
            severity: Severity::Warning,
            file: "/p.toml".into(),
            line: 4,
            rule: Some("r".into()),
            message: "m".into(),
        };
        assert_eq!(
            check_text(
                "/p.toml",
                std::slice::from_ref(&warning),
                Some((&files, "ff"))
            ),
            "/p.toml:4: warning: m\npolicy check: /p.toml and 1 drop-in loads: 1 warning, 0 notes; sha256 ff\n"
        );
        let error = Finding {
            severity: Severity::Error,
            ..warning
        };
        assert!(check_text("/p.toml", &[error], None).ends_with(
            "policy check: /p.toml is refused (1 error): the helper would serve nothing with it\n"
        ));
        assert_eq!(tally(&[]), (0, 0, 0));
    }
}
