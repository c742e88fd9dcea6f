//! The reload API in process (no peers: the uplink retries against a closed
//! port): an unchanged file restarts nothing, start-only sections refuse the
//! reload, a configuration that cannot start rolls back to the previous
//! one, and push channels add and remove journal sinks.

mod common;

use common::free_port;
use estate_gateway::app::{Gateway, ReloadError};
use estate_gateway::config::{load, LoadedConfig};
use std::path::Path;

fn config(dir: &Path, gateway: &str, push: bool) -> String {
    let mut s = format!(
        r#"
[site]
id = "api"
gateway = "{gateway}"

[journal]
path = "{dir}/journal"
fsync = false

[uplink]
host = "127.0.0.1"
port = 9
reconnect_min_s = 1
reconnect_max_s = 5

[web]
enabled = false

[telemetry]
enabled = false
"#,
        dir = dir.display()
    );
    if push {
        s += &format!(
            r#"
[[push.channels]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/hook"
secret = {{ file = "{dir}/hook.secret" }}

[[push.tiers]]
name = "guards"
channels = ["hook"]

[[push.rules]]
name = "all"
tiers = ["guards"]
"#,
            dir = dir.display()
        );
    }
    s
}

fn loaded(dir: &Path, name: &str, text: &str) -> LoadedConfig {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn config_changes(gw: &Gateway) -> Vec<serde_json::Value> {
    gw.journal
        .read_events(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| serde_json::from_slice::<serde_json::Value>(&e.payload).unwrap())
        .filter(|e| e["kind"] == "config.changed")
        .map(|e| e["detail"].clone())
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn reload_api_refuses_restart_only_changes_and_rolls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, "s3cret").unwrap();
    let a = loaded(dir, "a.toml", &config(dir, "gw", false));
    let gw = Gateway::start(a.clone()).await.expect("start");
    assert_eq!(gw.journal.sinks(), vec!["uplink".to_string()]);

    // The same file: nothing restarted, nothing recorded.
    let r = gw.reload(a.clone()).await.unwrap();
    assert!(!r.changed && r.restarted.is_empty(), "{r:?}");

    // A new gateway id needs a restart: refused, nothing changes.
    let c = loaded(dir, "c.toml", &config(dir, "gw-other", false));
    match gw.reload(c).await {
        Err(ReloadError::NeedsRestart(v)) => assert_eq!(v, vec!["site"]),
        other => panic!("expected NeedsRestart, got {other:?}"),
    }

    // A push channel whose secret vanished after validation: the new
    // configuration cannot start, the previous one runs again.
    let b = loaded(dir, "b.toml", &config(dir, "gw", true));
    std::fs::remove_file(&secret).unwrap();
    match gw.reload(b.clone()).await {
        Err(ReloadError::RolledBack(e)) => assert!(e.contains("hook"), "{e}"),
        other => panic!("expected RolledBack, got {other:?}"),
    }
    assert_eq!(gw.journal.sinks(), vec!["uplink".to_string()]);
    assert_eq!(gw.current().config.config.push.channels.len(), 0);

    // With the secret back, the channel starts and becomes a journal sink.
    std::fs::write(&secret, "s3cret").unwrap();
    let r = gw.reload(b).await.expect("reload with the push channel");
    assert!(r.changed);
    assert_eq!(r.restarted, vec!["field", "pushes"]);
    assert_eq!(
        gw.journal.sinks(),
        vec!["push.escalation", "push.hook", "uplink"]
    );
    assert_eq!(gw.current().config.config.push.channels.len(), 1);

    // A linkage rule that notifies a tier: the pushes carry it, so they
    // restart with it (the field too: linkage is the alarm side's).
    let notify = format!(
        "{}\n[[linkage]]\nid = \"fire-wardens\"\ncategory = \"fire\"\n\
         [[linkage.actions]]\ntype = \"notify\"\nto = \"guards\"\n",
        config(dir, "gw", true)
    );
    let r = gw
        .reload(loaded(dir, "n.toml", &notify))
        .await
        .expect("reload with the notify rule");
    assert_eq!(r.restarted, vec!["field", "pushes"]);

    // And removed again.
    let r = gw.reload(a).await.unwrap();
    assert_eq!(r.restarted, vec!["field", "pushes"]);
    assert_eq!(gw.journal.sinks(), vec!["uplink".to_string()]);

    // Every outcome but "unchanged" is an event for the platform.
    let changes = config_changes(&gw);
    let oks: Vec<bool> = changes.iter().map(|d| d["ok"].as_bool().unwrap()).collect();
    assert_eq!(oks, vec![false, false, true, true, true], "{changes:?}");
    assert!(changes[0]["error"].as_str().unwrap().contains("[site]"));

    gw.stop();
    gw.wait().await;
}

/// `config(…)` plus an embedded site broker on `listen` with one MQTT
/// device whose silence timeout is `silence_s`.
fn with_site_broker(base: String, listen: u16, silence_s: u32) -> String {
    base + &format!(
        r#"
[site_broker]
reconnect_min_s = 0.2
reconnect_max_s = 1
[site_broker.embedded]
listen = "127.0.0.1:{listen}"

[[devices]]
id = "button"
category = "intrusion"
[devices.mqtt]
silence_timeout_s = {silence_s}

[[devices.points]]
id = "pressed"
[devices.points.mqtt]
filter = "button/pressed"
"#
    )
}

/// The alarm task answers (it runs).
async fn alarm_task_answers(gw: &Gateway) {
    use estate_gateway::alarm::task::AlarmRequest;
    let (reply, rx) = tokio::sync::oneshot::channel();
    gw.alarm_requests()
        .send(AlarmRequest::Acknowledge {
            key: "nope/none".into(),
            operator: "test".into(),
            comment: None,
            reply,
        })
        .await
        .expect("alarm task gone");
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), rx)
        .await
        .expect("alarm task does not answer")
        .expect("alarm task dropped the request");
    assert!(r.is_err(), "acknowledged an unknown alarm");
}

#[tokio::test(flavor = "current_thread")]
async fn mqtt_driver_restarts_over_the_running_embedded_broker() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let base = || config(dir, "gw", false);
    let a = loaded(dir, "a.toml", &with_site_broker(base(), port, 60));
    let gw = Gateway::start(a.clone()).await.expect("start");

    // A changed MQTT device restarts the driver; the embedded broker, which
    // cannot be stopped, is reused.
    let b = loaded(dir, "b.toml", &with_site_broker(base(), port, 90));
    let r = gw
        .reload(b.clone())
        .await
        .expect("reload with a changed device");
    assert_eq!(r.drivers.restarted, vec!["mqtt site broker"], "{r:?}");
    assert_eq!(r.by_device.restarted, vec!["button"], "{r:?}");
    alarm_task_answers(&gw).await;

    // The embedded broker cannot move while it runs: refused.
    let c = loaded(dir, "c.toml", &with_site_broker(base(), free_port(), 90));
    match gw.reload(c).await {
        Err(ReloadError::NeedsRestart(v)) => assert_eq!(v, vec!["site_broker.embedded"]),
        other => panic!("expected NeedsRestart, got {other:?}"),
    }

    assert_eq!(gw.current().config.path, b.path);
    assert!(gw.writers().iter().any(|(d, _)| &**d == "button"));
    alarm_task_answers(&gw).await;
    // Back where it was: nothing to do.
    let r = gw.reload(b).await.unwrap();
    assert!(!r.changed, "{r:?}");

    gw.stop();
    gw.wait().await;
}

/// `config(…)` plus an external site broker (nobody listens: the driver
/// retries) logging in with the password in `pw`, and one MQTT device.
fn with_external_broker(base: String, pw: &Path, silence_s: u32) -> String {
    base + &format!(
        r#"
[site_broker]
host = "127.0.0.1"
port = 9
username = "gw"
password = {{ file = "{}" }}
reconnect_min_s = 1
reconnect_max_s = 5

[[devices]]
id = "button"
category = "intrusion"
[devices.mqtt]
silence_timeout_s = {silence_s}

[[devices.points]]
id = "pressed"
[devices.points.mqtt]
filter = "button/pressed"
"#,
        pw.display()
    )
}

#[tokio::test(flavor = "current_thread")]
async fn a_driver_that_cannot_start_rolls_the_field_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (pw_a, pw_b) = (dir.join("a.pw"), dir.join("b.pw"));
    std::fs::write(&pw_a, "a").unwrap();
    std::fs::write(&pw_b, "b").unwrap();
    let base = || config(dir, "gw", false);
    let a = loaded(dir, "a.toml", &with_external_broker(base(), &pw_a, 60));
    let gw = Gateway::start(a.clone()).await.expect("start");

    // The new driver's password file vanished after validation: checked
    // before anything stops, nothing changes.
    let b = loaded(dir, "b.toml", &with_external_broker(base(), &pw_b, 90));
    std::fs::remove_file(&pw_b).unwrap();
    match gw.reload(b.clone()).await {
        Err(ReloadError::RolledBack(e)) => assert!(e.contains("site_broker.password"), "{e}"),
        other => panic!("expected RolledBack, got {other:?}"),
    }
    // Nothing was stopped: the MQTT driver kept running.
    assert!(not_running(&gw).is_empty());
    assert_eq!(gw.current().config.path, a.path);
    // Should the driver fail at its start all the same (the file vanishing
    // after the check), the previous driver and rules run again.
    gw.reloader().skip_start_checks_for_tests();
    match gw.reload(b).await {
        Err(ReloadError::RolledBack(e)) => assert!(e.contains("site_broker.password"), "{e}"),
        other => panic!("expected RolledBack, got {other:?}"),
    }
    assert_eq!(gw.current().config.path, a.path);
    assert!(gw.writers().iter().any(|(d, _)| &**d == "button"));
    alarm_task_answers(&gw).await;
    // The running field is the previous file's: reloading it changes nothing.
    let r = gw.reload(a).await.unwrap();
    assert!(!r.changed, "{r:?}");
    let changes = config_changes(&gw);
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(changes.iter().all(|c| c["ok"] == false), "{changes:?}");

    gw.stop();
    gw.wait().await;
}

fn not_running(gw: &Gateway) -> Vec<String> {
    gw.status
        .liveness
        .names()
        .into_iter()
        .filter(|n| n.ends_with("(not running)"))
        .collect()
}

fn devices_offline(gw: &Gateway) -> u64 {
    gw.status
        .devices_offline
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "current_thread")]
async fn a_unit_left_stopped_by_a_failed_reload_is_reported_and_started_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (pw_a, pw_b) = (dir.join("a.pw"), dir.join("b.pw"));
    std::fs::write(&pw_a, "a").unwrap();
    std::fs::write(&pw_b, "b").unwrap();
    let base = || config(dir, "gw", false);
    let a = loaded(dir, "a.toml", &with_external_broker(base(), &pw_a, 60));
    let b = loaded(dir, "b.toml", &with_external_broker(base(), &pw_b, 90));
    let gw = Gateway::start(a.clone()).await.expect("start");
    // Both files vanish between the check and the start.
    gw.reloader().skip_start_checks_for_tests();
    let fail = || async {
        std::fs::remove_file(&pw_a).unwrap();
        std::fs::remove_file(&pw_b).unwrap();
        match gw.reload(b.clone()).await {
            Err(ReloadError::Failed { .. }) => {}
            other => panic!("expected Failed, got {other:?}"),
        }
        // The previous rules run without the MQTT driver, and say so.
        assert_eq!(gw.current().config.path, a.path);
        assert!(!gw.writers().iter().any(|(d, _)| &**d == "button"));
        alarm_task_answers(&gw).await;
        assert_eq!(not_running(&gw), vec!["mqtt site broker (not running)"]);
        // Its device is offline (until its driver hears from it again).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while devices_offline(&gw) != 1 {
            assert!(std::time::Instant::now() < deadline, "device not offline");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        std::fs::write(&pw_a, "a").unwrap();
        std::fs::write(&pw_b, "b").unwrap();
    };

    // Reloading the running file starts the missing unit.
    fail().await;
    let r = gw.reload(a.clone()).await.expect("reload the same file");
    assert!(r.changed, "{r:?}");
    assert_eq!(r.drivers.started, vec!["mqtt site broker"], "{r:?}");
    assert!(gw.writers().iter().any(|(d, _)| &**d == "button"));
    assert!(not_running(&gw).is_empty());
    let r = gw.reload(a.clone()).await.unwrap();
    assert!(!r.changed, "{r:?}");

    // Without a reload, it is started again in the background.
    fail().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !gw.writers().iter().any(|(d, _)| &**d == "button") {
        assert!(
            std::time::Instant::now() < deadline,
            "MQTT driver not started again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(not_running(&gw).is_empty());
    alarm_task_answers(&gw).await;

    // Each time, the device went offline, and the gateway's own alarm was
    // raised and cleared.
    let offline = gw
        .journal
        .read_events(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| serde_json::from_slice::<serde_json::Value>(&e.payload).unwrap())
        .filter(|e| e["kind"] == "device.offline")
        .count();
    assert!(offline >= 1, "no device.offline event");
    let drivers: Vec<(String, String)> = gw
        .journal
        .read_events(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| serde_json::from_slice::<serde_json::Value>(&e.payload).unwrap())
        .filter(|e| e["alarm"]["key"] == "gateway/drivers")
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["alarm"]["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let kinds: Vec<&str> = drivers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "alarm.raised",
            "alarm.cleared",
            "alarm.raised",
            "alarm.cleared"
        ],
        "{drivers:?}"
    );
    assert!(drivers[0].1.contains("mqtt site broker"), "{drivers:?}");

    gw.stop();
    gw.wait().await;
}

#[tokio::test(flavor = "current_thread")]
async fn removed_devices_and_cameras_leave_the_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = || config(dir, "gw", false);
    let extra = format!(
        r#"
[clips]
path = "{dir}/clips"
min_free_bytes = 0

[[cameras]]
id = "cam-gone"
url = "rtsp://127.0.0.1:9/stream"
transport = "tcp"

[[devices]]
id = "plc-gone"
category = "intrusion"
poll_interval_s = 1
[devices.modbus]
host = "127.0.0.1"
port = 9
unit = 1

[[devices.points]]
id = "door"
register = "coil"
address = 0
"#,
        dir = dir.display()
    );
    let a = loaded(dir, "a.toml", &(base() + &extra));
    let gw = Gateway::start(a).await.expect("start");
    let cameras = || -> Vec<String> {
        gw.status
            .cameras
            .snapshot()
            .into_iter()
            .map(|c| c.id)
            .collect()
    };
    let polled = || -> Vec<String> {
        gw.status
            .polls
            .snapshot()
            .into_iter()
            .map(|(d, _)| d.to_string())
            .collect()
    };
    assert_eq!(cameras(), vec!["cam-gone"]);
    assert_eq!(polled(), vec!["plc-gone"]);

    let b = loaded(dir, "b.toml", &base());
    let r = gw.reload(b).await.expect("reload without them");
    assert_eq!(r.by_device.stopped, vec!["plc-gone"], "{r:?}");
    assert!(cameras().is_empty(), "{:?}", cameras());
    assert!(polled().is_empty(), "{:?}", polled());

    gw.stop();
    gw.wait().await;
}
