//! Push settings (`[push]`, `[[push.channels]]`, `[[push.tiers]]`,
//! `[[push.rules]]`): where staff notifications go, to whom, and when.

use crate::config::secret::SecretSource;
use crate::config::KeyPath;
use crate::event::Category;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Staff pushes (`[push]`). Absent: no pushes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushConfig {
    /// Send pushes at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Language of messages: `zh-CN` or `en`. A channel's own `language` wins.
    #[serde(default)]
    pub language: Language,
    /// Offset of local time from UTC, `+08:00` style: the time shown in
    /// messages and the clock of quiet hours. Fixed (no daylight saving).
    #[serde(default = "default_offset")]
    pub utc_offset: String,
    /// Link to an alarm on the gateway's local web page; `{id}`, `{seq}` and
    /// `{key}` are replaced by the alarm event's id, seq and alarm key.
    #[serde(default)]
    pub alarm_link: Option<String>,
    /// First wait before retrying a failed push, in seconds; doubles up to `retry_max_s`.
    #[serde(
        rename = "retry_min_s",
        with = "crate::config::duration",
        default = "default_retry_min"
    )]
    pub retry_min: Duration,
    /// Longest wait between retries of a failed push, in seconds.
    #[serde(
        rename = "retry_max_s",
        with = "crate::config::duration",
        default = "default_retry_max"
    )]
    pub retry_max: Duration,
    /// Give a push up (dead letter: `push.dead_lettered`, the channel's
    /// cursor moves on) after the vendor refused it this many times; 0:
    /// never. Transport errors (vendor unreachable) do not count. A channel's
    /// own value wins.
    #[serde(default = "default_dead_letter_attempts")]
    pub dead_letter_after_attempts: u32,
    /// Give a push up once it is this old (from its journal event), in
    /// seconds, if it has failed or its channel is down; 0: never. A
    /// channel's own value wins.
    #[serde(
        rename = "dead_letter_after_s",
        with = "crate::config::duration",
        default = "default_dead_letter_after"
    )]
    pub dead_letter_after: Duration,
    /// Time limit of one HTTP request (connect, send, response), in seconds.
    #[serde(
        rename = "timeout_s",
        with = "crate::config::duration",
        default = "default_timeout"
    )]
    pub timeout: Duration,
    /// Where messages go (`[[push.channels]]`).
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
    /// Groups of people, in escalation order (`[[push.tiers]]`).
    #[serde(default)]
    pub tiers: Vec<TierConfig>,
    /// Which alarms are pushed to whom (`[[push.rules]]`); the first match wins.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            enabled: false,
            language: Language::default(),
            utc_offset: default_offset(),
            alarm_link: None,
            retry_min: default_retry_min(),
            retry_max: default_retry_max(),
            dead_letter_after_attempts: default_dead_letter_attempts(),
            dead_letter_after: default_dead_letter_after(),
            timeout: default_timeout(),
            channels: Vec::new(),
            tiers: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// Message language.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Language {
    #[default]
    #[serde(rename = "zh-CN")]
    ZhCn,
    #[serde(rename = "en")]
    En,
}

/// Kind of channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// Generic JSON webhook, signed with HMAC-SHA256.
    Webhook,
    /// WeCom (企业微信) group robot.
    Wecom,
    /// DingTalk (钉钉) custom robot with signed URLs.
    Dingtalk,
    /// Feishu/Lark (飞书) custom bot with signature.
    Feishu,
    /// An SMS gateway over HTTP.
    Sms,
}

impl ChannelKind {
    /// The vendor's endpoint, used when `url` is not set.
    pub fn default_url(&self) -> Option<&'static str> {
        match self {
            ChannelKind::Wecom => Some("https://qyapi.weixin.qq.com/cgi-bin/webhook/send"),
            ChannelKind::Dingtalk => Some("https://oapi.dingtalk.com/robot/send"),
            ChannelKind::Feishu => Some("https://open.feishu.cn/open-apis/bot/v2/hook"),
            ChannelKind::Webhook | ChannelKind::Sms => None,
        }
    }

    /// The vendor's documented rate limit per robot, per minute.
    pub fn default_rate(&self) -> u32 {
        match self {
            ChannelKind::Wecom | ChannelKind::Dingtalk => 20,
            ChannelKind::Feishu => 100,
            ChannelKind::Webhook | ChannelKind::Sms => 60,
        }
    }
}

/// Text or markdown messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Text,
    Markdown,
}

/// One channel (`[[push.channels]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelConfig {
    /// Channel id, `[a-z0-9-]{1,64}`; its journal cursor is `push.{name}`.
    pub name: String,
    /// `webhook`, `wecom`, `dingtalk`, `feishu` or `sms`.
    pub kind: ChannelKind,
    /// Endpoint. Required for `webhook` and `sms` (where `{phone}` and
    /// `{text}` are replaced, URL-encoded); for the vendors, the base URL
    /// (default: the vendor's public endpoint).
    #[serde(default)]
    pub url: Option<String>,
    /// The robot's credential: WeCom `key`, DingTalk `access_token`, Feishu
    /// hook token (the last segment of its webhook URL). A secret source.
    #[serde(default)]
    pub key: Option<SecretSource>,
    /// Signing secret: HMAC key of `webhook`, DingTalk's `SEC…` secret,
    /// Feishu's signature secret; for `sms`, the value of `auth_header`.
    #[serde(default)]
    pub secret: Option<SecretSource>,
    /// `text` or `markdown` (ignored by `webhook` and `sms`).
    #[serde(default)]
    pub format: Format,
    /// Language of this channel's messages (default: `[push] language`).
    #[serde(default)]
    pub language: Option<Language>,
    /// Most requests per minute (default: the vendor's limit: WeCom and
    /// DingTalk 20, Feishu 100, others 60).
    #[serde(default)]
    pub rate_per_minute: Option<u32>,
    /// More messages than this within `storm_window_s` start a storm: further
    /// alarms of priority 2–5 are condensed into one summary per window.
    #[serde(default = "default_storm_threshold")]
    pub storm_threshold: u32,
    /// Length of the storm window, in seconds.
    #[serde(
        rename = "storm_window_s",
        with = "crate::config::duration",
        default = "default_storm_window"
    )]
    pub storm_window: Duration,
    /// Refusals before a push is given up on this channel (default:
    /// `[push] dead_letter_after_attempts`; 0: never).
    #[serde(default)]
    pub dead_letter_after_attempts: Option<u32>,
    /// Age, in seconds, at which a failing push is given up on this channel
    /// (default: `[push] dead_letter_after_s`; 0: never).
    #[serde(rename = "dead_letter_after_s", with = "opt_duration", default)]
    pub dead_letter_after: Option<Duration>,
    /// `sms`: request body template; `{phone}` and `{text}` are replaced
    /// (JSON-escaped when `content_type` is JSON). Absent: empty body.
    #[serde(default)]
    pub body: Option<String>,
    /// `sms`: HTTP method, `POST` or `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// `sms`: content type of `body`.
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// `sms`: header carrying `secret` (e.g. `Authorization` with a secret
    /// `Bearer …`, or `X-Api-Key`).
    #[serde(default)]
    pub auth_header: Option<String>,
}

impl ChannelConfig {
    /// Refusals before a push is given up on this channel (0: never).
    pub fn dead_letter_attempts(&self, push: &PushConfig) -> u32 {
        self.dead_letter_after_attempts
            .unwrap_or(push.dead_letter_after_attempts)
    }

    /// Age at which a failing push is given up on this channel (`None`: never).
    pub fn dead_letter_age(&self, push: &PushConfig) -> Option<Duration> {
        Some(self.dead_letter_after.unwrap_or(push.dead_letter_after)).filter(|d| !d.is_zero())
    }

    /// Requests per minute allowed on this channel.
    pub fn rate(&self) -> u32 {
        self.rate_per_minute
            .unwrap_or_else(|| self.kind.default_rate())
    }
}

/// A group of people reached together (`[[push.tiers]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierConfig {
    /// Tier id, `[a-z0-9-]{1,64}`.
    pub name: String,
    /// Channels that reach this tier.
    pub channels: Vec<String>,
    /// Mobile numbers: recipients of `sms` channels, and @-mentioned in
    /// WeCom and DingTalk text messages.
    #[serde(default)]
    pub phones: Vec<String>,
    /// Local times between which only priority 1–2 alarms reach this tier.
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
}

/// Quiet hours, local time (`[push] utc_offset`), `HH:MM`; `start` after
/// `end` spans midnight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuietHours {
    /// Start, `HH:MM` (inclusive).
    pub start: String,
    /// End, `HH:MM` (exclusive).
    pub end: String,
}

/// Which alarms reach which tiers (`[[push.rules]]`). An alarm matches when
/// every condition given matches; the first matching rule decides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleConfig {
    /// Rule id, `[a-z0-9-]{1,64}`.
    pub name: String,
    /// Priorities (1–5) this rule matches; absent: all.
    #[serde(default)]
    pub priorities: Option<Vec<u8>>,
    /// Categories this rule matches; absent: all.
    #[serde(default)]
    pub categories: Option<Vec<Category>>,
    /// Zones this rule matches; absent: all.
    #[serde(default)]
    pub zones: Option<Vec<String>>,
    /// Match only when the zone is armed (`true`) or disarmed (`false`);
    /// absent: either. An alarm that carries no arming state counts as armed.
    #[serde(default)]
    pub armed: Option<bool>,
    /// Tiers in escalation order: the first is pushed at once, the next
    /// after `escalate_after_s` without acknowledgement, and so on.
    pub tiers: Vec<String>,
    /// Wait for an acknowledgement before pushing to the next tier, in
    /// seconds. Absent: no escalation, no repeats.
    #[serde(rename = "escalate_after_s", with = "opt_duration", default)]
    pub escalate_after: Option<Duration>,
    /// After the last tier was reached, push to it again this often until
    /// acknowledged or cleared, in seconds (default: `escalate_after_s`).
    #[serde(rename = "repeat_every_s", with = "opt_duration", default)]
    pub repeat_every: Option<Duration>,
    /// Most escalation pushes (tier changes and repeats) per alarm.
    #[serde(default = "default_max_escalations")]
    pub max_escalations: u32,
}

mod opt_duration {
    use serde::{Deserializer, Serialize, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        crate::config::duration::deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        d.map(|d| d.as_secs_f64()).serialize(s)
    }
}

fn yes() -> bool {
    true
}
fn default_offset() -> String {
    "+08:00".into()
}
fn default_retry_min() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}
fn default_dead_letter_attempts() -> u32 {
    20
}
fn default_dead_letter_after() -> Duration {
    Duration::from_secs(86_400)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_storm_threshold() -> u32 {
    10
}
fn default_storm_window() -> Duration {
    Duration::from_secs(60)
}
fn default_method() -> String {
    "POST".into()
}
fn default_content_type() -> String {
    "application/json".into()
}
fn default_max_escalations() -> u32 {
    12
}

/// Parse `+08:00`, `-05:30`, `Z`/`UTC`/`+00:00` into a fixed offset.
pub fn parse_offset(s: &str) -> Option<chrono::FixedOffset> {
    if s == "Z" || s.eq_ignore_ascii_case("utc") {
        return chrono::FixedOffset::east_opt(0);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    chrono::FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

/// Parse `HH:MM` into minutes after midnight.
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// Every problem in the push settings, as (key path below `[push]`, message).
pub fn validate(c: &PushConfig, base: &KeyPath) -> Vec<(KeyPath, String)> {
    use std::collections::HashSet;
    let mut out: Vec<(KeyPath, String)> = Vec::new();
    let mut err = |path: Vec<PathSeg>, msg: String| {
        let mut key = base.clone();
        for seg in path {
            key = match seg {
                PathSeg::Key(k) => key.key(&k),
                PathSeg::Index(i) => key.index(i),
            };
        }
        out.push((key, msg))
    };
    let k = |s: &str| PathSeg::Key(s.to_string());
    let id_ok = is_valid_id;
    if parse_offset(&c.utc_offset).is_none() {
        err(
            vec![k("utc_offset")],
            format!("{:?} is not an offset like \"+08:00\"", c.utc_offset),
        );
    }
    if c.retry_min.is_zero() || c.retry_max < c.retry_min {
        err(
            vec![k("retry_max_s")],
            "need 0 < retry_min_s ≤ retry_max_s".into(),
        );
    }
    if c.timeout.is_zero() {
        err(vec![k("timeout_s")], "must be greater than 0".into());
    }
    let mut names = HashSet::new();
    for (i, ch) in c.channels.iter().enumerate() {
        let at = |key: &str| vec![k("channels"), PathSeg::Index(i), k(key)];
        if !id_ok(&ch.name) {
            err(
                at("name"),
                format!("{:?} must be 1–64 characters of a-z, 0-9 and '-'", ch.name),
            );
        }
        if !names.insert(ch.name.as_str()) {
            err(
                at("name"),
                format!("channel {:?} is defined twice", ch.name),
            );
        }
        let url = ch.url.as_deref().or(ch.kind.default_url());
        match url {
            None => err(
                at("url"),
                format!("required for a `{:?}` channel", ch.kind).to_lowercase(),
            ),
            Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => err(
                at("url"),
                format!("{u:?} must start with http:// or https://"),
            ),
            Some(_) => {}
        }
        match ch.kind {
            ChannelKind::Wecom | ChannelKind::Dingtalk | ChannelKind::Feishu
                if ch.key.is_none() =>
            {
                err(at("key"), "required: the robot's key/access token".into())
            }
            ChannelKind::Webhook if ch.secret.is_none() => {
                err(at("secret"), "required: the HMAC-SHA256 signing key".into())
            }
            _ => {}
        }
        if ch.kind == ChannelKind::Sms && ch.secret.is_some() != ch.auth_header.is_some() {
            err(
                at("auth_header"),
                "`secret` and `auth_header` go together".into(),
            );
        }
        // The secrets themselves are read by the config validator.
        if !matches!(ch.method.as_str(), "POST" | "GET") {
            err(at("method"), "must be POST or GET".into());
        }
        if ch.rate() == 0 {
            err(at("rate_per_minute"), "must be at least 1".into());
        }
        if ch.storm_window.is_zero() {
            err(at("storm_window_s"), "must be greater than 0".into());
        }
    }
    let mut tiers = HashSet::new();
    for (i, t) in c.tiers.iter().enumerate() {
        let at = |key: &str| vec![k("tiers"), PathSeg::Index(i), k(key)];
        if !id_ok(&t.name) || !tiers.insert(t.name.as_str()) {
            err(at("name"), format!("{:?} must be a unique id", t.name));
        }
        if t.channels.is_empty() {
            err(at("channels"), "name at least one channel".into());
        }
        for ch in &t.channels {
            if !names.contains(ch.as_str()) {
                err(at("channels"), format!("no channel named {ch:?}"));
            }
        }
        let sms = t.channels.iter().any(|n| {
            c.channels
                .iter()
                .any(|ch| &ch.name == n && ch.kind == ChannelKind::Sms)
        });
        if sms && t.phones.is_empty() {
            err(at("phones"), "an `sms` channel needs phone numbers".into());
        }
        if let Some(q) = &t.quiet_hours {
            for (key, v) in [("start", &q.start), ("end", &q.end)] {
                if parse_hhmm(v).is_none() {
                    err(
                        vec![k("tiers"), PathSeg::Index(i), k("quiet_hours"), k(key)],
                        format!("{v:?} is not a time like \"22:30\""),
                    );
                }
            }
        }
    }
    let mut rules = HashSet::new();
    for (i, r) in c.rules.iter().enumerate() {
        let at = |key: &str| vec![k("rules"), PathSeg::Index(i), k(key)];
        if !id_ok(&r.name) || !rules.insert(r.name.as_str()) {
            err(at("name"), format!("{:?} must be a unique id", r.name));
        }
        if let Some(p) = &r.priorities {
            if p.iter().any(|p| !(1..=5).contains(p)) {
                err(at("priorities"), "priorities are 1–5".into());
            }
        }
        if r.tiers.is_empty() {
            err(at("tiers"), "name at least one tier".into());
        }
        for t in &r.tiers {
            if !tiers.contains(t.as_str()) {
                err(at("tiers"), format!("no tier named {t:?}"));
            }
        }
        if r.escalate_after.is_some_and(|d| d < Duration::from_secs(1)) {
            err(at("escalate_after_s"), "must be at least 1".into());
        }
        if r.repeat_every.is_some_and(|d| d < Duration::from_secs(1)) {
            err(at("repeat_every_s"), "must be at least 1".into());
        }
    }
    if c.enabled && !c.channels.is_empty() && c.rules.is_empty() {
        err(
            vec![k("rules")],
            "channels are configured but no rule sends anything".into(),
        );
    }
    out
}

/// `[a-z0-9-]{1,64}`.
fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A segment of a key path below `[push]`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PathSeg {
    Key(String),
    Index(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_every_problem() {
        let c: PushConfig = toml::from_str(
            r#"
            utc_offset = "8"
            [[channels]]
            name = "Hook"
            kind = "webhook"
            [[channels]]
            name = "ding"
            kind = "dingtalk"
            key = { env = "ESTATE_GW_TEST_SURELY_UNSET" }
            [[tiers]]
            name = "guards"
            channels = ["nope"]
            quiet_hours = { start = "25:00", end = "07:00" }
            [[rules]]
            name = "r"
            priorities = [0]
            tiers = ["managers"]
            "#,
        )
        .unwrap();
        let problems: Vec<String> = validate(&c, &KeyPath::root().key("push"))
            .into_iter()
            .map(|(k, m)| format!("{k}: {m}"))
            .collect();
        for want in [
            "push.utc_offset",
            "push.channels[0].name",
            "push.channels[0].url: required",
            "push.channels[0].secret: required",
            "push.tiers[0].channels: no channel named \"nope\"",
            "push.tiers[0].quiet_hours.start",
            "push.rules[0].priorities",
            "push.rules[0].tiers: no tier named \"managers\"",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(want)),
                "{want} not in {problems:#?}"
            );
        }
    }

    #[test]
    fn offsets_and_times() {
        assert_eq!(parse_offset("+08:00").unwrap().local_minus_utc(), 8 * 3600);
        assert_eq!(
            parse_offset("-05:30").unwrap().local_minus_utc(),
            -(5 * 3600 + 1800)
        );
        assert_eq!(parse_offset("UTC").unwrap().local_minus_utc(), 0);
        assert!(parse_offset("08:00").is_none());
        assert!(parse_offset("+25:00").is_none());
        assert_eq!(parse_hhmm("22:30"), Some(22 * 60 + 30));
        assert_eq!(parse_hhmm("24:00"), None);
        assert_eq!(parse_hhmm("7:00"), None);
    }
}
