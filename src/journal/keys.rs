//! Key layout of the journal's single store, and its metadata record.
//!
//! ```text
//! e <seq u64 BE>        block of events from seq on (see `encode_block`)
//! t <key u64 BE>        telemetry payload
//! m                     metadata (Meta, fixed 57 bytes)
//! c e <sink>            event cursor of a sink (u64 BE)
//! c t <sink>            telemetry cursor of a sink (u64 BE)
//! s <name>              named state snapshot: version u64 BE, then data
//! ```
//!
//! Big-endian integers sort in numeric order, so a lane is a key range.

/// Key of the metadata record.
pub const META: &[u8] = b"m";

/// Bytes counted per entry on top of its key and value, for the size cap:
/// an estimate of the storage engine's per-entry overhead.
pub const ENTRY_OVERHEAD: u64 = 32;

const META_VERSION: u8 = 1;

pub fn event(seq: u64) -> [u8; 9] {
    prefixed(b'e', seq)
}

pub fn telemetry(key: u64) -> [u8; 9] {
    prefixed(b't', key)
}

fn prefixed(p: u8, n: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = p;
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

pub fn event_cursor(sink: &str) -> Vec<u8> {
    [b"ce", sink.as_bytes()].concat()
}

pub fn state(name: &str) -> Vec<u8> {
    [b"s", name.as_bytes()].concat()
}

pub fn telemetry_cursor(sink: &str) -> Vec<u8> {
    [b"ct", sink.as_bytes()].concat()
}

/// The number in an `e`/`t` key (0 for a malformed key).
pub fn decode_key(k: &[u8]) -> u64 {
    k.get(1..9).and_then(decode_u64).unwrap_or(0)
}

pub fn decode_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// A block is closed (no more events appended) at this many events…
pub const BLOCK_EVENTS: usize = 16;
/// …or once its value reaches this many bytes. Keeps sled's nodes (up to
/// 17 keys) under its 128 KiB inline limit.
pub const BLOCK_BYTES: usize = 4096;

/// Events are stored in blocks of consecutive seqs, one key per block, so
/// the storage engine keeps one index entry per block rather than per
/// event. Value: `count u32 BE`, then per event `len u32 BE` + payload.
pub fn encode_block<P: AsRef<[u8]>>(payloads: &[P]) -> Vec<u8> {
    let len: usize = payloads.iter().map(|p| 4 + p.as_ref().len()).sum();
    let mut v = Vec::with_capacity(4 + len);
    v.extend_from_slice(&(payloads.len() as u32).to_be_bytes());
    for p in payloads {
        v.extend_from_slice(&(p.as_ref().len() as u32).to_be_bytes());
        v.extend_from_slice(p.as_ref());
    }
    v
}

/// Number of events in a block value (`None` if damaged).
pub fn block_count(v: &[u8]) -> Option<u64> {
    Some(u64::from(u32::from_be_bytes(v.get(..4)?.try_into().ok()?)))
}

/// The payloads of a block value (`None` if damaged).
pub fn decode_block(v: &[u8]) -> Option<Vec<&[u8]>> {
    let count = block_count(v)? as usize;
    let mut out = Vec::with_capacity(count.min(BLOCK_EVENTS * 4));
    let mut at = 4;
    for _ in 0..count {
        let len = u32::from_be_bytes(v.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        out.push(v.get(at..at.checked_add(len)?)?);
        at += len;
    }
    (at == v.len()).then_some(out)
}

/// What an entry costs against the size cap.
pub fn entry_cost(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64 + ENTRY_OVERHEAD
}

/// The journal's persisted positions and byte counters. Written in the same
/// atomic batch as every change it describes, so counts after a crash match
/// the entries that survived it, without a scan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Last seq assigned (the next event gets `last_seq + 1`).
    pub last_seq: u64,
    /// Every event with `seq <= events_removed` is removed; those above it,
    /// up to `last_seq`, are all held.
    pub events_removed: u64,
    /// Cost of the held events.
    pub event_bytes: u64,
    /// Last telemetry key assigned.
    pub telemetry_last: u64,
    /// Every telemetry key `<= telemetry_removed` is removed.
    pub telemetry_removed: u64,
    /// Cost of the held telemetry.
    pub telemetry_bytes: u64,
    /// Cost of the event block holding `last_seq` when this record was
    /// written (that block is rewritten as events are appended to it).
    pub tail_cost: u64,
}

impl Meta {
    pub fn event_count(&self) -> u64 {
        self.last_seq - self.events_removed
    }
    pub fn telemetry_count(&self) -> u64 {
        self.telemetry_last - self.telemetry_removed
    }
    pub fn live_bytes(&self) -> u64 {
        self.event_bytes + self.telemetry_bytes
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(57);
        v.push(META_VERSION);
        for n in [
            self.last_seq,
            self.events_removed,
            self.event_bytes,
            self.telemetry_last,
            self.telemetry_removed,
            self.telemetry_bytes,
            self.tail_cost,
        ] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        v
    }

    pub fn decode(raw: &[u8]) -> Option<Meta> {
        if raw.len() != 57 || raw[0] != META_VERSION {
            return None;
        }
        let n = |i: usize| decode_u64(&raw[1 + 8 * i..9 + 8 * i]);
        Some(Meta {
            last_seq: n(0)?,
            events_removed: n(1)?,
            event_bytes: n(2)?,
            telemetry_last: n(3)?,
            telemetry_removed: n(4)?,
            telemetry_bytes: n(5)?,
            tail_cost: n(6)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically() {
        assert!(event(255) < event(256));
        assert!(event(u64::MAX) < telemetry(0));
        assert_eq!(decode_key(&event(0x1234_5678_9abc)), 0x1234_5678_9abc);
        assert_eq!(decode_key(b"e"), 0);
    }

    #[test]
    fn blocks_round_trip_and_reject_damage() {
        let b = encode_block(&[b"one".to_vec(), vec![], b"three".to_vec()]);
        assert_eq!(block_count(&b), Some(3));
        let d = decode_block(&b).unwrap();
        assert_eq!(d, vec![&b"one"[..], &b""[..], &b"three"[..]]);
        assert_eq!(decode_block(&b[..b.len() - 1]), None);
        assert_eq!(decode_block(&[0, 0]), None);
        let mut long = b.clone();
        long.push(0);
        assert_eq!(decode_block(&long), None);
        assert_eq!(decode_block(&encode_block::<Vec<u8>>(&[])), Some(vec![]));
    }

    #[test]
    fn meta_round_trips_and_rejects_damage() {
        let m = Meta {
            last_seq: 9,
            events_removed: 3,
            event_bytes: 700,
            telemetry_last: 40,
            telemetry_removed: 20,
            telemetry_bytes: 900,
            tail_cost: 0,
        };
        assert_eq!(Meta::decode(&m.encode()), Some(m));
        assert_eq!(Meta::decode(&m.encode()[..56]), None);
        let mut bad = m.encode();
        bad[0] = 99;
        assert_eq!(Meta::decode(&bad), None);
    }
}
