//! The endpoint task: one per TCP `host:port` and one per RS-485 bus.
//!
//! All devices (unit ids) behind one endpoint share one link and are polled
//! strictly one request at a time, each on its own interval. The task never
//! dies: errors become offline events and log lines; only shutdown (or the
//! bus closing, which means the gateway is stopping) ends it.
//!
//! Failure handling:
//! - Every request is wrapped in the device's timeout. A timeout, an I/O
//!   error or a malformed reply drops the link (a late reply would be taken
//!   for the next request's); the next poll opens a new one.
//! - A link that cannot be opened is retried with exponential backoff and
//!   jitter up to `backoff_max`; polls due meanwhile fail at once, without
//!   I/O, so a device still goes offline after `offline_after` polls.
//! - A read the device refuses with exception 1–3 (a function or an address
//!   it does not have) is kept as that read's reply: its points are bad
//!   ([`BusMessage::Unreadable`], sent when they change) and the poll goes
//!   on, so one point configured wrongly does not take the device offline.
//!   Other exceptions fail the poll, as does a device refusing every read.
//! - A device that is offline for its own reasons (timeouts, exceptions) is
//!   skipped for a growing interval, so a dead slave on a bus does not eat
//!   the bus time of the live ones.
//! - On a serial bus the task keeps the inter-frame silence between requests
//!   (tokio-modbus does not).
//!
//! Writes ([`WriteRequest`]s from commands and linkage rules) arrive on the
//! endpoint's queue and run between two polls, in arrival order, under the
//! device's timeout and the same link rules as reads. Coils are written with
//! function 5, 16-bit registers with 6, 32-bit values with 16, a `bool` on a
//! register bit by read-modify-write (3 then 6). A pulse writes the value,
//! replies, and writes the opposite once the hold time is over (retried if
//! that fails). After a write the device is polled at once, so the new value
//! reaches the alarm engine and telemetry without waiting a poll interval.
//!
//! "Read now" probes ([`ProbeRequest`]s from the web page) arrive on a
//! second queue and run the device's read plan once over the same link,
//! taking turns with polls: a waiting probe runs when no poll is due, or
//! once at least one poll ran since the previous probe. A probe changes
//! neither the device's health nor its schedule.
//!
//! Changes go out early: when a poll's request other than its last
//! replies with changed values (a zone's input), they go on the bus at
//! once, before the poll's later requests (a long read after it takes
//! 0.2 s on an RS-485 line at 9,600 baud); the rest of the poll follows in
//! its own message. Not for a device that is offline (its status goes
//! first), nor when the bus is full (they wait for the poll's message).
//!
//! Unchanged replies: the endpoint keeps, per device, the raw words and
//! bits of every request's last reply that went to the bus
//! ([`LastReplies`], about 2 bytes a register and 1 bit a coil). A poll
//! whose replies are all bit-identical to those is not decoded: it becomes
//! a [`BusMessage::Confirmed`] of the same points, sharing the kept
//! replies, so a consumer that needs a value decodes just that one. When
//! only some replies changed (a coil flipped, the registers did not), only
//! those are decoded: the `Readings` carry the points of the changed
//! requests, whose consumers hold the others' values already; in the
//! second such poll in a row every request is decoded, so no point goes
//! unconfirmed for long beside a request that changes on every poll. The
//! kept replies are dropped whenever the bus may hold other values for the
//! device than they say: a poll fails (a `DeviceStatus` may follow), the
//! device is offline, the link is reopened, or a write to the device is
//! attempted; a new read plan means a new endpoint. The first poll after
//! that sends `Readings` again.

use super::decode::{encode_u16, raw_u16, Codec};
use super::health::{backoff, Health};
use super::plan::{ReadPlan, ReadRequest};
use super::probe::{decode_raw, ProbeError, ProbeReport, ProbeRequest, RawReply};
use super::transport::{Connector, ModbusError, Transport};
use crate::drivers::write::{WriteError, WriteRequest};
use crate::drivers::{PointType, RegisterKind};
use crate::event::Timestamp;
use crate::point::{BusMessage, Confirmation, PointIndex, Reading, Value};
use crate::service::liveness::Heartbeat;
use crate::status::PollCounters;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument as _};

/// How many times the release of a pulse is tried before giving up.
const RELEASE_ATTEMPTS: u32 = 5;
/// How long a stopping endpoint tries to write its pending pulse releases.
const STOP_RELEASE_DEADLINE: Duration = Duration::from_secs(2);

/// Where a writable point lives on its device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WriteTarget {
    pub table: RegisterKind,
    pub address: u16,
    pub codec: Codec,
}

/// The frames one write needs.
#[derive(Clone, Debug, PartialEq)]
enum WriteOp {
    Coil(bool),
    Register(u16),
    Registers(Vec<u16>),
    /// Read-modify-write of one bit of a holding register.
    Bit {
        bit: u8,
        on: bool,
        codec: Codec,
    },
}

impl WriteTarget {
    /// The frames that write `value` (pure; refuses what does not fit).
    fn op(&self, value: Value) -> Result<WriteOp, WriteError> {
        let bad = |m: String| WriteError::BadValue(m);
        match (self.table, self.codec.kind, value) {
            (RegisterKind::Coil, _, Value::Bool(b)) => Ok(WriteOp::Coil(b)),
            (RegisterKind::Coil, _, v) => Err(bad(format!("{v:?} for a coil (needs true/false)"))),
            (RegisterKind::Holding, PointType::Bool, Value::Bool(on)) => Ok(WriteOp::Bit {
                bit: self.codec.bit,
                on,
                codec: self.codec,
            }),
            (RegisterKind::Holding, PointType::Bool, v) => {
                Err(bad(format!("{v:?} for a bool point (needs true/false)")))
            }
            (RegisterKind::Holding, _, v) => {
                let (regs, n) = self
                    .codec
                    .encode_registers(v)
                    .map_err(|e| bad(e.to_string()))?;
                Ok(if n == 1 {
                    WriteOp::Register(regs[0])
                } else {
                    WriteOp::Registers(regs[..n].to_vec())
                })
            }
            (t, _, _) => Err(bad(format!("{t:?} is read-only"))),
        }
    }
}

/// A pulse's second half, due at `at`.
#[derive(Debug)]
struct Release {
    at: Instant,
    device: usize,
    point: PointIndex,
    value: bool,
    attempts: u32,
}

/// What kind of line the endpoint is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LinkKind {
    /// Modbus TCP: requests may follow each other at once.
    Tcp,
    /// Modbus RTU: keep `inter_frame` of silence between frames.
    Serial { inter_frame: Duration },
}

/// One device polled by an endpoint task.
#[derive(Debug)]
pub struct DevicePoller {
    pub id: Arc<str>,
    pub unit: u8,
    pub interval: Duration,
    pub timeout: Duration,
    pub backoff_max: Duration,
    /// The device's read plan (shared with its [`LastReplies`]).
    pub plan: Arc<ReadPlan>,
    pub health: Health,
    pub next_poll: Instant,
    /// `modbus_device{device=… unit=…}`, a child of the endpoint's span
    /// (set by [`Endpoint::new`]).
    pub span: tracing::Span,
    /// Poll counters for `/metrics` (none in tests that do not look).
    pub counters: Option<Arc<PollCounters>>,
    /// The device's writable points (empty: the device takes no writes).
    pub writable: HashMap<PointIndex, WriteTarget>,
    /// The replies behind the last values sent to the bus (`None`: the
    /// next successful poll sends `Readings`).
    last: Option<Arc<LastReplies>>,
    /// Whether the last poll's `Readings` left out unchanged requests.
    left_out: bool,
    /// The points the device refuses to read, as last sent to the bus
    /// ([`BusMessage::Unreadable`]).
    unreadable: Vec<PointIndex>,
}

impl DevicePoller {
    /// A device first polled at `start`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: &str,
        unit: u8,
        interval: Duration,
        timeout: Duration,
        offline_after: u32,
        backoff_max: Duration,
        plan: ReadPlan,
        start: Instant,
    ) -> DevicePoller {
        DevicePoller {
            id: id.into(),
            unit,
            interval: interval.max(Duration::from_millis(10)),
            timeout: timeout.max(Duration::from_millis(1)),
            backoff_max,
            plan: Arc::new(plan),
            health: Health::new(offline_after),
            next_poll: start,
            span: tracing::Span::none(),
            counters: None,
            writable: HashMap::new(),
            last: None,
            left_out: false,
            unreadable: Vec::new(),
        }
    }

    /// Forget the last replies: the next successful poll sends `Readings`.
    fn forget_replies(&mut self) {
        self.last = None;
    }

    /// Accept writes to these points.
    pub fn with_writable(mut self, writable: HashMap<PointIndex, WriteTarget>) -> DevicePoller {
        self.writable = writable;
        self
    }
}

/// A reply's data.
enum Reply {
    Bits(Vec<bool>),
    Words(Vec<u16>),
    /// The device refused the read with this Modbus exception (1–3: a
    /// function or an address it does not have); its points are bad.
    Refused(u8),
}

/// Does an exception refuse the read itself (its function, its
/// addresses), rather than say the device is unwell (4: device failure,
/// 6: busy, 0x0A/0x0B: a gateway's target does not answer)?
fn refuses_read(e: &ModbusError) -> Option<u8> {
    match *e {
        ModbusError::Exception { code, .. } if (1..=3).contains(&code) => Some(code),
        _ => None,
    }
}

/// One request's reply as kept between polls: compact, compared exactly
/// (length included).
#[derive(Debug, PartialEq)]
enum Raw {
    Words(Box<[u16]>),
    /// `len` bits, packed 16 to a word, lowest bit first.
    Bits {
        len: u32,
        packed: Box<[u16]>,
    },
    /// Refused with this exception code.
    Refused(u8),
}

impl Raw {
    fn of(reply: &Reply) -> Raw {
        match reply {
            Reply::Words(w) => Raw::Words(w.as_slice().into()),
            Reply::Bits(b) => {
                let mut packed = vec![0u16; b.len().div_ceil(16)];
                for (k, _) in b.iter().enumerate().filter(|(_, on)| **on) {
                    packed[k / 16] |= 1 << (k % 16);
                }
                Raw::Bits {
                    len: b.len() as u32,
                    packed: packed.into(),
                }
            }
            Reply::Refused(code) => Raw::Refused(*code),
        }
    }

    /// Is `reply` bit-identical to this one?
    fn same_as(&self, reply: &Reply) -> bool {
        match (self, reply) {
            (Raw::Words(a), Reply::Words(b)) => **a == **b,
            (Raw::Bits { len, packed }, Reply::Bits(b)) => {
                *len as usize == b.len()
                    && b.iter()
                        .enumerate()
                        .all(|(k, on)| (packed[k / 16] >> (k % 16)) & 1 == *on as u16)
            }
            (Raw::Refused(a), Reply::Refused(b)) => a == b,
            _ => false,
        }
    }

    fn bit(&self, k: usize) -> Option<bool> {
        match self {
            Raw::Bits { len, packed } if k < *len as usize => {
                Some((packed[k / 16] >> (k % 16)) & 1 == 1)
            }
            _ => None,
        }
    }
}

/// A device's replies behind the values last sent to the bus, one per
/// request of its plan; the [`Confirmation`] of an unchanged poll.
#[derive(Debug)]
pub struct LastReplies {
    plan: Arc<ReadPlan>,
    replies: Vec<Raw>,
}

impl Confirmation for LastReplies {
    fn count(&self) -> usize {
        self.plan.slots.len()
    }

    fn point(&self, i: usize) -> Option<PointIndex> {
        self.plan.slots.get(i).map(|s| s.point)
    }

    fn index_of(&self, point: PointIndex) -> Option<usize> {
        self.plan.slots.iter().position(|s| s.point == point)
    }

    /// Decoded as a poll decodes it (`decode_into`; the kept replies
    /// decoded without error then).
    fn value(&self, i: usize) -> Option<Value> {
        let s = self.plan.slots.get(i)?;
        let k = self.plan.requests.partition_point(|r| r.slots.end <= i);
        self.plan.requests.get(k).filter(|r| r.slots.contains(&i))?;
        let at = s.offset as usize;
        match self.replies.get(k)? {
            raw @ Raw::Bits { .. } => raw.bit(at).map(|b| s.codec.decode_bit(b)),
            Raw::Words(words) => s.codec.decode_registers(words.get(at..)?).ok(),
            Raw::Refused(_) => None,
        }
    }
}

/// What a successful poll of a device produced.
enum Polled {
    /// The points of every request whose reply differs from the kept one
    /// (all points when nothing was kept, or in a second poll in a row
    /// where only some differ).
    Changed(Vec<Reading>),
    /// Every reply is bit-identical to the kept ones.
    Same(Arc<LastReplies>),
}

async fn read_one<T: Transport>(
    link: &mut T,
    unit: u8,
    r: &ReadRequest,
) -> Result<Reply, ModbusError> {
    Ok(match r.table {
        RegisterKind::Coil => Reply::Bits(link.read_coils(unit, r.start, r.count).await?),
        RegisterKind::DiscreteInput => {
            Reply::Bits(link.read_discrete_inputs(unit, r.start, r.count).await?)
        }
        RegisterKind::Holding => Reply::Words(link.read_holding(unit, r.start, r.count).await?),
        RegisterKind::Input => Reply::Words(link.read_input(unit, r.start, r.count).await?),
    })
}

/// Append the values of request `r`'s points from `reply` to `out`
/// (none from a refused read).
fn decode_into(
    plan: &ReadPlan,
    r: &ReadRequest,
    reply: &Reply,
    out: &mut Vec<Reading>,
) -> Result<(), ModbusError> {
    for s in plan.slots_of(r) {
        let at = s.offset as usize;
        let value = match reply {
            Reply::Bits(bits) => match bits.get(at) {
                Some(&b) => s.codec.decode_bit(b),
                None => return Err(ModbusError::Protocol("reply too short".into())),
            },
            Reply::Words(words) => s
                .codec
                .decode_registers(words.get(at..).unwrap_or(&[]))
                .map_err(|e| ModbusError::Protocol(e.to_string()))?,
            Reply::Refused(_) => return Ok(()),
        };
        out.push(Reading {
            point: s.point,
            value,
        });
    }
    Ok(())
}

/// One endpoint's task state.
pub struct Endpoint<C: Connector> {
    connector: C,
    link: Option<C::Link>,
    kind: LinkKind,
    devices: Vec<DevicePoller>,
    /// No connect attempt before this.
    reconnect_at: Instant,
    reconnect_attempt: u32,
    /// Why the link is down, for the failures of polls while it is.
    link_error: Option<String>,
    /// When the last frame on a serial line ended.
    last_frame: Option<Instant>,
    /// The readings of a poll's requests answered before one failed, and
    /// when the last of them came (see `settle`).
    partial: Option<(Vec<Reading>, std::time::Instant)>,
    /// A change of the points a device refuses to read, found by the
    /// poll that `settle` handles next.
    unreadable_change: Option<BusMessage>,
    /// Changes go out before a poll's later requests (`send_early`).
    early_changes: bool,
    reconnect_base: Duration,
    reconnect_max: Duration,
    bus: mpsc::Sender<BusMessage>,
    rng: fastrand::Rng,
    heartbeat: Option<Heartbeat>,
    /// Writes from commands and linkage (`None`: none, or every sender gone).
    writes: Option<mpsc::Receiver<WriteRequest>>,
    /// Pulses waiting for their second write.
    releases: Vec<Release>,
    /// "Read now" probes from the web page (`None`: none, or every sender gone).
    probes: Option<mpsc::Receiver<ProbeRequest>>,
    /// A poll ran since the last probe (probes and polls take turns).
    polled_since_probe: bool,
    /// `modbus_endpoint{endpoint=…}`: the parent of the devices' spans.
    /// Entered for the endpoint's own log lines only, not across awaits:
    /// entering a span costs a subscriber round trip on every wake-up.
    span: tracing::Span,
}

impl<C: Connector> Endpoint<C> {
    pub fn new(
        connector: C,
        kind: LinkKind,
        mut devices: Vec<DevicePoller>,
        bus: mpsc::Sender<BusMessage>,
    ) -> Endpoint<C> {
        // Reconnects start at the fastest device's interval and back off to
        // the smallest backoff_max of the endpoint's devices.
        let reconnect_base = devices
            .iter()
            .map(|d| d.interval)
            .min()
            .unwrap_or(Duration::from_secs(1));
        let reconnect_max = devices
            .iter()
            .map(|d| d.backoff_max)
            .min()
            .unwrap_or(Duration::from_secs(30))
            .max(reconnect_base);
        let span = tracing::info_span!("modbus_endpoint", endpoint = %connector.name());
        for d in &mut devices {
            d.span =
                tracing::info_span!(parent: &span, "modbus_device", device = %d.id, unit = d.unit);
        }
        Endpoint {
            span,
            connector,
            link: None,
            kind,
            devices,
            reconnect_at: Instant::now(),
            reconnect_attempt: 0,
            link_error: None,
            last_frame: None,
            partial: None,
            unreadable_change: None,
            early_changes: true,
            reconnect_base,
            reconnect_max,
            bus,
            rng: fastrand::Rng::new(),
            heartbeat: None,
            writes: None,
            releases: Vec::new(),
            probes: None,
            polled_since_probe: true,
        }
    }

    /// Serve "read now" probes from this queue between polls.
    pub fn with_probes(mut self, probes: mpsc::Receiver<ProbeRequest>) -> Self {
        self.probes = Some(probes);
        self
    }

    /// Serve writes from this queue between polls.
    pub fn with_writes(mut self, writes: mpsc::Receiver<WriteRequest>) -> Self {
        self.writes = Some(writes);
        self
    }

    /// Seed the jitter (tests).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = fastrand::Rng::with_seed(seed);
        self
    }

    /// One message per poll, changes of early requests included (tests
    /// that count messages per poll; a gateway always sends them early:
    /// `send_early`).
    #[cfg(test)]
    pub fn without_early_changes(mut self) -> Self {
        self.early_changes = false;
        self
    }

    /// Beat `hb` once per loop iteration (liveness for the watchdog).
    pub fn with_heartbeat(mut self, hb: Heartbeat) -> Self {
        self.heartbeat = Some(hb);
        self
    }

    /// Longest a poll of device `i` may take when nothing hangs: a connect
    /// and every request each up to the timeout, plus the serial silences.
    fn poll_budget(&self, i: usize) -> Duration {
        let d = &self.devices[i];
        let requests = d.plan.requests.len() as u32;
        let silence = match self.kind {
            LinkKind::Serial { inter_frame } => inter_frame * requests,
            LinkKind::Tcp => Duration::ZERO,
        };
        d.timeout * (requests + 1) + silence
    }

    /// Poll until `shutdown` (or until the bus closes).
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.span
            .in_scope(|| debug!(devices = self.devices.len(), "endpoint task started"));
        {
            let sleep = tokio::time::sleep_until(Instant::now());
            tokio::pin!(sleep);
            // One shutdown future for the task's life: polled in every
            // select below, registered with the token once (a new one per
            // select would register and unregister on each poll).
            let cancelled = shutdown.cancelled();
            tokio::pin!(cancelled);
            loop {
                // Writes go first: between two polls, in arrival order.
                if let Some(req) = self.try_next_write() {
                    tokio::select! {
                        biased;
                        _ = &mut cancelled => break,
                        _ = self.write(req) => {}
                    }
                    continue;
                }
                // Probes take turns with polls: one waiting probe runs when
                // no poll is due, or after at least one poll since the last
                // probe (a busy page never starves the polling).
                let poll_due = self
                    .next_due()
                    .is_some_and(|i| self.devices[i].next_poll <= Instant::now());
                if self.polled_since_probe || !poll_due {
                    if let Some(req) = self.try_next_probe() {
                        self.polled_since_probe = false;
                        tokio::select! {
                            biased;
                            _ = &mut cancelled => break,
                            _ = self.probe(req) => {}
                        }
                        continue;
                    }
                }
                let Some(i) = self.next_due() else {
                    cancelled.as_mut().await;
                    break;
                };
                let release_due = self.releases.iter().map(|r| r.at).min();
                let due = match release_due {
                    Some(r) => r.min(self.devices[i].next_poll),
                    None => self.devices[i].next_poll,
                };
                if let Some(hb) = &self.heartbeat {
                    hb.beat_within(
                        due.saturating_duration_since(Instant::now()) + self.poll_budget(i),
                    );
                }
                if due > Instant::now() {
                    sleep.as_mut().reset(due);
                    let writes = &mut self.writes;
                    let probes = &mut self.probes;
                    // Shutdown last in both selects of a poll cycle: it is
                    // then polled only while the others wait (a wake-up
                    // whose work is ready does not register it again).
                    let woke = tokio::select! {
                        biased;
                        w = next_write(writes) => Some(w),
                        p = next_probe(probes) => {
                            match p {
                                Some(req) => {
                                    self.polled_since_probe = false;
                                    tokio::select! {
                                        biased;
                                        _ = &mut cancelled => break,
                                        _ = self.probe(req) => {}
                                    }
                                }
                                None => self.probes = None,
                            }
                            continue;
                        }
                        _ = &mut sleep => None,
                        _ = &mut cancelled => break,
                    };
                    match woke {
                        Some(Some(req)) => {
                            tokio::select! {
                                biased;
                                _ = &mut cancelled => break,
                                _ = self.write(req) => {}
                            }
                            continue;
                        }
                        Some(None) => {
                            self.writes = None;
                            continue;
                        }
                        None => {}
                    }
                }
                if release_due.is_some_and(|r| r <= Instant::now()) {
                    tokio::select! {
                        biased;
                        _ = &mut cancelled => break,
                        _ = self.release() => {}
                    }
                    continue;
                }
                // Shutdown may cut the request short, but not the hand-over
                // of what was already read: the alarm task drains the bus.
                let messages = tokio::select! {
                    biased;
                    m = self.poll(i, sleep.as_mut()) => m,
                    _ = &mut cancelled => break,
                };
                self.polled_since_probe = true;
                if !self.send(messages, &shutdown).await {
                    self.span
                        .in_scope(|| info!("bus closed or stopping; endpoint task stops"));
                    break;
                }
            }
            // A pulse must not stay on (a door release, a siren) because
            // the driver stopped (a reload, the shutdown): its release is
            // written now, within a short deadline.
            if !self.releases.is_empty() {
                let deadline = Instant::now() + STOP_RELEASE_DEADLINE;
                self.span.in_scope(|| {
                    info!(
                        pending = self.releases.len(),
                        "stopping: writing pending pulse releases"
                    )
                });
                while !self.releases.is_empty() {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    for r in &mut self.releases {
                        r.at = now;
                    }
                    if tokio::time::timeout_at(deadline, self.release())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                if !self.releases.is_empty() {
                    self.span.in_scope(|| {
                        warn!(
                            pending = self.releases.len(),
                            "stopping with pulse releases not written"
                        )
                    });
                }
            }
        }
        // Dropping `self` closes the link.
        self.span.in_scope(|| debug!("endpoint task stopped"));
    }

    /// The next queued write, if one is waiting.
    fn try_next_write(&mut self) -> Option<WriteRequest> {
        let rx = self.writes.as_mut()?;
        match rx.try_recv() {
            Ok(r) => Some(r),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                self.writes = None;
                None
            }
        }
    }

    /// The next queued probe, if one is waiting.
    fn try_next_probe(&mut self) -> Option<ProbeRequest> {
        let rx = self.probes.as_mut()?;
        match rx.try_recv() {
            Ok(r) => Some(r),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                self.probes = None;
                None
            }
        }
    }

    /// Run one probe and answer it. The device's health and schedule are
    /// left alone; the link rules are the polls' (a timeout drops the link).
    async fn probe(&mut self, req: ProbeRequest) {
        let ProbeRequest { device, reply } = req;
        // The page gave up waiting (its deadline passed while the probe
        // was queued): the bus time goes to the polls.
        if reply.is_closed() {
            let _e = self.span.enter();
            debug!(device = %device, "read now: caller gone; probe skipped");
            return;
        }
        let Some(i) = self.devices.iter().position(|d| d.id == device) else {
            let _ = reply.send(Err(ProbeError::NotPolled {
                device: device.to_string(),
            }));
            return;
        };
        // A probe takes up to a poll's time: the watchdog must allow it.
        if let Some(hb) = &self.heartbeat {
            hb.beat_within(self.poll_budget(i));
        }
        let span = self.devices[i].span.clone();
        let outcome = self.probe_device(i).instrument(span.clone()).await;
        let _e = span.enter();
        match &outcome {
            Ok(r) => info!(took_ms = r.took_ms, "read now: probed"),
            Err(e) => info!(error = %e, "read now: probe failed"),
        }
        let _ = reply.send(outcome);
    }

    /// Run device `i`'s read plan once, keeping the raw replies.
    async fn probe_device(&mut self, i: usize) -> Result<ProbeReport, ProbeError> {
        let timeout = self.devices[i].timeout;
        self.ensure_link(timeout).await?;
        let began = std::time::Instant::now();
        let (mut reads, mut values) = (Vec::new(), Vec::new());
        for k in 0..self.devices[i].plan.requests.len() {
            self.frame_gap().await;
            let dev = &self.devices[i];
            let r = &dev.plan.requests[k];
            let link = self
                .link
                .as_mut()
                .ok_or_else(|| ModbusError::NotConnected("link closed".into()))?;
            let result = match tokio::time::timeout(timeout, read_one(link, dev.unit, r)).await {
                Ok(r) => r,
                Err(_) => Err(ModbusError::Timeout(timeout)),
            };
            self.frame_done();
            let raw = match self.link_result(result)? {
                Reply::Bits(b) => RawReply::Bits(b),
                Reply::Words(w) => RawReply::Words(w),
                // `read_one` reports a refusal as its exception (the
                // probe fails with it); only a poll keeps it as a reply.
                Reply::Refused(code) => {
                    return Err(ModbusError::Protocol(format!("refused ({code})")).into())
                }
            };
            let dev = &self.devices[i];
            decode_raw(
                &dev.plan,
                &dev.plan.requests[k],
                raw,
                &mut reads,
                &mut values,
            );
        }
        Ok(ProbeReport {
            unit: self.devices[i].unit,
            took_ms: began.elapsed().as_secs_f64() * 1000.0,
            reads,
            values,
        })
    }

    /// The device serving writable point `point`.
    fn write_target(&self, point: PointIndex) -> Option<(usize, WriteTarget)> {
        self.devices
            .iter()
            .enumerate()
            .find_map(|(i, d)| d.writable.get(&point).map(|t| (i, *t)))
    }

    /// Execute one write request and answer it.
    async fn write(&mut self, req: WriteRequest) {
        let WriteRequest {
            point,
            value,
            pulse,
            reply,
        } = req;
        // Its caller gave up waiting (the bus was busy, the device slow)
        // and reported a timeout: a door opened or a fan stopped now,
        // seconds later, would be an action nobody is told of.
        if reply.is_closed() {
            let _e = self.span.enter();
            warn!(point, value = ?value, "write not sent: its caller stopped waiting for it");
            return;
        }
        // A write takes up to three requests (a bit's read-modify-write):
        // the watchdog must allow it, as it allows a poll.
        if let (Some(hb), Some((di, _))) = (&self.heartbeat, self.write_target(point)) {
            hb.beat_within(self.poll_budget(di).max(self.devices[di].timeout * 3));
        }
        let outcome = self.write_inner(point, value, pulse).await;
        if let Err(e) = &outcome {
            let _e = self.span.enter();
            warn!(point, value = ?value, error = %e, "write failed");
        }
        let _ = reply.send(outcome);
    }

    async fn write_inner(
        &mut self,
        point: PointIndex,
        value: Value,
        pulse: Option<Duration>,
    ) -> Result<(), WriteError> {
        let Some((di, target)) = self.write_target(point) else {
            return Err(WriteError::NotWritable);
        };
        if pulse.is_some() && !matches!(value, Value::Bool(_)) {
            return Err(WriteError::BadValue("a pulse needs true or false".into()));
        }
        let op = target.op(value)?;
        let span = self.devices[di].span.clone();
        self.write_op(di, target, op)
            .instrument(span.clone())
            .await
            .map_err(write_error)?;
        let _e = span.enter();
        info!(point, value = ?value, pulse = ?pulse, "written");
        let now = Instant::now();
        if let (Some(hold), Value::Bool(b)) = (pulse, value) {
            // A newer pulse of the same point replaces an older release.
            self.releases.retain(|r| r.point != point);
            self.releases.push(Release {
                at: now + hold,
                device: di,
                point,
                value: !b,
                attempts: 0,
            });
        }
        // Read the new value back at once.
        self.devices[di].next_poll = now;
        Ok(())
    }

    /// Write the second half of the pulse that is due first.
    async fn release(&mut self) {
        let Some(k) = self
            .releases
            .iter()
            .enumerate()
            .min_by_key(|(_, r)| r.at)
            .map(|(k, _)| k)
        else {
            return;
        };
        let mut r = self.releases.swap_remove(k);
        let Some((di, target)) = self.write_target(r.point) else {
            return;
        };
        let span = self.devices[di].span.clone();
        let result = match target.op(Value::Bool(r.value)) {
            Ok(op) => self
                .write_op(di, target, op)
                .instrument(span.clone())
                .await
                .map_err(write_error),
            Err(e) => Err(e),
        };
        let _e = span.enter();
        match result {
            Ok(()) => {
                info!(point = r.point, value = r.value, "pulse released");
                self.devices[di].next_poll = Instant::now();
            }
            Err(e) => {
                r.attempts += 1;
                if r.attempts >= RELEASE_ATTEMPTS {
                    error!(point = r.point, value = r.value, error = %e, attempts = r.attempts, "pulse release failed; giving up");
                } else {
                    error!(point = r.point, value = r.value, error = %e, attempts = r.attempts, "pulse release failed; retrying");
                    r.at = Instant::now() + self.devices[r.device].interval;
                    self.releases.push(r);
                }
            }
        }
    }

    /// Keep the inter-frame silence on a serial line.
    fn frame_gap(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let ready = match (self.kind, self.last_frame) {
            (LinkKind::Serial { inter_frame }, Some(t)) => Some(t + inter_frame),
            _ => None,
        };
        // Longer after a lost reply on a serial line (see `rtu::quiet_time`).
        let ready = ready.max(self.connector.quiet_until());
        async move {
            if let Some(ready) = ready.filter(|r| *r > Instant::now()) {
                tokio::time::sleep_until(ready).await;
            }
        }
    }

    fn frame_done(&mut self) {
        if matches!(self.kind, LinkKind::Serial { .. }) {
            self.last_frame = Some(Instant::now());
        }
    }

    /// Send a write's frames to device `di`, under its timeout and the link rules.
    async fn write_op(
        &mut self,
        di: usize,
        target: WriteTarget,
        op: WriteOp,
    ) -> Result<(), ModbusError> {
        // A write (even a failed one) may change what the device reads.
        self.devices[di].forget_replies();
        let timeout = self.devices[di].timeout;
        let unit = self.devices[di].unit;
        self.ensure_link(timeout).await?;
        let addr = target.address;
        let op = match op {
            WriteOp::Bit { bit, on, codec } => {
                self.frame_gap().await;
                let link = self
                    .link
                    .as_mut()
                    .ok_or_else(|| ModbusError::NotConnected("link closed".into()))?;
                let r = match tokio::time::timeout(timeout, link.read_holding(unit, addr, 1)).await
                {
                    Ok(r) => r,
                    Err(_) => Err(ModbusError::Timeout(timeout)),
                };
                self.frame_done();
                let words = self.link_result(r)?;
                let Some(&word) = words.first() else {
                    return Err(ModbusError::Protocol("reply too short".into()));
                };
                let raw = raw_u16(word, codec.byte_order);
                let raw = if on {
                    raw | (1 << bit)
                } else {
                    raw & !(1 << bit)
                };
                WriteOp::Register(encode_u16(raw, codec.byte_order))
            }
            op => op,
        };
        self.frame_gap().await;
        let link = self
            .link
            .as_mut()
            .ok_or_else(|| ModbusError::NotConnected("link closed".into()))?;
        let fut = async {
            match op {
                WriteOp::Coil(b) => link.write_coil(unit, addr, b).await,
                WriteOp::Register(w) => link.write_register(unit, addr, w).await,
                WriteOp::Registers(ws) => link.write_registers(unit, addr, ws).await,
                WriteOp::Bit { .. } => Err(ModbusError::Protocol("unreachable bit write".into())),
            }
        };
        let r = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ModbusError::Timeout(timeout)),
        };
        self.frame_done();
        self.link_result(r)
    }

    /// Drop the link after an error that leaves it in an unknown state.
    fn link_result<T>(&mut self, r: Result<T, ModbusError>) -> Result<T, ModbusError> {
        if let Err(e) = &r {
            if e.drops_link() {
                self.span.in_scope(|| debug!(error = %e, "dropping link"));
                self.link = None;
                self.reconnect_at = Instant::now();
            }
        }
        r
    }

    /// The device due first (ties: the first configured).
    fn next_due(&self) -> Option<usize> {
        self.devices
            .iter()
            .enumerate()
            .min_by_key(|(i, d)| (d.next_poll, *i))
            .map(|(i, _)| i)
    }

    /// Poll device `i` once and schedule its next poll. False when the bus
    /// is closed.
    ///
    /// The device's span is entered for the log lines of the outcome only,
    /// not across the request awaits nor for a poll that logs nothing:
    /// entering a span costs a subscriber round trip.
    async fn poll(
        &mut self,
        i: usize,
        timer: Pin<&mut tokio::time::Sleep>,
    ) -> [Option<BusMessage>; 3] {
        let began = Instant::now();
        if self.devices[i].health.is_offline() {
            // The bus holds the device's points as bad.
            self.devices[i].forget_replies();
        }
        let mut timer = timer;
        let plan = self.devices[i].plan.clone();
        let reused = self.link.is_some() && self.kind == LinkKind::Tcp;
        let mut result = self.read_device(i, timer.as_mut()).await;
        // Read again at once, one time, when the device refused a read
        // over addresses it does not have and its plan was split (a
        // sparse register map costs one log line, not a failed poll), or
        // when a connection kept open since an earlier poll turns out
        // closed (many devices close one idle for a minute or so; the
        // error dropped it, and the read opens a new one).
        let split = !Arc::ptr_eq(&plan, &self.devices[i].plan);
        let closed = reused && matches!(result, Err(ModbusError::Io(_)));
        if split || closed {
            if closed {
                let dev = &self.devices[i];
                dev.span
                    .in_scope(|| debug!("connection found closed; reading again on a new one"));
            }
            result = self.read_device(i, timer).await;
        }
        self.settle(i, began, result)
    }

    /// Device `i` refused request `k` with an illegal data address: when
    /// the request reads addresses no point uses (merged across a gap, up
    /// to `max_gap_registers` / `max_gap_bits`), read its points' own
    /// addresses separately from now on. Many devices refuse a read that
    /// touches one address they lack.
    fn split_refused_read(&mut self, i: usize, k: usize) -> bool {
        let dev = &mut self.devices[i];
        let Some(split) = dev.plan.split_at_gaps(k) else {
            return false;
        };
        let r = &dev.plan.requests[k];
        let (table, start, count, reads) = (r.table, r.start, r.count, split.requests.len());
        dev.span.in_scope(|| {
            warn!(
                table = ?table,
                start,
                count,
                requests = reads,
                "the device refuses a read over addresses no point uses (illegal data address): \
                 reading only the points' own addresses from now on (set max_gap_registers / \
                 max_gap_bits = 0 for this device to plan it so from the start)"
            )
        });
        dev.plan = Arc::new(split);
        dev.forget_replies();
        true
    }

    /// Hand `readings` (the changes of a poll's requests so far) to the
    /// bus now, not after the poll's later requests: a zone's alarm in
    /// the first reply must not wait for a long read after it (100
    /// registers on an RS-485 line at 9,600 baud take about 0.2 s). When
    /// the bus is full they stay, and go with the poll's own message.
    fn send_early(
        &mut self,
        i: usize,
        readings: &mut Vec<Reading>,
        replied_at: std::time::Instant,
    ) {
        let m = BusMessage::Readings {
            device: self.devices[i].id.clone(),
            ts: Timestamp::now(),
            replied_at,
            readings: std::mem::take(readings),
        };
        if let Err(e) = self.bus.try_send(m) {
            if let BusMessage::Readings { readings: r, .. } = e.into_inner() {
                *readings = r;
            }
        }
    }

    /// The points device `i` refuses to read, from a poll's `replies`:
    /// when they differ from those last sent, log it and keep the
    /// [`BusMessage::Unreadable`] for `settle`.
    fn note_unreadable(&mut self, i: usize, replies: &[Reply], reason: Option<String>) {
        let dev = &mut self.devices[i];
        let points: Vec<PointIndex> = replies
            .iter()
            .zip(&dev.plan.requests)
            .filter(|(reply, _)| matches!(reply, Reply::Refused(_)))
            .flat_map(|(_, r)| dev.plan.slots_of(r).iter().map(|s| s.point))
            .collect();
        if points == dev.unreadable {
            return;
        }
        let count = points.len();
        match &reason {
            Some(reason) => dev.span.in_scope(|| {
                warn!(
                    %reason,
                    points = count,
                    "the device refuses to read some points: they are bad until it reads them \
                     (check their register, address and type against the device's map)"
                )
            }),
            None => dev
                .span
                .in_scope(|| info!("the device reads every point again")),
        }
        dev.unreadable.clone_from(&points);
        self.unreadable_change = Some(BusMessage::Unreadable {
            device: dev.id.clone(),
            ts: Timestamp::now(),
            points,
            reason: reason.filter(|_| count > 0),
        });
    }

    /// Hand a poll's messages to the bus; false once the bus is closed or
    /// `stop` is cancelled while the bus is full.
    async fn send(&mut self, messages: [Option<BusMessage>; 3], stop: &CancellationToken) -> bool {
        for m in messages.into_iter().flatten() {
            if !crate::drivers::send_or_stop(&self.bus, m, stop).await {
                return false;
            }
        }
        true
    }

    /// Device `i`'s health, counters and next poll after a poll that
    /// began at `began`; the messages for the bus.
    fn settle(
        &mut self,
        i: usize,
        began: Instant,
        result: Result<(Polled, std::time::Instant), ModbusError>,
    ) -> [Option<BusMessage>; 3] {
        let now = Instant::now();
        let jitter = self.rng.f64();
        let dev = &mut self.devices[i];
        if let Some(c) = &dev.counters {
            c.record(result.is_ok(), now - began);
        }
        let mut messages: [Option<BusMessage>; 3] = [None, None, None];
        match result {
            Ok((polled, replied_at)) => {
                let o = dev.health.on_success();
                if o.log_recovered {
                    dev.span.in_scope(|| info!("device answers again"));
                }
                if o.came_online {
                    dev.span.in_scope(|| info!("device online"));
                    messages[0] = Some(BusMessage::DeviceStatus {
                        device: dev.id.clone(),
                        ts: Timestamp::now(),
                        online: true,
                        reason: None,
                    });
                }
                messages[1] = self.unreadable_change.take();
                messages[2] = match polled {
                    // All of it went out early, or nothing with a value
                    // changed (a read now refused).
                    Polled::Changed(readings) if readings.is_empty() => None,
                    Polled::Changed(readings) => Some(BusMessage::Readings {
                        device: dev.id.clone(),
                        ts: Timestamp::now(),
                        replied_at,
                        readings,
                    }),
                    Polled::Same(points) => Some(BusMessage::Confirmed {
                        device: dev.id.clone(),
                        ts: Timestamp::now(),
                        replied_at,
                        points,
                    }),
                };
                dev.next_poll = on_schedule(dev.next_poll, dev.interval, now);
            }
            Err(e) => {
                // A `DeviceStatus` may follow, or the values change meanwhile.
                dev.forget_replies();
                self.unreadable_change = None;
                let o = dev.health.on_failure(&e);
                // What the requests before the failed one read still goes
                // out (a zone's input must not wait for the next poll
                // because another block of the device did not answer),
                // unless the device is offline now: its points are bad.
                if let Some((readings, replied_at)) = self.partial.take() {
                    if !dev.health.is_offline() {
                        messages[2] = Some(BusMessage::Readings {
                            device: dev.id.clone(),
                            ts: Timestamp::now(),
                            replied_at,
                            readings,
                        });
                    }
                }
                if o.log_error {
                    dev.span.in_scope(
                        || warn!(error = %e, failures = dev.health.failures(), "poll failed"),
                    );
                }
                if o.went_offline {
                    dev.span.in_scope(
                        || warn!(error = %e, failures = dev.health.failures(), "device offline"),
                    );
                    messages[0] = Some(BusMessage::DeviceStatus {
                        device: dev.id.clone(),
                        ts: Timestamp::now(),
                        online: false,
                        reason: Some(e.to_string()),
                    });
                }
                let link_level = matches!(
                    e,
                    ModbusError::Connect { .. } | ModbusError::NotConnected(_) | ModbusError::Io(_)
                );
                dev.next_poll = if dev.health.is_offline() && !link_level {
                    // A dead device: skip it for a growing interval.
                    now + backoff(
                        dev.interval,
                        dev.backoff_max.max(dev.interval),
                        dev.health.failures_while_offline(),
                        jitter,
                    )
                } else {
                    on_schedule(dev.next_poll, dev.interval, now)
                };
            }
        }
        messages
    }

    /// Open the link if it is down and a reconnect is due.
    async fn ensure_link(&mut self, timeout: Duration) -> Result<(), ModbusError> {
        if self.link.is_some() {
            return Ok(());
        }
        let now = Instant::now();
        if now < self.reconnect_at {
            return Err(ModbusError::NotConnected(
                self.link_error
                    .clone()
                    .unwrap_or_else(|| "waiting to reconnect".into()),
            ));
        }
        let r = match tokio::time::timeout(timeout, self.connector.connect()).await {
            Ok(r) => r,
            Err(_) => Err(ModbusError::Connect {
                endpoint: self.connector.name().to_string(),
                message: format!("timed out after {timeout:?}"),
            }),
        };
        match r {
            Ok(link) => {
                self.span
                    .in_scope(|| debug!(attempt = self.reconnect_attempt, "link open"));
                for d in &mut self.devices {
                    d.forget_replies();
                }
                self.link = Some(link);
                self.reconnect_attempt = 0;
                self.link_error = None;
                Ok(())
            }
            Err(e) => {
                let delay = backoff(
                    self.reconnect_base,
                    self.reconnect_max,
                    self.reconnect_attempt,
                    self.rng.f64(),
                );
                self.span
                    .in_scope(|| debug!(error = %e, retry_in = ?delay, "cannot open link"));
                self.reconnect_at = Instant::now() + delay;
                self.reconnect_attempt = self.reconnect_attempt.saturating_add(1);
                self.link_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Run device `i`'s read plan; its readings (or that they are all as
    /// last sent) and when the last reply came. `timer` (the task's wait
    /// timer, set again before the next wait) is each request's deadline:
    /// moving a registered timer costs half of registering a new one and
    /// removing it.
    async fn read_device(
        &mut self,
        i: usize,
        mut timer: Pin<&mut tokio::time::Sleep>,
    ) -> Result<(Polled, std::time::Instant), ModbusError> {
        self.partial = None;
        let timeout = self.devices[i].timeout;
        self.ensure_link(timeout).await?;
        let requests = self.devices[i].plan.requests.len();
        let mut replies: Vec<Reply> = Vec::with_capacity(requests);
        // A reply equal to the kept one (kept for this very plan) is not
        // decoded: its points' values are the ones last sent, which the
        // bus holds. Only the requests whose replies changed are decoded
        // (all of them when nothing is kept).
        let dev = &self.devices[i];
        let kept = dev
            .last
            .as_ref()
            .filter(|l| Arc::ptr_eq(&l.plan, &dev.plan))
            .cloned();
        let mut readings = Vec::with_capacity(if kept.is_some() {
            0
        } else {
            dev.plan.slots.len()
        });
        let mut changed = false;
        let mut replied_at = std::time::Instant::now();
        // What changed goes out before the poll's later requests while
        // the device is online (see `send_early`).
        let early = self.early_changes && !dev.health.is_offline();
        // The first refused read's error (see `Reply::Refused`).
        let mut refused: Option<String> = None;
        for k in 0..requests {
            self.frame_gap().await;
            let dev = &self.devices[i];
            let r = &dev.plan.requests[k];
            let Some(link) = self.link.as_mut() else {
                return Err(ModbusError::NotConnected("link closed".into()));
            };
            timer.as_mut().reset(Instant::now() + timeout);
            let result = tokio::select! {
                biased;
                r = read_one(link, dev.unit, r) => r,
                _ = timer.as_mut() => Err(ModbusError::Timeout(timeout)),
            };
            if matches!(self.kind, LinkKind::Serial { .. }) {
                self.last_frame = Some(Instant::now());
            }
            let reply = match result {
                Ok(reply) => reply,
                Err(e) => {
                    if e.drops_link() {
                        dev.span.in_scope(|| debug!(error = %e, "dropping link"));
                        self.link = None;
                        // Reconnect at the next poll: the link itself may be fine.
                        self.reconnect_at = Instant::now();
                    }
                    // A read over unused addresses refused: split, and
                    // read again (`poll`). Else a read the device refuses
                    // (a point it does not have): its points are bad, the
                    // others are read.
                    let split = matches!(e, ModbusError::Exception { code: 2, .. })
                        && self.split_refused_read(i, k);
                    match refuses_read(&e).filter(|_| !split) {
                        Some(code) => {
                            let r = &self.devices[i].plan.requests[k];
                            refused.get_or_insert_with(|| {
                                format!("{e}, reading {:?} {} ({} long)", r.table, r.start, r.count)
                            });
                            Reply::Refused(code)
                        }
                        None => {
                            if !readings.is_empty() {
                                self.partial = Some((readings, replied_at));
                            }
                            return Err(e);
                        }
                    }
                }
            };
            let dev = &self.devices[i];
            let r = &dev.plan.requests[k];
            replied_at = std::time::Instant::now();
            let unchanged = kept
                .as_ref()
                .and_then(|l| l.replies.get(k))
                .is_some_and(|raw| raw.same_as(&reply));
            if !unchanged {
                changed = true;
                if let Err(e) = decode_into(&dev.plan, r, &reply, &mut readings) {
                    self.link = None;
                    self.reconnect_at = Instant::now();
                    return Err(e);
                }
                if early && k + 1 < requests && !readings.is_empty() {
                    self.send_early(i, &mut readings, replied_at);
                }
            }
            replies.push(reply);
        }
        if let Some(reason) = refused {
            if replies.iter().all(|r| matches!(r, Reply::Refused(_))) {
                // Nothing the device has: it counts as not answering.
                return Err(ModbusError::Protocol(format!(
                    "the device refuses every read: {reason}"
                )));
            }
            self.note_unreadable(i, &replies, Some(reason));
        } else if !self.devices[i].unreadable.is_empty() {
            self.note_unreadable(i, &replies, None);
        }
        if let (false, Some(last)) = (changed, &kept) {
            self.devices[i].left_out = false;
            return Ok((Polled::Same(last.clone()), replied_at));
        }
        // Something changed, maybe not every request's reply. The others'
        // points are not in these `Readings` (the bus holds their values);
        // but if that went on poll after poll (a drifting temperature
        // beside a door's contacts), they would never be confirmed: their
        // telemetry would turn `stale`, their read times stop. So a second
        // such poll in a row decodes them too. (A `Confirmed` of just those
        // points after the `Readings` would do the same, but it misses the
        // telemetry's whole-device path: it cost scenario A 67 % more
        // instructions.)
        if let Some(last) = &kept {
            let dev = &mut self.devices[i];
            let partly = replies
                .iter()
                .enumerate()
                .any(|(k, reply)| last.replies.get(k).is_some_and(|raw| raw.same_as(reply)));
            let decode_all = partly && dev.left_out;
            dev.left_out = partly && !decode_all;
            if decode_all {
                let dev = &self.devices[i];
                for (k, reply) in replies.iter().enumerate() {
                    if last.replies.get(k).is_some_and(|raw| raw.same_as(reply)) {
                        decode_into(&dev.plan, &dev.plan.requests[k], reply, &mut readings)?;
                    }
                }
            }
        }
        // The kept replies are replaced in place when no one else holds
        // them (a consumer may still have the last `Confirmed`).
        drop(kept);
        let dev = &mut self.devices[i];
        let raws = replies.iter().map(Raw::of).collect();
        match dev
            .last
            .as_mut()
            .and_then(Arc::get_mut)
            .filter(|l| Arc::ptr_eq(&l.plan, &dev.plan))
        {
            Some(last) => last.replies = raws,
            None => {
                dev.last = Some(Arc::new(LastReplies {
                    plan: dev.plan.clone(),
                    replies: raws,
                }))
            }
        }
        Ok((Polled::Changed(readings), replied_at))
    }

    /// The devices (tests).
    #[cfg(test)]
    pub fn devices(&self) -> &[DevicePoller] {
        &self.devices
    }
}

/// The outcome of a failed write, for the caller.
fn write_error(e: ModbusError) -> WriteError {
    match e {
        ModbusError::Timeout(d) => WriteError::Timeout(d),
        ModbusError::Connect { .. } | ModbusError::NotConnected(_) | ModbusError::Io(_) => {
            WriteError::Offline
        }
        ModbusError::Exception { .. } | ModbusError::Protocol(_) => {
            WriteError::Refused(e.to_string())
        }
    }
}

/// Wait for the next write; never resolves when there is no queue.
async fn next_write(writes: &mut Option<mpsc::Receiver<WriteRequest>>) -> Option<WriteRequest> {
    match writes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Wait for the next probe; never resolves when there is no queue.
async fn next_probe(probes: &mut Option<mpsc::Receiver<ProbeRequest>>) -> Option<ProbeRequest> {
    match probes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Next poll after one due at `due`: one interval later, or now when the
/// endpoint has fallen behind (a poll is never made up twice).
fn on_schedule(due: Instant, interval: Duration, now: Instant) -> Instant {
    let next = due + interval;
    if next < now {
        now
    } else {
        next
    }
}

#[cfg(test)]
mod raw_tests {
    use super::{decode_into, LastReplies, Raw, Reply};
    use crate::drivers::modbus::plan::{plan, Limits};
    use crate::drivers::{Order, PointConfig, PointType, RegisterKind};
    use crate::point::{Confirmation, PointIndex};
    use proptest::prelude::*;
    use std::sync::Arc;

    const TYPES: [PointType; 5] = [
        PointType::U16,
        PointType::I16,
        PointType::U32,
        PointType::I32,
        PointType::F32,
    ];

    proptest! {
        /// A confirmation's values, decoded one by one, are the readings
        /// the same replies decode to, in the same order.
        #[test]
        fn confirmed_values_are_the_decoded_readings(
            points in proptest::collection::vec(
                (0usize..4, 0u16..300, 0usize..6, 0u8..16, any::<(bool, bool)>(), 0usize..4),
                1..40,
            ),
            seed in any::<u64>(),
        ) {
            // Every register kind; in registers every type, a bit of a
            // register as bool, both byte and word orders, a scale and an
            // offset.
            const KINDS: [RegisterKind; 4] = [
                RegisterKind::Coil,
                RegisterKind::DiscreteInput,
                RegisterKind::Holding,
                RegisterKind::Input,
            ];
            const SCALES: [(f64, f64); 4] = [(1.0, 0.0), (0.1, 0.0), (0.5, -40.0), (-2.0, 3.5)];
            let configs: Vec<PointConfig> = points
                .iter()
                .map(|&(kind, address, t, bit, (byte_little, word_little), scale)| {
                    let kind = KINDS[kind];
                    if matches!(kind, RegisterKind::Coil | RegisterKind::DiscreteInput) {
                        return PointConfig::modbus(kind, address, PointType::Bool);
                    }
                    let order = |little| if little { Order::Little } else { Order::Big };
                    let mut p = match TYPES.get(t) {
                        Some(&t) => {
                            let mut p = PointConfig::modbus(kind, address, t);
                            (p.scale, p.offset) = SCALES[scale];
                            p
                        }
                        None => {
                            let mut p = PointConfig::modbus(kind, address, PointType::Bool);
                            p.bit = Some(bit);
                            p
                        }
                    };
                    p.byte_order = Some(order(byte_little));
                    p.word_order = Some(order(word_little));
                    p
                })
                .collect();
            let refs: Vec<_> = configs
                .iter()
                .enumerate()
                .map(|(i, p)| (i as PointIndex * 3 + 7, p))
                .collect();
            let limits = Limits { max_registers: 20, max_bits: 50, max_gap_registers: 4, max_gap_bits: 8 };
            let plan = Arc::new(plan(&refs, limits).unwrap());
            let mut rng = fastrand::Rng::with_seed(seed);
            let replies: Vec<Reply> = plan
                .requests
                .iter()
                .map(|r| {
                    if r.table.is_bit() {
                        Reply::Bits((0..r.count).map(|_| rng.bool()).collect())
                    } else {
                        Reply::Words((0..r.count).map(|_| rng.u16(..)).collect())
                    }
                })
                .collect();
            let mut readings = Vec::new();
            for (r, reply) in plan.requests.iter().zip(&replies) {
                decode_into(&plan, r, reply, &mut readings).unwrap();
            }
            let last = LastReplies {
                plan: plan.clone(),
                replies: replies.iter().map(Raw::of).collect(),
            };
            prop_assert_eq!(last.count(), readings.len());
            for (i, r) in readings.iter().enumerate() {
                prop_assert_eq!(last.point(i), Some(r.point));
                let v = last.value(i).unwrap();
                // NaN != NaN: compare the bits of floats.
                prop_assert_eq!(format!("{v:?}"), format!("{:?}", r.value));
            }
            prop_assert_eq!(last.point(readings.len()), None);
            prop_assert_eq!(last.value(readings.len()), None);
        }

        /// Kept bits compare equal to exactly the same reply and read back
        /// bit by bit; words likewise.
        #[test]
        fn kept_replies_compare_exactly(
            bits in proptest::collection::vec(any::<bool>(), 0..300),
            flip in any::<proptest::sample::Index>(),
            words in proptest::collection::vec(any::<u16>(), 0..130),
        ) {
            let raw = Raw::of(&Reply::Bits(bits.clone()));
            prop_assert!(raw.same_as(&Reply::Bits(bits.clone())));
            for (k, b) in bits.iter().enumerate() {
                prop_assert_eq!(raw.bit(k), Some(*b));
            }
            prop_assert_eq!(raw.bit(bits.len()), None);
            if !bits.is_empty() {
                let mut other = bits.clone();
                let k = flip.index(bits.len());
                other[k] = !other[k];
                prop_assert!(!raw.same_as(&Reply::Bits(other)));
                prop_assert!(!raw.same_as(&Reply::Bits(bits[1..].to_vec())));
            }
            let mut longer = bits.clone();
            longer.push(false);
            prop_assert!(!raw.same_as(&Reply::Bits(longer)));
            prop_assert!(!raw.same_as(&Reply::Words(vec![0; bits.len()])));

            let raw = Raw::of(&Reply::Words(words.clone()));
            prop_assert!(raw.same_as(&Reply::Words(words.clone())));
            if !words.is_empty() {
                let mut other = words.clone();
                let k = flip.index(words.len());
                other[k] ^= 1 << (k % 16);
                prop_assert!(!raw.same_as(&Reply::Words(other)));
            }
            let mut longer = words.clone();
            longer.push(0);
            prop_assert!(!raw.same_as(&Reply::Words(longer)));
        }
    }
}
