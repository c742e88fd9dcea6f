//! Camera health, shared with the rest of the gateway (heartbeat, metrics,
//! later the web page). Each camera task writes its own entry.

use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a camera's task last measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HealthSnapshot {
    /// Camera id.
    pub id: String,
    /// True while frames arrive (no video loss).
    pub online: bool,
    /// Frames per second over the last measuring window.
    pub fps: f64,
    /// Encoded video bit rate over the last window, bits per second.
    pub bitrate_bps: f64,
    /// Pixel width and height of the stream, once known.
    pub width: u32,
    pub height: u32,
    /// `h264` or `h265`, once known.
    pub codec: Option<String>,
    /// RFC 6381 codec string (`avc1.64001f`), once known.
    pub codec_detail: Option<String>,
    /// Age of the last frame, in seconds (`None`: none yet).
    pub last_frame_age_s: Option<f64>,
    /// Sessions started after the first one (reconnects).
    pub reconnects: u64,
    /// The last session error, redacted.
    pub last_error: Option<String>,
    /// Bytes held in the pre-alarm buffer.
    pub pre_buffer_bytes: u64,
}

/// One camera's live health.
#[derive(Debug)]
pub struct CameraHealth {
    inner: Mutex<(HealthSnapshot, Option<Instant>)>,
}

impl CameraHealth {
    fn new(id: &str) -> CameraHealth {
        CameraHealth {
            inner: Mutex::new((
                HealthSnapshot {
                    id: id.to_string(),
                    ..HealthSnapshot::default()
                },
                None,
            )),
        }
    }

    /// Change the entry (the camera's task only).
    pub fn update(&self, f: impl FnOnce(&mut HealthSnapshot)) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g.0);
    }

    /// A frame arrived at `now`.
    pub fn frame_at(&self, now: Instant) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.1 = Some(now);
    }

    /// The current values.
    pub fn snapshot(&self) -> HealthSnapshot {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = g.0.clone();
        s.last_frame_age_s = g.1.map(|t| t.elapsed().as_secs_f64());
        s
    }
}

/// Every camera's health, in configuration order.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    cameras: Mutex<Vec<Arc<CameraHealth>>>,
}

impl HealthRegistry {
    /// The entry of camera `id` (created on first use).
    pub fn camera(&self, id: &str) -> Arc<CameraHealth> {
        let mut v = self.cameras.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = v.iter().find(|h| h.snapshot().id == id) {
            return h.clone();
        }
        let h = Arc::new(CameraHealth::new(id));
        v.push(h.clone());
        h
    }

    /// Forget the cameras `keep` refuses (removed by a reload: their
    /// metrics go with them).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut v = self.cameras.lock().unwrap_or_else(|p| p.into_inner());
        v.retain(|h| keep(&h.snapshot().id));
    }

    /// Every camera's current values.
    pub fn snapshot(&self) -> Vec<HealthSnapshot> {
        let v = self.cameras.lock().unwrap_or_else(|p| p.into_inner());
        v.iter().map(|h| h.snapshot()).collect()
    }
}

/// Frame rate and bit rate over fixed windows (pure).
#[derive(Debug)]
pub struct RateMeter {
    window: Duration,
    start: Option<Instant>,
    frames: u64,
    bytes: u64,
}

impl RateMeter {
    pub fn new(window: Duration) -> RateMeter {
        RateMeter {
            window,
            start: None,
            frames: 0,
            bytes: 0,
        }
    }

    /// Count a frame of `bytes` at `now`; at the end of a window, the
    /// window's `(fps, bits per second)`.
    pub fn frame(&mut self, now: Instant, bytes: usize) -> Option<(f64, f64)> {
        // The frame that opens a window is not inside it.
        let Some(start) = self.start else {
            self.start = Some(now);
            return None;
        };
        self.frames += 1;
        self.bytes += bytes as u64;
        let el = now.saturating_duration_since(start);
        if el < self.window {
            return None;
        }
        let s = el.as_secs_f64();
        let r = (self.frames as f64 / s, self.bytes as f64 * 8.0 / s);
        self.start = Some(now);
        self.frames = 0;
        self.bytes = 0;
        Some(r)
    }

    /// Forget the window (a new session).
    pub fn reset(&mut self) {
        self.start = None;
        self.frames = 0;
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_fps_and_bitrate() {
        let mut m = RateMeter::new(Duration::from_secs(2));
        let t0 = Instant::now();
        let mut last = None;
        for i in 0..=50u64 {
            // 25 fps, 20 kB frames = 4 Mbit/s
            if let Some(r) = m.frame(t0 + Duration::from_millis(i * 40), 20_000) {
                last = Some(r);
            }
        }
        let (fps, bps) = last.expect("a window closed");
        assert!((fps - 25.0).abs() < 0.01, "{fps}");
        assert!((bps - 4_000_000.0).abs() < 0.01 * 4_000_000.0, "{bps}");
    }

    #[test]
    fn registry_keeps_one_entry_per_camera() {
        let r = HealthRegistry::default();
        r.camera("a").update(|s| s.online = true);
        r.camera("b");
        assert!(r.camera("a").snapshot().online);
        assert_eq!(r.snapshot().len(), 2);
    }
}
