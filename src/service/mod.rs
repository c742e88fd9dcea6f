//! Running as a systemd service: readiness and stop notifications, and the
//! watchdog petted only while every main loop is alive.
//!
//! - [`notify`]: the `sd_notify` protocol over `$NOTIFY_SOCKET`.
//! - [`liveness`]: the registry every long-running loop beats.
//! - [`Service`]: `READY=1` once the gateway is up, `WATCHDOG=1` every half
//!   `WatchdogSec=` while [`liveness::Liveness::check`] finds nothing late,
//!   `STOPPING=1` at shutdown. A late loop stops the petting and is logged
//!   by name; systemd then kills and restarts the gateway.
//!
//! Test hook: `ESTATE_GATEWAY_TEST_WEDGE=<loop name>` makes that loop's
//! heartbeat ignore its beats, so end-to-end tests can watch the petting
//! stop without a real hang. It is never set in production.

pub mod liveness;
pub mod notify;

use crate::config::duration;
use liveness::Liveness;
use notify::Notifier;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Service supervision (`[service]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceConfig {
    /// How long, in seconds, a main loop (a driver, the alarm engine, the
    /// uplink, the journal committer) may be late past its expected beat
    /// before the gateway counts it as wedged: `/healthz` answers 503 and
    /// the systemd watchdog is no longer petted.
    #[serde(
        rename = "liveness_grace_s",
        with = "duration",
        default = "default_grace"
    )]
    pub liveness_grace: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            liveness_grace: default_grace(),
        }
    }
}

fn default_grace() -> Duration {
    liveness::DEFAULT_GRACE
}

/// The gateway's side of the service manager.
#[derive(Clone, Debug)]
pub struct Service {
    notifier: Arc<Notifier>,
    watchdog: Option<Duration>,
}

impl Service {
    /// From the environment systemd sets (`NOTIFY_SOCKET`, `WATCHDOG_USEC`,
    /// `WATCHDOG_PID`); without it, every notification is a no-op.
    pub fn from_env() -> Service {
        let notifier = Notifier::from_env().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "not notifying the service manager");
            Notifier::disabled()
        });
        let watchdog = notify::watchdog_interval().filter(|_| notifier.is_enabled());
        Service {
            notifier: Arc::new(notifier),
            watchdog,
        }
    }

    /// A service over an explicit notifier and watchdog interval.
    pub fn new(notifier: Notifier, watchdog: Option<Duration>) -> Service {
        Service {
            notifier: Arc::new(notifier),
            watchdog,
        }
    }

    /// The gateway is up (config, journal, tasks).
    pub fn ready(&self) {
        self.notifier.notify_or_log("READY=1\nSTATUS=running");
        if self.notifier.is_enabled() {
            tracing::info!(watchdog = ?self.watchdog, "service manager notified: ready");
        }
    }

    /// A configuration reload has begun; [`ready`](Self::ready) ends it.
    pub fn reloading(&self) {
        self.notifier
            .notify_or_log("RELOADING=1\nSTATUS=reloading configuration");
    }

    /// The ordered shutdown has begun.
    pub fn stopping(&self) {
        self.notifier.notify_or_log("STOPPING=1\nSTATUS=stopping");
    }

    /// Start petting the watchdog (when systemd asked for one) until `stop`.
    pub fn spawn_watchdog(
        &self,
        liveness: Liveness,
        stop: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        let interval = self.watchdog?;
        let notifier = self.notifier.clone();
        Some(tokio::spawn(pet(notifier, interval, liveness, stop)))
    }
}

/// Pet every half `interval` while nothing is late; log the late loops
/// whenever that set changes.
async fn pet(
    notifier: Arc<Notifier>,
    interval: Duration,
    liveness: Liveness,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval((interval / 2).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stale = liveness.check_watchdog();
        let names: Vec<String> = stale.iter().map(|s| s.name.clone()).collect();
        if stale.is_empty() {
            if !reported.is_empty() {
                tracing::warn!("every main loop is alive again; petting the watchdog");
                notifier.notify_or_log("STATUS=running");
                reported.clear();
            }
            notifier.notify_or_log("WATCHDOG=1");
        } else if names != reported {
            let list = stale
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            tracing::error!(late = %list, "main loop wedged: watchdog not petted");
            notifier.notify_or_log(&format!("STATUS=wedged: {list}"));
            reported = names;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn received(rx: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = rx.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_wedged_loop_stops_the_petting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let service = Service::new(
            Notifier::to_socket(path.to_str().unwrap()).unwrap(),
            Some(Duration::from_secs(2)),
        );
        let liveness = Liveness::new(Duration::from_secs(1));
        let alarm = liveness.register("alarm", Duration::from_secs(2));
        let poller = liveness.register("modbus tcp:plc:502", Duration::from_secs(2));
        let stop = CancellationToken::new();
        let h = service
            .spawn_watchdog(liveness.clone(), stop.clone())
            .unwrap();
        service.ready();

        // Both loops beat: petted every second.
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(1)).await;
            alarm.beat();
            poller.beat();
            tokio::task::yield_now().await;
        }
        let got = received(&rx);
        assert_eq!(got[0], "READY=1\nSTATUS=running");
        let pets = got.iter().filter(|m| *m == "WATCHDOG=1").count();
        assert!(pets >= 4, "petted while alive: {got:?}");

        // The poller wedges: after 2 s + 1 s grace the petting stops.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            alarm.beat();
            tokio::task::yield_now().await;
        }
        let got = received(&rx);
        let wedged_at = got
            .iter()
            .position(|m| m.starts_with("STATUS=wedged: modbus tcp:plc:502"))
            .unwrap_or_else(|| panic!("no wedged status: {got:?}"));
        assert!(
            got[wedged_at..].iter().all(|m| m != "WATCHDOG=1"),
            "petted after the wedge: {got:?}"
        );
        assert!(
            got[..wedged_at].len() <= 3,
            "stopped within period + grace: {got:?}"
        );

        // It beats again: petting resumes.
        poller.beat();
        tokio::time::advance(Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
        let got = received(&rx);
        assert!(got.contains(&"WATCHDOG=1".to_string()), "{got:?}");

        service.stopping();
        assert_eq!(received(&rx), vec!["STOPPING=1\nSTATUS=stopping"]);
        stop.cancel();
        h.await.unwrap();
    }

    #[test]
    fn no_watchdog_without_systemd() {
        let s = Service::new(Notifier::disabled(), None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(s
                .spawn_watchdog(Liveness::default(), CancellationToken::new())
                .is_none());
        });
    }
}
