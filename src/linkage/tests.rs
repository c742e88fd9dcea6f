use super::*;
use crate::config::load_str;
use crate::event::{AlarmInfo, AlarmState, Source, Timestamp};
use std::path::Path;

const BASE: &str = r#"
[site]
id = "palm-bay"
gateway = "gw-north-1"

[uplink]
host = "127.0.0.1"

[[devices]]
id = "fire-panel-a"
category = "fire"
zone = "villa-12"
[devices.modbus]
host = "127.0.0.1"
port = 5020
[[devices.points]]
id = "zone-3"
register = "coil"
address = 3

[[devices]]
id = "access-panel"
category = "access"
[devices.modbus]
host = "127.0.0.1"
port = 5021
[[devices.points]]
id = "door-1-release"
register = "coil"
address = 0
writable = true
[[devices.points]]
id = "door-1-open"
register = "coil"
address = 1
writable = true

[[devices]]
id = "hvac-1"
category = "hvac"
[devices.modbus]
host = "127.0.0.1"
port = 5022
[[devices.points]]
id = "fan-run"
register = "coil"
address = 0
writable = true

[[alarms]]
point = "fire-panel-a/zone-3"
equals = true
priority = 1
message = "Smoke detector zone 3"

[[alarms]]
point = "access-panel/door-1-open"
equals = true
priority = 3
message = "Door 1 held open"

[[alarms]]
point = "hvac-1/fan-run"
equals = false
priority = 4
message = "AHU fan stopped"
"#;

const FIRE_RULE: &str = r#"
[[linkage]]
id = "fire-release-doors"
category = "fire"
zone = "villa-*"
priority_max = 1
[[linkage.actions]]
type = "pulse"
point = "access-panel/door-1-release"
value = true
pulse_s = 30
[[linkage.actions]]
type = "write"
point = "hvac-1/fan-run"
value = false
[[linkage.actions]]
type = "clip"
camera = "cam-villa-12"
"#;

fn load(extra: &str) -> Result<crate::config::LoadedConfig, String> {
    load_str(&format!("{BASE}{extra}"), Path::new("t.toml")).map_err(|e| e.to_string())
}

fn alarm_event(kind: EventKind, key: &str, category: Category, zone: &str, prio: u8) -> NewEvent {
    NewEvent {
        ts: Timestamp::now(),
        kind,
        priority: Priority::new(prio).unwrap(),
        category,
        source: Source {
            device: None,
            point: None,
            zone: Some(zone.into()),
        },
        alarm: Some(AlarmInfo {
            key: key.into(),
            state: AlarmState::ActiveUnacked,
            value: serde_json::Value::Bool(true),
            message: "m".into(),
            operator: None,
            comment: None,
            latched: false,
        }),
        attachments: vec![],
        detail: None,
    }
}

#[test]
fn fire_rule_matches_fire_in_its_zones_only() {
    let cfg = load(FIRE_RULE).unwrap();
    let l = Linkage::new(&cfg);
    let fire = alarm_event(
        EventKind::AlarmRaised,
        "fire-panel-a/zone-3",
        Category::Fire,
        "villa-12",
        1,
    );
    let rules: Vec<_> = l.triggered(&fire).collect();
    assert_eq!(rules.len(), 1);
    let kinds: Vec<_> = rules[0].actions.iter().map(|a| a.kind()).collect();
    assert_eq!(kinds, vec!["pulse", "write", "clip"]);
    assert!(matches!(
        rules[0].actions[0],
        Action::Write { value: Value::Bool(true), pulse: Some(p), .. } if p == Duration::from_secs(30)
    ));
    // Cleared is not a trigger of this rule; other zones, categories and
    // priorities do not match.
    let cleared = alarm_event(
        EventKind::AlarmCleared,
        "fire-panel-a/zone-3",
        Category::Fire,
        "villa-12",
        1,
    );
    assert_eq!(l.triggered(&cleared).count(), 0);
    let other_zone = alarm_event(
        EventKind::AlarmRaised,
        "fire-panel-a/zone-3",
        Category::Fire,
        "clubhouse",
        1,
    );
    assert_eq!(l.triggered(&other_zone).count(), 0);
    let intrusion = alarm_event(
        EventKind::AlarmRaised,
        "pir/1",
        Category::Intrusion,
        "villa-12",
        1,
    );
    assert_eq!(l.triggered(&intrusion).count(), 0);
    let low = alarm_event(
        EventKind::AlarmRaised,
        "fire-panel-a/zone-3",
        Category::Fire,
        "villa-12",
        2,
    );
    assert_eq!(l.triggered(&low).count(), 0);
    let mut ack = fire.clone();
    ack.kind = EventKind::AlarmAcknowledged;
    assert_eq!(l.triggered(&ack).count(), 0);
}

#[test]
fn key_patterns_and_cleared_triggers() {
    let cfg = load(
        r#"
[[linkage]]
id = "door-held"
on = ["raised", "cleared"]
key = "access-panel/door-*"
[[linkage.actions]]
type = "notify"
to = "guards"
[[push.channels]]
name = "sms"
kind = "sms"
url = "http://127.0.0.1:9/sms"
[[push.tiers]]
name = "guards"
channels = ["sms"]
phones = ["13800000001"]
[[push.rules]]
name = "all"
tiers = ["guards"]
"#,
    )
    .unwrap();
    let l = Linkage::new(&cfg);
    for kind in [EventKind::AlarmRaised, EventKind::AlarmCleared] {
        let e = alarm_event(
            kind,
            "access-panel/door-1-open",
            Category::Access,
            "gate",
            3,
        );
        assert_eq!(l.triggered(&e).count(), 1);
    }
    let e = alarm_event(
        EventKind::AlarmRaised,
        "hvac-1/fan-run",
        Category::Hvac,
        "gate",
        3,
    );
    assert_eq!(l.triggered(&e).count(), 0);
}

#[test]
fn a_rule_triggering_itself_is_a_loop() {
    // Stopping the fan raises "fan stopped", whose rule stops the fan.
    let err = load(
        r#"
[[linkage]]
id = "hvac-stop"
category = "hvac"
[[linkage.actions]]
type = "write"
point = "hvac-1/fan-run"
value = false
"#,
    )
    .unwrap_err();
    assert!(err.contains("linkage loop"), "{err}");
    assert!(
        err.contains("\"hvac-stop\" writes \"hvac-1/fan-run\""),
        "{err}"
    );
}

#[test]
fn a_loop_through_two_rules_is_found_and_named() {
    let err = load(
        r#"
[[linkage]]
id = "a"
key = "access-panel/door-1-open"
[[linkage.actions]]
type = "write"
point = "hvac-1/fan-run"
value = false

[[linkage]]
id = "b"
key = "hvac-1/*"
[[linkage.actions]]
type = "pulse"
point = "access-panel/door-1-open"
value = true
"#,
    )
    .unwrap_err();
    assert!(err.contains("linkage loop"), "{err}");
    assert!(
        err.contains("rule \"a\"") && err.contains("rule \"b\""),
        "{err}"
    );
    // The fire rule alone is no loop: the points it writes have alarms no
    // rule reacts to.
    assert!(load(FIRE_RULE).is_ok());
}

#[test]
fn bad_actions_are_config_errors() {
    let err = load(
        r#"
[[linkage]]
id = "bad"
priority_min = 4
priority_max = 2
[[linkage.actions]]
type = "write"
point = "fire-panel-a/zone-3"
value = true
[[linkage.actions]]
type = "pulse"
point = "hvac-1/fan-run"
value = 3
[[linkage.actions]]
type = "write"
point = "nope/nothing"
value = true
[[linkage.actions]]
type = "clip"
"#,
    )
    .unwrap_err();
    for needle in [
        "\"fire-panel-a/zone-3\" is not writable",
        "expects true or false",
        "no point \"nope/nothing\"",
        "needs `camera`",
        "priority_min ≤ priority_max",
    ] {
        assert!(err.contains(needle), "{needle:?} missing in:\n{err}");
    }
}

#[test]
fn keys_that_do_not_apply_to_an_action_are_config_errors() {
    let extra = r#"
[[linkage]]
id = "stray-keys"
key = "fire-panel-a/*"
[[linkage.actions]]
type = "write"
point = "hvac-1/fan-run"
value = false
camera = "cam-1"
to = "guards"
pulse_s = 0
[[linkage.actions]]
type = "clip"
camera = "cam-1"
point = "hvac-1/fan-run"
"#;
    let text = format!("{BASE}{extra}");
    let e = load_str(&text, Path::new("t.toml")).unwrap_err();
    // The `nth` line of the rule starting with `needle`.
    let line = |needle: &str, nth: usize| {
        let base = BASE.lines().count();
        extra
            .lines()
            .enumerate()
            .filter(|(_, l)| l.starts_with(needle))
            .nth(nth)
            .unwrap()
            .0
            + base
            + 1
    };
    let got: Vec<(String, Option<usize>, &str)> =
        e.0.iter()
            .map(|p| (p.key.clone(), p.line, p.message.as_str()))
            .collect();
    assert_eq!(
        got,
        [
            (
                "linkage[0].actions[0].camera".to_string(),
                Some(line("camera", 0)),
                "`camera` does not apply to a `write` action"
            ),
            (
                "linkage[0].actions[0].to".to_string(),
                Some(line("to =", 0)),
                "`to` does not apply to a `write` action"
            ),
            (
                "linkage[0].actions[0].pulse_s".to_string(),
                Some(line("pulse_s", 0)),
                "`pulse_s` does not apply to a `write` action"
            ),
            (
                "linkage[0].actions[1].point".to_string(),
                Some(line("point", 1)),
                "`point` does not apply to a `clip` action"
            ),
        ],
        "{e}"
    );
    // Each key where it applies is fine, `pulse_s` defaulting to 5 s.
    let cfg = load(
        r#"
[[linkage]]
id = "door"
[[linkage.actions]]
type = "pulse"
point = "access-panel/door-1-release"
value = true
"#,
    )
    .unwrap();
    assert_eq!(
        cfg.config.linkage[0].actions[0].pulse(),
        Duration::from_secs(5)
    );
}
