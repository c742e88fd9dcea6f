use super::*;
use proptest::prelude::*;
use std::path::Path;
use std::time::Duration;

fn example() -> Config {
    // Parsed only: its secret files and GPIO are not on this machine.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn device<'a>(c: &'a mut Config, id: &str) -> &'a mut DeviceConfig {
    c.devices.iter_mut().find(|d| d.id == id).unwrap()
}

fn diff(old: &Config, new: &Config) -> (UnitPlan, Changes, Changes) {
    let (o, n) = (units_of(old), units_of(new));
    let running: BTreeMap<UnitId, &UnitSpec> = o.iter().map(|(k, v)| (k.clone(), v)).collect();
    let p = plan(&running, &n);
    let units = Changes::of_units(&p);
    let devices = Changes::of_devices(&o, &n, &p);
    (p, units, devices)
}

fn tcp(host: &str) -> UnitId {
    UnitId::ModbusTcp {
        host: host.into(),
        port: 502,
    }
}

#[test]
fn the_example_groups_devices_as_the_drivers_do() {
    let c = example();
    let u = units_of(&c);
    let ids: Vec<String> = u.keys().map(|k| k.to_string()).collect();
    for want in [
        "modbus rtu:rs485-fire",
        "modbus tcp:10.20.1.31:502",
        "modbus tcp:10.20.1.51:502",
        "mqtt site broker",
        "gpio gw-io",
        "camera cam-gate",
        "camera cam-north-wall",
    ] {
        assert!(ids.contains(&want.to_string()), "{want} not in {ids:?}");
    }
    assert_eq!(
        u[&UnitId::ModbusRtu {
            bus: "rs485-fire".into()
        }]
            .own,
        Own::Line(c.serial_buses.first().cloned())
    );
    // Every enabled device is in exactly one unit.
    let mut seen: Vec<&str> = u.values().flat_map(|s| s.device_ids()).collect();
    let n = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), n, "a device in two units");
    for d in c.devices.iter().filter(|d| d.enabled) {
        assert!(seen.contains(&d.id.as_str()), "{} in no unit", d.id);
    }
}

#[test]
fn the_same_file_keeps_everything() {
    let c = example();
    let (p, _, devices) = diff(&c, &c);
    assert!(p.restarted.is_empty() && p.started.is_empty() && p.stopped.is_empty());
    assert_eq!(p.kept.len(), units_of(&c).len());
    assert!(devices.restarted.is_empty() && devices.started.is_empty());
}

#[test]
fn rules_linkage_and_pushes_keep_every_driver() {
    let old = example();
    let mut new = old.clone();
    new.alarms.truncate(1);
    new.alarms[0].message = "renamed".into();
    new.linkage.clear();
    new.push = Default::default();
    let (p, _, _) = diff(&old, &new);
    assert_eq!(p.kept.len(), units_of(&old).len(), "{p:?}");
}

#[test]
fn a_changed_tcp_device_restarts_its_endpoint_only() {
    let old = example();
    let mut new = old.clone();
    device(&mut new, "hvac-1").poll_interval = Duration::from_secs(7);
    let (p, units, devices) = diff(&old, &new);
    assert_eq!(p.restarted, vec![tcp("10.20.1.51")]);
    assert!(p.kept.contains(&tcp("10.20.1.52")));
    assert_eq!(units.restarted, vec!["modbus tcp:10.20.1.51:502"]);
    assert_eq!(devices.restarted, vec!["hvac-1"]);
    assert!(devices.kept.contains(&"hvac-2".to_string()));
}

#[test]
fn a_changed_slave_restarts_its_bus_with_every_slave() {
    let mut old = example();
    // A second slave on the fire bus.
    let mut second = old.devices[0].clone();
    second.id = "fire-panel-b".into();
    second.modbus.as_mut().unwrap().unit = 2;
    old.devices.push(second);
    let mut new = old.clone();
    device(&mut new, "fire-panel-b").timeout = Duration::from_secs(3);
    let (p, _, devices) = diff(&old, &new);
    assert_eq!(
        p.restarted,
        vec![UnitId::ModbusRtu {
            bus: "rs485-fire".into()
        }]
    );
    assert_eq!(devices.restarted, vec!["fire-panel-a", "fire-panel-b"]);
    // The line's own settings restart it as well.
    let mut new = old.clone();
    new.serial_buses[0].baud = 19200;
    let (p, _, _) = diff(&old, &new);
    assert_eq!(p.restarted.len(), 1, "{p:?}");
}

#[test]
fn a_moved_device_stops_its_old_endpoint_and_starts_a_new_one() {
    let old = example();
    let mut new = old.clone();
    device(&mut new, "hvac-2").modbus.as_mut().unwrap().host = Some("10.20.1.99".into());
    let (p, _, devices) = diff(&old, &new);
    assert_eq!(p.stopped, vec![tcp("10.20.1.52")]);
    assert_eq!(p.started, vec![tcp("10.20.1.99")]);
    assert_eq!(devices.restarted, vec!["hvac-2"]);
}

#[test]
fn removed_disabled_and_added_devices() {
    let old = example();
    let mut new = old.clone();
    new.devices.retain(|d| d.id != "hvac-2");
    device(&mut new, "hvac-1").enabled = false;
    let mut added = old
        .devices
        .iter()
        .find(|d| d.id == "hvac-2")
        .unwrap()
        .clone();
    added.id = "hvac-3".into();
    added.modbus.as_mut().unwrap().host = Some("10.20.1.53".into());
    new.devices.push(added);
    let (p, _, devices) = diff(&old, &new);
    assert_eq!(p.stopped, vec![tcp("10.20.1.51"), tcp("10.20.1.52")]);
    assert_eq!(p.started, vec![tcp("10.20.1.53")]);
    assert_eq!(devices.stopped, vec!["hvac-1", "hvac-2"]);
    assert_eq!(devices.started, vec!["hvac-3"]);
}

#[test]
fn cameras_restart_one_by_one_and_all_with_the_clip_directory() {
    let old = example();
    let mut new = old.clone();
    new.cameras[0].post += std::time::Duration::from_secs(1);
    let (p, units, _) = diff(&old, &new);
    assert_eq!(units.restarted, vec!["camera cam-gate"]);
    assert!(p.kept.contains(&UnitId::Camera {
        id: "cam-north-wall".into()
    }));
    let mut new = old.clone();
    new.clips.max_bytes += 1;
    let (_, units, _) = diff(&old, &new);
    assert_eq!(units.restarted.len(), new.cameras.len(), "{units:?}");
}

#[test]
fn mqtt_devices_and_the_site_broker_are_one_unit() {
    let old = example();
    let mut new = old.clone();
    device(&mut new, "fence-east").offline_after += 1;
    let (p, _, devices) = diff(&old, &new);
    assert_eq!(p.restarted, vec![UnitId::Mqtt]);
    let mqtt: Vec<&str> = old
        .devices
        .iter()
        .filter(|d| d.mqtt.is_some() && d.enabled)
        .map(|d| d.id.as_str())
        .collect();
    assert!(mqtt.len() >= 2, "{mqtt:?}");
    for d in mqtt {
        assert!(devices.restarted.iter().any(|r| r == d), "{d}");
    }
    assert!(devices.kept.contains(&"hvac-1".to_string()));
}

#[test]
fn spans_and_shifts() {
    let c = example();
    let t = PointTable::build(&c);
    let s = spans(&t);
    let total: u32 = s.values().map(|s| s.len).sum();
    assert_eq!(total as usize, t.len());
    for (i, p) in t.iter() {
        let sp = s[&*p.device];
        assert!(i >= sp.first && i < sp.first + sp.len);
    }
    let sh = Shift {
        driver: Span { first: 4, len: 2 },
        table: 0,
    };
    assert_eq!(sh.forward(4), Some(0));
    assert_eq!(sh.forward(5), Some(1));
    assert_eq!(sh.forward(6), None);
    assert_eq!(sh.forward(3), None);
    assert_eq!(sh.back(1), Some(5));
    assert_eq!(sh.back(2), None);
    assert!(!sh.is_identity());
}

/// One edit of a device between two files.
#[derive(Clone, Copy, Debug)]
enum Edit {
    Same,
    Interval,
    Host,
    Disable,
    Remove,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => Just(Edit::Same),
        1 => Just(Edit::Interval),
        1 => Just(Edit::Host),
        1 => Just(Edit::Disable),
        1 => Just(Edit::Remove),
    ]
}

proptest! {
    /// Whatever changes: the plan covers every unit once; a device is
    /// kept only when neither it nor any device sharing its unit changed;
    /// a changed device is never kept.
    #[test]
    fn plans_keep_exactly_the_unchanged_units(
        edits in proptest::collection::vec(edit(), 16),
        shift in 0u32..20,
        first in 0u32..1000,
        len in 1u32..50,
    ) {
        let old = example();
        let mut new = old.clone();
        let mut changed: Vec<String> = Vec::new();
        let ids: Vec<String> = old.devices.iter().map(|d| d.id.clone()).collect();
        for (id, e) in ids.iter().zip(edits.iter().cycle()) {
            let d = device(&mut new, id);
            match e {
                Edit::Same => continue,
                Edit::Interval => d.poll_interval += Duration::from_secs(1),
                Edit::Host => {
                    if let Some(m) = d.modbus.as_mut().filter(|m| m.host.is_some()) {
                        m.host = Some(format!("10.9.9.{}", id.len()));
                    } else {
                        d.timeout += Duration::from_secs(1);
                    }
                }
                Edit::Disable => d.enabled = false,
                Edit::Remove => new.devices.retain(|d| &d.id != id),
            }
            changed.push(id.clone());
        }
        let (p, _, devices) = diff(&old, &new);
        let (o, n) = (units_of(&old), units_of(&new));
        // Partition.
        let mut target: Vec<&UnitId> = p.kept.iter().chain(&p.restarted).chain(&p.started).collect();
        target.sort();
        prop_assert_eq!(target, n.keys().collect::<Vec<_>>());
        let mut before: Vec<&UnitId> = p.kept.iter().chain(&p.restarted).chain(&p.stopped).collect();
        before.sort();
        prop_assert_eq!(before, o.keys().collect::<Vec<_>>());
        for k in &p.kept {
            prop_assert_eq!(&o[k], &n[k]);
        }
        for d in &devices.kept {
            prop_assert!(!changed.contains(d), "changed device {} kept", d);
        }
        for d in &changed {
            prop_assert!(!devices.kept.contains(d));
        }
        // Shifts round-trip inside the device's span only.
        let s = Shift { driver: Span { first, len }, table: first + shift };
        for off in 0..len {
            let i = first + off;
            prop_assert_eq!(s.forward(i).and_then(|j| s.back(j)), Some(i));
        }
        prop_assert_eq!(s.forward(first + len), None);
    }
}
