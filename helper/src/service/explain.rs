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
                        WireError::NotAdmin {
                            detail: "only an admin (root, or [settings] admins in the policy) may ask about another user".into(),
                        },
                        verdict,
                    ));
                }
                let passwd = self.roots.passwd();
                match vfio_gate_policy::account_of(&self.roots.etc, u) {
                    Ok(Some((_, s))) => s,
                    Ok(None) => {
                        return Err((
                            WireError::BadRequest {
                                reason: format!("no user with uid {u} in {}", passwd.display()),
                            },
                            verdict,
                        ));
                    }
                    Err(e) => {
                        return Err((
                            internal(format!("reading {}: {e}", passwd.display())),
                            verdict,
                        ));
                    }
                }
            }
        };
        let mut report = vfio_gate_host::explain::explain(
            &self.policy,
            &self.kernel,
            &*self.host,
            self.tuning.viability,
            &subject,
            dev,
            driver,
        )
        .map_err(|e| {
            let wire = match e {
                vfio_gate_host::explain::ExplainError::Sysfs(e) => sysfs_error(dev, e),
                other => internal(other),
            };
            (wire, verdict.clone())
        })?;
        report.holder = report
            .iommu_group
            .and_then(|g| self.state.read(g).ok().flatten())
            .map(|l| Holder {
                uid: l.owner_uid,
                driver: l.device(dev).map_or(Driver::VfioPci, |d| d.driver),
                since: l.since,
                group: Some(l.group),
                tied: l.tied,
            });
        Ok((Response::Explained(report), verdict))
    }
}
