//! Table-driven tests of the whole crate: parsing, evaluation, loading.

mod docs;
mod dropin;
mod evaluate;
mod hash;
mod load;
mod parse;
mod questions;
mod reserve;
mod schema;

use vfio_gate_protocol::PciAddress;

use crate::{DeviceFacts, NameResolver, Policy, PolicyError, Subject};

/// A fixed name database: the users and groups of the test guest, plus root.
pub(crate) struct Names;

impl NameResolver for Names {
    fn uid(&self, user: &str) -> Option<u32> {
        match user {
            "root" => Some(0),
            "alice" => Some(1000),
            "bob" => Some(1001),
            _ => None,
        }
    }
    fn gid(&self, group: &str) -> Option<u32> {
        match group {
            "root" => Some(0),
            "vm-users" => Some(1100),
            "wheel" => Some(10),
            _ => None,
        }
    }
}

pub(crate) const FILE: &str = "/etc/vfio-gate/policy.toml";

pub(crate) fn parse(text: &str) -> Result<Policy, PolicyError> {
    Policy::parse(text, FILE, &Names)
}

pub(crate) fn subject(uid: u32, gid: u32, groups: &[u32]) -> Subject {
    Subject {
        uid,
        gid,
        groups: groups.to_vec(),
    }
}

pub(crate) fn device(address: &str, vendor: u16, device: u16, class: u32) -> DeviceFacts {
    DeviceFacts {
        address: address.parse::<PciAddress>().unwrap(),
        vendor,
        device,
        subsystem_vendor: 0x1af4,
        subsystem_device: 0x1100,
        class,
        physical_slot: None,
    }
}
