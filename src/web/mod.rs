//! The local HTTP server: the technicians' and guards' web page, its JSON
//! API, and the operational routes (`/metrics`, `/healthz`). One axum
//! [`Router`] over a shared [`WebState`]; the server stops with the
//! gateway's shutdown.
//!
//! - [`auth`]: accounts (argon2), sessions, CSRF tokens, login throttling.
//! - [`api`]: `/api/v1/…` (session, dashboard, alarms + live stream,
//!   acknowledge/shelve through the command path, devices, users, audit).
//! - [`audit`]: the page's audit log.
//! - [`config_edit`]: editing, applying and the history of the configuration file.
//! - [`assets`]: the page itself (HTML, JS, CSS embedded in the binary).
//! - [`metrics`]: Prometheus text exposition, written by hand.
//! - [`health`]: `/healthz` from the main loops' liveness.
//! - [`clips`]: camera clips (`/clips/{id}.mp4`, range requests), the
//!   cameras page, the clips of active alarms.
//! - [`probe`]: "read now" of a device (technicians).
//! - [`system`]: version, disk, journal backlog per sink, recent logs.
//! - [`server`]: the accept loop (HTTP and HTTPS): timeouts, connection caps.
//!
//! Open without a session: the page shell and its assets (they hold no
//! data; the page signs in through the API), `/healthz`, and `/metrics`
//! (for a Prometheus scraper; the default listen address is loopback —
//! keep `/metrics` off untrusted networks: besides counts it shows
//! whether the uplink is connected, active alarms and each camera's
//! online state).
//!
//! axum 0.7 is the version rumqttd already brings in: no second HTTP stack.

pub mod api;
pub mod assets;
pub mod audit;
pub mod auth;
pub mod clips;
pub mod config_edit;
pub mod health;
pub mod metrics;
pub mod probe;
pub mod server;
pub mod system;
pub mod tls;

use crate::alarm::live::LiveView;
use crate::app::FieldHandles;
use crate::command::CommandPath;
use crate::config::LoadedConfig;
use crate::journal::Journal;
use crate::status::GatewayStatus;
use auth::UserStore;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why the web server could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot listen on {addr} ([web] listen): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("web server HTTPS ([web.tls]): {0}")]
    Tls(#[from] tls::TlsError),
    #[error("web page accounts: {0}")]
    Users(#[from] auth::UserError),
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
    /// Serve the technicians' and guards' page and its API (`/`,
    /// `/api/v1/`). Default `true`. Accounts live in
    /// `<journal path>/web-users.json`; there is no default account.
    #[serde(default = "yes")]
    pub page: bool,
    /// A session ends after this many seconds without a request (an open
    /// alarm console counts as activity whenever an alarm changes).
    /// Default 1800.
    #[serde(
        rename = "session_idle_s",
        with = "crate::config::duration",
        default = "default_session_idle"
    )]
    pub session_idle: std::time::Duration,
    /// Failed logins per account from one client address, and (four
    /// times as many) per client address, within `login_window_s` before
    /// further attempts are refused. Default 5.
    #[serde(default = "default_login_failures")]
    pub login_failures: u32,
    /// The window of `login_failures`, in seconds. Default 900.
    #[serde(
        rename = "login_window_s",
        with = "crate::config::duration",
        default = "default_login_window"
    )]
    pub login_window: std::time::Duration,
    /// HTTPS (`[web.tls]`): with it, every route is served over TLS only
    /// and session cookies are marked `Secure`. Without it, plain HTTP
    /// (keep `listen` on loopback or a trusted LAN).
    #[serde(default)]
    pub tls: Option<tls::WebTlsConfig>,
    /// Configuration versions applied from the page that are kept (with
    /// their diffs) in `<journal path>/config-history/`. Default 50.
    #[serde(default = "default_config_history")]
    pub config_history: usize,
    /// A bearer token `/metrics` requires (`Authorization: Bearer …`),
    /// read from a file or an environment variable (`{ file = "…" }` or
    /// `{ env = "…" }`), at least 16 characters. Without it `/metrics` is
    /// open to whoever reaches `listen`. `/healthz` stays open either way.
    #[serde(default)]
    pub metrics_token: Option<crate::config::secret::SecretSource>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            listen: default_listen(),
            page: true,
            session_idle: default_session_idle(),
            login_failures: default_login_failures(),
            login_window: default_login_window(),
            tls: None,
            config_history: default_config_history(),
            metrics_token: None,
        }
    }
}

fn default_config_history() -> usize {
    config_edit::DEFAULT_HISTORY
}

fn default_session_idle() -> std::time::Duration {
    std::time::Duration::from_secs(1800)
}
fn default_login_failures() -> u32 {
    5
}
fn default_login_window() -> std::time::Duration {
    std::time::Duration::from_secs(900)
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
    /// The page and its API (`None`: `[web] page = false`).
    pub page: Option<Arc<PageState>>,
    /// Where a generated HTTPS certificate is kept (`[journal] path`).
    pub state_dir: std::path::PathBuf,
    /// The token `/metrics` requires (`[web] metrics_token`; `None`: open).
    pub metrics_token: Option<crate::config::secret::Secret>,
}

/// What the page and its API need.
pub struct PageState {
    /// The running field side (configuration, command path, live values);
    /// a configuration reload replaces it.
    field: watch::Receiver<Arc<FieldHandles>>,
    pub users: UserStore,
    pub setup: auth::SetupToken,
    pub sessions: Mutex<auth::Sessions>,
    /// Login attempts per account at a client address (a stranger's
    /// guesses never lock the account out elsewhere).
    pub throttle_account: Mutex<auth::Throttle>,
    /// Login attempts per client address, whatever the account.
    pub throttle_addr: Mutex<auth::Throttle>,
    /// Bounds the password checks running and waiting at once.
    pub logins: auth::LoginGate,
    pub audit: audit::AuditLog,
    /// Mark cookies `Secure` (served over HTTPS).
    pub secure_cookie: bool,
    /// Bounds how many large responses are built at once.
    pub heavy: tokio::sync::Semaphore,
    /// Clips of alarms, fed from the journal by [`clips::follow`].
    pub clips: Arc<clips::ClipIndex>,
    /// Configuration editing, once the gateway's reloader exists.
    config_edit: std::sync::OnceLock<Arc<config_edit::ConfigEditor>>,
}

impl PageState {
    /// Open the accounts in the state directory (`[journal] path`). With
    /// no technician yet, a one-time setup token is made, logged and
    /// written to `<journal path>/setup-token` (mode 0600), so it can be
    /// read whatever `[log] level` hides.
    pub fn new(field: watch::Receiver<Arc<FieldHandles>>) -> Result<PageState, WebError> {
        let cfg = field.borrow().config.clone();
        let dir = cfg.config.journal.path.clone();
        let users = UserStore::open(&dir)?;
        let setup = if users.has_technician() {
            auth::SetupToken::none_in(&dir)
        } else {
            let t = auth::SetupToken::generate_in(&dir);
            if let Some(v) = t.peek() {
                let file = t.file().map(|f| f.display().to_string());
                tracing::warn!(
                    setup_token = %v,
                    setup_token_file = file.as_deref().unwrap_or("(not written)"),
                    "no technician account: open the web page and create one with this one-time setup token, or run `sudo estate-gateway user add NAME --role technician`"
                );
            }
            t
        };
        let w = &cfg.config.web;
        let failures = w.login_failures as usize;
        Ok(PageState {
            users,
            setup,
            sessions: Mutex::new(auth::Sessions::new(w.session_idle)),
            throttle_account: Mutex::new(auth::Throttle::new(failures, w.login_window)),
            // An address (a gatehouse PC) serves several people: four
            // times the per-account allowance.
            throttle_addr: Mutex::new(auth::Throttle::new(failures * 4, w.login_window)),
            logins: auth::LoginGate::default(),
            audit: audit::AuditLog::new(&dir),
            secure_cookie: w.tls.is_some(),
            heavy: tokio::sync::Semaphore::new(api::HEAVY_REQUESTS),
            clips: Arc::default(),
            config_edit: std::sync::OnceLock::new(),
            field,
        })
    }

    /// Let technicians edit `path` (the running file) and reload it with
    /// `reloader`. Called once, when the gateway's reloader exists.
    pub fn attach_config_editor(&self, reloader: crate::app::Reloader, path: std::path::PathBuf) {
        let cfg = self.cfg();
        let editor = config_edit::ConfigEditor::new(
            reloader,
            path,
            &cfg.config.journal.path,
            cfg.config.web.config_history,
        );
        let _ = self.config_edit.set(Arc::new(editor));
    }

    /// Configuration editing (`None` before the reloader is attached).
    pub fn config_editor(&self) -> Option<Arc<config_edit::ConfigEditor>> {
        self.config_edit.get().cloned()
    }

    /// The configuration the field side runs with now.
    pub fn cfg(&self) -> Arc<LoadedConfig> {
        self.field.borrow().config.clone()
    }

    /// The one command path (acknowledge, shelve) of the running field.
    pub fn commands(&self) -> CommandPath {
        self.field.borrow().commands.clone()
    }

    /// Last values and active alarms, from the running alarm task. After
    /// a reload the old view's streams end and clients reconnect.
    pub fn live(&self) -> Arc<LiveView> {
        self.field.borrow().live.clone()
    }

    /// The gateway's own alarms (video loss, disk, drivers not running).
    pub fn troubles(&self) -> Arc<crate::alarm::trouble::Troubles> {
        self.field.borrow().troubles.clone()
    }

    /// The console's list: the active alarms and the troubles, most
    /// urgent first.
    pub fn alarm_list(&self) -> Vec<crate::alarm::AlarmView> {
        let alarms = self.live().alarms().borrow().clone();
        let troubles = self.troubles().current();
        crate::alarm::trouble::merged(&alarms, &troubles)
    }
}

/// The routes.
pub fn router(state: WebState) -> Router {
    let mut r = Router::new()
        .route("/metrics", get(metrics::handler))
        .route("/healthz", get(health::handler));
    if state.page.is_some() {
        r = r
            .nest("/api/v1", api::routes())
            .merge(clips::file_routes())
            .merge(assets::routes())
            .layer(axum::middleware::map_response(assets::security_headers));
    }
    r.with_state(state)
}

/// Bind `cfg.listen` and serve until `shutdown`. Binding happens before
/// this returns, so the caller learns at once when the port is taken.
pub async fn spawn(
    cfg: &WebConfig,
    state: WebState,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), WebError> {
    let tls = match &cfg.tls {
        Some(t) => Some(tls::server_config(t, &state.state_dir, cfg.listen)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| WebError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(cfg.listen);
    tracing::info!(%addr, https = tls.is_some(), "web server listening");
    if let Some(page) = &state.page {
        tokio::spawn(clips::follow(
            state.journal.clone(),
            page.clips.clone(),
            shutdown.clone(),
        ));
    }
    let app = router(state);
    let handle = tokio::spawn(server::serve(
        listener,
        app,
        tls,
        server::Limits::default(),
        shutdown,
    ));
    Ok((addr, handle))
}
