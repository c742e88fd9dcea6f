//! The local HTTP server: operational routes now (`/metrics`, `/healthz`),
//! the technician's web page later. One axum [`Router`] over a shared
//! [`WebState`]; the server stops with the gateway's shutdown.
//!
//! - [`metrics`]: Prometheus text exposition, written by hand (a few gauges
//!   and counters read from [`GatewayStatus`] and the journal's stats; no
//!   registry crate needed).
//! - [`health`]: `/healthz` from the main loops' liveness.
//!
//! axum 0.7 is the version rumqttd already brings in: no second HTTP stack.

pub mod health;
pub mod metrics;

use crate::journal::Journal;
use crate::status::GatewayStatus;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long requests in progress may finish after shutdown begins.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the web server could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot listen on {addr} ([web] listen): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The local web server (`[web]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebConfig {
    /// Serve `/metrics` and `/healthz` (and later the local page). Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address and port to listen on. The default, `127.0.0.1:8080`, is
    /// reachable only from the gateway itself; use `0.0.0.0:8080` for a
    /// Prometheus server on the site network.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            listen: default_listen(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// What the routes read.
#[derive(Clone)]
pub struct WebState {
    pub status: Arc<GatewayStatus>,
    pub journal: Journal,
    /// Name of the uplink's journal cursor (its backlog is a metric).
    pub uplink_sink: &'static str,
}

/// The routes.
pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/metrics", get(metrics::handler))
        .route("/healthz", get(health::handler))
        .with_state(state)
}

/// Bind `cfg.listen` and serve until `shutdown`. Binding happens before
/// this returns, so the caller learns at once when the port is taken.
pub async fn spawn(
    cfg: &WebConfig,
    state: WebState,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), WebError> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| WebError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(cfg.listen);
    tracing::info!(%addr, "web server listening");
    let app = router(state);
    let handle = tokio::spawn(async move {
        let stop = shutdown.clone();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .into_future();
        // Graceful shutdown waits for every open connection: a client that
        // never finishes its request must not hold the gateway's shutdown.
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            r = served => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "web server stopped");
                }
            }
            _ = deadline => {
                tracing::warn!("web clients still connected at shutdown; closing them");
            }
        }
    });
    Ok((addr, handle))
}
