//! End-to-end: configuration reload on SIGHUP, with the real binary between
//! a pymodbus device and a mosquitto broker.
//!
//! - A rule added for a point takes effect after SIGHUP, and an alarm that
//!   was active before the reload stays active (no second `alarm.raised`).
//! - The uplink session survives: no new connection at the broker, no new
//!   `status: online` while reloads happen with the broker up.
//! - The backlog survives: events recorded while the broker was down, before
//!   the reload, are all delivered once it is back.
//! - A broken file changes nothing: logged, recorded as `config.changed`
//!   with `ok: false`, the old rules keep working.

mod common;
#[path = "common/modbus_sim.rs"]
mod modbus_sim;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use common::gateway::{signal, GatewayProc};
use common::mqtt_sub::MqttSub;
use modbus_sim::ModbusSim;
use mosquitto::Mosquitto;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const ROOT: &str = "estate/v1/reload/gw/";
const CLIENT_ID: &str = "gw-reload-test";

/// The gateway config: one Modbus device with coils 1..=3 as points;
/// `rules` are `[[alarms]]` blocks.
fn config(broker: u16, device: u16, zone1_message: &str, rules: &str) -> String {
    format!(
        r#"
[site]
id = "reload"
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

[[devices]]
id = "panel"
zone = "villa-3"
category = "intrusion"
poll_interval_s = 0.1
timeout_s = 0.5
offline_after = 3
[devices.modbus]
host = "127.0.0.1"
port = {device}
unit = 1
backoff_max_s = 0.5

[[devices.points]]
id = "zone-1"
register = "coil"
address = 1

[[devices.points]]
id = "zone-2"
register = "coil"
address = 2

[[devices.points]]
id = "zone-3"
register = "coil"
address = 3

[[alarms]]
point = "panel/zone-1"
equals = true
priority = 2
message = "{zone1_message}"
latching = false

[[alarms]]
point = "panel/zone-3"
equals = true
priority = 3
message = "Zone 3"
latching = false
{rules}"#
    )
}

const ZONE2_RULE: &str = r#"
[[alarms]]
point = "panel/zone-2"
equals = true
priority = 1
message = "Zone 2 (added by reload)"
latching = false
"#;

/// Connections the broker accepted from the gateway's client id.
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

fn events(sub: &MqttSub) -> Vec<Value> {
    sub.json_on("/events")
}

fn count(sub: &MqttSub, kind: &str, key: &str) -> usize {
    events(sub)
        .iter()
        .filter(|e| e["kind"] == kind && e["alarm"]["key"] == key)
        .count()
}

fn wait_event(sub: &MqttSub, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    sub.wait_json("/events", Duration::from_secs(20), what, pred)
}

#[test]
fn sighup_applies_a_new_rule_keeping_session_backlog_and_alarm_states() {
    let Some(mut broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(sim) = ModbusSim::start_tcp(&[1]) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let coil = |addr: u16, on: bool| rt.block_on(sim.write_coil(1, addr, on));
    let port = sim.tcp_port.expect("tcp simulator");

    // A persistent platform session: the broker queues what the gateway
    // delivers before this subscriber is back after the outage.
    let sub = MqttSub::persistent(broker.port(), &format!("{ROOT}#"), "platform-reload");
    sub.wait_subscribed(Duration::from_secs(10));
    let cfg_a = config(broker.port(), port, "Zone 1", "");
    let mut gw = GatewayProc::start_with("reload", &cfg_a);
    let pid = gw.pid().expect("gateway pid");
    wait_event(&sub, "gateway.started", |e| e["kind"] == "gateway.started");

    // Zone 1 goes active and stays active across every reload below.
    coil(1, true);
    wait_event(&sub, "zone-1 raised", |e| {
        e["kind"] == "alarm.raised" && e["alarm"]["key"] == "panel/zone-1"
    });
    // No rule for zone 2 yet: nothing happens.
    coil(2, true);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(count(&sub, "alarm.raised", "panel/zone-2"), 0);
    coil(2, false);

    // 1. Platform away: zone 3 trips and returns (the backlog), then the
    //    file gains a rule for zone 2 and the gateway reloads.
    broker.stop();
    coil(3, true);
    gw.wait_log("panel/zone-3", Duration::from_secs(10));
    coil(3, false);
    std::thread::sleep(Duration::from_millis(600));
    let backlog_last = gw_last_seq_from_log(&gw);
    gw.rewrite_config(&config(broker.port(), port, "Zone 1", ZONE2_RULE));
    signal(pid, "HUP");
    gw.wait_log("configuration reloaded", Duration::from_secs(20));
    coil(2, true);
    gw.wait_log("panel/zone-2", Duration::from_secs(10));
    assert!(gw.is_running(), "the gateway died reloading");

    // Back online: everything recorded before and after the reload arrives.
    broker.start();
    let raised2 = wait_event(&sub, "zone-2 raised (new rule)", |e| {
        e["kind"] == "alarm.raised" && e["alarm"]["key"] == "panel/zone-2"
    });
    assert_eq!(raised2["priority"], 1, "{raised2}");
    assert_eq!(raised2["alarm"]["message"], "Zone 2 (added by reload)");
    let seqs: BTreeSet<u64> = events(&sub)
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    let upto = raised2["seq"].as_u64().unwrap();
    let missing: Vec<u64> = (1..=upto).filter(|s| !seqs.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "seqs missing after the reload: {missing:?}"
    );
    assert!(backlog_last.is_none_or(|b| b < upto));
    assert_eq!(count(&sub, "alarm.raised", "panel/zone-3"), 1);
    assert_eq!(count(&sub, "alarm.cleared", "panel/zone-3"), 1);
    let changed: Vec<Value> = events(&sub)
        .into_iter()
        .filter(|e| e["kind"] == "config.changed")
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0]["detail"]["ok"], true);
    assert_eq!(
        changed[0]["detail"]["restarted"],
        serde_json::json!(["field"])
    );

    // 2. With the platform connected: a valid reload keeps the session.
    sub.wait_until(Duration::from_secs(10), "online after the outage", |msgs| {
        msgs.iter()
            .filter(|m| m.topic.ends_with("/status") && m.json()["state"] == "online")
            .count()
            >= 2
    });
    std::thread::sleep(Duration::from_millis(500));
    let connections = gateway_connections(&broker);
    let online = online_statuses(&sub);
    assert!(connections >= 2, "broker log:\n{}", broker.log());
    gw.rewrite_config(&config(broker.port(), port, "Zone 1 (renamed)", ZONE2_RULE));
    signal(pid, "HUP");
    wait_event(&sub, "second config.changed", |e| {
        e["kind"] == "config.changed" && e["detail"]["ok"] == true && e["seq"].as_u64() > Some(upto)
    });

    // 3. A broken file changes nothing.
    std::fs::write(
        gw.config_path(),
        std::fs::read_to_string(gw.config_path())
            .unwrap()
            .replace("equals = true\npriority = 1", "equals = true\npriority = 9"),
    )
    .unwrap();
    signal(pid, "HUP");
    let refused = wait_event(&sub, "config.changed ok:false", |e| {
        e["kind"] == "config.changed" && e["detail"]["ok"] == false
    });
    let problems = refused["detail"]["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().contains("priority")),
        "{refused}"
    );
    assert!(gw.log().contains("reload refused: configuration problem"));
    // The rules of the last good file still apply.
    coil(2, false);
    wait_event(&sub, "zone-2 cleared", |e| {
        e["kind"] == "alarm.cleared" && e["alarm"]["key"] == "panel/zone-2"
    });
    coil(1, false);
    let cleared1 = wait_event(&sub, "zone-1 cleared", |e| {
        e["kind"] == "alarm.cleared" && e["alarm"]["key"] == "panel/zone-1"
    });
    assert_eq!(cleared1["alarm"]["message"], "Zone 1 (renamed)");

    // Zone 1 stayed active across three reloads: raised once, cleared once.
    assert_eq!(count(&sub, "alarm.raised", "panel/zone-1"), 1);
    assert_eq!(count(&sub, "alarm.cleared", "panel/zone-1"), 1);
    // The session was never dropped while the broker was up.
    assert_eq!(
        gateway_connections(&broker),
        connections,
        "broker log:\n{}",
        broker.log()
    );
    assert_eq!(online_statuses(&sub), online, "the uplink reconnected");

    let exit = gw.sigterm(Duration::from_secs(15));
    assert!(exit.success(), "clean shutdown exited with {exit}");
}

/// The last seq the gateway logged as recorded (None before any).
fn gw_last_seq_from_log(gw: &GatewayProc) -> Option<u64> {
    gw.log()
        .lines()
        .filter(|l| l.contains("event recorded"))
        .filter_map(|l| {
            let i = l.find("seq=")? + 4;
            l[i..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .max()
}
