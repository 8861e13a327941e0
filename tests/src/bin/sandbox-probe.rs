//! `sandbox-probe [--expect-abi N] [--state-dir DIR]`: the helper's landlock domain, tried for
//! real.
//!
//! Forks first, while this process is single-threaded. The child builds the helper's own ruleset
//! from the real paths (`vfio_gated::sandbox::landlock::{grants, ruleset}`: sysfs `/sys`, procfs
//! `/proc`, the state directory, `/dev/vfio`), applies it with `restrict_self`, then tries what
//! the sandbox must refuse and what the helper needs, and prints one line per attempt:
//!
//! ```text
//! denied write /etc/passwd: EACCES
//! allowed read /sys/bus/pci/devices/0000:01:00.0/vendor: 0x8086
//! absent sriov_numvfs: no device here has SR-IOV
//! unrestricted tcp connect 127.0.0.1:41234: connected (ABI 2 < 4: landlock cannot deny TCP)
//! UNEXPECTED allowed write /sys/bus/pci/rescan
//! ```
//!
//! Nothing dangerous is ever done: a denied write is tried by `open(2)` for writing (where
//! landlock decides) and, if that unexpectedly succeeds, nothing is written; the only writes are
//! a newline to a `driver_override` that is unset (a no-op) and a scratch file in the state
//! directory. The parent, outside the domain, owns a TCP and an abstract Unix listener and is
//! the target of the signal. Exit status 0 when every attempt went as expected, 1 otherwise, 2
//! on bad usage.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use landlock::{LandlockStatus, RulesetStatus};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getppid};
use vfio_gated::roots::Roots;
use vfio_gated::sandbox::landlock::{grants, ruleset};

const USAGE: &str = "usage: sandbox-probe [--expect-abi N] [--state-dir DIR]";
const SYS: &str = "/sys";
const PCI: &str = "/sys/bus/pci";

struct Args {
    expect_abi: Option<i32>,
    state_dir: PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        expect_abi: None,
        state_dir: "/run/vfio-gate".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--expect-abi" => {
                let v = value()?;
                args.expect_abi = Some(v.parse().map_err(|_| format!("bad ABI {v:?}"))?);
            }
            "--state-dir" => args.state_dir = value()?.into(),
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sandbox-probe: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Peers outside the domain, made before the fork (still one thread) so the child finds them
    // ready: a TCP listener (ABI 4 denies connecting to it) and an abstract Unix one (ABI 6).
    let tcp = TcpListener::bind("127.0.0.1:0").ok();
    let abstract_name = format!("vfio-gate-sandbox-probe-{}", std::process::id());
    let unix = SocketAddr::from_abstract_name(&abstract_name)
        .and_then(|a| UnixListener::bind_addr(&a))
        .ok();
    let _ = io::stdout().flush();
    // SAFETY: this process has exactly one thread here (nothing above spawns one), so the child
    // is a complete copy and may run any code.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let ok = child(
                &args,
                tcp.as_ref(),
                unix.is_some().then_some(&abstract_name[..]),
            );
            let _ = io::stdout().flush();
            std::process::exit(if ok { 0 } else { 1 })
        }
        Ok(ForkResult::Parent { child }) => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => return ExitCode::SUCCESS,
                Ok(WaitStatus::Exited(_, code)) => {
                    eprintln!("sandbox-probe: the sandboxed child exited with status {code}");
                    return ExitCode::FAILURE;
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    eprintln!("sandbox-probe: the sandboxed child was killed by {sig}");
                    return ExitCode::FAILURE;
                }
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("sandbox-probe: waitpid: {e}");
                    return ExitCode::FAILURE;
                }
            }
        },
        Err(e) => {
            eprintln!("sandbox-probe: fork: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the verdicts; false if anything was unexpected.
struct Report {
    ok: bool,
}

impl Report {
    fn line(&mut self, expected: bool, text: String) {
        if expected {
            println!("{text}");
        } else {
            self.ok = false;
            println!("UNEXPECTED {text}");
        }
    }

    /// An attempt that must fail with one of `errnos`.
    fn denied(&mut self, what: &str, result: io::Result<String>, errnos: &[Errno]) {
        match result {
            Err(e) => {
                let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
                let expected = errnos.contains(&errno);
                let text = if expected {
                    format!("denied {what}: {errno:?}")
                } else {
                    format!("denied {what} with {errno:?} ({e}), expected {errnos:?}")
                };
                self.line(expected, text);
            }
            Ok(detail) => self.line(false, format!("allowed {what}: {detail}")),
        }
    }

    /// An attempt that must succeed.
    fn allowed(&mut self, what: &str, result: io::Result<String>) {
        match result {
            Ok(detail) => self.line(true, format!("allowed {what}: {detail}")),
            Err(e) => {
                let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
                self.line(false, format!("denied {what}: {errno:?} ({e})"));
            }
        }
    }
}

const DENIED: &[Errno] = &[Errno::EACCES];

/// `open(2)` for writing, and nothing written: where landlock decides.
fn open_for_writing(path: &Path) -> io::Result<String> {
    OpenOptions::new().write(true).open(path)?;
    Ok("opened for writing (nothing written)".into())
}

fn read_text(path: &Path) -> io::Result<String> {
    let mut s = String::new();
    fs::File::open(path)?.read_to_string(&mut s)?;
    Ok(s.trim_end().chars().take(60).collect())
}

/// PCI devices, sorted by address.
fn devices() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(Path::new(PCI).join("devices"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// The first device with `file`, preferring `prefer`.
fn device_with(all: &[PathBuf], file: &str, prefer: &str) -> Option<PathBuf> {
    let p = Path::new(PCI).join("devices").join(prefer);
    if p.join(file).exists() {
        return Some(p);
    }
    all.iter().find(|d| d.join(file).exists()).cloned()
}

fn child(args: &Args, tcp: Option<&TcpListener>, abstract_name: Option<&str>) -> bool {
    let mut r = Report { ok: true };
    // Found before the domain exists (it may hide what we look for).
    let all = devices();
    let quiet = device_with(&all, "driver_override", "0000:00:06.1")
        .filter(|d| read_text(&d.join("driver_override")).is_ok_and(|o| o == "(null)"))
        .or_else(|| {
            all.iter()
                .find(|d| read_text(&d.join("driver_override")).is_ok_and(|o| o == "(null)"))
                .cloned()
        });
    let nic = Path::new(PCI).join("devices/0000:01:00.0");
    let reset = device_with(&all, "reset", "0000:00:06.1");
    let sriov = all
        .iter()
        .find(|d| d.join("sriov_numvfs").exists())
        .cloned();
    let driver = fs::read_dir(Path::new(PCI).join("drivers"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|d| d.join("unbind").exists());

    let roots = Roots {
        sys: SYS.into(),
        state: args.state_dir.clone(),
        ..Roots::default()
    };
    let grants = grants(&roots);
    let status = match ruleset(&grants).map(|rs| rs.restrict_self()) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            r.line(false, format!("restrict_self failed: {e}"));
            return false;
        }
        Err(e) => {
            r.line(false, format!("building the helper's ruleset failed: {e}"));
            return false;
        }
    };
    let abi = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi as i32,
        _ => 0,
    };
    let enforced = !matches!(status.ruleset, RulesetStatus::NotEnforced);
    r.line(
        enforced,
        format!("landlock: ABI {abi}, ruleset {:?}", status.ruleset),
    );
    if let Some(want) = args.expect_abi {
        r.line(abi == want, format!("landlock ABI {abi}, expected {want}"));
    }
    if !enforced {
        return false;
    }

    // --- what must fail ---
    r.denied(
        "write /etc/passwd",
        open_for_writing(Path::new("/etc/passwd")),
        DENIED,
    );
    // /etc/passwd and /etc/group are readable (an admin's `explain --user`); nothing else in
    // /etc is, not even the policy once it is loaded, nor another process's /proc.
    r.denied(
        "read /etc/vfio-gate/policy.toml",
        read_text(Path::new("/etc/vfio-gate/policy.toml")),
        DENIED,
    );
    r.denied(
        "read /proc/1/environ",
        read_text(Path::new("/proc/1/environ")),
        DENIED,
    );
    let scratch = format!("/tmp/sandbox-probe-{}", std::process::id());
    r.denied(
        &format!("create {scratch}"),
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&scratch)
            .map(|_| {
                let _ = fs::remove_file(&scratch);
                "created (and removed)".to_string()
            }),
        DENIED,
    );
    r.denied(
        "write /sys/bus/pci/rescan",
        open_for_writing(&Path::new(PCI).join("rescan")),
        DENIED,
    );
    match device_with(&all, "remove", "0000:00:06.1") {
        Some(d) => r.denied(
            &format!("write {}", d.join("remove").display()),
            open_for_writing(&d.join("remove")),
            DENIED,
        ),
        None => r.line(false, "absent remove: no PCI device has one".into()),
    }
    match &reset {
        Some(d) => r.denied(
            &format!("write {}", d.join("reset").display()),
            open_for_writing(&d.join("reset")),
            DENIED,
        ),
        None => r.line(
            true,
            "absent reset: no device here has a reset method".into(),
        ),
    }
    match &sriov {
        Some(d) => r.denied(
            &format!("write {}", d.join("sriov_numvfs").display()),
            open_for_writing(&d.join("sriov_numvfs")),
            DENIED,
        ),
        None => r.line(
            true,
            "absent sriov_numvfs: no device here has SR-IOV".into(),
        ),
    }
    if let Some(d) = &driver {
        for file in ["bind", "new_id"] {
            if d.join(file).exists() {
                r.denied(
                    &format!("write {}", d.join(file).display()),
                    open_for_writing(&d.join(file)),
                    DENIED,
                );
            }
        }
    }
    r.denied(
        &format!("mkdir in {}", args.state_dir.display()),
        fs::create_dir(args.state_dir.join("probe-dir")).map(|_| "created".into()),
        DENIED,
    );
    r.denied(
        &format!("symlink in {}", args.state_dir.display()),
        std::os::unix::fs::symlink("/etc/passwd", args.state_dir.join("probe-link"))
            .map(|_| "created".into()),
        DENIED,
    );
    r.denied(
        "exec /bin/sh",
        std::process::Command::new("/bin/sh")
            .args(["-c", "exit 0"])
            .status()
            .map(|s| format!("ran ({s})")),
        DENIED,
    );

    // Network and scopes: denied from ABI 4 (TCP) and 6 (abstract sockets, signals) on.
    let tcp_addr = tcp.and_then(|l| l.local_addr().ok());
    match tcp_addr {
        Some(addr) => {
            let what = format!("tcp connect {addr}");
            let res = TcpStream::connect(addr).map(|_| "connected".to_string());
            if abi >= 4 {
                r.denied(&what, res, DENIED);
            } else {
                unrestricted(&mut r, &what, res, abi, 4, "TCP");
            }
            let what = "tcp bind 127.0.0.1:0".to_string();
            let res = TcpListener::bind("127.0.0.1:0").map(|l| {
                format!(
                    "bound {}",
                    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
                )
            });
            if abi >= 4 {
                r.denied(&what, res, DENIED);
            } else {
                unrestricted(&mut r, &what, res, abi, 4, "TCP");
            }
        }
        None => r.line(
            false,
            "cannot test TCP: no listener on 127.0.0.1 (is lo up?)".into(),
        ),
    }
    match abstract_name {
        Some(name) => {
            let what = format!("connect to abstract socket @{name} outside the domain");
            let res = SocketAddr::from_abstract_name(name)
                .and_then(|a| UnixStream::connect_addr(&a))
                .map(|_| "connected".to_string());
            if abi >= 6 {
                r.denied(&what, res, &[Errno::EPERM]);
            } else {
                unrestricted(&mut r, &what, res, abi, 6, "abstract Unix sockets");
            }
        }
        None => r.line(false, "cannot test abstract sockets: no listener".into()),
    }
    let parent = getppid();
    let what = format!("SIGCONT to pid {parent} outside the domain");
    let res = kill(parent, Signal::SIGCONT)
        .map(|_| "sent".to_string())
        .map_err(io::Error::from);
    if abi >= 6 {
        r.denied(&what, res, &[Errno::EPERM]);
    } else {
        unrestricted(&mut r, &what, res, abi, 6, "signals");
    }
    let what = "SIGCONT to pid 1".to_string();
    let res = kill(Pid::from_raw(1), Signal::SIGCONT)
        .map(|_| "sent".to_string())
        .map_err(io::Error::from);
    if abi >= 6 {
        r.denied(&what, res, &[Errno::EPERM]);
    } else {
        unrestricted(&mut r, &what, res, abi, 6, "signals");
    }

    // --- what the helper needs ---
    r.allowed(
        &format!("read {}", nic.join("vendor").display()),
        read_text(&nic.join("vendor")),
    );
    r.allowed(
        "list /sys/kernel/iommu_groups",
        fs::read_dir("/sys/kernel/iommu_groups").map(|d| format!("{} groups", d.count())),
    );
    match &quiet {
        Some(d) => {
            let f = d.join("driver_override");
            r.allowed(
                &format!("write {} (a newline: it is unset, so a no-op)", f.display()),
                OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .and_then(|mut file| file.write_all(b"\n"))
                    .and_then(|()| read_text(&f)),
            );
        }
        None => r.line(
            false,
            "no device with an unset driver_override to try".into(),
        ),
    }
    r.allowed(
        "write /sys/bus/pci/drivers_probe",
        open_for_writing(&Path::new(PCI).join("drivers_probe")),
    );
    match &driver {
        Some(d) => r.allowed(
            &format!("write {}", d.join("unbind").display()),
            open_for_writing(&d.join("unbind")),
        ),
        None => r.line(false, "no PCI driver with an unbind file".into()),
    }
    let tmp = args
        .state_dir
        .join(format!(".probe-{}.tmp", std::process::id()));
    let done = args.state_dir.join(format!("probe-{}", std::process::id()));
    r.allowed(
        &format!(
            "write, rename and remove a file in {}",
            args.state_dir.display()
        ),
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(b"lease\n"))
            .and_then(|()| fs::rename(&tmp, &done))
            .and_then(|()| read_text(&done))
            .and_then(|t| fs::remove_file(&done).map(|()| format!("read back {t:?}"))),
    );
    r.allowed(
        "read /proc/self/mountinfo",
        read_text(Path::new("/proc/self/mountinfo")).map(|_| "ok".into()),
    );
    r.allowed(
        "read /proc/swaps",
        read_text(Path::new("/proc/swaps")).map(|_| "ok".into()),
    );
    r.allowed(
        "read /proc/net/route",
        read_text(Path::new("/proc/net/route")).map(|_| "ok".into()),
    );
    r.allowed(
        "open /dev/vfio/vfio",
        OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/vfio/vfio")
            .map(|_| "ok".into()),
    );
    r.ok
}

/// An attempt the kernel's ABI cannot deny: reported, and expected to work.
fn unrestricted(
    r: &mut Report,
    what: &str,
    res: io::Result<String>,
    abi: i32,
    needs: i32,
    kind: &str,
) {
    match res {
        Ok(d) => r.line(
            true,
            format!("unrestricted {what}: {d} (ABI {abi} < {needs}: landlock cannot deny {kind})"),
        ),
        Err(e) => r.line(
            false,
            format!("{what} failed on ABI {abi} < {needs}, where nothing should deny it: {e}"),
        ),
    }
}
