//! MQTT device settings: the site broker (`[site_broker]`, optionally
//! embedded), per device (`[devices.mqtt]`) and per point
//! (`[devices.points.mqtt]`).

use crate::config::secret::SecretSource;
use crate::uplink::TlsConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// The site's MQTT broker that field devices publish to (`[site_broker]`):
/// either an existing broker (`host`) or one the gateway runs itself
/// (`[site_broker.embedded]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteBrokerConfig {
    /// Host name or address of an existing site broker. Leave out with
    /// `[site_broker.embedded]`.
    #[serde(default)]
    pub host: Option<String>,
    /// Broker port (default 1883, or 8883 with `[site_broker.tls]`).
    #[serde(default)]
    pub port: Option<u16>,
    /// MQTT client id (default: `{site}-{gateway}-devices`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// MQTT user name.
    #[serde(default)]
    pub username: Option<String>,
    /// MQTT password, from a file or an environment variable (never inline).
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// TLS to the broker (rustls), as `[uplink.tls]`. Absent: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// MQTT keepalive, in seconds.
    #[serde(
        rename = "keepalive_s",
        with = "crate::config::duration",
        default = "default_keepalive"
    )]
    pub keepalive: Duration,
    /// First wait before reconnecting, in seconds; doubles up to
    /// `reconnect_max_s`, with jitter.
    #[serde(
        rename = "reconnect_min_s",
        with = "crate::config::duration",
        default = "default_reconnect_min"
    )]
    pub reconnect_min: Duration,
    /// Longest wait between reconnect attempts, in seconds.
    #[serde(
        rename = "reconnect_max_s",
        with = "crate::config::duration",
        default = "default_reconnect_max"
    )]
    pub reconnect_max: Duration,
    /// QoS of the subscriptions to device topics: 0 or 1.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Run the site broker inside the gateway (rumqttd); the driver then
    /// connects to it over loopback.
    #[serde(default)]
    pub embedded: Option<EmbeddedBrokerConfig>,
}

impl SiteBrokerConfig {
    /// The port to connect to (an existing broker).
    pub fn port(&self) -> u16 {
        self.port
            .unwrap_or(if self.tls.is_some() { 8883 } else { 1883 })
    }
}

/// The embedded site broker (`[site_broker.embedded]`), MQTT 3.1.1, plain TCP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbeddedBrokerConfig {
    /// Address and port to listen on. Default `127.0.0.1:1883` (loopback
    /// only). Any other address (the site LAN, `0.0.0.0`) requires `users`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Accounts field devices log in with. When set, every client must log
    /// in with one of them (the gateway's own client gets a generated
    /// account).
    #[serde(default)]
    pub users: Vec<BrokerUser>,
    /// Most simultaneous client connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest accepted message payload, in bytes.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
}

/// One account of the embedded broker (`[[site_broker.embedded.users]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BrokerUser {
    /// MQTT user name.
    pub username: String,
    /// Its password, from a file or an environment variable.
    pub password: SecretSource,
}

/// A device's MQTT settings (`[devices.mqtt]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MqttDeviceConfig {
    /// Topic the points' `topic` suffixes are appended to (with a `/`),
    /// e.g. `fence/north`.
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// Topic of the device's status or last will (full topic), e.g.
    /// `fence/north/status`.
    #[serde(default)]
    pub status_topic: Option<String>,
    /// Where the status is inside a JSON status payload: a JSON Pointer
    /// (`/state`) or a dotted path (`state`). Absent: the whole payload.
    #[serde(default)]
    pub status_path: Option<String>,
    /// Status value meaning online (compared without case).
    #[serde(default = "default_online")]
    pub online_value: String,
    /// Status value meaning offline (compared without case), usually the
    /// device's last will.
    #[serde(default = "default_offline")]
    pub offline_value: String,
    /// The device is reported offline after this many seconds without any
    /// message from it. Absent: only the status topic decides.
    #[serde(
        rename = "silence_timeout_s",
        with = "opt_secs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub silence_timeout: Option<Duration>,
    /// Topic template for writes; `{device}` and `{point}` are replaced,
    /// e.g. `fence/north/set/{point}`. Needed for writable points without
    /// their own `command_topic`.
    #[serde(default)]
    pub command_topic: Option<String>,
    /// Payload written for `true` to a bool point.
    #[serde(default = "default_true")]
    pub payload_true: String,
    /// Payload written for `false` to a bool point.
    #[serde(default = "default_false")]
    pub payload_false: String,
}

/// A point's MQTT settings (`[devices.points.mqtt]`): set exactly one of
/// `topic` or `filter`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MqttPointConfig {
    /// Topic relative to the device's `topic_prefix` (e.g. `state`).
    #[serde(default)]
    pub topic: Option<String>,
    /// Full topic filter; `+` and `#` wildcards allowed.
    #[serde(default)]
    pub filter: Option<String>,
    /// Where the value is in a JSON payload: a JSON Pointer (`/zones/0/alarm`)
    /// or a dotted path (`zones.0.alarm`). Absent: the whole payload is the
    /// value (a number, `true/false`, `ON/OFF`, `1/0`).
    #[serde(default)]
    pub path: Option<String>,
    /// Topic template for writes to this point (overrides the device's).
    #[serde(default)]
    pub command_topic: Option<String>,
}

fn default_keepalive() -> Duration {
    Duration::from_secs(5)
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(500)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}
fn default_max_connections() -> usize {
    256
}
fn default_max_payload() -> usize {
    64 * 1024
}
fn default_online() -> String {
    "online".into()
}
fn default_offline() -> String {
    "offline".into()
}
fn default_true() -> String {
    "true".into()
}
fn default_false() -> String {
    "false".into()
}
fn default_qos() -> u8 {
    1
}

/// Optional durations in seconds.
mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let secs = f64::deserialize(d)?;
        if !secs.is_finite() || !(0.01..=86_400.0).contains(&secs) {
            return Err(serde::de::Error::custom(format!(
                "expected seconds between 0.01 and 86400, got {secs}"
            )));
        }
        Ok(Some(Duration::from_secs_f64(secs)))
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}
