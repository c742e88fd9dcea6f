//! The field side of a running gateway: what a configuration reload stops
//! and starts again with the new file. Drivers, the alarm task, linkage,
//! arming and the command path run as one [`Field`]; staff pushes and the
//! uplink are started apart (they change only with their own sections).
//!
//! The journal, the gateway status, the web server and the uplink session
//! live outside it and outlive every reload.

use super::UPLINK_SINK;
use crate::alarm::task::{self as alarm_task, AlarmRequest};
use crate::arming::{ArmingHandle, WallClock};
use crate::command::CommandPath;
use crate::config::secret::Secret;
use crate::config::{Config, LoadedConfig};
use crate::drivers::write::Writers;
use crate::drivers::{gpio, modbus};
use crate::journal::Journal;
use crate::point::BusMessage;
use crate::status::GatewayStatus;
use crate::uplink::{self, IncomingCommand, UplinkContext};
use anyhow::Context;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Capacity of the driver bus. When full, drivers wait (alarms are never
/// dropped); a poll cycle is at most delayed.
const BUS_CAPACITY: usize = 1024;

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
    /// "Read now" probes of Modbus devices (the local web page).
    pub probes: modbus::probe::Probers,
}

/// What every field shares and keeps across reloads.
pub(super) struct Shared {
    pub journal: Journal,
    pub status: Arc<GatewayStatus>,
    pub clock: Arc<dyn WallClock>,
    /// The uplink's commands go to the current field's command task.
    pub command_route: watch::Sender<mpsc::Sender<IncomingCommand>>,
}

/// A running field side.
pub(super) struct Field {
    stop: CancellationToken,
    bus_tx: mpsc::Sender<BusMessage>,
    drivers: Vec<JoinHandle<()>>,
    alarm: JoinHandle<()>,
    linkage: JoinHandle<()>,
    arming_stop: CancellationToken,
    arming: JoinHandle<()>,
    commands: JoinHandle<()>,
}

impl Field {
    /// Start drivers, the alarm task (restoring saved alarm states),
    /// linkage, arming and the command path for `cfg`, and route the
    /// uplink's commands to them.
    pub async fn start(
        cfg: Arc<LoadedConfig>,
        shared: &Shared,
    ) -> anyhow::Result<(Field, Arc<FieldHandles>)> {
        let c = &cfg.config;
        let status = &shared.status;
        // Devices count as online until they fail; the alarm task moves
        // the ones saved offline.
        status.devices_online.store(
            c.devices.iter().filter(|d| d.enabled).count() as u64,
            Ordering::Relaxed,
        );
        status.devices_offline.store(0, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let (bus_tx, bus_rx) = mpsc::channel::<BusMessage>(BUS_CAPACITY);
        let (req_tx, req_rx) = mpsc::channel::<AlarmRequest>(64);

        // Every driver that can write registers its devices first; then
        // linkage and the command path get the complete registry.
        let mut writers = Writers::new();
        let mut probes = modbus::probe::Probers::new();
        let mut drivers = modbus::spawn_probed(
            &cfg,
            bus_tx.clone(),
            stop.child_token(),
            Some(status),
            &mut writers,
            &mut probes,
        );
        drivers.extend(gpio::spawn(
            &cfg,
            bus_tx.clone(),
            stop.child_token(),
            Some(status),
            &mut writers,
        ));
        match crate::drivers::mqtt::spawn(&cfg, bus_tx.clone(), stop.child_token(), &mut writers)
            .await
        {
            Ok(h) => drivers.extend(h),
            Err(e) => {
                // Leave nothing running behind a failed start.
                stop.cancel();
                for d in drivers {
                    let _ = d.await;
                }
                return Err(e).context("starting the MQTT device driver");
            }
        }
        // Cameras stop with the drivers; their clip hook goes to the
        // alarm task.
        let cameras = crate::cameras::spawn(
            &cfg,
            shared.journal.clone(),
            status.clone(),
            stop.child_token(),
        );
        drivers.extend(cameras.tasks);
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
        let live = Arc::new(crate::alarm::live::LiveView::new(cfg.points.len()));
        let alarm = tokio::spawn(alarm_task::run_with(
            cfg.clone(),
            shared.journal.clone(),
            status.clone(),
            bus_rx,
            req_rx,
            alarm_task::Hooks {
                linkage: (!c.linkage.is_empty()).then_some(linkage_tx),
                arming: Some(arming.watch()),
                live: Some(live.clone()),
                clips: cameras.clips,
            },
        ));
        let command_path = CommandPath::new(
            cfg.clone(),
            writers.clone(),
            req_tx.clone(),
            Some(arming.clone()),
            shared.journal.clone(),
        );
        let (cmd_tx, cmd_rx) = mpsc::channel::<IncomingCommand>(64);
        let commands = tokio::spawn(crate::command::run(cmd_rx, command_path.clone()));
        shared.command_route.send_replace(cmd_tx);
        let handles = Arc::new(FieldHandles {
            config: cfg.clone(),
            writers,
            alarm_requests: req_tx,
            commands: command_path,
            arming,
            live,
            probes,
        });
        let field = Field {
            stop,
            bus_tx,
            drivers,
            alarm,
            linkage,
            arming_stop,
            arming: arming_task,
            commands,
        };
        Ok((field, handles))
    }

    /// Stop in order: drivers (GPIO outputs to their safe state) → the
    /// alarm task drains the bus, records what is pending and saves the
    /// alarm states → linkage finishes the actions it started → arming
    /// saves its state. Commands already queued are answered.
    pub async fn stop(self, shared: &Shared) {
        // Commands arriving from now on are refused until a field runs.
        shared.command_route.send_replace(mpsc::channel(1).0);
        tracing::info!("stopping drivers");
        self.stop.cancel();
        for d in self.drivers {
            let _ = d.await;
        }
        // The bus stays open until now even with no driver running,
        // so the alarm task serves acknowledgements and timers.
        drop(self.bus_tx);
        let _ = self.alarm.await;
        // The alarm task held the linkage queue: actions already
        // started finish (or fail) before the journal closes.
        let _ = self.linkage.await;
        self.arming_stop.cancel();
        let _ = self.arming.await;
        // Its sender was replaced (reload) or dropped (shutdown): the
        // command task ends once its queue is served. A command stuck on
        // a device write is not waited for.
        if tokio::time::timeout(std::time::Duration::from_secs(5), self.commands)
            .await
            .is_err()
        {
            tracing::warn!("command task still busy after the field stopped");
        }
    }
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
