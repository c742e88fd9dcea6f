//! The alarm engine's task: the single consumer of the driver bus. It feeds
//! readings to the [`AlarmEngine`] and the [`TelemetryFilter`], records the
//! resulting events durably, and serves operator actions (acknowledge) so
//! that alarm state has exactly one owner.

use super::{AlarmEngine, AlarmError};
use crate::config::LoadedConfig;
use crate::event::{NewEvent, Timestamp};
use crate::journal::Journal;
use crate::point::{BusMessage, Quality};
use crate::status::GatewayStatus;
use crate::telemetry::TelemetryFilter;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Requests to the alarm task from the command path.
#[derive(Debug)]
pub enum AlarmRequest {
    Acknowledge {
        key: String,
        operator: String,
        comment: Option<String>,
        reply: oneshot::Sender<Result<(), AlarmError>>,
    },
}

/// Run until the bus closes (all drivers stopped), then flush what is pending.
pub async fn run(
    cfg: Arc<LoadedConfig>,
    journal: Journal,
    status: Arc<GatewayStatus>,
    mut bus: mpsc::Receiver<BusMessage>,
    mut requests: mpsc::Receiver<AlarmRequest>,
) {
    let mut engine = AlarmEngine::new(&cfg);
    let mut telemetry = TelemetryFilter::new(&cfg);
    let telemetry_on = cfg.config.telemetry.enabled;
    let mut out: Vec<NewEvent> = Vec::new();
    let device_index: HashMap<&str, usize> = cfg
        .config
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i))
        .collect();
    let mut offline = vec![false; cfg.config.devices.len()];
    let mut requests_open = true;
    loop {
        let deadline = earliest(engine.next_deadline(), telemetry.next_deadline());
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            msg = bus.recv() => {
                let Some(msg) = msg else { break };
                let now = Instant::now();
                match msg {
                    BusMessage::Readings { ts, readings, .. } => {
                        for r in &readings {
                            engine.on_reading(now, ts, r.point, Some(r.value), Quality::Good, &mut out);
                            if telemetry_on {
                                telemetry.offer(now, ts, r.point, Some(r.value), Quality::Good);
                            }
                        }
                    }
                    BusMessage::DeviceStatus { device, ts, online, reason } => {
                        let Some(&di) = device_index.get(&*device) else { continue };
                        if offline[di] != online {
                            continue;
                        }
                        offline[di] = !online;
                        let (up, down) = (&status.devices_online, &status.devices_offline);
                        if online {
                            up.fetch_add(1, Ordering::Relaxed);
                            down.fetch_sub(1, Ordering::Relaxed);
                        } else {
                            up.fetch_sub(1, Ordering::Relaxed);
                            down.fetch_add(1, Ordering::Relaxed);
                        }
                        engine.on_device_status(now, ts, di, online, reason.as_deref(), &mut out);
                        if !online {
                            // Every point of the device goes bad.
                            for (pi, meta) in cfg.points.iter() {
                                if meta.device_index == di {
                                    engine.on_reading(now, ts, pi, None, Quality::Bad, &mut out);
                                    if telemetry_on {
                                        telemetry.offer(now, ts, pi, None, Quality::Bad);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            req = requests.recv(), if requests_open => {
                match req {
                    None => requests_open = false,
                    Some(AlarmRequest::Acknowledge { key, operator, comment, reply }) => {
                        let r = engine.acknowledge(Instant::now(), Timestamp::now(), &key, &operator, comment.as_deref(), &mut out);
                        let _ = reply.send(r);
                    }
                }
            }
            _ = sleep => {}
        }
        let now = Instant::now();
        engine.tick(now, Timestamp::now(), &mut out);
        if !out.is_empty() {
            record(&journal, std::mem::take(&mut out)).await;
            status
                .alarms_active
                .store(engine.active_count() as u64, Ordering::Relaxed);
        }
        if telemetry_on {
            while let Some(payload) = telemetry.take_due(now) {
                if let Err(e) = journal.record_telemetry(&payload) {
                    tracing::warn!(error = %e, "telemetry not journaled");
                }
            }
        }
    }
    // Bus closed: drivers are stopped. Flush pending telemetry.
    let now = Instant::now();
    while let Some(payload) = telemetry.flush(now) {
        let _ = journal.record_telemetry(&payload);
    }
    tracing::debug!("alarm task stopped");
}

/// Record events, retrying until the journal takes them: an alarm is never
/// dropped because the disk hiccuped.
async fn record(journal: &Journal, events: Vec<NewEvent>) {
    let mut wait = Duration::from_millis(50);
    loop {
        match journal.record(events.clone()).await {
            Ok(recorded) => {
                for e in &recorded {
                    tracing::info!(
                        seq = e.seq,
                        kind = e.body.kind.as_str(),
                        key = e.body.alarm.as_ref().map(|a| a.key.as_str()),
                        "event recorded"
                    );
                }
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, events = events.len(), "cannot record events; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
