//! Leap seconds: what the sources announce, what a `leap-seconds.list` file
//! says, and what to tell the kernel when.
//!
//! A leap second happens at the end of a UTC day that ends a month (in
//! practice June or December; RFC 5905 allows any month). Linux applies it
//! by itself at the end of the day on which `STA_INS` (insert: 23:59:59 is
//! followed by 23:59:60) or `STA_DEL` (delete: 23:59:58 is followed by
//! 00:00:00) is set, so the agent sets the flag only during the last day of
//! a month, and clears it a couple of seconds after midnight.
//!
//! Who decides ([`decide`]): a valid `leap-seconds.list` (IETF/NIST format,
//! SHA-1 checked, [`LeapSecondsList::parse`]) that has not expired says
//! whether a leap falls at that midnight, and the servers cannot override
//! it. Without one, the servers vote: the leap indicators of the selected
//! sources ([`vote`]), and a leap needs more than half of them. A minority,
//! or a lone forged source, does nothing.
//!
//! Dates shown to people go through [`format_unix`] and friends, which use
//! chrono and print the leap second itself as `23:59:60`.

use crate::ntp_packet::{LeapIndicator, NtpTimestamp};
use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Timelike};
use sha1::{Digest, Sha1};
use thiserror::Error;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
pub const NTP_UNIX_OFFSET: i64 = 2_208_988_800;

/// How long after the midnight of a leap the kernel flag stays set
/// (seconds): long enough that the kernel has certainly passed the leap
/// when it is cleared.
pub const CLEAR_DELAY: f64 = 2.0;

/// The flag is not newly set this close to midnight (seconds): set any later,
/// a clock a little ahead would already be past midnight and the kernel
/// would apply it a day late.
pub const ARM_MARGIN: f64 = 10.0;

/// What the kernel is told to do at the end of the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeapStatus {
    /// Nothing (`STA_INS` and `STA_DEL` cleared).
    #[default]
    None,
    /// Insert a second: 23:59:60 (`STA_INS`).
    Insert,
    /// Delete a second: 23:59:59 is skipped (`STA_DEL`).
    Delete,
}

impl LeapStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Insert => "insert",
            Self::Delete => "delete",
        }
    }
}

/// The sources' vote: more than half of `indicators` (the last leap
/// indicator of each selected source) must announce the same leap.
/// Unsynchronized indicators count as no announcement.
pub fn vote(indicators: &[LeapIndicator]) -> LeapStatus {
    let n = indicators.len();
    let count = |li| indicators.iter().filter(|&&x| x == li).count();
    if 2 * count(LeapIndicator::InsertSecond) > n {
        LeapStatus::Insert
    } else if 2 * count(LeapIndicator::DeleteSecond) > n {
        LeapStatus::Delete
    } else {
        LeapStatus::None
    }
}

/// One line of the list: from `ntp_seconds` on, TAI − UTC is `tai_utc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeapEntry {
    pub ntp_seconds: u64,
    pub tai_utc: i32,
}

/// A parsed and verified `leap-seconds.list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeapSecondsList {
    /// `#$`: when the file was last updated (NTP seconds).
    pub updated_ntp: u64,
    /// `#@`: after this (NTP seconds) the file says nothing about leaps.
    pub expires_ntp: u64,
    pub entries: Vec<LeapEntry>,
}

/// Why a `leap-seconds.list` was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LeapListError {
    #[error("line {line}: {what}")]
    BadLine { line: usize, what: &'static str },
    #[error("no {0} line")]
    Missing(&'static str),
    #[error("line {line}: {what} appears twice")]
    Duplicate { line: usize, what: &'static str },
    #[error("line {line}: entries are not in increasing time order")]
    NotIncreasing { line: usize },
    #[error("line {line}: TAI-UTC changes by {step} s (a leap is 1 s)")]
    BadStep { line: usize, step: i64 },
    #[error("no leap entries")]
    NoEntries,
    #[error("SHA-1 hash mismatch: the file says {expected}, its data hash to {actual}")]
    HashMismatch { expected: String, actual: String },
}

/// A time or offset field: digits only, and no more than i64 seconds (the
/// queries convert to signed Unix time).
fn number(field: &str) -> Option<u64> {
    (!field.is_empty() && field.bytes().all(|b| b.is_ascii_digit()))
        .then(|| field.parse().ok())
        .flatten()
        .filter(|v| i64::try_from(*v).is_ok())
}

impl LeapSecondsList {
    /// Parse and verify the text of a `leap-seconds.list`.
    ///
    /// The hash (`#h`, five groups of hex digits, leading zeros sometimes
    /// dropped) is the SHA-1 of the digits of the `#$` and `#@` values and of
    /// the first two fields of every entry, in file order, with everything
    /// else left out.
    pub fn parse(text: &str) -> Result<Self, LeapListError> {
        let mut updated = None;
        let mut expires = None;
        let mut hash: Option<(usize, String)> = None;
        let mut entries: Vec<LeapEntry> = Vec::new();
        let mut hashed = String::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let bad = |what| LeapListError::BadLine { line, what };
            if let Some(rest) = raw.strip_prefix("#$") {
                let v = rest.split_whitespace().next().and_then(number);
                let v = v.ok_or(bad("#$ needs an NTP time"))?;
                if updated.replace(v).is_some() {
                    return Err(LeapListError::Duplicate { line, what: "#$" });
                }
            } else if let Some(rest) = raw.strip_prefix("#@") {
                let v = rest.split_whitespace().next().and_then(number);
                let v = v.ok_or(bad("#@ needs an NTP time"))?;
                if expires.replace(v).is_some() {
                    return Err(LeapListError::Duplicate { line, what: "#@" });
                }
            } else if let Some(rest) = raw.strip_prefix("#h") {
                let mut hex = String::new();
                let groups: Vec<&str> = rest.split_whitespace().collect();
                if groups.len() != 5 {
                    return Err(bad("#h needs five groups of hex digits"));
                }
                for g in groups {
                    if g.is_empty() || g.len() > 8 || !g.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(bad("#h needs five groups of hex digits"));
                    }
                    hex.push_str(&format!("{:0>8}", g.to_ascii_lowercase()));
                }
                if hash.replace((line, hex)).is_some() {
                    return Err(LeapListError::Duplicate { line, what: "#h" });
                }
            } else if raw.starts_with('#') || raw.trim().is_empty() {
                continue;
            } else {
                let data = raw.split('#').next().unwrap_or("");
                let fields: Vec<&str> = data.split_whitespace().collect();
                if fields.len() != 2 {
                    return Err(bad("an entry is: NTP seconds, TAI-UTC [# comment]"));
                }
                let ntp = number(fields[0]).ok_or(bad("NTP seconds is not a number"))?;
                let tai = number(fields[1])
                    .and_then(|v| i32::try_from(v).ok())
                    .ok_or(bad("TAI-UTC is not a number"))?;
                if let Some(prev) = entries.last() {
                    if ntp <= prev.ntp_seconds {
                        return Err(LeapListError::NotIncreasing { line });
                    }
                    let step = i64::from(tai) - i64::from(prev.tai_utc);
                    if step.abs() != 1 {
                        return Err(LeapListError::BadStep { line, step });
                    }
                }
                hashed.push_str(fields[0]);
                hashed.push_str(fields[1]);
                entries.push(LeapEntry {
                    ntp_seconds: ntp,
                    tai_utc: tai,
                });
            }
        }
        let updated = updated.ok_or(LeapListError::Missing("#$ (last update)"))?;
        let expires = expires.ok_or(LeapListError::Missing("#@ (expiry)"))?;
        let (_, expected) = hash.ok_or(LeapListError::Missing("#h (hash)"))?;
        if entries.is_empty() {
            return Err(LeapListError::NoEntries);
        }
        let mut h = Sha1::new();
        h.update(updated.to_string().as_bytes());
        h.update(expires.to_string().as_bytes());
        h.update(hashed.as_bytes());
        let actual: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if actual != expected {
            return Err(LeapListError::HashMismatch { expected, actual });
        }
        Ok(Self {
            updated_ntp: updated,
            expires_ntp: expires,
            entries,
        })
    }

    /// The expiry as Unix seconds.
    pub fn expires_unix(&self) -> i64 {
        self.expires_ntp as i64 - NTP_UNIX_OFFSET
    }

    /// Whether the list still speaks for `now_unix`.
    pub fn is_valid_at(&self, now_unix: f64) -> bool {
        now_unix < self.expires_unix() as f64
    }

    /// The leap that happens at the midnight `midnight_unix` (the first
    /// second of the new day), by the list.
    pub fn leap_at(&self, midnight_unix: i64) -> LeapStatus {
        let ntp = midnight_unix + NTP_UNIX_OFFSET;
        let Some(i) = self
            .entries
            .iter()
            .position(|e| e.ntp_seconds as i64 == ntp)
        else {
            return LeapStatus::None;
        };
        if i == 0 {
            return LeapStatus::None;
        }
        match self.entries[i].tai_utc - self.entries[i - 1].tai_utc {
            1 => LeapStatus::Insert,
            -1 => LeapStatus::Delete,
            _ => LeapStatus::None,
        }
    }

    /// TAI − UTC at `now_unix`, by the list (None before its first entry).
    pub fn tai_utc_at(&self, now_unix: i64) -> Option<i32> {
        let ntp = now_unix + NTP_UNIX_OFFSET;
        self.entries
            .iter()
            .take_while(|e| e.ntp_seconds as i64 <= ntp)
            .last()
            .map(|e| e.tai_utc)
    }
}

/// Who decided the leap status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeapSource {
    /// Nobody announces a leap.
    #[default]
    None,
    /// A valid, unexpired `leap-seconds.list`.
    List,
    /// A majority of the selected sources.
    Sources,
}

impl LeapSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::List => "leap-seconds list",
            Self::Sources => "sources",
        }
    }
}

/// The leap situation at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeapDecision {
    /// What the kernel must be told now: a leap only during the last day of
    /// a month (until [`CLEAR_DELAY`] after its midnight).
    pub status: LeapStatus,
    /// The leap announced for the end of this month (whatever the day).
    pub announced: LeapStatus,
    /// The midnight (Unix seconds, first second of the new month) at which
    /// the announced leap happens.
    pub at_unix: Option<i64>,
    pub source: LeapSource,
}

/// The Unix time of 00:00:00 UTC starting the month after the one holding
/// `day_start_unix`.
fn month_end(day_start_unix: i64) -> Option<i64> {
    let d = DateTime::from_timestamp(day_start_unix, 0)?.date_naive();
    let (y, m) = if d.month() == 12 {
        (d.year() + 1, 1)
    } else {
        (d.year(), d.month() + 1)
    };
    Some(
        NaiveDate::from_ymd_opt(y, m, 1)?
            .and_hms_opt(0, 0, 0)?
            .and_utc()
            .timestamp(),
    )
}

/// What to do about leap seconds at `now_unix` (true UTC, seconds), given
/// the list (if any) and the sources' [`vote`]. `armed` says whether the
/// kernel flag is already set, so it stays set through the last
/// [`ARM_MARGIN`] seconds.
pub fn decide(
    now_unix: f64,
    list: Option<&LeapSecondsList>,
    vote: LeapStatus,
    armed: bool,
) -> LeapDecision {
    // Just after a leap's midnight the decision still belongs to the day
    // before, so the flag is cleared only CLEAR_DELAY after it.
    let eff = now_unix - CLEAR_DELAY;
    let day_start = (eff / 86_400.0).floor() as i64 * 86_400;
    let Some(end) = month_end(day_start) else {
        return LeapDecision::default();
    };
    let (announced, source) = match list {
        Some(l) if l.is_valid_at(now_unix) => {
            let s = l.leap_at(end);
            (
                s,
                if s == LeapStatus::None {
                    LeapSource::None
                } else {
                    LeapSource::List
                },
            )
        }
        _ if vote != LeapStatus::None => (vote, LeapSource::Sources),
        _ => (LeapStatus::None, LeapSource::None),
    };
    if announced == LeapStatus::None {
        return LeapDecision::default();
    }
    let last_day = end - day_start == 86_400;
    let in_time = armed || (end as f64 - now_unix) > ARM_MARGIN;
    LeapDecision {
        status: if last_day && in_time {
            announced
        } else {
            LeapStatus::None
        },
        announced,
        at_unix: Some(end),
        source,
    }
}

/// The start of the last day before `at_unix` (a month-end midnight): when
/// the kernel flag goes up.
pub fn arm_time(at_unix: i64) -> i64 {
    at_unix - 86_400
}

/// "2026-12-31 23:59:59 UTC" for Unix seconds (fractions dropped).
pub fn format_unix(unix: i64) -> String {
    match DateTime::from_timestamp(unix, 0) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => format!("{unix} (Unix seconds, out of range)"),
    }
}

/// "2026-12-31 23:59:59.250 UTC" for fractional Unix seconds.
pub fn format_unix_f64(unix: f64) -> String {
    if !unix.is_finite() {
        return format!("{unix}");
    }
    let secs = unix.floor();
    let nanos = ((unix - secs) * 1e9).round().min(999_999_999.0) as u32;
    match DateTime::from_timestamp(secs as i64, nanos) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
        None => format!("{unix} (Unix seconds, out of range)"),
    }
}

/// An NTP timestamp as a date, taking the era nearest `pivot_unix`.
pub fn format_ntp(ts: NtpTimestamp, pivot_unix: u64) -> String {
    format_unix_f64(ts.to_unix_f64(pivot_unix))
}

/// The last second of the day before the midnight `at_unix`, as people name
/// it: "2026-12-31 23:59:60 UTC" for an inserted second, "2026-12-31 23:59:59
/// UTC" (the second that is skipped) for a deleted one.
pub fn format_leap_second(at_unix: i64, status: LeapStatus) -> String {
    let Some(day) = DateTime::from_timestamp(at_unix - 1, 0) else {
        return format!("{at_unix} (Unix seconds, out of range)");
    };
    match status {
        LeapStatus::Insert => {
            // chrono represents the leap second as 23:59:59 with 1e9 + n nanoseconds.
            let leap = NaiveTime::from_hms_nano_opt(23, 59, 59, 1_000_000_000)
                .map(|t| day.date_naive().and_time(t));
            match leap {
                Some(t) if t.time().second() == 59 => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                _ => format_unix(at_unix - 1),
            }
        }
        _ => format_unix(at_unix - 1),
    }
}

#[cfg(test)]
mod tests;
