//! Configuration editing through the web page's API, against the real
//! gateway binary, a pymodbus door contact and a mosquitto broker: roles
//! and CSRF, located problems, apply changing the running gateway, an
//! invalid file or one that cannot start leaving file and running
//! configuration unchanged, stale versions refused, history and diffs,
//! and no secret in any response or in the audit log.

mod common;
#[path = "web/http.rs"]
mod http;
#[path = "common/modbus_sim.rs"]
mod modbus_sim;
#[path = "common/mosquitto.rs"]
mod mosquitto;
#[path = "web/peers.rs"]
mod peers;

use http::{Client, Resp, Seen};
use peers::{Rig, ALARM_KEY, UPLINK_SECRET};
use serde_json::json;
use std::time::Duration;

const TECH_PW: &str = "tech-passw0rd-long";
const GUARD_PW: &str = "guard-passw0rd-long";
/// A camera URL's query token: a URL-borne secret.
const CAM_TOKEN: &str = "CamTok3n-91d0";
/// A push endpoint's query token.
const PUSH_TOKEN: &str = "PushTok3n-52aa";
/// A password written inline in the file by hand.
const INLINE_SECRET: &str = "Inl1ne-pw-7c3e";

const CONFIG_ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/config/file"),
    ("POST", "/api/v1/config/validate"),
    ("POST", "/api/v1/config/apply"),
    ("GET", "/api/v1/config/history"),
    ("GET", "/api/v1/config/history/1/diff"),
];

fn file_state(c: &mut Client) -> serde_json::Value {
    let r = c.get("/api/v1/config/file");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn problem_keys(r: &Resp) -> Vec<String> {
    r.json()["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems: {}", r.body))
        .iter()
        .map(|p| p["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn web_config_editing_end_to_end() {
    let Some(rig) = Rig::start(
        "web-config",
        &[("wang", "technician", TECH_PW), ("li", "guard", GUARD_PW)],
    ) else {
        return;
    };
    let seen: Seen = Default::default();
    let cfg_path = rig.gw.config_path().to_path_buf();
    let disk = || std::fs::read_to_string(&cfg_path).unwrap();

    // No session: 401 everywhere.
    let mut anon = Client::new(rig.web, &seen);
    for (m, p) in CONFIG_ROUTES {
        let body = (*m == "POST").then(|| json!({}));
        let r = anon.send(m, p, body.as_ref(), false);
        assert_eq!(r.status, 401, "{m} {p} without a session: {}", r.body);
    }

    // Guards may not read or change the configuration.
    let mut guard = Client::new(rig.web, &seen);
    assert_eq!(guard.login("li", GUARD_PW).status, 200);
    for (m, p) in CONFIG_ROUTES {
        let body = (*m == "POST").then(|| json!({"text": "x", "version": "x"}));
        let r = guard.send(m, p, body.as_ref(), true);
        assert_eq!(r.status, 403, "guard {m} {p}: {}", r.body);
    }

    let mut tech = Client::new(rig.web, &seen);
    assert_eq!(tech.login("wang", TECH_PW).status, 200);

    // The file as text and as a model, matching the running gateway.
    let f0 = file_state(&mut tech);
    assert_eq!(f0["running_matches_file"], true, "{f0}");
    assert_eq!(f0["model"]["devices"][0]["points"][0]["id"], "door-7");
    assert_eq!(f0["model"]["alarms"][0]["priority"], 2);
    assert!(f0["text"].as_str().unwrap().contains("[[devices.points]]"));
    let v0 = f0["version"].as_str().unwrap().to_string();
    let text0 = disk();

    // State changes need the CSRF token.
    let r = tech.send(
        "POST",
        "/api/v1/config/apply",
        Some(&json!({"version": v0, "edits": []})),
        false,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = tech.send(
        "POST",
        "/api/v1/config/validate",
        Some(&json!({"text": text0})),
        false,
    );
    assert_eq!(r.status, 403, "{}", r.body);

    // Validation: every problem, with key path and line.
    let r = tech.post(
        "/api/v1/config/validate",
        json!({"edits": [
            {"op": "set", "path": "devices[0].points[0].id", "value": "Door 7"},
            {"op": "set", "path": "alarms[0].point", "value": "door-panel/door-9"},
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ok"], false);
    // Value problems: the file was checked fully.
    assert_eq!(r.json()["partly_checked"], false, "{}", r.body);
    let keys = problem_keys(&r);
    assert!(
        keys.contains(&"alarms[0].point".to_string())
            && keys.contains(&"devices[0].points[0].id".to_string()),
        "{}",
        r.body
    );
    for p in r.json()["problems"].as_array().unwrap() {
        assert!(p["line"].as_u64().is_some_and(|l| l > 1), "{p}");
    }
    // A type error in raw text: located at the key's line.
    let bad_text = text0.replace("address = 7", "address = 70000");
    let line = bad_text.lines().position(|l| l.contains("70000")).unwrap() + 1;
    let r = tech.post("/api/v1/config/validate", json!({"text": bad_text}));
    let p = &r.json()["problems"][0];
    assert_eq!(p["key"], "devices[0].points[0].address", "{}", r.body);
    assert_eq!(p["line"], line, "{}", r.body);
    // A type error: the values are not checked yet, and the page says so.
    assert_eq!(r.json()["partly_checked"], true, "{}", r.body);
    // An edit of a key that does not exist names its path.
    let r = tech.post(
        "/api/v1/config/validate",
        json!({"edits": [{"op": "set", "path": "devices[5].name", "value": "x"}]}),
    );
    assert_eq!(problem_keys(&r), ["devices[5].name"], "{}", r.body);
    let r = tech.post("/api/v1/config/validate", json!({"text": text0}));
    assert_eq!(r.json()["ok"], true, "{}", r.body);

    // Applying an invalid change: refused, file and running config unchanged.
    let r = tech.post(
        "/api/v1/config/apply",
        json!({"version": v0, "edits": [{"op": "set", "path": "devices[0].points[0].address", "value": 70000}]}),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(problem_keys(&r), ["devices[0].points[0].address"]);
    assert_eq!(disk(), text0);
    assert_eq!(file_state(&mut tech)["version"], v0);

    // A valid change: rule priority 2 → 1, a new point, and a disabled
    // camera whose URL carries a token.
    let r = tech.post(
        "/api/v1/config/apply",
        json!({"version": v0, "comment": "door 7 urgent", "edits": [
            {"op": "set", "path": "alarms[0].priority", "value": 1},
            {"op": "add", "path": "devices[0].points", "value": {"id": "door-8", "register": "coil", "address": 8}},
            {"op": "add", "path": "cameras", "value": {"id": "cam-gate", "enabled": false,
                "url": format!("rtsp://127.0.0.1:9/stream?token={CAM_TOKEN}")}},
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let applied = r.json();
    assert_eq!(applied["applied"], true);
    let v1 = applied["version"].as_str().unwrap().to_string();
    assert_ne!(v1, v0);
    let text1 = disk();
    assert!(
        text1.contains(CAM_TOKEN),
        "the token is written to the file"
    );
    // Running: the new point is polled, the door alarm has priority 1.
    common::wait_for(Duration::from_secs(20), "door-8 polled", || {
        let d = tech.get("/api/v1/devices").json();
        let pts = d["devices"][0]["points"].as_array()?.clone();
        pts.iter()
            .any(|p| p["point"] == "door-8" && p["quality"] == "good")
            .then_some(())
    });
    rig.set_door(true);
    let alarm = common::wait_for(Duration::from_secs(10), "door alarm", || {
        let a = tech.get("/api/v1/alarms").json();
        a["alarms"]
            .as_array()?
            .iter()
            .find(|x| x["key"] == ALARM_KEY)
            .cloned()
    });
    assert_eq!(alarm["priority"], 1, "{alarm}");
    rig.set_door(false);
    let f1 = file_state(&mut tech);
    assert_eq!(f1["version"], v1.as_str());
    assert_eq!(f1["running_matches_file"], true);
    assert!(!f1["text"].as_str().unwrap().contains(CAM_TOKEN));
    assert!(f1["text"].as_str().unwrap().contains("token=***"));

    // A stale version is refused.
    let r = tech.post(
        "/api/v1/config/apply",
        json!({"version": v0, "edits": [{"op": "set", "path": "alarms[0].priority", "value": 3}]}),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["stale"], true);
    assert_eq!(r.json()["version"], v1.as_str());
    assert_eq!(disk(), text1);

    // The raw editor: the text as shown (token redacted) sent back with a
    // change keeps the token on disk.
    let shown = f1["text"].as_str().unwrap().to_string();
    let edited = shown.replace(
        "message = \"Door 7 forced open\"",
        "message = \"Door 7 opened\"",
    );
    assert_ne!(edited, shown);
    let r = tech.post(
        "/api/v1/config/apply",
        json!({"version": v1, "text": edited}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v2 = r.json()["version"].as_str().unwrap().to_string();
    let text2 = disk();
    assert!(text2.contains(CAM_TOKEN) && text2.contains("Door 7 opened"));

    // Two applies on the same version at once: one wins, one is stale.
    let outcomes: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|i| {
                let (cookie, csrf) = (tech.cookie.clone(), tech.csrf.clone());
                let seen = seen.clone();
                let web = rig.web;
                let v2 = v2.clone();
                s.spawn(move || {
                    let mut c = Client::new(web, &seen);
                    c.cookie = cookie;
                    c.csrf = csrf;
                    c.post(
                        "/api/v1/config/apply",
                        json!({"version": v2, "edits": [{"op": "set", "path": "alarms[0].message", "value": format!("Door 7 open ({i})")}]}),
                    )
                    .status
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = outcomes.clone();
    sorted.sort();
    assert_eq!(sorted, [200, 409], "{outcomes:?}");
    let f3 = file_state(&mut tech);
    let v3 = f3["version"].as_str().unwrap().to_string();
    let text3 = disk();

    // A push channel whose secret file is missing: found by validation
    // (its endpoint's token is not echoed back).
    let missing = rig.gw.dir().join("no-such.secret");
    let r = tech.post(
        "/api/v1/config/validate",
        json!({"version": v3, "edits": [
            {"op": "add", "path": "push.channels", "value": {"name": "hook", "kind": "webhook",
                "url": format!("http://127.0.0.1:9/hook?token={PUSH_TOKEN}"),
                "secret": {"file": missing}}},
            {"op": "add", "path": "push.tiers", "value": {"name": "guards", "channels": ["hook"]}},
            {"op": "add", "path": "push.rules", "value": {"name": "all", "tiers": ["guards"]}},
        ]}),
    );
    assert_eq!(problem_keys(&r), ["push.channels[0].secret"], "{}", r.body);
    assert!(r.json()["text"]
        .as_str()
        .unwrap()
        .contains("hook?token=***"));

    // A configuration that cannot start (the site broker's port is taken)
    // rolls back: the previous file is back on disk and runs.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let r = tech.post(
        "/api/v1/config/apply",
        json!({"version": v3, "edits": [
            {"op": "set", "path": "site_broker", "value": {"embedded": {"listen": format!("127.0.0.1:{port}")}}},
        ]}),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let body = r.json();
    assert_eq!(body["outcome"], "rolled_back", "{body}");
    assert_eq!(body["rolled_back"], true);
    assert_eq!(body["file_restored"], true);
    assert_eq!(body["running_matches_file"], true, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("cannot listen"),
        "{body}"
    );
    assert_eq!(disk(), text3, "the previous file is back");
    let f4 = file_state(&mut tech);
    assert_eq!(f4["version"], v3.as_str());
    assert_eq!(f4["running_matches_file"], true, "{f4}");
    // Still running the previous configuration: its points are polled.
    common::wait_for(
        Duration::from_secs(20),
        "door-8 polled after rollback",
        || {
            let d = tech.get("/api/v1/devices").json();
            let pts = d["devices"][0]["points"].as_array()?.clone();
            pts.iter()
                .any(|p| p["point"] == "door-8" && p["quality"] == "good")
                .then_some(())
        },
    );

    // A change to a section read only at start is refused and undone.
    let r = tech.post(
        "/api/v1/config/apply",
        json!({"version": v3, "edits": [{"op": "set", "path": "web.session_idle_s", "value": 600}]}),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let body = r.json();
    assert_eq!(body["outcome"], "needs_restart", "{body}");
    assert_eq!(body["file_restored"], true, "{body}");
    assert_eq!(body["running_matches_file"], true, "{body}");
    assert_eq!(disk(), text3);

    // The camera's redacted URL pasted into a device name (or any key
    // that is not that camera's URL) is refused, never filled in with
    // the real credentials.
    let f = file_state(&mut tech);
    let shown_url = "rtsp://127.0.0.1:9/stream?token=***".to_string();
    assert!(f["text"].as_str().unwrap().contains(&shown_url), "{f}");
    for path in ["devices[0].name", "alarms[0].message"] {
        let r = tech.post(
            "/api/v1/config/apply",
            json!({"version": v3, "edits": [{"op": "set", "path": path, "value": shown_url}]}),
        );
        assert_eq!(r.status, 422, "{path}: {}", r.body);
        assert_eq!(problem_keys(&r), [path], "{}", r.body);
        let r = tech.post(
            "/api/v1/config/validate",
            json!({"edits": [{"op": "set", "path": path, "value": shown_url}]}),
        );
        assert_eq!(r.json()["ok"], false, "{}", r.body);
    }
    assert_eq!(disk(), text3);
    for route in [
        "/api/v1/devices",
        "/api/v1/alarms",
        "/api/v1/dashboard",
        "/api/v1/config",
        "/api/v1/config/file",
        "/api/v1/system/logs",
    ] {
        let r = tech.get(route);
        assert!(!r.body.contains(CAM_TOKEN), "{route}: {}", r.body);
    }

    // History: the file before the first change, then each applied one.
    let h = tech.get("/api/v1/config/history");
    assert_eq!(h.status, 200, "{}", h.body);
    let versions = h.json()["versions"].as_array().unwrap().clone();
    assert_eq!(versions.len(), 4, "{}", h.body);
    assert_eq!(versions[3]["user"], serde_json::Value::Null);
    assert_eq!(versions[3]["version"], v0.as_str());
    assert_eq!(versions[2]["user"], "wang");
    assert_eq!(versions[2]["version"], v1.as_str());
    let summary = versions[2]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("door 7 urgent — alarms[0].priority = 1"),
        "{summary}"
    );
    assert_eq!(versions[0]["version"], v3.as_str());
    let id1 = versions[2]["id"].as_u64().unwrap();
    let d = tech.get(&format!("/api/v1/config/history/{id1}/diff"));
    assert_eq!(d.status, 200, "{}", d.body);
    let diff = d.json()["diff"].as_str().unwrap().to_string();
    assert!(diff.contains("\n-priority = 2\n"), "{diff}");
    assert!(diff.contains("\n+priority = 1\n"), "{diff}");
    assert!(diff.contains("+id = \"door-8\""), "{diff}");
    assert!(diff.contains("token=***"), "{diff}");
    assert_eq!(tech.get("/api/v1/config/history/999/diff").status, 404);

    // The audit log says who applied what, and what was refused.
    let audit = tech.get("/api/v1/audit").json();
    let entries: Vec<&serde_json::Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "config.apply")
        .collect();
    assert!(
        entries
            .iter()
            .any(|e| e["ok"] == true && e["user"] == "wang"),
        "{audit}"
    );
    assert!(
        entries.iter().any(|e| e["ok"] == false
            && e["detail"]
                .as_str()
                .unwrap_or("")
                .starts_with("rolled_back")),
        "{audit}"
    );

    // The reload comes before the write: when the file cannot be written
    // after the new configuration started, the previous one is reloaded
    // and the file is left as it was — running equals the file.
    let f = file_state(&mut tech);
    let v5 = f["version"].as_str().unwrap().to_string();
    let text5 = disk();
    let pid = rig.gw.pid().expect("gateway pid");
    let name = cfg_path.file_name().unwrap().to_string_lossy().into_owned();
    let blocker = cfg_path
        .parent()
        .unwrap()
        .join(format!(".{name}.tmp-{pid}"));
    std::fs::create_dir(&blocker).unwrap();
    let r = tech.post(
        "/api/v1/config/apply",
        json!({"version": v5, "edits": [{"op": "set", "path": "alarms[0].priority", "value": 3}]}),
    );
    std::fs::remove_dir(&blocker).unwrap();
    assert_eq!(r.status, 500, "{}", r.body);
    let body = r.json();
    assert_eq!(body["outcome"], "not_written", "{body}");
    assert_eq!(body["running_matches_file"], true, "{body}");
    assert_eq!(disk(), text5);
    assert_eq!(file_state(&mut tech)["running_matches_file"], true);

    // A client that goes away mid-apply does not cut the apply off: the
    // change runs, is written, and is in the history with its author.
    tech.post_and_hang_up(
        "/api/v1/config/apply",
        &json!({"version": v5, "comment": "hung up", "edits": [
            {"op": "set", "path": "alarms[0].message", "value": "Door 7 (hung up)"}]}),
        // Validated and reloading: the handler runs.
        || rig.gw.wait_log("Door 7 (hung up)", Duration::from_secs(20)),
    );
    common::wait_for(Duration::from_secs(20), "apply after hang-up", || {
        disk().contains("Door 7 (hung up)").then_some(())
    });
    let h = common::wait_for(Duration::from_secs(10), "history after hang-up", || {
        let h = tech.get("/api/v1/config/history").json();
        let first = h["versions"][0].clone();
        first["summary"]
            .as_str()?
            .starts_with("hung up")
            .then_some(first)
    });
    assert_eq!(h["user"], "wang", "{h}");
    assert_eq!(file_state(&mut tech)["running_matches_file"], true);

    // A secret written inline by hand (a mistake the loader refuses) is
    // never shown: not in the text, the model or the problems.
    let inline = disk().replace(
        &format!(
            "password = {{ file = \"{}/uplink.pw\" }}",
            rig.gw.dir().display()
        ),
        &format!("password = \"{INLINE_SECRET}\""),
    );
    assert!(inline.contains(INLINE_SECRET));
    std::fs::write(&cfg_path, &inline).unwrap();
    let f = file_state(&mut tech);
    assert_eq!(f["running_matches_file"], false);
    assert_eq!(f["model"]["uplink"]["password"], "***");
    let keys: Vec<&str> = f["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["uplink.password"], "{f}");
    let shown = f["text"].as_str().unwrap().to_string();
    assert!(shown.contains("password = \"***\""));
    let r = tech.post("/api/v1/config/validate", json!({"text": shown}));
    assert_eq!(problem_keys(&r), ["uplink.password"]);
    let r = tech.post(
        "/api/v1/config/validate",
        json!({"edits": [{"op": "set", "path": "uplink.password", "value": INLINE_SECRET}]}),
    );
    assert_eq!(r.json()["ok"], false);

    // No secret in any response (the recent logs included), in the audit
    // log file or the history's summaries.
    let logs = tech.get("/api/v1/system/logs");
    assert_eq!(logs.status, 200, "{}", logs.body);
    let audit_file =
        std::fs::read_to_string(rig.gw.dir().join("journal").join("web-audit.jsonl")).unwrap();
    let bodies = seen.lock().unwrap().clone();
    assert!(bodies.len() > 40);
    for secret in [
        UPLINK_SECRET,
        CAM_TOKEN,
        PUSH_TOKEN,
        INLINE_SECRET,
        TECH_PW,
        GUARD_PW,
    ] {
        for b in &bodies {
            assert!(!b.contains(secret), "secret {secret:?} in a response: {b}");
        }
        assert!(
            !audit_file.contains(secret),
            "secret {secret:?} in the audit log"
        );
    }
}
