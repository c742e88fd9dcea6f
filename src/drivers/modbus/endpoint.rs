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
//! - A device that is offline for its own reasons (timeouts, exceptions) is
//!   skipped for a growing interval, so a dead slave on a bus does not eat
//!   the bus time of the live ones.
//! - On a serial bus the task keeps the inter-frame silence between requests
//!   (tokio-modbus does not).

use super::health::{backoff, Health};
use super::plan::{ReadPlan, ReadRequest};
use super::transport::{Connector, ModbusError, Transport};
use crate::drivers::RegisterKind;
use crate::event::Timestamp;
use crate::point::{BusMessage, Reading};
use crate::service::liveness::Heartbeat;
use crate::status::PollCounters;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument as _};

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
    pub plan: ReadPlan,
    pub health: Health,
    pub next_poll: Instant,
    pub span: tracing::Span,
    /// Poll counters for `/metrics` (none in tests that do not look).
    pub counters: Option<Arc<PollCounters>>,
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
            plan,
            health: Health::new(offline_after),
            next_poll: start,
            span: tracing::info_span!("modbus_device", device = %id, unit),
            counters: None,
        }
    }
}

/// A reply's data.
enum Reply {
    Bits(Vec<bool>),
    Words(Vec<u16>),
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

/// Append the values of request `r`'s points from `reply` to `out`.
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
    reconnect_base: Duration,
    reconnect_max: Duration,
    bus: mpsc::Sender<BusMessage>,
    rng: fastrand::Rng,
    heartbeat: Option<Heartbeat>,
}

impl<C: Connector> Endpoint<C> {
    pub fn new(
        connector: C,
        kind: LinkKind,
        devices: Vec<DevicePoller>,
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
        Endpoint {
            connector,
            link: None,
            kind,
            devices,
            reconnect_at: Instant::now(),
            reconnect_attempt: 0,
            link_error: None,
            last_frame: None,
            reconnect_base,
            reconnect_max,
            bus,
            rng: fastrand::Rng::new(),
            heartbeat: None,
        }
    }

    /// Seed the jitter (tests).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = fastrand::Rng::with_seed(seed);
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
        let span = tracing::info_span!("modbus_endpoint", endpoint = %self.connector.name());
        async move {
            debug!(devices = self.devices.len(), "endpoint task started");
            let sleep = tokio::time::sleep_until(Instant::now());
            tokio::pin!(sleep);
            loop {
                let Some(i) = self.next_due() else {
                    shutdown.cancelled().await;
                    break;
                };
                let due = self.devices[i].next_poll;
                if let Some(hb) = &self.heartbeat {
                    hb.beat_within(
                        due.saturating_duration_since(Instant::now()) + self.poll_budget(i),
                    );
                }
                if due > Instant::now() {
                    sleep.as_mut().reset(due);
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break,
                        _ = &mut sleep => {}
                    }
                }
                // Shutdown may cut the request short, but not the hand-over
                // of what was already read: the alarm task drains the bus.
                let messages = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    m = self.poll(i) => m,
                };
                if !self.send(messages).await {
                    info!("bus closed; endpoint task stops");
                    break;
                }
            }
            // Dropping `self` closes the link.
            debug!("endpoint task stopped");
        }
        .instrument(span)
        .await
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
    async fn poll(&mut self, i: usize) -> [Option<BusMessage>; 2] {
        let span = self.devices[i].span.clone();
        self.poll_inner(i).instrument(span).await
    }

    /// Hand a poll's messages to the bus; false once the bus is closed.
    async fn send(&mut self, messages: [Option<BusMessage>; 2]) -> bool {
        for m in messages.into_iter().flatten() {
            if self.bus.send(m).await.is_err() {
                return false;
            }
        }
        true
    }

    async fn poll_inner(&mut self, i: usize) -> [Option<BusMessage>; 2] {
        let began = Instant::now();
        let result = self.read_device(i).await;
        let now = Instant::now();
        let jitter = self.rng.f64();
        let dev = &mut self.devices[i];
        if let Some(c) = &dev.counters {
            c.record(result.is_ok(), now - began);
        }
        let mut messages: [Option<BusMessage>; 2] = [None, None];
        match result {
            Ok((readings, replied_at)) => {
                let o = dev.health.on_success();
                if o.log_recovered {
                    info!("device answers again");
                }
                if o.came_online {
                    info!("device online");
                    messages[0] = Some(BusMessage::DeviceStatus {
                        device: dev.id.clone(),
                        ts: Timestamp::now(),
                        online: true,
                        reason: None,
                    });
                }
                messages[1] = Some(BusMessage::Readings {
                    device: dev.id.clone(),
                    ts: Timestamp::now(),
                    replied_at,
                    readings,
                });
                dev.next_poll = on_schedule(dev.next_poll, dev.interval, now);
            }
            Err(e) => {
                let o = dev.health.on_failure(&e);
                if o.log_error {
                    warn!(error = %e, failures = dev.health.failures(), "poll failed");
                }
                if o.went_offline {
                    warn!(error = %e, failures = dev.health.failures(), "device offline");
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
                debug!(attempt = self.reconnect_attempt, "link open");
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
                debug!(error = %e, retry_in = ?delay, "cannot open link");
                self.reconnect_at = Instant::now() + delay;
                self.reconnect_attempt = self.reconnect_attempt.saturating_add(1);
                self.link_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Run device `i`'s read plan; its readings and when the last reply came.
    async fn read_device(
        &mut self,
        i: usize,
    ) -> Result<(Vec<Reading>, std::time::Instant), ModbusError> {
        let timeout = self.devices[i].timeout;
        self.ensure_link(timeout).await?;
        let dev = &self.devices[i];
        let mut readings = Vec::with_capacity(dev.plan.slots.len());
        let mut replied_at = std::time::Instant::now();
        for r in &dev.plan.requests {
            if let LinkKind::Serial { inter_frame } = self.kind {
                if let Some(t) = self.last_frame {
                    let ready = t + inter_frame;
                    if ready > Instant::now() {
                        tokio::time::sleep_until(ready).await;
                    }
                }
            }
            let Some(link) = self.link.as_mut() else {
                return Err(ModbusError::NotConnected("link closed".into()));
            };
            let result = match tokio::time::timeout(timeout, read_one(link, dev.unit, r)).await {
                Ok(r) => r,
                Err(_) => Err(ModbusError::Timeout(timeout)),
            };
            if matches!(self.kind, LinkKind::Serial { .. }) {
                self.last_frame = Some(Instant::now());
            }
            let reply = match result {
                Ok(reply) => reply,
                Err(e) => {
                    if e.drops_link() {
                        debug!(error = %e, "dropping link");
                        self.link = None;
                        // Reconnect at the next poll: the link itself may be fine.
                        self.reconnect_at = Instant::now();
                    }
                    return Err(e);
                }
            };
            replied_at = std::time::Instant::now();
            if let Err(e) = decode_into(&dev.plan, r, &reply, &mut readings) {
                self.link = None;
                self.reconnect_at = Instant::now();
                return Err(e);
            }
        }
        Ok((readings, replied_at))
    }

    /// The devices (tests).
    #[cfg(test)]
    pub fn devices(&self) -> &[DevicePoller] {
        &self.devices
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
