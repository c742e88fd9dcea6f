//! Camera and clip configuration (`[[cameras]]`, `[clips]`).

use crate::config::secret::SecretSource;
use crate::config::KeyPath;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// One RTSP camera (`[[cameras]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CameraConfig {
    /// Camera id, `[a-z0-9-]{1,64}`; named by linkage `clip` actions, in
    /// events (`source.device`) and in clip ids.
    pub id: String,
    /// Human-readable name (`Main gate, entrance lane`).
    #[serde(default)]
    pub name: Option<String>,
    /// Zone the camera watches; `camera.video_loss` events carry it.
    #[serde(default)]
    pub zone: Option<String>,
    /// RTSP URL of the stream, `rtsp://host[:port]/path`, without
    /// credentials (give them in `username` and `password`).
    pub url: String,
    /// RTSP user name (digest or basic authentication).
    #[serde(default)]
    pub username: Option<String>,
    /// RTSP password: `{ file = "…" }` or `{ env = "…" }`, never inline.
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// RTP transport: `tcp` (interleaved in the RTSP connection; default)
    /// or `udp`.
    #[serde(default)]
    pub transport: CameraTransport,
    /// No frame for this long, in seconds: `camera.video_loss`. Default 10.
    #[serde(
        rename = "video_loss_s",
        with = "crate::config::duration",
        default = "default_video_loss"
    )]
    pub video_loss: Duration,
    /// Seconds of video kept before a trigger (pre-alarm). Default 10.
    #[serde(
        rename = "pre_s",
        with = "crate::config::duration",
        default = "default_pre"
    )]
    pub pre: Duration,
    /// Seconds recorded after a trigger. Default 20.
    #[serde(
        rename = "post_s",
        with = "crate::config::duration",
        default = "default_post"
    )]
    pub post: Duration,
    /// Cap on the pre-alarm buffer's encoded video, in bytes (oldest
    /// frames go first). Default 8 MiB (10 s at ~6 Mbit/s).
    #[serde(default = "default_pre_buffer_bytes")]
    pub pre_buffer_bytes: u64,
    /// Connect and watch the camera. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// RTP transport of a camera.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraTransport {
    #[default]
    Tcp,
    Udp,
}

/// Where clips go (`[clips]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipsConfig {
    /// Directory of the clips (`{id}.mp4`), created if missing. A relative
    /// path is relative to the directory of the configuration file.
    #[serde(default = "default_clip_path")]
    pub path: PathBuf,
    /// Most bytes all clips may take; the oldest are deleted first.
    /// Default 2 GiB.
    #[serde(default = "default_clip_max_bytes")]
    pub max_bytes: u64,
    /// Free space always left on the clips' file system: older clips are
    /// deleted, and a clip is not recorded, to keep it. Default 512 MiB.
    #[serde(default = "default_min_free")]
    pub min_free_bytes: u64,
    /// URL prefix of clips in event attachments: `{url_prefix}/{id}.mp4`.
    #[serde(default = "default_url_prefix")]
    pub url_prefix: String,
}

impl Default for ClipsConfig {
    fn default() -> Self {
        ClipsConfig {
            path: default_clip_path(),
            max_bytes: default_clip_max_bytes(),
            min_free_bytes: default_min_free(),
            url_prefix: default_url_prefix(),
        }
    }
}

fn default_video_loss() -> Duration {
    Duration::from_secs(10)
}
fn default_pre() -> Duration {
    Duration::from_secs(10)
}
fn default_post() -> Duration {
    Duration::from_secs(20)
}
fn default_pre_buffer_bytes() -> u64 {
    8 * 1024 * 1024
}
fn yes() -> bool {
    true
}
fn default_clip_path() -> PathBuf {
    PathBuf::from("/var/lib/estate-gateway/clips")
}
fn default_clip_max_bytes() -> u64 {
    2 * 1024 * 1024 * 1024
}
fn default_min_free() -> u64 {
    512 * 1024 * 1024
}
fn default_url_prefix() -> String {
    "/clips".into()
}

/// Longest `pre_s` or `post_s` accepted.
const MAX_CLIP_PART: Duration = Duration::from_secs(300);

/// Checks of `[[cameras]]` and `[clips]` (and that linkage `clip` actions
/// name a configured camera). Every finding, keyed.
pub fn validate(c: &crate::config::Config) -> Vec<(KeyPath, String)> {
    let mut out = Vec::new();
    let root = KeyPath::root();
    let mut ids = std::collections::HashMap::new();
    for (i, cam) in c.cameras.iter().enumerate() {
        let k = root.key("cameras").index(i);
        if !crate::config::is_valid_id(&cam.id) {
            out.push((
                k.key("id"),
                format!("{:?} must be 1–64 characters of a-z, 0-9 and '-'", cam.id),
            ));
        } else if let Some(prev) = ids.insert(cam.id.as_str(), i) {
            out.push((
                k.key("id"),
                format!("duplicate camera id {:?} (also cameras[{prev}])", cam.id),
            ));
        }
        if let Some(z) = &cam.zone {
            if !crate::config::is_valid_id(z) {
                out.push((
                    k.key("zone"),
                    format!("{z:?} must be 1–64 characters of a-z, 0-9 and '-'"),
                ));
            }
        }
        match url::Url::parse(&cam.url) {
            Err(e) => out.push((
                k.key("url"),
                format!("not a URL ({e}): {}", super::redact::redact_url(&cam.url)),
            )),
            Ok(u) => {
                if !matches!(u.scheme(), "rtsp" | "rtsps") {
                    out.push((k.key("url"), "must start with rtsp://".into()));
                }
                if !u.username().is_empty() || u.password().is_some() {
                    out.push((
                        k.key("url"),
                        "must not hold credentials: give `username` and `password`".into(),
                    ));
                }
                if u.host_str().is_none_or(str::is_empty) {
                    out.push((k.key("url"), "needs a host".into()));
                }
            }
        }
        if cam.password.is_some() && cam.username.is_none() {
            out.push((k.key("username"), "a password needs a `username`".into()));
        }
        if let Some(p) = &cam.password {
            if p.file.is_some() == p.env.is_some() {
                out.push((
                    k.key("password"),
                    "set exactly one of `file` or `env`".into(),
                ));
            }
        }
        if cam.video_loss < Duration::from_secs(1) {
            out.push((k.key("video_loss_s"), "must be at least 1".into()));
        }
        if cam.pre > MAX_CLIP_PART {
            out.push((k.key("pre_s"), "must be at most 300".into()));
        }
        if cam.post.is_zero() || cam.post > MAX_CLIP_PART {
            out.push((k.key("post_s"), "must be 1–300".into()));
        }
        if cam.pre_buffer_bytes < 64 * 1024 {
            out.push((k.key("pre_buffer_bytes"), "must be at least 65536".into()));
        }
    }
    let cl = root.key("clips");
    if c.clips.max_bytes < 16 * 1024 * 1024 {
        out.push((
            cl.key("max_bytes"),
            "must be at least 16777216 (16 MiB)".into(),
        ));
    }
    if c.clips.path.as_os_str().is_empty() {
        out.push((cl.key("path"), "must not be empty".into()));
    }
    if !c.clips.url_prefix.starts_with('/') && !c.clips.url_prefix.contains("://") {
        out.push((
            cl.key("url_prefix"),
            "must be a path (`/clips`) or an absolute URL".into(),
        ));
    }
    for (ai, a) in c.alarms.iter().enumerate() {
        for (i, cam) in a.cameras.iter().enumerate() {
            if !c.cameras.iter().any(|x| &x.id == cam) {
                out.push((
                    root.key("alarms").index(ai).key("cameras").index(i),
                    format!("no camera {cam:?} in [[cameras]]"),
                ));
            }
        }
    }
    // Without any camera, `clip` actions stay recorded as failed (a site
    // whose cameras are not installed yet); with cameras, a name must match.
    let linkage = if c.cameras.is_empty() {
        &[][..]
    } else {
        &c.linkage[..]
    };
    for (ri, r) in linkage.iter().enumerate() {
        for (ai, a) in r.actions.iter().enumerate() {
            if a.kind != crate::linkage::ActionKind::Clip {
                continue;
            }
            if let Some(cam) = a.camera.as_deref() {
                if !c.cameras.iter().any(|x| x.id == cam) {
                    out.push((
                        root.key("linkage")
                            .index(ri)
                            .key("actions")
                            .index(ai)
                            .key("camera"),
                        format!("no camera {cam:?} in [[cameras]]"),
                    ));
                }
            }
        }
    }
    out
}
