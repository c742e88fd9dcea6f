//! Telemetry settings (`[telemetry]`).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Point values forwarded to the platform, by exception.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TelemetryConfig {
    /// Forward point values at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Default deadband of numeric points (a point's own `deadband` wins).
    /// `0` reports every change.
    #[serde(default)]
    pub deadband: f64,
    /// A value is reported at least this often, in seconds, even unchanged
    /// (the contract's `telemetry_max_interval_s`).
    #[serde(
        rename = "max_interval_s",
        with = "crate::config::duration",
        default = "default_max_interval"
    )]
    pub max_interval: Duration,
    /// Changes are gathered for up to this long, in seconds, into one message.
    #[serde(
        rename = "batch_s",
        with = "crate::config::duration",
        default = "default_batch"
    )]
    pub batch: Duration,
    /// Report every value on every poll instead of by exception (for
    /// platforms that want raw series; costs bandwidth and journal writes).
    #[serde(default)]
    pub every_poll: bool,
    /// Most point values in one telemetry message.
    #[serde(default = "default_max_points")]
    pub max_points_per_message: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            deadband: 0.0,
            max_interval: default_max_interval(),
            batch: default_batch(),
            every_poll: false,
            max_points_per_message: default_max_points(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_max_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_batch() -> Duration {
    Duration::from_secs(1)
}
fn default_max_points() -> usize {
    500
}
