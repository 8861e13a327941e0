//! Evaluation: deny wins, default deny, subjects by uid/gid/supplementary gid, determinism.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use vfio_gate_protocol::Driver::{self, PciStub, VfioPci};
use vfio_gate_protocol::RuleRef;

use super::{FILE, Names, device, parse, subject};
use crate::{Decision, DeviceFacts, Policy, SlotName, Subject};

const POLICY: &str = r#"[[rule]]
name = "alice: the e1000e"
subjects = { users = ["alice"] }
devices = [{ address = "01:00.0" }]
drivers = ["vfio-pci"]

[[rule]]
name = "vm-users: the 00:06 functions"
subjects = { groups = ["vm-users"] }
devices = [{ address = "0000:00:06.*" }]
drivers = ["vfio-pci", "pci-stub"]

[[rule]]
name = "uid 1001: intel NICs by id"
subjects = { uids = [1001] }
devices = [{ vendor = "8086", device = "10d3" }, { class = "0200xx", vendor = "0x8086" }]
drivers = ["vfio-pci"]

[[rule]]
name = "alice: storage too (fenced off below)"
subjects = { users = ["alice"] }
devices = [{ address = "03:00.0" }]
drivers = ["vfio-pci"]

[[rule]]
name = "gid 1100: everything on bus 05"
subjects = { gids = [1100] }
devices = [{ address = "05:*" }]
drivers = ["vfio-pci"]

[[deny]]
name = "never storage"
devices = [{ class = "01" }]

[[deny]]
name = "bob never stubs"
subjects = { users = ["bob"] }
devices = [{ address = "*:*:*.*" }]
drivers = ["pci-stub"]

[[deny]]
name = "no edu to stub for wheel"
subjects = { groups = ["wheel"] }
devices = [{ vendor = "1234", device = "11e8" }]
drivers = ["pci-stub"]

[[rule]]
name = "alice: any intel"
subjects = { users = ["alice"] }
devices = [{ vendor = "8086" }]
drivers = ["vfio-pci"]
"#;

/// The guest's devices (see the issue's fixed layout), plus one at a non-zero domain.
fn devices() -> Vec<(&'static str, DeviceFacts)> {
    vec![
        ("e1000e", device("01:00.0", 0x8086, 0x10d3, 0x020000)),
        ("virtio", device("02:00.0", 0x1af4, 0x1041, 0x020000)),
        ("nvme", device("03:00.0", 0x1b36, 0x0010, 0x010802)),
        ("edu", device("00:06.0", 0x1234, 0x11e8, 0x00ff00)),
        ("testdev", device("00:06.1", 0x1b36, 0x0005, 0x00ff00)),
        ("e1000", device("05:01.0", 0x8086, 0x100e, 0x020000)),
        ("edu2", device("05:02.0", 0x1234, 0x11e8, 0x00ff00)),
        ("hda", device("00:1b.0", 0x8086, 0x293e, 0x040300)),
        ("far", device("0001:00:06.0", 0x1234, 0x11e8, 0x00ff00)),
        (
            "slotted",
            DeviceFacts {
                physical_slot: SlotName::new("3"),
                ..device("0000:41:00.0", 0x10de, 0x1b80, 0x030000)
            },
        ),
    ]
}

fn subjects() -> Vec<(&'static str, Subject)> {
    vec![
        ("alice", subject(1000, 1000, &[1100])),
        ("alice-alone", subject(1000, 1000, &[])),
        ("bob", subject(1001, 1001, &[])),
        ("carol", subject(1002, 1002, &[5, 1100])), // vm-users as a supplementary group
        ("dave", subject(1003, 1100, &[])),         // vm-users as the primary group
        ("eve", subject(1004, 1004, &[10])),        // wheel only
        ("frank", subject(1005, 1005, &[10, 1100])), // wheel and vm-users
        ("root", subject(0, 0, &[])),
    ]
}

fn find<T: Clone>(list: &[(&str, T)], name: &str) -> T {
    list.iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .1
        .clone()
}

#[derive(Debug, Clone, Copy)]
enum Want {
    Allow(&'static str),
    Deny(&'static str),
    Default,
}

#[test]
fn decisions() {
    use Want::*;
    let p = parse(POLICY).unwrap();
    assert!(p.findings().is_empty(), "{:?}", p.findings());
    let (subjects, devices) = (subjects(), devices());
    // (who, device, driver, decision)
    let table = [
        ("alice", "e1000e", VfioPci, Allow("alice: the e1000e")), // also "any intel": first wins
        ("alice-alone", "e1000e", VfioPci, Allow("alice: the e1000e")),
        ("alice", "e1000e", PciStub, Default),
        ("alice", "hda", VfioPci, Allow("alice: any intel")),
        (
            "alice",
            "e1000",
            VfioPci,
            Allow("gid 1100: everything on bus 05"),
        ),
        ("alice-alone", "e1000", VfioPci, Allow("alice: any intel")),
        ("alice-alone", "edu2", VfioPci, Default),
        (
            "bob",
            "e1000e",
            VfioPci,
            Allow("uid 1001: intel NICs by id"),
        ),
        ("bob", "e1000", VfioPci, Allow("uid 1001: intel NICs by id")), // by class + vendor
        ("bob", "virtio", VfioPci, Default),
        ("bob", "hda", VfioPci, Default), // intel, but not a NIC
        ("bob", "edu", PciStub, Deny("bob never stubs")),
        ("bob", "e1000e", PciStub, Deny("bob never stubs")),
        // Deny beats allow, and the first deny written is named.
        ("alice", "nvme", VfioPci, Deny("never storage")),
        ("alice", "nvme", PciStub, Deny("never storage")),
        ("root", "nvme", VfioPci, Deny("never storage")),
        ("bob", "nvme", PciStub, Deny("never storage")),
        // Groups: supplementary, primary.
        (
            "carol",
            "edu",
            PciStub,
            Allow("vm-users: the 00:06 functions"),
        ),
        (
            "carol",
            "testdev",
            VfioPci,
            Allow("vm-users: the 00:06 functions"),
        ),
        (
            "dave",
            "testdev",
            PciStub,
            Allow("vm-users: the 00:06 functions"),
        ),
        (
            "dave",
            "e1000",
            VfioPci,
            Allow("gid 1100: everything on bus 05"),
        ),
        (
            "carol",
            "edu2",
            VfioPci,
            Allow("gid 1100: everything on bus 05"),
        ),
        ("carol", "edu2", PciStub, Default),
        ("carol", "far", VfioPci, Default), // domain 0001 is not 0000:00:06.*
        ("eve", "edu", VfioPci, Default),
        ("frank", "edu", PciStub, Deny("no edu to stub for wheel")),
        (
            "frank",
            "edu",
            VfioPci,
            Allow("vm-users: the 00:06 functions"),
        ),
        (
            "frank",
            "testdev",
            PciStub,
            Allow("vm-users: the 00:06 functions"),
        ),
        ("root", "edu", VfioPci, Default),
        ("eve", "hda", VfioPci, Default),
    ];
    for (who, dev, driver, want) in table {
        let got = p.decide(&find(&subjects, who), &find(&devices, dev), driver);
        let ok = match (want, &got) {
            (Allow(n), Decision::Allow(r)) => r.name == n,
            (Deny(n), Decision::Deny(Some(r))) => r.name == n,
            (Default, Decision::Deny(None)) => true,
            _ => false,
        };
        assert!(ok, "{who} {dev} {driver}: want {want:?}, got {got:?}");
        assert_eq!(got.is_allowed(), matches!(want, Allow(_)));
    }
}

#[test]
fn decisions_cite_file_and_header_line() {
    let p = parse(POLICY).unwrap();
    let alice = subject(1000, 1000, &[1100]);
    assert_eq!(
        p.decide(&alice, &find(&devices(), "e1000e"), VfioPci),
        Decision::Allow(RuleRef {
            name: "alice: the e1000e".into(),
            file: FILE.into(),
            line: 1,
        })
    );
    assert_eq!(
        p.decide(&alice, &find(&devices(), "nvme"), VfioPci),
        Decision::Deny(Some(RuleRef {
            name: "never storage".into(),
            file: FILE.into(),
            line: 31,
        }))
    );
    let any_intel = p.decide(&subject(1000, 1, &[]), &find(&devices(), "hda"), VfioPci);
    assert_eq!(any_intel.rule().map(|r| r.line), Some(47));
}

#[test]
fn allowed_drivers() {
    let p = parse(POLICY).unwrap();
    let (s, d) = (subjects(), devices());
    // (who, device, drivers)
    let table: [(&str, &str, &[Driver]); 6] = [
        ("alice", "e1000e", &[VfioPci]),
        ("carol", "edu", &[VfioPci, PciStub]),
        ("frank", "edu", &[VfioPci]),
        ("bob", "edu", &[]),
        ("alice", "nvme", &[]),
        ("root", "hda", &[]),
    ];
    for (who, dev, want) in table {
        assert_eq!(
            p.allowed_drivers(&find(&s, who), &find(&d, dev)),
            want,
            "{who} {dev}"
        );
    }
}

// --- Properties over generated policies -------------------------------------------------------

/// The last entry, the wildcard, is for allow rules only: a deny given it is written without
/// subjects instead (which means the same, everyone).
const SUBJECT_TEXT: [&str; 6] = [
    r#"{ users = ["alice"] }"#,
    r#"{ groups = ["vm-users"] }"#,
    "{ uids = [1001] }",
    "{ gids = [10], uids = [0] }",
    r#"{ users = ["nosuch"], groups = ["wheel"] }"#,
    r#"{ users = ["*"] }"#,
];
const WILDCARD: usize = SUBJECT_TEXT.len() - 1;
const DEVICE_TEXT: [&str; 10] = [
    r#"{ address = "01:00.0" }"#,
    r#"{ address = "0000:00:06.*" }"#,
    r#"{ vendor = "8086" }"#,
    r#"{ class = "01" }"#,
    r#"{ class = "0200xx", vendor = "8086" }"#,
    r#"{ address = "*:*:*.*" }"#,
    r#"{ device = "11e8", address = "05:0?.?" }"#,
    r#"{ subsystem_vendor = "1af4", class = "00ff" }"#,
    r#"{ physical_slot = "3" }"#,
    r#"{ physical_slot = "3", vendor = "8086" }"#,
];
const DRIVER_TEXT: [&str; 3] = [
    r#"["vfio-pci"]"#,
    r#"["pci-stub"]"#,
    r#"["pci-stub", "vfio-pci"]"#,
];

#[derive(Debug, Clone)]
struct Spec {
    name: String,
    deny: bool,
    /// For allow rules always `Some`; `None` on a deny means everyone.
    subjects: Option<usize>,
    devices: Vec<usize>,
    /// For allow rules always `Some`; `None` on a deny means every driver.
    drivers: Option<usize>,
}

impl Spec {
    fn render(&self) -> String {
        let mut s = format!(
            "[[{}]]\nname = {:?}\ndevices = [{}]\n",
            if self.deny { "deny" } else { "rule" },
            self.name,
            self.devices
                .iter()
                .map(|&d| DEVICE_TEXT[d])
                .collect::<Vec<_>>()
                .join(", ")
        );
        match self.subjects {
            Some(WILDCARD) if self.deny => {}
            Some(i) => s += &format!("subjects = {}\n", SUBJECT_TEXT[i]),
            None => {}
        }
        if let Some(i) = self.drivers {
            s += &format!("drivers = {}\n", DRIVER_TEXT[i]);
        }
        s
    }
}

fn spec(deny: impl Strategy<Value = bool>) -> impl Strategy<Value = Spec> {
    (
        deny,
        option::of(0..SUBJECT_TEXT.len()),
        vec(0..DEVICE_TEXT.len(), 1..3),
        option::of(0..DRIVER_TEXT.len()),
    )
        .prop_map(|(deny, subjects, devices, drivers)| Spec {
            name: String::new(),
            deny,
            subjects: if deny { subjects } else { subjects.or(Some(0)) },
            devices,
            drivers: if deny { drivers } else { drivers.or(Some(0)) },
        })
}

/// Some rules with unique names, and a permutation of them.
fn specs_and_permutation() -> impl Strategy<Value = (Vec<Spec>, Vec<usize>)> {
    vec(spec(any::<bool>()), 0..12).prop_flat_map(|mut specs| {
        for (i, s) in specs.iter_mut().enumerate() {
            s.name = format!("r{i}");
        }
        let order: Vec<usize> = (0..specs.len()).collect();
        (Just(specs), Just(order).prop_shuffle())
    })
}

fn render(specs: &[Spec]) -> String {
    specs
        .iter()
        .map(Spec::render)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every decision of `p` over the fixed subjects, devices and drivers.
fn all_decisions(p: &Policy) -> Vec<Decision> {
    let devices = devices();
    let mut out = Vec::new();
    for (_, s) in subjects() {
        for (_, d) in &devices {
            for driver in Driver::ALL {
                out.push(p.decide(&s, d, driver));
            }
        }
    }
    out
}

/// A decision without the rule's position: what moving rules around in the text must keep.
fn verdict(d: &Decision) -> &'static str {
    match d {
        Decision::Allow(_) => "allow",
        Decision::Deny(Some(_)) => "deny",
        Decision::Deny(None) => "default",
    }
}

proptest! {
    /// The same rules in any internal order give identical decisions, deciding rule included.
    #[test]
    fn rule_order_does_not_change_decisions((specs, order) in specs_and_permutation()) {
        let p = parse(&render(&specs)).unwrap();
        let shuffled: Vec<_> = order.iter().map(|&i| p.rules()[i].clone()).collect();
        let q = Policy::from_parts(p.settings().clone(), shuffled, Vec::new());
        prop_assert_eq!(all_decisions(&p), all_decisions(&q));
    }

    /// Rules written in another order (so at other lines) give the same verdicts.
    #[test]
    fn rule_order_in_the_file_does_not_change_verdicts((specs, order) in specs_and_permutation()) {
        let p = parse(&render(&specs)).unwrap();
        let shuffled: Vec<Spec> = order.iter().map(|&i| specs[i].clone()).collect();
        let q = parse(&render(&shuffled)).unwrap();
        let (a, b) = (all_decisions(&p), all_decisions(&q));
        prop_assert_eq!(a.iter().map(verdict).collect::<Vec<_>>(), b.iter().map(verdict).collect::<Vec<_>>());
    }

    /// Adding an allow rule never takes a permission away.
    #[test]
    fn an_added_allow_only_adds((mut specs, _) in specs_and_permutation(), mut extra in spec(Just(false))) {
        let before = all_decisions(&parse(&render(&specs)).unwrap());
        extra.name = "extra".into();
        specs.push(extra);
        let after = all_decisions(&parse(&render(&specs)).unwrap());
        for (b, a) in before.iter().zip(&after) {
            prop_assert!(!b.is_allowed() || a.is_allowed(), "{:?} became {:?}", b, a);
        }
    }

    /// Adding a deny rule never grants anything.
    #[test]
    fn an_added_deny_only_removes((mut specs, _) in specs_and_permutation(), mut extra in spec(Just(true))) {
        let before = all_decisions(&parse(&render(&specs)).unwrap());
        extra.name = "extra".into();
        specs.insert(0, extra);
        let after = all_decisions(&parse(&render(&specs)).unwrap());
        for (b, a) in before.iter().zip(&after) {
            prop_assert!(!a.is_allowed() || b.is_allowed(), "{:?} became {:?}", b, a);
        }
    }
}

/// Rules, a permutation of them, and for each rule the file it goes to (0: the main file).
fn specs_order_and_files() -> impl Strategy<Value = (Vec<Spec>, Vec<usize>, Vec<usize>)> {
    specs_and_permutation().prop_flat_map(|(specs, order)| {
        let n = specs.len();
        (Just(specs), Just(order), vec(0usize..4, n))
    })
}

/// The rules in `order`, spread over a main file and drop-ins as `files` says. Drop-in names
/// are chosen so that their byte order is not the order of their numbers.
fn split(specs: &[Spec], order: &[usize], files: &[usize]) -> Vec<(String, String)> {
    const NAMES: [&str; 4] = [
        "policy.toml",
        "policy.d/b.toml",
        "policy.d/10.toml",
        "policy.d/A.toml",
    ];
    let mut texts = vec![String::new(); NAMES.len()];
    for &i in order {
        texts[files[i]] += &specs[i].render();
        texts[files[i]] += "\n";
    }
    let mut out: Vec<(String, String)> = NAMES
        .iter()
        .map(|n| format!("/etc/vfio-gate/{n}"))
        .zip(texts)
        .collect();
    // Load order: the main file, then the drop-ins by the bytes of their names.
    out[1..].sort();
    out
}

/// The names of the allow and deny rules `explain` lists for every request, as sets.
fn all_explained(p: &Policy) -> Vec<(Vec<String>, Vec<String>)> {
    let devices = devices();
    let mut out = Vec::new();
    for (_, s) in subjects() {
        for (_, d) in &devices {
            for driver in Driver::ALL {
                let e = p.explain(&s, d, driver);
                let mut allows: Vec<String> = e.allows.into_iter().map(|r| r.name).collect();
                let mut denies: Vec<String> = e.denies.into_iter().map(|r| r.name).collect();
                allows.sort();
                denies.sort();
                out.push((allows, denies));
            }
        }
    }
    out
}

proptest! {
    /// Shuffling the rules and spreading them over any number of files, in any partition,
    /// changes no verdict, and no rule's applying or not.
    #[test]
    fn files_and_order_do_not_change_decisions((specs, order, files) in specs_order_and_files()) {
        let whole = parse(&render(&specs)).unwrap();
        let parts = split(&specs, &order, &files);
        let spread = Policy::parse_files(&parts, &Names).unwrap();
        prop_assert_eq!(spread.rules().len(), whole.rules().len());
        let (a, b) = (all_decisions(&whole), all_decisions(&spread));
        prop_assert_eq!(a.iter().map(verdict).collect::<Vec<_>>(), b.iter().map(verdict).collect::<Vec<_>>());
        prop_assert_eq!(all_explained(&whole), all_explained(&spread));
        // Every cited rule is cited at its own file.
        for d in &b {
            if let Some(r) = d.rule() {
                let (file, _) = parts.iter().find(|(_, t)| t.contains(&format!("name = {:?}", r.name))).unwrap();
                prop_assert_eq!(&r.file, file);
            }
        }
    }

    /// `explain` agrees with `decide`, and `report` lists exactly what `decide` allows.
    #[test]
    fn explain_and_report_agree_with_decide((specs, _) in specs_and_permutation()) {
        let p = parse(&render(&specs)).unwrap();
        let subjects: Vec<(String, Subject)> =
            subjects().into_iter().map(|(n, s)| (n.to_owned(), s)).collect();
        let devices: Vec<DeviceFacts> = devices().into_iter().map(|(_, d)| d).collect();
        let report = p.report(&subjects, &devices);
        let mut expected = Vec::new();
        for (label, s) in &subjects {
            for d in &devices {
                for driver in Driver::ALL {
                    let decided = p.decide(s, d, driver);
                    let e = p.explain(s, d, driver);
                    prop_assert_eq!(&e.decision, &decided);
                    prop_assert_eq!(decided.is_allowed(), e.denies.is_empty() && !e.allows.is_empty());
                    if let Decision::Allow(rule) = decided {
                        expected.push((label.clone(), d.address, driver, rule));
                    }
                }
            }
        }
        expected.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
        let got: Vec<_> = report.into_iter().map(|r| (r.subject, r.device, r.driver, r.rule)).collect();
        prop_assert_eq!(got, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The same, through the file system: the drop-ins loaded from a policy.d in byte order of
    /// their names, whatever order they were written in.
    #[test]
    fn loading_split_files_changes_no_decision((specs, order, files) in specs_order_and_files()) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let whole = parse(&render(&specs)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(root.join("policy.d")).unwrap();
        std::fs::set_permissions(root.join("policy.d"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let parts = split(&specs, &order, &files);
        // Written last file first, so creation order is not load order.
        for (name, text) in parts.iter().rev() {
            let path = root.join(name.strip_prefix("/etc/vfio-gate/").unwrap());
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let owner = std::fs::metadata(root).unwrap().uid();
        let loaded = Policy::load_with_owner(&root.join("policy.toml"), &Names, owner).unwrap();
        let loaded_names: Vec<String> = loaded.sources().iter().map(|s| s.path.rsplit('/').next().unwrap().to_owned()).collect();
        prop_assert_eq!(loaded_names, ["policy.toml", "10.toml", "A.toml", "b.toml"]);
        let (a, b) = (all_decisions(&whole), all_decisions(&loaded));
        prop_assert_eq!(a.iter().map(verdict).collect::<Vec<_>>(), b.iter().map(verdict).collect::<Vec<_>>());
    }
}

#[test]
fn companions() {
    let p = parse(
        r#"[[rule]]
name = "group 11 for alice"
subjects = { users = ["alice"] }
devices = [{ address = "05:02.0" }]
drivers = ["vfio-pci"]
companions = ["pci-stub"]

[[rule]]
name = "edu without companions"
subjects = { users = ["alice"] }
devices = [{ address = "00:06.0" }]
drivers = ["vfio-pci"]

[[rule]]
name = "testdev stub directly"
subjects = { users = ["bob"] }
devices = [{ address = "00:06.1" }]
drivers = ["pci-stub"]

[[deny]]
name = "never storage"
devices = [{ class = "01" }]
"#,
    )
    .unwrap();
    let devs = devices();
    let dev = |n| find(&devs, n);
    let subs = subjects();
    let who = |n| find(&subs, n);
    let name = |d: Decision| match d {
        Decision::Allow(r) => format!("allow {}", r.name),
        Decision::Deny(Some(r)) => format!("deny {}", r.name),
        Decision::Deny(None) => "default".into(),
    };
    // The rule granting the primary lists pci-stub as a companion.
    assert_eq!(
        name(p.decide_companion(&who("alice"), &dev("edu2"), VfioPci, &dev("e1000"), PciStub)),
        "allow group 11 for alice"
    );
    // Companions are only for the driver they name, and only with the primary's own grant.
    assert_eq!(
        name(p.decide_companion(&who("alice"), &dev("edu2"), VfioPci, &dev("e1000"), VfioPci)),
        "default"
    );
    assert_eq!(
        name(p.decide_companion(&who("alice"), &dev("edu2"), PciStub, &dev("e1000"), PciStub)),
        "default"
    );
    assert_eq!(
        name(p.decide_companion(&who("bob"), &dev("edu2"), VfioPci, &dev("e1000"), PciStub)),
        "default"
    );
    assert_eq!(
        name(p.decide_companion(
            &who("alice"),
            &dev("edu"),
            VfioPci,
            &dev("testdev"),
            PciStub
        )),
        "default"
    );
    // A direct allow for the member counts on its own.
    assert_eq!(
        name(p.decide_companion(&who("bob"), &dev("edu"), VfioPci, &dev("testdev"), PciStub)),
        "allow testdev stub directly"
    );
    // A deny on the member wins over the companion grant.
    assert_eq!(
        name(p.decide_companion(&who("alice"), &dev("edu2"), VfioPci, &dev("nvme"), PciStub)),
        "deny never storage"
    );
}

#[test]
fn settings_admins_and_sandbox() {
    let p = parse(
        r#"[settings]
idle_timeout = 5
sandbox_floor = 2
allow_unsandboxed = true
admins = { users = ["bob"], gids = [10] }
"#,
    )
    .unwrap();
    let s = p.settings();
    assert_eq!(s.idle_timeout.as_secs(), 5);
    assert_eq!((s.sandbox_floor, s.allow_unsandboxed), (2, true));
    let subs = subjects();
    let who = |n| find(&subs, n);
    assert!(p.is_admin(&who("bob")));
    assert!(p.is_admin(&who("eve")), "wheel (gid 10) is listed");
    assert!(p.is_admin(&who("root")), "root always is");
    assert!(!p.is_admin(&who("alice")));

    let defaults = parse("").unwrap();
    assert_eq!(defaults.settings().sandbox_floor, 1);
    assert!(!defaults.settings().allow_unsandboxed);
    assert!(!defaults.is_admin(&who("bob")));

    for (bad, words) in [
        (
            "[settings]\nsandbox_floor = 0\n",
            "sandbox_floor = 0 is out of range",
        ),
        ("[settings]\nsandbox_floor = 7\n", "out of range"),
        ("[settings]\nadmins = {}\n", "subjects is empty"),
        (
            "[settings]\nadmins = { users = [\"bob\"], sudo = true }\n",
            "sudo",
        ),
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(e.contains(words), "{bad:?}: {e}");
    }
}
