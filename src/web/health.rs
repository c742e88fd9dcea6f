//! `/healthz`: 200 while every main loop (drivers, alarm engine, uplink,
//! journal committer) beats on time; 503 naming the late ones otherwise.

use super::WebState;
use crate::service::liveness::Stale;
use axum::extract::State;
use axum::http::StatusCode;

/// The answer for a set of late loops (pure).
pub fn report(stale: &[Stale], alive: &[String]) -> (StatusCode, String) {
    if stale.is_empty() {
        let mut body = String::from("ok\n");
        for name in alive {
            body.push_str(&format!("alive: {name}\n"));
        }
        (StatusCode::OK, body)
    } else {
        let mut body = String::from("unhealthy\n");
        for s in stale {
            body.push_str(&format!("not alive: {s}\n"));
        }
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

pub(super) async fn handler(State(state): State<WebState>) -> (StatusCode, String) {
    let liveness = &state.status.liveness;
    report(&liveness.check(), &liveness.names())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ok_lists_loops_unhealthy_names_the_late() {
        let (code, body) = report(&[], &["alarm".into(), "uplink".into()]);
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, "ok\nalive: alarm\nalive: uplink\n");
        let (code, body) = report(
            &[Stale {
                name: "journal".into(),
                late_by: Some(Duration::from_millis(2500)),
            }],
            &["alarm".into(), "journal".into()],
        );
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "unhealthy\nnot alive: journal (late by 2.5 s)\n");
    }
}
