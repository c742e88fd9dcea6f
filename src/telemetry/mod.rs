//! Telemetry by exception: deadband and max interval per point, batched
//! into contract `telemetry` messages. Pure logic: time comes in as
//! arguments, nothing here does I/O.
//!
//! # What is reported
//!
//! A point's offered value is queued when, compared with the last value
//! *reported* for that point:
//! - it moved by more than the point's deadband (integers and floats; bools:
//!   any change; a change of type or between "no value" and a value counts);
//! - its quality changed;
//! - or `max_interval` has passed since the point was last reported.
//!
//! The max-interval refresh does not wait for a new offer: the filter keeps
//! the last offered value of every point and queues it again when it is due
//! (a device that went offline keeps being reported as `bad`). A refreshed
//! `good` value that has not been offered again within `max_interval` is
//! reported as `stale`.
//!
//! With `every_poll`, every offered value is queued. Points with
//! `telemetry = false` are never queued.
//!
//! # Batching
//!
//! Queued values are gathered for up to `batch` after the first of them was
//! queued, or until `max_points_per_message` are waiting, then
//! [`TelemetryFilter::take_due`] hands out one contract payload:
//!
//! ```json
//! {"ts": "…", "points": [{"device": "hvac-1", "point": "supply-temp",
//!   "value": 18.5, "quality": "good", "ts": "…"}]}
//! ```
//!
//! The message `ts` is the wall-clock time at `now`, derived from the latest
//! offer's (`Instant`, `Timestamp`) pair, so the filter never reads a clock.
//!
//! # Cost
//!
//! Per-point state sits in a `Vec` indexed by [`PointIndex`]; an offer that
//! is not reported does no allocation and no hashing. A device's unchanged
//! poll ([`TelemetryFilter::confirm_all`]) costs one time stamp for the whole
//! device while its values are steady: every point good and reported good,
//! none due for its max-interval refresh. Otherwise it is confirmed point by
//! point, which also finds out whether the device is steady again.

mod config;
pub use config::TelemetryConfig;

use crate::config::LoadedConfig;
use crate::event::Timestamp;
use crate::point::{Confirmation, PointIndex, Quality, Value};
use serde::ser::{Serialize, SerializeStruct, Serializer};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One observed value.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    value: Option<Value>,
    quality: Quality,
    ts: Timestamp,
}

/// What the filter needs to know of a point (fixed after construction).
#[derive(Debug)]
struct PointInfo {
    /// Point id (interned: devices of one profile share it).
    point: Arc<str>,
    deadband: f64,
    /// Index into [`TelemetryFilter::devices`].
    device: u32,
    enabled: bool,
}

/// Per-point state, laid out flat (80 bytes; two `Option<(…, Instant)>`
/// tuples took 88 bytes plus padding): the last offered sample is present
/// when `last_at` is, the last reported one when `reported_at` is.
#[derive(Debug)]
struct Slot {
    /// Last offered value.
    last_value: Option<Value>,
    /// Last reported value.
    reported_value: Option<Value>,
    /// When the last value was offered (`None`: never).
    last_at: Option<Instant>,
    /// When the last report was queued (`None`: never).
    reported_at: Option<Instant>,
    /// Device timestamp of the last offered value.
    last_ts: Timestamp,
    last_quality: Quality,
    reported_quality: Quality,
    /// The point has an entry in the refresh heap.
    scheduled: bool,
}

impl Default for Slot {
    fn default() -> Slot {
        Slot {
            last_value: None,
            reported_value: None,
            last_at: None,
            reported_at: None,
            last_ts: Timestamp(chrono::DateTime::UNIX_EPOCH),
            last_quality: Quality::Good,
            reported_quality: Quality::Good,
            scheduled: false,
        }
    }
}

impl Slot {
    fn last(&self) -> Option<(Sample, Instant)> {
        self.last_at.map(|at| {
            (
                Sample {
                    value: self.last_value,
                    quality: self.last_quality,
                    ts: self.last_ts,
                },
                at,
            )
        })
    }
}

/// Per-device state of [`TelemetryFilter::confirm_all`]'s fast path.
#[derive(Debug, Default)]
struct DeviceState {
    /// Points of the device in the table.
    points: usize,
    /// The device's last whole-device confirmation (`Instant`, device
    /// time): the last offer of each of its points that were good then
    /// and not offered since (their slots keep the earlier offer).
    confirmed: Option<(Instant, Timestamp)>,
    /// The device is steady: every enabled point's last offer is a good
    /// value and its last report is good, so an unchanged poll reports
    /// nothing until `refresh_from`. Cleared by any other offer or report.
    steady: bool,
    /// No point of the device is due for its max-interval refresh before
    /// this (a lower bound: reports since only move dues later).
    refresh_from: Option<Instant>,
}

/// A value waiting in the current batch.
#[derive(Clone, Copy, Debug)]
struct Queued {
    point: PointIndex,
    sample: Sample,
}

/// Decides which values to report and batches them.
#[derive(Debug)]
pub struct TelemetryFilter {
    /// Per point, indexed by [`PointIndex`]: its names and settings.
    points: Vec<PointInfo>,
    /// Device ids, shared by the points of a device.
    devices: Vec<Arc<str>>,
    /// Per device, indexed like `devices`: whole-device confirmations.
    device_state: Vec<DeviceState>,
    /// Per point, indexed by [`PointIndex`]: what was offered and reported.
    slots: Vec<Slot>,
    every_poll: bool,
    max_interval: Duration,
    batch: Duration,
    max_points: usize,
    queue: Vec<Queued>,
    /// When the oldest value of the current batch was queued.
    batch_started: Option<Instant>,
    /// Max-interval refreshes: (due, point). An entry may be early (the
    /// point was reported since); it is then pushed again with its real due.
    refresh: BinaryHeap<Reverse<(Instant, PointIndex)>>,
    /// Latest (monotonic, wall-clock) pair seen, to stamp messages.
    clock: Option<(Instant, Timestamp)>,
}

impl TelemetryFilter {
    pub fn new(cfg: &LoadedConfig) -> TelemetryFilter {
        let t = &cfg.config.telemetry;
        let mut devices: Vec<Arc<str>> = Vec::new();
        let points: Vec<PointInfo> = cfg
            .points
            .iter()
            .map(|(_, m)| {
                // The table lists a device's points together: one name each.
                if devices.last().is_none_or(|d| !Arc::ptr_eq(d, &m.device)) {
                    devices.push(m.device.clone());
                }
                PointInfo {
                    point: m.point.clone(),
                    deadband: if m.deadband.is_finite() && m.deadband > 0.0 {
                        m.deadband
                    } else {
                        0.0
                    },
                    device: (devices.len() - 1) as u32,
                    enabled: m.telemetry,
                }
            })
            .collect();
        let slots = points.iter().map(|_| Slot::default()).collect();
        let mut device_state: Vec<DeviceState> =
            devices.iter().map(|_| DeviceState::default()).collect();
        for p in &points {
            device_state[p.device as usize].points += 1;
        }
        TelemetryFilter {
            points,
            devices,
            device_state,
            slots,
            every_poll: t.every_poll,
            // Validation refuses 0; guard anyway against a refresh storm.
            max_interval: t.max_interval.max(Duration::from_millis(100)),
            batch: t.batch,
            max_points: t.max_points_per_message.max(1),
            queue: Vec::new(),
            batch_started: None,
            refresh: BinaryHeap::new(),
            clock: None,
        }
    }

    /// A point's current value; queued if it passes the deadband / interval.
    #[inline]
    pub fn offer(
        &mut self,
        now: Instant,
        ts: Timestamp,
        point: PointIndex,
        value: Option<Value>,
        quality: Quality,
    ) {
        let (Some(info), Some(slot)) = (
            self.points.get(point as usize),
            self.slots.get_mut(point as usize),
        ) else {
            return;
        };
        if !info.enabled {
            return;
        }
        self.clock = Some((now, ts));
        let (value, quality) = crate::point::judged(value, quality);
        if quality != Quality::Good || value.is_none() {
            self.device_state[info.device as usize].steady = false;
        }
        let sample = Sample { value, quality, ts };
        slot.last_value = value;
        slot.last_quality = quality;
        slot.last_ts = ts;
        slot.last_at = Some(now);
        let report = self.every_poll
            || match slot.reported_at {
                None => true,
                Some(at) => {
                    slot.reported_quality != quality
                        || changed(slot.reported_value, value, info.deadband)
                        || now.saturating_duration_since(at) >= self.max_interval
                }
            };
        if report {
            self.enqueue(now, point, sample);
        }
    }

    /// The point's last offered value, offered again: exactly
    /// [`offer`](Self::offer)`(now, ts, point, value, Good)` when that
    /// last offer was `value` with good quality, without the caller
    /// decoding `value`. False, doing nothing, when the last offer was not
    /// a good value (never offered, bad, stale): the caller must offer.
    #[inline]
    pub fn confirm(&mut self, now: Instant, ts: Timestamp, point: PointIndex) -> bool {
        let (Some(info), Some(slot)) = (
            self.points.get(point as usize),
            self.slots.get(point as usize),
        ) else {
            // `offer` ignores the point too.
            return true;
        };
        if !info.enabled {
            return true;
        }
        if slot.last_at.is_none() || slot.last_quality != Quality::Good || slot.last_value.is_none()
        {
            return false;
        }
        let value = slot.last_value;
        self.offer(now, ts, point, value, Quality::Good);
        true
    }

    /// A device's unchanged poll: every entry of `c` confirmed (as by
    /// [`confirm`](Self::confirm)) or, where that does nothing, offered
    /// with its decoded value. While the device is steady this is one
    /// time stamp for the whole device, with the same outcome.
    pub fn confirm_all(&mut self, now: Instant, ts: Timestamp, c: &dyn Confirmation) {
        let n = c.count();
        let Some(device) = c
            .point(0)
            .and_then(|p| self.points.get(p as usize))
            .map(|info| info.device as usize)
        else {
            self.confirm_each(now, ts, c);
            return;
        };
        let d = &mut self.device_state[device];
        if !self.every_poll && d.steady && d.points == n && d.refresh_from.is_some_and(|r| now < r)
        {
            // What `offer` would do for each point: nothing is reported
            // (same value, good, reported good, no refresh due); only the
            // time of the last offer moves, kept here for all of them.
            d.confirmed = Some((now, ts));
            self.clock = Some((now, ts));
            return;
        }
        self.confirm_each(now, ts, c);
        // Steady now? Every entry a point of this device, all its points
        // present, each enabled one good and reported good.
        let mut steady = !self.every_poll && n == self.device_state[device].points;
        let mut refresh_from: Option<Instant> = None;
        for i in 0..n {
            if !steady {
                break;
            }
            let Some(p) = c.point(i) else {
                steady = false;
                break;
            };
            let (Some(info), Some(slot)) =
                (self.points.get(p as usize), self.slots.get(p as usize))
            else {
                steady = false;
                break;
            };
            if info.device as usize != device {
                steady = false;
            } else if info.enabled {
                steady &= slot.last_quality == Quality::Good
                    && slot.last_value.is_some()
                    && slot.reported_quality == Quality::Good;
                if let Some(at) = slot.reported_at {
                    let due = at + self.max_interval;
                    refresh_from = Some(refresh_from.map_or(due, |r| r.min(due)));
                }
            }
        }
        let d = &mut self.device_state[device];
        d.steady = steady;
        // No enabled point: nothing is due; look again an interval on.
        d.refresh_from = refresh_from.or(Some(now + self.max_interval));
    }

    /// [`confirm_all`](Self::confirm_all) point by point.
    fn confirm_each(&mut self, now: Instant, ts: Timestamp, c: &dyn Confirmation) {
        for i in 0..c.count() {
            let Some(point) = c.point(i) else { continue };
            if !self.confirm(now, ts, point) {
                if let Some(v) = c.value(i) {
                    self.offer(now, ts, point, Some(v), Quality::Good);
                }
            }
        }
    }

    /// A point's last offered sample and when it was offered, counting
    /// its device's whole-device confirmations.
    fn last_offer(&self, point: PointIndex) -> Option<(Sample, Instant)> {
        let (mut sample, mut at) = self.slots[point as usize].last()?;
        let device = self.points[point as usize].device as usize;
        if let Some((confirmed_at, confirmed_ts)) = self.device_state[device].confirmed {
            // A confirmation covers the points that were good then; one
            // offered since (good or not) has a later offer of its own.
            if confirmed_at > at && sample.quality == Quality::Good && sample.value.is_some() {
                sample.ts = confirmed_ts;
                at = confirmed_at;
            }
        }
        Some((sample, at))
    }

    /// A finished batch, as a contract `telemetry` JSON payload, if one is
    /// due at `now`. Call until it returns `None`.
    pub fn take_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.refresh_due(now);
        let started = self.batch_started?;
        if self.queue.len() < self.max_points && now < started + self.batch {
            return None;
        }
        self.take_batch(now)
    }

    /// Everything queued, due or not, batch by batch (for shutdown). Does
    /// not run max-interval refreshes.
    pub fn flush(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.take_batch(now)
    }

    /// When `take_due` (or the max-interval refresh) next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let batch = self.batch_started.map(|s| {
            if self.queue.len() >= self.max_points {
                s
            } else {
                s + self.batch
            }
        });
        let refresh = self.refresh.peek().map(|Reverse((at, _))| *at);
        match (batch, refresh) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Values waiting in the current batch.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn enqueue(&mut self, now: Instant, point: PointIndex, sample: Sample) {
        if sample.quality != Quality::Good {
            let device = self.points[point as usize].device as usize;
            self.device_state[device].steady = false;
        }
        let slot = &mut self.slots[point as usize];
        slot.reported_value = sample.value;
        slot.reported_quality = sample.quality;
        slot.reported_at = Some(now);
        if !slot.scheduled {
            slot.scheduled = true;
            self.refresh.push(Reverse((now + self.max_interval, point)));
        }
        if self.queue.is_empty() {
            self.batch_started = Some(now);
        }
        self.queue.push(Queued { point, sample });
    }

    /// Queue the last value of every point whose max interval has run out.
    fn refresh_due(&mut self, now: Instant) {
        while let Some(&Reverse((at, point))) = self.refresh.peek() {
            if at > now {
                break;
            }
            self.refresh.pop();
            let max_interval = self.max_interval;
            let last = self.last_offer(point);
            let slot = &mut self.slots[point as usize];
            slot.scheduled = false;
            let (Some(reported_at), Some((mut sample, offered_at))) = (slot.reported_at, last)
            else {
                continue;
            };
            let due = reported_at + max_interval;
            if due > now {
                // Reported since this entry was armed: wait for the real due.
                slot.scheduled = true;
                self.refresh.push(Reverse((due, point)));
                continue;
            }
            if sample.quality == Quality::Good
                && due.saturating_duration_since(offered_at) >= max_interval
            {
                sample.quality = Quality::Stale;
            }
            tracing::trace!(point, "telemetry max-interval refresh");
            // Counted from when it was due, not from when we got here, so a
            // late call neither drifts the interval nor delays the batch;
            // unless a whole interval late, which would refresh twice.
            let at = if now.saturating_duration_since(due) >= max_interval {
                now
            } else {
                due
            };
            self.enqueue(at, point, sample);
        }
    }

    fn take_batch(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.queue.is_empty() {
            return None;
        }
        let n = self.queue.len().min(self.max_points);
        let payload = Payload {
            ts: self.wall_clock(now),
            points: &self.queue[..n],
            points_info: &self.points,
            devices: &self.devices,
        };
        let bytes = match serde_json::to_vec(&payload) {
            Ok(b) => b,
            Err(e) => {
                // Cannot happen for these types; never lose the queue silently.
                tracing::error!(error = %e, points = n, "telemetry batch not serializable; dropped");
                Vec::new()
            }
        };
        self.queue.drain(..n);
        if self.queue.is_empty() {
            self.batch_started = None;
        }
        if bytes.is_empty() {
            return None;
        }
        Some(bytes)
    }

    /// The wall-clock time at `now` is `ts`: values offered with older
    /// times (carried over a reload) then do not hold messages' `ts` back.
    pub fn set_clock(&mut self, now: Instant, ts: Timestamp) {
        self.clock = Some((now, ts));
    }

    /// Wall-clock time at `now`, from the latest offer's clock pair.
    fn wall_clock(&self, now: Instant) -> Timestamp {
        let Some((at, ts)) = self.clock else {
            return self
                .queue
                .iter()
                .map(|q| q.sample.ts)
                .max()
                .unwrap_or(Timestamp(chrono::DateTime::UNIX_EPOCH));
        };
        let ahead = now.saturating_duration_since(at);
        chrono::Duration::from_std(ahead)
            .ok()
            .and_then(|d| ts.0.checked_add_signed(d))
            .map(Timestamp)
            .unwrap_or(ts)
    }
}

/// Did the value move enough to be reported?
#[inline]
fn changed(reported: Option<Value>, value: Option<Value>, deadband: f64) -> bool {
    match (reported, value) {
        (Some(Value::Float(a)), Some(Value::Float(b))) => {
            if a.is_nan() || b.is_nan() {
                a.is_nan() != b.is_nan()
            } else if a == b {
                false
            } else {
                // Infinite values: inf - inf is NaN, caught by a == b above.
                (b - a).abs() > deadband
            }
        }
        // i64 to f64 rounds beyond 2^53: the difference of two 64-bit
        // counters is exact enough for a deadband.
        (Some(Value::Int(a)), Some(Value::Int(b))) => {
            a != b && (b as f64 - a as f64).abs() > deadband
        }
        (a, b) => a != b,
    }
}

/// The contract payload, serialized straight from the queue.
struct Payload<'a> {
    ts: Timestamp,
    points: &'a [Queued],
    points_info: &'a [PointInfo],
    devices: &'a [Arc<str>],
}

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Telemetry", 2)?;
        st.serialize_field("ts", &self.ts)?;
        st.serialize_field(
            "points",
            &Points {
                points: self.points,
                info: self.points_info,
                devices: self.devices,
            },
        )?;
        st.end()
    }
}

struct Points<'a> {
    points: &'a [Queued],
    info: &'a [PointInfo],
    devices: &'a [Arc<str>],
}

impl Serialize for Points<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.points.iter().map(|q| {
            let info = &self.info[q.point as usize];
            PointOut {
                device: &self.devices[info.device as usize],
                point: &info.point,
                // NaN and infinities have no JSON form: null.
                value: q.sample.value.map(|v| v.to_json()),
                quality: q.sample.quality,
                ts: q.sample.ts,
            }
        }))
    }
}

#[derive(serde::Serialize)]
struct PointOut<'a> {
    device: &'a str,
    point: &'a str,
    value: Option<serde_json::Value>,
    quality: Quality,
    ts: Timestamp,
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod layout {
    /// The per-point state is what grows with the installation (136 bytes
    /// a point before it was laid out flat); keep it from creeping back.
    #[test]
    fn per_point_state_stays_small() {
        assert!(std::mem::size_of::<super::Slot>() <= 80);
        assert!(std::mem::size_of::<super::PointInfo>() <= 32);
    }
}
