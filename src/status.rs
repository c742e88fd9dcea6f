//! Live counters shared by tasks: read by the heartbeat, later by the web
//! page and metrics. Writers are the tasks that own each fact.

use crate::event::Timestamp;
use crate::service::liveness::Liveness;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Gateway-wide live state.
#[derive(Debug)]
pub struct GatewayStatus {
    /// Random id of this process run (the contract's `status.boot_id`).
    pub boot_id: String,
    pub version: &'static str,
    pub started: Instant,
    pub started_at: Timestamp,
    pub devices_online: AtomicU64,
    pub devices_offline: AtomicU64,
    pub cameras_online: AtomicU64,
    pub alarms_active: AtomicU64,
    /// True while the uplink is connected to the platform's broker.
    pub uplink_connected: AtomicBool,
    /// Staff pushes delivered since start.
    pub pushes_sent: AtomicU64,
    /// Staff push attempts that failed since start (each is retried).
    pub pushes_failed: AtomicU64,
    /// Staff pushes given up since start (`push.dead_lettered`).
    pub pushes_dead: AtomicU64,
    /// Per push channel: pushes waiting and the oldest one's time (`/metrics`).
    pub pushes: PushRegistry,
    /// Heartbeats of the main loops (watchdog, `/healthz`).
    pub liveness: Liveness,
    /// Per-device poll counters (`/metrics`).
    pub polls: PollRegistry,
    /// Event publishes to the platform: submit → PUBACK (`/metrics`).
    pub uplink_publish: LatencyCounter,
    /// Per-camera health (heartbeat, `/metrics`, the web page).
    pub cameras: crate::cameras::HealthRegistry,
}

impl GatewayStatus {
    pub fn new(devices: u64) -> GatewayStatus {
        GatewayStatus {
            boot_id: new_boot_id(),
            version: env!("CARGO_PKG_VERSION"),
            started: Instant::now(),
            started_at: Timestamp::now(),
            // Devices count as online until they fail `offline_after` polls.
            devices_online: AtomicU64::new(devices),
            devices_offline: AtomicU64::new(0),
            cameras_online: AtomicU64::new(0),
            alarms_active: AtomicU64::new(0),
            uplink_connected: AtomicBool::new(false),
            pushes_sent: AtomicU64::new(0),
            pushes_failed: AtomicU64::new(0),
            pushes_dead: AtomicU64::new(0),
            pushes: PushRegistry::default(),
            liveness: Liveness::default(),
            polls: PollRegistry::default(),
            uplink_publish: LatencyCounter::default(),
            cameras: crate::cameras::HealthRegistry::default(),
        }
    }

    /// The same, with main loops late after `grace` past their beat.
    pub fn with_liveness_grace(devices: u64, grace: Duration) -> GatewayStatus {
        GatewayStatus {
            liveness: Liveness::new(grace),
            ..GatewayStatus::new(devices)
        }
    }

    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// One device's poll counters, written by its driver task.
#[derive(Debug, Default)]
pub struct PollCounters {
    /// Polls made (a poll reads every point of the device once).
    pub polls: AtomicU64,
    /// Polls that failed (timeout, link down, exception, bad reply).
    pub errors: AtomicU64,
    /// Sum of the durations of successful polls, in microseconds.
    pub latency_us_sum: AtomicU64,
    /// Duration of the last successful poll, in microseconds.
    pub last_latency_us: AtomicU64,
}

impl PollCounters {
    /// Count one poll; `took` is its duration (latency counts successes only).
    pub fn record(&self, ok: bool, took: Duration) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        if ok {
            let us = took.as_micros().min(u64::MAX as u128) as u64;
            self.latency_us_sum.fetch_add(us, Ordering::Relaxed);
            self.last_latency_us.store(us, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Count and total duration of something timed (a summary without quantiles).
#[derive(Debug, Default)]
pub struct LatencyCounter {
    pub count: AtomicU64,
    pub sum_us: AtomicU64,
}

impl LatencyCounter {
    pub fn record(&self, took: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// Device id → its poll counters, in registration order.
#[derive(Debug, Default)]
pub struct PollRegistry {
    devices: Mutex<Vec<(Arc<str>, Arc<PollCounters>)>>,
}

impl PollRegistry {
    /// The counters of `device` (created on first use).
    pub fn device(&self, device: &Arc<str>) -> Arc<PollCounters> {
        let mut d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = d.iter().find(|(id, _)| id == device) {
            return c.clone();
        }
        let c = Arc::new(PollCounters::default());
        d.push((device.clone(), c.clone()));
        c
    }

    /// Forget the counters of devices `keep` refuses (removed by a reload:
    /// their metrics go with them).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        d.retain(|(id, _)| keep(id));
    }

    /// Every device's counters.
    pub fn snapshot(&self) -> Vec<(Arc<str>, Arc<PollCounters>)> {
        self.devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A push channel's queue: pushes waiting, and the journal time (Unix ms)
/// of the oldest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PushQueue {
    pub pending: usize,
    pub oldest_ms: Option<i64>,
}

/// Channel name → its queue, in order of first report.
#[derive(Debug, Default)]
pub struct PushRegistry {
    channels: Mutex<Vec<(String, PushQueue)>>,
}

impl PushRegistry {
    /// Report `channel`'s queue.
    pub fn set(&self, channel: &str, pending: usize, oldest_ms: Option<i64>) {
        let mut c = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let q = PushQueue { pending, oldest_ms };
        match c.iter_mut().find(|(n, _)| n == channel) {
            Some((_, old)) => *old = q,
            None => c.push((channel.to_string(), q)),
        }
    }

    /// Every channel's queue.
    pub fn snapshot(&self) -> Vec<(String, PushQueue)> {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn new_boot_id() -> String {
    let a = fastrand::u64(..);
    let b = fastrand::u64(..);
    format!("{a:016x}{b:016x}")
}
