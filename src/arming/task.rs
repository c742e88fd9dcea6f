//! The arming task: the one owner of [`Arming`]. It ticks the schedules with
//! a [`WallClock`], serves operators' arm/disarm requests, records
//! `zone.armed` / `zone.disarmed` events, saves the states and publishes the
//! armed set to the alarm engine through a `watch` channel.

use super::{Arming, ArmingError, Change, ChangeSource};
use crate::alarm::persist::StateFile;
use crate::event::{Category, EventKind, NewEvent, Priority, Source, Timestamp};
use crate::journal::Journal;
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// How often schedules are evaluated.
const TICK: Duration = Duration::from_millis(250);

/// Wall-clock time for schedules; tests inject a fake one.
pub trait WallClock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that shows what it is set to (tests, simulations).
#[derive(Debug)]
pub struct FakeClock(Mutex<DateTime<Utc>>);

impl FakeClock {
    pub fn new(t: DateTime<Utc>) -> FakeClock {
        FakeClock(Mutex::new(t))
    }
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }
}

impl WallClock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The disarmed zones, as the alarm engine sees them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArmedZones {
    disarmed: HashSet<Arc<str>>,
}

impl ArmedZones {
    /// Is `zone` armed? Zones that are not arming zones always are.
    pub fn is_armed(&self, zone: &str) -> bool {
        !self.disarmed.contains(zone)
    }

    /// A set with these zones disarmed (tests, simulations).
    pub fn with_disarmed<'a>(zones: impl IntoIterator<Item = &'a str>) -> ArmedZones {
        ArmedZones {
            disarmed: zones.into_iter().map(Arc::from).collect(),
        }
    }

    fn of(a: &Arming) -> ArmedZones {
        ArmedZones {
            disarmed: a.disarmed().cloned().collect(),
        }
    }
}

/// A request to the arming task.
#[derive(Debug)]
struct SetRequest {
    zone: String,
    armed: bool,
    operator: String,
    reply: oneshot::Sender<Result<(), ArmingError>>,
}

/// Arm/disarm zones and watch the armed set; cheap to clone.
#[derive(Clone, Debug)]
pub struct ArmingHandle {
    tx: mpsc::Sender<SetRequest>,
    state: watch::Receiver<Arc<ArmedZones>>,
}

impl ArmingHandle {
    /// Arm (`true`) or disarm `zone`; returns once the change is recorded.
    pub async fn set(&self, zone: &str, armed: bool, operator: &str) -> Result<(), ArmingError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(SetRequest {
                zone: zone.to_string(),
                armed,
                operator: operator.to_string(),
                reply,
            })
            .await
            .map_err(|_| ArmingError::ShuttingDown)?;
        rx.await.map_err(|_| ArmingError::ShuttingDown)?
    }

    /// The armed set, updated on every change.
    pub fn watch(&self) -> watch::Receiver<Arc<ArmedZones>> {
        self.state.clone()
    }
}

/// Start the arming task: restore the saved states from `dir`, then tick and
/// serve requests until `shutdown`.
pub fn spawn(
    cfg: &super::ArmingConfig,
    dir: &Path,
    journal: Journal,
    clock: Arc<dyn WallClock>,
    shutdown: CancellationToken,
) -> (ArmingHandle, tokio::task::JoinHandle<()>) {
    let mut arming = Arming::new(cfg);
    let file = StateFile::named(dir, "arming-state.json");
    match file.load() {
        Ok(None) => {}
        Ok(Some(s)) => match arming.restore(&s) {
            Ok(n) => tracing::info!(zones = n, "arming states restored"),
            Err(e) => tracing::error!(error = %e, "arming states not restored"),
        },
        Err(e) => tracing::error!(error = %e, "cannot read saved arming states"),
    }
    // The first tick happens before anyone reads the set.
    let first = arming.tick(clock.now());
    let (state_tx, state_rx) = watch::channel(Arc::new(ArmedZones::of(&arming)));
    let (tx, rx) = mpsc::channel(16);
    let h = tokio::spawn(run(
        arming, first, file, journal, clock, state_tx, rx, shutdown,
    ));
    (
        ArmingHandle {
            tx,
            state: state_rx,
        },
        h,
    )
}

#[allow(clippy::too_many_arguments)]
async fn run(
    mut arming: Arming,
    first: Vec<Change>,
    file: StateFile,
    journal: Journal,
    clock: Arc<dyn WallClock>,
    state: watch::Sender<Arc<ArmedZones>>,
    mut requests: mpsc::Receiver<SetRequest>,
    shutdown: CancellationToken,
) {
    apply(&arming, first, &file, &journal, &state).await;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Without schedules the task only serves requests: no wake-ups.
    let scheduled = arming.has_schedules();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            req = requests.recv() => {
                let Some(req) = req else { break };
                let r = arming.set(&req.zone, req.armed, &req.operator, clock.now());
                match r {
                    Ok(change) => {
                        apply(&arming, vec![change], &file, &journal, &state).await;
                        let _ = req.reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = req.reply.send(Err(e));
                    }
                }
            }
            _ = tick.tick(), if scheduled => {
                let changes = arming.tick(clock.now());
                if !changes.is_empty() {
                    apply(&arming, changes, &file, &journal, &state).await;
                }
            }
        }
    }
    tracing::debug!("arming task stopped");
}

/// Publish, record and save changes (published first: alarms judged from
/// now on see the new state).
async fn apply(
    arming: &Arming,
    changes: Vec<Change>,
    file: &StateFile,
    journal: &Journal,
    state: &watch::Sender<Arc<ArmedZones>>,
) {
    if changes.is_empty() {
        return;
    }
    state.send_replace(Arc::new(ArmedZones::of(arming)));
    let events: Vec<NewEvent> = changes.iter().map(event_of).collect();
    for c in &changes {
        tracing::info!(zone = %c.zone, armed = c.armed, source = ?c.source, "zone arming changed");
    }
    if let Err(e) = journal.record(events).await {
        tracing::error!(error = %e, "cannot record zone arming events");
    }
    let snap = arming.snapshot();
    let file = file.clone();
    match tokio::task::spawn_blocking(move || file.save(&snap)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot save arming states"),
        Err(e) => tracing::error!(error = %e, "arming save task failed"),
    }
}

/// The `zone.armed` / `zone.disarmed` event of a change.
pub fn event_of(c: &Change) -> NewEvent {
    let (source, operator) = match &c.source {
        ChangeSource::Schedule => ("schedule", None),
        ChangeSource::Manual { operator } => ("manual", Some(operator.as_str())),
        ChangeSource::Initial => ("initial", None),
    };
    NewEvent {
        ts: Timestamp(c.at),
        kind: if c.armed {
            EventKind::ZoneArmed
        } else {
            EventKind::ZoneDisarmed
        },
        priority: Priority::INFO,
        category: Category::System,
        source: Source {
            device: None,
            point: None,
            zone: Some(c.zone.to_string()),
        },
        alarm: None,
        attachments: Vec::new(),
        detail: Some(serde_json::json!({
            "armed": c.armed,
            "source": source,
            "operator": operator,
        })),
    }
}
