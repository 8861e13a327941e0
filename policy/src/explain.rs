//! Questions about a policy: why a request gets its answer ([`Policy::explain`]), and who may
//! do what on a host ([`Policy::report`]). Both are derived from [`Policy::decide`], which stays
//! the only authority, so they cannot disagree with it.

use serde::Serialize;
use vfio_gate_protocol::{Driver, PciAddress, RuleRef};

use crate::device::DeviceFacts;
use crate::model::{Decision, DriverSet, Effect, Subject};
use crate::policy::Policy;

/// Why `decide` answers as it does: the decision and every rule that speaks about the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// What [`Policy::decide`] answers, with the deciding rule.
    pub decision: Decision,
    /// Every allow rule that applies, in order of consultation (file in load order, then line).
    pub allows: Vec<RuleRef>,
    /// Every deny rule that applies, in order of consultation. Any one of them is enough to deny.
    pub denies: Vec<RuleRef>,
    /// What the applying allow rules let the subject do to the *other* endpoints of the device's
    /// IOMMU group (their `companions`), in [`Driver::ALL`] order. Empty unless the decision is
    /// an allow. A deny on a member still wins ([`Policy::decide_companion`]).
    pub companions: Vec<Driver>,
}

/// One effective permission: `subject` may bind `device` to `driver`, granted by `rule`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    /// The subject's label as the caller gave it (a user name, typically).
    pub subject: String,
    pub device: PciAddress,
    pub driver: Driver,
    /// The allow rule [`Policy::decide`] cites.
    pub rule: RuleRef,
}

impl Policy {
    /// Every rule that applies to (`subject`, `device`, `driver`), allow and deny, and the
    /// decision. Pure: the guards (boot VGA, host use, ...) are the helper's to add.
    pub fn explain(&self, subject: &Subject, device: &DeviceFacts, driver: Driver) -> Explanation {
        let address = device.address.to_string();
        let mut allows = Vec::new();
        let mut denies = Vec::new();
        let mut companions = DriverSet::default();
        for rule in self.rules() {
            if !rule.applies(subject, device, &address, driver) {
                continue;
            }
            match rule.effect {
                Effect::Allow => {
                    allows.push(rule.origin.clone());
                    for d in rule.companions.to_vec() {
                        companions.insert(d);
                    }
                }
                Effect::Deny => denies.push(rule.origin.clone()),
            }
        }
        let decision = self.decide(subject, device, driver);
        if !decision.is_allowed() {
            companions = DriverSet::default();
        }
        Explanation {
            decision,
            allows,
            denies,
            companions: companions.to_vec(),
        }
    }

    /// The effective permissions: every (subject, device, driver) that [`Policy::decide`]
    /// allows, with the rule it cites, sorted by subject label, then device, then driver.
    /// `subjects` pairs a label (shown in the report) with the subject's ids and groups.
    pub fn report(
        &self,
        subjects: &[(String, Subject)],
        devices: &[DeviceFacts],
    ) -> Vec<ReportRow> {
        let mut rows = Vec::new();
        for (label, subject) in subjects {
            for device in devices {
                for driver in Driver::ALL {
                    if let Decision::Allow(rule) = self.decide(subject, device, driver) {
                        rows.push(ReportRow {
                            subject: label.clone(),
                            device: device.address,
                            driver,
                            rule,
                        });
                    }
                }
            }
        }
        rows.sort_by(|a, b| {
            (&a.subject, a.device, a.driver).cmp(&(&b.subject, b.device, b.driver))
        });
        rows
    }
}
