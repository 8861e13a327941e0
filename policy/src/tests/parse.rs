//! Parsing: what the file format accepts, and every refusal with its line.

use std::time::Duration;

use vfio_gate_protocol::{Driver, RuleRef};

use super::{FILE, Names, parse};
use crate::{
    AddressPattern, ClassPattern, DriverSet, Effect, EtcFiles, Finding, Policy, PolicyError,
    Severity, Subjects,
};

/// The example of the design brief and of the crate docs, as an admin would write it.
const EXAMPLE: &str = r#"version = 1                     # optional, default 1

[settings]
idle_timeout = 45

[[rule]]
name     = "lab NIC for vm-users"
subjects = { users = ["alice"], groups = ["vm-users"], uids = [1000, 2000], gids = [1100] }
devices  = [{ address = "0000:01:00.*", vendor = "8086", device = "10d3", class = "0200xx" }]
drivers  = ["vfio-pci"]
companions = ["pci-stub"]

[[deny]]
name    = "never the storage controllers"
devices = [{ class = "01xxxx" }]

[[deny]]
name    = "bob never stubs"
devices = [
  { address = "00:06.1" },
  { vendor = "0x1B36", subsystem_vendor = "1af4", subsystem_device = "1100" },
]
subjects = { users = ["bob"] }
drivers = ["pci-stub"]
"#;

#[test]
fn the_documented_example_parses_as_written() {
    let p = parse(EXAMPLE).unwrap();
    assert_eq!(p.settings().idle_timeout, Duration::from_secs(45));
    assert!(p.findings().is_empty(), "{:?}", p.findings());
    let rules = p.rules();
    assert_eq!(rules.len(), 3);

    let allow = &rules[0];
    assert_eq!(allow.effect(), Effect::Allow);
    assert_eq!(
        allow.origin(),
        &RuleRef {
            name: "lab NIC for vm-users".into(),
            file: FILE.into(),
            line: 6,
        }
    );
    assert_eq!(
        allow.subjects(),
        &Subjects::Listed {
            uids: vec![1000, 2000],
            gids: vec![1100],
        }
    );
    assert_eq!(allow.drivers().to_vec(), vec![Driver::VfioPci]);
    assert_eq!(allow.companions().to_vec(), vec![Driver::PciStub]);
    let m = &allow.devices()[0];
    assert_eq!(
        m.address(),
        Some(&AddressPattern::Glob("0000:01:00.*".into()))
    );
    assert_eq!((m.vendor(), m.device()), (Some(0x8086), Some(0x10d3)));
    assert_eq!(m.class(), Some(ClassPattern::parse("0200").unwrap()));

    let storage = &rules[1];
    assert_eq!(storage.effect(), Effect::Deny);
    assert_eq!(storage.origin().line, 13);
    assert_eq!(storage.subjects(), &Subjects::Everyone);
    assert_eq!(storage.drivers(), DriverSet::ALL);
    assert!(storage.companions().is_empty());

    let bob = &rules[2];
    assert_eq!(bob.origin().line, 17);
    assert_eq!(bob.drivers().to_vec(), vec![Driver::PciStub]);
    assert_eq!(bob.devices().len(), 2);
    assert_eq!(bob.devices()[1].vendor(), Some(0x1b36));
    assert_eq!(bob.devices()[1].subsystem_vendor(), Some(0x1af4));
    assert_eq!(bob.devices()[1].subsystem_device(), Some(0x1100));
}

#[test]
fn minimal_files() {
    // An empty file is a valid policy that denies everything, and says so.
    for text in ["", "version = 1\n", "# nothing here\n"] {
        let p = parse(text).unwrap();
        assert!(p.rules().is_empty());
        assert_eq!(p.settings().idle_timeout, Duration::from_secs(30));
        assert_eq!(p.findings().len(), 1, "{:?}", p.findings());
        assert!(
            p.findings()[0]
                .message
                .contains("every request will be denied")
        );
    }
    // Inline-table arrays are the same thing as [[rule]] headers.
    let p = parse(
        r#"rule = [{ name = "a", subjects = { uids = [1] }, devices = [{ vendor = "8086" }], drivers = ["pci-stub"] }]"#,
    )
    .unwrap();
    assert_eq!(p.rules()[0].origin().line, 1);
    assert!(p.findings().is_empty());
}

#[test]
fn unresolved_names_are_warnings_and_match_nobody() {
    let text = lines(&[
        "[[rule]]",
        r#"name = "ghosts""#,
        r#"subjects = { users = ["carol"], groups = ["nosuch"] }"#,
        r#"devices = [{ vendor = "8086" }]"#,
        r#"drivers = ["vfio-pci"]"#,
        "[[rule]]",
        r#"name = "half""#,
        r#"subjects = { users = ["alice", "dave"] }"#,
        r#"devices = [{ vendor = "8086" }]"#,
        r#"drivers = ["vfio-pci"]"#,
        "[[deny]]",
        r#"name = "no contractors""#,
        r#"devices = [{ vendor = "8086" }]"#,
        r#"subjects = { groups = ["contractors"], uids = [1001] }"#,
    ]);
    let p = parse(&text).unwrap();
    assert!(
        p.findings().iter().all(|f| f.severity == Severity::Warning),
        "{:?}",
        p.findings()
    );
    let w: Vec<String> = p.findings().iter().map(located).collect();
    assert_eq!(w.len(), 5, "{w:?}");
    assert_eq!(p.findings()[4].rule.as_deref(), Some("no contractors"));
    assert!(w[0].contains("grants it nothing"), "{w:?}");
    assert!(
        w[4].starts_with(&format!("{FILE}:14: group \"contractors\"")),
        "{w:?}"
    );
    assert!(w[4].contains("this deny cannot apply to it"), "{w:?}");
    assert_eq!(
        p.rules()[2].subjects(),
        &Subjects::Listed {
            uids: vec![1001],
            gids: vec![]
        }
    );
    assert!(
        w[0].starts_with(&format!("{FILE}:3: user \"carol\"")),
        "{w:?}"
    );
    assert!(
        w[1].starts_with(&format!("{FILE}:3: group \"nosuch\"")),
        "{w:?}"
    );
    assert!(w[2].contains("\"ghosts\" applies to nobody"), "{w:?}");
    assert!(
        w[3].starts_with(&format!("{FILE}:8: user \"dave\"")),
        "{w:?}"
    );
    assert_eq!(
        p.rules()[0].subjects(),
        &Subjects::Listed {
            uids: vec![],
            gids: vec![]
        }
    );
    assert_eq!(
        p.rules()[1].subjects(),
        &Subjects::Listed {
            uids: vec![1000],
            gids: vec![]
        }
    );
}

#[test]
fn names_resolve_through_etc_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("etc")).unwrap();
    std::fs::write(
        dir.path().join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("etc/group"), "vm-users:x:1100:alice\n").unwrap();
    let text = lines(&[
        "[[rule]]",
        r#"name = "a""#,
        r#"subjects = { users = ["alice", "bob"], groups = ["vm-users"] }"#,
        r#"devices = [{ vendor = "8086" }]"#,
        r#"drivers = ["vfio-pci"]"#,
    ]);
    let p = Policy::parse(&text, "p.toml", &EtcFiles::new(dir.path())).unwrap();
    assert_eq!(
        p.rules()[0].subjects(),
        &Subjects::Listed {
            uids: vec![1000],
            gids: vec![1100]
        }
    );
    assert_eq!(p.findings().len(), 1, "{:?}", p.findings());
    assert!(located(&p.findings()[0]).starts_with("p.toml:3: user \"bob\""));

    // With no database at all every name fails, and the warnings say why.
    let empty = tempfile::tempdir().unwrap();
    let p = Policy::parse(&text, "p.toml", &EtcFiles::new(empty.path())).unwrap();
    // Placed on the main file: it is about the policy as a whole.
    assert!(
        p.findings().iter().any(|f| f.at() == "p.toml"
            && f.message.starts_with("cannot read ")
            && f.message.contains("etc/passwd")),
        "{:?}",
        p.findings()
    );
}

/// A load finding as the helper logs it (`warning=`): `file:line: message`.
fn located(f: &Finding) -> String {
    format!("{}: {}", f.at(), f.message)
}

/// Joins lines so that a test's expected line numbers can be read off the array index + 1.
fn lines(l: &[&str]) -> String {
    let mut s = l.join("\n");
    s.push('\n');
    s
}

/// A valid allow rule occupying lines `first..first+4`, for building bad files around.
fn ok_rule(name: &str) -> Vec<String> {
    vec![
        "[[rule]]".into(),
        format!("name = {name:?}"),
        r#"subjects = { users = ["alice"] }"#.into(),
        r#"devices = [{ address = "01:00.0" }]"#.into(),
        r#"drivers = ["vfio-pci"]"#.into(),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Syntax,
    Invalid,
    Version,
}

#[test]
fn every_refusal_names_its_line() {
    // (what, file lines, kind, expected line, text the message must contain)
    let ok = ok_rule("fine");
    let ok: Vec<&str> = ok.iter().map(String::as_str).collect();
    let with_ok = |rest: &[&'static str]| -> Vec<&str> {
        let mut v = ok.clone();
        v.extend_from_slice(rest);
        v
    };
    let cases: Vec<(&str, Vec<&str>, Kind, u32, &str)> = vec![
        // TOML itself.
        (
            "unterminated string",
            with_ok(&["[[deny]]", r#"name = "x"#]),
            Kind::Syntax,
            7,
            "string",
        ),
        (
            "duplicate key",
            with_ok(&["[[deny]]", r#"name = "x""#, r#"name = "y""#]),
            Kind::Syntax,
            8,
            "duplicate key",
        ),
        (
            "not a key",
            vec!["version = 1", "", "this is not toml"],
            Kind::Syntax,
            3,
            "",
        ),
        // Unknown keys, at every level.
        (
            "unknown top-level table",
            with_ok(&["", "[[rules]]", r#"name = "x""#]),
            Kind::Invalid,
            7,
            "unknown field `rules`",
        ),
        (
            "unknown top-level key",
            vec!["version = 1", "idle_timeout = 3"],
            Kind::Invalid,
            2,
            "unknown field `idle_timeout`",
        ),
        (
            "unknown key in a rule",
            vec![
                "[[rule]]",
                r#"name = "x""#,
                r#"subjects = { users = ["alice"] }"#,
                r#"devices = [{ vendor = "8086" }]"#,
                r#"drivers = ["vfio-pci"]"#,
                r#"driver = ["pci-stub"]"#,
            ],
            Kind::Invalid,
            6,
            "unknown field `driver`",
        ),
        (
            "unknown key in subjects",
            vec![
                "[[rule]]",
                r#"name = "x""#,
                r#"subjects = { user = ["alice"] }"#,
                r#"devices = [{ vendor = "8086" }]"#,
                r#"drivers = ["vfio-pci"]"#,
            ],
            Kind::Invalid,
            3,
            "unknown field `user`",
        ),
        (
            "unknown key in a matcher",
            vec![
                "[[deny]]",
                r#"name = "x""#,
                "devices = [",
                r#"  { vendor = "8086" },"#,
                r#"  { vendor = "8086", slot = "3" },"#,
                "]",
            ],
            Kind::Invalid,
            5,
            "unknown field `slot`",
        ),
        (
            "unknown key in settings",
            vec!["[settings]", "idle_timeout = 3", "sandbox = false"],
            Kind::Invalid,
            3,
            "unknown field `sandbox`",
        ),
        // Wrong types.
        (
            "drivers as a string",
            with_ok(&[
                "[[deny]]",
                r#"name = "x""#,
                r#"devices = [{ class = "01" }]"#,
                r#"drivers = "vfio-pci""#,
            ]),
            Kind::Invalid,
            9,
            "invalid type",
        ),
        (
            "uid as a string",
            vec![
                "[[rule]]",
                r#"name = "x""#,
                r#"subjects = { uids = ["1000"] }"#,
                r#"devices = [{ vendor = "8086" }]"#,
                r#"drivers = ["vfio-pci"]"#,
            ],
            Kind::Invalid,
            3,
            "expected a uid or gid",
        ),
        (
            "negative uid",
            vec![
                "[[rule]]",
                r#"name = "x""#,
                r#"subjects = { uids = [-1] }"#,
                r#"devices = [{ vendor = "8086" }]"#,
                r#"drivers = ["vfio-pci"]"#,
            ],
            Kind::Invalid,
            3,
            "-1",
        ),
        (
            "uid (uid_t)-1",
            vec![
                "[[rule]]",
                r#"name = "x""#,
                "subjects = { uids = [4294967295] }",
                r#"devices = [{ vendor = "8086" }]"#,
                r#"drivers = ["vfio-pci"]"#,
            ],
            Kind::Invalid,
            3,
            "names nobody",
        ),
        (
            "vendor as an integer",
            with_ok(&[
                "[[deny]]",
                r#"name = "x""#,
                "devices = [{ vendor = 0x8086 }]",
            ]),
            Kind::Invalid,
            8,
            "are quoted strings",
        ),
        (
            "name as an integer",
            vec!["[[deny]]", "name = 3", r#"devices = [{ class = "01" }]"#],
            Kind::Invalid,
            2,
            "invalid type",
        ),
        (
            "a single [rule] table",
            vec!["[rule]", r#"name = "x""#],
            Kind::Invalid,
            1,
            "[[rule]]",
        ),
        (
            "devices as a table",
            vec!["[[deny]]", r#"name = "x""#, r#"devices = { class = "01" }"#],
            Kind::Invalid,
            3,
            "devices = [{",
        ),
        // Missing required keys point at the rule's header.
        (
            "rule without a name",
            with_ok(&["", "[[rule]]", r#"subjects = { uids = [1] }"#]),
            Kind::Invalid,
            7,
            "missing field `name`",
        ),
        (
            "allow without subjects",
            vec![
                "[[rule]]",
                r#"name = "x""#,
                r#"devices = [{ vendor = "8086" }]"#,
                r#"drivers = ["vfio-pci"]"#,
            ],
            Kind::Invalid,
            1,
            "missing field `subjects`",
        ),
        (
            "allow without drivers",
            vec![
                "[[rule]]",
                r#"name = "x""#,
                r#"subjects = { uids = [1] }"#,
                r#"devices = [{ vendor = "8086" }]"#,
            ],
            Kind::Invalid,
            1,
            "missing field `drivers`",
        ),
        (
            "deny without devices",
            with_ok(&["[[deny]]", r#"name = "x""#]),
            Kind::Invalid,
            6,
            "missing field `devices`",
        ),
        // Empty things.
        (
            "empty matcher",
            vec![
                "[[deny]]",
                r#"name = "x""#,
                "devices = [",
                r#"  { class = "01" },"#,
                "  {},",
                "]",
            ],
            Kind::Invalid,
            5,
            "empty device matcher",
        ),
        (
            "empty devices",
            vec!["[[deny]]", r#"name = "x""#, "", "devices = []"],
            Kind::Invalid,
            4,
            "devices is empty",
        ),
        (
            "empty drivers",
            vec![
                "[[rule]]",
                r#"name = "x""#,
                r#"subjects = { uids = [1] }"#,
                r#"devices = [{ vendor = "8086" }]"#,
                "drivers = []",
            ],
            Kind::Invalid,
            5,
            "drivers is empty",
        ),
        (
            "empty deny drivers",
            vec![
                "[[deny]]",
                r#"name = "x""#,
                r#"devices = [{ vendor = "8086" }]"#,
                "drivers = []",
            ],
            Kind::Invalid,
            4,
            "leave drivers out",
        ),
        (
            "empty subjects",
            vec![
                "[[rule]]",
                r#"name = "x""#,
                "subjects = {}",
                r#"devices = [{ vendor = "8086" }]"#,
                r#"drivers = ["vfio-pci"]"#,
            ],
            Kind::Invalid,
            3,
            "subjects is empty",
        ),
        (
            "subjects with only empty lists",
            vec![
                "[[rule]]",
                r#"name = "x""#,
                "subjects = { users = [], gids = [] }",
                r#"devices = [{ vendor = "8086" }]"#,
                r#"drivers = ["vfio-pci"]"#,
            ],
            Kind::Invalid,
            3,
            "subjects is empty",
        ),
        (
            "empty deny subjects",
            vec![
                "[[deny]]",
                r#"name = "x""#,
                r#"devices = [{ vendor = "8086" }]"#,
                "subjects = {}",
            ],
            Kind::Invalid,
            4,
            "leave subjects out",
        ),
        (
            "empty user name",
            vec![
                "[[rule]]",
                r#"name = "x""#,
                r#"subjects = { users = ["alice", ""] }"#,
                r#"devices = [{ vendor = "8086" }]"#,
                r#"drivers = ["vfio-pci"]"#,
            ],
            Kind::Invalid,
            3,
            "is not a user name",
        ),
        // Driver names.
        (
            "unknown driver",
            vec![
                "[[rule]]",
                r#"name = "x""#,
                r#"subjects = { uids = [1] }"#,
                r#"devices = [{ vendor = "8086" }]"#,
                "drivers = [",
                r#"  "vfio-pci","#,
                r#"  "vfio_pci","#,
                "]",
            ],
            Kind::Invalid,
            7,
            "use vfio-pci or pci-stub",
        ),
        (
            "unknown companion driver",
            with_ok(&[r#"companions = ["e1000e"]"#]),
            Kind::Invalid,
            6,
            "\"e1000e\" is not a driver",
        ),
        // Names.
        (
            "duplicate name across rule and deny",
            with_ok(&[
                "",
                "[[deny]]",
                r#"name = "fine""#,
                r#"devices = [{ class = "01" }]"#,
            ]),
            Kind::Invalid,
            8,
            "already used at /etc/vfio-gate/policy.toml:2",
        ),
        (
            "duplicate allow name",
            {
                let mut v = ok.clone();
                v.extend(ok.iter().copied());
                v
            },
            Kind::Invalid,
            7,
            "must be unique",
        ),
        (
            "empty rule name",
            vec![
                "[[deny]]",
                r#"name = """#,
                r#"devices = [{ class = "01" }]"#,
            ],
            Kind::Invalid,
            2,
            "must not be empty",
        ),
        (
            "blank rule name",
            vec![
                "[[deny]]",
                r#"name = "   ""#,
                r#"devices = [{ class = "01" }]"#,
            ],
            Kind::Invalid,
            2,
            "must not be empty",
        ),
        (
            "rule name with a newline",
            vec![
                "[[deny]]",
                r#"name = "a\nb""#,
                r#"devices = [{ class = "01" }]"#,
            ],
            Kind::Invalid,
            2,
            "control characters",
        ),
        // Matcher fields.
        (
            "bad address",
            with_ok(&[
                "[[deny]]",
                r#"name = "x""#,
                r#"devices = [{ address = "01:00.8" }]"#,
            ]),
            Kind::Invalid,
            8,
            "function number",
        ),
        (
            "address with a slash",
            with_ok(&[
                "[[deny]]",
                r#"name = "x""#,
                r#"devices = [{ address = "01:00.0/.." }]"#,
            ]),
            Kind::Invalid,
            8,
            "contains '/'",
        ),
        (
            "bad vendor",
            with_ok(&[
                "[[deny]]",
                r#"name = "x""#,
                r#"devices = [{ vendor = "808" }]"#,
            ]),
            Kind::Invalid,
            8,
            "vendor \"808\" is not a PCI ID",
        ),
        (
            "bad device",
            with_ok(&[
                "[[deny]]",
                r#"name = "x""#,
                r#"devices = [{ device = "10d3x" }]"#,
            ]),
            Kind::Invalid,
            8,
            "device \"10d3x\"",
        ),
        (
            "bad subsystem vendor",
            with_ok(&[
                "[[deny]]",
                r#"name = "x""#,
                r#"devices = [{ subsystem_vendor = "" }]"#,
            ]),
            Kind::Invalid,
            8,
            "subsystem_vendor",
        ),
        (
            "bad subsystem device",
            with_ok(&[
                "[[deny]]",
                r#"name = "x""#,
                r#"devices = [{ subsystem_device = "-1" }]"#,
            ]),
            Kind::Invalid,
            8,
            "subsystem_device",
        ),
        (
            "bad class length",
            with_ok(&[
                "[[deny]]",
                r#"name = "x""#,
                r#"devices = [{ class = "010" }]"#,
            ]),
            Kind::Invalid,
            8,
            "class \"010\" has 3 characters",
        ),
        (
            "class with 0x",
            with_ok(&[
                "[[deny]]",
                r#"name = "x""#,
                r#"devices = [{ class = "0x0300" }]"#,
            ]),
            Kind::Invalid,
            8,
            "ambiguous",
        ),
        // Version and settings.
        (
            "version 2",
            vec!["# comment", "version = 2"],
            Kind::Version,
            2,
            "version 2 is not supported",
        ),
        (
            "version 2 with keys this version does not know",
            vec!["version = 2", "[limits]", "groups_per_user = 2"],
            Kind::Version,
            1,
            "version 2 is not supported",
        ),
        (
            "the first problem in the file is reported, deny or allow",
            vec![
                "[[deny]]",
                r#"name = "x""#,
                r#"devices = [{ class = "1" }]"#,
                "[[rule]]",
                r#"name = "y""#,
                r#"subjects = { uids = [1] }"#,
                r#"devices = [{ vendor = "1" }]"#,
                r#"drivers = ["vfio-pci"]"#,
            ],
            Kind::Invalid,
            3,
            "class \"1\"",
        ),
        (
            "a duplicate is its second occurrence, deny first",
            {
                let mut v = vec![
                    "[[deny]]",
                    r#"name = "fine""#,
                    r#"devices = [{ class = "01" }]"#,
                ];
                v.extend(ok.iter().copied());
                v
            },
            Kind::Invalid,
            5,
            "already used at /etc/vfio-gate/policy.toml:2",
        ),
        (
            "version 0",
            vec!["version = 0"],
            Kind::Version,
            1,
            "version 0",
        ),
        (
            "version as a string",
            vec!["version = \"1\""],
            Kind::Invalid,
            1,
            "expected an integer",
        ),
        (
            "idle timeout zero",
            vec!["version = 1", "[settings]", "idle_timeout = 0"],
            Kind::Invalid,
            3,
            "from 1 to 86400",
        ),
        (
            "idle timeout too long",
            vec!["[settings]", "idle_timeout = 86401"],
            Kind::Invalid,
            2,
            "out of range",
        ),
        (
            "idle timeout as text",
            vec!["[settings]", "idle_timeout = \"30s\""],
            Kind::Invalid,
            2,
            "expected an integer",
        ),
    ];

    for (what, text, kind, line, needle) in cases {
        let text = lines(&text);
        let err = match parse(&text) {
            Ok(p) => panic!("{what}: accepted:\n{text}\n{p:?}"),
            Err(e) => e,
        };
        let got_kind = match &err {
            PolicyError::Syntax { .. } => Kind::Syntax,
            PolicyError::Invalid { .. } => Kind::Invalid,
            PolicyError::UnsupportedVersion { .. } => Kind::Version,
            other => panic!("{what}: unexpected error {other:?}"),
        };
        let shown = err.to_string();
        assert_eq!(got_kind, kind, "{what}: {shown}");
        assert_eq!(err.line(), Some(line), "{what}: {shown}\n{text}");
        assert!(
            shown.starts_with(&format!("{FILE}:{line}: ")),
            "{what}: {shown}"
        );
        assert!(shown.contains(needle), "{what}: {shown:?} lacks {needle:?}");
        assert!(!shown.ends_with('\n'), "{what}: {shown:?}");
    }
}

#[test]
fn one_refusal_reads_well() {
    let err = parse(&lines(&[
        "[[rule]]",
        r#"name = "x""#,
        r#"subjects = { users = ["alice"] }"#,
        r#"devices = [{ address = "01:00.0" }]"#,
        r#"drivers = ["vfio"]"#,
    ]))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/vfio-gate/policy.toml:5: \"vfio\" is not a driver vfio-gate binds to: use vfio-pci \
         or pci-stub"
    );
}

#[test]
fn the_resolver_is_only_asked_about_names_in_the_file() {
    struct Panics;
    impl crate::NameResolver for Panics {
        fn uid(&self, u: &str) -> Option<u32> {
            panic!("asked for user {u}")
        }
        fn gid(&self, g: &str) -> Option<u32> {
            panic!("asked for group {g}")
        }
    }
    let text = lines(&[
        "[[rule]]",
        r#"name = "x""#,
        "subjects = { uids = [1000], gids = [1100] }",
        r#"devices = [{ address = "01:00.0" }]"#,
        r#"drivers = ["vfio-pci"]"#,
    ]);
    Policy::parse(&text, FILE, &Panics).unwrap();
    // Sanity: the shared fake resolves what the other tests rely on.
    assert_eq!(crate::NameResolver::uid(&Names, "alice"), Some(1000));
}
