//! `/metrics` behind `[web] metrics_token`, against the real gateway
//! binary: without the bearer token, or with a wrong one, a scraper gets
//! 401 and no figures; with it, the exposition. `/healthz` stays open.

mod common;
#[path = "web/http.rs"]
mod http;
#[path = "common/modbus_sim.rs"]
mod modbus_sim;
#[path = "common/mosquitto.rs"]
mod mosquitto;
#[path = "web/peers.rs"]
mod peers;

use peers::{Rig, METRICS_TOKEN};
use std::io::{Read, Write};
use std::net::SocketAddr;

/// GET `path` with an optional `Authorization` header.
fn get(web: SocketAddr, path: &str, authorization: Option<&str>) -> http::Resp {
    let mut s = http::connect_from(web, None);
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n{auth}\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    http::parse(&raw)
}

#[test]
fn metrics_need_the_bearer_token_when_one_is_set() {
    let Some(rig) = Rig::start_with(
        "web-metrics-token",
        &[],
        r#"metrics_token = { file = "@DIR@/metrics.token" }"#,
    ) else {
        return;
    };
    let right = format!("Bearer {METRICS_TOKEN}");
    let wrong = format!("Bearer {}x", METRICS_TOKEN);
    let basic = format!("Basic {METRICS_TOKEN}");
    for auth in [None, Some(wrong.as_str()), Some(basic.as_str())] {
        let r = get(rig.web, "/metrics", auth);
        assert_eq!(r.status, 401, "{auth:?}: {}", r.body);
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{auth:?}: no WWW-Authenticate: Bearer"
        );
        assert!(!r.body.contains("estate_gateway_"), "{auth:?}: {}", r.body);
    }
    let r = get(rig.web, "/metrics", Some(&right));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("estate_gateway_uplink_connected "),
        "{}",
        r.body
    );
    // The token is never logged.
    assert!(
        !rig.gw.log().contains(METRICS_TOKEN),
        "the token was logged"
    );
    // Health checks stay open.
    let r = get(rig.web, "/healthz", None);
    assert_eq!(r.status, 200, "{}", r.body);
}
