//! The uplink to the central platform over MQTT, exactly as
//! `docs/uplink-contract.md` says.
//!
//! TODO(uplink): implementation in progress.

mod config;
pub use config::{TlsConfig, UplinkConfig};

use crate::config::secret::Secret;
use crate::journal::Journal;
use crate::status::GatewayStatus;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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

/// Run the uplink until shutdown; never returns early.
pub async fn run(_ctx: UplinkContext, _shutdown: CancellationToken) {
    todo!()
}
