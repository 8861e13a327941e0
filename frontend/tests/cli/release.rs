//! `vfio-gate release`: what went back where, and whose it was.

use vfio_gate_protocol::{
    BusyReason, ReleaseReport, ReleaseTarget, ReleasedGroup, Request, Response, RestoredDevice,
    WireError,
};

use crate::fixtures::*;
use crate::util::{FakeHelper, Reply, against, run, vfio_gate};

pub(super) fn restored(a: &str, expected: Option<&str>, restored: Option<&str>) -> RestoredDevice {
    RestoredDevice {
        device: addr(a),
        expected_driver: expected.map(str::to_owned),
        restored_driver: restored.map(str::to_owned),
    }
}

pub fn group_11(owner_uid: u32, e1000_back: Option<&str>) -> ReleasedGroup {
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
        serde_json::json!({"schema": 1, "groups": [], "restored_as_expected": true})
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
    assert_eq!(g["iommu_group"], 11);
    assert_eq!(g["holder"]["uid"], my_uid());
    assert_eq!(
        g["holder"]["user"],
        serde_json::json!(Some(passwd_name(my_uid())).filter(|n| *n != my_uid().to_string()))
    );
    // In address order.
    assert_eq!(
        g["devices"][0],
        serde_json::json!({
            "address": "0000:05:01.0",
            "short": "05:01.0",
            "expected_driver": "e1000",
            "restored_driver": null,
            "restored_as_expected": false,
        })
    );
    assert_eq!(g["devices"][1]["restored_as_expected"], true);
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
