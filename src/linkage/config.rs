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

/// One action of a rule (`[[linkage.actions]]`), chosen by `type`. A key
/// that does not apply to the action's type is a config error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionConfig {
    /// `write` (set a point), `pulse` (set a point, hold, set it back),
    /// `clip` (record a clip on a `[[cameras]]` camera), `notify` (push the
    /// alarm to a `[[push.tiers]]` tier).
    #[serde(rename = "type")]
    pub kind: ActionKind,
    /// `write`, `pulse`: the point, `device/point` (must be `writable`).
    #[serde(default)]
    pub point: Option<String>,
    /// `write`, `pulse`: the value (`true`/`false` or a number).
    #[serde(default)]
    pub value: Option<toml::Value>,
    /// `pulse`: how long to hold the value, in seconds. Default 5
    /// ([`ActionConfig::pulse`]).
    #[serde(
        rename = "pulse_s",
        with = "crate::config::duration::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub pulse: Option<Duration>,
    /// `clip`: camera id.
    #[serde(default)]
    pub camera: Option<String>,
    /// `notify`: a tier of `[[push.tiers]]`.
    #[serde(default)]
    pub to: Option<String>,
}

impl ActionConfig {
    /// A `pulse` action's hold time.
    pub fn pulse(&self) -> Duration {
        self.pulse.unwrap_or(Duration::from_secs(5))
    }

    /// The keys given that do not apply to the action's type.
    pub fn keys_not_applying(&self) -> Vec<&'static str> {
        use ActionKind::*;
        let given = [
            ("point", self.point.is_some(), &[Write, Pulse][..]),
            ("value", self.value.is_some(), &[Write, Pulse][..]),
            ("pulse_s", self.pulse.is_some(), &[Pulse][..]),
            ("camera", self.camera.is_some(), &[Clip][..]),
            ("to", self.to.is_some(), &[Notify][..]),
        ];
        given
            .into_iter()
            .filter(|(_, set, kinds)| *set && !kinds.contains(&self.kind))
            .map(|(key, _, _)| key)
            .collect()
    }
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

impl ActionKind {
    /// As written in the file.
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Write => "write",
            ActionKind::Pulse => "pulse",
            ActionKind::Clip => "clip",
            ActionKind::Notify => "notify",
        }
    }
}
