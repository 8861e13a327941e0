//! `vfio-gated`: the privileged half of vfio-gate, and the only process that writes PCI sysfs.
//!
//! # The kernel model it works in
//!
//! A PCI device is handed to a user's VM by binding it to `vfio-pci`, which exposes it through
//! `/dev/vfio/<iommu-group>`; `pci-stub` merely occupies a device's driver slot so no host driver
//! touches it. The binding is done per device with `driver_override`: write the target driver's
//! name to `/sys/bus/pci/devices/<addr>/driver_override`, unbind the current driver, write the
//! address to `/sys/bus/pci/drivers_probe`, then **re-read the `driver` link**, because a probe
//! that binds nothing still reports success. Giving the device back is the same dance with the
//! recorded original override (a newline clears it). `new_id` is never used: it binds every
//! device with the same ids, for everybody.
//!
//! # Shape
//!
//! [`run`] is the whole start-up, top to bottom: take the listening socket ([`activation`]), load
//! and check the policy, open the state directory ([`state`]), then serve ([`server`]). Each
//! request is decided and carried out by [`service`], which drives the sequences in [`ops`]
//! through the narrow [`sysfs::Kernel`] interface — the only write path to sysfs. Every request
//! leaves one line on stderr ([`audit`]).

pub mod activation;
pub mod audit;
pub mod ops;
pub mod options;
pub mod peer;
pub mod server;
pub mod service;
pub mod state;
mod sys;
pub mod sysfs;
pub mod usage;

use std::sync::Arc;

use vfio_gate_policy::{EtcFiles, Policy, PolicyError};

use crate::activation::{ActivationEnv, ActivationError};
use crate::options::Options;
use crate::server::{Limits, ServeError};
use crate::service::Service;
use crate::state::{StateDir, StateError};
use crate::sysfs::Sysfs;

/// Why the helper stopped before or while serving.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Activation(#[from] ActivationError),
    #[error("refusing to start: {0}")]
    Policy(#[from] PolicyError),
    #[error("refusing to start: {0}")]
    State(#[from] StateError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Start-up, in order; nothing from a client is read before the last step.
pub fn run(opts: &Options) -> Result<(), StartupError> {
    let listener =
        activation::take_listener(opts.listen.as_deref(), &ActivationEnv::from_process())?;
    let policy = load_policy(opts)?;
    let state = StateDir::open(&opts.state_dir)?;
    let limits = Limits {
        idle_timeout: policy.settings().idle_timeout,
        ..Limits::default()
    };
    let service = Service::new(Box::new(Sysfs::new(&opts.sysfs_root)), policy, state);
    audit::Line::new("start")
        .field("version", env!("CARGO_PKG_VERSION"))
        .field("policy", opts.policy.display())
        .field("sysfs_root", opts.sysfs_root.display())
        .field("state_dir", opts.state_dir.display())
        .field("idle_timeout_s", limits.idle_timeout.as_secs())
        .emit();
    server::serve(listener, Arc::new(service), limits)?;
    Ok(())
}

fn load_policy(opts: &Options) -> Result<Policy, PolicyError> {
    // Names are resolved once, here, from the files themselves: no NSS inside the helper.
    let policy = Policy::load(&opts.policy, &EtcFiles::new("/"))?;
    for warning in policy.warnings() {
        audit::Line::new("policy-warning")
            .field("policy", opts.policy.display())
            .field("warning", warning)
            .emit();
    }
    Ok(policy)
}
