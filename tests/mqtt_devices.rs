//! End-to-end: MQTT field devices. The real `estate-gateway` binary between
//! a site broker (a real mosquitto, or the gateway's embedded broker) where
//! devices simulated with paho-mqtt publish, and the central platform's
//! mosquitto with a subscriber standing in for the platform.
//!
//! A missing peer (mosquitto, paho-mqtt in .venv) skips a scenario loudly,
//! or fails it under `REQUIRE_PEERS=1`.

mod common;
#[path = "common/mosquitto.rs"]
mod mosquitto;
#[path = "common/mqtt_device.rs"]
mod mqtt_device;
#[path = "common/pki.rs"]
mod pki;

use common::gateway::GatewayProc;
use common::mqtt_sub::MqttSub;
use mosquitto::Mosquitto;
use mqtt_device::{DeviceOpts, MqttDevice};
use serde_json::Value;
use std::time::{Duration, Instant};

const ROOT: &str = "estate/v1/e2e/gw/";

/// Gateway config: uplink to `central`, `site_broker` as given, one fence
/// energizer publishing JSON state and a status/last will, and a panic
/// button publishing plain `ON`/`OFF`.
fn config(central: u16, site_broker: &str, fence_silence: &str) -> String {
    format!(
        r#"
[site]
id = "e2e"
gateway = "gw"

[log]
level = "info,estate_gateway=debug"
format = "text"

[journal]
path = "@DIR@/journal"

[uplink]
host = "127.0.0.1"
port = {central}
keepalive_s = 2
heartbeat_s = 1
reconnect_min_s = 0.2
reconnect_max_s = 1

[telemetry]
enabled = false

{site_broker}

[[devices]]
id = "fence-north"
category = "perimeter"
zone = "perimeter-north"
[devices.mqtt]
topic_prefix = "fence/north"
status_topic = "fence/north/status"
{fence_silence}

[[devices.points]]
id = "zone-1-alarm"
[devices.points.mqtt]
topic = "state"
path = "/zones/0/alarm"

[[devices.points]]
id = "voltage"
type = "u16"
scale = 0.1
unit = "kV"
[devices.points.mqtt]
topic = "state"
path = "voltage"

[[devices]]
id = "panic-villa-7"
category = "intrusion"
zone = "villa-7"
[devices.mqtt]
silence_timeout_s = 1.5

[[devices.points]]
id = "pressed"
[devices.points.mqtt]
filter = "villas/7/panic"

[[alarms]]
point = "fence-north/zone-1-alarm"
equals = true
priority = 2
message = "Fence alarm north zone 1"
latching = false

[[alarms]]
point = "fence-north/voltage"
id = "low"
low = 5.0
priority = 3
message = "Fence voltage low"
latching = false

[[alarms]]
point = "panic-villa-7/pressed"
equals = true
priority = 1
message = "Panic button villa 7"
latching = false
"#
    )
}

fn site(port: u16) -> String {
    format!("[site_broker]\nhost = \"127.0.0.1\"\nport = {port}\nreconnect_min_s = 0.2\nreconnect_max_s = 1\n")
}

fn start_gateway(name: &str, central: &Mosquitto, cfg: &str) -> (GatewayProc, MqttSub) {
    let sub = MqttSub::start(central.port(), &format!("{ROOT}#"));
    sub.wait_subscribed(Duration::from_secs(10));
    let gw = GatewayProc::start_with(name, cfg);
    sub.wait_json("/events", Duration::from_secs(20), "gateway.started", |e| {
        e["kind"] == "gateway.started"
    });
    // Devices may publish once the driver has subscribed.
    let log = gw.dir().join("gateway.log");
    common::wait_for(Duration::from_secs(15), "driver subscribed", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("subscribed to device topics")
            .then_some(())
    });
    (gw, sub)
}

fn wait_event(sub: &MqttSub, secs: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    sub.wait_json("/events", Duration::from_secs(secs), what, f)
}

fn raised(key: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["kind"] == "alarm.raised" && e["alarm"]["key"] == key
}

fn device_event(kind: &'static str, device: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["kind"] == kind && e["source"]["device"] == device
}

#[test]
fn json_payload_raises_an_alarm_forwarded_to_the_platform() {
    let Some(central) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(site_broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let cfg = config(
        central.port(),
        &site(site_broker.port()),
        "silence_timeout_s = 30",
    );
    let (mut gw, sub) = start_gateway("mqtt-json-alarm", &central, &cfg);
    let Some(mut fence) = MqttDevice::start_or_skip(
        site_broker.port(),
        "fence-north",
        DeviceOpts {
            status_topic: Some("fence/north/status"),
            ..Default::default()
        },
    ) else {
        return;
    };
    fence.publish(
        "fence/north/state",
        r#"{"voltage": 82, "zones": [{"alarm": false}]}"#,
    );
    let published = Instant::now();
    fence.publish(
        "fence/north/state",
        r#"{"voltage": 81, "zones": [{"alarm": true}]}"#,
    );
    let ev = wait_event(
        &sub,
        10,
        "fence alarm raised",
        raised("fence-north/zone-1-alarm"),
    );
    eprintln!(
        "alarm.raised {:?} after the device's message: {ev}",
        published.elapsed()
    );
    assert_eq!(ev["priority"], 2);
    assert_eq!(ev["category"], "perimeter");
    assert_eq!(ev["source"]["device"], "fence-north");
    assert_eq!(ev["source"]["point"], "zone-1-alarm");
    assert_eq!(ev["source"]["zone"], "perimeter-north");
    assert_eq!(ev["alarm"]["value"], true);
    assert_eq!(ev["alarm"]["message"], "Fence alarm north zone 1");

    // A scaled value: 42 × 0.1 = 4.2 kV is below 5.0.
    fence.publish(
        "fence/north/state",
        r#"{"voltage": 42, "zones": [{"alarm": true}]}"#,
    );
    let low = wait_event(&sub, 10, "low voltage", raised("fence-north/voltage/low"));
    assert_eq!(low["alarm"]["value"], 4.2);

    // Plain `ON` on the panic button.
    let Some(mut panic) =
        MqttDevice::start_or_skip(site_broker.port(), "panic-7", DeviceOpts::default())
    else {
        return;
    };
    panic.publish("villas/7/panic", "ON");
    let p = wait_event(&sub, 10, "panic raised", raised("panic-villa-7/pressed"));
    assert_eq!(p["priority"], 1);
    fence.publish(
        "fence/north/state",
        r#"{"voltage": 80, "zones": [{"alarm": false}]}"#,
    );
    wait_event(&sub, 10, "fence alarm cleared", |e| {
        e["kind"] == "alarm.cleared" && e["alarm"]["key"] == "fence-north/zone-1-alarm"
    });
    let exit = gw.sigterm(Duration::from_secs(15));
    assert!(exit.success(), "clean shutdown exited with {exit}");
}

#[test]
fn silence_makes_a_device_offline_and_a_message_brings_it_back() {
    let Some(central) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(site_broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let cfg = config(
        central.port(),
        &site(site_broker.port()),
        "silence_timeout_s = 30",
    );
    let (_gw, sub) = start_gateway("mqtt-silence", &central, &cfg);
    let Some(mut panic) =
        MqttDevice::start_or_skip(site_broker.port(), "panic-7", DeviceOpts::default())
    else {
        return;
    };
    // Started silent: offline after 1.5 s.
    wait_event(
        &sub,
        10,
        "panic offline (silent since start)",
        device_event("device.offline", "panic-villa-7"),
    );
    let spoke = Instant::now();
    panic.publish("villas/7/panic", "OFF");
    wait_event(
        &sub,
        10,
        "panic online",
        device_event("device.online", "panic-villa-7"),
    );
    sub.clear();
    // Silent again: offline again, not before the timeout.
    let off = wait_event(
        &sub,
        10,
        "panic offline again",
        device_event("device.offline", "panic-villa-7"),
    );
    let after = spoke.elapsed();
    assert!(
        after >= Duration::from_millis(1400),
        "offline after only {after:?}: {off}"
    );
    eprintln!("device.offline {after:?} after the last message: {off}");
}

#[test]
fn last_will_makes_a_device_offline() {
    let Some(central) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(site_broker) = Mosquitto::start_or_skip() else {
        return;
    };
    // No silence timeout on the fence: only its status topic tells.
    let cfg = config(central.port(), &site(site_broker.port()), "");
    let (_gw, sub) = start_gateway("mqtt-lwt", &central, &cfg);
    let Some(mut fence) = MqttDevice::start_or_skip(
        site_broker.port(),
        "fence-north",
        DeviceOpts {
            status_topic: Some("fence/north/status"),
            ..Default::default()
        },
    ) else {
        return;
    };
    fence.publish(
        "fence/north/state",
        r#"{"voltage": 82, "zones": [{"alarm": false}]}"#,
    );
    let killed = Instant::now();
    fence.kill();
    let off = wait_event(
        &sub,
        20,
        "fence-north offline by last will",
        device_event("device.offline", "fence-north"),
    );
    eprintln!(
        "device.offline {:?} after the device died: {off}",
        killed.elapsed()
    );
    // A new session of the device announces itself online again.
    let Some(_fence) = MqttDevice::start_or_skip(
        site_broker.port(),
        "fence-north",
        DeviceOpts {
            status_topic: Some("fence/north/status"),
            ..Default::default()
        },
    ) else {
        return;
    };
    wait_event(
        &sub,
        15,
        "fence-north online again",
        device_event("device.online", "fence-north"),
    );
}

#[test]
fn garbage_payloads_are_logged_and_never_stop_the_driver() {
    let Some(central) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(site_broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let cfg = config(
        central.port(),
        &site(site_broker.port()),
        "silence_timeout_s = 30",
    );
    let (mut gw, sub) = start_gateway("mqtt-garbage", &central, &cfg);
    let Some(mut fence) = MqttDevice::start_or_skip(
        site_broker.port(),
        "fence-north",
        DeviceOpts {
            status_topic: Some("fence/north/status"),
            ..Default::default()
        },
    ) else {
        return;
    };
    for junk in [
        "{not json",
        "[]",
        r#"{"voltage": "high", "zones": [{"alarm": "maybe"}]}"#,
        r#"{"voltage": 1e300, "zones": {"0": 1}}"#,
        r#"{"voltage": -3, "zones": [{"alarm": 7}]}"#,
        "",
    ] {
        fence.publish("fence/north/state", junk);
    }
    fence.publish_bytes("fence/north/state", &[0xff, 0x00, 0xfe, 0x80]);
    fence.publish_bytes("villas/7/panic", &[0xc3, 0x28]);
    fence.publish("fence/north/status", "rebooting");
    // Still working: a good message raises the alarm.
    fence.publish(
        "fence/north/state",
        r#"{"voltage": 82, "zones": [{"alarm": true}]}"#,
    );
    wait_event(
        &sub,
        10,
        "alarm after garbage",
        raised("fence-north/zone-1-alarm"),
    );
    assert!(gw.is_running(), "gateway died on garbage");
    let log = std::fs::read_to_string(gw.dir().join("gateway.log")).unwrap();
    assert!(
        log.contains("device payload gives no value for the point")
            && log.contains("zone-1-alarm")
            && log.contains("payload is not JSON"),
        "no clear log line for garbage:\n{log}"
    );
    assert!(
        log.contains("neither the online nor the offline value"),
        "{log}"
    );
    // Garbage is not an alarm and not a value: no other alarm was raised.
    let raised_keys: Vec<Value> = sub
        .json_on("/events")
        .into_iter()
        .filter(|e| e["kind"] == "alarm.raised")
        .map(|e| e["alarm"]["key"].clone())
        .collect();
    assert_eq!(raised_keys, vec![Value::from("fence-north/zone-1-alarm")]);
}

#[test]
fn embedded_site_broker_takes_independent_clients_and_feeds_the_driver() {
    let Some(central) = Mosquitto::start_or_skip() else {
        return;
    };
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("fence.pw");
    std::fs::write(&pw, "fence-secret\n").unwrap();
    let embedded = format!(
        "[site_broker]\nreconnect_min_s = 0.2\nreconnect_max_s = 1\n[site_broker.embedded]\nlisten = \"127.0.0.1:{port}\"\n[[site_broker.embedded.users]]\nusername = \"fence\"\npassword = {{ file = \"{}\" }}\n",
        pw.display()
    );
    let cfg = config(central.port(), &embedded, "silence_timeout_s = 30");
    let (mut gw, sub) = start_gateway("mqtt-embedded", &central, &cfg);
    assert!(
        common::wait_port(port, Duration::from_secs(5)),
        "embedded broker not listening"
    );
    // Without an account the broker refuses the client. mosquitto_pub is
    // the independent client here: missing, this part skips loudly (and
    // fails under REQUIRE_PEERS=1).
    let mosquitto_pub = common::peer_or_skip(
        "mosquitto_pub",
        common::which("mosquitto_pub"),
        "apt-get install mosquitto-clients",
    );
    if let Some(bin) = &mosquitto_pub {
        let out = std::process::Command::new(bin)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", "villas/7/panic", "-m", "ON", "-i", "intruder"])
            .output()
            .expect("running mosquitto_pub");
        assert!(!out.status.success(), "anonymous publish accepted: {out:?}");
    }
    // With the account, a device's message reaches the driver.
    let Some(mut fence) = MqttDevice::start_or_skip(
        port,
        "fence-north",
        DeviceOpts {
            status_topic: Some("fence/north/status"),
            login: Some(("fence", "fence-secret")),
            ..Default::default()
        },
    ) else {
        return;
    };
    fence.publish(
        "fence/north/state",
        r#"{"voltage": 82, "zones": [{"alarm": true}]}"#,
    );
    wait_event(
        &sub,
        10,
        "alarm through the embedded broker",
        raised("fence-north/zone-1-alarm"),
    );
    assert!(
        !sub.json_on("/events")
            .iter()
            .any(raised("panic-villa-7/pressed")),
        "an anonymous client's message was taken"
    );
    // mosquitto_pub with the account works too.
    if let Some(bin) = &mosquitto_pub {
        let out = std::process::Command::new(bin)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-u", "fence", "-P", "fence-secret", "-i", "panic-7"])
            .args(["-t", "villas/7/panic", "-m", "ON"])
            .output()
            .expect("mosquitto_pub");
        assert!(out.status.success(), "{out:?}");
        wait_event(
            &sub,
            10,
            "panic through the embedded broker",
            raised("panic-villa-7/pressed"),
        );
    }
    let exit = gw.sigterm(Duration::from_secs(15));
    assert!(exit.success(), "clean shutdown exited with {exit}");
}

/// Writes through the shared write interface publish to the device's
/// command topic at QoS 1; pulses write the opposite value after the hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_publish_to_the_command_topic() {
    use estate_gateway::point::Value;
    let Some(central) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(site_broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[[devices]]
id = "gate-east"
category = "access"
[devices.mqtt]
topic_prefix = "gates/east"
silence_timeout_s = 30
command_topic = "gates/east/set/{point}"
payload_true = "OPEN"
payload_false = "CLOSE"

[[devices.points]]
id = "release"
writable = true
[devices.points.mqtt]
topic = "release"

[[devices.points]]
id = "setpoint"
type = "u16"
scale = 0.5
writable = true
[devices.points.mqtt]
topic = "setpoint"
command_topic = "gates/east/config/{device}/{point}"

[[devices.points]]
id = "state"
[devices.points.mqtt]
topic = "state"
"#;
    let text = config(
        central.port(),
        &site(site_broker.port()),
        "silence_timeout_s = 30",
    )
    .replace("@DIR@", &dir.path().display().to_string())
        + extra;
    let cfg = estate_gateway::config::load_str(&text, std::path::Path::new("gw.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let points = cfg.points.clone();
    let sub = MqttSub::start(site_broker.port(), "gates/east/#");
    sub.wait_subscribed(Duration::from_secs(10));
    let gw = estate_gateway::app::Gateway::start(cfg)
        .await
        .expect("gateway start");
    let release = points.find("gate-east/release").unwrap();
    let setpoint = points.find("gate-east/setpoint").unwrap();
    let state = points.find("gate-east/state").unwrap();
    let t = Duration::from_secs(5);
    // The driver needs its connection first: retry while it reports offline.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match gw
            .writers()
            .write("gate-east", release, Value::Bool(true), None, t)
            .await
        {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("write not yet possible: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    let got = sub.wait_for(t, "OPEN on the command topic", |m| {
        m.topic == "gates/east/set/release"
    });
    assert_eq!(got.text(), "OPEN");
    assert_eq!(got.qos, rumqttc::QoS::AtLeastOnce);
    // Scale undone: 21.5 / 0.5 = 43, on the point's own topic template.
    gw.writers()
        .write("gate-east", setpoint, Value::Float(21.5), None, t)
        .await
        .expect("setpoint write");
    let got = sub.wait_for(t, "setpoint", |m| {
        m.topic == "gates/east/config/gate-east/setpoint"
    });
    assert_eq!(got.text(), "43");
    // Refusals: a value that does not fit, a read-only point.
    let e = gw
        .writers()
        .write("gate-east", setpoint, Value::Float(0.3), None, t)
        .await;
    assert!(
        matches!(
            e,
            Err(estate_gateway::drivers::write::WriteError::BadValue(_))
        ),
        "{e:?}"
    );
    let e = gw
        .writers()
        .write("gate-east", state, Value::Bool(true), None, t)
        .await;
    assert!(
        matches!(
            e,
            Err(estate_gateway::drivers::write::WriteError::NotWritable)
        ),
        "{e:?}"
    );
    // A pulse: OPEN now, CLOSE after the hold.
    sub.clear();
    let hold = Duration::from_millis(300);
    let started = Instant::now();
    gw.writers()
        .write("gate-east", release, Value::Bool(true), Some(hold), t)
        .await
        .expect("pulse");
    let close = sub.wait_for(t, "CLOSE after the pulse", |m| {
        m.topic == "gates/east/set/release" && m.text() == "CLOSE"
    });
    let open = sub.on("/set/release");
    assert_eq!(open.first().map(|m| m.text()), Some("OPEN".to_string()));
    // The CLOSE went out at least `hold` after the OPEN, itself sent after
    // `started`; the subscriber's receive times of the two may shrink the
    // gap seen between them (the OPEN received late), not this one.
    let held = close.at - started;
    assert!(held >= hold, "released {held:?} after the write began");
    eprintln!(
        "pulse held {:?} as received (asked {hold:?}); whole pulse {:?}",
        close.at - open[0].at,
        started.elapsed()
    );
    gw.stop();
    gw.wait().await;
}

#[test]
fn the_driver_survives_a_site_broker_restart() {
    let Some(central) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(mut site_broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let cfg = config(
        central.port(),
        &site(site_broker.port()),
        "silence_timeout_s = 30",
    );
    let (gw, sub) = start_gateway("mqtt-broker-restart", &central, &cfg);
    site_broker.stop();
    std::thread::sleep(Duration::from_millis(1500));
    site_broker.start();
    // Reconnected and subscribed again (a second SUBACK in the log).
    let log = gw.dir().join("gateway.log");
    common::wait_for(Duration::from_secs(15), "driver subscribed again", || {
        (std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("subscribed to device topics")
            .count()
            >= 2)
            .then_some(())
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("site broker connection lost; reconnecting"),
        "{text}"
    );
    let Some(mut fence) =
        MqttDevice::start_or_skip(site_broker.port(), "fence-north", DeviceOpts::default())
    else {
        return;
    };
    fence.publish(
        "fence/north/state",
        r#"{"voltage": 82, "zones": [{"alarm": true}]}"#,
    );
    wait_event(
        &sub,
        10,
        "alarm after the broker restart",
        raised("fence-north/zone-1-alarm"),
    );
}

/// The site broker over mutual TLS with a user name and password, as the
/// uplink does; the device publishes with mosquitto_pub over the same TLS.
#[test]
fn site_broker_over_tls_with_credentials() {
    let Some(central) = Mosquitto::start_or_skip() else {
        return;
    };
    let tools = common::peer_or_skip(
        "openssl + mosquitto_passwd + mosquitto_pub",
        (pki::tools_present() && common::which("mosquitto_pub").is_some()).then_some(()),
        "install openssl and mosquitto-clients",
    );
    if tools.is_none() {
        return;
    }
    let Some(site_broker) = Mosquitto::start_with_or_skip(|dir| {
        pki::make(dir, "gw-devices");
        format!(
            "cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\nallow_anonymous false\npassword_file {d}/passwd\n",
            d = dir.display()
        )
    }) else {
        return;
    };
    let d = site_broker.dir().display().to_string();
    std::fs::write(
        site_broker.dir().join("gw.pw"),
        format!("{}\n", pki::PASSWORD),
    )
    .unwrap();
    let tls = format!(
        "[site_broker]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"gw-devices\"\n\
         password = {{ file = \"{d}/gw.pw\" }}\nreconnect_min_s = 0.2\nreconnect_max_s = 1\n\
         [site_broker.tls]\nca_file = \"{d}/ca.pem\"\ncert_file = \"{d}/client.pem\"\nkey_file = \"{d}/client.key\"\n",
        port = site_broker.port()
    );
    let cfg = config(central.port(), &tls, "silence_timeout_s = 30");
    let (_gw, sub) = start_gateway("mqtt-tls", &central, &cfg);
    let out = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &site_broker.port().to_string(),
            "-q",
            "1",
        ])
        .args(["--cafile", &format!("{d}/ca.pem")])
        .args([
            "--cert",
            &format!("{d}/client.pem"),
            "--key",
            &format!("{d}/client.key"),
        ])
        .args(["-u", "gw-devices", "-P", pki::PASSWORD, "-i", "fence-north"])
        .args([
            "-t",
            "fence/north/state",
            "-m",
            r#"{"voltage": 82, "zones": [{"alarm": true}]}"#,
        ])
        .output()
        .expect("mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub over TLS: {out:?}\n{}",
        site_broker.log()
    );
    wait_event(
        &sub,
        10,
        "alarm over a TLS site broker",
        raised("fence-north/zone-1-alarm"),
    );
}
