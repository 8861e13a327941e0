//! One structured line per request on stderr (the journal under systemd), in logfmt.
//!
//! `ts=… event=request peer_uid=… peer_gid=… peer_pid=… request=bind device=… driver=…
//! decision=allow|deny rule="…" result=ok|<error kind> error="…" duration_us=…`
//!
//! Values that need it are quoted, with `"` and `\` escaped and control characters replaced, so a
//! line can never be split or forged by text that reached it from a client or from sysfs.
//!
//! Under systemd each line starts with a syslog priority, `<3>` to `<6>` ([`Priority`]), which the
//! journal takes as the entry's PRIORITY and strips: denials and refusals are warnings, failures
//! errors, the rest information, so `journalctl -p warning -u vfio-gated` lists exactly what an
//! admin should look at. Anywhere else (a terminal, a log file) the lines carry no prefix.
//!
//! The service fills a [`Record`] beside its answer (the decision, the deciding rule, the devices
//! concerned); the connection handler writes the request's line from it ([`request`]) whatever
//! the answer was. Other events ([`Line`]) are written where they happen.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vfio_gate_protocol::{PciAddress, Request, RuleRef, WireError};

use crate::peer::Peer;

/// What a request's line says besides the request and its result, filled in by the service as it
/// decides.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Record {
    /// `Some(true)` allowed, `Some(false)` denied, `None` when no decision was reached or needed
    /// (a list, a malformed request).
    pub allowed: Option<bool>,
    /// The rule that decided, if one did.
    pub rule: Option<RuleRef>,
    /// Every device the request touched or asked about.
    pub devices: Vec<PciAddress>,
}

impl Record {
    /// The request is refused; the rule named so far (if any) stays.
    pub fn deny(&mut self) {
        self.allowed = Some(false);
    }

    /// The request is refused by `rule` (`None`: by default, no rule allowed it).
    pub fn deny_by(&mut self, rule: Option<RuleRef>) {
        self.allowed = Some(false);
        self.rule = rule;
    }

    /// The request is allowed.
    pub fn allow(&mut self) {
        self.allowed = Some(true);
    }
}

/// How much a line matters, as syslog levels (`sd-daemon(3)`'s `<N>` prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Something failed: a kernel write, a lease record, the helper itself.
    Error = 3,
    /// Somebody was refused, or something needs an admin's eye.
    Warning = 4,
    /// Normal, but worth noticing: a busy answer, a release still pending.
    Notice = 5,
    /// Everything else.
    Info = 6,
}

impl Priority {
    /// The default priority of an event's lines; a line can say otherwise ([`Line::priority`]).
    pub fn of_event(event: &str) -> Self {
        match event {
            "lease-unreadable" | "refused-to-serve" => Priority::Error,
            e if e.ends_with("-error") => Priority::Error,
            "policy-warning" | "UNSANDBOXED" | "TEST-BUILD" | "fault-injection" => {
                Priority::Warning
            }
            "connection-refused" | "waiting" | "lease-member-gone" => Priority::Notice,
            _ => Priority::Info,
        }
    }
}

/// Builds one audit line.
#[derive(Debug)]
pub struct Line {
    text: String,
    priority: Priority,
}

impl Line {
    pub fn new(event: &str) -> Self {
        let mut line = Line {
            text: format!("ts={}", rfc3339(SystemTime::now())),
            priority: Priority::of_event(event),
        };
        line.field("event", event);
        line
    }

    /// Sets the line's priority (the journal's PRIORITY under systemd).
    pub fn priority(&mut self, p: Priority) -> &mut Self {
        self.priority = p;
        self
    }

    /// The line's priority.
    pub fn level(&self) -> Priority {
        self.priority
    }

    pub fn field(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        let value = value.to_string();
        let _ = write!(self.text, " {key}=");
        let plain = !value.is_empty()
            && value
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != '=');
        if plain {
            self.text.push_str(&value);
        } else {
            self.text.push('"');
            for c in value.chars() {
                match c {
                    '"' => self.text.push_str("\\\""),
                    '\\' => self.text.push_str("\\\\"),
                    c if c.is_control() => {
                        let _ = write!(self.text, "\\u{{{:x}}}", c as u32);
                    }
                    c => self.text.push(c),
                }
            }
            self.text.push('"');
        }
        self
    }

    pub fn duration(&mut self, d: Duration) -> &mut Self {
        self.field("duration_us", d.as_micros())
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Writes the line to stderr in one `write` so concurrent lines do not interleave, with its
    /// `<N>` priority prefix when stderr is the journal.
    pub fn emit(&self) {
        let buf = self.render(stderr_is_journal());
        let _ = std::io::stderr().lock().write_all(buf.as_bytes());
    }

    /// The line as written: `<N>` first for the journal, a newline last.
    pub fn render(&self, journal: bool) -> String {
        let mut buf = String::with_capacity(self.text.len() + 5);
        if journal {
            let _ = write!(buf, "<{}>", self.priority as u8);
        }
        buf.push_str(&self.text);
        buf.push('\n');
        buf
    }
}

/// Whether stderr is connected to the journal: systemd sets `JOURNAL_STREAM=DEV:INODE` to the
/// stream it passed, and stderr is still that stream (`systemd.exec(5)`). Asked once.
fn stderr_is_journal() -> bool {
    static JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *JOURNAL.get_or_init(|| {
        let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
            return false;
        };
        let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
            return false;
        };
        stream == format!("{}:{}", st.st_dev, st.st_ino)
    })
}

/// Writes the line of one request: who asked, what, the [`Record`], the result and how long it
/// took. `request` is `None` for a frame that did not decode.
pub fn request(
    peer: &Peer,
    request: Option<&Request>,
    record: &Record,
    result: &Result<(), WireError>,
    started: Instant,
) {
    let mut line = Line::new("request");
    line.field("peer_uid", peer.uid)
        .field("peer_gid", peer.gid)
        .field("peer_pid", peer.pid)
        .field("request", request.map_or("invalid", Request::kind));
    if let Some(Request::Bind {
        driver,
        group,
        dry_run,
        ..
    }) = request
    {
        line.field("driver", driver);
        if *group {
            line.field("group", "yes");
        }
        if *dry_run {
            line.field("dry_run", "yes");
        }
    }
    if !record.devices.is_empty() {
        let devices: Vec<String> = record.devices.iter().map(ToString::to_string).collect();
        line.field("devices", devices.join(","));
    }
    if let Some(allowed) = record.allowed {
        line.field("decision", if allowed { "allow" } else { "deny" });
    }
    if let Some(rule) = &record.rule {
        line.field("rule", &rule.name)
            .field("rule_at", format!("{}:{}", rule.file, rule.line));
    }
    match result {
        Ok(()) => line.field("result", "ok"),
        Err(e) => line
            .field("result", error_kind(e))
            .field("error", e)
            .priority(error_priority(e)),
    };
    line.duration(started.elapsed()).emit();
}

/// Refusals are warnings (someone asked for what they may not have, or a guard kept the host's
/// device), a busy answer is a notice, a failure an error.
fn error_priority(e: &WireError) -> Priority {
    match e {
        WireError::Busy { .. } | WireError::NotFound { .. } => Priority::Notice,
        WireError::Failed { .. } | WireError::Internal { .. } | WireError::Unavailable { .. } => {
            Priority::Error
        }
        _ => Priority::Warning,
    }
}

/// The `result=` word of a failed request.
fn error_kind(e: &WireError) -> &'static str {
    match e {
        WireError::Denied { .. } => "denied",
        WireError::NotFound { .. } => "not-found",
        WireError::Busy { .. } => "busy",
        WireError::BadRequest { .. } => "bad-request",
        WireError::VersionMismatch { .. } => "version-mismatch",
        WireError::Failed { .. } => "failed",
        WireError::Refused { .. } => "refused",
        WireError::NeedsGroup { .. } => "needs-group",
        WireError::Held { .. } => "held",
        WireError::NotAdmin { .. } => "not-admin",
        WireError::Unavailable { .. } => "unavailable",
        _ => "internal",
    }
}

/// `2026-11-25T17:02:03.123Z`, without a date library: days since the epoch to a civil date
/// (Howard Hinnant's algorithm).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_764_090_123_456);
        assert_eq!(rfc3339(t), "2025-11-25T17:02:03.456Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }

    #[test]
    fn priorities_for_the_journal() {
        assert_eq!(Priority::of_event("request"), Priority::Info);
        assert_eq!(Priority::of_event("node-error"), Priority::Error);
        assert_eq!(Priority::of_event("lease-unreadable"), Priority::Error);
        assert_eq!(Priority::of_event("policy-warning"), Priority::Warning);
        let mut l = Line::new("request");
        l.field("result", "denied").priority(Priority::Warning);
        assert!(l.render(true).starts_with("<4>ts="));
        assert!(l.render(false).starts_with("ts="));
        assert!(l.render(false).ends_with("result=denied\n"));
        let denied = WireError::Denied {
            why: vfio_gate_protocol::DenyReason::Policy,
            rule: None,
            detail: "no".into(),
        };
        assert_eq!(error_priority(&denied), Priority::Warning);
        assert_eq!(
            error_priority(&WireError::Failed { reason: "x".into() }),
            Priority::Error
        );
    }

    #[test]
    fn hostile_values_cannot_forge_fields_or_lines() {
        let mut l = Line::new("request");
        l.field("rule", "x\" result=ok\nts=0 event=forged")
            .field("device", "0000:01:00.0")
            .field("empty", "");
        let s = l.as_str();
        assert!(!s.contains('\n'));
        assert!(
            s.contains(r#"rule="x\" result=ok\u{a}ts=0 event=forged""#),
            "{s}"
        );
        assert!(s.contains(" device=0000:01:00.0"));
        assert!(s.ends_with(r#"empty="""#));
    }
}
