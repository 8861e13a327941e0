//! `vfio-gate boot-config`: the modprobe.d file, the kernel command line, the initramfs
//! commands and the warnings, for the guest-like reservations on the fixture host (01:00.0, an
//! 82574L on e1000e, held on pci-stub; 05:02.0, the edu, on vfio-pci with its group's e1000 at
//! 05:01.0 on pci-stub; the guest's other edu at 00:06.0 unreserved); `--write` into a temporary
//! directory; `--json`.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::fixtures::*;
use crate::util::{
    self, FIXTURE_BUILTIN_ALIAS, FIXTURE_MODULES_ALIAS, HostFixture, header_line, needs_root, run,
};

fn boot_config(fx: &HostFixture, args: &[&str]) -> util::Run {
    let mut cmd = fx.command(&["boot-config"]);
    cmd.arg("--policy")
        .arg(fx.policy())
        .arg("--modules-dir")
        .arg(fx.modules_dir())
        .args(args);
    run(cmd)
}

/// The fixture host with the whole guest's devices and [`RESERVE_POLICY`].
fn guest() -> HostFixture {
    let fx = HostFixture::new(RESERVE_POLICY, &[]);
    fx.add_guest_devices();
    fx
}

/// The file boot-config prints and writes for [`RESERVE_POLICY`] (with `--ids`: `ids`).
fn expected_file(fx: &HostFixture, ids: bool) -> String {
    let mut f = format!(
        "\
# Written by `vfio-gate boot-config --write` from the reservations ([[reserve]]) of
# {}
# Run it again when they change: it replaces this file.
#
# softdep: whenever modprobe loads the host driver of a reserved device, it loads the
# driver that holds the device first, so that one is there to claim it (through the
# driver_override vfio-gate-reserve.service sets before udev loads host drivers).
# e1000 would take 05:01.0
softdep e1000 pre: pci-stub
# e1000e would take 01:00.0
softdep e1000e pre: pci-stub
",
        fx.policy().display()
    );
    if ids {
        f.push_str(
            "\
#
# options ids=: as it loads, the driver claims every device with these
# vendor:device ids, not only the reserved ones.
options vfio-pci ids=1234:11e8
options pci-stub ids=8086:100e,8086:10d3
",
        );
    }
    f
}

#[test]
fn the_guest_reservations_line_by_line() {
    if !needs_root("boot_config::the_guest_reservations_line_by_line") {
        return;
    }
    let fx = guest();
    let r = boot_config(&fx, &[]);
    r.code(0).stderr_empty();
    let policy = fx.policy().display().to_string();
    let nic = header_line(RESERVE_POLICY, "the test NIC, held from boot");
    let edu = header_line(RESERVE_POLICY, "the edu, with its group");
    let modules = fx.modules_dir().display().to_string();
    let expected = format!(
        "\
Held from boot on this host:
  DEVICE   IDS        DRIVER  HOST DRIVER         RESERVED                         BY
  01:00.0  8086:10d3  e1000e  e1000e (bound now)  pci-stub                         'the test NIC, held from boot' ({policy}:{nic})
  05:01.0  8086:100e  e1000   e1000 (bound now)   pci-stub (companion of 05:02.0)  'the edu, with its group' ({policy}:{edu})
  05:02.0  1234:11e8  -       none known          vfio-pci                         'the edu, with its group' ({policy}:{edu})

/etc/modprobe.d/vfio-gate.conf:
{file}
With --ids the file would also claim the devices by their ids (options DRIVER ids=...), as the kernel command line below does.

Kernel command line, for host drivers built into the kernel or loaded from the initramfs:
  vfio-pci.ids=1234:11e8 pci-stub.ids=8086:100e,8086:10d3
Add them to GRUB_CMDLINE_LINUX in /etc/default/grub, then run update-grub (Fedora: grub2-mkconfig -o /boot/grub2/grub.cfg); with systemd-boot, add them to /etc/kernel/cmdline. vfio-gate never writes the bootloader's configuration.

Rebuild the initramfs after changing the file, when a host driver is loaded from it:
  Debian, Ubuntu  update-initramfs -u
  Fedora          dracut -f
  Arch            mkinitcpio -P

warning: vfio-pci.ids=1234:11e8 (and options vfio-pci ids=) claims every 1234:11e8 device of this host, not only 05:02.0: also 00:06.0. Use the ids only if that is what you want; the softdep lines and vfio-gate-reserve.service hold exactly the reserved devices

Nothing was written. To write /etc/modprobe.d/vfio-gate.conf: sudo vfio-gate boot-config --write --policy {policy} --modules-dir {modules}
",
        file = expected_file(&fx, false),
    );
    let got: Vec<&str> = r.stdout.lines().collect();
    let want: Vec<&str> = expected.lines().collect();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if g != w {
            r.fail(&format!("line {}: expected\n{w}\ngot\n{g}", i + 1));
        }
    }
    if got.len() != want.len() {
        r.fail(&format!("expected {} lines\n{expected}", want.len()));
    }
}

#[test]
fn ids_lines_only_with_ids() {
    if !needs_root("boot_config::ids_lines_only_with_ids") {
        return;
    }
    let fx = guest();
    let r = boot_config(&fx, &["--ids"]);
    r.code(0)
        .stderr_empty()
        .stdout_has(&format!(
            "/etc/modprobe.d/vfio-gate.conf:\n{}\nKernel command line",
            expected_file(&fx, true)
        ))
        .stdout_has("sudo vfio-gate boot-config --write --ids --policy ");
    if r.stdout.contains("With --ids") {
        r.fail("--ids was given");
    }
    let r = boot_config(&fx, &[]);
    if r.code(0).stdout.contains("\noptions ") {
        r.fail("options lines only with --ids");
    }
}

#[test]
fn write_puts_the_printed_file_in_place_with_mode_0644() {
    if !needs_root("boot_config::write_puts_the_printed_file_in_place_with_mode_0644") {
        return;
    }
    let fx = guest();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("vfio-gate.conf");
    std::fs::write(&target, "softdep stale pre: vfio-pci\n").unwrap();
    let modprobe_d = dir.path().to_str().unwrap();
    let r = boot_config(&fx, &["--write", "--ids", "--modprobe-d", modprobe_d]);
    r.code(0).stderr_empty();
    let written = std::fs::read_to_string(&target).unwrap();
    assert_eq!(written, expected_file(&fx, true));
    r.stdout_has(&format!("{}:\n{written}", target.display()))
        .stdout_has(&format!(
            "Wrote {}. Next: rebuild the initramfs (above) if a host driver is loaded from it, \
             and put the kernel parameters in place if you use them; then reboot.\n",
            target.display()
        ));
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o644);
    // Only the file: no temporary file left beside it.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["vfio-gate.conf"]);
    // The JSON says what it wrote, and the file is what it prints.
    let r = boot_config(&fx, &["--json", "--write", "--modprobe-d", modprobe_d]);
    let v = r.code(0).stderr_empty().json();
    assert_eq!(v["written"], target.display().to_string());
    assert_eq!(v["path"], target.display().to_string());
    assert_eq!(v["ids_in_file"], false);
    assert_eq!(
        v["file"].as_str(),
        Some(std::fs::read_to_string(&target).unwrap().as_str())
    );
    assert_eq!(v["file"].as_str(), Some(expected_file(&fx, false).as_str()));
    // A directory that is not there: an error that says what to check, and nothing written.
    let r = boot_config(&fx, &["--write", "--modprobe-d", "/nonexistent/modprobe.d"]);
    r.code(1)
        .stdout_empty()
        .stderr_has("vfio-gate: writing /nonexistent/modprobe.d/vfio-gate.conf: ")
        .stderr_has("Check that /nonexistent/modprobe.d exists");
}

/// Refused unless run as root: exit status 3 and the command to run instead, before anything is
/// read. As root the test runs vfio-gate as nobody (uid 65534); as anyone else, as itself.
#[test]
fn write_is_refused_unless_run_as_root() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = util::vfio_gate();
    cmd.args(["boot-config", "--write", "--ids", "--modprobe-d"])
        .arg(dir.path());
    if util::is_root() {
        cmd.uid(65534).gid(65534);
    }
    let r = run(cmd);
    r.code(3)
        .stdout_empty()
        .stderr_has(
            "vfio-gate: boot-config --write writes into /etc/modprobe.d, which only root may do\n",
        )
        .stderr_has(&format!(
            "vfio-gate: Run it as root: sudo vfio-gate boot-config --write --ids --modprobe-d {}\n",
            dir.path().display()
        ));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let mut cmd = util::vfio_gate();
    cmd.args(["--json", "boot-config", "--write"]);
    if util::is_root() {
        cmd.uid(65534).gid(65534);
    }
    let r = run(cmd);
    let e = r.code(3).json_error("not_root");
    assert_eq!(
        e["next_step"],
        "Run it as root: sudo vfio-gate boot-config --write"
    );
}

#[test]
fn json_has_the_lines_the_warnings_and_each_device_s_modules() {
    if !needs_root("boot_config::json_has_the_lines_the_warnings_and_each_device_s_modules") {
        return;
    }
    let fx = guest();
    let r = boot_config(&fx, &["--json", "--ids"]);
    let v = r.code(0).stderr_empty().json();
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "schema",
            "policy",
            "modules_dir",
            "path",
            "devices",
            "conflicts",
            "softdep_lines",
            "options_lines",
            "ids_in_file",
            "kernel_parameters",
            "builtin_modules",
            "same_ids",
            "mixed_ids",
            "initramfs",
            "notes",
            "warnings",
            "file",
            "written",
        ])
    );
    assert_eq!(
        v["softdep_lines"],
        serde_json::json!([
            "softdep e1000 pre: pci-stub",
            "softdep e1000e pre: pci-stub"
        ])
    );
    assert_eq!(
        v["options_lines"],
        serde_json::json!([
            "options vfio-pci ids=1234:11e8",
            "options pci-stub ids=8086:100e,8086:10d3"
        ])
    );
    assert_eq!(v["ids_in_file"], true);
    assert_eq!(v["policy"]["path"], fx.policy().display().to_string());
    assert_eq!(v["policy"]["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(v["policy"]["files"][0]["path"], v["policy"]["path"]);
    assert_eq!(
        v["kernel_parameters"],
        serde_json::json!(["vfio-pci.ids=1234:11e8", "pci-stub.ids=8086:100e,8086:10d3"])
    );
    assert_eq!(
        v["same_ids"],
        serde_json::json!([{
            "ids": "1234:11e8",
            "vendor": "1234",
            "device": "11e8",
            "driver": "vfio-pci",
            "reserved": ["0000:05:02.0"],
            "others": ["0000:00:06.0"],
        }])
    );
    assert_eq!(v["file"], expected_file(&fx, true));
    assert_eq!(v["written"], serde_json::Value::Null);
    assert_eq!(v["path"], "/etc/modprobe.d/vfio-gate.conf");
    assert_eq!(v["initramfs"][2]["command"], "mkinitcpio -P");
    let devices = v["devices"].as_array().unwrap();
    let addrs: Vec<&str> = devices
        .iter()
        .map(|d| d["address"].as_str().unwrap())
        .collect();
    assert_eq!(addrs, ["0000:01:00.0", "0000:05:01.0", "0000:05:02.0"]);
    assert_eq!(
        devices[1],
        serde_json::json!({
            "address": "0000:05:01.0",
            "short": "05:01.0",
            "vendor": "8086",
            "device": "100e",
            "driver": "e1000",
            "reserved": {
                "driver": "pci-stub",
                "rule": {
                    "name": "the edu, with its group",
                    "file": fx.policy().display().to_string(),
                    "line": header_line(RESERVE_POLICY, "the edu, with its group"),
                },
                "companion_of": "0000:05:02.0",
            },
            "host_modules": [{ "module": "e1000", "builtin": false, "source": "bound" }],
            "left_out": null,
        })
    );
    assert_eq!(devices[2]["host_modules"], serde_json::json!([]));
    assert_eq!(v["warnings"].as_array().map(Vec::len), Some(1));
}

/// A reserved device already on vfio-pci or pci-stub (held at the last boot, `ids=`): its host
/// driver is what modules.alias says would take it.
#[test]
fn a_device_already_held_is_resolved_through_modules_alias() {
    if !needs_root("boot_config::a_device_already_held_is_resolved_through_modules_alias") {
        return;
    }
    let fx = guest();
    fx.set_driver("0000:01:00.0", Some("pci-stub"));
    fx.set_driver("0000:05:01.0", Some("pci-stub"));
    fx.set_driver("0000:05:02.0", Some("vfio-pci"));
    let r = boot_config(&fx, &["--json"]);
    let v = r.code(0).stderr_empty().json();
    assert_eq!(
        v["devices"][0]["host_modules"],
        serde_json::json!([{ "module": "e1000e", "builtin": false, "source": "alias" }])
    );
    assert_eq!(v["devices"][0]["driver"], "pci-stub");
    assert_eq!(v["devices"][0]["reserved"]["driver"], "pci-stub");
    // vfio-pci's own `vfio_pci:` alias is no host driver.
    assert_eq!(v["devices"][2]["host_modules"], serde_json::json!([]));
    assert_eq!(v["file"], expected_file(&fx, false));
    boot_config(&fx, &[])
        .code(0)
        .stdout_has("  01:00.0  8086:10d3  pci-stub  e1000e (modules.alias)  pci-stub  ");
}

/// A host driver built into the kernel: no softdep line can order it, a note says so, and the
/// kernel command line still claims the device.
#[test]
fn a_built_in_host_driver_gets_a_note_instead_of_a_softdep() {
    if !needs_root("boot_config::a_built_in_host_driver_gets_a_note_instead_of_a_softdep") {
        return;
    }
    let policy = "version = 1

[[reserve]]
name    = \"the HD audio, for the VM's sound\"
devices = [{ address = \"00:1b.0\", vendor = \"8086\", device = \"293e\" }]
driver  = \"vfio-pci\"
";
    let fx = HostFixture::new(policy, &[]);
    fx.add_guest_devices();
    // This kernel has snd_hda_intel built in.
    let modules = fx.modules_dir();
    let aliases = FIXTURE_MODULES_ALIAS.replace(
        "alias pci:v00008086d0000293Esv*sd*bc*sc*i* snd_hda_intel\n",
        "",
    );
    std::fs::write(modules.join("modules.alias"), aliases).unwrap();
    std::fs::write(
        modules.join("modules.builtin.alias"),
        format!(
            "{FIXTURE_BUILTIN_ALIAS}alias pci:v00008086d0000293Esv*sd*bc*sc*i* snd_hda_intel\n"
        ),
    )
    .unwrap();
    let r = boot_config(&fx, &[]);
    r.code(0)
        .stderr_empty()
        .stdout_has(
            "  00:1b.0  8086:293e  snd_hda_intel  snd_hda_intel (bound now, built in)  vfio-pci  ",
        )
        .stdout_has(
            "# No reserved device has a host driver that is a loadable module.\n\nWith --ids",
        )
        .stdout_has("\n  vfio-pci.ids=8086:293e\n")
        .stdout_has(
            "note: snd_hda_intel is built into this kernel (modules.builtin.alias): no \
             modprobe.d line can order it, so only the kernel command line claims 00:1b.0 \
             before it does\n",
        );
    if r.stdout.contains("softdep snd_hda_intel") {
        r.fail("a built-in module gets no softdep line");
    }
    let v = boot_config(&fx, &["--json"]).code(0).json();
    assert_eq!(
        v["builtin_modules"],
        serde_json::json!([{ "module": "snd_hda_intel", "devices": ["0000:00:1b.0"] }])
    );
    assert_eq!(v["softdep_lines"], serde_json::json!([]));
}

/// Devices the helper would not hold are left out: the boot display (a guard), a device two
/// reservations disagree on. Ids reserved on both drivers are in no ids= line.
#[test]
fn guarded_conflicting_and_mixed_devices_are_left_out_with_a_warning() {
    if !needs_root("boot_config::guarded_conflicting_and_mixed_devices_are_left_out") {
        return;
    }
    let policy = "version = 1

[[reserve]]
name    = \"the display\"
devices = [{ address = \"00:02.0\", vendor = \"1234\", device = \"1111\" }]
driver  = \"vfio-pci\"

[[reserve]]
name    = \"the first edu on vfio-pci\"
devices = [{ address = \"00:06.0\", vendor = \"1234\", device = \"11e8\" }]
driver  = \"vfio-pci\"

[[reserve]]
name    = \"the second edu on pci-stub\"
devices = [{ address = \"05:02.0\", vendor = \"1234\", device = \"11e8\" }]
driver  = \"pci-stub\"

[[reserve]]
name    = \"the NIC on vfio-pci\"
devices = [{ address = \"01:00.0\" }]
driver  = \"vfio-pci\"

[[reserve]]
name    = \"every 82574L on pci-stub\"
devices = [{ vendor = \"8086\", device = \"10d3\" }]
driver  = \"pci-stub\"
";
    let fx = HostFixture::new(policy, &[]);
    fx.add_guest_devices();
    let r = boot_config(&fx, &[]);
    let path = fx.policy().display().to_string();
    r.code(0)
        .stderr_empty()
        .stdout_has("  00:02.0  1234:1111  bochs-drm  left out (see below)  vfio-pci  ")
        .stdout_has(
            "warning: 00:02.0 is left out: vfio-gated refuses to reserve it: boot VGA (00:02.0 \
             is the boot VGA device: the host console and firmware framebuffer use it. Use \
             another GPU for VMs)\n",
        )
        .stdout_has(&format!(
            "warning: 01:00.0 is left out: it is reserved by 'the NIC on vfio-pci' ({path}:18) \
             (vfio-pci) and 'every 82574L on pci-stub' ({path}:23) (pci-stub) with different \
             drivers, so it is held by neither (vfio-gate policy check)\n"
        ))
        .stdout_has(
            "warning: 1234:11e8 is reserved as 00:06.0 on vfio-pci and 05:02.0 on pci-stub: ids= \
             cannot tell these apart, so 1234:11e8 is in no ids= line (the reservations still \
             hold each on its own driver)\n",
        );
    for absent in [
        "softdep bochs",
        "ids=1234:1111",
        "ids=1234:11e8",
        "Kernel command line",
    ] {
        if r.stdout.contains(absent) {
            r.fail(&format!("{absent:?} should be left out"));
        }
    }
    let v = boot_config(&fx, &["--json"]).code(0).json();
    assert_eq!(v["conflicts"][0]["address"], "0000:01:00.0");
    assert_eq!(v["mixed_ids"][0]["ids"], "1234:11e8");
    let mixed = v["mixed_ids"][0]["devices"]
        .as_array()
        .expect("the devices of the mixed ids");
    assert!(
        mixed
            .iter()
            .all(|d| d["address"].is_string() && d["driver"].is_string()),
        "{mixed:?}"
    );
    assert_eq!(v["kernel_parameters"], serde_json::json!([]));
    assert!(v["devices"][0]["left_out"].is_string());
}

#[test]
fn no_reservations_says_so_and_how_to_add_one() {
    if !needs_root("boot_config::no_reservations_says_so_and_how_to_add_one") {
        return;
    }
    let fx = lab();
    let r = boot_config(&fx, &[]);
    r.code(0).stderr_empty();
    assert_eq!(
        r.stdout,
        format!(
            "Nothing to claim at boot: {} reserves no device. To hold a device from boot, add a \
             [[reserve]] to the policy (docs/policy.md, \"Reservations\"), check it with \
             vfio-gate policy check, then run vfio-gate boot-config again.\n",
            fx.policy().display()
        )
    );
    // --write writes nothing then.
    let dir = tempfile::tempdir().unwrap();
    let r = boot_config(
        &fx,
        &["--write", "--modprobe-d", dir.path().to_str().unwrap()],
    );
    r.code(0).stdout_has("Nothing was written.");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let v = boot_config(&fx, &["--json"]).code(0).json();
    assert_eq!(v["file"], serde_json::Value::Null);
    assert_eq!(v["devices"], serde_json::json!([]));
    // Reservations that match nothing here.
    let fx = HostFixture::new(
        "version = 1\n\n[[reserve]]\nname = \"a GPU not in this host\"\n\
         devices = [{ vendor = \"10de\", device = \"1b80\" }]\ndriver = \"vfio-pci\"\n",
        &[],
    );
    boot_config(&fx, &[])
        .code(0)
        .stdout_has("hold no device on this host (vfio-gate policy check ");
}

#[test]
fn a_refused_policy_or_missing_module_tables_say_what_to_do() {
    if !needs_root("boot_config::a_refused_policy_or_missing_module_tables") {
        return;
    }
    let fx = guest();
    let mut cmd = fx.command(&["boot-config"]);
    cmd.arg("--policy")
        .arg(fx.policy())
        .args(["--modules-dir", "/nonexistent/modules"]);
    run(cmd)
        .code(1)
        .stdout_empty()
        .stderr_has("vfio-gate: reading the module aliases in /nonexistent/modules: ")
        .stderr_has("Pass --modules-dir with the module directory of the kernel this host boots");
    let fx = HostFixture::new("version = 1\n[[reserve]]\nname = \"x\"\n", &[]);
    boot_config(&fx, &["--json"]).code(9).json_error("policy");
    assert!(Path::new(&fx.policy()).exists());
}
