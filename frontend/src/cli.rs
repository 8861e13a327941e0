//! The command line. The `///` comments on these structs are the `--help` text.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::{ArgGroup, Args, CommandFactory, Parser, Subcommand};
use vfio_gate_protocol::{Driver, MAX_BIND_DEVICES, PciAddress, ReleaseTarget};

use crate::error::{DEFAULT_POLICY, EXIT_STATUS_HELP};
use crate::users::{self, ETC_ROOT};

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

    /// Print JSON on stdout instead of text: one document, {"schema": 1, ...}, its shape per
    /// command in docs/json.md (schema: the version of that format). Errors too, as {"schema": 1,
    /// "error": {"kind", "exit_code", "message", "next_step", ...}}, with the same exit status.
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
    Run(RunArgs),
    Explain(ExplainArgs),
    BootConfig(BootConfigArgs),
    Doctor(DoctorArgs),
    /// Check a policy file, or report the permissions it grants on this host (offline).
    #[command(subcommand)]
    Policy(PolicyCommand),
}

impl Cli {
    /// What clap cannot check on its own: `--json` with `run`, and how many devices `run` names.
    /// The error is a usage error (exit status 2), reported like clap's own.
    pub fn validate(&self) -> Result<(), clap::Error> {
        if let Command::Explain(args) = &self.command {
            if args.policy.is_none()
                && (args.host.sysfs_root.is_some() || args.host.etc_root.is_some())
            {
                return Err(subcommand_usage_error(
                    "explain",
                    ErrorKind::MissingRequiredArgument,
                    "--sysfs-root and --etc-root need --policy: without it the helper answers, \
                     from the host it runs on",
                ));
            }
        }
        let Command::Run(args) = &self.command else {
            return Ok(());
        };
        if self.json {
            return Err(run_usage_error(
                ErrorKind::ArgumentConflict,
                "--json cannot be used with run: the command's own output goes to stdout",
            ));
        }
        let n = args.unique_devices().len();
        if n > MAX_BIND_DEVICES {
            return Err(run_usage_error(
                ErrorKind::TooManyValues,
                &format!("run names {n} devices; at most {MAX_BIND_DEVICES} may be named"),
            ));
        }
        Ok(())
    }
}

/// A usage error about `vfio-gate run`, with that subcommand's usage line.
fn run_usage_error(kind: ErrorKind, message: &str) -> clap::Error {
    subcommand_usage_error("run", kind, message)
}

/// A usage error about one subcommand, with its usage line.
fn subcommand_usage_error(name: &str, kind: ErrorKind, message: &str) -> clap::Error {
    let mut cli = Cli::command();
    cli.build();
    match cli.find_subcommand_mut(name) {
        Some(sub) => sub.error(kind, message),
        None => cli.error(kind, message),
    }
}

/// List PCI devices: driver, IOMMU group, what you may bind each to, and who holds it.
///
/// ALLOWED is what the policy lets you bind the device to; HOLDER is the user who holds it
/// through vfio-gate, if anyone, with "(run)" when the lease lasts only while a command started
/// by `vfio-gate run` runs. RESERVED, shown when the policy holds devices from boot
/// ([[reserve]]), is the driver that holds the device, which a release returns it to; "*" marks
/// a companion of a reserved device in its IOMMU group. A line under the table names the rule
/// that holds each.
///
/// With --by-group, devices are shown IOMMU group by IOMMU group, each group under a line that
/// says whether a VM could use it as its devices are bound now (viable: no member is on a host
/// driver, by the running kernel's rule) and who holds it. The filters narrow the list, and
/// combine (a device must pass each one given); with --by-group they pick groups, each shown
/// whole: those with a device that passes.
///
/// When the helper cannot be reached (its socket is missing, or nobody listens on it), list reads
/// this host's devices from /sys instead and says so on stderr: without ALLOWED and HOLDER, which
/// only the helper knows, and with the reservations of /etc/vfio-gate/policy.toml if it can be
/// read; the exit status is 0. --mine and --allowed need the helper: without it they fail with
/// status 5. Under --json, "source" says which: "helper" or "sysfs" ("allowed" is then null).
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Show the devices by IOMMU group, with each group's viability and holder.
    #[arg(long)]
    pub by_group: bool,

    /// Only the devices of IOMMU group N.
    #[arg(long, value_name = "N")]
    pub group: Option<u32>,

    /// Only the devices bound to this driver now (its kernel name: vfio-pci, e1000e, ...).
    #[arg(long, value_name = "DRIVER")]
    pub driver: Option<String>,

    /// Only the devices of the IOMMU groups you hold.
    #[arg(long)]
    pub mine: bool,

    /// Only the devices you may bind to some driver.
    #[arg(long)]
    pub allowed: bool,

    // Where list reads the host when the helper cannot be reached (tests), the policy then at
    // ETC_ROOT/etc/vfio-gate/policy.toml; and whose passwd names the holders.
    #[command(flatten)]
    pub host: HostArgs,
}

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
        unique(&self.devices)
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

/// Release IOMMU groups, giving every device vfio-gate moved back to the driver it had before.
///
/// Name any device of a group (ADDR), or --all for every group you hold, or --user for every
/// group a user holds (admins, as the policy names them, may release anyone's). If a group is open
/// (a VM is using it), the release is refused at once: stop the VM first. If a device does not go
/// back to its previous driver, the release still happens (the group is no longer held) and a
/// warning says what to check; the exit status is 0. Releasing nothing (--all or --user when
/// nothing is held) is not an error.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["device", "all", "user"])))]
pub struct ReleaseArgs {
    /// A device of the group, as lspci prints it (01:00.0) or in full (0000:01:00.0).
    #[arg(value_name = "ADDR")]
    pub device: Option<PciAddress>,

    /// Release every group you hold.
    #[arg(long)]
    pub all: bool,

    /// Release every group this user holds (a name from /etc/passwd, or a uid).
    #[arg(long, value_name = "NAME|UID", value_parser = user_parser)]
    pub user: Option<UserArg>,
}

impl ReleaseArgs {
    /// What the helper is asked to release. clap guarantees exactly one of the three.
    pub fn target(&self) -> ReleaseTarget {
        match (&self.device, &self.user) {
            (Some(d), _) => ReleaseTarget::Device(*d),
            (None, Some(u)) => ReleaseTarget::User(u.uid),
            (None, None) => ReleaseTarget::Mine,
        }
    }
}

/// `--user`: a uid, and the name it was given by (or found under in /etc/passwd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserArg {
    pub uid: u32,
    pub name: Option<String>,
}

impl UserArg {
    /// Resolves `--user`: digits are a uid, anything else a name looked up in
    /// `ETC_ROOT/etc/passwd`.
    pub fn resolve(value: &str, etc_root: &Path) -> Result<Self, String> {
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            let uid = value
                .parse::<u32>()
                .map_err(|_| format!("{value} is not a valid uid"))?;
            let name = users::UserNames::load(etc_root, &std::collections::BTreeSet::from([uid]))
                .name(uid)
                .map(str::to_owned);
            return Ok(Self { uid, name });
        }
        match users::uid_of(etc_root, value) {
            Some(uid) => Ok(Self {
                uid,
                name: Some(value.to_owned()),
            }),
            None => Err(format!(
                "no user {value:?} in {}; give a uid instead, or check the spelling",
                users::passwd(etc_root).display()
            )),
        }
    }

    /// The name, or the uid as text.
    pub fn display(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.uid.to_string())
    }
}

fn user_parser(value: &str) -> Result<UserArg, String> {
    UserArg::resolve(value, Path::new(ETC_ROOT))
}

/// Run a command with devices handed to you, and give them back when it exits.
///
/// Binds the devices as `vfio-gate bind` does (the same policy, refusals, messages and exit
/// statuses; CMD is not run when the bind is refused), then runs CMD as you, with your
/// environment, standard input, output and error. The devices are yours exactly as long as CMD
/// runs: vfio-gate keeps its connection to the helper open meanwhile, and the lease ends with
/// that connection. The devices are released when CMD exits, when it crashes, and when
/// vfio-gate itself is killed (even with SIGKILL: the helper sees the connection close).
///
/// While CMD runs, vfio-gate ignores Ctrl-C and Ctrl-\ (the terminal sends them to CMD too) so
/// that it outlives CMD and releases the devices cleanly; SIGTERM and SIGHUP sent to vfio-gate
/// are passed on to CMD. Notes from vfio-gate go to stderr; --json cannot be used with run.
///
/// When CMD is QEMU (qemu-system-*, qemu-kvm) and the devices go to vfio-pci, vfio-gate warns
/// before starting it if its -m asks for more guest RAM than your memlock limit (ulimit -l) lets
/// it pin, which QEMU would fail on (VFIO_MAP_DMA failed: Cannot allocate memory); vfio-gate
/// doctor --memory SIZE gives the fix. It only warns: CMD is started all the same.
///
/// Exit status: CMD's; 128+N when CMD was killed by signal N; 127 when CMD was not found, 126
/// when it could not be started. When the bind fails, the statuses of vfio-gate --help.
///
/// Example: vfio-gate run --device 01:00.0 -- qemu-system-x86_64 -device vfio-pci,host=01:00.0 ...
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A device to hand over, as lspci prints it (05:02.0) or in full (0000:05:02.0). Repeat
    /// for several devices of one group; the first is the one you mean to use.
    #[arg(long = "device", value_name = "ADDR", required = true)]
    pub devices: Vec<PciAddress>,

    /// The driver to hand the devices to.
    #[arg(long = "to", value_name = "DRIVER", default_value = "vfio-pci", value_parser = driver_parser())]
    pub driver: Driver,

    /// Also move the group's other endpoints off their host drivers, as the policy allows, so
    /// that the group becomes usable.
    #[arg(long)]
    pub group: bool,

    /// The command and its arguments, after --.
    #[arg(value_name = "CMD", last = true, required = true, num_args = 1..)]
    pub command: Vec<OsString>,
}

impl RunArgs {
    /// The named devices in order, each once.
    pub fn unique_devices(&self) -> Vec<PciAddress> {
        unique(&self.devices)
    }

    /// The command's name, for notes: the last component of its path.
    pub fn program_name(&self) -> String {
        let program = Path::new(&self.command[0]);
        program
            .file_name()
            .unwrap_or(program.as_os_str())
            .to_string_lossy()
            .into_owned()
    }

    /// This run as a command line a user can paste, with `--group` as given.
    pub fn command_line(&self, group: bool) -> String {
        let mut line = String::from("vfio-gate run");
        for d in self.unique_devices() {
            line.push_str(" --device ");
            line.push_str(&d.short());
        }
        line.push_str(" --to ");
        line.push_str(self.driver.as_str());
        if group {
            line.push_str(" --group");
        }
        line.push_str(" --");
        for arg in &self.command {
            line.push(' ');
            line.push_str(&shell_quote(&arg.to_string_lossy()));
        }
        line
    }
}

/// Where the offline commands read the host. Hidden: for tests (fixture trees) and for looking
/// at a copy of another host's sysfs; an auditor on the host itself never needs them.
#[derive(Debug, Clone, Default, Args)]
pub struct HostArgs {
    /// Read PCI devices from this sysfs tree instead of /sys.
    #[arg(long, value_name = "DIR", hide = true)]
    pub sysfs_root: Option<PathBuf>,

    /// Read users and groups from DIR/etc/passwd and DIR/etc/group instead of /etc.
    #[arg(long, value_name = "DIR", hide = true)]
    pub etc_root: Option<PathBuf>,
}

impl HostArgs {
    /// The sysfs tree: `--sysfs-root`, else `/sys`.
    pub fn sysfs(&self) -> PathBuf {
        self.sysfs_root.clone().unwrap_or_else(|| "/sys".into())
    }

    /// The root whose `etc/passwd` and `etc/group` are read: `--etc-root`, else `/`.
    pub fn etc(&self) -> PathBuf {
        self.etc_root.clone().unwrap_or_else(|| "/".into())
    }
}

/// Explain how a bind of a device would be decided, and why. Changes nothing.
///
/// For each driver (or the one given with --to): ALLOWED or DENIED, the rule that decides it
/// with its file and line (or "no rule matches: denied by default"), and the other rules that
/// match; then the built-in guards that refuse the device now whatever the policy says, the
/// plan for its IOMMU group (the companions a bind would move) or why no plan works, who holds
/// it, whether a [[reserve]] holds it from boot (and so where a release returns it), and the
/// SHA-256 of the policy the answer comes from.
///
/// Without --policy the helper answers, about you; with --user, about someone else (admins
/// only, as the policy names them). With --policy PATH vfio-gate answers itself, offline: it
/// loads that policy and its policy.d drop-ins (refused as the helper would refuse them) and
/// reads this host's /sys, with the helper's own code, so an auditor can ask without the
/// helper; --user then works for anyone in /etc/passwd. Offline, who holds a device is not
/// known (the helper keeps its leases).
///
/// Exit status 0 whenever the answer was produced, whatever it says; 9 when the --policy file
/// is refused.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The device, as lspci prints it (05:02.0) or in full (0000:05:02.0).
    #[arg(value_name = "ADDR")]
    pub device: PciAddress,

    /// Only this driver (default: every driver vfio-gate binds to).
    #[arg(long = "to", value_name = "DRIVER", value_parser = driver_parser())]
    pub driver: Option<Driver>,

    /// Whom to ask about: a name from /etc/passwd, or a uid (default: you).
    #[arg(long, value_name = "NAME|UID")]
    pub user: Option<String>,

    /// Answer offline from this policy file (and its policy.d drop-ins) and this host's
    /// sysfs, without the helper.
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,

    #[command(flatten)]
    pub host: HostArgs,
}

/// Check and report on a policy file, offline.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    Check(PolicyCheckArgs),
    Report(PolicyReportArgs),
}

/// Check a policy: load it as the helper would, then lint it against this host's devices.
///
/// Loads PATH and its policy.d drop-ins with every check the helper makes (ownership and mode,
/// syntax, schema, names); a refusal is an error, with its file and line. A policy that loads
/// is then linted: unknown users and groups, rules that match no device on this host, allow
/// rules that match by address alone, allows shadowed by denies, grants of storage, network
/// or display controllers, grants to everyone; for each [[reserve]], what it holds on this host
/// (companions included), conflicts, and reserved devices a built-in guard protects (the helper
/// will not hold them). Prints one `file:line: severity: message` line
/// per finding, then a summary. For CI machines without the hardware, --no-host skips the
/// checks against this host's devices.
///
/// Exit status: 0 clean (notes at most), 8 warnings, 9 errors (the policy is refused: the
/// helper would serve nothing), 1 when the check itself could not run (this host's devices
/// could not be read; --no-host lints without them), 2 bad usage.
#[derive(Debug, Args)]
pub struct PolicyCheckArgs {
    /// The policy file; its drop-ins are read from policy.d beside it.
    #[arg(value_name = "PATH", default_value = DEFAULT_POLICY)]
    pub path: PathBuf,

    /// Do not read this host's devices: skip the checks that need them (for CI machines).
    #[arg(long)]
    pub no_host: bool,

    #[command(flatten)]
    pub host: HostArgs,
}

/// Report the effective permissions on this host: who may bind which device, to which
/// driver, through which rule.
///
/// For every account in /etc/passwd (with its groups from /etc/group) and every uid a rule
/// names directly, each device of this host the policy lets them bind, to each driver, with
/// the rule that grants it (file:line); sorted by user, then device. GUARD names a built-in
/// guard that refuses the device now whatever the policy says (the boot display, a disk the
/// host has mounted, ...). Offline: reads the policy and /sys, not the helper.
///
/// Exit status 0 (an empty report too), 9 when the policy is refused.
#[derive(Debug, Args)]
pub struct PolicyReportArgs {
    /// The policy file; its drop-ins are read from policy.d beside it.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_POLICY)]
    pub policy: PathBuf,

    #[command(flatten)]
    pub host: HostArgs,
}

/// Print the boot configuration that claims reserved devices before their host drivers do.
///
/// For host drivers that bind before userspace. vfio-gate-reserve.service holds the policy's
/// reserved devices ([[reserve]]) early at boot, before udev loads host drivers; a host driver
/// built into the kernel or loaded from the initramfs gets there first. Offline, from the
/// policy's reservations and this host's devices, boot-config prints:
///
/// The modprobe.d file: `softdep MODULE pre: vfio-pci` (or pci-stub) for each reserved
/// device's host driver module, so that the driver holding the device is loaded first. The host
/// driver module is the one bound to the device now or, when it is on vfio-pci or pci-stub
/// already, every module whose modules.alias pattern matches its modalias. Companions (the
/// other endpoints of a reserved device's IOMMU group) count as reserved devices, on their
/// companions driver. A module built into the kernel gets a note instead: only the kernel
/// command line claims the device first. With --ids the file also gets `options vfio-pci
/// ids=VVVV:DDDD,...` (and pci-stub), which claim every device with those ids.
///
/// The kernel command line parameters (vfio-pci.ids=..., pci-stub.ids=...) and where to put
/// them; vfio-gate never writes the bootloader's configuration. The initramfs rebuild command
/// for Debian/Ubuntu, Fedora and Arch.
///
/// Warnings: every other device of this host with the same ids as a reserved device (ids=
/// claims them all), and reserved devices left out (a built-in guard protects them, or
/// reservations disagree on them).
///
/// --write writes the modprobe.d file, and only that, to /etc/modprobe.d/vfio-gate.conf
/// (atomically, mode 0644); it needs root. Then rebuild the initramfs and reboot.
///
/// Exit status 0 (nothing reserved too), 3 for --write when not run as root, 9 when the
/// policy is refused.
#[derive(Debug, Args)]
pub struct BootConfigArgs {
    /// The policy file; its drop-ins are read from policy.d beside it.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_POLICY)]
    pub policy: PathBuf,

    /// Write the modprobe.d file (as root; atomically, mode 0644). Never the bootloader.
    #[arg(long)]
    pub write: bool,

    /// Also claim the reserved devices by their vendor:device ids in the modprobe.d file
    /// (options vfio-pci ids=...): every device with those ids, not only the reserved ones.
    #[arg(long)]
    pub ids: bool,

    /// The module directory of the kernel this host boots, with its modules.alias and
    /// modules.builtin.alias (default: /lib/modules/RELEASE of the running kernel).
    #[arg(long, value_name = "DIR")]
    pub modules_dir: Option<PathBuf>,

    /// Write vfio-gate.conf into DIR instead of /etc/modprobe.d (an image being built, tests).
    #[arg(
        long = "modprobe-d",
        value_name = "DIR",
        default_value = "/etc/modprobe.d"
    )]
    pub modprobe_d: PathBuf,

    #[command(flatten)]
    pub host: HostArgs,
}

/// Check this host for what vfio-gate and a VM with a device need, and say how to fix the rest.
///
/// Works without the helper: it reads /sys, /proc, /dev and /etc (nothing it reads needs
/// privilege, and nothing is written), then asks the helper, if it answers, what the policy
/// grants you. One line per check, ok, warn or fail, with what was found, and the fix on the line
/// below: the kernel and its viability rule; the IOMMU (its groups, the firmware's DMAR or IVRS
/// table, the kernel parameter for the CPU's vendor: intel_iommu=on on Intel, none on AMD, whose
/// IOMMU is on by default); interrupt remapping (and allow_unsafe_interrupts); an ACS override on
/// the command line; the vfio, vfio_pci and pci_stub modules and whether they load at boot;
/// /dev/vfio/vfio and its mode; the policy; landlock against the policy's sandbox_floor; the
/// socket and its unit; the helper and its protocol version; the devices the policy lets you
/// bind; your memlock limit (RLIMIT_MEMLOCK), against --memory SIZE when given, with the exact
/// limits.d and systemd lines that raise it.
///
/// Exit status 0 when no check fails (warnings alone too), 10 when one does.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Your guest's RAM, to check your memlock limit against (VFIO pins all of it): 64M, 8G,
    /// 2048 (MiB), as QEMU's -m takes it.
    #[arg(long, value_name = "SIZE", value_parser = crate::memlock::memory_arg)]
    pub memory: Option<u64>,

    /// The policy file whose settings (sandbox_floor) are checked; drop-ins from policy.d
    /// beside it.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_POLICY)]
    pub policy: PathBuf,

    #[command(flatten)]
    pub host: HostArgs,

    /// Read procfs from this tree instead of /proc (tests).
    #[arg(long, value_name = "DIR", hide = true)]
    pub proc_root: Option<PathBuf>,

    /// Read /dev from this tree instead of /dev (tests).
    #[arg(long, value_name = "DIR", hide = true)]
    pub dev_root: Option<PathBuf>,
}

/// `word` as a shell would need it: as it is when it holds only safe characters, else in single
/// quotes.
pub fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `devices` in order, each once (01:00.0 and 0000:01:00.0 are one device).
fn unique(devices: &[PciAddress]) -> Vec<PciAddress> {
    let mut seen = std::collections::BTreeSet::new();
    devices
        .iter()
        .copied()
        .filter(|d| seen.insert(*d))
        .collect()
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
    fn release_takes_exactly_one_target() {
        let target = |args: &[&str]| {
            let Command::Release(r) = parse(args).unwrap().command else {
                panic!("not release")
            };
            r.target()
        };
        assert_eq!(
            target(&["release", "0000:05:02.0"]),
            ReleaseTarget::Device(PciAddress::new(0, 5, 2, 0).unwrap())
        );
        assert_eq!(target(&["release", "--all"]), ReleaseTarget::Mine);
        assert_eq!(
            target(&["release", "--user", "4242"]),
            ReleaseTarget::User(4242)
        );
        for args in [
            &["release"][..],
            &["release", "--all", "05:02.0"],
            &["release", "--all", "--user", "0"],
            &["release", "--user", "0", "05:02.0"],
            &["release", "--user", "4294967296"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn user_names_resolve_through_the_passwd_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\nbob:x:1001:1001::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\n").unwrap();
        let passwd = dir.path();
        let bob = UserArg::resolve("bob", passwd).unwrap();
        assert_eq!((bob.uid, bob.display()), (1001, "bob".to_owned()));
        let by_uid = UserArg::resolve("1001", passwd).unwrap();
        assert_eq!((by_uid.uid, by_uid.display()), (1001, "bob".to_owned()));
        let unnamed = UserArg::resolve("4242", passwd).unwrap();
        assert_eq!((unnamed.uid, unnamed.display()), (4242, "4242".to_owned()));
        let err = UserArg::resolve("alice", passwd).unwrap_err();
        assert!(err.starts_with("no user \"alice\" in "), "{err}");
        assert!(err.contains("/etc/passwd;"), "{err}");
    }

    #[test]
    fn run_takes_devices_in_order_and_the_command_after_a_double_dash() {
        let cli = parse(&[
            "run",
            "--device",
            "05:02.0",
            "--group",
            "--device",
            "05:01.0",
            "--to",
            "pci-stub",
            "--device",
            "0000:05:02.0",
            "--",
            "/usr/bin/qemu",
            "-name",
            "my vm",
            "--json",
        ])
        .unwrap();
        assert!(!cli.json, "--json after -- belongs to the command");
        cli.validate().unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let a = |s: &str| s.parse::<PciAddress>().unwrap();
        assert_eq!(args.unique_devices(), vec![a("05:02.0"), a("05:01.0")]);
        assert_eq!(args.driver, Driver::PciStub);
        assert!(args.group);
        assert_eq!(args.program_name(), "qemu");
        assert_eq!(
            args.command_line(true),
            "vfio-gate run --device 05:02.0 --device 05:01.0 --to pci-stub --group -- \
             /usr/bin/qemu -name 'my vm' --json"
        );
        for args in [
            &["run", "--device", "05:02.0"][..],
            &["run", "--device", "05:02.0", "--"],
            &["run", "--", "true"],
            &["run", "--device", "05:02.0", "true"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
        let json = parse(&["--json", "run", "--device", "05:02.0", "--", "true"]).unwrap();
        assert_eq!(json.validate().unwrap_err().exit_code(), 2);
        let mut many = vec!["run".to_owned()];
        for i in 0..=MAX_BIND_DEVICES {
            many.push("--device".into());
            many.push(format!("05:{:02x}.{}", i / 8, i % 8));
        }
        many.extend(["--".into(), "true".into()]);
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(parse(&many).unwrap().validate().unwrap_err().exit_code(), 2);
    }

    #[test]
    fn shell_quoting_keeps_plain_words_and_quotes_the_rest() {
        assert_eq!(
            shell_quote("vfio-pci,host=01:00.0"),
            "vfio-pci,host=01:00.0"
        );
        assert_eq!(shell_quote("my vm"), "'my vm'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn boot_config_takes_its_flags_and_says_itself_as_a_command_line() {
        let cli = parse(&["boot-config", "--ids", "--write"]).unwrap();
        let Command::BootConfig(args) = cli.command else {
            panic!("not boot-config")
        };
        assert!(args.ids && args.write);
        assert_eq!(args.policy, PathBuf::from(DEFAULT_POLICY));
        assert_eq!(args.modprobe_d, PathBuf::from("/etc/modprobe.d"));
        assert_eq!(args.modules_dir, None);
        assert_eq!(
            args.command_line(true),
            "vfio-gate boot-config --write --ids"
        );
        let cli = parse(&[
            "boot-config",
            "--policy",
            "/srv/my policy.toml",
            "--modules-dir",
            "/lib/modules/6.1.0-56-amd64",
            "--modprobe-d",
            "/mnt/etc/modprobe.d",
        ])
        .unwrap();
        let Command::BootConfig(args) = cli.command else {
            panic!("not boot-config")
        };
        assert_eq!(
            args.command_line(true),
            "vfio-gate boot-config --write --policy '/srv/my policy.toml' --modules-dir \
             /lib/modules/6.1.0-56-amd64 --modprobe-d /mnt/etc/modprobe.d"
        );
        assert_eq!(
            args.command_line(false),
            "vfio-gate boot-config --policy '/srv/my policy.toml' --modules-dir \
             /lib/modules/6.1.0-56-amd64 --modprobe-d /mnt/etc/modprobe.d"
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
