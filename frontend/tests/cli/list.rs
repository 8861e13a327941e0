//! `vfio-gate list`: the device table, and its JSON.

use std::collections::BTreeSet;
use std::process::Stdio;

use vfio_gate_protocol::{Request, Response};

use crate::fixtures::*;
use crate::util::{FakeHelper, Reply, against, pci_ids_fixture, run};

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
