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
    /// Hand `device` to `driver` for the caller.
    Bind { device: PciAddress, driver: Driver },
    /// Give `device` back to the driver it had before the caller's bind.
    Release { device: PciAddress },
}

impl Request {
    /// A short name for audit lines.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::List => "list",
            Request::Bind { .. } => "bind",
            Request::Release { .. } => "release",
        }
    }
}

/// The helper's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Devices(Vec<DeviceInfo>),
    Bound(BindReport),
    Released(ReleaseReport),
    Error(WireError),
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
}

/// A vfio-gate lease on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub uid: u32,
    pub driver: Driver,
    /// Seconds since the Unix epoch.
    pub since: u64,
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

/// A successful bind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindReport {
    pub device: PciAddress,
    pub driver: Driver,
    /// The driver the device had before, restored on release.
    pub previous_driver: Option<String>,
    pub iommu_group: Option<u32>,
    /// The allow rule that granted the bind.
    pub rule: RuleRef,
}

/// A successful release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseReport {
    pub device: PciAddress,
    /// The driver recorded at bind time.
    pub expected_driver: Option<String>,
    /// The driver bound after the release. Differs from `expected_driver` only when the host
    /// driver did not take the device back; the lease is gone either way.
    pub restored_driver: Option<String>,
}

/// Why a request failed, as the client is told. Deliberately small: each variant maps to one exit
/// code and one next step in the frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The policy or a built-in guard said no. `rule` is the deciding rule; `None` means no rule
    /// matched and the default (deny) applied.
    #[error("denied: {reason}")]
    Denied {
        rule: Option<RuleRef>,
        reason: String,
    },
    #[error("no PCI device {device}")]
    NotFound { device: PciAddress },
    /// Try again later: the helper is at its connection limit or the device is being changed.
    #[error("busy: {reason}")]
    Busy { reason: String },
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
}
