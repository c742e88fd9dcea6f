//! Zone arming: zones with an armed/disarmed state that survives restarts,
//! weekly schedules in a configured time zone, and manual arm/disarm by
//! operators (through the command path).
//!
//! - [`Arming`]: the pure state (no I/O, time passed in): schedule edges,
//!   manual changes, snapshot and restore.
//! - [`task`]: the task that owns it, ticks it with a [`WallClock`], saves
//!   it and publishes the armed set to the alarm engine.
//!
//! # Schedule and manual changes
//!
//! A zone's schedule is a list of weekly windows (`22:00`–`06:00` on given
//! start days, in `[arming] time_zone`). The zone is armed at each window's
//! start and disarmed at its end (edges). An operator's arm or disarm holds
//! until the next edge. A zone without a schedule changes only by hand.
//!
//! # Restarts
//!
//! The state and the schedule's last seen value are saved; after a restart
//! the zone keeps its state unless an edge passed while the gateway was
//! down, in which case the edge applies (at the first tick).
//!
//! # Life safety
//!
//! Fire alarms and priority-1 alarms (panic) are never affected by arming:
//! config validation refuses a `when_disarmed` on them, and the alarm engine
//! ignores the arming state for them at run time.

mod config;
pub mod task;

pub use config::{ArmingConfig, WindowConfig, ZoneConfig};
pub use task::{ArmedZones, ArmingHandle, SystemClock, WallClock};

use crate::config::KeyPath;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike, Utc};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Failures of arming operations.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArmingError {
    #[error("no arming zone {0:?}")]
    UnknownZone(String),
    #[error("zone {zone:?} is already {}", if *armed { "armed" } else { "disarmed" })]
    Already { zone: String, armed: bool },
    #[error("unreadable arming snapshot: {0}")]
    Snapshot(String),
    #[error("arming is shutting down")]
    ShuttingDown,
}

/// One weekly window in minutes of the local day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Start days, Monday = 0.
    pub days: [bool; 7],
    pub from: u16,
    pub to: u16,
}

impl Window {
    /// Is local time `t` inside the window?
    pub fn contains(&self, t: &NaiveDateTime) -> bool {
        let wd = t.weekday().num_days_from_monday() as usize;
        let prev = (wd + 6) % 7;
        let m = (t.hour() * 60 + t.minute()) as u16;
        if self.from < self.to {
            self.days[wd] && m >= self.from && m < self.to
        } else {
            // Overnight into the next day (equal: a whole day).
            (self.days[wd] && m >= self.from) || (self.days[prev] && m < self.to)
        }
    }
}

/// Parse `HH:MM` into minutes of the day.
pub fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// Parse `mon` … `sun` into Monday = 0.
pub fn parse_day(s: &str) -> Option<usize> {
    ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .position(|d| d.eq_ignore_ascii_case(s))
}

impl Window {
    /// From config; `None` when a field does not parse (validation reports it).
    pub fn from_config(w: &WindowConfig) -> Option<Window> {
        let mut days = [w.days.is_empty(); 7];
        for d in &w.days {
            days[parse_day(d)?] = true;
        }
        Some(Window {
            days,
            from: parse_hhmm(&w.from)?,
            to: parse_hhmm(&w.to)?,
        })
    }
}

/// Why a zone's state changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeSource {
    /// A schedule window began or ended.
    Schedule,
    /// An operator armed or disarmed it.
    Manual { operator: String },
    /// The zone's first start, nothing saved.
    Initial,
}

/// A zone's state change, to report as `zone.armed` / `zone.disarmed`.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub zone: Arc<str>,
    pub armed: bool,
    pub source: ChangeSource,
    pub at: DateTime<Utc>,
}

#[derive(Debug)]
struct Zone {
    id: Arc<str>,
    windows: Vec<Window>,
    armed: bool,
    /// The schedule's value at the last tick (`None`: not evaluated yet).
    scheduled: Option<bool>,
    /// Nothing saved and never ticked.
    fresh: bool,
}

/// Saved zone states.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    version: u32,
    zones: Vec<SavedZone>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedZone {
    id: String,
    armed: bool,
    #[serde(default)]
    scheduled: Option<bool>,
}

const SNAPSHOT_VERSION: u32 = 1;

/// Every arming zone's state. Pure: time comes in as arguments.
#[derive(Debug)]
pub struct Arming {
    tz: TimeZone,
    zones: Vec<Zone>,
}

impl Arming {
    /// Zones from the config (states: `armed_at_start`, until restored or
    /// ticked). An unparsable time zone or window (refused by validation)
    /// falls back to UTC / is skipped, with a log line.
    pub fn new(cfg: &ArmingConfig) -> Arming {
        let tz = time_zone(&cfg.time_zone).unwrap_or_else(|e| {
            tracing::error!(time_zone = %cfg.time_zone, error = %e, "unknown time zone; schedules use UTC");
            TimeZone::UTC
        });
        let zones = cfg
            .zones
            .iter()
            .map(|z| Zone {
                id: z.id.as_str().into(),
                windows: z
                    .schedule
                    .iter()
                    .filter_map(|w| {
                        let r = Window::from_config(w);
                        if r.is_none() {
                            tracing::error!(zone = %z.id, "unusable schedule window skipped");
                        }
                        r
                    })
                    .collect(),
                armed: z.armed_at_start,
                scheduled: None,
                fresh: true,
            })
            .collect();
        Arming { tz, zones }
    }

    /// Is `zone` armed? Zones that are not arming zones are always armed.
    pub fn is_armed(&self, zone: &str) -> bool {
        self.zones
            .iter()
            .find(|z| &*z.id == zone)
            .is_none_or(|z| z.armed)
    }

    /// The disarmed zones.
    pub fn disarmed(&self) -> impl Iterator<Item = &Arc<str>> {
        self.zones.iter().filter(|z| !z.armed).map(|z| &z.id)
    }

    /// `(zone, armed)` of every zone.
    pub fn states(&self) -> impl Iterator<Item = (&str, bool)> {
        self.zones.iter().map(|z| (&*z.id, z.armed))
    }

    /// Does the schedule of `zone` arm it at `now`? `None` without schedule.
    fn scheduled_at(&self, z: &Zone, now: DateTime<Utc>) -> Option<bool> {
        if z.windows.is_empty() {
            return None;
        }
        let local = local_time(&self.tz, now);
        Some(z.windows.iter().any(|w| w.contains(&local)))
    }

    /// Whether any zone follows a schedule: without one, a tick after the
    /// first changes nothing.
    pub fn has_schedules(&self) -> bool {
        self.zones.iter().any(|z| !z.windows.is_empty())
    }

    /// Apply schedule edges passed since the last tick.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Change> {
        let mut out = Vec::new();
        for i in 0..self.zones.len() {
            let sched = self.scheduled_at(&self.zones[i], now);
            let z = &mut self.zones[i];
            let fresh = std::mem::take(&mut z.fresh);
            match (sched, z.scheduled) {
                // An edge: applied unless the zone is already there.
                (Some(s), Some(prev)) if s != prev && z.armed != s => {
                    z.armed = s;
                    out.push(Change {
                        zone: z.id.clone(),
                        armed: s,
                        source: ChangeSource::Schedule,
                        at: now,
                    });
                }
                (Some(s), None) if fresh => {
                    // First start of a scheduled zone: as its schedule says.
                    z.armed = s;
                    out.push(Change {
                        zone: z.id.clone(),
                        armed: s,
                        source: ChangeSource::Initial,
                        at: now,
                    });
                }
                (None, _) if fresh => out.push(Change {
                    zone: z.id.clone(),
                    armed: z.armed,
                    source: ChangeSource::Initial,
                    at: now,
                }),
                _ => {}
            }
            z.scheduled = sched;
        }
        out
    }

    /// An operator arms or disarms `zone`; holds until the next schedule edge.
    pub fn set(
        &mut self,
        zone: &str,
        armed: bool,
        operator: &str,
        now: DateTime<Utc>,
    ) -> Result<Change, ArmingError> {
        let z = self
            .zones
            .iter_mut()
            .find(|z| &*z.id == zone)
            .ok_or_else(|| ArmingError::UnknownZone(zone.to_string()))?;
        if z.armed == armed {
            return Err(ArmingError::Already {
                zone: zone.to_string(),
                armed,
            });
        }
        z.armed = armed;
        Ok(Change {
            zone: z.id.clone(),
            armed,
            source: ChangeSource::Manual {
                operator: operator.to_string(),
            },
            at: now,
        })
    }

    /// The states to keep across a restart.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::to_value(Snapshot {
            version: SNAPSHOT_VERSION,
            zones: self
                .zones
                .iter()
                .filter(|z| !z.fresh)
                .map(|z| SavedZone {
                    id: z.id.to_string(),
                    armed: z.armed,
                    scheduled: z.scheduled,
                })
                .collect(),
        })
        .unwrap_or(serde_json::Value::Null)
    }

    /// Restore saved states into a fresh [`Arming`], before the first tick.
    /// Zones no longer configured are dropped; new zones start fresh.
    pub fn restore(&mut self, snapshot: &serde_json::Value) -> Result<usize, ArmingError> {
        let snap =
            Snapshot::deserialize(snapshot).map_err(|e| ArmingError::Snapshot(e.to_string()))?;
        if snap.version != SNAPSHOT_VERSION {
            return Err(ArmingError::Snapshot(format!(
                "version {} (this gateway reads {SNAPSHOT_VERSION})",
                snap.version
            )));
        }
        let mut n = 0;
        for s in snap.zones {
            match self.zones.iter_mut().find(|z| *z.id == *s.id) {
                Some(z) => {
                    z.armed = s.armed;
                    z.scheduled = s.scheduled.filter(|_| !z.windows.is_empty());
                    z.fresh = false;
                    n += 1;
                }
                None => tracing::warn!(zone = %s.id, "saved arming zone no longer configured"),
            }
        }
        Ok(n)
    }
}

/// The IANA time zone `name`: from the system's time zone database
/// (`$TZDIR` or `/usr/share/zoneinfo`, kept current by the distribution's
/// `tzdata`), else from the copy compiled into the binary.
///
/// One file is read, not the database's index: jiff's global database
/// lists the whole zoneinfo tree (three copies of ~600 zones on Debian)
/// into memory on first use.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    let plain = !name.is_empty()
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if plain {
        let dir = std::env::var_os("TZDIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/usr/share/zoneinfo".into());
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            match TimeZone::tzif(name, &bytes) {
                Ok(tz) => return Ok(tz),
                Err(e) => {
                    tracing::warn!(time_zone = name, error = %e, "system time zone file unreadable; using the bundled copy")
                }
            }
        }
    }
    jiff::tz::TimeZoneDatabase::bundled()
        .get(name)
        .map_err(|e| e.to_string())
}

/// The wall-clock time in `tz` at `now` (seconds; sub-second parts do not
/// matter to minute windows).
pub fn local_time(tz: &TimeZone, now: DateTime<Utc>) -> NaiveDateTime {
    let civil =
        jiff::Timestamp::from_second(now.timestamp())
            .map(|ts| tz.to_datetime(ts))
            .ok()
            .and_then(|d| {
                NaiveDate::from_ymd_opt(d.year().into(), d.month() as u32, d.day() as u32)?
                    .and_hms_opt(d.hour() as u32, d.minute() as u32, d.second() as u32)
            });
    // Out of jiff's range (years beyond ±9999): no schedule is meaningful
    // there; UTC keeps the arithmetic total.
    civil.unwrap_or_else(|| now.naive_utc())
}

/// Config checks of `[arming]`: (key, message) per problem.
pub fn validate(c: &crate::config::Config) -> Vec<(KeyPath, String)> {
    let mut out = Vec::new();
    let k = KeyPath::root().key("arming");
    if time_zone(&c.arming.time_zone).is_err() {
        out.push((
            k.key("time_zone"),
            format!(
                "{:?} is not an IANA time zone (e.g. \"Asia/Shanghai\", \"UTC\")",
                c.arming.time_zone
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (zi, z) in c.arming.zones.iter().enumerate() {
        let zk = k.key("zones").index(zi);
        if !crate::config::is_valid_id(&z.id) {
            out.push((
                zk.key("id"),
                format!("{:?} must be 1–64 characters of a-z, 0-9 and '-'", z.id),
            ));
        } else if !seen.insert(z.id.as_str()) {
            out.push((zk.key("id"), format!("duplicate arming zone {:?}", z.id)));
        }
        for (wi, w) in z.schedule.iter().enumerate() {
            let wk = zk.key("schedule").index(wi);
            for (name, v) in [("from", &w.from), ("to", &w.to)] {
                if parse_hhmm(v).is_none() {
                    out.push((wk.key(name), format!("{v:?} is not a local time HH:MM")));
                }
            }
            for d in &w.days {
                if parse_day(d).is_none() {
                    out.push((
                        wk.key("days"),
                        format!("{d:?} is not a day (mon, tue, wed, thu, fri, sat, sun)"),
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
