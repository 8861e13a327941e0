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
