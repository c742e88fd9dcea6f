//! End-to-end: RTSP cameras against a real RTSP server (GStreamer's
//! gst-rtsp-server serving an H.264 test pattern), a mosquitto broker
//! standing in for the central platform, and a pymodbus fence controller
//! whose alarm asks for a clip.
//!
//! A missing peer skips a scenario loudly, or fails it under
//! `REQUIRE_PEERS=1` (CI).

mod common;
#[path = "common/modbus_sim.rs"]
mod modbus_sim;
#[path = "common/mosquitto.rs"]
mod mosquitto;
#[path = "common/rtsp_server.rs"]
mod rtsp_server;

use estate_gateway::app::Gateway;
use estate_gateway::cameras::HealthSnapshot;
use modbus_sim::ModbusSim;
use mosquitto::{Mosquitto, Subscriber};
use rtsp_server::{RtspOptions, RtspServer};
use serde_json::Value;
use std::time::{Duration, Instant};

const ROOT: &str = "estate/v1/e2e/gw/";

/// Gateway config: journal and clips in `dir`, telemetry off.
fn config(dir: &std::path::Path, broker: u16, body: &str) -> estate_gateway::config::LoadedConfig {
    let text = format!(
        r#"
[site]
id = "e2e"
gateway = "gw"

[log]
level = "info,estate_gateway=debug"
format = "text"

[journal]
path = "{dir}/journal"

[uplink]
host = "127.0.0.1"
port = {broker}
heartbeat_s = 1
reconnect_min_s = 0.2
reconnect_max_s = 1

[telemetry]
enabled = false

[web]
enabled = false

[clips]
path = "{dir}/clips"
max_bytes = 104857600
min_free_bytes = 0
{body}"#,
        dir = dir.display()
    );
    estate_gateway::config::load_str(&text, std::path::Path::new("gw.toml"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn camera(id: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[[cameras]]
id = "{id}"
name = "Test camera {id}"
zone = "perimeter-north"
url = "{url}"
video_loss_s = 3
pre_s = 2
post_s = 3
{extra}
"#
    )
}

fn health(gw: &Gateway, id: &str) -> HealthSnapshot {
    gw.status
        .cameras
        .snapshot()
        .into_iter()
        .find(|h| h.id == id)
        .expect("camera health entry")
}

/// Wait until `f` holds for the camera's health.
async fn wait_health(
    gw: &Gateway,
    id: &str,
    timeout: Duration,
    what: &str,
    f: impl Fn(&HealthSnapshot) -> bool,
) -> HealthSnapshot {
    let deadline = Instant::now() + timeout;
    loop {
        let h = health(gw, id);
        if f(&h) {
            return h;
        }
        if Instant::now() > deadline {
            panic!("camera {id}: {what} not within {timeout:?}: {h:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ingest, video loss when the camera dies, restore when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_video_loss_and_restore() {
    let Some(broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(mut cam) = RtspServer::start(RtspOptions::default()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), broker.port(), &camera("cam-a", &cam.url(0), ""));
    let mut sub =
        Subscriber::connect(broker.port(), "platform", &[format!("{ROOT}events")], false).await;
    let gw = Gateway::start(cfg).await.unwrap();

    // Ingest: the right resolution and about the right frame rate.
    let h = wait_health(&gw, "cam-a", Duration::from_secs(15), "fps measured", |h| {
        h.online && h.fps > 0.0
    })
    .await;
    assert_eq!((h.width, h.height), (640, 480), "{h:?}");
    assert_eq!(h.codec.as_deref(), Some("h264"));
    assert!((12.0..=18.0).contains(&h.fps), "about 15 fps: {h:?}");
    assert!(h.bitrate_bps > 10_000.0, "{h:?}");
    assert!(h.last_frame_age_s.unwrap() < 1.0, "{h:?}");
    assert!(h.pre_buffer_bytes > 0, "{h:?}");
    assert_eq!(
        gw.status
            .cameras_online
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // The camera dies: video loss within video_loss_s + 2 s.
    cam.kill();
    let killed = Instant::now();
    let ev = sub
        .next_event("camera.video_loss", Duration::from_secs(5))
        .await;
    assert!(
        killed.elapsed() <= Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(ev["source"]["device"], "cam-a");
    assert_eq!(ev["source"]["zone"], "perimeter-north");
    assert_eq!(ev["category"], "video");
    assert_eq!(ev["alarm"]["state"], "active_unacked");
    assert!(!health(&gw, "cam-a").online);
    assert_eq!(
        gw.status
            .cameras_online
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // Shelving is refused: the gateway's own alarm is acknowledged.
    let shelve = br#"{"action":"shelve_alarm","target":"cam-a/video","value":600,"operator":"control-room/li"}"#;
    sub.publish(&format!("{ROOT}cmd/s1"), shelve).await;
    let ev = sub
        .next_event("command.executed", Duration::from_secs(5))
        .await;
    assert_eq!(ev["detail"]["ok"], false, "{ev}");

    // Back: restored, and ingest resumes without restarting the gateway.
    // Nobody acknowledged the loss: it returned, still unacknowledged.
    cam.restart();
    let ev = sub
        .next_event("camera.video_restored", Duration::from_secs(20))
        .await;
    assert_eq!(ev["source"]["device"], "cam-a");
    assert_eq!(ev["alarm"]["state"], "returned_unacked");
    let h = wait_health(&gw, "cam-a", Duration::from_secs(10), "frames again", |h| {
        h.online && h.last_frame_age_s.is_some_and(|a| a < 1.0)
    })
    .await;
    assert!(h.reconnects >= 1, "{h:?}");

    // The platform acknowledges it: recorded like a point alarm's.
    let ack = br#"{"action":"ack_alarm","target":"cam-a/video","operator":"control-room/li","comment":"cable reseated"}"#;
    sub.publish(&format!("{ROOT}cmd/a1"), ack).await;
    let ev = sub
        .next_event("alarm.acknowledged", Duration::from_secs(5))
        .await;
    assert_eq!(ev["alarm"]["key"], "cam-a/video");
    assert_eq!(ev["alarm"]["state"], "normal");
    assert_eq!(ev["alarm"]["operator"], "control-room/li");
    assert_eq!(ev["category"], "video");
    gw.stop();
    gw.wait().await;
}

/// Wrong credentials: one clear error, a slow retry, no crash loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_one_clear_error() {
    let Some(broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(cam) = RtspServer::start(RtspOptions {
        credentials: Some(("gateway".into(), "right-pw".into())),
        ..RtspOptions::default()
    }) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("cam.pw");
    std::fs::write(&pw, "wrong-pw\n").unwrap();
    let extra = format!(
        "username = \"gateway\"\npassword = {{ file = \"{}\" }}\n",
        pw.display()
    );
    let cfg = config(
        dir.path(),
        broker.port(),
        &camera("cam-b", &cam.url(0), &extra),
    );
    let mut sub =
        Subscriber::connect(broker.port(), "platform", &[format!("{ROOT}events")], false).await;
    let gw = Gateway::start(cfg).await.unwrap();
    let ev = sub
        .next_event("camera.video_loss", Duration::from_secs(6))
        .await;
    let err = ev["detail"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("401") && err.contains("username and password"),
        "{ev}"
    );
    assert!(!ev.to_string().contains("wrong-pw"), "{ev}");
    // Ten seconds later: still one session attempt (auth backoff is 30 s+).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let h = health(&gw, "cam-b");
    assert_eq!(h.reconnects, 0, "{h:?}");
    assert!(
        h.last_error.as_deref().unwrap_or("").contains("401"),
        "{h:?}"
    );
    assert!(!h.online);

    // The right password works (proves the server and the camera config).
    std::fs::write(&pw, "right-pw\n").unwrap();
    gw.stop();
    gw.wait().await;
    let cfg = config(
        dir.path(),
        broker.port(),
        &camera("cam-b", &cam.url(0), &extra),
    );
    let gw = Gateway::start(cfg).await.unwrap();
    wait_health(&gw, "cam-b", Duration::from_secs(15), "online", |h| {
        h.online
    })
    .await;
    gw.stop();
    gw.wait().await;
}

/// A fence alarm on a pymodbus device triggers a linkage clip: the alarm
/// event carries the attachment, and the clip is pre_s + post_s of H.264.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_alarm_records_a_clip() {
    let Some(broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(cam) = RtspServer::start(RtspOptions::default()) else {
        return;
    };
    let Some(fence) = ModbusSim::start_tcp(&[1]) else {
        return;
    };
    let Some(ffprobe) = common::peer_or_skip(
        "ffprobe",
        common::which("ffprobe"),
        "apt-get install ffmpeg",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        r#"{cam}
[[devices]]
id = "fence-north"
category = "perimeter"
zone = "perimeter-north"
poll_interval_s = 0.1
timeout_s = 0.5
[devices.modbus]
host = "127.0.0.1"
port = {port}
unit = 1
backoff_max_s = 0.5
[[devices.points]]
id = "zone-1-alarm"
register = "coil"
address = 0

[[alarms]]
point = "fence-north/zone-1-alarm"
equals = true
priority = 2
message = "Perimeter breach: north wall zone 1"

[[linkage]]
id = "north-wall-clip"
key = "fence-north/*"
[[linkage.actions]]
type = "clip"
camera = "cam-north"
"#,
        cam = camera("cam-north", &cam.url(0), ""),
        port = fence.tcp_port.unwrap(),
    );
    let cfg = config(dir.path(), broker.port(), &body);
    let mut sub =
        Subscriber::connect(broker.port(), "platform", &[format!("{ROOT}events")], false).await;
    let gw = Gateway::start(cfg).await.unwrap();
    // Let the pre-alarm buffer fill (pre_s = 2, keyframe every second).
    let gw_ref = &gw;
    wait_health(
        gw_ref,
        "cam-north",
        Duration::from_secs(15),
        "online",
        |h| h.online,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    fence.write_coil(1, 0, true).await;
    let raised = sub
        .next_event("alarm.raised", Duration::from_secs(10))
        .await;
    let att = &raised["attachments"][0];
    assert_eq!(att["type"], "clip", "{raised}");
    let id = att["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("cam-north-"), "{id}");
    assert_eq!(att["url"], format!("/clips/{id}.mp4"));

    // The linkage outcome comes at once, the clip when it is complete.
    let mut ready = Value::Null;
    let mut linkage = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(15);
    while ready.is_null() || linkage.is_null() {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = sub
            .next(left)
            .await
            .unwrap_or_else(|| panic!("clip_ready {ready}, linkage {linkage}"));
        let v = m.json();
        match v["kind"].as_str() {
            Some("camera.clip_ready") => ready = v,
            Some("linkage.executed") => linkage = v,
            _ => {}
        }
    }
    assert_eq!(ready["attachments"][0]["id"], id.as_str(), "{ready}");
    let file = dir.path().join("clips").join(format!("{id}.mp4"));
    assert!(file.is_file(), "{ready}");
    let out = std::process::Command::new(ffprobe)
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration:stream=codec_name,codec_type",
            "-of",
            "json",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let dur: f64 = v["format"]["duration"].as_str().unwrap().parse().unwrap();
    assert!(
        (dur - 5.0).abs() <= 1.0,
        "duration {dur} s, want 5 ± 1: {v}"
    );
    assert_eq!(v["streams"][0]["codec_name"], "h264", "{v}");
    // The clip decodes end to end.
    let dec = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&file)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        dec.status.success() && dec.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&dec.stderr)
    );

    assert_eq!(linkage["detail"]["ok"], true, "{linkage}");
    gw.stop();
    gw.wait().await;
}

/// RTP over UDP (`transport = "udp"`) ingests too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_transport_ingests() {
    let Some(broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(cam) = RtspServer::start(RtspOptions {
        width: 320,
        height: 240,
        ..RtspOptions::default()
    }) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        broker.port(),
        &camera("cam-udp", &cam.url(0), "transport = \"udp\""),
    );
    let gw = Gateway::start(cfg).await.unwrap();
    let h = wait_health(
        &gw,
        "cam-udp",
        Duration::from_secs(15),
        "fps measured",
        |h| h.online && h.fps > 0.0,
    )
    .await;
    assert_eq!((h.width, h.height), (320, 240), "{h:?}");
    assert!((12.0..=18.0).contains(&h.fps), "{h:?}");
    gw.stop();
    gw.wait().await;
}

/// A camera whose password cannot be read is not started, and says why;
/// the gateway (alarms first) runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_camera_password_does_not_stop_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("missing.pw");
    let extra = format!(
        "username = \"gateway\"\npassword = {{ file = \"{}\" }}\n",
        pw.display()
    );
    // The check reads the password (a file without it is refused); it
    // goes missing between the check and the start.
    std::fs::write(&pw, "camera-pw\n").unwrap();
    let cfg = config(
        dir.path(),
        common::free_port(),
        &camera("cam-c", "rtsp://127.0.0.1:9/x", &extra),
    );
    std::fs::remove_file(&pw).unwrap();
    let gw = Gateway::start(cfg).await.unwrap();
    let h = health(&gw, "cam-c");
    assert!(!h.online);
    let err = h.last_error.unwrap_or_default();
    assert!(
        err.contains("cam-c: password") && err.contains("missing.pw"),
        "{err}"
    );
    gw.stop();
    gw.wait().await;
}
