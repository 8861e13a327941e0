//! Reservations (`[[reserve]]`): devices held by a VM driver from boot.
//!
//! A reserved device is put on its reservation's driver (`pci-stub` or `vfio-pci`) before any
//! host driver can bind it — by `vfio-gated --reserve` early at boot, and when the device appears
//! later — and vfio-gate never hands it back to a host driver: a lease moves it between the
//! reservation's driver and what its user asked for, and a release returns it to the
//! reservation. A reservation grants nobody anything; who may bind the device is still up to the
//! `[[rule]]`s.
//!
//! `companions` extends a reservation to the other endpoints of the device's IOMMU group (which
//! this crate does not know: the host view resolves them), so that the group is viable from boot.
//!
//! Two reservations that match one device with different drivers leave it unreserved
//! ([`Reserved::Conflict`]): which one was meant is not for vfio-gate to guess, and the answer
//! must not depend on the order the rules were written in.

use vfio_gate_protocol::{Driver, RuleRef};

use crate::device::DeviceFacts;
use crate::matcher::DeviceMatcher;

/// One `[[reserve]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub(crate) origin: RuleRef,
    pub(crate) devices: Vec<DeviceMatcher>,
    pub(crate) driver: Driver,
    pub(crate) companions: Option<Driver>,
    /// The position of its file in load order: the first key of the order of consultation.
    pub(crate) file_index: usize,
}

impl Reservation {
    /// Its name and where it is written.
    pub fn origin(&self) -> &RuleRef {
        &self.origin
    }

    /// The device matchers; the reservation holds a device matching any of them.
    pub fn devices(&self) -> &[DeviceMatcher] {
        &self.devices
    }

    /// The driver that holds the reserved devices.
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// The driver that holds the other endpoints of a reserved device's IOMMU group, if the
    /// reservation extends to them.
    pub fn companions(&self) -> Option<Driver> {
        self.companions
    }

    /// Whether the reservation names `device` itself (not as a companion).
    pub fn matches(&self, device: &DeviceFacts) -> bool {
        let text = device.address.to_string();
        self.devices.iter().any(|m| m.matches(device, &text))
    }

    pub(crate) fn sort_key(&self) -> (usize, &str, u32, &str) {
        (
            self.file_index,
            &self.origin.file,
            self.origin.line,
            &self.origin.name,
        )
    }
}

/// How the policy reserves one device (by name, not as a companion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved<'a> {
    /// No reservation names it.
    No,
    /// Held by `driver`; `by` is the first matching reservation in load order (several may
    /// match, all with this driver).
    Yes { driver: Driver, by: &'a Reservation },
    /// Reservations with different drivers name it: it is held by none of them.
    Conflict(Vec<&'a Reservation>),
}

impl Reserved<'_> {
    /// The driver it is held by, if it is reserved without conflict.
    pub fn driver(&self) -> Option<Driver> {
        match self {
            Reserved::Yes { driver, .. } => Some(*driver),
            Reserved::No | Reserved::Conflict(_) => None,
        }
    }
}

/// The verdict over `reservations` (sorted in load order) for `device`.
pub(crate) fn reserved<'a>(reservations: &'a [Reservation], device: &DeviceFacts) -> Reserved<'a> {
    let matching: Vec<&Reservation> = reservations.iter().filter(|r| r.matches(device)).collect();
    match matching.first() {
        None => Reserved::No,
        Some(first) if matching.iter().all(|r| r.driver == first.driver) => Reserved::Yes {
            driver: first.driver,
            by: first,
        },
        Some(_) => Reserved::Conflict(matching),
    }
}
