//! Group commit: one thread makes the journal durable for every writer.
//!
//! A writer queues its batch (seqs given), then asks the committer to make
//! everything up to its seq durable, and waits at once (`wait_durable`) or
//! later (`submit`, then `Pending::wait`). The committer takes every
//! request queued at that moment, runs one flush (and `fsync`), and answers
//! them all: while a flush runs, new requests pile up and share the next
//! one. A request already covered by an earlier flush is answered at once.
//!
//! With a write-ahead log (the sled journal), a commit appends the events
//! to the WAL and `fdatasync`s it. The store is checkpointed every
//! `telemetry_flush` and when a WAL file fills up, on a background thread
//! (the WAL switches to its other file first, so commits go on), and in
//! line on [`CommitHandle::checkpoint`], at shutdown and after a WAL
//! failure. Without a WAL, every commit flushes the store.
//!
//! The I/O runs on this dedicated thread, never on the async runtime.
//! The thread also samples the store's size.

use super::{JournalError, Shared};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How often `bytes_on_disk` is sampled at most.
const SIZE_EVERY: Duration = Duration::from_secs(1);

type Reply = oneshot::Sender<Result<(), String>>;

struct Request {
    upto: u64,
    /// State ticket to cover (see `State::states_ticket`; 0: none).
    states: u64,
    /// Checkpoint the store too (shutdown, explicit flush).
    full: bool,
    reply: Reply,
}

/// Starts the committer thread.
pub(crate) struct Committer;

impl Committer {
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        lazy_every: Duration,
    ) -> std::io::Result<CommitHandle> {
        let (tx, rx) = mpsc::channel();
        let lazy_every = lazy_every.max(Duration::from_millis(10));
        let thread = std::thread::Builder::new()
            .name("journal-commit".into())
            .spawn(move || run(shared, rx, lazy_every))?;
        Ok(CommitHandle {
            tx: Some(tx),
            thread: Some(thread),
        })
    }
}

/// The writers' side. Dropping it stops the thread after a final flush.
pub(crate) struct CommitHandle {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl CommitHandle {
    /// Wait until every event up to `upto` and every state change up to
    /// ticket `states` (and everything applied before this call) is durable.
    pub(crate) async fn wait_durable(&self, upto: u64, states: u64) -> Result<(), JournalError> {
        self.request(upto, states, false).await
    }

    /// Checkpoint: everything written so far, telemetry and cursors
    /// included, is durable in the store itself.
    pub(crate) async fn checkpoint(&self, upto: u64, states: u64) -> Result<(), JournalError> {
        self.request(upto, states, true).await
    }

    /// Ask for what [`wait_durable`](Self::wait_durable) waits for, now,
    /// without waiting: the commit starts (or joins the next group) at
    /// once; [`Pending::wait`] then waits for its answer.
    pub(crate) fn submit(&self, upto: u64, states: u64) -> Pending {
        Pending(self.send(upto, states, false))
    }

    fn send(
        &self,
        upto: u64,
        states: u64,
        full: bool,
    ) -> Result<oneshot::Receiver<Result<(), String>>, JournalError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or_else(stopped)?
            .send(Request {
                upto,
                states,
                full,
                reply,
            })
            .map_err(|_| stopped())?;
        Ok(rx)
    }

    async fn request(&self, upto: u64, states: u64, full: bool) -> Result<(), JournalError> {
        Pending(self.send(upto, states, full)).wait().await
    }
}

fn stopped() -> JournalError {
    JournalError::Storage("journal committer has stopped".into())
}

/// A commit request on its way: see [`CommitHandle::submit`].
pub(crate) struct Pending(Result<oneshot::Receiver<Result<(), String>>, JournalError>);

impl Pending {
    /// The committer's answer: `Ok` once durable.
    pub(crate) async fn wait(self) -> Result<(), JournalError> {
        self.0?
            .await
            .map_err(|_| stopped())?
            .map_err(|e| JournalError::Storage(format!("flush failed: {e}")))
    }
}

impl Drop for CommitHandle {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("journal committer panicked");
            }
        }
    }
}

/// The background checkpoint thread, if one was started.
#[derive(Default)]
struct Background(Option<JoinHandle<()>>);

impl Background {
    fn busy(&self) -> bool {
        self.0.as_ref().is_some_and(|h| !h.is_finished())
    }
    fn join(&mut self) {
        if let Some(h) = self.0.take() {
            if h.join().is_err() {
                tracing::error!("journal checkpoint thread panicked");
            }
        }
    }
}

/// Flush the store on another thread, then drop the retired WAL file.
/// Only when no other background checkpoint runs: while one runs, a file
/// is retired, so the WAL cannot switch files again and the retired file
/// is the one whose records this flush covers.
fn start_background(shared: &Arc<Shared>, bg: &mut Background, epoch: u64) {
    bg.join();
    let sh = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("journal-checkpoint".into())
        .spawn(move || {
            let res = sh
                .flush_store()
                .inspect_err(|e| sh.store_failed(&e.to_string()))
                .and_then(|()| sh.reset_retired_wal(epoch));
            if let Err(e) = res {
                sh.dirty.store(true, Ordering::SeqCst);
                tracing::error!(error = %e, "journal background checkpoint failed; retrying");
            }
        });
    match spawned {
        Ok(h) => bg.0 = Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "no checkpoint thread; checkpointing in line");
            let _ = commit(shared, true);
        }
    }
}

/// Every `lazy_every`: make telemetry, cursors and removals durable, and
/// empty the WAL, with a checkpoint (in the background when possible).
fn lazy_checkpoint(shared: &Arc<Shared>, bg: &mut Background) {
    if !(shared.take_dirty() || shared.wal_has_records()) {
        return;
    }
    if !shared.has_wal() || shared.needs_checkpoint.load(Ordering::SeqCst) {
        bg.join();
        let _ = commit(shared, true);
    } else if bg.busy() {
        // Still flushing: try again at the next tick.
        shared.dirty.store(true, Ordering::SeqCst);
    } else if let Some(epoch) = shared.rotate_wal() {
        start_background(shared, bg, epoch);
    } else {
        // An earlier background checkpoint failed.
        let _ = commit(shared, true);
    }
}

/// Reopening a failing store: the first retry after this, doubling up to
/// [`REOPEN_MAX`].
const REOPEN_MIN: Duration = Duration::from_secs(1);
const REOPEN_MAX: Duration = Duration::from_secs(30);

/// When to try reopening a failing store next.
struct Reopen {
    at: Option<Instant>,
    backoff: Duration,
    attempts: u64,
}

impl Reopen {
    /// Try now if due (and the store is failing); schedule the next try.
    fn tick(&mut self, shared: &Shared, bg: &mut Background) {
        if !shared.store_failing() {
            self.at = None;
            self.backoff = REOPEN_MIN;
            return;
        }
        let now = Instant::now();
        let Some(at) = self.at else {
            self.at = Some(now + self.backoff);
            return;
        };
        if now < at {
            return;
        }
        bg.join();
        self.attempts += 1;
        match shared.try_reopen() {
            Ok(()) => {
                tracing::info!(attempts = self.attempts, "journal checkpoints resume");
                // Events queued while the WAL was full, whether or not
                // anybody still waits for them.
                let _ = commit(shared, false);
                self.at = None;
                self.backoff = REOPEN_MIN;
                self.attempts = 0;
            }
            Err(e) => {
                self.backoff = (self.backoff * 2).min(REOPEN_MAX);
                self.at = Some(Instant::now() + self.backoff);
                tracing::warn!(
                    error = %e,
                    attempts = self.attempts,
                    retry_in_s = self.backoff.as_secs(),
                    "journal store still cannot be written; events stay in the write-ahead log"
                );
            }
        }
    }
}

fn run(shared: Arc<Shared>, rx: mpsc::Receiver<Request>, lazy_every: Duration) {
    let mut next_lazy = Instant::now() + lazy_every;
    let mut last_size = Instant::now();
    let mut bg = Background::default();
    let mut reopen = Reopen {
        at: None,
        backoff: REOPEN_MIN,
        attempts: 0,
    };
    loop {
        shared.beat();
        let mut wait = next_lazy.saturating_duration_since(Instant::now());
        if let Some(at) = reopen.at {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        match rx.recv_timeout(wait) {
            Ok(first) => {
                let mut waiters = vec![first];
                while let Ok(r) = rx.try_recv() {
                    waiters.push(r);
                }
                let durable = shared.durable_seq.load(Ordering::SeqCst);
                let durable_states = shared.durable_states.load(Ordering::SeqCst);
                let covered = waiters
                    .iter()
                    .all(|w| w.upto <= durable && w.states <= durable_states);
                let full = waiters.iter().any(|w| w.full) || !shared.has_wal();
                // With a WAL, a request covered by an earlier commit is
                // answered at once; without one (or for a checkpoint),
                // only when nothing else awaits a flush either.
                let res = if covered && !full {
                    Ok(())
                } else if full {
                    let dirty = shared.take_dirty();
                    if covered && !dirty && !shared.wal_has_records() {
                        Ok(())
                    } else {
                        bg.join();
                        commit(&shared, true)
                    }
                } else {
                    commit(&shared, false)
                };
                tracing::trace!(batch = waiters.len(), "journal group commit");
                for w in waiters {
                    let _ = w.reply.send(res.clone());
                }
                if shared.take_rotated() && !shared.store_failing() {
                    let epoch = shared.wal_epoch();
                    start_background(&shared, &mut bg, epoch);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bg.join();
                if !shared.abandoned.load(Ordering::SeqCst) {
                    let _ = commit(&shared, true);
                }
                break;
            }
        }
        // Also under a steady stream of requests (which `recv_timeout`
        // serves before its timeout): lazily written data stays durable
        // within `lazy_every`.
        reopen.tick(&shared, &mut bg);
        if Instant::now() >= next_lazy {
            if !shared.store_failing() {
                lazy_checkpoint(&shared, &mut bg);
            }
            next_lazy = Instant::now() + lazy_every;
        }
        if last_size.elapsed() >= SIZE_EVERY {
            shared.refresh_size();
            last_size = Instant::now();
        }
    }
    tracing::debug!("journal committer stopped");
}

/// Write pending events, then make them durable: with a WAL one
/// `fdatasync` of it, otherwise (or when `full`) a checkpoint of the store.
/// On failure the store is marked dirty, so the next request or the lazy
/// timer retries and staged events become durable without a new record.
fn commit(shared: &Shared, full: bool) -> Result<(), String> {
    let res = shared
        .write_pending(true)
        .map_err(|e| e.to_string())
        .and_then(|target| {
            shared
                .commit(full)
                .map(|()| target)
                .map_err(|e| e.to_string())
        });
    match res {
        Ok((target, states)) => {
            shared.set_durable(target, states);
            Ok(())
        }
        Err(e) => {
            shared.dirty.store(true, Ordering::SeqCst);
            tracing::error!(error = %e, "journal commit failed");
            Err(e)
        }
    }
}
