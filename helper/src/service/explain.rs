//! `explain`: what a bind would meet, changing nothing.

use vfio_gate_host::explain::ExplainError;
use vfio_gate_policy::Subject;
use vfio_gate_protocol::{Driver, Holder, PciAddress, Response, WireError};

use super::{Service, internal, sysfs_error};
use crate::audit::Record;
use crate::peer::Peer;

impl Service {
    /// What a bind would meet, for the caller or (admins) another user: the policy's verdict
    /// per driver with every rule that spoke, the guards, the group plan, the holder. Changes
    /// nothing.
    pub(super) fn explain(
        &self,
        peer: &Peer,
        dev: PciAddress,
        driver: Option<Driver>,
        uid: Option<u32>,
        record: &mut Record,
    ) -> Result<Response, WireError> {
        record.devices = vec![dev];
        let subject = self.subject_asked_about(peer, uid, record)?;
        let mut report = vfio_gate_host::explain::explain(
            &self.policy,
            &self.kernel,
            &*self.host,
            self.tuning.viability,
            &subject,
            dev,
            driver,
        )
        .map_err(|e| match e {
            ExplainError::Sysfs(e) => sysfs_error(dev, e),
            other => internal(other),
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
        Ok(Response::Explained(report))
    }

    /// Whom `explain` answers for: the caller, or — for an admin — the account with `uid`, read
    /// from the accounts under the etc root (no NSS in the helper).
    fn subject_asked_about(
        &self,
        peer: &Peer,
        uid: Option<u32>,
        record: &mut Record,
    ) -> Result<Subject, WireError> {
        let u = match uid {
            Some(u) if u != peer.uid => u,
            _ => return Ok(peer.subject()),
        };
        if !self.policy.is_admin(&peer.subject()) {
            record.deny();
            return Err(WireError::NotAdmin {
                detail: "only an admin (root, or [settings] admins in the policy) may ask about another user".into(),
            });
        }
        let passwd = self.roots.passwd();
        match vfio_gate_policy::account_of(&self.roots.etc, u) {
            Ok(Some((_, subject))) => Ok(subject),
            Ok(None) => Err(WireError::BadRequest {
                reason: format!("no user with uid {u} in {}", passwd.display()),
            }),
            Err(e) => Err(internal(format!("reading {}: {e}", passwd.display()))),
        }
    }
}
