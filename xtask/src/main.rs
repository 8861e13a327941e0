//! `cargo xtask`: the real-kernel test bed of vfio-gate, the demo and the full test run.
//!
//! ```text
//! cargo xtask vm run --script FILE [--policy FILE] [--kernel 6.1|6.12] [--init busybox|systemd]
//!                                                     run FILE as root in the guest
//! cargo xtask vm shell [--policy FILE] [--kernel …] [--init …]   an interactive guest
//! cargo xtask demo                                    the narrated tour
//! cargo xtask test [--kernel 6.1,6.12]                every test, unit and VM, on both kernels
//! cargo xtask tidy                                    the architecture's invariants (src/tidy.rs)
//! ```
//!
//! Each guest boot builds the release binaries statically, fetches and caches a stock Debian
//! kernel, and boots it in QEMU with an emulated IOMMU and a fixed set of PCI devices
//! (`docs/guest.md`). Nothing here touches the host's `/sys` or its kernel modules.
//!
//! `tidy` checks, from the tree and its documents, what the compiler cannot: `unsafe` only in
//! a crate's `sys.rs`, file writes only in the helper files `ARCHITECTURE.md` lists, the code map
//! and the README's exit codes true, the helper's dependency budget, no doc link leaving the
//! repository. `cargo xtask test` runs it right after clippy.

#![forbid(unsafe_code)]

mod cpio;
mod extra;
mod guest;
mod host;
mod image;
mod kernel;
mod qemu;
mod systemd;
mod test;
mod tidy;
mod util;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::guest::{Mode, RunSpec};
use crate::host::Apt;
use crate::kernel::{Kernel, KernelSeries};
use crate::systemd::Init;
use crate::util::{Context, Paths, Result, fmt_duration};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "vfio-gate's developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The QEMU test guest.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Boot the guest and run the narrated tour (tests/vm/demo.sh).
    Demo(GuestArgs),
    /// Run every test: fmt, clippy, unit tests, then each tests/vm/*.test.sh in its own guest.
    Test(test::TestArgs),
    /// Check the architecture's invariants: unsafe only in sys.rs, file writes only in the
    /// writers ARCHITECTURE.md lists, the code map, the README's exit codes, the helper's
    /// dependency count, doc links (xtask/src/tidy.rs).
    Tidy,
}

#[derive(Debug, Subcommand)]
enum VmCmd {
    /// Boot the guest, run SCRIPT with `sh` as root, print its output and exit with its status.
    Run {
        /// The script to run in the guest (it can source /test/lib.sh).
        #[arg(long)]
        script: PathBuf,
        #[command(flatten)]
        guest: GuestArgs,
    },
    /// Boot the guest with an interactive root shell on this terminal.
    Shell {
        #[command(flatten)]
        guest: GuestArgs,
    },
}

/// Options every guest boot takes.
#[derive(Debug, Clone, Args)]
pub struct GuestArgs {
    /// The policy installed as /etc/vfio-gate/policy.toml [default: the script's NAME.policy.toml
    /// beside NAME.test.sh if there is one, else tests/vm/policy.toml].
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The guest kernel.
    #[arg(long, value_enum, default_value = "6.1")]
    kernel: KernelSeries,
    /// PID 1 of the guest: busybox (tests/vm/init.sh), or systemd on a Debian root filesystem
    /// running the shipped dist/ units.
    #[arg(long, value_enum, default_value = "busybox")]
    init: Init,
    /// Stop the guest after this many seconds [default: 600, or 4 hours for the shell].
    #[arg(long)]
    timeout: Option<u64>,
}

impl GuestArgs {
    fn timeout(&self, default: u64) -> Duration {
        Duration::from_secs(self.timeout.unwrap_or(default))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let paths = Paths::discover()?;
    match cli.command {
        Cmd::Vm(VmCmd::Run { script, guest }) => {
            let spec = RunSpec {
                policy: policy_path(&paths, &guest, Some(&script)),
                mode: Mode::Script(script),
            };
            run_script(&paths, &guest, spec, "run")
        }
        Cmd::Vm(VmCmd::Shell { guest }) => shell(&paths, &guest),
        Cmd::Demo(guest) => {
            let spec = RunSpec {
                mode: Mode::Script(paths.vm_sources().join("demo.sh")),
                policy: policy_path(&paths, &guest, None),
            };
            run_script(&paths, &guest, spec, "demo")
        }
        Cmd::Test(args) => test::run(&paths, &args),
        Cmd::Tidy => tidy::main(&paths),
    }
}

/// `--policy`, else the script's own `NAME.policy.toml` beside `NAME.test.sh` (as
/// `cargo xtask test` does), else `tests/vm/policy.toml`.
pub fn policy_path(paths: &Paths, guest: &GuestArgs, script: Option<&Path>) -> PathBuf {
    if let Some(p) = &guest.policy {
        return p.clone();
    }
    script
        .and_then(own_policy)
        .unwrap_or_else(|| paths.vm_sources().join("policy.toml"))
}

/// `dir/NAME.test.sh` → `dir/NAME.policy.toml`, if that file exists.
pub fn own_policy(script: &Path) -> Option<PathBuf> {
    let name = script.file_name()?.to_str()?;
    let stem = name.strip_suffix(".test.sh")?;
    let policy = script.with_file_name(format!("{stem}.policy.toml"));
    policy.is_file().then_some(policy)
}

/// What every boot needs and can share: host tools, binaries, the kernel and the base archive
/// (and, for the systemd guest, its root disk).
#[derive(Debug)]
pub struct Prepared {
    pub kernel: Kernel,
    pub init: Init,
    pub base: PathBuf,
    pub root_disk: Option<PathBuf>,
    pub bins: PathBuf,
}

pub fn prepare(paths: &Paths, series: KernelSeries, init: Init, apt: &mut Apt) -> Result<Prepared> {
    apt.ensure_host_tools()?;
    let bins = guest::build_binaries(paths)?;
    let kernel =
        Kernel::prepare(series, &paths.cache, apt).context("preparing the guest kernel")?;
    let (base, root_disk) = match init {
        Init::Busybox => (
            guest::base_initramfs(&kernel).context("building the base initramfs")?,
            None,
        ),
        Init::Systemd => {
            let tarball = systemd::rootfs(&paths.cache)?;
            let disk = systemd::root_disk(&kernel, &tarball)?;
            let shim = systemd::shim_initramfs(&kernel)
                .context("building the systemd guest's first stage")?;
            (shim, Some(disk))
        }
    };
    Ok(Prepared {
        kernel,
        init,
        base,
        root_disk,
        bins,
    })
}

/// The run directory's name: `run`, `test-skeleton`… for the default guest (6.1, busybox), with
/// the kernel and `systemd` appended otherwise (`run-6.12-systemd`), so that runs of different
/// guests never share a directory.
pub fn run_name(base: &str, series: KernelSeries, init: Init) -> String {
    let mut name = base.to_string();
    if series != KernelSeries::V6_1 {
        name = format!("{name}-{}", series.name());
    }
    if init == Init::Systemd && !base.contains("systemd") {
        name.push_str("-systemd");
    }
    name
}

/// Builds the overlay for `spec` and the machine to boot it, in `<target>/vm/<run>`.
pub fn machine(
    paths: &Paths,
    prep: &Prepared,
    spec: &RunSpec,
    run: &str,
    timeout: Duration,
) -> Result<qemu::Machine> {
    let dir = paths.vm_dir(run);
    let initrd = dir.join("initramfs.cpio");
    let start = std::time::Instant::now();
    let overlay = match prep.init {
        Init::Busybox => guest::overlay(paths, &prep.bins, spec)?,
        Init::Systemd => systemd::overlay(paths, &prep.bins, spec)?,
    };
    guest::write_initramfs(&prep.base, &overlay, &initrd)?;
    eprintln!(
        "xtask: {} written in {} ms (overlay {} KiB)",
        initrd.display(),
        start.elapsed().as_millis(),
        overlay.len() / 1024
    );
    Ok(qemu::Machine {
        kernel: prep.kernel.image.clone(),
        initrd,
        dir,
        memory_mib: 512,
        root_disk: prep.root_disk.clone(),
        // Opt-in extra devices (`# vm: extra-devices=N` in the script): xtask/src/extra.rs.
        extra_devices: extra::extra_devices(spec)?,
        // Opt-in kernel parameters (`# vm: kernel-args=…`), the same place.
        kernel_args: extra::kernel_args(spec)?,
        interactive: matches!(spec.mode, Mode::Shell),
        timeout,
    })
}

fn run_script(paths: &Paths, args: &GuestArgs, spec: RunSpec, run: &str) -> Result<ExitCode> {
    if let Mode::Script(s) = &spec.mode {
        check_file(s, "script")?;
    }
    check_file(&spec.policy, "policy")?;
    let mut apt = Apt::default();
    let prep = prepare(paths, args.kernel, args.init, &mut apt)?;
    let run = run_name(run, args.kernel, args.init);
    let m = machine(paths, &prep, &spec, &run, args.timeout(600))?;
    eprintln!(
        "xtask: booting {} with {:?} as PID 1 ({}, policy {}, files in {})",
        prep.kernel.release,
        prep.init,
        qemu::accel(),
        spec.policy.display(),
        m.dir.display()
    );
    let mut stdout = std::io::stdout();
    let outcome = m.run(&mut |bytes| {
        let _ = stdout.write_all(bytes);
        let _ = stdout.flush();
    })?;
    eprintln!("xtask: guest finished in {}", fmt_duration(outcome.wall));
    let (code, why) = match outcome.script_status {
        Some(rc) => (rc, format!("script exit status {rc}")),
        None => (1, outcome.failure().unwrap_or_default()),
    };
    if code != 0 {
        eprintln!(
            "xtask: {why}; guest console log: {}\n--- last lines ---\n{}",
            outcome.console.display(),
            qemu::console_tail(&outcome.console, 40)
        );
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn shell(paths: &Paths, args: &GuestArgs) -> Result<ExitCode> {
    let spec = RunSpec {
        mode: Mode::Shell,
        policy: policy_path(paths, args, None),
    };
    check_file(&spec.policy, "policy")?;
    let mut apt = Apt::default();
    let prep = prepare(paths, args.kernel, args.init, &mut apt)?;
    // An interactive session may last long, but never forever.
    let run = run_name("shell", args.kernel, args.init);
    let m = machine(paths, &prep, &spec, &run, args.timeout(4 * 3600))?;
    let st = m.run_interactive()?;
    Ok(if st.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check_file(path: &Path, what: &str) -> Result<()> {
    if !path.is_file() {
        util::bail!("{what} {} does not exist", path.display());
    }
    Ok(())
}
