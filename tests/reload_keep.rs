//! End-to-end: a reload keeps unchanged devices' connections.
//!
//! Modbus (the real binary between a pymodbus simulator with one Modbus TCP
//! port per device and a mosquitto broker):
//!
//! Proof of "the same connection": the gateway's own TCP sockets (its
//! `/proc/<pid>/fd` socket inodes matched in `/proc/<pid>/net/tcp`) to a
//! device's port keep their local port across a reload, and no second
//! connection appears.
//!
//! 1. A rule of device B changes: A and B are kept (same connections); A's
//!    and B's alarms work, B's with the new rule.
//! 2. B's poll interval changes: B restarts (a new connection), A is kept.
//! 3. A device is added before A and B in the file (their point indices
//!    move): both kept, and their readings still reach the right points.
//! 4. A's port changes: A restarts on the new port, its old connection
//!    closes.
//!
//! Throughout: the uplink session is never dropped (no new CONNECT at the
//! broker, no second `status: online`).
//!
//! MQTT (the binary, a mosquitto site broker, a paho-mqtt device): a rule
//! added for a kept device's point sees the value it sent before the
//! reload, and the gateway's site broker connection is the same.
//!
//! Cameras (in process, a GStreamer RTSP server with two mounts): the
//! unchanged camera keeps its RTSP session and its pre-alarm buffer, the
//! changed one reconnects.

mod common;
#[path = "common/modbus_sim.rs"]
mod modbus_sim;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use common::gateway::{signal, GatewayProc};
use common::mqtt_sub::MqttSub;
use common::{free_port, wait_for};
use modbus_sim::ModbusSim;
use mosquitto::Mosquitto;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

const ROOT: &str = "estate/v1/keep/gw/";
const CLIENT_ID: &str = "gw-keep-test";

/// One Modbus TCP device `id` on `port` whose coil `coil` is point `zone`.
fn device(id: &str, port: u16, coil: u16, poll_s: f64) -> String {
    format!(
        r#"
[[devices]]
id = "{id}"
zone = "villa-{coil}"
category = "intrusion"
poll_interval_s = {poll_s}
timeout_s = 0.5
offline_after = 3
[devices.modbus]
host = "127.0.0.1"
port = {port}
unit = 1
backoff_max_s = 0.5

[[devices.points]]
id = "zone"
register = "coil"
address = {coil}
"#
    )
}

fn config(broker: u16, devices: &[String], b_message: &str) -> String {
    let mut s = format!(
        r#"
[site]
id = "keep"
gateway = "gw"

[log]
level = "info,estate_gateway=debug"
format = "text"

[journal]
path = "@DIR@/journal"

[uplink]
host = "127.0.0.1"
port = {broker}
client_id = "{CLIENT_ID}"
keepalive_s = 2
heartbeat_s = 1
reconnect_min_s = 0.2
reconnect_max_s = 1

[telemetry]
enabled = false

[web]
enabled = false

[[alarms]]
point = "a/zone"
equals = true
priority = 2
message = "A zone"
latching = false

[[alarms]]
point = "b/zone"
equals = true
priority = 2
message = "{b_message}"
latching = false
"#
    );
    for d in devices {
        s += d;
    }
    s
}

/// Local ports of the gateway's established TCP connections to `port`.
///
/// The kernel builds `/proc/PID/net/tcp` page by page, so a read that races
/// a socket being opened or closed (another device's driver restarting) can
/// list a connection twice or miss one. Each socket is counted once (by
/// inode), and the table is read until two reads agree.
fn connections_to(pid: u32, port: u16) -> Vec<u16> {
    let mut last = connections_to_once(pid, port);
    for _ in 0..20 {
        let now = connections_to_once(pid, port);
        if now == last {
            return now;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(20));
    }
    last
}

/// One read of the connection table; see [`connections_to`].
fn connections_to_once(pid: u32, port: u16) -> Vec<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().to_string();
                    l.strip_prefix("socket:[")
                        .and_then(|s| s.strip_suffix(']'))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let port_of = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let by_inode: std::collections::BTreeMap<&str, u16> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local, remote, state (01 = established), …, inode
            let (local, remote, state, inode) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(9)?);
            (*state == "01" && port_of(remote) == Some(port) && inodes.contains(*inode))
                .then(|| port_of(local).map(|p| (*inode, p)))
                .flatten()
        })
        .collect();
    let mut ports: Vec<u16> = by_inode.into_values().collect();
    ports.sort();
    ports
}

/// The one connection to `port`, once there is exactly one.
fn one_connection(pid: u32, port: u16, what: &str) -> u16 {
    wait_for(Duration::from_secs(15), what, || {
        let c = connections_to(pid, port);
        (c.len() == 1).then(|| c[0])
    })
}

fn gateway_connections(broker: &Mosquitto) -> usize {
    broker
        .log()
        .lines()
        .filter(|l| l.contains("New client connected") && l.contains(CLIENT_ID))
        .count()
}

fn online_statuses(sub: &MqttSub) -> usize {
    sub.json_on("/status")
        .iter()
        .filter(|s| s["state"] == "online")
        .count()
}

fn count(sub: &MqttSub, kind: &str, key: &str) -> usize {
    sub.json_on("/events")
        .iter()
        .filter(|e| e["kind"] == kind && e["alarm"]["key"] == key)
        .count()
}

fn wait_event(sub: &MqttSub, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    sub.wait_json("/events", Duration::from_secs(20), what, pred)
}

/// Wait for the `n`th alarm event `kind` of `key`.
fn wait_alarm(sub: &MqttSub, kind: &str, key: &str, n: usize) -> Value {
    wait_for(
        Duration::from_secs(20),
        &format!("{kind} #{n} of {key}"),
        || {
            sub.json_on("/events")
                .into_iter()
                .filter(|e| e["kind"] == kind && e["alarm"]["key"] == key)
                .nth(n - 1)
        },
    )
}

/// Reload and return the `config.changed` detail (the `n`th reload).
fn reload(gw: &GatewayProc, sub: &MqttSub, text: &str, n: usize) -> Value {
    gw.rewrite_config(text);
    signal(gw.pid().unwrap(), "HUP");
    let e = wait_for(
        Duration::from_secs(20),
        &format!("config.changed #{n}"),
        || {
            sub.json_on("/events")
                .into_iter()
                .filter(|e| e["kind"] == "config.changed")
                .nth(n - 1)
        },
    );
    assert_eq!(e["detail"]["ok"], true, "{e}");
    eprintln!("reload #{n}: {}", e["detail"]);
    e["detail"].clone()
}

#[test]
fn reload_keeps_unchanged_devices_connections() {
    let Some(broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let (pa, pb, pa2, pc) = (free_port(), free_port(), free_port(), free_port());
    let Some(sim) = ModbusSim::start_tcp_ports(&[pa, pb, pa2, pc], &[1]) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let coil = |addr: u16, on: bool| rt.block_on(sim.write_coil(1, addr, on));

    let sub = MqttSub::start(broker.port(), &format!("{ROOT}#"));
    sub.wait_subscribed(Duration::from_secs(10));
    let a = device("a", pa, 1, 0.1);
    let b = device("b", pb, 2, 0.1);
    let mut gw = GatewayProc::start_with(
        "keep",
        &config(broker.port(), &[a.clone(), b.clone()], "B zone"),
    );
    let pid = gw.pid().expect("gateway pid");
    wait_event(&sub, "gateway.started", |e| e["kind"] == "gateway.started");
    wait_for(Duration::from_secs(10), "online", || {
        (online_statuses(&sub) >= 1).then_some(())
    });
    let la = one_connection(pid, pa, "A connected");
    let lb = one_connection(pid, pb, "B connected");
    let connections = gateway_connections(&broker);
    assert_eq!(connections, 1, "broker log:\n{}", broker.log());

    // 1. Only B's rule changes: both drivers kept, same connections.
    let d = reload(
        &gw,
        &sub,
        &config(broker.port(), &[a.clone(), b.clone()], "B zone (renamed)"),
        1,
    );
    assert_eq!(d["restarted"], json!(["field"]), "{d}");
    assert_eq!(d["by_device"]["kept"], json!(["a", "b"]), "{d}");
    assert_eq!(d["drivers"]["restarted"], json!([]), "{d}");
    assert_eq!(connections_to(pid, pa), vec![la], "A's connection changed");
    assert_eq!(connections_to(pid, pb), vec![lb], "B's connection changed");
    coil(1, true);
    wait_alarm(&sub, "alarm.raised", "a/zone", 1);
    coil(2, true);
    let raised_b = wait_alarm(&sub, "alarm.raised", "b/zone", 1);
    assert_eq!(raised_b["alarm"]["message"], "B zone (renamed)");

    // 2. B's poll interval changes: B restarts, A is kept.
    let b2 = device("b", pb, 2, 0.2);
    let d = reload(
        &gw,
        &sub,
        &config(broker.port(), &[a.clone(), b2.clone()], "B zone (renamed)"),
        2,
    );
    assert_eq!(d["by_device"]["kept"], json!(["a"]), "{d}");
    assert_eq!(d["by_device"]["restarted"], json!(["b"]), "{d}");
    assert_eq!(
        d["drivers"]["restarted"],
        json!([format!("modbus tcp:127.0.0.1:{pb}")]),
        "{d}"
    );
    let lb2 = wait_for(Duration::from_secs(15), "B reconnected", || {
        let c = connections_to(pid, pb);
        (c.len() == 1 && c[0] != lb).then(|| c[0])
    });
    assert_ne!(lb2, lb);
    assert_eq!(connections_to(pid, pa), vec![la], "A's connection changed");
    // A's alarm, active since before the reload, clears once; B's too
    // (its restarted driver reads on).
    coil(1, false);
    wait_alarm(&sub, "alarm.cleared", "a/zone", 1);
    coil(2, false);
    wait_alarm(&sub, "alarm.cleared", "b/zone", 1);

    // 3. A device added before A and B: their points move in the point
    //    table; both drivers are kept and their readings land on the
    //    right points.
    let c = device("c", pc, 3, 0.1);
    let d = reload(
        &gw,
        &sub,
        &config(
            broker.port(),
            &[c.clone(), a.clone(), b2.clone()],
            "B zone (renamed)",
        ),
        3,
    );
    assert_eq!(d["by_device"]["kept"], json!(["a", "b"]), "{d}");
    assert_eq!(d["by_device"]["started"], json!(["c"]), "{d}");
    assert_eq!(connections_to(pid, pa), vec![la], "A's connection changed");
    assert_eq!(connections_to(pid, pb), vec![lb2], "B's connection changed");
    one_connection(pid, pc, "C connected");
    coil(1, true);
    let raised_a = wait_alarm(&sub, "alarm.raised", "a/zone", 2);
    assert_eq!(raised_a["alarm"]["message"], "A zone", "{raised_a}");
    coil(2, true);
    wait_alarm(&sub, "alarm.raised", "b/zone", 2);
    coil(2, false);
    wait_alarm(&sub, "alarm.cleared", "b/zone", 2);

    // 4. A's address changes: A restarts on the new port.
    let a2 = device("a", pa2, 1, 0.1);
    let d = reload(
        &gw,
        &sub,
        &config(
            broker.port(),
            &[c.clone(), a2, b2.clone()],
            "B zone (renamed)",
        ),
        4,
    );
    assert_eq!(d["by_device"]["restarted"], json!(["a"]), "{d}");
    assert_eq!(d["by_device"]["kept"], json!(["b", "c"]), "{d}");
    assert_eq!(
        d["drivers"]["stopped"],
        json!([format!("modbus tcp:127.0.0.1:{pa}")]),
        "{d}"
    );
    assert_eq!(
        d["drivers"]["started"],
        json!([format!("modbus tcp:127.0.0.1:{pa2}")]),
        "{d}"
    );
    one_connection(pid, pa2, "A on its new port");
    assert!(
        connections_to(pid, pa).is_empty(),
        "A's old connection still open"
    );
    assert_eq!(connections_to(pid, pb), vec![lb2], "B's connection changed");
    // A's alarm, active across the restart, clears through the new driver.
    coil(1, false);
    wait_alarm(&sub, "alarm.cleared", "a/zone", 2);

    // No reading was lost or evaluated twice: every alarm once per change.
    assert_eq!(count(&sub, "alarm.raised", "a/zone"), 2);
    assert_eq!(count(&sub, "alarm.cleared", "a/zone"), 2);
    assert_eq!(count(&sub, "alarm.raised", "b/zone"), 2);
    // Kept devices never went offline.
    let offline: Vec<Value> = sub
        .json_on("/events")
        .into_iter()
        .filter(|e| e["kind"] == "device.offline")
        .collect();
    assert!(offline.is_empty(), "{offline:?}");
    // The uplink session was never dropped.
    assert_eq!(
        gateway_connections(&broker),
        connections,
        "broker log:\n{}",
        broker.log()
    );
    assert_eq!(online_statuses(&sub), 1, "the uplink reconnected");

    let exit = gw.sigterm(Duration::from_secs(15));
    assert!(exit.success(), "clean shutdown exited with {exit}");
}

/// Gateway config with one MQTT panic button on a site broker at `site`;
/// `rules` are extra `[[alarms]]` blocks.
fn mqtt_config(central: u16, site: u16, rules: &str) -> String {
    format!(
        r#"
[site]
id = "keep"
gateway = "gw"

[log]
level = "info,estate_gateway=debug"
format = "text"

[journal]
path = "@DIR@/journal"

[uplink]
host = "127.0.0.1"
port = {central}
client_id = "{CLIENT_ID}"
keepalive_s = 2
heartbeat_s = 1
reconnect_min_s = 0.2
reconnect_max_s = 1

[telemetry]
enabled = false

[web]
enabled = false

[site_broker]
host = "127.0.0.1"
port = {site}
client_id = "gw-keep-devices"
reconnect_min_s = 0.2
reconnect_max_s = 1

[[devices]]
id = "panic"
category = "intrusion"
zone = "villa-7"
[devices.mqtt]
silence_timeout_s = 600

[[devices.points]]
id = "pressed"
[devices.points.mqtt]
filter = "villas/7/panic"

[[alarms]]
point = "panic/pressed"
id = "first"
equals = true
priority = 2
message = "Panic (first rule)"
latching = false
{rules}"#
    )
}

#[path = "common/mqtt_device.rs"]
mod mqtt_device;

#[test]
fn reload_keeps_the_site_broker_connection_and_the_devices_last_values() {
    let Some(central) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(site) = Mosquitto::start_or_skip() else {
        return;
    };
    let sub = MqttSub::start(central.port(), &format!("{ROOT}#"));
    sub.wait_subscribed(Duration::from_secs(10));
    let gw = GatewayProc::start_with("keep-mqtt", &mqtt_config(central.port(), site.port(), ""));
    wait_event(&sub, "gateway.started", |e| e["kind"] == "gateway.started");
    wait_for(Duration::from_secs(15), "driver subscribed", || {
        gw.log()
            .contains("subscribed to device topics")
            .then_some(())
    });
    let Some(mut button) =
        mqtt_device::MqttDevice::start_or_skip(site.port(), "panic-7", Default::default())
    else {
        return;
    };
    button.publish("villas/7/panic", "ON");
    wait_alarm(&sub, "alarm.raised", "panic/pressed/first", 1);
    let site_connections = || {
        site.log()
            .lines()
            .filter(|l| l.contains("New client connected") && l.contains("gw-keep-devices"))
            .count()
    };
    let before = site_connections();
    assert_eq!(before, 1, "site broker log:\n{}", site.log());

    // A second rule on the same point: the button sends nothing more, yet
    // the new rule sees the value the kept driver delivered before.
    let second = r#"
[[alarms]]
point = "panic/pressed"
id = "second"
equals = true
priority = 1
message = "Panic (added by reload)"
latching = false
"#;
    let d = reload(
        &gw,
        &sub,
        &mqtt_config(central.port(), site.port(), second),
        1,
    );
    assert_eq!(d["drivers"]["kept"], json!(["mqtt site broker"]), "{d}");
    assert_eq!(d["by_device"]["kept"], json!(["panic"]), "{d}");
    let raised = wait_alarm(&sub, "alarm.raised", "panic/pressed/second", 1);
    assert_eq!(raised["priority"], 1, "{raised}");
    // The first rule's alarm was carried over, not raised again.
    assert_eq!(count(&sub, "alarm.raised", "panic/pressed/first"), 1);
    // And the kept connection goes on delivering.
    button.publish("villas/7/panic", "OFF");
    wait_alarm(&sub, "alarm.cleared", "panic/pressed/first", 1);
    wait_alarm(&sub, "alarm.cleared", "panic/pressed/second", 1);
    assert_eq!(
        site_connections(),
        before,
        "site broker log:\n{}",
        site.log()
    );
    assert_eq!(
        gateway_connections(&central),
        1,
        "broker log:\n{}",
        central.log()
    );
}

#[path = "common/rtsp_server.rs"]
mod rtsp_server;

/// Poll `f` every 100 ms (without blocking the runtime) until it returns
/// `Some`, or panic after `timeout`.
async fn poll_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_an_unchanged_cameras_session_and_pre_alarm_buffer() {
    use estate_gateway::app::Gateway;
    let Some(server) = rtsp_server::RtspServer::start(rtsp_server::RtspOptions {
        mounts: 2,
        ..Default::default()
    }) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = |post_b: u32| {
        format!(
            r#"
[site]
id = "keep"
gateway = "gw"

[journal]
path = "{dir}/journal"
fsync = false

[uplink]
host = "127.0.0.1"
port = 9
reconnect_min_s = 1
reconnect_max_s = 5

[web]
enabled = false

[telemetry]
enabled = false

[clips]
path = "{dir}/clips"
min_free_bytes = 0

[[cameras]]
id = "cam-a"
url = "{a}"
transport = "tcp"
video_loss_s = 3
pre_s = 2
post_s = 3

[[cameras]]
id = "cam-b"
url = "{b}"
transport = "tcp"
video_loss_s = 3
pre_s = 2
post_s = {post_b}
"#,
            dir = dir.path().display(),
            a = server.url(0),
            b = server.url(1),
        )
    };
    let load = |t: String| {
        estate_gateway::config::load_str(&t, std::path::Path::new("gw.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let gw = Gateway::start(load(text(3))).await.unwrap();
    let buffered = |id: &str| {
        gw.status
            .cameras
            .snapshot()
            .into_iter()
            .find(|h| h.id == id)
            .filter(|h| h.online && h.pre_buffer_bytes > 0)
            .map(|h| h.pre_buffer_bytes)
    };
    poll_until(Duration::from_secs(20), "both cameras buffering", || {
        buffered("cam-a").and(buffered("cam-b"))
    })
    .await;
    let me = std::process::id();
    let before = poll_until(Duration::from_secs(10), "two RTSP sessions", || {
        let c = connections_to(me, server.port());
        (c.len() == 2).then_some(c)
    })
    .await;

    let r = gw.reload(load(text(4))).await.expect("reload");
    assert_eq!(r.drivers.kept, vec!["camera cam-a"], "{r:?}");
    assert_eq!(r.drivers.restarted, vec!["camera cam-b"], "{r:?}");
    // cam-a's pre-alarm buffer is still filled, right after the reload.
    assert!(buffered("cam-a").is_some(), "cam-a's buffer was emptied");
    // One session kept (cam-a's), one new (cam-b's).
    let after = poll_until(Duration::from_secs(20), "cam-b's new session", || {
        let c = connections_to(me, server.port());
        (c.len() == 2 && c != before).then_some(c)
    })
    .await;
    let common: Vec<&u16> = after.iter().filter(|p| before.contains(p)).collect();
    assert_eq!(common.len(), 1, "before {before:?}, after {after:?}");
    poll_until(Duration::from_secs(20), "cam-b buffering again", || {
        buffered("cam-b")
    })
    .await;

    gw.stop();
    gw.wait().await;
}
