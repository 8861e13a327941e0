//! The guest's initramfs: a cached base (busybox, kernel modules) plus a per-run overlay.
//!
//! The base depends only on the kernel and the host's busybox, so it is built once per kernel
//! release and kept in the cache beside the kernel. The overlay holds everything that changes
//! between runs: `/init`, users, the policy, the freshly built binaries and the script. It is a
//! second, uncompressed cpio archive appended to the base; building it takes milliseconds.
//!
//! Guest paths (see `docs/guest.md`):
//! - `/init` — `tests/vm/init.sh`, PID 1
//! - `/etc/passwd`, `/etc/group` — `tests/vm/etc/`
//! - `/etc/vfio-gate/policy.toml` — root:root 0644, `tests/vm/policy.toml` unless `--policy`
//! - `/etc/guest.conf` — what `/init` should do (run a script or give a shell)
//! - `/etc/modules.load` — the modules `/init` insmods, in order (resolved from `modules.dep`)
//! - `/usr/bin/vfio-gate`, `/usr/bin/vfio-gated` and the test tools (`runas`, `rawframe`, …)
//! - `/usr/share/misc/pci.ids` — device names for `vfio-gate list` (base archive)
//! - `/test/script.sh`, `/test/lib.sh` — the script to run and the assert library

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio::Meta;
use crate::image::GUEST_TARGET;
// Named here too for the modules that take them from the guest (systemd, main, test).
pub(crate) use crate::image::{DIR, EXEC, FILE, Mode, RunSpec, Tree};
use crate::kernel::Kernel;
use crate::util::{Context, Paths, Result, bail, display, output, read, run, write_atomic};

/// The drivers the guest loads; their dependencies come from the kernel's `modules.dep`.
/// vfio_iommu_type1 is no module's dependency (vfio requests it at run time), so it is named.
pub const GUEST_DRIVERS: &[&str] = &[
    "pci-stub",
    "vfio",
    "vfio_iommu_type1",
    "vfio-pci",
    "e1000e",
    "e1000",
    "virtio_pci",
    "virtio_net",
    "nvme",
    "snd-hda-intel",
    // The filesystem tests/vm/init.sh mounts on the NVMe disk (ext2, served by ext4), so that
    // the in-use guard has a mounted device to protect. ext4 asks the crypto API for crc32c at
    // every mount, metadata checksums or not: nothing depends on the module, so it is named.
    "ext4",
    "crc32c_generic",
];

/// The static busybox of Debian's busybox-static package.
pub(crate) const BUSYBOX: &str = "/bin/busybox";

/// The PCI ID database of Debian's pci.ids package, so that `vfio-gate list` shows names.
pub(crate) const PCI_IDS: &str = "/usr/share/misc/pci.ids";

/// Bump when the base archive's layout changes, so cached bases are rebuilt.
const BASE_FORMAT: u32 = 2;

/// The binaries installed in the guest's `/usr/bin`: the product, then the test tools.
pub const GUEST_BINARIES: &[&str] = &[
    "vfio-gate",
    "vfio-gated",
    "runas",
    "rawframe",
    "socket-activate",
    "activation-probe",
    "measure",
    "sandbox-probe",
    "vfio-probe",
    "vfio-viability",
    "vfio-load",
];

/// Builds the guest binaries statically, in release mode, into the normal target directory.
/// Returns the directory holding them.
pub fn build_binaries(paths: &Paths) -> Result<PathBuf> {
    // First, so that the release build below puts the release helper back in place.
    crate::extra::build_fault_helper(paths)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&paths.workspace)
        .args(["build", "--release", "--bins", "--target", GUEST_TARGET])
        .args([
            "-p",
            "vfio-gated",
            "-p",
            "vfio-gate",
            "-p",
            "vfio-gate-tests",
        ])
        .env("CARGO_TARGET_DIR", &paths.target)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    eprintln!("xtask: building the guest binaries (static, release)");
    run(&mut cmd).context("building the guest binaries")?;
    let dir = paths.target.join(GUEST_TARGET).join("release");
    for name in GUEST_BINARIES {
        let path = dir.join(name);
        let bytes = read(&path)?;
        if !is_static_elf(&bytes) {
            bail!(
                "{} is not a static executable; it would not run in the guest (command: {})",
                path.display(),
                display(&cmd)
            );
        }
    }
    crate::extra::check_helpers(&dir)?;
    Ok(dir)
}

/// An ELF file without a `PT_INTERP` program header needs no dynamic loader.
pub(crate) fn is_static_elf(b: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    };
    // 64-bit little-endian ELF only: the guest is x86_64.
    if !b.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let at = phoff as usize + i * usize::from(phentsize);
        u32_at(at).is_some_and(|t| t != PT_INTERP)
    })
}

/// The base archive for `kernel`: busybox with a link per applet, the modules and their load
/// order. Cached in the kernel's directory, keyed by everything it is made of.
pub fn base_initramfs(kernel: &Kernel) -> Result<PathBuf> {
    let modules = kernel.resolve_modules(GUEST_DRIVERS)?;
    let bb =
        fs::metadata(BUSYBOX).with_context(|| format!("{BUSYBOX} (package busybox-static)"))?;
    let ids = fs::metadata(PCI_IDS).ok();
    let mut h = DefaultHasher::new();
    (BASE_FORMAT, &kernel.release, bb.len(), bb.mtime()).hash(&mut h);
    ids.as_ref().map(|m| (m.len(), m.mtime())).hash(&mut h);
    for m in &modules {
        m.path.hash(&mut h);
    }
    let path = kernel.dir.join(format!("base-{:016x}.cpio", h.finish()));
    if path.exists() {
        return Ok(path);
    }

    eprintln!(
        "xtask: building the base initramfs for {} ({} modules)",
        kernel.release,
        modules.len()
    );
    let mut a = Tree::new();
    for d in ["proc", "sys", "dev", "run", "etc", "root", "home", "test"] {
        a.dir(d, DIR);
    }
    a.dir("tmp", Meta::root(0o1777));
    // The kernel opens /dev/console for PID 1 before /init can mount devtmpfs.
    a.archive
        .char_device("dev/console", Meta::root(0o600), 5, 1);

    let busybox = read(Path::new(BUSYBOX))?;
    if !is_static_elf(&busybox) {
        bail!("{BUSYBOX} is not statically linked: install busybox-static");
    }
    a.file("bin/busybox", EXEC, &busybox);
    let applets = output(Command::new(BUSYBOX).arg("--list-full"))?;
    for applet in applets.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // Linking the applet named `busybox` over the binary itself makes the kernel fail to
        // run /init (error -40, too many symbolic links).
        if applet.rsplit('/').next() == Some("busybox") {
            continue;
        }
        a.symlink(applet, "/bin/busybox");
    }

    if ids.is_some() {
        a.file(PCI_IDS, FILE, &read(Path::new(PCI_IDS))?);
    }

    let kdir = kernel.modules_dir();
    let mut order = String::new();
    for m in &modules {
        let src = kdir.join(&m.path);
        let mut data = read(&src)?;
        let mut rel = m.path.clone();
        // Decompressing on the host saves the guest ≈ 0.5 s (6.12 ships .ko.xz).
        if let Some(stem) = m.path.strip_suffix(".xz") {
            data = output_bytes(Command::new("xz").arg("-dc").arg(&src))?;
            rel = stem.to_string();
        }
        let guest = format!("lib/modules/{}/{rel}", kernel.release);
        a.file(&guest, FILE, &data);
        order.push_str(&format!("/{guest}\n"));
    }
    a.file("etc/modules.load", FILE, order.as_bytes());

    // Old bases of this kernel are dead weight once a new one exists.
    if let Ok(entries) = fs::read_dir(&kernel.dir) {
        for e in entries.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with("base-") && n.ends_with(".cpio") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    write_atomic(&path, &a.finish())?;
    Ok(path)
}

pub(crate) fn output_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .with_context(|| format!("running `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", display(cmd), out.status);
    }
    Ok(out.stdout)
}

/// The per-run overlay archive (uncompressed, a multiple of 4 bytes long).
pub fn overlay(paths: &Paths, bins: &Path, spec: &RunSpec) -> Result<Vec<u8>> {
    let vm = paths.vm_sources();
    let mut a = Tree::new();
    a.file("init", EXEC, &read(&vm.join("init.sh"))?);
    a.file("etc/passwd", FILE, &read(&vm.join("etc/passwd"))?);
    a.file("etc/group", FILE, &read(&vm.join("etc/group"))?);
    a.file(
        "etc/vfio-gate/policy.toml",
        FILE,
        &read(&spec.policy).context("reading the guest policy")?,
    );
    for name in GUEST_BINARIES {
        a.file(&format!("usr/bin/{name}"), EXEC, &read(&bins.join(name))?);
    }
    crate::extra::overlay(&mut a, bins)?;
    a.file("test/lib.sh", FILE, &read(&vm.join("lib.sh"))?);
    let conf = match &spec.mode {
        Mode::Script(script) => {
            a.file("test/script.sh", FILE, &read(script)?);
            let name = script.file_name().unwrap_or_default().to_string_lossy();
            format!(
                "GUEST_MODE=run\nGUEST_SCRIPT_NAME='{}'\n",
                name.replace('\'', "")
            )
        }
        Mode::Shell => "GUEST_MODE=shell\n".to_string(),
    };
    a.file("etc/guest.conf", FILE, conf.as_bytes());
    Ok(a.finish())
}

/// Writes base + overlay as the initramfs QEMU loads.
pub fn write_initramfs(base: &Path, overlay: &[u8], out: &Path) -> Result<()> {
    let mut bytes = read(base)?;
    if bytes.len() % 4 != 0 {
        bail!("{} is not padded to 4 bytes", base.display());
    }
    bytes.extend_from_slice(overlay);
    write_atomic(out, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_elf_detection() {
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        // The test binary is dynamically linked (no +crt-static in `cargo test`).
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        assert!(!is_static_elf(b"\x7fELF\x02\x01"));
        if package_is_static_busybox() {
            assert!(is_static_elf(&fs::read(BUSYBOX).unwrap()));
        }
    }

    fn package_is_static_busybox() -> bool {
        crate::host::package_installed("busybox-static")
    }
}
