//! The evaluated form of a policy: who asks, about what, and the rules that answer.

use std::time::Duration;

use serde::{Serialize, Serializer};
use vfio_gate_protocol::{Driver, RuleRef};

use crate::device::DeviceFacts;
use crate::matcher::DeviceMatcher;

/// Policy-wide settings (`[settings]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How long the helper stays up with no open connection before it exits (socket activation
    /// starts it again on the next request).
    pub idle_timeout: Duration,
    /// The oldest landlock ABI the helper accepts as a (partial) sandbox. On a kernel below it
    /// the helper refuses to serve. `[settings] sandbox_floor`, default 1.
    pub sandbox_floor: u8,
    /// Serve even when the kernel has no landlock at all. Off unless the admin writes
    /// `allow_unsandboxed = true`; every start then says so loudly.
    pub allow_unsandboxed: bool,
    /// Who may release anyone's devices and ask about anyone (`[settings] admins`, same form
    /// as a rule's `subjects`). Nobody by default; root always may.
    pub admins: Subjects,
    /// The mode `/dev/vfio/<group>` gets when it is handed to the caller (owner: the caller's
    /// uid and primary gid). `[settings] node_mode`, `"0600"` (default: only the caller) or
    /// `"0660"` (the caller's primary group too). Nothing else is accepted.
    pub node_mode: u32,
    /// How many IOMMU groups one user may hold at once (`[settings] max_groups_per_user`,
    /// 1..=1024). `None` (the default): no limit beyond what the policy grants.
    pub max_groups_per_user: Option<u32>,
}

impl Settings {
    /// The default and the range of `sandbox_floor` (landlock ABI versions).
    pub const DEFAULT_SANDBOX_FLOOR: u8 = 1;
    pub const MAX_SANDBOX_FLOOR: u8 = 6;
    /// The idle timeout when the policy does not set one.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    /// The largest `idle_timeout` accepted, in seconds (one day).
    pub const MAX_IDLE_TIMEOUT_SECS: u64 = 86_400;
    /// The node mode when the policy does not set one.
    pub const DEFAULT_NODE_MODE: u32 = 0o600;
    /// The node modes `node_mode` accepts.
    pub const NODE_MODES: [u32; 2] = [0o600, 0o660];
    /// The largest `max_groups_per_user` accepted.
    pub const MAX_GROUPS_PER_USER: u32 = 1024;
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            sandbox_floor: Self::DEFAULT_SANDBOX_FLOOR,
            allow_unsandboxed: false,
            admins: Subjects::Listed {
                uids: Vec::new(),
                gids: Vec::new(),
            },
            node_mode: Self::DEFAULT_NODE_MODE,
            max_groups_per_user: None,
        }
    }
}

/// Who is asking, as the kernel attested it on the socket (SO_PEERCRED, SO_PEERGROUPS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// The answer to "may this subject bind this device to this driver?".
///
/// Serialized (for `--json`) as `{"allowed": true|false, "rule": {name, file, line} | null}`;
/// `rule` is null for the default deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// An allow rule matched and no deny rule did; the rule is the one that granted it.
    Allow(RuleRef),
    /// A deny rule matched (`Some`), or nothing matched and the default applied (`None`).
    Deny(Option<RuleRef>),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// The rule that decided, if any rule did.
    pub fn rule(&self) -> Option<&RuleRef> {
        match self {
            Decision::Allow(r) => Some(r),
            Decision::Deny(r) => r.as_ref(),
        }
    }
}

impl Serialize for Decision {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Decision", 2)?;
        s.serialize_field("allowed", &self.is_allowed())?;
        s.serialize_field("rule", &self.rule())?;
        s.end()
    }
}

/// Whether a rule grants or forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// A `[[rule]]`.
    Allow,
    /// A `[[deny]]`.
    Deny,
}

/// The subjects a rule applies to, with user and group names already resolved to ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subjects {
    /// Everyone: a deny rule without `subjects`, or an allow rule with `users = ["*"]` (which
    /// [`Policy::lint`](crate::Policy::lint) warns about).
    Everyone,
    /// Whoever has one of these uids, or one of these gids as primary or supplementary group.
    /// Both lists are sorted and deduplicated. Names that did not resolve are absent (and were
    /// reported as warnings), so they match nobody.
    Listed { uids: Vec<u32>, gids: Vec<u32> },
}

impl Subjects {
    /// Whether everyone these subjects match is also matched by `other`, whatever groups they
    /// hold: `other` is everyone, or lists every uid and gid listed here. (Conservative: a
    /// uid-only rule is not covered by a gid rule even when that user is in that group.)
    pub fn covered_by(&self, other: &Subjects) -> bool {
        match (self, other) {
            (_, Subjects::Everyone) => true,
            (Subjects::Everyone, Subjects::Listed { .. }) => false,
            (
                Subjects::Listed { uids, gids },
                Subjects::Listed {
                    uids: other_uids,
                    gids: other_gids,
                },
            ) => {
                uids.iter().all(|u| other_uids.binary_search(u).is_ok())
                    && gids.iter().all(|g| other_gids.binary_search(g).is_ok())
            }
        }
    }

    pub fn matches(&self, subject: &Subject) -> bool {
        match self {
            Subjects::Everyone => true,
            Subjects::Listed { uids, gids } => {
                uids.binary_search(&subject.uid).is_ok()
                    || std::iter::once(&subject.gid)
                        .chain(&subject.groups)
                        .any(|g| gids.binary_search(g).is_ok())
            }
        }
    }
}

/// A set of target drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DriverSet(u8);

impl DriverSet {
    pub const ALL: DriverSet = DriverSet(0b11);

    fn bit(driver: Driver) -> u8 {
        match driver {
            Driver::VfioPci => 1,
            Driver::PciStub => 2,
        }
    }

    pub fn insert(&mut self, driver: Driver) {
        self.0 |= Self::bit(driver);
    }

    pub fn contains(self, driver: Driver) -> bool {
        self.0 & Self::bit(driver) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The members, in [`Driver::ALL`] order.
    pub fn to_vec(self) -> Vec<Driver> {
        Driver::ALL
            .into_iter()
            .filter(|d| self.contains(*d))
            .collect()
    }
}

impl FromIterator<Driver> for DriverSet {
    fn from_iter<I: IntoIterator<Item = Driver>>(iter: I) -> Self {
        let mut set = DriverSet::default();
        for d in iter {
            set.insert(d);
        }
        set
    }
}

/// One rule of the policy, validated and resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub(crate) effect: Effect,
    pub(crate) origin: RuleRef,
    pub(crate) subjects: Subjects,
    pub(crate) devices: Vec<DeviceMatcher>,
    pub(crate) drivers: DriverSet,
    pub(crate) companions: DriverSet,
    /// The position of the rule's file in load order (0: the main file, then the drop-ins in
    /// lexical order): the first key of the order of consultation.
    pub(crate) file_index: usize,
}

impl Rule {
    pub fn effect(&self) -> Effect {
        self.effect
    }

    /// The rule's name and where it is written.
    pub fn origin(&self) -> &RuleRef {
        &self.origin
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The device matchers; the rule applies to a device matching any of them.
    pub fn devices(&self) -> &[DeviceMatcher] {
        &self.devices
    }

    /// The drivers the rule is about (a deny rule without `drivers` covers all of them).
    pub fn drivers(&self) -> DriverSet {
        self.drivers
    }

    /// What the subjects may do to the other endpoints of the device's IOMMU group (allow rules
    /// only; empty when not given). Parsed and kept; enforced by a later version of the helper.
    pub fn companions(&self) -> DriverSet {
        self.companions
    }

    /// Whether this rule speaks about this request. `address_text` is `device.address` in its
    /// canonical form, formatted once per decision rather than once per rule.
    pub(crate) fn applies(
        &self,
        subject: &Subject,
        device: &DeviceFacts,
        address_text: &str,
        driver: Driver,
    ) -> bool {
        self.drivers.contains(driver)
            && self.subjects.matches(subject)
            && self.devices.iter().any(|m| m.matches(device, address_text))
    }

    /// The order in which rules of one kind are consulted: the first applicable rule in this
    /// order (file in load order, then line) is the one cited, whatever order the rules were
    /// written in. The verdict never depends on it.
    pub(crate) fn sort_key(&self) -> (usize, &str, u32, &str) {
        (
            self.file_index,
            &self.origin.file,
            self.origin.line,
            &self.origin.name,
        )
    }
}
