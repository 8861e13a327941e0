//! How failures and warnings reach the user: stderr lines prefixed `vfio-gate: `, and under
//! `--json` also one `{"error": {...}}` object on stdout.
//!
//! Failures to write these messages are ignored: there is nowhere left to report them.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;
use vfio_gate_protocol::{Guard, PciAddress, Plan, RuleRef};

use crate::error::{Error, ErrorDetails, Status};
use crate::render::write_json;

/// The `--json` form of an error. Field names are stable; optional fields are left out when empty.
#[derive(Debug, Default, Serialize)]
pub struct JsonError<'a> {
    /// A stable name: unreachable, timeout, connection, protocol, version_mismatch, denied,
    /// refused, needs_group, held, not_found, busy, bad_request, failed, internal, output, usage,
    /// from the offline commands policy (a refused policy), sysfs, guard, accounts, and from
    /// boot-config modules (no module alias tables), not_root and write (for --write).
    pub kind: &'a str,
    pub exit_code: u8,
    /// The message and its causes, as printed on stderr.
    pub message: String,
    pub next_step: Option<String>,
    /// The deciding rule of a denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a RuleRef>,
    /// The device of a "not found" or of a guard's refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<PciAddress>,
    /// The built-in guard that refused (`refused`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
    /// The IOMMU group (`needs_group`, `held`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    /// What `--group` would do (`needs_group`), in the form of `bind --json`'s `plan`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<&'a Plan>,
    /// The command that would do it (`needs_group`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerun: Option<&'a str>,
    /// Who holds the group (`held`): uid, user name (or the uid as text), since (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// The socket, when the helper could not be reached or did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<&'a Path>,
}

#[derive(Debug, Serialize)]
struct JsonErrorDocument<'a> {
    error: JsonError<'a>,
}

impl<'a> JsonError<'a> {
    /// The error whose message is `message` and whose details are `d`.
    pub fn new(message: String, d: &ErrorDetails<'a>) -> Self {
        Self {
            kind: d.kind,
            exit_code: d.status.code(),
            message,
            next_step: d.next_step.clone(),
            rule: d.rule,
            device: d.device,
            guard: d.guard,
            group: d.group,
            plan: d.plan,
            rerun: d.rerun,
            uid: d.holder.map(|h| h.uid),
            user: d.holder.map(|h| h.user),
            since: d.holder.map(|h| h.since),
            socket: d.socket,
        }
    }

    /// Writes `{"error": {...}}` and a newline.
    pub fn write_to(self, w: &mut impl Write) -> io::Result<()> {
        write_json(w, &JsonErrorDocument { error: self })
    }
}

/// Reports a failed command and returns its exit status. A closed stdout is not worth a word:
/// what was asked was done, so it exits 0 quietly.
pub fn report(err: &Error, json: bool) -> ExitCode {
    if err.is_broken_pipe() {
        return ExitCode::SUCCESS;
    }
    let message = err.chain();
    let details = err.details();
    if json {
        let _ = JsonError::new(message.clone(), &details).write_to(&mut io::stdout().lock());
    }
    let mut stderr = io::stderr().lock();
    let _ = writeln!(stderr, "vfio-gate: {message}");
    if let Some(shown) = details.shown {
        let _ = stderr.write_all(shown.as_bytes());
    }
    if let Some(step) = &details.next_step {
        let _ = writeln!(stderr, "vfio-gate: {step}");
    }
    details.status.into()
}

/// Prints a note on stderr (what `vfio-gate run` says around its command).
pub fn note(text: &str) {
    let _ = writeln!(io::stderr().lock(), "vfio-gate: {text}");
}

/// Prints a warning on stderr.
pub fn warn(text: &str) {
    let _ = writeln!(io::stderr().lock(), "vfio-gate: warning: {text}");
}

/// Reports what clap refused (or prints the help and version it was asked for) and returns
/// clap's exit status: 2 for bad usage, 0 for `--help`. Under `--json` a usage error is also
/// printed as a JSON error object on stdout.
pub fn usage(err: &clap::Error, args: impl IntoIterator<Item = OsString>) -> ExitCode {
    if err.use_stderr() && wants_json(args) {
        let rendered = err.render().to_string();
        let message = rendered
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_owned();
        let _ = JsonError {
            kind: "usage",
            exit_code: Status::Usage.code(),
            message,
            next_step: Some("See vfio-gate --help".to_owned()),
            ..JsonError::default()
        }
        .write_to(&mut io::stdout().lock());
    }
    let _ = err.print();
    // clap's codes are 0 (help, version) and 2 (usage); anything else is still bad usage.
    match err.exit_code() {
        0 => ExitCode::SUCCESS,
        _ => Status::Usage.into(),
    }
}

/// Whether `--json` was among the arguments, before any `--`: the parse failed, so clap cannot
/// tell us.
fn wants_json(args: impl IntoIterator<Item = OsString>) -> bool {
    args.into_iter()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_gate_protocol::WireError;

    #[test]
    fn json_error_carries_kind_code_message_step_and_rule() {
        let err = Error::Helper(WireError::Denied {
            why: vfio_gate_protocol::DenyReason::Policy,
            rule: Some(RuleRef {
                name: "no storage".into(),
                file: "/etc/vfio-gate/policy.toml".into(),
                line: 30,
            }),
            detail: "storage controllers are not for VMs".into(),
        });
        let mut out = Vec::new();
        JsonError::new(err.chain(), &err.details())
            .write_to(&mut out)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let e = &v["error"];
        assert_eq!(e["kind"], "denied");
        assert_eq!(e["exit_code"], 3);
        assert_eq!(e["message"], "denied: storage controllers are not for VMs");
        assert_eq!(e["rule"]["name"], "no storage");
        assert!(e["next_step"].as_str().unwrap().contains("ask the admin"));
        assert!(e.get("socket").is_none() && e.get("device").is_none());
    }

    #[test]
    fn json_is_detected_before_a_double_dash_only() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(wants_json(args(&["vfio-gate", "bind", "--json", "x"])));
        assert!(
            !wants_json(args(&["--json", "bind", "x"])),
            "argv[0] is not an argument"
        );
        assert!(!wants_json(args(&["vfio-gate", "run", "--", "--json"])));
    }
}
