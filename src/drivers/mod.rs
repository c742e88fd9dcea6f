//! Field drivers: each protocol is one module whose task turns device
//! traffic into [`crate::point::BusMessage`]s and never dies.
//!
//! The device model shared by all drivers ([`DeviceConfig`], [`PointConfig`])
//! lives here; protocol settings sit in each driver's own `config.rs`.

pub mod gpio;
pub mod modbus;
pub mod mqtt;
pub mod write;

use crate::event::Category;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// One field device: a panel, controller or HVAC unit (`[[devices]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// Unique id, `[a-z0-9-]{1,64}`; used in topics, event sources and alarm keys.
    pub id: String,
    /// Human-readable name shown to guards and technicians.
    #[serde(default)]
    pub name: Option<String>,
    /// Default zone of the device's points and alarms (e.g. `villa-12`,
    /// `perimeter-north`).
    #[serde(default)]
    pub zone: Option<String>,
    /// Default category of the device's alarms and of its communication-loss
    /// events: `fire`, `intrusion`, `perimeter`, `access`, `hvac`, `video`, `system`.
    #[serde(default = "default_category")]
    pub category: Category,
    /// Life-safety device (fire panel, panic buttons): losing communication
    /// with it raises a priority-1 alarm, not only a `device.offline` event.
    #[serde(default)]
    pub life_safety: bool,
    /// Set `false` to keep the device in the config without polling it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Time between the starts of two polls, in seconds.
    #[serde(
        rename = "poll_interval_s",
        with = "crate::config::duration",
        default = "default_poll"
    )]
    pub poll_interval: Duration,
    /// Time allowed for one request's reply, in seconds. A request that times
    /// out drops the connection (a late reply would be taken for the next one).
    #[serde(
        rename = "timeout_s",
        with = "crate::config::duration",
        default = "default_timeout"
    )]
    pub timeout: Duration,
    /// Consecutive failed polls after which the device is reported offline
    /// (`device.offline`, points' quality `bad`).
    #[serde(default = "default_offline_after")]
    pub offline_after: u32,
    /// Modbus settings (TCP endpoint or RS-485 bus and unit id).
    #[serde(default)]
    pub modbus: Option<modbus::ModbusDeviceConfig>,
    /// MQTT settings (topics, liveness, command topic). A device has exactly
    /// one of `modbus` or `mqtt`.
    #[serde(default)]
    pub mqtt: Option<mqtt::MqttDeviceConfig>,
    /// The Raspberry Pi's own pins (inputs and outputs of this device).
    #[serde(default)]
    pub gpio: Option<gpio::GpioDeviceConfig>,
    /// Id of a `[[profiles]]` entry whose points this device has (before
    /// its own `points`): identical devices share one point list.
    #[serde(default)]
    pub profile: Option<String>,
    /// The device's points (after loading: the profile's, then its own).
    /// Shared: a profile's points are one allocation for all its devices.
    #[serde(default)]
    pub points: Vec<Arc<PointConfig>>,
}

/// A device profile (`[[profiles]]`): the point list of a device model,
/// shared by every device that names it in `profile`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileConfig {
    /// Profile id, `[a-z0-9-]{1,64}`, referenced by devices' `profile`.
    pub id: String,
    /// Human-readable name (e.g. the device model).
    #[serde(default)]
    pub name: Option<String>,
    /// The model's points, exactly as in `[[devices.points]]`.
    #[serde(default)]
    pub points: Vec<Arc<PointConfig>>,
}

fn yes() -> bool {
    true
}
fn default_category() -> Category {
    Category::System
}
fn default_poll() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_offline_after() -> u32 {
    3
}

/// Where a Modbus point lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    /// Read/write bits (function codes 1, 5, 15).
    Coil,
    /// Read-only bits (function code 2).
    DiscreteInput,
    /// Read/write 16-bit registers (function codes 3, 6, 16).
    Holding,
    /// Read-only 16-bit registers (function code 4).
    Input,
}

impl RegisterKind {
    pub fn is_bit(&self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::DiscreteInput)
    }
}

/// How raw data decodes into a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PointType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl PointType {
    /// Registers occupied by one value of this type.
    pub fn registers(&self) -> u16 {
        match self {
            PointType::Bool | PointType::U16 | PointType::I16 => 1,
            PointType::U32 | PointType::I32 | PointType::F32 => 2,
        }
    }

    /// The raw values an integer type can hold (`None` for `bool`, `f32`).
    pub fn int_range(&self) -> Option<(i64, i64)> {
        match self {
            PointType::U16 => Some((0, u16::MAX.into())),
            PointType::I16 => Some((i16::MIN.into(), i16::MAX.into())),
            PointType::U32 => Some((0, u32::MAX.into())),
            PointType::I32 => Some((i32::MIN.into(), i32::MAX.into())),
            PointType::Bool | PointType::F32 => None,
        }
    }
}

/// Byte or word order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Most significant first (Modbus standard).
    #[default]
    Big,
    /// Least significant first.
    Little,
}

/// One point of a device (`[[devices.points]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointConfig {
    /// Id unique within the device, `[a-z0-9-]{1,64}`.
    pub id: String,
    /// Human-readable name.
    #[serde(default)]
    pub name: Option<String>,
    /// Modbus table: `coil`, `discrete_input`, `holding`, `input`.
    #[serde(default)]
    pub register: Option<RegisterKind>,
    /// Modbus address, 0-based (register 40001 is `holding`, address 0).
    #[serde(default)]
    pub address: Option<u16>,
    /// Value type: `bool`, `u16`, `i16`, `u32`, `i32`, `f32`. Coils and
    /// discrete inputs are `bool`; a `bool` on a register needs `bit`.
    #[serde(rename = "type", default = "default_type")]
    pub kind: PointType,
    /// For `bool` points on a register: bit number 0 (least significant) … 15.
    #[serde(default)]
    pub bit: Option<u8>,
    /// Byte order within each 16-bit register. Default `big`; absent and
    /// given are told apart (an MQTT point must not give it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byte_order: Option<Order>,
    /// Order of the two registers of a 32-bit value (`big`: high word
    /// first). Default `big`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub word_order: Option<Order>,
    /// Engineering value = raw × scale + offset (numeric types only).
    #[serde(default = "one")]
    pub scale: f64,
    /// See `scale`.
    #[serde(default)]
    pub offset: f64,
    /// Engineering unit shown with the value (e.g. `°C`, `kV`).
    #[serde(default)]
    pub unit: Option<String>,
    /// Telemetry deadband: a value is reported when it moves more than this
    /// from the last reported one (default: `[telemetry] deadband`).
    #[serde(default)]
    pub deadband: Option<f64>,
    /// Zone of this point (overrides the device's zone).
    #[serde(default)]
    pub zone: Option<String>,
    /// Set `false` to keep the point out of telemetry (alarms still apply).
    #[serde(default = "yes")]
    pub telemetry: bool,
    /// May commands write this point (issue `write_point`)? Default `false`.
    #[serde(default)]
    pub writable: bool,
    /// MQTT devices only: where the value comes from (topic, payload path)
    /// and where writes go. Modbus keys (`register`, `address`, `bit`,
    /// byte and word order) do not apply to MQTT points.
    #[serde(default)]
    pub mqtt: Option<mqtt::MqttPointConfig>,
}

fn default_type() -> PointType {
    PointType::Bool
}
fn one() -> f64 {
    1.0
}

#[cfg(test)]
impl PointConfig {
    /// A Modbus point with defaults, for tests.
    pub(crate) fn modbus(register: RegisterKind, address: u16, kind: PointType) -> PointConfig {
        PointConfig {
            id: "p".into(),
            name: None,
            register: Some(register),
            address: Some(address),
            kind,
            bit: None,
            byte_order: None,
            word_order: None,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            deadband: None,
            zone: None,
            telemetry: true,
            writable: false,
            mqtt: None,
        }
    }
}

/// Hand `m` to the bus, waiting while it is full (alarms are not dropped
/// while the gateway runs), unless `stop` is cancelled meanwhile: a driver
/// told to stop must end even when no alarm task takes from the bus (a
/// reload switching), so its message is then dropped, logged. False when
/// the message was not sent (the bus closed or the driver stops).
pub async fn send_or_stop(
    bus: &tokio::sync::mpsc::Sender<crate::point::BusMessage>,
    m: crate::point::BusMessage,
    stop: &tokio_util::sync::CancellationToken,
) -> bool {
    // Room in the bus (the usual case): no waiting, no shutdown future.
    let m = match bus.try_send(m) {
        Ok(()) => return true,
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return false,
        Err(tokio::sync::mpsc::error::TrySendError::Full(m)) => m,
    };
    tokio::select! {
        biased;
        r = bus.send(m) => r.is_ok(),
        _ = stop.cancelled() => {
            tracing::warn!("driver stopping with the bus full: a message was not handed over");
            false
        }
    }
}
