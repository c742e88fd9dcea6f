//! Bounds the password checks that unauthenticated requests can start.
//! Each argon2id check takes 19 MiB and a core for a good part of a
//! second on a Pi: at most [`CHECKS_AT_ONCE`] run at a time, at most
//! [`WAITING`] more wait for their turn, and a login beyond that is
//! answered at once (429, "busy") instead of queueing without bound.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Password checks running at once.
pub const CHECKS_AT_ONCE: usize = 2;

/// Logins that may wait for a check besides those running.
pub const WAITING: usize = 6;

/// Admission to the password checks.
#[derive(Debug)]
pub struct LoginGate {
    admitted: Arc<Semaphore>,
    checks: Arc<Semaphore>,
}

/// A login admitted to wait for its check. Dropping it gives the place up.
#[derive(Debug)]
pub struct Admitted {
    _place: OwnedSemaphorePermit,
    checks: Arc<Semaphore>,
}

/// The right to run one password check; move it into the blocking task
/// so it is held until the check ends, even if the request went away.
#[derive(Debug)]
pub struct CheckPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl Default for LoginGate {
    fn default() -> Self {
        LoginGate::new(CHECKS_AT_ONCE, WAITING)
    }
}

impl LoginGate {
    pub fn new(at_once: usize, waiting: usize) -> LoginGate {
        LoginGate {
            admitted: Arc::new(Semaphore::new(at_once + waiting)),
            checks: Arc::new(Semaphore::new(at_once)),
        }
    }

    /// A place in line, or `None` when the line is full (answer "busy").
    pub fn admit(&self) -> Option<Admitted> {
        let place = self.admitted.clone().try_acquire_owned().ok()?;
        Some(Admitted {
            _place: place,
            checks: self.checks.clone(),
        })
    }
}

impl Admitted {
    /// Wait for a free check.
    pub async fn check(self) -> CheckPermit {
        // The semaphore is never closed.
        let p = self
            .checks
            .clone()
            .acquire_owned()
            .await
            .expect("the login gate is never closed");
        CheckPermit(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt as _;

    #[tokio::test]
    async fn admits_a_bounded_line_and_runs_a_few_at_once() {
        let gate = LoginGate::new(2, 3);
        let line: Vec<Admitted> = (0..5).map(|_| gate.admit().unwrap()).collect();
        assert!(gate.admit().is_none(), "the line is full");
        let mut line = line.into_iter();
        let a = line.next().unwrap().check().await;
        let b = line.next().unwrap().check().await;
        let mut waiting = Box::pin(line.next().unwrap().check());
        assert!(
            (&mut waiting).now_or_never().is_none(),
            "a third check waits"
        );
        drop(a);
        let c = waiting.await;
        drop((b, c));
        // Places given back: the line has room again.
        assert!(gate.admit().is_some());
    }
}
