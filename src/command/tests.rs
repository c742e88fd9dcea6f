//! The command checks: every refusal, and what accepted commands become.

use super::check::{plan, value_from_json, Command, Plan};
use super::{audit_detail, parse, refusal, result_json, CommandSummary, Origin, Outcome};
use crate::config::{load_str, LoadedConfig};
use crate::event::Timestamp;
use crate::point::Value;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const CONFIG: &str = r#"
[site]
id = "palm-bay"
gateway = "gw-north-1"

[uplink]
host = "127.0.0.1"

[[devices]]
id = "hvac-1"
category = "hvac"
[devices.modbus]
host = "127.0.0.1"
[[devices.points]]
id = "fan-run"
register = "coil"
address = 0
writable = true
[[devices.points]]
id = "setpoint"
register = "holding"
address = 0
type = "i16"
scale = 0.1
writable = true
[[devices.points]]
id = "mode"
register = "holding"
address = 1
type = "u16"
writable = true
[[devices.points]]
id = "supply-temp"
register = "holding"
address = 2
type = "f32"

[[devices]]
id = "access-panel"
category = "access"
[devices.modbus]
host = "127.0.0.1"
port = 5030
[[devices.points]]
id = "door-1-release"
register = "coil"
address = 0
writable = true

[commands]
write_targets = [
  { point = "hvac-*/fan-run" },
  { point = "hvac-1/setpoint", min = 16.0, max = 28.0 },
  { point = "hvac-1/mode" },
  { point = "hvac-1/su*" },
]
[[commands.doors]]
id = "gate-main"
output = "access-panel/door-1-release"
pulse_s = 5
max_pulse_s = 20

[arming]
time_zone = "Asia/Shanghai"
[[arming.zones]]
id = "perimeter-north"
"#;

fn cfg() -> LoadedConfig {
    load_str(CONFIG, Path::new("t.toml")).expect("config loads")
}

fn now() -> Timestamp {
    Timestamp::from_unix_ms(1_795_813_445_000).unwrap()
}

fn cmd(v: serde_json::Value) -> Command {
    serde_json::from_value(v).unwrap()
}

fn refused(c: &LoadedConfig, v: serde_json::Value) -> String {
    match plan(c, &cmd(v.clone()), now()) {
        Ok(p) => panic!("{v} accepted as {p:?}"),
        Err(e) => e,
    }
}

#[test]
fn write_point_accepted() {
    let c = cfg();
    let p = plan(
        &c,
        &cmd(json!({"action": "write_point", "target": "hvac-1/fan-run", "value": false, "operator": "control-room/zhang"})),
        now(),
    )
    .unwrap();
    assert_eq!(
        p,
        Plan::Write {
            device: "hvac-1".into(),
            point: c.points.find("hvac-1/fan-run").unwrap(),
            value: Value::Bool(false)
        }
    );
    let p = plan(
        &c,
        &cmd(json!({"action": "write_point", "target": "hvac-1/setpoint", "value": 21.5})),
        now(),
    )
    .unwrap();
    assert!(matches!(p, Plan::Write { value: Value::Float(f), .. } if f == 21.5));
}

#[test]
fn every_refusal_has_a_reason() {
    let c = cfg();
    let past = "2026-11-26T21:04:05.123Z";
    let cases = [
        (
            json!({"action": "write_point", "target": "hvac-1/fan-run", "value": true, "expires_at": past}),
            "expired",
        ),
        (json!({"action": "reboot", "target": "x"}), "unknown action"),
        (
            json!({"action": "write_point", "target": "hvac-1/supply-temp", "value": 3.0}),
            "not writable",
        ),
        (
            json!({"action": "write_point", "target": "access-panel/door-1-release", "value": true}),
            "not on the allow-list",
        ),
        (
            json!({"action": "write_point", "target": "hvac-1/fan-run", "value": 1}),
            "expects true or false",
        ),
        (
            json!({"action": "write_point", "target": "hvac-1/fan-run", "value": "on"}),
            "expects true or false",
        ),
        (
            json!({"action": "write_point", "target": "hvac-1/setpoint", "value": true}),
            "expects a number",
        ),
        (
            json!({"action": "write_point", "target": "hvac-1/setpoint", "value": 35}),
            "outside the allowed range",
        ),
        (
            json!({"action": "write_point", "target": "hvac-1/setpoint", "value": 15.9}),
            "outside the allowed range",
        ),
        (
            json!({"action": "write_point", "target": "hvac-1/mode", "value": 70000}),
            "does not fit",
        ),
        (
            json!({"action": "write_point", "target": "hvac-1/mode", "value": -1}),
            "does not fit",
        ),
        (
            json!({"action": "write_point", "target": "hvac-1/mode", "value": 1.5}),
            "not an integer",
        ),
        (
            json!({"action": "write_point", "target": "hvac-1/fan-run"}),
            "needs a value",
        ),
        (json!({"action": "write_point"}), "needs a target"),
        (
            json!({"action": "open_door", "target": "gate-back"}),
            "not a configured door",
        ),
        (
            json!({"action": "open_door", "target": "gate-main", "value": 60}),
            "out of range",
        ),
        (
            json!({"action": "open_door", "target": "gate-main", "value": "long"}),
            "number of seconds",
        ),
        (
            json!({"action": "arm_zone", "target": "villa-12"}),
            "not an arming zone",
        ),
        (
            json!({"action": "shelve_alarm", "target": "fence/zone-1"}),
            "shelving time",
        ),
        (
            json!({"action": "shelve_alarm", "target": "fence/zone-1", "value": 86400 * 2}),
            "out of range",
        ),
    ];
    for (v, reason) in cases {
        let e = refused(&c, v.clone());
        assert!(e.contains(reason), "{v}: {e:?} lacks {reason:?}");
    }
}

#[test]
fn actions_off_the_allow_list_are_refused() {
    let text = CONFIG.replace(
        "[commands]\n",
        "[commands]\nallowed_actions = [\"ack_alarm\"]\n",
    );
    let c = load_str(&text, Path::new("t.toml")).unwrap();
    let e = refused(
        &c,
        json!({"action": "write_point", "target": "hvac-1/fan-run", "value": true}),
    );
    assert!(e.contains("not allowed"), "{e}");
    assert!(plan(
        &c,
        &cmd(json!({"action": "ack_alarm", "target": "a/b"})),
        now()
    )
    .is_ok());
}

#[test]
fn open_door_and_arming_plans() {
    let c = cfg();
    let p = plan(
        &c,
        &cmd(json!({"action": "open_door", "target": "gate-main"})),
        now(),
    )
    .unwrap();
    assert!(
        matches!(p, Plan::OpenDoor { value: true, pulse, .. } if pulse == Duration::from_secs(5))
    );
    let p = plan(
        &c,
        &cmd(json!({"action": "open_door", "target": "gate-main", "value": 12})),
        now(),
    )
    .unwrap();
    assert!(matches!(p, Plan::OpenDoor { pulse, .. } if pulse == Duration::from_secs(12)));
    let p = plan(
        &c,
        &cmd(json!({"action": "disarm_zone", "target": "perimeter-north", "expires_at": "2099-01-01T00:00:00.000Z"})),
        now(),
    )
    .unwrap();
    assert_eq!(
        p,
        Plan::Arm {
            zone: "perimeter-north".into(),
            armed: false
        }
    );
}

#[test]
fn config_refuses_bad_allow_lists() {
    let text = CONFIG
        .replace(
            "{ point = \"hvac-1/su*\" },",
            "{ point = \"hvac-1/supply-temp\" },\n  { point = \"nothing/here\" },",
        )
        .replace("max_pulse_s = 20", "max_pulse_s = 2")
        + "[[commands.doors]]\nid = \"gate-2\"\noutput = \"hvac-1/supply-temp\"\n";
    let err = load_str(&text, Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    for needle in [
        "\"hvac-1/supply-temp\" is not writable",
        "no point matches \"nothing/here\"",
        "must be at least pulse_s",
        "not a bool output",
    ] {
        assert!(err.contains(needle), "{needle:?} missing in:\n{err}");
    }
}

fn summary(action: Option<&str>, target: Option<&str>, operator: Option<&str>) -> CommandSummary {
    CommandSummary {
        action: action.map(str::to_string),
        target: target.map(str::to_string),
        operator: operator.map(str::to_string),
    }
}

#[test]
fn unreadable_commands_keep_action_target_and_operator() {
    let cases: [(&[u8], CommandSummary, &str); 7] = [
        // Not JSON at all: nothing to keep.
        (
            br#"{"action":"write_point","target":"hvac-1/fan-run","value":fa"#,
            CommandSummary::default(),
            "malformed command",
        ),
        // A wrongly typed field: the rest is kept.
        (
            br#"{"action":"write_point","target":"hvac-1/fan-run","value":true,"operator":"control-room/zhang","expires_at":12}"#,
            summary(Some("write_point"), Some("hvac-1/fan-run"), Some("control-room/zhang")),
            "invalid type",
        ),
        (
            br#"{"action":"ack_alarm","target":"fence/zone-1","operator":"op","comment":["x"]}"#,
            summary(Some("ack_alarm"), Some("fence/zone-1"), Some("op")),
            "invalid type",
        ),
        // No action: target and operator still recorded.
        (
            br#"{"target":"gate-main","operator":"guard/li"}"#,
            summary(None, Some("gate-main"), Some("guard/li")),
            "missing field `action`",
        ),
        // A wrongly typed operator is written out as a string.
        (
            br#"{"action":"open_door","target":"gate-main","operator":4711}"#,
            summary(Some("open_door"), Some("gate-main"), Some("4711")),
            "invalid type",
        ),
        // Arrays, objects and null are not names.
        (
            br#"{"action":{"a":1},"target":[1],"operator":null,"value":true}"#,
            CommandSummary::default(),
            "invalid type",
        ),
        // Valid JSON that is no object (serde alone would take an array).
        (
            br#"["ack_alarm","fence/zone-1"]"#,
            CommandSummary::default(),
            "not a JSON object",
        ),
    ];
    for (payload, want, reason) in cases {
        let text = String::from_utf8_lossy(payload);
        let e = parse(payload).expect_err(&text);
        assert!(
            e.error.starts_with("malformed command"),
            "{text}: {}",
            e.error
        );
        assert!(
            e.error.contains(reason),
            "{text}: {} lacks {reason:?}",
            e.error
        );
        assert_eq!(e.summary, want, "{text}");

        // The event and the result carry what was kept.
        let outcome = Outcome {
            ok: false,
            error: Some(e.error.clone()),
            reason: None,
            executed_at: now(),
            summary: e.summary.clone(),
        };
        let origin = Origin::Platform {
            request_id: "r-1".into(),
        };
        let d = audit_detail(&origin, None, &outcome);
        let r = result_json("r-1", &outcome);
        for (k, f) in [
            ("action", &want.action),
            ("target", &want.target),
            ("operator", &want.operator),
        ] {
            assert_eq!(d[k], json!(f), "{text}: detail {k}");
            assert_eq!(
                r.get(k),
                f.as_ref().map(|s| json!(s)).as_ref(),
                "{text}: result {k}"
            );
        }
        assert_eq!(d["ok"], false);
        assert_eq!(d["error"], json!(e.error));
        assert_eq!(d["request_id"], "r-1");
        assert_eq!(r["ok"], false);
        assert_eq!(r["error"], json!(e.error));
        assert_eq!(r["request_id"], "r-1");
        assert!(r["executed_at"].is_string());
    }
}

#[test]
fn refusals_before_the_command_path_keep_what_the_command_names() {
    let body = br#"{"action": "open_door", "target": "access-1/door-3", "operator": "guard-7"}"#;
    let (event, reply) = refusal("r1", body, "gateway busy: too many commands running");
    let detail = event.detail.expect("detail");
    assert_eq!(detail["request_id"], "r1");
    assert_eq!(detail["action"], "open_door");
    assert_eq!(detail["target"], "access-1/door-3");
    assert_eq!(detail["operator"], "guard-7");
    assert_eq!(detail["ok"], false);
    assert_eq!(detail["error"], "gateway busy: too many commands running");
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["request_id"], "r1");
    assert_eq!(reply["ok"], false);
    assert_eq!(reply["operator"], "guard-7");
    assert!(reply["executed_at"].is_string());

    // Garbage names nothing, and is still refused with its request id.
    let (event, reply) = refusal("r2", b"\xff{", "gateway is reloading or stopping");
    let detail = event.detail.expect("detail");
    assert_eq!(detail["action"], serde_json::Value::Null);
    assert_eq!(detail["operator"], serde_json::Value::Null);
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["request_id"], "r2");
    assert!(reply.get("operator").is_none());
}

#[test]
fn readable_commands_parse_and_summarise() {
    let c = parse(br#"{"action":"shelve_alarm","target":"hvac-1/filter-alarm","value":2,"operator":"op","extra":1}"#)
        .unwrap();
    assert_eq!(c.action, "shelve_alarm");
    assert_eq!(
        CommandSummary::of(&c),
        summary(
            Some("shelve_alarm"),
            Some("hvac-1/filter-alarm"),
            Some("op")
        )
    );
}

proptest::proptest! {
    /// Whatever the bytes, parsing refuses or accepts without a panic, and
    /// an object's string `operator` survives a refusal.
    #[test]
    fn any_payload_parses_or_is_refused(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        op in "[a-z/]{1,12}",
        expires in proptest::prelude::any::<i64>(),
    ) {
        let _ = parse(&bytes);
        let payload = json!({"action": "write_point", "operator": op, "expires_at": expires}).to_string();
        let e = parse(payload.as_bytes()).unwrap_err();
        proptest::prop_assert_eq!(e.summary.operator.as_deref(), Some(op.as_str()));
    }


    /// Any JSON number either fits an i16 ×0.1 point exactly as the codec
    /// encodes it, or is refused; never a panic.
    #[test]
    fn numbers_fit_or_are_refused(x in -1.0e6f64..1.0e6) {
        let c = cfg();
        let pi = c.points.find("hvac-1/setpoint").unwrap();
        let p = c.point_config(c.points.get(pi));
        let r = value_from_json(p, &json!(x));
        let fits = ((x / 0.1).round() >= -32768.0) && ((x / 0.1).round() <= 32767.0);
        proptest::prop_assert_eq!(r.is_ok(), fits, "{} → {:?}", x, r);
    }
}
