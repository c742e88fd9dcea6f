//! The system page's API (technicians): version and uptime, disk space of
//! the journal's filesystem, the journal's size and each sink's backlog,
//! the uplink's state, and the newest log lines.
//!
//! Every number is read live (journal counters, `statvfs`), never cached.
//! Log lines come from the in-memory ring of [`crate::logging`]; secrets
//! are redacted by their type where they are logged, and the ring hides
//! secret-looking fields besides.

use super::api::{ApiError, Authed};
use super::WebState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::Ordering;

/// `/system` and `/system/logs` (nested under `/api/v1`).
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/system", get(system))
        .route("/system/logs", get(logs))
}

/// Free and total bytes of the filesystem holding `path` (free: as an
/// unprivileged writer sees it).
pub fn disk_usage(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to
    // writable memory of the right type; statvfs only writes to it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded and filled the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    let frsize = st.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    Ok((
        (st.f_bavail as u64).saturating_mul(frsize),
        (st.f_blocks as u64).saturating_mul(frsize),
    ))
}

/// `GET /api/v1/system` (technician).
async fn system(
    State(state): State<WebState>,
    a: Authed,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !a.session.role.can_administer() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "only technicians may read the system page".into(),
        ));
    }
    let cfg = a.page.cfg();
    let c = &cfg.config;
    let s = &state.status;
    let j = &state.journal;
    let stats = j.stats();
    let head = *j.watch().borrow();
    let sinks: Vec<_> = j
        .sinks()
        .iter()
        .map(|sink| {
            let acked = j.acked_seq(sink);
            let acked_t = j.acked_telemetry(sink);
            json!({
                "name": sink,
                "acked_seq": acked,
                "backlog_events": stats.last_seq.saturating_sub(acked),
                "backlog_telemetry": head.last_telemetry.saturating_sub(acked_t),
            })
        })
        .collect();
    let jpath = c.journal.path.clone();
    let disk = tokio::task::spawn_blocking(move || disk_usage(&jpath))
        .await
        .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "failed".into()))?;
    let disk = match disk {
        Ok((free, total)) => {
            json!({"path": c.journal.path, "free_bytes": free, "total_bytes": total})
        }
        Err(e) => json!({"path": c.journal.path, "error": e.to_string()}),
    };
    Ok(Json(json!({
        "version": s.version,
        "boot_id": s.boot_id,
        "started_at": s.started_at,
        "uptime_s": s.uptime_s(),
        "site": c.site.id,
        "gateway": c.site.gateway,
        "disk": disk,
        "journal": {
            "bytes_on_disk": stats.bytes_on_disk,
            "live_bytes": stats.live_bytes,
            "max_bytes": c.journal.max_bytes,
            "events": stats.events,
            "telemetry": stats.telemetry,
            "last_seq": stats.last_seq,
            "pressure": stats.pressure,
            "telemetry_evicted": stats.telemetry_evicted,
            "sinks": sinks,
        },
        "uplink": {
            "connected": s.uplink_connected.load(Ordering::Relaxed),
            "host": c.uplink.host,
            "port": c.uplink.port,
        },
        "devices": {
            "online": s.devices_online.load(Ordering::Relaxed),
            "offline": s.devices_offline.load(Ordering::Relaxed),
        },
    })))
}

/// `GET /api/v1/system/logs` (technician): the newest log lines at INFO
/// and above, and the warnings and errors kept from before them, newest
/// last.
async fn logs(a: Authed) -> Result<Json<serde_json::Value>, ApiError> {
    if !a.session.role.can_administer() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "only technicians may read the logs".into(),
        ));
    }
    Ok(Json(json!({
        "lines": crate::logging::recent(crate::logging::RING_LINES + crate::logging::RING_PROBLEMS),
    })))
}

#[cfg(test)]
mod tests {
    #[test]
    fn disk_usage_of_a_real_filesystem() {
        let d = tempfile::tempdir().unwrap();
        let (free, total) = super::disk_usage(d.path()).unwrap();
        assert!(total > 0 && free <= total, "{free} / {total}");
        assert!(super::disk_usage(&d.path().join("missing")).is_err());
    }
}
