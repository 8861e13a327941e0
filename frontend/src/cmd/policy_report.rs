//! `vfio-gate policy report`: the effective permissions on this host — every account (and uid a
//! rule names), device and driver the policy grants, with the rule that grants it and the guard
//! that refuses the device now — as a table or as JSON rows.

use std::fmt::Write as _;
use std::io::Write;

use serde::Serialize;
use vfio_gate_policy::PolicySource;

use super::Context;
use crate::cli::PolicyReportArgs;
use crate::error::{Error, Status};
use crate::json::{self, GuardJson, PolicyJson, Rule};
use crate::offline::{self, Evaluator, Host, PermissionRow};
use crate::pci_ids::{PciNames, Wanted};
use crate::render::{Table, count, files_text, guard_label, ids};

/// `vfio-gate policy report [--policy PATH]`: every permission the policy grants on this host.
pub fn run(
    ctx: &Context<'_>,
    args: &PolicyReportArgs,
    out: &mut impl Write,
) -> Result<Status, Error> {
    let host = Host::from(&args.host);
    let policy_path = offline::absolute(&args.policy);
    let policy = host.load_policy(&policy_path).map_err(Error::Policy)?;
    let subjects = offline::report_subjects(&policy, host.accounts()?);
    let devices = host.devices()?;
    let view = host.view();
    let host_use = host.host_use();
    let evaluator = Evaluator {
        policy: &policy,
        view: &view,
        host_use: &host_use,
        rule: offline::viability(),
        sysfs: &host.sysfs,
    };
    let rows = evaluator.report(&subjects, &devices);
    let sha = policy.sha256();
    let path = policy_path.display().to_string();
    let doc = ReportJson {
        policy: PolicyJson::new(Some(&path), Some(&sha), policy.sources()),
        rows: rows.iter().map(PermissionJson::from).collect(),
    };
    ctx.print(out, &doc, || {
        let mut text = String::new();
        if !rows.is_empty() {
            let names = ctx.pci_names(&report_names(&rows));
            text = report_table(&rows, &names).to_string();
        }
        text + &report_summary(&rows, policy.sources(), &sha)
    })?;
    Ok(Status::Ok)
}

/// `policy report --json`.
#[derive(Debug, Serialize)]
pub struct ReportJson {
    pub policy: PolicyJson,
    /// One row per (user, device, driver) the policy grants, sorted by user, device, driver.
    pub rows: Vec<PermissionJson>,
}

/// `user` may bind `device` to `driver`, as `rule` grants; unless `guard` refuses the device now.
#[derive(Debug, Serialize)]
pub struct PermissionJson {
    /// The account's name, or `uid N` for a uid a rule names that `/etc/passwd` does not.
    pub user: String,
    pub uid: u32,
    pub device: PermissionDeviceJson,
    /// The driver it may be bound to.
    pub driver: &'static str,
    /// The allow rule the helper would cite.
    pub rule: Rule,
    /// A built-in guard that refuses the device now, whatever the policy says; `null` when none.
    pub guard: Option<GuardJson>,
    /// Why the guards could not be checked, if they could not; else `null`.
    pub guard_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PermissionDeviceJson {
    pub address: String,
    pub short: String,
    pub vendor: String,
    pub device: String,
    pub class: String,
}

impl From<&PermissionRow> for PermissionJson {
    fn from(r: &PermissionRow) -> Self {
        Self {
            user: r.user.clone(),
            uid: r.uid,
            device: PermissionDeviceJson {
                address: json::address(r.device),
                short: r.device.short(),
                vendor: json::id(r.vendor),
                device: json::id(r.device_id),
                class: json::class(r.class),
            },
            driver: r.driver.as_str(),
            rule: Rule::from(&r.rule),
            guard: r.guard.as_ref().map(GuardJson::from),
            guard_error: r.guard_error.clone(),
        }
    }
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
            ids(r.vendor, r.device_id),
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
