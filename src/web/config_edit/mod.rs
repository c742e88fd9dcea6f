//! Configuration editing from the page (technicians only), under
//! `/api/v1/config/…`:
//!
//! - `GET  /config/file`: the file on disk as TOML text and as a JSON
//!   model for the forms, its version (SHA-256 of its bytes), its
//!   problems, and whether it equals the running configuration.
//! - `POST /config/validate` `{text}` or `{edits}`: every problem of the
//!   result, with key path and line — the checks of `check-config`.
//! - `POST /config/apply` `{version, text | edits, comment?}`: validate,
//!   reload from the validated configuration, and only then write the
//!   file atomically (tmp + fsync + rename; the previous file is kept in
//!   the history); when the write fails the previous configuration is
//!   reloaded, so the file on disk always equals the running
//!   configuration. One apply at a time, run to its end even when the
//!   client goes away; an apply based on a version other than the file's
//!   is refused (409).
//! - `GET  /config/history`, `GET /config/history/{id}/diff`: applied
//!   versions (when, who, what) and a unified diff to the one before.
//!
//! Secrets are never inline in this configuration; URL-borne credentials
//! (camera URLs, push endpoints) are redacted in everything sent out and
//! restored when sent back unchanged ([`edit::restore_redacted`]).

pub mod diff;
pub mod edit;
pub mod history;

use super::api::{ApiError, Authed};
use super::audit::AuditEntry;
use super::WebState;
use crate::app::{ReloadError, Reloader};
use crate::config::{ConfigErrors, ConfigProblem};
use crate::event::Timestamp;
use axum::extract::Path as UrlPath;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edit::{redact_urls, Edit};
use history::History;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default number of applied versions kept (`[web] config_history`).
pub const DEFAULT_HISTORY: usize = 50;

/// Longest comment kept with an applied change.
const MAX_COMMENT: usize = 200;

/// Edits the running configuration file and reloads it.
pub struct ConfigEditor {
    reloader: Reloader,
    path: PathBuf,
    history: History,
    /// One validate-write-reload at a time.
    lock: tokio::sync::Mutex<()>,
}

impl ConfigEditor {
    /// Edit `path` (the running file) and reload it with `reloader`;
    /// versions are kept in `state_dir` (`[journal] path`).
    pub fn new(reloader: Reloader, path: PathBuf, state_dir: &Path, keep: usize) -> ConfigEditor {
        ConfigEditor {
            reloader,
            path,
            history: History::new(state_dir, keep),
            lock: tokio::sync::Mutex::new(()),
        }
    }
}

/// Write `bytes` to `path` atomically: a temporary file in the same
/// directory (with the target's permissions), fsync, rename, fsync of the
/// directory. A crash leaves the old or the new file, never a mix. A
/// symlinked `path` is followed: the link's target is replaced, the link
/// kept.
/// Why [`write_if_unchanged`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the file changed on disk meanwhile (now version {0})")]
    Changed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Write `bytes` to `path` ([`write_atomic`]) only if the file still has
/// version `expected`: an edit by hand (or another tool) made while the
/// new configuration was being reloaded is never overwritten unseen.
pub fn write_if_unchanged(path: &Path, expected: &str, bytes: &[u8]) -> Result<(), WriteError> {
    let now = version_of(&std::fs::read(path)?);
    if now != expected {
        return Err(WriteError::Changed(now));
    }
    Ok(write_atomic(path, bytes)?)
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let target;
    let path = if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        target = std::fs::canonicalize(path)?;
        target.as_path()
    } else {
        path
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let r = (|| {
        // Readable by the owner only until the target's permissions are
        // copied: a new file (a history version) stays 0600.
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?
        };
        if let Ok(m) = std::fs::metadata(path) {
            f.set_permissions(m.permissions())?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Version of a file's bytes: SHA-256, hex.
pub fn version_of(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// One problem as the page shows it: at the field named by `key`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProblemOut {
    /// Key path (`devices[2].points[0].scale`), `(syntax)`, `(file)`, …
    pub key: String,
    /// 1-based line in the text, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl From<&ConfigProblem> for ProblemOut {
    fn from(p: &ConfigProblem) -> ProblemOut {
        // A secret written inline is quoted by the parser's message
        // (strings in quotes, numbers and other values in backticks).
        let quoted = p.message.contains(['"', '\'', '`'])
            || p.message.contains("invalid type")
            || p.message.contains("SecretSource");
        let message = if edit::is_secret_path(&p.key) && quoted {
            crate::config::INLINE_SECRET_MESSAGE.into()
        } else {
            redact_urls(&p.message)
        };
        ProblemOut {
            key: redact_urls(&p.key),
            line: p.line,
            message,
        }
    }
}

fn problems(e: &ConfigErrors) -> Vec<ProblemOut> {
    e.0.iter().map(ProblemOut::from).collect()
}

/// A change sent by the page: the whole text (raw editor) or form edits
/// against the file's current text.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeBody {
    /// The version (from `GET /config/file`) the change is based on.
    /// Required to apply.
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    edits: Option<Vec<Edit>>,
    /// Why (kept in the history).
    #[serde(default)]
    comment: Option<String>,
}

/// A change made concrete: the new text and a summary of it.
struct Prepared {
    text: String,
    summary: String,
}

/// The new text of `body` against `base` (the file's text), with URLs the
/// page saw redacted restored. Problems when it cannot be built.
fn prepare(base: &str, body: &ChangeBody) -> Result<Prepared, Vec<ProblemOut>> {
    let (text, mut summary) = match (&body.text, &body.edits) {
        (Some(t), None) => (t.clone(), String::new()),
        (None, Some(edits)) => {
            let t = edit::apply_edits(base, edits).map_err(|e| {
                vec![ProblemOut {
                    key: e.path().unwrap_or("(edits)").to_string(),
                    line: None,
                    message: redact_urls(&e.to_string()),
                }]
            })?;
            let s: Vec<String> = edits.iter().map(|e| e.to_string()).collect();
            (t, s.join("; "))
        }
        _ => {
            return Err(vec![ProblemOut {
                key: "(request)".into(),
                line: None,
                message: "send either `text` or `edits`".into(),
            }])
        }
    };
    // Put back what the page was shown redacted. A text that does not
    // parse is left to the validation, which names the line.
    let text = match text.parse::<toml_edit::DocumentMut>() {
        Ok(mut doc) => {
            let left = edit::restore_redacted(&mut doc, base);
            if !left.is_empty() {
                return Err(left
                    .into_iter()
                    .map(|key| {
                        let message = if edit::is_url_path(&key) {
                            "its credentials are hidden: type the whole URL again"
                        } else {
                            "a hidden value (***) cannot be used here: type the value itself"
                        };
                        ProblemOut {
                            key,
                            line: None,
                            message: message.into(),
                        }
                    })
                    .collect());
            }
            let restored = doc.to_string();
            // Keep the page's text byte for byte when nothing was restored.
            if restored == text {
                text
            } else {
                restored
            }
        }
        Err(_) => text,
    };
    if body.edits.is_none() {
        let (add, del) = diff::stats(base, &text);
        summary = format!("text: +{add} −{del} lines");
    }
    if let Some(c) = body
        .comment
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        let c: String = c.chars().take(MAX_COMMENT).collect();
        summary = format!("{} — {summary}", redact_urls(&c));
    }
    Ok(Prepared { text, summary })
}

/// The routes (merged into `/api/v1`).
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/config/file", get(file))
        .route("/config/validate", post(validate))
        .route("/config/apply", post(apply))
        .route("/config/history", get(history_list))
        .route("/config/history/:id/diff", get(history_diff))
}

type ApiResult<T = Response> = Result<T, ApiError>;

fn internal(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, msg.into())
}

/// The editor, for a technician.
fn editor(a: &Authed) -> ApiResult<Arc<ConfigEditor>> {
    if !a.session.role.can_administer() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("role {:?} may not edit the configuration", a.session.role),
        ));
    }
    a.page.config_editor().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "configuration editing is not available".into(),
        )
    })
}

fn audit(a: &Authed, file: &Path, ok: bool, detail: String) {
    a.page.audit.append(&AuditEntry {
        ts: Timestamp::now(),
        user: Some(a.session.user.clone()),
        addr: a.addr.map(|x| x.ip().to_string()),
        action: "config.apply".into(),
        target: file.file_name().map(|n| n.to_string_lossy().into_owned()),
        ok,
        detail: Some(redact_urls(&detail)),
    });
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| internal("failed"))
}

async fn read_file(path: &Path) -> ApiResult<String> {
    let p = path.to_path_buf();
    blocking(move || std::fs::read_to_string(&p))
        .await?
        .map_err(|e| internal(format!("cannot read {}: {e}", path.display())))
}

/// `GET /api/v1/config/file` (technician).
async fn file(a: Authed) -> ApiResult {
    let ed = editor(&a)?;
    let text = read_file(&ed.path).await?;
    let running = a.page.cfg();
    let path = ed.path.clone();
    let t = text.clone();
    let checked = blocking(move || crate::config::load_str(&t, &path)).await?;
    let (probs, warnings, matches) = match &checked {
        Ok(l) => (
            Vec::new(),
            l.warnings.iter().map(ProblemOut::from).collect::<Vec<_>>(),
            l.config == running.config,
        ),
        Err(e) => (problems(e), Vec::new(), false),
    };
    Ok(Json(json!({
        "file": ed.path,
        "version": version_of(text.as_bytes()),
        "text": edit::redact_text(&text),
        "model": edit::model(&text),
        "problems": probs,
        "partly_checked": partly_checked(&checked),
        "warnings": warnings,
        "running_matches_file": matches,
    }))
    .into_response())
}

fn parse_body(body: &[u8]) -> ApiResult<ChangeBody> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("expected {{version, text | edits, comment}}: {e}"),
        )
    })
}

/// `partly_checked: true`, when the text's syntax or types were wrong: its
/// values (ranges, references) are not checked yet, so more problems may
/// follow once these are fixed (`ConfigErrors::hint`).
fn partly_checked<T>(checked: &Result<T, ConfigErrors>) -> bool {
    checked.as_ref().err().is_some_and(|e| e.hint().is_some())
}

fn unprocessable(problems: &[ProblemOut], partly_checked: bool) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({
            "ok": false,
            "error": "the configuration has problems",
            "problems": problems,
            "partly_checked": partly_checked,
        })),
    )
        .into_response()
}

/// `POST /api/v1/config/validate` (technician): every problem of the
/// text, or of the file with the edits applied, located by key path and
/// line. Answers 200 with `ok` and `problems` either way.
async fn validate(a: Authed, body: axum::body::Bytes) -> ApiResult {
    let ed = editor(&a)?;
    let b = parse_body(&body)?;
    let base = read_file(&ed.path).await?;
    if let Some(v) = &b.version {
        if *v != version_of(base.as_bytes()) {
            return Ok(stale(&base));
        }
    }
    let p = match prepare(&base, &b) {
        Ok(p) => p,
        Err(probs) => {
            return Ok(
                Json(json!({"ok": false, "problems": probs, "partly_checked": false}))
                    .into_response(),
            )
        }
    };
    let path = ed.path.clone();
    let t = p.text.clone();
    let r = blocking(move || crate::config::load_str(&t, &path)).await?;
    let (ok, probs, warnings) = match &r {
        Ok(l) => (
            true,
            Vec::new(),
            l.warnings.iter().map(ProblemOut::from).collect(),
        ),
        Err(e) => (false, problems(e), Vec::new()),
    };
    Ok(Json(json!({
        "ok": ok,
        "problems": probs,
        "partly_checked": partly_checked(&r),
        "warnings": warnings,
        "changed": p.text != base,
        "summary": p.summary,
        "text": edit::redact_text(&p.text),
        "model": edit::model(&p.text),
    }))
    .into_response())
}

fn stale(current: &str) -> Response {
    (
        StatusCode::CONFLICT,
        Json(json!({
            "ok": false,
            "stale": true,
            "error": "the file changed since it was loaded: reload it and make the change again",
            "version": version_of(current.as_bytes()),
        })),
    )
        .into_response()
}

/// `POST /api/v1/config/apply` (technician): validate, reload, write,
/// record. The work runs in its own task: a client that goes away (axum
/// then drops this handler) cannot cut an apply off halfway.
async fn apply(a: Authed, body: axum::body::Bytes) -> ApiResult {
    let ed = editor(&a)?;
    let b = parse_body(&body)?;
    let Some(based_on) = b.version.clone() else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "`version` is required to apply".into(),
        ));
    };
    tokio::spawn(apply_to_end(a, ed, b, based_on))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "configuration apply task failed");
            internal("the apply failed")
        })?
}

/// Whether the running configuration equals `text` (the file on disk).
async fn running_matches(a: &Authed, path: &Path, text: &str) -> bool {
    let running = a.page.cfg();
    let (p, t) = (path.to_path_buf(), text.to_string());
    match blocking(move || crate::config::load_str(&t, &p)).await {
        Ok(Ok(l)) => l.config == running.config,
        _ => false,
    }
}

/// The whole apply, in order (see docs/design/web.md):
///
/// 1. one apply at a time; the file's version must be the one the change
///    is based on;
/// 2. validate the new text into a [`crate::config::LoadedConfig`];
/// 3. keep the file before the change in the history;
/// 4. reload from that validated configuration — the file is not touched
///    yet, so a crash here leaves the previous file, which is what runs
///    at the next start;
/// 5. only when the reload took, write the file atomically; when that
///    write fails, reload the previous configuration back;
/// 6. record the new version with its author, audit.
///
/// After every outcome the running configuration equals the file on disk
/// (unless neither the new nor the previous configuration starts).
async fn apply_to_end(
    a: Authed,
    ed: Arc<ConfigEditor>,
    b: ChangeBody,
    based_on: String,
) -> ApiResult {
    let _one_at_a_time = ed.lock.lock().await;
    let base = read_file(&ed.path).await?;
    let base_version = version_of(base.as_bytes());
    if based_on != base_version {
        audit(&a, &ed.path, false, "stale version".into());
        return Ok(stale(&base));
    }
    let p = match prepare(&base, &b) {
        Ok(p) => p,
        Err(probs) => {
            audit(&a, &ed.path, false, "invalid edits".into());
            return Ok(unprocessable(&probs, false));
        }
    };
    let path = ed.path.clone();
    let t = p.text.clone();
    let loaded = match blocking(move || crate::config::load_str(&t, &path)).await? {
        Ok(l) => l,
        Err(e) => {
            audit(
                &a,
                &ed.path,
                false,
                format!("refused: {} problem(s)", e.0.len()),
            );
            return Ok(unprocessable(&problems(&e), e.hint().is_some()));
        }
    };
    if p.text == base {
        return Ok(Json(
            json!({"ok": true, "applied": false, "changed": false, "version": base_version}),
        )
        .into_response());
    }
    let new_version = version_of(p.text.as_bytes());

    // Keep the previous file: the history's newest entry must be it.
    let (ed2, base2, bv) = (ed.clone(), base.clone(), base_version.clone());
    blocking(move || -> Result<(), history::HistoryError> {
        let latest = ed2.history.latest()?;
        if latest.map(|m| m.version) != Some(bv.clone()) {
            ed2.history
                .record(&base2, None, "the file before this change", &bv)?;
        }
        Ok(())
    })
    .await?
    .map_err(|e| {
        tracing::error!(error = %e, "previous configuration not kept in the history");
        audit(&a, &ed.path, false, format!("history not written: {e}"));
        internal(format!("cannot keep the previous configuration: {e}"))
    })?;

    tracing::info!(user = %a.session.user, file = %ed.path.display(), summary = %p.summary, "configuration from the web page validated; reloading");
    let report = match ed.reloader.reload(loaded).await {
        Ok(report) => report,
        Err(e) => {
            // The file was not touched: it still holds the previous
            // configuration, which runs again (or nothing runs).
            let (status, kind) = match &e {
                ReloadError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
                ReloadError::NeedsRestart(_) => (StatusCode::CONFLICT, "needs_restart"),
                ReloadError::Secret(_) => (StatusCode::CONFLICT, "secret"),
                ReloadError::RolledBack(_) => (StatusCode::CONFLICT, "rolled_back"),
                ReloadError::Failed { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "failed"),
                ReloadError::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "stopping"),
            };
            let msg = redact_urls(e.to_string().lines().next().unwrap_or_default());
            audit(&a, &ed.path, false, format!("{kind}: {msg}"));
            let probs = match &e {
                ReloadError::Invalid(errors) => problems(errors),
                _ => Vec::new(),
            };
            let matches = running_matches(&a, &ed.path, &base).await;
            return Ok((
                status,
                Json(json!({
                    "ok": false,
                    "applied": false,
                    "outcome": kind,
                    "rolled_back": matches!(e, ReloadError::RolledBack(_)),
                    "file_restored": true,
                    "running_matches_file": matches,
                    "error": msg,
                    "problems": probs,
                    "version": base_version,
                })),
            )
                .into_response());
        }
    };

    // The new configuration runs: now the file says so, unless it was
    // changed on disk during the reload.
    let (path, new_text, bv) = (ed.path.clone(), p.text.clone(), base_version.clone());
    if let Err(we) = blocking(move || write_if_unchanged(&path, &bv, new_text.as_bytes())).await? {
        let changed = matches!(we, WriteError::Changed(_));
        if changed {
            tracing::warn!(error = %we, file = %ed.path.display(), "configuration not written: the file changed meanwhile; reloading the previous one");
        } else {
            tracing::error!(error = %we, file = %ed.path.display(), "configuration not written; reloading the previous one");
        }
        let (path, old) = (ed.path.clone(), base.clone());
        let back = match blocking(move || crate::config::load_str(&old, &path)).await? {
            Ok(prev) => ed.reloader.reload(prev).await.map(|_| ()),
            Err(errors) => Err(ReloadError::Invalid(errors)),
        };
        if let Err(be) = &back {
            tracing::error!(error = %be, "previous configuration not reloaded after a failed write");
        }
        audit(&a, &ed.path, false, format!("not written: {we}"));
        let (status, outcome, error, version) = match &we {
            WriteError::Changed(now) => (
                StatusCode::CONFLICT,
                "changed_meanwhile",
                "the file was changed on disk while the new configuration was being reloaded; nothing was written and the previous configuration runs again: reload the file and make the change again".to_string(),
                now.clone(),
            ),
            WriteError::Io(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "not_written",
                redact_urls(&format!("cannot write the configuration: {we}")),
                base_version.clone(),
            ),
        };
        let on_disk = if changed {
            read_file(&ed.path).await.unwrap_or_default()
        } else {
            base.clone()
        };
        let matches = running_matches(&a, &ed.path, &on_disk).await;
        return Ok((
            status,
            Json(json!({
                "ok": false,
                "applied": false,
                "outcome": outcome,
                "stale": changed,
                "rolled_back": back.is_ok(),
                "file_restored": !changed,
                "running_matches_file": matches,
                "error": error,
                "problems": [],
                "version": version,
            })),
        )
            .into_response());
    }
    tracing::info!(user = %a.session.user, file = %ed.path.display(), "configuration applied and written");

    let (ed2, text, user, summary, v) = (
        ed.clone(),
        p.text.clone(),
        a.session.user.clone(),
        p.summary.clone(),
        new_version.clone(),
    );
    let meta = blocking(move || ed2.history.record(&text, Some(&user), &summary, &v))
        .await?
        .map_err(|e| tracing::error!(error = %e, "config history not recorded"))
        .ok();
    audit(&a, &ed.path, true, p.summary.clone());
    Ok(Json(json!({
        "ok": true,
        "applied": true,
        "changed": report.changed,
        "restarted": report.restarted,
        "version": new_version,
        "history_id": meta.map(|m| m.id),
        "summary": p.summary,
        "running_matches_file": true,
    }))
    .into_response())
}

/// `GET /api/v1/config/history` (technician): applied versions, newest first.
async fn history_list(a: Authed) -> ApiResult {
    let ed = editor(&a)?;
    let list = blocking(move || ed.history.list())
        .await?
        .map_err(|e| internal(e.to_string()))?;
    let list: Vec<_> = list
        .into_iter()
        .map(|mut m| {
            m.summary = redact_urls(&m.summary);
            m
        })
        .collect();
    Ok(Json(json!({"versions": list})).into_response())
}

/// `GET /api/v1/config/history/{id}/diff` (technician): unified diff of
/// version `id` against the version before it (URLs redacted).
async fn history_diff(a: Authed, UrlPath(id): UrlPath<u64>) -> ApiResult {
    let ed = editor(&a)?;
    let r = blocking(move || -> Result<_, history::HistoryError> {
        let text = ed.history.text(id)?;
        let prev = ed.history.previous(id)?;
        let prev_text = match &prev {
            Some(m) => ed.history.text(m.id)?,
            None => String::new(),
        };
        let old_name = prev
            .as_ref()
            .map_or("(none)".to_string(), |m| format!("v{}", m.id));
        let d = diff::unified(
            &edit::redact_text(&prev_text),
            &edit::redact_text(&text),
            &old_name,
            &format!("v{id}"),
            3,
        );
        Ok((prev.map(|m| m.id), d))
    })
    .await?;
    match r {
        Ok((prev, d)) => Ok(Json(json!({
            "id": id,
            "previous": prev,
            "diff": redact_urls(&d),
        }))
        .into_response()),
        Err(history::HistoryError::NotFound(_)) => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no version {id} in the history"),
        )),
        Err(e) => Err(internal(e.to_string())),
    }
}

#[cfg(test)]
mod write_tests {
    use super::*;

    #[test]
    fn a_file_changed_meanwhile_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, "a = 1\n").unwrap();
        let loaded = version_of(b"a = 1\n");
        // Edited by hand while the reload ran.
        std::fs::write(&path, "a = 2\n").unwrap();
        let r = write_if_unchanged(&path, &loaded, b"a = 3\n");
        assert!(
            matches!(&r, Err(WriteError::Changed(v)) if *v == version_of(b"a = 2\n")),
            "{r:?}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a = 2\n");
        // Unchanged: written.
        write_if_unchanged(&path, &version_of(b"a = 2\n"), b"a = 3\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a = 3\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_keeps_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gw.toml");
        std::fs::write(&p, "a = 1\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, b"a = 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a = 2\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn inline_secret_values_are_not_in_problems() {
        for message in [
            "invalid type: string \"hunter2\", expected struct SecretSource",
            "invalid type: integer `123456`, expected struct SecretSource",
            "invalid type: floating point `1.5`, expected struct SecretSource",
        ] {
            let p = ConfigProblem {
                file: "gw.toml".into(),
                line: Some(3),
                key: "uplink.password".into(),
                message: message.into(),
            };
            let out = ProblemOut::from(&p);
            assert_eq!(out.message, crate::config::INLINE_SECRET_MESSAGE);
        }
        let p = ConfigProblem {
            file: "gw.toml".into(),
            line: None,
            key: "push.channels[0].secret".into(),
            message: "cannot read /etc/x.secret: not found".into(),
        };
        assert_eq!(ProblemOut::from(&p).message, p.message);
    }

    #[test]
    fn atomic_write_follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let target = real.join("gw.toml");
        std::fs::write(&target, "a = 1\n").unwrap();
        let link = dir.path().join("gw.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomic(&link, b"a = 2\n").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "a = 2\n");
        assert_eq!(std::fs::read_dir(&real).unwrap().count(), 1);
    }

    #[test]
    fn versions_are_sha256() {
        assert_eq!(
            version_of(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn prepare_restores_urls_and_summarises() {
        let base = "[[cameras]]\nid = \"gate\"\nurl = \"rtsp://u:pw@h/s\"\n";
        let body = ChangeBody {
            version: None,
            text: Some(redact_urls(base).replace("gate", "gate-2")),
            edits: None,
            comment: Some(" rename ".into()),
        };
        let p = prepare(base, &body).ok().unwrap();
        assert!(p.text.contains("rtsp://u:pw@h/s"), "{}", p.text);
        assert_eq!(p.summary, "rename — text: +1 −1 lines");

        let body = ChangeBody {
            version: None,
            text: None,
            edits: Some(vec![Edit::Set {
                path: "cameras[0].url".into(),
                value: json!("rtsp://***@h/other"),
            }]),
            comment: None,
        };
        let probs = prepare(base, &body).err().unwrap();
        assert_eq!(probs[0].key, "cameras[0].url");

        let body = ChangeBody {
            version: None,
            text: None,
            edits: None,
            comment: None,
        };
        assert!(prepare(base, &body).is_err());
    }
}
