//! Modbus TCP and RTU polling.
//!
//! - [`decode`]: raw words/bits → values (pure).
//! - [`plan`]: a device's points coalesced into the fewest reads (pure).
//! - [`health`]: offline counting, log-once, backoff (pure).
//! - [`transport`]: the hardware traits and their tokio-modbus implementations.
//! - [`endpoint`]: the task that polls every device behind one TCP
//!   `host:port` or one RS-485 bus over a single shared link.
//!
//! [`spawn`] starts one task per TCP endpoint and one per serial bus. Every
//! successful device poll becomes one [`BusMessage::Readings`]; a device
//! going offline or coming back becomes a [`BusMessage::DeviceStatus`].
//!
//! Writes (commands) are not wired yet. They belong in the endpoint task, the
//! only owner of the link: give [`endpoint::Endpoint`] an
//! `mpsc::Receiver<WriteRequest>` (point, value, `oneshot` reply), select on
//! it next to the poll timer in `run`, and execute a write between two polls
//! under the same timeout, drop-on-timeout and inter-frame rules;
//! [`decode::Codec::encode_registers`] already turns a value into registers,
//! and the [`transport::Transport`] trait gains `write_coil` /
//! `write_registers`. `spawn` would then return the senders keyed by device.

mod config;
pub mod decode;
pub mod endpoint;
pub mod health;
pub mod plan;
#[cfg(test)]
mod tests;
pub mod transport;

pub use config::{ModbusDeviceConfig, Parity, SerialBusConfig};

use crate::config::LoadedConfig;
use crate::drivers::PointConfig;
use crate::point::{BusMessage, PointIndex};
use crate::status::GatewayStatus;
use endpoint::{DevicePoller, Endpoint, LinkKind};
use std::collections::BTreeMap;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};
use transport::{RtuConnector, TcpConnector};

/// Period an endpoint task registers its heartbeat with; each iteration
/// then says when its next one is due (the wait for the next poll plus the
/// poll's own budget).
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// Start one task per TCP endpoint and one per serial bus. Must be called
/// inside a tokio runtime. Disabled devices and devices without points are
/// skipped; a device whose reads cannot be planned is logged and skipped.
pub fn spawn(
    cfg: &LoadedConfig,
    bus: mpsc::Sender<BusMessage>,
    shutdown: CancellationToken,
) -> Vec<JoinHandle<()>> {
    spawn_observed(cfg, bus, shutdown, None)
}

/// [`spawn`], each endpoint task beating a heartbeat in `status`'s liveness
/// registry (`modbus <endpoint>`) and counting every device's polls.
pub fn spawn_observed(
    cfg: &LoadedConfig,
    bus: mpsc::Sender<BusMessage>,
    shutdown: CancellationToken,
    status: Option<&GatewayStatus>,
) -> Vec<JoinHandle<()>> {
    let start = Instant::now();
    let mut tcp: BTreeMap<(String, u16), Vec<DevicePoller>> = BTreeMap::new();
    let mut rtu: BTreeMap<String, Vec<DevicePoller>> = BTreeMap::new();
    for (di, d) in cfg.config.devices.iter().enumerate() {
        let Some(m) = &d.modbus else { continue };
        if !d.enabled {
            info!(device = %d.id, "device disabled; not polled");
            continue;
        }
        let points: Vec<(PointIndex, &PointConfig)> = cfg
            .points
            .iter()
            .filter(|(_, p)| p.device_index == di)
            .map(|(i, p)| (i, cfg.point_config(p)))
            .collect();
        if points.is_empty() {
            info!(device = %d.id, "device has no points; not polled");
            continue;
        }
        let plan = match plan::plan(&points, plan::Limits::from_config(m)) {
            Ok(p) => p,
            Err(e) => {
                error!(device = %d.id, error = %e, "cannot plan the device's reads; not polled");
                continue;
            }
        };
        debug!(device = %d.id, requests = plan.requests.len(), points = points.len(), "read plan");
        let mut poller = DevicePoller::new(
            &d.id,
            m.unit,
            d.poll_interval,
            d.timeout,
            d.offline_after,
            m.backoff_max,
            plan,
            start,
        );
        poller.counters = status.map(|s| s.polls.device(&poller.id));
        match (&m.host, &m.bus) {
            (Some(host), _) => tcp.entry((host.clone(), m.port)).or_default().push(poller),
            (None, Some(b)) => rtu.entry(b.clone()).or_default().push(poller),
            (None, None) => error!(device = %d.id, "no Modbus host or bus; not polled"),
        }
    }

    let mut handles = Vec::new();
    for ((host, port), devices) in tcp {
        let mut ep = Endpoint::new(
            TcpConnector::new(&host, port),
            LinkKind::Tcp,
            devices,
            bus.clone(),
        );
        if let Some(s) = status {
            ep = ep.with_heartbeat(
                s.liveness
                    .register(format!("modbus tcp:{host}:{port}"), HEARTBEAT),
            );
        }
        handles.push(tokio::spawn(ep.run(shutdown.clone())));
    }
    for (bus_id, devices) in rtu {
        let Some(line) = cfg.config.serial_buses.iter().find(|b| b.id == bus_id) else {
            error!(bus = %bus_id, "no [[serial_buses]] with this id; its devices are not polled");
            continue;
        };
        let kind = LinkKind::Serial {
            inter_frame: line.inter_frame_delay(),
        };
        let mut ep = Endpoint::new(RtuConnector::new(line.clone()), kind, devices, bus.clone());
        if let Some(s) = status {
            ep = ep.with_heartbeat(
                s.liveness
                    .register(format!("modbus rtu:{bus_id}"), HEARTBEAT),
            );
        }
        handles.push(tokio::spawn(ep.run(shutdown.clone())));
    }
    handles
}
