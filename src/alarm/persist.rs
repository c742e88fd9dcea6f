//! Alarm states that survive a restart: the engine's snapshot in a small
//! JSON file inside the journal directory, replaced atomically (write a
//! temporary file, fsync, rename, fsync the directory).
//!
//! It is saved after the events of a change are recorded, never before: a
//! crash in between can at worst make the gateway raise an alarm again
//! after the restart (a duplicate, with a new id), never lose one.
//!
//! The alarm task keeps its states in the journal now (one named state per
//! alarm, see [`super::task`]); it reads an `alarm-state.json` left by an
//! older version once, to migrate it. Other state files (arming) still use
//! this type.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The alarm-state file of a journal.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn in_dir(dir: &Path) -> StateFile {
        StateFile::named(dir, "alarm-state.json")
    }

    /// Another state file `name` in `dir` (e.g. the arming states).
    pub fn named(dir: &Path, name: &str) -> StateFile {
        StateFile {
            path: dir.join(name),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved snapshot, if any.
    pub fn load(&self) -> std::io::Result<Option<serde_json::Value>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replace the saved snapshot, durably.
    pub fn save(&self, snapshot: &serde_json::Value) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(snapshot)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::in_dir(dir.path());
        assert_eq!(f.load().unwrap(), None);
        let v = serde_json::json!({"version": 1, "alarms": []});
        f.save(&v).unwrap();
        assert_eq!(f.load().unwrap(), Some(v));
        std::fs::write(f.path(), b"{not json").unwrap();
        assert!(f.load().is_err());
    }
}
