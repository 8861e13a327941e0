//! Failures, whatever the command: exit statuses, messages, next steps and `--json` errors.

use std::time::{Duration, Instant};

use vfio_gate_protocol::{
    BusyReason, DenyReason, Guard, PROTOCOL_VERSION, ReleaseReport, Request, Response, WireError,
};

use crate::fixtures::*;
use crate::util::{FakeHelper, Reply, against, pci_ids_fixture, run, vfio_gate};

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
        // The typed reason of a denial or a busy answer, tagged by its kind.
        let reason = match &wire {
            WireError::Denied { why, .. } => Some(match why {
                DenyReason::Policy => serde_json::json!({"kind": "policy"}),
                DenyReason::GroupLimit { held, max } => {
                    serde_json::json!({"kind": "group_limit", "held": held, "max": max})
                }
                DenyReason::GroupPlan { device } => {
                    serde_json::json!({"kind": "group_plan", "device": device.to_string()})
                }
                DenyReason::NotHeld { device } => {
                    serde_json::json!({"kind": "not_held", "device": device.to_string()})
                }
                other => panic!("teach this test about {other:?}"),
            }),
            WireError::Busy { why, .. } => Some(match why {
                BusyReason::BlockedInKernel { device } => serde_json::json!({
                    "kind": "blocked_in_kernel", "device": device.to_string()
                }),
                BusyReason::YouHoldIt { group, devices } => serde_json::json!({
                    "kind": "you_hold_it",
                    "iommu_group": group,
                    "devices": devices.iter().map(ToString::to_string).collect::<Vec<_>>(),
                }),
                BusyReason::HeldOutsideVfioGate { device } => serde_json::json!({
                    "kind": "held_outside_vfio_gate", "device": device.to_string()
                }),
                other => panic!("teach this test about {other:?}"),
            }),
            _ => None,
        };
        assert_eq!(e.get("reason"), reason.as_ref(), "{wire:?}");
        assert_eq!(fake.requests().len(), 2);
    }
}

/// `w` with every text meant for people replaced: what the CLI does must not change.
fn reword(w: &WireError) -> WireError {
    let r = || "reworded: in use, already hold, outside vfio-gate, connections limit".to_owned();
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
        assert_eq!(a.get("reason"), b.get("reason"), "{wire:?}");
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
    assert_eq!(e["iommu_group"], 11);
    assert_eq!(e["rerun"], "vfio-gate bind 05:02.0 --to vfio-pci --group");
    assert_eq!(e["plan"]["members"][1]["action"], "bind");
    assert_eq!(e["plan"]["members"][1]["to"], "pci-stub");
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
    assert_eq!(
        e["holder"],
        serde_json::json!({"uid": 0, "user": "root", "since": 1_700_000_000})
    );
    assert_eq!(e["iommu_group"], 11);
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
            "add intel_iommu=on to the kernel command line",
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
        let name = match guard {
            Guard::NoIommuGroup => "no_iommu_group",
            Guard::BootVga => "boot_vga",
            Guard::HostInUse => "host_in_use",
            Guard::NotEndpoint => "not_endpoint",
            Guard::SriovEnabled => "sriov_enabled",
        };
        assert_eq!(e["guard"], name);
        assert!(e["next_step"].as_str().unwrap().contains(advice), "{e}");
        fake.requests();
    }
}

#[test]
fn a_missing_socket_is_status_5_with_the_way_to_start_the_helper() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    // (list reads sysfs instead: list.rs tests that.)
    let mut cmd = vfio_gate();
    cmd.arg("--socket").arg(&socket).args(["release", "--all"]);
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
    cmd.arg("--socket")
        .arg(&socket)
        .args(["explain", "01:00.0"]);
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
