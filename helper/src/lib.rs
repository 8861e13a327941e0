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
//! request is decided and carried out by [`service`], which drives the sequences in [`sequence`]
//! through the narrow [`kernel::Kernel`] interface — the only write path to sysfs. Every request
//! leaves one line on stderr ([`audit`]).

#![deny(unsafe_code)]

pub mod activation;
pub mod audit;
pub mod fault;
pub mod kernel;
pub mod options;
pub mod peer;
pub mod roots;
pub mod sandbox;
pub mod sequence;
pub mod server;
pub mod service;
pub mod state;
// The one module allowed raw calls, each with its `// SAFETY:` reasoning.
#[allow(unsafe_code)]
mod sys;

use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

use vfio_gate_host::groups::ViabilityRule;
use vfio_gate_host::usage::HostView;
use vfio_gate_policy::{EtcFiles, Policy, PolicyError};

use crate::activation::{ActivationEnv, ActivationError};
use crate::kernel::Sysfs;
use crate::options::Options;
use crate::server::{Limits, ServeError};
use crate::service::{Service, Tuning};
use crate::state::{StateDir, StateError};

/// Why the helper stopped before or while serving.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Activation(#[from] ActivationError),
    #[error("refusing to start: {0}")]
    Policy(#[from] PolicyError),
    #[error("refusing to start: {0}")]
    State(#[from] StateError),
    #[error("refusing to start: closing inherited file descriptors: {0}")]
    Fds(#[source] std::io::Error),
    #[error("refusing to start: dropping capabilities: {0}")]
    Caps(#[from] sandbox::caps::CapsError),
    #[error("refusing to start: {0}")]
    Sandbox(#[from] sandbox::landlock::SandboxError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Start-up, in order; nothing from a client is read before the last step.
pub fn run(opts: &Options) -> Result<(), StartupError> {
    let listener = take_socket(opts)?;
    match set_up(opts) {
        Ok((policy, state, sandbox)) => serve(opts, listener, policy, state, &sandbox),
        Err(e) => {
            // Clients already queued on the socket would otherwise wait for an answer until
            // they time out: tell them why nothing is served, then exit.
            server::refuse_all(&listener, &e.to_string(), Duration::from_secs(1));
            Err(e)
        }
    }
}

/// Steps 2 to 5: policy, state directory, capabilities, landlock.
fn set_up(opts: &Options) -> Result<(Policy, StateDir, sandbox::landlock::Report), StartupError> {
    let policy = load_policy(opts)?;
    let state = StateDir::open(&opts.roots.state)?;
    fault::arm(&opts.roots.state);
    // Computed while every path is still visible.
    let grants = sandbox::landlock::grants(&opts.roots);
    sandbox::caps::drop_to_chown()?;
    let settings = policy.settings().clone();
    let sandbox =
        sandbox::landlock::enforce(&grants, settings.sandbox_floor, settings.allow_unsandboxed)?;
    Ok((policy, state, sandbox))
}

/// Step 1: the listening socket, and nothing else inherited.
fn take_socket(opts: &Options) -> Result<UnixListener, StartupError> {
    let listener =
        activation::take_listener(opts.listen.as_deref(), &ActivationEnv::from_process())?;
    sandbox::close_inherited_fds(&listener).map_err(StartupError::Fds)?;
    Ok(listener)
}

/// The last step: build the service inside the sandbox and serve until idle.
fn serve(
    opts: &Options,
    listener: UnixListener,
    policy: Policy,
    state: StateDir,
    sandbox: &sandbox::landlock::Report,
) -> Result<(), StartupError> {
    let limits = Limits {
        idle_timeout: policy.settings().idle_timeout,
        ..Limits::default()
    };
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let tuning = Tuning {
        viability: ViabilityRule::for_release(&release),
        ..Tuning::default()
    };
    let roots = &opts.roots;
    let kernel = Arc::new(Sysfs::new(&roots.sys, &roots.vfio));
    let host = Box::new(HostView::new(&roots.sys, &roots.proc));
    let service = Service::new(kernel, host, policy, state, roots.clone(), tuning);
    audit::Line::new("start")
        .field("version", env!("CARGO_PKG_VERSION"))
        .field("policy", opts.policy.display())
        .field("sysfs_root", opts.roots.sys.display())
        .field("state_dir", opts.roots.state.display())
        .field("vfio_dir", opts.roots.vfio.display())
        .field("kernel", &release)
        .field("landlock_abi", sandbox.abi)
        .field("sandbox", sandbox.status)
        .field("sandbox_missing", sandbox.missing.join("; "))
        .field("capabilities", sandbox::caps::summary())
        .field("idle_timeout_s", limits.idle_timeout.as_secs())
        .emit();
    if fault::COMPILED_IN {
        audit::Line::new("TEST-BUILD")
            .field(
                "warning",
                "fault injection is compiled in: this helper is for crash-consistency tests only",
            )
            .emit();
    }
    if sandbox.status == sandbox::landlock::Status::Unsandboxed {
        audit::Line::new("UNSANDBOXED")
            .field(
                "warning",
                "this kernel has no landlock; the policy's allow_unsandboxed = true lets vfio-gated serve without its sandbox",
            )
            .emit();
    }
    server::serve(listener, Arc::new(service), limits)?;
    Ok(())
}

fn load_policy(opts: &Options) -> Result<Policy, PolicyError> {
    // Names are resolved once, here, from the files themselves: no NSS inside the helper.
    let policy = Policy::load(&opts.policy, &EtcFiles::new(&opts.roots.etc))?;
    // Ties every later decision to the exact text it was made under.
    let files: Vec<String> = policy
        .sources()
        .iter()
        .map(|s| format!("{}={}", s.path, s.sha256))
        .collect();
    audit::Line::new("policy-load")
        .field("policy", opts.policy.display())
        .field("sha256", policy.sha256())
        .field("files", files.join(" "))
        .field("rules", policy.rules().len())
        .emit();
    for warning in policy.warnings() {
        audit::Line::new("policy-warning")
            .field("policy", opts.policy.display())
            .field("warning", warning)
            .emit();
    }
    Ok(policy)
}
