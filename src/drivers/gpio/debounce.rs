//! Debounce of one digital input: a new level is accepted only after it
//! held, sample after sample, for the hold time. Pure: time is passed in.

use std::time::{Duration, Instant};

/// One input's debounce state.
#[derive(Clone, Debug)]
pub struct Debouncer {
    hold: Duration,
    /// The accepted level (`None` until the first level held).
    stable: Option<bool>,
    /// A level differing from `stable` and since when it was seen.
    candidate: Option<(bool, Instant)>,
}

impl Debouncer {
    pub fn new(hold: Duration) -> Debouncer {
        Debouncer {
            hold,
            stable: None,
            candidate: None,
        }
    }

    /// The accepted level.
    pub fn level(&self) -> Option<bool> {
        self.stable
    }

    /// Feed one sample taken at `now`; returns the newly accepted level
    /// when it changes (the first accepted level included).
    pub fn sample(&mut self, now: Instant, raw: bool) -> Option<bool> {
        if self.stable == Some(raw) {
            self.candidate = None;
            return None;
        }
        match self.candidate {
            Some((level, since)) if level == raw => {
                if now.saturating_duration_since(since) >= self.hold {
                    self.stable = Some(raw);
                    self.candidate = None;
                    return Some(raw);
                }
            }
            _ => {
                if self.hold.is_zero() {
                    self.stable = Some(raw);
                    return Some(raw);
                }
                self.candidate = Some((raw, now));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn accepts_after_hold_and_ignores_glitches() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(50 * MS);
        assert_eq!(d.sample(t0, false), None);
        assert_eq!(d.sample(t0 + 40 * MS, false), None);
        assert_eq!(d.sample(t0 + 50 * MS, false), Some(false));
        // A 30 ms glitch.
        assert_eq!(d.sample(t0 + 60 * MS, true), None);
        assert_eq!(d.sample(t0 + 90 * MS, false), None);
        assert_eq!(d.sample(t0 + 200 * MS, false), None);
        // A real change.
        assert_eq!(d.sample(t0 + 210 * MS, true), None);
        assert_eq!(d.sample(t0 + 260 * MS, true), Some(true));
        assert_eq!(d.level(), Some(true));
    }

    #[test]
    fn zero_hold_follows_every_change() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::ZERO);
        assert_eq!(d.sample(t0, true), Some(true));
        assert_eq!(d.sample(t0, true), None);
        assert_eq!(d.sample(t0, false), Some(false));
    }

    proptest! {
        /// Whatever the samples, every accepted level was seen on every
        /// sample of the preceding `hold` (no glitch shorter than the hold
        /// is ever reported), and consecutive reports differ.
        #[test]
        fn reports_only_levels_held_for_the_hold(
            samples in prop::collection::vec((any::<bool>(), 1u64..40), 1..200),
            hold_ms in 0u64..100,
        ) {
            let t0 = Instant::now();
            let hold = Duration::from_millis(hold_ms);
            let mut d = Debouncer::new(hold);
            let mut t = t0;
            let mut seen: Vec<(Instant, bool)> = Vec::new();
            let mut last: Option<bool> = None;
            for (level, step) in samples {
                seen.push((t, level));
                if let Some(l) = d.sample(t, level) {
                    prop_assert_ne!(Some(l), last);
                    last = Some(l);
                    // The run of `l` ending now started at least `hold` ago.
                    let start = seen.iter().rev().take_while(|(_, x)| *x == l).last().unwrap().0;
                    prop_assert!(t.duration_since(start) >= hold);
                }
                t += Duration::from_millis(step);
            }
        }
    }
}
