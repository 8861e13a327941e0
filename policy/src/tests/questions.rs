//! Explain, report and lint on small fixtures.

use vfio_gate_protocol::Driver::{self, PciStub, VfioPci};
use vfio_gate_protocol::PciAddress;

use super::{FILE, Names, device, parse, subject};
use crate::{Decision, DeviceFacts, Finding, Policy, PolicyError, Severity, SlotName, Subject};

const POLICY: &str = r#"[[rule]]
name = "alice: the e1000e"
subjects = { users = ["alice"] }
devices = [{ address = "01:00.0", vendor = "8086", device = "10d3" }]
drivers = ["vfio-pci"]
companions = ["pci-stub"]

[[rule]]
name = "alice: any intel"
subjects = { users = ["alice"] }
devices = [{ vendor = "8086" }]
drivers = ["vfio-pci", "pci-stub"]

[[rule]]
name = "vm-users: edu"
subjects = { groups = ["vm-users"] }
devices = [{ vendor = "1234", device = "11e8" }]
drivers = ["vfio-pci", "pci-stub"]

[[deny]]
name = "never storage"
devices = [{ class = "01" }]

[[deny]]
name = "no stubbing intel"
devices = [{ vendor = "8086" }]
drivers = ["pci-stub"]
"#;

fn host() -> Vec<DeviceFacts> {
    vec![
        device("01:00.0", 0x8086, 0x10d3, 0x020000),
        device("02:00.0", 0x1af4, 0x1041, 0x020000),
        device("03:00.0", 0x8086, 0xf1a5, 0x010802), // an Intel NVMe: "any intel", but storage
        device("00:06.0", 0x1234, 0x11e8, 0x00ff00),
        device("05:02.0", 0x1234, 0x11e8, 0x00ff00),
    ]
}

fn at(address: &str) -> DeviceFacts {
    let a: PciAddress = address.parse().unwrap();
    host().into_iter().find(|d| d.address == a).unwrap()
}

fn names(refs: &[vfio_gate_protocol::RuleRef]) -> Vec<&str> {
    refs.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn explain_lists_every_applying_rule() {
    let p = parse(POLICY).unwrap();
    let alice = subject(1000, 1000, &[1100]);
    // (device, driver, allows, denies, allowed, companions)
    type Row = (
        &'static str,
        Driver,
        &'static [&'static str],
        &'static [&'static str],
        bool,
        &'static [Driver],
    );
    let table: [Row; 6] = [
        (
            "01:00.0",
            VfioPci,
            &["alice: the e1000e", "alice: any intel"],
            &[],
            true,
            &[PciStub],
        ),
        (
            "01:00.0",
            PciStub,
            &["alice: any intel"],
            &["no stubbing intel"],
            false,
            &[],
        ),
        (
            "03:00.0",
            VfioPci,
            &["alice: any intel"],
            &["never storage"],
            false,
            &[],
        ),
        (
            "03:00.0",
            PciStub,
            &["alice: any intel"],
            &["never storage", "no stubbing intel"],
            false,
            &[],
        ),
        ("00:06.0", PciStub, &["vm-users: edu"], &[], true, &[]),
        ("02:00.0", VfioPci, &[], &[], false, &[]),
    ];
    for (addr, driver, allows, denies, allowed, companions) in table {
        let d = at(addr);
        let e = p.explain(&alice, &d, driver);
        assert_eq!(names(&e.allows), allows, "{addr} {driver}");
        assert_eq!(names(&e.denies), denies, "{addr} {driver}");
        assert_eq!(e.decision, p.decide(&alice, &d, driver), "{addr} {driver}");
        assert_eq!(e.decision.is_allowed(), allowed, "{addr} {driver}");
        assert_eq!(e.companions, companions, "{addr} {driver}");
        if let Some(first) = e.denies.first() {
            assert_eq!(e.decision, Decision::Deny(Some(first.clone())));
        } else if let Some(first) = e.allows.first() {
            assert_eq!(e.decision, Decision::Allow(first.clone()));
        } else {
            assert_eq!(e.decision, Decision::Deny(None));
        }
    }
}

#[test]
fn explanation_as_json() {
    let p = parse(POLICY).unwrap();
    let e = p.explain(&subject(1000, 1000, &[]), &at("03:00.0"), VfioPci);
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "decision": {
                "allowed": false,
                "rule": { "name": "never storage", "file": FILE, "line": 20 }
            },
            "allows": [{ "name": "alice: any intel", "file": FILE, "line": 8 }],
            "denies": [{ "name": "never storage", "file": FILE, "line": 20 }],
            "companions": []
        })
    );
    let nothing = p.explain(&subject(5, 5, &[]), &at("02:00.0"), VfioPci);
    assert_eq!(
        serde_json::to_value(&nothing.decision).unwrap(),
        serde_json::json!({ "allowed": false, "rule": null })
    );
}

fn who() -> Vec<(String, Subject)> {
    vec![
        ("bob".into(), subject(1001, 1001, &[])),
        ("alice".into(), subject(1000, 1000, &[])),
        ("carol".into(), subject(1002, 1002, &[1100])),
    ]
}

#[test]
fn report_lists_every_permission_sorted() {
    let p = parse(POLICY).unwrap();
    let rows = p.report(&who(), &host());
    let got: Vec<(&str, String, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r.subject.as_str(),
                r.device.to_string(),
                r.driver.as_str(),
                r.rule.name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "alice",
                "0000:01:00.0".into(),
                "vfio-pci",
                "alice: the e1000e"
            ),
            ("carol", "0000:00:06.0".into(), "vfio-pci", "vm-users: edu"),
            ("carol", "0000:00:06.0".into(), "pci-stub", "vm-users: edu"),
            ("carol", "0000:05:02.0".into(), "vfio-pci", "vm-users: edu"),
            ("carol", "0000:05:02.0".into(), "pci-stub", "vm-users: edu"),
        ]
    );
    // Every row is what decide says, and nothing decide allows is missing.
    for (label, s) in who() {
        for d in host() {
            for driver in [VfioPci, PciStub] {
                let decided = p.decide(&s, &d, driver);
                let row = rows
                    .iter()
                    .find(|r| r.subject == label && r.device == d.address && r.driver == driver);
                assert_eq!(row.is_some(), decided.is_allowed());
                if let Some(row) = row {
                    assert_eq!(Some(&row.rule), decided.rule());
                }
            }
        }
    }
    let json = serde_json::to_value(&rows[0]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "subject": "alice",
            "device": "0000:01:00.0",
            "driver": "vfio-pci",
            "rule": { "name": "alice: the e1000e", "file": FILE, "line": 1 }
        })
    );
    assert!(p.report(&[], &host()).is_empty());
    assert!(p.report(&who(), &[]).is_empty());
}

// --- Lint ---------------------------------------------------------------------------------------

const LINTED: &str = r#"[[rule]]
name = "alice: by address"
subjects = { users = ["alice", "carol"] }
devices = [{ address = "00:06.0" }, { address = "05:*" }]
drivers = ["vfio-pci"]

[[rule]]
name = "anyone: edu"
subjects = { users = ["*"] }
devices = [{ vendor = "1234", device = "11e8" }]
drivers = ["vfio-pci"]

[[rule]]
name = "vm-users: NICs"
subjects = { groups = ["vm-users"] }
devices = [{ class = "02", vendor = "8086" }]
drivers = ["vfio-pci"]

[[rule]]
name = "bob: the nvme"
subjects = { users = ["bob"] }
devices = [{ address = "03:00.0", vendor = "8086" }]
drivers = ["vfio-pci", "pci-stub"]

[[rule]]
name = "bob: a card we sold"
subjects = { uids = [1001] }
devices = [{ vendor = "10de", device = "1b80" }]
drivers = ["vfio-pci"]

[[rule]]
name = "alice: GPUs by class"
subjects = { users = ["alice"] }
devices = [{ class = "0300", physical_slot = "7" }]
drivers = ["vfio-pci"]

[[deny]]
name = "never storage"
devices = [{ class = "01" }]

[[deny]]
name = "no sound cards"
devices = [{ class = "0403" }]
subjects = { groups = ["nosuch"] }

[[deny]]
name = "alice and bob never stub"
subjects = { users = ["alice", "bob"] }
devices = [{ address = "*:*:*.*" }]
drivers = ["pci-stub"]
"#;

/// (severity, line, rule, text the message contains)
type Want = (Severity, u32, Option<&'static str>, &'static str);

fn check(findings: &[Finding], want: &[Want]) {
    let shown: Vec<String> = findings.iter().map(ToString::to_string).collect();
    assert_eq!(findings.len(), want.len(), "{shown:#?}");
    for (f, (severity, line, rule, needle)) in findings.iter().zip(want) {
        assert_eq!(
            (f.severity, f.line, f.rule.as_deref()),
            (*severity, *line, *rule),
            "{shown:#?}"
        );
        assert!(f.message.contains(needle), "{f} lacks {needle:?}");
    }
}

#[test]
fn lint_against_a_host() {
    use Severity::*;
    let p = parse(LINTED).unwrap();
    let findings = p.lint(&host());
    check(
        &findings,
        &[
            (
                Warning,
                1,
                Some("alice: by address"),
                "pin vendor:device too: addresses move when hardware changes",
            ),
            (
                Warning,
                3,
                Some("alice: by address"),
                "user \"carol\" in rule \"alice: by address\" does not exist",
            ),
            (
                Warning,
                7,
                Some("anyone: edu"),
                "grants to every user (users = [\"*\"])",
            ),
            (
                Warning,
                13,
                Some("vm-users: NICs"),
                "grants network controllers (class 02): 0000:01:00.0 [8086:10d3]; a VM given a NIC",
            ),
            (
                Warning,
                19,
                Some("bob: the nvme"),
                "can never grant anything on this host: deny wins, and 'never storage' (/etc/vfio-gate/policy.toml:37) covers every device it matches for every driver it grants (vfio-pci, pci-stub)",
            ),
            (
                Warning,
                25,
                Some("bob: a card we sold"),
                "matches no device on this host",
            ),
            (
                Warning,
                31,
                Some("alice: GPUs by class"),
                "grants display controllers (class 03) by its class matcher (none on this host)",
            ),
            (
                Warning,
                31,
                Some("alice: GPUs by class"),
                "matches no device on this host",
            ),
            (
                Warning,
                41,
                Some("no sound cards"),
                "rule \"no sound cards\" applies to nobody",
            ),
            (
                Info,
                41,
                Some("no sound cards"),
                "deny \"no sound cards\" matches no device on this host",
            ),
            (
                Warning,
                44,
                Some("no sound cards"),
                "group \"nosuch\" in rule \"no sound cards\" does not exist on this host, so this deny cannot apply to it",
            ),
        ],
    );
    // Sorted by file and line.
    assert!(findings.windows(2).all(|w| w[0].line <= w[1].line));
    assert_eq!(
        findings[0].to_string(),
        format!("{FILE}:1: warning: {}", findings[0].message)
    );
    let json = serde_json::to_value(&findings[9]).unwrap();
    assert_eq!(json["severity"], "info");
    assert_eq!(json["line"], 41);
    assert_eq!(json["rule"], "no sound cards");
}

#[test]
fn lint_without_a_host_skips_the_host_checks() {
    use Severity::*;
    let p = parse(LINTED).unwrap();
    check(
        &p.lint(&[]),
        &[
            (Info, 0, None, "no host devices were given"),
            (Warning, 1, Some("alice: by address"), "by address alone"),
            (Warning, 3, Some("alice: by address"), "\"carol\""),
            (Warning, 7, Some("anyone: edu"), "every user"),
            (
                Warning,
                13,
                Some("vm-users: NICs"),
                "network controllers (class 02) by its class matcher",
            ),
            (
                Warning,
                31,
                Some("alice: GPUs by class"),
                "display controllers",
            ),
            (Warning, 41, Some("no sound cards"), "applies to nobody"),
            (Warning, 44, Some("no sound cards"), "\"nosuch\""),
        ],
    );
}

#[test]
fn shadowing_needs_subjects_covered_and_every_pair_denied() {
    let text = |deny: &str| {
        format!(
            r#"[[rule]]
name = "alice: intel"
subjects = {{ users = ["alice"], gids = [1100] }}
devices = [{{ vendor = "8086", device = "10d3" }}, {{ vendor = "8086", class = "01" }}]
drivers = ["vfio-pci", "pci-stub"]

{deny}"#
        )
    };
    let shadowed = |deny: &str| {
        parse(&text(deny))
            .unwrap()
            .lint(&host())
            .iter()
            .any(|f| f.message.contains("can never grant anything"))
    };
    // (deny rules, shadowed)
    let cases = [
        ("", false),
        // Everyone, every driver, every matched device.
        (
            "[[deny]]\nname = \"d\"\ndevices = [{ vendor = \"8086\" }]\n",
            true,
        ),
        // Two denies between them.
        (
            "[[deny]]\nname = \"d\"\ndevices = [{ class = \"01\" }]\n\
             [[deny]]\nname = \"e\"\ndevices = [{ address = \"01:00.0\" }]\n",
            true,
        ),
        // Per driver, between them.
        (
            "[[deny]]\nname = \"d\"\ndevices = [{ vendor = \"8086\" }]\ndrivers = [\"vfio-pci\"]\n\
             [[deny]]\nname = \"e\"\ndevices = [{ vendor = \"8086\" }]\ndrivers = [\"pci-stub\"]\n",
            true,
        ),
        // One driver left over.
        (
            "[[deny]]\nname = \"d\"\ndevices = [{ vendor = \"8086\" }]\ndrivers = [\"vfio-pci\"]\n",
            false,
        ),
        // One device left over (the NVMe is covered, the NIC is not).
        (
            "[[deny]]\nname = \"d\"\ndevices = [{ class = \"01\" }]\n",
            false,
        ),
        // Subjects: a superset of uids and gids covers.
        (
            "[[deny]]\nname = \"d\"\ndevices = [{ vendor = \"8086\" }]\nsubjects = { uids = [1000, 5], gids = [1100] }\n",
            true,
        ),
        // Only the uid: the gid 1100 members are still granted.
        (
            "[[deny]]\nname = \"d\"\ndevices = [{ vendor = \"8086\" }]\nsubjects = { users = [\"alice\"] }\n",
            false,
        ),
    ];
    for (deny, want) in cases {
        assert_eq!(shadowed(deny), want, "{deny}");
    }
}

#[test]
fn lint_orders_files_by_load_order() {
    let p = Policy::parse_files(
        &[
            (
                "/etc/vfio-gate/policy.toml",
                "[[rule]]\nname = \"m\"\nsubjects = { users = [\"alice\"] }\ndevices = [{ address = \"01:00.0\" }]\ndrivers = [\"vfio-pci\"]\n",
            ),
            (
                "/etc/vfio-gate/policy.d/10-a.toml",
                "[[rule]]\nname = \"a\"\nsubjects = { users = [\"*\"] }\ndevices = [{ vendor = \"1234\" }]\ndrivers = [\"vfio-pci\"]\n",
            ),
        ],
        &Names,
    )
    .unwrap();
    let findings = p.lint(&host());
    let mut files: Vec<&str> = findings.iter().map(|f| f.file.as_str()).collect();
    files.dedup();
    // "policy.d/..." sorts before "policy.toml" as text; load order puts the main file first.
    assert_eq!(
        files,
        [
            "/etc/vfio-gate/policy.toml",
            "/etc/vfio-gate/policy.d/10-a.toml"
        ]
    );
}

#[test]
fn a_slot_pinned_rule_is_not_address_only() {
    let p = parse(
        "[[rule]]\nname = \"slot 3\"\nsubjects = { users = [\"alice\"] }\n\
         devices = [{ address = \"01:00.0\", physical_slot = \"3\" }]\ndrivers = [\"vfio-pci\"]\n",
    )
    .unwrap();
    let mut nic = device("01:00.0", 0x1234, 0x11e8, 0x00ff00);
    nic.physical_slot = SlotName::new("3");
    assert!(p.lint(&[nic]).is_empty(), "{:?}", p.lint(&[nic]));
}

#[test]
fn refusals_as_findings() {
    let err = parse("[[rule]]\nname = 3\n").unwrap_err();
    let f = Finding::from_error(&err);
    assert_eq!(
        (f.severity, f.file.as_str(), f.line),
        (Severity::Error, FILE, 2)
    );
    assert!(f.message.starts_with("invalid type"), "{}", f.message);
    assert_eq!(f.to_string(), format!("{FILE}:2: error: {}", f.message));
    let err = PolicyError::Symlink {
        path: "/etc/vfio-gate/policy.d/x.toml".into(),
    };
    let f = Finding::from_error(&err);
    assert_eq!(
        (f.file.as_str(), f.line),
        ("/etc/vfio-gate/policy.d/x.toml", 0)
    );
    assert_eq!(f.message, err.to_string());
}
