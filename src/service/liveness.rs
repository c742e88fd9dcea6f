//! Liveness registry: every long-running loop beats a [`Heartbeat`] once per
//! iteration, saying when its next beat is due at the latest. The watchdog
//! petting loop and `/healthz` ask [`Liveness::check`] which loops are late.
//!
//! A loop that sleeps long between iterations (a Modbus endpoint waiting for
//! its next poll) beats with [`Heartbeat::beat_within`] and the length of the
//! wait; a loop with a fixed cadence uses [`Heartbeat::beat`] and the period
//! it registered with. Every deadline gets a common grace on top, so a slow
//! `fsync` or a busy scheduler is not taken for a wedged loop.
//!
//! A heartbeat dropped while its thread unwinds from a panic marks the loop
//! dead (stale for good, until a loop of the same name registers again); one
//! dropped normally (the loop ended at shutdown) retires it.
//!
//! Time is tokio's clock ([`tokio::time::Instant`]): tests run it paused.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Added to every deadline before a loop counts as late.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

const RUNNING: u8 = 0;
const RETIRED: u8 = 1;
const DEAD: u8 = 2;

/// One registered loop.
#[derive(Debug)]
struct Entry {
    name: String,
    period: Duration,
    /// Milliseconds since the registry's base by which the next beat is due.
    due_ms: AtomicU64,
    state: AtomicU8,
    /// Beats are ignored (the `ESTATE_GATEWAY_TEST_WEDGE` test hook).
    muted: bool,
    /// Reported by [`Liveness::check`] (`/healthz`) but not by
    /// [`Liveness::check_watchdog`]: a restart would not mend it.
    report_only: bool,
}

/// The registry; cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct Liveness {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    base: Instant,
    grace: Duration,
    entries: Mutex<Vec<Arc<Entry>>>,
}

/// A loop's handle: beat it once per iteration.
#[derive(Debug)]
pub struct Heartbeat {
    entry: Arc<Entry>,
    base: Instant,
}

/// A loop that is late or dead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stale {
    /// The loop's name (`alarm`, `uplink`, `journal`, `modbus tcp:…`).
    pub name: String,
    /// How long past its deadline (grace included); `None`: it panicked.
    pub late_by: Option<Duration>,
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.late_by {
            Some(d) => write!(f, "{} (late by {:.1} s)", self.name, d.as_secs_f64()),
            None => write!(f, "{} (stopped: panicked)", self.name),
        }
    }
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::new(DEFAULT_GRACE)
    }
}

impl Liveness {
    /// An empty registry whose deadlines get `grace` on top.
    pub fn new(grace: Duration) -> Liveness {
        Liveness {
            inner: Arc::new(Inner {
                base: Instant::now(),
                grace,
                entries: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Register a loop that beats at least every `period`. It counts as
    /// fresh for `period` from now. A loop of the same name registered
    /// before (a restarted task) is replaced.
    pub fn register(&self, name: impl Into<String>, period: Duration) -> Heartbeat {
        self.register_entry(name.into(), period, false)
    }

    /// Register something that is down and needs a person, not a restart
    /// (a driver that cannot start): stale at once (after the grace) until
    /// the returned handle is dropped, reported by [`Liveness::check`]
    /// (`/healthz`) but not by [`Liveness::check_watchdog`].
    pub fn register_down(&self, name: impl Into<String>) -> Heartbeat {
        self.register_entry(name.into(), Duration::ZERO, true)
    }

    fn register_entry(&self, name: String, period: Duration, report_only: bool) -> Heartbeat {
        let muted = wedged_by_test_hook(&name);
        if muted {
            tracing::warn!(loop_name = %name, "test hook: this loop's heartbeat ignores its beats");
        }
        let due =
            ms_since(self.inner.base, Instant::now()).saturating_add(period.as_millis() as u64);
        let entry = Arc::new(Entry {
            name,
            period,
            due_ms: AtomicU64::new(due),
            state: AtomicU8::new(RUNNING),
            muted: muted || report_only,
            report_only,
        });
        let hb = Heartbeat {
            entry: entry.clone(),
            base: self.inner.base,
        };
        let mut entries = self.entries();
        entries.retain(|e| e.name != entry.name);
        entries.push(entry);
        hb
    }

    /// Loops late at `now` (past deadline + grace) or dead, in registration order.
    pub fn check_at(&self, now: Instant) -> Vec<Stale> {
        let now_ms = ms_since(self.inner.base, now);
        let grace_ms = self.inner.grace.as_millis() as u64;
        self.entries()
            .iter()
            .filter_map(|e| match e.state.load(Ordering::Acquire) {
                RETIRED => None,
                DEAD => Some(Stale {
                    name: e.name.clone(),
                    late_by: None,
                }),
                _ => {
                    let limit = e.due_ms.load(Ordering::Acquire).saturating_add(grace_ms);
                    (now_ms > limit).then(|| Stale {
                        name: e.name.clone(),
                        late_by: Some(Duration::from_millis(now_ms - limit)),
                    })
                }
            })
            .collect()
    }

    /// [`Liveness::check_at`] now.
    pub fn check(&self) -> Vec<Stale> {
        self.check_at(Instant::now())
    }

    /// [`Liveness::check`] without the entries of
    /// [`Liveness::register_down`]: what the watchdog goes by.
    pub fn check_watchdog(&self) -> Vec<Stale> {
        let down: Vec<String> = self
            .entries()
            .iter()
            .filter(|e| e.report_only)
            .map(|e| e.name.clone())
            .collect();
        let mut stale = self.check();
        stale.retain(|s| !down.contains(&s.name));
        stale
    }

    /// Wait until every loop in `names` has registered (its task runs), at
    /// most `timeout`; returns the ones still missing.
    pub async fn wait_registered(&self, names: &[&str], timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.names();
            let missing: Vec<String> = names
                .iter()
                .filter(|n| !have.iter().any(|h| h == *n))
                .map(|n| n.to_string())
                .collect();
            if missing.is_empty() || Instant::now() >= deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Names of the loops registered and not retired.
    pub fn names(&self) -> Vec<String> {
        self.entries()
            .iter()
            .filter(|e| e.state.load(Ordering::Acquire) != RETIRED)
            .map(|e| e.name.clone())
            .collect()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Entry>>> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.inner
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Heartbeat {
    /// The loop is alive; its next beat is due within its period.
    pub fn beat(&self) {
        self.beat_within(self.entry.period);
    }

    /// The loop is alive; its next beat is due within `d` (a loop about to
    /// sleep until a known time plus the work it then does).
    pub fn beat_within(&self, d: Duration) {
        if self.entry.muted {
            return;
        }
        let due = ms_since(self.base, Instant::now()).saturating_add(d.as_millis() as u64);
        self.entry.due_ms.store(due, Ordering::Release);
    }

    /// The period the loop registered with.
    pub fn period(&self) -> Duration {
        self.entry.period
    }

    /// When the next beat is due (for a loop that must wake up to beat).
    pub fn next_due(&self) -> Instant {
        self.base + Duration::from_millis(self.entry.due_ms.load(Ordering::Acquire))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let state = if std::thread::panicking() {
            DEAD
        } else {
            RETIRED
        };
        self.entry.state.store(state, Ordering::Release);
    }
}

/// `ESTATE_GATEWAY_TEST_WEDGE` names `name` (see [`crate::service`]).
fn wedged_by_test_hook(name: &str) -> bool {
    std::env::var("ESTATE_GATEWAY_TEST_WEDGE").is_ok_and(|v| !v.is_empty() && v == name)
}

fn ms_since(base: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(base).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn fresh_until_period_plus_grace() {
        let l = Liveness::new(2 * S);
        let hb = l.register("alarm", 5 * S);
        assert!(l.check().is_empty());
        tokio::time::advance(7 * S).await;
        assert!(l.check().is_empty(), "exactly at deadline + grace is fine");
        tokio::time::advance(S).await;
        assert_eq!(
            l.check(),
            vec![Stale {
                name: "alarm".into(),
                late_by: Some(S)
            }]
        );
        hb.beat();
        assert!(l.check().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn beat_within_sets_a_longer_deadline() {
        let l = Liveness::new(S);
        let hb = l.register("modbus tcp:plc:502", 2 * S);
        hb.beat_within(60 * S);
        tokio::time::advance(60 * S).await;
        assert!(l.check().is_empty());
        tokio::time::advance(2 * S).await;
        assert_eq!(l.check().len(), 1);
        assert_eq!(hb.next_due(), l.inner.base + 60 * S);
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_wedged_loop_is_named() {
        let l = Liveness::new(S);
        let a = l.register("alarm", 5 * S);
        let _j = l.register("journal", 5 * S);
        for _ in 0..10 {
            tokio::time::advance(S).await;
            a.beat();
        }
        let stale = l.check();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].name, "journal");
        assert_eq!(stale[0].to_string(), "journal (late by 4.0 s)");
    }

    #[tokio::test(start_paused = true)]
    async fn a_down_entry_is_reported_but_not_to_the_watchdog() {
        let l = Liveness::new(S);
        let a = l.register("alarm", 5 * S);
        let down = l.register_down("mqtt site broker (not running)");
        down.beat();
        tokio::time::advance(2 * S).await;
        a.beat();
        let names: Vec<String> = l.check().into_iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["mqtt site broker (not running)"]);
        assert!(l.check_watchdog().is_empty());
        tokio::time::advance(10 * S).await;
        assert_eq!(l.check_watchdog().len(), 1, "other loops still count");
        a.beat();
        drop(down);
        assert!(l.check().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn normal_drop_retires_panic_kills() {
        let l = Liveness::new(S);
        drop(l.register("ended", S));
        tokio::time::advance(10 * S).await;
        assert!(l.check().is_empty());
        assert!(l.names().is_empty());

        let l2 = l.clone();
        let r = std::thread::spawn(move || {
            let _hb = l2.register("poller", S);
            panic!("wedged poller");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(
            l.check(),
            vec![Stale {
                name: "poller".into(),
                late_by: None
            }]
        );
        // A restarted loop of the same name replaces the dead one.
        let _hb = l.register("poller", S);
        assert!(l.check().is_empty());
    }
}
