//! The field side of a running gateway: what a configuration reload
//! changes. Driver units (see `units.rs`) run on their own and a reload
//! keeps the unchanged ones; the alarm task, linkage, arming and the
//! command path are rebuilt with every change. They run as one [`Field`];
//! staff pushes and the uplink are started apart (they change only with
//! their own sections).
//!
//! The journal, the gateway status, the web server and the uplink session
//! live outside it and outlive every reload.

use super::relay::{Relay, Shifts};
use super::units::{self, Shift, Span, UnitId, UnitPlan, UnitSpec};
use super::UPLINK_SINK;
use crate::alarm::live::{LiveView, Sample};
use crate::alarm::task::{self as alarm_task, AlarmRequest};
use crate::alarm::trouble::Troubles;
use crate::arming::{ArmingHandle, WallClock};
use crate::cameras::ClipRequest;
use crate::command::CommandPath;
use crate::config::secret::Secret;
use crate::config::{Config, LoadedConfig};
use crate::drivers::write::{WriteError, WriteRequest, WriteSender, Writers};
use crate::drivers::{gpio, modbus};
use crate::event::Timestamp;
use crate::journal::Journal;
use crate::point::{BusMessage, PointIndex, Quality, Reading};
use crate::status::GatewayStatus;
use crate::uplink::{self, IncomingCommand, UplinkContext};
use anyhow::Context;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What other parts of the gateway (tests, the web page) use of the
/// current field. Replaced as a whole by a reload.
#[derive(Clone)]
pub struct FieldHandles {
    /// The configuration the field runs with.
    pub config: Arc<LoadedConfig>,
    /// Writes to field devices (Modbus, MQTT devices, GPIO outputs), by device id.
    pub writers: Writers,
    /// Operator actions on alarms (acknowledge, shelve).
    pub alarm_requests: mpsc::Sender<AlarmRequest>,
    /// The one command path (platform commands, the local web page).
    pub commands: CommandPath,
    /// Zone arming.
    pub arming: ArmingHandle,
    /// Last point values and active alarms (the local web page).
    pub live: Arc<crate::alarm::live::LiveView>,
    /// The gateway's own alarms (the local web page lists them too).
    pub troubles: Arc<Troubles>,
    /// "Read now" probes of Modbus devices (the local web page).
    pub probes: modbus::probe::Probers,
}

/// What every field shares and keeps across reloads.
pub(super) struct Shared {
    pub journal: Journal,
    /// The gateway's own alarms (video loss, disk, drivers): on the console.
    pub troubles: Arc<Troubles>,
    pub status: Arc<GatewayStatus>,
    pub clock: Arc<dyn WallClock>,
    /// The uplink's commands go to the current field's command task.
    pub command_route: watch::Sender<mpsc::Sender<IncomingCommand>>,
}

/// A running field side: the driver units, each kept or restarted on its
/// own by a reload, and the alarm side (alarm task, linkage, arming,
/// command path), rebuilt by every reload that changes something.
pub(super) struct Field {
    /// The driver bus; lives as long as the field.
    relay: Relay,
    /// The driver units that run, with the spec they were started with.
    units: BTreeMap<UnitId, Running>,
    /// `None` while a reload switches (or after the shutdown).
    side: Option<AlarmSide>,
    /// The configuration and live view of the alarm side last stopped
    /// (its kept devices' last values seed the next one).
    previous: Option<(Arc<LoadedConfig>, Arc<LiveView>)>,
    /// Units the running configuration has but that did not start (a
    /// reload that neither the new nor the previous file completed): each
    /// holds a liveness entry that is never beaten, so `/healthz` and the
    /// watchdog name it until it runs.
    down: BTreeMap<UnitId, crate::service::liveness::Heartbeat>,
}

/// One running driver unit.
struct Running {
    spec: UnitSpec,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// Its write queues, indices as in the table it was started with.
    writers: Writers,
    /// "Read now" probe queues of its Modbus devices (driver indices).
    probes: modbus::probe::Probers,
    /// A camera's clip queue.
    clips: Option<mpsc::Sender<ClipRequest>>,
    /// Its devices' points in the table it was started with.
    spans: Vec<(Arc<str>, Span)>,
}

/// How long a unit's tasks have to end once told to stop before they are
/// aborted (a reload holds the lock the shutdown waits on).
const UNIT_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Running {
    /// Cancel the unit's tasks and wait for them to end; any still running
    /// at `deadline` (units stopped together share one) is aborted, logged.
    async fn stop(self, id: &UnitId, deadline: tokio::time::Instant) {
        self.stop.cancel();
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                tracing::error!(unit = %id, timeout_s = UNIT_STOP_TIMEOUT.as_secs(), "driver task did not stop in time; aborted");
                t.abort();
                let _ = t.await;
            }
        }
    }
}

/// The parts every reload rebuilds.
struct AlarmSide {
    cfg: Arc<LoadedConfig>,
    live: Arc<LiveView>,
    alarm: JoinHandle<()>,
    linkage: JoinHandle<()>,
    arming_stop: CancellationToken,
    arming: JoinHandle<()>,
    commands: JoinHandle<()>,
}

impl Field {
    /// Start drivers, the alarm task (restoring saved alarm states),
    /// linkage, arming and the command path for `cfg`, and route the
    /// uplink's commands to them. On failure nothing runs.
    pub async fn start(
        cfg: Arc<LoadedConfig>,
        shared: &Shared,
    ) -> anyhow::Result<(Field, Arc<FieldHandles>)> {
        let mut field = Field {
            relay: Relay::start(),
            units: BTreeMap::new(),
            side: None,
            previous: None,
            down: BTreeMap::new(),
        };
        match field.apply(cfg, shared).await {
            Ok((handles, _)) => Ok((field, handles)),
            Err(e) => {
                // Leave nothing running behind a failed start.
                field.stop(shared).await;
                Err(e)
            }
        }
    }

    /// Switch to `cfg`: stop the units that changed or went, rebuild the
    /// alarm side, start the units that changed or are new; unchanged
    /// units keep running (and their connections) and feed the new alarm
    /// task. On a unit's start failure the alarm side stays stopped and
    /// the units started so far run: apply the previous configuration
    /// (its failed unit starts again), or [`restore_side`](Self::restore_side).
    pub async fn apply(
        &mut self,
        cfg: Arc<LoadedConfig>,
        shared: &Shared,
    ) -> anyhow::Result<(Arc<FieldHandles>, UnitPlan)> {
        let target = units::units_of(&cfg.config);
        let running: BTreeMap<UnitId, &UnitSpec> = self
            .units
            .iter()
            .map(|(id, r)| (id.clone(), &r.spec))
            .collect();
        let plan = units::plan(&running, &target);
        tracing::info!(
            kept = plan.kept.len(),
            restarted = plan.restarted.len(),
            started = plan.started.len(),
            stopped = plan.stopped.len(),
            "switching the field side"
        );
        let stopping: Vec<(&UnitId, Running)> = plan
            .to_stop()
            .filter_map(|id| self.units.remove(id).map(|r| (id, r)))
            .collect();
        for (id, r) in &stopping {
            tracing::info!(unit = %id, "stopping driver");
            r.stop.cancel();
        }
        let mut stopped_devices: HashSet<Arc<str>> = HashSet::new();
        let deadline = tokio::time::Instant::now() + UNIT_STOP_TIMEOUT;
        for (id, r) in stopping {
            stopped_devices.extend(r.spec.device_ids().map(Arc::from));
            r.stop(id, deadline).await;
        }
        // Readings of the units just stopped reach the old alarm task;
        // the kept units' wait for the new one.
        self.stop_side(shared).await;
        // With no alarm task attached (a rollback, a retry), what the
        // stopped units sent waits in the bus, numbered as in the table
        // they started with, which no alarm task runs with: dropped.
        self.relay.purge(stopped_devices);
        let kept = self.running_devices();
        let cameras_kept = self
            .units
            .keys()
            .any(|id| matches!(id, UnitId::Camera { .. }));
        if !cameras_kept && cfg.config.cameras.iter().any(|c| c.enabled) {
            crate::cameras::prepare_clips(&cfg.config.clips);
        }
        for id in plan.to_start() {
            let spec = target[id].clone();
            let r = self
                .start_unit(&cfg, id, spec, shared)
                .await
                .with_context(|| format!("starting {id}"))?;
            self.units.insert(id.clone(), r);
        }
        let handles = self.start_side(cfg, shared, &kept).await;
        Ok((handles, plan))
    }

    /// Check, before anything stops, what starting `cfg`'s new or changed
    /// units could fail on (the site broker password, the embedded
    /// broker's users and address). Modbus, GPIO and camera units do not
    /// fail to start (they retry their devices).
    pub fn check_start(&self, cfg: &LoadedConfig) -> anyhow::Result<()> {
        let running: BTreeMap<UnitId, &UnitSpec> = self
            .units
            .iter()
            .map(|(id, r)| (id.clone(), &r.spec))
            .collect();
        let plan = units::plan(&running, &units::units_of(&cfg.config));
        for id in plan.to_start() {
            if *id == UnitId::Mqtt {
                crate::drivers::mqtt::check_start(cfg).with_context(|| format!("starting {id}"))?;
            }
        }
        Ok(())
    }

    /// True when exactly `c`'s units run with `c`'s settings (false after
    /// a reload left a unit not started).
    pub fn in_step(&self, c: &Config) -> bool {
        let target = units::units_of(c);
        target.len() == self.units.len()
            && target
                .iter()
                .all(|(id, spec)| self.units.get(id).is_some_and(|r| &r.spec == spec))
    }

    /// Names of `c`'s units that are not running.
    pub fn missing(&self, c: &Config) -> Vec<UnitId> {
        units::units_of(c)
            .into_keys()
            .filter(|id| !self.units.contains_key(id))
            .collect()
    }

    /// Start the alarm side again for `cfg` over whatever units run (the
    /// last resort when neither the new nor the previous configuration
    /// started completely).
    pub async fn restore_side(
        &mut self,
        cfg: Arc<LoadedConfig>,
        shared: &Shared,
    ) -> Arc<FieldHandles> {
        let running = self.running_devices();
        self.start_side(cfg, shared, &running).await
    }

    async fn start_unit(
        &self,
        cfg: &Arc<LoadedConfig>,
        id: &UnitId,
        spec: UnitSpec,
        shared: &Shared,
    ) -> anyhow::Result<Running> {
        let stop = CancellationToken::new();
        let bus = self.relay.sender();
        let status = Some(&*shared.status);
        let mut writers = Writers::new();
        let mut probes = modbus::probe::Probers::new();
        let mut clips = None;
        let tasks = match id {
            UnitId::ModbusTcp { host, port } => modbus::spawn_link(
                cfg,
                modbus::Link::Tcp { host, port: *port },
                bus,
                stop.clone(),
                status,
                &mut writers,
                &mut probes,
            ),
            UnitId::ModbusRtu { bus: line } => modbus::spawn_link(
                cfg,
                modbus::Link::Rtu { bus: line },
                bus,
                stop.clone(),
                status,
                &mut writers,
                &mut probes,
            ),
            UnitId::Gpio { device } => {
                gpio::spawn_device(cfg, device, bus, stop.clone(), status, &mut writers)
            }
            UnitId::Mqtt => crate::drivers::mqtt::spawn(cfg, bus, stop.clone(), &mut writers)
                .await
                .context("starting the MQTT device driver")?,
            UnitId::Camera { id } => match crate::cameras::spawn_one(
                cfg,
                id,
                shared.journal.clone(),
                shared.troubles.clone(),
                shared.status.clone(),
                stop.clone(),
            ) {
                Some((task, tx)) => {
                    clips = Some(tx);
                    vec![task]
                }
                None => Vec::new(),
            },
        };
        let all = units::spans(&cfg.points);
        let spans = spec
            .device_ids()
            .filter_map(|d| all.get(d).map(|s| (Arc::from(d), *s)))
            .collect();
        tracing::info!(unit = %id, tasks = tasks.len(), "driver started");
        Ok(Running {
            spec,
            stop,
            tasks,
            writers,
            probes,
            clips,
            spans,
        })
    }

    /// Build the alarm side of `cfg` over the running units and attach it
    /// to the bus; the last values of the `kept` devices are carried over.
    async fn start_side(
        &mut self,
        cfg: Arc<LoadedConfig>,
        shared: &Shared,
        kept: &HashSet<Arc<str>>,
    ) -> Arc<FieldHandles> {
        let c = &cfg.config;
        let status = &shared.status;
        // Devices count as online until they fail; the alarm task moves
        // the ones saved offline, and those of units that do not run
        // (below).
        status.devices_online.store(
            c.devices.iter().filter(|d| d.enabled).count() as u64,
            Ordering::Relaxed,
        );
        status.devices_offline.store(0, Ordering::Relaxed);
        // Metrics of devices and cameras no longer configured go.
        let cameras: HashSet<&str> = c
            .cameras
            .iter()
            .filter(|cam| cam.enabled)
            .map(|cam| cam.id.as_str())
            .collect();
        let devices: HashSet<&str> = c
            .devices
            .iter()
            .filter(|d| d.enabled)
            .map(|d| d.id.as_str())
            .collect();
        status.polls.retain(|d| devices.contains(d));
        status.cameras.retain(|id| cameras.contains(id));
        // Units not running are reported until they run.
        let missing = self.missing(c);
        let was_down = !self.down.is_empty();
        self.down.retain(|id, _| missing.contains(id));
        for id in missing {
            if let std::collections::btree_map::Entry::Vacant(e) = self.down.entry(id) {
                let id = e.key();
                tracing::error!(unit = %id, "driver not running: its devices are not monitored");
                let hb = status.liveness.register_down(format!("{id} (not running)"));
                e.insert(hb);
            }
        }
        let is_down = !self.down.is_empty();
        if was_down != is_down {
            let names: Vec<String> = self.down.keys().map(|u| u.to_string()).collect();
            let ev = drivers_event(&names);
            if let Err(e) = shared.troubles.record(ev).await {
                tracing::error!(error = %e, "gateway/drivers alarm not recorded");
            }
        }
        let (req_tx, req_rx) = mpsc::channel::<AlarmRequest>(64);

        // Where each running unit's points are now, and the complete
        // write registry in the current table's indices.
        let table = units::spans(&cfg.points);
        let mut shifts = Shifts::new();
        let mut writers = Writers::new();
        let mut probes = modbus::probe::Probers::new();
        let mut clip_queues = HashMap::new();
        for (id, r) in &self.units {
            for (device, span) in &r.spans {
                // A running driver's device that the table lacks or numbers
                // otherwise (the alarm side of the previous file over a
                // unit started with the new one, after a failed reload):
                // its readings are dropped and it takes no writes or probes.
                let now = match table.get(&**device) {
                    Some(now) if now.len == span.len => now,
                    Some(_) => {
                        tracing::error!(unit = %id, device = %device, "device's points differ under its running driver: its readings are ignored");
                        shifts.insert(device.clone(), None);
                        continue;
                    }
                    None => {
                        tracing::error!(unit = %id, device = %device, "device of a running driver not configured: its readings are ignored");
                        shifts.insert(device.clone(), None);
                        continue;
                    }
                };
                let shift = Shift {
                    driver: *span,
                    table: now.first,
                };
                if !shift.is_identity() {
                    shifts.insert(device.clone(), Some(shift));
                }
            }
            for (device, tx) in r.writers.iter() {
                let tx = match shifts.get(device) {
                    Some(Some(s)) => shifted_writer(tx.clone(), *s),
                    Some(None) => continue,
                    None => tx.clone(),
                };
                writers.insert(device.clone(), tx);
            }
            for (device, tx) in r.probes.iter() {
                let tx = match shifts.get(device) {
                    Some(&Some(s)) => modbus::probe::shifted(tx.clone(), move |i| s.forward(i)),
                    Some(None) => continue,
                    None => tx.clone(),
                };
                probes.insert(device.clone(), tx);
            }
            if let (UnitId::Camera { id }, Some(tx)) = (id, &r.clips) {
                clip_queues.insert(id.clone(), tx.clone());
            }
        }
        let arming_stop = CancellationToken::new();
        let (arming, arming_task) = crate::arming::task::spawn(
            &c.arming,
            &c.journal.path,
            shared.journal.clone(),
            shared.clock.clone(),
            arming_stop.clone(),
        );
        let (linkage_tx, linkage) =
            crate::linkage::task::spawn(cfg.clone(), writers.clone(), shared.journal.clone());
        let live = Arc::new(LiveView::new(&cfg.points));
        // Kept devices do not send their values again unless they change
        // (MQTT, GPIO): their last values go first to the new alarm task.
        let carried = match self.previous.take() {
            Some((old, old_live)) => carried_values(&old, &old_live, &cfg, kept),
            None => Vec::new(),
        };
        // Devices of units that do not run are offline (an event, the
        // counters, bad values) until their driver reports them: before
        // anything the bus holds.
        let units = units::units_of(c);
        let mut first = Vec::new();
        for id in self.down.keys() {
            for device in units.get(id).into_iter().flat_map(|u| u.device_ids()) {
                first.push(BusMessage::DeviceStatus {
                    device: device.into(),
                    ts: Timestamp::now(),
                    online: false,
                    reason: Some(format!("driver not running ({id})")),
                });
            }
        }
        let bus = self.relay.lend(first, shifts).await;
        let alarm = tokio::spawn(alarm_task::run_with(
            cfg.clone(),
            shared.journal.clone(),
            status.clone(),
            bus,
            req_rx,
            alarm_task::Hooks {
                linkage: (!c.linkage.is_empty()).then_some(linkage_tx),
                arming: Some(arming.watch()),
                live: Some(live.clone()),
                clips: crate::cameras::ClipTrigger::for_cameras(&cfg, clip_queues),
                carried,
            },
        ));
        let command_path = CommandPath::new(
            cfg.clone(),
            writers.clone(),
            req_tx.clone(),
            Some(arming.clone()),
            shared.journal.clone(),
            Some(shared.troubles.clone()),
        );
        let (cmd_tx, cmd_rx) = mpsc::channel::<IncomingCommand>(64);
        let commands = tokio::spawn(crate::command::run(cmd_rx, command_path.clone()));
        shared.command_route.send_replace(cmd_tx);
        self.side = Some(AlarmSide {
            cfg: cfg.clone(),
            live: live.clone(),
            alarm,
            linkage,
            arming_stop,
            arming: arming_task,
            commands,
        });
        Arc::new(FieldHandles {
            config: cfg,
            writers,
            alarm_requests: req_tx,
            commands: command_path,
            arming,
            live,
            troubles: shared.troubles.clone(),
            probes,
        })
    }

    /// Devices of running units (after the stops of a switch: the kept ones).
    fn running_devices(&self) -> HashSet<Arc<str>> {
        self.units
            .values()
            .flat_map(|r| r.spans.iter().map(|(d, _)| d.clone()))
            .collect()
    }

    /// Stop the alarm side: the alarm task takes what the bus holds,
    /// records what is pending and saves the alarm states → linkage
    /// finishes the actions it started → arming saves its state. Commands
    /// already queued are answered.
    async fn stop_side(&mut self, shared: &Shared) {
        let Some(side) = self.side.take() else {
            return;
        };
        // Commands arriving from now on are refused until a field runs.
        shared.command_route.send_replace(mpsc::channel(1).0);
        self.relay.detach().await;
        let _ = side.alarm.await;
        // The alarm task held the linkage queue: actions already
        // started finish (or fail) before the journal closes.
        let _ = side.linkage.await;
        side.arming_stop.cancel();
        let _ = side.arming.await;
        // Its sender was replaced (reload) or dropped (shutdown): the
        // command task ends once its queue is served. A command stuck on
        // a device write is not waited for.
        if tokio::time::timeout(std::time::Duration::from_secs(5), side.commands)
            .await
            .is_err()
        {
            tracing::warn!("command task still busy after the field stopped");
        }
        self.previous = Some((side.cfg, side.live));
    }

    /// Stop in order: drivers (GPIO outputs to their safe state) → the
    /// alarm side (see `stop_side`).
    pub async fn stop(mut self, shared: &Shared) {
        shared.command_route.send_replace(mpsc::channel(1).0);
        tracing::info!("stopping drivers");
        for r in self.units.values() {
            r.stop.cancel();
        }
        let deadline = tokio::time::Instant::now() + UNIT_STOP_TIMEOUT;
        for (id, r) in std::mem::take(&mut self.units) {
            r.stop(&id, deadline).await;
        }
        self.stop_side(shared).await;
        self.relay.close().await;
    }
}

/// The alarm key of the gateway's own alarm for drivers that do not run.
pub const DRIVERS_ALARM_KEY: &str = "gateway/drivers";

/// The `gateway/drivers` alarm: raised (priority 2, category `system`)
/// naming the driver units `down` that do not run, cleared when `down` is
/// empty.
fn drivers_event(down: &[String]) -> crate::event::NewEvent {
    use crate::event::{AlarmInfo, AlarmState, Category, EventKind, NewEvent, Priority, Source};
    let (kind, state, message) = if down.is_empty() {
        (
            EventKind::AlarmCleared,
            AlarmState::Normal,
            "Every field driver runs again".to_string(),
        )
    } else {
        (
            EventKind::AlarmRaised,
            AlarmState::ActiveUnacked,
            format!(
                "Field drivers not running, their devices unmonitored: {}",
                down.join(", ")
            ),
        )
    };
    NewEvent {
        ts: Timestamp::now(),
        kind,
        priority: Priority::HIGH,
        category: Category::System,
        source: Source {
            device: Some("gateway".into()),
            point: Some("drivers".into()),
            zone: None,
        },
        alarm: Some(AlarmInfo {
            key: DRIVERS_ALARM_KEY.into(),
            state,
            value: serde_json::json!(down.len()),
            message,
            operator: None,
            comment: None,
            latched: false,
        }),
        attachments: Vec::new(),
        detail: Some(serde_json::json!({ "not_running": down })),
    }
}

/// A write queue taking the current table's indices in front of a kept
/// driver that numbers its points as in the table it started with.
fn shifted_writer(to: WriteSender, shift: Shift) -> WriteSender {
    let (tx, mut rx) = mpsc::channel::<WriteRequest>(16);
    tokio::spawn(async move {
        while let Some(mut req) = rx.recv().await {
            let Some(p) = shift.back(req.point) else {
                let _ = req.reply.send(Err(WriteError::NotWritable));
                continue;
            };
            req.point = p;
            if let Err(mpsc::error::SendError(req)) = to.send(req).await {
                let _ = req.reply.send(Err(WriteError::ShuttingDown));
            }
        }
    });
    tx
}

/// The last good values of `kept` devices in `old_live` (indices of
/// `old`), in `new`'s indices, one entry per device and reading time.
fn carried_values(
    old: &LoadedConfig,
    old_live: &LiveView,
    new: &LoadedConfig,
    kept: &HashSet<Arc<str>>,
) -> Vec<alarm_task::Carried> {
    let mut by_device: BTreeMap<(Arc<str>, Timestamp), Vec<Reading>> = BTreeMap::new();
    for (i, sample) in old_live.values().into_iter().enumerate() {
        let Some(Sample {
            value: Some(value),
            quality: Quality::Good,
            ts,
        }) = sample
        else {
            continue;
        };
        if i >= old.points.len() {
            continue;
        }
        let meta = old.points.get(i as PointIndex);
        if !kept.contains(&meta.device) {
            continue;
        }
        let Some(point) = new.points.find(&meta.key) else {
            continue;
        };
        by_device
            .entry((meta.device.clone(), ts))
            .or_default()
            .push(Reading { point, value });
    }
    by_device
        .into_iter()
        .map(|((device, ts), readings)| alarm_task::Carried {
            device,
            ts,
            readings,
        })
        .collect()
}

/// The staff push tasks of one `[push]` section.
pub(super) struct Pushes {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Pushes {
    /// Journal sinks of the whole gateway under `c`: the uplink and the pushes.
    pub fn sinks(c: &Config) -> Vec<String> {
        let mut sinks = vec![UPLINK_SINK.to_string()];
        sinks.extend(crate::push::sinks(&c.push));
        sinks
    }

    /// Start the escalation and channel tasks. Reads the channels' secrets:
    /// one that cannot be read fails the start.
    pub fn start(cfg: &LoadedConfig, shared: &Shared) -> anyhow::Result<Pushes> {
        let c = &cfg.config;
        let stop = CancellationToken::new();
        let tasks = crate::push::spawn(
            crate::push::PushContext {
                config: Arc::new(c.push.clone()),
                site_id: c.site.id.clone(),
                site_name: c.site.name.clone().unwrap_or_else(|| c.site.id.clone()),
                gateway: c.site.gateway.clone(),
                journal: shared.journal.clone(),
                status: shared.status.clone(),
                state_dir: c.journal.path.clone(),
                clock: Arc::new(crate::push::SystemClock),
                notify: Arc::new(crate::push::notify::rules(&c.linkage)),
            },
            stop.clone(),
        )
        .context("starting pushes")?;
        Ok(Pushes { stop, tasks })
    }

    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The uplink task: one MQTT session with the platform.
pub(super) struct Uplink {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Uplink {
    /// Read the uplink password (if any) of `c`.
    pub fn password(c: &Config) -> anyhow::Result<Option<Secret>> {
        match &c.uplink.password {
            Some(src) => Ok(Some(src.resolve().context("uplink password")?)),
            None => Ok(None),
        }
    }

    /// Start the session; commands go to `commands`.
    pub fn start(
        c: &Config,
        password: Option<Secret>,
        shared: &Shared,
        commands: mpsc::Sender<IncomingCommand>,
    ) -> Uplink {
        let stop = CancellationToken::new();
        let task = tokio::spawn(uplink::run(
            UplinkContext {
                config: c.uplink.clone(),
                password,
                site: c.site.id.clone(),
                gateway: c.site.gateway.clone(),
                journal: shared.journal.clone(),
                status: shared.status.clone(),
                commands,
            },
            stop.clone(),
        ));
        Uplink { stop, task }
    }

    /// Publish `status: offline (shutdown)`, disconnect, and end the task.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Hand each command from the uplink to the current field's command task;
/// a command that finds no field (reloading, shutting down) is refused
/// and audited.
pub(super) async fn route_commands(
    mut from_uplink: mpsc::Receiver<IncomingCommand>,
    route: watch::Receiver<mpsc::Sender<IncomingCommand>>,
    journal: Journal,
) {
    while let Some(cmd) = from_uplink.recv().await {
        let to = route.borrow().clone();
        if let Err(mpsc::error::SendError(cmd)) = to.send(cmd).await {
            let (event, reply) = crate::command::refusal(
                &cmd.request_id,
                &cmd.payload,
                "gateway is reloading or stopping",
            );
            let _ = journal.record(vec![event]).await;
            let _ = cmd.reply.send(reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::Value;

    #[tokio::test]
    async fn writes_reach_a_kept_driver_in_its_own_indices() {
        let (driver, mut queue) = mpsc::channel::<WriteRequest>(4);
        let shift = Shift {
            driver: Span { first: 0, len: 2 },
            table: 5,
        };
        let mut writers = Writers::new();
        writers.insert("a".into(), shifted_writer(driver, shift));
        let served = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(req) = queue.recv().await {
                seen.push(req.point);
                let _ = req.reply.send(Ok(()));
            }
            seen
        });
        let t = std::time::Duration::from_secs(5);
        writers
            .write("a", 6, Value::Bool(true), None, t)
            .await
            .unwrap();
        // Not a point of the device in the current table.
        assert_eq!(
            writers.write("a", 7, Value::Bool(true), None, t).await,
            Err(WriteError::NotWritable)
        );
        drop(writers);
        assert_eq!(served.await.unwrap(), vec![1]);
    }
}
