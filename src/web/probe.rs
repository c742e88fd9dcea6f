//! "Read now" for a device (technicians): `POST /api/v1/devices/{id}/probe`.
//!
//! A Modbus device is read once at once, through its endpoint task (see
//! [`crate::drivers::modbus::probe`]): between two polls, never at the same
//! time as them. The answer has every request's raw registers or bits and
//! each point's decoded value and quality, or a clear error (offline,
//! timeout, Modbus exception) within a bounded time. Other devices (MQTT,
//! GPIO) answer with their last values (`source: "last"`).
//!
//! Every probe is written to the audit log.

use super::api::{ApiError, Authed};
use super::WebState;
use crate::drivers::modbus::probe::ProbeError;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use std::time::Duration;

/// Shortest and longest time a probe may take, whatever the device's
/// timeout and number of requests.
const MIN_WAIT: Duration = Duration::from_secs(2);
const MAX_WAIT: Duration = Duration::from_secs(30);

/// `/devices/:id/probe` (nested under `/api/v1`).
pub fn routes() -> Router<WebState> {
    Router::new().route("/devices/:id/probe", post(probe))
}

/// HTTP status of a probe error.
fn status_of(e: &ProbeError) -> StatusCode {
    match e {
        ProbeError::NotPolled { .. } => StatusCode::CONFLICT,
        ProbeError::Offline { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ProbeError::Timeout { .. } | ProbeError::Deadline { .. } => StatusCode::GATEWAY_TIMEOUT,
        ProbeError::Exception { .. } | ProbeError::Protocol { .. } => StatusCode::BAD_GATEWAY,
        ProbeError::Busy => StatusCode::TOO_MANY_REQUESTS,
        ProbeError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// `POST /api/v1/devices/{id}/probe` `{}` (technician).
async fn probe(a: Authed, Path(id): Path<String>) -> Result<Response, ApiError> {
    if !a.session.role.can_administer() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "only technicians may read devices on demand".into(),
        ));
    }
    let field = a.page.field.borrow().clone();
    let cfg = field.config.clone();
    let Some((di, dev)) = cfg
        .config
        .devices
        .iter()
        .enumerate()
        .find(|(_, d)| d.id == id)
    else {
        return Err(ApiError(StatusCode::NOT_FOUND, "no such device".into()));
    };
    let points: Vec<_> = cfg
        .points
        .iter()
        .filter(|(_, m)| m.device_index == di)
        .collect();
    if !field.probes.serves(&id) {
        if dev.modbus.is_some() {
            let e = ProbeError::NotPolled { device: id.clone() };
            a.audit_probe(&id, false, Some(e.to_string()));
            return Ok(error_response(&id, &e));
        }
        // Not a polled device: its last values.
        let live = a.page.live();
        let values = live.values();
        let out: Vec<_> = points
            .iter()
            .map(|(pi, m)| {
                let s = values.get(*pi as usize).copied().flatten();
                json!({
                    "point": m.point,
                    "unit": m.unit,
                    "value": s.and_then(|s| s.value),
                    "quality": s.map(|s| s.quality),
                    "ts": s.map(|s| s.ts),
                })
            })
            .collect();
        a.audit_probe(&id, true, Some("last values".into()));
        return Ok(
            Json(json!({"device": id, "ok": true, "source": "last", "values": out}))
                .into_response(),
        );
    }
    let wait = (dev.timeout * (points.len() as u32 + 2)).clamp(MIN_WAIT, MAX_WAIT);
    let began = std::time::Instant::now();
    let r = field.probes.probe(&id, wait).await;
    tracing::info!(device = %id, user = %a.session.user, ok = r.is_ok(), took_ms = began.elapsed().as_millis() as u64, "read now");
    match r {
        Ok(rep) => {
            a.audit_probe(&id, true, None);
            let values: Vec<_> = rep
                .values
                .iter()
                .filter(|v| (v.point as usize) < cfg.points.len())
                .map(|v| {
                    let m = cfg.points.get(v.point);
                    json!({
                        "point": m.point,
                        "unit": m.unit,
                        "table": v.table,
                        "address": v.address,
                        "raw": v.raw,
                        "value": v.value,
                        "quality": v.quality,
                        "error": v.error,
                    })
                })
                .collect();
            Ok(Json(json!({
                "device": id,
                "ok": true,
                "source": "modbus",
                "unit": rep.unit,
                "took_ms": rep.took_ms,
                "reads": rep.reads,
                "values": values,
            }))
            .into_response())
        }
        Err(e) => {
            a.audit_probe(&id, false, Some(e.to_string()));
            Ok(error_response(&id, &e))
        }
    }
}

fn error_response(device: &str, e: &ProbeError) -> Response {
    (
        status_of(e),
        Json(json!({"device": device, "ok": false, "error": e.to_string(), "cause": e})),
    )
        .into_response()
}

impl Authed {
    fn audit_probe(&self, device: &str, ok: bool, detail: Option<String>) {
        self.audit("device.probe", Some(device), ok, detail);
    }
}
