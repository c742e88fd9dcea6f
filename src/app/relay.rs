//! The driver bus across reloads.
//!
//! Drivers send their [`BusMessage`]s into one channel that lives as long
//! as the field side ([`Relay::sender`]). Its receiving end is lent to the
//! current alarm task ([`Relay::lend`]), which reads it directly: no task
//! stands between the drivers and the alarm engine. A reload ends the
//! alarm task's turn ([`Relay::detach`]) with a mark sent into the bus
//! ([`BusMessage::Handover`]): the old alarm task takes everything sent
//! before the mark, then gives the receiving end back and drains and
//! ends; what kept drivers send meanwhile waits in the channel (a driver
//! waits when it is full, as on a slow alarm task) for the next alarm
//! task. No message is dropped or delivered twice.
//!
//! A kept driver still numbers its points as in the point table it was
//! started with; the lease moves each reading to the point's index in the
//! current table ([`Shift`], per device).
//!
//! A driver tells which points its device refuses to read
//! ([`BusMessage::Unreadable`]) only when that set changes. The bus keeps
//! each device's last such set across leases and hands it to the next
//! alarm task first, so a reload that keeps the driver does not forget a
//! fire panel that is partly unwatched.

use super::units::Shift;
use crate::point::{BusFeed, BusMessage, Confirmation, PointIndex, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Capacity of the driver bus. When full, drivers wait (alarms are never
/// dropped); a poll cycle is at most delayed.
pub(super) const BUS_CAPACITY: usize = 1024;

/// Index moves per device (devices whose indices do not move are absent);
/// `None`: the device's messages are dropped (a running driver's device
/// that the current table lacks or numbers differently).
pub(super) type Shifts = HashMap<Arc<str>, Option<Shift>>;

/// Each device's last [`BusMessage::Unreadable`] with points in it, in its
/// driver's numbering: what the device refuses to read now.
type Refusals = HashMap<Arc<str>, BusMessage>;

/// The bus's receiving end on its way back from a lease, with the
/// refusals as the lease last saw them.
type Returned = oneshot::Receiver<(mpsc::Receiver<BusMessage>, Refusals)>;

/// The bus of the field side.
pub(super) struct Relay {
    tx: mpsc::Sender<BusMessage>,
    /// The bus's receiving end while no alarm task has it.
    idle: Option<mpsc::Receiver<BusMessage>>,
    /// Messages a purge kept, in order: they go first to the next lease.
    held: VecDeque<BusMessage>,
    /// What devices refuse to read, while no lease has them.
    refusals: Refusals,
    /// While lent: the lease's turn and where the receiving end comes back.
    lent: Option<(u64, Returned)>,
    /// Turns handed out so far.
    turns: u64,
}

impl Relay {
    /// A bus with no alarm task reading it (messages wait).
    pub fn start() -> Relay {
        let (tx, rx) = mpsc::channel(BUS_CAPACITY);
        Relay {
            tx,
            idle: Some(rx),
            held: VecDeque::new(),
            refusals: Refusals::new(),
            lent: None,
            turns: 0,
        }
    }

    /// Where drivers send.
    pub fn sender(&self) -> mpsc::Sender<BusMessage> {
        self.tx.clone()
    }

    /// Lend the bus to a new alarm task: `first` (in the current table's
    /// numbering), then what each device refuses to read, then what a
    /// purge kept and what waits in the bus, then what drivers send, with
    /// indices moved by `shifts`. A lease still out is detached first: one
    /// alarm task reads the bus at a time.
    pub async fn lend(&mut self, first: Vec<BusMessage>, shifts: Shifts) -> Lease {
        self.detach().await;
        self.turns += 1;
        let turn = self.turns;
        let mut queue: VecDeque<BusMessage> = first.into();
        let mut refusals = std::mem::take(&mut self.refusals);
        // By device name, so that the order does not change from run to run.
        let mut refused: Vec<&BusMessage> = refusals.values().collect();
        refused.sort_by(|a, b| device_of(a).cmp(&device_of(b)));
        queue.extend(
            refused
                .into_iter()
                .filter_map(|m| shift(&shifts, m.clone())),
        );
        for m in &self.held {
            note_refusal(&mut refusals, m);
        }
        queue.extend(self.held.drain(..).filter_map(|m| shift(&shifts, m)));
        let rx = self.idle.take();
        if rx.is_none() {
            tracing::error!("driver bus lost; readings no longer reach the alarm engine");
        }
        let (back, returned) = oneshot::channel();
        self.lent = Some((turn, returned));
        Lease {
            first: queue,
            rx,
            shifts,
            turn,
            refusals,
            back: Some(back),
        }
    }

    /// End the current alarm task's turn: it takes what the bus holds now,
    /// then gives the bus back, and its feed ends (the task drains and
    /// stops). Returns once the bus is back; later messages wait for the
    /// next [`lend`](Self::lend).
    pub async fn detach(&mut self) {
        let Some((turn, mut returned)) = self.lent.take() else {
            return;
        };
        let rx = tokio::select! {
            biased;
            // The alarm task ended before its mark (it stopped on its own):
            // the bus came back with its lease; no mark needed.
            r = &mut returned => r.ok(),
            _ = self.tx.send(BusMessage::Handover { turn }) => returned.await.ok(),
        };
        match rx {
            Some((rx, refusals)) => {
                self.idle = Some(rx);
                self.refusals = refusals;
            }
            None => {
                tracing::error!(
                    "driver bus not given back; readings no longer reach the alarm engine"
                )
            }
        }
    }

    /// Drop the messages waiting (no alarm task reading) of `devices`,
    /// logged; returns how many. A reload calls it for the devices of the
    /// units it stopped after detaching: their messages may be numbered in
    /// a point table no alarm task will run with (a unit started by a
    /// reload that then rolled back).
    /// Their refusals are forgotten too: a driver started anew sends its own.
    pub fn purge(&mut self, devices: HashSet<Arc<str>>) -> usize {
        let Some(rx) = self.idle.as_mut() else {
            return 0;
        };
        if devices.is_empty() {
            return 0;
        }
        self.refusals.retain(|d, _| !devices.contains(d));
        while let Ok(m) = rx.try_recv() {
            // Marks of turns that ended before them are spent.
            if !matches!(m, BusMessage::Handover { .. }) {
                self.held.push_back(m);
            }
        }
        let before = self.held.len();
        self.held
            .retain(|m| device_of(m).is_none_or(|d| !devices.contains(d)));
        let n = before - self.held.len();
        if n > 0 {
            tracing::warn!(dropped = n, devices = ?devices, "bus messages of stopped drivers dropped (their point numbering no longer runs)");
        }
        n
    }

    /// End the relay (after [`detach`](Self::detach); drivers stopped).
    pub async fn close(mut self) {
        self.detach().await;
    }
}

/// The field's bus lent to one alarm task (see [`Relay::lend`]).
pub(super) struct Lease {
    /// Messages before the bus's.
    first: VecDeque<BusMessage>,
    /// The bus; `None` once given back.
    rx: Option<mpsc::Receiver<BusMessage>>,
    shifts: Shifts,
    /// This lease's turn: its mark ends it.
    turn: u64,
    /// What devices refuse to read, as the bus's messages say.
    refusals: Refusals,
    back: Option<oneshot::Sender<(mpsc::Receiver<BusMessage>, Refusals)>>,
}

/// What a lease does with a message from the bus.
enum Taken {
    Message(BusMessage),
    Skip,
    End,
}

impl Lease {
    fn take(&mut self, m: BusMessage) -> Taken {
        match m {
            BusMessage::Handover { turn } if turn == self.turn => {
                self.give_back();
                Taken::End
            }
            // The mark of a turn that ended before it came (its task
            // stopped first).
            BusMessage::Handover { .. } => Taken::Skip,
            m => {
                note_refusal(&mut self.refusals, &m);
                match shift(&self.shifts, m) {
                    Some(m) => Taken::Message(m),
                    None => Taken::Skip,
                }
            }
        }
    }

    fn give_back(&mut self) {
        if let (Some(rx), Some(back)) = (self.rx.take(), self.back.take()) {
            // The relay gone (the field stopped): the bus goes with it.
            let _ = back.send((rx, std::mem::take(&mut self.refusals)));
        }
    }
}

impl BusFeed for Lease {
    async fn recv(&mut self) -> Option<BusMessage> {
        if let Some(m) = self.first.pop_front() {
            return Some(m);
        }
        loop {
            let m = self.rx.as_mut()?.recv().await?;
            match self.take(m) {
                Taken::Message(m) => return Some(m),
                Taken::Skip => continue,
                Taken::End => return None,
            }
        }
    }

    fn try_recv(&mut self) -> Option<BusMessage> {
        if let Some(m) = self.first.pop_front() {
            return Some(m);
        }
        loop {
            let m = self.rx.as_mut()?.try_recv().ok()?;
            match self.take(m) {
                Taken::Message(m) => return Some(m),
                Taken::Skip => continue,
                Taken::End => return None,
            }
        }
    }
}

/// A lease dropped before its mark (its alarm task ended on its own, or
/// panicked) gives the bus back: nothing waiting in it is lost.
impl Drop for Lease {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Keep `m` as its device's refusals if it is an `Unreadable` with
/// points; one without ends them.
fn note_refusal(refusals: &mut Refusals, m: &BusMessage) {
    if let BusMessage::Unreadable { device, points, .. } = m {
        if points.is_empty() {
            refusals.remove(device);
        } else {
            refusals.insert(device.clone(), m.clone());
        }
    }
}

fn device_of(m: &BusMessage) -> Option<&Arc<str>> {
    match m {
        BusMessage::Readings { device, .. }
        | BusMessage::Confirmed { device, .. }
        | BusMessage::DeviceStatus { device, .. }
        | BusMessage::Unreadable { device, .. } => Some(device),
        BusMessage::Handover { .. } => None,
    }
}

/// Move a reading's indices to the current table. A reading outside its
/// device's points (none expected) is dropped, logged; so is every
/// message of a device whose shift is `None`.
pub(super) fn shift(shifts: &Shifts, m: BusMessage) -> Option<BusMessage> {
    // Nothing moves (no reload kept a driver whose points moved).
    if shifts.is_empty() {
        return Some(m);
    }
    if let Some(device) = device_of(&m) {
        if let Some(None) = shifts.get(device) {
            tracing::debug!(device = %device, "message of a device the alarm engine does not run dropped");
            return None;
        }
    }
    match m {
        BusMessage::Readings {
            device,
            ts,
            replied_at,
            mut readings,
        } => {
            if let Some(Some(s)) = shifts.get(&device) {
                readings.retain_mut(|r| match s.forward(r.point) {
                    Some(p) => {
                        r.point = p;
                        true
                    }
                    None => {
                        tracing::warn!(device = %device, point = r.point, "reading outside the device's points dropped");
                        false
                    }
                });
                if readings.is_empty() {
                    return None;
                }
            }
            Some(BusMessage::Readings {
                device,
                ts,
                replied_at,
                readings,
            })
        }
        BusMessage::Confirmed {
            device,
            ts,
            replied_at,
            points,
        } => {
            let points = match shifts.get(&device) {
                Some(Some(s)) => {
                    let shifted = Shifted {
                        inner: points,
                        shift: *s,
                    };
                    let kept = (0..shifted.count())
                        .filter(|&i| shifted.point(i).is_some())
                        .count();
                    if kept < shifted.count() {
                        tracing::warn!(device = %device, dropped = shifted.count() - kept, "confirmed points outside the device's points dropped");
                    }
                    if kept == 0 {
                        return None;
                    }
                    Arc::new(shifted) as Arc<dyn Confirmation>
                }
                _ => points,
            };
            Some(BusMessage::Confirmed {
                device,
                ts,
                replied_at,
                points,
            })
        }
        BusMessage::Unreadable {
            device,
            ts,
            mut points,
            reason,
        } => {
            if let Some(Some(s)) = shifts.get(&device) {
                // A point outside the device's span is one the current
                // table does not have: nothing to mark.
                points.retain_mut(|p| s.forward(*p).map(|q| *p = q).is_some());
            }
            Some(BusMessage::Unreadable {
                device,
                ts,
                points,
                reason,
            })
        }
        other => Some(other),
    }
}

/// A kept driver's confirmation with its points moved to the current
/// table (points outside the device's span: skipped).
#[derive(Debug)]
struct Shifted {
    inner: Arc<dyn Confirmation>,
    shift: Shift,
}

impl Confirmation for Shifted {
    fn count(&self) -> usize {
        self.inner.count()
    }

    fn point(&self, i: usize) -> Option<PointIndex> {
        self.inner.point(i).and_then(|p| self.shift.forward(p))
    }

    fn value(&self, i: usize) -> Option<Value> {
        self.inner.value(i)
    }
}

#[cfg(test)]
mod tests {
    use super::super::units::Span;
    use super::*;
    use crate::event::Timestamp;
    use crate::point::{Reading, Value};
    use std::time::Instant;

    fn readings(device: &str, points: &[u32]) -> BusMessage {
        BusMessage::Readings {
            device: device.into(),
            ts: Timestamp::now(),
            replied_at: Instant::now(),
            readings: points
                .iter()
                .map(|&p| Reading {
                    point: p,
                    value: Value::Int(p as i64),
                })
                .collect(),
        }
    }

    fn points(m: &BusMessage) -> Vec<(u32, Value)> {
        match m {
            BusMessage::Readings { readings, .. } => {
                readings.iter().map(|r| (r.point, r.value)).collect()
            }
            _ => panic!("not readings"),
        }
    }

    /// Device a's driver numbers its points 2..5; the table, 10..13.
    fn a_moved() -> Shifts {
        let mut shifts = Shifts::new();
        shifts.insert(
            "a".into(),
            Some(Shift {
                driver: Span { first: 2, len: 3 },
                table: 10,
            }),
        );
        shifts
    }

    fn unreadable(device: &str, points: Vec<u32>) -> BusMessage {
        BusMessage::Unreadable {
            device: device.into(),
            ts: Timestamp::now(),
            points,
            reason: Some("exception 2 (illegal data address) at holding 300".into()),
        }
    }

    #[test]
    fn readings_move_to_the_current_table() {
        let mut shifts = a_moved();
        shifts.insert("dropped".into(), None);
        let m = shift(&shifts, readings("a", &[2, 4])).unwrap();
        assert_eq!(points(&m), vec![(10, Value::Int(2)), (12, Value::Int(4))]);
        // Other devices pass as they are.
        let m = shift(&shifts, readings("b", &[2])).unwrap();
        assert_eq!(points(&m), vec![(2, Value::Int(2))]);
        // Outside the device's span: dropped.
        assert!(shift(&shifts, readings("a", &[5])).is_none());
        // A device the current table lacks: every message dropped.
        assert!(shift(&shifts, readings("dropped", &[0])).is_none());
        let status = BusMessage::DeviceStatus {
            device: "dropped".into(),
            ts: Timestamp::now(),
            online: false,
            reason: None,
        };
        assert!(shift(&shifts, status).is_none());
        // The points a device refuses to read move too.
        match shift(&shifts, unreadable("a", vec![3, 9])) {
            Some(BusMessage::Unreadable { points, .. }) => assert_eq!(points, [11]),
            m => panic!("{m:?}"),
        }
        assert!(shift(&shifts, unreadable("dropped", vec![0])).is_none());
    }

    fn confirmed(device: &str, points: &[u32]) -> BusMessage {
        BusMessage::Confirmed {
            device: device.into(),
            ts: Timestamp::now(),
            replied_at: Instant::now(),
            points: Arc::new(
                points
                    .iter()
                    .map(|&p| (p, Value::Int(p as i64)))
                    .collect::<Vec<_>>(),
            ),
        }
    }

    /// (point or none, value) of every entry of a confirmation.
    fn entries(m: &BusMessage) -> Vec<(Option<u32>, Option<Value>)> {
        match m {
            BusMessage::Confirmed { points, .. } => (0..points.count())
                .map(|i| (points.point(i), points.value(i)))
                .collect(),
            _ => panic!("not a confirmation"),
        }
    }

    #[test]
    fn confirmed_points_move_to_the_current_table() {
        let mut shifts = a_moved();
        shifts.insert("dropped".into(), None);
        let m = shift(&shifts, confirmed("a", &[4, 2])).unwrap();
        assert_eq!(
            entries(&m),
            vec![
                (Some(12), Some(Value::Int(4))),
                (Some(10), Some(Value::Int(2)))
            ]
        );
        // Outside the device's span: that entry is skipped, its value kept
        // in place so the others stay aligned.
        let m = shift(&shifts, confirmed("a", &[5, 3])).unwrap();
        assert_eq!(
            entries(&m),
            vec![(None, Some(Value::Int(5))), (Some(11), Some(Value::Int(3)))]
        );
        assert!(shift(&shifts, confirmed("a", &[5])).is_none());
        // Other devices pass as they are; a device the table lacks: dropped.
        let m = shift(&shifts, confirmed("b", &[2])).unwrap();
        assert_eq!(entries(&m), vec![(Some(2), Some(Value::Int(2)))]);
        assert!(shift(&shifts, confirmed("dropped", &[0])).is_none());
    }

    /// Read a lease until its turn ends, as an alarm task does; the
    /// points of each message.
    fn drain(mut lease: Lease) -> tokio::task::JoinHandle<Vec<u32>> {
        tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = lease.recv().await {
                got.extend(points(&m).into_iter().map(|(p, _)| p));
                // What is waiting is taken without waiting, as the alarm
                // task takes a poll round.
                while let Some(m) = lease.try_recv() {
                    got.extend(points(&m).into_iter().map(|(p, _)| p));
                }
            }
            got
        })
    }

    /// Every message of a lease until its turn ends.
    fn messages(mut lease: Lease) -> tokio::task::JoinHandle<Vec<BusMessage>> {
        tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = lease.recv().await {
                got.push(m);
            }
            got
        })
    }

    /// (device, points) of each `Unreadable` among `got`.
    fn refused(got: &[BusMessage]) -> Vec<(String, Vec<u32>)> {
        got.iter()
            .filter_map(|m| match m {
                BusMessage::Unreadable { device, points, .. } => {
                    Some((device.to_string(), points.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// A driver says what its device refuses to read only when that
    /// changes: after a reload that keeps the driver, the next alarm task
    /// must still hear it (a fire panel partly unwatched raises its
    /// communication-loss alarm again), moved to the new table; a set that
    /// emptied, or a device whose driver stopped, is not handed on.
    #[tokio::test]
    async fn what_a_device_refuses_to_read_goes_to_the_next_alarm_task() {
        let mut relay = Relay::start();
        let bus = relay.sender();
        let first = messages(relay.lend(Vec::new(), Shifts::new()).await);
        bus.send(unreadable("a", vec![3])).await.unwrap();
        bus.send(unreadable("b", vec![5])).await.unwrap();
        bus.send(unreadable("c", vec![6])).await.unwrap();
        bus.send(readings("a", &[2])).await.unwrap();
        relay.detach().await;
        assert_eq!(refused(&first.await.unwrap()).len(), 3);

        // The reload moved a's points; b and c are as they were.
        let shifts = a_moved();
        let second = messages(relay.lend(vec![readings("a", &[10])], shifts.clone()).await);
        // b's device reads everything again.
        bus.send(unreadable("b", Vec::new())).await.unwrap();
        relay.detach().await;
        let got = second.await.unwrap();
        // The lease's own first messages (the carried values) come first,
        // then the refusals, then the bus.
        assert!(matches!(&got[0], BusMessage::Readings { .. }));
        assert_eq!(
            refused(&got),
            [
                ("a".to_string(), vec![11]),
                ("b".to_string(), vec![5]),
                ("c".to_string(), vec![6]),
                ("b".to_string(), vec![]),
            ]
        );

        // c's driver stopped (its unit changed): a new one sends its own.
        relay.purge(["c".into()].into_iter().collect());
        let third = messages(relay.lend(Vec::new(), shifts).await);
        relay.detach().await;
        assert_eq!(
            refused(&third.await.unwrap()),
            [("a".to_string(), vec![11])]
        );
    }

    #[tokio::test]
    async fn switching_alarm_tasks_loses_and_repeats_nothing() {
        let mut relay = Relay::start();
        let bus = relay.sender();
        let a = drain(relay.lend(Vec::new(), Shifts::new()).await);
        for i in 0..100u32 {
            bus.send(readings("a", &[i])).await.unwrap();
        }
        relay.detach().await;
        // Sent while no alarm task reads the bus: waits.
        for i in 100..200u32 {
            bus.send(readings("a", &[i])).await.unwrap();
        }
        // The old alarm task's feed ended after the mark.
        let first = a.await.unwrap();
        let mut shifts = Shifts::new();
        shifts.insert(
            "a".into(),
            Some(Shift {
                driver: Span {
                    first: 0,
                    len: 1000,
                },
                table: 1000,
            }),
        );
        let b = drain(relay.lend(Vec::new(), shifts).await);
        for i in 200..300u32 {
            bus.send(readings("a", &[i])).await.unwrap();
        }
        relay.detach().await;
        // Waiting while detached: a purge drops the named devices'
        // messages and keeps the others in order.
        for i in 300..310u32 {
            bus.send(readings(if i % 2 == 0 { "a" } else { "gone" }, &[i]))
                .await
                .unwrap();
        }
        assert_eq!(relay.purge(["gone".into()].into_iter().collect()), 5);
        bus.send(readings("a", &[310])).await.unwrap();
        // A lease's own first messages come before the bus's.
        let c = drain(relay.lend(vec![readings("b", &[7])], Shifts::new()).await);
        relay.detach().await;
        assert_eq!(c.await.unwrap(), vec![7, 300, 302, 304, 306, 308, 310]);
        drop(bus);
        relay.close().await;
        assert_eq!(first, (0..100).collect::<Vec<_>>());
        assert_eq!(b.await.unwrap(), (1100..1300).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_lease_dropped_before_its_mark_gives_the_bus_back() {
        let mut relay = Relay::start();
        let bus = relay.sender();
        // An alarm task that takes one message and ends on its own.
        let mut lease = relay.lend(Vec::new(), Shifts::new()).await;
        bus.send(readings("a", &[1])).await.unwrap();
        bus.send(readings("a", &[2])).await.unwrap();
        let m = lease.recv().await.unwrap();
        assert_eq!(points(&m), vec![(1, Value::Int(1))]);
        drop(lease);
        // Detaching does not wait for a mark no one will read.
        tokio::time::timeout(std::time::Duration::from_secs(5), relay.detach())
            .await
            .expect("detach returned");
        // A mark sent for a turn whose task ends before reading it is
        // skipped by the next lease; the messages around it are kept.
        let lease = relay.lend(Vec::new(), Shifts::new()).await;
        bus.send(BusMessage::Handover { turn: 1 }).await.unwrap();
        bus.send(readings("a", &[3])).await.unwrap();
        let next = drain(lease);
        relay.detach().await;
        assert_eq!(next.await.unwrap(), vec![2, 3]);
    }

    #[tokio::test]
    async fn a_full_bus_is_taken_up_to_the_mark() {
        let mut relay = Relay::start();
        let bus = relay.sender();
        let mut lease = relay.lend(Vec::new(), Shifts::new()).await;
        // The bus full before the detach: the mark waits for room, the
        // alarm task takes every message before it.
        for i in 0..BUS_CAPACITY as u32 {
            bus.send(readings("a", &[i])).await.unwrap();
        }
        let reader = tokio::spawn(async move {
            let mut n = 0u32;
            while let Some(m) = lease.recv().await {
                assert_eq!(points(&m)[0].0, n);
                n += 1;
            }
            n
        });
        relay.detach().await;
        assert_eq!(reader.await.unwrap(), BUS_CAPACITY as u32);
    }
}
