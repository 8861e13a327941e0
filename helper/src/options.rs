//! Command-line options. Hand-parsed: the helper takes a handful of paths and nothing else, and
//! keeps its dependency list short. The roots of the trees it works on become one [`Roots`].

use std::ffi::OsString;
use std::path::PathBuf;

use vfio_gate_protocol::PciAddress;

use crate::roots::Roots;

pub const USAGE: &str = "\
usage: vfio-gated [--listen PATH | --reserve | --reserve-device ADDR] [--policy FILE]
                  [--sysfs-root DIR] [--state-dir DIR] [--vfio-dir DIR] [--proc-root DIR]
                  [--etc-root DIR]

The vfio-gate privileged helper. Normally started by systemd socket activation
(vfio-gate.socket); --listen PATH serves a socket of its own instead.

  --listen PATH      listen on PATH instead of the activation socket (fd 3)
  --reserve          hold every device the policy reserves ([[reserve]]) on its
                     driver, then exit (vfio-gate-reserve.service, early at boot)
  --reserve-device ADDR
                     the same for one device that just appeared (the udev rule)
  --policy FILE      policy file (default /etc/vfio-gate/policy.toml)
  --sysfs-root DIR   sysfs mount to act on (default /sys)
  --state-dir DIR    lease records (default /run/vfio-gate)
  --vfio-dir DIR     VFIO group nodes handed to users (default /dev/vfio)
  --proc-root DIR    procfs mount read by the in-use guard (default /proc)
  --etc-root DIR     read accounts from DIR/etc/passwd and DIR/etc/group (default /)
  --help, --version
";

/// What the helper runs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Serve clients on the socket until idle (the default).
    Serve,
    /// Hold the reserved devices on their drivers and exit: every one (`--reserve`), or one
    /// device that just appeared (`--reserve-device ADDR`).
    Reserve(Option<PciAddress>),
}

/// The helper's settings from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    pub listen: Option<PathBuf>,
    pub policy: PathBuf,
    /// `--sysfs-root`, `--proc-root`, `--etc-root`, `--state-dir`, `--vfio-dir`.
    pub roots: Roots,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mode: Mode::Serve,
            listen: None,
            policy: "/etc/vfio-gate/policy.toml".into(),
            roots: Roots::default(),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Options),
    Help,
    Version,
}

/// The command line is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("unknown option {0:?}")]
    Unknown(String),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("{0} given twice")]
    Repeated(&'static str),
    #[error("{0:?} is not a PCI address (DDDD:BB:DD.F)")]
    BadAddress(String),
    #[error(
        "--listen, --reserve and --reserve-device do not go together: the helper serves or reserves"
    )]
    Modes,
}

impl Command {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
        let mut opts = Options::default();
        let mut seen: Vec<&'static str> = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let name: &'static str = match arg.to_str() {
                Some("--help" | "-h") => return Ok(Command::Help),
                Some("--version" | "-V") => return Ok(Command::Version),
                Some("--reserve") => {
                    if seen.contains(&"--reserve") {
                        return Err(UsageError::Repeated("--reserve"));
                    }
                    seen.push("--reserve");
                    opts.mode = Mode::Reserve(None);
                    continue;
                }
                Some("--reserve-device") => "--reserve-device",
                Some("--listen") => "--listen",
                Some("--policy") => "--policy",
                Some("--sysfs-root") => "--sysfs-root",
                Some("--state-dir") => "--state-dir",
                Some("--vfio-dir") => "--vfio-dir",
                Some("--proc-root") => "--proc-root",
                Some("--etc-root") => "--etc-root",
                _ => return Err(UsageError::Unknown(arg.to_string_lossy().into_owned())),
            };
            if seen.contains(&name) {
                return Err(UsageError::Repeated(name));
            }
            seen.push(name);
            let value = args.next().ok_or(UsageError::MissingValue(name))?;
            if name == "--reserve-device" {
                let text = value.to_string_lossy();
                let dev = text
                    .parse::<PciAddress>()
                    .map_err(|_| UsageError::BadAddress(text.into_owned()))?;
                opts.mode = Mode::Reserve(Some(dev));
                continue;
            }
            let value = PathBuf::from(value);
            match name {
                "--listen" => opts.listen = Some(value),
                "--policy" => opts.policy = value,
                "--sysfs-root" => opts.roots.sys = value,
                "--state-dir" => opts.roots.state = value,
                "--vfio-dir" => opts.roots.vfio = value,
                "--proc-root" => opts.roots.proc = value,
                _ => opts.roots.etc = value,
            }
        }
        let modes = ["--listen", "--reserve", "--reserve-device"];
        if seen.iter().filter(|s| modes.contains(s)).count() > 1 {
            return Err(UsageError::Modes);
        }
        Ok(Command::Run(opts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, UsageError> {
        Command::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(parse(&[]).unwrap(), Command::Run(Options::default()));
        let Command::Run(o) = parse(&[
            "--listen",
            "/tmp/s",
            "--sysfs-root",
            "/tmp/sys",
            "--policy",
            "p",
            "--state-dir",
            "d",
            "--proc-root",
            "/tmp/proc",
            "--etc-root",
            "/tmp/root",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(o.listen.as_deref(), Some(std::path::Path::new("/tmp/s")));
        assert_eq!(o.policy, PathBuf::from("p"));
        assert_eq!(
            o.roots,
            Roots {
                sys: "/tmp/sys".into(),
                proc: "/tmp/proc".into(),
                etc: "/tmp/root".into(),
                state: "d".into(),
                vfio: "/dev/vfio".into(),
            }
        );
        assert_eq!(o.roots.passwd(), PathBuf::from("/tmp/root/etc/passwd"));
    }

    #[test]
    fn every_root_defaults_to_production() {
        let Command::Run(o) = parse(&[]).unwrap() else {
            panic!()
        };
        let r = o.roots;
        let paths = [&r.sys, &r.proc, &r.etc, &r.state, &r.vfio].map(|p| p.display().to_string());
        assert_eq!(paths, ["/sys", "/proc", "/", "/run/vfio-gate", "/dev/vfio"]);
        assert_eq!(r.group(), PathBuf::from("/etc/group"));
    }

    #[test]
    fn rejects_unknown_missing_and_repeated() {
        assert_eq!(
            parse(&["--bogus"]),
            Err(UsageError::Unknown("--bogus".into()))
        );
        assert_eq!(
            parse(&["--policy"]),
            Err(UsageError::MissingValue("--policy"))
        );
        assert_eq!(
            parse(&["--policy", "a", "--policy", "b"]),
            Err(UsageError::Repeated("--policy"))
        );
        assert_eq!(parse(&["--help", "--bogus"]), Ok(Command::Help));
    }

    #[test]
    fn reserve_modes() {
        let mode = |args: &[&str]| match parse(args) {
            Ok(Command::Run(o)) => Ok(o.mode),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(mode(&[]), Ok(Mode::Serve));
        assert_eq!(mode(&["--reserve"]), Ok(Mode::Reserve(None)));
        assert_eq!(
            mode(&["--reserve-device", "0000:01:00.0"]),
            Ok(Mode::Reserve(Some("01:00.0".parse().unwrap())))
        );
        // udev passes the kernel's name; nothing else is a device.
        assert_eq!(
            mode(&["--reserve-device", "../../etc"]),
            Err(UsageError::BadAddress("../../etc".into()))
        );
        assert_eq!(
            mode(&["--reserve", "--listen", "/s"]),
            Err(UsageError::Modes)
        );
        assert_eq!(
            mode(&["--reserve", "--reserve-device", "01:00.0"]),
            Err(UsageError::Modes)
        );
        assert_eq!(
            mode(&["--reserve", "--reserve"]),
            Err(UsageError::Repeated("--reserve"))
        );
    }
}
