//! `vfio-gate doctor` on a fixture host: the fixture's sysfs, procfs, /dev and /etc (with
//! `/usr/lib`, `/lib/modules` and `/run` below the same root) set up as a healthy Intel host,
//! then changed one fact at a time for each check's warn and fail; the helper a fake one; the
//! memlock limit set by `ulimit -l` in a shell that then runs vfio-gate.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use vfio_gate_protocol::{PROTOCOL_VERSION, Response};

use crate::fixtures::*;
use crate::util::{self, FakeHelper, HostFixture, Reply, is_root, needs_root, run};

const RELEASE: &str = "6.1.0-56-amd64";

const INTEL_CMDLINE: &str =
    "BOOT_IMAGE=/boot/vmlinuz-6.1.0-56-amd64 root=/dev/sda1 ro intel_iommu=on quiet\n";

const INTERRUPTS: &str = "\
            CPU0       CPU1
   0:         42          0  IR-IO-APIC    2-edge      timer
  24:          0          7  IR-PCI-MSI-0000:00:02.0    0-edge      e1000e
";

const NO_IR_INTERRUPTS: &str = "\
            CPU0       CPU1
   0:         42          0   IO-APIC    2-edge      timer
  24:          0          7  PCI-MSI-0000:00:02.0    0-edge      e1000e
";

/// A healthy Intel host: the lab policy's fixture host plus what doctor reads.
struct Doctor {
    fx: HostFixture,
}

impl Doctor {
    fn new() -> Self {
        let fx = lab();
        let d = Doctor { fx };
        d.write("proc/sys/kernel/osrelease", &format!("{RELEASE}\n"));
        d.write("proc/cmdline", INTEL_CMDLINE);
        d.write(
            "proc/cpuinfo",
            "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n",
        );
        d.write("proc/interrupts", INTERRUPTS);
        d.write("sys/firmware/acpi/tables/DMAR", "");
        // ecap of a unit with interrupt remapping (bit 3).
        d.write("sys/class/iommu/dmar0/intel-iommu/ecap", "f020df\n");
        for m in ["vfio", "vfio_pci", "pci_stub"] {
            d.write(&format!("sys/module/{m}/initstate"), "live\n");
        }
        d.write(
            "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts",
            "N\n",
        );
        d.write(
            "sys/kernel/security/lsm",
            "lockdown,capability,landlock,yama,apparmor",
        );
        d.write(
            &format!("lib/modules/{RELEASE}/modules.dep"),
            "kernel/drivers/vfio/vfio.ko:\n\
             kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko\n\
             kernel/drivers/pci/pci-stub.ko:\n",
        );
        d.write(&format!("lib/modules/{RELEASE}/modules.builtin"), "");
        d.write(
            "usr/lib/modules-load.d/vfio-gate.conf",
            "# driver_override does not load modules\nvfio-pci\npci-stub\n",
        );
        d.node(0o666);
        d.write("usr/lib/systemd/system/vfio-gate.socket", "[Socket]\n");
        d.mkdir("run/systemd/system");
        d.enable(true);
        d
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.fx.root().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn remove(&self, rel: &str) {
        let p = self.path(rel);
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            std::fs::remove_file(p).unwrap();
        }
    }

    fn mkdir(&self, rel: &str) {
        std::fs::create_dir_all(self.path(rel)).unwrap();
    }

    /// `/dev/vfio/vfio` with `mode`: a character device (mknod needs root; as anyone else, a
    /// link to /dev/null, which is 0666).
    fn node(&self, mode: u32) {
        let p = self.path("dev/vfio/vfio");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&p);
        if is_root() {
            let ok = Command::new("mknod")
                .arg("-m")
                .arg(format!("{mode:o}"))
                .arg(&p)
                .args(["c", "1", "3"])
                .status()
                .unwrap()
                .success();
            assert!(ok, "mknod {}", p.display());
        } else {
            symlink("/dev/null", &p).unwrap();
        }
    }

    fn enable(&self, on: bool) {
        let wants = self.path("etc/systemd/system/sockets.target.wants/vfio-gate.socket");
        std::fs::create_dir_all(wants.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&wants);
        if on {
            symlink("/usr/lib/systemd/system/vfio-gate.socket", wants).unwrap();
        }
    }

    /// `vfio-gate doctor ARGS` on the fixture, with `socket`, under `ulimit -l memlock` (KiB,
    /// or "unlimited") when given.
    fn run(&self, socket: &Path, memlock: Option<&str>, args: &[&str]) -> util::Run {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(match memlock {
                Some(l) => format!("ulimit -l {l} && exec \"$@\""),
                None => "exec \"$@\"".to_owned(),
            })
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_vfio-gate"))
            .arg("doctor")
            .args(args)
            .arg("--socket")
            .arg(socket)
            .arg("--policy")
            .arg(self.fx.policy())
            .arg("--sysfs-root")
            .arg(self.fx.sysfs())
            .arg("--etc-root")
            .arg(self.fx.root())
            .arg("--proc-root")
            .arg(self.path("proc"))
            .arg("--dev-root")
            .arg(self.path("dev"))
            .env_remove("VFIO_GATE_SOCKET")
            .stdin(Stdio::null());
        run(cmd)
    }

    /// `--json`, with a fake helper answering the list with the fixture devices (01:00.0 and
    /// 05:02.0 granted).
    fn json(&self, memlock: Option<&str>, args: &[&str]) -> (util::Run, Value) {
        let fake = helper();
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let r = self.run(fake.socket(), memlock, &all);
        let v = r.json();
        fake.requests();
        (r, v)
    }

    /// One check of a `--json` run: (status, found, fix).
    fn check(&self, name: &str) -> (String, String, String) {
        let (r, v) = self.json(None, &[]);
        pick(&r, &v, name)
    }
}

/// Whether `ulimit -l LIMIT` works here (raising the hard limit takes CAP_SYS_RESOURCE).
fn can_set_memlock(limit: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -l {limit}"))
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn helper() -> FakeHelper {
    FakeHelper::answering(Response::Devices(devices()))
}

fn pick(r: &util::Run, v: &Value, name: &str) -> (String, String, String) {
    let c = v["checks"]
        .as_array()
        .unwrap_or_else(|| r.fail("no checks array"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| r.fail(&format!("no check {name}")));
    (
        c["status"].as_str().unwrap().to_owned(),
        c["found"].as_str().unwrap().to_owned(),
        c["fix"].as_str().unwrap_or("").to_owned(),
    )
}

#[track_caller]
fn expect(got: (String, String, String), status: &str, found: &str, fix: &str) {
    let (s, f, x) = &got;
    assert_eq!(s, status, "{got:#?}");
    assert!(f.contains(found), "found lacks {found:?}: {got:#?}");
    assert!(x.contains(fix), "fix lacks {fix:?}: {got:#?}");
    if status == "ok" {
        assert!(x.is_empty(), "an ok check has no fix: {got:#?}");
    }
}

#[test]
fn a_healthy_host_passes_and_says_each_check_on_a_line() {
    if !needs_root("doctor::a_healthy_host_passes_and_says_each_check_on_a_line") {
        return;
    }
    let d = Doctor::new();
    let fake = helper();
    let sock = fake.socket().display().to_string();
    let r = d.run(fake.socket(), None, &[]);
    fake.requests();
    let names = [
        "kernel",
        "iommu_groups",
        "iommu_firmware",
        "iommu_cmdline",
        "interrupt_remapping",
        "acs_override",
        "modules",
        "vfio_node",
        "policy",
        "landlock",
        "socket",
        "helper",
        "granted_devices",
        "memlock",
    ];
    // One line per check (a fix goes on an indented line below), then the count.
    let lines: Vec<&str> = r.stdout.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(lines.len(), names.len() + 1, "{r:#?}");
    // The landlock and memlock lines are about the machine running the tests: landlock's ABI
    // comes from the running kernel, the memlock limit from the tests' (without --memory, never
    // a failure).
    let landlock_ok = lines[9].starts_with("ok    landlock ");
    let memlock_ok = lines[13].starts_with("ok    memlock ");
    assert!(lines[13].starts_with("ok    memlock ") || lines[13].starts_with("warn  memlock "));
    for (line, name) in lines.iter().zip(names) {
        if !["landlock", "memlock"].contains(&name) {
            assert!(
                line.starts_with(&format!("ok    {name:<19}  ")),
                "{name}: {line}\n{r:#?}"
            );
        }
    }
    if landlock_ok {
        r.code(0).stderr_empty();
        if memlock_ok {
            assert_eq!(lines[14], "All 14 checks passed.", "{r:#?}");
        }
    } else {
        r.code(10);
    }
    let policy = d.fx.policy().display().to_string();
    let modules_load = d.path("usr/lib/modules-load.d/vfio-gate.conf");
    for expected in [
        format!("ok    kernel               Linux {RELEASE}: a group is usable when no driver"),
        format!(
            "ok    iommu_groups         4 IOMMU groups in {}/kernel/iommu_groups\n",
            d.fx.sysfs().display()
        ),
        "ok    iommu_firmware       the firmware describes its IOMMU in ACPI DMAR: an Intel VT-d \
         IOMMU (CPU vendor GenuineIntel)\n"
            .to_owned(),
        "ok    iommu_cmdline        intel_iommu=on turns VT-d on\n".to_owned(),
        "ok    interrupt_remapping  on: interrupts go through IR-IO-APIC and IR-PCI-MSI".to_owned(),
        format!(
            "ok    modules              vfio loaded, vfio_pci loaded and pci_stub loaded; loaded \
             at boot by {}\n",
            modules_load.display()
        ),
        format!(
            "ok    vfio_node            {}/vfio/vfio is there, mode 0666",
            d.path("dev").display()
        ),
        format!(
            "ok    policy               {policy} and 1 drop-in loads as the helper loads it: 7 \
             rules, 0 reservations\n"
        ),
        format!("ok    socket               vfio-gate.socket is enabled, and {sock} is there\n"),
        format!(
            "ok    helper               vfio-gated answers on {sock} at protocol version \
             {PROTOCOL_VERSION} (4 devices listed)\n"
        ),
        "ok    granted_devices      the policy lets you bind 2 devices: 05:02.0 (vfio-pci, \
         pci-stub) and 01:00.0 (vfio-pci)\n"
            .to_owned(),
    ] {
        r.stdout_has(&expected);
    }
}

#[test]
fn the_json_has_the_schema_every_check_and_the_exit_code() {
    let d = Doctor::new();
    let (r, v) = d.json(Some("64"), &["--memory", "1G"]);
    r.code(10);
    assert_eq!(v["schema"], 1);
    assert_eq!(v["exit_code"], 10);
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 14);
    for c in checks {
        let keys: Vec<&String> = c.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["fix", "found", "name", "status"], "{c}");
        assert!(["ok", "warn", "fail"].contains(&c["status"].as_str().unwrap()));
        assert_eq!(c["fix"].is_null(), c["status"] == "ok", "{c}");
    }
    expect(
        pick(&r, &v, "memlock"),
        "fail",
        "is 64 KiB, below the 1 GiB",
        "",
    );
}

#[test]
fn warnings_alone_exit_0_and_failures_exit_10() {
    if !needs_root("doctor::warnings_alone_exit_0_and_failures_exit_10") {
        return;
    }
    let d = Doctor::new();
    d.write(
        "proc/cmdline",
        "intel_iommu=on pcie_acs_override=downstream\n",
    );
    let (r, v) = d.json(None, &[]);
    if pick(&r, &v, "landlock").0 == "ok" {
        r.code(0);
        assert_eq!(v["exit_code"], 0);
    }
    expect(
        pick(&r, &v, "acs_override"),
        "warn",
        "pcie_acs_override=downstream",
        "Remove",
    );
    let r = d.run(Path::new("/nonexistent/vfio-gate.sock"), None, &[]);
    r.code(10)
        .stdout_has("fail  helper               cannot reach the vfio-gate helper at /nonexistent/vfio-gate.sock")
        .stdout_has("warn  acs_override ")
        .stdout_has("A VM with a device will not work here until the failed checks are fixed.");
}

#[test]
fn the_iommu_groups_say_whether_the_iommu_is_on() {
    let d = Doctor::new();
    expect(d.check("iommu_groups"), "ok", "4 IOMMU groups in", "");
    d.remove("sys/kernel/iommu_groups");
    expect(
        d.check("iommu_groups"),
        "fail",
        "no IOMMU groups",
        "Enable VT-d (Intel Virtualization Technology for Directed I/O) in the firmware settings \
         and add intel_iommu=on to the kernel command line",
    );
    // On AMD: the firmware, and no parameter.
    d.remove("sys/firmware/acpi/tables/DMAR");
    d.write("sys/firmware/acpi/tables/IVRS", "");
    let (_, _, fix) = d.check("iommu_groups");
    assert!(fix.starts_with("Enable AMD-Vi"), "{fix}");
    assert!(fix.contains("amd_iommu=on is not a valid option"), "{fix}");
    assert!(!fix.contains("add amd_iommu"), "{fix}");
}

#[test]
fn the_firmware_table_names_the_iommu() {
    let d = Doctor::new();
    expect(
        d.check("iommu_firmware"),
        "ok",
        "ACPI DMAR: an Intel VT-d IOMMU",
        "",
    );
    d.remove("sys/firmware/acpi/tables/DMAR");
    d.write("sys/firmware/acpi/tables/IVRS", "");
    d.write("proc/cpuinfo", "vendor_id\t: AuthenticAMD\n");
    expect(
        d.check("iommu_firmware"),
        "ok",
        "ACPI IVRS: an AMD-Vi IOMMU (CPU vendor AuthenticAMD)",
        "",
    );
    d.remove("sys/firmware/acpi/tables/IVRS");
    expect(
        d.check("iommu_firmware"),
        "ok",
        "but the kernel has IOMMU groups: another IOMMU",
        "",
    );
    d.remove("sys/kernel/iommu_groups");
    expect(
        d.check("iommu_firmware"),
        "fail",
        "the firmware describes no IOMMU (CPU vendor AuthenticAMD)",
        "Enable AMD-Vi (often called IOMMU, under AMD CBS or NBIO) in the firmware settings",
    );
}

#[test]
fn the_command_line_gets_the_parameter_of_the_iommu_s_vendor() {
    let d = Doctor::new();
    expect(
        d.check("iommu_cmdline"),
        "ok",
        "intel_iommu=on turns VT-d on",
        "",
    );
    d.write(
        "proc/cmdline",
        "root=/dev/sda1 iommu=pt -- intel_iommu=on\n",
    );
    expect(
        d.check("iommu_cmdline"),
        "ok",
        "this kernel has turned VT-d on by default (it has IOMMU groups); iommu=pt keeps",
        "",
    );
    d.remove("sys/kernel/iommu_groups");
    expect(
        d.check("iommu_cmdline"),
        "fail",
        "no intel_iommu=on",
        "Add intel_iommu=on to the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub",
    );
    d.write("proc/cmdline", "intel_iommu=off\n");
    expect(
        d.check("iommu_cmdline"),
        "fail",
        "intel_iommu=off is on the kernel command line",
        "Replace it with intel_iommu=on",
    );
    // An Intel IOMMU and amd_iommu=on: ignored, with a line in the kernel log.
    d.write("proc/cmdline", "intel_iommu=on amd_iommu=on\n");
    expect(
        d.check("iommu_cmdline"),
        "warn",
        "amd_iommu=on is on the command line too, which is not a valid option (the kernel logs \
         \"AMD-Vi: Unknown option - 'on'\"",
        "Drop amd_iommu=on from the kernel command line",
    );
    // AMD: no parameter needed, amd_iommu=on wrong, amd_iommu=off off.
    d.remove("sys/firmware/acpi/tables/DMAR");
    d.write("sys/firmware/acpi/tables/IVRS", "");
    d.write("proc/cmdline", "quiet\n");
    expect(
        d.check("iommu_cmdline"),
        "ok",
        "AMD-Vi needs no kernel parameter: it is on by default",
        "",
    );
    d.write("proc/cmdline", "quiet amd_iommu=on iommu=pt\n");
    expect(
        d.check("iommu_cmdline"),
        "warn",
        "AMD-Vi needs no kernel parameter",
        "AMD's IOMMU is on by default",
    );
    d.write("proc/cmdline", "amd_iommu=off\n");
    expect(
        d.check("iommu_cmdline"),
        "fail",
        "AMD-Vi is off",
        "Remove amd_iommu=off",
    );
    d.write("proc/cmdline", "iommu=off\n");
    expect(
        d.check("iommu_cmdline"),
        "fail",
        "iommu=off",
        "Remove iommu=off",
    );
}

#[test]
fn interrupt_remapping_comes_from_the_interrupt_chips() {
    let d = Doctor::new();
    expect(
        d.check("interrupt_remapping"),
        "ok",
        "on: interrupts go through IR-IO-APIC and IR-PCI-MSI",
        "",
    );
    d.write(
        "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts",
        "Y\n",
    );
    expect(
        d.check("interrupt_remapping"),
        "warn",
        "allows unsafe interrupts anyway",
        "Remove allow_unsafe_interrupts",
    );
    d.write("proc/interrupts", NO_IR_INTERRUPTS);
    expect(
        d.check("interrupt_remapping"),
        "warn",
        "off, and vfio_iommu_type1 allows unsafe interrupts",
        "unless you trust every guest",
    );
    d.write(
        "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts",
        "N\n",
    );
    expect(
        d.check("interrupt_remapping"),
        "fail",
        "off, although the IOMMU supports it (ecap bit 3",
        "Remove intremap=off",
    );
    // A unit without IR (bit 3 clear).
    d.write("sys/class/iommu/dmar0/intel-iommu/ecap", "f020d7\n");
    expect(
        d.check("interrupt_remapping"),
        "fail",
        "off: no remapping interrupt chip (IR-) in /proc/interrupts",
        "allow_unsafe_interrupts=1",
    );
    d.remove("sys/kernel/iommu_groups");
    expect(
        d.check("interrupt_remapping"),
        "warn",
        "not checked: the IOMMU is off",
        "Turn the IOMMU on first",
    );
}

#[test]
fn an_acs_override_is_a_warning() {
    let d = Doctor::new();
    expect(d.check("acs_override"), "ok", "no pcie_acs_override", "");
    d.write(
        "proc/cmdline",
        "intel_iommu=on pcie_acs_override=downstream,multifunction\n",
    );
    expect(
        d.check("acs_override"),
        "warn",
        "pcie_acs_override=downstream,multifunction is on the kernel command line",
        "Remove pcie_acs_override=",
    );
}

#[test]
fn modules_must_be_there_now_and_at_boot() {
    let d = Doctor::new();
    expect(
        d.check("modules"),
        "ok",
        "vfio loaded, vfio_pci loaded and pci_stub loaded; loaded at boot by",
        "",
    );
    // Loaded by hand, nothing loads them at boot.
    d.remove("usr/lib/modules-load.d/vfio-gate.conf");
    expect(
        d.check("modules"),
        "warn",
        "but nothing loads vfio_pci and pci_stub at boot",
        "install -m 0644 dist/modules-load.d/vfio-gate.conf /etc/modules-load.d/",
    );
    // Debian's /etc/modules counts; a built-in module needs nothing.
    d.write("etc/modules", "vfio_pci\n");
    d.write(
        &format!("lib/modules/{RELEASE}/modules.builtin"),
        "kernel/drivers/pci/pci-stub.ko\n",
    );
    d.remove("sys/module/pci_stub/initstate");
    expect(
        d.check("modules"),
        "ok",
        "vfio loaded, vfio_pci loaded and pci_stub built in",
        "",
    );
    // Not loaded, but there.
    d.remove("sys/module/vfio_pci");
    expect(
        d.check("modules"),
        "warn",
        "vfio_pci not loaded",
        "As root: modprobe -a vfio-pci now",
    );
    // Not in this kernel.
    d.write(
        &format!("lib/modules/{RELEASE}/modules.dep"),
        "kernel/drivers/vfio/vfio.ko:\n",
    );
    expect(
        d.check("modules"),
        "fail",
        &format!("lib/modules/{RELEASE} has no vfio_pci"),
        "Boot a kernel built with VFIO, VFIO_PCI and PCI_STUB",
    );
    // No module directory at all.
    d.remove(&format!("lib/modules/{RELEASE}"));
    expect(
        d.check("modules"),
        "fail",
        &format!("there is no /lib/modules/{RELEASE} to load them from"),
        "modprobe -a vfio-pci",
    );
}

#[test]
fn the_vfio_node_must_be_open_to_everyone() {
    let d = Doctor::new();
    expect(
        d.check("vfio_node"),
        "ok",
        "/dev/vfio/vfio is there, mode 0666",
        "",
    );
    d.remove("dev/vfio/vfio");
    expect(
        d.check("vfio_node"),
        "fail",
        "/dev/vfio/vfio, although vfio is loaded",
        "CONFIG_VFIO_CONTAINER",
    );
    d.remove("sys/module/vfio");
    expect(
        d.check("vfio_node"),
        "fail",
        "/dev/vfio/vfio: the vfio module is not loaded",
        "modprobe vfio-pci",
    );
    if is_root() {
        // kubevirt#6110: a rule left it crw------- root.
        d.node(0o600);
        expect(
            d.check("vfio_node"),
            "fail",
            "/dev/vfio/vfio has mode 0600 (owner uid 0): a VM started as you cannot open it",
            "chmod 0666",
        );
        let (_, _, fix) = d.check("vfio_node");
        assert!(fix.contains("KERNEL==\"vfio\", SUBSYSTEM==\"misc\", MODE=\"0666\""));
    }
}

#[test]
fn the_policy_must_load() {
    if !needs_root("doctor::the_policy_must_load") {
        return;
    }
    let d = Doctor::new();
    expect(
        d.check("policy"),
        "ok",
        "loads as the helper loads it: 7 rules",
        "",
    );
    d.fx.write(&d.fx.policy(), "version = 1\n[[rule]]\nnmae = \"typo\"\n");
    expect(
        d.check("policy"),
        "fail",
        "refused: ",
        "vfio-gate policy check ",
    );
    std::fs::remove_file(d.fx.policy()).unwrap();
    expect(
        d.check("policy"),
        "fail",
        "no policy at ",
        "install -m 0644 dist/policy.toml",
    );
}

#[test]
fn landlock_must_be_enabled_unless_the_policy_allows_serving_without() {
    if !needs_root("doctor::landlock_must_be_enabled_unless_the_policy_allows_serving_without") {
        return;
    }
    let d = Doctor::new();
    d.write(
        "sys/kernel/security/lsm",
        "lockdown,capability,yama,apparmor",
    );
    expect(
        d.check("landlock"),
        "fail",
        "landlock is built into this kernel but not enabled: ",
        "lsm=lockdown,capability,yama,apparmor,landlock",
    );
    d.fx.write(
        &d.fx.policy(),
        &LAB_POLICY.replace("[settings]\n", "[settings]\nallow_unsandboxed = true\n"),
    );
    expect(
        d.check("landlock"),
        "warn",
        "the policy sets allow_unsandboxed = true, so the helper serves without its sandbox",
        "then remove allow_unsandboxed",
    );
}

#[test]
fn the_socket_unit_is_enabled_and_its_socket_there() {
    let d = Doctor::new();
    expect(
        d.check("socket"),
        "ok",
        "vfio-gate.socket is enabled, and ",
        "",
    );
    d.enable(false);
    expect(
        d.check("socket"),
        "warn",
        "is there, but vfio-gate.socket (",
        "systemctl enable vfio-gate.socket",
    );
    let gone = Path::new("/nonexistent/vfio-gate.sock");
    let check = |d: &Doctor| {
        let r = d.run(gone, None, &["--json"]);
        let v = r.json();
        pick(&r, &v, "socket")
    };
    expect(
        check(&d),
        "fail",
        "no /nonexistent/vfio-gate.sock, and vfio-gate.socket (",
        "systemctl enable --now vfio-gate.socket",
    );
    d.enable(true);
    expect(
        check(&d),
        "fail",
        "and vfio-gate.socket is enabled",
        "systemctl restart vfio-gate.socket",
    );
    d.remove("usr/lib/systemd/system/vfio-gate.socket");
    d.enable(false);
    expect(
        check(&d),
        "fail",
        "vfio-gate.socket is not installed",
        "apt install ./vfio-gate_VERSION_amd64.deb",
    );
    // Not a systemd host: a socket is enough.
    d.remove("run/systemd");
    expect(
        d.check("socket"),
        "ok",
        "systemd is not the init system here",
        "",
    );
    expect(
        check(&d),
        "fail",
        "(and systemd is not the init system here)",
        "vfio-gated --listen /run/vfio-gate.sock",
    );
}

#[test]
fn the_helper_answers_at_this_protocol_version_and_grants_devices() {
    let d = Doctor::new();
    expect(
        d.check("helper"),
        "ok",
        &format!("at protocol version {PROTOCOL_VERSION} (4 devices listed)"),
        "",
    );
    expect(
        d.check("granted_devices"),
        "ok",
        "the policy lets you bind 2 devices: 05:02.0 (vfio-pci, pci-stub) and 01:00.0 (vfio-pci)",
        "",
    );
    // Nothing granted.
    let mut none = devices();
    for dev in &mut none {
        dev.allowed.clear();
    }
    let fake = FakeHelper::answering(Response::Devices(none));
    let r = d.run(fake.socket(), None, &["--json"]);
    expect(
        pick(&r, &r.json(), "granted_devices"),
        "warn",
        "the policy lets you bind no device of this host",
        "Ask the admin for a [[rule]]",
    );
    fake.requests();
    // Another release: a frame of the next protocol version.
    let next = PROTOCOL_VERSION + 1;
    let fake = FakeHelper::start(vec![Reply::Raw(vec![
        1,
        0,
        0,
        0,
        u8::try_from(next).unwrap(),
    ])]);
    let r = d.run(fake.socket(), None, &["--json"]);
    let v = r.json();
    expect(
        pick(&r, &v, "helper"),
        "fail",
        &format!(
            "the helper speaks protocol version {next}, this vfio-gate speaks version {PROTOCOL_VERSION}"
        ),
        "Install vfio-gate and vfio-gated from one release",
    );
    expect(
        pick(&r, &v, "granted_devices"),
        "warn",
        "unknown",
        "Fix the helper first",
    );
    fake.requests();
    // Nobody there.
    let r = d.run(Path::new("/nonexistent/vfio-gate.sock"), None, &["--json"]);
    expect(
        pick(&r, &r.json(), "helper"),
        "fail",
        "cannot reach the vfio-gate helper at /nonexistent/vfio-gate.sock",
        "systemctl enable --now vfio-gate.socket",
    );
}

#[test]
fn memlock_against_the_guest_s_ram_with_the_exact_fix() {
    if !can_set_memlock("8192") {
        eprintln!(
            "SKIPPED doctor::memlock_against_the_guest_s_ram_with_the_exact_fix: ulimit -l 8192 fails here"
        );
        return;
    }
    let d = Doctor::new();
    let memlock = |limit: &str, args: &[&str]| {
        let (r, v) = d.json(Some(limit), args);
        pick(&r, &v, "memlock")
    };
    // The kernel's default of 8 MiB, a 1 GiB guest.
    let (status, found, fix) = memlock("8192", &["--memory", "1G"]);
    assert_eq!(status, "fail");
    assert_eq!(
        found,
        "your memlock limit (ulimit -l) is 8 MiB, below the 1 GiB a guest of 1 GiB pins: QEMU \
         fails with VFIO_MAP_DMA failed: Cannot allocate memory. It needs 2097152 KiB with \
         libvirt's 1 GiB margin"
    );
    // The tests run as root, who is not in vm-users: the line names the user.
    let who = if my_uid() == 0 { "root" } else { "@vm-users" };
    for part in [
        "An admin (root) raises it: for login sessions, echo '",
        &format!(
            "{who} - memlock 2097152' > /etc/security/limits.d/vfio-gate.conf (KiB; pam_limits applies it at the next login"
        ),
        "LimitMEMLOCK=2G in the unit's [Service] section (systemctl edit UNIT)",
        "printf '[Manager]\\nDefaultLimitMEMLOCK=2G\\n' > /etc/systemd/system.conf.d/vfio-gate.conf, then systemctl daemon-reexec",
    ] {
        assert!(fix.contains(part), "{part:?} not in {fix}");
    }
    // Sizes as QEMU takes them.
    let (status, _, fix) = memlock("8192", &["--memory", "2048"]);
    assert_eq!(status, "fail");
    assert!(fix.contains(" - memlock 3145728' > "), "{fix}");
    // Without --memory: what the limit allows.
    expect(
        memlock("8192", &[]),
        "warn",
        "is 8 MiB: VFIO pins all of a guest's RAM, so a VM with a device and more than 8 MiB",
        "vfio-gate doctor --memory SIZE",
    );
    // Higher limits only where the tests may set them (raising the hard limit takes
    // CAP_SYS_RESOURCE); the unit tests of the check cover every case.
    if can_set_memlock("1572864") {
        // The RAM fits, the margin does not.
        expect(
            memlock("1572864", &["--memory", "1G"]),
            "warn",
            "enough for the 1 GiB of guest RAM, but not for libvirt's 1 GiB margin",
            "memlock 2097152",
        );
    }
    if can_set_memlock("4194304") {
        expect(
            memlock("2097152", &["--memory", "1G"]),
            "ok",
            "is 2 GiB: enough for a guest of 1 GiB with libvirt's 1 GiB margin (2097152 KiB)",
            "",
        );
        expect(
            memlock("4194304", &[]),
            "ok",
            "is 4 GiB: enough for a guest of up to 3 GiB",
            "",
        );
    }
    let r = d.run(Path::new("/nonexistent"), None, &["--memory", "lots"]);
    r.code(2).stderr_has("is not a size");
}

/// docs/json.md's `doctor` example has what the command prints: the same check names in the
/// same order, the same keys, statuses from the three words. (Its texts are a host's, so they
/// are not compared.)
#[test]
fn the_json_example_of_docs_json_md_has_doctors_shape() {
    if !needs_root("doctor::the_json_example_of_docs_json_md_has_doctors_shape") {
        return;
    }
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/json.md"))
        .expect("docs/json.md");
    let section = &doc[doc.find("## `vfio-gate doctor`").expect("a doctor section")..];
    let start = section.find("```json\n").expect("its example") + "```json\n".len();
    let end = start + section[start..].find("```").expect("closed");
    let example: Value = serde_json::from_str(&section[start..end]).expect("the example is JSON");
    let d = Doctor::new();
    let (_, produced) = d.json(None, &["--memory", "1G"]);
    let shape = |v: &Value| -> Vec<(String, Vec<String>)> {
        v["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .map(|c| {
                let status = c["status"].as_str().expect("status");
                assert!(["ok", "warn", "fail"].contains(&status), "{c}");
                let mut keys: Vec<String> = c.as_object().unwrap().keys().cloned().collect();
                keys.sort();
                (c["name"].as_str().unwrap().to_owned(), keys)
            })
            .collect()
    };
    assert_eq!(shape(&example), shape(&produced));
    let top = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(top(&example), top(&produced));
    assert_eq!(example["schema"], produced["schema"]);
}
