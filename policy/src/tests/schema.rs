//! The schema additions: node mode, group limit, physical slots, the subject wildcard.

use vfio_gate_protocol::Driver::VfioPci;

use super::{FILE, device, parse, subject};
use crate::{Decision, DeviceFacts, PolicyError, Settings, SlotName, Subjects};

fn lines(l: &[&str]) -> String {
    let mut s = l.join("\n");
    s.push('\n');
    s
}

#[test]
fn settings_node_mode_and_group_limit() {
    let defaults = parse("").unwrap();
    assert_eq!(defaults.settings().node_mode, 0o600);
    assert_eq!(defaults.settings().node_mode, Settings::DEFAULT_NODE_MODE);
    assert_eq!(defaults.settings().max_groups_per_user, None);

    // (text, node_mode, max_groups_per_user)
    for (text, mode, max) in [
        ("[settings]\nnode_mode = \"0600\"\n", 0o600, None),
        ("[settings]\nnode_mode = \"0660\"\n", 0o660, None),
        ("[settings]\nmax_groups_per_user = 1\n", 0o600, Some(1)),
        (
            "[settings]\nmax_groups_per_user = 1024\n",
            0o600,
            Some(1024),
        ),
        (
            "[settings]\nnode_mode = \"0660\"\nmax_groups_per_user = 4\n",
            0o660,
            Some(4),
        ),
    ] {
        let p = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(p.settings().node_mode, mode, "{text:?}");
        assert_eq!(p.settings().max_groups_per_user, max, "{text:?}");
        assert!(Settings::NODE_MODES.contains(&p.settings().node_mode));
    }
}

#[test]
fn slot_names() {
    for good in ["3", "Slot-2", "0-1", "a.b_c-D", "..a", &"x".repeat(32)] {
        let s = SlotName::new(good).unwrap_or_else(|| panic!("{good:?} refused"));
        assert_eq!(s.as_str(), good);
        assert_eq!(s.to_string(), good);
        assert_eq!(good.parse::<SlotName>(), Ok(s));
    }
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "../x",
        "a b",
        "slot\n",
        "é",
        "a\0",
        "*",
        &"x".repeat(33),
    ] {
        assert_eq!(SlotName::new(bad), None, "{bad:?} accepted");
        assert!(bad.parse::<SlotName>().is_err());
    }
    assert_eq!(
        format!("{:?}", SlotName::new("3").unwrap()),
        "SlotName(\"3\")"
    );
    // DeviceFacts stays Copy with a slot in it.
    let a = DeviceFacts {
        physical_slot: SlotName::new("7"),
        ..device("01:00.0", 0x8086, 0x10d3, 0x020000)
    };
    let b = a;
    assert_eq!(a, b);
}

#[test]
fn physical_slot_matches_only_that_slot() {
    let p = parse(&lines(&[
        "[[rule]]",
        r#"name = "the card in slot 3""#,
        r#"subjects = { users = ["alice"] }"#,
        r#"devices = [{ physical_slot = "3", vendor = "10de" }]"#,
        r#"drivers = ["vfio-pci"]"#,
    ]))
    .unwrap();
    let m = &p.rules()[0].devices()[0];
    assert_eq!(m.physical_slot(), SlotName::new("3"));
    assert!(!m.is_address_only());
    let alice = subject(1000, 1000, &[]);
    let gpu = |slot: Option<&str>| DeviceFacts {
        physical_slot: slot.map(|s| SlotName::new(s).unwrap()),
        ..device("0000:41:00.0", 0x10de, 0x1b80, 0x030000)
    };
    // (slot, allowed)
    for (slot, allowed) in [(Some("3"), true), (Some("30"), false), (None, false)] {
        let d = p.decide(&alice, &gpu(slot), VfioPci);
        assert_eq!(d.is_allowed(), allowed, "{slot:?}: {d:?}");
    }
}

#[test]
fn wildcard_users_means_everyone_in_allow_rules() {
    let p = parse(&lines(&[
        "[[rule]]",
        r#"name = "anyone: the edu device""#,
        r#"subjects = { users = ["*"] }"#,
        r#"devices = [{ vendor = "1234", device = "11e8" }]"#,
        r#"drivers = ["vfio-pci"]"#,
    ]))
    .unwrap();
    assert_eq!(p.rules()[0].subjects(), &Subjects::Everyone);
    assert!(p.findings().is_empty(), "{:?}", p.findings());
    let edu = device("00:06.0", 0x1234, 0x11e8, 0x00ff00);
    for who in [
        subject(4242, 4242, &[]),
        subject(0, 0, &[]),
        subject(1000, 1, &[2]),
    ] {
        assert!(matches!(p.decide(&who, &edu, VfioPci), Decision::Allow(_)));
    }
}

#[test]
fn every_new_refusal_names_its_line() {
    let rule = |subjects: &'static str, matcher: &'static str| -> Vec<&'static str> {
        vec![
            "# a comment",
            "[[rule]]",
            r#"name = "x""#,
            subjects,
            matcher,
            r#"drivers = ["vfio-pci"]"#,
        ]
    };
    let alice = r#"subjects = { users = ["alice"] }"#;
    let vendor = r#"devices = [{ vendor = "8086" }]"#;
    // (what, lines, expected line, text the message must contain)
    let cases: Vec<(&str, Vec<&str>, u32, &str)> = vec![
        (
            "node_mode 0644",
            vec!["[settings]", "idle_timeout = 3", r#"node_mode = "0644""#],
            3,
            r#"node_mode = "0644" is not accepted: write "0600""#,
        ),
        (
            "node_mode 0666",
            vec!["[settings]", r#"node_mode = "0666""#],
            2,
            "is not accepted",
        ),
        (
            "node_mode without the leading zero",
            vec!["[settings]", r#"node_mode = "600""#],
            2,
            "\"0660\"",
        ),
        (
            "node_mode as a TOML octal integer",
            vec!["version = 1", "[settings]", "node_mode = 0o600"],
            3,
            r#"node_mode = "0600""#,
        ),
        (
            "node_mode as a decimal integer",
            vec!["[settings]", "node_mode = 600"],
            2,
            "quoted strings",
        ),
        (
            "max_groups_per_user zero",
            vec!["[settings]", "max_groups_per_user = 0"],
            2,
            "max_groups_per_user = 0 is out of range: give a number of IOMMU groups from 1 to 1024",
        ),
        (
            "max_groups_per_user too large",
            vec!["[settings]", "", "max_groups_per_user = 1025"],
            3,
            "out of range",
        ),
        (
            "max_groups_per_user negative",
            vec!["[settings]", "max_groups_per_user = -1"],
            2,
            "out of range",
        ),
        (
            "max_groups_per_user as a string",
            vec!["[settings]", r#"max_groups_per_user = "4""#],
            2,
            "expected an integer",
        ),
        (
            "unknown settings key next to the new ones",
            vec!["[settings]", r#"node_mode = "0600""#, "max_groups = 4"],
            3,
            "unknown field `max_groups`",
        ),
        (
            "empty physical_slot",
            rule(alice, r#"devices = [{ physical_slot = "" }]"#),
            5,
            "physical_slot \"\" is not a slot name",
        ),
        (
            "physical_slot with a slash",
            rule(alice, r#"devices = [{ physical_slot = "../3" }]"#),
            5,
            "/sys/bus/pci/slots/",
        ),
        (
            "physical_slot too long",
            rule(
                alice,
                r#"devices = [{ physical_slot = "123456789012345678901234567890123" }]"#,
            ),
            5,
            "1 to 32 characters",
        ),
        (
            "physical_slot dot-dot",
            rule(alice, r#"devices = [{ physical_slot = ".." }]"#),
            5,
            "not a slot name",
        ),
        (
            "physical_slot as an integer",
            rule(alice, "devices = [{ physical_slot = 3 }]"),
            5,
            "quoted strings",
        ),
        (
            "slot instead of physical_slot",
            rule(alice, r#"devices = [{ slot = "3" }]"#),
            5,
            "unknown field `slot`",
        ),
        (
            "empty matcher lists physical_slot",
            rule(alice, "devices = [{}]"),
            5,
            "class, physical_slot",
        ),
        (
            "wildcard group in an allow",
            rule(r#"subjects = { groups = ["*"] }"#, vendor),
            4,
            "\"*\" is not a group name: to grant every user write users = [\"*\"]",
        ),
        (
            "wildcard with other subjects",
            rule(r#"subjects = { users = ["alice", "*"] }"#, vendor),
            4,
            "already means every user: write it alone",
        ),
        (
            "wildcard with a gid",
            rule(r#"subjects = { users = ["*"], gids = [10] }"#, vendor),
            4,
            "write it alone",
        ),
        (
            "a user pattern",
            rule(r#"subjects = { users = ["al*"] }"#, vendor),
            4,
            "names are not patterns",
        ),
        (
            "a group pattern",
            rule(r#"subjects = { groups = ["vm-?"] }"#, vendor),
            4,
            "names are not patterns",
        ),
        (
            "wildcard in a deny",
            vec![
                "[[deny]]",
                r#"name = "x""#,
                r#"devices = [{ class = "01" }]"#,
                r#"subjects = { users = ["*"] }"#,
            ],
            4,
            "leave subjects out",
        ),
        (
            "wildcard group in a deny",
            vec![
                "[[deny]]",
                r#"name = "x""#,
                r#"devices = [{ class = "01" }]"#,
                r#"subjects = { groups = ["*"] }"#,
            ],
            4,
            "to deny everyone, leave subjects out",
        ),
        (
            "wildcard admins",
            vec!["[settings]", r#"admins = { users = ["*"] }"#],
            2,
            "every user an admin",
        ),
        (
            "wildcard admin group",
            vec!["[settings]", r#"admins = { groups = ["*"] }"#],
            2,
            "name the admins",
        ),
    ];
    for (what, text, line, needle) in cases {
        let text = lines(&text);
        let err = match parse(&text) {
            Ok(p) => panic!("{what}: accepted:\n{text}\n{p:?}"),
            Err(e) => e,
        };
        assert!(
            matches!(err, PolicyError::Invalid { .. }),
            "{what}: {err:?}"
        );
        let shown = err.to_string();
        assert_eq!(err.line(), Some(line), "{what}: {shown}\n{text}");
        assert_eq!(err.file(), FILE, "{what}");
        assert!(
            shown.starts_with(&format!("{FILE}:{line}: ")),
            "{what}: {shown}"
        );
        assert!(shown.contains(needle), "{what}: {shown:?} lacks {needle:?}");
    }
}
