//! `docs/json.md` as written: every JSON example in it is what the command it names prints.
//!
//! Each example is a fenced block whose info string is `json ID`; the section it stands in
//! (from the heading above it) names the command line in backquotes. This test runs that
//! command for each ID ([`examples`]) against the same fake helper answer or fixture host, and
//! compares the documents as JSON values after normalising what differs from one machine to the
//! next: the fixture's temporary root (removed: paths read as on a host), the fake helper's
//! socket (`/run/vfio-gate.sock`), user names read from this machine's `/etc/passwd` (the test
//! guest's names instead: root, alice, bob), and the policy hash (which covers the files' paths:
//! the fixture's is replaced by the hash of the same policy at `/etc/vfio-gate/policy.toml`).
//!
//! After a deliberate change of a document, regenerate the examples with
//! `VFIO_GATE_BLESS_JSON_DOCS=1 cargo test -p vfio-gate --test cli json_docs`, and read the diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use vfio_gate_policy::{EtcFiles, Policy};
use vfio_gate_protocol::{
    BindReport, DenyReason, Driver, DriverVerdict, ExplainReport, MemberKind, Plan, PlanStep,
    ReleaseReport, ReleasedGroup, Reservation, Response, RestoredDevice, RuleRef, StepAction,
    WireError,
};

use crate::fixtures::{addr, guest_list};
use crate::util::{FakeHelper, HostFixture, against, is_root, run, vfio_gate};

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/json.md");
const BLESS: &str = "VFIO_GATE_BLESS_JSON_DOCS";

/// The policy of the offline examples: the test guest's `systemd-reserve.policy.toml`, and a
/// deny. Its rule lines are the ones the helper examples cite.
const DOCS_POLICY: &str = r#"# The policy of docs/json.md's examples (tests/vm/systemd-reserve.policy.toml with a deny):
# the e1000e at 01:00.0 parked on pci-stub from boot, and the edu of group 11 held on vfio-pci
# with its group's e1000 on pci-stub, so the group is viable from boot. alice may bind both to
# vfio-pci; bob nothing; nobody storage.
version = 1

[settings]
idle_timeout = 30

[[rule]]
name     = "alice: the reserved lab devices"
subjects = { users = ["alice"] }
devices  = [
    { address = "0000:01:00.0", vendor = "8086", device = "10d3" },
    { address = "0000:05:02.0", vendor = "1234", device = "11e8" },
]
drivers  = ["vfio-pci"]
companions = ["pci-stub"]

[[reserve]]
name    = "the lab NIC, parked from boot"
devices = [{ address = "0000:01:00.0", vendor = "8086", device = "10d3" }]
driver  = "pci-stub"

[[reserve]]
name       = "group 11, held from boot"
devices    = [{ address = "0000:05:02.0", vendor = "1234", device = "11e8" }]
driver     = "vfio-pci"
companions = "pci-stub"

[[deny]]
name    = "storage is never handed out"
devices = [{ class = "01" }]
"#;

/// The hash of [`DOCS_POLICY`] as the policy at `path` (its one file).
fn docs_policy_hash(path: &str, fx: &HostFixture) -> String {
    Policy::parse_files(&[(path, DOCS_POLICY)], &EtcFiles::new(fx.root()))
        .expect("the docs policy parses")
        .sha256()
}

/// The user names of the test guest's `/etc/passwd`, which the documents show.
const GUEST_USERS: [(u64, &str); 3] = [(0, "root"), (1000, "alice"), (1001, "bob")];

/// The kernel release the offline examples' module directory is named after.
const RELEASE: &str = "6.1.0-56-amd64";

/// Where an example's answer comes from.
enum Source {
    /// The fake helper answers this (no fixture host is read).
    Helper(Box<Response>),
    /// No helper at all (a socket that does not exist); the fixture host.
    Fixture,
}

/// One example of the document.
struct Example {
    /// The info string's ID.
    id: &'static str,
    /// The command line the document shows for it.
    shown: &'static str,
    source: Source,
    /// The arguments run, with `{policy}` for the fixture's policy file and `{modules}` for its
    /// module directory.
    args: &'static [&'static str],
    /// Whether the command names users from this machine's `/etc/passwd` (helper answers
    /// without `--etc-root`): those names are replaced by the guest's.
    names_from_this_host: bool,
}

fn rule(name: &str, line: u32) -> RuleRef {
    RuleRef {
        name: name.into(),
        file: "/etc/vfio-gate/policy.toml".into(),
        line,
    }
}

fn alice_rule() -> RuleRef {
    rule("alice: the reserved lab devices", 10)
}

/// Group 11 as `bind 05:02.0 --group` plans it on the guest before any reservation: the e1000
/// to pci-stub as a companion, the edu to vfio-pci, the bridge left alone.
fn group_11_plan() -> Plan {
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
                "04:00.0",
                MemberKind::Bridge,
                0x1b36,
                0x000e,
                None,
                StepAction::Keep {
                    reason: "a bridge without a driver does not block the group".into(),
                },
            ),
            step(
                "05:01.0",
                MemberKind::Endpoint,
                0x8086,
                0x100e,
                Some("e1000"),
                StepAction::Bind {
                    driver: Driver::PciStub,
                    rule: alice_rule(),
                },
            ),
            step(
                "05:02.0",
                MemberKind::Endpoint,
                0x1234,
                0x11e8,
                None,
                StepAction::Bind {
                    driver: Driver::VfioPci,
                    rule: alice_rule(),
                },
            ),
        ],
    }
}

/// [`group_11_plan`] once the reservations hold the group: the edu taken as it is, the e1000
/// kept on pci-stub.
fn group_11_reserved_plan() -> Plan {
    let mut plan = group_11_plan();
    plan.steps[1].driver = Some("pci-stub".into());
    plan.steps[1].action = StepAction::Keep {
        reason: "pci-stub does not block the group".into(),
    };
    plan.steps[2].driver = Some("vfio-pci".into());
    plan.steps[2].action = StepAction::Adopt {
        driver: Driver::VfioPci,
        rule: alice_rule(),
    };
    plan
}

fn examples(fx: &HostFixture) -> Vec<Example> {
    let guest = || Response::Devices(guest_list());
    let bound = |dry_run| {
        Response::Bound(BindReport {
            plan: group_11_plan(),
            dry_run,
            vfio_node: (!dry_run).then(|| "/dev/vfio/11".to_owned()),
        })
    };
    let explained = ExplainReport {
        device: addr("05:02.0"),
        vendor: 0x1234,
        device_id: 0x11e8,
        class: 0x00ff00,
        driver: Some("vfio-pci".into()),
        iommu_group: Some(11),
        uid: 1000,
        verdicts: vec![
            DriverVerdict {
                driver: Driver::VfioPci,
                allowed: true,
                rule: Some(alice_rule()),
                allows: vec![alice_rule()],
                denies: vec![],
            },
            DriverVerdict {
                driver: Driver::PciStub,
                allowed: false,
                rule: None,
                allows: vec![],
                denies: vec![],
            },
        ],
        guards: vec![],
        plan: Some(Ok(group_11_reserved_plan())),
        holder: None,
        reserved: Some(Reservation {
            driver: Driver::VfioPci,
            rule: rule("group 11, held from boot", 25),
            companion_of: None,
        }),
        policy_sha256: docs_policy_hash("/etc/vfio-gate/policy.toml", fx),
    };
    let released = ReleaseReport {
        groups: vec![ReleasedGroup {
            group: Some(11),
            owner_uid: 1000,
            devices: vec![
                RestoredDevice {
                    device: addr("05:01.0"),
                    expected_driver: Some("e1000".into()),
                    restored_driver: Some("e1000".into()),
                },
                RestoredDevice {
                    device: addr("05:02.0"),
                    expected_driver: None,
                    restored_driver: None,
                },
            ],
        }],
    };
    let denied = WireError::Denied {
        why: DenyReason::Policy,
        rule: Some(rule("storage is never handed out", 31)),
        detail: "rule 'storage is never handed out' (/etc/vfio-gate/policy.toml:31) denies \
                 binding 03:00.0 to vfio-pci"
            .into(),
    };
    let needs_group = WireError::NeedsGroup {
        group: 11,
        plan: group_11_plan(),
        reason: "05:01.0 (e1000) must leave its host driver for pci-stub".into(),
    };
    vec![
        Example {
            id: "list",
            shown: "vfio-gate list --allowed --json",
            source: Source::Helper(Box::new(guest())),
            args: &["list", "--allowed", "--json"],
            names_from_this_host: false,
        },
        Example {
            id: "list-by-group",
            shown: "vfio-gate list --by-group --group 11 --json",
            source: Source::Helper(Box::new(guest())),
            args: &["list", "--by-group", "--group", "11", "--json"],
            names_from_this_host: false,
        },
        Example {
            id: "list-sysfs",
            shown: "vfio-gate list --group 8 --json",
            source: Source::Fixture,
            args: &["list", "--group", "8", "--json"],
            names_from_this_host: false,
        },
        Example {
            id: "bind",
            shown: "vfio-gate bind 05:02.0 --group --json",
            source: Source::Helper(Box::new(bound(false))),
            args: &["bind", "05:02.0", "--group", "--json"],
            names_from_this_host: false,
        },
        Example {
            id: "bind-dry-run",
            shown: "vfio-gate bind 05:02.0 --group --dry-run --json",
            source: Source::Helper(Box::new(bound(true))),
            args: &["bind", "05:02.0", "--group", "--dry-run", "--json"],
            names_from_this_host: false,
        },
        Example {
            id: "release",
            shown: "vfio-gate release 05:02.0 --json",
            source: Source::Helper(Box::new(Response::Released(released))),
            args: &["release", "05:02.0", "--json"],
            names_from_this_host: true,
        },
        Example {
            id: "explain",
            shown: "vfio-gate explain 05:02.0 --json",
            source: Source::Helper(Box::new(Response::Explained(explained))),
            args: &["explain", "05:02.0", "--json"],
            names_from_this_host: true,
        },
        Example {
            id: "explain-policy",
            shown: "vfio-gate explain 05:02.0 --user alice --policy /etc/vfio-gate/policy.toml --json",
            source: Source::Fixture,
            args: &[
                "explain", "05:02.0", "--user", "alice", "--policy", "{policy}", "--json",
            ],
            names_from_this_host: false,
        },
        Example {
            id: "policy-check",
            shown: "vfio-gate policy check --json",
            source: Source::Fixture,
            args: &["policy", "check", "{policy}", "--json"],
            names_from_this_host: false,
        },
        Example {
            id: "policy-report",
            shown: "vfio-gate policy report --json",
            source: Source::Fixture,
            args: &["policy", "report", "--policy", "{policy}", "--json"],
            names_from_this_host: false,
        },
        Example {
            id: "boot-config",
            shown: "vfio-gate boot-config --json",
            source: Source::Fixture,
            args: &[
                "boot-config",
                "--policy",
                "{policy}",
                "--modules-dir",
                "{modules}",
                "--json",
            ],
            names_from_this_host: false,
        },
        Example {
            id: "error-denied",
            shown: "vfio-gate bind 03:00.0 --json",
            source: Source::Helper(Box::new(Response::Error(denied))),
            args: &["bind", "03:00.0", "--json"],
            names_from_this_host: false,
        },
        Example {
            id: "error-needs-group",
            shown: "vfio-gate bind 05:02.0 --json",
            source: Source::Helper(Box::new(Response::Error(needs_group))),
            args: &["bind", "05:02.0", "--json"],
            names_from_this_host: false,
        },
        Example {
            id: "error-unreachable",
            shown: "vfio-gate release --all --json",
            source: Source::Fixture,
            args: &["release", "--all", "--json"],
            names_from_this_host: false,
        },
        Example {
            id: "error-run",
            shown: "vfio-gate run --json --device 01:00.0 -- qemu-system-x86_64",
            source: Source::Fixture,
            args: &[
                "run",
                "--json",
                "--device",
                "01:00.0",
                "--",
                "qemu-system-x86_64",
            ],
            names_from_this_host: false,
        },
    ]
}

/// One `json ID` block of the document.
#[derive(Debug)]
struct Block {
    id: String,
    /// The text of the section the block stands in, from its heading.
    section: String,
    /// The block's lines (without the fences), as byte offsets into the document.
    body: std::ops::Range<usize>,
}

fn blocks(doc: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut section_start = 0;
    let mut open: Option<(String, usize)> = None;
    let mut in_other_block = false;
    for line in doc.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let trimmed = line.trim_end();
        match &open {
            Some((id, body_start)) if trimmed == "```" => {
                out.push(Block {
                    id: id.clone(),
                    section: doc[section_start..*body_start].to_owned(),
                    body: *body_start..start,
                });
                open = None;
                continue;
            }
            Some(_) => continue,
            None => {}
        }
        if in_other_block {
            in_other_block = trimmed != "```";
            continue;
        }
        if let Some(id) = trimmed.strip_prefix("```json ") {
            open = Some((id.trim().to_owned(), offset));
        } else if trimmed.starts_with("```") {
            in_other_block = true;
        } else if trimmed.starts_with('#') {
            section_start = start;
        }
    }
    assert!(open.is_none(), "an unclosed json block in {DOC}");
    out
}

/// The fixture host of the offline examples: the whole test guest, [`DOCS_POLICY`], and the
/// module directory of [`RELEASE`].
fn fixture() -> HostFixture {
    let fx = HostFixture::new(DOCS_POLICY, &[]);
    fx.add_guest_devices();
    let modules = fx.root().join("lib/modules").join(RELEASE);
    std::fs::create_dir_all(&modules).unwrap();
    for f in ["modules.alias", "modules.builtin.alias"] {
        std::fs::copy(fx.modules_dir().join(f), modules.join(f)).unwrap();
    }
    fx
}

/// Runs `e`, returning stdout normalised as a string (what the document shows).
fn produce(e: &Example, fx: &HostFixture) -> String {
    let policy = fx.policy().display().to_string();
    let modules = fx.root().join("lib/modules").join(RELEASE);
    let modules = modules.display().to_string();
    let args: Vec<String> = e
        .args
        .iter()
        .map(|a| {
            a.replace("{policy}", &policy)
                .replace("{modules}", &modules)
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let socket: PathBuf;
    let mut fake = None;
    let mut cmd: Command = match &e.source {
        Source::Helper(answer) => {
            let helper = FakeHelper::answering((**answer).clone());
            socket = helper.socket().to_owned();
            let mut cmd = against(&helper, &args);
            // Names of list's holders come from the guest's accounts.
            if args[0] == "list" {
                cmd.arg("--etc-root").arg(fx.root());
            }
            fake = Some(helper);
            cmd
        }
        Source::Fixture => {
            socket = fx.root().join("run/vfio-gate.sock");
            let mut cmd = vfio_gate();
            cmd.arg("--socket").arg(&socket).args(&args);
            if matches!(args[0], "list" | "explain" | "policy" | "boot-config") {
                cmd.arg("--sysfs-root")
                    .arg(fx.sysfs())
                    .arg("--etc-root")
                    .arg(fx.root());
            }
            cmd
        }
    };
    cmd.env("TZ", "UTC");
    let r = run(cmd);
    if let Some(fake) = fake {
        fake.requests();
    }
    let mut text = r
        .stdout
        .replace(
            &docs_policy_hash(&policy, fx),
            &docs_policy_hash("/etc/vfio-gate/policy.toml", fx),
        )
        .replace(&socket.display().to_string(), "/run/vfio-gate.sock")
        .replace(&fx.root().display().to_string(), "");
    if e.names_from_this_host {
        text = guest_names(&text);
    }
    text
}

/// `text` with each `"user"` of an object with a `"uid"` named as the test guest names it.
fn guest_names(text: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(text).expect("JSON");
    let mut pairs: BTreeMap<String, String> = BTreeMap::new();
    collect_users(&v, &mut pairs);
    let mut out = text.to_owned();
    for (here, guest) in pairs {
        out = out.replace(&format!("\"user\": {here}"), &format!("\"user\": {guest}"));
    }
    out
}

fn collect_users(v: &serde_json::Value, pairs: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(o) => {
            if let (Some(uid), Some(user)) = (o.get("uid").and_then(|u| u.as_u64()), o.get("user"))
            {
                let guest = GUEST_USERS
                    .iter()
                    .find(|(u, _)| *u == uid)
                    .map_or(serde_json::Value::Null, |(_, n)| (*n).into());
                let (here, guest) = (user.to_string(), guest.to_string());
                let previous = pairs.insert(here.clone(), guest.clone());
                assert!(
                    previous.is_none_or(|p| p == guest),
                    "two uids named {here} on this machine: cannot tell them apart"
                );
            }
            o.values().for_each(|x| collect_users(x, pairs));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_users(x, pairs)),
        _ => {}
    }
}

fn value(text: &str, what: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what} is not JSON: {e}\n{text}"))
}

#[test]
fn every_example_of_docs_json_md_is_what_its_command_prints() {
    let doc = std::fs::read_to_string(DOC).expect("docs/json.md");
    let found = blocks(&doc);
    let fx = fixture();
    let examples = examples(&fx);
    let bless = std::env::var_os(BLESS).is_some();

    // The document's examples and this table name the same IDs, each once.
    let mut doc_ids: Vec<&str> = found.iter().map(|b| b.id.as_str()).collect();
    doc_ids.sort_unstable();
    let mut ours: Vec<&str> = examples.iter().map(|e| e.id).collect();
    ours.sort_unstable();
    assert_eq!(
        doc_ids, ours,
        "the json blocks of {DOC} and this test's examples"
    );

    let root = is_root();
    let mut failures = Vec::new();
    let mut replacements: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    for b in &found {
        let e = examples.iter().find(|e| e.id == b.id).unwrap();
        if !b.section.contains(&format!("`{}`", e.shown)) {
            failures.push(format!(
                "{}: its section does not show the command `{}`",
                e.id, e.shown
            ));
        }
        if matches!(e.source, Source::Fixture)
            && e.args[0] != "run"
            && e.args[0] != "release"
            && !root
        {
            eprintln!(
                "SKIPPED docs/json.md example {}: loading the fixture policy needs root",
                e.id
            );
            continue;
        }
        let produced = produce(e, &fx);
        if bless {
            replacements.push((b.body.clone(), produced));
            continue;
        }
        let expected = value(&doc[b.body.clone()], &format!("{DOC} example {}", e.id));
        let actual = value(&produced, &format!("the output of `{}`", e.shown));
        if expected != actual {
            failures.push(format!(
                "{}: `{}` prints\n{produced}\nwhich {DOC} does not show (re-run with {BLESS}=1 to \
                 take it, then read the diff)",
                e.id, e.shown
            ));
        }
    }
    if bless {
        let mut text = doc.clone();
        replacements.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
        for (range, body) in replacements {
            text.replace_range(range, &body);
        }
        std::fs::write(Path::new(DOC), text).expect("write docs/json.md");
        eprintln!("{BLESS}: rewrote the examples of {DOC}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_blocks_of_a_document_are_found_with_their_sections() {
    let doc = "# A\n\ntext `cmd a`:\n\n```json one\n{}\n```\n\n```sh\n```json no\n```\n## B\n```json two\n[1]\n```\n";
    let b = blocks(doc);
    assert_eq!(b.len(), 2, "{b:?}");
    assert_eq!(b[0].id, "one");
    assert!(b[0].section.starts_with("# A\n") && b[0].section.contains("`cmd a`"));
    assert_eq!(&doc[b[0].body.clone()], "{}\n");
    assert_eq!(b[1].id, "two");
    assert!(b[1].section.starts_with("## B\n"));
    assert_eq!(&doc[b[1].body.clone()], "[1]\n");
}
