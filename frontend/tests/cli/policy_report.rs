//! `vfio-gate policy report`: who may bind what, through which rule.

use crate::fixtures::*;
use crate::util::{self, HostFixture, header_line, needs_root, run};

fn report(fx: &HostFixture, extra: &[&str]) -> util::Run {
    let mut cmd = fx.command(&["policy", "report"]);
    cmd.arg("--policy").arg(fx.policy()).args(extra);
    run(cmd)
}

#[test]
fn every_grant_by_user_then_device_with_its_rule_and_guard() {
    if !needs_root("policy_report::every_grant_by_user_then_device_with_its_rule_and_guard") {
        return;
    }
    let fx = lab();
    let r = report(&fx, &[]);
    r.code(0).stderr_empty();
    let p = fx.policy().display().to_string();
    let at = |name| format!("{p}:{}", header_line(LAB_POLICY, name));
    let rows: Vec<Vec<String>> = r
        .stdout
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty() && !l.contains("sha256"))
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect();
    let row = |cells: &[&str]| cells.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
    let expected = vec![
        row(&[
            "alice",
            "1000",
            "00:02.0",
            "1234:1111",
            "Technical Corp. device 1111",
            "vfio-pci",
            "alice: the display",
            &at("alice: the display"),
            "refused: boot VGA",
        ]),
        row(&[
            "alice",
            "1000",
            "01:00.0",
            "8086:10d3",
            "82574L Gigabit Network Connection",
            "vfio-pci",
            "vm-users: the test NIC",
            &at("vm-users: the test NIC"),
            "-",
        ]),
        row(&[
            "alice",
            "1000",
            "01:00.0",
            "8086:10d3",
            "82574L Gigabit Network Connection",
            "pci-stub",
            "vm-users: the test NIC",
            &at("vm-users: the test NIC"),
            "-",
        ]),
        row(&[
            "alice",
            "1000",
            "05:02.0",
            "1234:11e8",
            "QEMU edu device",
            "vfio-pci",
            "vm-users: the edu device",
            &at("vm-users: the edu device"),
            "-",
        ]),
        row(&[
            "bob",
            "1001",
            "01:00.0",
            "8086:10d3",
            "82574L Gigabit Network Connection",
            "vfio-pci",
            "vm-users: the test NIC",
            &at("vm-users: the test NIC"),
            "-",
        ]),
        row(&[
            "bob",
            "1001",
            "05:02.0",
            "1234:11e8",
            "QEMU edu device",
            "vfio-pci",
            "vm-users: the edu device",
            &at("vm-users: the edu device"),
            "-",
        ]),
        row(&[
            "uid 5003",
            "5003",
            "05:02.0",
            "1234:11e8",
            "QEMU edu device",
            "vfio-pci",
            "dave: by uid, he is in LDAP only",
            &at("dave: by uid, he is in LDAP only"),
            "-",
        ]),
    ];
    if rows != expected {
        r.fail(&format!("expected rows\n{expected:#?}\ngot\n{rows:#?}"));
    }
    r.stdout_has(
        "7 permissions for 3 users (1 refused now by a built-in guard: vfio-gate explain ADDR \
             --policy PATH says why);",
    );
    let header = r.stdout.lines().next().unwrap_or_default();
    for h in [
        "USER", "UID", "DEVICE", "IDS", "NAME", "DRIVER", "RULE", "WHERE", "GUARD",
    ] {
        if !header.contains(h) {
            r.fail(&format!("the header lacks {h}"));
        }
    }
}

#[test]
fn json_rows_carry_the_ids_the_rule_and_the_guard() {
    if !needs_root("policy_report::json_rows_carry_the_ids_the_rule_and_the_guard") {
        return;
    }
    let fx = lab();
    let r = report(&fx, &["--json"]);
    r.code(0).stderr_empty();
    let v = r.json();
    let rows = v["rows"].as_array().unwrap_or_else(|| r.fail("no rows"));
    assert_eq!(rows.len(), 7);
    let display = &rows[0];
    assert_eq!(display["user"], "alice");
    assert_eq!(display["uid"], 1000);
    assert_eq!(
        display["device"],
        serde_json::json!({
            "address": "0000:00:02.0",
            "short": "00:02.0",
            "vendor": "1234",
            "device": "1111",
            "class": "030000",
        })
    );
    assert_eq!(display["driver"], "vfio-pci");
    assert_eq!(display["rule"]["name"], "alice: the display");
    assert_eq!(display["rule"]["file"], fx.policy().display().to_string());
    assert_eq!(
        display["rule"]["line"],
        header_line(LAB_POLICY, "alice: the display")
    );
    assert_eq!(display["guard"]["guard"], "boot_vga");
    assert!(display["guard"]["reason"].is_string());
    assert!(rows[1]["guard"].is_null());
    assert!(rows[1]["guard_error"].is_null());
    // Nobody is granted storage: the deny wins over alice's NVMe rule.
    assert!(
        rows.iter()
            .all(|r| r["device"]["address"] != "0000:03:00.0")
    );
    // bob's drop-in fences pci-stub off for him only.
    assert!(
        rows.iter()
            .any(|r| r["user"] == "alice" && r["driver"] == "pci-stub")
    );
    assert!(
        rows.iter()
            .all(|r| !(r["user"] == "bob" && r["driver"] == "pci-stub"))
    );
    assert_eq!(v["policy"]["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(v["policy"]["path"], fx.policy().display().to_string());
    assert_eq!(
        v["policy"]["files"][1]["path"],
        fx.drop_in_dir().join("50-bob.toml").display().to_string()
    );
}

#[test]
fn a_policy_that_grants_nothing_says_so_and_a_refused_one_is_status_9() {
    if !needs_root("policy_report::a_policy_that_grants_nothing_says_so") {
        return;
    }
    let fx = HostFixture::new("version = 1\n", &[]);
    let r = report(&fx, &[]);
    r.code(0).stderr_empty();
    if !r
        .stdout
        .starts_with("The policy grants nothing to anyone on this host; ")
    {
        r.fail("expected the empty report");
    }
    let fx = HostFixture::new("version = 2\n", &[]);
    report(&fx, &[]).code(9).stdout_empty().stderr_has(&format!(
        "vfio-gate: the policy is refused: {}:1: policy version 2 is not supported",
        fx.policy().display()
    ));
}
