//! [`Policy`]: the loaded rules, and the one function that answers requests.

use std::path::Path;

use vfio_gate_protocol::Driver;

use crate::error::PolicyError;
use crate::load;
use crate::model::{Decision, DeviceFacts, Effect, Rule, Settings, Subject};
use crate::names::NameResolver;
use crate::parse;

/// A validated policy with every user and group name resolved.
#[derive(Debug, Clone)]
pub struct Policy {
    settings: Settings,
    /// Allow and deny rules together, sorted by (file, line, name): the order of consultation.
    rules: Vec<Rule>,
    warnings: Vec<String>,
}

impl Policy {
    /// Parses and validates `text`. `file` names it in [`RuleRef`](vfio_gate_protocol::RuleRef)s
    /// and error messages.
    pub fn parse(text: &str, file: &str, names: &dyn NameResolver) -> Result<Policy, PolicyError> {
        let parsed = parse::parse_file(text, file, names)?;
        Ok(Policy::from_parts(
            parsed.settings,
            parsed.rules,
            parsed.warnings,
        ))
    }

    /// Opens `path` without following a symlink, checks the open file (a regular file owned by
    /// root, not writable by group or others, at most [`MAX_POLICY_SIZE`](crate::MAX_POLICY_SIZE)
    /// bytes), reads it and parses it. Refusals say why and what to run.
    pub fn load(path: &Path, names: &dyn NameResolver) -> Result<Policy, PolicyError> {
        Policy::load_with_owner(path, names, 0)
    }

    /// [`Policy::load`], with `owner` as the uid the file must belong to instead of root. For
    /// tests that run as an ordinary user; the helper always uses [`Policy::load`].
    pub fn load_with_owner(
        path: &Path,
        names: &dyn NameResolver,
        owner: u32,
    ) -> Result<Policy, PolicyError> {
        let text = load::read_checked(path, owner)?;
        Policy::parse(&text, &path.display().to_string(), names)
    }

    /// Puts rules in their order of consultation. Every way of building a policy ends here, so
    /// decisions never depend on the order rules were written or files were read.
    pub(crate) fn from_parts(
        settings: Settings,
        mut rules: Vec<Rule>,
        warnings: Vec<String>,
    ) -> Self {
        rules.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        Policy {
            settings,
            rules,
            warnings,
        }
    }

    /// May `subject` bind `device` to `driver`? A matching deny rule wins over any allow rule;
    /// with no matching rule the answer is [`Decision::Deny(None)`](Decision::Deny). Among
    /// matching rules of the deciding kind, the one written first (smallest file, then line) is
    /// named, so the answer is the same however the rules are ordered.
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

    /// Non-fatal findings from loading, each naming file and line: names that do not resolve
    /// (they match nobody), rules that apply to nobody, a policy that grants nothing. The helper
    /// logs them.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// All rules, allow and deny, in their order of consultation (file, then line). For
    /// explaining and reporting; [`Policy::decide`] is the only authority.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}
