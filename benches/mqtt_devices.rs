//! MQTT field devices, two figures:
//!
//! 1. **Message → alarm at the platform**: a device (a rumqttc client on its
//!    own thread) publishes a fence zone's alarm bit on the site broker
//!    (mosquitto); the whole gateway (`Gateway::start`: driver, alarm
//!    engine, journal with fsync, uplink) runs on one single-threaded
//!    runtime as in production; a subscriber on the central broker (another
//!    mosquitto) notes when `alarm.raised` / `alarm.cleared` arrives.
//!    p50/p99 over `ROUNDS` raises and as many clears (default 300 each).
//! 2. **Ingest rate**: the MQTT device driver alone on a single-threaded
//!    runtime, fed by publishers on other threads through mosquitto
//!    (`MESSAGES`, default 200000, QoS 0, a JSON state message with two
//!    points each from 50 devices); messages turned into bus readings per
//!    second. Also the router alone (payload mapping, no I/O).
//!
//! Run with `cargo bench --bench mqtt_devices` (or `scripts/bench mqtt`);
//! `JOURNAL_FSYNC=false` shows the share of the journal's fsync.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/mosquitto.rs"]
mod mosquitto;

use estate_gateway::config::load_str;
use estate_gateway::drivers::write::Writers;
use estate_gateway::point::BusMessage;
use mosquitto::Mosquitto;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const DEVICES: usize = 50;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn config(central: u16, site: u16, journal: &std::path::Path) -> String {
    let mut s = format!(
        r#"
[site]
id = "bench"
gateway = "gw"
[log]
level = "warn"
[journal]
path = "{journal}"
fsync = {fsync}
[uplink]
host = "127.0.0.1"
port = {central}
[telemetry]
enabled = false
[site_broker]
host = "127.0.0.1"
port = {site}
"#,
        journal = journal.display(),
        fsync = std::env::var("JOURNAL_FSYNC")
            .map(|v| v != "false")
            .unwrap_or(true),
    );
    for d in 0..DEVICES {
        s += &format!(
            r#"
[[devices]]
id = "fence-{d}"
category = "perimeter"
[devices.mqtt]
topic_prefix = "fence/{d}"
silence_timeout_s = 600
[[devices.points]]
id = "zone-1-alarm"
[devices.points.mqtt]
topic = "state"
path = "/zones/0/alarm"
[[devices.points]]
id = "voltage"
type = "u16"
scale = 0.1
[devices.points.mqtt]
topic = "state"
path = "voltage"
[[alarms]]
point = "fence-{d}/zone-1-alarm"
equals = true
priority = 2
latching = false
message = "Fence {d} zone 1"
"#
        );
    }
    s
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// A client on its own thread and runtime.
fn client_thread(
    port: u16,
    id: &str,
    subscribe: Option<&str>,
) -> (
    AsyncClient,
    std::sync::mpsc::Receiver<(Instant, String, Vec<u8>)>,
) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(1000);
    let (client, mut el) = AsyncClient::new(o, 10_000);
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sub = subscribe.map(str::to_string);
    let c2 = client.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut ready = Some(ready_tx);
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        if let Some(f) = &sub {
                            c2.subscribe(f.clone(), QoS::AtLeastOnce).await.unwrap();
                        } else if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = tx.send((Instant::now(), p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("bench client connected");
    (client, rx)
}

fn main() {
    let Some(central) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(site) = Mosquitto::start_or_skip() else {
        return;
    };
    latency(&central, &site);
    ingest(&site);
    router_alone();
}

fn latency(central: &Mosquitto, site: &Mosquitto) {
    let rounds = env("ROUNDS", 300) as usize;
    let dir = tempfile::tempdir().unwrap();
    let text = config(central.port(), site.port(), &dir.path().join("journal"));
    let cfg = load_str(&text, std::path::Path::new("bench.toml")).unwrap();
    let (_sub, events) = client_thread(
        central.port(),
        "bench-platform",
        Some("estate/v1/bench/gw/events"),
    );
    let (device, _) = client_thread(site.port(), "bench-device", None);
    // The gateway: one single-threaded runtime, as `estate-gateway run`.
    let stop = CancellationToken::new();
    let stop2 = stop.clone();
    let gw_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let gw = estate_gateway::app::Gateway::start(cfg).await.unwrap();
            stop2.cancelled().await;
            gw.stop();
            gw.wait().await;
        });
    });
    let wait_kind = |kind: &str, timeout: Duration| -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, _, payload) = events.recv_timeout(left).ok()?;
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
            if v["kind"] == kind {
                return Some(at);
            }
        }
    };
    wait_kind("gateway.started", Duration::from_secs(20)).expect("gateway.started");
    std::thread::sleep(Duration::from_millis(500));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut lat = Vec::with_capacity(rounds * 2);
    let mut lost = 0;
    for i in 0..rounds * 2 {
        let alarm = i % 2 == 0;
        let payload = format!(r#"{{"voltage": 82, "zones": [{{"alarm": {alarm}}}]}}"#);
        let sent = Instant::now();
        rt.block_on(device.publish("fence/7/state", QoS::AtLeastOnce, false, payload))
            .unwrap();
        let kind = if alarm {
            "alarm.raised"
        } else {
            "alarm.cleared"
        };
        match wait_kind(kind, Duration::from_secs(5)) {
            Some(at) => lat.push((at - sent).as_secs_f64() * 1000.0),
            None => lost += 1,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{}",
        serde_json::json!({
            "bench": "mqtt_message_to_platform_alarm",
            "journal_fsync": std::env::var("JOURNAL_FSYNC").map(|v| v != "false").unwrap_or(true),
            "samples": lat.len(),
            "lost": lost,
            "p50_ms": (pct(&lat, 0.5) * 1000.0).round() / 1000.0,
            "p99_ms": (pct(&lat, 0.99) * 1000.0).round() / 1000.0,
            "max_ms": (pct(&lat, 1.0) * 1000.0).round() / 1000.0,
        })
    );
    stop.cancel();
    let _ = gw_thread.join();
}

fn ingest(site: &Mosquitto) {
    let messages = env("MESSAGES", 200_000);
    let dir = tempfile::tempdir().unwrap();
    let text = config(1, site.port(), &dir.path().join("journal"));
    let cfg = Arc::new(load_str(&text, std::path::Path::new("bench.toml")).unwrap());
    let (bus_tx, mut bus_rx) = tokio::sync::mpsc::channel::<BusMessage>(1024);
    let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // The driver and a bus consumer on one single-threaded runtime.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let stop = CancellationToken::new();
            let mut writers = Writers::new();
            let _tasks =
                estate_gateway::drivers::mqtt::spawn(&cfg, bus_tx, stop.clone(), &mut writers)
                    .await
                    .unwrap();
            let _ = subscribed_tx.send(());
            let mut got = 0u64;
            let mut first: Option<Instant> = None;
            while let Some(m) = bus_rx.recv().await {
                if let BusMessage::Readings { readings, .. } = m {
                    debug_assert_eq!(readings.len(), 2);
                    first.get_or_insert_with(Instant::now);
                    got += 1;
                    if got == messages {
                        break;
                    }
                }
            }
            let _ = done_tx.send((first, Instant::now(), got));
            stop.cancel();
        });
    });
    subscribed_rx.recv().unwrap();
    // Let the driver connect and subscribe.
    std::thread::sleep(Duration::from_millis(1000));
    let publishers = 2;
    let per = messages / publishers;
    let mut threads = Vec::new();
    for p in 0..publishers {
        let port = site.port();
        threads.push(std::thread::spawn(move || {
            let (client, _) = client_thread(port, &format!("bench-pub-{p}"), None);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                for i in 0..per {
                    let d = (i as usize * publishers as usize + p as usize) % DEVICES;
                    let payload = format!(
                        r#"{{"voltage": {}, "zones": [{{"alarm": false}}]}}"#,
                        800 + i % 50
                    );
                    client
                        .publish(format!("fence/{d}/state"), QoS::AtMostOnce, false, payload)
                        .await
                        .unwrap();
                }
            });
            // Keep the connection until the broker has passed everything on.
            std::thread::sleep(Duration::from_secs(3));
        }));
    }
    let result = done_rx.recv_timeout(Duration::from_secs(120));
    for t in threads {
        let _ = t.join();
    }
    match result {
        Ok((Some(first), last, got)) => {
            let secs = (last - first).as_secs_f64();
            println!(
                "{}",
                serde_json::json!({
                    "bench": "mqtt_ingest_driver_one_core",
                    "messages": got,
                    "readings_per_message": 2,
                    "seconds": (secs * 1000.0).round() / 1000.0,
                    "msg_per_s": (got as f64 / secs).round(),
                })
            );
        }
        other => println!(
            "{}",
            serde_json::json!({"bench": "mqtt_ingest_driver_one_core", "error": format!("incomplete: {other:?}")})
        ),
    }
}

fn router_alone() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(1, 2, &dir.path().join("journal"));
    let cfg = load_str(&text, std::path::Path::new("bench.toml")).unwrap();
    let mut r = estate_gateway::drivers::mqtt::router::Router::build(&cfg, Instant::now()).unwrap();
    let topics: Vec<String> = (0..DEVICES).map(|d| format!("fence/{d}/state")).collect();
    let payloads: Vec<Vec<u8>> = (0..50)
        .map(|i| {
            format!(
                r#"{{"voltage": {}, "zones": [{{"alarm": false}}]}}"#,
                800 + i
            )
            .into_bytes()
        })
        .collect();
    let n = 1_000_000usize;
    let ts = estate_gateway::event::Timestamp::now();
    let start = Instant::now();
    let mut readings = 0usize;
    for i in 0..n {
        let out = r.on_publish(&topics[i % DEVICES], &payloads[i % 50], false, start, ts);
        readings += out.messages.len();
    }
    let secs = start.elapsed().as_secs_f64();
    assert!(readings >= n);
    println!(
        "{}",
        serde_json::json!({
            "bench": "mqtt_router_alone",
            "messages": n,
            "msg_per_s": (n as f64 / secs).round(),
        })
    );
}
