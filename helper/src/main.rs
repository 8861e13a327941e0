//! `vfio-gated`: see the library documentation.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use vfio_gated::Finished;
use vfio_gated::options::{Command, USAGE};

fn main() -> ExitCode {
    match Command::parse(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("vfio-gated {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Run(opts)) => match vfio_gated::run(&opts) {
            Ok(Finished::Idle) => ExitCode::SUCCESS,
            // A device the kernel would not put on its reservation's driver fails the run (and
            // the boot unit), so `systemctl status` shows it; refusals and conflicts are policy
            // matters, logged, and not failures of the helper.
            Ok(Finished::Reserved(report)) if report.failed() > 0 => ExitCode::FAILURE,
            Ok(Finished::Reserved(_)) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vfio-gated: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("vfio-gated: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
