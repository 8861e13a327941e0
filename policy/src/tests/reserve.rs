//! `[[reserve]]`: parsing, which devices a policy holds from boot, and the lint.

use vfio_gate_protocol::Driver::{PciStub, VfioPci};

use super::{FILE, Names, device, parse};
use crate::{DeviceFacts, Policy, PolicyError, Reserved, Severity};

const POLICY: &str = r#"version = 1

[[reserve]]
name    = "the e1000e, parked from boot"
devices = [{ address = "01:00.0", vendor = "8086", device = "10d3" }]
driver  = "pci-stub"

[[reserve]]
name       = "the lab edu with its group"
devices    = [{ address = "05:02.0", vendor = "1234", device = "11e8" }]
driver     = "vfio-pci"
companions = "pci-stub"

[[rule]]
name     = "alice: the e1000e"
subjects = { users = ["alice"] }
devices  = [{ address = "01:00.0", vendor = "8086", device = "10d3" }]
drivers  = ["vfio-pci"]
"#;

fn host() -> Vec<DeviceFacts> {
    vec![
        device("01:00.0", 0x8086, 0x10d3, 0x020000),
        device("00:06.0", 0x1234, 0x11e8, 0x00ff00),
        device("05:01.0", 0x8086, 0x100e, 0x020000),
        device("05:02.0", 0x1234, 0x11e8, 0x00ff00),
    ]
}

#[test]
fn reservations_parse_with_their_drivers_and_places() {
    let p = parse(POLICY).unwrap();
    let r = p.reservations();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].origin().name, "the e1000e, parked from boot");
    assert_eq!((r[0].origin().file.as_str(), r[0].origin().line), (FILE, 3));
    assert_eq!((r[0].driver(), r[0].companions()), (PciStub, None));
    assert_eq!((r[1].driver(), r[1].companions()), (VfioPci, Some(PciStub)));
    // A reservation grants nothing: only the one rule does.
    assert_eq!(p.rules().len(), 1);
}

#[test]
fn a_device_is_reserved_by_name_only() {
    let p = parse(POLICY).unwrap();
    let h = host();
    match p.reserved(&h[0]) {
        Reserved::Yes { driver, by } => {
            assert_eq!(driver, PciStub);
            assert_eq!(by.origin().name, "the e1000e, parked from boot");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.reserved(&h[3]).driver(), Some(VfioPci));
    // 00:06.0 has the same ids as 05:02.0 but not its address; 05:01.0 is only a companion,
    // which the policy alone cannot see.
    assert_eq!(p.reserved(&h[1]), Reserved::No);
    assert_eq!(p.reserved(&h[2]), Reserved::No);
}

#[test]
fn reservations_with_different_drivers_hold_the_device_with_neither() {
    let text = format!(
        "{POLICY}
[[reserve]]
name    = \"every edu on vfio-pci\"
devices = [{{ vendor = \"1234\", device = \"11e8\" }}]
driver  = \"vfio-pci\"

[[reserve]]
name    = \"the e1000e on vfio-pci\"
devices = [{{ vendor = \"8086\", device = \"10d3\" }}]
driver  = \"vfio-pci\"
"
    );
    let p = parse(&text).unwrap();
    let h = host();
    let Reserved::Conflict(by) = p.reserved(&h[0]) else {
        panic!("{:?}", p.reserved(&h[0]));
    };
    assert_eq!(by.len(), 2);
    assert_eq!(p.reserved(&h[0]).driver(), None);
    // Two reservations, one driver: no conflict, the first written is named.
    let Reserved::Yes { by, .. } = p.reserved(&h[3]) else {
        panic!()
    };
    assert_eq!(by.origin().name, "the lab edu with its group");
    // Order does not matter: written the other way round, the same verdicts.
    let mut parts: Vec<&str> = text.split("\n[[").collect();
    let head = parts.remove(0);
    parts.reverse();
    let reversed = format!("{head}\n[[{}", parts.join("\n[["));
    let q = parse(&reversed).unwrap();
    for d in &h {
        assert_eq!(
            p.reserved(d).driver(),
            q.reserved(d).driver(),
            "{}",
            d.address
        );
    }
}

#[test]
fn bad_reservations_are_refused_at_their_line() {
    for (text, line, words) in [
        (
            "[[reserve]]\nname = \"x\"\ndevices = [{ vendor = \"8086\" }]\ndriver = \"vfio\"\n",
            4,
            "\"vfio\" is not a driver",
        ),
        (
            "[[reserve]]\nname = \"x\"\ndevices = [{ vendor = \"8086\" }]\n",
            1,
            "every [[reserve]] needs name, devices and driver",
        ),
        (
            "[[reserve]]\nname = \"x\"\ndevices = []\ndriver = \"pci-stub\"\n",
            3,
            "devices is empty",
        ),
        (
            "[[reserve]]\nname = \"x\"\ndevices = [{ vendor = \"8086\" }]\ndriver = \"pci-stub\"\nsubjects = { users = [\"alice\"] }\n",
            5,
            "unknown field `subjects`",
        ),
        (
            "[[reserve]]\nname = \"x\"\ndevices = [{ vendor = \"8086\" }]\ndriver = \"pci-stub\"\ncompanions = [\"pci-stub\"]\n",
            5,
            "invalid type",
        ),
        (
            "[[rule]]\nname = \"x\"\nsubjects = { users = [\"alice\"] }\ndevices = [{ vendor = \"8086\" }]\ndrivers = [\"vfio-pci\"]\n\n[[reserve]]\nname = \"x\"\ndevices = [{ vendor = \"8086\" }]\ndriver = \"pci-stub\"\n",
            8,
            "the rule name \"x\" is already used",
        ),
    ] {
        match parse(text) {
            Err(e @ (PolicyError::Invalid { .. } | PolicyError::Syntax { .. })) => {
                assert!(e.to_string().contains(words), "{text}\n→ {e}");
                assert!(
                    e.to_string().contains(&format!(":{line}:")),
                    "{text}\n→ {e}"
                );
            }
            other => panic!("{text}\n→ {other:?}"),
        }
    }
}

#[test]
fn drop_ins_may_reserve() {
    let p = Policy::parse_files(
        &[
            (FILE, "version = 1\n"),
            (
                "/etc/vfio-gate/policy.d/10-gpu.toml",
                "[[reserve]]\nname = \"gpu\"\ndevices = [{ address = \"01:00.0\", vendor = \"8086\" }]\ndriver = \"vfio-pci\"\n",
            ),
        ],
        &Names,
    )
    .unwrap();
    assert_eq!(p.reservations().len(), 1);
    assert_eq!(
        p.reservations()[0].origin().file,
        "/etc/vfio-gate/policy.d/10-gpu.toml"
    );
    assert_eq!(p.reserved(&host()[0]).driver(), Some(VfioPci));
}

#[test]
fn the_lint_shows_what_each_reservation_holds_here() {
    let text = format!(
        "{POLICY}
[[reserve]]
name    = \"every edu\"
devices = [{{ vendor = \"1234\", device = \"11e8\" }}]
driver  = \"vfio-pci\"

[[reserve]]
name    = \"a card that is not here\"
devices = [{{ vendor = \"10de\", device = \"1b80\" }}]
driver  = \"vfio-pci\"

[[reserve]]
name    = \"by address\"
devices = [{{ address = \"05:01.0\" }}]
driver  = \"pci-stub\"
"
    );
    let p = parse(&text).unwrap();
    let findings = p.lint(&host());
    let of = |rule: &str| -> Vec<(Severity, String)> {
        findings
            .iter()
            .filter(|f| f.rule.as_deref() == Some(rule))
            .map(|f| (f.severity, f.message.clone()))
            .collect()
    };
    let e1000e = of("the e1000e, parked from boot");
    assert_eq!(e1000e.len(), 1, "{e1000e:?}");
    assert_eq!(e1000e[0].0, Severity::Info);
    assert!(
        e1000e[0]
            .1
            .contains("holds 0000:01:00.0 [8086:10d3] on pci-stub from boot"),
        "{e1000e:?}"
    );
    let group = of("the lab edu with its group");
    assert!(
        group[0]
            .1
            .contains("and the other endpoints of their IOMMU groups on pci-stub"),
        "{group:?}"
    );
    let every = of("every edu");
    assert!(
        every.iter().any(|(s, m)| *s == Severity::Warning
            && m.contains("catches 2 devices on this host (0000:00:06.0, 0000:05:02.0)")),
        "{every:?}"
    );
    let absent = of("a card that is not here");
    assert!(
        absent
            .iter()
            .any(|(s, m)| *s == Severity::Warning && m.contains("matches no device on this host")),
        "{absent:?}"
    );
    let by_address = of("by address");
    assert!(
        by_address
            .iter()
            .any(|(s, m)| *s == Severity::Warning && m.contains("by address alone")),
        "{by_address:?}"
    );
    // Without host devices only what the text alone shows.
    let offline = p.lint(&[]);
    assert!(
        offline
            .iter()
            .any(|f| f.message.contains("by address alone"))
    );
    assert!(!offline.iter().any(|f| f.message.contains(" holds 0000:")));
}

#[test]
fn the_lint_names_a_conflict_once() {
    let text = format!(
        "{POLICY}
[[reserve]]
name    = \"the e1000e on vfio-pci\"
devices = [{{ vendor = \"8086\", device = \"10d3\" }}]
driver  = \"vfio-pci\"
"
    );
    let p = parse(&text).unwrap();
    let conflicts: Vec<_> = p
        .lint(&host())
        .into_iter()
        .filter(|f| f.message.contains("held by neither"))
        .collect();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert!(conflicts[0].message.contains("0000:01:00.0"));
}
