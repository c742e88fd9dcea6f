//! The uplink task: the only poller of rumqttc's `EventLoop`.
//!
//! One task owns the event loop, the delivery [`Pipeline`] and every
//! publish request, so the order of requests handed to the client is exactly
//! the order in which rumqttc reports `Outgoing::Publish(pkid)`. The poll
//! future owns the `EventLoop` and hands it back when it completes, so it is
//! never cancelled half-way (which could lose a request rumqttc had already
//! counted); only a deliberate reset aborts it, and then the connection is
//! thrown away anyway.

use super::payload::{Downlink, EventsAck, HeartbeatPayload, StatusPayload, Topics};
use super::state::{AckBatch, Acks, Backoff, Confirm, Lane, Link, LinkChange, Phase, Pipeline};
use super::{IncomingCommand, UplinkContext, UplinkError};
use crate::app::UPLINK_SINK;
use crate::event::{EventKind, NewEvent, Priority, Timestamp};
use crate::journal::{Journal, JournalHead, StoredEvent, StoredTelemetry};
use crate::service::liveness::Heartbeat;
use crate::status::GatewayStatus;
use rumqttc::{
    AsyncClient, ClientError, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions,
    Outgoing, QoS, Request, Transport,
};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// Events read from the journal per batch.
const READ_BATCH: usize = 512;
/// Telemetry messages in flight at most.
const TELEMETRY_WINDOW: usize = 16;
/// Extra request-channel room for status, heartbeat and command results.
const OTHER_REQUESTS: usize = 64;
/// Command results waiting for a connection, at most (older ones dropped).
const MAX_PENDING_RESULTS: usize = 256;
/// Commands being executed at once, at most; more are refused at once.
const MAX_RUNNING_COMMANDS: usize = 64;
/// Largest MQTT packet sent or accepted.
const MAX_PACKET: usize = 4 * 1024 * 1024;
/// A connection that held this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// How often timeouts are checked and acknowledgements flushed while
/// publishes await their acknowledgements.
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// The same with nothing in flight: no timeout can run out, and only the
/// loop's liveness beat needs a wake-up (on a Pi at rest, ten wake-ups a
/// second were a tenth of the gateway's CPU time).
const HOUSEKEEPING_IDLE: Duration = Duration::from_secs(1);

/// The main loop beats its liveness heartbeat at least this often.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Events' acknowledgements are gathered for this long from the first
/// one, then written to the journal together: a burst of PUBACKs is one
/// removal. Telemetry's are written at most this often while more is in
/// flight (see `AckBatch`).
const ACK_FLUSH: Duration = Duration::from_millis(50);
/// How long the clean shutdown may take to publish `offline` and disconnect.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);
/// Wait after a journal read error before reading again.
const JOURNAL_RETRY: Duration = Duration::from_secs(1);

type PollOutput = (Box<EventLoop>, Option<Result<Event, ConnectionError>>);
type PollFuture = Pin<Box<dyn Future<Output = PollOutput> + Send>>;

/// Poll once, owning the event loop; `abort` resets the connection.
fn poll_once(mut el: Box<EventLoop>, abort: Arc<Notify>) -> PollFuture {
    Box::pin(async move {
        let r = tokio::select! {
            biased;
            _ = abort.notified() => None,
            r = el.poll() => Some(r),
        };
        (el, r)
    })
}

async fn next_poll(p: &mut Option<PollFuture>) -> PollOutput {
    match p {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn head_changed(rx: &mut Option<watch::Receiver<JournalHead>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn next_reply(rx: &mut mpsc::Receiver<(String, Vec<u8>)>) -> (String, Vec<u8>) {
    match rx.recv().await {
        Some(r) => r,
        // The task holds a sender itself, so this never ends.
        None => std::future::pending().await,
    }
}

enum Step {
    Shutdown,
    Polled(PollOutput),
    Reconnect,
    Reply(String, Vec<u8>),
    HeadChanged(bool),
    Heartbeat,
    Housekeeping,
}

/// A lane's read-ahead from the journal.
struct ReadAhead<T> {
    buf: VecDeque<T>,
    /// The last read returned less than asked: nothing more until the
    /// journal's head moves.
    exhausted: bool,
}

impl<T> ReadAhead<T> {
    fn new() -> Self {
        ReadAhead {
            buf: VecDeque::new(),
            exhausted: false,
        }
    }
    fn reset(&mut self) {
        self.buf.clear();
        self.exhausted = false;
    }
    fn idle(&self) -> bool {
        self.buf.is_empty() && self.exhausted
    }
}

struct Uplink {
    cfg: super::UplinkConfig,
    topics: Topics,
    journal: Journal,
    status: Arc<GatewayStatus>,
    commands: mpsc::Sender<IncomingCommand>,
    running_commands: Arc<Semaphore>,
    client: AsyncClient,
    telemetry_qos: u8,
    pipeline: Pipeline,
    link: Link,
    backoff: Backoff,
    connected: bool,
    /// When the current connection attempt started (`status.since`).
    attempt_at: Timestamp,
    events_ahead: ReadAhead<StoredEvent>,
    telemetry_ahead: ReadAhead<StoredTelemetry>,
    journal_retry_at: Option<Instant>,
    /// Acknowledgements not yet written to the journal.
    acks: AckBatch,
    /// Command results waiting to be published.
    results: VecDeque<(String, Vec<u8>)>,
    /// Command results published and awaiting PUBACK, by token.
    results_in_flight: std::collections::BTreeMap<u64, (String, Vec<u8>)>,
    next_result_token: u64,
    replies_tx: mpsc::Sender<(String, Vec<u8>)>,
    abort: Arc<Notify>,
    head: Option<watch::Receiver<JournalHead>>,
    phase: Phase,
    /// `uplink.lost` / `uplink.restored` to record, in order.
    link_events: mpsc::UnboundedSender<NewEvent>,
}

/// Record link events one after another (so they keep their order) without
/// making the event loop wait for durability.
async fn record_link_events(journal: Journal, mut rx: mpsc::UnboundedReceiver<NewEvent>) {
    while let Some(ev) = rx.recv().await {
        let kind = ev.kind;
        if let Err(e) = journal.record(vec![ev]).await {
            tracing::error!(error = %e, kind = kind.as_str(), "cannot record uplink event");
        }
    }
}

/// Build the MQTT options (without the will, set before each attempt).
fn mqtt_options(
    ctx: &UplinkContext,
    cap: usize,
    inflight: u16,
) -> Result<MqttOptions, UplinkError> {
    let cfg = &ctx.config;
    let client_id = cfg
        .client_id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", ctx.site, ctx.gateway));
    let mut o = MqttOptions::new(client_id, cfg.host.clone(), cfg.port());
    // rumqttc refuses keepalives below one second.
    o.set_keep_alive(cfg.keepalive.max(Duration::from_secs(1)));
    o.set_clean_session(true);
    o.set_request_channel_capacity(cap);
    o.set_inflight(inflight);
    o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let Some(user) = &cfg.username {
        let pw = ctx.password.as_ref().map(|p| p.expose()).unwrap_or("");
        o.set_credentials(user.clone(), pw);
    }
    if let Some(tls) = &cfg.tls {
        let rustls = super::tls::client_config(tls)?;
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(rustls),
        ));
    }
    Ok(o)
}

pub(super) async fn run(ctx: UplinkContext, shutdown: CancellationToken) {
    let cfg = ctx.config.clone();
    let window = usize::from(cfg.inflight.max(1));
    let cap = window + TELEMETRY_WINDOW + OTHER_REQUESTS;
    let rumqttc_inflight = u16::try_from(window + TELEMETRY_WINDOW + 16).unwrap_or(u16::MAX);
    // Without usable options (e.g. unreadable TLS files) the uplink cannot
    // start; retry slowly, since the files may be fixed in place.
    // Alive while retrying, too: the gateway runs on locally without it.
    let alive = ctx.status.liveness.register("uplink", HEARTBEAT);
    let options = loop {
        alive.beat_within(cfg.reconnect_max + HEARTBEAT);
        match mqtt_options(&ctx, cap, rumqttc_inflight) {
            Ok(o) => break o,
            Err(e) => {
                tracing::error!(error = %e, "uplink cannot start");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(cfg.reconnect_max) => {}
                }
            }
        }
    };
    let (client, eventloop) = AsyncClient::new(options, cap);
    let mut eventloop = eventloop;
    eventloop
        .network_options
        .set_connection_timeout(cfg.keepalive.as_secs().clamp(2, 10));
    // An alarm is one small packet: send it now, not after Nagle's wait for
    // the previous packet's ACK (~40 ms with delayed ACKs).
    eventloop.network_options.set_tcp_nodelay(true);

    let confirm = if cfg.end_to_end_ack {
        Confirm::EndToEnd
    } else {
        Confirm::OnPubAck
    };
    let telemetry_qos = cfg.telemetry_qos.min(1);
    let tconfirm = if telemetry_qos == 0 {
        Confirm::OnWrite
    } else {
        Confirm::OnPubAck
    };
    let acked = ctx.journal.acked_seq(UPLINK_SINK);
    let acked_t = ctx.journal.acked_telemetry(UPLINK_SINK);
    let (replies_tx, replies_rx) = mpsc::channel(MAX_RUNNING_COMMANDS);
    // Unbounded is fine: one event per link change, and changes are paced
    // by the reconnect backoff.
    let (link_tx, link_rx) = mpsc::unbounded_channel();
    let recorder = tokio::spawn(record_link_events(ctx.journal.clone(), link_rx));
    let mut up = Uplink {
        topics: Topics::new(&ctx.site, &ctx.gateway),
        backoff: Backoff::new(cfg.reconnect_min, cfg.reconnect_max),
        pipeline: Pipeline::new(
            Lane::new(confirm, window, acked),
            Lane::new(tconfirm, TELEMETRY_WINDOW, acked_t),
        ),
        head: Some(ctx.journal.watch()),
        cfg,
        journal: ctx.journal,
        status: ctx.status,
        commands: ctx.commands,
        running_commands: Arc::new(Semaphore::new(MAX_RUNNING_COMMANDS)),
        client,
        telemetry_qos,
        link: Link::new(),
        connected: false,
        attempt_at: Timestamp::now(),
        events_ahead: ReadAhead::new(),
        telemetry_ahead: ReadAhead::new(),
        journal_retry_at: None,
        acks: AckBatch::new(ACK_FLUSH),
        results: VecDeque::new(),
        results_in_flight: std::collections::BTreeMap::new(),
        next_result_token: 0,
        replies_tx,
        abort: Arc::new(Notify::new()),
        phase: Phase::Offline,
        link_events: link_tx,
    };
    tracing::info!(
        host = %up.cfg.host,
        port = up.cfg.port(),
        tls = up.cfg.tls.is_some(),
        end_to_end_ack = up.cfg.end_to_end_ack,
        acked_seq = acked,
        "uplink starting"
    );
    let start = up.start_attempt(Box::new(eventloop));
    up.main_loop(start, replies_rx, shutdown, alive).await;
    // Let the recorder finish what is queued, then stop.
    drop(up);
    if tokio::time::timeout(SHUTDOWN_DRAIN, recorder)
        .await
        .is_err()
    {
        tracing::warn!("uplink events still being recorded at shutdown");
    }
}

impl Uplink {
    /// Set the will for the next connection attempt and poll.
    fn start_attempt(&mut self, mut el: Box<EventLoop>) -> PollFuture {
        // A fresh reset signal per connection: a reset asked for the last
        // one must not abort this one.
        self.abort = Arc::new(Notify::new());
        if el.network.is_none() {
            self.attempt_at = Timestamp::now();
            let will =
                StatusPayload::will(self.attempt_at, self.status.version, &self.status.boot_id);
            el.mqtt_options.set_last_will(LastWill::new(
                self.topics.status(),
                will.to_bytes(),
                QoS::AtLeastOnce,
                true,
            ));
        }
        poll_once(el, self.abort.clone())
    }

    async fn main_loop(
        &mut self,
        first: PollFuture,
        mut replies_rx: mpsc::Receiver<(String, Vec<u8>)>,
        shutdown: CancellationToken,
        alive: Heartbeat,
    ) {
        let mut poller: Option<PollFuture> = Some(first);
        let mut parked: Option<(Box<EventLoop>, tokio::time::Instant)> = None;
        // At least 1 s (validated; a config built in code may be shorter).
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat.max(Duration::from_secs(1)));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        // Housekeeping wakes the loop every 100 ms while something is in
        // flight, every second otherwise: a beat per iteration.
        let mut housekeeping_at = tokio::time::Instant::now() + HOUSEKEEPING;

        loop {
            alive.beat();
            let wake = parked.as_ref().map(|(_, at)| *at);
            // Not biased: during a long backlog drain the event loop is
            // always ready, and heartbeats, timeouts and command results
            // must still get their turn.
            let step = tokio::select! {
                _ = shutdown.cancelled() => Step::Shutdown,
                out = next_poll(&mut poller) => Step::Polled(out),
                _ = sleep_until_opt(wake) => Step::Reconnect,
                (id, payload) = next_reply(&mut replies_rx) => Step::Reply(id, payload),
                alive = head_changed(&mut self.head) => Step::HeadChanged(alive),
                _ = heartbeat.tick() => Step::Heartbeat,
                _ = tokio::time::sleep_until(housekeeping_at) => Step::Housekeeping,
            };
            let now = Instant::now();
            let step_was_housekeeping = matches!(step, Step::Housekeeping);
            match step {
                Step::Shutdown => {
                    let el = match (poller.take(), parked.take()) {
                        (Some(f), _) => {
                            self.abort.notify_one();
                            let (el, out) = f.await;
                            if let Some(out) = out {
                                // A last event the poll produced before the
                                // abort took effect.
                                if self.on_poll(now, out).is_err() {
                                    self.connected = false;
                                }
                            }
                            el
                        }
                        (None, Some((el, _))) => el,
                        (None, None) => return,
                    };
                    self.shutdown(el).await;
                    return;
                }
                Step::Polled((mut el, out)) => {
                    // The completed future must never be polled again.
                    poller = None;
                    let result = match out {
                        Some(r) => r,
                        None => Err(ConnectionError::Io(std::io::Error::other(
                            "connection reset by the uplink",
                        ))),
                    };
                    match self.on_poll(now, result) {
                        Ok(()) => poller = Some(poll_once(el, self.abort.clone())),
                        Err(reason) => {
                            // Nothing of this connection may leak into the
                            // next: clean session, the journal restarts it.
                            el.clean();
                            el.pending.clear();
                            el.state.events.clear();
                            // rumqttc keeps a stashed packet-id collision
                            // across `clean()`; left set, it would stop every
                            // later request from being sent (rumqtt #1014).
                            el.state.collision = None;
                            let delay = self.on_failure(now, &reason);
                            parked = Some((el, tokio::time::Instant::now() + delay));
                        }
                    }
                }
                Step::Reconnect => {
                    if let Some((el, _)) = parked.take() {
                        poller = Some(self.start_attempt(el));
                    }
                }
                Step::Reply(id, payload) => {
                    if self.results.len() >= MAX_PENDING_RESULTS {
                        if let Some((lost, _)) = self.results.pop_front() {
                            tracing::warn!(request_id = %lost, "command result dropped: too many waiting");
                        }
                    }
                    self.results.push_back((id, payload));
                }
                Step::HeadChanged(alive) => {
                    if alive {
                        self.events_ahead.exhausted = false;
                        self.telemetry_ahead.exhausted = false;
                    } else {
                        self.head = None;
                    }
                }
                Step::Heartbeat => self.heartbeat(),
                Step::Housekeeping => self.housekeeping(now),
            }
            if self.connected {
                self.send_results();
                self.pump(now);
            }
            self.flush_acks(now, false);
            self.update_phase();
            let period = if self.awaiting_acks() {
                HOUSEKEEPING
            } else {
                HOUSEKEEPING_IDLE
            };
            let mut soonest = tokio::time::Instant::now() + period;
            if let Some(due) = self.acks.due_at(Instant::now()) {
                soonest = soonest.min(tokio::time::Instant::from_std(due));
            }
            if step_was_housekeeping || soonest < housekeeping_at {
                housekeeping_at = soonest;
            }
        }
    }

    /// Publishes wait for their PUBACK or `events_ack`, acknowledgements
    /// wait to be written, or a journal read waits for its retry: the
    /// housekeeping checks have something to check.
    fn awaiting_acks(&self) -> bool {
        self.pipeline.events.in_flight() > 0
            || self.pipeline.telemetry.in_flight() > 0
            || !self.acks.is_empty()
            || self.journal_retry_at.is_some()
    }

    /// Handle one result of `EventLoop::poll`. `Err` means the connection is
    /// gone (with the reason).
    fn on_poll(&mut self, now: Instant, out: Result<Event, ConnectionError>) -> Result<(), String> {
        let ev = match out {
            Ok(ev) => ev,
            Err(e) => return Err(e.to_string()),
        };
        match ev {
            Event::Incoming(Incoming::ConnAck(ack)) => {
                if ack.code != rumqttc::ConnectReturnCode::Success {
                    return Err(format!("connection refused: {:?}", ack.code));
                }
                self.on_connected(now);
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let acks = self
                    .pipeline
                    .on_outgoing_publish(pkid)
                    .map_err(|e| UplinkError::from(e).to_string())?;
                self.take_acks(acks);
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(at) = self.pipeline.event_submitted_at(ack.pkid) {
                    self.status
                        .uplink_publish
                        .record(now.saturating_duration_since(at));
                }
                let acks = self.pipeline.on_puback(ack.pkid);
                self.take_acks(acks);
            }
            Event::Incoming(Incoming::Publish(p)) => self.on_message(&p.topic, &p.payload),
            Event::Incoming(Incoming::SubAck(ack)) => {
                for code in &ack.return_codes {
                    if matches!(code, rumqttc::SubscribeReasonCode::Failure) {
                        tracing::error!(pkid = ack.pkid, "broker refused an uplink subscription");
                    }
                }
            }
            Event::Incoming(Incoming::Disconnect) => {
                return Err("broker sent DISCONNECT".into());
            }
            _ => {}
        }
        Ok(())
    }

    fn on_connected(&mut self, now: Instant) {
        self.connected = true;
        self.status.uplink_connected.store(true, Ordering::Relaxed);
        if let Some(change) = self.link.on_connected(now) {
            self.record_link_change(change);
        }
        tracing::info!(
            host = %self.cfg.host,
            acked_seq = self.pipeline.events.acked(),
            "uplink connected"
        );
        // Clean session: subscribe again every time.
        if let Err(e) = self
            .client
            .try_subscribe(self.topics.commands_filter(), QoS::AtLeastOnce)
        {
            tracing::error!(error = %e, "cannot subscribe to commands");
        }
        if self.cfg.end_to_end_ack {
            if let Err(e) = self
                .client
                .try_subscribe(self.topics.events_ack(), QoS::AtLeastOnce)
            {
                tracing::error!(error = %e, "cannot subscribe to events_ack");
            }
        }
        let online =
            StatusPayload::online(self.attempt_at, self.status.version, &self.status.boot_id);
        self.publish_other(
            self.topics.status().to_string(),
            QoS::AtLeastOnce,
            true,
            online.to_bytes(),
        );
    }

    /// The connection dropped or an attempt failed; returns the wait before
    /// the next attempt.
    fn on_failure(&mut self, now: Instant, reason: &str) -> Duration {
        if self
            .link
            .up_for(now)
            .is_some_and(|d| d >= STABLE_CONNECTION)
        {
            self.backoff.reset();
        }
        self.connected = false;
        self.status.uplink_connected.store(false, Ordering::Relaxed);
        self.pipeline.on_disconnect();
        // Command results not confirmed by the broker go out again, first.
        let unconfirmed = std::mem::take(&mut self.results_in_flight);
        for (_, r) in unconfirmed.into_iter().rev() {
            self.results.push_front(r);
        }
        self.events_ahead.reset();
        self.telemetry_ahead.reset();
        let delay = self.backoff.next_delay(fastrand::f64());
        match self.link.on_failure(now, reason) {
            Some(change) => {
                tracing::warn!(
                    reason,
                    retry_in_ms = delay.as_millis() as u64,
                    "uplink lost"
                );
                self.record_link_change(change);
            }
            None => tracing::debug!(
                reason,
                retry_in_ms = delay.as_millis() as u64,
                "uplink connection attempt failed"
            ),
        }
        delay
    }

    fn record_link_change(&self, change: LinkChange) {
        let ev = match change {
            LinkChange::Lost { reason } => NewEvent::system(
                EventKind::UplinkLost,
                Priority::MEDIUM,
                serde_json::json!({"reason": reason, "host": self.cfg.host}),
            ),
            LinkChange::Restored { down_for } => NewEvent::system(
                EventKind::UplinkRestored,
                Priority::INFO,
                serde_json::json!({"down_for_s": down_for.as_secs_f64(), "host": self.cfg.host}),
            ),
        };
        // Recording waits for durability; the event loop must not. One
        // recorder task keeps lost/restored in order.
        if self.link_events.send(ev).is_err() {
            tracing::error!("uplink event recorder is gone");
        }
    }

    fn take_acks(&mut self, acks: Acks) {
        self.acks.add(&acks, Instant::now());
        if let Some(token) = acks.result {
            if let Some((id, _)) = self.results_in_flight.remove(&token) {
                tracing::debug!(request_id = %id, "command result delivered");
            }
        }
    }

    /// Write due acknowledgements to the journal: all of them when
    /// `force`, else as [`AckBatch::take`] says (the events' once the
    /// oldest has waited [`ACK_FLUSH`], the telemetry's when none is in
    /// flight or [`ACK_FLUSH`] after the last).
    fn flush_acks(&mut self, now: Instant, force: bool) {
        let telemetry_idle = self.pipeline.telemetry.in_flight() == 0;
        let (events, telemetry) = self.acks.take(now, force, telemetry_idle);
        let events = events.filter(|&upto| match self.journal.ack_events(UPLINK_SINK, upto) {
            Ok(()) => false,
            Err(e) => {
                tracing::error!(error = %e, upto, "cannot acknowledge events");
                true
            }
        });
        let telemetry =
            telemetry.filter(
                |&upto| match self.journal.ack_telemetry(UPLINK_SINK, upto) {
                    Ok(()) => false,
                    Err(e) => {
                        tracing::error!(error = %e, upto, "cannot acknowledge telemetry");
                        true
                    }
                },
            );
        // Failed writes are tried again a window later.
        self.acks.failed(events, telemetry, now);
    }

    fn on_message(&mut self, topic: &str, body: &[u8]) {
        match self.topics.parse(topic) {
            Some(Downlink::EventsAck) => match EventsAck::parse(body) {
                Ok(ack) if self.cfg.end_to_end_ack => {
                    let acks = self.pipeline.on_events_ack(ack.upto_seq);
                    self.take_acks(acks);
                }
                Ok(_) => tracing::debug!("events_ack ignored: end_to_end_ack is off"),
                Err(e) => tracing::warn!(error = %e, "malformed events_ack ignored"),
            },
            Some(Downlink::Command { request_id }) => self.on_command(request_id, body),
            Some(Downlink::InvalidCommand { request_id }) => {
                // Refused, and recorded as every command is; there is no
                // `cmd_result` topic to answer on.
                let shown: String = request_id
                    .chars()
                    .take(128)
                    .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                    .collect();
                tracing::warn!(request_id = %shown, "command with an invalid request id refused");
                record_refusal(
                    &self.journal,
                    &shown,
                    body,
                    "invalid request id: 1 to 128 bytes without control characters",
                );
            }
            None => tracing::warn!(topic, "message on an unexpected topic ignored"),
        }
    }

    /// Hand a command to the command path without blocking the event loop;
    /// its result comes back through `replies`.
    fn on_command(&mut self, request_id: &str, body: &[u8]) {
        let request_id = request_id.to_string();
        tracing::info!(request_id = %request_id, "command received");
        let Ok(permit) = self.running_commands.clone().try_acquire_owned() else {
            tracing::warn!(request_id = %request_id, "command refused: too many running");
            let reply = record_refusal(
                &self.journal,
                &request_id,
                body,
                "gateway busy: too many commands running",
            );
            self.results.push_back((request_id, reply));
            return;
        };
        let commands = self.commands.clone();
        let replies = self.replies_tx.clone();
        let journal = self.journal.clone();
        let body = body.to_vec();
        tokio::spawn(async move {
            let _permit = permit;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let cmd = IncomingCommand {
                request_id: request_id.clone(),
                payload: body.clone(),
                reply: tx,
            };
            let refused = |error: &str| record_refusal(&journal, &request_id, &body, error);
            let result = match commands.send(cmd).await {
                Ok(()) => match rx.await {
                    Ok(r) => r,
                    Err(_) => refused("command ended without a result"),
                },
                Err(_) => refused("command path unavailable"),
            };
            let _ = replies.send((request_id, result)).await;
        });
    }

    /// Publish waiting command results (QoS 1); each is kept until its
    /// PUBACK so that a reconnect sends it again.
    fn send_results(&mut self) {
        while let Some((id, body)) = self.results.pop_front() {
            let topic = self.topics.cmd_result(&id);
            match self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, body.clone())
            {
                Ok(()) => {
                    let token = self.next_result_token;
                    self.next_result_token += 1;
                    self.pipeline.submit_result(token);
                    self.results_in_flight.insert(token, (id, body));
                }
                Err(_) => {
                    self.results.push_front((id, body));
                    break;
                }
            }
        }
    }

    /// Hand an untracked publish to the client. False when the request
    /// channel is full.
    fn publish_other(&mut self, topic: String, qos: QoS, retain: bool, body: Vec<u8>) -> bool {
        match self.client.try_publish(topic, qos, retain, body) {
            Ok(()) => {
                self.pipeline.submit_other(qos as u8);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "publish request deferred");
                false
            }
        }
    }

    fn heartbeat(&mut self) {
        if !self.connected {
            return;
        }
        let s = &self.status;
        let hb = HeartbeatPayload {
            ts: Timestamp::now(),
            uptime_s: s.uptime_s(),
            backlog: self.backlog(),
            devices_online: GatewayStatus::get(&s.devices_online),
            devices_offline: GatewayStatus::get(&s.devices_offline),
            cameras_online: GatewayStatus::get(&s.cameras_online),
            alarms_active: GatewayStatus::get(&s.alarms_active),
        };
        self.publish_other(
            self.topics.heartbeat().to_string(),
            QoS::AtMostOnce,
            false,
            hb.to_bytes(),
        );
    }

    /// Events recorded but not yet acknowledged.
    fn backlog(&self) -> u64 {
        let last = self.head.as_ref().map(|h| h.borrow().last_seq).unwrap_or(0);
        last.saturating_sub(self.pipeline.events.acked())
    }

    fn housekeeping(&mut self, now: Instant) {
        if self.journal_retry_at.is_some_and(|t| now >= t) {
            self.journal_retry_at = None;
        }
        if !self.connected {
            return;
        }
        // No PUBACK in time: the broker is not answering on this connection.
        let stall = (self.cfg.keepalive * 2).max(Duration::from_secs(5));
        if self.pipeline.events.puback_overdue(now, stall)
            || self.pipeline.telemetry.puback_overdue(now, stall)
        {
            tracing::warn!(
                timeout_ms = stall.as_millis() as u64,
                "no PUBACK in time: resetting the connection"
            );
            self.reset_connection();
            return;
        }
        if self.cfg.end_to_end_ack && self.pipeline.events.overdue(now, self.cfg.ack_timeout) {
            tracing::warn!(
                from_seq = self.pipeline.events.acked() + 1,
                in_flight = self.pipeline.events.in_flight(),
                "no events_ack in time: publishing again"
            );
            self.pipeline.events.rewind();
            self.events_ahead.reset();
        }
    }

    /// Keep the windows full: events first (oldest first), telemetry only
    /// when no event is waiting.
    fn pump(&mut self, now: Instant) {
        if self.journal_retry_at.is_some() {
            return;
        }
        let topic = self.topics.events();
        while self.pipeline.events.free() > 0 {
            if self.events_ahead.buf.is_empty() {
                if self.events_ahead.exhausted {
                    break;
                }
                let after = self.pipeline.events.cursor();
                match self.journal.read_events(after, READ_BATCH) {
                    Ok(batch) => {
                        self.events_ahead.exhausted = batch.len() < READ_BATCH;
                        self.events_ahead.buf.extend(batch);
                        if self.events_ahead.buf.is_empty() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, after, "cannot read events from the journal");
                        self.journal_retry_at = Some(now + JOURNAL_RETRY);
                        return;
                    }
                }
            }
            let Some(ev) = self.events_ahead.buf.front_mut() else {
                break;
            };
            if ev.seq <= self.pipeline.events.cursor() {
                // Confirmed by the platform before its re-publication.
                self.events_ahead.buf.pop_front();
                continue;
            }
            if let Err(kept) =
                try_publish_owned(&self.client, topic, QoS::AtLeastOnce, &mut ev.payload)
            {
                if !kept {
                    self.events_ahead.reset();
                }
                break;
            }
            let seq = ev.seq;
            self.events_ahead.buf.pop_front();
            if let Err(e) = self.pipeline.submit_event(seq, now) {
                // Cannot happen (free and order checked); reset to be safe.
                tracing::error!(error = %e, seq, "event window out of step: resetting");
                self.reset_connection();
                return;
            }
        }
        if !self.events_ahead.idle() {
            return;
        }
        let topic = self.topics.telemetry();
        let qos = if self.telemetry_qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        while self.pipeline.telemetry.free() > 0 {
            if self.telemetry_ahead.buf.is_empty() {
                if self.telemetry_ahead.exhausted {
                    break;
                }
                let after = self.pipeline.telemetry.cursor();
                match self.journal.read_telemetry(after, TELEMETRY_WINDOW * 4) {
                    Ok(batch) => {
                        self.telemetry_ahead.exhausted = batch.len() < TELEMETRY_WINDOW * 4;
                        self.telemetry_ahead.buf.extend(batch);
                        if self.telemetry_ahead.buf.is_empty() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, after, "cannot read telemetry from the journal");
                        self.journal_retry_at = Some(now + JOURNAL_RETRY);
                        return;
                    }
                }
            }
            let Some(t) = self.telemetry_ahead.buf.front_mut() else {
                break;
            };
            if t.key <= self.pipeline.telemetry.cursor() {
                self.telemetry_ahead.buf.pop_front();
                continue;
            }
            if let Err(kept) = try_publish_owned(&self.client, topic, qos, &mut t.payload) {
                if !kept {
                    self.telemetry_ahead.reset();
                }
                break;
            }
            let key = t.key;
            self.telemetry_ahead.buf.pop_front();
            if let Err(e) = self.pipeline.submit_telemetry(key, qos as u8, now) {
                tracing::error!(error = %e, key, "telemetry window out of step: resetting");
                self.reset_connection();
                return;
            }
        }
    }

    /// Drop the current connection: the poll is aborted, the failure path
    /// cleans up and reconnects. Nothing more is submitted meanwhile.
    fn reset_connection(&mut self) {
        self.connected = false;
        self.abort.notify_one();
    }

    fn update_phase(&mut self) {
        let window = u64::from(self.cfg.inflight);
        let phase = self.phase.next(self.connected, self.backlog(), window);
        if phase != self.phase {
            tracing::info!(from = ?self.phase, to = ?phase, backlog = self.backlog(), "uplink phase");
            self.phase = phase;
        }
    }

    /// Clean stop: publish `offline` (reason shutdown), disconnect, and keep
    /// reading until the broker closes the connection (bounded by
    /// `SHUTDOWN_DRAIN`). Closing first, with the broker's last PUBACKs
    /// unread, would reset the connection (RST): a broker still sending
    /// those PUBACKs then fails its write, drops the client as lost before
    /// it reads the DISCONNECT, and publishes the last will instead of the
    /// offline status.
    async fn shutdown(&mut self, el: Box<EventLoop>) {
        let mut el = el;
        if self.connected {
            let bye = StatusPayload::shutdown(
                Timestamp::now(),
                self.status.version,
                &self.status.boot_id,
            );
            let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
            // The request queue may be full (command results, telemetry):
            // let the event loop send what is queued until the offline
            // status and the disconnect fit behind it.
            let mut published = false;
            let disconnecting = loop {
                published = published
                    || self.publish_other(
                        self.topics.status().to_string(),
                        QoS::AtLeastOnce,
                        true,
                        bye.to_bytes(),
                    );
                if published && self.client.try_disconnect().is_ok() {
                    break true;
                }
                let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, el.poll()).await else {
                    break false;
                };
                if self.on_poll(Instant::now(), Ok(ev)).is_err() {
                    break false;
                }
            };
            if disconnecting {
                let mut disconnect_sent = false;
                loop {
                    match tokio::time::timeout_at(deadline, el.poll()).await {
                        Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => disconnect_sent = true,
                        Ok(Ok(ev)) => {
                            // PUBACKs still count.
                            if self.on_poll(Instant::now(), Ok(ev)).is_err() {
                                break;
                            }
                        }
                        // After DISCONNECT the broker closes the connection:
                        // the end of the stop.
                        Ok(Err(_)) if disconnect_sent => break,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "uplink dropped during shutdown");
                            break;
                        }
                        Err(_) if disconnect_sent => {
                            tracing::debug!(
                                "the broker did not close the connection after DISCONNECT"
                            );
                            break;
                        }
                        Err(_) => {
                            tracing::warn!("uplink shutdown timed out before disconnecting");
                            break;
                        }
                    }
                }
            } else {
                tracing::warn!("could not queue the offline status at shutdown");
            }
        }
        self.connected = false;
        self.status.uplink_connected.store(false, Ordering::Relaxed);
        self.flush_acks(Instant::now(), true);
        tracing::info!(acked_seq = self.pipeline.events.acked(), "uplink stopped");
    }
}

/// Record the `command.executed` event of a command refused here, without
/// blocking the event loop; returns its `cmd_result` payload.
fn record_refusal(journal: &Journal, request_id: &str, payload: &[u8], error: &str) -> Vec<u8> {
    let journal = journal.clone();
    let (event, reply) = crate::command::refusal(request_id, payload, error);
    tokio::spawn(async move {
        if let Err(e) = journal.record(vec![event]).await {
            tracing::error!(error = %e, "cannot record a refused command");
        }
    });
    reply
}

/// Hand `payload` to rumqttc without copying it (the read-ahead entry is
/// dropped once published). When rumqttc's request queue is full the
/// payload comes back with the refused request and is put back:
/// `Err(true)`. `Err(false)`: it could not be put back (no publish in the
/// refused request, which rumqttc never does); the caller re-reads from
/// the journal, which still holds it.
fn try_publish_owned(
    client: &AsyncClient,
    topic: &str,
    qos: QoS,
    payload: &mut Vec<u8>,
) -> Result<(), bool> {
    match client.try_publish(topic, qos, false, std::mem::take(payload)) {
        Ok(()) => Ok(()),
        Err(
            ClientError::TryRequest(Request::Publish(p))
            | ClientError::Request(Request::Publish(p)),
        ) => {
            *payload = Vec::from(p.payload);
            Err(true)
        }
        Err(_) => Err(false),
    }
}
