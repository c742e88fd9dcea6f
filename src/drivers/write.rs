//! Writes to field devices: the one interface commands, linkage rules and
//! (later) the local web page use to set a point, whatever its protocol.
//!
//! Each driver task that can write registers a [`WriteSender`] for every
//! device it serves in a [`Writers`] registry; callers look the device up
//! and send a [`WriteRequest`], then await the reply. A driver executes
//! writes between polls, in order, and replies once the device confirmed
//! (or refused) the write.

use crate::point::{PointIndex, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Why a write did not happen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("device {0} has no writer (unknown, disabled or read-only protocol)")]
    NoWriter(String),
    #[error("point is not writable")]
    NotWritable,
    #[error("value does not fit the point: {0}")]
    BadValue(String),
    #[error("device is offline")]
    Offline,
    #[error("device refused the write: {0}")]
    Refused(String),
    #[error("no reply from the device within {0:?}")]
    Timeout(Duration),
    #[error("gateway is shutting down")]
    ShuttingDown,
}

/// One write.
#[derive(Debug)]
pub struct WriteRequest {
    /// The point to write (index into the point table).
    pub point: PointIndex,
    /// Engineering value (scale and offset are undone by the driver).
    pub value: Value,
    /// `Some(d)`: write `value`, hold it for `d`, then write the opposite
    /// bool (a pulse: e.g. open a door for 5 s). Bool points only.
    pub pulse: Option<Duration>,
    /// Where the driver answers once the device confirmed the write.
    pub reply: oneshot::Sender<Result<(), WriteError>>,
}

/// Queue into one driver task.
pub type WriteSender = mpsc::Sender<WriteRequest>;

/// Device id → the queue of the driver task that serves it.
#[derive(Clone, Debug, Default)]
pub struct Writers {
    by_device: HashMap<Arc<str>, WriteSender>,
}

impl Writers {
    pub fn new() -> Writers {
        Writers::default()
    }

    /// Register a driver's queue for a device.
    pub fn insert(&mut self, device: Arc<str>, tx: WriteSender) {
        self.by_device.insert(device, tx);
    }

    /// Every device's queue.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &WriteSender)> {
        self.by_device.iter()
    }

    /// Write one point of `device` and wait for the outcome (at most `timeout`).
    pub async fn write(
        &self,
        device: &str,
        point: PointIndex,
        value: Value,
        pulse: Option<Duration>,
        timeout: Duration,
    ) -> Result<(), WriteError> {
        let tx = self
            .by_device
            .get(device)
            .ok_or_else(|| WriteError::NoWriter(device.to_string()))?;
        let (reply, rx) = oneshot::channel();
        let req = WriteRequest {
            point,
            value,
            pulse,
            reply,
        };
        match tokio::time::timeout(timeout, async {
            tx.send(req).await.map_err(|_| WriteError::ShuttingDown)?;
            rx.await.map_err(|_| WriteError::ShuttingDown)?
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(WriteError::Timeout(timeout)),
        }
    }
}
