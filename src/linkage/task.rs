//! The linkage task: takes the alarm engine's events as they are produced
//! (before they are journaled: actions must not wait for the disk, nor for
//! the uplink), starts the triggered rules' actions concurrently, and
//! records each outcome as a `linkage.executed` event.

use super::{Action, Linkage};
use crate::config::LoadedConfig;
use crate::drivers::write::Writers;
use crate::event::{EventKind, NewEvent, Priority, Source, Timestamp};
use crate::journal::Journal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Batches of alarm events waiting for the linkage task. When full, the
/// alarm task waits: a life-safety action is never dropped.
const QUEUE: usize = 256;

/// Start the task. It stops once every sender is dropped and the actions
/// already started are done.
pub fn spawn(
    cfg: Arc<LoadedConfig>,
    writers: Writers,
    journal: Journal,
) -> (mpsc::Sender<Vec<NewEvent>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let linkage = Arc::new(Linkage::new(&cfg));
    let timeout = cfg.config.commands.write_timeout;
    let h = tokio::spawn(run(linkage, writers, journal, timeout, rx));
    (tx, h)
}

async fn run(
    linkage: Arc<Linkage>,
    writers: Writers,
    journal: Journal,
    timeout: Duration,
    mut rx: mpsc::Receiver<Vec<NewEvent>>,
) {
    let mut running: JoinSet<()> = JoinSet::new();
    while let Some(events) = rx.recv().await {
        while running.try_join_next().is_some() {}
        for e in &events {
            for rule in linkage.triggered(e) {
                let Some(alarm) = &e.alarm else { continue };
                tracing::info!(rule = %rule.config.id, key = %alarm.key, kind = e.kind.as_str(), actions = rule.actions.len(), "linkage triggered");
                for action in &rule.actions {
                    let ctx = Trigger {
                        rule: rule.config.id.clone(),
                        key: alarm.key.clone(),
                        kind: e.kind,
                        category: e.category,
                        zone: e.source.zone.clone(),
                        received: Instant::now(),
                        clips: e
                            .attachments
                            .iter()
                            .filter(|a| a.kind == "clip")
                            .map(|a| a.id.clone())
                            .collect(),
                    };
                    let action = action.clone();
                    let writers = writers.clone();
                    let journal = journal.clone();
                    running.spawn(async move {
                        let (ok, error) = execute(&action, &writers, timeout, &ctx.clips).await;
                        let ev = outcome_event(&ctx, &action, ok, error);
                        if let Err(e) = journal.record(vec![ev]).await {
                            tracing::error!(error = %e, "cannot record linkage.executed");
                        }
                    });
                }
            }
        }
    }
    while running.join_next().await.is_some() {}
    tracing::debug!("linkage task stopped");
}

/// What triggered an action.
struct Trigger {
    rule: String,
    key: String,
    kind: EventKind,
    category: crate::event::Category,
    zone: Option<String>,
    received: Instant,
    /// Clip ids the cameras attached to the alarm event.
    clips: Vec<String>,
}

/// Run one action: `(ok, error)`.
async fn execute(
    action: &Action,
    writers: &Writers,
    timeout: Duration,
    clips: &[String],
) -> (bool, Option<String>) {
    match action {
        Action::Write {
            device,
            point,
            key,
            value,
            pulse,
        } => match writers.write(device, *point, *value, *pulse, timeout).await {
            Ok(()) => {
                tracing::info!(point = %key, value = ?value, pulse = ?pulse, "linkage write done");
                (true, None)
            }
            Err(e) => {
                tracing::error!(point = %key, value = ?value, error = %e, "linkage write failed");
                (false, Some(e.to_string()))
            }
        },
        // The cameras started the clip when the alarm was raised (its id
        // is in the alarm event's attachments); this records the outcome.
        Action::Clip { camera } => {
            // Clip ids are `{camera}-{date}-{time}-{random}`.
            let of_camera = |id: &str| id.rsplitn(4, '-').nth(3) == Some(camera.as_str());
            if clips.iter().any(|c| of_camera(c)) {
                (true, None)
            } else {
                (false, Some(format!("no clip started on camera {camera}")))
            }
        }
        // The push channels deliver it from the journaled alarm event
        // (`push::notify`); `push.sent` / `push.dead_lettered` tell the outcome.
        Action::Notify { to } => {
            tracing::info!(to = %to, "linkage notification handed to the push channels");
            (true, None)
        }
    }
}

fn outcome_event(t: &Trigger, action: &Action, ok: bool, error: Option<String>) -> NewEvent {
    let (device, point, value, pulse_s) = match action {
        Action::Write {
            key, value, pulse, ..
        } => {
            let (d, p) = key.split_once('/').unwrap_or((key, ""));
            (
                Some(d.to_string()),
                Some(p.to_string()),
                Some(value.to_json()),
                pulse.map(|p| p.as_secs_f64()),
            )
        }
        _ => (None, None, None, None),
    };
    let not_wired = matches!(action, Action::Notify { .. });
    NewEvent {
        ts: Timestamp::now(),
        kind: EventKind::LinkageExecuted,
        // A failed write of a linkage (a door not released) needs attention.
        priority: if ok || not_wired {
            Priority::INFO
        } else {
            Priority::HIGH
        },
        category: t.category,
        source: Source {
            device,
            point,
            zone: t.zone.clone(),
        },
        alarm: None,
        attachments: Vec::new(),
        detail: Some(serde_json::json!({
            "rule": t.rule,
            "action": action.kind(),
            "target": action.target(),
            "value": value,
            "pulse_s": pulse_s,
            "trigger": {"key": t.key, "kind": t.kind.as_str()},
            "ok": ok,
            "error": error,
            "elapsed_ms": t.received.elapsed().as_secs_f64() * 1000.0,
            "clips": t.clips,
        })),
    }
}
