//! The durable local journal: every event is kept here until every sink
//! that must deliver it has acknowledged it.
//!
//! TODO(journal): implementation in progress; see `docs/design/journal.md`.

mod config;
pub use config::JournalConfig;

use crate::event::{Event, NewEvent};

/// Journal failures.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal storage error: {0}")]
    Storage(String),
    #[error("journal is full: {0}")]
    Full(String),
    #[error("unknown sink {0:?}")]
    UnknownSink(String),
}

/// A recorded event as stored: its position and its contract JSON payload.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// A stored telemetry message.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTelemetry {
    pub key: u64,
    pub payload: Vec<u8>,
}

/// Where the journal's lanes end (published on a watch channel).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalHead {
    pub last_seq: u64,
    pub last_telemetry: u64,
}

/// Counters for the heartbeat, health and metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JournalStats {
    pub events: u64,
    pub telemetry: u64,
    pub bytes_on_disk: u64,
    pub last_seq: u64,
}

/// Handle to the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {}

impl Journal {
    /// Open (or create) the journal. `sinks` are the names of every sink
    /// that must acknowledge an event before it may be removed.
    pub fn open(
        _cfg: &JournalConfig,
        _gateway: &str,
        _sinks: &[&str],
    ) -> Result<Journal, JournalError> {
        todo!()
    }
    /// Record events: assigns `seq`/`id`, and returns only once they are durable.
    pub async fn record(&self, _events: Vec<NewEvent>) -> Result<Vec<Event>, JournalError> {
        todo!()
    }
    /// Record one telemetry message (durable within `telemetry_flush_s`).
    pub fn record_telemetry(&self, _payload: &[u8]) -> Result<(), JournalError> {
        todo!()
    }
    /// Up to `max` events with `seq > after`, oldest first.
    pub fn read_events(&self, _after: u64, _max: usize) -> Result<Vec<StoredEvent>, JournalError> {
        todo!()
    }
    /// `sink` has delivered every event up to `upto` (inclusive).
    pub fn ack_events(&self, _sink: &str, _upto: u64) -> Result<(), JournalError> {
        todo!()
    }
    /// Last seq acknowledged by `sink`.
    pub fn acked_seq(&self, _sink: &str) -> u64 {
        todo!()
    }
    /// Up to `max` telemetry messages with `key > after`, oldest first.
    pub fn read_telemetry(
        &self,
        _after: u64,
        _max: usize,
    ) -> Result<Vec<StoredTelemetry>, JournalError> {
        todo!()
    }
    /// `sink` has delivered telemetry up to `upto` (inclusive).
    pub fn ack_telemetry(&self, _sink: &str, _upto: u64) -> Result<(), JournalError> {
        todo!()
    }
    /// Last telemetry key acknowledged by `sink`.
    pub fn acked_telemetry(&self, _sink: &str) -> u64 {
        todo!()
    }
    /// Notified whenever something is recorded.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<JournalHead> {
        todo!()
    }
    pub fn stats(&self) -> JournalStats {
        todo!()
    }
    /// Make everything recorded so far durable (shutdown path).
    pub async fn flush(&self) -> Result<(), JournalError> {
        todo!()
    }
}
