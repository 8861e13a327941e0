//! The file format: TOML text → validated, name-resolved rules, or an error with file:line.
//!
//! Two stages. Serde maps the text onto the `Raw*` structs below, which mirror the file exactly
//! (`deny_unknown_fields` everywhere, every value wrapped in [`Spanned`] so it keeps its place in
//! the text). Then [`Compiler`] checks what serde cannot (non-empty lists, ID syntax, unique
//! names) and builds [`Rule`]s. The raw structs are private: the format is the file, not an API.
//!
//! A policy is one main file and any number of drop-ins, compiled in load order by one
//! [`Shared`] state, so rule names are unique across all of them and the load warnings come out
//! in file order.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use vfio_gate_protocol::{Driver, RuleRef};

use crate::device::SlotName;
use crate::diagnostic::{Finding, LineIndex, Severity};
use crate::error::PolicyError;
use crate::matcher::{AddressPattern, ClassPattern, DeviceMatcher, parse_id};
use crate::model::{DriverSet, Effect, Rule, Settings, Subjects};
use crate::names::NameResolver;
use crate::reserve::Reservation;

/// The only policy format version this crate reads.
pub const POLICY_VERSION: i64 = 1;

/// The longest rule name accepted. Names travel in denial messages and audit lines.
const MAX_NAME_LEN: usize = 128;

/// Read first, ignoring everything else, so a file written for another version is refused as
/// such rather than for keys this version does not know.
#[derive(Deserialize)]
struct VersionProbe {
    version: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(rename = "version")]
    _version: Option<Spanned<i64>>,
    settings: Option<Spanned<RawSettings>>,
    #[serde(default)]
    rule: Vec<Spanned<RawAllow>>,
    #[serde(default)]
    deny: Vec<Spanned<RawDeny>>,
    #[serde(default)]
    reserve: Vec<Spanned<RawReserve>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    idle_timeout: Option<Spanned<i64>>,
    sandbox_floor: Option<Spanned<i64>>,
    allow_unsandboxed: Option<bool>,
    admins: Option<Spanned<RawSubjects>>,
    node_mode: Option<Spanned<String>>,
    max_groups_per_user: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    name: Spanned<String>,
    subjects: Spanned<RawSubjects>,
    devices: Spanned<Vec<Spanned<RawMatcher>>>,
    drivers: Spanned<Vec<Spanned<String>>>,
    companions: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeny {
    name: Spanned<String>,
    devices: Spanned<Vec<Spanned<RawMatcher>>>,
    subjects: Option<Spanned<RawSubjects>>,
    drivers: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReserve {
    name: Spanned<String>,
    devices: Spanned<Vec<Spanned<RawMatcher>>>,
    driver: Spanned<String>,
    companions: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubjects {
    #[serde(default)]
    users: Vec<Spanned<String>>,
    #[serde(default)]
    groups: Vec<Spanned<String>>,
    #[serde(default)]
    uids: Vec<Spanned<u32>>,
    #[serde(default)]
    gids: Vec<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatcher {
    address: Option<Spanned<String>>,
    vendor: Option<Spanned<String>>,
    device: Option<Spanned<String>>,
    subsystem_vendor: Option<Spanned<String>>,
    subsystem_device: Option<Spanned<String>>,
    class: Option<Spanned<String>>,
    physical_slot: Option<Spanned<String>>,
}

enum RawRule {
    Allow(RawAllow),
    Deny(RawDeny),
    Reserve(RawReserve),
}

/// What one file compiles to, appended to what the files before it gave.
#[derive(Default)]
struct Compiled {
    rules: Vec<Rule>,
    reservations: Vec<Reservation>,
}

/// What the policy files contribute, together.
pub(crate) struct Parsed {
    pub settings: Settings,
    pub rules: Vec<Rule>,
    pub reservations: Vec<Reservation>,
    /// The load warnings ([`Policy::findings`](crate::Policy::findings)), in file order.
    pub findings: Vec<Finding>,
}

/// Where the subjects being compiled belong: the wildcard and the hints differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubjectsOf {
    Allow,
    Deny,
    Admins,
}

/// What the files of one policy share while they are compiled.
struct Shared<'a> {
    names: &'a dyn NameResolver,
    main_file: &'a str,
    /// Rule name → where it was first used (file, line of the name).
    seen: HashMap<String, (String, u32)>,
    findings: Vec<Finding>,
    /// Whether some user or group name did not resolve (then the resolver's problems are news).
    unresolved: bool,
}

impl Shared<'_> {
    /// Records a load warning. `line` 0: about the file (or the policy) as a whole.
    fn warn(&mut self, file: &str, line: u32, rule: Option<&str>, message: String) {
        self.findings.push(Finding {
            severity: Severity::Warning,
            file: file.to_owned(),
            line,
            rule: rule.map(str::to_owned),
            message,
        });
    }
}

/// Parses and validates the files of one policy, the main file first, then the drop-ins in
/// load order. Each is `(file, text)`; `file` names it in rule references and messages.
pub(crate) fn parse_files(
    files: &[(&str, &str)],
    names: &dyn NameResolver,
) -> Result<Parsed, PolicyError> {
    let main_file = files.first().map_or("", |f| f.0);
    let mut shared = Shared {
        names,
        main_file,
        seen: HashMap::new(),
        findings: Vec::new(),
        unresolved: false,
    };
    let mut settings = Settings::default();
    let mut compiled = Compiled::default();
    for (file_index, &(file, text)) in files.iter().enumerate() {
        let mut c = Compiler {
            text,
            file,
            file_index,
            lines: LineIndex::new(text),
            shared: &mut shared,
        };
        if let Some(s) = c.file(file_index == 0, &mut compiled)? {
            settings = s;
        }
    }
    let Compiled {
        rules,
        reservations,
    } = compiled;
    if !rules.iter().any(|r| r.effect == Effect::Allow) {
        shared.warn(
            main_file,
            0,
            None,
            "no [[rule]] grants anything, so every request will be denied".into(),
        );
    }
    // Why names failed to resolve (an unreadable /etc/passwd…) is about the policy as a whole,
    // so it is placed on the main file.
    if shared.unresolved {
        for problem in names.problems() {
            shared.warn(main_file, 0, None, problem);
        }
    }
    Ok(Parsed {
        settings,
        rules,
        reservations,
        findings: shared.findings,
    })
}

struct Compiler<'a, 's> {
    text: &'a str,
    file: &'a str,
    /// The file's position in load order (0: the main file).
    file_index: usize,
    lines: LineIndex,
    shared: &'s mut Shared<'a>,
}

impl Compiler<'_, '_> {
    /// Compiles one file, appending its rules; returns its settings if it has any. Only the
    /// main file may have settings.
    fn file(&mut self, main: bool, out: &mut Compiled) -> Result<Option<Settings>, PolicyError> {
        let probe: VersionProbe = self.deserialize()?;
        if let Some(v) = probe.version {
            if *v.get_ref() != POLICY_VERSION {
                return Err(PolicyError::UnsupportedVersion {
                    file: self.file.to_owned(),
                    line: self.line(v.span()),
                    version: *v.get_ref(),
                });
            }
        }
        let raw: RawPolicy = self.deserialize()?;

        let settings = match raw.settings {
            Some(s) if !main => {
                return Err(self.invalid(
                    s.span(),
                    format!(
                        "[settings] belongs in the main policy file {}, not in a drop-in: a \
                         drop-in may only add [[rule]], [[deny]] and [[reserve]], so that one \
                         file says how the helper runs",
                        self.shared.main_file
                    ),
                ));
            }
            Some(s) => Some(self.settings(s.into_inner())?),
            None => None,
        };

        // Check rules in the order they are written, so the first problem in the file is the
        // one reported and a duplicate name is blamed on its second occurrence.
        let mut raw_rules: Vec<(Range<usize>, RawRule)> = (raw.rule.into_iter())
            .map(|r| (r.span(), RawRule::Allow(r.into_inner())))
            .chain(
                raw.deny
                    .into_iter()
                    .map(|r| (r.span(), RawRule::Deny(r.into_inner()))),
            )
            .chain(
                raw.reserve
                    .into_iter()
                    .map(|r| (r.span(), RawRule::Reserve(r.into_inner()))),
            )
            .collect();
        raw_rules.sort_by_key(|(span, _)| span.start);

        for (span, raw) in raw_rules {
            match raw {
                RawRule::Allow(r) => {
                    let origin = self.origin(&r.name, span)?;
                    out.rules.push(self.allow(origin, r)?);
                }
                RawRule::Deny(r) => {
                    let origin = self.origin(&r.name, span)?;
                    out.rules.push(self.deny(origin, r)?);
                }
                RawRule::Reserve(r) => {
                    let origin = self.origin(&r.name, span)?;
                    out.reservations.push(self.reserve(origin, r)?);
                }
            }
        }
        Ok(settings)
    }

    /// The 1-based line holding byte `span.start`.
    fn line(&self, span: Range<usize>) -> u32 {
        self.lines.line(span.start)
    }

    fn invalid(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            file: self.file.to_owned(),
            line: self.line(span),
            message: message.into(),
        }
    }

    fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, PolicyError> {
        let de = toml::de::Deserializer::parse(self.text).map_err(|e| PolicyError::Syntax {
            file: self.file.to_owned(),
            line: e.span().map_or(1, |s| self.line(s)),
            message: e.message().trim_end().to_owned(),
        })?;
        T::deserialize(de).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            // Serde speaks of Rust types; the reader knows TOML.
            let message = e
                .message()
                .trim_end()
                .replace("expected i64", "expected an integer")
                .replace("expected u32", "expected a uid or gid (a whole number)");
            let message = format!("{message}{}", self.shape_hint(&e, &span));
            self.invalid(span, message)
        })
    }

    /// A next step for the commonest shape mistakes, which serde words in its own terms.
    fn shape_hint(&self, e: &toml::de::Error, span: &Range<usize>) -> &'static str {
        let message = e.message();
        if message.starts_with("missing field") {
            return " (every [[rule]] needs name, subjects, devices and drivers; every [[deny]] \
                    needs name and devices; every [[reserve]] needs name, devices and driver)";
        }
        if message.starts_with("invalid type: integer") && message.contains("expected a string") {
            return " (PCI IDs, classes, addresses, slot names and node_mode are quoted strings, \
                    for example vendor = \"8086\" or node_mode = \"0600\": unquoted, they would \
                    be numbers)";
        }
        if !message.contains("expected a sequence") {
            return "";
        }
        let at = self.text.get(span.clone()).unwrap_or("");
        if at.starts_with('[') && !at.starts_with("[[") {
            " (each rule is one entry of an array of tables: write [[rule]] or [[deny]], \
             with double brackets)"
        } else {
            " (lists are written in brackets, for example drivers = [\"vfio-pci\"] and \
             devices = [{ vendor = \"8086\" }])"
        }
    }

    fn settings(&mut self, raw: RawSettings) -> Result<Settings, PolicyError> {
        let mut settings = Settings::default();
        if let Some(t) = raw.idle_timeout {
            let secs = *t.get_ref();
            if !(1..=Settings::MAX_IDLE_TIMEOUT_SECS as i64).contains(&secs) {
                return Err(self.invalid(
                    t.span(),
                    format!(
                        "idle_timeout = {secs} is out of range: give a number of seconds from \
                         1 to {}",
                        Settings::MAX_IDLE_TIMEOUT_SECS
                    ),
                ));
            }
            settings.idle_timeout = Duration::from_secs(secs as u64);
        }
        if let Some(f) = raw.sandbox_floor {
            let floor = *f.get_ref();
            let max = Settings::MAX_SANDBOX_FLOOR;
            if !(1..=i64::from(max)).contains(&floor) {
                return Err(self.invalid(
                    f.span(),
                    format!(
                        "sandbox_floor = {floor} is out of range: give a landlock ABI version \
                         from 1 to {max}"
                    ),
                ));
            }
            settings.sandbox_floor = floor as u8;
        }
        settings.allow_unsandboxed = raw.allow_unsandboxed.unwrap_or(false);
        if let Some(admins) = raw.admins {
            let origin = RuleRef {
                name: "[settings] admins".into(),
                file: self.file.to_string(),
                line: self.line(admins.span()),
            };
            settings.admins = self.subjects(&origin, SubjectsOf::Admins, admins)?;
        }
        if let Some(m) = raw.node_mode {
            settings.node_mode = match m.get_ref().as_str() {
                "0600" => 0o600,
                "0660" => 0o660,
                other => {
                    return Err(self.invalid(
                        m.span(),
                        format!(
                            "node_mode = {other:?} is not accepted: write \"0600\" (only the user \
                             the group was handed to may open /dev/vfio/N; the default) or \
                             \"0660\" (their primary group may too)"
                        ),
                    ));
                }
            };
        }
        if let Some(n) = raw.max_groups_per_user {
            let max = Settings::MAX_GROUPS_PER_USER;
            let value = *n.get_ref();
            if !(1..=i64::from(max)).contains(&value) {
                return Err(self.invalid(
                    n.span(),
                    format!(
                        "max_groups_per_user = {value} is out of range: give a number of IOMMU \
                         groups from 1 to {max}, or leave it out for no limit"
                    ),
                ));
            }
            settings.max_groups_per_user = Some(value as u32);
        }
        Ok(settings)
    }

    /// Checks a rule's name and records it; the rule is referred to by its header's line.
    fn origin(
        &mut self,
        name: &Spanned<String>,
        header: Range<usize>,
    ) -> Result<RuleRef, PolicyError> {
        let text = name.get_ref();
        let problem = if text.trim().is_empty() {
            Some("a rule name must not be empty: say what the rule is for")
        } else if text.trim() != text {
            Some("a rule name must not start or end with spaces")
        } else if text.chars().any(char::is_control) {
            Some("a rule name must not contain control characters (tabs, newlines)")
        } else if text.chars().count() > MAX_NAME_LEN {
            Some("a rule name must be at most 128 characters")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(self.invalid(name.span(), problem));
        }
        let line = self.line(name.span());
        if let Some((file, first)) = self.shared.seen.get(text) {
            return Err(self.invalid(
                name.span(),
                format!(
                    "the rule name {text:?} is already used at {file}:{first}: names must be \
                     unique across [[rule]] and [[deny]] in the main file and every drop-in, \
                     because decisions and audit lines cite them"
                ),
            ));
        }
        self.shared
            .seen
            .insert(text.clone(), (self.file.to_owned(), line));
        Ok(RuleRef {
            name: text.clone(),
            file: self.file.to_owned(),
            line: self.line(header),
        })
    }

    fn allow(&mut self, origin: RuleRef, raw: RawAllow) -> Result<Rule, PolicyError> {
        let subjects = self.subjects(&origin, SubjectsOf::Allow, raw.subjects)?;
        let devices = self.devices(raw.devices)?;
        let drivers = self.drivers(
            raw.drivers,
            "drivers is empty: list what the subjects may bind to, \"vfio-pci\" and/or \"pci-stub\"",
        )?;
        let companions = match raw.companions {
            Some(c) => self.driver_names(c.into_inner())?,
            None => DriverSet::default(),
        };
        Ok(Rule {
            effect: Effect::Allow,
            origin,
            subjects,
            devices,
            drivers,
            companions,
            file_index: self.file_index,
        })
    }

    fn deny(&mut self, origin: RuleRef, raw: RawDeny) -> Result<Rule, PolicyError> {
        let subjects = match raw.subjects {
            Some(s) => self.subjects(&origin, SubjectsOf::Deny, s)?,
            None => Subjects::Everyone,
        };
        let devices = self.devices(raw.devices)?;
        let drivers = match raw.drivers {
            Some(d) => self.drivers(
                d,
                "drivers is empty: list the drivers to deny, or leave drivers out to deny all",
            )?,
            None => DriverSet::ALL,
        };
        Ok(Rule {
            effect: Effect::Deny,
            origin,
            subjects,
            devices,
            drivers,
            companions: DriverSet::default(),
            file_index: self.file_index,
        })
    }

    fn reserve(&mut self, origin: RuleRef, raw: RawReserve) -> Result<Reservation, PolicyError> {
        let devices = self.devices(raw.devices)?;
        let driver = self.one_driver(raw.driver)?;
        let companions = raw.companions.map(|c| self.one_driver(c)).transpose()?;
        Ok(Reservation {
            origin,
            devices,
            driver,
            companions,
            file_index: self.file_index,
        })
    }

    /// A single driver name: `driver = "pci-stub"`.
    fn one_driver(&self, raw: Spanned<String>) -> Result<Driver, PolicyError> {
        raw.get_ref()
            .parse::<Driver>()
            .map_err(|e| self.invalid(raw.span(), e.to_string()))
    }

    fn subjects(
        &mut self,
        origin: &RuleRef,
        of: SubjectsOf,
        raw: Spanned<RawSubjects>,
    ) -> Result<Subjects, PolicyError> {
        let empty_hint = match of {
            SubjectsOf::Allow | SubjectsOf::Admins => "",
            SubjectsOf::Deny => ", or leave subjects out to deny everyone",
        };
        let span = raw.span();
        let raw = raw.into_inner();
        let count = raw.users.len() + raw.groups.len() + raw.uids.len() + raw.gids.len();
        if count == 0 {
            return Err(self.invalid(
                span,
                format!(
                    "subjects is empty: name at least one of users, groups, uids or gids{empty_hint}"
                ),
            ));
        }
        if let Some(everyone) = self.wildcard(of, &raw, count)? {
            return Ok(everyone);
        }
        let mut uids = Vec::new();
        let mut gids = Vec::new();
        for (kind, list, ids) in [
            ("user", &raw.users, &mut uids),
            ("group", &raw.groups, &mut gids),
        ] {
            for name in list {
                let text = name.get_ref();
                if text.is_empty() || text.contains(':') || text.chars().any(char::is_control) {
                    return Err(self.invalid(name.span(), format!("{text:?} is not a {kind} name")));
                }
                if text.contains(['*', '?']) {
                    return Err(self.invalid(
                        name.span(),
                        format!(
                            "{text:?} is not a {kind} name: names are not patterns (only \
                             users = [\"*\"], alone, means everyone)"
                        ),
                    ));
                }
                let (id, by_number) = match kind {
                    "user" => (self.shared.names.uid(text), "uids"),
                    _ => (self.shared.names.gid(text), "gids"),
                };
                match id {
                    Some(id) => ids.push(id),
                    None => {
                        // An unknown name matches nobody. In an allow rule that grants less
                        // (fails closed); in a deny rule it fences off less, so say so plainly.
                        let consequence = match of {
                            SubjectsOf::Allow | SubjectsOf::Admins => format!(
                                "so the rule grants it nothing (create it, fix the name, or \
                                 give the id in {by_number})"
                            ),
                            SubjectsOf::Deny => format!(
                                "so this deny cannot apply to it: if it lives in a directory \
                                 service, give its id in {by_number}"
                            ),
                        };
                        self.shared.unresolved = true;
                        let line = self.line(name.span());
                        self.shared.warn(
                            self.file,
                            line,
                            Some(&origin.name),
                            format!(
                                "{kind} {text:?} in rule {:?} does not exist on this host, \
                                 {consequence}",
                                origin.name,
                            ),
                        );
                    }
                }
            }
        }
        for (kind, list, ids) in [("uid", &raw.uids, &mut uids), ("gid", &raw.gids, &mut gids)] {
            for id in list {
                if *id.get_ref() == u32::MAX {
                    return Err(self.invalid(
                        id.span(),
                        format!("{kind} 4294967295 is (uid_t)-1, which names nobody"),
                    ));
                }
                ids.push(*id.get_ref());
            }
        }
        uids.sort_unstable();
        uids.dedup();
        gids.sort_unstable();
        gids.dedup();
        if uids.is_empty() && gids.is_empty() {
            self.shared.warn(
                self.file,
                origin.line,
                Some(&origin.name),
                format!(
                    "rule {:?} applies to nobody: none of its users or groups exist",
                    origin.name
                ),
            );
        }
        Ok(Subjects::Listed { uids, gids })
    }

    /// `users = ["*"]`: everyone, in an allow rule and only there, and only alone. `Ok(None)`
    /// when the subjects hold no `"*"`.
    fn wildcard(
        &self,
        of: SubjectsOf,
        raw: &RawSubjects,
        count: usize,
    ) -> Result<Option<Subjects>, PolicyError> {
        if let Some(star) = raw.groups.iter().find(|g| g.get_ref() == "*") {
            let hint = match of {
                SubjectsOf::Allow => {
                    "to grant every user write users = [\"*\"] (the lint warns about it), or \
                     name a group such as \"vm-users\""
                }
                SubjectsOf::Deny => "to deny everyone, leave subjects out",
                SubjectsOf::Admins => "name the admins",
            };
            return Err(self.invalid(star.span(), format!("\"*\" is not a group name: {hint}")));
        }
        let Some(star) = raw.users.iter().find(|u| u.get_ref() == "*") else {
            return Ok(None);
        };
        let problem = match of {
            SubjectsOf::Allow if count == 1 => return Ok(Some(Subjects::Everyone)),
            SubjectsOf::Allow => {
                "users = [\"*\"] already means every user: write it alone, with no other users, \
                 groups, uids or gids, or drop the \"*\""
            }
            SubjectsOf::Deny => {
                "a [[deny]] without subjects already applies to everyone: leave subjects out \
                 instead of writing \"*\""
            }
            SubjectsOf::Admins => {
                "\"*\" would make every user an admin, able to release anyone's devices: name \
                 the admins"
            }
        };
        Err(self.invalid(star.span(), problem))
    }

    fn devices(
        &self,
        raw: Spanned<Vec<Spanned<RawMatcher>>>,
    ) -> Result<Vec<DeviceMatcher>, PolicyError> {
        if raw.get_ref().is_empty() {
            return Err(self.invalid(
                raw.span(),
                "devices is empty: give at least one matcher, for example \
                 devices = [{ address = \"01:00.0\", vendor = \"8086\", device = \"10d3\" }]",
            ));
        }
        raw.into_inner()
            .into_iter()
            .map(|m| self.matcher(m))
            .collect()
    }

    fn matcher(&self, raw: Spanned<RawMatcher>) -> Result<DeviceMatcher, PolicyError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let id = |name: &'static str| move |t: &str| parse_id(name, t);
        let m = DeviceMatcher {
            address: self.field(raw.address, AddressPattern::parse)?,
            vendor: self.field(raw.vendor, id("vendor"))?,
            device: self.field(raw.device, id("device"))?,
            subsystem_vendor: self.field(raw.subsystem_vendor, id("subsystem_vendor"))?,
            subsystem_device: self.field(raw.subsystem_device, id("subsystem_device"))?,
            class: self.field(raw.class, ClassPattern::parse)?,
            physical_slot: self.field(raw.physical_slot, |t| t.parse::<SlotName>())?,
        };
        if m.is_empty() {
            return Err(self.invalid(
                span,
                "an empty device matcher {} would match every device: give at least one of \
                 address, vendor, device, subsystem_vendor, subsystem_device, class, \
                 physical_slot",
            ));
        }
        Ok(m)
    }

    /// Parses one matcher field, placing its error on the field's line.
    fn field<T>(
        &self,
        value: Option<Spanned<String>>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, PolicyError> {
        value
            .map(|v| parse(v.get_ref()).map_err(|e| self.invalid(v.span(), e)))
            .transpose()
    }

    fn drivers(
        &self,
        raw: Spanned<Vec<Spanned<String>>>,
        empty: &str,
    ) -> Result<DriverSet, PolicyError> {
        if raw.get_ref().is_empty() {
            return Err(self.invalid(raw.span(), empty));
        }
        self.driver_names(raw.into_inner())
    }

    fn driver_names(&self, raw: Vec<Spanned<String>>) -> Result<DriverSet, PolicyError> {
        raw.into_iter()
            .map(|d| {
                d.get_ref()
                    .parse::<Driver>()
                    .map_err(|e| self.invalid(d.span(), e.to_string()))
            })
            .collect()
    }
}
