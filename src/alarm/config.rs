//! Alarm rules (`[[alarms]]`).

use crate::event::{Category, Priority};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One alarm rule on one point. Exactly one of `equals`, `high`, `low`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmRuleConfig {
    /// The watched point, `device/point`.
    pub point: String,
    /// Rule id, needed only when a point has several rules; the alarm key is
    /// then `device/point/id` (otherwise `device/point`).
    #[serde(default)]
    pub id: Option<String>,
    /// State rule: raise while the value equals this (`true`, `false` or a
    /// number, e.g. a panel status code).
    #[serde(default)]
    pub equals: Option<toml::Value>,
    /// High threshold: raise while value > `high`; clear when it falls
    /// below `high - hysteresis`.
    #[serde(default)]
    pub high: Option<f64>,
    /// Low threshold: raise while value < `low`; clear when it rises above
    /// `low + hysteresis`.
    #[serde(default)]
    pub low: Option<f64>,
    /// Hysteresis (dead band) of a threshold rule, in the point's unit.
    #[serde(default)]
    pub hysteresis: f64,
    /// On-delay (debounce): the condition must hold this long, in seconds,
    /// before the alarm is raised.
    #[serde(rename = "on_delay_s", with = "crate::config::duration", default)]
    pub on_delay: Duration,
    /// Off-delay: the condition must be gone this long, in seconds, before
    /// the alarm returns to normal.
    #[serde(rename = "off_delay_s", with = "crate::config::duration", default)]
    pub off_delay: Duration,
    /// 1 (life safety) … 5 (information).
    pub priority: Priority,
    /// Category (default: the device's).
    #[serde(default)]
    pub category: Option<Category>,
    /// Zone (default: the point's, then the device's).
    #[serde(default)]
    pub zone: Option<String>,
    /// Message shown to guards and sent to the platform.
    pub message: String,
    /// Latching: once raised, the alarm stays active until acknowledged,
    /// even if the condition clears. Default: `true` for `fire`, else `false`.
    #[serde(default)]
    pub latching: Option<bool>,
    /// What happens when the rule's zone is an arming zone and disarmed:
    /// `record` (default: the alarm is recorded at priority 5, not raised
    /// at its priority), `ignore` (nothing is recorded; an active alarm
    /// returns), `raise` (as if armed). Not allowed on fire or priority-1
    /// rules: life safety is never disarmed.
    #[serde(default)]
    pub when_disarmed: Option<WhenDisarmed>,
    /// Cameras (`[[cameras]]` ids) that record a clip, attached to the
    /// alarm event, when the alarm is raised.
    #[serde(default)]
    pub cameras: Vec<String>,
    /// The rule watches the gateway's own enclosure (its tamper switch):
    /// each raise of the alarm is followed by a `gateway.tamper` event,
    /// the uplink contract's kind for a gateway opened or tampered with.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tamper: bool,
}

/// Behaviour of a rule while its zone is disarmed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenDisarmed {
    #[default]
    Record,
    Ignore,
    Raise,
}
