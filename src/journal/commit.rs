//! Group commit: two threads make the journal durable for every writer.
//!
//! A writer queues its batch (seqs given), then asks the committer to make
//! everything up to its seq durable, and waits at once (`wait_durable`) or
//! later (`submit`, then `Pending::wait`). A committer thread takes every
//! request queued at that moment, runs one flush (and `fsync`), and answers
//! them all: while a flush runs, new requests pile up and share the next
//! one. A request already covered by an earlier flush is answered at once.
//!
//! With a write-ahead log (the sled journal), a commit appends the events
//! to the WAL and `fdatasync`s it. The append is made holding the *lane*
//! (the queue's receiving end), so appends keep their order; the
//! `fdatasync` runs after letting go of it, through the thread's own
//! handle on the WAL file, so the other thread can append and start the
//! next commit meanwhile (a *flight*: two in the air at most). A commit is
//! answered only once it and every commit begun before it succeeded; a
//! failed one sends its requests, and those of every later one, back to
//! the queue, and the journal checkpoints instead. A request that a commit
//! in the air already covers rides with it.
//!
//! The store is checkpointed every `telemetry_flush` and when a WAL file
//! fills up, on a background thread (the WAL switches to its other file
//! first, so commits go on), and in line on [`CommitHandle::checkpoint`],
//! at shutdown and after a WAL failure. Without a WAL, every commit flushes
//! the store. Whatever runs in line (a checkpoint, a file switch, a commit
//! without a WAL or with fsync off) first waits until no flight is in the
//! air.
//!
//! The I/O runs on these dedicated threads, never on the async runtime.
//! The lane's holder also samples the store's size.

use super::{JournalError, Shared};
use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How often `bytes_on_disk` is sampled at most.
const SIZE_EVERY: Duration = Duration::from_secs(1);

type Reply = oneshot::Sender<Result<(), String>>;

/// How many commits may be in the air at once. While one commit's
/// `fdatasync` runs, another committer thread appends what was asked for
/// meanwhile and starts its own, rather than waiting for the first to end
/// (on this kind of disk the two run at the same time).
const COMMITTERS: usize = 2;

struct Request {
    upto: u64,
    /// State ticket to cover (see `State::states_ticket`; 0: none).
    states: u64,
    /// Checkpoint the store too (shutdown, explicit flush).
    full: bool,
    reply: Reply,
}

enum Msg {
    Commit(Request),
    /// The handle is gone: a final checkpoint, then the threads stop.
    Stop,
}

/// Starts the committer threads.
pub(crate) struct Committer;

impl Committer {
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        lazy_every: Duration,
    ) -> std::io::Result<CommitHandle> {
        let (tx, rx) = mpsc::channel();
        let lazy_every = lazy_every.max(Duration::from_millis(10));
        let control = Arc::new(Control {
            flights: Mutex::new(Flights::default()),
            idle: Condvar::new(),
            lane: Mutex::new(Lane::new(rx, lazy_every)),
            requeue: tx.clone(),
            files: (0..COMMITTERS).map(|_| sync_files(&shared)).collect(),
            sync_failed: AtomicBool::new(false),
            shared,
        });
        let mut handle = CommitHandle {
            tx: Some(tx),
            threads: Vec::new(),
        };
        for me in 0..COMMITTERS {
            let control = control.clone();
            // On an error, dropping `handle` stops the threads started.
            let thread = std::thread::Builder::new()
                .name("journal-commit".into())
                .spawn(move || work(&control, me))?;
            handle.threads.push(thread);
        }
        Ok(handle)
    }
}

/// A committer thread's own handles on the two WAL files, by index, for
/// `fdatasync`s outside the WAL's lock. Each is its own open file
/// description: Linux reports a failed write-back once per open file, so
/// two `fdatasync`s in the air on one handle could both miss it. `None`
/// (no WAL, or a file that cannot be opened): this thread commits in line.
fn sync_files(shared: &Shared) -> Option<[File; 2]> {
    let paths = shared.wal_paths()?;
    let open = |p: &std::path::Path| {
        File::open(p)
            .inspect_err(|e| {
                tracing::warn!(
                    path = %p.display(),
                    error = %e,
                    "journal WAL file not opened for overlapping commits; committing one at a time"
                );
            })
            .ok()
    };
    Some([open(&paths[0])?, open(&paths[1])?])
}

/// The writers' side. Dropping it stops the threads after a final flush.
pub(crate) struct CommitHandle {
    tx: Option<mpsc::Sender<Msg>>,
    threads: Vec<JoinHandle<()>>,
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
            .send(Msg::Commit(Request {
                upto,
                states,
                full,
                reply,
            }))
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
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Stop);
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("journal committer panicked");
            }
        }
    }
}

/// Commits in the air, in the order they began (which is the order of
/// their appends to the WAL). A commit counts as durable only once its
/// own `fdatasync` and that of every commit begun before it succeeded: a
/// later `fdatasync` says nothing of pages an earlier one failed to write.
#[derive(Default)]
struct Flights {
    /// Number of the first flight in `open`.
    first: u64,
    open: VecDeque<Flight>,
    /// A flight failed: those landing after it are retried too, until
    /// none is left in the air.
    failed: bool,
}

struct Flight {
    /// Last seq and state ticket its append covers.
    upto: u64,
    states: u64,
    waiters: Vec<Request>,
    started: Instant,
    /// Its `fdatasync`'s result, once landed.
    result: Option<Result<(), String>>,
}

/// What landing a flight settled, oldest first.
enum Landed {
    /// Durable up to `upto` (and state ticket `states`): answer `Ok`.
    Durable {
        upto: u64,
        states: u64,
        waiters: Vec<Request>,
    },
    /// Not known to be durable: ask again. The journal then checkpoints.
    Retry(Vec<Request>),
}

impl Flights {
    /// A commit whose appends are written: its number, to land it by.
    fn begin(&mut self, upto: u64, states: u64, waiters: Vec<Request>) -> u64 {
        let id = self.first + self.open.len() as u64;
        self.open.push_back(Flight {
            upto,
            states,
            waiters,
            started: Instant::now(),
            result: None,
        });
        id
    }

    /// Requests that a flight in the air already covers ride with it (the
    /// first such); the others are returned.
    fn join(&mut self, waiters: Vec<Request>) -> Vec<Request> {
        let mut rest = Vec::new();
        for w in waiters {
            let ride = self.open.iter_mut().find(|f| {
                !matches!(f.result, Some(Err(_))) && f.upto >= w.upto && f.states >= w.states
            });
            match ride {
                Some(f) => f.waiters.push(w),
                None => rest.push(w),
            }
        }
        rest
    }

    /// Flight `id`'s `fdatasync` ended: what that settles, in order.
    fn land(&mut self, id: u64, result: Result<(), String>) -> Vec<Landed> {
        if let Some(f) = id
            .checked_sub(self.first)
            .and_then(|i| self.open.get_mut(i as usize))
        {
            f.result = Some(result);
        }
        let mut settled = Vec::new();
        while self.open.front().is_some_and(|f| f.result.is_some()) {
            let Some(f) = self.open.pop_front() else {
                break;
            };
            self.first += 1;
            match f.result {
                Some(Ok(())) if !self.failed => settled.push(Landed::Durable {
                    upto: f.upto,
                    states: f.states,
                    waiters: f.waiters,
                }),
                _ => {
                    self.failed = true;
                    settled.push(Landed::Retry(f.waiters));
                }
            }
        }
        if self.open.is_empty() {
            self.failed = false;
        }
        settled
    }

    fn is_idle(&self) -> bool {
        self.open.is_empty()
    }

    /// When the oldest flight in the air began.
    fn oldest(&self) -> Option<Instant> {
        self.open.front().map(|f| f.started)
    }
}

/// What the committer threads share.
struct Control {
    shared: Arc<Shared>,
    flights: Mutex<Flights>,
    /// Notified when no flight is left in the air.
    idle: Condvar,
    /// Taken by the thread that waits for requests and appends them.
    lane: Mutex<Lane>,
    /// Puts the requests of a failed flight back in the queue.
    requeue: mpsc::Sender<Msg>,
    /// Each committer thread's handles on the WAL files (see [`sync_files`]).
    files: Vec<Option<[File; 2]>>,
    /// A flight failed since the last [`wait_idle`](Control::wait_idle).
    sync_failed: AtomicBool,
}

/// A flight in the air this long stops the heartbeat (the disk hangs).
const STUCK_AFTER: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Control {
    /// Flight `id` ended with `result`: answer what that settles.
    fn land(&self, id: u64, result: Result<(), String>) {
        let mut flights = lock(&self.flights);
        for landed in flights.land(id, result) {
            match landed {
                Landed::Durable {
                    upto,
                    states,
                    waiters,
                } => {
                    self.shared.set_durable(upto, states);
                    answer(waiters, &Ok(()));
                }
                Landed::Retry(waiters) => {
                    self.sync_failed.store(true, Ordering::SeqCst);
                    self.shared.wal_sync_failed();
                    for w in waiters {
                        if let Err(mpsc::SendError(Msg::Commit(w))) =
                            self.requeue.send(Msg::Commit(w))
                        {
                            let _ = w.reply.send(Err(stopped().to_string()));
                        }
                    }
                }
            }
        }
        if flights.is_idle() {
            self.idle.notify_all();
        }
    }

    /// Start a flight for what was just appended, unless a checkpoint is
    /// due: checked under the flights' lock, which a failed landing holds
    /// while it asks for one, so no flight begins after a failure it did
    /// not see (it would publish the failed one's seqs as durable).
    fn begin(&self, upto: u64, states: u64, waiters: Vec<Request>) -> Result<u64, Vec<Request>> {
        let mut flights = lock(&self.flights);
        if self.shared.needs_checkpoint.load(Ordering::SeqCst) {
            return Err(waiters);
        }
        Ok(flights.begin(upto, states, waiters))
    }

    /// Until no flight is in the air (before anything that must run alone:
    /// a commit in line, a checkpoint, a file switch, the stop).
    ///
    /// After a failed flight, every other handle on the WAL files (the
    /// WAL's own, the other thread's) still has the write-back error to
    /// report, once each. Reported now and dropped: the checkpoint that
    /// follows writes the lost events to the store, and the error must not
    /// fail the WAL reset after it (nor the other thread's next flight).
    fn wait_idle(&self) {
        let mut flights = lock(&self.flights);
        while !flights.is_idle() {
            flights = self.idle.wait(flights).unwrap_or_else(|p| p.into_inner());
        }
        drop(flights);
        if self.sync_failed.swap(false, Ordering::SeqCst) {
            for file in self.files.iter().flatten().flatten() {
                let _ = file.sync_data();
            }
            self.shared.wal_clear_errors();
        }
    }

    /// A flight has been in the air longer than [`STUCK_AFTER`] (the disk
    /// hangs): the heartbeat stops, as it would for a commit in line.
    fn stuck(&self) -> bool {
        lock(&self.flights)
            .oldest()
            .is_some_and(|t| t.elapsed() > STUCK_AFTER)
    }
}

fn answer(waiters: Vec<Request>, res: &Result<(), String>) {
    for w in waiters {
        let _ = w.reply.send(res.clone());
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

/// The receiving side of the queue, and the upkeep done between commits.
/// One committer thread holds it at a time: appends are made in order.
struct Lane {
    rx: mpsc::Receiver<Msg>,
    lazy_every: Duration,
    next_lazy: Instant,
    last_size: Instant,
    bg: Background,
    reopen: Reopen,
    /// A stop was read among requests: it comes next.
    stopping: bool,
    stopped: bool,
}

/// Lands a flight as failed if its thread unwinds before landing it, so
/// the others never wait for it forever.
struct Landing<'a> {
    control: &'a Control,
    id: u64,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.control
            .land(self.id, Err("journal committer panicked".into()));
    }
}

/// One committer thread: take the lane, wait for requests, append them
/// and start their `fdatasync`; let go of the lane while it runs (so the
/// other thread can start the next commit); land it.
fn work(control: &Control, me: usize) {
    let files = control.files.get(me).and_then(Option::as_ref);
    loop {
        let mut lane = lock(&control.lane);
        if lane.stopped {
            return;
        }
        if lane.stopping {
            lane.stop(control);
            return;
        }
        lane.upkeep(control);
        if !control.stuck() {
            control.shared.beat();
        }
        let first = match lane.rx.recv_timeout(lane.wait()) {
            Ok(Msg::Commit(r)) => r,
            Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                lane.stop(control);
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
        };
        let mut waiters = vec![first];
        while let Ok(m) = lane.rx.try_recv() {
            match m {
                Msg::Commit(r) => waiters.push(r),
                Msg::Stop => {
                    lane.stopping = true;
                    break;
                }
            }
        }
        tracing::trace!(batch = waiters.len(), "journal group commit");
        let flight = lane.serve(control, files.is_some(), waiters);
        drop(lane);
        if let (Some((id, file)), Some(files)) = (flight, files) {
            let landing = Landing { control, id };
            let res = files[file].sync_data().map_err(|e| {
                tracing::error!(error = %e, "journal WAL sync failed; checkpointing instead");
                format!("journal WAL sync failed: {e}")
            });
            std::mem::forget(landing);
            control.land(id, res);
        }
    }
}

impl Lane {
    fn new(rx: mpsc::Receiver<Msg>, lazy_every: Duration) -> Lane {
        let now = Instant::now();
        Lane {
            rx,
            lazy_every,
            next_lazy: now + lazy_every,
            last_size: now,
            bg: Background::default(),
            reopen: Reopen {
                at: None,
                backoff: REOPEN_MIN,
                attempts: 0,
            },
            stopping: false,
            stopped: false,
        }
    }

    /// How long to wait for a request: until the next lazy checkpoint or
    /// reopen attempt.
    fn wait(&self) -> Duration {
        let mut wait = self.next_lazy.saturating_duration_since(Instant::now());
        if let Some(at) = self.reopen.at {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        wait
    }

    /// Serve a group of requests. With a WAL, a request covered by an
    /// earlier commit is answered at once, one covered by a commit in the
    /// air rides with it; the others are appended and, when nothing calls
    /// for a commit in line, returned as a flight (number, WAL file) whose
    /// `fdatasync` the caller runs after letting go of the lane. Without a
    /// WAL (or for a checkpoint), a request is answered only when nothing
    /// else awaits a flush either.
    fn serve(
        &mut self,
        control: &Control,
        can_fly: bool,
        waiters: Vec<Request>,
    ) -> Option<(u64, usize)> {
        let shared = &control.shared;
        let durable = shared.durable_seq.load(Ordering::SeqCst);
        let durable_states = shared.durable_states.load(Ordering::SeqCst);
        let covered = waiters
            .iter()
            .all(|w| w.upto <= durable && w.states <= durable_states);
        let full = waiters.iter().any(|w| w.full) || !shared.has_wal();
        if covered && !full {
            answer(waiters, &Ok(()));
            return None;
        }
        if full {
            control.wait_idle();
            let dirty = shared.take_dirty();
            let res = if covered && !dirty && !shared.wal_has_records() {
                Ok(())
            } else {
                self.bg.join();
                commit(shared, true)
            };
            answer(waiters, &res);
        } else {
            let mut waiters = lock(&control.flights).join(waiters);
            if waiters.is_empty() {
                return None;
            }
            if can_fly {
                if let Ok((upto, states)) = shared.write_pending(true) {
                    if let Some(file) = shared.wal_file_to_sync() {
                        match control.begin(upto, states, waiters) {
                            Ok(id) => return Some((id, file)),
                            Err(back) => waiters = back,
                        }
                    }
                }
            }
            control.wait_idle();
            answer(waiters, &commit(shared, false));
        }
        if shared.take_rotated() && !shared.store_failing() {
            let epoch = shared.wal_epoch();
            start_background(shared, &mut self.bg, epoch);
        }
        None
    }

    /// Between commits: reopen a failing store when due, the lazy
    /// checkpoint every `lazy_every` (also under a steady stream of
    /// requests), and the size sample.
    fn upkeep(&mut self, control: &Control) {
        let shared = &control.shared;
        let lazy_due = Instant::now() >= self.next_lazy;
        let failing = shared.store_failing();
        if failing || lazy_due {
            control.wait_idle();
        }
        self.reopen.tick(shared, &mut self.bg);
        if lazy_due {
            if !shared.store_failing() {
                lazy_checkpoint(shared, &mut self.bg);
            }
            self.next_lazy = Instant::now() + self.lazy_every;
        }
        if self.last_size.elapsed() >= SIZE_EVERY {
            shared.refresh_size();
            self.last_size = Instant::now();
        }
    }

    /// The final checkpoint, once no flight is in the air; requests put
    /// back meanwhile are answered with it.
    fn stop(&mut self, control: &Control) {
        self.stopped = true;
        control.wait_idle();
        let mut waiters = Vec::new();
        while let Ok(m) = self.rx.try_recv() {
            if let Msg::Commit(r) = m {
                waiters.push(r);
            }
        }
        self.bg.join();
        let shared = &control.shared;
        let res = if shared.abandoned.load(Ordering::SeqCst) {
            Err(stopped().to_string())
        } else {
            commit(shared, true)
        };
        answer(waiters, &res);
        tracing::debug!("journal committer stopped");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(upto: u64, states: u64) -> (Request, oneshot::Receiver<Result<(), String>>) {
        let (reply, rx) = oneshot::channel();
        let r = Request {
            upto,
            states,
            full: false,
            reply,
        };
        (r, rx)
    }

    /// The settled flights as (durable up to, waiters) or ("retry", waiters).
    fn outcome(settled: Vec<Landed>) -> Vec<(Option<(u64, u64)>, usize)> {
        settled
            .into_iter()
            .map(|l| match l {
                Landed::Durable {
                    upto,
                    states,
                    waiters,
                } => (Some((upto, states)), waiters.len()),
                Landed::Retry(waiters) => (None, waiters.len()),
            })
            .collect()
    }

    fn waiters(n: usize) -> Vec<Request> {
        (0..n).map(|_| request(0, 0).0).collect()
    }

    #[test]
    fn flights_settle_in_the_order_they_began_whatever_order_they_land_in() {
        let mut f = Flights::default();
        let a = f.begin(3, 0, waiters(1));
        let b = f.begin(5, 1, waiters(2));
        let c = f.begin(9, 1, waiters(1));
        // The second lands first: nothing is known durable yet.
        assert!(f.land(b, Ok(())).is_empty());
        assert!(!f.is_idle());
        assert_eq!(
            outcome(f.land(a, Ok(()))),
            vec![(Some((3, 0)), 1), (Some((5, 1)), 2)]
        );
        assert_eq!(outcome(f.land(c, Ok(()))), vec![(Some((9, 1)), 1)]);
        assert!(f.is_idle());
        // Numbers go on after the queue emptied.
        let d = f.begin(10, 1, waiters(1));
        assert_eq!(d, c + 1);
        assert_eq!(outcome(f.land(d, Ok(()))), vec![(Some((10, 1)), 1)]);
    }

    #[test]
    fn a_failed_flight_and_every_flight_landing_after_it_are_retried() {
        let mut f = Flights::default();
        let a = f.begin(3, 0, waiters(1));
        let b = f.begin(5, 0, waiters(2));
        let c = f.begin(7, 0, waiters(1));
        // The later one succeeded, but the earlier one's pages may be lost:
        // neither is durable.
        assert!(f.land(b, Ok(())).is_empty());
        assert_eq!(
            outcome(f.land(a, Err("EIO".into()))),
            vec![(None, 1), (None, 2)]
        );
        assert_eq!(outcome(f.land(c, Ok(()))), vec![(None, 1)]);
        // Once none is in the air, a new flight counts again.
        assert!(f.is_idle());
        let d = f.begin(8, 0, waiters(1));
        assert_eq!(outcome(f.land(d, Ok(()))), vec![(Some((8, 0)), 1)]);
    }

    #[test]
    fn a_request_rides_the_first_flight_in_the_air_that_covers_it() {
        let mut f = Flights::default();
        let a = f.begin(5, 1, Vec::new());
        let b = f.begin(9, 2, Vec::new());
        let (r1, _k1) = request(4, 1);
        let (r2, _k2) = request(7, 0);
        let (r3, _k3) = request(7, 3);
        let (r4, _k4) = request(10, 0);
        let rest = f.join(vec![r1, r2, r3, r4]);
        let left: Vec<(u64, u64)> = rest.iter().map(|r| (r.upto, r.states)).collect();
        assert_eq!(left, vec![(7, 3), (10, 0)]);
        // A failed flight takes no riders.
        let c = f.begin(12, 3, Vec::new());
        assert!(f.land(b, Err("EIO".into())).is_empty());
        let (r5, _k5) = request(8, 0);
        assert_eq!(
            f.join(vec![r5]).len(),
            0,
            "rides the last flight, not the failed one"
        );
        let settled = outcome(f.land(a, Ok(())));
        assert_eq!(settled, vec![(Some((5, 1)), 1), (None, 1)]);
        assert_eq!(outcome(f.land(c, Ok(()))), vec![(None, 1)]);
    }

    #[test]
    fn landing_answers_durable_waiters_and_puts_failed_ones_back_in_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::journal::JournalConfig {
            telemetry_flush: Duration::from_secs(3600),
            ..Default::default()
        };
        let mem = Arc::new(crate::journal::MemStorage::new());
        let j = crate::journal::Journal::with_storage_and_wal(
            mem,
            Some(dir.path()),
            &cfg,
            "gw-test",
            &["uplink"],
        )
        .unwrap();
        let shared = j.inner.shared.clone();
        let durable = shared.durable_seq.load(Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        let control = Control {
            shared: shared.clone(),
            flights: Mutex::new(Flights::default()),
            idle: Condvar::new(),
            lane: Mutex::new(Lane::new(rx, Duration::from_secs(3600))),
            requeue: tx,
            files: vec![sync_files(&shared)],
            sync_failed: AtomicBool::new(false),
        };
        let (r1, mut k1) = request(durable + 2, 0);
        let (r2, mut k2) = request(durable + 4, 0);
        let a = lock(&control.flights).begin(durable + 2, 0, vec![r1]);
        let b = lock(&control.flights).begin(durable + 4, 0, vec![r2]);
        assert!(!control.stuck(), "stuck only after a second in the air");
        control.land(a, Ok(()));
        assert_eq!(k1.try_recv().unwrap(), Ok(()));
        assert_eq!(shared.durable_seq.load(Ordering::SeqCst), durable + 2);
        assert!(!shared.needs_checkpoint.load(Ordering::SeqCst));
        control.land(b, Err("EIO".into()));
        // Not answered: asked again, and the next commit is a checkpoint.
        assert!(k2.try_recv().is_err());
        assert_eq!(shared.durable_seq.load(Ordering::SeqCst), durable + 2);
        assert!(shared.needs_checkpoint.load(Ordering::SeqCst));
        assert_eq!(shared.wal_file_to_sync(), None);
        match lock(&control.lane).rx.try_recv() {
            Ok(Msg::Commit(r)) => assert_eq!(r.upto, durable + 4),
            _ => panic!("the failed flight's request was not put back"),
        }
        // The other handles' stale error is reported and dropped before
        // the checkpoint.
        assert!(control.sync_failed.load(Ordering::SeqCst));
        control.wait_idle();
        assert!(!control.sync_failed.load(Ordering::SeqCst));
        // No flight begins while the checkpoint is due.
        let (r3, _k3) = request(durable + 5, 0);
        assert!(control.begin(durable + 5, 0, vec![r3]).is_err());
        assert!(lock(&control.flights).is_idle());
    }
}
