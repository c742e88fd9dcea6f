use super::*;
use crate::config::{load_str, LoadedConfig};
use std::collections::BTreeMap;
use std::path::Path;

const CONFIG: &str = r#"
[site]
id = "palm-bay"
gateway = "gw-north-1"

[uplink]
host = "127.0.0.1"

[[devices]]
id = "fire-panel-a"
name = "fire panel A"
category = "fire"
life_safety = true
zone = "villa-12"
[devices.modbus]
host = "127.0.0.1"
port = 5021
[[devices.points]]
id = "zone-3"
register = "coil"
address = 3
[[devices.points]]
id = "zone-4"
register = "coil"
address = 4
zone = "villa-14"

[[devices]]
id = "fence"
category = "perimeter"
zone = "perimeter-north"
[devices.modbus]
host = "127.0.0.1"
port = 5022
[[devices.points]]
id = "zone-1"
register = "discrete_input"
address = 0
[[devices.points]]
id = "spare"
register = "discrete_input"
address = 1

[[devices]]
id = "hvac-1"
category = "hvac"
[devices.modbus]
host = "127.0.0.1"
port = 5023
[[devices.points]]
id = "supply-temp"
register = "holding"
address = 0
type = "f32"
[[devices.points]]
id = "status"
register = "holding"
address = 2
type = "u16"

[[alarms]]
point = "fire-panel-a/zone-3"
equals = true
priority = 1
message = "Smoke detector zone 3"

[[alarms]]
point = "fire-panel-a/zone-4"
equals = true
priority = 1
latching = false
message = "Heat detector zone 4"

[[alarms]]
point = "fence/zone-1"
equals = true
priority = 2
on_delay_s = 2
off_delay_s = 5
message = "Fence zone 1 cut"

[[alarms]]
point = "hvac-1/supply-temp"
id = "high"
high = 30.0
hysteresis = 2.0
priority = 3
message = "Supply air too hot"

[[alarms]]
point = "hvac-1/supply-temp"
id = "low"
low = 5.0
hysteresis = 1.0
priority = 4
zone = "plant-room"
message = "Supply air too cold"

[[alarms]]
point = "hvac-1/status"
equals = 3
priority = 3
category = "system"
message = "HVAC unit fault"
"#;

const FIRE3: &str = "fire-panel-a/zone-3";
const FIRE4: &str = "fire-panel-a/zone-4";
const FENCE: &str = "fence/zone-1";

fn cfg() -> LoadedConfig {
    load_str(CONFIG, Path::new("test.toml")).expect("test config loads")
}

/// An engine with a clock: a base instant plus offsets, never real sleeps.
struct Bench {
    cfg: LoadedConfig,
    engine: AlarmEngine,
    t0: Instant,
    out: Vec<NewEvent>,
}

impl Bench {
    fn new() -> Bench {
        let cfg = cfg();
        let engine = AlarmEngine::new(&cfg);
        Bench {
            cfg,
            engine,
            t0: Instant::now(),
            out: Vec::new(),
        }
    }
    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }
    fn ts(ms: u64) -> Timestamp {
        Timestamp::from_unix_ms(1_795_813_445_000 + ms as i64).unwrap()
    }
    fn point(&self, key: &str) -> PointIndex {
        self.cfg.points.find(key).unwrap()
    }
    /// A good reading at `ms`; returns the events it produced.
    fn read(&mut self, ms: u64, key: &str, v: Value) -> Vec<NewEvent> {
        let p = self.point(key);
        self.engine.on_reading(
            self.at(ms),
            Self::ts(ms),
            p,
            Some(v),
            Quality::Good,
            &mut self.out,
        );
        std::mem::take(&mut self.out)
    }
    fn bad(&mut self, ms: u64, key: &str) -> Vec<NewEvent> {
        let p = self.point(key);
        self.engine.on_reading(
            self.at(ms),
            Self::ts(ms),
            p,
            None,
            Quality::Bad,
            &mut self.out,
        );
        std::mem::take(&mut self.out)
    }
    fn tick(&mut self, ms: u64) -> Vec<NewEvent> {
        self.engine.tick(self.at(ms), Self::ts(ms), &mut self.out);
        std::mem::take(&mut self.out)
    }
    fn ack(&mut self, ms: u64, key: &str) -> Result<Vec<NewEvent>, AlarmError> {
        self.engine.acknowledge(
            self.at(ms),
            Self::ts(ms),
            key,
            "control-room/zhang",
            Some("checked on site"),
            &mut self.out,
        )?;
        Ok(std::mem::take(&mut self.out))
    }
    fn device(&mut self, ms: u64, device: &str, online: bool) -> Vec<NewEvent> {
        let di = self
            .cfg
            .config
            .devices
            .iter()
            .position(|d| d.id == device)
            .unwrap();
        let reason = (!online).then_some("timeout after 3 polls");
        self.engine
            .on_device_status(self.at(ms), Self::ts(ms), di, online, reason, &mut self.out);
        std::mem::take(&mut self.out)
    }
    fn state(&self, key: &str) -> AlarmState {
        self.engine.state(key).unwrap()
    }
}

/// (kind, alarm state) of each event, for compact assertions.
fn kinds(evs: &[NewEvent]) -> Vec<(EventKind, Option<AlarmState>)> {
    evs.iter()
        .map(|e| (e.kind, e.alarm.as_ref().map(|a| a.state)))
        .collect()
}

use AlarmState::{ActiveAcked, ActiveUnacked, Normal, ReturnedUnacked};
use EventKind::{AlarmAcknowledged as Acked, AlarmCleared as Cleared, AlarmRaised as Raised};

#[test]
fn raised_event_has_contract_fields() {
    let mut b = Bench::new();
    let evs = b.read(10, FIRE3, Value::Bool(true));
    assert_eq!(evs.len(), 1);
    let e = &evs[0];
    assert_eq!(e.kind, Raised);
    assert_eq!(e.ts, Bench::ts(10));
    assert_eq!(e.priority, Priority::LIFE_SAFETY);
    assert_eq!(e.category, Category::Fire);
    assert_eq!(e.source.device.as_deref(), Some("fire-panel-a"));
    assert_eq!(e.source.point.as_deref(), Some("zone-3"));
    assert_eq!(e.source.zone.as_deref(), Some("villa-12"));
    let a = e.alarm.as_ref().unwrap();
    assert_eq!(a.key, FIRE3);
    assert_eq!(a.state, ActiveUnacked);
    assert_eq!(a.value, serde_json::json!(true));
    assert_eq!(a.message, "Smoke detector zone 3");
    assert!(a.latched, "fire latches by default");
    assert_eq!(a.operator, None);
    assert_eq!(b.engine.active_count(), 1);
}

#[test]
fn normal_reading_emits_nothing() {
    let mut b = Bench::new();
    assert!(b.read(0, FIRE3, Value::Bool(false)).is_empty());
    assert!(b.read(1, "fence/spare", Value::Bool(true)).is_empty());
    assert_eq!(b.state(FIRE3), Normal);
    assert_eq!(b.engine.active_count(), 0);
    assert_eq!(b.engine.next_deadline(), None);
}

#[test]
fn repeated_active_readings_raise_once() {
    let mut b = Bench::new();
    assert_eq!(b.read(0, FIRE4, Value::Bool(true)).len(), 1);
    for i in 1..10 {
        assert!(b.read(i * 1000, FIRE4, Value::Bool(true)).is_empty());
    }
}

#[test]
fn raise_ack_clear() {
    let mut b = Bench::new();
    b.read(0, FIRE4, Value::Bool(true));
    let evs = b.ack(100, FIRE4).unwrap();
    assert_eq!(kinds(&evs), [(Acked, Some(ActiveAcked))]);
    let a = evs[0].alarm.as_ref().unwrap();
    assert_eq!(a.operator.as_deref(), Some("control-room/zhang"));
    assert_eq!(a.comment.as_deref(), Some("checked on site"));
    assert!(!a.latched);
    assert_eq!(evs[0].ts, Bench::ts(100));
    assert_eq!(b.state(FIRE4), ActiveAcked);
    assert_eq!(b.engine.active_count(), 1);
    let evs = b.read(200, FIRE4, Value::Bool(false));
    assert_eq!(kinds(&evs), [(Cleared, Some(Normal))]);
    assert_eq!(
        evs[0].alarm.as_ref().unwrap().value,
        serde_json::json!(false)
    );
    assert_eq!(evs[0].alarm.as_ref().unwrap().operator, None);
    assert_eq!(b.engine.active_count(), 0);
}

#[test]
fn raise_return_ack() {
    let mut b = Bench::new();
    b.read(0, FIRE4, Value::Bool(true));
    let evs = b.read(100, FIRE4, Value::Bool(false));
    assert_eq!(kinds(&evs), [(Cleared, Some(ReturnedUnacked))]);
    assert_eq!(
        b.engine.active_count(),
        1,
        "returned but unacked still counts"
    );
    let evs = b.ack(200, FIRE4).unwrap();
    assert_eq!(kinds(&evs), [(Acked, Some(Normal))]);
    assert_eq!(b.engine.active_count(), 0);
}

#[test]
fn reactivation_from_returned_unacked_raises_again() {
    let mut b = Bench::new();
    b.read(0, FIRE4, Value::Bool(true));
    b.read(100, FIRE4, Value::Bool(false));
    let evs = b.read(200, FIRE4, Value::Bool(true));
    assert_eq!(kinds(&evs), [(Raised, Some(ActiveUnacked))]);
    // One acknowledgement covers it.
    assert_eq!(
        kinds(&b.ack(300, FIRE4).unwrap()),
        [(Acked, Some(ActiveAcked))]
    );
}

#[test]
fn acknowledge_errors() {
    let mut b = Bench::new();
    assert_eq!(
        b.ack(0, "nope/nothing"),
        Err(AlarmError::UnknownAlarm("nope/nothing".into()))
    );
    assert_eq!(b.ack(0, FIRE4), Err(AlarmError::NotUnacked(FIRE4.into())));
    b.read(0, FIRE4, Value::Bool(true));
    b.ack(10, FIRE4).unwrap();
    assert_eq!(b.ack(20, FIRE4), Err(AlarmError::NotUnacked(FIRE4.into())));
    assert!(b.out.is_empty());
}

#[test]
fn latched_fire_stays_until_acked_then_clears() {
    let mut b = Bench::new();
    b.read(0, FIRE3, Value::Bool(true));
    // Condition clears: a latched alarm stays in.
    assert!(b.read(100, FIRE3, Value::Bool(false)).is_empty());
    assert_eq!(b.state(FIRE3), ActiveUnacked);
    // Comes back: still the same alarm, no new raise.
    assert!(b.read(150, FIRE3, Value::Bool(true)).is_empty());
    assert!(b.read(160, FIRE3, Value::Bool(false)).is_empty());
    // Ack with the condition normal: acknowledged, then cleared.
    let evs = b.ack(200, FIRE3).unwrap();
    assert_eq!(
        kinds(&evs),
        [(Acked, Some(ActiveAcked)), (Cleared, Some(Normal))]
    );
    assert!(evs.iter().all(|e| e.alarm.as_ref().unwrap().latched));
    assert_eq!(b.state(FIRE3), Normal);
}

#[test]
fn latched_fire_acked_while_active_clears_when_condition_normal() {
    let mut b = Bench::new();
    b.read(0, FIRE3, Value::Bool(true));
    assert_eq!(
        kinds(&b.ack(100, FIRE3).unwrap()),
        [(Acked, Some(ActiveAcked))]
    );
    assert_eq!(
        kinds(&b.read(200, FIRE3, Value::Bool(false))),
        [(Cleared, Some(Normal))]
    );
}

#[test]
fn latched_fire_acked_while_unknown_waits_for_a_good_normal_value() {
    let mut b = Bench::new();
    b.read(0, FIRE3, Value::Bool(true));
    b.read(50, FIRE3, Value::Bool(false));
    b.bad(60, FIRE3);
    // Unknown is not normal: the acknowledgement does not reset it.
    assert_eq!(
        kinds(&b.ack(100, FIRE3).unwrap()),
        [(Acked, Some(ActiveAcked))]
    );
    assert!(b.bad(150, FIRE3).is_empty());
    assert_eq!(
        kinds(&b.read(200, FIRE3, Value::Bool(false))),
        [(Cleared, Some(Normal))]
    );
}

#[test]
fn bad_quality_neither_clears_nor_raises() {
    let mut b = Bench::new();
    // No raise on bad quality, nor on a value of bad quality.
    assert!(b.bad(0, FIRE4).is_empty());
    let p = b.point(FIRE4);
    b.engine.on_reading(
        b.at(5),
        Bench::ts(5),
        p,
        Some(Value::Bool(true)),
        Quality::Bad,
        &mut b.out,
    );
    b.engine.on_reading(
        b.at(6),
        Bench::ts(6),
        p,
        Some(Value::Bool(true)),
        Quality::Stale,
        &mut b.out,
    );
    assert!(b.out.is_empty());
    assert_eq!(b.state(FIRE4), Normal);
    b.read(10, FIRE4, Value::Bool(true));
    // Device stops answering: the alarm stays active.
    assert!(b.bad(20, FIRE4).is_empty());
    assert_eq!(b.state(FIRE4), ActiveUnacked);
    // Acknowledged while unknown: stays active_acked, value unknown.
    let evs = b.ack(30, FIRE4).unwrap();
    assert_eq!(
        evs[0].alarm.as_ref().unwrap().value,
        serde_json::Value::Null
    );
    assert!(b.bad(40, FIRE4).is_empty());
    assert_eq!(b.state(FIRE4), ActiveAcked);
    assert_eq!(
        kinds(&b.read(50, FIRE4, Value::Bool(false))),
        [(Cleared, Some(Normal))]
    );
}

#[test]
fn nan_is_unknown() {
    let mut b = Bench::new();
    let hi = "hvac-1/supply-temp/high";
    b.read(0, "hvac-1/supply-temp", Value::Float(35.0));
    assert!(b
        .read(10, "hvac-1/supply-temp", Value::Float(f64::NAN))
        .is_empty());
    assert_eq!(b.state(hi), ActiveUnacked);
    assert!(b
        .read(20, "hvac-1/supply-temp", Value::Float(f64::NAN))
        .is_empty());
}

#[test]
fn on_delay_raises_only_after_condition_held() {
    let mut b = Bench::new();
    assert!(b.read(0, FENCE, Value::Bool(true)).is_empty());
    assert_eq!(b.engine.next_deadline(), Some(b.at(2000)));
    assert!(b.tick(1999).is_empty());
    // Still true meanwhile: the delay is not restarted.
    assert!(b.read(1000, FENCE, Value::Bool(true)).is_empty());
    assert_eq!(b.engine.next_deadline(), Some(b.at(2000)));
    let evs = b.tick(2000);
    assert_eq!(kinds(&evs), [(Raised, Some(ActiveUnacked))]);
    assert_eq!(evs[0].ts, Bench::ts(2000));
    assert_eq!(
        evs[0].alarm.as_ref().unwrap().value,
        serde_json::json!(true)
    );
    assert_eq!(evs[0].priority, Priority::HIGH);
    assert_eq!(evs[0].category, Category::Perimeter);
    assert_eq!(b.engine.next_deadline(), None);
}

#[test]
fn expired_on_delay_counts_even_if_tick_is_late() {
    let mut b = Bench::new();
    b.read(0, FENCE, Value::Bool(true));
    // No tick at 2 s (the task was busy); the next reading is normal.
    let evs = b.read(2500, FENCE, Value::Bool(false));
    assert_eq!(kinds(&evs), [(Raised, Some(ActiveUnacked))]);
    assert_eq!(
        evs[0].alarm.as_ref().unwrap().value,
        serde_json::json!(true)
    );
    // ... and the off-delay starts from that reading.
    assert_eq!(b.engine.next_deadline(), Some(b.at(7500)));
    assert!(b.tick(2600).is_empty(), "the stale timer does nothing");
    assert_eq!(kinds(&b.tick(7500)), [(Cleared, Some(ReturnedUnacked))]);
}

#[test]
fn on_delay_condition_gone_early_raises_nothing() {
    let mut b = Bench::new();
    b.read(0, FENCE, Value::Bool(true));
    assert!(b.read(1500, FENCE, Value::Bool(false)).is_empty());
    assert_eq!(b.engine.next_deadline(), None, "cancelled timer is pruned");
    assert!(b.tick(5000).is_empty());
    assert_eq!(b.state(FENCE), Normal);
    // A new episode starts a new delay.
    b.read(6000, FENCE, Value::Bool(true));
    assert!(b.tick(7999).is_empty());
    assert_eq!(kinds(&b.tick(8000)), [(Raised, Some(ActiveUnacked))]);
}

#[test]
fn bad_quality_cancels_on_delay() {
    let mut b = Bench::new();
    b.read(0, FENCE, Value::Bool(true));
    b.bad(1000, FENCE);
    assert!(b.tick(3000).is_empty());
    assert_eq!(b.state(FENCE), Normal);
    // Back with the condition: the delay restarts from the good value.
    b.read(3000, FENCE, Value::Bool(true));
    assert!(b.tick(4999).is_empty());
    assert_eq!(kinds(&b.tick(5000)), [(Raised, Some(ActiveUnacked))]);
}

#[test]
fn off_delay_returns_only_after_condition_gone_long_enough() {
    let mut b = Bench::new();
    b.read(0, FENCE, Value::Bool(true));
    b.tick(2000);
    assert!(b.read(3000, FENCE, Value::Bool(false)).is_empty());
    assert_eq!(b.engine.next_deadline(), Some(b.at(8000)));
    // Flickers back before the off-delay ends: nothing, the timer is void.
    assert!(b.read(6000, FENCE, Value::Bool(true)).is_empty());
    assert!(b.tick(8000).is_empty());
    assert_eq!(b.state(FENCE), ActiveUnacked);
    b.read(9000, FENCE, Value::Bool(false));
    assert!(b.tick(13_999).is_empty());
    let evs = b.tick(14_000);
    assert_eq!(kinds(&evs), [(Cleared, Some(ReturnedUnacked))]);
    assert_eq!(
        evs[0].alarm.as_ref().unwrap().value,
        serde_json::json!(false)
    );
}

#[test]
fn bad_quality_during_off_delay_keeps_alarm() {
    let mut b = Bench::new();
    b.read(0, FENCE, Value::Bool(true));
    b.tick(2000);
    b.ack(2100, FENCE).unwrap();
    b.read(3000, FENCE, Value::Bool(false));
    b.bad(4000, FENCE);
    assert!(b.tick(9000).is_empty());
    assert_eq!(b.state(FENCE), ActiveAcked);
    b.read(9000, FENCE, Value::Bool(false));
    assert!(b.tick(13_999).is_empty());
    assert_eq!(kinds(&b.tick(14_000)), [(Cleared, Some(Normal))]);
}

#[test]
fn ack_during_off_delay_then_clear() {
    let mut b = Bench::new();
    b.read(0, FENCE, Value::Bool(true));
    b.tick(2000);
    b.read(3000, FENCE, Value::Bool(false));
    assert_eq!(
        kinds(&b.ack(4000, FENCE).unwrap()),
        [(Acked, Some(ActiveAcked))]
    );
    assert_eq!(kinds(&b.tick(8000)), [(Cleared, Some(Normal))]);
}

#[test]
fn high_threshold_with_hysteresis() {
    let mut b = Bench::new();
    let p = "hvac-1/supply-temp";
    let hi = "hvac-1/supply-temp/high";
    assert!(b.read(0, p, Value::Float(30.0)).is_empty());
    let evs = b.read(1, p, Value::Float(30.5));
    assert_eq!(kinds(&evs), [(Raised, Some(ActiveUnacked))]);
    assert_eq!(evs[0].alarm.as_ref().unwrap().key, hi);
    assert_eq!(
        evs[0].alarm.as_ref().unwrap().value,
        serde_json::json!(30.5)
    );
    assert_eq!(evs[0].priority, Priority::MEDIUM);
    assert_eq!(evs[0].category, Category::Hvac);
    // Inside the hysteresis band: still in alarm.
    assert!(b.read(2, p, Value::Float(29.0)).is_empty());
    assert!(b.read(3, p, Value::Float(28.0)).is_empty());
    assert_eq!(
        kinds(&b.read(4, p, Value::Float(27.9))),
        [(Cleared, Some(ReturnedUnacked))]
    );
    // Inside the band again from below: not in alarm.
    assert!(b.read(5, p, Value::Float(29.5)).is_empty());
    assert_eq!(b.state(hi), ReturnedUnacked);
}

#[test]
fn low_threshold_with_hysteresis_and_rule_zone() {
    let mut b = Bench::new();
    let p = "hvac-1/supply-temp";
    let evs = b.read(0, p, Value::Float(4.0));
    assert_eq!(kinds(&evs), [(Raised, Some(ActiveUnacked))]);
    assert_eq!(evs[0].alarm.as_ref().unwrap().key, "hvac-1/supply-temp/low");
    assert_eq!(evs[0].source.zone.as_deref(), Some("plant-room"));
    assert_eq!(evs[0].priority, Priority::LOW);
    assert!(b.read(1, p, Value::Float(6.0)).is_empty());
    assert_eq!(
        kinds(&b.read(2, p, Value::Float(6.5))),
        [(Cleared, Some(ReturnedUnacked))]
    );
}

#[test]
fn two_rules_on_one_point_are_independent() {
    let mut b = Bench::new();
    let p = "hvac-1/supply-temp";
    b.read(0, p, Value::Float(40.0));
    let evs = b.read(1, p, Value::Float(0.0));
    let keys: Vec<_> = evs
        .iter()
        .map(|e| (e.alarm.as_ref().unwrap().key.as_str(), e.kind))
        .collect();
    assert_eq!(
        keys,
        [
            ("hvac-1/supply-temp/high", Cleared),
            ("hvac-1/supply-temp/low", Raised)
        ]
    );
    assert_eq!(b.engine.active_count(), 2);
}

#[test]
fn numeric_state_rule_and_category_override() {
    let mut b = Bench::new();
    assert!(b.read(0, "hvac-1/status", Value::Int(2)).is_empty());
    let evs = b.read(1, "hvac-1/status", Value::Int(3));
    assert_eq!(kinds(&evs), [(Raised, Some(ActiveUnacked))]);
    assert_eq!(evs[0].category, Category::System);
    assert_eq!(evs[0].alarm.as_ref().unwrap().value, serde_json::json!(3));
    assert!(!evs[0].alarm.as_ref().unwrap().latched);
}

#[test]
fn point_zone_overrides_device_zone() {
    let mut b = Bench::new();
    let evs = b.read(0, FIRE4, Value::Bool(true));
    assert_eq!(evs[0].source.zone.as_deref(), Some("villa-14"));
}

#[test]
fn comm_loss_of_life_safety_device_is_an_alarm() {
    let mut b = Bench::new();
    let key = "fire-panel-a/comm";
    let evs = b.device(0, "fire-panel-a", false);
    assert_eq!(
        kinds(&evs),
        [
            (EventKind::DeviceOffline, None),
            (Raised, Some(ActiveUnacked))
        ]
    );
    let off = &evs[0];
    assert_eq!(off.priority, Priority::MEDIUM);
    assert_eq!(off.category, Category::Fire);
    assert_eq!(off.source.device.as_deref(), Some("fire-panel-a"));
    assert_eq!(off.source.zone.as_deref(), Some("villa-12"));
    assert_eq!(
        off.detail,
        Some(serde_json::json!({"reason": "timeout after 3 polls"}))
    );
    let al = &evs[1];
    assert_eq!(al.priority, Priority::LIFE_SAFETY);
    assert_eq!(al.category, Category::Fire);
    let a = al.alarm.as_ref().unwrap();
    assert_eq!(a.key, key);
    assert_eq!(a.value, serde_json::Value::Null);
    assert!(a
        .message
        .starts_with("Communication lost with fire panel A"));
    assert!(!a.latched);
    // Repeated status is ignored.
    assert!(b.device(10, "fire-panel-a", false).is_empty());
    // Back: device.online and the alarm returns.
    let evs = b.device(1000, "fire-panel-a", true);
    assert_eq!(
        kinds(&evs),
        [
            (EventKind::DeviceOnline, None),
            (Cleared, Some(ReturnedUnacked))
        ]
    );
    assert_eq!(kinds(&b.ack(2000, key).unwrap()), [(Acked, Some(Normal))]);
}

#[test]
fn comm_loss_acked_while_offline_clears_on_return() {
    let mut b = Bench::new();
    let key = "fire-panel-a/comm";
    b.device(0, "fire-panel-a", false);
    assert_eq!(
        kinds(&b.ack(10, key).unwrap()),
        [(Acked, Some(ActiveAcked))]
    );
    let evs = b.device(20, "fire-panel-a", true);
    assert_eq!(
        kinds(&evs),
        [(EventKind::DeviceOnline, None), (Cleared, Some(Normal))]
    );
}

#[test]
fn comm_loss_of_other_devices_is_an_event_only() {
    let mut b = Bench::new();
    let evs = b.device(0, "fence", false);
    assert_eq!(kinds(&evs), [(EventKind::DeviceOffline, None)]);
    assert_eq!(evs[0].category, Category::Perimeter);
    assert_eq!(evs[0].source.zone.as_deref(), Some("perimeter-north"));
    assert_eq!(b.engine.active_count(), 0);
    let evs = b.device(10, "fence", true);
    assert_eq!(kinds(&evs), [(EventKind::DeviceOnline, None)]);
    assert_eq!(b.engine.state("fence/comm"), None);
    // Out-of-range device index: nothing, no panic.
    b.engine
        .on_device_status(b.at(20), Bench::ts(20), 99, false, None, &mut b.out);
    assert!(b.out.is_empty());
}

#[test]
fn device_offline_keeps_point_alarms() {
    // What the task does when a device goes offline: the status, then every
    // point of it with quality bad.
    let mut b = Bench::new();
    b.read(0, FIRE4, Value::Bool(true));
    b.device(10, "fire-panel-a", false);
    assert!(b.bad(10, FIRE3).is_empty());
    assert!(b.bad(10, FIRE4).is_empty());
    assert_eq!(b.state(FIRE4), ActiveUnacked);
    assert_eq!(b.engine.active_count(), 2);
}

#[test]
fn unknown_point_index_is_ignored() {
    let mut b = Bench::new();
    b.engine.on_reading(
        b.at(0),
        Bench::ts(0),
        10_000,
        Some(Value::Bool(true)),
        Quality::Good,
        &mut b.out,
    );
    assert!(b.out.is_empty());
}

#[test]
fn active_lists_most_urgent_first() {
    let mut b = Bench::new();
    b.read(0, "hvac-1/status", Value::Int(3));
    b.read(0, FIRE4, Value::Bool(true));
    let v = b.engine.active();
    assert_eq!(v.len(), 2);
    assert_eq!(&*v[0].key, FIRE4);
    assert_eq!(&*v[1].key, "hvac-1/status");
}

mod prop {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Clone, Debug)]
    enum Op {
        Read { point: usize, value: Option<f64> },
        Ack { key: usize },
        Advance { ms: u64 },
        Device { index: usize, online: bool },
    }

    const POINTS: [&str; 5] = [
        "fire-panel-a/zone-3",
        "fire-panel-a/zone-4",
        "fence/zone-1",
        "hvac-1/supply-temp",
        "hvac-1/status",
    ];
    const KEYS: [&str; 7] = [
        "fire-panel-a/zone-3",
        "fire-panel-a/zone-4",
        "fence/zone-1",
        "hvac-1/supply-temp/high",
        "hvac-1/supply-temp/low",
        "hvac-1/status",
        "fire-panel-a/comm",
    ];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..POINTS.len(), proptest::option::weighted(0.85, -5.0f64..40.0))
                .prop_map(|(point, value)| Op::Read { point, value }),
            2 => (0..KEYS.len()).prop_map(|key| Op::Ack { key }),
            2 => (0u64..7000).prop_map(|ms| Op::Advance { ms }),
            1 => (0..3usize, any::<bool>()).prop_map(|(index, online)| Op::Device { index, online }),
        ]
    }

    /// The state an event sequence implies, checked against ISA-18.2.
    fn apply(model: &mut HashMap<String, AlarmState>, e: &NewEvent) -> Result<(), String> {
        let Some(a) = &e.alarm else {
            return Ok(());
        };
        let cur = *model.get(&a.key).unwrap_or(&Normal);
        let ok = match (e.kind, cur, a.state) {
            (Raised, Normal | ReturnedUnacked, ActiveUnacked) => true,
            (Acked, ActiveUnacked, ActiveAcked) => true,
            (Acked, ReturnedUnacked, Normal) => true,
            (Cleared, ActiveUnacked, ReturnedUnacked) => !a.latched,
            (Cleared, ActiveAcked, Normal) => true,
            _ => false,
        };
        if !ok {
            return Err(format!(
                "invalid transition for {}: {:?} from {cur:?} to {:?}",
                a.key, e.kind, a.state
            ));
        }
        // Unknown is neither alarm nor normal: a point alarm is raised and
        // cleared only on a known value.
        if matches!(e.kind, Raised | Cleared) && a.value.is_null() && !a.key.ends_with("/comm") {
            return Err(format!("{} {:?} without a known value", a.key, e.kind));
        }
        if (e.kind == Acked) != a.operator.is_some() {
            return Err(format!("{}: operator on a {:?} event", a.key, e.kind));
        }
        model.insert(a.key.clone(), a.state);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn transitions_are_always_valid(ops in proptest::collection::vec(op(), 1..120)) {
            let mut b = Bench::new();
            let mut model: HashMap<String, AlarmState> = HashMap::new();
            // The journal's per-alarm states, saved as the task does: the
            // dirty ones with each batch of events.
            let mut saved: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            let mut ms = 0u64;
            let devices = ["fire-panel-a", "fence", "hvac-1"];
            for op in ops {
                let is_advance = matches!(op, Op::Advance { .. });
                let evs = match op {
                    Op::Read { point, value } => {
                        let key = POINTS[point];
                        let v = value.map(|x| match point {
                            0..=2 => Value::Bool(x > 17.0),
                            4 => Value::Int((x as i64).rem_euclid(5)),
                            _ => Value::Float(x),
                        });
                        match v {
                            Some(v) => b.read(ms, key, v),
                            None => b.bad(ms, key),
                        }
                    }
                    Op::Ack { key } => {
                        let before = b.engine.state(KEYS[key]).unwrap();
                        match b.ack(ms, KEYS[key]) {
                            Ok(evs) => {
                                prop_assert!(matches!(before, ActiveUnacked | ReturnedUnacked));
                                evs
                            }
                            Err(e) => {
                                prop_assert!(!matches!(before, ActiveUnacked | ReturnedUnacked), "{e}");
                                prop_assert_eq!(b.engine.state(KEYS[key]).unwrap(), before);
                                Vec::new()
                            }
                        }
                    }
                    Op::Advance { ms: d } => {
                        ms += d;
                        if let Some(dl) = b.engine.next_deadline() {
                            prop_assert!(dl >= b.t0);
                        }
                        b.tick(ms)
                    }
                    Op::Device { index, online } => b.device(ms, devices[index], online),
                };
                for e in &evs {
                    prop_assert_eq!(e.ts, Bench::ts(ms));
                    if let Err(msg) = apply(&mut model, e) {
                        prop_assert!(false, "{}", msg);
                    }
                }
                if !evs.is_empty() {
                    save_dirty(&mut b.engine, &mut saved);
                }
                // The engine's states are exactly what its events said.
                for key in KEYS {
                    let s = b.engine.state(key).unwrap();
                    prop_assert!(s != AlarmState::Shelved);
                    prop_assert_eq!(s, *model.get(key).unwrap_or(&Normal), "{}", key);
                }
                let active = model.values().filter(|s| **s != Normal).count();
                prop_assert_eq!(b.engine.active_count(), active);
                // The active list: those alarms, by priority, then key.
                let list = b.engine.active();
                prop_assert_eq!(list.len(), active);
                for pair in list.windows(2) {
                    let order = (pair[0].priority, &pair[0].key).cmp(&(pair[1].priority, &pair[1].key));
                    prop_assert!(order.is_lt(), "{:?}", pair);
                }
                for v in &list {
                    prop_assert_eq!(Some(v.state), model.get(&*v.key).copied(), "{}", v.key);
                }
                // Nothing due is left behind after a tick.
                if let Some(dl) = b.engine.next_deadline() {
                    prop_assert!(dl > b.at(ms) || !is_advance);
                }
            }
            // A restart keeps every point alarm's state.
            let snap = b.engine.snapshot();
            let mut r = Bench::new();
            r.engine.restore(&snap).unwrap();
            for key in &KEYS[..6] {
                prop_assert_eq!(r.engine.state(key), b.engine.state(key), "{}", key);
            }
            // The per-alarm states saved along the way, plus what the
            // shutdown saves, restore exactly what the whole snapshot does.
            save_dirty(&mut b.engine, &mut saved);
            prop_assert!(!b.engine.has_dirty());
            let mut d = Bench::new();
            let restored = restore_saved(&mut d.engine, &saved);
            prop_assert!(restored.stale.is_empty());
            prop_assert_eq!(d.engine.snapshot(), r.engine.snapshot());
        }

        /// Shelves too (start, expiry, refusal on life-safety alarms): the
        /// per-alarm states saved as the task saves them restore exactly
        /// what the whole snapshot does.
        #[test]
        fn saved_states_with_shelves_restore_what_the_snapshot_does(
            ops in proptest::collection::vec(
                prop_oneof![
                    6 => op().prop_map(Ok),
                    1 => (0..KEYS.len(), 1u64..20).prop_map(Err),
                ],
                1..120,
            )
        ) {
            let mut b = Bench::new();
            let mut saved: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            let mut ms = 0u64;
            let devices = ["fire-panel-a", "fence", "hvac-1"];
            for op in ops {
                let evs = match op {
                    // Shelve KEYS[key] for `secs` seconds.
                    Err((key, secs)) => b.shelve(ms, KEYS[key], secs).unwrap_or_default(),
                    Ok(Op::Read { point, value }) => {
                        let key = POINTS[point];
                        let v = value.map(|x| match point {
                            0..=2 => Value::Bool(x > 17.0),
                            4 => Value::Int((x as i64).rem_euclid(5)),
                            _ => Value::Float(x),
                        });
                        match v {
                            Some(v) => b.read(ms, key, v),
                            None => b.bad(ms, key),
                        }
                    }
                    Ok(Op::Ack { key }) => b.ack(ms, KEYS[key]).unwrap_or_default(),
                    Ok(Op::Advance { ms: d }) => {
                        ms += d;
                        b.tick(ms)
                    }
                    Ok(Op::Device { index, online }) => b.device(ms, devices[index], online),
                };
                if !evs.is_empty() {
                    save_dirty(&mut b.engine, &mut saved);
                }
            }
            let snap = b.engine.snapshot();
            let mut r = Bench::new();
            r.engine.restore(&snap).unwrap();
            save_dirty(&mut b.engine, &mut saved);
            let mut d = Bench::new();
            let restored = restore_saved(&mut d.engine, &saved);
            prop_assert!(restored.stale.is_empty());
            prop_assert_eq!(d.engine.snapshot(), r.engine.snapshot());
        }
    }
}

/// Apply the engine's dirty states to `saved` (a journal's named states)
/// and clear them, as the alarm task records them.
fn save_dirty(engine: &mut AlarmEngine, saved: &mut BTreeMap<String, Vec<u8>>) {
    for (name, data) in engine.dirty_states() {
        match data {
            Some(d) => saved.insert(name, d),
            None => saved.remove(&name),
        };
    }
    engine.clear_dirty();
}

/// Restore `saved` (as [`save_dirty`] left it) into `engine`.
fn restore_saved(engine: &mut AlarmEngine, saved: &BTreeMap<String, Vec<u8>>) -> Restored {
    let with = |prefix: &str| -> Vec<(String, Vec<u8>)> {
        saved
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, d)| (n.clone(), d.clone()))
            .collect()
    };
    engine.restore_states(&with(ALARM_STATE_PREFIX), &with(OFFLINE_STATE_PREFIX))
}

mod dirty {
    use super::*;

    fn changes(b: &Bench) -> Vec<(String, Option<String>)> {
        let mut v: Vec<_> = b
            .engine
            .dirty_states()
            .into_iter()
            .map(|(n, d)| (n, d.map(|d| String::from_utf8(d).unwrap())))
            .collect();
        v.sort();
        v
    }

    fn alarm(key: &str, json: Option<&str>) -> (String, Option<String>) {
        (format!("alarm/{key}"), json.map(str::to_string))
    }

    #[test]
    fn a_raise_is_dirty_until_cleared_and_a_repeat_is_not() {
        let mut b = Bench::new();
        assert!(!b.engine.has_dirty());
        assert!(b.engine.dirty_states().is_empty());
        b.read(0, FIRE3, Value::Bool(true));
        assert!(b.engine.alarms_dirty());
        assert_eq!(
            changes(&b),
            [alarm(
                FIRE3,
                Some(r#"{"state":"active_unacked","condition":true}"#)
            )]
        );
        b.engine.clear_dirty();
        assert!(!b.engine.has_dirty());
        // The same value again changes nothing saved.
        assert!(b.read(10, FIRE3, Value::Bool(true)).is_empty());
        assert!(!b.engine.has_dirty());
        // Readings of points without a saved change stay clean.
        b.read(20, "hvac-1/supply-temp", Value::Float(21.0));
        assert!(!b.engine.has_dirty());
    }

    #[test]
    fn back_to_normal_is_a_removal() {
        let mut b = Bench::new();
        b.read(0, FIRE4, Value::Bool(true));
        b.read(1, FIRE4, Value::Bool(false));
        assert_eq!(
            changes(&b),
            [alarm(
                FIRE4,
                Some(r#"{"state":"returned_unacked","condition":false}"#)
            )]
        );
        b.engine.clear_dirty();
        b.ack(2, FIRE4).unwrap();
        assert_eq!(changes(&b), [alarm(FIRE4, None)]);
    }

    #[test]
    fn a_condition_change_without_an_event_is_dirty() {
        let mut b = Bench::new();
        b.read(0, FIRE3, Value::Bool(true));
        b.engine.clear_dirty();
        // Latched: the condition goes, the alarm stays in, nothing emitted.
        assert!(b.read(10, FIRE3, Value::Bool(false)).is_empty());
        assert_eq!(
            changes(&b),
            [alarm(
                FIRE3,
                Some(r#"{"state":"active_unacked","condition":false}"#)
            )]
        );
        // Unknown keeps what is saved.
        b.engine.clear_dirty();
        b.bad(20, FIRE3);
        assert!(!b.engine.has_dirty());
    }

    #[test]
    fn delays_acks_and_shelves_are_dirty() {
        let mut b = Bench::new();
        // On-delay: nothing saved until it fires.
        b.read(0, FENCE, Value::Bool(true));
        assert!(!b.engine.has_dirty());
        b.tick(2000);
        assert_eq!(
            changes(&b),
            [alarm(
                FENCE,
                Some(r#"{"state":"active_unacked","condition":true}"#)
            )]
        );
        b.engine.clear_dirty();
        b.ack(2500, FENCE).unwrap();
        assert_eq!(
            changes(&b),
            [alarm(
                FENCE,
                Some(r#"{"state":"active_acked","condition":true}"#)
            )]
        );
        b.engine.clear_dirty();
        b.shelve(3000, FENCE, 60).unwrap();
        let until = serde_json::to_string(&Bench::ts(63_000)).unwrap();
        assert_eq!(
            changes(&b),
            [alarm(
                FENCE,
                Some(&format!(
                    r#"{{"state":"shelved","condition":true,"shelved_until":{until}}}"#
                ))
            )]
        );
        b.engine.clear_dirty();
        // The shelf's instant is filled in: nothing saved changes.
        b.tick(4000);
        assert!(!b.engine.has_dirty());
        b.read(5000, FENCE, Value::Bool(false));
        b.tick(20_000);
        let json = format!(r#"{{"state":"shelved","condition":false,"shelved_until":{until}}}"#);
        assert_eq!(changes(&b), [alarm(FENCE, Some(&json))]);
        b.engine.clear_dirty();
        // Shelf over, condition normal: back to normal, removed.
        b.tick(63_000);
        assert_eq!(changes(&b), [alarm(FENCE, None)]);
    }

    #[test]
    fn device_offline_and_its_comm_alarm_are_dirty() {
        let mut b = Bench::new();
        b.device(0, "fire-panel-a", false);
        assert_eq!(
            changes(&b),
            [
                alarm(
                    "fire-panel-a/comm",
                    Some(r#"{"state":"active_unacked","condition":true}"#)
                ),
                (
                    "offline/fire-panel-a".into(),
                    Some(r#"{"offline":true}"#.into())
                ),
            ]
        );
        b.engine.clear_dirty();
        b.device(10, "fire-panel-a", true);
        assert_eq!(
            changes(&b),
            [
                alarm(
                    "fire-panel-a/comm",
                    Some(r#"{"state":"returned_unacked","condition":false}"#)
                ),
                ("offline/fire-panel-a".into(), None),
            ]
        );
    }

    #[test]
    fn saved_states_restore_without_being_dirty_and_stale_ones_are_listed() {
        let mut b = Bench::new();
        b.read(0, FIRE3, Value::Bool(true));
        b.read(0, FENCE, Value::Bool(true));
        b.tick(2000);
        b.shelve(3000, FENCE, 60).unwrap();
        b.device(3000, "hvac-1", false);
        let mut saved = BTreeMap::new();
        save_dirty(&mut b.engine, &mut saved);
        saved.insert(
            "alarm/gone/point".into(),
            br#"{"state":"active_unacked","condition":true}"#.to_vec(),
        );
        saved.insert(
            "offline/gone-device".into(),
            br#"{"offline":true}"#.to_vec(),
        );
        saved.insert("alarm/fence/spare".into(), b"{not json".to_vec());
        let mut r = Bench::new();
        let restored = restore_saved(&mut r.engine, &saved);
        assert_eq!(
            restored,
            Restored {
                alarms: 2,
                offline_devices: 1,
                stale: vec!["offline/gone-device".into(), "alarm/gone/point".into()],
            }
        );
        assert!(!r.engine.has_dirty(), "restored states are saved already");
        assert_eq!(r.engine.snapshot(), b.engine.snapshot());
        assert_eq!(r.state(FENCE), AlarmState::Shelved);
        assert!(r.engine.device_offline(2));
    }

    #[test]
    fn a_whole_snapshot_restores_dirty_for_the_migration() {
        let mut b = Bench::new();
        b.read(0, FIRE3, Value::Bool(true));
        b.device(0, "fence", false);
        let mut r = Bench::new();
        r.engine.restore(&b.engine.snapshot()).unwrap();
        let mut saved = BTreeMap::new();
        save_dirty(&mut r.engine, &mut saved);
        assert_eq!(
            saved.keys().collect::<Vec<_>>(),
            ["alarm/fire-panel-a/zone-3", "offline/fence"]
        );
    }
}

mod snapshot {
    use super::*;

    fn restored(b: &Bench) -> (Bench, usize) {
        let snap = b.engine.snapshot();
        let mut fresh = Bench::new();
        let n = fresh.engine.restore(&snap).unwrap();
        (fresh, n)
    }

    #[test]
    fn snapshot_lists_non_normal_alarms() {
        let mut b = Bench::new();
        assert_eq!(
            b.engine.snapshot(),
            serde_json::json!({"version": 1, "alarms": [], "offline_devices": []})
        );
        b.read(0, FIRE3, Value::Bool(true));
        b.read(0, FIRE4, Value::Bool(true));
        b.read(1, FIRE4, Value::Bool(false));
        assert_eq!(
            b.engine.snapshot(),
            serde_json::json!({"version": 1, "alarms": [
                {"key": FIRE3, "state": "active_unacked", "condition": true},
                {"key": FIRE4, "state": "returned_unacked", "condition": false},
            ], "offline_devices": []})
        );
    }

    #[test]
    fn latched_fire_survives_restart_until_acked() {
        let mut b = Bench::new();
        b.read(0, FIRE3, Value::Bool(true));
        b.read(10, FIRE3, Value::Bool(false));
        let (mut r, n) = restored(&b);
        assert_eq!(n, 1);
        assert_eq!(r.state(FIRE3), ActiveUnacked);
        assert_eq!(r.engine.active_count(), 1);
        // Still normal after restart: stays latched, no new raise.
        assert!(r.read(100, FIRE3, Value::Bool(false)).is_empty());
        assert_eq!(
            kinds(&r.ack(200, FIRE3).unwrap()),
            [(Acked, Some(ActiveAcked)), (Cleared, Some(Normal))]
        );
    }

    #[test]
    fn restored_alarm_is_not_raised_again_while_active() {
        let mut b = Bench::new();
        b.read(0, FIRE4, Value::Bool(true));
        b.ack(5, FIRE4).unwrap();
        let (mut r, _) = restored(&b);
        assert_eq!(r.state(FIRE4), ActiveAcked);
        assert!(r.read(100, FIRE4, Value::Bool(true)).is_empty());
        assert_eq!(
            kinds(&r.read(200, FIRE4, Value::Bool(false))),
            [(Cleared, Some(Normal))]
        );
    }

    #[test]
    fn restored_returned_unacked_still_needs_ack_and_reraises() {
        let mut b = Bench::new();
        b.read(0, FIRE4, Value::Bool(true));
        b.read(1, FIRE4, Value::Bool(false));
        let (mut r, _) = restored(&b);
        assert!(r.bad(50, FIRE4).is_empty());
        assert_eq!(
            kinds(&r.read(100, FIRE4, Value::Bool(true))),
            [(Raised, Some(ActiveUnacked))]
        );
    }

    #[test]
    fn comm_alarm_and_offline_device_survive_restart() {
        let mut b = Bench::new();
        b.device(0, "fire-panel-a", false);
        let (mut r, n) = restored(&b);
        assert_eq!(n, 1);
        assert_eq!(r.state("fire-panel-a/comm"), ActiveUnacked);
        assert!(r.engine.device_offline(0));
        // Still unreachable: no second offline event, no second raise.
        assert!(r.device(10, "fire-panel-a", false).is_empty());
        // Back: online, and the alarm returns.
        assert_eq!(
            kinds(&r.device(20, "fire-panel-a", true)),
            [
                (EventKind::DeviceOnline, None),
                (Cleared, Some(ReturnedUnacked))
            ]
        );
    }

    #[test]
    fn states_repaired_on_restore_are_dirty() {
        let mut b = Bench::new();
        let saved = |key: &str, json: &str| (format!("alarm/{key}"), json.as_bytes().to_vec());
        let r = b.engine.restore_states(
            &[
                // Non-latching, saved active with its condition gone:
                // repaired to returned_unacked.
                saved(FIRE4, r#"{"state":"active_unacked","condition":false}"#),
                // Saved as it is restored: not dirty.
                saved(FIRE3, r#"{"state":"active_unacked","condition":true}"#),
            ],
            &[],
        );
        assert_eq!(r.alarms, 2);
        assert_eq!(b.state(FIRE4), ReturnedUnacked);
        let names: Vec<String> = b
            .engine
            .dirty_states()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, [format!("alarm/{FIRE4}")]);
    }

    #[test]
    fn unknown_keys_skipped_and_bad_snapshots_refused() {
        let mut b = Bench::new();
        let v = serde_json::json!({"version": 1, "alarms": [
            {"key": "gone/point", "state": "active_unacked", "condition": true},
            {"key": FIRE4, "state": "active_unacked", "condition": false},
        ]});
        assert_eq!(b.engine.restore(&v), Ok(1));
        // Non-latching active_unacked with the condition gone is repaired.
        assert_eq!(b.state(FIRE4), ReturnedUnacked);
        for bad in [
            serde_json::json!({"version": 2, "alarms": []}),
            serde_json::json!({"alarms": []}),
            serde_json::json!({"version": 1, "alarms": [{"key": FIRE3, "state": "burning", "condition": true}]}),
            serde_json::json!("nonsense"),
        ] {
            assert!(matches!(
                b.engine.restore(&bad),
                Err(AlarmError::Snapshot(_))
            ));
        }
    }
}

impl Bench {
    fn with(cfg: LoadedConfig) -> Bench {
        let engine = AlarmEngine::new(&cfg);
        Bench {
            cfg,
            engine,
            t0: Instant::now(),
            out: Vec::new(),
        }
    }
    fn shelve(&mut self, ms: u64, key: &str, secs: u64) -> Result<Vec<NewEvent>, AlarmError> {
        self.engine.shelve(
            self.at(ms),
            Self::ts(ms),
            key,
            Duration::from_secs(secs),
            "control-room/wang",
            Some("fence maintenance"),
            &mut self.out,
        )?;
        Ok(std::mem::take(&mut self.out))
    }
    /// From `ms` on, `zones` are disarmed and every other zone armed.
    fn disarm(&mut self, ms: u64, zones: &[&str]) -> Vec<NewEvent> {
        self.engine.set_armed_zones(
            self.at(ms),
            Self::ts(ms),
            Arc::new(ArmedZones::with_disarmed(zones.iter().copied())),
            &mut self.out,
        );
        std::mem::take(&mut self.out)
    }
}

#[test]
fn shelved_alarm_is_silent_then_judged_afresh() {
    let mut b = Bench::new();
    b.read(0, FENCE, Value::Bool(true));
    assert_eq!(
        kinds(&b.tick(2000)),
        vec![(EventKind::AlarmRaised, Some(AlarmState::ActiveUnacked))]
    );
    let ev = b.shelve(3000, FENCE, 60).unwrap();
    assert_eq!(
        kinds(&ev),
        vec![(EventKind::AlarmShelved, Some(AlarmState::Shelved))]
    );
    let a = ev[0].alarm.as_ref().unwrap();
    assert_eq!(a.operator.as_deref(), Some("control-room/wang"));
    assert_eq!(a.comment.as_deref(), Some("fence maintenance"));
    assert!(ev[0].detail.as_ref().unwrap()["shelved_until"].is_string());
    assert_eq!(b.state(FENCE), AlarmState::Shelved);
    assert!(b.engine.is_shelved(FENCE));
    // While shelved: no acknowledgement needed, nothing annunciated.
    assert_eq!(
        b.ack(3500, FENCE),
        Err(AlarmError::NotUnacked(FENCE.into()))
    );
    assert!(b.read(4000, FENCE, Value::Bool(false)).is_empty());
    assert!(b.tick(10_000).is_empty());
    assert!(b.read(20_000, FENCE, Value::Bool(true)).is_empty());
    assert!(b.tick(22_000).is_empty());
    assert_eq!(b.engine.next_deadline(), Some(b.at(63_000)));
    // Shelf over with the condition active: raised again.
    let ev = b.tick(63_000);
    assert_eq!(
        kinds(&ev),
        vec![
            (EventKind::AlarmShelved, Some(AlarmState::ActiveUnacked)),
            (EventKind::AlarmRaised, Some(AlarmState::ActiveUnacked))
        ]
    );
    assert_eq!(ev[0].detail.as_ref().unwrap()["unshelved"], "expired");
    assert!(!b.engine.is_shelved(FENCE));
    // Shelved again, condition gone by the end: back to normal quietly.
    b.shelve(64_000, FENCE, 10).unwrap();
    b.read(65_000, FENCE, Value::Bool(false));
    b.tick(70_000);
    let ev = b.tick(74_000);
    assert_eq!(
        kinds(&ev),
        vec![(EventKind::AlarmShelved, Some(AlarmState::Normal))]
    );
    assert_eq!(b.state(FENCE), AlarmState::Normal);
}

#[test]
fn life_safety_alarms_cannot_be_shelved() {
    let mut b = Bench::new();
    b.read(0, FIRE3, Value::Bool(true));
    assert_eq!(
        b.shelve(1, FIRE3, 60),
        Err(AlarmError::NotShelvable(FIRE3.into()))
    );
    assert_eq!(b.state(FIRE3), AlarmState::ActiveUnacked);
    assert!(matches!(
        b.shelve(1, "nope", 60),
        Err(AlarmError::UnknownAlarm(_))
    ));
}

#[test]
fn a_shelf_survives_a_restart() {
    let mut b = Bench::new();
    b.read(0, FENCE, Value::Bool(true));
    b.tick(2000);
    b.shelve(3000, FENCE, 60).unwrap();
    let snap = b.engine.snapshot();
    let mut c = Bench::new();
    c.engine.restore(&snap).unwrap();
    assert_eq!(c.state(FENCE), AlarmState::Shelved);
    // Restarted at 10 s (wall clock): shelved until 63 s, 53 s left.
    assert!(c.tick(10_000).is_empty());
    assert_eq!(c.engine.next_deadline(), Some(c.at(63_000)));
    assert!(c.tick(62_999).is_empty());
    let ev = c.tick(63_000);
    assert_eq!(ev[0].kind, EventKind::AlarmShelved);
    assert_eq!(
        c.state(FENCE),
        AlarmState::ActiveUnacked,
        "condition saved active"
    );
}

#[test]
fn disarmed_zone_records_at_low_priority_but_fire_is_never_disarmed() {
    let mut b = Bench::new();
    b.disarm(0, &["perimeter-north", "villa-12"]);
    b.read(0, FENCE, Value::Bool(true));
    let ev = b.tick(2000);
    assert_eq!(
        kinds(&ev),
        vec![(EventKind::AlarmRaised, Some(AlarmState::ActiveUnacked))]
    );
    assert_eq!(ev[0].priority, Priority::INFO);
    let d = ev[0].detail.as_ref().unwrap();
    assert_eq!(d["zone_disarmed"], true);
    assert_eq!(d["rule_priority"], 2);
    // The guards' list shows it as recorded, below the armed zones' alarms.
    let listed = &b.engine.active()[0];
    assert_eq!(
        (listed.priority, listed.zone_disarmed),
        (Priority::INFO, true)
    );
    // The whole activation stays quiet, even once re-armed.
    assert!(b.disarm(2500, &[]).is_empty());
    b.read(3000, FENCE, Value::Bool(false));
    let ev = b.tick(8000);
    assert_eq!(ev[0].kind, EventKind::AlarmCleared);
    assert_eq!(ev[0].priority, Priority::INFO);
    b.ack(9000, FENCE).unwrap();
    // Armed now: the next trip is raised at its priority.
    b.read(10_000, FENCE, Value::Bool(true));
    let ev = b.tick(12_000);
    assert_eq!(ev[0].priority, Priority::HIGH);
    assert!(ev[0].detail.is_none());

    // Fire in a disarmed zone: priority 1 regardless.
    let mut b = Bench::new();
    b.disarm(0, &["villa-12"]);
    let ev = b.read(0, FIRE3, Value::Bool(true));
    assert_eq!(ev[0].priority, Priority::LIFE_SAFETY);
    assert!(ev[0].detail.is_none());
}

#[test]
fn when_disarmed_ignore_and_raise() {
    let ignore = CONFIG.replace(
        "message = \"Fence zone 1 cut\"",
        "message = \"Fence zone 1 cut\"\nwhen_disarmed = \"ignore\"",
    );
    let mut b = Bench::with(load_str(&ignore, Path::new("t.toml")).unwrap());
    b.disarm(0, &["perimeter-north"]);
    b.read(0, FENCE, Value::Bool(true));
    assert!(b.tick(5000).is_empty(), "ignored while disarmed");
    // Armed with the fence still cut: judged again at once, without a new
    // reading (a device that reports only changes sends none), through the
    // rule's on-delay.
    assert!(b.disarm(6000, &[]).is_empty());
    let ev = b.tick(8000);
    assert_eq!(
        kinds(&ev),
        vec![(EventKind::AlarmRaised, Some(AlarmState::ActiveUnacked))]
    );
    assert_eq!(ev[0].priority, Priority::HIGH);
    assert_eq!(
        ev[0].ts,
        Bench::ts(8000),
        "raised when the on-delay ran out"
    );
    // Disarmed again while active: the alarm returns (unacknowledged).
    let ev = b.disarm(9000, &["perimeter-north"]);
    let ev = [ev, b.tick(15_000)].concat();
    assert_eq!(
        kinds(&ev),
        vec![(EventKind::AlarmCleared, Some(AlarmState::ReturnedUnacked))]
    );
    // A zone that did not change leaves the rule alone.
    assert!(b
        .disarm(16_000, &["perimeter-north", "villa-12"])
        .is_empty());
    assert!(b.tick(30_000).is_empty());

    let raise = CONFIG.replace(
        "message = \"Fence zone 1 cut\"",
        "message = \"Fence zone 1 cut\"\nwhen_disarmed = \"raise\"",
    );
    let mut b = Bench::with(load_str(&raise, Path::new("t.toml")).unwrap());
    b.disarm(0, &["perimeter-north"]);
    b.read(0, FENCE, Value::Bool(true));
    assert_eq!(b.tick(2000)[0].priority, Priority::HIGH);
}

#[test]
fn when_disarmed_on_fire_is_a_config_error() {
    let bad = CONFIG.replace(
        "message = \"Smoke detector zone 3\"",
        "message = \"Smoke detector zone 3\"\nwhen_disarmed = \"ignore\"",
    );
    let err = load_str(&bad, Path::new("t.toml")).unwrap_err().to_string();
    assert!(err.contains("never disarmable"), "{err}");
}

#[test]
fn a_tamper_rule_records_gateway_tamper_after_each_raise() {
    // The fence's spare input stands in for the gateway's own lid switch.
    let with_tamper = format!(
        "{CONFIG}\n[[alarms]]\npoint = \"fence/spare\"\nequals = true\npriority = 2\n\
         category = \"system\"\nmessage = \"Gateway enclosure opened\"\ntamper = true\n"
    );
    let mut b = Bench::with(load_str(&with_tamper, Path::new("t.toml")).unwrap());
    let lid = "fence/spare";
    let ev = b.read(0, lid, Value::Bool(true));
    assert_eq!(
        kinds(&ev),
        vec![
            (Raised, Some(ActiveUnacked)),
            (EventKind::GatewayTamper, Some(ActiveUnacked))
        ]
    );
    assert_eq!(
        NewEvent {
            kind: Raised,
            ..ev[1].clone()
        },
        ev[0],
        "the tamper event repeats the raise: key, value, source, priority"
    );
    assert_eq!(ev[1].category, Category::System);
    // The alarm's own life cycle carries no second tamper event.
    assert_eq!(
        kinds(&b.ack(10, lid).unwrap()),
        vec![(Acked, Some(ActiveAcked))]
    );
    assert_eq!(
        kinds(&b.read(20, lid, Value::Bool(false))),
        vec![(Cleared, Some(Normal))]
    );
    // Opened again: raised again, and tampered again.
    assert_eq!(
        kinds(&b.read(30, lid, Value::Bool(true)))[1],
        (EventKind::GatewayTamper, Some(ActiveUnacked))
    );
    // Rules without `tamper` never record one.
    assert_eq!(kinds(&b.read(40, FIRE3, Value::Bool(true))).len(), 1);
}

mod persistence {
    use super::*;
    use crate::alarm::persist::StateFile;
    use crate::journal::{Journal, JournalConfig, MemStorage};
    use std::sync::Arc;

    fn journal(mem: &Arc<MemStorage>, dir: &Path) -> Journal {
        let cfg = JournalConfig {
            path: dir.to_path_buf(),
            ..load_str(CONFIG, Path::new("test.toml"))
                .unwrap()
                .config
                .journal
        };
        Journal::with_storage_and_wal(mem.clone(), Some(dir), &cfg, "gw", &["uplink"]).unwrap()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn old_state_file_is_restored_once_then_moved_into_the_journal() {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemStorage::new());
        // An earlier version left its states in alarm-state.json.
        let mut before = Bench::new();
        before.read(0, FIRE3, Value::Bool(true));
        let legacy = StateFile::in_dir(dir.path());
        legacy.save(&before.engine.snapshot()).unwrap();

        let j = journal(&mem, dir.path());
        let mut b = Bench::new();
        rt.block_on(super::super::task::restore(&mut b.engine, &j, &legacy));
        assert_eq!(b.engine.snapshot(), before.engine.snapshot());
        assert!(!legacy.path().exists(), "the old file is removed");
        // The states are in the journal now, durable: a crash of the store
        // keeps them (WAL), and the next start restores them from there.
        mem.crash();
        j.abandon();
        let j = journal(&mem, dir.path());
        let mut c = Bench::new();
        rt.block_on(super::super::task::restore(&mut c.engine, &j, &legacy));
        assert_eq!(c.engine.snapshot(), before.engine.snapshot());
    }

    /// The whole-engine snapshot earlier versions saved with every commit.
    fn save_old_snapshot(rt: &tokio::runtime::Runtime, j: &Journal, b: &Bench) {
        let bytes = serde_json::to_vec(&b.engine.snapshot()).unwrap();
        rt.block_on(j.save_state(task::ALARM_STATE, bytes)).unwrap();
    }

    fn saved_names(j: &Journal) -> Vec<String> {
        let mut v: Vec<String> = j
            .load_states(ALARM_STATE_PREFIX)
            .unwrap()
            .into_iter()
            .chain(j.load_states(OFFLINE_STATE_PREFIX).unwrap())
            .map(|(n, _)| n)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn old_snapshot_in_the_journal_becomes_per_alarm_states_then_goes() {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemStorage::new());
        let mut before = Bench::new();
        before.read(0, FIRE3, Value::Bool(true));
        before.device(0, "hvac-1", false);
        let j = journal(&mem, dir.path());
        save_old_snapshot(&rt, &j, &before);
        // A per-alarm state left from before a downgrade (this version
        // wrote it, the older one then saved the snapshot). Written here
        // after the snapshot, so its version is the higher one: versions
        // do not decide, the snapshot's presence does. The snapshot wins
        // and this state, which the snapshot does not hold, is removed.
        rt.block_on(j.record_with_states(
            vec![],
            vec![(
                "alarm/fence/zone-1".into(),
                Some(br#"{"state":"active_unacked","condition":true}"#.to_vec()),
            )],
        ))
        .unwrap();
        rt.block_on(j.flush()).unwrap();
        let legacy = StateFile::in_dir(dir.path());
        let mut b = Bench::new();
        rt.block_on(task::restore(&mut b.engine, &j, &legacy));
        assert_eq!(b.engine.snapshot(), before.engine.snapshot());
        assert!(!b.engine.has_dirty());
        assert_eq!(j.load_state(task::ALARM_STATE).unwrap(), None);
        assert_eq!(
            saved_names(&j),
            ["alarm/fire-panel-a/zone-3", "offline/hvac-1"]
        );
        // Durable: a crash of the store keeps the migration (WAL).
        mem.crash();
        j.abandon();
        let j = journal(&mem, dir.path());
        assert_eq!(j.load_state(task::ALARM_STATE).unwrap(), None);
        let mut c = Bench::new();
        rt.block_on(task::restore(&mut c.engine, &j, &legacy));
        assert_eq!(c.engine.snapshot(), before.engine.snapshot());
    }

    #[test]
    fn a_migration_cut_short_before_the_old_snapshot_goes_is_done_again() {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemStorage::new());
        let mut before = Bench::new();
        before.read(0, FIRE3, Value::Bool(true));
        before.read(0, FIRE4, Value::Bool(true));
        before.read(1, FIRE4, Value::Bool(false));
        let j = journal(&mem, dir.path());
        save_old_snapshot(&rt, &j, &before);
        rt.block_on(j.flush()).unwrap();
        let legacy = StateFile::in_dir(dir.path());
        let mut b = Bench::new();
        rt.block_on(task::restore(&mut b.engine, &j, &legacy));
        mem.crash();
        j.abandon();
        // Power cut during that commit's write: the WAL keeps a prefix of
        // its records, the per-alarm states without the snapshot's
        // removal (the last record: kind 3, "alarms").
        let wal = dir.path().join("wal.0");
        let mut bytes = std::fs::read(&wal).unwrap();
        let removal = bytes
            .windows(7)
            .rposition(|w| w == b"\x06alarms")
            .expect("the removal record");
        let seq = u64::from_le_bytes(bytes[removal - 8..removal].try_into().unwrap());
        assert_eq!(seq >> 56, 3, "the snapshot's removal is the last record");
        bytes[removal + 1] ^= 0xff;
        std::fs::write(&wal, &bytes).unwrap();
        let j = journal(&mem, dir.path());
        assert!(j.load_state(task::ALARM_STATE).unwrap().is_some());
        assert_eq!(
            saved_names(&j),
            ["alarm/fire-panel-a/zone-3", "alarm/fire-panel-a/zone-4"]
        );
        // The next start restores from the snapshot again, and finishes.
        let mut c = Bench::new();
        rt.block_on(task::restore(&mut c.engine, &j, &legacy));
        assert_eq!(c.engine.snapshot(), before.engine.snapshot());
        assert_eq!(j.load_state(task::ALARM_STATE).unwrap(), None);
        let mut d = Bench::new();
        rt.block_on(task::restore(&mut d.engine, &j, &legacy));
        assert_eq!(d.engine.snapshot(), before.engine.snapshot());
    }

    #[test]
    fn states_of_alarms_no_longer_configured_are_removed_at_start() {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemStorage::new());
        let j = journal(&mem, dir.path());
        let active = br#"{"state":"active_unacked","condition":true}"#.to_vec();
        rt.block_on(j.record_with_states(
            vec![],
            vec![
                ("alarm/gone/point".into(), Some(active.clone())),
                (format!("alarm/{FIRE3}"), Some(active)),
                ("offline/gone".into(), Some(br#"{"offline":true}"#.to_vec())),
            ],
        ))
        .unwrap();
        let mut b = Bench::new();
        rt.block_on(task::restore(
            &mut b.engine,
            &j,
            &StateFile::in_dir(dir.path()),
        ));
        assert_eq!(b.state(FIRE3), AlarmState::ActiveUnacked);
        assert_eq!(saved_names(&j), [format!("alarm/{FIRE3}")]);
    }

    #[test]
    fn states_saved_with_each_commit_come_back_after_a_crash() {
        use crate::point::{BusMessage, Reading};
        use tokio::sync::mpsc;
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemStorage::new());
        let j = journal(&mem, dir.path());
        let b = Bench::new();
        let cfg = Arc::new(super::cfg());
        let status = Arc::new(crate::status::GatewayStatus::new(
            cfg.config.devices.len() as u64
        ));
        let (bus, bus_rx) = mpsc::channel(16);
        let (_requests, requests_rx) = mpsc::channel(1);
        let running = rt.spawn(task::run(cfg, j.clone(), status, bus_rx, requests_rx));
        let reading = |key: &str, v: bool| BusMessage::Readings {
            device: key.split('/').next().unwrap().into(),
            ts: Timestamp::now(),
            replied_at: Instant::now(),
            readings: vec![Reading {
                point: b.point(key),
                value: Value::Bool(v),
            }],
        };
        rt.block_on(async {
            bus.send(reading(FIRE3, true)).await.unwrap();
            bus.send(reading(FIRE4, true)).await.unwrap();
            bus.send(reading(FIRE4, false)).await.unwrap();
            bus.send(BusMessage::DeviceStatus {
                device: "hvac-1".into(),
                ts: Timestamp::now(),
                online: false,
                reason: Some("timeout".into()),
            })
            .await
            .unwrap();
            // raised ×2, cleared, device.offline: durable with their states.
            let mut head = j.watch();
            while head.borrow_and_update().last_seq < 4 {
                head.changed().await.unwrap();
            }
            j.wait_durable(4).await.unwrap();
        });
        // The process dies: no shutdown save.
        mem.crash();
        j.abandon();
        running.abort();
        drop(rt);
        let rt = self::rt();
        let j = journal(&mem, dir.path());
        let mut c = Bench::new();
        rt.block_on(task::restore(
            &mut c.engine,
            &j,
            &StateFile::in_dir(dir.path()),
        ));
        assert_eq!(c.state(FIRE3), AlarmState::ActiveUnacked);
        assert_eq!(c.state(FIRE4), AlarmState::ReturnedUnacked);
        assert!(c.engine.device_offline(2));
        assert_eq!(
            saved_names(&j),
            [
                format!("alarm/{FIRE3}"),
                format!("alarm/{FIRE4}"),
                "offline/hvac-1".to_string()
            ]
        );
    }

    #[test]
    fn old_state_file_is_not_read_once_the_journal_is_marked() {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemStorage::new());
        let j = journal(&mem, dir.path());
        let legacy = StateFile::in_dir(dir.path());
        // A first start without the old file: every alarm normal, nothing
        // saved per alarm, the marker saved.
        let mut b = Bench::new();
        rt.block_on(task::restore(&mut b.engine, &j, &legacy));
        assert!(j.load_state(task::MIGRATED_STATE).unwrap().is_some());
        // The old file is there again (its removal failed once, or a stale
        // copy was put back): months-old states.
        let mut old = Bench::new();
        old.read(0, FIRE3, Value::Bool(true));
        legacy.save(&old.engine.snapshot()).unwrap();
        let mut c = Bench::new();
        rt.block_on(task::restore(&mut c.engine, &j, &legacy));
        assert_eq!(
            c.state(FIRE3),
            AlarmState::Normal,
            "the old file is not read"
        );
        assert!(saved_names(&j).is_empty());
        // Durable: after a crash of the store the marker still holds.
        mem.crash();
        j.abandon();
        let j = journal(&mem, dir.path());
        legacy.save(&old.engine.snapshot()).unwrap();
        let mut d = Bench::new();
        rt.block_on(task::restore(&mut d.engine, &j, &legacy));
        assert_eq!(d.state(FIRE3), AlarmState::Normal);
    }

    #[test]
    fn the_file_migration_saves_the_marker_in_its_commit() {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemStorage::new());
        let mut before = Bench::new();
        before.read(0, FIRE4, Value::Bool(true));
        before.read(1, FIRE4, Value::Bool(false));
        let legacy = StateFile::in_dir(dir.path());
        legacy.save(&before.engine.snapshot()).unwrap();
        let j = journal(&mem, dir.path());
        let mut b = Bench::new();
        rt.block_on(task::restore(&mut b.engine, &j, &legacy));
        assert_eq!(b.state(FIRE4), AlarmState::ReturnedUnacked);
        assert!(j.load_state(task::MIGRATED_STATE).unwrap().is_some());
        // The alarm is acknowledged: nothing is saved per alarm any more.
        // A copy of the old file must not bring it back.
        rt.block_on(j.record_with_states(vec![], vec![(format!("alarm/{FIRE4}"), None)]))
            .unwrap();
        legacy.save(&before.engine.snapshot()).unwrap();
        let mut c = Bench::new();
        rt.block_on(task::restore(&mut c.engine, &j, &legacy));
        assert_eq!(c.state(FIRE4), AlarmState::Normal);
    }

    #[test]
    fn a_save_at_stop_refused_as_full_is_retried_within_its_bound() {
        use crate::journal::JournalError;
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemStorage::new());
        let cfg = JournalConfig {
            path: dir.path().to_path_buf(),
            telemetry_flush: Duration::from_secs(3600),
            ..JournalConfig::default()
        };
        // Small WAL files: both fill up at once while the store fails.
        let j = Journal::with_storage_and_wal_sized(
            mem.clone(),
            Some(dir.path()),
            4096,
            &cfg,
            "gw",
            &["uplink"],
        )
        .unwrap();
        mem.set_fail_apply(true);
        mem.set_fail_flush(true);
        let ev = || {
            NewEvent::system(
                EventKind::ConfigChanged,
                crate::event::Priority::INFO,
                serde_json::json!({}),
            )
        };
        // Events queue until the journal refuses more.
        for _ in 0..100 {
            match rt.block_on(j.record(vec![ev(); 500])) {
                Ok(_) | Err(JournalError::NotDurable { .. }) => {}
                Err(JournalError::Full(_)) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(matches!(
            rt.block_on(j.record(vec![ev()])),
            Err(JournalError::Full(_))
        ));
        let name = format!("alarm/{FIRE3}");
        let data = br#"{"state":"active_unacked","condition":false}"#.to_vec();
        let changes = vec![(name.clone(), Some(data.clone()))];
        // One try (no time to retry): refused, not queued.
        assert!(!rt.block_on(task::save_on_stop(&j, changes.clone(), Duration::ZERO)));
        assert_eq!(j.load_state(&name).unwrap(), None);
        // Space returns while the stop retries: saved.
        let m = mem.clone();
        let heal = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            m.set_fail_apply(false);
            m.set_fail_flush(false);
        });
        assert!(rt.block_on(task::save_on_stop(&j, changes, Duration::from_secs(10))));
        heal.join().unwrap();
        assert_eq!(j.load_state(&name).unwrap(), Some(data));
    }

    #[test]
    fn no_saved_states_starts_from_normal() {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemStorage::new());
        let j = journal(&mem, dir.path());
        let mut b = Bench::new();
        let legacy = StateFile::in_dir(dir.path());
        rt.block_on(super::super::task::restore(&mut b.engine, &j, &legacy));
        assert_eq!(b.engine.snapshot(), Bench::new().engine.snapshot());
    }
}

/// Scenario A's shape: 50 devices with an alarm on coil 0 each, most of
/// them left returned-unacknowledged. A commit used to carry the whole
/// snapshot (every non-normal alarm); now it carries the changed alarm.
#[test]
fn a_commit_carries_the_changed_alarm_whatever_the_number_active() {
    let mut toml =
        String::from("[site]\nid = \"bench\"\ngateway = \"gw\"\n[uplink]\nhost = \"127.0.0.1\"\n");
    for d in 0..50 {
        toml.push_str(&format!(
            "[[devices]]\nid = \"dev-{d:02}\"\ncategory = \"perimeter\"\n\
             [devices.modbus]\nhost = \"127.0.0.1\"\nport = {}\n\
             [[devices.points]]\nid = \"coil-0\"\nregister = \"coil\"\naddress = 0\n",
            15000 + d
        ));
    }
    for d in 0..50 {
        toml.push_str(&format!(
            "[[alarms]]\npoint = \"dev-{d:02}/coil-0\"\nequals = true\npriority = 2\n\
             message = \"Coil {d}\"\n"
        ));
    }
    let mut b = Bench::with(load_str(&toml, Path::new("bench.toml")).unwrap());
    for d in 0..50 {
        let key = format!("dev-{d:02}/coil-0");
        b.read(0, &key, Value::Bool(true));
        b.read(1, &key, Value::Bool(false));
    }
    b.engine.clear_dirty();
    let ev = b.read(2, "dev-07/coil-0", Value::Bool(true));
    assert_eq!(ev.len(), 1);
    // WAL bytes of the states in this commit: a record header (16), the
    // name's length byte, the name, the data.
    let record = |name: &str, data: usize| 16 + 1 + name.len() + data;
    let old = serde_json::to_vec(&b.engine.snapshot()).unwrap();
    let old_bytes = record(task::ALARM_STATE, old.len());
    let new_bytes: usize = b
        .engine
        .dirty_states()
        .iter()
        .map(|(n, d)| record(n, d.as_ref().map_or(0, Vec::len)))
        .sum();
    println!("state bytes per commit: whole snapshot {old_bytes}, changed alarm {new_bytes}");
    assert!(old_bytes > 3000, "{old_bytes}");
    assert!(new_bytes < 100, "{new_bytes}");
}

/// `n` devices `dev-00`… with an alarm on their coil, journal in `dir`.
fn coil_devices(n: usize, dir: &Path) -> LoadedConfig {
    let mut toml =
        String::from("[site]\nid = \"bench\"\ngateway = \"gw\"\n[uplink]\nhost = \"127.0.0.1\"\n");
    for d in 0..n {
        toml.push_str(&format!(
            "[[devices]]\nid = \"dev-{d:02}\"\ncategory = \"perimeter\"\n\
             [devices.modbus]\nhost = \"127.0.0.1\"\nport = {}\n\
             [[devices.points]]\nid = \"coil-0\"\nregister = \"coil\"\naddress = 0\n\
             [[alarms]]\npoint = \"dev-{d:02}/coil-0\"\nequals = true\npriority = 2\n\
             message = \"Coil {d}\"\n",
            15000 + d
        ));
    }
    let mut cfg = load_str(&toml, Path::new("bench.toml")).unwrap();
    cfg.config.journal.path = dir.to_path_buf();
    cfg.config.journal.telemetry_flush = Duration::from_secs(3600);
    cfg
}

/// `n` coil devices (see [`coil_devices`]), their points, and a journal
/// without a WAL on `mem`, in a directory of its own (kept while `_dir`
/// lives).
struct CoilJournal {
    _dir: tempfile::TempDir,
    cfg: LoadedConfig,
    points: Bench,
    mem: std::sync::Arc<crate::journal::MemStorage>,
    j: crate::journal::Journal,
}

fn coil_journal(n: usize, mem: crate::journal::MemStorage) -> CoilJournal {
    let dir = tempfile::tempdir().unwrap();
    let cfg = coil_devices(n, dir.path());
    let points = Bench::with(cfg.clone());
    let mem = std::sync::Arc::new(mem);
    let j =
        crate::journal::Journal::with_storage(mem.clone(), &cfg.config.journal, "gw", &["uplink"])
            .unwrap();
    CoilJournal {
        _dir: dir,
        cfg,
        points,
        mem,
        j,
    }
}

/// A coil reading of `dev-NN` as its driver sends it.
fn coil_reading(points: &Bench, d: usize, v: bool) -> crate::point::BusMessage {
    crate::point::BusMessage::Readings {
        device: format!("dev-{d:02}").into(),
        ts: Timestamp::now(),
        replied_at: Instant::now(),
        readings: vec![crate::point::Reading {
            point: points.point(&format!("dev-{d:02}/coil-0")),
            value: Value::Bool(v),
        }],
    }
}

/// The alarm task as the daemon runs it, on its own runtime: its bus and
/// request senders and the running task.
struct RunningTask {
    rt: tokio::runtime::Runtime,
    bus: tokio::sync::mpsc::Sender<crate::point::BusMessage>,
    requests: tokio::sync::mpsc::Sender<super::task::AlarmRequest>,
    running: tokio::task::JoinHandle<()>,
}

/// A guard's acknowledgement of `key`, answered on `reply`.
fn guard_ack(
    key: &str,
    reply: tokio::sync::oneshot::Sender<Result<(), AlarmError>>,
) -> super::task::AlarmRequest {
    super::task::AlarmRequest::Acknowledge {
        key: key.into(),
        operator: "guard".into(),
        comment: None,
        reply,
    }
}

/// Acknowledge `key` as a guard through the running task; its answer.
async fn acknowledge(
    requests: &tokio::sync::mpsc::Sender<super::task::AlarmRequest>,
    key: &str,
) -> Result<(), AlarmError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    requests.send(guard_ack(key, reply)).await.unwrap();
    answer.await.unwrap()
}

fn run_task(cfg: LoadedConfig, j: &crate::journal::Journal) -> RunningTask {
    run_task_with(cfg, j, super::task::Hooks::default())
}

/// [`run_task`] with arming, linkage or live-view hooks.
fn run_task_with(
    cfg: LoadedConfig,
    j: &crate::journal::Journal,
    hooks: super::task::Hooks,
) -> RunningTask {
    let status = std::sync::Arc::new(crate::status::GatewayStatus::new(
        cfg.config.devices.len() as u64
    ));
    let (bus, bus_rx) = tokio::sync::mpsc::channel(256);
    let (requests, requests_rx) = tokio::sync::mpsc::channel(4);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let running = rt.spawn(super::task::run_with(
        std::sync::Arc::new(cfg),
        j.clone(),
        status,
        bus_rx,
        requests_rx,
        hooks,
    ));
    RunningTask {
        rt,
        bus,
        requests,
        running,
    }
}

/// The same shape through the alarm task: what its commit of the one
/// change actually writes to the WAL is the changed alarm's state alone.
#[test]
fn the_task_records_only_the_changed_alarm_whatever_the_number_active() {
    use crate::journal::{Journal, MemStorage};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let cfg = coil_devices(50, dir.path());
    let points = Bench::with(cfg.clone());
    let mem = Arc::new(MemStorage::new());
    let j = Journal::with_storage_and_wal(
        mem,
        Some(dir.path()),
        &cfg.config.journal,
        "gw",
        &["uplink"],
    )
    .unwrap();
    let RunningTask {
        rt, bus, running, ..
    } = run_task(cfg, &j);
    let reading = |d: usize, v: bool| coil_reading(&points, d, v);
    let wait_seq = |j: &Journal, seq: u64| {
        let mut head = j.watch();
        async move {
            while head.borrow_and_update().last_seq < seq {
                head.changed().await.unwrap();
            }
        }
    };
    rt.block_on(async {
        // Every alarm raised and returned: 50 returned-unacknowledged.
        for d in 0..50 {
            bus.send(reading(d, true)).await.unwrap();
            bus.send(reading(d, false)).await.unwrap();
        }
        wait_seq(&j, 100).await;
        // A checkpoint empties the WAL: what follows is the next commit.
        j.flush().await.unwrap();
        assert!(j.logged_states().is_empty());
        bus.send(reading(7, true)).await.unwrap();
        wait_seq(&j, 101).await;
    });
    let logged = j.logged_states();
    println!("states in the commit of one change: {logged:?}");
    assert_eq!(
        logged.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["alarm/dev-07/coil-0"]
    );
    assert!(logged[0].1 < 100, "{logged:?}");
    drop(bus);
    rt.block_on(running).unwrap();
}

/// Alarms that arrive while a commit runs do not wait for it one by one:
/// the task stages them and goes on, and they share the next commit. An
/// operator's reply still waits until its event is durable.
#[test]
fn a_burst_of_alarms_shares_commits_and_replies_wait_for_durability() {
    use crate::journal::MemStorage;
    const N: usize = 20;
    const FLUSH: Duration = Duration::from_millis(25);
    // No WAL: every commit is a flush of the store, which takes FLUSH.
    let CoilJournal {
        _dir,
        cfg,
        points,
        mem,
        j,
    } = coil_journal(N, MemStorage::with_flush_delay(FLUSH));
    let RunningTask {
        rt,
        bus,
        requests,
        running,
    } = run_task(cfg, &j);
    rt.block_on(async {
        let flushes_before = mem.counts().0;
        for d in 0..N {
            bus.send(coil_reading(&points, d, true)).await.unwrap();
        }
        let mut head = j.watch();
        while head.borrow_and_update().last_seq < N as u64 {
            head.changed().await.unwrap();
        }
        let flushes = mem.counts().0 - flushes_before;
        // One commit after another would be N flushes.
        assert!(flushes <= 4, "{flushes} flushes for {N} alarms");
        let raised: Vec<u64> = j
            .read_events(0, 100)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(raised, (1..=N as u64).collect::<Vec<_>>());
        // An acknowledgement is answered once its event (seq N + 1) is
        // durable, not before.
        acknowledge(&requests, "dev-03/coil-0").await.unwrap();
        assert!(
            j.watch().borrow().last_seq > N as u64,
            "answered before durable"
        );
    });
    drop(bus);
    rt.block_on(running).unwrap();
}

/// Readings already waiting on the bus when the task wakes (the devices
/// of one poll round answer together) are applied in one turn: their
/// alarms go out as one batch, to linkage and to the journal (one commit),
/// not the first alone and the rest after it.
#[test]
fn readings_waiting_together_make_one_batch() {
    use crate::journal::MemStorage;
    const N: usize = 20;
    let CoilJournal {
        _dir,
        cfg,
        points,
        mem,
        j,
    } = coil_journal(N, MemStorage::new());
    let (linkage, mut batches) = tokio::sync::mpsc::channel(64);
    let hooks = super::task::Hooks {
        linkage: Some(linkage),
        ..Default::default()
    };
    let RunningTask {
        rt,
        bus,
        requests,
        running,
    } = run_task_with(cfg, &j, hooks);
    rt.block_on(async {
        // A reply means the task has restored (and committed what the
        // restore saves) and waits in its loop.
        let _ = acknowledge(&requests, "no-such/alarm").await;
        let flushes_before = mem.counts().0;
        // Queued without yielding: all are waiting when the task wakes.
        for d in 0..N {
            bus.try_send(coil_reading(&points, d, true)).unwrap();
        }
        let first = batches.recv().await.unwrap();
        assert_eq!(first.len(), N, "alarms of the first batch");
        let mut head = j.watch();
        while head.borrow_and_update().last_seq < N as u64 {
            head.changed().await.unwrap();
        }
        assert_eq!(mem.counts().0 - flushes_before, 1, "commits for {N} alarms");
    });
    drop(bus);
    rt.block_on(running).unwrap();
}

/// While the journal cannot flush, alarms keep being staged and no
/// operator reply goes out, not even one whose action made no event; once
/// it flushes again every event is there, in order, and the replies follow.
#[test]
fn replies_wait_while_the_journal_cannot_flush_and_nothing_is_lost() {
    use crate::journal::MemStorage;
    use tokio::sync::oneshot;
    const N: usize = 5;
    let CoilJournal {
        _dir,
        cfg,
        points,
        mem,
        j,
    } = coil_journal(N + 1, MemStorage::new());
    let RunningTask {
        rt,
        bus,
        requests,
        running,
    } = run_task(cfg, &j);
    let ack = |reply| guard_ack("dev-00/coil-0", reply);
    rt.block_on(async {
        bus.send(coil_reading(&points, 0, true)).await.unwrap();
        let mut head = j.watch();
        while head.borrow_and_update().last_seq < 1 {
            head.changed().await.unwrap();
        }
        mem.set_fail_flush(true);
        for d in 1..=N {
            bus.send(coil_reading(&points, d, true)).await.unwrap();
        }
        // The first acknowledgement makes an event; the second is refused
        // (already acknowledged) and makes none.
        let (first, mut first_answer) = oneshot::channel();
        let (second, mut second_answer) = oneshot::channel();
        requests.send(ack(first)).await.unwrap();
        requests.send(ack(second)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            first_answer.try_recv().is_err(),
            "answered while not durable"
        );
        assert!(
            second_answer.try_recv().is_err(),
            "refusal overtook the acknowledgement"
        );
        assert_eq!(j.watch().borrow().last_seq, 1);
        mem.set_fail_flush(false);
        first_answer.await.unwrap().unwrap();
        assert!(j.watch().borrow().last_seq >= N as u64 + 2);
        assert!(second_answer.await.unwrap().is_err());
    });
    // Stopping waits for whatever is in flight.
    drop(bus);
    rt.block_on(running).unwrap();
    let all: Vec<u64> = j
        .read_events(0, 100)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(all, (1..=N as u64 + 2).collect::<Vec<_>>());
}
