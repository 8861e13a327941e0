//! The harness: a fake helper on a temp-dir socket, and a runner for the built binary that dumps
//! the command, its exit status, stdout and stderr whenever an assertion fails.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use vfio_gate_protocol::{
    MAX_REQUEST_FRAME, Request, Response, decode_request, encode_response, read_frame, write_frame,
};

/// What the fake helper does with one connection, after reading and decoding its request.
#[derive(Debug)]
pub enum Reply {
    /// Answer with this response.
    Answer(Response),
    /// Write these bytes as they are (broken frames, other protocol versions).
    Raw(Vec<u8>),
    /// Close the connection without a word.
    Hangup,
    /// Say nothing and keep the connection open until the client goes away.
    Silent,
    /// Answer once the test says so.
    AnswerWhen(Receiver<()>, Response),
    /// Answer at once, without reading the request, and close: what the real helper does at its
    /// connection limit. No request is recorded.
    RefuseAtOnce(Response),
    /// A conversation on one connection (`vfio-gate run`): answer each request in turn, then
    /// wait for the client to close (or hang up first). Recorded as [`Event`]s too.
    Session(Session),
}

/// One connection that carries several requests.
#[derive(Debug)]
pub struct Session {
    /// One answer per request, in order.
    pub answers: Vec<Response>,
    /// After the last answer: hang up at once, instead of waiting for the client to close.
    pub hang_up: bool,
    /// A file whose existence is noted with each event (the test's command creates it when it
    /// finishes, which tells what happened while it ran).
    pub marker: Option<PathBuf>,
}

impl Session {
    pub fn new(answers: Vec<Response>, marker: Option<&Path>) -> Self {
        Self {
            answers,
            hang_up: false,
            marker: marker.map(Path::to_path_buf),
        }
    }
}

/// What happened on a [`Session`]'s connection, and whether its marker existed at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Request {
        request: Request,
        marker: bool,
    },
    /// The client closed the connection.
    Closed {
        marker: bool,
    },
    /// The client neither wrote nor closed within the read timeout.
    TimedOut,
}

/// A helper that serves one connection per reply, in order, and records the requests.
#[derive(Debug)]
pub struct FakeHelper {
    dir: TempDir,
    socket: PathBuf,
    thread: Option<JoinHandle<Vec<Request>>>,
    events: Arc<Mutex<Vec<Event>>>,
}

fn serve_session(
    conn: &mut std::os::unix::net::UnixStream,
    session: Session,
    requests: &mut Vec<Request>,
    log: &Mutex<Vec<Event>>,
) {
    let marker = || session.marker.as_ref().is_some_and(|m| m.exists());
    let mut answers = session.answers.into_iter();
    loop {
        let next = answers.next();
        if next.is_none() && session.hang_up {
            return;
        }
        let event = match read_frame(conn, MAX_REQUEST_FRAME) {
            Ok(payload) => {
                let request = decode_request(&payload).expect("a valid request");
                requests.push(request.clone());
                Event::Request {
                    request,
                    marker: marker(),
                }
            }
            Err(vfio_gate_protocol::FrameError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Event::TimedOut
            }
            Err(_) => Event::Closed { marker: marker() },
        };
        let done = !matches!(event, Event::Request { .. });
        log.lock().unwrap().push(event);
        if done {
            return;
        }
        // A request beyond the answers given is recorded and left unanswered.
        if let Some(resp) = next {
            let _ = write_frame(conn, &encode_response(&resp).expect("encode"));
        }
    }
}

impl FakeHelper {
    pub fn start(replies: Vec<Reply>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("vfio-gate.sock");
        let listener = UnixListener::bind(&socket).expect("bind the fake helper's socket");
        let events = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&events);
        let thread = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for reply in replies {
                let (mut conn, _) = listener.accept().expect("accept");
                conn.set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                if let Reply::RefuseAtOnce(resp) = &reply {
                    let _ = write_frame(&mut conn, &encode_response(resp).unwrap());
                    continue;
                }
                if let Reply::Session(session) = reply {
                    serve_session(&mut conn, session, &mut requests, &log);
                    continue;
                }
                let payload = read_frame(&mut conn, MAX_REQUEST_FRAME).expect("request frame");
                requests.push(decode_request(&payload).expect("a valid request"));
                match reply {
                    Reply::Answer(resp) => {
                        let frame = encode_response(&resp).expect("encode");
                        // The client may legitimately be gone (broken pipe tests).
                        let _ = write_frame(&mut conn, &frame);
                    }
                    Reply::Raw(bytes) => {
                        let _ = conn.write_all(&bytes);
                    }
                    Reply::Hangup => {}
                    Reply::Silent => {
                        // Returns when the client closes its end (or after the read timeout).
                        let _ = conn.read(&mut [0u8; 1]);
                    }
                    Reply::AnswerWhen(go, resp) => {
                        go.recv().expect("the test's go-ahead");
                        let _ = write_frame(&mut conn, &encode_response(&resp).unwrap());
                    }
                    Reply::RefuseAtOnce(_) | Reply::Session(_) => unreachable!(),
                }
            }
            requests
        });
        Self {
            dir,
            socket,
            thread: Some(thread),
            events,
        }
    }

    /// One connection, one response.
    pub fn answering(resp: Response) -> Self {
        Self::start(vec![Reply::Answer(resp)])
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What happened on the sessions so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for an event that `pred` accepts.
    pub fn wait_for_event(&self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.events().iter().any(&pred) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for every reply to have been served and returns the requests received.
    pub fn requests(self) -> Vec<Request> {
        self.finish().0
    }

    /// Waits for every reply to have been served and returns the requests received and what
    /// happened on the sessions.
    pub fn finish(mut self) -> (Vec<Request>, Vec<Event>) {
        let requests = self
            .thread
            .take()
            .unwrap()
            .join()
            .expect("the fake helper panicked (see its message above)");
        (requests, self.events())
    }
}

/// The binary under test, with a clean environment for the variables it reads.
pub fn vfio_gate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vfio-gate"));
    cmd.env_remove("VFIO_GATE_SOCKET");
    cmd.stdin(Stdio::null());
    cmd
}

/// `vfio-gate --socket <fake> <args>`.
pub fn against(fake: &FakeHelper, args: &[&str]) -> Command {
    let mut cmd = vfio_gate();
    cmd.arg("--socket").arg(fake.socket()).args(args);
    cmd
}

/// The PCI ID fixture shared with the unit tests.
pub fn pci_ids_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pci.ids")
}

/// A finished run of the binary.
#[derive(Debug)]
pub struct Run {
    pub command: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(mut cmd: Command) -> Run {
    let command = format!("{cmd:?}");
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run vfio-gate");
    Run {
        command,
        code: status.code(),
        stdout: String::from_utf8(stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(stderr).expect("stderr is UTF-8"),
    }
}

impl Run {
    #[track_caller]
    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n\ncommand: {}\nexit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n",
            self.command, self.code, self.stdout, self.stderr
        )
    }

    #[track_caller]
    pub fn code(&self, expected: i32) -> &Self {
        if self.code != Some(expected) {
            self.fail(&format!("expected exit status {expected}"));
        }
        self
    }

    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Self {
        if !self.stdout.contains(needle) {
            self.fail(&format!("stdout lacks {needle:?}"));
        }
        self
    }

    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Self {
        if !self.stderr.contains(needle) {
            self.fail(&format!("stderr lacks {needle:?}"));
        }
        self
    }

    #[track_caller]
    pub fn stdout_empty(&self) -> &Self {
        if !self.stdout.is_empty() {
            self.fail("stdout should be empty");
        }
        self
    }

    #[track_caller]
    pub fn stderr_empty(&self) -> &Self {
        if !self.stderr.is_empty() {
            self.fail("stderr should be empty");
        }
        self
    }

    /// stdout, parsed as one JSON document.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| self.fail(&format!("stdout is not JSON: {e}")))
    }

    /// Asserts the `--json` error document's schema, its error object's kind and exit code, and
    /// that the fields every error has are there; returns the error object.
    #[track_caller]
    pub fn json_error(&self, kind: &str) -> serde_json::Value {
        let v = self.json();
        if v["schema"] != 1 || v.as_object().map(|o| o.len()) != Some(2) {
            self.fail("expected {\"schema\": 1, \"error\": {...}}");
        }
        let e = &v["error"];
        for field in ["kind", "exit_code", "message", "next_step"] {
            if e.get(field).is_none() {
                self.fail(&format!("the JSON error has no {field:?}"));
            }
        }
        if e["kind"] != kind || Some(e["exit_code"].as_i64().unwrap_or(-1) as i32) != self.code {
            self.fail(&format!(
                "expected a JSON error of kind {kind:?} whose exit_code is the exit status"
            ));
        }
        if !e["message"].is_string() {
            self.fail("the JSON error has no message");
        }
        e.clone()
    }
}

/// A host for the offline commands, in a temp dir: a sysfs tree (`sys/`), the account files
/// (`etc/passwd`, `etc/group`) and a policy (`etc/vfio-gate/policy.toml`, drop-ins in
/// `policy.d`), with the modes the policy loader insists on. Files are owned by whoever runs the
/// tests: the loader wants root, so the tests that load the policy need root (see [`is_root`]).
///
/// The devices are the test guest's: group 2 the boot display, 8 an 82574L NIC, 10 an NVMe
/// controller, 11 a PCIe-to-PCI bridge with an e1000 and the QEMU edu device behind it.
#[derive(Debug)]
pub struct HostFixture {
    pub dir: TempDir,
}

/// One device of the fixture: address, vendor, device, class, driver, IOMMU group, header type.
pub type FixtureDevice = (&'static str, u16, u16, u32, Option<&'static str>, u32, u8);

pub const FIXTURE_DEVICES: [FixtureDevice; 6] = [
    (
        "0000:00:02.0",
        0x1234,
        0x1111,
        0x030000,
        Some("bochs-drm"),
        2,
        0,
    ),
    (
        "0000:01:00.0",
        0x8086,
        0x10d3,
        0x020000,
        Some("e1000e"),
        8,
        0,
    ),
    (
        "0000:03:00.0",
        0x1b36,
        0x0010,
        0x010802,
        Some("nvme"),
        10,
        0,
    ),
    (
        "0000:04:00.0",
        0x1b36,
        0x000e,
        0x060400,
        Some("pcieport"),
        11,
        1,
    ),
    (
        "0000:05:01.0",
        0x8086,
        0x100e,
        0x020000,
        Some("e1000"),
        11,
        0,
    ),
    ("0000:05:02.0", 0x1234, 0x11e8, 0x00ff00, None, 11, 0),
];

/// The rest of the test guest (docs/guest.md), for the tests that need it
/// ([`HostFixture::add_guest_devices`]): group 5 the two functions of slot 6 (an edu device,
/// the other 1234:11e8 of the guest, and a pci-testdev), group 6 the HD audio controller.
pub const MORE_GUEST_DEVICES: [FixtureDevice; 3] = [
    ("0000:00:06.0", 0x1234, 0x11e8, 0x00ff00, None, 5, 0),
    ("0000:00:06.1", 0x1b36, 0x0005, 0x00ff00, None, 5, 0),
    (
        "0000:00:1b.0",
        0x8086,
        0x293e,
        0x040300,
        Some("snd_hda_intel"),
        6,
        0,
    ),
];

/// The fixture kernel's `modules.alias`: the modules of the fixture's host drivers (by ids, or
/// by class for nvme), lines of other buses, and vfio-pci's own `vfio_pci:` alias (which no
/// `pci:` modalias matches).
pub const FIXTURE_MODULES_ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias pci:v00001234d00001111sv*sd*bc03sc00i00* bochs
alias pci:v00008086d0000293Esv*sd*bc*sc*i* snd_hda_intel
alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci
alias usb:v*p*d*dc*dsc*dp*ic09isc*ip*in* usbcore
";

/// The fixture kernel's `modules.builtin.alias`: the PCIe port driver is built in.
pub const FIXTURE_BUILTIN_ALIAS: &str = "\
alias pci:v*d*sv*sd*bc06sc04i00* pcieport
";

/// The module behind a fixture driver, as `driver/module` links it (`None`: no link, as for
/// pcieport).
fn driver_module(driver: &str) -> Option<&'static str> {
    Some(match driver {
        "bochs-drm" => "bochs",
        "e1000e" => "e1000e",
        "e1000" => "e1000",
        "nvme" => "nvme",
        "snd_hda_intel" => "snd_hda_intel",
        "vfio-pci" => "vfio_pci",
        "pci-stub" => "pci_stub",
        _ => return None,
    })
}

pub const FIXTURE_PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:1001:Bob:/home/bob:/bin/sh
carol:x:1002:1002:Carol:/home/carol:/bin/sh
secops:x:1003:1003::/home/secops:/bin/sh
";

pub const FIXTURE_GROUP: &str = "\
root:x:0:
alice:x:1000:
bob:x:1001:
carol:x:1002:
secops:x:1003:
vm-users:x:1100:alice,bob
";

impl HostFixture {
    /// The host, with `policy` as the main file and `drop_ins` (name, text) in `policy.d`
    /// (created only when there are drop-ins).
    pub fn new(policy: &str, drop_ins: &[(&str, &str)]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let sys = root.join("sys");
        std::fs::create_dir_all(sys.join("bus/pci/devices")).unwrap();
        for (addr, vendor, device, class, driver, group, header) in FIXTURE_DEVICES {
            fixture_device(
                &sys,
                addr,
                [vendor, device, vendor, 0],
                class,
                driver,
                group,
                header,
            );
        }
        // The boot display.
        std::fs::write(sys.join("devices/pci0000:00/0000:00:02.0/boot_vga"), "1\n").unwrap();
        let modules = root.join("lib/modules/fixture");
        std::fs::create_dir_all(&modules).unwrap();
        std::fs::write(modules.join("modules.alias"), FIXTURE_MODULES_ALIAS).unwrap();
        std::fs::write(modules.join("modules.builtin.alias"), FIXTURE_BUILTIN_ALIAS).unwrap();
        let etc = root.join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("passwd"), FIXTURE_PASSWD).unwrap();
        std::fs::write(etc.join("group"), FIXTURE_GROUP).unwrap();
        let policy_dir = etc.join("vfio-gate");
        std::fs::create_dir_all(&policy_dir).unwrap();
        std::fs::set_permissions(&policy_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let fixture = Self { dir };
        fixture.write(&fixture.policy(), policy);
        if !drop_ins.is_empty() {
            let d = fixture.drop_in_dir();
            std::fs::create_dir_all(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
            for (name, text) in drop_ins {
                fixture.write(&d.join(name), text);
            }
        }
        fixture
    }

    /// Writes a policy file with mode 0644.
    pub fn write(&self, path: &Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn sysfs(&self) -> PathBuf {
        self.root().join("sys")
    }

    pub fn policy(&self) -> PathBuf {
        self.root().join("etc/vfio-gate/policy.toml")
    }

    pub fn drop_in_dir(&self) -> PathBuf {
        self.root().join("etc/vfio-gate/policy.d")
    }

    /// The fixture kernel's module directory (`/lib/modules/RELEASE`): `modules.alias` and
    /// `modules.builtin.alias`.
    pub fn modules_dir(&self) -> PathBuf {
        self.root().join("lib/modules/fixture")
    }

    /// Adds one PCI function, linked as the kernel links it (and its driver's module).
    pub fn add_device(&self, dev: FixtureDevice) {
        let (addr, vendor, device, class, driver, group, header) = dev;
        fixture_device(
            &self.sysfs(),
            addr,
            [vendor, device, vendor, 0],
            class,
            driver,
            group,
            header,
        );
    }

    /// Adds [`MORE_GUEST_DEVICES`]: the second edu device, the pci-testdev, the HD audio.
    pub fn add_guest_devices(&self) {
        for dev in MORE_GUEST_DEVICES {
            self.add_device(dev);
        }
    }

    /// Binds `addr` to `driver` (or to none), as the kernel shows it: the `driver` link.
    pub fn set_driver(&self, addr: &str, driver: Option<&str>) {
        let link = self
            .sysfs()
            .join("devices/pci0000:00")
            .join(addr)
            .join("driver");
        let _ = std::fs::remove_file(&link);
        if let Some(d) = driver {
            std::os::unix::fs::symlink(driver_dir(&self.sysfs(), d), link).unwrap();
        }
    }

    /// `vfio-gate <args> --sysfs-root <fixture> --etc-root <fixture>`, with the fixture PCI
    /// ID database and a socket nobody listens on (the offline commands must not need it).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = vfio_gate();
        cmd.args(args)
            .arg("--sysfs-root")
            .arg(self.sysfs())
            .arg("--etc-root")
            .arg(self.root())
            .arg("--pci-ids")
            .arg(pci_ids_fixture())
            .args(["--socket", "/nonexistent/vfio-gate.sock"]);
        cmd
    }
}

/// One PCI function in a sysfs tree, linked as the kernel links it.
fn fixture_device(
    sys: &Path,
    addr: &str,
    ids: [u16; 4],
    class: u32,
    driver: Option<&str>,
    group: u32,
    header: u8,
) {
    use std::os::unix::fs::symlink;
    let real = sys.join("devices/pci0000:00").join(addr);
    std::fs::create_dir_all(&real).unwrap();
    for (attr, v) in ["vendor", "device", "subsystem_vendor", "subsystem_device"]
        .iter()
        .zip(ids)
    {
        std::fs::write(real.join(attr), format!("0x{v:04x}\n")).unwrap();
    }
    std::fs::write(real.join("class"), format!("0x{class:06x}\n")).unwrap();
    // As the kernel prints it: upper-case hex, class split into base, sub and interface.
    std::fs::write(
        real.join("modalias"),
        format!(
            "pci:v{:08X}d{:08X}sv{:08X}sd{:08X}bc{:02X}sc{:02X}i{:02X}\n",
            ids[0],
            ids[1],
            ids[2],
            ids[3],
            class >> 16,
            (class >> 8) & 0xff,
            class & 0xff
        ),
    )
    .unwrap();
    std::fs::write(real.join("driver_override"), "(null)\n").unwrap();
    let mut config = vec![0u8; 64];
    config[0x0e] = header;
    std::fs::write(real.join("config"), config).unwrap();
    symlink(&real, sys.join("bus/pci/devices").join(addr)).unwrap();
    let g = sys.join("kernel/iommu_groups").join(group.to_string());
    std::fs::create_dir_all(g.join("devices")).unwrap();
    symlink(&g, real.join("iommu_group")).unwrap();
    symlink(&real, g.join("devices").join(addr)).unwrap();
    if let Some(d) = driver {
        symlink(driver_dir(sys, d), real.join("driver")).unwrap();
    }
}

/// `SYS/bus/pci/drivers/DRIVER`, created with its `module` link (to `SYS/module/MODULE`) the
/// first time.
fn driver_dir(sys: &Path, driver: &str) -> PathBuf {
    let dd = sys.join("bus/pci/drivers").join(driver);
    if !dd.exists() {
        std::fs::create_dir_all(&dd).unwrap();
        if let Some(m) = driver_module(driver) {
            let md = sys.join("module").join(m);
            std::fs::create_dir_all(&md).unwrap();
            std::os::unix::fs::symlink(&md, dd.join("module")).unwrap();
        }
    }
    dd
}

/// Whether the tests run as root. The policy loader accepts only root-owned files, so the tests
/// that load a fixture policy need root (as in CI); as anyone else they say so and skip.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::metadata(dir.path()).expect("stat").uid() == 0
}

/// [`is_root`], printing why a test is skipped when not.
pub fn needs_root(test: &str) -> bool {
    let root = is_root();
    if !root {
        eprintln!(
            "SKIPPED {test}: loading a policy needs root-owned files, and these tests do not run \
             as root"
        );
    }
    root
}

/// The line of the `[[rule]]`/`[[deny]]`/`[[reserve]]` header of the rule called `name` in
/// `text` (what decisions cite).
pub fn header_line(text: &str, name: &str) -> u32 {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("name") && l.contains(&format!("\"{name}\"")))
        .unwrap_or_else(|| panic!("no rule {name:?}"));
    let header = lines[..at]
        .iter()
        .rposition(|l| ["[[rule]]", "[[deny]]", "[[reserve]]"].contains(&l.trim()))
        .unwrap_or_else(|| panic!("no header above {name:?}"));
    u32::try_from(header + 1).unwrap()
}
