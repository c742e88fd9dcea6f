//! The Modbus driver against a real Modbus device simulator (pymodbus), over
//! TCP and over RTU on a socat pty pair.

mod common;
#[path = "common/modbus_sim.rs"]
mod modbus_sim;

use estate_gateway::config::{load_str, LoadedConfig};
use estate_gateway::drivers::modbus;
use estate_gateway::point::{BusMessage, Value};
use modbus_sim::ModbusSim;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const HEAD: &str = r#"
[site]
id = "test-site"
gateway = "gw-test"

[uplink]
host = "127.0.0.1"
"#;

fn load(text: &str) -> LoadedConfig {
    load_str(text, Path::new("test.toml")).unwrap_or_else(|e| panic!("config: {e}\n{text}"))
}

/// The driver running on `cfg`; stops when dropped.
struct Driver {
    rx: mpsc::Receiver<BusMessage>,
    token: CancellationToken,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Driver {
    fn start(cfg: &LoadedConfig) -> Driver {
        let (tx, rx) = mpsc::channel(256);
        let token = CancellationToken::new();
        let handles = modbus::spawn(cfg, tx, token.clone());
        Driver { rx, token, handles }
    }

    /// Next message within `within`, or panic naming `what`.
    async fn next(&mut self, within: Duration, what: &str) -> BusMessage {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => panic!("bus closed while waiting for {what}"),
            Err(_) => panic!("no message within {within:?} while waiting for {what}"),
        }
    }

    /// Wait for a message matching `f`, skipping others, within `within`.
    async fn wait<T>(
        &mut self,
        within: Duration,
        what: &str,
        mut f: impl FnMut(&BusMessage) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.next(left, what).await;
            if let Some(t) = f(&m) {
                return t;
            }
        }
    }

    async fn stop(self) {
        self.token.cancel();
        for h in self.handles {
            tokio::time::timeout(Duration::from_secs(2), h)
                .await
                .expect("driver task stops promptly on shutdown")
                .unwrap();
        }
    }
}

/// Device `dev`'s values in a poll's message: its readings, or the
/// values a confirmation (an unchanged poll) repeats.
fn readings_of(m: &BusMessage, dev: &str) -> Option<HashMap<u32, Value>> {
    match m {
        BusMessage::Readings { device, .. } | BusMessage::Confirmed { device, .. }
            if &**device == dev =>
        {
            values_of(m)
        }
        _ => None,
    }
}

/// The values in a poll's message (`None`: a `DeviceStatus`).
fn values_of(m: &BusMessage) -> Option<HashMap<u32, Value>> {
    match m {
        BusMessage::Readings { readings, .. } => {
            Some(readings.iter().map(|r| (r.point, r.value)).collect())
        }
        BusMessage::Confirmed { points, .. } => Some(
            (0..points.count())
                .filter_map(|i| Some((points.point(i)?, points.value(i)?)))
                .collect(),
        ),
        BusMessage::DeviceStatus { .. }
        | BusMessage::Unreadable { .. }
        | BusMessage::Handover { .. } => None,
    }
}

fn tcp_device(port: u16) -> String {
    format!(
        r#"
[[devices]]
id = "panel"
poll_interval_s = 0.1
timeout_s = 0.5
offline_after = 3
[devices.modbus]
host = "127.0.0.1"
port = {port}
unit = 1
backoff_max_s = 1

[[devices.points]]
id = "u16"
register = "holding"
address = 0
type = "u16"

[[devices.points]]
id = "i16"
register = "holding"
address = 1
type = "i16"

[[devices.points]]
id = "u32-big"
register = "holding"
address = 2
type = "u32"

[[devices.points]]
id = "u32-little"
register = "holding"
address = 4
type = "u32"
word_order = "little"

[[devices.points]]
id = "f32-big"
register = "holding"
address = 6
type = "f32"

[[devices.points]]
id = "f32-little"
register = "holding"
address = 8
type = "f32"
word_order = "little"

[[devices.points]]
id = "i32"
register = "holding"
address = 10
type = "i32"

[[devices.points]]
id = "bit3"
register = "holding"
address = 12
type = "bool"
bit = 3

[[devices.points]]
id = "bit4"
register = "holding"
address = 12
type = "bool"
bit = 4

[[devices.points]]
id = "scaled"
register = "holding"
address = 13
type = "i16"
scale = 0.1
offset = -10

[[devices.points]]
id = "byte-swapped"
register = "holding"
address = 14
type = "u16"
byte_order = "little"

[[devices.points]]
id = "input-far"
register = "input"
address = 150
type = "u16"

[[devices.points]]
id = "door"
register = "coil"
address = 5

[[devices.points]]
id = "tamper"
register = "discrete_input"
address = 7
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_values_decode_and_a_coil_flip_is_seen() {
    let Some(sim) = ModbusSim::start_tcp(&[1]) else {
        return;
    };
    let f_big = 21.5f32.to_bits();
    let f_little = (-3.25f32).to_bits();
    sim.write_registers(
        1,
        0,
        &[
            54321,
            (-1234i16) as u16,
            0x1234,
            0x5678,
            0x5678,
            0x1234,
            (f_big >> 16) as u16,
            f_big as u16,
            f_little as u16,
            (f_little >> 16) as u16,
            ((-100_000i32) as u32 >> 16) as u16,
            (-100_000i32) as u32 as u16,
            0b1000,
            250,
            0x3412,
        ],
    )
    .await;

    let cfg = load(&format!("{HEAD}{}", tcp_device(sim.tcp_port.unwrap())));
    let p = |id: &str| cfg.points.find_in("panel", id).unwrap();
    let mut d = Driver::start(&cfg);
    // The first poll's messages (a request's changes go out as soon as
    // its reply is in) carry every point.
    let mut v = HashMap::new();
    while v.len() < cfg.points.len() {
        let part = d
            .wait(Duration::from_secs(10), "first readings", |m| {
                readings_of(m, "panel")
            })
            .await;
        v.extend(part);
    }
    assert_eq!(v[&p("u16")], Value::Int(54321));
    assert_eq!(v[&p("i16")], Value::Int(-1234));
    assert_eq!(v[&p("u32-big")], Value::Int(0x1234_5678));
    assert_eq!(v[&p("u32-little")], Value::Int(0x1234_5678));
    assert_eq!(v[&p("f32-big")], Value::Float(21.5));
    assert_eq!(v[&p("f32-little")], Value::Float(-3.25));
    assert_eq!(v[&p("i32")], Value::Int(-100_000));
    assert_eq!(v[&p("bit3")], Value::Bool(true));
    assert_eq!(v[&p("bit4")], Value::Bool(false));
    match v[&p("scaled")] {
        Value::Float(f) => assert!((f - 15.0).abs() < 1e-9, "{f}"),
        x => panic!("scaled: {x:?}"),
    }
    assert_eq!(v[&p("byte-swapped")], Value::Int(0x1234));
    assert_eq!(v[&p("input-far")], Value::Int(0));
    assert_eq!(v[&p("door")], Value::Bool(false));
    assert_eq!(v[&p("tamper")], Value::Bool(false));

    // The door opens: the coil flips and the next polls show it.
    let flipped_at = Instant::now();
    sim.write_coil(1, 5, true).await;
    d.wait(Duration::from_secs(5), "door coil true", |m| {
        readings_of(m, "panel").filter(|v| v.get(&p("door")) == Some(&Value::Bool(true)))
    })
    .await;
    assert!(flipped_at.elapsed() < Duration::from_secs(2));
    // And a register change too.
    sim.write_register(1, 0, 7).await;
    d.wait(Duration::from_secs(5), "u16 = 7", |m| {
        readings_of(m, "panel").filter(|v| v.get(&p("u16")) == Some(&Value::Int(7)))
    })
    .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_device_goes_offline_when_killed_and_online_when_back() {
    let Some(mut sim) = ModbusSim::start_tcp(&[1]) else {
        return;
    };
    let port = sim.tcp_port.unwrap();
    let cfg = load(&format!("{HEAD}{}", tcp_device(port)));
    let mut d = Driver::start(&cfg);
    d.wait(Duration::from_secs(10), "first readings", |m| {
        readings_of(m, "panel")
    })
    .await;

    sim.kill();
    let killed = Instant::now();
    let reason = d
        .wait(Duration::from_secs(10), "offline", |m| match m {
            BusMessage::DeviceStatus {
                device,
                online,
                reason,
                ..
            } => {
                assert_eq!(&**device, "panel");
                assert!(!online, "no online status before the device went offline");
                Some(reason.clone())
            }
            _ => None,
        })
        .await;
    // offline_after = 3 polls at 0.1 s (connection refused fails at once).
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(2), "offline after {took:?}");
    // Not at the first failed poll: the third comes ≥ 2 intervals after the first.
    assert!(
        took >= Duration::from_millis(190),
        "offline too early: {took:?}"
    );
    assert!(reason.is_some());

    // No repeated offline messages while it stays down.
    let quiet = tokio::time::timeout(Duration::from_millis(800), d.rx.recv()).await;
    assert!(quiet.is_err(), "unexpected message while down: {quiet:?}");

    let sim2 = ModbusSim::start_tcp_on(port, &[1]).expect("simulator restarts");
    let back = Instant::now();
    d.wait(Duration::from_secs(10), "online", |m| match m {
        BusMessage::DeviceStatus { online, .. } => {
            assert!(online);
            Some(())
        }
        _ => None,
    })
    .await;
    // Reconnect backoff is capped at backoff_max_s = 1 (plus the poll).
    assert!(
        back.elapsed() < Duration::from_secs(3),
        "{:?}",
        back.elapsed()
    );
    d.wait(Duration::from_secs(5), "readings again", |m| {
        readings_of(m, "panel")
    })
    .await;
    d.stop().await;
    drop(sim2);
}

fn rtu_config(tty: &Path) -> String {
    rtu_bus_config(tty, &[1, 2, 3], 2, true)
}

/// An RS-485 line at 19200 baud on `tty` with a slave per unit of `units`
/// (polled every 0.25 s, timeout 0.15 s, offline after 2 failures), each
/// with its holding register 0 as `level` and, with `alarm_coil`, coil 0
/// as `alarm`.
fn rtu_bus_config(tty: &Path, units: &[u8], backoff_max_s: u64, alarm_coil: bool) -> String {
    let mut s = format!(
        r#"{HEAD}
[[serial_buses]]
id = "rs485-a"
path = "{}"
baud = 19200
"#,
        tty.display()
    );
    for unit in units {
        s.push_str(&format!(
            r#"
[[devices]]
id = "slave-{unit}"
poll_interval_s = 0.25
timeout_s = 0.15
offline_after = 2
[devices.modbus]
bus = "rs485-a"
unit = {unit}
backoff_max_s = {backoff_max_s}

[[devices.points]]
id = "level"
register = "holding"
address = 0
type = "u16"
"#
        ));
        if alarm_coil {
            s.push_str(
                r#"
[[devices.points]]
id = "alarm"
register = "coil"
address = 0
"#,
            );
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_two_slaves_on_one_bus_and_an_absent_one() {
    let Some(sim) = ModbusSim::start_rtu(&[1, 2], 19200) else {
        return;
    };
    sim.write_register(1, 0, 111).await;
    sim.write_register(2, 0, 222).await;
    let cfg = load(&rtu_config(sim.gateway_tty.as_ref().unwrap()));
    let level = |dev: &str| cfg.points.find_in(dev, "level").unwrap();
    let alarm = |dev: &str| cfg.points.find_in(dev, "alarm").unwrap();
    let mut d = Driver::start(&cfg);

    let mut seen: HashMap<String, Vec<Instant>> = HashMap::new();
    let mut offline: Vec<String> = Vec::new();
    let mut flipped = false;
    let mut saw_flip = false;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        let m = d.next(Duration::from_secs(3), "RTU traffic").await;
        match &m {
            BusMessage::Readings { device, .. } | BusMessage::Confirmed { device, .. } => {
                // `Readings` after a change carry the changed requests'
                // points only (the coil's, when only it flipped), and a
                // poll's first request's changes come in a message of
                // their own.
                let v = values_of(&m).unwrap();
                match &**device {
                    "slave-1" => {
                        if let Some(l) = v.get(&level("slave-1")) {
                            assert_eq!(*l, Value::Int(111));
                        }
                    }
                    "slave-2" => {
                        if let Some(l) = v.get(&level("slave-2")) {
                            assert_eq!(*l, Value::Int(222));
                        }
                        if v.get(&alarm("slave-2")) == Some(&Value::Bool(true)) {
                            saw_flip = true;
                        }
                    }
                    other => panic!("readings from {other}, which is not on the line"),
                }
                seen.entry(device.to_string())
                    .or_default()
                    .push(Instant::now());
            }
            BusMessage::DeviceStatus { device, online, .. } => {
                assert!(!online, "{device} online");
                offline.push(device.to_string());
            }
            BusMessage::Handover { .. } | BusMessage::Unreadable { .. } => {
                panic!("unexpected {m:?}")
            }
        }
        if !flipped && start.elapsed() > Duration::from_secs(2) {
            // Change a value through the control port while the gateway
            // reads over RTU.
            sim.write_coil(2, 0, true).await;
            flipped = true;
        }
    }
    d.stop().await;

    assert_eq!(
        offline,
        vec!["slave-3".to_string()],
        "only the absent slave goes offline, once"
    );
    assert!(saw_flip, "coil change on slave 2 seen over RTU");
    for dev in ["slave-1", "slave-2"] {
        let times = &seen[dev];
        // 8 s at 0.25 s: 32 polls if perfectly on time.
        assert!(times.len() >= 20, "{dev}: only {} polls", times.len());
        let worst = times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        // Interval + one timeout of the dead slave + scheduling slack.
        assert!(worst < Duration::from_millis(900), "{dev}: gap {worst:?}");
    }
}

#[tokio::test]
async fn disabled_devices_and_pointless_devices_are_not_polled() {
    let text = format!(
        r#"{HEAD}
[[devices]]
id = "spare"
enabled = false
[devices.modbus]
host = "127.0.0.1"
port = 1
[[devices.points]]
id = "x"
register = "coil"
address = 0

[[devices]]
id = "empty"
[devices.modbus]
host = "127.0.0.1"
port = 2
"#
    );
    let cfg = load(&text);
    let (tx, mut rx) = mpsc::channel(8);
    let handles = modbus::spawn(&cfg, tx, CancellationToken::new());
    assert!(
        handles.is_empty(),
        "no endpoint task for disabled or empty devices"
    );
    assert!(rx.recv().await.is_none(), "nothing is sent");
}

/// Slave 1 answers every read 20 ms after the gateway's 150 ms timeout;
/// slave 2, on the same line, is polled right after it. The late reply must
/// be neither taken for slave 2's answer nor for a later one of slave 1's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_a_late_reply_is_not_taken_for_the_next_request() {
    let slow = [(1, Duration::from_millis(170))];
    let Some(sim) = ModbusSim::start_rtu_slow(&[1, 2], 19200, &slow) else {
        return;
    };
    sim.write_register(1, 0, 111).await;
    sim.write_register(2, 0, 222).await;
    let text = rtu_bus_config(sim.gateway_tty.as_ref().unwrap(), &[1, 2], 1, false);
    let cfg = load(&text);
    let level = cfg.points.find_in("slave-2", "level").unwrap();
    let mut d = Driver::start(&cfg);
    let mut polls_2 = 0;
    let mut status = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        let m = d.next(Duration::from_secs(3), "RTU traffic").await;
        match &m {
            BusMessage::Readings { device, .. } | BusMessage::Confirmed { device, .. } => {
                assert_eq!(&**device, "slave-2", "slave 1 never answers in time");
                if let Some(v) = values_of(&m).unwrap().get(&level) {
                    assert_eq!(*v, Value::Int(222), "slave 2's own register");
                }
                polls_2 += 1;
            }
            BusMessage::DeviceStatus { device, online, .. } => {
                status.push((device.to_string(), *online))
            }
            BusMessage::Handover { .. } | BusMessage::Unreadable { .. } => {
                panic!("unexpected {m:?}")
            }
        }
    }
    d.stop().await;
    assert_eq!(
        status,
        vec![("slave-1".to_string(), false)],
        "only the slow slave goes offline, once"
    );
    // 6 s at 0.25 s: 24 polls if never delayed.
    assert!(polls_2 >= 15, "slave 2: only {polls_2} polls");
}
