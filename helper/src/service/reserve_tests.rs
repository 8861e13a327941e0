//! Reservations and adoption on the simulated kernel: holding at boot, a lease on a reserved
//! device, release back to the reservation, devices already on vfio-pci taken as they are.

use vfio_gate_protocol::{BusyReason, Driver, Response, WireError};

use super::tests::{
    Fixture, a, alice, bind, bind_req, bob, driver_of, fixture_with, handle, release, summary,
};
use super::{HoldResult, Service};
use crate::kernel::NodeOwner;

/// The guest's policy for the lab devices, with the e1000e parked on pci-stub from boot and the
/// edu of group 11 held on vfio-pci with its group's e1000 on pci-stub.
const POLICY: &str = r#"
[[rule]]
name = "alice: the lab devices"
subjects = { users = ["alice"] }
devices = [
  { address = "01:00.0", vendor = "8086", device = "10d3" },
  { address = "05:02.0", vendor = "1234", device = "11e8" },
  { address = "00:06.0", vendor = "1234", device = "11e8" },
]
drivers = ["vfio-pci"]
companions = ["pci-stub"]

[[reserve]]
name = "the e1000e, parked"
devices = [{ address = "01:00.0", vendor = "8086", device = "10d3" }]
driver = "pci-stub"

[[reserve]]
name = "group 11 held"
devices = [{ address = "05:02.0", vendor = "1234", device = "11e8" }]
driver = "vfio-pci"
companions = "pci-stub"

[[reserve]]
name = "the mounted disk, which the guard keeps"
devices = [{ address = "03:00.0", vendor = "1b36", device = "0010" }]
driver = "pci-stub"
"#;

fn results(service: &Service) -> Vec<(String, HoldResult)> {
    service
        .apply_reservations(None)
        .devices
        .into_iter()
        .map(|(d, r)| (d.short(), r))
        .collect()
}

fn override_of(f: &Fixture, dev: &str) -> Option<String> {
    f.kernel
        .device(a(dev))
        .unwrap()
        .driver_override
        .map(|d| d.to_string())
}

fn held() -> Fixture {
    let f = fixture_with(POLICY);
    f.service.apply_reservations(None);
    f
}

#[test]
fn reservations_hold_their_devices_and_the_guards_keep_the_hosts() {
    let f = fixture_with(POLICY);
    let late = |was: &str| HoldResult::Late { was: was.into() };
    let got = results(&f.service);
    assert_eq!(got[0], ("01:00.0".into(), late("e1000e")));
    assert!(
        matches!(&got[1], (d, HoldResult::Refused { reason }) if d == "03:00.0" && reason.contains("mounted")),
        "{got:?}"
    );
    assert_eq!(got[2], ("05:01.0".into(), late("e1000")));
    assert_eq!(got[3], ("05:02.0".into(), HoldResult::Held));
    assert_eq!(got.len(), 4, "{got:?}");
    for (dev, driver) in [
        ("01:00.0", "pci-stub"),
        ("05:01.0", "pci-stub"),
        ("05:02.0", "vfio-pci"),
        ("03:00.0", "nvme"),
    ] {
        assert_eq!(driver_of(&f.kernel, dev).as_deref(), Some(driver), "{dev}");
    }
    assert_eq!(override_of(&f, "05:02.0").as_deref(), Some("vfio-pci"));
    // Again: nothing to do, nothing written.
    let writes = f.kernel.log().len();
    let again = results(&f.service);
    assert!(
        again
            .iter()
            .filter(|(d, _)| d != "03:00.0")
            .all(|(_, r)| *r == HoldResult::Already),
        "{again:?}"
    );
    assert_eq!(f.kernel.log().len(), writes);
}

#[test]
fn one_device_that_appears_is_held_and_others_are_left_alone() {
    let f = fixture_with(POLICY);
    let report = f.service.apply_reservations(Some(a("05:01.0")));
    assert_eq!(
        report.devices,
        vec![(
            a("05:01.0"),
            HoldResult::Late {
                was: "e1000".into()
            }
        )]
    );
    assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("e1000e"));
    // A device no reservation names: nothing, not even a line.
    let none = f.service.apply_reservations(Some(a("00:1b.0")));
    assert!(none.devices.is_empty());
}

#[test]
fn a_lease_moves_a_reserved_device_and_its_release_returns_it_to_the_reservation() {
    let f = held();
    assert!(matches!(
        bind(&f.service, &alice(), "01:00.0", Driver::VfioPci).0,
        Response::Bound(_)
    ));
    assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("vfio-pci"));
    // While the lease holds it, the reservation waits.
    let during = f.service.apply_reservations(Some(a("01:00.0")));
    assert_eq!(during.devices[0].1, HoldResult::Leased { uid: 1000 });
    let (resp, _) = release(&f.service, &alice(), "01:00.0");
    let Response::Released(r) = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(
        r.groups[0].devices[0].restored_driver.as_deref(),
        Some("pci-stub")
    );
    assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("pci-stub"));
    assert_eq!(override_of(&f, "01:00.0").as_deref(), Some("pci-stub"));
}

#[test]
fn a_reservation_added_after_a_bind_is_where_the_release_goes() {
    // Bound from e1000e without any reservation…
    let f = fixture_with(POLICY.split("[[reserve]]").next().unwrap());
    assert!(matches!(
        bind(&f.service, &alice(), "01:00.0", Driver::VfioPci).0,
        Response::Bound(_)
    ));
    // …then the admin reserves it (a new helper, the same leases and kernel).
    let g = Service::new(
        f.kernel.clone(),
        Box::new(f.kernel.clone()),
        vfio_gate_policy::Policy::parse(POLICY, "policy.toml", &super::tests::Names).unwrap(),
        crate::state::StateDir::open(f.service.state.path()).unwrap(),
        f.service.roots.clone(),
        f.service.tuning.clone(),
    );
    assert!(matches!(
        release(&g, &alice(), "01:00.0").0,
        Response::Released(_)
    ));
    assert_eq!(driver_of(&f.kernel, "01:00.0").as_deref(), Some("pci-stub"));
}

#[test]
fn a_group_already_held_on_vfio_pci_is_adopted_without_a_move() {
    let f = held();
    let writes = f.kernel.log().len();
    let (resp, record) = handle(
        &f.service,
        &alice(),
        &bind_req(&["05:02.0"], Driver::VfioPci, true, false),
    );
    let Response::Bound(report) = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(
        summary(&report.plan),
        ["04:00.0 keep", "05:01.0 keep", "05:02.0 adopt vfio-pci"]
    );
    assert_eq!(record.rule.unwrap().name, "alice: the lab devices");
    // No override, unbind or probe: only the node, handed to alice.
    let log = f.kernel.log();
    assert_eq!(log[writes..], ["chown /dev/vfio/11 1000:1000 600"]);
    assert_eq!(
        f.kernel.node(11),
        Some(NodeOwner {
            uid: 1000,
            gid: 1000,
            mode: 0o600
        })
    );
    // Bob may not take it: on vfio-pci or not, the policy decides, and it names him nowhere.
    assert!(matches!(
        bind(&f.service, &bob(), "05:02.0", Driver::VfioPci).0,
        Response::Error(WireError::Denied { .. })
    ));
    // The release leaves it on vfio-pci, and the node goes back to root.
    assert!(matches!(
        release(&f.service, &alice(), "05:02.0").0,
        Response::Released(_)
    ));
    assert_eq!(driver_of(&f.kernel, "05:02.0").as_deref(), Some("vfio-pci"));
    assert_eq!(driver_of(&f.kernel, "05:01.0").as_deref(), Some("pci-stub"));
    assert_eq!(f.kernel.node(11), Some(NodeOwner::ROOT));
    let unbinds = f.kernel.log()[writes..]
        .iter()
        .filter(|l| !l.starts_with("chown"))
        .count();
    assert_eq!(unbinds, 0, "{:?}", &f.kernel.log()[writes..]);
}

#[test]
fn a_device_on_vfio_pci_by_ids_is_adopted_and_stays_after_release() {
    // vfio-pci.ids=1234:11e8 at boot: both edus on vfio-pci, no override.
    let f = fixture_with(POLICY.split("[[reserve]]").next().unwrap());
    f.kernel.load_driver("vfio-pci");
    f.kernel.claim_for("00:06.0", "vfio-pci");
    let (resp, _) = handle(
        &f.service,
        &alice(),
        &bind_req(&["00:06.0"], Driver::VfioPci, true, false),
    );
    let Response::Bound(report) = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(
        summary(&report.plan),
        ["00:06.0 adopt vfio-pci", "00:06.1 keep"]
    );
    assert!(matches!(
        release(&f.service, &alice(), "00:06.0").0,
        Response::Released(_)
    ));
    assert_eq!(driver_of(&f.kernel, "00:06.0").as_deref(), Some("vfio-pci"));
    assert_eq!(override_of(&f, "00:06.0"), None);
}

#[test]
fn a_group_a_vm_outside_vfio_gate_has_open_is_not_adopted() {
    let f = held();
    f.kernel.hold_group(11);
    let (resp, _) = handle(
        &f.service,
        &alice(),
        &bind_req(&["05:02.0"], Driver::VfioPci, true, false),
    );
    assert!(
        matches!(
            &resp,
            Response::Error(WireError::Busy {
                why: BusyReason::HeldOutsideVfioGate { device },
                ..
            }) if *device == a("05:02.0")
        ),
        "{resp:?}"
    );
    assert!(f.service.state.read(11).unwrap().is_none(), "no lease");
}
