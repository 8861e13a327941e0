//! What each subcommand does: build the request, ask the helper, render the answer.

use std::io::Write;
use std::path::Path;

use vfio_gate_protocol::{Request, Response};

use crate::cli::{BindArgs, ListArgs, ReleaseArgs};
use crate::client::{Client, response_name};
use crate::error::{Error, Status};
use crate::messages;
use crate::output::{self, BindJson, ReleaseJson};
use crate::pci_ids::PciNames;
use crate::users::{PASSWD, UserNames};

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

/// `vfio-gate bind ADDR --to DRIVER`.
pub fn bind(ctx: &Context<'_>, args: &BindArgs, out: &mut impl Write) -> Result<Status, Error> {
    let request = Request::Bind {
        device: args.device,
        driver: args.driver,
    };
    let report = match ctx.client.call(&request)? {
        Response::Bound(report) => report,
        other => return Err(unexpected(&request, &other)),
    };
    if ctx.json {
        let doc = BindJson {
            report: &report,
            vfio_node: output::vfio_node(report.driver, report.iommu_group),
        };
        output::write_json(out, &doc).map_err(Error::Output)?;
    } else {
        out.write_all(output::bind_summary(&report).as_bytes())
            .map_err(Error::Output)?;
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
    let report = match ctx.client.call(&request)? {
        Response::Released(report) => report,
        other => return Err(unexpected(&request, &other)),
    };
    if let Some(warning) = output::release_warning(&report) {
        messages::warn(&warning);
    }
    if ctx.json {
        let doc = ReleaseJson {
            report: &report,
            restored_as_expected: output::restored_as_expected(&report),
        };
        output::write_json(out, &doc).map_err(Error::Output)?;
    } else {
        out.write_all(output::release_summary(&report).as_bytes())
            .map_err(Error::Output)?;
    }
    out.flush().map_err(Error::Output)?;
    Ok(Status::Ok)
}
