//! Escalation (pure): an alarm not acknowledged within `escalate_after_s`
//! is pushed to the next tier of its rule, then again every
//! `repeat_every_s` to the last tier, until it is acknowledged, cleared or
//! shelved, or `max_escalations` pushes were made.
//!
//! Times are Unix milliseconds passed in by the caller (the task reads the
//! clock; tests pass a fake one). Deadlines are wall-clock so they survive
//! a restart: the state is saved to a file and reloaded.
//!
//! Step `k` (1, 2, …) falls due at `raised + escalate_after + (k-1) ×
//! repeat_every` and goes to tier `min(k, tiers-1)`. After a long outage
//! only the latest due step is pushed (one push, not a burst of repeats).

use super::config::RuleConfig;
use super::route::AlarmView;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One alarm awaiting acknowledgement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tracked {
    pub alarm: AlarmView,
    /// Tiers of the matching rule, in order.
    pub tiers: Vec<String>,
    pub raised_ms: i64,
    pub escalate_after_ms: i64,
    pub repeat_every_ms: i64,
    pub max_escalations: u32,
    /// Escalation steps already pushed.
    pub step: u32,
}

impl Tracked {
    /// When step `k` (≥ 1) falls due.
    fn due_at(&self, k: u32) -> i64 {
        self.raised_ms
            .saturating_add(self.escalate_after_ms)
            .saturating_add(
                self.repeat_every_ms
                    .saturating_mul(i64::from(k.saturating_sub(1))),
            )
    }

    /// The next step to push, if any is left.
    pub fn next_due(&self) -> Option<i64> {
        (self.step < self.max_escalations).then(|| self.due_at(self.step + 1))
    }

    /// The highest step due at `now`, capped at `max_escalations`.
    fn latest_due(&self, now_ms: i64) -> u32 {
        if now_ms < self.due_at(1) {
            return 0;
        }
        let since = now_ms - self.due_at(1);
        let k = 1 + since.checked_div(self.repeat_every_ms).unwrap_or(0);
        u32::try_from(k)
            .unwrap_or(u32::MAX)
            .min(self.max_escalations)
    }

    fn tier_for(&self, step: u32) -> String {
        let i = (step as usize).min(self.tiers.len().saturating_sub(1));
        self.tiers.get(i).cloned().unwrap_or_default()
    }
}

/// An escalation push to make now.
#[derive(Clone, Debug, PartialEq)]
pub struct Due {
    pub key: String,
    pub step: u32,
    pub tier: String,
    pub unacked_ms: i64,
    pub alarm: AlarmView,
}

/// Every alarm awaiting acknowledgement, by alarm key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Escalations {
    pub alarms: BTreeMap<String, Tracked>,
}

impl Escalations {
    /// An alarm was raised and matched `rule`. A rule without
    /// `escalate_after_s` does not escalate. Raising an alarm already
    /// tracked (a replay after a restart, or a re-raise) keeps the older
    /// deadline, so a replay never postpones an escalation.
    pub fn raised(&mut self, alarm: AlarmView, rule: &RuleConfig) {
        let Some(after) = rule.escalate_after else {
            return;
        };
        if self.alarms.contains_key(&alarm.key) {
            return;
        }
        let every = rule.repeat_every.unwrap_or(after);
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1);
        self.alarms.insert(
            alarm.key.clone(),
            Tracked {
                raised_ms: alarm.ts.unix_ms(),
                tiers: rule.tiers.clone(),
                escalate_after_ms: ms(after),
                repeat_every_ms: ms(every),
                max_escalations: rule.max_escalations,
                step: 0,
                alarm,
            },
        );
    }

    /// The alarm was acknowledged, cleared or shelved: stop escalating.
    /// Returns whether it was tracked.
    pub fn ended(&mut self, key: &str) -> bool {
        self.alarms.remove(key).is_some()
    }

    /// Escalations due at `now_ms` (at most one per alarm). Does not change
    /// state: call [`done`](Self::done) once each is recorded.
    pub fn due(&self, now_ms: i64) -> Vec<Due> {
        self.alarms
            .iter()
            .filter_map(|(key, t)| {
                let k = t.latest_due(now_ms);
                (k > t.step).then(|| Due {
                    key: key.clone(),
                    step: k,
                    tier: t.tier_for(k),
                    unacked_ms: now_ms - t.raised_ms,
                    alarm: t.alarm.clone(),
                })
            })
            .collect()
    }

    /// Step `step` of `key` was recorded. Alarms with no step left are dropped.
    pub fn done(&mut self, key: &str, step: u32) {
        if let Some(t) = self.alarms.get_mut(key) {
            t.step = t.step.max(step);
            if t.next_due().is_none() {
                self.alarms.remove(key);
            }
        }
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<i64> {
        self.alarms.values().filter_map(Tracked::next_due).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AlarmState, Category, Timestamp};
    use proptest::prelude::*;
    use std::time::Duration;

    const MIN: i64 = 60_000;

    fn alarm(key: &str, at_ms: i64) -> AlarmView {
        AlarmView {
            id: format!("gw:{key}"),
            seq: 1,
            ts: Timestamp::from_unix_ms(at_ms).unwrap(),
            priority: 1,
            category: Category::Fire,
            key: key.into(),
            message: "m".into(),
            state: AlarmState::ActiveUnacked,
            zone: None,
            device: None,
            point: None,
            armed: None,
        }
    }

    fn rule(after_min: u64, every_min: u64, max: u32) -> RuleConfig {
        RuleConfig {
            name: "r".into(),
            priorities: None,
            categories: None,
            zones: None,
            armed: None,
            tiers: vec!["guards".into(), "manager".into()],
            escalate_after: Some(Duration::from_secs(after_min * 60)),
            repeat_every: Some(Duration::from_secs(every_min * 60)),
            max_escalations: max,
        }
    }

    /// A fake clock stepping through time, firing what is due.
    fn run(e: &mut Escalations, from: i64, to: i64, step: i64) -> Vec<(i64, String, u32)> {
        let mut fired = Vec::new();
        let mut now = from;
        while now <= to {
            for d in e.due(now) {
                fired.push((now, d.tier.clone(), d.step));
                e.done(&d.key, d.step);
            }
            now += step;
        }
        fired
    }

    #[test]
    fn tier_two_after_n_minutes_not_before() {
        let t0 = 1_000_000_000_000;
        let mut e = Escalations::default();
        e.raised(alarm("a", t0), &rule(5, 10, 12));
        assert!(e.due(t0 + 5 * MIN - 1).is_empty(), "not before N minutes");
        assert_eq!(e.next_deadline(), Some(t0 + 5 * MIN));
        let fired = run(&mut e, t0, t0 + 26 * MIN, 1000);
        assert_eq!(
            fired,
            vec![
                (t0 + 5 * MIN, "manager".into(), 1),
                (t0 + 15 * MIN, "manager".into(), 2),
                (t0 + 25 * MIN, "manager".into(), 3),
            ]
        );
    }

    #[test]
    fn never_after_acknowledgement() {
        let t0 = 1_000_000_000_000;
        let mut e = Escalations::default();
        e.raised(alarm("a", t0), &rule(5, 5, 12));
        assert!(run(&mut e, t0, t0 + 4 * MIN, 1000).is_empty());
        assert!(e.ended("a"));
        assert!(run(&mut e, t0 + 4 * MIN, t0 + 60 * MIN, 1000).is_empty());
        assert_eq!(e.next_deadline(), None);
    }

    #[test]
    fn replay_keeps_deadline_and_outage_fires_once() {
        let t0 = 1_000_000_000_000;
        let mut e = Escalations::default();
        e.raised(alarm("a", t0), &rule(5, 5, 3));
        e.raised(alarm("a", t0 + 4 * MIN), &rule(5, 5, 3));
        assert_eq!(e.next_deadline(), Some(t0 + 5 * MIN));
        // Down for an hour: one push for the latest step, capped at max.
        let due = e.due(t0 + 60 * MIN);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].step, 3);
        e.done("a", 3);
        assert!(e.alarms.is_empty(), "no step left");
    }

    #[test]
    fn no_escalation_without_escalate_after() {
        let mut r = rule(5, 5, 3);
        r.escalate_after = None;
        let mut e = Escalations::default();
        e.raised(alarm("a", 0), &r);
        assert!(e.alarms.is_empty());
    }

    proptest! {
        /// Whatever the clock does, steps only grow, never exceed the cap,
        /// none fires before its deadline, and nothing fires after `ended`.
        #[test]
        fn steps_monotonic(after in 1i64..30, every in 1i64..30, max in 1u32..8,
                           ticks in proptest::collection::vec(0i64..20 * MIN, 1..40),
                           ack_at in proptest::option::of(0usize..40)) {
            let t0 = 1_000_000_000_000;
            let mut e = Escalations::default();
            e.raised(alarm("a", t0), &rule(after as u64, every as u64, max));
            let mut now = t0;
            let mut last = 0;
            for (i, dt) in ticks.iter().enumerate() {
                now += dt;
                if ack_at == Some(i) { e.ended("a"); }
                for d in e.due(now) {
                    prop_assert!(ack_at.is_none_or(|a| i < a));
                    prop_assert!(d.step > last && d.step <= max);
                    prop_assert!(now >= t0 + after * MIN);
                    last = d.step;
                    e.done(&d.key, d.step);
                }
            }
        }
    }
}
