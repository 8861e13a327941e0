//! The offline audit: the policy file, this host's sysfs and its accounts, read directly, and
//! evaluated with the helper's own code (`vfio-gate-policy` for the rules, `vfio-gate-host` for
//! the host: IOMMU groups, guards, plans), so that `explain --policy`, `policy check` and
//! `policy report` give the answers the helper would give.
//!
//! Nothing here needs privilege or writes anything: the policy files are root-owned and
//! world-readable (the helper insists on the first, the usual mode gives the second), and sysfs,
//! `/etc/passwd` and `/etc/group` are readable by everyone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, getegid, geteuid, getgroups};
use serde::Serialize;
use vfio_gate_host::explain::ExplainError;
use vfio_gate_host::groups::ViabilityRule;
use vfio_gate_host::guards::{self, HostUse};
use vfio_gate_host::plan;
use vfio_gate_host::{PciView, SysfsError, SysfsView};
use vfio_gate_policy::{DeviceFacts, EtcFiles, Policy, PolicyError, Subject, Subjects, accounts};
use vfio_gate_protocol::{Driver, ExplainReport, GuardFinding, PciAddress, RuleRef};

use crate::cli::HostArgs;
use crate::error::Error;

/// Where the offline commands read the host.
#[derive(Debug, Clone)]
pub struct Host {
    /// The sysfs tree (`/sys`).
    pub sysfs: PathBuf,
    /// The root whose `etc/passwd` and `etc/group` name users and groups (`/`).
    pub etc: PathBuf,
}

impl From<&HostArgs> for Host {
    /// `--sysfs-root` and `--etc-root`, else `/sys` and `/`.
    fn from(args: &HostArgs) -> Self {
        Self {
            sysfs: args.sysfs(),
            etc: args.etc(),
        }
    }
}

impl Host {
    pub fn view(&self) -> SysfsView {
        SysfsView::new(&self.sysfs)
    }

    /// What the guards ask about the host's own use of a device (mounts, swap, addresses),
    /// from this sysfs tree and `/proc`, as the helper reads them.
    pub fn host_use(&self) -> vfio_gate_host::usage::HostView {
        vfio_gate_host::usage::HostView::new(&self.sysfs, "/proc")
    }

    pub fn passwd(&self) -> PathBuf {
        self.etc.join("etc/passwd")
    }

    /// Loads the policy at `path` and its drop-ins as the helper does: every ownership, mode
    /// and syntax check, names resolved from this host's `etc/passwd` and `etc/group`. Give an
    /// [`absolute`] path: the files' paths are part of the policy hash, and the helper's is
    /// absolute.
    pub fn load_policy(&self, path: &Path) -> Result<Policy, PolicyError> {
        Policy::load(path, &EtcFiles::new(&self.etc))
    }

    /// Every PCI device of the host, in address order.
    pub fn devices(&self) -> Result<Vec<DeviceFacts>, Error> {
        let view = self.view();
        let fail = |source| Error::Sysfs {
            sysfs: self.sysfs.clone(),
            source,
        };
        let mut out = Vec::new();
        for dev in view.devices().map_err(fail)? {
            match view.facts(dev) {
                Ok(f) => out.push(f),
                // Unplugged since the listing: not a device of this host any more.
                Err(SysfsError::NoDevice(_)) => {}
                Err(e) => return Err(fail(e)),
            }
        }
        Ok(out)
    }

    /// Every account of `etc/passwd`, with its groups from `etc/group`.
    pub fn accounts(&self) -> Result<Vec<(String, Subject)>, Error> {
        accounts(&self.etc).map_err(|source| Error::Accounts {
            passwd: self.passwd(),
            source,
        })
    }

    /// `--user`: a name or a uid from `etc/passwd`, with the account's groups. A uid without
    /// an entry is refused, as the helper refuses it.
    pub fn user(&self, value: &str) -> Result<(String, Subject), Error> {
        let all = self.accounts()?;
        let by_uid = value.parse::<u32>().ok().filter(|_| is_digits(value));
        all.into_iter()
            .find(|(name, s)| match by_uid {
                Some(uid) => s.uid == uid,
                None => name == value,
            })
            .ok_or_else(|| Error::UnknownUser {
                value: value.to_owned(),
                passwd: self.passwd(),
            })
    }
}

/// `path` made absolute against the working directory, without resolving symlinks (the policy
/// loader refuses those itself): what the helper, started with an absolute path, would hash and
/// cite.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The caller as the kernel would present them to the helper: effective uid and gid, and the
/// supplementary groups (`SO_PEERCRED`, `SO_PEERGROUPS`).
pub fn caller() -> Subject {
    Subject {
        uid: geteuid().as_raw(),
        gid: getegid().as_raw(),
        // Unreadable (not expected): no supplementary groups, which can only match fewer rules.
        groups: getgroups()
            .map(|groups| groups.into_iter().map(Gid::as_raw).collect())
            .unwrap_or_default(),
    }
}

/// The viability rule of the running kernel, as the helper picks it.
pub fn viability() -> ViabilityRule {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    ViabilityRule::for_release(release.trim())
}

/// The helper's questions, asked of one policy and one host.
pub struct Evaluator<'a> {
    pub policy: &'a Policy,
    pub view: &'a dyn PciView,
    pub host_use: &'a dyn HostUse,
    /// The kernel's definition of a usable group ([`viability`]).
    pub rule: ViabilityRule,
    /// The sysfs tree, for messages.
    pub sysfs: &'a Path,
}

impl std::fmt::Debug for Evaluator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator")
            .field("sysfs", &self.sysfs)
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

impl Evaluator<'_> {
    /// What the helper answers to `Request::Explain` (for `subject`, about `dev`, for `driver`
    /// or every driver), computed here: the same verdicts, guards and plan, from the same code.
    /// The holder is `None`: only the helper knows its leases.
    pub fn explain(
        &self,
        subject: &Subject,
        dev: PciAddress,
        driver: Option<Driver>,
    ) -> Result<ExplainReport, Error> {
        vfio_gate_host::explain::explain(
            self.policy,
            self.view,
            self.host_use,
            self.rule,
            subject,
            dev,
            driver,
        )
        .map_err(|e| match e {
            ExplainError::Sysfs(SysfsError::NoDevice(device)) => Error::NoDevice {
                device,
                sysfs: self.sysfs.to_owned(),
            },
            ExplainError::Sysfs(source) => Error::Sysfs {
                sysfs: self.sysfs.to_owned(),
                source,
            },
            ExplainError::Guard(source) => Error::Guard {
                device: dev,
                source,
            },
        })
    }

    /// The effective permissions: [`Policy::report`] over `subjects` and `devices`, with each
    /// device's ids and the guard that refuses it now.
    pub fn report(
        &self,
        subjects: &[(String, Subject)],
        devices: &[DeviceFacts],
    ) -> Vec<PermissionRow> {
        let facts: BTreeMap<PciAddress, &DeviceFacts> =
            devices.iter().map(|d| (d.address, d)).collect();
        let uid_of: HashMap<&str, u32> =
            subjects.iter().map(|(n, s)| (n.as_str(), s.uid)).collect();
        let mut guard_of = BTreeMap::new();
        let mut out = Vec::new();
        for row in self.policy.report(subjects, devices) {
            let (Some(f), Some(&uid)) = (facts.get(&row.device), uid_of.get(row.subject.as_str()))
            else {
                continue; // the report is made of these lists: cannot happen
            };
            let (guard, guard_error) = guard_of
                .entry(row.device)
                .or_insert_with(|| self.guard_now(row.device))
                .clone();
            out.push(PermissionRow {
                user: row.subject,
                uid,
                device: row.device,
                vendor: f.vendor,
                device_id: f.device,
                class: f.class,
                driver: row.driver,
                rule: row.rule,
                guard,
                guard_error,
            });
        }
        out
    }

    /// The guard that refuses `dev` now, or why that could not be checked.
    fn guard_now(&self, dev: PciAddress) -> (Option<GuardFinding>, Option<String>) {
        let m = match plan::member_state(self.view, dev) {
            Ok(m) => m,
            Err(e) => return (None, Some(e.to_string())),
        };
        match guards::check(self.view, self.host_use, dev, m.kind) {
            Ok(None) => (None, None),
            Ok(Some(r)) => (
                Some(GuardFinding {
                    guard: r.guard,
                    reason: r.reason,
                }),
                None,
            ),
            Err(e) => (None, Some(e.to_string())),
        }
    }
}

/// One row of `policy report`: `user` may bind `device` to `driver`, as `rule` grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PermissionRow {
    /// The account's name, or `uid N` for a uid a rule names that `/etc/passwd` does not.
    pub user: String,
    pub uid: u32,
    pub device: PciAddress,
    pub vendor: u16,
    pub device_id: u16,
    pub class: u32,
    pub driver: Driver,
    /// The allow rule the helper would cite.
    pub rule: RuleRef,
    /// A built-in guard that refuses the device now, whatever the policy says; `null` when none.
    /// `guard_error` says why it could not be checked, if it could not.
    pub guard: Option<GuardFinding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard_error: Option<String>,
}

/// The subjects a report is about: every account of `etc/passwd` (its name), then every uid an
/// allow rule names that no account has (`uid N`, with no groups: a directory-only user).
pub fn report_subjects(
    policy: &Policy,
    accounts: Vec<(String, Subject)>,
) -> Vec<(String, Subject)> {
    let known: BTreeSet<u32> = accounts.iter().map(|(_, s)| s.uid).collect();
    let mut extra = BTreeSet::new();
    for rule in policy.rules() {
        if let Subjects::Listed { uids, .. } = rule.subjects() {
            extra.extend(uids.iter().copied().filter(|u| !known.contains(u)));
        }
    }
    let mut out = accounts;
    out.extend(extra.into_iter().map(|uid| {
        (
            format!("uid {uid}"),
            Subject {
                uid,
                // No group is known: u32::MAX is (gid_t)-1, which is nobody's gid.
                gid: u32::MAX,
                groups: Vec::new(),
            },
        )
    }));
    out
}
