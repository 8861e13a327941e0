//! Errors with context, running host commands, and where things live.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};

/// An xtask failure: what was being done, outermost first, then the cause.
#[derive(Debug)]
pub struct Error {
    chain: Vec<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn msg(msg: impl Into<String>) -> Error {
        Error {
            chain: vec![msg.into()],
        }
    }

    fn wrap(mut self, ctx: String) -> Error {
        self.chain.insert(0, ctx);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.chain.join(": "))
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::msg(e.to_string())
    }
}

/// Adds what was being done to an error, like `anyhow::Context`.
pub trait Context<T> {
    fn context(self, ctx: impl Into<String>) -> Result<T>;
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for Result<T, E> {
    fn context(self, ctx: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.into().wrap(ctx.into()))
    }
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| e.into().wrap(f().into()))
    }
}

macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::util::Error::msg(format!($($arg)*)))
    };
}
pub(crate) use bail;

/// A command line as a human would type it, for messages.
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        s.push(' ');
        if a.is_empty() || a.contains([' ', '"', '\'', '$', '*']) {
            s.push('\'');
            s.push_str(&a.replace('\'', r"'\''"));
            s.push('\'');
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Runs `cmd` with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` with inherited stdio and returns its status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("cannot run `{}`", display(cmd)))
}

/// Runs `cmd`, capturing its output; fails unless it exits 0, quoting its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out: Output = cmd
        .output()
        .with_context(|| format!("cannot run `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}`: output", display(cmd)))
}

impl From<std::string::FromUtf8Error> for Error {
    fn from(e: std::string::FromUtf8Error) -> Error {
        Error::msg(e.to_string())
    }
}

/// Is `name` on `PATH`?
pub fn have_command(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let p = dir.join(name);
            p.metadata().is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// Where the workspace, its build output and the download cache are.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The workspace root (the directory with the top `Cargo.toml`).
    pub workspace: PathBuf,
    /// Cargo's target directory: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
    pub target: PathBuf,
    /// Downloads and derived kernel artefacts, kept outside the clone:
    /// `$VFIO_GATE_CACHE`, else `$HOME/.cache/vfio-gate` (`/var/tmp/vfio-gate-cache` without HOME).
    pub cache: PathBuf,
}

impl Paths {
    pub fn discover() -> Result<Paths> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask sits inside the workspace")
            .to_path_buf();
        let cwd = std::env::current_dir()?;
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => cwd.join(dir),
            _ => workspace.join("target"),
        };
        let cache = match std::env::var_os("VFIO_GATE_CACHE") {
            Some(dir) if !dir.is_empty() => cwd.join(dir),
            _ => match std::env::var_os("HOME") {
                Some(home) if !home.is_empty() => PathBuf::from(home).join(".cache/vfio-gate"),
                _ => PathBuf::from("/var/tmp/vfio-gate-cache"),
            },
        };
        Ok(Paths {
            workspace,
            target,
            cache,
        })
    }

    /// Per-run guest files (initramfs, logs, disk image) under the target directory.
    pub fn vm_dir(&self, run: &str) -> PathBuf {
        self.target.join("vm").join(run)
    }

    pub fn vm_sources(&self) -> PathBuf {
        self.workspace.join("tests/vm")
    }
}

/// Writes `data` to `path` atomically (temporary file + rename), creating parent directories.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().expect("a file path");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// A wall-clock duration for humans: `12.3 s`.
pub fn fmt_duration(d: std::time::Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
