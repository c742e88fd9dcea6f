//! The point table: every configured point, indexed once at load time so
//! drivers and the alarm engine pass small integers, not strings.

use super::Config;
use crate::event::Category;
use crate::point::PointIndex;
use std::collections::HashMap;
use std::sync::Arc;

/// What the rest of the gateway needs to know about one point.
#[derive(Clone, Debug, PartialEq)]
pub struct PointMeta {
    pub device: Arc<str>,
    pub point: Arc<str>,
    /// `device/point`.
    pub key: Arc<str>,
    /// Index of the device in `Config::devices`.
    pub device_index: usize,
    /// Point zone, else device zone.
    pub zone: Option<Arc<str>>,
    pub category: Category,
    pub unit: Option<Arc<str>>,
    /// Telemetry deadband (point's own, else `[telemetry] deadband`).
    pub deadband: f64,
    /// Included in telemetry.
    pub telemetry: bool,
    pub writable: bool,
    /// Index of the point in its device's `points` (see
    /// [`LoadedConfig::point_config`](super::LoadedConfig::point_config)).
    pub point_index: usize,
}

/// All points of all devices, in config order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PointTable {
    points: Vec<PointMeta>,
    by_key: HashMap<Arc<str>, PointIndex>,
}

/// One shared copy of each distinct string.
fn intern<'a>(table: &mut HashMap<&'a str, Arc<str>>, s: &'a str) -> Arc<str> {
    table.entry(s).or_insert_with(|| Arc::from(s)).clone()
}

impl PointTable {
    pub fn build(config: &Config) -> PointTable {
        let total: usize = config.devices.iter().map(|d| d.points.len()).sum();
        let mut t = PointTable {
            points: Vec::with_capacity(total),
            by_key: HashMap::with_capacity(total),
        };
        // Identical devices share point ids and units: one allocation each.
        let mut interned: HashMap<&str, Arc<str>> = HashMap::new();
        for (device_index, d) in config.devices.iter().enumerate() {
            let device: Arc<str> = d.id.as_str().into();
            let device_zone: Option<Arc<str>> = d.zone.as_deref().map(Arc::from);
            for (point_index, p) in d.points.iter().enumerate() {
                let key: Arc<str> = format!("{}/{}", d.id, p.id).into();
                let idx = t.points.len() as PointIndex;
                t.by_key.insert(key.clone(), idx);
                t.points.push(PointMeta {
                    device: device.clone(),
                    point: intern(&mut interned, &p.id),
                    key,
                    device_index,
                    zone: p
                        .zone
                        .as_deref()
                        .map(Arc::from)
                        .or_else(|| device_zone.clone()),
                    category: d.category,
                    unit: p.unit.as_deref().map(|u| intern(&mut interned, u)),
                    deadband: p.deadband.unwrap_or(config.telemetry.deadband),
                    telemetry: p.telemetry,
                    writable: p.writable,
                    point_index,
                });
            }
        }
        t
    }

    pub fn get(&self, i: PointIndex) -> &PointMeta {
        &self.points[i as usize]
    }

    /// Look a point up by `device/point`.
    pub fn find(&self, key: &str) -> Option<PointIndex> {
        self.by_key.get(key).copied()
    }

    /// Index of point `point` of device `device`.
    pub fn find_in(&self, device: &str, point: &str) -> Option<PointIndex> {
        self.find(&format!("{device}/{point}"))
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (PointIndex, &PointMeta)> {
        self.points
            .iter()
            .enumerate()
            .map(|(i, p)| (i as PointIndex, p))
    }
}
