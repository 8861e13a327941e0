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
//! [`run`] is the whole start-up, one named step per line: take the listening socket
//! ([`activation`]) → close every other inherited descriptor → load and check the policy, names
//! resolved from the account files → open the state directory ([`state`]) → drop to CAP_CHOWN
//! ([`sandbox::caps`]) → enter the landlock domain ([`sandbox::landlock`]) → reconcile the leases
//! a previous helper left with sysfs → serve ([`server`]). Nothing a client sends is read before
//! the last step, and a step that fails is told to the clients already waiting.
//!
//! Every tree the helper touches — sysfs, procfs, the account files, the state directory,
//! `/dev/vfio` — has its root in one [`roots::Roots`] value built from the options
//! ([`options`]), and that value is what the sandbox grants, the name reader, the in-use guard's
//! host view, the kernel interface and the service all use.
//!
//! Per request, [`server`] reads a frame, asks [`peer`] who sent it, and hands the request to
//! [`service`], which decides (policy, guards and plan from `vfio-gate-host`) and acts by driving
//! the bind and release sequences in [`sequence`] through the narrow [`kernel::Kernel`]
//! interface — the only write path to sysfs. The service answers with an [`service::Outcome`]
//! (the response, and a group now tied to the connection) and fills an [`audit::Record`] from
//! which the server writes the request's line on stderr ([`audit`]). [`fault`] stops a test build
//! dead at a named step.
//!
//! The crate denies `unsafe_code`; the few raw calls nix does not wrap are in one private module,
//! `sys`, each with its safety argument.

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
// The one module allowed raw calls (it says `#![allow(unsafe_code)]`), each with its
// `// SAFETY:` reasoning.
mod sys;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vfio_gate_host::groups::ViabilityRule;
use vfio_gate_host::usage::HostView;
use vfio_gate_policy::{EtcFiles, Policy, PolicyError};

use crate::activation::{ActivationEnv, ActivationError};
use crate::kernel::Sysfs;
use crate::options::{Mode, Options};
use crate::roots::Roots;
use crate::sandbox::landlock;
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
    Sandbox(#[from] landlock::SandboxError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// What a run of the helper came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Served until idle.
    Idle,
    /// Held the reserved devices; the report says how each went.
    Reserved(service::ReserveReport),
}

/// Runs the helper as `opts.mode` says: serve clients ([`serve_clients`]) or hold the reserved
/// devices and exit ([`hold_reserved`]).
pub fn run(opts: &Options) -> Result<Finished, StartupError> {
    match opts.mode {
        Mode::Serve => serve_clients(opts).map(|()| Finished::Idle),
        Mode::Reserve(only) => hold_reserved(opts, only).map(Finished::Reserved),
    }
}

/// Holding reserved devices, early at boot or when one appears: the serving start-up without a
/// socket — close every inherited descriptor → load and check the policy → open the state
/// directory → drop to CAP_CHOWN → enforce landlock → hold. No reconcile: leases belong to the
/// helper that serves (which may be running), and a lease's group is left to it.
pub fn hold_reserved(
    opts: &Options,
    only: Option<vfio_gate_protocol::PciAddress>,
) -> Result<service::ReserveReport, StartupError> {
    let roots = &opts.roots;
    sandbox::close_all_inherited_fds().map_err(StartupError::Fds)?;
    let policy = load_policy(&opts.policy, roots)?;
    let state = open_state_dir(roots)?;
    let grants = landlock::grants(roots);
    drop_capabilities()?;
    let sandbox = enter_landlock(&grants, &policy)?;
    let release = kernel_release();
    audit::Line::new("reserve-start")
        .field("version", env!("CARGO_PKG_VERSION"))
        .field("policy", opts.policy.display())
        .field(
            "devices",
            only.map_or_else(|| "all".to_owned(), |d| d.to_string()),
        )
        .field("reservations", policy.reservations().len())
        .field("kernel", &release)
        .field("landlock_abi", sandbox.abi)
        .field("sandbox", sandbox.status)
        .emit();
    let service = build_service(roots, policy, state, &release);
    Ok(service.apply_reservations(only))
}

/// Serving: start-up, in order; nothing from a client is read before the last step.
pub fn serve_clients(opts: &Options) -> Result<(), StartupError> {
    let roots = &opts.roots;
    let listener = take_socket(opts)?;
    close_inherited_fds(&listener)?;
    // From here on a refusal is also told to the clients already waiting on the socket.
    let refuse = |e| refuse_waiting_clients(&listener, e);
    let policy = load_policy(&opts.policy, roots).map_err(refuse)?;
    let state = open_state_dir(roots).map_err(refuse)?;
    // What the domain grants, listed while every path is still visible.
    let grants = landlock::grants(roots);
    drop_capabilities().map_err(refuse)?;
    let sandbox = enter_landlock(&grants, &policy).map_err(refuse)?;
    let release = kernel_release();
    let limits = limits(&policy);
    let service = build_service(roots, policy, state, &release);
    service.reconcile();
    announce(opts, &release, &sandbox, &limits);
    serve(listener, service, limits)
}

/// The listening socket: the activator's (`LISTEN_FDS`, `LISTEN_PID` checked) or our own
/// (`--listen PATH`).
fn take_socket(opts: &Options) -> Result<UnixListener, StartupError> {
    Ok(activation::take_listener(
        opts.listen.as_deref(),
        &ActivationEnv::from_process(),
    )?)
}

/// Nothing inherited but the socket and stdin/stdout/stderr.
fn close_inherited_fds(listener: &UnixListener) -> Result<(), StartupError> {
    sandbox::close_inherited_fds(listener).map_err(StartupError::Fds)
}

/// Answers the clients already queued on the socket with why nothing will be served (they would
/// otherwise wait until they time out), then hands the error on.
fn refuse_waiting_clients(listener: &UnixListener, e: StartupError) -> StartupError {
    server::refuse_all(listener, &e.to_string(), Duration::from_secs(1));
    e
}

/// The policy and its drop-ins, checked; user and group names resolved once, here, from the
/// account files under the etc root (no NSS inside the helper). Logged with its hash.
fn load_policy(path: &Path, roots: &Roots) -> Result<Policy, StartupError> {
    let policy = Policy::load(path, &EtcFiles::new(&roots.etc))?;
    // Ties every later decision to the exact text it was made under.
    let files: Vec<String> = policy
        .sources()
        .iter()
        .map(|s| format!("{}={}", s.path, s.sha256))
        .collect();
    audit::Line::new("policy-load")
        .field("policy", path.display())
        .field("sha256", policy.sha256())
        .field("files", files.join(" "))
        .field("rules", policy.rules().len())
        .emit();
    for finding in policy.findings() {
        audit::Line::new("policy-warning")
            .field("policy", path.display())
            .field("warning", format!("{}: {}", finding.at(), finding.message))
            .field("at", finding.at())
            .emit();
    }
    Ok(policy)
}

/// The lease records' directory, checked; fault injection (test builds) reads its trigger there.
fn open_state_dir(roots: &Roots) -> Result<StateDir, StartupError> {
    let state = StateDir::open(&roots.state)?;
    fault::arm(&roots.state);
    Ok(state)
}

/// CAP_CHOWN and nothing else, for good.
fn drop_capabilities() -> Result<(), StartupError> {
    Ok(sandbox::caps::drop_to_chown()?)
}

/// The landlock domain for `grants`, held to the policy's floor.
fn enter_landlock(
    grants: &landlock::Grants,
    policy: &Policy,
) -> Result<landlock::Report, StartupError> {
    let settings = policy.settings();
    Ok(landlock::enforce(
        grants,
        settings.sandbox_floor,
        settings.allow_unsandboxed,
    )?)
}

/// The running kernel's release, which picks the IOMMU-group viability rule.
fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn limits(policy: &Policy) -> Limits {
    Limits {
        idle_timeout: policy.settings().idle_timeout,
        ..Limits::default()
    }
}

/// The request handler over the real kernel and host, inside the sandbox.
fn build_service(roots: &Roots, policy: Policy, state: StateDir, release: &str) -> Service {
    let kernel = Arc::new(Sysfs::new(&roots.sys, &roots.vfio));
    let host = Box::new(HostView::new(&roots.sys, &roots.proc));
    let tuning = Tuning {
        viability: ViabilityRule::for_release(release),
        ..Tuning::default()
    };
    Service::new(kernel, host, policy, state, roots.clone(), tuning)
}

/// The start line, and the warnings every start of a test build or an unsandboxed helper gives.
fn announce(opts: &Options, release: &str, sandbox: &landlock::Report, limits: &Limits) {
    audit::Line::new("start")
        .field("version", env!("CARGO_PKG_VERSION"))
        .field("policy", opts.policy.display())
        .field("sysfs_root", opts.roots.sys.display())
        .field("state_dir", opts.roots.state.display())
        .field("vfio_dir", opts.roots.vfio.display())
        .field("kernel", release)
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
    if sandbox.status == landlock::Status::Unsandboxed {
        audit::Line::new("UNSANDBOXED")
            .field(
                "warning",
                "this kernel has no landlock; the policy's allow_unsandboxed = true lets vfio-gated serve without its sandbox",
            )
            .emit();
    }
}

/// Serves until idle.
fn serve(listener: UnixListener, service: Service, limits: Limits) -> Result<(), StartupError> {
    Ok(server::serve(listener, Arc::new(service), limits)?)
}
