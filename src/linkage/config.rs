//! Linkage rules (`[[linkage]]`).

use crate::event::Category;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// When an alarm matching the rule is raised or cleared, run its actions
/// (`[[linkage]]`). Every condition given must hold; none given matches
/// every alarm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkageRuleConfig {
    /// Rule id, `[a-z0-9-]{1,64}`, named in `linkage.executed` events.
    pub id: String,
    /// Alarm transitions that trigger the rule: `raised`, `cleared`.
    /// Default: `["raised"]`.
    #[serde(default = "default_on")]
    pub on: Vec<Trigger>,
    /// Alarm category (`fire`, `intrusion`, …).
    #[serde(default)]
    pub category: Option<Category>,
    /// Alarm zone, or a pattern with `*` and `?` (`villa-*`).
    #[serde(default)]
    pub zone: Option<String>,
    /// Alarm key, or a pattern (`fire-panel-a/*`).
    #[serde(default)]
    pub key: Option<String>,
    /// Most urgent priority matched (1 = life safety). Default 1.
    #[serde(default = "one")]
    pub priority_min: u8,
    /// Least urgent priority matched. Default 5.
    #[serde(default = "five")]
    pub priority_max: u8,
    /// What to do, in order of start (they run concurrently; each device
    /// takes its writes in order) (`[[linkage.actions]]`).
    #[serde(default)]
    pub actions: Vec<ActionConfig>,
}

/// An alarm transition a rule reacts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Raised,
    Cleared,
}

fn default_on() -> Vec<Trigger> {
    vec![Trigger::Raised]
}
fn one() -> u8 {
    1
}
fn five() -> u8 {
    5
}

/// One action of a rule (`[[linkage.actions]]`), chosen by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionConfig {
    /// `write` (set a point), `pulse` (set a point, hold, set it back),
    /// `clip` (camera clip; recorded, not wired yet), `notify` (staff
    /// notification; recorded, not wired yet).
    #[serde(rename = "type")]
    pub kind: ActionKind,
    /// `write`, `pulse`: the point, `device/point` (must be `writable`).
    #[serde(default)]
    pub point: Option<String>,
    /// `write`, `pulse`: the value (`true`/`false` or a number).
    #[serde(default)]
    pub value: Option<toml::Value>,
    /// `pulse`: how long to hold the value, in seconds.
    #[serde(
        rename = "pulse_s",
        with = "crate::config::duration",
        default = "default_pulse"
    )]
    pub pulse: Duration,
    /// `clip`: camera id.
    #[serde(default)]
    pub camera: Option<String>,
    /// `notify`: recipient group.
    #[serde(default)]
    pub to: Option<String>,
}

fn default_pulse() -> Duration {
    Duration::from_secs(5)
}

/// Kinds of linkage action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Write,
    Pulse,
    Clip,
    Notify,
}
