//! The alarm engine's task: the single consumer of the driver bus. It feeds
//! readings to the [`AlarmEngine`] and the [`TelemetryFilter`], records the
//! resulting events durably, and serves operator actions (acknowledge) so
//! that alarm state has exactly one owner.

use super::live::Sample;
use super::persist::StateFile;
use super::{AlarmEngine, AlarmError};
use crate::arming::ArmedZones;
use crate::config::LoadedConfig;
use crate::event::EventKind;
use crate::event::{NewEvent, Timestamp};
use crate::journal::{Journal, JournalError};
use crate::point::{BusMessage, Quality};
use crate::status::GatewayStatus;
use crate::telemetry::TelemetryFilter;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// An operator's reply, sent once its events are durable.
type PendingReply = (
    oneshot::Sender<Result<(), AlarmError>>,
    Result<(), AlarmError>,
);

/// Longest a changed alarm state waits before it is saved to disk.
const SAVE_DELAY: Duration = Duration::from_secs(1);

/// The task beats its liveness heartbeat at least this often, idle or not.
const HEARTBEAT: Duration = Duration::from_secs(2);

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
}

/// Run until the bus closes (all drivers stopped), then flush what is pending.
pub async fn run(
    cfg: Arc<LoadedConfig>,
    journal: Journal,
    status: Arc<GatewayStatus>,
    bus: mpsc::Receiver<BusMessage>,
    requests: mpsc::Receiver<AlarmRequest>,
) {
    run_with(cfg, journal, status, bus, requests, Hooks::default()).await
}

/// [`run`] with arming and linkage.
pub async fn run_with(
    cfg: Arc<LoadedConfig>,
    journal: Journal,
    status: Arc<GatewayStatus>,
    mut bus: mpsc::Receiver<BusMessage>,
    mut requests: mpsc::Receiver<AlarmRequest>,
    hooks: Hooks,
) {
    let Hooks {
        linkage,
        arming: mut armed,
        live,
        clips,
    } = hooks;
    let mut engine = AlarmEngine::new(&cfg);
    if let Some(a) = &mut armed {
        engine.set_armed_zones(a.borrow_and_update().clone());
    }
    let mut telemetry = TelemetryFilter::new(&cfg);
    let telemetry_on = cfg.config.telemetry.enabled;
    let mut out: Vec<NewEvent> = Vec::new();
    let device_index: HashMap<&str, usize> = cfg
        .config
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i))
        .collect();
    let state_file = StateFile::in_dir(&cfg.config.journal.path);
    restore(&mut engine, &state_file);
    // Disabled devices are not polled: never counted offline.
    let mut offline: Vec<bool> = cfg
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
    let mut requests_open = true;
    // Operator replies wait until their events are durable.
    let mut replies: Vec<PendingReply> = Vec::new();
    // Saving the states after every change would cost an fsync per alarm:
    // changes are saved within SAVE_DELAY, acknowledgements at once.
    let mut save_due: Option<Instant> = None;
    let heartbeat = status.liveness.register("alarm", HEARTBEAT);
    loop {
        heartbeat.beat();
        let deadline = earliest(
            earliest(engine.next_deadline(), telemetry.next_deadline()),
            earliest(save_due, Some(heartbeat.next_due().into_std())),
        );
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            msg = bus.recv() => {
                let Some(msg) = msg else { break };
                let now = Instant::now();
                match msg {
                    BusMessage::Readings { device, ts, readings, .. } => {
                        if let Some(&di) = device_index.get(&*device) {
                            if offline[di] {
                                // Offline before a restart; answering now.
                                set_online(&mut offline, di, true, &status);
                                engine.on_device_status(now, ts, di, true, None, &mut out);
                            }
                        }
                        if let Some(l) = &live {
                            l.set_values(readings.iter().map(|r| (r.point, Sample { value: Some(r.value), quality: Quality::Good, ts })));
                        }
                        for r in &readings {
                            engine.on_reading(now, ts, r.point, Some(r.value), Quality::Good, &mut out);
                            if telemetry_on {
                                telemetry.offer(now, ts, r.point, Some(r.value), Quality::Good);
                            }
                        }
                    }
                    BusMessage::DeviceStatus { device, ts, online, reason } => {
                        let Some(&di) = device_index.get(&*device) else { continue };
                        if offline[di] != online {
                            continue;
                        }
                        set_online(&mut offline, di, online, &status);
                        engine.on_device_status(now, ts, di, online, reason.as_deref(), &mut out);
                        if !online {
                            // Every point of the device goes bad.
                            for (pi, meta) in cfg.points.iter() {
                                if meta.device_index == di {
                                    if let Some(l) = &live {
                                        l.set_values([(pi, Sample { value: None, quality: Quality::Bad, ts })]);
                                    }
                                    engine.on_reading(now, ts, pi, None, Quality::Bad, &mut out);
                                    if telemetry_on {
                                        telemetry.offer(now, ts, pi, None, Quality::Bad);
                                    }
                                }
                            }
                        }
                    }
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
                    Some(z) => engine.set_armed_zones(z),
                    None => armed = None,
                }
            }
            _ = sleep => {}
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
                l.set_alarms(engine.active());
            }
            record(&journal, std::mem::take(&mut out)).await;
            status
                .alarms_active
                .store(engine.active_count() as u64, Ordering::Relaxed);
            // Saved after the events are durable: a crash in between can
            // only repeat an alarm after the restart, never lose one.
            if replies.is_empty() {
                save_due.get_or_insert(now + SAVE_DELAY);
            } else {
                save_due = Some(now);
            }
        }
        if save_due.is_some_and(|d| d <= now) {
            save_due = None;
            save(&state_file, engine.snapshot()).await;
        }
        for (reply, r) in replies.drain(..) {
            let _ = reply.send(r);
        }
        if telemetry_on {
            while let Some(payload) = telemetry.take_due(now) {
                if let Err(e) = journal.record_telemetry(&payload) {
                    tracing::warn!(error = %e, "telemetry not journaled");
                }
            }
        }
    }
    // Bus closed: drivers are stopped. Save the states, flush telemetry.
    if !out.is_empty() {
        record(&journal, std::mem::take(&mut out)).await;
    }
    save(&state_file, engine.snapshot()).await;
    let now = Instant::now();
    while let Some(payload) = telemetry.flush(now) {
        let _ = journal.record_telemetry(&payload);
    }
    tracing::debug!("alarm task stopped");
}

fn set_online(offline: &mut [bool], di: usize, online: bool, status: &GatewayStatus) {
    offline[di] = !online;
    let (up, down) = (&status.devices_online, &status.devices_offline);
    if online {
        up.fetch_add(1, Ordering::Relaxed);
        down.fetch_sub(1, Ordering::Relaxed);
    } else {
        up.fetch_sub(1, Ordering::Relaxed);
        down.fetch_add(1, Ordering::Relaxed);
    }
}

/// Restore alarm states saved before a restart. A missing or unreadable
/// file starts from normal (logged): readings re-raise what is active.
fn restore(engine: &mut AlarmEngine, file: &StateFile) {
    match file.load() {
        Ok(None) => {}
        Ok(Some(snapshot)) => match engine.restore(&snapshot) {
            Ok(n) => tracing::info!(alarms = n, "alarm states restored"),
            Err(e) => {
                tracing::error!(error = %e, file = %file.path().display(), "alarm states not restored")
            }
        },
        Err(e) => {
            tracing::error!(error = %e, file = %file.path().display(), "cannot read saved alarm states; starting from normal")
        }
    }
}

/// Save the alarm states without blocking the runtime (fsync).
async fn save(file: &StateFile, snapshot: serde_json::Value) {
    let file = file.clone();
    let r = tokio::task::spawn_blocking(move || file.save(&snapshot)).await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot save alarm states"),
        Err(e) => tracing::error!(error = %e, "alarm state save task failed"),
    }
}

/// Record events, retrying until the journal takes them: an alarm is never
/// dropped because the disk hiccuped.
async fn record(journal: &Journal, events: Vec<NewEvent>) {
    let mut wait = Duration::from_millis(50);
    let mut outcome = journal.record(events.clone()).await;
    loop {
        match outcome {
            Ok(recorded) => {
                for e in &recorded {
                    tracing::info!(
                        seq = e.seq,
                        kind = e.body.kind.as_str(),
                        key = e.body.alarm.as_ref().map(|a| a.key.as_str()),
                        "event recorded"
                    );
                }
                return;
            }
            // Staged with their seqs: wait for them, never record them twice.
            Err(JournalError::NotDurable {
                first,
                last,
                reason,
            }) => {
                tracing::error!(first, last, %reason, "events not yet durable; retrying the flush");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                outcome = match journal.wait_durable(last).await {
                    Ok(()) => {
                        tracing::info!(first, last, "events recorded after retry");
                        return;
                    }
                    Err(e) => Err(JournalError::NotDurable {
                        first,
                        last,
                        reason: e.to_string(),
                    }),
                };
            }
            Err(e) => {
                tracing::error!(error = %e, events = events.len(), "cannot record events; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                outcome = journal.record(events.clone()).await;
            }
        }
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
