//! `/metrics`: Prometheus text exposition format 0.0.4, written by hand.
//!
//! Families (all prefixed `estate_gateway_`): build info and uptime; per
//! device poll counts, errors and latency (a summary without quantiles);
//! devices online/offline; active alarms; journal depth, bytes and uplink
//! backlog; uplink connection; push failures, dead letters and per-channel
//! queue depth and oldest age; camera counts (zero until that driver
//! reports); main-loop liveness; process RSS.

use super::WebState;
use crate::status::GatewayStatus;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

/// The exposition's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Builds one exposition: each family once, `# HELP` and `# TYPE` first.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// Metric type.
#[derive(Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Summary,
}

impl Exposition {
    /// Start family `name` (without the `estate_gateway_` prefix).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample of the current family (`name` may carry `_sum`/`_count`).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
        self
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Resident set size of this process, from `/proc/self/statm`.
pub fn process_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then(|| pages * page as u64)
}

fn get(c: &std::sync::atomic::AtomicU64) -> f64 {
    GatewayStatus::get(c) as f64
}

/// The whole exposition for the gateway's current state.
pub fn render(state: &WebState) -> String {
    let s = &*state.status;
    let mut e = Exposition::default();
    e.family(
        "estate_gateway_build_info",
        Kind::Gauge,
        "Version of the running gateway (value is always 1).",
    )
    .sample(
        "estate_gateway_build_info",
        &[("version", s.version), ("boot_id", &s.boot_id)],
        1.0,
    );
    e.single(
        "estate_gateway_uptime_seconds",
        Kind::Gauge,
        "Seconds since the gateway started.",
        s.started.elapsed().as_secs_f64(),
    );

    let devices = s.polls.snapshot();
    e.family(
        "estate_gateway_device_polls_total",
        Kind::Counter,
        "Polls of a field device (each reads all its points once).",
    );
    for (id, c) in &devices {
        e.sample(
            "estate_gateway_device_polls_total",
            &[("device", id)],
            get(&c.polls),
        );
    }
    e.family(
        "estate_gateway_device_poll_errors_total",
        Kind::Counter,
        "Failed polls of a field device (timeout, link down, exception, bad reply).",
    );
    for (id, c) in &devices {
        e.sample(
            "estate_gateway_device_poll_errors_total",
            &[("device", id)],
            get(&c.errors),
        );
    }
    e.family(
        "estate_gateway_device_poll_duration_seconds",
        Kind::Summary,
        "Duration of successful polls of a field device.",
    );
    for (id, c) in &devices {
        let ok = c
            .polls
            .load(Ordering::Relaxed)
            .saturating_sub(c.errors.load(Ordering::Relaxed));
        e.sample(
            "estate_gateway_device_poll_duration_seconds_sum",
            &[("device", id)],
            get(&c.latency_us_sum) / 1e6,
        )
        .sample(
            "estate_gateway_device_poll_duration_seconds_count",
            &[("device", id)],
            ok as f64,
        );
    }
    e.family(
        "estate_gateway_device_last_poll_duration_seconds",
        Kind::Gauge,
        "Duration of a field device's last successful poll.",
    );
    for (id, c) in &devices {
        e.sample(
            "estate_gateway_device_last_poll_duration_seconds",
            &[("device", id)],
            get(&c.last_latency_us) / 1e6,
        );
    }
    e.single(
        "estate_gateway_devices_online",
        Kind::Gauge,
        "Enabled field devices answering their polls.",
        get(&s.devices_online),
    );
    e.single(
        "estate_gateway_devices_offline",
        Kind::Gauge,
        "Enabled field devices reported offline.",
        get(&s.devices_offline),
    );
    e.single(
        "estate_gateway_alarms_active",
        Kind::Gauge,
        "Alarms active or unacknowledged.",
        get(&s.alarms_active),
    );

    let j = state.journal.stats();
    let acked = state.journal.acked_seq(state.uplink_sink);
    e.single(
        "estate_gateway_journal_events",
        Kind::Gauge,
        "Events held in the journal (not yet acknowledged by every sink).",
        j.events as f64,
    );
    e.single(
        "estate_gateway_journal_telemetry",
        Kind::Gauge,
        "Telemetry messages held in the journal.",
        j.telemetry as f64,
    );
    e.single(
        "estate_gateway_journal_bytes_on_disk",
        Kind::Gauge,
        "Size of the journal's files.",
        j.bytes_on_disk as f64,
    );
    e.single(
        "estate_gateway_journal_live_bytes",
        Kind::Gauge,
        "Live journal data counted against [journal] max_bytes.",
        j.live_bytes as f64,
    );
    e.single(
        "estate_gateway_journal_last_seq",
        Kind::Counter,
        "Seq of the last durable event.",
        j.last_seq as f64,
    );
    e.single(
        "estate_gateway_journal_pressure",
        Kind::Gauge,
        "1 while events alone exceed max_bytes (telemetry refused).",
        if j.pressure { 1.0 } else { 0.0 },
    );
    e.single(
        "estate_gateway_journal_store_failing",
        Kind::Gauge,
        "1 while the journal's store cannot be written (filesystem full): events are durable in the write-ahead log alone.",
        if j.store_failing { 1.0 } else { 0.0 },
    );
    e.single(
        "estate_gateway_journal_wal_full",
        Kind::Gauge,
        "1 while the write-ahead log is full and the store cannot be written: new events are not durable.",
        if j.wal_full { 1.0 } else { 0.0 },
    );
    e.single(
        "estate_gateway_journal_checkpoints_total",
        Kind::Counter,
        "Journal checkpoints (store flushed and synced) since start.",
        j.checkpoints as f64,
    );
    e.single(
        "estate_gateway_journal_telemetry_evicted_total",
        Kind::Counter,
        "Telemetry messages evicted for the journal's size cap.",
        j.telemetry_evicted as f64,
    );
    e.single(
        "estate_gateway_uplink_backlog_events",
        Kind::Gauge,
        "Events recorded but not yet acknowledged by the central platform.",
        j.last_seq.saturating_sub(acked) as f64,
    );
    e.single(
        "estate_gateway_uplink_connected",
        Kind::Gauge,
        "1 while connected to the central platform's broker.",
        if s.uplink_connected.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        },
    );
    e.family(
        "estate_gateway_uplink_publish_duration_seconds",
        Kind::Summary,
        "Event publishes to the platform, from hand-over to the broker's PUBACK.",
    )
    .sample(
        "estate_gateway_uplink_publish_duration_seconds_sum",
        &[],
        get(&s.uplink_publish.sum_us) / 1e6,
    )
    .sample(
        "estate_gateway_uplink_publish_duration_seconds_count",
        &[],
        get(&s.uplink_publish.count),
    );
    e.single(
        "estate_gateway_push_failures_total",
        Kind::Counter,
        "Staff push attempts that failed (each is retried or given up).",
        get(&s.pushes_failed),
    );
    e.single(
        "estate_gateway_push_dead_lettered_total",
        Kind::Counter,
        "Staff pushes given up (push.dead_lettered).",
        get(&s.pushes_dead),
    );
    let queues = s.pushes.snapshot();
    e.family(
        "estate_gateway_push_pending",
        Kind::Gauge,
        "Staff pushes waiting for delivery, per channel.",
    );
    for (ch, q) in &queues {
        e.sample(
            "estate_gateway_push_pending",
            &[("channel", ch)],
            q.pending as f64,
        );
    }
    e.family(
        "estate_gateway_push_oldest_age_seconds",
        Kind::Gauge,
        "Age of the oldest staff push waiting, per channel (0 when none waits).",
    );
    let now = crate::event::Timestamp::now().unix_ms();
    for (ch, q) in &queues {
        let age = q
            .oldest_ms
            .map_or(0.0, |t| (now.saturating_sub(t)).max(0) as f64 / 1000.0);
        e.sample(
            "estate_gateway_push_oldest_age_seconds",
            &[("channel", ch)],
            age,
        );
    }
    e.single(
        "estate_gateway_cameras_online",
        Kind::Gauge,
        "Cameras streaming.",
        get(&s.cameras_online),
    );
    let cams = s.cameras.snapshot();
    if !cams.is_empty() {
        type Field = fn(&crate::cameras::HealthSnapshot) -> f64;
        let families: [(&str, Kind, &str, Field); 6] = [
            (
                "estate_gateway_camera_online",
                Kind::Gauge,
                "1 while the camera's frames arrive.",
                |h| f64::from(u8::from(h.online)),
            ),
            (
                "estate_gateway_camera_fps",
                Kind::Gauge,
                "Frames per second received.",
                |h| h.fps,
            ),
            (
                "estate_gateway_camera_bitrate_bps",
                Kind::Gauge,
                "Encoded video received, bits per second.",
                |h| h.bitrate_bps,
            ),
            (
                "estate_gateway_camera_reconnects_total",
                Kind::Counter,
                "Session attempts after the first.",
                |h| h.reconnects as f64,
            ),
            (
                "estate_gateway_camera_pre_buffer_bytes",
                Kind::Gauge,
                "Encoded video held for pre-alarm clips.",
                |h| h.pre_buffer_bytes as f64,
            ),
            (
                "estate_gateway_camera_last_frame_age_seconds",
                Kind::Gauge,
                "Age of the last frame (-1: none yet).",
                |h| h.last_frame_age_s.unwrap_or(-1.0),
            ),
        ];
        for (name, kind, help, f) in families {
            e.family(name, kind, help);
            for h in &cams {
                e.sample(name, &[("camera", &h.id)], f(h));
            }
        }
    }

    let stale = s.liveness.check();
    e.family(
        "estate_gateway_loop_alive",
        Kind::Gauge,
        "1 while a main loop beats on time, 0 when late or stopped.",
    );
    for name in s.liveness.names() {
        let alive = !stale.iter().any(|x| x.name == name);
        e.sample(
            "estate_gateway_loop_alive",
            &[("loop", &name)],
            if alive { 1.0 } else { 0.0 },
        );
    }
    if let Some(rss) = process_rss_bytes() {
        e.single(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
            rss as f64,
        );
    }
    e.finish()
}

/// The shortest `[web] metrics_token` accepted.
pub const MIN_TOKEN_LEN: usize = 16;

pub(super) async fn handler(
    State(state): State<WebState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    if let Some(token) = &state.metrics_token {
        if !bearer_matches(&headers, token) {
            return (
                axum::http::StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"estate-gateway metrics\"",
                )],
                "a bearer token is required ([web] metrics_token)\n",
            )
                .into_response();
        }
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&state)).into_response()
}

/// The request carries `Authorization: Bearer <token>` (compared in
/// constant time).
fn bearer_matches(headers: &axum::http::HeaderMap, token: &crate::config::secret::Secret) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
    else {
        return false;
    };
    super::auth::ct_eq(given.as_bytes(), token.expose().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_escaping() {
        let mut e = Exposition::default();
        e.family("x_total", Kind::Counter, "Things\\counted\nhere.")
            .sample("x_total", &[("device", "a\"b\\c\nd")], 3.0)
            .sample("x_total", &[], 0.25);
        assert_eq!(
            e.finish(),
            "# HELP x_total Things\\\\counted\\nhere.\n# TYPE x_total counter\n\
             x_total{device=\"a\\\"b\\\\c\\nd\"} 3\nx_total 0.25\n"
        );
    }

    #[test]
    fn the_bearer_token_must_match() {
        use axum::http::HeaderValue;
        let token = crate::config::secret::Secret::new("0123456789abcdef0123");
        let with = |v: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(bearer_matches(&with("Bearer 0123456789abcdef0123"), &token));
        assert!(bearer_matches(&with("bearer 0123456789abcdef0123"), &token));
        assert!(!bearer_matches(&with("Bearer 0123456789abcdef012"), &token));
        assert!(!bearer_matches(
            &with("Bearer 0123456789abcdef01234"),
            &token
        ));
        assert!(!bearer_matches(&with("Basic 0123456789abcdef0123"), &token));
        assert!(!bearer_matches(&with("Bearer"), &token));
        assert!(!bearer_matches(&axum::http::HeaderMap::new(), &token));
    }

    #[test]
    fn values() {
        assert_eq!(format_value(1e20), "100000000000000000000");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(-2.0), "-2");
    }

    #[tokio::test]
    async fn render_reports_devices_journal_and_loops() {
        use crate::event::{EventKind, NewEvent, Priority};
        use std::sync::Arc;
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::journal::JournalConfig {
            path: dir.path().join("journal"),
            ..Default::default()
        };
        let journal = crate::journal::Journal::open(&cfg, "gw", &["uplink"]).unwrap();
        journal
            .record(vec![NewEvent::system(
                EventKind::GatewayStarted,
                Priority::INFO,
                serde_json::json!({}),
            )])
            .await
            .unwrap();
        let status = Arc::new(GatewayStatus::new(1));
        let plc: Arc<str> = "plc-\"1\"".into();
        let c = status.polls.device(&plc);
        c.record(true, Duration::from_millis(20));
        c.record(true, Duration::from_millis(30));
        c.record(false, Duration::from_secs(1));
        status.uplink_publish.record(Duration::from_millis(4));
        let _alarm = status.liveness.register("alarm", Duration::from_secs(2));
        status.pushes.set("guards", 0, None);
        let hour_ago = crate::event::Timestamp::now().unix_ms() - 3_600_000;
        status.pushes.set("manager", 3, Some(hour_ago));
        status
            .pushes_failed
            .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
        status.cameras.camera("cam-gate").update(|h| {
            h.online = true;
            h.fps = 25.0;
        });
        let text = render(&WebState {
            status: status.clone(),
            journal,
            uplink_sink: "uplink",
            page: None,
            state_dir: std::path::PathBuf::new(),
            metrics_token: None,
        });
        for line in [
            "estate_gateway_device_polls_total{device=\"plc-\\\"1\\\"\"} 3",
            "estate_gateway_device_poll_errors_total{device=\"plc-\\\"1\\\"\"} 1",
            "estate_gateway_camera_online{camera=\"cam-gate\"} 1",
            "estate_gateway_camera_fps{camera=\"cam-gate\"} 25",
            "estate_gateway_device_poll_duration_seconds_sum{device=\"plc-\\\"1\\\"\"} 0.05",
            "estate_gateway_device_poll_duration_seconds_count{device=\"plc-\\\"1\\\"\"} 2",
            "estate_gateway_device_last_poll_duration_seconds{device=\"plc-\\\"1\\\"\"} 0.03",
            "estate_gateway_journal_last_seq 1",
            "estate_gateway_journal_events 1",
            "estate_gateway_uplink_backlog_events 1",
            "estate_gateway_uplink_publish_duration_seconds_count 1",
            "estate_gateway_uplink_publish_duration_seconds_sum 0.004",
            "estate_gateway_loop_alive{loop=\"alarm\"} 1",
            "estate_gateway_push_pending{channel=\"guards\"} 0",
            "estate_gateway_push_pending{channel=\"manager\"} 3",
            "estate_gateway_push_oldest_age_seconds{channel=\"guards\"} 0",
            "estate_gateway_push_failures_total 7",
            "estate_gateway_push_dead_lettered_total 0",
            "# TYPE estate_gateway_device_poll_duration_seconds summary",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
        let age: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("estate_gateway_push_oldest_age_seconds{channel=\"manager\"} ")
            })
            .unwrap()
            .parse()
            .unwrap();
        assert!((3600.0..3700.0).contains(&age), "{age}");
        // Every family is declared once, before its samples.
        let mut declared = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(declared.insert(name.to_string()), "{name} declared twice");
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                let family = ["_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                    .unwrap_or(name);
                assert!(declared.contains(family), "{name} before its # TYPE");
            }
        }
    }

    #[test]
    fn rss_is_read() {
        assert!(process_rss_bytes().unwrap() > 1024 * 1024);
    }
}
