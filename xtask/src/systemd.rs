//! The systemd flavour of the test guest (`--init systemd`): a Debian root filesystem with
//! systemd as PID 1 and udev, running the shipped `dist/` units for real.
//!
//! Three artefacts, the first two cached (`docs/guest.md`, "The systemd flavour"):
//! - **the root filesystem**: `debootstrap --variant=minbase --include=systemd,systemd-sysv,udev,kmod
//!   bookworm` from the host's Debian mirror, stripped of apt lists, docs and locales, kept as a
//!   tarball in `<cache>/rootfs/` (built once per machine, ≈ 30 s);
//! - **the root disk** of a kernel: that tree plus the guest's modules (resolved from the kernel's
//!   `modules.dep`, decompressed, `depmod`), as an ext4 image made with `mkfs.ext4 -d` in
//!   `<cache>/kernels/<release>/`. QEMU opens it with `snapshot=on` on q35's built-in AHCI
//!   (00:1f.2), so the IOMMU-group layout stays the busybox guest's and the cached image is never
//!   written;
//! - **the initramfs**: a cached busybox base that loads the AHCI/SCSI-disk/ext4/overlay modules,
//!   plus a per-run overlay — `/init` (`tests/vm/systemd/init.sh`), and under `/root-overlay`
//!   this run's files. `/init` mounts the disk read-only under a tmpfs (overlayfs: QEMU's AHCI
//!   under TCG now and then loses a write, so the disk is only ever read), copies those files into
//!   the root and `switch_root`s to systemd: the binaries, `dist/` installed as a package installs
//!   it, the policy, the test runner unit and the masks of `tests/vm/systemd/masked`.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::ValueEnum;

use crate::cpio::Meta;
use crate::guest::{
    BUSYBOX, DIR, EXEC, FILE, GUEST_BINARIES, GUEST_DRIVERS, Mode, PCI_IDS, RunSpec, Tree,
    is_static_elf, output_bytes,
};
use crate::kernel::Kernel;
use crate::util::{Context, Paths, Result, bail, output, read, run, write_atomic};

/// What runs as PID 1 in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Init {
    /// busybox and `tests/vm/init.sh`, with `socket-activate` standing in for systemd.
    Busybox,
    /// A Debian bookworm root filesystem with systemd as PID 1 running the shipped units.
    Systemd,
}

/// The suite and packages of the root filesystem.
const SUITE: &str = "bookworm";
const INCLUDE: &str = "systemd,systemd-sysv,udev,kmod";

/// Bump when the tarball's content changes (stripping), so cached ones are rebuilt.
const ROOTFS_FORMAT: u32 = 1;
/// Bump when the disk image's layout changes.
const DISK_FORMAT: u32 = 1;
/// Bump when the first stage's base archive changes.
const SHIM_FORMAT: u32 = 1;

/// What the first stage loads to mount the root: AHCI, SCSI disks, ext4 (with the crc32c it asks
/// the crypto API for at mount time: no modules.dep entry names it), and overlayfs (the disk is
/// mounted read-only under a tmpfs).
pub const ROOT_DRIVERS: &[&str] = &["ahci", "sd_mod", "crc32c_generic", "ext4", "overlay"];

/// Directories of the debootstrap tree emptied before caching: nothing a test guest reads.
const STRIP: &[&str] = &[
    "var/cache/apt",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "run",
    "tmp",
];

/// The cached root filesystem tarball, built with debootstrap if absent.
pub fn rootfs(cache: &Path) -> Result<PathBuf> {
    let mut h = DefaultHasher::new();
    (ROOTFS_FORMAT, SUITE, INCLUDE).hash(&mut h);
    let dir = cache.join("rootfs");
    let tarball = dir.join(format!("{SUITE}-minbase-{:016x}.tar", h.finish()));
    if tarball.exists() {
        return Ok(tarball);
    }
    let (mirror, _) = crate::host::debian_mirrors();
    let tmp = dir.join(format!(".build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let root = tmp.join("root");
    eprintln!(
        "xtask: debootstrap --variant=minbase --include={INCLUDE} {SUITE} ({mirror}), once per machine"
    );
    let start = std::time::Instant::now();
    // Its progress goes to stderr: stdout is the guest script's output.
    run(Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
        .arg(&root)
        .arg(&mirror)
        .stdout(std::io::stderr()))
    .context("building the systemd guest's root filesystem")?;
    for rel in STRIP {
        empty_dir(&root.join(rel))?;
    }
    let part = tmp.join("rootfs.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-C"])
        .arg(&root)
        .args(["-cf"])
        .arg(&part)
        .arg("."))
    .context("archiving the root filesystem")?;
    fs::rename(&part, &tarball).with_context(|| format!("renaming to {}", tarball.display()))?;
    fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    remove_others(&dir, &format!("{SUITE}-minbase-"), ".tar", &tarball);
    eprintln!(
        "xtask: root filesystem {} ready in {:.0} s",
        tarball.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(tarball)
}

/// Removes everything inside `dir` (never following symlinks), keeping `dir` itself.
fn empty_dir(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        let r = if e.file_type()?.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

/// Deletes the files in `dir` named `PREFIX…SUFFIX` other than `keep`: superseded cache entries.
fn remove_others(dir: &Path, prefix: &str, suffix: &str, keep: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with(prefix) && n.ends_with(suffix) && e.path() != keep {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The modules of the systemd guest's root: the busybox guest's drivers plus the root disk's,
/// so that udev and systemd-modules-load find what the busybox guest loads by hand.
fn root_modules(kernel: &Kernel) -> Result<Vec<crate::kernel::Module>> {
    let wanted: Vec<&str> = GUEST_DRIVERS.iter().chain(ROOT_DRIVERS).copied().collect();
    kernel.resolve_modules(&wanted)
}

/// The cached ext4 root disk of `kernel`: the root filesystem plus the kernel's modules.
pub fn root_disk(kernel: &Kernel, tarball: &Path) -> Result<PathBuf> {
    let modules = root_modules(kernel)?;
    let mut h = DefaultHasher::new();
    (DISK_FORMAT, tarball.file_name(), &kernel.release).hash(&mut h);
    let tar_meta = fs::metadata(tarball)?;
    (tar_meta.len(), tar_meta.mtime()).hash(&mut h);
    for m in &modules {
        m.path.hash(&mut h);
    }
    let image = kernel
        .dir
        .join(format!("systemd-root-{:016x}.ext4", h.finish()));
    if image.exists() {
        return Ok(image);
    }
    let start = std::time::Instant::now();
    eprintln!(
        "xtask: building the systemd guest's root disk for {} ({} modules)",
        kernel.release,
        modules.len()
    );
    let stage = kernel.dir.join(format!(".stage-{}", std::process::id()));
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage)?;
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-C"])
        .arg(&stage)
        .arg("-xf")
        .arg(tarball))
    .context("unpacking the root filesystem")?;

    // Modules under usr/lib (lib is the merged-usr symlink), decompressed: a guest without
    // them cannot autoload or modprobe anything.
    let kdir = kernel.modules_dir();
    let mdir = stage.join("usr/lib/modules").join(&kernel.release);
    for m in &modules {
        let src = kdir.join(&m.path);
        let (rel, data) = match m.path.strip_suffix(".xz") {
            Some(stem) => (stem, output_bytes(Command::new("xz").arg("-dc").arg(&src))?),
            None => (m.path.as_str(), read(&src)?),
        };
        let dst = mdir.join(rel);
        fs::create_dir_all(dst.parent().expect("a module path"))?;
        fs::write(&dst, data).with_context(|| format!("writing {}", dst.display()))?;
    }
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        if kdir.join(f).exists() {
            fs::copy(kdir.join(f), mdir.join(f))?;
        }
    }
    run(Command::new("depmod")
        .arg("-b")
        .arg(&stage)
        .arg(&kernel.release))
    .context("depmod on the root disk's modules")?;

    let used = output(Command::new("du").args(["-s", "-B1"]).arg(&stage))?;
    let used: u64 = used
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(512 << 20);
    // Room for the run's files (≈ 20 MB), the journal and whatever the tests write.
    let size = (used + used / 4 + (128 << 20)).div_ceil(1 << 20) << 20;
    let part = kernel
        .dir
        .join(format!(".systemd-root-{}.ext4", std::process::id()));
    let f = fs::File::create(&part)?;
    f.set_len(size)?;
    drop(f);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "vfio-gate-root", "-d"])
        .arg(&stage)
        .arg(&part))
    .context("making the root disk image")?;
    fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    fs::rename(&part, &image)?;
    remove_others(&kernel.dir, "systemd-root-", ".ext4", &image);
    eprintln!(
        "xtask: root disk {} ({} MiB) ready in {:.1} s",
        image.display(),
        size >> 20,
        start.elapsed().as_secs_f64()
    );
    Ok(image)
}

/// The cached first-stage base archive of `kernel`: busybox and the root disk's modules.
pub fn shim_initramfs(kernel: &Kernel) -> Result<PathBuf> {
    let modules = kernel.resolve_modules(ROOT_DRIVERS)?;
    let bb =
        fs::metadata(BUSYBOX).with_context(|| format!("{BUSYBOX} (package busybox-static)"))?;
    let mut h = DefaultHasher::new();
    (SHIM_FORMAT, &kernel.release, bb.len(), bb.mtime()).hash(&mut h);
    for m in &modules {
        m.path.hash(&mut h);
    }
    let path = kernel
        .dir
        .join(format!("systemd-shim-{:016x}.cpio", h.finish()));
    if path.exists() {
        return Ok(path);
    }
    let mut a = Tree::new();
    for d in ["proc", "sys", "dev", "etc", "newroot"] {
        a.dir(d, DIR);
    }
    a.archive
        .char_device("dev/console", Meta::root(0o600), 5, 1);
    let busybox = read(Path::new(BUSYBOX))?;
    if !is_static_elf(&busybox) {
        bail!("{BUSYBOX} is not statically linked: install busybox-static");
    }
    a.file("bin/busybox", EXEC, &busybox);
    let applets = output(Command::new(BUSYBOX).arg("--list"))?;
    for applet in applets.lines().map(str::trim) {
        // A link named busybox over the binary makes the kernel fail to run /init (-40).
        if !applet.is_empty() && applet != "busybox" {
            a.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    let kdir = kernel.modules_dir();
    let mut order = String::new();
    for m in &modules {
        let src = kdir.join(&m.path);
        let (rel, data) = match m.path.strip_suffix(".xz") {
            Some(stem) => (stem, output_bytes(Command::new("xz").arg("-dc").arg(&src))?),
            None => (m.path.as_str(), read(&src)?),
        };
        let guest = format!("lib/modules/{}/{rel}", kernel.release);
        a.file(&guest, FILE, &data);
        order.push_str(&format!("/{guest}\n"));
    }
    a.file("etc/modules.load", FILE, order.as_bytes());
    remove_others(&kernel.dir, "systemd-shim-", ".cpio", &path);
    write_atomic(&path, &a.finish())?;
    Ok(path)
}

/// The names of `tests/vm/systemd/masked`.
fn masked(paths: &Paths) -> Result<Vec<String>> {
    let text = read(&systemd_sources(paths).join("masked"))?;
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

pub fn systemd_sources(paths: &Paths) -> PathBuf {
    paths.vm_sources().join("systemd")
}

/// The per-run overlay of the systemd guest (uncompressed cpio, a multiple of 4 bytes long).
pub fn overlay(paths: &Paths, bins: &Path, spec: &RunSpec) -> Result<Vec<u8>> {
    let vm = paths.vm_sources();
    let sd = systemd_sources(paths);
    let dist = paths.workspace.join("dist");
    let mut a = Tree::new();
    a.file("init", EXEC, &read(&sd.join("init.sh"))?);
    a.file("users/passwd", FILE, &read(&vm.join("etc/passwd"))?);
    a.file("users/group", FILE, &read(&vm.join("etc/group"))?);

    // Everything below is copied into the root filesystem by /init.
    let r = |p: &str| format!("root-overlay/{p}");
    a.dir("root-overlay", DIR);

    // The product, as its package installs it: binaries in /usr/bin, units in /lib/systemd/system
    // (/usr/lib on merged-usr), modules-load.d, the policy as /etc/vfio-gate/policy.toml (here the
    // test's own, as an admin would have edited it). /init then runs
    // `systemctl enable vfio-gate.socket`, as the package's postinst does.
    for name in GUEST_BINARIES {
        a.file(
            &r(&format!("usr/bin/{name}")),
            EXEC,
            &read(&bins.join(name))?,
        );
    }
    for unit in [
        "vfio-gate.socket",
        "vfio-gated.service",
        "vfio-gate-reserve.service",
        "vfio-gate-reserve@.service",
    ] {
        a.file(
            &r(&format!("usr/lib/systemd/system/{unit}")),
            FILE,
            &read(&dist.join(unit))?,
        );
    }
    a.file(
        &r("usr/lib/udev/rules.d/70-vfio-gate.rules"),
        FILE,
        &read(&dist.join("udev/70-vfio-gate.rules"))?,
    );
    a.file(
        &r("usr/lib/modules-load.d/vfio-gate.conf"),
        FILE,
        &read(&dist.join("modules-load.d/vfio-gate.conf"))?,
    );
    let tmpfiles = dist.join("tmpfiles.d/vfio-gate.conf");
    if tmpfiles.exists() {
        a.file(
            &r("usr/lib/tmpfiles.d/vfio-gate.conf"),
            FILE,
            &read(&tmpfiles)?,
        );
    }
    a.dir(&r("etc/vfio-gate"), DIR);
    a.file(
        &r("etc/vfio-gate/policy.toml"),
        FILE,
        &read(&spec.policy).context("reading the guest policy")?,
    );
    if Path::new(PCI_IDS).exists() {
        a.file(
            &r(PCI_IDS.trim_start_matches('/')),
            FILE,
            &read(Path::new(PCI_IDS))?,
        );
    }
    // lib.sh's wait_for sleeps with busybox's usleep, which Debian lacks.
    a.file(
        &r("usr/local/lib/vfio-gate-test/busybox"),
        EXEC,
        &read(Path::new(BUSYBOX))?,
    );
    a.symlink(
        &r("usr/local/bin/usleep"),
        "/usr/local/lib/vfio-gate-test/busybox",
    );

    // The test harness: runner, scripts, masks.
    a.file(&r("test/lib.sh"), FILE, &read(&vm.join("lib.sh"))?);
    a.file(&r("test/systemd-lib.sh"), FILE, &read(&sd.join("lib.sh"))?);
    a.file(&r("test/run.sh"), EXEC, &read(&sd.join("run.sh"))?);
    let (unit, conf) = match &spec.mode {
        Mode::Script(script) => {
            a.file(&r("test/script.sh"), FILE, &read(script)?);
            let name = script.file_name().unwrap_or_default().to_string_lossy();
            (
                "vfio-gate-test.service",
                format!(
                    "GUEST_MODE=run\nGUEST_SCRIPT_NAME='{}'\n",
                    name.replace('\'', "")
                ),
            )
        }
        Mode::Shell => ("vfio-gate-shell.service", "GUEST_MODE=shell\n".to_string()),
    };
    a.file(&r("etc/vfio-gate-guest.conf"), FILE, conf.as_bytes());
    let etc = "etc/systemd/system";
    a.file(&r(&format!("{etc}/{unit}")), FILE, &read(&sd.join(unit))?);
    a.symlink(
        &r(&format!("{etc}/multi-user.target.wants/{unit}")),
        &format!("/{etc}/{unit}"),
    );
    a.symlink(
        &r(&format!("{etc}/default.target")),
        "/lib/systemd/system/multi-user.target",
    );
    for name in masked(paths)? {
        let at = if name.ends_with("-generator") {
            format!("etc/systemd/system-generators/{name}")
        } else {
            format!("{etc}/{name}")
        };
        a.symlink(&r(&at), "/dev/null");
    }
    Ok(a.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_list_parses() {
        let paths = Paths::discover().unwrap();
        let m = masked(&paths).unwrap();
        assert!(m.iter().any(|n| n == "getty.target"));
        assert!(m.iter().all(|n| !n.contains('/') && !n.contains(' ')));
        // Never mask what the product or the runner needs.
        for keep in [
            "systemd-modules-load.service",
            "systemd-udevd.service",
            "systemd-journald.service",
            "sockets.target",
        ] {
            assert!(!m.iter().any(|n| n == keep), "{keep} is masked");
        }
    }
}
