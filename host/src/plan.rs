//! Planning a bind: what happens to every member of the IOMMU group.
//!
//! A VM needs a whole *viable* group. Binding only the device the user asked for leaves the group
//! unusable when another endpoint in it is still on a host driver ("group N is not viable"). The
//! plan says, member by member, what a bind does: the named devices go to the requested driver;
//! for vfio-pci, every other endpoint on a host driver goes to pci-stub where the policy allows it
//! as a companion (the group becomes viable, yet the user cannot open that endpoint through
//! VFIO); bridges stay as they are when their driver keeps the group viable; anything else
//! refuses the whole plan. Planning is pure: sysfs is read before, the plan is executed after.

use vfio_gate_policy::{Decision, DeviceFacts, Policy, Subject};
use vfio_gate_protocol::{Driver, MemberKind, PciAddress, Plan, PlanStep, RuleRef, StepAction};

use crate::groups::{Member, ViabilityRule, classify, viable};
use crate::view::{DriverName, PciView, SysfsError};

/// One group member as read from sysfs before planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    pub facts: DeviceFacts,
    pub kind: MemberKind,
    pub driver: Option<DriverName>,
}

/// Why no plan can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The policy does not let the caller bind a device they named.
    #[error("{reason}")]
    Denied {
        device: PciAddress,
        rule: Option<RuleRef>,
        reason: String,
    },
    /// A member stands in the way and the policy gives no way around it.
    #[error("{reason}")]
    Impossible { device: PciAddress, reason: String },
}

/// The policy questions a plan asks, answered by the caller (so planning stays pure).
pub trait Permissions {
    /// May the caller bind `device` to `driver`?
    fn decide(&self, device: &DeviceFacts, driver: Driver) -> Decision;
    /// May the caller move `member` to `driver` as a companion of the primary device?
    fn companion(&self, member: &DeviceFacts, driver: Driver) -> Decision;
}

fn driver_is(d: &Option<DriverName>, name: &str) -> bool {
    d.as_ref().is_some_and(|n| n.as_str() == name)
}

fn keep(m: &MemberState, reason: impl Into<String>) -> PlanStep {
    step(
        m,
        StepAction::Keep {
            reason: reason.into(),
        },
    )
}

fn step(m: &MemberState, action: StepAction) -> PlanStep {
    PlanStep {
        device: m.facts.address,
        kind: m.kind,
        vendor: m.facts.vendor,
        device_id: m.facts.device,
        driver: m.driver.as_ref().map(ToString::to_string),
        action,
    }
}

/// Reads one group member as a plan sees it: facts, kind (endpoint or bridge) and driver.
pub fn member_state(view: &dyn PciView, dev: PciAddress) -> Result<MemberState, SysfsError> {
    let facts = view.facts(dev)?;
    Ok(MemberState {
        kind: classify(facts.class, view.header_type(dev)?),
        driver: view.driver(dev)?,
        facts,
    })
}

/// A plan's questions answered by a policy, for one subject binding one primary device: what
/// the helper asks, and what an offline `explain` asks to reach the same answer.
#[derive(Debug)]
pub struct PolicyAnswers<'a> {
    pub policy: &'a Policy,
    pub subject: &'a Subject,
    /// The device the subject named first.
    pub primary: DeviceFacts,
    /// The driver the subject asked for.
    pub driver: Driver,
}

impl Permissions for PolicyAnswers<'_> {
    fn decide(&self, device: &DeviceFacts, driver: Driver) -> Decision {
        self.policy.decide(self.subject, device, driver)
    }
    fn companion(&self, member: &DeviceFacts, driver: Driver) -> Decision {
        self.policy
            .decide_companion(self.subject, &self.primary, self.driver, member, driver)
    }
}

/// Plans binding `named` (all in `group`, endpoints) to `driver`.
pub fn plan(
    group: u32,
    members: &[MemberState],
    named: &[PciAddress],
    driver: Driver,
    perms: &dyn Permissions,
    rule: ViabilityRule,
) -> Result<Plan, PlanError> {
    let mut steps = Vec::with_capacity(members.len());
    for m in members {
        let addr = m.facts.address;
        let short = addr.short();
        if named.contains(&addr) {
            // Already on the driver asked for (a reservation, `vfio-pci.ids=`, an admin): the
            // caller takes it as it is, and a release leaves it there.
            let already = driver_is(&m.driver, driver.as_str());
            match perms.decide(&m.facts, driver) {
                Decision::Allow(rule) if already => {
                    steps.push(step(m, StepAction::Adopt { driver, rule }))
                }
                Decision::Allow(rule) => steps.push(step(m, StepAction::Bind { driver, rule })),
                Decision::Deny(rule) => {
                    let reason = match &rule {
                        Some(r) => format!("rule {r} denies binding {short} to {driver}"),
                        None => format!("no policy rule lets you bind {short} to {driver}"),
                    };
                    return Err(PlanError::Denied {
                        device: addr,
                        rule,
                        reason,
                    });
                }
            }
            continue;
        }
        if driver == Driver::PciStub {
            // pci-stub gives nobody access to anything: the rest of the group is irrelevant.
            steps.push(keep(
                m,
                "not named; a pci-stub bind does not need the group",
            ));
            continue;
        }
        let current = m.driver.as_ref().map_or("no driver", DriverName::as_str);
        match (m.kind, &m.driver) {
            (MemberKind::Endpoint, None) => steps.push(keep(
                m,
                "a device without a driver does not block the group",
            )),
            (MemberKind::Endpoint, Some(d)) if d.as_str() == "pci-stub" => {
                steps.push(keep(m, "pci-stub does not block the group"))
            }
            (MemberKind::Endpoint, Some(d)) if d.as_str() == "vfio-pci" => {
                // Whoever opens the group can open this device too.
                match perms.decide(&m.facts, Driver::VfioPci) {
                    Decision::Allow(_) => steps.push(keep(
                        m,
                        "already on vfio-pci, and the policy lets you use it",
                    )),
                    Decision::Deny(_) => {
                        return Err(PlanError::Impossible {
                            device: addr,
                            reason: format!(
                                "{short} is on vfio-pci outside vfio-gate and the policy does not let you use it, yet opening group {group} would"
                            ),
                        });
                    }
                }
            }
            (MemberKind::Endpoint, Some(_)) => match perms.companion(&m.facts, Driver::PciStub) {
                Decision::Allow(rule) => steps.push(step(
                    m,
                    StepAction::Bind {
                        driver: Driver::PciStub,
                        rule,
                    },
                )),
                Decision::Deny(deny) => {
                    let why = match deny {
                        Some(r) => format!("rule {r} denies putting it on pci-stub"),
                        None => format!(
                            "no rule lets you put it on pci-stub (an admin can add companions = [\"pci-stub\"] to the rule that grants {}, or allow pci-stub for {short})",
                            named.first().map_or_else(String::new, |a| a.short())
                        ),
                    };
                    return Err(PlanError::Impossible {
                        device: addr,
                        reason: format!(
                            "group {group} also holds {short} on the host driver {current}, which must leave it for the group to be usable; {why}"
                        ),
                    });
                }
            },
            (_, _) => {
                let bridge = Member {
                    address: addr,
                    kind: m.kind,
                    driver: m.driver.clone(),
                };
                if viable(&[bridge], rule).is_ok() {
                    steps.push(keep(
                        m,
                        match &m.driver {
                            Some(_) => {
                                format!(
                                    "a {} whose driver ({current}) keeps the group viable",
                                    m.kind
                                )
                            }
                            None => {
                                format!("a {} without a driver does not block the group", m.kind)
                            }
                        },
                    ));
                } else {
                    return Err(PlanError::Impossible {
                        device: addr,
                        reason: format!(
                            "group {group} holds the {} {short} on {current}, which keeps the group from being viable; vfio-gate never moves bridges",
                            m.kind
                        ),
                    });
                }
            }
        }
    }
    for addr in named {
        if !members.iter().any(|m| m.facts.address == *addr) {
            return Err(PlanError::Impossible {
                device: *addr,
                reason: format!("{} is not in IOMMU group {group}", addr.short()),
            });
        }
    }
    Ok(Plan {
        group: Some(group),
        steps,
    })
}

/// Whether the plan moves a member the caller did not name (so needs `--group`).
pub fn moves_companions(plan: &Plan, named: &[PciAddress]) -> bool {
    plan.steps
        .iter()
        .any(|s| matches!(s.action, StepAction::Bind { .. }) && !named.contains(&s.device))
}

/// The members and drivers the group will have once the plan has run.
pub fn after(members: &[MemberState], plan: &Plan) -> Vec<Member> {
    members
        .iter()
        .map(|m| {
            let target =
                plan.steps
                    .iter()
                    .find_map(|s| match (&s.action, s.device == m.facts.address) {
                        (StepAction::Bind { driver, .. }, true) => Some(DriverName::from(*driver)),
                        _ => None,
                    });
            Member {
                address: m.facts.address,
                kind: m.kind,
                driver: target.or_else(|| m.driver.clone()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Perms {
        allow_vfio: Vec<&'static str>,
        companions: Vec<&'static str>,
        deny_stub: Vec<&'static str>,
    }

    fn rule(name: &str) -> RuleRef {
        RuleRef {
            name: name.into(),
            file: "policy.toml".into(),
            line: 1,
        }
    }

    impl Permissions for Perms {
        fn decide(&self, d: &DeviceFacts, driver: Driver) -> Decision {
            let a = d.address.short();
            if driver == Driver::VfioPci && self.allow_vfio.contains(&a.as_str()) {
                Decision::Allow(rule("alice"))
            } else if driver == Driver::PciStub && self.deny_stub.contains(&a.as_str()) {
                Decision::Deny(Some(rule("no stub")))
            } else {
                Decision::Deny(None)
            }
        }
        fn companion(&self, d: &DeviceFacts, driver: Driver) -> Decision {
            let a = d.address.short();
            if self.deny_stub.contains(&a.as_str()) {
                return Decision::Deny(Some(rule("no stub")));
            }
            if driver == Driver::PciStub && self.companions.contains(&a.as_str()) {
                Decision::Allow(rule("companions"))
            } else {
                Decision::Deny(None)
            }
        }
    }

    fn member(addr: &str, kind: MemberKind, driver: Option<&str>) -> MemberState {
        MemberState {
            facts: DeviceFacts {
                address: addr.parse().unwrap(),
                vendor: 0x8086,
                device: 0x100e,
                subsystem_vendor: 0,
                subsystem_device: 0,
                class: 0x020000,
                physical_slot: None,
            },
            kind,
            driver: driver.map(|d| DriverName::new(d).unwrap()),
        }
    }

    fn group11(bridge: Option<&str>, e1000: Option<&str>) -> Vec<MemberState> {
        vec![
            member("04:00.0", MemberKind::Bridge, bridge),
            member("05:01.0", MemberKind::Endpoint, e1000),
            member("05:02.0", MemberKind::Endpoint, None),
        ]
    }

    fn a(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    fn actions(p: &Plan) -> Vec<String> {
        p.steps
            .iter()
            .map(|s| match &s.action {
                StepAction::Bind { driver, .. } => format!("{} -> {driver}", s.device.short()),
                StepAction::Adopt { driver, .. } => format!("{} adopt {driver}", s.device.short()),
                StepAction::Keep { .. } => format!("{} keep", s.device.short()),
            })
            .collect()
    }

    #[test]
    fn the_issue_case_edu_with_e1000_as_companion() {
        let perms = Perms {
            allow_vfio: vec!["05:02.0"],
            companions: vec!["05:01.0"],
            deny_stub: vec![],
        };
        let members = group11(None, Some("e1000"));
        let p = plan(
            11,
            &members,
            &[a("05:02.0")],
            Driver::VfioPci,
            &perms,
            ViabilityRule::DmaOwnership,
        )
        .unwrap();
        assert_eq!(
            actions(&p),
            ["04:00.0 keep", "05:01.0 -> pci-stub", "05:02.0 -> vfio-pci"]
        );
        assert!(moves_companions(&p, &[a("05:02.0")]));
        assert!(viable(&after(&members, &p), ViabilityRule::DmaOwnership).is_ok());
    }

    #[test]
    fn naming_both_puts_both_on_vfio_pci() {
        let perms = Perms {
            allow_vfio: vec!["05:02.0", "05:01.0"],
            companions: vec![],
            deny_stub: vec![],
        };
        let named = [a("05:02.0"), a("05:01.0")];
        let p = plan(
            11,
            &group11(None, Some("e1000")),
            &named,
            Driver::VfioPci,
            &perms,
            ViabilityRule::DmaOwnership,
        )
        .unwrap();
        assert_eq!(
            actions(&p),
            ["04:00.0 keep", "05:01.0 -> vfio-pci", "05:02.0 -> vfio-pci"]
        );
        assert!(!moves_companions(&p, &named));
    }

    #[test]
    fn refusals() {
        let none = Perms {
            allow_vfio: vec!["05:02.0"],
            companions: vec![],
            deny_stub: vec![],
        };
        let e = plan(
            11,
            &group11(None, Some("e1000")),
            &[a("05:02.0")],
            Driver::VfioPci,
            &none,
            ViabilityRule::DmaOwnership,
        )
        .unwrap_err();
        assert!(
            matches!(&e, PlanError::Impossible { device, reason } if device.short() == "05:01.0" && reason.contains("companions")),
            "{e}"
        );

        let denied = Perms {
            allow_vfio: vec!["05:02.0"],
            companions: vec!["05:01.0"],
            deny_stub: vec!["05:01.0"],
        };
        let e = plan(
            11,
            &group11(None, Some("e1000")),
            &[a("05:02.0")],
            Driver::VfioPci,
            &denied,
            ViabilityRule::DmaOwnership,
        )
        .unwrap_err();
        assert!(e.to_string().contains("no stub"), "{e}");

        // A bridge on a driver that claims DMA cannot be moved.
        let ok = Perms {
            allow_vfio: vec!["05:02.0"],
            companions: vec!["05:01.0"],
            deny_stub: vec![],
        };
        let e = plan(
            11,
            &group11(Some("shpchp"), None),
            &[a("05:02.0")],
            Driver::VfioPci,
            &ok,
            ViabilityRule::DmaOwnership,
        )
        .unwrap_err();
        assert!(
            matches!(&e, PlanError::Impossible { device, .. } if device.short() == "04:00.0"),
            "{e}"
        );
        // …but the legacy rule accepts any bridge.
        assert!(
            plan(
                11,
                &group11(Some("shpchp"), None),
                &[a("05:02.0")],
                Driver::VfioPci,
                &ok,
                ViabilityRule::Legacy
            )
            .is_ok()
        );

        // The named device itself not allowed.
        let e = plan(
            11,
            &group11(None, None),
            &[a("05:01.0")],
            Driver::VfioPci,
            &ok,
            ViabilityRule::DmaOwnership,
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::Denied { rule: None, .. }));

        // Another endpoint already on vfio-pci that the caller may not use.
        let e = plan(
            11,
            &group11(None, Some("vfio-pci")),
            &[a("05:02.0")],
            Driver::VfioPci,
            &ok,
            ViabilityRule::DmaOwnership,
        )
        .unwrap_err();
        assert!(e.to_string().contains("outside vfio-gate"), "{e}");
    }

    #[test]
    fn a_device_already_on_the_target_is_adopted_as_it_is() {
        let ok = Perms {
            allow_vfio: vec!["05:02.0"],
            companions: vec!["05:01.0"],
            deny_stub: vec![],
        };
        // On vfio-pci already (vfio-pci.ids=, a reservation): taken without a move, and the
        // e1000 beside it still goes to pci-stub.
        let mut members = group11(None, Some("e1000"));
        members[2].driver = DriverName::new("vfio-pci");
        let p = plan(
            11,
            &members,
            &[a("05:02.0")],
            Driver::VfioPci,
            &ok,
            ViabilityRule::DmaOwnership,
        )
        .unwrap();
        assert_eq!(
            actions(&p),
            [
                "04:00.0 keep",
                "05:01.0 -> pci-stub",
                "05:02.0 adopt vfio-pci"
            ]
        );
        assert!(viable(&after(&members, &p), ViabilityRule::DmaOwnership).is_ok());
        // The policy still decides: adopting needs the same grant as moving.
        let none = Perms {
            allow_vfio: vec![],
            companions: vec![],
            deny_stub: vec![],
        };
        members[1].driver = None;
        let e = plan(
            11,
            &members,
            &[a("05:02.0")],
            Driver::VfioPci,
            &none,
            ViabilityRule::DmaOwnership,
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::Denied { .. }), "{e}");
    }

    #[test]
    fn pci_stub_binds_only_what_is_named() {
        struct StubOk;
        impl Permissions for StubOk {
            fn decide(&self, _: &DeviceFacts, _: Driver) -> Decision {
                Decision::Allow(rule("any"))
            }
            fn companion(&self, _: &DeviceFacts, _: Driver) -> Decision {
                Decision::Deny(None)
            }
        }
        let p = plan(
            11,
            &group11(None, Some("e1000")),
            &[a("05:02.0")],
            Driver::PciStub,
            &StubOk,
            ViabilityRule::DmaOwnership,
        )
        .unwrap();
        assert_eq!(
            actions(&p),
            ["04:00.0 keep", "05:01.0 keep", "05:02.0 -> pci-stub"]
        );
    }

    #[test]
    fn a_named_device_outside_the_group_is_refused() {
        let ok = Perms {
            allow_vfio: vec!["05:02.0", "01:00.0"],
            companions: vec![],
            deny_stub: vec![],
        };
        let e = plan(
            11,
            &group11(None, None),
            &[a("05:02.0"), a("01:00.0")],
            Driver::VfioPci,
            &ok,
            ViabilityRule::DmaOwnership,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not in IOMMU group 11"), "{e}");
    }
}
