//! Encoded frames, the pre-alarm buffer and the video-loss detector
//! (pure: no I/O, time passed in).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Stream parameters a clip's sample entry is built from.
#[derive(Debug, PartialEq)]
pub struct StreamParams {
    /// The MP4 sample entry (`avc1`/`hvc1` box), ready to write.
    pub sample_entry: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// `h264` or `h265`.
    pub codec: &'static str,
    /// RFC 6381 codec string.
    pub rfc6381: String,
}

/// One encoded video frame (access unit), NAL units 4-byte length-prefixed
/// as MP4 stores them. Shared by the pre-alarm buffer and the clips
/// being recorded: never copied.
#[derive(Debug)]
pub struct Frame {
    /// Presentation time in 90 kHz units, increasing within a session.
    pub pts: i64,
    /// An IDR frame: a clip may start here.
    pub keyframe: bool,
    pub data: Vec<u8>,
    /// Parameters in force for this frame.
    pub params: Arc<StreamParams>,
    /// Which session the frame came from (timestamps restart per session).
    pub session: u64,
}

/// The video clock: 90 kHz.
pub const CLOCK_HZ: i64 = 90_000;

/// Duration in 90 kHz units.
pub fn ticks(d: Duration) -> i64 {
    (d.as_secs_f64() * CLOCK_HZ as f64).round() as i64
}

/// The last `pre` of video, starting at a keyframe, at most `max_bytes`
/// (`pre_s`, `pre_buffer_bytes`). It keeps the latest keyframe at or
/// before `newest - pre`, so a clip starts no later than `pre` before
/// its trigger.
#[derive(Debug)]
pub struct PreBuffer {
    pre: i64,
    max_bytes: u64,
    frames: VecDeque<Arc<Frame>>,
    bytes: u64,
}

impl PreBuffer {
    pub fn new(pre: Duration, max_bytes: u64) -> PreBuffer {
        PreBuffer {
            pre: ticks(pre),
            max_bytes,
            frames: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Add the newest frame and drop what is no longer needed.
    pub fn push(&mut self, f: Arc<Frame>) {
        // A new session's timestamps do not continue the old ones.
        if self
            .frames
            .back()
            .is_some_and(|b| b.session != f.session || f.pts < b.pts)
        {
            self.clear();
        }
        if self.frames.is_empty() && !f.keyframe {
            return;
        }
        self.bytes += f.data.len() as u64;
        self.frames.push_back(f);
        self.trim();
    }

    fn trim(&mut self) {
        let Some(newest) = self.frames.back().map(|f| f.pts) else {
            return;
        };
        let cutoff = newest - self.pre;
        // Drop whole GOPs while the next keyframe is still at or before the
        // cutoff, or while over the byte cap.
        loop {
            let next_key = self
                .frames
                .iter()
                .skip(1)
                .position(|f| f.keyframe)
                .map(|i| i + 1);
            let Some(k) = next_key else {
                break;
            };
            let too_old = self.frames[k].pts <= cutoff;
            let too_big = self.bytes > self.max_bytes;
            if !too_old && !too_big {
                break;
            }
            for _ in 0..k {
                if let Some(f) = self.frames.pop_front() {
                    self.bytes -= f.data.len() as u64;
                }
            }
        }
        // One GOP alone over the cap: nothing usable fits.
        if self.bytes > self.max_bytes {
            self.clear();
        }
    }

    pub fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }

    /// The buffered frames, oldest (a keyframe) first.
    pub fn frames(&self) -> impl Iterator<Item = &Arc<Frame>> {
        self.frames.iter()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Span from the oldest to the newest frame, in 90 kHz units.
    pub fn span(&self) -> i64 {
        match (self.frames.front(), self.frames.back()) {
            (Some(a), Some(b)) => b.pts - a.pts,
            _ => 0,
        }
    }
}

/// A change of a camera's video state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoChange {
    /// No frame for `video_loss_s`.
    Lost,
    /// Frames again after a loss.
    Restored,
}

/// Video loss: no frame for `limit` (counted from the start for a camera
/// that never sent one).
#[derive(Debug)]
pub struct VideoLoss {
    limit: Duration,
    last: Instant,
    lost: bool,
    ever: bool,
}

impl VideoLoss {
    pub fn new(limit: Duration, start: Instant) -> VideoLoss {
        VideoLoss {
            limit,
            last: start,
            lost: false,
            ever: false,
        }
    }

    /// A frame arrived.
    pub fn frame(&mut self, now: Instant) -> Option<VideoChange> {
        self.last = now;
        self.ever = true;
        std::mem::take(&mut self.lost).then_some(VideoChange::Restored)
    }

    /// Time passed.
    pub fn check(&mut self, now: Instant) -> Option<VideoChange> {
        if !self.lost && now.saturating_duration_since(self.last) >= self.limit {
            self.lost = true;
            return Some(VideoChange::Lost);
        }
        None
    }

    /// True while frames arrive.
    pub fn online(&self) -> bool {
        self.ever && !self.lost
    }

    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// When [`check`](Self::check) next has something to say.
    pub fn deadline(&self) -> Instant {
        self.last + self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params() -> Arc<StreamParams> {
        Arc::new(StreamParams {
            sample_entry: vec![],
            width: 1920,
            height: 1080,
            codec: "h264",
            rfc6381: "avc1.640028".into(),
        })
    }

    fn frame(pts: i64, keyframe: bool, len: usize, p: &Arc<StreamParams>) -> Arc<Frame> {
        Arc::new(Frame {
            pts,
            keyframe,
            data: vec![0; len],
            params: p.clone(),
            session: 1,
        })
    }

    #[test]
    fn keeps_pre_seconds_from_a_keyframe() {
        let p = params();
        let mut b = PreBuffer::new(Duration::from_secs(2), u64::MAX);
        // 10 fps, keyframe every second, 5 s.
        for i in 0..50i64 {
            b.push(frame(i * 9000, i % 10 == 0, 100, &p));
        }
        let first = b.frames().next().unwrap();
        assert!(first.keyframe);
        // newest = 4.9 s; cutoff 2.9 s; latest keyframe ≤ 2.9 s is 2.0 s.
        assert_eq!(first.pts, 2 * 90_000);
        assert!(b.span() >= ticks(Duration::from_secs(2)));
    }

    #[test]
    fn starts_at_a_keyframe_and_respects_the_cap() {
        let p = params();
        let mut b = PreBuffer::new(Duration::from_secs(10), 2_500);
        b.push(frame(0, false, 100, &p));
        assert!(b.is_empty(), "must start at a keyframe");
        for i in 0..40i64 {
            b.push(frame(i * 9000, i % 10 == 0, 100, &p));
        }
        assert!(b.bytes() <= 2_500);
        assert!(b.frames().next().unwrap().keyframe);
    }

    #[test]
    fn a_new_session_restarts_the_buffer() {
        let p = params();
        let mut b = PreBuffer::new(Duration::from_secs(10), u64::MAX);
        b.push(frame(1_000_000, true, 10, &p));
        b.push(frame(5, true, 10, &p));
        assert_eq!(b.len(), 1);
    }

    proptest! {
        #[test]
        fn invariants(frames in proptest::collection::vec((1i64..20_000, any::<bool>(), 1usize..5000), 1..300),
                      pre_s in 0u64..5, cap in 1000u64..100_000) {
            let p = params();
            let mut b = PreBuffer::new(Duration::from_secs(pre_s), cap);
            let mut pts = 0;
            for (dt, key, len) in frames {
                pts += dt;
                b.push(frame(pts, key, len, &p));
                prop_assert!(b.bytes() <= cap);
                prop_assert_eq!(b.bytes(), b.frames().map(|f| f.data.len() as u64).sum::<u64>());
                if let Some(f) = b.frames().next() { prop_assert!(f.keyframe); }
            }
        }
    }

    #[test]
    fn video_loss_and_restore() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut v = VideoLoss::new(Duration::from_secs(10), t0);
        assert_eq!(v.check(t0 + 9 * s), None);
        assert_eq!(
            v.check(t0 + 10 * s),
            Some(VideoChange::Lost),
            "never came up"
        );
        assert_eq!(v.check(t0 + 11 * s), None, "once");
        assert_eq!(v.frame(t0 + 12 * s), Some(VideoChange::Restored));
        assert!(v.online());
        assert_eq!(v.frame(t0 + 13 * s), None);
        assert_eq!(v.check(t0 + 22 * s), None);
        assert_eq!(v.check(t0 + 23 * s), Some(VideoChange::Lost));
        assert!(!v.online());
    }
}
