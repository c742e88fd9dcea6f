//! Login throttling: after `max_failures` failed logins within `window`
//! for one key (an account name, or a client address), further attempts
//! for that key are refused until the oldest failure leaves the window.
//! A success clears the account's failures (not the address's). Pure
//! state over an injected `Instant`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Most keys tracked; beyond it the stalest key is forgotten.
const MAX_KEYS: usize = 4096;

/// Failed attempts per key.
#[derive(Debug)]
pub struct Throttle {
    max_failures: usize,
    window: Duration,
    failures: HashMap<String, VecDeque<Instant>>,
}

impl Throttle {
    pub fn new(max_failures: usize, window: Duration) -> Throttle {
        Throttle {
            max_failures: max_failures.max(1),
            window,
            failures: HashMap::new(),
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
        let q = self.failures.get_mut(key)?;
        Self::prune(q, window, now);
        if q.len() >= self.max_failures {
            q.front()
                .map(|t| window.saturating_sub(now.saturating_duration_since(*t)))
        } else {
            None
        }
    }

    /// Count a failed attempt.
    pub fn fail(&mut self, key: &str, now: Instant) {
        if self.failures.len() >= MAX_KEYS && !self.failures.contains_key(key) {
            let window = self.window;
            self.failures.retain(|_, q| {
                Self::prune(q, window, now);
                !q.is_empty()
            });
            if self.failures.len() >= MAX_KEYS {
                if let Some(k) = self
                    .failures
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied())
                    .map(|(k, _)| k.clone())
                {
                    self.failures.remove(&k);
                }
            }
        }
        let q = self.failures.entry(key.to_string()).or_default();
        Self::prune(q, self.window, now);
        q.push_back(now);
        while q.len() > self.max_failures {
            q.pop_front();
        }
    }

    /// Forget `key`'s failures.
    pub fn clear(&mut self, key: &str) {
        self.failures.remove(key);
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
            assert!(t.blocked("user:li", t0).is_none(), "attempt {i}");
            t.fail("user:li", t0 + Duration::from_secs(i));
        }
        let wait = t.blocked("user:li", t0 + Duration::from_secs(3)).unwrap();
        assert_eq!(wait, Duration::from_secs(57));
        assert!(t.blocked("user:wang", t0).is_none());
        assert!(t.blocked("user:li", t0 + Duration::from_secs(60)).is_none());
    }

    #[test]
    fn clear_resets() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2, Duration::from_secs(60));
        t.fail("k", t0);
        t.fail("k", t0);
        assert!(t.blocked("k", t0).is_some());
        t.clear("k");
        assert!(t.blocked("k", t0).is_none());
    }

    proptest! {
        /// Blocked exactly when at least `max` failures fall in the window.
        #[test]
        fn blocked_iff_max_in_window(gaps in proptest::collection::vec(0u64..40, 0..20), max in 1usize..6) {
            let t0 = Instant::now();
            let window = Duration::from_secs(60);
            let mut t = Throttle::new(max, window);
            let mut times = Vec::new();
            let mut now = t0;
            for g in gaps {
                now += Duration::from_secs(g);
                t.fail("k", now);
                times.push(now);
            }
            let check = now + Duration::from_secs(1);
            let recent = times.iter().filter(|x| check.saturating_duration_since(**x) < window).count();
            prop_assert_eq!(t.blocked("k", check).is_some(), recent >= max);
        }
    }
}
