//! Applied configuration versions, kept in `<journal path>/config-history/`:
//! `NNNNNN.toml` (the file as applied) and `NNNNNN.json` (when, who, a
//! summary, its version hash). The newest `keep` versions stay.
//! Blocking file I/O: call from a blocking thread.

use crate::event::Timestamp;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Directory name inside the state directory.
pub const HISTORY_DIR: &str = "config-history";

/// Why the history could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("config history {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config history: no version {0}")]
    NotFound(u64),
}

/// One applied version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// Increasing number of the version.
    pub id: u64,
    pub ts: Timestamp,
    /// Who applied it (`None`: the file as found, changed outside the page).
    pub user: Option<String>,
    /// What changed (edits, or line counts of a raw edit), URLs redacted.
    pub summary: String,
    /// Version hash of the file's bytes.
    pub version: String,
}

/// The history directory.
#[derive(Debug)]
pub struct History {
    dir: PathBuf,
    keep: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HistoryError + '_ {
    move |source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl History {
    /// The history in `state_dir`, keeping the newest `keep` versions (at least 2).
    pub fn new(state_dir: &Path, keep: usize) -> History {
        History {
            dir: state_dir.join(HISTORY_DIR),
            keep: keep.max(2),
        }
    }

    fn file(&self, id: u64, ext: &str) -> PathBuf {
        self.dir.join(format!("{id:06}.{ext}"))
    }

    /// Every kept version, newest first.
    pub fn list(&self) -> Result<Vec<VersionMeta>, HistoryError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut v: Vec<VersionMeta> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| std::fs::read(&p).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        v.sort_by_key(|m| std::cmp::Reverse(m.id));
        Ok(v)
    }

    /// The newest version, if any.
    pub fn latest(&self) -> Result<Option<VersionMeta>, HistoryError> {
        Ok(self.list()?.into_iter().next())
    }

    /// The text of version `id`.
    pub fn text(&self, id: u64) -> Result<String, HistoryError> {
        let p = self.file(id, "toml");
        match std::fs::read_to_string(&p) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(HistoryError::NotFound(id)),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// The version before `id` that is still kept.
    pub fn previous(&self, id: u64) -> Result<Option<VersionMeta>, HistoryError> {
        Ok(self.list()?.into_iter().find(|m| m.id < id))
    }

    /// Record `text` as a new version; drops versions beyond `keep`.
    pub fn record(
        &self,
        text: &str,
        user: Option<&str>,
        summary: &str,
        version: &str,
    ) -> Result<VersionMeta, HistoryError> {
        // Versions hold URL credentials: owner only.
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(io(&self.dir))?;
            // A directory made by an older version: tightened too.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
        }
        let list = self.list()?;
        let id = list.first().map_or(1, |m| m.id + 1);
        let meta = VersionMeta {
            id,
            ts: Timestamp::now(),
            user: user.map(str::to_string),
            summary: summary.to_string(),
            version: version.to_string(),
        };
        let t = self.file(id, "toml");
        super::write_atomic(&t, text.as_bytes()).map_err(io(&t))?;
        let m = self.file(id, "json");
        let json = serde_json::to_vec(&meta).unwrap_or_default();
        super::write_atomic(&m, &json).map_err(io(&m))?;
        for old in list.iter().skip(self.keep.saturating_sub(1)) {
            let _ = std::fs::remove_file(self.file(old.id, "json"));
            let _ = std::fs::remove_file(self.file(old.id, "toml"));
        }
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_lists_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::new(dir.path(), 3);
        assert!(h.list().unwrap().is_empty());
        for i in 1..=5 {
            let m = h
                .record(&format!("v{i}"), Some("wang"), &format!("s{i}"), "x")
                .unwrap();
            assert_eq!(m.id, i);
        }
        let ids: Vec<u64> = h.list().unwrap().iter().map(|m| m.id).collect();
        assert_eq!(ids, [5, 4, 3]);
        assert_eq!(h.text(4).unwrap(), "v4");
        assert!(matches!(h.text(1), Err(HistoryError::NotFound(1))));
        assert_eq!(h.previous(4).unwrap().unwrap().id, 3);
        assert!(h.previous(3).unwrap().is_none());
        assert_eq!(h.latest().unwrap().unwrap().summary, "s5");
        // Versions hold URL credentials: owner only.
        use std::os::unix::fs::PermissionsExt;
        for ext in ["toml", "json"] {
            let mode = std::fs::metadata(h.file(5, ext))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{ext}");
        }
        let mode = std::fs::metadata(dir.path().join(HISTORY_DIR))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
