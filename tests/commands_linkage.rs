//! End-to-end: commands from the platform, fire linkage and arming, between
//! real peers: pymodbus device simulators (a fire panel, an access-control
//! panel, an HVAC unit, a fence controller) and a mosquitto broker standing
//! in for the central platform.
//!
//! A missing peer skips a scenario loudly, or fails it under
//! `REQUIRE_PEERS=1` (CI).

mod common;
#[path = "common/modbus_probe.rs"]
mod modbus_probe;
#[path = "common/modbus_sim.rs"]
mod modbus_sim;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use common::gateway::GatewayProc;
use modbus_probe::Probe;
use modbus_sim::ModbusSim;
use mosquitto::{Mosquitto, Subscriber};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const ROOT: &str = "estate/v1/e2e/gw/";

fn topic(t: &str) -> String {
    format!("{ROOT}{t}")
}

/// Gateway config: journal in the temp dir, fast reconnects, telemetry off.
fn config(broker: u16, body: &str) -> String {
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
port = {broker}
heartbeat_s = 1
reconnect_min_s = 0.2
reconnect_max_s = 1

[telemetry]
enabled = false
{body}"#
    )
}

/// A Modbus TCP device section with fast polls.
fn device(id: &str, category: &str, zone: &str, port: u16, poll_s: f64) -> String {
    format!(
        r#"
[[devices]]
id = "{id}"
category = "{category}"
zone = "{zone}"
poll_interval_s = {poll_s}
timeout_s = 0.5
[devices.modbus]
host = "127.0.0.1"
port = {port}
unit = 1
backoff_max_s = 0.5
"#
    )
}

/// Publish a command and wait for its `cmd_result` and `command.executed`.
async fn command(sub: &mut Subscriber, id: &str, payload: &[u8]) -> (Value, Value) {
    let (result, event, _) = command_seen(sub, id, payload).await;
    (result, event)
}

/// [`command`], also returning the other events that arrived meanwhile, in
/// order (an alarm's own event precedes the command's `command.executed`).
async fn command_seen(
    sub: &mut Subscriber,
    id: &str,
    payload: &[u8],
) -> (Value, Value, Vec<Value>) {
    sub.publish(&topic(&format!("cmd/{id}")), payload).await;
    let mut result = None;
    let mut event = None;
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while result.is_none() || event.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = sub.next(left).await.unwrap_or_else(|| {
            panic!("command {id}: result {result:?}, event {event:?} after 10 s")
        });
        let v = m.json();
        if m.topic.ends_with(&format!("/cmd_result/{id}")) {
            result = Some(v);
        } else if m.topic.ends_with("/events")
            && v["kind"] == "command.executed"
            && v["detail"]["request_id"] == id
        {
            event = Some(v);
        } else if m.topic.ends_with("/events") {
            seen.push(v);
        }
    }
    (result.unwrap(), event.unwrap(), seen)
}

/// The first event matching `pred`, from `seen` (drained up to it) and then
/// from the subscriber; also returns the events passed over on the way.
async fn find_event(
    seen: &mut Vec<Value>,
    sub: &mut Subscriber,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> (Value, Vec<Value>) {
    let mut passed = Vec::new();
    while !seen.is_empty() {
        let v = seen.remove(0);
        if pred(&v) {
            return (v, passed);
        }
        passed.push(v);
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = sub
            .next(left)
            .await
            .unwrap_or_else(|| panic!("no {what} within {timeout:?}; passed over {passed:?}"));
        if !m.topic.ends_with("/events") {
            continue;
        }
        let v = m.json();
        if pred(&v) {
            return (v, passed);
        }
        passed.push(v);
    }
}

/// A predicate: an event of `kind` for the alarm `key` (in `state`, if given).
fn alarm_event<'a>(
    kind: &'a str,
    key: &'a str,
    state: Option<&'a str>,
) -> impl Fn(&Value) -> bool + 'a {
    move |v| {
        v["kind"] == kind
            && v["alarm"]["key"] == key
            && state.is_none_or(|s| v["alarm"]["state"] == s)
    }
}

fn rfc3339(v: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap_or_else(|e| panic!("{v}: {e}"))
        .with_timezone(&chrono::Utc)
}

/// Subscribe as the platform and wait until the gateway subscribed to its
/// command topic (a probe command is answered).
async fn platform(broker: u16) -> Subscriber {
    let mut sub = Subscriber::connect(
        broker,
        "platform",
        &[topic("events"), topic("cmd_result/+")],
        false,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        sub.publish(&topic("cmd/probe"), br#"{"action":"noop"}"#)
            .await;
        if let Some(m) = sub.next(Duration::from_millis(500)).await {
            if m.topic.ends_with("/cmd_result/probe") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "gateway never took commands");
    }
    sub
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_write_a_coil_and_every_refusal_changes_nothing() {
    let Some(broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(hvac) = ModbusSim::start_tcp(&[1]) else {
        return;
    };
    let Some(access) = ModbusSim::start_tcp(&[1]) else {
        return;
    };
    let body = format!(
        r#"{hvac}
[[devices.points]]
id = "fan-run"
register = "coil"
address = 0
writable = true
[[devices.points]]
id = "damper-open"
register = "coil"
address = 1
writable = true
[[devices.points]]
id = "filter-alarm"
register = "coil"
address = 2
[[devices.points]]
id = "setpoint"
register = "holding"
address = 0
type = "i16"
scale = 0.1
writable = true
{access}
[[devices.points]]
id = "door-1-release"
register = "coil"
address = 0
writable = true

[[alarms]]
point = "hvac-1/filter-alarm"
equals = true
priority = 4
message = "AHU filter dirty"

[commands]
write_targets = [
  {{ point = "hvac-1/fan-run" }},
  {{ point = "hvac-1/f*" }},
  {{ point = "hvac-1/setpoint", min = 16.0, max = 28.0 }},
]
[[commands.doors]]
id = "gate-main"
output = "access-panel/door-1-release"
pulse_s = 1
max_pulse_s = 5
"#,
        hvac = device("hvac-1", "hvac", "plant-room", hvac.tcp_port.unwrap(), 0.1),
        access = device(
            "access-panel",
            "access",
            "main-gate",
            access.tcp_port.unwrap(),
            0.1
        ),
    );
    let _gw = GatewayProc::start_with("commands", &config(broker.port(), &body));
    let mut sub = platform(broker.port()).await;
    let mut hvac_probe = Probe::connect(hvac.control_port, 1).await;
    let mut door_probe = Probe::connect(access.control_port, 1).await;

    // A write: the coil changes on the device, the result and the audit
    // event arrive with the operator.
    assert!(!hvac_probe.coils(0, 1).await[0]);
    let (r, e) = command(
        &mut sub,
        "w-1",
        br#"{"action":"write_point","target":"hvac-1/fan-run","value":true,"operator":"control-room/zhang","expires_at":"2099-01-01T00:00:00.000Z"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["request_id"], "w-1");
    assert!(r["executed_at"].is_string());
    assert!(hvac_probe.coils(0, 1).await[0], "fan-run coil written");
    assert_eq!(e["detail"]["operator"], "control-room/zhang");
    assert_eq!(e["detail"]["ok"], true);
    assert_eq!(e["detail"]["action"], "write_point");
    assert_eq!(e["detail"]["target"], "hvac-1/fan-run");

    // A holding register with scaling: 21.5 °C is raw 215.
    let (r, _) = command(
        &mut sub,
        "w-2",
        br#"{"action":"write_point","target":"hvac-1/setpoint","value":21.5,"operator":"op"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(hvac_probe.holding(0, 1).await[0], 215);

    // Every refusal: ok false with a reason, nothing changes on the devices
    // (checked after each one: a refused pulse would show before it ends).
    let before = (hvac_probe.snapshot().await, door_probe.snapshot().await);
    let refusals: [(&str, &[u8], &str); 11] = [
        ("r-expired", br#"{"action":"write_point","target":"hvac-1/fan-run","value":false,"operator":"op","expires_at":"2020-01-01T00:00:00.000Z"}"#, "expired"),
        ("r-allow", br#"{"action":"write_point","target":"access-panel/door-1-release","value":true,"operator":"op"}"#, "not on the allow-list"),
        ("r-writable", br#"{"action":"write_point","target":"hvac-1/filter-alarm","value":true,"operator":"op"}"#, "not writable"),
        ("r-type", br#"{"action":"write_point","target":"hvac-1/fan-run","value":"off","operator":"op"}"#, "expects true or false"),
        ("r-range", br#"{"action":"write_point","target":"hvac-1/setpoint","value":40,"operator":"op"}"#, "outside the allowed range"),
        ("r-door", br#"{"action":"open_door","target":"gate-main","value":60,"operator":"op"}"#, "out of range"),
        ("r-door-type", br#"{"action":"open_door","target":"gate-main","value":"1","operator":"op"}"#, "must be a number"),
        ("r-unknown", br#"{"action":"self_destruct","target":"hvac-1/fan-run","operator":"op"}"#, "unknown action"),
        ("r-malformed", br#"{"action":"write_point","target":"hvac-1/fan-run","value":fa"#, "malformed"),
        ("r-fieldtype", br#"{"action":"open_door","target":"gate-main","operator":"control-room/zhang","expires_at":12}"#, "malformed"),
        ("r-notarget", br#"{"action":"open_door","operator":"op"}"#, "needs a target"),
    ];
    for (id, payload, reason) in refusals {
        let (r, e) = command(&mut sub, id, payload).await;
        assert_eq!(r["ok"], false, "{id}: {r}");
        let err = r["error"].as_str().unwrap_or_default();
        assert!(err.contains(reason), "{id}: {err:?} lacks {reason:?}");
        assert_eq!(e["detail"]["ok"], false, "{id}: {e}");
        assert_eq!(e["detail"]["error"], r["error"]);
        // Whatever the command names is recorded, refused or not.
        if let Ok(sent) = serde_json::from_slice::<Value>(payload) {
            for field in ["action", "target", "operator"] {
                if sent[field].is_string() {
                    assert_eq!(e["detail"][field], sent[field], "{id}: event {field}");
                    assert_eq!(r[field], sent[field], "{id}: result {field}");
                }
            }
        }
        let now = (hvac_probe.snapshot().await, door_probe.snapshot().await);
        assert_eq!(before, now, "refused command {id} changed a device");
    }

    // A request id no result topic can carry (over 128 bytes) is refused
    // too: no `cmd_result`, but its `command.executed` event, id cut short.
    let long_id = "x".repeat(200);
    sub.publish(
        &topic(&format!("cmd/{long_id}")),
        br#"{"action":"write_point","target":"hvac-1/fan-run","value":false,"operator":"op"}"#,
    )
    .await;
    let (e, _) = find_event(
        &mut Vec::new(),
        &mut sub,
        "the refused long request id",
        Duration::from_secs(10),
        |v| v["kind"] == "command.executed" && v["detail"]["request_id"] == long_id[..128],
    )
    .await;
    assert_eq!(e["detail"]["ok"], false, "{e}");
    let err = e["detail"]["error"].as_str().unwrap_or_default();
    assert!(err.contains("invalid request id"), "{err:?}");
    assert_eq!(e["detail"]["target"], "hvac-1/fan-run");
    let now = (hvac_probe.snapshot().await, door_probe.snapshot().await);
    assert_eq!(before, now, "a refused command changed a device");

    // open_door pulses the release output: on, then off after 1 s.
    let t0 = Instant::now();
    let (r, _) = command(
        &mut sub,
        "d-1",
        br#"{"action":"open_door","target":"gate-main","operator":"control-room/li"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(door_probe.coils(0, 1).await[0], "door released");
    let off = door_probe
        .wait_coil(0, false, t0, Duration::from_secs(5))
        .await
        .expect("door release ends");
    assert!(
        off >= Duration::from_millis(900),
        "released for only {off:?}"
    );
}

/// `ack_alarm` and `shelve_alarm` from the platform's command topic: the
/// alarm's own events reach the platform with the operator, a shelf ends on
/// time and the still-active alarm returns, and fire and priority-1 alarms
/// are never shelved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_and_shelve_alarms_through_the_command_topic() {
    let Some(broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(hvac) = ModbusSim::start_tcp(&[1]) else {
        return;
    };
    let Some(fire) = ModbusSim::start_tcp(&[1]) else {
        return;
    };
    let body = format!(
        r#"{hvac}
[[devices.points]]
id = "filter-alarm"
register = "coil"
address = 2
{fire}
[[devices.points]]
id = "zone-3"
register = "coil"
address = 3
[[devices.points]]
id = "panic-lobby"
register = "coil"
address = 4

[[alarms]]
point = "hvac-1/filter-alarm"
equals = true
priority = 4
message = "AHU filter dirty"

[[alarms]]
point = "fire-panel-a/zone-3"
equals = true
priority = 2
message = "Fire: villa 12 smoke detectors"

[[alarms]]
point = "fire-panel-a/panic-lobby"
equals = true
priority = 1
category = "intrusion"
message = "Panic button: villa 12 lobby"

[commands]
max_shelve_s = 3600
"#,
        hvac = device("hvac-1", "hvac", "plant-room", hvac.tcp_port.unwrap(), 0.1),
        fire = device(
            "fire-panel-a",
            "fire",
            "villa-12",
            fire.tcp_port.unwrap(),
            0.1
        ),
    );
    let _gw = GatewayProc::start_with("ack-shelve", &config(broker.port(), &body));
    let mut sub = platform(broker.port()).await;
    const FILTER: &str = "hvac-1/filter-alarm";

    // The filter alarm trips on the device.
    hvac.write_coil(1, 2, true).await;
    let (raised, _) = find_event(
        &mut Vec::new(),
        &mut sub,
        "filter alarm raised",
        Duration::from_secs(10),
        alarm_event("alarm.raised", FILTER, Some("active_unacked")),
    )
    .await;
    assert_eq!(raised["priority"], 4, "{raised}");

    // Acknowledged from the control room: done, audited, and the alarm's
    // own event carries the operator and the comment.
    let (r, e, mut seen) = command_seen(
        &mut sub,
        "ack-1",
        br#"{"action":"ack_alarm","target":"hvac-1/filter-alarm","operator":"control-room/zhang","comment":"filter change ordered","expires_at":"2099-01-01T00:00:00.000Z"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(e["detail"]["ok"], true, "{e}");
    assert_eq!(e["detail"]["action"], "ack_alarm");
    assert_eq!(e["detail"]["target"], FILTER);
    assert_eq!(e["detail"]["operator"], "control-room/zhang");
    let (ack, _) = find_event(
        &mut seen,
        &mut sub,
        "alarm.acknowledged",
        Duration::from_secs(10),
        alarm_event("alarm.acknowledged", FILTER, None),
    )
    .await;
    assert_eq!(ack["alarm"]["state"], "active_acked", "{ack}");
    assert_eq!(ack["alarm"]["operator"], "control-room/zhang", "{ack}");
    assert_eq!(ack["alarm"]["comment"], "filter change ordered", "{ack}");
    assert_eq!(ack["priority"], 4);
    assert_eq!(ack["category"], "hvac");
    // Recorded before the command reported done.
    assert!(
        ack["seq"].as_u64().unwrap() < e["seq"].as_u64().unwrap(),
        "{ack} / {e}"
    );
    // A second acknowledgement has nothing to acknowledge.
    let (r, _) = command(
        &mut sub,
        "ack-2",
        br#"{"action":"ack_alarm","target":"hvac-1/filter-alarm","operator":"control-room/zhang"}"#,
    )
    .await;
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");

    // Shelved for 2 s while its condition is still active.
    let t_shelve = Instant::now();
    let (r, e, mut seen) = command_seen(
        &mut sub,
        "shelve-1",
        br#"{"action":"shelve_alarm","target":"hvac-1/filter-alarm","value":2,"operator":"control-room/li","comment":"spare filter on its way"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(e["detail"]["ok"], true, "{e}");
    assert_eq!(e["detail"]["action"], "shelve_alarm");
    assert_eq!(e["detail"]["operator"], "control-room/li");
    assert_eq!(e["detail"]["value"], 2);
    let (shelved, _) = find_event(
        &mut seen,
        &mut sub,
        "alarm.shelved (shelved)",
        Duration::from_secs(10),
        alarm_event("alarm.shelved", FILTER, Some("shelved")),
    )
    .await;
    assert_eq!(shelved["alarm"]["operator"], "control-room/li", "{shelved}");
    assert_eq!(shelved["alarm"]["comment"], "spare filter on its way");
    assert_eq!(shelved["detail"]["duration_s"], 2.0, "{shelved}");
    let until = rfc3339(&shelved["detail"]["shelved_until"]);
    let shelf = until - rfc3339(&shelved["ts"]);
    assert_eq!(shelf, chrono::Duration::seconds(2), "{shelved}");
    assert!(until > rfc3339(&r["executed_at"]), "{shelved} / {r}");

    // The shelf ends: judged afresh, the condition still holds, so the
    // alarm returns unacknowledged and is raised again. Nothing in between.
    let (back, passed) = find_event(
        &mut seen,
        &mut sub,
        "alarm.shelved (shelf over)",
        Duration::from_secs(10),
        alarm_event("alarm.shelved", FILTER, Some("active_unacked")),
    )
    .await;
    let waited = t_shelve.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "shelf ended after {waited:?}"
    );
    assert!(rfc3339(&back["ts"]) >= until, "{back}: before {until}");
    assert_eq!(back["detail"]["unshelved"], "expired", "{back}");
    assert!(back["alarm"]["operator"].is_null(), "{back}");
    assert!(
        !passed.iter().any(|v| v["alarm"]["key"] == FILTER),
        "the shelved alarm reported {passed:?}"
    );
    let (again, passed) = find_event(
        &mut Vec::new(),
        &mut sub,
        "alarm.raised after the shelf",
        Duration::from_secs(10),
        alarm_event("alarm.raised", FILTER, Some("active_unacked")),
    )
    .await;
    assert_eq!(again["priority"], 4, "{again}");
    assert!(again["seq"].as_u64().unwrap() > back["seq"].as_u64().unwrap());
    assert!(
        passed.iter().all(|v| v["alarm"]["key"] != FILTER),
        "{passed:?}"
    );

    // Fire and priority-1 (panic) alarms are never shelved: refused with
    // the reason, and the alarm is untouched (still unacknowledged).
    fire.write_coil(1, 3, true).await;
    fire.write_coil(1, 4, true).await;
    let mut raised = std::collections::BTreeSet::new();
    while raised.len() < 2 {
        let (v, _) = find_event(
            &mut Vec::new(),
            &mut sub,
            "fire and panic alarms raised",
            Duration::from_secs(10),
            |v| {
                v["kind"] == "alarm.raised"
                    && v["alarm"]["state"] == "active_unacked"
                    && v["source"]["device"] == "fire-panel-a"
            },
        )
        .await;
        raised.insert(v["alarm"]["key"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(
        raised.into_iter().collect::<Vec<_>>(),
        ["fire-panel-a/panic-lobby", "fire-panel-a/zone-3"]
    );
    for (id, key) in [
        ("shelve-fire", "fire-panel-a/zone-3"),
        ("shelve-panic", "fire-panel-a/panic-lobby"),
    ] {
        let payload = json!({"action": "shelve_alarm", "target": key, "value": 600, "operator": "control-room/li"});
        let (r, e, seen) = command_seen(&mut sub, id, payload.to_string().as_bytes()).await;
        assert_eq!(r["ok"], false, "{id}: {r}");
        let err = r["error"].as_str().unwrap_or_default();
        assert!(
            err.contains(key) && err.contains("life-safety") && err.contains("cannot be shelved"),
            "{id}: {err:?}"
        );
        assert_eq!(e["detail"]["ok"], false, "{id}: {e}");
        assert_eq!(e["detail"]["error"], r["error"]);
        assert_eq!(e["detail"]["operator"], "control-room/li");
        assert!(
            !seen.iter().any(|v| v["alarm"]["key"] == key),
            "{id}: refused, yet {seen:?}"
        );
        let ack = json!({"action": "ack_alarm", "target": key, "operator": "control-room/li"});
        let (r, _, mut seen) =
            command_seen(&mut sub, &format!("{id}-ack"), ack.to_string().as_bytes()).await;
        assert_eq!(
            r["ok"], true,
            "{id}: not unacknowledged after the refusal: {r}"
        );
        let (acked, passed) = find_event(
            &mut seen,
            &mut sub,
            "alarm.acknowledged",
            Duration::from_secs(10),
            alarm_event("alarm.acknowledged", key, Some("active_acked")),
        )
        .await;
        assert_eq!(
            acked["priority"],
            if key.ends_with("zone-3") { 2 } else { 1 }
        );
        assert!(
            passed.iter().all(|v| v["alarm"]["key"] != key),
            "{passed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_releases_doors_and_stops_fans_with_the_uplink_down() {
    let Some(mut broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(fire) = ModbusSim::start_tcp(&[1]) else {
        return;
    };
    let Some(access) = ModbusSim::start_tcp(&[1]) else {
        return;
    };
    let Some(hvac) = ModbusSim::start_tcp(&[1]) else {
        return;
    };
    // The air handler runs before the fire.
    hvac.write_coil(1, 0, true).await;
    let body = format!(
        r#"{fire}
[[devices.points]]
id = "zone-3"
register = "coil"
address = 3
{access}
[[devices.points]]
id = "escape-east-release"
register = "coil"
address = 9
writable = true
{hvac}
[[devices.points]]
id = "fan-run"
register = "coil"
address = 0
writable = true

[[alarms]]
point = "fire-panel-a/zone-3"
equals = true
priority = 1
message = "Fire: villa 12 smoke detectors"

[[linkage]]
id = "fire-release-escape-doors"
category = "fire"
zone = "villa-*"
priority_max = 1
[[linkage.actions]]
type = "write"
point = "access-panel/escape-east-release"
value = true
[[linkage.actions]]
type = "notify"
to = "fire-wardens"

[[linkage]]
id = "fire-stop-air-handlers"
category = "fire"
[[linkage.actions]]
type = "write"
point = "hvac-1/fan-run"
value = false

# The notify action's tier (an SMS gateway that is not there: the push
# waits in the journal, the linkage outcome does not).
[[push.channels]]
name = "wardens-sms"
kind = "sms"
url = "http://127.0.0.1:9/sms"
[[push.tiers]]
name = "fire-wardens"
channels = ["wardens-sms"]
phones = ["13800000001"]
[[push.rules]]
name = "life-safety"
priorities = [1]
tiers = ["fire-wardens"]
"#,
        fire = device(
            "fire-panel-a",
            "fire",
            "villa-12",
            fire.tcp_port.unwrap(),
            0.1
        )
        .replace(
            "category = \"fire\"",
            "category = \"fire\"\nlife_safety = true"
        ),
        access = device(
            "access-panel",
            "access",
            "villa-12",
            access.tcp_port.unwrap(),
            0.5
        ),
        hvac = device("hvac-1", "hvac", "villa-12", hvac.tcp_port.unwrap(), 0.5),
    );
    let _gw = GatewayProc::start_with("fire-linkage", &config(broker.port(), &body));
    let sub = platform(broker.port()).await;
    drop(sub);
    let mut door = Probe::connect(access.control_port, 1).await;
    let mut fan = Probe::connect(hvac.control_port, 1).await;
    assert!(!door.coils(9, 1).await[0]);
    assert!(fan.coils(0, 1).await[0]);

    // A persistent platform session: the broker keeps what the gateway
    // delivers after the outage for it, however the reconnects interleave.
    let mut sub = Subscriber::connect(broker.port(), "platform-2", &[topic("events")], true).await;
    // The platform is unreachable: actions must not depend on it.
    broker.stop();
    let t0 = Instant::now();
    fire.write_coil(1, 3, true).await;
    let to_door = door
        .wait_coil(9, true, t0, Duration::from_secs(5))
        .await
        .expect("escape door released");
    let to_fan = fan
        .wait_coil(0, false, t0, Duration::from_secs(5))
        .await
        .expect("fan stopped");
    eprintln!("fire trip → door release {to_door:?}, → fan stop {to_fan:?} (poll interval 100 ms)");
    // One fire-panel poll (100 ms) plus the write, with slack for a shared machine.
    assert!(to_door < Duration::from_secs(1), "{to_door:?}");
    assert!(to_fan < Duration::from_secs(1), "{to_fan:?}");

    // Back online: the alarm and every action's outcome reach the platform.
    broker.start();
    let mut outcomes = Vec::new();
    let mut raised = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while outcomes.len() < 3 || !raised {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(m) = sub.next(left).await else {
            panic!("after reconnect: raised {raised}, outcomes {outcomes:?}");
        };
        let v = m.json();
        match v["kind"].as_str() {
            Some("alarm.raised") if v["alarm"]["key"] == "fire-panel-a/zone-3" => raised = true,
            Some("linkage.executed") => outcomes.push(v),
            _ => {}
        }
    }
    let by_target = |t: &str| {
        outcomes
            .iter()
            .find(|o| o["detail"]["target"] == t)
            .unwrap_or_else(|| panic!("no outcome for {t}: {outcomes:?}"))
            .clone()
    };
    let d = by_target("access-panel/escape-east-release");
    assert_eq!(d["detail"]["ok"], true, "{d}");
    assert_eq!(d["detail"]["rule"], "fire-release-escape-doors");
    assert_eq!(d["detail"]["trigger"]["key"], "fire-panel-a/zone-3");
    assert_eq!(by_target("hvac-1/fan-run")["detail"]["ok"], true);
    // Handed to the push channels (delivery is theirs: push.sent).
    let n = by_target("fire-wardens");
    assert_eq!(n["detail"]["action"], "notify");
    assert_eq!(n["detail"]["ok"], true, "{n}");
}

/// Arming with a fake clock, in process: a fence trip outside the armed
/// window is recorded at priority 5, inside it raised at its priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_trip_inside_and_outside_the_armed_window() {
    use chrono::TimeZone;
    use estate_gateway::arming::task::FakeClock;
    let Some(broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(fence) = ModbusSim::start_tcp(&[1]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        r#"{fence}
[[devices.points]]
id = "zone-1-alarm"
register = "coil"
address = 0

[[alarms]]
point = "fence-north/zone-1-alarm"
equals = true
priority = 2
message = "Perimeter breach: north wall zone 1"

[arming]
time_zone = "Asia/Shanghai"
[[arming.zones]]
id = "perimeter-north"
[[arming.zones.schedule]]
from = "22:00"
to = "06:00"
"#,
        fence = device(
            "fence-north",
            "perimeter",
            "perimeter-north",
            fence.tcp_port.unwrap(),
            0.1
        ),
    );
    let text = config(broker.port(), &body).replace("@DIR@", &dir.path().display().to_string());
    let cfg = estate_gateway::config::load_str(&text, std::path::Path::new("gw.toml")).unwrap();
    let shanghai = |h, m| {
        // Asia/Shanghai: UTC+8 all year.
        chrono::FixedOffset::east_opt(8 * 3600)
            .unwrap()
            .with_ymd_and_hms(2026, 11, 27, h, m, 0)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let clock = std::sync::Arc::new(FakeClock::new(shanghai(12, 0)));
    // Subscribed before the gateway starts: its first events are not missed.
    let mut sub = Subscriber::connect(broker.port(), "platform", &[topic("events")], false).await;
    let gw = estate_gateway::app::Gateway::start_with_clock(cfg, clock.clone())
        .await
        .unwrap();
    let ev = sub
        .next_event("zone.disarmed", Duration::from_secs(10))
        .await;
    assert_eq!(ev["source"]["zone"], "perimeter-north");
    assert_eq!(ev["detail"]["source"], "initial");

    // Noon: outside the window. Recorded, not raised at alarm priority.
    fence.write_coil(1, 0, true).await;
    let ev = sub
        .next_event("alarm.raised", Duration::from_secs(10))
        .await;
    assert_eq!(ev["priority"], 5, "{ev}");
    assert_eq!(ev["detail"]["zone_disarmed"], true);
    fence.write_coil(1, 0, false).await;
    let ev = sub
        .next_event("alarm.cleared", Duration::from_secs(10))
        .await;
    assert_eq!(ev["priority"], 5);

    // 22:00 in Shanghai: the schedule arms the zone.
    clock.set(shanghai(22, 0));
    let ev = sub.next_event("zone.armed", Duration::from_secs(10)).await;
    assert_eq!(ev["detail"]["source"], "schedule");
    fence.write_coil(1, 0, true).await;
    let ev = sub
        .next_event("alarm.raised", Duration::from_secs(10))
        .await;
    assert_eq!(ev["priority"], 2, "{ev}");
    assert!(ev["detail"].is_null(), "{ev}");
    assert_eq!(ev["alarm"]["key"], "fence-north/zone-1-alarm");

    // An operator disarms it through the one command path (as the web page will).
    let out = gw
        .commands()
        .execute(
            &serde_json::from_value(json!({"action": "disarm_zone", "target": "perimeter-north", "operator": "guard/li"}))
                .unwrap(),
            &estate_gateway::command::Origin::Local {
                session: "test".into(),
            },
        )
        .await;
    assert!(out.ok, "{out:?}");
    let ev = sub
        .next_event("zone.disarmed", Duration::from_secs(10))
        .await;
    assert_eq!(ev["detail"]["operator"], "guard/li");
    gw.stop();
    gw.wait().await;
}
