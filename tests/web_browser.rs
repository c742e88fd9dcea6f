//! The web page in a real browser: Debian's headless chromium driven by
//! Playwright (`tests/browser/console.mjs`) against the real gateway with a
//! pymodbus door contact and a mosquitto broker. A guard signs in, sees the
//! door alarm in the console within 1 s of the flip, hears the cue,
//! acknowledges it (and `alarm.acknowledged` reaches the platform), and
//! switches to English; a technician opens users, audit and config.
//! Screenshots of every page go to `target/web-screenshots/`.

#[path = "web/browser.rs"]
mod browser;
mod common;
#[path = "web/http.rs"]
#[allow(unused)]
mod http;
#[path = "common/modbus_sim.rs"]
mod modbus_sim;
#[path = "common/mosquitto.rs"]
mod mosquitto;
#[path = "web/peers.rs"]
mod peers;

use browser::Browser;
use common::repo;
use peers::{Rig, ALARM_KEY};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const GUARD_PW: &str = "guard-passw0rd-long";
const TECH_PW: &str = "tech-passw0rd-long";

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Where screenshots go.
fn shots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    target.join("web-screenshots")
}

#[test]
fn browser_console_ack_and_language() {
    let Some(browser) = Browser::find() else {
        return;
    };
    let Some(rig) = Rig::start(
        "web-browser",
        &[("li", "guard", GUARD_PW), ("wang", "technician", TECH_PW)],
    ) else {
        return;
    };
    let shots = shots_dir();
    let url = format!("http://{}/", rig.web);
    let script = browser.run(
        "console.mjs",
        &[&url, "li", GUARD_PW, "wang", TECH_PW, ALARM_KEY],
        &shots,
    );
    let expect = |step: &str, timeout: Duration| script.expect(step, timeout);
    expect("READY", Duration::from_secs(60));
    let flipped_ms = unix_ms();
    rig.set_door(true);
    let visible = expect("VISIBLE", Duration::from_secs(15));
    let shown_ms: u128 = visible.parse().unwrap();
    let took = shown_ms.saturating_sub(flipped_ms);
    eprintln!("door flip → row visible in the browser: {took} ms");
    assert!(
        took < 1000,
        "the alarm took {took} ms to show in the console"
    );
    assert_eq!(
        expect("BEEP", Duration::from_secs(5)),
        "yes",
        "audible cue for priority 2"
    );
    // The guard types a comment; the alarm returns to normal and comes
    // back: the console shows both while the comment box has the focus.
    expect("TYPING", Duration::from_secs(15));
    rig.set_door(false);
    expect("UPDATED returned_unacked", Duration::from_secs(15));
    rig.set_door(true);
    expect("UPDATED active_unacked", Duration::from_secs(15));
    expect("ACKED", Duration::from_secs(15));
    let acked = rig.sub.wait_json(
        "/events",
        Duration::from_secs(10),
        "alarm.acknowledged",
        |e| e["kind"] == "alarm.acknowledged",
    );
    assert_eq!(acked["alarm"]["key"], ALARM_KEY);
    let cmd = rig.sub.wait_json(
        "/events",
        Duration::from_secs(10),
        "command.executed",
        |e| e["kind"] == "command.executed" && e["detail"]["action"] == "ack_alarm",
    );
    assert_eq!(cmd["detail"]["operator"], "li");
    let lang = expect("LANG", Duration::from_secs(15));
    assert_eq!(lang, "en Alarm console");
    expect("DONE", Duration::from_secs(60));
    script.finish();
    for f in [
        "01-login.png",
        "02-dashboard-zh.png",
        "03-console-alarm.png",
        "04-console-acked.png",
        "05-console-phone.png",
        "06-devices.png",
        "07-console-en.png",
        "08-users.png",
        "09-audit.png",
        "10-config.png",
    ] {
        let len = std::fs::metadata(shots.join(f))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 1000, "screenshot {f} missing or empty");
    }
}
