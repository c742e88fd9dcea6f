//! A poll's values applied to the alarm task's consumers: the alarm
//! engine, the telemetry filter and the live view.
//!
//! [`readings`] takes decoded values. [`confirmed`] takes a driver's
//! [`Confirmation`] that a device answered exactly as before and has the
//! same effect as `readings` with those values: when the alarm task holds
//! them (it applied the device's previous message), only the points a rule
//! watches are decoded (a reading can fire a delay that ran out or meet a
//! changed arming state), the telemetry filter re-offers its own copy, and
//! the live view takes the new timestamp; otherwise (a new alarm task after
//! a reload, a device that was offline) every value is decoded and applied
//! as `readings`.

use super::live::{LiveView, Sample};
use super::AlarmEngine;
use crate::event::{NewEvent, Timestamp};
use crate::point::{Confirmation, Quality, Reading};
use crate::telemetry::TelemetryFilter;
use std::time::Instant;

/// Where a poll's values go.
pub(super) struct Targets<'a> {
    pub engine: &'a mut AlarmEngine,
    /// `None` while telemetry is off.
    pub telemetry: Option<&'a mut TelemetryFilter>,
    pub live: Option<&'a LiveView>,
    /// The engine's events.
    pub out: &'a mut Vec<NewEvent>,
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

/// Apply a confirmation at `ts`: the same as [`readings`] with the
/// confirmed values. `held`: the targets applied the device's previous
/// message (so they hold these values) and nothing of the device since.
pub(super) fn confirmed(
    t: &mut Targets<'_>,
    now: Instant,
    ts: Timestamp,
    c: &dyn Confirmation,
    held: bool,
) {
    if !held {
        let decoded: Vec<Reading> = (0..c.count())
            .filter_map(|i| {
                Some(Reading {
                    point: c.point(i)?,
                    value: c.value(i)?,
                })
            })
            .collect();
        readings(t, now, ts, &decoded);
        return;
    }
    if let Some(l) = t.live {
        l.confirm(ts, c);
    }
    for i in 0..c.count() {
        let Some(point) = c.point(i) else { continue };
        let mut value = None;
        if t.engine.watches(point) {
            value = c.value(i);
            let Some(v) = value else { continue };
            t.engine
                .on_reading(now, ts, point, Some(v), Quality::Good, t.out);
        }
        if let Some(f) = t.telemetry.as_deref_mut() {
            if !f.confirm(now, ts, point) {
                if let Some(v) = value.or_else(|| c.value(i)) {
                    f.offer(now, ts, point, Some(v), Quality::Good);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arming::ArmedZones;
    use crate::config::{load_str, LoadedConfig};
    use crate::point::{PointIndex, Value};
    use proptest::prelude::*;
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

    /// A confirmation of fixed values.
    #[derive(Debug)]
    struct Fixed(Vec<(PointIndex, Value)>);

    impl Confirmation for Fixed {
        fn count(&self) -> usize {
            self.0.len()
        }
        fn point(&self, i: usize) -> Option<PointIndex> {
            self.0.get(i).map(|r| r.0)
        }
        fn value(&self, i: usize) -> Option<Value> {
            self.0.get(i).map(|r| r.1)
        }
    }

    /// What the alarm task keeps, fed as the alarm task feeds it.
    struct Side {
        engine: AlarmEngine,
        telemetry: TelemetryFilter,
        live: LiveView,
        out: Vec<NewEvent>,
        /// As the alarm task: per device, its last values are held.
        held: Vec<bool>,
        offline: Vec<bool>,
    }

    impl Side {
        fn new(cfg: &LoadedConfig) -> Side {
            Side {
                engine: AlarmEngine::new(cfg),
                telemetry: TelemetryFilter::new(cfg),
                live: LiveView::new(cfg.points.len()),
                out: Vec::new(),
                held: vec![false; cfg.config.devices.len()],
                offline: vec![false; cfg.config.devices.len()],
            }
        }

        /// The alarm task's handling of one bus message (see `task.rs`).
        fn apply(&mut self, cfg: &LoadedConfig, now: Instant, m: &Msg) {
            let ts = m.ts;
            let di = m.device;
            match &m.body {
                Body::Status(online) => {
                    self.held[di] = false;
                    if self.offline[di] != *online {
                        return;
                    }
                    self.offline[di] = !online;
                    self.engine
                        .on_device_status(now, ts, di, *online, None, &mut self.out);
                    if !online {
                        for (pi, meta) in cfg.points.iter() {
                            if meta.device_index == di {
                                let bad = Sample {
                                    value: None,
                                    quality: Quality::Bad,
                                    ts,
                                };
                                self.live.set_values([(pi, bad)]);
                                self.engine.on_reading(
                                    now,
                                    ts,
                                    pi,
                                    None,
                                    Quality::Bad,
                                    &mut self.out,
                                );
                                self.telemetry.offer(now, ts, pi, None, Quality::Bad);
                            }
                        }
                    }
                }
                Body::Values { values, confirm } => {
                    let mut was_held = self.held[di];
                    if self.offline[di] {
                        self.offline[di] = false;
                        self.engine
                            .on_device_status(now, ts, di, true, None, &mut self.out);
                        was_held = false;
                    }
                    self.held[di] = true;
                    let mut t = Targets {
                        engine: &mut self.engine,
                        telemetry: Some(&mut self.telemetry),
                        live: Some(&self.live),
                        out: &mut self.out,
                    };
                    if *confirm {
                        confirmed(&mut t, now, ts, &Fixed(values.clone()), was_held);
                    } else {
                        let rs: Vec<Reading> = values
                            .iter()
                            .map(|&(point, value)| Reading { point, value })
                            .collect();
                        readings(&mut t, now, ts, &rs);
                    }
                }
            }
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
        /// that did not see the values (a reload).
        #[test]
        fn confirmations_equal_readings(
            every_poll in any::<bool>(),
            steps in proptest::collection::vec(
                (0u64..1500, 0u8..12, 0usize..2, proptest::collection::vec(any::<u8>(), 5)),
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
                        slow.engine.set_armed_zones(z.clone());
                        fast.engine.set_armed_zones(z);
                    }
                    // A new alarm task (reload): the endpoint keeps its
                    // replies, the task holds nothing.
                    9 => {
                        slow = Side::new(&cfg);
                        fast = Side::new(&cfg);
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
}
