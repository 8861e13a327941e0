//! One request, one response, over the helper's Unix socket.
//!
//! The conversation is as small as it can be: connect, write one frame, read one frame, close.
//! The helper learns who we are from the kernel, so nothing here carries identity.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vfio_gate_protocol::{
    FrameError, MAX_RESPONSE_FRAME, Request, Response, decode_response, encode_request, read_frame,
    write_frame,
};

use crate::error::Error;

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

    /// Sends `request` and returns the helper's answer. A [`Response::Error`] comes back as
    /// [`Error::Helper`], so callers only match the success they expect.
    pub fn call(&self, request: &Request) -> Result<Response, Error> {
        let frame = encode_request(request).map_err(Error::Encode)?;
        let mut stream = UnixStream::connect(&self.socket).map_err(|source| Error::Connect {
            socket: self.socket.clone(),
            source,
        })?;
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
            .map_err(|source| self.send_error(source))?;
        write_frame(&mut stream, &frame).map_err(|source| self.send_error(source))?;
        let payload =
            read_frame(&mut stream, MAX_RESPONSE_FRAME).map_err(|source| match source {
                FrameError::Io(e) if is_timeout(&e) => self.timeout_error(),
                source => Error::Receive {
                    socket: self.socket.clone(),
                    source,
                },
            })?;
        match decode_response(&payload).map_err(Error::Decode)? {
            Response::Error(e) => Err(Error::Helper(e)),
            other => Ok(other),
        }
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
        Response::Error(_) => "an error",
    }
}
