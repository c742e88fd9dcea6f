//! Polling-loop tests against a fake transport, on paused virtual time.

use super::endpoint::{DevicePoller, Endpoint, LinkKind};
use super::plan::{plan, Limits};
use super::transport::{Connector, ModbusError, Transport};
use crate::drivers::{PointConfig, PointType, RegisterKind};
use crate::point::{BusMessage, PointIndex, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    Answer,
    /// Never reply (an absent slave).
    Hang,
    Exception(u8),
}

#[derive(Default)]
struct FakeState {
    connects: u32,
    connect_fails: bool,
    units: HashMap<u8, Behaviour>,
    holding: Vec<u16>,
    coils: Vec<bool>,
    /// (unit, start, end) of every request.
    requests: Vec<(u8, Instant, Option<Instant>)>,
    in_flight: u32,
    max_in_flight: u32,
    /// (unit, function, address, when) of every write frame.
    writes: Vec<(u8, u8, u16, Instant)>,
    /// Holding registers the device does not have: a read touching one is
    /// refused (exception 2).
    holes: Vec<u16>,
    /// Holding registers whose read fails with exception 4 (device
    /// failure: the device is unwell, not the read).
    failing: Vec<u16>,
    /// Extra time a holding-register read takes (a long read).
    slow_holding: Duration,
    /// Links numbered up to this one were closed by the device: a request
    /// on one fails as a closed connection.
    closed_upto: u32,
}

type Shared = Arc<Mutex<FakeState>>;

struct FakeConnector(Shared);
/// A link: the device's state, and the link's number (the `connects` count
/// when it was opened).
struct FakeLink(Shared, u32);

/// Marks a request finished even when its future is dropped by a timeout.
struct InFlight(Shared, usize);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock().unwrap();
        s.in_flight -= 1;
        s.requests[self.1].2 = Some(Instant::now());
    }
}

impl FakeLink {
    async fn request<T>(
        &mut self,
        unit: u8,
        f: impl FnOnce(&FakeState) -> T,
    ) -> Result<T, ModbusError> {
        let (behaviour, guard) = {
            let mut s = self.0.lock().unwrap();
            if self.1 <= s.closed_upto {
                return Err(ModbusError::Io("connection closed by the device".into()));
            }
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            s.requests.push((unit, Instant::now(), None));
            let idx = s.requests.len() - 1;
            let b = s.units.get(&unit).copied().unwrap_or(Behaviour::Hang);
            (b, InFlight(self.0.clone(), idx))
        };
        // A real device takes a moment to answer.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let r = match behaviour {
            Behaviour::Answer => Ok(f(&self.0.lock().unwrap())),
            Behaviour::Hang => std::future::pending().await,
            Behaviour::Exception(code) => Err(ModbusError::Exception {
                function: "read",
                code,
                name: "illegal data address",
            }),
        };
        drop(guard);
        r
    }
}

impl Transport for FakeLink {
    async fn read_coils(
        &mut self,
        unit: u8,
        addr: u16,
        cnt: u16,
    ) -> Result<Vec<bool>, ModbusError> {
        self.request(unit, |s| {
            s.coils[addr as usize..(addr + cnt) as usize].to_vec()
        })
        .await
    }
    async fn read_discrete_inputs(
        &mut self,
        unit: u8,
        addr: u16,
        cnt: u16,
    ) -> Result<Vec<bool>, ModbusError> {
        self.read_coils(unit, addr, cnt).await
    }
    async fn read_holding(
        &mut self,
        unit: u8,
        addr: u16,
        cnt: u16,
    ) -> Result<Vec<u16>, ModbusError> {
        let slow = self.0.lock().unwrap().slow_holding;
        tokio::time::sleep(slow).await;
        self.request(unit, |s| {
            let touches = |at: &[u16]| at.iter().any(|h| (addr..addr + cnt).contains(h));
            if touches(&s.holes) {
                return Err(ModbusError::Exception {
                    function: "read holding registers",
                    code: 2,
                    name: "illegal data address",
                });
            }
            if touches(&s.failing) {
                return Err(ModbusError::Exception {
                    function: "read holding registers",
                    code: 4,
                    name: "server device failure",
                });
            }
            Ok(s.holding[addr as usize..(addr + cnt) as usize].to_vec())
        })
        .await?
    }
    async fn read_input(&mut self, unit: u8, addr: u16, cnt: u16) -> Result<Vec<u16>, ModbusError> {
        self.read_holding(unit, addr, cnt).await
    }
    async fn write_coil(&mut self, unit: u8, addr: u16, on: bool) -> Result<(), ModbusError> {
        let s = self.0.clone();
        self.request(unit, |_| ()).await?;
        let mut s = s.lock().unwrap();
        s.coils[addr as usize] = on;
        s.writes.push((unit, 5, addr, Instant::now()));
        Ok(())
    }
    async fn write_register(&mut self, unit: u8, addr: u16, word: u16) -> Result<(), ModbusError> {
        let s = self.0.clone();
        self.request(unit, |_| ()).await?;
        let mut s = s.lock().unwrap();
        s.holding[addr as usize] = word;
        s.writes.push((unit, 6, addr, Instant::now()));
        Ok(())
    }
    async fn write_registers(
        &mut self,
        unit: u8,
        addr: u16,
        words: Vec<u16>,
    ) -> Result<(), ModbusError> {
        let s = self.0.clone();
        self.request(unit, |_| ()).await?;
        let mut s = s.lock().unwrap();
        for (i, w) in words.iter().enumerate() {
            s.holding[addr as usize + i] = *w;
        }
        s.writes.push((unit, 16, addr, Instant::now()));
        Ok(())
    }
}

impl Connector for FakeConnector {
    type Link = FakeLink;
    async fn connect(&mut self) -> Result<FakeLink, ModbusError> {
        let fails = {
            let mut s = self.0.lock().unwrap();
            s.connects += 1;
            s.connect_fails
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        if fails {
            Err(ModbusError::Connect {
                endpoint: "fake".into(),
                message: "connection refused".into(),
            })
        } else {
            let n = self.0.lock().unwrap().connects;
            Ok(FakeLink(self.0.clone(), n))
        }
    }
    fn name(&self) -> &str {
        "fake"
    }
}

fn point(table: RegisterKind, address: u16, kind: PointType) -> PointConfig {
    PointConfig::modbus(table, address, kind)
}

const LIMITS: Limits = Limits {
    max_registers: 125,
    max_bits: 2000,
    max_gap_registers: 10,
    max_gap_bits: 64,
};

/// Device `unit` with points: holding 0 (u16), holding 1–2 (f32), coil 0;
/// point indexes start at `first`.
fn device(
    unit: u8,
    first: PointIndex,
    interval_ms: u64,
    timeout_ms: u64,
    offline_after: u32,
    backoff_max_s: u64,
) -> DevicePoller {
    let pts = [
        point(RegisterKind::Holding, 0, PointType::U16),
        point(RegisterKind::Holding, 1, PointType::F32),
        point(RegisterKind::Coil, 0, PointType::Bool),
    ];
    let refs: Vec<_> = pts
        .iter()
        .enumerate()
        .map(|(i, p)| (first + i as PointIndex, p))
        .collect();
    DevicePoller::new(
        &format!("dev-{unit}"),
        unit,
        Duration::from_millis(interval_ms),
        Duration::from_millis(timeout_ms),
        offline_after,
        Duration::from_secs(backoff_max_s),
        plan(&refs, LIMITS).unwrap(),
        Instant::now(),
    )
}

fn fake(units: &[(u8, Behaviour)]) -> Shared {
    let mut holding = vec![0u16; 200];
    holding[0] = 42;
    let f = 21.5f32.to_bits();
    holding[1] = (f >> 16) as u16;
    holding[2] = f as u16;
    let mut coils = vec![false; 200];
    coils[0] = true;
    Arc::new(Mutex::new(FakeState {
        units: units.iter().copied().collect(),
        holding,
        coils,
        ..FakeState::default()
    }))
}

fn start(
    shared: &Shared,
    kind: LinkKind,
    devices: Vec<DevicePoller>,
) -> (
    mpsc::Receiver<BusMessage>,
    CancellationToken,
    JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(64);
    let token = CancellationToken::new();
    let ep = Endpoint::new(FakeConnector(shared.clone()), kind, devices, tx)
        .with_seed(7)
        .without_early_changes();
    let h = tokio::spawn(ep.run(token.clone()));
    (rx, token, h)
}

fn set(shared: &Shared, unit: u8, b: Behaviour) {
    shared.lock().unwrap().units.insert(unit, b);
}

/// A device and the (point, value)s of one poll.
type PollValues = (Arc<str>, Vec<(PointIndex, Value)>);

/// The device and (point, value)s of a `Readings` or `Confirmed`, the
/// confirmed values decoded as a consumer would.
fn values_of(m: &BusMessage) -> Option<PollValues> {
    match m {
        BusMessage::Readings {
            device, readings, ..
        } => Some((
            device.clone(),
            readings.iter().map(|r| (r.point, r.value)).collect(),
        )),
        BusMessage::Confirmed { device, points, .. } => Some((
            device.clone(),
            (0..points.count())
                .filter_map(|i| Some((points.point(i).unwrap(), points.value(i)?)))
                .collect(),
        )),
        BusMessage::DeviceStatus { .. }
        | BusMessage::Unreadable { .. }
        | BusMessage::Handover { .. } => None,
    }
}

#[tokio::test(start_paused = true)]
async fn readings_are_decoded_one_message_per_poll() {
    let shared = fake(&[(1, Behaviour::Answer)]);
    let (mut rx, token, h) = start(
        &shared,
        LinkKind::Tcp,
        vec![device(1, 10, 1000, 100, 3, 30)],
    );
    let t0 = Instant::now();
    for n in 0..3 {
        let m = rx.recv().await.unwrap();
        // The first poll sends readings; the unchanged ones confirm them.
        assert_eq!(n == 0, matches!(m, BusMessage::Readings { .. }), "{m:?}");
        let (device, mut got) = values_of(&m).unwrap();
        assert_eq!(&*device, "dev-1");
        got.sort_by_key(|(p, _)| *p);
        assert_eq!(
            got,
            vec![
                (10, Value::Int(42)),
                (11, Value::Float(21.5)),
                (12, Value::Bool(true))
            ]
        );
        // Polls start on the interval grid.
        let late = Instant::now() - t0 - Duration::from_secs(n);
        assert!(
            late < Duration::from_millis(50),
            "poll {n} late by {late:?}"
        );
    }
    assert_eq!(shared.lock().unwrap().connects, 1, "the link is reused");
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn offline_after_n_failed_polls_then_online() {
    let shared = fake(&[(1, Behaviour::Answer)]);
    let (mut rx, token, h) = start(&shared, LinkKind::Tcp, vec![device(1, 0, 1000, 100, 3, 30)]);
    assert!(matches!(rx.recv().await, Some(BusMessage::Readings { .. })));
    set(&shared, 1, Behaviour::Hang);
    let t0 = Instant::now();
    match rx.recv().await.unwrap() {
        BusMessage::DeviceStatus {
            online,
            reason,
            device,
            ..
        } => {
            assert!(!online);
            assert_eq!(&*device, "dev-1");
            assert!(reason.unwrap().contains("no reply"));
        }
        m => panic!("{m:?}"),
    }
    // Polls at 1 s, 2 s, 3 s time out; offline at the third.
    let took = Instant::now() - t0;
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_millis(3300),
        "{took:?}"
    );
    // Each timeout dropped the link: 1 initial + 3 reconnects... (the 3rd
    // drop's reconnect happens at the next poll).
    assert_eq!(shared.lock().unwrap().connects, 3);
    set(&shared, 1, Behaviour::Answer);
    match rx.recv().await.unwrap() {
        BusMessage::DeviceStatus { online, reason, .. } => {
            assert!(online);
            assert!(reason.is_none());
        }
        m => panic!("{m:?}"),
    }
    assert!(matches!(rx.recv().await, Some(BusMessage::Readings { .. })));
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn exception_counts_as_failure_but_keeps_the_link() {
    let shared = fake(&[(1, Behaviour::Exception(2))]);
    let (mut rx, token, h) = start(&shared, LinkKind::Tcp, vec![device(1, 0, 1000, 100, 2, 30)]);
    match rx.recv().await.unwrap() {
        BusMessage::DeviceStatus { online, reason, .. } => {
            assert!(!online);
            assert!(reason.unwrap().contains("exception 2"));
        }
        m => panic!("{m:?}"),
    }
    assert_eq!(shared.lock().unwrap().connects, 1);
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn all_units_of_an_endpoint_share_one_link_one_request_at_a_time() {
    let shared = fake(&[
        (1, Behaviour::Answer),
        (2, Behaviour::Answer),
        (3, Behaviour::Answer),
    ]);
    let devices = vec![
        device(1, 0, 1000, 100, 3, 30),
        device(2, 3, 500, 100, 3, 30),
        device(3, 6, 1000, 100, 3, 30),
    ];
    let (mut rx, token, h) = start(&shared, LinkKind::Tcp, devices);
    let mut per_device: HashMap<String, u32> = HashMap::new();
    let deadline = Instant::now() + Duration::from_millis(9_900);
    while let Ok(m) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if let Some(BusMessage::Readings { device, .. } | BusMessage::Confirmed { device, .. }) = m
        {
            *per_device.entry(device.to_string()).or_default() += 1;
        }
    }
    {
        let s = shared.lock().unwrap();
        assert_eq!(s.connects, 1);
        assert_eq!(s.max_in_flight, 1);
    }
    assert_eq!(per_device["dev-1"], 10);
    assert_eq!(per_device["dev-2"], 20);
    assert_eq!(per_device["dev-3"], 10);
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dead_slave_is_backed_off_without_stalling_the_bus() {
    let shared = fake(&[(1, Behaviour::Answer)]); // unit 3 hangs
    let inter_frame = Duration::from_millis(4);
    let devices = vec![device(1, 0, 1000, 200, 2, 8), device(3, 3, 1000, 200, 2, 8)];
    let (mut rx, token, h) = start(&shared, LinkKind::Serial { inter_frame }, devices);
    let mut live_polls = Vec::new();
    let mut offline = 0;
    let t0 = Instant::now();
    while Instant::now() - t0 < Duration::from_secs(60) {
        match rx.recv().await.unwrap() {
            BusMessage::Readings { device, .. } | BusMessage::Confirmed { device, .. } => {
                assert_eq!(&*device, "dev-1");
                live_polls.push(Instant::now());
            }
            BusMessage::DeviceStatus { device, online, .. } => {
                assert_eq!(&*device, "dev-3");
                assert!(!online);
                offline += 1;
            }
            m @ (BusMessage::Handover { .. } | BusMessage::Unreadable { .. }) => {
                panic!("unexpected {m:?}")
            }
        }
    }
    token.cancel();
    h.await.unwrap();
    assert_eq!(offline, 1, "offline announced once");
    // The live slave keeps its 1 s rhythm (a dead slave's timeout may delay
    // one poll by at most the timeout).
    assert!(live_polls.len() >= 59, "{}", live_polls.len());
    for w in live_polls.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap <= Duration::from_millis(1250), "gap {gap:?}");
    }
    let s = shared.lock().unwrap();
    assert_eq!(s.max_in_flight, 1, "never two requests on the line");
    let dead = s.requests.iter().filter(|r| r.0 == 3).count();
    // Without backoff: 60 polls. With 1,2,4,8,8… s (halved by jitter at worst): far fewer.
    assert!((4..=20).contains(&dead), "dead slave polled {dead} times");
    // Inter-frame silence between every two requests.
    for w in s.requests.windows(2) {
        let end = w[0].2.unwrap();
        assert!(w[1].1 - end >= inter_frame, "{:?}", w[1].1 - end);
    }
}

#[tokio::test(start_paused = true)]
async fn reconnects_back_off_but_offline_is_still_on_time() {
    let shared = fake(&[(1, Behaviour::Answer)]);
    shared.lock().unwrap().connect_fails = true;
    let (mut rx, token, h) = start(&shared, LinkKind::Tcp, vec![device(1, 0, 1000, 100, 3, 16)]);
    let t0 = Instant::now();
    match rx.recv().await.unwrap() {
        BusMessage::DeviceStatus { online, reason, .. } => {
            assert!(!online);
            assert!(reason.unwrap().contains("connection refused"));
        }
        m => panic!("{m:?}"),
    }
    let took = Instant::now() - t0;
    assert!(
        took < Duration::from_millis(2100),
        "offline after 3 polls: {took:?}"
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
    let connects = shared.lock().unwrap().connects;
    // Polls: ~122; connects with 1,2,4,8,16,16… s backoff (jittered): ~10–15.
    assert!((6..=20).contains(&connects), "{connects} connect attempts");
    shared.lock().unwrap().connect_fails = false;
    let mut came_back = false;
    while let Some(m) = rx.recv().await {
        if let BusMessage::DeviceStatus { online: true, .. } = m {
            came_back = true;
            break;
        }
    }
    assert!(came_back);
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_is_prompt_during_backoff_and_during_a_request() {
    // During a reconnect backoff.
    let shared = fake(&[]);
    shared.lock().unwrap().connect_fails = true;
    let (_rx, token, h) = start(&shared, LinkKind::Tcp, vec![device(1, 0, 1000, 100, 1, 30)]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    token.cancel();
    let t0 = Instant::now();
    h.await.unwrap();
    assert_eq!(Instant::now(), t0);

    // During a request with a long timeout.
    let shared = fake(&[(1, Behaviour::Hang)]);
    let (_rx, token, h) = start(
        &shared,
        LinkKind::Tcp,
        vec![device(1, 0, 1000, 60_000, 1, 30)],
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(shared.lock().unwrap().in_flight, 1);
    token.cancel();
    let t0 = Instant::now();
    h.await.unwrap();
    assert_eq!(Instant::now(), t0);
}

#[tokio::test(start_paused = true)]
async fn log_lines_name_the_endpoint_and_the_device() {
    // The endpoint's span is entered only for its own lines, and the
    // devices' spans are its children: every line still says where.
    let (ring, _guard) = crate::logging::capture();
    let shared = fake(&[(1, Behaviour::Answer)]);
    let (mut rx, _token, h) = start(&shared, LinkKind::Tcp, vec![device(1, 0, 1000, 100, 1, 30)]);
    assert!(matches!(rx.recv().await, Some(BusMessage::Readings { .. })));
    set(&shared, 1, Behaviour::Hang);
    let offline = rx.recv().await.unwrap();
    assert!(
        matches!(offline, BusMessage::DeviceStatus { online: false, .. }),
        "{offline:?}"
    );
    // Back online: its next message finds the bus closed.
    set(&shared, 1, Behaviour::Answer);
    drop(rx);
    tokio::time::timeout(Duration::from_secs(60), h)
        .await
        .unwrap()
        .unwrap();
    let lines: Vec<String> = ring.recent(100).into_iter().map(|l| l.text).collect();
    let device = "modbus_endpoint{endpoint=fake}: modbus_device{device=dev-1 unit=1}: ";
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(device) && l.contains("device offline")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l
                == "modbus_endpoint{endpoint=fake}: bus closed or stopping; endpoint task stops"),
        "{lines:#?}"
    );
    // No line lost its place.
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("modbus_endpoint{endpoint=fake}: ")),
        "{lines:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn closed_bus_stops_the_task() {
    let shared = fake(&[(1, Behaviour::Answer)]);
    let (rx, _token, h) = start(&shared, LinkKind::Tcp, vec![device(1, 0, 1000, 100, 1, 30)]);
    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), h)
        .await
        .expect("task ends when nobody listens")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_is_prompt_on_a_full_bus() {
    // Nobody takes from the bus (a reload switching alarm tasks): the
    // task waits to hand over a poll, and still ends when told to stop.
    let shared = fake(&[(1, Behaviour::Answer)]);
    let (tx, _rx) = mpsc::channel(1);
    let token = CancellationToken::new();
    let ep = Endpoint::new(
        FakeConnector(shared.clone()),
        LinkKind::Tcp,
        vec![device(1, 0, 100, 100, 1, 30)],
        tx,
    )
    .with_seed(7)
    .without_early_changes();
    let h = tokio::spawn(ep.run(token.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let polls = shared.lock().unwrap().requests.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        shared.lock().unwrap().requests.len(),
        polls,
        "blocked on the bus"
    );
    token.cancel();
    tokio::time::timeout(Duration::from_secs(1), h)
        .await
        .expect("task ends while the bus is full")
        .unwrap();
}

/// A device whose points 0..=4 are writable: holding 0 (u16, scale 0.1),
/// holding 1–2 (f32), coil 0, holding 3 bit 2, holding 4–5 (u32); point
/// indexes start at 0.
fn writable_device(unit: u8) -> DevicePoller {
    use super::decode::Codec;
    use super::endpoint::WriteTarget;
    let mut scaled = point(RegisterKind::Holding, 0, PointType::U16);
    scaled.scale = 0.1;
    let mut bit = point(RegisterKind::Holding, 3, PointType::Bool);
    bit.bit = Some(2);
    let pts = [
        scaled,
        point(RegisterKind::Holding, 1, PointType::F32),
        point(RegisterKind::Coil, 0, PointType::Bool),
        bit,
        point(RegisterKind::Holding, 4, PointType::U32),
    ];
    let refs: Vec<_> = pts
        .iter()
        .enumerate()
        .map(|(i, p)| (i as PointIndex, p))
        .collect();
    let writable = pts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                i as PointIndex,
                WriteTarget {
                    table: p.register.unwrap(),
                    address: p.address.unwrap(),
                    codec: Codec::new(p),
                },
            )
        })
        .collect();
    DevicePoller::new(
        &format!("dev-{unit}"),
        unit,
        Duration::from_millis(1000),
        Duration::from_millis(100),
        3,
        Duration::from_secs(30),
        plan(&refs, LIMITS).unwrap(),
        Instant::now(),
    )
    .with_writable(writable)
}

fn start_writable(
    shared: &Shared,
    kind: LinkKind,
) -> (
    mpsc::Receiver<BusMessage>,
    crate::drivers::write::Writers,
    CancellationToken,
    JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(64);
    let (wtx, wrx) = mpsc::channel(8);
    let mut writers = crate::drivers::write::Writers::new();
    writers.insert("dev-1".into(), wtx);
    let token = CancellationToken::new();
    let ep = Endpoint::new(
        FakeConnector(shared.clone()),
        kind,
        vec![writable_device(1)],
        tx,
    )
    .with_seed(7)
    .without_early_changes()
    .with_writes(wrx);
    let h = tokio::spawn(ep.run(token.clone()));
    (rx, writers, token, h)
}

const W: Duration = Duration::from_secs(5);

#[tokio::test(start_paused = true)]
async fn writes_use_the_right_function_and_undo_scaling() {
    use crate::drivers::write::WriteError;
    let shared = fake(&[(1, Behaviour::Answer)]);
    shared.lock().unwrap().holding[3] = 0b1001;
    let (_rx, writers, token, h) = start_writable(&shared, LinkKind::Tcp);
    // u16 with scale 0.1: 21.5 → raw 215 (function 6).
    writers
        .write("dev-1", 0, Value::Float(21.5), None, W)
        .await
        .unwrap();
    // f32: two registers (function 16).
    writers
        .write("dev-1", 1, Value::Float(-3.25), None, W)
        .await
        .unwrap();
    // coil (function 5).
    writers
        .write("dev-1", 2, Value::Bool(false), None, W)
        .await
        .unwrap();
    // bit 2 of holding 3: read-modify-write keeps the other bits.
    writers
        .write("dev-1", 3, Value::Bool(true), None, W)
        .await
        .unwrap();
    writers
        .write("dev-1", 4, Value::Int(70_000), None, W)
        .await
        .unwrap();
    {
        let s = shared.lock().unwrap();
        assert_eq!(s.holding[0], 215);
        let f = f32::from_bits(((s.holding[1] as u32) << 16) | s.holding[2] as u32);
        assert_eq!(f, -3.25);
        assert!(!s.coils[0]);
        assert_eq!(s.holding[3], 0b1101);
        assert_eq!(((s.holding[4] as u32) << 16) | s.holding[5] as u32, 70_000);
        let fns: Vec<u8> = s.writes.iter().map(|w| w.1).collect();
        assert_eq!(fns, vec![6, 16, 5, 6, 16]);
    }
    // Out of range, wrong type, unknown point: refused, nothing written.
    let n = shared.lock().unwrap().writes.len();
    assert!(matches!(
        writers
            .write("dev-1", 0, Value::Float(7000.0), None, W)
            .await,
        Err(WriteError::BadValue(_))
    ));
    assert!(matches!(
        writers.write("dev-1", 2, Value::Int(1), None, W).await,
        Err(WriteError::BadValue(_))
    ));
    assert_eq!(
        writers.write("dev-1", 99, Value::Bool(true), None, W).await,
        Err(WriteError::NotWritable)
    );
    assert!(matches!(
        writers.write("nope", 0, Value::Bool(true), None, W).await,
        Err(WriteError::NoWriter(_))
    ));
    assert_eq!(shared.lock().unwrap().writes.len(), n);
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_pulse_writes_holds_and_writes_the_opposite() {
    let shared = fake(&[(1, Behaviour::Answer)]);
    shared.lock().unwrap().coils[0] = false;
    let (_rx, writers, token, h) = start_writable(&shared, LinkKind::Tcp);
    let t0 = Instant::now();
    writers
        .write(
            "dev-1",
            2,
            Value::Bool(true),
            Some(Duration::from_secs(5)),
            W,
        )
        .await
        .unwrap();
    assert!(shared.lock().unwrap().coils[0], "pulse on");
    tokio::time::sleep(Duration::from_millis(4900)).await;
    assert!(shared.lock().unwrap().coils[0], "held");
    tokio::time::sleep(Duration::from_millis(200)).await;
    {
        let s = shared.lock().unwrap();
        assert!(!s.coils[0], "released");
        let released = s.writes[1].3 - t0;
        assert!(
            released >= Duration::from_secs(5) && released < Duration::from_millis(5100),
            "{released:?}"
        );
    }
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_write_times_out_on_a_silent_device_and_serial_keeps_silence() {
    use crate::drivers::write::WriteError;
    let shared = fake(&[(1, Behaviour::Answer)]);
    let gap = Duration::from_millis(4);
    let (_rx, writers, token, h) = start_writable(&shared, LinkKind::Serial { inter_frame: gap });
    writers
        .write("dev-1", 3, Value::Bool(true), None, W)
        .await
        .unwrap();
    {
        let s = shared.lock().unwrap();
        // Every frame starts at least `gap` after the previous one ended.
        for w in s.requests.windows(2) {
            let (end, next) = (w[0].2.unwrap(), w[1].1);
            assert!(next >= end + gap, "{:?} then {:?}", end, next);
        }
    }
    set(&shared, 1, Behaviour::Hang);
    assert_eq!(
        writers.write("dev-1", 2, Value::Bool(true), None, W).await,
        Err(WriteError::Timeout(Duration::from_millis(100)))
    );
    set(&shared, 1, Behaviour::Exception(2));
    assert!(matches!(
        writers.write("dev-1", 2, Value::Bool(true), None, W).await,
        Err(WriteError::Refused(_))
    ));
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_write_its_caller_gave_up_on_is_never_sent() {
    use crate::drivers::write::WriteError;
    let shared = fake(&[(1, Behaviour::Hang)]);
    shared.lock().unwrap().coils[0] = false;
    let (_rx, writers, token, h) = start_writable(&shared, LinkKind::Tcp);
    // The endpoint is inside a poll the device does not answer (its
    // timeout is 100 ms); the caller waits 20 ms and reports a timeout.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let short = Duration::from_millis(20);
    assert_eq!(
        writers
            .write("dev-1", 2, Value::Bool(true), None, short)
            .await,
        Err(WriteError::Timeout(short))
    );
    set(&shared, 1, Behaviour::Answer);
    tokio::time::sleep(Duration::from_secs(3)).await;
    {
        let s = shared.lock().unwrap();
        assert!(s.writes.is_empty(), "written late: {:?}", s.writes);
        assert!(!s.coils[0]);
    }
    // A write its caller waits for still goes out.
    writers
        .write("dev-1", 2, Value::Bool(true), None, W)
        .await
        .unwrap();
    assert!(shared.lock().unwrap().coils[0]);
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stopping_endpoint_writes_its_pending_pulse_releases() {
    let shared = fake(&[(1, Behaviour::Answer)]);
    shared.lock().unwrap().coils[0] = false;
    let (_rx, writers, token, h) = start_writable(&shared, LinkKind::Tcp);
    writers
        .write(
            "dev-1",
            2,
            Value::Bool(true),
            Some(Duration::from_secs(60)),
            W,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(shared.lock().unwrap().coils[0], "pulse on");
    token.cancel();
    let t0 = Instant::now();
    h.await.unwrap();
    assert!(!shared.lock().unwrap().coils[0], "released at the stop");
    assert!(Instant::now() - t0 < Duration::from_secs(2));

    // A device that does not answer holds the stop at most 2 s.
    let shared = fake(&[(1, Behaviour::Answer)]);
    let (_rx, writers, token, h) = start_writable(&shared, LinkKind::Tcp);
    writers
        .write(
            "dev-1",
            2,
            Value::Bool(true),
            Some(Duration::from_secs(60)),
            W,
        )
        .await
        .unwrap();
    set(&shared, 1, Behaviour::Hang);
    token.cancel();
    let t0 = Instant::now();
    h.await.unwrap();
    assert!(shared.lock().unwrap().coils[0], "not released");
    assert!(Instant::now() - t0 <= Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_failed_pulse_release_is_retried() {
    let shared = fake(&[(1, Behaviour::Answer)]);
    shared.lock().unwrap().coils[0] = false;
    let (_rx, writers, token, h) = start_writable(&shared, LinkKind::Tcp);
    writers
        .write(
            "dev-1",
            2,
            Value::Bool(true),
            Some(Duration::from_secs(1)),
            W,
        )
        .await
        .unwrap();
    // The device stops answering just before the release is due.
    tokio::time::sleep(Duration::from_millis(900)).await;
    set(&shared, 1, Behaviour::Hang);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(shared.lock().unwrap().coils[0], "release not written yet");
    set(&shared, 1, Behaviour::Answer);
    // Retried one device interval (1 s) after the failed try.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!shared.lock().unwrap().coils[0], "released on retry");
    token.cancel();
    h.await.unwrap();
}

/// Every bus message with the (virtual) time it was received.
type Received = Arc<Mutex<Vec<(Instant, BusMessage)>>>;

/// Receive `rx` in a task, timestamping each message on arrival.
fn receive(mut rx: mpsc::Receiver<BusMessage>) -> Received {
    let got: Received = Default::default();
    let g = got.clone();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            g.lock().unwrap().push((Instant::now(), m));
        }
    });
    got
}

/// When each device's readings arrived.
fn polls_of(got: &Received) -> HashMap<String, Vec<Instant>> {
    let mut polls: HashMap<String, Vec<Instant>> = HashMap::new();
    for (at, m) in got.lock().unwrap().iter() {
        if let BusMessage::Readings { device, .. } | BusMessage::Confirmed { device, .. } = m {
            polls.entry(device.to_string()).or_default().push(*at);
        }
    }
    polls
}

/// [`start`] with a probe queue for every device.
fn start_probed(
    shared: &Shared,
    kind: LinkKind,
    devices: Vec<DevicePoller>,
) -> (
    super::probe::Probers,
    mpsc::Receiver<BusMessage>,
    CancellationToken,
    JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(256);
    let (ptx, prx) = mpsc::channel(super::probe::PROBE_QUEUE);
    let mut probers = super::probe::Probers::new();
    for d in &devices {
        probers.insert(d.id.clone(), ptx.clone());
    }
    let token = CancellationToken::new();
    let ep = Endpoint::new(FakeConnector(shared.clone()), kind, devices, tx)
        .with_seed(7)
        .without_early_changes()
        .with_probes(prx);
    let h = tokio::spawn(ep.run(token.clone()));
    (probers, rx, token, h)
}

#[tokio::test(start_paused = true)]
async fn probes_take_turns_with_polling_on_a_serial_bus() {
    use super::probe::ProbeError;
    let shared = fake(&[(1, Behaviour::Answer), (2, Behaviour::Answer)]);
    let inter_frame = Duration::from_millis(4);
    let (probers, rx, token, h) = start_probed(
        &shared,
        LinkKind::Serial { inter_frame },
        vec![device(1, 0, 50, 100, 3, 30), device(2, 3, 50, 100, 3, 30)],
    );
    let got = receive(rx);
    // Probes of both devices while both are polled every 50 ms.
    let mut tasks = Vec::new();
    for k in 0..6 {
        let p = probers.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20 * k)).await;
            let dev = if k % 2 == 0 { "dev-1" } else { "dev-2" };
            p.probe(dev, Duration::from_secs(2)).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap().expect("probe answered");
        assert_eq!(r.reads.len(), 2, "holding and coil requests: {r:?}");
        let f32_point = r.values.iter().find(|v| v.address == 1).unwrap();
        let bits = 21.5f32.to_bits();
        assert_eq!(f32_point.raw, [(bits >> 16) as u16, bits as u16]);
        assert_eq!(f32_point.value, Some(Value::Float(21.5)));
        let u16_point = r
            .values
            .iter()
            .find(|v| v.address == 0 && v.table == RegisterKind::Holding);
        assert_eq!(u16_point.unwrap().value, Some(Value::Int(42)));
    }
    // Polling went on between the probes: no device waited longer than
    // its interval plus one probe and one poll of the other device (two
    // requests each, every request after an inter-frame silence) plus its
    // own first silence and the fake's reply times (6 silences in all).
    let polls = polls_of(&got);
    let allowed = Duration::from_millis(50) + inter_frame * 6;
    for dev in ["dev-1", "dev-2"] {
        let at = &polls[dev];
        assert!(at.len() >= 3, "{dev} polled {} times", at.len());
        let gap = at.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(
            gap <= allowed,
            "{dev}: {gap:?} between two polls (allowed {allowed:?})"
        );
    }
    {
        let s = shared.lock().unwrap();
        assert_eq!(s.max_in_flight, 1, "one request at a time on the bus");
        // The inter-frame silence holds between every two requests.
        let mut spans: Vec<_> = s.requests.iter().map(|r| (r.1, r.2.unwrap())).collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[1].0 >= w[0].1 + inter_frame, "{w:?}");
        }
    }
    assert!(matches!(
        probers.probe("dev-9", Duration::from_secs(1)).await,
        Err(ProbeError::NotPolled { .. })
    ));
    token.cancel();
    h.await.unwrap();
    assert_eq!(
        probers.probe("dev-1", Duration::from_secs(1)).await,
        Err(ProbeError::Stopped)
    );
}

#[tokio::test(start_paused = true)]
async fn probe_errors_are_timeouts_and_exceptions_and_leave_health_alone() {
    use super::probe::ProbeError;
    let shared = fake(&[
        (1, Behaviour::Answer),
        (2, Behaviour::Answer),
        (3, Behaviour::Answer),
    ]);
    // One failed poll would take a device offline: a probe failure that
    // counted would show.
    let (probers, rx, token, h) = start_probed(
        &shared,
        LinkKind::Tcp,
        vec![
            device(1, 0, 10_000, 100, 1, 30),
            device(2, 3, 10_000, 100, 1, 30),
            device(3, 6, 10_000, 100, 1, 30),
        ],
    );
    let got = receive(rx);
    // Let the first polls pass, then the first two devices fail.
    tokio::time::sleep(Duration::from_millis(500)).await;
    set(&shared, 1, Behaviour::Hang);
    set(&shared, 2, Behaviour::Exception(2));
    let t0 = Instant::now();
    assert_eq!(
        probers.probe("dev-1", Duration::from_secs(5)).await,
        Err(ProbeError::Timeout { timeout_ms: 100 })
    );
    assert!(
        t0.elapsed() < Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    match probers.probe("dev-2", Duration::from_secs(5)).await {
        Err(ProbeError::Exception { code: 2, name, .. }) => {
            assert_eq!(name, "illegal data address")
        }
        other => panic!("{other:?}"),
    }
    // After the dropped link the next probe reconnects and reads.
    assert!(probers.probe("dev-3", Duration::from_secs(5)).await.is_ok());
    set(&shared, 1, Behaviour::Answer);
    set(&shared, 2, Behaviour::Answer);
    // Past the next poll (10 s after the first).
    tokio::time::sleep(Duration::from_secs(11)).await;
    for (_, m) in got.lock().unwrap().iter() {
        assert!(
            !matches!(m, BusMessage::DeviceStatus { online: false, .. }),
            "a probe failure counted against the device's health: {m:?}"
        );
    }
    let polls = polls_of(&got);
    // The schedule is untouched: each device polled again on time.
    for dev in ["dev-1", "dev-2", "dev-3"] {
        let at = &polls[dev];
        assert_eq!(at.len(), 2, "{dev}: {at:?}");
        let gap = at[1] - at[0];
        assert!(
            gap >= Duration::from_millis(9_990) && gap <= Duration::from_millis(10_010),
            "{dev}: next poll {gap:?} after the first"
        );
    }
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_caller_gave_up_is_skipped() {
    use super::probe::ProbeError;
    let shared = fake(&[(1, Behaviour::Answer)]);
    let (probers, _rx, token, h) = start_probed(
        &shared,
        LinkKind::Tcp,
        vec![device(1, 0, 60_000, 1_000, 3, 30)],
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    set(&shared, 1, Behaviour::Hang);
    let before = shared.lock().unwrap().requests.len();
    // Four probes queued at once; every caller gives up after 10 ms.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let p = probers.clone();
            tokio::spawn(async move { p.probe("dev-1", Duration::from_millis(10)).await })
        })
        .collect();
    for t in tasks {
        assert!(matches!(
            t.await.unwrap(),
            Err(ProbeError::Deadline { timeout_ms: 10 })
        ));
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Only the probe already on the bus ran; the abandoned ones never
    // reached the device (the next poll is 60 s away).
    let ran = shared.lock().unwrap().requests.len() - before;
    assert_eq!(ran, 1, "requests sent for abandoned probes");
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn probes_back_to_back_keep_the_heartbeat_fresh() {
    use crate::service::liveness::Liveness;
    let shared = fake(&[(1, Behaviour::Answer)]);
    let (tx, _rx) = mpsc::channel(256);
    let (ptx, prx) = mpsc::channel(super::probe::PROBE_QUEUE);
    let mut probers = super::probe::Probers::new();
    probers.insert("dev-1".into(), ptx);
    let liveness = Liveness::new(Duration::ZERO);
    let hb = liveness.register("modbus tcp:fake", Duration::from_secs(1));
    let token = CancellationToken::new();
    // Polled every 10 s, 1 s timeout: a poll or probe takes up to 3 s.
    let ep = Endpoint::new(
        FakeConnector(shared.clone()),
        LinkKind::Tcp,
        vec![device(1, 0, 10_000, 1_000, 3, 30)],
        tx,
    )
    .with_seed(7)
    .without_early_changes()
    .with_probes(prx)
    .with_heartbeat(hb);
    let h = tokio::spawn(ep.run(token.clone()));
    tokio::time::sleep(Duration::from_millis(9_500)).await;
    // The device stops answering; four probes queue up and run one after
    // the other (each times out after 1 s), with one poll between them.
    set(&shared, 1, Behaviour::Hang);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let p = probers.clone();
            tokio::spawn(async move { p.probe("dev-1", Duration::from_secs(30)).await })
        })
        .collect();
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(liveness.check(), vec![], "at {:?}", Instant::now());
    }
    for t in tasks {
        assert!(t.await.unwrap().is_err());
    }
    token.cancel();
    h.await.unwrap();
}

/// The next `Readings` or `Confirmed` (skipping status messages), as
/// (is a confirmation, sorted values).
async fn next_poll(rx: &mut mpsc::Receiver<BusMessage>) -> (bool, Vec<(PointIndex, Value)>) {
    loop {
        let m = rx.recv().await.expect("bus open");
        if let Some((_, mut v)) = values_of(&m) {
            v.sort_by_key(|(p, _)| *p);
            return (matches!(m, BusMessage::Confirmed { .. }), v);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_unchanged_poll_confirms_and_a_change_sends_readings() {
    let shared = fake(&[(1, Behaviour::Answer)]);
    let (mut rx, token, h) = start(&shared, LinkKind::Tcp, vec![device(1, 0, 1000, 100, 3, 30)]);
    let first = vec![
        (0, Value::Int(42)),
        (1, Value::Float(21.5)),
        (2, Value::Bool(true)),
    ];
    assert_eq!(next_poll(&mut rx).await, (false, first.clone()));
    assert_eq!(next_poll(&mut rx).await, (true, first.clone()));
    assert_eq!(next_poll(&mut rx).await, (true, first.clone()));
    // A register changes: readings of the points of its request (the
    // registers'), not of the unchanged coil; then confirmations of all.
    shared.lock().unwrap().holding[0] = 43;
    let mut second = first.clone();
    second[0].1 = Value::Int(43);
    assert_eq!(next_poll(&mut rx).await, (false, second[..2].to_vec()));
    assert_eq!(next_poll(&mut rx).await, (true, second.clone()));
    // A coil (the second request) changes: its point alone.
    shared.lock().unwrap().coils[0] = false;
    second[2].1 = Value::Bool(false);
    assert_eq!(next_poll(&mut rx).await, (false, second[2..].to_vec()));
    assert_eq!(next_poll(&mut rx).await, (true, second.clone()));
    // One request changing on every poll: every second poll carries the
    // other one's points too (none goes unconfirmed for long).
    for n in 0..3u16 {
        shared.lock().unwrap().holding[0] = 100 + 2 * n;
        second[0].1 = Value::Int(i64::from(100 + 2 * n));
        assert_eq!(next_poll(&mut rx).await, (false, second[..2].to_vec()));
        shared.lock().unwrap().holding[0] = 101 + 2 * n;
        second[0].1 = Value::Int(i64::from(101 + 2 * n));
        assert_eq!(next_poll(&mut rx).await, (false, second.clone()));
    }
    // Both change: both requests' points.
    shared.lock().unwrap().holding[0] = 44;
    shared.lock().unwrap().coils[0] = true;
    second[0].1 = Value::Int(44);
    second[2].1 = Value::Bool(true);
    assert_eq!(next_poll(&mut rx).await, (false, second.clone()));
    assert_eq!(next_poll(&mut rx).await, (true, second.clone()));
    // A register outside every point but inside the request (the gap)
    // changes: the reply differs, so readings (with the same values).
    let mut wide = device(4, 0, 1000, 100, 3, 30);
    let pts = [
        point(RegisterKind::Holding, 0, PointType::U16),
        point(RegisterKind::Holding, 5, PointType::U16),
    ];
    wide.plan = Arc::new(plan(&[(0, &pts[0]), (1, &pts[1])], LIMITS).unwrap());
    token.cancel();
    h.await.unwrap();
    set(&shared, 4, Behaviour::Answer);
    let (mut rx, token, h) = start(&shared, LinkKind::Tcp, vec![wide]);
    let values = vec![(0, Value::Int(44)), (1, Value::Int(0))];
    assert_eq!(next_poll(&mut rx).await, (false, values.clone()));
    assert_eq!(next_poll(&mut rx).await, (true, values.clone()));
    shared.lock().unwrap().holding[3] = 9;
    assert_eq!(next_poll(&mut rx).await, (false, values.clone()));
    assert_eq!(next_poll(&mut rx).await, (true, values));
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_read_refused_over_a_gap_is_split_and_the_device_stays_online() {
    let shared = fake(&[(1, Behaviour::Answer)]);
    {
        let mut s = shared.lock().unwrap();
        s.holes = vec![3];
        s.holding[8] = 9;
    }
    // Points at 0 and 8: one read of 0..9 (the gap is within 10), over
    // register 3, which the device does not have.
    let mut d = device(1, 0, 1000, 100, 1, 30);
    let pts = [
        point(RegisterKind::Holding, 0, PointType::U16),
        point(RegisterKind::Holding, 8, PointType::U16),
    ];
    d.plan = Arc::new(plan(&[(0, &pts[0]), (1, &pts[1])], LIMITS).unwrap());
    assert_eq!(d.plan.requests.len(), 1);
    let (mut rx, token, h) = start(&shared, LinkKind::Tcp, vec![d]);
    // The first poll reads both points (refused, split, read again at
    // once), and the device is never reported offline, even with
    // `offline_after = 1`.
    let values = vec![(0, Value::Int(42)), (1, Value::Int(9))];
    let m = rx.recv().await.expect("bus open");
    assert!(matches!(m, BusMessage::Readings { .. }), "{m:?}");
    assert_eq!(values_of(&m).unwrap().1, values);
    for _ in 0..3 {
        let m = rx.recv().await.expect("bus open");
        assert!(matches!(m, BusMessage::Confirmed { .. }), "{m:?}");
    }
    token.cancel();
    h.await.unwrap();
    // One refused read, then two reads a poll.
    let polls = 4;
    assert_eq!(shared.lock().unwrap().requests.len(), 1 + 2 * polls);
}

/// What changed in a poll's first reply goes out at once, before the
/// poll's later requests: a zone's alarm does not wait for a long read
/// after it (the registers' here). The rest of the poll comes in its own
/// message; a poll whose changes all went out early sends nothing more.
/// A device coming back online sends its status first, then its values.
#[tokio::test(start_paused = true)]
async fn a_change_goes_out_before_the_polls_later_requests() {
    let shared = fake(&[(1, Behaviour::Answer)]);
    shared.lock().unwrap().slow_holding = Duration::from_millis(300);
    let (tx, mut rx) = mpsc::channel(64);
    let token = CancellationToken::new();
    let devices = vec![device(1, 0, 1000, 1000, 2, 1)];
    let ep = Endpoint::new(FakeConnector(shared.clone()), LinkKind::Tcp, devices, tx).with_seed(7);
    let h = tokio::spawn(ep.run(token.clone()));
    let mut next = async || {
        let m = rx.recv().await.expect("bus open");
        (Instant::now(), m)
    };
    // The first poll: the coil (the first request) at once, then the
    // registers after their long read.
    let (coil_at, m) = next().await;
    assert_eq!(values_of(&m).unwrap().1, [(2, Value::Bool(true))]);
    let (regs_at, m) = next().await;
    assert_eq!(
        values_of(&m).unwrap().1,
        [(0, Value::Int(42)), (1, Value::Float(21.5))]
    );
    assert!(regs_at - coil_at >= Duration::from_millis(300));
    let (_, m) = next().await;
    assert!(matches!(m, BusMessage::Confirmed { .. }), "{m:?}");
    // The coil flips: it goes out before the registers are read, and
    // nothing else comes of that poll.
    shared.lock().unwrap().coils[0] = false;
    let (flip_at, m) = next().await;
    assert!(matches!(m, BusMessage::Readings { .. }), "{m:?}");
    assert_eq!(values_of(&m).unwrap().1, [(2, Value::Bool(false))]);
    let (at, m) = next().await;
    assert!(
        matches!(m, BusMessage::Confirmed { .. }),
        "the next poll's: {m:?}"
    );
    assert!(
        at - flip_at >= Duration::from_millis(900),
        "{:?}",
        at - flip_at
    );
    // Offline, then back: the status first, then all its values at once.
    set(&shared, 1, Behaviour::Exception(4));
    let (_, m) = next().await;
    assert!(
        matches!(m, BusMessage::DeviceStatus { online: false, .. }),
        "{m:?}"
    );
    set(&shared, 1, Behaviour::Answer);
    let (_, m) = next().await;
    assert!(
        matches!(m, BusMessage::DeviceStatus { online: true, .. }),
        "{m:?}"
    );
    let (_, m) = next().await;
    assert_eq!(values_of(&m).unwrap().1.len(), 3, "{m:?}");
    token.cancel();
    h.await.unwrap();
}

/// A read the device refuses (a point at an address it does not have,
/// with no gap to split at) makes that read's points bad, once, and the
/// device's other points are read as usual: the device stays online.
/// Points read again are readable again, once.
#[tokio::test(start_paused = true)]
async fn a_read_the_device_refuses_makes_its_points_bad_and_the_others_are_read() {
    let shared = fake(&[(1, Behaviour::Answer)]);
    shared.lock().unwrap().holes = vec![1];
    // Offline after one failed poll: a failed poll would show at once.
    let (mut rx, token, h) = start(&shared, LinkKind::Tcp, vec![device(1, 0, 1000, 100, 1, 30)]);
    let unreadable = |m: BusMessage| match m {
        BusMessage::Unreadable { points, reason, .. } => (points, reason),
        m => panic!("{m:?}"),
    };
    let (points, reason) = unreadable(rx.recv().await.unwrap());
    assert_eq!(points, [0, 1], "the registers' read's points");
    let reason = reason.unwrap();
    assert!(
        reason.contains("exception 2") && reason.contains("Holding 0 (3 long)"),
        "{reason}"
    );
    // The coil is read, poll after poll; the registers' points are in no
    // message (the confirmation has no value for them).
    let coil = vec![(2, Value::Bool(true))];
    assert_eq!(next_poll(&mut rx).await, (false, coil.clone()));
    assert_eq!(next_poll(&mut rx).await, (true, coil.clone()));
    shared.lock().unwrap().coils[0] = false;
    let coil = vec![(2, Value::Bool(false))];
    let m = rx.recv().await.unwrap();
    assert_eq!(values_of(&m).map(|(_, v)| v), Some(coil.clone()), "{m:?}");
    assert_eq!(next_poll(&mut rx).await, (true, coil.clone()));
    // The device reads them again: they are readable, and read.
    shared.lock().unwrap().holes.clear();
    let (points, reason) = unreadable(rx.recv().await.unwrap());
    assert_eq!((points, reason), (vec![], None));
    assert_eq!(
        next_poll(&mut rx).await,
        (false, vec![(0, Value::Int(42)), (1, Value::Float(21.5))])
    );
    let all = vec![
        (0, Value::Int(42)),
        (1, Value::Float(21.5)),
        (2, Value::Bool(false)),
    ];
    assert_eq!(next_poll(&mut rx).await, (true, all));
    // A device that refuses every read answers nothing of use: it fails
    // its polls, and goes offline.
    set(&shared, 1, Behaviour::Exception(2));
    let m = rx.recv().await.unwrap();
    match &m {
        BusMessage::DeviceStatus {
            online: false,
            reason: Some(reason),
            ..
        } => assert!(reason.contains("refuses every read"), "{reason}"),
        m => panic!("{m:?}"),
    }
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_connection_the_device_closed_while_idle_is_reopened_within_the_poll() {
    let shared = fake(&[(1, Behaviour::Answer)]);
    // Offline after one failed poll: a failed poll would show at once.
    let (mut rx, token, h) = start(&shared, LinkKind::Tcp, vec![device(1, 0, 1000, 100, 1, 30)]);
    assert!(!next_poll(&mut rx).await.0);
    assert!(next_poll(&mut rx).await.0);
    assert_eq!(shared.lock().unwrap().connects, 1);
    // The device closes the connection between two polls.
    shared.lock().unwrap().closed_upto = 1;
    // The next message is the poll's readings (a new link: nothing kept),
    // not the device going offline.
    let m = rx.recv().await.expect("bus open");
    assert!(matches!(m, BusMessage::Readings { .. }), "{m:?}");
    assert_eq!(shared.lock().unwrap().connects, 2);
    assert!(next_poll(&mut rx).await.0);
    // A device that closes every connection at once still fails the poll
    // (one new connection per poll, not a loop).
    shared.lock().unwrap().closed_upto = u32::MAX;
    let m = rx.recv().await.expect("bus open");
    assert!(
        matches!(m, BusMessage::DeviceStatus { online: false, .. }),
        "{m:?}"
    );
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn what_a_poll_read_before_a_request_failed_still_goes_out() {
    let shared = fake(&[(1, Behaviour::Answer)]);
    let (mut rx, token, h) = start(&shared, LinkKind::Tcp, vec![device(1, 0, 1000, 100, 3, 30)]);
    assert!(!next_poll(&mut rx).await.0);
    assert!(next_poll(&mut rx).await.0);
    // The registers' read (after the coil's) fails from now on (the
    // device is unwell), and the coil flips: its new value still comes
    // with this poll.
    {
        let mut s = shared.lock().unwrap();
        s.failing = vec![0];
        s.coils[0] = false;
    }
    let m = rx.recv().await.expect("bus open");
    assert_eq!(
        values_of(&m).map(|(_, v)| v),
        Some(vec![(2, Value::Bool(false))]),
        "{m:?}"
    );
    // The next failed poll: the coil's value again (nothing is kept after
    // a failure); the third failure takes the device offline, values or not.
    shared.lock().unwrap().coils[0] = true;
    let m = rx.recv().await.expect("bus open");
    assert_eq!(
        values_of(&m).map(|(_, v)| v),
        Some(vec![(2, Value::Bool(true))]),
        "{m:?}"
    );
    shared.lock().unwrap().coils[0] = false;
    let m = rx.recv().await.expect("bus open");
    assert!(
        matches!(m, BusMessage::DeviceStatus { online: false, .. }),
        "{m:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "no readings of an offline device"
    );
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failed_poll_and_offline_and_online_send_readings_again() {
    let shared = fake(&[(1, Behaviour::Answer)]);
    let (mut rx, token, h) = start(&shared, LinkKind::Tcp, vec![device(1, 0, 1000, 100, 2, 30)]);
    assert!(!next_poll(&mut rx).await.0);
    assert!(next_poll(&mut rx).await.0);
    // One failed poll (a timeout: the link is dropped), not yet offline.
    set(&shared, 1, Behaviour::Hang);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    set(&shared, 1, Behaviour::Answer);
    assert!(!next_poll(&mut rx).await.0, "readings after a failed poll");
    assert!(next_poll(&mut rx).await.0);
    // An exception keeps the link; two take the device offline.
    set(&shared, 1, Behaviour::Exception(4));
    match rx.recv().await.unwrap() {
        BusMessage::DeviceStatus { online: false, .. } => {}
        m => panic!("{m:?}"),
    }
    set(&shared, 1, Behaviour::Answer);
    match rx.recv().await.unwrap() {
        BusMessage::DeviceStatus { online: true, .. } => {}
        m => panic!("{m:?}"),
    }
    assert!(
        matches!(rx.recv().await.unwrap(), BusMessage::Readings { .. }),
        "readings when back online"
    );
    assert!(next_poll(&mut rx).await.0);
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_reopened_link_sends_readings_again() {
    use super::probe::ProbeError;
    let shared = fake(&[(1, Behaviour::Answer)]);
    let (probers, mut rx, token, h) =
        start_probed(&shared, LinkKind::Tcp, vec![device(1, 0, 2000, 100, 3, 30)]);
    assert!(!next_poll(&mut rx).await.0);
    assert!(next_poll(&mut rx).await.0);
    // A probe times out between two polls: the link is dropped, the
    // device's health is not touched.
    set(&shared, 1, Behaviour::Hang);
    assert_eq!(
        probers.probe("dev-1", Duration::from_secs(5)).await,
        Err(ProbeError::Timeout { timeout_ms: 100 })
    );
    set(&shared, 1, Behaviour::Answer);
    assert!(!next_poll(&mut rx).await.0, "readings on a new link");
    assert!(next_poll(&mut rx).await.0);
    // A probe that succeeds changes nothing.
    assert!(probers.probe("dev-1", Duration::from_secs(5)).await.is_ok());
    assert!(next_poll(&mut rx).await.0);
    assert_eq!(shared.lock().unwrap().connects, 2);
    token.cancel();
    h.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_write_sends_readings_again_even_if_nothing_changed() {
    use crate::drivers::write::WriteError;
    let shared = fake(&[(1, Behaviour::Answer)]);
    let (mut rx, writers, token, h) = start_writable(&shared, LinkKind::Tcp);
    assert!(!next_poll(&mut rx).await.0);
    assert!(next_poll(&mut rx).await.0);
    // The coil is on already: the device reads the same after the write.
    writers
        .write("dev-1", 2, Value::Bool(true), None, W)
        .await
        .unwrap();
    let (confirmed, v) = next_poll(&mut rx).await;
    assert!(!confirmed, "readings after a write");
    assert!(v.contains(&(2, Value::Bool(true))));
    assert!(next_poll(&mut rx).await.0);
    // A failed write too (it may have reached the device).
    set(&shared, 1, Behaviour::Exception(3));
    assert!(matches!(
        writers.write("dev-1", 2, Value::Bool(true), None, W).await,
        Err(WriteError::Refused(_))
    ));
    set(&shared, 1, Behaviour::Answer);
    assert!(!next_poll(&mut rx).await.0, "readings after a failed write");
    token.cancel();
    h.await.unwrap();
}

/// A serial endpoint with the real RTU framing on an in-memory line whose
/// slave 1 answers after its timeout.
mod late_rtu_reply {
    use super::*;
    use crate::drivers::modbus::rtu::{crc16, DuplexLine, Quiet, RtuLink};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    /// Opens a new port on the line each time (a reopened serial port).
    struct LineConnector {
        ports: mpsc::UnboundedSender<DuplexStream>,
        quiet: Quiet,
    }

    impl Connector for LineConnector {
        type Link = RtuLink<DuplexLine>;
        async fn connect(&mut self) -> Result<Self::Link, ModbusError> {
            let (a, b) = tokio::io::duplex(1024);
            self.ports.send(b).expect("line running");
            // 19200 baud, 11 bits a character.
            let char_time = Duration::from_micros(573);
            Ok(RtuLink::new(DuplexLine(a), char_time, self.quiet.clone()))
        }
        fn name(&self) -> &str {
            "line"
        }
        fn quiet_until(&self) -> Option<Instant> {
            self.quiet.until()
        }
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = body.to_vec();
        f.extend_from_slice(&crc16(body).to_le_bytes());
        f
    }

    /// Slaves 1 and 2 on one line: slave 1 answers `late` after a request,
    /// slave 2 after 60 ms. Holding registers of slave `u` read `u` × 111,
    /// coils read on. A reply goes out on the port open when it is sent
    /// (a reopened port is the same wire), or nowhere.
    async fn line(mut ports: mpsc::UnboundedReceiver<DuplexStream>, late: Duration) {
        enum Event {
            Port(Option<DuplexStream>),
            Read(usize),
            Due,
        }
        let mut port: Option<DuplexStream> = None;
        let mut input = Vec::new();
        let mut replies: Vec<(Instant, Vec<u8>)> = Vec::new();
        let mut chunk = [0u8; 64];
        loop {
            let due = replies.first().map(|r| r.0);
            let event = tokio::select! {
                p = ports.recv() => Event::Port(p),
                n = async {
                    match port.as_mut() {
                        Some(p) => p.read(&mut chunk).await.unwrap_or(0),
                        None => std::future::pending().await,
                    }
                } => Event::Read(n),
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => Event::Due,
            };
            match event {
                Event::Port(None) => return,
                Event::Port(Some(p)) => {
                    port = Some(p);
                    input.clear();
                }
                Event::Read(0) => port = None,
                Event::Read(n) => {
                    input.extend_from_slice(&chunk[..n]);
                    while input.len() >= 8 {
                        let req: Vec<u8> = input.drain(..8).collect();
                        let (unit, fc) = (req[0], req[1]);
                        let cnt = u16::from_be_bytes([req[4], req[5]]) as usize;
                        let mut body = vec![unit, fc];
                        if fc == 3 {
                            body.push((cnt * 2) as u8);
                            for _ in 0..cnt {
                                body.extend_from_slice(&(unit as u16 * 111).to_be_bytes());
                            }
                        } else {
                            body.push(cnt.div_ceil(8) as u8);
                            body.extend((0..cnt.div_ceil(8)).map(|_| 0xFF));
                        }
                        let after = if unit == 1 {
                            late
                        } else {
                            Duration::from_millis(60)
                        };
                        replies.push((Instant::now() + after, frame(&body)));
                        replies.sort_by_key(|r| r.0);
                    }
                }
                Event::Due => {
                    let (_, reply) = replies.remove(0);
                    if let Some(p) = port.as_mut() {
                        let _ = p.write_all(&reply).await;
                    }
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_reply_is_not_taken_for_the_next_request() {
        let (ports, rx_ports) = mpsc::unbounded_channel();
        // Slave 1 answers 30 ms after its 150 ms timeout, every time; slave
        // 2 is slow enough (60 ms) that the late reply comes first if slave
        // 2 is asked at once.
        let wire = tokio::spawn(line(rx_ports, Duration::from_millis(180)));
        let connector = LineConnector {
            ports,
            quiet: Quiet::default(),
        };
        // Both polled every 250 ms, slave 2 right after slave 1.
        let devices = vec![device(1, 0, 250, 150, 2, 2), device(2, 3, 250, 150, 2, 2)];
        let kind = LinkKind::Serial {
            inter_frame: Duration::from_millis(2),
        };
        let (tx, mut rx) = mpsc::channel(64);
        let token = CancellationToken::new();
        let ep = Endpoint::new(connector, kind, devices, tx)
            .with_seed(7)
            .without_early_changes();
        let h = tokio::spawn(ep.run(token.clone()));
        let t0 = Instant::now();
        let mut polls_2 = 0;
        let mut offline = Vec::new();
        while Instant::now() - t0 < Duration::from_secs(10) {
            let m = rx.recv().await.unwrap();
            if let BusMessage::DeviceStatus { device, online, .. } = &m {
                offline.push((device.to_string(), *online));
                continue;
            }
            let (device, values) = values_of(&m).unwrap();
            assert_eq!(&*device, "dev-2", "slave 1 never answers in time");
            if let Some(v) = values.iter().find(|(p, _)| *p == 3) {
                assert_eq!(v.1, Value::Int(222));
            }
            polls_2 += 1;
        }
        token.cancel();
        h.await.unwrap();
        wire.abort();
        assert_eq!(offline, vec![("dev-1".to_string(), false)]);
        // 10 s at 250 ms: 40 polls if never delayed; each of slave 1's
        // timeouts (backed off once offline) delays one by up to 0.25 s.
        assert!(polls_2 >= 30, "slave 2 polled {polls_2} times");
    }
}

#[test]
fn polls_of_many_devices_start_in_rounds_of_at_most_20() {
    use super::round_offset;
    let second = Duration::from_secs(1);
    // Up to 20 devices: every poll starts at once.
    for n in [1, 2, 20] {
        assert!((0..n).all(|k| round_offset(k, n, second).is_zero()), "{n}");
    }
    // 40 devices: two rounds, half a second apart, 20 devices each, taking
    // turns in configuration order.
    let offsets: Vec<Duration> = (0..40).map(|k| round_offset(k, 40, second)).collect();
    assert_eq!(
        offsets[..4],
        [Duration::ZERO, second / 2, Duration::ZERO, second / 2]
    );
    assert_eq!(offsets.iter().filter(|o| o.is_zero()).count(), 20);
    // 21, 50 and 200 devices: no round holds more than 20, every offset is
    // within the device's own interval.
    for (n, rounds) in [(21, 2), (50, 3), (200, 10)] {
        let interval = Duration::from_millis(800);
        let mut per_round: HashMap<Duration, usize> = HashMap::new();
        for k in 0..n {
            let o = round_offset(k, n, interval);
            assert!(o < interval, "{n}: {o:?}");
            *per_round.entry(o).or_default() += 1;
        }
        assert_eq!(per_round.len(), rounds, "{n}");
        assert!(per_round.values().all(|&c| c <= 20), "{n}: {per_round:?}");
    }
}

/// A configuration of `n` Modbus TCP devices, each alone on its port
/// (from 5020), each with one coil, polled every `interval_s`; an MQTT
/// device between the first two, which takes no round.
fn many_devices(n: usize, interval_s: f64) -> crate::config::LoadedConfig {
    let mut text = String::from(
        "[site]\nid = \"s\"\ngateway = \"gw\"\n[uplink]\nhost = \"127.0.0.1\"\n\
         [site_broker]\nhost = \"127.0.0.1\"\n",
    );
    for k in 0..n {
        text += &format!(
            "[[devices]]\nid = \"d{k}\"\npoll_interval_s = {interval_s}\n\
             [devices.modbus]\nhost = \"127.0.0.1\"\nport = {}\n\
             [[devices.points]]\nid = \"c\"\nregister = \"coil\"\naddress = 0\n",
            5020 + k
        );
        if k == 0 {
            text += "[[devices]]\nid = \"m\"\n[devices.mqtt]\nsilence_timeout_s = 60\n\
                     [[devices.points]]\nid = \"p\"\n[devices.points.mqtt]\ntopic = \"site/m\"\n";
        }
    }
    crate::config::load_str(&text, std::path::Path::new("gw.toml")).expect("config")
}

#[test]
fn the_configurations_devices_are_polled_in_rounds_and_a_link_restarted_alone_keeps_its_round() {
    use super::{pollers, Link};
    let start = Instant::now();
    let first_polls = |cfg: &crate::config::LoadedConfig, only: &dyn Fn(Link<'_>) -> bool| {
        let p = pollers(cfg, None, only, start);
        assert!(p.rtu.is_empty());
        p.tcp
            .into_iter()
            .flat_map(|((_, port), devices)| devices.into_iter().map(move |d| (port, d.next_poll)))
            .collect::<Vec<_>>()
    };
    // 20 devices: one round, at once.
    let cfg = many_devices(20, 1.0);
    let polls = first_polls(&cfg, &|_| true);
    assert_eq!(polls.len(), 20);
    assert!(polls.iter().all(|(_, at)| *at == start), "{polls:?}");
    // 21 devices polled every 2 s: two rounds, 1 s apart, in turns.
    let cfg = many_devices(21, 2.0);
    let polls = first_polls(&cfg, &|_| true);
    assert_eq!(polls.len(), 21);
    for (port, at) in &polls {
        let k = usize::from(*port - 5020);
        let late = if k % 2 == 0 { 0 } else { 1 };
        assert_eq!(*at, start + Duration::from_secs(late), "device {k}");
    }
    // The second device's link restarted alone (a reload): still late.
    let only_d1 = |l: Link<'_>| {
        l == Link::Tcp {
            host: "127.0.0.1",
            port: 5021,
        }
    };
    let polls = first_polls(&cfg, &only_d1);
    assert_eq!(polls, vec![(5021, start + Duration::from_secs(1))]);
}
