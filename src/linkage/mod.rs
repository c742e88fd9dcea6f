//! Linkage: when an alarm matching a rule is raised or cleared, act at once
//! and locally — release the escape doors, stop the air handlers — whether
//! or not the central platform is reachable.
//!
//! - [`Linkage`]: the rules compiled against the point table, and which
//!   rules an alarm event triggers (pure).
//! - [`validate`]: config checks, including loops between rules (a rule
//!   writes a point whose alarm triggers a rule that leads back to it).
//! - [`task`]: receives the alarm engine's events, runs the actions through
//!   the drivers' [`Writers`](crate::drivers::write::Writers), and records
//!   each action's outcome as a `linkage.executed` event.

mod config;
pub mod pattern;
pub mod task;

pub use config::{ActionConfig, ActionKind, LinkageRuleConfig, Trigger};

use crate::config::{Config, KeyPath, LoadedConfig};
use crate::event::{Category, EventKind, NewEvent, Priority};
use crate::point::{PointIndex, Value};
use pattern::glob_match;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The facts of an alarm a rule is matched against.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlarmFacts<'a> {
    pub key: &'a str,
    pub category: Category,
    pub zone: Option<&'a str>,
    pub priority: Priority,
}

impl<'a> AlarmFacts<'a> {
    /// The facts of an alarm event and its trigger; `None` for other events.
    pub fn of(e: &'a NewEvent) -> Option<(AlarmFacts<'a>, Trigger)> {
        let trigger = match e.kind {
            EventKind::AlarmRaised => Trigger::Raised,
            EventKind::AlarmCleared => Trigger::Cleared,
            _ => return None,
        };
        let a = e.alarm.as_ref()?;
        Some((
            AlarmFacts {
                key: &a.key,
                category: e.category,
                zone: e.source.zone.as_deref(),
                priority: e.priority,
            },
            trigger,
        ))
    }
}

impl LinkageRuleConfig {
    /// Does the rule match this alarm (triggers aside)?
    pub fn matches(&self, a: &AlarmFacts<'_>) -> bool {
        self.category.is_none_or(|c| c == a.category)
            && self
                .zone
                .as_deref()
                .is_none_or(|z| a.zone.is_some_and(|az| glob_match(z, az)))
            && self.key.as_deref().is_none_or(|k| glob_match(k, a.key))
            && (self.priority_min..=self.priority_max).contains(&a.priority.get())
    }
}

/// One action, resolved against the point table.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write `value` (held for `pulse`, then the opposite, when set).
    Write {
        device: Arc<str>,
        point: PointIndex,
        key: Arc<str>,
        value: Value,
        pulse: Option<Duration>,
    },
    /// Request a camera clip (not wired yet: recorded only).
    Clip { camera: String },
    /// Notify staff (not wired yet: recorded only).
    Notify { to: String },
}

impl Action {
    /// `write`, `pulse`, `clip`, `notify`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Write { pulse: None, .. } => "write",
            Action::Write { pulse: Some(_), .. } => "pulse",
            Action::Clip { .. } => "clip",
            Action::Notify { .. } => "notify",
        }
    }
    /// What the action acts on (point key, camera, recipients).
    pub fn target(&self) -> &str {
        match self {
            Action::Write { key, .. } => key,
            Action::Clip { camera } => camera,
            Action::Notify { to } => to,
        }
    }
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub config: LinkageRuleConfig,
    pub actions: Vec<Action>,
}

/// Every linkage rule.
#[derive(Clone, Debug, Default)]
pub struct Linkage {
    rules: Vec<Rule>,
}

impl Linkage {
    /// Compile the rules; actions validation should have refused are
    /// skipped with a log line.
    pub fn new(cfg: &LoadedConfig) -> Linkage {
        let mut rules = Vec::with_capacity(cfg.config.linkage.len());
        for r in &cfg.config.linkage {
            let mut actions = Vec::new();
            for a in &r.actions {
                match resolve(cfg, a) {
                    Ok(act) => actions.push(act),
                    Err(e) => tracing::error!(rule = %r.id, error = %e, "linkage action skipped"),
                }
            }
            rules.push(Rule {
                config: r.clone(),
                actions,
            });
        }
        Linkage { rules }
    }

    /// Rules triggered by this event (none for events that are not an
    /// alarm raised or cleared).
    pub fn triggered<'a>(&'a self, e: &'a NewEvent) -> impl Iterator<Item = &'a Rule> + 'a {
        let facts = AlarmFacts::of(e);
        self.rules.iter().filter(move |r| {
            facts.is_some_and(|(f, t)| r.config.on.contains(&t) && r.config.matches(&f))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Resolve a configured action.
fn resolve(cfg: &LoadedConfig, a: &ActionConfig) -> Result<Action, String> {
    match a.kind {
        ActionKind::Write | ActionKind::Pulse => {
            let key = a.point.as_deref().ok_or("needs `point`")?;
            let pi = cfg
                .points
                .find(key)
                .ok_or_else(|| format!("no point {key:?}"))?;
            let meta = cfg.points.get(pi);
            let p = cfg.point_config(meta);
            let v = a.value.as_ref().ok_or("needs `value`")?;
            let value = crate::command::check::value_from_toml(p, v)?;
            let pulse = (a.kind == ActionKind::Pulse).then(|| a.pulse());
            Ok(Action::Write {
                device: meta.device.clone(),
                point: pi,
                key: meta.key.clone(),
                value,
                pulse,
            })
        }
        ActionKind::Clip => Ok(Action::Clip {
            camera: a.camera.clone().ok_or("needs `camera`")?,
        }),
        ActionKind::Notify => Ok(Action::Notify {
            to: a.to.clone().ok_or("needs `to`")?,
        }),
    }
}

/// An alarm rule's facts as configured (for loop detection).
struct StaticAlarm {
    point: String,
    key: String,
    category: Category,
    zone: Option<String>,
    priority: Priority,
}

fn static_alarms(c: &Config) -> Vec<StaticAlarm> {
    let mut out = Vec::new();
    for a in &c.alarms {
        let Some((dev, pt)) = a.point.split_once('/') else {
            continue;
        };
        let Some(d) = c.devices.iter().find(|d| d.id == dev) else {
            continue;
        };
        let Some(p) = d.points.iter().find(|p| p.id == pt) else {
            continue;
        };
        out.push(StaticAlarm {
            point: a.point.clone(),
            key: match &a.id {
                Some(id) => format!("{}/{id}", a.point),
                None => a.point.clone(),
            },
            category: a.category.unwrap_or(d.category),
            zone: a
                .zone
                .clone()
                .or_else(|| p.zone.clone())
                .or_else(|| d.zone.clone()),
            priority: a.priority,
        });
    }
    out
}

/// Config checks of `[[linkage]]`: (key, message) per problem.
pub fn validate(c: &Config) -> Vec<(KeyPath, String)> {
    let mut out = Vec::new();
    let root = KeyPath::root().key("linkage");
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (ri, r) in c.linkage.iter().enumerate() {
        let k = root.index(ri);
        if !crate::config::is_valid_id(&r.id) {
            out.push((
                k.key("id"),
                format!("{:?} must be 1–64 characters of a-z, 0-9 and '-'", r.id),
            ));
        } else if let Some(prev) = ids.insert(r.id.as_str(), ri) {
            out.push((
                k.key("id"),
                format!(
                    "duplicate linkage rule id {:?} (also linkage[{prev}])",
                    r.id
                ),
            ));
        }
        if r.on.is_empty() {
            out.push((
                k.key("on"),
                "give at least one of \"raised\", \"cleared\"".into(),
            ));
        }
        if !(1..=5).contains(&r.priority_min)
            || !(1..=5).contains(&r.priority_max)
            || r.priority_min > r.priority_max
        {
            out.push((
                k.key("priority_min"),
                "priorities must be 1–5 with priority_min ≤ priority_max".into(),
            ));
        }
        if r.actions.is_empty() {
            out.push((k.key("actions"), "a rule needs at least one action".into()));
        }
        for (ai, a) in r.actions.iter().enumerate() {
            let ak = k.key("actions").index(ai);
            for key in a.keys_not_applying() {
                out.push((
                    ak.key(key),
                    format!("`{key}` does not apply to a `{}` action", a.kind.name()),
                ));
            }
            match a.kind {
                ActionKind::Write | ActionKind::Pulse => {
                    let Some(key) = a.point.as_deref() else {
                        out.push((ak.clone(), format!("a {:?} action needs `point`", a.kind)));
                        continue;
                    };
                    let found = key.split_once('/').and_then(|(dev, pt)| {
                        c.devices
                            .iter()
                            .find(|d| d.id == dev)
                            .and_then(|d| d.points.iter().find(|p| p.id == pt))
                    });
                    let Some(p) = found else {
                        out.push((ak.key("point"), format!("no point {key:?}")));
                        continue;
                    };
                    if !p.writable {
                        out.push((
                            ak.key("point"),
                            format!("point {key:?} is not writable (set writable = true)"),
                        ));
                    }
                    match &a.value {
                        None => out.push((ak.clone(), "needs `value`".into())),
                        Some(v) => {
                            if let Err(e) = crate::command::check::value_from_toml(p, v) {
                                out.push((ak.key("value"), e));
                            }
                        }
                    }
                    if a.kind == ActionKind::Pulse {
                        if p.kind != crate::drivers::PointType::Bool {
                            out.push((ak.key("type"), "a pulse needs a bool point".into()));
                        }
                        if a.pulse().is_zero() {
                            out.push((ak.key("pulse_s"), "must be greater than 0".into()));
                        }
                    }
                }
                ActionKind::Clip if a.camera.is_none() => {
                    out.push((ak.clone(), "a clip action needs `camera`".into()))
                }
                ActionKind::Notify if a.to.is_none() => {
                    out.push((ak.clone(), "a notify action needs `to`".into()))
                }
                _ => {}
            }
        }
    }
    out.extend(find_loops(c).into_iter().map(|m| (root.clone(), m)));
    out
}

/// Loops between rules: rule A writes a point whose alarm triggers rule B,
/// … back to A. One message per loop.
fn find_loops(c: &Config) -> Vec<String> {
    let alarms = static_alarms(c);
    let n = c.linkage.len();
    // edges[a] = (b, point written by a, alarm key triggering b)
    let mut edges: Vec<Vec<(usize, String, String)>> = vec![Vec::new(); n];
    for (ri, r) in c.linkage.iter().enumerate() {
        for a in &r.actions {
            if !matches!(a.kind, ActionKind::Write | ActionKind::Pulse) {
                continue;
            }
            let Some(point) = a.point.as_deref() else {
                continue;
            };
            for al in alarms.iter().filter(|al| al.point == point) {
                let facts = AlarmFacts {
                    key: &al.key,
                    category: al.category,
                    zone: al.zone.as_deref(),
                    priority: al.priority,
                };
                for (rj, r2) in c.linkage.iter().enumerate() {
                    if r2.matches(&facts) {
                        edges[ri].push((rj, point.to_string(), al.key.clone()));
                    }
                }
            }
        }
    }
    // Depth-first search; a back edge closes a loop.
    let mut colour = vec![0u8; n]; // 0 new, 1 on the path, 2 done
    let mut path: Vec<(usize, String, String)> = Vec::new();
    let mut found = Vec::new();
    fn dfs(
        u: usize,
        edges: &[Vec<(usize, String, String)>],
        colour: &mut [u8],
        path: &mut Vec<(usize, String, String)>,
        found: &mut Vec<String>,
        c: &Config,
    ) {
        colour[u] = 1;
        for (v, point, key) in &edges[u] {
            path.push((u, point.clone(), key.clone()));
            if colour[*v] == 1 {
                let start = path.iter().position(|(x, _, _)| x == v).unwrap_or(0);
                let steps: Vec<String> = path[start..]
                    .iter()
                    .map(|(x, p, k)| {
                        format!("rule {:?} writes {p:?} (alarm {k:?})", c.linkage[*x].id)
                    })
                    .collect();
                found.push(format!(
                    "linkage loop: {} → back to rule {:?}; a rule must not trigger itself through the points it writes",
                    steps.join(" → "),
                    c.linkage[*v].id
                ));
            } else if colour[*v] == 0 {
                dfs(*v, edges, colour, path, found, c);
            }
            path.pop();
        }
        colour[u] = 2;
    }
    for s in 0..n {
        if colour[s] == 0 {
            dfs(s, &edges, &mut colour, &mut path, &mut found, c);
        }
    }
    found
}

#[cfg(test)]
mod tests;
