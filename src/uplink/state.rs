//! The uplink's delivery state, without I/O (in the manner of rumqttc's
//! `MqttState`: methods modify state, no network operations).
//!
//! - [`Lane`]: one journal lane (events or telemetry) in flight: the window
//!   of submitted but unconfirmed keys, the contiguous acknowledgement point,
//!   re-publication after a timeout or a reconnect (go-back-N from the
//!   acknowledged point).
//! - [`Submissions`]: which publish request got which MQTT packet id.
//!   rumqttc's `publish` does not say; its event loop reports
//!   `Outgoing::Publish(pkid)` in the order requests were made, then
//!   `Incoming::PubAck(pkid)`.
//! - [`Pipeline`]: both lanes and the submissions, glued together.
//! - [`Link`]: connected / disconnected, with the state changes that must
//!   become `uplink.lost` / `uplink.restored` events.
//! - [`Backoff`]: exponential reconnect delays with jitter.
//!
//! Time is passed in (`now: Instant`), never read, so tests need no sleeps.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// When a lane's message counts as delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirm {
    /// As soon as it is written to the connection (QoS 0 telemetry).
    OnWrite,
    /// On the broker's PUBACK (QoS 1).
    OnPubAck,
    /// Only on the platform's own receipt (`events_ack`).
    EndToEnd,
}

/// Identifies one submitted publish request so that late answers for an
/// abandoned attempt (before a rewind or reconnect) are recognised and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// An event of the journal's events lane.
    Event { seq: u64, epoch: u64 },
    /// A telemetry message of the journal's telemetry lane.
    Telemetry { key: u64, epoch: u64 },
    /// A command result, known by a token of the caller's choosing: kept
    /// until its PUBACK so that a reconnect can send it again.
    Result { token: u64 },
    /// Anything else (status, heartbeat): not tracked.
    Other,
}

#[derive(Clone, Debug)]
struct Slot {
    key: u64,
    submitted_at: Instant,
    written: bool,
    pubacked: bool,
    confirmed: bool,
}

/// One journal lane in flight: keys strictly increasing, each submitted once
/// per epoch, confirmed in any order, acknowledged to the journal only as a
/// contiguous prefix.
#[derive(Clone, Debug)]
pub struct Lane {
    confirm: Confirm,
    capacity: usize,
    /// Highest key whose whole prefix is confirmed (the journal cursor).
    acked: u64,
    /// Highest key handed out for publishing in this epoch.
    cursor: u64,
    /// Highest key ever submitted (any epoch).
    high: u64,
    /// Bumped on every rewind; answers tagged with an older epoch are stale.
    epoch: u64,
    slots: VecDeque<Slot>,
}

/// A lane refused a submission: the caller broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaneError {
    #[error("window full ({0} in flight)")]
    Full(usize),
    #[error("key {key} is not after the cursor {cursor}")]
    OutOfOrder { key: u64, cursor: u64 },
}

impl Lane {
    /// A lane whose journal cursor is `acked`, allowing `capacity` keys in flight.
    pub fn new(confirm: Confirm, capacity: usize, acked: u64) -> Lane {
        Lane {
            confirm,
            capacity: capacity.max(1),
            acked,
            cursor: acked,
            high: acked,
            epoch: 0,
            slots: VecDeque::new(),
        }
    }

    pub fn confirm(&self) -> Confirm {
        self.confirm
    }
    /// Highest key acknowledged as a contiguous prefix.
    pub fn acked(&self) -> u64 {
        self.acked
    }
    /// Highest key submitted in this epoch; read the journal after it.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    /// Keys submitted and not yet confirmed.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }
    /// How many more keys may be submitted now.
    pub fn free(&self) -> usize {
        self.capacity.saturating_sub(self.slots.len())
    }

    /// Record that `key` has been handed to the MQTT client; returns the
    /// epoch its answers must carry.
    pub fn submit(&mut self, key: u64, now: Instant) -> Result<u64, LaneError> {
        if self.free() == 0 {
            return Err(LaneError::Full(self.slots.len()));
        }
        if key <= self.cursor {
            return Err(LaneError::OutOfOrder {
                key,
                cursor: self.cursor,
            });
        }
        self.cursor = key;
        self.high = self.high.max(key);
        self.slots.push_back(Slot {
            key,
            submitted_at: now,
            written: false,
            pubacked: false,
            confirmed: false,
        });
        Ok(self.epoch)
    }

    fn slot_mut(&mut self, key: u64, epoch: u64) -> Option<&mut Slot> {
        if epoch != self.epoch {
            return None;
        }
        let i = self.slots.binary_search_by_key(&key, |s| s.key).ok()?;
        self.slots.get_mut(i)
    }

    /// When `key` (of `epoch`) was submitted, while it is in flight.
    pub fn submitted_at(&self, key: u64, epoch: u64) -> Option<Instant> {
        if epoch != self.epoch {
            return None;
        }
        let i = self.slots.binary_search_by_key(&key, |s| s.key).ok()?;
        Some(self.slots[i].submitted_at)
    }

    /// The request for `key` was written to the connection.
    /// Returns the new acknowledgement point if it advanced.
    pub fn on_written(&mut self, key: u64, epoch: u64) -> Option<u64> {
        let confirm = self.confirm;
        let slot = self.slot_mut(key, epoch)?;
        slot.written = true;
        if confirm == Confirm::OnWrite {
            slot.confirmed = true;
        }
        self.advance()
    }

    /// The broker acknowledged `key` (PUBACK).
    /// Returns the new acknowledgement point if it advanced.
    pub fn on_puback(&mut self, key: u64, epoch: u64) -> Option<u64> {
        let confirm = self.confirm;
        let slot = self.slot_mut(key, epoch)?;
        slot.written = true;
        slot.pubacked = true;
        if confirm != Confirm::EndToEnd {
            slot.confirmed = true;
        }
        self.advance()
    }

    /// The platform confirmed every key up to `upto` (`events_ack`).
    /// Only keys this process has submitted (in any epoch) can be
    /// confirmed, so a receipt beyond them is capped. Returns the new
    /// acknowledgement point if it advanced.
    pub fn on_remote_ack(&mut self, upto: u64) -> Option<u64> {
        if self.confirm != Confirm::EndToEnd {
            return None;
        }
        let upto = upto.min(self.high);
        if upto <= self.acked {
            return None;
        }
        while self.slots.front().is_some_and(|s| s.key <= upto) {
            self.slots.pop_front();
        }
        self.acked = upto;
        // Keys confirmed before their re-publication are not sent again.
        self.cursor = self.cursor.max(upto);
        Some(upto)
    }

    fn advance(&mut self) -> Option<u64> {
        let mut upto = None;
        while self.slots.front().is_some_and(|s| s.confirmed) {
            let s = self.slots.pop_front().expect("front checked");
            upto = Some(s.key);
        }
        match upto {
            Some(k) if k > self.acked => {
                self.acked = k;
                Some(k)
            }
            _ => None,
        }
    }

    /// The oldest unconfirmed key has waited longer than `timeout`.
    pub fn overdue(&self, now: Instant, timeout: Duration) -> bool {
        self.slots
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.submitted_at) >= timeout)
    }

    /// The oldest key still without a PUBACK was submitted longer than
    /// `timeout` ago: the broker is not answering.
    pub fn puback_overdue(&self, now: Instant, timeout: Duration) -> bool {
        self.slots
            .iter()
            .find(|s| !s.pubacked)
            .is_some_and(|s| now.saturating_duration_since(s.submitted_at) >= timeout)
    }

    /// Forget everything in flight and start again after the acknowledged
    /// point (after a reconnect, or when confirmations are overdue). Answers
    /// to earlier submissions become stale.
    pub fn rewind(&mut self) {
        self.slots.clear();
        self.cursor = self.acked;
        self.epoch += 1;
    }
}

/// rumqttc reported something that does not match what was submitted: the
/// bookkeeping can no longer be trusted and the connection must be reset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Desync {
    #[error("outgoing publish (pkid {0}) without a matching request")]
    UnexpectedPublish(u16),
    #[error("outgoing publish with pkid {pkid} for a request of QoS {qos}")]
    QosMismatch { pkid: u16, qos: u8 },
}

/// Which publish request got which packet id.
#[derive(Debug, Default)]
pub struct Submissions {
    /// Requests handed to the client whose `Outgoing::Publish` has not been seen.
    queued: VecDeque<(Tag, u8)>,
    /// QoS ≥ 1 requests written and awaiting PUBACK.
    by_pkid: HashMap<u16, Tag>,
}

impl Submissions {
    /// A publish request with `qos` was handed to the client.
    pub fn push(&mut self, tag: Tag, qos: u8) {
        self.queued.push_back((tag, qos));
    }

    /// rumqttc wrote the next request with `pkid` (0 for QoS 0).
    pub fn on_outgoing_publish(&mut self, pkid: u16) -> Result<Tag, Desync> {
        let (tag, qos) = self
            .queued
            .pop_front()
            .ok_or(Desync::UnexpectedPublish(pkid))?;
        match (qos, pkid) {
            (0, 0) => Ok(tag),
            (0, _) | (_, 0) => Err(Desync::QosMismatch { pkid, qos }),
            (_, p) => {
                self.by_pkid.insert(p, tag);
                Ok(tag)
            }
        }
    }

    /// The broker acknowledged `pkid`. `None` for unknown (stale) ids.
    pub fn on_puback(&mut self, pkid: u16) -> Option<Tag> {
        self.by_pkid.remove(&pkid)
    }

    /// The connection is gone: nothing queued or in flight will be answered.
    pub fn reset(&mut self) {
        self.queued.clear();
        self.by_pkid.clear();
    }

    /// Requests queued or awaiting PUBACK.
    pub fn len(&self) -> usize {
        self.queued.len() + self.by_pkid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Journal acknowledgements that became due.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Acks {
    /// Acknowledge events up to this seq.
    pub events: Option<u64>,
    /// Acknowledge telemetry up to this key.
    pub telemetry: Option<u64>,
    /// The command result with this token reached the broker.
    pub result: Option<u64>,
}

/// Acknowledgements waiting to be written to the journal. The events'
/// are gathered for `window` from the first: a burst of PUBACKs (one per
/// alarm) becomes one journal write. The telemetry's are written as soon
/// as no telemetry is in flight, and at most a window apart while a
/// stream of it is: telemetry messages are few and large, and the journal
/// frees their space only once they are acknowledged (gathering them like
/// the events' raised the peak memory of a 200-device start-up by about
/// 1.4 MB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckBatch {
    window: Duration,
    /// Events up to this seq, telemetry up to this key.
    events: Option<u64>,
    telemetry: Option<u64>,
    /// When the oldest of the events' acknowledgements arrived.
    since: Option<Instant>,
    /// When the telemetry's acknowledgement was last taken.
    telemetry_taken: Option<Instant>,
}

impl AckBatch {
    pub fn new(window: Duration) -> AckBatch {
        AckBatch {
            window,
            events: None,
            telemetry: None,
            since: None,
            telemetry_taken: None,
        }
    }

    /// Add the journal acknowledgements of `acks`, arrived at `now`.
    pub fn add(&mut self, acks: &Acks, now: Instant) {
        self.events = acks.events.max(self.events);
        self.telemetry = acks.telemetry.max(self.telemetry);
        if acks.events.is_some() && self.since.is_none() {
            self.since = Some(now);
        }
    }

    /// What to write now: the events' acknowledgement when `force` or once
    /// the oldest has waited the window; the telemetry's when `force`,
    /// when no telemetry is in flight (`telemetry_idle`) or a window after
    /// the last one. The caller hands back what it could not write with
    /// [`failed`](Self::failed).
    pub fn take(
        &mut self,
        now: Instant,
        force: bool,
        telemetry_idle: bool,
    ) -> (Option<u64>, Option<u64>) {
        let events = match self.since {
            Some(since) if force || now.duration_since(since) >= self.window => {
                self.since = None;
                self.events.take()
            }
            _ => None,
        };
        let telemetry_due = force
            || telemetry_idle
            || self
                .telemetry_taken
                .is_none_or(|t| now.duration_since(t) >= self.window);
        let telemetry = match self.telemetry {
            Some(_) if telemetry_due => {
                self.telemetry_taken = Some(now);
                self.telemetry.take()
            }
            _ => None,
        };
        (events, telemetry)
    }

    /// Writes that failed at `now`: the events' tried again a window
    /// later, the telemetry's at the next turn (unless newer
    /// acknowledgements came meanwhile, which cover them).
    pub fn failed(&mut self, events: Option<u64>, telemetry: Option<u64>, now: Instant) {
        self.add(
            &Acks {
                events,
                telemetry,
                result: None,
            },
            now,
        );
    }

    /// When the waiting acknowledgements are due, `now` if at once
    /// (`None`: none wait).
    pub fn due_at(&self, now: Instant) -> Option<Instant> {
        let telemetry = self
            .telemetry
            .map(|_| self.telemetry_taken.map_or(now, |t| t + self.window));
        match (self.since.map(|s| s + self.window), telemetry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.since.is_none() && self.telemetry.is_none()
    }
}

/// Both lanes and the packet-id bookkeeping.
#[derive(Debug)]
pub struct Pipeline {
    pub events: Lane,
    pub telemetry: Lane,
    subs: Submissions,
}

impl Pipeline {
    pub fn new(events: Lane, telemetry: Lane) -> Pipeline {
        Pipeline {
            events,
            telemetry,
            subs: Submissions::default(),
        }
    }

    /// An event was handed to the client (QoS 1).
    pub fn submit_event(&mut self, seq: u64, now: Instant) -> Result<Tag, LaneError> {
        let epoch = self.events.submit(seq, now)?;
        let tag = Tag::Event { seq, epoch };
        self.subs.push(tag, 1);
        Ok(tag)
    }

    /// A telemetry message was handed to the client with `qos`.
    pub fn submit_telemetry(&mut self, key: u64, qos: u8, now: Instant) -> Result<Tag, LaneError> {
        let epoch = self.telemetry.submit(key, now)?;
        let tag = Tag::Telemetry { key, epoch };
        self.subs.push(tag, qos);
        Ok(tag)
    }

    /// A command result (QoS 1) was handed to the client.
    pub fn submit_result(&mut self, token: u64) {
        self.subs.push(Tag::Result { token }, 1);
    }

    /// Some other publish (status, heartbeat) was handed to the client.
    pub fn submit_other(&mut self, qos: u8) {
        self.subs.push(Tag::Other, qos);
    }

    /// `Outgoing::Publish(pkid)` from the event loop.
    pub fn on_outgoing_publish(&mut self, pkid: u16) -> Result<Acks, Desync> {
        let tag = self.subs.on_outgoing_publish(pkid)?;
        let mut acks = Acks::default();
        match tag {
            Tag::Event { seq, epoch } => acks.events = self.events.on_written(seq, epoch),
            Tag::Telemetry { key, epoch } => acks.telemetry = self.telemetry.on_written(key, epoch),
            Tag::Result { .. } | Tag::Other => {}
        }
        Ok(acks)
    }

    /// When the event publish awaiting PUBACK `pkid` was submitted (ask
    /// before [`Pipeline::on_puback`]): its publish latency, for metrics.
    pub fn event_submitted_at(&self, pkid: u16) -> Option<Instant> {
        match self.subs.by_pkid.get(&pkid)? {
            Tag::Event { seq, epoch } => self.events.submitted_at(*seq, *epoch),
            _ => None,
        }
    }

    /// `Incoming::PubAck(pkid)` from the event loop.
    pub fn on_puback(&mut self, pkid: u16) -> Acks {
        let mut acks = Acks::default();
        match self.subs.on_puback(pkid) {
            Some(Tag::Event { seq, epoch }) => acks.events = self.events.on_puback(seq, epoch),
            Some(Tag::Telemetry { key, epoch }) => {
                acks.telemetry = self.telemetry.on_puback(key, epoch)
            }
            Some(Tag::Result { token }) => acks.result = Some(token),
            Some(Tag::Other) | None => {}
        }
        acks
    }

    /// The platform's `events_ack`.
    pub fn on_events_ack(&mut self, upto: u64) -> Acks {
        Acks {
            events: self.events.on_remote_ack(upto),
            ..Acks::default()
        }
    }

    /// The connection dropped (clean session: everything in flight is lost):
    /// restart both lanes after their acknowledged points.
    pub fn on_disconnect(&mut self) {
        self.subs.reset();
        self.events.rewind();
        self.telemetry.rewind();
    }

    /// Requests queued or awaiting PUBACK (all kinds).
    pub fn outstanding(&self) -> usize {
        self.subs.len()
    }
}

/// Where the uplink stands, for the logs (one line per change).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not connected to the platform's broker.
    Offline,
    /// Connected and delivering a backlog: events recorded while offline,
    /// or more waiting than the in-flight window holds.
    Backlog,
    /// Connected and caught up. Events in flight (published, not yet
    /// acknowledged) are the normal traffic of this phase, not a backlog.
    Online,
}

impl Phase {
    /// The phase after this one, given the link and the events recorded
    /// but not yet acknowledged (`backlog`). Once caught up, the uplink
    /// stays online until more than `window` events wait, so each event in
    /// flight does not count as a backlog (and a log line) of its own.
    pub fn next(self, connected: bool, backlog: u64, window: u64) -> Phase {
        match (self, connected) {
            (_, false) => Phase::Offline,
            (Phase::Online, true) if backlog <= window => Phase::Online,
            (_, true) if backlog == 0 => Phase::Online,
            (_, true) => Phase::Backlog,
        }
    }
}

/// A change of the link that must be recorded as an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// `uplink.lost`.
    Lost { reason: String },
    /// `uplink.restored`, after `down_for`.
    Restored { down_for: Duration },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// Not connected yet since start; no attempt has failed.
    Starting,
    Up {
        since: Instant,
    },
    /// Down since `since`; `uplink.lost` was reported.
    Down {
        since: Instant,
    },
}

/// The link's state, reporting only changes (not every failed retry).
#[derive(Clone, Debug)]
pub struct Link {
    state: LinkState,
}

impl Default for Link {
    fn default() -> Self {
        Link::new()
    }
}

impl Link {
    pub fn new() -> Link {
        Link {
            state: LinkState::Starting,
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, LinkState::Up { .. })
    }

    /// How long the current connection has been up.
    pub fn up_for(&self, now: Instant) -> Option<Duration> {
        match self.state {
            LinkState::Up { since } => Some(now.saturating_duration_since(since)),
            _ => None,
        }
    }

    /// The broker accepted the connection (CONNACK).
    pub fn on_connected(&mut self, now: Instant) -> Option<LinkChange> {
        let change = match self.state {
            LinkState::Down { since } => Some(LinkChange::Restored {
                down_for: now.saturating_duration_since(since),
            }),
            LinkState::Starting | LinkState::Up { .. } => None,
        };
        self.state = LinkState::Up { since: now };
        change
    }

    /// The connection dropped, or an attempt failed. Reported once per
    /// outage: when an established link drops, or when the very first
    /// attempt after start fails.
    pub fn on_failure(&mut self, now: Instant, reason: &str) -> Option<LinkChange> {
        match self.state {
            LinkState::Down { .. } => None,
            LinkState::Starting | LinkState::Up { .. } => {
                self.state = LinkState::Down { since: now };
                Some(LinkChange::Lost {
                    reason: reason.to_string(),
                })
            }
        }
    }
}

/// Exponential reconnect delays with jitter: attempt n waits a random time
/// in `[max(min, d/2), d]` where `d = min(min × 2ⁿ, max)`.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next delay; `unit` is a random number in `[0, 1]`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        let ceiling = self.min.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let floor = (ceiling / 2).max(self.min);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        floor + (ceiling - floor).mul_f64(unit)
    }

    /// Start again from `min` (after a connection that held).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests;
