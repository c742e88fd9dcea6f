//! Polling cost of the Modbus driver (issue's scenario A, driver part):
//! 50 Modbus TCP devices on loopback, each polled every second for holding
//! registers 0–99 and coil 0, on a current_thread runtime. Prints the CPU
//! time of the runtime's thread for two simulators: one whose values never
//! change (unchanged polls are confirmed, not decoded: the fast path) and
//! one whose holding register 0 changes on every read (every poll is
//! decoded). Run with
//!
//! ```text
//! cargo bench --bench modbus_poll
//! ```
//!
//! `BENCH_SECS` sets the measured duration of each run (default 60).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/modbus_sim.rs"]
mod modbus_sim;

use estate_gateway::config::load_str;
use estate_gateway::drivers::modbus;
use estate_gateway::point::BusMessage;
use modbus_sim::ModbusSim;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const DEVICES: usize = 50;

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let ns: u64 = s.split_whitespace().next().unwrap().parse().unwrap();
    Duration::from_nanos(ns)
}

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    for changing in [false, true] {
        if !run(secs, changing) {
            return;
        }
    }
}

/// One measured run; `changing`: the values change on every poll. False
/// when the simulator is missing (skipped).
fn run(secs: u64, changing: bool) -> bool {
    let ports: Vec<u16> = (0..DEVICES).map(|_| common::free_port()).collect();
    let Some(sim) = ModbusSim::start_tcp_ports_with(&ports, &[1], changing) else {
        return false;
    };
    let mut text =
        String::from("[site]\nid = \"bench\"\ngateway = \"gw\"\n[uplink]\nhost = \"127.0.0.1\"\n");
    for (i, port) in sim.tcp_ports.iter().enumerate() {
        write!(
            text,
            "[[devices]]\nid = \"dev-{i}\"\npoll_interval_s = 1\ntimeout_s = 1\n\
             [devices.modbus]\nhost = \"127.0.0.1\"\nport = {port}\n\
             [[devices.points]]\nid = \"coil\"\nregister = \"coil\"\naddress = 0\n"
        )
        .unwrap();
        for a in 0..100 {
            write!(
                text,
                "[[devices.points]]\nid = \"r{a}\"\nregister = \"holding\"\naddress = {a}\ntype = \"u16\"\n"
            )
            .unwrap();
        }
    }
    let cfg = load_str(&text, Path::new("bench.toml")).expect("config");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (polls, decoded, failures, cpu, wall) = rt.block_on(async {
        let (tx, mut rx) = mpsc::channel(1024);
        let token = CancellationToken::new();
        let handles = modbus::spawn(&cfg, tx, token.clone());
        // Warm up: connections open, first polls done.
        let mut warm = 0;
        while warm < DEVICES {
            if let Some(BusMessage::Readings { .. }) = rx.recv().await {
                warm += 1;
            }
        }
        let cpu0 = thread_cpu();
        let t0 = Instant::now();
        let end = tokio::time::Instant::now() + Duration::from_secs(secs);
        let (mut polls, mut decoded, mut failures) = (0u64, 0u64, 0u64);
        while let Ok(Some(m)) = tokio::time::timeout_at(end, rx.recv()).await {
            match m {
                // The points of the requests whose replies changed: the
                // holding registers' (100) when the coil did not change.
                BusMessage::Readings { readings, .. } => {
                    assert!(matches!(readings.len(), 100 | 101), "{}", readings.len());
                    polls += 1;
                    decoded += 1;
                }
                // An unchanged poll: the values of the last one, not decoded.
                BusMessage::Confirmed { points, .. } => {
                    assert_eq!(points.count(), 101);
                    polls += 1;
                }
                BusMessage::DeviceStatus { .. } => failures += 1,
                m @ (BusMessage::Handover { .. } | BusMessage::Unreadable { .. }) => {
                    unreachable!("unexpected {m:?}")
                }
            }
        }
        let cpu = thread_cpu() - cpu0;
        let wall = t0.elapsed();
        token.cancel();
        for h in handles {
            h.await.unwrap();
        }
        (polls, decoded, failures, cpu, wall)
    });
    let per_min = cpu.as_secs_f64() * 60.0 / wall.as_secs_f64();
    let values = if changing {
        "values change every poll"
    } else {
        "values unchanged"
    };
    println!(
        "modbus polling, {values}: {DEVICES} devices x (holding 0-99 + coil 0) at 1 Hz for {:.1} s: \
         {polls} polls ({decoded} decoded), {failures} status changes, CPU {:.3} s = {per_min:.3} CPU-s per 60 s \
         (target <= 0.15 for the whole gateway)",
        wall.as_secs_f64(),
        cpu.as_secs_f64()
    );
    assert_eq!(failures, 0);
    assert!(
        polls as f64 >= DEVICES as f64 * secs as f64 * 0.95,
        "{polls} polls"
    );
    if changing {
        assert_eq!(decoded, polls, "a poll of changed values was not decoded");
    }
    drop(sim);
    true
}
