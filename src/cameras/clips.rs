//! The clip directory: one `{id}.mp4` per clip, so serving a clip over
//! HTTP is a file lookup by id. A clip being written is `.{id}.mp4.part`
//! and renamed when complete. Kept under `max_bytes` and above
//! `min_free_bytes` of free space, oldest deleted first.

use super::config::ClipsConfig;
use std::path::{Path, PathBuf};

/// Clip directory errors.
#[derive(Debug, thiserror::Error)]
pub enum ClipStoreError {
    #[error("clip directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no room for a clip: {free} bytes free, {needed} needed")]
    NoRoom { free: u64, needed: u64 },
}

/// The clip directory.
#[derive(Clone, Debug)]
pub struct ClipStore {
    dir: PathBuf,
    max_bytes: u64,
    min_free: u64,
    url_prefix: String,
}

impl ClipStore {
    /// The store of `cfg` (no I/O; see [`prepare`](Self::prepare)).
    pub fn new(cfg: &ClipsConfig) -> ClipStore {
        ClipStore {
            dir: cfg.path.clone(),
            max_bytes: cfg.max_bytes,
            min_free: cfg.min_free_bytes,
            url_prefix: cfg.url_prefix.trim_end_matches('/').to_string(),
        }
    }

    /// Create the directory and remove clips left half-written.
    pub fn prepare(&self) -> Result<(), ClipStoreError> {
        self.create_dir()?;
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.ends_with(".mp4.part") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    fn create_dir(&self) -> Result<(), ClipStoreError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| ClipStoreError::Dir {
            path: self.dir.clone(),
            source,
        })
    }

    /// [`new`](Self::new) and [`prepare`](Self::prepare).
    pub fn open(cfg: &ClipsConfig) -> Result<ClipStore, ClipStoreError> {
        let s = ClipStore::new(cfg);
        s.prepare()?;
        Ok(s)
    }

    /// A new clip id: `{camera}-{yyyymmdd}-{hhmmssmmm}-{random}`.
    pub fn new_id(camera: &str, at: chrono::DateTime<chrono::Utc>) -> String {
        format!(
            "{camera}-{}-{:04x}",
            at.format("%Y%m%d-%H%M%S%3f"),
            fastrand::u16(..)
        )
    }

    /// True for a well-formed clip id (no path tricks).
    pub fn is_valid_id(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }

    /// The file of a complete clip, if `id` is well-formed and it exists.
    pub fn path_of(&self, id: &str) -> Option<PathBuf> {
        if !Self::is_valid_id(id) {
            return None;
        }
        let p = self.dir.join(format!("{id}.mp4"));
        p.is_file().then_some(p)
    }

    /// Where the clip is written until complete.
    pub fn part_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!(".{id}.mp4.part"))
    }

    /// Where the complete clip goes.
    pub fn final_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.mp4"))
    }

    /// The clip's URL in event attachments.
    pub fn url_of(&self, id: &str) -> String {
        format!("{}/{id}.mp4", self.url_prefix)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Delete the oldest clips until `needed` more bytes fit under
    /// `max_bytes` and leave `min_free_bytes` free. Returns the ids deleted.
    pub fn make_room(&self, needed: u64) -> Result<Vec<String>, ClipStoreError> {
        // The directory may have been unavailable at start (a card mounted late).
        self.create_dir()?;
        let mut clips = self.list();
        clips.sort_by_key(|c| c.1);
        let mut total: u64 = clips.iter().map(|c| c.2).sum();
        let mut free = free_bytes(&self.dir).unwrap_or(u64::MAX);
        let mut deleted = Vec::new();
        let mut it = clips.into_iter();
        while total + needed > self.max_bytes || free < self.min_free.saturating_add(needed) {
            let Some((path, _, size)) = it.next() else {
                return Err(ClipStoreError::NoRoom {
                    free,
                    needed: self.min_free.saturating_add(needed),
                });
            };
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total -= size;
                    free = free.saturating_add(size);
                    let id = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    tracing::info!(clip = %id, bytes = size, "oldest clip deleted to make room");
                    deleted.push(id);
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot delete clip"),
            }
        }
        Ok(deleted)
    }

    /// Complete clips: (path, modified, size).
    fn list(&self) -> Vec<(PathBuf, std::time::SystemTime, u64)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                !n.starts_with('.') && n.ends_with(".mp4")
            })
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((
                    e.path(),
                    m.modified().unwrap_or(std::time::UNIX_EPOCH),
                    m.len(),
                ))
            })
            .collect()
    }

    /// Bytes the complete clips take.
    pub fn used_bytes(&self) -> u64 {
        self.list().iter().map(|c| c.2).sum()
    }
}

/// Free bytes for unprivileged users on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a valid out pointer.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    (r == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, max: u64) -> ClipStore {
        ClipStore::open(&ClipsConfig {
            path: dir.to_path_buf(),
            max_bytes: max,
            min_free_bytes: 0,
            url_prefix: "/clips/".into(),
        })
        .unwrap()
    }

    #[test]
    fn ids_and_lookup() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), 1 << 30);
        let id = ClipStore::new_id("cam-gate", chrono::Utc::now());
        assert!(ClipStore::is_valid_id(&id), "{id}");
        assert!(s.path_of(&id).is_none());
        std::fs::write(s.final_path(&id), b"x").unwrap();
        assert_eq!(s.path_of(&id), Some(d.path().join(format!("{id}.mp4"))));
        assert!(s.path_of("../etc/passwd").is_none());
        assert!(s.path_of("a/b").is_none());
        assert_eq!(s.url_of(&id), format!("/clips/{id}.mp4"));
    }

    #[test]
    fn deletes_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), 250);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let p = s.final_path(id);
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let t =
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        // 300 used, cap 250: room for 51 more needs two deletions (a, b).
        let gone = s.make_room(51).unwrap();
        assert_eq!(gone, ["a", "b"]);
        assert!(s.path_of("c").is_some());
        assert!(matches!(
            s.make_room(1000),
            Err(ClipStoreError::NoRoom { .. })
        ));
    }

    #[test]
    fn half_written_clips_are_removed_on_open() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(".x.mp4.part"), b"x").unwrap();
        let _ = store(d.path(), 1 << 30);
        assert!(!d.path().join(".x.mp4.part").exists());
    }
}
