//! `vfio-gate run`: the command as the caller, signals, the lease tied to the connection.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use vfio_gate_protocol::{
    BindReport, BusyReason, DenyReason, Driver, ReleaseReport, ReleaseTarget, Request, Response,
    WireError,
};

use crate::fixtures::*;
use crate::util::{Event, FakeHelper, Reply, Session, against, run, vfio_gate};

fn bound(node: Option<&str>) -> Response {
    Response::Bound(BindReport {
        plan: group_11_plan(),
        dry_run: false,
        vfio_node: node.map(str::to_owned),
    })
}

fn released() -> Response {
    Response::Released(ReleaseReport {
        groups: vec![crate::release::group_11(my_uid(), Some("e1000"))],
    })
}

fn hold_bind() -> Request {
    Request::Bind {
        devices: vec![addr("05:02.0")],
        driver: Driver::VfioPci,
        group: true,
        dry_run: false,
        hold: true,
    }
}

fn release_05_02() -> Request {
    Request::Release {
        target: ReleaseTarget::Device(addr("05:02.0")),
    }
}

/// The bind, then the release once the command had finished, then the close.
fn bind_release_close() -> Vec<Event> {
    vec![
        Event::Request {
            request: hold_bind(),
            marker: false,
        },
        Event::Request {
            request: release_05_02(),
            marker: true,
        },
        Event::Closed { marker: true },
    ]
}

/// A fake that binds with a node of ours, then answers the release; `marker` is the file
/// the command creates as it finishes.
fn session(node: &str, marker: &Path) -> FakeHelper {
    FakeHelper::start(vec![Reply::Session(Session::new(
        vec![bound(Some(node)), released()],
        Some(marker),
    ))])
}

#[test]
fn holds_the_connection_while_the_command_runs_then_releases_on_it() {
    let (dir, node) = fake_node(0o600);
    let marker = dir.path().join("done");
    let fake = session(&node, &marker);
    let mut cmd = against(
        &fake,
        &["run", "--device", "05:02.0", "--group", "--", "sh", "-c"],
    );
    // Runs with our environment and stdout, takes its time, marks that it finished.
    cmd.arg("sleep 0.5; printf '%s\\n' \"$GREETING\"; touch \"$0\"; exit 3")
        .arg(&marker)
        .env("GREETING", "hello from the command");
    let r = run(cmd);
    r.code(3);
    assert_eq!(r.stdout, "hello from the command\n", "{r:#?}");
    assert_eq!(
        r.stderr,
        format!(
            "vfio-gate: 05:02.0 is on vfio-pci and 05:01.0 on pci-stub ({node}) while sh runs\n\
                 vfio-gate: released IOMMU group 11\n"
        ),
        "{r:#?}"
    );
    let (requests, events) = fake.finish();
    assert_eq!(events, bind_release_close(), "{r:#?}");
    assert_eq!(requests, vec![hold_bind(), release_05_02()]);
}

#[test]
fn the_command_gets_the_signal_mask_and_dispositions_vfio_gate_got() {
    let status = ["grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"];
    let direct = std::process::Command::new(status[0])
        .args(&status[1..])
        .output()
        .unwrap();
    let direct = String::from_utf8(direct.stdout).unwrap();
    let fake = FakeHelper::start(vec![Reply::Session(Session::new(
        vec![bound(None), released()],
        None,
    ))]);
    let mut cmd = against(&fake, &["run", "--device", "05:02.0", "--"]);
    cmd.args(status);
    let r = run(cmd);
    r.code(0);
    assert!(direct.contains("SigBlk:\t0000000000000000\n"), "{direct}");
    assert_eq!(r.stdout, direct, "{r:#?}");
    fake.requests();
}

#[test]
fn devices_go_in_the_order_given_with_the_driver() {
    let fake = FakeHelper::start(vec![Reply::Session(Session::new(
        vec![bound(None), released()],
        None,
    ))]);
    run(against(
        &fake,
        &[
            "run",
            "--device",
            "05:01.0",
            "--to",
            "pci-stub",
            "--device",
            "0000:05:02.0",
            "--device",
            "05:01.0",
            "--",
            "true",
        ],
    ))
    .code(0)
    .stderr_has("vfio-gate: 05:01.0 is on pci-stub and 05:02.0 on vfio-pci while true runs\n");
    assert_eq!(
        fake.requests(),
        vec![
            Request::Bind {
                devices: vec![addr("05:01.0"), addr("05:02.0")],
                driver: Driver::PciStub,
                group: false,
                dry_run: false,
                hold: true,
            },
            Request::Release {
                target: ReleaseTarget::Device(addr("05:01.0")),
            },
        ]
    );
}

#[test]
fn a_command_killed_by_a_signal_gives_128_plus_its_number() {
    for (script, code) in [
        ("kill -KILL $$", 137),
        ("kill -TERM $$", 143),
        ("exit 0", 0),
    ] {
        let (dir, node) = fake_node(0o600);
        let fake = session(&node, &dir.path().join("never"));
        let r = run(against(
            &fake,
            &["run", "--device", "05:02.0", "--", "sh", "-c", script],
        ));
        r.code(code)
            .stderr_has("vfio-gate: released IOMMU group 11\n");
        assert_eq!(fake.requests(), vec![hold_bind_plain(), release_05_02()]);
    }
}

fn hold_bind_plain() -> Request {
    Request::Bind {
        devices: vec![addr("05:02.0")],
        driver: Driver::VfioPci,
        group: false,
        dry_run: false,
        hold: true,
    }
}

#[test]
fn a_refused_bind_is_reported_as_bind_reports_it_and_the_command_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let refusals = [
        WireError::Denied {
            why: DenyReason::Policy,
            rule: Some(rule()),
            detail: "bob may not bind 05:02.0".into(),
        },
        WireError::NotFound {
            device: addr("05:02.0"),
        },
        WireError::Held {
            group: Some(11),
            uid: 0,
            since: 1_700_000_000,
        },
        WireError::Busy {
            why: BusyReason::GroupInUse { group: 11 },
            detail: "group 11 is in use — stop the VM first".into(),
        },
    ];
    for wire in refusals {
        let fake = FakeHelper::start(vec![
            Reply::Answer(Response::Error(wire.clone())),
            Reply::Answer(Response::Error(wire.clone())),
        ]);
        let mut bind = against(&fake, &["bind", "05:02.0"]);
        bind.env("TZ", "UTC");
        let by_bind = run(bind);
        let mut cmd = against(&fake, &["run", "--device", "05:02.0", "--", "touch"]);
        cmd.arg(&marker).env("TZ", "UTC");
        let by_run = run(cmd);
        by_run.stdout_empty();
        assert_eq!(by_run.code, by_bind.code, "{wire:?}: {by_run:#?}");
        assert_eq!(by_run.stderr, by_bind.stderr, "{wire:?}: {by_run:#?}");
        assert!(!marker.exists(), "{wire:?}: the command ran");
        let requests = fake.requests();
        assert!(
            matches!(requests[1], Request::Bind { hold: true, .. }),
            "{requests:?}"
        );
    }
}

#[test]
fn a_bind_that_needs_the_group_suggests_the_same_run_with_group() {
    let fake = FakeHelper::answering(Response::Error(WireError::NeedsGroup {
        group: 11,
        plan: group_11_plan(),
        reason: "05:01.0 is on e1000".into(),
    }));
    let r = run(against(
        &fake,
        &[
            "run",
            "--device",
            "05:02.0",
            "--pci-ids",
            "/nonexistent",
            "--",
            "qemu",
            "-name",
            "my vm",
        ],
    ));
    r.code(3).stdout_empty().stderr_has(
        "Re-run with --group to also put 05:01.0 on pci-stub and leave 04:00.0 on pcieport: \
             vfio-gate run --device 05:02.0 --to vfio-pci --group -- qemu -name 'my vm'\n",
    );
    fake.requests();
}

#[test]
fn a_command_that_cannot_start_is_127_or_126_and_the_devices_are_released() {
    let dir = tempfile::tempdir().unwrap();
    let not_executable = dir.path().join("script");
    std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    for (program, code, words) in [
        (
            dir.path().join("no-such-command"),
            127,
            "Check the command's name, and that it is in your PATH",
        ),
        (not_executable.clone(), 126, "a program you may run"),
    ] {
        let fake = FakeHelper::start(vec![Reply::Session(Session::new(
            vec![bound(None), released()],
            None,
        ))]);
        let mut cmd = against(&fake, &["run", "--device", "05:02.0", "--"]);
        cmd.arg(&program);
        let r = run(cmd);
        r.code(code)
            .stdout_empty()
            .stderr_has(&format!("vfio-gate: cannot run {}: ", program.display()))
            .stderr_has(words)
            .stderr_has("vfio-gate: released IOMMU group 11\n");
        assert_eq!(fake.requests(), vec![hold_bind_plain(), release_05_02()]);
    }
}

#[test]
fn json_and_a_missing_command_are_bad_usage() {
    for args in [
        &["run", "--json", "--device", "05:02.0", "--", "true"][..],
        &["run", "--device", "05:02.0"],
        &["run", "--device", "05:02.0", "--"],
        &["run", "--", "true"],
        &["run", "--device", "5:02.0", "--", "true"],
    ] {
        let mut cmd = vfio_gate();
        cmd.args(["--socket", "/nonexistent/vfio-gate.sock"])
            .args(args);
        let r = run(cmd);
        r.code(2).stderr_has("error:");
    }
    let mut cmd = vfio_gate();
    cmd.args(["--socket", "/nonexistent/vfio-gate.sock", "--json"])
        .args(["run", "--device", "05:02.0", "--", "true"]);
    let r = run(cmd);
    let e = r.code(2).json_error("usage");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("--json cannot be used with run"),
        "{e}"
    );
    // After `--`, --json belongs to the command.
    let fake = FakeHelper::start(vec![Reply::Session(Session::new(
        vec![bound(None), released()],
        None,
    ))]);
    run(against(
        &fake,
        &[
            "run",
            "--device",
            "05:02.0",
            "--",
            "sh",
            "-c",
            "test \"$1\" = --json",
            "sh",
            "--json",
        ],
    ))
    .code(0);
    fake.requests();
}

#[test]
fn the_connection_limit_is_retried_before_the_bind() {
    let (dir, node) = fake_node(0o600);
    let fake = FakeHelper::start(vec![
        Reply::RefuseAtOnce(at_limit()),
        Reply::Answer(at_limit()),
        Reply::Session(Session::new(
            vec![bound(Some(&node)), released()],
            Some(&dir.path().join("done")),
        )),
    ]);
    let mut cmd = against(&fake, &["run", "--device", "05:02.0", "--", "touch"]);
    cmd.arg(dir.path().join("done"));
    run(cmd).code(0);
    assert_eq!(
        fake.requests(),
        vec![hold_bind_plain(), hold_bind_plain(), release_05_02()]
    );
}

#[test]
fn a_refused_release_is_a_warning_and_the_status_stays_the_commands() {
    let fake = FakeHelper::start(vec![Reply::Session(Session::new(
        vec![
            bound(None),
            Response::Error(WireError::Busy {
                why: BusyReason::GroupInUse { group: 11 },
                detail: "group 11 is in use — stop the VM first".into(),
            }),
        ],
        None,
    ))]);
    let r = run(against(
        &fake,
        &["run", "--device", "05:02.0", "--", "sh", "-c", "exit 5"],
    ));
    r.code(5).stderr_has(
        "vfio-gate: warning: releasing 05:02.0: busy: group 11 is in use — stop the VM \
             first; the helper gives the devices back when vfio-gate exits",
    );
    let (requests, events) = fake.finish();
    assert_eq!(requests, vec![hold_bind_plain(), release_05_02()]);
    assert_eq!(events.last(), Some(&Event::Closed { marker: false }));
}

#[test]
fn a_helper_that_hangs_up_while_the_command_runs_is_reported_at_once() {
    let mut s = Session::new(vec![bound(None)], None);
    s.hang_up = true;
    let fake = FakeHelper::start(vec![Reply::Session(s)]);
    let r = run(against(
        &fake,
        &[
            "run",
            "--device",
            "05:02.0",
            "--",
            "sh",
            "-c",
            "sleep 0.5; exit 4",
        ],
    ));
    r.code(4).stderr_has(
        "vfio-gate: warning: the helper closed the connection while sh runs: the lease on \
             05:02.0 has ended",
    );
    if r.stderr.contains("released") {
        r.fail("nothing was released by vfio-gate: the helper had hung up");
    }
    assert_eq!(fake.requests(), vec![hold_bind_plain()]);
}

/// Starts `vfio-gate run` on a command that writes its pid to a file and sleeps; returns the
/// frontend and the command's pid once it runs.
// The child is returned, and the caller waits for it.
#[allow(clippy::zombie_processes)]
fn start_sleeper(
    fake: &FakeHelper,
    dir: &Path,
    own_group: bool,
) -> (std::process::Child, libc::pid_t) {
    let pidfile = dir.join("pid");
    let mut cmd = against(fake, &["run", "--device", "05:02.0", "--", "sh", "-c"]);
    cmd.arg("echo $$ > \"$0.tmp\" && mv \"$0.tmp\" \"$0\" && exec sleep 30")
        .arg(&pidfile)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if own_group {
        cmd.process_group(0);
    }
    // The command starts with the dispositions vfio-gate found (an ignored signal stays ignored,
    // as `nohup` means it to): give vfio-gate the defaults, whatever this test run inherited
    // (`nohup cargo test` ignores SIGHUP).
    // SAFETY: only signal(2) between fork and exec, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGQUIT] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            // Give `exec sleep` a moment to happen.
            std::thread::sleep(Duration::from_millis(100));
            return (child, pid.trim().parse().unwrap());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the command never started");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill touches no memory; the pids are our children (or their group).
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

fn alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Waits for the frontend (up to half a minute: a bound on a hang, generous for a loaded host);
/// its exit code and stderr.
fn finish(mut child: std::process::Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return (status.code(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vfio-gate did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ctrl_c_at_the_terminal_stops_the_command_and_vfio_gate_still_releases() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHelper::start(vec![Reply::Session(Session::new(
        vec![bound(None), released()],
        None,
    ))]);
    // In a process group of its own, as a shell's foreground job is.
    let (child, command) = start_sleeper(&fake, dir.path(), true);
    let group = libc::pid_t::try_from(child.id()).unwrap();
    signal(-group, libc::SIGINT);
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains("vfio-gate: released IOMMU group 11\n"),
        "{stderr}"
    );
    assert!(!alive(command));
    assert_eq!(fake.requests(), vec![hold_bind_plain(), release_05_02()]);
}

#[test]
fn sigint_and_sigquit_to_vfio_gate_alone_are_ignored_but_not_by_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHelper::start(vec![Reply::Session(Session::new(
        vec![bound(None), released()],
        None,
    ))]);
    let (mut child, command) = start_sleeper(&fake, dir.path(), false);
    let frontend = libc::pid_t::try_from(child.id()).unwrap();
    signal(frontend, libc::SIGINT);
    signal(frontend, libc::SIGQUIT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "vfio-gate died of the signal"
    );
    assert!(alive(command));
    // The command was not started with SIGINT ignored: it dies of it.
    signal(command, libc::SIGINT);
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(130), "{stderr}");
    assert_eq!(fake.requests(), vec![hold_bind_plain(), release_05_02()]);
}

#[test]
fn sigterm_and_sighup_are_passed_on_to_the_command() {
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGHUP, 129)] {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeHelper::start(vec![Reply::Session(Session::new(
            vec![bound(None), released()],
            None,
        ))]);
        let (child, command) = start_sleeper(&fake, dir.path(), false);
        signal(libc::pid_t::try_from(child.id()).unwrap(), sig);
        let (got, stderr) = finish(child);
        assert_eq!(got, Some(code), "signal {sig}: {stderr}");
        assert!(
            stderr.contains("vfio-gate: released IOMMU group 11\n"),
            "{stderr}"
        );
        assert!(!alive(command));
        assert_eq!(fake.requests(), vec![hold_bind_plain(), release_05_02()]);
    }
}

#[test]
fn a_sigkilled_vfio_gate_closes_the_connection_though_the_command_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHelper::start(vec![Reply::Session(Session::new(
        vec![bound(None), released()],
        None,
    ))]);
    let (mut child, command) = start_sleeper(&fake, dir.path(), false);
    assert!(fake.events().len() == 1, "{:?}", fake.events());
    child.kill().unwrap();
    child.wait().unwrap();
    // The command does not hold the socket: the helper sees the close at once.
    let closed = fake.wait_for_event(Duration::from_secs(3), |e| {
        matches!(e, Event::Closed { .. })
    });
    let still_running = alive(command);
    signal(command, libc::SIGKILL);
    assert!(closed, "{:?}", fake.events());
    assert!(still_running);
    assert_eq!(fake.requests(), vec![hold_bind_plain()]);
}

/// A stand-in for QEMU in a temporary directory: `qemu-system-x86_64`, a script that records
/// its arguments in `args` beside it and exits 0.
fn fake_qemu(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let qemu = dir.join("qemu-system-x86_64");
    std::fs::write(
        &qemu,
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$0\")/args\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    qemu
}

/// `vfio-gate run --device 05:02.0 RUN_ARGS -- QEMU QEMU_ARGS` under `ulimit -l 8192` (8 MiB,
/// the kernel's default), against a fake helper that binds and releases.
fn run_qemu(run_args: &[&str], qemu: &Path, qemu_args: &[&str]) -> (crate::util::Run, FakeHelper) {
    let fake = FakeHelper::start(vec![Reply::Session(Session::new(
        vec![bound(None), released()],
        None,
    ))]);
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -l 8192 && exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_vfio-gate"))
        .arg("--socket")
        .arg(fake.socket())
        .args(["run", "--device", "05:02.0"])
        .args(run_args)
        .arg("--")
        .arg(qemu)
        .args(qemu_args)
        .env_remove("VFIO_GATE_SOCKET")
        .stdin(Stdio::null());
    (run(cmd), fake)
}

#[test]
fn qemu_asking_for_more_ram_than_memlock_allows_gets_a_warning_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = fake_qemu(dir.path());
    let (r, fake) = run_qemu(
        &[],
        &qemu,
        &[
            "-M",
            "q35",
            "-m",
            "1G",
            "-device",
            "vfio-pci,host=0000:05:02.0",
        ],
    );
    r.code(0);
    assert_eq!(
        r.stderr,
        "vfio-gate: 05:02.0 is on vfio-pci and 05:01.0 on pci-stub while qemu-system-x86_64 runs\n\
         vfio-gate: warning: qemu-system-x86_64 asks for 1 GiB of guest RAM (-m 1G), which VFIO \
         pins, but your memlock limit (ulimit -l) is 8 MiB: the VM will fail to map its memory \
         for the device (VFIO_MAP_DMA failed: Cannot allocate memory). To give it the RAM and \
         libvirt's 1 GiB margin, an admin must raise it to 2 GiB (2097152 KiB) for you; \
         vfio-gate doctor --memory 1G gives the exact fix\n\
         vfio-gate: released IOMMU group 11\n",
        "{r:#?}"
    );
    // Started all the same, with its arguments.
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    assert_eq!(
        args,
        "-M\nq35\n-m\n1G\n-device\nvfio-pci,host=0000:05:02.0\n"
    );
    fake.requests();
    // The other forms of -m, and memory backends.
    for (qemu_args, said) in [
        (
            &["-m", "size=2G,maxmem=4G"][..],
            "2 GiB of guest RAM (-m size=2G,maxmem=4G)",
        ),
        (&["--m", "512"][..], "512 MiB of guest RAM (--m 512)"),
        (
            &[
                "-object",
                "memory-backend-memfd,id=m,size=1073741824",
                "-machine",
                "memory-backend=m",
            ][..],
            "1 GiB of guest RAM (its memory-backend object)",
        ),
        (&[][..], "128 MiB of guest RAM (QEMU's default, without -m)"),
    ] {
        let (r, fake) = run_qemu(&[], &qemu, qemu_args);
        r.code(0).stderr_has(said);
        fake.requests();
    }
}

#[test]
fn no_memlock_warning_within_the_limit_for_pci_stub_or_other_commands() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = fake_qemu(dir.path());
    let (r, fake) = run_qemu(&[], &qemu, &["-m", "4M"]);
    r.code(0);
    assert!(!r.stderr.contains("warning"), "{r:#?}");
    fake.requests();
    // pci-stub pins nothing.
    let (r, fake) = run_qemu(&["--to", "pci-stub"], &qemu, &["-m", "1G"]);
    r.code(0);
    assert!(!r.stderr.contains("warning"), "{r:#?}");
    fake.requests();
    // Not QEMU: its -m means something else.
    let sh = dir.path().join("run-my-vm");
    std::fs::copy(&qemu, &sh).unwrap();
    let (r, fake) = run_qemu(&[], &sh, &["-m", "1G"]);
    r.code(0);
    assert!(!r.stderr.contains("warning"), "{r:#?}");
    fake.requests();
}
