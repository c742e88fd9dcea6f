//! Camera clips in the page: the clip files themselves (`/clips/{id}.mp4`,
//! with HTTP range requests, as `<video>` needs), the cameras page's API
//! (`/api/v1/cameras`: health and recent clips) and which clips belong to
//! which alarm (`/api/v1/alarms/clips`).
//!
//! `/clips/{id}.mp4` is where the default `[clips] url_prefix = "/clips"`
//! points event attachments, so an attachment's URL opens here; the page
//! itself builds the URL from the attachment's `id`, which works whatever
//! the prefix. A clip is served only to a signed-in user, only by a
//! well-formed id ([`ClipStore::path_of`]: lower-case letters, digits and
//! `-`; no path can be formed from it).
//!
//! Alarms and clips: an `alarm.raised` event carries its clip attachments,
//! and `camera.clip_ready` / `camera.clip_failed` follow once the camera's
//! task finished. [`follow`] reads those events from the journal as they
//! become durable and keeps the newest [`INDEX_MAX`] clips in a
//! [`ClipIndex`] (in memory: after a restart only the events still held by
//! the journal are known; the files stay listed on the cameras page).

use super::api::{ApiError, Authed};
use super::WebState;
use crate::cameras::clips::ClipStore;
use crate::event::Timestamp;
use crate::journal::Journal;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio_util::sync::CancellationToken;

/// Clips remembered with their alarm.
pub const INDEX_MAX: usize = 1000;
/// Recent clips listed per camera.
const RECENT_PER_CAMERA: usize = 10;
/// Bytes read from a clip file per chunk of the response.
const CHUNK: usize = 64 * 1024;

/// `/clips/{id}.mp4` (merged at the root, next to the page).
pub fn file_routes() -> Router<WebState> {
    Router::new().route("/clips/:file", get(clip_file))
}

/// `/cameras` and `/alarms/clips` (nested under `/api/v1`).
pub fn api_routes() -> Router<WebState> {
    Router::new()
        .route("/cameras", get(cameras))
        .route("/cameras/summary", get(cameras_summary))
        .route("/alarms/clips", get(alarm_clips))
}

// ---- range requests ----------------------------------------------------

/// What a `Range` header asks of a resource of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// No (usable) range: the whole resource, 200.
    Whole,
    /// Bytes `start..=end`, 206.
    Part { start: u64, end: u64 },
    /// Nothing of it exists, 416.
    Unsatisfiable,
}

/// Parse a `Range` header (pure). One `bytes=` range is served; several
/// ranges, other units or a malformed header are answered with the whole
/// resource, as RFC 9110 allows.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeAsk {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match num(b) {
            Some(0) => RangeAsk::Unsatisfiable,
            Some(n) if len > 0 => RangeAsk::Part {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            Some(_) => RangeAsk::Unsatisfiable,
            None => RangeAsk::Whole,
        },
        // bytes=A-
        (false, true) => match num(a) {
            Some(s) if s < len => RangeAsk::Part {
                start: s,
                end: len - 1,
            },
            Some(_) => RangeAsk::Unsatisfiable,
            None => RangeAsk::Whole,
        },
        // bytes=A-B
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s <= e => {
                if s >= len {
                    RangeAsk::Unsatisfiable
                } else {
                    RangeAsk::Part {
                        start: s,
                        end: e.min(len - 1),
                    }
                }
            }
            _ => RangeAsk::Whole,
        },
        (true, true) => RangeAsk::Whole,
    }
}

/// `GET /clips/{id}.mp4`: the clip file, whole or one byte range.
async fn clip_file(
    a: Authed,
    headers: HeaderMap,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let id = file
        .strip_suffix(".mp4")
        .filter(|id| ClipStore::is_valid_id(id))
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "not a clip name".into()))?;
    let store = ClipStore::new(&a.page.cfg().config.clips);
    let path = store
        .path_of(id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "no such clip".into()))?;
    let not_found = |_| ApiError(StatusCode::NOT_FOUND, "no such clip".into());
    let mut file = tokio::fs::File::open(&path).await.map_err(not_found)?;
    let len = file.metadata().await.map_err(not_found)?.len();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, count) = match parse_range(range, len) {
        RangeAsk::Whole => (StatusCode::OK, 0, len),
        RangeAsk::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        RangeAsk::Unsatisfiable => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response());
        }
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    }
    // A clip deleted to make room while it is served ends the body early;
    // the browser retries its range.
    let body = futures_util::stream::unfold((file, count), |(mut f, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; CHUNK.min(left as usize)];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), (f, left - n as u64)))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    });
    let mut r = Response::new(axum::body::Body::from_stream(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    // Evidence behind a session: never kept in a browser's or a proxy's
    // cache, where it would outlive the session and the retention.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::PARTIAL_CONTENT {
        let v = format!("bytes {start}-{}/{len}", start + count - 1);
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(r)
}

// ---- alarms and their clips --------------------------------------------

/// Where a clip stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipState {
    /// Announced with the alarm; the camera is recording.
    Recording,
    Ready,
    Failed,
}

/// One clip and the alarm it was recorded for.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClipInfo {
    pub id: String,
    pub camera: String,
    pub alarm_key: String,
    pub state: ClipState,
    /// When the alarm was raised (or the clip event, if the alarm was not seen).
    pub ts: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The camera of clip id `{camera}-{yyyymmdd}-{hhmmssmmm}-{hex}`.
pub fn camera_of(id: &str) -> &str {
    let mut cut = id.len();
    for _ in 0..3 {
        match id[..cut].rfind('-') {
            Some(i) => cut = i,
            None => return id,
        }
    }
    &id[..cut]
}

/// The newest clips with their alarms, fed from the journal.
#[derive(Debug, Default)]
pub struct ClipIndex {
    inner: Mutex<IndexState>,
}

#[derive(Debug, Default)]
struct IndexState {
    /// Last journal seq read.
    after: u64,
    clips: VecDeque<ClipInfo>,
}

impl IndexState {
    fn entry(&mut self, id: &str, alarm_key: &str, ts: Option<Timestamp>) -> &mut ClipInfo {
        if let Some(i) = self.clips.iter().position(|c| c.id == id) {
            return &mut self.clips[i];
        }
        if self.clips.len() >= INDEX_MAX {
            self.clips.pop_front();
        }
        self.clips.push_back(ClipInfo {
            id: id.to_string(),
            camera: camera_of(id).to_string(),
            alarm_key: alarm_key.to_string(),
            state: ClipState::Recording,
            ts,
            error: None,
        });
        let last = self.clips.len() - 1;
        &mut self.clips[last]
    }

    /// Take one journaled event (its contract JSON) into account (pure).
    fn apply(&mut self, payload: &[u8]) {
        // Only events that name a clip are parsed (`"type": "clip"` in an
        // attachment, `"clip": …` in a clip event's detail).
        if !names_a_clip(payload) {
            return;
        }
        let Ok(e) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        let ts: Option<Timestamp> = serde_json::from_value(e["ts"].clone()).ok();
        match e["kind"].as_str() {
            Some("alarm.raised") => {
                let Some(key) = e["alarm"]["key"].as_str() else {
                    return;
                };
                for a in e["attachments"].as_array().into_iter().flatten() {
                    if a["type"] == "clip" {
                        if let Some(id) = a["id"].as_str().filter(|i| ClipStore::is_valid_id(i)) {
                            self.entry(id, key, ts);
                        }
                    }
                }
            }
            Some(kind @ ("camera.clip_ready" | "camera.clip_failed")) => {
                let d = &e["detail"];
                let (Some(id), Some(key)) = (d["clip"].as_str(), d["alarm_key"].as_str()) else {
                    return;
                };
                if !ClipStore::is_valid_id(id) {
                    return;
                }
                let trigger: Option<Timestamp> =
                    serde_json::from_value(d["trigger_ts"].clone()).ok().or(ts);
                let c = self.entry(id, key, trigger);
                if kind == "camera.clip_ready" {
                    c.state = ClipState::Ready;
                } else {
                    c.state = ClipState::Failed;
                    c.error = d["error"].as_str().map(|s| s.chars().take(300).collect());
                }
            }
            _ => {}
        }
    }
}

impl ClipIndex {
    /// Clips of alarm `key`, oldest first.
    pub fn of_alarm(&self, key: &str) -> Vec<ClipInfo> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.clips
            .iter()
            .filter(|c| c.alarm_key == key)
            .cloned()
            .collect()
    }

    /// The alarm a clip was recorded for, if known.
    pub fn alarm_of(&self, id: &str) -> Option<String> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.clips
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.alarm_key.clone())
    }

    /// Every clip known, oldest first.
    pub fn all(&self) -> Vec<ClipInfo> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.clips.iter().cloned().collect()
    }

    /// Read the journal's events after the last one read. False when
    /// nothing new was there.
    fn catch_up(&self, journal: &Journal) -> bool {
        let after = self.inner.lock().unwrap_or_else(|p| p.into_inner()).after;
        let batch = match journal.read_events(after, 256) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "clip index: cannot read the journal");
                return false;
            }
        };
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for ev in &batch {
            g.apply(&ev.payload);
            g.after = ev.seq;
        }
        !batch.is_empty()
    }
}

/// Whether an event's JSON has the string `"clip"` (every event passes
/// here; most have none).
fn names_a_clip(payload: &[u8]) -> bool {
    memchr::memmem::find(payload, b"\"clip\"").is_some()
}

/// Follow the journal into `index` until `stop`.
pub async fn follow(journal: Journal, index: std::sync::Arc<ClipIndex>, stop: CancellationToken) {
    let mut head = journal.watch();
    loop {
        // A long backlog is read in batches, letting other tasks run.
        while index.catch_up(&journal) {
            tokio::task::yield_now().await;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = head.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// `GET /api/v1/alarms/clips`: `{clips: {alarm key: [clip, …]}}` for the
/// active alarms.
async fn alarm_clips(a: Authed) -> Json<serde_json::Value> {
    let active = a.page.live().alarms().borrow().clone();
    let store = ClipStore::new(&a.page.cfg().config.clips);
    let mut out = serde_json::Map::new();
    for v in active.iter() {
        let mut clips = a.page.clips.of_alarm(&v.key);
        // The index learns of complete clips from `camera.clip_ready`; an
        // event delivered and removed from the journal before the index
        // read it is not seen there. The file is: a clip is renamed into
        // place only when complete.
        for c in clips.iter_mut() {
            if matches!(c.state, ClipState::Recording) && store.path_of(&c.id).is_some() {
                c.state = ClipState::Ready;
            }
        }
        if !clips.is_empty() {
            out.insert(v.key.to_string(), json!(clips));
        }
    }
    Json(json!({ "clips": out }))
}

// ---- cameras page ------------------------------------------------------

#[derive(Serialize)]
struct ClipFile {
    id: String,
    url: String,
    bytes: u64,
    ts: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    alarm_key: Option<String>,
}

/// Complete clips in `dir`, newest first, grouped by camera.
fn clip_files(dir: &std::path::Path) -> std::collections::HashMap<String, Vec<ClipFile>> {
    let mut by_cam: std::collections::HashMap<String, Vec<ClipFile>> = Default::default();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return by_cam;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".mp4")) else {
            continue;
        };
        if !ClipStore::is_valid_id(id) {
            continue;
        }
        let Ok(m) = e.metadata() else { continue };
        if !m.is_file() {
            continue;
        }
        let ts = m
            .modified()
            .ok()
            .map(|t| Timestamp(chrono::DateTime::<chrono::Utc>::from(t)))
            .unwrap_or_else(Timestamp::now);
        by_cam
            .entry(camera_of(id).to_string())
            .or_default()
            .push(ClipFile {
                id: id.to_string(),
                url: format!("/clips/{id}.mp4"),
                bytes: m.len(),
                ts,
                alarm_key: None,
            });
    }
    for v in by_cam.values_mut() {
        v.sort_by(|a, b| b.ts.0.cmp(&a.ts.0).then_with(|| b.id.cmp(&a.id)));
    }
    by_cam
}

/// A camera's state for the page: `disabled`, `online`, `offline`
/// (frames stopped or an error), `starting` (nothing known yet).
fn camera_state(
    c: &crate::cameras::CameraConfig,
    h: Option<&crate::cameras::HealthSnapshot>,
) -> &'static str {
    match h {
        _ if !c.enabled => "disabled",
        Some(h) if h.online => "online",
        Some(h) if h.last_error.is_some() || h.last_frame_age_s.is_some() => "offline",
        _ => "starting",
    }
}

/// `GET /api/v1/cameras/summary`: `{total, online}` (the dashboard's card;
/// no clip listing).
async fn cameras_summary(State(state): State<WebState>, a: Authed) -> Json<serde_json::Value> {
    let cfg = a.page.cfg();
    let health = state.status.cameras.snapshot();
    let online = cfg
        .config
        .cameras
        .iter()
        .filter(|c| camera_state(c, health.iter().find(|h| h.id == c.id)) == "online")
        .count();
    Json(json!({"total": cfg.config.cameras.len(), "online": online}))
}

/// `GET /api/v1/cameras`: every configured camera with its health and its
/// newest clips. No camera URL, user name or password is included.
async fn cameras(State(state): State<WebState>, a: Authed) -> Result<Response, ApiError> {
    let cfg = a.page.cfg();
    let health = state.status.cameras.snapshot();
    let dir = cfg.config.clips.path.clone();
    // Listing the clip directory is the expensive part: a few at a time.
    let _permit = a
        .page
        .heavy
        .acquire()
        .await
        .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))?;
    let mut files = tokio::task::spawn_blocking(move || clip_files(&dir))
        .await
        .unwrap_or_default();
    let cams: Vec<serde_json::Value> = cfg
        .config
        .cameras
        .iter()
        .map(|c| {
            let h = health.iter().find(|h| h.id == c.id);
            let state = camera_state(c, h);
            let mut clips = files.remove(&c.id).unwrap_or_default();
            clips.truncate(RECENT_PER_CAMERA);
            for f in clips.iter_mut() {
                f.alarm_key = a.page.clips.alarm_of(&f.id);
            }
            json!({
                "id": c.id,
                "name": c.name,
                "zone": c.zone,
                "enabled": c.enabled,
                "state": state,
                "fps": h.map(|h| h.fps),
                "bitrate_bps": h.map(|h| h.bitrate_bps),
                "width": h.map(|h| h.width),
                "height": h.map(|h| h.height),
                "codec": h.and_then(|h| h.codec.clone()),
                "last_frame_age_s": h.and_then(|h| h.last_frame_age_s),
                "reconnects": h.map(|h| h.reconnects),
                "last_error": h.and_then(|h| h.last_error.clone()),
                "clips": clips,
            })
        })
        .collect();
    let online = cams.iter().filter(|c| c["state"] == "online").count();
    Ok(Json(json!({
        "cameras": cams,
        "summary": {"total": cams.len(), "online": online},
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_events_with_the_string_clip_are_parsed() {
        let found = |s: &str| names_a_clip(s.as_bytes());
        assert!(found(r#"{"attachments":[{"type":"clip","id":"c1"}]}"#));
        assert!(found(r#"{"detail":{"clip":"c1"}}"#));
        assert!(found(r#""clip""#));
        assert!(!found(r#"{"a":"cli","b":"clips","c":"a clip"}"#));
        assert!(!found(r#"{"x":"clip "}"#));
        assert!(!found(""));
        assert!(!found("\""));
        assert!(!found("\"clip"));
        // The same answer as a plain search, on payloads cut anywhere.
        let p = br#"{"seq":1,"attachments":[{"type":"clip"}],"m":"""#;
        for end in 0..=p.len() {
            let slow = p[..end].windows(6).any(|w| w == b"\"clip\"");
            assert_eq!(names_a_clip(&p[..end]), slow, "{end}");
        }
    }

    #[test]
    fn ranges() {
        use RangeAsk::*;
        assert_eq!(parse_range(None, 100), Whole);
        assert_eq!(
            parse_range(Some("bytes=0-9"), 100),
            Part { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=90-"), 100),
            Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=-10"), 100),
            Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=-500"), 100),
            Part { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=50-1000"), 100),
            Part { start: 50, end: 99 }
        );
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=200-300"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 100), Whole);
        assert_eq!(parse_range(Some("bytes=9-3"), 100), Whole);
        assert_eq!(parse_range(Some("bytes=x-3"), 100), Whole);
        assert_eq!(parse_range(Some("bytes=+1-3"), 100), Whole);
    }

    proptest::proptest! {
        #[test]
        fn a_part_is_always_inside_the_resource(h in "bytes=[0-9]{0,4}-[0-9]{0,4}", len in 0u64..5000) {
            if let RangeAsk::Part { start, end } = parse_range(Some(&h), len) {
                proptest::prop_assert!(start <= end && end < len);
            }
        }
    }

    #[test]
    fn camera_from_clip_id() {
        assert_eq!(camera_of("cam-gate-20261127-031500123-0a1f"), "cam-gate");
        assert_eq!(camera_of("gate-20261127-031500123-0a1f"), "gate");
        assert_eq!(camera_of("odd"), "odd");
    }

    #[test]
    fn index_links_clips_to_alarms_and_follows_their_state() {
        let mut s = IndexState::default();
        let raised = json!({
            "kind": "alarm.raised", "ts": "2026-11-27T03:15:00.123Z",
            "alarm": {"key": "fence/z1"},
            "attachments": [{"type": "clip", "id": "cam-a-20261127-031500123-0001", "url": "/clips/x"},
                            {"type": "clip", "id": "../etc", "url": "/clips/y"}],
        });
        s.apply(raised.to_string().as_bytes());
        assert_eq!(s.clips.len(), 1, "bad ids are ignored");
        assert_eq!(s.clips[0].state, ClipState::Recording);
        assert_eq!(s.clips[0].camera, "cam-a");
        let ready = json!({
            "kind": "camera.clip_ready", "ts": "2026-11-27T03:15:30Z",
            "detail": {"clip": "cam-a-20261127-031500123-0001", "alarm_key": "fence/z1"},
        });
        s.apply(ready.to_string().as_bytes());
        assert_eq!(s.clips.len(), 1);
        assert_eq!(s.clips[0].state, ClipState::Ready);
        let failed = json!({
            "kind": "camera.clip_failed",
            "detail": {"clip": "cam-b-20261127-031500123-0002", "alarm_key": "fence/z2", "error": "no frames"},
        });
        s.apply(failed.to_string().as_bytes());
        assert_eq!(s.clips[1].state, ClipState::Failed);
        assert_eq!(s.clips[1].error.as_deref(), Some("no frames"));
        s.apply(b"not json");
        for i in 0..(INDEX_MAX + 5) {
            s.entry(&format!("c-20261127-031500123-{i:04x}"), "k", None);
        }
        assert_eq!(s.clips.len(), INDEX_MAX, "bounded");
    }
}
