//! Cameras: RTSP ingest without decoding, health, video-loss alarms, the
//! pre-alarm buffer and clips attached to alarms.
//!
//! - [`config`]: `[[cameras]]` and `[clips]`, validated.
//! - `driver`: one task per camera (retina): reconnects with backoff and
//!   jitter after errors, stalls and camera reboots; records
//!   `camera.video_loss` / `camera.video_restored`; keeps the pre-alarm
//!   buffer; records clips.
//! - [`buffer`]: frames, the pre-alarm buffer and the video-loss detector (pure).
//! - [`mp4`]: the MP4 writer (H.264/H.265 as received).
//! - [`clips`]: the clip directory (`{id}.mp4`, a file lookup by id), capped.
//! - [`health`]: per-camera health shared with the heartbeat and `/metrics`.
//! - [`redact`]: camera URLs and peer messages without credentials.
//!
//! Clips and alarms: the alarm task hands every batch of events to
//! [`ClipTrigger::attach`] before it journals them. For an alarm raised that
//! triggers a linkage rule with a `clip` action, a clip id is allocated, the
//! camera's task is asked to record, and the alarm event carries the
//! attachment `{type: "clip", id, url}` at once (the announcement). When the
//! file is complete, `camera.clip_ready` (same attachment) is recorded, or
//! `camera.clip_failed`.

pub mod buffer;
pub mod clips;
pub mod config;
mod driver;
pub mod health;
pub mod mp4;
pub mod redact;

pub use config::{CameraConfig, CameraTransport, ClipsConfig};
pub use driver::Backoff;
pub use health::{HealthRegistry, HealthSnapshot};

use crate::config::secret::SecretError;
use crate::config::LoadedConfig;
use crate::event::{Attachment, Category, EventKind, NewEvent, Timestamp};
use crate::journal::Journal;
use crate::linkage::{Action, Linkage};
use crate::status::GatewayStatus;
use clips::{ClipStore, ClipStoreError};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Clip requests waiting for one camera's task. When full, a request is
/// refused (logged; the alarm goes out without an attachment): alarms
/// never wait for cameras.
const CLIP_QUEUE: usize = 16;

/// Camera start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error("camera {camera}: password: {source}")]
    Secret { camera: String, source: SecretError },
    #[error("camera {camera}: bad URL {url}")]
    Url { camera: String, url: String },
    #[error(transparent)]
    Clips(#[from] ClipStoreError),
}

/// A clip to record for an alarm.
#[derive(Clone, Debug)]
pub struct ClipRequest {
    /// The clip id (file `{id}.mp4`).
    pub id: String,
    /// Key of the alarm that asked for it.
    pub alarm_key: String,
    pub category: Category,
    pub zone: Option<String>,
    /// When the alarm was raised.
    pub at: Timestamp,
}

/// Turns alarms into clip requests and attachments (see the module docs).
#[derive(Clone, Debug)]
pub struct ClipTrigger {
    linkage: Arc<Linkage>,
    cameras: HashMap<String, mpsc::Sender<ClipRequest>>,
    store: ClipStore,
}

impl ClipTrigger {
    /// For each alarm raised in `events` that a linkage rule with `clip`
    /// actions matches: request the clips and attach them to the event.
    pub fn attach(&self, events: &mut [NewEvent]) {
        for e in events.iter_mut() {
            if e.kind != EventKind::AlarmRaised {
                continue;
            }
            let mut cams: Vec<String> = Vec::new();
            for rule in self.linkage.triggered(e) {
                for a in &rule.actions {
                    if let Action::Clip { camera } = a {
                        if !cams.contains(camera) {
                            cams.push(camera.clone());
                        }
                    }
                }
            }
            let Some(key) = e.alarm.as_ref().map(|a| a.key.clone()) else {
                continue;
            };
            for cam in cams {
                let Some(tx) = self.cameras.get(&cam) else {
                    tracing::warn!(camera = %cam, alarm = %key, "clip for a camera that is not running");
                    continue;
                };
                let id = ClipStore::new_id(&cam, e.ts.0);
                let req = ClipRequest {
                    id: id.clone(),
                    alarm_key: key.clone(),
                    category: e.category,
                    zone: e.source.zone.clone(),
                    at: e.ts,
                };
                match tx.try_send(req) {
                    Ok(()) => e.attachments.push(Attachment {
                        kind: "clip".into(),
                        id: id.clone(),
                        url: self.store.url_of(&id),
                    }),
                    Err(err) => {
                        tracing::error!(camera = %cam, alarm = %key, error = %err, "clip request refused")
                    }
                }
            }
        }
    }

    /// The clip directory (for serving clips by id).
    pub fn store(&self) -> &ClipStore {
        &self.store
    }
}

/// The running cameras.
pub struct Cameras {
    /// One task per enabled camera; they end on shutdown.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Clip requests from alarms (`None` without cameras).
    pub clips: Option<ClipTrigger>,
}

/// Start one task per enabled camera. Health goes to `status.cameras`.
pub fn spawn(
    cfg: &LoadedConfig,
    journal: Journal,
    status: Arc<GatewayStatus>,
    shutdown: CancellationToken,
) -> Result<Cameras, CameraError> {
    let c = &cfg.config;
    let enabled: Vec<&CameraConfig> = c.cameras.iter().filter(|c| c.enabled).collect();
    if enabled.is_empty() {
        return Ok(Cameras {
            tasks: Vec::new(),
            clips: None,
        });
    }
    let store = ClipStore::open(&c.clips)?;
    let mut tasks = Vec::new();
    let mut senders = HashMap::new();
    for cam in enabled {
        let password = match &cam.password {
            Some(p) => Some(p.resolve().map_err(|source| CameraError::Secret {
                camera: cam.id.clone(),
                source,
            })?),
            None => None,
        };
        let url = url::Url::parse(&cam.url).map_err(|_| CameraError::Url {
            camera: cam.id.clone(),
            url: redact::redact_url(&cam.url),
        })?;
        let (tx, rx) = mpsc::channel(CLIP_QUEUE);
        senders.insert(cam.id.clone(), tx);
        let task = driver::CameraTask {
            cfg: cam.clone(),
            url,
            password,
            journal: journal.clone(),
            status: status.clone(),
            health: status.cameras.camera(&cam.id),
            store: store.clone(),
            clips: rx,
            shutdown: shutdown.clone(),
        };
        tasks.push(tokio::spawn(task.run()));
    }
    Ok(Cameras {
        tasks,
        clips: Some(ClipTrigger {
            linkage: Arc::new(Linkage::new(cfg)),
            cameras: senders,
            store,
        }),
    })
}
