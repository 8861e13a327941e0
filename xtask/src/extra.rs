//! Test-only additions to the guest: the fault-injection build of the helper, and an opt-in set
//! of extra emulated devices.
//!
//! **The fault-injection helper.** `vfio-gated` built with its `fault-injection` feature stops
//! dead (SIGKILL) at a named step of a bind or a release when `/run/vfio-gate/fault-injection`
//! names that step (`helper/src/fault.rs`). It is built next to the release helper, copied to
//! `<target>/x86_64-unknown-linux-gnu/release/vfio-gated-faults` and installed in the busybox
//! guest as `/usr/lib/vfio-gate/vfio-gated-faults`, never on `PATH`; a test that wants it copies
//! it over `/usr/bin/vfio-gated` (`tests/vm/leases.test.sh`). It is built *before* the release
//! binaries, in the same target directory (so the dependencies are shared), because both builds
//! leave their binary at the same path; the release build that follows puts the release helper
//! back there. Both are then checked by content: the release helper must not contain the
//! fault-injection start line (`TEST-BUILD`), the fault build must.
//!
//! **Extra devices.** A test script with a line `# vm: extra-devices=N` (N from 1 to
//! [`MAX_EXTRA_DEVICES`]) boots with N more `edu` devices (1234:11e8), each alone below its own
//! PCIe root port (root ports have ACS: each port and each edu is an IOMMU group of its own). The
//! ports are the functions of slots 00:07 onwards (eight per slot), so the documented devices keep
//! their addresses and the edus appear at `06:00.0`, `07:00.0`, … (bus 6 + i). The new root ports
//! sit on bus 0 before 00:1b.0, so the IOMMU group *numbers* of the documented layout change in
//! such a guest: tests using the marker must name devices by address. Every other test boots the
//! documented layout.
//!
//! **Extra kernel parameters.** A line `# vm: kernel-args=ARGS` boots the guest with ARGS added
//! to the kernel command line (after any in `VFIO_GATE_KERNEL_ARGS`), for tests of what a host
//! set up at boot looks like (`vfio-pci.ids=1234:11e8`). Only `[A-Za-z0-9_.,:=-]` and spaces.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::image::{EXEC, GUEST_TARGET, Mode, RunSpec, Tree};
use crate::util::{Context, Paths, Result, bail, display, read, run};

/// The fault-injection helper's file name next to the release binaries.
pub const FAULT_HELPER: &str = "vfio-gated-faults";

/// Where the guest gets the fault-injection helper (not on `PATH`).
pub const FAULT_HELPER_GUEST: &str = "usr/lib/vfio-gate/vfio-gated-faults";

/// What only a fault-injection build prints at start (`event=TEST-BUILD`).
const TEST_BUILD_MARKER: &[u8] = b"TEST-BUILD";

/// The most extra devices a test may ask for (eight root ports per slot, slots 00:07–00:0a).
pub const MAX_EXTRA_DEVICES: u32 = 32;

/// The first bus-0 slot of the extra root ports.
const FIRST_SLOT: u32 = 7;

/// The marker line a test script carries to get extra devices.
const EXTRA_MARKER: &str = "# vm: extra-devices=";

/// The marker line a test script carries to get extra kernel parameters.
const ARGS_MARKER: &str = "# vm: kernel-args=";

/// The kernel parameters the run's script asks for with `# vm: kernel-args=ARGS`.
pub fn kernel_args(spec: &RunSpec) -> Result<Vec<String>> {
    let Mode::Script(script) = &spec.mode else {
        return Ok(Vec::new());
    };
    let text =
        fs::read_to_string(script).with_context(|| format!("reading {}", script.display()))?;
    args_of(&text).with_context(|| script.display().to_string())
}

fn args_of(script: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for line in script.lines() {
        let Some(value) = line.trim_end().strip_prefix(ARGS_MARKER) else {
            continue;
        };
        let ok = |c: char| c.is_ascii_alphanumeric() || "_.,:=- ".contains(c);
        if value.trim().is_empty() || !value.chars().all(ok) {
            bail!(
                "bad marker line {line:?}: want {ARGS_MARKER}ARGS from [A-Za-z0-9_.,:=-] and spaces"
            );
        }
        out.extend(value.split_whitespace().map(str::to_owned));
    }
    Ok(out)
}

/// Builds `vfio-gated` with `--features fault-injection` (static, release, the same package set
/// as the release build so that dependencies are shared) and copies it to
/// `release/vfio-gated-faults`. Call it before the release build, which puts the release helper
/// back at `release/vfio-gated`; then [`check_helpers`].
pub fn build_fault_helper(paths: &Paths) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&paths.workspace)
        .args(["build", "--release", "--target", GUEST_TARGET])
        .args([
            "-p",
            "vfio-gated",
            "-p",
            "vfio-gate",
            "-p",
            "vfio-gate-tests",
        ])
        .args([
            "--bin",
            "vfio-gated",
            "--features",
            "vfio-gated/fault-injection",
        ])
        .env("CARGO_TARGET_DIR", &paths.target)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    eprintln!("xtask: building the fault-injection helper (tests only)");
    run(&mut cmd).context("building the fault-injection helper")?;
    let dir = paths.target.join(GUEST_TARGET).join("release");
    let built = read(&dir.join("vfio-gated"))?;
    if !contains(&built, TEST_BUILD_MARKER) {
        bail!(
            "`{}` produced a helper without fault injection (no TEST-BUILD line in it)",
            display(&cmd)
        );
    }
    let dest = dir.join(FAULT_HELPER);
    // A fresh file: never write through a hard link cargo may have made.
    let _ = fs::remove_file(&dest);
    fs::write(&dest, &built).with_context(|| format!("writing {}", dest.display()))?;
    Ok(())
}

/// After the release build: the release helper must not have fault injection compiled in, the
/// fault-injection copy must.
pub fn check_helpers(bins: &Path) -> Result<()> {
    let release = bins.join("vfio-gated");
    if contains(&read(&release)?, TEST_BUILD_MARKER) {
        bail!(
            "{} has fault injection compiled in (it contains TEST-BUILD): it must never be \
             installed as the product; delete it and build again",
            release.display()
        );
    }
    let faults = bins.join(FAULT_HELPER);
    if !contains(&read(&faults)?, TEST_BUILD_MARKER) {
        bail!("{} lacks fault injection", faults.display());
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Adds the fault-injection helper to a busybox guest's overlay.
pub fn overlay(tree: &mut Tree, bins: &Path) -> Result<()> {
    tree.file(FAULT_HELPER_GUEST, EXEC, &read(&bins.join(FAULT_HELPER))?);
    Ok(())
}

/// The extra `-device` arguments the run's script asks for with `# vm: extra-devices=N`.
pub fn extra_devices(spec: &RunSpec) -> Result<Vec<String>> {
    let Mode::Script(script) = &spec.mode else {
        return Ok(Vec::new());
    };
    let text =
        fs::read_to_string(script).with_context(|| format!("reading {}", script.display()))?;
    let n = extra_count(&text).with_context(|| script.display().to_string())?;
    Ok(devices(n))
}

/// N from the script's `# vm: extra-devices=N` line (0 without one).
fn extra_count(script: &str) -> Result<u32> {
    let mut found = None;
    for line in script.lines() {
        let Some(value) = line.trim_end().strip_prefix(EXTRA_MARKER) else {
            continue;
        };
        let n: u32 = match value.trim().parse() {
            Ok(n) if (1..=MAX_EXTRA_DEVICES).contains(&n) => n,
            _ => bail!(
                "bad marker line {line:?}: want {EXTRA_MARKER}N with N from 1 to {MAX_EXTRA_DEVICES}"
            ),
        };
        if found.replace(n).is_some() {
            bail!("more than one {EXTRA_MARKER}N line");
        }
    }
    Ok(found.unwrap_or(0))
}

/// `n` root ports (functions of slots 00:07 onwards, IO window off: edu has no IO BAR and the
/// 64 KiB of IO space would run out) with one edu each.
fn devices(n: u32) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let (slot, func) = (FIRST_SLOT + i / 8, i % 8);
        let multi = if func == 0 { ",multifunction=on" } else { "" };
        out.push(format!(
            "pcie-root-port,id=xrp{i},bus=pcie.0,chassis={},addr=0x{slot:x}.{func}{multi},io-reserve=0",
            32 + i
        ));
        out.push(format!("edu,bus=xrp{i}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker() {
        assert_eq!(extra_count("echo hi\n").unwrap(), 0);
        assert_eq!(extra_count("# x\n# vm: extra-devices=20\n").unwrap(), 20);
        assert_eq!(
            args_of("# vm: kernel-args=vfio-pci.ids=1234:11e8 loglevel=8\n").unwrap(),
            ["vfio-pci.ids=1234:11e8", "loglevel=8"]
        );
        assert!(args_of("# vm: kernel-args=init=/bin/sh;reboot\n").is_err());
        assert!(args_of("# vm: kernel-args=\n").is_err());
        assert!(args_of("no marker\n").unwrap().is_empty());
        assert!(extra_count("# vm: extra-devices=0\n").is_err());
        assert!(extra_count("# vm: extra-devices=33\n").is_err());
        assert!(extra_count("# vm: extra-devices=2\n# vm: extra-devices=3\n").is_err());
    }

    #[test]
    fn ports_fill_slots_eight_functions_each() {
        let d = devices(9);
        assert_eq!(d.len(), 18);
        assert!(d[0].contains("addr=0x7.0,multifunction=on"));
        assert!(d[2].contains("addr=0x7.1,io-reserve"));
        assert!(d[16].contains("addr=0x8.0,multifunction=on"));
        assert_eq!(d[17], "edu,bus=xrp8");
    }

    #[test]
    fn marker_search() {
        assert!(contains(b"a event=TEST-BUILD b", TEST_BUILD_MARKER));
        assert!(!contains(b"TEST-BUIL", TEST_BUILD_MARKER));
    }
}
