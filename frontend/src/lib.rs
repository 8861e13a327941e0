//! `vfio-gate`: the unprivileged command line of vfio-gate.
//!
//! A user who wants a PCI device for their own VM cannot write sysfs: handing a device to
//! `vfio-pci` (which exposes it through `/dev/vfio/<iommu-group>`) or to `pci-stub` (which only keeps
//! host drivers off it) takes root. vfio-gate splits the job in two:
//!
//! - the privileged helper `vfio-gated` listens on a Unix socket (`/run/vfio-gate.sock` by
//!   default), learns who is asking from the kernel (`SO_PEERCRED`), checks an admin-written policy
//!   and is the only process that writes `/sys`;
//! - this crate, the frontend, holds no privilege at all. It turns a command line into one typed
//!   [`Request`](vfio_gate_protocol::Request), sends it as one frame, reads one
//!   [`Response`](vfio_gate_protocol::Response), and renders it for a person (tables, sentences
//!   that name the next step) or for a script (`--json`, documents of their own versioned by a
//!   `schema` field, and distinct exit codes). `vfio-gate run`
//!   keeps the connection open while its command runs (the helper ties the lease to it), then
//!   sends a release on it.
//!
//! Invariants worth keeping:
//! - The frontend never writes sysfs and never asks for privilege. It writes one file:
//!   `boot-config --write`'s `/etc/modprobe.d/vfio-gate.conf`, refused unless an admin runs it
//!   as root (`cmd/boot_config/write.rs`, the admin-writers list `cargo xtask tidy` checks). The
//!   one program it starts is the command of `vfio-gate run`, as the calling user, with the
//!   caller's environment. The commands that ask the helper read only the PCI ID database (for
//!   names) and `/etc/passwd` with `/etc/group` (for user names, and for the uid of `--user
//!   NAME`, with the policy crate's reader, the helper's), and none is required: when they are
//!   missing, ids and uids are shown instead. After a bind it `stat`s the `/dev/vfio/N` the
//!   helper reports, to say truthfully whose it is.
//! - `list` reads `/sys` (and the policy, for the reservations) itself when the helper cannot be
//!   reached, with the helper's reader, and says so.
//! - The offline audit commands (`explain --policy`, `policy check`, `policy report`,
//!   `boot-config`) read the policy files, `/sys`, `/proc` (for the in-use guard), `/etc/passwd`
//!   and `/etc/group` (and `boot-config` the kernel's `modules.alias`), and evaluate them with
//!   the helper's own crates (`vfio-gate-policy`, `vfio-gate-host`), so their answers are the
//!   helper's. They load the policy with the helper's checks (root-owned, not group/world-
//!   writable, no symlinks), so a policy they accept is one the helper accepts.
//! - `doctor` reads, as the caller, what a VM with a device depends on: sysfs and procfs (the
//!   IOMMU, interrupt remapping, modules, LSMs, the kernel's command line), `/dev/vfio/vfio`,
//!   `modules-load.d` and the socket unit's files, the policy, the caller's memlock limit, and
//!   asks the running kernel for its landlock ABI (a query that creates nothing) and the helper
//!   for a list. It writes nothing.
//! - Identity is not part of any request; the helper takes it from the kernel.
//! - Every failure maps to one [`Status`](error::Status) (the exit code) and, where there is one,
//!   a next step the user can take, both from [`Error::details`](error::Error::details), which
//!   feeds stderr and the `--json` error alike. The table lives in [`error`] and in `--help`.
//! - The next step comes from the helper's typed reasons, never from its wording.
//! - Only `sys.rs` holds `unsafe` code; the crate denies it everywhere else.
//!
//! # Map
//!
//! | module | concern |
//! |---|---|
//! | `main.rs` | parse, run one subcommand, map the outcome to an exit status |
//! | [`cli`] | the clap argument structs; their doc comments are the help text |
//! | [`cmd`] | a module per subcommand (`list`, `bind`, `release`, `run`, `explain`, `policy_check`, `policy_report`, `boot_config`, `doctor`): its request, its text and its JSON view; the [`Context`](cmd::Context) they share |
//! | [`render`] | what their output shares: tables, the group plan, words for groups, guards, ids and policy files, the JSON writer |
//! | [`json`] | the `--json` API: the `schema` version, the views the commands' documents share (devices, rules, plans, holders, the policy) and the error object |
//! | [`error`] | what can fail; per failure one [`ErrorDetails`](error::ErrorDetails): exit status, kind, next step and facts |
//! | [`messages`] | how errors, warnings and notes reach stderr, and the error document on stdout under `--json` |
//! | [`client`] | requests and responses over the socket, retries at the helper's connection limit |
//! | [`offline`] | the audit commands' own evaluation of a policy on this host, with the helper's crates |
//! | [`supervise`] | the command of `vfio-gate run`: signals, waiting, watching the connection |
//! | `sys` | the only `unsafe` code: signal handlers, what `run`'s command starts with, `localtime_r` |
//! | [`pci_ids`] | vendor, device and class names from the PCI ID database |
//! | [`users`] | user names and uids, with the policy crate's reader of `/etc/passwd` |
//! | [`localtime`] | "since 17:02" |
//! | [`memlock`] | RLIMIT_MEMLOCK against a guest's RAM: sizes, QEMU's `-m`, the exact fix (`doctor`, `run`) |

#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod cmd;
pub mod error;
pub mod json;
pub mod localtime;
pub mod memlock;
pub mod messages;
pub mod offline;
pub mod pci_ids;
pub mod render;
pub mod supervise;
mod sys;
pub mod users;
