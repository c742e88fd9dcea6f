//! The alarm engine: rules over point values, ISA-18.2 states, latching,
//! on/off delays, and communication loss of life-safety devices. Pure logic:
//! time comes in as arguments (`now: Instant` drives timers, `ts: Timestamp`
//! stamps events); the engine's task ([`task`]) does the I/O.
//!
//! # Rules
//!
//! Each `[[alarms]]` rule watches one point with one condition:
//! - `equals`: in alarm while the value equals `true`, `false` or a number;
//! - `high`: in alarm once value > `high`, normal again once value <
//!   `high - hysteresis`;
//! - `low`: in alarm once value < `low`, normal again once value >
//!   `low + hysteresis`.
//!
//! `on_delay_s`: the condition must hold that long before the alarm is
//! raised (if it goes away earlier, nothing happens). `off_delay_s`: the
//! condition must be gone that long before the alarm returns.
//!
//! Only values of quality `good` are judged. A reading without a value, of
//! quality `bad` or `stale`, or a NaN makes the condition *unknown*: unknown
//! is not normal, so it never clears or returns an alarm, and it never raises
//! one. It cancels a running on/off delay; the delay starts again on the next
//! good value.
//!
//! # States (ISA-18.2)
//!
//! "Condition" below is the condition after the on/off delays.
//!
//! | state            | event                          | next state       | emitted                                   |
//! |------------------|--------------------------------|------------------|-------------------------------------------|
//! | normal           | condition active               | active_unacked   | `alarm.raised`                            |
//! | active_unacked   | acknowledge, condition active  | active_acked     | `alarm.acknowledged` (active_acked)       |
//! | active_unacked   | condition normal, not latching | returned_unacked | `alarm.cleared` (returned_unacked)        |
//! | active_unacked   | condition normal, latching     | active_unacked   | nothing: the alarm stays in               |
//! | active_unacked   | condition active again, latching | active_unacked | nothing                                 |
//! | active_unacked   | acknowledge, latching, condition known normal | normal | `alarm.acknowledged` (active_acked), then `alarm.cleared` (normal) |
//! | active_unacked   | acknowledge, latching, condition unknown | active_acked | `alarm.acknowledged` (active_acked); cleared on the next good normal value |
//! | active_acked     | condition normal (known)       | normal           | `alarm.cleared` (normal)                  |
//! | returned_unacked | acknowledge                    | normal           | `alarm.acknowledged` (normal)             |
//! | returned_unacked | condition active again         | active_unacked   | `alarm.raised` (re-activation)            |
//! | normal, active_acked | acknowledge                | unchanged        | error [`AlarmError::NotUnacked`]          |
//!
//! A latched alarm (`latching`, default `true` for category `fire`) thus
//! needs both an acknowledgement and a normal condition to return to normal,
//! in either order.
//!
//! # Communication loss
//!
//! [`AlarmEngine::on_device_status`] emits `device.offline` / `device.online`
//! (priority 3, the device's category). For a `life_safety` device it also
//! raises a priority-1 alarm with key `<device>/comm`, which returns when
//! the device answers again and follows the same state table (not latching).
//!
//! # Restarts
//!
//! The engine keeps a *dirty set*: the alarms whose saved fields (state,
//! condition, end of shelf) and the devices whose offline flag changed
//! since the last [`AlarmEngine::clear_dirty`]. The alarm task saves just
//! those with each commit, as one named state per alarm
//! (`alarm/<key>`, removed once the alarm is back to normal) and per
//! offline device (`offline/<device>`), see
//! [`AlarmEngine::dirty_states`]; [`AlarmEngine::restore_states`] puts
//! them back into a fresh engine, so a latched fire alarm or an
//! unacknowledged one survives a restart of the gateway.
//! [`AlarmEngine::snapshot`] / [`AlarmEngine::restore`] read and write the
//! whole-engine format of earlier versions (one document), kept to migrate
//! saved states.
//!
//! # Shelving (ISA-18.2)
//!
//! [`AlarmEngine::shelve`] suppresses an alarm for a limited time: it goes to
//! state `shelved` (`alarm.shelved` with the operator), is no longer
//! annunciated and needs no acknowledgement; its condition is still
//! followed. When the time is over it is judged afresh: `alarm.shelved`
//! with the new state (`normal`, or `active_unacked` followed by
//! `alarm.raised` when the condition holds). Life-safety alarms (fire,
//! priority 1) cannot be shelved. Shelves survive restarts.
//!
//! # Arming
//!
//! [`AlarmEngine::set_armed_zones`] tells the engine which zones are
//! disarmed. A rule whose zone is disarmed follows its `when_disarmed`:
//! `record` (default) raises the alarm at priority 5 with
//! `detail.zone_disarmed`, for the whole activation; `ignore` judges the
//! condition as normal; `raise` ignores arming. Fire and priority-1 alarms
//! ignore arming whatever the config says.
//!
//! # Cost
//!
//! [`AlarmEngine::on_reading`] runs for every polled value. Rules are indexed
//! by [`PointIndex`] in a flat table: a point without rules costs two loads
//! and a compare; nothing allocates unless an event is emitted.

mod bus;
mod condition;
mod config;
pub mod live;
pub mod persist;
mod shelve;
mod state;
pub mod task;
#[cfg(test)]
mod tests;
pub mod trouble;
pub mod wording;

pub use config::{AlarmRuleConfig, WhenDisarmed};

use crate::arming::ArmedZones;
use crate::config::LoadedConfig;
use crate::event::{
    AlarmInfo, AlarmState, Category, EventKind, NewEvent, Priority, Source, Timestamp,
};
use crate::point::{PointIndex, Quality, Value};
use condition::{Condition, Target};
use serde::Deserialize;
use state::{Core, Transitions};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Failures of operator actions.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AlarmError {
    #[error("no alarm with key {0:?}")]
    UnknownAlarm(String),
    #[error("alarm {0:?} is not awaiting acknowledgement")]
    NotUnacked(String),
    #[error("unreadable alarm snapshot: {0}")]
    Snapshot(String),
    #[error("alarm {0:?} is a life-safety alarm and cannot be shelved")]
    NotShelvable(String),
    #[error("not recorded in the journal: {0}")]
    NotRecorded(String),
}

/// Saved alarm states ([`AlarmEngine::snapshot`]).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    version: u32,
    alarms: Vec<SavedAlarm>,
    /// Devices reported offline when saved.
    #[serde(default)]
    offline_devices: Vec<String>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedAlarm {
    key: String,
    state: AlarmState,
    /// The condition (after delays) when saved.
    condition: bool,
    /// End of the shelf time (shelved alarms only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shelved_until: Option<Timestamp>,
}

const SNAPSHOT_VERSION: u32 = 1;

/// Journal state name prefix of a saved alarm: `alarm/<key>`.
pub const ALARM_STATE_PREFIX: &str = "alarm/";
/// Journal state name prefix of a device saved as offline:
/// `offline/<device id>`.
pub const OFFLINE_STATE_PREFIX: &str = "offline/";

/// One alarm's saved state, under `alarm/<key>` (the key is in the name).
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedState {
    state: AlarmState,
    /// The condition (after delays) when saved.
    condition: bool,
    /// End of the shelf time (shelved alarms only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shelved_until: Option<Timestamp>,
}

/// A device saved as offline, under `offline/<device id>`.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedDevice {
    offline: bool,
}

/// What [`AlarmEngine::restore_states`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Restored {
    /// Alarms put back into their saved state.
    pub alarms: usize,
    /// Devices put back offline.
    pub offline_devices: usize,
    /// Names of saved states whose alarm or device is no longer
    /// configured: the caller removes them from the journal.
    pub stale: Vec<String>,
}

/// Alarms and devices whose saved fields changed since the last save.
#[derive(Debug, Default)]
struct Dirty {
    alarm: Vec<bool>,
    alarms: Vec<u32>,
    device: Vec<bool>,
    devices: Vec<u32>,
}

impl Dirty {
    fn new(alarms: usize, devices: usize) -> Dirty {
        Dirty {
            alarm: vec![false; alarms],
            alarms: Vec::new(),
            device: vec![false; devices],
            devices: Vec::new(),
        }
    }

    fn alarm(&mut self, i: u32) {
        if let Some(f) = self.alarm.get_mut(i as usize) {
            if !*f {
                *f = true;
                self.alarms.push(i);
            }
        }
    }

    fn device(&mut self, i: usize) {
        if let Some(f) = self.device.get_mut(i) {
            if !*f {
                *f = true;
                self.devices.push(i as u32);
            }
        }
    }

    fn clear(&mut self) {
        for i in self.alarms.drain(..) {
            self.alarm[i as usize] = false;
        }
        for i in self.devices.drain(..) {
            self.device[i as usize] = false;
        }
    }
}

/// Priority of `device.offline` / `device.online` events.
const DEVICE_EVENT_PRIORITY: Priority = Priority::MEDIUM;

/// A view of one alarm for status pages and tests.
#[derive(Clone, Debug, PartialEq)]
pub struct AlarmView {
    pub key: Arc<str>,
    pub state: AlarmState,
    pub priority: Priority,
    pub category: Category,
    pub message: Arc<str>,
    pub latched: bool,
    /// Raised while its zone was disarmed (`when_disarmed = "record"`):
    /// recorded at priority 5, not announced.
    pub zone_disarmed: bool,
}

/// What an alarm is about: fixed at load time.
#[derive(Debug)]
struct AlarmDef {
    key: Arc<str>,
    /// `None` for a device's communication-loss alarm.
    condition: Option<Condition>,
    priority: Priority,
    category: Category,
    device: Arc<str>,
    point: Option<Arc<str>>,
    zone: Option<Arc<str>>,
    message: Arc<str>,
    when_disarmed: WhenDisarmed,
    /// Fire or priority 1: never shelved, never affected by arming.
    life_safety: bool,
    /// The gateway's own enclosure: a raise is followed by `gateway.tamper`.
    tamper: bool,
}

/// One alarm: definition, state, and the current value (`None` while unknown).
#[derive(Debug)]
struct Alarm {
    def: AlarmDef,
    core: Core,
    value: Option<Value>,
    /// This activation was raised while its zone was disarmed (`record`):
    /// its events go out at priority 5.
    quiet: bool,
    /// Shelved until (the instant is filled in at the first tick after a
    /// restore).
    shelved_until: Option<(Option<Instant>, Timestamp)>,
}

impl Alarm {
    /// The fields a save keeps: (state, condition, end of shelf); all
    /// alike for an alarm in normal (nothing is saved for it).
    #[inline]
    fn saved(&self) -> (AlarmState, bool, Option<Timestamp>) {
        match self.core.saved() {
            (AlarmState::Normal, _) => (AlarmState::Normal, false, None),
            (state, condition) => (state, condition, self.shelved_until.map(|(_, ts)| ts)),
        }
    }
}

impl AlarmDef {
    fn life_safety(category: Category, priority: Priority) -> bool {
        category.is_life_safety() || priority == Priority::LIFE_SAFETY
    }
}

/// What the engine needs to know about a device.
#[derive(Debug)]
struct DeviceInfo {
    id: Arc<str>,
    zone: Option<Arc<str>>,
    category: Category,
    offline: bool,
    /// It answers but refuses to read some of its points
    /// ([`AlarmEngine::on_points_fault`], [`PointsFault::Refused`]).
    refused: bool,
    /// It answers but sends values that are not numbers for some of its
    /// points ([`PointsFault::NotNumbers`]).
    not_numbers: bool,
    /// Index of its communication-loss alarm (life-safety devices only):
    /// active while the device is offline or leaves points unwatched.
    comm_alarm: Option<u32>,
}

/// Why a device that answers leaves some of its points unwatched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointsFault {
    /// It refuses to read them: a Modbus exception 1–3 (a function or an
    /// address the device does not have).
    Refused,
    /// It sends values for them that are not numbers (NaN, infinity: a
    /// broken sensor, a fault code read as a float).
    NotNumbers,
}

/// All alarm rules and their states.
#[derive(Debug)]
pub struct AlarmEngine {
    /// Rules of point `p` are `alarms[first[p]..first[p + 1]]`.
    first: Vec<u32>,
    /// Point rules sorted by point, then communication-loss alarms.
    alarms: Vec<Alarm>,
    /// Indexes into `alarms`, most urgent first (priority, then key): the
    /// order of [`active`](Self::active), fixed at load time.
    by_urgency: Vec<u32>,
    by_key: HashMap<Arc<str>, u32>,
    devices: Vec<DeviceInfo>,
    /// Armed on/off delays: (due, alarm index). Entries whose alarm no longer
    /// waits for that instant are stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Disarmed zones.
    armed: Arc<ArmedZones>,
    /// Indexes of shelved alarms.
    shelved: Vec<u32>,
    /// Changed since the last save.
    dirty: Dirty,
}

impl AlarmEngine {
    /// Build every rule from the configuration. Rules that validation should
    /// have refused (unknown point, no condition) are skipped with a warning.
    pub fn new(cfg: &LoadedConfig) -> AlarmEngine {
        let c = &cfg.config;
        let mut rules: Vec<(PointIndex, Alarm)> = Vec::with_capacity(c.alarms.len());
        for (i, r) in c.alarms.iter().enumerate() {
            let Some(pi) = cfg.points.find(&r.point) else {
                tracing::warn!(rule = i, point = %r.point, "alarm rule on an unknown point skipped");
                continue;
            };
            let condition = match (&r.equals, r.high, r.low) {
                (Some(v), None, None) => Target::from_toml(v).map(Condition::Equals),
                (None, Some(limit), None) if limit.is_finite() => Some(Condition::High {
                    limit,
                    hysteresis: sane_hysteresis(r.hysteresis),
                }),
                (None, None, Some(limit)) if limit.is_finite() => Some(Condition::Low {
                    limit,
                    hysteresis: sane_hysteresis(r.hysteresis),
                }),
                _ => None,
            };
            let Some(condition) = condition else {
                tracing::warn!(rule = i, point = %r.point, "alarm rule without a usable condition skipped");
                continue;
            };
            let meta = cfg.points.get(pi);
            let category = r.category.unwrap_or(meta.category);
            let latching = r.latching.unwrap_or(category == Category::Fire);
            let key: Arc<str> = match &r.id {
                Some(id) => format!("{}/{}", meta.key, id).into(),
                None => meta.key.clone(),
            };
            rules.push((
                pi,
                Alarm {
                    def: AlarmDef {
                        key,
                        condition: Some(condition),
                        priority: r.priority,
                        category,
                        device: meta.device.clone(),
                        point: Some(meta.point.clone()),
                        zone: r
                            .zone
                            .as_deref()
                            .map(Arc::from)
                            .or_else(|| meta.zone.clone()),
                        message: r.message.as_str().into(),
                        when_disarmed: r.when_disarmed.unwrap_or_default(),
                        life_safety: AlarmDef::life_safety(category, r.priority),
                        tamper: r.tamper,
                    },
                    core: Core::new(latching, r.on_delay, r.off_delay),
                    value: None,
                    quiet: false,
                    shelved_until: None,
                },
            ));
        }
        // Stable: rules of one point keep their config order.
        rules.sort_by_key(|(pi, _)| *pi);
        let mut first = Vec::with_capacity(cfg.points.len() + 1);
        let mut next = 0usize;
        for p in 0..cfg.points.len() as PointIndex {
            first.push(next as u32);
            while next < rules.len() && rules[next].0 == p {
                next += 1;
            }
        }
        first.push(next as u32);
        let mut alarms: Vec<Alarm> = rules.into_iter().map(|(_, a)| a).collect();

        let mut devices = Vec::with_capacity(c.devices.len());
        for d in &c.devices {
            let id: Arc<str> = d.id.as_str().into();
            let zone: Option<Arc<str>> = d.zone.as_deref().map(Arc::from);
            let comm_alarm = d.life_safety.then(|| {
                let name = d.name.as_deref().unwrap_or(&d.id);
                alarms.push(Alarm {
                    def: AlarmDef {
                        key: format!("{}/comm", d.id).into(),
                        condition: None,
                        priority: Priority::LIFE_SAFETY,
                        category: d.category,
                        device: id.clone(),
                        point: None,
                        zone: zone.clone(),
                        message: format!("Communication lost with {name} ({})", d.id).into(),
                        when_disarmed: WhenDisarmed::Raise,
                        life_safety: true,
                        tamper: false,
                    },
                    core: Core::new(false, Duration::ZERO, Duration::ZERO),
                    value: None,
                    quiet: false,
                    shelved_until: None,
                });
                (alarms.len() - 1) as u32
            });
            devices.push(DeviceInfo {
                id,
                zone,
                category: d.category,
                offline: false,
                refused: false,
                not_numbers: false,
                comm_alarm,
            });
        }

        let mut by_key = HashMap::with_capacity(alarms.len());
        for (i, a) in alarms.iter().enumerate() {
            if by_key.insert(a.def.key.clone(), i as u32).is_some() {
                tracing::warn!(key = %a.def.key, "duplicate alarm key: acknowledgements reach the last rule only");
            }
        }
        tracing::debug!(
            rules = alarms.len(),
            points = cfg.points.len(),
            "alarm engine built"
        );
        let mut by_urgency: Vec<u32> = (0..alarms.len() as u32).collect();
        by_urgency.sort_by(|&a, &b| {
            let (a, b) = (&alarms[a as usize].def, &alarms[b as usize].def);
            a.priority.cmp(&b.priority).then_with(|| a.key.cmp(&b.key))
        });
        let dirty = Dirty::new(alarms.len(), devices.len());
        AlarmEngine {
            first,
            alarms,
            by_urgency,
            by_key,
            devices,
            timers: BinaryHeap::new(),
            armed: Arc::new(ArmedZones::default()),
            shelved: Vec::new(),
            dirty,
        }
    }

    /// The zones' arming state changed: rules judged from now on follow it,
    /// and the rules that ignore a disarmed zone (`when_disarmed =
    /// "ignore"`) whose zone changed are judged again at once with their
    /// point's last value, as a new reading would be: a door left open
    /// raises when its zone is armed, not at its next change (a device
    /// that reports only changes may never send one), and disarming
    /// returns such an alarm.
    pub fn set_armed_zones(
        &mut self,
        now: Instant,
        ts: Timestamp,
        armed: Arc<ArmedZones>,
        out: &mut Vec<NewEvent>,
    ) {
        let before = std::mem::replace(&mut self.armed, armed);
        let armed = &*self.armed;
        for (i, alarm) in self.alarms.iter_mut().enumerate() {
            if alarm.def.when_disarmed != WhenDisarmed::Ignore {
                continue;
            }
            let disarmed = zone_disarmed(&alarm.def, armed);
            if disarmed == zone_disarmed(&alarm.def, &before) {
                continue;
            }
            let (Some(condition), Some(value)) = (alarm.def.condition, alarm.value) else {
                continue;
            };
            let saved = alarm.saved();
            if let Some(at) = alarm.core.pending().filter(|at| *at <= now) {
                let t = alarm.core.fire(at);
                emit(alarm, armed, t, ts, None, None, None, out);
            }
            let cond = condition
                .eval(value, alarm.core.raw())
                .map(|c| c && !disarmed);
            let step = alarm.core.observe(now, cond);
            if let Some(at) = step.schedule {
                self.timers.push(Reverse((at, i as u32)));
            }
            emit(alarm, armed, step.transitions, ts, None, None, None, out);
            if alarm.saved() != saved {
                self.dirty.alarm(i as u32);
            }
        }
        self.prune_timers();
    }

    /// A new value (or a quality change) of a point. Only `good` values with
    /// a value are judged; anything else makes the rules' conditions unknown.
    #[inline]
    pub fn on_reading(
        &mut self,
        now: Instant,
        ts: Timestamp,
        point: PointIndex,
        value: Option<Value>,
        quality: Quality,
        out: &mut Vec<NewEvent>,
    ) {
        let p = point as usize;
        let (Some(&start), Some(&end)) = (self.first.get(p), self.first.get(p + 1)) else {
            return;
        };
        if start == end {
            return;
        }
        self.on_reading_ruled(now, ts, start, end, value, quality, out);
    }

    /// Does any rule watch `point`? A reading of a point no rule watches
    /// changes nothing ([`on_reading`](Self::on_reading) returns at once).
    pub fn watches(&self, point: PointIndex) -> bool {
        let p = point as usize;
        matches!((self.first.get(p), self.first.get(p + 1)), (Some(a), Some(b)) if a != b)
    }

    #[allow(clippy::too_many_arguments)]
    fn on_reading_ruled(
        &mut self,
        now: Instant,
        ts: Timestamp,
        start: u32,
        end: u32,
        value: Option<Value>,
        quality: Quality,
        out: &mut Vec<NewEvent>,
    ) {
        // A value that is not a number judges nothing: unknown, as bad.
        let value = value.filter(|v| quality == Quality::Good && v.is_number());
        let armed = &*self.armed;
        for i in start..end {
            let alarm = &mut self.alarms[i as usize];
            let Some(condition) = alarm.def.condition else {
                continue;
            };
            let before = alarm.saved();
            // A delay that ran out before this reading counts, even if
            // `tick` has not run yet: the outcome must not depend on when
            // the task got round to it.
            if let Some(at) = alarm.core.pending().filter(|at| *at <= now) {
                let t = alarm.core.fire(at);
                emit(alarm, armed, t, ts, None, None, None, out);
            }
            let mut cond = value.and_then(|v| condition.eval(v, alarm.core.raw()));
            if alarm.def.when_disarmed == WhenDisarmed::Ignore && zone_disarmed(&alarm.def, armed) {
                cond = cond.map(|_| false);
            }
            alarm.value = if cond.is_some() { value } else { None };
            let step = alarm.core.observe(now, cond);
            if let Some(at) = step.schedule {
                self.timers.push(Reverse((at, i)));
            }
            emit(alarm, armed, step.transitions, ts, None, None, None, out);
            if alarm.saved() != before {
                self.dirty.alarm(i);
            }
        }
        self.prune_timers();
    }

    /// A device went offline or came back. Repeated reports of the same
    /// status are ignored.
    pub fn on_device_status(
        &mut self,
        now: Instant,
        ts: Timestamp,
        device_index: usize,
        online: bool,
        reason: Option<&str>,
        out: &mut Vec<NewEvent>,
    ) {
        let Some(dev) = self.devices.get_mut(device_index) else {
            tracing::warn!(device_index, "status of an unknown device ignored");
            return;
        };
        if dev.offline != online {
            return;
        }
        dev.offline = !online;
        self.dirty.device(device_index);
        let detail = if online {
            None
        } else {
            Some(serde_json::json!({ "reason": reason }))
        };
        out.push(NewEvent {
            ts,
            kind: if online {
                EventKind::DeviceOnline
            } else {
                EventKind::DeviceOffline
            },
            priority: DEVICE_EVENT_PRIORITY,
            category: dev.category,
            source: Source {
                device: Some(dev.id.to_string()),
                point: None,
                zone: dev.zone.as_deref().map(str::to_string),
            },
            alarm: None,
            attachments: Vec::new(),
            detail: detail.clone(),
        });
        self.judge_comm(now, ts, device_index, detail, out);
    }

    /// Device `device_index` answers but leaves some of its points
    /// unwatched for `fault`, with `reason` (why, while it does; `None`
    /// once it no longer does): a life-safety device's communication-loss
    /// alarm is active meanwhile, as while it is offline (part of a fire
    /// panel goes unwatched either way), the reason as its detail. The
    /// points themselves go bad through their readings.
    pub fn on_points_fault(
        &mut self,
        now: Instant,
        ts: Timestamp,
        device_index: usize,
        fault: PointsFault,
        reason: Option<&str>,
        out: &mut Vec<NewEvent>,
    ) {
        let Some(dev) = self.devices.get_mut(device_index) else {
            return;
        };
        let flag = match fault {
            PointsFault::Refused => &mut dev.refused,
            PointsFault::NotNumbers => &mut dev.not_numbers,
        };
        if *flag == reason.is_some() {
            return;
        }
        *flag = reason.is_some();
        let detail = reason.map(|r| serde_json::json!({ "reason": r }));
        self.judge_comm(now, ts, device_index, detail, out);
    }

    /// A device's communication-loss alarm, if it has one, judged again:
    /// active while the device is offline or leaves points unwatched.
    fn judge_comm(
        &mut self,
        now: Instant,
        ts: Timestamp,
        device_index: usize,
        detail: Option<serde_json::Value>,
        out: &mut Vec<NewEvent>,
    ) {
        let dev = &self.devices[device_index];
        let Some(ai) = dev.comm_alarm else {
            return;
        };
        let lost = dev.offline || dev.refused || dev.not_numbers;
        let alarm = &mut self.alarms[ai as usize];
        let before = alarm.saved();
        let step = alarm.core.observe(now, Some(lost));
        emit(
            alarm,
            &self.armed,
            step.transitions,
            ts,
            None,
            None,
            detail,
            out,
        );
        if alarm.saved() != before {
            self.dirty.alarm(ai);
        }
    }

    /// True while `device_index` is reported offline.
    pub fn device_offline(&self, device_index: usize) -> bool {
        self.devices.get(device_index).is_some_and(|d| d.offline)
    }

    /// Fire the on/off delays due at `now`.
    pub fn tick(&mut self, now: Instant, ts: Timestamp, out: &mut Vec<NewEvent>) {
        while let Some(&Reverse((at, i))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let alarm = &mut self.alarms[i as usize];
            let before = alarm.saved();
            let t = alarm.core.fire(at);
            emit(alarm, &self.armed, t, ts, None, None, None, out);
            if alarm.saved() != before {
                self.dirty.alarm(i);
            }
        }
        self.tick_shelves(now, ts, out);
    }

    /// The next instant `tick` has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        match (timer, self.next_unshelve()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// An operator acknowledges an alarm.
    pub fn acknowledge(
        &mut self,
        _now: Instant,
        ts: Timestamp,
        key: &str,
        operator: &str,
        comment: Option<&str>,
        out: &mut Vec<NewEvent>,
    ) -> Result<(), AlarmError> {
        let Some(&i) = self.by_key.get(key) else {
            return Err(AlarmError::UnknownAlarm(key.to_string()));
        };
        let alarm = &mut self.alarms[i as usize];
        let t = alarm
            .core
            .acknowledge()
            .map_err(|_| AlarmError::NotUnacked(key.to_string()))?;
        self.dirty.alarm(i);
        tracing::info!(key, operator, state = ?alarm.core.state(), "alarm acknowledged");
        emit(
            alarm,
            &self.armed,
            t,
            ts,
            Some(operator),
            comment,
            None,
            out,
        );
        Ok(())
    }

    /// Alarms not in the normal state.
    pub fn active_count(&self) -> usize {
        self.alarms
            .iter()
            .filter(|a| a.core.state() != AlarmState::Normal)
            .count()
    }

    /// The state of the alarm with this key.
    pub fn state(&self, key: &str) -> Option<AlarmState> {
        self.by_key
            .get(key)
            .map(|&i| self.alarms[i as usize].core.state())
    }

    /// Every alarm not in the normal state, most urgent first. An alarm
    /// raised while its zone was disarmed (`record`) has priority 5 here
    /// too, as its events have.
    pub fn active(&self) -> Vec<AlarmView> {
        let mut list: Vec<AlarmView> = self
            .by_urgency
            .iter()
            .map(|&i| &self.alarms[i as usize])
            .filter(|a| a.core.state() != AlarmState::Normal)
            .map(|a| AlarmView {
                key: a.def.key.clone(),
                state: a.core.state(),
                priority: if a.quiet {
                    Priority::INFO
                } else {
                    a.def.priority
                },
                category: a.def.category,
                message: a.def.message.clone(),
                latched: a.core.latching(),
                zone_disarmed: a.quiet,
            })
            .collect();
        // Stable: within a priority, the order stays by key.
        list.sort_by_key(|a| a.priority);
        list
    }

    /// The states worth keeping across a restart in the whole-engine format
    /// of earlier versions: every alarm not in normal, as JSON
    /// (`{"version": 1, "alarms": [{"key", "state", "condition"}]}`).
    /// The alarm task saves [`dirty_states`](Self::dirty_states) instead.
    pub fn snapshot(&self) -> serde_json::Value {
        let alarms = self
            .alarms
            .iter()
            .filter(|a| a.core.state() != AlarmState::Normal)
            .map(|a| {
                let (state, condition) = a.core.saved();
                SavedAlarm {
                    key: a.def.key.to_string(),
                    state,
                    condition,
                    shelved_until: a.shelved_until.map(|(_, ts)| ts),
                }
            })
            .collect();
        let offline_devices = self
            .devices
            .iter()
            .filter(|d| d.offline)
            .map(|d| d.id.to_string())
            .collect();
        serde_json::to_value(Snapshot {
            version: SNAPSHOT_VERSION,
            alarms,
            offline_devices,
        })
        .unwrap_or(serde_json::Value::Null)
    }

    /// Restore states saved by [`snapshot`](Self::snapshot) into a freshly
    /// built engine, before any reading. Returns how many alarms were
    /// restored. Every alarm and device restored is marked dirty, so the
    /// next [`dirty_states`](Self::dirty_states) holds them all (the
    /// migration to per-alarm states).
    ///
    /// Point alarms keep their state silently (the platform already knows
    /// it); their condition is unknown until the next good value, so a
    /// latched fire alarm stays in until acknowledged and an unacknowledged
    /// alarm still needs its acknowledgement. Keys no longer configured are
    /// skipped with a warning.
    ///
    /// Devices saved as offline stay offline, with their communication-loss
    /// alarms, until the caller reports them online (the alarm task does so
    /// at a restored-offline device's first answer): a restart neither
    /// repeats `device.offline` nor hides that the device came back.
    pub fn restore(&mut self, snapshot: &serde_json::Value) -> Result<usize, AlarmError> {
        let snap =
            Snapshot::deserialize(snapshot).map_err(|e| AlarmError::Snapshot(e.to_string()))?;
        if snap.version != SNAPSHOT_VERSION {
            return Err(AlarmError::Snapshot(format!(
                "version {} (this gateway reads {SNAPSHOT_VERSION})",
                snap.version
            )));
        }
        for id in &snap.offline_devices {
            match self.restore_offline(id) {
                Some(di) => self.dirty.device(di),
                None => tracing::warn!(device = %id, "saved offline device no longer configured"),
            }
        }
        let mut restored = 0;
        for saved in snap.alarms {
            let state = SavedState {
                state: saved.state,
                condition: saved.condition,
                shelved_until: saved.shelved_until,
            };
            match self.restore_alarm(&saved.key, state) {
                Some(i) => {
                    self.dirty.alarm(i);
                    restored += 1;
                }
                None => {
                    tracing::warn!(key = %saved.key, state = ?saved.state, "saved alarm no longer configured; dropped")
                }
            }
        }
        Ok(restored)
    }

    /// Restore the per-alarm and per-device states saved from
    /// [`dirty_states`](Self::dirty_states) (journal names and data, as
    /// loaded under [`ALARM_STATE_PREFIX`] and [`OFFLINE_STATE_PREFIX`])
    /// into a freshly built engine, before any reading; as
    /// [`restore`](Self::restore) does, but only states repaired on the
    /// way are marked dirty (the rest is saved already): a shelf on an
    /// alarm that is now life-safety, a non-latching alarm saved active
    /// with its condition gone, and the like.
    ///
    /// States of alarms or devices no longer configured are listed in
    /// [`Restored::stale`] for the caller to remove; unreadable ones are
    /// skipped (logged) and left alone.
    pub fn restore_states(
        &mut self,
        alarms: &[(String, Vec<u8>)],
        offline: &[(String, Vec<u8>)],
    ) -> Restored {
        let mut out = Restored::default();
        for (name, data) in offline {
            let Some(id) = name.strip_prefix(OFFLINE_STATE_PREFIX) else {
                continue;
            };
            match serde_json::from_slice::<SavedDevice>(data) {
                Ok(SavedDevice { offline: false }) => {}
                Ok(SavedDevice { offline: true }) => match self.restore_offline(id) {
                    Some(_) => out.offline_devices += 1,
                    None => {
                        tracing::warn!(device = %id, "saved offline device no longer configured");
                        out.stale.push(name.clone());
                    }
                },
                Err(e) => {
                    tracing::error!(device = %id, error = %e, "saved device state unreadable; skipped")
                }
            }
        }
        for (name, data) in alarms {
            let Some(key) = name.strip_prefix(ALARM_STATE_PREFIX) else {
                continue;
            };
            let saved = match serde_json::from_slice::<SavedState>(data) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(key, error = %e, "saved alarm state unreadable; skipped");
                    continue;
                }
            };
            let state = saved.state;
            let want = match state {
                AlarmState::Normal => (AlarmState::Normal, false, None),
                _ => (state, saved.condition, saved.shelved_until),
            };
            match self.restore_alarm(key, saved) {
                Some(i) => {
                    out.alarms += 1;
                    if self.alarms[i as usize].saved() != want {
                        self.dirty.alarm(i);
                    }
                }
                None => {
                    tracing::warn!(key, state = ?state, "saved alarm no longer configured; dropped");
                    out.stale.push(name.clone());
                }
            }
        }
        out
    }

    /// Put one saved alarm back; its index, `None` if not configured.
    fn restore_alarm(&mut self, key: &str, saved: SavedState) -> Option<u32> {
        let &i = self.by_key.get(key)?;
        let alarm = &mut self.alarms[i as usize];
        match (saved.state, saved.shelved_until) {
            (AlarmState::Shelved, Some(until)) if !alarm.def.life_safety => {
                alarm.core.restore_shelved(saved.condition);
                alarm.shelved_until = Some((None, until));
                if !self.shelved.contains(&i) {
                    self.shelved.push(i);
                }
            }
            _ => alarm.core.restore(saved.state, saved.condition),
        }
        tracing::info!(key, state = ?alarm.core.state(), "alarm state restored");
        Some(i)
    }

    /// Mark a saved-offline device offline again; its index, `None` if not
    /// configured.
    fn restore_offline(&mut self, id: &str) -> Option<usize> {
        let di = self.devices.iter().position(|d| &*d.id == id)?;
        self.devices[di].offline = true;
        Some(di)
    }

    /// The saved states of what changed since the last
    /// [`clear_dirty`](Self::clear_dirty), as journal state changes: for
    /// each changed alarm `alarm/<key>` with its state, or `None` (remove)
    /// once it is back to normal; for each device whose offline flag
    /// changed `offline/<device>`, or `None` once it is online. The alarm
    /// task records them with the events of the change.
    pub fn dirty_states(&self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut out = Vec::with_capacity(self.dirty.alarms.len() + self.dirty.devices.len());
        for &di in &self.dirty.devices {
            let d = &self.devices[di as usize];
            let data = match d.offline {
                true => match encode(&SavedDevice { offline: true }) {
                    Some(v) => Some(v),
                    None => continue,
                },
                false => None,
            };
            out.push((format!("{OFFLINE_STATE_PREFIX}{}", d.id), data));
        }
        for &i in &self.dirty.alarms {
            let a = &self.alarms[i as usize];
            let data = match a.saved() {
                (AlarmState::Normal, ..) => None,
                (state, condition, shelved_until) => match encode(&SavedState {
                    state,
                    condition,
                    shelved_until,
                }) {
                    Some(v) => Some(v),
                    None => continue,
                },
            };
            out.push((format!("{ALARM_STATE_PREFIX}{}", a.def.key), data));
        }
        out
    }

    /// Something changed since the last [`clear_dirty`](Self::clear_dirty).
    pub fn has_dirty(&self) -> bool {
        !self.dirty.alarms.is_empty() || !self.dirty.devices.is_empty()
    }

    /// Some alarm's saved fields (its state among them) changed since the
    /// last [`clear_dirty`](Self::clear_dirty): [`active`](Self::active)
    /// may differ.
    pub fn alarms_dirty(&self) -> bool {
        !self.dirty.alarms.is_empty()
    }

    /// The [`dirty_states`](Self::dirty_states) are saved: start afresh.
    pub fn clear_dirty(&mut self) {
        self.dirty.clear();
    }

    /// Drop timers at the top of the heap that no alarm waits for any more,
    /// so that `next_deadline` does not wake the task for nothing.
    fn prune_timers(&mut self) {
        while let Some(&Reverse((at, i))) = self.timers.peek() {
            if self.alarms[i as usize].core.pending() == Some(at) {
                break;
            }
            self.timers.pop();
        }
    }
}

/// A saved state's data: compact JSON of the small struct. Encoding these
/// plain structs cannot fail; if it did (`None`, logged), the change is
/// left out and the previous saved state stays.
fn encode<T: serde::Serialize>(saved: &T) -> Option<Vec<u8>> {
    match serde_json::to_vec(saved) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a saved alarm state");
            None
        }
    }
}

/// Hysteresis must be a finite number ≥ 0 (validation says so); anything
/// else is taken as 0.
fn sane_hysteresis(h: f64) -> f64 {
    if h.is_finite() && h > 0.0 {
        h
    } else {
        0.0
    }
}

/// Is the alarm's zone disarmed, for a rule that arming applies to?
fn zone_disarmed(d: &AlarmDef, armed: &ArmedZones) -> bool {
    !d.life_safety
        && d.when_disarmed != WhenDisarmed::Raise
        && d.zone.as_deref().is_some_and(|z| !armed.is_armed(z))
}

/// Turn transitions into contract events.
#[allow(clippy::too_many_arguments)]
fn emit(
    alarm: &mut Alarm,
    armed: &ArmedZones,
    transitions: Transitions,
    ts: Timestamp,
    operator: Option<&str>,
    comment: Option<&str>,
    detail: Option<serde_json::Value>,
    out: &mut Vec<NewEvent>,
) {
    if transitions.is_empty() {
        return;
    }
    let disarmed = zone_disarmed(&alarm.def, armed);
    for t in transitions.iter() {
        if t.kind == EventKind::AlarmRaised {
            alarm.quiet = disarmed;
        }
        let d = &alarm.def;
        let operator = matches!(
            t.kind,
            EventKind::AlarmAcknowledged | EventKind::AlarmShelved
        )
        .then_some(operator)
        .flatten();
        let (priority, detail) = if alarm.quiet {
            let mut v = detail.clone().unwrap_or_else(|| serde_json::json!({}));
            if let Some(o) = v.as_object_mut() {
                o.insert("zone_disarmed".into(), serde_json::json!(true));
                o.insert("rule_priority".into(), serde_json::json!(d.priority.get()));
            }
            (Priority::INFO, Some(v))
        } else {
            (d.priority, detail.clone())
        };
        // The info line is the task's "event recorded", once durable.
        tracing::debug!(
            key = %d.key,
            kind = t.kind.as_str(),
            state = ?t.state,
            priority = priority.get(),
            "alarm transition"
        );
        let event = NewEvent {
            ts,
            kind: t.kind,
            priority,
            category: d.category,
            source: Source {
                device: Some(d.device.to_string()),
                point: d.point.as_deref().map(str::to_string),
                zone: d.zone.as_deref().map(str::to_string),
            },
            alarm: Some(AlarmInfo {
                key: d.key.to_string(),
                state: t.state,
                value: alarm
                    .value
                    .map(|v| v.to_json())
                    .unwrap_or(serde_json::Value::Null),
                message: d.message.to_string(),
                operator: operator.map(str::to_string),
                comment: operator.and(comment).map(str::to_string),
                latched: alarm.core.latching(),
            }),
            attachments: Vec::new(),
            detail,
        };
        // The alarm keeps its own life cycle (raised, acknowledged,
        // cleared); the platform also learns that the gateway itself was
        // opened, under the contract's kind for it.
        let tamper = (d.tamper && t.kind == EventKind::AlarmRaised).then(|| NewEvent {
            kind: EventKind::GatewayTamper,
            ..event.clone()
        });
        out.push(event);
        out.extend(tamper);
    }
    if alarm.core.state() == AlarmState::Normal {
        alarm.quiet = false;
    }
}

/// Config checks of `when_disarmed`: life safety is never disarmed.
pub fn validate_arming(c: &crate::config::Config) -> Vec<(crate::config::KeyPath, String)> {
    let mut out = Vec::new();
    for (ai, a) in c.alarms.iter().enumerate() {
        let Some(w) = a.when_disarmed else { continue };
        if w == WhenDisarmed::Raise {
            continue;
        }
        let device_category = a
            .point
            .split_once('/')
            .and_then(|(dev, _)| c.devices.iter().find(|d| d.id == dev))
            .map(|d| d.category);
        let category = a.category.or(device_category);
        if category.is_some_and(|c| c.is_life_safety()) || a.priority == Priority::LIFE_SAFETY {
            out.push((
                crate::config::KeyPath::root()
                    .key("alarms")
                    .index(ai)
                    .key("when_disarmed"),
                "fire and priority-1 (panic) alarms are never disarmable: remove when_disarmed or set it to \"raise\"".into(),
            ));
        }
    }
    out
}
