//! Where the frequency correction starts: the drift file's record, the
//! kernel's current frequency, or nothing.
//!
//! A restarted agent that began at 0 ppm would undo a disciplined clock's
//! correction (tens of ppm on many machines) and take minutes to learn it
//! again, walking the offset by milliseconds meanwhile. So the shell reads,
//! before the first update, what the clock already runs at and how much that
//! can be trusted, and passes both in through
//! [`DisciplineConfig::initial_frequency_ppm`] and
//! [`DisciplineConfig::initial_frequency_uncertainty_ppm`]
//! ([`InitialFrequency::apply`]).
//!
//! The drift file (like chrony's `driftfile`) is the agent's own estimate,
//! written every so often and at shutdown while disciplining. Its text form
//! ([`DriftRecord::to_text`], [`DriftRecord::parse`]) is one line of three
//! numbers after `#` comments:
//!
//! ```text
//! # nts-client drift file: frequency (ppm), its standard deviation (ppm), Unix time written
//! -12.345678 0.004321 1764547200
//! ```
//!
//! This module is pure: reading and writing the file is the shell's job.

use super::clock_trait::SyncStatus;
use super::discipline::DisciplineConfig;
use thiserror::Error;

/// The kernel's limit on the frequency correction (ppm); a drift file beyond
/// it is corrupt.
pub const MAX_FREQUENCY_PPM: f64 = 500.0;

/// The uncertainty given to an unknown frequency (ppm): what a PC crystal
/// may be off by.
pub const UNKNOWN_FREQUENCY_UNCERTAINTY_PPM: f64 = 200.0;

/// Uncertainty of the frequency found in the kernel of a clock that says it
/// is synchronized, right after its last update (ppm): what a disciplining
/// daemon (this agent before its restart, chrony, ntpd) knows its frequency
/// to. It grows with the oscillator's wander over the time since that
/// update, which the kernel's `maxerror` bounds: the kernel adds 500 µs to
/// it every second and marks the clock unsynchronized at 16 s.
pub const SYNCHRONIZED_KERNEL_UNCERTAINTY_PPM: f64 = 0.1;

/// How fast the kernel grows `maxerror` (seconds per second).
pub const KERNEL_MAXERROR_GROWTH: f64 = 500e-6;

/// Uncertainty of the frequency found in the kernel of an unsynchronized
/// clock (ppm): somebody set it once, which beats nothing, but not by much.
pub const UNSYNCHRONIZED_KERNEL_UNCERTAINTY_PPM: f64 = 50.0;

/// Floor of the uncertainty taken from a drift file (ppm): a restart after a
/// reboot meets another temperature.
pub const MIN_DRIFT_UNCERTAINTY_PPM: f64 = 0.05;

/// The agent writes a drift record only when its frequency is known better
/// than this (ppm, one standard deviation).
pub const MAX_RECORDED_UNCERTAINTY_PPM: f64 = 1.0;

/// One drift file's content.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftRecord {
    /// The frequency correction that keeps the clock on time (ppm).
    pub frequency_ppm: f64,
    /// Its standard deviation (ppm).
    pub uncertainty_ppm: f64,
    /// When it was written (Unix seconds), if known: the uncertainty grows
    /// with the time since.
    pub written_unix: Option<i64>,
}

/// Why a drift file's text is not a record.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DriftParseError {
    #[error("no data line (expected \"FREQUENCY_PPM UNCERTAINTY_PPM [UNIX_TIME]\")")]
    Empty,
    #[error("line {line}: more than one data line")]
    ExtraLine { line: usize },
    #[error("line {line}: expected 2 or 3 fields, found {found}")]
    FieldCount { line: usize, found: usize },
    #[error("line {line}: {field} {value:?} is not a number")]
    NotANumber {
        line: usize,
        field: &'static str,
        value: String,
    },
    #[error("line {line}: {field} {value} is out of range ({range})")]
    OutOfRange {
        line: usize,
        field: &'static str,
        value: f64,
        range: &'static str,
    },
}

impl DriftRecord {
    /// Parse a drift file's text.
    pub fn parse(text: &str) -> Result<Self, DriftParseError> {
        let mut found: Option<Self> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            if found.is_some() {
                return Err(DriftParseError::ExtraLine { line });
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            if !(2..=3).contains(&fields.len()) {
                return Err(DriftParseError::FieldCount {
                    line,
                    found: fields.len(),
                });
            }
            let number = |field: &'static str, value: &str| {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| DriftParseError::NotANumber {
                        line,
                        field,
                        value: value.to_string(),
                    })
            };
            let frequency_ppm = number("frequency", fields[0])?;
            if frequency_ppm.abs() > MAX_FREQUENCY_PPM {
                return Err(DriftParseError::OutOfRange {
                    line,
                    field: "frequency",
                    value: frequency_ppm,
                    range: "-500 to 500 ppm",
                });
            }
            let uncertainty_ppm = number("uncertainty", fields[1])?;
            if !(0.0..=MAX_FREQUENCY_PPM).contains(&uncertainty_ppm) {
                return Err(DriftParseError::OutOfRange {
                    line,
                    field: "uncertainty",
                    value: uncertainty_ppm,
                    range: "0 to 500 ppm",
                });
            }
            let written_unix = match fields.get(2) {
                None => None,
                Some(v) => Some(v.parse::<i64>().map_err(|_| DriftParseError::NotANumber {
                    line,
                    field: "time written",
                    value: v.to_string(),
                })?),
            };
            found = Some(Self {
                frequency_ppm,
                uncertainty_ppm,
                written_unix,
            });
        }
        found.ok_or(DriftParseError::Empty)
    }

    /// The file's text (ends with a newline).
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "# nts-client drift file: frequency (ppm), its standard deviation (ppm), Unix time written\n{:.6} {:.6}",
            self.frequency_ppm, self.uncertainty_ppm
        );
        if let Some(t) = self.written_unix {
            s.push_str(&format!(" {t}"));
        }
        s.push('\n');
        s
    }
}

/// Where the initial frequency came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrequencyOrigin {
    /// The drift file.
    DriftFile,
    /// The kernel of a clock that says it is synchronized.
    SynchronizedKernel,
    /// The kernel of an unsynchronized clock.
    Kernel,
    /// Nothing known: 0 ppm.
    Unknown,
}

/// The frequency correction to start from, and how far off it may be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InitialFrequency {
    pub ppm: f64,
    /// One standard deviation (ppm).
    pub uncertainty_ppm: f64,
    pub origin: FrequencyOrigin,
}

impl InitialFrequency {
    /// Decide from what the shell found.
    ///
    /// * `drift`: the drift file's record, and the Unix time now (to age it).
    /// * `kernel`: the clock's current frequency correction
    ///   ([`Clock::frequency`](super::Clock::frequency)) and status
    ///   ([`Clock::sync_status`](super::Clock::sync_status)).
    /// * `wander`: the assumed oscillator wander ((s/s)² per second,
    ///   [`DisciplineConfig::wander`]), by which a record's uncertainty grows
    ///   with its age.
    ///
    /// The drift file wins: it is this agent's own estimate with its own
    /// uncertainty, and a kernel value may hold a slew cut short (an agent
    /// killed without [`Agent::shutdown`](super::Agent::shutdown)). Then the
    /// kernel's value: if the kernel says it is synchronized, trusted to
    /// [`SYNCHRONIZED_KERNEL_UNCERTAINTY_PPM`] grown by the wander over the
    /// longest time since its last update that its `maxerror` allows; if
    /// not, to [`UNSYNCHRONIZED_KERNEL_UNCERTAINTY_PPM`] (and 0 ppm in an
    /// unsynchronized kernel means nobody set it: unknown).
    pub fn decide(
        drift: Option<(&DriftRecord, i64)>,
        kernel: Option<(f64, &SyncStatus)>,
        wander: f64,
    ) -> Self {
        if let Some((rec, now_unix)) = drift {
            let age = rec
                .written_unix
                .map_or(0.0, |t| (now_unix.saturating_sub(t)).max(0) as f64);
            let sd = rec.uncertainty_ppm * 1e-6;
            let grown = (sd * sd + wander.max(0.0) * age).sqrt() * 1e6;
            return Self {
                ppm: rec.frequency_ppm,
                uncertainty_ppm: grown
                    .clamp(MIN_DRIFT_UNCERTAINTY_PPM, UNKNOWN_FREQUENCY_UNCERTAINTY_PPM),
                origin: FrequencyOrigin::DriftFile,
            };
        }
        match kernel {
            Some((ppm, st)) if ppm.is_finite() && st.synchronized => {
                let age = (st.max_error.max(0.0) / KERNEL_MAXERROR_GROWTH)
                    .min(16.0 / KERNEL_MAXERROR_GROWTH);
                let sd = SYNCHRONIZED_KERNEL_UNCERTAINTY_PPM * 1e-6;
                Self {
                    ppm: ppm.clamp(-MAX_FREQUENCY_PPM, MAX_FREQUENCY_PPM),
                    uncertainty_ppm: (sd * sd + wander.max(0.0) * age).sqrt() * 1e6,
                    origin: FrequencyOrigin::SynchronizedKernel,
                }
            }
            Some((ppm, _)) if ppm.is_finite() && ppm != 0.0 => Self {
                ppm: ppm.clamp(-MAX_FREQUENCY_PPM, MAX_FREQUENCY_PPM),
                uncertainty_ppm: UNSYNCHRONIZED_KERNEL_UNCERTAINTY_PPM,
                origin: FrequencyOrigin::Kernel,
            },
            _ => Self {
                ppm: 0.0,
                uncertainty_ppm: UNKNOWN_FREQUENCY_UNCERTAINTY_PPM,
                origin: FrequencyOrigin::Unknown,
            },
        }
    }

    /// Put it into a discipline configuration.
    pub fn apply(&self, cfg: &mut DisciplineConfig) {
        cfg.initial_frequency_ppm = self.ppm;
        cfg.initial_frequency_uncertainty_ppm = self.uncertainty_ppm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_record_round_trips() {
        let r = DriftRecord {
            frequency_ppm: -12.345678,
            uncertainty_ppm: 0.004321,
            written_unix: Some(1_764_547_200),
        };
        let text = r.to_text();
        assert!(text.starts_with("# nts-client drift file"));
        assert_eq!(DriftRecord::parse(&text).unwrap(), r);
        let r2 = DriftRecord {
            written_unix: None,
            ..r
        };
        assert_eq!(DriftRecord::parse(&r2.to_text()).unwrap(), r2);
        // chrony's two-field form, with blank lines and comments.
        assert_eq!(
            DriftRecord::parse("\n  # hi\n 3.5  0.25 # trailing\n\n").unwrap(),
            DriftRecord {
                frequency_ppm: 3.5,
                uncertainty_ppm: 0.25,
                written_unix: None
            }
        );
    }

    #[test]
    fn bad_drift_files_are_errors() {
        assert_eq!(DriftRecord::parse(""), Err(DriftParseError::Empty));
        assert_eq!(DriftRecord::parse("# only\n"), Err(DriftParseError::Empty));
        assert_eq!(
            DriftRecord::parse("1 2\n3 4\n"),
            Err(DriftParseError::ExtraLine { line: 2 })
        );
        assert_eq!(
            DriftRecord::parse("1\n"),
            Err(DriftParseError::FieldCount { line: 1, found: 1 })
        );
        assert!(matches!(
            DriftRecord::parse("x 1"),
            Err(DriftParseError::NotANumber {
                field: "frequency",
                ..
            })
        ));
        assert!(matches!(
            DriftRecord::parse("1 NaN"),
            Err(DriftParseError::NotANumber {
                field: "uncertainty",
                ..
            })
        ));
        assert!(matches!(
            DriftRecord::parse("1 1 soon"),
            Err(DriftParseError::NotANumber { .. })
        ));
        assert!(matches!(
            DriftRecord::parse("600 1"),
            Err(DriftParseError::OutOfRange { .. })
        ));
        assert!(matches!(
            DriftRecord::parse("1 -1"),
            Err(DriftParseError::OutOfRange { .. })
        ));
        assert!(DriftRecord::parse("1 2 3 4")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
    }

    #[test]
    fn initial_frequency_prefers_the_drift_file_and_ages_it() {
        let rec = DriftRecord {
            frequency_ppm: 42.0,
            uncertainty_ppm: 0.001,
            written_unix: Some(1000),
        };
        let synced = SyncStatus {
            synchronized: true,
            max_error: 0.01,
            est_error: 0.001,
        };
        let f = InitialFrequency::decide(Some((&rec, 1000)), Some((40.0, &synced)), 1e-18);
        assert_eq!(f.origin, FrequencyOrigin::DriftFile);
        assert_eq!(f.ppm, 42.0);
        assert_eq!(f.uncertainty_ppm, MIN_DRIFT_UNCERTAINTY_PPM);
        // A day later: sqrt(1e-18 · 86400) = 0.29 ppm.
        let f = InitialFrequency::decide(Some((&rec, 1000 + 86_400)), None, 1e-18);
        assert!((f.uncertainty_ppm - 0.294).abs() < 0.001, "{f:?}");

        // maxerror 10 ms: at most 20 s since the last update.
        let f = InitialFrequency::decide(None, Some((40.0, &synced)), 1e-18);
        assert_eq!(
            (f.ppm, f.origin),
            (40.0, FrequencyOrigin::SynchronizedKernel)
        );
        assert!((f.uncertainty_ppm - 0.1).abs() < 1e-3, "{f:?}");
        // maxerror 8 s: up to 16000 s, sqrt(0.1² + 1e-18·16000·1e12) = 0.16 ppm.
        let old = SyncStatus {
            max_error: 8.0,
            ..synced
        };
        let f = InitialFrequency::decide(None, Some((40.0, &old)), 1e-18);
        assert!((f.uncertainty_ppm - 0.161).abs() < 1e-3, "{f:?}");
        let unsync = SyncStatus::UNSYNCHRONIZED;
        let f = InitialFrequency::decide(None, Some((40.0, &unsync)), 1e-18);
        assert_eq!(f.origin, FrequencyOrigin::Kernel);
        assert_eq!(f.uncertainty_ppm, UNSYNCHRONIZED_KERNEL_UNCERTAINTY_PPM);
        let f = InitialFrequency::decide(None, Some((0.0, &unsync)), 1e-18);
        assert_eq!(f.origin, FrequencyOrigin::Unknown);
        assert_eq!(f.uncertainty_ppm, UNKNOWN_FREQUENCY_UNCERTAINTY_PPM);
        let f = InitialFrequency::decide(None, None, 1e-18);
        assert_eq!((f.ppm, f.origin), (0.0, FrequencyOrigin::Unknown));

        let mut cfg = DisciplineConfig::default();
        InitialFrequency::decide(None, Some((40.0, &synced)), 1e-18).apply(&mut cfg);
        assert_eq!(cfg.initial_frequency_ppm, 40.0);
        assert!((cfg.initial_frequency_uncertainty_ppm - 0.1).abs() < 1e-3);
    }
}
