//! `vfio-gate list`: every PCI device the helper sees, as a table (ids, class, driver, group,
//! what you may bind it to, who holds it, and its name) or as JSON.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use vfio_gate_protocol::{DeviceInfo, Driver, Request, Response, RuleRef};

use super::{Context, unexpected};
use crate::cli::ListArgs;
use crate::error::{Error, Status};
use crate::json::{self, HolderJson, Reserved};
use crate::pci_ids::{PciNames, Wanted};
use crate::render::{Table, ids, join_words};
use crate::users::{ETC_ROOT, UserNames};

/// `vfio-gate list`.
pub fn run(ctx: &Context<'_>, _args: &ListArgs, out: &mut impl Write) -> Result<Status, Error> {
    let request = Request::List;
    let mut devices = match ctx.client.call(&request)? {
        Response::Devices(devices) => devices,
        other => return Err(unexpected(&request, &other)),
    };
    devices.sort_by_key(|d| d.address);
    let users = UserNames::load(Path::new(ETC_ROOT), &holder_uids(&devices));
    let doc = DevicesJson {
        source: "helper",
        devices: devices.iter().map(|d| device_json(d, &users)).collect(),
    };
    ctx.print(out, &doc, || text(ctx, &devices))?;
    Ok(Status::Ok)
}

/// `list --json`.
#[derive(Debug, Serialize)]
pub struct DevicesJson {
    /// `helper`: the helper answered.
    pub source: &'static str,
    /// The devices, in address order.
    pub devices: Vec<DeviceJson>,
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
    /// The drivers the policy lets you bind it to.
    pub allowed: Option<Vec<&'static str>>,
    /// Who holds it through vfio-gate.
    pub holder: Option<HolderJson>,
    pub reserved: Option<Reserved>,
}

/// `d` under `--json`.
pub fn device_json(d: &DeviceInfo, users: &UserNames) -> DeviceJson {
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
        allowed: Some(d.allowed.iter().map(|a| a.as_str()).collect()),
        holder: d.holder.as_ref().map(|h| HolderJson::new(h, users)),
        reserved: d.reserved.as_ref().map(Reserved::from),
    }
}

fn text(ctx: &Context<'_>, devices: &[DeviceInfo]) -> String {
    if devices.is_empty() {
        return "The helper sees no PCI devices.\n".to_owned();
    }
    let names = ctx.pci_names(&wanted_names(devices));
    let users = UserNames::load(Path::new(ETC_ROOT), &holder_uids(devices));
    let mut text = device_table(devices, &names, &users).to_string();
    text.push_str(&reserved_footnote(devices));
    text
}

/// The ids of `devices` whose names the device table shows.
pub fn wanted_names(devices: &[DeviceInfo]) -> Wanted {
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

/// The `list` table, sorted by address. The RESERVED column (the driver a `[[reserve]]` holds
/// the device on from boot, with `*` for a companion of a reserved device) is there only when
/// some device is reserved; the NAME column is left out when the PCI ID database gave no names
/// at all (it is not installed), rather than being a column of dashes.
pub fn device_table(devices: &[DeviceInfo], names: &PciNames, users: &UserNames) -> Table {
    let with_names = !names.is_empty();
    let with_reserved = devices.iter().any(|d| d.reserved.is_some());
    let mut headers = vec![
        "ADDRESS", "IDS", "CLASS", "DRIVER", "GROUP", "ALLOWED", "HOLDER",
    ];
    if with_reserved {
        headers.push("RESERVED");
    }
    if with_names {
        headers.push("NAME");
    }
    let mut table = Table::new(headers);
    let mut sorted: Vec<&DeviceInfo> = devices.iter().collect();
    sorted.sort_by_key(|d| d.address);
    for d in sorted {
        let mut row = vec![
            d.address.short(),
            ids(d.vendor, d.device),
            names
                .class_name(d.class)
                .map_or_else(|| format!("{:06x}", d.class), str::to_owned),
            d.driver.clone().unwrap_or_else(|| "-".to_owned()),
            d.iommu_group
                .map_or_else(|| "-".to_owned(), |g| g.to_string()),
            drivers(&d.allowed),
            d.holder.as_ref().map_or_else(
                || "-".to_owned(),
                |h| {
                    if h.tied {
                        format!("{} (run)", users.display(h.uid))
                    } else {
                        users.display(h.uid)
                    }
                },
            ),
        ];
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
pub fn reserved_footnote(devices: &[DeviceInfo]) -> String {
    let mut sorted: Vec<&DeviceInfo> = devices.iter().collect();
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
        let t = device_table(
            &[held, other, bare],
            &PciNames::default(),
            &UserNames::default(),
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
        let devices = [edu, plain, e1000, nic];
        let t = device_table(&devices, &PciNames::default(), &UserNames::default());
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
        let plain = [device("03:00.0", Some("nvme"), Some(10))];
        let t = device_table(&plain, &PciNames::default(), &UserNames::default()).to_string();
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
            &wanted_names(&[d.clone(), unknown.clone()]),
        );
        assert_eq!(holder_uids(&[d.clone()]), BTreeSet::from([1000]));
        let users = UserNames::from_pairs([(1000, "alice")]);
        let text = device_table(&[unknown, d], &names, &users).to_string();
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
}
