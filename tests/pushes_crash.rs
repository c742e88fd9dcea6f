//! `kill -9` of the real gateway during an alarm storm: after the restart
//! every alarm that was recorded is pushed (alone or in a summary), and only
//! pushes delivered just before the kill may come again (at least once).
//!
//! Peers: pymodbus (the fence controller with 50 sectors) and a loopback
//! webhook receiver. The uplink points at a port with no broker, so the
//! platform never acknowledges and the journal keeps every event for the
//! final check.

mod common;
#[path = "common/http_receiver.rs"]
mod http_receiver;
#[path = "common/modbus_sim.rs"]
mod modbus_sim;

use common::gateway::GatewayProc;
use estate_gateway::event::{Event, EventKind};
use estate_gateway::journal::{Journal, JournalConfig};
use http_receiver::Receiver;
use modbus_sim::ModbusSim;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const SECTORS: u16 = 50;

fn is_p1(sector: u16) -> bool {
    sector % 10 == 7
}

fn config(modbus: u16, hook: &str) -> String {
    let mut s = format!(
        r#"
[site]
id = "crash"
gateway = "gw"
name = "Riverside Villas"

[journal]
path = "@DIR@/journal"

[uplink]
host = "127.0.0.1"
port = {broker}
reconnect_min_s = 1
reconnect_max_s = 5

[telemetry]
enabled = false

[push]
retry_min_s = 0.1
retry_max_s = 0.5

[[push.channels]]
name = "hook"
kind = "webhook"
url = "{hook}"
secret = {{ file = "@DIR@/hook.secret" }}
rate_per_minute = 600
storm_threshold = 5
storm_window_s = 2

[[push.tiers]]
name = "guards"
channels = ["hook"]

[[push.rules]]
name = "all"
tiers = ["guards"]

[[devices]]
id = "fence-a"
zone = "perimeter-north"
category = "perimeter"
poll_interval_s = 0.1
timeout_s = 0.5
[devices.modbus]
host = "127.0.0.1"
port = {modbus}
unit = 1
"#,
        broker = common::free_port(),
    );
    for n in 0..SECTORS {
        s += &format!(
            "\n[[devices.points]]\nid = \"sector-{n}\"\nregister = \"coil\"\naddress = {n}\n"
        );
    }
    for n in 0..SECTORS {
        let p = if is_p1(n) { 1 } else { 3 };
        s += &format!(
            "\n[[alarms]]\npoint = \"fence-a/sector-{n}\"\nequals = true\npriority = {p}\nmessage = \"Fence sector {n} breach\"\nlatching = false\n"
        );
    }
    s
}

/// Alarm event ids covered by each accepted push.
fn covered(hook: &Receiver) -> Vec<Vec<String>> {
    hook.accepted()
        .iter()
        .map(|r| {
            let j = r.json();
            if j["kind"] == "summary" {
                assert!(
                    j["alarms"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|a| a["priority"] != 1),
                    "a P1 alarm folded into a summary: {j}"
                );
            }
            j["alarms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["id"].as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_storm_loses_no_push() {
    let Some(sim) = ModbusSim::start_tcp(&[1]) else {
        return;
    };
    let hook = Receiver::start("{}", 0);
    let mut gw = GatewayProc::new(
        "pushes-crash",
        &config(sim.tcp_port.unwrap(), &hook.url("/alarm")),
    );
    std::fs::write(gw.dir().join("hook.secret"), "crash-secret\n").unwrap();
    gw.start();
    gw.wait_log("push channel started", Duration::from_secs(30));

    // The storm: every sector breached, as fast as the simulator takes it.
    let storm = tokio::spawn(async move {
        for n in 0..SECTORS {
            sim.write_coil(1, n, true).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sim
    });
    hook.wait_accepted(3, Duration::from_secs(30));
    gw.kill9();
    let before: BTreeSet<String> = covered(&hook).into_iter().flatten().collect();
    assert!(!before.is_empty());
    gw.start();
    let _sim = storm.await.unwrap();

    // Wait until the pushes have caught up with every alarm raised.
    let start = Instant::now();
    let sectors: BTreeSet<u16> = (0..SECTORS).collect();
    loop {
        let keys: BTreeSet<u16> = hook
            .accepted()
            .iter()
            .flat_map(|r| {
                r.json()["alarms"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| {
                        a["key"]
                            .as_str()
                            .unwrap()
                            .rsplit('-')
                            .next()
                            .unwrap()
                            .parse()
                            .unwrap()
                    })
                    .collect::<Vec<u16>>()
            })
            .collect();
        if keys == sectors {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            gw.save_log();
            panic!(
                "sectors never pushed: {:?}",
                sectors.difference(&keys).collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the last deliveries land, then stop cleanly.
    std::thread::sleep(Duration::from_millis(500));
    gw.sigterm(Duration::from_secs(20));

    // Every alarm the journal recorded was pushed.
    let journal = Journal::open(
        &JournalConfig {
            path: gw.dir().join("journal"),
            ..JournalConfig::default()
        },
        "gw",
        &["uplink", "push.escalation", "push.hook"],
    )
    .unwrap();
    let raised: BTreeSet<String> = journal
        .read_events(0, 1_000_000)
        .unwrap()
        .iter()
        .map(|e| serde_json::from_slice::<Event>(&e.payload).unwrap())
        .filter(|e| e.body.kind == EventKind::AlarmRaised)
        .map(|e| e.id)
        .collect();
    assert!(
        raised.len() >= SECTORS as usize,
        "{} alarms recorded",
        raised.len()
    );
    let pushes = covered(&hook);
    let mut times: BTreeMap<String, usize> = BTreeMap::new();
    for id in pushes.iter().flatten() {
        *times.entry(id.clone()).or_default() += 1;
    }
    let missing: Vec<_> = raised
        .iter()
        .filter(|id| !times.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "recorded but never pushed: {missing:?}");
    // At least once, not more: a push may repeat only if it was delivered
    // before the kill (its cursor move may not have reached the disk), and
    // then only once.
    for (id, n) in &times {
        assert!(
            *n == 1 || (*n == 2 && before.contains(id)),
            "{id} pushed {n} times (before the kill: {})",
            before.contains(id)
        );
    }
    eprintln!(
        "{} alarms, {} pushes, {} alarms pushed before the kill, {} repeated",
        raised.len(),
        pushes.len(),
        before.len(),
        times.values().filter(|&&n| n > 1).count()
    );
    // Storm condensing: far fewer pushes than alarms.
    assert!(
        pushes.len() < raised.len(),
        "{} pushes for {} alarms",
        pushes.len(),
        raised.len()
    );
    if std::thread::panicking() {
        gw.save_log();
    }
}
