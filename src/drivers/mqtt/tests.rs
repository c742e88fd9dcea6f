//! Unit tests of the MQTT device driver's pure parts: payload mapping,
//! topic matching, routing, liveness and config validation.

use super::payload::{self, MapError, Parsed, Path, Raw, Typing};
use super::router::{Liveness, Router};
use crate::config::{load_str, LoadedConfig};
use crate::drivers::PointType;
use crate::event::Timestamp;
use crate::point::{BusMessage, Value};
use proptest::prelude::*;
use std::time::{Duration, Instant};

fn typing(kind: PointType, scale: f64, offset: f64) -> Typing {
    let mut p = crate::drivers::PointConfig::modbus(crate::drivers::RegisterKind::Holding, 0, kind);
    p.scale = scale;
    p.offset = offset;
    Typing::new(&p)
}

fn value(payload: &str, path: Option<&str>, t: &Typing) -> Result<Value, MapError> {
    let path = Path::parse(path).unwrap();
    let parsed = Parsed::new(payload.as_bytes(), path.needs_json());
    parsed.get(&path).and_then(|raw| t.value(&raw))
}

#[test]
fn json_pointer_and_dotted_path_find_the_same_value() {
    let t = typing(PointType::F32, 1.0, 0.0);
    let p = r#"{"fence": {"zones": [{"kv": 8.2}, {"kv": 7.9}]}}"#;
    assert_eq!(
        value(p, Some("/fence/zones/1/kv"), &t),
        Ok(Value::Float(7.9))
    );
    assert_eq!(
        value(p, Some("fence.zones.1.kv"), &t),
        Ok(Value::Float(7.9))
    );
    assert!(matches!(
        value(p, Some("fence.zones.5.kv"), &t),
        Err(MapError::Missing(_))
    ));
}

#[test]
fn bool_words_numbers_and_strings() {
    let b = typing(PointType::Bool, 1.0, 0.0);
    for (payload, want) in [
        ("true", true),
        ("false", false),
        ("ON", true),
        ("off", false),
        ("1", true),
        ("0", false),
        (" On \n", true),
        ("\"OFF\"", false),
    ] {
        assert_eq!(
            value(payload, None, &b),
            Ok(Value::Bool(want)),
            "{payload:?}"
        );
    }
    assert!(matches!(
        value("2", None, &b),
        Err(MapError::WrongType { .. })
    ));
    assert!(matches!(
        value("maybe", None, &b),
        Err(MapError::WrongType { .. })
    ));
    let alarm = r#"{"alarm": "ON", "tamper": false, "state": 1}"#;
    assert_eq!(value(alarm, Some("alarm"), &b), Ok(Value::Bool(true)));
    assert_eq!(value(alarm, Some("/tamper"), &b), Ok(Value::Bool(false)));
    assert_eq!(value(alarm, Some("state"), &b), Ok(Value::Bool(true)));
}

#[test]
fn integers_stay_integers_and_scaling_makes_clean_floats() {
    let i = typing(PointType::I16, 1.0, 0.0);
    assert_eq!(value("-12", None, &i), Ok(Value::Int(-12)));
    assert_eq!(value("{\"v\": \"42\"}", Some("v"), &i), Ok(Value::Int(42)));
    assert!(matches!(
        value("40000", None, &i),
        Err(MapError::OutOfRange { .. })
    ));
    assert!(matches!(
        value("1.5", None, &i),
        Err(MapError::WrongType { .. })
    ));
    let scaled = typing(PointType::U16, 0.1, 0.0);
    assert_eq!(value("123", None, &scaled), Ok(Value::Float(12.3)));
    let f = typing(PointType::F32, 2.0, 1.0);
    assert_eq!(
        value("{\"t\": 10.25}", Some("t"), &f),
        Ok(Value::Float(21.5))
    );
}

#[test]
fn garbage_gives_errors_not_values() {
    let f = typing(PointType::F32, 1.0, 0.0);
    assert!(matches!(
        value("{not json", Some("a"), &f),
        Err(MapError::NotJson(_))
    ));
    assert!(matches!(
        value("hello", None, &f),
        Err(MapError::WrongType { .. })
    ));
    assert!(matches!(
        value("NaN", None, &f),
        Err(MapError::WrongType { .. })
    ));
    assert!(matches!(
        value("{\"a\": null}", Some("a"), &f),
        Err(MapError::Missing(_))
    ));
    assert!(matches!(
        value("{\"a\": [1]}", Some("a"), &f),
        Err(MapError::WrongType { .. })
    ));
    let bin = Parsed::new(&[0xff, 0xfe, 0x00], false);
    assert_eq!(bin.get(&Path::Whole), Err(MapError::NotText));
    assert!(Path::parse(Some("a..b")).is_err());
    assert!(Path::parse(Some("/a~2")).is_err());
    assert!(Path::parse(Some("")).is_err());
}

#[test]
fn writes_undo_scale_and_use_the_device_words() {
    let b = typing(PointType::Bool, 1.0, 0.0);
    assert_eq!(b.encode(Value::Bool(true), ("ON", "OFF")).unwrap(), "ON");
    assert_eq!(b.encode(Value::Bool(false), ("ON", "OFF")).unwrap(), "OFF");
    assert!(b.encode(Value::Int(1), ("ON", "OFF")).is_err());
    let s = typing(PointType::U16, 0.1, 0.0);
    assert_eq!(s.encode(Value::Float(21.5), ("", "")).unwrap(), "215");
    assert!(s.encode(Value::Float(-1.0), ("", "")).is_err());
    assert!(s.encode(Value::Float(21.55), ("", "")).is_err());
    let f = typing(PointType::F32, 1.0, 0.0);
    assert_eq!(f.encode(Value::Float(2.5), ("", "")).unwrap(), "2.5");
    assert_eq!(f.encode(Value::Int(3), ("", "")).unwrap(), "3");
}

#[test]
fn status_values_compare_without_case() {
    assert_eq!(
        payload::status_of(&Raw::Text("Online"), "online", "offline"),
        Some(true)
    );
    assert_eq!(
        payload::status_of(&Raw::Text("OFFLINE"), "online", "offline"),
        Some(false)
    );
    assert_eq!(
        payload::status_of(&Raw::Bool(true), "true", "false"),
        Some(true)
    );
    assert_eq!(payload::status_of(&Raw::Number(0.0), "1", "0"), Some(false));
    assert_eq!(
        payload::status_of(&Raw::Text("rebooting"), "online", "offline"),
        None
    );
}

#[test]
fn topic_filters() {
    assert!(payload::topic_matches("a/+/c", "a/b/c"));
    assert!(!payload::topic_matches("a/+/c", "a/b/d"));
    assert!(payload::topic_matches("a/#", "a"));
    assert!(payload::topic_matches("a/#", "a/b/c"));
    assert!(!payload::topic_matches("a/b", "a/b/c"));
    assert!(!payload::topic_matches("#", "$SYS/x"));
    assert!(payload::valid_filter("a/+/#"));
    assert!(!payload::valid_filter("a/#/b"));
    assert!(!payload::valid_filter("a/b+"));
    assert!(!payload::valid_topic("a/+"));
    assert_eq!(
        payload::command_topic("x/{device}/set/{point}", "d", "p"),
        "x/d/set/p"
    );
}

proptest! {
    /// Any payload bytes and any path: an answer, never a panic.
    #[test]
    fn any_payload_maps_or_errors(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                  path in proptest::option::of("[a-z0-9./~]{1,12}"),
                                  kind in prop_oneof![Just(PointType::Bool), Just(PointType::U16),
                                      Just(PointType::I32), Just(PointType::F32)]) {
        let t = typing(kind, 1.0, 0.0);
        if let Ok(path) = Path::parse(path.as_deref()) {
            let parsed = Parsed::new(&bytes, path.needs_json());
            let _ = parsed.get(&path).and_then(|raw| t.value(&raw));
        }
    }

    /// Integers of every type come back as published, in JSON or plain.
    #[test]
    fn integers_round_trip(n in any::<i32>()) {
        let t = typing(PointType::I32, 1.0, 0.0);
        prop_assert_eq!(value(&n.to_string(), None, &t), Ok(Value::Int(n as i64)));
        prop_assert_eq!(value(&format!("{{\"a\":{{\"b\":{n}}}}}"), Some("a.b"), &t), Ok(Value::Int(n as i64)));
        prop_assert_eq!(t.encode(Value::Int(n as i64), ("", "")).unwrap(), n.to_string());
    }

    /// A scaled write payload reads back as the value written.
    #[test]
    fn scaled_write_reads_back(raw in 0u16..=u16::MAX) {
        let t = typing(PointType::U16, 0.1, -40.0);
        let v = t.value(&Raw::Number(raw as f64)).unwrap();
        let text = t.encode(v, ("", "")).unwrap();
        prop_assert_eq!(text, raw.to_string());
    }

    /// `+` matches exactly one level, `#` any rest.
    #[test]
    fn wildcards(levels in proptest::collection::vec("[a-z]{1,4}", 1..5), i in 0usize..5) {
        let topic = levels.join("/");
        let i = i % levels.len();
        let mut plus = levels.clone();
        plus[i] = "+".into();
        prop_assert!(payload::topic_matches(&plus.join("/"), &topic));
        let hash = format!("{}/#", levels[..i].join("/"));
        let hash = hash.trim_start_matches('/');
        prop_assert!(payload::topic_matches(hash, &topic));
        let longer = format!("{topic}/x");
        prop_assert!(!payload::topic_matches(&longer, &topic));
    }
}

#[test]
fn liveness_silence_and_last_will() {
    let t0 = Instant::now();
    let s = Duration::from_secs(10);
    let mut l = Liveness::new(Some(s), t0);
    assert_eq!(l.tick(t0 + Duration::from_secs(9)), None);
    // Never heard from within the timeout: offline, once.
    assert_eq!(l.tick(t0 + s), Some(false));
    assert_eq!(l.tick(t0 + s * 3), None);
    assert_eq!(l.on_alive(t0 + s * 3), Some(true));
    assert_eq!(l.on_alive(t0 + s * 3 + Duration::from_secs(1)), None);
    assert_eq!(l.deadline(), Some(t0 + s * 4 + Duration::from_secs(1)));
    // The last will: offline at once, no second report from silence.
    assert_eq!(l.on_offline(), Some(false));
    assert_eq!(l.tick(t0 + s * 10), None);
    // Without a silence timeout only the status decides.
    let mut l = Liveness::new(None, t0);
    assert_eq!(l.tick(t0 + s * 100), None);
    assert_eq!(l.deadline(), None);
}

const CONFIG: &str = r#"
[site]
id = "palm-bay"
gateway = "gw-1"

[uplink]
host = "127.0.0.1"

[site_broker]
host = "127.0.0.1"

[[devices]]
id = "fence-north"
category = "perimeter"
zone = "perimeter-north"
[devices.mqtt]
topic_prefix = "fence/north"
status_topic = "fence/north/status"
silence_timeout_s = 30
command_topic = "fence/north/set/{point}"
payload_true = "ON"
payload_false = "OFF"

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

[[devices.points]]
id = "energize"
writable = true
[devices.points.mqtt]
topic = "energize"

[[devices]]
id = "panic-7"
category = "intrusion"
[devices.mqtt]
silence_timeout_s = 60

[[devices.points]]
id = "pressed"
[devices.points.mqtt]
filter = "villas/7/+/panic"

[[alarms]]
point = "fence-north/zone-1-alarm"
equals = true
priority = 2
message = "Fence alarm north zone 1"
"#;

fn load(text: &str) -> Result<LoadedConfig, crate::config::ConfigErrors> {
    load_str(text, std::path::Path::new("gw.toml"))
}

#[test]
fn example_device_loads_and_routes() {
    let cfg = load(CONFIG).unwrap();
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    let t0 = Instant::now();
    let mut r = Router::build(&cfg, t0).unwrap();
    assert_eq!(
        r.filters(),
        vec![
            "fence/north/energize",
            "fence/north/state",
            "fence/north/status",
            "villas/7/+/panic"
        ]
    );
    let ts = Timestamp::now();
    let out = r.on_publish(
        "fence/north/state",
        br#"{"voltage": 82, "zones": [{"alarm": true}]}"#,
        false,
        t0,
        ts,
    );
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    // First message: online, then the readings.
    assert!(matches!(
        &out.messages[0],
        BusMessage::DeviceStatus { online: true, .. }
    ));
    let BusMessage::Readings {
        device,
        readings,
        replied_at,
        ..
    } = &out.messages[1]
    else {
        panic!("{:?}", out.messages)
    };
    assert_eq!(&**device, "fence-north");
    assert_eq!(*replied_at, t0);
    let alarm = cfg.points.find("fence-north/zone-1-alarm").unwrap();
    let volts = cfg.points.find("fence-north/voltage").unwrap();
    assert!(readings
        .iter()
        .any(|x| x.point == alarm && x.value == Value::Bool(true)));
    assert!(readings
        .iter()
        .any(|x| x.point == volts && x.value == Value::Float(8.2)));

    let out = r.on_publish("villas/7/hall/panic", b"ON", false, t0, ts);
    assert_eq!(out.messages.len(), 2);
    let out = r.on_publish("villas/8/hall/panic", b"ON", false, t0, ts);
    assert!(out.unmatched && out.messages.is_empty());
}

#[test]
fn garbage_is_a_problem_logged_once_and_the_device_stays_alive() {
    let cfg = load(CONFIG).unwrap();
    let t0 = Instant::now();
    let mut r = Router::build(&cfg, t0).unwrap();
    let ts = Timestamp::now();
    let out = r.on_publish("fence/north/state", b"\x00\xffgarbage", false, t0, ts);
    assert_eq!(out.problems.len(), 2);
    assert!(out.problems.iter().all(|p| p.first));
    assert!(matches!(
        &out.messages[..],
        [BusMessage::DeviceStatus { online: true, .. }]
    ));
    let out = r.on_publish("fence/north/state", b"{}", false, t0, ts);
    assert_eq!(out.problems.len(), 2);
    assert!(out.problems.iter().all(|p| !p.first), "{:?}", out.problems);
    assert!(out.messages.is_empty());
    // A good value clears the failure: the next bad one is logged again.
    let out = r.on_publish("fence/north/state", br#"{"voltage": 80}"#, false, t0, ts);
    assert_eq!(out.messages.len(), 1);
    assert_eq!(out.problems.len(), 1);
    assert!(!out.problems[0].first);
    let out = r.on_publish(
        "fence/north/state",
        br#"{"zones": [{"alarm": false}]}"#,
        false,
        t0,
        ts,
    );
    assert!(out.problems[0].first);
}

#[test]
fn status_topic_and_silence_drive_device_status() {
    let cfg = load(CONFIG).unwrap();
    let t0 = Instant::now();
    let mut r = Router::build(&cfg, t0).unwrap();
    let ts = Timestamp::now();
    assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(30)));
    let out = r.on_publish("fence/north/status", b"online", false, t0, ts);
    assert!(matches!(
        &out.messages[..],
        [BusMessage::DeviceStatus { online: true, .. }]
    ));
    let out = r.on_publish("fence/north/status", b"offline", true, t0, ts);
    assert!(matches!(
        &out.messages[..],
        [BusMessage::DeviceStatus { online: false, .. }]
    ));
    // Retained data from a device known offline is not taken.
    let out = r.on_publish("fence/north/state", br#"{"voltage": 80}"#, true, t0, ts);
    assert!(out.messages.is_empty());
    let out = r.on_publish("fence/north/status", b"rebooting", false, t0, ts);
    assert!(out.unknown_status.is_some() && out.messages.is_empty());
    // Silence: panic-7 never spoke; at 60 s it goes offline.
    let msgs = r.tick(t0 + Duration::from_secs(59), ts);
    assert!(msgs.is_empty(), "{msgs:?}");
    let msgs = r.tick(t0 + Duration::from_secs(60), ts);
    assert!(
        matches!(&msgs[..], [BusMessage::DeviceStatus { online: false, device, .. }] if &**device == "panic-7")
    );
}

fn errors(text: &str) -> Vec<String> {
    load(text).map(|_| Vec::new()).unwrap_or_else(|e| {
        e.0.iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect()
    })
}

#[test]
fn validation_names_the_protocol_of_each_key() {
    let e = errors(&CONFIG.replace(
        "id = \"voltage\"",
        "id = \"voltage\"\nregister = \"holding\"\naddress = 3",
    ));
    assert!(
        e.iter()
            .any(|m| m.contains("points[1].register") && m.contains("Modbus key")),
        "{e:?}"
    );
    assert!(e.iter().any(|m| m.contains("points[1].address")), "{e:?}");
    // Given as its default is given all the same.
    let e = errors(&CONFIG.replace(
        "id = \"voltage\"",
        "id = \"voltage\"\nbyte_order = \"big\"\nword_order = \"big\"",
    ));
    for key in ["points[1].byte_order", "points[1].word_order"] {
        assert!(
            e.iter()
                .any(|m| m.contains(key) && m.contains("Modbus key")),
            "{key}: {e:?}"
        );
    }
    let e = errors(&CONFIG.replace(
        "[devices.mqtt]\nsilence_timeout_s = 60",
        "[devices.mqtt]\nsilence_timeout_s = 60\n[devices.modbus]\nhost = \"10.0.0.1\"",
    ));
    assert!(
        e.iter().any(|m| m.contains("exactly one protocol")),
        "{e:?}"
    );
    let e = errors(&CONFIG.replace("[site_broker]\nhost = \"127.0.0.1\"\n", ""));
    assert!(e.iter().any(|m| m.contains("no [site_broker]")), "{e:?}");
    let e = errors(&CONFIG.replace(
        "topic = \"energize\"",
        "topic = \"energize\"\nfilter = \"x\"",
    ));
    assert!(e.iter().any(|m| m.contains("not both")), "{e:?}");
    let e = errors(&CONFIG.replace("command_topic = \"fence/north/set/{point}\"\n", ""));
    assert!(
        e.iter()
            .any(|m| m.contains("points[2].writable") && m.contains("command_topic")),
        "{e:?}"
    );
    let e = errors(&CONFIG.replace("path = \"voltage\"", "path = \"a..b\""));
    assert!(e.iter().any(|m| m.contains("mqtt.path")), "{e:?}");
    let e = errors(&CONFIG.replace(
        "filter = \"villas/7/+/panic\"",
        "filter = \"villas/#/panic\"",
    ));
    assert!(
        e.iter().any(|m| m.contains("not a valid topic filter")),
        "{e:?}"
    );
}

#[test]
fn mqtt_point_table_on_a_modbus_device_is_refused() {
    let text = r#"
[site]
id = "s"
gateway = "g"
[uplink]
host = "127.0.0.1"
[[devices]]
id = "panel"
[devices.modbus]
host = "127.0.0.1"
[[devices.points]]
id = "a"
register = "coil"
address = 1
[devices.points.mqtt]
topic = "x"
"#;
    let e = errors(text);
    assert!(
        e.iter()
            .any(|m| m.contains("points[0].mqtt") && m.contains("speaks Modbus")),
        "{e:?}"
    );
}

#[test]
fn embedded_broker_off_loopback_needs_accounts() {
    let base = CONFIG.replace(
        "[site_broker]\nhost = \"127.0.0.1\"\n",
        "[site_broker]\n[site_broker.embedded]\nlisten = \"0.0.0.0:1883\"\n",
    );
    let e = errors(&base);
    assert!(
        e.iter()
            .any(|m| m.contains("embedded.listen") && m.contains("authentication is required")),
        "{e:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "fence-secret\n").unwrap();
    let ok = format!(
        "{base}\n[[site_broker.embedded.users]]\nusername = \"fence\"\npassword = {{ file = \"{}\" }}\n",
        pw.display()
    );
    // The users table must come right after [site_broker.embedded]: append
    // it there instead of at the end.
    let ok = ok.replace(
        "listen = \"0.0.0.0:1883\"\n",
        &format!(
            "listen = \"0.0.0.0:1883\"\n[[site_broker.embedded.users]]\nusername = \"fence\"\npassword = {{ file = \"{}\" }}\n",
            pw.display()
        ),
    );
    let ok = ok[..ok.rfind("\n[[site_broker.embedded.users]]").unwrap()].to_string();
    assert_eq!(errors(&ok), Vec::<String>::new());
    let loopback = CONFIG.replace(
        "[site_broker]\nhost = \"127.0.0.1\"\n",
        "[site_broker]\n[site_broker.embedded]\n",
    );
    assert_eq!(errors(&loopback), Vec::<String>::new());
    let both = CONFIG.replace(
        "[site_broker]\nhost = \"127.0.0.1\"\n",
        "[site_broker]\nhost = \"x\"\n[site_broker.embedded]\n",
    );
    assert!(errors(&both).iter().any(|m| m.contains("not both")));
}

#[test]
fn a_device_without_liveness_is_a_warning() {
    let text = CONFIG.replace("[devices.mqtt]\nsilence_timeout_s = 60", "[devices.mqtt]");
    let cfg = load(&text).unwrap();
    assert!(cfg.warnings.iter().any(|w| w
        .message
        .contains("neither status_topic nor silence_timeout_s")));
}
