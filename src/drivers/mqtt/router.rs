//! Routing and liveness (pure): which points a message on a topic feeds,
//! their values, and when a device goes offline or comes back.
//!
//! Time is passed in (`now: Instant`, `ts: Timestamp`), never read, so the
//! silence timeout is tested without sleeping.

use super::payload::{self, MapError, Parsed, Path, Typing};
use crate::config::LoadedConfig;
use crate::event::Timestamp;
use crate::point::{BusMessage, PointIndex, Reading};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A device's liveness: what was last reported and when it was last heard.
#[derive(Clone, Debug)]
pub struct Liveness {
    silence: Option<Duration>,
    /// Last message that proves the device alive (or the driver's start).
    last_seen: Instant,
    /// Last reported state; `None` before the first report.
    reported: Option<bool>,
}

impl Liveness {
    pub fn new(silence: Option<Duration>, start: Instant) -> Liveness {
        Liveness {
            silence,
            last_seen: start,
            reported: None,
        }
    }

    /// Last reported state.
    pub fn online(&self) -> Option<bool> {
        self.reported
    }

    /// A live data message or an `online` status: `Some(true)` when this
    /// is news.
    pub fn on_alive(&mut self, now: Instant) -> Option<bool> {
        self.last_seen = now;
        (self.reported != Some(true)).then(|| {
            self.reported = Some(true);
            true
        })
    }

    /// An `offline` status (last will): `Some(false)` when this is news.
    pub fn on_offline(&mut self) -> Option<bool> {
        (self.reported != Some(false)).then(|| {
            self.reported = Some(false);
            false
        })
    }

    /// When the silence timeout would fire (if the device is not already
    /// reported offline).
    pub fn deadline(&self) -> Option<Instant> {
        match (self.silence, self.reported) {
            (Some(_), Some(false)) | (None, _) => None,
            (Some(s), _) => Some(self.last_seen + s),
        }
    }

    /// Check the silence timeout: `Some(false)` when the device just fell silent.
    pub fn tick(&mut self, now: Instant) -> Option<bool> {
        match self.deadline() {
            Some(d) if now >= d => self.on_offline(),
            _ => None,
        }
    }
}

/// One MQTT device as the router sees it.
#[derive(Clone, Debug)]
pub struct DeviceSlot {
    pub id: Arc<str>,
    pub liveness: Liveness,
    status_path: Path,
    online_value: String,
    offline_value: String,
}

#[derive(Clone, Debug)]
struct PointRoute {
    point: PointIndex,
    device: usize,
    path: Path,
    typing: Typing,
    /// The last message gave no value (log once until a good one).
    failing: bool,
}

#[derive(Clone, Debug, Default)]
struct TopicRoute {
    points: Vec<usize>,
    json: bool,
}

/// A message that gave no value for a point.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub point: PointIndex,
    pub error: MapError,
    /// First failure since the point's last good value (log it loudly).
    pub first: bool,
}

/// What one message produced.
#[derive(Debug, Default)]
pub struct Ingested {
    pub messages: Vec<BusMessage>,
    pub problems: Vec<Problem>,
    /// A status message whose payload is neither value (device id, payload).
    pub unknown_status: Option<(Arc<str>, String)>,
    /// No configured point or status topic matched.
    pub unmatched: bool,
}

/// Topic → points table of every MQTT device of one broker connection.
#[derive(Clone, Debug, Default)]
pub struct Router {
    devices: Vec<DeviceSlot>,
    points: Vec<PointRoute>,
    exact: HashMap<Box<str>, TopicRoute>,
    wild: Vec<(Box<str>, TopicRoute)>,
    status: HashMap<Box<str>, Vec<usize>>,
}

/// A configuration problem the router cannot route around.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{device}/{point}: {error}")]
pub struct RouteError {
    pub device: String,
    pub point: String,
    pub error: MapError,
}

impl Router {
    /// The router of every enabled MQTT device in `cfg`.
    pub fn build(cfg: &LoadedConfig, start: Instant) -> Result<Router, RouteError> {
        let mut r = Router::default();
        let mut slot_of: HashMap<usize, usize> = HashMap::new();
        for (di, d) in cfg.config.devices.iter().enumerate() {
            let Some(m) = &d.mqtt else { continue };
            if !d.enabled {
                continue;
            }
            let bad = |e| RouteError {
                device: d.id.clone(),
                point: "(status)".into(),
                error: e,
            };
            let slot = r.devices.len();
            slot_of.insert(di, slot);
            r.devices.push(DeviceSlot {
                id: d.id.as_str().into(),
                liveness: Liveness::new(m.silence_timeout, start),
                status_path: Path::parse(m.status_path.as_deref()).map_err(bad)?,
                online_value: m.online_value.clone(),
                offline_value: m.offline_value.clone(),
            });
            if let Some(t) = &m.status_topic {
                r.status.entry(t.as_str().into()).or_default().push(slot);
            }
        }
        for (pi, meta) in cfg.points.iter() {
            let Some(&slot) = slot_of.get(&meta.device_index) else {
                continue;
            };
            let dev = &cfg.config.devices[meta.device_index];
            let p = cfg.point_config(meta);
            let Some(pm) = &p.mqtt else { continue };
            let filter = match (&pm.filter, &pm.topic, &dev.mqtt) {
                (Some(f), _, _) => f.clone(),
                (None, Some(t), Some(m)) => match &m.topic_prefix {
                    Some(prefix) => format!("{prefix}/{t}"),
                    None => t.clone(),
                },
                _ => continue,
            };
            let path = Path::parse(pm.path.as_deref()).map_err(|e| RouteError {
                device: dev.id.clone(),
                point: p.id.clone(),
                error: e,
            })?;
            let json = path.needs_json();
            let idx = r.points.len();
            r.points.push(PointRoute {
                point: pi,
                device: slot,
                path,
                typing: Typing::new(p),
                failing: false,
            });
            let route = if filter.contains(['+', '#']) {
                match r.wild.iter_mut().find(|(f, _)| **f == *filter) {
                    Some((_, route)) => route,
                    None => {
                        r.wild.push((filter.into(), TopicRoute::default()));
                        &mut r.wild.last_mut().expect("just pushed").1
                    }
                }
            } else {
                r.exact.entry(filter.into()).or_default()
            };
            route.points.push(idx);
            route.json |= json;
        }
        Ok(r)
    }

    /// Every topic filter to subscribe to (points' and status topics).
    pub fn filters(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .exact
            .keys()
            .chain(self.wild.iter().map(|(f, _)| f))
            .chain(self.status.keys())
            .map(|s| s.to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn devices(&self) -> &[DeviceSlot] {
        &self.devices
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    fn status_msg(
        &self,
        slot: usize,
        ts: Timestamp,
        online: bool,
        reason: Option<String>,
    ) -> BusMessage {
        BusMessage::DeviceStatus {
            device: self.devices[slot].id.clone(),
            ts,
            online,
            reason,
        }
    }

    /// A message arrived on `topic` at `now`. `retained`: the broker's
    /// stored copy, not a fresh message (it proves nothing about liveness,
    /// and is not taken from a device known offline).
    pub fn on_publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        retained: bool,
        now: Instant,
        ts: Timestamp,
    ) -> Ingested {
        let mut out = Ingested::default();
        let mut matched = false;
        // Status / last will.
        if let Some(slots) = self.status.get(topic) {
            matched = true;
            let slots = slots.clone();
            for slot in slots {
                let d = &self.devices[slot];
                let parsed = Parsed::new(payload, d.status_path.needs_json());
                let state = parsed
                    .get(&d.status_path)
                    .ok()
                    .and_then(|raw| payload::status_of(&raw, &d.online_value, &d.offline_value));
                let change = match state {
                    Some(true) => self.devices[slot].liveness.on_alive(now),
                    Some(false) => self.devices[slot].liveness.on_offline(),
                    None => {
                        let shown: String =
                            String::from_utf8_lossy(payload).chars().take(40).collect();
                        out.unknown_status = Some((d.id.clone(), shown));
                        None
                    }
                };
                if let Some(online) = change {
                    let reason = (!online).then(|| "status topic: offline".to_string());
                    out.messages.push(self.status_msg(slot, ts, online, reason));
                }
            }
        }
        // Points: exact topic, then wildcard filters.
        let mut routes: Vec<&TopicRoute> = Vec::new();
        if let Some(r) = self.exact.get(topic) {
            routes.push(r);
        }
        for (f, r) in &self.wild {
            if payload::topic_matches(f, topic) {
                routes.push(r);
            }
        }
        if routes.is_empty() {
            out.unmatched = !matched;
            return out;
        }
        let json = routes.iter().any(|r| r.json);
        let parsed = Parsed::new(payload, json);
        let idxs: Vec<usize> = routes
            .iter()
            .flat_map(|r| r.points.iter().copied())
            .collect();
        // (device slot, readings), usually one device per topic.
        let mut by_device: Vec<(usize, Vec<Reading>)> = Vec::with_capacity(1);
        for idx in idxs {
            let pr = &mut self.points[idx];
            let result = parsed.get(&pr.path).and_then(|raw| pr.typing.value(&raw));
            match result {
                Ok(value) => {
                    pr.failing = false;
                    let reading = Reading {
                        point: pr.point,
                        value,
                    };
                    match by_device.iter_mut().find(|(s, _)| *s == pr.device) {
                        Some((_, v)) => v.push(reading),
                        None => by_device.push((pr.device, vec![reading])),
                    }
                }
                Err(error) => {
                    out.problems.push(Problem {
                        point: pr.point,
                        error,
                        first: !pr.failing,
                    });
                    pr.failing = true;
                    // A device that sends garbage still talks: alive.
                    if !by_device.iter().any(|(s, _)| *s == pr.device) {
                        by_device.push((pr.device, Vec::new()));
                    }
                }
            }
        }
        for (slot, readings) in by_device {
            if retained {
                if self.devices[slot].liveness.online() == Some(false) {
                    continue;
                }
            } else if let Some(online) = self.devices[slot].liveness.on_alive(now) {
                out.messages.push(self.status_msg(slot, ts, online, None));
            }
            if !readings.is_empty() {
                out.messages.push(BusMessage::Readings {
                    device: self.devices[slot].id.clone(),
                    ts,
                    replied_at: now,
                    readings,
                });
            }
        }
        out
    }

    /// Check silence timeouts at `now`.
    pub fn tick(&mut self, now: Instant, ts: Timestamp) -> Vec<BusMessage> {
        let mut out = Vec::new();
        for slot in 0..self.devices.len() {
            if let Some(online) = self.devices[slot].liveness.tick(now) {
                let reason = format!(
                    "silent for {:.1} s",
                    self.devices[slot]
                        .liveness
                        .silence
                        .unwrap_or_default()
                        .as_secs_f64()
                );
                out.push(self.status_msg(slot, ts, online, Some(reason)));
            }
        }
        out
    }

    /// The earliest silence deadline of any device.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.devices
            .iter()
            .filter_map(|d| d.liveness.deadline())
            .min()
    }
}
