//! Staff pushes against loopback receivers standing in for each vendor:
//! exact request formats and signatures (expected values computed
//! independently with Python's hmac), retries, storms, and escalation on a
//! fake clock. The push tasks run in-process on a real journal; alarms are
//! recorded into it as the alarm engine would.

mod common;
#[path = "common/http_receiver.rs"]
mod http_receiver;

use estate_gateway::config::KeyPath;
use estate_gateway::event::{
    AlarmInfo, AlarmState, Category, Event, EventKind, NewEvent, Priority, Source, Timestamp,
};
use estate_gateway::journal::{Journal, JournalConfig};
use estate_gateway::push::{self, Clock, PushConfig, PushContext, SystemClock};
use estate_gateway::status::GatewayStatus;
use http_receiver::Receiver;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
/// A sink that never acknowledges: keeps every event readable by the test.
const KEEP: &str = "test-keep";

/// A clock the test moves by hand.
struct FakeClock {
    ms: AtomicI64,
    jumps: Arc<Notify>,
}

impl FakeClock {
    fn at(ms: i64) -> Arc<FakeClock> {
        Arc::new(FakeClock {
            ms: AtomicI64::new(ms),
            jumps: Arc::new(Notify::new()),
        })
    }
    fn set(&self, ms: i64) {
        self.ms.store(ms, Ordering::SeqCst);
        self.jumps.notify_waiters();
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> i64 {
        self.ms.load(Ordering::SeqCst)
    }
    fn jumps(&self) -> Option<Arc<Notify>> {
        Some(self.jumps.clone())
    }
}

struct Setup {
    dir: tempfile::TempDir,
    journal: Journal,
    config: Arc<PushConfig>,
    notify: Arc<Vec<push::notify::NotifyRule>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Setup {
    /// Write the secret files, parse and validate `push_toml` (`@DIR@` is the
    /// temp dir), open a journal and start the push tasks.
    fn start(push_toml: &str, clock: Arc<dyn Clock>) -> Setup {
        Setup::start_with_linkage(push_toml, "", clock)
    }

    /// The same, with `[[linkage]]` rules (TOML) whose `notify` actions
    /// the channels deliver.
    fn start_with_linkage(push_toml: &str, linkage_toml: &str, clock: Arc<dyn Clock>) -> Setup {
        let linkage: Vec<estate_gateway::linkage::LinkageRuleConfig> = if linkage_toml.is_empty() {
            Vec::new()
        } else {
            toml::from_str::<toml::Table>(linkage_toml).unwrap()["linkage"]
                .clone()
                .try_into()
                .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        for (name, value) in SECRETS {
            std::fs::write(dir.path().join(name), format!("{value}\n")).unwrap();
        }
        let text = push_toml.replace("@DIR@", &dir.path().display().to_string());
        let config: PushConfig = toml::from_str(&text).unwrap();
        let problems = push::config::validate(&config, &KeyPath::root().key("push"));
        assert!(problems.is_empty(), "{problems:?}");
        let mut sinks = push::sinks(&config);
        sinks.push(KEEP.into());
        let sinks: Vec<&str> = sinks.iter().map(String::as_str).collect();
        let journal = Journal::open(
            &JournalConfig {
                path: dir.path().join("journal"),
                fsync: false,
                telemetry_flush: Duration::from_millis(100),
                ..JournalConfig::default()
            },
            "gw",
            &sinks,
        )
        .unwrap();
        let mut s = Setup {
            dir,
            journal,
            config: Arc::new(config),
            notify: Arc::new(push::notify::rules(&linkage)),
            stop: CancellationToken::new(),
            tasks: Vec::new(),
        };
        s.spawn(clock);
        s
    }

    fn spawn(&mut self, clock: Arc<dyn Clock>) {
        self.stop = CancellationToken::new();
        self.tasks = push::spawn(
            PushContext {
                config: self.config.clone(),
                site_id: "riverside".into(),
                site_name: "Riverside Villas".into(),
                gateway: "gw".into(),
                journal: self.journal.clone(),
                status: Arc::new(GatewayStatus::new(0)),
                state_dir: self.dir.path().join("journal"),
                clock,
                notify: self.notify.clone(),
            },
            self.stop.clone(),
        )
        .unwrap();
    }

    /// Stop the push tasks (as a restart would).
    async fn stop_tasks(&mut self) {
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            t.await.unwrap();
        }
    }

    async fn record(&self, ev: NewEvent) -> Event {
        self.journal.record(vec![ev]).await.unwrap().remove(0)
    }

    /// Every event recorded so far.
    fn events(&self) -> Vec<Event> {
        self.journal
            .read_events(0, 100_000)
            .unwrap()
            .iter()
            .map(|e| serde_json::from_slice(&e.payload).unwrap())
            .collect()
    }

    fn of_kind(&self, kind: EventKind) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| e.body.kind == kind)
            .collect()
    }

    /// Wait until `sink` has moved its cursor to `seq`.
    async fn wait_cursor(&self, sink: &str, seq: u64) {
        let start = std::time::Instant::now();
        while self.journal.acked_seq(sink) < seq {
            assert!(start.elapsed() < WAIT, "{sink} stuck before seq {seq}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Wait until the escalation task has finished a full round after
    /// everything recorded so far (two marker events: the round that read
    /// the first has made its escalations before it reads the second).
    async fn settle_escalation(&self) {
        for _ in 0..2 {
            let m = self.record(marker()).await;
            self.wait_cursor(push::ESCALATION_SINK, m.seq).await;
        }
    }
}

const SECRETS: [(&str, &str); 8] = [
    ("hook.secret", "hook-secret-1"),
    ("wecom.key", "wecom-key-1"),
    ("ding.token", "ding-token-1"),
    ("ding.secret", "SECding-secret-1"),
    ("feishu.token", "feishu-token-1"),
    ("feishu.secret", "feishu-secret-1"),
    ("sms.secret", "Bearer sms-secret-1"),
    ("unused", "x"),
];

fn marker() -> NewEvent {
    NewEvent::system(
        EventKind::ConfigChanged,
        Priority::INFO,
        serde_json::json!({}),
    )
}

fn alarm(kind: EventKind, n: u32, priority: u8, ts_ms: i64) -> NewEvent {
    let state = match kind {
        EventKind::AlarmAcknowledged => AlarmState::ActiveAcked,
        _ => AlarmState::ActiveUnacked,
    };
    NewEvent {
        ts: Timestamp::from_unix_ms(ts_ms).unwrap(),
        kind,
        priority: Priority::new(priority).unwrap(),
        category: if priority == 1 {
            Category::Fire
        } else {
            Category::Perimeter
        },
        source: Source {
            device: Some("fence-a".into()),
            point: Some(format!("sector-{n}")),
            zone: Some("villa-12".into()),
        },
        alarm: Some(AlarmInfo {
            key: format!("fence-a/sector-{n}"),
            state,
            value: serde_json::Value::Bool(true),
            message: format!("Fence sector {n} breach"),
            operator: None,
            comment: None,
            latched: false,
        }),
        attachments: vec![],
        detail: None,
    }
}

fn now_ms() -> i64 {
    SystemClock.now_ms()
}

/// Run Python's hmac/base64/urllib over `script`'s input lines; returns its
/// output lines. `None` (skipped loudly) without Python.
fn python(script: &str, input: &[String]) -> Option<Vec<String>> {
    let py = common::peer_or_skip(
        "python",
        common::python().or_else(|| common::which("python3")),
        "needs python3 to compute signatures independently",
    )?;
    let mut child = Command::new(py)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.join("\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect(),
    )
}

/// Expected signatures: each input line is `kind<TAB>secret<TAB>timestamp<TAB>hex(body)`.
const SIGNER: &str = r#"
import sys, hmac, hashlib, base64, urllib.parse
for line in sys.stdin.read().split("\n"):
    kind, secret, ts, body = line.split("\t")
    body = bytes.fromhex(body)
    if kind == "dingtalk":
        d = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
        print(urllib.parse.quote_plus(base64.b64encode(d)))
    elif kind == "feishu":
        d = hmac.new(f"{ts}\n{secret}".encode(), b"", hashlib.sha256).digest()
        print(base64.b64encode(d).decode())
    else:
        print("sha256=" + hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest())
"#;

fn sig_input(kind: &str, secret: &str, ts: &str, body: &[u8]) -> String {
    let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
    format!("{kind}\t{secret}\t{ts}\t{hex}")
}

fn assert_recent_ms(ts: &str) {
    let t: i64 = ts.parse().unwrap();
    assert!((now_ms() - t).abs() < 60_000, "timestamp {ts} is not now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vendor_gets_its_exact_format_and_signature() {
    let hook = Receiver::start("{}", 0);
    let wecom = Receiver::start(r#"{"errcode":0,"errmsg":"ok"}"#, 0);
    let ding = Receiver::start(r#"{"errcode":0,"errmsg":"ok"}"#, 0);
    let feishu = Receiver::start(r#"{"code":0,"msg":"success","data":{}}"#, 0);
    let sms = Receiver::start(r#"{"ok":true}"#, 0);
    let cfg = format!(
        r#"
        language = "en"
        alarm_link = "http://192.168.10.2:8080/alarms/{{id}}"
        [[channels]]
        name = "hook"
        kind = "webhook"
        url = "{hook}"
        secret = {{ file = "@DIR@/hook.secret" }}
        [[channels]]
        name = "wecom"
        kind = "wecom"
        url = "{wecom}"
        key = {{ file = "@DIR@/wecom.key" }}
        format = "markdown"
        language = "zh-CN"
        [[channels]]
        name = "ding"
        kind = "dingtalk"
        url = "{ding}"
        key = {{ file = "@DIR@/ding.token" }}
        secret = {{ file = "@DIR@/ding.secret" }}
        [[channels]]
        name = "feishu"
        kind = "feishu"
        url = "{feishu}"
        key = {{ file = "@DIR@/feishu.token" }}
        secret = {{ file = "@DIR@/feishu.secret" }}
        [[channels]]
        name = "sms"
        kind = "sms"
        url = "{sms}"
        body = '{{"to":"{{phone}}","text":"{{text}}"}}'
        auth_header = "Authorization"
        secret = {{ file = "@DIR@/sms.secret" }}
        [[tiers]]
        name = "guards"
        channels = ["hook", "wecom", "ding", "feishu", "sms"]
        phones = ["13800000001", "13800000002"]
        [[rules]]
        name = "all"
        tiers = ["guards"]
        "#,
        hook = hook.url("/hooks/alarm"),
        wecom = wecom.url("/cgi-bin/webhook/send"),
        ding = ding.url("/robot/send"),
        feishu = feishu.url("/open-apis/bot/v2/hook"),
        sms = sms.url("/sms/send"),
    );
    let s = Setup::start(&cfg, Arc::new(SystemClock));
    let raised = s
        .record(alarm(EventKind::AlarmRaised, 3, 1, now_ms()))
        .await;
    let id = raised.id.clone();

    let h = hook.wait_accepted(1, WAIT).remove(0);
    let w = wecom.wait_accepted(1, WAIT).remove(0);
    let d = ding.wait_accepted(1, WAIT).remove(0);
    let f = feishu.wait_accepted(1, WAIT).remove(0);
    let texts = sms.wait_accepted(2, WAIT);

    // Generic webhook: signed JSON.
    assert_eq!(h.method, "POST");
    assert_eq!(h.target, "/hooks/alarm");
    assert_eq!(h.header("content-type"), Some("application/json"));
    let hook_ts = h.header("x-estate-timestamp").unwrap().to_string();
    assert_recent_ms(&format!("{hook_ts}000"));
    assert_eq!(
        h.header("x-estate-delivery"),
        Some(format!("hook:{}", raised.seq).as_str())
    );
    let hj = h.json();
    assert_eq!(hj["kind"], "alarm");
    assert_eq!(hj["site"], "riverside");
    assert_eq!(hj["priority"], 1);
    assert_eq!(hj["alarms"][0]["id"], id.as_str());
    assert_eq!(hj["alarms"][0]["zone"], "villa-12");
    assert_eq!(
        hj["alarms"][0]["link"],
        format!("http://192.168.10.2:8080/alarms/{id}")
    );

    // WeCom: key in the query, markdown body, Chinese wording.
    assert_eq!(w.path(), "/cgi-bin/webhook/send");
    assert_eq!(w.query("key").as_deref(), Some("wecom-key-1"));
    let wj = w.json();
    assert_eq!(wj["msgtype"], "markdown");
    let content = wj["markdown"]["content"].as_str().unwrap();
    for x in [
        "站点",
        "Riverside Villas",
        "villa-12",
        "fence-a / sector-3",
        "火警",
        "未确认",
        &id,
    ] {
        assert!(content.contains(x), "WeCom markdown lacks {x}: {content}");
    }

    // DingTalk: access_token, timestamp (ms) and sign in the query.
    assert_eq!(d.path(), "/robot/send");
    assert_eq!(d.query("access_token").as_deref(), Some("ding-token-1"));
    let ding_ts = d.query("timestamp").unwrap();
    assert_recent_ms(&ding_ts);
    let dj = d.json();
    assert_eq!(dj["msgtype"], "text");
    assert_eq!(
        dj["at"]["atMobiles"],
        serde_json::json!(["13800000001", "13800000002"])
    );
    assert_eq!(dj["at"]["isAtAll"], false);
    let text = dj["text"]["content"].as_str().unwrap();
    for x in [
        "Site: Riverside Villas",
        "Zone: villa-12",
        "Device: fence-a / sector-3",
        "Time: ",
        "State: active, not acknowledged",
        "fire",
    ] {
        assert!(text.contains(x), "DingTalk text lacks {x}: {text}");
    }

    // Feishu: timestamp (s) and sign in the body.
    assert_eq!(f.path(), "/open-apis/bot/v2/hook/feishu-token-1");
    let fj = f.json();
    assert_eq!(fj["msg_type"], "text");
    let feishu_ts = fj["timestamp"].as_str().unwrap().to_string();
    assert_recent_ms(&format!("{feishu_ts}000"));
    assert!(fj["content"]["text"]
        .as_str()
        .unwrap()
        .contains("Fence sector 3 breach"));

    // SMS: one request per phone, template filled, auth header.
    let mut to: Vec<String> = texts
        .iter()
        .map(|r| r.json()["to"].as_str().unwrap().to_string())
        .collect();
    to.sort();
    assert_eq!(to, vec!["13800000001", "13800000002"]);
    for r in &texts {
        assert_eq!(r.header("authorization"), Some("Bearer sms-secret-1"));
        assert!(r.json()["text"].as_str().unwrap().contains("villa-12"));
    }

    // Signatures, computed independently.
    let Some(expected) = python(
        SIGNER,
        &[
            sig_input("dingtalk", "SECding-secret-1", &ding_ts, b""),
            sig_input("feishu", "feishu-secret-1", &feishu_ts, b""),
            sig_input("webhook", "hook-secret-1", &hook_ts, &h.body),
        ],
    ) else {
        return;
    };
    assert_eq!(d.query("sign").unwrap(), expected[0], "DingTalk sign");
    assert_eq!(fj["sign"], expected[1].as_str(), "Feishu sign");
    assert_eq!(
        h.header("x-estate-signature").unwrap(),
        expected[2],
        "webhook signature"
    );

    // Every push is visible as an event; nothing failed.
    let last = s.journal.stats().last_seq;
    for ch in ["hook", "wecom", "ding", "feishu", "sms"] {
        s.wait_cursor(&push::channel_sink(ch), raised.seq).await;
    }
    let _ = last;
    let start = std::time::Instant::now();
    while s.of_kind(EventKind::PushSent).len() < 5 {
        assert!(start.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(s.of_kind(EventKind::PushFailed).is_empty());
    // No secret in any recorded event.
    for e in s.events() {
        let text = serde_json::to_string(&e).unwrap();
        for (_, secret) in SECRETS {
            assert!(!text.contains(secret), "secret in event: {text}");
        }
    }
}

fn hook_config(url: &str, extra: &str) -> String {
    format!(
        r#"
        retry_min_s = 0.05
        retry_max_s = 0.2
        [[channels]]
        name = "hook"
        kind = "webhook"
        url = "{url}"
        secret = {{ file = "@DIR@/hook.secret" }}
        {extra}
        [[tiers]]
        name = "guards"
        channels = ["hook"]
        [[rules]]
        name = "all"
        tiers = ["guards"]
        "#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_failing_three_times_gets_the_push_once() {
    let hook = Receiver::start("{}", 3);
    let s = Setup::start(&hook_config(&hook.url("/h"), ""), Arc::new(SystemClock));
    let raised = s
        .record(alarm(EventKind::AlarmRaised, 1, 2, now_ms()))
        .await;
    hook.wait_accepted(1, WAIT);
    s.wait_cursor(&push::channel_sink("hook"), raised.seq).await;
    // Once delivered, the cursor moved: wait for the push.sent event (recorded
    // after the cursor) and check nothing else was sent.
    let start = std::time::Instant::now();
    while s.of_kind(EventKind::PushSent).is_empty() {
        assert!(start.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m = s.record(marker()).await;
    s.wait_cursor(&push::channel_sink("hook"), m.seq).await;
    let all = hook.all();
    assert_eq!(all.len(), 4, "3 failures then 1 success: {all:#?}");
    assert_eq!(hook.accepted().len(), 1, "delivered once");
    let ids: Vec<_> = all
        .iter()
        .map(|r| r.header("x-estate-delivery").unwrap().to_string())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "same delivery id on every try"
    );
    let failed = s.of_kind(EventKind::PushFailed);
    assert_eq!(failed.len(), 3);
    assert_eq!(failed[2].body.detail.as_ref().unwrap()["attempt"], 3);
    assert_eq!(failed[0].body.detail.as_ref().unwrap()["error"], "HTTP 500");
    let sent = s.of_kind(EventKind::PushSent);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body.detail.as_ref().unwrap()["attempt"], 4);
    assert_eq!(
        sent[0].body.detail.as_ref().unwrap()["alarms"][0],
        raised.id.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_is_condensed_but_every_p1_is_pushed_alone() {
    let hook = Receiver::start("{}", 0);
    let extra = "storm_threshold = 5\n        storm_window_s = 2";
    let s = Setup::start(&hook_config(&hook.url("/h"), extra), Arc::new(SystemClock));
    let t = now_ms();
    let evs: Vec<NewEvent> = (0..50)
        .map(|n| {
            alarm(
                EventKind::AlarmRaised,
                n,
                if n % 17 == 5 { 1 } else { 3 },
                t,
            )
        })
        .collect();
    let recorded = s.journal.record(evs).await.unwrap();
    let last = recorded.last().unwrap().seq;
    s.wait_cursor(&push::channel_sink("hook"), last).await;
    let got = hook.accepted();
    let mut covered: Vec<String> = Vec::new();
    for r in &got {
        let j = r.json();
        let alarms = j["alarms"].as_array().unwrap();
        if j["kind"] == "summary" {
            assert!(
                alarms.iter().all(|a| a["priority"] != 1),
                "P1 folded into a summary"
            );
            assert!(j["text"].as_str().unwrap().contains("报警汇总"));
        }
        covered.extend(alarms.iter().map(|a| a["id"].as_str().unwrap().to_string()));
    }
    let p1 = got
        .iter()
        .filter(|r| r.json()["priority"] == 1 && r.json()["kind"] == "alarm")
        .count();
    assert_eq!(p1, 3, "each P1 alone");
    assert!(
        got.len() <= 6,
        "50 alarms condensed into few pushes, got {}",
        got.len()
    );
    covered.sort();
    let mut want: Vec<String> = recorded.iter().map(|e| e.id.clone()).collect();
    want.sort();
    assert_eq!(covered, want, "every alarm pushed or summarized, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_on_a_fake_clock() {
    let wecom = Receiver::start(r#"{"errcode":0,"errmsg":"ok"}"#, 0);
    let ding = Receiver::start(r#"{"errcode":0,"errmsg":"ok"}"#, 0);
    let cfg = format!(
        r#"
        [[channels]]
        name = "guards-wecom"
        kind = "wecom"
        url = "{wecom}"
        key = {{ file = "@DIR@/wecom.key" }}
        [[channels]]
        name = "manager-ding"
        kind = "dingtalk"
        url = "{ding}"
        key = {{ file = "@DIR@/ding.token" }}
        secret = {{ file = "@DIR@/ding.secret" }}
        [[tiers]]
        name = "guards"
        channels = ["guards-wecom"]
        [[tiers]]
        name = "manager"
        channels = ["manager-ding"]
        [[rules]]
        name = "fence"
        tiers = ["guards", "manager"]
        escalate_after_s = 300
        repeat_every_s = 600
        "#,
        wecom = wecom.url("/send"),
        ding = ding.url("/send"),
    );
    let t0 = now_ms();
    let clock = FakeClock::at(t0);
    let mut s = Setup::start(&cfg, clock.clone());
    s.record(alarm(EventKind::AlarmRaised, 7, 2, t0)).await;
    wecom.wait_accepted(1, WAIT);

    // Not before N minutes.
    clock.set(t0 + 299_000);
    s.settle_escalation().await;
    assert!(
        s.of_kind(EventKind::PushEscalated).is_empty(),
        "escalated early"
    );

    // At N minutes: tier 2.
    clock.set(t0 + 300_000);
    let d = ding.wait_accepted(1, WAIT).remove(0);
    let text = d.json()["text"]["content"].as_str().unwrap().to_string();
    assert!(
        text.contains("升级1") && text.contains("5分钟未确认"),
        "{text}"
    );
    assert_eq!(wecom.accepted().len(), 1, "tier 1 is not pushed again");

    // A restart keeps the escalation: the repeat comes at 300 + 600 s.
    let first = s.of_kind(EventKind::PushEscalated)[0].seq;
    s.wait_cursor(&push::channel_sink("manager-ding"), first)
        .await;
    s.stop_tasks().await;
    clock.set(t0 + 899_000);
    s.spawn(clock.clone());
    s.settle_escalation().await;
    assert_eq!(s.of_kind(EventKind::PushEscalated).len(), 1);
    clock.set(t0 + 900_000);
    ding.wait_accepted(2, WAIT);
    let esc = s.of_kind(EventKind::PushEscalated);
    assert_eq!(esc.len(), 2);
    assert_eq!(esc[1].body.detail.as_ref().unwrap()["step"], 2);

    // Acknowledged: never again.
    s.record(alarm(EventKind::AlarmAcknowledged, 7, 2, t0 + 901_000))
        .await;
    s.settle_escalation().await;
    for h in 1..=5 {
        clock.set(t0 + h * 3_600_000);
        s.settle_escalation().await;
    }
    assert_eq!(
        s.of_kind(EventKind::PushEscalated).len(),
        2,
        "escalated after acknowledgement"
    );
    let m = s.record(marker()).await;
    s.wait_cursor(&push::channel_sink("manager-ding"), m.seq)
        .await;
    assert_eq!(ding.accepted().len(), 2);
    s.stop_tasks().await;
}

/// Wait until at least `n` events of `kind` are in the journal.
async fn wait_kind(s: &Setup, kind: EventKind, n: usize) -> Vec<Event> {
    let start = std::time::Instant::now();
    loop {
        let evs = s.of_kind(kind);
        if evs.len() >= n {
            return evs;
        }
        assert!(start.elapsed() < WAIT, "fewer than {n} {kind:?} events");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_refusal_is_dead_lettered_and_the_next_alarm_goes_promptly() {
    // DingTalk's keyword filter refuses every message about sector 7 (HTTP
    // 200, errcode 310000): final, however often it is retried.
    let ding = Receiver::start_refusing(
        r#"{"errcode":0,"errmsg":"ok"}"#,
        "sector-7",
        "200 OK",
        r#"{"errcode":310000,"errmsg":"keywords not in content"}"#,
    );
    let hook = Receiver::start("{}", 0);
    // Long backoff: had the refusal been retried ahead of the next alarm,
    // that alarm would wait seconds.
    let cfg = format!(
        r#"
        language = "en"
        retry_min_s = 30
        retry_max_s = 60
        [[channels]]
        name = "ding"
        kind = "dingtalk"
        url = "{ding}"
        key = {{ file = "@DIR@/ding.token" }}
        secret = {{ file = "@DIR@/ding.secret" }}
        [[channels]]
        name = "hook"
        kind = "webhook"
        url = "{hook}"
        secret = {{ file = "@DIR@/hook.secret" }}
        [[tiers]]
        name = "guards"
        channels = ["ding"]
        [[tiers]]
        name = "managers"
        channels = ["hook"]
        [[rules]]
        name = "all"
        tiers = ["guards", "managers"]
        "#,
        ding = ding.url("/robot/send"),
        hook = hook.url("/h"),
    );
    let s = Setup::start(&cfg, Arc::new(SystemClock));
    let refused = s
        .record(alarm(EventKind::AlarmRaised, 7, 1, now_ms()))
        .await;
    let dead = wait_kind(&s, EventKind::PushDeadLettered, 1).await;
    let d = dead[0].body.detail.as_ref().unwrap();
    assert_eq!(dead[0].body.priority, Priority::HIGH);
    assert_eq!(d["channel"], "ding");
    assert_eq!(d["reason"], "refused");
    assert_eq!(d["alarms"][0], refused.id.as_str());
    assert!(d["error"].as_str().unwrap().contains("310000"), "{d}");
    // A priority-1 alarm goes on to the rule's next tier.
    assert_eq!(d["fallback"]["tier"], "managers");
    let h = hook.wait_accepted(1, WAIT).remove(0);
    assert_eq!(h.json()["alarms"][0]["id"], refused.id.as_str());
    assert_eq!(h.json()["alarms"][0]["tier"], "managers");

    // The next fire alarm arrives at once, and the cursor is free.
    let t0 = std::time::Instant::now();
    let next = s
        .record(alarm(EventKind::AlarmRaised, 8, 1, now_ms()))
        .await;
    let got = ding.wait_accepted(1, WAIT).remove(0);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "next alarm took {:?}",
        t0.elapsed()
    );
    assert!(got.json()["text"]["content"]
        .as_str()
        .unwrap()
        .contains("sector 8"));
    s.wait_cursor(&push::channel_sink("ding"), next.seq).await;
    let m = s.record(marker()).await;
    s.wait_cursor(&push::channel_sink("ding"), m.seq).await;
    s.wait_cursor(&push::channel_sink("hook"), m.seq).await;
    // The refusal was not retried: one request, one push.failed.
    let tries: Vec<_> = ding
        .all()
        .into_iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("sector-7"))
        .collect();
    assert_eq!(tries.len(), 1, "{tries:#?}");
    let failed = s.of_kind(EventKind::PushFailed);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].body.detail.as_ref().unwrap()["permanent"], true);
    assert_eq!(s.of_kind(EventKind::PushDeadLettered).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_400_is_dead_lettered_without_blocking_lower_priorities() {
    let hook = Receiver::start_refusing("{}", "sector-5", "400 Bad Request", "{}");
    let s = Setup::start(&hook_config(&hook.url("/h"), ""), Arc::new(SystemClock));
    let bad = s
        .record(alarm(EventKind::AlarmRaised, 5, 3, now_ms()))
        .await;
    let good = s
        .record(alarm(EventKind::AlarmRaised, 6, 3, now_ms()))
        .await;
    hook.wait_accepted(1, WAIT);
    s.wait_cursor(&push::channel_sink("hook"), good.seq).await;
    let dead = wait_kind(&s, EventKind::PushDeadLettered, 1).await;
    let d = dead[0].body.detail.as_ref().unwrap();
    assert_eq!(d["alarms"][0], bad.id.as_str());
    assert_eq!(d["error"], "HTTP 400");
    assert!(d["fallback"].is_null(), "priority 3 has no fallback: {d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linkage_notify_pushes_the_alarm_to_the_named_tier() {
    let hook = Receiver::start("{}", 0);
    let engineers = Receiver::start("{}", 0);
    let cfg = format!(
        r#"
        [[channels]]
        name = "hook"
        kind = "webhook"
        url = "{hook}"
        secret = {{ file = "@DIR@/hook.secret" }}
        [[channels]]
        name = "engineers"
        kind = "webhook"
        url = "{eng}"
        secret = {{ file = "@DIR@/hook.secret" }}
        [[tiers]]
        name = "guards"
        channels = ["hook"]
        [[tiers]]
        name = "engineers"
        channels = ["engineers"]
        [[rules]]
        name = "fire"
        categories = ["fire"]
        tiers = ["guards"]
        "#,
        hook = hook.url("/h"),
        eng = engineers.url("/e"),
    );
    // Perimeter alarms of sector 4 call the engineers; no push rule does.
    let linkage = r#"
        [[linkage]]
        id = "sector-4-engineers"
        key = "fence-a/sector-4"
        actions = [{ type = "notify", to = "engineers" }]
    "#;
    let mut s = Setup::start_with_linkage(&cfg, linkage, Arc::new(SystemClock));
    // Stopped before the alarm: the request waits in the journal, and is
    // delivered after the restart.
    s.stop_tasks().await;
    let other = s
        .record(alarm(EventKind::AlarmRaised, 3, 2, now_ms()))
        .await;
    let raised = s
        .record(alarm(EventKind::AlarmRaised, 4, 2, now_ms()))
        .await;
    s.spawn(Arc::new(SystemClock));
    let got = engineers.wait_accepted(1, WAIT).remove(0);
    let j = got.json();
    assert_eq!(j["alarms"][0]["id"], raised.id.as_str());
    assert_eq!(j["alarms"][0]["tier"], "engineers");
    s.wait_cursor(&push::channel_sink("engineers"), raised.seq)
        .await;
    let m = s.record(marker()).await;
    s.wait_cursor(&push::channel_sink("engineers"), m.seq).await;
    s.wait_cursor(&push::channel_sink("hook"), m.seq).await;
    assert_eq!(engineers.all().len(), 1, "only the notified alarm");
    assert!(
        hook.all().is_empty(),
        "no push rule matches a perimeter alarm"
    );
    let _ = other;
}
