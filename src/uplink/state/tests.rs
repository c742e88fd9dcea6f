use super::*;
use proptest::prelude::*;

fn t0() -> Instant {
    Instant::now()
}

/// rumqttc's packet-id allocation: 1, 2, …, max, 1, …
struct Pkids {
    last: u16,
    max: u16,
}

impl Pkids {
    fn next(&mut self) -> u16 {
        let n = self.last + 1;
        if n == self.max {
            self.last = 0;
            return n;
        }
        self.last = n;
        n
    }
}

#[test]
fn window_limits_submissions() {
    let now = t0();
    let mut lane = Lane::new(Confirm::OnPubAck, 2, 10);
    assert_eq!(lane.cursor(), 10);
    lane.submit(11, now).unwrap();
    lane.submit(12, now).unwrap();
    assert_eq!(lane.free(), 0);
    assert_eq!(lane.submit(13, now), Err(LaneError::Full(2)));
    assert_eq!(lane.in_flight(), 2);
}

#[test]
fn submissions_must_follow_the_cursor() {
    let now = t0();
    let mut lane = Lane::new(Confirm::OnPubAck, 8, 10);
    assert_eq!(
        lane.submit(10, now),
        Err(LaneError::OutOfOrder {
            key: 10,
            cursor: 10
        })
    );
    lane.submit(12, now).unwrap();
    assert!(lane.submit(11, now).is_err());
}

#[test]
fn acks_only_contiguous_prefixes() {
    let now = t0();
    let mut lane = Lane::new(Confirm::OnPubAck, 8, 0);
    for k in 1..=4 {
        lane.submit(k, now).unwrap();
    }
    assert_eq!(lane.on_puback(2, 0), None, "1 is still missing");
    assert_eq!(lane.on_puback(3, 0), None);
    assert_eq!(lane.on_puback(1, 0), Some(3), "1..=3 are all acknowledged");
    assert_eq!(lane.acked(), 3);
    assert_eq!(lane.in_flight(), 1);
    assert_eq!(
        lane.on_puback(3, 0),
        None,
        "a duplicate PUBACK acks nothing"
    );
    assert_eq!(lane.on_puback(4, 0), Some(4));
    assert_eq!(lane.free(), 8);
}

#[test]
fn keys_need_not_be_contiguous() {
    let now = t0();
    let mut lane = Lane::new(Confirm::OnPubAck, 8, 0);
    lane.submit(5, now).unwrap();
    lane.submit(9, now).unwrap();
    assert_eq!(lane.on_puback(9, 0), None);
    assert_eq!(lane.on_puback(5, 0), Some(9));
}

#[test]
fn written_confirms_only_qos0_lanes() {
    let now = t0();
    let mut q0 = Lane::new(Confirm::OnWrite, 4, 0);
    q0.submit(1, now).unwrap();
    assert_eq!(q0.on_written(1, 0), Some(1));
    let mut q1 = Lane::new(Confirm::OnPubAck, 4, 0);
    q1.submit(1, now).unwrap();
    assert_eq!(q1.on_written(1, 0), None);
    assert_eq!(q1.on_puback(1, 0), Some(1));
}

#[test]
fn rewind_restarts_after_the_acked_point_and_ignores_stale_answers() {
    let now = t0();
    let mut lane = Lane::new(Confirm::OnPubAck, 8, 0);
    for k in 1..=5 {
        lane.submit(k, now).unwrap();
    }
    assert_eq!(lane.on_puback(1, 0), Some(1));
    lane.on_puback(3, 0);
    lane.rewind();
    assert_eq!(lane.cursor(), 1, "2..=5 must be published again");
    assert_eq!(lane.in_flight(), 0);
    assert_eq!(lane.epoch(), 1);
    lane.submit(2, now).unwrap();
    assert_eq!(
        lane.on_puback(2, 0),
        None,
        "a PUBACK from before the rewind must not confirm the new attempt"
    );
    assert_eq!(lane.on_puback(2, 1), Some(2));
}

#[test]
fn end_to_end_waits_for_the_platform() {
    let now = t0();
    let mut lane = Lane::new(Confirm::EndToEnd, 8, 0);
    for k in 1..=4 {
        lane.submit(k, now).unwrap();
    }
    assert_eq!(lane.on_puback(1, 0), None, "PUBACK is not enough");
    assert_eq!(lane.on_puback(2, 0), None);
    assert_eq!(lane.on_remote_ack(2), Some(2));
    assert_eq!(lane.in_flight(), 2);
    assert_eq!(lane.on_remote_ack(2), None, "nothing acked twice");
    assert_eq!(lane.on_remote_ack(1), None, "a stale receipt acks nothing");
    assert_eq!(
        lane.on_remote_ack(100),
        Some(4),
        "a receipt beyond what was published is capped"
    );
    assert_eq!(lane.in_flight(), 0);
}

#[test]
fn end_to_end_receipt_after_rewind_skips_confirmed_events() {
    let now = t0();
    let mut lane = Lane::new(Confirm::EndToEnd, 8, 0);
    for k in 1..=4 {
        lane.submit(k, now).unwrap();
    }
    lane.rewind();
    assert_eq!(lane.cursor(), 0);
    // The receipt for the first attempt arrives late.
    assert_eq!(lane.on_remote_ack(3), Some(3));
    assert_eq!(lane.cursor(), 3, "1..=3 are not published again");
    lane.submit(4, now).unwrap();
    assert_eq!(lane.on_remote_ack(4), Some(4));
}

#[test]
fn remote_ack_is_ignored_without_end_to_end() {
    let now = t0();
    let mut lane = Lane::new(Confirm::OnPubAck, 8, 0);
    lane.submit(1, now).unwrap();
    assert_eq!(lane.on_remote_ack(1), None);
}

#[test]
fn overdue_uses_the_oldest_unconfirmed_submission() {
    let now = t0();
    let timeout = Duration::from_secs(30);
    let mut lane = Lane::new(Confirm::EndToEnd, 8, 0);
    assert!(
        !lane.overdue(now + timeout * 10, timeout),
        "empty is never overdue"
    );
    lane.submit(1, now).unwrap();
    lane.submit(2, now + Duration::from_secs(20)).unwrap();
    assert!(!lane.overdue(now + Duration::from_secs(29), timeout));
    assert!(lane.overdue(now + Duration::from_secs(30), timeout));
    lane.on_remote_ack(1);
    assert!(!lane.overdue(now + Duration::from_secs(49), timeout));
    assert!(lane.overdue(now + Duration::from_secs(50), timeout));
}

#[test]
fn puback_overdue_skips_pubacked_slots() {
    let now = t0();
    let timeout = Duration::from_secs(10);
    let mut lane = Lane::new(Confirm::EndToEnd, 8, 0);
    lane.submit(1, now).unwrap();
    lane.submit(2, now + Duration::from_secs(5)).unwrap();
    lane.on_puback(1, 0);
    assert!(!lane.puback_overdue(now + Duration::from_secs(14), timeout));
    assert!(lane.puback_overdue(now + Duration::from_secs(15), timeout));
    lane.on_puback(2, 0);
    assert!(!lane.puback_overdue(now + Duration::from_secs(100), timeout));
}

#[test]
fn submissions_map_pkids_in_request_order() {
    let mut s = Submissions::default();
    let a = Tag::Event { seq: 1, epoch: 0 };
    let b = Tag::Telemetry { key: 7, epoch: 0 };
    s.push(a, 1);
    s.push(Tag::Other, 0);
    s.push(b, 1);
    assert_eq!(s.on_outgoing_publish(1), Ok(a));
    assert_eq!(s.on_outgoing_publish(0), Ok(Tag::Other));
    assert_eq!(s.on_outgoing_publish(2), Ok(b));
    assert_eq!(s.on_puback(2), Some(b));
    assert_eq!(s.on_puback(2), None, "unknown pkid");
    assert_eq!(s.on_puback(1), Some(a));
    assert!(s.is_empty());
}

#[test]
fn submissions_detect_desync() {
    let mut s = Submissions::default();
    assert_eq!(s.on_outgoing_publish(3), Err(Desync::UnexpectedPublish(3)));
    s.push(Tag::Other, 1);
    assert_eq!(
        s.on_outgoing_publish(0),
        Err(Desync::QosMismatch { pkid: 0, qos: 1 })
    );
    s.push(Tag::Other, 0);
    assert_eq!(
        s.on_outgoing_publish(4),
        Err(Desync::QosMismatch { pkid: 4, qos: 0 })
    );
}

#[test]
fn pipeline_routes_acks_to_lanes() {
    let now = t0();
    let mut p = Pipeline::new(
        Lane::new(Confirm::OnPubAck, 4, 0),
        Lane::new(Confirm::OnWrite, 4, 0),
    );
    p.submit_other(1); // status online
    p.submit_event(1, now).unwrap();
    p.submit_telemetry(1, 0, now).unwrap();
    p.submit_event(2, now).unwrap();
    assert_eq!(p.on_outgoing_publish(1).unwrap(), Acks::default());
    assert_eq!(p.on_outgoing_publish(2).unwrap(), Acks::default());
    assert_eq!(
        p.on_outgoing_publish(0).unwrap(),
        Acks {
            telemetry: Some(1),
            ..Acks::default()
        },
        "QoS 0 telemetry is delivered once written"
    );
    assert_eq!(p.on_outgoing_publish(3).unwrap(), Acks::default());
    assert_eq!(p.on_puback(3).events, None, "seq 1 is not acknowledged yet");
    assert_eq!(p.on_puback(1), Acks::default(), "the status PUBACK");
    assert_eq!(p.on_puback(2).events, Some(2));
    assert_eq!(p.outstanding(), 0);
}

#[test]
fn command_results_are_reported_on_puback() {
    let now = t0();
    let mut p = Pipeline::new(
        Lane::new(Confirm::OnPubAck, 4, 0),
        Lane::new(Confirm::OnWrite, 4, 0),
    );
    p.submit_result(7);
    p.submit_event(1, now).unwrap();
    assert_eq!(p.on_outgoing_publish(5).unwrap(), Acks::default());
    assert_eq!(p.on_outgoing_publish(6).unwrap(), Acks::default());
    assert_eq!(
        p.on_puback(5),
        Acks {
            result: Some(7),
            ..Acks::default()
        }
    );
    assert_eq!(p.on_puback(5), Acks::default(), "reported once");
}

#[test]
fn pipeline_disconnect_forgets_the_connection() {
    let now = t0();
    let mut p = Pipeline::new(
        Lane::new(Confirm::OnPubAck, 4, 0),
        Lane::new(Confirm::OnPubAck, 4, 0),
    );
    p.submit_event(1, now).unwrap();
    p.submit_event(2, now).unwrap();
    p.on_outgoing_publish(1).unwrap();
    assert_eq!(p.on_puback(1).events, Some(1));
    p.on_outgoing_publish(2).unwrap();
    p.on_disconnect();
    assert_eq!(p.outstanding(), 0);
    assert_eq!(p.events.cursor(), 1, "restart from the last acked seq + 1");
    // A PUBACK that arrives for the old connection's pkid acks nothing.
    assert_eq!(p.on_puback(2), Acks::default());
    p.submit_event(2, now).unwrap();
    p.on_outgoing_publish(3).unwrap();
    assert_eq!(p.on_puback(3).events, Some(2));
}

#[test]
fn phase_follows_link_and_backlog() {
    use Phase::*;
    // Offline whenever the link is down, whatever waits.
    for from in [Offline, Backlog, Online] {
        assert_eq!(from.next(false, 0, 10), Offline);
        assert_eq!(from.next(false, 99, 10), Offline);
    }
    // Connecting with events recorded meanwhile: a backlog until caught up.
    assert_eq!(Offline.next(true, 3, 10), Backlog);
    assert_eq!(Offline.next(true, 0, 10), Online);
    assert_eq!(Backlog.next(true, 1, 10), Backlog);
    assert_eq!(Backlog.next(true, 0, 10), Online);
    // Once online, events in flight are normal traffic, not a backlog...
    assert_eq!(Online.next(true, 1, 10), Online);
    assert_eq!(Online.next(true, 10, 10), Online);
    // ...until more wait than the window holds (the platform falls behind).
    assert_eq!(Online.next(true, 11, 10), Backlog);
}

#[test]
fn phase_does_not_flap_with_each_event_in_flight() {
    // One event recorded and acknowledged at a time, 100 times: one change
    // (offline -> online), where the old rule logged 200.
    let mut phase = Phase::Offline;
    let mut changes = 0;
    for backlog in std::iter::once(0).chain([1, 0].into_iter().cycle().take(200)) {
        let next = phase.next(true, backlog, 10);
        changes += usize::from(next != phase);
        phase = next;
    }
    assert_eq!((phase, changes), (Phase::Online, 1));
}

#[test]
fn link_reports_changes_only() {
    let now = t0();
    let mut l = Link::new();
    assert!(!l.is_up());
    assert_eq!(
        l.on_connected(now),
        None,
        "first connection is no restoration"
    );
    assert!(l.is_up());
    assert_eq!(
        l.on_failure(now + Duration::from_secs(5), "reset"),
        Some(LinkChange::Lost {
            reason: "reset".into()
        })
    );
    assert_eq!(l.on_failure(now + Duration::from_secs(6), "refused"), None);
    assert_eq!(l.on_failure(now + Duration::from_secs(7), "refused"), None);
    assert_eq!(
        l.on_connected(now + Duration::from_secs(15)),
        Some(LinkChange::Restored {
            down_for: Duration::from_secs(10)
        })
    );
    assert_eq!(
        l.up_for(now + Duration::from_secs(16)),
        Some(Duration::from_secs(1))
    );
}

#[test]
fn link_reports_a_failed_first_attempt() {
    let now = t0();
    let mut l = Link::new();
    assert!(matches!(
        l.on_failure(now, "refused"),
        Some(LinkChange::Lost { .. })
    ));
    assert_eq!(l.on_failure(now, "refused"), None);
    assert!(matches!(
        l.on_connected(now),
        Some(LinkChange::Restored { .. })
    ));
}

#[test]
fn backoff_doubles_to_the_maximum_and_resets() {
    let min = Duration::from_millis(500);
    let max = Duration::from_secs(4);
    let mut b = Backoff::new(min, max);
    let upper: Vec<Duration> = (0..6).map(|_| b.next_delay(1.0)).collect();
    assert_eq!(
        upper,
        [500, 1000, 2000, 4000, 4000, 4000].map(Duration::from_millis)
    );
    b.reset();
    assert_eq!(b.next_delay(0.0), min);
    assert_eq!(b.next_delay(0.0), min, "half of 1 s, never below min");
    assert_eq!(b.next_delay(0.0), Duration::from_secs(1));
    assert_eq!(b.next_delay(f64::NAN), Duration::from_secs(2));
}

proptest! {
    #[test]
    fn backoff_stays_within_bounds(min_ms in 1u64..5_000, extra_ms in 0u64..60_000,
                                   units in proptest::collection::vec(any::<f64>(), 1..40)) {
        let min = Duration::from_millis(min_ms);
        let max = Duration::from_millis(min_ms + extra_ms);
        let mut b = Backoff::new(min, max);
        for u in units {
            let d = b.next_delay(u);
            prop_assert!(d >= min && d <= max, "{d:?} outside {min:?}..={max:?}");
        }
    }

    /// Random PUBACK orders over a cycling pkid space: the acknowledged point
    /// only ever moves forward, every reported prefix is fully PUBACKed, and
    /// at the end everything is acknowledged (nothing acked twice, nothing
    /// skipped).
    #[test]
    fn random_puback_orders_ack_exact_prefixes(
        window in 1usize..32,
        total in 1u64..300,
        pick in proptest::collection::vec(any::<prop::sample::Index>(), 0..2000),
        start in 0u64..1_000,
    ) {
        let now = t0();
        let mut p = Pipeline::new(
            Lane::new(Confirm::OnPubAck, window, start),
            Lane::new(Confirm::OnWrite, 4, 0),
        );
        // rumqttc's own inflight is larger than the window.
        let mut pkids = Pkids { last: 0, max: window as u16 + 16 };
        let mut next = start + 1;
        let end = start + total;
        let mut inflight: Vec<(u16, u64)> = Vec::new();
        let mut pubacked = std::collections::BTreeSet::new();
        let mut last_acked = start;
        let mut picks = pick.into_iter();
        while last_acked < end {
            while p.events.free() > 0 && next <= end {
                p.submit_event(next, now).unwrap();
                let pkid = pkids.next();
                prop_assert!(!inflight.iter().any(|(k, _)| *k == pkid), "pkid reuse in flight");
                p.on_outgoing_publish(pkid).unwrap();
                inflight.push((pkid, next));
                next += 1;
            }
            prop_assert!(!inflight.is_empty());
            let i = match picks.next() {
                Some(ix) => ix.index(inflight.len()),
                None => 0,
            };
            let (pkid, seq) = inflight.swap_remove(i);
            pubacked.insert(seq);
            if let Some(upto) = p.on_puback(pkid).events {
                prop_assert!(upto > last_acked, "acked twice or backwards: {upto} after {last_acked}");
                for s in start + 1..=upto {
                    prop_assert!(pubacked.contains(&s), "seq {s} acked without its PUBACK");
                }
                prop_assert!(
                    !pubacked.contains(&(upto + 1)) || upto + 1 > end,
                    "prefix stopped short at {upto}"
                );
                last_acked = upto;
            }
            prop_assert_eq!(p.events.acked(), last_acked);
        }
        prop_assert_eq!(last_acked, end);
        prop_assert_eq!(p.events.in_flight(), 0);
        prop_assert_eq!(p.outstanding(), 0);
    }

    /// Random interleavings of PUBACKs, platform receipts and rewinds in
    /// end-to-end mode: the acknowledged point never passes what the
    /// platform confirmed, never moves backwards, and the window never
    /// exceeds its capacity.
    #[test]
    fn end_to_end_never_acks_unconfirmed(
        window in 1usize..16,
        ops in proptest::collection::vec((0u8..4, any::<prop::sample::Index>()), 1..400),
    ) {
        let now = t0();
        let mut lane = Lane::new(Confirm::EndToEnd, window, 0);
        let mut confirmed = 0u64;
        let mut acked = 0u64;
        let mut high = 0u64;
        for (op, ix) in ops {
            match op {
                0 => {
                    while lane.free() > 0 {
                        let k = lane.cursor() + 1;
                        lane.submit(k, now).unwrap();
                        high = high.max(k);
                    }
                }
                1 => {
                    let k = acked + 1 + ix.index(window) as u64;
                    let _ = lane.on_puback(k, lane.epoch());
                }
                2 => {
                    let upto = ix.index(high as usize + 1) as u64;
                    if let Some(a) = lane.on_remote_ack(upto) {
                        prop_assert!(a > acked);
                        prop_assert!(a <= upto && a <= high);
                        acked = a;
                    }
                    confirmed = confirmed.max(upto.min(high));
                }
                _ => lane.rewind(),
            }
            prop_assert!(lane.in_flight() <= window);
            prop_assert_eq!(lane.acked(), acked);
            prop_assert!(acked <= confirmed);
            prop_assert!(lane.cursor() >= acked);
        }
    }

    /// A simulated event loop with connection drops at random moments:
    /// requests queue, get written with the next pkid, are PUBACKed in any
    /// order, and a drop forgets everything not acknowledged. Every
    /// acknowledged seq was PUBACKed, the point never moves back, and once
    /// the link holds everything is delivered.
    #[test]
    fn drops_at_random_moments_never_ack_undelivered(
        window in 1usize..16,
        total in 1u64..120,
        ops in proptest::collection::vec((0u8..4, any::<prop::sample::Index>()), 0..600),
    ) {
        let mut sim = Sim::new(window, total);
        for (op, ix) in ops {
            let upto = sim.step(op, Some(ix));
            sim.check(upto)?;
        }
        // The link holds from now on: everything gets through.
        let mut guard = 0;
        while sim.acked < total {
            guard += 1;
            prop_assert!(guard < 100_000, "stuck at {}", sim.acked);
            for op in [0u8, 1, 2] {
                let upto = sim.step(op, None);
                sim.check(upto)?;
            }
        }
        prop_assert_eq!(sim.p.events.acked(), total);
    }
}

/// A simulated rumqttc connection for the property tests.
struct Sim {
    p: Pipeline,
    pkids: Pkids,
    total: u64,
    queued: VecDeque<u64>,
    written: Vec<(u16, u64)>,
    pubacked: std::collections::BTreeSet<u64>,
    acked: u64,
    now: Instant,
}

impl Sim {
    fn new(window: usize, total: u64) -> Sim {
        Sim {
            p: Pipeline::new(
                Lane::new(Confirm::OnPubAck, window, 0),
                Lane::new(Confirm::OnWrite, 4, 0),
            ),
            pkids: Pkids {
                last: 0,
                max: window as u16 + 16,
            },
            total,
            queued: VecDeque::new(),
            written: Vec::new(),
            pubacked: Default::default(),
            acked: 0,
            now: t0(),
        }
    }

    /// 0: fill the window; 1: write the next request; 2: PUBACK one
    /// written request; 3: the connection drops.
    fn step(&mut self, op: u8, ix: Option<prop::sample::Index>) -> Option<u64> {
        match op {
            0 => {
                while self.p.events.free() > 0 && self.p.events.cursor() < self.total {
                    let seq = self.p.events.cursor() + 1;
                    self.p.submit_event(seq, self.now).unwrap();
                    self.queued.push_back(seq);
                }
                None
            }
            1 => {
                let seq = self.queued.pop_front()?;
                let pkid = self.pkids.next();
                self.written.push((pkid, seq));
                self.p.on_outgoing_publish(pkid).unwrap().events
            }
            2 => {
                if self.written.is_empty() {
                    return None;
                }
                let i = ix.map(|ix| ix.index(self.written.len())).unwrap_or(0);
                let (pkid, seq) = self.written.swap_remove(i);
                self.pubacked.insert(seq);
                self.p.on_puback(pkid).events
            }
            _ => {
                self.queued.clear();
                self.written.clear();
                self.p.on_disconnect();
                None
            }
        }
    }

    fn check(&mut self, upto: Option<u64>) -> Result<(), TestCaseError> {
        if let Some(u) = upto {
            prop_assert!(u > self.acked, "acked {} after {}", u, self.acked);
            for s in 1..=u {
                prop_assert!(
                    self.pubacked.contains(&s),
                    "seq {} acked, never PUBACKed",
                    s
                );
            }
            self.acked = u;
        }
        prop_assert_eq!(self.p.events.acked(), self.acked);
        prop_assert!(self.p.events.cursor() >= self.acked);
        Ok(())
    }
}

/// Acknowledgements of events up to `events`, telemetry up to
/// `telemetry`, and the command result `result`.
fn acks(events: Option<u64>, telemetry: Option<u64>, result: Option<u64>) -> Acks {
    Acks {
        events,
        telemetry,
        result,
    }
}

#[test]
fn acknowledgements_of_a_burst_are_written_once() {
    let t = t0();
    let ms = |n| t + Duration::from_millis(n);
    let ev = |seq| acks(Some(seq), None, None);
    let tel = |key| acks(None, Some(key), None);
    let mut b = AckBatch::new(Duration::from_millis(50));
    assert!(b.is_empty());
    assert_eq!(b.due_at(ms(0)), None);
    assert_eq!(b.take(ms(0), false, true), (None, None));
    // Twelve PUBACKs of events within 10 ms: nothing written until 50 ms
    // after the first.
    for i in 0..12 {
        b.add(&ev(100 + i), ms(i));
        assert_eq!(b.take(ms(i), false, true), (None, None));
    }
    assert_eq!(b.due_at(ms(0)), Some(ms(50)));
    // Telemetry's acknowledgement goes at once, the events' still wait.
    b.add(&tel(7), ms(20));
    assert_eq!(b.take(ms(20), false, true), (None, Some(7)));
    assert_eq!(b.take(ms(49), false, true), (None, None));
    assert!(!b.is_empty());
    // Then the events' at once, the newest.
    assert_eq!(b.take(ms(50), false, true), (Some(111), None));
    assert!(b.is_empty());
    assert_eq!(b.take(ms(200), true, true), (None, None));
    // A result's PUBACK alone is not a journal acknowledgement.
    b.add(&acks(None, None, Some(3)), ms(300));
    assert!(b.is_empty());
    // Shutdown writes at once.
    b.add(&ev(112), ms(400));
    assert_eq!(b.take(ms(401), true, true), (Some(112), None));
}

#[test]
fn failed_acknowledgement_writes_are_tried_again() {
    let t = t0();
    let ms = |n| t + Duration::from_millis(n);
    let mut b = AckBatch::new(Duration::from_millis(50));
    b.add(&acks(Some(10), Some(4), None), ms(0));
    assert_eq!(b.take(ms(10), false, true), (None, Some(4)));
    // The telemetry's write failed: tried at the next turn.
    b.failed(None, Some(4), ms(10));
    assert_eq!(b.take(ms(11), false, true), (None, Some(4)));
    assert_eq!(b.take(ms(50), false, true), (Some(10), None));
    // The events' write failed: a window later.
    b.failed(Some(10), None, ms(50));
    assert_eq!(b.due_at(ms(0)), Some(ms(100)));
    assert_eq!(b.take(ms(99), false, true), (None, None));
    // A newer acknowledgement meanwhile covers the failed one.
    b.add(&acks(Some(12), None, None), ms(60));
    assert_eq!(b.take(ms(100), false, true), (Some(12), None));
    b.failed(None, None, ms(100));
    assert!(b.is_empty());
}

#[test]
fn telemetry_acknowledgements_are_spaced_while_more_is_in_flight() {
    let t = t0();
    let ms = |n| t + Duration::from_millis(n);
    let tel = |key| acks(None, Some(key), None);
    let mut b = AckBatch::new(Duration::from_millis(50));
    // A drain: more in flight after each PUBACK. The first goes at once,
    // the next ones a window apart, the newest each time.
    b.add(&tel(1), ms(0));
    assert_eq!(b.due_at(ms(0)), Some(ms(0)));
    assert_eq!(b.take(ms(0), false, false), (None, Some(1)));
    for k in 2..=9 {
        b.add(&tel(k), ms(k * 5));
        assert_eq!(b.take(ms(k * 5), false, false), (None, None));
    }
    assert_eq!(b.due_at(ms(0)), Some(ms(50)));
    assert_eq!(b.take(ms(50), false, false), (None, Some(9)));
    // Caught up (nothing in flight): at once.
    b.add(&tel(10), ms(60));
    assert_eq!(b.take(ms(60), false, true), (None, Some(10)));
    assert!(b.is_empty());
}
