//! The drift file on disk (`clock.drift_file`): the frequency correction and
//! its uncertainty, read at start and written while disciplining. The
//! format and what to do with it are pure code in
//! `nts_proto::clock::drift`; this module only reads and writes the file.

use crate::state_dir::{split_file, Access, StateDir, StateDirError};
use nts_proto::clock::{DriftParseError, DriftRecord};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// A drift file that could not be read or written; always names the file.
#[derive(Debug, Error)]
pub enum DriftFileError {
    /// Its directory or the file fails the state-directory rules, or I/O failed.
    #[error("drift file {0}")]
    State(#[from] StateDirError),
    #[error("drift file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: DriftParseError,
    },
}

/// The drift file's directory, checked like the state directory: the file
/// is opened relative to it and never through a link.
fn open_dir(path: &Path) -> Result<(StateDir, &str), DriftFileError> {
    let (dir, name) = split_file(path)?;
    Ok((StateDir::open(dir)?, name))
}

/// What start-up and `--check-config` check: the directory and, if there,
/// the file (a regular file of the agent's user that only it may write).
pub fn check(path: &Path) -> Result<(), DriftFileError> {
    let (dir, name) = open_dir(path)?;
    dir.read(name, Access::Public)?;
    Ok(())
}

/// Read the drift file; Ok(None) when it does not exist yet (first start).
pub fn read(path: &Path) -> Result<Option<DriftRecord>, DriftFileError> {
    let (dir, name) = open_dir(path)?;
    let Some(text) = dir.read(name, Access::Public)? else {
        return Ok(None);
    };
    DriftRecord::parse(&text)
        .map(Some)
        .map_err(|source| DriftFileError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// Write the record atomically, mode 0644 (no secret in it): a crash leaves
/// the old file or the new one, never half of one, and a planted link is
/// refused, never followed.
pub fn write(path: &Path, record: &DriftRecord) -> Result<(), DriftFileError> {
    let (dir, name) = open_dir(path)?;
    dir.write(name, record.to_text().as_bytes(), Access::Public)?;
    Ok(())
}

/// The current Unix time in whole seconds (for [`DriftRecord::written_unix`]
/// and for aging a record read at start).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// When to write: at most every `interval`, and at shutdown.
#[derive(Debug, Clone)]
pub struct DriftWriter {
    path: PathBuf,
    interval: Duration,
    last: Option<std::time::Instant>,
}

impl DriftWriter {
    pub fn new(path: PathBuf, interval: Duration) -> Self {
        Self {
            path,
            interval,
            last: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `record` (stamped with the time now) if `interval` has passed
    /// since the last write, or `force` (shutdown). Returns whether it wrote.
    pub fn maybe_write(
        &mut self,
        record: Option<DriftRecord>,
        now: std::time::Instant,
        force: bool,
    ) -> Result<bool, DriftFileError> {
        let Some(mut record) = record else {
            return Ok(false);
        };
        let due = force
            || self
                .last
                .is_none_or(|t| now.duration_since(t) >= self.interval);
        if !due {
            return Ok(false);
        }
        record.written_unix = Some(unix_now());
        write(&self.path, &record)?;
        self.last = Some(now);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn rec(ppm: f64) -> DriftRecord {
        DriftRecord {
            frequency_ppm: ppm,
            uncertainty_ppm: 0.01,
            written_unix: Some(1_764_547_200),
        }
    }

    #[test]
    fn write_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drift");
        assert!(read(&path).unwrap().is_none());
        write(&path, &rec(-12.5)).unwrap();
        assert_eq!(read(&path).unwrap(), Some(rec(-12.5)));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        write(&path, &rec(3.25)).unwrap();
        assert_eq!(read(&path).unwrap(), Some(rec(3.25)));
        assert!(!dir.path().join("drift.tmp").exists());
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drift");
        std::fs::write(&path, "not a number 1\n").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("line 1"), "{e}");
        let missing_dir = dir.path().join("nope").join("drift");
        let e = write(&missing_dir, &rec(1.0)).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn planted_links_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "-1.5 0.01 1764547200\n").unwrap();
        let path = dir.path().join("drift");
        std::os::unix::fs::symlink(&victim, dir.path().join("drift.tmp")).unwrap();
        let e = write(&path, &rec(7.0)).unwrap_err().to_string();
        assert!(
            e.contains("drift.tmp") && e.contains("symbolic link"),
            "{e}"
        );
        std::fs::remove_file(dir.path().join("drift.tmp")).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "-1.5 0.01 1764547200\n"
        );
    }

    #[test]
    fn writer_keeps_its_interval() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = DriftWriter::new(dir.path().join("drift"), Duration::from_secs(3600));
        let t0 = std::time::Instant::now();
        assert!(!w.maybe_write(None, t0, true).unwrap());
        assert!(w.maybe_write(Some(rec(1.0)), t0, false).unwrap());
        assert!(!w
            .maybe_write(Some(rec(2.0)), t0 + Duration::from_secs(60), false)
            .unwrap());
        assert!(w
            .maybe_write(Some(rec(3.0)), t0 + Duration::from_secs(61), true)
            .unwrap());
        assert!(w
            .maybe_write(Some(rec(4.0)), t0 + Duration::from_secs(3700), false)
            .unwrap());
        let got = read(w.path()).unwrap().unwrap();
        assert_eq!(got.frequency_ppm, 4.0);
        assert!(got.written_unix.unwrap() > 1_700_000_000);
    }
}
