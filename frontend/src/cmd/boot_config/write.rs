//! The one file the CLI writes: `boot-config --write`'s `vfio-gate.conf` in `/etc/modprobe.d`
//! (or `--modprobe-d DIR`), and only when run as root — by an admin, who could write it by hand
//! anyway. Atomically: a temporary file beside it, mode 0644, synced, then renamed over it, so a
//! reader (modprobe, an initramfs build) sees the old file or the new one, never half of one.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::geteuid;

use crate::error::Error;

/// The file's name in the modprobe.d directory.
pub const FILE_NAME: &str = "vfio-gate.conf";

/// Refuses unless the effective uid is root. `rerun` is the command that would do it, for the
/// next step.
pub fn check_root(rerun: &str) -> Result<(), Error> {
    if geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot {
            rerun: format!("sudo {rerun}"),
        })
    }
}

/// Writes `content` to `DIR/vfio-gate.conf`, mode 0644, replacing it atomically; returns the
/// path. On failure the old file, if any, is left as it was and the temporary file is removed.
pub fn write_conf(dir: &Path, content: &str) -> Result<PathBuf, Error> {
    check_root("vfio-gate boot-config --write")?;
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    let result = replace(&tmp, &path, content);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|source| Error::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn replace(tmp: &Path, path: &Path, content: &str) -> io::Result<()> {
    // A leftover of a run that died with this pid would make create_new fail.
    match fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(tmp)?;
    // The umask may have taken bits off: modprobe.d files are world-readable.
    f.set_permissions(Permissions::from_mode(0o644))?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    drop(f);
    fs::rename(tmp, path)?;
    // The rename itself, on disk.
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}
