//! What each subcommand does: build the request, ask the helper, render the answer.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use vfio_gate_protocol::{PciAddress, Request, Response, WireError};

use crate::cli::{BindArgs, ListArgs, ReleaseArgs};
use crate::client::{Client, response_name};
use crate::error::{Error, GroupNeeded, Status};
use crate::localtime;
use crate::messages;
use crate::output::{self, NodeOwner, ReleaseJson};
use crate::pci_ids::PciNames;
use crate::users::{self, PASSWD, UserNames};

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
fn explain(err: Error) -> Error {
    match err {
        Error::Helper(WireError::Held { group, uid, since }) => {
            let users = UserNames::load(Path::new(PASSWD), &BTreeSet::from([uid]));
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
        let users = UserNames::load(Path::new(PASSWD), &output::holder_uids(&devices));
        output::device_table(&devices, &names, &users)
            .write_to(out)
            .map_err(Error::Output)?;
    }
    out.flush().map_err(Error::Output)?;
    Ok(Status::Ok)
}

/// A refusal for want of `--group`, with the plan rendered and the command that carries it out.
fn explain_bind(ctx: &Context<'_>, args: &BindArgs, named: &[PciAddress], err: Error) -> Error {
    match explain(err) {
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
                rerun: args.command_line(true, args.dry_run),
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
    };
    let report = match ctx.client.call(&request) {
        Ok(Response::Bound(report)) => report,
        Ok(other) => return Err(unexpected(&request, &other)),
        Err(err) => return Err(explain_bind(ctx, args, &devices, err)),
    };
    // What the helper says it did is what is shown, even if it is not what was asked.
    let node = match (&report.vfio_node, report.dry_run) {
        (Some(path), false) => {
            let status = NodeOwner::stat(Path::new(path));
            if let Some(w) = output::node_warning(path, &status, users::my_uid()) {
                messages::warn(&w);
            }
            Some(status)
        }
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
            let users = UserNames::load(Path::new(PASSWD), &owner);
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

/// `vfio-gate release ADDR`. A device that did not go back to its previous driver is still
/// released (the lease is gone): a warning on stderr, exit status 0.
pub fn release(
    ctx: &Context<'_>,
    args: &ReleaseArgs,
    out: &mut impl Write,
) -> Result<Status, Error> {
    let request = Request::Release {
        device: args.device,
    };
    let report = match ctx.client.call(&request).map_err(explain)? {
        Response::Released(report) => report,
        other => return Err(unexpected(&request, &other)),
    };
    let mut devices: Vec<_> = report.devices.iter().collect();
    devices.sort_by_key(|d| d.device);
    for d in devices {
        if let Some(warning) = output::release_warning(d) {
            messages::warn(&warning);
        }
    }
    if ctx.json {
        let doc = ReleaseJson {
            report: &report,
            restored_as_expected: report.devices.iter().all(output::restored_as_expected),
        };
        output::write_json(out, &doc).map_err(Error::Output)?;
    } else {
        out.write_all(output::release_summary(&report).as_bytes())
            .map_err(Error::Output)?;
    }
    out.flush().map_err(Error::Output)?;
    Ok(Status::Ok)
}
