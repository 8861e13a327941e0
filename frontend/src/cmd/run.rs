//! `vfio-gate run`: bind with the lease tied to this connection, run the command as the caller
//! while the connection stays open (`crate::supervise`), release on the same connection, and
//! exit with the command's status. Its notes go to stderr; stdout is the command's.

use vfio_gate_protocol::{
    BindReport, Driver, PciAddress, ReleaseReport, ReleaseTarget, Request, Response, StepAction,
};

use super::bind::{check_node, needs_group};
use super::release::warn_unrestored;
use super::{Context, name_the_holder, unexpected};
use crate::cli::RunArgs;
use crate::error::Error;
use crate::memlock;
use crate::messages;
use crate::render::{group_name, join_words};
use crate::supervise::{self, Outcome, Supervisor};

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
        Err(err) => return Err(needs_group(ctx, args.command_line(true), &devices, err)),
    };
    if let Some(path) = &report.vfio_node {
        let _ = check_node(path);
    }
    // Before the note: if this fails, nothing has been said about the command yet.
    let mut supervisor = Supervisor::install().map_err(Error::Signals)?;
    let program = args.program_name();
    messages::note(&run_note(&report, &devices, &program));
    if let Some(warning) = memlock_warning(args) {
        messages::warn(&warning);
    }
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
    match conn.call(&release).map_err(name_the_holder) {
        Ok(Response::Released(report)) => {
            warn_unrestored(&report);
            messages::note(&run_released_note(&report));
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

/// A warning before QEMU starts with devices on vfio-pci when its `-m` asks for more guest RAM
/// than the memlock limit lets it pin (`crate::memlock::run_warning`). Only a warning: the limit
/// may be raised by the command itself, or the devices may not be used for DMA.
fn memlock_warning(args: &RunArgs) -> Option<String> {
    if args.driver != Driver::VfioPci {
        return None;
    }
    memlock::run_warning(&args.command, &memlock::Limit::current().ok()?)
}

/// The note `vfio-gate run` prints before it starts the command: "05:02.0 is on vfio-pci
/// (/dev/vfio/11) while qemu-system-x86_64 runs". Every device the bind gave the user is named,
/// the ones the user named first, in their order; one taken as it was (adopted: already on the
/// driver) says so: "00:06.0 is on vfio-pci as it was".
pub fn run_note(r: &BindReport, named: &[PciAddress], program: &str) -> String {
    let mut moved: Vec<(PciAddress, String)> = r
        .plan
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            StepAction::Bind { driver, .. } => Some((s.device, driver.to_string())),
            StepAction::Adopt { driver, .. } => Some((s.device, format!("{driver} as it was"))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{addr, bind_report as report};
    use vfio_gate_protocol::ReleasedGroup;

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
        let mut adopting = report(Some("/dev/vfio/11"), false);
        adopting.plan = crate::render::fixtures::group_11_adopting();
        assert_eq!(
            run_note(&adopting, &[addr("05:02.0")], "sh"),
            "05:02.0 is on vfio-pci as it was and 05:01.0 on pci-stub (/dev/vfio/11) while sh runs"
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
}
