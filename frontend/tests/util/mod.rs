//! The harness: a fake helper on a temp-dir socket, and a runner for the built binary that dumps
//! the command, its exit status, stdout and stderr whenever an assertion fails.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::Duration;

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
}

/// A helper that serves one connection per reply, in order, and records the requests.
#[derive(Debug)]
pub struct FakeHelper {
    dir: TempDir,
    socket: PathBuf,
    thread: Option<JoinHandle<Vec<Request>>>,
}

impl FakeHelper {
    pub fn start(replies: Vec<Reply>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("vfio-gate.sock");
        let listener = UnixListener::bind(&socket).expect("bind the fake helper's socket");
        let thread = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for reply in replies {
                let (mut conn, _) = listener.accept().expect("accept");
                conn.set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
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
                }
            }
            requests
        });
        Self {
            dir,
            socket,
            thread: Some(thread),
        }
    }

    /// One connection, one response.
    pub fn answering(resp: Response) -> Self {
        Self::start(vec![Reply::Answer(resp)])
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Waits for every reply to have been served and returns the requests received.
    pub fn requests(mut self) -> Vec<Request> {
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("the fake helper panicked (see its message above)")
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
