//! The host tools the test guest needs, installed with apt when missing.
//!
//! A fresh CI machine has none of them. Each tool is checked the cheap way first (`command -v`,
//! or dpkg's status for packages whose presence is not a command); whatever is missing is
//! installed in one `apt-get install`, after one `apt-get update` per xtask run. Installing needs
//! root (CI runs as root); otherwise the error says which command to run.

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use crate::util::{Context, Result, bail, have_command, output, run};

/// One thing the host must have, and the Debian package that provides it.
#[derive(Debug)]
struct Need {
    what: &'static str,
    package: &'static str,
    check: Check,
}

#[derive(Debug)]
enum Check {
    Command(&'static str),
    /// A package whose files matter, not a command (the static busybox is the guest's userland;
    /// the `busybox` package also provides a `busybox` command, a dynamically linked one).
    Package,
}

const NEEDS: &[Need] = &[
    Need {
        what: "QEMU",
        package: "qemu-system-x86",
        check: Check::Command("qemu-system-x86_64"),
    },
    Need {
        what: "a static busybox for the guest userland",
        package: "busybox-static",
        check: Check::Package,
    },
    Need {
        what: "depmod, for the kernel's modules.dep",
        package: "kmod",
        check: Check::Command("depmod"),
    },
    Need {
        what: "xz, to extract the kernel's vmlinux",
        package: "xz-utils",
        check: Check::Command("xz"),
    },
    Need {
        what: "the PCI ID database, for device names in the guest",
        package: "pci.ids",
        check: Check::Package,
    },
    Need {
        what: "glibc's static libraries, for the guest binaries",
        package: "libc6-dev",
        check: Check::Package,
    },
    Need {
        what: "debootstrap, for the systemd guest's Debian root filesystem",
        package: "debootstrap",
        check: Check::Command("debootstrap"),
    },
    Need {
        what: "mkfs.ext4, for the systemd guest's root disk image",
        package: "e2fsprogs",
        check: Check::Command("mkfs.ext4"),
    },
    Need {
        what: "systemd-analyze, for the exposure score of dist/vfio-gated.service",
        package: "systemd",
        check: Check::Command("systemd-analyze"),
    },
];

/// apt, run at most one `apt-get update` per process.
#[derive(Debug, Default)]
pub struct Apt {
    updated: bool,
}

impl Apt {
    pub fn update(&mut self) -> Result<()> {
        if !self.updated {
            require_root("apt-get update")?;
            eprintln!("xtask: apt-get update");
            run(Command::new("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
        Ok(())
    }

    pub fn updated(&self) -> bool {
        self.updated
    }

    /// Installs the host tools the guest needs, if any is missing.
    pub fn ensure_host_tools(&mut self) -> Result<()> {
        let missing: Vec<&Need> = NEEDS.iter().filter(|n| !present(n)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
        for n in &missing {
            eprintln!("xtask: missing {} (package {})", n.what, n.package);
        }
        let cmd = format!(
            "apt-get install -y --no-install-recommends {}",
            packages.join(" ")
        );
        require_root(&cmd)?;
        self.update()?;
        eprintln!("xtask: {cmd}");
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&packages))
        .context("installing the guest's host tools")?;
        if let Some(n) = NEEDS.iter().find(|n| !present(n)) {
            bail!("{} is still missing after installing {}", n.what, n.package);
        }
        Ok(())
    }
}

fn present(n: &Need) -> bool {
    match n.check {
        Check::Command(c) => have_command(c),
        Check::Package => package_installed(n.package),
    }
}

/// Is a Debian package installed (dpkg status "install ok installed")?
pub fn package_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|s| s.trim() == "install ok installed")
}

fn require_root(what: &str) -> Result<()> {
    let uid = std::fs::metadata("/proc/self")
        .context("reading /proc/self")?
        .uid();
    if uid != 0 {
        bail!("this needs root: run `sudo {what}` (or run the xtask as root, as CI does)");
    }
    Ok(())
}

/// The Debian archive this host's apt uses: (main archive, security archive), read from
/// `/etc/apt/sources.list` and `/etc/apt/sources.list.d/*.{list,sources}`, falling back to
/// deb.debian.org. The guest's other suites (trixie's kernel, the bookworm root filesystem) are
/// fetched from the same place.
pub fn debian_mirrors() -> (String, String) {
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let name = f.to_string_lossy();
            if name.ends_with(".list") || name.ends_with(".sources") {
                if let Ok(t) = std::fs::read_to_string(&f) {
                    texts.push(t);
                }
            }
        }
    }
    let uris = texts
        .iter()
        .flat_map(|t| source_uris(t))
        .collect::<Vec<_>>();
    pick_mirrors(&uris)
}

/// The archive URIs of a one-line-style or deb822 sources file.
fn source_uris(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("URIs:") {
            out.extend(rest.split_whitespace().map(str::to_string));
        } else if let Some(rest) = line.strip_prefix("deb ") {
            // `deb [options] URI suite components…`
            let rest = match rest.trim_start().strip_prefix('[') {
                Some(r) => r.split_once(']').map_or("", |(_, r)| r),
                None => rest,
            };
            out.extend(rest.split_whitespace().next().map(str::to_string));
        }
    }
    out
}

fn pick_mirrors(uris: &[String]) -> (String, String) {
    let clean = |u: &String| u.trim_end_matches('/').to_string();
    let main = uris
        .iter()
        .find(|u| u.starts_with("http") && u.trim_end_matches('/').ends_with("/debian"))
        .map(clean)
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_string());
    let security = uris
        .iter()
        .find(|u| u.starts_with("http") && u.trim_end_matches('/').ends_with("/debian-security"))
        .map(clean)
        .unwrap_or_else(|| "http://deb.debian.org/debian-security".to_string());
    (main, security)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_from_both_source_formats() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\n";
        let uris = source_uris(deb822);
        assert_eq!(
            pick_mirrors(&uris),
            (
                "http://mirror.example/debian".to_string(),
                "http://mirror.example/debian-security".to_string()
            )
        );
        let list =
            "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n";
        assert_eq!(source_uris(list), ["http://m.example/debian"]);
        assert_eq!(pick_mirrors(&[]).0, "http://deb.debian.org/debian");
    }
}
