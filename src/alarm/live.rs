//! What the alarm task knows right now, for readers that must not wait on
//! the journal (the local web page): the last value and quality of every
//! point, and the list of active alarms.
//!
//! The alarm task is the only writer. Values are one short write lock per
//! reading batch; the alarm list is published on a `watch` channel only
//! when the alarm task produced events (a state may have changed), so a
//! reader learns of a new alarm before it is journaled.

use super::AlarmView;
use crate::config::PointTable;
use crate::event::Timestamp;
use crate::point::{Confirmation, PointIndex, Quality, Value};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// The last value of one point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// `None` while the device does not answer.
    pub value: Option<Value>,
    pub quality: Quality,
    pub ts: Timestamp,
}

/// Last point values and active alarms, shared between the alarm task
/// (writer) and readers.
#[derive(Debug)]
pub struct LiveView {
    values: RwLock<Values>,
    alarms: watch::Sender<Arc<Vec<AlarmView>>>,
}

/// The point values, and what makes a device's unchanged poll one write.
#[derive(Debug)]
struct Values {
    samples: Vec<Option<Sample>>,
    /// Per point: its device's `confirms` when its sample was written; a
    /// different count now means a whole-device confirmation came since.
    seen: Vec<u32>,
    /// Per point: its device (index into `devices`).
    device_of: Vec<u32>,
    devices: Vec<DeviceLive>,
}

/// One device's whole-device confirmations.
#[derive(Debug, Default)]
struct DeviceLive {
    /// Points of the device.
    points: usize,
    /// Every point of the device holds a good value: a confirmation of
    /// all of them is their new time stamp, nothing else.
    steady: bool,
    /// Whole-device confirmations so far (wrapping).
    confirms: u32,
    /// The last one's time.
    confirmed: Option<Timestamp>,
}

impl Values {
    fn write(&mut self, point: usize, sample: Sample) {
        let (value, quality) = crate::point::judged(sample.value, sample.quality);
        let sample = Sample {
            value,
            quality,
            ..sample
        };
        let d = self.device_of[point] as usize;
        let dev = &mut self.devices[d];
        if sample.quality != Quality::Good || sample.value.is_none() {
            dev.steady = false;
        }
        self.seen[point] = dev.confirms;
        self.samples[point] = Some(sample);
    }
}

impl LiveView {
    /// An empty view of the points of `table`.
    pub fn new(table: &PointTable) -> LiveView {
        LiveView::with_devices(table.iter().map(|(_, m)| m.device_index).collect())
    }

    /// An empty view of points whose devices are `device_of` (by point).
    pub fn with_devices(device_of: Vec<usize>) -> LiveView {
        let mut devices: Vec<DeviceLive> = Vec::new();
        for &d in &device_of {
            if devices.len() <= d {
                devices.resize_with(d + 1, DeviceLive::default);
            }
            devices[d].points += 1;
        }
        LiveView {
            values: RwLock::new(Values {
                samples: vec![None; device_of.len()],
                seen: vec![0; device_of.len()],
                device_of: device_of.iter().map(|&d| d as u32).collect(),
                devices,
            }),
            alarms: watch::Sender::new(Arc::new(Vec::new())),
        }
    }

    /// Record readings (alarm task).
    pub fn set_values(&self, samples: impl IntoIterator<Item = (PointIndex, Sample)>) {
        let mut v = match self.values.write() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        };
        for (i, s) in samples {
            if (i as usize) < v.samples.len() {
                v.write(i as usize, s);
            }
        }
    }

    /// Points a driver confirmed unchanged at `ts` (alarm task): the same
    /// as [`set_values`](Self::set_values) with their values, good, at
    /// `ts`. A held good value only takes the new `ts`; a point without
    /// one gets its value decoded. A confirmation of every point of a
    /// device whose points all hold good values is one write.
    pub fn confirm(&self, ts: Timestamp, c: &dyn Confirmation) {
        let mut v = match self.values.write() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        };
        let n = c.count();
        let device = c
            .point(0)
            .and_then(|p| v.device_of.get(p as usize))
            .map(|&d| d as usize);
        if let Some(d) = device {
            let dev = &mut v.devices[d];
            if dev.steady && dev.points == n {
                dev.confirms = dev.confirms.wrapping_add(1);
                dev.confirmed = Some(ts);
                return;
            }
        }
        let mut steady = device.is_some_and(|d| v.devices[d].points == n);
        for i in 0..n {
            let Some(p) = c
                .point(i)
                .map(|p| p as usize)
                .filter(|&p| p < v.samples.len())
            else {
                steady = false;
                continue;
            };
            steady &= Some(v.device_of[p] as usize) == device;
            match v.samples[p] {
                Some(s) if s.quality == Quality::Good && s.value.is_some() => {
                    v.write(p, Sample { ts, ..s })
                }
                _ => match c.value(i) {
                    Some(value) => {
                        // Not a number: written bad, and the device is
                        // not steady.
                        steady &= value.is_number();
                        v.write(
                            p,
                            Sample {
                                value: Some(value),
                                quality: Quality::Good,
                                ts,
                            },
                        )
                    }
                    None => steady = false,
                },
            }
        }
        if let Some(d) = device {
            v.devices[d].steady = steady;
        }
    }

    /// The last sample of every point, by point index.
    pub fn values(&self) -> Vec<Option<Sample>> {
        let v = match self.values.read() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut out = v.samples.clone();
        for (i, sample) in out.iter_mut().enumerate() {
            let Some(s) = sample else { continue };
            let dev = &v.devices[v.device_of[i] as usize];
            if v.seen[i] != dev.confirms {
                // Confirmed with its whole device since it was written
                // (then it was good: the device was steady).
                if let Some(ts) = dev.confirmed {
                    s.ts = ts;
                }
            }
        }
        out
    }

    /// Publish the active alarms (alarm task).
    pub fn set_alarms(&self, active: Vec<AlarmView>) {
        self.alarms.send_if_modified(|cur| {
            if **cur == active {
                false
            } else {
                *cur = Arc::new(active);
                true
            }
        });
    }

    /// The active alarms, most urgent first, and their changes.
    pub fn alarms(&self) -> watch::Receiver<Arc<Vec<AlarmView>>> {
        self.alarms.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AlarmState, Category, Priority};

    fn view(key: &str) -> AlarmView {
        AlarmView {
            key: key.into(),
            state: AlarmState::ActiveUnacked,
            priority: Priority::LIFE_SAFETY,
            category: Category::Intrusion,
            message: "m".into(),
            latched: false,
            zone_disarmed: false,
        }
    }

    #[test]
    fn values_out_of_range_are_ignored() {
        let live = LiveView::with_devices(vec![0, 0]);
        let s = Sample {
            value: Some(Value::Bool(true)),
            quality: Quality::Good,
            ts: Timestamp::now(),
        };
        live.set_values([(1, s), (7, s)]);
        assert_eq!(live.values(), vec![None, Some(s)]);
    }

    #[test]
    fn a_confirmation_is_the_same_values_at_the_new_time() {
        let live = LiveView::with_devices(vec![0, 0, 0, 0]);
        let t1 = Timestamp::from_unix_ms(1_000).unwrap();
        let t2 = Timestamp::from_unix_ms(2_000).unwrap();
        let good = |v, ts| Sample {
            value: Some(v),
            quality: Quality::Good,
            ts,
        };
        let bad = Sample {
            value: None,
            quality: Quality::Bad,
            ts: t1,
        };
        live.set_values([(0, good(Value::Int(1), t1)), (1, bad)]);
        let c = vec![
            (0, Value::Int(1)),
            (1, Value::Int(2)),
            (2, Value::Bool(true)),
            (9, Value::Int(0)),
        ];
        live.confirm(t2, &c);
        assert_eq!(
            live.values(),
            vec![
                Some(good(Value::Int(1), t2)),
                Some(good(Value::Int(2), t2)),
                Some(good(Value::Bool(true), t2)),
                None
            ]
        );
    }

    #[test]
    fn a_steady_device_is_confirmed_at_once_and_later_writes_win() {
        // Points 0-2 on device 0, point 3 on device 1.
        let live = LiveView::with_devices(vec![0, 0, 0, 1]);
        let t = |s: i64| Timestamp::from_unix_ms(s * 1000).unwrap();
        let good = |v, ts| Sample {
            value: Some(v),
            quality: Quality::Good,
            ts,
        };
        let device = vec![
            (0, Value::Int(1)),
            (1, Value::Int(2)),
            (2, Value::Bool(true)),
        ];
        let other = good(Value::Int(9), t(1));
        live.set_values([(3, other)]);
        // The first confirmation decodes (nothing held); the second finds
        // the device steady.
        live.confirm(t(1), &device);
        live.confirm(t(2), &device);
        let all_at = |ts| {
            vec![
                Some(good(Value::Int(1), ts)),
                Some(good(Value::Int(2), ts)),
                Some(good(Value::Bool(true), ts)),
                Some(other),
            ]
        };
        assert_eq!(live.values(), all_at(t(2)));
        // A reading after the confirmation keeps its own time; a point
        // gone bad is bad, whatever the confirmation said before.
        live.set_values([(0, good(Value::Int(5), t(3)))]);
        let bad = Sample {
            value: None,
            quality: Quality::Bad,
            ts: t(3),
        };
        live.set_values([(2, bad)]);
        let mut expected = all_at(t(2));
        expected[0] = Some(good(Value::Int(5), t(3)));
        expected[2] = Some(bad);
        assert_eq!(live.values(), expected);
        // Not steady now: the next confirmation writes every point (the
        // bad one gets its value back), and then is steady again.
        let device = vec![
            (0, Value::Int(5)),
            (1, Value::Int(2)),
            (2, Value::Bool(true)),
        ];
        live.confirm(t(4), &device);
        live.confirm(t(5), &device);
        let mut expected = all_at(t(5));
        expected[0] = Some(good(Value::Int(5), t(5)));
        assert_eq!(live.values(), expected);
    }

    #[test]
    fn alarms_notify_only_on_change() {
        let live = LiveView::with_devices(vec![]);
        let mut rx = live.alarms();
        live.set_alarms(vec![view("a")]);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        live.set_alarms(vec![view("a")]);
        assert!(!rx.has_changed().unwrap());
        live.set_alarms(vec![]);
        assert!(rx.has_changed().unwrap());
    }
}
