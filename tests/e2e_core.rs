//! End-to-end: the real `estate-gateway` binary between a real Modbus device
//! simulator (pymodbus) and a real MQTT broker (mosquitto), with a
//! subscriber standing in for the central platform.
//!
//! Every scenario starts its own peers on free loopback ports and keeps its
//! files in temp dirs, so scenarios run in parallel. A missing peer skips the
//! scenario loudly, or fails it under `REQUIRE_PEERS=1` (CI).

mod common;
#[path = "common/modbus_sim.rs"]
mod modbus_sim;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use common::gateway::{run_cli, GatewayProc};
use common::mqtt_sub::{MqttSub, Received};
use peers::{Broker, Sim};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SITE: &str = "e2e";
const GW: &str = "gw";
const ROOT: &str = "estate/v1/e2e/gw/";

/// One Modbus TCP device with a coil alarm, for the config builder.
struct TcpDevice {
    id: &'static str,
    port: u16,
    unit: u8,
    zone: &'static str,
    category: &'static str,
    /// (point id, coil address, priority, message)
    alarms: Vec<(&'static str, u16, u8, &'static str)>,
}

/// Gateway config for the tests: fast polls, fast reconnects, journal in
/// the gateway's temp dir, telemetry off (events only).
fn config(broker: u16, keepalive_s: Option<u32>, body: &str) -> String {
    let keepalive = keepalive_s
        .map(|k| format!("keepalive_s = {k}\n"))
        .unwrap_or_default();
    format!(
        r#"
[site]
id = "{SITE}"
gateway = "{GW}"

[log]
level = "info,estate_gateway=debug"
format = "text"

[journal]
path = "@DIR@/journal"

[uplink]
host = "127.0.0.1"
port = {broker}
{keepalive}heartbeat_s = 1
reconnect_min_s = 0.2
reconnect_max_s = 1

[telemetry]
enabled = false
{body}"#
    )
}

fn tcp_devices(devices: &[TcpDevice]) -> String {
    let mut s = String::new();
    for d in devices {
        s += &format!(
            r#"
[[devices]]
id = "{id}"
zone = "{zone}"
category = "{category}"
poll_interval_s = 0.1
timeout_s = 0.5
offline_after = 3
[devices.modbus]
host = "127.0.0.1"
port = {port}
unit = {unit}
backoff_max_s = 0.5
"#,
            id = d.id,
            zone = d.zone,
            category = d.category,
            port = d.port,
            unit = d.unit,
        );
        for (point, addr, _, _) in &d.alarms {
            s += &format!(
                "\n[[devices.points]]\nid = \"{point}\"\nregister = \"coil\"\naddress = {addr}\n"
            );
        }
    }
    for d in devices {
        for (point, _, prio, msg) in &d.alarms {
            s += &format!(
                "\n[[alarms]]\npoint = \"{}/{point}\"\nequals = true\npriority = {prio}\nmessage = \"{msg}\"\nlatching = false\n",
                d.id
            );
        }
    }
    s
}

/// The contract's event id for `seq`.
fn id_of(seq: u64) -> String {
    format!("{GW}:{seq:016x}")
}

fn is_rfc3339_ms_utc(s: &str) -> bool {
    // 2026-11-26T21:04:05.123Z
    s.len() == 24
        && s.ends_with('Z')
        && s.as_bytes()[10] == b'T'
        && s.as_bytes()[19] == b'.'
        && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// Events received, parsed.
fn events(sub: &MqttSub) -> Vec<Value> {
    sub.json_on("/events")
}

fn seq_of(e: &Value) -> u64 {
    e["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("event without seq: {e}"))
}

/// Check the delivery guarantees over everything received on `events`:
/// every event well-formed with `id` = `gw:%016x` of its `seq`; a seq seen
/// twice (at-least-once) carries an identical payload; first arrivals come
/// in strictly increasing seq order; seqs `from..=upto` are all there.
/// Returns the events by seq.
fn check_delivery(msgs: &[Received], from: u64, upto: u64) -> BTreeMap<u64, Value> {
    let mut by_seq: BTreeMap<u64, Value> = BTreeMap::new();
    let mut ids: HashMap<String, u64> = HashMap::new();
    let mut last_first_arrival = 0u64;
    let mut duplicates = 0;
    for m in msgs.iter().filter(|m| m.topic.ends_with("/events")) {
        let e = m.json();
        let seq = seq_of(&e);
        let id = e["id"]
            .as_str()
            .unwrap_or_else(|| panic!("event without id: {e}"));
        assert_eq!(id, id_of(seq), "id does not match seq: {e}");
        if let Some(prev) = ids.insert(id.to_string(), seq) {
            assert_eq!(prev, seq, "id {id} used for two seqs");
        }
        match by_seq.get(&seq) {
            Some(first) => {
                duplicates += 1;
                assert_eq!(
                    first, &e,
                    "seq {seq} delivered twice with different payloads"
                );
            }
            None => {
                assert!(
                    seq > last_first_arrival,
                    "seq {seq} arrived after seq {last_first_arrival}: not in seq order"
                );
                last_first_arrival = seq;
                by_seq.insert(seq, e);
            }
        }
    }
    let missing: Vec<u64> = (from..=upto).filter(|s| !by_seq.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of seqs {from}..={upto} never arrived: {missing:?} (got {} distinct, {duplicates} duplicates)",
        missing.len(),
        by_seq.len()
    );
    if duplicates > 0 {
        eprintln!("note: {duplicates} duplicate deliveries (at-least-once), all identical");
    }
    by_seq
}

/// Wait until every seq `1..=upto` has arrived.
fn wait_all_seqs(sub: &MqttSub, upto: u64, timeout: Duration) {
    sub.wait_until(timeout, &format!("every event 1..={upto}"), |msgs| {
        let mut seen = std::collections::HashSet::new();
        for m in msgs.iter().filter(|m| m.topic.ends_with("/events")) {
            if let Some(s) = m.json()["seq"].as_u64() {
                seen.insert(s);
            }
        }
        (1..=upto).all(|s| seen.contains(&s))
    });
}

fn alarm_events<'a>(evs: &'a [Value], key: &str, kind: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter(|e| e["kind"] == kind && e["alarm"]["key"] == key)
        .collect()
}

// ---------------------------------------------------------------------------
// a. an alarm coil flip arrives as alarm.raised with the contract's fields;
//    flipping back gives alarm.cleared.
// ---------------------------------------------------------------------------
#[test]
fn alarm_flip_arrives_as_contract_event() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let Some(sim) = Sim::tcp(&[1]) else { return };
    let sub = MqttSub::start(broker.port(), &format!("{ROOT}#"));
    sub.wait_subscribed(Duration::from_secs(10));
    let cfg = config(
        broker.port(),
        Some(2),
        &tcp_devices(&[TcpDevice {
            id: "access-panel",
            port: sim.tcp_port(),
            unit: 1,
            zone: "villa-12",
            category: "intrusion",
            alarms: vec![("door-7", 7, 2, "Door 7 forced open")],
        }]),
    );
    let mut gw = GatewayProc::start_with("alarm-flip", &cfg);
    // The gateway is up and polling once gateway.started arrived.
    sub.wait_json("/events", Duration::from_secs(20), "gateway.started", |e| {
        e["kind"] == "gateway.started"
    });
    std::thread::sleep(Duration::from_millis(500));
    let flipped = Instant::now();
    sim.set_coil(1, 7, true);
    let raised = sub.wait_json("/events", Duration::from_secs(10), "alarm.raised", |e| {
        e["kind"] == "alarm.raised"
    });
    eprintln!("alarm.raised after {:?}: {raised}", flipped.elapsed());

    let seq = seq_of(&raised);
    assert_eq!(raised["id"], id_of(seq));
    let ts = raised["ts"].as_str().unwrap_or("");
    assert!(is_rfc3339_ms_utc(ts), "ts: {ts}");
    let age = chrono::Utc::now()
        - chrono::DateTime::parse_from_rfc3339(ts)
            .unwrap()
            .with_timezone(&chrono::Utc);
    assert!(
        age.abs() < chrono::TimeDelta::seconds(10),
        "ts {ts} is not the time of the flip"
    );
    assert!(raised.get("attachments").is_none(), "{raised}");
    assert_eq!(raised["priority"], 2);
    assert_eq!(raised["category"], "intrusion");
    assert_eq!(raised["source"]["device"], "access-panel");
    assert_eq!(raised["source"]["point"], "door-7");
    assert_eq!(raised["source"]["zone"], "villa-12");
    assert_eq!(raised["alarm"]["key"], "access-panel/door-7");
    assert_eq!(raised["alarm"]["state"], "active_unacked");
    assert_eq!(raised["alarm"]["value"], true);
    assert_eq!(raised["alarm"]["message"], "Door 7 forced open");

    sim.set_coil(1, 7, false);
    let cleared = sub.wait_json("/events", Duration::from_secs(10), "alarm.cleared", |e| {
        e["kind"] == "alarm.cleared"
    });
    assert!(seq_of(&cleared) > seq, "cleared before raised: {cleared}");
    assert_eq!(cleared["id"], id_of(seq_of(&cleared)));
    assert_eq!(cleared["alarm"]["key"], "access-panel/door-7");
    assert_eq!(cleared["alarm"]["value"], false);
    assert_eq!(cleared["source"]["device"], "access-panel");
    assert!(
        matches!(
            cleared["alarm"]["state"].as_str(),
            Some("returned_unacked") | Some("normal")
        ),
        "state after clearing an unacknowledged alarm: {cleared}"
    );
    // Exactly one raised and one cleared.
    let evs = events(&sub);
    assert_eq!(
        alarm_events(&evs, "access-panel/door-7", "alarm.raised").len(),
        1
    );
    assert_eq!(
        alarm_events(&evs, "access-panel/door-7", "alarm.cleared").len(),
        1
    );

    let exit = gw.sigterm(Duration::from_secs(15));
    assert!(exit.success(), "clean shutdown exited with {exit}");
    let upto = gw.journal_info()["last_seq"].as_u64().expect("last_seq");
    wait_all_seqs(&sub, upto, Duration::from_secs(5));
    check_delivery(&sub.messages(), 1, upto);
}

// ---------------------------------------------------------------------------
// A device that answers with a float that is not a number.
// ---------------------------------------------------------------------------

/// One device of unit 1 on a fresh simulator, given as `[[devices]]`
/// TOML (`@PORT@`: the simulator's port), with its `[[alarms]]`, polled
/// every 0.1 s by a gateway with telemetry on (0.2 s batches), publishing
/// to a fresh broker; a subscriber takes everything it publishes. `None`:
/// a peer is missing.
fn one_device_with_telemetry(
    name: &str,
    device: &str,
) -> Option<(Broker, Sim, MqttSub, GatewayProc)> {
    let broker = Broker::start()?;
    let sim = Sim::tcp(&[1])?;
    let sub = MqttSub::start(broker.port(), &format!("{ROOT}#"));
    sub.wait_subscribed(Duration::from_secs(10));
    let device = device.replace("@PORT@", &sim.tcp_port().to_string());
    let cfg = config(broker.port(), Some(2), &device).replace(
        "[telemetry]\nenabled = false",
        "[telemetry]\nenabled = true\nbatch_s = 0.2",
    );
    assert!(cfg.contains("batch_s = 0.2"), "telemetry not turned on");
    let gw = GatewayProc::start_with(name, &cfg);
    Some((broker, sim, sub, gw))
}

/// The registers of `v` as an `f32`, high word first (the default word
/// and byte order).
fn f32_words(v: f32) -> [u16; 2] {
    let bits = v.to_bits();
    [(bits >> 16) as u16, bits as u16]
}

/// A device that answers with NaN or infinity (a broken sensor, a fault
/// code read as a float) has answered, but sent no measurement: the point
/// is `bad` in telemetry and on the console, its threshold alarm is not
/// raised by it (`+inf` is above every threshold), and the log says why,
/// once. A number afterwards is good and judged again.
#[test]
fn a_value_that_is_not_a_number_is_bad_and_raises_nothing() {
    let device = r#"
[[devices]]
id = "hvac-1"
category = "hvac"
zone = "plant-room"
poll_interval_s = 0.1
timeout_s = 0.5
[devices.modbus]
host = "127.0.0.1"
port = @PORT@
unit = 1
[[devices.points]]
id = "supply-temp"
register = "holding"
address = 0
type = "f32"

[[alarms]]
point = "hvac-1/supply-temp"
high = 30.0
priority = 3
message = "Supply air too hot"
"#;
    let Some((_broker, sim, sub, mut gw)) = one_device_with_telemetry("not-a-number", device)
    else {
        return;
    };
    sim.set_registers(1, 0, &f32_words(21.5));
    let temp = |what: &str, quality: &'static str, value: Value| {
        sub.wait_json("/telemetry", Duration::from_secs(10), what, move |t| {
            t["points"].as_array().is_some_and(|ps| {
                ps.iter().any(|p| {
                    p["point"] == "supply-temp" && p["quality"] == quality && p["value"] == value
                })
            })
        })
    };
    temp("supply-temp 21.5, good", "good", serde_json::json!(21.5));

    sim.set_registers(1, 0, &f32_words(f32::INFINITY));
    temp("supply-temp bad after +inf", "bad", Value::Null);
    // Several polls of +inf, then of NaN: still nothing raised.
    std::thread::sleep(Duration::from_millis(600));
    sim.set_registers(1, 0, &f32_words(f32::NAN));
    std::thread::sleep(Duration::from_millis(600));
    let raised = |evs: &[Value]| alarm_events(evs, "hvac-1/supply-temp", "alarm.raised").len();
    assert_eq!(
        raised(&events(&sub)),
        0,
        "raised by a value that is no number"
    );
    let log = gw.log();
    assert_eq!(
        log.matches("not a number").count(),
        1,
        "the log says it once, not every poll:\n{}",
        gw.log_tail(40)
    );

    sim.set_registers(1, 0, &f32_words(35.0));
    temp(
        "supply-temp 35, good again",
        "good",
        serde_json::json!(35.0),
    );
    let ev = sub.wait_json("/events", Duration::from_secs(10), "alarm.raised", |e| {
        e["kind"] == "alarm.raised"
    });
    assert_eq!(ev["alarm"]["key"], "hvac-1/supply-temp");
    assert_eq!(ev["alarm"]["value"], serde_json::json!(35.0));
    gw.wait_log("sends numbers again", Duration::from_secs(5));
    let exit = gw.sigterm(Duration::from_secs(15));
    assert!(exit.success(), "clean shutdown exited with {exit}");
}

/// A life-safety fire panel on the simulator's port (`@PORT@`), polled
/// every 0.1 s, without points.
const FIRE_PANEL: &str = r#"
[[devices]]
id = "fire-panel"
category = "fire"
life_safety = true
zone = "villa-12"
poll_interval_s = 0.1
timeout_s = 0.5
offline_after = 2
[devices.modbus]
host = "127.0.0.1"
port = @PORT@
unit = 1
"#;

/// A fire panel that sends a value that is not a number for one of its
/// points (a broken detector's analog value) has part of it unwatched:
/// its communication-loss alarm is raised, naming the point, and returns
/// once the point reads a number again.
#[test]
fn a_fire_panel_sending_a_value_that_is_not_a_number_loses_communication() {
    let device = FIRE_PANEL.to_string()
        + r#"
[[devices.points]]
id = "smoke-density"
register = "holding"
address = 0
type = "f32"
"#;
    let Some((_broker, sim, sub, mut gw)) = one_device_with_telemetry("not-a-number-fire", &device)
    else {
        return;
    };
    let comm = |kind: &'static str| {
        sub.wait_json("/events", Duration::from_secs(20), kind, move |e| {
            e["kind"] == kind && e["alarm"]["key"] == "fire-panel/comm"
        })
    };
    sim.set_registers(1, 0, &f32_words(f32::NAN));
    let raised = comm("alarm.raised");
    assert_eq!(
        raised["detail"]["reason"],
        "the device sends a value that is not a number for fire-panel/smoke-density",
        "{raised}"
    );
    assert_eq!(raised["priority"], 1, "{raised}");
    sim.set_registers(1, 0, &f32_words(0.2));
    comm("alarm.cleared");
    assert!(
        !events(&sub).iter().any(|e| e["kind"] == "device.offline"),
        "the panel answers: never offline"
    );
    let exit = gw.sigterm(Duration::from_secs(15));
    assert!(exit.success(), "clean shutdown exited with {exit}");
}

/// A fire panel configured with a point at an address the device does
/// not have (pymodbus answers exception 2): that point is `bad`, the
/// panel's communication-loss alarm says so (part of it goes unwatched),
/// and its other points are read as usual: a smoke loop still raises its
/// alarm, and the panel never goes offline.
#[test]
fn a_point_the_device_refuses_to_read_is_bad_and_the_rest_is_watched() {
    let device = FIRE_PANEL.to_string()
        + r#"
[[devices.points]]
id = "loop-1"
register = "coil"
address = 3
[[devices.points]]
id = "zones-in-alarm"
register = "holding"
address = 300
type = "u16"

[[alarms]]
point = "fire-panel/loop-1"
equals = true
priority = 1
message = "Smoke on loop 1"
"#;
    let Some((_broker, sim, sub, mut gw)) = one_device_with_telemetry("refused-read", &device)
    else {
        return;
    };
    let comm = sub.wait_json("/events", Duration::from_secs(20), "comm alarm", |e| {
        e["kind"] == "alarm.raised" && e["alarm"]["key"] == "fire-panel/comm"
    });
    let reason = comm["detail"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("exception 2") && reason.contains("300"),
        "the reason names the refusal and the address: {comm}"
    );
    sub.wait_json(
        "/telemetry",
        Duration::from_secs(10),
        "zones-in-alarm bad",
        |t| {
            t["points"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["point"] == "zones-in-alarm" && p["quality"] == "bad")
            })
        },
    );
    // The rest of the panel is watched.
    sim.set_coil(1, 3, true);
    let smoke = sub.wait_json("/events", Duration::from_secs(10), "smoke alarm", |e| {
        e["kind"] == "alarm.raised" && e["alarm"]["key"] == "fire-panel/loop-1"
    });
    assert_eq!(smoke["priority"], 1);
    let evs = events(&sub);
    assert!(
        !evs.iter().any(|e| e["kind"] == "device.offline"),
        "the panel answers: never offline"
    );
    assert_eq!(
        gw.log().matches("refuses to read some points").count(),
        1,
        "logged once, not every poll:\n{}",
        gw.log_tail(40)
    );

    // A reload that keeps the panel's driver (only a rule's wording
    // changes). The driver does not say again what the panel refuses (it
    // says it when that changes), yet the next alarm task knows it: the
    // point is reported bad again, and the communication-loss alarm stays
    // raised (not cleared, not raised twice).
    let bad_reports = || {
        sub.json_on("/telemetry")
            .iter()
            .flat_map(|t| t["points"].as_array().cloned().unwrap_or_default())
            .filter(|p| p["point"] == "zones-in-alarm" && p["quality"] == "bad")
            .count()
    };
    let before = bad_reports();
    let text = std::fs::read_to_string(gw.config_path()).expect("read config");
    gw.rewrite_config(&text.replace("Smoke on loop 1", "Smoke on loop 1, north wing"));
    common::gateway::signal(gw.pid().expect("gateway pid"), "HUP");
    let changed = sub.wait_json("/events", Duration::from_secs(20), "config.changed", |e| {
        e["kind"] == "config.changed"
    });
    assert_eq!(changed["detail"]["ok"], true, "{changed}");
    assert_eq!(
        changed["detail"]["drivers"]["restarted"],
        serde_json::json!([]),
        "the panel's driver is kept: {changed}"
    );
    common::wait_for(
        Duration::from_secs(10),
        "zones-in-alarm reported bad after the reload",
        || (bad_reports() > before).then_some(()),
    );
    // The panel is polled on meanwhile.
    std::thread::sleep(Duration::from_millis(500));
    let comm_events: Vec<String> = events(&sub)
        .iter()
        .filter(|e| e["alarm"]["key"] == "fire-panel/comm")
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(comm_events, ["alarm.raised"], "{comm_events:?}");
    let exit = gw.sigterm(Duration::from_secs(15));
    assert!(exit.success(), "clean shutdown exited with {exit}");
}

// ---------------------------------------------------------------------------
// b. device offline/online.
// ---------------------------------------------------------------------------
#[test]
fn device_offline_and_back_online() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let Some(mut sim) = Sim::tcp(&[1]) else {
        return;
    };
    let sub = MqttSub::start(broker.port(), &format!("{ROOT}events"));
    sub.wait_subscribed(Duration::from_secs(10));
    let cfg = config(
        broker.port(),
        Some(2),
        &tcp_devices(&[TcpDevice {
            id: "fence-north",
            port: sim.tcp_port(),
            unit: 1,
            zone: "perimeter-north",
            category: "perimeter",
            alarms: vec![("zone-1", 1, 2, "Fence zone 1 tripped")],
        }]),
    );
    let _gw = GatewayProc::start_with("device-offline", &cfg);
    sub.wait_json("/events", Duration::from_secs(20), "gateway.started", |e| {
        e["kind"] == "gateway.started"
    });
    // Let it poll successfully for a while: no offline event yet.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !events(&sub).iter().any(|e| e["kind"] == "device.offline"),
        "device.offline while the device answers"
    );

    let killed = Instant::now();
    sim.kill();
    let off = sub.wait_json("/events", Duration::from_secs(15), "device.offline", |e| {
        e["kind"] == "device.offline" && e["source"]["device"] == "fence-north"
    });
    eprintln!("device.offline after {:?}: {off}", killed.elapsed());
    assert_eq!(off["category"], "perimeter");
    assert_eq!(off["id"], id_of(seq_of(&off)));
    assert!(is_rfc3339_ms_utc(off["ts"].as_str().unwrap_or("")));

    let restarted = Instant::now();
    sim.restart();
    let on = sub.wait_json("/events", Duration::from_secs(15), "device.online", |e| {
        e["kind"] == "device.online" && e["source"]["device"] == "fence-north"
    });
    eprintln!("device.online after {:?}: {on}", restarted.elapsed());
    assert!(seq_of(&on) > seq_of(&off));

    // Alarms work again after the device is back.
    sim.set_coil(1, 1, true);
    sub.wait_json(
        "/events",
        Duration::from_secs(10),
        "alarm.raised after reconnect",
        |e| e["kind"] == "alarm.raised" && e["alarm"]["key"] == "fence-north/zone-1",
    );
    let evs = events(&sub);
    let offline = evs.iter().filter(|e| e["kind"] == "device.offline").count();
    let online = evs.iter().filter(|e| e["kind"] == "device.online").count();
    assert_eq!(
        (offline, online),
        (1, 1),
        "one outage, one offline/online pair"
    );
}

// ---------------------------------------------------------------------------
// c. broker stopped for 30 s while alarms keep coming: every event arrives
//    once it is back, in seq order, none missing.
// ---------------------------------------------------------------------------
#[test]
fn broker_outage_loses_nothing() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    let Some(sim) = Sim::tcp(&[1]) else { return };
    // A persistent session: the broker (with persistence) keeps our
    // subscription across its restart and queues what the gateway publishes
    // before we are back.
    let sub = MqttSub::persistent(broker.port(), &format!("{ROOT}events"), "platform-outage");
    sub.wait_subscribed(Duration::from_secs(10));
    let cfg = config(
        broker.port(),
        Some(2),
        &tcp_devices(&[TcpDevice {
            id: "fence-south",
            port: sim.tcp_port(),
            unit: 1,
            zone: "perimeter-south",
            category: "perimeter",
            alarms: vec![("zone-2", 2, 2, "Fence zone 2 tripped")],
        }]),
    );
    let mut gw = GatewayProc::start_with("broker-outage", &cfg);
    sub.wait_json("/events", Duration::from_secs(20), "gateway.started", |e| {
        e["kind"] == "gateway.started"
    });
    std::thread::sleep(Duration::from_millis(300));
    // Some alarms before the outage.
    let mut flips = 0;
    let mut state = false;
    for _ in 0..4 {
        state = !state;
        sim.set_coil(1, 2, state);
        flips += 1;
        std::thread::sleep(Duration::from_millis(400));
    }
    sub.wait_until(Duration::from_secs(10), "alarms before the outage", |m| {
        m.iter()
            .filter(|m| {
                let k = m.json()["kind"].clone();
                k == "alarm.raised" || k == "alarm.cleared"
            })
            .count()
            >= 4
    });

    broker.stop();
    let outage = Instant::now();
    let outage_wall = chrono::Utc::now();
    // 30 s of outage with an alarm transition every ~1.5 s.
    while outage.elapsed() < Duration::from_secs(30) {
        state = !state;
        sim.set_coil(1, 2, state);
        flips += 1;
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert!(gw.is_running(), "the gateway died during the broker outage");
    broker.restart();
    let back = Instant::now();

    let want = flips;
    sub.wait_until(
        Duration::from_secs(60),
        &format!("{want} alarm transitions after the outage"),
        |m| {
            let mut seqs = std::collections::HashSet::new();
            for m in m {
                let e = m.json();
                if e["kind"] == "alarm.raised" || e["kind"] == "alarm.cleared" {
                    seqs.insert(e["seq"].as_u64());
                }
            }
            seqs.len() >= want
        },
    );
    eprintln!(
        "{want} alarm transitions delivered {:?} after the broker came back",
        back.elapsed()
    );

    let exit = gw.sigterm(Duration::from_secs(15));
    assert!(exit.success(), "clean shutdown exited with {exit}");
    let info = gw.journal_info();
    let upto = info["last_seq"].as_u64().expect("last_seq");
    wait_all_seqs(&sub, upto, Duration::from_secs(15));
    let by_seq = check_delivery(&sub.messages(), 1, upto);
    // The alarm transitions alternate raised/cleared, in the order of the flips.
    let kinds: Vec<&str> = by_seq
        .values()
        .filter(|e| e["alarm"]["key"] == "fence-south/zone-2")
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), flips, "alarm transitions: {kinds:?}");
    // The gateway recorded its own link loss, within 20 s, and the return.
    let ts_of = |e: &Value| {
        chrono::DateTime::parse_from_rfc3339(e["ts"].as_str().unwrap_or(""))
            .unwrap_or_else(|err| panic!("bad ts in {e}: {err}"))
            .with_timezone(&chrono::Utc)
    };
    let lost: Vec<&Value> = by_seq
        .values()
        .filter(|e| e["kind"] == "uplink.lost")
        .collect();
    let restored: Vec<&Value> = by_seq
        .values()
        .filter(|e| e["kind"] == "uplink.restored")
        .collect();
    assert_eq!(lost.len(), 1, "one outage, one uplink.lost: {lost:?}");
    assert_eq!(
        restored.len(),
        1,
        "one outage, one uplink.restored: {restored:?}"
    );
    let detected = ts_of(lost[0]) - outage_wall;
    assert!(
        detected < chrono::TimeDelta::seconds(20),
        "uplink loss recorded {detected} after the broker stopped"
    );
    assert!(seq_of(restored[0]) > seq_of(lost[0]));
    for (i, k) in kinds.iter().enumerate() {
        let want = if i % 2 == 0 {
            "alarm.raised"
        } else {
            "alarm.cleared"
        };
        assert_eq!(*k, want, "transition {i} of {kinds:?}");
    }
}

// ---------------------------------------------------------------------------
// d. kill -9 repeatedly while events flow: every recorded event arrives.
// ---------------------------------------------------------------------------
#[test]
fn kill9_repeatedly_loses_no_recorded_event() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let Some(sim) = Sim::tcp(&[1]) else { return };
    let sub = MqttSub::start(broker.port(), &format!("{ROOT}events"));
    sub.wait_subscribed(Duration::from_secs(10));
    let cfg = config(
        broker.port(),
        Some(2),
        &tcp_devices(&[TcpDevice {
            id: "fire-panel-a",
            port: sim.tcp_port(),
            unit: 1,
            zone: "villa-3",
            category: "intrusion",
            alarms: vec![
                ("loop-1", 1, 1, "Loop 1 alarm"),
                ("loop-2", 2, 1, "Loop 2 alarm"),
            ],
        }]),
    );
    let mut gw = GatewayProc::start_with("kill9", &cfg);
    sub.wait_json("/events", Duration::from_secs(20), "gateway.started", |e| {
        e["kind"] == "gateway.started"
    });

    // Flip the coils every ~120 ms for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let flips = Arc::new(AtomicU64::new(0));
    let flipper = {
        let stop = stop.clone();
        let flips = flips.clone();
        let port = sim.control_port();
        std::thread::spawn(move || {
            let mut state = [false, false];
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let c = i % 2;
                state[c] = !state[c];
                if peers::write(port, 1, peers::Write::Coil(1 + c as u16, state[c])).is_ok() {
                    flips.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(60 + fastrand::u64(0..120)));
            }
        })
    };

    let rounds = 5;
    for round in 1..=rounds {
        let run_for = Duration::from_millis(300 + fastrand::u64(0..2200));
        std::thread::sleep(run_for);
        assert!(gw.is_running(), "gateway died by itself in round {round}");
        gw.kill9();
        eprintln!("round {round}: killed after {run_for:?}");
        // Sometimes restart at once, sometimes after a pause.
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..500)));
        gw.start();
    }
    // Run a while after the last crash, then stop the flips and let it settle.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(gw.is_running(), "gateway died by itself after the crashes");
    let exit = gw.sigterm(Duration::from_secs(15));
    assert!(exit.success(), "clean shutdown exited with {exit}");

    let info = gw.journal_info();
    let upto = info["last_seq"].as_u64().expect("last_seq");
    eprintln!(
        "journal after {rounds} crashes: {info}; {} coil flips",
        flips.load(Ordering::Relaxed)
    );
    assert!(
        upto > 20,
        "too few events recorded to prove anything: {upto}"
    );
    wait_all_seqs(&sub, upto, Duration::from_secs(20));
    let by_seq = check_delivery(&sub.messages(), 1, upto);
    let starts = by_seq
        .values()
        .filter(|e| e["kind"] == "gateway.started")
        .count();
    // A kill can land before a run recorded gateway.started, never more
    // than one per run.
    assert!(
        (2..=rounds + 1).contains(&starts),
        "{starts} gateway.started events for {} runs",
        rounds + 1
    );
    assert!(
        by_seq.keys().next_back() == Some(&upto),
        "events past the journal's last_seq"
    );
}

// ---------------------------------------------------------------------------
// e. a bad config file: every problem as file:line: key: message, non-zero
//    exit, and `run` refuses to start.
// ---------------------------------------------------------------------------
#[test]
fn bad_config_is_reported_and_refused() {
    // Unknown key (line 9), bad reference (alarm on a point that does not
    // exist, line 23), bad id (line 3).
    let text = r#"[site]
id = "palm-bay"
gateway = "GW North"

[journal]
path = "@DIR@/journal"

[uplink]
hots = "127.0.0.1"
host = "127.0.0.1"

[[devices]]
id = "fire-panel-a"
category = "fire"
[devices.modbus]
host = "127.0.0.1"
port = 5020
[[devices.points]]
id = "zone-3"
register = "coil"
address = 3
[[alarms]]
point = "fire-panel-a/zone-9"
equals = true
priority = 1
message = "Smoke detector zone 3"
"#;
    let mut gw = GatewayProc::new("bad-config", text);
    let path = gw.config_path().display().to_string();
    let out = gw.check_config();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("check-config said:\n{stderr}");
    assert!(!out.status.success(), "check-config accepted a bad file");
    for (line, key) in [
        (3, "site.gateway"),
        (9, "uplink.hots"),
        (23, "alarms[0].point"),
    ] {
        let prefix = format!("{path}:{line}: {key}: ");
        let found = stderr
            .lines()
            .find(|l| l.contains(&prefix))
            .unwrap_or_else(|| panic!("no line with {prefix:?} in:\n{stderr}"));
        assert!(
            found.len() > found.find(&prefix).unwrap() + prefix.len() + 3,
            "no message after {prefix:?}: {found}"
        );
    }

    // A type error, after an unknown key: both reported with their lines.
    let typed = text
        .replace("gateway = \"GW North\"", "gateway = \"gw-north\"")
        .replace("port = 5020", "port = \"five\"");
    gw.rewrite_config(&typed);
    let out = gw.check_config();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("check-config said:\n{stderr}");
    assert!(!out.status.success(), "check-config accepted a type error");
    assert!(
        stderr.contains(&format!("{path}:9: uplink.hots: ")),
        "unknown key not reported: {stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(&format!("{path}:17: devices[0].modbus.port: "))),
        "type error not reported with its line and key: {stderr}"
    );
    assert!(
        stderr.contains("later problems are not checked yet"),
        "no hint that the check stopped early: {stderr}"
    );

    // `run` refuses it without starting: non-zero exit, no journal created.
    gw.rewrite_config(text);
    gw.start();
    let status = gw
        .wait_exit(Duration::from_secs(20))
        .expect("run with a bad config did not exit");
    assert!(!status.success(), "run with a bad config exited 0");
    assert!(
        !gw.dir().join("journal").exists(),
        "run with a bad config created the journal"
    );
    let log = gw.log();
    assert!(
        log.contains(&format!("{path}:9: uplink.hots: ")),
        "run did not print the problems: {log}"
    );

    // A missing file is an error too.
    let out = run_cli(
        &["check-config", "/nonexistent/gateway.toml"],
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gateway.toml"));
}

// ---------------------------------------------------------------------------
// f. RTU: two slaves on one bus over a socat pty pair.
// ---------------------------------------------------------------------------
#[test]
fn rtu_two_slaves_on_one_bus() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let Some(sim) = Sim::rtu(&[1, 2], 19200) else {
        return;
    };
    let sub = MqttSub::start(broker.port(), &format!("{ROOT}events"));
    sub.wait_subscribed(Duration::from_secs(10));
    let mut body = format!(
        r#"
[[serial_buses]]
id = "rs485-1"
path = "{}"
baud = 19200
"#,
        sim.gateway_tty().display()
    );
    for (unit, dev) in [(1, "fire-panel-b"), (2, "access-panel-b")] {
        body += &format!(
            r#"
[[devices]]
id = "{dev}"
zone = "villa-{unit}"
category = "intrusion"
poll_interval_s = 0.2
timeout_s = 0.5
[devices.modbus]
bus = "rs485-1"
unit = {unit}
backoff_max_s = 1
[[devices.points]]
id = "input-{unit}"
register = "coil"
address = {addr}
"#,
            addr = 10 + unit
        );
    }
    for (unit, dev) in [(1, "fire-panel-b"), (2, "access-panel-b")] {
        body += &format!(
            "\n[[alarms]]\npoint = \"{dev}/input-{unit}\"\nequals = true\npriority = 2\nmessage = \"Input {unit}\"\nlatching = false\n"
        );
    }
    let cfg = config(broker.port(), Some(2), &body);
    let _gw = GatewayProc::start_with("rtu", &cfg);
    sub.wait_json("/events", Duration::from_secs(20), "gateway.started", |e| {
        e["kind"] == "gateway.started"
    });
    std::thread::sleep(Duration::from_secs(1));

    sim.set_coil(1, 11, true);
    let a = sub.wait_json(
        "/events",
        Duration::from_secs(10),
        "alarm from unit 1",
        |e| e["kind"] == "alarm.raised" && e["alarm"]["key"] == "fire-panel-b/input-1",
    );
    assert_eq!(a["source"]["zone"], "villa-1");
    sim.set_coil(2, 12, true);
    let b = sub.wait_json(
        "/events",
        Duration::from_secs(10),
        "alarm from unit 2",
        |e| e["kind"] == "alarm.raised" && e["alarm"]["key"] == "access-panel-b/input-2",
    );
    assert_eq!(b["source"]["zone"], "villa-2");
    assert!(seq_of(&b) > seq_of(&a));
    // Both slaves answered all along: no device went offline.
    assert!(
        !events(&sub).iter().any(|e| e["kind"] == "device.offline"),
        "a slave on the shared bus went offline: {:?}",
        events(&sub)
    );
}

// ---------------------------------------------------------------------------
// g. retained status, clean-shutdown status, and the will after a crash.
// ---------------------------------------------------------------------------
#[test]
fn status_retained_shutdown_and_will() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let status_topic = format!("{ROOT}status");
    // Default keepalive (5 s): the contract's supervision must hold with it.
    let cfg = config(broker.port(), None, "");
    let mut gw = GatewayProc::start_with("status", &cfg);

    // Online, retained: a subscriber that comes later still gets it.
    let sub = MqttSub::start(broker.port(), &status_topic);
    let online = sub
        .wait_for(Duration::from_secs(20), "status online", |m| {
            m.json()["state"] == "online"
        })
        .json();
    let boot1 = online["boot_id"].as_str().unwrap_or("").to_string();
    assert!(!boot1.is_empty(), "status without boot_id: {online}");
    assert!(
        online["version"].is_string(),
        "status without version: {online}"
    );
    assert!(
        is_rfc3339_ms_utc(online["since"].as_str().unwrap_or("")),
        "since: {online}"
    );
    sub.stop();
    let late = MqttSub::start(broker.port(), &status_topic);
    let m = late.wait_for(Duration::from_secs(10), "retained status", |_| true);
    assert!(m.retain, "status is not retained");
    assert_eq!(m.json()["state"], "online");
    late.stop();

    // Clean shutdown: retained offline/shutdown.
    let watch = MqttSub::start(broker.port(), &status_topic);
    watch.wait_subscribed(Duration::from_secs(10));
    let exit = gw.sigterm(Duration::from_secs(15));
    assert!(exit.success(), "clean shutdown exited with {exit}");
    watch.wait_for(Duration::from_secs(5), "status offline (shutdown)", |m| {
        m.json()["state"] == "offline"
    });
    watch.stop();
    let after = MqttSub::start(broker.port(), &status_topic);
    let m = after.wait_for(
        Duration::from_secs(10),
        "retained status after shutdown",
        |_| true,
    );
    assert!(m.retain);
    let v = m.json();
    assert_eq!(v["state"], "offline", "{v}");
    assert_eq!(v["reason"], "shutdown", "{v}");
    after.stop();

    // Start again: online with a new boot id.
    let watch = MqttSub::start(broker.port(), &status_topic);
    gw.start();
    let online2 = watch
        .wait_for(Duration::from_secs(20), "status online again", |m| {
            m.json()["state"] == "online"
        })
        .json();
    let boot2 = online2["boot_id"].as_str().unwrap_or("").to_string();
    assert!(
        !boot2.is_empty() && boot2 != boot1,
        "boot_id {boot2:?} after {boot1:?}"
    );

    // kill -9: the broker publishes the will (offline) within 20 s.
    let killed = Instant::now();
    gw.kill9();
    let will = watch
        .wait_for(
            Duration::from_secs(20),
            "the will (status offline) after kill -9",
            |m| m.json()["state"] == "offline" && m.json()["boot_id"] == boot2.as_str(),
        )
        .json();
    eprintln!(
        "will after kill -9 arrived in {:?}: {will}",
        killed.elapsed()
    );
    assert_ne!(
        will["reason"], "shutdown",
        "a crash is not a shutdown: {will}"
    );
    assert_eq!(
        will["boot_id"],
        boot2.as_str(),
        "the will names the run that died"
    );
    watch.stop();

    // A link that dies without the socket closing (the process frozen):
    // only the keepalive can tell; the will must still come within 20 s.
    let watch = MqttSub::start(broker.port(), &status_topic);
    gw.start();
    let online3 = watch
        .wait_for(Duration::from_secs(20), "status online (third run)", |m| {
            m.json()["state"] == "online" && m.json()["boot_id"] != boot2.as_str()
        })
        .json();
    let boot3 = online3["boot_id"].as_str().unwrap_or("").to_string();
    let pid = gw.pid().unwrap();
    common::gateway::signal(pid, "STOP");
    let frozen = Instant::now();
    let will = watch.wait_for(
        Duration::from_secs(20),
        "the will after the gateway froze",
        |m| m.json()["state"] == "offline" && m.json()["boot_id"] == boot3.as_str(),
    );
    eprintln!(
        "will after freeze arrived in {:?}: {}",
        frozen.elapsed(),
        will.text()
    );
    common::gateway::signal(pid, "CONT");
    gw.kill9();
}

/// The peers these scenarios drive, over the shared helpers: a mosquitto
/// broker that can be stopped and restarted on its port (with persistence,
/// so sessions survive), and the pymodbus simulator over TCP or over a socat
/// pty pair for RTU, with a Modbus TCP control port on the same datastore
/// through which the test flips coils (synchronously, with retries).
mod peers {
    use super::modbus_sim::ModbusSim;
    use super::mosquitto::Mosquitto;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    /// A mosquitto broker on a free loopback port.
    pub struct Broker(Mosquitto);

    impl Broker {
        /// Start a broker, or skip (`None`) when mosquitto is missing.
        pub fn start() -> Option<Broker> {
            Mosquitto::start_or_skip().map(Broker)
        }

        pub fn port(&self) -> u16 {
            self.0.port()
        }

        /// Stop it the way an operator would (SIGTERM: sessions saved).
        pub fn stop(&mut self) {
            self.0.stop();
        }

        /// Start it again on the same port and persistence dir.
        pub fn restart(&mut self) {
            self.0.start();
        }
    }

    impl Drop for Broker {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let log = self.0.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                eprintln!(
                    "----- mosquitto log (last 40 lines) -----\n{}",
                    tail.join("\n")
                );
            }
        }
    }

    /// The pymodbus device simulator.
    pub struct Sim {
        inner: Option<ModbusSim>,
        units: Vec<u8>,
        tcp_port: u16,
        control_port: u16,
    }

    impl Sim {
        fn wrap(inner: ModbusSim, units: &[u8]) -> Sim {
            Sim {
                tcp_port: inner.tcp_port.unwrap_or(0),
                control_port: inner.control_port,
                inner: Some(inner),
                units: units.to_vec(),
            }
        }

        /// Modbus TCP devices with the given unit ids.
        pub fn tcp(units: &[u8]) -> Option<Sim> {
            ModbusSim::start_tcp(units).map(|s| Sim::wrap(s, units))
        }

        /// RTU slaves with the given unit ids on one end of a socat pty
        /// pair; the gateway opens the other end ([`Sim::gateway_tty`]).
        pub fn rtu(units: &[u8], baud: u32) -> Option<Sim> {
            ModbusSim::start_rtu(units, baud).map(|s| Sim::wrap(s, units))
        }

        /// Port of the Modbus TCP device (the gateway polls it).
        pub fn tcp_port(&self) -> u16 {
            self.tcp_port
        }

        /// Port through which the test changes values.
        pub fn control_port(&self) -> u16 {
            self.control_port
        }

        /// The gateway's end of the RTU pty pair.
        pub fn gateway_tty(&self) -> PathBuf {
            self.inner
                .as_ref()
                .and_then(|s| s.gateway_tty.clone())
                .expect("not an RTU simulator")
        }

        /// Set a coil of `unit` (retries while the simulator starts).
        pub fn set_coil(&self, unit: u8, addr: u16, value: bool) {
            self.write(unit, Write::Coil(addr, value));
        }

        /// Set holding registers of `unit` from `addr` on (retries while
        /// the simulator starts).
        pub fn set_registers(&self, unit: u8, addr: u16, words: &[u16]) {
            self.write(unit, Write::Registers(addr, words));
        }

        fn write(&self, unit: u8, w: Write<'_>) {
            let start = Instant::now();
            loop {
                match write(self.control_port, unit, w) {
                    Ok(()) => return,
                    Err(e) if start.elapsed() > Duration::from_secs(10) => {
                        panic!("cannot write {w:?} of unit {unit}: {e}")
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }

        /// The device vanishes (SIGKILL: no goodbye on its sockets).
        pub fn kill(&mut self) {
            if let Some(s) = self.inner.as_mut() {
                s.kill();
            }
        }

        /// Start a TCP simulator again on the same port (values from zero;
        /// a new control port).
        pub fn restart(&mut self) {
            assert!(self.tcp_port != 0, "restart is for TCP simulators");
            self.inner = None;
            let s = ModbusSim::start_tcp_on(self.tcp_port, &self.units)
                .expect("the simulator ran before, so its peers exist");
            self.control_port = s.control_port;
            self.inner = Some(s);
        }
    }

    /// What the test writes into the simulator.
    #[derive(Clone, Copy, Debug)]
    pub enum Write<'a> {
        /// A coil (function code 5).
        Coil(u16, bool),
        /// Holding registers from an address on (function code 16).
        Registers(u16, &'a [u16]),
    }

    /// One write over Modbus TCP.
    pub fn write(port: u16, unit: u8, w: Write<'_>) -> Result<(), String> {
        use tokio_modbus::client::{tcp, Client, Writer};
        use tokio_modbus::Slave;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let op = async {
                let sock = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let mut ctx = tcp::connect_slave(sock, Slave(unit))
                    .await
                    .map_err(|e| e.to_string())?;
                match w {
                    Write::Coil(addr, value) => ctx.write_single_coil(addr, value).await,
                    Write::Registers(addr, words) => {
                        ctx.write_multiple_registers(addr, words).await
                    }
                }
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("exception {e:?}"))?;
                let _ = ctx.disconnect().await;
                Ok::<(), String>(())
            };
            tokio::time::timeout(Duration::from_secs(2), op)
                .await
                .map_err(|_| "timed out".to_string())?
        })
    }
}
