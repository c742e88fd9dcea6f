use super::*;
use crate::config::{load_str, LoadedConfig};
use serde_json::{json, Value as Json};
use std::path::Path;

fn config(telemetry: &str) -> LoadedConfig {
    let text = format!(
        r#"
[site]
id = "palm-bay"
gateway = "gw-north-1"

[uplink]
host = "127.0.0.1"

[telemetry]
{telemetry}

[[devices]]
id = "hvac-1"
category = "hvac"
[devices.modbus]
host = "127.0.0.1"
[[devices.points]]
id = "supply-temp"
register = "holding"
address = 0
type = "f32"
deadband = 0.5
[[devices.points]]
id = "fan-run"
register = "coil"
address = 0
[[devices.points]]
id = "status"
register = "holding"
address = 2
type = "u16"
[[devices.points]]
id = "raw-counter"
register = "holding"
address = 3
type = "u16"
telemetry = false
[[devices.points]]
id = "return-temp"
register = "holding"
address = 4
type = "f32"
"#
    );
    load_str(&text, Path::new("test.toml")).expect("test config loads")
}

const TEMP: PointIndex = 0;
const FAN: PointIndex = 1;
const STATUS: PointIndex = 2;
const COUNTER: PointIndex = 3;
const RETURN: PointIndex = 4;

struct Bench {
    f: TelemetryFilter,
    t0: Instant,
}

impl Bench {
    fn new(telemetry: &str) -> Bench {
        Bench {
            f: TelemetryFilter::new(&config(telemetry)),
            t0: Instant::now(),
        }
    }
    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }
    fn ts(ms: u64) -> Timestamp {
        Timestamp::from_unix_ms(1_795_813_445_000 + ms as i64).unwrap()
    }
    fn offer(&mut self, ms: u64, p: PointIndex, v: Option<Value>, q: Quality) {
        self.f.offer(self.at(ms), Self::ts(ms), p, v, q);
    }
    fn good(&mut self, ms: u64, p: PointIndex, v: Value) {
        self.offer(ms, p, Some(v), Quality::Good);
    }
    fn take(&mut self, ms: u64) -> Option<Json> {
        self.f
            .take_due(self.at(ms))
            .map(|b| serde_json::from_slice(&b).expect("payload is JSON"))
    }
    /// Every payload due at `ms`, their points concatenated.
    fn take_points(&mut self, ms: u64) -> Vec<Json> {
        let mut all = Vec::new();
        while let Some(p) = self.take(ms) {
            all.extend(p["points"].as_array().unwrap().iter().cloned());
        }
        all
    }
}

/// A whole-device confirmation with these values, entry `i` point `i`.
fn device(values: Vec<Value>) -> Vec<(PointIndex, Value)> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| (i as PointIndex, v))
        .collect()
}

fn values(points: &[Json]) -> Vec<(String, Json)> {
    points
        .iter()
        .map(|p| (p["point"].as_str().unwrap().to_string(), p["value"].clone()))
        .collect()
}

#[test]
fn payload_has_contract_format() {
    let mut b = Bench::new("batch_s = 1");
    b.good(0, TEMP, Value::Float(18.5));
    b.offer(10, FAN, None, Quality::Bad);
    assert_eq!(b.take(999), None, "batch not yet due");
    let p = b.take(1000).unwrap();
    assert_eq!(
        p,
        json!({
            "ts": "2026-11-27T21:04:06.000Z",
            "points": [
                {"device": "hvac-1", "point": "supply-temp", "value": 18.5,
                 "quality": "good", "ts": "2026-11-27T21:04:05.000Z"},
                {"device": "hvac-1", "point": "fan-run", "value": null,
                 "quality": "bad", "ts": "2026-11-27T21:04:05.010Z"},
            ]
        })
    );
    assert_eq!(b.take(1000), None);
    assert_eq!(b.f.queued(), 0);
}

#[test]
fn a_value_read_long_ago_does_not_date_the_message() {
    let mut b = Bench::new("batch_s = 1");
    // A value carried over a reload: read 90 s before it is offered.
    let read = Bench::ts(0);
    b.f.offer(
        b.at(90_000),
        read,
        TEMP,
        Some(Value::Float(18.5)),
        Quality::Good,
    );
    b.f.set_clock(b.at(90_000), Bench::ts(90_000));
    let p = b.take(91_000).unwrap();
    assert_eq!(p["ts"], "2026-11-27T21:05:36.000Z", "the message is of now");
    assert_eq!(
        p["points"][0]["ts"], "2026-11-27T21:04:05.000Z",
        "the value keeps its time"
    );
}

#[test]
fn first_value_is_always_reported() {
    let mut b = Bench::new("");
    b.good(0, STATUS, Value::Int(0));
    assert_eq!(b.f.queued(), 1);
}

#[test]
fn float_deadband_is_against_last_reported_value() {
    let mut b = Bench::new("");
    b.good(0, TEMP, Value::Float(20.0));
    b.good(100, TEMP, Value::Float(20.5)); // exactly the deadband: not more
    b.good(200, TEMP, Value::Float(20.4));
    b.good(300, TEMP, Value::Float(20.3));
    // Creeping: each step is small, but it is 0.6 from the reported 20.0.
    b.good(400, TEMP, Value::Float(20.6));
    b.good(500, TEMP, Value::Float(20.2)); // 0.4 from 20.6
    b.good(600, TEMP, Value::Float(19.9)); // 0.7 below 20.6
    let pts = b.take_points(2000);
    assert_eq!(
        values(&pts),
        [
            ("supply-temp".into(), json!(20.0)),
            ("supply-temp".into(), json!(20.6)),
            ("supply-temp".into(), json!(19.9)),
        ]
    );
}

#[test]
fn zero_deadband_reports_every_change_only() {
    let mut b = Bench::new("");
    b.good(0, RETURN, Value::Float(20.0));
    b.good(100, RETURN, Value::Float(20.0));
    b.good(200, RETURN, Value::Float(20.01));
    assert_eq!(b.take_points(5000).len(), 2);
}

#[test]
fn default_deadband_applies_to_points_without_their_own() {
    let mut b = Bench::new("deadband = 1.0");
    b.good(0, RETURN, Value::Float(20.0));
    b.good(100, RETURN, Value::Float(20.9));
    b.good(200, RETURN, Value::Float(21.1));
    // The point's own deadband (0.5) wins over the default.
    b.good(0, TEMP, Value::Float(20.0));
    b.good(300, TEMP, Value::Float(20.6));
    let pts = values(&b.take_points(5000));
    assert_eq!(
        pts,
        [
            ("return-temp".into(), json!(20.0)),
            ("return-temp".into(), json!(21.1)),
            ("supply-temp".into(), json!(20.0)),
            ("supply-temp".into(), json!(20.6)),
        ]
    );
}

#[test]
fn bools_report_any_change() {
    let mut b = Bench::new("deadband = 100.0");
    b.good(0, FAN, Value::Bool(false));
    b.good(100, FAN, Value::Bool(false));
    b.good(200, FAN, Value::Bool(true));
    assert_eq!(
        values(&b.take_points(5000)),
        [
            ("fan-run".into(), json!(false)),
            ("fan-run".into(), json!(true)),
        ]
    );
}

#[test]
fn integers_move_past_the_deadband() {
    // The contract: "a value is sent when it changes by more than its
    // deadband", raw integer registers included.
    let mut b = Bench::new("deadband = 10.0");
    b.good(0, STATUS, Value::Int(300));
    b.good(100, STATUS, Value::Int(305)); // within the deadband
    b.good(200, STATUS, Value::Int(310)); // exactly the deadband: not more
    b.good(300, STATUS, Value::Int(311));
    b.good(400, STATUS, Value::Int(i64::MIN)); // no overflow
    assert_eq!(
        values(&b.take_points(5000)),
        [
            ("status".into(), json!(300)),
            ("status".into(), json!(311)),
            ("status".into(), json!(i64::MIN)),
        ]
    );
}

#[test]
fn integers_report_any_change_without_a_deadband() {
    let mut b = Bench::new("");
    b.good(0, STATUS, Value::Int(3));
    b.good(100, STATUS, Value::Int(3));
    b.good(200, STATUS, Value::Int(4));
    assert_eq!(
        values(&b.take_points(5000)),
        [("status".into(), json!(3)), ("status".into(), json!(4))]
    );
}

#[test]
fn quality_change_is_reported() {
    let mut b = Bench::new("");
    b.good(0, TEMP, Value::Float(20.0));
    b.offer(100, TEMP, None, Quality::Bad);
    b.offer(200, TEMP, None, Quality::Bad);
    b.offer(300, TEMP, Some(Value::Float(20.0)), Quality::Stale);
    b.good(400, TEMP, Value::Float(20.0));
    b.good(500, TEMP, Value::Float(20.0));
    let q: Vec<_> = b
        .take_points(5000)
        .iter()
        .map(|p| p["quality"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(q, ["good", "bad", "stale", "good"]);
}

#[test]
fn nan_changes_are_reported_once() {
    let mut b = Bench::new("");
    b.good(0, TEMP, Value::Float(20.0));
    b.good(100, TEMP, Value::Float(f64::NAN));
    b.good(200, TEMP, Value::Float(f64::NAN));
    b.good(300, TEMP, Value::Float(20.0));
    let v = values(&b.take_points(5000));
    assert_eq!(
        v,
        [
            ("supply-temp".into(), json!(20.0)),
            ("supply-temp".into(), Json::Null),
            ("supply-temp".into(), json!(20.0)),
        ]
    );
}

#[test]
fn telemetry_false_points_are_never_queued() {
    let mut b = Bench::new("every_poll = true\nmax_interval_s = 1");
    for i in 0..10 {
        b.good(i * 1000, COUNTER, Value::Int(i as i64));
    }
    assert_eq!(b.f.queued(), 0);
    assert_eq!(b.f.next_deadline(), None);
    assert_eq!(b.take(100_000), None);
}

#[test]
fn unknown_point_is_ignored() {
    let mut b = Bench::new("");
    b.good(0, 999, Value::Int(1));
    assert_eq!(b.f.queued(), 0);
}

#[test]
fn every_poll_queues_every_value() {
    let mut b = Bench::new("every_poll = true\ndeadband = 10.0");
    for i in 0..5 {
        b.good(i * 100, TEMP, Value::Float(20.0));
    }
    assert_eq!(b.take_points(5000).len(), 5);
}

#[test]
fn max_interval_refreshes_unchanged_value_without_new_offer() {
    let mut b = Bench::new("max_interval_s = 10\nbatch_s = 1");
    b.good(0, TEMP, Value::Float(20.0));
    assert_eq!(b.take_points(1000).len(), 1);
    // Offered again unchanged: not reported.
    b.good(5000, TEMP, Value::Float(20.1));
    assert_eq!(b.f.queued(), 0);
    assert_eq!(b.f.next_deadline(), Some(b.at(10_000)));
    assert_eq!(b.take(9_999), None);
    // Due at 10 s: the last offered value is queued again, with its own ts.
    assert_eq!(b.take(10_000), None, "refresh queued, batch still open");
    assert_eq!(b.f.queued(), 1);
    assert_eq!(b.f.next_deadline(), Some(b.at(11_000)));
    let pts = b.take_points(11_000);
    assert_eq!(pts.len(), 1);
    assert_eq!(pts[0]["value"], json!(20.1));
    assert_eq!(pts[0]["quality"], "good");
    assert_eq!(pts[0]["ts"], "2026-11-27T21:04:10.000Z");
    // Next refresh 10 s after that report.
    assert_eq!(b.f.next_deadline(), Some(b.at(20_000)));
}

#[test]
fn max_interval_reported_on_offer_too() {
    let mut b = Bench::new("max_interval_s = 10");
    b.good(0, FAN, Value::Bool(true));
    b.take_points(1000);
    b.good(9_999, FAN, Value::Bool(true));
    assert_eq!(b.f.queued(), 0);
    b.good(10_000, FAN, Value::Bool(true));
    assert_eq!(b.f.queued(), 1);
}

#[test]
fn refresh_waits_for_the_latest_report() {
    let mut b = Bench::new("max_interval_s = 10");
    b.good(0, TEMP, Value::Float(20.0));
    b.take_points(1000);
    // A change at 4 s is reported: the refresh moves to 14 s.
    b.good(4000, TEMP, Value::Float(25.0));
    b.take_points(5000);
    assert!(b.take_points(10_000).is_empty());
    assert_eq!(b.f.next_deadline(), Some(b.at(14_000)));
    b.good(13_000, TEMP, Value::Float(25.0));
    assert!(b.take(14_000).is_none());
    assert_eq!(b.f.queued(), 1);
}

#[test]
fn refresh_of_a_value_not_offered_again_is_stale() {
    let mut b = Bench::new("max_interval_s = 10");
    b.good(0, TEMP, Value::Float(20.0));
    b.offer(0, FAN, None, Quality::Bad);
    b.take_points(1000);
    let pts = b.take_points(11_000);
    let q: Vec<_> = pts
        .iter()
        .map(|p| (p["point"].as_str().unwrap(), p["quality"].as_str().unwrap()))
        .collect();
    // An offline device's point stays bad; a good value nobody offered
    // again for a whole interval is stale.
    assert_eq!(q, [("supply-temp", "stale"), ("fan-run", "bad")]);
    // The next good offer is a quality change: reported at once.
    b.good(12_000, TEMP, Value::Float(20.0));
    assert_eq!(b.f.queued(), 1);
}

#[test]
fn very_late_call_refreshes_once() {
    let mut b = Bench::new("max_interval_s = 10\nbatch_s = 1");
    b.good(0, TEMP, Value::Float(20.0));
    b.take_points(1000);
    assert!(b.take_points(100_000).is_empty());
    assert_eq!(b.f.queued(), 1);
    assert_eq!(b.take_points(101_000).len(), 1);
    assert_eq!(b.f.next_deadline(), Some(b.at(110_000)));
}

#[test]
fn batch_closes_at_max_points() {
    let mut b = Bench::new("max_points_per_message = 2\nbatch_s = 60");
    b.good(0, TEMP, Value::Float(1.0));
    assert_eq!(b.take(0), None);
    assert_eq!(b.f.next_deadline(), Some(b.at(60_000)));
    b.good(0, FAN, Value::Bool(true));
    assert_eq!(b.f.next_deadline(), Some(b.at(0)), "full batch is due now");
    b.good(1, STATUS, Value::Int(1));
    b.good(2, RETURN, Value::Float(1.0));
    b.good(3, TEMP, Value::Float(9.0));
    let p1 = b.take(3).unwrap();
    assert_eq!(p1["points"].as_array().unwrap().len(), 2);
    let p2 = b.take(3).unwrap();
    assert_eq!(p2["points"].as_array().unwrap().len(), 2);
    // One left: waits for the batch time.
    assert_eq!(b.take(3), None);
    assert_eq!(b.f.queued(), 1);
    let p3 = b.take(60_000).unwrap();
    assert_eq!(
        values(p3["points"].as_array().unwrap()),
        [("supply-temp".into(), json!(9.0))]
    );
    assert_eq!(b.take(60_000), None);
}

#[test]
fn batch_time_counts_from_first_queued_value() {
    let mut b = Bench::new("batch_s = 2");
    assert_eq!(b.f.next_deadline(), None);
    b.good(500, TEMP, Value::Float(1.0));
    b.good(2000, FAN, Value::Bool(true));
    assert_eq!(b.take(2499), None);
    let p = b.take(2500).unwrap();
    assert_eq!(p["points"].as_array().unwrap().len(), 2);
    assert_eq!(p["ts"], "2026-11-27T21:04:07.500Z");
}

#[test]
fn a_steady_device_is_confirmed_whole_and_refreshed_with_the_confirmations_time() {
    let mut b = Bench::new("batch_s = 0.1\nmax_interval_s = 10");
    let device = device(vec![
        Value::Float(18.5),
        Value::Bool(true),
        Value::Int(3),
        Value::Int(7),
        Value::Float(20.0),
    ]);
    // The first confirmation finds nothing held: it offers every value.
    b.f.confirm_all(b.at(0), Bench::ts(0), &device);
    assert_eq!(b.take_points(100).len(), 4, "the four telemetry points");
    // Unchanged polls: nothing to report, the device is steady.
    for ms in (1_000..=9_000).step_by(1_000) {
        b.f.confirm_all(b.at(ms), Bench::ts(ms), &device);
        assert_eq!(b.take_points(ms), Vec::<Json>::new());
    }
    // The max-interval refresh: the values, good (confirmed 1 s ago, not
    // stale), stamped with the last confirmation's device time.
    let refreshed = b.take_points(10_100);
    assert_eq!(refreshed.len(), 4);
    for p in &refreshed {
        assert_eq!(p["quality"], "good", "{p}");
        assert_eq!(p["ts"], "2026-11-27T21:04:14.000Z", "{p}");
    }
    // A point gone bad: the device is confirmed point by point again; the
    // bad point gets its confirmed value back, reported as a change.
    b.offer(10_500, FAN, None, Quality::Bad);
    assert_eq!(b.take_points(10_600).len(), 1);
    b.f.confirm_all(b.at(11_000), Bench::ts(11_000), &device);
    let back = b.take_points(11_100);
    assert_eq!(values(&back), vec![("fan-run".into(), json!(true))]);
    // No more polls. At the next refresh (20 s; the fan's at 21 s, as it
    // was reported at 11 s) the values were offered 9 s before (at 11 s,
    // point by point): good; the fan's 10 s before: stale. At the one
    // after, all are stale.
    let quality = |points: &[Json]| -> Vec<(String, Json)> {
        points
            .iter()
            .map(|p| {
                (
                    p["point"].as_str().unwrap().to_string(),
                    p["quality"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        quality(&b.take_points(25_000)),
        vec![
            ("supply-temp".into(), json!("good")),
            ("fan-run".into(), json!("stale")),
            ("status".into(), json!("good")),
            ("return-temp".into(), json!("good")),
        ]
    );
    let stale = b.take_points(35_000);
    assert_eq!(stale.len(), 4);
    assert!(stale.iter().all(|p| p["quality"] == "stale"), "{stale:?}");
}

#[test]
fn flush_takes_everything_without_refreshing() {
    let mut b = Bench::new("max_points_per_message = 2\nbatch_s = 60\nmax_interval_s = 1");
    b.good(0, TEMP, Value::Float(1.0));
    b.good(0, FAN, Value::Bool(true));
    b.good(0, STATUS, Value::Int(1));
    let far = b.at(3_600_000);
    let mut n = 0;
    while let Some(p) = b.f.flush(far) {
        let v: Json = serde_json::from_slice(&p).unwrap();
        n += v["points"].as_array().unwrap().len();
    }
    assert_eq!(n, 3);
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the offers, every payload respects the size limit, every
        /// value is reported within max_interval of the last report of its
        /// point (when take_due is called at next_deadline), and nothing
        /// reported is lost.
        #[test]
        fn batches_bounded_and_refresh_on_time(
            offers in proptest::collection::vec((0u64..3000, 0u32..5, -3.0f64..3.0, any::<bool>()), 1..200)
        ) {
            let mut b = Bench::new("max_points_per_message = 3\nbatch_s = 0.5\nmax_interval_s = 5\ndeadband = 1");
            let mut ms = 0u64;
            let mut last_report: [Option<u64>; 5] = [None; 5];
            let mut payloads = 0usize;
            let mut check = |b: &mut Bench, now: u64, last: &mut [Option<u64>; 5]| -> Result<(), TestCaseError> {
                while let Some(p) = b.take(now) {
                    payloads += 1;
                    let pts = p["points"].as_array().unwrap();
                    prop_assert!(!pts.is_empty() && pts.len() <= 3);
                    for pt in pts {
                        let i = ["supply-temp", "fan-run", "status", "raw-counter", "return-temp"]
                            .iter().position(|n| *n == pt["point"]).unwrap();
                        prop_assert!(i != 3, "telemetry=false point reported");
                        last[i] = Some(now);
                    }
                }
                Ok(())
            };
            for (dt, point, x, good) in offers {
                // Serve every deadline that falls before the next offer.
                let target = ms + dt;
                while let Some(dl) = b.f.next_deadline() {
                    let dl_ms = dl.saturating_duration_since(b.t0).as_nanos().div_ceil(1_000_000) as u64;
                    if dl_ms > target { break; }
                    check(&mut b, dl_ms.max(ms), &mut last_report)?;
                    ms = ms.max(dl_ms);
                }
                ms = target;
                let v = match point { 1 => Value::Bool(x > 0.0), 2 => Value::Int(x as i64), _ => Value::Float(x) };
                if good {
                    b.good(ms, point, v);
                } else {
                    b.offer(ms, point, None, Quality::Bad);
                }
                check(&mut b, ms, &mut last_report)?;
                for (i, l) in last_report.iter().enumerate() {
                    if let Some(l) = l {
                        // Reported within max interval + batch time (+1 ms rounding).
                        prop_assert!(ms - l <= 5000 + 500 + 1, "point {} last reported {} now {}", i, l, ms);
                    }
                }
            }
            let _ = payloads;
        }

        /// `confirm` is `offer` of the point's last offered value when that
        /// was good, in both modes and over any sequence of offers, takes
        /// and time steps; otherwise it does nothing and says so. And
        /// `confirm_all` of a whole device is the same as offering each
        /// point its value, steady device or not.
        #[test]
        fn confirm_is_an_offer_of_the_same_value(
            every_poll in any::<bool>(),
            steps in proptest::collection::vec(
                (0u64..2500, 0u32..6, 0u8..8, -3.0f64..3.0),
                1..300,
            ),
        ) {
            let settings = format!(
                "max_points_per_message = 4\nbatch_s = 0.3\nmax_interval_s = 2\ndeadband = 1\nevery_poll = {every_poll}"
            );
            // `confirmed` gets confirmations, `offered` the same offers.
            let mut confirmed = Bench::new(&settings);
            let mut offered = Bench::new(&settings);
            offered.t0 = confirmed.t0;
            // The model: each point's last offered (value, quality).
            let mut last: [Option<(Option<Value>, Quality)>; 6] = [None; 6];
            let mut ms = 0u64;
            for (dt, point, op, x) in steps {
                ms += dt;
                let v = match point { 1 => Value::Bool(x > 0.0), 2 | 3 => Value::Int(x as i64), _ => Value::Float(x) };
                match op {
                    0 | 1 => {
                        let applied = confirmed.f.confirm(confirmed.at(ms), Bench::ts(ms), point);
                        // Point 3 (telemetry = false) and 5 (no such
                        // point) are ignored, as by `offer`.
                        let ignored = point == COUNTER || point > RETURN;
                        match last[point as usize] {
                            Some((Some(value), Quality::Good)) if !ignored => {
                                prop_assert!(applied);
                                offered.good(ms, point, value);
                            }
                            _ if ignored => prop_assert!(applied),
                            _ => prop_assert!(!applied, "confirmed without a good value"),
                        }
                    }
                    2 => {
                        confirmed.offer(ms, point, None, Quality::Bad);
                        offered.offer(ms, point, None, Quality::Bad);
                        last[point as usize] = Some((None, Quality::Bad));
                    }
                    6 | 7 => {
                        // A whole-device confirmation: each point's last
                        // good value, or a new one where there is none.
                        let device = device((0..5).map(|p| match last[p] {
                            Some((Some(value), Quality::Good)) => value,
                            _ => v,
                        }).collect());
                        confirmed.f.confirm_all(confirmed.at(ms), Bench::ts(ms), &device);
                        for &(p, value) in &device {
                            offered.good(ms, p, value);
                            if p != COUNTER {
                                last[p as usize] = Some((Some(value), Quality::Good));
                            }
                        }
                    }
                    3 => {
                        // Take what is due, at the same instants.
                        prop_assert_eq!(confirmed.f.next_deadline(), offered.f.next_deadline());
                        prop_assert_eq!(confirmed.take_points(ms), offered.take_points(ms));
                    }
                    _ => {
                        confirmed.good(ms, point, v);
                        offered.good(ms, point, v);
                        last[point as usize] = Some((Some(v), Quality::Good));
                    }
                }
                prop_assert_eq!(confirmed.f.queued(), offered.f.queued());
            }
            let far = ms + 100_000;
            prop_assert_eq!(confirmed.take_points(far), offered.take_points(far));
            let (a, b) = (confirmed.f.flush(confirmed.at(far)), offered.f.flush(offered.at(far)));
            prop_assert_eq!(a, b);
        }
    }
}
