//! The page's JSON API under `/api/v1/` and its authentication.
//!
//! Every route but `POST /api/v1/session` (login) and `/api/v1/setup`
//! needs a session cookie ([`Authed`]); without one it answers 401.
//! State-changing requests (POST, PUT, DELETE) also need the session's
//! CSRF token in `X-CSRF-Token` (else 403), and a JSON body
//! (`Content-Type: application/json`: a cross-site form cannot send one).
//! Roles: viewers read; guards also acknowledge and shelve; technicians
//! also manage users and read the configuration and the audit log.
//!
//! Nothing here serializes a configured secret: responses are built from
//! chosen fields (names, states, values), never from whole config structs.

use super::audit::AuditEntry;
use super::auth::{self, Lang, Role, Session, UserError, UserInfo};
use super::{PageState, WebState};
use crate::alarm::trouble;
use crate::command::{Command, Origin};
use crate::event::Timestamp;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Name of the session cookie.
pub const COOKIE: &str = "eg_session";
/// Header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How often an idle alarm stream checks that its session still lives.
const STREAM_SESSION_CHECK: Duration = Duration::from_secs(5);

/// Longest comment kept with an acknowledgement or shelving.
const MAX_COMMENT: usize = 500;

/// An API error: status and a short message (`{"error": "..."}`).
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError(status, msg.into())
    }
    fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "not signed in")
    }
    fn forbidden(msg: &str) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, msg)
    }
    fn bad(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> ApiError {
        let status = match e {
            UserError::Exists(_) => StatusCode::CONFLICT,
            UserError::NotFound(_) => StatusCode::NOT_FOUND,
            UserError::Io { .. } | UserError::Parse { .. } | UserError::Hash(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }
}

type ApiResult<T = Response> = Result<T, ApiError>;

fn page(state: &WebState) -> ApiResult<Arc<PageState>> {
    state
        .page
        .clone()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "the web page is not enabled"))
}

/// The session cookie's value, if any.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

fn changes_state(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A signed-in request: the session, its cookie token and the client.
/// Extracting it checks the session and, on state-changing requests, the
/// CSRF header and the JSON content type.
pub struct Authed {
    pub session: Session,
    pub token: String,
    pub addr: Option<SocketAddr>,
    pub page: Arc<PageState>,
}

impl Authed {
    fn require(&self, ok: bool, what: &str) -> ApiResult<()> {
        if ok {
            Ok(())
        } else {
            Err(ApiError::forbidden(&format!(
                "role {:?} may not {what}",
                self.session.role
            )))
        }
    }

    pub(crate) fn audit(
        &self,
        action: &str,
        target: Option<&str>,
        ok: bool,
        detail: Option<String>,
    ) {
        self.page.audit.append(&AuditEntry {
            ts: Timestamp::now(),
            user: Some(self.session.user.clone()),
            addr: self.addr.map(|a| a.ip().to_string()),
            action: action.to_string(),
            target: target.map(str::to_string),
            ok,
            detail,
        });
    }
}

#[axum::async_trait]
impl FromRequestParts<WebState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> ApiResult<Authed> {
        let page = page(state)?;
        let token = cookie_token(&parts.headers).ok_or_else(ApiError::unauthorized)?;
        let session = page
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .touch(&token, Instant::now())
            .ok_or_else(ApiError::unauthorized)?;
        if changes_state(&parts.method) {
            let given = parts
                .headers
                .get(CSRF_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !auth::ct_eq(given, session.csrf.as_bytes()) {
                return Err(ApiError::forbidden("missing or wrong CSRF token"));
            }
            if !is_json(&parts.headers) && parts.method != Method::DELETE {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "expected application/json",
                ));
            }
        }
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        Ok(Authed {
            session,
            token,
            addr,
            page,
        })
    }
}

/// The API's routes (mounted at `/api/v1`).
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/session", post(login).delete(logout))
        .route("/setup", get(setup_status).post(setup))
        .route("/me", get(me))
        .route("/me/lang", put(set_lang))
        .route("/dashboard", get(dashboard))
        .route("/alarms", get(alarms))
        .route("/alarms/stream", get(alarm_stream))
        .route("/alarms/ack", post(ack))
        .route("/alarms/shelve", post(shelve))
        .route("/devices", get(devices))
        .route("/users", get(users).post(add_user))
        .route("/users/:name", delete(remove_user))
        .route("/audit", get(audit))
        .route("/config", get(config_view))
        .merge(super::clips::api_routes())
        .merge(super::system::routes())
        .merge(super::probe::routes())
        .merge(super::config_edit::routes())
}

fn session_cookie(token: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

fn me_json(s: &Session) -> serde_json::Value {
    json!({"name": s.user, "role": s.role, "lang": s.lang, "csrf": s.csrf})
}

#[derive(Deserialize)]
struct LoginBody {
    name: String,
    password: String,
}

/// `POST /api/v1/session`: sign in. Throttled per account at an address
/// and per address; the attempt counts before its password is checked, and at
/// most a few checks run or wait at once (else 429 "busy").
async fn login(
    State(state): State<WebState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let page = page(&state)?;
    if !is_json(&headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected application/json",
        ));
    }
    let b: LoginBody =
        serde_json::from_slice(&body).map_err(|_| ApiError::bad("expected {name, password}"))?;
    // No account has a longer name: nothing to check, nothing to count.
    if b.name.len() > auth::users::MAX_NAME_LEN {
        return Err(ApiError::bad(format!(
            "user names are at most {} characters",
            auth::users::MAX_NAME_LEN
        )));
    }
    // The account is throttled per client address: a stranger's guesses
    // lock the stranger out, not the guard at the gatehouse PC.
    let user_key = format!("user:{}@{}", b.name, addr.ip());
    let addr_key = format!("addr:{}", addr.ip());
    let now = Instant::now();
    let entry = |ok: bool, detail: Option<String>| AuditEntry {
        ts: Timestamp::now(),
        user: auth::users::valid_name(&b.name).then(|| b.name.clone()),
        addr: Some(addr.ip().to_string()),
        action: "login".into(),
        target: None,
        ok,
        detail,
    };
    // Check and count the attempt in one step, before any await: attempts
    // running at once count against the limit like finished ones.
    let refused = {
        let mut users_t = page
            .throttle_account
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut addr_t = page.throttle_addr.lock().unwrap_or_else(|p| p.into_inner());
        match users_t.attempt(&user_key, now) {
            Err(r) => Some(r),
            Ok(()) => match addr_t.attempt(&addr_key, now) {
                Err(r) => {
                    users_t.forgive(&user_key, now);
                    Some(r)
                }
                Ok(()) => None,
            },
        }
    };
    let forgive = || {
        page.throttle_account
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forgive(&user_key, now);
        page.throttle_addr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forgive(&addr_key, now);
    };
    if let Some(r) = refused {
        // One entry per key and window, not one per refused request: a
        // flood must not rotate the audit log's real entries away.
        if let Some(rep) = r.report {
            let detail = if rep.first {
                "throttled (further refusals are summed up once per window)".to_string()
            } else {
                format!(
                    "throttled: {} attempts refused since the last such entry",
                    rep.refused
                )
            };
            page.audit.append(&entry(false, Some(detail)));
        }
        let secs = r.wait.as_secs().max(1);
        return Ok(too_many(
            secs,
            json!({"error": "too many failed logins; try again later", "retry_after_s": secs}),
        ));
    }
    let Some(admitted) = page.logins.admit() else {
        // Not a guess: no password was checked.
        forgive();
        tracing::debug!(addr = %addr.ip(), "login refused: password checks busy");
        return Ok(too_many(
            BUSY_RETRY_S,
            json!({"error": "busy checking other sign-ins; try again in a moment",
                   "busy": true, "retry_after_s": BUSY_RETRY_S}),
        ));
    };
    let permit = admitted.check().await;
    let verifier = page.clone();
    let (name, pw) = (b.name.clone(), b.password);
    // The permit moves into the check: held until the check ends, even
    // when the client goes away meanwhile.
    let user = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        verifier.users.verify(&name, &pw)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "login failed"))?;
    let Some(user) = user else {
        // The attempt stays counted: it was a failure.
        page.audit
            .append(&entry(false, Some("wrong name or password".into())));
        return Err(ApiError::unauthorized_login());
    };
    forgive();
    page.throttle_account
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear(&user_key);
    let (token, session) = page
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .create(&user.name, user.role, user.lang, now);
    page.audit.append(&entry(true, None));
    Ok((
        [(
            header::SET_COOKIE,
            session_cookie(&token, page.secure_cookie),
        )],
        Json(me_json(&session)),
    )
        .into_response())
}

/// Seconds a login refused as busy is told to wait.
const BUSY_RETRY_S: u64 = 1;

/// 429 with `Retry-After`.
fn too_many(secs: u64, body: serde_json::Value) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, secs.to_string())],
        Json(body),
    )
        .into_response()
}

impl ApiError {
    fn unauthorized_login() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "wrong name or password")
    }
}

/// `DELETE /api/v1/session`: sign out.
async fn logout(a: Authed) -> ApiResult {
    a.page
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&a.token);
    a.audit("logout", None, true, None);
    let secure = if a.page.secure_cookie { "; Secure" } else { "" };
    Ok((
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
        )],
        Json(json!({"ok": true})),
    )
        .into_response())
}

/// `GET /api/v1/setup`: whether the first technician is still to be created.
async fn setup_status(State(state): State<WebState>) -> ApiResult {
    let page = page(&state)?;
    Ok(Json(json!({"needed": setup_pending(&page)})).into_response())
}

/// A setup token is waiting and still needed. The accounts file is read
/// again (another process, `estate-gateway user add`, may have made a
/// technician since the start): once a technician exists, the token is
/// spent for good.
fn setup_pending(page: &PageState) -> bool {
    if !page.setup.pending() {
        return false;
    }
    if page.users.has_technician() {
        page.setup.clear();
        return false;
    }
    true
}

#[derive(Deserialize)]
struct SetupBody {
    token: String,
    name: String,
    password: String,
}

/// `POST /api/v1/setup`: create the first technician with the one-time
/// token printed to the log and written to `<journal path>/setup-token`.
/// Refused once a technician exists. Throttled per address like a login.
async fn setup(
    State(state): State<WebState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let page = page(&state)?;
    if !is_json(&headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected application/json",
        ));
    }
    let b: SetupBody = serde_json::from_slice(&body)
        .map_err(|_| ApiError::bad("expected {token, name, password}"))?;
    if !setup_pending(&page) {
        return Err(ApiError::forbidden("no setup pending or wrong setup token"));
    }
    let addr_key = format!("addr:{}", addr.ip());
    let now = Instant::now();
    {
        // The attempt counts until the token proves right.
        let mut addr_t = page.throttle_addr.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(r) = addr_t.attempt(&addr_key, now) {
            let secs = r.wait.as_secs().max(1);
            return Ok(too_many(
                secs,
                json!({"error": "too many attempts", "retry_after_s": secs}),
            ));
        }
        if !page.setup.take(&b.token) {
            return Err(ApiError::forbidden("no setup pending or wrong setup token"));
        }
        addr_t.forgive(&addr_key, now);
    }
    let store = page.clone();
    let (name, pw) = (b.name.clone(), b.password);
    let added = tokio::task::spawn_blocking(move || store.users.add_first_technician(&name, &pw))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "setup failed"))?;
    let entry = |ok, detail| AuditEntry {
        ts: Timestamp::now(),
        user: None,
        addr: Some(addr.ip().to_string()),
        action: "setup".into(),
        target: Some(b.name.clone()),
        ok,
        detail,
    };
    match added {
        Ok(u) => {
            page.setup.clear();
            page.audit.append(&entry(true, None));
            Ok(Json(json!({"user": u})).into_response())
        }
        Err(e @ UserError::TechnicianExists) => {
            page.setup.clear();
            page.audit.append(&entry(false, Some(e.to_string())));
            Err(ApiError::forbidden("no setup pending or wrong setup token"))
        }
        Err(e) => {
            page.setup.restore(b.token);
            page.audit.append(&entry(false, Some(e.to_string())));
            Err(e.into())
        }
    }
}

/// `GET /api/v1/me`: the signed-in user and the CSRF token.
async fn me(a: Authed) -> Json<serde_json::Value> {
    Json(me_json(&a.session))
}

#[derive(Deserialize)]
struct LangBody {
    lang: Lang,
}

/// `PUT /api/v1/me/lang`: the user's page language (`zh-CN` or `en`).
async fn set_lang(a: Authed, body: axum::body::Bytes) -> ApiResult {
    let b: LangBody =
        serde_json::from_slice(&body).map_err(|_| ApiError::bad("lang must be zh-CN or en"))?;
    let (page, user) = (a.page.clone(), a.session.user.clone());
    tokio::task::spawn_blocking(move || page.users.set_lang(&user, b.lang))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "failed"))??;
    a.page
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .set_lang(&a.session.user, b.lang);
    a.audit("user.lang", Some(&a.session.user), true, None);
    Ok(Json(json!({"lang": b.lang})).into_response())
}

fn alarm_json(v: &crate::alarm::AlarmView) -> serde_json::Value {
    json!({
        "key": v.key,
        "state": v.state,
        "priority": v.priority,
        "category": v.category,
        "message": v.message,
        // The gateway's own messages in Chinese, for the Chinese console.
        "message_zh": crate::alarm::wording::zh(&v.message),
        "latched": v.latched,
        "zone_disarmed": v.zone_disarmed,
    })
}

fn alarms_json(list: &[crate::alarm::AlarmView]) -> serde_json::Value {
    serde_json::Value::Array(list.iter().map(alarm_json).collect())
}

/// `GET /api/v1/dashboard`: uplink, journal, devices, alarms by priority.
async fn dashboard(State(state): State<WebState>, a: Authed) -> Json<serde_json::Value> {
    let s = &state.status;
    let stats = state.journal.stats();
    let acked = state.journal.acked_seq(state.uplink_sink);
    let active = a.page.alarm_list();
    let mut by_priority = [0u64; 5];
    for v in active.iter() {
        let p = v.priority.get().clamp(1, 5) as usize;
        by_priority[p - 1] += 1;
    }
    Json(json!({
        "version": s.version,
        "site": a.page.cfg().config.site.id,
        "gateway": a.page.cfg().config.site.gateway,
        "uptime_s": s.uptime_s(),
        "uplink": {
            "connected": s.uplink_connected.load(Ordering::Relaxed),
            "backlog": stats.last_seq.saturating_sub(acked),
        },
        "journal": {
            "last_seq": stats.last_seq,
            "events": stats.events,
            "bytes_on_disk": stats.bytes_on_disk,
        },
        "devices": {
            "online": s.devices_online.load(Ordering::Relaxed),
            "offline": s.devices_offline.load(Ordering::Relaxed),
        },
        "cameras_online": s.cameras_online.load(Ordering::Relaxed),
        "alarms": {
            "active": active.len(),
            "by_priority": by_priority,
        },
    }))
}

/// `GET /api/v1/alarms`: active alarms, most urgent first.
async fn alarms(a: Authed) -> Json<serde_json::Value> {
    let list = a.page.alarm_list();
    Json(json!({"alarms": alarms_json(&list)}))
}

/// `GET /api/v1/alarms/stream`: Server-Sent Events. An `alarms` event with
/// the whole active list (alarms and troubles) at once and at every change
/// (published by the alarm task before the events are journaled). The
/// stream ends when the session does.
async fn alarm_stream(
    a: Authed,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let mut rx = a.page.live().alarms();
    rx.mark_changed();
    let troubles = a.page.troubles().subscribe();
    let page = a.page.clone();
    let token = a.token.clone();
    let stream = futures_util::stream::unfold(
        (rx, troubles, page, token),
        |(mut rx, mut troubles, page, token)| async move {
            loop {
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                        // An alarm change counts as activity of the console.
                        let alive = page
                            .sessions
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .touch(&token, Instant::now())
                            .is_some();
                        if !alive {
                            return None;
                        }
                        let list = trouble::merged(&rx.borrow_and_update(), &troubles.borrow_and_update());
                        let ev = SseEvent::default()
                            .event("alarms")
                            .data(alarms_json(&list).to_string());
                        return Some((Ok(ev), (rx, troubles, page, token)));
                    }
                    // The troubles live as long as the gateway: a closed
                    // channel only stops this branch.
                    Ok(()) = troubles.changed() => {
                        rx.mark_changed();
                    }
                    // A session that ended (signed out, idle, user removed)
                    // closes the stream soon, so the page shows the sign-in
                    // form instead of a console that no longer updates.
                    _ = tokio::time::sleep(STREAM_SESSION_CHECK) => {
                        let alive = page
                            .sessions
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .alive(&token, Instant::now());
                        if !alive {
                            return None;
                        }
                    }
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[derive(Deserialize)]
struct AckBody {
    key: String,
    #[serde(default)]
    comment: Option<String>,
    /// Shelving time in seconds (shelve only).
    #[serde(default)]
    duration_s: Option<u64>,
}

/// Acknowledge or shelve through the one command path.
async fn alarm_command(a: Authed, body: axum::body::Bytes, action: &str) -> ApiResult {
    a.require(a.session.role.can_operate(), "acknowledge or shelve alarms")?;
    let b: AckBody =
        serde_json::from_slice(&body).map_err(|_| ApiError::bad("expected {key, comment}"))?;
    let comment = b
        .comment
        .map(|c| c.trim().chars().take(MAX_COMMENT).collect::<String>())
        .filter(|c| !c.is_empty());
    let value = match action {
        "shelve_alarm" => Some(json!(b
            .duration_s
            .ok_or_else(|| ApiError::bad("duration_s is required to shelve"))?)),
        _ => None,
    };
    let cmd = Command {
        action: action.to_string(),
        target: Some(b.key.clone()),
        value,
        operator: Some(a.session.user.clone()),
        expires_at: None,
        comment: comment.clone(),
    };
    let outcome = a
        .page
        .commands()
        .execute(
            &cmd,
            &Origin::Local {
                session: a.session.id.clone(),
            },
        )
        .await;
    a.audit(
        action,
        Some(&b.key),
        outcome.ok,
        outcome.error.clone().or(comment),
    );
    if outcome.ok {
        Ok(Json(json!({"ok": true, "executed_at": outcome.executed_at})).into_response())
    } else {
        // `reason` lets the console word the refusal in its language.
        let body = json!({
            "error": outcome.error.unwrap_or_else(|| "refused".into()),
            "reason": outcome.reason.map(|r| r.as_str()),
        });
        Ok((StatusCode::CONFLICT, Json(body)).into_response())
    }
}

/// `POST /api/v1/alarms/ack` `{key, comment}`.
async fn ack(a: Authed, body: axum::body::Bytes) -> ApiResult {
    alarm_command(a, body, "ack_alarm").await
}

/// `POST /api/v1/alarms/shelve` `{key, comment, duration_s}`.
async fn shelve(a: Authed, body: axum::body::Bytes) -> ApiResult {
    alarm_command(a, body, "shelve_alarm").await
}

/// `GET /api/v1/devices`: devices and their points with the last value
/// and quality. A device is `online` while any point reads good, `offline`
/// when its points went bad, `unknown` before its first poll.
///
/// With hundreds of devices the body is large: it is built on a blocking
/// thread, at most [`HEAVY_REQUESTS`] at a time, so a burst of page loads
/// never starves the runtime that runs the alarm engine and the console's
/// live stream.
async fn devices(a: Authed) -> ApiResult {
    let _permit = a
        .page
        .heavy
        .acquire()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let page = a.page.clone();
    let body = tokio::task::spawn_blocking(move || devices_body(&page))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "failed"))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Most large responses built at once (the rest wait their turn).
pub const HEAVY_REQUESTS: usize = 2;

#[derive(Serialize)]
struct PointOut<'a> {
    point: &'a str,
    unit: Option<&'a str>,
    category: crate::event::Category,
    writable: bool,
    value: Option<crate::point::Value>,
    quality: Option<crate::point::Quality>,
    ts: Option<Timestamp>,
}

#[derive(Serialize)]
struct DeviceOut<'a> {
    id: &'a str,
    name: Option<&'a str>,
    zone: Option<&'a str>,
    category: crate::event::Category,
    status: &'static str,
    points: Vec<PointOut<'a>>,
}

fn devices_body(page: &PageState) -> Result<Vec<u8>, serde_json::Error> {
    let cfg = &page.cfg();
    let live = page.live();
    let values = live.values();
    let n = cfg.config.devices.len();
    let mut points: Vec<Vec<PointOut<'_>>> = (0..n).map(|_| Vec::new()).collect();
    let mut state: Vec<Option<bool>> = vec![None; n];
    for (pi, meta) in cfg.points.iter() {
        let sample = values.get(pi as usize).copied().flatten();
        if let Some(s) = sample {
            let good = s.quality == crate::point::Quality::Good;
            let st = &mut state[meta.device_index];
            *st = Some(st.unwrap_or(false) || good);
        }
        points[meta.device_index].push(PointOut {
            point: &meta.point,
            unit: meta.unit.as_deref(),
            category: meta.category,
            writable: meta.writable,
            value: sample.and_then(|s| s.value),
            quality: sample.map(|s| s.quality),
            ts: sample.map(|s| s.ts),
        });
    }
    let devices: Vec<DeviceOut<'_>> = cfg
        .config
        .devices
        .iter()
        .zip(points)
        .enumerate()
        .map(|(di, (d, points))| DeviceOut {
            id: &d.id,
            name: d.name.as_deref(),
            zone: d.zone.as_deref(),
            category: d.category,
            status: if !d.enabled {
                "disabled"
            } else {
                match state[di] {
                    None => "unknown",
                    Some(true) => "online",
                    Some(false) => "offline",
                }
            },
            points,
        })
        .collect();
    #[derive(Serialize)]
    struct Body<'a> {
        devices: Vec<DeviceOut<'a>>,
    }
    serde_json::to_vec(&Body { devices })
}

/// `GET /api/v1/users` (technician).
async fn users(a: Authed) -> ApiResult {
    a.require(a.session.role.can_administer(), "manage users")?;
    Ok(Json(json!({"users": a.page.users.list()})).into_response())
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    role: Role,
    password: String,
}

/// `POST /api/v1/users` `{name, role, password}` (technician).
async fn add_user(a: Authed, body: axum::body::Bytes) -> ApiResult {
    a.require(a.session.role.can_administer(), "manage users")?;
    let b: NewUser = serde_json::from_slice(&body)
        .map_err(|_| ApiError::bad("expected {name, role, password}"))?;
    let page = a.page.clone();
    let (name, role, pw) = (b.name.clone(), b.role, b.password);
    let r: Result<UserInfo, UserError> =
        tokio::task::spawn_blocking(move || page.users.add(&name, role, &pw))
            .await
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "failed"))?;
    a.audit(
        "user.add",
        Some(&b.name),
        r.is_ok(),
        Some(match &r {
            Ok(u) => format!("role {:?}", u.role),
            Err(e) => e.to_string(),
        }),
    );
    Ok((StatusCode::CREATED, Json(json!({"user": r?}))).into_response())
}

/// `DELETE /api/v1/users/{name}` (technician); ends the user's sessions.
async fn remove_user(a: Authed, Path(name): Path<String>) -> ApiResult {
    a.require(a.session.role.can_administer(), "manage users")?;
    let page = a.page.clone();
    let n = name.clone();
    let r = tokio::task::spawn_blocking(move || page.users.remove(&n))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "failed"))?;
    a.audit(
        "user.remove",
        Some(&name),
        r.is_ok(),
        r.as_ref().err().map(|e| e.to_string()),
    );
    r?;
    a.page
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove_user(&name);
    Ok(Json(json!({"ok": true})).into_response())
}

/// `GET /api/v1/audit` (technician): the newest 200 entries.
async fn audit(a: Authed) -> ApiResult {
    a.require(a.session.role.can_administer(), "read the audit log")?;
    let page = a.page.clone();
    let entries = tokio::task::spawn_blocking(move || page.audit.recent(200))
        .await
        .unwrap_or_default();
    Ok(Json(json!({"entries": entries})).into_response())
}

/// `GET /api/v1/config` (technician): a read-only summary of the running
/// configuration. Built field by field: secret sources (files, variables)
/// and secret values are never included.
async fn config_view(a: Authed) -> ApiResult {
    a.require(a.session.role.can_administer(), "read the configuration")?;
    let c = &a.page.cfg().config;
    let devices: Vec<_> = c
        .devices
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "name": d.name,
                "zone": d.zone,
                "category": d.category,
                "enabled": d.enabled,
                "poll_interval_s": d.poll_interval.as_secs_f64(),
                "points": d.points.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let rules: Vec<_> = c
        .alarms
        .iter()
        .map(|r| json!({"point": r.point, "priority": r.priority, "message": r.message}))
        .collect();
    Ok(Json(json!({
        "file": a.page.cfg().path,
        "site": {"id": c.site.id, "name": c.site.name, "gateway": c.site.gateway},
        "uplink": {"host": c.uplink.host, "port": c.uplink.port, "password_set": c.uplink.password.is_some()},
        "devices": devices,
        "alarms": rules,
        "web": {"listen": c.web.listen, "session_idle_s": c.web.session_idle.as_secs()},
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn cookie_token_finds_the_session_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; eg_session=abc; b=2"),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("xeg_session=nope"));
        h.append(header::COOKIE, HeaderValue::from_static("eg_session=yes"));
        assert_eq!(cookie_token(&h).as_deref(), Some("yes"));
        assert_eq!(cookie_token(&HeaderMap::new()), None);
    }

    #[test]
    fn json_content_type_is_required_for_changes() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert!(!is_json(&h));
        assert!(changes_state(&Method::POST));
        assert!(changes_state(&Method::DELETE));
        assert!(!changes_state(&Method::GET));
    }

    #[test]
    fn cookie_flags() {
        let c = session_cookie("t", false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"));
        assert!(session_cookie("t", true).ends_with("; Secure"));
    }
}
