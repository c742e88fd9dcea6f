//! The one event type that flows drivers → alarm engine → journal → sinks.
//!
//! A [`NewEvent`] is what a producer (alarm engine, driver supervisor, uplink,
//! command path) hands to the journal; the journal gives it a `seq` and `id`
//! and it becomes an [`Event`], serialized exactly as the uplink contract's
//! `events` payload.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Wall-clock time, serialized as RFC 3339 UTC with milliseconds
/// (`2026-11-26T21:04:05.123Z`), as the uplink contract requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub chrono::DateTime<chrono::Utc>);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(chrono::Utc::now())
    }
    /// Milliseconds since the Unix epoch.
    pub fn unix_ms(&self) -> i64 {
        self.0.timestamp_millis()
    }
    pub fn from_unix_ms(ms: i64) -> Option<Self> {
        chrono::DateTime::from_timestamp_millis(ms).map(Timestamp)
    }
}

/// `%Y-%m-%dT%H:%M:%S%.3fZ`, the contract's form.
const RFC3339_MS: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

impl Timestamp {
    /// The RFC 3339 text in `buf`, written digit by digit (every event and
    /// telemetry message carries timestamps: chrono's general formatter
    /// costs about 30 times more). `None` outside years 0–9999 and in a
    /// leap second, which chrono formats instead.
    fn rfc3339_ms(&self, buf: &mut [u8; 24]) -> Option<()> {
        use chrono::{Datelike as _, Timelike as _};
        let (y, nanos) = (self.0.year(), self.0.nanosecond());
        if !(0..=9999).contains(&y) || nanos >= 1_000_000_000 {
            return None;
        }
        let mut put = |at: usize, width: usize, mut v: u32| {
            for i in (at..at + width).rev() {
                buf[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, y as u32);
        put(5, 2, self.0.month());
        put(8, 2, self.0.day());
        put(11, 2, self.0.hour());
        put(14, 2, self.0.minute());
        put(17, 2, self.0.second());
        put(20, 3, nanos / 1_000_000);
        for (at, sep) in [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (23, b'Z'),
        ] {
            buf[at] = sep;
        }
        Some(())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 24];
        match self.rfc3339_ms(&mut buf) {
            // ASCII digits and separators only.
            Some(()) => f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?),
            None => write!(f, "{}", self.0.format(RFC3339_MS)),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 24];
        match self.rfc3339_ms(&mut buf) {
            Some(()) => match std::str::from_utf8(&buf) {
                Ok(text) => s.serialize_str(text),
                Err(_) => s.collect_str(self),
            },
            None => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| Timestamp(t.with_timezone(&chrono::Utc)))
            .map_err(serde::de::Error::custom)
    }
}

/// What happened. Serialized as the contract's dotted `kind` string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "alarm.raised")]
    AlarmRaised,
    #[serde(rename = "alarm.cleared")]
    AlarmCleared,
    #[serde(rename = "alarm.acknowledged")]
    AlarmAcknowledged,
    #[serde(rename = "alarm.shelved")]
    AlarmShelved,
    #[serde(rename = "device.offline")]
    DeviceOffline,
    #[serde(rename = "device.online")]
    DeviceOnline,
    #[serde(rename = "camera.video_loss")]
    CameraVideoLoss,
    #[serde(rename = "camera.video_restored")]
    CameraVideoRestored,
    /// An alarm's clip is complete (attachment: the clip).
    #[serde(rename = "camera.clip_ready")]
    CameraClipReady,
    /// An alarm's clip could not be recorded (`detail.error`).
    #[serde(rename = "camera.clip_failed")]
    CameraClipFailed,
    #[serde(rename = "command.executed")]
    CommandExecuted,
    #[serde(rename = "config.changed")]
    ConfigChanged,
    #[serde(rename = "gateway.started")]
    GatewayStarted,
    #[serde(rename = "gateway.stopped")]
    GatewayStopped,
    #[serde(rename = "gateway.tamper")]
    GatewayTamper,
    /// The gateway lost its link to the central platform (recorded locally,
    /// delivered once the link is back).
    #[serde(rename = "uplink.lost")]
    UplinkLost,
    /// The link to the central platform is back.
    #[serde(rename = "uplink.restored")]
    UplinkRestored,
    /// The journal evicted telemetry or refused data because of its size cap.
    #[serde(rename = "journal.pressure")]
    JournalPressure,
    /// A push to security staff was delivered (detail: channel, alarms).
    #[serde(rename = "push.sent")]
    PushSent,
    /// A push to security staff failed (retried, or given up: `push.dead_lettered`).
    #[serde(rename = "push.failed")]
    PushFailed,
    /// An alarm was not acknowledged in time: pushed to the next tier.
    #[serde(rename = "push.escalated")]
    PushEscalated,
    /// A push was given up (refused for good, too many attempts, too old);
    /// `detail.fallback` names the tier a priority-1 alarm goes to instead.
    #[serde(rename = "push.dead_lettered")]
    PushDeadLettered,
    /// A zone was armed (by its schedule or an operator).
    #[serde(rename = "zone.armed")]
    ZoneArmed,
    /// A zone was disarmed (by its schedule or an operator).
    #[serde(rename = "zone.disarmed")]
    ZoneDisarmed,
    /// A linkage rule's action ran (or failed); the outcome is in `detail`.
    #[serde(rename = "linkage.executed")]
    LinkageExecuted,
}

impl EventKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::AlarmRaised => "alarm.raised",
            EventKind::AlarmCleared => "alarm.cleared",
            EventKind::AlarmAcknowledged => "alarm.acknowledged",
            EventKind::AlarmShelved => "alarm.shelved",
            EventKind::DeviceOffline => "device.offline",
            EventKind::DeviceOnline => "device.online",
            EventKind::CameraVideoLoss => "camera.video_loss",
            EventKind::CameraVideoRestored => "camera.video_restored",
            EventKind::CameraClipReady => "camera.clip_ready",
            EventKind::CameraClipFailed => "camera.clip_failed",
            EventKind::CommandExecuted => "command.executed",
            EventKind::ConfigChanged => "config.changed",
            EventKind::GatewayStarted => "gateway.started",
            EventKind::GatewayStopped => "gateway.stopped",
            EventKind::GatewayTamper => "gateway.tamper",
            EventKind::UplinkLost => "uplink.lost",
            EventKind::UplinkRestored => "uplink.restored",
            EventKind::JournalPressure => "journal.pressure",
            EventKind::PushSent => "push.sent",
            EventKind::PushFailed => "push.failed",
            EventKind::PushEscalated => "push.escalated",
            EventKind::PushDeadLettered => "push.dead_lettered",
            EventKind::ZoneArmed => "zone.armed",
            EventKind::ZoneDisarmed => "zone.disarmed",
            EventKind::LinkageExecuted => "linkage.executed",
        }
    }
}

/// Contract categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Fire,
    Intrusion,
    Perimeter,
    Access,
    Hvac,
    Video,
    System,
}

impl Category {
    /// Fire alarms latch and are never disarmable.
    pub fn is_life_safety(&self) -> bool {
        matches!(self, Category::Fire)
    }
}

/// Priority 1 (life safety) … 5 (information).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Priority(u8);

impl Priority {
    pub const LIFE_SAFETY: Priority = Priority(1);
    pub const HIGH: Priority = Priority(2);
    pub const MEDIUM: Priority = Priority(3);
    pub const LOW: Priority = Priority(4);
    pub const INFO: Priority = Priority(5);
    pub fn new(p: u8) -> Option<Priority> {
        (1..=5).contains(&p).then_some(Priority(p))
    }
    pub fn get(&self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for Priority {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        Priority::new(v).ok_or_else(|| format!("priority must be 1..=5, got {v}"))
    }
}

impl From<Priority> for u8 {
    fn from(p: Priority) -> u8 {
        p.0
    }
}

/// Where an event comes from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Source {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// ISA-18.2 alarm states as the contract spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    Normal,
    ActiveUnacked,
    ActiveAcked,
    ReturnedUnacked,
    /// Suppressed by an operator until an expiry (ISA-18.2 "shelved").
    Shelved,
}

impl AlarmState {
    /// The contract's spelling (`active_unacked`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Normal => "normal",
            AlarmState::ActiveUnacked => "active_unacked",
            AlarmState::ActiveAcked => "active_acked",
            AlarmState::ReturnedUnacked => "returned_unacked",
            AlarmState::Shelved => "shelved",
        }
    }
}

/// The `alarm` object of an alarm event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmInfo {
    /// Stable key of the alarm: `device/point`, or `device/point/rule` when a
    /// point has several rules.
    pub key: String,
    pub state: AlarmState,
    /// The value that caused the transition (`null` when the device is offline).
    pub value: serde_json::Value,
    pub message: String,
    /// Who acknowledged or shelved it (acknowledged/shelved events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// Operator's comment (acknowledged/shelved events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the alarm latches (stays active until acknowledged, e.g. fire).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub latched: bool,
}

/// An attachment such as a video clip.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    pub url: String,
}

/// An event before the journal records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    pub ts: Timestamp,
    pub kind: EventKind,
    pub priority: Priority,
    pub category: Category,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<AlarmInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// Kind-specific details (e.g. a device's last error, a command's
    /// outcome). Added field, allowed by the contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

impl NewEvent {
    /// A system event with no alarm body.
    pub fn system(kind: EventKind, priority: Priority, detail: serde_json::Value) -> NewEvent {
        NewEvent {
            ts: Timestamp::now(),
            kind,
            priority,
            category: Category::System,
            source: Source::default(),
            alarm: None,
            attachments: Vec::new(),
            detail: Some(detail),
        }
    }

    /// True for events that must never be evicted for telemetry and are
    /// journaled durably before they count as recorded. All events are;
    /// this exists so call sites say what they rely on.
    pub fn is_alarm(&self) -> bool {
        self.alarm.is_some()
    }
}

/// A recorded event: exactly the contract's `events` payload.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Event {
    pub id: String,
    pub seq: u64,
    #[serde(flatten)]
    pub body: NewEvent,
}

/// `id`, `seq`, then the body's fields, as `#[serde(flatten)]` would
/// write them, but as one struct: serde's flattening goes through a map
/// serializer field by field, about half the cost of encoding an event
/// (every event is encoded once, when it is recorded). The test
/// `hand_written_serialize_equals_flatten` holds the two to the same bytes.
impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        // Every field named: a field added to `NewEvent` fails to compile here.
        let NewEvent {
            ts,
            kind,
            priority,
            category,
            source,
            alarm,
            attachments,
            detail,
        } = &self.body;
        let mut st = s.serialize_struct("Event", 10)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("seq", &self.seq)?;
        st.serialize_field("ts", ts)?;
        st.serialize_field("kind", kind)?;
        st.serialize_field("priority", priority)?;
        st.serialize_field("category", category)?;
        st.serialize_field("source", source)?;
        match alarm {
            Some(a) => st.serialize_field("alarm", a)?,
            None => st.skip_field("alarm")?,
        }
        if attachments.is_empty() {
            st.skip_field("attachments")?;
        } else {
            st.serialize_field("attachments", attachments)?;
        }
        match detail {
            Some(d) => st.serialize_field("detail", d)?,
            None => st.skip_field("detail")?,
        }
        st.end()
    }
}

/// The contract's event id: `{gateway}:{seq as 16 hex digits}`.
pub fn event_id(gateway: &str, seq: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(gateway.len() + 17);
    id.push_str(gateway);
    id.push(':');
    for shift in (0..16).rev() {
        id.push(HEX[((seq >> (shift * 4)) & 0xf) as usize] as char);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Event` as the derive with `#[serde(flatten)]` writes it.
    #[derive(Serialize)]
    struct Flattened<'a> {
        id: &'a str,
        seq: u64,
        #[serde(flatten)]
        body: &'a NewEvent,
    }

    #[test]
    fn hand_written_serialize_equals_flatten() {
        let mut full = NewEvent::system(
            EventKind::DeviceOffline,
            Priority::LIFE_SAFETY,
            serde_json::json!({"error": "timeout \"x\"", "n": [1, 2]}),
        );
        full.ts = Timestamp::from_unix_ms(1_795_813_445_123).unwrap();
        full.source = Source {
            device: Some("fence-1".into()),
            point: None,
            zone: Some("east".into()),
        };
        full.alarm = Some(AlarmInfo {
            key: "fence-1/zone-2".into(),
            state: AlarmState::ReturnedUnacked,
            value: serde_json::json!(3.5),
            message: "Zone 2 \u{00e9}".into(),
            operator: Some("guard \"w\"".into()),
            comment: None,
            latched: true,
        });
        full.attachments = vec![Attachment {
            kind: "clip".into(),
            id: "c1".into(),
            url: "/clips/c1.mp4".into(),
        }];
        let bare = NewEvent {
            detail: None,
            alarm: None,
            attachments: Vec::new(),
            ..full.clone()
        };
        for (seq, body) in [(1u64, full), (u64::MAX >> 8, bare)] {
            let ev = Event {
                id: event_id("gw-1", seq),
                seq,
                body,
            };
            let flat = Flattened {
                id: &ev.id,
                seq: ev.seq,
                body: &ev.body,
            };
            assert_eq!(
                serde_json::to_string(&ev).unwrap(),
                serde_json::to_string(&flat).unwrap()
            );
            let back: Event = serde_json::from_slice(&serde_json::to_vec(&ev).unwrap()).unwrap();
            assert_eq!(back, ev);
        }
    }

    #[test]
    fn event_ids_are_the_gateway_and_sixteen_hex_digits() {
        assert_eq!(event_id("gw", 0), "gw:0000000000000000");
        assert_eq!(event_id("gw", 0xabc), "gw:0000000000000abc");
        assert_eq!(event_id("gw", u64::MAX), "gw:ffffffffffffffff");
        assert_eq!(event_id("gw", 42), format!("gw:{:016x}", 42));
    }

    #[test]
    fn serializes_as_contract() {
        let ev = Event {
            id: event_id("gw-north-1", 42),
            seq: 42,
            body: NewEvent {
                ts: Timestamp::from_unix_ms(1_795_813_445_123).unwrap(),
                kind: EventKind::AlarmRaised,
                priority: Priority::LIFE_SAFETY,
                category: Category::Fire,
                source: Source {
                    device: Some("fire-panel-a".into()),
                    point: Some("zone-3".into()),
                    zone: Some("villa-12".into()),
                },
                alarm: Some(AlarmInfo {
                    key: "fire-panel-a/zone-3".into(),
                    state: AlarmState::ActiveUnacked,
                    value: serde_json::Value::Bool(true),
                    message: "Smoke detector zone 3".into(),
                    operator: None,
                    comment: None,
                    latched: false,
                }),
                attachments: vec![],
                detail: None,
            },
        };
        let v: serde_json::Value = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["id"], "gw-north-1:000000000000002a");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["ts"], "2026-11-27T21:04:05.123Z");
        assert_eq!(v["kind"], "alarm.raised");
        assert_eq!(v["priority"], 1);
        assert_eq!(v["category"], "fire");
        assert_eq!(v["source"]["zone"], "villa-12");
        assert_eq!(v["alarm"]["state"], "active_unacked");
        assert!(v.get("attachments").is_none());
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn timestamps_format_as_chrono_does() {
        let chrono_text = |t: &Timestamp| t.0.format(RFC3339_MS).to_string();
        let mut rng = fastrand::Rng::with_seed(7);
        let edges = [
            0,
            -1,
            1_795_813_445_123,
            951_782_400_000,     // 2000-02-29
            253_402_300_799_999, // 9999-12-31T23:59:59.999
            -62_167_219_200_000, // 0000-01-01
            -62_167_219_200_001, // year -1: chrono's form
            253_402_300_800_000, // year 10000: chrono's form
        ];
        let random = (0..20_000).map(|_| rng.i64(-62_167_219_200_000..253_402_300_800_000));
        for ms in edges.into_iter().chain(random) {
            let t = Timestamp::from_unix_ms(ms).unwrap();
            assert_eq!(t.to_string(), chrono_text(&t), "{ms}");
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", chrono_text(&t)), "{ms}");
            if (0..=9999).contains(&chrono::Datelike::year(&t.0)) {
                assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
            }
        }
        // A leap second: chrono's form, whatever it is.
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_milli_opt(23, 59, 59, 1_500))
            .unwrap()
            .and_utc();
        let t = Timestamp(leap);
        assert_eq!(t.to_string(), chrono_text(&t));
    }

    #[test]
    fn alarm_states_as_str_is_the_contract_spelling() {
        use AlarmState::*;
        for s in [Normal, ActiveUnacked, ActiveAcked, ReturnedUnacked, Shelved] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn priority_bounds() {
        assert!(Priority::new(0).is_none());
        assert!(Priority::new(6).is_none());
        assert!(serde_json::from_str::<Priority>("7").is_err());
    }
}
