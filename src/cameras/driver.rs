//! One camera's task: RTSP session (retina), health, video loss, the
//! pre-alarm buffer and clip recording. It never dies: errors and stalls
//! end the session, and the task reconnects after a backoff with jitter.

use super::buffer::{ticks, Frame, PreBuffer, StreamParams, VideoChange, VideoLoss, CLOCK_HZ};
use super::clips::ClipStore;
use super::config::{CameraConfig, CameraTransport};
use super::health::{CameraHealth, RateMeter};
use super::mp4::Mp4Writer;
use super::redact::{redact_text, redact_url};
use super::ClipRequest;
use crate::alarm::trouble::Troubles;
use crate::config::secret::Secret;
use crate::event::{
    AlarmInfo, AlarmState, Attachment, Category, EventKind, NewEvent, Priority, Source, Timestamp,
};
use crate::journal::Journal;
use crate::status::GatewayStatus;
use futures_util::StreamExt;
use retina::client::{Credentials, Demuxed, PlayOptions, SessionOptions, SetupOptions, Transport};
use retina::codec::{CodecItem, FrameFormat, ParametersRef};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Longest a connect (DESCRIBE, SETUP, PLAY) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect backoff after errors.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Backoff after the camera refused the credentials: retrying fast will
/// not help and may lock the account.
const AUTH_BACKOFF_MIN: Duration = Duration::from_secs(30);
const AUTH_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Window of the frame rate and bit rate figures.
const RATE_WINDOW: Duration = Duration::from_secs(2);
/// A clip ends at the latest this long after its planned end when frames
/// stop arriving.
const CLIP_GRACE: Duration = Duration::from_secs(5);

/// Exponential backoff with ±20 % jitter (pure but for the random jitter).
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }
    /// The next wait; doubles up to `max`.
    pub fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(0.8 + 0.4 * fastrand::f64())
    }
    /// Start from `min` again (frames flowed).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Everything a camera task needs.
pub(super) struct CameraTask {
    pub cfg: CameraConfig,
    pub url: url::Url,
    pub password: Option<Secret>,
    pub journal: Journal,
    /// Video loss and its end are troubles: on the guards' console.
    pub troubles: Arc<Troubles>,
    pub status: Arc<GatewayStatus>,
    pub health: Arc<CameraHealth>,
    pub store: ClipStore,
    pub clips: mpsc::Receiver<ClipRequest>,
    pub shutdown: CancellationToken,
}

/// A session that is up.
struct Session {
    demuxed: Pin<Box<Demuxed>>,
    stream: usize,
    codec: &'static str,
    params: Option<Arc<StreamParams>>,
    id: u64,
}

/// A clip being recorded.
struct Recording {
    id: String,
    /// Last pts included (set at the first frame when the buffer was empty).
    end_pts: Option<i64>,
    /// `post_s` in 90 kHz units.
    post: i64,
    session: Option<u64>,
    /// Ends by then even without frames.
    deadline: Instant,
    frames: std::sync::mpsc::Sender<Arc<Frame>>,
}

/// A session being opened.
type Connecting = Pin<Box<dyn std::future::Future<Output = Result<Session, SessionError>> + Send>>;

/// How a session attempt failed.
struct SessionError {
    message: String,
    auth: bool,
}

impl CameraTask {
    pub(super) async fn run(self) {
        let span = tracing::info_span!("camera", camera = %self.cfg.id);
        self.run_inner().instrument(span).await
    }

    fn secret(&self) -> Option<&str> {
        self.password.as_ref().map(Secret::expose)
    }

    async fn run_inner(mut self) {
        let start = Instant::now();
        let mut loss = VideoLoss::new(self.cfg.video_loss, start.into_std());
        let mut pre = PreBuffer::new(self.cfg.pre, self.cfg.pre_buffer_bytes);
        let mut rate = RateMeter::new(RATE_WINDOW);
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut recordings: Vec<Recording> = Vec::new();
        let mut session: Option<Session> = None;
        let mut connecting: Option<Connecting> = None;
        let mut retry_at: Option<Instant> = Some(start);
        let mut attempts: u64 = 0;
        let mut session_ids: u64 = 0;
        let mut last_frame = start;
        let mut last_error: Option<String> = None;
        let mut repeated_errors: u64 = 0;
        let mut counted_online = false;
        let mut restored = false;
        tracing::info!(url = %redact_url(self.url.as_str()), transport = ?self.cfg.transport, "camera starting");
        loop {
            let tick = tokio::time::sleep(Duration::from_millis(250));
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = async { tokio::time::sleep_until(retry_at.unwrap_or(start)).await }, if retry_at.is_some() => {
                    retry_at = None;
                    attempts += 1;
                    if attempts > 1 {
                        self.health.update(|h| h.reconnects = attempts - 1);
                    }
                    session_ids += 1;
                    connecting = Some(Box::pin(open(
                        self.url.clone(),
                        self.cfg.username.clone().zip(self.password.clone()).map(|(u, p)| Credentials {
                            username: u,
                            password: p.expose().to_string(),
                        }).or_else(|| self.cfg.username.clone().map(|u| Credentials { username: u, password: String::new() })),
                        self.cfg.transport,
                        session_ids,
                    )));
                }
                r = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                    connecting = None;
                    match r {
                        Ok(s) => {
                            tracing::info!(codec = s.codec, session = s.id, "camera session playing");
                            self.health.update(|h| h.codec = Some(s.codec.to_string()));
                            if let Some(p) = &s.params {
                                self.show_params(p);
                            }
                            rate.reset();
                            last_frame = Instant::now();
                            session = Some(s);
                        }
                        Err(e) => {
                            let msg = redact_text(&e.message, self.secret());
                            self.note_error(&msg, &mut last_error, &mut repeated_errors);
                            if e.auth {
                                backoff = Backoff::new(AUTH_BACKOFF_MIN, AUTH_BACKOFF_MAX);
                            }
                            retry_at = Some(Instant::now() + backoff.next_wait());
                        }
                    }
                }
                item = async { session.as_mut().expect("guarded").demuxed.next().await }, if session.is_some() => {
                    let s = session.as_mut().expect("guarded");
                    match item {
                        Some(Ok(CodecItem::VideoFrame(f))) if f.stream_id() == s.stream => {
                            if f.has_new_parameters() || s.params.is_none() {
                                match video_params(&s.demuxed, s.stream, s.codec) {
                                    Ok(p) => {
                                        self.show_params(&p);
                                        s.params = Some(Arc::new(p));
                                    }
                                    Err(e) => tracing::warn!(error = %e, "unusable stream parameters"),
                                }
                            }
                            let Some(params) = s.params.clone() else { continue };
                            let now = Instant::now();
                            last_frame = now;
                            let ts = f.timestamp();
                            let clock = i64::from(ts.clock_rate().get());
                            let pts = if clock == CLOCK_HZ { ts.timestamp() } else { ts.timestamp() * CLOCK_HZ / clock };
                            let keyframe = f.is_random_access_point();
                            let frame = Arc::new(Frame { pts, keyframe, data: f.into_data(), params, session: s.id });
                            self.health.frame_at(now.into_std());
                            if let Some((fps, bps)) = rate.frame(now.into_std(), frame.data.len()) {
                                self.health.update(|h| { h.fps = fps; h.bitrate_bps = bps; });
                            }
                            if loss.frame(now.into_std()) == Some(VideoChange::Restored) {
                                restored = true;
                            }
                            if !counted_online {
                                counted_online = true;
                                self.status.cameras_online.fetch_add(1, Ordering::Relaxed);
                                self.health.update(|h| { h.online = true; h.last_error = None; });
                                backoff.reset();
                                repeated_errors = 0;
                                last_error = None;
                            }
                            for r in &mut recordings {
                                feed(r, &frame);
                            }
                            pre.push(frame);
                            self.health.update(|h| h.pre_buffer_bytes = pre.bytes());
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            let msg = redact_text(&e.to_string(), self.secret());
                            self.note_error(&msg, &mut last_error, &mut repeated_errors);
                            session = None;
                            retry_at = Some(Instant::now() + backoff.next_wait());
                        }
                        None => {
                            self.note_error("the camera ended the session", &mut last_error, &mut repeated_errors);
                            session = None;
                            retry_at = Some(Instant::now() + backoff.next_wait());
                        }
                    }
                }
                req = self.clips.recv() => {
                    if let Some(req) = req {
                        recordings.push(self.start_clip(req, &pre));
                    }
                }
                _ = tick => {}
            }
            let now = Instant::now();
            // A session that delivers nothing is stalled: start again.
            if session.is_some() && now.duration_since(last_frame) >= self.cfg.video_loss {
                self.note_error(
                    &format!(
                        "no frame for {} s: session stalled",
                        self.cfg.video_loss.as_secs()
                    ),
                    &mut last_error,
                    &mut repeated_errors,
                );
                session = None;
                retry_at = Some(now + backoff.next_wait());
            }
            if std::mem::take(&mut restored) {
                tracing::info!("video restored");
                self.record(self.video_event(false, None)).await;
            }
            if loss.check(now.into_std()) == Some(VideoChange::Lost) {
                {
                    if counted_online {
                        counted_online = false;
                        self.status.cameras_online.fetch_sub(1, Ordering::Relaxed);
                    }
                    self.health.update(|h| h.online = false);
                    tracing::warn!(
                        video_loss_s = self.cfg.video_loss.as_secs(),
                        error = last_error.as_deref().unwrap_or(""),
                        "video loss"
                    );
                    self.record(self.video_event(true, last_error.as_deref()))
                        .await;
                }
            }
            // Recordings that are complete.
            let std_now = now;
            recordings.retain(|r| {
                let done = r.deadline <= std_now
                    || r.end_pts
                        .is_some_and(|end| pre_newest(&pre).is_some_and(|p| p > end))
                    || r.session
                        .is_some_and(|s| session.as_ref().is_none_or(|x| x.id != s));
                if done {
                    tracing::debug!(clip = %r.id, "clip recording complete");
                }
                !done
            });
        }
        if counted_online {
            self.status.cameras_online.fetch_sub(1, Ordering::Relaxed);
        }
        self.health.update(|h| h.online = false);
        // Dropping the recordings closes their channels: their writers
        // finish the clips with what they have.
        drop(recordings);
        tracing::info!("camera stopped");
    }

    fn show_params(&self, p: &StreamParams) {
        self.health.update(|h| {
            h.width = p.width;
            h.height = p.height;
            h.codec_detail = Some(p.rfc6381.clone());
        });
    }

    /// Log an error once; the same error again only at debug level.
    fn note_error(&self, msg: &str, last: &mut Option<String>, repeated: &mut u64) {
        if last.as_deref() == Some(msg) {
            *repeated += 1;
            tracing::debug!(error = %msg, repeated = *repeated, "camera error (again)");
        } else {
            *repeated = 0;
            tracing::error!(error = %msg, "camera error; reconnecting with backoff");
            *last = Some(msg.to_string());
        }
        let m = msg.to_string();
        self.health.update(|h| h.last_error = Some(m));
    }

    async fn record(&self, ev: NewEvent) {
        if let Err(e) = self.troubles.record(ev).await {
            tracing::error!(error = %e, "cannot record camera event");
        }
    }

    fn source(&self) -> Source {
        Source {
            device: Some(self.cfg.id.clone()),
            point: Some("video".into()),
            zone: self.cfg.zone.clone(),
        }
    }

    fn video_event(&self, lost: bool, error: Option<&str>) -> NewEvent {
        let name = self.cfg.name.as_deref().unwrap_or(&self.cfg.id);
        NewEvent {
            ts: Timestamp::now(),
            kind: if lost {
                EventKind::CameraVideoLoss
            } else {
                EventKind::CameraVideoRestored
            },
            priority: if lost { Priority::HIGH } else { Priority::LOW },
            category: Category::Video,
            source: self.source(),
            alarm: Some(AlarmInfo {
                key: format!("{}/video", self.cfg.id),
                state: if lost {
                    AlarmState::ActiveUnacked
                } else {
                    AlarmState::Normal
                },
                value: serde_json::Value::Bool(lost),
                message: if lost {
                    format!("Video loss: {name}")
                } else {
                    format!("Video restored: {name}")
                },
                operator: None,
                comment: None,
                latched: false,
            }),
            attachments: Vec::new(),
            detail: Some(serde_json::json!({
                "camera": self.cfg.id,
                "video_loss_s": self.cfg.video_loss.as_secs_f64(),
                "error": error,
            })),
        }
    }

    /// Start recording a clip: the pre-alarm buffer now, live frames until
    /// `post_s` after the newest frame.
    fn start_clip(&self, req: ClipRequest, pre: &PreBuffer) -> Recording {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Frame>>();
        let newest = pre_newest(pre);
        let session = pre.frames().next().map(|f| f.session);
        for f in pre.frames() {
            let _ = tx.send(f.clone());
        }
        let post = ticks(self.cfg.post);
        tracing::info!(clip = %req.id, alarm = %req.alarm_key, pre_s = pre.span() as f64 / CLOCK_HZ as f64, "clip recording");
        let bitrate = self.health.snapshot().bitrate_bps.max(4_000_000.0);
        let expected = ((self.cfg.pre + self.cfg.post).as_secs_f64() * bitrate / 8.0 * 1.25) as u64;
        let store = self.store.clone();
        let journal = self.journal.clone();
        let source = self.source();
        let camera = self.cfg.id.clone();
        let id = req.id.clone();
        let id2 = id.clone();
        tokio::spawn(async move {
            let store2 = store.clone();
            let r =
                tokio::task::spawn_blocking(move || write_clip(&store2, &id2, expected, rx)).await;
            let r = match r {
                Ok(r) => r,
                Err(e) => Err(format!("clip writer failed: {e}")),
            };
            let ev = clip_event(&store, &camera, &req, source, r);
            if let Err(e) = journal.record(vec![ev]).await {
                tracing::error!(error = %e, "cannot record clip event");
            }
        });
        Recording {
            id,
            end_pts: newest.map(|n| n + post),
            post,
            session,
            deadline: Instant::now() + self.cfg.post + CLIP_GRACE,
            frames: tx,
        }
    }
}

fn pre_newest(pre: &PreBuffer) -> Option<i64> {
    pre.frames().last().map(|f| f.pts)
}

/// Give a recording a live frame.
fn feed(r: &mut Recording, f: &Arc<Frame>) {
    if r.session.is_none() {
        if !f.keyframe {
            return;
        }
        r.session = Some(f.session);
        // The camera was down when the alarm came: post_s from its return.
        r.end_pts = Some(r.end_pts.unwrap_or(f.pts + r.post));
    }
    if r.session != Some(f.session) || r.end_pts.is_some_and(|e| f.pts > e) {
        return;
    }
    let _ = r.frames.send(f.clone());
}

/// Write a clip from its frames (blocking; runs on the blocking pool).
/// Returns (bytes, duration in seconds, frames, codec).
fn write_clip(
    store: &ClipStore,
    id: &str,
    expected: u64,
    rx: std::sync::mpsc::Receiver<Arc<Frame>>,
) -> Result<(u64, f64, usize, String), String> {
    store.make_room(expected).map_err(|e| e.to_string())?;
    let part = store.part_path(id);
    let mut writer: Option<Mp4Writer<std::io::BufWriter<std::fs::File>>> = None;
    let mut codec = String::new();
    for f in rx {
        if writer.is_none() {
            let file = std::fs::File::create(&part).map_err(|e| format!("create clip: {e}"))?;
            codec = f.params.codec.to_string();
            writer = Some(
                Mp4Writer::new(
                    std::io::BufWriter::with_capacity(256 * 1024, file),
                    f.params.clone(),
                )
                .map_err(|e| e.to_string())?,
            );
        }
        let w = writer.as_mut().expect("set above");
        if !w.accepts(&f) {
            // The stream's parameters changed: the clip ends here.
            break;
        }
        if let Err(e) = w.push(&f) {
            let _ = std::fs::remove_file(&part);
            return Err(e.to_string());
        }
    }
    let Some(w) = writer else {
        return Err("no video from the camera".into());
    };
    let frames = w.frames();
    let (buf, dur) = w.finish().map_err(|e| {
        let _ = std::fs::remove_file(&part);
        e.to_string()
    })?;
    let file = buf.into_inner().map_err(|e| e.to_string())?;
    file.sync_all().map_err(|e| e.to_string())?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    drop(file);
    std::fs::rename(&part, store.final_path(id)).map_err(|e| e.to_string())?;
    Ok((bytes, dur as f64 / CLOCK_HZ as f64, frames, codec))
}

/// `camera.clip_ready` (or `camera.clip_failed`).
fn clip_event(
    store: &ClipStore,
    camera: &str,
    req: &ClipRequest,
    source: Source,
    r: Result<(u64, f64, usize, String), String>,
) -> NewEvent {
    let (kind, priority, detail, attachments) = match r {
        Ok((bytes, duration_s, frames, codec)) => {
            tracing::info!(clip = %req.id, bytes, duration_s, frames, "clip ready");
            (
                EventKind::CameraClipReady,
                Priority::INFO,
                serde_json::json!({
                    "camera": camera, "clip": req.id, "alarm_key": req.alarm_key,
                    "bytes": bytes, "duration_s": duration_s, "frames": frames, "codec": codec,
                    "trigger_ts": req.at,
                }),
                vec![Attachment {
                    kind: "clip".into(),
                    id: req.id.clone(),
                    url: store.url_of(&req.id),
                }],
            )
        }
        Err(e) => {
            tracing::error!(clip = %req.id, error = %e, "clip failed");
            (
                EventKind::CameraClipFailed,
                Priority::LOW,
                serde_json::json!({
                    "camera": camera, "clip": req.id, "alarm_key": req.alarm_key,
                    "error": e, "trigger_ts": req.at,
                }),
                Vec::new(),
            )
        }
    };
    NewEvent {
        ts: Timestamp::now(),
        kind,
        priority,
        category: req.category,
        source: Source {
            zone: req.zone.clone().or(source.zone),
            ..source
        },
        alarm: None,
        attachments,
        detail: Some(detail),
    }
}

/// Connect: DESCRIBE, SETUP the first H.264/H.265 video stream, PLAY.
async fn open(
    url: url::Url,
    creds: Option<Credentials>,
    transport: CameraTransport,
    id: u64,
) -> Result<Session, SessionError> {
    let fut = async {
        let err = |e: retina::Error| SessionError {
            auth: e.status_code() == Some(401),
            message: if e.status_code() == Some(401) {
                format!(
                    "authentication refused (401): check the camera's username and password ({e})"
                )
            } else {
                e.to_string()
            },
        };
        let opts = SessionOptions::default()
            .creds(creds)
            .user_agent(format!("estate-gateway/{}", env!("CARGO_PKG_VERSION")));
        let mut s = retina::client::Session::describe(url, opts)
            .await
            .map_err(err)?;
        let Some((i, codec)) = s.streams().iter().enumerate().find_map(|(i, st)| {
            (st.media() == "video")
                .then(|| match st.encoding_name() {
                    "h264" => Some((i, "h264")),
                    "h265" => Some((i, "h265")),
                    _ => None,
                })
                .flatten()
        }) else {
            return Err(SessionError {
                message: "the camera offers no H.264 or H.265 video stream".into(),
                auth: false,
            });
        };
        let t = match transport {
            CameraTransport::Tcp => Transport::Tcp(Default::default()),
            CameraTransport::Udp => Transport::Udp(Default::default()),
        };
        s.setup(
            i,
            SetupOptions::default()
                .transport(t)
                .frame_format(FrameFormat::MP4),
        )
        .await
        .map_err(err)?;
        let playing = s
            .play(
                PlayOptions::default()
                    .initial_timestamp(retina::client::InitialTimestampPolicy::Permissive),
            )
            .await
            .map_err(err)?;
        let demuxed = playing.demuxed().map_err(err)?;
        let params = video_params(&demuxed, i, codec).ok().map(Arc::new);
        Ok(Session {
            demuxed: Box::pin(demuxed),
            stream: i,
            codec,
            params,
            id,
        })
    };
    match tokio::time::timeout(OPEN_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(SessionError {
            message: format!("no answer within {} s", OPEN_TIMEOUT.as_secs()),
            auth: false,
        }),
    }
}

/// The stream's current video parameters as a clip needs them.
fn video_params(d: &Demuxed, stream: usize, codec: &'static str) -> Result<StreamParams, String> {
    let Some(ParametersRef::Video(v)) = d.streams().get(stream).and_then(|s| s.parameters()) else {
        return Err("no video parameters yet".into());
    };
    let (width, height) = v.pixel_dimensions();
    let sample_entry = v.mp4_sample_entry().build().map_err(|e| e.to_string())?;
    Ok(StreamParams {
        sample_entry,
        width,
        height,
        codec,
        rfc6381: v.rfc6381_codec().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(pts: i64, keyframe: bool, session: u64) -> Arc<Frame> {
        Arc::new(Frame {
            pts,
            keyframe,
            data: vec![0; 10],
            params: Arc::new(StreamParams {
                sample_entry: vec![],
                width: 1,
                height: 1,
                codec: "h264",
                rfc6381: String::new(),
            }),
            session,
        })
    }

    #[test]
    fn a_clip_requested_while_the_camera_is_down_starts_at_its_return() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut r = Recording {
            id: "c".into(),
            end_pts: None,
            post: 3 * CLOCK_HZ,
            session: None,
            deadline: Instant::now(),
            frames: tx,
        };
        feed(&mut r, &frame(100, false, 7)); // not a keyframe: skipped
        for i in 0..100 {
            feed(&mut r, &frame(1000 + i * 9000, i % 10 == 0, 7));
        }
        let got: Vec<i64> = rx.try_iter().map(|f| f.pts).collect();
        assert_eq!(got.first(), Some(&1000));
        assert_eq!(r.end_pts, Some(1000 + 3 * CLOCK_HZ));
        assert!(got.iter().all(|p| *p <= 1000 + 3 * CLOCK_HZ));
        assert_eq!(got.len(), 31, "3 s at 10 fps, both ends");
        // Frames of another session never mix in.
        feed(&mut r, &frame(2000, true, 8));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let waits: Vec<f64> = (0..6).map(|_| b.next_wait().as_secs_f64()).collect();
        for (w, base) in waits.iter().zip([1.0, 2.0, 4.0, 8.0, 8.0, 8.0]) {
            assert!(*w >= base * 0.8 && *w <= base * 1.2, "{w} vs {base}");
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(1200));
    }
}
