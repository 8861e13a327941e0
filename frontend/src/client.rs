//! Requests and responses over the helper's Unix socket.
//!
//! The conversation is as small as it can be: connect, write one frame, read one frame, close.
//! `vfio-gate run` is the one exception: it keeps its [`Connection`] open while its command runs
//! (the helper ties the lease to it) and sends the release on the same connection afterwards.
//! The helper learns who we are from the kernel, so nothing here carries identity.
//!
//! A helper at its connection limit answers `Busy` with
//! [`BusyReason::ConnectionLimit`](vfio_gate_protocol::BusyReason::ConnectionLimit); such an
//! answer is retried a few times with a short backoff before it is reported. Other `Busy` answers
//! (a group in use, a group already held) are reported at once: waiting would not change them.
//! The decision reads the typed reason only, never the helper's wording.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vfio_gate_protocol::{
    FrameError, MAX_RESPONSE_FRAME, Request, Response, WireError, decode_response, encode_request,
    read_frame, write_frame,
};

use crate::error::Error;

/// How long to wait before each retry of a request the helper turned away at its connection
/// limit: nine tries in all, over about fifteen seconds — longer than the helper gives a silent
/// client to send its first frame, so a slot held by one is free again before the CLI gives up.
/// Each pause is jittered by up to a quarter, so that clients turned away together do not come
/// back together.
pub const RETRY_DELAYS: [Duration; 8] = [
    Duration::from_millis(150),
    Duration::from_millis(300),
    Duration::from_millis(500),
    Duration::from_millis(900),
    Duration::from_millis(1500),
    Duration::from_millis(2500),
    Duration::from_millis(4000),
    Duration::from_millis(5000),
];

/// Talks to one helper socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// `timeout` bounds each read and write on the socket; it must not be zero.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `request` on a connection of its own and returns the helper's answer. A
    /// [`Response::Error`] comes back as [`Error::Helper`], so callers only match the success
    /// they expect. An answer saying the helper is at its connection limit is retried (see
    /// [`RETRY_DELAYS`]).
    pub fn call(&self, request: &Request) -> Result<Response, Error> {
        self.open(request).map(|(_, response)| response)
    }

    /// Like [`Client::call`], and returns the connection too, for a conversation that goes on
    /// (`vfio-gate run`).
    pub fn open(&self, request: &Request) -> Result<(Connection, Response), Error> {
        let mut delays = RETRY_DELAYS.iter();
        loop {
            let mut conn = self.connect()?;
            match conn.call(request) {
                Err(Error::Helper(WireError::Busy { why, detail })) if why.passes_by_itself() => {
                    match delays.next() {
                        Some(delay) => std::thread::sleep(jitter(*delay)),
                        None => return Err(Error::Helper(WireError::Busy { why, detail })),
                    }
                }
                Err(e) => return Err(e),
                Ok(response) => return Ok((conn, response)),
            }
        }
    }

    /// Connects, with the read and write timeouts set.
    pub fn connect(&self) -> Result<Connection, Error> {
        let stream = UnixStream::connect(&self.socket).map_err(|source| Error::Connect {
            socket: self.socket.clone(),
            source,
        })?;
        let conn = Connection {
            stream,
            socket: self.socket.clone(),
            timeout: self.timeout,
        };
        conn.stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| conn.stream.set_write_timeout(Some(self.timeout)))
            .map_err(|source| conn.send_error(source))?;
        Ok(conn)
    }
}

/// `delay`, give or take a quarter, varying from process to process and call to call.
fn jitter(delay: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let noise = u64::from(nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % 501;
    // 750‰ to 1250‰ of the delay.
    delay * u32::try_from(750 + noise).unwrap_or(1000) / 1000
}

/// One open connection to the helper.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    socket: PathBuf,
    timeout: Duration,
}

impl Connection {
    /// Sends `request` and reads the answer, as [`Client::call`] does, without retrying.
    pub fn call(&mut self, request: &Request) -> Result<Response, Error> {
        let frame = encode_request(request).map_err(Error::Encode)?;
        if let Err(source) = write_frame(&mut self.stream, &frame) {
            // A helper at its limit answers without reading and closes: the answer may be
            // waiting although the request could not be written.
            let gone = matches!(
                source.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            );
            if gone {
                if let Ok(response) = self.receive() {
                    return response_or_error(response);
                }
            }
            return Err(self.send_error(source));
        }
        response_or_error(self.receive()?)
    }

    /// The socket, to watch it while a command runs.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    fn receive(&mut self) -> Result<Response, Error> {
        let payload =
            read_frame(&mut self.stream, MAX_RESPONSE_FRAME).map_err(|source| match source {
                FrameError::Io(e) if is_timeout(&e) => self.timeout_error(),
                source => Error::Receive {
                    socket: self.socket.clone(),
                    source,
                },
            })?;
        decode_response(&payload).map_err(Error::Decode)
    }

    fn send_error(&self, source: io::Error) -> Error {
        if is_timeout(&source) {
            self.timeout_error()
        } else {
            Error::Send {
                socket: self.socket.clone(),
                source,
            }
        }
    }

    fn timeout_error(&self) -> Error {
        Error::Timeout {
            socket: self.socket.clone(),
            timeout: self.timeout,
        }
    }
}

fn response_or_error(response: Response) -> Result<Response, Error> {
    match response {
        Response::Error(e) => Err(Error::Helper(e)),
        other => Ok(other),
    }
}

/// A socket timeout shows up as `WouldBlock` (EAGAIN) on Linux.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The variant's name, for "answered a list request with Bound" messages.
pub fn response_name(r: &Response) -> &'static str {
    match r {
        Response::Devices(_) => "a device list",
        Response::Bound(_) => "a bind report",
        Response::Released(_) => "a release report",
        Response::Explained(_) => "an explanation",
        Response::Error(_) => "an error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_connection_limit_is_worth_a_retry() {
        use vfio_gate_protocol::BusyReason;
        let dev: vfio_gate_protocol::PciAddress = "05:02.0".parse().unwrap();
        assert!(BusyReason::ConnectionLimit { limit: 64 }.passes_by_itself());
        for other in [
            BusyReason::GroupInUse { group: 11 },
            BusyReason::YouHoldIt {
                group: 11,
                devices: vec![dev],
            },
            BusyReason::BlockedInKernel { device: dev },
            BusyReason::HeldOutsideVfioGate { device: dev },
        ] {
            assert!(!other.passes_by_itself(), "{other:?}");
        }
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let d = jitter(Duration::from_millis(400));
            assert!(
                d >= Duration::from_millis(300) && d <= Duration::from_millis(500),
                "{d:?}"
            );
        }
        // Longer than the helper gives a silent client (10 s), short enough not to seem hung.
        let total = RETRY_DELAYS.iter().sum::<Duration>();
        assert!(
            total > Duration::from_secs(10) && total < Duration::from_secs(20),
            "{total:?}"
        );
    }
}
