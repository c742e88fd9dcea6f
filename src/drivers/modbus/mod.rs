//! Modbus TCP and RTU polling.
//!
//! TODO(modbus): implementation in progress.

mod config;
pub use config::{ModbusDeviceConfig, Parity, SerialBusConfig};

use crate::config::LoadedConfig;
use crate::point::BusMessage;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Start one task per TCP endpoint and one per serial bus.
pub fn spawn(
    _cfg: &LoadedConfig,
    _bus: mpsc::Sender<BusMessage>,
    _shutdown: CancellationToken,
) -> Vec<JoinHandle<()>> {
    todo!()
}
