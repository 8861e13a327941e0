//! Accepting clients: bounded concurrency, bounded reads, idle exit.
//!
//! One thread per connection, up to a bound; a client over the bound gets a typed `Busy` answer
//! at once instead of a hang. Each frame must arrive within a deadline (so a client trickling
//! bytes cannot hold a thread forever), and a connection idle between requests is closed after
//! the same timeout. When no connection is open for the idle timeout, [`serve`] returns and the
//! helper exits: the socket stays with the activator, which starts a new helper on the next
//! connection.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vfio_gate_protocol::{
    BusyReason, FrameError, MAX_REQUEST_FRAME, Response, WireError, decode_request,
    encode_response, read_frame, write_frame,
};

use crate::audit;
use crate::peer::Peer;
use crate::service::{Outcome, Service};

/// Limits of the accept loop.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Exit after this long with no connection open.
    pub idle_timeout: Duration,
    /// Connections served at once; one more gets `Busy`.
    pub max_connections: usize,
    /// How long a client may take to send one frame, or to read one answer.
    pub io_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            max_connections: 256,
            io_timeout: Duration::from_secs(10),
        }
    }
}

/// The accept loop failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("waiting for connections: {0}")]
    Poll(#[source] nix::Error),
}

struct Activity {
    open: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
    fn idle_for(&self) -> Duration {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

/// Decrements the open-connection count however the connection thread ends.
struct OpenGuard(Arc<Activity>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `listener` until the helper has been idle for `limits.idle_timeout`.
pub fn serve(
    listener: UnixListener,
    service: Arc<Service>,
    limits: Limits,
) -> Result<(), ServeError> {
    let activity = Arc::new(Activity {
        open: AtomicUsize::new(0),
        last: Mutex::new(Instant::now()),
    });
    loop {
        let idle = activity.idle_for();
        // Tied leases whose client is gone are released as soon as their VM lets go; the
        // helper stays up until then.
        let orphans = service.retry_orphans();
        if activity.open.load(Ordering::SeqCst) == 0 && orphans == 0 && idle >= limits.idle_timeout
        {
            audit::Line::new("idle-exit")
                .field("idle_s", limits.idle_timeout.as_secs())
                .emit();
            return Ok(());
        }
        // Wake at least once a second to re-check idleness.
        let wait = limits
            .idle_timeout
            .saturating_sub(idle)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(ServeError::Poll(e)),
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            // The client may have gone between poll and accept; transient errors (EMFILE under
            // load) must not end the service.
            Err(e) => {
                audit::Line::new("accept-error").field("error", e).emit();
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        activity.touch();
        if activity.open.load(Ordering::SeqCst) >= limits.max_connections {
            refuse_busy(stream, &limits);
            continue;
        }
        activity.open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenGuard(activity.clone());
        let service = service.clone();
        let limits_c = limits.clone();
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _guard = guard;
                connection(stream, &service, &limits_c);
            });
        if let Err(e) = spawned {
            // The guard moved into the closure and was dropped with it.
            audit::Line::new("spawn-error").field("error", e).emit();
        }
    }
}

/// The helper cannot serve (its policy is refused…): answer every client that connects within
/// `window` with the reason instead of leaving them to time out, reading nothing from them.
pub fn refuse_all(listener: &UnixListener, reason: &str, window: Duration) {
    let Ok(frame) = encode_response(&Response::Error(WireError::Unavailable {
        reason: reason.to_owned(),
    })) else {
        return;
    };
    let until = Instant::now() + window;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) => return,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        if let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = write_frame(&mut stream, &frame);
            audit::Line::new("refused-to-serve")
                .field("reason", reason)
                .emit();
        }
    }
}

fn refuse_busy(mut stream: UnixStream, limits: &Limits) {
    let _ = stream.set_write_timeout(Some(limits.io_timeout.min(Duration::from_secs(1))));
    let resp = Response::Error(WireError::Busy {
        why: BusyReason::ConnectionLimit {
            limit: u32::try_from(limits.max_connections).unwrap_or(u32::MAX),
        },
        detail: format!(
            "the helper is serving {} connections, its limit; retry in a moment",
            limits.max_connections
        ),
    });
    if let Ok(frame) = encode_response(&resp) {
        let _ = write_frame(&mut stream, &frame);
    }
    audit::Line::new("connection-refused")
        .field("reason", "busy")
        .emit();
}

/// A reader that fails with `TimedOut` once `deadline` has passed, however the bytes trickle in.
struct Deadline<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&*self.stream).read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => io::ErrorKind::TimedOut.into(),
            _ => e,
        })
    }
}

fn connection(mut stream: UnixStream, service: &Service, limits: &Limits) {
    let peer = match Peer::of(&stream) {
        Ok(p) => p,
        Err(e) => {
            audit::Line::new("connection-error")
                .field("error", e)
                .emit();
            return;
        }
    };
    let mut tied = Vec::new();
    conversation(&mut stream, &peer, service, limits, &mut tied);
    // However the conversation ended — the client closed, crashed, was killed, or sent
    // garbage — leases tied to it end with it.
    for group in tied {
        service.release_tied(group, &peer);
    }
}

/// Serves requests on one connection until it ends. `tied` collects the groups that the service's
/// outcomes tied to the connection (binds with `hold`).
fn conversation(
    stream: &mut UnixStream,
    peer: &Peer,
    service: &Service,
    limits: &Limits,
    tied: &mut Vec<u32>,
) {
    let _ = stream.set_write_timeout(Some(limits.io_timeout));
    loop {
        if !tied.is_empty() && !wait_readable(stream) {
            return;
        }
        let started = Instant::now();
        let mut reader = Deadline {
            stream,
            deadline: started + limits.io_timeout,
        };
        let payload = match read_frame(&mut reader, MAX_REQUEST_FRAME) {
            Ok(p) => p,
            Err(FrameError::Closed) => return,
            Err(e) => {
                // A bad length leaves no frame boundary to resynchronise on: answer, then close.
                let reply = !matches!(e, FrameError::Io(_) | FrameError::Truncated);
                let err = WireError::BadRequest {
                    reason: e.to_string(),
                };
                audit::request(
                    peer,
                    None,
                    &audit::Record::default(),
                    &Err(err.clone()),
                    started,
                );
                if reply {
                    send(stream, &Response::Error(err));
                }
                return;
            }
        };
        let started = Instant::now();
        let mut record = audit::Record::default();
        let (outcome, request) = match decode_request(&payload) {
            Ok(req) => (service.handle(peer, &req, &mut record), Some(req)),
            Err(e) => (Outcome::reply(Response::Error(e.into())), None),
        };
        tied.extend(outcome.tied);
        let result = match &outcome.response {
            Response::Error(e) => Err(e.clone()),
            _ => Ok(()),
        };
        audit::request(peer, request.as_ref(), &record, &result, started);
        if !send(stream, &outcome.response) {
            return;
        }
    }
}

/// Waits, without a time limit, until the client sends something or goes away. A connection
/// that holds a lease may stay silent for as long as its VM runs.
fn wait_readable(stream: &UnixStream) -> bool {
    loop {
        let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

fn send(stream: &mut UnixStream, response: &Response) -> bool {
    let frame = match encode_response(response) {
        Ok(f) => f,
        Err(e) => match encode_response(&Response::Error(WireError::Internal {
            reason: e.to_string(),
        })) {
            Ok(f) => f,
            Err(_) => return false,
        },
    };
    write_frame(stream, &frame).is_ok()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;

    use vfio_gate_host::PciView;
    use vfio_gate_policy::{EtcFiles, Policy};
    use vfio_gate_protocol::{
        Driver, MAX_RESPONSE_FRAME, Request, decode_response, encode_request, read_frame,
    };

    use super::*;
    use crate::kernel::sim::SimKernel;
    use crate::roots::Roots;
    use crate::service::Tuning;
    use crate::state::StateDir;

    /// A service on the simulated kernel whose policy lets this process's user have 01:00.0.
    fn service(tmp: &Path, kernel: &Arc<SimKernel>) -> Service {
        let uid = nix::unistd::getuid().as_raw();
        let text = format!(
            "[[rule]]\nname = \"me\"\nsubjects = {{ uids = [{uid}] }}\n\
             devices = [{{ address = \"01:00.0\" }}]\ndrivers = [\"vfio-pci\"]\n"
        );
        let policy = Policy::parse(&text, "policy.toml", &EtcFiles::new(tmp)).unwrap();
        let roots = Roots {
            state: tmp.join("state"),
            ..Roots::default()
        };
        let state = StateDir::open(&roots.state).unwrap();
        Service::new(
            kernel.clone(),
            Box::new(kernel.clone()),
            policy,
            state,
            roots,
            Tuning::default(),
        )
    }

    #[test]
    fn a_group_tied_by_the_outcome_of_a_request_is_released_when_its_connection_closes() {
        let tmp = tempfile::tempdir().unwrap();
        let kernel = Arc::new(SimKernel::guest_layout());
        let service = service(tmp.path(), &kernel);
        let (mut client, end) = UnixStream::pair().unwrap();
        let handler = std::thread::spawn(move || connection(end, &service, &Limits::default()));
        let nic = "01:00.0".parse().unwrap();
        let req = Request::Bind {
            devices: vec![nic],
            driver: Driver::VfioPci,
            group: false,
            dry_run: false,
            hold: true,
        };
        client.write_all(&encode_request(&req).unwrap()).unwrap();
        let answer = read_frame(&mut client, MAX_RESPONSE_FRAME).unwrap();
        let resp = decode_response(&answer).unwrap();
        assert!(matches!(resp, Response::Bound(_)), "{resp:?}");
        let driver = |k: &SimKernel| k.driver(nic).unwrap().map(|d| d.to_string());
        assert_eq!(driver(&kernel).as_deref(), Some("vfio-pci"));
        // `vfio-gate run` exits (or dies): the connection closes, the group goes back.
        drop(client);
        handler.join().unwrap();
        assert_eq!(driver(&kernel).as_deref(), Some("e1000e"));
        assert_eq!(kernel.node(8), None);
    }
}
