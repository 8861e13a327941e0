//! `vfio-gate bind`: ask the helper to bind devices (and, with `--group`, their group), then show
//! the plan it carried out and whose the group is now, checked on `/dev/vfio/N` itself; or, when
//! the group needs `--group`, the plan that would work and the command that carries it out.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use vfio_gate_protocol::{BindReport, PciAddress, Plan, Request, Response, StepAction, WireError};

use serde::Serialize;

use super::{Context, name_the_holder, unexpected};
use crate::cli::BindArgs;
use crate::error::{Error, GroupNeeded, Status};
use crate::json::PlanJson;
use crate::messages;
use crate::render::{adopt_note, group_name, join_words, plan_block, plan_names};
use crate::users::{self, ETC_ROOT, UserNames};

/// `vfio-gate bind ADDR... [--to DRIVER] [--group] [--dry-run]`.
pub fn run(ctx: &Context<'_>, args: &BindArgs, out: &mut impl Write) -> Result<Status, Error> {
    let devices = args.unique_devices();
    let request = Request::Bind {
        devices: devices.clone(),
        driver: args.driver,
        group: args.group,
        dry_run: args.dry_run,
        hold: false,
    };
    let report = match ctx.client.call(&request) {
        Ok(Response::Bound(report)) => report,
        Ok(other) => return Err(unexpected(&request, &other)),
        Err(err) => {
            let rerun = args.command_line(true, args.dry_run);
            return Err(needs_group(ctx, rerun, &devices, err));
        }
    };
    // What the helper says it did is what is shown, even if it is not what was asked.
    let node = match (&report.vfio_node, report.dry_run) {
        (Some(path), false) => Some(check_node(path)),
        _ => None,
    };
    ctx.print(out, &BindJson::from(&report), || {
        text(ctx, args, &report, devices[0], node.as_ref())
    })?;
    Ok(Status::Ok)
}

/// `bind --json`.
#[derive(Debug, Serialize)]
pub struct BindJson {
    /// Only planned (`--dry-run`): nothing was changed.
    pub dry_run: bool,
    /// What the bind did (or would do) to each member of the IOMMU group.
    pub plan: PlanJson,
    /// The group node handed to you (`/dev/vfio/N`) by a bind to vfio-pci; `null` otherwise.
    pub vfio_node: Option<String>,
}

impl From<&BindReport> for BindJson {
    fn from(r: &BindReport) -> Self {
        Self {
            dry_run: r.dry_run,
            plan: PlanJson::from(&r.plan),
            vfio_node: r.vfio_node.clone(),
        }
    }
}

/// The plan carried out (or, in a dry run, the plan), then whose the group is now (or how to
/// carry the plan out).
fn text(
    ctx: &Context<'_>,
    args: &BindArgs,
    report: &BindReport,
    primary: PciAddress,
    node: Option<&io::Result<NodeOwner>>,
) -> String {
    let names = ctx.pci_names(&plan_names(&report.plan));
    let group = group_name(report.plan.group);
    if report.dry_run {
        let mut text = plan_block(&format!("Plan for {group}:"), &report.plan, &names);
        text.extend(adopt_note(&report.plan, true));
        text.push_str(&dry_run_note(&args.command_line(args.group, false)));
        return text;
    }
    let mut text = plan_block(&format!("{group}:"), &report.plan, &names);
    text.extend(adopt_note(&report.plan, false));
    let owner: BTreeSet<u32> = node
        .iter()
        .filter_map(|n| n.as_ref().ok().map(|o| o.uid))
        .collect();
    let users = UserNames::load(Path::new(ETC_ROOT), &owner);
    text.push_str(&bind_outcome(report, primary, node, &users));
    text
}

/// A refusal for want of `--group` (as `bind` and `run` report it): the plan rendered, `rerun`
/// (the command that carries it out) and the next step that names what else it moves. Any
/// other error is passed on, with a holder named.
pub(crate) fn needs_group(
    ctx: &Context<'_>,
    rerun: String,
    named: &[PciAddress],
    err: Error,
) -> Error {
    match name_the_holder(err) {
        Error::Helper(WireError::NeedsGroup {
            group,
            plan,
            reason,
        }) => {
            let names = ctx.pci_names(&plan_names(&plan));
            let title = format!("With --group, IOMMU group {group} would be:");
            Error::NeedsGroup(Box::new(GroupNeeded {
                group,
                table: plan_block(&title, &plan, &names),
                next_step: needs_group_step(&plan, named, &rerun),
                rerun,
                plan,
                reason,
                named: named.to_vec(),
            }))
        }
        other => other,
    }
}

/// `stat`s the group node the helper handed over, warning when it is not ours alone.
pub(crate) fn check_node(path: &str) -> io::Result<NodeOwner> {
    let status = NodeOwner::stat(Path::new(path));
    if let Some(w) = node_warning(path, &status, users::my_uid()) {
        messages::warn(&w);
    }
    status
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
                .filter_map(|s| s.action.target().map(|d| d.to_string()))
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

/// The last line of a dry run.
pub fn dry_run_note(run_it: &str) -> String {
    format!("dry run: nothing was changed; run without --dry-run to do it: {run_it}\n")
}

/// The next step of a refusal for want of `--group`: "re-run with --group to also put 05:01.0 on
/// pci-stub and leave 04:00.0 on pcieport: vfio-gate bind 05:02.0 --to vfio-pci --group".
pub fn needs_group_step(plan: &Plan, named: &[PciAddress], rerun: &str) -> String {
    let moved = moved_others(plan, named);
    let kept = kept(plan, named);
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

/// The members a plan moves, other than `named`: "05:01.0 on pci-stub".
fn moved_others(plan: &Plan, named: &[PciAddress]) -> Vec<String> {
    plan.steps
        .iter()
        .filter(|s| !named.contains(&s.device))
        .filter_map(|s| match &s.action {
            StepAction::Bind { driver, .. } => Some(format!("{} on {driver}", s.device.short())),
            StepAction::Keep { .. } | StepAction::Adopt { .. } => None,
        })
        .collect()
}

/// The members a plan leaves where they are: "04:00.0 on pcieport" (kept), and members other
/// than `named` that it takes as they are (adopted; named ones are what the user asked for).
fn kept(plan: &Plan, named: &[PciAddress]) -> Vec<String> {
    plan.steps
        .iter()
        .filter(|s| match s.action {
            StepAction::Keep { .. } => true,
            StepAction::Adopt { .. } => !named.contains(&s.device),
            StepAction::Bind { .. } => false,
        })
        .map(|s| match &s.driver {
            Some(d) => format!("{} on {d}", s.device.short()),
            None => format!("{} without a driver", s.device.short()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{addr, bind_report as report, group_11};
    use crate::render::write_json;

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
    fn an_adopted_primary_is_named_on_its_driver_and_not_as_moved() {
        let users = UserNames::default();
        let mut r = report(None, false);
        r.plan = crate::render::fixtures::group_11_adopting();
        assert_eq!(
            bind_outcome(&r, addr("05:02.0"), None, &users),
            "IOMMU group 11 is yours (05:02.0 on vfio-pci; no host driver will touch it). \
             Release with: vfio-gate release 05:02.0\n"
        );
        // Named by the user: what they asked for, not a member "left" as it is.
        assert_eq!(
            needs_group_step(&r.plan, &[addr("05:02.0")], "X"),
            "Re-run with --group to also put 05:01.0 on pci-stub and leave 04:00.0 on pcieport: X"
        );
        // Not named (the helper adopts only what is named, but a plan may say so): left as is.
        assert_eq!(
            needs_group_step(&r.plan, &[addr("05:01.0")], "X"),
            "Re-run with --group to bind the group as a whole and leave 05:02.0 on vfio-pci and \
             04:00.0 on pcieport: X"
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
    fn bind_json_has_the_plan_by_address_with_tagged_actions() {
        let mut out = Vec::new();
        let report = report(Some("/dev/vfio/11"), false);
        write_json(&mut out, &BindJson::from(&report)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["plan"]["iommu_group"], 11);
        assert_eq!(v["dry_run"], false);
        assert_eq!(v["vfio_node"], "/dev/vfio/11");
        let members = &v["plan"]["members"];
        assert_eq!(members[0]["address"], "0000:04:00.0");
        assert_eq!(members[0]["kind"], "bridge");
        assert_eq!(members[0]["action"], "keep");
        assert_eq!(members[0]["reason"], "keeps the group viable");
        assert_eq!(
            members[2],
            serde_json::json!({
                "address": "0000:05:02.0",
                "short": "05:02.0",
                "vendor": "1234",
                "device": "11e8",
                "kind": "endpoint",
                "driver": null,
                "action": "bind",
                "to": "vfio-pci",
                "rule": {"name": "lab", "file": "/etc/vfio-gate/policy.toml", "line": 12}
            })
        );
    }
}
