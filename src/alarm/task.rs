//! The alarm engine's task: the single consumer of the driver bus. It feeds
//! readings to the [`AlarmEngine`] and the [`TelemetryFilter`], records the
//! resulting events durably, and serves operator actions (acknowledge) so
//! that alarm state has exactly one owner.

use super::bus;
pub use super::bus::Carried;
use super::persist::StateFile;
use super::{AlarmEngine, AlarmError, ALARM_STATE_PREFIX, OFFLINE_STATE_PREFIX};
use crate::arming::ArmedZones;
use crate::config::LoadedConfig;
use crate::event::EventKind;
use crate::event::{NewEvent, Timestamp};
use crate::journal::{Journal, JournalError, Refused, Staged, StateChange, MAX_STATE_NAME};
use crate::point::BusFeed;
use crate::status::GatewayStatus;
use crate::telemetry::TelemetryFilter;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// An operator's reply, sent once its events are durable.
type PendingReply = (
    oneshot::Sender<Result<(), AlarmError>>,
    Result<(), AlarmError>,
);

/// Name of the whole-engine state snapshot that earlier versions saved in
/// the journal with every commit; [`restore`] migrates it to per-alarm
/// states (`alarm/<key>`, `offline/<device>`) and removes it.
pub const ALARM_STATE: &str = "alarms";

/// Name of the marker state saved once [`restore`] has dealt with the old
/// `alarm-state.json` file (migrated it, or found none): the file is never
/// read again, even if its removal failed.
pub const MIGRATED_STATE: &str = "alarm-migrated";

/// How long the last save of changed states (with no events) at stop is
/// retried while the journal refuses it as full: a reload or shutdown waits
/// for the alarm task, so not forever.
const SAVE_ON_STOP: Duration = Duration::from_secs(5);

/// The task beats its liveness heartbeat at least this often, idle or not.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Commits the task keeps in flight at most. It stages each batch of events
/// and goes on with the next readings while the journal commits (batches
/// staged meanwhile share the next commit); past this many it waits for
/// the oldest before taking another message, and the bus holds the drivers.
const MAX_IN_FLIGHT: usize = 32;

/// Bus messages applied in one turn before their events are staged. The
/// drivers of one poll round answer together: the messages already waiting
/// go into one batch (one commit) instead of one batch each. Bounded, so
/// the first alarm of a long queue is not held back by many readings.
const DRAIN_AT_ONCE: usize = 32;

/// A batch still not durable after this long means the journal is stuck:
/// the task stops beating its heartbeat, as when it waited in line, so the
/// watchdog sees it.
const STUCK_AFTER: Duration = Duration::from_secs(10);

/// How long a reload or shutdown waits for the batches in flight. Past it
/// their events stay queued in the journal (its committer writes them)
/// and their operators get no reply rather than a premature one.
const IN_FLIGHT_ON_STOP: Duration = Duration::from_secs(10);

/// A staged batch on its way to durability, with the operator replies that
/// wait for it.
struct InFlight {
    durable: Pin<Box<dyn Future<Output = ()> + Send>>,
    replies: Vec<PendingReply>,
    staged_at: Instant,
}

/// Wait for the oldest batch in flight (forever when there is none), then
/// send its replies. Cancel-safe: the batch stays at the front until done.
async fn oldest_durable(in_flight: &mut VecDeque<InFlight>) {
    match in_flight.front_mut() {
        Some(f) => f.durable.as_mut().await,
        None => std::future::pending().await,
    }
    if let Some(f) = in_flight.pop_front() {
        send_replies(f.replies);
    }
}

fn send_replies(replies: Vec<PendingReply>) {
    for (reply, r) in replies {
        let _ = reply.send(r);
    }
}

/// Requests to the alarm task from the command path.
#[derive(Debug)]
pub enum AlarmRequest {
    Acknowledge {
        key: String,
        operator: String,
        comment: Option<String>,
        reply: oneshot::Sender<Result<(), AlarmError>>,
    },
    /// Shelve an alarm for `duration` (ISA-18.2).
    Shelve {
        key: String,
        operator: String,
        comment: Option<String>,
        duration: Duration,
        reply: oneshot::Sender<Result<(), AlarmError>>,
    },
}

/// Optional links of the alarm task to arming and linkage.
#[derive(Debug, Default)]
pub struct Hooks {
    /// Alarm raised/cleared events go here as they are produced, before
    /// they are journaled (linkage acts at once).
    pub linkage: Option<mpsc::Sender<Vec<NewEvent>>>,
    /// The zones' arming state.
    pub arming: Option<watch::Receiver<Arc<ArmedZones>>>,
    /// Last point values and active alarms for the local web page.
    pub live: Option<Arc<super::live::LiveView>>,
    /// Camera clips: alarms raised get their clip attachments before
    /// linkage sees them and before they are journaled.
    pub clips: Option<crate::cameras::ClipTrigger>,
    /// Last values of devices whose drivers kept running across a reload,
    /// applied before any bus message. They are not taken as what the
    /// devices last sent: a `Confirmed` that follows is decoded in full.
    pub carried: Vec<Carried>,
}

/// Run until the bus feed ends (its channel closed, or the field's relay
/// ended this task's turn: drivers stopped, or a reload), then flush what
/// is pending.
pub async fn run(
    cfg: Arc<LoadedConfig>,
    journal: Journal,
    status: Arc<GatewayStatus>,
    bus: impl BusFeed,
    requests: mpsc::Receiver<AlarmRequest>,
) {
    run_with(cfg, journal, status, bus, requests, Hooks::default()).await
}

/// [`run`] with arming and linkage.
pub async fn run_with(
    cfg: Arc<LoadedConfig>,
    journal: Journal,
    status: Arc<GatewayStatus>,
    mut bus: impl BusFeed,
    mut requests: mpsc::Receiver<AlarmRequest>,
    hooks: Hooks,
) {
    let Hooks {
        linkage,
        arming: mut armed,
        live,
        clips,
        mut carried,
    } = hooks;
    let mut engine = AlarmEngine::new(&cfg);
    if let Some(a) = &mut armed {
        engine.set_armed_zones(
            Instant::now(),
            Timestamp::now(),
            a.borrow_and_update().clone(),
            &mut Vec::new(),
        );
    }
    let mut telemetry = TelemetryFilter::new(&cfg);
    let telemetry_on = cfg.config.telemetry.enabled;
    let mut out: Vec<NewEvent> = Vec::new();
    restore(
        &mut engine,
        &journal,
        &StateFile::in_dir(&cfg.config.journal.path),
    )
    .await;
    // Disabled devices are not polled: never counted offline.
    let offline: Vec<bool> = cfg
        .config
        .devices
        .iter()
        .enumerate()
        .map(|(di, d)| d.enabled && engine.device_offline(di))
        .collect();
    for _ in offline.iter().filter(|o| **o) {
        status.devices_online.fetch_sub(1, Ordering::Relaxed);
        status.devices_offline.fetch_add(1, Ordering::Relaxed);
    }
    status
        .alarms_active
        .store(engine.active_count() as u64, Ordering::Relaxed);
    if let Some(l) = &live {
        l.set_alarms(engine.active());
    }
    let mut devices = bus::Devices::new(&cfg, offline);
    let mut requests_open = true;
    // Operator replies wait until their events are durable.
    let mut replies: Vec<PendingReply> = Vec::new();
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let heartbeat = status.liveness.register("alarm", HEARTBEAT);
    // One timer for the task's life. It is moved only to an earlier
    // deadline (or once it fired): a later one (the heartbeat's, moving
    // with every beat) waits until the armed time, where the loop comes
    // round and sets it again. An early wake-up only runs the loop once.
    let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(sleep);
    let mut timer_at: Option<Instant> = None;
    loop {
        let stuck = in_flight
            .front()
            .is_some_and(|f| f.staged_at.elapsed() >= STUCK_AFTER);
        if !stuck {
            heartbeat.beat();
        }
        while in_flight.len() >= MAX_IN_FLIGHT {
            oldest_durable(&mut in_flight).await;
        }
        let deadline = earliest(
            earliest(engine.next_deadline(), telemetry.next_deadline()),
            (!stuck).then(|| heartbeat.next_due().into_std()),
        );
        if let Some(d) = deadline {
            if timer_at.is_none_or(|a| d < a) {
                sleep.as_mut().reset(d.into());
                timer_at = Some(d);
            }
        }
        tokio::select! {
            biased;
            // Before any driver's message.
            _ = std::future::ready(()), if !carried.is_empty() => {
                let now = Instant::now();
                for c in carried.drain(..) {
                    let mut targets = bus::Targets {
                        engine: &mut engine,
                        telemetry: telemetry_on.then_some(&mut telemetry),
                        live: live.as_deref(),
                        out: &mut out,
                    };
                    devices.carried(&cfg, &status, &mut targets, now, &c);
                }
                // The carried values keep the times they were read at:
                // the telemetry's message time is now, not theirs.
                telemetry.set_clock(now, Timestamp::now());
            }
            // Replies and logs of committed batches before new work.
            _ = oldest_durable(&mut in_flight), if !in_flight.is_empty() => {}
            msg = bus.recv() => {
                let Some(msg) = msg else { break };
                let mut targets = bus::Targets {
                    engine: &mut engine,
                    telemetry: telemetry_on.then_some(&mut telemetry),
                    live: live.as_deref(),
                    out: &mut out,
                };
                devices.apply(&cfg, &status, &mut targets, Instant::now(), &msg);
                // The messages already waiting (the other devices of one
                // poll round) go into the same batch: one commit for them.
                for _ in 1..DRAIN_AT_ONCE {
                    let Some(msg) = bus.try_recv() else { break };
                    devices.apply(&cfg, &status, &mut targets, Instant::now(), &msg);
                }
            }
            req = requests.recv(), if requests_open => {
                match req {
                    None => requests_open = false,
                    Some(AlarmRequest::Acknowledge { key, operator, comment, reply }) => {
                        let r = engine.acknowledge(Instant::now(), Timestamp::now(), &key, &operator, comment.as_deref(), &mut out);
                        replies.push((reply, r));
                    }
                    Some(AlarmRequest::Shelve { key, operator, comment, duration, reply }) => {
                        let r = engine.shelve(Instant::now(), Timestamp::now(), &key, duration, &operator, comment.as_deref(), &mut out);
                        replies.push((reply, r));
                    }
                }
            }
            changed = changed_armed(&mut armed) => {
                match changed {
                    Some(z) => engine.set_armed_zones(Instant::now(), Timestamp::now(), z, &mut out),
                    None => armed = None,
                }
            }
            _ = &mut sleep, if timer_at.is_some() => timer_at = None,
        }
        let now = Instant::now();
        engine.tick(now, Timestamp::now(), &mut out);
        if let Some(c) = &clips {
            c.attach(&mut out);
        }
        if let Some(tx) = &linkage {
            let alarms: Vec<NewEvent> = out
                .iter()
                .filter(|e| matches!(e.kind, EventKind::AlarmRaised | EventKind::AlarmCleared))
                .cloned()
                .collect();
            if !alarms.is_empty() && tx.send(alarms).await.is_err() {
                tracing::error!("linkage task gone; alarms no longer trigger linkage");
            }
        }
        if !out.is_empty() {
            if let Some(l) = &live {
                // No alarm's state changed: the active list is the same.
                if engine.alarms_dirty() {
                    l.set_alarms(engine.active());
                }
            }
            // The states of the alarms (and devices) that changed go with
            // the events, in the same commit and after them: a crash keeps
            // both or the events alone (an alarm may be raised again after
            // the restart, never lost). Staged now, durable with the next
            // group commit; the task goes on meanwhile.
            let replies = std::mem::take(&mut replies);
            match journal.stage_with_states(std::mem::take(&mut out), state_changes(&engine)) {
                Ok(staged) => in_flight.push_back(InFlight {
                    durable: Box::pin(until_durable(journal.clone(), staged)),
                    replies,
                    staged_at: Instant::now(),
                }),
                Err(refused) => {
                    // Refused before staging (the journal is full): wait
                    // for the batches before it, then retry these in line
                    // until the journal takes them, as the drivers wait.
                    while !in_flight.is_empty() {
                        oldest_durable(&mut in_flight).await;
                    }
                    record_refused(&journal, refused).await;
                    send_replies(replies);
                }
            }
            engine.clear_dirty();
            status
                .alarms_active
                .store(engine.active_count() as u64, Ordering::Relaxed);
        }
        // Replies whose actions made no event: after the batches before
        // them (an "already acknowledged" must not overtake the first
        // acknowledgement, nor arrive before it is durable).
        match in_flight.back_mut() {
            Some(last) => last.replies.append(&mut replies),
            None => send_replies(std::mem::take(&mut replies)),
        }
        if telemetry_on {
            while let Some(payload) = telemetry.take_due(now) {
                if let Err(e) = journal.record_telemetry(&payload) {
                    tracing::warn!(error = %e, "telemetry not journaled");
                }
            }
        }
    }
    // The feed ended (drivers stopped, or the bus went to the next alarm
    // task). Wait for the batches in flight, save what changed, flush
    // telemetry.
    let drained = tokio::time::timeout(IN_FLIGHT_ON_STOP, async {
        while !in_flight.is_empty() {
            oldest_durable(&mut in_flight).await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::error!(
            batches = in_flight.len(),
            waited_s = IN_FLIGHT_ON_STOP.as_secs(),
            "alarm events still not durable at stop; they stay queued in the journal"
        );
    }
    if !out.is_empty() {
        record(&journal, std::mem::take(&mut out), state_changes(&engine)).await;
        engine.clear_dirty();
    }
    if engine.has_dirty() && save_on_stop(&journal, state_changes(&engine), SAVE_ON_STOP).await {
        engine.clear_dirty();
    }
    let now = Instant::now();
    while let Some(payload) = telemetry.flush(now) {
        let _ = journal.record_telemetry(&payload);
    }
    tracing::debug!("alarm task stopped");
}

/// The engine's changed states as journal state changes. A name the
/// journal cannot hold (an alarm key of more than 249 bytes) is left out,
/// logged: that alarm's state does not survive a restart (it is raised
/// again by the next readings).
fn state_changes(engine: &AlarmEngine) -> Vec<StateChange> {
    let mut changes = engine.dirty_states();
    changes.retain(|(name, _)| {
        let fits = name.len() <= MAX_STATE_NAME;
        if !fits {
            tracing::error!(name = %name, "alarm state name too long to save; not kept across restarts");
        }
        fits
    });
    changes
}

/// Saved states under `prefix`; `None` (logged) if they cannot be read.
fn load_states(journal: &Journal, prefix: &str) -> Option<Vec<(String, Vec<u8>)>> {
    journal
        .load_states(prefix)
        .inspect_err(|e| {
            tracing::error!(error = %e, prefix, "cannot read saved alarm states; starting from normal");
        })
        .ok()
}

/// Restore alarm states saved before a restart or reload.
///
/// From the journal's per-alarm states (`alarm/<key>`, `offline/<device>`);
/// states of alarms or devices no longer configured are removed once here.
/// Two migrations, each crash-safe (the old form is removed only in the
/// same commit as, and after, the per-alarm states written from it):
/// - the whole-engine snapshot [`ALARM_STATE`] that earlier versions kept
///   in the journal: restored, written as per-alarm states (any other
///   per-alarm state removed: they are older), then removed;
/// - once, after an upgrade from versions before that, the
///   `alarm-state.json` file: restored when the journal holds no state
///   and no [`MIGRATED_STATE`] marker, written as per-alarm states with
///   the marker, then the file removed. With the marker (or when the
///   journal's states cannot be read) the file is never read.
///
/// Missing or unreadable states start from normal (logged): readings
/// re-raise what is active.
pub(super) async fn restore(engine: &mut AlarmEngine, journal: &Journal, legacy: &StateFile) {
    let (alarms, offline) = (
        load_states(journal, ALARM_STATE_PREFIX),
        load_states(journal, OFFLINE_STATE_PREFIX),
    );
    let loaded = alarms.is_some() && offline.is_some();
    let (alarms, offline) = (alarms.unwrap_or_default(), offline.unwrap_or_default());
    let marked = match journal.load_state(MIGRATED_STATE) {
        Ok(m) => Some(m.is_some()),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the alarm state migration marker");
            None
        }
    };
    let old = match journal.load_state(ALARM_STATE) {
        Ok(Some(bytes)) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %e, "saved alarm snapshot unreadable; ignored");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the saved alarm snapshot; ignored");
            None
        }
    };
    // The old file only before the first migration, and only when the
    // journal's states could be read: never over newer states.
    let from_file =
        loaded && marked == Some(false) && old.is_none() && alarms.is_empty() && offline.is_empty();
    if !loaded || marked.is_none() {
        tracing::error!(
            file = %legacy.path().display(),
            "saved alarm states unreadable: the old alarm state file is not read"
        );
    }
    let snapshot = match old {
        Some(v) => Some(v),
        None if from_file => match legacy.load() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, file = %legacy.path().display(), "cannot read saved alarm states; starting from normal");
                None
            }
        },
        None => None,
    };
    let migrated = match &snapshot {
        Some(snapshot) => match engine.restore(snapshot) {
            Ok(n) => {
                tracing::info!(
                    alarms = n,
                    "alarm states restored from a whole-engine snapshot"
                );
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "alarm states not restored");
                false
            }
        },
        None => false,
    };
    if migrated {
        // Every restored state, then the removal of per-alarm states the
        // snapshot does not hold, then of the snapshot: in one commit.
        let mut changes = state_changes(engine);
        let written: std::collections::HashSet<String> =
            changes.iter().map(|(n, _)| n.clone()).collect();
        for (name, _) in alarms.iter().chain(&offline) {
            if !written.contains(name) {
                changes.push((name.clone(), None));
            }
        }
        if !from_file {
            changes.push((ALARM_STATE.to_string(), None));
        }
        if marked == Some(false) {
            changes.push((MIGRATED_STATE.to_string(), Some(Vec::new())));
        }
        record(journal, Vec::new(), changes).await;
        engine.clear_dirty();
        tracing::info!("alarm states saved per alarm");
    } else {
        let restored = engine.restore_states(&alarms, &offline);
        if restored.alarms + restored.offline_devices > 0 {
            tracing::info!(
                alarms = restored.alarms,
                offline_devices = restored.offline_devices,
                "alarm states restored"
            );
        }
        let n = restored.stale.len();
        let mut changes: Vec<StateChange> = restored.stale.into_iter().map(|n| (n, None)).collect();
        // States repaired on restore (no longer valid under the current
        // rules) are saved as repaired.
        changes.extend(state_changes(engine));
        if marked == Some(false) && loaded {
            // No old file to migrate (or it could not be used): it is not
            // read again.
            changes.push((MIGRATED_STATE.to_string(), Some(Vec::new())));
        }
        if !changes.is_empty() {
            match journal.record_with_states(Vec::new(), changes).await {
                Ok(_) => {
                    engine.clear_dirty();
                    if n > 0 {
                        tracing::info!(
                            states = n,
                            "saved states of alarms no longer configured removed"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "saved alarm state changes of the restore not saved")
                }
            }
        }
    }
    if legacy.path().exists() {
        if from_file && migrated {
            tracing::info!(file = %legacy.path().display(), "alarm states moved into the journal");
        }
        if let Err(e) = std::fs::remove_file(legacy.path()) {
            tracing::warn!(error = %e, file = %legacy.path().display(), "cannot remove the old alarm state file");
        }
    }
}

/// Save the changed states at stop (no events with them), retrying while
/// the journal refuses them as [`JournalError::Full`] (nothing queued) for
/// at most `limit`. True once the journal holds them: durable, or queued
/// for a later commit (`NotDurable`; the next alarm task restores them
/// from the queue). False (logged) when they were not taken.
pub(super) async fn save_on_stop(
    journal: &Journal,
    states: Vec<StateChange>,
    limit: Duration,
) -> bool {
    let until = tokio::time::Instant::now() + limit;
    let mut wait = Duration::from_millis(50);
    loop {
        match journal.record_with_states(Vec::new(), states.clone()).await {
            Ok(_) => return true,
            Err(JournalError::NotDurable { reason, .. }) => {
                tracing::error!(%reason, states = states.len(), "alarm states saved at stop not yet durable; queued for a later commit");
                return true;
            }
            Err(JournalError::Full(reason)) if tokio::time::Instant::now() + wait < until => {
                tracing::warn!(%reason, states = states.len(), "journal full: retrying the save of alarm states at stop");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                tracing::error!(error = %e, states = states.len(), limit_s = limit.as_secs(), "alarm states not saved at stop: the next start restores older ones");
                return false;
            }
        }
    }
}

/// Record events, retrying until the journal takes them: an alarm is never
/// dropped because the disk hiccuped.
///
/// `states`, the changes of the engine's saved states that these events
/// made, are saved with them.
async fn record(journal: &Journal, events: Vec<NewEvent>, states: Vec<StateChange>) {
    match journal.stage_with_states(events, states) {
        Ok(staged) => until_durable(journal.clone(), staged).await,
        Err(refused) => record_refused(journal, refused).await,
    }
}

/// Retry what the journal refused to stage until it takes it, then wait
/// until it is durable.
async fn record_refused(journal: &Journal, refused: Refused) {
    let Refused {
        mut error,
        mut events,
        mut states,
    } = refused;
    let mut wait = Duration::from_millis(50);
    loop {
        tracing::error!(error = %error, events = events.len(), "cannot record events; retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
        match journal.stage_with_states(events, states) {
            Ok(staged) => return until_durable(journal.clone(), staged).await,
            Err(r) => (error, events, states) = (r.error, r.events, r.states),
        }
    }
}

/// Wait until staged events are durable, retrying the flush until it
/// works: they keep their seqs, so they are never staged twice.
async fn until_durable(journal: Journal, staged: Staged) {
    let last = staged.last_seq();
    let error = match staged.durable().await {
        Ok(recorded) => {
            for e in &recorded {
                let alarm = e.body.alarm.as_ref();
                tracing::info!(
                    seq = e.seq,
                    kind = e.body.kind.as_str(),
                    key = alarm.map(|a| a.key.as_str()),
                    state = alarm.map(|a| a.state.as_str()),
                    priority = e.body.priority.get(),
                    "event recorded"
                );
            }
            return;
        }
        Err(e) => e,
    };
    // Staged with their seqs: wait for them, never record them twice. A
    // later commit may have made them durable already: ask first.
    tracing::error!(%error, "events not yet durable; retrying the flush");
    let mut wait = Duration::from_millis(50);
    loop {
        match journal.wait_durable(last).await {
            Ok(()) => {
                tracing::info!(last, "events recorded after retry");
                return;
            }
            Err(error) => {
                tracing::error!(last, %error, "events not yet durable; retrying the flush");
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// The next arming change; never resolves without arming.
async fn changed_armed(
    armed: &mut Option<watch::Receiver<Arc<ArmedZones>>>,
) -> Option<Arc<ArmedZones>> {
    match armed {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
