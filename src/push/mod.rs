//! Staff pushes: alarms to the phones of security staff, straight from the
//! gateway, through WeCom, DingTalk, Feishu/Lark, a generic webhook or an
//! SMS gateway, with escalation to the next tier when nobody acknowledges.
//!
//! ```text
//! journal ──(cursor push.escalation)──▶ escalation task ──push.escalated──▶ journal
//! journal ──(cursor push.{channel})───▶ channel task ──HTTP──▶ vendor
//!                                          └──push.sent / push.failed / push.dead_lettered──▶ journal
//! ```
//!
//! Each channel is a journal sink with its own cursor: a push leaves the
//! journal only once delivered, so a restart or an outage loses none.
//! Routing ([`route`]), wording, the escalation state machine
//! ([`escalation`]), rate limits and storm condensing ([`outbox`]) and the
//! vendors' formats and signatures ([`vendor`]) and linkage `notify`
//! actions ([`notify`]) are pure; [`task`] does the I/O. See `docs/design/push.md`.

pub mod config;
pub mod escalation;
pub mod notify;
pub mod outbox;
pub mod route;
pub mod task;
pub mod vendor;

pub use config::PushConfig;
pub use task::{spawn, Clock, PushContext, SystemClock};

/// The escalation task's journal cursor.
pub const ESCALATION_SINK: &str = "push.escalation";

/// A channel's journal cursor.
pub fn channel_sink(channel: &str) -> String {
    format!("push.{channel}")
}

/// Every journal sink the pushes need (none when pushes are off).
pub fn sinks(cfg: &PushConfig) -> Vec<String> {
    if !cfg.enabled || cfg.channels.is_empty() {
        return Vec::new();
    }
    let mut v = vec![ESCALATION_SINK.to_string()];
    v.extend(cfg.channels.iter().map(|c| channel_sink(&c.name)));
    v
}

/// Push failures.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("channel {channel}: {what}: {source}")]
    Secret {
        channel: String,
        what: &'static str,
        source: crate::config::secret::SecretError,
    },
    #[error("HTTP client: {0}")]
    Client(String),
    #[error("escalation state file {path}: {source}")]
    State {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
}
