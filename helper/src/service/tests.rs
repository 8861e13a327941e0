//! The service on the simulated kernel: decisions, plans, guards, leases, reconciliation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vfio_gate_policy::{NameResolver, Policy};
use vfio_gate_protocol::{
    DenyReason, Driver, Guard, PciAddress, Plan, ReleaseReport, ReleaseTarget, Request, Response,
    StepAction, WireError,
};

use super::*;
use crate::audit::Record;
use crate::kernel::sim::{SimDevice, SimKernel, SimOp};
use crate::kernel::{Kernel, NodeOwner};
use crate::roots::Roots;
use crate::sequence;
use crate::state::{Lease, LeasedDevice, Phase, StateDir};

pub(super) struct Names;
impl NameResolver for Names {
    fn uid(&self, user: &str) -> Option<u32> {
        match user {
            "alice" => Some(1000),
            "bob" => Some(1001),
            "carol" => Some(1002),
            _ => None,
        }
    }
    fn gid(&self, group: &str) -> Option<u32> {
        (group == "vm-users").then_some(1100)
    }
}

/// The guest's default policy (tests/vm/policy.toml), plus a rule that would hand out the
/// host's disk and NIC, to show the guards win over the policy.
const POLICY: &str = r#"
[settings]
admins = { users = ["carol"] }

[[rule]]
name = "alice's NIC and test devices"
subjects = { users = ["alice"], groups = ["vm-users"] }
devices = [
  { address = "01:00.0", vendor = "8086", device = "10d3" },
  { address = "00:06.*" },
  { address = "00:1b.0" },
]
drivers = ["vfio-pci"]

[[rule]]
name = "group 11"
subjects = { groups = ["vm-users"], users = ["bob"] }
devices = [{ address = "05:0?.0" }]
drivers = ["vfio-pci"]
companions = ["pci-stub"]

[[rule]]
name = "testdev on stub"
subjects = { groups = ["vm-users"] }
devices = [{ address = "00:06.1" }]
drivers = ["pci-stub"]

[[rule]]
name = "everything, for the guards to refuse"
subjects = { users = ["alice"] }
devices = [{ address = "02:00.0" }, { address = "03:00.0" }, { address = "04:00.0" }, { address = "00:1f.0" }, { address = "0a:00.0" }, { address = "0b:00.0" }, { address = "0c:00.0" }]
drivers = ["vfio-pci", "pci-stub"]

[[deny]]
name = "never storage"
devices = [{ class = "01xxxx" }]
subjects = { users = ["bob"] }
"#;

pub(super) fn alice() -> Peer {
    Peer {
        uid: 1000,
        gid: 1000,
        pid: 10,
        groups: vec![1000, 1100],
    }
}
pub(super) fn bob() -> Peer {
    Peer {
        uid: 1001,
        gid: 1001,
        pid: 11,
        groups: vec![1001],
    }
}
fn root() -> Peer {
    Peer {
        uid: 0,
        gid: 0,
        pid: 1,
        groups: vec![],
    }
}
pub(super) fn a(s: &str) -> PciAddress {
    s.parse().unwrap()
}

pub(super) struct Fixture {
    pub _tmp: tempfile::TempDir,
    pub kernel: Arc<SimKernel>,
    pub service: Service,
}

/// The service's roots for a test: the accounts in `tmp/root/etc`, leases in `tmp/state`, and
/// the production `/dev/vfio` (never opened: the simulated kernel holds the nodes).
fn roots(tmp: &std::path::Path) -> Roots {
    let etc = tmp.join("root/etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        "alice:x:1000:1000::/home/alice:/bin/sh\n\
         bob:x:1001:1001::/home/bob:/bin/sh\n\
         carol:x:1002:1002::/home/carol:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(etc.join("group"), "vm-users:x:1100:alice\n").unwrap();
    Roots {
        etc: tmp.join("root"),
        state: tmp.join("state"),
        ..Roots::default()
    }
}

fn fixture() -> Fixture {
    fixture_with(POLICY)
}

/// The guest's layout plus the devices only the simulated kernel has, under `policy`.
pub(super) fn fixture_with(policy: &str) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let kernel = Arc::new(SimKernel::guest_layout());
    // Devices the guest does not have, for the guards it cannot show.
    kernel.add_device(SimDevice {
        boot_vga: true,
        ..SimDevice::endpoint("0a:00.0", 0x1234, 0x1111, 0x030000, Some("bochs-drm")).in_group(20)
    });
    kernel.add_device(SimDevice {
        sriov_numvfs: 4,
        ..SimDevice::endpoint("0b:00.0", 0x8086, 0x1521, 0x020000, Some("igb")).in_group(21)
    });
    kernel.add_device(SimDevice::endpoint(
        "0c:00.0",
        0x8086,
        0x1521,
        0x020000,
        Some("igb"),
    ));
    kernel.load_driver("igb");
    let policy = Policy::parse(policy, "policy.toml", &Names).unwrap();
    let roots = roots(tmp.path());
    let state = StateDir::open(&roots.state).unwrap();
    let tuning = Tuning {
        write_timeout: Duration::from_millis(300),
        node_timeout: Duration::from_millis(300),
        ..Tuning::default()
    };
    let service = Service::new(
        kernel.clone(),
        Box::new(kernel.clone()),
        policy,
        state,
        roots,
        tuning,
    );
    service.reconcile();
    Fixture {
        _tmp: tmp,
        kernel,
        service,
    }
}

pub(super) fn bind_req(devs: &[&str], driver: Driver, group: bool, dry_run: bool) -> Request {
    Request::Bind {
        devices: devs.iter().map(|d| a(d)).collect(),
        driver,
        group,
        dry_run,
        hold: false,
    }
}

/// Handles `req` as the connection handler does: the outcome, and the audit record beside it.
fn outcome(s: &Service, p: &Peer, req: &Request) -> (Outcome, Record) {
    let mut record = Record::default();
    let outcome = s.handle(p, req, &mut record);
    (outcome, record)
}

pub(super) fn handle(s: &Service, p: &Peer, req: &Request) -> (Response, Record) {
    let (outcome, record) = outcome(s, p, req);
    (outcome.response, record)
}

pub(super) fn bind(s: &Service, p: &Peer, dev: &str, driver: Driver) -> (Response, Record) {
    handle(s, p, &bind_req(&[dev], driver, false, false))
}

pub(super) fn release(s: &Service, p: &Peer, dev: &str) -> (Response, Record) {
    handle(
        s,
        p,
        &Request::Release {
            target: ReleaseTarget::Device(a(dev)),
        },
    )
}

pub(super) fn driver_of(k: &SimKernel, dev: &str) -> Option<String> {
    k.device(a(dev)).unwrap().driver.map(|d| d.to_string())
}

pub(super) fn summary(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .map(|s| match &s.action {
            StepAction::Bind { driver, .. } => format!("{} -> {driver}", s.device.short()),
            StepAction::Adopt { driver, .. } => format!("{} adopt {driver}", s.device.short()),
            StepAction::Keep { .. } => format!("{} keep", s.device.short()),
        })
        .collect()
}

#[test]
fn alice_binds_and_releases_and_gets_the_node() {
    let f = fixture();
    let (resp, record) = bind(&f.service, &alice(), "01:00.0", Driver::VfioPci);
    let Response::Bound(report) = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(summary(&report.plan), ["01:00.0 -> vfio-pci"]);
    assert_eq!(report.vfio_node.as_deref(), Some("/dev/vfio/8"));
    assert_eq!(record.rule.unwrap().name, "alice's NIC and test devices");
    assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("vfio-pci"));
    assert_eq!(
        f.kernel.node(8),
        Some(NodeOwner {
            uid: 1000,
            gid: 1000,
            mode: 0o600
        })
    );
    let lease = f.service.state.read(8).unwrap().unwrap();
    assert_eq!((lease.owner_uid, lease.phase), (1000, Phase::Applied));

    let (resp, _) = release(&f.service, &alice(), "01:00.0");
    let Response::Released(r) = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(
        r.groups[0].devices[0].restored_driver.as_deref(),
        Some("e1000e")
    );
    assert_eq!(f.service.state.read(8).unwrap(), None);
    assert_eq!(
        f.kernel.node(8),
        None,
        "the node goes with the last vfio-pci member"
    );
}

#[test]
fn group_11_needs_group_and_a_dry_run_writes_nothing() {
    let f = fixture();
    let before = f.kernel.log();
    let (resp, record) = bind(&f.service, &alice(), "05:02.0", Driver::VfioPci);
    let Response::Error(WireError::NeedsGroup {
        group,
        plan,
        reason,
    }) = resp
    else {
        panic!("{resp:?}")
    };
    assert_eq!(group, 11);
    assert!(reason.contains("05:01.0 (e1000)"), "{reason}");
    assert_eq!(
        summary(&plan),
        ["04:00.0 keep", "05:01.0 -> pci-stub", "05:02.0 -> vfio-pci"]
    );
    assert_eq!(record.allowed, Some(false));
    assert_eq!(f.kernel.log(), before, "a refusal writes nothing");

    // --dry-run: the same plan, nothing written.
    let (resp, _) = handle(
        &f.service,
        &alice(),
        &bind_req(&["05:02.0"], Driver::VfioPci, true, true),
    );
    let Response::Bound(report) = resp else {
        panic!("{resp:?}")
    };
    assert!(report.dry_run);
    assert_eq!(
        summary(&report.plan),
        ["04:00.0 keep", "05:01.0 -> pci-stub", "05:02.0 -> vfio-pci"]
    );
    assert_eq!(f.kernel.log(), before, "a dry run writes nothing");
    assert_eq!(f.service.state.read(11).unwrap(), None);
}

#[test]
fn group_11_binds_edu_with_e1000_on_stub_for_one_holder_at_a_time() {
    let f = fixture();
    let (resp, _) = handle(
        &f.service,
        &alice(),
        &bind_req(&["05:02.0"], Driver::VfioPci, true, false),
    );
    assert!(matches!(resp, Response::Bound(_)), "{resp:?}");
    assert_eq!(driver_of(&f.kernel, "05:02.0").as_deref(), Some("vfio-pci"));
    assert_eq!(driver_of(&f.kernel, "05:01.0").as_deref(), Some("pci-stub"));
    assert_eq!(driver_of(&f.kernel, "04:00.0"), None);
    assert_eq!(
        f.kernel.node(11),
        Some(NodeOwner {
            uid: 1000,
            gid: 1000,
            mode: 0o600
        })
    );

    // Bob, whom the policy allows group 11 too, can touch no member while alice holds it.
    for dev in ["05:01.0", "05:02.0"] {
        let (resp, _) = bind(&f.service, &bob(), dev, Driver::VfioPci);
        assert!(
            matches!(
                resp,
                Response::Error(WireError::Held {
                    group: Some(11),
                    uid: 1000,
                    ..
                })
            ),
            "{resp:?}"
        );
        let (resp, _) = release(&f.service, &bob(), dev);
        assert!(
            matches!(resp, Response::Error(WireError::Held { .. })),
            "{resp:?}"
        );
    }

    let (resp, _) = release(&f.service, &alice(), "05:01.0");
    let Response::Released(r) = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(r.groups[0].devices.len(), 2);
    assert_eq!(driver_of(&f.kernel, "05:01.0").as_deref(), Some("e1000"));
    assert_eq!(driver_of(&f.kernel, "05:02.0"), None);
    assert_eq!(f.kernel.node(11), None);
    let d = f.kernel.device(a("05:01.0")).unwrap();
    assert_eq!(d.driver_override, None);
}

#[test]
fn a_failure_midway_through_a_group_plan_restores_every_member() {
    let f = fixture();
    // 05:01.0 goes to pci-stub first, then 05:02.0's probe fails.
    f.kernel.fail_next(SimOp::Probe, a("05:02.0"), libc::EIO);
    let (resp, _) = handle(
        &f.service,
        &alice(),
        &bind_req(&["05:02.0"], Driver::VfioPci, true, false),
    );
    let Response::Error(WireError::Failed { reason }) = resp else {
        panic!("{resp:?}")
    };
    assert!(reason.contains("put back as it was"), "{reason}");
    assert!(
        f.kernel.log().iter().any(|l| l == "probe 0000:05:01.0"),
        "the companion was bound first"
    );
    for (dev, driver) in [
        ("04:00.0", None),
        ("05:01.0", Some("e1000")),
        ("05:02.0", None),
    ] {
        let d = f.kernel.device(a(dev)).unwrap();
        assert_eq!(d.driver.map(|d| d.to_string()).as_deref(), driver, "{dev}");
        assert_eq!(d.driver_override, None, "{dev}");
    }
    assert_eq!(f.service.state.read(11).unwrap(), None);
    assert_eq!(f.kernel.node(11), None);
}

#[test]
fn guards_refuse_whatever_the_policy_says() {
    let f = fixture();
    let before = f.kernel.log();
    for (dev, guard) in [
        ("03:00.0", Guard::HostInUse),
        ("02:00.0", Guard::HostInUse),
        ("04:00.0", Guard::NotEndpoint),
        ("00:1f.0", Guard::NotEndpoint),
        ("0a:00.0", Guard::BootVga),
        ("0b:00.0", Guard::SriovEnabled),
        ("0c:00.0", Guard::NoIommuGroup),
    ] {
        for driver in Driver::ALL {
            let (resp, record) = bind(&f.service, &alice(), dev, driver);
            match resp {
                Response::Error(WireError::Refused {
                    guard: g, reason, ..
                }) => {
                    assert_eq!(g, guard, "{dev}: {reason}");
                    assert_eq!(record.allowed, Some(false));
                }
                other => panic!("{dev} {driver}: {other:?}"),
            }
        }
    }
    assert_eq!(f.kernel.log(), before);
}

#[test]
fn release_of_a_group_in_use_is_refused_at_once() {
    let f = fixture();
    assert!(matches!(
        bind(&f.service, &alice(), "01:00.0", Driver::VfioPci).0,
        Response::Bound(_)
    ));
    f.kernel.hold_group(8);
    let started = Instant::now();
    let (resp, _) = release(&f.service, &alice(), "01:00.0");
    let Response::Error(WireError::Busy {
        why: BusyReason::GroupInUse { group: 8 },
        detail,
    }) = resp
    else {
        panic!("{resp:?}")
    };
    assert!(
        detail.contains("group 8 is in use — stop the VM first"),
        "{detail}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // Others are served meanwhile.
    assert!(matches!(
        handle(&f.service, &bob(), &Request::List).0,
        Response::Devices(_)
    ));
    f.kernel.let_go_group(8);
    assert!(matches!(
        release(&f.service, &alice(), "01:00.0").0,
        Response::Released(_)
    ));
}

#[test]
fn decisions_table() {
    // Ok(granting rule) or Err(deciding deny rule, None for the default deny).
    type Expected = Result<&'static str, Option<&'static str>>;
    let table: &[(Peer, &str, Driver, Expected)] = &[
        (alice(), "00:06.1", Driver::PciStub, Ok("testdev on stub")),
        (alice(), "00:06.0", Driver::PciStub, Err(None)),
        (bob(), "01:00.0", Driver::VfioPci, Err(None)),
        (
            bob(),
            "03:00.0",
            Driver::VfioPci,
            Err(Some("never storage")),
        ),
        (
            alice(),
            "00:1b.0",
            Driver::VfioPci,
            Ok("alice's NIC and test devices"),
        ),
    ];
    for (peer, dev, driver, expected) in table {
        let f = fixture();
        let before = f.kernel.log();
        let (resp, record) = bind(&f.service, peer, dev, *driver);
        match (expected, &resp) {
            (Ok(rule), Response::Bound(_)) => assert_eq!(record.rule.unwrap().name, *rule),
            (Err(rule), Response::Error(WireError::Denied { rule: got, .. })) => {
                assert_eq!(got.as_ref().map(|r| r.name.as_str()), *rule, "{dev}");
                assert_eq!(record.allowed, Some(false));
                assert_eq!(f.kernel.log(), before, "a denied bind writes nothing");
            }
            _ => panic!("{peer:?} {dev} {driver}: expected {expected:?}, got {resp:?}"),
        }
    }
}

#[test]
fn one_holder_at_a_time_and_only_the_holder_releases() {
    let f = fixture();
    assert!(matches!(
        bind(&f.service, &alice(), "01:00.0", Driver::VfioPci).0,
        Response::Bound(_)
    ));
    let (resp, _) = bind(&f.service, &alice(), "01:00.0", Driver::VfioPci);
    assert!(
        matches!(resp, Response::Error(WireError::Busy { .. })),
        "{resp:?}"
    );
    let (resp, _) = release(&f.service, &bob(), "01:00.0");
    assert!(
        matches!(resp, Response::Error(WireError::Held { .. })),
        "{resp:?}"
    );
    assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("vfio-pci"));
    assert!(matches!(
        release(&f.service, &root(), "01:00.0").0,
        Response::Released(_)
    ));
}

#[test]
fn bad_requests() {
    let f = fixture();
    for req in [
        bind_req(&[], Driver::VfioPci, false, false),
        bind_req(&["01:00.0", "01:00.0"], Driver::VfioPci, false, false),
        bind_req(&["01:00.0", "00:06.0"], Driver::VfioPci, false, false),
    ] {
        let (resp, _) = handle(&f.service, &alice(), &req);
        assert!(
            matches!(resp, Response::Error(WireError::BadRequest { .. })),
            "{req:?}: {resp:?}"
        );
    }
}

#[test]
fn not_found_and_nothing_to_release() {
    let f = fixture();
    let (resp, _) = bind(&f.service, &alice(), "07:00.0", Driver::VfioPci);
    assert_eq!(
        resp,
        Response::Error(WireError::NotFound {
            device: a("07:00.0")
        })
    );
    let (resp, _) = release(&f.service, &alice(), "07:00.0");
    assert_eq!(
        resp,
        Response::Error(WireError::NotFound {
            device: a("07:00.0")
        })
    );
    let (resp, _) = release(&f.service, &alice(), "01:00.0");
    assert!(matches!(resp, Response::Error(WireError::Denied { .. })));
}

#[test]
fn a_kernel_failure_is_rolled_back_and_leaves_no_lease() {
    let f = fixture();
    f.kernel.fail_next(SimOp::Unbind, a("01:00.0"), libc::EBUSY);
    let (resp, _) = bind(&f.service, &alice(), "01:00.0", Driver::VfioPci);
    let Response::Error(WireError::Failed { reason }) = resp else {
        panic!("{resp:?}")
    };
    assert!(reason.contains("put back"), "{reason}");
    assert_eq!(f.service.state.read(8).unwrap(), None);
    let d = f.kernel.device(a("01:00.0")).unwrap();
    assert_eq!(d.driver.unwrap().as_str(), "e1000e");
    assert_eq!(d.driver_override, None);
}

#[test]
fn nodes_are_reconciled_with_the_leases_at_start() {
    let f = fixture();
    assert!(matches!(
        bind(&f.service, &alice(), "01:00.0", Driver::VfioPci).0,
        Response::Bound(_)
    ));
    // The node was re-created behind vfio-gate's back (udev, a rebind): root's again.
    f.kernel.chown_group_node(8, NodeOwner::ROOT).unwrap();
    let _again = restart(&f);
    assert_eq!(f.kernel.node(8).unwrap().uid, 1000);
}

#[test]
fn list_shows_what_the_caller_may_do_and_who_holds_what() {
    let f = fixture();
    let (resp, _) = bind(&f.service, &alice(), "00:06.1", Driver::PciStub);
    assert!(matches!(resp, Response::Bound(_)), "{resp:?}");
    let Response::Devices(devs) = handle(&f.service, &bob(), &Request::List).0 else {
        panic!()
    };
    assert!(
        devs.iter()
            .filter(|d| d.address.bus() != 5)
            .all(|d| d.allowed.is_empty()),
        "bob may only have group 11"
    );
    let tdev = devs.iter().find(|d| d.address == a("00:06.1")).unwrap();
    assert_eq!(tdev.holder.as_ref().map(|h| h.uid), Some(1000));
    assert_eq!(tdev.driver.as_deref(), Some("pci-stub"));
    let Response::Devices(devs) = handle(&f.service, &alice(), &Request::List).0 else {
        panic!()
    };
    let nic = devs.iter().find(|d| d.address == a("01:00.0")).unwrap();
    assert_eq!(nic.allowed, vec![Driver::VfioPci]);
    let nvme = devs.iter().find(|d| d.address == a("03:00.0")).unwrap();
    assert_eq!((nvme.class, nvme.iommu_group), (0x010802, Some(10)));
}

fn carol() -> Peer {
    Peer {
        uid: 1002,
        gid: 1002,
        pid: 12,
        groups: vec![1002],
    }
}

fn hold_req(devs: &[&str], driver: Driver, group: bool) -> Request {
    Request::Bind {
        devices: devs.iter().map(|d| a(d)).collect(),
        driver,
        group,
        dry_run: false,
        hold: true,
    }
}

/// A new helper over the same kernel and state directory, started as `run` starts it.
fn restart(f: &Fixture) -> Service {
    let service = unreconciled(f);
    service.reconcile();
    service
}

fn unreconciled(f: &Fixture) -> Service {
    Service::new(
        f.kernel.clone(),
        Box::new(f.kernel.clone()),
        Policy::parse(POLICY, "policy.toml", &Names).unwrap(),
        StateDir::open(f.service.state.path()).unwrap(),
        f.service.roots.clone(),
        Tuning {
            write_timeout: Duration::from_millis(300),
            node_timeout: Duration::from_millis(300),
            ..Tuning::default()
        },
    )
}

#[test]
fn a_held_bind_is_released_when_its_connection_goes() {
    let f = fixture();
    let (outcome, _) = outcome(
        &f.service,
        &alice(),
        &hold_req(&["01:00.0"], Driver::VfioPci, false),
    );
    assert!(
        matches!(outcome.response, Response::Bound(_)),
        "{outcome:?}"
    );
    assert_eq!(
        outcome.tied,
        Some(8),
        "the tie is the outcome's, for the connection"
    );
    assert!(f.service.state.read(8).unwrap().unwrap().tied);
    let Response::Devices(devs) = handle(&f.service, &bob(), &Request::List).0 else {
        panic!()
    };
    let nic = devs.iter().find(|d| d.address == a("01:00.0")).unwrap();
    assert!(nic.holder.as_ref().unwrap().tied);
    // A VM still has the group open when the connection drops: the release waits for it.
    f.kernel.hold_group(8);
    f.service.release_tied(8, &alice());
    assert_eq!(f.service.retry_orphans(), 1);
    assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("vfio-pci"));
    f.kernel.let_go_group(8);
    assert_eq!(f.service.retry_orphans(), 0);
    assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("e1000e"));
    assert_eq!(f.service.state.read(8).unwrap(), None);
    assert_eq!(f.kernel.node(8), None);
}

#[test]
fn an_untied_lease_survives_a_restart_and_a_tied_one_does_not() {
    let f = fixture();
    assert!(matches!(
        bind(&f.service, &alice(), "01:00.0", Driver::VfioPci).0,
        Response::Bound(_)
    ));
    let (resp, _) = handle(
        &f.service,
        &alice(),
        &hold_req(&["05:02.0"], Driver::VfioPci, true),
    );
    assert!(matches!(resp, Response::Bound(_)), "{resp:?}");
    let _again = restart(&f);
    assert_eq!(
        driver_of(&f.kernel, "01:00.0").as_deref(),
        Some("vfio-pci"),
        "kept"
    );
    assert_eq!(f.kernel.node(8).unwrap().uid, 1000);
    assert_eq!(
        driver_of(&f.kernel, "05:02.0"),
        None,
        "tied: released at start"
    );
    assert_eq!(driver_of(&f.kernel, "05:01.0").as_deref(), Some("e1000"));
    assert_eq!(f.service.state.read(11).unwrap(), None);
}

#[test]
fn a_half_done_bind_is_rolled_back_at_start() {
    let f = fixture();
    // The previous helper died after writing its intent and moving the companion only.
    let lease = Lease {
        group: 11,
        owner_uid: 1000,
        owner_gid: 1000,
        phase: Phase::Intent,
        since: 1,
        updated: 1,
        tied: false,
        devices: vec![
            LeasedDevice {
                device: a("05:01.0"),
                driver: Driver::PciStub,
                original: sequence::Original {
                    driver: vfio_gate_host::DriverName::new("e1000"),
                    driver_override: None,
                },
                ids: (0x8086, 0x100e),
            },
            LeasedDevice {
                device: a("05:02.0"),
                driver: Driver::VfioPci,
                original: sequence::Original {
                    driver: None,
                    driver_override: None,
                },
                ids: (0x1234, 0x11e8),
            },
        ],
    };
    f.service.state.write(&lease).unwrap();
    let stub = vfio_gate_host::DriverName::new("pci-stub").unwrap();
    f.kernel.set_override(a("05:01.0"), Some(&stub)).unwrap();
    f.kernel.unbind(a("05:01.0")).unwrap();
    f.kernel.probe(a("05:01.0")).unwrap();
    assert_eq!(driver_of(&f.kernel, "05:01.0").as_deref(), Some("pci-stub"));
    let _again = restart(&f);
    assert_eq!(driver_of(&f.kernel, "05:01.0").as_deref(), Some("e1000"));
    assert_eq!(f.kernel.device(a("05:01.0")).unwrap().driver_override, None);
    assert_eq!(f.service.state.read(11).unwrap(), None);
}

#[test]
fn a_half_done_release_is_finished_and_strangers_are_left_alone() {
    let f = fixture();
    let (resp, _) = handle(
        &f.service,
        &alice(),
        &bind_req(&["05:02.0"], Driver::VfioPci, true, false),
    );
    assert!(matches!(resp, Response::Bound(_)), "{resp:?}");
    let mut lease = f.service.state.read(11).unwrap().unwrap();
    lease.phase = Phase::Releasing;
    f.service.state.write(&lease).unwrap();
    // A different device appeared where the e1000 was.
    f.kernel.remove_device(a("05:01.0"));
    f.kernel
        .add_device(SimDevice::endpoint("05:01.0", 0x10ec, 0x8139, 0x020000, None).in_group(11));
    let _again = restart(&f);
    assert_eq!(
        driver_of(&f.kernel, "05:02.0"),
        None,
        "the release was finished"
    );
    let stranger = f.kernel.device(a("05:01.0")).unwrap();
    assert_eq!(
        (stranger.driver, stranger.driver_override),
        (None, None),
        "never touched"
    );
    assert_eq!(f.service.state.read(11).unwrap(), None);
}

#[test]
fn corrupt_records_are_reported_and_left_alone() {
    let f = fixture();
    std::fs::write(f.service.state.path().join("group-8.lease"), "not a lease").unwrap();
    let _again = restart(&f);
    assert_eq!(
        std::fs::read_to_string(f.service.state.path().join("group-8.lease")).unwrap(),
        "not a lease"
    );
    assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("e1000e"));
}

#[test]
fn admins_release_anyone_users_only_their_own() {
    let f = fixture();
    assert!(matches!(
        bind(&f.service, &alice(), "01:00.0", Driver::VfioPci).0,
        Response::Bound(_)
    ));
    assert!(matches!(
        bind(&f.service, &alice(), "00:06.1", Driver::PciStub).0,
        Response::Bound(_)
    ));
    let release_user = |p: &Peer, uid| {
        handle(
            &f.service,
            p,
            &Request::Release {
                target: ReleaseTarget::User(uid),
            },
        )
        .0
    };
    assert!(matches!(
        release_user(&bob(), 1000),
        Response::Error(WireError::NotAdmin { .. })
    ));
    let (resp, _) = release(&f.service, &carol(), "01:00.0");
    let Response::Released(r) = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(r.groups[0].owner_uid, 1000);
    let Response::Released(r) = release_user(&carol(), 1000) else {
        panic!()
    };
    assert_eq!(r.groups.len(), 1, "the pci-stub group");
    assert_eq!(driver_of(&f.kernel, "00:06.1"), None);
    // --all for a user who holds nothing releases nothing, successfully.
    let (resp, _) = handle(
        &f.service,
        &bob(),
        &Request::Release {
            target: ReleaseTarget::Mine,
        },
    );
    assert_eq!(resp, Response::Released(ReleaseReport { groups: vec![] }));
}

#[test]
fn release_all_gives_back_every_group_of_the_caller() {
    let f = fixture();
    assert!(matches!(
        bind(&f.service, &alice(), "01:00.0", Driver::VfioPci).0,
        Response::Bound(_)
    ));
    assert!(matches!(
        bind(&f.service, &alice(), "00:1b.0", Driver::VfioPci).0,
        Response::Bound(_)
    ));
    let (resp, _) = handle(
        &f.service,
        &alice(),
        &Request::Release {
            target: ReleaseTarget::Mine,
        },
    );
    let Response::Released(r) = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(r.groups.len(), 2);
    assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("e1000e"));
    assert_eq!(
        driver_of(&f.kernel, "00:1b.0").as_deref(),
        Some("snd_hda_intel")
    );
}

#[test]
fn node_mode_and_group_limit_come_from_the_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let kernel = Arc::new(SimKernel::guest_layout());
    let text = POLICY.replacen(
        "[settings]\n",
        "[settings]\nnode_mode = \"0660\"\nmax_groups_per_user = 1\n",
        1,
    );
    let policy = Policy::parse(&text, "policy.toml", &Names).unwrap();
    let roots = roots(tmp.path());
    let state = StateDir::open(&roots.state).unwrap();
    let service = Service::new(
        kernel.clone(),
        Box::new(kernel.clone()),
        policy,
        state,
        roots,
        Tuning::default(),
    );
    assert!(matches!(
        bind(&service, &alice(), "01:00.0", Driver::VfioPci).0,
        Response::Bound(_)
    ));
    assert_eq!(
        kernel.node(8),
        Some(NodeOwner {
            uid: 1000,
            gid: 1000,
            mode: 0o660
        })
    );
    let (resp, _) = bind(&service, &alice(), "00:1b.0", Driver::VfioPci);
    let Response::Error(WireError::Denied {
        why: DenyReason::GroupLimit { held: 1, max: 1 },
        detail,
        ..
    }) = resp
    else {
        panic!("{resp:?}")
    };
    assert!(detail.contains("max_groups_per_user = 1"), "{detail}");
    assert_eq!(
        driver_of(&kernel, "00:1b.0").as_deref(),
        Some("snd_hda_intel")
    );
}

#[test]
fn explain_says_what_a_bind_would_meet_without_doing_it() {
    let f = fixture();
    let before = f.kernel.log();
    let explain = |p: &Peer, dev: &str, uid| {
        handle(
            &f.service,
            p,
            &Request::Explain {
                device: a(dev),
                driver: None,
                uid,
            },
        )
        .0
    };
    let Response::Explained(e) = explain(&alice(), "05:02.0", None) else {
        panic!()
    };
    assert_eq!(e.uid, 1000);
    let vfio = &e.verdicts[0];
    assert!(vfio.allowed && vfio.rule.as_ref().unwrap().name == "group 11");
    assert!(
        !e.verdicts[1].allowed,
        "pci-stub is not granted for 05:02.0"
    );
    let plan = e.plan.unwrap().unwrap();
    assert_eq!(
        summary(&plan),
        ["04:00.0 keep", "05:01.0 -> pci-stub", "05:02.0 -> vfio-pci"]
    );
    assert!(e.guards.is_empty());
    assert_eq!(e.policy_sha256, f.service.policy().sha256());

    // The guard shows, and so does the deny rule that decides for bob.
    let Response::Explained(e) = explain(&alice(), "03:00.0", None) else {
        panic!()
    };
    assert_eq!(e.guards[0].guard, vfio_gate_protocol::Guard::HostInUse);
    // Only admins ask about others.
    assert!(matches!(
        explain(&bob(), "01:00.0", Some(1000)),
        Response::Error(WireError::NotAdmin { .. })
    ));
    assert_eq!(f.kernel.log(), before, "explain writes nothing");
}

#[test]
fn an_admin_explains_for_a_user_named_in_the_services_etc_root() {
    let f = fixture();
    let explain = |uid| {
        handle(
            &f.service,
            &carol(),
            &Request::Explain {
                device: a("05:02.0"),
                driver: None,
                uid: Some(uid),
            },
        )
        .0
    };
    // alice's groups come from the fixture's etc/group: only vm-users lets her have 05:02.0.
    let Response::Explained(e) = explain(1000) else {
        panic!()
    };
    assert_eq!(e.uid, 1000);
    assert!(e.verdicts[0].allowed);
    // A uid the fixture's passwd does not have, whatever this machine's /etc/passwd says.
    let resp = explain(0);
    let Response::Error(WireError::BadRequest { reason }) = resp else {
        panic!("{resp:?}")
    };
    let passwd = f.service.roots.passwd();
    assert!(reason.contains(&*passwd.to_string_lossy()), "{reason}");
}

#[test]
fn only_a_hold_bind_that_happened_ties_its_group_to_the_connection() {
    let f = fixture();
    let hold = |devs: &[&str], dry_run| Request::Bind {
        devices: devs.iter().map(|d| a(d)).collect(),
        driver: Driver::VfioPci,
        group: false,
        dry_run,
        hold: true,
    };
    let tie = |p: &Peer, req: &Request| {
        let (o, _) = outcome(&f.service, p, req);
        (o.tied, o.response)
    };
    // A dry run, a refusal, a bind without hold and a bind the kernel fails tie nothing.
    let (tied, resp) = tie(&alice(), &hold(&["01:00.0"], true));
    assert!(matches!(resp, Response::Bound(_)), "{resp:?}");
    assert_eq!(tied, None, "dry run");
    let (tied, resp) = tie(&bob(), &hold(&["03:00.0"], false));
    assert!(
        matches!(resp, Response::Error(WireError::Denied { .. })),
        "{resp:?}"
    );
    assert_eq!(tied, None, "denied");
    let (tied, resp) = tie(
        &alice(),
        &bind_req(&["00:1b.0"], Driver::VfioPci, false, false),
    );
    assert!(matches!(resp, Response::Bound(_)), "{resp:?}");
    assert_eq!(tied, None, "no hold");
    f.kernel.fail_next(SimOp::Probe, a("01:00.0"), libc::EIO);
    let (tied, resp) = tie(&alice(), &hold(&["01:00.0"], false));
    assert!(
        matches!(resp, Response::Error(WireError::Failed { .. })),
        "{resp:?}"
    );
    assert_eq!(tied, None, "rolled back");
    // The real thing.
    let (tied, resp) = tie(&alice(), &hold(&["01:00.0"], false));
    assert!(matches!(resp, Response::Bound(_)), "{resp:?}");
    assert_eq!(tied, Some(8));
    assert!(f.service.state.read(8).unwrap().unwrap().tied);
}

#[test]
fn the_audit_record_says_what_decided_at_each_step() {
    let f = fixture();
    let (_, record) = handle(&f.service, &alice(), &Request::List);
    assert_eq!(record, Record::default(), "a list decides nothing");
    let (_, record) = handle(
        &f.service,
        &alice(),
        &bind_req(&[], Driver::VfioPci, false, false),
    );
    assert_eq!(record, Record::default(), "malformed: no decision");

    let (_, record) = bind(&f.service, &bob(), "03:00.0", Driver::VfioPci);
    assert_eq!(record.allowed, Some(false));
    assert_eq!(record.rule.unwrap().name, "never storage");
    assert_eq!(record.devices, [a("03:00.0")]);

    // The plan allowed it, the client did not agree to move the companion: denied, and the
    // record keeps the rule and every device the plan would have moved.
    let (_, record) = bind(&f.service, &alice(), "05:02.0", Driver::VfioPci);
    assert_eq!(record.allowed, Some(false));
    assert_eq!(record.rule.unwrap().name, "group 11");
    assert_eq!(record.devices, [a("05:01.0"), a("05:02.0")]);

    let (_, record) = bind(&f.service, &alice(), "01:00.0", Driver::VfioPci);
    assert_eq!(record.allowed, Some(true));
    let (_, record) = release(&f.service, &bob(), "01:00.0");
    assert_eq!(
        (record.allowed, record.devices),
        (Some(false), vec![a("01:00.0")])
    );
    let (_, record) = release(&f.service, &alice(), "01:00.0");
    assert_eq!(record.allowed, Some(true));
}

#[test]
fn constructing_a_service_changes_nothing_reconciling_does() {
    let f = fixture();
    assert!(matches!(
        bind(&f.service, &alice(), "01:00.0", Driver::VfioPci).0,
        Response::Bound(_)
    ));
    // The previous helper died in the middle of binding group 8.
    let mut lease = f.service.state.read(8).unwrap().unwrap();
    lease.phase = Phase::Intent;
    f.service.state.write(&lease).unwrap();
    f.kernel.chown_group_node(8, NodeOwner::ROOT).unwrap();
    let before = f.kernel.log();

    let again = unreconciled(&f);
    assert_eq!(f.kernel.log(), before, "nothing written by the constructor");
    assert_eq!(
        f.service.state.read(8).unwrap().unwrap().phase,
        Phase::Intent
    );

    again.reconcile();
    assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("e1000e"));
    assert_eq!(f.service.state.read(8).unwrap(), None);
}
