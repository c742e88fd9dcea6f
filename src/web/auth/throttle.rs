//! Login throttling: after `max_failures` attempts that were not forgiven
//! within `window` for one key (an account at a client address, or a
//! client address: the caller picks the keys), further attempts for that key are refused until the
//! oldest leaves the window.
//!
//! An attempt is counted when it starts ([`Throttle::attempt`], which
//! checks and counts in one step), not when its password check ends: a
//! burst of concurrent logins cannot all pass the check before the first
//! failure is recorded. An attempt that turns out not to be a guess (the
//! right password, or one refused before any check) is taken back with
//! [`Throttle::forgive`].
//!
//! Refused attempts are counted too, so that a flood of them is recorded
//! as one audit entry per key per window ([`Refused::report`]), not one per
//! request: a stranger cannot rotate the audit log's real entries away.
//! Pure state over an injected `Instant`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Most keys tracked; beyond it the stalest key is forgotten.
const MAX_KEYS: usize = 4096;

/// Attempts per key.
#[derive(Debug)]
pub struct Throttle {
    max_failures: usize,
    window: Duration,
    keys: HashMap<String, Key>,
}

/// One key's counted attempts and refusals.
#[derive(Debug, Default)]
struct Key {
    attempts: VecDeque<Instant>,
    /// Refused since the last report.
    refused: u64,
    /// When the last report was due.
    reported: Option<Instant>,
}

/// An attempt refused because its key is locked out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Until the oldest counted attempt leaves the window.
    pub wait: Duration,
    /// `Some` when this refusal is to be recorded (audited): the first
    /// of the key, then the first after each window since the last
    /// report. Carries the refusals since the last report, this one
    /// included; the others are only counted.
    pub report: Option<Report>,
}

/// What a recorded refusal stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// Refusals since the last report, this one included.
    pub refused: u64,
    /// The key's first report (no earlier one in memory).
    pub first: bool,
}

impl Throttle {
    pub fn new(max_failures: usize, window: Duration) -> Throttle {
        Throttle {
            max_failures: max_failures.max(1),
            window,
            keys: HashMap::new(),
        }
    }

    fn prune(q: &mut VecDeque<Instant>, window: Duration, now: Instant) {
        while q
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            q.pop_front();
        }
    }

    /// `Some(wait)` while `key` is locked out.
    pub fn blocked(&mut self, key: &str, now: Instant) -> Option<Duration> {
        let window = self.window;
        let q = &mut self.keys.get_mut(key)?.attempts;
        Self::prune(q, window, now);
        if q.len() >= self.max_failures {
            q.front()
                .map(|t| window.saturating_sub(now.saturating_duration_since(*t)))
        } else {
            None
        }
    }

    /// Check `key` and, unless it is locked out, count an attempt at `now`
    /// in the same step. The attempt counts as a failure until
    /// [`forgive`](Self::forgive)n.
    pub fn attempt(&mut self, key: &str, now: Instant) -> Result<(), Refused> {
        if let Some(wait) = self.blocked(key, now) {
            let window = self.window;
            let k = self.keys.get_mut(key).expect("a blocked key is tracked");
            k.refused += 1;
            let due = k
                .reported
                .is_none_or(|t| now.saturating_duration_since(t) >= window);
            let report = due.then(|| {
                let r = Report {
                    refused: k.refused,
                    first: k.reported.is_none(),
                };
                k.refused = 0;
                k.reported = Some(now);
                r
            });
            return Err(Refused { wait, report });
        }
        self.make_room(key, now);
        let k = self.keys.entry(key.to_string()).or_default();
        k.attempts.push_back(now);
        Ok(())
    }

    /// Take back the attempt counted at `at` (it was not a guess).
    pub fn forgive(&mut self, key: &str, at: Instant) {
        if let Some(k) = self.keys.get_mut(key) {
            if let Some(i) = k.attempts.iter().rposition(|t| *t == at) {
                k.attempts.remove(i);
            }
            if k.attempts.is_empty() && k.reported.is_none() {
                self.keys.remove(key);
            }
        }
    }

    /// Forget every attempt of `key`.
    pub fn clear(&mut self, key: &str) {
        self.keys.remove(key);
    }

    /// Before a new key is added at the limit: forget expired keys, then
    /// the stalest.
    fn make_room(&mut self, key: &str, now: Instant) {
        if self.keys.len() < MAX_KEYS || self.keys.contains_key(key) {
            return;
        }
        let window = self.window;
        self.keys.retain(|_, k| {
            Self::prune(&mut k.attempts, window, now);
            !k.attempts.is_empty()
                || k.reported
                    .is_some_and(|t| now.saturating_duration_since(t) < window)
        });
        if self.keys.len() >= MAX_KEYS {
            if let Some(k) = self
                .keys
                .iter()
                .min_by_key(|(_, k)| k.attempts.back().copied().max(k.reported))
                .map(|(k, _)| k.clone())
            {
                self.keys.remove(&k);
            }
        }
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn locks_after_max_then_releases() {
        let t0 = Instant::now();
        let mut t = Throttle::new(3, Duration::from_secs(60));
        for i in 0..3 {
            assert!(
                t.attempt("user:li", t0 + Duration::from_secs(i)).is_ok(),
                "attempt {i}"
            );
        }
        let r = t
            .attempt("user:li", t0 + Duration::from_secs(3))
            .unwrap_err();
        assert_eq!(r.wait, Duration::from_secs(57));
        assert!(t.blocked("user:wang", t0).is_none());
        assert!(t.attempt("user:li", t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn attempts_count_before_they_end() {
        // Many logins at once, none finished yet: only `max` get through.
        let t0 = Instant::now();
        let mut t = Throttle::new(5, Duration::from_secs(900));
        let passed = (0..500).filter(|_| t.attempt("k", t0).is_ok()).count();
        assert_eq!(passed, 5);
    }

    #[test]
    fn forgiven_attempts_do_not_count() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2, Duration::from_secs(60));
        let t1 = t0 + Duration::from_secs(1);
        t.attempt("k", t0).unwrap();
        t.attempt("k", t1).unwrap();
        assert!(t.blocked("k", t1).is_some());
        t.forgive("k", t1);
        assert!(t.blocked("k", t1).is_none());
        t.forgive("k", t0);
        assert!(t.is_empty());
    }

    #[test]
    fn a_flood_of_refusals_is_reported_once_per_window() {
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        let mut t = Throttle::new(2, w);
        t.attempt("k", t0).unwrap();
        t.attempt("k", t0).unwrap();
        let mut reports = Vec::new();
        // Ten refusals a second for 59 s, then one after the window.
        for i in 0..590u64 {
            let r = t.attempt("k", t0 + Duration::from_millis(100 * i));
            if let Some(rep) = r.unwrap_err().report {
                reports.push(rep);
            }
        }
        assert_eq!(
            reports,
            [Report {
                refused: 1,
                first: true
            }]
        );
        // The lock lifted after 60 s; two new failures lock again.
        let t1 = t0 + Duration::from_secs(61);
        t.attempt("k", t1).unwrap();
        t.attempt("k", t1).unwrap();
        let r = t.attempt("k", t1).unwrap_err().report.unwrap();
        assert_eq!(
            r,
            Report {
                refused: 590,
                first: false
            }
        );
        assert!(t.attempt("k", t1).unwrap_err().report.is_none());
        // Other keys report on their own.
        t.attempt("j", t1).unwrap();
        t.attempt("j", t1).unwrap();
        assert!(t.attempt("j", t1).unwrap_err().report.unwrap().first);
    }

    #[test]
    fn clear_resets() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2, Duration::from_secs(60));
        t.attempt("k", t0).unwrap();
        t.attempt("k", t0).unwrap();
        assert!(t.blocked("k", t0).is_some());
        t.clear("k");
        assert!(t.blocked("k", t0).is_none());
    }

    #[test]
    fn bounded_keys() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2, Duration::from_secs(60));
        for i in 0..MAX_KEYS + 10 {
            t.attempt(&format!("k{i}"), t0 + Duration::from_millis(i as u64))
                .unwrap();
        }
        assert_eq!(t.len(), MAX_KEYS);
    }

    proptest! {
        /// Blocked exactly when at least `max` attempts fall in the window.
        #[test]
        fn blocked_iff_max_in_window(gaps in proptest::collection::vec(0u64..40, 0..20), max in 1usize..6) {
            let t0 = Instant::now();
            let window = Duration::from_secs(60);
            let mut t = Throttle::new(max, window);
            let mut times = Vec::new();
            let mut now = t0;
            for g in gaps {
                now += Duration::from_secs(g);
                if t.attempt("k", now).is_ok() {
                    times.push(now);
                }
            }
            let check = now + Duration::from_secs(1);
            let recent = times.iter().filter(|x| check.saturating_duration_since(**x) < window).count();
            prop_assert_eq!(t.blocked("k", check).is_some(), recent >= max);
        }
    }
}
