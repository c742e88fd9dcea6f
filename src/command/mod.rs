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
use crate::alarm::trouble::Troubles;
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
    /// What kind of refusal `error` is, for the alarm refusals an operator
    /// meets on the local console (worded there in its language).
    pub reason: Option<Reason>,
    pub executed_at: Timestamp,
    /// What the command said about itself (action, target, operator), also
    /// when it was refused unread.
    pub summary: CommandSummary,
}

/// Refusals of an alarm action the local console words in its own
/// language (`error` stays the English text the contract carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No alarm, and no trouble, with that key.
    UnknownAlarm,
    /// Acknowledged already, or not in alarm.
    NotUnacked,
    /// A life-safety alarm (priority 1): never shelved.
    NotShelvable,
    /// One of the gateway's own alarms: acknowledged, never shelved.
    TroubleNotShelvable,
}

impl Reason {
    /// Its name in the web API (`reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownAlarm => "unknown_alarm",
            Reason::NotUnacked => "not_unacked",
            Reason::NotShelvable => "not_shelvable",
            Reason::TroubleNotShelvable => "trouble_not_shelvable",
        }
    }

    fn of(e: &crate::alarm::AlarmError) -> Option<Reason> {
        use crate::alarm::AlarmError as E;
        match e {
            E::UnknownAlarm(_) => Some(Reason::UnknownAlarm),
            E::NotUnacked(_) => Some(Reason::NotUnacked),
            E::NotShelvable(_) => Some(Reason::NotShelvable),
            E::Snapshot(_) | E::NotRecorded(_) => None,
        }
    }
}

/// Why `perform` refused: the text, and its [`Reason`] where it has one.
struct Refusal {
    text: String,
    reason: Option<Reason>,
}

impl From<String> for Refusal {
    fn from(text: String) -> Refusal {
        Refusal { text, reason: None }
    }
}

impl From<&crate::alarm::AlarmError> for Refusal {
    fn from(e: &crate::alarm::AlarmError) -> Refusal {
        Refusal {
            text: e.to_string(),
            reason: Reason::of(e),
        }
    }
}

/// The action, target and operator a command names: recorded with every
/// command, done or refused, so that even a malformed command is traced to
/// its operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandSummary {
    pub action: Option<String>,
    pub target: Option<String>,
    pub operator: Option<String>,
}

impl CommandSummary {
    /// The summary of a parsed command.
    pub fn of(cmd: &Command) -> CommandSummary {
        CommandSummary {
            action: Some(cmd.action.clone()),
            target: cmd.target.clone(),
            operator: cmd.operator.clone(),
        }
    }

    /// Whatever of `action`, `target` and `operator` a JSON command carries,
    /// however wrong the rest of it is. Strings are kept as they are,
    /// numbers and booleans written out (`"operator": 42` → `"42"`); null,
    /// arrays and objects, and anything but an object, give nothing.
    pub fn from_json(v: &serde_json::Value) -> CommandSummary {
        let field = |name: &str| match v.get(name)? {
            serde_json::Value::String(s) => Some(s.clone()),
            n @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => Some(n.to_string()),
            _ => None,
        };
        CommandSummary {
            action: field("action"),
            target: field("target"),
            operator: field("operator"),
        }
    }
}

/// A command refused before it could be read as one: the reason, and what
/// it said about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    pub error: String,
    pub summary: CommandSummary,
}

/// Parse a JSON command. Not JSON, not an object, or an object not shaped as
/// a command (wrong types, missing `action`): refused, keeping the summary
/// it carries.
pub fn parse(payload: &[u8]) -> Result<Command, Unreadable> {
    use serde::Deserialize;
    let v: serde_json::Value = serde_json::from_slice(payload).map_err(|e| Unreadable {
        error: format!("malformed command: {e}"),
        summary: CommandSummary::default(),
    })?;
    // The contract's payloads are objects (serde would also take an array
    // as the fields in order: not a command).
    if !v.is_object() {
        return Err(Unreadable {
            error: "malformed command: not a JSON object".into(),
            summary: CommandSummary::default(),
        });
    }
    Command::deserialize(&v).map_err(|e| Unreadable {
        error: format!("malformed command: {e}"),
        summary: CommandSummary::from_json(&v),
    })
}

/// The `detail` of a `command.executed` event.
pub fn audit_detail(
    origin: &Origin,
    value: Option<&serde_json::Value>,
    outcome: &Outcome,
) -> serde_json::Value {
    serde_json::json!({
        "request_id": origin.request_id(),
        "origin": origin.to_json(),
        "action": outcome.summary.action,
        "target": outcome.summary.target,
        "value": value,
        "operator": outcome.summary.operator,
        "ok": outcome.ok,
        "error": outcome.error,
    })
}

/// The `cmd_result` payload: the contract's fields, then the command's
/// action, target and operator where known (added fields, as the contract
/// allows).
pub fn result_json(request_id: &str, outcome: &Outcome) -> serde_json::Value {
    let mut v = serde_json::json!({
        "request_id": request_id,
        "ok": outcome.ok,
        "error": outcome.error,
        "executed_at": outcome.executed_at,
    });
    if let Some(o) = v.as_object_mut() {
        let s = &outcome.summary;
        for (k, f) in [
            ("action", &s.action),
            ("target", &s.target),
            ("operator", &s.operator),
        ] {
            if let Some(f) = f {
                o.insert(k.into(), serde_json::Value::String(f.clone()));
            }
        }
    }
    v
}

/// Everything commands act on; cheap to clone.
#[derive(Clone)]
pub struct CommandPath {
    cfg: Arc<LoadedConfig>,
    writers: Writers,
    alarms: mpsc::Sender<AlarmRequest>,
    arming: Option<ArmingHandle>,
    journal: Journal,
    /// The gateway's own alarms, acknowledged here too (`None`: none).
    troubles: Option<Arc<Troubles>>,
}

impl CommandPath {
    pub fn new(
        cfg: Arc<LoadedConfig>,
        writers: Writers,
        alarms: mpsc::Sender<AlarmRequest>,
        arming: Option<ArmingHandle>,
        journal: Journal,
        troubles: Option<Arc<Troubles>>,
    ) -> CommandPath {
        CommandPath {
            cfg,
            writers,
            alarms,
            arming,
            journal,
            troubles,
        }
    }

    /// Whether `key` is one of the gateway's own alarms, not in normal now.
    async fn is_trouble(&self, key: &str) -> bool {
        match &self.troubles {
            Some(t) => t.has(key).await,
            None => false,
        }
    }

    /// Parse a JSON command and execute it; a malformed one is refused, and
    /// recorded with whatever action, target and operator it names.
    pub async fn execute_payload(&self, payload: &[u8], origin: &Origin) -> Outcome {
        match parse(payload) {
            Ok(cmd) => self.execute(&cmd, origin).await,
            Err(Unreadable { error, summary }) => {
                let outcome = Outcome {
                    ok: false,
                    error: Some(error),
                    reason: None,
                    executed_at: Timestamp::now(),
                    summary,
                };
                tracing::warn!(
                    action = outcome.summary.action.as_deref(),
                    target = outcome.summary.target.as_deref(),
                    operator = outcome.summary.operator.as_deref(),
                    error = outcome.error.as_deref(),
                    "command refused unread"
                );
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
            Err(e) => Err(Refusal::from(e)),
        };
        let (error, reason) = match result {
            Ok(()) => (None, None),
            Err(r) => (Some(r.text), r.reason),
        };
        let outcome = Outcome {
            ok: error.is_none(),
            error,
            reason,
            executed_at,
            summary: CommandSummary::of(cmd),
        };
        tracing::info!(
            action = %cmd.action,
            target = cmd.target.as_deref(),
            operator = cmd.operator.as_deref(),
            ok = outcome.ok,
            error = outcome.error.as_deref(),
            "command"
        );
        self.audit(cmd.value.as_ref(), origin, &outcome).await;
        outcome
    }

    async fn perform(&self, cmd: &Command, plan: Plan) -> Result<(), Refusal> {
        let operator = cmd.operator.clone().unwrap_or_else(|| "platform".into());
        let timeout = self.cfg.config.commands.write_timeout;
        match plan {
            Plan::Ack { key } => {
                if let Some(t) = &self.troubles {
                    let comment = cmd.comment.as_deref();
                    if let Some(done) = t.acknowledge(&key, &operator, comment).await {
                        return done.map_err(|e| Refusal::from(&e));
                    }
                }
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
                if self.is_trouble(&key).await {
                    return Err(Refusal {
                        text: format!(
                            "alarm {key:?} is raised by the gateway itself and cannot be shelved; acknowledge it"
                        ),
                        reason: Some(Reason::TroubleNotShelvable),
                    });
                }
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
                .map_err(|e| e.to_string().into()),
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
                .map_err(|e| e.to_string().into()),
            Plan::Arm { zone, armed } => match &self.arming {
                Some(a) => a
                    .set(&zone, armed, &operator)
                    .await
                    .map_err(|e| e.to_string().into()),
                None => Err(String::from("arming is not running").into()),
            },
        }
    }

    async fn alarm_request(
        &self,
        req: AlarmRequest,
        rx: oneshot::Receiver<Result<(), crate::alarm::AlarmError>>,
    ) -> Result<(), Refusal> {
        let gone = || Refusal::from(String::from("gateway is shutting down"));
        if self.alarms.send(req).await.is_err() {
            return Err(gone());
        }
        match rx.await {
            Ok(r) => r.map_err(|e| Refusal::from(&e)),
            Err(_) => Err(gone()),
        }
    }

    /// Record the `command.executed` event.
    async fn audit(&self, value: Option<&serde_json::Value>, origin: &Origin, outcome: &Outcome) {
        let event = NewEvent {
            ts: outcome.executed_at,
            kind: EventKind::CommandExecuted,
            priority: Priority::INFO,
            category: Category::System,
            source: Source::default(),
            alarm: None,
            attachments: Vec::new(),
            detail: Some(audit_detail(origin, value, outcome)),
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
        let reply = result_json(&cmd.request_id, &outcome);
        let _ = cmd
            .reply
            .send(serde_json::to_vec(&reply).unwrap_or_default());
    }
}

/// A command refused before it reached the command path (gateway busy,
/// reloading, shutting down): its `command.executed` event — every command,
/// done or refused, is an event — and its `cmd_result` payload, both with
/// whatever action, target and operator the raw payload names.
pub fn refusal(request_id: &str, payload: &[u8], error: &str) -> (NewEvent, Vec<u8>) {
    let summary = serde_json::from_slice::<serde_json::Value>(payload)
        .map(|v| CommandSummary::from_json(&v))
        .unwrap_or_default();
    let outcome = Outcome {
        ok: false,
        error: Some(error.to_string()),
        reason: None,
        executed_at: Timestamp::now(),
        summary,
    };
    let event = NewEvent {
        ts: outcome.executed_at,
        kind: EventKind::CommandExecuted,
        priority: Priority::INFO,
        category: Category::System,
        source: Source::default(),
        alarm: None,
        attachments: Vec::new(),
        detail: Some(serde_json::json!({
            "request_id": request_id,
            "action": outcome.summary.action,
            "target": outcome.summary.target,
            "operator": outcome.summary.operator,
            "ok": false,
            "error": error,
        })),
    };
    let result = serde_json::to_vec(&result_json(request_id, &outcome)).unwrap_or_default();
    (event, result)
}

#[cfg(test)]
mod tests;
