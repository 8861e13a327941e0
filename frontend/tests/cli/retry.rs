//! A helper at its connection limit: retried, and only that.

use std::time::{Duration, Instant};

use vfio_gate_protocol::{BusyReason, Request, Response, WireError};

use crate::fixtures::*;
use crate::util::{FakeHelper, Reply, against, run};

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
