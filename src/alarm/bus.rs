//! A poll's values applied to the alarm task's consumers: the alarm
//! engine, the telemetry filter and the live view.
//!
//! [`readings`] takes decoded values. [`confirmed`] takes a driver's
//! [`Confirmation`] that a device answered exactly as before and has the
//! same effect as `readings` with those values: when the alarm task holds
//! them (it applied the device's previous message), only the points a rule
//! watches are decoded (a reading can fire a delay that ran out or meet a
//! changed arming state), the telemetry filter re-offers its own copy (one
//! time stamp for the whole device while it is steady), and the live view
//! takes the new timestamp; otherwise (a new alarm task after a reload, a
//! device that was offline) every value is decoded and applied as
//! `readings`.
//!
//! [`Devices`] is the alarm task's handling of one bus message: which
//! device is offline, and whether the targets hold a device's values.
//! `Readings` of all of a device's points make it held; `Readings` of some
//! (an endpoint sends only the requests whose replies changed) leave it as
//! it was, since the other points' values are held only if they were.
//! Values carried over from a previous alarm task (a reload) are applied
//! with [`Devices::carried`] and are never held: that task may have missed
//! a message of the device, so the first `Confirmed` after a reload is
//! decoded in full.

use super::live::{LiveView, Sample};
use super::{AlarmEngine, PointsFault};
use crate::config::LoadedConfig;
use crate::event::{NewEvent, Timestamp};
use crate::point::{BusMessage, Confirmation, PointIndex, Quality, Reading};
use crate::status::GatewayStatus;
use crate::telemetry::TelemetryFilter;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// The alarm task's per-device bookkeeping, by device index.
#[derive(Debug)]
pub(super) struct Devices {
    index: HashMap<Arc<str>, usize>,
    /// The device is offline (its points are bad).
    offline: Vec<bool>,
    /// The targets applied the device's last message, which came from its
    /// driver (a driver's `Confirmed` repeats it), and nothing of the
    /// device since. Never true while the device is offline: the task
    /// starts with nothing held, and `DeviceStatus` clears it.
    held: Vec<bool>,
    /// Points of each device in the table: `Readings` of fewer (a driver
    /// sends only the requests that changed) leave the others as they
    /// were, so they make the device held only if it was.
    points: Vec<usize>,
    /// Points of each device that alarm rules watch, in table order;
    /// found on the device's first `Confirmed` (`None` before).
    watched: Vec<Option<Box<[PointIndex]>>>,
    /// Points whose last reading was not a number ([`Value::is_number`]),
    /// logged once when they start and when they stop.
    not_numbers: Vec<PointIndex>,
}

impl Devices {
    /// Devices of `cfg`, `offline` as restored (one entry per device),
    /// none held.
    pub fn new(cfg: &LoadedConfig, offline: Vec<bool>) -> Devices {
        let n = cfg.config.devices.len();
        debug_assert_eq!(offline.len(), n);
        Devices {
            index: cfg
                .config
                .devices
                .iter()
                .enumerate()
                .map(|(i, d)| (Arc::from(d.id.as_str()), i))
                .collect(),
            offline,
            held: vec![false; n],
            points: {
                let mut points = vec![0; n];
                for (_, m) in cfg.points.iter() {
                    if let Some(c) = points.get_mut(m.device_index) {
                        *c += 1;
                    }
                }
                points
            },
            watched: vec![None; n],
            not_numbers: Vec::new(),
        }
    }

    /// Apply one bus message to the targets; `status` counts devices
    /// online and offline.
    pub fn apply(
        &mut self,
        cfg: &LoadedConfig,
        status: &GatewayStatus,
        t: &mut Targets<'_>,
        now: Instant,
        msg: &BusMessage,
    ) {
        match msg {
            BusMessage::Readings {
                device,
                ts,
                readings: values,
                ..
            } => {
                let all = self
                    .index
                    .get(&**device)
                    .is_some_and(|&di| values.len() >= self.points[di]);
                self.answered(device, status, t, now, *ts, |held| held || all);
                self.judge_numbers(cfg, t, now, *ts, values);
                readings(t, now, *ts, values);
            }
            BusMessage::Confirmed {
                device, ts, points, ..
            } => {
                let held = self.answered(device, status, t, now, *ts, |_| true);
                if held {
                    let watched = self.watched(cfg, t.engine, device);
                    confirmed(t, now, *ts, &**points, watched);
                } else {
                    // The values are new to the targets (the task's first
                    // message of the device, or after carried values):
                    // decoded and judged as readings.
                    let decoded: Vec<Reading> = (0..points.count())
                        .filter_map(|i| {
                            Some(Reading {
                                point: points.point(i)?,
                                value: points.value(i)?,
                            })
                        })
                        .collect();
                    self.judge_numbers(cfg, t, now, *ts, &decoded);
                    readings(t, now, *ts, &decoded);
                }
            }
            BusMessage::DeviceStatus {
                device,
                ts,
                online,
                reason,
            } => {
                let Some(&di) = self.index.get(&**device) else {
                    return;
                };
                // Values of the device come as `Readings` again.
                self.held[di] = false;
                if self.offline[di] != *online {
                    return;
                }
                self.set_online(di, *online, status);
                t.engine
                    .on_device_status(now, *ts, di, *online, reason.as_deref(), t.out);
                if !online {
                    // Every point of the device goes bad.
                    for (pi, meta) in cfg.points.iter() {
                        if meta.device_index == di {
                            bad(t, now, *ts, pi);
                        }
                    }
                }
            }
            BusMessage::Unreadable {
                device,
                ts,
                points,
                reason,
            } => {
                let Some(&di) = self.index.get(&**device) else {
                    return;
                };
                let reason = (!points.is_empty()).then(|| {
                    reason
                        .as_deref()
                        .unwrap_or("the device refuses to read some points")
                });
                t.engine
                    .on_points_fault(now, *ts, di, PointsFault::Refused, reason, t.out);
                // The points read again come in the readings.
                for &pi in points {
                    bad(t, now, *ts, pi);
                }
            }
            // The relay's own mark; a feed never hands it on.
            BusMessage::Handover { .. } => {}
        }
    }

    /// Apply a device's values carried over from a previous alarm task:
    /// as readings, not held (a `Confirmed` that follows is decoded).
    pub fn carried(
        &mut self,
        cfg: &LoadedConfig,
        status: &GatewayStatus,
        t: &mut Targets<'_>,
        now: Instant,
        c: &Carried,
    ) {
        self.answered(&c.device, status, t, now, c.ts, |_| false);
        self.judge_numbers(cfg, t, now, c.ts, &c.readings);
        readings(t, now, c.ts, &c.readings);
    }

    /// A point whose device starts sending a value that is not a number
    /// (its quality turns bad: [`crate::point::judged`]) is logged, and
    /// again when it sends numbers again; once each, not every poll.
    /// While a device sends such values for any of its points, part of it
    /// is unwatched: the engine is told ([`PointsFault::NotNumbers`]), so
    /// that a life-safety device's communication-loss alarm is active.
    fn judge_numbers(
        &mut self,
        cfg: &LoadedConfig,
        t: &mut Targets<'_>,
        now: Instant,
        ts: Timestamp,
        values: &[Reading],
    ) {
        for r in values {
            let number = r.value.is_number();
            if number && self.not_numbers.is_empty() {
                continue;
            }
            let Some(meta) =
                ((r.point as usize) < cfg.points.len()).then(|| cfg.points.get(r.point))
            else {
                continue;
            };
            let listed = self.not_numbers.iter().position(|&p| p == r.point);
            match (number, listed) {
                (false, None) => {
                    self.not_numbers.push(r.point);
                    tracing::warn!(
                        point = %meta.key,
                        value = ?r.value,
                        "the device sends a value that is not a number: the point is bad \
                         (a broken sensor, or a register that holds no float)"
                    );
                }
                (true, Some(i)) => {
                    self.not_numbers.swap_remove(i);
                    tracing::info!(point = %meta.key, "the device sends numbers again");
                }
                _ => continue,
            }
            // The device's first such point, or its last: tell the engine.
            let di = meta.device_index;
            let others = self
                .not_numbers
                .iter()
                .any(|&p| p != r.point && cfg.points.get(p).device_index == di);
            if !others {
                let reason = (!number).then(|| {
                    format!(
                        "the device sends a value that is not a number for {}",
                        meta.key
                    )
                });
                t.engine.on_points_fault(
                    now,
                    ts,
                    di,
                    PointsFault::NotNumbers,
                    reason.as_deref(),
                    t.out,
                );
            }
        }
    }

    /// Values of `device` arrive at `ts`: an offline device is online
    /// again. Whether the targets held the device's values before; they
    /// hold them after when `holds(held before)`.
    fn answered(
        &mut self,
        device: &str,
        status: &GatewayStatus,
        t: &mut Targets<'_>,
        now: Instant,
        ts: Timestamp,
        holds: impl FnOnce(bool) -> bool,
    ) -> bool {
        let Some(&di) = self.index.get(device) else {
            return false;
        };
        if self.offline[di] {
            // Offline before a restart; answering now.
            self.set_online(di, true, status);
            t.engine.on_device_status(now, ts, di, true, None, t.out);
        }
        let before = self.held[di];
        self.held[di] = holds(before);
        before
    }

    /// The points of `device` that alarm rules watch (see `watched`).
    fn watched(&mut self, cfg: &LoadedConfig, engine: &AlarmEngine, device: &str) -> &[PointIndex] {
        let Some(&di) = self.index.get(device) else {
            return &[];
        };
        self.watched[di].get_or_insert_with(|| {
            cfg.points
                .iter()
                .filter(|(pi, meta)| meta.device_index == di && engine.watches(*pi))
                .map(|(pi, _)| pi)
                .collect()
        })
    }

    fn set_online(&mut self, di: usize, online: bool, status: &GatewayStatus) {
        self.offline[di] = !online;
        let (up, down) = (&status.devices_online, &status.devices_offline);
        if online {
            up.fetch_add(1, Ordering::Relaxed);
            down.fetch_sub(1, Ordering::Relaxed);
        } else {
            up.fetch_sub(1, Ordering::Relaxed);
            down.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The last values of a device, carried over from a previous alarm task
/// (a reload keeps the device's driver running).
#[derive(Clone, Debug, PartialEq)]
pub struct Carried {
    pub device: Arc<str>,
    /// When the values were read.
    pub ts: Timestamp,
    /// In the new point table's indices.
    pub readings: Vec<Reading>,
}

/// Where a poll's values go.
pub(super) struct Targets<'a> {
    pub engine: &'a mut AlarmEngine,
    /// `None` while telemetry is off.
    pub telemetry: Option<&'a mut TelemetryFilter>,
    pub live: Option<&'a LiveView>,
    /// The engine's events.
    pub out: &'a mut Vec<NewEvent>,
}

/// Point `pi` has no value from `ts` on (its device is offline, or
/// refuses to read it): bad.
fn bad(t: &mut Targets<'_>, now: Instant, ts: Timestamp, pi: PointIndex) {
    if let Some(l) = t.live {
        let bad = Sample {
            value: None,
            quality: Quality::Bad,
            ts,
        };
        l.set_values([(pi, bad)]);
    }
    t.engine.on_reading(now, ts, pi, None, Quality::Bad, t.out);
    if let Some(f) = t.telemetry.as_deref_mut() {
        f.offer(now, ts, pi, None, Quality::Bad);
    }
}

/// Apply decoded readings, good, at `ts`.
pub(super) fn readings(t: &mut Targets<'_>, now: Instant, ts: Timestamp, readings: &[Reading]) {
    if let Some(l) = t.live {
        l.set_values(readings.iter().map(|r| {
            (
                r.point,
                Sample {
                    value: Some(r.value),
                    quality: Quality::Good,
                    ts,
                },
            )
        }));
    }
    for r in readings {
        t.engine
            .on_reading(now, ts, r.point, Some(r.value), Quality::Good, t.out);
        if let Some(f) = t.telemetry.as_deref_mut() {
            f.offer(now, ts, r.point, Some(r.value), Quality::Good);
        }
    }
}

/// Apply a confirmation at `ts` whose values the targets hold (they
/// applied the device's previous message and nothing of the device
/// since): the same as [`readings`] with the confirmed values.
/// `watched`: the device's points that alarm rules watch.
pub(super) fn confirmed(
    t: &mut Targets<'_>,
    now: Instant,
    ts: Timestamp,
    c: &dyn Confirmation,
    watched: &[PointIndex],
) {
    if let Some(l) = t.live {
        l.confirm(ts, c);
    }
    // Rules see every confirmed value (on-delays, off-delays run on them),
    // in the confirmation's order; only the watched points are looked at.
    let mut rule = |i: usize, point: PointIndex| {
        if let Some(v) = c.value(i) {
            t.engine
                .on_reading(now, ts, point, Some(v), Quality::Good, t.out);
        }
    };
    if let [point] = watched {
        // The common case, without a list.
        if let Some(i) = c.index_of(*point) {
            rule(i, *point);
        }
    } else {
        let mut seen: Vec<(usize, PointIndex)> = watched
            .iter()
            .filter_map(|&p| Some((c.index_of(p)?, p)))
            .collect();
        seen.sort_unstable_by_key(|(i, _)| *i);
        for (i, point) in seen {
            rule(i, point);
        }
    }
    if let Some(f) = t.telemetry.as_deref_mut() {
        f.confirm_all(now, ts, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arming::ArmedZones;
    use crate::config::{load_str, LoadedConfig};
    use crate::point::{PointIndex, Value};
    use proptest::prelude::*;
    use serde_json::Value as Json;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    const CONFIG: &str = r#"
[site]
id = "palm-bay"
gateway = "gw-north-1"

[uplink]
host = "127.0.0.1"

[telemetry]
max_interval_s = 3
batch_s = 0.5
deadband = 1
max_points_per_message = 4
EVERY_POLL

[[devices]]
id = "fence"
category = "perimeter"
zone = "perimeter-north"
[devices.modbus]
host = "127.0.0.1"
[[devices.points]]
id = "zone-1"
register = "discrete_input"
address = 0
[[devices.points]]
id = "zone-2"
register = "discrete_input"
address = 1
[[devices.points]]
id = "temp"
register = "holding"
address = 0
type = "f32"
[[devices.points]]
id = "status"
register = "holding"
address = 2
type = "u16"
[[devices.points]]
id = "spare"
register = "holding"
address = 3
type = "u16"

[[devices]]
id = "fire-panel"
category = "fire"
life_safety = true
zone = "villa-12"
[devices.modbus]
host = "127.0.0.1"
port = 5021
[[devices.points]]
id = "loop-1"
register = "coil"
address = 0
[[devices.points]]
id = "count"
register = "holding"
address = 0
type = "u16"

[[alarms]]
point = "fence/zone-1"
equals = true
priority = 2
on_delay_s = 2
off_delay_s = 3
when_disarmed = "ignore"
message = "Fence zone 1 cut"

[[alarms]]
point = "fence/temp"
high = 1.0
hysteresis = 1.5
priority = 3
message = "Too hot"

[[alarms]]
point = "fence/status"
equals = 2
priority = 3
on_delay_s = 1
message = "Fault"

[[alarms]]
point = "fire-panel/loop-1"
equals = true
priority = 1
message = "Smoke loop 1"
"#;

    /// What the alarm task keeps, fed by the alarm task's own handling
    /// of bus messages ([`Devices`]).
    struct Side {
        engine: AlarmEngine,
        telemetry: TelemetryFilter,
        live: LiveView,
        out: Vec<NewEvent>,
        devices: Devices,
        status: GatewayStatus,
    }

    impl Side {
        fn new(cfg: &LoadedConfig) -> Side {
            Side {
                engine: AlarmEngine::new(cfg),
                telemetry: TelemetryFilter::new(cfg),
                live: LiveView::new(&cfg.points),
                out: Vec::new(),
                devices: Devices::new(cfg, vec![false; cfg.config.devices.len()]),
                status: GatewayStatus::new(cfg.config.devices.len() as u64),
            }
        }

        /// A new alarm task after a reload, given the previous task's
        /// last good values (as the app carries them).
        fn reloaded(cfg: &LoadedConfig, now: Instant, old: &Side) -> Side {
            let mut side = Side::new(cfg);
            let mut by_device: std::collections::BTreeMap<(usize, i64), Vec<Reading>> =
                Default::default();
            for (pi, s) in old.live.values().into_iter().enumerate() {
                if let Some(Sample {
                    value: Some(value),
                    quality: Quality::Good,
                    ts,
                }) = s
                {
                    let d = cfg.points.get(pi as PointIndex).device_index;
                    by_device
                        .entry((d, ts.0.timestamp_millis()))
                        .or_default()
                        .push(Reading {
                            point: pi as PointIndex,
                            value,
                        });
                }
            }
            for ((d, ms), readings) in by_device {
                let c = Carried {
                    device: cfg.config.devices[d].id.as_str().into(),
                    ts: Timestamp::from_unix_ms(ms).unwrap(),
                    readings,
                };
                side.devices.carried(
                    cfg,
                    &side.status,
                    &mut Targets {
                        engine: &mut side.engine,
                        telemetry: Some(&mut side.telemetry),
                        live: Some(&side.live),
                        out: &mut side.out,
                    },
                    now,
                    &c,
                );
            }
            side
        }

        /// The alarm task's handling of one bus message.
        fn apply(&mut self, cfg: &LoadedConfig, now: Instant, m: &Msg) {
            let device: Arc<str> = cfg.config.devices[m.device].id.as_str().into();
            let ts = m.ts;
            let msg = match &m.body {
                Body::Status(online) => BusMessage::DeviceStatus {
                    device,
                    ts,
                    online: *online,
                    reason: None,
                },
                Body::Values {
                    values,
                    confirm: true,
                } => BusMessage::Confirmed {
                    device,
                    ts,
                    replied_at: now,
                    points: Arc::new(values.clone()),
                },
                Body::Values {
                    values,
                    confirm: false,
                } => BusMessage::Readings {
                    device,
                    ts,
                    replied_at: now,
                    readings: values
                        .iter()
                        .map(|&(point, value)| Reading { point, value })
                        .collect(),
                },
            };
            let mut t = Targets {
                engine: &mut self.engine,
                telemetry: Some(&mut self.telemetry),
                live: Some(&self.live),
                out: &mut self.out,
            };
            self.devices.apply(cfg, &self.status, &mut t, now, &msg);
        }

        /// Events, telemetry and live values due at `now`.
        fn observe(
            &mut self,
            now: Instant,
            ts: Timestamp,
        ) -> (Vec<NewEvent>, Vec<Vec<u8>>, Vec<Option<Sample>>) {
            self.engine.tick(now, ts, &mut self.out);
            let mut payloads = Vec::new();
            while let Some(p) = self.telemetry.take_due(now) {
                payloads.push(p);
            }
            (std::mem::take(&mut self.out), payloads, self.live.values())
        }
    }

    struct Msg {
        device: usize,
        ts: Timestamp,
        body: Body,
    }

    enum Body {
        Status(bool),
        Values {
            values: Vec<(PointIndex, Value)>,
            confirm: bool,
        },
    }

    /// Points of device `d` with values drawn from a few (repeats common).
    fn values_of(cfg: &LoadedConfig, d: usize, draw: &[u8]) -> Vec<(PointIndex, Value)> {
        cfg.points
            .iter()
            .filter(|(_, m)| m.device_index == d)
            .enumerate()
            .map(|(k, (pi, m))| {
                let x = draw.get(k).copied().unwrap_or(0) % 3;
                let v = match &*m.point {
                    "zone-1" | "zone-2" | "loop-1" => Value::Bool(x == 1),
                    "temp" => Value::Float(x as f64 * 1.2),
                    _ => Value::Int(x as i64),
                };
                (pi, v)
            })
            .collect()
    }

    proptest! {
        /// Confirming unchanged polls (as the Modbus endpoint does) has
        /// exactly the effect of sending them as readings: the same events
        /// (timers, arming changes, hysteresis), the same telemetry
        /// payloads, the same live values and timestamps, in both
        /// telemetry modes, across device outages and a new alarm task
        /// (a reload) that holds no values or the old task's last values,
        /// which may be older than what the endpoint last sent.
        #[test]
        fn confirmations_equal_readings(
            every_poll in any::<bool>(),
            steps in proptest::collection::vec(
                (0u64..1500, 0u8..14, 0usize..2, proptest::collection::vec(any::<u8>(), 5)),
                1..150,
            ),
        ) {
            let text = CONFIG.replace("EVERY_POLL", &format!("every_poll = {every_poll}"));
            let cfg = load_str(&text, Path::new("t.toml")).unwrap();
            let mut slow = Side::new(&cfg);
            let mut fast = Side::new(&cfg);
            let t0 = Instant::now();
            // The device's state and what its endpoint last sent.
            let mut device_values: Vec<Vec<(PointIndex, Value)>> =
                (0..2).map(|d| values_of(&cfg, d, &[0; 5])).collect();
            let mut sent: Vec<Option<Vec<(PointIndex, Value)>>> = vec![None, None];
            let mut down = [false, false];
            let mut ms = 0u64;
            for (dt, op, d, draw) in steps {
                ms += dt;
                let now = t0 + Duration::from_millis(ms);
                let ts = Timestamp::from_unix_ms(1_795_813_445_000 + ms as i64).unwrap();
                let mut msgs = Vec::new();
                match op {
                    // A poll: values change now and then.
                    0..=5 => {
                        if op == 0 {
                            device_values[d] = values_of(&cfg, d, &draw);
                        }
                        if down[d] {
                            down[d] = false;
                            msgs.push((Body::Status(true), Body::Status(true)));
                        }
                        let values = device_values[d].clone();
                        let confirm = sent[d].as_ref() == Some(&values);
                        sent[d] = Some(values.clone());
                        msgs.push((
                            Body::Values { values: values.clone(), confirm: false },
                            Body::Values { values, confirm },
                        ));
                    }
                    // The device goes offline: the endpoint forgets.
                    6 => {
                        sent[d] = None;
                        if !down[d] {
                            down[d] = true;
                            msgs.push((Body::Status(false), Body::Status(false)));
                        }
                    }
                    // A write, a new link: the endpoint forgets.
                    7 => sent[d] = None,
                    // Arming changes.
                    8 => {
                        let disarmed = ["perimeter-north"];
                        let z = Arc::new(ArmedZones::with_disarmed(
                            disarmed.iter().copied().take(draw[0] as usize % 2),
                        ));
                        slow.engine.set_armed_zones(now, ts, z.clone(), &mut slow.out);
                        fast.engine.set_armed_zones(now, ts, z, &mut fast.out);
                    }
                    // A new alarm task (reload): the endpoint keeps its
                    // replies, the task holds nothing.
                    9 => {
                        slow = Side::new(&cfg);
                        fast = Side::new(&cfg);
                    }
                    // A reload that carries the old task's last values.
                    10 => {
                        slow = Side::reloaded(&cfg, now, &slow);
                        fast = Side::reloaded(&cfg, now, &fast);
                    }
                    // The values change and the endpoint sends them, but
                    // the old task misses the message (it panicked, or the
                    // device's messages were dropped); then a reload
                    // carries what that task had.
                    11 if !down[d] => {
                        device_values[d] = values_of(&cfg, d, &draw);
                        sent[d] = Some(device_values[d].clone());
                        slow = Side::reloaded(&cfg, now, &slow);
                        fast = Side::reloaded(&cfg, now, &fast);
                    }
                    // Time passes.
                    _ => {}
                }
                for (a, b) in msgs {
                    slow.apply(&cfg, now, &Msg { device: d, ts, body: a });
                    fast.apply(&cfg, now, &Msg { device: d, ts, body: b });
                }
                // Ticks a little after the messages: a timer that ran out
                // before a reading fires with the reading's timestamp.
                let (ea, pa, la) = slow.observe(now, Timestamp(ts.0 + chrono::Duration::milliseconds(1)));
                let (eb, pb, lb) = fast.observe(now, Timestamp(ts.0 + chrono::Duration::milliseconds(1)));
                prop_assert_eq!(ea, eb);
                prop_assert_eq!(pa, pb);
                prop_assert_eq!(la, lb);
                prop_assert_eq!(slow.engine.snapshot(), fast.engine.snapshot());
            }
        }
    }

    /// `Readings` of some points (an endpoint sends only the requests that
    /// changed) keep the device held only if it was: after a reload that
    /// carried values older than the endpoint's, the next `Confirmed` is
    /// still decoded in full.
    #[test]
    fn readings_of_some_points_do_not_make_a_device_held() {
        let text = CONFIG.replace("EVERY_POLL", "every_poll = false");
        let cfg = load_str(&text, Path::new("t.toml")).unwrap();
        let t0 = Instant::now();
        let at = |ms: u64| {
            (
                t0 + Duration::from_millis(ms),
                Timestamp::from_unix_ms(1_795_813_445_000 + ms as i64).unwrap(),
            )
        };
        let values = |body: Body, ms: u64| {
            let (_, ts) = at(ms);
            Msg {
                device: 0,
                ts,
                body,
            }
        };
        let mut side = Side::new(&cfg);
        let old = values_of(&cfg, 0, &[0; 5]);
        let (now, _) = at(0);
        side.apply(
            &cfg,
            now,
            &values(
                Body::Values {
                    values: old.clone(),
                    confirm: false,
                },
                0,
            ),
        );
        // The endpoint sends new values that this task misses; a reload
        // carries the old ones.
        let mut new = values_of(&cfg, 0, &[1, 1, 2, 2, 2]);
        assert_ne!(old[1..], new[1..]);
        let (now, _) = at(1000);
        side = Side::reloaded(&cfg, now, &side);
        // Only the first point's request changes next; then a poll with
        // nothing changed, confirmed.
        new[0].1 = Value::Bool(false);
        let (now, _) = at(2000);
        side.apply(
            &cfg,
            now,
            &values(
                Body::Values {
                    values: new[..1].to_vec(),
                    confirm: false,
                },
                2000,
            ),
        );
        let (now, _) = at(3000);
        side.apply(
            &cfg,
            now,
            &values(
                Body::Values {
                    values: new.clone(),
                    confirm: true,
                },
                3000,
            ),
        );
        let live = side.live.values();
        for (point, value) in &new {
            assert_eq!(
                live[*point as usize].map(|s| s.value),
                Some(Some(*value)),
                "point {point}: the confirmation was taken as held"
            );
        }
    }

    /// The real alarm task, its live view and journal.
    mod task {
        use super::*;
        use crate::alarm::task::{run_with, Carried, Hooks};
        use crate::journal::{Journal, MemStorage};
        use serde_json::Value as Json;
        use tokio::sync::mpsc;

        pub(super) struct Run {
            pub cfg: Arc<LoadedConfig>,
            pub bus: mpsc::Sender<BusMessage>,
            pub live: Arc<LiveView>,
            pub journal: Journal,
            task: tokio::task::JoinHandle<()>,
            _dir: tempfile::TempDir,
        }

        pub(super) fn start(carried: Vec<Carried>) -> Run {
            let dir = tempfile::tempdir().unwrap();
            let text = CONFIG.replace("EVERY_POLL", "every_poll = true");
            let mut cfg = load_str(&text, Path::new("t.toml")).unwrap();
            cfg.config.journal.path = dir.path().to_path_buf();
            let journal = Journal::with_storage_and_wal(
                Arc::new(MemStorage::new()),
                Some(dir.path()),
                &cfg.config.journal,
                "gw",
                &["uplink"],
            )
            .unwrap();
            let cfg = Arc::new(cfg);
            let status = Arc::new(GatewayStatus::new(cfg.config.devices.len() as u64));
            let live = Arc::new(LiveView::new(&cfg.points));
            let (bus, bus_rx) = mpsc::channel(16);
            let (_requests, requests_rx) = mpsc::channel(1);
            let hooks = Hooks {
                live: Some(live.clone()),
                carried,
                ..Hooks::default()
            };
            let task = tokio::spawn(run_with(
                cfg.clone(),
                journal.clone(),
                status,
                bus_rx,
                requests_rx,
                hooks,
            ));
            Run {
                cfg,
                bus,
                live,
                journal,
                task,
                _dir: dir,
            }
        }

        impl Run {
            pub fn point(&self, key: &str) -> PointIndex {
                self.cfg.points.find(key).unwrap()
            }

            /// Close the bus and wait for the task to finish (it flushes
            /// telemetry).
            pub async fn stop(self) -> Stopped {
                drop(self.bus);
                self.task.await.unwrap();
                let events = self
                    .journal
                    .read_events(0, 1000)
                    .unwrap()
                    .into_iter()
                    .map(|e| serde_json::from_slice::<Json>(&e.payload).unwrap())
                    .collect();
                let telemetry = self
                    .journal
                    .read_telemetry(0, 1000)
                    .unwrap()
                    .into_iter()
                    .flat_map(|t| {
                        let j: Json = serde_json::from_slice(&t.payload).unwrap();
                        j["points"].as_array().unwrap().clone()
                    })
                    .collect();
                Stopped {
                    live: self.live.values(),
                    events,
                    telemetry,
                }
            }
        }

        pub(super) struct Stopped {
            pub live: Vec<Option<Sample>>,
            pub events: Vec<Json>,
            /// Every telemetry entry, in order.
            pub telemetry: Vec<Json>,
        }

        impl Stopped {
            /// The last telemetry entry of `device/point`: value, quality, ts.
            pub fn last_telemetry(&self, key: &str) -> (Json, String, String) {
                let (device, point) = key.split_once('/').unwrap();
                let e = self
                    .telemetry
                    .iter()
                    .rev()
                    .find(|e| e["device"] == device && e["point"] == point)
                    .unwrap_or_else(|| panic!("no telemetry of {key}"));
                (
                    e["value"].clone(),
                    e["quality"].as_str().unwrap().to_string(),
                    e["ts"].as_str().unwrap().to_string(),
                )
            }

            /// Every telemetry entry of the fence's `point`: value,
            /// quality, ts.
            pub fn telemetry_of(&self, point: &str) -> Vec<(Json, String, String)> {
                self.telemetry
                    .iter()
                    .filter(|e| e["point"] == point)
                    .map(|e| {
                        (
                            e["value"].clone(),
                            e["quality"].as_str().unwrap().to_string(),
                            e["ts"].as_str().unwrap().to_string(),
                        )
                    })
                    .collect()
            }

            pub fn kinds(&self) -> Vec<String> {
                self.events
                    .iter()
                    .map(|e| {
                        let kind = e["kind"].as_str().or(e["type"].as_str()).unwrap_or("?");
                        match e["alarm"]["key"].as_str() {
                            Some(k) => format!("{kind} {k}"),
                            None => kind.to_string(),
                        }
                    })
                    .collect()
            }
        }

        pub(super) fn ts(ms: i64) -> Timestamp {
            Timestamp::from_unix_ms(1_795_813_445_000 + ms).unwrap()
        }

        pub(super) fn confirmed(
            device: &str,
            ts: Timestamp,
            values: Vec<(PointIndex, Value)>,
        ) -> BusMessage {
            BusMessage::Confirmed {
                device: device.into(),
                ts,
                replied_at: Instant::now(),
                points: Arc::new(values),
            }
        }

        pub(super) fn readings(
            device: &str,
            ts: Timestamp,
            values: &[(PointIndex, Value)],
        ) -> BusMessage {
            BusMessage::Readings {
                device: device.into(),
                ts,
                replied_at: Instant::now(),
                readings: values
                    .iter()
                    .map(|&(point, value)| Reading { point, value })
                    .collect(),
            }
        }

        pub(super) fn status(device: &str, ts: Timestamp, online: bool) -> BusMessage {
            BusMessage::DeviceStatus {
                device: device.into(),
                ts,
                online,
                reason: (!online).then(|| "timeout".to_string()),
            }
        }

        pub(super) fn good(value: Value, ts: Timestamp) -> Option<Sample> {
            Some(Sample {
                value: Some(value),
                quality: Quality::Good,
                ts,
            })
        }
    }

    /// The fence's values: temperature, status and the spare register.
    fn fence(r: &task::Run, temp: f64, status: i64, spare: i64) -> Vec<(PointIndex, Value)> {
        vec![
            (r.point("fence/zone-1"), Value::Bool(false)),
            (r.point("fence/zone-2"), Value::Bool(false)),
            (r.point("fence/temp"), Value::Float(temp)),
            (r.point("fence/status"), Value::Int(status)),
            (r.point("fence/spare"), Value::Int(spare)),
        ]
    }

    /// After a reload the old task's last values are carried, but that task
    /// may have missed the device's last `Readings` (it panicked, or the
    /// device's messages were dropped): the first `Confirmed` is decoded in
    /// full, so the live view and telemetry show what the device sent, not
    /// the carried value with a fresh timestamp.
    #[tokio::test]
    async fn a_confirmation_after_carried_values_is_decoded() {
        let probe = task::start(Vec::new());
        let old = fence(&probe, 0.5, 0, 1);
        let now = fence(&probe, 0.5, 0, 9);
        drop(probe.stop().await);
        let carried = Carried {
            device: "fence".into(),
            ts: task::ts(0),
            readings: old
                .iter()
                .map(|&(point, value)| Reading { point, value })
                .collect(),
        };
        let r = task::start(vec![carried]);
        let spare = r.point("fence/spare");
        r.bus
            .send(task::confirmed("fence", task::ts(1000), now.clone()))
            .await
            .unwrap();
        r.bus
            .send(task::confirmed("fence", task::ts(2000), now.clone()))
            .await
            .unwrap();
        let done = r.stop().await;
        for &(point, value) in &now {
            assert_eq!(done.live[point as usize], task::good(value, task::ts(2000)));
        }
        assert_eq!(
            done.live[spare as usize].unwrap().value,
            Some(Value::Int(9))
        );
        let (value, quality, ts) = done.last_telemetry("fence/spare");
        assert_eq!(value, serde_json::json!(9));
        assert_eq!(quality, "good");
        assert_eq!(ts, task::ts(2000).to_string());
    }

    /// A value that is not a number (a broken sensor's NaN, a fault code's
    /// infinity) is no value, and bad, in the live view and telemetry, and
    /// judges no rule (`+inf` is above the `high` threshold), however it
    /// comes: as readings, confirmed while held, confirmed and decoded.
    #[tokio::test]
    async fn a_value_that_is_not_a_number_is_bad() {
        let r = task::start(Vec::new());
        let temp = r.point("fence/temp");
        let inf = fence(&r, f64::INFINITY, 0, 1);
        let nan = fence(&r, f64::NAN, 0, 1);
        for m in [
            task::readings("fence", task::ts(0), &inf),
            task::confirmed("fence", task::ts(1000), inf.clone()),
            task::readings("fence", task::ts(2000), &nan),
            task::confirmed("fence", task::ts(3000), nan.clone()),
            // A repeated status: the next confirmation is decoded.
            task::status("fence", task::ts(4000), true),
            task::confirmed("fence", task::ts(5000), inf.clone()),
        ] {
            r.bus.send(m).await.unwrap();
        }
        let done = r.stop().await;
        let temps = done.telemetry_of("temp");
        let bad = |ms| (Json::Null, "bad".to_string(), task::ts(ms).to_string());
        assert_eq!(temps, [bad(0), bad(1000), bad(2000), bad(3000), bad(5000)]);
        assert_eq!(done.kinds(), Vec::<String>::new(), "raised by no number");
        assert_eq!(
            done.live[temp as usize],
            Some(Sample {
                value: None,
                quality: Quality::Bad,
                ts: task::ts(5000),
            })
        );
        // The other points of the device are good.
        let spare = inf[4].0 as usize;
        assert_eq!(done.live[spare], task::good(Value::Int(1), task::ts(5000)));

        // A number after it is judged: above the threshold, raised.
        let r = task::start(Vec::new());
        let hot = fence(&r, 2.4, 0, 1);
        for m in [
            task::readings("fence", task::ts(0), &inf),
            task::readings("fence", task::ts(1000), &hot),
        ] {
            r.bus.send(m).await.unwrap();
        }
        let done = r.stop().await;
        assert_eq!(done.kinds(), ["alarm.raised fence/temp"]);
        assert_eq!(
            done.live[temp as usize],
            task::good(Value::Float(2.4), task::ts(1000))
        );
    }

    /// The fire panel refuses to read `points` from `ms` on (none: it
    /// reads everything again).
    fn refused(ms: i64, points: Vec<PointIndex>) -> BusMessage {
        BusMessage::Unreadable {
            device: "fire-panel".into(),
            ts: task::ts(ms),
            reason: (!points.is_empty())
                .then(|| "device exception 2 (illegal data address)".to_string()),
            points,
        }
    }

    /// Points a device refuses to read are bad while it does, and a
    /// life-safety device's communication-loss alarm is raised meanwhile
    /// (part of the fire panel goes unwatched); its other points are read.
    #[tokio::test]
    async fn points_a_device_refuses_to_read_are_bad_and_lose_communication() {
        let r = task::start(Vec::new());
        let (smoke, count) = (r.point("fire-panel/loop-1"), r.point("fire-panel/count"));
        let quiet = [(smoke, Value::Bool(false)), (count, Value::Int(0))];
        for m in [
            task::readings("fire-panel", task::ts(0), &quiet),
            refused(1000, vec![count]),
            task::confirmed("fire-panel", task::ts(2000), vec![quiet[0]]),
            refused(3000, vec![]),
            task::readings("fire-panel", task::ts(3000), &[(count, Value::Int(5))]),
        ] {
            r.bus.send(m).await.unwrap();
        }
        let done = r.stop().await;
        let bad = (Json::Null, "bad".to_string(), task::ts(1000).to_string());
        let counts = done.telemetry_of("count");
        assert!(counts.contains(&bad), "{counts:?}");
        assert_eq!(
            counts.last().unwrap(),
            &(
                serde_json::json!(5),
                "good".to_string(),
                task::ts(3000).to_string()
            )
        );
        assert_eq!(
            done.live[smoke as usize],
            task::good(Value::Bool(false), task::ts(2000))
        );
        assert_eq!(
            done.kinds(),
            [
                "alarm.raised fire-panel/comm",
                "alarm.cleared fire-panel/comm"
            ]
        );
        let raised = &done.events[0];
        assert_eq!(
            raised["detail"]["reason"], "device exception 2 (illegal data address)",
            "{raised}"
        );
    }

    /// A life-safety device that sends a value that is not a number for a
    /// point leaves it unwatched, as one that refuses to read it: its
    /// communication-loss alarm is raised meanwhile, naming the point,
    /// and returns once numbers come again. A refusal that starts and
    /// ends meanwhile does not end it. A task whose first message of the
    /// device is a confirmation (after a reload) judges its values too.
    #[tokio::test]
    async fn a_life_safety_device_sending_values_that_are_not_numbers_loses_communication() {
        let r = task::start(Vec::new());
        let (smoke, count) = (r.point("fire-panel/loop-1"), r.point("fire-panel/count"));
        let quiet = [(smoke, Value::Bool(false)), (count, Value::Int(0))];
        let nan = [(smoke, Value::Bool(false)), (count, Value::Float(f64::NAN))];
        for m in [
            task::readings("fire-panel", task::ts(0), &quiet),
            task::readings("fire-panel", task::ts(1000), &nan[1..]),
            refused(1500, vec![smoke]),
            refused(1800, vec![]),
            task::confirmed("fire-panel", task::ts(2000), nan.to_vec()),
            task::readings("fire-panel", task::ts(3000), &[(count, Value::Int(4))]),
        ] {
            r.bus.send(m).await.unwrap();
        }
        let done = r.stop().await;
        assert_eq!(
            done.kinds(),
            [
                "alarm.raised fire-panel/comm",
                "alarm.cleared fire-panel/comm"
            ]
        );
        let raised = &done.events[0];
        assert_eq!(
            raised["detail"]["reason"],
            "the device sends a value that is not a number for fire-panel/count",
            "{raised}"
        );
        assert_eq!(raised["ts"], task::ts(1000).to_string(), "{raised}");
        assert_eq!(done.events[1]["ts"], task::ts(3000).to_string());

        // A new task (a reload), whose first message of the panel is a
        // confirmation: decoded, and judged.
        let r = task::start(Vec::new());
        r.bus
            .send(task::confirmed("fire-panel", task::ts(5000), nan.to_vec()))
            .await
            .unwrap();
        let done = r.stop().await;
        assert_eq!(done.kinds(), ["alarm.raised fire-panel/comm"]);
    }

    /// The real task's bookkeeping over an outage: values, confirmations,
    /// offline and online; a `Confirmed` right after a `DeviceStatus` (which
    /// a driver does not send) is decoded, not taken as held.
    #[tokio::test]
    async fn confirmations_across_an_outage_in_the_real_task() {
        let r = task::start(Vec::new());
        let a = fence(&r, 2.4, 0, 1);
        let b = fence(&r, 2.0, 2, 7);
        let send = |m| r.bus.send(m);
        send(task::readings("fence", task::ts(0), &a))
            .await
            .unwrap();
        send(task::confirmed("fence", task::ts(1000), a.clone()))
            .await
            .unwrap();
        send(task::status("fence", task::ts(2000), false))
            .await
            .unwrap();
        send(task::status("fence", task::ts(3000), true))
            .await
            .unwrap();
        send(task::confirmed("fence", task::ts(4000), a.clone()))
            .await
            .unwrap();
        // A repeated status (the device is online): values come as
        // readings again, so a confirmation is decoded.
        send(task::status("fence", task::ts(5000), true))
            .await
            .unwrap();
        send(task::confirmed("fence", task::ts(6000), b.clone()))
            .await
            .unwrap();
        let done = r.stop().await;
        for &(point, value) in &b {
            assert_eq!(done.live[point as usize], task::good(value, task::ts(6000)));
        }
        for (key, v) in [
            ("fence/temp", serde_json::json!(2.0)),
            ("fence/status", serde_json::json!(2)),
            ("fence/spare", serde_json::json!(7)),
        ] {
            let (value, quality, ts) = done.last_telemetry(key);
            assert_eq!(
                (value, quality.as_str(), ts),
                (v, "good", task::ts(6000).to_string()),
                "{key}"
            );
        }
        // Every point went bad at the outage, and good again at 4 s.
        let spare: Vec<(Json, String)> = done
            .telemetry_of("spare")
            .into_iter()
            .map(|(value, quality, _)| (value, quality))
            .collect();
        assert_eq!(
            spare,
            [
                (serde_json::json!(1), "good".to_string()),
                (serde_json::json!(1), "good".to_string()),
                (Json::Null, "bad".to_string()),
                (serde_json::json!(1), "good".to_string()),
                (serde_json::json!(7), "good".to_string()),
            ]
        );
        assert_eq!(
            done.kinds(),
            ["alarm.raised fence/temp", "device.offline", "device.online"]
        );
    }
}
