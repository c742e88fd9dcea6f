//! The web page's API against the real gateway binary, a pymodbus door
//! contact and a mosquitto broker: setup token, sign-in, sessions, CSRF,
//! roles, throttling, the live alarm stream, acknowledgement through the
//! command path to the platform, users, audit — and no configured secret
//! or password in any response.

mod common;
#[path = "web/http.rs"]
mod http;
#[path = "common/modbus_sim.rs"]
mod modbus_sim;
#[path = "common/mosquitto.rs"]
mod mosquitto;
#[path = "web/peers.rs"]
mod peers;

use http::{Client, Seen};
use peers::{Rig, ALARM_KEY, UPLINK_SECRET};
use serde_json::json;
use std::time::{Duration, Instant};

const TECH_PW: &str = "tech-passw0rd-long";
const GUARD_PW: &str = "guard-passw0rd-long";
const VIEWER_PW: &str = "viewer-passw0rd-long";
const NEW_PW: &str = "new-user-passw0rd";

/// Every API route, for the unauthenticated sweep.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/me"),
    ("PUT", "/api/v1/me/lang"),
    ("DELETE", "/api/v1/session"),
    ("GET", "/api/v1/dashboard"),
    ("GET", "/api/v1/alarms"),
    ("GET", "/api/v1/alarms/stream"),
    ("POST", "/api/v1/alarms/ack"),
    ("POST", "/api/v1/alarms/shelve"),
    ("GET", "/api/v1/devices"),
    ("GET", "/api/v1/users"),
    ("POST", "/api/v1/users"),
    ("DELETE", "/api/v1/users/li"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/config"),
];

#[test]
fn web_api_end_to_end() {
    let Some(rig) = Rig::start(
        "web-api",
        &[("li", "guard", GUARD_PW), ("zhao", "viewer", VIEWER_PW)],
    ) else {
        return;
    };
    let seen: Seen = Default::default();
    let mut anon = Client::new(rig.web, &seen);

    // Open routes: the page shell, its assets, /healthz.
    let page = anon.get("/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/assets/app.js"));
    assert!(page
        .header("content-security-policy")
        .is_some_and(|v| v.contains("default-src 'self'")));
    assert_eq!(anon.get("/assets/app.js").status, 200);
    assert_eq!(anon.get("/assets/app.css").status, 200);
    assert_eq!(anon.get("/healthz").status, 200);

    // Everything else needs a session.
    for (m, p) in ROUTES {
        let body = (*m != "GET" && *m != "DELETE").then(|| json!({}));
        let r = anon.send(m, p, body.as_ref(), false);
        assert_eq!(r.status, 401, "{m} {p} without a session: {}", r.body);
    }

    // First technician through the one-time setup token.
    assert_eq!(anon.get("/api/v1/setup").json()["needed"], true);
    let token = peers::setup_token(&rig.gw);
    let bad = anon.setup(&"0".repeat(32), "wang", TECH_PW);
    assert_eq!(bad.status, 403);
    let ok = anon.setup(&token, "wang", TECH_PW);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let again = anon.setup(&token, "wang2", TECH_PW);
    assert_eq!(again.status, 403, "the setup token works once");
    assert_eq!(anon.get("/api/v1/setup").json()["needed"], false);

    // Sign-in: cookie flags, wrong password.
    let mut guard = Client::new(rig.web, &seen);
    assert_eq!(guard.login("li", "wrong password!").status, 401);
    let r = guard.login("li", GUARD_PW);
    assert_eq!(r.status, 200, "{}", r.body);
    let cookie = r.header("set-cookie").unwrap().to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert_eq!(r.json()["role"], "guard");
    assert_eq!(r.json()["lang"], "zh-CN", "Chinese by default");
    let me = guard.get("/api/v1/me");
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["name"], "li");

    // A login form posted cross-site (not JSON) is refused.
    let form = anon.send("POST", "/api/v1/session", None, false);
    assert_eq!(form.status, 415);

    // Guards: no users, no config, no audit log.
    for p in ["/api/v1/users", "/api/v1/config", "/api/v1/audit"] {
        assert_eq!(guard.get(p).status, 403, "guard GET {p}");
    }
    let add = guard.post(
        "/api/v1/users",
        json!({"name": "evil", "role": "technician", "password": NEW_PW}),
    );
    assert_eq!(add.status, 403, "{}", add.body);
    assert_eq!(
        guard
            .send("DELETE", "/api/v1/users/zhao", None, true)
            .status,
        403
    );

    // Dashboard and devices.
    let dash = guard.get("/api/v1/dashboard").json();
    assert_eq!(dash["site"], "web");
    assert!(dash["uplink"]["backlog"].is_u64(), "{dash}");
    let devs = crate::common::wait_for(Duration::from_secs(10), "door-7 polled", || {
        let d = guard.get("/api/v1/devices").json();
        (d["devices"][0]["points"][0]["quality"] == "good").then_some(d)
    });
    assert_eq!(devs["devices"][0]["id"], "door-panel");
    assert_eq!(devs["devices"][0]["status"], "online");
    assert_eq!(devs["devices"][0]["points"][0]["value"], false);

    // The live stream: a door flip shows within 1 s.
    let stream = guard.alarm_stream();
    let (_, first) = stream
        .recv_timeout(Duration::from_secs(5))
        .expect("initial alarm list");
    assert_eq!(first, json!([]));
    let flipped = rig.set_door(true);
    let (at, list) = loop {
        let (at, list) = stream
            .recv_timeout(Duration::from_secs(5))
            .expect("alarm list after the flip");
        if list.as_array().is_some_and(|a| !a.is_empty()) {
            break (at, list);
        }
    };
    let took = at.duration_since(flipped);
    eprintln!("door flip → alarm stream: {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "alarm took {took:?} to reach the console"
    );
    assert_eq!(list[0]["key"], ALARM_KEY);
    assert_eq!(list[0]["state"], "active_unacked");
    assert_eq!(list[0]["priority"], 2);
    let alarms = guard.get("/api/v1/alarms").json();
    assert_eq!(alarms["alarms"][0]["key"], ALARM_KEY);

    // CSRF: missing or wrong token → 403, nothing acknowledged.
    let no_csrf = guard.send(
        "POST",
        "/api/v1/alarms/ack",
        Some(&json!({"key": ALARM_KEY})),
        false,
    );
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.body);
    let real = guard.csrf.replace("f".repeat(64));
    assert_eq!(
        guard
            .post("/api/v1/alarms/ack", json!({"key": ALARM_KEY}))
            .status,
        403
    );
    guard.csrf = real;

    // Viewers cannot acknowledge.
    let mut viewer = Client::new(rig.web, &seen);
    assert_eq!(viewer.login("zhao", VIEWER_PW).status, 200);
    assert_eq!(viewer.get("/api/v1/alarms").status, 200);
    let v = viewer.post("/api/v1/alarms/ack", json!({"key": ALARM_KEY}));
    assert_eq!(v.status, 403, "{}", v.body);
    assert_eq!(
        guard.get("/api/v1/alarms").json()["alarms"][0]["state"],
        "active_unacked"
    );

    // The guard acknowledges: through the command path to the platform.
    let ack = guard.post(
        "/api/v1/alarms/ack",
        json!({"key": ALARM_KEY, "comment": "门已检查 checked"}),
    );
    assert_eq!(ack.status, 200, "{}", ack.body);
    let acked = rig.sub.wait_json(
        "/events",
        Duration::from_secs(10),
        "alarm.acknowledged",
        |e| e["kind"] == "alarm.acknowledged",
    );
    assert_eq!(acked["alarm"]["key"], ALARM_KEY);
    assert!(acked.to_string().contains("li"), "operator in {acked}");
    let cmd = rig.sub.wait_json(
        "/events",
        Duration::from_secs(10),
        "command.executed",
        |e| e["kind"] == "command.executed" && e["detail"]["action"] == "ack_alarm",
    );
    assert_eq!(cmd["detail"]["operator"], "li");
    assert_eq!(cmd["detail"]["origin"]["channel"], "local");
    // Acknowledging twice is refused by the command path, not hidden.
    let twice = guard.post("/api/v1/alarms/ack", json!({"key": ALARM_KEY}));
    assert_eq!(twice.status, 409, "{}", twice.body);
    // The console words a refusal it knows in its own language.
    assert_eq!(twice.json()["reason"], "not_unacked", "{}", twice.body);
    let unknown = guard.post("/api/v1/alarms/ack", json!({"key": "no-such/point"}));
    assert_eq!(unknown.status, 409, "{}", unknown.body);
    assert_eq!(
        unknown.json()["reason"],
        "unknown_alarm",
        "{}",
        unknown.body
    );
    let (_, after) = stream
        .recv_timeout(Duration::from_secs(5))
        .expect("list after ack");
    assert_eq!(after[0]["state"], "active_acked", "{after}");
    // Shelving needs a duration.
    assert_eq!(
        guard
            .post("/api/v1/alarms/shelve", json!({"key": ALARM_KEY}))
            .status,
        400
    );

    // Language is per user and kept.
    let l = guard.send("PUT", "/api/v1/me/lang", Some(&json!({"lang": "en"})), true);
    assert_eq!(l.status, 200, "{}", l.body);
    assert_eq!(guard.get("/api/v1/me").json()["lang"], "en");
    let mut guard2 = Client::new(rig.web, &seen);
    assert_eq!(guard2.login("li", GUARD_PW).json()["lang"], "en");

    // Technician: users, audit log, configuration.
    let mut tech = Client::new(rig.web, &seen);
    assert_eq!(tech.login("wang", TECH_PW).status, 200);
    let added = tech.post(
        "/api/v1/users",
        json!({"name": "chen", "role": "guard", "password": NEW_PW}),
    );
    assert_eq!(added.status, 201, "{}", added.body);
    let users = tech.get("/api/v1/users").json();
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert!(
        names.contains(&"chen") && names.contains(&"wang"),
        "{users}"
    );
    assert!(!users.to_string().contains("argon2"), "no hashes: {users}");
    let mut chen = Client::new(rig.web, &seen);
    assert_eq!(chen.login("chen", NEW_PW).status, 200);
    assert_eq!(
        tech.send("DELETE", "/api/v1/users/chen", None, true).status,
        200
    );
    assert_eq!(
        chen.get("/api/v1/me").status,
        401,
        "a removed user's session ends"
    );
    assert_eq!(
        tech.send("DELETE", "/api/v1/users/wang", None, true).status,
        400,
        "the last technician stays"
    );
    let cfg = tech.get("/api/v1/config");
    assert_eq!(cfg.status, 200);
    assert_eq!(cfg.json()["uplink"]["password_set"], true);
    let audit = tech.get("/api/v1/audit").json();
    let actions: Vec<String> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}:{}:{}", e["action"], e["user"], e["ok"]))
        .collect();
    for want in [
        r#""ack_alarm":"li":true"#,
        r#""login":"li":false"#,
        r#""user.add":"wang":true"#,
        r#""user.remove":"wang":true"#,
        r#""setup":null:true"#,
    ] {
        assert!(actions.iter().any(|a| a == want), "{want} in {actions:?}");
    }

    // Throttling: after 3 failures the right password is refused too.
    let mut t = Client::new(rig.web, &seen);
    for _ in 0..3 {
        assert_eq!(t.login("zhao", "not the password").status, 401);
    }
    let locked = t.login("zhao", VIEWER_PW);
    assert_eq!(locked.status, 429, "{}", locked.body);
    assert!(locked.header("retry-after").is_some());
    // Another account from the same address still signs in.
    assert_eq!(
        Client::new(rig.web, &seen).login("wang", TECH_PW).status,
        200
    );

    // Sign-out ends the session, and its open alarm stream soon after.
    assert_eq!(
        guard.send("DELETE", "/api/v1/session", None, true).status,
        200
    );
    assert_eq!(guard.get("/api/v1/me").status, 401);
    let ended = Instant::now();
    loop {
        match stream.recv_timeout(Duration::from_secs(10)) {
            Ok(_) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("the alarm stream outlived its session: {e}"),
        }
    }
    eprintln!("alarm stream closed {:?} after sign-out", ended.elapsed());

    // Per address: after 4 × login_failures failures from one address,
    // every account is refused from there, the right password too.
    let mut locked_out = false;
    for i in 0..12 {
        let r = t.login(&format!("ghost{i}"), "not a password at all");
        if r.status == 429 {
            locked_out = true;
            break;
        }
        assert_eq!(r.status, 401);
    }
    assert!(locked_out, "the address was never throttled");
    assert_eq!(
        Client::new(rig.web, &seen).login("wang", TECH_PW).status,
        429
    );

    // No secret in any response, nor in the accounts or audit files.
    let bodies = seen.lock().unwrap().clone();
    assert!(bodies.len() > 40, "responses scanned: {}", bodies.len());
    for secret in [
        UPLINK_SECRET,
        TECH_PW,
        GUARD_PW,
        VIEWER_PW,
        NEW_PW,
        token.as_str(),
    ] {
        for b in &bodies {
            assert!(!b.contains(secret), "a secret in a response: {b}");
        }
    }
    let state = rig.gw.dir().join("journal");
    for f in ["web-audit.jsonl", "web-users.json"] {
        let text = std::fs::read_to_string(state.join(f)).unwrap();
        for secret in [UPLINK_SECRET, TECH_PW, GUARD_PW, VIEWER_PW, NEW_PW] {
            assert!(!text.contains(secret), "a secret in {f}");
        }
    }
    assert!(!rig.gw.log().contains(UPLINK_SECRET));
}

/// An alarm the gateway raises itself (here a camera's video loss) is on
/// the guards' console like a point alarm, streamed live, and acknowledged
/// there: recorded as `alarm.acknowledged` for the platform. It cannot be
/// shelved.
#[test]
fn a_video_loss_is_on_the_console_and_acknowledged_there() {
    // A camera no one answers for: video loss after 1 s.
    let camera = r#"
[clips]
path = "@DIR@/clips"
min_free_bytes = 0

[[cameras]]
id = "cam-gate"
name = "Gate camera"
zone = "villa-3"
url = "rtsp://127.0.0.1:9/stream"
video_loss_s = 1
"#;
    let Some(rig) = Rig::start_with("web-trouble", &[("li", "guard", GUARD_PW)], camera) else {
        return;
    };
    let seen: Seen = Default::default();
    let mut guard = Client::new(rig.web, &seen);
    assert_eq!(guard.login("li", GUARD_PW).status, 200);
    let stream = guard.alarm_stream();
    let list = loop {
        let (_, list) = stream
            .recv_timeout(Duration::from_secs(15))
            .expect("the video loss on the console");
        if list.as_array().is_some_and(|a| !a.is_empty()) {
            break list;
        }
    };
    assert_eq!(list[0]["key"], "cam-gate/video", "{list}");
    assert_eq!(list[0]["state"], "active_unacked");
    assert_eq!(list[0]["category"], "video");
    let dash = guard.get("/api/v1/dashboard").json();
    assert_eq!(dash["alarms"]["active"], 1, "{dash}");

    let shelve = guard.post(
        "/api/v1/alarms/shelve",
        json!({"key": "cam-gate/video", "duration_s": 600}),
    );
    assert_eq!(shelve.status, 409, "{}", shelve.body);
    assert_eq!(
        shelve.json()["reason"],
        "trouble_not_shelvable",
        "{}",
        shelve.body
    );
    let ack = guard.post(
        "/api/v1/alarms/ack",
        json!({"key": "cam-gate/video", "comment": "摄像头维修中"}),
    );
    assert_eq!(ack.status, 200, "{}", ack.body);
    let acked = rig.sub.wait_json(
        "/events",
        Duration::from_secs(10),
        "alarm.acknowledged",
        |e| e["kind"] == "alarm.acknowledged",
    );
    assert_eq!(acked["alarm"]["key"], "cam-gate/video");
    assert_eq!(acked["alarm"]["state"], "active_acked");
    assert_eq!(acked["alarm"]["operator"], "li");
    let after = loop {
        let (_, list) = stream
            .recv_timeout(Duration::from_secs(5))
            .expect("the list after the acknowledgement");
        if list[0]["state"] != "active_unacked" {
            break list;
        }
    };
    assert_eq!(after[0]["state"], "active_acked", "{after}");
    let twice = guard.post("/api/v1/alarms/ack", json!({"key": "cam-gate/video"}));
    assert_eq!(twice.status, 409, "{}", twice.body);
    assert_eq!(twice.json()["reason"], "not_unacked", "{}", twice.body);
}
