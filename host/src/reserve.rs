//! Which devices the policy holds from boot on this host, and on which driver.
//!
//! A `[[reserve]]` names devices by matchers (the policy crate answers for a device's own facts);
//! with `companions` it also holds the other endpoints of each reserved device's IOMMU group,
//! which only sysfs knows. This module puts the two together for the helper (which applies the
//! holds at boot, when a device appears, and when a lease ends) and for the CLI (`list`,
//! `explain`, `policy check`, `boot-config`), so both see the same holds.
//!
//! A device named by a reservation is held as that reservation says; a companion hold applies
//! only to an endpoint no reservation names itself. Holds that disagree on the driver hold
//! nothing ([`Held::Conflict`]).

use vfio_gate_policy::{Policy, Reserved};
use vfio_gate_protocol::{Driver, MemberKind, PciAddress, Reservation};

use crate::plan::member_state;
use crate::view::{PciView, SysfsError};

/// How the policy holds one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    No,
    Yes(Reservation),
    /// Reservations disagree on its driver, so none holds it; the text says which.
    Conflict(String),
}

impl Held {
    pub fn reservation(&self) -> Option<&Reservation> {
        match self {
            Held::Yes(r) => Some(r),
            Held::No | Held::Conflict(_) => None,
        }
    }

    pub fn driver(&self) -> Option<Driver> {
        self.reservation().map(|r| r.driver)
    }
}

/// How `policy` holds `dev` on this host.
pub fn held(view: &dyn PciView, policy: &Policy, dev: PciAddress) -> Result<Held, SysfsError> {
    let me = member_state(view, dev)?;
    match policy.reserved(&me.facts) {
        Reserved::Yes { driver, by } => {
            return Ok(Held::Yes(Reservation {
                driver,
                rule: by.origin().clone(),
                companion_of: None,
            }));
        }
        Reserved::Conflict(by) => {
            let names: Vec<String> = by
                .iter()
                .map(|r| format!("{} ({})", r.origin(), r.driver()))
                .collect();
            return Ok(Held::Conflict(format!(
                "reserved by {} with different drivers",
                names.join(" and ")
            )));
        }
        Reserved::No => {}
    }
    // Only endpoints are held as companions: bridges are never moved.
    if me.kind != MemberKind::Endpoint {
        return Ok(Held::No);
    }
    let holds = companion_holds(view, policy, dev)?;
    match holds.first() {
        None => Ok(Held::No),
        Some(first) if holds.iter().all(|h| h.driver == first.driver) => {
            Ok(Held::Yes(first.clone()))
        }
        Some(_) => {
            let names: Vec<String> = holds
                .iter()
                .map(|h| format!("{} ({} as a companion)", h.rule, h.driver))
                .collect();
            Ok(Held::Conflict(format!(
                "held as a companion by {} with different drivers",
                names.join(" and ")
            )))
        }
    }
}

/// Every companion hold on `dev`: for each other member of its IOMMU group that a reservation
/// with `companions` names (without conflict), that reservation's companions driver, in the
/// order of the group's members. Whether they apply is [`held`]'s business: not to a device a
/// reservation names itself, nor to a bridge, nor when they disagree.
pub fn companion_holds(
    view: &dyn PciView,
    policy: &Policy,
    dev: PciAddress,
) -> Result<Vec<Reservation>, SysfsError> {
    if policy.reservations().is_empty() {
        return Ok(Vec::new());
    }
    let Some(group) = view.iommu_group(dev)? else {
        return Ok(Vec::new());
    };
    let mut holds: Vec<Reservation> = Vec::new();
    for other in view.group_members(group)? {
        if other == dev {
            continue;
        }
        // A member that vanished meanwhile holds nothing.
        let Ok(facts) = view.facts(other) else {
            continue;
        };
        if let Reserved::Yes { by, .. } = policy.reserved(&facts)
            && let Some(companions) = by.companions()
        {
            holds.push(Reservation {
                driver: companions,
                rule: by.origin().clone(),
                companion_of: Some(other),
            });
        }
    }
    Ok(holds)
}

/// Every device of this host the policy holds or means to hold (conflicts included), in address
/// order. A device that vanishes while it is read is left out.
pub fn holds(view: &dyn PciView, policy: &Policy) -> Result<Vec<(PciAddress, Held)>, SysfsError> {
    if policy.reservations().is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for dev in view.devices()? {
        match held(view, policy, dev) {
            Ok(Held::No) => {}
            Ok(h) => out.push((dev, h)),
            Err(SysfsError::NoDevice(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeView;
    use vfio_gate_policy::NameResolver;

    struct NoNames;
    impl NameResolver for NoNames {
        fn uid(&self, _: &str) -> Option<u32> {
            None
        }
        fn gid(&self, _: &str) -> Option<u32> {
            None
        }
    }

    fn policy(text: &str) -> Policy {
        Policy::parse(text, "/etc/vfio-gate/policy.toml", &NoNames).unwrap()
    }

    fn a(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    const GROUP_11: &str = r#"
[[reserve]]
name = "edu with its group"
devices = [{ address = "05:02.0", vendor = "1234", device = "11e8" }]
driver = "vfio-pci"
companions = "pci-stub"
"#;

    #[test]
    fn a_reserved_device_and_its_group_companions() {
        let v = FakeView::guest_layout();
        let p = policy(GROUP_11);
        let edu = held(&v, &p, a("05:02.0")).unwrap();
        assert_eq!(edu.driver(), Some(Driver::VfioPci));
        assert_eq!(edu.reservation().unwrap().companion_of, None);
        let e1000 = held(&v, &p, a("05:01.0")).unwrap();
        assert_eq!(e1000.driver(), Some(Driver::PciStub));
        assert_eq!(
            e1000.reservation().unwrap().companion_of,
            Some(a("05:02.0"))
        );
        assert_eq!(e1000.reservation().unwrap().rule.name, "edu with its group");
        // The bridge in the group is never held; devices elsewhere are not.
        assert_eq!(held(&v, &p, a("04:00.0")).unwrap(), Held::No);
        assert_eq!(held(&v, &p, a("01:00.0")).unwrap(), Held::No);
        let all: Vec<PciAddress> = holds(&v, &p).unwrap().into_iter().map(|h| h.0).collect();
        assert_eq!(all, vec![a("05:01.0"), a("05:02.0")]);
    }

    #[test]
    fn a_device_named_by_a_reservation_is_held_as_it_says() {
        let v = FakeView::guest_layout();
        let p = policy(&format!(
            "{GROUP_11}
[[reserve]]
name = \"the e1000 on vfio-pci\"
devices = [{{ address = \"05:01.0\", vendor = \"8086\", device = \"100e\" }}]
driver = \"vfio-pci\"
"
        ));
        let e1000 = held(&v, &p, a("05:01.0")).unwrap();
        assert_eq!(e1000.driver(), Some(Driver::VfioPci));
        assert_eq!(e1000.reservation().unwrap().companion_of, None);
    }

    #[test]
    fn disagreeing_holds_hold_nothing() {
        let v = FakeView::guest_layout();
        let p = policy(
            r#"
[[reserve]]
name = "edu fn0"
devices = [{ address = "00:06.0" }]
driver = "vfio-pci"
companions = "pci-stub"

[[reserve]]
name = "both edus"
devices = [{ vendor = "1234", device = "11e8" }]
driver = "pci-stub"
"#,
        );
        let Held::Conflict(why) = held(&v, &p, a("00:06.0")).unwrap() else {
            panic!()
        };
        assert!(
            why.contains("'edu fn0'") && why.contains("'both edus'"),
            "{why}"
        );
        // 00:06.0 is held by neither, so neither are its companions.
        assert_eq!(held(&v, &p, a("00:06.1")).unwrap(), Held::No);
        assert_eq!(
            held(&v, &p, a("05:02.0")).unwrap().driver(),
            Some(Driver::PciStub)
        );
    }

    #[test]
    fn companion_holds_that_disagree_are_listed_typed_and_hold_nothing() {
        let mut v = FakeView::guest_layout();
        // A third endpoint in group 11, reserved with other companions than the edu.
        let mut third = v.devices[&a("05:01.0")].clone();
        third.facts.address = a("05:03.0");
        third.facts.device = 0x10d3;
        third.driver = None;
        v.devices.insert(a("05:03.0"), third);
        let p = policy(&format!(
            "{GROUP_11}
[[reserve]]
name = \"the 82574L, with its group on vfio-pci\"
devices = [{{ address = \"05:03.0\", vendor = \"8086\", device = \"10d3\" }}]
driver = \"vfio-pci\"
companions = \"vfio-pci\"
"
        ));
        let holds = companion_holds(&v, &p, a("05:01.0")).unwrap();
        let by: Vec<(Driver, &str, Option<PciAddress>)> = holds
            .iter()
            .map(|h| (h.driver, h.rule.name.as_str(), h.companion_of))
            .collect();
        assert_eq!(
            by,
            [
                (Driver::PciStub, "edu with its group", Some(a("05:02.0"))),
                (
                    Driver::VfioPci,
                    "the 82574L, with its group on vfio-pci",
                    Some(a("05:03.0"))
                ),
            ]
        );
        assert!(matches!(
            held(&v, &p, a("05:01.0")).unwrap(),
            Held::Conflict(_)
        ));
        // Each reserved device is held as its own reservation says, whatever the other's
        // companions are.
        assert_eq!(
            held(&v, &p, a("05:02.0")).unwrap().driver(),
            Some(Driver::VfioPci)
        );
        assert_eq!(
            held(&v, &p, a("05:03.0")).unwrap().driver(),
            Some(Driver::VfioPci)
        );
    }
}
