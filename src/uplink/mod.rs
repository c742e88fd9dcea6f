//! The uplink to the central platform over MQTT, exactly as
//! `docs/uplink-contract.md` says.
//!
//! - [`state`]: delivery state without I/O: in-flight windows, packet-id
//!   bookkeeping, contiguous acknowledgements, link changes, backoff.
//! - [`payload`]: topics and payloads of the contract.
//! - `task`: the one task that polls rumqttc's `EventLoop`, reads the
//!   journal, publishes and acknowledges.
//! - `tls`: the rustls client configuration (ring provider).
//!
//! Delivery: events leave the journal only once acknowledged (the broker's
//! PUBACK, or with `end_to_end_ack` the platform's `events_ack`), always as a
//! contiguous prefix of `seq`. The journal, not rumqttc, is the source of
//! truth: after a reconnect (clean session) publishing restarts after the
//! last acknowledged `seq`.

mod config;
pub mod payload;
pub mod state;
mod task;
pub(crate) mod tls;

pub use config::{TlsConfig, UplinkConfig};

use crate::config::secret::Secret;
use crate::journal::Journal;
use crate::status::GatewayStatus;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Uplink failures. None of them carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The TLS material in `[uplink.tls]` cannot be used.
    #[error("uplink TLS: {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    /// rumqttc's reports no longer match what was submitted; the connection
    /// is reset and delivery restarts from the journal.
    #[error("uplink bookkeeping out of step: {0}")]
    Desync(#[from] state::Desync),
}

/// A command from the platform, with where to send its result.
#[derive(Debug)]
pub struct IncomingCommand {
    pub request_id: String,
    pub payload: Vec<u8>,
    /// The `cmd_result` JSON payload goes back here.
    pub reply: tokio::sync::oneshot::Sender<Vec<u8>>,
}

/// Everything the uplink task needs.
pub struct UplinkContext {
    pub config: UplinkConfig,
    pub password: Option<Secret>,
    pub site: String,
    pub gateway: String,
    pub journal: Journal,
    pub status: Arc<GatewayStatus>,
    pub commands: mpsc::Sender<IncomingCommand>,
}

/// Run the uplink until shutdown; never returns early. On shutdown it
/// publishes the retained `status` offline (`reason: shutdown`) and
/// disconnects.
pub async fn run(ctx: UplinkContext, shutdown: CancellationToken) {
    task::run(ctx, shutdown).await
}
