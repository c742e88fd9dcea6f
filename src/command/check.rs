//! Checking a command against the configuration, without I/O: the command
//! is turned into a [`Plan`] or refused with a reason. Nothing has been
//! changed when a command is refused here.

use super::config::ACTIONS;
use crate::config::LoadedConfig;
use crate::drivers::modbus::decode::Codec;
use crate::drivers::{PointConfig, PointType, RegisterKind};
use crate::event::Timestamp;
use crate::linkage::pattern::glob_match;
use crate::point::{PointIndex, Value};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// A command as the contract spells it (unknown fields are ignored: the
/// contract may add some).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Command {
    pub action: String,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    #[serde(default)]
    pub operator: Option<String>,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    #[serde(default)]
    pub comment: Option<String>,
}

/// What an accepted command does.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    Ack {
        key: String,
    },
    Shelve {
        key: String,
        duration: Duration,
    },
    Write {
        device: Arc<str>,
        point: PointIndex,
        value: Value,
    },
    OpenDoor {
        device: Arc<str>,
        point: PointIndex,
        value: bool,
        pulse: Duration,
    },
    Arm {
        zone: String,
        armed: bool,
    },
}

/// Check `cmd` at `now`: the plan, or why it is refused.
pub fn plan(cfg: &LoadedConfig, cmd: &Command, now: Timestamp) -> Result<Plan, String> {
    let c = &cfg.config.commands;
    if !ACTIONS.contains(&cmd.action.as_str()) {
        return Err(format!("unknown action {:?}", cmd.action));
    }
    if let Some(exp) = cmd.expires_at {
        if exp < now {
            return Err(format!("command expired at {exp}"));
        }
    }
    if !c.allowed_actions.contains(&cmd.action) {
        return Err(format!(
            "action {:?} is not allowed on this gateway",
            cmd.action
        ));
    }
    let target = match cmd.target.as_deref() {
        Some(t) if !t.is_empty() => t,
        _ => return Err(format!("{} needs a target", cmd.action)),
    };
    match cmd.action.as_str() {
        "ack_alarm" => Ok(Plan::Ack {
            key: target.to_string(),
        }),
        "shelve_alarm" => {
            let secs = match &cmd.value {
                Some(serde_json::Value::Number(n)) => n.as_f64().unwrap_or(-1.0),
                _ => {
                    return Err("shelve_alarm needs value: the shelving time in seconds".to_string())
                }
            };
            if !(secs > 0.0 && secs <= c.max_shelve.as_secs_f64()) {
                return Err(format!(
                    "shelving time {secs} s out of range (0, {}]",
                    c.max_shelve.as_secs_f64()
                ));
            }
            Ok(Plan::Shelve {
                key: target.to_string(),
                duration: Duration::from_secs_f64(secs),
            })
        }
        "arm_zone" | "disarm_zone" => {
            if !cfg.config.arming.zones.iter().any(|z| z.id == target) {
                return Err(format!("target not an arming zone: {target}"));
            }
            if cmd.value.is_some() {
                return Err(format!("{} takes no value", cmd.action));
            }
            Ok(Plan::Arm {
                zone: target.to_string(),
                armed: cmd.action == "arm_zone",
            })
        }
        "open_door" => {
            let door = c
                .doors
                .iter()
                .find(|d| d.id == target)
                .ok_or_else(|| format!("target not a configured door: {target}"))?;
            let pulse = match &cmd.value {
                None => door.pulse,
                Some(serde_json::Value::Number(n)) => {
                    let s = n.as_f64().unwrap_or(-1.0);
                    if !(s > 0.0 && s <= door.max_pulse.as_secs_f64()) {
                        return Err(format!(
                            "door release time {s} s out of range (0, {}]",
                            door.max_pulse.as_secs_f64()
                        ));
                    }
                    Duration::from_secs_f64(s)
                }
                Some(v) => {
                    return Err(format!(
                        "open_door value must be a number of seconds, got {v}"
                    ))
                }
            };
            let pi = cfg
                .points
                .find(&door.output)
                .ok_or_else(|| format!("door output {} is not configured", door.output))?;
            let meta = cfg.points.get(pi);
            if !meta.writable {
                return Err(format!("target not writable: {}", door.output));
            }
            Ok(Plan::OpenDoor {
                device: meta.device.clone(),
                point: pi,
                value: door.release_value,
                pulse,
            })
        }
        "write_point" => {
            let allowed = c
                .write_targets
                .iter()
                .find(|t| glob_match(&t.point, target))
                .ok_or_else(|| format!("target not on the allow-list: {target}"))?;
            let pi = cfg
                .points
                .find(target)
                .ok_or_else(|| format!("no point {target}"))?;
            let meta = cfg.points.get(pi);
            if !meta.writable {
                return Err(format!("target not writable: {target}"));
            }
            let p = cfg.point_config(meta);
            let v = cmd
                .value
                .as_ref()
                .ok_or_else(|| "write_point needs a value".to_string())?;
            let value = value_from_json(p, v).map_err(|e| format!("{target}: {e}"))?;
            if !matches!(value, Value::Bool(_)) {
                let x = value.as_f64();
                if allowed.min.is_some_and(|m| x < m) || allowed.max.is_some_and(|m| x > m) {
                    return Err(format!(
                        "{target}: value {x} outside the allowed range [{}, {}]",
                        allowed.min.map_or("-∞".into(), |m| m.to_string()),
                        allowed.max.map_or("∞".into(), |m| m.to_string()),
                    ));
                }
            }
            Ok(Plan::Write {
                device: meta.device.clone(),
                point: pi,
                value,
            })
        }
        other => Err(format!("unknown action {other:?}")),
    }
}

/// A JSON value for point `p`: its type must suit the point and it must
/// fit the point's raw type after undoing scale and offset.
pub fn value_from_json(p: &PointConfig, v: &serde_json::Value) -> Result<Value, String> {
    let value = match (p.kind, v) {
        (PointType::Bool, serde_json::Value::Bool(b)) => Value::Bool(*b),
        (PointType::Bool, v) => return Err(format!("expects true or false, got {v}")),
        (_, serde_json::Value::Number(n)) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().ok_or("not a number")?),
        },
        (k, v) => return Err(format!("expects a number ({k:?}), got {v}")),
    };
    check_fits(p, value)
}

/// [`value_from_json`] for config values (linkage actions).
pub fn value_from_toml(p: &PointConfig, v: &toml::Value) -> Result<Value, String> {
    let json = match v {
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .ok_or_else(|| format!("{f} is not a usable number"))?,
        other => return Err(format!("must be true, false or a number, got {other}")),
    };
    value_from_json(p, &json)
}

fn check_fits(p: &PointConfig, value: Value) -> Result<Value, String> {
    if let (Some(RegisterKind::Holding), false) = (p.register, p.kind == PointType::Bool) {
        let codec = Codec::new(p);
        codec.encode_registers(value).map_err(|e| e.to_string())?;
        // An integer point without scaling takes integers only.
        if matches!(
            p.kind,
            PointType::U16 | PointType::I16 | PointType::U32 | PointType::I32
        ) && p.scale == 1.0
            && p.offset == 0.0
        {
            if let Value::Float(f) = value {
                if f.fract() != 0.0 {
                    return Err(format!("{f} is not an integer ({:?})", p.kind));
                }
            }
        }
    }
    Ok(value)
}
