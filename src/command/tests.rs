//! The command checks: every refusal, and what accepted commands become.

use super::check::{plan, value_from_json, Command, Plan};
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

proptest::proptest! {
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
