//! The command line. The `///` comments on these structs are the `--help` text.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use vfio_gate_protocol::{Driver, PciAddress};

use crate::error::EXIT_STATUS_HELP;

/// Where the helper listens unless told otherwise (`vfio-gate.socket`'s `ListenStream=`).
pub const DEFAULT_SOCKET: &str = "/run/vfio-gate.sock";

/// How long one read or write on the socket may wait. Binds and releases on real hardware can
/// take seconds (a host driver's probe, an unbind waiting for the device).
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;

/// Hand PCI devices to vfio-pci or pci-stub for your own VMs, as the admin's policy allows.
///
/// vfio-gate asks the privileged helper (vfio-gated) to bind a device to vfio-pci, which gives
/// you the device through /dev/vfio/N (N: its IOMMU group), or to pci-stub, which only keeps
/// host drivers off it. The helper checks /etc/vfio-gate/policy.toml, audits every request and
/// restores the host driver when you release the device. This program itself needs no privilege.
#[derive(Debug, Parser)]
#[command(name = "vfio-gate", version, after_help = EXIT_STATUS_HELP)]
pub struct Cli {
    /// The helper's socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "VFIO_GATE_SOCKET",
        default_value = DEFAULT_SOCKET
    )]
    pub socket: PathBuf,

    /// Print JSON on stdout instead of text. Errors too, as {"error": {"kind", "exit_code",
    /// "message", "next_step", ...}}, with the same exit status.
    #[arg(long, global = true)]
    pub json: bool,

    /// Give up when the helper has not answered for this many seconds.
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        default_value_t = DEFAULT_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub timeout: u64,

    /// Read vendor, device and class names from this PCI ID database instead of
    /// /usr/share/misc/pci.ids or /usr/share/hwdata/pci.ids.
    #[arg(long, global = true, value_name = "FILE")]
    pub pci_ids: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    List(ListArgs),
    Bind(BindArgs),
    Release(ReleaseArgs),
}

/// List PCI devices: driver, IOMMU group, what you may bind each to, and who holds it.
///
/// ALLOWED is what the policy lets you bind the device to; HOLDER is the user who holds it
/// through vfio-gate, if anyone.
#[derive(Debug, Args)]
pub struct ListArgs {}

/// Bind a device to vfio-pci (for your VM) or pci-stub, if the policy allows it.
///
/// On success the device is yours until you release it; with vfio-pci, /dev/vfio/N is
/// handed to you.
#[derive(Debug, Args)]
pub struct BindArgs {
    /// The device, as lspci prints it (01:00.0) or in full (0000:01:00.0).
    #[arg(value_name = "ADDR")]
    pub device: PciAddress,

    /// The driver to hand the device to.
    #[arg(long = "to", value_name = "DRIVER", default_value = "vfio-pci", value_parser = driver_parser())]
    pub driver: Driver,
}

/// Release a device you bound, giving it back to the driver it had before.
///
/// If the device does not go back to its previous driver, the release still happens (the device
/// is no longer yours) and a warning says what to check; the exit status is 0.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The device, as lspci prints it (01:00.0) or in full (0000:01:00.0).
    #[arg(value_name = "ADDR")]
    pub device: PciAddress,
}

/// Exactly the protocol's drivers, listed in `--help` and in clap's error for a wrong name.
fn driver_parser() -> impl TypedValueParser<Value = Driver> {
    PossibleValuesParser::new(Driver::ALL.map(Driver::as_str)).try_map(|s| s.parse::<Driver>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vfio-gate").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bind_accepts_both_address_forms_and_defaults_to_vfio_pci() {
        for addr in ["01:00.0", "0000:01:00.0"] {
            let cli = parse(&["bind", addr]).unwrap();
            let Command::Bind(args) = cli.command else {
                panic!("not bind")
            };
            assert_eq!(args.device, PciAddress::new(0, 1, 0, 0).unwrap());
            assert_eq!(args.driver, Driver::VfioPci);
        }
        let cli = parse(&["bind", "01:00.0", "--to", "pci-stub", "--json"]).unwrap();
        assert!(cli.json);
        let Command::Bind(args) = cli.command else {
            panic!("not bind")
        };
        assert_eq!(args.driver, Driver::PciStub);
    }

    #[test]
    fn bad_addresses_and_drivers_are_usage_errors() {
        for args in [
            &["bind", "1:00.0"][..],
            &["bind", "01:00.0/.."],
            &["release", "01:20.0"],
            &["bind", "01:00.0", "--to", "e1000e"],
            &["bind", "01:00.0", "--to", "vfio_pci"],
            &["bind"],
            &["--timeout", "0", "list"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
        assert_eq!(
            parse(&["bind", "zz:00.0"]).unwrap_err().kind(),
            ErrorKind::ValueValidation
        );
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let a = parse(&["--json", "--socket", "/tmp/s", "list"]).unwrap();
        let b = parse(&["list", "--json", "--socket", "/tmp/s"]).unwrap();
        for cli in [a, b] {
            assert!(cli.json);
            assert_eq!(cli.socket, PathBuf::from("/tmp/s"));
        }
    }
}
