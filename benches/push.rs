//! Push latency: alarm raised → webhook received on loopback.
//!
//! ```text
//! cargo bench --bench push              # 500 alarms, one every 20 ms
//! cargo bench --bench push -- 2000      # more samples
//! cargo bench --bench push -- --no-fsync # the journal's fsync left out
//! ```
//!
//! Production settings: a current-thread runtime, journal with fsync on a
//! temp dir, the webhook channel signing every request. Each sample is
//! timed from just before `Journal::record` of the `alarm.raised` event
//! (what the alarm engine does when an alarm is raised, fsync included) to
//! the moment the loopback receiver has read the whole request. Alarms are
//! spaced 20 ms apart so neither the rate limit nor storm condensing holds
//! them back. Prints one JSON line: the whole delay, and its first part, the
//! journal's `record` (flush + fsync), separately.

#[path = "../tests/common/http_receiver.rs"]
mod http_receiver;

use estate_gateway::event::{
    AlarmInfo, AlarmState, Category, EventKind, NewEvent, Priority, Source, Timestamp,
};
use estate_gateway::journal::{Journal, JournalConfig};
use estate_gateway::push::{self, PushConfig, PushContext, SystemClock};
use estate_gateway::status::GatewayStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(500);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fsync = !std::env::args().any(|a| a == "--no-fsync");
    rt.block_on(run(n, fsync));
}

async fn run(n: usize, fsync: bool) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hook.secret"), "bench-secret").unwrap();
    let hook = http_receiver::Receiver::start("{}", 0);
    let cfg: PushConfig = toml::from_str(&format!(
        r#"
        [[channels]]
        name = "hook"
        kind = "webhook"
        url = "{}"
        secret = {{ file = "{}/hook.secret" }}
        rate_per_minute = 100000
        storm_threshold = 100000
        [[tiers]]
        name = "guards"
        channels = ["hook"]
        [[rules]]
        name = "all"
        tiers = ["guards"]
        "#,
        hook.url("/alarm"),
        dir.path().display()
    ))
    .unwrap();
    let sinks = push::sinks(&cfg);
    let sinks: Vec<&str> = sinks.iter().map(String::as_str).collect();
    let journal = Journal::open(
        &JournalConfig {
            path: dir.path().join("journal"),
            fsync,
            ..JournalConfig::default()
        },
        "gw-bench",
        &sinks,
    )
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks = push::spawn(
        PushContext {
            config: Arc::new(cfg),
            site_id: "bench".into(),
            site_name: "Bench".into(),
            gateway: "gw-bench".into(),
            journal: journal.clone(),
            status: Arc::new(GatewayStatus::new(0)),
            state_dir: dir.path().join("journal"),
            clock: Arc::new(SystemClock),
            notify: Arc::new(Vec::new()),
        },
        stop.clone(),
    )
    .unwrap();

    let mut samples = Vec::with_capacity(n);
    let mut records = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        journal.record(vec![alarm(i)]).await.unwrap();
        records.push(start.elapsed());
        // Wait for the receiver, yielding so the push task runs.
        loop {
            if let Some(r) = hook.accepted().get(i) {
                samples.push(r.at.saturating_duration_since(start));
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    samples.sort();
    records.sort();
    let q =
        |v: &[Duration], p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    println!(
        "{{\"bench\":\"push_latency\",\"fsync\":{fsync},\"samples\":{},\"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{},\"record_p50_ms\":{},\"record_p99_ms\":{}}}",
        samples.len(),
        ms(q(&samples, 0.50)),
        ms(q(&samples, 0.99)),
        ms(*samples.last().unwrap()),
        ms(q(&records, 0.50)),
        ms(q(&records, 0.99)),
    );
}

fn alarm(i: usize) -> NewEvent {
    NewEvent {
        ts: Timestamp::now(),
        kind: EventKind::AlarmRaised,
        priority: Priority::HIGH,
        category: Category::Perimeter,
        source: Source {
            device: Some("fence-a".into()),
            point: Some(format!("sector-{i}")),
            zone: Some("north".into()),
        },
        alarm: Some(AlarmInfo {
            key: format!("fence-a/sector-{i}"),
            state: AlarmState::ActiveUnacked,
            value: serde_json::Value::Bool(true),
            message: format!("Fence sector {i} breach"),
            operator: None,
            comment: None,
            latched: false,
        }),
        attachments: vec![],
        detail: None,
    }
}
