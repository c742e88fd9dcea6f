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
use crate::drivers::write::Writers;
use crate::drivers::{gpio, modbus};
use crate::event::{EventKind, NewEvent, Priority};
use crate::journal::Journal;
use crate::point::BusMessage;
use crate::service::Service;
use crate::status::GatewayStatus;
use crate::uplink::{self, IncomingCommand, UplinkContext};
use crate::web;
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

/// Longest a journal flush (with `fsync`, on an SD card) may take before
/// the committer counts as wedged, on top of `[journal] telemetry_flush_s`.
const JOURNAL_FLUSH_ALLOWANCE: Duration = Duration::from_secs(20);

/// How long the uplink may keep delivering after the drivers stopped.
const UPLINK_GRACE: Duration = Duration::from_secs(3);

/// A running gateway.
pub struct Gateway {
    pub journal: Journal,
    pub status: Arc<GatewayStatus>,
    pub alarm_requests: mpsc::Sender<AlarmRequest>,
    /// Writes to field devices (MQTT devices, GPIO outputs), by device id.
    pub writers: Writers,
    /// Where the web server listens (`None`: `[web] enabled = false`).
    pub web_addr: Option<std::net::SocketAddr>,
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
        let push_sinks = crate::push::sinks(&c.push);
        let mut sinks = vec![UPLINK_SINK];
        sinks.extend(push_sinks.iter().map(String::as_str));
        let journal = Journal::open(&c.journal, &c.site.gateway, &sinks)
            .with_context(|| format!("opening journal at {}", c.journal.path.display()))?;
        let status = Arc::new(GatewayStatus::with_liveness_grace(
            c.devices.iter().filter(|d| d.enabled).count() as u64,
            c.service.liveness_grace,
        ));
        journal.set_heartbeat(status.liveness.register(
            "journal",
            c.journal.telemetry_flush + JOURNAL_FLUSH_ALLOWANCE,
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

        // Pushes first: a channel secret that cannot be read stops the
        // start before any other task runs.
        let push_stop = CancellationToken::new();
        let pushes = crate::push::spawn(
            crate::push::PushContext {
                config: Arc::new(c.push.clone()),
                site_id: c.site.id.clone(),
                site_name: c.site.name.clone().unwrap_or_else(|| c.site.id.clone()),
                gateway: c.site.gateway.clone(),
                journal: journal.clone(),
                status: status.clone(),
                state_dir: c.journal.path.clone(),
                clock: Arc::new(crate::push::SystemClock),
                notify: Arc::new(crate::push::notify::rules(&c.linkage)),
            },
            push_stop.clone(),
        )
        .context("starting pushes")?;
        let shutdown = CancellationToken::new();
        let (bus_tx, bus_rx) = mpsc::channel::<BusMessage>(BUS_CAPACITY);
        let (req_tx, req_rx) = mpsc::channel::<AlarmRequest>(64);
        let (cmd_tx, cmd_rx) = mpsc::channel::<IncomingCommand>(64);

        // Every driver that can write registers its devices first; then
        // linkage and the command path get the complete registry.
        let mut writers = Writers::new();
        let mut drivers = modbus::spawn_full(
            &cfg,
            bus_tx.clone(),
            shutdown.child_token(),
            Some(&status),
            &mut writers,
        );
        drivers.extend(gpio::spawn(
            &cfg,
            bus_tx.clone(),
            shutdown.child_token(),
            Some(&status),
            &mut writers,
        ));
        drivers.extend(
            crate::drivers::mqtt::spawn(&cfg, bus_tx.clone(), shutdown.child_token(), &mut writers)
                .await
                .context("starting the MQTT device driver")?,
        );
        let cameras = crate::cameras::spawn(
            &cfg,
            journal.clone(),
            status.clone(),
            shutdown.child_token(),
        );
        drivers.extend(cameras.tasks);
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
        let live = Arc::new(crate::alarm::live::LiveView::new(cfg.points.len()));
        let alarm = tokio::spawn(alarm_task::run_with(
            cfg.clone(),
            journal.clone(),
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
            writers.clone(),
            req_tx.clone(),
            Some(arming.clone()),
            journal.clone(),
        );
        let commands = tokio::spawn(crate::command::run(cmd_rx, command_path.clone()));
        let web_stop = CancellationToken::new();
        let web = if c.web.enabled {
            let state = web::WebState {
                status: status.clone(),
                journal: journal.clone(),
                uplink_sink: UPLINK_SINK,
                page: page_state(&cfg, &command_path, &live),
                state_dir: c.journal.path.clone(),
            };
            // Alarms matter more than metrics: a taken port is logged
            // loudly, and the gateway runs on without its web server.
            match web::spawn(&c.web, state, web_stop.clone()).await {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::error!(error = %e, "web server not started: no /metrics, no /healthz");
                    None
                }
            }
        } else {
            None
        };
        let web_addr = web.as_ref().map(|(a, _)| *a);
        // Up means every main loop runs: wait for their first beats.
        let missing = status
            .liveness
            .wait_registered(&["alarm", "uplink"], Duration::from_secs(10))
            .await;
        if !missing.is_empty() {
            tracing::error!(?missing, "main loops not running 10 s after start");
        }

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
                push_stop.cancel();
                for p in pushes {
                    let _ = p.await;
                }
                commands.abort();
                if let Err(e) = journal.flush().await {
                    tracing::error!(error = %e, "journal flush at shutdown failed");
                }
                web_stop.cancel();
                if let Some((_, h)) = web {
                    let _ = h.await;
                }
                tracing::info!("gateway stopped");
            })
        };
        Ok(Gateway {
            journal,
            status,
            web_addr,
            writers,
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

/// `estate-gateway run`: start, tell systemd it is ready, pet its watchdog
/// while every main loop is alive, then stop on SIGTERM/SIGINT.
pub async fn run(cfg: LoadedConfig) -> anyhow::Result<()> {
    let service = Service::from_env();
    let gw = Gateway::start(cfg).await?;
    tracing::info!(boot_id = %gw.status.boot_id, "gateway running");
    release_startup_memory();
    service.ready();
    let watchdog_stop = CancellationToken::new();
    let watchdog = service.spawn_watchdog(gw.status.liveness.clone(), watchdog_stop.clone());
    wait_for_signal().await;
    tracing::info!("shutdown requested");
    service.stopping();
    gw.stop();
    // A second signal exits at once.
    tokio::select! {
        _ = gw.wait() => {}
        _ = wait_for_signal() => {
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        }
    }
    watchdog_stop.cancel();
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    Ok(())
}

/// The web page's state, or `None` (logged) when `[web] page = false` or
/// its accounts file cannot be read: the gateway runs on without the page.
fn page_state(
    cfg: &Arc<LoadedConfig>,
    commands: &CommandPath,
    live: &Arc<crate::alarm::live::LiveView>,
) -> Option<Arc<web::PageState>> {
    if !cfg.config.web.page {
        return None;
    }
    match web::PageState::new(cfg.clone(), commands.clone(), live.clone()) {
        Ok(p) => Some(Arc::new(p)),
        Err(e) => {
            tracing::error!(error = %e, "web page not started");
            None
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
