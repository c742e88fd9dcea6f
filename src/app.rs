//! Wiring: open the journal, start the alarm task, drivers and uplink, and
//! run the one shutdown path.
//!
//! Shutdown order: stop drivers → the alarm task drains the bus and records
//! what is pending → `gateway.stopped` is recorded → the uplink gets a short
//! grace to deliver, publishes `status: offline (shutdown)` and disconnects →
//! the journal is flushed. A second SIGTERM/SIGINT exits at once.
//!
//! SIGHUP reloads the configuration file (see `reload.rs`): drivers whose
//! settings changed restart, unchanged ones keep their connections, the
//! alarm side is rebuilt; the journal and uplink session stay.

pub mod disk;
mod field;
mod relay;
mod reload;
mod units;

pub use field::FieldHandles;
pub use reload::{ReloadError, ReloadReport, Reloader};
pub use units::Changes;

use crate::alarm::task::AlarmRequest;
use crate::arming::{ArmingHandle, SystemClock, WallClock};
use crate::command::CommandPath;
use crate::config::LoadedConfig;
use crate::drivers::write::Writers;
use crate::event::{EventKind, NewEvent, Priority};
use crate::journal::Journal;
use crate::service::Service;
use crate::status::GatewayStatus;
use crate::uplink::IncomingCommand;
use crate::web;
use anyhow::Context;
use field::{Field, Pushes, Shared, Uplink};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Name of the uplink's journal cursor.
pub const UPLINK_SINK: &str = "uplink";

/// Longest a journal flush (with `fsync`, on an SD card) may take before
/// the committer counts as wedged, on top of `[journal] telemetry_flush_s`.
const JOURNAL_FLUSH_ALLOWANCE: Duration = Duration::from_secs(20);

/// How long the uplink may keep delivering after the drivers stopped.
pub const UPLINK_GRACE: Duration = Duration::from_secs(3);

/// A running gateway.
pub struct Gateway {
    pub journal: Journal,
    pub status: Arc<GatewayStatus>,
    /// Where the web server listens (`None`: `[web] enabled = false`).
    pub web_addr: Option<std::net::SocketAddr>,
    handles: watch::Receiver<Arc<FieldHandles>>,
    reloader: Reloader,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

/// What a reload may replace, behind one lock (a reload and the shutdown
/// never interleave).
struct Live {
    cfg: Arc<LoadedConfig>,
    /// `None` once the shutdown has taken it.
    field: Option<Field>,
    pushes: Option<Pushes>,
    uplink: Option<Uplink>,
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
        let password = Uplink::password(c)?;
        let sinks = Pushes::sinks(c);
        let sinks: Vec<&str> = sinks.iter().map(String::as_str).collect();
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

        let disk_stop = CancellationToken::new();
        let troubles = crate::alarm::trouble::Troubles::new(journal.clone());
        let disk = tokio::spawn(disk::watch(
            journal.clone(),
            troubles.clone(),
            c.journal.path.clone(),
            c.journal.min_free_bytes,
            disk_stop.clone(),
        ));
        let (route_tx, route_rx) = watch::channel(mpsc::channel::<IncomingCommand>(1).0);
        let shared = Arc::new(Shared {
            journal: journal.clone(),
            troubles,
            status: status.clone(),
            clock,
            command_route: route_tx,
        });

        // Pushes first: a channel secret that cannot be read stops the
        // start before any other task runs.
        let pushes = Pushes::start(&cfg, &shared)?;

        let (field, handles) = Field::start(cfg.clone(), &shared).await?;
        let (handles_tx, handles_rx) = watch::channel(handles);
        let (cmd_tx, cmd_rx) = mpsc::channel::<IncomingCommand>(64);
        let router = tokio::spawn(field::route_commands(cmd_rx, route_rx, journal.clone()));
        let uplink = Uplink::start(c, password, &shared, cmd_tx.clone());

        let web_stop = CancellationToken::new();
        let mut web_page = None;
        let web = if c.web.enabled {
            let page = page_state(&cfg, handles_rx.clone());
            web_page = page.clone();
            let state = web::WebState {
                status: status.clone(),
                journal: journal.clone(),
                uplink_sink: UPLINK_SINK,
                page,
                state_dir: c.journal.path.clone(),
                metrics_token: metrics_token(&c.web),
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

        let live = Arc::new(tokio::sync::Mutex::new(Live {
            cfg: cfg.clone(),
            field: Some(field),
            pushes: Some(pushes),
            uplink: Some(uplink),
        }));
        let reloader = Reloader::new(live.clone(), shared.clone(), cmd_tx, handles_tx);
        if let Some(p) = &web_page {
            p.attach_config_editor(reloader.clone(), cfg.path.clone());
        }
        let shutdown = CancellationToken::new();
        let done = {
            let shutdown = shutdown.clone();
            let journal = journal.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                let mut live = live.lock().await;
                if let Some(f) = live.field.take() {
                    f.stop(&shared).await;
                }
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
                if let Some(u) = live.uplink.take() {
                    u.stop().await;
                }
                if let Some(p) = live.pushes.take() {
                    p.stop().await;
                }
                router.abort();
                disk_stop.cancel();
                let _ = disk.await;
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
            handles: handles_rx,
            reloader,
            shutdown,
            done,
        })
    }

    /// The current field's handles. A reload replaces them: hold
    /// [`field_handles`](Self::field_handles) rather than a copy.
    pub fn current(&self) -> Arc<FieldHandles> {
        self.handles.borrow().clone()
    }

    /// Follows the current field's handles across reloads (the web page).
    pub fn field_handles(&self) -> watch::Receiver<Arc<FieldHandles>> {
        self.handles.clone()
    }

    /// The one command path of the current configuration.
    pub fn commands(&self) -> CommandPath {
        self.current().commands.clone()
    }

    /// Writes to field devices, by device id (current configuration).
    pub fn writers(&self) -> Writers {
        self.current().writers.clone()
    }

    /// Zone arming (current configuration).
    pub fn arming(&self) -> ArmingHandle {
        self.current().arming.clone()
    }

    /// Operator actions on alarms (current configuration).
    pub fn alarm_requests(&self) -> mpsc::Sender<AlarmRequest> {
        self.current().alarm_requests.clone()
    }

    /// Apply a new configuration (see [`Reloader::reload`]).
    pub async fn reload(&self, new: LoadedConfig) -> Result<ReloadReport, ReloadError> {
        self.reloader.reload(new).await
    }

    /// A handle that reloads this gateway (SIGHUP, the web page).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
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
    // Handlers first: a SIGTERM or SIGHUP (`systemctl reload`) arriving
    // while the gateway starts is taken up once it runs, rather than
    // killing it halfway (their default action).
    let mut stop_signals = StopSignals::new()?;
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let service = Service::from_env();
    let path = cfg.path.clone();
    let gw = Gateway::start(cfg).await?;
    tracing::info!(boot_id = %gw.status.boot_id, "gateway running");
    release_startup_memory();
    service.ready();
    let watchdog_stop = CancellationToken::new();
    let watchdog = service.spawn_watchdog(gw.status.liveness.clone(), watchdog_stop.clone());
    let reloads = tokio::spawn(reload_on_sighup(hup, gw.reloader(), path, service.clone()));
    stop_signals.recv().await;
    reloads.abort();
    tracing::info!("shutdown requested");
    service.stopping();
    gw.stop();
    // A second signal exits at once.
    tokio::select! {
        _ = gw.wait() => {}
        _ = stop_signals.recv() => {
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

/// `[web] metrics_token`, read at start. The check at load has read it
/// already; if it cannot be read now (the file removed meanwhile),
/// `/metrics` fails closed: the stand-in holds a NUL, which no HTTP header
/// value can, so no request matches it.
fn metrics_token(web: &web::WebConfig) -> Option<crate::config::secret::Secret> {
    let src = web.metrics_token.as_ref()?;
    Some(src.resolve().unwrap_or_else(|e| {
        tracing::error!(error = %e, "[web] metrics_token unreadable: /metrics refuses every request");
        crate::config::secret::Secret::new("\0unreadable")
    }))
}

/// The web page's state, or `None` (logged) when `[web] page = false` or
/// its accounts file cannot be read: the gateway runs on without the page.
fn page_state(
    cfg: &Arc<LoadedConfig>,
    field: watch::Receiver<Arc<FieldHandles>>,
) -> Option<Arc<web::PageState>> {
    if !cfg.config.web.page {
        return None;
    }
    match web::PageState::new(field) {
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

/// Reload `path` on every SIGHUP (`systemctl reload`), telling systemd
/// while it runs. Reloads run one after the other.
async fn reload_on_sighup(
    hup: std::io::Result<tokio::signal::unix::Signal>,
    reloader: Reloader,
    path: std::path::PathBuf,
    service: Service,
) {
    let mut hup = match hup {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "no SIGHUP handler: reload needs a restart");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!(file = %path.display(), "reload requested (SIGHUP)");
        service.reloading();
        // The outcome is logged and recorded by the reloader.
        let _ = reloader.reload_file(&path).await;
        service.ready();
    }
}

/// SIGTERM and SIGINT, caught from the start.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
