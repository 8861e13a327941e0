//! The command line. The `///` comments on these structs are the `--help` text.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use vfio_gate_protocol::{Driver, MAX_BIND_DEVICES, PciAddress};

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

/// Bind devices to vfio-pci (for your VM) or pci-stub, if the policy allows it.
///
/// VFIO hands out whole IOMMU groups. Name the devices you want (all in one group); if the
/// group's other endpoints are still on host drivers, the bind is refused and shows the plan
/// that would work: re-run with --group to also move them (to vfio-pci where you named them, else
/// to pci-stub, which keeps the host off them without giving you access). Bridges stay as they
/// are when their driver keeps the group usable. Nothing changes unless the whole plan can be
/// carried out; a failure midway puts every member back.
///
/// On success the group is yours until you release it; with vfio-pci, /dev/vfio/N is handed to
/// you (N: the IOMMU group).
#[derive(Debug, Args)]
pub struct BindArgs {
    /// The devices, as lspci prints them (05:02.0) or in full (0000:05:02.0). The first is the
    /// one you mean to use.
    #[arg(value_name = "ADDR", required = true, num_args = 1..=MAX_BIND_DEVICES)]
    pub devices: Vec<PciAddress>,

    /// The driver to hand the devices to.
    #[arg(long = "to", value_name = "DRIVER", default_value = "vfio-pci", value_parser = driver_parser())]
    pub driver: Driver,

    /// Also move the group's other endpoints off their host drivers, as the policy allows, so
    /// that the group becomes usable.
    #[arg(long)]
    pub group: bool,

    /// Show what would be done, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl BindArgs {
    /// The named devices in order, each once (01:00.0 and 0000:01:00.0 are one device).
    pub fn unique_devices(&self) -> Vec<PciAddress> {
        let mut seen = std::collections::BTreeSet::new();
        self.devices
            .iter()
            .copied()
            .filter(|d| seen.insert(*d))
            .collect()
    }

    /// This bind as a command line a user can paste, with `--group` and `--dry-run` as given.
    pub fn command_line(&self, group: bool, dry_run: bool) -> String {
        let mut line = String::from("vfio-gate bind");
        for d in self.unique_devices() {
            line.push(' ');
            line.push_str(&d.short());
        }
        line.push_str(" --to ");
        line.push_str(self.driver.as_str());
        if group {
            line.push_str(" --group");
        }
        if dry_run {
            line.push_str(" --dry-run");
        }
        line
    }
}

/// Release the IOMMU group you bound, giving every device vfio-gate moved back to the driver it
/// had before.
///
/// Name any device of the group. If the group is open (a VM is using it), the release is refused
/// at once: stop the VM first. If a device does not go back to its previous driver, the release
/// still happens (the group is no longer yours) and a warning says what to check; the exit status
/// is 0.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// A device of the group, as lspci prints it (01:00.0) or in full (0000:01:00.0).
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
            assert_eq!(args.devices, vec![PciAddress::new(0, 1, 0, 0).unwrap()]);
            assert_eq!(args.driver, Driver::VfioPci);
            assert!(!args.group && !args.dry_run);
        }
        let cli = parse(&["bind", "01:00.0", "--to", "pci-stub", "--json"]).unwrap();
        assert!(cli.json);
        let Command::Bind(args) = cli.command else {
            panic!("not bind")
        };
        assert_eq!(args.driver, Driver::PciStub);
    }

    #[test]
    fn bind_takes_several_devices_in_order_and_its_flags_anywhere() {
        let cli = parse(&[
            "bind",
            "05:02.0",
            "--group",
            "0000:05:01.0",
            "--dry-run",
            "05:02.0",
        ])
        .unwrap();
        let Command::Bind(args) = cli.command else {
            panic!("not bind")
        };
        let a = |s: &str| s.parse::<PciAddress>().unwrap();
        assert_eq!(args.devices, vec![a("05:02.0"), a("05:01.0"), a("05:02.0")]);
        assert_eq!(args.unique_devices(), vec![a("05:02.0"), a("05:01.0")]);
        assert!(args.group && args.dry_run);
        assert_eq!(
            args.command_line(true, true),
            "vfio-gate bind 05:02.0 05:01.0 --to vfio-pci --group --dry-run"
        );
        assert_eq!(
            args.command_line(false, false),
            "vfio-gate bind 05:02.0 05:01.0 --to vfio-pci"
        );
    }

    #[test]
    fn bind_names_at_most_the_protocol_limit() {
        let addrs: Vec<String> = (0..=MAX_BIND_DEVICES)
            .map(|i| format!("05:{:02x}.{}", i / 8, i % 8))
            .collect();
        let mut args = vec!["bind"];
        args.extend(addrs.iter().map(String::as_str));
        assert_eq!(parse(&args).unwrap_err().exit_code(), 2);
        args.pop();
        assert!(parse(&args).is_ok());
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
