//! `vfio-gate list`: every PCI device the helper sees, as a table (ids, class, driver, group,
//! what you may bind it to, who holds it, and its name) or, with `--by-group`, IOMMU group by
//! IOMMU group (whether the group is viable, and who holds it); narrowed by filters (`--group`,
//! `--driver`, `--mine`, `--allowed`); or as JSON.
//!
//! When the helper cannot be reached (no socket, or nobody listening on it), the devices are
//! read from this host's sysfs instead, with the helper's own reader (`vfio-gate-host`), and the
//! reservations from the policy if it can be read: what only the helper knows (what you may
//! bind, who holds what) is left out, and stderr says so. Filters that need the helper
//! (`--mine`, `--allowed`) report the unreachable helper instead.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};

use serde::Serialize;
use vfio_gate_host::groups::{self, Member, ViabilityRule};
use vfio_gate_host::plan::member_state;
use vfio_gate_host::reserve;
use vfio_gate_host::{DriverName, PciView, SysfsError};
use vfio_gate_policy::{Policy, PolicyError};
use vfio_gate_protocol::{DeviceInfo, Driver, MemberKind, PciAddress, Request, Response, RuleRef};

use super::{Context, unexpected};
use crate::cli::ListArgs;
use crate::error::{DEFAULT_POLICY, Error, Status};
use crate::json::{self, HolderJson, Reserved};
use crate::messages;
use crate::offline::{self, Host};
use crate::pci_ids::{PciNames, Wanted};
use crate::render::{Table, ids, join_words};
use crate::users::{self, UserNames};

/// `vfio-gate list [--by-group] [--group N] [--driver D] [--mine] [--allowed]`.
pub fn run(ctx: &Context<'_>, args: &ListArgs, out: &mut impl Write) -> Result<Status, Error> {
    let request = Request::List;
    let listing = match ctx.client.call(&request) {
        Ok(Response::Devices(devices)) => Listing::from_helper(devices),
        Ok(other) => return Err(unexpected(&request, &other)),
        Err(err) => match unreachable_because(&err) {
            Some(why) if !args.needs_helper() => offline_listing(args, &why, err)?,
            _ => return Err(err),
        },
    };
    let filter = Filter::new(args, users::my_uid());
    let etc = args.host.etc();
    let users = UserNames::load(&etc, &holder_uids(&listing.devices));
    let rule = offline::viability();
    if args.by_group {
        let groups = listing.groups(&filter, rule);
        let doc = GroupsJson {
            source: listing.source.name(),
            groups: groups.iter().map(|g| g.json(&listing, &users)).collect(),
        };
        ctx.print(out, &doc, || {
            groups_text(ctx, &listing, &groups, &filter, &users)
        })?;
    } else {
        let shown: Vec<&DeviceInfo> = listing
            .devices
            .iter()
            .filter(|d| filter.matches(d, &listing))
            .collect();
        let doc = DevicesJson {
            source: listing.source.name(),
            devices: shown
                .iter()
                .map(|d| device_json(d, listing.source, &users))
                .collect(),
        };
        ctx.print(out, &doc, || {
            devices_text(ctx, &listing, &shown, &filter, &users)
        })?;
    }
    Ok(Status::Ok)
}

/// Where the devices of a listing come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The helper's answer: with what the caller may bind and who holds what.
    Helper,
    /// This host's sysfs, read here because the helper could not be reached.
    Sysfs,
}

impl Source {
    /// `"helper"` or `"sysfs"`, the `source` field of `list --json`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Helper => "helper",
            Source::Sysfs => "sysfs",
        }
    }
}

/// The devices to list, in address order, and what each is (for the groups' viability).
#[derive(Debug, Clone)]
pub struct Listing {
    pub source: Source,
    pub devices: Vec<DeviceInfo>,
    /// Each device's kind. The helper does not say: from the class code alone (a bridge is
    /// class 06); read offline from the header type too.
    pub kinds: BTreeMap<PciAddress, MemberKind>,
}

impl Listing {
    /// The helper's list.
    pub fn from_helper(mut devices: Vec<DeviceInfo>) -> Self {
        devices.sort_by_key(|d| d.address);
        let kinds = devices
            .iter()
            .map(|d| (d.address, groups::classify(d.class, None)))
            .collect();
        Self {
            source: Source::Helper,
            devices,
            kinds,
        }
    }

    /// This host's devices as `view` shows them, with the reservations of `policy` if there is
    /// one: nothing allowed (unknown), no holders (unknown). A device that vanishes while it is
    /// read is left out.
    pub fn from_sysfs(view: &dyn PciView, policy: Option<&Policy>) -> Result<Self, SysfsError> {
        let mut devices = Vec::new();
        let mut kinds = BTreeMap::new();
        for dev in view.devices()? {
            let state = match member_state(view, dev) {
                Ok(s) => s,
                Err(SysfsError::NoDevice(_)) => continue,
                Err(e) => return Err(e),
            };
            let f = &state.facts;
            let reserved = match policy {
                Some(p) => reserve::held(view, p, dev)?.reservation().cloned(),
                None => None,
            };
            devices.push(DeviceInfo {
                address: dev,
                vendor: f.vendor,
                device: f.device,
                subsystem_vendor: f.subsystem_vendor,
                subsystem_device: f.subsystem_device,
                class: f.class,
                driver: state.driver.as_ref().map(ToString::to_string),
                driver_override: view.driver_override(dev)?.map(|d| d.to_string()),
                iommu_group: view.iommu_group(dev)?,
                allowed: Vec::new(),
                holder: None,
                reserved,
            });
            kinds.insert(dev, state.kind);
        }
        devices.sort_by_key(|d| d.address);
        Ok(Self {
            source: Source::Sysfs,
            devices,
            kinds,
        })
    }

    /// The IOMMU groups with a device that `filter` accepts, each with all its devices, in
    /// group order; the devices without a group last, as one entry.
    pub fn groups(&self, filter: &Filter, rule: ViabilityRule) -> Vec<GroupView<'_>> {
        let mut by_group: BTreeMap<Option<u32>, Vec<&DeviceInfo>> = BTreeMap::new();
        for d in &self.devices {
            by_group.entry(d.iommu_group).or_default().push(d);
        }
        let mut out: Vec<GroupView<'_>> = Vec::new();
        for (group, members) in by_group {
            if !members.iter().any(|d| filter.matches(d, self)) {
                continue;
            }
            let (viable, blockers) = match group {
                None => (None, Vec::new()),
                Some(_) => match groups::viable(&self.members(&members), rule) {
                    Ok(()) => (Some(true), Vec::new()),
                    Err(blockers) => (Some(false), blockers),
                },
            };
            out.push(GroupView {
                group,
                holder: members.iter().find_map(|d| d.holder.as_ref()),
                viable,
                blockers,
                devices: members,
            });
        }
        // Devices without a group after the groups (`None` sorts first).
        out.sort_by_key(|g| (g.group.is_none(), g.group));
        out
    }

    /// The viability view of some devices: their kind and driver as listed.
    fn members(&self, devices: &[&DeviceInfo]) -> Vec<Member> {
        devices
            .iter()
            .map(|d| Member {
                address: d.address,
                kind: self
                    .kinds
                    .get(&d.address)
                    .copied()
                    .unwrap_or(MemberKind::Endpoint),
                // Driver names from sysfs are always valid ones; one that is not counts as a
                // host driver (it blocks the group), the careful answer.
                driver: d.driver.as_deref().map(|n| {
                    DriverName::new(n).unwrap_or_else(|| DriverName::from(Driver::VfioPci))
                }),
            })
            .collect()
    }

    /// The IOMMU groups someone (`uid`) holds a device of.
    fn held_groups(&self, uid: u32) -> BTreeSet<u32> {
        self.devices
            .iter()
            .filter(|d| d.holder.as_ref().is_some_and(|h| h.uid == uid))
            .filter_map(|d| d.iommu_group)
            .collect()
    }
}

/// One IOMMU group of `list --by-group`.
#[derive(Debug, Clone)]
pub struct GroupView<'a> {
    /// `None`: the devices that have no IOMMU group.
    pub group: Option<u32>,
    /// Every device of the group, in address order.
    pub devices: Vec<&'a DeviceInfo>,
    /// Whether a VM could use the group as its devices are bound now; `None` without a group.
    pub viable: Option<bool>,
    /// What keeps it from being viable.
    pub blockers: Vec<groups::Blocker>,
    /// Who holds it, as the helper says.
    pub holder: Option<&'a vfio_gate_protocol::Holder>,
}

impl GroupView<'_> {
    fn json(&self, listing: &Listing, users: &UserNames) -> GroupJson {
        GroupJson {
            iommu_group: self.group,
            viable: self.viable,
            blockers: self
                .blockers
                .iter()
                .map(|b| BlockerJson {
                    address: json::address(b.address),
                    short: b.address.short(),
                    driver: b.driver.to_string(),
                })
                .collect(),
            holder: self.holder.map(|h| HolderJson::new(h, users)),
            devices: self
                .devices
                .iter()
                .map(|d| device_json(d, listing.source, users))
                .collect(),
        }
    }

    /// "IOMMU group 11: viable, held by alice", "IOMMU group 11: not viable: 05:01.0 is on the
    /// host driver e1000", "No IOMMU group".
    pub fn heading(&self, users: &UserNames) -> String {
        let Some(g) = self.group else {
            return "No IOMMU group (these devices are never handed out)".to_owned();
        };
        let mut text = format!("IOMMU group {g}: ");
        if self.viable == Some(true) {
            text.push_str("viable");
        } else {
            let why: Vec<String> = self
                .blockers
                .iter()
                .map(|b| format!("{} is on the host driver {}", b.address.short(), b.driver))
                .collect();
            text.push_str(&format!("not viable: {}", join_words(&why)));
        }
        if let Some(h) = self.holder {
            let run = if h.tied { " (run)" } else { "" };
            text.push_str(&format!("; held by {}{run}", users.display(h.uid)));
        }
        text
    }
}

/// What the filters of `list` keep: every filter given must accept a device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub group: Option<u32>,
    pub driver: Option<String>,
    /// `--mine`: the caller's uid (devices in the groups they hold).
    pub mine: Option<u32>,
    /// `--allowed`: devices the caller may bind to some driver.
    pub allowed: bool,
}

impl Filter {
    pub fn new(args: &ListArgs, me: u32) -> Self {
        Self {
            group: args.group,
            driver: args.driver.clone(),
            mine: args.mine.then_some(me),
            allowed: args.allowed,
        }
    }

    /// Whether `d`, a device of `listing`, passes every filter.
    pub fn matches(&self, d: &DeviceInfo, listing: &Listing) -> bool {
        self.group.is_none_or(|g| d.iommu_group == Some(g))
            && self
                .driver
                .as_ref()
                .is_none_or(|want| d.driver.as_ref() == Some(want))
            && self.mine.is_none_or(|me| {
                d.holder.as_ref().is_some_and(|h| h.uid == me)
                    || d.iommu_group
                        .is_some_and(|g| listing.held_groups(me).contains(&g))
            })
            && (!self.allowed || !d.allowed.is_empty())
    }

    /// The filters as given: "--group 11 --driver e1000".
    pub fn describe(&self) -> String {
        let mut words = Vec::new();
        if let Some(g) = self.group {
            words.push(format!("--group {g}"));
        }
        if let Some(d) = &self.driver {
            words.push(format!("--driver {d}"));
        }
        if self.mine.is_some() {
            words.push("--mine".to_owned());
        }
        if self.allowed {
            words.push("--allowed".to_owned());
        }
        words.join(" ")
    }
}

impl ListArgs {
    /// Whether a filter asks what only the helper knows (who holds what, what you may bind).
    pub fn needs_helper(&self) -> bool {
        self.mine || self.allowed
    }
}

/// Why the helper cannot be reached, when that is a reason to read sysfs instead: no socket,
/// or nobody listening on it ("no socket at /run/vfio-gate.sock"). Not for a socket we may not
/// use (the admin's decision), nor for a helper that answered.
fn unreachable_because(err: &Error) -> Option<String> {
    let Error::Connect { socket, source } = err else {
        return None;
    };
    let socket = socket.display();
    match source.kind() {
        io::ErrorKind::NotFound => Some(format!("no socket at {socket}")),
        io::ErrorKind::ConnectionRefused => Some(format!("nothing listens on {socket}")),
        _ => None,
    }
}

/// The listing read from sysfs, after saying so on stderr. When sysfs cannot be read either,
/// the helper's error (`err`) is the answer, with why sysfs did not help.
fn offline_listing(args: &ListArgs, why: &str, err: Error) -> Result<Listing, Error> {
    let host = Host::from(&args.host);
    let policy_path = host.etc.join(DEFAULT_POLICY.trim_start_matches('/'));
    let policy = match host.load_policy(&offline::absolute(&policy_path)) {
        Ok(p) => Some(p),
        // No policy at all (no helper installed): nothing is reserved, nothing to say.
        Err(PolicyError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            messages::warn(&format!(
                "reservations are not shown: {}",
                Error::Policy(e).chain()
            ));
            None
        }
    };
    match Listing::from_sysfs(&host.view(), policy.as_ref()) {
        Ok(listing) => {
            messages::note(&format!(
                "the helper is not reachable ({why}); showing this host's devices read from {}, \
                 without what you may bind or who holds them",
                host.sysfs.display()
            ));
            if let Some(step) = err.details().next_step {
                messages::note(&step);
            }
            Ok(listing)
        }
        Err(source) => {
            let sysfs = Error::Sysfs {
                sysfs: host.sysfs.clone(),
                source,
            };
            messages::warn(&format!(
                "the helper is not reachable, and {}",
                sysfs.chain()
            ));
            Err(err)
        }
    }
}

/// `list --json`.
#[derive(Debug, Serialize)]
pub struct DevicesJson {
    /// `helper`, or `sysfs` when the helper could not be reached.
    pub source: &'static str,
    /// The devices the filters keep, in address order.
    pub devices: Vec<DeviceJson>,
}

/// `list --by-group --json`.
#[derive(Debug, Serialize)]
pub struct GroupsJson {
    pub source: &'static str,
    /// The groups with a device the filters keep, in group order, each with all its devices;
    /// the devices without an IOMMU group last (`iommu_group` null).
    pub groups: Vec<GroupJson>,
}

/// One device of `list --json`.
#[derive(Debug, Serialize)]
pub struct DeviceJson {
    pub address: String,
    pub short: String,
    pub vendor: String,
    pub device: String,
    pub subsystem_vendor: String,
    pub subsystem_device: String,
    pub class: String,
    /// The bound driver.
    pub driver: Option<String>,
    pub driver_override: Option<String>,
    pub iommu_group: Option<u32>,
    /// The drivers the policy lets you bind it to; `null` when the helper was not asked.
    pub allowed: Option<Vec<&'static str>>,
    /// Who holds it through vfio-gate; always `null` when the helper was not asked.
    pub holder: Option<HolderJson>,
    pub reserved: Option<Reserved>,
}

/// One group of `list --by-group --json`.
#[derive(Debug, Serialize)]
pub struct GroupJson {
    pub iommu_group: Option<u32>,
    /// Whether a VM could use the group as its devices are bound now (the kernel's rule);
    /// `null` for the devices without a group.
    pub viable: Option<bool>,
    /// The devices whose host drivers keep it from being viable.
    pub blockers: Vec<BlockerJson>,
    /// Who holds it (`null`: nobody, or not known when the helper was not asked).
    pub holder: Option<HolderJson>,
    pub devices: Vec<DeviceJson>,
}

#[derive(Debug, Serialize)]
pub struct BlockerJson {
    pub address: String,
    pub short: String,
    pub driver: String,
}

/// `d` under `--json`.
pub fn device_json(d: &DeviceInfo, source: Source, users: &UserNames) -> DeviceJson {
    DeviceJson {
        address: json::address(d.address),
        short: d.address.short(),
        vendor: json::id(d.vendor),
        device: json::id(d.device),
        subsystem_vendor: json::id(d.subsystem_vendor),
        subsystem_device: json::id(d.subsystem_device),
        class: json::class(d.class),
        driver: d.driver.clone(),
        driver_override: d.driver_override.clone(),
        iommu_group: d.iommu_group,
        allowed: match source {
            Source::Helper => Some(d.allowed.iter().map(|a| a.as_str()).collect()),
            Source::Sysfs => None,
        },
        holder: d.holder.as_ref().map(|h| HolderJson::new(h, users)),
        reserved: d.reserved.as_ref().map(Reserved::from),
    }
}

/// The flat `list`: the table, the reservations under it.
fn devices_text(
    ctx: &Context<'_>,
    listing: &Listing,
    shown: &[&DeviceInfo],
    filter: &Filter,
    users: &UserNames,
) -> String {
    if shown.is_empty() {
        return nothing_text(listing, filter);
    }
    let names = ctx.pci_names(&wanted_names(shown.iter().copied()));
    let columns = Columns::flat(listing.source, shown);
    let mut text = device_table(shown, &names, users, columns).to_string();
    text.push_str(&reserved_footnote(shown));
    text
}

/// `list --by-group`: per group a heading (viability, holder) and its devices, indented.
fn groups_text(
    ctx: &Context<'_>,
    listing: &Listing,
    groups: &[GroupView<'_>],
    filter: &Filter,
    users: &UserNames,
) -> String {
    if groups.is_empty() {
        return nothing_text(listing, filter);
    }
    let shown: Vec<&DeviceInfo> = groups.iter().flat_map(|g| g.devices.clone()).collect();
    let names = ctx.pci_names(&wanted_names(shown.iter().copied()));
    let columns = Columns::by_group(listing.source, &shown);
    let mut text = String::new();
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        text.push_str(&g.heading(users));
        text.push('\n');
        for line in device_table(&g.devices, &names, users, columns)
            .to_string()
            .lines()
        {
            text.push_str("  ");
            text.push_str(line);
            text.push('\n');
        }
    }
    text.push_str(&reserved_footnote(&shown));
    text
}

/// What `list` says when it shows nothing.
fn nothing_text(listing: &Listing, filter: &Filter) -> String {
    match (listing.devices.is_empty(), listing.source) {
        (true, Source::Helper) => "The helper sees no PCI devices.\n".to_owned(),
        (true, Source::Sysfs) => "No PCI devices in sysfs.\n".to_owned(),
        (false, _) => format!("No device matches {}.\n", filter.describe()),
    }
}

/// The ids of `devices` whose names the device table shows.
pub fn wanted_names<'a>(devices: impl IntoIterator<Item = &'a DeviceInfo>) -> Wanted {
    let mut wanted = Wanted::default();
    for d in devices {
        wanted.add(d.vendor, d.device, d.class);
    }
    wanted
}

/// The uids of the devices' holders.
pub fn holder_uids(devices: &[DeviceInfo]) -> BTreeSet<u32> {
    devices
        .iter()
        .filter_map(|d| d.holder.as_ref().map(|h| h.uid))
        .collect()
}

/// Which of the optional columns a device table has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns {
    /// GROUP (left out by group, where the heading says it).
    pub group: bool,
    /// ALLOWED (known only to the helper).
    pub allowed: bool,
    /// HOLDER (known only to the helper; by group, the heading says it).
    pub holder: bool,
    /// RESERVED: only when some device shown is reserved.
    pub reserved: bool,
}

impl Columns {
    /// The flat table's columns, for the devices `shown`.
    pub fn flat(source: Source, shown: &[&DeviceInfo]) -> Self {
        let helper = source == Source::Helper;
        Self {
            group: true,
            allowed: helper,
            holder: helper,
            reserved: shown.iter().any(|d| d.reserved.is_some()),
        }
    }

    /// The columns of every group's table, for all the devices `shown` (the same in each).
    pub fn by_group(source: Source, shown: &[&DeviceInfo]) -> Self {
        Self {
            group: false,
            holder: false,
            ..Self::flat(source, shown)
        }
    }
}

/// The `list` table, in the order given (by address), with the optional `columns`. RESERVED is
/// the driver a `[[reserve]]` holds the device on from boot, with `*` for a companion of a
/// reserved device. The NAME column is left out when the PCI ID database gave no names at all
/// (it is not installed), rather than being a column of dashes.
pub fn device_table(
    devices: &[&DeviceInfo],
    names: &PciNames,
    users: &UserNames,
    columns: Columns,
) -> Table {
    let with_names = !names.is_empty();
    let with_reserved = columns.reserved;
    let mut headers = vec!["ADDRESS", "IDS", "CLASS", "DRIVER"];
    if columns.group {
        headers.push("GROUP");
    }
    if columns.allowed {
        headers.push("ALLOWED");
    }
    if columns.holder {
        headers.push("HOLDER");
    }
    if with_reserved {
        headers.push("RESERVED");
    }
    if with_names {
        headers.push("NAME");
    }
    let mut table = Table::new(headers);
    for d in devices {
        let mut row = vec![
            d.address.short(),
            ids(d.vendor, d.device),
            names
                .class_name(d.class)
                .map_or_else(|| format!("{:06x}", d.class), str::to_owned),
            d.driver.clone().unwrap_or_else(|| "-".to_owned()),
        ];
        if columns.group {
            row.push(
                d.iommu_group
                    .map_or_else(|| "-".to_owned(), |g| g.to_string()),
            );
        }
        if columns.allowed {
            row.push(drivers(&d.allowed));
        }
        if columns.holder {
            row.push(d.holder.as_ref().map_or_else(
                || "-".to_owned(),
                |h| {
                    if h.tied {
                        format!("{} (run)", users.display(h.uid))
                    } else {
                        users.display(h.uid)
                    }
                },
            ));
        }
        if with_reserved {
            row.push(d.reserved.as_ref().map_or_else(
                || "-".to_owned(),
                |r| match r.companion_of {
                    None => r.driver.to_string(),
                    Some(_) => format!("{}*", r.driver),
                },
            ));
        }
        if with_names {
            row.push(
                names
                    .device_name(d.vendor, d.device)
                    .unwrap_or_else(|| "-".to_owned()),
            );
        }
        table.push(row);
    }
    table
}

/// Under the table, one line per `[[reserve]]` that holds a device here, naming the rule once
/// with what it holds: "Held from boot: 01:00.0 on pci-stub by 'nic' (/etc/vfio-gate/policy.toml:3)",
/// companions as "05:01.0 on pci-stub as a companion of 05:02.0". Empty when nothing is reserved.
pub fn reserved_footnote(devices: &[&DeviceInfo]) -> String {
    let mut sorted: Vec<&DeviceInfo> = devices.to_vec();
    // Each rule once, in the order of the first device it holds; what it names before what it
    // holds as companions.
    sorted.sort_by_key(|d| {
        let companion = d
            .reserved
            .as_ref()
            .is_some_and(|r| r.companion_of.is_some());
        (companion, d.address)
    });
    let mut rules: Vec<(&RuleRef, Vec<String>)> = Vec::new();
    for d in sorted {
        let Some(r) = &d.reserved else { continue };
        let what = match r.companion_of {
            None => format!("{} on {}", d.address.short(), r.driver),
            Some(primary) => format!(
                "{} on {} as a companion of {}",
                d.address.short(),
                r.driver,
                primary.short()
            ),
        };
        match rules.iter_mut().find(|(rule, _)| **rule == r.rule) {
            Some((_, held)) => held.push(what),
            None => rules.push((&r.rule, vec![what])),
        }
    }
    if rules.is_empty() {
        return String::new();
    }
    let mut text = String::from("\n");
    for (rule, held) in rules {
        text.push_str(&format!(
            "Held from boot: {} by '{}' ({}:{})\n",
            join_words(&held),
            rule.name,
            rule.file,
            rule.line
        ));
    }
    text
}

fn drivers(list: &[Driver]) -> String {
    if list.is_empty() {
        return "-".to_owned();
    }
    list.iter()
        .map(|d| d.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::addr;
    use vfio_gate_protocol::Holder;

    fn device(a: &str, driver: Option<&str>, group: Option<u32>) -> DeviceInfo {
        DeviceInfo {
            address: addr(a),
            vendor: 0x8086,
            device: 0x10d3,
            subsystem_vendor: 0x8086,
            subsystem_device: 0,
            class: 0x020000,
            driver: driver.map(str::to_owned),
            driver_override: None,
            iommu_group: group,
            allowed: vec![],
            holder: None,
            reserved: None,
        }
    }

    #[test]
    fn device_table_without_names_shows_ids_and_dashes() {
        let mut held = device("0000:01:00.0", Some("vfio-pci"), Some(8));
        held.allowed = vec![Driver::VfioPci, Driver::PciStub];
        held.holder = Some(Holder {
            uid: 4242,
            driver: Driver::VfioPci,
            since: 0,
            group: Some(8),
            tied: false,
        });
        let mut other = device("0001:00:1f.7", None, None);
        other.class = 0x7a0000;
        let bare = device("0000:00:02.0", Some("e1000e"), Some(2));
        let listing = Listing::from_helper(vec![held, other, bare]);
        let shown: Vec<&DeviceInfo> = listing.devices.iter().collect();
        let t = device_table(
            &shown,
            &PciNames::default(),
            &UserNames::default(),
            Columns::flat(Source::Helper, &shown),
        );
        assert_eq!(
            t.to_string(),
            "\
ADDRESS       IDS        CLASS               DRIVER    GROUP  ALLOWED            HOLDER
00:02.0       8086:10d3  Network controller  e1000e    2      -                  -
01:00.0       8086:10d3  Network controller  vfio-pci  8      vfio-pci,pci-stub  4242
0001:00:1f.7  8086:10d3  7a0000              -         -      -                  -
"
        );
    }

    #[test]
    fn reserved_devices_get_a_column_and_each_rule_one_line_below() {
        use crate::render::fixtures::rule;
        use vfio_gate_protocol::Reservation;
        let mut nic = device("01:00.0", Some("pci-stub"), Some(8));
        nic.reserved = Some(Reservation {
            driver: Driver::PciStub,
            rule: rule("nic", 3),
            companion_of: None,
        });
        let mut e1000 = device("05:01.0", Some("pci-stub"), Some(11));
        e1000.reserved = Some(Reservation {
            driver: Driver::PciStub,
            rule: rule("edu", 8),
            companion_of: Some(addr("05:02.0")),
        });
        let mut edu = device("05:02.0", Some("vfio-pci"), Some(11));
        edu.reserved = Some(Reservation {
            driver: Driver::VfioPci,
            rule: rule("edu", 8),
            companion_of: None,
        });
        let plain = device("03:00.0", Some("nvme"), Some(10));
        let listing = Listing::from_helper(vec![edu, plain, e1000, nic]);
        let devices: Vec<&DeviceInfo> = listing.devices.iter().collect();
        let t = device_table(
            &devices,
            &PciNames::default(),
            &UserNames::default(),
            Columns::flat(Source::Helper, &devices),
        );
        assert_eq!(
            t.to_string(),
            "\
ADDRESS  IDS        CLASS               DRIVER    GROUP  ALLOWED  HOLDER  RESERVED
01:00.0  8086:10d3  Network controller  pci-stub  8      -        -       pci-stub
03:00.0  8086:10d3  Network controller  nvme      10     -        -       -
05:01.0  8086:10d3  Network controller  pci-stub  11     -        -       pci-stub*
05:02.0  8086:10d3  Network controller  vfio-pci  11     -        -       vfio-pci
"
        );
        assert_eq!(
            reserved_footnote(&devices),
            "
Held from boot: 01:00.0 on pci-stub by 'nic' (/etc/vfio-gate/policy.toml:3)
Held from boot: 05:02.0 on vfio-pci and 05:01.0 on pci-stub as a companion of 05:02.0 by 'edu' (/etc/vfio-gate/policy.toml:8)
"
        );
        // Nothing reserved: no column, no footnote.
        let plain = device("03:00.0", Some("nvme"), Some(10));
        let plain = [&plain];
        let t = device_table(
            &plain,
            &PciNames::default(),
            &UserNames::default(),
            Columns::flat(Source::Helper, &plain),
        )
        .to_string();
        assert!(!t.contains("RESERVED"), "{t}");
        assert_eq!(reserved_footnote(&plain), "");
    }

    #[test]
    fn device_table_with_names_adds_a_name_column_and_holder_names() {
        let mut d = device("01:00.0", Some("e1000e"), Some(8));
        d.holder = Some(Holder {
            uid: 1000,
            driver: Driver::VfioPci,
            since: 0,
            group: Some(8),
            tied: true,
        });
        let mut unknown = device("02:00.0", None, Some(9));
        unknown.vendor = 0xabcd;
        let names = PciNames::parse(
            include_str!("../../tests/data/pci.ids").as_bytes(),
            &wanted_names([&d, &unknown]),
        );
        assert_eq!(
            holder_uids(std::slice::from_ref(&d)),
            BTreeSet::from([1000])
        );
        let users = UserNames::from_pairs([(1000, "alice")]);
        let shown = [&d, &unknown];
        let text = device_table(
            &shown,
            &names,
            &users,
            Columns::flat(Source::Helper, &shown),
        )
        .to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("HOLDER       NAME"), "{text}");
        assert!(
            lines[1].starts_with(
                "01:00.0  8086:10d3  Ethernet controller  e1000e  8      -        alice (run)"
            ),
            "{text}"
        );
        assert!(
            lines[1].ends_with("alice (run)  Intel Corporation 82574L Gigabit Network Connection"),
            "{text}"
        );
        assert!(lines[2].starts_with("02:00.0  abcd:10d3"), "{text}");
        assert!(lines[2].ends_with("-            -"), "{text}");
    }

    /// The guest's group 8 (the NIC, held by uid 1000 through `run`) and group 11 (bridge,
    /// e1000 on its host driver, edu on vfio-pci), and a device without a group.
    fn guest() -> Listing {
        let mut nic = device("01:00.0", Some("vfio-pci"), Some(8));
        nic.allowed = vec![Driver::VfioPci];
        nic.holder = Some(Holder {
            uid: 1000,
            driver: Driver::VfioPci,
            since: 0,
            group: Some(8),
            tied: true,
        });
        let mut bridge = device("04:00.0", None, Some(11));
        bridge.class = 0x060400;
        let e1000 = device("05:01.0", Some("e1000"), Some(11));
        let mut edu = device("05:02.0", Some("vfio-pci"), Some(11));
        edu.allowed = vec![Driver::VfioPci];
        let lone = device("0001:00:00.0", None, None);
        Listing::from_helper(vec![lone, edu, e1000, bridge, nic])
    }

    fn addresses(devices: &[&DeviceInfo]) -> Vec<String> {
        devices.iter().map(|d| d.address.short()).collect()
    }

    #[test]
    fn groups_say_whether_they_are_viable_and_who_holds_them() {
        let listing = guest();
        let users = UserNames::from_pairs([(1000, "alice")]);
        let groups = listing.groups(&Filter::default(), ViabilityRule::DmaOwnership);
        let heads: Vec<String> = groups.iter().map(|g| g.heading(&users)).collect();
        assert_eq!(
            heads,
            [
                "IOMMU group 8: viable; held by alice (run)",
                "IOMMU group 11: not viable: 05:01.0 is on the host driver e1000",
                "No IOMMU group (these devices are never handed out)",
            ]
        );
        assert_eq!(
            addresses(&groups[1].devices),
            ["04:00.0", "05:01.0", "05:02.0"]
        );
        assert_eq!(groups[1].viable, Some(false));
        assert_eq!(groups[2].viable, None);
        // The bridge is classified from its class code: viable under the old rule too once the
        // e1000 is parked.
        let mut parked = listing.clone();
        parked.devices[2].driver = Some("pci-stub".into());
        for rule in [ViabilityRule::DmaOwnership, ViabilityRule::Legacy] {
            let g = parked.groups(&Filter::default(), rule);
            assert_eq!(g[1].heading(&users), "IOMMU group 11: viable", "{rule:?}");
        }
        let json = groups[1].json(&listing, &users);
        let v = serde_json::to_value(&json).unwrap();
        assert_eq!(
            v["blockers"],
            serde_json::json!([{"address": "0000:05:01.0", "short": "05:01.0", "driver": "e1000"}])
        );
        assert_eq!(v["holder"], serde_json::Value::Null);
        assert_eq!(v["devices"][0]["class"], "060400");
    }

    #[test]
    fn filters_combine_and_pick_whole_groups() {
        let listing = guest();
        let shown = |f: &Filter| {
            let kept: Vec<&DeviceInfo> = listing
                .devices
                .iter()
                .filter(|d| f.matches(d, &listing))
                .collect();
            addresses(&kept)
        };
        let f = |group, driver: Option<&str>, mine: bool, allowed| Filter {
            group,
            driver: driver.map(str::to_owned),
            mine: mine.then_some(1000),
            allowed,
        };
        assert_eq!(
            shown(&f(Some(11), None, false, false)),
            ["04:00.0", "05:01.0", "05:02.0"]
        );
        assert_eq!(
            shown(&f(None, Some("vfio-pci"), false, false)),
            ["01:00.0", "05:02.0"]
        );
        assert_eq!(shown(&f(None, None, true, false)), ["01:00.0"]);
        assert_eq!(shown(&f(None, None, false, true)), ["01:00.0", "05:02.0"]);
        assert_eq!(
            shown(&f(Some(11), Some("vfio-pci"), false, true)),
            ["05:02.0"]
        );
        assert!(shown(&f(Some(11), None, true, false)).is_empty());
        assert_eq!(
            f(Some(11), Some("e1000"), true, true).describe(),
            "--group 11 --driver e1000 --mine --allowed"
        );
        // By group: the groups with a device that passes, whole.
        let groups = listing.groups(
            &f(None, Some("e1000"), false, false),
            ViabilityRule::DmaOwnership,
        );
        assert_eq!(groups.len(), 1);
        assert_eq!(
            addresses(&groups[0].devices),
            ["04:00.0", "05:01.0", "05:02.0"]
        );
        // Mine: every device of a group I hold, the members nothing moved included.
        let mut held = listing.clone();
        held.devices[3].holder = held.devices[0].holder.clone();
        let mine = f(None, None, true, false);
        let kept: Vec<&DeviceInfo> = held
            .devices
            .iter()
            .filter(|d| mine.matches(d, &held))
            .collect();
        assert_eq!(
            addresses(&kept),
            ["01:00.0", "04:00.0", "05:01.0", "05:02.0"]
        );
    }
}
