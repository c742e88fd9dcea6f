//! Events the journal tests write directly (standing in for a backlog
//! recorded while the platform was away).

use estate_gateway::event::{
    AlarmInfo, AlarmState, Category, EventKind, NewEvent, Priority, Source, Timestamp,
};

/// The `i`th fire zone of panel `fire-panel-a` raised (life safety, latched).
pub fn fire_alarm(i: u64) -> NewEvent {
    NewEvent {
        ts: Timestamp::now(),
        kind: EventKind::AlarmRaised,
        priority: Priority::LIFE_SAFETY,
        category: Category::Fire,
        source: Source {
            device: Some("fire-panel-a".into()),
            point: Some(format!("zone-{i}")),
            zone: Some("villa-12".into()),
        },
        alarm: Some(AlarmInfo {
            key: format!("fire-panel-a/zone-{i}"),
            state: AlarmState::ActiveUnacked,
            value: serde_json::Value::Bool(true),
            message: format!("Smoke detector zone {i}"),
            operator: None,
            comment: None,
            latched: true,
        }),
        attachments: Vec::new(),
        detail: None,
    }
}
