//! Tasks that never die: a supervised task that panics is logged and
//! restarted after a backoff, until shutdown.

use std::future::Future;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Spawn `make()` and run it again whenever it panics (backoff 1 s doubling
/// to 60 s, reset after an hour of good running). Returns when the future
/// ends normally or on shutdown.
pub fn spawn<F, Fut>(name: &'static str, shutdown: CancellationToken, make: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            let started = tokio::time::Instant::now();
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    if started.elapsed() > Duration::from_secs(3600) {
                        backoff = Duration::from_secs(1);
                    }
                    tracing::error!(
                        task = name,
                        retry_in_s = backoff.as_secs(),
                        "task panicked; restarting"
                    );
                }
                Err(_) => return, // cancelled
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn restarts_after_panic() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let h = spawn("test", CancellationToken::new(), move || {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
            }
        });
        h.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_restarts() {
        let token = CancellationToken::new();
        let t = token.clone();
        let h = spawn("test", token.clone(), move || {
            let t = t.clone();
            async move {
                t.cancel();
                panic!("boom");
            }
        });
        h.await.unwrap();
        assert!(token.is_cancelled());
    }
}
