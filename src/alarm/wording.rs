//! Chinese wording of the alarm messages the gateway writes itself.
//!
//! A rule's message is the technician's own text, in whatever language the
//! site uses. The messages the gateway composes (communication loss, a
//! camera's video loss, the journal's disk, field drivers not running) are
//! in English in the events (the platform's contract text); pushes in
//! Chinese and the console in Chinese show them in Chinese, from here.
//! Their sources: `alarm::AlarmEngine::new` (communication loss),
//! `cameras::driver` (video), `app::disk::disk_event`, `app::field`
//! (drivers).

/// The Chinese text of a message the gateway wrote, or `None` for any
/// other message (shown as written).
pub fn zh(message: &str) -> Option<String> {
    if let Some(rest) = message.strip_prefix("Video loss: ") {
        return Some(format!("视频丢失：{rest}"));
    }
    if let Some(rest) = message.strip_prefix("Video restored: ") {
        return Some(format!("视频恢复：{rest}"));
    }
    if let Some(rest) = message.strip_prefix("Communication lost with ") {
        return Some(format!("通信中断：{rest}"));
    }
    if let Some(rest) =
        message.strip_prefix("Field drivers not running, their devices unmonitored: ")
    {
        return Some(format!("现场驱动未运行，其设备无人监控：{rest}"));
    }
    if message == "Every field driver runs again" {
        return Some("现场驱动已全部恢复运行".to_string());
    }
    if let Some(rest) = message.strip_prefix("Gateway storage low: ") {
        let n = numbers(rest);
        if let [free, min, ..] = n[..] {
            return Some(format!(
                "网关存储空间不足：剩余 {free} MiB（下限 {min} MiB），遥测数据暂停记录"
            ));
        }
    }
    if let Some(rest) = message.strip_prefix("Gateway storage back to ") {
        if let [free, ..] = numbers(rest)[..] {
            return Some(format!(
                "网关存储空间已恢复：剩余 {free} MiB，遥测数据恢复记录"
            ));
        }
    }
    None
}

/// The whole numbers in `s`, in order.
fn numbers(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::disk::{disk_event, DiskChange};
    use std::path::Path;

    fn message(ev: &crate::event::NewEvent) -> &str {
        &ev.alarm.as_ref().unwrap().message
    }

    #[test]
    fn the_gateways_own_messages_in_chinese() {
        let low = disk_event(DiskChange::Low, 3 << 20, 64 << 20, Path::new("/j"));
        assert_eq!(
            zh(message(&low)).unwrap(),
            "网关存储空间不足：剩余 3 MiB（下限 64 MiB），遥测数据暂停记录"
        );
        let back = disk_event(DiskChange::Recovered, 100 << 20, 64 << 20, Path::new("/j"));
        assert_eq!(
            zh(message(&back)).unwrap(),
            "网关存储空间已恢复：剩余 100 MiB，遥测数据恢复记录"
        );
        assert_eq!(
            zh("Video loss: Gate camera").unwrap(),
            "视频丢失：Gate camera"
        );
        assert_eq!(
            zh("Video restored: Gate camera").unwrap(),
            "视频恢复：Gate camera"
        );
        assert_eq!(
            zh("Communication lost with Fire panel A (fire-panel-a)").unwrap(),
            "通信中断：Fire panel A (fire-panel-a)"
        );
        assert_eq!(
            zh("Field drivers not running, their devices unmonitored: mqtt").unwrap(),
            "现场驱动未运行，其设备无人监控：mqtt"
        );
        assert_eq!(
            zh("Every field driver runs again").unwrap(),
            "现场驱动已全部恢复运行"
        );
        // A rule's own message is the technician's: as written.
        assert_eq!(zh("Fence zone 3 cut"), None);
        assert_eq!(zh("周界3区报警"), None);
    }

    #[test]
    fn the_engine_writes_what_is_worded() {
        // The communication-loss message as the engine composes it.
        let cfg = crate::config::load_str(
            r#"
            [site]
            id = "s"
            gateway = "g"
            [uplink]
            host = "127.0.0.1"
            [[devices]]
            id = "fire-panel-a"
            name = "Fire panel A"
            category = "fire"
            life_safety = true
            [devices.modbus]
            host = "127.0.0.1"
            [[devices.points]]
            id = "zone-1"
            register = "discrete_input"
            address = 0
            "#,
            Path::new("t.toml"),
        )
        .unwrap();
        let engine = crate::alarm::AlarmEngine::new(&cfg);
        let mut out = Vec::new();
        let mut engine = engine;
        engine.on_device_status(
            std::time::Instant::now(),
            crate::event::Timestamp::now(),
            0,
            false,
            Some("timeout"),
            &mut out,
        );
        let raised = out
            .iter()
            .find(|e| e.kind == crate::event::EventKind::AlarmRaised)
            .expect("communication loss raised");
        assert_eq!(
            zh(message(raised)).unwrap(),
            "通信中断：Fire panel A (fire-panel-a)"
        );
    }
}
