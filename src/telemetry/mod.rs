//! Telemetry by exception: deadband and max interval per point, batched
//! into contract `telemetry` messages. Pure logic.
//!
//! TODO(telemetry): implementation in progress.

mod config;
pub use config::TelemetryConfig;

use crate::config::LoadedConfig;
use crate::event::Timestamp;
use crate::point::{PointIndex, Quality, Value};
use std::time::Instant;

/// Decides which values to report and batches them.
pub struct TelemetryFilter {}

impl TelemetryFilter {
    pub fn new(_cfg: &LoadedConfig) -> TelemetryFilter {
        todo!()
    }
    /// A point's current value; queued if it passes the deadband / interval.
    pub fn offer(
        &mut self,
        _now: Instant,
        _ts: Timestamp,
        _point: PointIndex,
        _value: Option<Value>,
        _quality: Quality,
    ) {
        todo!()
    }
    /// A finished batch, as a contract `telemetry` JSON payload, if one is due.
    pub fn take_due(&mut self, _now: Instant) -> Option<Vec<u8>> {
        todo!()
    }
    /// When `take_due` (or the max-interval refresh) next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        todo!()
    }
}
