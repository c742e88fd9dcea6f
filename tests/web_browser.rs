//! The web page in a real browser: Debian's headless chromium driven by
//! Playwright (`tests/browser/console.mjs`) against the real gateway with a
//! pymodbus door contact and a mosquitto broker. A guard signs in, sees the
//! door alarm in the console within 1 s of the flip, hears the cue,
//! acknowledges it (and `alarm.acknowledged` reaches the platform), and
//! switches to English; a technician opens users, audit and config.
//! Screenshots of every page go to `target/web-screenshots/`.

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

use common::{peer_or_skip, repo, which};
use peers::{Rig, ALARM_KEY};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
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
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let Some(chromium) = peer_or_skip("chromium", which(&chromium), "apt-get install chromium")
    else {
        return;
    };
    let Some(node) = peer_or_skip("node", which("node"), "apt-get install nodejs") else {
        return;
    };
    let driver = repo().join("tests/browser/node_modules/playwright-core");
    let Some(_) = peer_or_skip(
        "playwright-core",
        driver.exists().then_some(()),
        "npm install in tests/browser (scripts/test does it)",
    ) else {
        return;
    };
    let Some(rig) = Rig::start(
        "web-browser",
        &[("li", "guard", GUARD_PW), ("wang", "technician", TECH_PW)],
    ) else {
        return;
    };
    let shots = shots_dir();
    let _ = std::fs::remove_dir_all(&shots);
    let mut child = Command::new(node)
        .arg(repo().join("tests/browser/console.mjs"))
        .args([
            &format!("http://{}/", rig.web),
            "li",
            GUARD_PW,
            "wang",
            TECH_PW,
            ALARM_KEY,
        ])
        .arg(&shots)
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn node");
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("browser: {line}");
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let expect = |prefix: &str, timeout: Duration| -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.starts_with("FAIL") => panic!("browser: {l}"),
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(_) => panic!("browser did not report {prefix} within {timeout:?}"),
            }
        }
    };
    expect("READY", Duration::from_secs(60));
    let flipped_ms = unix_ms();
    rig.set_door(true);
    let visible = expect("VISIBLE", Duration::from_secs(15));
    let shown_ms: u128 = visible[8..].trim().parse().unwrap();
    let took = shown_ms.saturating_sub(flipped_ms);
    eprintln!("door flip → row visible in the browser: {took} ms");
    assert!(
        took < 1000,
        "the alarm took {took} ms to show in the console"
    );
    assert_eq!(
        expect("BEEP", Duration::from_secs(5)),
        "BEEP yes",
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
    assert_eq!(lang, "LANG en Alarm console");
    expect("DONE", Duration::from_secs(60));
    let status = child.wait().unwrap();
    assert!(status.success(), "browser driver exited with {status}");
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
