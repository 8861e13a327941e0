//! What each subcommand does: build the request, ask the helper, render the answer.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use vfio_gate_policy::{Finding, Severity};
use vfio_gate_protocol::{PciAddress, ReleaseTarget, Request, Response, WireError};

use crate::audit::{self, CheckJson, ReportJson, Source};
use crate::cli::{
    BindArgs, ExplainArgs, ListArgs, PolicyCheckArgs, PolicyReportArgs, ReleaseArgs, RunArgs,
    UserArg,
};
use crate::client::{Client, response_name};
use crate::error::{Error, GroupNeeded, Status};
use crate::localtime;
use crate::messages;
use crate::offline::{self, Evaluator, Host};
use crate::output::{self, NodeOwner, ReleaseJson};
use crate::pci_ids::PciNames;
use crate::supervise::{self, Outcome, Supervisor};
use crate::users::{self, ETC_ROOT, UserNames};

/// What every subcommand gets besides its own arguments.
#[derive(Debug)]
pub struct Context<'a> {
    pub client: Client,
    pub json: bool,
    /// `--pci-ids`, else the distribution's database.
    pub pci_ids: Option<&'a Path>,
}

fn unexpected(request: &Request, got: &Response) -> Error {
    Error::UnexpectedResponse {
        request: request.kind(),
        got: response_name(got),
    }
}

/// Adds what only this side knows to a helper's refusal: the holder's name and the time in
/// words.
fn add_context(err: Error) -> Error {
    match err {
        Error::Helper(WireError::Held { group, uid, since }) => {
            let users = UserNames::load(Path::new(ETC_ROOT), &BTreeSet::from([uid]));
            Error::Held {
                group,
                uid,
                user: users.display(uid),
                since,
                when: localtime::when(since, localtime::now_unix()),
            }
        }
        other => other,
    }
}

/// `vfio-gate list`.
pub fn list(ctx: &Context<'_>, _args: &ListArgs, out: &mut impl Write) -> Result<Status, Error> {
    let request = Request::List;
    let devices = match ctx.client.call(&request)? {
        Response::Devices(devices) => devices,
        other => return Err(unexpected(&request, &other)),
    };
    if ctx.json {
        output::write_json(out, &devices).map_err(Error::Output)?;
    } else if devices.is_empty() {
        writeln!(out, "The helper sees no PCI devices.").map_err(Error::Output)?;
    } else {
        let names = PciNames::load(ctx.pci_ids, &output::wanted_names(&devices));
        let users = UserNames::load(Path::new(ETC_ROOT), &output::holder_uids(&devices));
        output::device_table(&devices, &names, &users)
            .write_to(out)
            .map_err(Error::Output)?;
    }
    out.flush().map_err(Error::Output)?;
    Ok(Status::Ok)
}

/// A refusal for want of `--group`, with the plan rendered and `rerun`, the command that carries
/// it out.
fn explain_bind(ctx: &Context<'_>, rerun: String, named: &[PciAddress], err: Error) -> Error {
    match add_context(err) {
        Error::Helper(WireError::NeedsGroup {
            group,
            plan,
            reason,
        }) => {
            let names = PciNames::load(ctx.pci_ids, &output::plan_names(&plan));
            let title = format!("With --group, IOMMU group {group} would be:");
            Error::NeedsGroup(Box::new(GroupNeeded {
                group,
                table: output::plan_block(&title, &plan, &names),
                rerun,
                plan,
                reason,
                named: named.to_vec(),
            }))
        }
        other => other,
    }
}

/// `vfio-gate bind ADDR... [--to DRIVER] [--group] [--dry-run]`.
pub fn bind(ctx: &Context<'_>, args: &BindArgs, out: &mut impl Write) -> Result<Status, Error> {
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
            return Err(explain_bind(ctx, rerun, &devices, err));
        }
    };
    // What the helper says it did is what is shown, even if it is not what was asked.
    let node = match (&report.vfio_node, report.dry_run) {
        (Some(path), false) => Some(check_node(path)),
        _ => None,
    };
    if ctx.json {
        output::write_json(out, &report).map_err(Error::Output)?;
    } else {
        let names = PciNames::load(ctx.pci_ids, &output::plan_names(&report.plan));
        let group = output::group_name(report.plan.group);
        let mut text = if report.dry_run {
            output::plan_block(&format!("Plan for {group}:"), &report.plan, &names)
        } else {
            output::plan_block(&format!("{group}:"), &report.plan, &names)
        };
        if report.dry_run {
            text.push_str(&output::dry_run_note(&args.command_line(args.group, false)));
        } else {
            let owner: BTreeSet<u32> = node
                .iter()
                .filter_map(|n| n.as_ref().ok().map(|o| o.uid))
                .collect();
            let users = UserNames::load(Path::new(ETC_ROOT), &owner);
            text.push_str(&output::bind_outcome(
                &report,
                devices[0],
                node.as_ref(),
                &users,
            ));
        }
        out.write_all(text.as_bytes()).map_err(Error::Output)?;
    }
    out.flush().map_err(Error::Output)?;
    Ok(Status::Ok)
}

/// `stat`s the group node the helper handed over, warning when it is not ours alone.
fn check_node(path: &str) -> std::io::Result<NodeOwner> {
    let status = NodeOwner::stat(Path::new(path));
    if let Some(w) = output::node_warning(path, &status, users::my_uid()) {
        messages::warn(&w);
    }
    status
}

/// `vfio-gate release ADDR|--all|--user NAME`. A device that did not go back to its previous
/// driver is still released (the lease is gone): a warning on stderr, exit status 0. Releasing
/// nothing is not an error either.
pub fn release(
    ctx: &Context<'_>,
    args: &ReleaseArgs,
    out: &mut impl Write,
) -> Result<Status, Error> {
    let request = Request::Release {
        target: args.target(),
    };
    let report = match ctx.client.call(&request).map_err(add_context)? {
        Response::Released(report) => report,
        other => return Err(unexpected(&request, &other)),
    };
    for d in output::released_devices(&report) {
        if let Some(warning) = output::release_warning(d) {
            messages::warn(&warning);
        }
    }
    if ctx.json {
        let doc = ReleaseJson {
            report: &report,
            restored_as_expected: output::released_devices(&report)
                .into_iter()
                .all(output::restored_as_expected),
        };
        output::write_json(out, &doc).map_err(Error::Output)?;
    } else {
        let me = users::my_uid();
        let mut uids = output::owner_uids(&report);
        uids.remove(&me);
        let users = UserNames::load(Path::new(ETC_ROOT), &uids);
        let nothing = match (args.target(), &args.user) {
            (ReleaseTarget::User(uid), Some(user)) if uid != me => {
                format!("Nothing to release: {} holds no device.", user.display())
            }
            (ReleaseTarget::Device(d), _) => {
                format!("Nothing to release: nobody holds {}.", d.short())
            }
            _ => "Nothing to release: you hold no device.".to_owned(),
        };
        let text = output::release_summary(&report, me, &users, &nothing);
        out.write_all(text.as_bytes()).map_err(Error::Output)?;
    }
    out.flush().map_err(Error::Output)?;
    Ok(Status::Ok)
}

/// `vfio-gate run --device ADDR... [--to DRIVER] [--group] -- CMD ARGS...`: bind with the lease
/// tied to the connection, run CMD while holding the connection open, release on the same
/// connection, and return CMD's exit status (128+N for signal N; 127 or 126 when it could not be
/// started). A refused bind is an [`Error`], reported as `bind` reports it, and CMD is not run.
pub fn run(ctx: &Context<'_>, args: &RunArgs) -> Result<u8, Error> {
    let devices = args.unique_devices();
    let request = Request::Bind {
        devices: devices.clone(),
        driver: args.driver,
        group: args.group,
        dry_run: false,
        hold: true,
    };
    let (mut conn, report) = match ctx.client.open(&request) {
        Ok((conn, Response::Bound(report))) => (conn, report),
        // Dropping the connection ends whatever lease the odd answer came with.
        Ok((_, other)) => return Err(unexpected(&request, &other)),
        Err(err) => return Err(explain_bind(ctx, args.command_line(true), &devices, err)),
    };
    if let Some(path) = &report.vfio_node {
        let _ = check_node(path);
    }
    // Before the note: if this fails, nothing has been said about the command yet.
    let mut supervisor = Supervisor::install().map_err(Error::Signals)?;
    let program = args.program_name();
    messages::note(&output::run_note(&report, &devices, &program));
    let primary = devices[0];
    let finished = supervisor.run(&args.command, conn.stream(), || {
        messages::warn(&format!(
            "the helper closed the connection while {program} runs: the lease on {} has ended \
             and the helper is giving the devices back. See the helper's log (journalctl -u \
             vfio-gated.service)",
            primary.short()
        ));
    });
    let code = match &finished.outcome {
        Outcome::Exited(status) => supervise::exit_code(*status),
        Outcome::NotStarted(e) => {
            messages::note(&format!(
                "cannot run {}: {e}",
                args.command[0].to_string_lossy()
            ));
            messages::note(if e.kind() == std::io::ErrorKind::NotFound {
                "Check the command's name, and that it is in your PATH"
            } else {
                "Check that the command is a program you may run (ls -l, and its first line if \
                 it is a script)"
            });
            supervise::not_started_code(e)
        }
    };
    if finished.helper_closed {
        return Ok(code);
    }
    let release = Request::Release {
        target: ReleaseTarget::Device(primary),
    };
    match conn.call(&release).map_err(add_context) {
        Ok(Response::Released(report)) => {
            for d in output::released_devices(&report) {
                if let Some(warning) = output::release_warning(d) {
                    messages::warn(&warning);
                }
            }
            messages::note(&output::run_released_note(&report));
        }
        Ok(other) => messages::warn(&format!(
            "{}; the helper gives the devices back when vfio-gate exits",
            unexpected(&release, &other).chain()
        )),
        Err(e) => messages::warn(&format!(
            "releasing {}: {}; the helper gives the devices back when vfio-gate exits (the lease \
             is tied to this connection)",
            primary.short(),
            e.chain()
        )),
    }
    drop(conn);
    drop(supervisor);
    Ok(code)
}

/// `vfio-gate explain ADDR [--to DRIVER] [--user NAME|UID] [--policy PATH]`: the helper's answer,
/// or with `--policy` the same answer computed here. Status 0 whenever an answer was produced.
pub fn explain(
    ctx: &Context<'_>,
    args: &ExplainArgs,
    out: &mut impl Write,
) -> Result<Status, Error> {
    let (report, source) = match &args.policy {
        None => (explain_online(ctx, args)?, Source::Helper),
        Some(path) => {
            let host = Host {
                sysfs: args.host.sysfs(),
                etc: args.host.etc(),
            };
            let policy = host
                .load_policy(&offline::absolute(path))
                .map_err(Error::Policy)?;
            let subject = match &args.user {
                Some(value) => host.user(value)?.1,
                None => offline::caller(),
            };
            let view = host.view();
            let host_use = host.host_use();
            let evaluator = Evaluator {
                policy: &policy,
                view: &view,
                host_use: &host_use,
                rule: offline::viability(),
                sysfs: &host.sysfs,
            };
            let report = evaluator.explain(&subject, args.device, args.driver)?;
            (report, Source::Offline(policy.sources().to_vec()))
        }
    };
    if ctx.json {
        output::write_json(out, &report).map_err(Error::Output)?;
    } else {
        let names = PciNames::load(ctx.pci_ids, &audit::explain_names(&report));
        let etc_root = match &args.policy {
            Some(_) => args.host.etc(),
            None => ETC_ROOT.into(),
        };
        let users = UserNames::load(&etc_root, &audit::explain_uids(&report));
        let text = audit::explain_text(&report, &names, &users, &source);
        out.write_all(text.as_bytes()).map_err(Error::Output)?;
    }
    out.flush().map_err(Error::Output)?;
    Ok(Status::Ok)
}

fn explain_online(
    ctx: &Context<'_>,
    args: &ExplainArgs,
) -> Result<vfio_gate_protocol::ExplainReport, Error> {
    let uid = match &args.user {
        None => None,
        Some(value) => Some(
            UserArg::resolve(value, Path::new(ETC_ROOT))
                .map_err(|_| Error::UnknownUser {
                    value: value.clone(),
                    passwd: users::passwd(Path::new(ETC_ROOT)),
                })?
                .uid,
        ),
    };
    let request = Request::Explain {
        device: args.device,
        driver: args.driver,
        uid,
    };
    match ctx.client.call(&request) {
        Ok(Response::Explained(report)) => Ok(report),
        Ok(other) => Err(unexpected(&request, &other)),
        // Asking about someone else without being an admin: the offline way is the next step.
        Err(Error::Helper(WireError::NotAdmin { detail })) => {
            Err(Error::NotAdmin { reason: detail })
        }
        Err(e) => Err(add_context(e)),
    }
}

/// `vfio-gate policy check [PATH] [--no-host]`: load as the helper would, lint against this
/// host. Status 0 clean (notes at most), 8 warnings, 9 errors (refused).
pub fn policy_check(
    ctx: &Context<'_>,
    args: &PolicyCheckArgs,
    out: &mut impl Write,
) -> Result<Status, Error> {
    let host = Host {
        sysfs: args.host.sysfs(),
        etc: args.host.etc(),
    };
    let policy_path = offline::absolute(&args.path);
    let path = policy_path.display().to_string();
    let (findings, policy) = match host.load_policy(&policy_path) {
        Err(e) => (vec![Finding::from_error(&e)], None),
        Ok(policy) => {
            let devices = if args.no_host {
                Vec::new()
            } else {
                host.devices()?
            };
            (policy.lint(&devices), Some(policy))
        }
    };
    let status = check_status(&findings);
    let sha = policy.as_ref().map(|p| p.sha256());
    let files = policy.as_ref().map_or(&[][..], |p| p.sources());
    if ctx.json {
        let (errors, warnings, notes) = audit::tally(&findings);
        let doc = CheckJson {
            policy: &path,
            loaded: policy.is_some(),
            sha256: sha.as_deref(),
            files,
            findings: &findings,
            errors,
            warnings,
            notes,
            exit_code: status.code(),
        };
        output::write_json(out, &doc).map_err(Error::Output)?;
    } else {
        let loaded = sha.as_deref().map(|sha| (files, sha));
        let text = audit::check_text(&path, &findings, loaded);
        out.write_all(text.as_bytes()).map_err(Error::Output)?;
    }
    out.flush().map_err(Error::Output)?;
    Ok(status)
}

/// The exit status of `policy check`: the most serious finding.
pub fn check_status(findings: &[Finding]) -> Status {
    match findings.iter().map(|f| f.severity).min() {
        Some(Severity::Error) => Status::PolicyRefused,
        Some(Severity::Warning) => Status::PolicyWarnings,
        Some(Severity::Info) | None => Status::Ok,
    }
}

/// `vfio-gate policy report [--policy PATH]`: every permission the policy grants on this host.
pub fn policy_report(
    ctx: &Context<'_>,
    args: &PolicyReportArgs,
    out: &mut impl Write,
) -> Result<Status, Error> {
    let host = Host {
        sysfs: args.host.sysfs(),
        etc: args.host.etc(),
    };
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
    if ctx.json {
        let path = policy_path.display().to_string();
        let doc = ReportJson {
            policy: &path,
            sha256: &sha,
            files: policy.sources(),
            rows: &rows,
        };
        output::write_json(out, &doc).map_err(Error::Output)?;
    } else {
        if !rows.is_empty() {
            let names = PciNames::load(ctx.pci_ids, &audit::report_names(&rows));
            audit::report_table(&rows, &names)
                .write_to(out)
                .map_err(Error::Output)?;
        }
        let summary = audit::report_summary(&rows, policy.sources(), &sha);
        out.write_all(summary.as_bytes()).map_err(Error::Output)?;
    }
    out.flush().map_err(Error::Output)?;
    Ok(Status::Ok)
}
