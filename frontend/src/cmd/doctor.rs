//! `vfio-gate doctor`: why a VM with a device would not start on this host, and the fix. It
//! works without the helper: every check but two reads the host offline (`probe`), read-only and
//! unprivileged; the helper's two (is it there, at this protocol version; what does the policy
//! grant you) ask it with a list request. Each check (`checks`) is ok, warn or fail, with what
//! was found and the fix; any failure exits with [`Status::CheckFailed`], warnings alone with 0.

mod checks;
mod probe;

use std::io::Write;

use serde::Serialize;

use super::Context;
use crate::cli::DoctorArgs;
use crate::error::{Error, Status};
use crate::offline::{self, Host};

pub use checks::{Check, Level};
pub use probe::{Facts, Roots};

/// `vfio-gate doctor [--memory SIZE] [--policy PATH] [--json]`.
pub fn run(ctx: &Context<'_>, args: &DoctorArgs, out: &mut impl Write) -> Result<Status, Error> {
    let host = Host::from(&args.host);
    let roots = Roots {
        sys: host.sysfs.clone(),
        proc: args.proc_root.clone().unwrap_or_else(|| "/proc".into()),
        dev: args.dev_root.clone().unwrap_or_else(|| "/dev".into()),
        root: host.etc.clone(),
    };
    let policy_path = offline::absolute(&args.policy);
    let facts = Facts::read(roots, &host, &policy_path, &ctx.client);
    let checks = checks::all(&facts, args.memory);
    let status = status(&checks);
    let doc = DoctorJson {
        checks: &checks,
        exit_code: status.code(),
    };
    // `print` puts `"schema"` first, as in every document.
    ctx.print(out, &doc, || text(&checks))?;
    Ok(status)
}

/// [`Status::CheckFailed`] when a check failed, else [`Status::Ok`] (warnings too).
pub fn status(checks: &[Check]) -> Status {
    if checks.iter().any(|c| c.status == Level::Fail) {
        Status::CheckFailed
    } else {
        Status::Ok
    }
}

/// `--json` (after the `"schema"` every document starts with): `{"checks": [{"name",
/// "status", "found", "fix"}], "exit_code": N}`.
#[derive(Debug, Serialize)]
struct DoctorJson<'a> {
    checks: &'a [Check],
    exit_code: u8,
}

/// One line per check (`ok`, `warn` or `fail`, its name, what was found), the fix on the line
/// below it, aligned with what was found; then the count.
pub fn text(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let indent = " ".repeat(6 + width + 2);
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!(
            "{:<4}  {:<width$}  {}\n",
            c.status.word(),
            c.name,
            c.found
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("{indent}fix: {fix}\n"));
        }
    }
    let n = |level| checks.iter().filter(|c| c.status == level).count();
    let (fails, warns) = (n(Level::Fail), n(Level::Warn));
    out.push_str(&match (fails, warns) {
        (0, 0) => format!("All {} checks passed.\n", checks.len()),
        (0, w) => format!(
            "{} checks: {}, nothing failed.\n",
            checks.len(),
            crate::render::count(w, "warning")
        ),
        (f, w) => format!(
            "{} checks: {} failed, {}. A VM with a device will not work here until the failed \
             checks are fixed.\n",
            checks.len(),
            f,
            crate::render::count(w, "warning")
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &'static str, status: Level, fix: Option<&str>) -> Check {
        Check {
            name,
            status,
            found: format!("{name} found"),
            fix: fix.map(str::to_owned),
        }
    }

    #[test]
    fn one_line_per_check_and_the_fix_below_it() {
        let checks = [
            check("kernel", Level::Ok, None),
            check("iommu_groups", Level::Fail, Some("turn it on")),
            check("memlock", Level::Warn, Some("raise it")),
        ];
        assert_eq!(
            text(&checks),
            "\
ok    kernel        kernel found
fail  iommu_groups  iommu_groups found
                    fix: turn it on
warn  memlock       memlock found
                    fix: raise it
3 checks: 1 failed, 1 warning. A VM with a device will not work here until the failed checks are fixed.
"
        );
        assert_eq!(status(&checks), Status::CheckFailed);
        assert_eq!(status(&checks[2..]), Status::Ok);
        assert_eq!(
            text(&checks[..1]),
            "ok    kernel  kernel found\nAll 1 checks passed.\n"
        );
    }

    #[test]
    fn the_json_shape_has_plain_words_and_null_fixes() {
        let checks = [
            check("kernel", Level::Ok, None),
            check("memlock", Level::Fail, Some("raise it")),
        ];
        let doc = DoctorJson {
            checks: &checks,
            exit_code: status(&checks).code(),
        };
        assert_eq!(
            serde_json::to_value(crate::json::Document::new(&doc)).unwrap(),
            serde_json::json!({
                "schema": 1,
                "checks": [
                    {"name": "kernel", "status": "ok", "found": "kernel found", "fix": null},
                    {"name": "memlock", "status": "fail", "found": "memlock found",
                     "fix": "raise it"},
                ],
                "exit_code": 10,
            })
        );
    }
}
