//! The `--json` API: the documents `vfio-gate --json` prints, and the pieces they share.
//!
//! What a command prints under `--json` is an interface scripts rely on, so it is made of view
//! types of its own, never the protocol's structs (which change with the protocol version, and
//! whose serde shapes are the wire's, not a user's). The conventions, documented with an example
//! per command in `docs/json.md` (a test keeps those examples equal to what the commands print):
//!
//! - every document is one object with `"schema": 1` ([`SCHEMA`]) first: the version of this
//!   API, bumped on an incompatible change (a field removed, renamed or retyped); new fields may
//!   appear without a bump;
//! - an error is `{"schema": 1, "error": {"kind", "exit_code", "message", "next_step", ...}}` for
//!   every command ([`ErrorJson`]);
//! - PCI addresses in their canonical long form (`"0000:05:02.0"`), with `"short"` (lspci's
//!   form) beside the address of a device; ids as the hex strings lspci prints (`"vendor":
//!   "8086"`, `"device": "10d3"`, `"class": "020000"`); drivers by their kernel names;
//! - enums as snake_case strings (`"endpoint"`, `"boot_vga"`), or objects tagged by a `"kind"`
//!   (or, for a plan member, `"action"`) field; names in snake_case; fields that do not apply
//!   are `null` (error facts aside: those are present only for the kinds they belong to).

use std::path::Path;

use serde::Serialize;
use vfio_gate_policy::PolicySource;
use vfio_gate_protocol::{
    BusyReason, DenyReason, Guard, Holder, MemberKind, PciAddress, PlanStep, Reservation, RuleRef,
    StepAction,
};

use crate::error::{ErrorDetails, Why};
use crate::users::UserNames;

/// The version of the `--json` API: the `"schema"` field of every document.
pub const SCHEMA: u32 = 1;

/// A document as printed: `"schema"`, then the command's own fields.
#[derive(Debug, Serialize)]
pub struct Document<'a, T: Serialize> {
    pub schema: u32,
    #[serde(flatten)]
    pub body: &'a T,
}

impl<'a, T: Serialize> Document<'a, T> {
    pub fn new(body: &'a T) -> Self {
        Self {
            schema: SCHEMA,
            body,
        }
    }
}

/// "0000:05:02.0".
pub fn address(a: PciAddress) -> String {
    a.to_string()
}

/// "8086": a vendor or device id.
pub fn id(v: u16) -> String {
    format!("{v:04x}")
}

/// "020000": a class code (class, subclass, programming interface).
pub fn class(c: u32) -> String {
    format!("{c:06x}")
}

/// A policy rule: its name, file and line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub name: String,
    pub file: String,
    pub line: u32,
}

impl From<&RuleRef> for Rule {
    fn from(r: &RuleRef) -> Self {
        Self {
            name: r.name.clone(),
            file: r.file.clone(),
            line: r.line,
        }
    }
}

/// A user: the uid, and the name `/etc/passwd` gives it (`null` when it has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub uid: u32,
    pub user: Option<String>,
}

impl User {
    pub fn new(uid: u32, users: &UserNames) -> Self {
        Self {
            uid,
            user: users.name(uid).map(str::to_owned),
        }
    }
}

/// Who holds a device (or a group) through vfio-gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HolderJson {
    pub uid: u32,
    pub user: Option<String>,
    /// Seconds since the Unix epoch.
    pub since: u64,
    /// The lease ends when the command of the holder's `vfio-gate run` exits.
    pub tied: bool,
}

impl HolderJson {
    pub fn new(h: &Holder, users: &UserNames) -> Self {
        Self {
            uid: h.uid,
            user: users.name(h.uid).map(str::to_owned),
            since: h.since,
            tied: h.tied,
        }
    }
}

/// A device the policy holds from boot (`[[reserve]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reserved {
    /// The driver that holds it, where a release returns it.
    pub driver: &'static str,
    /// The `[[reserve]]`.
    pub rule: Rule,
    /// Held as a companion of this reserved device (another endpoint of its IOMMU group).
    pub companion_of: Option<String>,
}

impl From<&Reservation> for Reserved {
    fn from(r: &Reservation) -> Self {
        Self {
            driver: r.driver.as_str(),
            rule: Rule::from(&r.rule),
            companion_of: r.companion_of.map(address),
        }
    }
}

/// A built-in guard by its JSON name.
pub fn guard(g: Guard) -> &'static str {
    match g {
        Guard::BootVga => "boot_vga",
        Guard::HostInUse => "host_in_use",
        Guard::NotEndpoint => "not_endpoint",
        Guard::SriovEnabled => "sriov_enabled",
        Guard::NoIommuGroup => "no_iommu_group",
    }
}

/// A guard that refuses a device now, and why (for people).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardJson {
    pub guard: &'static str,
    pub reason: String,
}

impl From<&vfio_gate_protocol::GuardFinding> for GuardJson {
    fn from(g: &vfio_gate_protocol::GuardFinding) -> Self {
        Self {
            guard: guard(g.guard),
            reason: g.reason.clone(),
        }
    }
}

/// A group member's kind by its JSON name.
pub fn member_kind(k: MemberKind) -> &'static str {
    match k {
        MemberKind::Endpoint => "endpoint",
        MemberKind::Bridge => "bridge",
        MemberKind::HostBridge => "host_bridge",
        MemberKind::OtherBridge => "other_bridge",
    }
}

/// What a plan does to an IOMMU group: every member, in address order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanJson {
    pub iommu_group: Option<u32>,
    pub members: Vec<MemberJson>,
}

/// One member of a plan and what the plan does to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberJson {
    pub address: String,
    pub short: String,
    pub vendor: String,
    pub device: String,
    pub kind: &'static str,
    /// The driver before the plan.
    pub driver: Option<String>,
    #[serde(flatten)]
    pub action: ActionJson,
}

/// `"action"`: `bind` (moved to `to`), `adopt` (already on `to`: taken as it is) or `keep`
/// (left as it is, for `reason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ActionJson {
    Bind { to: &'static str, rule: Rule },
    Adopt { to: &'static str, rule: Rule },
    Keep { reason: String },
}

impl From<&vfio_gate_protocol::Plan> for PlanJson {
    fn from(p: &vfio_gate_protocol::Plan) -> Self {
        let mut steps: Vec<&PlanStep> = p.steps.iter().collect();
        steps.sort_by_key(|s| s.device);
        Self {
            iommu_group: p.group,
            members: steps
                .into_iter()
                .map(|s| MemberJson {
                    address: address(s.device),
                    short: s.device.short(),
                    vendor: id(s.vendor),
                    device: id(s.device_id),
                    kind: member_kind(s.kind),
                    driver: s.driver.clone(),
                    action: match &s.action {
                        StepAction::Bind { driver, rule } => ActionJson::Bind {
                            to: driver.as_str(),
                            rule: rule.into(),
                        },
                        StepAction::Adopt { driver, rule } => ActionJson::Adopt {
                            to: driver.as_str(),
                            rule: rule.into(),
                        },
                        StepAction::Keep { reason } => ActionJson::Keep {
                            reason: reason.clone(),
                        },
                    },
                })
                .collect(),
        }
    }
}

/// The policy an answer comes from: its main file (`null` when the helper answered: it does not
/// say), its SHA-256 (`null` when it does not load), and its files with their own hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyJson {
    pub path: Option<String>,
    pub sha256: Option<String>,
    pub files: Vec<PolicyFileJson>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyFileJson {
    pub path: String,
    pub sha256: String,
}

impl PolicyJson {
    pub fn new(path: Option<&str>, sha256: Option<&str>, files: &[PolicySource]) -> Self {
        Self {
            path: path.map(str::to_owned),
            sha256: sha256.map(str::to_owned),
            files: files
                .iter()
                .map(|f| PolicyFileJson {
                    path: f.path.clone(),
                    sha256: f.sha256.clone(),
                })
                .collect(),
        }
    }
}

/// The `error` object of every command's failure. `kind`, `exit_code`, `message` and
/// `next_step` are always there; the facts only for the kinds they belong to.
#[derive(Debug, Default, Serialize)]
pub struct ErrorJson {
    /// A stable name: see [`ErrorDetails::kind`].
    pub kind: &'static str,
    pub exit_code: u8,
    /// The message and its causes, as printed on stderr.
    pub message: String,
    pub next_step: Option<String>,
    /// The deciding rule of a denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Rule>,
    /// The typed reason of a denial (`denied`) or of `busy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<ReasonJson>,
    /// The device of a `not_found` or of a guard's refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The built-in guard that refused (`refused`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<&'static str>,
    /// The IOMMU group (`needs_group`, `held`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iommu_group: Option<u32>,
    /// What `--group` would do (`needs_group`), as `bind --json`'s `plan`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanJson>,
    /// The command that would do it (`needs_group`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerun: Option<String>,
    /// Who holds the group (`held`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<ErrorHolderJson>,
    /// The socket, when the helper could not be reached or did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// Who holds the group of a `held` error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorHolderJson {
    pub uid: u32,
    pub user: Option<String>,
    /// Seconds since the Unix epoch.
    pub since: u64,
}

/// A denial's or a `busy` answer's typed reason, tagged by `"kind"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReasonJson {
    /// A rule denies it, or no rule allows it (then `rule` is absent).
    Policy,
    /// The caller holds `held` groups, the policy's most.
    GroupLimit { held: u32, max: u32 },
    /// `device`, another member of the group, stands in the way.
    GroupPlan { device: String },
    /// A release of a device nobody holds.
    NotHeld { device: String },
    /// The helper serves as many connections as it allows (retried before this is reported).
    ConnectionLimit { limit: u32 },
    /// A process (a VM) has the group's node open.
    GroupInUse { iommu_group: u32 },
    /// The caller holds the group already.
    YouHoldIt {
        iommu_group: u32,
        devices: Vec<String>,
    },
    /// An earlier write for `device` is still blocked in the kernel.
    BlockedInKernel { device: String },
    /// `device` is in use by something vfio-gate did not set up.
    HeldOutsideVfioGate { device: String },
    /// A reason newer than this vfio-gate.
    Other,
}

impl From<Why<'_>> for ReasonJson {
    fn from(why: Why<'_>) -> Self {
        match why {
            Why::Deny(d) => match d {
                DenyReason::Policy => ReasonJson::Policy,
                DenyReason::GroupLimit { held, max } => ReasonJson::GroupLimit {
                    held: *held,
                    max: *max,
                },
                DenyReason::GroupPlan { device } => ReasonJson::GroupPlan {
                    device: address(*device),
                },
                DenyReason::NotHeld { device } => ReasonJson::NotHeld {
                    device: address(*device),
                },
                _ => ReasonJson::Other,
            },
            Why::Busy(b) => match b {
                BusyReason::ConnectionLimit { limit } => {
                    ReasonJson::ConnectionLimit { limit: *limit }
                }
                BusyReason::GroupInUse { group } => ReasonJson::GroupInUse {
                    iommu_group: *group,
                },
                BusyReason::YouHoldIt { group, devices } => ReasonJson::YouHoldIt {
                    iommu_group: *group,
                    devices: devices.iter().copied().map(address).collect(),
                },
                BusyReason::BlockedInKernel { device } => ReasonJson::BlockedInKernel {
                    device: address(*device),
                },
                BusyReason::HeldOutsideVfioGate { device } => ReasonJson::HeldOutsideVfioGate {
                    device: address(*device),
                },
                _ => ReasonJson::Other,
            },
        }
    }
}

impl ErrorJson {
    /// The error whose message is `message` and whose details are `d`.
    pub fn new(message: String, d: &ErrorDetails<'_>) -> Self {
        Self {
            kind: d.kind,
            exit_code: d.status.code(),
            message,
            next_step: d.next_step.clone(),
            rule: d.rule.map(Rule::from),
            reason: d.why.map(ReasonJson::from),
            device: d.device.map(address),
            guard: d.guard.map(guard),
            iommu_group: d.group,
            plan: d.plan.map(PlanJson::from),
            rerun: d.rerun.map(str::to_owned),
            holder: d.holder.map(|h| ErrorHolderJson {
                uid: h.uid,
                user: h.name.map(str::to_owned),
                since: h.since,
            }),
            socket: d.socket.map(|s: &Path| s.display().to_string()),
        }
    }
}

/// The document of a failure: `{"schema": 1, "error": {...}}`.
#[derive(Debug, Serialize)]
pub struct ErrorDocument {
    pub error: ErrorJson,
}
