//! How failures and warnings reach the user: stderr lines prefixed `vfio-gate: `, and under
//! `--json` also one `{"schema": 1, "error": {...}}` document on stdout (`crate::json`).
//!
//! Failures to write these messages are ignored: there is nowhere left to report them.

use std::ffi::OsString;
use std::io::{self, Write};
use std::process::ExitCode;

use crate::error::{Error, Status};
use crate::json::{Document, ErrorDocument, ErrorJson};
use crate::render::write_json;

/// Writes `{"schema": 1, "error": {...}}` and a newline.
pub fn write_error(w: &mut impl Write, error: ErrorJson) -> io::Result<()> {
    write_json(w, &Document::new(&ErrorDocument { error }))
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
        let _ = write_error(
            &mut io::stdout().lock(),
            ErrorJson::new(message.clone(), &details),
        );
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
        let error = ErrorJson {
            kind: "usage",
            exit_code: Status::Usage.code(),
            message,
            next_step: Some("See vfio-gate --help".to_owned()),
            ..ErrorJson::default()
        };
        let _ = write_error(&mut io::stdout().lock(), error);
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
    use vfio_gate_protocol::{RuleRef, WireError};

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
        write_error(&mut out, ErrorJson::new(err.chain(), &err.details())).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["schema"], 1);
        let e = &v["error"];
        assert_eq!(e["kind"], "denied");
        assert_eq!(e["exit_code"], 3);
        assert_eq!(e["message"], "denied: storage controllers are not for VMs");
        assert_eq!(e["rule"]["name"], "no storage");
        assert_eq!(e["reason"], serde_json::json!({"kind": "policy"}));
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
