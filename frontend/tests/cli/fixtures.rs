//! What several areas share: the fake helper's devices and plans, the offline tests' lab policy.

use vfio_gate_protocol::{
    BusyReason, DeviceInfo, Driver, Holder, MemberKind, PciAddress, Plan, PlanStep, Reservation,
    Response, RuleRef, StepAction, WireError,
};

use crate::util::{HostFixture, header_line};

pub fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

pub fn rule() -> RuleRef {
    RuleRef {
        name: "lab NIC for vm-users".into(),
        file: "/etc/vfio-gate/policy.toml".into(),
        line: 12,
    }
}

pub fn devices() -> Vec<DeviceInfo> {
    let dev = |a: &str, vendor, device, class, driver: Option<&str>, group| DeviceInfo {
        address: addr(a),
        vendor,
        device,
        subsystem_vendor: vendor,
        subsystem_device: 0,
        class,
        driver: driver.map(str::to_owned),
        driver_override: None,
        iommu_group: group,
        allowed: vec![],
        holder: None,
        reserved: None,
    };
    let mut nic = dev(
        "0000:01:00.0",
        0x8086,
        0x10d3,
        0x020000,
        Some("e1000e"),
        Some(8),
    );
    nic.allowed = vec![Driver::VfioPci];
    let mut nvme = dev(
        "0000:03:00.0",
        0x1b36,
        0x0010,
        0x010802,
        Some("pci-stub"),
        Some(10),
    );
    // Held by `vfio-gate run` (uid 0 is root in every /etc/passwd).
    nvme.holder = Some(Holder {
        uid: 0,
        driver: Driver::PciStub,
        since: 1_700_000_000,
        group: Some(10),
        tied: true,
    });
    let mut edu = dev(
        "0000:05:02.0",
        0x1234,
        0x11e8,
        0x00ff00,
        Some("vfio-pci"),
        Some(11),
    );
    edu.allowed = vec![Driver::VfioPci, Driver::PciStub];
    edu.driver_override = Some("vfio-pci".into());
    edu.holder = Some(Holder {
        uid: 4242,
        driver: Driver::VfioPci,
        since: 1_700_000_000,
        group: Some(11),
        tied: false,
    });
    let odd = dev("0001:00:00.0", 0xabcd, 0x0001, 0x120000, None, None);
    // Out of order on purpose: the table sorts by address.
    vec![edu, odd, nic, nvme]
}

/// The test guest as the helper lists it for alice (uid 1000) under README's policy: the
/// 82574L at 01:00.0 and group 11 reserved (the NIC and the e1000 on pci-stub, the edu on
/// vfio-pci), alice allowed vfio-pci for the NIC and the edu, and holding group 11 through
/// `vfio-gate run` (the edu taken as it was; the e1000 kept, so not in her lease).
pub fn guest_list() -> Vec<DeviceInfo> {
    let reserve = |line| RuleRef {
        name: if line == 20 {
            "the lab NIC, parked from boot".into()
        } else {
            "group 11, held from boot".into()
        },
        file: "/etc/vfio-gate/policy.toml".into(),
        line,
    };
    let dev = |a: &str, vendor, device, class, driver: Option<&str>, group| DeviceInfo {
        address: addr(a),
        vendor,
        device,
        subsystem_vendor: if vendor == 0x1b36 { 0x1af4 } else { vendor },
        subsystem_device: 0x1100,
        class,
        driver: driver.map(str::to_owned),
        driver_override: None,
        iommu_group: group,
        allowed: vec![],
        holder: None,
        reserved: None,
    };
    let display = dev(
        "00:02.0",
        0x1234,
        0x1111,
        0x030000,
        Some("bochs-drm"),
        Some(2),
    );
    let mut nic = dev(
        "01:00.0",
        0x8086,
        0x10d3,
        0x020000,
        Some("pci-stub"),
        Some(8),
    );
    nic.driver_override = Some("pci-stub".into());
    nic.allowed = vec![Driver::VfioPci];
    nic.reserved = Some(Reservation {
        driver: Driver::PciStub,
        rule: reserve(20),
        companion_of: None,
    });
    let nvme = dev("03:00.0", 0x1b36, 0x0010, 0x010802, Some("nvme"), Some(10));
    let bridge = dev("04:00.0", 0x1b36, 0x000e, 0x060400, None, Some(11));
    let mut e1000 = dev(
        "05:01.0",
        0x8086,
        0x100e,
        0x020000,
        Some("pci-stub"),
        Some(11),
    );
    e1000.driver_override = Some("pci-stub".into());
    e1000.reserved = Some(Reservation {
        driver: Driver::PciStub,
        rule: reserve(25),
        companion_of: Some(addr("05:02.0")),
    });
    let mut edu = dev(
        "05:02.0",
        0x1234,
        0x11e8,
        0x00ff00,
        Some("vfio-pci"),
        Some(11),
    );
    edu.driver_override = Some("vfio-pci".into());
    edu.allowed = vec![Driver::VfioPci];
    edu.reserved = Some(Reservation {
        driver: Driver::VfioPci,
        rule: reserve(25),
        companion_of: None,
    });
    edu.holder = Some(Holder {
        uid: 1000,
        driver: Driver::VfioPci,
        since: 1_700_000_000,
        group: Some(11),
        tied: true,
    });
    vec![display, nic, nvme, bridge, e1000, edu]
}

/// The test guest's IOMMU group 11 as `bind 05:02.0 --group` plans it: the edu device to
/// vfio-pci, the e1000 beside it to pci-stub, the bridge left on pcieport.
pub fn group_11_plan() -> Plan {
    let step = |a: &str, kind, vendor, device_id, driver: Option<&str>, action| PlanStep {
        device: addr(a),
        kind,
        vendor,
        device_id,
        driver: driver.map(str::to_owned),
        action,
    };
    Plan {
        group: Some(11),
        steps: vec![
            step(
                "0000:04:00.0",
                MemberKind::Bridge,
                0x1b36,
                0x000e,
                Some("pcieport"),
                StepAction::Keep {
                    reason: "keeps the group viable".into(),
                },
            ),
            step(
                "0000:05:01.0",
                MemberKind::Endpoint,
                0x8086,
                0x100e,
                Some("e1000"),
                StepAction::Bind {
                    driver: Driver::PciStub,
                    rule: companion_rule(),
                },
            ),
            step(
                "0000:05:02.0",
                MemberKind::Endpoint,
                0x1234,
                0x11e8,
                None,
                StepAction::Bind {
                    driver: Driver::VfioPci,
                    rule: rule(),
                },
            ),
        ],
    }
}

pub fn companion_rule() -> RuleRef {
    RuleRef {
        name: "lab companions".into(),
        file: "/etc/vfio-gate/policy.toml".into(),
        line: 20,
    }
}

/// The plan table as printed with the fixture PCI ID database, indented under its title.
pub const GROUP_11_TABLE: &str = "  \
  MEMBER   IDS        NAME                                 KIND      DRIVER    ACTION
  04:00.0  1b36:000e  QEMU PCIe-to-PCI bridge              bridge    pcieport  stays on pcieport: keeps the group viable
  05:01.0  8086:100e  82540EM Gigabit Ethernet Controller  endpoint  e1000     → pci-stub (rule 'lab companions', /etc/vfio-gate/policy.toml:20)
  05:02.0  1234:11e8  QEMU edu device                      endpoint  -         → vfio-pci (rule 'lab NIC for vm-users', /etc/vfio-gate/policy.toml:12)
";

/// The user name /etc/passwd gives `uid`, or the uid as text (what vfio-gate prints).
pub fn passwd_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string() && !f[0].is_empty()).then(|| f[0].to_owned())
        })
        .unwrap_or_else(|| uid.to_string())
}

/// A stand-in for /dev/vfio/11: a file of ours with `mode`.
pub fn fake_node(mode: u32) -> (tempfile::TempDir, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("11");
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

pub fn own_uid(path: &str) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().uid()
}

/// The uid the tests (and so vfio-gate) run as.
pub fn my_uid() -> u32 {
    let (_dir, path) = fake_node(0o600);
    own_uid(&path)
}

/// The reason the real helper gives at its connection limit.
pub fn at_limit() -> Response {
    Response::Error(WireError::Busy {
        why: BusyReason::ConnectionLimit { limit: 64 },
        detail: "the helper is serving 64 connections, its limit; retry in a moment".into(),
    })
}

/// The policy of the offline tests: what the test guest's lab could run.
pub const LAB_POLICY: &str = r#"version = 1

[settings]
admins = { users = ["secops"] }

[[rule]]
name       = "vm-users: the edu device"
subjects   = { groups = ["vm-users"] }
devices    = [{ vendor = "1234", device = "11e8" }]
drivers    = ["vfio-pci"]
companions = ["pci-stub"]

[[rule]]
name     = "vm-users: the test NIC"
subjects = { groups = ["vm-users"] }
devices  = [{ address = "01:00.0", vendor = "8086", device = "10d3" }]
drivers  = ["vfio-pci", "pci-stub"]

[[rule]]
name     = "alice: the display"
subjects = { users = ["alice"] }
devices  = [{ vendor = "1234", device = "1111" }]
drivers  = ["vfio-pci"]

[[rule]]
name     = "alice: the NVMe"
subjects = { users = ["alice"] }
devices  = [{ vendor = "1b36", device = "0010" }]
drivers  = ["vfio-pci"]

[[rule]]
name     = "dave: by uid, he is in LDAP only"
subjects = { uids = [5003] }
devices  = [{ vendor = "1234", device = "11e8" }]
drivers  = ["vfio-pci"]

[[deny]]
name    = "never storage"
devices = [{ class = "01" }]
"#;

pub const BOB_DROP_IN: &str = r#"# bob's VMs must not park devices
[[deny]]
name     = "bob never parks devices on pci-stub"
subjects = { users = ["bob"] }
devices  = [{ address = "*:*:*.*" }]
drivers  = ["pci-stub"]
"#;

pub fn lab() -> HostFixture {
    HostFixture::new(LAB_POLICY, &[("50-bob.toml", BOB_DROP_IN)])
}

/// "'NAME' (FILE:LINE)" for a rule of the lab policy (or, with `drop_in`, of its drop-in).
pub fn lab_rule(fx: &HostFixture, name: &str) -> String {
    let line = header_line(LAB_POLICY, name);
    format!("'{name}' ({}:{line})", fx.policy().display())
}

/// The guest-like reservations: the 82574L at 01:00.0 held on pci-stub, the edu at 05:02.0 on
/// vfio-pci with its IOMMU group's other endpoint (the e1000 at 05:01.0) on pci-stub.
pub const RESERVE_POLICY: &str = r#"version = 1

[[reserve]]
name    = "the test NIC, held from boot"
devices = [{ address = "01:00.0", vendor = "8086", device = "10d3" }]
driver  = "pci-stub"

[[reserve]]
name       = "the edu, with its group"
devices    = [{ address = "05:02.0", vendor = "1234", device = "11e8" }]
driver     = "vfio-pci"
companions = "pci-stub"

[[rule]]
name       = "vm-users: the edu device"
subjects   = { groups = ["vm-users"] }
devices    = [{ address = "05:02.0", vendor = "1234", device = "11e8" }]
drivers    = ["vfio-pci"]
companions = ["pci-stub"]
"#;

/// "'NAME' (FILE:LINE)" for a rule of [`RESERVE_POLICY`] as the fixture `fx` holds it.
pub fn reserve_rule(fx: &HostFixture, name: &str) -> String {
    let line = header_line(RESERVE_POLICY, name);
    format!("'{name}' ({}:{line})", fx.policy().display())
}
