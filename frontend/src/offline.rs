//! The offline audit: the policy file, this host's sysfs and its accounts, read directly, and
//! evaluated with the helper's own code (`vfio-gate-policy` for the rules, `vfio-gate-host` for
//! the host: IOMMU groups, guards, plans, reservations), so that `explain --policy`, `policy
//! check`, `policy report` and `boot-config` give the answers the helper would give.
//!
//! Nothing here needs privilege or writes anything: the policy files are root-owned and
//! world-readable (the helper insists on the first, the usual mode gives the second), and sysfs,
//! `/etc/passwd` and `/etc/group` are readable by everyone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, getegid, geteuid, getgroups};
use vfio_gate_host::explain::ExplainError;
use vfio_gate_host::groups::ViabilityRule;
use vfio_gate_host::guards::{self, HostUse};
use vfio_gate_host::plan;
use vfio_gate_host::reserve::{self, Held};
use vfio_gate_host::{PciView, SysfsError, SysfsView};
use vfio_gate_policy::{
    DeviceFacts, EtcFiles, Finding, Policy, PolicyError, Reserved, Severity, Subject, Subjects,
    accounts,
};
use vfio_gate_protocol::{Driver, ExplainReport, GuardFinding, PciAddress, Reservation, RuleRef};

use crate::cli::HostArgs;
use crate::error::Error;
use crate::render::guard_label;

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

/// The release of the running kernel (`uname -r`), if `/proc` says.
pub fn kernel_release() -> Option<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    Some(release.trim().to_owned()).filter(|r| !r.is_empty())
}

/// The viability rule of the running kernel, as the helper picks it.
pub fn viability() -> ViabilityRule {
    ViabilityRule::for_release(&kernel_release().unwrap_or_default())
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

    /// Every device of this host the policy holds from boot, or means to (conflicts included),
    /// in address order: [`reserve::holds`], with this host's sysfs named in its error.
    pub fn holds(&self) -> Result<Vec<(PciAddress, Held)>, Error> {
        reserve::holds(self.view, self.policy).map_err(|source| self.sysfs_error(source))
    }

    fn sysfs_error(&self, source: SysfsError) -> Error {
        Error::Sysfs {
            sysfs: self.sysfs.to_owned(),
            source,
        }
    }

    /// Why `vfio-gated --reserve` would refuse to hold `dev` on `driver`, as it decides: a
    /// built-in guard protects the device, or cannot tell whether it does. `None` when the
    /// helper would hold it, and for a device already on `driver` (which the helper leaves as
    /// it is, guards unasked).
    pub fn hold_refusal(&self, dev: PciAddress, driver: Driver) -> Option<HoldRefusal> {
        match self.view.driver(dev) {
            Ok(Some(d)) if d.is(driver) => return None,
            Ok(_) => {}
            Err(e) => return Some(HoldRefusal::CannotTell(e.to_string())),
        }
        match self.guard_now(dev) {
            (Some(g), _) => Some(HoldRefusal::Guard(g)),
            (None, Some(why)) => Some(HoldRefusal::CannotTell(why)),
            (None, None) => None,
        }
    }

    /// What `policy check` adds to the lint from this host's IOMMU groups and guards, for the
    /// reservations (the lint itself sees only each device's own facts):
    ///
    /// - the endpoints each reservation holds as companions of the devices it names — info;
    /// - companion holds that disagree on the driver, so none applies — a warning (conflicts
    ///   between reservations that name a device are the lint's);
    /// - held devices a built-in guard protects, which the helper refuses to hold — a warning.
    ///
    /// Each is at its reservation's file and line; not sorted (see [`Policy::sort_findings`]).
    pub fn reservation_findings(&self) -> Result<Vec<Finding>, Error> {
        let mut out = Vec::new();
        let holds = self.holds()?;
        let at = |rule: &RuleRef, severity, message: String| Finding {
            severity,
            file: rule.file.clone(),
            line: rule.line,
            rule: Some(rule.name.clone()),
            message,
        };
        let facts = |dev: PciAddress| match self.view.facts(dev) {
            Ok(f) => format!("{dev} [{:04x}:{:04x}]", f.vendor, f.device),
            Err(_) => dev.to_string(),
        };
        // Companion holds, one finding per reservation (in the order of its first device).
        let mut companions: Vec<(&Reservation, Vec<String>)> = Vec::new();
        for (dev, held) in &holds {
            let Held::Yes(r) = held else { continue };
            let Some(primary) = r.companion_of else {
                continue;
            };
            let what = format!("{} as a companion of {primary}", facts(*dev));
            match companions.iter_mut().find(|(c, _)| c.rule == r.rule) {
                Some((_, list)) => list.push(what),
                None => companions.push((r, vec![what])),
            }
        }
        for (r, list) in companions {
            out.push(at(
                &r.rule,
                Severity::Info,
                format!(
                    "reservation {:?} holds the other endpoints of its devices' IOMMU groups on \
                     {} from boot: {}",
                    r.rule.name,
                    r.driver,
                    list.join(", ")
                ),
            ));
        }
        for (dev, held) in &holds {
            match held {
                Held::No => {}
                Held::Conflict(_) => {
                    // Named by reservations that disagree: the lint says so.
                    let named = self.view.facts(*dev).map(|f| self.policy.reserved(&f));
                    if matches!(named, Ok(Reserved::Conflict(_))) {
                        continue;
                    }
                    if let Some(f) = self.companion_conflict(*dev, &facts(*dev))? {
                        out.push(f);
                    }
                }
                Held::Yes(r) => {
                    if let Some(refusal) = self.hold_refusal(*dev, r.driver) {
                        let what = match r.companion_of {
                            None => format!("matches {}", facts(*dev)),
                            Some(p) => format!("holds {} as a companion of {p}", facts(*dev)),
                        };
                        let why = match refusal {
                            HoldRefusal::Guard(g) => format!(
                                "which a built-in guard protects ({}: {})",
                                guard_label(g.guard),
                                g.reason
                            ),
                            HoldRefusal::CannotTell(e) => format!(
                                "and whether a built-in guard protects it cannot be told ({e})"
                            ),
                        };
                        out.push(at(
                            &r.rule,
                            Severity::Warning,
                            format!(
                                "reservation {:?} {what}, {why}: vfio-gated will refuse to \
                                 reserve it; take it out of the reservation's matchers{}",
                                r.rule.name,
                                if r.companion_of.is_some() {
                                    " (or its companions)"
                                } else {
                                    ""
                                }
                            ),
                        ));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The finding for `dev`, held as a companion by reservations that disagree on the driver:
    /// at the first of them in load order.
    fn companion_conflict(&self, dev: PciAddress, shown: &str) -> Result<Option<Finding>, Error> {
        let holds = reserve::companion_holds(self.view, self.policy, dev)
            .map_err(|source| self.sysfs_error(source))?;
        let order = |r: &RuleRef| {
            self.policy
                .reservations()
                .iter()
                .position(|x| x.origin() == r)
                .unwrap_or(usize::MAX)
        };
        let Some(first) = holds.iter().min_by_key(|h| order(&h.rule)) else {
            return Ok(None);
        };
        let by: Vec<String> = holds
            .iter()
            .map(|h| {
                let of = h.companion_of.map(|p| p.to_string()).unwrap_or_default();
                format!("{} (on {}, as a companion of {of})", h.rule, h.driver)
            })
            .collect();
        Ok(Some(Finding {
            severity: Severity::Warning,
            file: first.rule.file.clone(),
            line: first.rule.line,
            rule: Some(first.rule.name.clone()),
            message: format!(
                "{shown} is held as a companion by {} with different drivers, so it is held by \
                 neither: give these reservations the same companions driver, or name the \
                 device in a reservation of its own (which wins over companion holds)",
                by.join(" and ")
            ),
        }))
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

/// Why the helper would refuse to hold a reserved device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldRefusal {
    /// A built-in guard protects it.
    Guard(GuardFinding),
    /// Whether one does could not be told (the helper refuses then too).
    CannotTell(String),
}

/// One row of `policy report`: `user` may bind `device` to `driver`, as `rule` grants.
#[derive(Debug, Clone, PartialEq, Eq)]
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
