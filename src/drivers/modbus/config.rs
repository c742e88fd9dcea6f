//! Modbus settings: RS-485 buses and per-device endpoints.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// An RS-485 line shared by several Modbus RTU slaves (`[[serial_buses]]`).
/// One task polls all slaves on a bus in turn, never concurrently.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SerialBusConfig {
    /// Id referenced by devices' `modbus.bus`.
    pub id: String,
    /// Serial device, e.g. `/dev/ttyUSB0` or `/dev/ttyAMA0`.
    pub path: String,
    /// Baud rate.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Data bits: 7 or 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Parity: `none`, `even`, `odd`.
    #[serde(default)]
    pub parity: Parity,
    /// Stop bits: 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Silence kept between two frames on the line, in seconds. Default:
    /// 3.5 character times at the configured baud rate, at least 1.75 ms.
    #[serde(rename = "inter_frame_s", with = "opt_secs", default)]
    pub inter_frame: Option<Duration>,
}

/// Serial parity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

impl SerialBusConfig {
    /// Bits per character on the line (start + data + parity + stop).
    pub fn bits_per_char(&self) -> u32 {
        1 + self.data_bits as u32 + (self.parity != Parity::None) as u32 + self.stop_bits as u32
    }

    /// The silence between frames: configured, or 3.5 character times (at
    /// least 1.75 ms, the Modbus spec's fixed value above 19200 baud).
    pub fn inter_frame_delay(&self) -> Duration {
        if let Some(d) = self.inter_frame {
            return d;
        }
        let char_s = self.bits_per_char() as f64 / self.baud.max(1) as f64;
        Duration::from_secs_f64((3.5 * char_s).max(0.00175))
    }
}

/// A device's Modbus endpoint (`[devices.modbus]`): either `host` (TCP) or
/// `bus` (RTU on a `[[serial_buses]]` line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModbusDeviceConfig {
    /// Modbus TCP: host name or IP address of the device or gateway.
    #[serde(default)]
    pub host: Option<String>,
    /// Modbus TCP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Modbus RTU: id of the `[[serial_buses]]` line the slave is on.
    #[serde(default)]
    pub bus: Option<String>,
    /// Unit (slave) id, 0–247. Over TCP usually 1, or 255 for a device
    /// without a serial side.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Largest gap of unused registers a single read may span to avoid
    /// another request.
    #[serde(default = "default_gap_registers")]
    pub max_gap_registers: u16,
    /// Largest gap of unused bits (coils, discrete inputs) a single read may span.
    #[serde(default = "default_gap_bits")]
    pub max_gap_bits: u16,
    /// Most registers per read request (the protocol allows 125).
    #[serde(default = "default_max_registers")]
    pub max_registers_per_read: u16,
    /// Most bits per read request (the protocol allows 2000).
    #[serde(default = "default_max_bits")]
    pub max_bits_per_read: u16,
    /// Longest wait between reconnect attempts (or, on a serial bus, between
    /// polls of a dead slave), in seconds. Backoff doubles from the poll
    /// interval up to this, with jitter.
    #[serde(
        rename = "backoff_max_s",
        with = "crate::config::duration",
        default = "default_backoff"
    )]
    pub backoff_max: Duration,
}

fn default_port() -> u16 {
    502
}
fn default_unit() -> u8 {
    1
}
fn default_gap_registers() -> u16 {
    10
}
fn default_gap_bits() -> u16 {
    64
}
fn default_max_registers() -> u16 {
    125
}
fn default_max_bits() -> u16 {
    2000
}
fn default_backoff() -> Duration {
    Duration::from_secs(30)
}

/// Optional durations in seconds.
mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let secs = f64::deserialize(d)?;
        if !secs.is_finite() || !(0.0..=60.0).contains(&secs) {
            return Err(serde::de::Error::custom(format!(
                "expected seconds between 0 and 60, got {secs}"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inter_frame_delay() {
        let mut bus = SerialBusConfig {
            id: "b".into(),
            path: "/dev/null".into(),
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            inter_frame: None,
        };
        // 10 bits/char at 9600 baud: 3.5 chars = 3.646 ms.
        let d = bus.inter_frame_delay().as_secs_f64();
        assert!((d - 0.003646).abs() < 1e-5, "{d}");
        bus.baud = 115_200;
        assert_eq!(bus.inter_frame_delay(), Duration::from_micros(1750));
        bus.inter_frame = Some(Duration::from_millis(5));
        assert_eq!(bus.inter_frame_delay(), Duration::from_millis(5));
    }
}
