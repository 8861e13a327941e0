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

    /// Asserts the `--json` error object's kind and exit code, and returns it.
    #[track_caller]
    pub fn json_error(&self, kind: &str) -> serde_json::Value {
        let v = self.json();
        let e = &v["error"];
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
