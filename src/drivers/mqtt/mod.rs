//! Field devices that speak MQTT: access-control panels, fence energizers,
//! smart sensors publishing to the site's broker.
//!
//! - [`config`]: `[site_broker]`, `[devices.mqtt]`, `[devices.points.mqtt]`.
//! - [`payload`]: JSON Pointer / dotted path / plain payloads → values, and
//!   values → write payloads; topic filter matching (pure).
//! - [`router`]: topic → points, device liveness from a status (last will)
//!   topic or a silence timeout (pure, clock passed in).
//! - `task`: the one task per broker connection, the only poller of its
//!   rumqttc `EventLoop`; reconnects with backoff and jitter, never dies.
//! - [`embedded`]: the site broker the gateway can run itself (rumqttd).
//!
//! Readings go onto the same bus as Modbus readings
//! ([`BusMessage::Readings`], `replied_at` = when the message arrived), so
//! alarm rules work unchanged; liveness changes are
//! [`BusMessage::DeviceStatus`]. Writes to writable points publish the value
//! (QoS 1) to the device's command topic; the writer is answered after the
//! broker's PUBACK.

pub mod config;
pub mod embedded;
pub mod payload;
pub mod router;
mod task;
mod validate;

pub use config::{
    BrokerUser, EmbeddedBrokerConfig, MqttDeviceConfig, MqttPointConfig, SiteBrokerConfig,
};
pub use validate::{validate, MqttFinding};

use crate::config::secret::SecretError;
use crate::config::LoadedConfig;
use crate::drivers::write::Writers;
use crate::point::BusMessage;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Writes queued for the connection task, at most.
const WRITE_QUEUE: usize = 64;

/// Why the MQTT device driver could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The TLS material in `[site_broker.tls]` cannot be used.
    #[error("site broker TLS: {0}")]
    Tls(String),
    /// A password could not be read (never contains it).
    #[error("{what}: {source}")]
    Secret { what: String, source: SecretError },
    /// The embedded broker did not start.
    #[error("embedded site broker: {0}")]
    Embedded(String),
    /// A point's mapping is unusable (validation normally catches it).
    #[error("MQTT device point {0}")]
    Route(#[from] router::RouteError),
}

/// Start the embedded broker (if configured) and one task for the site
/// broker connection serving every enabled MQTT device; register their
/// writers. Returns no task when there is no MQTT device.
/// Check, without starting anything, what [`spawn`] could fail on: the
/// embedded broker (see [`embedded::check`]) and the site broker password.
/// A reload checks this before it stops the running driver.
pub fn check_start(cfg: &LoadedConfig) -> Result<(), MqttError> {
    let Some(sb) = &cfg.config.site_broker else {
        return Ok(());
    };
    if let Some(e) = &sb.embedded {
        return embedded::check(e);
    }
    let any = cfg
        .config
        .devices
        .iter()
        .any(|d| d.enabled && d.mqtt.is_some());
    if let (true, Some(src)) = (any, &sb.password) {
        src.resolve().map_err(|source| MqttError::Secret {
            what: "site_broker.password".into(),
            source,
        })?;
    }
    Ok(())
}

pub async fn spawn(
    cfg: &Arc<LoadedConfig>,
    bus: mpsc::Sender<BusMessage>,
    shutdown: CancellationToken,
    writers: &mut Writers,
) -> Result<Vec<JoinHandle<()>>, MqttError> {
    let Some(sb) = &cfg.config.site_broker else {
        return Ok(Vec::new());
    };
    let site = &cfg.config.site;
    let embedded = match &sb.embedded {
        Some(e) => Some(embedded::start(e).await?),
        None => None,
    };
    let router = router::Router::build(cfg, std::time::Instant::now())?;
    if router.is_empty() {
        tracing::info!("no enabled MQTT device; site broker not subscribed");
        return Ok(Vec::new());
    }
    let conn = match embedded {
        Some(e) => task::Connection {
            host: e.addr.ip().to_string(),
            port: e.addr.port(),
            client_id: sb
                .client_id
                .clone()
                .unwrap_or_else(|| format!("{}-{}-devices", site.id, site.gateway)),
            username: e.login.as_ref().map(|l| l.0.clone()),
            password: e.login.map(|l| l.1),
            tls: None,
            keepalive: sb.keepalive,
            reconnect_min: sb.reconnect_min,
            reconnect_max: sb.reconnect_max,
            qos: sb.qos,
        },
        None => task::Connection {
            host: sb.host.clone().unwrap_or_default(),
            port: sb.port(),
            client_id: sb
                .client_id
                .clone()
                .unwrap_or_else(|| format!("{}-{}-devices", site.id, site.gateway)),
            username: sb.username.clone(),
            password: match &sb.password {
                Some(src) => Some(src.resolve().map_err(|source| MqttError::Secret {
                    what: "site_broker.password".into(),
                    source,
                })?),
                None => None,
            },
            tls: sb.tls.clone(),
            keepalive: sb.keepalive,
            reconnect_min: sb.reconnect_min,
            reconnect_max: sb.reconnect_max,
            qos: sb.qos,
        },
    };
    let (wtx, wrx) = mpsc::channel(WRITE_QUEUE);
    for d in router.devices() {
        writers.insert(d.id.clone(), wtx.clone());
    }
    let span = tracing::info_span!("site_broker", host = %conn.host, port = conn.port);
    let handle =
        tokio::spawn(task::run(cfg.clone(), conn, router, bus, wrx, shutdown).instrument(span));
    Ok(vec![handle])
}

#[cfg(test)]
mod tests;
