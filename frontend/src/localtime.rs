//! Wall-clock times for people: "17:02" today, "2024-05-03 17:02" on another day, in the local
//! time zone (`TZ`, else `/etc/localtime`, as `date` does).
//!
//! The C library converts (`localtime_r`, called in `sys.rs`), so no time-zone database is carried here. When the
//! conversion fails (a time beyond what `time_t` holds), the time is printed in UTC with a `Z`.

use std::time::{SystemTime, UNIX_EPOCH};

/// A broken-down local time, to the minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    pub year: i32,
    /// 1–12.
    pub month: u32,
    /// 1–31.
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
}

impl LocalTime {
    /// Converts seconds since the Unix epoch to the local time zone.
    pub fn from_unix(secs: u64) -> Option<Self> {
        let tm = crate::sys::localtime(libc::time_t::try_from(secs).ok()?)?;
        Some(Self {
            year: tm.tm_year.checked_add(1900)?,
            month: u32::try_from(tm.tm_mon).ok()? + 1,
            day: u32::try_from(tm.tm_mday).ok()?,
            hour: u32::try_from(tm.tm_hour).ok()?,
            minute: u32::try_from(tm.tm_min).ok()?,
        })
    }

    fn same_day(&self, other: &LocalTime) -> bool {
        (self.year, self.month, self.day) == (other.year, other.month, other.day)
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `secs` as "HH:MM" when it is the same local day as `now`, else "YYYY-MM-DD HH:MM".
pub fn when(secs: u64, now: u64) -> String {
    match (LocalTime::from_unix(secs), LocalTime::from_unix(now)) {
        (Some(t), Some(today)) if t.same_day(&today) => format!("{:02}:{:02}", t.hour, t.minute),
        (Some(t), _) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}",
            t.year, t.month, t.day, t.hour, t.minute
        ),
        (None, _) => utc(secs),
    }
}

/// "YYYY-MM-DDTHH:MMZ", computed here (civil-from-days), for when the C library cannot help.
fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (non-negative here).
    let z = days as i128 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_fallback_matches_known_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00Z");
        assert_eq!(utc(4_102_444_799), "2099-12-31T23:59Z");
    }

    #[test]
    fn today_is_a_time_and_another_day_has_a_date() {
        // Whatever the test machine's zone, a time and itself are on the same day, and two times
        // 48 hours apart are not.
        let t = 1_700_000_000;
        let today = when(t, t);
        assert_eq!(today.len(), 5, "{today}");
        assert_eq!(&today[2..3], ":");
        let other = when(t, t + 2 * 86_400);
        assert_eq!(other.len(), 16, "{other}");
        assert!(other.ends_with(&today), "{other} vs {today}");
        let local = LocalTime::from_unix(t).unwrap();
        assert!(other.starts_with(&format!("{:04}-{:02}-", local.year, local.month)));
    }

    #[test]
    fn a_time_beyond_time_t_is_utc() {
        assert!(when(u64::MAX, 0).ends_with('Z'));
    }
}
