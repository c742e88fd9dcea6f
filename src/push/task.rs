//! The push tasks: one per channel, and one for escalation. They read the
//! journal at their own cursors, never die, and stop on shutdown.

use super::config::{ChannelConfig, ChannelKind, Language, PushConfig};
use super::escalation::Escalations;
use super::outbox::{Action, DeadReason, Failure, Item, Limits, Outbox};
use super::route::{self, EscalationDetail, Routed, Wording};
use super::vendor::{self, Credentials, HttpRequest, Notice};
use super::{channel_sink, PushError, ESCALATION_SINK};
use crate::event::{AlarmState, Event, EventKind, NewEvent, Priority, Timestamp};
use crate::journal::Journal;
use crate::status::GatewayStatus;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Events read from the journal per batch.
const READ_BATCH: usize = 256;
/// How long a push in flight at shutdown may still take.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Wait after a journal error before trying again.
const JOURNAL_RETRY: Duration = Duration::from_secs(1);

/// Wall-clock source (tests inject a fake one).
pub trait Clock: Send + Sync + 'static {
    /// Unix milliseconds.
    fn now_ms(&self) -> i64;
    /// Notified when the clock jumps (a fake clock in tests); tasks waiting
    /// for a deadline look at the time again.
    fn jumps(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        Timestamp::now().unix_ms()
    }
}

/// What the push tasks need.
#[derive(Clone)]
pub struct PushContext {
    pub config: Arc<PushConfig>,
    /// Site id (`[site] id`) and display name (`[site] name`, else the id).
    pub site_id: String,
    pub site_name: String,
    pub gateway: String,
    pub journal: Journal,
    pub status: Arc<GatewayStatus>,
    /// Directory of the escalation state file (the journal's directory).
    pub state_dir: PathBuf,
    pub clock: Arc<dyn Clock>,
    /// Linkage rules with `notify` actions (see [`super::notify`]).
    pub notify: Arc<Vec<super::notify::NotifyRule>>,
}

/// Start the escalation task and one task per channel. Secrets are read
/// here: a missing one stops the start (the config check names it).
pub fn spawn(
    ctx: PushContext,
    shutdown: CancellationToken,
) -> Result<Vec<JoinHandle<()>>, PushError> {
    let cfg = ctx.config.clone();
    if !cfg.enabled || cfg.channels.is_empty() {
        return Ok(Vec::new());
    }
    let client = http_client(cfg.timeout)?;
    let mut channels = Vec::new();
    for ch in &cfg.channels {
        let secret = |src: &Option<crate::config::secret::SecretSource>, what| {
            src.as_ref()
                .map(|s| s.resolve())
                .transpose()
                .map_err(|source| PushError::Secret {
                    channel: ch.name.clone(),
                    what,
                    source,
                })
        };
        let creds = Credentials {
            key: secret(&ch.key, "key")?,
            secret: secret(&ch.secret, "secret")?,
        };
        channels.push((ch.clone(), creds));
    }
    let state = StateFile::in_dir(&ctx.state_dir);
    let escalations = state.load()?;
    let mut handles = vec![tokio::spawn(run_escalation(
        ctx.clone(),
        state,
        escalations,
        shutdown.clone(),
    ))];
    for (ch, creds) in channels {
        handles.push(tokio::spawn(run_channel(
            ctx.clone(),
            ch,
            creds,
            client.clone(),
            shutdown.clone(),
        )));
    }
    Ok(handles)
}

/// HTTPS on rustls with the ring provider and the system's CA roots.
fn http_client(timeout: Duration) -> Result<reqwest::Client, PushError> {
    use tokio_rustls::rustls;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "push: reading system CA certificates");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::warn!("push: no system CA certificates; HTTPS channels will fail");
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PushError::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(50))
        .build()
        .map_err(|e| PushError::Client(e.to_string()))
}

fn parse(payload: &[u8], seq: u64) -> Option<Event> {
    match serde_json::from_slice::<Event>(payload) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::error!(seq, error = %e, "push: unreadable journal event skipped");
            None
        }
    }
}

/// Sleep until `deadline_ms` on `clock` (at most a minute at a time, so a
/// clock step is noticed), or until the journal moves or shutdown.
async fn wait(
    clock: &dyn Clock,
    deadline_ms: Option<i64>,
    head: &mut tokio::sync::watch::Receiver<crate::journal::JournalHead>,
    shutdown: &CancellationToken,
) -> bool {
    let sleep = match deadline_ms {
        Some(t) => Duration::from_millis(u64::try_from(t - clock.now_ms()).unwrap_or(0)),
        None => Duration::from_secs(60),
    }
    .min(Duration::from_secs(60));
    let jumps = clock.jumps();
    let jumped = async {
        match &jumps {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = jumped => true,
        _ = tokio::time::sleep(sleep) => true,
        r = head.changed() => {
            if r.is_err() {
                // The journal is gone: only shutdown is left.
                shutdown.cancelled().await;
                return false;
            }
            true
        }
    }
}

// ---------------------------------------------------------------- channels

async fn run_channel(
    ctx: PushContext,
    ch: ChannelConfig,
    creds: Credentials,
    client: reqwest::Client,
    shutdown: CancellationToken,
) {
    let sink = channel_sink(&ch.name);
    let span = tracing::info_span!("push", channel = %ch.name, kind = ?ch.kind);
    let _g = span.enter();
    let cfg = &ctx.config;
    let mut outbox = Outbox::new(
        Limits {
            rate_per_minute: ch.rate(),
            storm_threshold: ch.storm_threshold,
            storm_window: ch.storm_window,
            retry_min: cfg.retry_min,
            retry_max: cfg.retry_max,
            dead_letter_after_attempts: ch.dead_letter_attempts(cfg),
            dead_letter_after: ch.dead_letter_age(cfg),
        },
        ctx.journal.acked_seq(&sink),
    );
    let wording = Wording {
        language: ch.language.unwrap_or(cfg.language),
        site: ctx.site_name.clone(),
        offset: super::config::parse_offset(&cfg.utc_offset)
            .unwrap_or_else(|| chrono::FixedOffset::east_opt(0).expect("zero offset")),
        alarm_link: cfg.alarm_link.clone(),
    };
    let mut head = ctx.journal.watch();
    let mut acked = ctx.journal.acked_seq(&sink);
    // SMS requests already delivered for the push being retried.
    let mut sms_done: Vec<String> = Vec::new();
    tracing::info!(cursor = acked, "push channel started");
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        head.borrow_and_update();
        // Read everything new.
        loop {
            match ctx.journal.read_events(outbox.read_upto(), READ_BATCH) {
                Ok(evs) if evs.is_empty() => break,
                Ok(evs) => {
                    for se in evs {
                        let ev = parse(&se.payload, se.seq);
                        let ts = ev.as_ref().map_or(0, |e| e.body.ts.unix_ms());
                        let routed = ev.and_then(|ev| {
                            let r = route::route(cfg, &ch.name, &ev);
                            super::notify::route(cfg, &ctx.notify, &ch.name, &ev, r)
                        });
                        outbox.read(se.seq, routed, ts);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "push: reading the journal failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(JOURNAL_RETRY) => {}
                    }
                    break;
                }
            }
        }
        let now = ctx.clock.now_ms();
        for (item, reason) in outbox.expire(now) {
            dead_letter(
                &ctx,
                &ch,
                &item,
                reason,
                "waited too long",
                now,
                &mut sms_done,
            )
            .await;
        }
        let upto = outbox.ack_upto();
        if upto > acked {
            match ctx.journal.ack_events(&sink, upto) {
                Ok(()) => acked = upto,
                Err(e) => tracing::error!(error = %e, "push: moving the cursor failed"),
            }
        }
        match outbox.next(now) {
            Action::Idle => {
                if !wait(ctx.clock.as_ref(), None, &mut head, &shutdown).await {
                    break;
                }
            }
            Action::Wait(t) => {
                if !wait(ctx.clock.as_ref(), Some(t), &mut head, &shutdown).await {
                    break;
                }
            }
            Action::Send { seqs, summary } => {
                let items: Vec<(u64, Routed)> = seqs
                    .iter()
                    .filter_map(|s| outbox.item(*s).map(|i| (i.seq, i.routed.clone())))
                    .collect();
                let notice = notice(&ctx, &ch, &wording, &items, summary);
                let attempt = seqs.iter().map(|s| outbox.attempts(*s)).max().unwrap_or(0) + 1;
                let result = {
                    let delivery = deliver(
                        &client,
                        &ch,
                        &creds,
                        &notice,
                        ctx.clock.as_ref(),
                        &mut sms_done,
                    );
                    tokio::pin!(delivery);
                    tokio::select! {
                        r = &mut delivery => Some(r),
                        // Let a request in flight finish (briefly), so a
                        // clean stop does not repeat a push after restart.
                        _ = shutdown.cancelled() => {
                            tokio::time::timeout(SHUTDOWN_GRACE, &mut delivery).await.ok()
                        }
                    }
                };
                let Some(result) = result else {
                    break;
                };
                let now = ctx.clock.now_ms();
                let ids: Vec<&str> = items.iter().map(|(_, r)| r.alarm.id.as_str()).collect();
                match result {
                    Ok(requests) => {
                        forget_sms(&mut sms_done, &notice.delivery_id);
                        outbox.delivered(&seqs, summary, requests, now);
                        // Move the cursor at once: the window in which a
                        // crash repeats this push is as short as it can be.
                        let upto = outbox.ack_upto();
                        if upto > acked {
                            match ctx.journal.ack_events(&sink, upto) {
                                Ok(()) => acked = upto,
                                Err(e) => {
                                    tracing::error!(error = %e, "push: moving the cursor failed")
                                }
                            }
                        }
                        ctx.status.pushes_sent.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            delivery = %notice.delivery_id,
                            alarms = items.len(),
                            summary,
                            attempt,
                            "push sent"
                        );
                        let tiers: Vec<&str> = items.iter().map(|(_, r)| r.tier.as_str()).collect();
                        record(
                            &ctx.journal,
                            EventKind::PushSent,
                            Priority::INFO,
                            serde_json::json!({
                                "channel": ch.name, "delivery_id": notice.delivery_id,
                                "alarms": ids, "tiers": dedup(tiers), "summary": summary,
                                "attempt": attempt,
                            }),
                        )
                        .await;
                    }
                    Err((requests, how, error)) => {
                        let verdict = outbox.failed(&seqs, how, requests, now);
                        let retry = verdict.retry_in;
                        ctx.status.pushes_failed.fetch_add(1, Ordering::Relaxed);
                        // Every push of this attempt given up: no retry.
                        let given_up = verdict.dead.len() == seqs.len();
                        tracing::warn!(
                            delivery = %notice.delivery_id,
                            attempt,
                            failure = ?how,
                            retry_in_s = retry.as_secs_f64(),
                            given_up,
                            %error,
                            "push failed"
                        );
                        record(
                            &ctx.journal,
                            EventKind::PushFailed,
                            Priority::MEDIUM,
                            serde_json::json!({
                                "channel": ch.name, "delivery_id": notice.delivery_id,
                                "alarms": ids, "attempt": attempt, "error": error,
                                "permanent": how == Failure::Permanent,
                                "retry_in_s": if given_up { None } else { Some(retry.as_secs_f64()) },
                            }),
                        )
                        .await;
                        for (item, reason) in verdict.dead {
                            dead_letter(&ctx, &ch, &item, reason, &error, now, &mut sms_done).await;
                        }
                        let upto = outbox.ack_upto();
                        if upto > acked {
                            match ctx.journal.ack_events(&sink, upto) {
                                Ok(()) => acked = upto,
                                Err(e) => {
                                    tracing::error!(error = %e, "push: moving the cursor failed")
                                }
                            }
                        }
                    }
                }
            }
        }
        ctx.status
            .pushes
            .set(&ch.name, outbox.pending(), outbox.oldest_since());
    }
    tracing::info!(
        cursor = acked,
        pending = outbox.pending(),
        "push channel stopped"
    );
}

/// Forget which SMS phones got the push `delivery_id` (it is done).
fn forget_sms(sms_done: &mut Vec<String>, delivery_id: &str) {
    let prefix = format!("{delivery_id}|");
    sms_done.retain(|k| !k.starts_with(&prefix));
}

/// Give a push up: record `push.dead_lettered` (priority high, so the
/// platform sees it), naming the tier a priority-1 alarm goes to instead.
/// The caller moves the cursor.
async fn dead_letter(
    ctx: &PushContext,
    ch: &ChannelConfig,
    item: &Item,
    reason: DeadReason,
    error: &str,
    now: i64,
    sms_done: &mut Vec<String>,
) {
    let delivery_id = format!("{}:{}", ch.name, item.seq);
    forget_sms(sms_done, &delivery_id);
    let fallback = route::fallback(&ctx.config, &item.routed);
    let age_s = (now.saturating_sub(item.since) / 1000).max(0);
    tracing::error!(
        delivery = %delivery_id,
        alarm = %item.routed.alarm.key,
        reason = reason.as_str(),
        attempts = item.attempts,
        age_s,
        fallback = fallback.as_ref().map(|f| f.tier.as_str()),
        %error,
        "push given up"
    );
    ctx.status.pushes_dead.fetch_add(1, Ordering::Relaxed);
    let a = &item.routed.alarm;
    let mut ev = NewEvent::system(
        EventKind::PushDeadLettered,
        Priority::HIGH,
        serde_json::json!({
            "channel": ch.name, "delivery_id": delivery_id, "alarms": [a.id],
            "alarm_key": a.key, "alarm_priority": a.priority, "tier": item.routed.tier,
            "reason": reason.as_str(), "error": error, "attempts": item.attempts,
            "age_s": age_s, "fallback": fallback,
        }),
    );
    ev.category = a.category;
    ev.source = crate::event::Source {
        device: a.device.clone(),
        point: a.point.clone(),
        zone: a.zone.clone(),
    };
    if let Err(e) = ctx.journal.record(vec![ev]).await {
        tracing::error!(error = %e, "push: recording push.dead_lettered failed");
    }
}

fn dedup(mut v: Vec<&str>) -> Vec<&str> {
    v.sort_unstable();
    v.dedup();
    v
}

async fn record(journal: &Journal, kind: EventKind, priority: Priority, detail: serde_json::Value) {
    if let Err(e) = journal
        .record(vec![NewEvent::system(kind, priority, detail)])
        .await
    {
        tracing::error!(error = %e, kind = kind.as_str(), "push: recording an event failed");
    }
}

/// The notice for `items` (one alarm, or a summary).
fn notice(
    ctx: &PushContext,
    ch: &ChannelConfig,
    wording: &Wording,
    items: &[(u64, Routed)],
    summary: bool,
) -> Notice {
    let first = items.first().map(|(s, _)| *s).unwrap_or(0);
    let last = items.last().map(|(s, _)| *s).unwrap_or(0);
    let routed: Vec<Routed> = items.iter().map(|(_, r)| r.clone()).collect();
    let (title, text, markdown) = if summary {
        wording.summary(&routed, ch.storm_window.as_secs())
    } else {
        wording.alarm(&routed[0])
    };
    let mut phones: Vec<String> = routed.iter().flat_map(|r| r.phones.clone()).collect();
    phones.sort();
    phones.dedup();
    let delivery_id = if summary {
        format!("{}:{first}-{last}", ch.name)
    } else {
        format!("{}:{first}", ch.name)
    };
    let kind = match (summary, routed.first().and_then(|r| r.escalation)) {
        (true, _) => "summary",
        (false, Some(_)) => "escalation",
        (false, None) => "alarm",
    };
    let alarms: Vec<serde_json::Value> = routed
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r.alarm).unwrap_or_default();
            v["link"] = serde_json::json!(wording.link(&r.alarm));
            v["tier"] = serde_json::json!(r.tier);
            if let Some((step, unacked_s)) = r.escalation {
                v["escalation"] = serde_json::json!({"step": step, "unacked_s": unacked_s});
            }
            v
        })
        .collect();
    let priority = routed.iter().map(|r| r.alarm.priority).min().unwrap_or(5);
    let data = serde_json::json!({
        "kind": kind,
        "delivery_id": delivery_id,
        "site": ctx.site_id,
        "site_name": ctx.site_name,
        "gateway": ctx.gateway,
        "priority": priority,
        "language": match wording.language { Language::ZhCn => "zh-CN", Language::En => "en" },
        "title": title,
        "text": text,
        "alarms": alarms,
    });
    Notice {
        delivery_id,
        priority,
        title,
        text,
        markdown,
        phones,
        data,
    }
}

/// Send `notice`. Ok: the number of requests made; Err: (requests, how it
/// failed, reason).
async fn deliver(
    client: &reqwest::Client,
    ch: &ChannelConfig,
    creds: &Credentials,
    notice: &Notice,
    clock: &dyn Clock,
    sms_done: &mut Vec<String>,
) -> Result<usize, (usize, Failure, String)> {
    if ch.kind != ChannelKind::Sms {
        // A request that cannot be built never will be: give it up.
        let req = vendor::build(ch, creds, notice, clock.now_ms(), None)
            .map_err(|e| (0, Failure::Permanent, e.to_string()))?;
        return send(client, ch.kind, req)
            .await
            .map(|_| 1)
            .map_err(|(how, e)| (1, how, e));
    }
    let mut requests = 0;
    // A phone the gateway refuses for good does not keep the others from
    // getting the text: they are sent first, then the push is given up.
    let mut refused: Option<String> = None;
    for phone in &notice.phones {
        let done_key = format!("{}|{phone}", notice.delivery_id);
        if sms_done.contains(&done_key) {
            continue;
        }
        let req = vendor::build(ch, creds, notice, clock.now_ms(), Some(phone))
            .map_err(|e| (requests, Failure::Permanent, e.to_string()))?;
        requests += 1;
        match send(client, ch.kind, req).await {
            Ok(()) => sms_done.push(done_key),
            Err((Failure::Permanent, e)) => {
                refused.get_or_insert(format!("{}: {e}", mask_phone(phone)));
            }
            Err((how, e)) => return Err((requests, how, format!("{}: {e}", mask_phone(phone)))),
        }
    }
    match refused {
        Some(e) => Err((requests, Failure::Permanent, e)),
        None => Ok(requests),
    }
}

/// A phone number for logs: only its last four digits.
fn mask_phone(p: &str) -> String {
    let n = p.chars().count();
    p.chars()
        .enumerate()
        .map(|(i, c)| if i + 4 < n { '*' } else { c })
        .collect()
}

async fn send(
    client: &reqwest::Client,
    kind: ChannelKind,
    req: HttpRequest,
) -> Result<(), (Failure, String)> {
    let method = if req.method == "GET" {
        reqwest::Method::GET
    } else {
        reqwest::Method::POST
    };
    let mut b = client.request(method, &req.url);
    for (k, v) in &req.headers {
        b = b.header(k, v);
    }
    if !req.body.is_empty() {
        b = b.body(req.body);
    }
    let unreachable = |e| (Failure::Unreachable, describe(e));
    let resp = b.send().await.map_err(unreachable)?;
    let status = resp.status().as_u16();
    // The vendor answered; a body cut off is worth another try.
    let body = resp
        .bytes()
        .await
        .map_err(|e| (Failure::Transient, describe(e)))?;
    vendor::check_response(kind, status, &body).map_err(|r| {
        let how = if r.transient {
            Failure::Transient
        } else {
            Failure::Permanent
        };
        (how, r.reason)
    })
}

/// A transport error without its URL (the URL may carry a key or token).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

// -------------------------------------------------------------- escalation

async fn run_escalation(
    ctx: PushContext,
    state: StateFile,
    mut esc: Escalations,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("push_escalation");
    let _g = span.enter();
    let cfg = &ctx.config;
    let mut cursor = ctx.journal.acked_seq(ESCALATION_SINK);
    let mut head = ctx.journal.watch();
    tracing::info!(cursor, tracked = esc.alarms.len(), "escalation started");
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        head.borrow_and_update();
        let mut changed = false;
        let mut upto = cursor;
        loop {
            match ctx.journal.read_events(upto, READ_BATCH) {
                Ok(evs) if evs.is_empty() => break,
                Ok(evs) => {
                    for se in evs {
                        upto = se.seq;
                        let Some(ev) = parse(&se.payload, se.seq) else {
                            continue;
                        };
                        changed |= apply(cfg, &mut esc, &ev);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "escalation: reading the journal failed");
                    break;
                }
            }
        }
        // Save before the cursor moves: a crash in between replays the
        // events, which is harmless (see `Escalations::raised`).
        if changed && !save(&state, &esc) {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(JOURNAL_RETRY) => {}
            }
            continue;
        }
        if upto > cursor {
            match ctx.journal.ack_events(ESCALATION_SINK, upto) {
                Ok(()) => cursor = upto,
                Err(e) => tracing::error!(error = %e, "escalation: moving the cursor failed"),
            }
        }
        let now = ctx.clock.now_ms();
        for d in esc.due(now) {
            let unacked_s = u64::try_from(d.unacked_ms / 1000).unwrap_or(0);
            tracing::warn!(alarm = %d.key, step = d.step, tier = %d.tier, unacked_s,
                "alarm not acknowledged: escalating");
            let mut ev = NewEvent::system(
                EventKind::PushEscalated,
                Priority::new(d.alarm.priority).unwrap_or(Priority::HIGH),
                serde_json::to_value(EscalationDetail {
                    tier: d.tier.clone(),
                    step: d.step,
                    unacked_s,
                    alarm: d.alarm.clone(),
                })
                .unwrap_or_default(),
            );
            ev.category = d.alarm.category;
            ev.source = crate::event::Source {
                device: d.alarm.device.clone(),
                point: d.alarm.point.clone(),
                zone: d.alarm.zone.clone(),
            };
            match ctx.journal.record(vec![ev]).await {
                Ok(_) => {
                    esc.done(&d.key, d.step);
                    save(&state, &esc);
                }
                Err(e) => {
                    tracing::error!(error = %e, alarm = %d.key, "escalation: recording failed");
                }
            }
        }
        let next = esc.next_deadline();
        if !wait(ctx.clock.as_ref(), next, &mut head, &shutdown).await {
            break;
        }
    }
    tracing::info!(tracked = esc.alarms.len(), "escalation stopped");
}

/// Apply one journal event to the escalation state; true if it changed.
pub fn apply(cfg: &PushConfig, esc: &mut Escalations, ev: &Event) -> bool {
    match ev.body.kind {
        EventKind::AlarmRaised | EventKind::CameraVideoLoss => {
            let Some(alarm) = route::AlarmView::of(ev) else {
                return false;
            };
            match route::match_rule(cfg, &alarm) {
                Some(rule) if !esc.alarms.contains_key(&alarm.key) => {
                    esc.raised(alarm, rule);
                    true
                }
                _ => false,
            }
        }
        EventKind::AlarmAcknowledged | EventKind::AlarmShelved => {
            ev.body.alarm.as_ref().is_some_and(|a| esc.ended(&a.key))
        }
        // A return to normal ends it; a return still unacknowledged (a
        // panic button pressed and let go, a device back online, a camera's
        // picture back) does not: someone must still acknowledge it.
        EventKind::AlarmCleared | EventKind::CameraVideoRestored => ev
            .body
            .alarm
            .as_ref()
            .is_some_and(|a| a.state == AlarmState::Normal && esc.ended(&a.key)),
        _ => false,
    }
}

fn save(state: &StateFile, esc: &Escalations) -> bool {
    match state.save(esc) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(path = %state.path.display(), error = %e,
                "escalation: saving state failed");
            false
        }
    }
}

/// The escalation state in `push-escalation.json` in the journal's
/// directory, replaced atomically (temporary file, fsync, rename).
struct StateFile {
    path: PathBuf,
}

impl StateFile {
    fn in_dir(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join("push-escalation.json"),
        }
    }

    fn load(&self) -> Result<Escalations, PushError> {
        let err = |source| PushError::State {
            path: self.path.clone(),
            source,
        };
        match std::fs::read(&self.path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(e) => Ok(e),
                Err(e) => {
                    // A damaged file must not stop pushes: start empty, loudly.
                    tracing::error!(path = %self.path.display(), error = %e,
                        "escalation state unreadable; pending escalations are lost");
                    Ok(Escalations::default())
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Escalations::default()),
            Err(e) => Err(err(e)),
        }
    }

    fn save(&self, esc: &Escalations) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(esc)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_masked() {
        assert_eq!(mask_phone("+8613800001234"), "**********1234");
        assert_eq!(mask_phone("12"), "12");
    }

    /// An event of the panic button's alarm (`panel/p1`).
    fn event(kind: EventKind, state: AlarmState, seq: u64) -> Event {
        let mut ev =
            super::route::tests::raised(1, 1, crate::event::Category::Intrusion, "villa-12");
        ev.seq = seq;
        ev.body.kind = kind;
        ev.body.alarm.as_mut().unwrap().state = state;
        ev
    }

    #[test]
    fn escalation_ends_on_acknowledgement_or_return_to_normal_only() {
        // Every alarm goes to the guards, then escalates to the manager.
        let mut cfg = super::route::tests::cfg();
        let all = cfg.rules.last_mut().unwrap();
        assert_eq!(all.name, "all");
        all.escalate_after = Some(Duration::from_secs(60));
        let mut esc = Escalations::default();
        let tracked = |esc: &Escalations| esc.alarms.contains_key("panel/p1");
        use AlarmState::*;
        assert!(apply(
            &cfg,
            &mut esc,
            &event(EventKind::AlarmRaised, ActiveUnacked, 1)
        ));
        // The button let go: returned, still unacknowledged.
        let returned = event(EventKind::AlarmCleared, ReturnedUnacked, 2);
        assert!(!apply(&cfg, &mut esc, &returned));
        assert!(
            tracked(&esc),
            "a returned, unacknowledged alarm escalates on"
        );
        assert!(apply(
            &cfg,
            &mut esc,
            &event(EventKind::AlarmAcknowledged, Normal, 3)
        ));
        assert!(!tracked(&esc));
        // A clear straight to normal (as the gateway's own alarms clear) ends it.
        assert!(apply(
            &cfg,
            &mut esc,
            &event(EventKind::AlarmRaised, ActiveUnacked, 4)
        ));
        assert!(apply(
            &cfg,
            &mut esc,
            &event(EventKind::AlarmCleared, Normal, 5)
        ));
        assert!(!tracked(&esc));
    }

    #[test]
    fn state_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::in_dir(dir.path());
        assert_eq!(f.load().unwrap(), Escalations::default());
        let e = Escalations::default();
        f.save(&e).unwrap();
        assert_eq!(f.load().unwrap(), e);
        std::fs::write(&f.path, b"{broken").unwrap();
        assert_eq!(f.load().unwrap(), Escalations::default());
    }
}
