//! The web page's audit log: one JSON line per state-changing request
//! (who, from where, when, what, outcome) in `<journal path>/web-audit.jsonl`.
//! Entries carry names and outcomes only, never a password, token or
//! configured secret: callers build [`AuditEntry`] from fields they chose.
//! Commands also reach the journal as `command.executed` events through
//! the command path; this log covers the page's own actions (logins, users).

use crate::event::Timestamp;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// File name inside the state directory.
pub const AUDIT_FILE: &str = "web-audit.jsonl";

/// Size at which the log is rotated to `web-audit.jsonl.1`. Refused
/// logins are recorded once per throttled key and window, so a flood of
/// them cannot rotate real entries away.
const ROTATE_BYTES: u64 = 4 << 20;

/// Rotated files kept (`web-audit.jsonl.1` newest … `.4` oldest).
const KEEP_ROTATED: u32 = 4;

/// One audited request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub ts: Timestamp,
    /// Signed-in user, or the name tried at login.
    pub user: Option<String>,
    /// Client address.
    pub addr: Option<String>,
    /// What was done: `login`, `logout`, `ack_alarm`, `user.add`, …
    pub action: String,
    /// What it was done to (alarm key, user name).
    pub target: Option<String>,
    pub ok: bool,
    /// Why it failed, or an operator's comment.
    pub detail: Option<String>,
}

/// The append-only log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    rotate_bytes: u64,
    lock: Mutex<()>,
}

impl AuditLog {
    pub fn new(state_dir: &Path) -> AuditLog {
        AuditLog {
            path: state_dir.join(AUDIT_FILE),
            rotate_bytes: ROTATE_BYTES,
            lock: Mutex::new(()),
        }
    }

    /// `web-audit.jsonl.N`.
    fn rotated(&self, n: u32) -> PathBuf {
        self.path.with_extension(format!("jsonl.{n}"))
    }

    /// Shift the rotated files by one (the oldest goes) and make the
    /// current file `.1`.
    fn rotate(&self) {
        for n in (1..KEEP_ROTATED).rev() {
            let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        let _ = std::fs::rename(&self.path, self.rotated(1));
    }

    /// Append an entry. Blocking (small write); failures are logged, not
    /// returned: the action itself already happened.
    pub fn append(&self, e: &AuditEntry) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let line = match serde_json::to_string(e) {
            Ok(l) => l,
            Err(err) => {
                tracing::error!(error = %err, "audit entry not serializable");
                return;
            }
        };
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() > self.rotate_bytes) {
            self.rotate();
        }
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(err) = r {
            tracing::error!(error = %err, path = %self.path.display(), "cannot write the web audit log");
        }
        tracing::info!(
            user = e.user.as_deref(),
            addr = e.addr.as_deref(),
            action = %e.action,
            target = e.target.as_deref(),
            ok = e.ok,
            "web audit"
        );
    }

    /// The newest `max` entries, newest first.
    pub fn recent(&self, max: usize) -> Vec<AuditEntry> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let mut all: std::collections::VecDeque<AuditEntry> = std::collections::VecDeque::new();
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            if let Ok(e) = serde_json::from_str(&line) {
                all.push_back(e);
                if all.len() > max {
                    all.pop_front();
                }
            }
        }
        all.into_iter().rev().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: String) -> AuditEntry {
        AuditEntry {
            ts: Timestamp::now(),
            user: Some("li".into()),
            addr: None,
            action,
            target: None,
            ok: true,
            detail: None,
        }
    }

    #[test]
    fn keeps_four_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::new(dir.path());
        log.rotate_bytes = 100;
        for i in 0..40 {
            log.append(&entry(format!("a{i}")));
        }
        let text = |n: u32| std::fs::read_to_string(log.rotated(n)).unwrap();
        for n in 1..=KEEP_ROTATED {
            assert!(text(n).contains("\"action\""), "file .{n}");
        }
        assert!(!log.rotated(KEEP_ROTATED + 1).exists());
        // Newest in the current file, older ones further down.
        assert!(std::fs::read_to_string(&log.path).unwrap().contains("a39"));
        assert!(!text(KEEP_ROTATED).contains("a39"));
    }

    #[test]
    fn append_and_read_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        for i in 0..5 {
            log.append(&entry(format!("a{i}")));
        }
        let r = log.recent(3);
        assert_eq!(
            r.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
            ["a4", "a3", "a2"]
        );
    }
}
