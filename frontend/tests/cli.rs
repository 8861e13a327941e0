//! The `vfio-gate` binary against a fake helper: what it sends, what it prints, how it exits.

mod util;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use util::{FakeHelper, Reply, against, pci_ids_fixture, run, vfio_gate};
use vfio_gate_protocol::{
    BindReport, DeviceInfo, Driver, Holder, PciAddress, ReleaseReport, Request, Response, RuleRef,
    WireError,
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

mod bind {
    use super::*;

    fn report(driver: Driver) -> BindReport {
        BindReport {
            device: addr("01:00.0"),
            driver,
            previous_driver: Some("e1000e".into()),
            iommu_group: Some(8),
            rule: rule(),
        }
    }

    #[test]
    fn says_what_happened_and_how_to_undo_it() {
        let fake = FakeHelper::answering(Response::Bound(report(Driver::VfioPci)));
        let r = run(against(&fake, &["bind", "01:00.0"]));
        r.code(0).stderr_empty();
        assert_eq!(
            r.stdout,
            "01:00.0 is now on vfio-pci (was e1000e; IOMMU group 8, /dev/vfio/8), granted by \
             rule 'lab NIC for vm-users' (/etc/vfio-gate/policy.toml:12).\n\
             Release it with: vfio-gate release 01:00.0\n",
            "{r:#?}"
        );
        assert_eq!(
            fake.requests(),
            vec![Request::Bind {
                device: addr("0000:01:00.0"),
                driver: Driver::VfioPci
            }]
        );
    }

    #[test]
    fn full_address_and_pci_stub_reach_the_helper() {
        let fake = FakeHelper::answering(Response::Bound(report(Driver::PciStub)));
        let r = run(against(
            &fake,
            &["bind", "0000:01:00.0", "--to", "pci-stub"],
        ));
        r.code(0)
            .stdout_has("01:00.0 is now on pci-stub (was e1000e; IOMMU group 8)");
        assert_eq!(
            fake.requests(),
            vec![Request::Bind {
                device: addr("01:00.0"),
                driver: Driver::PciStub
            }]
        );
    }

    #[test]
    fn json_is_the_report_and_the_node_to_open() {
        let fake = FakeHelper::answering(Response::Bound(report(Driver::VfioPci)));
        let r = run(against(&fake, &["bind", "01:00.0", "--json"]));
        let v = r.code(0).json();
        assert_eq!(v["device"], "0000:01:00.0");
        assert_eq!(v["driver"], "vfio-pci");
        assert_eq!(v["previous_driver"], "e1000e");
        assert_eq!(v["iommu_group"], 8);
        assert_eq!(v["vfio_node"], "/dev/vfio/8");
        assert_eq!(v["rule"]["name"], "lab NIC for vm-users");
        assert_eq!(v["rule"]["file"], "/etc/vfio-gate/policy.toml");
        assert_eq!(v["rule"]["line"], 12);
        fake.requests();
    }

    #[test]
    fn the_socket_can_come_from_the_environment() {
        let fake = FakeHelper::answering(Response::Bound(report(Driver::VfioPci)));
        let mut cmd = vfio_gate();
        cmd.env("VFIO_GATE_SOCKET", fake.socket())
            .args(["bind", "01:00.0"]);
        run(cmd).code(0).stdout_has("is now on vfio-pci");
        assert_eq!(fake.requests().len(), 1);
    }
}

mod release {
    use super::*;

    fn report(expected: Option<&str>, restored: Option<&str>) -> Response {
        Response::Released(ReleaseReport {
            device: addr("01:00.0"),
            expected_driver: expected.map(str::to_owned),
            restored_driver: restored.map(str::to_owned),
        })
    }

    #[test]
    fn names_the_restored_driver() {
        let fake = FakeHelper::answering(report(Some("e1000e"), Some("e1000e")));
        let r = run(against(&fake, &["release", "01:00.0"]));
        r.code(0).stderr_empty();
        assert_eq!(r.stdout, "01:00.0 is back on e1000e.\n", "{r:#?}");
        assert_eq!(
            fake.requests(),
            vec![Request::Release {
                device: addr("01:00.0")
            }]
        );
    }

    #[test]
    fn warns_when_the_host_driver_did_not_come_back() {
        let fake = FakeHelper::start(vec![
            Reply::Answer(report(Some("e1000e"), None)),
            Reply::Answer(report(Some("e1000e"), None)),
        ]);
        let r = run(against(&fake, &["release", "01:00.0"]));
        r.code(0)
            .stdout_has("01:00.0 is released, and now has no driver.")
            .stderr_has("vfio-gate: warning: 01:00.0 did not go back to its host driver e1000e")
            .stderr_has("dmesg")
            .stderr_has("modprobe e1000e");
        let r = run(against(&fake, &["release", "01:00.0", "--json"]));
        let v = r.code(0).stderr_has("warning").json();
        assert_eq!(v["restored_as_expected"], false);
        assert_eq!(v["expected_driver"], "e1000e");
        assert_eq!(v["restored_driver"], serde_json::Value::Null);
        assert_eq!(fake.requests().len(), 2);
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
            device: addr("01:00.0"),
            expected_driver: None,
            restored_driver: None,
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
        // A frame whose payload is protocol version 2 (bincode varint: one byte) and nothing else:
        // the version is decoded first, so this is a mismatch, not a decode error.
        let fake = FakeHelper::start(vec![Reply::Raw(vec![1, 0, 0, 0, 2])]);
        let r = run(against(&fake, &["list"]));
        r.code(7)
            .stderr_has("the helper speaks protocol version 2, this vfio-gate speaks version 1")
            .stderr_has("one release");
        fake.requests();
    }

    #[test]
    fn broken_answers_are_status_1() {
        for (reply, kind, words) in [
            (
                Reply::Raw(vec![3, 0, 0, 0, 1, 0xff, 0xff]),
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
