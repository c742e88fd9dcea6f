//! Key layout of the journal's single store, and its metadata record.
//!
//! ```text
//! e <seq u64 BE>        event payload (contract JSON)
//! t <key u64 BE>        telemetry payload
//! m                     metadata (Meta, fixed 57 bytes)
//! c e <sink>            event cursor of a sink (u64 BE)
//! c t <sink>            telemetry cursor of a sink (u64 BE)
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
    /// Reserved (0).
    pub reserved: u64,
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
            self.reserved,
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
            reserved: n(6)?,
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
    fn meta_round_trips_and_rejects_damage() {
        let m = Meta {
            last_seq: 9,
            events_removed: 3,
            event_bytes: 700,
            telemetry_last: 40,
            telemetry_removed: 20,
            telemetry_bytes: 900,
            reserved: 0,
        };
        assert_eq!(Meta::decode(&m.encode()), Some(m));
        assert_eq!(Meta::decode(&m.encode()[..56]), None);
        let mut bad = m.encode();
        bad[0] = 99;
        assert_eq!(Meta::decode(&bad), None);
    }
}
