//! One structured line per request on stderr (the journal under systemd), in logfmt.
//!
//! `ts=… event=request peer_uid=… peer_gid=… peer_pid=… request=bind device=… driver=…
//! decision=allow|deny rule="…" result=ok|<error kind> error="…" duration_us=…`
//!
//! Values that need it are quoted, with `"` and `\` escaped and control characters replaced, so a
//! line can never be split or forged by text that reached it from a client or from sysfs.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Builds one audit line.
#[derive(Debug)]
pub struct Line {
    text: String,
}

impl Line {
    pub fn new(event: &str) -> Self {
        let mut line = Line {
            text: format!("ts={}", rfc3339(SystemTime::now())),
        };
        line.field("event", event);
        line
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

    /// Writes the line to stderr in one `write` so concurrent lines do not interleave.
    pub fn emit(&self) {
        let mut buf = self.text.clone();
        buf.push('\n');
        let _ = std::io::stderr().lock().write_all(buf.as_bytes());
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
