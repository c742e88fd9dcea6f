//! Linkage `notify` actions, delivered as pushes (pure).
//!
//! A `[[linkage]]` rule's `notify` action names a push tier (`to`). Every
//! channel task reads the journal anyway; for each `alarm.raised` or
//! `alarm.cleared` event it also asks the linkage rules with `notify`
//! actions whether they trigger, and if one names a tier this channel
//! reaches, the alarm is pushed to that tier. Nothing is kept outside the
//! journal: the alarm event is the record of the request, and the channel's
//! cursor does not pass it until the push is delivered (or dead-lettered),
//! so the notification survives restarts and crashes like every push.
//!
//! When the push rules already send the alarm to the channel, the one
//! message is sent with the phones of both tiers (no duplicate). Quiet
//! hours of the named tier apply as for every push (priorities 1–2 pass).
//! Linkage notifications are not escalated (only push rules escalate).

use super::config::PushConfig;
use super::route::{quiet_blocks, AlarmView, Routed};
use crate::config::{Config, KeyPath};
use crate::event::Event;
use crate::linkage::{ActionKind, AlarmFacts, LinkageRuleConfig};

/// A linkage rule with `notify` actions, and the tiers they name.
#[derive(Clone, Debug, PartialEq)]
pub struct NotifyRule {
    pub rule: LinkageRuleConfig,
    pub tiers: Vec<String>,
}

/// The linkage rules that notify, with their tiers.
pub fn rules(linkage: &[LinkageRuleConfig]) -> Vec<NotifyRule> {
    linkage
        .iter()
        .filter_map(|r| {
            let tiers: Vec<String> = r
                .actions
                .iter()
                .filter(|a| a.kind == ActionKind::Notify)
                .filter_map(|a| a.to.clone())
                .collect();
            (!tiers.is_empty()).then(|| NotifyRule {
                rule: r.clone(),
                tiers,
            })
        })
        .collect()
}

/// The push for channel `channel` of journal `event`, given what the push
/// rules decided (`routed`): that push with the phones of any notified tier
/// reaching the channel added, or a push of its own for a notified tier.
pub fn route(
    cfg: &PushConfig,
    rules: &[NotifyRule],
    channel: &str,
    event: &Event,
    routed: Option<Routed>,
) -> Option<Routed> {
    let Some((facts, trigger)) = AlarmFacts::of(&event.body) else {
        return routed;
    };
    let tiers = rules
        .iter()
        .filter(|r| r.rule.on.contains(&trigger) && r.rule.matches(&facts))
        .flat_map(|r| r.tiers.iter())
        .filter_map(|name| cfg.tiers.iter().find(|t| t.name == *name))
        .filter(|t| t.channels.iter().any(|c| c == channel))
        .filter(|t| !quiet_blocks(t, &cfg.utc_offset, event.body.ts, facts.priority.get()));
    let mut out = routed;
    for tier in tiers {
        match &mut out {
            Some(r) => r.phones.extend(tier.phones.iter().cloned()),
            None => {
                out = Some(Routed {
                    alarm: AlarmView::of(event)?,
                    tier: tier.name.clone(),
                    escalation: None,
                    phones: tier.phones.clone(),
                })
            }
        }
    }
    if let Some(r) = &mut out {
        r.phones.sort();
        r.phones.dedup();
    }
    out
}

/// Config checks: a `notify` action must name a tier of `[[push.tiers]]`,
/// and pushes must be on. (key, message) per problem.
pub fn validate(c: &Config) -> Vec<(KeyPath, String)> {
    let mut out = Vec::new();
    let on = c.push.enabled && !c.push.channels.is_empty();
    for (ri, r) in c.linkage.iter().enumerate() {
        for (ai, a) in r.actions.iter().enumerate() {
            let (ActionKind::Notify, Some(to)) = (a.kind, a.to.as_deref()) else {
                continue;
            };
            let k = KeyPath::root()
                .key("linkage")
                .index(ri)
                .key("actions")
                .index(ai)
                .key("to");
            if !c.push.tiers.iter().any(|t| t.name == to) {
                out.push((k, format!("no push tier named {to:?} ([[push.tiers]])")));
            } else if !on {
                out.push((
                    k,
                    "a notify action needs pushes: [push] enabled with channels".into(),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AlarmInfo, AlarmState, Category, EventKind, NewEvent, Priority, Source};

    fn push_cfg() -> PushConfig {
        toml::from_str(
            r#"
            utc_offset = "+08:00"
            [[channels]]
            name = "hook"
            kind = "webhook"
            url = "http://127.0.0.1:9/h"
            secret = { env = "X" }
            [[channels]]
            name = "sms"
            kind = "sms"
            url = "http://127.0.0.1:9/s"
            [[tiers]]
            name = "guards"
            channels = ["hook"]
            phones = ["111"]
            [[tiers]]
            name = "engineers"
            channels = ["hook", "sms"]
            phones = ["222"]
            quiet_hours = { start = "00:00", end = "23:59" }
            [[rules]]
            name = "intrusion"
            categories = ["intrusion"]
            tiers = ["guards"]
            "#,
        )
        .unwrap()
    }

    fn linkage() -> Vec<LinkageRuleConfig> {
        toml::from_str::<toml::Table>(
            r#"
            [[linkage]]
            id = "fire-call-engineers"
            category = "fire"
            actions = [{ type = "notify", to = "engineers" }, { type = "clip", camera = "c" }]
            [[linkage]]
            id = "doors"
            actions = [{ type = "clip", camera = "c" }]
            "#,
        )
        .unwrap()["linkage"]
            .clone()
            .try_into()
            .unwrap()
    }

    fn event(kind: EventKind, category: Category, priority: u8) -> Event {
        let body = NewEvent {
            ts: crate::event::Timestamp::from_unix_ms(1_700_000_000_000).unwrap(),
            kind,
            priority: Priority::new(priority).unwrap(),
            category,
            source: Source {
                device: Some("d".into()),
                point: Some("p".into()),
                zone: Some("z".into()),
            },
            alarm: Some(AlarmInfo {
                key: "d/p".into(),
                state: AlarmState::ActiveUnacked,
                value: serde_json::Value::Bool(true),
                message: "m".into(),
                operator: None,
                comment: None,
                latched: false,
            }),
            attachments: vec![],
            detail: None,
        };
        Event {
            id: "e1".into(),
            seq: 5,
            body,
        }
    }

    #[test]
    fn notify_reaches_the_named_tier_only_on_a_trigger() {
        let cfg = push_cfg();
        let rules = rules(&linkage());
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].tiers, vec!["engineers".to_string()]);
        let fire = event(EventKind::AlarmRaised, Category::Fire, 1);
        // Not routed by the push rules (intrusion only): notify adds it.
        let r = route(&cfg, &rules, "sms", &fire, None).unwrap();
        assert_eq!(
            (r.tier.as_str(), r.phones.clone()),
            ("engineers", vec!["222".into()])
        );
        assert_eq!(r.alarm.id, "e1");
        // Cleared is not a trigger of this rule; acknowledged never is.
        for k in [EventKind::AlarmCleared, EventKind::AlarmAcknowledged] {
            assert_eq!(
                route(&cfg, &rules, "sms", &event(k, Category::Fire, 1), None),
                None
            );
        }
        // Another category does not match.
        let other = event(EventKind::AlarmRaised, Category::Hvac, 1);
        assert_eq!(route(&cfg, &rules, "sms", &other, None), None);
        // Quiet hours of the named tier hold back priority 3.
        let p3 = event(EventKind::AlarmRaised, Category::Fire, 3);
        assert_eq!(route(&cfg, &rules, "sms", &p3, None), None);
    }

    #[test]
    fn notify_merges_into_the_rule_push_of_the_same_channel() {
        let cfg = push_cfg();
        let rules = rules(&linkage());
        let fire = event(EventKind::AlarmRaised, Category::Fire, 1);
        let by_rule = Routed {
            alarm: AlarmView::of(&fire).unwrap(),
            tier: "guards".into(),
            escalation: None,
            phones: vec!["111".into()],
        };
        let r = route(&cfg, &rules, "hook", &fire, Some(by_rule)).unwrap();
        assert_eq!(r.tier, "guards");
        assert_eq!(r.phones, vec!["111".to_string(), "222".to_string()]);
    }

    #[test]
    fn config_check_rejects_an_unknown_tier() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let problems = |text: &str| -> Vec<String> {
            match crate::config::load_str(text, &path) {
                Ok(_) => Vec::new(),
                Err(e) => {
                    e.0.iter()
                        .map(|p| format!("{}: {}", p.key, p.message))
                        .collect()
                }
            }
        };
        // The example's own notify actions name tiers that exist.
        assert!(
            !problems(&text).iter().any(|p| p.contains(".to:")),
            "{:?}",
            problems(&text)
        );
        let bad = text.replace(r#"to = "villa-12-owners""#, r#"to = "owners""#);
        let found = problems(&bad);
        assert!(
            found
                .iter()
                .any(|p| p.contains("actions[0].to") && p.contains("no push tier named \"owners\"")),
            "{found:?}"
        );
        // Pushes off: a notify action has nothing to go through.
        let off = text.replace("[push]\n", "[push]\nenabled = false\n");
        assert!(
            problems(&off).iter().any(|p| p.contains("needs pushes")),
            "{:?}",
            problems(&off)
        );
    }
}
