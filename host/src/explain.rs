//! What a bind would meet, computed once for the helper's `explain` and the CLI's offline one:
//! the policy's verdict per driver with every rule that spoke, the guard that refuses the device
//! now, and the whole-group plan a vfio-pci bind would carry out.

use vfio_gate_policy::{Policy, Subject};
use vfio_gate_protocol::{Driver, DriverVerdict, ExplainReport, GuardFinding, PciAddress, Plan};

use crate::groups::ViabilityRule;
use crate::guards::{self, GuardError, HostUse};
use crate::plan::{self, MemberState, PolicyAnswers};
use crate::view::{PciView, SysfsError};

/// The explanation could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error(transparent)]
    Guard(#[from] GuardError),
}

/// Explains a bind of `dev` to `driver` (every driver when `None`) by `subject`. The holder is
/// left `None`: only the helper knows its leases.
pub fn explain(
    policy: &Policy,
    view: &dyn PciView,
    host_use: &dyn HostUse,
    rule: ViabilityRule,
    subject: &Subject,
    dev: PciAddress,
    driver: Option<Driver>,
) -> Result<ExplainReport, ExplainError> {
    let m = plan::member_state(view, dev)?;
    let drivers = driver.map_or_else(|| Driver::ALL.to_vec(), |d| vec![d]);
    let verdicts: Vec<DriverVerdict> = drivers
        .iter()
        .map(|&d| {
            let e = policy.explain(subject, &m.facts, d);
            DriverVerdict {
                driver: d,
                allowed: e.decision.is_allowed(),
                rule: e.decision.rule().cloned(),
                allows: e.allows,
                denies: e.denies,
            }
        })
        .collect();
    let guards = guards::check(view, host_use, dev, m.kind)?
        .map(|r| GuardFinding {
            guard: r.guard,
            reason: r.reason,
        })
        .into_iter()
        .collect();
    let group = view.iommu_group(dev).ok().flatten();
    let vfio_allowed = verdicts
        .iter()
        .any(|v| v.driver == Driver::VfioPci && v.allowed);
    let plan = match group {
        Some(g) if vfio_allowed => Some(group_plan(policy, view, subject, g, &m, rule)),
        _ => None,
    };
    Ok(ExplainReport {
        device: dev,
        vendor: m.facts.vendor,
        device_id: m.facts.device,
        class: m.facts.class,
        driver: m.driver.map(|d| d.to_string()),
        iommu_group: group,
        uid: subject.uid,
        verdicts,
        guards,
        plan,
        holder: None,
        reserved: crate::reserve::held(view, policy, dev)?
            .reservation()
            .cloned(),
        policy_sha256: policy.sha256(),
    })
}

/// The whole-group plan a vfio-pci bind of `m` by `subject` would carry out, or why none works.
fn group_plan(
    policy: &Policy,
    view: &dyn PciView,
    subject: &Subject,
    group: u32,
    m: &MemberState,
    rule: ViabilityRule,
) -> Result<Plan, String> {
    let members = view
        .group_members(group)
        .and_then(|ms| {
            ms.into_iter()
                .map(|d| plan::member_state(view, d))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| e.to_string())?;
    let answers = PolicyAnswers {
        policy,
        subject,
        primary: m.facts,
        driver: Driver::VfioPci,
    };
    plan::plan(
        group,
        &members,
        &[m.facts.address],
        Driver::VfioPci,
        &answers,
        rule,
    )
    .map_err(|e| e.to_string())
}
