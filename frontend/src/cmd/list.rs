//! `vfio-gate list`: every PCI device the helper sees, as a table (ids, class, driver, group,
//! what you may bind it to, who holds it, and its name) or as the helper's list in JSON.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use vfio_gate_protocol::{DeviceInfo, Driver, Request, Response};

use super::{Context, unexpected};
use crate::cli::ListArgs;
use crate::error::{Error, Status};
use crate::pci_ids::{PciNames, Wanted};
use crate::render::{Table, ids};
use crate::users::{ETC_ROOT, UserNames};

/// `vfio-gate list`.
pub fn run(ctx: &Context<'_>, _args: &ListArgs, out: &mut impl Write) -> Result<Status, Error> {
    let request = Request::List;
    let devices = match ctx.client.call(&request)? {
        Response::Devices(devices) => devices,
        other => return Err(unexpected(&request, &other)),
    };
    ctx.print(out, &devices, || text(ctx, &devices))?;
    Ok(Status::Ok)
}

fn text(ctx: &Context<'_>, devices: &[DeviceInfo]) -> String {
    if devices.is_empty() {
        return "The helper sees no PCI devices.\n".to_owned();
    }
    let names = ctx.pci_names(&wanted_names(devices));
    let users = UserNames::load(Path::new(ETC_ROOT), &holder_uids(devices));
    device_table(devices, &names, &users).to_string()
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

/// The `list` table, sorted by address. The NAME column is left out when the PCI ID database
/// gave no names at all (it is not installed), rather than being a column of dashes.
pub fn device_table(devices: &[DeviceInfo], names: &PciNames, users: &UserNames) -> Table {
    let with_names = !names.is_empty();
    let mut headers = vec![
        "ADDRESS", "IDS", "CLASS", "DRIVER", "GROUP", "ALLOWED", "HOLDER",
    ];
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
