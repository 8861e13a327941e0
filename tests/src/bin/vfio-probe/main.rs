//! `vfio-probe`: what a VMM does with `/dev/vfio`, as a test program for the guest.
//!
//! - `vfio-probe status GROUP`: opens `/dev/vfio/GROUP`, asks `VFIO_GROUP_GET_STATUS`, prints
//!   `viable` or `not viable` (exit 0). If the node cannot be opened, prints the errno
//!   (`EACCES`, `EBUSY`, `ENOENT`) and exits 1.
//! - `vfio-probe open GROUP ADDR`: the whole sequence (container, API version, TYPE1 extension,
//!   group, VIABLE, SET_CONTAINER, SET_IOMMU TYPE1, GET_DEVICE_FD ADDR); prints `device fd N`
//!   (exit 0), else the failing step and its errno (exit 1).
//! - `vfio-probe hold GROUP ADDR`: the same, then prints `holding` and keeps everything open
//!   until killed, like a running VM. `hold --device-only GROUP ADDR` closes the group and the
//!   container once it has the device fd and keeps only that open.
//!
//! Exit status 2 for bad usage.

mod vfio;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

const USAGE: &str = "usage: vfio-probe status GROUP\n       vfio-probe open GROUP ADDR\n       vfio-probe hold [--device-only] GROUP ADDR";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["status", group] => group_number(group).map(status),
        ["open", group, addr] => group_number(group).map(|g| open(g, addr)),
        ["hold", group, addr] => group_number(group).map(|g| hold(g, addr, false)),
        ["hold", "--device-only", group, addr] => group_number(group).map(|g| hold(g, addr, true)),
        _ => None,
    };
    match result {
        Some(Ok(())) => ExitCode::SUCCESS,
        Some(Err(e)) => {
            eprintln!("vfio-probe: {e}");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn group_number(s: &str) -> Option<u32> {
    s.parse().ok()
}

fn status(group: u32) -> Result<(), vfio::StepError> {
    let g = vfio::Group::open(group)?;
    println!("{}", if g.viable()? { "viable" } else { "not viable" });
    Ok(())
}

fn open(group: u32, addr: &str) -> Result<(), vfio::StepError> {
    let session = vfio::open_device(group, addr)?;
    println!("device fd {}", session.device.as_raw_fd());
    Ok(())
}

fn hold(group: u32, addr: &str, device_only: bool) -> Result<(), vfio::StepError> {
    let vfio::Session {
        container,
        group: g,
        device,
    } = vfio::open_device(group, addr)?;
    let kept = if device_only {
        drop(g);
        drop(container);
        println!("holding device fd {} only", device.as_raw_fd());
        (None, None, device)
    } else {
        println!("holding group {group} and device fd {}", device.as_raw_fd());
        (Some(g), Some(container), device)
    };
    let _ = std::io::stdout().flush();
    // Everything in `kept` stays open until a signal kills the process.
    let _kept = kept;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
