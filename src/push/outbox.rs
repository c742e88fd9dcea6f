//! One channel's delivery state (pure): what to send next, when, and how far
//! the channel's journal cursor may move.
//!
//! - Order: priority-1 pushes first, then the rest, each oldest first.
//! - Retries are per push: a push the vendor refused waits out its own
//!   backoff (doubling from `retry_min_s` to `retry_max_s`) while other
//!   pushes go ahead, so a push the vendor keeps refusing never holds back
//!   a different one. Only when the vendor cannot be reached at all (a
//!   transport error) does the whole channel back off; even then a
//!   priority-1 push not yet tried goes at once (it probes the channel).
//! - Dead letter: a push the vendor refuses for good, or that failed
//!   `dead_letter_after_attempts` times, or that is older than
//!   `dead_letter_after_s` and has failed (or waits on a channel that is
//!   down), leaves the outbox, so the cursor moves on.
//! - Rate limit: at most `rate_per_minute` requests in any 60 s.
//! - Storm: when the alarms pushed within `storm_window_s` plus those
//!   waiting exceed `storm_threshold`, alarms of priority 2–5 are condensed
//!   into one summary at most every quarter window. **Priority-1 alarms
//!   are never condensed**: each gets its own push, ahead of the summary.
//! - Cursor: it moves to just before the oldest push still waiting, so
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
    /// Time of the journal event (Unix ms): the push's age counts from here.
    pub since: i64,
    /// Refusals by the vendor so far (transport errors do not count).
    pub failures: u32,
    /// Failed attempts of any kind (transport errors included).
    pub attempts: u32,
    /// Not before this time (Unix ms): the push's own retry backoff.
    pub not_before: i64,
}

/// How an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The vendor was not reached (connect, TLS, timeout): the whole
    /// channel backs off; the push's attempts do not count up.
    Unreachable,
    /// The vendor answered with a refusal worth retrying (5xx, 408, 429,
    /// a rate-limit code): this push backs off, others go ahead.
    Transient,
    /// The vendor refused this push for good (bad key or signature,
    /// keyword filter, content too long, other 4xx): dead-lettered at once.
    Permanent,
}

/// What became of a failed attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Wait before the next try of the push (or of the channel).
    pub retry_in: Duration,
    /// Pushes given up (removed from the outbox), with the reason.
    pub dead: Vec<(Item, DeadReason)>,
}

/// Why a push was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadReason {
    /// The vendor refused it for good.
    Refused,
    /// It failed `dead_letter_after_attempts` times.
    Attempts,
    /// It was older than `dead_letter_after_s`.
    Age,
}

impl DeadReason {
    /// `refused`, `attempts`, `age`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeadReason::Refused => "refused",
            DeadReason::Attempts => "attempts",
            DeadReason::Age => "age",
        }
    }
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
    /// Give a push up after this many refusals (0: never).
    pub dead_letter_after_attempts: u32,
    /// Give a failing push up once this old (`None`: never).
    pub dead_letter_after: Option<Duration>,
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
    /// Transport failures in a row, and when to try the channel again.
    down: u32,
    down_until: i64,
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
            down: 0,
            down_until: i64::MIN,
        }
    }

    /// The journal event `seq` (recorded at `ts_ms`) was read; `item` is
    /// its push, if any.
    pub fn read(&mut self, seq: u64, item: Option<Routed>, ts_ms: i64) {
        if seq <= self.read_upto {
            return;
        }
        self.read_upto = seq;
        if let Some(routed) = item {
            self.queue.push(Item {
                seq,
                routed,
                since: ts_ms,
                failures: 0,
                attempts: 0,
                not_before: i64::MIN,
            });
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

    /// Journal time (Unix ms) of the oldest waiting push.
    pub fn oldest_since(&self) -> Option<i64> {
        self.queue.iter().map(|i| i.since).min()
    }

    /// Is the channel backing off after transport errors?
    pub fn is_down(&self) -> bool {
        self.down > 0
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

    fn backoff(&self, n: u32) -> Duration {
        let shift = n.saturating_sub(1).min(20);
        self.limits
            .retry_min
            .saturating_mul(1u32 << shift)
            .min(self.limits.retry_max)
    }

    /// Decide what to do at `now` (Unix ms).
    pub fn next(&mut self, now: i64) -> Action {
        if self.queue.is_empty() {
            return Action::Idle;
        }
        self.prune(now);
        if self.requests.len() >= self.limits.rate_per_minute as usize {
            return Action::Wait(self.requests[0] + 60_000);
        }
        let down = now < self.down_until;
        // Priority 1 first, always alone, each on its own backoff: a push
        // the vendor refuses never holds back a different fire alarm. While
        // the channel is down, a P1 not yet tried still goes (it probes).
        let p1 = self.queue.iter().find(|i| {
            i.routed.alarm.priority == 1 && now >= i.not_before && (!down || i.attempts == 0)
        });
        if let Some(p1) = p1 {
            return Action::Send {
                seqs: vec![p1.seq],
                summary: false,
            };
        }
        if down {
            return Action::Wait(self.down_until);
        }
        // Most urgent first, then oldest: in a storm the summary lists a
        // P2 before the P4s that came before it, and never leaves it out.
        let mut ready: Vec<(u8, u64)> = self
            .queue
            .iter()
            .filter(|i| i.routed.alarm.priority != 1 && now >= i.not_before)
            .map(|i| (i.routed.alarm.priority, i.seq))
            .collect();
        ready.sort_unstable();
        let Some(&(_, first)) = ready.first() else {
            // Everything waits out its backoff.
            let t = self.queue.iter().map(|i| i.not_before).min();
            return t.map_or(Action::Idle, Action::Wait);
        };
        if !self.storm(now) {
            return Action::Send {
                seqs: vec![first],
                summary: false,
            };
        }
        let gap = ms(self.limits.storm_window) / 4;
        if let Some(last) = self.last_summary {
            if now < last + gap {
                return Action::Wait(last + gap);
            }
        }
        let seqs: Vec<u64> = ready
            .into_iter()
            .take(MAX_SUMMARY)
            .map(|(_, seq)| seq)
            .collect();
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
        self.down = 0;
        self.down_until = i64::MIN;
    }

    /// The push of `seqs` failed at `now` after `requests` HTTP requests:
    /// back off (the push, or the channel when unreachable), and give up
    /// the pushes that are dead letters now.
    pub fn failed(&mut self, seqs: &[u64], how: Failure, requests: usize, now: i64) -> Verdict {
        for _ in 0..requests {
            self.requests.push_back(now);
        }
        let retry_in = if how == Failure::Unreachable {
            self.down = self.down.saturating_add(1);
            let wait = self.backoff(self.down);
            self.down_until = now.saturating_add(ms(wait));
            wait
        } else {
            // The vendor answered: the channel is up.
            self.down = 0;
            self.down_until = i64::MIN;
            Duration::ZERO
        };
        let mut retry_in = retry_in;
        let mut dead = Vec::new();
        let limits = self.limits.clone();
        let mut i = 0;
        while i < self.queue.len() {
            if !seqs.contains(&self.queue[i].seq) {
                i += 1;
                continue;
            }
            let it = &mut self.queue[i];
            it.attempts = it.attempts.saturating_add(1);
            if how != Failure::Unreachable {
                it.failures = it.failures.saturating_add(1);
                let shift = it.failures.saturating_sub(1).min(20);
                let wait = limits
                    .retry_min
                    .saturating_mul(1u32 << shift)
                    .min(limits.retry_max);
                it.not_before = now.saturating_add(ms(wait));
                retry_in = retry_in.max(wait);
            }
            let reason = if how == Failure::Permanent {
                Some(DeadReason::Refused)
            } else if limits.dead_letter_after_attempts > 0
                && it.failures >= limits.dead_letter_after_attempts
            {
                Some(DeadReason::Attempts)
            } else if limits
                .dead_letter_after
                .is_some_and(|max| now.saturating_sub(it.since) >= ms(max))
            {
                Some(DeadReason::Age)
            } else {
                None
            };
            match reason {
                Some(r) => dead.push((self.queue.remove(i), r)),
                None => i += 1,
            }
        }
        Verdict { retry_in, dead }
    }

    /// Give up, at `now`, the pushes older than `dead_letter_after_s` that
    /// have failed, or that wait while the channel is down.
    pub fn expire(&mut self, now: i64) -> Vec<(Item, DeadReason)> {
        let Some(max) = self.limits.dead_letter_after else {
            return Vec::new();
        };
        let down = self.down > 0;
        let old = |i: &Item| (i.attempts > 0 || down) && now.saturating_sub(i.since) >= ms(max);
        let (dead, keep): (Vec<Item>, Vec<Item>) =
            std::mem::take(&mut self.queue).into_iter().partition(old);
        self.queue = keep;
        dead.into_iter().map(|i| (i, DeadReason::Age)).collect()
    }

    /// Failed attempts (of any kind) of the push `seq` (0 when unknown).
    pub fn attempts(&self, seq: u64) -> u32 {
        self.item(seq).map_or(0, |i| i.attempts)
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
            dead_letter_after_attempts: 0,
            dead_letter_after: None,
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
            o.read(seq, Some(routed(p)), 0);
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
    fn in_a_storm_the_most_urgent_go_first() {
        let mut o = Outbox::new(limits(), 0);
        // 30 P4s waiting, then a P3 and a P2.
        let n = 30;
        for seq in 1..=n {
            o.read(seq, Some(routed(4)), 0);
        }
        o.read(n + 1, Some(routed(3)), 0);
        o.read(n + 2, Some(routed(2)), 0);
        let sent = drain(&mut o, 0, 10 * 60_000);
        let order: Vec<u64> = sent.iter().flat_map(|(_, s, _)| s.clone()).collect();
        assert_eq!(
            order[..3],
            [n + 2, n + 1, 1],
            "P2, then P3, then the oldest P4: {sent:?}"
        );
        assert!(sent.iter().any(|(_, _, sum)| *sum), "condensed: {sent:?}");
        let mut all: Vec<u64> = sent.iter().flat_map(|(_, s, _)| s.clone()).collect();
        all.sort();
        assert_eq!(
            all,
            (1..=n + 2).collect::<Vec<_>>(),
            "every alarm pushed once"
        );
    }

    #[test]
    fn rate_limit_respected() {
        let mut l = limits();
        l.storm_threshold = 1000;
        let mut o = Outbox::new(l, 0);
        for seq in 1..=45 {
            o.read(seq, Some(routed(1)), 0);
        }
        let sent = drain(&mut o, 0, 10 * 60_000);
        assert_eq!(sent.len(), 45);
        for (i, (t, _, _)) in sent.iter().enumerate() {
            let in_minute = sent[..i].iter().filter(|(u, _, _)| *u > t - 60_000).count();
            assert!(in_minute < 20, "more than 20 a minute at {t}");
        }
    }

    fn send1(seq: u64) -> Action {
        Action::Send {
            seqs: vec![seq],
            summary: false,
        }
    }

    fn quiet() -> Limits {
        let mut l = limits();
        l.storm_threshold = 1000;
        l
    }

    #[test]
    fn refused_p1_does_not_block_a_later_p1() {
        let mut o = Outbox::new(quiet(), 0);
        o.read(1, Some(routed(1)), 0);
        assert_eq!(o.next(0), send1(1));
        let v = o.failed(&[1], Failure::Transient, 1, 0);
        assert!(v.dead.is_empty());
        assert_eq!(v.retry_in, Duration::from_secs(1));
        // A new fire alarm goes at once, while seq 1 waits out its backoff.
        o.read(2, Some(routed(1)), 0);
        o.read(3, Some(routed(3)), 0);
        assert_eq!(o.next(0), send1(2));
        o.delivered(&[2], false, 1, 0);
        assert_eq!(o.next(0), send1(3), "a P3 also passes the failing P1");
        o.delivered(&[3], false, 1, 0);
        assert_eq!(o.next(0), Action::Wait(1_000));
        assert_eq!(o.next(1_000), send1(1));
        assert_eq!(o.ack_upto(), 0, "seq 1 still waits");
    }

    #[test]
    fn failing_p3_does_not_delay_a_new_p1() {
        let mut o = Outbox::new(quiet(), 0);
        o.read(1, Some(routed(3)), 0);
        for k in 0..10 {
            let now = k * 60_000;
            assert_eq!(o.next(now), send1(1));
            o.failed(&[1], Failure::Transient, 1, now);
        }
        // seq 1 now waits retry_max; a new P1 does not.
        o.read(2, Some(routed(1)), 0);
        assert_eq!(o.next(540_001), send1(2));
    }

    #[test]
    fn unreachable_channel_backs_off_but_a_new_p1_probes() {
        let mut o = Outbox::new(quiet(), 0);
        o.read(1, Some(routed(3)), 0);
        o.read(2, Some(routed(1)), 0);
        assert_eq!(o.next(0), send1(2));
        let v = o.failed(&[2], Failure::Unreachable, 1, 0);
        assert_eq!(v.retry_in, Duration::from_secs(1));
        assert!(o.is_down());
        assert_eq!(o.next(10), Action::Wait(1_000), "the channel backs off");
        o.read(3, Some(routed(1)), 0);
        assert_eq!(o.next(10), send1(3), "an untried P1 probes at once");
        o.failed(&[3], Failure::Unreachable, 1, 10);
        assert_eq!(o.next(20), Action::Wait(2_010));
        assert_eq!(o.attempts(2), 1);
        assert_eq!(
            o.item(2).unwrap().failures,
            0,
            "transport errors do not count"
        );
    }

    #[test]
    fn permanent_refusal_is_dead_lettered_and_frees_the_cursor() {
        let mut o = Outbox::new(quiet(), 10);
        o.read(11, Some(routed(1)), 0);
        o.read(12, None, 0);
        o.read(13, Some(routed(3)), 0);
        assert_eq!(o.ack_upto(), 10);
        assert_eq!(o.next(0), send1(11));
        let v = o.failed(&[11], Failure::Permanent, 1, 0);
        assert_eq!(v.dead.len(), 1);
        assert_eq!(v.dead[0].0.seq, 11);
        assert_eq!(v.dead[0].1, DeadReason::Refused);
        assert_eq!(o.ack_upto(), 12, "the cursor moves past the dead letter");
        assert_eq!(o.next(0), send1(13));
        o.delivered(&[13], false, 1, 0);
        assert_eq!(o.ack_upto(), 13);
        assert_eq!(o.next(0), Action::Idle);
    }

    #[test]
    fn transient_refusals_back_off_then_dead_letter_after_attempts() {
        let mut l = quiet();
        l.dead_letter_after_attempts = 6;
        let mut o = Outbox::new(l, 10);
        o.read(11, None, 0);
        o.read(12, Some(routed(2)), 0);
        o.read(13, None, 0);
        assert_eq!(o.ack_upto(), 11);
        let mut waits = Vec::new();
        let mut now = 0;
        for _ in 0..5 {
            assert_eq!(o.next(now), send1(12));
            let v = o.failed(&[12], Failure::Transient, 1, now);
            assert!(v.dead.is_empty());
            waits.push(v.retry_in.as_secs());
            assert_eq!(
                o.next(now),
                Action::Wait(now + 1000 * v.retry_in.as_secs() as i64)
            );
            now += 1000 * v.retry_in.as_secs() as i64;
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 8]);
        assert_eq!(o.next(now), send1(12));
        let v = o.failed(&[12], Failure::Transient, 1, now);
        assert_eq!(v.dead.len(), 1);
        assert_eq!(v.dead[0].1, DeadReason::Attempts);
        assert_eq!(o.ack_upto(), 13);
    }

    #[test]
    fn old_failing_pushes_expire() {
        let mut l = quiet();
        l.dead_letter_after = Some(Duration::from_secs(3600));
        let mut o = Outbox::new(l, 0);
        o.read(1, Some(routed(3)), 0);
        o.read(2, Some(routed(3)), 0);
        assert_eq!(o.next(0), send1(1));
        o.failed(&[1], Failure::Transient, 1, 0);
        assert!(o.expire(3_599_999).is_empty());
        // seq 2 was never tried and the channel is up: it stays.
        let dead = o.expire(3_600_000);
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].0.seq, dead[0].1), (1, DeadReason::Age));
        assert_eq!(o.ack_upto(), 1);
        // A channel that is down gives up every old push.
        assert_eq!(o.next(3_600_000), send1(2));
        let v = o.failed(&[2], Failure::Unreachable, 1, 3_600_000);
        assert_eq!((v.dead[0].0.seq, v.dead[0].1), (2, DeadReason::Age));
        o.read(3, Some(routed(3)), 0);
        let dead = o.expire(3_600_001);
        assert_eq!(dead.len(), 1, "untried, but its channel is down");
        assert_eq!(o.pending(), 0);
        assert_eq!(o.ack_upto(), 3);
    }

    proptest! {
        /// Pushes the vendor refuses for good or a few times never block
        /// the others: every push ends delivered or (refused ones only)
        /// dead-lettered, exactly once; a fresh P1 is always sent at once;
        /// and the cursor ends past everything.
        #[test]
        fn refusals_never_block_others(
            cases in proptest::collection::vec((1u8..=5, any::<bool>(), 0u32..4), 1..60)
        ) {
            let mut o = Outbox::new(quiet(), 0);
            let mut delivered = std::collections::HashSet::new();
            let mut dead = std::collections::HashSet::new();
            let mut tries = std::collections::HashMap::new();
            let mut now = 0i64;
            let mut step = |o: &mut Outbox, now: &mut i64| -> bool {
                match o.next(*now) {
                    Action::Idle => false,
                    Action::Wait(t) => { *now = t.max(*now + 1); true }
                    Action::Send { seqs, summary } => {
                        assert!(!summary);
                        let seq = seqs[0];
                        let (_, bad, flaky) = cases[seq as usize - 1];
                        let n = tries.entry(seq).or_insert(0u32);
                        *n += 1;
                        if bad {
                            let v = o.failed(&seqs, Failure::Permanent, 1, *now);
                            for (i, r) in v.dead { assert_eq!(r, DeadReason::Refused); assert!(dead.insert(i.seq)); }
                        } else if *n <= flaky {
                            let v = o.failed(&seqs, Failure::Transient, 1, *now);
                            assert!(v.dead.is_empty());
                        } else {
                            o.delivered(&seqs, false, 1, *now);
                            assert!(delivered.insert(seq));
                        }
                        true
                    }
                }
            };
            for (i, (p, _, _)) in cases.iter().enumerate() {
                let seq = i as u64 + 1;
                o.read(seq, Some(routed(*p)), now);
                if *p == 1 {
                    // A P1 goes next (this one or an older one ready),
                    // whatever else waits or fails (unless the rate limit
                    // is reached).
                    o.prune(now);
                    if o.requests.len() < 20 {
                        let Action::Send { seqs, .. } = o.next(now) else {
                            panic!("a fresh P1 waits");
                        };
                        prop_assert_eq!(cases[seqs[0] as usize - 1].0, 1);
                        prop_assert!(seqs[0] == seq || o.item(seqs[0]).is_some_and(|i| i.attempts == 0 || i.not_before <= now));
                    }
                }
                for _ in 0..3 { if !step(&mut o, &mut now) { break; } }
                if let Some(first) = o.queue.first() { prop_assert!(o.ack_upto() < first.seq); }
            }
            let mut guard = 0;
            while step(&mut o, &mut now) { guard += 1; prop_assert!(guard < 100_000); }
            let bad: std::collections::HashSet<u64> = cases.iter().enumerate()
                .filter(|(_, c)| c.1).map(|(i, _)| i as u64 + 1).collect();
            prop_assert_eq!(&dead, &bad);
            prop_assert_eq!(delivered.len() + dead.len(), cases.len());
            prop_assert_eq!(o.ack_upto(), cases.len() as u64);
        }

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
                o.read(seq, p.map(routed), 0);
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
