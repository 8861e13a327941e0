//! [`Policy`]: the loaded rules, and the one function that answers requests.

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};
use vfio_gate_protocol::Driver;

use crate::device::DeviceFacts;
use crate::diagnostic::Finding;
use crate::error::PolicyError;
use crate::load;
use crate::model::{Decision, Effect, Rule, Settings, Subject};
use crate::names::NameResolver;
use crate::parse;
use crate::reserve::{self, Reservation, Reserved};

/// A validated policy with every user and group name resolved.
#[derive(Debug, Clone)]
pub struct Policy {
    settings: Settings,
    /// Allow and deny rules together, sorted by (file in load order, line, name): the order of
    /// consultation.
    rules: Vec<Rule>,
    /// The `[[reserve]]`s, in the same order.
    reservations: Vec<Reservation>,
    /// The load warnings, in file order.
    findings: Vec<Finding>,
    sources: Vec<PolicySource>,
    sha256: String,
}

/// One file of a loaded policy: its path and the SHA-256 of its content (what `sha256sum`
/// prints for it), lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicySource {
    pub path: String,
    pub sha256: String,
}

impl Policy {
    /// Parses and validates `text`. `file` names it in [`RuleRef`](vfio_gate_protocol::RuleRef)s
    /// and error messages.
    pub fn parse(text: &str, file: &str, names: &dyn NameResolver) -> Result<Policy, PolicyError> {
        Policy::parse_files(&[(file, text)], names)
    }

    /// Parses and validates a policy made of several files, each `(file name, text)`: the main
    /// file first, then the drop-ins in load order — what [`Policy::load`] reads, without the
    /// file system. The drop-ins obey the drop-in rules (no `[settings]`; rule names unique
    /// across all files). An empty list is a policy that denies everything.
    pub fn parse_files<F: AsRef<str>, T: AsRef<str>>(
        files: &[(F, T)],
        names: &dyn NameResolver,
    ) -> Result<Policy, PolicyError> {
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(f, t)| (f.as_ref(), t.as_ref()))
            .collect();
        let parsed = parse::parse_files(&files, names)?;
        let mut policy = Policy::from_parts(parsed.settings, parsed.rules, parsed.findings);
        policy.reservations = parsed.reservations;
        policy
            .reservations
            .sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        (policy.sources, policy.sha256) = hash(&files);
        Ok(policy)
    }

    /// Opens the policy at `path` and its drop-ins (`policy.d/*.toml` in the same directory,
    /// in byte order of their names, if that directory exists), checks every file and both
    /// directories on their open descriptors — regular files and directories owned by root,
    /// not writable by group or others, no symlinks, files at most
    /// [`MAX_POLICY_SIZE`](crate::MAX_POLICY_SIZE) bytes — reads and parses them. Any problem
    /// in any file refuses the whole policy; refusals say which file, why and what to run.
    pub fn load(path: &Path, names: &dyn NameResolver) -> Result<Policy, PolicyError> {
        Policy::load_with_owner(path, names, 0)
    }

    /// [`Policy::load`], with `owner` as the uid the files and directories must belong to
    /// instead of root. For tests that run as an ordinary user; the helper always uses
    /// [`Policy::load`].
    pub fn load_with_owner(
        path: &Path,
        names: &dyn NameResolver,
        owner: u32,
    ) -> Result<Policy, PolicyError> {
        let files = load::read_policy(path, owner)?;
        Policy::parse_files(&files, names)
    }

    /// Puts rules in their order of consultation. Every way of building a policy ends here, so
    /// decisions never depend on the order rules were written or files were read.
    pub(crate) fn from_parts(
        settings: Settings,
        mut rules: Vec<Rule>,
        findings: Vec<Finding>,
    ) -> Self {
        rules.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        let (sources, sha256) = hash(&[]);
        Policy {
            settings,
            rules,
            reservations: Vec::new(),
            findings,
            sources,
            sha256,
        }
    }

    /// The SHA-256 (lowercase hex) of exactly the text this policy was made from: for each
    /// file in load order, its path, a NUL byte, its length in bytes as decimal digits, a NUL
    /// byte, and its content. The helper logs it at every load, so every decision can be tied
    /// to the exact policy text; [`Policy::sources`] gives each file's own hash.
    pub fn sha256(&self) -> String {
        self.sha256.clone()
    }

    /// The files this policy was made from, in load order (the main file first), each with the
    /// SHA-256 of its content alone (`sha256sum FILE` prints the same).
    pub fn sources(&self) -> &[PolicySource] {
        &self.sources
    }

    /// May `subject` bind `device` to `driver`? A matching deny rule wins over any allow rule;
    /// with no matching rule the answer is [`Decision::Deny(None)`](Decision::Deny). Among
    /// matching rules of the deciding kind, the one written first (by file in load order, then
    /// line) is named, so the answer is the same however the rules are ordered.
    pub fn decide(&self, subject: &Subject, device: &DeviceFacts, driver: Driver) -> Decision {
        let address = device.address.to_string();
        let mut allow: Option<&Rule> = None;
        for rule in &self.rules {
            if rule.effect == Effect::Allow && allow.is_some() {
                continue; // an earlier allow already matched; only a deny can change the answer
            }
            if !rule.applies(subject, device, &address, driver) {
                continue;
            }
            match rule.effect {
                // Rules are sorted, so the first matching deny is the one to name.
                Effect::Deny => return Decision::Deny(Some(rule.origin.clone())),
                Effect::Allow => allow = Some(rule),
            }
        }
        match allow {
            Some(rule) => Decision::Allow(rule.origin.clone()),
            None => Decision::Deny(None),
        }
    }

    /// May `subject` move `member` to `driver` as a *companion* of `primary`: another endpoint
    /// of the same IOMMU group that has to leave its host driver for the group to be usable by
    /// the VM that gets `primary` (on `primary_driver`)?
    ///
    /// Yes when [`Policy::decide`] allows it outright, or when an allow rule that lets `subject`
    /// bind `primary` to `primary_driver` lists `driver` in its `companions`. A deny rule that
    /// matches (`subject`, `member`, `driver`) wins either way, and so does one that denies the
    /// primary itself.
    pub fn decide_companion(
        &self,
        subject: &Subject,
        primary: &DeviceFacts,
        primary_driver: Driver,
        member: &DeviceFacts,
        driver: Driver,
    ) -> Decision {
        match self.decide(subject, member, driver) {
            Decision::Deny(None) => {}
            decided => return decided,
        }
        if !self.decide(subject, primary, primary_driver).is_allowed() {
            return Decision::Deny(None);
        }
        let address = primary.address.to_string();
        self.rules
            .iter()
            .find(|r| {
                r.effect == Effect::Allow
                    && r.companions.contains(driver)
                    && r.applies(subject, primary, &address, primary_driver)
            })
            .map_or(Decision::Deny(None), |r| Decision::Allow(r.origin.clone()))
    }

    /// Every driver in [`Driver::ALL`] that [`Policy::decide`] allows (for `list`).
    pub fn allowed_drivers(&self, subject: &Subject, device: &DeviceFacts) -> Vec<Driver> {
        Driver::ALL
            .into_iter()
            .filter(|d| self.decide(subject, device, *d).is_allowed())
            .collect()
    }

    /// Whether `subject` is an admin: root, or listed in `[settings] admins`.
    pub fn is_admin(&self, subject: &Subject) -> bool {
        subject.uid == 0 || self.settings.admins.matches(subject)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What loading found that does not refuse the policy, in file order, each a
    /// [`Severity::Warning`](crate::Severity::Warning) naming its file and line (0: the file or
    /// the policy as a whole): names that do not resolve (they match nobody, and why, if the
    /// name databases could not be read), rules that apply to nobody, a policy that grants
    /// nothing. The helper logs them; [`Policy::lint`] starts from them.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// The `[[reserve]]`s, in load order (file, then line).
    pub fn reservations(&self) -> &[Reservation] {
        &self.reservations
    }

    /// Whether a `[[reserve]]` names `device`, and with which driver. Companions of a reserved
    /// device are not seen here: they depend on its IOMMU group, which the host view knows.
    pub fn reserved(&self, device: &DeviceFacts) -> Reserved<'_> {
        reserve::reserved(&self.reservations, device)
    }

    /// All rules, allow and deny, in their order of consultation (file, then line). For
    /// explaining and reporting; [`Policy::decide`] is the only authority.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

/// Each file's hash, and the hash of them all (see [`Policy::sha256`]).
fn hash(files: &[(&str, &str)]) -> (Vec<PolicySource>, String) {
    let mut all = Sha256::new();
    let mut sources = Vec::with_capacity(files.len());
    for (path, text) in files {
        all.update(path.as_bytes());
        all.update([0]);
        all.update(text.len().to_string().as_bytes());
        all.update([0]);
        all.update(text.as_bytes());
        sources.push(PolicySource {
            path: (*path).to_owned(),
            sha256: hex(&Sha256::digest(text.as_bytes())),
        });
    }
    (sources, hex(&all.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
