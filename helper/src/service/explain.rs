//! `explain`: what a bind would meet, changing nothing.

// See the parent module about the `(WireError, Verdict)` error type.
#![allow(clippy::result_large_err)]

use super::*;

impl Service {
    /// What a bind would meet, for the caller or (admins) another user: the policy's verdict
    /// per driver with every rule that spoke, the guards, the group plan. Changes nothing.
    pub(super) fn explain(
        &self,
        peer: &Peer,
        dev: PciAddress,
        driver: Option<Driver>,
        uid: Option<u32>,
    ) -> Result<(Response, Verdict), (WireError, Verdict)> {
        let mut verdict = Verdict {
            devices: vec![dev],
            ..Verdict::default()
        };
        let subject = match uid {
            None => peer.subject(),
            Some(u) if u == peer.uid => peer.subject(),
            Some(u) => {
                if !self.policy.is_admin(&peer.subject()) {
                    verdict.allowed = Some(false);
                    return Err((
                        WireError::Denied {
                            rule: None,
                            reason: "only an admin (root, or [settings] admins in the policy) may ask about another user".into(),
                        },
                        verdict,
                    ));
                }
                match vfio_gate_policy::account_of(std::path::Path::new("/"), u) {
                    Ok(Some((_, s))) => s,
                    Ok(None) => {
                        return Err((
                            WireError::BadRequest {
                                reason: format!("no user with uid {u} in /etc/passwd"),
                            },
                            verdict,
                        ));
                    }
                    Err(e) => return Err((internal(format!("reading /etc/passwd: {e}")), verdict)),
                }
            }
        };
        let m = self
            .member_state(dev)
            .map_err(|e| (sysfs_error(dev, e), verdict.clone()))?;
        let drivers = driver.map_or_else(|| Driver::ALL.to_vec(), |d| vec![d]);
        let verdicts: Vec<DriverVerdict> = drivers
            .iter()
            .map(|&d| {
                let e = self.policy.explain(&subject, &m.facts, d);
                DriverVerdict {
                    driver: d,
                    allowed: e.decision.is_allowed(),
                    rule: e.decision.rule().cloned(),
                    allows: e.allows,
                    denies: e.denies,
                }
            })
            .collect();
        let guards = match guards::check(&self.kernel, &*self.host, dev, m.kind) {
            Ok(None) => Vec::new(),
            Ok(Some(r)) => vec![GuardFinding {
                guard: r.guard,
                reason: r.reason,
            }],
            Err(e) => return Err((internal(e), verdict)),
        };
        let group = self.kernel.iommu_group(dev).ok().flatten();
        let vfio_allowed = verdicts
            .iter()
            .any(|v| v.driver == Driver::VfioPci && v.allowed);
        let plan = match group {
            Some(g) if vfio_allowed => Some(self.plan_for(&subject, g, &m, Driver::VfioPci)),
            _ => None,
        };
        let holder = group
            .and_then(|g| self.state.read(g).ok().flatten())
            .map(|l| Holder {
                uid: l.owner_uid,
                driver: l.device(dev).map_or(Driver::VfioPci, |d| d.driver),
                since: l.since,
                group: Some(l.group),
                tied: l.tied,
            });
        Ok((
            Response::Explained(ExplainReport {
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
                holder,
                policy_sha256: self.policy.sha256(),
            }),
            verdict,
        ))
    }

    /// The whole-group plan a bind of `m` to `driver` by `subject` would carry out.
    pub(super) fn plan_for(
        &self,
        subject: &vfio_gate_policy::Subject,
        group: u32,
        m: &MemberState,
        driver: Driver,
    ) -> Result<vfio_gate_protocol::Plan, String> {
        let members = self
            .kernel
            .group_members(group)
            .and_then(|ms| {
                ms.into_iter()
                    .map(|d| self.member_state(d))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| e.to_string())?;
        let asking = PolicyAnswers {
            policy: &self.policy,
            subject,
            primary: m.facts,
            driver,
        };
        plan::plan(
            group,
            &members,
            &[m.facts.address],
            driver,
            &asking,
            self.tuning.viability,
        )
        .map_err(|e| e.to_string())
    }
}
