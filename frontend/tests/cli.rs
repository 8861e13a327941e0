//! The `vfio-gate` binary against a fake helper: what it sends, what it prints, how it exits.

mod util;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use util::{FakeHelper, Reply, against, pci_ids_fixture, run, vfio_gate};
use vfio_gate_protocol::{
    BindReport, DeviceInfo, Driver, Guard, Holder, MemberKind, PROTOCOL_VERSION, PciAddress, Plan,
    PlanStep, ReleaseReport, Request, Response, RestoredDevice, RuleRef, StepAction, WireError,
};

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn rule() -> RuleRef {
    RuleRef {
        name: "lab NIC for vm-users".into(),
        file: "/etc/vfio-gate/policy.toml".into(),
        line: 12,
    }
}

fn devices() -> Vec<DeviceInfo> {
    let dev = |a: &str, vendor, device, class, driver: Option<&str>, group| DeviceInfo {
        address: addr(a),
        vendor,
        device,
        subsystem_vendor: vendor,
        subsystem_device: 0,
        class,
        driver: driver.map(str::to_owned),
        driver_override: None,
        iommu_group: group,
        allowed: vec![],
        holder: None,
    };
    let mut nic = dev(
        "0000:01:00.0",
        0x8086,
        0x10d3,
        0x020000,
        Some("e1000e"),
        Some(8),
    );
    nic.allowed = vec![Driver::VfioPci];
    let nvme = dev(
        "0000:03:00.0",
        0x1b36,
        0x0010,
        0x010802,
        Some("nvme"),
        Some(10),
    );
    let mut edu = dev(
        "0000:05:02.0",
        0x1234,
        0x11e8,
        0x00ff00,
        Some("vfio-pci"),
        Some(11),
    );
    edu.allowed = vec![Driver::VfioPci, Driver::PciStub];
    edu.driver_override = Some("vfio-pci".into());
    edu.holder = Some(Holder {
        uid: 4242,
        driver: Driver::VfioPci,
        since: 1_700_000_000,
    });
    let odd = dev("0001:00:00.0", 0xabcd, 0x0001, 0x120000, None, None);
    // Out of order on purpose: the table sorts by address.
    vec![edu, odd, nic, nvme]
}

mod list {
    use super::*;

    #[test]
    fn prints_a_table_with_names_from_the_pci_id_database() {
        let fake = FakeHelper::answering(Response::Devices(devices()));
        let mut cmd = against(&fake, &["list", "--pci-ids"]);
        cmd.arg(pci_ids_fixture());
        let r = run(cmd);
        r.code(0).stderr_empty();
        let lines: Vec<&str> = r.stdout.lines().collect();
        let expected = [
            "ADDRESS       IDS        CLASS                           DRIVER    GROUP  ALLOWED            HOLDER  NAME",
            "01:00.0       8086:10d3  Ethernet controller             e1000e    8      vfio-pci           -       Intel Corporation 82574L Gigabit Network Connection",
            "03:00.0       1b36:0010  Non-Volatile memory controller  nvme      10     -                  -       Red Hat, Inc. device 0010",
            "05:02.0       1234:11e8  Unclassified device             vfio-pci  11     vfio-pci,pci-stub  4242    Technical Corp. QEMU edu device",
            "0001:00:00.0  abcd:0001  Processing accelerators         -         -      -                  -       -",
        ];
        if lines != expected {
            r.fail(&format!("expected the table\n{}", expected.join("\n")));
        }
        assert_eq!(fake.requests(), vec![Request::List]);
    }

    #[test]
    fn without_a_pci_id_database_shows_ids_only() {
        let fake = FakeHelper::answering(Response::Devices(devices()));
        let r = run(against(
            &fake,
            &["list", "--pci-ids", "/nonexistent/pci.ids"],
        ));
        r.code(0).stderr_empty();
        let header = r.stdout.lines().next().unwrap_or_default();
        if header.contains("NAME") || !header.ends_with("HOLDER") {
            r.fail("the NAME column should be left out");
        }
        r.stdout_has("01:00.0       8086:10d3  Network controller");
    }

    #[test]
    fn json_is_the_device_list_with_stable_field_names() {
        let fake = FakeHelper::answering(Response::Devices(devices()));
        let r = run(against(&fake, &["--json", "list"]));
        r.code(0).stderr_empty();
        let v = r.json();
        let list = v.as_array().unwrap_or_else(|| r.fail("not an array"));
        assert_eq!(list.len(), 4);
        let keys: BTreeSet<&str> = list[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "address",
                "vendor",
                "device",
                "subsystem_vendor",
                "subsystem_device",
                "class",
                "driver",
                "driver_override",
                "iommu_group",
                "allowed",
                "holder",
            ])
        );
        let edu = list
            .iter()
            .find(|d| d["address"] == "0000:05:02.0")
            .unwrap_or_else(|| r.fail("05:02.0 missing"));
        assert_eq!(edu["allowed"], serde_json::json!(["vfio-pci", "pci-stub"]));
        assert_eq!(edu["holder"]["uid"], 4242);
        assert_eq!(edu["holder"]["driver"], "vfio-pci");
        assert_eq!(edu["iommu_group"], 11);
        assert_eq!(fake.requests(), vec![Request::List]);
    }

    #[test]
    fn an_empty_list_says_so() {
        let fake = FakeHelper::answering(Response::Devices(vec![]));
        run(against(&fake, &["list"]))
            .code(0)
            .stdout_has("no PCI devices");
        let fake = FakeHelper::answering(Response::Devices(vec![]));
        let r = run(against(&fake, &["list", "--json"]));
        assert_eq!(r.code(0).json(), serde_json::json!([]));
    }

    #[test]
    fn a_closed_stdout_exits_quietly() {
        let (go, wait) = std::sync::mpsc::channel();
        let fake = FakeHelper::start(vec![Reply::AnswerWhen(wait, Response::Devices(devices()))]);
        let mut child = against(&fake, &["list"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end before the helper answers, so the first write hits a broken pipe.
        drop(child.stdout.take());
        go.send(()).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
        assert_eq!(stderr, "");
        fake.requests();
    }
}

/// The test guest's IOMMU group 11 as `bind 05:02.0 --group` plans it: the edu device to
/// vfio-pci, the e1000 beside it to pci-stub, the bridge left on pcieport.
fn group_11_plan() -> Plan {
    let step = |a: &str, kind, vendor, device_id, driver: Option<&str>, action| PlanStep {
        device: addr(a),
        kind,
        vendor,
        device_id,
        driver: driver.map(str::to_owned),
        action,
    };
    Plan {
        group: Some(11),
        steps: vec![
            step(
                "0000:04:00.0",
                MemberKind::Bridge,
                0x1b36,
                0x000e,
                Some("pcieport"),
                StepAction::Keep {
                    reason: "keeps the group viable".into(),
                },
            ),
            step(
                "0000:05:01.0",
                MemberKind::Endpoint,
                0x8086,
                0x100e,
                Some("e1000"),
                StepAction::Bind {
                    driver: Driver::PciStub,
                    rule: companion_rule(),
                },
            ),
            step(
                "0000:05:02.0",
                MemberKind::Endpoint,
                0x1234,
                0x11e8,
                None,
                StepAction::Bind {
                    driver: Driver::VfioPci,
                    rule: rule(),
                },
            ),
        ],
    }
}

fn companion_rule() -> RuleRef {
    RuleRef {
        name: "lab companions".into(),
        file: "/etc/vfio-gate/policy.toml".into(),
        line: 20,
    }
}

/// The plan table as printed with the fixture PCI ID database, indented under its title.
const GROUP_11_TABLE: &str = "  \
  MEMBER   IDS        NAME                                 KIND      DRIVER    ACTION
  04:00.0  1b36:000e  QEMU PCIe-to-PCI bridge              bridge    pcieport  stays on pcieport: keeps the group viable
  05:01.0  8086:100e  82540EM Gigabit Ethernet Controller  endpoint  e1000     → pci-stub (rule 'lab companions', /etc/vfio-gate/policy.toml:20)
  05:02.0  1234:11e8  QEMU edu device                      endpoint  -         → vfio-pci (rule 'lab NIC for vm-users', /etc/vfio-gate/policy.toml:12)
";

/// The user name /etc/passwd gives `uid`, or the uid as text (what vfio-gate prints).
fn passwd_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string() && !f[0].is_empty()).then(|| f[0].to_owned())
        })
        .unwrap_or_else(|| uid.to_string())
}

/// A stand-in for /dev/vfio/11: a file of ours with `mode`.
fn fake_node(mode: u32) -> (tempfile::TempDir, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("11");
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

fn own_uid(path: &str) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().uid()
}

mod bind {
    use super::*;

    fn report(dry_run: bool, vfio_node: Option<&str>) -> Response {
        Response::Bound(BindReport {
            plan: group_11_plan(),
            dry_run,
            vfio_node: vfio_node.map(str::to_owned),
        })
    }

    fn with_names(fake: &FakeHelper, args: &[&str]) -> std::process::Command {
        let mut cmd = against(fake, args);
        cmd.arg("--pci-ids").arg(pci_ids_fixture());
        cmd
    }

    #[test]
    fn a_group_bind_shows_the_plan_and_hands_over_the_node() {
        let (_dir, node) = fake_node(0o600);
        let fake = FakeHelper::answering(report(false, Some(&node)));
        let r = run(with_names(&fake, &["bind", "05:02.0", "--group"]));
        r.code(0).stderr_empty();
        let expected = format!(
            "IOMMU group 11:\n{GROUP_11_TABLE}IOMMU group 11 is yours: {node} (owner {}, mode \
             0600). Release with: vfio-gate release 05:02.0\n",
            passwd_name(own_uid(&node))
        );
        if r.stdout != expected {
            r.fail(&format!("expected\n{expected}"));
        }
        assert_eq!(
            fake.requests(),
            vec![Request::Bind {
                devices: vec![addr("05:02.0")],
                driver: Driver::VfioPci,
                group: true,
                dry_run: false,
            }]
        );
    }

    #[test]
    fn every_address_reaches_the_helper_in_order_with_the_flags() {
        let fake = FakeHelper::start(vec![
            Reply::Answer(report(true, None)),
            Reply::Answer(report(true, None)),
            Reply::Answer(report(true, None)),
        ]);
        run(against(
            &fake,
            &[
                "bind",
                "05:02.0",
                "0000:05:01.0",
                "--to",
                "pci-stub",
                "--dry-run",
            ],
        ))
        .code(0);
        run(against(
            &fake,
            &["bind", "--group", "0000:05:01.0", "05:02.0", "05:01.0"],
        ))
        .code(0);
        run(against(&fake, &["bind", "01:00.0"])).code(0);
        assert_eq!(
            fake.requests(),
            vec![
                Request::Bind {
                    devices: vec![addr("05:02.0"), addr("05:01.0")],
                    driver: Driver::PciStub,
                    group: false,
                    dry_run: true,
                },
                // Named twice (in two spellings): sent once, where it was first named.
                Request::Bind {
                    devices: vec![addr("05:01.0"), addr("05:02.0")],
                    driver: Driver::VfioPci,
                    group: true,
                    dry_run: false,
                },
                Request::Bind {
                    devices: vec![addr("01:00.0")],
                    driver: Driver::VfioPci,
                    group: false,
                    dry_run: false,
                },
            ]
        );
    }

    #[test]
    fn a_dry_run_says_nothing_changed_and_how_to_do_it() {
        // The report names /dev/vfio/11, but a dry run hands nothing over: no node is looked at
        // (there is none on the test machine, which would give a warning).
        let fake = FakeHelper::answering(report(true, Some("/nonexistent/vfio/11")));
        let r = run(with_names(
            &fake,
            &["bind", "05:02.0", "--group", "--dry-run"],
        ));
        r.code(0).stderr_empty();
        let expected = format!(
            "Plan for IOMMU group 11:\n{GROUP_11_TABLE}dry run: nothing was changed; run without \
             --dry-run to do it: vfio-gate bind 05:02.0 --to vfio-pci --group\n"
        );
        if r.stdout != expected {
            r.fail(&format!("expected\n{expected}"));
        }
        let requests = fake.requests();
        assert!(
            matches!(
                &requests[..],
                [Request::Bind {
                    dry_run: true,
                    group: true,
                    ..
                }]
            ),
            "{requests:?}"
        );
    }

    #[test]
    fn a_node_that_is_missing_or_open_to_others_is_a_warning() {
        let (_dir, loose) = fake_node(0o666);
        let fake = FakeHelper::start(vec![
            Reply::Answer(report(false, Some("/nonexistent/vfio/11"))),
            Reply::Answer(report(false, Some(&loose))),
        ]);
        run(against(&fake, &["bind", "05:02.0", "--group"]))
            .code(0)
            .stdout_has("IOMMU group 11 is yours: /nonexistent/vfio/11. Release with:")
            .stderr_has("vfio-gate: warning: cannot check /nonexistent/vfio/11: ");
        run(against(&fake, &["bind", "05:02.0", "--group"]))
            .code(0)
            .stdout_has("mode 0666)")
            .stderr_has("has mode 0666: other users may open it too");
        fake.requests();
    }

    #[test]
    fn a_pci_stub_bind_has_no_node() {
        let plan = Plan {
            group: Some(8),
            steps: vec![PlanStep {
                device: addr("01:00.0"),
                kind: MemberKind::Endpoint,
                vendor: 0x8086,
                device_id: 0x10d3,
                driver: Some("e1000e".into()),
                action: StepAction::Bind {
                    driver: Driver::PciStub,
                    rule: rule(),
                },
            }],
        };
        let fake = FakeHelper::answering(Response::Bound(BindReport {
            plan,
            dry_run: false,
            vfio_node: None,
        }));
        let r = run(against(
            &fake,
            &[
                "bind",
                "01:00.0",
                "--to",
                "pci-stub",
                "--pci-ids",
                "/nonexistent",
            ],
        ));
        r.code(0).stderr_empty();
        assert_eq!(
            r.stdout,
            "IOMMU group 8:\n  \
             MEMBER   IDS        KIND      DRIVER  ACTION\n  \
             01:00.0  8086:10d3  endpoint  e1000e  → pci-stub (rule 'lab NIC for vm-users', \
             /etc/vfio-gate/policy.toml:12)\n\
             IOMMU group 8 is yours (01:00.0 on pci-stub; no host driver will touch it). Release \
             with: vfio-gate release 01:00.0\n",
            "{r:#?}"
        );
        fake.requests();
    }

    #[test]
    fn json_is_the_bind_report() {
        let (_dir, node) = fake_node(0o600);
        let fake = FakeHelper::answering(report(false, Some(&node)));
        let r = run(against(&fake, &["bind", "05:02.0", "--group", "--json"]));
        let v = r.code(0).stderr_empty().json();
        assert_eq!(v["dry_run"], false);
        assert_eq!(v["vfio_node"], node.as_str());
        assert_eq!(v["plan"]["group"], 11);
        let steps = v["plan"]["steps"]
            .as_array()
            .unwrap_or_else(|| r.fail("no steps"));
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[1]["device"], "0000:05:01.0");
        assert_eq!(steps[1]["driver"], "e1000");
        assert_eq!(steps[1]["action"]["Bind"]["driver"], "pci-stub");
        assert_eq!(steps[1]["action"]["Bind"]["rule"]["line"], 20);
        assert_eq!(
            steps[0]["action"]["Keep"]["reason"],
            "keeps the group viable"
        );
        fake.requests();
    }

    #[test]
    fn the_socket_can_come_from_the_environment() {
        let fake = FakeHelper::answering(report(true, None));
        let mut cmd = vfio_gate();
        cmd.env("VFIO_GATE_SOCKET", fake.socket())
            .args(["bind", "05:02.0", "--dry-run"]);
        run(cmd).code(0).stdout_has("dry run: nothing was changed");
        assert_eq!(fake.requests().len(), 1);
    }
}

mod release {
    use super::*;

    fn restored(a: &str, expected: Option<&str>, restored: Option<&str>) -> RestoredDevice {
        RestoredDevice {
            device: addr(a),
            expected_driver: expected.map(str::to_owned),
            restored_driver: restored.map(str::to_owned),
        }
    }

    fn report(e1000_back: Option<&str>) -> Response {
        Response::Released(ReleaseReport {
            group: Some(11),
            devices: vec![
                restored("05:02.0", None, None),
                restored("05:01.0", Some("e1000"), e1000_back),
            ],
        })
    }

    #[test]
    fn names_every_restored_device() {
        let fake = FakeHelper::answering(report(Some("e1000")));
        let r = run(against(&fake, &["release", "05:02.0"]));
        r.code(0).stderr_empty();
        assert_eq!(
            r.stdout,
            "Released IOMMU group 11:\n  \
             05:01.0 is back on e1000\n  \
             05:02.0 is released (it had no driver before, and has none now)\n",
            "{r:#?}"
        );
        assert_eq!(
            fake.requests(),
            vec![Request::Release {
                device: addr("05:02.0")
            }]
        );
    }

    #[test]
    fn warns_when_a_host_driver_did_not_come_back() {
        let fake = FakeHelper::start(vec![
            Reply::Answer(report(None)),
            Reply::Answer(report(None)),
        ]);
        let r = run(against(&fake, &["release", "05:02.0"]));
        r.code(0)
            .stdout_has("05:01.0 is released, and now has no driver")
            .stderr_has("vfio-gate: warning: 05:01.0 did not go back to its host driver e1000")
            .stderr_has("dmesg")
            .stderr_has("modprobe e1000");
        if r.stderr.lines().count() != 1 {
            r.fail("only 05:01.0 deserves a warning");
        }
        let r = run(against(&fake, &["release", "05:02.0", "--json"]));
        let v = r.code(0).stderr_has("warning").json();
        assert_eq!(v["restored_as_expected"], false);
        assert_eq!(v["group"], 11);
        assert_eq!(v["devices"][1]["device"], "0000:05:01.0");
        assert_eq!(v["devices"][1]["expected_driver"], "e1000");
        assert_eq!(v["devices"][1]["restored_driver"], serde_json::Value::Null);
        assert_eq!(fake.requests().len(), 2);
    }

    #[test]
    fn a_group_in_use_is_busy() {
        let fake = FakeHelper::answering(Response::Error(WireError::Busy {
            reason: "group 11 is in use — stop the VM first".into(),
        }));
        run(against(&fake, &["release", "05:02.0"]))
            .code(6)
            .stdout_empty()
            .stderr_has("vfio-gate: busy: group 11 is in use — stop the VM first");
        fake.requests();
    }
}

mod errors {
    use super::*;

    /// Each wire error: exit status, JSON kind, and words the human message must contain (the
    /// reason and the next step).
    fn table() -> Vec<(WireError, i32, &'static str, Vec<&'static str>)> {
        vec![
            (
                WireError::Denied {
                    rule: Some(rule()),
                    reason: "bob may not bind 01:00.0".into(),
                },
                3,
                "denied",
                vec![
                    "bob may not bind 01:00.0",
                    "'lab NIC for vm-users' (/etc/vfio-gate/policy.toml:12)",
                    "ask the admin",
                ],
            ),
            (
                WireError::Denied {
                    rule: None,
                    reason: "no rule allows bob to bind 01:00.0".into(),
                },
                3,
                "denied",
                vec![
                    "no policy rule allows it",
                    "[[rule]]",
                    "/etc/vfio-gate/policy.toml",
                ],
            ),
            (
                WireError::NotFound {
                    device: addr("0000:0a:00.0"),
                },
                4,
                "not_found",
                vec!["no PCI device 0000:0a:00.0", "vfio-gate list"],
            ),
            (
                WireError::Busy {
                    reason: "01:00.0 is being changed".into(),
                },
                6,
                "busy",
                vec!["01:00.0 is being changed", "Try again"],
            ),
            (
                WireError::BadRequest {
                    reason: "trailing bytes".into(),
                },
                1,
                "bad_request",
                vec!["trailing bytes", "one release"],
            ),
            (
                WireError::VersionMismatch {
                    server: 2,
                    client: 1,
                },
                7,
                "version_mismatch",
                vec!["protocol version 2", "one release"],
            ),
            (
                WireError::Failed {
                    reason: "drivers_probe bound nothing".into(),
                },
                1,
                "failed",
                vec!["kernel refused", "drivers_probe bound nothing", "dmesg"],
            ),
            (
                WireError::Internal {
                    reason: "state directory unwritable".into(),
                },
                1,
                "internal",
                vec![
                    "state directory unwritable",
                    "journalctl -u vfio-gate.service",
                ],
            ),
        ]
    }

    #[test]
    fn every_wire_error_has_its_exit_status_message_and_json() {
        for (wire, code, kind, words) in table() {
            let fake = FakeHelper::start(vec![
                Reply::Answer(Response::Error(wire.clone())),
                Reply::Answer(Response::Error(wire.clone())),
            ]);
            let r = run(against(&fake, &["bind", "01:00.0"]));
            r.code(code).stdout_empty();
            if !r.stderr.starts_with("vfio-gate: ") || r.stderr.lines().count() != 2 {
                r.fail("expected two lines on stderr, the error and the next step");
            }
            for w in &words {
                r.stderr_has(w);
            }
            let r = run(against(&fake, &["bind", "01:00.0", "--json"]));
            let e = r.code(code).json_error(kind);
            for w in &words {
                let text = format!("{} {}", e["message"], e["next_step"]);
                if !text.contains(w) {
                    r.fail(&format!("the JSON error lacks {w:?}"));
                }
            }
            if kind == "denied" {
                assert_eq!(
                    e.get("rule").is_some(),
                    matches!(wire, WireError::Denied { rule: Some(_), .. })
                );
            }
            if kind == "not_found" {
                assert_eq!(e["device"], "0000:0a:00.0");
            }
            assert_eq!(fake.requests().len(), 2);
        }
    }

    fn needs_group() -> WireError {
        WireError::NeedsGroup {
            group: 11,
            plan: group_11_plan(),
            reason: "05:01.0 is on e1000, which keeps the group from being viable".into(),
        }
    }

    #[test]
    fn a_bind_that_needs_the_group_shows_the_plan_and_the_command_that_does_it() {
        let fake = FakeHelper::answering(Response::Error(needs_group()));
        let mut cmd = against(&fake, &["bind", "05:02.0"]);
        cmd.arg("--pci-ids").arg(pci_ids_fixture());
        let r = run(cmd);
        r.code(3).stdout_empty();
        let expected = format!(
            "vfio-gate: IOMMU group 11 would not be usable with only 05:02.0 moved: 05:01.0 is on \
             e1000, which keeps the group from being viable\n\
             With --group, IOMMU group 11 would be:\n{GROUP_11_TABLE}\
             vfio-gate: Re-run with --group to also put 05:01.0 on pci-stub and leave 04:00.0 on \
             pcieport: vfio-gate bind 05:02.0 --to vfio-pci --group\n"
        );
        if r.stderr != expected {
            r.fail(&format!("expected on stderr\n{expected}"));
        }
        let requests = fake.requests();
        assert!(
            matches!(&requests[..], [Request::Bind { group: false, .. }]),
            "{requests:?}"
        );
    }

    #[test]
    fn the_re_run_hint_keeps_the_addresses_driver_and_dry_run() {
        let fake = FakeHelper::start(vec![
            Reply::Answer(Response::Error(needs_group())),
            Reply::Answer(Response::Error(needs_group())),
        ]);
        run(against(
            &fake,
            &[
                "bind",
                "--dry-run",
                "0000:05:02.0",
                "05:01.0",
                "--to",
                "vfio-pci",
                "--pci-ids",
                "/nonexistent/pci.ids",
            ],
        ))
        .code(3)
        .stderr_has("with only 05:02.0, 05:01.0 moved")
        .stderr_has("05:01.0  8086:100e  endpoint  e1000     → pci-stub")
        .stderr_has(
            "Re-run with --group to bind the group as a whole and leave 04:00.0 on pcieport: \
             vfio-gate bind 05:02.0 05:01.0 --to vfio-pci --group --dry-run\n",
        );
        let r = run(against(&fake, &["bind", "05:02.0", "--json"]));
        let e = r.code(3).json_error("needs_group");
        assert_eq!(e["group"], 11);
        assert_eq!(e["rerun"], "vfio-gate bind 05:02.0 --to vfio-pci --group");
        assert_eq!(
            e["plan"]["steps"][1]["action"]["Bind"]["driver"],
            "pci-stub"
        );
        assert!(
            e["next_step"]
                .as_str()
                .unwrap()
                .contains("also put 05:01.0 on pci-stub")
        );
        r.stderr_has("With --group, IOMMU group 11 would be:");
        fake.requests();
    }

    #[test]
    fn a_held_group_names_the_holder_and_when_in_local_time() {
        // uid 0 is root in every /etc/passwd. TZ=UTC-2 is two hours east of UTC, which moves
        // 2023-11-14 22:13 UTC to the next day: proof the local zone is used.
        let held = |since| {
            Reply::Answer(Response::Error(WireError::Held {
                group: Some(11),
                uid: 0,
                since,
            }))
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let fake = FakeHelper::start(vec![
            held(1_700_000_000),
            held(1_700_000_000),
            held(now - 60),
            held(1_700_000_000),
        ]);
        for (tz, since) in [("UTC", "2023-11-14 22:13"), ("UTC-2", "2023-11-15 00:13")] {
            let mut cmd = against(&fake, &["bind", "05:02.0"]);
            cmd.env("TZ", tz);
            run(cmd)
                .code(3)
                .stdout_empty()
                .stderr_has(&format!(
                    "vfio-gate: group 11 is held by root since {since}\n"
                ))
                .stderr_has("ask root to release it");
        }
        let mut cmd = against(&fake, &["bind", "05:02.0"]);
        cmd.env("TZ", "UTC");
        let r = run(cmd);
        // A minute ago, today: the time alone, no date. (Only whether it is still the same day
        // depends on when vfio-gate reads the clock; skip that check right after midnight.)
        let minute = (now - 60) % 86_400 / 60;
        let today = format!("{:02}:{:02}", minute / 60, minute % 60);
        let first = r.stderr.lines().next().unwrap_or_default();
        let when = first
            .strip_prefix("vfio-gate: group 11 is held by root since ")
            .unwrap_or_else(|| r.fail("expected the holder"));
        if now % 86_400 >= 120 && when != today {
            r.fail(&format!("expected since {today}"));
        }
        let mut cmd = against(&fake, &["release", "05:02.0", "--json"]);
        cmd.env("TZ", "UTC");
        let r = run(cmd);
        let e = r.code(3).json_error("held");
        assert_eq!(e["user"], "root");
        assert_eq!(e["uid"], 0);
        assert_eq!(e["group"], 11);
        assert_eq!(e["since"], 1_700_000_000);
        assert_eq!(
            e["message"],
            "group 11 is held by root since 2023-11-14 22:13"
        );
        fake.requests();
    }

    #[test]
    fn a_guard_refusal_says_why_and_what_an_admin_can_do() {
        for (guard, reason, advice) in [
            (
                Guard::NoIommuGroup,
                "03:00.0 has no IOMMU group",
                "intel_iommu=on or amd_iommu=on",
            ),
            (
                Guard::BootVga,
                "03:00.0 is the boot VGA device",
                "Use another GPU",
            ),
            (
                Guard::HostInUse,
                "/home is mounted from nvme0n1 on 03:00.0",
                "unmount its filesystems (umount)",
            ),
            (
                Guard::NotEndpoint,
                "03:00.0 is a PCI bridge",
                "Bind the endpoint behind it",
            ),
            (
                Guard::SriovEnabled,
                "03:00.0 has 4 virtual functions",
                "echo 0 > /sys/bus/pci/devices/0000:03:00.0/sriov_numvfs",
            ),
        ] {
            let wire = WireError::Refused {
                device: addr("03:00.0"),
                guard,
                reason: reason.into(),
            };
            let fake = FakeHelper::start(vec![
                Reply::Answer(Response::Error(wire.clone())),
                Reply::Answer(Response::Error(wire)),
            ]);
            let r = run(against(&fake, &["bind", "03:00.0"]));
            r.code(3)
                .stdout_empty()
                .stderr_has(&format!(
                    "vfio-gate: refused by a built-in guard that no policy can override: {reason}\n"
                ))
                .stderr_has(advice);
            let r = run(against(&fake, &["bind", "03:00.0", "--json"]));
            let e = r.code(3).json_error("refused");
            assert_eq!(e["device"], "0000:03:00.0");
            assert_eq!(e["guard"], serde_json::to_value(guard).unwrap());
            assert!(e["next_step"].as_str().unwrap().contains(advice), "{e}");
            fake.requests();
        }
    }

    #[test]
    fn a_missing_socket_is_status_5_with_the_way_to_start_the_helper() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent.sock");
        let mut cmd = vfio_gate();
        cmd.arg("--socket").arg(&socket).arg("list");
        let r = run(cmd);
        r.code(5)
            .stdout_empty()
            .stderr_has("vfio-gate: cannot reach the vfio-gate helper at ")
            .stderr_has("No such file or directory")
            .stderr_has("systemctl enable --now vfio-gate.socket");
        let mut cmd = vfio_gate();
        cmd.arg("--socket")
            .arg(&socket)
            .args(["bind", "01:00.0", "--json"]);
        let r = run(cmd);
        let e = r.code(5).json_error("unreachable");
        assert_eq!(e["socket"], socket.to_str().unwrap());
    }

    #[test]
    fn a_socket_nobody_listens_on_is_status_5() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let mut cmd = vfio_gate();
        cmd.arg("--socket").arg(&socket).arg("list");
        run(cmd)
            .code(5)
            .stderr_has("Connection refused")
            .stderr_has("no helper is listening");
    }

    #[test]
    fn bad_usage_is_status_2_and_never_reaches_the_helper() {
        for args in [
            &["bind", "1:00.0"][..],
            &["bind", "01:00.0/../.."],
            &["release", "0000:01:20.0"],
            &["bind", "01:00.0", "--to", "e1000e"],
            &["bind"],
            &["frobnicate"],
        ] {
            // A socket that does not exist: reaching for it would be status 5, not 2.
            let mut cmd = vfio_gate();
            cmd.args(["--socket", "/nonexistent/vfio-gate.sock"])
                .args(args);
            let r = run(cmd);
            r.code(2).stdout_empty().stderr_has("error:");
            let mut cmd = vfio_gate();
            cmd.args(["--socket", "/nonexistent/vfio-gate.sock", "--json"])
                .args(args);
            run(cmd).code(2).json_error("usage");
        }
        let mut cmd = vfio_gate();
        cmd.args(["bind", "zz:00.0"]);
        run(cmd).code(2).stderr_has("is not a PCI address");
    }

    #[test]
    fn help_documents_the_exit_statuses() {
        let mut cmd = vfio_gate();
        cmd.arg("--help");
        let r = run(cmd);
        r.code(0)
            .stdout_has("Exit status:")
            .stdout_has("  3  denied")
            .stdout_has("  5  the helper is unreachable")
            .stdout_has("  7  protocol version mismatch")
            .stdout_has("VFIO_GATE_SOCKET");
    }

    #[test]
    fn an_answer_to_another_question_is_a_protocol_error() {
        let fake = FakeHelper::answering(Response::Released(ReleaseReport {
            group: Some(8),
            devices: vec![],
        }));
        let r = run(against(&fake, &["list", "--json"]));
        let e = r.code(1).json_error("protocol");
        assert_eq!(
            e["message"],
            "the helper answered a list request with a release report"
        );
        fake.requests();
    }

    #[test]
    fn a_helper_from_another_release_is_status_7() {
        // A frame whose payload is the next protocol version (bincode varint: one byte below
        // 251) and nothing else: the version is decoded first, so this is a mismatch, not a
        // decode error.
        let next = PROTOCOL_VERSION + 1;
        let fake = FakeHelper::start(vec![Reply::Raw(vec![
            1,
            0,
            0,
            0,
            u8::try_from(next).unwrap(),
        ])]);
        let r = run(against(&fake, &["list"]));
        r.code(7)
            .stderr_has(&format!(
                "the helper speaks protocol version {next}, this vfio-gate speaks version \
                 {PROTOCOL_VERSION}"
            ))
            .stderr_has("one release");
        fake.requests();
    }

    #[test]
    fn broken_answers_are_status_1() {
        for (reply, kind, words) in [
            (
                Reply::Raw(vec![
                    3,
                    0,
                    0,
                    0,
                    vfio_gate_protocol::PROTOCOL_VERSION as u8,
                    0xff,
                    0xff,
                ]),
                "protocol",
                "cannot be decoded",
            ),
            (
                Reply::Raw(u32::MAX.to_le_bytes().to_vec()),
                "protocol",
                "exceeds the limit",
            ),
            (
                Reply::Raw(vec![9, 0, 0, 0, 1]),
                "connection",
                "in the middle of a frame",
            ),
            (Reply::Hangup, "connection", "without answering"),
        ] {
            let fake = FakeHelper::start(vec![reply]);
            let r = run(against(&fake, &["release", "01:00.0", "--json"]));
            r.code(1).json_error(kind);
            r.stderr_has(words);
            fake.requests();
        }
    }

    #[test]
    fn a_silent_helper_times_out() {
        let fake = FakeHelper::start(vec![Reply::Silent]);
        let start = Instant::now();
        let r = run(against(
            &fake,
            &["--timeout", "1", "bind", "01:00.0", "--json"],
        ));
        let e = r.code(1).json_error("timeout");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("did not answer within 1 s"),
            "{e}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{:?}",
            start.elapsed()
        );
        fake.requests();
    }
}
