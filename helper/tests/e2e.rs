//! The helper binary end to end on this machine: a fixture sysfs tree (never the host's /sys),
//! a socket of its own (`--listen`), real frames from real connections.
//!
//! The fixture has no kernel behind it, so writes land in plain files and no driver ever changes:
//! exactly a probe that "succeeds" and binds nothing, which the helper must catch and roll back.

use std::io::{Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vfio_gate_protocol::{
    BusyReason, Driver, MAX_RESPONSE_FRAME, Request, Response, WireError, decode_response,
    encode_request, read_frame,
};

const HELPER: &str = env!("CARGO_BIN_EXE_vfio-gated");

struct Helper {
    dir: tempfile::TempDir,
    child: Child,
}

impl Helper {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("gate.sock")
    }
    fn sysfs(&self) -> PathBuf {
        self.dir.path().join("sys")
    }
    fn stderr(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut s = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    }
}

fn device(root: &Path, addr: &str, ids: [&str; 5], driver: Option<&str>, group: u32) {
    let real = root.join("devices/pci0000:00").join(addr);
    std::fs::create_dir_all(&real).unwrap();
    for (attr, v) in [
        "vendor",
        "device",
        "subsystem_vendor",
        "subsystem_device",
        "class",
    ]
    .iter()
    .zip(ids)
    {
        std::fs::write(real.join(attr), format!("{v}\n")).unwrap();
    }
    std::fs::write(real.join("driver_override"), "(null)\n").unwrap();
    symlink(&real, root.join("bus/pci/devices").join(addr)).unwrap();
    let g = root.join("kernel/iommu_groups").join(group.to_string());
    std::fs::create_dir_all(g.join("devices")).unwrap();
    symlink(&g, real.join("iommu_group")).unwrap();
    symlink(&real, g.join("devices").join(addr)).unwrap();
    if let Some(d) = driver {
        let dd = root.join("bus/pci/drivers").join(d);
        std::fs::create_dir_all(&dd).unwrap();
        std::fs::write(dd.join("unbind"), "").unwrap();
        symlink(&dd, real.join("driver")).unwrap();
    }
}

fn write_policy(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn policy_for_me(idle: u32) -> String {
    let uid = nix::unistd::getuid().as_raw();
    format!(
        r#"
[settings]
idle_timeout = {idle}

[[rule]]
name = "the NIC for the test user"
subjects = {{ uids = [{uid}] }}
devices = [{{ address = "01:00.0", vendor = "8086", device = "10d3" }}]
drivers = ["vfio-pci"]

[[deny]]
name = "never storage"
devices = [{{ class = "01xxxx" }}]
"#
    )
}

fn spawn_with(policy: &str, extra_env: &[(&str, &str)]) -> Helper {
    let dir = tempfile::tempdir().unwrap();
    fixture_sysfs(&dir.path().join("sys"));
    spawn_in(dir, policy, extra_env, &[])
}

/// The fixture sysfs: a NIC (01:00.0, group 8) on e1000e and an NVMe drive (03:00.0, group 10).
fn fixture_sysfs(root: &Path) {
    std::fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
    std::fs::write(root.join("bus/pci/drivers_probe"), "").unwrap();
    device(
        root,
        "0000:01:00.0",
        ["0x8086", "0x10d3", "0x8086", "0x0000", "0x020000"],
        Some("e1000e"),
        8,
    );
    device(
        root,
        "0000:03:00.0",
        ["0x1b36", "0x0010", "0x1af4", "0x1100", "0x010802"],
        Some("nvme"),
        10,
    );
}

/// Starts the helper on the fixture sysfs in `dir/sys`, with `args` after the usual ones.
fn spawn_in(
    dir: tempfile::TempDir,
    policy: &str,
    extra_env: &[(&str, &str)],
    args: &[&Path],
) -> Helper {
    let policy_path = dir.path().join("policy.toml");
    write_policy(&policy_path, policy);
    let child = Command::new(HELPER)
        .arg("--listen")
        .arg(dir.path().join("gate.sock"))
        .arg("--sysfs-root")
        .arg(dir.path().join("sys"))
        .arg("--policy")
        .arg(&policy_path)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--vfio-dir")
        .arg(dir.path().join("dev-vfio"))
        .args(args)
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let helper = Helper { dir, child };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !helper.socket().exists() {
        assert!(
            Instant::now() < deadline,
            "the helper never created its socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    helper
}

fn bind(dev: &str, driver: Driver) -> Request {
    Request::Bind {
        devices: vec![dev.parse().unwrap()],
        driver,
        group: false,
        dry_run: false,
        hold: false,
    }
}

fn connect(h: &Helper) -> UnixStream {
    let s = UnixStream::connect(h.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn ask(s: &mut UnixStream, req: &Request) -> Response {
    s.write_all(&encode_request(req).unwrap()).unwrap();
    answer(s)
}

fn answer(s: &mut UnixStream) -> Response {
    let payload = read_frame(s, MAX_RESPONSE_FRAME).unwrap();
    decode_response(&payload).unwrap()
}

#[test]
fn lists_decides_and_survives_hostile_frames() {
    let h = spawn_with(&policy_for_me(30), &[]);
    let mut s = connect(&h);

    let Response::Devices(devs) = ask(&mut s, &Request::List) else {
        panic!()
    };
    assert_eq!(devs.len(), 2);
    assert_eq!(devs[0].driver.as_deref(), Some("e1000e"));
    assert_eq!(devs[0].allowed, vec![Driver::VfioPci]);
    assert_eq!(devs[1].iommu_group, Some(10));

    // Storage: the deny rule decides, and nothing is written.
    let resp = ask(&mut s, &bind("03:00.0", Driver::VfioPci));
    let Response::Error(WireError::Denied {
        rule: Some(rule), ..
    }) = resp
    else {
        panic!("{resp:?}")
    };
    assert_eq!((rule.name.as_str(), rule.line), ("never storage", 11));
    let ov = h
        .sysfs()
        .join("bus/pci/devices/0000:03:00.0/driver_override");
    assert_eq!(std::fs::read_to_string(&ov).unwrap(), "(null)\n");

    // The NIC: allowed, but no kernel is behind the fixture, so the probe binds nothing. The
    // helper must notice, roll back, and say so.
    let resp = ask(&mut s, &bind("01:00.0", Driver::VfioPci));
    let Response::Error(WireError::Failed { reason }) = resp else {
        panic!("{resp:?}")
    };
    assert!(reason.contains("did not bind to vfio-pci"), "{reason}");
    assert!(reason.contains("restored"), "{reason}");
    assert!(!h.dir.path().join("state/0000:01:00.0.lease").exists());

    // Unknown device.
    let resp = ask(&mut s, &bind("07:00.0", Driver::PciStub));
    assert!(
        matches!(resp, Response::Error(WireError::NotFound { .. })),
        "{resp:?}"
    );

    // Garbage inside a well-formed frame: typed error, same connection keeps working.
    s.write_all(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    assert!(matches!(
        answer(&mut s),
        Response::Error(WireError::BadRequest { .. })
    ));
    // A request from another protocol version.
    s.write_all(&[3, 0, 0, 0, 9, 0, 0]).unwrap();
    assert!(matches!(
        answer(&mut s),
        Response::Error(WireError::VersionMismatch {
            server: vfio_gate_protocol::PROTOCOL_VERSION,
            client: 9
        })
    ));
    assert!(matches!(ask(&mut s, &Request::List), Response::Devices(_)));

    // An oversized frame: refused from its length alone, then the connection is closed.
    let mut big = connect(&h);
    big.write_all(&(1u32 << 30).to_le_bytes()).unwrap();
    let resp = answer(&mut big);
    let Response::Error(WireError::BadRequest { reason }) = resp else {
        panic!("{resp:?}")
    };
    assert!(reason.contains("exceeds"), "{reason}");
    let mut rest = Vec::new();
    assert_eq!(
        big.read_to_end(&mut rest).unwrap(),
        0,
        "closed after an oversized frame"
    );

    // Still serving everyone else.
    assert!(matches!(
        ask(&mut connect(&h), &Request::List),
        Response::Devices(_)
    ));

    let log = h.stderr();
    assert!(log.contains("event=start"), "{log}");
    assert!(
        log.contains("event=policy-load") && log.contains(" sha256="),
        "{log}"
    );
    assert!(
        log.contains(
            r#"request=bind driver=vfio-pci devices=0000:03:00.0 decision=deny rule="never storage""#
        ),
        "{log}"
    );
    assert!(log.contains("result=bad-request"), "{log}");
    assert!(
        log.lines().filter(|l| l.contains("event=request")).count() >= 7,
        "{log}"
    );
}

#[test]
fn refuses_to_start_on_an_unsafe_policy_file() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    write_policy(&policy, &policy_for_me(30));
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new(HELPER)
        .arg("--listen")
        .arg(dir.path().join("s"))
        .arg("--policy")
        .arg(&policy)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to start"), "{err}");
    assert!(err.contains("writable"), "{err}");
}

#[test]
fn refuses_activation_variables_meant_for_another_process() {
    let out = Command::new(HELPER)
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LISTEN_PID"), "{err}");
}

#[test]
fn exits_when_idle_but_not_while_a_connection_is_open() {
    let mut h = spawn_with(&policy_for_me(1), &[]);
    let s = connect(&h);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        h.child.try_wait().unwrap().is_none(),
        "exited with a connection open"
    );
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = h.child.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(Instant::now() < deadline, "did not exit when idle");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(h.stderr().contains("event=idle-exit"));
}

#[test]
fn over_the_connection_limit_gets_busy_not_a_hang() {
    let h = spawn_with(&policy_for_me(30), &[]);
    // Hold the helper's whole connection budget with silent clients.
    let mut held: Vec<UnixStream> = (0..256).map(|_| connect(&h)).collect();
    // Make sure every held connection has been accepted before asking for one more.
    let mut probe = connect(&h);
    let resp = answer(&mut probe);
    let Response::Error(WireError::Busy {
        why: BusyReason::ConnectionLimit { limit: 256 },
        ..
    }) = resp
    else {
        panic!("{resp:?}")
    };
    held.truncate(0);
    // Once they are gone, service resumes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect(&h);
        s.write_all(&encode_request(&Request::List).unwrap())
            .unwrap();
        match read_frame(&mut s, MAX_RESPONSE_FRAME).map(|p| decode_response(&p).unwrap()) {
            Ok(Response::Devices(_)) => break,
            other => assert!(Instant::now() < deadline, "still refused: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_bad_policy_is_explained_to_waiting_clients_and_nothing_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    write_policy(&policy, &policy_for_me(30));
    let dropins = dir.path().join("policy.d");
    std::fs::create_dir(&dropins).unwrap();
    // A drop-in that does not parse refuses the whole policy.
    write_policy(&dropins.join("50-broken.toml"), "[[rule]\nname = \"x\"\n");
    let socket = dir.path().join("s");
    let mut child = Command::new(HELPER)
        .arg("--listen")
        .arg(&socket)
        .arg("--policy")
        .arg(&policy)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut s = UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let resp = answer(&mut s);
    let Response::Error(WireError::Unavailable { reason }) = resp else {
        panic!("{resp:?}")
    };
    assert!(reason.contains("50-broken.toml:1"), "{reason}");
    let status = child.wait().unwrap();
    assert!(!status.success());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("refusing to start"), "{err}");
    assert!(!err.contains("event=start"), "nothing was served: {err}");
}

#[test]
fn every_root_is_read_where_the_options_say_inside_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    fixture_sysfs(&sys);
    // The NVMe drive's namespace, mounted according to the fixture's procfs only.
    let disk = sys.join("devices/pci0000:00/0000:03:00.0/nvme/nvme0/nvme0n1");
    std::fs::create_dir_all(disk.join("holders")).unwrap();
    std::fs::write(disk.join("dev"), "259:0\n").unwrap();
    std::fs::create_dir_all(sys.join("class/block")).unwrap();
    symlink(&disk, sys.join("class/block/nvme0n1")).unwrap();
    let proc_root = dir.path().join("proc");
    std::fs::create_dir_all(proc_root.join("self")).unwrap();
    std::fs::write(
        proc_root.join("self/mountinfo"),
        "30 1 259:0 / /fixture-data rw,relatime - ext4 /dev/nvme0n1 rw\n",
    )
    .unwrap();
    std::fs::write(
        proc_root.join("swaps"),
        "Filename\tType\tSize\tUsed\tPriority\n",
    )
    .unwrap();
    // Accounts that exist only under the etc root: a user the policy names, and their group.
    let etc_root = dir.path().join("accounts");
    std::fs::create_dir_all(etc_root.join("etc")).unwrap();
    std::fs::write(
        etc_root.join("etc/passwd"),
        "fixture-user:x:4242:4242::/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(
        etc_root.join("etc/group"),
        "fixture-vms:x:4343:fixture-user\n",
    )
    .unwrap();
    let policy = r#"
[settings]
idle_timeout = 30

[[rule]]
name = "the fixture's group"
subjects = { groups = ["fixture-vms"] }
devices = [{ address = "03:00.0" }]
drivers = ["vfio-pci"]
"#;
    let h = spawn_in(
        dir,
        policy,
        &[],
        &[
            Path::new("--proc-root"),
            &proc_root,
            Path::new("--etc-root"),
            &etc_root,
        ],
    );
    // Root is an admin: ask on behalf of the fixture's user.
    let resp = ask(
        &mut connect(&h),
        &Request::Explain {
            device: "03:00.0".parse().unwrap(),
            driver: Some(Driver::VfioPci),
            uid: Some(4242),
        },
    );
    let Response::Explained(e) = resp else {
        panic!("{resp:?}")
    };
    // The account and its group came from the etc root (through the sandbox), the policy's
    // names were resolved there at load, and the mount from the proc root.
    assert_eq!(e.uid, 4242);
    assert!(e.verdicts[0].allowed, "{e:?}");
    assert_eq!(e.guards[0].guard, vfio_gate_protocol::Guard::HostInUse);
    assert!(e.guards[0].reason.contains("/fixture-data"), "{e:?}");
    let log = h.stderr();
    assert!(!log.contains("event=policy-warning"), "{log}");
}
