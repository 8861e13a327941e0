//! Requests, responses and the wire error.
//!
//! The protocol version ([`crate::PROTOCOL_VERSION`]) covers these definitions: any change to a
//! variant or a field bumps it, so a frontend and a helper from different releases fail with a
//! clear version mismatch instead of misreading each other.

use serde::{Deserialize, Serialize};

use crate::{Driver, PciAddress};

/// What a client asks of the helper. The caller's identity is never part of a request: the helper
/// takes it from the kernel (`SO_PEERCRED`, `SO_PEERGROUPS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Every PCI device, with what the caller may do to it.
    List,
    /// Hand `devices` (one IOMMU group; the first is the one the user named first) to `driver`
    /// for the caller. With `group`, also move the group's other endpoints off their host drivers
    /// as the policy allows, so the group becomes viable. With `dry_run`, only plan. With `hold`,
    /// the lease lives as long as this connection: when it closes, for whatever reason, the
    /// helper releases the group (`vfio-gate run`).
    Bind {
        devices: Vec<PciAddress>,
        driver: Driver,
        group: bool,
        dry_run: bool,
        hold: bool,
    },
    /// Give groups back: every member vfio-gate moved returns to the driver it had before.
    Release { target: ReleaseTarget },
    /// How the helper would decide a bind of `device` to `driver` (both drivers when `None`) for
    /// the caller, or for user `uid` (admins only), and why. Changes nothing.
    Explain {
        device: PciAddress,
        driver: Option<Driver>,
        uid: Option<u32>,
    },
}

/// Which groups a release gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseTarget {
    /// The group holding this device (the caller's, or anyone's for an admin).
    Device(PciAddress),
    /// Every group the caller holds.
    Mine,
    /// Every group this user holds (admins only, or the user themself).
    User(u32),
}

/// The most devices one bind may name (a group rarely has more than a handful).
pub const MAX_BIND_DEVICES: usize = 32;

impl Request {
    /// A short name for audit lines.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::List => "list",
            Request::Bind { .. } => "bind",
            Request::Release { .. } => "release",
            Request::Explain { .. } => "explain",
        }
    }
}

/// The helper's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Devices(Vec<DeviceInfo>),
    Bound(BindReport),
    Released(ReleaseReport),
    Explained(ExplainReport),
    Error(WireError),
}

/// The policy's answer for one driver, with every rule that spoke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverVerdict {
    pub driver: Driver,
    pub allowed: bool,
    /// The deciding rule: the first matching deny, else the first matching allow; `None` for
    /// the default deny.
    pub rule: Option<RuleRef>,
    /// Every allow rule that matches, in order of consultation.
    pub allows: Vec<RuleRef>,
    /// Every deny rule that matches, in order of consultation.
    pub denies: Vec<RuleRef>,
}

/// A built-in guard that refuses the device now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardFinding {
    pub guard: Guard,
    pub reason: String,
}

/// Why a bind would or would not happen, without doing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainReport {
    pub device: PciAddress,
    pub vendor: u16,
    pub device_id: u16,
    pub class: u32,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    /// Whom the answer is for.
    pub uid: u32,
    pub verdicts: Vec<DriverVerdict>,
    /// The guards that refuse this device now (empty: none).
    pub guards: Vec<GuardFinding>,
    /// For vfio-pci when the policy allows it: what a bind would do to the whole group (the
    /// companions it needs), or why it cannot be done.
    pub plan: Option<Result<Plan, String>>,
    /// Who holds the device's group now, if anyone.
    pub holder: Option<Holder>,
    /// Whether the policy holds the device from boot, and by which `[[reserve]]`.
    pub reserved: Option<Reservation>,
    /// The SHA-256 of the policy text the answer comes from.
    pub policy_sha256: String,
}

/// One PCI device as the helper sees it, and what the asking user may do with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub address: PciAddress,
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: u16,
    pub subsystem_device: u16,
    /// The 24-bit class code (class, subclass, programming interface).
    pub class: u32,
    /// The bound driver, if any.
    pub driver: Option<String>,
    /// The `driver_override` in force, if any.
    pub driver_override: Option<String>,
    /// `None` when the device has no IOMMU group (IOMMU off).
    pub iommu_group: Option<u32>,
    /// Target drivers the policy lets the caller bind this device to.
    pub allowed: Vec<Driver>,
    /// Who holds the device through vfio-gate, if anyone.
    pub holder: Option<Holder>,
    /// Whether the policy holds the device from boot, and by which `[[reserve]]`.
    pub reserved: Option<Reservation>,
}

/// A device the policy holds on a VM driver from boot (`[[reserve]]`): vfio-gate never hands it
/// to a host driver, and a release returns it to `driver`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub driver: Driver,
    /// The `[[reserve]]` that holds it.
    pub rule: RuleRef,
    /// Held as another endpoint of this reserved device's IOMMU group (the reservation's
    /// `companions`), rather than named by the reservation itself.
    pub companion_of: Option<PciAddress>,
}

/// A vfio-gate lease on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub uid: u32,
    pub driver: Driver,
    /// Seconds since the Unix epoch.
    pub since: u64,
    pub group: Option<u32>,
    /// The lease ends when its holder's connection closes (`vfio-gate run`).
    pub tied: bool,
}

/// A policy rule as users see it: its name and where it is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    pub name: String,
    pub file: String,
    pub line: u32,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "'{}' ({}:{})", self.name, self.file, self.line)
    }
}

/// What a group member is. Only endpoints are ever handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberKind {
    Endpoint,
    /// PCI-to-PCI or CardBus bridge (non-normal header).
    Bridge,
    HostBridge,
    /// Another bridge class: ISA/LPC and the like.
    OtherBridge,
}

impl std::fmt::Display for MemberKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemberKind::Endpoint => "endpoint",
            MemberKind::Bridge => "bridge",
            MemberKind::HostBridge => "host bridge",
            MemberKind::OtherBridge => "bridge (non-PCI)",
        })
    }
}

/// What a plan does to one member of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepAction {
    /// Move the member to `driver`, as `rule` allows.
    Bind { driver: Driver, rule: RuleRef },
    /// Leave the member as it is, for `reason` (it already keeps the group viable).
    Keep { reason: String },
    /// The member is already on `driver` (a reservation, `vfio-pci.ids=`, an admin): the
    /// caller takes it as it is, as `rule` allows, with no unbind or probe; a release leaves it
    /// there.
    Adopt { driver: Driver, rule: RuleRef },
}

impl StepAction {
    /// The driver the member is on once the plan has run, when the plan gives it to the caller
    /// (moved or adopted); `None` for a member left as it is.
    pub fn target(&self) -> Option<Driver> {
        match self {
            StepAction::Bind { driver, .. } | StepAction::Adopt { driver, .. } => Some(*driver),
            StepAction::Keep { .. } => None,
        }
    }

    /// The rule that lets the caller have the member, if the plan gives it to them.
    pub fn rule(&self) -> Option<&RuleRef> {
        match self {
            StepAction::Bind { rule, .. } | StepAction::Adopt { rule, .. } => Some(rule),
            StepAction::Keep { .. } => None,
        }
    }
}

/// One member of the group and what the plan does to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    pub device: PciAddress,
    pub kind: MemberKind,
    pub vendor: u16,
    pub device_id: u16,
    /// The driver before the plan.
    pub driver: Option<String>,
    pub action: StepAction,
}

/// Every member of an IOMMU group and what a bind does to each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// `None` only when the device has no IOMMU group (never executed).
    pub group: Option<u32>,
    pub steps: Vec<PlanStep>,
}

/// A successful bind (or, with `dry_run`, the plan that a bind would carry out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindReport {
    pub plan: Plan,
    pub dry_run: bool,
    /// The group node handed to the caller (`/dev/vfio/N`), when the bind was to vfio-pci.
    pub vfio_node: Option<String>,
}

/// One device a release gave back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredDevice {
    pub device: PciAddress,
    /// The driver recorded at bind time.
    pub expected_driver: Option<String>,
    /// The driver bound after the release. Differs from `expected_driver` only when the host
    /// driver did not take the device back; the lease is gone either way.
    pub restored_driver: Option<String>,
}

/// One group a release gave back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedGroup {
    pub group: Option<u32>,
    /// Who held it.
    pub owner_uid: u32,
    pub devices: Vec<RestoredDevice>,
}

/// A successful release (possibly of nothing, for `Mine` or `User` with no lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseReport {
    pub groups: Vec<ReleasedGroup>,
}

/// A protection no policy can override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Guard {
    /// The boot VGA device (`boot_vga` = 1): the console and firmware framebuffer use it.
    BootVga,
    /// A filesystem, swap or network interface on the device is in use by the host.
    HostInUse,
    /// Bridges and other non-endpoints are never handed out.
    NotEndpoint,
    /// A physical function with SR-IOV virtual functions enabled.
    SriovEnabled,
    /// The device has no IOMMU group: the IOMMU is off.
    NoIommuGroup,
}

/// Why a request failed, as the client is told. Deliberately small: each variant maps to one exit
/// code, and every fact the client acts on (retry or not, which next step to suggest) is a typed
/// field. The `detail` and `reason` texts are for people only: no client may parse them, and
/// rewording them changes no behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The policy said no, or the caller may not do this. `rule` is the deciding rule; `None`
    /// with [`DenyReason::Policy`] means no rule matched and the default (deny) applied.
    #[error("denied: {detail}")]
    Denied {
        why: DenyReason,
        rule: Option<RuleRef>,
        detail: String,
    },
    #[error("no PCI device {device}")]
    NotFound { device: PciAddress },
    /// A built-in guard refused: no policy can allow this.
    #[error("refused: {reason}")]
    Refused {
        device: PciAddress,
        guard: Guard,
        reason: String,
    },
    /// Binding only the named devices would leave the group unusable; `plan` is what `--group`
    /// would do.
    #[error("group {group} has other members on host drivers: {reason}")]
    NeedsGroup {
        group: u32,
        plan: Plan,
        reason: String,
    },
    /// Another user holds the IOMMU group.
    #[error("group {} is held by uid {uid}", group.map_or("-".to_string(), |g| g.to_string()))]
    Held {
        group: Option<u32>,
        uid: u32,
        /// Seconds since the Unix epoch.
        since: u64,
    },
    /// Not now: `why` says what stands in the way, and so whether waiting helps.
    #[error("busy: {detail}")]
    Busy { why: BusyReason, detail: String },
    /// Only an admin (root, or `[settings] admins` in the policy) may do this: act for or ask
    /// about another user.
    #[error("denied: {detail}")]
    NotAdmin { detail: String },
    /// The frame or the request itself was unacceptable.
    #[error("bad request: {reason}")]
    BadRequest { reason: String },
    #[error("protocol version mismatch: helper speaks {server}, client sent {client}")]
    VersionMismatch { server: u16, client: u16 },
    /// The kernel refused a step; the device was rolled back to its state before the request.
    #[error("the kernel refused: {reason}")]
    Failed { reason: String },
    #[error("internal error in the helper: {reason}")]
    Internal { reason: String },
    /// The helper refuses to start (its policy is refused, its state directory is unsafe…) and
    /// serves nothing until an admin fixes that; `reason` says what.
    #[error("the helper is not serving: {reason}")]
    Unavailable { reason: String },
}

/// Why a request was denied (besides a guard, [`WireError::Refused`], or a holder,
/// [`WireError::Held`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DenyReason {
    /// A rule denies it, or no rule allows it (the default).
    Policy,
    /// The caller holds `held` groups, the policy's `max_groups_per_user`.
    GroupLimit { held: u32, max: u32 },
    /// The group cannot be made usable as the policy stands: `device`, another member, is in
    /// the way (a host driver the policy does not let the caller move, a bridge on a driver that
    /// blocks the group, a device on vfio-pci the caller may not use).
    GroupPlan { device: PciAddress },
    /// A release names a device that vfio-gate does not hold: nothing to give back.
    NotHeld { device: PciAddress },
}

/// What keeps the helper from doing it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BusyReason {
    /// The helper is serving as many connections as it allows: passes in a moment, worth a
    /// retry.
    ConnectionLimit { limit: u32 },
    /// A process (a VM) has the group's node open: stop it first.
    GroupInUse { group: u32 },
    /// The caller already holds the group: release it first.
    YouHoldIt {
        group: u32,
        devices: Vec<PciAddress>,
    },
    /// An earlier write for `device` is still blocked in the kernel (a VM holds the device).
    BlockedInKernel { device: PciAddress },
    /// `device` is in use through a driver that vfio-gate did not bind (a VM not started through
    /// vfio-gate has its group open): whoever set it up must let go of it first.
    HeldOutsideVfioGate { device: PciAddress },
}

impl BusyReason {
    /// Whether the same request may succeed if simply sent again in a moment.
    pub fn passes_by_itself(&self) -> bool {
        matches!(self, BusyReason::ConnectionLimit { .. })
    }
}
