//! What the alarm task knows right now, for readers that must not wait on
//! the journal (the local web page): the last value and quality of every
//! point, and the list of active alarms.
//!
//! The alarm task is the only writer. Values are one short write lock per
//! reading batch; the alarm list is published on a `watch` channel only
//! when the alarm task produced events (a state may have changed), so a
//! reader learns of a new alarm before it is journaled.

use super::AlarmView;
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
    values: RwLock<Vec<Option<Sample>>>,
    alarms: watch::Sender<Arc<Vec<AlarmView>>>,
}

impl LiveView {
    /// An empty view for a point table of `points` points.
    pub fn new(points: usize) -> LiveView {
        LiveView {
            values: RwLock::new(vec![None; points]),
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
            if let Some(slot) = v.get_mut(i as usize) {
                *slot = Some(s);
            }
        }
    }

    /// Points a driver confirmed unchanged at `ts` (alarm task): the same
    /// as [`set_values`](Self::set_values) with their values, good, at
    /// `ts`. A held good value only takes the new `ts`; a point without
    /// one gets its value decoded.
    pub fn confirm(&self, ts: Timestamp, c: &dyn Confirmation) {
        let mut v = match self.values.write() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        };
        for i in 0..c.count() {
            let Some(slot) = c.point(i).and_then(|p| v.get_mut(p as usize)) else {
                continue;
            };
            match slot {
                Some(s) if s.quality == Quality::Good && s.value.is_some() => s.ts = ts,
                _ => {
                    if let Some(value) = c.value(i) {
                        *slot = Some(Sample {
                            value: Some(value),
                            quality: Quality::Good,
                            ts,
                        });
                    }
                }
            }
        }
    }

    /// The last sample of every point, by point index.
    pub fn values(&self) -> Vec<Option<Sample>> {
        match self.values.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
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
        }
    }

    #[test]
    fn values_out_of_range_are_ignored() {
        let live = LiveView::new(2);
        let s = Sample {
            value: Some(Value::Bool(true)),
            quality: Quality::Good,
            ts: Timestamp::now(),
        };
        live.set_values([(1, s), (7, s)]);
        assert_eq!(live.values(), vec![None, Some(s)]);
    }

    #[derive(Debug)]
    struct Fixed(Vec<(PointIndex, Value)>);

    impl Confirmation for Fixed {
        fn count(&self) -> usize {
            self.0.len()
        }
        fn point(&self, i: usize) -> Option<PointIndex> {
            self.0.get(i).map(|e| e.0)
        }
        fn value(&self, i: usize) -> Option<Value> {
            self.0.get(i).map(|e| e.1)
        }
    }

    #[test]
    fn a_confirmation_is_the_same_values_at_the_new_time() {
        let live = LiveView::new(4);
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
        let c = Fixed(vec![
            (0, Value::Int(1)),
            (1, Value::Int(2)),
            (2, Value::Bool(true)),
            (9, Value::Int(0)),
        ]);
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
    fn alarms_notify_only_on_change() {
        let live = LiveView::new(0);
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
