//! Arming zones and their schedules (`[arming]`, `[[arming.zones]]`).

use serde::{Deserialize, Serialize};

/// Zone arming (`[arming]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmingConfig {
    /// IANA time zone of the schedules (e.g. `Asia/Shanghai`). Default `UTC`.
    #[serde(default = "default_tz")]
    pub time_zone: String,
    /// Zones that can be armed and disarmed (`[[arming.zones]]`). Alarms of
    /// zones not listed here are always raised.
    #[serde(default)]
    pub zones: Vec<ZoneConfig>,
}

impl Default for ArmingConfig {
    fn default() -> Self {
        ArmingConfig {
            time_zone: default_tz(),
            zones: Vec::new(),
        }
    }
}

fn default_tz() -> String {
    "UTC".into()
}

/// One arming zone (`[[arming.zones]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZoneConfig {
    /// The zone id, as in devices', points' and alarm rules' `zone`.
    pub id: String,
    /// Human-readable name.
    #[serde(default)]
    pub name: Option<String>,
    /// State at the very first start (nothing saved yet) of a zone without
    /// a schedule. A zone with a schedule starts as its schedule says.
    #[serde(default)]
    pub armed_at_start: bool,
    /// Weekly windows in which the zone is armed (`[[arming.zones.schedule]]`).
    /// At a window's start the zone is armed, at its end disarmed; an
    /// operator's arm/disarm holds until the next such edge.
    #[serde(default)]
    pub schedule: Vec<WindowConfig>,
}

/// One weekly window (`[[arming.zones.schedule]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowConfig {
    /// Days the window starts on: `mon` … `sun`. Default: every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// Start, local `HH:MM`.
    pub from: String,
    /// End, local `HH:MM`. Not after `from` means the window runs overnight
    /// into the next day (`22:00`–`06:00`); equal to `from`, a whole day.
    pub to: String,
}
