//! Driver units: the pieces of the field side a reload keeps running or
//! restarts one by one (pure; no I/O).
//!
//! A *unit* is what one driver task (or one task group) owns: one Modbus
//! TCP endpoint (`host:port`, one connection for every device behind it),
//! one RS-485 line with all its slaves, the MQTT site broker connection
//! with every MQTT device, one GPIO device, one camera. [`units_of`] lists
//! the units of a configuration with a [`UnitSpec`]: everything the unit's
//! tasks read from the file. Two specs that compare equal would start
//! identical tasks, so a running unit whose spec is unchanged is kept
//! across a reload; [`plan`] says what to keep, restart, start and stop.

use crate::cameras::{CameraConfig, ClipsConfig};
use crate::config::{Config, PointTable};
use crate::drivers::modbus::SerialBusConfig;
use crate::drivers::mqtt::SiteBrokerConfig;
use crate::drivers::DeviceConfig;
use crate::point::PointIndex;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// One unit of driver tasks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnitId {
    /// Every enabled Modbus TCP device at `host:port` (one connection).
    ModbusTcp { host: String, port: u16 },
    /// Every enabled Modbus RTU slave on the `[[serial_buses]]` line `bus`.
    ModbusRtu { bus: String },
    /// The site broker connection (and the embedded broker) with every
    /// MQTT device.
    Mqtt,
    /// One GPIO device.
    Gpio { device: String },
    /// One camera.
    Camera { id: String },
}

impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitId::ModbusTcp { host, port } => write!(f, "modbus tcp:{host}:{port}"),
            UnitId::ModbusRtu { bus } => write!(f, "modbus rtu:{bus}"),
            UnitId::Mqtt => f.write_str("mqtt site broker"),
            UnitId::Gpio { device } => write!(f, "gpio {device}"),
            UnitId::Camera { id } => write!(f, "camera {id}"),
        }
    }
}

/// What a unit's tasks read from the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct UnitSpec {
    /// The devices the unit serves, in file order (complete: points,
    /// intervals, timeouts, addresses).
    pub devices: Vec<DeviceConfig>,
    /// The unit's own section, if any.
    pub own: Own,
}

/// A unit's own section.
#[derive(Clone, Debug, PartialEq)]
pub enum Own {
    None,
    /// The RS-485 line (`None`: no such `[[serial_buses]]`; validation
    /// refuses that, the driver logs it).
    Line(Option<SerialBusConfig>),
    Broker(SiteBrokerConfig),
    Camera(CameraConfig, ClipsConfig),
}

impl UnitSpec {
    /// Ids of the devices the unit serves.
    pub fn device_ids(&self) -> impl Iterator<Item = &str> {
        self.devices.iter().map(|d| d.id.as_str())
    }
}

/// Every unit of `c`, with its spec. Mirrors how the drivers group
/// devices into tasks: disabled devices and cameras belong to no unit.
pub fn units_of(c: &Config) -> BTreeMap<UnitId, UnitSpec> {
    let mut units: BTreeMap<UnitId, UnitSpec> = BTreeMap::new();
    let mut add = |id: UnitId, own: &dyn Fn() -> Own, d: Option<&DeviceConfig>| {
        let u = units.entry(id).or_insert_with(|| UnitSpec {
            devices: Vec::new(),
            own: own(),
        });
        if let Some(d) = d {
            u.devices.push(d.clone());
        }
    };
    for d in &c.devices {
        if let Some(m) = d.modbus.as_ref().filter(|_| d.enabled) {
            match (&m.host, &m.bus) {
                (Some(host), _) => add(
                    UnitId::ModbusTcp {
                        host: host.clone(),
                        port: m.port,
                    },
                    &|| Own::None,
                    Some(d),
                ),
                (None, Some(bus)) => add(
                    UnitId::ModbusRtu { bus: bus.clone() },
                    &|| Own::Line(c.serial_buses.iter().find(|b| &b.id == bus).cloned()),
                    Some(d),
                ),
                (None, None) => {}
            }
        }
        if d.gpio.is_some() && d.enabled {
            add(
                UnitId::Gpio {
                    device: d.id.clone(),
                },
                &|| Own::None,
                Some(d),
            );
        }
    }
    if let Some(sb) = &c.site_broker {
        // The connection runs (and the embedded broker with it) even
        // before the first MQTT device is configured.
        add(UnitId::Mqtt, &|| Own::Broker(sb.clone()), None);
        for d in c.devices.iter().filter(|d| d.mqtt.is_some() && d.enabled) {
            add(UnitId::Mqtt, &|| Own::Broker(sb.clone()), Some(d));
        }
    }
    for cam in c.cameras.iter().filter(|c| c.enabled) {
        add(
            UnitId::Camera { id: cam.id.clone() },
            &|| Own::Camera(cam.clone(), c.clips.clone()),
            None,
        );
    }
    units
}

/// What a reload does with the units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitPlan {
    /// Running with the same spec: left alone.
    pub kept: Vec<UnitId>,
    /// Running with another spec: stopped, then started with the new one.
    pub restarted: Vec<UnitId>,
    /// Not running, configured now.
    pub started: Vec<UnitId>,
    /// Running, no longer configured.
    pub stopped: Vec<UnitId>,
}

impl UnitPlan {
    /// Units to stop before the new configuration starts.
    pub fn to_stop(&self) -> impl Iterator<Item = &UnitId> {
        self.restarted.iter().chain(&self.stopped)
    }

    /// Units to start with the new configuration.
    pub fn to_start(&self) -> impl Iterator<Item = &UnitId> {
        self.restarted.iter().chain(&self.started)
    }
}

/// Compare the running units with the target's.
pub fn plan(
    running: &BTreeMap<UnitId, &UnitSpec>,
    target: &BTreeMap<UnitId, UnitSpec>,
) -> UnitPlan {
    let mut p = UnitPlan::default();
    for (id, spec) in target {
        match running.get(id) {
            Some(r) if *r == spec => p.kept.push(id.clone()),
            Some(_) => p.restarted.push(id.clone()),
            None => p.started.push(id.clone()),
        }
    }
    p.stopped = running
        .keys()
        .filter(|id| !target.contains_key(*id))
        .cloned()
        .collect();
    p
}

/// Names sorted, for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// Left running with their connections (and, for cameras, their
    /// pre-alarm buffers).
    pub kept: Vec<String>,
    /// Stopped and started again with their new settings.
    pub restarted: Vec<String>,
    /// New.
    pub started: Vec<String>,
    /// Gone (removed or disabled).
    pub stopped: Vec<String>,
}

impl Changes {
    /// The plan's units by name.
    pub fn of_units(p: &UnitPlan) -> Changes {
        let names = |v: &[UnitId]| {
            let mut n: Vec<String> = v.iter().map(|u| u.to_string()).collect();
            n.sort();
            n
        };
        Changes {
            kept: names(&p.kept),
            restarted: names(&p.restarted),
            started: names(&p.started),
            stopped: names(&p.stopped),
        }
    }

    /// What the plan means per device: a device whose unit is kept is
    /// kept; one in both files whose unit restarts (or that moved to
    /// another unit) is restarted; one only in `new` started; one only in
    /// `old` stopped. Devices in no unit (disabled) count as absent.
    pub fn of_devices(
        old: &BTreeMap<UnitId, UnitSpec>,
        new: &BTreeMap<UnitId, UnitSpec>,
        p: &UnitPlan,
    ) -> Changes {
        let by_device = |units: &BTreeMap<UnitId, UnitSpec>| {
            let mut m: BTreeMap<String, UnitId> = BTreeMap::new();
            for (id, s) in units {
                for d in s.device_ids() {
                    m.insert(d.to_string(), id.clone());
                }
            }
            m
        };
        let (o, n) = (by_device(old), by_device(new));
        let kept: BTreeSet<&UnitId> = p.kept.iter().collect();
        let mut c = Changes::default();
        for (d, unit) in &n {
            match o.get(d) {
                None => c.started.push(d.clone()),
                Some(was) if was == unit && kept.contains(unit) => c.kept.push(d.clone()),
                Some(_) => c.restarted.push(d.clone()),
            }
        }
        c.stopped = o.keys().filter(|d| !n.contains_key(*d)).cloned().collect();
        c
    }
}

/// Where a device's points sit in a point table: the first index and
/// how many (a device's points are contiguous, in file order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub first: PointIndex,
    pub len: u32,
}

/// Every device's [`Span`] in `t`.
pub fn spans(t: &PointTable) -> HashMap<&str, Span> {
    let mut m: HashMap<&str, Span> = HashMap::new();
    for (i, p) in t.iter() {
        m.entry(&*p.device)
            .and_modify(|s| s.len += 1)
            .or_insert(Span { first: i, len: 1 });
    }
    m
}

/// A kept driver's point indices (from the table it started with) moved
/// to where the same points are in the current table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shift {
    /// Where the driver's table had the device's points.
    pub driver: Span,
    /// Where the current table has them.
    pub table: PointIndex,
}

impl Shift {
    /// Driver index → current table index (`None`: not the device's point).
    pub fn forward(&self, i: PointIndex) -> Option<PointIndex> {
        let off = i.checked_sub(self.driver.first)?;
        (off < self.driver.len).then(|| self.table + off)
    }

    /// Current table index → the driver's index (writes).
    pub fn back(&self, i: PointIndex) -> Option<PointIndex> {
        let off = i.checked_sub(self.table)?;
        (off < self.driver.len).then(|| self.driver.first + off)
    }

    /// True when nothing moves.
    pub fn is_identity(&self) -> bool {
        self.driver.first == self.table
    }
}

#[cfg(test)]
mod tests;
