//! The durable local journal: every event is kept here until every sink
//! that must deliver it has acknowledged it.
//!
//! Two lanes share one store:
//!
//! - **events** (alarms and every other [`Event`]): each gets the next `seq`
//!   (1, 2, 3, … gap-free, across restarts) and its contract id, and is
//!   stored as the contract JSON payload, packed in blocks of consecutive
//!   events. [`Journal::record`] returns only once the events are durable
//!   (storage flush, then `fsync`), with group commit: a committer thread
//!   writes and flushes for every caller waiting at that moment.
//! - **telemetry**: opaque payloads under their own `u64` keys, held in
//!   memory until the next checkpoint (every `telemetry_flush_s`), so that
//!   telemetry delivered meanwhile is never written, and the first thing
//!   evicted when the journal reaches its size cap. Events are never
//!   evicted.
//!
//! Each sink has its own cursor per lane; an entry is removed once every
//! sink named at [`Journal::open`] has acknowledged it.
//!
//! See `docs/design/journal.md` for what is durable when.

mod commit;
mod config;
mod keys;
pub mod storage;
#[cfg(test)]
mod tests;
mod wal;

pub use config::JournalConfig;
pub use storage::{MemStorage, SledStorage, Storage, StorageError};

use crate::event::{event_id, Event, NewEvent};
use commit::{CommitHandle, Committer};
use keys::Meta;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use storage::Batch;
use tokio::sync::watch;

/// Largest telemetry payload accepted, in bytes.
pub const MAX_TELEMETRY_BYTES: usize = 64 * 1024;

/// Longest name of a named state, in bytes (its WAL record stores the
/// length in one byte).
pub const MAX_STATE_NAME: usize = 255;

/// A change to one named state (see [`Journal::record_with_states`]): its
/// name and new data, or `None` to remove it.
pub type StateChange = (String, Option<Vec<u8>>);

/// Entries removed (acknowledged or evicted) per storage batch, so one huge
/// acknowledgement does not hold the journal's lock for long.
const REMOVE_CHUNK: usize = 1024;

/// Bytes reserved for an event's JSON before encoding it: an alarm event
/// of the contract is 300 to 500 bytes (encoding into an empty buffer
/// would grow it to the same capacity, copying six times).
const PAYLOAD_CAPACITY: usize = 512;

/// Telemetry held in memory, not yet written to the store, beyond which
/// all of it is written at once (see `State::held_telemetry`).
const HELD_TELEMETRY_BYTES: u64 = 1024 * 1024;

/// When held telemetry cannot be written, more is refused once this much
/// waits in memory.
const HELD_TELEMETRY_MAX: u64 = 2 * HELD_TELEMETRY_BYTES;

/// Journal failures.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal storage error: {0}")]
    Storage(String),
    #[error("journal is full: {0}")]
    Full(String),
    /// The events were given seqs `first..=last` but are not durable yet
    /// (the flush failed); they will be with a later commit.
    #[error("events {first}..={last} recorded but not yet durable: {reason}")]
    NotDurable {
        first: u64,
        last: u64,
        reason: String,
    },
    #[error("unknown sink {0:?}")]
    UnknownSink(String),
    #[error("telemetry payload of {0} bytes exceeds the {MAX_TELEMETRY_BYTES} byte limit")]
    TooLarge(usize),
    #[error("state name of {0} bytes exceeds the {MAX_STATE_NAME} byte limit")]
    StateName(usize),
}

impl From<StorageError> for JournalError {
    fn from(e: StorageError) -> Self {
        JournalError::Storage(e.0)
    }
}

/// The journal's two lanes.
#[derive(Clone, Copy)]
enum Lane {
    Events,
    Telemetry,
}

/// A recorded event as stored: its position and its contract JSON payload.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// A stored telemetry message.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTelemetry {
    pub key: u64,
    pub payload: Vec<u8>,
}

/// Where the journal's lanes end (published on a watch channel).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalHead {
    /// Last durable event seq.
    pub last_seq: u64,
    /// Last telemetry key written.
    pub last_telemetry: u64,
}

/// Counters for the heartbeat, health and metrics. Maintained as the
/// journal changes; reading them costs no I/O.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JournalStats {
    /// Events held (recorded, not yet acknowledged by every sink).
    pub events: u64,
    /// Telemetry messages held.
    pub telemetry: u64,
    /// Size of the store's files (sampled at most every second).
    pub bytes_on_disk: u64,
    /// Last durable event seq.
    pub last_seq: u64,
    /// Live data counted against `max_bytes` (keys, values and a fixed
    /// per-entry overhead).
    pub live_bytes: u64,
    /// Events alone exceed `max_bytes`: telemetry is refused, events are
    /// still recorded.
    pub pressure: bool,
    /// Telemetry messages evicted for the size cap since open.
    pub telemetry_evicted: u64,
    /// The store cannot be written (its filesystem is full): events are
    /// kept durable in the write-ahead log alone, telemetry is refused,
    /// and the store is reopened with backoff until it works again.
    pub store_failing: bool,
    /// Both write-ahead log files are full while the store cannot be
    /// written: the true limit. New events are not durable until the
    /// store works again (`record()` returns `NotDurable`).
    pub wal_full: bool,
    /// Checkpoints (store flush + fsync) that succeeded since open.
    pub checkpoints: u64,
}

/// Most events queued (given a seq, not yet durable) while the store
/// cannot be written and the WAL is full; past it `record()` refuses
/// new events with [`JournalError::Full`] instead of queueing them.
const MAX_QUEUED_WHILE_FAILING: usize = 10_000;

/// Mutable state, under one lock. Recorders hold it while they assign
/// seqs; the committer while it writes them, so storage order is `seq`
/// order.
struct State {
    meta: Meta,
    /// Last seq handed out (`meta.last_seq` is the last one written).
    assigned_seq: u64,
    /// Events given a seq and not yet written; the committer writes them.
    pending: Vec<(u64, Vec<u8>)>,
    /// The event block holding `meta.last_seq`, kept to append to it
    /// without reading it back.
    tail: Option<Tail>,
    event_cursors: BTreeMap<String, u64>,
    telemetry_cursors: BTreeMap<String, u64>,
    pressure: bool,
    telemetry_evicted: u64,
    /// The store refused a write or a flush (full filesystem): it is left
    /// alone until [`Shared::try_reopen`] works; events go to the WAL only.
    store_failing: bool,
    /// Events in the WAL and not yet in the store, in seq order, all
    /// after `meta.last_seq`: readers find them here. Normally they are
    /// written to the store at the next checkpoint, and events every sink
    /// acknowledges before that never are; while the store is failing,
    /// by the reopen. Bounded by the WAL's size (a full WAL file starts a
    /// checkpoint).
    held_events: Vec<(u64, Vec<u8>)>,
    /// Events written to the store but not to the WAL (it was full or
    /// failed) since the last checkpoint: if the store fails before that
    /// checkpoint, a reopen writes them again from here.
    unlogged: Vec<(u64, Vec<u8>)>,
    /// State changes written to the store but not to the WAL, with them:
    /// a reopen before the next checkpoint writes them again from here
    /// (after the WAL's, by version).
    unlogged_states: Vec<VersionedState>,
    /// Ticket of the last batch of state changes queued: a batch is
    /// durable once [`Shared::durable_states`] reaches its ticket.
    states_ticket: u64,
    /// Named state changes waiting for the committer, in order (name,
    /// data; `None`: removed).
    states_pending: Vec<StateChange>,
    /// Last state version given out (versions order a name's snapshots
    /// across the WAL's files and the store).
    state_version: u64,
    /// State changes in the WAL and not yet in the store, newest per name
    /// (version, data; `None`: removed), written with the held events.
    held_states: BTreeMap<String, (u64, Option<Vec<u8>>)>,
    /// What `held_events` will cost in the store, at most (`keys::entry_cost`
    /// of each as if alone in a block).
    held_event_bytes: u64,
    /// Cursor records for the committer to append to the WAL.
    lazy_wal: Vec<(u64, Vec<u8>)>,
    /// Telemetry recorded and not yet written to the store, oldest first;
    /// its keys follow `meta.telemetry_last` without a gap (`meta`
    /// describes the store alone). Telemetry every sink acknowledges
    /// while here leaves without ever being written: delivered at once, it
    /// costs the store (and the flash) nothing. The rest is written at the
    /// next checkpoint, or as soon as it exceeds [`HELD_TELEMETRY_BYTES`].
    held_telemetry: VecDeque<(u64, Vec<u8>)>,
    /// What `held_telemetry` would cost in the store (`keys::entry_cost`).
    held_telemetry_bytes: u64,
    /// Cursors moved since they were last written to the store (they are
    /// written with the held events and telemetry; the WAL has them).
    cursors_moved: bool,
}

/// The last event block, as written.
#[derive(Clone)]
struct Tail {
    first: u64,
    payloads: Vec<Vec<u8>>,
    /// Encoded size of the block.
    size: usize,
    /// What the block counts in `meta.event_bytes` (0 before its first write).
    cost: u64,
}

impl Tail {
    fn new(first: u64) -> Tail {
        Tail {
            first,
            payloads: Vec::new(),
            size: 4,
            cost: 0,
        }
    }
    fn is_full(&self) -> bool {
        self.payloads.len() >= keys::BLOCK_EVENTS || self.size >= keys::BLOCK_BYTES
    }
    fn push(&mut self, payload: Vec<u8>) {
        self.size += 4 + payload.len();
        self.payloads.push(payload);
    }
    /// Write (or rewrite) the block, accounting its cost in `meta`.
    fn put(&mut self, batch: &mut Batch, meta: &mut Meta) {
        let key = keys::event(self.first);
        let value = keys::encode_block(&self.payloads);
        let cost = keys::entry_cost(&key, &value);
        meta.event_bytes = meta.event_bytes.saturating_sub(self.cost) + cost;
        self.cost = cost;
        batch.put(key.to_vec(), value);
    }
}

/// A state change with its version: (name, version, data or `None`).
type VersionedState = (String, u64, Option<Vec<u8>>);

impl State {
    /// Put states taken by a commit that failed back in front of the queue
    /// (a newer snapshot of the same name, queued meanwhile, stays last).
    /// Their tickets stay covered by `states_ticket`, so waiters are
    /// answered only after a later commit writes them.
    fn requeue_states(&mut self, states: Vec<VersionedState>) {
        let back = std::mem::take(&mut self.states_pending);
        self.states_pending = states.into_iter().map(|(n, _, d)| (n, d)).collect();
        self.states_pending.extend(back);
    }

    /// Last telemetry key given out, held in memory or stored.
    fn telemetry_last(&self) -> u64 {
        self.held_telemetry
            .back()
            .map_or(self.meta.telemetry_last, |(k, _)| *k)
    }

    /// Telemetry messages kept, held in memory or stored.
    fn telemetry_count(&self) -> u64 {
        self.meta.telemetry_count() + self.held_telemetry.len() as u64
    }

    /// Bytes of events and telemetry kept, counting held events and
    /// telemetry at what they will cost in the store.
    fn live_bytes(&self) -> u64 {
        self.meta.live_bytes() + self.held_telemetry_bytes + self.held_event_bytes
    }

    /// Bytes of events kept, held ones included.
    fn event_bytes(&self) -> u64 {
        self.meta.event_bytes + self.held_event_bytes
    }

    /// Last event seq written, to the WAL or the store.
    fn events_last(&self) -> u64 {
        self.held_events
            .last()
            .map_or(self.meta.last_seq, |(s, _)| *s)
    }

    /// Hold events the WAL has taken (those after the store's last).
    fn hold_events(&mut self, events: Vec<(u64, Vec<u8>)>) {
        let last = self.meta.last_seq;
        for (seq, payload) in events.into_iter().filter(|(seq, _)| *seq > last) {
            self.held_event_bytes += keys::entry_cost(&keys::event(seq), &payload);
            self.held_events.push((seq, payload));
        }
    }

    /// Set the held events (recounting their cost).
    fn set_held_events(&mut self, events: Vec<(u64, Vec<u8>)>) {
        self.held_events.clear();
        self.held_event_bytes = 0;
        self.hold_events(events);
    }

    /// Drop held events up to seq `upto`: every sink has them. Only when
    /// no event is left in the store (held seqs follow the stored ones);
    /// the store's lane moves past them as if they had been written and
    /// removed. Whether any was dropped.
    fn drop_held_events(&mut self, upto: u64) -> bool {
        debug_assert!(self.meta.events_removed >= self.meta.last_seq);
        let n = self.held_events.partition_point(|(seq, _)| *seq <= upto);
        if n == 0 {
            return false;
        }
        for (seq, payload) in self.held_events.drain(..n) {
            let cost = keys::entry_cost(&keys::event(seq), &payload);
            self.held_event_bytes = self.held_event_bytes.saturating_sub(cost);
            self.meta.last_seq = seq;
            self.meta.events_removed = seq;
        }
        // The next event written starts a block of its own.
        self.tail = None;
        self.meta.tail_cost = 0;
        true
    }

    /// Drop held telemetry up to key `upto`, oldest first, or (with
    /// `until_bytes`) until live bytes fall to that figure. Only when
    /// nothing is stored: held keys follow the stored ones. How many left.
    fn drop_held_telemetry(&mut self, upto: u64, until_bytes: Option<u64>) -> u64 {
        debug_assert_eq!(self.meta.telemetry_count(), 0);
        let mut dropped = 0;
        while let Some((key, payload)) = self.held_telemetry.front() {
            if *key > upto || until_bytes.is_some_and(|t| self.live_bytes() <= t) {
                break;
            }
            let cost = keys::entry_cost(&keys::telemetry(*key), payload);
            self.held_telemetry_bytes = self.held_telemetry_bytes.saturating_sub(cost);
            // Nothing stored: the store's lane moves past the key as if
            // it had been written and removed.
            self.meta.telemetry_last = *key;
            self.meta.telemetry_removed = *key;
            self.held_telemetry.pop_front();
            dropped += 1;
        }
        dropped
    }

    /// Every event at or below this is acknowledged by every sink (or
    /// removed): readers start after it.
    fn held_from(&self) -> u64 {
        self.event_cursors
            .values()
            .min()
            .copied()
            .unwrap_or(0)
            .max(self.meta.events_removed)
    }
}

/// What the committer thread shares with the handles.
pub(crate) struct Shared {
    storage: Arc<dyn Storage>,
    state: Mutex<State>,
    /// Highest seq known durable; readers never see past it.
    durable_seq: AtomicU64,
    /// Something other than events (telemetry, cursors) awaits a flush.
    dirty: AtomicBool,
    bytes_on_disk: AtomicU64,
    head: watch::Sender<JournalHead>,
    fsync: bool,
    max_bytes: u64,
    /// The filesystem is low on space (see [`Journal::set_disk_low`]):
    /// telemetry is refused so that events keep the space left.
    disk_low: AtomicBool,
    gateway: String,
    /// The write-ahead log (`None`: every commit flushes the store).
    wal: Mutex<Option<wal::WalPair>>,
    /// The active WAL file filled up and appends moved to the other one:
    /// the committer starts a background checkpoint.
    rotated: AtomicBool,
    /// Events were written to the store but not to the WAL (it was full
    /// or failed): the next commit must be a checkpoint.
    needs_checkpoint: AtomicBool,
    /// Tests: the process "died"; the committer stops without its final
    /// checkpoint.
    abandoned: AtomicBool,
    /// Beaten by the committer thread once per iteration (liveness).
    heartbeat: std::sync::OnceLock<crate::service::liveness::Heartbeat>,
    /// Both WAL files were full at the last append while the store was
    /// failing.
    wal_full: AtomicBool,
    /// Successful checkpoints since open.
    checkpoints: AtomicU64,
    /// Highest state ticket (see `State::states_ticket`) whose changes a
    /// successful commit made durable; only [`set_durable`](Self::set_durable)
    /// advances it.
    durable_states: AtomicU64,
}

impl Shared {
    /// Beat the committer's heartbeat, once one is set.
    pub(crate) fn beat(&self) {
        if let Some(hb) = self.heartbeat.get() {
            hb.beat();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves State consistent with what
        // was written (it is updated only after a successful write).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wal(&self) -> MutexGuard<'_, Option<wal::WalPair>> {
        self.wal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the journal has a WAL.
    pub(crate) fn has_wal(&self) -> bool {
        self.wal().is_some()
    }

    /// Make what [`write_pending`](Self::write_pending) wrote durable.
    /// With a WAL that holds every such event, one `fdatasync` of the WAL;
    /// otherwise (or when `full`) a checkpoint. Runs on the committer thread.
    pub(crate) fn commit(&self, full: bool) -> Result<(), StorageError> {
        let (failing, unlogged, unlogged_states) = {
            let st = self.lock();
            (
                st.store_failing,
                st.unlogged.len(),
                st.unlogged_states.len(),
            )
        };
        if failing {
            // The store cannot take a checkpoint: the WAL alone makes the
            // events durable, unless some never reached it.
            if unlogged > 0 || unlogged_states > 0 {
                return Err(StorageError(format!(
                    "{unlogged} events and {unlogged_states} state changes are neither in the \
                     write-ahead log nor flushed (the store cannot be written)"
                )));
            }
            return match self.wal().as_ref() {
                Some(w) => w
                    .sync()
                    .map_err(|e| StorageError(format!("journal WAL sync failed: {e}"))),
                None => Err(StorageError("the store cannot be written".into())),
            };
        }
        if !full && !self.needs_checkpoint.load(Ordering::SeqCst) {
            let synced = self.wal().as_ref().map(|w| w.sync());
            match synced {
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "journal WAL sync failed; checkpointing instead");
                    self.needs_checkpoint.store(true, Ordering::SeqCst);
                }
                None => {}
            }
        }
        self.checkpoint()
    }

    /// Write held events and states to the store (not while it is
    /// failing: they stay held, the reopen writes them). Events first, then
    /// the states saved with them, as they were appended to the WAL.
    fn write_held_events(&self, st: &mut State) -> Result<(), StorageError> {
        if st.store_failing {
            return Ok(());
        }
        if !st.held_events.is_empty() {
            let events = std::mem::take(&mut st.held_events);
            if let Err(e) = self.write_blocks(st, &events) {
                st.held_events = events;
                return Err(StorageError(e.to_string()));
            }
            st.held_event_bytes = 0;
        }
        if !st.held_states.is_empty() {
            let states: Vec<VersionedState> = std::mem::take(&mut st.held_states)
                .into_iter()
                .map(|(name, (version, data))| (name, version, data))
                .collect();
            if let Err(e) = self.write_states(&states) {
                st.held_states = states
                    .into_iter()
                    .map(|(name, version, data)| (name, (version, data)))
                    .collect();
                return Err(StorageError(e.to_string()));
            }
        }
        Ok(())
    }

    /// Write held telemetry, moved cursors and the metadata to the store
    /// (not while it is failing: they stay in memory).
    fn write_held_telemetry(&self, st: &mut State) -> Result<(), StorageError> {
        if st.store_failing {
            return Ok(());
        }
        let mut meta = st.meta;
        let mut batch = Batch::default();
        for (key, payload) in &st.held_telemetry {
            batch.put(keys::telemetry(*key).to_vec(), payload.clone());
        }
        meta.telemetry_last = st.telemetry_last();
        meta.telemetry_bytes += st.held_telemetry_bytes;
        // Always: held events dropped since the last checkpoint moved the
        // event lane's position, which must not go back after the WAL is
        // emptied (seqs are never given out twice).
        batch.put(keys::META, meta.encode());
        if st.cursors_moved {
            for (sink, c) in &st.event_cursors {
                batch.put(keys::event_cursor(sink), c.to_be_bytes().to_vec());
            }
            for (sink, c) in &st.telemetry_cursors {
                batch.put(keys::telemetry_cursor(sink), c.to_be_bytes().to_vec());
            }
        }
        self.storage.apply(batch)?;
        st.meta = meta;
        st.held_telemetry.clear();
        st.held_telemetry_bytes = 0;
        st.cursors_moved = false;
        Ok(())
    }

    /// Flush the store, and `fsync` it when configured. Held events,
    /// states and telemetry are written first.
    pub(crate) fn flush_store(&self) -> Result<(), StorageError> {
        {
            let mut st = self.lock();
            self.write_held_events(&mut st)?;
            self.write_held_telemetry(&mut st)?;
        }
        self.storage.flush()?;
        if self.fsync {
            self.storage.sync()?;
        }
        Ok(())
    }

    /// Flush (and fsync, when configured) the store, then empty the WAL:
    /// everything written so far is durable in the store. Runs on the
    /// committer thread (nothing is appended meanwhile).
    pub(crate) fn checkpoint(&self) -> Result<(), StorageError> {
        if let Err(e) = self.flush_store() {
            self.store_failed(&e.to_string());
            return Err(e);
        }
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = self.lock();
            st.unlogged.clear();
            st.unlogged_states.clear();
        }
        self.needs_checkpoint.store(false, Ordering::SeqCst);
        let mut wal = self.wal();
        if let Some(w) = wal.as_mut() {
            if let Err(e) = w.reset_all() {
                // Records of the old generation replay as duplicates of
                // stored seqs, which replay skips; but appending to this
                // generation again could mix: checkpoint until it works.
                self.needs_checkpoint.store(true, Ordering::SeqCst);
                return Err(StorageError(format!("journal WAL reset failed: {e}")));
            }
        }
        Ok(())
    }

    /// Whether the commit of what [`write_pending`](Self::write_pending)
    /// just appended may make it durable by an `fdatasync` of the active
    /// WAL file outside the WAL's lock (through a handle of the committer's
    /// own, while other such commits run): that file's index. `None` when
    /// the commit must run in line: no WAL or fsync off, a failing store, a
    /// checkpoint due, or a file switch to act on.
    pub(crate) fn wal_file_to_sync(&self) -> Option<usize> {
        if self.needs_checkpoint.load(Ordering::SeqCst)
            || self.rotated.load(Ordering::SeqCst)
            || self.store_failing()
        {
            return None;
        }
        self.wal()
            .as_ref()
            .filter(|w| w.fsyncs())
            .map(|w| w.active())
    }

    /// Paths of the two WAL files, by index (when there is a WAL).
    pub(crate) fn wal_paths(&self) -> Option<[std::path::PathBuf; 2]> {
        self.wal()
            .as_ref()
            .map(|w| w.paths().map(|p| p.to_path_buf()))
    }

    /// A commit's `fdatasync` outside the lock failed: the next commit
    /// is a checkpoint, and events staged since are retried by it.
    pub(crate) fn wal_sync_failed(&self) {
        self.needs_checkpoint.store(true, Ordering::SeqCst);
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// After a failed `fdatasync` through another handle: have the WAL's
    /// own handles report (and drop) that write-back error now; see
    /// `commit::Control::wait_idle`.
    pub(crate) fn wal_clear_errors(&self) {
        if let Some(w) = self.wal().as_ref() {
            w.clear_reported_errors();
        }
    }

    /// The WAL holds records not yet checkpointed into the store.
    pub(crate) fn wal_has_records(&self) -> bool {
        self.wal().as_ref().is_some_and(|w| w.has_records())
    }

    /// Before a background checkpoint: move WAL appends to the other file.
    /// The epoch to hand to [`reset_retired_wal`](Self::reset_retired_wal),
    /// or `None` when that is not possible (an earlier one has not finished).
    pub(crate) fn rotate_wal(&self) -> Option<u64> {
        match self.wal().as_mut() {
            None => Some(0),
            Some(w) => w.rotate().then(|| w.epoch()),
        }
    }

    /// Epoch of the WAL's current file arrangement.
    pub(crate) fn wal_epoch(&self) -> u64 {
        self.wal().as_ref().map_or(0, |w| w.epoch())
    }

    /// After a background checkpoint started in `epoch`: drop the retired
    /// WAL file's records.
    pub(crate) fn reset_retired_wal(&self, epoch: u64) -> Result<(), StorageError> {
        if let Some(w) = self.wal().as_mut() {
            w.reset_retired(epoch).map_err(|e| {
                self.needs_checkpoint.store(true, Ordering::SeqCst);
                StorageError(format!("journal WAL reset failed: {e}"))
            })?;
        }
        Ok(())
    }

    /// The active WAL file filled up since the last call.
    pub(crate) fn take_rotated(&self) -> bool {
        self.rotated.swap(false, Ordering::SeqCst)
    }

    /// Publish a new durable seq to readers and watchers, and the state
    /// ticket a successful commit covered.
    pub(crate) fn set_durable(&self, seq: u64, states: u64) {
        self.durable_states.fetch_max(states, Ordering::SeqCst);
        let prev = self.durable_seq.fetch_max(seq, Ordering::SeqCst);
        if seq > prev {
            self.head.send_modify(|h| h.last_seq = h.last_seq.max(seq));
        }
    }

    /// Write the pending events and states: with a WAL and `hold`, to the
    /// WAL alone, holding them for the next checkpoint; otherwise into
    /// their blocks in the store (after any held ones), then the WAL.
    /// Runs on the committer thread before each commit; returns the last
    /// seq written and the ticket of the last state batch written (both
    /// durable once the commit succeeds). On failure the events and states
    /// stay pending (no seq is lost).
    pub(crate) fn write_pending(&self, hold: bool) -> Result<(u64, u64), JournalError> {
        let mut st = self.lock();
        let ticket = st.states_ticket;
        self.write_pending_locked(&mut st, hold)
            .map(|last| (last, ticket))
    }

    fn write_pending_locked(&self, st: &mut State, hold: bool) -> Result<u64, JournalError> {
        if st.pending.is_empty() && st.states_pending.is_empty() && st.lazy_wal.is_empty() {
            return Ok(st.events_last());
        }
        let pending = std::mem::take(&mut st.pending);
        let states: Vec<VersionedState> = std::mem::take(&mut st.states_pending)
            .into_iter()
            .map(|(name, data)| {
                st.state_version += 1;
                (name, st.state_version, data)
            })
            .collect();
        // Side records follow the events: a state is saved after the events
        // of its change (a crash keeps a prefix: never the state without
        // its events).
        let mut side: Vec<(u64, Vec<u8>)> = states
            .iter()
            .map(|(name, version, data)| state_record(name, *version, data.as_deref()))
            .collect();
        side.append(&mut st.lazy_wal);
        // The WAL refused this batch: it goes to the store instead.
        let mut wal_refused = false;
        if hold && !st.store_failing && self.has_wal() {
            // The WAL alone makes them durable; the store takes them at
            // the next checkpoint, unless every sink has them by then.
            let appended = self.append_wal(&pending, &side);
            if appended {
                st.hold_events(pending);
                for (name, version, data) in states {
                    st.held_states.insert(name, (version, data));
                }
                if let Err(e) = self.enforce_cap(st) {
                    tracing::warn!(error = %e, "journal size cap not enforced");
                }
                return Ok(st.events_last());
            }
            wal_refused = true;
        }
        if !st.store_failing {
            // (error, whether the events' blocks were written)
            let written = match self
                .write_held_events(st)
                .map_err(|e| JournalError::Storage(e.0))
                .and_then(|()| self.write_blocks(st, &pending))
            {
                Ok(()) => self.write_states(&states).map_err(|e| (e, true)),
                Err(e) => Err((e, false)),
            };
            if let Err((e, blocks_written)) = written {
                if !self.has_wal() {
                    // Written blocks are in `meta` and the tail: queueing
                    // their events again would write them twice. The
                    // next flush makes them durable.
                    if !blocks_written {
                        st.pending = pending;
                    }
                    st.requeue_states(states);
                    return Err(e);
                }
                self.enter_store_failing(st, &e.to_string());
            }
        }
        if st.store_failing {
            return self.log_only(st, pending, states, side);
        }
        // Then the WAL, in the same order, under the same lock.
        if self.has_wal() && (wal_refused || !self.append_wal(&pending, &side)) {
            // States and cursors are in the store (or, cursors, written
            // by it): the checkpoint makes them durable.
            self.needs_checkpoint.store(true, Ordering::SeqCst);
            st.cursors_moved = true;
            st.unlogged.extend(pending.iter().cloned());
            st.unlogged_states.extend(states.iter().cloned());
        }
        if let Err(e) = self.enforce_cap(st) {
            tracing::warn!(error = %e, "journal size cap not enforced");
        }
        Ok(st.meta.last_seq)
    }

    /// Append events and side records to the WAL; false when it did not
    /// take them (both files full, or an error, logged).
    fn append_wal(&self, events: &[(u64, Vec<u8>)], side: &[(u64, Vec<u8>)]) -> bool {
        let Some(w) = self.wal().as_mut().map(|w| w.append(events, side)) else {
            return false;
        };
        match w {
            Ok(wal::Appended::Yes) => true,
            Ok(wal::Appended::Rotated) => {
                self.rotated.store(true, Ordering::SeqCst);
                true
            }
            Ok(wal::Appended::No) => false,
            Err(e) => {
                tracing::error!(error = %e, "journal WAL write failed; checkpointing instead");
                false
            }
        }
    }

    /// Write named state snapshots into the store (`s <name>`: version,
    /// data) and delete the removed ones, in order.
    fn write_states(&self, states: &[VersionedState]) -> Result<(), JournalError> {
        if states.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        for (name, version, data) in states {
            match data {
                Some(data) => batch.put(
                    keys::state(name),
                    [&version.to_be_bytes()[..], data].concat(),
                ),
                None => batch.delete(keys::state(name)),
            }
        }
        self.storage.apply(batch)?;
        Ok(())
    }

    /// Write `events` into their blocks in the store, then the metadata;
    /// `st` is updated only when every write went through.
    fn write_blocks(&self, st: &mut State, events: &[(u64, Vec<u8>)]) -> Result<(), JournalError> {
        let mut meta = st.meta;
        let mut tail = st.tail.clone();
        let mut batch = Batch::default();
        let mut unwritten = false;
        for (seq, payload) in events {
            if tail.as_ref().is_none_or(Tail::is_full) {
                tail = Some(Tail::new(*seq));
            }
            let Some(t) = tail.as_mut() else { continue };
            t.push(payload.clone());
            unwritten = true;
            if t.is_full() {
                t.put(&mut batch, &mut meta);
                unwritten = false;
            }
        }
        if unwritten {
            if let Some(t) = tail.as_mut() {
                t.put(&mut batch, &mut meta);
            }
        }
        meta.last_seq = events.last().map_or(meta.last_seq, |(s, _)| *s);
        meta.tail_cost = tail.as_ref().map_or(0, |t| t.cost);
        // Blocks first, then the metadata that counts them.
        batch.put(keys::META, meta.encode());
        self.storage.apply(batch)?;
        st.meta = meta;
        st.tail = tail;
        Ok(())
    }

    /// While the store is failing: the events (and states, cursors) go to
    /// the WAL alone, and to the held events and states for readers. When the WAL is full
    /// too they stay pending.
    fn log_only(
        &self,
        st: &mut State,
        pending: Vec<(u64, Vec<u8>)>,
        states: Vec<VersionedState>,
        side: Vec<(u64, Vec<u8>)>,
    ) -> Result<u64, JournalError> {
        // Once both files are full only a checkpoint (after a reopen) makes
        // room: do not retry the append for every commit meanwhile.
        let appended = match self.wal().as_mut() {
            Some(_) if self.wal_full.load(Ordering::SeqCst) => Ok(wal::Appended::No),
            Some(w) => w.append(&pending, &side),
            None => Ok(wal::Appended::No),
        };
        let refused = match appended {
            Ok(wal::Appended::Yes | wal::Appended::Rotated) => {
                if self.wal_full.swap(false, Ordering::SeqCst) {
                    tracing::info!("journal WAL has room again");
                }
                // Events the store took before it failed are read from it.
                st.hold_events(pending);
                for (name, version, data) in states {
                    st.held_states.insert(name, (version, data));
                }
                return Ok(st.events_last());
            }
            Ok(wal::Appended::No) => {
                if !self.wal_full.swap(true, Ordering::SeqCst) {
                    tracing::error!(
                        queued = pending.len(),
                        "journal at its limit: both write-ahead log files are full and the \
                         store cannot be written (filesystem full); new events are held in \
                         memory, not durable, until space returns"
                    );
                }
                JournalError::Full(
                    "both write-ahead log files are full and the store cannot be written".into(),
                )
            }
            Err(e) => JournalError::Storage(format!("journal WAL write failed: {e}")),
        };
        st.pending = pending;
        st.requeue_states(states);
        let cursors: Vec<_> = side
            .into_iter()
            .filter(|(f, _)| wal::kind(*f) == wal::KIND_CURSOR)
            .collect();
        st.lazy_wal.splice(0..0, cursors);
        Err(refused)
    }

    /// The store refused a write or a flush: with a WAL, stop writing to it
    /// until a reopen works (see [`try_reopen`](Self::try_reopen)).
    pub(crate) fn store_failed(&self, reason: &str) {
        if self.has_wal() {
            let mut st = self.lock();
            self.enter_store_failing(&mut st, reason);
        }
    }

    fn enter_store_failing(&self, st: &mut State, reason: &str) {
        if st.store_failing {
            return;
        }
        st.store_failing = true;
        tracing::error!(
            error = %reason,
            "journal store cannot be written (filesystem full?): events are kept durable in the \
             write-ahead log alone, telemetry is refused, the store is reopened with backoff"
        );
    }

    /// Whether the store is failing (see [`JournalStats::store_failing`]).
    pub(crate) fn store_failing(&self) -> bool {
        self.lock().store_failing
    }

    /// Reopen a failing store and bring it up to date: the events of the
    /// WAL (and any the WAL did not take) after its last event, the
    /// cursors moved meanwhile; then a checkpoint. With the journal's lock
    /// held throughout, so readers never see the store behind the
    /// durable seq. Runs on the committer thread, no background
    /// checkpoint running.
    pub(crate) fn try_reopen(&self) -> Result<(), JournalError> {
        let mut st = self.lock();
        if !st.store_failing {
            return Ok(());
        }
        self.storage.reopen()?;
        let meta = match self.storage.get(keys::META)? {
            Some(raw) => Meta::decode(&raw).ok_or_else(|| {
                JournalError::Storage("journal metadata record is damaged".into())
            })?,
            None => Meta::default(),
        };
        let meta = recover(self.storage.as_ref(), meta)?;
        let logged = match self.wal().as_ref() {
            Some(w) => w
                .read_back()
                .map_err(|e| JournalError::Storage(format!("journal WAL: {e}")))?,
            None => Vec::new(),
        };
        // State snapshots: the WAL holds every one saved while failing;
        // those the WAL did not take are kept beside the unlogged events
        // (the newest version of a name wins).
        let mut state_records: Vec<wal::WalRecord> = logged
            .iter()
            .filter(|r| matches!(wal::kind(r.seq), wal::KIND_STATE | wal::KIND_STATE_REMOVED))
            .cloned()
            .collect();
        state_records.extend(st.unlogged_states.iter().map(|(name, version, data)| {
            let (seq, payload) = state_record(name, *version, data.as_deref());
            wal::WalRecord { seq, payload }
        }));
        let version = apply_wal_states(self.storage.as_ref(), &state_records)?;
        st.state_version = st.state_version.max(version);
        let mut records: Vec<(u64, Vec<u8>)> = logged
            .into_iter()
            .filter(|r| wal::kind(r.seq) == wal::KIND_EVENT)
            .map(|r| (r.seq, r.payload))
            .collect();
        let logged: std::collections::BTreeSet<u64> = records.iter().map(|r| r.0).collect();
        records.extend(st.unlogged.iter().cloned());
        records.extend(st.held_events.iter().cloned());
        records.sort_by_key(|r| r.0);
        records.dedup_by_key(|r| r.0);
        let replay = replayable(
            records
                .into_iter()
                .map(|(seq, payload)| wal::WalRecord { seq, payload })
                .collect(),
            meta.last_seq,
        );
        let durable = self.durable_seq.load(Ordering::SeqCst);
        let replay_end = replay.last().map_or(meta.last_seq, |r| r.0);
        if replay_end < durable {
            tracing::error!(
                store = meta.last_seq,
                replayed_to = replay_end,
                durable,
                "journal: events missing after reopening the store"
            );
        }
        st.meta = meta;
        st.tail = load_tail(self.storage.as_ref(), &meta)?;
        let unlogged: Vec<(u64, Vec<u8>)> = replay
            .iter()
            .filter(|r| !logged.contains(&r.0))
            .cloned()
            .collect();
        if let Err(e) = self.write_blocks(&mut st, &replay) {
            // Still failing: the held events keep serving readers.
            st.set_held_events(replay);
            return Err(e);
        }
        st.set_held_events(Vec::new());
        st.held_states.clear();
        st.unlogged = unlogged;
        // The cursors moved meanwhile, clamped to what exists now.
        let mut batch = Batch::default();
        let (removed, last) = (st.meta.events_removed, st.meta.last_seq);
        for (sink, c) in st.event_cursors.iter_mut() {
            *c = (*c).clamp(removed, last);
            batch.put(keys::event_cursor(sink), c.to_be_bytes().to_vec());
        }
        let (removed, last) = (st.meta.telemetry_removed, st.telemetry_last());
        for (sink, c) in st.telemetry_cursors.iter_mut() {
            *c = (*c).clamp(removed, last);
            batch.put(keys::telemetry_cursor(sink), c.to_be_bytes().to_vec());
        }
        self.storage.apply(batch)?;
        st.store_failing = false;
        drop(st);
        self.checkpoint().map_err(JournalError::from)?;
        self.wal_full.store(false, Ordering::SeqCst);
        tracing::info!(
            last_seq = replay_end,
            "journal store reopened and checkpointed: normal operation resumes"
        );
        if self.disk_low.load(Ordering::Relaxed) {
            // Make room: telemetry is worth least.
            let mut st = self.lock();
            let mut evicted = 0;
            while st.telemetry_count() > 0 {
                let last = st.telemetry_last();
                evicted += self.remove_telemetry_chunk(&mut st, last, None)?;
            }
            st.telemetry_evicted += evicted;
            if evicted > 0 {
                tracing::warn!(evicted, "filesystem low on space: held telemetry evicted");
            }
        }
        self.remove_acknowledged()
    }

    pub(crate) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::SeqCst)
    }

    pub(crate) fn refresh_size(&self) {
        match self.storage.size_on_disk() {
            Ok(n) => self.bytes_on_disk.store(n, Ordering::Relaxed),
            Err(e) => tracing::debug!(error = %e, "journal size not available"),
        }
    }

    /// Remove events up to the slowest sink's cursor, telemetry likewise.
    /// Works in chunks, releasing the lock between them.
    fn remove_acknowledged(&self) -> Result<(), JournalError> {
        if self.lock().store_failing {
            // Removal writes to the store: after the reopen.
            return Ok(());
        }
        loop {
            let mut st = self.lock();
            let Some(upto) = st.event_cursors.values().min().copied() else {
                break;
            };
            if upto <= st.meta.events_removed {
                break;
            }
            if st.meta.events_removed >= st.meta.last_seq {
                // Nothing stored: what every sink has leaves memory
                // without a write.
                if st.drop_held_events(upto) {
                    self.dirty.store(true, Ordering::SeqCst);
                }
                break;
            }
            if !self.remove_events_chunk(&mut st, upto)? {
                break;
            }
        }
        loop {
            let mut st = self.lock();
            let Some(upto) = st.telemetry_cursors.values().min().copied() else {
                break;
            };
            let upto = upto.min(st.telemetry_last());
            if upto <= st.meta.telemetry_removed {
                break;
            }
            self.remove_telemetry_chunk(&mut st, upto, None)?;
        }
        let mut st = self.lock();
        if st.pressure {
            self.update_pressure(&mut st);
        }
        Ok(())
    }

    /// Remove the oldest event blocks whose every event is at or below
    /// `upto`. One chunk; false when nothing could be removed.
    fn remove_events_chunk(&self, st: &mut State, upto: u64) -> Result<bool, JournalError> {
        let from = st.meta.events_removed + 1;
        let blocks = self
            .storage
            .range(&keys::event(from), &keys::event(upto), REMOVE_CHUNK)?;
        let mut meta = st.meta;
        let mut deletes = Batch::default();
        let mut removed_tail = false;
        for (k, v) in blocks {
            let first = keys::decode_key(&k);
            let Some(count) = keys::block_count(&v) else {
                tracing::error!(first, "journal: damaged event block; removal stops here");
                break;
            };
            let last = (first + count).saturating_sub(1).max(first);
            if last > upto {
                break;
            }
            meta.event_bytes = meta.event_bytes.saturating_sub(keys::entry_cost(&k, &v));
            meta.events_removed = meta.events_removed.max(last);
            removed_tail |= st.tail.as_ref().is_some_and(|t| t.first == first);
            deletes.delete(k);
        }
        if deletes.is_empty() {
            return Ok(false);
        }
        if removed_tail {
            meta.tail_cost = 0;
            st.tail = None;
        }
        // Metadata first: a crash part-way leaves blocks at or below
        // `events_removed`, which the next open deletes.
        let mut batch = Batch::default();
        batch.put(keys::META, meta.encode());
        batch.ops.extend(deletes.ops);
        // Whether or not every write went through, go on from the new
        // position: blocks left behind are at or below it, and the next
        // open deletes them.
        let res = self.storage.apply(batch);
        st.meta = meta;
        res?;
        self.dirty.store(true, Ordering::SeqCst);
        Ok(true)
    }

    /// Remove telemetry up to `upto`, or (with `until_bytes`) the oldest
    /// telemetry until live bytes fall to that figure. One chunk: stored
    /// telemetry first, held telemetry once nothing is stored.
    fn remove_telemetry_chunk(
        &self,
        st: &mut State,
        upto: u64,
        until_bytes: Option<u64>,
    ) -> Result<u64, JournalError> {
        if st.meta.telemetry_count() == 0 {
            return Ok(st.drop_held_telemetry(upto, until_bytes));
        }
        let held_bytes = st.held_telemetry_bytes;
        let from = st.meta.telemetry_removed + 1;
        let to = upto
            .min(st.meta.telemetry_last)
            .min(from + REMOVE_CHUNK as u64 - 1);
        let entries =
            self.storage
                .range(&keys::telemetry(from), &keys::telemetry(to), REMOVE_CHUNK)?;
        let mut meta = st.meta;
        let mut deletes = Batch::default();
        let mut removed_upto = to;
        let mut removed = 0;
        for (k, v) in entries {
            if let Some(target) = until_bytes {
                if meta.live_bytes() + held_bytes <= target {
                    removed_upto = keys::decode_key(&k).saturating_sub(1);
                    break;
                }
            }
            meta.telemetry_bytes = meta
                .telemetry_bytes
                .saturating_sub(keys::entry_cost(&k, &v));
            deletes.delete(k);
            removed += 1;
        }
        meta.telemetry_removed = removed_upto.max(meta.telemetry_removed);
        let mut batch = Batch::default();
        batch.put(keys::META, meta.encode());
        batch.ops.extend(deletes.ops);
        // Whether or not every write went through, go on from the new
        // position: keys left behind are at or below it, and the next
        // open deletes them.
        let res = self.storage.apply(batch);
        st.meta = meta;
        res?;
        self.dirty.store(true, Ordering::SeqCst);
        Ok(removed)
    }

    /// Enforce the size cap: evict the oldest telemetry while over it; if
    /// events alone are over it, flag pressure (events are never evicted).
    fn enforce_cap(&self, st: &mut State) -> Result<(), JournalError> {
        if st.live_bytes() > self.max_bytes {
            // Evict down to 95% of the cap so eviction runs in batches, not
            // on every message.
            let target = self.max_bytes - self.max_bytes / 20;
            let mut evicted = 0;
            while st.live_bytes() > target && st.telemetry_count() > 0 {
                let last = st.telemetry_last();
                evicted += self.remove_telemetry_chunk(st, last, Some(target))?;
            }
            if evicted > 0 {
                st.telemetry_evicted += evicted;
                tracing::warn!(
                    evicted,
                    live_bytes = st.live_bytes(),
                    max_bytes = self.max_bytes,
                    "journal at its size cap: oldest telemetry evicted"
                );
            }
        }
        self.update_pressure(st);
        Ok(())
    }

    /// Pressure: undelivered events alone exceed the cap. Recomputed after
    /// recording and after removal, so a drained backlog lifts it at once.
    fn update_pressure(&self, st: &mut State) {
        let over = st.event_bytes() > self.max_bytes;
        if over != st.pressure {
            st.pressure = over;
            if over {
                tracing::error!(
                    events = st.meta.event_count() + st.held_events.len() as u64,
                    event_bytes = st.event_bytes(),
                    max_bytes = self.max_bytes,
                    "journal pressure: undelivered events alone exceed the size cap; \
                     still recording events, refusing telemetry"
                );
            } else {
                tracing::info!(
                    event_bytes = st.event_bytes(),
                    max_bytes = self.max_bytes,
                    "journal pressure relieved"
                );
            }
        }
    }
}

/// Owns the committer thread; dropping the last handle stops it (after a
/// final flush) and closes the store.
struct Inner {
    shared: Arc<Shared>,
    committer: CommitHandle,
    /// The sinks named at open, as changed by [`Journal::set_sinks`].
    sinks: Mutex<Vec<String>>,
}

/// Handle to the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

/// What [`Journal::stage_with_states`] refused, given back: nothing of it
/// was staged.
#[derive(Debug)]
pub struct Refused {
    pub error: JournalError,
    pub events: Vec<NewEvent>,
    pub states: Vec<StateChange>,
}

/// Events (and state changes) given their seqs and queued for a commit by
/// [`Journal::stage_with_states`]: recorded once [`durable`](Self::durable)
/// says so.
#[must_use = "staged events count as recorded only once durable() says so"]
pub struct Staged {
    recorded: Vec<Event>,
    /// Seq of the last staged event (with none staged: the last event
    /// staged before; 0 when nothing at all was staged).
    last: u64,
    /// The commit request; `None` when nothing was staged.
    pending: Option<commit::Pending>,
}

impl Staged {
    /// Seq of the last staged event; with none (state changes alone), of
    /// the last event staged before; 0 when nothing was staged.
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// Wait for the commit: the events as recorded once durable. On
    /// failure ([`JournalError::NotDurable`]) they keep their seqs and
    /// become durable with a later commit: wait with
    /// [`Journal::wait_durable`], never stage them again (that would
    /// duplicate them under new ids).
    pub async fn durable(self) -> Result<Vec<Event>, JournalError> {
        let Some(pending) = self.pending else {
            return Ok(self.recorded);
        };
        match pending.wait().await {
            Ok(()) => Ok(self.recorded),
            Err(e) => Err(JournalError::NotDurable {
                first: self.last + 1 - self.recorded.len() as u64,
                last: self.last,
                reason: e.to_string(),
            }),
        }
    }
}

impl Journal {
    /// Open (or create) the journal. `sinks` are the names of every sink
    /// that must acknowledge an event before it may be removed.
    ///
    /// Reads only a few metadata keys: the cost does not grow with the
    /// backlog. Fails with [`JournalError::Storage`] naming the path when
    /// another process holds the store.
    pub fn open(
        cfg: &JournalConfig,
        gateway: &str,
        sinks: &[&str],
    ) -> Result<Journal, JournalError> {
        let storage = SledStorage::open(&cfg.path, cfg.cache_bytes).map_err(|e| {
            JournalError::Storage(format!("journal at {}: {e}", cfg.path.display()))
        })?;
        Journal::with_storage_and_wal(Arc::new(storage), Some(&cfg.path), cfg, gateway, sinks)
    }

    /// Open the journal over any storage engine (tests use [`MemStorage`]),
    /// without a WAL: every commit flushes the store.
    /// `cfg.path` and `cfg.cache_bytes` are not used.
    pub fn with_storage(
        storage: Arc<dyn Storage>,
        cfg: &JournalConfig,
        gateway: &str,
        sinks: &[&str],
    ) -> Result<Journal, JournalError> {
        Journal::with_storage_and_wal(storage, None, cfg, gateway, sinks)
    }

    /// Open the journal over a storage engine with the write-ahead log's
    /// files in `wal_dir` (see `wal.rs`); their records newer than the
    /// store's last event are replayed into the store first.
    pub fn with_storage_and_wal(
        storage: Arc<dyn Storage>,
        wal_dir: Option<&std::path::Path>,
        cfg: &JournalConfig,
        gateway: &str,
        sinks: &[&str],
    ) -> Result<Journal, JournalError> {
        Journal::with_storage_and_wal_sized(storage, wal_dir, wal::WAL_BYTES, cfg, gateway, sinks)
    }

    /// [`with_storage_and_wal`](Self::with_storage_and_wal) with WAL files
    /// of `wal_bytes` (tests: small files fill up and switch quickly).
    pub(crate) fn with_storage_and_wal_sized(
        storage: Arc<dyn Storage>,
        wal_dir: Option<&std::path::Path>,
        wal_bytes: u64,
        cfg: &JournalConfig,
        gateway: &str,
        sinks: &[&str],
    ) -> Result<Journal, JournalError> {
        let (wal, replay) = match wal_dir {
            None => (None, Vec::new()),
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    JournalError::Storage(format!("creating {}: {e}", dir.display()))
                })?;
                let (w, records) = wal::WalPair::open(dir, wal_bytes, cfg.fsync)
                    .map_err(|e| JournalError::Storage(format!("journal WAL: {e}")))?;
                (Some(w), records)
            }
        };
        let mut sinks: Vec<String> = sinks.iter().map(|s| s.to_string()).collect();
        sinks.sort();
        sinks.dedup();

        let meta = match storage.get(keys::META)? {
            Some(raw) => Meta::decode(&raw).ok_or_else(|| {
                JournalError::Storage(format!(
                    "journal metadata record is damaged ({} bytes)",
                    raw.len()
                ))
            })?,
            None => Meta::default(),
        };
        let meta = recover(storage.as_ref(), meta)?;
        // The WAL's state snapshots and cursor positions newer than the
        // store's; its events after the store's last.
        let state_version = apply_wal_states(storage.as_ref(), &replay)?;
        let logged_cursors = wal_cursors(&replay);
        let pending = replayable(replay, meta.last_seq);
        let events_end = pending.last().map_or(meta.last_seq, |(s, _)| *s);

        let mut batch = Batch::default();
        batch.put(keys::META, meta.encode());
        let mut event_cursors = BTreeMap::new();
        let mut telemetry_cursors = BTreeMap::new();
        for sink in &sinks {
            let logged = |tag: u8| logged_cursors.get(&(tag, sink.clone())).copied();
            let e = read_cursor(storage.as_ref(), &keys::event_cursor(sink))?
                .max(logged(b'e'))
                .unwrap_or(meta.events_removed)
                .clamp(meta.events_removed, events_end);
            let t = read_cursor(storage.as_ref(), &keys::telemetry_cursor(sink))?
                .max(logged(b't'))
                .unwrap_or(meta.telemetry_removed)
                .clamp(meta.telemetry_removed, meta.telemetry_last);
            batch.put(keys::event_cursor(sink), e.to_be_bytes().to_vec());
            batch.put(keys::telemetry_cursor(sink), t.to_be_bytes().to_vec());
            event_cursors.insert(sink.clone(), e);
            telemetry_cursors.insert(sink.clone(), t);
        }
        storage.apply(batch)?;
        storage.flush()?;
        if cfg.fsync {
            storage.sync()?;
        }

        let head = JournalHead {
            last_seq: meta.last_seq,
            last_telemetry: meta.telemetry_last,
        };
        let (head_tx, _) = watch::channel(head);
        let tail = load_tail(storage.as_ref(), &meta)?;
        let assigned_seq = pending.last().map_or(meta.last_seq, |(s, _)| *s);
        let shared = Arc::new(Shared {
            storage,
            state: Mutex::new(State {
                meta,
                assigned_seq,
                pending,
                tail,
                event_cursors,
                telemetry_cursors,
                pressure: false,
                telemetry_evicted: 0,
                store_failing: false,
                held_events: Vec::new(),
                unlogged: Vec::new(),
                unlogged_states: Vec::new(),
                states_ticket: 0,
                states_pending: Vec::new(),
                state_version,
                held_states: BTreeMap::new(),
                held_event_bytes: 0,
                lazy_wal: Vec::new(),
                held_telemetry: VecDeque::new(),
                held_telemetry_bytes: 0,
                cursors_moved: false,
            }),
            durable_seq: AtomicU64::new(meta.last_seq),
            dirty: AtomicBool::new(false),
            bytes_on_disk: AtomicU64::new(0),
            head: head_tx,
            fsync: cfg.fsync,
            max_bytes: cfg.max_bytes,
            gateway: gateway.to_string(),
            wal: Mutex::new(wal),
            rotated: AtomicBool::new(false),
            needs_checkpoint: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            heartbeat: std::sync::OnceLock::new(),
            disk_low: AtomicBool::new(false),
            wal_full: AtomicBool::new(false),
            checkpoints: AtomicU64::new(0),
            durable_states: AtomicU64::new(0),
        });
        if assigned_seq > meta.last_seq {
            tracing::info!(
                from = meta.last_seq + 1,
                to = assigned_seq,
                "journal: events recovered from the WAL"
            );
        }
        // Replayed events into the store, then a checkpoint: the WAL
        // starts its first generation of this run empty.
        let (last, states) = shared.write_pending(false)?;
        shared.checkpoint()?;
        shared.set_durable(last, states);
        shared.refresh_size();
        // A sink dropped from the configuration may unblock removal.
        shared.remove_acknowledged()?;
        {
            let mut st = shared.lock();
            shared.enforce_cap(&mut st)?;
        }
        let committer = Committer::spawn(shared.clone(), cfg.telemetry_flush)
            .map_err(|e| JournalError::Storage(format!("starting journal committer: {e}")))?;
        tracing::info!(
            last_seq = meta.last_seq,
            events = meta.event_count(),
            telemetry = meta.telemetry_count(),
            sinks = ?sinks,
            "journal open"
        );
        Ok(Journal {
            inner: Arc::new(Inner {
                shared,
                committer,
                sinks: Mutex::new(sinks),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Tests: the state changes the WAL holds (since the last
    /// checkpoint), in order: name and the bytes of the record's payload
    /// (name length, name, data).
    #[cfg(test)]
    pub(crate) fn logged_states(&self) -> Vec<(String, usize)> {
        let records = match self.shared().wal().as_ref() {
            Some(w) => w.read_back().unwrap_or_default(),
            None => Vec::new(),
        };
        records
            .iter()
            .filter(|r| matches!(wal::kind(r.seq), wal::KIND_STATE | wal::KIND_STATE_REMOVED))
            .filter_map(|r| decode_state_record(r).map(|(name, ..)| (name, r.payload.len())))
            .collect()
    }

    /// Tests: drop this handle as a killed process would, without the
    /// committer's final checkpoint.
    #[cfg(test)]
    pub(crate) fn abandon(self) {
        self.shared().abandoned.store(true, Ordering::SeqCst);
    }

    /// Have the committer thread beat `hb` once per iteration; it wakes at
    /// least every `telemetry_flush`. Register `hb` with that period plus
    /// the longest a flush may take. Only the first heartbeat set is kept.
    pub fn set_heartbeat(&self, hb: crate::service::liveness::Heartbeat) {
        let _ = self.shared().heartbeat.set(hb);
    }

    /// Record events: assigns `seq`/`id`, and returns only once they are durable.
    ///
    /// On a storage error the events keep their seqs and stay queued (or
    /// written but not yet flushed): a later commit makes them durable. A
    /// caller that retries may then record them twice, under new seqs.
    /// Duplicates beat a lost alarm.
    /// Dropping the returned future before it completes does not withdraw
    /// the events: they are recorded all the same.
    pub async fn record(&self, events: Vec<NewEvent>) -> Result<Vec<Event>, JournalError> {
        self.record_with_states(events, Vec::new()).await
    }

    /// [`record`](Self::record) events together with a named state snapshot
    /// (see [`save_state`](Self::save_state)), durable in the same commit,
    /// the snapshot after the events: a crash keeps the events without the
    /// snapshot or both, never the snapshot alone.
    pub async fn record_with_state(
        &self,
        events: Vec<NewEvent>,
        state: Option<(&str, Vec<u8>)>,
    ) -> Result<Vec<Event>, JournalError> {
        let states = state
            .map(|(name, data)| (name.to_string(), Some(data)))
            .into_iter()
            .collect();
        self.record_with_states(events, states).await
    }

    /// [`record`](Self::record) events together with changes to named
    /// states, durable in the same commit: each `(name, Some(data))`
    /// replaces the state `name`, each `(name, None)` removes it. The
    /// changes are applied in order, after the events: a crash keeps the
    /// events alone, the events and a prefix of the changes, or all of
    /// them; never a change without the events before it.
    ///
    /// A name longer than [`MAX_STATE_NAME`] bytes is refused
    /// ([`JournalError::StateName`]) before anything is recorded.
    pub async fn record_with_states(
        &self,
        events: Vec<NewEvent>,
        states: Vec<StateChange>,
    ) -> Result<Vec<Event>, JournalError> {
        self.stage_with_states(events, states)
            .map_err(|r| r.error)?
            .durable()
            .await
    }

    /// The first half of [`record_with_states`](Self::record_with_states):
    /// give the events their seqs, queue them and the state changes for
    /// the committer and ask it to commit, without waiting. The caller
    /// goes on (staging more: each joins the next group commit) and waits
    /// with [`Staged::durable`]; nothing counts as recorded before that
    /// returns `Ok`. Successive stagings are committed in order.
    ///
    /// Refused ([`Refused`], the events and changes handed back) for the
    /// errors `record_with_states` returns before anything is staged
    /// ([`JournalError::Full`], [`JournalError::StateName`], an encoding
    /// failure): nothing was given a seq.
    pub fn stage_with_states(
        &self,
        events: Vec<NewEvent>,
        states: Vec<StateChange>,
    ) -> Result<Staged, Refused> {
        if events.is_empty() && states.is_empty() {
            return Ok(Staged {
                recorded: Vec::new(),
                last: 0,
                pending: None,
            });
        }
        if let Some((name, _)) = states.iter().find(|(n, _)| n.len() > MAX_STATE_NAME) {
            let error = JournalError::StateName(name.len());
            return Err(Refused {
                error,
                events,
                states,
            });
        }
        let sh = self.shared();
        let (recorded, last, ticket) = {
            let mut st = sh.lock();
            if st.store_failing && st.pending.len() >= MAX_QUEUED_WHILE_FAILING {
                let error = JournalError::Full(format!(
                    "{} events wait for room: the write-ahead log is full and the store \
                     cannot be written",
                    st.pending.len()
                ));
                return Err(Refused {
                    error,
                    events,
                    states,
                });
            }
            let mut seq = st.assigned_seq;
            let mut out = Vec::with_capacity(events.len());
            let mut staged = Vec::with_capacity(events.len());
            let mut bodies = events.into_iter();
            while let Some(body) = bodies.next() {
                seq += 1;
                let ev = Event {
                    id: event_id(&sh.gateway, seq),
                    seq,
                    body,
                };
                // Sized for a typical alarm event: no growing copies.
                let mut payload = Vec::with_capacity(PAYLOAD_CAPACITY);
                match serde_json::to_writer(&mut payload, &ev) {
                    Ok(()) => staged.push((seq, payload)),
                    Err(e) => {
                        // Nothing staged: every event back, in order.
                        let events = out
                            .into_iter()
                            .chain(std::iter::once(ev))
                            .map(|e: Event| e.body)
                            .chain(bodies)
                            .collect();
                        return Err(Refused {
                            error: JournalError::Storage(format!("encoding event {seq}: {e}")),
                            events,
                            states,
                        });
                    }
                }
                out.push(ev);
            }
            st.assigned_seq = seq;
            st.pending.extend(staged);
            let mut ticket = 0;
            if !states.is_empty() {
                st.states_pending.extend(states);
                st.states_ticket += 1;
                ticket = st.states_ticket;
            }
            (out, seq, ticket)
        };
        Ok(Staged {
            pending: Some(self.inner.committer.submit(last, ticket)),
            recorded,
            last,
        })
    }

    /// Save a small named state snapshot (the alarm engine's states) in
    /// the journal: durable when this returns (a WAL record with group
    /// commit, then the store at the next checkpoint), instead of a
    /// separately written and fsynced file. Names are at most 255 bytes.
    /// On `NotDurable` the snapshot is still queued and saved with a later
    /// commit (unless a newer one of the same name is saved first).
    pub async fn save_state(&self, name: &str, data: Vec<u8>) -> Result<(), JournalError> {
        self.record_with_state(Vec::new(), Some((name, data)))
            .await
            .map(|_| ())
    }

    /// The last saved snapshot named `name` (also one not yet durable);
    /// `None` if there is none or it was removed.
    pub fn load_state(&self, name: &str) -> Result<Option<Vec<u8>>, JournalError> {
        let sh = self.shared();
        let st = sh.lock();
        if let Some((_, data)) = st.states_pending.iter().rev().find(|(n, _)| n == name) {
            return Ok(data.clone());
        }
        if let Some((_, data)) = st.held_states.get(name) {
            return Ok(data.clone());
        }
        if let Some((_, _, data)) = st.unlogged_states.iter().rev().find(|(n, _, _)| n == name) {
            return Ok(data.clone());
        }
        Ok(sh
            .storage
            .get(&keys::state(name))?
            .map(|v| v.get(8..).unwrap_or_default().to_vec()))
    }

    /// Every saved state whose name starts with `prefix`, by name, with
    /// its data: the store's, then changes the WAL did not take (kept
    /// until the next checkpoint), then changes written to the WAL alone
    /// while the store fails, then changes not yet durable, each applied
    /// in order (removals included), as [`load_state`](Self::load_state)
    /// sees them.
    pub fn load_states(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, JournalError> {
        let sh = self.shared();
        let st = sh.lock();
        let start = keys::state(prefix);
        // Names are UTF-8, which never holds the byte 0xff.
        let end = [&start[..], &[0xff]].concat();
        let stored = sh
            .storage
            .range(&start, &end, usize::MAX)?
            .into_iter()
            .filter_map(|(k, v)| {
                let name = String::from_utf8(k.get(1..)?.to_vec()).ok()?;
                Some((name, v.get(8..).unwrap_or_default().to_vec()))
            });
        let changes = st
            .unlogged_states
            .iter()
            .map(|(name, _, data)| (name, data))
            .chain(st.held_states.iter().map(|(name, (_, data))| (name, data)))
            .chain(st.states_pending.iter().map(|(name, data)| (name, data)));
        Ok(merge_states(stored, changes, prefix))
    }

    /// Wait until every event up to `seq`, and every state change queued
    /// before this call, is durable (after a [`JournalError::NotDurable`]
    /// from [`record`](Self::record)).
    pub async fn wait_durable(&self, seq: u64) -> Result<(), JournalError> {
        let ticket = self.shared().lock().states_ticket;
        self.inner.committer.wait_durable(seq, ticket).await
    }

    /// Record one telemetry message (durable within `telemetry_flush_s`).
    ///
    /// Refused with [`JournalError::Full`] while events alone exceed the
    /// size cap (see [`JournalStats::pressure`]).
    pub fn record_telemetry(&self, payload: &[u8]) -> Result<(), JournalError> {
        if payload.len() > MAX_TELEMETRY_BYTES {
            return Err(JournalError::TooLarge(payload.len()));
        }
        let sh = self.shared();
        if sh.disk_low.load(Ordering::Relaxed) {
            return Err(JournalError::Full(
                "the journal's filesystem is low on space".into(),
            ));
        }
        let mut st = sh.lock();
        if st.store_failing {
            return Err(JournalError::Full(
                "the journal's store cannot be written (filesystem full?)".into(),
            ));
        }
        if st.pressure {
            return Err(JournalError::Full(format!(
                "undelivered events take {} bytes of the {} byte cap",
                st.event_bytes(),
                sh.max_bytes
            )));
        }
        if st.held_telemetry_bytes >= HELD_TELEMETRY_MAX {
            return Err(JournalError::Full(
                "telemetry waiting to be written fills its memory".into(),
            ));
        }
        let key = st.telemetry_last() + 1;
        st.held_telemetry_bytes += keys::entry_cost(&keys::telemetry(key), payload);
        st.held_telemetry.push_back((key, payload.to_vec()));
        if st.held_telemetry_bytes > HELD_TELEMETRY_BYTES {
            // On failure it stays held (up to HELD_TELEMETRY_MAX) and the
            // next checkpoint, which reports the failure, tries again.
            if let Err(e) = sh.write_held_telemetry(&mut st) {
                tracing::debug!(error = %e, "held telemetry not written yet");
            }
        }
        sh.dirty.store(true, Ordering::SeqCst);
        sh.enforce_cap(&mut st)?;
        let last = st.telemetry_last();
        drop(st);
        sh.head.send_modify(|h| h.last_telemetry = last);
        Ok(())
    }

    /// Up to `max` events with `seq > after`, oldest first. Only durable
    /// events are returned.
    pub fn read_events(&self, after: u64, max: usize) -> Result<Vec<StoredEvent>, JournalError> {
        let sh = self.shared();
        let durable = sh.durable_seq.load(Ordering::SeqCst);
        let (from, held, durable) = {
            let st = sh.lock();
            let from = after.max(st.held_from()).saturating_add(1);
            // Events held (in the WAL, not yet in the store): the store
            // holds everything up to `meta.last_seq`.
            let held: Vec<StoredEvent> = st
                .held_events
                .iter()
                .filter(|(seq, _)| *seq >= from && *seq <= durable)
                .take(max)
                .map(|(seq, payload)| StoredEvent {
                    seq: *seq,
                    payload: payload.clone(),
                })
                .collect();
            if from > st.meta.last_seq {
                // Nothing the store holds.
                return Ok(held);
            }
            let durable = if st.store_failing {
                durable.min(st.meta.last_seq)
            } else {
                durable
            };
            // The newest events are in the tail block, kept in memory.
            if !st.store_failing {
                if let Some(t) = st.tail.as_ref().filter(|t| from >= t.first) {
                    let mut out: Vec<StoredEvent> = (t.first..)
                        .zip(&t.payloads)
                        .filter(|(seq, _)| *seq >= from && *seq <= durable)
                        .take(max)
                        .map(|(seq, payload)| StoredEvent {
                            seq,
                            payload: payload.clone(),
                        })
                        .collect();
                    let room = max - out.len();
                    out.extend(held.into_iter().take(room));
                    return Ok(out);
                }
            }
            (from, held, durable)
        };
        if max == 0 || from > durable {
            return Ok(held);
        }
        // The block holding `from` starts at or before it.
        let start = match sh.storage.last(&keys::event(0), &keys::event(from))? {
            Some((k, _)) => k,
            None => keys::event(from).to_vec(),
        };
        let blocks = sh
            .storage
            .range(&start, &keys::event(durable), max.saturating_add(1))?;
        let mut out = Vec::new();
        'blocks: for (k, v) in blocks {
            let first = keys::decode_key(&k);
            let Some(payloads) = keys::decode_block(&v) else {
                tracing::error!(first, "journal: damaged event block skipped");
                continue;
            };
            for (seq, payload) in (first..).zip(payloads) {
                if seq > durable || out.len() >= max {
                    break 'blocks;
                }
                if seq >= from {
                    out.push(StoredEvent {
                        seq,
                        payload: payload.to_vec(),
                    });
                }
            }
        }
        let room = max - out.len();
        out.extend(held.into_iter().take(room));
        Ok(out)
    }

    /// `sink` has delivered every event up to `upto` (inclusive). Cursors
    /// only move forward; `upto` past the last durable seq is clamped.
    /// Events every sink has acknowledged are removed.
    pub fn ack_events(&self, sink: &str, upto: u64) -> Result<(), JournalError> {
        self.ack(Lane::Events, sink, upto)
    }

    /// Last seq acknowledged by `sink` (0 for a sink not named at open).
    pub fn acked_seq(&self, sink: &str) -> u64 {
        self.shared()
            .lock()
            .event_cursors
            .get(sink)
            .copied()
            .unwrap_or(0)
    }

    /// Up to `max` telemetry messages with `key > after`, oldest first:
    /// stored ones, then held ones.
    pub fn read_telemetry(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<StoredTelemetry>, JournalError> {
        let sh = self.shared();
        let (from, stored_last, held) = {
            let st = sh.lock();
            let from = after.max(st.meta.telemetry_removed).saturating_add(1);
            // Copied under the lock: a concurrent write moves them to the
            // store, after `stored_last`.
            let held: Vec<StoredTelemetry> = st
                .held_telemetry
                .iter()
                .filter(|(k, _)| *k >= from)
                .take(max)
                .map(|(k, p)| StoredTelemetry {
                    key: *k,
                    payload: p.clone(),
                })
                .collect();
            (from, st.meta.telemetry_last, held)
        };
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        if from <= stored_last {
            out = sh
                .storage
                .range(&keys::telemetry(from), &keys::telemetry(stored_last), max)?
                .into_iter()
                .map(|(k, v)| StoredTelemetry {
                    key: keys::decode_key(&k),
                    payload: v,
                })
                .collect();
        }
        let room = max - out.len();
        out.extend(held.into_iter().take(room));
        Ok(out)
    }

    /// `sink` has delivered telemetry up to `upto` (inclusive).
    pub fn ack_telemetry(&self, sink: &str, upto: u64) -> Result<(), JournalError> {
        self.ack(Lane::Telemetry, sink, upto)
    }

    /// Move `sink`'s cursor in `lane` to `upto` (capped at what exists and,
    /// for events, at what is durable), then remove what every sink has
    /// acknowledged. An ack that moves nothing still retries a removal that
    /// failed after the cursor was written.
    fn ack(&self, lane: Lane, sink: &str, upto: u64) -> Result<(), JournalError> {
        let sh = self.shared();
        {
            let mut st = sh.lock();
            let (cap, key) = match lane {
                Lane::Events => (
                    sh.durable_seq.load(Ordering::SeqCst),
                    keys::event_cursor(sink),
                ),
                Lane::Telemetry => (st.telemetry_last(), keys::telemetry_cursor(sink)),
            };
            let cursors = match lane {
                Lane::Events => &mut st.event_cursors,
                Lane::Telemetry => &mut st.telemetry_cursors,
            };
            let cur = *cursors
                .get(sink)
                .ok_or_else(|| JournalError::UnknownSink(sink.to_string()))?;
            let upto = upto.min(cap);
            if upto > cur {
                if sh.has_wal() || matches!(lane, Lane::Telemetry) {
                    // Written with the held events and telemetry, at the
                    // latest by the next checkpoint (the WAL has it before).
                    st.cursors_moved = true;
                } else if !st.store_failing {
                    let mut batch = Batch::default();
                    batch.put(key, upto.to_be_bytes().to_vec());
                    if let Err(e) = sh.storage.apply(batch) {
                        if !sh.has_wal() {
                            return Err(e.into());
                        }
                        sh.enter_store_failing(&mut st, &e.to_string());
                    }
                }
                // While the store is failing the cursor is kept in memory
                // and written by the reopen.
                let cursors = match lane {
                    Lane::Events => &mut st.event_cursors,
                    Lane::Telemetry => &mut st.telemetry_cursors,
                };
                cursors.insert(sink.to_string(), upto);
                if sh.has_wal() {
                    // The latest position per sink and lane is enough.
                    let rec = cursor_record(lane, sink, upto);
                    st.lazy_wal.retain(|(_, p)| *p != rec.1);
                    st.lazy_wal.push(rec);
                }
                sh.dirty.store(true, Ordering::SeqCst);
            }
        }
        sh.remove_acknowledged()
    }

    /// Last telemetry key acknowledged by `sink` (0 for an unknown sink).
    pub fn acked_telemetry(&self, sink: &str) -> u64 {
        self.shared()
            .lock()
            .telemetry_cursors
            .get(sink)
            .copied()
            .unwrap_or(0)
    }

    /// Notified whenever something is recorded (events once durable).
    pub fn watch(&self) -> watch::Receiver<JournalHead> {
        self.shared().head.subscribe()
    }

    /// Current counters (no I/O).
    pub fn stats(&self) -> JournalStats {
        let sh = self.shared();
        let st = sh.lock();
        let last_seq = sh.durable_seq.load(Ordering::SeqCst);
        JournalStats {
            events: last_seq.saturating_sub(st.held_from()),
            telemetry: st.telemetry_count(),
            bytes_on_disk: sh.bytes_on_disk.load(Ordering::Relaxed),
            last_seq,
            live_bytes: st.live_bytes(),
            pressure: st.pressure,
            telemetry_evicted: st.telemetry_evicted,
            store_failing: st.store_failing,
            wal_full: sh.wal_full.load(Ordering::SeqCst),
            checkpoints: sh.checkpoints.load(Ordering::Relaxed),
        }
    }

    /// The sinks named at open (or by the last [`set_sinks`](Self::set_sinks)), sorted.
    pub fn sinks(&self) -> Vec<String> {
        self.inner
            .sinks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Tell the journal its filesystem is low on space (or no longer is).
    /// While low, telemetry is refused with [`JournalError::Full`]; events
    /// are still recorded. The storage engine fails every write once the
    /// filesystem is really full, so the space left is kept for alarms.
    pub fn set_disk_low(&self, low: bool) {
        self.shared().disk_low.store(low, Ordering::Relaxed);
    }

    /// Change the set of sinks while running (a configuration reload).
    ///
    /// A sink that was already there keeps its cursors. A new sink gets its
    /// cursors as at [`open`](Self::open): the ones it stored before, if
    /// any, else the oldest event kept — so it delivers what is still
    /// undelivered elsewhere. A sink left out no longer holds events back
    /// (its stored cursors stay, as a sink dropped across a restart);
    /// events every remaining sink has acknowledged are removed.
    pub fn set_sinks(&self, sinks: &[&str]) -> Result<(), JournalError> {
        let mut names: Vec<String> = sinks.iter().map(|s| s.to_string()).collect();
        names.sort();
        names.dedup();
        let sh = self.shared();
        {
            let mut st = sh.lock();
            let mut batch = Batch::default();
            let mut added = Vec::new();
            for sink in &names {
                if st.event_cursors.contains_key(sink) {
                    continue;
                }
                let e = read_cursor(sh.storage.as_ref(), &keys::event_cursor(sink))?
                    .unwrap_or(st.meta.events_removed)
                    .clamp(st.meta.events_removed, st.events_last());
                let t = read_cursor(sh.storage.as_ref(), &keys::telemetry_cursor(sink))?
                    .unwrap_or(st.meta.telemetry_removed)
                    .clamp(st.meta.telemetry_removed, st.telemetry_last());
                batch.put(keys::event_cursor(sink), e.to_be_bytes().to_vec());
                batch.put(keys::telemetry_cursor(sink), t.to_be_bytes().to_vec());
                added.push((sink.clone(), e, t));
            }
            sh.storage.apply(batch)?;
            for (sink, e, t) in added {
                st.event_cursors.insert(sink.clone(), e);
                st.telemetry_cursors.insert(sink, t);
            }
            st.event_cursors.retain(|k, _| names.contains(k));
            st.telemetry_cursors.retain(|k, _| names.contains(k));
            sh.dirty.store(true, Ordering::SeqCst);
        }
        tracing::info!(sinks = ?names, "journal sinks changed");
        *self
            .inner
            .sinks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = names;
        sh.remove_acknowledged()
    }

    /// Make everything recorded so far durable (shutdown path).
    pub async fn flush(&self) -> Result<(), JournalError> {
        let sh = self.shared();
        let (last, ticket) = {
            let st = sh.lock();
            (st.assigned_seq, st.states_ticket)
        };
        self.inner.committer.checkpoint(last, ticket).await
    }
}

/// WAL records to replay: those after the store's last event, as long as
/// their seqs follow on without a gap.
fn replayable(records: Vec<wal::WalRecord>, last_seq: u64) -> Vec<(u64, Vec<u8>)> {
    let mut next = last_seq + 1;
    let mut out = Vec::new();
    for r in records
        .into_iter()
        .filter(|r| wal::kind(r.seq) == wal::KIND_EVENT)
    {
        if r.seq < next {
            continue;
        }
        if r.seq > next {
            tracing::error!(
                expected = next,
                found = r.seq,
                "journal: WAL does not follow on from the store; later records not replayed"
            );
            break;
        }
        out.push((r.seq, r.payload));
        next += 1;
    }
    out
}

fn read_cursor(storage: &dyn Storage, key: &[u8]) -> Result<Option<u64>, JournalError> {
    Ok(storage.get(key)?.and_then(|v| keys::decode_u64(&v)))
}

/// Bring the metadata up to date with the entries after a crash, in a
/// few bounded reads. Writes are applied in order and a crash keeps a
/// prefix of them; entries are written before the metadata that counts
/// them, and the metadata before the deletions it announces. So after a
/// crash there may be entries past the recorded end of a lane (written,
/// not yet counted: at most one commit's worth), and entries at or below
/// the recorded start (a removal cut short: at most one chunk).
fn recover(storage: &dyn Storage, meta: Meta) -> Result<Meta, JournalError> {
    if meta.events_removed > meta.last_seq || meta.telemetry_removed > meta.telemetry_last {
        return Err(JournalError::Storage(format!(
            "journal metadata is inconsistent: {meta:?}"
        )));
    }
    let meta = recover_events(storage, meta)?;
    recover_telemetry(storage, meta)
}

/// Delete every key in `start..=end`, in chunks.
fn delete_range(storage: &dyn Storage, start: &[u8], end: &[u8]) -> Result<(), JournalError> {
    loop {
        let left = storage.range(start, end, REMOVE_CHUNK)?;
        if left.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        for (k, _) in left {
            batch.delete(k);
        }
        storage.apply(batch)?;
    }
}

fn recover_events(storage: &dyn Storage, mut meta: Meta) -> Result<Meta, JournalError> {
    // A removal cut short: `events_removed` is the last seq of a removed
    // block, so every block starting at or below it is a leftover.
    delete_range(storage, &keys::event(0), &keys::event(meta.events_removed))?;
    // The block that held `last_seq` when the metadata was written (it may
    // have been rewritten since with more events), and any written after.
    let anchor = if meta.last_seq > meta.events_removed {
        storage
            .last(
                &keys::event(meta.events_removed + 1),
                &keys::event(meta.last_seq),
            )?
            .map(|(k, _)| keys::decode_key(&k))
    } else {
        None
    };
    let mut from = anchor.unwrap_or(meta.last_seq + 1);
    let mut cost = 0;
    let mut end = meta.last_seq;
    let mut last_cost = None;
    loop {
        let blocks = storage.range(&keys::event(from), &keys::event(u64::MAX), REMOVE_CHUNK)?;
        let Some((k, _)) = blocks.last() else { break };
        from = keys::decode_key(k).saturating_add(1);
        for (k, v) in &blocks {
            let first = keys::decode_key(k);
            let count = keys::block_count(v).unwrap_or(1);
            end = end.max((first + count).saturating_sub(1));
            let c = keys::entry_cost(k, v);
            cost += c;
            last_cost = Some(c);
        }
    }
    if let Some(tail_cost) = last_cost {
        meta.event_bytes = meta.event_bytes.saturating_sub(meta.tail_cost) + cost;
        meta.tail_cost = tail_cost;
        if end > meta.last_seq {
            tracing::info!(
                from = meta.last_seq + 1,
                to = end,
                "journal: recovered events written before a crash"
            );
        }
        meta.last_seq = end;
    }
    // The oldest held block must start right after the removed ones.
    if meta.last_seq > meta.events_removed {
        let first = storage.range(
            &keys::event(meta.events_removed + 1),
            &keys::event(meta.last_seq),
            1,
        )?;
        let first = first.first().map(|(k, _)| keys::decode_key(k));
        if first != Some(meta.events_removed + 1) {
            tracing::error!(
                expected = meta.events_removed + 1,
                found = ?first,
                "journal: events missing at the start of the journal; skipping them"
            );
            meta.events_removed = first.map_or(meta.last_seq, |f| f - 1);
            if first.is_none() {
                meta.event_bytes = 0;
                meta.tail_cost = 0;
            }
        }
    }
    Ok(meta)
}

fn recover_telemetry(storage: &dyn Storage, mut meta: Meta) -> Result<Meta, JournalError> {
    let key = keys::telemetry;
    // Entries written after the last metadata write.
    if let Some((k, _)) =
        storage.last(&key(meta.telemetry_last.saturating_add(1)), &key(u64::MAX))?
    {
        let end = keys::decode_key(&k);
        let mut from = meta.telemetry_last + 1;
        while from <= end {
            let chunk = storage.range(&key(from), &key(end), REMOVE_CHUNK)?;
            let Some((k, _)) = chunk.last() else { break };
            from = keys::decode_key(k) + 1;
            meta.telemetry_bytes += chunk
                .iter()
                .map(|(k, v)| keys::entry_cost(k, v))
                .sum::<u64>();
        }
        meta.telemetry_last = end;
    }
    // A removal cut short.
    delete_range(storage, &key(0), &key(meta.telemetry_removed))?;
    // The oldest held entry must directly follow the removed ones.
    if meta.telemetry_last > meta.telemetry_removed {
        let first = storage.range(
            &key(meta.telemetry_removed + 1),
            &key(meta.telemetry_last),
            1,
        )?;
        let first = first.first().map(|(k, _)| keys::decode_key(k));
        if first != Some(meta.telemetry_removed + 1) {
            tracing::warn!(
                expected = meta.telemetry_removed + 1,
                found = ?first,
                "journal: telemetry missing at the start of its lane; skipping it"
            );
            meta.telemetry_removed = first.map_or(meta.telemetry_last, |f| f - 1);
            if first.is_none() {
                meta.telemetry_bytes = 0;
            }
        }
    }
    Ok(meta)
}

/// The block holding `meta.last_seq`, to append to.
fn load_tail(storage: &dyn Storage, meta: &Meta) -> Result<Option<Tail>, JournalError> {
    if meta.last_seq <= meta.events_removed {
        return Ok(None);
    }
    let Some((k, v)) = storage.last(
        &keys::event(meta.events_removed + 1),
        &keys::event(meta.last_seq),
    )?
    else {
        return Ok(None);
    };
    let Some(payloads) = keys::decode_block(&v) else {
        return Ok(None);
    };
    let first = keys::decode_key(&k);
    if first + payloads.len() as u64 - 1 != meta.last_seq {
        return Ok(None);
    }
    Ok(Some(Tail {
        first,
        payloads: payloads.iter().map(|p| p.to_vec()).collect(),
        size: v.len(),
        cost: keys::entry_cost(&k, &v),
    }))
}

/// The WAL record of a state snapshot, or of its removal (`data` `None`):
/// names are checked against [`MAX_STATE_NAME`] when recorded.
fn state_record(name: &str, version: u64, data: Option<&[u8]>) -> (u64, Vec<u8>) {
    let name = &name.as_bytes()[..name.len().min(MAX_STATE_NAME)];
    let kind = match data {
        Some(_) => wal::KIND_STATE,
        None => wal::KIND_STATE_REMOVED,
    };
    let data = data.unwrap_or_default();
    let mut p = Vec::with_capacity(1 + name.len() + data.len());
    p.push(name.len() as u8);
    p.extend_from_slice(name);
    p.extend_from_slice(data);
    (wal::tagged(kind, version), p)
}

/// The states named `prefix…`: `stored` (name, data) with `changes`
/// (`None`: removed) applied in order, by name.
fn merge_states<'a>(
    stored: impl IntoIterator<Item = (String, Vec<u8>)>,
    changes: impl IntoIterator<Item = (&'a String, &'a Option<Vec<u8>>)>,
    prefix: &str,
) -> Vec<(String, Vec<u8>)> {
    let mut out: BTreeMap<String, Vec<u8>> = stored
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .collect();
    for (name, data) in changes.into_iter().filter(|(n, _)| n.starts_with(prefix)) {
        match data {
            Some(d) => out.insert(name.clone(), d.clone()),
            None => out.remove(name),
        };
    }
    out.into_iter().collect()
}

/// (name, version, data; `None`: removed) of a state or state removal
/// record (`None` if damaged).
fn decode_state_record(r: &wal::WalRecord) -> Option<VersionedState> {
    let len = usize::from(*r.payload.first()?);
    let name = std::str::from_utf8(r.payload.get(1..1 + len)?).ok()?;
    let data = match wal::kind(r.seq) {
        wal::KIND_STATE => Some(r.payload[1 + len..].to_vec()),
        _ if r.payload.len() == 1 + len => None,
        _ => return None,
    };
    Some((name.to_string(), wal::value(r.seq), data))
}

/// The WAL record of a cursor position.
fn cursor_record(lane: Lane, sink: &str, upto: u64) -> (u64, Vec<u8>) {
    let tag = match lane {
        Lane::Events => b'e',
        Lane::Telemetry => b't',
    };
    (
        wal::tagged(wal::KIND_CURSOR, upto),
        [&[tag][..], sink.as_bytes()].concat(),
    )
}

/// The latest (highest) position per (lane tag, sink) among cursor records.
fn wal_cursors(records: &[wal::WalRecord]) -> BTreeMap<(u8, String), u64> {
    let mut out: BTreeMap<(u8, String), u64> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| wal::kind(r.seq) == wal::KIND_CURSOR)
    {
        let Some((&tag, sink)) = r.payload.split_first() else {
            continue;
        };
        let Ok(sink) = std::str::from_utf8(sink) else {
            continue;
        };
        let e = out.entry((tag, sink.to_string())).or_default();
        *e = (*e).max(wal::value(r.seq));
    }
    out
}

/// The newest change per name among state and state removal records:
/// (version, data; `None`: removed).
fn wal_states(records: &[wal::WalRecord]) -> BTreeMap<String, (u64, Option<Vec<u8>>)> {
    let mut out: BTreeMap<String, (u64, Option<Vec<u8>>)> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| matches!(wal::kind(r.seq), wal::KIND_STATE | wal::KIND_STATE_REMOVED))
    {
        let Some((name, version, data)) = decode_state_record(r) else {
            tracing::warn!("journal: damaged state record in the WAL skipped");
            continue;
        };
        if out.get(&name).is_none_or(|(v, _)| *v < version) {
            out.insert(name, (version, data));
        }
    }
    out
}

/// Stored state snapshots: name → version.
fn stored_state_versions(storage: &dyn Storage) -> Result<BTreeMap<String, u64>, JournalError> {
    let mut out = BTreeMap::new();
    for (k, v) in storage.range(b"s", b"s\xff", usize::MAX)? {
        let name = String::from_utf8_lossy(&k[1..]).into_owned();
        out.insert(name, v.get(..8).and_then(keys::decode_u64).unwrap_or(0));
    }
    Ok(out)
}

/// Bring the store's state snapshots up to the newest changes in `records`
/// (writing or deleting them); returns the highest version seen.
fn apply_wal_states(
    storage: &dyn Storage,
    records: &[wal::WalRecord],
) -> Result<u64, JournalError> {
    let stored = stored_state_versions(storage)?;
    let mut top = stored.values().copied().max().unwrap_or(0);
    let mut batch = Batch::default();
    for (name, (version, data)) in wal_states(records) {
        top = top.max(version);
        if stored.get(&name).is_none_or(|v| *v < version) {
            match data {
                Some(data) => batch.put(
                    keys::state(&name),
                    [&version.to_be_bytes()[..], &data].concat(),
                ),
                None => batch.delete(keys::state(&name)),
            }
        }
    }
    storage.apply(batch)?;
    Ok(top)
}
