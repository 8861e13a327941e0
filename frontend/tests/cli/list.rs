//! `vfio-gate list`: the device table, and its JSON.

use std::collections::BTreeSet;
use std::process::Stdio;

use vfio_gate_protocol::{Request, Response};

use crate::fixtures::*;
use crate::util::{self, FakeHelper, HostFixture, Reply, against, pci_ids_fixture, run};

#[test]
fn prints_a_table_with_names_from_the_pci_id_database() {
    let fake = FakeHelper::answering(Response::Devices(devices()));
    let mut cmd = against(&fake, &["list", "--pci-ids"]);
    cmd.arg(pci_ids_fixture());
    let r = run(cmd);
    r.code(0).stderr_empty();
    let lines: Vec<&str> = r.stdout.lines().collect();
    let expected = [
        "ADDRESS       IDS        CLASS                           DRIVER    GROUP  ALLOWED            HOLDER      NAME",
        "01:00.0       8086:10d3  Ethernet controller             e1000e    8      vfio-pci           -           Intel Corporation 82574L Gigabit Network Connection",
        "03:00.0       1b36:0010  Non-Volatile memory controller  pci-stub  10     -                  root (run)  Red Hat, Inc. device 0010",
        "05:02.0       1234:11e8  Unclassified device             vfio-pci  11     vfio-pci,pci-stub  4242        Technical Corp. QEMU edu device",
        "0001:00:00.0  abcd:0001  Processing accelerators         -         -      -                  -           -",
    ];
    if lines != expected {
        r.fail(&format!("expected the table\n{}", expected.join("\n")));
    }
    assert_eq!(fake.requests(), vec![Request::List]);
}

#[test]
fn without_a_pci_id_database_shows_ids_only() {
    let fake = FakeHelper::answering(Response::Devices(devices()));
    let r = run(against(
        &fake,
        &["list", "--pci-ids", "/nonexistent/pci.ids"],
    ));
    r.code(0).stderr_empty();
    let header = r.stdout.lines().next().unwrap_or_default();
    if header.contains("NAME") || !header.ends_with("HOLDER") {
        r.fail("the NAME column should be left out");
    }
    r.stdout_has("01:00.0       8086:10d3  Network controller");
}

#[test]
fn json_is_the_device_list_with_stable_field_names() {
    let fake = FakeHelper::answering(Response::Devices(devices()));
    let r = run(against(&fake, &["--json", "list"]));
    r.code(0).stderr_empty();
    let v = r.json();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["source"], "helper");
    let list = v["devices"]
        .as_array()
        .unwrap_or_else(|| r.fail("no devices"));
    assert_eq!(list.len(), 4);
    let order: Vec<&str> = list.iter().map(|d| d["short"].as_str().unwrap()).collect();
    assert_eq!(order, ["01:00.0", "03:00.0", "05:02.0", "0001:00:00.0"]);
    let keys: BTreeSet<&str> = list[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "address",
            "short",
            "vendor",
            "device",
            "subsystem_vendor",
            "subsystem_device",
            "class",
            "driver",
            "driver_override",
            "iommu_group",
            "allowed",
            "holder",
            "reserved",
        ])
    );
    let edu = list
        .iter()
        .find(|d| d["address"] == "0000:05:02.0")
        .unwrap_or_else(|| r.fail("05:02.0 missing"));
    assert_eq!(edu["vendor"], "1234");
    assert_eq!(edu["device"], "11e8");
    assert_eq!(edu["subsystem_device"], "0000");
    assert_eq!(edu["class"], "00ff00");
    assert_eq!(edu["driver"], "vfio-pci");
    assert_eq!(edu["driver_override"], "vfio-pci");
    assert_eq!(edu["allowed"], serde_json::json!(["vfio-pci", "pci-stub"]));
    assert_eq!(edu["holder"]["uid"], 4242);
    assert_eq!(edu["holder"]["since"], 1_700_000_000);
    assert_eq!(edu["holder"]["tied"], false);
    let nvme = list
        .iter()
        .find(|d| d["address"] == "0000:03:00.0")
        .unwrap_or_else(|| r.fail("03:00.0 missing"));
    assert_eq!(
        nvme["holder"],
        serde_json::json!({"uid": 0, "user": "root", "since": 1_700_000_000, "tied": true})
    );
    assert_eq!(edu["iommu_group"], 11);
    assert_eq!(list[3]["iommu_group"], serde_json::Value::Null);
    assert_eq!(list[3]["allowed"], serde_json::json!([]));
    assert_eq!(fake.requests(), vec![Request::List]);
}

#[test]
fn an_empty_list_says_so() {
    let fake = FakeHelper::answering(Response::Devices(vec![]));
    run(against(&fake, &["list"]))
        .code(0)
        .stdout_has("no PCI devices");
    let fake = FakeHelper::answering(Response::Devices(vec![]));
    let r = run(against(&fake, &["list", "--json"]));
    assert_eq!(
        r.code(0).json(),
        serde_json::json!({"schema": 1, "source": "helper", "devices": []})
    );
}

#[test]
fn a_closed_stdout_exits_quietly() {
    let (go, wait) = std::sync::mpsc::channel();
    let fake = FakeHelper::start(vec![Reply::AnswerWhen(wait, Response::Devices(devices()))]);
    let mut child = against(&fake, &["list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the helper answers, so the first write hits a broken pipe.
    drop(child.stdout.take());
    go.send(()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(stderr, "");
    fake.requests();
}

/// The reservations of the guest-like policy: 01:00.0 on pci-stub, 05:02.0 on vfio-pci with its
/// group's e1000 as a companion on pci-stub.
fn reserved_devices() -> Vec<vfio_gate_protocol::DeviceInfo> {
    use vfio_gate_protocol::{DeviceInfo, Driver, Reservation, RuleRef};
    let reserve = |name: &str, line| RuleRef {
        name: name.into(),
        file: "/etc/vfio-gate/policy.toml".into(),
        line,
    };
    let mut list = devices();
    for d in &mut list {
        if d.address == addr("01:00.0") {
            d.reserved = Some(Reservation {
                driver: Driver::PciStub,
                rule: reserve("the test NIC, held from boot", 3),
                companion_of: None,
            });
        }
        if d.address == addr("05:02.0") {
            d.reserved = Some(Reservation {
                driver: Driver::VfioPci,
                rule: reserve("the edu, with its group", 8),
                companion_of: None,
            });
        }
    }
    let mut e1000: DeviceInfo = list[2].clone();
    e1000.address = addr("05:01.0");
    e1000.device = 0x100e;
    e1000.driver = Some("pci-stub".into());
    e1000.iommu_group = Some(11);
    e1000.allowed = vec![];
    e1000.reserved = Some(Reservation {
        driver: Driver::PciStub,
        rule: reserve("the edu, with its group", 8),
        companion_of: Some(addr("05:02.0")),
    });
    list.push(e1000);
    list
}

#[test]
fn reserved_devices_get_a_column_and_a_line_per_reservation() {
    let fake = FakeHelper::start(vec![
        Reply::Answer(Response::Devices(reserved_devices())),
        Reply::Answer(Response::Devices(reserved_devices())),
    ]);
    let r = run(against(&fake, &["list", "--pci-ids", "/nonexistent"]));
    r.code(0).stderr_empty();
    let expected = "\
ADDRESS       IDS        CLASS                    DRIVER    GROUP  ALLOWED            HOLDER      RESERVED
01:00.0       8086:10d3  Network controller       e1000e    8      vfio-pci           -           pci-stub
03:00.0       1b36:0010  Mass storage controller  pci-stub  10     -                  root (run)  -
05:01.0       8086:100e  Network controller       pci-stub  11     -                  -           pci-stub*
05:02.0       1234:11e8  Unclassified device      vfio-pci  11     vfio-pci,pci-stub  4242        vfio-pci
0001:00:00.0  abcd:0001  Processing accelerators  -         -      -                  -           -

Held from boot: 01:00.0 on pci-stub by 'the test NIC, held from boot' (/etc/vfio-gate/policy.toml:3)
Held from boot: 05:02.0 on vfio-pci and 05:01.0 on pci-stub as a companion of 05:02.0 by 'the edu, with its group' (/etc/vfio-gate/policy.toml:8)
";
    if r.stdout != expected {
        r.fail(&format!("expected\n{expected}"));
    }
    let r = run(against(&fake, &["list", "--json"]));
    let v = r.code(0).stderr_empty().json();
    let e1000 = v["devices"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["address"] == "0000:05:01.0"))
        .unwrap_or_else(|| r.fail("05:01.0 missing"))
        .clone();
    assert_eq!(e1000["reserved"]["driver"], "pci-stub");
    assert_eq!(e1000["reserved"]["companion_of"], "0000:05:02.0");
    assert_eq!(e1000["reserved"]["rule"]["name"], "the edu, with its group");
    assert_eq!(e1000["reserved"]["rule"]["line"], 8);
    let nvme = v["devices"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["address"] == "0000:03:00.0"))
        .unwrap_or_else(|| r.fail("03:00.0 missing"));
    assert_eq!(nvme["reserved"], serde_json::Value::Null);
    fake.requests();
}

/// `list --etc-root` with the fixture accounts (alice is uid 1000), and the fixture PCI ids.
fn list_for_alice(fake: &FakeHelper, accounts: &HostFixture, args: &[&str]) -> util::Run {
    let mut cmd = against(fake, &["list"]);
    cmd.args(args)
        .arg("--etc-root")
        .arg(accounts.root())
        .arg("--pci-ids")
        .arg(pci_ids_fixture());
    run(cmd)
}

/// The guest's list with the holder of group 11 being whoever runs the tests, so `--mine`
/// picks it.
fn guest_held_by_me() -> Vec<vfio_gate_protocol::DeviceInfo> {
    let mut list = guest_list();
    for d in &mut list {
        if let Some(h) = &mut d.holder {
            h.uid = my_uid();
        }
    }
    list
}

#[test]
fn filters_narrow_the_list_and_combine() {
    let answers = (0..9)
        .map(|_| Reply::Answer(Response::Devices(guest_held_by_me())))
        .collect();
    let fake = FakeHelper::start(answers);
    let shown = |args: &[&str]| {
        let mut cmd = against(&fake, &["list", "--json"]);
        cmd.args(args);
        let r = run(cmd);
        let v = r.code(0).stderr_empty().json();
        v["devices"]
            .as_array()
            .unwrap_or_else(|| r.fail("no devices"))
            .iter()
            .map(|d| d["short"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(shown(&["--group", "11"]), ["04:00.0", "05:01.0", "05:02.0"]);
    assert_eq!(shown(&["--driver", "pci-stub"]), ["01:00.0", "05:01.0"]);
    assert_eq!(shown(&["--allowed"]), ["01:00.0", "05:02.0"]);
    // Every device of the groups I hold: the bridge and the kept e1000 too.
    assert_eq!(shown(&["--mine"]), ["04:00.0", "05:01.0", "05:02.0"]);
    assert_eq!(shown(&["--mine", "--allowed"]), ["05:02.0"]);
    assert_eq!(shown(&["--allowed", "--driver", "pci-stub"]), ["01:00.0"]);
    assert_eq!(shown(&["--group", "8", "--mine"]), Vec::<String>::new());
    // Text: the same table, fewer rows; and what matched nothing.
    let r = run(against(
        &fake,
        &["list", "--driver", "pci-stub", "--pci-ids", "/nonexistent"],
    ));
    let rows: Vec<&str> = r.code(0).stderr_empty().stdout.lines().collect();
    assert!(rows[0].starts_with("ADDRESS  IDS        CLASS"), "{rows:?}");
    assert!(rows[1].starts_with("01:00.0  8086:10d3"), "{rows:?}");
    assert!(rows[2].starts_with("05:01.0  8086:100e"), "{rows:?}");
    assert_eq!(
        rows[3..],
        [
            "",
            "Held from boot: 01:00.0 on pci-stub by 'the lab NIC, parked from boot' (/etc/vfio-gate/policy.toml:20)",
            "Held from boot: 05:01.0 on pci-stub as a companion of 05:02.0 by 'group 11, held from boot' (/etc/vfio-gate/policy.toml:25)",
        ]
    );
    run(against(
        &fake,
        &["list", "--group", "99", "--driver", "e1000"],
    ))
    .code(0)
    .stderr_empty()
    .stdout_has("No device matches --group 99 --driver e1000.\n");
    assert_eq!(fake.requests(), vec![Request::List; 9]);
}

#[test]
fn by_group_shows_each_group_with_its_viability_and_holder() {
    let fx = HostFixture::new("version = 1\n", &[]);
    let fake = FakeHelper::start(vec![
        Reply::Answer(Response::Devices(guest_list())),
        Reply::Answer(Response::Devices(guest_list())),
        Reply::Answer(Response::Devices(guest_list())),
    ]);
    let r = list_for_alice(&fake, &fx, &["--by-group"]);
    r.code(0).stderr_empty();
    let expected = "\
IOMMU group 2: not viable: 00:02.0 is on the host driver bochs-drm
  ADDRESS  IDS        CLASS               DRIVER     ALLOWED  RESERVED  NAME
  00:02.0  1234:1111  Display controller  bochs-drm  -        -         Technical Corp. device 1111

IOMMU group 8: viable
  ADDRESS  IDS        CLASS                DRIVER    ALLOWED   RESERVED  NAME
  01:00.0  8086:10d3  Ethernet controller  pci-stub  vfio-pci  pci-stub  Intel Corporation 82574L Gigabit Network Connection

IOMMU group 10: not viable: 03:00.0 is on the host driver nvme
  ADDRESS  IDS        CLASS                           DRIVER  ALLOWED  RESERVED  NAME
  03:00.0  1b36:0010  Non-Volatile memory controller  nvme    -        -         Red Hat, Inc. device 0010

IOMMU group 11: viable; held by alice (run)
  ADDRESS  IDS        CLASS                DRIVER    ALLOWED   RESERVED   NAME
  04:00.0  1b36:000e  PCI bridge           -         -         -          Red Hat, Inc. QEMU PCIe-to-PCI bridge
  05:01.0  8086:100e  Ethernet controller  pci-stub  -         pci-stub*  Intel Corporation 82540EM Gigabit Ethernet Controller
  05:02.0  1234:11e8  Unclassified device  vfio-pci  vfio-pci  vfio-pci   Technical Corp. QEMU edu device

Held from boot: 01:00.0 on pci-stub by 'the lab NIC, parked from boot' (/etc/vfio-gate/policy.toml:20)
Held from boot: 05:02.0 on vfio-pci and 05:01.0 on pci-stub as a companion of 05:02.0 by 'group 11, held from boot' (/etc/vfio-gate/policy.toml:25)
";
    if r.stdout != expected {
        r.fail(&format!("expected\n{expected}"));
    }
    // A filter picks groups, each shown whole.
    let r = list_for_alice(&fake, &fx, &["--by-group", "--driver", "vfio-pci"]);
    let text = &r.code(0).stdout;
    assert!(
        text.starts_with("IOMMU group 11: viable; held by alice (run)\n"),
        "{text}"
    );
    assert_eq!(text.matches("IOMMU group").count(), 1, "{text}");
    assert!(text.contains("  04:00.0  1b36:000e  PCI bridge"), "{text}");
    let r = list_for_alice(&fake, &fx, &["--by-group", "--json"]);
    let v = r.code(0).stderr_empty().json();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["source"], "helper");
    let groups = v["groups"]
        .as_array()
        .unwrap_or_else(|| r.fail("no groups"));
    let numbers: Vec<i64> = groups
        .iter()
        .map(|g| g["iommu_group"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 8, 10, 11]);
    assert_eq!(groups[0]["viable"], false);
    assert_eq!(
        groups[0]["blockers"],
        serde_json::json!([{"address": "0000:00:02.0", "short": "00:02.0", "driver": "bochs-drm"}])
    );
    assert_eq!(groups[3]["viable"], true);
    assert_eq!(groups[3]["blockers"], serde_json::json!([]));
    assert_eq!(
        groups[3]["holder"],
        serde_json::json!({"uid": 1000, "user": "alice", "since": 1_700_000_000, "tied": true})
    );
    let members: Vec<&str> = groups[3]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["address"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["0000:04:00.0", "0000:05:01.0", "0000:05:02.0"]);
    assert_eq!(groups[3]["devices"][2]["holder"]["user"], "alice");
    fake.requests();
}

#[test]
fn devices_without_a_group_come_last_by_group() {
    let fake = FakeHelper::answering(Response::Devices(devices()));
    let r = run(against(
        &fake,
        &["list", "--by-group", "--pci-ids", "/nonexistent"],
    ));
    let text = &r.code(0).stdout;
    assert!(
        text.ends_with(
            "No IOMMU group (these devices are never handed out)\n  \
             ADDRESS       IDS        CLASS                    DRIVER  ALLOWED\n  \
             0001:00:00.0  abcd:0001  Processing accelerators  -       -\n"
        ),
        "{text}"
    );
    fake.requests();
}

/// The fallback note, for a socket at `socket` that `why`.
fn fallback_note(why: &str, fx: &HostFixture) -> String {
    format!(
        "vfio-gate: the helper is not reachable ({why}); showing this host's devices read from \
         {}, without what you may bind or who holds them\n",
        fx.sysfs().display()
    )
}

#[test]
fn without_the_helper_list_reads_sysfs_and_says_so() {
    let fx = HostFixture::new(RESERVE_POLICY, &[]);
    let r = run(fx.command(&["list"]));
    r.code(0)
        .stderr_has(&fallback_note(
            "no socket at /nonexistent/vfio-gate.sock",
            &fx,
        ))
        .stderr_has("systemctl enable --now vfio-gate.socket");
    let lines: Vec<&str> = r.stdout.lines().collect();
    let reserved = util::is_root();
    if reserved {
        assert_eq!(
            lines[..7],
            [
                "ADDRESS  IDS        CLASS                           DRIVER     GROUP  RESERVED   NAME",
                "00:02.0  1234:1111  Display controller              bochs-drm  2      -          Technical Corp. device 1111",
                "01:00.0  8086:10d3  Ethernet controller             e1000e     8      pci-stub   Intel Corporation 82574L Gigabit Network Connection",
                "03:00.0  1b36:0010  Non-Volatile memory controller  nvme       10     -          Red Hat, Inc. device 0010",
                "04:00.0  1b36:000e  PCI bridge                      pcieport   11     -          Red Hat, Inc. QEMU PCIe-to-PCI bridge",
                "05:01.0  8086:100e  Ethernet controller             e1000      11     pci-stub*  Intel Corporation 82540EM Gigabit Ethernet Controller",
                "05:02.0  1234:11e8  Unclassified device             -          11     vfio-pci   Technical Corp. QEMU edu device",
            ],
            "{r:#?}"
        );
        r.stdout_has(&format!(
            "Held from boot: 01:00.0 on pci-stub by 'the test NIC, held from boot' ({}:3)\n",
            fx.policy().display()
        ));
    } else {
        // The policy loader refuses files not owned by root: no reservations, and why.
        r.stderr_has("vfio-gate: warning: reservations are not shown: the policy is refused");
        assert!(lines[0].ends_with("GROUP  NAME"), "{r:#?}");
    }

    // JSON: the source, no allowed, no holder.
    let r = run(fx.command(&["list", "--json"]));
    let v = r.code(0).json();
    assert_eq!(v["source"], "sysfs");
    let devices = v["devices"]
        .as_array()
        .unwrap_or_else(|| r.fail("no devices"));
    assert_eq!(devices.len(), 6);
    assert!(
        devices
            .iter()
            .all(|d| d["allowed"].is_null() && d["holder"].is_null())
    );
    assert_eq!(devices[4]["driver"], "e1000");
    assert_eq!(devices[4]["iommu_group"], 11);
    assert_eq!(devices[4]["subsystem_vendor"], "8086");
    if reserved {
        assert_eq!(devices[4]["reserved"]["companion_of"], "0000:05:02.0");
    }

    // By group, with the viability read from sysfs (header types included).
    let r = run(fx.command(&["list", "--by-group"]));
    r.code(0).stdout_has(
        "IOMMU group 11: not viable: 05:01.0 is on the host driver e1000\n  \
         ADDRESS  IDS        CLASS                DRIVER    ",
    );
    fx.set_driver("0000:05:01.0", Some("pci-stub"));
    let r = run(fx.command(&["list", "--by-group", "--group", "11", "--json"]));
    let v = r.code(0).json();
    assert_eq!(v["groups"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["groups"][0]["viable"], true);
    assert_eq!(v["groups"][0]["holder"], serde_json::Value::Null);

    // --mine and --allowed need the helper: its error, not an empty list.
    for filter in ["--mine", "--allowed"] {
        let r = run(fx.command(&["list", filter]));
        r.code(5)
            .stdout_empty()
            .stderr_has("cannot reach the vfio-gate helper at /nonexistent/vfio-gate.sock");
        let r = run(fx.command(&["list", filter, "--json"]));
        r.code(5).json_error("unreachable");
    }
}

#[test]
fn a_socket_nobody_listens_on_falls_back_too() {
    let fx = HostFixture::new("version = 1\n", &[]);
    let socket = fx.root().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    // As fx.command would, with this socket.
    let mut cmd = util::vfio_gate();
    cmd.args(["list", "--driver", "nvme", "--pci-ids", "/nonexistent"])
        .arg("--sysfs-root")
        .arg(fx.sysfs())
        .arg("--socket")
        .arg(&socket);
    let r = run(cmd);
    r.code(0)
        .stderr_has(&fallback_note(
            &format!("nothing listens on {}", socket.display()),
            &fx,
        ))
        .stderr_has("no helper is listening");
    let rows: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(rows.len(), 2, "{r:#?}");
    assert!(rows[1].starts_with("03:00.0  1b36:0010"), "{r:#?}");
}

#[test]
fn a_helper_that_answers_an_error_is_not_replaced_by_sysfs() {
    let fake = FakeHelper::answering(Response::Error(
        vfio_gate_protocol::WireError::Unavailable {
            reason: "the policy is refused".into(),
        },
    ));
    let mut cmd = against(&fake, &["list"]);
    cmd.args(["--sysfs-root", "/nonexistent"]);
    run(cmd)
        .code(5)
        .stdout_empty()
        .stderr_has("the helper is not serving: the policy is refused");
    fake.requests();
}

#[test]
fn without_the_helper_or_sysfs_the_helper_s_error_stands() {
    let mut cmd = util::vfio_gate();
    cmd.args([
        "--socket",
        "/nonexistent/vfio-gate.sock",
        "list",
        "--sysfs-root",
        "/nonexistent/sys",
    ]);
    run(cmd)
        .code(5)
        .stdout_empty()
        .stderr_has("vfio-gate: warning: the helper is not reachable, and reading the PCI devices under /nonexistent/sys")
        .stderr_has("vfio-gate: cannot reach the vfio-gate helper at /nonexistent/vfio-gate.sock");
}
