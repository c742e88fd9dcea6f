//! Live counters shared by tasks: read by the heartbeat, later by the web
//! page and metrics. Writers are the tasks that own each fact.

use crate::event::Timestamp;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

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
        }
    }

    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

fn new_boot_id() -> String {
    let a = fastrand::u64(..);
    let b = fastrand::u64(..);
    format!("{a:016x}{b:016x}")
}
