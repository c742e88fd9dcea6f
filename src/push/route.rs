//! Routing and wording (pure): which rule an alarm matches, which tier and
//! channels it reaches, quiet hours, and the localized message text.

use super::config::{parse_hhmm, parse_offset, Language, PushConfig, RuleConfig, TierConfig};
use crate::event::{AlarmState, Category, Event, EventKind, Timestamp};
use serde::{Deserialize, Serialize};

/// What a push needs to know about an alarm (from its `alarm.raised` event).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmView {
    /// Event id of the `alarm.raised` event.
    pub id: String,
    pub seq: u64,
    pub ts: Timestamp,
    pub priority: u8,
    pub category: Category,
    pub key: String,
    pub message: String,
    pub state: AlarmState,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub point: Option<String>,
    /// Arming state of the zone when raised: the alarm engine marks an
    /// alarm of a disarmed zone with `detail.zone_disarmed = true`
    /// (`detail.armed` is read too); absent counts as armed.
    #[serde(default)]
    pub armed: Option<bool>,
}

impl AlarmView {
    /// The view of an alarm event (any alarm kind); `None` without an alarm body.
    pub fn of(ev: &Event) -> Option<AlarmView> {
        let a = ev.body.alarm.as_ref()?;
        Some(AlarmView {
            id: ev.id.clone(),
            seq: ev.seq,
            ts: ev.body.ts,
            priority: ev.body.priority.get(),
            category: ev.body.category,
            key: a.key.clone(),
            message: a.message.clone(),
            state: a.state,
            zone: ev.body.source.zone.clone(),
            device: ev.body.source.device.clone(),
            point: ev.body.source.point.clone(),
            armed: ev.body.detail.as_ref().and_then(|d| {
                d.get("armed").and_then(|v| v.as_bool()).or_else(|| {
                    d.get("zone_disarmed")
                        .and_then(|v| v.as_bool())
                        .map(|disarmed| !disarmed)
                })
            }),
        })
    }

    /// Armed unless the event says otherwise.
    pub fn is_armed(&self) -> bool {
        self.armed.unwrap_or(true)
    }
}

/// The detail of a `push.escalated` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EscalationDetail {
    /// Tier this step pushes to.
    pub tier: String,
    /// 1 for the first escalation, 2 for the next, …
    pub step: u32,
    /// Time since the alarm was raised, in seconds.
    pub unacked_s: u64,
    pub alarm: AlarmView,
}

/// A priority-1 push given up on one channel goes to this tier instead
/// (`detail.fallback` of a `push.dead_lettered` event).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fallback {
    pub tier: String,
    pub alarm: AlarmView,
}

/// Where a dead-lettered push of `routed` goes instead: the tier after
/// `routed.tier` in the alarm's rule, for priority-1 alarms only. `None`
/// when the tier was the rule's last (or not in the rule: a linkage
/// notification).
pub fn fallback(cfg: &PushConfig, routed: &Routed) -> Option<Fallback> {
    if routed.alarm.priority != 1 {
        return None;
    }
    let rule = match_rule(cfg, &routed.alarm)?;
    let at = rule.tiers.iter().position(|t| *t == routed.tier)?;
    let tier = rule.tiers.get(at + 1)?;
    Some(Fallback {
        tier: tier.clone(),
        alarm: routed.alarm.clone(),
    })
}

/// Does `rule` match `alarm`?
pub fn rule_matches(rule: &RuleConfig, alarm: &AlarmView) -> bool {
    rule.priorities
        .as_ref()
        .is_none_or(|p| p.contains(&alarm.priority))
        && rule
            .categories
            .as_ref()
            .is_none_or(|c| c.contains(&alarm.category))
        && rule.zones.as_ref().is_none_or(|z| {
            alarm
                .zone
                .as_ref()
                .is_some_and(|zone| z.iter().any(|x| x == zone))
        })
        && rule.armed.is_none_or(|a| a == alarm.is_armed())
}

/// The first rule matching `alarm`.
pub fn match_rule<'a>(cfg: &'a PushConfig, alarm: &AlarmView) -> Option<&'a RuleConfig> {
    cfg.rules.iter().find(|r| rule_matches(r, alarm))
}

/// Is `at` inside `tier`'s quiet hours (local time at `offset`)?
pub fn in_quiet_hours(tier: &TierConfig, utc_offset: &str, at: Timestamp) -> bool {
    let Some(q) = &tier.quiet_hours else {
        return false;
    };
    let (Some(start), Some(end), Some(off)) = (
        parse_hhmm(&q.start),
        parse_hhmm(&q.end),
        parse_offset(utc_offset),
    ) else {
        return false;
    };
    use chrono::Timelike;
    let local = at.0.with_timezone(&off);
    let m = local.hour() * 60 + local.minute();
    if start <= end {
        (start..end).contains(&m)
    } else {
        m >= start || m < end
    }
}

/// Priority 1–2 alarms are pushed during quiet hours too.
pub fn quiet_blocks(tier: &TierConfig, utc_offset: &str, at: Timestamp, priority: u8) -> bool {
    priority > 2 && in_quiet_hours(tier, utc_offset, at)
}

/// A push for one channel, derived from one journal event.
#[derive(Clone, Debug, PartialEq)]
pub struct Routed {
    pub alarm: AlarmView,
    pub tier: String,
    /// `Some` for an escalation push.
    pub escalation: Option<(u32, u64)>,
    pub phones: Vec<String>,
}

/// What `event` means for channel `channel`: a push, or nothing. `now` is
/// the time quiet hours are judged at (the event's time for new alarms, so
/// a replay after a restart decides the same).
pub fn route(cfg: &PushConfig, channel: &str, event: &Event) -> Option<Routed> {
    let tier_of = |name: &str| cfg.tiers.iter().find(|t| t.name == name);
    let reaches = |t: &TierConfig| t.channels.iter().any(|c| c == channel);
    match event.body.kind {
        // A camera going dark is an alarm like any other (category `video`).
        EventKind::AlarmRaised | EventKind::CameraVideoLoss => {
            let alarm = AlarmView::of(event)?;
            let rule = match_rule(cfg, &alarm)?;
            let tier = tier_of(rule.tiers.first()?)?;
            if !reaches(tier) || quiet_blocks(tier, &cfg.utc_offset, event.body.ts, alarm.priority)
            {
                return None;
            }
            Some(Routed {
                alarm,
                tier: tier.name.clone(),
                escalation: None,
                phones: tier.phones.clone(),
            })
        }
        EventKind::PushEscalated => {
            let d: EscalationDetail = serde_json::from_value(event.body.detail.clone()?).ok()?;
            let tier = tier_of(&d.tier)?;
            if !reaches(tier)
                || quiet_blocks(tier, &cfg.utc_offset, event.body.ts, d.alarm.priority)
            {
                return None;
            }
            Some(Routed {
                phones: tier.phones.clone(),
                tier: d.tier,
                escalation: Some((d.step, d.unacked_s)),
                alarm: d.alarm,
            })
        }
        EventKind::PushDeadLettered => {
            let fb: Fallback =
                serde_json::from_value(event.body.detail.as_ref()?.get("fallback")?.clone())
                    .ok()?;
            let tier = tier_of(&fb.tier)?;
            // Priority 1 only: quiet hours never hold it back.
            if !reaches(tier) {
                return None;
            }
            Some(Routed {
                phones: tier.phones.clone(),
                tier: fb.tier,
                escalation: None,
                alarm: fb.alarm,
            })
        }
        _ => None,
    }
}

/// Fills the message templates.
#[derive(Clone, Debug)]
pub struct Wording {
    pub language: Language,
    pub site: String,
    pub offset: chrono::FixedOffset,
    pub alarm_link: Option<String>,
}

impl Wording {
    fn local_time(&self, ts: Timestamp) -> String {
        ts.0.with_timezone(&self.offset)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    }

    /// Link to the alarm on the local web page, if configured.
    pub fn link(&self, a: &AlarmView) -> Option<String> {
        self.alarm_link.as_ref().map(|t| {
            t.replace("{id}", &a.id)
                .replace("{seq}", &a.seq.to_string())
                .replace("{key}", &a.key)
        })
    }

    fn category(&self, c: Category) -> &'static str {
        match (self.language, c) {
            (Language::ZhCn, Category::Fire) => "火警",
            (Language::ZhCn, Category::Intrusion) => "入侵",
            (Language::ZhCn, Category::Perimeter) => "周界",
            (Language::ZhCn, Category::Access) => "门禁",
            (Language::ZhCn, Category::Hvac) => "暖通",
            (Language::ZhCn, Category::Video) => "视频",
            (Language::ZhCn, Category::System) => "系统",
            (Language::En, Category::Fire) => "fire",
            (Language::En, Category::Intrusion) => "intrusion",
            (Language::En, Category::Perimeter) => "perimeter",
            (Language::En, Category::Access) => "access",
            (Language::En, Category::Hvac) => "HVAC",
            (Language::En, Category::Video) => "video",
            (Language::En, Category::System) => "system",
        }
    }

    fn state(&self, s: AlarmState) -> &'static str {
        match (self.language, s) {
            (Language::ZhCn, AlarmState::ActiveUnacked) => "报警中，未确认",
            (Language::ZhCn, AlarmState::ActiveAcked) => "报警中，已确认",
            (Language::ZhCn, AlarmState::ReturnedUnacked) => "已恢复，未确认",
            (Language::ZhCn, AlarmState::Normal) => "正常",
            (Language::ZhCn, AlarmState::Shelved) => "已搁置",
            (Language::En, AlarmState::ActiveUnacked) => "active, not acknowledged",
            (Language::En, AlarmState::ActiveAcked) => "active, acknowledged",
            (Language::En, AlarmState::ReturnedUnacked) => "returned to normal, not acknowledged",
            (Language::En, AlarmState::Normal) => "normal",
            (Language::En, AlarmState::Shelved) => "shelved",
        }
    }

    /// The alarm's message in this language: the gateway's own messages
    /// (communication loss, video loss, disk, drivers) are worded in
    /// Chinese too; a rule's message is the technician's, as written.
    fn message<'a>(&self, a: &'a AlarmView) -> std::borrow::Cow<'a, str> {
        match self.language {
            Language::ZhCn => crate::alarm::wording::zh(&a.message).map_or(
                std::borrow::Cow::Borrowed(a.message.as_str()),
                std::borrow::Cow::Owned,
            ),
            Language::En => std::borrow::Cow::Borrowed(a.message.as_str()),
        }
    }

    fn device(a: &AlarmView) -> String {
        match (&a.device, &a.point) {
            (Some(d), Some(p)) => format!("{d} / {p}"),
            (Some(d), None) => d.clone(),
            _ => a.key.clone(),
        }
    }

    /// Title, plain text and markdown of a push for one alarm.
    pub fn alarm(&self, r: &Routed) -> (String, String, String) {
        let a = &r.alarm;
        let zh = self.language == Language::ZhCn;
        let cat = self.category(a.category);
        let message = self.message(a);
        let mut title = if zh {
            format!("【P{} {}报警】{}", a.priority, cat, message)
        } else {
            format!("[P{} {} alarm] {}", a.priority, cat, message)
        };
        if let Some((step, secs)) = r.escalation {
            let mins = secs.div_ceil(60);
            title = if zh {
                format!("【升级{step}·{mins}分钟未确认】{title}")
            } else {
                format!("[Escalation {step}: not acknowledged for {mins} min] {title}")
            };
        }
        let zone = a.zone.clone().unwrap_or_else(|| "-".into());
        let labels: [&str; 6] = if zh {
            ["站点", "区域", "设备", "时间", "状态", "详情"]
        } else {
            ["Site", "Zone", "Device", "Time", "State", "Link"]
        };
        let sep = if zh { "：" } else { ": " };
        let mut rows = vec![
            (labels[0], self.site.clone()),
            (labels[1], zone),
            (labels[2], Self::device(a)),
            (labels[3], self.local_time(a.ts)),
            (labels[4], self.state(a.state).to_string()),
        ];
        if let Some(link) = self.link(a) {
            rows.push((labels[5], link));
        }
        let mut text = title.clone();
        let mut md = format!("### {title}");
        for (k, v) in &rows {
            text.push_str(&format!("\n{k}{sep}{v}"));
            md.push_str(&format!("\n> **{k}**{sep}{v}"));
        }
        (title, text, md)
    }

    /// Title, plain text and markdown of a storm summary.
    pub fn summary(&self, items: &[Routed], window_s: u64) -> (String, String, String) {
        const MAX_LINES: usize = 20;
        let zh = self.language == Language::ZhCn;
        // Most urgent first (stable: oldest first within a priority), so
        // the lines cut off are the least urgent; the title names the top.
        let mut items: Vec<&Routed> = items.iter().collect();
        items.sort_by_key(|r| r.alarm.priority);
        let top = items.first().map_or(5, |r| r.alarm.priority);
        let title = if zh {
            format!(
                "【报警汇总】{} · {} 条报警（{}秒内），最高 P{}",
                self.site,
                items.len(),
                window_s,
                top
            )
        } else {
            format!(
                "[Alarm summary] {}: {} alarms (within {} s), highest P{}",
                self.site,
                items.len(),
                window_s,
                top
            )
        };
        let mut text = title.clone();
        let mut md = format!("### {title}");
        for r in items.iter().take(MAX_LINES) {
            let a = &r.alarm;
            let line = format!(
                "P{} {} {} {} {}",
                a.priority,
                self.category(a.category),
                a.zone.as_deref().unwrap_or("-"),
                self.message(a),
                self.local_time(a.ts)
            );
            text.push_str(&format!("\n- {line}"));
            md.push_str(&format!("\n- {line}"));
        }
        if items.len() > MAX_LINES {
            let more = items.len() - MAX_LINES;
            let line = if zh {
                format!("…另有 {more} 条")
            } else {
                format!("… and {more} more")
            };
            text.push_str(&format!("\n{line}"));
            md.push_str(&format!("\n{line}"));
        }
        if let Some(link) = self.alarm_link.as_ref().and_then(|t| {
            t.find('{')
                .map(|i| t[..i].trim_end_matches('/').to_string())
        }) {
            text.push_str(&format!("\n{link}"));
            md.push_str(&format!("\n[{link}]({link})"));
        }
        (title, text, md)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::{AlarmInfo, NewEvent, Priority, Source};

    pub(crate) fn raised(seq: u64, priority: u8, cat: Category, zone: &str) -> Event {
        Event {
            id: format!("gw:{seq:016x}"),
            seq,
            body: NewEvent {
                ts: Timestamp::from_unix_ms(1_795_813_445_123).unwrap(),
                kind: EventKind::AlarmRaised,
                priority: Priority::new(priority).unwrap(),
                category: cat,
                source: Source {
                    device: Some("panel".into()),
                    point: Some(format!("p{seq}")),
                    zone: Some(zone.into()),
                },
                alarm: Some(AlarmInfo {
                    key: format!("panel/p{seq}"),
                    state: AlarmState::ActiveUnacked,
                    value: serde_json::Value::Bool(true),
                    message: "Smoke".into(),
                    operator: None,
                    comment: None,
                    latched: false,
                }),
                attachments: vec![],
                detail: None,
            },
        }
    }

    pub(crate) fn cfg() -> PushConfig {
        toml::from_str(
            r#"
            utc_offset = "+08:00"
            alarm_link = "http://gw.local/alarms/{id}"
            [[channels]]
            name = "wecom"
            kind = "wecom"
            key = { env = "X" }
            [[channels]]
            name = "ding"
            kind = "dingtalk"
            key = { env = "X" }
            [[tiers]]
            name = "guards"
            channels = ["wecom"]
            phones = ["13800000001"]
            quiet_hours = { start = "22:00", end = "07:00" }
            [[tiers]]
            name = "manager"
            channels = ["ding"]
            [[rules]]
            name = "disarmed-intrusion"
            categories = ["intrusion"]
            armed = false
            tiers = ["manager"]
            [[rules]]
            name = "all"
            tiers = ["guards", "manager"]
            "#,
        )
        .unwrap()
    }

    #[test]
    fn camera_video_loss_is_pushed_like_an_alarm() {
        let c = cfg();
        let mut ev = raised(7, 2, Category::Video, "gate");
        ev.body.kind = EventKind::CameraVideoLoss;
        let r = route(&c, "wecom", &ev).expect("video loss pushed to the first tier");
        assert_eq!(r.tier, "guards");
        assert_eq!(r.alarm.key, "panel/p7");
        ev.body.kind = EventKind::CameraVideoRestored;
        assert!(route(&c, "wecom", &ev).is_none());
    }

    #[test]
    fn routes_first_tier_and_respects_quiet_hours() {
        let c = cfg();
        // 1_795_813_445_123 ms is 2026-11-27 21:04:05 UTC = 05:04 at +08:00: quiet.
        let p1 = raised(1, 1, Category::Fire, "v1");
        let r = route(&c, "wecom", &p1).unwrap();
        assert_eq!(r.tier, "guards");
        assert_eq!(r.phones, vec!["13800000001".to_string()]);
        assert!(route(&c, "ding", &p1).is_none());
        let p3 = raised(2, 3, Category::Hvac, "v1");
        assert!(
            route(&c, "wecom", &p3).is_none(),
            "quiet hours hold back P3"
        );
    }

    #[test]
    fn arming_state_selects_rules() {
        let c = cfg();
        let mut ev = raised(1, 2, Category::Intrusion, "v1");
        // No arming state: counts as armed, the general rule applies.
        assert_eq!(route(&c, "wecom", &ev).unwrap().tier, "guards");
        ev.body.detail = Some(serde_json::json!({"armed": false}));
        assert!(route(&c, "wecom", &ev).is_none());
        assert_eq!(route(&c, "ding", &ev).unwrap().tier, "manager");
    }

    #[test]
    fn quiet_hours_span_midnight() {
        let t = cfg().tiers[0].clone();
        let at = |h: u32, m: u32| {
            Timestamp(
                chrono::DateTime::parse_from_rfc3339(&format!("2026-11-27T{h:02}:{m:02}:00+08:00"))
                    .unwrap()
                    .with_timezone(&chrono::Utc),
            )
        };
        assert!(in_quiet_hours(&t, "+08:00", at(22, 0)));
        assert!(in_quiet_hours(&t, "+08:00", at(3, 0)));
        assert!(!in_quiet_hours(&t, "+08:00", at(7, 0)));
        assert!(!in_quiet_hours(&t, "+08:00", at(12, 0)));
        assert!(!quiet_blocks(&t, "+08:00", at(3, 0), 2));
    }

    #[test]
    fn the_gateways_own_messages_are_pushed_in_chinese() {
        let c = cfg();
        let mut e = raised(9, 2, Category::Video, "gate");
        e.body.kind = EventKind::CameraVideoLoss;
        e.body.alarm.as_mut().unwrap().message = "Video loss: Gate camera".into();
        let r = route(&c, "wecom", &e).unwrap();
        let w = |language| Wording {
            language,
            site: "Riverside".into(),
            offset: parse_offset("+08:00").unwrap(),
            alarm_link: None,
        };
        let (title, _, _) = w(Language::ZhCn).alarm(&r);
        assert!(title.ends_with("视频丢失：Gate camera"), "{title}");
        let (title, _, _) = w(Language::En).alarm(&r);
        assert!(title.ends_with("Video loss: Gate camera"), "{title}");
    }

    #[test]
    fn a_summary_lists_the_most_urgent_first() {
        let c = cfg();
        // 11:04 at +08:00, outside the guards' quiet hours.
        let at_day = |p: u8, n: u64, zone: &str| {
            let mut e = raised(n, p, Category::Perimeter, zone);
            e.body.ts = Timestamp::from_unix_ms(1_795_813_445_123 + 6 * 3_600_000).unwrap();
            route(&c, "wecom", &e).unwrap()
        };
        let mut items: Vec<Routed> = (1..=25).map(|n| at_day(4, n, "villa-3")).collect();
        items.push(at_day(2, 26, "north"));
        for (lang, top) in [(Language::ZhCn, "最高 P2"), (Language::En, "highest P2")] {
            let w = Wording {
                language: lang,
                site: "Riverside".into(),
                offset: parse_offset("+08:00").unwrap(),
                alarm_link: None,
            };
            let (title, text, _) = w.summary(&items, 60);
            assert!(title.contains(top), "{title}");
            let first = text.lines().nth(1).unwrap();
            assert!(
                first.starts_with("- P2 ") && first.contains("north"),
                "{text}"
            );
        }
    }

    #[test]
    fn wording_has_every_field() {
        let c = cfg();
        let r = route(&c, "wecom", &raised(42, 1, Category::Fire, "villa-12")).unwrap();
        for (lang, words) in [
            (
                Language::ZhCn,
                [
                    "站点",
                    "火警",
                    "villa-12",
                    "panel / p42",
                    "2026-11-28 05:04:05",
                    "未确认",
                ],
            ),
            (
                Language::En,
                [
                    "Site",
                    "fire",
                    "villa-12",
                    "panel / p42",
                    "2026-11-28 05:04:05",
                    "not acknowledged",
                ],
            ),
        ] {
            let w = Wording {
                language: lang,
                site: "Riverside".into(),
                offset: parse_offset("+08:00").unwrap(),
                alarm_link: c.alarm_link.clone(),
            };
            let (_, text, md) = w.alarm(&r);
            for x in words
                .iter()
                .chain(&["Riverside", "http://gw.local/alarms/gw:000000000000002a"])
            {
                assert!(text.contains(x), "{text} lacks {x}");
                assert!(md.contains(x), "{md} lacks {x}");
            }
        }
    }
}
