//! The alarm engine: rules over point values, ISA-18.2 states, latching,
//! on/off delays. Pure logic: time comes in as arguments.
//!
//! TODO(alarm): implementation in progress.

mod config;
pub mod task;
pub use config::AlarmRuleConfig;

use crate::config::LoadedConfig;
use crate::event::{NewEvent, Timestamp};
use crate::point::{PointIndex, Quality, Value};
use std::time::Instant;

/// Failures of operator actions.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AlarmError {
    #[error("no alarm with key {0:?}")]
    UnknownAlarm(String),
    #[error("alarm {0:?} is not awaiting acknowledgement")]
    NotUnacked(String),
}

/// All alarm rules and their states.
pub struct AlarmEngine {}

impl AlarmEngine {
    pub fn new(_cfg: &LoadedConfig) -> AlarmEngine {
        todo!()
    }
    /// A new value (or a quality change) of a point.
    pub fn on_reading(
        &mut self,
        _now: Instant,
        _ts: Timestamp,
        _point: PointIndex,
        _value: Option<Value>,
        _quality: Quality,
        _out: &mut Vec<NewEvent>,
    ) {
        todo!()
    }
    /// A device went offline or came back.
    pub fn on_device_status(
        &mut self,
        _now: Instant,
        _ts: Timestamp,
        _device_index: usize,
        _online: bool,
        _reason: Option<&str>,
        _out: &mut Vec<NewEvent>,
    ) {
        todo!()
    }
    /// Timers (on/off delays) that have come due.
    pub fn tick(&mut self, _now: Instant, _ts: Timestamp, _out: &mut Vec<NewEvent>) {
        todo!()
    }
    /// The next instant `tick` has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        todo!()
    }
    /// An operator acknowledges an alarm.
    pub fn acknowledge(
        &mut self,
        _now: Instant,
        _ts: Timestamp,
        _key: &str,
        _operator: &str,
        _comment: Option<&str>,
        _out: &mut Vec<NewEvent>,
    ) -> Result<(), AlarmError> {
        todo!()
    }
    /// Alarms not in the normal state.
    pub fn active_count(&self) -> usize {
        todo!()
    }
}
