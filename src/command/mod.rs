//! The one command path: platform commands (and, later, the local web page)
//! are parsed, checked against the allow-list ([`check`]) and executed here,
//! and every command, done or refused, becomes a `command.executed` event
//! with its operator.
//!
//! [`CommandPath::execute`] takes a parsed [`Command`] and its [`Origin`]
//! and returns the [`Outcome`]; [`CommandPath::execute_payload`] parses JSON
//! first (a malformed command is refused, and recorded, too). [`run`] serves
//! the uplink's `cmd/{request_id}` messages with it.

pub mod check;
mod config;

pub use check::{Command, Plan};
pub use config::{validate, CommandsConfig, DoorConfig, WriteTargetConfig, ACTIONS};

use crate::alarm::task::AlarmRequest;
use crate::arming::ArmingHandle;
use crate::config::LoadedConfig;
use crate::drivers::write::Writers;
use crate::event::{Category, EventKind, NewEvent, Priority, Source, Timestamp};
use crate::journal::Journal;
use crate::uplink::IncomingCommand;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Where a command came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    /// The central platform, `cmd/{request_id}`.
    Platform { request_id: String },
    /// The gateway's local web page (signed-in user).
    Local { session: String },
}

impl Origin {
    fn to_json(&self) -> serde_json::Value {
        match self {
            Origin::Platform { request_id } => {
                serde_json::json!({"channel": "platform", "request_id": request_id})
            }
            Origin::Local { session } => {
                serde_json::json!({"channel": "local", "session": session})
            }
        }
    }
    fn request_id(&self) -> Option<&str> {
        match self {
            Origin::Platform { request_id } => Some(request_id),
            Origin::Local { .. } => None,
        }
    }
}

/// Outcome of one command.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    pub error: Option<String>,
    pub executed_at: Timestamp,
}

/// Everything commands act on; cheap to clone.
#[derive(Clone)]
pub struct CommandPath {
    cfg: Arc<LoadedConfig>,
    writers: Writers,
    alarms: mpsc::Sender<AlarmRequest>,
    arming: Option<ArmingHandle>,
    journal: Journal,
}

impl CommandPath {
    pub fn new(
        cfg: Arc<LoadedConfig>,
        writers: Writers,
        alarms: mpsc::Sender<AlarmRequest>,
        arming: Option<ArmingHandle>,
        journal: Journal,
    ) -> CommandPath {
        CommandPath {
            cfg,
            writers,
            alarms,
            arming,
            journal,
        }
    }

    /// Parse a JSON command and execute it; a malformed one is refused.
    pub async fn execute_payload(&self, payload: &[u8], origin: &Origin) -> Outcome {
        match serde_json::from_slice::<Command>(payload) {
            Ok(cmd) => self.execute(&cmd, origin).await,
            Err(e) => {
                let executed_at = Timestamp::now();
                let outcome = Outcome {
                    ok: false,
                    error: Some(format!("malformed command: {e}")),
                    executed_at,
                };
                self.audit(None, origin, &outcome).await;
                outcome
            }
        }
    }

    /// Check and execute one command, and record it.
    pub async fn execute(&self, cmd: &Command, origin: &Origin) -> Outcome {
        let executed_at = Timestamp::now();
        let result = match check::plan(&self.cfg, cmd, executed_at) {
            Ok(plan) => self.perform(cmd, plan).await,
            Err(e) => Err(e),
        };
        let outcome = Outcome {
            ok: result.is_ok(),
            error: result.err(),
            executed_at,
        };
        tracing::info!(
            action = %cmd.action,
            target = cmd.target.as_deref(),
            operator = cmd.operator.as_deref(),
            ok = outcome.ok,
            error = outcome.error.as_deref(),
            "command"
        );
        self.audit(Some(cmd), origin, &outcome).await;
        outcome
    }

    async fn perform(&self, cmd: &Command, plan: Plan) -> Result<(), String> {
        let operator = cmd.operator.clone().unwrap_or_else(|| "platform".into());
        let timeout = self.cfg.config.commands.write_timeout;
        match plan {
            Plan::Ack { key } => {
                let (tx, rx) = oneshot::channel();
                self.alarm_request(
                    AlarmRequest::Acknowledge {
                        key,
                        operator,
                        comment: cmd.comment.clone(),
                        reply: tx,
                    },
                    rx,
                )
                .await
            }
            Plan::Shelve { key, duration } => {
                let (tx, rx) = oneshot::channel();
                self.alarm_request(
                    AlarmRequest::Shelve {
                        key,
                        operator,
                        comment: cmd.comment.clone(),
                        duration,
                        reply: tx,
                    },
                    rx,
                )
                .await
            }
            Plan::Write {
                device,
                point,
                value,
            } => self
                .writers
                .write(&device, point, value, None, timeout)
                .await
                .map_err(|e| e.to_string()),
            Plan::OpenDoor {
                device,
                point,
                value,
                pulse,
            } => self
                .writers
                .write(
                    &device,
                    point,
                    crate::point::Value::Bool(value),
                    Some(pulse),
                    timeout,
                )
                .await
                .map_err(|e| e.to_string()),
            Plan::Arm { zone, armed } => match &self.arming {
                Some(a) => a
                    .set(&zone, armed, &operator)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("arming is not running".into()),
            },
        }
    }

    async fn alarm_request(
        &self,
        req: AlarmRequest,
        rx: oneshot::Receiver<Result<(), crate::alarm::AlarmError>>,
    ) -> Result<(), String> {
        if self.alarms.send(req).await.is_err() {
            return Err("gateway is shutting down".into());
        }
        match rx.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("gateway is shutting down".into()),
        }
    }

    /// Record the `command.executed` event.
    async fn audit(&self, cmd: Option<&Command>, origin: &Origin, outcome: &Outcome) {
        let event = NewEvent {
            ts: outcome.executed_at,
            kind: EventKind::CommandExecuted,
            priority: Priority::INFO,
            category: Category::System,
            source: Source::default(),
            alarm: None,
            attachments: Vec::new(),
            detail: Some(serde_json::json!({
                "request_id": origin.request_id(),
                "origin": origin.to_json(),
                "action": cmd.map(|c| c.action.as_str()),
                "target": cmd.and_then(|c| c.target.as_deref()),
                "value": cmd.and_then(|c| c.value.clone()),
                "operator": cmd.and_then(|c| c.operator.as_deref()),
                "ok": outcome.ok,
                "error": outcome.error,
            })),
        };
        if let Err(e) = self.journal.record(vec![event]).await {
            tracing::error!(error = %e, "cannot record command.executed");
        }
    }
}

/// Serve the uplink's commands until the channel closes, one at a time in
/// arrival order (two writes to one point land in the order sent).
pub async fn run(mut commands: mpsc::Receiver<IncomingCommand>, path: CommandPath) {
    while let Some(cmd) = commands.recv().await {
        let origin = Origin::Platform {
            request_id: cmd.request_id.clone(),
        };
        let outcome = path.execute_payload(&cmd.payload, &origin).await;
        let reply = serde_json::json!({
            "request_id": cmd.request_id,
            "ok": outcome.ok,
            "error": outcome.error,
            "executed_at": outcome.executed_at,
        });
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

#[cfg(test)]
mod tests;
