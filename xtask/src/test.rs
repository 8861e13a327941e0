//! `cargo xtask test`: every test, in the order that fails fastest, and one summary.
//!
//! 0. the host tools the VM tests need, installed with apt if missing
//! 1. `cargo fmt --all -- --check`
//! 2. `cargo clippy --workspace --all-targets -- -D warnings`
//! 3. `cargo xtask tidy`, in-process: one check per invariant (`xtask/src/tidy.rs`), each
//!    counted as passed or failed, every problem printed at file:line
//! 4. `cargo test --workspace` (`VFIO_GATE_TEST_LANDLOCK_ABI`, if set, passes through: the
//!    host-side landlock tests then require that ABI of this machine's kernel)
//! 5. the exposure score of `dist/vfio-gated.service` (`systemd-analyze security --offline`),
//!    failed above [`MAX_EXPOSURE`]
//! 6. each `tests/vm/*.test.sh` in its own guest boot, on each kernel (`--kernel`, default 6.1
//!    and 6.12); `systemd*.test.sh` boot the systemd guest, the others the busybox one
//!
//! Every stage runs even if an earlier one failed, so one run shows everything that is wrong.
//! A VM test `NAME.test.sh` runs under `NAME.policy.toml` if that file exists, else under
//! `tests/vm/policy.toml`.
//! A VM test file prints TAP-like lines (`ok N - …`, `not ok N - …`), `# metric name=value`
//! lines and a closing `N passed, M failed` (see `tests/vm/lib.sh`); the runner echoes the output
//! as it arrives and then reports per file: checks, metrics and the boot-to-result wall time.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

use crate::guest::{Mode, RunSpec};
use crate::host::Apt;
use crate::kernel::KernelSeries;
use crate::systemd::Init;
use crate::util::{Context, Paths, Result, display, fmt_duration};

#[derive(Debug, Clone, Args)]
pub struct TestArgs {
    /// Only the VM tests (skip fmt, clippy, tidy and cargo test).
    #[arg(long)]
    vm_only: bool,
    /// Skip the VM tests.
    #[arg(long, conflicts_with = "vm_only")]
    no_vm: bool,
    /// The guest kernels for the VM tests: every file runs on each (repeat the option or
    /// separate with commas).
    #[arg(long = "kernel", value_enum, value_delimiter = ',', default_values = ["6.1", "6.12"])]
    kernels: Vec<KernelSeries>,
    /// Stop a guest after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Run only the VM test files whose name contains one of these words.
    filters: Vec<String>,
}

/// The result of one stage or one VM test file.
#[derive(Debug)]
struct Stage {
    name: String,
    passed: usize,
    failed: usize,
    notes: Vec<String>,
}

impl Stage {
    fn new(name: impl Into<String>) -> Stage {
        Stage {
            name: name.into(),
            passed: 0,
            failed: 0,
            notes: Vec::new(),
        }
    }

    fn ok(&self) -> bool {
        self.failed == 0
    }
}

pub fn run(paths: &Paths, args: &TestArgs) -> Result<std::process::ExitCode> {
    let start = Instant::now();
    let mut stages = Vec::new();
    let mut apt = Apt::default();
    if !args.no_vm {
        // Install first: a missing tool is then reported before minutes of building.
        println!("== host tools for the VM tests ==");
        if let Err(e) = apt.ensure_host_tools() {
            println!("xtask: {e}");
            let mut s = Stage::new("host tools");
            s.failed = 1;
            s.notes.push(e.to_string());
            stages.push(s);
        }
    }
    if !args.vm_only {
        stages.push(cargo_stage(
            paths,
            "fmt",
            &["fmt", "--all", "--", "--check"],
        )?);
        stages.push(cargo_stage(
            paths,
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        )?);
        stages.push(tidy_stage(paths));
        stages.push(cargo_test(paths)?);
        stages.push(unit_exposure(paths));
    }
    if !args.no_vm {
        stages.extend(vm_tests(paths, args, &mut apt)?);
    }

    println!();
    println!("== summary ({}) ==", fmt_duration(start.elapsed()));
    let (mut passed, mut failed) = (0, 0);
    for s in &stages {
        passed += s.passed;
        failed += s.failed;
        println!(
            "{:<6} {:<28} {} passed, {} failed",
            if s.ok() { "ok" } else { "FAIL" },
            s.name,
            s.passed,
            s.failed
        );
        for n in &s.notes {
            println!("         {n}");
        }
    }
    println!("xtask: {passed} passed, {failed} failed");
    Ok(if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

fn cargo(paths: &Paths) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&paths.workspace);
    cmd
}

/// A stage that is one cargo command: one check, passed or failed.
fn cargo_stage(paths: &Paths, name: &str, args: &[&str]) -> Result<Stage> {
    let mut cmd = cargo(paths);
    cmd.args(args);
    println!("== {name}: cargo {} ==", args.join(" "));
    let st = cmd
        .status()
        .with_context(|| format!("running `{}`", display(&cmd)))?;
    let mut stage = Stage::new(name);
    if st.success() {
        stage.passed = 1;
    } else {
        stage.failed = 1;
        stage
            .notes
            .push(format!("`{}` failed ({st})", display(&cmd)));
    }
    Ok(stage)
}

/// `cargo xtask tidy`, run in this process: each check one pass or one failure, each failure
/// with its first problem in the summary (all of them are printed above it).
fn tidy_stage(paths: &Paths) -> Stage {
    println!("== tidy: the architecture's invariants (cargo xtask tidy) ==");
    let results = match crate::tidy::run(paths) {
        Ok(r) => r,
        Err(e) => {
            println!("xtask: tidy: {e}");
            let mut stage = Stage::new("tidy");
            stage.failed = 1;
            stage.notes.push(format!("cannot run tidy: {e}"));
            return stage;
        }
    };
    crate::tidy::print(&results);
    tidy_counts(&results)
}

/// One pass or one failure per tidy check.
fn tidy_counts(results: &[crate::tidy::CheckResult]) -> Stage {
    let mut stage = Stage::new("tidy");
    for r in results {
        if let Some(first) = r.problems.first() {
            stage.failed += 1;
            stage.notes.push(format!(
                "{}: {} problem(s), the first: {first}",
                r.name,
                r.problems.len()
            ));
        } else {
            stage.passed += 1;
        }
        if let Some((name, value)) = r.metric {
            stage.notes.push(format!("# metric {name}={value}"));
        }
    }
    stage
}

/// `cargo test --workspace`, counting the tests from libtest's `test result:` lines.
fn cargo_test(paths: &Paths) -> Result<Stage> {
    let mut cmd = cargo(paths);
    cmd.args(["test", "--workspace"]).stdout(Stdio::piped());
    println!("== cargo test: cargo test --workspace ==");
    match std::env::var("VFIO_GATE_TEST_LANDLOCK_ABI") {
        Ok(abi) => println!("(the host kernel must offer landlock ABI {abi} or newer)"),
        Err(_) => println!(
            "(VFIO_GATE_TEST_LANDLOCK_ABI unset: host-side landlock checks adapt to this kernel)"
        ),
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running `{}`", display(&cmd)))?;
    let mut stage = Stage::new("cargo test");
    let out = child.stdout.take().expect("piped");
    let mut stdout = std::io::stdout();
    for line in BufReader::new(out).lines() {
        let line = line?;
        let _ = writeln!(stdout, "{line}");
        if let Some((p, f)) = libtest_counts(&line) {
            stage.passed += p;
            stage.failed += f;
        }
    }
    let st = child.wait()?;
    if !st.success() && stage.failed == 0 {
        // A build failure or a crashed test binary: no `test result` line says so.
        stage.failed = 1;
    }
    if !st.success() {
        stage
            .notes
            .push(format!("`{}` failed ({st})", display(&cmd)));
    }
    Ok(stage)
}

/// `test result: ok. 12 passed; 0 failed; 0 ignored; …` → (12, 0).
fn libtest_counts(line: &str) -> Option<(usize, usize)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |word: &str| -> Option<usize> {
        rest.split(';')
            .map(str::trim)
            .find_map(|part| {
                let part = part.rsplit(". ").next().unwrap_or(part);
                part.strip_suffix(word)
            })
            .and_then(|n| n.trim().parse().ok())
    };
    Some((count(" passed")?, count(" failed")?))
}

fn vm_test_files(paths: &Paths, filters: &[String]) -> Result<Vec<PathBuf>> {
    let dir = paths.vm_sources();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".test.sh"))
        })
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str()))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The guest a VM test file runs in: `systemd*.test.sh` boot the systemd flavour, the others
/// busybox.
fn init_of(file: &Path) -> Init {
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    if name.starts_with("systemd") {
        Init::Systemd
    } else {
        Init::Busybox
    }
}

fn vm_tests(paths: &Paths, args: &TestArgs, apt: &mut Apt) -> Result<Vec<Stage>> {
    let files = vm_test_files(paths, &args.filters)?;
    let mut kernels = args.kernels.clone();
    kernels.sort();
    kernels.dedup();
    let names: Vec<&str> = kernels.iter().map(|k| k.name()).collect();
    println!(
        "== VM tests: {} file(s) on kernel {} ==",
        files.len(),
        names.join(" and ")
    );
    if files.is_empty() {
        let mut s = Stage::new("vm");
        s.failed = 1;
        s.notes.push("no tests/vm/*.test.sh matched".into());
        return Ok(vec![s]);
    }
    let mut stages = Vec::new();
    for series in kernels {
        for init in [Init::Busybox, Init::Systemd] {
            let mine: Vec<&PathBuf> = files.iter().filter(|f| init_of(f) == init).collect();
            if mine.is_empty() {
                continue;
            }
            let start = Instant::now();
            let prep = match crate::prepare(paths, series, init, apt) {
                Ok(p) => p,
                Err(e) => {
                    println!(
                        "xtask: cannot prepare the {init:?} guest on {}: {e}",
                        series.name()
                    );
                    let mut s =
                        Stage::new(format!("vm {} {init:?} (guest preparation)", series.name()));
                    s.failed = 1;
                    s.notes.push(e.to_string());
                    stages.push(s);
                    continue;
                }
            };
            println!(
                "guest: kernel {} ({}), {init:?} as PID 1, accel {}, prepared in {}",
                prep.kernel.release,
                prep.kernel.image.display(),
                crate::qemu::accel(),
                fmt_duration(start.elapsed())
            );
            for file in mine {
                stages.push(vm_test_file(paths, args, &prep, series, file)?);
            }
        }
    }
    Ok(stages)
}

/// One VM test file in its own guest boot.
fn vm_test_file(
    paths: &Paths,
    args: &TestArgs,
    prep: &crate::Prepared,
    series: KernelSeries,
    file: &Path,
) -> Result<Stage> {
    let default_policy = paths.vm_sources().join("policy.toml");
    let name = file
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let run = crate::run_name(
        &format!("test-{}", name.trim_end_matches(".test.sh")),
        series,
        prep.init,
    );
    // NAME.test.sh runs under NAME.policy.toml when there is one.
    let policy = crate::own_policy(file).unwrap_or_else(|| default_policy.clone());
    let label = format!(
        "{name} [{}{}]",
        series.name(),
        match prep.init {
            Init::Busybox => "",
            Init::Systemd => ", systemd",
        }
    );
    println!("-- {label} (policy {}) --", policy.display());
    let spec = RunSpec {
        mode: Mode::Script(file.to_path_buf()),
        policy,
    };
    let m = crate::machine(paths, prep, &spec, &run, Duration::from_secs(args.timeout))?;
    let mut stdout = std::io::stdout();
    let mut retried = false;
    let (outcome, report) = loop {
        let mut report = FileReport::default();
        let outcome = m.run(&mut |bytes| {
            let _ = stdout.write_all(bytes);
            let _ = stdout.flush();
            report.feed(bytes);
        })?;
        report.finish();
        // Under TCG the guest kernel now and then dies while it boots (seen: an int3 oops in
        // text patching on 6.12), before any check ran: that says nothing about the product,
        // so boot once more, and say so. A panic after the script started is a failure.
        let early_panic = outcome.script_status.is_none()
            && report.passed + report.failed == 0
            && crate::qemu::console_tail(&outcome.console, 200).contains("Kernel panic");
        if early_panic && !retried {
            println!(
                "-- {label}: the guest kernel panicked while booting, before the test; booting again --"
            );
            retried = true;
            continue;
        }
        break (outcome, report);
    };
    let mut stage = Stage::new(format!("vm {label}"));
    if retried {
        stage.notes.push(
            "note: the first boot's kernel panicked before the test started; booted again".into(),
        );
    }
    stage.passed = report.passed;
    stage.failed = report.failed;
    stage
        .notes
        .push(format!("boot-to-result {}", fmt_duration(outcome.wall)));
    for (k, v) in &report.metrics {
        stage.notes.push(format!("# metric {k}={v}"));
    }
    match outcome.script_status {
        Some(0) if report.summary.is_some() => {}
        Some(0) => {
            stage.failed += 1;
            stage
                .notes
                .push("the script ended without its `N passed, M failed` line".into());
        }
        Some(rc) => {
            if stage.failed == 0 {
                stage.failed = 1;
            }
            stage.notes.push(format!("script exit status {rc}"));
        }
        None => {
            stage.failed += 1;
            stage
                .notes
                .push(outcome.failure().unwrap_or_default().to_string());
        }
    }
    if let Some((p, f)) = report
        .summary
        .filter(|&c| c != (report.passed, report.failed))
    {
        stage.notes.push(format!(
            "note: the script counted {p} passed, {f} failed; the runner saw {} and {}",
            report.passed, report.failed
        ));
    }
    if !stage.ok() {
        stage
            .notes
            .push(format!("guest console log: {}", outcome.console.display()));
        println!(
            "--- {label}: last lines of {} ---\n{}",
            outcome.console.display(),
            crate::qemu::console_tail(&outcome.console, 30)
        );
    }
    println!(
        "-- {label}: {} passed, {} failed, boot-to-result {} --",
        stage.passed,
        stage.failed,
        fmt_duration(outcome.wall)
    );
    Ok(stage)
}

/// The exposure bar of the shipped service unit.
pub const MAX_EXPOSURE: f64 = 1.5;

/// `systemd-analyze security --offline=true dist/vfio-gated.service`: one check, failed above
/// [`MAX_EXPOSURE`] (or if the score cannot be read).
fn unit_exposure(paths: &Paths) -> Stage {
    let unit = paths.workspace.join("dist/vfio-gated.service");
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["security", "--offline=true", "--no-pager"])
        .arg(&unit);
    println!("== unit exposure: {} ==", display(&cmd));
    let mut stage = Stage::new("unit exposure");
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            stage.failed = 1;
            stage.notes.push(format!("cannot run systemd-analyze: {e}"));
            return stage;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in text.lines().filter(|l| l.starts_with('✗')) {
        println!("{}", line.trim_end());
    }
    match exposure(&text) {
        Some(score) => {
            println!("exposure of vfio-gated.service: {score:.1} (bar: {MAX_EXPOSURE:.1})");
            stage
                .notes
                .push(format!("# metric unit_exposure={score:.1}"));
            if score <= MAX_EXPOSURE {
                stage.passed = 1;
            } else {
                stage.failed = 1;
                stage.notes.push(format!(
                    "exposure {score:.1} is above {MAX_EXPOSURE:.1}: harden dist/vfio-gated.service"
                ));
            }
        }
        None => {
            stage.failed = 1;
            stage.notes.push(format!(
                "no exposure level in the output of `{}` ({}): {}",
                display(&cmd),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    stage
}

/// `→ Overall exposure level for x.service: 1.4 OK 🙂` → 1.4.
fn exposure(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for"))?;
    let (_, rest) = line.rsplit_once(": ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// What a VM test file's output says, parsed line by line as it streams.
#[derive(Debug, Default)]
struct FileReport {
    partial: Vec<u8>,
    passed: usize,
    failed: usize,
    metrics: Vec<(String, String)>,
    summary: Option<(usize, usize)>,
}

impl FileReport {
    fn feed(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            self.line(String::from_utf8_lossy(&line).trim_end());
        }
    }

    fn finish(&mut self) {
        if !self.partial.is_empty() {
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
            self.line(line.trim_end());
        }
    }

    fn line(&mut self, line: &str) {
        if line.starts_with("ok ") {
            self.passed += 1;
        } else if line.starts_with("not ok ") {
            self.failed += 1;
        } else if let Some(m) = line.strip_prefix("# metric ") {
            if let Some((k, v)) = m.trim().split_once('=') {
                self.metrics.push((k.to_string(), v.to_string()));
            }
        } else if let Some(counts) = summary_counts(line) {
            self.summary = Some(counts);
        }
    }
}

/// `12 passed, 3 failed` → (12, 3).
fn summary_counts(line: &str) -> Option<(usize, usize)> {
    let (p, f) = line.trim().split_once(" passed, ")?;
    let f = f.strip_suffix(" failed")?;
    Some((p.parse().ok()?, f.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_lines() {
        assert_eq!(
            libtest_counts(
                "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s"
            ),
            Some((12, 0))
        );
        assert_eq!(
            libtest_counts("test result: FAILED. 3 passed; 2 failed; 0 ignored"),
            Some((3, 2))
        );
        assert_eq!(libtest_counts("running 3 tests"), None);
    }

    #[test]
    fn tap_like_output_is_counted_across_chunks() {
        let mut r = FileReport::default();
        r.feed(b"ok 1 - a\nnot o");
        r.feed(b"k 2 - b\n#   output: ok 3\n# metric list_ms=12.5\n");
        r.feed(b"1 passed, 1 failed");
        r.finish();
        assert_eq!((r.passed, r.failed), (1, 1));
        assert_eq!(r.metrics, [("list_ms".to_string(), "12.5".to_string())]);
        assert_eq!(r.summary, Some((1, 1)));
    }

    #[test]
    fn exposure_line() {
        let text = "✗ PrivateNetwork=  Service has access to the host's network   0.5\n\n\
                    → Overall exposure level for vfio-gated.service: 1.4 OK 🙂\n";
        assert_eq!(exposure(text), Some(1.4));
        assert_eq!(exposure("nothing"), None);
    }

    #[test]
    fn tidy_counts_one_per_check() {
        use crate::tidy::{CheckResult, Problem};
        let problem = Problem {
            file: "README.md".into(),
            line: Some(96),
            msg: "exit code 0 says \"ok\"".into(),
        };
        let results = [
            CheckResult {
                name: "unsafe",
                problems: vec![problem.clone(), problem.clone()],
                note: None,
                metric: None,
            },
            CheckResult {
                name: "deps",
                problems: Vec::new(),
                note: Some("38 crates".into()),
                metric: Some(("helper_deps", 38)),
            },
        ];
        let s = tidy_counts(&results);
        assert_eq!((s.passed, s.failed), (1, 1));
        assert_eq!(
            s.notes,
            [
                "unsafe: 2 problem(s), the first: README.md:96: exit code 0 says \"ok\"",
                "# metric helper_deps=38",
            ]
        );
    }

    #[test]
    fn systemd_files_boot_systemd() {
        assert_eq!(
            init_of(Path::new("tests/vm/systemd.test.sh")),
            Init::Systemd
        );
        assert_eq!(
            init_of(Path::new("tests/vm/sandbox.test.sh")),
            Init::Busybox
        );
    }
}
