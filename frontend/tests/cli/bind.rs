//! `vfio-gate bind`: the plan, the outcome, dry runs, and the group node.

use vfio_gate_protocol::{
    BindReport, Driver, MemberKind, Plan, PlanStep, Request, Response, StepAction,
};

use crate::fixtures::*;
use crate::util::{FakeHelper, Reply, against, pci_ids_fixture, run, vfio_gate};

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
fn json_is_the_plan_with_each_member_s_action() {
    let (_dir, node) = fake_node(0o600);
    let fake = FakeHelper::answering(report(false, Some(&node)));
    let r = run(against(&fake, &["bind", "05:02.0", "--group", "--json"]));
    let v = r.code(0).stderr_empty().json();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["dry_run"], false);
    assert_eq!(v["vfio_node"], node.as_str());
    assert_eq!(v["plan"]["iommu_group"], 11);
    let members = v["plan"]["members"]
        .as_array()
        .unwrap_or_else(|| r.fail("no members"));
    assert_eq!(members.len(), 3);
    assert_eq!(members[1]["address"], "0000:05:01.0");
    assert_eq!(members[1]["short"], "05:01.0");
    assert_eq!(members[1]["vendor"], "8086");
    assert_eq!(members[1]["device"], "100e");
    assert_eq!(members[1]["kind"], "endpoint");
    assert_eq!(members[1]["driver"], "e1000");
    assert_eq!(members[1]["action"], "bind");
    assert_eq!(members[1]["to"], "pci-stub");
    assert_eq!(members[1]["rule"]["line"], 20);
    assert_eq!(members[0]["action"], "keep");
    assert_eq!(members[0]["reason"], "keeps the group viable");
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

/// The test guest booted with `vfio-pci.ids=1234:11e8`: 00:06.0 is on vfio-pci already, and the
/// helper takes it as it is (beside it, the pci-testdev has no driver).
fn adopting_plan() -> Plan {
    Plan {
        group: Some(5),
        steps: vec![
            PlanStep {
                device: addr("00:06.0"),
                kind: MemberKind::Endpoint,
                vendor: 0x1234,
                device_id: 0x11e8,
                driver: Some("vfio-pci".into()),
                action: StepAction::Adopt {
                    driver: Driver::VfioPci,
                    rule: rule(),
                },
            },
            PlanStep {
                device: addr("00:06.1"),
                kind: MemberKind::Endpoint,
                vendor: 0x1b36,
                device_id: 0x0005,
                driver: None,
                action: StepAction::Keep {
                    reason: "a device without a driver does not block the group".into(),
                },
            },
        ],
    }
}

#[test]
fn an_adopted_device_stays_where_it_is_and_the_bind_says_nothing_moved() {
    let (_dir, node) = fake_node(0o600);
    let fake = FakeHelper::start(vec![
        Reply::Answer(Response::Bound(BindReport {
            plan: adopting_plan(),
            dry_run: false,
            vfio_node: Some(node.clone()),
        })),
        Reply::Answer(Response::Bound(BindReport {
            plan: adopting_plan(),
            dry_run: true,
            vfio_node: None,
        })),
        Reply::Answer(Response::Bound(BindReport {
            plan: adopting_plan(),
            dry_run: false,
            vfio_node: Some(node.clone()),
        })),
    ]);
    let r = run(against(
        &fake,
        &["bind", "00:06.0", "--group", "--pci-ids", "/nonexistent"],
    ));
    r.code(0).stderr_empty();
    let expected = format!(
        "IOMMU group 5:\n  \
         MEMBER   IDS        KIND      DRIVER    ACTION\n  \
         00:06.0  1234:11e8  endpoint  vfio-pci  stays on vfio-pci: yours as it is (rule 'lab NIC \
         for vm-users', /etc/vfio-gate/policy.toml:12)\n  \
         00:06.1  1b36:0005  endpoint  -         stays without a driver: a device without a driver \
         does not block the group\n\
         Nothing moved for 00:06.0 on vfio-pci: taken as it was, with no unbind or probe; a \
         release leaves it there\n\
         IOMMU group 5 is yours: {node} (owner {}, mode 0600). Release with: vfio-gate release \
         00:06.0\n",
        passwd_name(own_uid(&node))
    );
    if r.stdout != expected {
        r.fail(&format!("expected\n{expected}"));
    }
    let r = run(against(&fake, &["bind", "00:06.0", "--dry-run"]));
    r.code(0).stderr_empty().stdout_has(
        "Already there: 00:06.0 on vfio-pci; the bind takes it as it is, with no unbind or \
         probe, and a release leaves it there\ndry run: nothing was changed",
    );
    // JSON: the action as the helper sent it.
    let r = run(against(&fake, &["bind", "00:06.0", "--json"]));
    let v = r.code(0).stderr_empty().json();
    let member = &v["plan"]["members"][0];
    assert_eq!(member["action"], "adopt");
    assert_eq!(member["to"], "vfio-pci");
    assert_eq!(member["rule"]["line"], 12);
    fake.requests();
}
