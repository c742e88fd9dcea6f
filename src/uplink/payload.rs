//! Topics and payloads of the uplink contract (pure).

use crate::event::Timestamp;
use serde::{Deserialize, Serialize};

/// The topics of one gateway: root `estate/v1/{site}/{gateway}/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    root: String,
    // The fixed topics, built once (the events' and telemetry's are
    // needed for every publish).
    status: String,
    heartbeat: String,
    events: String,
    telemetry: String,
    events_ack: String,
}

/// What an incoming message on a subscribed topic is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Downlink<'a> {
    /// `events_ack`.
    EventsAck,
    /// `cmd/{request_id}`.
    Command { request_id: &'a str },
    /// `cmd/{request_id}` whose id cannot name a `cmd_result` topic: empty,
    /// longer than 128 bytes or with control characters.
    InvalidCommand { request_id: &'a str },
}

impl Topics {
    pub fn new(site: &str, gateway: &str) -> Topics {
        let root = format!("estate/v1/{site}/{gateway}/");
        Topics {
            status: format!("{root}status"),
            heartbeat: format!("{root}heartbeat"),
            events: format!("{root}events"),
            telemetry: format!("{root}telemetry"),
            events_ack: format!("{root}events_ack"),
            root,
        }
    }
    pub fn root(&self) -> &str {
        &self.root
    }
    pub fn status(&self) -> &str {
        &self.status
    }
    pub fn heartbeat(&self) -> &str {
        &self.heartbeat
    }
    pub fn events(&self) -> &str {
        &self.events
    }
    pub fn telemetry(&self) -> &str {
        &self.telemetry
    }
    pub fn events_ack(&self) -> &str {
        &self.events_ack
    }
    /// Subscription filter for commands: `cmd/+`.
    pub fn commands_filter(&self) -> String {
        format!("{}cmd/+", self.root)
    }
    pub fn cmd_result(&self, request_id: &str) -> String {
        format!("{}cmd_result/{request_id}", self.root)
    }

    /// Classify an incoming topic; `None` for anything not ours.
    pub fn parse<'a>(&self, topic: &'a str) -> Option<Downlink<'a>> {
        let rest = topic.strip_prefix(self.root.as_str())?;
        if rest == "events_ack" {
            return Some(Downlink::EventsAck);
        }
        let id = rest.strip_prefix("cmd/")?;
        if id.contains('/') {
            return None;
        }
        Some(if valid_request_id(id) {
            Downlink::Command { request_id: id }
        } else {
            Downlink::InvalidCommand { request_id: id }
        })
    }
}

/// A request id must be one non-empty topic level without wildcards.
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.contains(['/', '+', '#', '\0'])
        && !id.chars().any(char::is_control)
}

/// `status` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusPayload {
    /// `online` or `offline`.
    pub state: String,
    pub since: Timestamp,
    pub version: String,
    pub boot_id: String,
    /// `shutdown` on a clean stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl StatusPayload {
    pub fn online(since: Timestamp, version: &str, boot_id: &str) -> StatusPayload {
        StatusPayload {
            state: "online".into(),
            since,
            version: version.into(),
            boot_id: boot_id.into(),
            reason: None,
        }
    }
    /// The last will: the online object with `state: offline`.
    pub fn will(since: Timestamp, version: &str, boot_id: &str) -> StatusPayload {
        StatusPayload {
            state: "offline".into(),
            ..StatusPayload::online(since, version, boot_id)
        }
    }
    /// Published by the gateway itself before a clean disconnect.
    pub fn shutdown(since: Timestamp, version: &str, boot_id: &str) -> StatusPayload {
        StatusPayload {
            reason: Some("shutdown".into()),
            ..StatusPayload::will(since, version, boot_id)
        }
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// `heartbeat` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatPayload {
    pub ts: Timestamp,
    pub uptime_s: u64,
    pub backlog: u64,
    pub devices_online: u64,
    pub devices_offline: u64,
    pub cameras_online: u64,
    pub alarms_active: u64,
}

impl HeartbeatPayload {
    pub fn to_bytes(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// `events_ack` payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsAck {
    pub upto_seq: u64,
}

impl EventsAck {
    pub fn parse(bytes: &[u8]) -> Result<EventsAck, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail (string keys, no maps
    // with non-string keys, no custom errors).
    serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts() -> Timestamp {
        Timestamp::from_unix_ms(1_795_000_000_123).unwrap()
    }

    #[test]
    fn topics_follow_the_contract() {
        let t = Topics::new("villa-north", "gw-1");
        assert_eq!(t.status(), "estate/v1/villa-north/gw-1/status");
        assert_eq!(t.heartbeat(), "estate/v1/villa-north/gw-1/heartbeat");
        assert_eq!(t.events(), "estate/v1/villa-north/gw-1/events");
        assert_eq!(t.telemetry(), "estate/v1/villa-north/gw-1/telemetry");
        assert_eq!(t.events_ack(), "estate/v1/villa-north/gw-1/events_ack");
        assert_eq!(t.commands_filter(), "estate/v1/villa-north/gw-1/cmd/+");
        assert_eq!(
            t.cmd_result("r1"),
            "estate/v1/villa-north/gw-1/cmd_result/r1"
        );
    }

    #[test]
    fn incoming_topics_are_classified() {
        let t = Topics::new("s", "g");
        assert_eq!(
            t.parse("estate/v1/s/g/events_ack"),
            Some(Downlink::EventsAck)
        );
        assert_eq!(
            t.parse("estate/v1/s/g/cmd/abc-1"),
            Some(Downlink::Command {
                request_id: "abc-1"
            })
        );
        assert_eq!(
            t.parse("estate/v1/s/g/cmd/"),
            Some(Downlink::InvalidCommand { request_id: "" })
        );
        let long = format!("estate/v1/s/g/cmd/{}", "r".repeat(129));
        assert!(matches!(
            t.parse(&long),
            Some(Downlink::InvalidCommand { .. })
        ));
        assert!(matches!(
            t.parse("estate/v1/s/g/cmd/a\u{7}b"),
            Some(Downlink::InvalidCommand { .. })
        ));
        assert_eq!(t.parse("estate/v1/s/g/cmd/a/b"), None);
        assert_eq!(t.parse("estate/v1/s/other/cmd/a"), None);
        assert_eq!(t.parse("estate/v1/s/g/events"), None);
        assert_eq!(t.parse("estate/v1/s/g/events_ack/x"), None);
    }

    #[test]
    fn status_payloads() {
        let on = StatusPayload::online(ts(), "1.2.0", "b00t");
        let v: serde_json::Value = serde_json::from_slice(&on.to_bytes()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"state": "online", "since": "2026-11-18T11:06:40.123Z",
                "version": "1.2.0", "boot_id": "b00t"})
        );
        let will: serde_json::Value =
            serde_json::from_slice(&StatusPayload::will(ts(), "1.2.0", "b00t").to_bytes()).unwrap();
        let mut expected = v.clone();
        expected["state"] = "offline".into();
        assert_eq!(
            will, expected,
            "the will is the online object with state offline"
        );
        let down: serde_json::Value =
            serde_json::from_slice(&StatusPayload::shutdown(ts(), "1.2.0", "b00t").to_bytes())
                .unwrap();
        assert_eq!(down["state"], "offline");
        assert_eq!(down["reason"], "shutdown");
    }

    #[test]
    fn heartbeat_has_every_contract_field() {
        let hb = HeartbeatPayload {
            ts: ts(),
            uptime_s: 3600,
            backlog: 0,
            devices_online: 41,
            devices_offline: 1,
            cameras_online: 4,
            alarms_active: 2,
        };
        let v: serde_json::Value = serde_json::from_slice(&hb.to_bytes()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ts": "2026-11-18T11:06:40.123Z", "uptime_s": 3600, "backlog": 0,
                "devices_online": 41, "devices_offline": 1, "cameras_online": 4,
                "alarms_active": 2})
        );
    }

    #[test]
    fn events_ack_parses_and_rejects_garbage() {
        assert_eq!(
            EventsAck::parse(br#"{"upto_seq": 42}"#).unwrap(),
            EventsAck { upto_seq: 42 }
        );
        assert!(EventsAck::parse(br#"{"upto_seq": -1}"#).is_err());
        assert!(EventsAck::parse(b"42").is_err());
        assert!(EventsAck::parse(b"\xff").is_err());
    }
}
