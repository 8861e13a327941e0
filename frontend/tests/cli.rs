//! The `vfio-gate` binary against a fake helper: what it sends, what it prints, how it exits.

mod util;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use util::{
    FakeHelper, HostFixture, Reply, against, header_line, needs_root, pci_ids_fixture, run,
    vfio_gate,
};
use vfio_gate_protocol::{
    BindReport, BusyReason, DenyReason, DeviceInfo, Driver, DriverVerdict, ExplainReport, Guard,
    GuardFinding, Holder, MemberKind, PROTOCOL_VERSION, PciAddress, Plan, PlanStep, ReleaseReport,
    ReleaseTarget, ReleasedGroup, Request, Response, RestoredDevice, RuleRef, StepAction,
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
    let mut nvme = dev(
        "0000:03:00.0",
        0x1b36,
        0x0010,
        0x010802,
        Some("pci-stub"),
        Some(10),
    );
    // Held by `vfio-gate run` (uid 0 is root in every /etc/passwd).
    nvme.holder = Some(Holder {
        uid: 0,
        driver: Driver::PciStub,
        since: 1_700_000_000,
        group: Some(10),
        tied: true,
    });
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
        group: Some(11),
        tied: false,
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
            "ADDRESS       IDS        CLASS                           DRIVER    GROUP  ALLOWED            HOLDER      NAME",
            "01:00.0       8086:10d3  Ethernet controller             e1000e    8      vfio-pci           -           Intel Corporation 82574L Gigabit Network Connection",
            "03:00.0       1b36:0010  Non-Volatile memory controller  pci-stub  10     -                  root (run)  Red Hat, Inc. device 0010",
            "05:02.0       1234:11e8  Unclassified device             vfio-pci  11     vfio-pci,pci-stub  4242        Technical Corp. QEMU edu device",
            "0001:00:00.0  abcd:0001  Processing accelerators         -         -      -                  -           -",
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
        assert_eq!(edu["holder"]["group"], 11);
        assert_eq!(edu["holder"]["tied"], false);
        let nvme = list
            .iter()
            .find(|d| d["address"] == "0000:03:00.0")
            .unwrap_or_else(|| r.fail("03:00.0 missing"));
        assert_eq!(nvme["holder"]["tied"], true);
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

/// The uid the tests (and so vfio-gate) run as.
fn my_uid() -> u32 {
    let (_dir, path) = fake_node(0o600);
    own_uid(&path)
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
                hold: false,
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
                    hold: false,
                },
                // Named twice (in two spellings): sent once, where it was first named.
                Request::Bind {
                    devices: vec![addr("05:01.0"), addr("05:02.0")],
                    driver: Driver::VfioPci,
                    group: true,
                    dry_run: false,
                    hold: false,
                },
                Request::Bind {
                    devices: vec![addr("01:00.0")],
                    driver: Driver::VfioPci,
                    group: false,
                    dry_run: false,
                    hold: false,
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

    pub(super) fn restored(
        a: &str,
        expected: Option<&str>,
        restored: Option<&str>,
    ) -> RestoredDevice {
        RestoredDevice {
            device: addr(a),
            expected_driver: expected.map(str::to_owned),
            restored_driver: restored.map(str::to_owned),
        }
    }

    pub(super) fn group_11(owner_uid: u32, e1000_back: Option<&str>) -> ReleasedGroup {
        ReleasedGroup {
            group: Some(11),
            owner_uid,
            devices: vec![
                restored("05:02.0", None, None),
                restored("05:01.0", Some("e1000"), e1000_back),
            ],
        }
    }

    fn report(e1000_back: Option<&str>) -> Response {
        Response::Released(ReleaseReport {
            groups: vec![group_11(my_uid(), e1000_back)],
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
                target: ReleaseTarget::Device(addr("05:02.0"))
            }]
        );
    }

    #[test]
    fn all_releases_every_group_of_the_caller_one_line_per_device() {
        let me = my_uid();
        let twelve = ReleasedGroup {
            group: Some(12),
            owner_uid: me,
            devices: vec![restored("06:00.0", Some("e1000e"), Some("e1000e"))],
        };
        let fake = FakeHelper::start(vec![
            // Out of order on purpose: printed in group order.
            Reply::Answer(Response::Released(ReleaseReport {
                groups: vec![twelve, group_11(me, Some("e1000"))],
            })),
            Reply::Answer(Response::Released(ReleaseReport { groups: vec![] })),
            Reply::Answer(Response::Released(ReleaseReport { groups: vec![] })),
        ]);
        let r = run(against(&fake, &["release", "--all"]));
        r.code(0).stderr_empty();
        assert_eq!(
            r.stdout,
            "Released IOMMU group 11:\n  \
             05:01.0 is back on e1000\n  \
             05:02.0 is released (it had no driver before, and has none now)\n\
             Released IOMMU group 12:\n  \
             06:00.0 is back on e1000e\n",
            "{r:#?}"
        );
        let r = run(against(&fake, &["release", "--all"]));
        r.code(0).stderr_empty();
        assert_eq!(
            r.stdout, "Nothing to release: you hold no device.\n",
            "{r:#?}"
        );
        let r = run(against(&fake, &["release", "--all", "--json"]));
        let v = r.code(0).stderr_empty().json();
        assert_eq!(
            v,
            serde_json::json!({"groups": [], "restored_as_expected": true})
        );
        assert_eq!(
            fake.requests(),
            vec![
                Request::Release {
                    target: ReleaseTarget::Mine
                };
                3
            ]
        );
    }

    #[test]
    fn user_takes_a_name_or_a_uid_and_says_whose_groups_went() {
        let me = my_uid();
        // A uid that is not ours, and a name for it when /etc/passwd has one.
        let other = if me == 4242 { 4243 } else { 4242 };
        let fake = FakeHelper::start(vec![
            Reply::Answer(Response::Released(ReleaseReport {
                groups: vec![group_11(other, Some("e1000"))],
            })),
            Reply::Answer(Response::Released(ReleaseReport { groups: vec![] })),
            Reply::Answer(Response::Released(ReleaseReport { groups: vec![] })),
        ]);
        let r = run(against(&fake, &["release", "--user", &other.to_string()]));
        r.code(0).stderr_empty();
        assert_eq!(
            r.stdout,
            format!(
                "Released IOMMU group 11 (held by {}):\n  \
                 05:01.0 is back on e1000\n  \
                 05:02.0 is released (it had no driver before, and has none now)\n",
                passwd_name(other)
            ),
            "{r:#?}"
        );
        // uid 0 is root in every /etc/passwd.
        let r = run(against(&fake, &["release", "--user", "root"]));
        r.code(0).stderr_empty();
        if me != 0 {
            assert_eq!(
                r.stdout, "Nothing to release: root holds no device.\n",
                "{r:#?}"
            );
        }
        let r = run(against(&fake, &["release", "--user", "0", "--json"]));
        assert_eq!(r.code(0).json()["groups"], serde_json::json!([]));
        assert_eq!(
            fake.requests(),
            vec![
                Request::Release {
                    target: ReleaseTarget::User(other)
                },
                Request::Release {
                    target: ReleaseTarget::User(0)
                },
                Request::Release {
                    target: ReleaseTarget::User(0)
                },
            ]
        );
    }

    #[test]
    fn a_device_nobody_holds_is_nothing_to_release() {
        let fake = FakeHelper::answering(Response::Released(ReleaseReport { groups: vec![] }));
        let r = run(against(&fake, &["release", "0000:05:02.0"]));
        r.code(0).stderr_empty();
        assert_eq!(r.stdout, "Nothing to release: nobody holds 05:02.0.\n");
        fake.requests();
    }

    #[test]
    fn exactly_one_target_and_a_known_user_or_it_is_bad_usage() {
        for args in [
            &["release"][..],
            &["release", "05:02.0", "--all"],
            &["release", "--all", "--user", "root"],
            &["release", "05:02.0", "--user", "0"],
            &["release", "--user", "no-such-user-vfio-gate-test"],
            &["release", "--user", ""],
            &["release", "--user", "99999999999"],
        ] {
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
        cmd.args(["release", "--user", "no-such-user-vfio-gate-test"]);
        run(cmd)
            .code(2)
            .stderr_has("no user \"no-such-user-vfio-gate-test\" in /etc/passwd");
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
        let g = &v["groups"][0];
        assert_eq!(g["group"], 11);
        assert_eq!(g["owner_uid"], my_uid());
        assert_eq!(g["devices"][1]["device"], "0000:05:01.0");
        assert_eq!(g["devices"][1]["expected_driver"], "e1000");
        assert_eq!(g["devices"][1]["restored_driver"], serde_json::Value::Null);
        assert_eq!(fake.requests().len(), 2);
    }

    #[test]
    fn a_group_in_use_is_busy() {
        let fake = FakeHelper::answering(Response::Error(WireError::Busy {
            why: BusyReason::GroupInUse { group: 11 },
            detail: "group 11 is in use — stop the VM first".into(),
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
                    why: DenyReason::Policy,
                    rule: Some(rule()),
                    detail: "bob may not bind 01:00.0".into(),
                },
                3,
                "denied",
                vec![
                    "bob may not bind 01:00.0",
                    "'lab NIC for vm-users' at /etc/vfio-gate/policy.toml:12",
                    "ask the admin",
                ],
            ),
            (
                WireError::Denied {
                    why: DenyReason::Policy,
                    rule: None,
                    detail: "no rule allows bob to bind 01:00.0".into(),
                },
                3,
                "denied",
                vec![
                    "no rule allows bob to bind 01:00.0",
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
                    why: BusyReason::BlockedInKernel {
                        device: addr("01:00.0"),
                    },
                    detail: "01:00.0 is being changed".into(),
                },
                6,
                "busy",
                vec!["01:00.0 is being changed", "Stop the VM"],
            ),
            (
                WireError::Busy {
                    why: BusyReason::YouHoldIt {
                        group: 11,
                        devices: vec![addr("05:02.0")],
                    },
                    detail: "you already hold group 11".into(),
                },
                6,
                "busy",
                vec!["you already hold group 11", "vfio-gate release 05:02.0"],
            ),
            (
                WireError::Busy {
                    why: BusyReason::HeldOutsideVfioGate {
                        device: addr("05:02.0"),
                    },
                    detail: "a VM has group 11 open".into(),
                },
                6,
                "busy",
                vec!["a VM has group 11 open", "outside vfio-gate"],
            ),
            (
                WireError::Denied {
                    why: DenyReason::GroupLimit { held: 2, max: 2 },
                    rule: None,
                    detail: "you hold 2 groups".into(),
                },
                3,
                "denied",
                vec!["you hold 2 groups", "hold 2 IOMMU group(s) at a time"],
            ),
            (
                WireError::Denied {
                    why: DenyReason::GroupPlan {
                        device: addr("05:01.0"),
                    },
                    rule: None,
                    detail: "05:01.0 is on e1000".into(),
                },
                3,
                "denied",
                vec!["05:01.0 is on e1000", "05:01.0 stands in the way"],
            ),
            (
                WireError::Denied {
                    why: DenyReason::NotHeld {
                        device: addr("01:00.0"),
                    },
                    rule: None,
                    detail: "01:00.0 is not held".into(),
                },
                3,
                "denied",
                vec!["01:00.0 is not held", "nothing to give back"],
            ),
            (
                WireError::NotAdmin {
                    detail: "only admins".into(),
                },
                3,
                "denied",
                vec!["only admins", "Only an admin"],
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
                    "journalctl -u vfio-gated.service",
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

    /// `w` with every text meant for people replaced: what the CLI does must not change.
    fn reword(w: &WireError) -> WireError {
        let r =
            || "reworded: in use, already hold, outside vfio-gate, connections limit".to_owned();
        match w.clone() {
            WireError::Denied { why, rule, .. } => WireError::Denied {
                why,
                rule,
                detail: r(),
            },
            WireError::Busy { why, .. } => WireError::Busy { why, detail: r() },
            WireError::NotAdmin { .. } => WireError::NotAdmin { detail: r() },
            WireError::BadRequest { .. } => WireError::BadRequest { reason: r() },
            WireError::Failed { .. } => WireError::Failed { reason: r() },
            WireError::Internal { .. } => WireError::Internal { reason: r() },
            w @ (WireError::NotFound { .. } | WireError::VersionMismatch { .. }) => w,
            other => panic!("teach reword() about {other:?}"),
        }
    }

    #[test]
    fn rewording_every_message_changes_no_behaviour() {
        for (wire, code, kind, _) in table() {
            let reworded = reword(&wire);
            let fake = FakeHelper::start(vec![
                Reply::Answer(Response::Error(wire.clone())),
                Reply::Answer(Response::Error(reworded.clone())),
            ]);
            let first = run(against(&fake, &["bind", "01:00.0", "--json"]));
            let a = first.code(code).json_error(kind);
            let second = run(against(&fake, &["bind", "01:00.0", "--json"]));
            let b = second.code(code).json_error(kind);
            assert_eq!(a["next_step"], b["next_step"], "{wire:?}");
            assert_eq!(a["exit_code"], b["exit_code"], "{wire:?}");
            // Exactly one request each: nothing was retried on the strength of the words.
            assert_eq!(fake.requests().len(), 2, "{wire:?}");
        }
        // And the one retried answer is retried whatever it says.
        let limit = || {
            Response::Error(WireError::Busy {
                why: BusyReason::ConnectionLimit { limit: 64 },
                detail: "zzz".into(),
            })
        };
        let fake = FakeHelper::start(vec![
            Reply::Answer(limit()),
            Reply::Answer(Response::Devices(devices())),
        ]);
        run(against(&fake, &["list", "--pci-ids", "/nonexistent"])).code(0);
        assert_eq!(fake.requests().len(), 2);
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
        let fake = FakeHelper::answering(Response::Released(ReleaseReport { groups: vec![] }));
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

/// The reason the real helper gives at its connection limit.
fn at_limit() -> Response {
    Response::Error(WireError::Busy {
        why: BusyReason::ConnectionLimit { limit: 64 },
        detail: "the helper is serving 64 connections, its limit; retry in a moment".into(),
    })
}

mod retry {
    use super::*;

    #[test]
    fn the_connection_limit_is_retried_until_an_answer_comes() {
        let fake = FakeHelper::start(vec![
            // As the real helper does: answered at once, the request never read.
            Reply::RefuseAtOnce(at_limit()),
            Reply::Answer(at_limit()),
            Reply::Answer(Response::Devices(devices())),
        ]);
        let r = run(against(&fake, &["list", "--pci-ids", "/nonexistent"]));
        r.code(0).stderr_empty().stdout_has("05:02.0");
        // The refusal read nothing; the other two did.
        assert_eq!(fake.requests(), vec![Request::List, Request::List]);
    }

    #[test]
    fn nine_tries_over_more_than_ten_seconds_then_busy() {
        // Exactly nine answers: a tenth try would find no helper listening (exit 5).
        let fake = FakeHelper::start((0..9).map(|_| Reply::Answer(at_limit())).collect());
        let start = Instant::now();
        let r = run(against(&fake, &["bind", "05:02.0"]));
        let took = start.elapsed();
        r.code(6)
            .stdout_empty()
            .stderr_has("vfio-gate: busy: the helper is serving 64 connections, its limit")
            .stderr_has("Try again in a moment");
        // Longer than the helper keeps a silent client's slot (10 s), so one such slot frees up
        // before the CLI gives up; bounded, so it never seems hung.
        if took < Duration::from_secs(10) || took > Duration::from_secs(30) {
            r.fail(&format!(
                "nine tries took {took:?}, expected about fifteen seconds"
            ));
        }
        assert_eq!(fake.requests().len(), 9);
    }

    #[test]
    fn other_busy_answers_are_not_retried() {
        for why in [
            BusyReason::GroupInUse { group: 11 },
            BusyReason::YouHoldIt {
                group: 11,
                devices: vec![addr("05:02.0")],
            },
            BusyReason::BlockedInKernel {
                device: addr("05:02.0"),
            },
            BusyReason::HeldOutsideVfioGate {
                device: addr("05:02.0"),
            },
        ] {
            // One answer only: a retry would find no helper listening (exit 5). The words even
            // look like the connection limit's: only the typed reason counts.
            let fake = FakeHelper::answering(Response::Error(WireError::Busy {
                why,
                detail: "the helper is serving 64 connections, its limit; retry in a moment".into(),
            }));
            let start = Instant::now();
            run(against(&fake, &["bind", "05:02.0", "--json"]))
                .code(6)
                .json_error("busy");
            assert!(start.elapsed() < Duration::from_secs(1));
            assert_eq!(fake.requests().len(), 1);
        }
    }
}

mod run_cmd {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use util::{Event, Session};

    fn bound(node: Option<&str>) -> Response {
        Response::Bound(BindReport {
            plan: group_11_plan(),
            dry_run: false,
            vfio_node: node.map(str::to_owned),
        })
    }

    fn released() -> Response {
        Response::Released(ReleaseReport {
            groups: vec![release::group_11(my_uid(), Some("e1000"))],
        })
    }

    fn hold_bind() -> Request {
        Request::Bind {
            devices: vec![addr("05:02.0")],
            driver: Driver::VfioPci,
            group: true,
            dry_run: false,
            hold: true,
        }
    }

    fn release_05_02() -> Request {
        Request::Release {
            target: ReleaseTarget::Device(addr("05:02.0")),
        }
    }

    /// The bind, then the release once the command had finished, then the close.
    fn bind_release_close() -> Vec<Event> {
        vec![
            Event::Request {
                request: hold_bind(),
                marker: false,
            },
            Event::Request {
                request: release_05_02(),
                marker: true,
            },
            Event::Closed { marker: true },
        ]
    }

    /// A fake that binds with a node of ours, then answers the release; `marker` is the file
    /// the command creates as it finishes.
    fn session(node: &str, marker: &Path) -> FakeHelper {
        FakeHelper::start(vec![Reply::Session(Session::new(
            vec![bound(Some(node)), released()],
            Some(marker),
        ))])
    }

    #[test]
    fn holds_the_connection_while_the_command_runs_then_releases_on_it() {
        let (dir, node) = fake_node(0o600);
        let marker = dir.path().join("done");
        let fake = session(&node, &marker);
        let mut cmd = against(
            &fake,
            &["run", "--device", "05:02.0", "--group", "--", "sh", "-c"],
        );
        // Runs with our environment and stdout, takes its time, marks that it finished.
        cmd.arg("sleep 0.5; printf '%s\\n' \"$GREETING\"; touch \"$0\"; exit 3")
            .arg(&marker)
            .env("GREETING", "hello from the command");
        let r = run(cmd);
        r.code(3);
        assert_eq!(r.stdout, "hello from the command\n", "{r:#?}");
        assert_eq!(
            r.stderr,
            format!(
                "vfio-gate: 05:02.0 is on vfio-pci and 05:01.0 on pci-stub ({node}) while sh runs\n\
                 vfio-gate: released IOMMU group 11\n"
            ),
            "{r:#?}"
        );
        let (requests, events) = fake.finish();
        assert_eq!(events, bind_release_close(), "{r:#?}");
        assert_eq!(requests, vec![hold_bind(), release_05_02()]);
    }

    #[test]
    fn the_command_gets_the_signal_mask_and_dispositions_vfio_gate_got() {
        let status = ["grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"];
        let direct = std::process::Command::new(status[0])
            .args(&status[1..])
            .output()
            .unwrap();
        let direct = String::from_utf8(direct.stdout).unwrap();
        let fake = FakeHelper::start(vec![Reply::Session(Session::new(
            vec![bound(None), released()],
            None,
        ))]);
        let mut cmd = against(&fake, &["run", "--device", "05:02.0", "--"]);
        cmd.args(status);
        let r = run(cmd);
        r.code(0);
        assert!(direct.contains("SigBlk:\t0000000000000000\n"), "{direct}");
        assert_eq!(r.stdout, direct, "{r:#?}");
        fake.requests();
    }

    #[test]
    fn devices_go_in_the_order_given_with_the_driver() {
        let fake = FakeHelper::start(vec![Reply::Session(Session::new(
            vec![bound(None), released()],
            None,
        ))]);
        run(against(
            &fake,
            &[
                "run",
                "--device",
                "05:01.0",
                "--to",
                "pci-stub",
                "--device",
                "0000:05:02.0",
                "--device",
                "05:01.0",
                "--",
                "true",
            ],
        ))
        .code(0)
        .stderr_has("vfio-gate: 05:01.0 is on pci-stub and 05:02.0 on vfio-pci while true runs\n");
        assert_eq!(
            fake.requests(),
            vec![
                Request::Bind {
                    devices: vec![addr("05:01.0"), addr("05:02.0")],
                    driver: Driver::PciStub,
                    group: false,
                    dry_run: false,
                    hold: true,
                },
                Request::Release {
                    target: ReleaseTarget::Device(addr("05:01.0")),
                },
            ]
        );
    }

    #[test]
    fn a_command_killed_by_a_signal_gives_128_plus_its_number() {
        for (script, code) in [
            ("kill -KILL $$", 137),
            ("kill -TERM $$", 143),
            ("exit 0", 0),
        ] {
            let (dir, node) = fake_node(0o600);
            let fake = session(&node, &dir.path().join("never"));
            let r = run(against(
                &fake,
                &["run", "--device", "05:02.0", "--", "sh", "-c", script],
            ));
            r.code(code)
                .stderr_has("vfio-gate: released IOMMU group 11\n");
            assert_eq!(fake.requests(), vec![hold_bind_plain(), release_05_02()]);
        }
    }

    fn hold_bind_plain() -> Request {
        Request::Bind {
            devices: vec![addr("05:02.0")],
            driver: Driver::VfioPci,
            group: false,
            dry_run: false,
            hold: true,
        }
    }

    #[test]
    fn a_refused_bind_is_reported_as_bind_reports_it_and_the_command_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let refusals = [
            WireError::Denied {
                why: DenyReason::Policy,
                rule: Some(rule()),
                detail: "bob may not bind 05:02.0".into(),
            },
            WireError::NotFound {
                device: addr("05:02.0"),
            },
            WireError::Held {
                group: Some(11),
                uid: 0,
                since: 1_700_000_000,
            },
            WireError::Busy {
                why: BusyReason::GroupInUse { group: 11 },
                detail: "group 11 is in use — stop the VM first".into(),
            },
        ];
        for wire in refusals {
            let fake = FakeHelper::start(vec![
                Reply::Answer(Response::Error(wire.clone())),
                Reply::Answer(Response::Error(wire.clone())),
            ]);
            let mut bind = against(&fake, &["bind", "05:02.0"]);
            bind.env("TZ", "UTC");
            let by_bind = run(bind);
            let mut cmd = against(&fake, &["run", "--device", "05:02.0", "--", "touch"]);
            cmd.arg(&marker).env("TZ", "UTC");
            let by_run = run(cmd);
            by_run.stdout_empty();
            assert_eq!(by_run.code, by_bind.code, "{wire:?}: {by_run:#?}");
            assert_eq!(by_run.stderr, by_bind.stderr, "{wire:?}: {by_run:#?}");
            assert!(!marker.exists(), "{wire:?}: the command ran");
            let requests = fake.requests();
            assert!(
                matches!(requests[1], Request::Bind { hold: true, .. }),
                "{requests:?}"
            );
        }
    }

    #[test]
    fn a_bind_that_needs_the_group_suggests_the_same_run_with_group() {
        let fake = FakeHelper::answering(Response::Error(WireError::NeedsGroup {
            group: 11,
            plan: group_11_plan(),
            reason: "05:01.0 is on e1000".into(),
        }));
        let r = run(against(
            &fake,
            &[
                "run",
                "--device",
                "05:02.0",
                "--pci-ids",
                "/nonexistent",
                "--",
                "qemu",
                "-name",
                "my vm",
            ],
        ));
        r.code(3).stdout_empty().stderr_has(
            "Re-run with --group to also put 05:01.0 on pci-stub and leave 04:00.0 on pcieport: \
             vfio-gate run --device 05:02.0 --to vfio-pci --group -- qemu -name 'my vm'\n",
        );
        fake.requests();
    }

    #[test]
    fn a_command_that_cannot_start_is_127_or_126_and_the_devices_are_released() {
        let dir = tempfile::tempdir().unwrap();
        let not_executable = dir.path().join("script");
        std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
        for (program, code, words) in [
            (
                dir.path().join("no-such-command"),
                127,
                "Check the command's name, and that it is in your PATH",
            ),
            (not_executable.clone(), 126, "a program you may run"),
        ] {
            let fake = FakeHelper::start(vec![Reply::Session(Session::new(
                vec![bound(None), released()],
                None,
            ))]);
            let mut cmd = against(&fake, &["run", "--device", "05:02.0", "--"]);
            cmd.arg(&program);
            let r = run(cmd);
            r.code(code)
                .stdout_empty()
                .stderr_has(&format!("vfio-gate: cannot run {}: ", program.display()))
                .stderr_has(words)
                .stderr_has("vfio-gate: released IOMMU group 11\n");
            assert_eq!(fake.requests(), vec![hold_bind_plain(), release_05_02()]);
        }
    }

    #[test]
    fn json_and_a_missing_command_are_bad_usage() {
        for args in [
            &["run", "--json", "--device", "05:02.0", "--", "true"][..],
            &["run", "--device", "05:02.0"],
            &["run", "--device", "05:02.0", "--"],
            &["run", "--", "true"],
            &["run", "--device", "5:02.0", "--", "true"],
        ] {
            let mut cmd = vfio_gate();
            cmd.args(["--socket", "/nonexistent/vfio-gate.sock"])
                .args(args);
            let r = run(cmd);
            r.code(2).stderr_has("error:");
        }
        let mut cmd = vfio_gate();
        cmd.args(["--socket", "/nonexistent/vfio-gate.sock", "--json"])
            .args(["run", "--device", "05:02.0", "--", "true"]);
        let r = run(cmd);
        let e = r.code(2).json_error("usage");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("--json cannot be used with run"),
            "{e}"
        );
        // After `--`, --json belongs to the command.
        let fake = FakeHelper::start(vec![Reply::Session(Session::new(
            vec![bound(None), released()],
            None,
        ))]);
        run(against(
            &fake,
            &[
                "run",
                "--device",
                "05:02.0",
                "--",
                "sh",
                "-c",
                "test \"$1\" = --json",
                "sh",
                "--json",
            ],
        ))
        .code(0);
        fake.requests();
    }

    #[test]
    fn the_connection_limit_is_retried_before_the_bind() {
        let (dir, node) = fake_node(0o600);
        let fake = FakeHelper::start(vec![
            Reply::RefuseAtOnce(at_limit()),
            Reply::Answer(at_limit()),
            Reply::Session(Session::new(
                vec![bound(Some(&node)), released()],
                Some(&dir.path().join("done")),
            )),
        ]);
        let mut cmd = against(&fake, &["run", "--device", "05:02.0", "--", "touch"]);
        cmd.arg(dir.path().join("done"));
        run(cmd).code(0);
        assert_eq!(
            fake.requests(),
            vec![hold_bind_plain(), hold_bind_plain(), release_05_02()]
        );
    }

    #[test]
    fn a_refused_release_is_a_warning_and_the_status_stays_the_commands() {
        let fake = FakeHelper::start(vec![Reply::Session(Session::new(
            vec![
                bound(None),
                Response::Error(WireError::Busy {
                    why: BusyReason::GroupInUse { group: 11 },
                    detail: "group 11 is in use — stop the VM first".into(),
                }),
            ],
            None,
        ))]);
        let r = run(against(
            &fake,
            &["run", "--device", "05:02.0", "--", "sh", "-c", "exit 5"],
        ));
        r.code(5).stderr_has(
            "vfio-gate: warning: releasing 05:02.0: busy: group 11 is in use — stop the VM \
             first; the helper gives the devices back when vfio-gate exits",
        );
        let (requests, events) = fake.finish();
        assert_eq!(requests, vec![hold_bind_plain(), release_05_02()]);
        assert_eq!(events.last(), Some(&Event::Closed { marker: false }));
    }

    #[test]
    fn a_helper_that_hangs_up_while_the_command_runs_is_reported_at_once() {
        let mut s = Session::new(vec![bound(None)], None);
        s.hang_up = true;
        let fake = FakeHelper::start(vec![Reply::Session(s)]);
        let r = run(against(
            &fake,
            &[
                "run",
                "--device",
                "05:02.0",
                "--",
                "sh",
                "-c",
                "sleep 0.5; exit 4",
            ],
        ));
        r.code(4).stderr_has(
            "vfio-gate: warning: the helper closed the connection while sh runs: the lease on \
             05:02.0 has ended",
        );
        if r.stderr.contains("released") {
            r.fail("nothing was released by vfio-gate: the helper had hung up");
        }
        assert_eq!(fake.requests(), vec![hold_bind_plain()]);
    }

    /// Starts `vfio-gate run` on a command that writes its pid to a file and sleeps; returns the
    /// frontend and the command's pid once it runs.
    // The child is returned, and the caller waits for it.
    #[allow(clippy::zombie_processes)]
    fn start_sleeper(
        fake: &FakeHelper,
        dir: &Path,
        own_group: bool,
    ) -> (std::process::Child, libc::pid_t) {
        let pidfile = dir.join("pid");
        let mut cmd = against(fake, &["run", "--device", "05:02.0", "--", "sh", "-c"]);
        cmd.arg("echo $$ > \"$0.tmp\" && mv \"$0.tmp\" \"$0\" && exec sleep 30")
            .arg(&pidfile)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if own_group {
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(pid) = std::fs::read_to_string(&pidfile) {
                // Give `exec sleep` a moment to happen.
                std::thread::sleep(Duration::from_millis(100));
                return (child, pid.trim().parse().unwrap());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the command never started");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(pid: libc::pid_t, sig: libc::c_int) {
        // SAFETY: kill touches no memory; the pids are our children (or their group).
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    fn alive(pid: libc::pid_t) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    /// Waits up to ten seconds for the frontend; its exit code and stderr.
    fn finish(mut child: std::process::Child) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
                return (status.code(), stderr);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("vfio-gate did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn ctrl_c_at_the_terminal_stops_the_command_and_vfio_gate_still_releases() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeHelper::start(vec![Reply::Session(Session::new(
            vec![bound(None), released()],
            None,
        ))]);
        // In a process group of its own, as a shell's foreground job is.
        let (child, command) = start_sleeper(&fake, dir.path(), true);
        let group = libc::pid_t::try_from(child.id()).unwrap();
        signal(-group, libc::SIGINT);
        let (code, stderr) = finish(child);
        assert_eq!(code, Some(130), "{stderr}");
        assert!(
            stderr.contains("vfio-gate: released IOMMU group 11\n"),
            "{stderr}"
        );
        assert!(!alive(command));
        assert_eq!(fake.requests(), vec![hold_bind_plain(), release_05_02()]);
    }

    #[test]
    fn sigint_and_sigquit_to_vfio_gate_alone_are_ignored_but_not_by_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeHelper::start(vec![Reply::Session(Session::new(
            vec![bound(None), released()],
            None,
        ))]);
        let (mut child, command) = start_sleeper(&fake, dir.path(), false);
        let frontend = libc::pid_t::try_from(child.id()).unwrap();
        signal(frontend, libc::SIGINT);
        signal(frontend, libc::SIGQUIT);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "vfio-gate died of the signal"
        );
        assert!(alive(command));
        // The command was not started with SIGINT ignored: it dies of it.
        signal(command, libc::SIGINT);
        let (code, stderr) = finish(child);
        assert_eq!(code, Some(130), "{stderr}");
        assert_eq!(fake.requests(), vec![hold_bind_plain(), release_05_02()]);
    }

    #[test]
    fn sigterm_and_sighup_are_passed_on_to_the_command() {
        for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGHUP, 129)] {
            let dir = tempfile::tempdir().unwrap();
            let fake = FakeHelper::start(vec![Reply::Session(Session::new(
                vec![bound(None), released()],
                None,
            ))]);
            let (child, command) = start_sleeper(&fake, dir.path(), false);
            signal(libc::pid_t::try_from(child.id()).unwrap(), sig);
            let (got, stderr) = finish(child);
            assert_eq!(got, Some(code), "signal {sig}: {stderr}");
            assert!(
                stderr.contains("vfio-gate: released IOMMU group 11\n"),
                "{stderr}"
            );
            assert!(!alive(command));
            assert_eq!(fake.requests(), vec![hold_bind_plain(), release_05_02()]);
        }
    }

    #[test]
    fn a_sigkilled_vfio_gate_closes_the_connection_though_the_command_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeHelper::start(vec![Reply::Session(Session::new(
            vec![bound(None), released()],
            None,
        ))]);
        let (mut child, command) = start_sleeper(&fake, dir.path(), false);
        assert!(fake.events().len() == 1, "{:?}", fake.events());
        child.kill().unwrap();
        child.wait().unwrap();
        // The command does not hold the socket: the helper sees the close at once.
        let closed = fake.wait_for_event(Duration::from_secs(3), |e| {
            matches!(e, Event::Closed { .. })
        });
        let still_running = alive(command);
        signal(command, libc::SIGKILL);
        assert!(closed, "{:?}", fake.events());
        assert!(still_running);
        assert_eq!(fake.requests(), vec![hold_bind_plain()]);
    }
}

/// `vfio-gate explain` against the fake helper: what it asks, what it prints.
mod explain_online {
    use super::*;

    fn storage_rule() -> RuleRef {
        RuleRef {
            name: "never storage".into(),
            file: "/etc/vfio-gate/policy.toml".into(),
            line: 30,
        }
    }

    fn nvme_rule() -> RuleRef {
        RuleRef {
            name: "alice: the NVMe".into(),
            file: "/etc/vfio-gate/policy.d/50-alice.toml".into(),
            line: 2,
        }
    }

    /// The edu device, allowed to vfio-pci with the e1000 as companion, pci-stub by default
    /// denied.
    fn allowed() -> ExplainReport {
        ExplainReport {
            device: addr("05:02.0"),
            vendor: 0x1234,
            device_id: 0x11e8,
            class: 0x00ff00,
            driver: None,
            iommu_group: Some(11),
            uid: 0,
            verdicts: vec![
                DriverVerdict {
                    driver: Driver::VfioPci,
                    allowed: true,
                    rule: Some(rule()),
                    allows: vec![rule(), companion_rule()],
                    denies: vec![],
                },
                DriverVerdict {
                    driver: Driver::PciStub,
                    allowed: false,
                    rule: None,
                    allows: vec![],
                    denies: vec![],
                },
            ],
            guards: vec![],
            plan: Some(Ok(group_11_plan())),
            holder: None,
            policy_sha256: "5e".repeat(32),
        }
    }

    fn denied() -> ExplainReport {
        ExplainReport {
            device: addr("03:00.0"),
            vendor: 0x1b36,
            device_id: 0x0010,
            class: 0x010802,
            driver: Some("nvme".into()),
            iommu_group: Some(10),
            uid: 0,
            verdicts: vec![DriverVerdict {
                driver: Driver::VfioPci,
                allowed: false,
                rule: Some(storage_rule()),
                allows: vec![nvme_rule()],
                denies: vec![storage_rule()],
            }],
            guards: vec![],
            plan: None,
            holder: Some(Holder {
                uid: 0,
                driver: Driver::PciStub,
                since: 1_700_000_000,
                group: Some(10),
                tied: false,
            }),
            policy_sha256: "5e".repeat(32),
        }
    }

    #[test]
    fn an_allowed_device_shows_the_rule_the_other_allows_and_the_group_plan() {
        let fake = FakeHelper::answering(Response::Explained(allowed()));
        let mut cmd = against(&fake, &["explain", "05:02.0"]);
        cmd.arg("--pci-ids").arg(pci_ids_fixture());
        let r = run(cmd);
        r.code(0).stderr_empty();
        let expected = format!(
            "\
05:02.0  1234:11e8  Technical Corp. QEMU edu device
  class    00ff00 (Unclassified device)
  driver   none
  group    IOMMU group 11
  held by  nobody
For root (uid 0):
  vfio-pci  ALLOWED  by rule 'lab NIC for vm-users' (/etc/vfio-gate/policy.toml:12)
                     also allowed by 'lab companions' (/etc/vfio-gate/policy.toml:20)
  pci-stub  DENIED   no rule matches: denied by default
Guards: none refuses 05:02.0 now
With vfio-pci, IOMMU group 11 would be:
{GROUP_11_TABLE}  The bind moves other members too, so it needs --group: vfio-gate bind 05:02.0 --group
Policy sha256 {} (the helper's)
",
            "5e".repeat(32)
        );
        if r.stdout != expected {
            r.fail(&format!("expected\n{expected}"));
        }
        assert_eq!(
            fake.requests(),
            vec![Request::Explain {
                device: addr("05:02.0"),
                driver: None,
                uid: None,
            }]
        );
    }

    #[test]
    fn a_deny_rule_is_named_with_the_allow_it_overrides_and_the_holder() {
        let fake = FakeHelper::answering(Response::Explained(denied()));
        let mut cmd = against(&fake, &["explain", "0000:03:00.0", "--to", "vfio-pci"]);
        cmd.env("TZ", "UTC");
        let r = run(cmd);
        r.code(0)
            .stderr_empty()
            .stdout_has("  held by  root since 2023-11-14 22:13 (on pci-stub)\n")
            .stdout_has(
                "  vfio-pci  DENIED   by rule 'never storage' (/etc/vfio-gate/policy.toml:30)\n\
                 \x20                    overrides the allow 'alice: the NVMe' \
                 (/etc/vfio-gate/policy.d/50-alice.toml:2) (deny wins)\n",
            )
            .stdout_has("No group plan: the policy does not allow vfio-pci\n");
        if r.stdout.contains("pci-stub  ") {
            r.fail("only the driver asked about is shown");
        }
        assert_eq!(
            fake.requests(),
            vec![Request::Explain {
                device: addr("03:00.0"),
                driver: Some(Driver::VfioPci),
                uid: None,
            }]
        );
    }

    #[test]
    fn a_guard_that_refuses_the_device_now_is_shown_with_its_reason() {
        let mut report = allowed();
        report.guards = vec![GuardFinding {
            guard: Guard::HostInUse,
            reason: "the host is using 05:02.0: nvme0n1p2 is mounted on /home".into(),
        }];
        let fake = FakeHelper::answering(Response::Explained(report));
        let r = run(against(&fake, &["explain", "05:02.0"]));
        r.code(0)
            .stdout_has(
                "Refused now by a built-in guard, whatever the policy says:\n  \
                 in use by the host: the host is using 05:02.0: nvme0n1p2 is mounted on /home\n",
            )
            .stdout_has("With vfio-pci, IOMMU group 11 would be:");
        if r.stdout.contains("Guards: none") || r.stdout.contains("vfio-gate bind") {
            r.fail("a refused device gets no bind command");
        }
        fake.requests();
    }

    #[test]
    fn no_plan_says_why() {
        let mut report = allowed();
        report.plan = Some(Err(
            "group 11 also holds 05:01.0 on the host driver e1000, which must leave it".into(),
        ));
        let fake = FakeHelper::answering(Response::Explained(report));
        run(against(&fake, &["explain", "05:02.0"])).code(0).stdout_has(
            "No plan works for IOMMU group 11 with vfio-pci: group 11 also holds 05:01.0 on the \
             host driver e1000, which must leave it\n",
        );
        fake.requests();
    }

    #[test]
    fn json_is_the_explain_report() {
        let fake = FakeHelper::answering(Response::Explained(allowed()));
        let r = run(against(&fake, &["explain", "05:02.0", "--json"]));
        r.code(0).stderr_empty();
        let v = r.json();
        assert_eq!(v, serde_json::to_value(allowed()).unwrap());
        assert_eq!(v["verdicts"][0]["driver"], "vfio-pci");
        assert_eq!(v["verdicts"][0]["rule"]["line"], 12);
        assert_eq!(
            v["plan"]["Ok"]["steps"][1]["action"]["Bind"]["driver"],
            "pci-stub"
        );
        assert_eq!(v["policy_sha256"], "5e".repeat(32));
        fake.requests();
    }

    #[test]
    fn user_is_sent_as_a_uid_and_non_admins_are_told_how_else_to_ask() {
        let not_admin = || {
            Reply::Answer(Response::Error(WireError::NotAdmin {
                detail: "only an admin (root, or [settings] admins in the policy) may ask about \
                         another user"
                    .into(),
            }))
        };
        let fake = FakeHelper::start(vec![
            Reply::Answer(Response::Explained(denied())),
            not_admin(),
            not_admin(),
        ]);
        run(against(&fake, &["explain", "03:00.0", "--user", "root"])).code(0);
        let r = run(against(&fake, &["explain", "03:00.0", "--user", "4242"]));
        r.code(3)
            .stdout_empty()
            .stderr_has("vfio-gate: denied: only an admin")
            .stderr_has("Leave out --user to ask about yourself")
            .stderr_has("vfio-gate explain ADDR --user NAME --policy /etc/vfio-gate/policy.toml");
        let r = run(against(
            &fake,
            &["explain", "03:00.0", "--user", "4242", "--json"],
        ));
        r.code(3).json_error("denied");
        let uid = |uid| Request::Explain {
            device: addr("03:00.0"),
            driver: None,
            uid: Some(uid),
        };
        assert_eq!(fake.requests(), vec![uid(0), uid(4242), uid(4242)]);
    }

    #[test]
    fn an_unknown_user_or_host_options_without_policy_are_bad_usage() {
        let fake = FakeHelper::start(vec![]);
        let r = run(against(
            &fake,
            &["explain", "03:00.0", "--user", "no-such-user-here"],
        ));
        r.code(2)
            .stderr_has("no user \"no-such-user-here\" in /etc/passwd");
        let r = run(against(
            &fake,
            &[
                "explain",
                "03:00.0",
                "--user",
                "no-such-user-here",
                "--json",
            ],
        ));
        r.code(2).json_error("usage");
        run(against(
            &fake,
            &["explain", "03:00.0", "--sysfs-root", "/tmp"],
        ))
        .code(2)
        .stderr_has("need --policy");
        run(against(&fake, &["explain", "3:00.0"])).code(2);
        assert_eq!(fake.requests(), vec![]);
    }
}

/// The policy of the offline tests: what the test guest's lab could run.
const LAB_POLICY: &str = r#"version = 1

[settings]
admins = { users = ["secops"] }

[[rule]]
name       = "vm-users: the edu device"
subjects   = { groups = ["vm-users"] }
devices    = [{ vendor = "1234", device = "11e8" }]
drivers    = ["vfio-pci"]
companions = ["pci-stub"]

[[rule]]
name     = "vm-users: the test NIC"
subjects = { groups = ["vm-users"] }
devices  = [{ address = "01:00.0", vendor = "8086", device = "10d3" }]
drivers  = ["vfio-pci", "pci-stub"]

[[rule]]
name     = "alice: the display"
subjects = { users = ["alice"] }
devices  = [{ vendor = "1234", device = "1111" }]
drivers  = ["vfio-pci"]

[[rule]]
name     = "alice: the NVMe"
subjects = { users = ["alice"] }
devices  = [{ vendor = "1b36", device = "0010" }]
drivers  = ["vfio-pci"]

[[rule]]
name     = "dave: by uid, he is in LDAP only"
subjects = { uids = [5003] }
devices  = [{ vendor = "1234", device = "11e8" }]
drivers  = ["vfio-pci"]

[[deny]]
name    = "never storage"
devices = [{ class = "01" }]
"#;

const BOB_DROP_IN: &str = r#"# bob's VMs must not park devices
[[deny]]
name     = "bob never parks devices on pci-stub"
subjects = { users = ["bob"] }
devices  = [{ address = "*:*:*.*" }]
drivers  = ["pci-stub"]
"#;

fn lab() -> HostFixture {
    HostFixture::new(LAB_POLICY, &[("50-bob.toml", BOB_DROP_IN)])
}

/// "'NAME' (FILE:LINE)" for a rule of the lab policy (or, with `drop_in`, of its drop-in).
fn lab_rule(fx: &HostFixture, name: &str) -> String {
    let line = header_line(LAB_POLICY, name);
    format!("'{name}' ({}:{line})", fx.policy().display())
}

/// `vfio-gate explain ADDR --policy <fixture> ...` against the fixture host, offline.
mod explain_offline {
    use super::*;

    fn explain(fx: &HostFixture, args: &[&str]) -> util::Run {
        let mut cmd = fx.command(&["explain"]);
        cmd.args(args).arg("--policy").arg(fx.policy());
        run(cmd)
    }

    #[test]
    fn an_allowed_device_with_its_companion_plan() {
        if !needs_root("explain_offline::an_allowed_device_with_its_companion_plan") {
            return;
        }
        let fx = lab();
        let r = explain(&fx, &["05:02.0", "--user", "alice"]);
        r.code(0).stderr_empty();
        let edu = lab_rule(&fx, "vm-users: the edu device");
        let expected_head = format!(
            "\
05:02.0  1234:11e8  Technical Corp. QEMU edu device
  class    00ff00 (Unclassified device)
  driver   none
  group    IOMMU group 11
  held by  not known offline (the helper keeps the leases: vfio-gate list shows them)
For alice (uid 1000):
  vfio-pci  ALLOWED  by rule {edu}
  pci-stub  DENIED   no rule matches: denied by default
Guards: none refuses 05:02.0 now
With vfio-pci, IOMMU group 11 would be:
  MEMBER   IDS        NAME                                 KIND      DRIVER    ACTION
  04:00.0  1b36:000e  QEMU PCIe-to-PCI bridge              bridge    pcieport  stays on pcieport: a bridge whose driver (pcieport) keeps the group viable
  05:01.0  8086:100e  82540EM Gigabit Ethernet Controller  endpoint  e1000     → pci-stub (rule 'vm-users: the edu device', {policy}:{line})
  05:02.0  1234:11e8  QEMU edu device                      endpoint  -         → vfio-pci (rule 'vm-users: the edu device', {policy}:{line})
  The bind moves other members too, so it needs --group: vfio-gate bind 05:02.0 --group
Policy sha256 ",
            policy = fx.policy().display(),
            line = header_line(LAB_POLICY, "vm-users: the edu device"),
        );
        if !r.stdout.starts_with(&expected_head) {
            r.fail(&format!("expected\n{expected_head}"));
        }
        r.stdout_has(&format!(
            "({} and 1 drop-in, read offline)\n",
            fx.policy().display()
        ));
    }

    #[test]
    fn a_deny_in_a_drop_in_leaves_no_plan_and_says_which_rule() {
        if !needs_root("explain_offline::a_deny_in_a_drop_in_leaves_no_plan_and_says_which_rule") {
            return;
        }
        let fx = lab();
        let r = explain(&fx, &["05:02.0", "--user", "bob"]);
        r.code(0).stdout_has(&format!(
            "No plan works for IOMMU group 11 with vfio-pci: group 11 also holds 05:01.0 on the \
             host driver e1000, which must leave it for the group to be usable; rule 'bob never \
             parks devices on pci-stub' ({}:2) denies putting it on pci-stub\n",
            fx.drop_in_dir().join("50-bob.toml").display()
        ));
        r.stdout_has(&format!(
            "  pci-stub  DENIED   by rule 'bob never parks devices on pci-stub' ({}:2)\n",
            fx.drop_in_dir().join("50-bob.toml").display()
        ));
    }

    #[test]
    fn deny_wins_over_an_allow_and_the_guard_is_named() {
        if !needs_root("explain_offline::deny_wins_over_an_allow_and_the_guard_is_named") {
            return;
        }
        let fx = lab();
        let r = explain(&fx, &["03:00.0", "--user", "1000", "--to", "vfio-pci"]);
        r.code(0)
            .stdout_has(&format!(
                "  vfio-pci  DENIED   by rule {}\n                     overrides the allow {} \
                 (deny wins)\n",
                lab_rule(&fx, "never storage"),
                lab_rule(&fx, "alice: the NVMe")
            ))
            .stdout_has("No group plan: the policy does not allow vfio-pci\n");
        let r = explain(&fx, &["00:02.0", "--user", "alice"]);
        r.code(0)
            .stdout_has(&format!(
                "  vfio-pci  ALLOWED  by rule {}\n",
                lab_rule(&fx, "alice: the display")
            ))
            .stdout_has(
                "Refused now by a built-in guard, whatever the policy says:\n  boot VGA: 00:02.0 \
                 is the boot VGA device",
            );
        // Nobody's rule: the default.
        let r = explain(&fx, &["05:02.0", "--user", "carol"]);
        r.code(0)
            .stdout_has("For carol (uid 1002):\n")
            .stdout_has("  vfio-pci  DENIED   no rule matches: denied by default\n");
        // No --user: the caller (these tests run as root, whom nothing is granted).
        let r = explain(&fx, &["01:00.0"]);
        r.code(0)
            .stdout_has("For root (uid 0):\n")
            .stdout_has("  pci-stub  DENIED   no rule matches: denied by default\n");
    }

    #[test]
    fn json_is_the_report_the_helper_would_send_with_the_documented_hash() {
        if !needs_root("explain_offline::json_is_the_report_the_helper_would_send") {
            return;
        }
        let fx = lab();
        let r = explain(&fx, &["05:02.0", "--user", "alice", "--json"]);
        r.code(0).stderr_empty();
        let report: ExplainReport = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| r.fail(&format!("not an ExplainReport: {e}")));
        assert_eq!(report.uid, 1000);
        assert_eq!(report.iommu_group, Some(11));
        assert_eq!(report.holder, None);
        assert_eq!(report.verdicts.len(), 2);
        assert!(report.verdicts[0].allowed);
        let plan = report.plan.clone().unwrap().unwrap();
        let actions: Vec<String> = plan
            .steps
            .iter()
            .map(|s| match &s.action {
                StepAction::Bind { driver, rule } => {
                    format!(
                        "{} -> {driver} ({}:{})",
                        s.device.short(),
                        rule.name,
                        rule.line
                    )
                }
                StepAction::Keep { .. } => format!("{} keep", s.device.short()),
            })
            .collect();
        let line = header_line(LAB_POLICY, "vm-users: the edu device");
        assert_eq!(
            actions,
            [
                "04:00.0 keep".to_owned(),
                format!("05:01.0 -> pci-stub (vm-users: the edu device:{line})"),
                format!("05:02.0 -> vfio-pci (vm-users: the edu device:{line})"),
            ]
        );
        // The hash as docs/policy.md says to compute it by hand.
        let script = format!(
            "export LC_ALL=C; for f in {main} {dir}/*.toml; do [ -f \"$f\" ] || continue; \
             printf '%s\\0%s\\0' \"$f\" \"$(wc -c < \"$f\" | tr -d ' ')\"; cat \"$f\"; done | \
             sha256sum",
            main = fx.policy().display(),
            dir = fx.drop_in_dir().display()
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        let by_hand = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            Some(report.policy_sha256.as_str()),
            by_hand.split_whitespace().next()
        );
    }

    #[test]
    fn a_missing_device_an_unknown_user_and_a_refused_policy() {
        if !needs_root("explain_offline::a_missing_device_an_unknown_user_and_a_refused_policy") {
            return;
        }
        let fx = lab();
        explain(&fx, &["09:00.0"])
            .code(4)
            .stderr_has("vfio-gate: no PCI device 09:00.0 in ")
            .stderr_has("lspci -D");
        explain(&fx, &["05:02.0", "--user", "dave"])
            .code(2)
            .stderr_has("no user \"dave\" in ");
        explain(&fx, &["05:02.0", "--user", "5003"]).code(2);
        // A world-writable drop-in refuses the whole policy, as in the helper.
        use std::os::unix::fs::PermissionsExt;
        let drop_in = fx.drop_in_dir().join("50-bob.toml");
        std::fs::set_permissions(&drop_in, std::fs::Permissions::from_mode(0o666)).unwrap();
        let r = explain(&fx, &["05:02.0"]);
        r.code(9)
            .stdout_empty()
            .stderr_has("vfio-gate: the policy is refused: the policy file ")
            .stderr_has(&format!("chmod go-w {}", drop_in.display()));
        let r = explain(&fx, &["05:02.0", "--json"]);
        r.code(9).json_error("policy");
    }
}

/// `vfio-gate policy check`: findings with file:line, exit 0 / 8 / 9.
mod policy_check {
    use super::*;

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
        assert_eq!(v["exit_code"], 8);
        assert_eq!(v["loaded"], true);
        assert_eq!(v["warnings"], 3);
        assert_eq!(v["errors"], 0);
        assert_eq!(v["files"].as_array().map(Vec::len), Some(2));
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
            let drop_ins: Vec<(&str, &str)> =
                drop_ins.iter().map(|(n, t)| (*n, t.as_str())).collect();
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
                (v["loaded"].clone(), v["errors"].clone()),
                (false.into(), 1.into())
            );
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
}

/// `vfio-gate policy report`: who may bind what, through which rule.
mod policy_report {
    use super::*;

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
        assert_eq!(display["device"], "0000:00:02.0");
        assert_eq!(display["vendor"], 0x1234);
        assert_eq!(display["device_id"], 0x1111);
        assert_eq!(display["class"], 0x030000);
        assert_eq!(display["driver"], "vfio-pci");
        assert_eq!(display["rule"]["name"], "alice: the display");
        assert_eq!(display["rule"]["file"], fx.policy().display().to_string());
        assert_eq!(
            display["rule"]["line"],
            header_line(LAB_POLICY, "alice: the display")
        );
        assert_eq!(display["guard"]["guard"], "BootVga");
        assert!(rows[1]["guard"].is_null());
        // Nobody is granted storage: the deny wins over alice's NVMe rule.
        assert!(rows.iter().all(|r| r["device"] != "0000:03:00.0"));
        // bob's drop-in fences pci-stub off for him only.
        assert!(
            rows.iter()
                .any(|r| r["user"] == "alice" && r["driver"] == "pci-stub")
        );
        assert!(
            rows.iter()
                .all(|r| !(r["user"] == "bob" && r["driver"] == "pci-stub"))
        );
        assert_eq!(v["sha256"].as_str().map(str::len), Some(64));
        assert_eq!(
            v["files"][1]["path"],
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
}
