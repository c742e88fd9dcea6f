//! Troubles: alarms the gateway raises itself rather than a rule on a
//! point: a camera's video loss (`{camera}/video`), the journal's disk
//! running low (`gateway/disk`), field drivers not running
//! (`gateway/drivers`).
//!
//! Their sources record raises and clears through [`Troubles`], which
//! follows each one's ISA-18.2 state like the alarm engine does for point
//! alarms: a trouble that clears before anyone acknowledged it is
//! *returned, unacknowledged* and stays on the guards' console; an
//! acknowledgement (from the console or the platform's `ack_alarm`) is
//! recorded as `alarm.acknowledged` and ends its push escalation. So the
//! guards see, acknowledge and silence them as any other alarm.
//!
//! A trouble that waits for an acknowledgement (active or returned,
//! unacknowledged) is saved in the journal with its events (a state
//! `trouble/{key}`), so a restart does not lose it from the console.
//! After a restart it is *returned, unacknowledged* until its source
//! raises it again: whether the condition still holds is unknown, and a
//! source only reports what it finds, so an active one restored as active
//! would never clear. An acknowledged trouble is not saved: if its
//! condition still holds, its source raises it anew.

use super::{AlarmError, AlarmView};
use crate::event::{AlarmState, EventKind, NewEvent, Timestamp};
use crate::journal::{Journal, JournalError, StateChange};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{watch, Mutex};

/// The troubles not in the normal state, by key.
#[derive(Debug, Default)]
pub struct TroubleStates {
    open: BTreeMap<String, Open>,
}

/// A trouble not in normal: its state and the raise it came with (what an
/// acknowledgement repeats: priority, category, source, message).
#[derive(Debug)]
struct Open {
    state: AlarmState,
    raised: NewEvent,
}

fn is_raise(kind: EventKind) -> bool {
    matches!(kind, EventKind::AlarmRaised | EventKind::CameraVideoLoss)
}

fn is_clear(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::AlarmCleared | EventKind::CameraVideoRestored
    )
}

/// Prefix of the troubles' saved states in the journal.
pub const TROUBLE_STATE: &str = "trouble/";

impl TroubleStates {
    /// The troubles saved by [`saved`](Self::saved), each returned,
    /// unacknowledged (see the module doc). A saved state that does not
    /// read is logged and skipped.
    pub fn restore(saved: Vec<(String, Vec<u8>)>) -> TroubleStates {
        let mut open = BTreeMap::new();
        for (name, data) in saved {
            let key = name.strip_prefix(TROUBLE_STATE).unwrap_or(&name);
            match serde_json::from_slice::<NewEvent>(&data) {
                Ok(raised) => {
                    open.insert(
                        key.to_string(),
                        Open {
                            state: AlarmState::ReturnedUnacked,
                            raised,
                        },
                    );
                }
                Err(e) => tracing::warn!(key, error = %e, "saved trouble does not read; dropped"),
            }
        }
        TroubleStates { open }
    }

    /// The journal's state change for `key` as it is now: its raise while
    /// it waits for an acknowledgement, else none. A key too long for a
    /// state name is not saved (the journal would refuse the events with
    /// it); ids are far shorter.
    pub fn saved(&self, key: &str) -> Vec<StateChange> {
        let name = format!("{TROUBLE_STATE}{key}");
        if name.len() > crate::journal::MAX_STATE_NAME {
            tracing::error!(
                key,
                "trouble key too long to save; not kept across restarts"
            );
            return Vec::new();
        }
        let data = self
            .open
            .get(key)
            .filter(|o| {
                matches!(
                    o.state,
                    AlarmState::ActiveUnacked | AlarmState::ReturnedUnacked
                )
            })
            .and_then(|o| serde_json::to_vec(&o.raised).ok());
        vec![(name, data)]
    }

    /// A raise or clear of a trouble: its `alarm.state` is set to the
    /// state the trouble goes to (a clear before an acknowledgement leaves
    /// it returned, unacknowledged). Other events are left alone.
    pub fn apply(&mut self, ev: &mut NewEvent) {
        let Some(info) = ev.alarm.as_mut() else {
            return;
        };
        if is_raise(ev.kind) {
            let state = match self.open.get(&info.key).map(|o| o.state) {
                // Raised again while active: as it was.
                Some(s @ (AlarmState::ActiveUnacked | AlarmState::ActiveAcked)) => s,
                _ => AlarmState::ActiveUnacked,
            };
            info.state = state;
            let key = info.key.clone();
            self.open.insert(
                key,
                Open {
                    state,
                    raised: ev.clone(),
                },
            );
        } else if is_clear(ev.kind) {
            let returned = match self.open.get_mut(&info.key) {
                Some(o) if o.state == AlarmState::ActiveUnacked => {
                    o.state = AlarmState::ReturnedUnacked;
                    true
                }
                Some(o) if o.state == AlarmState::ReturnedUnacked => true,
                _ => false,
            };
            if returned {
                info.state = AlarmState::ReturnedUnacked;
            } else {
                info.state = AlarmState::Normal;
                self.open.remove(&info.key);
            }
        }
    }

    /// Whether `key` is a trouble not in the normal state.
    pub fn has(&self, key: &str) -> bool {
        self.open.contains_key(key)
    }

    /// Whether any trouble is not in the normal state.
    pub fn has_any(&self) -> bool {
        !self.open.is_empty()
    }

    /// The `alarm.acknowledged` event of `key` at `ts`, and the trouble's
    /// new state applied; or why not.
    pub fn acknowledge(
        &mut self,
        key: &str,
        ts: Timestamp,
        operator: &str,
        comment: Option<&str>,
    ) -> Result<NewEvent, AlarmError> {
        let open = self
            .open
            .get_mut(key)
            .ok_or_else(|| AlarmError::UnknownAlarm(key.to_string()))?;
        let state = match open.state {
            AlarmState::ActiveUnacked => AlarmState::ActiveAcked,
            AlarmState::ReturnedUnacked => AlarmState::Normal,
            _ => return Err(AlarmError::NotUnacked(key.to_string())),
        };
        let mut ev = NewEvent {
            ts,
            kind: EventKind::AlarmAcknowledged,
            attachments: Vec::new(),
            ..open.raised.clone()
        };
        if let Some(info) = ev.alarm.as_mut() {
            info.state = state;
            info.operator = Some(operator.to_string());
            info.comment = comment.map(str::to_string);
        }
        if state == AlarmState::Normal {
            self.open.remove(key);
        } else {
            open.state = state;
        }
        Ok(ev)
    }

    /// The troubles not in normal, most urgent first, as the console lists
    /// alarms.
    pub fn views(&self) -> Vec<AlarmView> {
        let mut list: Vec<AlarmView> = self
            .open
            .iter()
            .map(|(key, o)| AlarmView {
                key: Arc::from(key.as_str()),
                state: o.state,
                priority: o.raised.priority,
                category: o.raised.category,
                message: Arc::from(o.raised.alarm.as_ref().map_or("", |a| a.message.as_str())),
                latched: false,
                zone_disarmed: false,
            })
            .collect();
        list.sort_by_key(|v| v.priority);
        list
    }
}

/// The gateway's troubles, shared by their sources, the command path and
/// the web page. Recording holds the lock, so the journal has a trouble's
/// events in the order its states changed.
pub struct Troubles {
    journal: Journal,
    states: Mutex<TroubleStates>,
    list: watch::Sender<Arc<Vec<AlarmView>>>,
}

impl Troubles {
    /// The troubles of `journal`, those saved there restored (see the
    /// module doc).
    pub fn new(journal: Journal) -> Arc<Troubles> {
        let saved = journal.load_states(TROUBLE_STATE).unwrap_or_else(|e| {
            tracing::error!(error = %e, "saved troubles not restored");
            Vec::new()
        });
        let states = TroubleStates::restore(saved);
        if states.has_any() {
            tracing::info!(
                troubles = states.open.len(),
                "troubles waiting for an acknowledgement restored"
            );
        }
        let list = watch::Sender::new(Arc::new(states.views()));
        Arc::new(Troubles {
            journal,
            states: Mutex::new(states),
            list,
        })
    }

    /// Record a raise or clear of a trouble, durably, with the state it
    /// goes to. Its state changes even if the journal fails (the condition
    /// is real); the error is returned.
    pub async fn record(&self, mut ev: NewEvent) -> Result<(), JournalError> {
        let mut st = self.states.lock().await;
        st.apply(&mut ev);
        self.list.send_replace(Arc::new(st.views()));
        let saved = ev
            .alarm
            .as_ref()
            .map(|a| st.saved(&a.key))
            .unwrap_or_default();
        self.journal
            .record_with_states(vec![ev], saved)
            .await
            .map(|_| ())
    }

    /// Whether `key` is a trouble that is not in normal now.
    pub async fn has(&self, key: &str) -> bool {
        self.states.lock().await.has(key)
    }

    /// Acknowledge `key` if it is a trouble not in normal (recorded as
    /// `alarm.acknowledged`); `None` when it is not one.
    pub async fn acknowledge(
        &self,
        key: &str,
        operator: &str,
        comment: Option<&str>,
    ) -> Option<Result<(), AlarmError>> {
        let mut st = self.states.lock().await;
        if !st.has(key) {
            return None;
        }
        let ev = match st.acknowledge(key, Timestamp::now(), operator, comment) {
            Ok(ev) => ev,
            Err(e) => return Some(Err(e)),
        };
        self.list.send_replace(Arc::new(st.views()));
        let recorded = self
            .journal
            .record_with_states(vec![ev], st.saved(key))
            .await;
        Some(
            recorded
                .map(|_| ())
                .map_err(|e| AlarmError::NotRecorded(e.to_string())),
        )
    }

    /// The troubles not in normal now.
    pub fn current(&self) -> Arc<Vec<AlarmView>> {
        self.list.borrow().clone()
    }

    /// The troubles not in normal, and their changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<AlarmView>>> {
        self.list.subscribe()
    }
}

/// The console's list: the alarm engine's and the troubles', most urgent
/// first (stable: the engine's before the troubles' within a priority).
pub fn merged(alarms: &[AlarmView], troubles: &[AlarmView]) -> Vec<AlarmView> {
    let mut all: Vec<AlarmView> = alarms.iter().chain(troubles).cloned().collect();
    all.sort_by_key(|a| a.priority);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AlarmInfo, Category, Priority, Source};

    fn ev(kind: EventKind, key: &str, priority: u8) -> NewEvent {
        NewEvent {
            ts: Timestamp::from_unix_ms(1_795_813_445_123).unwrap(),
            kind,
            priority: Priority::new(priority).unwrap(),
            category: Category::Video,
            source: Source {
                device: Some("cam-gate".into()),
                point: Some("video".into()),
                zone: Some("gate".into()),
            },
            alarm: Some(AlarmInfo {
                key: key.into(),
                // What a source puts here is replaced.
                state: AlarmState::Normal,
                value: serde_json::Value::Bool(true),
                message: "Video loss: gate".into(),
                operator: None,
                comment: None,
                latched: false,
            }),
            attachments: vec![],
            detail: None,
        }
    }

    fn state(e: &NewEvent) -> AlarmState {
        e.alarm.as_ref().unwrap().state
    }

    #[test]
    fn a_trouble_follows_isa_states() {
        let mut t = TroubleStates::default();
        let key = "cam-gate/video";
        // Raised, cleared unacknowledged: returned, still listed.
        let mut raise = ev(EventKind::CameraVideoLoss, key, 2);
        t.apply(&mut raise);
        assert_eq!(state(&raise), AlarmState::ActiveUnacked);
        let mut clear = ev(EventKind::CameraVideoRestored, key, 4);
        t.apply(&mut clear);
        assert_eq!(state(&clear), AlarmState::ReturnedUnacked);
        assert_eq!(t.views()[0].state, AlarmState::ReturnedUnacked);
        assert_eq!(
            t.views()[0].priority,
            Priority::HIGH,
            "the raise's priority"
        );
        // Acknowledged: normal, gone from the list.
        let ack = t
            .acknowledge(key, raise.ts, "guard-li", Some("gate camera cable"))
            .unwrap();
        assert_eq!(ack.kind, EventKind::AlarmAcknowledged);
        assert_eq!(state(&ack), AlarmState::Normal);
        assert_eq!(
            ack.alarm.as_ref().unwrap().operator.as_deref(),
            Some("guard-li")
        );
        assert_eq!((ack.priority, &ack.source), (raise.priority, &raise.source));
        assert!(t.views().is_empty());
        assert!(matches!(
            t.acknowledge(key, raise.ts, "guard-li", None),
            Err(AlarmError::UnknownAlarm(_))
        ));
        // Raised, acknowledged while active, cleared: normal at the clear.
        let mut raise = ev(EventKind::AlarmRaised, "gateway/disk", 2);
        t.apply(&mut raise);
        let ack = t
            .acknowledge("gateway/disk", raise.ts, "tech", None)
            .unwrap();
        assert_eq!(state(&ack), AlarmState::ActiveAcked);
        assert!(matches!(
            t.acknowledge("gateway/disk", raise.ts, "tech", None),
            Err(AlarmError::NotUnacked(_))
        ));
        let mut clear = ev(EventKind::AlarmCleared, "gateway/disk", 2);
        t.apply(&mut clear);
        assert_eq!(state(&clear), AlarmState::Normal);
        assert!(!t.has("gateway/disk"));
        // A clear of a trouble not known (raised before a restart): normal.
        let mut clear = ev(EventKind::AlarmCleared, "gateway/drivers", 2);
        t.apply(&mut clear);
        assert_eq!(state(&clear), AlarmState::Normal);
        // Returned, then raised again: active, unacknowledged.
        let mut raise = ev(EventKind::AlarmRaised, "gateway/drivers", 2);
        t.apply(&mut raise);
        let mut clear = ev(EventKind::AlarmCleared, "gateway/drivers", 2);
        t.apply(&mut clear);
        let mut again = ev(EventKind::AlarmRaised, "gateway/drivers", 2);
        t.apply(&mut again);
        assert_eq!(state(&again), AlarmState::ActiveUnacked);
    }

    /// What waits for an acknowledgement survives a restart, returned
    /// (its source raises it again if it still holds); an acknowledged
    /// trouble does not.
    #[test]
    fn troubles_waiting_for_an_acknowledgement_are_saved_and_restored() {
        let mut t = TroubleStates::default();
        let mut video = ev(EventKind::CameraVideoLoss, "cam-gate/video", 2);
        t.apply(&mut video);
        let mut disk = ev(EventKind::AlarmRaised, "gateway/disk", 3);
        t.apply(&mut disk);
        t.acknowledge("gateway/disk", disk.ts, "tech", None)
            .unwrap();
        let [(name, data)] = &t.saved("cam-gate/video")[..] else {
            panic!("one state change")
        };
        assert_eq!(name, "trouble/cam-gate/video");
        let data = data.clone().expect("active, unacknowledged: saved");
        assert_eq!(
            t.saved("gateway/disk"),
            [("trouble/gateway/disk".to_string(), None)],
            "acknowledged: not saved"
        );
        assert_eq!(t.saved("gateway/none")[0].1, None);
        assert!(t.saved(&"k".repeat(300)).is_empty(), "too long a name");
        let mut back = TroubleStates::restore(vec![
            (name.clone(), data),
            ("trouble/broken".into(), b"{not json".to_vec()),
        ]);
        let views = back.views();
        assert_eq!(views.len(), 1);
        assert_eq!(
            (&*views[0].key, views[0].state, views[0].priority),
            (
                "cam-gate/video",
                AlarmState::ReturnedUnacked,
                Priority::HIGH
            )
        );
        // Raised again by its source: active, unacknowledged.
        let mut again = ev(EventKind::CameraVideoLoss, "cam-gate/video", 2);
        back.apply(&mut again);
        assert_eq!(state(&again), AlarmState::ActiveUnacked);
        // Acknowledged and cleared: nothing saved any more.
        back.acknowledge("cam-gate/video", again.ts, "guard", None)
            .unwrap();
        let mut clear = ev(EventKind::CameraVideoRestored, "cam-gate/video", 2);
        back.apply(&mut clear);
        assert_eq!(back.saved("cam-gate/video")[0].1, None);
    }

    /// Through the journal: a new registry (a restart) lists what the old
    /// one left unacknowledged, and its acknowledgement removes it.
    #[tokio::test]
    async fn a_restart_keeps_unacknowledged_troubles_on_the_console() {
        use crate::journal::MemStorage;
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::journal::JournalConfig {
            path: dir.path().to_path_buf(),
            ..Default::default()
        };
        let journal = Journal::with_storage_and_wal(
            Arc::new(MemStorage::new()),
            Some(dir.path()),
            &cfg,
            "gw",
            &["uplink"],
        )
        .unwrap();
        let first = Troubles::new(journal.clone());
        first
            .record(ev(EventKind::CameraVideoLoss, "cam-gate/video", 2))
            .await
            .unwrap();
        first
            .record(ev(EventKind::CameraVideoRestored, "cam-gate/video", 2))
            .await
            .unwrap();
        drop(first);
        let second = Troubles::new(journal.clone());
        let list = second.current();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].state, AlarmState::ReturnedUnacked);
        second
            .acknowledge("cam-gate/video", "guard", None)
            .await
            .unwrap()
            .unwrap();
        assert!(Troubles::new(journal).current().is_empty());
    }

    #[test]
    fn the_console_list_merges_by_priority() {
        let view = |key: &str, p: u8| AlarmView {
            key: key.into(),
            state: AlarmState::ActiveUnacked,
            priority: Priority::new(p).unwrap(),
            category: Category::Video,
            message: "m".into(),
            latched: false,
            zone_disarmed: false,
        };
        let list = merged(
            &[view("fence/z1", 2), view("door/d1", 4)],
            &[view("cam/video", 2), view("gateway/disk", 3)],
        );
        let keys: Vec<&str> = list.iter().map(|v| &*v.key).collect();
        assert_eq!(keys, ["fence/z1", "cam/video", "gateway/disk", "door/d1"]);
    }
}
