//! Booting the guest: the QEMU command line and the run loop.
//!
//! The machine is the one of `docs/guest.md`: q35 with an emulated Intel IOMMU and a fixed set of
//! PCI devices at fixed addresses, so IOMMU groups and addresses are the same on every boot.
//! QEMU always runs under `timeout`. TCG unless KVM can really boot a stock kernel here.
//!
//! Serial ports: ttyS0 is the kernel console and `/init`'s log (a file, or stdio for the
//! interactive shell); ttyS1 carries only the script's output. The guest reports the script's exit
//! status twice: a marker line on the console, and the `isa-debug-exit` device, which makes QEMU
//! exit at once with `(status << 1) | 1`.

use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Context, Result, display};

/// The marker `/init` prints on the console with the script's exit status.
pub const EXIT_MARKER: &str = "vfio-gate-guest: script exit status ";

/// The I/O port of `isa-debug-exit` (`/init` writes the status byte to `/dev/port` there).
const DEBUG_EXIT_PORT: &str = "0xf4";

#[derive(Debug, Clone)]
pub struct Machine {
    /// ELF vmlinux (booted through PVH) or bzImage.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Working directory for the disk image and logs.
    pub dir: PathBuf,
    pub memory_mib: u32,
    /// The systemd guest's root disk: an ext4 image on q35's built-in AHCI (00:1f.2, so the PCI
    /// layout is unchanged), opened with `snapshot=on` so the cached image is never written.
    pub root_disk: Option<PathBuf>,
    /// More `-device` arguments, after the documented layout (`xtask/src/extra.rs`).
    pub extra_devices: Vec<String>,
    /// More kernel parameters, after the fixed ones (`xtask/src/extra.rs`).
    pub kernel_args: Vec<String>,
    pub interactive: bool,
    pub timeout: Duration,
}

/// How a non-interactive boot ended.
#[derive(Debug)]
pub struct Outcome {
    /// The script's exit status as the guest reported it; `None` if it never did.
    pub script_status: Option<i32>,
    pub qemu_status: ExitStatus,
    pub timed_out: bool,
    pub wall: Duration,
    pub console: PathBuf,
}

impl Outcome {
    /// Why the run produced no script status, for an error message.
    pub fn failure(&self) -> Option<String> {
        if self.script_status.is_some() {
            return None;
        }
        Some(if self.timed_out {
            "the guest did not finish in time (timeout)".to_string()
        } else {
            format!(
                "the guest stopped without reporting the script's exit status (QEMU: {})",
                self.qemu_status
            )
        })
    }
}

/// TCG or KVM. KVM only when `/dev/kvm` is writable *and* the CPU advertises VMX/SVM: some
/// hosts have a `/dev/kvm` that only boots specially built guests, and QEMU then spins silently.
pub fn accel() -> &'static str {
    if std::env::var("VFIO_GATE_ACCEL").as_deref() == Ok("tcg") {
        return "tcg";
    }
    let writable = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let virt = fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
    });
    if writable && virt { "kvm" } else { "tcg" }
}

impl Machine {
    fn command(&self, console: &Path, results: &Path) -> Result<Command> {
        let accel = accel();
        let nvme = self.dir.join("nvme.img");
        let f = fs::File::create(&nvme).with_context(|| format!("creating {}", nvme.display()))?;
        f.set_len(8 << 20)?;

        let mut append = String::from("console=ttyS0 intel_iommu=on panic=-1");
        if self.interactive {
            append.push_str(" quiet");
        }
        // Extra kernel parameters for debugging (`dyndbg=…`, `loglevel=8`).
        if let Ok(extra) = std::env::var("VFIO_GATE_KERNEL_ARGS") {
            append.push(' ');
            append.push_str(&extra);
        }
        for arg in &self.kernel_args {
            append.push(' ');
            append.push_str(arg);
        }
        let mut cmd = Command::new("timeout");
        cmd.args(["--foreground", "-k", "5"])
            .arg(self.timeout.as_secs().to_string())
            .arg("qemu-system-x86_64");
        let machine = if accel == "kvm" {
            // Interrupt remapping with KVM needs the split irqchip.
            "q35,accel=kvm,kernel-irqchip=split"
        } else {
            "q35,accel=tcg"
        };
        cmd.args(["-machine", machine])
            .args(["-cpu", if accel == "kvm" { "host" } else { "max" }])
            .args(["-smp", "2", "-m", &self.memory_mib.to_string()])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", &append]);
        if self.interactive {
            cmd.args(["-serial", "mon:stdio", "-serial", "null"]);
        } else {
            cmd.arg("-serial")
                .arg(format!("file:{}", console.display()))
                .arg("-serial")
                .arg(format!("file:{}", results.display()));
        }
        cmd.args([
            "-device",
            &format!("isa-debug-exit,iobase={DEBUG_EXIT_PORT},iosize=0x04"),
        ]);
        // The device set and addresses of docs/guest.md. Changing anything here renumbers IOMMU
        // groups that tests and the default policy name.
        for d in [
            "intel-iommu,intremap=on",
            "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=0x2.0",
            "e1000e,bus=rp1",
            "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,addr=0x3.0",
            "virtio-net-pci,bus=rp2",
            "pcie-root-port,id=rp3,bus=pcie.0,chassis=3,addr=0x4.0",
        ] {
            cmd.args(["-device", d]);
        }
        cmd.arg("-drive")
            .arg(format!("if=none,id=nvm,file={},format=raw", nvme.display()))
            .args(["-device", "nvme,bus=rp3,serial=nvme0,drive=nvm"]);
        for d in [
            "pcie-root-port,id=rp4,bus=pcie.0,chassis=4,addr=0x5.0",
            "pcie-pci-bridge,id=br1,bus=rp4",
            "e1000,bus=br1,addr=0x1.0",
            "edu,bus=br1,addr=0x2.0",
            "edu,bus=pcie.0,addr=0x6.0,multifunction=on",
            "pci-testdev,bus=pcie.0,addr=0x6.1",
        ] {
            cmd.args(["-device", d]);
        }
        for d in &self.extra_devices {
            cmd.args(["-device", d]);
        }
        if let Some(disk) = &self.root_disk {
            cmd.arg("-drive")
                .arg(format!(
                    "if=none,id=root,file={},format=raw,snapshot=on,cache=unsafe",
                    disk.display()
                ))
                .args(["-device", "ide-hd,bus=ide.0,drive=root"]);
        }
        cmd.args(["-audiodev", "none,id=snd0"])
            .args(["-device", "ich9-intel-hda,bus=pcie.0,addr=0x1b.0"])
            .args(["-device", "hda-duplex,audiodev=snd0"]);
        fs::write(self.dir.join("qemu.cmdline"), display(&cmd) + "\n")?;
        Ok(cmd)
    }

    /// Boots with the console on the terminal; returns QEMU's status.
    pub fn run_interactive(&self) -> Result<ExitStatus> {
        fs::create_dir_all(&self.dir)?;
        let mut cmd = self.command(Path::new("-"), Path::new("-"))?;
        eprintln!(
            "xtask: booting ({} acceleration; command line in {})",
            accel(),
            self.dir.join("qemu.cmdline").display()
        );
        eprintln!("xtask: Ctrl-A X quits QEMU; `exit` in the shell powers the guest off");
        let mut child = cmd.stderr(Stdio::piped()).spawn().context("running QEMU")?;
        let stderr = forward_stderr(child.stderr.take().expect("piped"));
        let st = child.wait().context("running QEMU")?;
        let _ = stderr.join();
        Ok(st)
    }

    /// Boots, passing the script's output (ttyS1) to `on_output` as it arrives.
    pub fn run(&self, on_output: &mut dyn FnMut(&[u8])) -> Result<Outcome> {
        fs::create_dir_all(&self.dir)?;
        let console = self.dir.join("console.log");
        let results = self.dir.join("results.log");
        for f in [&console, &results] {
            fs::write(f, b"").with_context(|| format!("creating {}", f.display()))?;
        }
        let mut cmd = self.command(&console, &results)?;
        let start = Instant::now();
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{}`", display(&cmd)))?;
        let stderr = forward_stderr(child.stderr.take().expect("piped"));
        let mut tail = Tail::new(&results)?;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            tail.pump(on_output)?;
            std::thread::sleep(Duration::from_millis(40));
        };
        tail.pump(on_output)?;
        let wall = start.elapsed();
        let _ = stderr.join();
        let log = fs::read(&console).unwrap_or_default();
        let script_status = parse_marker(&String::from_utf8_lossy(&log));
        // `timeout` exits 124 when it had to stop QEMU (137 if SIGKILL was needed).
        let timed_out = script_status.is_none() && matches!(status.code(), Some(124 | 137));
        let consistent = match (script_status, status.code()) {
            (Some(rc), Some(code)) => code == ((rc & 0x7f) << 1 | 1),
            _ => true,
        };
        if !consistent {
            eprintln!(
                "xtask: note: QEMU exited with {status}, but the guest reported status {} on the console",
                script_status.unwrap_or_default()
            );
        }
        Ok(Outcome {
            script_status,
            qemu_status: status,
            timed_out,
            wall,
            console,
        })
    }
}

/// Passes QEMU's stderr on, without the warnings that the NICs have no network backend: the
/// guest's NICs are deliberately unconnected (no traffic can leave the guest).
fn forward_stderr(stderr: ChildStderr) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if !line.ends_with("has no peer") {
                eprintln!("{line}");
            }
        }
    })
}

fn parse_marker(console: &str) -> Option<i32> {
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once(EXIT_MARKER))
        .filter_map(|(_, rest)| rest.trim().parse().ok())
        .next_back()
}

/// Follows a file another process appends to.
struct Tail {
    file: fs::File,
    pos: u64,
}

impl Tail {
    fn new(path: &Path) -> Result<Tail> {
        let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Tail { file, pos: 0 })
    }

    /// Passes on what was appended since the last call, without the serial line's CRs.
    fn pump(&mut self, on_output: &mut dyn FnMut(&[u8])) -> Result<()> {
        self.file.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::new();
        self.file.read_to_end(&mut buf)?;
        self.pos += buf.len() as u64;
        buf.retain(|&b| b != b'\r');
        if !buf.is_empty() {
            on_output(&buf);
        }
        Ok(())
    }
}

/// The last `lines` lines of the console log, for failure reports.
pub fn console_tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text).replace('\r', "");
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_found_last_wins() {
        let log = format!("boot\r\n{EXIT_MARKER}3\r\nmore\n{EXIT_MARKER}0\r\n");
        assert_eq!(parse_marker(&log), Some(0));
        assert_eq!(parse_marker("nothing"), None);
    }
}
