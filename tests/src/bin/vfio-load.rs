//! `vfio-load`: many clients at once against the helper, for the guest's load test.
//!
//! ```text
//! vfio-load --devices ADDR,ADDR,... [--user NAME] [--listers 200] [--lists 3]
//!           [--cycles 2] [--silent 50] [--max-retries 30] [--idle-lists 10] [--socket PATH]
//!           [--pidfile /run/vfio-gated.pid] [--timeout SECS]
//! ```
//!
//! First, for reference, `--idle-lists` `List` requests one after the other on an idle helper
//! (`# metric load_idle_list_p50_ms`). Then the load:
//! all at once (threads released together by a barrier, after the silent connections are open):
//! - `--listers` clients, each sending `--lists` `List` requests, one connection per request as
//!   the CLI does;
//! - one client per device of `--devices`, each doing `--cycles` bind (to vfio-pci) + release
//!   cycles on its own device;
//! - `--silent` connections that send nothing: the helper must close each after its per-frame
//!   read deadline; each is opened again until the legitimate work is done.
//!
//! A request the helper turns away at its connection limit (`Busy` "… its limit; retry") is
//! retried after the frontend's backoff (150, 300, 500, 900 ms, then 900 ms, jittered), at most
//! `--max-retries` times; such a request counts as a retry, not as a failure, once it succeeds.
//! Any other outcome — another error, a closed connection, a timeout, an unexpected answer, or
//! retries exhausted — is a failed legitimate request, printed with its reason.
//!
//! The helper's pid is read from `--pidfile` and its `/proc/PID/status` opened *before* the
//! optional `--user NAME` drops to that user (groups, gid, uid), so the helper's peak RSS
//! (`VmHWM`) and thread count can be read as any user; a sampler follows both during the run.
//!
//! Prints `# metric` lines (latencies in ms from the first attempt to the answer, retries
//! included; counts; the helper's peak RSS in KiB: the larger of its VmHWM and the highest VmRSS
//! sampled every 100 ms) and `load: N failed legitimate requests`.
//! A request a client made counts as legitimate, the silent connections' do not. Exit 0 when none
//! failed, 1 otherwise, 2 on bad usage.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
use vfio_gate_protocol::{
    Driver, MAX_RESPONSE_FRAME, PciAddress, ReleaseTarget, Request, Response, WireError,
    decode_response, encode_request, read_frame, write_frame,
};
use vfio_gate_tests::users::{find_user, groups_of};

const USAGE: &str = "usage: vfio-load --devices ADDR,ADDR,... [--user NAME] [--listers N] \
    [--lists N] [--cycles N] [--silent N] [--max-retries N] [--idle-lists N] [--socket PATH] \
    [--pidfile FILE] [--timeout SECS]";

/// The frontend's backoff at the connection limit (`frontend/src/client.rs`), then its last step.
const DELAYS_MS: [u64; 4] = [150, 300, 500, 900];

#[derive(Debug, Clone)]
struct Options {
    socket: String,
    pidfile: String,
    user: Option<String>,
    listers: usize,
    lists: usize,
    devices: Vec<PciAddress>,
    cycles: usize,
    silent: usize,
    max_retries: usize,
    timeout: Duration,
    idle_lists: usize,
}

fn parse(args: Vec<String>) -> Result<Options, String> {
    let mut o = Options {
        socket: "/run/vfio-gate.sock".into(),
        pidfile: "/run/vfio-gated.pid".into(),
        user: None,
        listers: 200,
        lists: 3,
        devices: Vec::new(),
        cycles: 2,
        silent: 50,
        max_retries: 30,
        timeout: Duration::from_secs(120),
        idle_lists: 10,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        let number = |s: String| s.parse::<usize>().map_err(|_| format!("bad number {s:?}"));
        match a.as_str() {
            "--socket" => o.socket = value()?,
            "--pidfile" => o.pidfile = value()?,
            "--user" => o.user = Some(value()?),
            "--listers" => o.listers = number(value()?)?,
            "--lists" => o.lists = number(value()?)?,
            "--cycles" => o.cycles = number(value()?)?,
            "--silent" => o.silent = number(value()?)?,
            "--max-retries" => o.max_retries = number(value()?)?,
            "--idle-lists" => o.idle_lists = number(value()?)?,
            "--timeout" => o.timeout = Duration::from_secs(number(value()?)? as u64),
            "--devices" => {
                o.devices = value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().map_err(|e| format!("{s}: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let o = match parse(std::env::args().skip(1).collect()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("vfio-load: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&o) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vfio-load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The helper's `/proc/PID/status`, opened once (before dropping privileges) and re-read.
struct HelperStatus {
    pid: String,
    file: std::fs::File,
}

impl HelperStatus {
    fn open(pidfile: &str) -> Result<Self, String> {
        let pid = std::fs::read_to_string(pidfile)
            .map_err(|e| format!("reading {pidfile} (is the helper running?): {e}"))?
            .trim()
            .to_string();
        let path = format!("/proc/{pid}/status");
        let file = std::fs::File::open(&path).map_err(|e| format!("opening {path}: {e}"))?;
        Ok(Self { pid, file })
    }

    /// A field of the status file in its unit (kB for memory), if the process still exists.
    fn field(&mut self, name: &str) -> Option<u64> {
        let mut text = String::new();
        self.file.seek(SeekFrom::Start(0)).ok()?;
        self.file.read_to_string(&mut text).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

fn drop_to(name: &str) -> Result<(), String> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("reading {p}: {e}"));
    let user = find_user(&read("/etc/passwd")?, name)
        .ok_or_else(|| format!("no user {name:?} in /etc/passwd"))?;
    let gids: Vec<Gid> = groups_of(&read("/etc/group")?, &user)
        .into_iter()
        .map(Gid::from_raw)
        .collect();
    setgroups(&gids).map_err(|e| format!("setgroups: {e} (--user needs root)"))?;
    let gid = Gid::from_raw(user.gid);
    setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
    let uid = Uid::from_raw(user.uid);
    setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;
    Ok(())
}

/// What one kind of request saw.
#[derive(Debug, Default)]
struct Series {
    latencies_ms: Vec<f64>,
    failures: Vec<String>,
    retries: usize,
    max_retries: usize,
    /// Succeeded only after more retries than the CLI makes (it gives up after four).
    beyond_cli: usize,
}

/// How many times the CLI retries at the connection limit (`frontend/src/client.rs`).
const CLI_RETRIES: usize = DELAYS_MS.len();

impl Series {
    fn record(&mut self, outcome: Result<(Duration, usize), (String, usize)>) {
        match outcome {
            Ok((d, retries)) => {
                self.latencies_ms.push(d.as_secs_f64() * 1000.0);
                if retries > CLI_RETRIES {
                    self.beyond_cli += 1;
                }
                self.retries += retries;
                self.max_retries = self.max_retries.max(retries);
            }
            Err((why, retries)) => {
                self.retries += retries;
                self.max_retries = self.max_retries.max(retries);
                self.failures.push(why);
            }
        }
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }
}

/// One request on a connection of its own, as the CLI sends it.
fn exchange(socket: &str, timeout: Duration, request: &Request) -> Result<Response, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    let frame = encode_request(request).map_err(|e| e.to_string())?;
    let written = write_frame(&mut stream, &frame);
    // A helper at its limit answers without reading and closes: read the answer even if the
    // write failed.
    match read_frame(&mut stream, MAX_RESPONSE_FRAME) {
        Ok(payload) => decode_response(&payload).map_err(|e| format!("undecodable answer: {e}")),
        Err(e) => match written {
            Err(w) => Err(format!("sending: {w}; reading: {e}")),
            Ok(()) => Err(format!("reading the answer: {e}")),
        },
    }
}

fn at_limit(e: &WireError) -> bool {
    matches!(e, WireError::Busy { why, .. } if why.passes_by_itself())
}

fn jittered(ms: u64, seed: u64) -> Duration {
    // 750‰ to 1250‰, varying per thread and attempt.
    let noise = (seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407)
        >> 33)
        % 501;
    Duration::from_millis(ms * (750 + noise) / 1000)
}

/// Sends `request` until it gets an answer that is not the connection-limit `Busy`; `accept`
/// judges that answer. Returns the time from the first attempt and the number of retries.
fn request(
    o: &Options,
    request: &Request,
    seed: u64,
    accept: impl Fn(&Response) -> Result<(), String>,
) -> Result<(Duration, usize), (String, usize)> {
    let started = Instant::now();
    let mut retries = 0;
    loop {
        match exchange(&o.socket, o.timeout, request) {
            Ok(Response::Error(e)) if at_limit(&e) => {
                if retries >= o.max_retries {
                    return Err((
                        format!("still at the connection limit after {retries} retries"),
                        retries,
                    ));
                }
                let ms = DELAYS_MS[retries.min(DELAYS_MS.len() - 1)];
                retries += 1;
                std::thread::sleep(jittered(ms, seed.wrapping_add(retries as u64)));
            }
            Ok(resp) => {
                return accept(&resp)
                    .map(|()| (started.elapsed(), retries))
                    .map_err(|e| (e, retries));
            }
            Err(e) => return Err((e, retries)),
        }
    }
}

fn describe(resp: &Response) -> String {
    match resp {
        Response::Error(e) => format!("error: {e}"),
        Response::Devices(d) => format!("a list of {} devices", d.len()),
        Response::Bound(_) => "a bind report".into(),
        Response::Released(_) => "a release report".into(),
        Response::Explained(_) => "an explanation".into(),
    }
}

/// Counts of the silent connections.
#[derive(Debug, Default)]
struct Silent {
    /// Closed by the helper without an answer (its read deadline), and after how long.
    closed_ms: Mutex<Vec<u64>>,
    /// Turned away at the limit (a `Busy` answer) instead.
    refused: AtomicUsize,
    /// Open when the legitimate work ended.
    open_at_end: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

/// One silent connection, opened again each time the helper closes it, until `stop`.
fn silent(o: &Options, stats: &Silent, stop: &AtomicBool, ready: &Barrier) {
    let mut first = true;
    while !stop.load(Ordering::SeqCst) {
        let stream = UnixStream::connect(&o.socket);
        if first {
            ready.wait();
            first = false;
        }
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                stats.errors.lock().unwrap().push(format!("connect: {e}"));
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let opened = Instant::now();
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 4096];
        let mut got = 0;
        loop {
            if stop.load(Ordering::SeqCst) {
                stats.open_at_end.fetch_add(1, Ordering::SeqCst);
                return;
            }
            match stream.read(&mut buf[got..]) {
                Ok(0) => {
                    if got > 0 {
                        stats.refused.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(100));
                    } else {
                        let ms = opened.elapsed().as_millis() as u64;
                        stats.closed_ms.lock().unwrap().push(ms);
                    }
                    break;
                }
                Ok(n) => got = (got + n).min(buf.len() - 1),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    stats.errors.lock().unwrap().push(format!("read: {e}"));
                    break;
                }
            }
        }
    }
}

fn run(o: &Options) -> Result<usize, String> {
    let mut status = HelperStatus::open(&o.pidfile)?;
    if let Some(user) = &o.user {
        drop_to(user)?;
    }
    let mut idle = Series::default();
    for n in 0..o.idle_lists {
        idle.record(request(o, &Request::List, n as u64, |resp| match resp {
            Response::Devices(d) if !d.is_empty() => Ok(()),
            other => Err(format!("list: {}", describe(other))),
        }));
    }
    if o.idle_lists > 0 {
        println!(
            "# metric load_idle_list_p50_ms={:.0}",
            idle.percentile(50.0)
        );
    }
    let lists = Arc::new(Mutex::new(Series::default()));
    let binds = Arc::new(Mutex::new(Series::default()));
    let releases = Arc::new(Mutex::new(Series::default()));
    // A whole bind + release (tests/vm/bench-leases.sh compares it with the same writes by hand).
    let cycles = Arc::new(Mutex::new(Vec::new()));
    let silent_stats = Arc::new(Silent::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers = o.listers + o.devices.len();
    // The silent connections are open before the workers start.
    let ready = Arc::new(Barrier::new(o.silent + 1));
    let go = Arc::new(Barrier::new(workers + 1));
    let done = Arc::new(AtomicUsize::new(0));
    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name)
            .stack_size(256 * 1024)
            .spawn(f)
            .map_err(|e| format!("spawning a thread: {e}"))
    };

    let mut silent_threads = Vec::new();
    for i in 0..o.silent {
        let (o, stats, stop, ready) =
            (o.clone(), silent_stats.clone(), stop.clone(), ready.clone());
        silent_threads.push(spawn(
            format!("silent{i}"),
            Box::new(move || silent(&o, &stats, &stop, &ready)),
        )?);
    }
    ready.wait();

    let mut threads = Vec::new();
    for i in 0..o.listers {
        let (o, lists, go, done) = (o.clone(), lists.clone(), go.clone(), done.clone());
        threads.push(spawn(
            format!("list{i}"),
            Box::new(move || {
                go.wait();
                for n in 0..o.lists {
                    let seed = (i * 1000 + n) as u64;
                    let r = request(&o, &Request::List, seed, |resp| match resp {
                        Response::Devices(d) if !d.is_empty() => Ok(()),
                        other => Err(format!("list: {}", describe(other))),
                    });
                    lists.lock().unwrap().record(r);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }),
        )?);
    }
    for (i, &dev) in o.devices.iter().enumerate() {
        let (o, binds, releases, cycles, go, done) = (
            o.clone(),
            binds.clone(),
            releases.clone(),
            cycles.clone(),
            go.clone(),
            done.clone(),
        );
        threads.push(spawn(
            format!("bind{i}"),
            Box::new(move || {
                go.wait();
                for n in 0..o.cycles {
                    let seed = (1_000_000 + i * 1000 + n) as u64;
                    let bind = Request::Bind {
                        devices: vec![dev],
                        driver: Driver::VfioPci,
                        group: false,
                        dry_run: false,
                        hold: false,
                    };
                    let cycle = Instant::now();
                    let r = request(&o, &bind, seed, |resp| match resp {
                        Response::Bound(b) if !b.dry_run => Ok(()),
                        other => Err(format!("bind {dev}: {}", describe(other))),
                    });
                    let bound = r.is_ok();
                    binds.lock().unwrap().record(r);
                    if !bound {
                        break;
                    }
                    let release = Request::Release {
                        target: ReleaseTarget::Device(dev),
                    };
                    let r = request(&o, &release, seed + 500, |resp| match resp {
                        Response::Released(rep) if rep.groups.len() == 1 => Ok(()),
                        other => Err(format!("release {dev}: {}", describe(other))),
                    });
                    let released = r.is_ok();
                    releases.lock().unwrap().record(r);
                    if !released {
                        break;
                    }
                    cycles
                        .lock()
                        .unwrap()
                        .push(cycle.elapsed().as_secs_f64() * 1000.0);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }),
        )?);
    }

    // Sample the helper while the workers run.
    let mut peak_threads = 0;
    let mut peak_rss = 0;
    let started = Instant::now();
    go.wait();
    while done.load(Ordering::SeqCst) < workers {
        if let Some(t) = status.field("Threads") {
            peak_threads = peak_threads.max(t);
        }
        if let Some(r) = status.field("VmRSS") {
            peak_rss = peak_rss.max(r);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let wall = started.elapsed();
    for t in threads {
        let _ = t.join();
    }
    stop.store(true, Ordering::SeqCst);
    for t in silent_threads {
        let _ = t.join();
    }
    let hwm = status.field("VmHWM");

    let mut failed = idle.failures.len();
    for f in idle.failures.iter().take(10) {
        println!("# FAILED idle list: {f}");
    }
    let print = |name: &str, s: &Series| {
        println!(
            "# metric load_{name}_requests={}",
            s.latencies_ms.len() + s.failures.len()
        );
        println!("# metric load_{name}_p50_ms={:.0}", s.percentile(50.0));
        println!("# metric load_{name}_p99_ms={:.0}", s.percentile(99.0));
        println!("# metric load_{name}_max_ms={:.0}", s.percentile(100.0));
        println!("# metric load_{name}_retries={}", s.retries);
        println!(
            "# metric load_{name}_max_retries_one_request={}",
            s.max_retries
        );
        println!(
            "# metric load_{name}_retried_more_than_the_cli_would={}",
            s.beyond_cli
        );
        println!("# metric load_{name}_failed={}", s.failures.len());
        for f in s.failures.iter().take(10) {
            println!("# FAILED {name}: {f}");
        }
        s.failures.len()
    };
    failed += print("list", &lists.lock().unwrap());
    failed += print("bind", &binds.lock().unwrap());
    failed += print("release", &releases.lock().unwrap());
    let cycles = Series {
        latencies_ms: cycles.lock().unwrap().clone(),
        ..Series::default()
    };
    println!("# metric load_cycle_p50_ms={:.1}", cycles.percentile(50.0));
    let closed = silent_stats.closed_ms.lock().unwrap().clone();
    println!("# metric load_silent_closed_by_helper={}", closed.len());
    if let (Some(min), Some(max)) = (closed.iter().min(), closed.iter().max()) {
        println!("# metric load_silent_closed_after_min_ms={min}");
        println!("# metric load_silent_closed_after_max_ms={max}");
    }
    println!(
        "# metric load_silent_refused_at_limit={}",
        silent_stats.refused.load(Ordering::SeqCst)
    );
    println!(
        "# metric load_silent_open_at_end={}",
        silent_stats.open_at_end.load(Ordering::SeqCst)
    );
    for e in silent_stats.errors.lock().unwrap().iter().take(10) {
        println!("# silent connection error (not a legitimate request): {e}");
    }
    println!("# metric load_wall_ms={}", wall.as_millis());
    println!("# metric helper_pid={}", status.pid);
    // The kernel updates VmHWM lazily (when the mapping shrinks), so a sample of VmRSS taken
    // during the run can be higher: the peak is the larger of the two.
    match hwm {
        Some(kib) => {
            println!("# metric helper_peak_rss_kib={}", kib.max(peak_rss));
            println!("# metric helper_vmhwm_kib={kib}");
        }
        None => println!("# helper {} is gone: no VmHWM", status.pid),
    }
    println!("# metric helper_peak_rss_sampled_kib={peak_rss}");
    println!("# metric helper_peak_threads={peak_threads}");
    println!("load: {failed} failed legitimate requests");
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s = Series::default();
        for i in 1..=100 {
            s.record(Ok((Duration::from_millis(i), 0)));
        }
        assert_eq!(s.percentile(50.0), 50.0);
        assert_eq!(s.percentile(99.0), 99.0);
        assert_eq!(s.percentile(100.0), 100.0);
        s.record(Err(("x".into(), 3)));
        assert_eq!((s.failures.len(), s.retries, s.max_retries), (1, 3, 3));
    }

    #[test]
    fn limit_busy_is_recognised() {
        use vfio_gate_protocol::BusyReason;
        assert!(at_limit(&WireError::Busy {
            why: BusyReason::ConnectionLimit { limit: 256 },
            detail: String::new(),
        }));
        assert!(!at_limit(&WireError::Busy {
            why: BusyReason::GroupInUse { group: 11 },
            detail: "the helper is serving 256 connections, its limit".into(),
        }));
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for seed in 0..200 {
            let d = jittered(400, seed);
            assert!(d >= Duration::from_millis(300) && d <= Duration::from_millis(500));
        }
    }
}
