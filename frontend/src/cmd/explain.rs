//! `vfio-gate explain`: how a bind would be decided and why — per driver the verdict with its
//! deciding rule and the other rules that match, the guards that refuse the device now, the
//! group plan or why none works, the holder, the policy hash. The helper answers; with
//! `--policy` the same answer is computed here (`crate::offline`), with the helper's code.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use vfio_gate_host::plan::moves_companions;
use vfio_gate_policy::PolicySource;
use vfio_gate_protocol::{
    Driver, DriverVerdict, ExplainReport, Holder, Plan, Request, Reservation, Response, RuleRef,
    WireError,
};

use serde::Serialize;

use super::{Context, name_the_holder, unexpected};
use crate::cli::{ExplainArgs, UserArg};
use crate::error::{Error, Status};
use crate::json::{
    self, GuardJson, HolderJson, MemberJson, PlanJson, PolicyJson, Reserved, Rule, User,
};
use crate::localtime;
use crate::offline::{self, Evaluator, Host};
use crate::pci_ids::{PciNames, Wanted};
use crate::render::{files_text, group_name, guard_label, ids, plan_block};
use crate::users::{self, ETC_ROOT, UserNames};

/// `vfio-gate explain ADDR [--to DRIVER] [--user NAME|UID] [--policy PATH]`: the helper's answer,
/// or with `--policy` the same answer computed here. Status 0 whenever an answer was produced.
pub fn run(ctx: &Context<'_>, args: &ExplainArgs, out: &mut impl Write) -> Result<Status, Error> {
    let (report, source, etc_root) = match &args.policy {
        None => (ask_helper(ctx, args)?, Source::Helper, ETC_ROOT.into()),
        Some(path) => {
            let (report, source) = compute(args, path)?;
            // Users are named from the accounts the policy's names were resolved with.
            (report, source, args.host.etc())
        }
    };
    let users = UserNames::load(&etc_root, &explain_uids(&report));
    ctx.print(out, &ExplainJson::new(&report, &source, &users), || {
        let names = ctx.pci_names(&explain_names(&report));
        explain_text(&report, &names, &users, &source)
    })?;
    Ok(Status::Ok)
}

/// `explain --json`.
#[derive(Debug, Serialize)]
pub struct ExplainJson {
    /// `helper`, or `offline` (`--policy`: computed here, from that policy and this host).
    pub source: &'static str,
    pub device: ExplainDeviceJson,
    /// Whom the answer is for.
    pub subject: User,
    /// Per driver, the policy's decision.
    pub verdicts: Vec<VerdictJson>,
    /// The built-in guards that refuse the device now, whatever the policy says.
    pub guards: Vec<GuardJson>,
    /// What a bind to vfio-pci would do to the group.
    pub plan: ExplainPlanJson,
    /// Who holds the device's group; offline always `null` (only the helper knows).
    pub holder: Option<HolderJson>,
    pub reserved: Option<Reserved>,
    /// The policy the answer comes from (the helper names no file: `path` null, `files` empty).
    pub policy: PolicyJson,
}

#[derive(Debug, Serialize)]
pub struct ExplainDeviceJson {
    pub address: String,
    pub short: String,
    pub vendor: String,
    pub device: String,
    pub class: String,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
}

/// The policy's decision for one driver.
#[derive(Debug, Serialize)]
pub struct VerdictJson {
    pub driver: &'static str,
    pub allowed: bool,
    /// No rule matches: denied by default (`rule` is null).
    pub by_default: bool,
    /// The deciding rule: the first matching deny, else the first matching allow.
    pub rule: Option<Rule>,
    /// Every matching allow rule, in order of consultation.
    pub allows: Vec<Rule>,
    /// Every matching deny rule, in order of consultation.
    pub denies: Vec<Rule>,
}

/// The group plan of an explanation, tagged by `kind`: `planned` (what a vfio-pci bind would do
/// to each member, and whether it needs `--group`), `impossible` (no plan works, and why) or
/// `none` (no plan is made, and why: no IOMMU group, vfio-pci not allowed, a pci-stub question).
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExplainPlanJson {
    Planned {
        iommu_group: Option<u32>,
        members: Vec<MemberJson>,
        needs_group: bool,
    },
    Impossible {
        reason: String,
    },
    None {
        reason: String,
    },
}

impl ExplainJson {
    pub fn new(r: &ExplainReport, source: &Source, users: &UserNames) -> Self {
        let rules = |list: &[RuleRef]| list.iter().map(Rule::from).collect();
        let (source_name, policy) = match source {
            Source::Helper => ("helper", PolicyJson::new(None, Some(&r.policy_sha256), &[])),
            Source::Offline(files) => (
                "offline",
                PolicyJson::new(
                    files.first().map(|f| f.path.as_str()),
                    Some(&r.policy_sha256),
                    files,
                ),
            ),
        };
        Self {
            source: source_name,
            device: ExplainDeviceJson {
                address: json::address(r.device),
                short: r.device.short(),
                vendor: json::id(r.vendor),
                device: json::id(r.device_id),
                class: json::class(r.class),
                driver: r.driver.clone(),
                iommu_group: r.iommu_group,
            },
            subject: User::new(r.uid, users),
            verdicts: r
                .verdicts
                .iter()
                .map(|v| VerdictJson {
                    driver: v.driver.as_str(),
                    allowed: v.allowed,
                    by_default: v.rule.is_none(),
                    rule: v.rule.as_ref().map(Rule::from),
                    allows: rules(&v.allows),
                    denies: rules(&v.denies),
                })
                .collect(),
            guards: r.guards.iter().map(GuardJson::from).collect(),
            plan: match &r.plan {
                Some(Ok(plan)) => {
                    let PlanJson {
                        iommu_group,
                        members,
                    } = PlanJson::from(plan);
                    ExplainPlanJson::Planned {
                        iommu_group,
                        members,
                        needs_group: moves_companions(plan, &[r.device]),
                    }
                }
                Some(Err(reason)) => ExplainPlanJson::Impossible {
                    reason: reason.clone(),
                },
                None => ExplainPlanJson::None {
                    reason: no_plan_reason(r),
                },
            },
            holder: r.holder.as_ref().map(|h| HolderJson::new(h, users)),
            reserved: r.reserved.as_ref().map(Reserved::from),
            policy,
        }
    }
}

/// The helper's answer, about the caller or `--user`.
fn ask_helper(ctx: &Context<'_>, args: &ExplainArgs) -> Result<ExplainReport, Error> {
    let uid = match &args.user {
        None => None,
        Some(value) => Some(
            UserArg::resolve(value, Path::new(ETC_ROOT))
                .map_err(|_| Error::UnknownUser {
                    value: value.clone(),
                    passwd: users::passwd(Path::new(ETC_ROOT)),
                })?
                .uid,
        ),
    };
    let request = Request::Explain {
        device: args.device,
        driver: args.driver,
        uid,
    };
    match ctx.client.call(&request) {
        Ok(Response::Explained(report)) => Ok(report),
        Ok(other) => Err(unexpected(&request, &other)),
        // Asking about someone else without being an admin: the offline way is the next step.
        Err(Error::Helper(WireError::NotAdmin { detail })) => {
            Err(Error::NotAdmin { reason: detail })
        }
        Err(e) => Err(name_the_holder(e)),
    }
}

/// `--policy PATH`: the helper's answer, computed here from that policy and this host, about the
/// caller (as the kernel would present them to the helper) or `--user`.
fn compute(args: &ExplainArgs, path: &Path) -> Result<(ExplainReport, Source), Error> {
    let host = Host::from(&args.host);
    let policy = host
        .load_policy(&offline::absolute(path))
        .map_err(Error::Policy)?;
    let subject = match &args.user {
        Some(value) => host.user(value)?.1,
        None => offline::caller(),
    };
    let view = host.view();
    let host_use = host.host_use();
    let evaluator = Evaluator {
        policy: &policy,
        view: &view,
        host_use: &host_use,
        rule: offline::viability(),
        sysfs: &host.sysfs,
    };
    let report = evaluator.explain(&subject, args.device, args.driver)?;
    Ok((report, Source::Offline(policy.sources().to_vec())))
}

/// Where an explanation comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The helper answered.
    Helper,
    /// Computed here from these policy files (main file first) and this host's sysfs.
    Offline(Vec<PolicySource>),
}

/// "'lab' (/etc/vfio-gate/policy.toml:12)".
fn rule_text(r: &RuleRef) -> String {
    format!("'{}' ({}:{})", r.name, r.file, r.line)
}

/// The ids whose names an explanation shows: the device, its class, the plan's members.
pub fn explain_names(r: &ExplainReport) -> Wanted {
    let mut wanted = Wanted::default();
    wanted.add(r.vendor, r.device_id, r.class);
    if let Some(Ok(plan)) = &r.plan {
        for s in &plan.steps {
            wanted.add_device(s.vendor, s.device_id);
        }
    }
    wanted
}

/// The uids an explanation names: whom it is for, and the holder.
pub fn explain_uids(r: &ExplainReport) -> BTreeSet<u32> {
    let mut uids = BTreeSet::from([r.uid]);
    if let Some(h) = &r.holder {
        uids.insert(h.uid);
    }
    uids
}

/// One driver's verdict: the decision with its rule, then the other rules that match.
fn verdict_lines(v: &DriverVerdict) -> Vec<String> {
    let head = format!("{:<8}  ", v.driver.as_str());
    let pad = " ".repeat(head.len() + 9);
    let mut lines = Vec::new();
    match (&v.rule, v.allowed) {
        (Some(rule), true) => {
            lines.push(format!("{head}ALLOWED  by rule {}", rule_text(rule)));
            for other in v.allows.iter().filter(|r| *r != rule) {
                lines.push(format!("{pad}also allowed by {}", rule_text(other)));
            }
        }
        (Some(rule), false) => {
            lines.push(format!("{head}DENIED   by rule {}", rule_text(rule)));
            for other in v.denies.iter().filter(|r| *r != rule) {
                lines.push(format!("{pad}also denied by {}", rule_text(other)));
            }
            for allow in &v.allows {
                lines.push(format!(
                    "{pad}overrides the allow {} (deny wins)",
                    rule_text(allow)
                ));
            }
        }
        (None, _) => {
            lines.push(format!("{head}DENIED   no rule matches: denied by default"));
        }
    }
    lines
}

/// "held from boot on pci-stub by rule 'nic' (/etc/vfio-gate/policy.toml:3); a release returns
/// it there", or "… on pci-stub as a companion of 05:02.0 by rule …".
fn reservation_text(r: &Reservation) -> String {
    let companion = r
        .companion_of
        .map(|p| format!(" as a companion of {}", p.short()))
        .unwrap_or_default();
    format!(
        "held from boot on {}{companion} by rule {}; a release returns it there",
        r.driver,
        rule_text(&r.rule)
    )
}

fn holder_text(h: &Holder, users: &UserNames) -> String {
    let when = localtime::when(h.since, localtime::now_unix());
    let tied = if h.tied {
        "; until the command of its vfio-gate run exits"
    } else {
        ""
    };
    format!(
        "{} since {when} (on {}{tied})",
        users.display(h.uid),
        h.driver
    )
}

/// Why there is no plan, when the report has none: "01:00.0 has no IOMMU group".
fn no_plan_reason(r: &ExplainReport) -> String {
    let short = r.device.short();
    if r.iommu_group.is_none() {
        return format!("{short} has no IOMMU group");
    }
    match r.verdicts.iter().find(|v| v.driver == Driver::VfioPci) {
        Some(_) => "the policy does not allow vfio-pci".to_owned(),
        None => "a pci-stub bind moves only the device itself".to_owned(),
    }
}

fn plan_section(r: &ExplainReport, plan: &Plan, names: &PciNames) -> String {
    let title = format!("With vfio-pci, {} would be:", group_name(plan.group));
    let mut text = plan_block(&title, plan, names);
    let short = r.device.short();
    if r.guards.is_empty() {
        if moves_companions(plan, &[r.device]) {
            let _ = writeln!(
                text,
                "  The bind moves other members too, so it needs --group: vfio-gate bind {short} --group"
            );
        } else {
            let _ = writeln!(text, "  The bind: vfio-gate bind {short}");
        }
    }
    text
}

/// The explanation for people. `users` names the uids of [`explain_uids`].
pub fn explain_text(
    r: &ExplainReport,
    names: &PciNames,
    users: &UserNames,
    source: &Source,
) -> String {
    let mut t = String::new();
    let short = r.device.short();
    let ids = ids(r.vendor, r.device_id);
    match names.device_name(r.vendor, r.device_id) {
        Some(name) => {
            let _ = writeln!(t, "{short}  {ids}  {name}");
        }
        None => {
            let _ = writeln!(t, "{short}  {ids}");
        }
    }
    let class = match names.class_name(r.class) {
        Some(n) => format!("{:06x} ({n})", r.class),
        None => format!("{:06x}", r.class),
    };
    let _ = writeln!(t, "  class    {class}");
    let _ = writeln!(t, "  driver   {}", r.driver.as_deref().unwrap_or("none"));
    let _ = writeln!(t, "  group    {}", group_name(r.iommu_group));
    let held = match (&r.holder, source) {
        (Some(h), _) => holder_text(h, users),
        (None, Source::Helper) => "nobody".to_owned(),
        (None, Source::Offline(_)) => {
            "not known offline (the helper keeps the leases: vfio-gate list shows them)".to_owned()
        }
    };
    let _ = writeln!(t, "  held by  {held}");
    if let Some(r) = &r.reserved {
        let _ = writeln!(t, "  reserved {}", reservation_text(r));
    }

    let who = match users.name(r.uid) {
        Some(name) => format!("{name} (uid {})", r.uid),
        None => format!("uid {}", r.uid),
    };
    let _ = writeln!(t, "For {who}:");
    for v in &r.verdicts {
        for line in verdict_lines(v) {
            let _ = writeln!(t, "  {line}");
        }
    }

    if r.guards.is_empty() {
        let _ = writeln!(t, "Guards: none refuses {short} now");
    } else {
        let _ = writeln!(
            t,
            "Refused now by a built-in guard, whatever the policy says:"
        );
        for g in &r.guards {
            let _ = writeln!(t, "  {}: {}", guard_label(g.guard), g.reason);
        }
    }

    match &r.plan {
        Some(Ok(plan)) => t.push_str(&plan_section(r, plan, names)),
        Some(Err(reason)) => {
            let _ = writeln!(
                t,
                "No plan works for {} with vfio-pci: {reason}",
                group_name(r.iommu_group)
            );
        }
        None => {
            let _ = writeln!(t, "No group plan: {}", no_plan_reason(r));
        }
    }

    match source {
        Source::Helper => {
            let _ = writeln!(t, "Policy sha256 {} (the helper's)", r.policy_sha256);
        }
        Source::Offline(files) => {
            let _ = writeln!(
                t,
                "Policy sha256 {} ({}, read offline)",
                r.policy_sha256,
                files_text(files)
            );
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_gate_protocol::{Guard, GuardFinding};

    fn rule(name: &str, line: u32) -> RuleRef {
        RuleRef {
            name: name.into(),
            file: "/p.toml".into(),
            line,
        }
    }

    fn verdict(
        allowed: bool,
        rule_: Option<RuleRef>,
        allows: &[RuleRef],
        denies: &[RuleRef],
    ) -> DriverVerdict {
        DriverVerdict {
            driver: Driver::VfioPci,
            allowed,
            rule: rule_,
            allows: allows.to_vec(),
            denies: denies.to_vec(),
        }
    }

    #[test]
    fn verdicts_name_the_deciding_rule_and_the_others() {
        let lab = rule("lab", 3);
        let more = rule("more", 9);
        let fence = rule("fence", 20);
        assert_eq!(
            verdict_lines(&verdict(
                true,
                Some(lab.clone()),
                &[lab.clone(), more.clone()],
                &[]
            )),
            [
                "vfio-pci  ALLOWED  by rule 'lab' (/p.toml:3)",
                "                   also allowed by 'more' (/p.toml:9)",
            ]
        );
        assert_eq!(
            verdict_lines(&verdict(false, Some(fence.clone()), &[lab], &[fence])),
            [
                "vfio-pci  DENIED   by rule 'fence' (/p.toml:20)",
                "                   overrides the allow 'lab' (/p.toml:3) (deny wins)",
            ]
        );
        assert_eq!(
            verdict_lines(&verdict(false, None, &[], &[])),
            ["vfio-pci  DENIED   no rule matches: denied by default"]
        );
    }

    #[test]
    fn a_reserved_device_says_by_which_rule_and_where_a_release_returns_it() {
        let mut r = Reservation {
            driver: Driver::PciStub,
            rule: rule("nic", 3),
            companion_of: None,
        };
        assert_eq!(
            reservation_text(&r),
            "held from boot on pci-stub by rule 'nic' (/p.toml:3); a release returns it there"
        );
        r.companion_of = Some("05:02.0".parse().unwrap());
        assert_eq!(
            reservation_text(&r),
            "held from boot on pci-stub as a companion of 05:02.0 by rule 'nic' (/p.toml:3); a \
             release returns it there"
        );
    }

    #[test]
    fn an_explanation_without_a_group_says_why_there_is_no_plan() {
        let r = ExplainReport {
            device: "01:00.0".parse().unwrap(),
            vendor: 0x8086,
            device_id: 0x10d3,
            class: 0x020000,
            driver: Some("e1000e".into()),
            iommu_group: None,
            uid: 4242,
            verdicts: vec![verdict(false, None, &[], &[])],
            guards: vec![GuardFinding {
                guard: Guard::NoIommuGroup,
                reason: "01:00.0 has no IOMMU group".into(),
            }],
            plan: None,
            holder: None,
            reserved: None,
            policy_sha256: "ab".repeat(32),
        };
        let text = explain_text(
            &r,
            &PciNames::default(),
            &UserNames::default(),
            &Source::Helper,
        );
        assert_eq!(
            text,
            format!(
                "\
01:00.0  8086:10d3
  class    020000 (Network controller)
  driver   e1000e
  group    no IOMMU group
  held by  nobody
For uid 4242:
  vfio-pci  DENIED   no rule matches: denied by default
Refused now by a built-in guard, whatever the policy says:
  no IOMMU group: 01:00.0 has no IOMMU group
No group plan: 01:00.0 has no IOMMU group
Policy sha256 {} (the helper's)
",
                "ab".repeat(32)
            )
        );
    }
}
