//! What can go wrong, which exit status it gives, and what the user should do next.
//!
//! Exit statuses (scripts rely on these numbers; never renumber them):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other failure: the kernel refused, the helper failed or timed out, its answer made no sense |
//! | 2 | bad usage: unknown option, malformed address or driver (clap's own) |
//! | 3 | denied: by the policy or a built-in guard, the group needs `--group`, or another user holds it; `boot-config --write` not run as root |
//! | 4 | no such device |
//! | 5 | the helper is unreachable: socket missing, connection refused, or not permitted |
//! | 6 | busy: try again |
//! | 7 | protocol version mismatch: the frontend and the helper come from different releases |
//! | 8 | `policy check`: the policy loads, with warnings a reviewer should look at |
//! | 9 | the policy is refused (`policy check`, `policy report`, `explain --policy`, `boot-config`): the helper would serve nothing with it |
//! | 10 | `doctor`: a check failed (each failed check says its fix) |

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use vfio_gate_host::SysfsError;
use vfio_gate_host::guards::GuardError;
use vfio_gate_policy::PolicyError;
use vfio_gate_protocol::{
    BusyReason, DecodeError, DenyReason, EncodeError, FrameError, Guard, PciAddress, Plan, RuleRef,
    WireError,
};

/// The `--help` copy of the table above.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  other failure: the kernel refused, the helper failed or timed out, its answer made no sense
  2  bad usage: unknown option, malformed address or driver
  3  denied: by the policy or a built-in guard, the group needs --group, or another
     user holds it; boot-config --write not run as root
  4  no such device
  5  the helper is unreachable: socket missing, connection refused, or not permitted
  6  busy: try again
  7  protocol version mismatch: vfio-gate and vfio-gated come from different releases
  8  policy check: the policy loads, with warnings to review
  9  the policy is refused (policy check, policy report, explain --policy, boot-config):
     the helper would serve nothing with it
  10  doctor: a check failed (each failed check says its fix)";

/// The policy file the helper reads unless its admin passed `--policy`.
pub const DEFAULT_POLICY: &str = "/etc/vfio-gate/policy.toml";

/// The exit status of `vfio-gate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    Failure = 1,
    Usage = 2,
    Denied = 3,
    NotFound = 4,
    Unreachable = 5,
    Busy = 6,
    VersionMismatch = 7,
    PolicyWarnings = 8,
    PolicyRefused = 9,
    CheckFailed = 10,
}

impl Status {
    pub const ALL: [Status; 11] = [
        Status::Ok,
        Status::Failure,
        Status::Usage,
        Status::Denied,
        Status::NotFound,
        Status::Unreachable,
        Status::Busy,
        Status::VersionMismatch,
        Status::PolicyWarnings,
        Status::PolicyRefused,
        Status::CheckFailed,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Status> for ExitCode {
    fn from(s: Status) -> Self {
        ExitCode::from(s.code())
    }
}

/// A failed command. Each variant is one failed step; `Display` says what failed and the source
/// chain says why (printed once, joined by ": ").
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the vfio-gate helper at {}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("sending the request to the helper at {}", socket.display())]
    Send {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the helper at {} did not answer within {} s",
        socket.display(),
        timeout.as_secs()
    )]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("reading the helper's answer from {}", socket.display())]
    Receive {
        socket: PathBuf,
        #[source]
        source: FrameError,
    },
    #[error("{}", describe_decode(.0))]
    Decode(DecodeError),
    #[error("encoding the request")]
    Encode(#[source] EncodeError),
    #[error("the helper answered a {request} request with {got}")]
    UnexpectedResponse {
        request: &'static str,
        got: &'static str,
    },
    #[error("{}", describe_wire(.0))]
    Helper(WireError),
    /// [`WireError::NeedsGroup`], with what the frontend adds.
    #[error(
        "IOMMU group {} would not be usable with only {} moved: {}",
        .0.group,
        list_addresses(&.0.named),
        .0.reason
    )]
    NeedsGroup(Box<GroupNeeded>),
    /// [`WireError::Held`], with the holder's name and the time in words.
    #[error(
        "{} is held by {user} since {when}",
        group.map_or_else(|| "the IOMMU group".to_owned(), |g| format!("group {g}"))
    )]
    Held {
        group: Option<u32>,
        uid: u32,
        /// The user name, or the uid as text.
        user: String,
        /// The user name, if `/etc/passwd` has one.
        name: Option<String>,
        since: u64,
        /// "17:02" today, else "2024-05-03 17:02" (local time).
        when: String,
    },
    #[error("writing the output")]
    Output(#[source] io::Error),
    /// `vfio-gate run` could not set up its signal handling (the command is not run).
    #[error("setting up signal handling for the command")]
    Signals(#[source] io::Error),
    /// A policy read offline (`policy report`, `explain --policy`) does not load.
    #[error("the policy is refused")]
    Policy(#[source] PolicyError),
    /// Offline: the device is not in this host's sysfs.
    #[error("no PCI device {} in {}", device.short(), sysfs.display())]
    NoDevice { device: PciAddress, sysfs: PathBuf },
    /// Offline: this host's sysfs could not be read.
    #[error("reading the PCI devices under {}", sysfs.display())]
    Sysfs {
        sysfs: PathBuf,
        #[source]
        source: SysfsError,
    },
    /// Offline: a built-in guard could not tell whether it applies (the helper would refuse).
    #[error("checking the built-in guards for {}", device.short())]
    Guard {
        device: PciAddress,
        #[source]
        source: GuardError,
    },
    /// Offline: `etc/passwd` or `etc/group` could not be read.
    #[error("reading the accounts in {}", passwd.display())]
    Accounts {
        passwd: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `--user` names nobody in the passwd file.
    #[error("no user {value:?} in {}", passwd.display())]
    UnknownUser { value: String, passwd: PathBuf },
    /// The helper answers questions about other users to admins only.
    #[error("denied: {reason}")]
    NotAdmin { reason: String },
    /// `boot-config --write` run by someone other than root.
    #[error("boot-config --write writes into /etc/modprobe.d, which only root may do")]
    NotRoot {
        /// The same command with sudo.
        rerun: String,
    },
    /// `boot-config --write` could not write its file (the old one, if any, is left as it was).
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `boot-config`: the kernel's module alias tables could not be read.
    #[error("reading the module aliases in {}", dir.display())]
    ModuleAliases {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A bind refused because the named devices alone would leave their group unusable: the helper's
/// [`WireError::NeedsGroup`], plus the devices the user named, the plan rendered as a table and
/// the command that would carry it out.
#[derive(Debug)]
pub struct GroupNeeded {
    pub group: u32,
    pub plan: Plan,
    pub reason: String,
    pub named: Vec<PciAddress>,
    /// The plan as printed (title line and indented table).
    pub table: String,
    /// The same bind with `--group`.
    pub rerun: String,
    /// What `--group` would also move and leave, and `rerun`.
    pub next_step: String,
}

fn describe_decode(e: &DecodeError) -> String {
    match e {
        DecodeError::VersionMismatch { got, expected } => format!(
            "the helper speaks protocol version {got}, this vfio-gate speaks version {expected}"
        ),
        other => format!("the helper's answer cannot be decoded: {other}"),
    }
}

fn list_addresses(list: &[PciAddress]) -> String {
    list.iter()
        .map(|a| a.short())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_wire(e: &WireError) -> String {
    match e {
        WireError::Refused { reason, .. } => {
            format!("refused by a built-in guard that no policy can override: {reason}")
        }
        WireError::NeedsGroup { group, reason, .. } => {
            format!("IOMMU group {group} would not be usable this way: {reason}")
        }
        WireError::Held {
            group: Some(g),
            uid,
            ..
        } => format!("group {g} is held by uid {uid}"),
        WireError::Held {
            group: None, uid, ..
        } => format!("the IOMMU group is held by uid {uid}"),
        // The helper's text names the deciding rule; the typed rule is for the next step and
        // --json.
        WireError::Denied { detail, .. } | WireError::NotAdmin { detail } => {
            format!("denied: {detail}")
        }
        WireError::VersionMismatch { server, client } => format!(
            "the helper speaks protocol version {server}, this vfio-gate speaks version {client}"
        ),
        other => other.to_string(),
    }
}

/// Everything said about a failure besides its message, worked out in one place
/// ([`Error::details`]): the exit status, the `--json` kind, the next step, and the facts a
/// script may want. `messages` prints it on stderr and, under `--json`, writes it as the
/// `error` object. A field that does not apply to the error is `None`.
#[derive(Debug)]
pub struct ErrorDetails<'a> {
    pub status: Status,
    /// A stable, machine-readable name (`error.kind` under `--json`): unreachable, timeout,
    /// connection, protocol, version_mismatch, denied, refused, needs_group, held, not_found,
    /// busy, bad_request, failed, internal, unavailable, other, output, usage; from the offline
    /// commands policy (a refused policy), sysfs, guard and accounts; from boot-config modules
    /// (no module alias tables), not_root and write (for --write).
    pub kind: &'static str,
    /// What the user can do about it, as one or two sentences.
    pub next_step: Option<String>,
    /// Printed between the message and the next step: the plan of a refusal for want of
    /// `--group`.
    pub shown: Option<&'a str>,
    /// The policy rule behind a denial, if the helper named one.
    pub rule: Option<&'a RuleRef>,
    /// The typed reason of a denial or of a `busy` answer.
    pub why: Option<Why<'a>>,
    /// The device that was not found, or that a guard refused.
    pub device: Option<PciAddress>,
    /// The built-in guard that refused.
    pub guard: Option<Guard>,
    /// The IOMMU group a refusal is about.
    pub group: Option<u32>,
    /// The plan `--group` would carry out.
    pub plan: Option<&'a Plan>,
    /// The command that would carry out that plan.
    pub rerun: Option<&'a str>,
    /// Who holds the group.
    pub holder: Option<HolderDetails<'a>>,
    /// The socket, for errors about reaching the helper.
    pub socket: Option<&'a Path>,
}

/// Who holds a group: uid, name (or the uid as text), the name `/etc/passwd` gives, and since
/// when (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HolderDetails<'a> {
    pub uid: u32,
    pub user: &'a str,
    pub name: Option<&'a str>,
    pub since: u64,
}

/// The helper's typed reason for a refusal, for the `--json` error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why<'a> {
    Deny(&'a DenyReason),
    Busy(&'a BusyReason),
}

impl ErrorDetails<'_> {
    fn new(status: Status, kind: &'static str) -> Self {
        Self {
            status,
            kind,
            next_step: None,
            shown: None,
            rule: None,
            why: None,
            device: None,
            guard: None,
            group: None,
            plan: None,
            rerun: None,
            holder: None,
            socket: None,
        }
    }

    fn step(self, step: impl Into<String>) -> Self {
        Self {
            next_step: Some(step.into()),
            ..self
        }
    }
}

const HELPER_LOG: &str = "the helper's log (journalctl -u vfio-gated.service)";
const ONE_RELEASE: &str = "Install vfio-gate and vfio-gated from one release, then restart the helper \
     (systemctl restart vfio-gate.socket)";

impl Error {
    /// The exit status, kind, next step and facts of this error: one match, so that what stderr
    /// says and what `--json` says cannot drift apart.
    pub fn details(&self) -> ErrorDetails<'_> {
        use ErrorDetails as D;
        match self {
            Error::Connect { socket, source } => D {
                socket: Some(socket),
                ..D::new(Status::Unreachable, "unreachable").step(match source.kind() {
                    io::ErrorKind::ConnectionRefused => format!(
                        "The socket exists but no helper is listening on it. Try: systemctl \
                         restart vfio-gate.socket (or run vfio-gated --listen PATH as root and \
                         pass --socket PATH), and see {HELPER_LOG}"
                    ),
                    io::ErrorKind::PermissionDenied => "You may not connect to this socket. Ask \
                        the admin for access (the socket's group and mode are set by \
                        SocketGroup= and SocketMode= in vfio-gate.socket)"
                        .to_owned(),
                    _ => "Is the helper installed and its socket enabled? Try: systemctl enable \
                          --now vfio-gate.socket (or run vfio-gated --listen PATH as root and \
                          pass --socket PATH)"
                        .to_owned(),
                })
            },
            Error::Receive {
                socket,
                source: FrameError::TooLarge { .. } | FrameError::Empty,
            } => D {
                socket: Some(socket),
                ..D::new(Status::Failure, "protocol").step(format!(
                    "The helper's answer is not a vfio-gate frame. {ONE_RELEASE}; if they do \
                     match, this is a bug: please report it"
                ))
            },
            Error::Send { socket, .. } | Error::Receive { socket, .. } => D {
                socket: Some(socket),
                ..D::new(Status::Failure, "connection").step(format!(
                    "The helper closed the connection without answering; it may have crashed. \
                     See {HELPER_LOG}, then try again"
                ))
            },
            Error::Timeout { socket, .. } => D {
                socket: Some(socket),
                ..D::new(Status::Failure, "timeout").step(format!(
                    "A bind or release can wait on the kernel, for example while a VM still has \
                     /dev/vfio/<group> open. See {HELPER_LOG}; try again later, or with a longer \
                     --timeout"
                ))
            },
            Error::Decode(DecodeError::VersionMismatch { .. }) => {
                D::new(Status::VersionMismatch, "version_mismatch").step(ONE_RELEASE)
            }
            Error::Decode(_) | Error::UnexpectedResponse { .. } => {
                D::new(Status::Failure, "protocol").step(format!(
                    "vfio-gate and vfio-gated may come from different releases. {ONE_RELEASE}; \
                     if they do match, this is a bug: please report it"
                ))
            }
            Error::Encode(_) | Error::Signals(_) => D::new(Status::Failure, "internal")
                .step("This is a bug in vfio-gate: please report it"),
            Error::Output(_) => D::new(Status::Failure, "output"),
            Error::NeedsGroup(n) => D {
                shown: Some(&n.table),
                group: Some(n.group),
                plan: Some(&n.plan),
                rerun: Some(&n.rerun),
                ..D::new(Status::Denied, "needs_group").step(n.next_step.as_str())
            },
            Error::Held {
                group,
                uid,
                user,
                name,
                since,
                ..
            } => D {
                group: *group,
                holder: Some(HolderDetails {
                    uid: *uid,
                    user,
                    name: name.as_deref(),
                    since: *since,
                }),
                ..D::new(Status::Denied, "held").step(format!(
                    "A group belongs to one user at a time: ask {user} to release it when they \
                     are done (vfio-gate list shows who holds each device)"
                ))
            },
            Error::Policy(e) => D::new(Status::PolicyRefused, "policy").step(format!(
                "Fix {} (vfio-gate policy check lists every problem); the helper serves nothing \
                 while its policy is refused",
                e.file()
            )),
            Error::NoDevice { device, .. } => D {
                device: Some(*device),
                ..D::new(Status::NotFound, "not_found")
                    .step("lspci -D lists this host's PCI devices with their addresses")
            },
            Error::Sysfs { sysfs, .. } => D::new(Status::Failure, "sysfs").step(format!(
                "Check that {} is a sysfs mount (ls {}/bus/pci/devices); vfio-gate policy check \
                 --no-host lints a policy without this host's devices",
                sysfs.display(),
                sysfs.display()
            )),
            Error::Guard { .. } => D::new(Status::Failure, "guard").step(
                "The helper refuses a device whose guards it cannot check; see the cause above \
                 (reading /proc/self/mountinfo, /proc/swaps or sysfs)",
            ),
            Error::Accounts { .. } => D::new(Status::Failure, "accounts")
                .step("Check that the file exists and is readable"),
            Error::UnknownUser { .. } => D::new(Status::Usage, "usage")
                .step("Give a uid instead, or check the spelling (getent passwd NAME)"),
            Error::NotAdmin { .. } => D::new(Status::Denied, "denied").step(format!(
                "Leave out --user to ask about yourself, or ask an admin (root, or [settings] \
                 admins in the policy). Whoever can read the policy can also ask offline: \
                 vfio-gate explain ADDR --user NAME --policy {DEFAULT_POLICY}"
            )),
            Error::NotRoot { rerun } => {
                D::new(Status::Denied, "not_root").step(format!("Run it as root: {rerun}"))
            }
            Error::Write { path, .. } => {
                let dir = path.parent().unwrap_or(Path::new("/")).display();
                D::new(Status::Failure, "write").step(format!(
                    "Check that {dir} exists and that root may write it (ls -ld {dir}); the \
                     previous file, if any, was left as it was"
                ))
            }
            Error::ModuleAliases { .. } => D::new(Status::Failure, "modules").step(
                "Pass --modules-dir with the module directory of the kernel this host boots \
                 (ls /lib/modules), whose modules.alias depmod writes",
            ),
            Error::Helper(WireError::Denied { why, rule, .. }) => D {
                rule: rule.as_ref(),
                why: Some(Why::Deny(why)),
                ..D::new(Status::Denied, "denied").step(deny_next_step(why, rule.as_ref()))
            },
            Error::Helper(WireError::NotAdmin { .. }) => D::new(Status::Denied, "denied").step(
                "Only an admin (root, or [settings] admins in the policy) may act for another \
                 user: ask one",
            ),
            Error::Helper(WireError::Refused { device, guard, .. }) => D {
                device: Some(*device),
                guard: Some(*guard),
                ..D::new(Status::Denied, "refused").step(guard_advice(*guard, *device))
            },
            Error::Helper(WireError::NeedsGroup { group, plan, .. }) => D {
                group: Some(*group),
                plan: Some(plan),
                ..D::new(Status::Denied, "needs_group").step(
                    "Re-run with --group to move the group's other members too, as the policy \
                     allows; add --dry-run to see the plan first",
                )
            },
            Error::Helper(WireError::Held { group, .. }) => D {
                group: *group,
                ..D::new(Status::Denied, "held").step(
                    "A group belongs to one user at a time: ask its holder to release it when \
                     they are done (vfio-gate list shows who holds each device)",
                )
            },
            Error::Helper(WireError::NotFound { device }) => D {
                device: Some(*device),
                ..D::new(Status::NotFound, "not_found")
                    .step("Run `vfio-gate list` to see the devices and their addresses")
            },
            Error::Helper(WireError::Busy { why, .. }) => D {
                why: Some(Why::Busy(why)),
                ..D::new(Status::Busy, "busy").step(busy_next_step(why))
            },
            Error::Helper(WireError::BadRequest { .. }) => D::new(Status::Failure, "bad_request")
                .step(format!(
                    "The helper did not understand this vfio-gate. {ONE_RELEASE}; if they do \
                     match, this is a bug: please report it"
                )),
            Error::Helper(WireError::VersionMismatch { .. }) => {
                D::new(Status::VersionMismatch, "version_mismatch").step(ONE_RELEASE)
            }
            Error::Helper(WireError::Failed { .. }) => D::new(Status::Failure, "failed").step(
                "The helper put the device back as it was. The kernel log says why (dmesg, or \
                 journalctl -k); check that the driver's module is loaded (lsmod | grep -e \
                 vfio_pci -e pci_stub)",
            ),
            Error::Helper(WireError::Internal { .. }) => D::new(Status::Failure, "internal")
                .step(format!("See {HELPER_LOG}, and please report the bug")),
            Error::Helper(WireError::Unavailable { .. }) => {
                D::new(Status::Unreachable, "unavailable").step(
                    "Ask an admin to fix it (vfio-gate policy check shows what is wrong with the \
                     policy); the next request starts the helper again",
                )
            }
            // A kind of refusal newer than this vfio-gate.
            Error::Helper(_) => D::new(Status::Failure, "other").step(format!(
                "See {HELPER_LOG}; this vfio-gate may be older than the helper ({ONE_RELEASE})"
            )),
        }
    }

    /// True when stdout went away (`vfio-gate list | head`): not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }

    /// The message and its causes, once, joined by ": ". A cause whose text its parent already
    /// ends with (an error that both prints and exposes its source, like
    /// `FrameError::Io`) is not repeated.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.ends_with(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        text
    }
}

/// What an admin (or the user) can do about a built-in guard's refusal of `device`.
fn guard_advice(guard: Guard, device: PciAddress) -> String {
    let addr = device.short();
    match guard {
        Guard::NoIommuGroup => "The IOMMU is off, so the kernel cannot isolate the device. An \
            admin can turn it on. Intel: enable VT-d in the firmware settings and add \
            intel_iommu=on to the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, \
            then update-grub). AMD: enable AMD-Vi (IOMMU) in the firmware settings; no kernel \
            parameter is needed (amd_iommu=on is not a valid option; iommu=pt is optional). \
            Then reboot; ls /sys/kernel/iommu_groups then lists the groups, and vfio-gate doctor \
            checks the rest"
            .to_owned(),
        Guard::BootVga => format!(
            "{addr} is the boot display: the host console and the firmware framebuffer use it, \
             so it is never handed out. Use another GPU for the VM; an admin can make another \
             GPU the primary display in the firmware settings"
        ),
        Guard::HostInUse => format!(
            "The host is using {addr}. An admin must stop that first: unmount its filesystems \
             (umount), turn off its swap (swapoff), or take its network interface down \
             (ip link set DEV down); then try again"
        ),
        Guard::NotEndpoint => format!(
            "{addr} is a bridge, and bridges are never handed out. Bind the endpoint behind it \
             instead (vfio-gate list shows the devices and their groups)"
        ),
        Guard::SriovEnabled => format!(
            "{addr} has SR-IOV virtual functions enabled. Bind one of its virtual functions \
             instead, or an admin can disable them first: echo 0 > \
             /sys/bus/pci/devices/{device}/sriov_numvfs"
        ),
    }
}

/// What to do about a denial, from its typed reason.
fn deny_next_step(why: &DenyReason, rule: Option<&RuleRef>) -> String {
    match (why, rule) {
        (DenyReason::Policy, Some(rule)) => format!(
            "If you need this, ask the admin; the deciding rule is '{}' at {}:{}",
            rule.name, rule.file, rule.line
        ),
        (DenyReason::GroupPlan { device }, Some(rule)) => format!(
            "{} is in the way, and rule '{}' at {}:{} keeps it there; ask the admin if you need \
             the group (vfio-gate explain ADDR shows the whole plan)",
            device.short(),
            rule.name,
            rule.file,
            rule.line
        ),
        (DenyReason::Policy, None) => format!(
            "If you need this, ask the admin to add a [[rule]] granting it to you in \
             {DEFAULT_POLICY}"
        ),
        (DenyReason::GroupLimit { max, .. }, _) => format!(
            "The policy lets each user hold {max} IOMMU group(s) at a time: release one first \
             (vfio-gate list shows what you hold; vfio-gate release ADDR)"
        ),
        (DenyReason::GroupPlan { device }, None) => format!(
            "{} stands in the way of the group; vfio-gate explain ADDR shows the whole plan, and \
             the admin can change the policy or the device's driver",
            device.short()
        ),
        (DenyReason::NotHeld { .. }, _) => {
            "vfio-gate list shows who holds each device; there is nothing to give back".to_owned()
        }
        (_, _) => "If you need this, ask the admin".to_owned(),
    }
}

/// What to do about a `Busy` answer depends on why: only some of them pass by themselves.
fn busy_next_step(why: &BusyReason) -> String {
    match why {
        BusyReason::ConnectionLimit { .. } => "Try again in a moment".to_owned(),
        BusyReason::GroupInUse { .. } | BusyReason::BlockedInKernel { .. } => {
            "Stop the VM (or whatever process holds the group open), then run the same command \
             again"
                .to_owned()
        }
        BusyReason::YouHoldIt { devices, .. } => format!(
            "Release what you hold first (vfio-gate release {}, or vfio-gate release --all)",
            devices
                .first()
                .map_or_else(|| "ADDR".to_owned(), |d| d.short())
        ),
        BusyReason::HeldOutsideVfioGate { .. } => "Something outside vfio-gate uses the device \
             (a VM started without vfio-gate); whoever set it up must let go of it first, or ask \
             an admin"
            .to_owned(),
        _ => "Try again later".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(kind: io::ErrorKind) -> Error {
        Error::Connect {
            socket: "/run/vfio-gate.sock".into(),
            source: io::Error::from(kind),
        }
    }

    #[test]
    fn help_lists_every_status_with_its_number() {
        for s in Status::ALL {
            assert!(
                EXIT_STATUS_HELP.contains(&format!("\n  {}  ", s.code())),
                "{s:?} missing from the exit status help"
            );
        }
        let distinct: std::collections::BTreeSet<u8> = Status::ALL.map(Status::code).into();
        assert_eq!(distinct.len(), Status::ALL.len());
    }

    #[test]
    fn every_way_of_not_reaching_the_helper_is_status_5_with_its_own_advice() {
        let missing = connect(io::ErrorKind::NotFound);
        let refused = connect(io::ErrorKind::ConnectionRefused);
        let denied = connect(io::ErrorKind::PermissionDenied);
        for e in [&missing, &refused, &denied] {
            let d = e.details();
            assert_eq!((d.status, d.kind), (Status::Unreachable, "unreachable"));
            assert_eq!(d.socket, Some(Path::new("/run/vfio-gate.sock")));
            assert!(
                e.chain()
                    .starts_with("cannot reach the vfio-gate helper at /run/vfio-gate.sock: ")
            );
        }
        assert!(
            missing
                .details()
                .next_step
                .unwrap()
                .contains("systemctl enable --now vfio-gate.socket")
        );
        assert!(
            refused
                .details()
                .next_step
                .unwrap()
                .contains("no helper is listening")
        );
        assert!(
            denied
                .details()
                .next_step
                .unwrap()
                .contains("Ask the admin for access")
        );
    }

    #[test]
    fn wire_errors_map_to_their_statuses() {
        let addr: PciAddress = "01:00.0".parse().unwrap();
        let rule = RuleRef {
            name: "lab".into(),
            file: "/etc/vfio-gate/policy.toml".into(),
            line: 12,
        };
        for (wire, status, kind, step) in [
            (
                WireError::Denied {
                    why: DenyReason::Policy,
                    rule: Some(rule.clone()),
                    detail: "r".into(),
                },
                Status::Denied,
                "denied",
                "'lab' at /etc/vfio-gate/policy.toml:12",
            ),
            (
                WireError::Denied {
                    why: DenyReason::Policy,
                    rule: None,
                    detail: "r".into(),
                },
                Status::Denied,
                "denied",
                "[[rule]]",
            ),
            (
                WireError::NotFound { device: addr },
                Status::NotFound,
                "not_found",
                "vfio-gate list",
            ),
            (
                WireError::Busy {
                    why: BusyReason::ConnectionLimit { limit: 1 },
                    detail: "r".into(),
                },
                Status::Busy,
                "busy",
                "Try again",
            ),
            (
                WireError::BadRequest { reason: "r".into() },
                Status::Failure,
                "bad_request",
                "one release",
            ),
            (
                WireError::VersionMismatch {
                    server: 2,
                    client: 1,
                },
                Status::VersionMismatch,
                "version_mismatch",
                "one release",
            ),
            (
                WireError::Failed { reason: "r".into() },
                Status::Failure,
                "failed",
                "dmesg",
            ),
            (
                WireError::Internal { reason: "r".into() },
                Status::Failure,
                "internal",
                "report",
            ),
        ] {
            let e = Error::Helper(wire);
            let d = e.details();
            assert_eq!(d.status, status, "{e:?}");
            assert_eq!(d.kind, kind, "{e:?}");
            let next = d.next_step.unwrap();
            assert!(next.contains(step), "{e:?}: {next}");
        }
    }

    #[test]
    fn every_guard_is_denied_with_its_own_advice() {
        let addr: PciAddress = "03:00.0".parse().unwrap();
        for (guard, advice) in [
            (
                Guard::NoIommuGroup,
                "AMD: enable AMD-Vi (IOMMU) in the firmware",
            ),
            (Guard::BootVga, "Use another GPU"),
            (Guard::HostInUse, "ip link set DEV down"),
            (Guard::NotEndpoint, "Bind the endpoint behind it"),
            (
                Guard::SriovEnabled,
                "echo 0 > /sys/bus/pci/devices/0000:03:00.0/sriov_numvfs",
            ),
        ] {
            let e = Error::Helper(WireError::Refused {
                device: addr,
                guard,
                reason: "r".into(),
            });
            let d = e.details();
            assert_eq!((d.status, d.kind), (Status::Denied, "refused"));
            assert_eq!(d.guard, Some(guard));
            assert_eq!(d.device, Some(addr));
            assert_eq!(
                e.chain(),
                "refused by a built-in guard that no policy can override: r"
            );
            let step = d.next_step.unwrap();
            assert!(step.contains(advice), "{guard:?}: {step}");
        }
    }

    #[test]
    fn the_iommu_advice_is_right_for_each_vendor() {
        let step = guard_advice(Guard::NoIommuGroup, "03:00.0".parse().unwrap());
        assert!(step.contains("Intel: enable VT-d"), "{step}");
        assert!(step.contains("add intel_iommu=on"), "{step}");
        // AMD-Vi is on by default: amd_iommu=on only earns "AMD-Vi: Unknown option - 'on'".
        assert!(step.contains("AMD: enable AMD-Vi (IOMMU)"), "{step}");
        assert!(
            step.contains("amd_iommu=on is not a valid option"),
            "{step}"
        );
        assert_eq!(step.matches("amd_iommu=on").count(), 1, "{step}");
    }

    #[test]
    fn a_held_group_names_the_holder_and_the_time() {
        let e = Error::Held {
            group: Some(11),
            uid: 1000,
            user: "alice".into(),
            name: Some("alice".into()),
            since: 1_700_000_000,
            when: "17:02".into(),
        };
        assert_eq!(e.chain(), "group 11 is held by alice since 17:02");
        let d = e.details();
        assert_eq!(
            (d.status, d.kind, d.group),
            (Status::Denied, "held", Some(11))
        );
        let holder = HolderDetails {
            uid: 1000,
            user: "alice",
            name: Some("alice"),
            since: 1_700_000_000,
        };
        assert_eq!(d.holder, Some(holder));
        assert!(d.next_step.unwrap().contains("ask alice to release it"));
        // Not explained (no names at hand): still denied, still says who.
        let raw = Error::Helper(WireError::Held {
            group: Some(11),
            uid: 1000,
            since: 0,
        });
        assert_eq!(raw.chain(), "group 11 is held by uid 1000");
        let d = raw.details();
        assert_eq!((d.status, d.kind, d.holder), (Status::Denied, "held", None));
    }

    #[test]
    fn a_version_mismatch_seen_by_the_client_is_status_7() {
        let e = Error::Decode(DecodeError::VersionMismatch {
            got: 2,
            expected: 1,
        });
        assert_eq!(e.details().status, Status::VersionMismatch);
        assert_eq!(
            e.chain(),
            "the helper speaks protocol version 2, this vfio-gate speaks version 1"
        );
    }

    #[test]
    fn the_chain_includes_each_cause_once() {
        let e = Error::Receive {
            socket: "/s".into(),
            source: FrameError::Io(io::Error::new(io::ErrorKind::ConnectionReset, "reset")),
        };
        assert_eq!(
            e.chain(),
            "reading the helper's answer from /s: reading a frame: reset"
        );
    }

    #[test]
    fn busy_hints_follow_the_typed_reason() {
        let dev: PciAddress = "05:02.0".parse().unwrap();
        for (why, hint) in [
            (BusyReason::GroupInUse { group: 11 }, "Stop the VM"),
            (BusyReason::BlockedInKernel { device: dev }, "Stop the VM"),
            (
                BusyReason::YouHoldIt {
                    group: 11,
                    devices: vec![dev],
                },
                "vfio-gate release 05:02.0",
            ),
            (BusyReason::ConnectionLimit { limit: 256 }, "Try again"),
            (
                BusyReason::HeldOutsideVfioGate { device: dev },
                "outside vfio-gate",
            ),
        ] {
            assert!(busy_next_step(&why).contains(hint), "{why:?}");
        }
    }
}
