//! Journal benchmark: append rate with group commit, append+ack drain rate,
//! and the time (and memory) to open a journal holding a large backlog.
//!
//! ```text
//! cargo bench --bench journal                  # 1,000,000-event backlog
//! cargo bench --bench journal -- 20000         # small run
//! cargo bench --bench journal -- 20000 --recorders 64 --runs 5
//! cargo bench --bench journal -- 20000 --dir /tmp/jb   # keep the journals
//! ```
//!
//! Every figure is the median of `--runs` runs (default 3). Appends use
//! the production settings: fsync on, a current-thread runtime, N tasks
//! each recording one event at a time. The open is measured in a fresh
//! child process so its RSS is what a restarted gateway would have.
//!
//! "One at a time" records single events a few milliseconds apart, as
//! scenario A's alarms arrive (no two in one commit), and prints the CPU
//! time the process spends per recorded event, all threads together
//! (`/proc/self/task/*/schedstat`), with fsync on and off: the difference
//! is what making one alarm durable costs the CPU on this disk.

use estate_gateway::event::{EventKind, NewEvent, Priority};
use estate_gateway::journal::{Journal, JournalConfig};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SINK: &str = "uplink";
const GW: &str = "gw-bench";

struct Args {
    size: u64,
    recorders: usize,
    runs: usize,
    open_only: Option<String>,
    dir: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        size: 1_000_000,
        recorders: 256,
        runs: 3,
        open_only: None,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--recorders" => a.recorders = num("--recorders").max(1) as usize,
            "--runs" => a.runs = num("--runs").max(1) as usize,
            "--open-only" => a.open_only = it.next(),
            "--dir" => a.dir = it.next(),
            s if s.starts_with("--") => {} // e.g. cargo's `--bench`
            s => a.size = s.parse().expect("size must be a number of events"),
        }
    }
    a
}

fn cfg(dir: &Path, fsync: bool) -> JournalConfig {
    JournalConfig {
        path: dir.to_path_buf(),
        fsync,
        max_bytes: 64 * 1024 * 1024 * 1024,
        ..JournalConfig::default()
    }
}

/// A typical alarm-sized event (~300 bytes of JSON).
fn event(n: u64) -> NewEvent {
    let mut e = NewEvent::system(
        EventKind::AlarmRaised,
        Priority::HIGH,
        serde_json::json!({ "n": n }),
    );
    e.source.device = Some("fence-north".into());
    e.source.point = Some("zone-7".into());
    e.source.zone = Some("villa-12".into());
    e
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `n` events from `recorders` concurrent tasks; returns events/s.
fn append(j: &Journal, n: u64, recorders: usize) -> f64 {
    let rt = rt();
    let left = Arc::new(AtomicU64::new(n));
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..recorders)
            .map(|_| {
                let j = j.clone();
                let left = left.clone();
                tokio::spawn(async move {
                    while left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                        .is_ok()
                    {
                        j.record(vec![event(0)]).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    n as f64 / start.elapsed().as_secs_f64()
}

/// Recorders append `n` events while a sink reads and acknowledges them
/// (as the uplink would); returns events/s through the whole path.
fn append_and_drain(j: &Journal, n: u64, recorders: usize) -> f64 {
    let rt = rt();
    let start_seq = j.stats().last_seq;
    let target = start_seq + n;
    let left = Arc::new(AtomicU64::new(n));
    let start = Instant::now();
    rt.block_on(async {
        let drain = {
            let j = j.clone();
            tokio::spawn(async move {
                let mut w = j.watch();
                let mut acked = j.acked_seq(SINK);
                while acked < target {
                    let batch = j.read_events(acked, 1000).unwrap();
                    if let Some(last) = batch.last() {
                        acked = last.seq;
                        j.ack_events(SINK, acked).unwrap();
                    } else {
                        w.changed().await.unwrap();
                    }
                }
            })
        };
        let tasks: Vec<_> = (0..recorders)
            .map(|_| {
                let j = j.clone();
                let left = left.clone();
                tokio::spawn(async move {
                    while left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                        .is_ok()
                    {
                        j.record(vec![event(0)]).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        drain.await.unwrap();
    });
    n as f64 / start.elapsed().as_secs_f64()
}

/// CPU nanoseconds of every thread of this process so far.
fn process_cpu_ns() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .map(|rd| {
            rd.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// `n` events recorded one at a time, `gap` apart, each awaited (and so
/// committed alone); returns the process's CPU µs per event.
fn one_at_a_time(j: &Journal, n: u64, gap: Duration) -> f64 {
    let rt = rt();
    rt.block_on(async {
        // Warm up: the first commits open and touch the files.
        for _ in 0..20 {
            j.record(vec![event(0)]).await.unwrap();
        }
        let cpu0 = process_cpu_ns();
        for i in 0..n {
            tokio::time::sleep(gap).await;
            j.record(vec![event(i)]).await.unwrap();
        }
        (process_cpu_ns() - cpu0) as f64 / 1000.0 / n as f64
    })
}

/// Read and acknowledge the whole backlog; returns events/s.
fn drain_backlog(j: &Journal) -> f64 {
    let start = Instant::now();
    let mut acked = j.acked_seq(SINK);
    let first = acked;
    loop {
        let batch = j.read_events(acked, 1000).unwrap();
        let Some(last) = batch.last() else { break };
        acked = last.seq;
        j.ack_events(SINK, acked).unwrap();
    }
    (acked - first) as f64 / start.elapsed().as_secs_f64()
}

/// Child mode: open the journal in `dir`, print open time and RSS.
fn open_only(dir: &str) {
    let rss0 = rss_kib();
    let start = Instant::now();
    let j = Journal::open(&cfg(Path::new(dir), true), GW, &[SINK]).unwrap();
    let took = start.elapsed();
    let s = j.stats();
    // Touch the head of the backlog, as the uplink would at start.
    let first = j.read_events(0, 100).unwrap();
    println!(
        "OPEN {} {} {} {} {}",
        took.as_secs_f64(),
        rss0,
        rss_kib(),
        s.events,
        first.len()
    );
}

fn main() {
    let a = args();
    if let Some(dir) = &a.open_only {
        open_only(dir);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = a
        .dir
        .clone()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let n_append = a.size.clamp(1, 200_000);
    println!(
        "journal bench: backlog {} events, appends of {} events by {} recorders, {} runs (medians)",
        a.size, n_append, a.recorders, a.runs
    );

    let mut rates = Vec::new();
    let mut drains = Vec::new();
    let mut backlog_drains = Vec::new();
    for run in 0..a.runs {
        let dir = work.join(format!("append-{run}"));
        let j = Journal::open(&cfg(&dir, true), GW, &[SINK]).unwrap();
        rates.push(append(&j, n_append, a.recorders));
        backlog_drains.push(drain_backlog(&j));
        drains.push(append_and_drain(&j, n_append, a.recorders));
        drop(j);
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "append, group commit, fsync on:     {:>10.0} events/s   (runs: {:?})",
        median(rates.clone()),
        rates.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    println!(
        "append + read/ack drain, in process: {:>10.0} events/s   (runs: {:?})",
        median(drains.clone()),
        drains.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    println!(
        "backlog read/ack drain, in process:  {:>10.0} events/s   (runs: {:?})",
        median(backlog_drains.clone()),
        backlog_drains.iter().map(|r| r.round()).collect::<Vec<_>>()
    );

    let n_single = a.size.clamp(1, 2_000);
    let mut single = [Vec::new(), Vec::new()];
    for run in 0..a.runs {
        for (k, fsync) in [true, false].into_iter().enumerate() {
            let dir = work.join(format!("single-{run}-{fsync}"));
            let j = Journal::open(&cfg(&dir, fsync), GW, &[SINK]).unwrap();
            single[k].push(one_at_a_time(&j, n_single, Duration::from_millis(2)));
            drop(j);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let round = |v: &[f64]| {
        v.iter()
            .map(|r| (r * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    };
    println!(
        "one at a time ({n_single} events, 2 ms apart), CPU per event: fsync on {:.1} µs, off {:.1} µs   (runs: {:?}, {:?})",
        median(single[0].clone()),
        median(single[1].clone()),
        round(&single[0]),
        round(&single[1])
    );

    // Build the backlog quickly (big batches, no fsync), then open it in
    // fresh processes.
    let dir = work.join("backlog");
    {
        let start = Instant::now();
        let j = Journal::open(&cfg(&dir, false), GW, &[SINK]).unwrap();
        let rt = rt();
        let mut done = 0;
        while done < a.size {
            let k = (a.size - done).min(1000);
            rt.block_on(j.record((0..k).map(|i| event(done + i)).collect()))
                .unwrap();
            done += k;
        }
        rt.block_on(j.flush()).unwrap();
        let s = j.stats();
        drop(j);
        // Let sled's threads finish with the files.
        std::thread::sleep(Duration::from_millis(200));
        println!(
            "backlog built: {} events in {:.1} s, {:.0} MiB on disk",
            s.events,
            start.elapsed().as_secs_f64(),
            dir_size(&dir) as f64 / 1048576.0
        );
    }
    let mut opens = Vec::new();
    let mut rss = Vec::new();
    let mut rss_before = Vec::new();
    for _ in 0..a.runs {
        let out = Command::new(std::env::current_exe().unwrap())
            .arg("--open-only")
            .arg(&dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("OPEN "))
            .unwrap_or_else(|| {
                panic!(
                    "open child failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let f: Vec<f64> = line[5..]
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(f[3] as u64, a.size, "reopened journal lost events");
        opens.push(f[0]);
        rss_before.push(f[1]);
        rss.push(f[2]);
    }
    println!(
        "open with {} events backlog:     {:>10.3} s          (runs: {:?})",
        a.size,
        median(opens.clone()),
        opens
            .iter()
            .map(|t| (t * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
    println!(
        "RSS after open (whole process):      {:>10.1} MiB   (before open: {:.1} MiB)",
        median(rss) / 1024.0,
        median(rss_before) / 1024.0
    );
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let m = e.metadata().map(|m| m.len()).unwrap_or(0);
                    if e.path().is_dir() {
                        dir_size(&e.path())
                    } else {
                        m
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
