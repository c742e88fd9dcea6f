//! Journal unit tests: ordering, durability points, cursors, eviction, and
//! property tests over random record/ack/reopen/crash sequences.

use super::*;
use crate::event::{EventKind, Priority};
use proptest::prelude::*;
use std::time::Duration;

const GW: &str = "gw-test";

fn ev(n: u64) -> NewEvent {
    NewEvent::system(
        EventKind::ConfigChanged,
        Priority::INFO,
        serde_json::json!({ "n": n }),
    )
}

fn mem_cfg() -> JournalConfig {
    JournalConfig {
        telemetry_flush: Duration::from_secs(3600),
        ..JournalConfig::default()
    }
}

fn sled_cfg(dir: &std::path::Path) -> JournalConfig {
    JournalConfig {
        path: dir.to_path_buf(),
        fsync: false,
        telemetry_flush: Duration::from_secs(3600),
        ..JournalConfig::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn mem_journal(mem: &Arc<MemStorage>, cfg: &JournalConfig, sinks: &[&str]) -> Journal {
    Journal::with_storage(mem.clone(), cfg, GW, sinks).unwrap()
}

fn seqs(j: &Journal, after: u64) -> Vec<u64> {
    j.read_events(after, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

fn detail_n(payload: &[u8]) -> u64 {
    let e: Event = serde_json::from_slice(payload).unwrap();
    e.body.detail.unwrap()["n"].as_u64().unwrap()
}

#[test]
fn record_assigns_gap_free_seq_ids_and_contract_payload() {
    let rt = rt();
    let mem = Arc::new(MemStorage::new());
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    let a = rt.block_on(j.record(vec![ev(1), ev(2), ev(3)])).unwrap();
    let b = rt.block_on(j.record(vec![ev(4), ev(5)])).unwrap();
    let got: Vec<u64> = a.iter().chain(&b).map(|e| e.seq).collect();
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
    assert_eq!(b[1].id, "gw-test:0000000000000005");
    let stored = j.read_events(0, 10).unwrap();
    assert_eq!(stored.len(), 5);
    for (s, e) in stored.iter().zip(a.iter().chain(&b)) {
        assert_eq!(s.seq, e.seq);
        assert_eq!(s.payload, serde_json::to_vec(e).unwrap());
    }
    assert_eq!(seqs(&j, 3), vec![4, 5]);
    assert_eq!(j.read_events(0, 2).unwrap().len(), 2);
    assert!(j.read_events(0, 0).unwrap().is_empty());
    assert!(rt.block_on(j.record(vec![])).unwrap().is_empty());
    let s = j.stats();
    assert_eq!((s.events, s.last_seq, s.telemetry), (5, 5, 0));
}

#[test]
fn record_returns_after_flush_and_fsync() {
    let rt = rt();
    let mem = Arc::new(MemStorage::new());
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    let (f0, s0) = mem.counts();
    rt.block_on(j.record(vec![ev(1)])).unwrap();
    let (f1, s1) = mem.counts();
    assert!(f1 > f0, "record returned without a flush");
    assert!(s1 > s0, "record returned without an fsync");
    // A crash right after record() returns keeps the event.
    mem.crash();
    drop(j);
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    assert_eq!(seqs(&j, 0), vec![1]);

    let nosync = JournalConfig {
        fsync: false,
        ..mem_cfg()
    };
    let mem2 = Arc::new(MemStorage::new());
    let j2 = mem_journal(&mem2, &nosync, &["uplink"]);
    let (_, s0) = mem2.counts();
    rt.block_on(j2.record(vec![ev(1)])).unwrap();
    assert_eq!(mem2.counts().1, s0, "fsync=false must not fsync");
}

#[test]
fn a_failed_write_keeps_seqs_gap_free() {
    let rt = rt();
    let mem = Arc::new(MemStorage::new());
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    mem.set_fail_apply(true);
    let err = rt.block_on(j.record(vec![ev(1)])).unwrap_err();
    assert!(err.to_string().contains("write failed"), "{err}");
    assert!(seqs(&j, 0).is_empty());
    mem.set_fail_apply(false);
    // The failed event kept seq 1 and goes out with the next commit.
    let r = rt.block_on(j.record(vec![ev(2)])).unwrap();
    assert_eq!(r[0].seq, 2);
    let held = j.read_events(0, 10).unwrap();
    assert_eq!(held.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(detail_n(&held[0].payload), 1);
}

#[test]
fn concurrent_records_share_a_flush() {
    let rt = rt();
    let mem = Arc::new(MemStorage::with_flush_delay(Duration::from_millis(20)));
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    let (f0, _) = mem.counts();
    let mut all: Vec<u64> = rt.block_on(async {
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let j = j.clone();
                tokio::spawn(async move { j.record(vec![ev(i)]).await.unwrap()[0].seq })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let flushes = mem.counts().0 - f0;
    assert!(
        flushes <= 10,
        "100 concurrent records took {flushes} flushes"
    );
    all.sort();
    assert_eq!(all, (1..=100).collect::<Vec<_>>());
}

#[test]
fn seq_continues_across_reopen_even_when_everything_was_acked() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let cfg = sled_cfg(dir.path());
    {
        let j = Journal::open(&cfg, GW, &["uplink"]).unwrap();
        rt.block_on(j.record(vec![ev(1), ev(2)])).unwrap();
    }
    {
        let j = Journal::open(&cfg, GW, &["uplink"]).unwrap();
        assert_eq!(seqs(&j, 0), vec![1, 2]);
        let r = rt.block_on(j.record(vec![ev(3)])).unwrap();
        assert_eq!(r[0].seq, 3);
        j.ack_events("uplink", 3).unwrap();
        assert_eq!(j.stats().events, 0);
        assert!(seqs(&j, 0).is_empty());
    }
    let j = Journal::open(&cfg, GW, &["uplink"]).unwrap();
    assert_eq!(j.stats().last_seq, 3);
    assert_eq!(j.acked_seq("uplink"), 3);
    assert_eq!(j.stats().events, 0);
    let r = rt.block_on(j.record(vec![ev(4)])).unwrap();
    assert_eq!(r[0].seq, 4);
    assert_eq!(r[0].id, event_id(GW, 4));
    assert_eq!(seqs(&j, 0), vec![4]);
}

#[test]
fn open_reads_a_few_keys_whatever_the_backlog() {
    let rt = rt();
    let mem = Arc::new(MemStorage::new());
    let j = mem_journal(&mem, &mem_cfg(), &["uplink", "push"]);
    rt.block_on(j.record((1..=20_000).map(ev).collect()))
        .unwrap();
    for _ in 0..5000 {
        j.record_telemetry(b"t").unwrap();
    }
    j.ack_events("uplink", 10).unwrap();
    rt.block_on(j.flush()).unwrap();
    drop(j);
    let before = mem.entries_read();
    let j = mem_journal(&mem, &mem_cfg(), &["uplink", "push"]);
    let read = mem.entries_read() - before;
    assert!(read <= 10, "open read {read} entries");
    let s = j.stats();
    assert_eq!((s.events, s.telemetry, s.last_seq), (20_000, 5000, 20_000));
}

#[test]
fn the_newest_events_are_read_from_memory_and_match_the_store() {
    let rt = rt();
    let mem = Arc::new(MemStorage::new());
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    rt.block_on(j.record((1..=40).map(ev).collect())).unwrap();
    // The newest event is in the tail block, kept in memory.
    let before = mem.entries_read();
    let newest = j.read_events(39, 100).unwrap();
    assert_eq!(
        mem.entries_read(),
        before,
        "read the store for the newest event"
    );
    assert_eq!((newest[0].seq, detail_n(&newest[0].payload)), (40, 40));
    // Every position and batch size, from memory or the store: the same
    // events, in order.
    let check = |j: &Journal| {
        for after in 0..=41u64 {
            for max in [0usize, 1, 3, 100] {
                let got: Vec<(u64, u64)> = j
                    .read_events(after, max)
                    .unwrap()
                    .iter()
                    .map(|e| (e.seq, detail_n(&e.payload)))
                    .collect();
                let want: Vec<(u64, u64)> = (after + 1..=40).take(max).map(|s| (s, s)).collect();
                assert_eq!(got, want, "after {after}, max {max}");
            }
        }
    };
    check(&j);
    // After a reopen the tail is loaded from the store.
    drop(j);
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    check(&j);
    // Acknowledging everything removes the tail block: reads go on from
    // the next one.
    j.ack_events("uplink", 40).unwrap();
    rt.block_on(j.record(vec![ev(41)])).unwrap();
    assert_eq!(seqs(&j, 40), [41]);
    assert_eq!(seqs(&j, 0), [41]);
}

/// Without a WAL: the events' blocks are written, then the states' write
/// fails. The events are not written a second time by the next commit.
#[test]
fn events_written_before_a_failed_state_write_are_not_written_twice() {
    let rt = rt();
    let mem = Arc::new(MemStorage::new());
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    mem.fail_apply_after(1);
    let r = rt.block_on(j.record_with_states(
        (1..=3).map(ev).collect(),
        vec![("alarm/a".into(), Some(b"x".to_vec()))],
    ));
    let Err(JournalError::NotDurable { first, last, .. }) = r else {
        panic!("{r:?}")
    };
    assert_eq!((first, last), (1, 3));
    // Nothing durable yet: not readable.
    assert!(j.read_events(0, 10).unwrap().is_empty());
    mem.set_fail_apply(false);
    rt.block_on(j.wait_durable(3)).unwrap();
    let read: Vec<(u64, u64)> = j
        .read_events(0, 10)
        .unwrap()
        .iter()
        .map(|e| (e.seq, detail_n(&e.payload)))
        .collect();
    assert_eq!(read, [(1, 1), (2, 2), (3, 3)]);
    assert_eq!(j.load_state("alarm/a").unwrap().as_deref(), Some(&b"x"[..]));
    rt.block_on(j.record(vec![ev(4)])).unwrap();
    drop(j);
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    assert_eq!(seqs(&j, 0), [1, 2, 3, 4]);
    assert_eq!(
        j.read_events(3, 1)
            .unwrap()
            .iter()
            .map(|e| detail_n(&e.payload))
            .collect::<Vec<_>>(),
        [4]
    );
}

#[test]
fn cursors_are_independent_and_removal_waits_for_every_sink() {
    let rt = rt();
    let mem = Arc::new(MemStorage::new());
    let j = mem_journal(&mem, &mem_cfg(), &["uplink", "push"]);
    rt.block_on(j.record((1..=10).map(ev).collect())).unwrap();
    j.ack_events("uplink", 8).unwrap();
    assert_eq!(j.acked_seq("uplink"), 8);
    assert_eq!(j.acked_seq("push"), 0);
    // push has acknowledged nothing: everything is still there.
    assert_eq!(seqs(&j, 0), (1..=10).collect::<Vec<_>>());
    assert_eq!(j.stats().events, 10);
    j.ack_events("push", 5).unwrap();
    assert_eq!(seqs(&j, 0), (6..=10).collect::<Vec<_>>());
    assert_eq!(j.stats().events, 5);
    // Cursors never move back; acks past the end are clamped.
    j.ack_events("push", 2).unwrap();
    assert_eq!(j.acked_seq("push"), 5);
    j.ack_events("push", 1000).unwrap();
    assert_eq!(j.acked_seq("push"), 10);
    assert_eq!(seqs(&j, 0), vec![9, 10]);
    assert!(matches!(
        j.ack_events("nobody", 1),
        Err(JournalError::UnknownSink(s)) if s == "nobody"
    ));
    assert!(matches!(
        j.ack_telemetry("nobody", 1),
        Err(JournalError::UnknownSink(_))
    ));
    assert_eq!(j.acked_seq("nobody"), 0);

    // Reopen: cursors persisted; a sink dropped from the list no longer
    // holds events back.
    rt.block_on(j.flush()).unwrap();
    drop(j);
    let j = mem_journal(&mem, &mem_cfg(), &["push"]);
    assert_eq!(j.acked_seq("push"), 10);
    assert!(seqs(&j, 0).is_empty());
    // A new sink starts at what is still held.
    drop(j);
    let j = mem_journal(&mem, &mem_cfg(), &["push", "web"]);
    assert_eq!(j.acked_seq("web"), 10);
}

#[test]
fn large_acknowledgement_removes_in_chunks() {
    let rt = rt();
    let mem = Arc::new(MemStorage::new());
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    let n = (REMOVE_CHUNK * 3 + 7) as u64;
    rt.block_on(j.record((1..=n).map(ev).collect())).unwrap();
    let before = j.stats().live_bytes;
    assert!(before > 0);
    j.ack_events("uplink", n - 1).unwrap();
    assert_eq!(seqs(&j, 0), vec![n]);
    let s = j.stats();
    assert_eq!(s.events, 1);
    // What is left is the block holding the last event.
    assert!(s.live_bytes < before / 50, "{s:?}");
}

#[test]
fn telemetry_lane_reads_acks_and_persists_keys() {
    let rt = rt();
    let mem = Arc::new(MemStorage::new());
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    for i in 0..5u8 {
        j.record_telemetry(&[i]).unwrap();
    }
    let t = j.read_telemetry(0, 10).unwrap();
    assert_eq!(
        t.iter().map(|t| t.key).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(t[2].payload, vec![2]);
    j.ack_telemetry("uplink", 3).unwrap();
    assert_eq!(j.acked_telemetry("uplink"), 3);
    assert_eq!(j.read_telemetry(0, 10).unwrap().len(), 2);
    assert_eq!(j.stats().telemetry, 2);
    assert!(matches!(
        j.record_telemetry(&vec![0; MAX_TELEMETRY_BYTES + 1]),
        Err(JournalError::TooLarge(_))
    ));
    rt.block_on(j.flush()).unwrap();
    mem.crash();
    drop(j);
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    j.record_telemetry(b"x").unwrap();
    assert_eq!(
        j.read_telemetry(0, 10)
            .unwrap()
            .iter()
            .map(|t| t.key)
            .collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
}

#[test]
fn telemetry_written_lazily_is_flushed_by_the_committer() {
    let mem = Arc::new(MemStorage::new());
    let cfg = JournalConfig {
        telemetry_flush: Duration::from_millis(20),
        ..mem_cfg()
    };
    let j = mem_journal(&mem, &cfg, &["uplink"]);
    let (f0, _) = mem.counts();
    j.record_telemetry(b"t").unwrap();
    // The committer flushes on its own; no record() or flush() call.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mem.counts().0 == f0 {
        assert!(
            std::time::Instant::now() < deadline,
            "telemetry never flushed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    mem.crash();
    drop(j);
    let j = mem_journal(&mem, &cfg, &["uplink"]);
    assert_eq!(j.read_telemetry(0, 10).unwrap().len(), 1);
}

/// Telemetry keys in the store itself (not the journal's view of it).
fn stored_telemetry_keys(mem: &MemStorage) -> Vec<u64> {
    stored_keys(mem, keys::telemetry(0), keys::telemetry(u64::MAX))
}

/// The numbers of the store's keys from `start` to `end`.
fn stored_keys(mem: &MemStorage, start: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> Vec<u64> {
    mem.range(start.as_ref(), end.as_ref(), usize::MAX)
        .unwrap()
        .iter()
        .map(|(k, _)| keys::decode_key(k))
        .collect()
}

#[test]
fn telemetry_acknowledged_before_a_checkpoint_never_reaches_the_store() {
    let rt = rt();
    let mem = Arc::new(MemStorage::new());
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    for i in 0..100u8 {
        j.record_telemetry(&[i; 200]).unwrap();
        let t = j.read_telemetry(j.acked_telemetry("uplink"), 10).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].key, i as u64 + 1);
        assert_eq!(t[0].payload, vec![i; 200]);
        j.ack_telemetry("uplink", t[0].key).unwrap();
    }
    // Two waiting at the checkpoint: only they are written.
    j.record_telemetry(b"a").unwrap();
    j.record_telemetry(b"b").unwrap();
    assert!(stored_telemetry_keys(&mem).is_empty());
    assert_eq!(j.stats().telemetry, 2);
    rt.block_on(j.flush()).unwrap();
    assert_eq!(stored_telemetry_keys(&mem), vec![101, 102]);
    // Keys go on after the ones that never were stored, across a reopen.
    mem.crash();
    j.abandon();
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    assert_eq!(j.acked_telemetry("uplink"), 100);
    j.record_telemetry(b"c").unwrap();
    let t = j.read_telemetry(0, 10).unwrap();
    assert_eq!(
        t.iter().map(|t| t.key).collect::<Vec<_>>(),
        vec![101, 102, 103]
    );
    assert_eq!(t[2].payload, b"c");
}

#[test]
fn telemetry_outgrowing_its_memory_is_written_and_read_back_in_order() {
    let rt = rt();
    let mem = Arc::new(MemStorage::new());
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    let payload = |i: u64| i.to_be_bytes().repeat(100);
    let n = 2 * HELD_TELEMETRY_BYTES / 800;
    for i in 1..=n {
        j.record_telemetry(&payload(i)).unwrap();
    }
    // No flush yet: the oldest went to the store, the newest are held.
    let stored = stored_telemetry_keys(&mem);
    assert!(
        !stored.is_empty() && (stored.len() as u64) < n,
        "{}",
        stored.len()
    );
    assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>());
    let all = j.read_telemetry(0, usize::MAX).unwrap();
    assert_eq!(
        all.iter().map(|t| t.key).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    assert!(all.iter().all(|t| t.payload == payload(t.key)));
    // A read across the boundary, limited.
    let edge = stored.len() as u64;
    let some = j.read_telemetry(edge - 2, 4).unwrap();
    assert_eq!(
        some.iter().map(|t| t.key).collect::<Vec<_>>(),
        (edge - 1..=edge + 2).collect::<Vec<_>>()
    );
    // Acknowledging past the boundary empties the store, then the memory.
    j.ack_telemetry("uplink", edge + 1).unwrap();
    assert!(stored_telemetry_keys(&mem).is_empty());
    assert_eq!(j.stats().telemetry, n - edge - 1);
    assert_eq!(j.read_telemetry(0, 1).unwrap()[0].key, edge + 2);
    rt.block_on(j.flush()).unwrap();
    assert_eq!(
        stored_telemetry_keys(&mem),
        (edge + 2..=n).collect::<Vec<_>>()
    );
    assert_eq!(j.stats().live_bytes, recount(&mem, 0).2);
}

#[test]
fn eviction_takes_oldest_telemetry_and_never_events() {
    let rt = rt();
    let mem = Arc::new(MemStorage::new());
    let cfg = JournalConfig {
        max_bytes: 20_000,
        ..mem_cfg()
    };
    let j = mem_journal(&mem, &cfg, &["uplink"]);
    let payload = [7u8; 100];
    for _ in 0..1000 {
        j.record_telemetry(&payload).unwrap();
    }
    let s = j.stats();
    assert!(s.live_bytes <= 20_000, "{s:?}");
    assert!(s.telemetry_evicted > 0);
    assert!(!s.pressure);
    // What is left is the newest telemetry, contiguous up to the last key.
    let t = j.read_telemetry(0, usize::MAX).unwrap();
    assert_eq!(t.last().unwrap().key, 1000);
    assert_eq!(t.len() as u64, s.telemetry);
    assert!(t.windows(2).all(|w| w[1].key == w[0].key + 1));

    // Events push telemetry out, and are all kept even past the cap.
    let recorded: Vec<u64> = rt
        .block_on(j.record((1..=300).map(ev).collect()))
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    let s = j.stats();
    assert_eq!(s.telemetry, 0, "{s:?}");
    assert_eq!(s.events, 300);
    assert!(s.pressure, "{s:?}");
    assert_eq!(seqs(&j, 0), recorded);
    // Under pressure telemetry is refused, events still recorded.
    assert!(matches!(
        j.record_telemetry(&payload),
        Err(JournalError::Full(_))
    ));
    rt.block_on(j.record(vec![ev(301)])).unwrap();
    assert_eq!(j.stats().events, 301);
    // Delivering events relieves the pressure.
    j.ack_events("uplink", 301).unwrap();
    rt.block_on(j.record(vec![ev(302)])).unwrap();
    assert!(!j.stats().pressure);
    j.record_telemetry(&payload).unwrap();
}

#[test]
fn watch_sees_durable_events_and_telemetry() {
    let rt = rt();
    let mem = Arc::new(MemStorage::new());
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    let mut w = j.watch();
    assert_eq!(*w.borrow_and_update(), JournalHead::default());
    rt.block_on(j.record(vec![ev(1), ev(2)])).unwrap();
    assert!(w.has_changed().unwrap());
    assert_eq!(w.borrow_and_update().last_seq, 2);
    j.record_telemetry(b"x").unwrap();
    assert!(w.has_changed().unwrap());
    assert_eq!(
        *w.borrow_and_update(),
        JournalHead {
            last_seq: 2,
            last_telemetry: 1
        }
    );
}

#[test]
fn second_open_of_a_locked_store_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sled_cfg(dir.path());
    let _j = Journal::open(&cfg, GW, &["uplink"]).unwrap();
    let err = match Journal::open(&cfg, GW, &["uplink"]) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("second open succeeded"),
    };
    assert!(err.contains("in use by another process?"), "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
}

#[test]
fn damaged_metadata_is_an_error_not_a_panic() {
    let mem = Arc::new(MemStorage::new());
    let mut b = Batch::default();
    b.put(keys::META, b"garbage".to_vec());
    mem.apply(b).unwrap();
    let err = Journal::with_storage(mem.clone(), &mem_cfg(), GW, &["uplink"])
        .err()
        .expect("opened a damaged journal");
    assert!(err.to_string().contains("damaged"), "{err}");

    // Metadata claiming events that are not there: logged, skipped, and
    // their seqs are not reused.
    let mem = Arc::new(MemStorage::new());
    let mut b = Batch::default();
    b.put(
        keys::META,
        keys::Meta {
            last_seq: 5,
            ..Default::default()
        }
        .encode(),
    );
    mem.apply(b).unwrap();
    let j = Journal::with_storage(mem, &mem_cfg(), GW, &["uplink"]).unwrap();
    assert_eq!(j.stats().events, 0);
    let r = rt().block_on(j.record(vec![ev(6)])).unwrap();
    assert_eq!(r[0].seq, 6);
}

/// Recounts what the store holds, the slow way, to check the counters:
/// events above `held_from`, telemetry messages, bytes.
fn recount(mem: &MemStorage, held_from: u64) -> (u64, u64, u64) {
    let ev = mem
        .range(&keys::event(0), &keys::event(u64::MAX), usize::MAX)
        .unwrap();
    let events = ev
        .iter()
        .map(|(k, v)| {
            let first = keys::decode_key(k);
            let n = keys::block_count(v).unwrap();
            (first..first + n).filter(|s| *s > held_from).count() as u64
        })
        .sum();
    let tl = mem
        .range(&keys::telemetry(0), &keys::telemetry(u64::MAX), usize::MAX)
        .unwrap();
    let bytes = ev
        .iter()
        .chain(&tl)
        .map(|(k, v)| keys::entry_cost(k, v))
        .sum();
    (events, tl.len() as u64, bytes)
}

#[test]
fn a_crash_after_any_write_recovers_consistent_counts() {
    let rt = rt();
    let cfg = JournalConfig {
        max_bytes: 2 * HELD_TELEMETRY_BYTES,
        ..mem_cfg()
    };
    // The unflushed tail: a record whose flush failed, an acknowledgement
    // (cursor, metadata, deletions), telemetry written to the store as it
    // outgrows its memory, with eviction.
    let setup = || {
        let mem = Arc::new(MemStorage::new());
        let j = mem_journal(&mem, &cfg, &["uplink"]);
        rt.block_on(j.record((1..=100).map(ev).collect())).unwrap();
        mem.set_fail_flush(true);
        assert!(rt
            .block_on(j.record((101..=110).map(ev).collect()))
            .is_err());
        j.ack_events("uplink", 60).unwrap();
        for i in 0..(3 * HELD_TELEMETRY_BYTES / 16_000) as u32 {
            j.record_telemetry(&i.to_be_bytes().repeat(4000)).unwrap();
        }
        assert!(j.stats().telemetry_evicted > 0);
        (mem, j)
    };
    let total = {
        let (mem, _j) = setup();
        mem.pending()
    };
    assert!(total > 150, "{total}");
    for n in 0..=total {
        let (mem, j) = setup();
        mem.crash_keeping(n);
        mem.set_fail_flush(false);
        // A crash: the committer's final checkpoint must not run.
        j.abandon();
        let j = mem_journal(&mem, &cfg, &["uplink"]);
        let s = j.stats();
        let (events, telemetry, bytes) = recount(&mem, j.acked_seq("uplink"));
        assert_eq!(
            (s.events, s.telemetry, s.live_bytes),
            (events, telemetry, bytes),
            "crash after {n} writes"
        );
        // Confirmed events survive; seqs stay gap-free and are not reused.
        assert!(s.last_seq >= 100, "crash after {n}");
        let acked = j.acked_seq("uplink");
        assert_eq!(
            seqs(&j, acked),
            (acked + 1..=s.last_seq).collect::<Vec<_>>()
        );
        let t = j.read_telemetry(0, usize::MAX).unwrap();
        assert!(t.windows(2).all(|w| w[1].key == w[0].key + 1));
        let next = rt.block_on(j.record(vec![ev(0)])).unwrap();
        assert_eq!(next[0].seq, s.last_seq + 1);
    }
}

/// One step of a random journal workload.
#[derive(Clone, Debug)]
enum Op {
    Record(u8),
    Telemetry,
    Ack {
        sink: usize,
        ahead: u8,
    },
    Reopen,
    /// Crash keeping this fraction (per 256) of the unflushed writes.
    Crash(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..4).prop_map(Op::Record),
        2 => Just(Op::Telemetry),
        3 => (0usize..2, 0u8..6).prop_map(|(sink, ahead)| Op::Ack { sink, ahead }),
        1 => Just(Op::Reopen),
        1 => any::<u8>().prop_map(Op::Crash),
    ]
}

const SINKS: [&str; 2] = ["uplink", "push"];

/// Runs `ops` and checks, after every step: seqs strictly increasing and
/// gap-free across reopen/crash, every recorded event is readable with its
/// payload until every sink acknowledged it, and nothing a sink has not
/// acknowledged is ever removed.
fn check_ops(ops: &[Op], reopen: &mut dyn FnMut(Option<Journal>, Option<u8>) -> Journal) {
    let rt = rt();
    let mut j = reopen(None, None);
    let mut recorded: BTreeMap<u64, u64> = BTreeMap::new(); // seq → detail n
    let mut last_seq = 0;
    let mut n = 0;
    for op in ops {
        match op {
            Op::Record(k) => {
                let batch: Vec<NewEvent> = (0..*k)
                    .map(|_| {
                        n += 1;
                        ev(n)
                    })
                    .collect();
                let first_n = n - *k as u64 + 1;
                let got = rt.block_on(j.record(batch)).unwrap();
                for (i, e) in got.iter().enumerate() {
                    assert_eq!(e.seq, last_seq + 1, "seq not gap-free");
                    assert_eq!(e.id, event_id(GW, e.seq));
                    last_seq = e.seq;
                    recorded.insert(e.seq, first_n + i as u64);
                }
            }
            Op::Telemetry => j.record_telemetry(b"t").unwrap(),
            Op::Ack { sink, ahead } => {
                let s = SINKS[*sink];
                let upto = j.acked_seq(s) + *ahead as u64;
                j.ack_events(s, upto).unwrap();
                let t = j.acked_telemetry(s) + *ahead as u64;
                j.ack_telemetry(s, t).unwrap();
            }
            Op::Reopen => j = reopen(Some(j), None),
            Op::Crash(keep) => {
                j = reopen(Some(j), Some(*keep));
                // Unconfirmed writes may survive a crash; confirmed ones must.
                assert!(j.stats().last_seq >= last_seq, "recorded events lost");
                last_seq = j.stats().last_seq;
            }
        }
        assert_eq!(j.stats().last_seq, last_seq);
        let min_acked = SINKS.iter().map(|s| j.acked_seq(s)).min().unwrap();
        for s in SINKS {
            let acked = j.acked_seq(s);
            assert!(acked <= last_seq);
            let held = j.read_events(acked, usize::MAX).unwrap();
            let want: Vec<u64> = (acked + 1..=last_seq).collect();
            assert_eq!(
                held.iter().map(|e| e.seq).collect::<Vec<_>>(),
                want,
                "sink {s} lost unacknowledged events"
            );
            for e in held {
                if let Some(n) = recorded.get(&e.seq) {
                    assert_eq!(detail_n(&e.payload), *n, "payload changed");
                }
            }
        }
        assert_eq!(j.stats().events, last_seq - min_acked);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn random_workloads_keep_order_and_acks_in_memory(ops in prop::collection::vec(op(), 1..60)) {
        let mem = Arc::new(MemStorage::new());
        check_ops(&ops, &mut |old, crash| {
            if let Some(keep) = crash {
                mem.crash_keeping(mem.pending() * keep as usize / 256);
            }
            if let Some(old) = old {
                // A crash: the committer's final checkpoint must not run.
                if crash.is_some() { old.abandon() } else { drop(old) }
            }
            let j = mem_journal(&mem, &mem_cfg(), &SINKS);
            let (events, telemetry, bytes) = recount(&mem, SINKS.iter().map(|s| j.acked_seq(s)).min().unwrap());
            let s = j.stats();
            assert_eq!((s.events, s.telemetry, s.live_bytes), (events, telemetry, bytes));
            j
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn random_workloads_keep_order_and_acks_on_sled(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = sled_cfg(dir.path());
        check_ops(&ops, &mut |old, _| {
            drop(old);
            Journal::open(&cfg, GW, &SINKS).unwrap()
        });
    }
}

fn wal_journal(mem: &Arc<MemStorage>, dir: &std::path::Path, sinks: &[&str]) -> Journal {
    Journal::with_storage_and_wal(mem.clone(), Some(dir), &mem_cfg(), GW, sinks).unwrap()
}

#[test]
fn with_a_wal_commits_sync_the_wal_not_the_store_and_a_crash_loses_nothing() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    let (flushes_before, _) = mem.counts();
    for n in 1..=20 {
        rt.block_on(j.record(vec![ev(n)])).unwrap();
    }
    // No store flush per record: the WAL made them durable, and the store
    // has not even been written (it takes them at the next checkpoint).
    assert_eq!(mem.counts().0, flushes_before);
    assert_eq!(mem.pending(), 0);
    j.ack_events("uplink", 5).unwrap();
    drop(j.read_events(0, 1));
    // The process dies: the store loses every write since its last flush.
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(seqs(&j, 0), (1..=20).collect::<Vec<_>>());
    let got: Vec<u64> = j
        .read_events(0, 100)
        .unwrap()
        .iter()
        .map(|e| detail_n(&e.payload))
        .collect();
    assert_eq!(got, (1..=20).collect::<Vec<_>>());
    // The replay was checkpointed: another crash keeps everything.
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(j.stats().last_seq, 20);
    let next = rt.block_on(j.record(vec![ev(21)])).unwrap();
    assert_eq!(next[0].seq, 21);
}

/// First seqs of the event blocks in the store.
fn stored_event_blocks(mem: &MemStorage) -> Vec<u64> {
    stored_keys(mem, keys::event(0), keys::event(u64::MAX))
}

#[test]
fn with_a_wal_events_every_sink_has_before_a_checkpoint_never_reach_the_store() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = wal_journal(&mem, dir.path(), &["uplink", "push"]);
    for n in 1..=30 {
        let got = rt.block_on(j.record(vec![ev(n)])).unwrap();
        j.ack_events("uplink", got[0].seq).unwrap();
        j.ack_events("push", got[0].seq).unwrap();
    }
    // One sink is behind for the last two: only they are written.
    rt.block_on(j.record(vec![ev(31), ev(32)])).unwrap();
    j.ack_events("uplink", 32).unwrap();
    assert!(stored_event_blocks(&mem).is_empty());
    assert_eq!(j.stats().events, 2);
    assert!(j.stats().live_bytes > 0);
    rt.block_on(j.flush()).unwrap();
    assert_eq!(stored_event_blocks(&mem), vec![31]);
    assert_eq!(seqs(&j, 0), vec![31, 32]);
    // Seqs go on after the ones that never were stored, across a crash
    // (the WAL is empty after the checkpoint: the store alone knows).
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink", "push"]);
    assert_eq!(j.acked_seq("push"), 30);
    assert_eq!(j.acked_seq("uplink"), 32);
    let next = rt.block_on(j.record(vec![ev(33)])).unwrap();
    assert_eq!(next[0].seq, 33, "no seq given out twice");
    let got: Vec<u64> = j
        .read_events(30, 100)
        .unwrap()
        .iter()
        .map(|e| detail_n(&e.payload))
        .collect();
    assert_eq!(got, vec![31, 32, 33]);
}

#[test]
fn with_a_wal_held_events_are_read_after_the_stored_ones_and_removed_across_the_boundary() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    rt.block_on(j.record((1..=10).map(ev).collect())).unwrap();
    rt.block_on(j.flush()).unwrap();
    assert_eq!(stored_event_blocks(&mem), vec![1]);
    for n in 11..=20 {
        rt.block_on(j.record(vec![ev(n)])).unwrap();
    }
    // Stored, then held, in seq order, from any position and in pages.
    assert_eq!(seqs(&j, 5), (6..=20).collect::<Vec<_>>());
    let page: Vec<u64> = j.read_events(8, 4).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(page, vec![9, 10, 11, 12]);
    let payloads: Vec<u64> = j
        .read_events(0, 100)
        .unwrap()
        .iter()
        .map(|e| detail_n(&e.payload))
        .collect();
    assert_eq!(payloads, (1..=20).collect::<Vec<_>>());
    // An acknowledgement past the stored block removes it and drops the
    // held events it covers; the rest are written at the checkpoint.
    j.ack_events("uplink", 15).unwrap();
    assert!(stored_event_blocks(&mem).is_empty());
    assert_eq!(seqs(&j, 0), (16..=20).collect::<Vec<_>>());
    assert_eq!(j.stats().events, 5);
    rt.block_on(j.flush()).unwrap();
    assert_eq!(stored_event_blocks(&mem), vec![16]);
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(seqs(&j, 0), (16..=20).collect::<Vec<_>>());
    assert_eq!(j.stats().events, 5);
}

#[test]
fn with_a_wal_a_crash_before_the_checkpoint_recovers_held_events_and_their_acknowledgements() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    rt.block_on(j.record((1..=10).map(ev).collect())).unwrap();
    // Delivered and dropped from memory; the cursor goes to the WAL with
    // the next commit.
    j.ack_events("uplink", 10).unwrap();
    rt.block_on(j.record(vec![ev(11)])).unwrap();
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(j.acked_seq("uplink"), 10);
    assert_eq!(seqs(&j, 0), vec![11]);
    // An acknowledgement that no commit followed is lost with the
    // process: those events are delivered again, never lost, and seqs
    // still go on.
    j.ack_events("uplink", 11).unwrap();
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(seqs(&j, 0), vec![11]);
    let next = rt.block_on(j.record(vec![ev(12)])).unwrap();
    assert_eq!(next[0].seq, 12);
}

#[test]
fn with_a_wal_flush_checkpoints_the_store() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    rt.block_on(j.record(vec![ev(1), ev(2)])).unwrap();
    j.ack_events("uplink", 1).unwrap();
    rt.block_on(j.flush()).unwrap();
    assert_eq!(mem.pending(), 0);
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(seqs(&j, 0), vec![2]);
    assert_eq!(j.acked_seq("uplink"), 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn random_workloads_keep_order_and_acks_with_a_wal(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemStorage::new());
        check_ops(&ops, &mut |old, crash| {
            if let Some(keep) = crash {
                mem.crash_keeping(mem.pending() * keep as usize / 256);
            }
            if let Some(old) = old {
                // A crash: the committer's final checkpoint must not run.
                if crash.is_some() { old.abandon() } else { drop(old) }
            }
            wal_journal(&mem, dir.path(), &SINKS)
        });
    }
}

#[test]
fn background_checkpoints_flush_the_store_and_a_crash_still_loses_nothing() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let cfg = JournalConfig {
        telemetry_flush: Duration::from_millis(20),
        ..mem_cfg()
    };
    let open = || {
        Journal::with_storage_and_wal(mem.clone(), Some(dir.path()), &cfg, GW, &["uplink"]).unwrap()
    };
    let j = open();
    let (flushes, _) = mem.counts();
    for n in 1..=60 {
        rt.block_on(j.record(vec![ev(n)])).unwrap();
        // Spread over several checkpoint intervals.
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(mem.counts().0 > flushes, "no checkpoint ran");
    mem.crash();
    j.abandon();
    let j = open();
    assert_eq!(seqs(&j, 0), (1..=60).collect::<Vec<_>>());
}

fn small_wal_journal(mem: &Arc<MemStorage>, dir: &std::path::Path, cfg: &JournalConfig) -> Journal {
    // 4 KiB files: a few events fill one, so the files switch (background
    // checkpoints) and both fill up (in-line checkpoints) within a test.
    Journal::with_storage_and_wal_sized(mem.clone(), Some(dir), 4096, cfg, GW, &["uplink"]).unwrap()
}

#[test]
fn small_wal_files_switch_and_fill_and_a_crash_loses_nothing() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = small_wal_journal(&mem, dir.path(), &mem_cfg());
    let (flushes, _) = mem.counts();
    for n in 1..=200 {
        rt.block_on(j.record(vec![ev(n)])).unwrap();
        if n % 50 == 0 {
            // A batch larger than one file: an in-line checkpoint.
            let big: Vec<NewEvent> = (0..40).map(|_| ev(0)).collect();
            rt.block_on(j.record(big)).unwrap();
        }
    }
    assert!(
        mem.counts().0 > flushes,
        "full WAL files never checkpointed the store"
    );
    let last = j.stats().last_seq;
    assert_eq!(last, 200 + 4 * 40);
    mem.crash();
    j.abandon();
    let j = small_wal_journal(&mem, dir.path(), &mem_cfg());
    assert_eq!(seqs(&j, 0), (1..=last).collect::<Vec<_>>());
}

#[test]
fn overlapping_commits_answer_only_what_is_durable_and_a_crash_loses_nothing() {
    // Many writers at once on two threads, so one commit's `fdatasync`
    // runs while the next is appended and started; small WAL files and
    // frequent checkpoints, so file switches and checkpoints come between.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let cfg = JournalConfig {
        telemetry_flush: Duration::from_millis(15),
        ..mem_cfg()
    };
    let j = small_wal_journal(&mem, dir.path(), &cfg);
    let mut got: Vec<u64> = rt.block_on(async {
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let j = j.clone();
                tokio::spawn(async move {
                    let watch = j.watch();
                    let mut seqs = Vec::new();
                    for n in 0..40 {
                        let rec = j.record(vec![ev(t * 1000 + n)]).await.unwrap();
                        let durable = watch.borrow().last_seq;
                        assert!(
                            durable >= rec[0].seq,
                            "seq {} answered while durable only to {durable}",
                            rec[0].seq
                        );
                        seqs.push(rec[0].seq);
                    }
                    seqs
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    got.sort_unstable();
    assert_eq!(got, (1..=320).collect::<Vec<_>>());
    mem.crash();
    j.abandon();
    drop(rt);
    let j = small_wal_journal(&mem, dir.path(), &cfg);
    assert_eq!(seqs(&j, 0), (1..=320).collect::<Vec<_>>());
    let mut payloads: Vec<u64> = j
        .read_events(0, 1000)
        .unwrap()
        .iter()
        .map(|e| detail_n(&e.payload))
        .collect();
    payloads.sort_unstable();
    let mut want: Vec<u64> = (0..8u64)
        .flat_map(|t| (0..40).map(move |n| t * 1000 + n))
        .collect();
    want.sort_unstable();
    assert_eq!(payloads, want);
}

#[test]
fn failed_checkpoints_with_full_wal_files_report_not_durable_then_recover() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = small_wal_journal(&mem, dir.path(), &mem_cfg());
    mem.set_fail_flush(true);
    let mut confirmed = 0;
    let mut refused = None;
    for n in 1..=100 {
        match rt.block_on(j.record(vec![ev(n)])) {
            Ok(evs) => confirmed = evs[0].seq,
            Err(JournalError::NotDurable { last, .. }) => {
                refused = Some(last);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // The WAL took events while the store could not flush, until both
    // files were full: then a commit needs the store and says so.
    let refused = refused.expect("both WAL files should fill up");
    assert!(
        confirmed > 0 && refused == confirmed + 1,
        "{confirmed} {refused}"
    );
    mem.set_fail_flush(false);
    // The store is reopened with backoff; then the queued events go in.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = rt.block_on(j.wait_durable(refused)) {
        assert!(std::time::Instant::now() < deadline, "never recovered: {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!j.stats().store_failing && !j.stats().wal_full);
    mem.crash();
    j.abandon();
    let j = small_wal_journal(&mem, dir.path(), &mem_cfg());
    assert_eq!(seqs(&j, 0), (1..=refused).collect::<Vec<_>>());
}

#[test]
fn flush_during_background_checkpoints_keeps_everything() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::with_flush_delay(Duration::from_millis(5)));
    let cfg = JournalConfig {
        telemetry_flush: Duration::from_millis(10),
        ..mem_cfg()
    };
    let j = small_wal_journal(&mem, dir.path(), &cfg);
    for n in 1..=80 {
        rt.block_on(j.record(vec![ev(n)])).unwrap();
        j.record_telemetry(b"t").unwrap();
        if n % 10 == 0 {
            rt.block_on(j.flush()).unwrap();
        }
    }
    mem.crash();
    j.abandon();
    let j = small_wal_journal(&mem, dir.path(), &cfg);
    assert_eq!(seqs(&j, 0), (1..=80).collect::<Vec<_>>());
    assert_eq!(j.stats().telemetry, 80, "telemetry checkpointed by flush()");
}

#[test]
fn set_sinks_adds_and_removes_sinks_while_running() {
    let rt = rt();
    let mem = Arc::new(MemStorage::new());
    let j = mem_journal(&mem, &mem_cfg(), &["uplink", "push-a"]);
    rt.block_on(j.record((1..=10).map(ev).collect())).unwrap();
    j.ack_events("uplink", 10).unwrap();
    j.ack_events("push-a", 4).unwrap();
    assert_eq!(j.stats().events, 6);

    // push-a removed, push-b added: push-b starts at the oldest event kept
    // (what push-a still held), uplink keeps its cursor.
    j.set_sinks(&["uplink", "push-b", "uplink"]).unwrap();
    assert_eq!(j.sinks(), vec!["push-b".to_string(), "uplink".to_string()]);
    assert_eq!(j.acked_seq("uplink"), 10);
    assert!(
        j.acked_seq("push-b") <= 4,
        "push-b delivers what push-a held"
    );
    assert!(matches!(
        j.ack_events("push-a", 10),
        Err(JournalError::UnknownSink(_))
    ));
    j.ack_events("push-b", 10).unwrap();
    assert_eq!(j.stats().events, 0);

    // Removing every sink but uplink unblocks removal at once.
    rt.block_on(j.record((11..=12).map(ev).collect())).unwrap();
    j.ack_events("uplink", 12).unwrap();
    assert_eq!(j.stats().events, 2, "push-b acknowledged nothing past 10");
    j.set_sinks(&["uplink", "push-b"]).unwrap();
    rt.block_on(j.record((13..=14).map(ev).collect())).unwrap();
    j.ack_events("uplink", 14).unwrap();
    assert_eq!(j.stats().events, 4);
    j.set_sinks(&["uplink"]).unwrap();
    assert_eq!(j.stats().events, 0);

    // A sink that comes back gets the cursor it stored (never below
    // what was removed meanwhile).
    j.set_sinks(&["uplink", "push-b"]).unwrap();
    assert!(j.acked_seq("push-b") >= 10);
    assert_eq!(j.stats().events, 14 - j.acked_seq("push-b"));

    // The set survives a reopen with the same names.
    rt.block_on(j.flush()).unwrap();
    drop(j);
    let j = mem_journal(&mem, &mem_cfg(), &["uplink", "push-b"]);
    assert_eq!(j.acked_seq("uplink"), 14);
}

/// Poll until `cond` holds (the committer reopens a failing store with a
/// backoff starting at 1 s).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_failing_store_keeps_events_durable_in_the_wal_and_recovers_without_restart() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    rt.block_on(j.record((1..=10).map(ev).collect())).unwrap();
    j.record_telemetry(b"before").unwrap();
    j.ack_events("uplink", 3).unwrap();
    // The filesystem fills up: every store write and flush fails.
    mem.set_fail_apply(true);
    mem.set_fail_flush(true);
    for n in 11..=60 {
        let got = rt.block_on(j.record(vec![ev(n)])).unwrap();
        assert_eq!(got[0].seq, n, "gap-free while the store fails");
        if n == 30 {
            // Held until a checkpoint, which finds the store failing.
            assert!(!j.stats().store_failing);
            assert!(rt.block_on(j.flush()).is_err());
        }
    }
    let st = j.stats();
    assert!(st.store_failing && !st.wal_full, "{st:?}");
    assert_eq!(st.last_seq, 60);
    // Readers see every durable event, the WAL-only ones included.
    assert_eq!(seqs(&j, 3), (4..=60).collect::<Vec<_>>());
    let tail: Vec<u64> = j
        .read_events(55, 100)
        .unwrap()
        .iter()
        .map(|e| detail_n(&e.payload))
        .collect();
    assert_eq!(tail, vec![56, 57, 58, 59, 60]);
    assert!(matches!(
        j.record_telemetry(b"during"),
        Err(JournalError::Full(_))
    ));
    // Acknowledgements are kept in memory meanwhile.
    j.ack_events("uplink", 40).unwrap();
    assert_eq!(j.acked_seq("uplink"), 40);
    assert_eq!(seqs(&j, 0), (41..=60).collect::<Vec<_>>());
    let checkpoints = j.stats().checkpoints;

    // Space returns: the store is reopened and checkpointed, no restart.
    mem.set_fail_apply(false);
    mem.set_fail_flush(false);
    // (The reopen clears `store_failing` just before its checkpoint.)
    wait_for("store reopened and checkpointed", || {
        let st = j.stats();
        !st.store_failing && st.checkpoints > checkpoints
    });
    assert!(mem.reopens() >= 1);
    assert_eq!(seqs(&j, 0), (41..=60).collect::<Vec<_>>());
    let next = rt.block_on(j.record(vec![ev(61)])).unwrap();
    assert_eq!(next[0].seq, 61, "no seq reused, none skipped");
    j.record_telemetry(b"after").unwrap();
    // Everything, cursor included, is in the store: a crash that loses
    // every unflushed write (and a WAL without records) keeps it.
    rt.block_on(j.flush()).unwrap();
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(j.acked_seq("uplink"), 40);
    assert_eq!(seqs(&j, 0), (41..=61).collect::<Vec<_>>());
    let payloads: Vec<u64> = j
        .read_events(40, 100)
        .unwrap()
        .iter()
        .map(|e| detail_n(&e.payload))
        .collect();
    assert_eq!(payloads, (41..=61).collect::<Vec<_>>());
}

#[test]
fn a_crash_while_the_store_is_failing_loses_no_recorded_event() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    rt.block_on(j.record((1..=5).map(ev).collect())).unwrap();
    mem.set_fail_apply(true);
    mem.set_fail_flush(true);
    for n in 6..=30 {
        rt.block_on(j.record(vec![ev(n)])).unwrap();
    }
    // The process dies while the disk is full; it restarts with space.
    j.abandon();
    mem.set_fail_apply(false);
    mem.set_fail_flush(false);
    mem.crash();
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(seqs(&j, 0), (1..=30).collect::<Vec<_>>());
    let next = rt.block_on(j.record(vec![ev(31)])).unwrap();
    assert_eq!(next[0].seq, 31);
}

#[test]
fn store_failing_with_full_wal_files_is_the_limit_and_memory_stays_bounded() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = small_wal_journal(&mem, dir.path(), &mem_cfg());
    mem.set_fail_apply(true);
    mem.set_fail_flush(true);
    let mut durable = 0;
    let mut not_durable = 0;
    let mut refused = 0;
    let total = MAX_QUEUED_WHILE_FAILING as u64 + 500;
    for n in 1..=total {
        match rt.block_on(j.record(vec![ev(n)])) {
            Ok(evs) => durable = evs[0].seq,
            Err(JournalError::NotDurable { .. }) => not_durable += 1,
            Err(JournalError::Full(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    let st = j.stats();
    assert!(st.store_failing && st.wal_full, "{st:?}");
    assert!(durable > 0, "the WAL took events first");
    assert_eq!(st.last_seq, durable);
    assert_eq!(not_durable, MAX_QUEUED_WHILE_FAILING as u64);
    assert_eq!(
        refused,
        total - durable - not_durable,
        "queue bounded: further events refused"
    );
    assert!(refused > 0);
    // Space returns: the queued events become durable with their seqs.
    mem.set_fail_apply(false);
    mem.set_fail_flush(false);
    let last = durable + MAX_QUEUED_WHILE_FAILING as u64;
    wait_for("queued events durable", || j.stats().last_seq == last);
    assert_eq!(seqs(&j, 0), (1..=last).collect::<Vec<_>>());
}

#[test]
fn states_saved_with_events_are_replayed_from_the_wal_after_a_crash() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(j.load_state("alarms").unwrap(), None);
    let evs = rt
        .block_on(j.record_with_state(vec![ev(1), ev(2)], Some(("alarms", b"v1".to_vec()))))
        .unwrap();
    assert_eq!(evs.len(), 2);
    rt.block_on(j.save_state("arming", b"a1".to_vec())).unwrap();
    rt.block_on(j.save_state("alarms", b"v2".to_vec())).unwrap();
    assert_eq!(j.load_state("alarms").unwrap().as_deref(), Some(&b"v2"[..]));
    // No store write for any of them: the WAL made them durable.
    assert_eq!(mem.pending(), 0);
    // The store loses every write since its last flush.
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(j.load_state("alarms").unwrap().as_deref(), Some(&b"v2"[..]));
    assert_eq!(j.load_state("arming").unwrap().as_deref(), Some(&b"a1"[..]));
    assert_eq!(seqs(&j, 0), vec![1, 2]);
    // After that replay's checkpoint, newer versions still win over the
    // store's (versions continue across the reopen).
    rt.block_on(j.save_state("alarms", b"v3".to_vec())).unwrap();
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(j.load_state("alarms").unwrap().as_deref(), Some(&b"v3"[..]));
    // And a checkpoint puts them in the store itself.
    rt.block_on(j.flush()).unwrap();
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(j.load_state("alarms").unwrap().as_deref(), Some(&b"v3"[..]));
}

#[test]
fn states_without_a_wal_are_flushed_to_the_store() {
    let rt = rt();
    let mem = Arc::new(MemStorage::new());
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    rt.block_on(j.save_state("alarms", b"s".to_vec())).unwrap();
    mem.crash();
    drop(j);
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    assert_eq!(j.load_state("alarms").unwrap().as_deref(), Some(&b"s"[..]));
}

#[test]
fn cursor_acks_are_replayed_from_the_wal_after_a_crash() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = wal_journal(&mem, dir.path(), &["uplink", "push"]);
    rt.block_on(j.record((1..=10).map(ev).collect())).unwrap();
    j.ack_events("uplink", 6).unwrap();
    j.ack_events("push", 4).unwrap();
    j.record_telemetry(b"t1").unwrap();
    j.record_telemetry(b"t2").unwrap();
    rt.block_on(j.flush()).unwrap();
    j.ack_telemetry("uplink", 1).unwrap();
    j.ack_events("uplink", 8).unwrap();
    // The next commit carries the cursor records into the WAL.
    rt.block_on(j.record(vec![ev(11)])).unwrap();
    // The store loses the cursors written since its last flush.
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink", "push"]);
    assert_eq!(j.acked_seq("uplink"), 8);
    assert_eq!(j.acked_seq("push"), 4);
    assert_eq!(j.acked_telemetry("uplink"), 1);
    assert_eq!(seqs(&j, 4), (5..=11).collect::<Vec<_>>());
}

#[test]
fn states_saved_while_the_store_fails_survive_the_reopen() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    rt.block_on(j.save_state("alarms", b"before".to_vec()))
        .unwrap();
    mem.set_fail_apply(true);
    mem.set_fail_flush(true);
    rt.block_on(j.record_with_state(vec![ev(1)], Some(("alarms", b"during".to_vec()))))
        .unwrap();
    // Held in memory and the WAL: the next checkpoint finds the store
    // failing.
    assert!(rt.block_on(j.flush()).is_err());
    assert!(j.stats().store_failing);
    assert_eq!(
        j.load_state("alarms").unwrap().as_deref(),
        Some(&b"during"[..])
    );
    mem.set_fail_apply(false);
    mem.set_fail_flush(false);
    wait_for("store reopened", || !j.stats().store_failing);
    assert_eq!(
        j.load_state("alarms").unwrap().as_deref(),
        Some(&b"during"[..])
    );
    rt.block_on(j.flush()).unwrap();
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(
        j.load_state("alarms").unwrap().as_deref(),
        Some(&b"during"[..])
    );
}

fn change(name: &str, data: Option<&[u8]>) -> StateChange {
    (name.to_string(), data.map(<[u8]>::to_vec))
}

fn loaded(j: &Journal, prefix: &str) -> Vec<(String, String)> {
    j.load_states(prefix)
        .unwrap()
        .into_iter()
        .map(|(n, d)| (n, String::from_utf8(d).unwrap()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(n, d)| (n.to_string(), d.to_string()))
        .collect()
}

#[test]
fn merge_states_applies_changes_in_order_over_the_store() {
    let stored = vec![
        ("alarm/a".to_string(), b"a0".to_vec()),
        ("alarm/b".to_string(), b"b0".to_vec()),
        ("alarms".to_string(), b"old".to_vec()),
    ];
    let overlay = [change("alarm/a", None), change("alarm/c", Some(b"c1"))];
    let pending = [
        change("alarm/c", None),
        change("alarm/a", Some(b"a2")),
        change("alarm/d", Some(b"d1")),
        change("alarm/d", None),
        change("other/x", Some(b"x")),
        change("alarm/b", Some(b"b2")),
    ];
    let changes = overlay.iter().chain(&pending).map(|(n, d)| (n, d));
    let got = merge_states(stored, changes, "alarm/");
    let want: Vec<(String, Vec<u8>)> = vec![
        ("alarm/a".into(), b"a2".to_vec()),
        ("alarm/b".into(), b"b2".to_vec()),
    ];
    assert_eq!(got, want);
}

#[test]
fn per_name_states_load_by_prefix_and_removals_delete_them() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert!(j.load_states("alarm/").unwrap().is_empty());
    rt.block_on(j.record_with_states(
        vec![ev(1)],
        vec![
            change("alarm/fence/zone-1", Some(b"f1")),
            change("alarm/fire/zone-3", Some(b"z1")),
            change("alarms", Some(b"legacy")),
            change("offline/fence", Some(b"o")),
        ],
    ))
    .unwrap();
    assert_eq!(
        loaded(&j, "alarm/"),
        pairs(&[("alarm/fence/zone-1", "f1"), ("alarm/fire/zone-3", "z1")])
    );
    assert_eq!(loaded(&j, "offline/"), pairs(&[("offline/fence", "o")]));
    rt.block_on(j.record_with_states(
        vec![ev(2)],
        vec![
            change("alarm/fence/zone-1", None),
            change("alarm/fire/zone-3", Some(b"z2")),
        ],
    ))
    .unwrap();
    assert_eq!(loaded(&j, "alarm/"), pairs(&[("alarm/fire/zone-3", "z2")]));
    assert_eq!(j.load_state("alarm/fence/zone-1").unwrap(), None);
    assert_eq!(
        j.load_state("alarms").unwrap().as_deref(),
        Some(&b"legacy"[..])
    );
    // Removing what does not exist is no error.
    rt.block_on(j.record_with_states(vec![], vec![change("alarm/never", None)]))
        .unwrap();
    // Names that do not fit a WAL record are refused, nothing recorded.
    let long = "a".repeat(MAX_STATE_NAME + 1);
    assert!(matches!(
        rt.block_on(j.record_with_states(vec![ev(3)], vec![change(&long, Some(b"x"))])),
        Err(JournalError::StateName(256))
    ));
    assert_eq!(j.stats().last_seq, 2);
}

#[test]
fn removals_are_replayed_from_the_wal_after_a_crash_and_checkpointed_into_the_store() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    rt.block_on(j.record_with_states(
        vec![ev(1)],
        vec![
            change("alarm/a", Some(b"a1")),
            change("alarm/b", Some(b"b1")),
            change("alarm/c", Some(b"c1")),
        ],
    ))
    .unwrap();
    // In the store, flushed: only the WAL knows of what follows.
    rt.block_on(j.flush()).unwrap();
    rt.block_on(j.record_with_states(
        vec![ev(2)],
        vec![change("alarm/a", None), change("alarm/b", Some(b"b2"))],
    ))
    .unwrap();
    // Removed, then saved again: the newest wins.
    rt.block_on(j.record_with_states(vec![ev(3)], vec![change("alarm/c", None)]))
        .unwrap();
    rt.block_on(j.record_with_states(vec![ev(4)], vec![change("alarm/c", Some(b"c3"))]))
        .unwrap();
    assert_eq!(mem.pending(), 0, "held for the next checkpoint");
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    let want = pairs(&[("alarm/b", "b2"), ("alarm/c", "c3")]);
    assert_eq!(loaded(&j, "alarm/"), want);
    assert_eq!(seqs(&j, 0), vec![1, 2, 3, 4]);
    // The replay's checkpoint deleted the removed state from the store.
    assert_eq!(mem.get(&keys::state("alarm/a")).unwrap(), None);
    // A removal after the replay, checkpointed: gone from the store too,
    // and a crash does not bring it back.
    rt.block_on(j.record_with_states(vec![ev(5)], vec![change("alarm/b", None)]))
        .unwrap();
    rt.block_on(j.flush()).unwrap();
    assert_eq!(mem.pending(), 0);
    assert_eq!(mem.get(&keys::state("alarm/b")).unwrap(), None);
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(loaded(&j, "alarm/"), pairs(&[("alarm/c", "c3")]));
    // Versions continue after the removals: a new save still wins over
    // the store after another crash.
    rt.block_on(j.record_with_states(vec![], vec![change("alarm/c", Some(b"c4"))]))
        .unwrap();
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(loaded(&j, "alarm/"), pairs(&[("alarm/c", "c4")]));
}

#[test]
fn a_wal_written_before_removals_existed_still_replays_its_state_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        // The layout of a state record as written before kind 3 existed:
        // kind 1, version; payload name length, name, data.
        let (mut w, _) = wal::WalPair::open(dir.path(), wal::WAL_BYTES, false).unwrap();
        w.reset_all().unwrap();
        let record = |version: u64, name: &str, data: &[u8]| {
            let mut p = vec![name.len() as u8];
            p.extend_from_slice(name.as_bytes());
            p.extend_from_slice(data);
            ((1u64 << 56) | version, p)
        };
        w.append(
            &[(1, serde_json::to_vec(&ev(1)).unwrap())],
            &[record(1, "alarms", b"{\"v\":1}"), record(2, "arming", b"a")],
        )
        .unwrap();
        w.append(&[], &[record(3, "alarms", b"{\"v\":2}")]).unwrap();
        w.sync().unwrap();
    }
    let mem = Arc::new(MemStorage::new());
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(
        j.load_state("alarms").unwrap().as_deref(),
        Some(&b"{\"v\":2}"[..])
    );
    assert_eq!(j.load_state("arming").unwrap().as_deref(), Some(&b"a"[..]));
    assert!(j.load_states("alarm/").unwrap().is_empty());
}

#[test]
fn removals_while_the_store_fails_survive_the_reopen() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    rt.block_on(j.record_with_states(
        vec![ev(1)],
        vec![
            change("alarm/a", Some(b"a1")),
            change("alarm/b", Some(b"b1")),
        ],
    ))
    .unwrap();
    rt.block_on(j.flush()).unwrap();
    mem.set_fail_apply(true);
    mem.set_fail_flush(true);
    rt.block_on(j.record_with_states(
        vec![ev(2)],
        vec![change("alarm/a", None), change("alarm/c", Some(b"c2"))],
    ))
    .unwrap();
    assert!(rt.block_on(j.flush()).is_err());
    assert!(j.stats().store_failing);
    // The held removal hides the store's state.
    let want = pairs(&[("alarm/b", "b1"), ("alarm/c", "c2")]);
    assert_eq!(loaded(&j, "alarm/"), want);
    assert_eq!(j.load_state("alarm/a").unwrap(), None);
    mem.set_fail_apply(false);
    mem.set_fail_flush(false);
    wait_for("store reopened", || !j.stats().store_failing);
    assert_eq!(loaded(&j, "alarm/"), want);
    assert_eq!(mem.get(&keys::state("alarm/a")).unwrap(), None);
    rt.block_on(j.flush()).unwrap();
    mem.crash();
    j.abandon();
    let j = wal_journal(&mem, dir.path(), &["uplink"]);
    assert_eq!(loaded(&j, "alarm/"), want);
}

#[test]
fn state_in_an_unlogged_commit_survives_a_store_reopen() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::with_flush_delay(Duration::from_millis(400)));
    let j = small_wal_journal(&mem, dir.path(), &mem_cfg());
    let data = |i: u8| vec![b'0' + i; 1200];
    let mut last_ok = 0;
    let mut refused = None;
    for i in 1..=8u8 {
        if i >= 4 {
            // From the commit after the switch on: flushes fail.
            mem.set_fail_flush(true);
        }
        match rt.block_on(
            j.record_with_states(vec![ev(i as u64)], vec![("alarm/x".into(), Some(data(i)))]),
        ) {
            Ok(_) => last_ok = i,
            Err(JournalError::NotDurable { .. }) => {
                refused = Some(i);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!(
        "last ok {last_ok}, refused {refused:?}, failing {}",
        j.stats().store_failing
    );
    let want = data(refused.unwrap_or(last_ok));
    assert_eq!(
        j.load_state("alarm/x").unwrap(),
        Some(want.clone()),
        "before reopen"
    );
    mem.set_fail_flush(false);
    wait_for("store reopened", || !j.stats().store_failing);
    std::thread::sleep(Duration::from_millis(500));
    let got = j.load_state("alarm/x").unwrap().map(|d| d[0] - b'0');
    rt.block_on(j.wait_durable(5)).unwrap();
    eprintln!("event 5 durable after reopen: {:?}", seqs(&j, 0));
    assert_eq!(got, Some(want[0] - b'0'), "after reopen");
}

#[test]
fn state_only_record_after_a_failed_commit_is_not_reported_durable() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStorage::new());
    let j = small_wal_journal(&mem, dir.path(), &mem_cfg());
    mem.set_fail_apply(true);
    mem.set_fail_flush(true);
    let mut i = 0u8;
    let last = loop {
        i += 1;
        match rt.block_on(j.record_with_states(
            vec![],
            vec![(format!("alarm/{i}"), Some(vec![b'0' + i; 900]))],
        )) {
            Ok(_) => {}
            Err(JournalError::NotDurable { last, .. }) => break last,
            Err(e) => panic!("{e}"),
        }
        assert!(i < 50);
    };
    eprintln!("refused at state {i}, failing {}", j.stats().store_failing);
    // What the alarm task's record() does on NotDurable:
    let w = rt.block_on(j.wait_durable(last));
    eprintln!("wait_durable({last}) -> {w:?}");
    assert!(
        w.is_err(),
        "state-only change reported durable while only in memory"
    );
}

#[test]
fn state_only_change_whose_flush_failed_is_durable_only_after_a_flush_works() {
    let rt = rt();
    let mem = Arc::new(MemStorage::new());
    let j = mem_journal(&mem, &mem_cfg(), &["uplink"]);
    rt.block_on(j.record(vec![ev(1)])).unwrap();
    // The state is written to the store, its flush fails: nothing is
    // queued again, yet the change is not durable.
    mem.set_fail_flush(true);
    let last = match rt.block_on(j.save_state("alarm/x", b"v1".to_vec())) {
        Err(JournalError::NotDurable { last, .. }) => last,
        other => panic!("{other:?}"),
    };
    assert_eq!(last, 1, "no event with the state");
    assert!(
        rt.block_on(j.wait_durable(last)).is_err(),
        "a state-only change is not durable while flushes fail"
    );
    mem.set_fail_flush(false);
    rt.block_on(j.wait_durable(last)).unwrap();
    mem.crash();
    assert_eq!(
        mem.get(&super::keys::state("alarm/x"))
            .unwrap()
            .map(|v| v[8..].to_vec()),
        Some(b"v1".to_vec()),
        "durable once a flush worked"
    );
}
