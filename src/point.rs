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
    /// False for a float that is not a number or is infinite: what a
    /// device sends for a broken sensor, an unset register or a fault
    /// code read as an `f32`, never a measurement.
    #[inline]
    pub fn is_number(&self) -> bool {
        match *self {
            Value::Float(f) => f.is_finite(),
            Value::Bool(_) | Value::Int(_) => true,
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
    /// The device did not answer, or answered with a value that is not a
    /// number ([`Value::is_number`]).
    Bad,
    /// The value is older than expected.
    Stale,
}

/// A value and its quality as a consumer must take them: a value that is
/// not a number ([`Value::is_number`]) is no value, and bad. Every
/// consumer of readings (alarm rules, telemetry, the live view) judges
/// them with this, so a driver needs no check of its own.
#[inline]
pub fn judged(value: Option<Value>, quality: Quality) -> (Option<Value>, Quality) {
    match value {
        Some(v) if !v.is_number() => (None, Quality::Bad),
        _ => (value, quality),
    }
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

/// The points of a [`BusMessage::Confirmed`] and their values, which a
/// consumer decodes only when it does not hold them already.
///
/// Entry `i` is one point; entries are in the order a
/// [`BusMessage::Readings`] of the same reply would list them.
pub trait Confirmation: std::fmt::Debug + Send + Sync {
    /// How many entries.
    fn count(&self) -> usize;
    /// Entry `i`'s point (`None`: skip the entry, e.g. a point the current
    /// point table does not have).
    fn point(&self, i: usize) -> Option<PointIndex>;
    /// Entry `i`'s value, decoded now (`None`: no value; skip the entry).
    fn value(&self, i: usize) -> Option<Value>;
    /// The entry of `point`, if there is one.
    fn index_of(&self, point: PointIndex) -> Option<usize> {
        (0..self.count()).find(|&i| self.point(i) == Some(point))
    }
}

/// Tests: a confirmation of fixed (point, value) entries.
#[cfg(test)]
impl Confirmation for Vec<(PointIndex, Value)> {
    fn count(&self) -> usize {
        self.len()
    }
    fn point(&self, i: usize) -> Option<PointIndex> {
        self.get(i).map(|e| e.0)
    }
    fn value(&self, i: usize) -> Option<Value> {
        self.get(i).map(|e| e.1)
    }
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
    /// A device answered a poll with exactly the values of its previous
    /// answer: the same as a [`BusMessage::Readings`] of these points with
    /// the values last sent for them, without decoding them again. A driver
    /// sends it only right after a `Readings` or `Confirmed` of the same
    /// points and values (never as the first message, nor after a
    /// `DeviceStatus` of the device); a consumer that does not hold the
    /// values (it did not see that message) decodes them from `points`.
    Confirmed {
        device: Arc<str>,
        ts: Timestamp,
        /// When the device's reply was received (for latency measurement).
        replied_at: Instant,
        points: Arc<dyn Confirmation>,
    },
    /// A device went offline (after N failed polls) or came back.
    DeviceStatus {
        device: Arc<str>,
        ts: Timestamp,
        online: bool,
        /// Last error, when going offline.
        reason: Option<String>,
    },
    /// A device answers but refuses to read some of its points: a Modbus
    /// exception 1–3 (a function or an address the device does not
    /// have, a point configured wrongly). `points` are every such point of
    /// the device now, empty once there are none; a driver sends it when
    /// they change. Those points are bad until they are read again; the
    /// device's other points are read as usual.
    Unreadable {
        device: Arc<str>,
        ts: Timestamp,
        points: Vec<PointIndex>,
        /// Why, while `points` is not empty.
        reason: Option<String>,
    },
    /// The end of one alarm task's turn on the field's bus: what was sent
    /// before it goes to that task, what follows to the next one. Sent
    /// by the bus's relay (`app::relay`) only, never by a driver; a
    /// [`BusFeed`] ends at its own mark and never hands one on.
    Handover { turn: u64 },
}

/// Where the alarm task takes the bus's messages from: the field's bus,
/// lent to it for its life (`app::relay`), or a plain channel (tests).
pub trait BusFeed: Send {
    /// The next message; `None` once the feed has ended (its channel
    /// closed, or the alarm task's turn on the bus is over).
    fn recv(&mut self) -> impl std::future::Future<Output = Option<BusMessage>> + Send;
    /// A message already waiting, if there is one.
    fn try_recv(&mut self) -> Option<BusMessage>;
}

impl BusFeed for tokio::sync::mpsc::Receiver<BusMessage> {
    async fn recv(&mut self) -> Option<BusMessage> {
        tokio::sync::mpsc::Receiver::recv(self).await
    }

    fn try_recv(&mut self) -> Option<BusMessage> {
        tokio::sync::mpsc::Receiver::try_recv(self).ok()
    }
}
