//! Point values and the bus messages drivers send to the alarm engine.
//!
//! A *point* is one named value of one device (a fence zone's alarm bit, an
//! HVAC supply temperature). Drivers publish [`BusMessage`]s on a bounded
//! channel; the alarm engine task is their only consumer.

use crate::event::Timestamp;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// A decoded point value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
}

impl Value {
    /// Numeric view used by thresholds and deadbands (`true` = 1).
    pub fn as_f64(&self) -> f64 {
        match *self {
            Value::Bool(b) => b as u8 as f64,
            Value::Int(i) => i as f64,
            Value::Float(f) => f,
        }
    }
    pub fn to_json(&self) -> serde_json::Value {
        match *self {
            Value::Bool(b) => serde_json::Value::Bool(b),
            Value::Int(i) => serde_json::Value::from(i),
            Value::Float(f) => serde_json::Number::from_f64(f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
        }
    }
}

/// Contract quality of a point value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Good,
    /// The device did not answer.
    Bad,
    /// The value is older than expected.
    Stale,
}

/// Index of a point within the gateway's point table
/// ([`crate::config::PointTable`]); cheap to copy and hash.
pub type PointIndex = u32;

/// One point's reading inside a poll result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    pub point: PointIndex,
    pub value: Value,
}

/// What drivers tell the rest of the gateway.
#[derive(Clone, Debug)]
pub enum BusMessage {
    /// A device answered a poll: fresh values for some of its points.
    Readings {
        device: Arc<str>,
        ts: Timestamp,
        /// When the device's reply was received (for latency measurement).
        replied_at: Instant,
        readings: Vec<Reading>,
    },
    /// A device went offline (after N failed polls) or came back.
    DeviceStatus {
        device: Arc<str>,
        ts: Timestamp,
        online: bool,
        /// Last error, when going offline.
        reason: Option<String>,
    },
}
