//! `vfio-gate`: parse the command line, run one subcommand, map the outcome to an exit status.
//! The exit statuses are listed in `vfio_gate::error` and in `vfio-gate --help`.

#![forbid(unsafe_code)]

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vfio_gate::cli::{Cli, Command, PolicyCommand};
use vfio_gate::client::Client;
use vfio_gate::cmd::{self, Context};
use vfio_gate::error::Error;
use vfio_gate::messages;

fn main() -> ExitCode {
    let cli = match Cli::try_parse().and_then(|cli| cli.validate().map(|()| cli)) {
        Ok(cli) => cli,
        Err(err) => return messages::usage(&err, std::env::args_os()),
    };
    match run(&cli) {
        Ok(code) => code,
        Err(err) => messages::report(&err, cli.json),
    }
}

fn run(cli: &Cli) -> Result<ExitCode, Error> {
    let ctx = Context {
        client: Client::new(&cli.socket, Duration::from_secs(cli.timeout)),
        json: cli.json,
        pci_ids: cli.pci_ids.as_deref(),
    };
    let mut out = io::stdout().lock();
    let status = match &cli.command {
        Command::List(args) => cmd::list::run(&ctx, args, &mut out)?,
        Command::Bind(args) => cmd::bind::run(&ctx, args, &mut out)?,
        Command::Release(args) => cmd::release::run(&ctx, args, &mut out)?,
        Command::Explain(args) => cmd::explain::run(&ctx, args, &mut out)?,
        Command::BootConfig(args) => cmd::boot_config::run(&ctx, args, &mut out)?,
        Command::Doctor(args) => cmd::doctor::run(&ctx, args, &mut out)?,
        Command::Policy(PolicyCommand::Check(args)) => {
            cmd::policy_check::run(&ctx, args, &mut out)?
        }
        Command::Policy(PolicyCommand::Report(args)) => {
            cmd::policy_report::run(&ctx, args, &mut out)?
        }
        Command::Run(args) => {
            drop(out);
            return cmd::run::run(&ctx, args).map(ExitCode::from);
        }
    };
    Ok(status.into())
}
