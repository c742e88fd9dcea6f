//! The driver bus across reloads.
//!
//! Drivers send their [`BusMessage`]s into one channel that lives as long
//! as the field side ([`Relay::sender`]); a small task forwards them to the
//! current alarm task. A reload [`detach`](Relay::detach)es the old alarm
//! task — what is queued at that moment is forwarded to it first, then its
//! channel is released so it drains and ends — and
//! [`attach`](Relay::attach)es the new one. Meanwhile kept drivers go on
//! sending: their messages wait in the channel (a driver waits when it is
//! full, as on a slow alarm task) and go to the new alarm task. No message
//! is dropped or delivered twice.
//!
//! A kept driver still numbers its points as in the point table it was
//! started with; the relay moves each reading to the point's index in the
//! current table ([`Shift`], per device).

use super::units::Shift;
use crate::point::{BusMessage, Confirmation, PointIndex, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Capacity of the driver bus. When full, drivers wait (alarms are never
/// dropped); a poll cycle is at most delayed.
pub(super) const BUS_CAPACITY: usize = 1024;

/// Index moves per device (devices whose indices do not move are absent);
/// `None`: the device's messages are dropped (a running driver's device
/// that the current table lacks or numbers differently).
pub(super) type Shifts = HashMap<Arc<str>, Option<Shift>>;

enum Ctl {
    Attach(mpsc::Sender<BusMessage>, Shifts),
    Detach(oneshot::Sender<()>),
    Purge(HashSet<Arc<str>>, oneshot::Sender<usize>),
}

/// The bus of the field side and its forwarding task.
pub(super) struct Relay {
    tx: mpsc::Sender<BusMessage>,
    ctl: mpsc::Sender<Ctl>,
    task: JoinHandle<()>,
}

impl Relay {
    /// A bus with no alarm task attached (messages wait).
    pub fn start() -> Relay {
        let (tx, rx) = mpsc::channel(BUS_CAPACITY);
        let (ctl, ctl_rx) = mpsc::channel(4);
        let task = tokio::spawn(run(rx, ctl_rx));
        Relay { tx, ctl, task }
    }

    /// Where drivers send.
    pub fn sender(&self) -> mpsc::Sender<BusMessage> {
        self.tx.clone()
    }

    /// Forward from now on to `to`, moving indices by `shifts`.
    pub async fn attach(&self, to: mpsc::Sender<BusMessage>, shifts: Shifts) {
        if self.ctl.send(Ctl::Attach(to, shifts)).await.is_err() {
            tracing::error!("bus relay gone; readings no longer reach the alarm engine");
        }
    }

    /// Forward what is queued now to the attached alarm task, then let go
    /// of it (its bus closes once it has taken everything). Returns once
    /// done; later messages wait for the next [`attach`](Self::attach).
    pub async fn detach(&self) {
        let (done, wait) = oneshot::channel();
        if self.ctl.send(Ctl::Detach(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Drop the messages waiting (no alarm task attached) of `devices`,
    /// logged; returns how many. A reload calls it for the devices of the
    /// units it stopped after detaching: their messages may be numbered in
    /// a point table no alarm task will run with (a unit started by a
    /// reload that then rolled back).
    pub async fn purge(&self, devices: HashSet<Arc<str>>) -> usize {
        if devices.is_empty() {
            return 0;
        }
        let (done, wait) = oneshot::channel();
        if self.ctl.send(Ctl::Purge(devices, done)).await.is_ok() {
            wait.await.unwrap_or(0)
        } else {
            0
        }
    }

    /// End the relay (after [`detach`](Self::detach); drivers stopped).
    pub async fn close(self) {
        drop(self.ctl);
        drop(self.tx);
        let _ = self.task.await;
    }
}

fn device_of(m: &BusMessage) -> &Arc<str> {
    match m {
        BusMessage::Readings { device, .. }
        | BusMessage::Confirmed { device, .. }
        | BusMessage::DeviceStatus { device, .. } => device,
    }
}

async fn run(mut rx: mpsc::Receiver<BusMessage>, mut ctl: mpsc::Receiver<Ctl>) {
    let mut to: Option<(mpsc::Sender<BusMessage>, Shifts)> = None;
    // Messages taken out of the bus by a purge, in order; they go first.
    let mut held: VecDeque<BusMessage> = VecDeque::new();
    loop {
        if let Some((tx, shifts)) = &to {
            while let Some(m) = held.pop_front() {
                forward(tx, shifts, m).await;
            }
        }
        tokio::select! {
            biased;
            c = ctl.recv() => match c {
                None => break,
                Some(Ctl::Attach(tx, shifts)) => to = Some((tx, shifts)),
                Some(Ctl::Purge(devices, done)) => {
                    while let Ok(m) = rx.try_recv() {
                        held.push_back(m);
                    }
                    let before = held.len();
                    held.retain(|m| !devices.contains(device_of(m)));
                    let n = before - held.len();
                    if n > 0 {
                        tracing::warn!(dropped = n, devices = ?devices, "bus messages of stopped drivers dropped (their point numbering no longer runs)");
                    }
                    let _ = done.send(n);
                }
                Some(Ctl::Detach(done)) => {
                    if let Some((tx, shifts)) = to.take() {
                        let mut n = 0usize;
                        while let Some(m) = held.pop_front() {
                            forward(&tx, &shifts, m).await;
                            n += 1;
                        }
                        while let Ok(m) = rx.try_recv() {
                            forward(&tx, &shifts, m).await;
                            n += 1;
                        }
                        tracing::debug!(forwarded = n, "alarm task detached from the bus");
                    }
                    let _ = done.send(());
                }
            },
            m = rx.recv(), if to.is_some() => {
                let Some(m) = m else { break };
                if let Some((tx, shifts)) = &to {
                    forward(tx, shifts, m).await;
                }
            }
        }
    }
}

async fn forward(to: &mpsc::Sender<BusMessage>, shifts: &Shifts, m: BusMessage) {
    let Some(m) = shift(shifts, m) else { return };
    if to.send(m).await.is_err() {
        tracing::error!("alarm task gone; a bus message was not evaluated");
    }
}

/// Move a reading's indices to the current table. A reading outside its
/// device's points (none expected) is dropped, logged; so is every
/// message of a device whose shift is `None`.
pub(super) fn shift(shifts: &Shifts, m: BusMessage) -> Option<BusMessage> {
    if let Some(None) = shifts.get(device_of(&m)) {
        tracing::debug!(device = %device_of(&m), "message of a device the alarm engine does not run dropped");
        return None;
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

    #[test]
    fn readings_move_to_the_current_table() {
        let mut shifts = Shifts::new();
        shifts.insert(
            "a".into(),
            Some(Shift {
                driver: Span { first: 2, len: 3 },
                table: 10,
            }),
        );
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
        let mut shifts = Shifts::new();
        shifts.insert(
            "a".into(),
            Some(Shift {
                driver: Span { first: 2, len: 3 },
                table: 10,
            }),
        );
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

    #[tokio::test]
    async fn switching_alarm_tasks_loses_and_repeats_nothing() {
        let relay = Relay::start();
        let bus = relay.sender();
        let (a_tx, mut a_rx) = mpsc::channel(4096);
        relay.attach(a_tx, Shifts::new()).await;
        for i in 0..100u32 {
            bus.send(readings("a", &[i])).await.unwrap();
        }
        relay.detach().await;
        // Sent while no alarm task is attached: waits.
        for i in 100..200u32 {
            bus.send(readings("a", &[i])).await.unwrap();
        }
        // The old alarm task's bus is closed once drained.
        let mut first = Vec::new();
        while let Some(m) = a_rx.recv().await {
            first.extend(points(&m).into_iter().map(|(p, _)| p));
        }
        let (b_tx, mut b_rx) = mpsc::channel(4096);
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
        relay.attach(b_tx, shifts).await;
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
        assert_eq!(relay.purge(["gone".into()].into_iter().collect()).await, 5);
        bus.send(readings("a", &[310])).await.unwrap();
        let (c_tx, mut c_rx) = mpsc::channel(4096);
        relay.attach(c_tx, Shifts::new()).await;
        relay.detach().await;
        let mut third = Vec::new();
        while let Some(m) = c_rx.recv().await {
            third.extend(points(&m).into_iter().map(|(p, _)| p));
        }
        assert_eq!(third, vec![300, 302, 304, 306, 308, 310]);
        drop(bus);
        relay.close().await;
        let mut second = Vec::new();
        while let Some(m) = b_rx.recv().await {
            second.extend(points(&m).into_iter().map(|(p, _)| p));
        }
        assert_eq!(first, (0..100).collect::<Vec<_>>());
        assert_eq!(second, (1100..1300).collect::<Vec<_>>());
    }
}
