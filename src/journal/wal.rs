//! The write-ahead log: what makes a recorded event durable between two
//! checkpoints of the store.
//!
//! Flushing sled makes it write (and us `fsync`) its log segment and any
//! node pages it consolidated: hundreds of kilobytes and several files
//! for one alarm. The WAL instead takes the events' payloads as small
//! records at the end of a preallocated file and makes them durable with
//! one `fdatasync`. Because the file's blocks are allocated and written
//! once, at creation, `fdatasync` flushes data only: no block allocation,
//! no size change, no filesystem-journal commit.
//!
//! The store itself is flushed and synced only at checkpoints (every
//! `telemetry_flush_s`, when the WAL is full, at shutdown); then the WAL
//! starts a new generation. At open, records newer than the store's last
//! event are replayed into it.
//!
//! File layout (little-endian):
//!
//! ```text
//! header  (32 bytes): magic "EGWAL\0\0\x01", generation u64, crc32 of the
//!                     first 16 bytes u32, zero padding
//! record  (16 + n):   payload length n u32, crc32 of (generation, seq,
//!                     payload) u32, seq u64, payload
//! ```
//!
//! The top byte of a record's `seq` field is its kind (see [`tagged`]):
//! 0 for an event (the field is its seq; files written before kinds
//! existed hold only these), 1 for a named state snapshot (the rest is its
//! version), 2 for a sink's cursor (the rest is the position), 3 for the
//! removal of a named state (the rest is its version, ordered with the
//! snapshots' versions; payload: name length u8, name). Files written
//! before removals existed hold no kind 3 and replay as before; a reader
//! that predates kind 3 skips such records (the state stays: an alarm may
//! come back after a downgrade, none is lost).
//!
//! A new generation overwrites only the header: records of an older
//! generation that follow fail their checksum (the generation is part of
//! it) and end the scan, as does an all-zero or torn record.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"EGWAL\0\0\x01";
const HEADER: u64 = 32;
const RECORD_HEADER: usize = 16;

/// Record kinds, in the top byte of the `seq` field.
pub const KIND_EVENT: u8 = 0;
/// A named state snapshot: payload `name len u8, name, data`; value: version.
pub const KIND_STATE: u8 = 1;
/// A sink's cursor: payload `lane u8 (b'e' or b't'), sink name`; value: position.
pub const KIND_CURSOR: u8 = 2;
/// A named state's removal: payload `name len u8, name`; value: version.
pub const KIND_STATE_REMOVED: u8 = 3;
const VALUE_MASK: u64 = (1 << 56) - 1;

/// The `seq` field of a record of `kind` carrying `value` (< 2^56).
pub fn tagged(kind: u8, value: u64) -> u64 {
    (u64::from(kind) << 56) | (value & VALUE_MASK)
}

/// The kind of a record's `seq` field.
pub fn kind(field: u64) -> u8 {
    (field >> 56) as u8
}

/// The value of a record's `seq` field (the seq, for an event).
pub fn value(field: u64) -> u64 {
    field & VALUE_MASK
}

/// Size of the WAL file. Larger commits go straight to a checkpoint.
pub const WAL_BYTES: u64 = 2 * 1024 * 1024;

/// One replayed record.
#[derive(Debug, Clone, PartialEq)]
pub struct WalRecord {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// The open WAL file.
pub struct Wal {
    file: File,
    path: PathBuf,
    generation: u64,
    /// Offset of the next record.
    end: u64,
    capacity: u64,
    fsync: bool,
    buf: Vec<u8>,
}

fn record_crc(generation: u64, seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&generation.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn header(generation: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Bytes of a page (the unit of preallocation writes).
const PAGE: usize = 4096;

/// Drop the file's clean pages from the page cache after reading it whole:
/// reading fills the cache with large folios (readahead), and a small
/// append into one would dirty the whole folio. Advisory; errors ignored.
fn drop_cache(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads its arguments; the descriptor is
    // open for the duration of the call.
    let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

fn ctx(what: impl std::fmt::Display, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl Wal {
    /// Open the WAL at `path` (creating and preallocating it when missing,
    /// short or unreadable) and return the records of its current
    /// generation, in file order. The caller replays them into the store,
    /// checkpoints, then calls [`reset`](Self::reset).
    pub fn open(path: &Path, capacity: u64, fsync: bool) -> io::Result<(Wal, Vec<WalRecord>)> {
        let capacity = capacity.max(HEADER + 4096);
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| ctx(format!("opening {}", path.display()), e))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .map_err(|e| ctx(format!("reading {}", path.display()), e))?;
        let mut wal = Wal {
            file,
            path: path.to_path_buf(),
            generation: 0,
            end: HEADER,
            capacity,
            fsync,
            buf: Vec::new(),
        };
        let (generation, records, end) = parse(&data);
        if data.len() as u64 >= capacity && generation.is_some() {
            wal.generation = generation.unwrap_or(0);
            wal.end = end;
            drop_cache(&wal.file);
            return Ok((wal, records));
        }
        if existed && !data.is_empty() && generation.is_none() {
            tracing::warn!(path = %path.display(), "journal WAL header unreadable; starting a new one");
        }
        // Create (or grow) the file: write every block once, so later
        // `fdatasync`s never allocate. One page per write: the page cache
        // then holds the file in single pages, so an append dirties (and
        // writeback writes) one page, not a large folio of many (Linux
        // 6.x gives ext4 large folios sized by the writes that create them).
        wal.generation = generation.unwrap_or(0);
        let zeros = vec![0u8; PAGE];
        let mut off = data.len() as u64;
        while off < capacity {
            let n = zeros.len().min((capacity - off) as usize);
            wal.file
                .write_all_at(&zeros[..n], off)
                .map_err(|e| ctx(format!("preallocating {}", path.display()), e))?;
            off += n as u64;
        }
        wal.end = end.min(capacity);
        if fsync {
            wal.file
                .sync_all()
                .map_err(|e| ctx(format!("fsync {}", path.display()), e))?;
            if let Some(dir) = path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| ctx(format!("fsync {}", dir.display()), e))?;
            }
        }
        drop_cache(&wal.file);
        Ok((wal, records))
    }

    /// Append records (seq, payload) after the last one. Returns `false`,
    /// writing nothing, when they do not fit: the caller checkpoints instead.
    /// The records are durable only after [`sync`](Self::sync).
    pub fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> io::Result<bool> {
        self.buf.clear();
        for (seq, payload) in records {
            let Ok(len) = u32::try_from(payload.len()) else {
                return Ok(false);
            };
            self.buf.extend_from_slice(&len.to_le_bytes());
            self.buf
                .extend_from_slice(&record_crc(self.generation, seq, payload).to_le_bytes());
            self.buf.extend_from_slice(&seq.to_le_bytes());
            self.buf.extend_from_slice(payload);
        }
        if self.buf.is_empty() {
            return Ok(true);
        }
        // Keep room for a zero record header after the last record, so a
        // scan always finds the end inside the file.
        if self.end + self.buf.len() as u64 + RECORD_HEADER as u64 > self.capacity {
            return Ok(false);
        }
        self.file
            .write_all_at(&self.buf, self.end)
            .map_err(|e| ctx(format!("writing {}", self.path.display()), e))?;
        self.end += self.buf.len() as u64;
        Ok(true)
    }

    /// Make the appended records durable (`fdatasync`), when fsync is on.
    pub fn sync(&self) -> io::Result<()> {
        if self.fsync {
            self.file
                .sync_data()
                .map_err(|e| ctx(format!("fdatasync {}", self.path.display()), e))?;
        }
        Ok(())
    }

    /// Start a new generation: every record so far is in the store (which
    /// the caller has just checkpointed) and no longer needed.
    pub fn reset(&mut self) -> io::Result<()> {
        if self.end == HEADER && self.generation != 0 {
            return Ok(());
        }
        let next = self.generation.wrapping_add(1).max(1);
        self.file
            .write_all_at(&header(next), 0)
            .map_err(|e| ctx(format!("writing {}", self.path.display()), e))?;
        self.sync()?;
        self.generation = next;
        self.end = HEADER;
        Ok(())
    }

    /// The records of the current generation, read back from the file.
    pub fn read_back(&self) -> io::Result<Vec<WalRecord>> {
        let mut data = vec![0u8; self.end as usize];
        self.file
            .read_exact_at(&mut data, 0)
            .map_err(|e| ctx(format!("reading {}", self.path.display()), e))?;
        let (_, records, _) = parse(&data);
        drop_cache(&self.file);
        Ok(records)
    }

    /// No record since the last reset.
    pub fn is_empty(&self) -> bool {
        self.end == HEADER
    }
}

/// Parse a WAL image: (generation if the header is valid, records, end offset).
fn parse(data: &[u8]) -> (Option<u64>, Vec<WalRecord>, u64) {
    let mut records = Vec::new();
    if data.len() < HEADER as usize || &data[..8] != MAGIC {
        return (None, records, HEADER);
    }
    let crc = u32::from_le_bytes(data[16..20].try_into().unwrap_or_default());
    if crc != crc32fast::hash(&data[..16]) {
        return (None, records, HEADER);
    }
    let generation = u64::from_le_bytes(data[8..16].try_into().unwrap_or_default());
    let mut off = HEADER as usize;
    while off + RECORD_HEADER <= data.len() {
        let h = &data[off..off + RECORD_HEADER];
        let len = u32::from_le_bytes(h[0..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(h[4..8].try_into().unwrap_or_default());
        let seq = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
        let start = off + RECORD_HEADER;
        let Some(payload) = start.checked_add(len).and_then(|e| data.get(start..e)) else {
            break;
        };
        if (len == 0 && crc == 0 && seq == 0) || record_crc(generation, seq, payload) != crc {
            break;
        }
        records.push(WalRecord {
            seq,
            payload: payload.to_vec(),
        });
        off = start + len;
    }
    (Some(generation), records, off as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(w: &[(u64, &str)]) -> Vec<WalRecord> {
        w.iter()
            .map(|(s, p)| WalRecord {
                seq: *s,
                payload: p.as_bytes().to_vec(),
            })
            .collect()
    }

    #[test]
    fn records_survive_reopen_and_reset_drops_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, r) = Wal::open(&path, 8192, true).unwrap();
        assert!(r.is_empty());
        wal.reset().unwrap();
        assert!(wal.append([(1, &b"one"[..]), (2, &b"two"[..])]).unwrap());
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
        let (mut wal, r) = Wal::open(&path, 8192, true).unwrap();
        assert_eq!(r, recs(&[(1, "one"), (2, "two")]));
        assert!(wal.append([(3, &b"three"[..])]).unwrap());
        drop(wal);
        let (mut wal, r) = Wal::open(&path, 8192, true).unwrap();
        assert_eq!(r, recs(&[(1, "one"), (2, "two"), (3, "three")]));
        wal.reset().unwrap();
        drop(wal);
        // The old records are still in the file but of the old generation.
        let (_, r) = Wal::open(&path, 8192, true).unwrap();
        assert!(r.is_empty(), "{r:?}");
    }

    #[test]
    fn new_generation_hides_longer_old_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path, 8192, false).unwrap();
        wal.reset().unwrap();
        wal.append([(1, &b"aaaa"[..]), (2, &b"bbbb"[..]), (3, &b"cccc"[..])])
            .unwrap();
        wal.reset().unwrap();
        wal.append([(4, &b"dddd"[..])]).unwrap();
        drop(wal);
        let (_, r) = Wal::open(&path, 8192, false).unwrap();
        assert_eq!(r, recs(&[(4, "dddd")]));
    }

    #[test]
    fn torn_or_garbage_tail_ends_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path, 8192, false).unwrap();
        wal.reset().unwrap();
        wal.append([(1, &b"first"[..]), (2, &b"second"[..])])
            .unwrap();
        drop(wal);
        // Corrupt one byte of the second record's payload.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let second = HEADER + RECORD_HEADER as u64 + 5 + RECORD_HEADER as u64;
        f.write_all_at(b"X", second + 2).unwrap();
        drop(f);
        let (_, r) = Wal::open(&path, 8192, false).unwrap();
        assert_eq!(r, recs(&[(1, "first")]));
    }

    #[test]
    fn full_wal_refuses_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path, 4096 + HEADER, false).unwrap();
        wal.reset().unwrap();
        let big = vec![7u8; 3000];
        assert!(wal.append([(1, &big[..])]).unwrap());
        assert!(!wal.append([(2, &big[..])]).unwrap());
        drop(wal);
        let (_, r) = Wal::open(&path, 4096 + HEADER, false).unwrap();
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn garbage_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        std::fs::write(&path, b"not a wal at all").unwrap();
        let (mut wal, r) = Wal::open(&path, 8192, false).unwrap();
        assert!(r.is_empty());
        wal.reset().unwrap();
        wal.append([(9, &b"x"[..])]).unwrap();
        drop(wal);
        let (_, r) = Wal::open(&path, 8192, false).unwrap();
        assert_eq!(r, recs(&[(9, "x")]));
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes() {
        let mut data = header(3).to_vec();
        for i in 0..2000u32 {
            data.push((i.wrapping_mul(2654435761) >> 13) as u8);
            let _ = parse(&data);
        }
    }
}

/// Two WAL files used in turn, so the store can be checkpointed in the
/// background: appends move to the other file (which must be empty), the
/// checkpoint flushes the store, and only then is the retired file reset.
/// Commits never wait for a checkpoint.
pub struct WalPair {
    files: [Wal; 2],
    active: usize,
    /// The other file holds records that only a checkpoint started after
    /// the switch may drop.
    retired: bool,
    /// Bumped by every switch and every full reset: a background
    /// checkpoint resets the retired file only if nothing moved since.
    epoch: u64,
}

impl WalPair {
    /// Open (or create) `dir/wal.0` and `dir/wal.1`; returns the records of
    /// both, by seq, without duplicates.
    pub fn open(dir: &Path, capacity: u64, fsync: bool) -> io::Result<(WalPair, Vec<WalRecord>)> {
        let (a, mut ra) = Wal::open(&dir.join("wal.0"), capacity, fsync)?;
        let (b, rb) = Wal::open(&dir.join("wal.1"), capacity, fsync)?;
        ra.extend(rb);
        sort_dedup(&mut ra);
        Ok((
            WalPair {
                files: [a, b],
                active: 0,
                retired: false,
                epoch: 0,
            },
            ra,
        ))
    }

    /// Append `records` then `more` to the active file; when it is full
    /// and the other file is free, switch to it (returns `Rotated`: a
    /// checkpoint is due).
    pub fn append(
        &mut self,
        records: &[(u64, Vec<u8>)],
        more: &[(u64, Vec<u8>)],
    ) -> io::Result<Appended> {
        let it = || records.iter().chain(more).map(|(s, p)| (*s, p.as_slice()));
        if self.files[self.active].append(it())? {
            return Ok(Appended::Yes);
        }
        if !self.rotate() {
            return Ok(Appended::No);
        }
        Ok(if self.files[self.active].append(it())? {
            Appended::Rotated
        } else {
            Appended::No
        })
    }

    /// Make the active file's records durable.
    pub fn sync(&self) -> io::Result<()> {
        self.files[self.active].sync()
    }

    /// After a failed `fdatasync` through another handle: `fdatasync`
    /// both files through this pair's own handles, ignoring the result,
    /// so that the write-back error Linux reports once per open file is
    /// reported here now, not by the reset after the checkpoint that
    /// replaces what was lost.
    pub fn clear_reported_errors(&self) {
        for f in &self.files {
            let _ = f.file.sync_data();
        }
    }

    /// Index (0 or 1) of the file appends go to.
    pub fn active(&self) -> usize {
        self.active
    }

    /// The two files' paths, by index.
    pub fn paths(&self) -> [&Path; 2] {
        [&self.files[0].path, &self.files[1].path]
    }

    /// Whether [`sync`](Self::sync) `fdatasync`s (fsync on).
    pub fn fsyncs(&self) -> bool {
        self.files[0].fsync
    }

    /// Before a background checkpoint: move appends to the other file.
    /// False when that file still waits for an earlier checkpoint.
    pub fn rotate(&mut self) -> bool {
        if self.files[self.active].is_empty() {
            return !self.retired;
        }
        if self.retired {
            return false;
        }
        self.active = 1 - self.active;
        self.retired = true;
        self.epoch += 1;
        true
    }

    /// Current epoch (take it right after [`rotate`](Self::rotate)).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// After a checkpoint that started after [`rotate`](Self::rotate), in
    /// `epoch`: the retired file's records are in the store. Does nothing
    /// if the files moved since (a full reset, another switch).
    pub fn reset_retired(&mut self, epoch: u64) -> io::Result<()> {
        if self.retired && self.epoch == epoch {
            self.files[1 - self.active].reset()?;
            self.retired = false;
        }
        Ok(())
    }

    /// After a checkpoint with no append since it started: both files.
    pub fn reset_all(&mut self) -> io::Result<()> {
        self.files[0].reset()?;
        self.files[1].reset()?;
        self.retired = false;
        self.epoch += 1;
        Ok(())
    }

    /// Every record not yet checkpointed, read back from both files, by
    /// seq, without duplicates (as [`open`](Self::open) returns them).
    pub fn read_back(&self) -> io::Result<Vec<WalRecord>> {
        let mut all = self.files[0].read_back()?;
        all.extend(self.files[1].read_back()?);
        sort_dedup(&mut all);
        Ok(all)
    }

    /// Records not yet checkpointed (in either file).
    pub fn has_records(&self) -> bool {
        self.retired || !self.files[self.active].is_empty()
    }
}

/// By `seq` field (events by seq, then the other kinds), without
/// duplicates: a record can be in both files when a reopen wrote it again.
fn sort_dedup(records: &mut Vec<WalRecord>) {
    records.sort_by_key(|r| r.seq);
    records.dedup_by(|a, b| a.seq == b.seq && a.payload == b.payload);
}

/// Outcome of [`WalPair::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Yes,
    /// Appended after switching files: checkpoint to free the other one.
    Rotated,
    /// Not appended (no room): the caller must checkpoint synchronously.
    No,
}

#[cfg(test)]
mod pair_tests {
    use super::*;

    impl WalPair {
        fn append_one(&mut self, r: &[(u64, Vec<u8>)]) -> io::Result<Appended> {
            self.append(r, &[])
        }
    }

    #[test]
    fn kinds_share_the_seq_field_and_events_read_as_before() {
        assert_eq!(tagged(KIND_EVENT, 42), 42);
        let f = tagged(KIND_STATE, 7);
        assert_eq!((kind(f), value(f)), (KIND_STATE, 7));
        assert_eq!(kind(tagged(KIND_CURSOR, u64::MAX)), KIND_CURSOR);
        assert!(
            f > tagged(KIND_EVENT, VALUE_MASK),
            "other kinds sort after events"
        );
        let dir = tempfile::tempdir().unwrap();
        let (mut p, _) = WalPair::open(dir.path(), 8192, false).unwrap();
        p.reset_all().unwrap();
        let cur =
            |upto: u64, sink: &str| (tagged(KIND_CURSOR, upto), [b"e", sink.as_bytes()].concat());
        p.append(&[(1, b"a".to_vec())], &[cur(1, "uplink"), cur(1, "push")])
            .unwrap();
        drop(p);
        let (_, r) = WalPair::open(dir.path(), 8192, false).unwrap();
        assert_eq!(r.len(), 3, "same field, different payloads: both kept");
        assert_eq!(r[0].seq, 1);
    }

    fn rec(seq: u64) -> (u64, Vec<u8>) {
        (seq, vec![b'x'; 1200])
    }

    #[test]
    fn rotation_keeps_every_record_until_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, r) = WalPair::open(dir.path(), 4096 + HEADER, false).unwrap();
        assert!(r.is_empty());
        p.reset_all().unwrap();
        for s in 1..=3 {
            assert_eq!(p.append_one(&[rec(s)]).unwrap(), Appended::Yes);
        }
        // The first file is full: the pair switches.
        assert_eq!(p.append_one(&[rec(4)]).unwrap(), Appended::Rotated);
        assert_eq!(p.append_one(&[rec(5)]).unwrap(), Appended::Yes);
        assert_eq!(p.append_one(&[rec(6)]).unwrap(), Appended::Yes);
        // Both full, the first not yet checkpointed: no room.
        assert_eq!(p.append_one(&[rec(7)]).unwrap(), Appended::No);
        drop(p);
        let (mut p, r) = WalPair::open(dir.path(), 4096 + HEADER, false).unwrap();
        assert_eq!(
            r.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        // A background checkpoint: rotate, then reset the retired file.
        p.reset_all().unwrap();
        p.append_one(&[rec(7)]).unwrap();
        assert!(p.rotate());
        let epoch = p.epoch();
        p.append_one(&[rec(8)]).unwrap();
        assert!(
            !p.rotate(),
            "the retired file still waits for its checkpoint"
        );
        p.reset_retired(epoch + 1).unwrap();
        assert!(!p.rotate(), "a stale epoch resets nothing");
        p.reset_retired(epoch).unwrap();
        drop(p);
        let (p, r) = WalPair::open(dir.path(), 4096 + HEADER, false).unwrap();
        assert_eq!(r.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![8]);
        assert!(!p.has_records() || p.files.iter().any(|f| !f.is_empty()));
    }
}
