//! [`Policy::lint`]: what a reviewer should look at in a policy that loads.
//!
//! A policy that does not load is refused with a [`PolicyError`](crate::PolicyError); the lint is about policies
//! that load but may not mean what their author thinks, or grant more than a reviewer would
//! want to sign off without a second look. Every finding says what to do.

use std::cmp::Ordering;

use vfio_gate_protocol::Driver;

use crate::device::DeviceFacts;
use crate::diagnostic::{Finding, Severity};
use crate::model::{Effect, Rule, Subjects};
use crate::policy::Policy;
use crate::reserve::{Reservation, Reserved};

/// Base classes whose grants a reviewer should see: the host usually depends on them.
const SENSITIVE_CLASSES: [(u8, &str, &str); 3] = [
    (
        0x01,
        "storage controllers",
        "a VM given a disk controller gets raw access to every disk behind it: make sure no \
         host data lives there (the helper refuses one with mounted filesystems or active swap, \
         not one that is merely unmounted today), or fence storage off with a [[deny]] on \
         class \"01\"",
    ),
    (
        0x02,
        "network controllers",
        "a VM given a NIC takes the host's link through it: make sure the host does not need \
         it (the helper refuses one that is up with addresses or routes, not one that is down \
         for now), or fence it off with a [[deny]]",
    ),
    (
        0x03,
        "display controllers",
        "make sure it is not a GPU the host's console or desktop needs (the helper refuses the \
         boot VGA device, not a second GPU the desktop uses)",
    ),
];

impl Policy {
    /// Lints the policy against `host`, the devices of the host it is meant for (empty: skip
    /// the checks that need them). Findings come sorted by file (in load order) and line:
    ///
    /// - the load warnings ([`Policy::findings`]: unknown users and groups, rules that apply
    ///   to nobody, a policy that grants nothing) — warnings;
    /// - a rule that matches no device on this host — a warning for an allow, information for
    ///   a deny (a deny is often a guard against hardware that may come);
    /// - an allow rule each of whose matchers gives only an address — a warning: pin
    ///   vendor:device too, addresses move when hardware changes;
    /// - an allow rule fully shadowed by denies: for every host device it matches and every
    ///   driver it grants, a deny whose subjects cover the allow's (everyone, or a superset of
    ///   its uids and gids) applies, so it can never grant anything here — a warning (not an
    ///   error: it fails closed, and adding a deny is the quick way to revoke);
    /// - an allow rule granting storage (class 01), network (02) or display (03) controllers,
    ///   by its class matcher or on this host — a warning naming the class;
    /// - an allow rule for everyone (`users = ["*"]`) — a warning.
    pub fn lint(&self, host: &[DeviceFacts]) -> Vec<Finding> {
        let mut out: Vec<Finding> = self.findings().to_vec();
        let host: Vec<(&DeviceFacts, String)> =
            host.iter().map(|d| (d, d.address.to_string())).collect();
        for rule in self.rules() {
            lint_rule(self, rule, &host, &mut out);
        }
        for reservation in self.reservations() {
            lint_reservation(self, reservation, &host, &mut out);
        }
        if host.is_empty() {
            if let Some(main) = self.sources().first() {
                out.push(Finding {
                    severity: Severity::Info,
                    file: main.path.clone(),
                    line: 0,
                    rule: None,
                    message: "no host devices were given, so the checks against this host's \
                              devices (rules that match nothing, shadowed allows, granted \
                              storage/network/display controllers) were skipped"
                        .into(),
                });
            }
        }
        self.sort_findings(&mut out);
        out
    }

    /// Sorts findings as [`Policy::lint`] sorts its own: by file (in load order), then line,
    /// then severity, rule and message. For callers that add findings of their own (`policy
    /// check` adds what only the host view knows).
    pub fn sort_findings(&self, findings: &mut [Finding]) {
        let order = |f: &Finding| {
            self.sources()
                .iter()
                .position(|s| s.path == f.file)
                .unwrap_or(usize::MAX)
        };
        findings.sort_by(|a, b| {
            (order(a), &a.file, a.line)
                .cmp(&(order(b), &b.file, b.line))
                .then_with(|| compare_rest(a, b))
        });
    }
}

fn compare_rest(a: &Finding, b: &Finding) -> Ordering {
    (a.severity, &a.rule, &a.message).cmp(&(b.severity, &b.rule, &b.message))
}

fn lint_rule(
    policy: &Policy,
    rule: &Rule,
    host: &[(&DeviceFacts, String)],
    out: &mut Vec<Finding>,
) {
    let origin = rule.origin();
    let finding = |severity, message: String| Finding {
        severity,
        file: origin.file.clone(),
        line: origin.line,
        rule: Some(origin.name.clone()),
        message,
    };
    let name = &origin.name;
    let allow = rule.effect() == Effect::Allow;

    if allow && rule.subjects() == &Subjects::Everyone {
        out.push(finding(
            Severity::Warning,
            format!(
                "rule {name:?} grants to every user (users = [\"*\"]), service accounts \
                 included: name the people instead, for example groups = [\"vm-users\"]"
            ),
        ));
    }
    if allow && rule.devices().iter().all(|m| m.is_address_only()) {
        out.push(finding(
            Severity::Warning,
            format!(
                "rule {name:?} matches devices by address alone: pin vendor:device too: \
                 addresses move when hardware changes (for example {{ address = \"01:00.0\", \
                 vendor = \"8086\", device = \"10d3\" }}; `lspci -nn -s ADDRESS` shows the ids)"
            ),
        ));
    }

    let matched: Vec<&(&DeviceFacts, String)> = host
        .iter()
        .filter(|(d, text)| rule.devices().iter().any(|m| m.matches(d, text)))
        .collect();
    if !host.is_empty() && matched.is_empty() {
        out.push(if allow {
            finding(
                Severity::Warning,
                format!(
                    "rule {name:?} matches no device on this host: check its matchers against \
                     `lspci -nn` (and /sys/bus/pci/slots for physical_slot), or remove it"
                ),
            )
        } else {
            finding(
                Severity::Info,
                format!(
                    "deny {name:?} matches no device on this host: fine if it guards against \
                     hardware that may be added; otherwise remove it"
                ),
            )
        });
    }
    if !allow {
        return;
    }

    // The host devices × drivers this allow could grant, and the denies that take each away.
    let denies: Vec<&Rule> = policy
        .rules()
        .iter()
        .filter(|d| d.effect() == Effect::Deny && rule.subjects().covered_by(d.subjects()))
        .collect();
    let mut granted: Vec<&DeviceFacts> = Vec::new();
    let mut shadowing: Vec<&Rule> = Vec::new();
    for (device, text) in &matched {
        let mut grants_something = false;
        for driver in rule.drivers().to_vec() {
            let fence = denies.iter().find(|d| {
                d.drivers().contains(driver) && d.devices().iter().any(|m| m.matches(device, text))
            });
            match fence {
                Some(d) => {
                    if !shadowing.iter().any(|s| s.origin() == d.origin()) {
                        shadowing.push(d);
                    }
                }
                None => grants_something = true,
            }
        }
        if grants_something {
            granted.push(device);
        }
    }
    let applies_to_nobody = matches!(rule.subjects(), Subjects::Listed { uids, gids } if uids.is_empty() && gids.is_empty());
    if !matched.is_empty() && granted.is_empty() && !applies_to_nobody {
        let by: Vec<String> = shadowing.iter().map(|d| d.origin().to_string()).collect();
        out.push(finding(
            Severity::Warning,
            format!(
                "rule {name:?} can never grant anything on this host: deny wins, and {} \
                 cover{} every device it matches for every driver it grants ({}): remove the \
                 allow, or narrow the deny",
                by.join(", "),
                if by.len() == 1 { "s" } else { "" },
                drivers_text(&rule.drivers().to_vec()),
            ),
        ));
    }

    for (base, what, advice) in SENSITIVE_CLASSES {
        let on_host: Vec<String> = granted
            .iter()
            .filter(|d| (d.class >> 16) & 0xff == u32::from(base))
            .map(|d| format!("{} [{:04x}:{:04x}]", d.address, d.vendor, d.device))
            .collect();
        let by_matcher = rule.devices().iter().any(|m| {
            m.class()
                .is_some_and(|c| c.pins_base_class() && c.admits_base_class(base))
        });
        if on_host.is_empty() && !by_matcher {
            continue;
        }
        let which = if on_host.is_empty() {
            " by its class matcher (none on this host)".to_owned()
        } else {
            let shown: Vec<&str> = on_host.iter().take(4).map(String::as_str).collect();
            let more = on_host.len().saturating_sub(shown.len());
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!(": {}{more}", shown.join(", "))
        };
        out.push(finding(
            Severity::Warning,
            format!("rule {name:?} grants {what} (class {base:02x}){which}; {advice}"),
        ));
    }
}

/// A reservation: what it holds on this host, matchers that may catch more than meant, and
/// conflicts with other reservations.
fn lint_reservation(
    policy: &Policy,
    reservation: &Reservation,
    host: &[(&DeviceFacts, String)],
    out: &mut Vec<Finding>,
) {
    let origin = reservation.origin();
    let finding = |severity, message: String| Finding {
        severity,
        file: origin.file.clone(),
        line: origin.line,
        rule: Some(origin.name.clone()),
        message,
    };
    let name = &origin.name;
    let driver = reservation.driver();
    if reservation.devices().iter().all(|m| m.is_address_only()) {
        out.push(finding(
            Severity::Warning,
            format!(
                "reservation {name:?} matches devices by address alone: pin vendor:device too, \
                 or a card put at that address later is held from boot instead (`lspci -nn -s \
                 ADDRESS` shows the ids)"
            ),
        ));
    }
    if host.is_empty() {
        return;
    }
    let held: Vec<&(&DeviceFacts, String)> = host
        .iter()
        .filter(|(d, text)| reservation.devices().iter().any(|m| m.matches(d, text)))
        .collect();
    if held.is_empty() {
        out.push(finding(
            Severity::Warning,
            format!(
                "reservation {name:?} matches no device on this host: check its matchers \
                 against `lspci -nn`, or remove it"
            ),
        ));
        return;
    }
    let list: Vec<String> = held
        .iter()
        .map(|(d, _)| format!("{} [{:04x}:{:04x}]", d.address, d.vendor, d.device))
        .collect();
    let companions = match reservation.companions() {
        Some(c) => format!(", and the other endpoints of their IOMMU groups on {c}"),
        None => String::new(),
    };
    out.push(finding(
        Severity::Info,
        format!(
            "reservation {name:?} holds {} on {driver} from boot{companions}",
            list.join(", ")
        ),
    ));
    for (i, m) in reservation.devices().iter().enumerate() {
        if !m.is_id_only() {
            continue;
        }
        let caught: Vec<String> = host
            .iter()
            .filter(|(d, text)| m.matches(d, text))
            .map(|(d, _)| d.address.to_string())
            .collect();
        if caught.len() > 1 {
            out.push(finding(
                Severity::Warning,
                format!(
                    "reservation {name:?}: its matcher #{} gives ids but no address, and catches \
                     {} devices on this host ({}): every one of them is held from boot; add \
                     address (or physical_slot) if only one is meant",
                    i + 1,
                    caught.len(),
                    caught.join(", ")
                ),
            ));
        }
    }
    for (device, _) in &held {
        if let Reserved::Conflict(by) = policy.reserved(device) {
            // Reported once, by the first of the conflicting reservations.
            if by.first().map(|r| r.origin()) != Some(origin) {
                continue;
            }
            let names: Vec<String> = by
                .iter()
                .map(|r| format!("{} ({})", r.origin(), r.driver()))
                .collect();
            out.push(finding(
                Severity::Warning,
                format!(
                    "{} is reserved by {} with different drivers, so it is held by neither: \
                     keep one",
                    device.address,
                    names.join(" and ")
                ),
            ));
        }
    }
}

fn drivers_text(drivers: &[Driver]) -> String {
    drivers
        .iter()
        .map(|d| d.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
