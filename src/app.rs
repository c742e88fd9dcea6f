//! Wiring: open the journal, start the alarm task, drivers and uplink, and
//! run the one shutdown path.
//!
//! Shutdown order: stop drivers → the alarm task drains the bus and records
//! what is pending → `gateway.stopped` is recorded → the uplink gets a short
//! grace to deliver, publishes `status: offline (shutdown)` and disconnects →
//! the journal is flushed. A second SIGTERM/SIGINT exits at once.

use crate::alarm::task::{self as alarm_task, AlarmRequest};
use crate::arming::{ArmingHandle, SystemClock, WallClock};
use crate::command::CommandPath;
use crate::config::LoadedConfig;
use crate::drivers::modbus;
use crate::drivers::write::Writers;
use crate::event::{EventKind, NewEvent, Priority};
use crate::journal::Journal;
use crate::point::BusMessage;
use crate::status::GatewayStatus;
use crate::uplink::{self, IncomingCommand, UplinkContext};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Name of the uplink's journal cursor.
pub const UPLINK_SINK: &str = "uplink";

/// Capacity of the driver bus. When full, drivers wait (alarms are never
/// dropped); a poll cycle is at most delayed.
const BUS_CAPACITY: usize = 1024;

/// How long the uplink may keep delivering after the drivers stopped.
const UPLINK_GRACE: Duration = Duration::from_secs(3);

/// A running gateway.
pub struct Gateway {
    pub journal: Journal,
    pub status: Arc<GatewayStatus>,
    pub alarm_requests: mpsc::Sender<AlarmRequest>,
    /// The one command path (platform commands; the local web page later).
    pub commands: CommandPath,
    /// Zone arming.
    pub arming: ArmingHandle,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Start every task. Returns once the journal is open and the tasks run.
    pub async fn start(cfg: LoadedConfig) -> anyhow::Result<Gateway> {
        Gateway::start_with_clock(cfg, Arc::new(SystemClock)).await
    }

    /// [`start`](Self::start) with the wall clock arming schedules follow
    /// (tests and simulations inject a fake one).
    pub async fn start_with_clock(
        cfg: LoadedConfig,
        clock: Arc<dyn WallClock>,
    ) -> anyhow::Result<Gateway> {
        let cfg = Arc::new(cfg);
        let c = &cfg.config;
        let password = match &c.uplink.password {
            Some(src) => Some(src.resolve().context("uplink password")?),
            None => None,
        };
        let journal = Journal::open(&c.journal, &c.site.gateway, &[UPLINK_SINK])
            .with_context(|| format!("opening journal at {}", c.journal.path.display()))?;
        let status = Arc::new(GatewayStatus::new(
            c.devices.iter().filter(|d| d.enabled).count() as u64,
        ));
        journal
            .record(vec![NewEvent::system(
                EventKind::GatewayStarted,
                Priority::INFO,
                serde_json::json!({
                    "version": status.version,
                    "boot_id": status.boot_id,
                }),
            )])
            .await
            .context("recording gateway.started")?;

        let shutdown = CancellationToken::new();
        let (bus_tx, bus_rx) = mpsc::channel::<BusMessage>(BUS_CAPACITY);
        let (req_tx, req_rx) = mpsc::channel::<AlarmRequest>(64);
        let (cmd_tx, cmd_rx) = mpsc::channel::<IncomingCommand>(64);

        let mut writers = Writers::new();
        let drivers =
            modbus::spawn_with_writers(&cfg, bus_tx.clone(), shutdown.child_token(), &mut writers);
        let arming_stop = CancellationToken::new();
        let (arming, arming_task) = crate::arming::task::spawn(
            &c.arming,
            &c.journal.path,
            journal.clone(),
            clock,
            arming_stop.clone(),
        );
        let (linkage_tx, linkage_task) =
            crate::linkage::task::spawn(cfg.clone(), writers.clone(), journal.clone());
        let alarm = tokio::spawn(alarm_task::run_with(
            cfg.clone(),
            journal.clone(),
            status.clone(),
            bus_rx,
            req_rx,
            alarm_task::Hooks {
                linkage: (!c.linkage.is_empty()).then_some(linkage_tx),
                arming: Some(arming.watch()),
            },
        ));
        let uplink_stop = CancellationToken::new();
        let uplink = tokio::spawn(uplink::run(
            UplinkContext {
                config: c.uplink.clone(),
                password,
                site: c.site.id.clone(),
                gateway: c.site.gateway.clone(),
                journal: journal.clone(),
                status: status.clone(),
                commands: cmd_tx,
            },
            uplink_stop.clone(),
        ));
        let command_path = CommandPath::new(
            cfg.clone(),
            writers,
            req_tx.clone(),
            Some(arming.clone()),
            journal.clone(),
        );
        let commands = tokio::spawn(crate::command::run(cmd_rx, command_path.clone()));

        let done = {
            let shutdown = shutdown.clone();
            let journal = journal.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                tracing::info!("stopping drivers");
                for d in drivers {
                    let _ = d.await;
                }
                // The bus stays open until now even with no driver running,
                // so the alarm task serves acknowledgements and timers.
                drop(bus_tx);
                let _ = alarm.await;
                // The alarm task held the linkage queue: actions already
                // started finish (or fail) before the journal closes.
                let _ = linkage_task.await;
                arming_stop.cancel();
                let _ = arming_task.await;
                let _ = journal
                    .record(vec![NewEvent::system(
                        EventKind::GatewayStopped,
                        Priority::INFO,
                        serde_json::json!({"reason": "shutdown"}),
                    )])
                    .await;
                // Let the uplink deliver what it can, then stop it.
                let deadline = tokio::time::Instant::now() + UPLINK_GRACE;
                while tokio::time::Instant::now() < deadline
                    && journal.acked_seq(UPLINK_SINK) < journal.stats().last_seq
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                uplink_stop.cancel();
                let _ = uplink.await;
                commands.abort();
                if let Err(e) = journal.flush().await {
                    tracing::error!(error = %e, "journal flush at shutdown failed");
                }
                tracing::info!("gateway stopped");
            })
        };
        Ok(Gateway {
            journal,
            status,
            alarm_requests: req_tx,
            commands: command_path,
            arming,
            shutdown,
            done,
        })
    }

    /// Begin the ordered shutdown.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// Wait until the shutdown has completed.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// `estate-gateway run`: start, then stop on SIGTERM/SIGINT.
pub async fn run(cfg: LoadedConfig) -> anyhow::Result<()> {
    let gw = Gateway::start(cfg).await?;
    tracing::info!(boot_id = %gw.status.boot_id, "gateway running");
    release_startup_memory();
    wait_for_signal().await;
    tracing::info!("shutdown requested");
    gw.stop();
    // A second signal exits at once.
    tokio::select! {
        _ = gw.wait() => Ok(()),
        _ = wait_for_signal() => {
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        }
    }
}

/// Give back to the OS what start-up (config parsing, journal recovery)
/// freed: glibc keeps freed heap pages otherwise, and a Pi has little RAM.
fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
