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
