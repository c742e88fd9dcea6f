//! One channel's delivery state (pure): what to send next, when, and how far
//! the channel's journal cursor may move.
//!
//! - Order: priority-1 pushes first, then the rest, each oldest first; a
//!   failing push is retried (backoff doubling from `retry_min_s` to
//!   `retry_max_s`) before anything after it.
//! - Rate limit: at most `rate_per_minute` requests in any 60 s.
//! - Storm: when the alarms pushed within `storm_window_s` plus those
//!   waiting exceed `storm_threshold`, alarms of priority 2–5 are condensed
//!   into one summary at most every quarter window. **Priority-1 alarms
//!   are never condensed**: each gets its own push, ahead of the summary.
//! - Cursor: it moves to just before the oldest push not yet delivered, so
//!   a crash or restart loses nothing; pushes delivered after that one may
//!   be made again (at least once).

use super::route::Routed;
use std::collections::VecDeque;
use std::time::Duration;

/// A push waiting for delivery.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Journal seq of the event it comes from.
    pub seq: u64,
    pub routed: Routed,
}

/// What the channel should do now.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Nothing waits.
    Idle,
    /// Wait until this time (Unix ms): retry backoff, rate limit or summary pacing.
    Wait(i64),
    /// Push these items: one alone, or several as a summary.
    Send { seqs: Vec<u64>, summary: bool },
}

/// Limits of one channel.
#[derive(Clone, Debug)]
pub struct Limits {
    pub rate_per_minute: u32,
    pub storm_threshold: u32,
    pub storm_window: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

/// Most alarms in one summary.
const MAX_SUMMARY: usize = 200;

/// Delivery state of one channel.
#[derive(Debug)]
pub struct Outbox {
    limits: Limits,
    /// Waiting pushes, in seq order.
    queue: Vec<Item>,
    /// Highest journal seq examined.
    read_upto: u64,
    /// Times of requests in the last minute.
    requests: VecDeque<i64>,
    /// (time, alarms covered) of pushes within the storm window.
    pushed: VecDeque<(i64, usize)>,
    last_summary: Option<i64>,
    /// Failed attempts of the current head, and when to try again.
    failures: u32,
    not_before: i64,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Outbox {
    /// An outbox whose cursor stands at `acked`.
    pub fn new(limits: Limits, acked: u64) -> Outbox {
        Outbox {
            limits,
            queue: Vec::new(),
            read_upto: acked,
            requests: VecDeque::new(),
            pushed: VecDeque::new(),
            last_summary: None,
            failures: 0,
            not_before: i64::MIN,
        }
    }

    /// The journal event `seq` was read; `item` is its push, if any.
    pub fn read(&mut self, seq: u64, item: Option<Routed>) {
        if seq <= self.read_upto {
            return;
        }
        self.read_upto = seq;
        if let Some(routed) = item {
            self.queue.push(Item { seq, routed });
        }
    }

    /// Highest journal seq examined.
    pub fn read_upto(&self) -> u64 {
        self.read_upto
    }

    /// How far the cursor may move: everything before the oldest waiting push.
    pub fn ack_upto(&self) -> u64 {
        self.queue
            .first()
            .map(|i| i.seq - 1)
            .unwrap_or(self.read_upto)
    }

    /// Pushes waiting.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// The waiting item with this seq.
    pub fn item(&self, seq: u64) -> Option<&Item> {
        self.queue.iter().find(|i| i.seq == seq)
    }

    fn prune(&mut self, now: i64) {
        while self.requests.front().is_some_and(|&t| t <= now - 60_000) {
            self.requests.pop_front();
        }
        let w = ms(self.limits.storm_window);
        while self.pushed.front().is_some_and(|&(t, _)| t <= now - w) {
            self.pushed.pop_front();
        }
    }

    /// Is a storm on at `now`?
    pub fn storm(&mut self, now: i64) -> bool {
        self.prune(now);
        let recent: usize = self.pushed.iter().map(|&(_, n)| n).sum();
        recent + self.queue.len() > self.limits.storm_threshold as usize
    }

    /// Decide what to do at `now` (Unix ms). `requests` is how many HTTP
    /// requests a push costs on this channel (SMS: one per phone).
    pub fn next(&mut self, now: i64) -> Action {
        if self.queue.is_empty() {
            return Action::Idle;
        }
        if now < self.not_before {
            return Action::Wait(self.not_before);
        }
        self.prune(now);
        if self.requests.len() >= self.limits.rate_per_minute as usize {
            return Action::Wait(self.requests[0] + 60_000);
        }
        // Priority 1 first, always alone: a failing or slow lower-priority
        // push never holds a fire alarm back.
        if let Some(p1) = self.queue.iter().find(|i| i.routed.alarm.priority == 1) {
            return Action::Send {
                seqs: vec![p1.seq],
                summary: false,
            };
        }
        if !self.storm(now) {
            return Action::Send {
                seqs: vec![self.queue[0].seq],
                summary: false,
            };
        }
        let gap = ms(self.limits.storm_window) / 4;
        if let Some(last) = self.last_summary {
            if now < last + gap {
                return Action::Wait(last + gap);
            }
        }
        let seqs: Vec<u64> = self.queue.iter().take(MAX_SUMMARY).map(|i| i.seq).collect();
        let summary = seqs.len() > 1;
        Action::Send { seqs, summary }
    }

    /// `seqs` were delivered at `now` with `requests` HTTP requests.
    pub fn delivered(&mut self, seqs: &[u64], summary: bool, requests: usize, now: i64) {
        self.queue.retain(|i| !seqs.contains(&i.seq));
        for _ in 0..requests.max(1) {
            self.requests.push_back(now);
        }
        self.pushed.push_back((now, seqs.len()));
        if summary {
            self.last_summary = Some(now);
        }
        self.failures = 0;
        self.not_before = i64::MIN;
    }

    /// The push failed at `now`: back off. Returns the wait before the next try.
    pub fn failed(&mut self, requests: usize, now: i64) -> Duration {
        for _ in 0..requests {
            self.requests.push_back(now);
        }
        self.failures = self.failures.saturating_add(1);
        let shift = self.failures.saturating_sub(1).min(20);
        let wait = self
            .limits
            .retry_min
            .saturating_mul(1u32 << shift)
            .min(self.limits.retry_max);
        self.not_before = now.saturating_add(ms(wait));
        wait
    }

    /// Failed attempts of the push now at the head.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AlarmState, Category, Timestamp};
    use crate::push::route::AlarmView;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits {
            rate_per_minute: 20,
            storm_threshold: 5,
            storm_window: Duration::from_secs(60),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(8),
        }
    }

    fn routed(p: u8) -> Routed {
        Routed {
            alarm: AlarmView {
                id: "x".into(),
                seq: 0,
                ts: Timestamp::from_unix_ms(0).unwrap(),
                priority: p,
                category: Category::Intrusion,
                key: "k".into(),
                message: "m".into(),
                state: AlarmState::ActiveUnacked,
                zone: None,
                device: None,
                point: None,
                armed: None,
            },
            tier: "t".into(),
            escalation: None,
            phones: vec![],
        }
    }

    /// Drive the outbox with instant deliveries; returns what was sent.
    fn drain(o: &mut Outbox, mut now: i64, until: i64) -> Vec<(i64, Vec<u64>, bool)> {
        let mut out = Vec::new();
        while now <= until {
            match o.next(now) {
                Action::Idle => break,
                Action::Wait(t) => now = t.max(now + 1),
                Action::Send { seqs, summary } => {
                    o.delivered(&seqs, summary, 1, now);
                    out.push((now, seqs, summary));
                }
            }
        }
        out
    }

    #[test]
    fn storm_condensed_and_every_p1_alone() {
        let mut o = Outbox::new(limits(), 0);
        for seq in 1..=50 {
            let p = if seq % 10 == 0 { 1 } else { 3 };
            o.read(seq, Some(routed(p)));
        }
        let sent = drain(&mut o, 0, 10 * 60_000);
        let p1: Vec<_> = sent
            .iter()
            .filter(|(_, s, sum)| !sum && s[0] % 10 == 0)
            .collect();
        assert_eq!(p1.len(), 5, "each P1 alone: {sent:?}");
        assert!(sent.len() <= 7, "condensed: {sent:?}");
        let mut all: Vec<u64> = sent.iter().flat_map(|(_, s, _)| s.clone()).collect();
        all.sort();
        assert_eq!(all, (1..=50).collect::<Vec<_>>());
        assert_eq!(o.ack_upto(), 50);
    }

    #[test]
    fn rate_limit_respected() {
        let mut l = limits();
        l.storm_threshold = 1000;
        let mut o = Outbox::new(l, 0);
        for seq in 1..=45 {
            o.read(seq, Some(routed(1)));
        }
        let sent = drain(&mut o, 0, 10 * 60_000);
        assert_eq!(sent.len(), 45);
        for (i, (t, _, _)) in sent.iter().enumerate() {
            let in_minute = sent[..i].iter().filter(|(u, _, _)| *u > t - 60_000).count();
            assert!(in_minute < 20, "more than 20 a minute at {t}");
        }
    }

    #[test]
    fn p1_is_not_held_back_by_a_failing_push() {
        let mut l = limits();
        l.storm_threshold = 1000;
        let mut o = Outbox::new(l, 0);
        o.read(1, Some(routed(3)));
        assert_eq!(
            o.next(0),
            Action::Send {
                seqs: vec![1],
                summary: false
            }
        );
        o.failed(1, 0);
        o.read(2, Some(routed(1)));
        // The backoff is the channel's; once it passes, the P1 goes first.
        assert_eq!(
            o.next(1_000),
            Action::Send {
                seqs: vec![2],
                summary: false
            }
        );
        o.delivered(&[2], false, 1, 1_000);
        assert_eq!(o.ack_upto(), 0, "seq 1 still waits");
    }

    #[test]
    fn retry_backoff_and_cursor() {
        let mut o = Outbox::new(limits(), 10);
        o.read(11, None);
        o.read(12, Some(routed(2)));
        o.read(13, None);
        assert_eq!(o.ack_upto(), 11);
        let waits: Vec<_> = (0..5).map(|_| o.failed(1, 0).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 8]);
        assert_eq!(o.next(7_999), Action::Wait(8_000));
        assert_eq!(
            o.next(8_000),
            Action::Send {
                seqs: vec![12],
                summary: false
            }
        );
        o.delivered(&[12], false, 1, 8_000);
        assert_eq!(o.ack_upto(), 13);
        assert_eq!(o.failures(), 0);
    }

    proptest! {
        /// Whatever arrives, every push is delivered exactly once (alone or
        /// summarized), P1 always alone, and the cursor never passes a
        /// waiting push.
        #[test]
        fn nothing_lost_p1_never_folded(prios in proptest::collection::vec(prop_oneof![Just(None), (1u8..=5).prop_map(Some)], 1..120)) {
            let mut o = Outbox::new(limits(), 0);
            let mut now = 0;
            let mut seen = std::collections::HashMap::new();
            for (i, p) in prios.iter().enumerate() {
                let seq = i as u64 + 1;
                o.read(seq, p.map(routed));
                if i % 7 == 0 {
                    for (_, seqs, summary) in drain(&mut o, now, now + 5_000) {
                        for s in seqs { *seen.entry(s).or_insert(0) += 1;
                            if summary { prop_assert_ne!(prios[s as usize - 1], Some(1)); } }
                    }
                    now += 5_000;
                }
                if let Some(first) = o.queue.first() { prop_assert!(o.ack_upto() < first.seq); }
            }
            for (_, seqs, summary) in drain(&mut o, now, now + 3_600_000) {
                for s in seqs { *seen.entry(s).or_insert(0) += 1;
                    if summary { prop_assert_ne!(prios[s as usize - 1], Some(1)); } }
            }
            let expected: Vec<u64> = prios.iter().enumerate().filter(|(_, p)| p.is_some()).map(|(i, _)| i as u64 + 1).collect();
            let mut got: Vec<u64> = seen.keys().copied().collect();
            got.sort();
            prop_assert_eq!(got, expected);
            prop_assert!(seen.values().all(|&n| n == 1));
            prop_assert_eq!(o.ack_upto(), prios.len() as u64);
        }
    }
}
