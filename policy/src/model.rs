//! The evaluated form of a policy: who asks, about what, and the rules that answer.

use std::time::Duration;

use vfio_gate_protocol::{Driver, PciAddress, RuleRef};

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
}

impl Settings {
    /// The default and the range of `sandbox_floor` (landlock ABI versions).
    pub const DEFAULT_SANDBOX_FLOOR: u8 = 1;
    pub const MAX_SANDBOX_FLOOR: u8 = 6;
    /// The idle timeout when the policy does not set one.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    /// The largest `idle_timeout` accepted, in seconds (one day).
    pub const MAX_IDLE_TIMEOUT_SECS: u64 = 86_400;
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

/// What the policy may look at about a device, read from sysfs by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceFacts {
    pub address: PciAddress,
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: u16,
    pub subsystem_device: u16,
    /// The 24-bit class code (`class` in sysfs): base class, subclass, programming interface.
    pub class: u32,
}

/// The answer to "may this subject bind this device to this driver?".
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

/// Whether a rule grants or forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// A `[[rule]]`.
    Allow,
    /// A `[[deny]]`.
    Deny,
}

/// The subjects a rule applies to, with user and group names already resolved to ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subjects {
    /// Everyone (a deny rule without `subjects`).
    Everyone,
    /// Whoever has one of these uids, or one of these gids as primary or supplementary group.
    /// Both lists are sorted and deduplicated. Names that did not resolve are absent (and were
    /// reported as warnings), so they match nobody.
    Listed { uids: Vec<u32>, gids: Vec<u32> },
}

impl Subjects {
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
    /// order decides, whatever order the rules were written or loaded in.
    pub(crate) fn sort_key(&self) -> (&str, u32, &str) {
        (&self.origin.file, self.origin.line, &self.origin.name)
    }
}
