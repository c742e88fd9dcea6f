//! The reload API in process (no peers: the uplink retries against a closed
//! port): an unchanged file restarts nothing, start-only sections refuse the
//! reload, a configuration that cannot start rolls back to the previous
//! one, and push channels add and remove journal sinks.

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

    // And removed again.
    let r = gw.reload(a).await.unwrap();
    assert_eq!(r.restarted, vec!["field", "pushes"]);
    assert_eq!(gw.journal.sinks(), vec!["uplink".to_string()]);

    // Every outcome but "unchanged" is an event for the platform.
    let changes = config_changes(&gw);
    let oks: Vec<bool> = changes.iter().map(|d| d["ok"].as_bool().unwrap()).collect();
    assert_eq!(oks, vec![false, false, true, true], "{changes:?}");
    assert!(changes[0]["error"].as_str().unwrap().contains("[site]"));

    gw.stop();
    gw.wait().await;
}
