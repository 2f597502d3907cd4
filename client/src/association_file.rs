//! Each NTS source's saved association (`nts.state_dir/NAME.nts`: keys,
//! cookies, time server), so a restart needs no key exchange. The format is
//! pure code in `nts_proto::source::SavedAssociation`; the directory and
//! file rules are [`crate::state_dir`]'s.

use crate::config::{ClockMode, Config};
use crate::state_dir::{Access, StateDir, StateDirError};
use anyhow::{anyhow, Result};
use nts_proto::source::SavedAssociation;
use std::sync::Arc;

/// The agent's files in the state directory and who may read them: the
/// associations and their temporary files hold keys.
pub fn agent_file(name: &str) -> Option<Access> {
    (name.ends_with(".nts") || name.ends_with(".nts.tmp") || name.starts_with(".write-test"))
        .then_some(Access::Secret)
}

/// The file name that keeps a source's association: one per source name.
pub fn file_name(source: &str) -> String {
    let safe: String = source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.nts")
}

/// A state-directory error as one line that names the key.
fn key(e: StateDirError) -> anyhow::Error {
    anyhow!("nts.state_dir: {e}")
}

/// Create (0700) and check the state directory when one is configured:
/// every file of the agent in it must pass the rules, and the agent must be
/// able to write there (probed), or start-up stops naming the path.
pub fn prepare_state_dir(cfg: &Config) -> Result<Option<Arc<StateDir>>> {
    let Some(path) = &cfg.nts.state_dir else {
        return Ok(None);
    };
    let dir = StateDir::create(path).map_err(key)?;
    dir.scan(agent_file).map_err(key)?;
    dir.write(".write-test", b"", Access::Secret)
        .and_then(|()| dir.remove(".write-test"))
        .map_err(key)?;
    Ok(Some(Arc::new(dir)))
}

/// What `--check-config` checks of the files start-up would use, creating
/// nothing: the state directory and the drift file (discipline mode).
pub fn check_state(cfg: &Config) -> Result<()> {
    if let Some(path) = &cfg.nts.state_dir {
        StateDir::check(path, agent_file).map_err(key)?;
    }
    if let (Some(p), ClockMode::Discipline) = (&cfg.clock.drift_file, cfg.clock.mode) {
        crate::drift_file::check(p).map_err(|e| anyhow!("clock.drift_file: {e}"))?;
    }
    Ok(())
}

/// One source's association file.
#[derive(Debug, Clone)]
pub struct AssociationFile {
    dir: Arc<StateDir>,
    name: String,
}

impl AssociationFile {
    pub fn new(dir: Arc<StateDir>, source: &str) -> Self {
        Self {
            dir,
            name: file_name(source),
        }
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join(&self.name)
    }

    /// The saved association. A file that fails the rules (a link, another
    /// user's, readable by others) is an error that stops start-up; a missing
    /// one is normal; an unreadable or damaged one is said and ignored.
    pub fn load(&self) -> Result<Option<SavedAssociation>, StateDirError> {
        let text = match self.dir.read(&self.name, Access::Secret) {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(None),
            Err(e @ StateDirError::Unsafe { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!("cannot read saved NTS cookies: {e}");
                return Ok(None);
            }
        };
        match SavedAssociation::from_text(&text) {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                tracing::warn!(file = %self.path().display(), "ignoring damaged saved NTS cookies: {e}");
                Ok(None)
            }
        }
    }

    /// Write the association (0600, atomically), or remove the file when there is none.
    pub fn store(&self, saved: Option<&SavedAssociation>) -> Result<(), StateDirError> {
        match saved {
            Some(s) => self
                .dir
                .write(&self.name, s.to_text().as_bytes(), Access::Secret),
            None => self.dir.remove(&self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(file_name("[::1]:4460"), "___1__4460.nts");
        assert_eq!(file_name("time.example:4460"), "time.example_4460.nts");
        assert_eq!(agent_file("a.nts.tmp"), Some(Access::Secret));
        assert_eq!(agent_file("README"), None);
    }

    #[test]
    fn a_planted_foreign_file_stops_loading() {
        let t = tempfile::tempdir().unwrap();
        let dir = Arc::new(StateDir::create(&t.path().join("s")).unwrap());
        let f = AssociationFile::new(dir, "x:1");
        assert!(f.load().unwrap().is_none());
        std::fs::write(f.path(), "nts-association 1\n").unwrap();
        std::fs::set_permissions(
            f.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        assert!(f.load().unwrap().is_none(), "damaged: ignored");
        std::os::unix::fs::chown(f.path(), Some(12345), None).unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("owned by uid 12345"), "{e}");
        f.store(None).unwrap();
        assert!(!f.path().exists());
    }
}
