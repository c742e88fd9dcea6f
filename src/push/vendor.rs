//! Requests in each vendor's published format, and their signatures (pure:
//! no I/O, the time is an argument).
//!
//! - WeCom group robot: `POST {url}?key=KEY`, `{"msgtype":"text","text":{"content":…,
//!   "mentioned_mobile_list":[…]}}` or `{"msgtype":"markdown","markdown":{"content":…}}`;
//!   success is `{"errcode":0}` (developer.work.weixin.qq.com/document/path/91770).
//! - DingTalk custom robot: `POST {url}?access_token=TOKEN&timestamp=MS&sign=SIGN`, where
//!   `SIGN` = URL-encode(base64(HMAC-SHA256(key = secret, message = "MS\nsecret"))),
//!   body `{"msgtype":"text","text":{"content":…},"at":{"atMobiles":[…],"isAtAll":false}}`
//!   or `{"msgtype":"markdown","markdown":{"title":…,"text":…}}`; success is `{"errcode":0}`
//!   (open.dingtalk.com/document/robots/customize-robot-security-settings).
//! - Feishu/Lark custom bot: `POST {url}/{TOKEN}` with `"timestamp"` (seconds, a string)
//!   and `"sign"` = base64(HMAC-SHA256(key = "SECONDS\nsecret", message = empty)) in the
//!   JSON body, `{"msg_type":"text","content":{"text":…}}` or an interactive card with a
//!   markdown element; success is `{"code":0}`
//!   (open.feishu.cn/document/client-docs/bot-v3/add-custom-bot).
//! - Generic webhook: see [`webhook_signature`].
//! - SMS gateway: the configured URL and body template, per phone number.

use super::config::{ChannelConfig, ChannelKind, Format};
use crate::config::secret::Secret;
use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::json;

/// Header carrying the generic webhook's timestamp (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "X-Estate-Timestamp";
/// Header carrying the generic webhook's signature (`sha256=<hex>`).
pub const SIGNATURE_HEADER: &str = "X-Estate-Signature";
/// Header carrying the delivery id (stable across retries, for de-duplication).
pub const DELIVERY_HEADER: &str = "X-Estate-Delivery";

/// What one push says, before a vendor's format is applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    /// Stable across retries and restarts: `{channel}:{first seq}` (plus
    /// `-{last seq}` for a summary).
    pub delivery_id: String,
    /// Highest priority (lowest number) among the alarms it covers.
    pub priority: u8,
    /// One line.
    pub title: String,
    /// Plain text, several lines.
    pub text: String,
    /// The same in markdown.
    pub markdown: String,
    /// Mobile numbers to @-mention (WeCom, DingTalk) or to text (SMS).
    pub phones: Vec<String>,
    /// Structured content for the generic webhook: `kind`, `alarms` etc.
    pub data: serde_json::Value,
}

/// A request ready to send.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    /// Header name and value. Values may hold secrets: never log them.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A channel's resolved credentials (redacted by type).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub key: Option<Secret>,
    pub secret: Option<Secret>,
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&k, msg).as_ref().to_vec()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`)
/// is percent-encoded, as Python's `quote_plus` and Java's `URLEncoder` do
/// for the characters that can occur here.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn url_encode(s: &str) -> String {
    utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// DingTalk's `sign` query value: URL-encoded base64 of
/// HMAC-SHA256(key = secret, message = "{timestamp_ms}\n{secret}").
pub fn dingtalk_sign(timestamp_ms: i64, secret: &str) -> String {
    let msg = format!("{timestamp_ms}\n{secret}");
    url_encode(&b64(&hmac_sha256(secret.as_bytes(), msg.as_bytes())))
}

/// Feishu's `sign`: base64 of HMAC-SHA256(key = "{timestamp_s}\n{secret}",
/// message = empty).
pub fn feishu_sign(timestamp_s: i64, secret: &str) -> String {
    let key = format!("{timestamp_s}\n{secret}");
    b64(&hmac_sha256(key.as_bytes(), b""))
}

/// The generic webhook's signature: `sha256=` followed by the lowercase hex
/// of HMAC-SHA256(key = secret, message = "{timestamp_s}.{body}"). The
/// receiver recomputes it over the raw body and the `X-Estate-Timestamp`
/// header, compares in constant time, and rejects timestamps far from now
/// (replay).
pub fn webhook_signature(timestamp_s: i64, body: &[u8], secret: &str) -> String {
    let mut msg = format!("{timestamp_s}.").into_bytes();
    msg.extend_from_slice(body);
    let mac = hmac_sha256(secret.as_bytes(), &msg);
    let mut hex = String::with_capacity(7 + mac.len() * 2);
    hex.push_str("sha256=");
    for b in mac {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Why a request could not be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BuildError {
    #[error("channel has no URL")]
    NoUrl,
    #[error("channel needs its `{0}` secret")]
    MissingSecret(&'static str),
}

fn json_body(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn with_query(url: &str, query: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

/// Build the request(s) for `notice` on `channel` at `now_ms`. SMS gives one
/// request per phone (`phone`), every other kind ignores `phone`.
pub fn build(
    channel: &ChannelConfig,
    creds: &Credentials,
    notice: &Notice,
    now_ms: i64,
    phone: Option<&str>,
) -> Result<HttpRequest, BuildError> {
    let url = channel
        .url
        .as_deref()
        .or(channel.kind.default_url())
        .ok_or(BuildError::NoUrl)?;
    let json_ct = ("Content-Type".to_string(), "application/json".to_string());
    let delivery = (DELIVERY_HEADER.to_string(), notice.delivery_id.clone());
    let post = |url: String, headers: Vec<(String, String)>, body: Vec<u8>| HttpRequest {
        method: "POST".into(),
        url,
        headers,
        body,
    };
    match channel.kind {
        ChannelKind::Webhook => {
            let secret = creds
                .secret
                .as_ref()
                .ok_or(BuildError::MissingSecret("secret"))?;
            let ts = now_ms.div_euclid(1000);
            let body = json_body(&notice.data);
            let sig = webhook_signature(ts, &body, secret.expose());
            Ok(post(
                url.to_string(),
                vec![
                    json_ct,
                    delivery,
                    (TIMESTAMP_HEADER.into(), ts.to_string()),
                    (SIGNATURE_HEADER.into(), sig),
                ],
                body,
            ))
        }
        ChannelKind::Wecom => {
            let key = creds.key.as_ref().ok_or(BuildError::MissingSecret("key"))?;
            let body = match channel.format {
                Format::Text => json!({"msgtype": "text", "text": {
                    "content": cut(&notice.text, WECOM_TEXT_MAX),
                    "mentioned_mobile_list": notice.phones,
                }}),
                Format::Markdown => json!({"msgtype": "markdown", "markdown": {
                    "content": cut(&notice.markdown, WECOM_MARKDOWN_MAX),
                }}),
            };
            Ok(post(
                with_query(url, &format!("key={}", url_encode(key.expose()))),
                vec![json_ct],
                json_body(&body),
            ))
        }
        ChannelKind::Dingtalk => {
            let token = creds.key.as_ref().ok_or(BuildError::MissingSecret("key"))?;
            let mut query = format!("access_token={}", url_encode(token.expose()));
            if let Some(secret) = &creds.secret {
                query.push_str(&format!(
                    "&timestamp={now_ms}&sign={}",
                    dingtalk_sign(now_ms, secret.expose())
                ));
            }
            let body = match channel.format {
                Format::Text => json!({
                    "msgtype": "text",
                    "text": {"content": notice.text},
                    "at": {"atMobiles": notice.phones, "isAtAll": false},
                }),
                Format::Markdown => json!({
                    "msgtype": "markdown",
                    "markdown": {"title": notice.title, "text": notice.markdown},
                    "at": {"atMobiles": notice.phones, "isAtAll": false},
                }),
            };
            Ok(post(
                with_query(url, &query),
                vec![json_ct],
                json_body(&body),
            ))
        }
        ChannelKind::Feishu => {
            let token = creds.key.as_ref().ok_or(BuildError::MissingSecret("key"))?;
            let mut body = match channel.format {
                Format::Text => json!({"msg_type": "text", "content": {"text": notice.text}}),
                Format::Markdown => json!({"msg_type": "interactive", "card": {
                    "header": {"title": {"tag": "plain_text", "content": notice.title},
                               "template": if notice.priority <= 2 { "red" } else { "orange" }},
                    "elements": [{"tag": "markdown", "content": notice.markdown}],
                }}),
            };
            if let Some(secret) = &creds.secret {
                let ts = now_ms.div_euclid(1000);
                body["timestamp"] = json!(ts.to_string());
                body["sign"] = json!(feishu_sign(ts, secret.expose()));
            }
            let url = format!(
                "{}/{}",
                url.trim_end_matches('/'),
                url_encode(token.expose())
            );
            Ok(post(url, vec![json_ct], json_body(&body)))
        }
        ChannelKind::Sms => {
            let phone = phone.unwrap_or("");
            let json_ct = channel.content_type.contains("json");
            let fill_url = |t: &str| {
                t.replace("{phone}", &url_encode(phone))
                    .replace("{text}", &url_encode(&notice.text))
            };
            let fill_body = |t: &str| {
                if json_ct {
                    // JSON string contents without the quotes.
                    let esc = |s: &str| {
                        let q = serde_json::to_string(s).unwrap_or_default();
                        q[1..q.len() - 1].to_string()
                    };
                    t.replace("{phone}", &esc(phone))
                        .replace("{text}", &esc(&notice.text))
                } else {
                    t.replace("{phone}", &url_encode(phone))
                        .replace("{text}", &url_encode(&notice.text))
                }
            };
            let mut headers = vec![delivery];
            let body = channel.body.as_deref().map(fill_body).unwrap_or_default();
            if !body.is_empty() {
                headers.push(("Content-Type".into(), channel.content_type.clone()));
            }
            if let (Some(h), Some(secret)) = (&channel.auth_header, &creds.secret) {
                headers.push((h.clone(), secret.expose().to_string()));
            }
            Ok(HttpRequest {
                method: channel.method.clone(),
                url: fill_url(url),
                headers,
                body: body.into_bytes(),
            })
        }
    }
}

/// A vendor's refusal of a push, and whether trying again can help.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    /// `true`: retrying later may succeed (5xx, 408, 429, rate limits,
    /// unknown codes); `false`: the vendor refused this push for good.
    pub transient: bool,
    /// A short reason: the HTTP status or the vendor's code and message,
    /// never a secret.
    pub reason: String,
}

impl Refusal {
    fn transient(reason: String) -> Refusal {
        Refusal {
            transient: true,
            reason,
        }
    }
    fn permanent(reason: String) -> Refusal {
        Refusal {
            transient: false,
            reason,
        }
    }
}

/// Is an HTTP status worth retrying? 5xx, 408 (request timeout) and 429
/// (too many requests) are; every other non-2xx is a permanent refusal.
pub fn status_is_transient(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// Vendor error codes that mean "refused for good": retrying the same
/// request cannot succeed until someone changes the channel's settings or
/// the message. Codes not listed here are retried (and given up after
/// `dead_letter_after_attempts`).
///
/// - WeCom (developer.work.weixin.qq.com/document/path/90313, global error
///   codes): 40008 invalid message type, 40058 invalid parameter (e.g. content
///   longer than allowed), 93000 invalid webhook URL / key, 93004 robot
///   removed or disabled, 93008 robot not in the chat.
/// - DingTalk (open.dingtalk.com/document/robots/custom-robot-access): 300001
///   invalid `access_token`, 310000 a security setting refused the message
///   (keyword missing, signature mismatch or timestamp too far off, IP not
///   allowed), 400013 the group was dissolved, 400101 robot not found,
///   430004 content too long.
/// - Feishu (open.feishu.cn/document/client-docs/bot-v3/add-custom-bot,
///   "common errors"): 9499 bad request, 19001 invalid parameter, 19021 sign
///   mismatch (or timestamp more than an hour off), 19022 IP not allowed,
///   19024 keyword filter, 19002 the bot is disabled.
pub fn code_is_permanent(kind: ChannelKind, code: i64) -> bool {
    match kind {
        ChannelKind::Wecom => matches!(code, 40008 | 40058 | 93000 | 93004 | 93008),
        ChannelKind::Dingtalk => {
            matches!(code, 300001 | 310000 | 400013 | 400101 | 430004)
        }
        ChannelKind::Feishu => matches!(code, 9499 | 19001 | 19002 | 19021 | 19022 | 19024),
        ChannelKind::Webhook | ChannelKind::Sms => false,
    }
}

/// Whether a vendor's response means the message was accepted. A refusal
/// says whether to retry: 5xx, 408, 429 and vendor codes not known to be
/// final (rate limits: WeCom 45009, DingTalk 130101 / 410100, Feishu 11232,
/// system busy −1) are transient; other 4xx and the codes of
/// [`code_is_permanent`] are permanent.
pub fn check_response(kind: ChannelKind, status: u16, body: &[u8]) -> Result<(), Refusal> {
    if !(200..300).contains(&status) {
        let reason = format!("HTTP {status}");
        return Err(if status_is_transient(status) {
            Refusal::transient(reason)
        } else {
            Refusal::permanent(reason)
        });
    }
    let code_field = match kind {
        ChannelKind::Wecom | ChannelKind::Dingtalk => "errcode",
        ChannelKind::Feishu => "code",
        ChannelKind::Webhook | ChannelKind::Sms => return Ok(()),
    };
    // A 2xx without the vendor's answer (a proxy's page, a cut body): retry.
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| Refusal::transient("response is not JSON".to_string()))?;
    // Feishu's older responses carry `StatusCode` instead of `code`.
    let code = v
        .get(code_field)
        .or_else(|| v.get("StatusCode"))
        .and_then(|c| c.as_i64());
    match code {
        Some(0) => Ok(()),
        Some(c) => {
            let msg = v
                .get("errmsg")
                .or_else(|| v.get("msg"))
                .and_then(|m| m.as_str())
                .unwrap_or("");
            let reason = format!("vendor error {c}: {}", truncate(msg, 120));
            Err(if code_is_permanent(kind, c) {
                Refusal::permanent(reason)
            } else {
                Refusal::transient(reason)
            })
        }
        None => Err(Refusal::transient(format!(
            "response has no `{code_field}`"
        ))),
    }
}

/// WeCom's limits on message content, in bytes of UTF-8.
const WECOM_TEXT_MAX: usize = 2048;
const WECOM_MARKDOWN_MAX: usize = 4096;

/// `s` cut to at most `max` bytes at a character boundary, with `…` when cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed independently with Python's hmac/base64/urllib:
    //   base64.b64encode(hmac.new(b"SECtest", b"1700000000000\nSECtest",
    //       hashlib.sha256).digest()) then urllib.parse.quote_plus(...)
    #[test]
    fn dingtalk_known_vector() {
        assert_eq!(dingtalk_sign(1_700_000_000_000, "SECtest"), DINGTALK_VECTOR);
    }

    #[test]
    fn feishu_known_vector() {
        assert_eq!(feishu_sign(1_700_000_000, "feishu-secret"), FEISHU_VECTOR);
    }

    #[test]
    fn webhook_known_vector() {
        assert_eq!(
            webhook_signature(1_700_000_000, br#"{"a":1}"#, "hook-secret"),
            WEBHOOK_VECTOR
        );
    }

    const DINGTALK_VECTOR: &str = "aZLLrriXgn05YbwaGR7knYsLeJADjr9NwLaNNKpxh4g%3D";
    const FEISHU_VECTOR: &str = "OrBzY1Y01Gq+HgJsl+7OfWcMVwc7YocohQm5iiZwjhU=";
    const WEBHOOK_VECTOR: &str =
        "sha256=2ca9484d0c409cd2998fd115eb688d50af3c4591f30a5124d6262b43877ed809";

    fn channel(kind: ChannelKind, format: Format) -> ChannelConfig {
        ChannelConfig {
            name: "c".into(),
            kind,
            url: Some("http://127.0.0.1:9/x".into()),
            key: None,
            secret: None,
            format,
            language: None,
            rate_per_minute: None,
            storm_threshold: 10,
            storm_window: std::time::Duration::from_secs(60),
            body: Some(r#"{"to":"{phone}","msg":"{text}"}"#.into()),
            method: "POST".into(),
            content_type: "application/json".into(),
            auth_header: Some("X-Api-Key".into()),
            dead_letter_after_attempts: None,
            dead_letter_after: None,
        }
    }

    fn notice() -> Notice {
        Notice {
            delivery_id: "c:7".into(),
            priority: 1,
            title: "T".into(),
            text: "line \"1\"\nline 2".into(),
            markdown: "**m**".into(),
            phones: vec!["13800000001".into()],
            data: json!({"kind": "alarm"}),
        }
    }

    fn creds() -> Credentials {
        Credentials {
            key: Some(Secret::new("k/1")),
            secret: Some(Secret::new("s")),
        }
    }

    #[test]
    fn vendor_shapes() {
        let n = notice();
        let r = build(
            &channel(ChannelKind::Wecom, Format::Text),
            &creds(),
            &n,
            0,
            None,
        )
        .unwrap();
        assert_eq!(r.url, "http://127.0.0.1:9/x?key=k%2F1");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["msgtype"], "text");
        assert_eq!(v["text"]["mentioned_mobile_list"][0], "13800000001");

        let r = build(
            &channel(ChannelKind::Dingtalk, Format::Markdown),
            &creds(),
            &n,
            5,
            None,
        )
        .unwrap();
        assert!(r
            .url
            .starts_with("http://127.0.0.1:9/x?access_token=k%2F1&timestamp=5&sign="));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["markdown"]["title"], "T");

        let r = build(
            &channel(ChannelKind::Feishu, Format::Text),
            &creds(),
            &n,
            5_999,
            None,
        )
        .unwrap();
        assert_eq!(r.url, "http://127.0.0.1:9/x/k%2F1");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["timestamp"], "5");
        assert_eq!(v["sign"], feishu_sign(5, "s"));

        let r = build(
            &channel(ChannelKind::Sms, Format::Text),
            &creds(),
            &n,
            0,
            Some("+861"),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["to"], "+861");
        assert_eq!(v["msg"], n.text);
        assert!(r.headers.contains(&("X-Api-Key".into(), "s".into())));
    }

    #[test]
    fn wecom_content_within_limits() {
        let long = "报警".repeat(2000);
        let c = cut(&long, WECOM_TEXT_MAX);
        assert!(c.len() <= WECOM_TEXT_MAX && c.ends_with('…'));
        assert_eq!(cut("short", 10), "short");
    }

    #[test]
    fn responses() {
        assert!(check_response(ChannelKind::Wecom, 200, br#"{"errcode":0,"errmsg":"ok"}"#).is_ok());
        assert!(check_response(
            ChannelKind::Dingtalk,
            200,
            br#"{"errcode":310000,"errmsg":"sign not match"}"#
        )
        .is_err());
        assert!(check_response(ChannelKind::Feishu, 200, br#"{"code":0,"msg":"success"}"#).is_ok());
        assert!(check_response(ChannelKind::Feishu, 200, br#"{"StatusCode":0}"#).is_ok());
        assert!(check_response(ChannelKind::Webhook, 503, b"").is_err());
        assert!(check_response(ChannelKind::Sms, 204, b"").is_ok());
    }

    fn transient(kind: ChannelKind, status: u16, body: &[u8]) -> bool {
        check_response(kind, status, body).unwrap_err().transient
    }

    #[test]
    fn refusals_transient_or_permanent() {
        use ChannelKind::*;
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(transient(Webhook, s, b""), "HTTP {s}");
        }
        for s in [400, 401, 403, 404, 410, 413, 422] {
            assert!(!transient(Webhook, s, b""), "HTTP {s}");
            assert!(!transient(Sms, s, b""), "HTTP {s}");
        }
        // Rate limits and busy answers are retried.
        assert!(transient(
            Wecom,
            200,
            br#"{"errcode":45009,"errmsg":"api freq out of limit"}"#
        ));
        assert!(transient(
            Wecom,
            200,
            br#"{"errcode":-1,"errmsg":"system busy"}"#
        ));
        assert!(transient(
            Dingtalk,
            200,
            br#"{"errcode":130101,"errmsg":"send too fast"}"#
        ));
        assert!(transient(
            Feishu,
            200,
            br#"{"code":11232,"msg":"frequency limited"}"#
        ));
        assert!(transient(Wecom, 200, b"<html>proxy</html>"));
        // Bad key, signature, keyword filter, content: final.
        assert!(!transient(
            Wecom,
            200,
            br#"{"errcode":93000,"errmsg":"invalid webhook url"}"#
        ));
        assert!(!transient(
            Wecom,
            200,
            br#"{"errcode":40058,"errmsg":"content exceed max length"}"#
        ));
        let e = check_response(
            Dingtalk,
            200,
            br#"{"errcode":310000,"errmsg":"keywords not in content"}"#,
        )
        .unwrap_err();
        assert!(!e.transient);
        assert_eq!(e.reason, "vendor error 310000: keywords not in content");
        assert!(!transient(
            Dingtalk,
            200,
            br#"{"errcode":300001,"errmsg":"token is not exist"}"#
        ));
        assert!(!transient(
            Feishu,
            200,
            br#"{"code":19021,"msg":"sign match fail"}"#
        ));
        assert!(!transient(
            Feishu,
            200,
            br#"{"code":19024,"msg":"Key Words Not Found"}"#
        ));
    }
}
