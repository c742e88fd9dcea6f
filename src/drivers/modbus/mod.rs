//! Modbus TCP and RTU polling.
//!
//! - [`decode`]: raw words/bits → values (pure).
//! - [`plan`]: a device's points coalesced into the fewest reads (pure).
//! - [`health`]: offline counting, log-once, backoff (pure).
//! - [`transport`]: the hardware traits and their TCP and serial implementations,
//!   framed by [`mbap`] (TCP) and [`rtu`] (RS-485).
//! - [`endpoint`]: the task that polls every device behind one TCP
//!   `host:port` or one RS-485 bus over a single shared link.
//!
//! [`spawn`] starts one task per TCP endpoint and one per serial bus. Every
//! successful device poll becomes one [`BusMessage::Readings`] (of the
//! points of the requests whose replies changed), or, when every reply is
//! bit-identical to the previous poll's, one [`BusMessage::Confirmed`] of
//! the same values, not decoded again (see [`endpoint`]); a device going
//! offline or coming back becomes a
//! [`BusMessage::DeviceStatus`].
//!
//! Writes: [`spawn_with_writers`] gives every endpoint task a queue and
//! registers it in [`Writers`] for each device the task serves; the task runs
//! writes between polls (see [`endpoint`]). Only points with
//! `writable = true` on a coil or holding register accept writes.
//!
//! "Read now" probes ([`probe`]): [`spawn_probed`] also gives every endpoint
//! task a probe queue, registered in [`probe::Probers`] per device; probes
//! run between polls like writes.

mod config;
pub mod decode;
pub mod endpoint;
pub mod health;
pub mod mbap;
pub mod plan;
pub mod probe;
pub mod rtu;
#[cfg(test)]
mod tests;
pub mod transport;

pub use config::{ModbusDeviceConfig, Parity, SerialBusConfig};

use crate::config::LoadedConfig;
use crate::drivers::write::{WriteRequest, Writers};
use crate::drivers::{PointConfig, RegisterKind};
use crate::point::{BusMessage, PointIndex};
use crate::status::GatewayStatus;
use endpoint::{DevicePoller, Endpoint, LinkKind, WriteTarget};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};
use transport::{RtuConnector, TcpConnector};

/// Period an endpoint task registers its heartbeat with; each iteration
/// then says when its next one is due (the wait for the next poll plus the
/// poll's own budget).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Writes waiting per endpoint task; more wait in the caller's `send`.
const WRITE_QUEUE: usize = 32;

/// Most Modbus devices whose polls start at the same moment. More devices
/// start theirs in as many rounds as needed, spread evenly over the poll
/// interval (see [`round_offset`]).
const DEVICES_PER_ROUND: usize = 20;

/// When the `k`th of `n` Modbus devices (configuration order, from 0)
/// starts polling, after the tasks start: at once for up to
/// [`DEVICES_PER_ROUND`] devices; beyond that the devices take turns over
/// `ceil(n / DEVICES_PER_ROUND)` rounds, each a fraction of `interval`
/// later than the one before.
///
/// Polls that start together are answered together, and the gateway
/// handles a round of replies in a few wake-ups: cheap on the CPU. But
/// the alarms a round finds are made durable one group commit after
/// another while the round's replies come in, so the last waits for the
/// commits before it. Rounds of at most 20 devices keep that wait short
/// (a few alarms a round, not dozens) for a few more wake-ups a second.
fn round_offset(k: usize, n: usize, interval: Duration) -> Duration {
    let rounds = n.div_ceil(DEVICES_PER_ROUND).max(1);
    interval * (k % rounds) as u32 / rounds as u32
}

/// Start one task per TCP endpoint and one per serial bus. Must be called
/// inside a tokio runtime. Disabled devices and devices without points are
/// skipped; a device whose reads cannot be planned is logged and skipped.
/// The tasks take no writes (see [`spawn_with_writers`]).
pub fn spawn(
    cfg: &LoadedConfig,
    bus: mpsc::Sender<BusMessage>,
    shutdown: CancellationToken,
) -> Vec<JoinHandle<()>> {
    spawn_full(cfg, bus, shutdown, None, &mut Writers::new())
}

/// [`spawn`], and register each polled device's write queue in `writers`.
pub fn spawn_with_writers(
    cfg: &LoadedConfig,
    bus: mpsc::Sender<BusMessage>,
    shutdown: CancellationToken,
    writers: &mut Writers,
) -> Vec<JoinHandle<()>> {
    spawn_full(cfg, bus, shutdown, None, writers)
}

/// [`spawn`], each endpoint task beating a heartbeat in `status`'s liveness
/// registry (`modbus <endpoint>`) and counting every device's polls.
pub fn spawn_observed(
    cfg: &LoadedConfig,
    bus: mpsc::Sender<BusMessage>,
    shutdown: CancellationToken,
    status: Option<&GatewayStatus>,
) -> Vec<JoinHandle<()>> {
    spawn_full(cfg, bus, shutdown, status, &mut Writers::new())
}

/// Start the Modbus tasks: heartbeats and poll counters in `status` (when
/// given), and each polled device's write queue registered in `writers`.
pub fn spawn_full(
    cfg: &LoadedConfig,
    bus: mpsc::Sender<BusMessage>,
    shutdown: CancellationToken,
    status: Option<&GatewayStatus>,
    writers: &mut Writers,
) -> Vec<JoinHandle<()>> {
    spawn_probed(
        cfg,
        bus,
        shutdown,
        status,
        writers,
        &mut probe::Probers::new(),
    )
}

/// [`spawn_full`], and register each polled device's probe queue in `probers`.
pub fn spawn_probed(
    cfg: &LoadedConfig,
    bus: mpsc::Sender<BusMessage>,
    shutdown: CancellationToken,
    status: Option<&GatewayStatus>,
    writers: &mut Writers,
    probers: &mut probe::Probers,
) -> Vec<JoinHandle<()>> {
    spawn_where(cfg, bus, shutdown, status, writers, probers, &|_| true)
}

/// A Modbus link: one TCP endpoint or one serial bus (one task each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link<'a> {
    Tcp { host: &'a str, port: u16 },
    Rtu { bus: &'a str },
}

/// [`spawn_probed`] for the one task of `link` (a configuration reload
/// restarts links one by one). No task when the link has no device to poll.
pub fn spawn_link(
    cfg: &LoadedConfig,
    link: Link<'_>,
    bus: mpsc::Sender<BusMessage>,
    shutdown: CancellationToken,
    status: Option<&GatewayStatus>,
    writers: &mut Writers,
    probers: &mut probe::Probers,
) -> Vec<JoinHandle<()>> {
    spawn_where(cfg, bus, shutdown, status, writers, probers, &|l| l == link)
}

#[allow(clippy::too_many_arguments)]
fn spawn_where(
    cfg: &LoadedConfig,
    bus: mpsc::Sender<BusMessage>,
    shutdown: CancellationToken,
    status: Option<&GatewayStatus>,
    writers: &mut Writers,
    probers: &mut probe::Probers,
    only: &dyn Fn(Link<'_>) -> bool,
) -> Vec<JoinHandle<()>> {
    let Pollers { tcp, rtu } = pollers(cfg, status, only, Instant::now());
    let mut handles = Vec::new();
    for ((host, port), devices) in tcp {
        let rx = register_writes(&devices, writers);
        let probes = register_probes(&devices, probers);
        let mut ep = Endpoint::new(
            TcpConnector::new(&host, port),
            LinkKind::Tcp,
            devices,
            bus.clone(),
        )
        .with_writes(rx)
        .with_probes(probes);
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
        let rx = register_writes(&devices, writers);
        let probes = register_probes(&devices, probers);
        let mut ep = Endpoint::new(RtuConnector::new(line.clone()), kind, devices, bus.clone())
            .with_writes(rx)
            .with_probes(probes);
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

/// The polled Modbus devices, by TCP endpoint and by serial bus.
struct Pollers {
    tcp: BTreeMap<(String, u16), Vec<DevicePoller>>,
    rtu: BTreeMap<String, Vec<DevicePoller>>,
}

/// Every Modbus device of `cfg` on a link `only` takes, with its read plan,
/// its writable points and its first poll at `start` plus its
/// [`round_offset`] (counted over all the configuration's Modbus devices,
/// so a link restarted alone keeps its devices' rounds). Disabled
/// devices, devices without points and devices whose reads cannot be
/// planned are logged and left out.
fn pollers(
    cfg: &LoadedConfig,
    status: Option<&GatewayStatus>,
    only: &dyn Fn(Link<'_>) -> bool,
    start: Instant,
) -> Pollers {
    let modbus_count = cfg
        .config
        .devices
        .iter()
        .filter(|d| d.modbus.is_some())
        .count();
    let mut modbus_k = 0;
    let mut tcp: BTreeMap<(String, u16), Vec<DevicePoller>> = BTreeMap::new();
    let mut rtu: BTreeMap<String, Vec<DevicePoller>> = BTreeMap::new();
    for (di, d) in cfg.config.devices.iter().enumerate() {
        let Some(m) = &d.modbus else { continue };
        let round = round_offset(modbus_k, modbus_count, d.poll_interval);
        modbus_k += 1;
        let link = match (&m.host, &m.bus) {
            (Some(host), _) => Some(Link::Tcp { host, port: m.port }),
            (None, Some(bus)) => Some(Link::Rtu { bus }),
            (None, None) => None,
        };
        if link.is_some_and(|l| !only(l)) {
            continue;
        }
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
        let writable: HashMap<PointIndex, WriteTarget> = points
            .iter()
            .filter(|(i, _)| cfg.points.get(*i).writable)
            .filter_map(|(i, p)| match (p.register, p.address) {
                (Some(table @ (RegisterKind::Coil | RegisterKind::Holding)), Some(address)) => {
                    Some((
                        *i,
                        WriteTarget {
                            table,
                            address,
                            codec: decode::Codec::new(p),
                        },
                    ))
                }
                _ => None,
            })
            .collect();
        let mut poller = DevicePoller::new(
            &d.id,
            m.unit,
            d.poll_interval,
            d.timeout,
            d.offline_after,
            m.backoff_max,
            plan,
            start + round,
        )
        .with_writable(writable);
        poller.counters = status.map(|s| s.polls.device(&poller.id));
        match (&m.host, &m.bus) {
            (Some(host), _) => tcp.entry((host.clone(), m.port)).or_default().push(poller),
            (None, Some(b)) => rtu.entry(b.clone()).or_default().push(poller),
            (None, None) => error!(device = %d.id, "no Modbus host or bus; not polled"),
        }
    }
    Pollers { tcp, rtu }
}

/// One queue for an endpoint task, registered for each of its devices.
fn register_writes(
    devices: &[DevicePoller],
    writers: &mut Writers,
) -> mpsc::Receiver<WriteRequest> {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    for d in devices {
        writers.insert(Arc::clone(&d.id), tx.clone());
    }
    rx
}

/// One probe queue for an endpoint task, registered for each of its devices.
fn register_probes(
    devices: &[DevicePoller],
    probers: &mut probe::Probers,
) -> mpsc::Receiver<probe::ProbeRequest> {
    let (tx, rx) = mpsc::channel(probe::PROBE_QUEUE);
    for d in devices {
        probers.insert(Arc::clone(&d.id), tx.clone());
    }
    rx
}
