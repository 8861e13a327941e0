//! The vfio-gate policy: who may hand which PCI device to which driver.
//!
//! Handing a device to `vfio-pci` gives a user process the device through
//! `/dev/vfio/<iommu-group>`, DMA included (confined by the IOMMU); handing it to `pci-stub` only
//! keeps host drivers off it. Either takes the device away from the host. The admin decides who
//! may do that, in one TOML file (`/etc/vfio-gate/policy.toml`), and the privileged helper
//! `vfio-gated` asks this crate about every request.
//!
//! The crate reads, and never writes: [`Policy::load`] opens the policy file and its drop-ins
//! with StrictModes-style checks (below), and [`EtcFiles`] (with [`accounts`] and
//! [`account_of`]) reads `/etc/passwd` and `/etc/group` under a root it is given. Everything
//! else is pure, text in and decision out: [`Policy::parse_files`] builds the same policy from
//! the texts alone, and deciding, explaining and linting touch no file.
//!
//! The full format, with annotated examples, is `docs/policy.md`; every example there is parsed
//! by this crate's tests.
//!
//! # The model
//!
//! A request is (subject, device, driver): a uid with its primary and supplementary gids as the
//! kernel attested them on the socket ([`Subject`]), a device's sysfs identity ([`DeviceFacts`]),
//! and a target [`Driver`](vfio_gate_protocol::Driver).
//!
//! - An **allow rule** (`[[rule]]`) names subjects, devices and drivers. It applies when the
//!   subject is one of its subjects, the device matches one of its matchers and the driver is
//!   one of its drivers.
//! - A **deny rule** (`[[deny]]`) names devices, and optionally subjects (default: everyone) and
//!   drivers (default: all).
//! - **Deny wins**: if any deny rule applies the answer is no, whatever allows exist. So a deny
//!   is a fence no allow rule, now or added later, can cross.
//! - **Default deny**: if no rule applies the answer is no ([`Decision::Deny(None)`](Decision)).
//! - **Order does not matter**: the answer depends only on the set of rules. When several rules
//!   of the deciding kind apply, the one written first (main file, then drop-ins by name; within
//!   a file, by line) is named in the [`Decision`], so the same request always cites the same
//!   rule. A rule is cited by its name, its file and the line of its `[[rule]]` / `[[deny]]`
//!   header.
//!
//! A subject belongs to a rule when its uid is among the rule's `users`/`uids`, or its primary
//! gid or any supplementary gid is among the rule's `groups`/`gids`. An allow rule may say
//! `users = ["*"]`, alone, for every user; [`Policy::lint`] warns about it, and nowhere else is
//! `"*"` accepted.
//!
//! # Device matchers
//!
//! A matcher is a set of fields that must *all* hold; a rule's `devices` lists matchers of which
//! *any* may hold. Fields: `address` (exact `0000:01:00.0`, short `01:00.0` meaning domain 0, or a
//! glob with `*`/`?` over the canonical lowercase form), `vendor`, `device`, `subsystem_vendor`,
//! `subsystem_device` (four hex digits), `class` (hex with `x` for any nibble; two or four
//! characters match as a prefix, so `"01"` is every storage controller) and `physical_slot` (the
//! name of a `/sys/bus/pci/slots/NAME` directory, [`SlotName`]). An empty matcher `{}` is
//! refused: "every device" must not be something one can write by accident.
//!
//! Addresses move when hardware is added or a BIOS setting changes; vendor and device IDs do not.
//! An allow rule that pins both says "this card, in this slot".
//!
//! # Why names are resolved at load time
//!
//! The kernel tells the helper uids and gids, not names. User and group names in the policy are
//! resolved once, when the policy is loaded, from `/etc/passwd` and `/etc/group` read directly
//! ([`EtcFiles`]), never through NSS: the helper is static and sandboxed, and a policy whose
//! meaning changed with the reachability of a directory server would be one nobody can audit. A
//! name that does not resolve matches nobody (failing closed) and is reported in
//! [`Policy::findings`]. Subjects known only to a directory service are written as `uids`/`gids`.
//!
//! # The file
//!
//! ```toml
//! version = 1                     # optional; any other value is refused
//!
//! [settings]                      # optional; only in the main file
//! idle_timeout = 30               # seconds the helper lingers with no client, 1..=86400
//! node_mode = "0600"              # /dev/vfio/N as handed over: "0600" or "0660"
//! max_groups_per_user = 4         # IOMMU groups one user may hold at once, 1..=1024
//!
//! [[rule]]
//! name     = "lab NIC for vm-users"     # required, unique across [[rule]] and [[deny]]
//! subjects = { users = ["alice"], groups = ["vm-users"], uids = [1000], gids = [1100] }
//! devices  = [{ address = "0000:01:00.*", vendor = "8086", device = "10d3", class = "0200xx" }]
//! drivers  = ["vfio-pci"]               # "vfio-pci" and/or "pci-stub"
//! companions = ["pci-stub"]             # optional: what may be done to the rest of the group
//!
//! [[deny]]
//! name    = "never the storage controllers"
//! devices = [{ class = "01" }]
//! # subjects = { users = ["bob"] }      # optional: absent means everyone
//! # drivers  = ["vfio-pci"]             # optional: absent means every driver
//! ```
//!
//! Unknown keys, wrong types, empty lists, empty matchers, malformed IDs, unknown drivers and
//! duplicate names are errors that carry the file and line ([`PolicyError`]).
//!
//! # Drop-ins
//!
//! [`Policy::load`] also reads `policy.d/*.toml` beside the main file, in byte order of their
//! names: each adds rules (never `[settings]`), rule names are unique across all files, and a
//! decision cites the rule's own file. A drop-in that fails any check refuses the whole policy.
//!
//! # Trusting the files
//!
//! Whoever can write the policy can grant themselves any device, so [`Policy::load`] refuses a
//! file that is not a regular file owned by root, or that is writable by its group or by others,
//! or that is reached through a symlink, and a directory holding policy files (the main file's,
//! and `policy.d`) that is not owned by root or is writable by its group or others — checked on
//! the open descriptors, as sshd's StrictModes does — and says which command fixes it.
//!
//! # Questions
//!
//! [`Policy::sha256`] ties every decision to the exact text loaded (the helper logs it at each
//! load). [`Policy::explain`] lists every rule that applies to a request; [`Policy::report`]
//! lists every effective permission on a host; [`Policy::lint`] finds what a reviewer should
//! look at. All three are pure and agree with [`Policy::decide`], the only authority.

#![forbid(unsafe_code)]

mod device;
mod diagnostic;
mod error;
mod explain;
mod lint;
mod load;
mod matcher;
mod model;
mod names;
mod parse;
mod policy;
mod reserve;

pub use device::{DeviceFacts, SlotName};
pub use diagnostic::{Finding, Severity};
pub use error::PolicyError;
pub use explain::{Explanation, ReportRow};
pub use load::{DROP_IN_DIR, MAX_POLICY_SIZE};
pub use matcher::{AddressPattern, ClassPattern, DeviceMatcher};
pub use model::{Decision, DriverSet, Effect, Rule, Settings, Subject, Subjects};
pub use names::{EtcFiles, NameResolver, account_of, accounts};
pub use parse::POLICY_VERSION;
pub use policy::{Policy, PolicySource};
pub use reserve::{Reservation, Reserved};

#[cfg(test)]
mod tests;
