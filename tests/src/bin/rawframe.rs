//! `rawframe [--socket PATH] [--timeout SECS] WHAT`: talk to the helper byte by byte.
//!
//! A client for hostile-input tests. WHAT is one of:
//! - `--hex HEX` — send exactly these bytes (length prefix included; spaces, `_`, `:` ignored);
//! - `--len-only N` — send only a length prefix claiming an N-byte frame, and no body;
//! - `--after-version HEX` — a frame whose payload is the current protocol version, then HEX
//!   (garbage where the request should be, whatever the version number is);
//! - `--request list` | `--request bind ADDR DRIVER` | `--request release ADDR` — a valid frame.
//!
//! Then it reads one response frame and prints it as `Debug` of `Response` (e.g.
//! `Error(BadRequest { reason: "…" })`), or `closed` (the helper closed the connection without
//! answering), `timeout` (no answer in time), `truncated`, or `undecodable: …`. Exit status 0
//! whenever it got that far; 1 if it could not connect or send; 2 on bad usage.

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use vfio_gate_protocol::{
    Driver, FrameError, MAX_RESPONSE_FRAME, PROTOCOL_VERSION, PciAddress, Request, decode_response,
    encode_request, read_frame,
};

const USAGE: &str = "usage: rawframe [--socket PATH] [--timeout SECS] \
    (--hex HEX | --len-only N | --after-version HEX | --request list | --request bind ADDR DRIVER | --request release ADDR)";

fn main() -> ExitCode {
    match parse(std::env::args().skip(1).collect()) {
        Ok((socket, timeout, bytes)) => talk(&socket, timeout, &bytes),
        Err(e) => {
            eprintln!("rawframe: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn parse(args: Vec<String>) -> Result<(String, Duration, Vec<u8>), String> {
    let mut socket = "/run/vfio-gate.sock".to_string();
    let mut timeout = Duration::from_secs(5);
    let mut bytes = None;
    let mut it = args.into_iter();
    let value = |it: &mut std::vec::IntoIter<String>, what: &str| {
        it.next().ok_or_else(|| format!("{what} needs a value"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--socket" => socket = value(&mut it, "--socket")?,
            "--timeout" => {
                let s = value(&mut it, "--timeout")?;
                let secs: f64 = s.parse().map_err(|_| format!("bad --timeout {s:?}"))?;
                timeout = Duration::from_secs_f64(secs);
            }
            "--hex" => {
                bytes = Some(vfio_gate_tests::hex::decode(&value(&mut it, "--hex")?)?);
            }
            "--after-version" => {
                let body = vfio_gate_tests::hex::decode(&value(&mut it, "--after-version")?)?;
                // bincode's varint encodes a u16 below 251 as that one byte.
                let version = u8::try_from(PROTOCOL_VERSION)
                    .ok()
                    .filter(|v| *v < 251)
                    .ok_or("the protocol version no longer fits in one byte")?;
                let mut payload = vec![version];
                payload.extend(body);
                let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
                frame.extend(payload);
                bytes = Some(frame);
            }
            "--len-only" => {
                let s = value(&mut it, "--len-only")?;
                let n: u32 = s.parse().map_err(|_| format!("bad length {s:?}"))?;
                bytes = Some(n.to_le_bytes().to_vec());
            }
            "--request" => {
                let req = match value(&mut it, "--request")?.as_str() {
                    "list" => Request::List,
                    "bind" => Request::Bind {
                        devices: vec![address(&value(&mut it, "bind ADDR")?)?],
                        driver: value(&mut it, "bind DRIVER")?
                            .parse::<Driver>()
                            .map_err(|e| e.to_string())?,
                        group: false,
                        dry_run: false,
                    },
                    "release" => Request::Release {
                        device: address(&value(&mut it, "release ADDR")?)?,
                    },
                    other => return Err(format!("unknown request {other:?}")),
                };
                bytes = Some(encode_request(&req).map_err(|e| e.to_string())?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let bytes = bytes.ok_or("nothing to send")?;
    Ok((socket, timeout, bytes))
}

fn address(s: &str) -> Result<PciAddress, String> {
    s.parse().map_err(|e| format!("{s:?}: {e}"))
}

fn talk(socket: &str, timeout: Duration, bytes: &[u8]) -> ExitCode {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rawframe: cannot connect to {socket}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .and_then(|_| stream.write_all(bytes))
    {
        // The helper may answer and close before reading everything; that answer still counts.
        if e.kind() != ErrorKind::BrokenPipe && e.kind() != ErrorKind::ConnectionReset {
            eprintln!("rawframe: sending to {socket}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let answer = match read_frame(&mut stream, MAX_RESPONSE_FRAME) {
        Ok(payload) => match decode_response(&payload) {
            Ok(resp) => format!("{resp:?}"),
            Err(e) => format!("undecodable: {e}"),
        },
        Err(FrameError::Closed) => "closed".into(),
        Err(FrameError::Truncated) => "truncated".into(),
        Err(FrameError::Io(e))
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
        {
            "timeout".into()
        }
        Err(FrameError::Io(e)) if e.kind() == ErrorKind::ConnectionReset => "closed".into(),
        Err(e) => format!("bad frame: {e}"),
    };
    println!("{answer}");
    ExitCode::SUCCESS
}
