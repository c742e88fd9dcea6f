//! Configuration reload (SIGHUP, later the web page).
//!
//! A reload validates the new file first; an invalid file is logged
//! problem by problem, recorded as `config.changed` with `ok: false`, and
//! changes nothing. A valid one keeps the journal, the web server and —
//! unless `[uplink]` changed — the uplink's MQTT session with its backlog.
//! On the field side, driver units whose settings did not change keep
//! running with their connections (a Modbus TCP endpoint, an RS-485 line,
//! the site broker connection, a GPIO device, a camera with its pre-alarm
//! buffer); units that changed restart, new ones start, removed ones stop.
//! The alarm side (alarm task, linkage, arming, command path) is rebuilt
//! with the new file; the staff pushes restart when `[push]` changed.
//! Alarm states of rules that are still configured survive: the alarm task
//! saves them when it stops and the new one restores them, as across a
//! restart. See `docs/design/reload.md`.
//!
//! Sections read only at start (`[site]`, `[journal]`, `[web]`,
//! `[service]`, `[log]`, and a running `[site_broker.embedded]`) refuse the
//! reload when they changed: the gateway must be restarted for them, and a
//! half-applied file would be worse.

use super::field::{FieldHandles, Pushes, Shared, Uplink};
use super::units::{self, Changes};
use super::Live;
use crate::config::{Config, ConfigErrors, LoadedConfig};
use crate::event::{EventKind, NewEvent, Priority};
use crate::uplink::IncomingCommand;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Mutex};
use tokio_util::sync::CancellationToken;

/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// The file the new configuration came from.
    pub file: PathBuf,
    /// False when the file equals the running configuration: nothing was restarted.
    pub changed: bool,
    /// What was restarted: `field` (the alarm engine with the new rules,
    /// linkage, arming, the command path; drivers: see `drivers`),
    /// `pushes`, `uplink`.
    pub restarted: Vec<&'static str>,
    /// Driver units (`modbus tcp:host:port`, `modbus rtu:bus`,
    /// `mqtt site broker`, `gpio device`, `camera id`) kept running with
    /// their connections, restarted, started and stopped.
    pub drivers: Changes,
    /// The same by device id.
    pub by_device: Changes,
    /// Devices, points and alarm rules of the new configuration.
    pub devices: usize,
    pub points: usize,
    pub alarm_rules: usize,
}

/// Why a reload changed nothing (or, for [`ReloadError::RolledBack`],
/// went back to the previous configuration).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("configuration invalid; nothing changed:\n{0}")]
    Invalid(ConfigErrors),
    #[error("changes to [{}] take effect only on restart; nothing changed", .0.join("], ["))]
    NeedsRestart(Vec<&'static str>),
    /// The uplink password cannot be read.
    #[error("{0}; nothing changed")]
    Secret(String),
    /// The new configuration did not start, or would not have (its start
    /// checks failed before anything stopped): the previous one runs.
    #[error("the new configuration did not start ({0}); the previous one runs again")]
    RolledBack(String),
    #[error("the new configuration did not start ({new}), nor did the previous one ({old})")]
    Failed { new: String, old: String },
    #[error("the gateway is stopping")]
    Stopping,
}

/// Reloads a running gateway; cheap to clone. Reloads run one at a time.
#[derive(Clone)]
pub struct Reloader {
    live: Arc<Mutex<Live>>,
    shared: Arc<Shared>,
    /// Where the uplink (when restarted) sends its commands.
    uplink_commands: mpsc::Sender<IncomingCommand>,
    handles: Arc<watch::Sender<Arc<FieldHandles>>>,
    /// Stops the background start of units a failed reload left stopped.
    retry: Arc<std::sync::Mutex<Option<CancellationToken>>>,
    /// Tests only: skip the start checks (to reach a failing start).
    skip_checks: Arc<std::sync::atomic::AtomicBool>,
}

/// First wait before starting again the units a failed reload left
/// stopped; doubles up to [`RETRY_MAX`].
pub(super) const RETRY_MIN: Duration = Duration::from_secs(5);
/// Longest wait between two starts of units left stopped.
pub(super) const RETRY_MAX: Duration = Duration::from_secs(60);

impl Reloader {
    pub(super) fn new(
        live: Arc<Mutex<Live>>,
        shared: Arc<Shared>,
        uplink_commands: mpsc::Sender<IncomingCommand>,
        handles: watch::Sender<Arc<FieldHandles>>,
    ) -> Reloader {
        Reloader {
            live,
            shared,
            uplink_commands,
            handles: Arc::new(handles),
            retry: Arc::new(std::sync::Mutex::new(None)),
            skip_checks: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// Tests only: let reloads skip the checks made before stopping
    /// anything, so that a unit's start can fail halfway through a switch.
    #[doc(hidden)]
    pub fn skip_start_checks_for_tests(&self) {
        self.skip_checks
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Load and validate `path`, then [`reload`](Self::reload) it. Every
    /// problem of an invalid file is logged and recorded.
    pub async fn reload_file(&self, path: &Path) -> Result<ReloadReport, ReloadError> {
        match crate::config::load(path) {
            Ok(cfg) => self.reload(cfg).await,
            Err(errors) => {
                for p in &errors.0 {
                    tracing::error!(problem = %p, "reload refused: configuration problem");
                }
                let e = ReloadError::Invalid(errors);
                self.record_failure(path, &e).await;
                Err(e)
            }
        }
    }

    /// Apply `new` (already validated by [`crate::config::load`]).
    ///
    /// The reload runs in a task of its own: a caller that goes away (a
    /// web request whose client hung up) cannot cut it off halfway, with
    /// drivers stopped and nothing started.
    pub async fn reload(&self, new: LoadedConfig) -> Result<ReloadReport, ReloadError> {
        let this = self.clone();
        match tokio::spawn(async move { this.reload_to_end(new).await }).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(ReloadError::Stopping),
        }
    }

    async fn reload_to_end(&self, new: LoadedConfig) -> Result<ReloadReport, ReloadError> {
        let path = new.path.clone();
        let r = self.apply(new).await;
        match &r {
            Ok(report) if report.changed => {
                tracing::info!(
                    file = %path.display(),
                    restarted = ?report.restarted,
                    drivers_kept = ?report.drivers.kept,
                    drivers_restarted = ?report.drivers.restarted,
                    drivers_started = ?report.drivers.started,
                    drivers_stopped = ?report.drivers.stopped,
                    "configuration reloaded"
                );
                let detail = serde_json::json!({
                    "ok": true,
                    "file": report.file,
                    "restarted": report.restarted,
                    "drivers": report.drivers,
                    "by_device": report.by_device,
                    "devices": report.devices,
                    "points": report.points,
                    "alarm_rules": report.alarm_rules,
                });
                self.record(Priority::INFO, detail).await;
            }
            Ok(_) => {
                tracing::info!(file = %path.display(), "configuration unchanged; nothing restarted")
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "configuration reload failed");
                self.record_failure(&path, e).await;
            }
        }
        r
    }

    async fn apply(&self, new: LoadedConfig) -> Result<ReloadReport, ReloadError> {
        let mut live = self.live.lock().await;
        if live.field.is_none() {
            return Err(ReloadError::Stopping);
        }
        let old = live.cfg.clone();
        let fixed = start_only_changes(&old.config, &new.config);
        if !fixed.is_empty() {
            return Err(ReloadError::NeedsRestart(fixed));
        }
        // Units a failed reload left stopped count as a change: reloading
        // the same file starts them.
        let in_step = live.field.as_ref().is_some_and(|f| f.in_step(&old.config));
        let mut report = ReloadReport {
            file: new.path.clone(),
            changed: old.config != new.config || !in_step,
            restarted: Vec::new(),
            drivers: Changes::default(),
            by_device: Changes::default(),
            devices: new.config.devices.len(),
            points: new.points.len(),
            alarm_rules: new.config.alarms.len(),
        };
        if !report.changed {
            live.cfg = Arc::new(new);
            return Ok(report);
        }
        let uplink_changed = old.config.uplink != new.config.uplink;
        // The pushes also carry the linkage rules' `notify` actions.
        let pushes_changed = old.config.push != new.config.push
            || crate::push::notify::rules(&old.config.linkage)
                != crate::push::notify::rules(&new.config.linkage);
        // Read secrets before stopping anything.
        let password = if uplink_changed {
            Some(Uplink::password(&new.config).map_err(|e| ReloadError::Secret(format!("{e:#}")))?)
        } else {
            None
        };
        // What starting the new or changed units could fail on, too: a
        // switch that rolls back is not free (see `Field::apply`).
        if !self.skip_checks.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(field) = live.field.as_ref() {
                // Reported as a rollback (the previous file keeps
                // running), which is what the start would have come to.
                field
                    .check_start(&new)
                    .map_err(|e| ReloadError::RolledBack(format!("{e:#}")))?;
            }
        }
        let new = Arc::new(new);
        let shared = &self.shared;
        // This reload starts what is missing (or fails again and retries).
        self.stop_retry();

        // Pushes first: a channel that cannot start changes nothing else.
        if pushes_changed {
            if let Some(p) = live.pushes.take() {
                p.stop().await;
            }
            // The union of the old and new channels' sinks until the
            // reload is through: a channel this reload removes keeps its
            // cursor (and its undelivered pushes) should the reload roll
            // back.
            match self.start_pushes(&new, Some(&old)) {
                Ok(p) => {
                    live.pushes = Some(p);
                    report.restarted.push("pushes");
                }
                Err(e_new) => {
                    tracing::error!(error = %e_new, "new pushes did not start; going back to the previous ones");
                    return match self.start_pushes(&old, None) {
                        Ok(p) => {
                            live.pushes = Some(p);
                            Err(ReloadError::RolledBack(e_new))
                        }
                        Err(e_old) => Err(ReloadError::Failed {
                            new: e_new,
                            old: e_old,
                        }),
                    };
                }
            }
        }
        let Some(field) = live.field.as_mut() else {
            return Err(ReloadError::Stopping);
        };
        match field.apply(new.clone(), shared).await {
            Ok((handles, plan)) => {
                self.handles.send_replace(handles);
                report.restarted.insert(0, "field");
                report.drivers = Changes::of_units(&plan);
                report.by_device = Changes::of_devices(
                    &units::units_of(&old.config),
                    &units::units_of(&new.config),
                    &plan,
                );
            }
            Err(e_new) => {
                let e_new = format!("{e_new:#}");
                tracing::error!(error = %e_new, "new configuration did not start; going back to the previous one");
                let back = field.apply(old.clone(), shared).await;
                let back = match back {
                    Ok((handles, _)) => {
                        self.handles.send_replace(handles);
                        Ok(())
                    }
                    Err(e_old) => {
                        // Alarms first: the previous rules run over
                        // whatever drivers did start.
                        let handles = field.restore_side(old.clone(), shared).await;
                        self.handles.send_replace(handles);
                        Err(format!("{e_old:#}"))
                    }
                };
                if pushes_changed {
                    if let Some(p) = live.pushes.take() {
                        p.stop().await;
                    }
                    match self.start_pushes(&old, None) {
                        Ok(p) => live.pushes = Some(p),
                        Err(e) => {
                            tracing::error!(error = %e, "previous pushes did not start again")
                        }
                    }
                }
                return match back {
                    Ok(()) => Err(ReloadError::RolledBack(e_new)),
                    Err(old) => {
                        self.start_retry();
                        Err(ReloadError::Failed { new: e_new, old })
                    }
                };
            }
        }
        if let Some(password) = password {
            if let Some(u) = live.uplink.take() {
                u.stop().await;
            }
            live.uplink = Some(Uplink::start(
                &new.config,
                password,
                shared,
                self.uplink_commands.clone(),
            ));
            report.restarted.push("uplink");
        }
        if pushes_changed {
            // Through: the sinks of channels no longer configured go.
            if let Err(e) = self.set_sinks(&new, None) {
                tracing::error!(error = %e, "removed push channels' journal sinks not dropped");
            }
        }
        live.cfg = new;
        Ok(report)
    }

    fn stop_retry(&self) {
        let t = self.retry.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            t.cancel();
        }
    }

    /// Start in the background, with backoff, the running configuration's
    /// units that are not running, until they all run or the next reload.
    fn start_retry(&self) {
        let stop = CancellationToken::new();
        if let Some(old) = self
            .retry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(stop.clone())
        {
            old.cancel();
        }
        let this = self.clone();
        tokio::spawn(async move { this.retry_missing(stop).await });
    }

    async fn retry_missing(&self, stop: CancellationToken) {
        let mut wait = RETRY_MIN;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let mut live = self.live.lock().await;
            if stop.is_cancelled() {
                return;
            }
            let cfg = live.cfg.clone();
            let Some(field) = live.field.as_mut() else {
                return;
            };
            let missing = field.missing(&cfg.config);
            if field.in_step(&cfg.config) {
                return;
            }
            let names: Vec<String> = missing.iter().map(|u| u.to_string()).collect();
            wait = (wait * 2).min(RETRY_MAX);
            // What would fail is checked first: a try that cannot succeed
            // leaves the running alarm side alone.
            if let Err(e) = field.check_start(&cfg) {
                tracing::warn!(units = ?names, error = %format!("{e:#}"), retry_in_s = wait.as_secs(), "drivers still cannot start");
                continue;
            }
            tracing::info!(units = ?names, "starting drivers that are not running");
            match field.apply(cfg.clone(), &self.shared).await {
                Ok((handles, plan)) => {
                    self.handles.send_replace(handles);
                    let started = Changes::of_units(&plan);
                    tracing::info!(started = ?started.started, restarted = ?started.restarted, "drivers running again");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), retry_in_s = wait.as_secs(), "drivers still do not start");
                    let handles = field.restore_side(cfg, &self.shared).await;
                    self.handles.send_replace(handles);
                }
            }
        }
    }

    /// Point the journal's sinks at `cfg`'s push channels (and, while a
    /// reload is under way, `also`'s) and start `cfg`'s pushes. On failure
    /// no push of it runs.
    fn start_pushes(
        &self,
        cfg: &Arc<LoadedConfig>,
        also: Option<&LoadedConfig>,
    ) -> Result<Pushes, String> {
        self.set_sinks(cfg, also)?;
        Pushes::start(cfg, &self.shared).map_err(|e| format!("{e:#}"))
    }

    /// The journal's sinks: the uplink, `cfg`'s push channels and `also`'s.
    fn set_sinks(&self, cfg: &LoadedConfig, also: Option<&LoadedConfig>) -> Result<(), String> {
        let mut sinks = Pushes::sinks(&cfg.config);
        if let Some(also) = also {
            for s in Pushes::sinks(&also.config) {
                if !sinks.contains(&s) {
                    sinks.push(s);
                }
            }
        }
        let sinks: Vec<&str> = sinks.iter().map(String::as_str).collect();
        self.shared
            .journal
            .set_sinks(&sinks)
            .map_err(|e| format!("journal sinks: {e}"))
    }

    async fn record_failure(&self, path: &Path, e: &ReloadError) {
        let problems: Vec<String> = match e {
            ReloadError::Invalid(errors) => errors.0.iter().map(|p| p.to_string()).collect(),
            _ => Vec::new(),
        };
        let detail = serde_json::json!({
            "ok": false,
            "file": path,
            "error": e.to_string().lines().next().unwrap_or_default(),
            "problems": problems,
        });
        self.record(Priority::MEDIUM, detail).await;
    }

    async fn record(&self, priority: Priority, detail: serde_json::Value) {
        let ev = NewEvent::system(EventKind::ConfigChanged, priority, detail);
        if let Err(e) = self.shared.journal.record(vec![ev]).await {
            tracing::error!(error = %e, "config.changed not recorded");
        }
    }
}

/// Sections read only at start that differ between `old` and `new`.
pub fn start_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.site != new.site {
        v.push("site");
    }
    if old.journal != new.journal {
        v.push("journal");
    }
    if old.web != new.web {
        v.push("web");
    }
    if old.service != new.service {
        v.push("service");
    }
    if old.log != new.log {
        v.push("log");
    }
    // The embedded site broker cannot be stopped (see
    // `drivers::mqtt::embedded`): once running, its settings stay.
    let embedded = |c: &Config| c.site_broker.as_ref().and_then(|b| b.embedded.clone());
    if embedded(old).is_some() && embedded(old) != embedded(new) {
        v.push("site_broker.embedded");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Config {
        // Parsed only: its secret files and GPIO are not on this machine.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
        toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn only_start_time_sections_refuse_a_reload() {
        let old = example();
        let mut new = old.clone();
        assert!(start_only_changes(&old, &new).is_empty());
        new.alarms.clear();
        new.devices.truncate(1);
        new.linkage.clear();
        new.uplink.keepalive += std::time::Duration::from_secs(1);
        assert!(start_only_changes(&old, &new).is_empty());
        new.journal.max_bytes += 1;
        new.site.gateway.push('x');
        assert_eq!(start_only_changes(&old, &new), vec!["site", "journal"]);
        // The embedded site broker's settings stay while it runs.
        let mut new = old.clone();
        let sb = new.site_broker.as_mut().unwrap();
        sb.reconnect_max += std::time::Duration::from_secs(1);
        assert!(start_only_changes(&old, &new).is_empty());
        new.site_broker
            .as_mut()
            .unwrap()
            .embedded
            .as_mut()
            .unwrap()
            .max_connections += 1;
        assert_eq!(start_only_changes(&old, &new), vec!["site_broker.embedded"]);
        new.site_broker = None;
        assert_eq!(start_only_changes(&old, &new), vec!["site_broker.embedded"]);
    }

    #[test]
    fn refusal_names_every_section() {
        let e = ReloadError::NeedsRestart(vec!["site", "web"]);
        assert_eq!(
            e.to_string(),
            "changes to [site], [web] take effect only on restart; nothing changed"
        );
    }
}
