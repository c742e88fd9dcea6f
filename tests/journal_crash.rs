//! The journal under `kill -9`, and proof that `record()` fsyncs.
//!
//! The writer runs in a child process: this test binary re-executed with
//! `JOURNAL_CHILD` set, running the ignored test `child_writer`. It records
//! events as fast as it can and prints `REC <seq> <tag>` once `record()`
//! has returned. The parent kills it with SIGKILL at random moments, reopens
//! the journal and checks that every printed event is there, intact, and
//! that the seqs are gap-free.

mod common;

use estate_gateway::event::{event_id, Event, EventKind, NewEvent, Priority};
use estate_gateway::journal::{Journal, JournalConfig};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const GW: &str = "gw-crash";
const SINK: &str = "uplink";
/// `crash` (record forever, several tasks, acks and telemetry) or
/// `trace` (one task, a fixed number of records with stderr markers).
const MODE_ENV: &str = "JOURNAL_CHILD";
const DIR_ENV: &str = "JOURNAL_CHILD_DIR";
const FSYNC_ENV: &str = "JOURNAL_CHILD_FSYNC";
const COUNT_ENV: &str = "JOURNAL_CHILD_COUNT";

fn cfg(dir: &Path, fsync: bool) -> JournalConfig {
    JournalConfig {
        path: dir.to_path_buf(),
        fsync,
        telemetry_flush: Duration::from_millis(200),
        ..JournalConfig::default()
    }
}

fn event(tag: u64) -> NewEvent {
    NewEvent::system(
        EventKind::ConfigChanged,
        Priority::INFO,
        serde_json::json!({ "tag": tag, "pad": "x".repeat(100) }),
    )
}

/// The child process. Does nothing unless started by a parent below.
#[test]
#[ignore = "child process of the crash and fsync tests"]
fn child_writer() {
    let Ok(mode) = std::env::var(MODE_ENV) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("JOURNAL_CHILD_DIR"));
    let fsync = std::env::var(FSYNC_ENV).map(|v| v == "1").unwrap_or(true);
    let count: u64 = std::env::var(COUNT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    // As in the daemon: a current-thread runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let j = Journal::open(&cfg(&dir, fsync), GW, &[SINK]).unwrap();
    let tasks = if mode == "trace" { 1 } else { 4 };
    rt.block_on(async {
        let mut handles = Vec::new();
        for t in 0..tasks {
            let j = j.clone();
            let mode = mode.clone();
            handles.push(tokio::spawn(async move {
                let mut i = 0u64;
                while i < count {
                    i += 1;
                    // Unique across tasks and child runs.
                    let tag = (std::process::id() as u64) << 32 | t << 24 | i;
                    if mode == "trace" {
                        marker(&format!("BEGIN {i}\n"));
                    }
                    let rec = j.record(vec![event(tag)]).await.unwrap();
                    if mode == "trace" {
                        marker(&format!("RECORDED {i}\n"));
                    }
                    println!("REC {} {tag}", rec[0].seq);
                    if mode == "crash" {
                        j.record_telemetry(format!("t{tag}").as_bytes()).unwrap();
                        if t == 0 && i % 64 == 0 {
                            j.ack_events(SINK, rec[0].seq.saturating_sub(200)).unwrap();
                            let tl = j.watch().borrow().last_telemetry;
                            j.ack_telemetry(SINK, tl.saturating_sub(100)).unwrap();
                        }
                    }
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
}

/// One `write(2)` to stderr, so the marker is one line in the trace.
fn marker(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn child_command(mode: &str, dir: &Path, fsync: bool, count: Option<u64>) -> Command {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    child_args(&mut cmd, mode, dir, fsync, count);
    cmd
}

fn child_args(cmd: &mut Command, mode: &str, dir: &Path, fsync: bool, count: Option<u64>) {
    cmd.args([
        "child_writer",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(MODE_ENV, mode)
    .env(DIR_ENV, dir)
    .env(FSYNC_ENV, if fsync { "1" } else { "0" });
    if let Some(n) = count {
        cmd.env(COUNT_ENV, n.to_string());
    }
}

/// Starts a crash-mode child; returns it and a channel of `(seq, tag)`.
fn spawn_writer(
    dir: &Path,
) -> (
    Child,
    mpsc::Receiver<(u64, u64)>,
    std::thread::JoinHandle<()>,
) {
    let mut child = child_command("crash", dir, true, None)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let mut it = line.split_whitespace();
            if it.next() != Some("REC") {
                continue;
            }
            let seq = it.next().and_then(|s| s.parse().ok());
            let tag = it.next().and_then(|s| s.parse().ok());
            if let (Some(seq), Some(tag)) = (seq, tag) {
                let _ = tx.send((seq, tag));
            }
        }
    });
    (child, rx, reader)
}

#[test]
fn kill_9_never_loses_a_recorded_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut printed: BTreeMap<u64, u64> = BTreeMap::new();
    let mut last_seq = 0;
    for round in 0..6 {
        let (mut child, rx, reader) = spawn_writer(dir.path());
        // Let it get going, then kill it at a random moment.
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("writer printed nothing");
        assert!(
            first.0 > last_seq,
            "round {round}: seq {} reused (journal had {last_seq})",
            first.0
        );
        printed.insert(first.0, first.1);
        std::thread::sleep(Duration::from_millis(fastrand::u64(20..600)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let before = printed.len();
        for (seq, tag) in rx.try_iter() {
            assert!(
                printed.insert(seq, tag).is_none(),
                "seq {seq} printed twice"
            );
        }
        assert!(printed.len() > before, "round {round}: no progress");

        let j = Journal::open(&cfg(dir.path(), true), GW, &[SINK]).unwrap();
        let stats = j.stats();
        let acked = j.acked_seq(SINK);
        let max_printed = *printed.keys().last().unwrap();
        assert!(
            stats.last_seq >= max_printed,
            "round {round}: {stats:?} < {max_printed}"
        );
        assert!(stats.last_seq >= last_seq, "last_seq went back");
        assert!(acked <= max_printed.max(last_seq));
        let held = j.read_events(acked, usize::MAX).unwrap();
        let seqs: Vec<u64> = held.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (acked + 1..=stats.last_seq).collect::<Vec<_>>(),
            "round {round}: held events are not gap-free"
        );
        assert_eq!(stats.events, stats.last_seq - acked);
        let by_seq: BTreeMap<u64, &[u8]> =
            held.iter().map(|e| (e.seq, e.payload.as_slice())).collect();
        for (&seq, &tag) in printed.range(acked + 1..) {
            let payload = by_seq
                .get(&seq)
                .unwrap_or_else(|| panic!("round {round}: recorded seq {seq} lost"));
            let e: Event = serde_json::from_slice(payload).expect("payload damaged");
            assert_eq!(e.seq, seq);
            assert_eq!(e.id, event_id(GW, seq));
            assert_eq!(e.body.detail.as_ref().unwrap()["tag"], tag, "seq {seq}");
        }
        // Telemetry survived as a readable, contiguous run.
        let t = j.read_telemetry(0, usize::MAX).unwrap();
        assert!(t.windows(2).all(|w| w[1].key == w[0].key + 1));
        assert_eq!(t.len() as u64, j.stats().telemetry);
        last_seq = stats.last_seq;
        eprintln!(
            "round {round}: {} printed in total, journal last_seq {last_seq}, acked {acked}",
            printed.len()
        );
    }
}

#[test]
fn second_process_gets_a_clear_lock_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, rx, reader) = spawn_writer(dir.path());
    rx.recv_timeout(Duration::from_secs(60))
        .expect("writer printed nothing");
    let res = Journal::open(&cfg(dir.path(), true), GW, &[SINK]);
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    let err = match res {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened a journal another process holds"),
    };
    assert!(err.contains("in use by another process?"), "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    // Once the holder is gone, the journal opens.
    Journal::open(&cfg(dir.path(), true), GW, &[SINK]).unwrap();
}

/// One syscall completion from an `strace -f -y` log, in log order.
#[derive(Debug, PartialEq)]
enum Step {
    Begin(u64),
    Recorded(u64),
    /// A write to the journal's data file completed.
    DataWrite,
    /// An fsync/fdatasync of the journal's data file completed.
    DataSync,
}

/// Parses `strace -f -y -o` output into the steps we care about. Handles
/// calls split into `<unfinished ...>` and `<... resumed>` lines.
fn parse_trace(text: &str, data_file: &str) -> Vec<Step> {
    let mut pending: BTreeMap<String, Option<Step>> = BTreeMap::new();
    let mut steps = Vec::new();
    let marker = |call: &str, word: &str| -> Option<u64> {
        let at = call.find(&format!("\"{word} "))? + word.len() + 2;
        let digits: String = call[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    };
    let classify = |call: &str| -> Option<Step> {
        let on_data = call.contains(&format!("{data_file}>"));
        if call.starts_with("pwrite64(") && on_data {
            Some(Step::DataWrite)
        } else if (call.starts_with("fsync(") || call.starts_with("fdatasync(")) && on_data {
            Some(Step::DataSync)
        } else if call.starts_with("write(2") {
            marker(call, "BEGIN")
                .map(Step::Begin)
                .or_else(|| marker(call, "RECORDED").map(Step::Recorded))
        } else {
            None
        }
    };
    for line in text.lines() {
        let Some((pid, call)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        if call.contains("<unfinished ...>") {
            pending.insert(pid.to_string(), classify(call));
        } else if call.starts_with("<...") {
            if let Some(Some(step)) = pending.remove(pid) {
                if !call.contains("= -1") {
                    steps.push(step);
                }
            }
        } else if let Some(step) = classify(call) {
            if !call.contains("= -1") {
                steps.push(step);
            }
        }
    }
    steps
}

/// For every record: after its BEGIN, a data write completed, then an
/// fsync of the data file (the WAL) completed, before its RECORDED. Returns the
/// records for which that does not hold.
fn records_without_fsync(steps: &[Step]) -> (usize, Vec<u64>) {
    let mut bad = Vec::new();
    let mut records = 0;
    let mut current: Option<(u64, bool, bool)> = None; // (id, wrote, synced after write)
    for s in steps {
        match s {
            Step::Begin(i) => current = Some((*i, false, false)),
            Step::DataWrite => {
                if let Some(c) = current.as_mut() {
                    c.1 = true;
                    c.2 = false;
                }
            }
            Step::DataSync => {
                if let Some(c) = current.as_mut() {
                    if c.1 {
                        c.2 = true;
                    }
                }
            }
            Step::Recorded(i) => {
                records += 1;
                match current.take() {
                    Some((b, true, true)) if b == *i => {}
                    _ => bad.push(*i),
                }
            }
        }
    }
    (records, bad)
}

fn run_traced(strace: &Path, fsync: bool) -> (usize, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.txt");
    let jdir = dir.path().join("journal");
    let mut cmd = Command::new(strace);
    cmd.args(["-f", "-y", "-s", "64", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=pwrite64,pwritev,write,fsync,fdatasync,sync_file_range",
        ])
        .arg(std::env::current_exe().unwrap());
    child_args(&mut cmd, "trace", &jdir, fsync, Some(20));
    let out = cmd.stdout(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "traced writer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&trace).unwrap();
    // Events are durable through the write-ahead log (the store itself is
    // only checkpointed): its write and fdatasync are what must precede
    // each RECORDED.
    let data_file = format!("{}/wal.0", jdir.display());
    let steps = parse_trace(&text, &data_file);
    records_without_fsync(&steps)
}

#[test]
fn record_returns_only_after_fdatasync_of_the_write_ahead_log() {
    let Some(strace) =
        common::peer_or_skip("strace", common::which("strace"), "apt-get install strace")
    else {
        return;
    };
    let (records, bad) = run_traced(&strace, true);
    assert_eq!(records, 20, "expected 20 traced records");
    assert!(
        bad.is_empty(),
        "records returned before an fdatasync of the WAL: {bad:?}"
    );

    // Control: with fsync off the same check must fail, or it proves nothing.
    let (records, bad) = run_traced(&strace, false);
    assert_eq!(records, 20);
    assert_eq!(bad.len(), 20, "fsync=false still fsynced: {bad:?}");
}

#[test]
fn trace_parser_handles_split_calls() {
    let log = r#"100 write(2</dev/null>, "BEGIN 1\n", 8) = 8
101 pwrite64(5</j/db>, "\0\0", 2, 0 <unfinished ...>
100 write(1</dev/null>, "x", 1) = 1
101 <... pwrite64 resumed>) = 2
101 sync_file_range(5</j/db>, 0, 2, 7) = 0
101 fsync(6</j/db> <unfinished ...>
101 <... fsync resumed>) = 0
100 write(2</dev/null>, "RECORDED 1\n", 11) = 11
100 write(2</dev/null>, "BEGIN 2\n", 8) = 8
101 fsync(6</j/db>) = 0
101 pwrite64(5</j/db>, "\0\0", 2, 0) = 2
100 write(2</dev/null>, "RECORDED 2\n", 11) = 11
"#;
    let steps = parse_trace(log, "/j/db");
    assert_eq!(
        steps,
        vec![
            Step::Begin(1),
            Step::DataWrite,
            Step::DataSync,
            Step::Recorded(1),
            Step::Begin(2),
            Step::DataSync,
            Step::DataWrite,
            Step::Recorded(2),
        ]
    );
    // Record 2 synced before its write, which does not count.
    assert_eq!(records_without_fsync(&steps), (2, vec![2]));
}
