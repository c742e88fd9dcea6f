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

use crate::alarm::trouble::Troubles;
use crate::config::secret::SecretError;
use crate::config::LoadedConfig;
use crate::event::{Attachment, Category, EventKind, NewEvent, Timestamp};
use crate::journal::Journal;
use crate::linkage::{Action, Linkage};
use crate::status::GatewayStatus;
use clips::ClipStore;
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
    /// Alarm key → cameras of its rule's `cameras` list.
    rule_cameras: HashMap<String, Vec<String>>,
    cameras: HashMap<String, mpsc::Sender<ClipRequest>>,
    store: ClipStore,
}

impl ClipTrigger {
    /// For each alarm raised in `events` whose rule lists `cameras`, or that
    /// a linkage rule with `clip` actions matches: request the clips and
    /// attach them to the event.
    pub fn attach(&self, events: &mut [NewEvent]) {
        for e in events.iter_mut() {
            if e.kind != EventKind::AlarmRaised {
                continue;
            }
            let mut cams: Vec<String> = e
                .alarm
                .as_ref()
                .and_then(|a| self.rule_cameras.get(&a.key))
                .cloned()
                .unwrap_or_default();
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
///
/// Nothing here stops the gateway: a camera whose password cannot be read
/// is not started (logged, and its health says why), a clip directory that
/// cannot be created is logged and clips fail until it can.
pub fn spawn(
    cfg: &LoadedConfig,
    journal: Journal,
    troubles: Arc<Troubles>,
    status: Arc<GatewayStatus>,
    shutdown: CancellationToken,
) -> Cameras {
    let c = &cfg.config;
    let enabled: Vec<&CameraConfig> = c.cameras.iter().filter(|c| c.enabled).collect();
    if enabled.is_empty() {
        return Cameras {
            tasks: Vec::new(),
            clips: None,
        };
    }
    prepare_clips(&c.clips);
    let mut tasks = Vec::new();
    let mut senders = HashMap::new();
    for cam in enabled {
        if let Some((task, tx)) = start(cfg, cam, &journal, &troubles, &status, shutdown.clone()) {
            senders.insert(cam.id.clone(), tx);
            tasks.push(task);
        }
    }
    Cameras {
        tasks,
        clips: ClipTrigger::for_cameras(cfg, senders),
    }
}

/// Create the clip directory and remove clips left half-written (only
/// while no camera task runs: a running one may be writing).
pub fn prepare_clips(clips: &ClipsConfig) {
    if let Err(e) = ClipStore::new(clips).prepare() {
        // Clips will fail (camera.clip_failed) until the directory exists;
        // video loss and health work without it.
        tracing::error!(error = %e, "clip directory not usable");
    }
}

/// Start the task of the enabled camera `id` alone (a configuration
/// reload restarts cameras one by one); `None` when it is not configured
/// or cannot start (logged, in its health). Returns the task and its clip
/// queue for [`ClipTrigger::for_cameras`].
pub fn spawn_one(
    cfg: &LoadedConfig,
    id: &str,
    journal: Journal,
    troubles: Arc<Troubles>,
    status: Arc<GatewayStatus>,
    shutdown: CancellationToken,
) -> Option<(tokio::task::JoinHandle<()>, mpsc::Sender<ClipRequest>)> {
    let cam = cfg
        .config
        .cameras
        .iter()
        .find(|c| c.id == id && c.enabled)?;
    start(cfg, cam, &journal, &troubles, &status, shutdown)
}

fn start(
    cfg: &LoadedConfig,
    cam: &CameraConfig,
    journal: &Journal,
    troubles: &Arc<Troubles>,
    status: &Arc<GatewayStatus>,
    shutdown: CancellationToken,
) -> Option<(tokio::task::JoinHandle<()>, mpsc::Sender<ClipRequest>)> {
    // A camera that cannot start is logged and shown in its health;
    // the gateway (alarms first) runs on without it.
    let started = cam
        .password
        .as_ref()
        .map(|p| p.resolve())
        .transpose()
        .map_err(|source| CameraError::Secret {
            camera: cam.id.clone(),
            source,
        })
        .and_then(|pw| {
            let url = url::Url::parse(&cam.url).map_err(|_| CameraError::Url {
                camera: cam.id.clone(),
                url: redact::redact_url(&cam.url),
            })?;
            Ok((pw, url))
        });
    let (password, url) = match started {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(camera = %cam.id, error = %e, "camera not started");
            let msg = e.to_string();
            status
                .cameras
                .camera(&cam.id)
                .update(|h| h.last_error = Some(msg));
            return None;
        }
    };
    let (tx, rx) = mpsc::channel(CLIP_QUEUE);
    let task = driver::CameraTask {
        cfg: cam.clone(),
        url,
        password,
        journal: journal.clone(),
        troubles: troubles.clone(),
        status: status.clone(),
        health: status.cameras.camera(&cam.id),
        store: ClipStore::new(&cfg.config.clips),
        clips: rx,
        shutdown,
    };
    Some((tokio::spawn(task.run()), tx))
}

impl ClipTrigger {
    /// The clip trigger of `cfg`'s alarm rules and linkage over the
    /// running cameras' clip queues (`None` without enabled cameras).
    pub fn for_cameras(
        cfg: &LoadedConfig,
        cameras: HashMap<String, mpsc::Sender<ClipRequest>>,
    ) -> Option<ClipTrigger> {
        if !cfg.config.cameras.iter().any(|c| c.enabled) {
            return None;
        }
        Some(ClipTrigger {
            linkage: Arc::new(Linkage::new(cfg)),
            rule_cameras: rule_cameras(cfg),
            cameras,
            store: ClipStore::new(&cfg.config.clips),
        })
    }
}

/// Alarm key (`device/point`, or `device/point/id`) → the rule's cameras.
fn rule_cameras(cfg: &LoadedConfig) -> HashMap<String, Vec<String>> {
    cfg.config
        .alarms
        .iter()
        .filter(|a| !a.cameras.is_empty())
        .map(|a| {
            let key = match &a.id {
                Some(id) => format!("{}/{id}", a.point),
                None => a.point.clone(),
            };
            (key, a.cameras.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AlarmInfo, AlarmState, Priority, Source};

    fn cfg(dir: &std::path::Path) -> LoadedConfig {
        let text = format!(
            r#"
[site]
id = "s"
gateway = "gw"
[uplink]
host = "127.0.0.1"
[clips]
path = "{dir}/clips"
[[cameras]]
id = "cam-a"
url = "rtsp://127.0.0.1/a"
[[cameras]]
id = "cam-b"
url = "rtsp://127.0.0.1/b"
[[devices]]
id = "fence"
category = "perimeter"
[devices.modbus]
host = "127.0.0.1"
[[devices.points]]
id = "z1"
register = "coil"
address = 0
[[alarms]]
point = "fence/z1"
equals = true
priority = 2
message = "breach"
cameras = ["cam-a"]
[[linkage]]
id = "clip-b"
key = "fence/*"
[[linkage.actions]]
type = "clip"
camera = "cam-b"
[[linkage.actions]]
type = "clip"
camera = "cam-a"
"#,
            dir = dir.display()
        );
        crate::config::load_str(&text, std::path::Path::new("gw.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn raised(key: &str) -> NewEvent {
        NewEvent {
            ts: Timestamp::now(),
            kind: EventKind::AlarmRaised,
            priority: Priority::HIGH,
            category: Category::Perimeter,
            source: Source::default(),
            alarm: Some(AlarmInfo {
                key: key.into(),
                state: AlarmState::ActiveUnacked,
                value: serde_json::Value::Bool(true),
                message: "breach".into(),
                operator: None,
                comment: None,
                latched: false,
            }),
            attachments: Vec::new(),
            detail: None,
        }
    }

    #[test]
    fn rule_cameras_and_linkage_clips_are_attached_once_each() {
        let d = tempfile::tempdir().unwrap();
        let cfg = cfg(d.path());
        let (ta, mut ra) = mpsc::channel(1);
        let (tb, mut rb) = mpsc::channel(1);
        let trigger = ClipTrigger {
            linkage: Arc::new(Linkage::new(&cfg)),
            rule_cameras: rule_cameras(&cfg),
            cameras: HashMap::from([("cam-a".to_string(), ta), ("cam-b".to_string(), tb)]),
            store: ClipStore::open(&cfg.config.clips).unwrap(),
        };
        let mut events = vec![raised("fence/z1")];
        trigger.attach(&mut events);
        let ids: Vec<&str> = events[0]
            .attachments
            .iter()
            .map(|a| a.id.as_str())
            .collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(
            ids[0].starts_with("cam-a-") && ids[1].starts_with("cam-b-"),
            "{ids:?}"
        );
        assert_eq!(ra.try_recv().unwrap().alarm_key, "fence/z1");
        assert_eq!(rb.try_recv().unwrap().id, ids[1]);
        // A full queue: no attachment, the alarm is not held.
        let mut again = vec![raised("fence/z1")];
        trigger.attach(&mut again);
        trigger.attach(&mut again);
        assert_eq!(again[0].attachments.len(), 2, "second batch refused");
        // Other kinds are left alone.
        let mut cleared = vec![NewEvent {
            kind: EventKind::AlarmCleared,
            ..raised("fence/z1")
        }];
        trigger.attach(&mut cleared);
        assert!(cleared[0].attachments.is_empty());
    }

    #[test]
    fn unknown_cameras_are_config_errors() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path()).config;
        c.alarms[0].cameras = vec!["cam-x".into()];
        let found = config::validate(&c);
        assert!(
            found.iter().any(|(_, m)| m.contains("cam-x")),
            "{:?}",
            found.iter().map(|f| &f.1).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_camera_zone_is_an_id() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path()).config;
        c.cameras[0].zone = Some("gate-1".into());
        assert!(config::validate(&c).is_empty());
        c.cameras[0].zone = Some("Gate Area/1".into());
        let found = config::validate(&c);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0.to_string(), "cameras[0].zone");
        assert!(found[0]
            .1
            .contains("\"Gate Area/1\" must be 1–64 characters"));
    }
}
