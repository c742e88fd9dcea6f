//! A device's communication health: consecutive failures, online/offline,
//! log-once decisions and backoff delays. Pure state, no I/O, no clock.

use super::transport::ModbusError;
use std::time::Duration;

/// What a poll result changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// The device just went offline (send `DeviceStatus{online:false}`).
    pub went_offline: bool,
    /// The device just came back (send `DeviceStatus{online:true}`).
    pub came_online: bool,
    /// Log this failure: its class differs from the last one logged.
    pub log_error: bool,
    /// Log that the device answers again after logged failures.
    pub log_recovered: bool,
}

/// Health of one device.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    offline_after: u32,
    failures: u32,
    offline: bool,
    logged: Option<(u8, u8)>,
}

impl Health {
    /// A device not yet polled is taken as online (nothing is announced
    /// until it fails `offline_after` times in a row).
    pub fn new(offline_after: u32) -> Health {
        Health {
            offline_after: offline_after.max(1),
            failures: 0,
            offline: false,
            logged: None,
        }
    }

    pub fn is_offline(&self) -> bool {
        self.offline
    }

    /// Consecutive failed polls.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Failures beyond the one that took the device offline (0 while online);
    /// the exponent of the backoff of a dead device.
    pub fn failures_while_offline(&self) -> u32 {
        if self.offline {
            self.failures.saturating_sub(self.offline_after)
        } else {
            0
        }
    }

    pub fn on_success(&mut self) -> Outcome {
        let out = Outcome {
            came_online: self.offline,
            log_recovered: self.logged.is_some(),
            ..Outcome::default()
        };
        self.failures = 0;
        self.offline = false;
        self.logged = None;
        out
    }

    pub fn on_failure(&mut self, e: &ModbusError) -> Outcome {
        self.failures = self.failures.saturating_add(1);
        let class = e.class();
        let log_error = self.logged != Some(class);
        self.logged = Some(class);
        let went_offline = !self.offline && self.failures >= self.offline_after;
        if went_offline {
            self.offline = true;
        }
        Outcome {
            went_offline,
            log_error,
            ..Outcome::default()
        }
    }
}

/// Exponential backoff with jitter: `base × 2^attempt`, capped at `max`,
/// then scaled into `[½, 1]` of that by `jitter` ∈ [0, 1) ("equal jitter",
/// so many devices that failed together do not retry in lockstep).
pub fn backoff(base: Duration, max: Duration, attempt: u32, jitter: f64) -> Duration {
    let base = base.max(Duration::from_millis(10));
    let full = base
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn timeout() -> ModbusError {
        ModbusError::Timeout(Duration::from_secs(1))
    }

    #[test]
    fn offline_after_n_failures_then_online_once() {
        let mut h = Health::new(3);
        let a = h.on_failure(&timeout());
        assert!(a.log_error && !a.went_offline);
        let b = h.on_failure(&timeout());
        assert!(!b.log_error && !b.went_offline, "same error logged once");
        let c = h.on_failure(&timeout());
        assert!(c.went_offline && h.is_offline());
        let d = h.on_failure(&timeout());
        assert!(!d.went_offline && !d.log_error);
        assert_eq!(h.failures_while_offline(), 1);
        let e = h.on_success();
        assert!(e.came_online && e.log_recovered);
        assert!(!h.is_offline());
        assert_eq!(h.on_success(), Outcome::default());
    }

    #[test]
    fn a_different_error_is_logged_again() {
        let mut h = Health::new(5);
        assert!(h.on_failure(&timeout()).log_error);
        let ex = ModbusError::Exception {
            function: "read coils",
            code: 2,
            name: "illegal data address",
        };
        assert!(h.on_failure(&ex).log_error);
        assert!(!h.on_failure(&ex).log_error);
        assert!(h.on_failure(&timeout()).log_error);
    }

    #[test]
    fn success_before_offline_announces_nothing() {
        let mut h = Health::new(2);
        h.on_failure(&timeout());
        let o = h.on_success();
        assert!(!o.came_online && o.log_recovered);
        assert!(!h.on_failure(&timeout()).went_offline);
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let s = Duration::from_secs(1);
        let max = Duration::from_secs(30);
        assert_eq!(backoff(s, max, 0, 1.0), s);
        assert_eq!(backoff(s, max, 3, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(s, max, 10, 1.0), max);
        assert_eq!(backoff(s, max, 1000, 0.0), max / 2);
        assert_eq!(backoff(s, max, 2, 0.0), Duration::from_secs(2));
    }

    proptest! {
        #[test]
        fn backoff_within_bounds(base_ms in 0u64..10_000, max_ms in 10u64..100_000, attempt: u32, j in 0.0f64..1.0) {
            let base = Duration::from_millis(base_ms);
            let max = Duration::from_millis(max_ms);
            let d = backoff(base, max, attempt, j);
            prop_assert!(d <= max);
            prop_assert!(d >= max.min(base.max(Duration::from_millis(10))) / 2);
        }
    }
}
