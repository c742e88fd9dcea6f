//! The connection task: the only poller of the site broker connection's
//! rumqttc `EventLoop`. It subscribes to every device topic, turns messages
//! into bus messages through the [`Router`], checks silence timeouts,
//! publishes writes, and never dies: a lost connection is retried with
//! backoff and jitter until shutdown.

use super::payload::{self, Typing};
use super::router::Router;
use super::MqttError;
use crate::config::secret::Secret;
use crate::config::LoadedConfig;
use crate::drivers::write::{WriteError, WriteRequest};
use crate::event::Timestamp;
use crate::point::{BusMessage, PointIndex, Value};
use crate::uplink::state::Backoff;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS,
    SubscribeFilter, Transport,
};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Requests queued in the rumqttc client, at most.
const REQUEST_CAPACITY: usize = 256;
/// Largest MQTT packet accepted from the site broker.
const MAX_PACKET: usize = 256 * 1024;
/// A connection that held this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// Longest sleep between two silence checks.
const MAX_TICK: Duration = Duration::from_secs(1);

/// Where to connect and as whom.
#[derive(Clone, Debug)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: Option<crate::uplink::TlsConfig>,
    pub keepalive: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Subscription QoS (0 or 1).
    pub qos: u8,
}

/// How to write one point.
#[derive(Clone, Debug)]
struct WriteTarget {
    device: Arc<str>,
    topic: String,
    typing: Typing,
    words: (String, String),
}

/// A write submitted to the client, waiting for its PUBACK.
struct Pending {
    point: PointIndex,
    /// `None` for the release half of a pulse.
    reply: Option<oneshot::Sender<Result<(), WriteError>>>,
    /// After the PUBACK: write `value` again after the duration.
    then: Option<(Duration, Value)>,
}

/// The write targets of every writable MQTT point.
fn write_targets(cfg: &LoadedConfig) -> HashMap<PointIndex, WriteTarget> {
    let mut out = HashMap::new();
    for (pi, meta) in cfg.points.iter() {
        let dev = &cfg.config.devices[meta.device_index];
        let (Some(m), true) = (&dev.mqtt, meta.writable) else {
            continue;
        };
        let p = cfg.point_config(meta);
        let template = p
            .mqtt
            .as_ref()
            .and_then(|pm| pm.command_topic.as_ref())
            .or(m.command_topic.as_ref());
        let Some(template) = template else { continue };
        out.insert(
            pi,
            WriteTarget {
                device: dev.id.as_str().into(),
                topic: payload::command_topic(template, &dev.id, &p.id),
                typing: Typing::new(p),
                words: (m.payload_true.clone(), m.payload_false.clone()),
            },
        );
    }
    out
}

/// A fresh client and event loop (nothing queued).
fn new_link(o: &MqttOptions, c: &Connection) -> (AsyncClient, EventLoop) {
    let (client, mut el) = AsyncClient::new(o.clone(), REQUEST_CAPACITY);
    el.network_options
        .set_connection_timeout(c.keepalive.as_secs().clamp(2, 10));
    // A write is one small packet: send it now, not after Nagle's wait.
    el.network_options.set_tcp_nodelay(true);
    (client, el)
}

fn options(c: &Connection) -> Result<MqttOptions, MqttError> {
    let mut o = MqttOptions::new(c.client_id.clone(), c.host.clone(), c.port);
    o.set_keep_alive(c.keepalive.max(Duration::from_secs(1)));
    o.set_clean_session(true);
    o.set_request_channel_capacity(REQUEST_CAPACITY);
    o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let Some(user) = &c.username {
        let pw = c.password.as_ref().map(|p| p.expose()).unwrap_or("");
        o.set_credentials(user.clone(), pw);
    }
    if let Some(tls) = &c.tls {
        let rustls =
            crate::uplink::tls::client_config(tls).map_err(|e| MqttError::Tls(e.to_string()))?;
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(rustls),
        ));
    }
    Ok(o)
}

/// The running connection's state.
struct Driver {
    router: Router,
    bus: mpsc::Sender<BusMessage>,
    /// The driver's stop: a send waiting on a full bus gives up on it.
    shutdown: CancellationToken,
    client: AsyncClient,
    subscriptions: Vec<SubscribeFilter>,
    targets: HashMap<PointIndex, WriteTarget>,
    connected: bool,
    connected_at: Option<Instant>,
    /// Writes handed to the client, in order, before rumqttc numbered them.
    unnumbered: VecDeque<Pending>,
    /// Writes sent, by packet id, awaiting their PUBACK.
    sent: HashMap<u16, Pending>,
    /// Pulse releases due: (when, point, value).
    releases: Vec<(Instant, PointIndex, Value)>,
    points: Arc<crate::config::PointTable>,
    /// Messages that matched no point (logged once per topic count).
    unmatched: u64,
}

/// Run the connection until shutdown.
pub async fn run(
    cfg: Arc<LoadedConfig>,
    conn: Connection,
    router: Router,
    bus: mpsc::Sender<BusMessage>,
    mut writes: mpsc::Receiver<WriteRequest>,
    shutdown: CancellationToken,
) {
    let options = loop {
        match options(&conn) {
            Ok(o) => break o,
            Err(e) => {
                error!(error = %e, "MQTT device driver cannot start; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(conn.reconnect_max) => {}
                }
            }
        }
    };
    let (client, el) = new_link(&options, &conn);
    let qos = if conn.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let subscriptions: Vec<SubscribeFilter> = router
        .filters()
        .into_iter()
        .map(|f| SubscribeFilter::new(f, qos))
        .collect();
    info!(
        host = %conn.host,
        port = conn.port,
        tls = conn.tls.is_some(),
        devices = router.devices().len(),
        filters = subscriptions.len(),
        "MQTT device driver starting"
    );
    let mut d = Driver {
        targets: write_targets(&cfg),
        points: Arc::new(cfg.points.clone()),
        router,
        bus,
        shutdown: shutdown.clone(),
        client,
        subscriptions,
        connected: false,
        connected_at: None,
        unnumbered: VecDeque::new(),
        sent: HashMap::new(),
        releases: Vec::new(),
        unmatched: 0,
    };
    let mut backoff = Backoff::new(conn.reconnect_min, conn.reconnect_max);
    let mut failures: u32 = 0;
    // The poll future owns the event loop and is never cancelled half-way
    // (a request rumqttc had taken could be lost); other branches of the
    // select leave it parked.
    let mut poller: Option<PollFuture> = Some(poll_once(Box::new(el)));
    // While waiting to reconnect: the fresh event loop and when to poll it.
    let mut parked: Option<(Box<EventLoop>, tokio::time::Instant)> = None;
    loop {
        let now = Instant::now();
        let mut wake = [
            d.router.next_deadline(),
            d.releases.iter().map(|r| r.0).min(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + MAX_TICK)
        .min(now + MAX_TICK);
        if let Some((_, at)) = &parked {
            wake = wake.min(at.into_std());
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            (el, polled) = next_poll(&mut poller) => match polled {
                Ok(ev) => {
                    poller = Some(poll_once(el));
                    if failures > 0 && matches!(ev, Event::Incoming(Incoming::ConnAck(_))) {
                        info!(after_failures = failures, "site broker connection restored");
                        failures = 0;
                    }
                    if d.on_event(ev).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let held = d
                        .connected_at
                        .map(|t| t.elapsed() >= STABLE_CONNECTION)
                        .unwrap_or(false);
                    if held {
                        backoff.reset();
                    }
                    let was_connected = d.connected;
                    d.on_disconnect(&e);
                    failures += 1;
                    if was_connected {
                        warn!(error = %e, "site broker connection lost; reconnecting");
                    } else if failures == 1 {
                        warn!(error = %e, "cannot connect to the site broker; retrying");
                    } else {
                        debug!(error = %e, failures, "site broker still unreachable");
                    }
                    // Nothing of this connection may leak into the next:
                    // a fresh client drops requests still queued (a write
                    // whose caller was told it failed must not go out later).
                    drop(el);
                    let (client, fresh) = new_link(&options, &conn);
                    d.client = client;
                    let delay = backoff.next_delay(fastrand::f64());
                    parked = Some((Box::new(fresh), tokio::time::Instant::now() + delay));
                    poller = None;
                }
            },
            Some(w) = writes.recv() => d.on_write(w),
            _ = tokio::time::sleep_until(wake.into()) => {
                if let Some((el, at)) = parked.take() {
                    if tokio::time::Instant::now() >= at {
                        poller = Some(poll_once(el));
                    } else {
                        parked = Some((el, at));
                    }
                }
                if d.tick().await.is_err() {
                    break;
                }
            }
        }
    }
    d.fail_all(WriteError::ShuttingDown);
    let _ = d.client.try_disconnect();
    // Give the DISCONNECT a moment to go out.
    if let Some(mut p) = poller.take() {
        let _ = tokio::time::timeout(Duration::from_millis(200), async move {
            loop {
                let (el, r) = p.await;
                match r {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => p = poll_once(el),
                }
            }
        })
        .await;
    }
    info!("MQTT device driver stopped");
}

type PollOutput = (Box<EventLoop>, Result<Event, ConnectionError>);
type PollFuture = Pin<Box<dyn Future<Output = PollOutput> + Send>>;

/// Poll once, owning the event loop (handed back with the result).
fn poll_once(mut el: Box<EventLoop>) -> PollFuture {
    Box::pin(async move {
        let r = el.poll().await;
        (el, r)
    })
}

async fn next_poll(p: &mut Option<PollFuture>) -> PollOutput {
    match p {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The bus is closed: the gateway is stopping.
struct BusClosed;

impl Driver {
    async fn send(&self, msgs: Vec<BusMessage>) -> Result<(), BusClosed> {
        for m in msgs {
            // Full bus: wait (alarms are never dropped), unless stopping.
            if !crate::drivers::send_or_stop(&self.bus, m, &self.shutdown).await {
                return Err(BusClosed);
            }
        }
        Ok(())
    }

    async fn on_event(&mut self, ev: Event) -> Result<(), BusClosed> {
        match ev {
            Event::Incoming(Incoming::ConnAck(ack)) => {
                self.connected = true;
                self.connected_at = Some(Instant::now());
                info!(code = ?ack.code, "connected to the site broker");
                if !self.subscriptions.is_empty() {
                    if let Err(e) = self.client.try_subscribe_many(self.subscriptions.clone()) {
                        error!(error = %e, "cannot subscribe to device topics");
                    }
                }
                // Pulse releases waiting for the link go out now.
                self.tick().await?;
            }
            Event::Incoming(Incoming::SubAck(ack)) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    .count();
                if refused > 0 {
                    error!(
                        refused,
                        "site broker refused device subscriptions (check its ACL)"
                    );
                } else {
                    debug!(
                        filters = ack.return_codes.len(),
                        "subscribed to device topics"
                    );
                }
            }
            Event::Incoming(Incoming::Publish(p)) => {
                let now = Instant::now();
                let topic = p.topic.as_str();
                let out =
                    self.router
                        .on_publish(topic, &p.payload, p.retain, now, Timestamp::now());
                for pr in &out.problems {
                    let meta = self.points.get(pr.point);
                    if pr.first {
                        warn!(
                            device = %meta.device,
                            point = %meta.point,
                            topic,
                            error = %pr.error,
                            "device payload gives no value for the point (logged once until a good value)"
                        );
                    } else {
                        debug!(device = %meta.device, point = %meta.point, topic, error = %pr.error, "device payload gives no value");
                    }
                }
                if let Some((device, payload)) = &out.unknown_status {
                    warn!(%device, topic, payload = %payload, "status payload is neither the online nor the offline value");
                }
                if out.unmatched {
                    self.unmatched += 1;
                    if self.unmatched.is_power_of_two() {
                        debug!(
                            topic,
                            count = self.unmatched,
                            "message matches no configured point"
                        );
                    }
                }
                self.send(out.messages).await?;
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(p) = self.unnumbered.pop_front() {
                    self.sent.insert(pkid, p);
                }
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(p) = self.sent.remove(&ack.pkid) {
                    let device = self.targets.get(&p.point).map(|t| t.device.clone());
                    debug!(device = ?device, point = p.point, "write confirmed by the site broker");
                    if let Some((hold, value)) = p.then {
                        self.releases.push((Instant::now() + hold, p.point, value));
                    }
                    if let Some(r) = p.reply {
                        let _ = r.send(Ok(()));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Silence timeouts and due pulse releases.
    async fn tick(&mut self) -> Result<(), BusClosed> {
        let now = Instant::now();
        let msgs = self.router.tick(now, Timestamp::now());
        for m in &msgs {
            if let BusMessage::DeviceStatus { device, reason, .. } = m {
                warn!(%device, reason = reason.as_deref().unwrap_or(""), "MQTT device offline");
            }
        }
        self.send(msgs).await?;
        if self.connected {
            let due: Vec<(Instant, PointIndex, Value)>;
            (due, self.releases) = std::mem::take(&mut self.releases)
                .into_iter()
                .partition(|r| r.0 <= now);
            for (_, point, value) in due {
                if let Err(e) = self.publish(point, value, None, None) {
                    error!(point, error = %e, "pulse release not written");
                }
            }
        }
        Ok(())
    }

    fn on_write(&mut self, w: WriteRequest) {
        if !self.targets.contains_key(&w.point) {
            let _ = w.reply.send(Err(WriteError::NotWritable));
            return;
        }
        if !self.connected {
            let _ = w.reply.send(Err(WriteError::Offline));
            return;
        }
        let then = match w.pulse {
            None => None,
            Some(hold) => match w.value {
                Value::Bool(b) => Some((hold, Value::Bool(!b))),
                _ => {
                    let _ = w.reply.send(Err(WriteError::BadValue(
                        "a pulse needs a bool value".into(),
                    )));
                    return;
                }
            },
        };
        if let Err(e) = self.publish(w.point, w.value, Some(w.reply), then) {
            debug!(point = w.point, error = %e, "write refused");
        }
    }

    /// Publish a write (QoS 1); the reply comes with the PUBACK.
    fn publish(
        &mut self,
        point: PointIndex,
        value: Value,
        reply: Option<oneshot::Sender<Result<(), WriteError>>>,
        then: Option<(Duration, Value)>,
    ) -> Result<(), WriteError> {
        let t = &self.targets[&point];
        let text = match t.typing.encode(value, (&t.words.0, &t.words.1)) {
            Ok(s) => s,
            Err(e) => {
                let err = WriteError::BadValue(e.to_string());
                if let Some(r) = reply {
                    let _ = r.send(Err(err.clone()));
                }
                return Err(err);
            }
        };
        info!(device = %t.device, topic = %t.topic, payload = %text, "writing to MQTT device");
        match self
            .client
            .try_publish(t.topic.clone(), QoS::AtLeastOnce, false, text.into_bytes())
        {
            Ok(()) => {
                self.unnumbered.push_back(Pending { point, reply, then });
                Ok(())
            }
            Err(e) => {
                let err = WriteError::Refused(format!("client queue: {e}"));
                if let Some(r) = reply {
                    let _ = r.send(Err(err.clone()));
                }
                Err(err)
            }
        }
    }

    fn on_disconnect(&mut self, _e: &ConnectionError) {
        self.connected = false;
        self.connected_at = None;
        // Unconfirmed writes are dropped with the connection and its
        // client (clean session): their callers learn they failed.
        for (_, p) in self.sent.drain() {
            if let Some(r) = p.reply {
                let _ = r.send(Err(WriteError::Refused(
                    "site broker connection lost before confirmation".into(),
                )));
            }
        }
        for p in self.unnumbered.drain(..) {
            if let Some(r) = p.reply {
                let _ = r.send(Err(WriteError::Refused(
                    "site broker connection lost before confirmation".into(),
                )));
            }
        }
    }

    fn fail_all(&mut self, e: WriteError) {
        for (_, p) in self.sent.drain() {
            if let Some(r) = p.reply {
                let _ = r.send(Err(e.clone()));
            }
        }
        for p in self.unnumbered.drain(..) {
            if let Some(r) = p.reply {
                let _ = r.send(Err(e.clone()));
            }
        }
    }
}
