//! The storage engine behind the journal, as a small trait.
//!
//! The journal needs very little from its engine: an ordered byte-keyed map
//! with atomic multi-key batches, range reads, a flush that survives a
//! process crash and a sync that survives a power cut. [`SledStorage`] is the
//! production engine; [`MemStorage`] keeps everything in memory and can
//! simulate a crash (drop everything not flushed), for tests.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How long [`SledStorage::open`] waits for sled's lock to be released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A storage engine failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StorageError(pub String);

impl StorageError {
    fn ctx(what: &str, e: impl std::fmt::Display) -> StorageError {
        StorageError(format!("{what}: {e}"))
    }
}

/// One write of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Writes applied in order. Not atomic: a crash may keep a prefix of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(key.into(), value.into()));
    }
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(key.into()));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A key/value pair read from storage.
pub type Entry = (Vec<u8>, Vec<u8>);

/// What the journal needs from a storage engine.
///
/// Ordering guarantee the journal relies on: single writes become durable
/// in the order they were applied (a crash keeps a prefix of them, and
/// everything applied before a successful [`Storage::flush`]).
pub trait Storage: Send + Sync + 'static {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Apply the writes of `batch` in order (visible to readers at once,
    /// durable after the next [`Storage::flush`]).
    fn apply(&self, batch: Batch) -> Result<(), StorageError>;
    /// Up to `max` entries with `start <= key <= end`, in key order.
    fn range(&self, start: &[u8], end: &[u8], max: usize) -> Result<Vec<Entry>, StorageError>;
    /// The entry with the greatest key in `start..=end`.
    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<Entry>, StorageError>;
    /// Make every applied batch survive a process crash.
    fn flush(&self) -> Result<(), StorageError>;
    /// After [`Storage::flush`]: make flushed data survive a power cut
    /// (`fsync` of the data files and their directory).
    fn sync(&self) -> Result<(), StorageError>;
    /// Bytes the store occupies on disk (a `stat`, not a scan).
    fn size_on_disk(&self) -> Result<u64, StorageError>;
    /// Close and open the store again, as after a crash: what was flushed
    /// is kept, a prefix of later writes may be. After a failed write an
    /// engine may refuse every further write until then (sled does, once
    /// its filesystem was full); the journal calls this, with backoff,
    /// until it works.
    fn reopen(&self) -> Result<(), StorageError>;
}

/// The sled engine (one tree; the journal keeps its lanes apart by key
/// prefix so one batch can span lanes and metadata atomically).
pub struct SledStorage {
    /// The open store; `None` after a [`Storage::reopen`] that failed.
    db: std::sync::RwLock<Option<sled::Db>>,
    dir: PathBuf,
    cache_bytes: u64,
    /// sled's data file, opened by us so we can `fsync` it: `fsync` acts on
    /// the file, whichever descriptor it is called on.
    data_file: std::sync::RwLock<Option<File>>,
    dir_file: File,
    /// File names in the directory at its last `fsync`: the directory
    /// itself is synced again only when they change (sled created or
    /// removed a snapshot or blob file).
    synced_names: Mutex<Vec<std::ffi::OsString>>,
    /// Blob files already synced: sled never rewrites a blob in place (a
    /// new version is a new file), so each needs one `fsync`.
    synced_blobs: Mutex<std::collections::HashSet<std::ffi::OsString>>,
}

impl SledStorage {
    /// Open (or create) the store in `dir` with a page cache of
    /// `cache_bytes`. sled's own background flusher is off: the journal
    /// decides when to flush.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledStorage, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::ctx(&format!("creating {}", dir.display()), e))?;
        let (db, data_file) = Self::open_db(dir, cache_bytes)?;
        let dir_file = File::open(dir)
            .map_err(|e| StorageError::ctx(&format!("opening {}", dir.display()), e))?;
        Ok(SledStorage {
            db: std::sync::RwLock::new(Some(db)),
            dir: dir.to_path_buf(),
            cache_bytes,
            data_file: std::sync::RwLock::new(Some(data_file)),
            dir_file,
            synced_names: Mutex::new(Vec::new()),
            synced_blobs: Mutex::new(Default::default()),
        })
    }

    /// Open sled in `dir`, and its data file.
    fn open_db(dir: &Path, cache_bytes: u64) -> Result<(sled::Db, File), StorageError> {
        // sled releases its lock only when its background threads are done
        // with the file, a moment after the last handle is dropped: retry
        // briefly before reporting another holder.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new()
                .path(dir)
                .cache_capacity(cache_bytes)
                .flush_every_ms(None)
                .mode(sled::Mode::LowSpace)
                .open()
            {
                Ok(db) => break db,
                Err(e) => {
                    let msg = e.to_string();
                    if !msg.contains("could not acquire lock") {
                        return Err(StorageError::ctx(
                            &format!("opening {}", dir.display()),
                            msg,
                        ));
                    }
                    if std::time::Instant::now() >= deadline {
                        return Err(StorageError(format!(
                            "cannot open {}: it is locked (in use by another process?): {msg}",
                            dir.display()
                        )));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        };
        let data_path = dir.join("db");
        let data_file = File::open(&data_path)
            .map_err(|e| StorageError::ctx(&format!("opening {}", data_path.display()), e))?;
        Ok((db, data_file))
    }

    /// The open store (a cheap handle clone).
    fn db(&self) -> Result<sled::Db, StorageError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                StorageError(format!("{} is closed (reopen failed)", self.dir.display()))
            })
    }

    fn dir_names(&self) -> Result<Vec<std::ffi::OsString>, StorageError> {
        let mut names: Vec<_> = std::fs::read_dir(&self.dir)
            .map_err(|e| StorageError::ctx(&format!("listing {}", self.dir.display()), e))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        Ok(names)
    }

    fn sync_blobs(&self) -> Result<(), StorageError> {
        // sled writes values too large for its log segments to separate
        // files under `blobs/` and does not fsync them. The journal's
        // payloads are small, so this directory is normally empty.
        let blobs = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&blobs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(StorageError::ctx(
                    &format!("listing {}", blobs.display()),
                    e,
                ))
            }
        };
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = std::collections::HashSet::new();
        let mut any_new = false;
        for entry in entries.flatten() {
            let name = entry.file_name();
            present.insert(name.clone());
            if synced.contains(&name) {
                continue;
            }
            // A blob may be removed concurrently by sled's GC: skip it.
            if let Ok(f) = File::open(entry.path()) {
                f.sync_all().map_err(|e| {
                    StorageError::ctx(&format!("fsync {}", entry.path().display()), e)
                })?;
            }
            any_new = true;
            synced.insert(name);
        }
        // Forget blobs sled removed (their names are never reused).
        synced.retain(|n| present.contains(n));
        if any_new {
            File::open(&blobs)
                .and_then(|d| d.sync_all())
                .map_err(|e| StorageError::ctx(&format!("fsync {}", blobs.display()), e))?;
        }
        Ok(())
    }
}

impl Storage for SledStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db()?
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| StorageError::ctx("read", e))
    }

    fn apply(&self, batch: Batch) -> Result<(), StorageError> {
        // Single-key writes, not `sled::Batch`: sled 0.34 seals and writes
        // its I/O buffer twice for every batch (two `pwrite` +
        // `sync_file_range` each), which caps batches at a few thousand a
        // second. The journal orders its writes so a prefix is consistent.
        let db = self.db()?;
        for op in batch.ops {
            match op {
                Op::Put(k, v) => db.insert(k, v).map(|_| ()),
                Op::Delete(k) => db.remove(k).map(|_| ()),
            }
            .map_err(|e| StorageError::ctx("write", e))?;
        }
        Ok(())
    }

    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<Entry>, StorageError> {
        if start > end {
            return Ok(None);
        }
        match self.db()?.range(start..=end).next_back() {
            None => Ok(None),
            Some(kv) => {
                let (k, v) = kv.map_err(|e| StorageError::ctx("range read", e))?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
        }
    }

    fn range(&self, start: &[u8], end: &[u8], max: usize) -> Result<Vec<Entry>, StorageError> {
        if start > end {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for kv in self.db()?.range(start..=end).take(max) {
            let (k, v) = kv.map_err(|e| StorageError::ctx("range read", e))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db()?
            .flush()
            .map(|_| ())
            .map_err(|e| StorageError::ctx("flush", e))
    }

    fn sync(&self) -> Result<(), StorageError> {
        // fdatasync: the data and the metadata needed to read it back (the
        // file's size) reach the device; only timestamps are left out.
        self.data_file
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .ok_or_else(|| StorageError(format!("{}/db is closed", self.dir.display())))?
            .sync_data()
            .map_err(|e| StorageError::ctx(&format!("fdatasync {}/db", self.dir.display()), e))?;
        self.sync_blobs()?;
        let names = self.dir_names()?;
        let mut synced = self.synced_names.lock().unwrap_or_else(|p| p.into_inner());
        if *synced != names {
            self.dir_file
                .sync_all()
                .map_err(|e| StorageError::ctx(&format!("fsync {}", self.dir.display()), e))?;
            *synced = names;
        }
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        self.db()?
            .size_on_disk()
            .map_err(|e| StorageError::ctx("size on disk", e))
    }

    fn reopen(&self) -> Result<(), StorageError> {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        let mut data_file = self.data_file.write().unwrap_or_else(|p| p.into_inner());
        data_file.take();
        if let Some(old) = db.take() {
            // sled's drop flushes and `sync_all().unwrap()`s its file when
            // it has not failed before; a panic there must not take the
            // journal down with it.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(old))).is_err() {
                tracing::error!(dir = %self.dir.display(), "closing the store panicked");
            }
        }
        let (new, file) = Self::open_db(&self.dir, self.cache_bytes)?;
        *db = Some(new);
        *data_file = Some(file);
        Ok(())
    }
}

/// An in-memory engine for tests. [`MemStorage::crash`] drops every write
/// that was not flushed, as a process crash would.
#[derive(Default)]
pub struct MemStorage {
    inner: Mutex<MemInner>,
}

#[derive(Default)]
struct MemInner {
    live: BTreeMap<Vec<u8>, Vec<u8>>,
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Writes applied since the last flush, in order.
    pending: Vec<Op>,
    flushes: u64,
    syncs: u64,
    entries_read: u64,
    fail_flush: bool,
    fail_apply: bool,
    /// Writes to let through before `fail_apply` turns on.
    apply_budget: Option<u64>,
    flush_delay: std::time::Duration,
    reopens: u64,
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Make every flush take `delay` (to observe group commit).
    pub fn with_flush_delay(delay: std::time::Duration) -> MemStorage {
        let m = MemStorage::default();
        m.lock().flush_delay = delay;
        m
    }
    /// Forget every write since the last flush.
    pub fn crash(&self) {
        self.crash_keeping(0);
    }
    /// Crash keeping the first `n` writes applied since the last flush (a
    /// crash may persist any prefix of them).
    pub fn crash_keeping(&self, n: usize) {
        let mut g = self.lock();
        let mut live = g.durable.clone();
        for op in g.pending.iter().take(n) {
            apply_op(&mut live, op.clone());
        }
        g.live = live.clone();
        g.durable = live;
        g.pending.clear();
    }
    /// Make flushes fail (true) or work again (false).
    pub fn set_fail_flush(&self, fail: bool) {
        self.lock().fail_flush = fail;
    }
    /// Make writes fail (true) or work again (false).
    pub fn set_fail_apply(&self, fail: bool) {
        self.lock().fail_apply = fail;
    }
    /// Let `n` more writes through, then fail every write (until
    /// `set_fail_apply(false)`).
    pub fn fail_apply_after(&self, n: u64) {
        self.lock().apply_budget = Some(n);
    }
    /// Writes applied since the last flush.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
    /// How many entries `get` and `range` have returned so far.
    pub fn entries_read(&self) -> u64 {
        self.lock().entries_read
    }
    /// How many times the store was reopened.
    pub fn reopens(&self) -> u64 {
        self.lock().reopens
    }
    /// How many times flush and sync were called.
    pub fn counts(&self) -> (u64, u64) {
        let g = self.lock();
        (g.flushes, g.syncs)
    }
}

impl Storage for MemStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let mut g = self.lock();
        let v = g.live.get(key).cloned();
        g.entries_read += u64::from(v.is_some());
        Ok(v)
    }
    fn apply(&self, batch: Batch) -> Result<(), StorageError> {
        let mut g = self.lock();
        match g.apply_budget {
            Some(0) => {
                g.apply_budget = None;
                g.fail_apply = true;
            }
            Some(n) => g.apply_budget = Some(n - 1),
            None => {}
        }
        if g.fail_apply {
            return Err(StorageError("write failed (simulated)".into()));
        }
        for op in batch.ops {
            g.pending.push(op.clone());
            apply_op(&mut g.live, op);
        }
        Ok(())
    }
    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<Entry>, StorageError> {
        if start > end {
            return Ok(None);
        }
        let mut g = self.lock();
        let out = g
            .live
            .range(start.to_vec()..=end.to_vec())
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone()));
        g.entries_read += u64::from(out.is_some());
        Ok(out)
    }
    fn range(&self, start: &[u8], end: &[u8], max: usize) -> Result<Vec<Entry>, StorageError> {
        if start > end {
            return Ok(Vec::new());
        }
        let mut g = self.lock();
        let out: Vec<Entry> = g
            .live
            .range(start.to_vec()..=end.to_vec())
            .take(max)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        g.entries_read += out.len() as u64;
        Ok(out)
    }
    fn flush(&self) -> Result<(), StorageError> {
        let (delay, snapshot, applied) = {
            let g = self.lock();
            if g.fail_flush {
                return Err(StorageError("flush failed (simulated)".into()));
            }
            (g.flush_delay, g.live.clone(), g.pending.len())
        };
        std::thread::sleep(delay);
        let mut g = self.lock();
        g.durable = snapshot;
        g.pending.drain(..applied);
        g.flushes += 1;
        Ok(())
    }
    fn sync(&self) -> Result<(), StorageError> {
        self.lock().syncs += 1;
        Ok(())
    }
    fn reopen(&self) -> Result<(), StorageError> {
        {
            let mut g = self.lock();
            if g.fail_apply || g.fail_flush {
                return Err(StorageError("reopen failed (simulated)".into()));
            }
            g.reopens += 1;
        }
        self.crash();
        Ok(())
    }
    fn size_on_disk(&self) -> Result<u64, StorageError> {
        let g = self.lock();
        Ok(g.durable
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum())
    }
}

fn apply_op(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, op: Op) {
    match op {
        Op::Put(k, v) => {
            map.insert(k, v);
        }
        Op::Delete(k) => {
            map.remove(&k);
        }
    }
}
