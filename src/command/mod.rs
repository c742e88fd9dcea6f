//! The one command path: platform commands (and, later, the local web page)
//! are parsed, checked and executed here, and every command, done or
//! refused, becomes a `command.executed` event.

use crate::alarm::task::AlarmRequest;
use crate::event::{Category, EventKind, NewEvent, Priority, Source, Timestamp};
use crate::journal::Journal;
use crate::uplink::IncomingCommand;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

/// A command as the contract spells it.
#[derive(Debug, Deserialize)]
struct CommandBody {
    action: String,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    value: Option<serde_json::Value>,
    #[serde(default)]
    operator: Option<String>,
    #[serde(default)]
    expires_at: Option<Timestamp>,
    #[serde(default)]
    comment: Option<String>,
}

/// Outcome of one command.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    pub error: Option<String>,
}

/// Serve commands until the channel closes.
pub async fn run(
    mut commands: mpsc::Receiver<IncomingCommand>,
    alarms: mpsc::Sender<AlarmRequest>,
    journal: Journal,
) {
    while let Some(cmd) = commands.recv().await {
        let executed_at = Timestamp::now();
        let parsed: Result<CommandBody, _> = serde_json::from_slice(&cmd.payload);
        let (outcome, body) = match parsed {
            Err(e) => (refuse(format!("malformed command: {e}")), None),
            Ok(body) => (execute(&body, executed_at, &alarms).await, Some(body)),
        };
        let reply = serde_json::json!({
            "request_id": cmd.request_id,
            "ok": outcome.ok,
            "error": outcome.error,
            "executed_at": executed_at,
        });
        let event = NewEvent {
            ts: executed_at,
            kind: EventKind::CommandExecuted,
            priority: Priority::INFO,
            category: Category::System,
            source: Source::default(),
            alarm: None,
            attachments: Vec::new(),
            detail: Some(serde_json::json!({
                "request_id": cmd.request_id,
                "action": body.as_ref().map(|b| b.action.as_str()),
                "target": body.as_ref().and_then(|b| b.target.as_deref()),
                "operator": body.as_ref().and_then(|b| b.operator.as_deref()),
                "ok": outcome.ok,
                "error": outcome.error,
            })),
        };
        if let Err(e) = journal.record(vec![event]).await {
            tracing::error!(error = %e, "cannot record command.executed");
        }
        let _ = cmd
            .reply
            .send(serde_json::to_vec(&reply).unwrap_or_default());
    }
}

/// The `command.executed` event of a command refused before it reached the
/// command path (gateway busy, shutting down): every command, done or
/// refused, is an event.
pub fn refusal_event(request_id: &str, error: &str) -> NewEvent {
    NewEvent {
        ts: Timestamp::now(),
        kind: EventKind::CommandExecuted,
        priority: Priority::INFO,
        category: Category::System,
        source: Source::default(),
        alarm: None,
        attachments: Vec::new(),
        detail: Some(serde_json::json!({
            "request_id": request_id,
            "action": null,
            "target": null,
            "operator": null,
            "ok": false,
            "error": error,
        })),
    }
}

fn refuse(msg: String) -> Outcome {
    Outcome {
        ok: false,
        error: Some(msg),
    }
}

async fn execute(
    body: &CommandBody,
    now: Timestamp,
    alarms: &mpsc::Sender<AlarmRequest>,
) -> Outcome {
    if let Some(exp) = body.expires_at {
        if exp < now {
            return refuse(format!("command expired at {exp}"));
        }
    }
    let operator = body.operator.clone().unwrap_or_else(|| "platform".into());
    match body.action.as_str() {
        "ack_alarm" => {
            let Some(key) = body.target.clone() else {
                return refuse("ack_alarm needs a target (the alarm key)".into());
            };
            let (tx, rx) = oneshot::channel();
            let req = AlarmRequest::Acknowledge {
                key,
                operator,
                comment: body.comment.clone(),
                reply: tx,
            };
            if alarms.send(req).await.is_err() {
                return refuse("gateway is shutting down".into());
            }
            match rx.await {
                Ok(Ok(())) => Outcome {
                    ok: true,
                    error: None,
                },
                Ok(Err(e)) => refuse(e.to_string()),
                Err(_) => refuse("gateway is shutting down".into()),
            }
        }
        "write_point" | "arm_zone" | "disarm_zone" | "shelve_alarm" | "open_door" => {
            let _ = &body.value;
            refuse(format!(
                "action {:?} is not enabled on this gateway",
                body.action
            ))
        }
        other => refuse(format!("unknown action {other:?}")),
    }
}
