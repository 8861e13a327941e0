//! The guest kernel: a stock Debian `linux-image-*-amd64` package, fetched once and cached.
//!
//! The package is only downloaded (`apt-get download`), never installed: it is unpacked into the
//! cache with `dpkg-deb -x`, `depmod` writes the `modules.dep` the package does not ship, and the
//! ELF `vmlinux` is extracted from the XZ-compressed bzImage so that QEMU can boot it directly
//! through PVH instead of spending seconds decompressing it under TCG. Everything is keyed by the
//! kernel release (`uname -r`), so several kernels can share one cache.
//!
//! Which modules the guest loads is never a per-kernel list: [`Kernel::resolve_modules`] takes the
//! drivers the guest wants and walks `modules.dep` for their dependencies, skipping what this
//! kernel has built in (`modules.builtin`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::ValueEnum;

use crate::host::Apt;
use crate::util::{Context, Result, bail, output, run, write_atomic};

/// The kernels the guest can run. The rest of the harness only sees a [`Kernel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum KernelSeries {
    /// Debian bookworm's 6.1 (landlock ABI 2), from the host's own apt sources.
    #[value(name = "6.1")]
    V6_1,
    /// Debian trixie's 6.12 (landlock ABI 6), fetched through a private apt configuration for
    /// the trixie suite (the host's apt state is neither read nor changed).
    #[value(name = "6.12")]
    V6_12,
}

impl KernelSeries {
    pub const ALL: [KernelSeries; 2] = [KernelSeries::V6_1, KernelSeries::V6_12];

    /// The name on the command line (`6.1`, `6.12`).
    pub fn name(self) -> &'static str {
        match self {
            KernelSeries::V6_1 => "6.1",
            KernelSeries::V6_12 => "6.12",
        }
    }

    /// The exact package the harness was written and measured against.
    fn package(self) -> &'static str {
        match self {
            KernelSeries::V6_1 => "linux-image-6.1.0-56-amd64",
            KernelSeries::V6_12 => "linux-image-6.12.118+deb13-amd64",
        }
    }

    /// The metapackage whose dependency names the current package of the series, for when the
    /// archive no longer has the exact one.
    fn meta_package(self) -> &'static str {
        "linux-image-amd64"
    }

    /// The Debian suite to fetch from through a private apt configuration; `None`: the host's.
    fn private_suite(self) -> Option<&'static str> {
        match self {
            KernelSeries::V6_1 => None,
            KernelSeries::V6_12 => Some("trixie"),
        }
    }

    /// Does a package name belong to this series? Only the generic flavour does: the cloud
    /// kernel lacks pci-stub, e1000/e1000e and sound. Bookworm names its packages
    /// `linux-image-6.1.0-<abi>-amd64`, trixie `linux-image-6.12.<n>+deb13-amd64`.
    fn owns(self, package: &str) -> bool {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let rest = package.strip_prefix(match self {
            KernelSeries::V6_1 => "linux-image-6.1.0-",
            KernelSeries::V6_12 => "linux-image-6.12.",
        });
        let Some(n) = rest.and_then(|r| r.strip_suffix("-amd64")) else {
            return false;
        };
        match self {
            KernelSeries::V6_1 => digits(n),
            KernelSeries::V6_12 => match n.split_once("+deb") {
                Some((n, deb)) => digits(n) && digits(deb),
                None => digits(n),
            },
        }
    }
}

/// Where packages come from: the host's apt, or apt pointed at one suite.
trait Archive {
    /// `apt-get` or `apt-cache`, configured for this archive.
    fn command(&self, program: &str) -> Command;
    fn update(&mut self) -> Result<()>;
    fn updated(&self) -> bool;
}

impl Archive for Apt {
    fn command(&self, program: &str) -> Command {
        Command::new(program)
    }
    fn update(&mut self) -> Result<()> {
        Apt::update(self)
    }
    fn updated(&self) -> bool {
        Apt::updated(self)
    }
}

/// apt for one Debian suite of the host's mirror, with its own sources list, package lists and
/// caches under `<cache>/apt/<suite>/`: `-o Dir::Etc::sourcelist=… -o Dir::State::Lists=…`.
/// Packages are only downloaded, never installed.
#[derive(Debug)]
struct SuiteApt {
    dir: PathBuf,
    updated: bool,
}

impl SuiteApt {
    fn new(cache: &Path, suite: &str) -> Result<SuiteApt> {
        let dir = cache.join("apt").join(suite);
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(d))
                .with_context(|| format!("creating {}", dir.join(d).display()))?;
        }
        let (main, security) = crate::host::debian_mirrors();
        let key = "signed-by=/usr/share/keyrings/debian-archive-keyring.gpg";
        let list = format!(
            "# Written by cargo xtask: the guest kernel's suite, apart from the host's sources.\n\
             deb [{key}] {main} {suite} main\n\
             deb [{key}] {security} {suite}-security main\n"
        );
        write_atomic(&dir.join("sources.list"), list.as_bytes())?;
        Ok(SuiteApt {
            dir,
            updated: false,
        })
    }
}

impl Archive for SuiteApt {
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        cmd.arg("-o")
            .arg(format!("Dir::Etc::sourcelist={}", d("sources.list")))
            .args(["-o", "Dir::Etc::sourceparts=/dev/null"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", d("lists")))
            .arg("-o")
            .arg(format!("Dir::Cache={}", d("cache")))
            .args(["-o", "Acquire::Languages=none"]);
        cmd
    }
    fn update(&mut self) -> Result<()> {
        if !self.updated {
            eprintln!(
                "xtask: apt-get update (private lists in {})",
                self.dir.display()
            );
            run(self.command("apt-get").args(["update", "-q"]))
                .context("apt-get update for the guest kernel's suite (is debian-archive-keyring recent enough?)")?;
            self.updated = true;
        }
        Ok(())
    }
    fn updated(&self) -> bool {
        self.updated
    }
}

/// A kernel unpacked in the cache, ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the guest, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// `<cache>/kernels/<release>`: everything derived from this kernel, base initramfs included.
    pub dir: PathBuf,
    /// The unpacked package.
    pub root: PathBuf,
    /// What QEMU boots: the extracted ELF vmlinux, or the bzImage if it could not be extracted.
    pub image: PathBuf,
}

/// A loadable module, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Normalised name (`snd_hda_intel`).
    pub name: String,
    /// Path relative to the modules directory, as in `modules.dep`
    /// (`kernel/sound/pci/hda/snd-hda-intel.ko`, possibly `.ko.xz`).
    pub path: String,
}

impl Kernel {
    /// Returns the cached kernel of `series`, fetching and unpacking it first if needed.
    pub fn prepare(series: KernelSeries, cache: &Path, apt: &mut Apt) -> Result<Kernel> {
        let exact = series.package();
        if let Some(k) = Kernel::cached(cache, exact)? {
            return Ok(k);
        }
        let mut suite;
        let apt: &mut dyn Archive = match series.private_suite() {
            None => apt,
            Some(name) => {
                suite = SuiteApt::new(cache, name)?;
                // Lists kept from an earlier run may be stale; refreshing costs seconds.
                suite.update()?;
                &mut suite
            }
        };
        let deb = match fetch(cache, exact, apt) {
            Ok(deb) => deb,
            Err(e) => {
                eprintln!("xtask: {exact} is not available ({e}); asking for the current one");
                let current = current_package(series, apt)?;
                if let Some(k) = Kernel::cached(cache, &current)? {
                    return Ok(k);
                }
                fetch(cache, &current, apt)?
            }
        };
        Kernel::unpack(cache, &deb)
    }

    fn cached(cache: &Path, package: &str) -> Result<Option<Kernel>> {
        let release = release_of(package)?;
        let dir = cache.join("kernels").join(release);
        if !dir.join("complete").exists() {
            return Ok(None);
        }
        Kernel::at(dir).map(Some)
    }

    fn at(dir: PathBuf) -> Result<Kernel> {
        let release = dir
            .file_name()
            .expect("kernels/<release>")
            .to_string_lossy()
            .into_owned();
        let root = dir.join("root");
        let vmlinux = dir.join("vmlinux");
        let image = if vmlinux.exists() {
            vmlinux
        } else {
            root.join(format!("boot/vmlinuz-{release}"))
        };
        Ok(Kernel {
            release,
            dir,
            root,
            image,
        })
    }

    /// Unpacks a kernel package into `<cache>/kernels/<release>`, runs depmod and extracts the
    /// vmlinux. Works in a temporary directory renamed into place, so an interrupted run leaves
    /// nothing half-made behind.
    fn unpack(cache: &Path, deb: &Path) -> Result<Kernel> {
        let kernels = cache.join("kernels");
        let tmp = kernels.join(format!(".unpack-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let root = tmp.join("root");
        eprintln!("xtask: unpacking {}", deb.display());
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))
            .context("unpacking the kernel package")?;

        // Debian bookworm ships lib/modules; merged-usr packages (trixie) usr/lib/modules, and
        // `depmod -b` only looks in BASE/lib/modules.
        if !root.join("lib/modules").exists() && root.join("usr/lib/modules").exists() {
            std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
        }
        let release = only_entry(&root.join("lib/modules"))?;
        run(Command::new("depmod").arg("-b").arg(&root).arg(&release))
            .context("depmod on the unpacked kernel")?;

        let bzimage = root.join(format!("boot/vmlinuz-{release}"));
        match extract_vmlinux(&bzimage)? {
            Some(elf) => write_atomic(&tmp.join("vmlinux"), &elf)?,
            None => eprintln!(
                "xtask: no XZ payload in {}: booting the bzImage as is",
                bzimage.display()
            ),
        }
        fs::write(tmp.join("complete"), format!("{}\n", deb.display()))?;

        let dir = kernels.join(&release);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::rename(&tmp, &dir).with_context(|| format!("renaming into {}", dir.display()))?;
        eprintln!("xtask: kernel {release} ready in {}", dir.display());
        Kernel::at(dir)
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// The modules to load for `wanted` (module names, `-` or `_`), dependencies first, each once.
    /// A wanted module built into this kernel is skipped; one that is neither built in nor in
    /// `modules.dep` is an error.
    pub fn resolve_modules(&self, wanted: &[&str]) -> Result<Vec<Module>> {
        let dir = self.modules_dir();
        let dep = fs::read_to_string(dir.join("modules.dep"))
            .with_context(|| format!("reading {}/modules.dep", dir.display()))?;
        let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        resolve(&dep, &builtin, wanted)
    }
}

/// The release a Debian kernel package contains: `linux-image-6.1.0-56-amd64` → `6.1.0-56-amd64`.
fn release_of(package: &str) -> Result<&str> {
    match package.strip_prefix("linux-image-") {
        Some(r) if !r.is_empty() && !r.contains('/') => Ok(r),
        _ => bail!("{package:?} is not a linux-image-RELEASE package name"),
    }
}

/// `linux-image-6.1.0-56-amd64` → the `.deb` in `<cache>/debs`, downloading it if absent.
fn fetch(cache: &Path, package: &str, apt: &mut dyn Archive) -> Result<PathBuf> {
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    if let Some(deb) = find_deb(&debs, package)? {
        return Ok(deb);
    }
    eprintln!("xtask: apt-get download {package}");
    let download = |apt: &dyn Archive| {
        let st = apt
            .command("apt-get")
            .args(["download", "-q", package])
            .current_dir(&debs)
            .status();
        match st {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("apt-get download {package} failed ({s})")),
            Err(e) => Err(format!("cannot run apt-get: {e}")),
        }
    };
    if let Err(e) = download(apt) {
        if apt.updated() {
            bail!("{e}");
        }
        // An empty or stale package list is the usual reason on a fresh machine.
        apt.update()?;
        download(apt).map_err(crate::util::Error::msg)?;
    }
    match find_deb(&debs, package)? {
        Some(deb) => Ok(deb),
        None => bail!(
            "apt-get download {package} left no .deb in {}",
            debs.display()
        ),
    }
}

fn find_deb(debs: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    let mut found: Vec<PathBuf> = fs::read_dir(debs)
        .with_context(|| format!("listing {}", debs.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    Ok(found.pop())
}

/// The package the series' metapackage currently depends on.
fn current_package(series: KernelSeries, apt: &mut dyn Archive) -> Result<String> {
    let meta = series.meta_package();
    let ask = |apt: &dyn Archive| output(apt.command("apt-cache").args(["depends", meta]));
    let text = match ask(apt) {
        Ok(t) if t.contains("Depends:") => t,
        _ => {
            apt.update()?;
            ask(apt)?
        }
    };
    let pkg = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| series.owns(p));
    match pkg {
        Some(p) => Ok(p.to_string()),
        None => bail!("`apt-cache depends {meta}` names no {series:?} kernel package:\n{text}"),
    }
}

fn only_entry(dir: &Path) -> Result<String> {
    let entries: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match entries.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected exactly one kernel release in {}, found {entries:?}",
            dir.display()
        ),
    }
}

/// The ELF vmlinux inside an XZ-compressed bzImage (the method of the kernel's
/// `scripts/extract-vmlinux`: find the XZ magic, decompress from there, keep the result if it
/// is an ELF file). `None` if the image has no XZ payload.
pub fn extract_vmlinux(bzimage: &Path) -> Result<Option<Vec<u8>>> {
    const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
    let image = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    for start in image
        .windows(XZ_MAGIC.len())
        .enumerate()
        .filter(|(_, w)| *w == XZ_MAGIC)
        .map(|(i, _)| i)
    {
        let mut child = Command::new("xz")
            .args(["-d", "-c", "--single-stream"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("running xz")?;
        let mut stdin = child.stdin.take().expect("piped");
        let payload = image[start..].to_vec();
        let writer = std::thread::spawn(move || {
            // xz stops reading after the stream: a broken pipe here is expected.
            let _ = stdin.write_all(&payload);
        });
        let out = child.wait_with_output().context("running xz")?;
        let _ = writer.join();
        if out.stdout.starts_with(b"\x7fELF") {
            return Ok(Some(out.stdout));
        }
    }
    Ok(None)
}

fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/drivers/vfio/pci/vfio-pci.ko.xz` → `vfio_pci`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file
        .strip_suffix(".ko.xz")
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko.gz"))
        .or_else(|| file.strip_suffix(".ko"))
        .unwrap_or(file);
    normalise(stem)
}

/// The load order for `wanted` given the text of `modules.dep` and `modules.builtin`.
///
/// `modules.dep` lists, for each module, all its dependencies (transitively), nearest first, the
/// order in which `modprobe` removes them; loading them in reverse, then the module, is the order
/// `modprobe` inserts them.
fn resolve(dep: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<Module>> {
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let list = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(module_name(path), (path.to_string(), list));
    }
    let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();

    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for w in wanted {
        let name = normalise(w);
        if builtin.contains(&name) {
            continue;
        }
        let Some((path, list)) = deps.get(&name) else {
            bail!("module {w} is neither in modules.dep nor built in");
        };
        for d in list.iter().rev().chain(std::iter::once(path)) {
            let n = module_name(d);
            if seen.insert(n.clone()) {
                order.push(Module {
                    name: n,
                    path: d.clone(),
                });
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko kernel/drivers/vfio/vfio.ko kernel/virt/lib/irqbypass.ko
kernel/drivers/vfio/pci/vfio-pci-core.ko: kernel/drivers/vfio/vfio.ko kernel/virt/lib/irqbypass.ko
kernel/drivers/vfio/vfio.ko:
kernel/virt/lib/irqbypass.ko:
kernel/drivers/pci/pci-stub.ko.xz:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
";

    fn names(m: &[Module]) -> Vec<&str> {
        m.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let m = resolve(DEP, "", &["pci-stub", "vfio-pci", "vfio"]).unwrap();
        assert_eq!(
            names(&m),
            ["pci_stub", "irqbypass", "vfio", "vfio_pci_core", "vfio_pci"]
        );
        assert_eq!(m[0].path, "kernel/drivers/pci/pci-stub.ko.xz");
        let m = resolve(DEP, "", &["virtio_net"]).unwrap();
        assert_eq!(names(&m), ["failover", "net_failover", "virtio_net"]);
    }

    #[test]
    fn builtin_modules_are_skipped_and_unknown_ones_refused() {
        let builtin = "kernel/drivers/virtio/virtio_pci.ko\n";
        let m = resolve(DEP, builtin, &["virtio-pci", "vfio"]).unwrap();
        assert_eq!(names(&m), ["vfio"]);
        assert!(resolve(DEP, builtin, &["e1000e"]).is_err());
    }

    #[test]
    fn release_from_package_name() {
        assert_eq!(
            release_of("linux-image-6.1.0-56-amd64").unwrap(),
            "6.1.0-56-amd64"
        );
        assert!(release_of("linux-image-").is_err());
        assert!(release_of("linux-headers-6.1").is_err());
        assert!(KernelSeries::V6_1.owns("linux-image-6.1.0-57-amd64"));
        assert!(!KernelSeries::V6_1.owns("linux-image-6.12.57-amd64"));
        assert!(!KernelSeries::V6_1.owns("linux-image-6.1.0-57-cloud-amd64"));
        assert!(KernelSeries::V6_12.owns("linux-image-6.12.118+deb13-amd64"));
        assert!(KernelSeries::V6_12.owns("linux-image-6.12.57-amd64"));
        assert!(!KernelSeries::V6_12.owns("linux-image-6.12.118+deb13-cloud-amd64"));
        assert!(!KernelSeries::V6_12.owns("linux-image-6.1.0-57-amd64"));
        for k in KernelSeries::ALL {
            assert!(k.owns(k.package()), "{k:?}");
            assert_eq!(
                release_of(k.package())
                    .unwrap()
                    .split('.')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join("."),
                k.name()
            );
        }
    }
}
