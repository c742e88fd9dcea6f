//! The one-time setup token of the web page, against the real gateway
//! binary: it is written to `<journal path>/setup-token` (mode 0600), so a
//! technician finds it even when `[log] level` hides it, and it is spent
//! for good once a technician exists, also one added with
//! `estate-gateway user add` while the gateway runs. No peers needed: the
//! uplink just retries against a closed port.

mod common;
#[path = "web/http.rs"]
mod http;
#[path = "common/modbus_sim.rs"]
#[allow(unused)]
mod modbus_sim;
#[path = "common/mosquitto.rs"]
#[allow(unused)]
mod mosquitto;
#[path = "web/peers.rs"]
mod peers;

use common::gateway::GatewayProc;
use http::{Client, Seen};
use std::net::SocketAddr;
use std::time::Duration;

const TECH_PW: &str = "tech-passw0rd-long";

/// A gateway with no account yet, logging errors only.
fn start(name: &str) -> (GatewayProc, SocketAddr) {
    let web_port = common::free_port();
    let cfg = format!(
        r#"
[site]
id = "setup"
gateway = "gw"

[log]
level = "error"
format = "text"

[journal]
path = "@DIR@/journal"

[uplink]
host = "127.0.0.1"
port = {closed}
reconnect_min_s = 1
reconnect_max_s = 5

[web]
listen = "127.0.0.1:{web_port}"
"#,
        closed = common::free_port()
    );
    let mut gw = GatewayProc::new(name, &cfg);
    // The harness logs at debug unless RUST_LOG says otherwise, and
    // RUST_LOG wins over `[log] level`.
    gw.env("RUST_LOG", "error");
    gw.start();
    let web = SocketAddr::from(([127, 0, 0, 1], web_port));
    common::wait_for(Duration::from_secs(20), "web server", || {
        std::net::TcpStream::connect(web).ok()
    });
    (gw, web)
}

/// The token from its file, once written.
fn token_file(gw: &GatewayProc) -> String {
    let path = gw.dir().join("journal/setup-token");
    common::wait_for(Duration::from_secs(10), "setup token file", || {
        let text = std::fs::read_to_string(&path).ok()?;
        let tok = text.trim_end().to_string();
        (tok.len() == 32).then_some(tok)
    })
}

#[test]
fn setup_token_is_in_a_private_file_whatever_the_log_level() {
    let (gw, web) = start("setup-file");
    let token = token_file(&gw);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(gw.dir().join("journal/setup-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        !gw.log().contains(&token),
        "level = \"error\" hides the log line; the file is the way"
    );
    let seen: Seen = Default::default();
    let mut anon = Client::new(web, &seen);
    assert_eq!(anon.get("/api/v1/setup").json()["needed"], true);
    let ok = anon.setup(&token, "wang", TECH_PW);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(
        !gw.dir().join("journal/setup-token").exists(),
        "a spent token's file is removed"
    );
    assert_eq!(anon.get("/api/v1/setup").json()["needed"], false);
    assert_eq!(anon.login("wang", TECH_PW).status, 200);
}

#[test]
fn setup_token_is_spent_once_a_technician_is_added_from_the_command_line() {
    let (gw, web) = start("setup-cli");
    let token = token_file(&gw);
    let seen: Seen = Default::default();
    let mut anon = Client::new(web, &seen);
    assert_eq!(anon.get("/api/v1/setup").json()["needed"], true);

    // The technician uses the command line instead, the gateway running.
    peers::add_user_cli(&gw, "wang", "technician", TECH_PW);
    assert_eq!(
        anon.get("/api/v1/setup").json()["needed"],
        false,
        "the accounts are read again"
    );
    assert!(!gw.dir().join("journal/setup-token").exists());
    // Whoever read the token in the log or the file gets nothing with it.
    let stranger = anon.setup(&token, "intruder", TECH_PW);
    assert_eq!(stranger.status, 403, "{}", stranger.body);
    assert_eq!(anon.login("intruder", TECH_PW).status, 401);
    assert_eq!(anon.login("wang", TECH_PW).status, 200);
    let users = anon.get("/api/v1/users").json();
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap_or_else(|| panic!("{users}"))
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["wang"]);
}

#[test]
fn setup_is_refused_when_a_technician_appears_before_the_token_is_used() {
    // The check also runs on the POST itself, not only on the GET.
    let (gw, web) = start("setup-post");
    let token = token_file(&gw);
    peers::add_user_cli(&gw, "wang", "technician", TECH_PW);
    let seen: Seen = Default::default();
    let mut anon = Client::new(web, &seen);
    let stranger = anon.setup(&token, "intruder", TECH_PW);
    assert_eq!(stranger.status, 403, "{}", stranger.body);
    assert_eq!(anon.get("/api/v1/setup").json()["needed"], false);
    assert_eq!(anon.login("intruder", TECH_PW).status, 401);
}
