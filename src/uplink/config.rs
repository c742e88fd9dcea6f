//! Uplink settings (`[uplink]`): the central platform's MQTT broker.

use crate::config::secret::SecretSource;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Connection to the central platform.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UplinkConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port (default 1883, or 8883 with `[uplink.tls]`).
    #[serde(default)]
    pub port: Option<u16>,
    /// MQTT client id (default: `{site}-{gateway}`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// MQTT user name.
    #[serde(default)]
    pub username: Option<String>,
    /// MQTT password, from a file or an environment variable (never inline).
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// TLS to the broker (rustls). Absent: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// MQTT keepalive, in seconds. The broker fires the gateway's last will
    /// about 1.5 × keepalive after traffic stops: keep it ≤ 8 s so the
    /// platform sees a dead link within 20 s (EN 50136-1 SP6).
    #[serde(
        rename = "keepalive_s",
        with = "crate::config::duration",
        default = "default_keepalive"
    )]
    pub keepalive: Duration,
    /// Heartbeat period, in seconds.
    #[serde(
        rename = "heartbeat_s",
        with = "crate::config::duration",
        default = "default_heartbeat"
    )]
    pub heartbeat: Duration,
    /// Remove events from the journal only on the platform's `events_ack`
    /// (`{"upto_seq": N}`) instead of the broker's PUBACK.
    #[serde(default)]
    pub end_to_end_ack: bool,
    /// With `end_to_end_ack`: events published but not confirmed within this
    /// many seconds are published again (same id and seq).
    #[serde(
        rename = "ack_timeout_s",
        with = "crate::config::duration",
        default = "default_ack_timeout"
    )]
    pub ack_timeout: Duration,
    /// Events published but not yet acknowledged, at most (the in-flight
    /// window). With `end_to_end_ack` an event stays in the window until the
    /// platform's receipt, so size it for the platform's receipt cadence.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// QoS of telemetry messages: 0 or 1.
    #[serde(default)]
    pub telemetry_qos: u8,
    /// First wait before reconnecting, in seconds; doubles up to `reconnect_max_s`, with jitter.
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
}

/// TLS settings (`[uplink.tls]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) that signed the broker's certificate.
    /// Like every path in the file, a relative path is relative to the
    /// directory of the configuration file.
    pub ca_file: PathBuf,
    /// PEM client certificate (mutual TLS), with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Make relative file paths relative to `base` (the configuration
    /// file's directory).
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        crate::config::relative_to(&mut self.ca_file, base);
        for p in [&mut self.cert_file, &mut self.key_file]
            .into_iter()
            .flatten()
        {
            crate::config::relative_to(p, base);
        }
    }
}

impl UplinkConfig {
    pub fn port(&self) -> u16 {
        self.port
            .unwrap_or(if self.tls.is_some() { 8883 } else { 1883 })
    }
}

fn default_keepalive() -> Duration {
    Duration::from_secs(5)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(15)
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_inflight() -> u16 {
    64
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(500)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}
