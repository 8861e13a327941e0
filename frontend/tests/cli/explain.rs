//! `vfio-gate explain`: the helper's answer (online), and the same answer computed here (`--policy`, offline).

use vfio_gate_protocol::{
    Driver, DriverVerdict, ExplainReport, Guard, GuardFinding, Holder, Request, Response, RuleRef,
    WireError,
};

use crate::fixtures::*;
use crate::util::{
    self, FakeHelper, HostFixture, Reply, against, header_line, needs_root, pci_ids_fixture, run,
};

/// `vfio-gate explain` against the fake helper: what it asks, what it prints.
mod online {
    use super::*;

    fn storage_rule() -> RuleRef {
        RuleRef {
            name: "never storage".into(),
            file: "/etc/vfio-gate/policy.toml".into(),
            line: 30,
        }
    }

    fn nvme_rule() -> RuleRef {
        RuleRef {
            name: "alice: the NVMe".into(),
            file: "/etc/vfio-gate/policy.d/50-alice.toml".into(),
            line: 2,
        }
    }

    /// The edu device, allowed to vfio-pci with the e1000 as companion, pci-stub by default
    /// denied.
    fn allowed() -> ExplainReport {
        ExplainReport {
            device: addr("05:02.0"),
            vendor: 0x1234,
            device_id: 0x11e8,
            class: 0x00ff00,
            driver: None,
            iommu_group: Some(11),
            uid: 0,
            verdicts: vec![
                DriverVerdict {
                    driver: Driver::VfioPci,
                    allowed: true,
                    rule: Some(rule()),
                    allows: vec![rule(), companion_rule()],
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
            plan: Some(Ok(group_11_plan())),
            holder: None,
            reserved: None,
            policy_sha256: "5e".repeat(32),
        }
    }

    fn denied() -> ExplainReport {
        ExplainReport {
            device: addr("03:00.0"),
            vendor: 0x1b36,
            device_id: 0x0010,
            class: 0x010802,
            driver: Some("nvme".into()),
            iommu_group: Some(10),
            uid: 0,
            verdicts: vec![DriverVerdict {
                driver: Driver::VfioPci,
                allowed: false,
                rule: Some(storage_rule()),
                allows: vec![nvme_rule()],
                denies: vec![storage_rule()],
            }],
            guards: vec![],
            plan: None,
            holder: Some(Holder {
                uid: 0,
                driver: Driver::PciStub,
                since: 1_700_000_000,
                group: Some(10),
                tied: false,
            }),
            reserved: None,
            policy_sha256: "5e".repeat(32),
        }
    }

    #[test]
    fn an_allowed_device_shows_the_rule_the_other_allows_and_the_group_plan() {
        let fake = FakeHelper::answering(Response::Explained(allowed()));
        let mut cmd = against(&fake, &["explain", "05:02.0"]);
        cmd.arg("--pci-ids").arg(pci_ids_fixture());
        let r = run(cmd);
        r.code(0).stderr_empty();
        let expected = format!(
            "\
05:02.0  1234:11e8  Technical Corp. QEMU edu device
  class    00ff00 (Unclassified device)
  driver   none
  group    IOMMU group 11
  held by  nobody
For root (uid 0):
  vfio-pci  ALLOWED  by rule 'lab NIC for vm-users' (/etc/vfio-gate/policy.toml:12)
                     also allowed by 'lab companions' (/etc/vfio-gate/policy.toml:20)
  pci-stub  DENIED   no rule matches: denied by default
Guards: none refuses 05:02.0 now
With vfio-pci, IOMMU group 11 would be:
{GROUP_11_TABLE}  The bind moves other members too, so it needs --group: vfio-gate bind 05:02.0 --group
Policy sha256 {} (the helper's)
",
            "5e".repeat(32)
        );
        if r.stdout != expected {
            r.fail(&format!("expected\n{expected}"));
        }
        assert_eq!(
            fake.requests(),
            vec![Request::Explain {
                device: addr("05:02.0"),
                driver: None,
                uid: None,
            }]
        );
    }

    #[test]
    fn a_reserved_device_says_so_with_its_rule() {
        let mut report = allowed();
        report.reserved = Some(vfio_gate_protocol::Reservation {
            driver: Driver::VfioPci,
            rule: RuleRef {
                name: "the edu, with its group".into(),
                file: "/etc/vfio-gate/policy.toml".into(),
                line: 8,
            },
            companion_of: None,
        });
        let fake = FakeHelper::answering(Response::Explained(report));
        let r = run(against(&fake, &["explain", "05:02.0"]));
        r.code(0).stderr_empty().stdout_has(
            "  held by  nobody\n  reserved held from boot on vfio-pci by rule 'the edu, with its \
             group' (/etc/vfio-gate/policy.toml:8); a release returns it there\nFor ",
        );
        fake.requests();
    }

    #[test]
    fn a_deny_rule_is_named_with_the_allow_it_overrides_and_the_holder() {
        let fake = FakeHelper::answering(Response::Explained(denied()));
        let mut cmd = against(&fake, &["explain", "0000:03:00.0", "--to", "vfio-pci"]);
        cmd.env("TZ", "UTC");
        let r = run(cmd);
        r.code(0)
            .stderr_empty()
            .stdout_has("  held by  root since 2023-11-14 22:13 (on pci-stub)\n")
            .stdout_has(
                "  vfio-pci  DENIED   by rule 'never storage' (/etc/vfio-gate/policy.toml:30)\n\
                 \x20                    overrides the allow 'alice: the NVMe' \
                 (/etc/vfio-gate/policy.d/50-alice.toml:2) (deny wins)\n",
            )
            .stdout_has("No group plan: the policy does not allow vfio-pci\n");
        if r.stdout.contains("pci-stub  ") {
            r.fail("only the driver asked about is shown");
        }
        assert_eq!(
            fake.requests(),
            vec![Request::Explain {
                device: addr("03:00.0"),
                driver: Some(Driver::VfioPci),
                uid: None,
            }]
        );
    }

    #[test]
    fn a_guard_that_refuses_the_device_now_is_shown_with_its_reason() {
        let mut report = allowed();
        report.guards = vec![GuardFinding {
            guard: Guard::HostInUse,
            reason: "the host is using 05:02.0: nvme0n1p2 is mounted on /home".into(),
        }];
        let fake = FakeHelper::answering(Response::Explained(report));
        let r = run(against(&fake, &["explain", "05:02.0"]));
        r.code(0)
            .stdout_has(
                "Refused now by a built-in guard, whatever the policy says:\n  \
                 in use by the host: the host is using 05:02.0: nvme0n1p2 is mounted on /home\n",
            )
            .stdout_has("With vfio-pci, IOMMU group 11 would be:");
        if r.stdout.contains("Guards: none") || r.stdout.contains("vfio-gate bind") {
            r.fail("a refused device gets no bind command");
        }
        fake.requests();
    }

    #[test]
    fn no_plan_says_why() {
        let mut report = allowed();
        report.plan = Some(Err(
            "group 11 also holds 05:01.0 on the host driver e1000, which must leave it".into(),
        ));
        let fake = FakeHelper::answering(Response::Explained(report));
        run(against(&fake, &["explain", "05:02.0"])).code(0).stdout_has(
            "No plan works for IOMMU group 11 with vfio-pci: group 11 also holds 05:01.0 on the \
             host driver e1000, which must leave it\n",
        );
        fake.requests();
    }

    #[test]
    fn json_has_the_device_the_verdicts_the_plan_and_the_policy() {
        let fake = FakeHelper::start(vec![
            Reply::Answer(Response::Explained(allowed())),
            Reply::Answer(Response::Explained(denied())),
        ]);
        let r = run(against(&fake, &["explain", "05:02.0", "--json"]));
        r.code(0).stderr_empty();
        let v = r.json();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["source"], "helper");
        assert_eq!(
            v["device"],
            serde_json::json!({
                "address": "0000:05:02.0",
                "short": "05:02.0",
                "vendor": "1234",
                "device": "11e8",
                "class": "00ff00",
                "driver": null,
                "iommu_group": 11,
            })
        );
        assert_eq!(v["subject"], serde_json::json!({"uid": 0, "user": "root"}));
        assert_eq!(
            v["verdicts"][0],
            serde_json::json!({
                "driver": "vfio-pci",
                "allowed": true,
                "by_default": false,
                "rule": {"name": "lab NIC for vm-users", "file": "/etc/vfio-gate/policy.toml", "line": 12},
                "allows": [
                    {"name": "lab NIC for vm-users", "file": "/etc/vfio-gate/policy.toml", "line": 12},
                    {"name": "lab companions", "file": "/etc/vfio-gate/policy.toml", "line": 20},
                ],
                "denies": [],
            })
        );
        assert_eq!(v["verdicts"][1]["by_default"], true);
        assert_eq!(v["verdicts"][1]["rule"], serde_json::Value::Null);
        assert_eq!(v["plan"]["kind"], "planned");
        assert_eq!(v["plan"]["needs_group"], true);
        assert_eq!(v["plan"]["iommu_group"], 11);
        assert_eq!(v["plan"]["members"][1]["to"], "pci-stub");
        assert_eq!(v["guards"], serde_json::json!([]));
        assert_eq!(v["holder"], serde_json::Value::Null);
        assert_eq!(
            v["policy"],
            serde_json::json!({"path": null, "sha256": "5e".repeat(32), "files": []})
        );
        // Denied, held, no plan.
        let r = run(against(&fake, &["explain", "03:00.0", "--json"]));
        let v = r.code(0).json();
        assert_eq!(v["verdicts"][0]["allowed"], false);
        assert_eq!(v["verdicts"][0]["rule"]["name"], "never storage");
        assert_eq!(v["verdicts"][0]["denies"][0]["line"], 30);
        assert_eq!(
            v["plan"],
            serde_json::json!({"kind": "none", "reason": "the policy does not allow vfio-pci"})
        );
        assert_eq!(
            v["holder"],
            serde_json::json!({"uid": 0, "user": "root", "since": 1_700_000_000, "tied": false})
        );
        fake.requests();
    }

    #[test]
    fn user_is_sent_as_a_uid_and_non_admins_are_told_how_else_to_ask() {
        let not_admin = || {
            Reply::Answer(Response::Error(WireError::NotAdmin {
                detail: "only an admin (root, or [settings] admins in the policy) may ask about \
                         another user"
                    .into(),
            }))
        };
        let fake = FakeHelper::start(vec![
            Reply::Answer(Response::Explained(denied())),
            not_admin(),
            not_admin(),
        ]);
        run(against(&fake, &["explain", "03:00.0", "--user", "root"])).code(0);
        let r = run(against(&fake, &["explain", "03:00.0", "--user", "4242"]));
        r.code(3)
            .stdout_empty()
            .stderr_has("vfio-gate: denied: only an admin")
            .stderr_has("Leave out --user to ask about yourself")
            .stderr_has("vfio-gate explain ADDR --user NAME --policy /etc/vfio-gate/policy.toml");
        let r = run(against(
            &fake,
            &["explain", "03:00.0", "--user", "4242", "--json"],
        ));
        r.code(3).json_error("denied");
        let uid = |uid| Request::Explain {
            device: addr("03:00.0"),
            driver: None,
            uid: Some(uid),
        };
        assert_eq!(fake.requests(), vec![uid(0), uid(4242), uid(4242)]);
    }

    #[test]
    fn an_unknown_user_or_host_options_without_policy_are_bad_usage() {
        let fake = FakeHelper::start(vec![]);
        let r = run(against(
            &fake,
            &["explain", "03:00.0", "--user", "no-such-user-here"],
        ));
        r.code(2)
            .stderr_has("no user \"no-such-user-here\" in /etc/passwd");
        let r = run(against(
            &fake,
            &[
                "explain",
                "03:00.0",
                "--user",
                "no-such-user-here",
                "--json",
            ],
        ));
        r.code(2).json_error("usage");
        run(against(
            &fake,
            &["explain", "03:00.0", "--sysfs-root", "/tmp"],
        ))
        .code(2)
        .stderr_has("need --policy");
        run(against(&fake, &["explain", "3:00.0"])).code(2);
        assert_eq!(fake.requests(), vec![]);
    }
}

/// `vfio-gate explain ADDR --policy <fixture> ...` against the fixture host, offline.
mod offline {
    use super::*;

    fn explain(fx: &HostFixture, args: &[&str]) -> util::Run {
        let mut cmd = fx.command(&["explain"]);
        cmd.args(args).arg("--policy").arg(fx.policy());
        run(cmd)
    }

    #[test]
    fn an_allowed_device_with_its_companion_plan() {
        if !needs_root("explain::offline::an_allowed_device_with_its_companion_plan") {
            return;
        }
        let fx = lab();
        let r = explain(&fx, &["05:02.0", "--user", "alice"]);
        r.code(0).stderr_empty();
        let edu = lab_rule(&fx, "vm-users: the edu device");
        let expected_head = format!(
            "\
05:02.0  1234:11e8  Technical Corp. QEMU edu device
  class    00ff00 (Unclassified device)
  driver   none
  group    IOMMU group 11
  held by  not known offline (the helper keeps the leases: vfio-gate list shows them)
For alice (uid 1000):
  vfio-pci  ALLOWED  by rule {edu}
  pci-stub  DENIED   no rule matches: denied by default
Guards: none refuses 05:02.0 now
With vfio-pci, IOMMU group 11 would be:
  MEMBER   IDS        NAME                                 KIND      DRIVER    ACTION
  04:00.0  1b36:000e  QEMU PCIe-to-PCI bridge              bridge    pcieport  stays on pcieport: a bridge whose driver (pcieport) keeps the group viable
  05:01.0  8086:100e  82540EM Gigabit Ethernet Controller  endpoint  e1000     → pci-stub (rule 'vm-users: the edu device', {policy}:{line})
  05:02.0  1234:11e8  QEMU edu device                      endpoint  -         → vfio-pci (rule 'vm-users: the edu device', {policy}:{line})
  The bind moves other members too, so it needs --group: vfio-gate bind 05:02.0 --group
Policy sha256 ",
            policy = fx.policy().display(),
            line = header_line(LAB_POLICY, "vm-users: the edu device"),
        );
        if !r.stdout.starts_with(&expected_head) {
            r.fail(&format!("expected\n{expected_head}"));
        }
        r.stdout_has(&format!(
            "({} and 1 drop-in, read offline)\n",
            fx.policy().display()
        ));
    }

    #[test]
    fn a_reserved_device_and_a_companion_say_by_which_reservation() {
        if !needs_root(
            "explain::offline::a_reserved_device_and_a_companion_say_by_which_reservation",
        ) {
            return;
        }
        let fx = HostFixture::new(RESERVE_POLICY, &[]);
        let nic = reserve_rule(&fx, "the test NIC, held from boot");
        let edu = reserve_rule(&fx, "the edu, with its group");
        let r = explain(&fx, &["01:00.0", "--user", "alice"]);
        r.code(0).stderr_empty().stdout_has(&format!(
            "  held by  not known offline (the helper keeps the leases: vfio-gate list shows them)\n  \
             reserved held from boot on pci-stub by rule {nic}; a release returns it there\n\
             For alice (uid 1000):\n"
        ));
        let r = explain(&fx, &["05:01.0", "--user", "alice"]);
        r.code(0).stderr_empty().stdout_has(&format!(
            "  reserved held from boot on pci-stub as a companion of 05:02.0 by rule {edu}; a \
             release returns it there\n"
        ));
        // Not reserved: no such line.
        let r = explain(&fx, &["03:00.0", "--user", "alice"]);
        if r.code(0).stdout.contains("reserved") {
            r.fail("03:00.0 is not reserved");
        }
        let r = explain(&fx, &["05:01.0", "--user", "alice", "--json"]);
        let v = r.code(0).json();
        assert_eq!(v["reserved"]["driver"], "pci-stub");
        assert_eq!(v["reserved"]["companion_of"], "0000:05:02.0");
        assert_eq!(v["reserved"]["rule"]["name"], "the edu, with its group");
        assert_eq!(
            v["reserved"]["rule"]["line"],
            header_line(RESERVE_POLICY, "the edu, with its group")
        );
        let r = explain(&fx, &["03:00.0", "--json"]);
        assert_eq!(r.code(0).json()["reserved"], serde_json::Value::Null);
    }

    #[test]
    fn a_deny_in_a_drop_in_leaves_no_plan_and_says_which_rule() {
        if !needs_root("explain::offline::a_deny_in_a_drop_in_leaves_no_plan_and_says_which_rule") {
            return;
        }
        let fx = lab();
        let r = explain(&fx, &["05:02.0", "--user", "bob"]);
        r.code(0).stdout_has(&format!(
            "No plan works for IOMMU group 11 with vfio-pci: group 11 also holds 05:01.0 on the \
             host driver e1000, which must leave it for the group to be usable; rule 'bob never \
             parks devices on pci-stub' ({}:2) denies putting it on pci-stub\n",
            fx.drop_in_dir().join("50-bob.toml").display()
        ));
        r.stdout_has(&format!(
            "  pci-stub  DENIED   by rule 'bob never parks devices on pci-stub' ({}:2)\n",
            fx.drop_in_dir().join("50-bob.toml").display()
        ));
    }

    #[test]
    fn deny_wins_over_an_allow_and_the_guard_is_named() {
        if !needs_root("explain::offline::deny_wins_over_an_allow_and_the_guard_is_named") {
            return;
        }
        let fx = lab();
        let r = explain(&fx, &["03:00.0", "--user", "1000", "--to", "vfio-pci"]);
        r.code(0)
            .stdout_has(&format!(
                "  vfio-pci  DENIED   by rule {}\n                     overrides the allow {} \
                 (deny wins)\n",
                lab_rule(&fx, "never storage"),
                lab_rule(&fx, "alice: the NVMe")
            ))
            .stdout_has("No group plan: the policy does not allow vfio-pci\n");
        let r = explain(&fx, &["00:02.0", "--user", "alice"]);
        r.code(0)
            .stdout_has(&format!(
                "  vfio-pci  ALLOWED  by rule {}\n",
                lab_rule(&fx, "alice: the display")
            ))
            .stdout_has(
                "Refused now by a built-in guard, whatever the policy says:\n  boot VGA: 00:02.0 \
                 is the boot VGA device",
            );
        // Nobody's rule: the default.
        let r = explain(&fx, &["05:02.0", "--user", "carol"]);
        r.code(0)
            .stdout_has("For carol (uid 1002):\n")
            .stdout_has("  vfio-pci  DENIED   no rule matches: denied by default\n");
        // No --user: the caller (these tests run as root, whom nothing is granted).
        let r = explain(&fx, &["01:00.0"]);
        r.code(0)
            .stdout_has("For root (uid 0):\n")
            .stdout_has("  pci-stub  DENIED   no rule matches: denied by default\n");
    }

    #[test]
    fn json_is_the_report_the_helper_would_send_with_the_documented_hash() {
        if !needs_root("explain::offline::json_is_the_report_the_helper_would_send") {
            return;
        }
        let fx = lab();
        let r = explain(&fx, &["05:02.0", "--user", "alice", "--json"]);
        r.code(0).stderr_empty();
        let v = r.json();
        assert_eq!(v["source"], "offline");
        assert_eq!(
            v["subject"],
            serde_json::json!({"uid": 1000, "user": "alice"})
        );
        assert_eq!(v["device"]["iommu_group"], 11);
        assert_eq!(v["holder"], serde_json::Value::Null);
        assert_eq!(v["verdicts"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["verdicts"][0]["allowed"], true);
        assert_eq!(v["plan"]["kind"], "planned");
        assert_eq!(v["plan"]["needs_group"], true);
        let actions: Vec<String> = v["plan"]["members"]
            .as_array()
            .unwrap_or_else(|| r.fail("no plan members"))
            .iter()
            .map(|m| match m["action"].as_str() {
                Some("bind") => format!(
                    "{} -> {} ({}:{})",
                    m["short"].as_str().unwrap(),
                    m["to"].as_str().unwrap(),
                    m["rule"]["name"].as_str().unwrap(),
                    m["rule"]["line"]
                ),
                other => format!("{} {}", m["short"].as_str().unwrap(), other.unwrap()),
            })
            .collect();
        let line = header_line(LAB_POLICY, "vm-users: the edu device");
        assert_eq!(
            actions,
            [
                "04:00.0 keep".to_owned(),
                format!("05:01.0 -> pci-stub (vm-users: the edu device:{line})"),
                format!("05:02.0 -> vfio-pci (vm-users: the edu device:{line})"),
            ]
        );
        let policy = fx.policy().display().to_string();
        assert_eq!(v["policy"]["path"], policy.as_str());
        assert_eq!(v["policy"]["files"][0]["path"], policy.as_str());
        assert_eq!(
            v["policy"]["files"][1]["path"],
            fx.drop_in_dir().join("50-bob.toml").display().to_string()
        );
        // The hash as docs/policy.md says to compute it by hand.
        let script = format!(
            "export LC_ALL=C; for f in {main} {dir}/*.toml; do [ -f \"$f\" ] || continue; \
             printf '%s\\0%s\\0' \"$f\" \"$(wc -c < \"$f\" | tr -d ' ')\"; cat \"$f\"; done | \
             sha256sum",
            main = fx.policy().display(),
            dir = fx.drop_in_dir().display()
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        let by_hand = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            v["policy"]["sha256"].as_str(),
            by_hand.split_whitespace().next()
        );
    }

    #[test]
    fn a_missing_device_an_unknown_user_and_a_refused_policy() {
        if !needs_root("explain::offline::a_missing_device_an_unknown_user_and_a_refused_policy") {
            return;
        }
        let fx = lab();
        explain(&fx, &["09:00.0"])
            .code(4)
            .stderr_has("vfio-gate: no PCI device 09:00.0 in ")
            .stderr_has("lspci -D");
        explain(&fx, &["05:02.0", "--user", "dave"])
            .code(2)
            .stderr_has("no user \"dave\" in ");
        explain(&fx, &["05:02.0", "--user", "5003"]).code(2);
        // A world-writable drop-in refuses the whole policy, as in the helper.
        use std::os::unix::fs::PermissionsExt;
        let drop_in = fx.drop_in_dir().join("50-bob.toml");
        std::fs::set_permissions(&drop_in, std::fs::Permissions::from_mode(0o666)).unwrap();
        let r = explain(&fx, &["05:02.0"]);
        r.code(9)
            .stdout_empty()
            .stderr_has("vfio-gate: the policy is refused: the policy file ")
            .stderr_has(&format!("chmod go-w {}", drop_in.display()));
        let r = explain(&fx, &["05:02.0", "--json"]);
        r.code(9).json_error("policy");
    }
}
