//! The command allow-list (`[commands]`) and doors (`[[commands.doors]]`).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Every action the command path knows.
pub const ACTIONS: [&str; 6] = [
    "write_point",
    "arm_zone",
    "disarm_zone",
    "ack_alarm",
    "shelve_alarm",
    "open_door",
];

/// What commands may do (`[commands]`). A command outside it is refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandsConfig {
    /// Actions accepted: any of `write_point`, `arm_zone`, `disarm_zone`,
    /// `ack_alarm`, `shelve_alarm`, `open_door`. Default: all of them (each
    /// still limited to its allowed targets below).
    #[serde(default = "all_actions")]
    pub allowed_actions: Vec<String>,
    /// Points `write_point` may write (`[[commands.write_targets]]`). A
    /// point must also be `writable = true`. Empty: no point.
    #[serde(default)]
    pub write_targets: Vec<WriteTargetConfig>,
    /// Doors `open_door` may open (`[[commands.doors]]`).
    #[serde(default)]
    pub doors: Vec<DoorConfig>,
    /// Longest an alarm may be shelved, in seconds (ISA-18.2: shelving is
    /// always time-limited). Default 8 hours.
    #[serde(
        rename = "max_shelve_s",
        with = "crate::config::duration",
        default = "default_max_shelve"
    )]
    pub max_shelve: Duration,
    /// Longest a write may take, queueing included, in seconds. Default 5.
    #[serde(
        rename = "write_timeout_s",
        with = "crate::config::duration",
        default = "default_write_timeout"
    )]
    pub write_timeout: Duration,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            allowed_actions: all_actions(),
            write_targets: Vec::new(),
            doors: Vec::new(),
            max_shelve: default_max_shelve(),
            write_timeout: default_write_timeout(),
        }
    }
}

fn all_actions() -> Vec<String> {
    ACTIONS.iter().map(|a| a.to_string()).collect()
}
fn default_max_shelve() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Points `write_point` may write (`[[commands.write_targets]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteTargetConfig {
    /// `device/point`, or a pattern with `*` and `?` (`hvac-*/fan-run`).
    pub point: String,
    /// Lowest value accepted (numeric points), in engineering units.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest value accepted (numeric points), in engineering units.
    #[serde(default)]
    pub max: Option<f64>,
}

/// A door `open_door` can open (`[[commands.doors]]`): a release output
/// that is pulsed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DoorConfig {
    /// Door id, the command's `target`, `[a-z0-9-]{1,64}`.
    pub id: String,
    /// Human-readable name.
    #[serde(default)]
    pub name: Option<String>,
    /// The release output, `device/point`: a writable `bool` point.
    pub output: String,
    /// Value that releases the door (the output returns to the opposite).
    #[serde(default = "yes")]
    pub release_value: bool,
    /// How long the door is released when the command gives no `value`, in seconds.
    #[serde(
        rename = "pulse_s",
        with = "crate::config::duration",
        default = "default_pulse"
    )]
    pub pulse: Duration,
    /// Longest release a command may ask for (`value` in seconds).
    #[serde(
        rename = "max_pulse_s",
        with = "crate::config::duration",
        default = "default_max_pulse"
    )]
    pub max_pulse: Duration,
}

fn yes() -> bool {
    true
}
fn default_pulse() -> Duration {
    Duration::from_secs(5)
}
fn default_max_pulse() -> Duration {
    Duration::from_secs(30)
}

/// Config checks of `[commands]`: (key, message) per problem.
pub fn validate(c: &crate::config::Config) -> Vec<(crate::config::KeyPath, String)> {
    use crate::config::KeyPath;
    use crate::linkage::pattern::{glob_match, is_glob};
    let mut out = Vec::new();
    let k = KeyPath::root().key("commands");
    let cc = &c.commands;
    for (i, a) in cc.allowed_actions.iter().enumerate() {
        if !ACTIONS.contains(&a.as_str()) {
            out.push((
                k.key("allowed_actions").index(i),
                format!("unknown action {a:?} (known: {})", ACTIONS.join(", ")),
            ));
        }
    }
    if cc.max_shelve.is_zero() {
        out.push((k.key("max_shelve_s"), "must be greater than 0".into()));
    }
    if cc.write_timeout.is_zero() {
        out.push((k.key("write_timeout_s"), "must be greater than 0".into()));
    }
    let points = || {
        c.devices.iter().flat_map(|d| {
            d.points
                .iter()
                .map(move |p| (format!("{}/{}", d.id, p.id), p))
        })
    };
    for (i, t) in cc.write_targets.iter().enumerate() {
        let tk = k.key("write_targets").index(i);
        let matched: Vec<_> = points()
            .filter(|(key, _)| glob_match(&t.point, key))
            .collect();
        if matched.is_empty() {
            out.push((tk.key("point"), format!("no point matches {:?}", t.point)));
        }
        if !is_glob(&t.point) {
            for (key, p) in &matched {
                if !p.writable {
                    out.push((
                        tk.key("point"),
                        format!("point {key:?} is not writable (set writable = true)"),
                    ));
                }
            }
        }
        for (name, v) in [("min", t.min), ("max", t.max)] {
            if v.is_some_and(|v| !v.is_finite()) {
                out.push((tk.key(name), "must be a finite number".into()));
            }
        }
        if let (Some(lo), Some(hi)) = (t.min, t.max) {
            if lo > hi {
                out.push((tk.key("min"), "must not be greater than max".into()));
            }
        }
    }
    let mut ids = std::collections::HashSet::new();
    for (i, d) in cc.doors.iter().enumerate() {
        let dk = k.key("doors").index(i);
        if !crate::config::is_valid_id(&d.id) {
            out.push((
                dk.key("id"),
                format!("{:?} must be 1–64 characters of a-z, 0-9 and '-'", d.id),
            ));
        } else if !ids.insert(d.id.as_str()) {
            out.push((dk.key("id"), format!("duplicate door id {:?}", d.id)));
        }
        match points().find(|(key, _)| *key == d.output) {
            None => out.push((dk.key("output"), format!("no point {:?}", d.output))),
            Some((_, p)) => {
                if !p.writable {
                    out.push((
                        dk.key("output"),
                        format!("point {:?} is not writable (set writable = true)", d.output),
                    ));
                }
                if p.kind != crate::drivers::PointType::Bool {
                    out.push((
                        dk.key("output"),
                        format!("point {:?} is not a bool output", d.output),
                    ));
                }
            }
        }
        if d.pulse.is_zero() {
            out.push((dk.key("pulse_s"), "must be greater than 0".into()));
        }
        if d.max_pulse < d.pulse {
            out.push((dk.key("max_pulse_s"), "must be at least pulse_s".into()));
        }
    }
    out
}
