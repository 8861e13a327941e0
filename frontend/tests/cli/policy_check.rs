//! `vfio-gate policy check`: findings with file:line, exit 0 / 8 / 9.

use crate::fixtures::*;
use crate::util::{self, HostFixture, header_line, needs_root, run, vfio_gate};

const CLEAN: &str = r#"version = 1

[[rule]]
name       = "vm-users: the edu device"
subjects   = { groups = ["vm-users"] }
devices    = [{ vendor = "1234", device = "11e8" }]
drivers    = ["vfio-pci"]
companions = ["pci-stub"]

[[deny]]
name    = "never storage"
devices = [{ class = "01" }]
"#;

fn check(fx: &HostFixture, extra: &[&str]) -> util::Run {
    let mut cmd = fx.command(&["policy", "check"]);
    cmd.arg(fx.policy()).args(extra);
    run(cmd)
}

#[test]
fn a_clean_policy_exits_0() {
    if !needs_root("policy_check::a_clean_policy_exits_0") {
        return;
    }
    let fx = HostFixture::new(CLEAN, &[]);
    let r = check(&fx, &[]);
    r.code(0).stderr_empty();
    let expected = format!(
        "policy check: {} clean: 0 warnings, 0 notes; sha256 ",
        fx.policy().display()
    );
    if !r.stdout.starts_with(&expected) || r.stdout.lines().count() != 1 {
        r.fail(&format!("expected one line: {expected}..."));
    }
    // Without the host: a note that the host checks were skipped, still status 0.
    let r = check(&fx, &["--no-host"]);
    r.code(0).stdout_has(&format!(
        "{}: info: no host devices were given",
        fx.policy().display()
    ));
    r.stdout_has("clean: 0 warnings, 1 note;");
}

#[test]
fn warnings_exit_8_with_file_line_and_rule() {
    if !needs_root("policy_check::warnings_exit_8_with_file_line_and_rule") {
        return;
    }
    let fx = lab();
    let r = check(&fx, &[]);
    r.code(8).stderr_empty();
    let at = |name| {
        format!(
            "{}:{}: warning: ",
            fx.policy().display(),
            header_line(LAB_POLICY, name)
        )
    };
    r.stdout_has(&format!(
        "{}rule \"vm-users: the test NIC\" grants network controllers (class 02): \
             0000:01:00.0 [8086:10d3]",
        at("vm-users: the test NIC")
    ))
    .stdout_has(&format!(
        "{}rule \"alice: the display\" grants display controllers (class 03)",
        at("alice: the display")
    ))
    .stdout_has(&format!(
        "{}rule \"alice: the NVMe\" can never grant anything on this host",
        at("alice: the NVMe")
    ))
    .stdout_has(&format!(
        "{} and 1 drop-in loads: 3 warnings, 0 notes",
        fx.policy().display()
    ));
    // Lines come sorted by file and line.
    let lines: Vec<u32> = r
        .stdout
        .lines()
        .filter_map(|l| l.split(':').nth(1)?.parse().ok())
        .collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "{}", r.stdout);

    let r = check(&fx, &["--json"]);
    r.code(8);
    let v = r.json();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["exit_code"], 8);
    assert_eq!(v["loaded"], true);
    assert_eq!(v["counts"]["warning"], 3);
    assert_eq!(v["counts"]["error"], 0);
    assert_eq!(v["policy"]["path"], fx.policy().display().to_string());
    assert_eq!(v["policy"]["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(v["policy"]["files"].as_array().map(Vec::len), Some(2));
    let nic = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "vm-users: the test NIC")
        .unwrap_or_else(|| r.fail("no finding for the NIC rule"));
    assert_eq!(nic["severity"], "warning");
    assert_eq!(
        nic["line"],
        header_line(LAB_POLICY, "vm-users: the test NIC")
    );
    assert_eq!(nic["file"], fx.policy().display().to_string());
}

#[test]
fn refused_policies_exit_9_naming_the_file_and_line() {
    if !needs_root("policy_check::refused_policies_exit_9_naming_the_file_and_line") {
        return;
    }
    let rule = |body: &str| {
        format!("[[rule]]\nname = \"r\"\nsubjects = {{ users = [\"alice\"] }}\n{body}")
    };
    /// The main file, the drop-ins, the file the error is in, its line, part of the message.
    type Case = (
        String,
        Vec<(&'static str, String)>,
        &'static str,
        u32,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            rule("devices = [{ vendor = \"8086\" }]\ndriver = [\"vfio-pci\"]\n"),
            vec![],
            "policy.toml",
            5,
            "unknown field `driver`",
        ),
        (
            rule("devices = [{}]\ndrivers = [\"vfio-pci\"]\n"),
            vec![],
            "policy.toml",
            4,
            "empty device matcher",
        ),
        (
            rule("devices = [{ vendor = \"8086\" }]\ndrivers = [\"vfio\"]\n"),
            vec![],
            "policy.toml",
            5,
            "\"vfio\" is not a driver vfio-gate binds to",
        ),
        (
            rule("devices = [{ vendor = \"8086\" }]\ndrivers = [\"vfio-pci\"]\n"),
            vec![(
                "20-dup.toml",
                "\n[[deny]]\nname = \"r\"\ndevices = [{ class = \"01\" }]\n".to_owned(),
            )],
            "policy.d/20-dup.toml",
            3,
            "the rule name \"r\" is already used at",
        ),
        (
            "version = 1\n".to_owned(),
            vec![("30-broken.toml", "[[deny]\nname = \"x\"\n".to_owned())],
            "policy.d/30-broken.toml",
            1,
            "TOML syntax error",
        ),
    ];
    for (main, drop_ins, file, line, message) in cases {
        let drop_ins: Vec<(&str, &str)> = drop_ins.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let fx = HostFixture::new(&main, &drop_ins);
        let r = check(&fx, &[]);
        let path = fx.root().join("etc/vfio-gate").join(file);
        r.code(9)
            .stdout_has(&format!("{}:{line}: error: ", path.display()))
            .stdout_has(message)
            .stdout_has("is refused (1 error): the helper would serve nothing with it");
        let v = run({
            let mut c = fx.command(&["policy", "check", "--json"]);
            c.arg(fx.policy());
            c
        })
        .code(9)
        .json();
        assert_eq!(
            (v["loaded"].clone(), v["counts"]["error"].clone()),
            (false.into(), 1.into())
        );
        assert_eq!(v["policy"]["sha256"], serde_json::Value::Null);
        assert_eq!(v["policy"]["files"], serde_json::json!([]));
        assert_eq!(v["findings"][0]["line"], line);
        assert_eq!(v["findings"][0]["severity"], "error");
    }
}

#[test]
fn unsafe_files_are_refused_with_the_command_that_fixes_them() {
    if !needs_root("policy_check::unsafe_files_are_refused_with_the_command_that_fixes_them") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    // A world-writable drop-in.
    let fx = lab();
    let drop_in = fx.drop_in_dir().join("50-bob.toml");
    std::fs::set_permissions(&drop_in, std::fs::Permissions::from_mode(0o646)).unwrap();
    check(&fx, &[])
        .code(9)
        .stdout_has(&format!("{}: error: ", drop_in.display()))
        .stdout_has(&format!("run `chmod go-w {}`", drop_in.display()));
    // A drop-in that is a symlink to a file outside.
    let fx = lab();
    let outside = fx.root().join("elsewhere.toml");
    fx.write(&outside, BOB_DROP_IN);
    std::fs::remove_file(drop_in_of(&fx)).unwrap();
    std::os::unix::fs::symlink(&outside, drop_in_of(&fx)).unwrap();
    check(&fx, &[])
        .code(9)
        .stdout_has(&format!("{}: error: ", drop_in_of(&fx).display()))
        .stdout_has("is a symbolic link, which is not followed");
    // A main file owned by someone else.
    let fx = lab();
    std::os::unix::fs::chown(fx.policy(), Some(1000), Some(1000)).unwrap();
    check(&fx, &[])
        .code(9)
        .stdout_has("is owned by uid 1000, not root")
        .stdout_has(&format!("chown root:root {}", fx.policy().display()));
}

fn drop_in_of(fx: &HostFixture) -> std::path::PathBuf {
    fx.drop_in_dir().join("50-bob.toml")
}

#[test]
fn a_policy_owned_by_an_ordinary_user_is_refused() {
    // Runs as anyone: as root the file is handed to uid 1000 first, otherwise it is ours.
    let fx = HostFixture::new(CLEAN, &[]);
    if util::is_root() {
        std::os::unix::fs::chown(fx.policy(), Some(1000), None).unwrap();
    }
    check(&fx, &["--no-host"])
        .code(9)
        .stdout_has(&format!("{}: error: ", fx.policy().display()))
        .stdout_has(", not root, so that user could grant themselves any device");
}

#[test]
fn a_missing_file_is_an_error_and_an_unreadable_host_is_status_1() {
    let mut cmd = vfio_gate();
    cmd.args(["policy", "check", "/nonexistent/policy.toml"]);
    run(cmd)
        .code(9)
        .stdout_has("/nonexistent/policy.toml: error: cannot open the policy file");
    if !needs_root("policy_check::an_unreadable_host_is_status_1") {
        return;
    }
    let fx = HostFixture::new(CLEAN, &[]);
    let mut cmd = vfio_gate();
    cmd.args(["policy", "check"])
        .arg(fx.policy())
        .args(["--sysfs-root", "/nonexistent/sys", "--etc-root"])
        .arg(fx.root());
    run(cmd)
        .code(1)
        .stdout_empty()
        .stderr_has("vfio-gate: reading the PCI devices under /nonexistent/sys")
        .stderr_has("--no-host");
}

#[test]
fn help_documents_the_exit_statuses() {
    let mut cmd = vfio_gate();
    cmd.args(["policy", "check", "--help"]);
    run(cmd)
        .code(0)
        .stdout_has("Exit status: 0 clean (notes at most), 8 warnings, 9 errors");
    let mut cmd = vfio_gate();
    cmd.arg("--help");
    run(cmd)
        .code(0)
        .stdout_has("  8  policy check: the policy loads, with warnings")
        .stdout_has("  9  the policy is refused");
}

/// What `policy check` adds from the host view for reservations: the companions each holds.
#[test]
fn reservations_list_their_companions_on_this_host() {
    if !needs_root("policy_check::reservations_list_their_companions_on_this_host") {
        return;
    }
    let fx = HostFixture::new(RESERVE_POLICY, &[]);
    let r = check(&fx, &[]);
    r.code(0).stderr_empty();
    let policy = fx.policy().display().to_string();
    let nic = header_line(RESERVE_POLICY, "the test NIC, held from boot");
    let edu = header_line(RESERVE_POLICY, "the edu, with its group");
    let expected = format!(
        "\
{policy}:{nic}: info: reservation \"the test NIC, held from boot\" holds 0000:01:00.0 [8086:10d3] on pci-stub from boot
{policy}:{edu}: info: reservation \"the edu, with its group\" holds 0000:05:02.0 [1234:11e8] on vfio-pci from boot, and the other endpoints of their IOMMU groups on pci-stub
{policy}:{edu}: info: reservation \"the edu, with its group\" holds the other endpoints of its devices' IOMMU groups on pci-stub from boot: 0000:05:01.0 [8086:100e] as a companion of 0000:05:02.0
policy check: {policy} clean: 0 warnings, 3 notes; sha256 "
    );
    if !r.stdout.starts_with(&expected) {
        r.fail(&format!("expected\n{expected}"));
    }
    // Without the host, nothing about what they hold.
    let r = check(&fx, &["--no-host"]);
    if r.code(0).stdout.contains("companion of") {
        r.fail("--no-host reads no IOMMU group");
    }
}

/// Companion holds that disagree: a third endpoint in group 11, reserved with its group on
/// vfio-pci, while the edu's reservation puts the group on pci-stub.
#[test]
fn companion_holds_that_disagree_are_a_warning_at_the_first_reservation() {
    if !needs_root("policy_check::companion_holds_that_disagree_are_a_warning") {
        return;
    }
    let policy = format!(
        "{RESERVE_POLICY}
[[reserve]]
name       = \"a second 82574L, with its group\"
devices    = [{{ address = \"05:03.0\", vendor = \"8086\", device = \"10d3\" }}]
driver     = \"vfio-pci\"
companions = \"vfio-pci\"
"
    );
    let fx = HostFixture::new(&policy, &[]);
    fx.add_device(("0000:05:03.0", 0x8086, 0x10d3, 0x020000, None, 11, 0));
    let r = check(&fx, &[]);
    let path = fx.policy().display().to_string();
    let edu = header_line(&policy, "the edu, with its group");
    let second = header_line(&policy, "a second 82574L, with its group");
    r.code(8).stdout_has(&format!(
        "{path}:{edu}: warning: 0000:05:01.0 [8086:100e] is held as a companion by 'the edu, \
         with its group' ({path}:{edu}) (on pci-stub, as a companion of 0000:05:02.0) and 'a \
         second 82574L, with its group' ({path}:{second}) (on vfio-pci, as a companion of \
         0000:05:03.0) with different drivers, so it is held by neither: give these \
         reservations the same companions driver, or name the device in a reservation of its \
         own (which wins over companion holds)\n"
    ));
    // 05:02.0 is held as a companion of 05:03.0 no more than 05:03.0 of 05:02.0: each is named.
    if r.stdout
        .contains("0000:05:02.0 [1234:11e8] is held as a companion")
    {
        r.fail("a named device is not a companion");
    }
    let v = run({
        let mut c = fx.command(&["policy", "check", "--json"]);
        c.arg(fx.policy());
        c
    })
    .code(8)
    .json();
    let conflict = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["severity"] == "warning")
        .cloned()
        .unwrap();
    assert_eq!(conflict["rule"], "the edu, with its group");
    assert_eq!(conflict["line"], edu);
}

/// A reservation of a device a built-in guard protects (the boot display, a bridge) is a
/// warning: the helper will not hold it.
#[test]
fn a_reserved_device_a_guard_protects_is_a_warning() {
    if !needs_root("policy_check::a_reserved_device_a_guard_protects_is_a_warning") {
        return;
    }
    let policy = "version = 1

[[reserve]]
name    = \"the display\"
devices = [{ address = \"00:02.0\", vendor = \"1234\", device = \"1111\" }]
driver  = \"vfio-pci\"

[[reserve]]
name    = \"the bridge\"
devices = [{ address = \"04:00.0\", vendor = \"1b36\", device = \"000e\" }]
driver  = \"pci-stub\"
";
    let fx = HostFixture::new(policy, &[]);
    let r = check(&fx, &[]);
    let path = fx.policy().display().to_string();
    r.code(8)
        .stdout_has(&format!(
            "{path}:3: warning: reservation \"the display\" matches 0000:00:02.0 [1234:1111], \
             which a built-in guard protects (boot VGA: 00:02.0 is the boot VGA device: the host \
             console and firmware framebuffer use it. Use another GPU for VMs): vfio-gated will \
             refuse to reserve it; take it out of the reservation's matchers\n"
        ))
        .stdout_has(&format!(
            "{path}:8: warning: reservation \"the bridge\" matches 0000:04:00.0 [1b36:000e], \
             which a built-in guard protects (not an endpoint: 04:00.0 is a "
        ));
    // Findings stay sorted by line.
    let lines: Vec<u32> = r
        .stdout
        .lines()
        .filter_map(|l| l.split(':').nth(1)?.parse().ok())
        .collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "{}", r.stdout);
    // Without the host, only the lint's "no rule grants anything".
    let r = check(&fx, &["--no-host"]);
    if r.code(8).stdout.contains("guard") {
        r.fail("--no-host checks no guard");
    }
}
