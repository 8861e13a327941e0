//! `vfio-gate release`: give groups back (the group of a device, every group you hold, or every
//! group a user holds), then say where each device went, warning about any that did not go back
//! to the driver it had before.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use vfio_gate_protocol::{
    ReleaseReport, ReleaseTarget, ReleasedGroup, Request, Response, RestoredDevice,
};

use super::{Context, name_the_holder, unexpected};
use crate::cli::ReleaseArgs;
use crate::error::{Error, Status};
use crate::json::{self, User};
use crate::messages;
use crate::render::group_name;
use crate::users::{self, ETC_ROOT, UserNames};

/// `vfio-gate release ADDR|--all|--user NAME`. A device that did not go back to its previous
/// driver is still released (the lease is gone): a warning on stderr, exit status 0. Releasing
/// nothing is not an error either.
pub fn run(ctx: &Context<'_>, args: &ReleaseArgs, out: &mut impl Write) -> Result<Status, Error> {
    let request = Request::Release {
        target: args.target(),
    };
    let report = match ctx.client.call(&request).map_err(name_the_holder)? {
        Response::Released(report) => report,
        other => return Err(unexpected(&request, &other)),
    };
    warn_unrestored(&report);
    let me = users::my_uid();
    let users = UserNames::load(Path::new(ETC_ROOT), &owner_uids(&report));
    ctx.print(out, &ReleaseJson::new(&report, &users), || {
        release_summary(&report, me, &users, &nothing_released(args, me))
    })?;
    Ok(Status::Ok)
}

/// The line printed when nothing was released.
fn nothing_released(args: &ReleaseArgs, me: u32) -> String {
    match (args.target(), &args.user) {
        (ReleaseTarget::User(uid), Some(user)) if uid != me => {
            format!("Nothing to release: {} holds no device.", user.display())
        }
        (ReleaseTarget::Device(d), _) => {
            format!("Nothing to release: nobody holds {}.", d.short())
        }
        _ => "Nothing to release: you hold no device.".to_owned(),
    }
}

/// Warns on stderr about each device that did not go back to the driver it had before.
pub(crate) fn warn_unrestored(report: &ReleaseReport) {
    for d in released_devices(report) {
        if let Some(warning) = release_warning(d) {
            messages::warn(&warning);
        }
    }
}

/// `release --json`: each group given back (in group order) with who held it and where each
/// device went, and whether every device went back to the driver it had before.
#[derive(Debug, Serialize)]
pub struct ReleaseJson {
    pub groups: Vec<ReleasedGroupJson>,
    pub restored_as_expected: bool,
}

#[derive(Debug, Serialize)]
pub struct ReleasedGroupJson {
    pub iommu_group: Option<u32>,
    /// Who held it.
    pub holder: User,
    /// The devices vfio-gate had moved, in address order.
    pub devices: Vec<RestoredJson>,
}

#[derive(Debug, Serialize)]
pub struct RestoredJson {
    pub address: String,
    pub short: String,
    /// The driver it had before the bind.
    pub expected_driver: Option<String>,
    /// The driver it is on now.
    pub restored_driver: Option<String>,
    pub restored_as_expected: bool,
}

impl ReleaseJson {
    pub fn new(r: &ReleaseReport, users: &UserNames) -> Self {
        let mut groups: Vec<&ReleasedGroup> = r.groups.iter().collect();
        groups.sort_by_key(|g| g.group);
        Self {
            groups: groups
                .into_iter()
                .map(|g| {
                    let mut devices: Vec<&RestoredDevice> = g.devices.iter().collect();
                    devices.sort_by_key(|d| d.device);
                    ReleasedGroupJson {
                        iommu_group: g.group,
                        holder: User::new(g.owner_uid, users),
                        devices: devices
                            .into_iter()
                            .map(|d| RestoredJson {
                                address: json::address(d.device),
                                short: d.device.short(),
                                expected_driver: d.expected_driver.clone(),
                                restored_driver: d.restored_driver.clone(),
                                restored_as_expected: restored_as_expected(d),
                            })
                            .collect(),
                    }
                })
                .collect(),
            restored_as_expected: released_devices(r).into_iter().all(restored_as_expected),
        }
    }
}

/// True when the device went back to the driver it had before the bind.
pub fn restored_as_expected(d: &RestoredDevice) -> bool {
    d.restored_driver == d.expected_driver
}

/// The uids of the users whose groups a release gave back.
pub fn owner_uids(r: &ReleaseReport) -> BTreeSet<u32> {
    r.groups.iter().map(|g| g.owner_uid).collect()
}

/// What `release` prints on stdout: each group given back (in group order), then one line per
/// device in it, in address order. A group held by someone other than `me` says whose it was.
/// `nothing` is the line printed when nothing was released.
pub fn release_summary(r: &ReleaseReport, me: u32, users: &UserNames, nothing: &str) -> String {
    if r.groups.is_empty() {
        return format!("{nothing}\n");
    }
    let mut groups: Vec<&ReleasedGroup> = r.groups.iter().collect();
    groups.sort_by_key(|g| g.group);
    let mut text = String::new();
    for g in groups {
        let mut title = format!("Released {}", group_name(g.group));
        if g.owner_uid != me {
            title.push_str(&format!(" (held by {})", users.display(g.owner_uid)));
        }
        if g.devices.is_empty() {
            text.push_str(&format!("{title}; vfio-gate had moved no device in it.\n"));
            continue;
        }
        text.push_str(&title);
        text.push_str(":\n");
        let mut devices: Vec<&RestoredDevice> = g.devices.iter().collect();
        devices.sort_by_key(|d| d.device);
        for d in devices {
            text.push_str("  ");
            text.push_str(&restored_line(d));
            text.push('\n');
        }
    }
    text
}

/// "05:01.0 is back on e1000", or what became of it instead.
pub fn restored_line(d: &RestoredDevice) -> String {
    let addr = d.device.short();
    match (&d.expected_driver, &d.restored_driver) {
        (Some(e), Some(now)) if e == now => format!("{addr} is back on {now}"),
        (None, None) => format!("{addr} is released (it had no driver before, and has none now)"),
        (_, Some(now)) => format!("{addr} is released, and is now on {now}"),
        (_, None) => format!("{addr} is released, and now has no driver"),
    }
}

/// Every device a release gave back, in group then address order.
pub fn released_devices(r: &ReleaseReport) -> Vec<&RestoredDevice> {
    let mut groups: Vec<&ReleasedGroup> = r.groups.iter().collect();
    groups.sort_by_key(|g| g.group);
    let mut all = Vec::new();
    for g in groups {
        let mut devices: Vec<&RestoredDevice> = g.devices.iter().collect();
        devices.sort_by_key(|d| d.device);
        all.extend(devices);
    }
    all
}

/// Why a released device needs a look, when it did not go back to its previous driver.
pub fn release_warning(d: &RestoredDevice) -> Option<String> {
    if restored_as_expected(d) {
        return None;
    }
    let addr = d.device;
    let now = d
        .restored_driver
        .as_deref()
        .map_or_else(|| "has no driver".to_owned(), |d| format!("is on {d}"));
    Some(match &d.expected_driver {
        Some(expected) => {
            let module = expected.replace('-', "_");
            format!(
                "{} did not go back to its host driver {expected}: it {now}. Check the kernel \
                 log (dmesg) for errors from {expected}, and whether its module is loaded \
                 (lsmod | grep {module}; an admin can load it with modprobe {module}). An admin \
                 can then re-probe the device: echo {addr} > /sys/bus/pci/drivers_probe",
                addr.short()
            )
        }
        None => format!(
            "{} had no driver before it was bound, but it {now} after the release (a driver \
             may have been loaded in the meantime). Check that this is what you want",
            addr.short()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::addr;

    fn restored(a: &str, expected: Option<&str>, restored: Option<&str>) -> RestoredDevice {
        RestoredDevice {
            device: addr(a),
            expected_driver: expected.map(str::to_owned),
            restored_driver: restored.map(str::to_owned),
        }
    }

    fn group(g: Option<u32>, owner_uid: u32, devices: Vec<RestoredDevice>) -> ReleasedGroup {
        ReleasedGroup {
            group: g,
            owner_uid,
            devices,
        }
    }

    #[test]
    fn release_summary_lists_each_device_in_address_order() {
        let r = ReleaseReport {
            groups: vec![group(
                Some(11),
                1000,
                vec![
                    restored("05:02.0", None, None),
                    restored("05:01.0", Some("e1000"), Some("e1000")),
                ],
            )],
        };
        let users = UserNames::default();
        assert_eq!(
            release_summary(&r, 1000, &users, "-"),
            "Released IOMMU group 11:\n  \
             05:01.0 is back on e1000\n  \
             05:02.0 is released (it had no driver before, and has none now)\n"
        );
        assert!(
            released_devices(&r)
                .into_iter()
                .all(|d| release_warning(d).is_none())
        );
        let empty = ReleaseReport {
            groups: vec![group(None, 1000, vec![])],
        };
        assert_eq!(
            release_summary(&empty, 1000, &users, "-"),
            "Released no IOMMU group; vfio-gate had moved no device in it.\n"
        );
        let nothing = ReleaseReport { groups: vec![] };
        assert_eq!(
            release_summary(&nothing, 1000, &users, "Nothing to release."),
            "Nothing to release.\n"
        );
    }

    #[test]
    fn release_summary_groups_devices_and_names_other_holders() {
        let users = UserNames::from_pairs([(1001, "bob")]);
        let r = ReleaseReport {
            groups: vec![
                group(
                    Some(12),
                    1001,
                    vec![restored("06:00.0", Some("e1000e"), Some("e1000e"))],
                ),
                group(
                    Some(11),
                    4242,
                    vec![
                        restored("05:02.0", None, None),
                        restored("05:01.0", Some("e1000"), Some("pci-stub")),
                    ],
                ),
            ],
        };
        assert_eq!(owner_uids(&r), BTreeSet::from([1001, 4242]));
        assert_eq!(
            release_summary(&r, 1001, &users, "-"),
            "Released IOMMU group 11 (held by 4242):\n  \
             05:01.0 is released, and is now on pci-stub\n  \
             05:02.0 is released (it had no driver before, and has none now)\n\
             Released IOMMU group 12:\n  \
             06:00.0 is back on e1000e\n"
        );
        let order: Vec<String> = released_devices(&r)
            .iter()
            .map(|d| d.device.short())
            .collect();
        assert_eq!(order, ["05:01.0", "05:02.0", "06:00.0"]);
    }

    #[test]
    fn release_to_another_driver_warns_with_what_to_check() {
        let d = restored("01:00.0", Some("snd_hda_intel"), None);
        assert_eq!(
            restored_line(&d),
            "01:00.0 is released, and now has no driver"
        );
        let w = release_warning(&d).unwrap();
        assert!(
            w.starts_with(
                "01:00.0 did not go back to its host driver snd_hda_intel: it has no driver."
            ),
            "{w}"
        );
        assert!(
            w.contains("dmesg") && w.contains("modprobe snd_hda_intel"),
            "{w}"
        );
        let w = release_warning(&restored("01:00.0", Some("vfio-pci"), Some("pci-stub"))).unwrap();
        assert!(
            w.contains("it is on pci-stub") && w.contains("lsmod | grep vfio_pci"),
            "{w}"
        );
        assert!(release_warning(&restored("01:00.0", None, Some("e1000e"))).is_some());
    }
}
