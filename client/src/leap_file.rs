//! The `leap-seconds.list` on disk (`clock.leap_seconds_file`). Parsing and
//! the SHA-1 check are pure code in `nts_proto::clock::leap`; this module
//! reads the file and names it in errors.

use nts_proto::clock::{LeapListError, LeapSecondsList};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A leap-seconds file that could not be used; always names the file.
#[derive(Debug, Error)]
pub enum LeapFileError {
    #[error("leap seconds file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("leap seconds file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: LeapListError,
    },
}

/// Read and verify the file. Whether it has expired is for the caller to
/// report (`LeapSecondsList::is_valid_at`); an expired list is still
/// loaded and simply stops deciding.
pub fn read(path: &Path) -> Result<LeapSecondsList, LeapFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| LeapFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    LeapSecondsList::parse(&text).map_err(|source| LeapFileError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leap-seconds.list");
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("leap-seconds.list"), "{e}");
        std::fs::write(&path, "#$ 1\n#@ 2\n100 10\n#h 1 2 3 4 5\n").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(
            e.contains("leap-seconds.list") && e.contains("SHA-1"),
            "{e}"
        );
    }

    /// Debian's tzdata ships the IERS list; when it is there it must verify.
    #[test]
    fn the_system_list_verifies_when_present() {
        let path = Path::new("/usr/share/zoneinfo/leap-seconds.list");
        if path.exists() {
            let l = read(path).unwrap();
            assert!(l.entries.len() >= 28);
        }
    }
}
