//! Command-line options. Hand-parsed: the helper takes four paths and nothing else, and keeps its
//! dependency list short.

use std::ffi::OsString;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage: vfio-gated [--listen PATH] [--policy FILE] [--sysfs-root DIR] [--state-dir DIR]
                  [--vfio-dir DIR]

The vfio-gate privileged helper. Normally started by systemd socket activation
(vfio-gate.socket); --listen PATH serves a socket of its own instead.

  --listen PATH      listen on PATH instead of the activation socket (fd 3)
  --policy FILE      policy file (default /etc/vfio-gate/policy.toml)
  --sysfs-root DIR   sysfs mount to act on (default /sys)
  --state-dir DIR    lease records (default /run/vfio-gate)
  --vfio-dir DIR     VFIO group nodes handed to users (default /dev/vfio)
  --help, --version
";

/// The helper's settings from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub listen: Option<PathBuf>,
    pub policy: PathBuf,
    pub sysfs_root: PathBuf,
    pub state_dir: PathBuf,
    pub vfio_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: None,
            policy: "/etc/vfio-gate/policy.toml".into(),
            sysfs_root: "/sys".into(),
            state_dir: "/run/vfio-gate".into(),
            vfio_dir: "/dev/vfio".into(),
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
                Some("--listen") => "--listen",
                Some("--policy") => "--policy",
                Some("--sysfs-root") => "--sysfs-root",
                Some("--state-dir") => "--state-dir",
                Some("--vfio-dir") => "--vfio-dir",
                _ => return Err(UsageError::Unknown(arg.to_string_lossy().into_owned())),
            };
            if seen.contains(&name) {
                return Err(UsageError::Repeated(name));
            }
            seen.push(name);
            let value = PathBuf::from(args.next().ok_or(UsageError::MissingValue(name))?);
            match name {
                "--listen" => opts.listen = Some(value),
                "--policy" => opts.policy = value,
                "--sysfs-root" => opts.sysfs_root = value,
                "--state-dir" => opts.state_dir = value,
                _ => opts.vfio_dir = value,
            }
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
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(o.listen.as_deref(), Some(std::path::Path::new("/tmp/s")));
        assert_eq!(o.sysfs_root, PathBuf::from("/tmp/sys"));
        assert_eq!(o.policy, PathBuf::from("p"));
        assert_eq!(o.state_dir, PathBuf::from("d"));
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
}
