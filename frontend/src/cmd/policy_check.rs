//! `vfio-gate policy check`: load a policy as the helper would and lint it against this host's
//! devices — the policy crate's lint, and what only the host view knows about reservations
//! (companion holds, their conflicts, reserved devices a guard protects); a `file:line:
//! severity: message` line per finding and a summary, or the findings in JSON. The exit status
//! is the most serious finding's.

use std::fmt::Write as _;
use std::io::Write;

use serde::Serialize;
use vfio_gate_policy::{Finding, PolicySource, Severity};

use super::Context;
use crate::cli::PolicyCheckArgs;
use crate::error::{Error, Status};
use crate::json::PolicyJson;
use crate::offline::{self, Evaluator, Host};
use crate::render::{count, files_text};

/// `vfio-gate policy check [PATH] [--no-host]`: load as the helper would, lint against this
/// host. Status 0 clean (notes at most), 8 warnings, 9 errors (refused).
pub fn run(
    ctx: &Context<'_>,
    args: &PolicyCheckArgs,
    out: &mut impl Write,
) -> Result<Status, Error> {
    let host = Host::from(&args.host);
    let policy_path = offline::absolute(&args.path);
    let path = policy_path.display().to_string();
    let (findings, policy) = match host.load_policy(&policy_path) {
        Err(e) => (vec![Finding::from_error(&e)], None),
        Ok(policy) if args.no_host => (policy.lint(&[]), Some(policy)),
        Ok(policy) => {
            let mut findings = policy.lint(&host.devices()?);
            let view = host.view();
            let host_use = host.host_use();
            let evaluator = Evaluator {
                policy: &policy,
                view: &view,
                host_use: &host_use,
                rule: offline::viability(),
                sysfs: &host.sysfs,
            };
            findings.extend(evaluator.reservation_findings()?);
            policy.sort_findings(&mut findings);
            (findings, Some(policy))
        }
    };
    let status = check_status(&findings);
    let sha = policy.as_ref().map(|p| p.sha256());
    let files = policy.as_ref().map_or(&[][..], |p| p.sources());
    let (errors, warnings, notes) = tally(&findings);
    let doc = CheckJson {
        policy: PolicyJson::new(Some(&path), sha.as_deref(), files),
        loaded: policy.is_some(),
        findings: findings.iter().map(FindingJson::from).collect(),
        counts: CountsJson {
            error: errors,
            warning: warnings,
            info: notes,
        },
        exit_code: status.code(),
    };
    ctx.print(out, &doc, || {
        let loaded = sha.as_deref().map(|sha| (files, sha));
        check_text(&path, &findings, loaded)
    })?;
    Ok(status)
}

/// The exit status of `policy check`: the most serious finding.
pub fn check_status(findings: &[Finding]) -> Status {
    match findings.iter().map(|f| f.severity).min() {
        Some(Severity::Error) => Status::PolicyRefused,
        Some(Severity::Warning) => Status::PolicyWarnings,
        Some(Severity::Info) | None => Status::Ok,
    }
}

/// `policy check --json`.
#[derive(Debug, Serialize)]
pub struct CheckJson {
    /// The main file checked; its hash and files when it loads (`sha256` null, `files` empty
    /// when it is refused).
    pub policy: PolicyJson,
    /// Whether the policy loads (the helper would serve it).
    pub loaded: bool,
    /// Every finding, sorted by file and line.
    pub findings: Vec<FindingJson>,
    /// How many findings of each severity.
    pub counts: CountsJson,
    /// The exit status: 0 clean, 8 warnings, 9 errors.
    pub exit_code: u8,
}

/// One finding: severity (`error`, `warning` or `info`), file, line (0: the file as a whole),
/// rule (or null), message.
#[derive(Debug, Serialize)]
pub struct FindingJson {
    pub severity: &'static str,
    pub file: String,
    pub line: u32,
    pub rule: Option<String>,
    pub message: String,
}

impl From<&Finding> for FindingJson {
    fn from(f: &Finding) -> Self {
        Self {
            severity: match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Info => "info",
            },
            file: f.file.clone(),
            line: f.line,
            rule: f.rule.clone(),
            message: f.message.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CountsJson {
    pub error: usize,
    pub warning: usize,
    pub info: usize,
}

/// How many findings of each severity: (errors, warnings, notes).
pub fn tally(findings: &[Finding]) -> (usize, usize, usize) {
    let n = |s| findings.iter().filter(|f| f.severity == s).count();
    (n(Severity::Error), n(Severity::Warning), n(Severity::Info))
}

/// `policy check` for people: one `file:line: severity: message` line per finding, then the
/// summary. `loaded` is the loaded policy's files and hash, `None` when it was refused.
pub fn check_text(
    path: &str,
    findings: &[Finding],
    loaded: Option<(&[PolicySource], &str)>,
) -> String {
    let mut t = String::new();
    for f in findings {
        let _ = writeln!(t, "{f}");
    }
    let (errors, warnings, notes) = tally(findings);
    match loaded {
        None => {
            let _ = writeln!(
                t,
                "policy check: {path} is refused ({}): the helper would serve nothing with it",
                count(errors, "error")
            );
        }
        Some((files, sha)) => {
            let verdict = if warnings == 0 { "clean" } else { "loads" };
            let _ = writeln!(
                t,
                "policy check: {} {verdict}: {}, {}; sha256 {sha}",
                files_text(files),
                count(warnings, "warning"),
                count(notes, "note")
            );
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_summary_counts_and_names_the_files() {
        let files = [
            PolicySource {
                path: "/p.toml".into(),
                sha256: "1".into(),
            },
            PolicySource {
                path: "/policy.d/a.toml".into(),
                sha256: "2".into(),
            },
        ];
        let warning = Finding {
            severity: Severity::Warning,
            file: "/p.toml".into(),
            line: 4,
            rule: Some("r".into()),
            message: "m".into(),
        };
        assert_eq!(
            check_text(
                "/p.toml",
                std::slice::from_ref(&warning),
                Some((&files, "ff"))
            ),
            "/p.toml:4: warning: m\npolicy check: /p.toml and 1 drop-in loads: 1 warning, 0 notes; sha256 ff\n"
        );
        let error = Finding {
            severity: Severity::Error,
            ..warning
        };
        assert!(check_text("/p.toml", &[error], None).ends_with(
            "policy check: /p.toml is refused (1 error): the helper would serve nothing with it\n"
        ));
        assert_eq!(tally(&[]), (0, 0, 0));
    }
}
