//! Storage care: watch the free space of the journal's filesystem.
//!
//! On a completely full filesystem the journal keeps events durable in its
//! write-ahead log alone until space returns (see `docs/design/journal.md`),
//! with room for a few thousand events; the journal's size cap
//! (`[journal] max_bytes`) bounds the journal itself, not what else fills
//! the card (logs, clips, another program). So below
//! `[journal] min_free_bytes` free, the gateway raises the `gateway/disk`
//! alarm (priority 2, category `system`) and the journal refuses telemetry,
//! keeping the space left for alarms and events. Once free space is back
//! above 1.5 × the threshold, telemetry is accepted again and the alarm
//! clears (`alarm.cleared`, state `normal`).
//!
//! The alarm is the gateway's own: it is not in the alarm engine, so it
//! cannot be acknowledged or shelved; it clears itself.

use crate::alarm::trouble::Troubles;
use crate::event::{AlarmInfo, AlarmState, Category, EventKind, NewEvent, Priority, Source};
use crate::journal::Journal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often free space is checked.
pub const DISK_CHECK: Duration = Duration::from_secs(5);

/// The alarm key of the disk alarm.
pub const DISK_ALARM_KEY: &str = "gateway/disk";

/// A change of the disk's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskChange {
    /// Free space fell below the threshold.
    Low,
    /// Free space is back above 1.5 × the threshold.
    Recovered,
}

/// Low-space detection with hysteresis (pure).
#[derive(Clone, Debug)]
pub struct DiskGuard {
    min_free: u64,
    low: bool,
}

impl DiskGuard {
    pub fn new(min_free: u64) -> DiskGuard {
        DiskGuard {
            min_free,
            low: false,
        }
    }

    /// Whether free space is currently low.
    pub fn is_low(&self) -> bool {
        self.low
    }

    /// Free space to return above before the alarm clears.
    pub fn clear_above(&self) -> u64 {
        self.min_free.saturating_add(self.min_free / 2)
    }

    /// Feed one observation of free bytes; returns the change, if any.
    pub fn observe(&mut self, free: u64) -> Option<DiskChange> {
        if !self.low && free < self.min_free {
            self.low = true;
            Some(DiskChange::Low)
        } else if self.low && free >= self.clear_above() {
            self.low = false;
            Some(DiskChange::Recovered)
        } else {
            None
        }
    }
}

/// Bytes available to an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to
    // writable memory of the right type; statvfs only writes to it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded and filled the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// The `gateway/disk` alarm event for `change`.
pub fn disk_event(change: DiskChange, free: u64, min_free: u64, path: &Path) -> NewEvent {
    let (kind, state, message) = match change {
        DiskChange::Low => (
            EventKind::AlarmRaised,
            AlarmState::ActiveUnacked,
            format!(
                "Gateway storage low: {} MiB free (minimum {} MiB); telemetry is not recorded",
                free / (1024 * 1024),
                min_free / (1024 * 1024)
            ),
        ),
        DiskChange::Recovered => (
            EventKind::AlarmCleared,
            AlarmState::Normal,
            format!(
                "Gateway storage back to {} MiB free; telemetry recorded again",
                free / (1024 * 1024)
            ),
        ),
    };
    NewEvent {
        ts: crate::event::Timestamp::now(),
        kind,
        priority: Priority::HIGH,
        category: Category::System,
        source: Source {
            device: Some("gateway".into()),
            point: Some("disk".into()),
            zone: None,
        },
        alarm: Some(AlarmInfo {
            key: DISK_ALARM_KEY.into(),
            state,
            value: serde_json::json!(free),
            message,
            operator: None,
            comment: None,
            latched: false,
        }),
        attachments: Vec::new(),
        detail: Some(serde_json::json!({
            "free_bytes": free,
            "min_free_bytes": min_free,
            "path": path,
        })),
    }
}

/// Check the journal's filesystem every [`DISK_CHECK`] until `stop`.
pub async fn watch(
    journal: Journal,
    troubles: Arc<Troubles>,
    path: PathBuf,
    min_free: u64,
    stop: CancellationToken,
) {
    let mut guard = DiskGuard::new(min_free);
    let mut failing = false;
    loop {
        match free_bytes(&path) {
            Ok(free) => {
                failing = false;
                if let Some(change) = guard.observe(free) {
                    journal.set_disk_low(guard.is_low());
                    match change {
                        DiskChange::Low => tracing::error!(
                            free_bytes = free,
                            min_free_bytes = min_free,
                            path = %path.display(),
                            "journal filesystem low on space: telemetry refused, gateway/disk alarm raised"
                        ),
                        DiskChange::Recovered => tracing::info!(
                            free_bytes = free,
                            path = %path.display(),
                            "journal filesystem has space again: gateway/disk alarm cleared"
                        ),
                    }
                    let mut ev = disk_event(change, free, min_free, &path);
                    let st = journal.stats();
                    if let Some(serde_json::Value::Object(d)) = ev.detail.as_mut() {
                        d.insert("journal_store_failing".into(), st.store_failing.into());
                        d.insert("journal_wal_full".into(), st.wal_full.into());
                    }
                    if let Err(e) = troubles.record(ev).await {
                        tracing::error!(error = %e, "gateway/disk alarm not recorded");
                    }
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, path = %path.display(), "cannot read free space of the journal's filesystem");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(DISK_CHECK) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn raises_below_the_threshold_and_clears_with_hysteresis() {
        let mut g = DiskGuard::new(100);
        assert_eq!(g.observe(150), None);
        assert_eq!(g.observe(99), Some(DiskChange::Low));
        assert_eq!(g.observe(50), None);
        assert_eq!(g.observe(120), None, "not yet 1.5 x the threshold");
        assert_eq!(g.observe(150), Some(DiskChange::Recovered));
        assert_eq!(g.observe(100), None);
        assert_eq!(g.observe(0), Some(DiskChange::Low));
    }

    proptest! {
        /// Changes alternate Low / Recovered, starting with Low, and the
        /// guard's state always agrees with the last change.
        #[test]
        fn changes_alternate(min in 1u64..1_000_000, frees in proptest::collection::vec(0u64..3_000_000, 0..200)) {
            let mut g = DiskGuard::new(min);
            let mut expect_low = true;
            for f in frees {
                if let Some(c) = g.observe(f) {
                    prop_assert_eq!(c == DiskChange::Low, expect_low);
                    expect_low = !expect_low;
                    if c == DiskChange::Low { prop_assert!(f < min); } else { prop_assert!(f >= g.clear_above()); }
                }
                prop_assert_eq!(g.is_low(), !expect_low);
            }
        }
    }

    #[test]
    fn free_bytes_reads_a_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(free_bytes(Path::new("/no/such/dir")).is_err());
    }

    #[test]
    fn disk_events_follow_the_contract() {
        let raised = disk_event(DiskChange::Low, 3 << 20, 64 << 20, Path::new("/j"));
        let v = serde_json::to_value(&raised).unwrap();
        assert_eq!(v["kind"], "alarm.raised");
        assert_eq!(v["priority"], 2);
        assert_eq!(v["category"], "system");
        assert_eq!(v["alarm"]["key"], "gateway/disk");
        assert_eq!(v["alarm"]["state"], "active_unacked");
        assert_eq!(v["source"]["device"], "gateway");
        let cleared = disk_event(DiskChange::Recovered, 100 << 20, 64 << 20, Path::new("/j"));
        let v = serde_json::to_value(&cleared).unwrap();
        assert_eq!(v["kind"], "alarm.cleared");
        assert_eq!(v["alarm"]["state"], "normal");
    }
}
