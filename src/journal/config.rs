//! Journal settings (`[journal]`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The durable local event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalConfig {
    /// Directory of the journal's store. Created if missing. A relative
    /// path is relative to the directory of the configuration file.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// Size cap of the journal on disk, in bytes. Past it, the oldest
    /// telemetry is evicted; alarms and events are never evicted for telemetry.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Memory the storage engine may use as page cache, in bytes.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// `fsync` the store's files before an event counts as recorded, so a
    /// power cut cannot lose it. Turn off only on storage with its own
    /// power-loss protection.
    #[serde(default = "yes")]
    pub fsync: bool,
    /// How often buffered telemetry, sinks' acknowledgements and removals
    /// are made durable, in seconds: a checkpoint of the store, which also
    /// empties the write-ahead log and writes the events held since the
    /// last one into the store. Events are durable (in the write-ahead
    /// log) before they count as recorded, regardless.
    #[serde(
        rename = "telemetry_flush_s",
        with = "crate::config::duration",
        default = "default_flush"
    )]
    pub telemetry_flush: Duration,
    /// Free space, in bytes, the journal's filesystem keeps for events.
    /// Below it the gateway raises the `gateway/disk` alarm (priority 2) and
    /// refuses telemetry; the alarm clears once free space is back above
    /// 1.5 times this. On a completely full filesystem events are kept
    /// durable in the write-ahead log alone (about 4 MiB of room) until
    /// space returns, so keep this well above zero.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: default_path(),
            max_bytes: default_max_bytes(),
            cache_bytes: default_cache_bytes(),
            fsync: true,
            telemetry_flush: default_flush(),
            min_free_bytes: default_min_free_bytes(),
        }
    }
}

fn default_path() -> PathBuf {
    PathBuf::from("/var/lib/estate-gateway/journal")
}
fn default_max_bytes() -> u64 {
    512 * 1024 * 1024
}
fn default_min_free_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_cache_bytes() -> u64 {
    1024 * 1024
}
fn yes() -> bool {
    true
}
fn default_flush() -> Duration {
    Duration::from_secs(15)
}
