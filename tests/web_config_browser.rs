//! The configuration editor in a real browser: Debian's headless chromium
//! driven by Playwright (`tests/browser/config.mjs`) against the real
//! gateway with a pymodbus door contact. A technician changes a point and
//! adds one in the forms and applies (the devices page shows them
//! running), submits a bad value (the error shows at the field; file and
//! running configuration unchanged), applies a configuration that cannot
//! start (rolled back, said so), reads the history with a diff, switches
//! to English, and uses the editor at phone width. Screenshots go to
//! `tests/artifacts/web-config/`.

#[path = "web/browser.rs"]
mod browser;
mod common;
#[path = "web/http.rs"]
mod http;
#[path = "common/modbus_sim.rs"]
mod modbus_sim;
#[path = "common/mosquitto.rs"]
mod mosquitto;
#[path = "web/peers.rs"]
mod peers;

use browser::Browser;
use common::repo;
use http::{Client, Seen};
use peers::Rig;
use std::time::Duration;

const TECH_PW: &str = "tech-passw0rd-long";

#[test]
fn browser_config_edit_apply_field_error_rollback() {
    let Some(browser) = Browser::find() else {
        return;
    };
    let Some(rig) = Rig::start("web-config-browser", &[("wang", "technician", TECH_PW)]) else {
        return;
    };
    let cfg_path = rig.gw.config_path().to_path_buf();
    let disk = || std::fs::read_to_string(&cfg_path).unwrap();
    let text0 = disk();
    // The site broker cannot listen here: a configuration using it fails to start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();

    let shots = repo().join("tests/artifacts/web-config");
    let url = format!("http://{}/", rig.web);
    let port = taken_port.to_string();
    let script = browser.run("config.mjs", &[&url, "wang", TECH_PW, &port], &shots);
    let expect = |step: &str, timeout: Duration| script.expect(step, timeout);
    let seen: Seen = Default::default();
    let mut api = Client::new(rig.web, &seen);
    assert_eq!(api.login("wang", TECH_PW).status, 200);

    expect("APPLIED", Duration::from_secs(60));
    let text1 = disk();
    assert_ne!(text1, text0);
    assert!(text1.contains("unit = \"门磁\""), "{text1}");
    assert!(text1.contains("id = \"door-8\""), "{text1}");
    let f = api.get("/api/v1/config/file").json();
    assert_eq!(f["running_matches_file"], true);

    let running = expect("RUNNING", Duration::from_secs(30));
    assert!(running.ends_with("门磁"), "{running}");

    let err = expect("FIELD_ERROR", Duration::from_secs(30));
    assert!(!err.is_empty());
    assert_eq!(disk(), text1, "a refused apply leaves the file");
    let f = api.get("/api/v1/config/file").json();
    assert_eq!(f["running_matches_file"], true);

    let banner = expect("ROLLED_BACK", Duration::from_secs(30));
    assert!(banner.contains("回滚"), "{banner}");
    assert!(banner.contains("cannot listen"), "{banner}");
    assert_eq!(disk(), text1, "the previous file is back");
    let f = api.get("/api/v1/config/file").json();
    assert_eq!(f["running_matches_file"], true);

    let rows: usize = expect("HISTORY", Duration::from_secs(30)).parse().unwrap();
    assert_eq!(rows, 2, "the file before, and the applied version");
    assert_eq!(
        expect("LANG", Duration::from_secs(30)),
        "en Forms",
        "English after the switch"
    );
    let width: u32 = expect("PHONE", Duration::from_secs(30)).parse().unwrap();
    assert!(
        width <= 390,
        "the editor is {width} px wide on a 390 px screen"
    );
    expect("DONE", Duration::from_secs(30));
    script.finish();
    for f in [
        "config-01-forms-zh.png",
        "config-02-applied.png",
        "config-03-devices.png",
        "config-04-field-error.png",
        "config-05-rolled-back.png",
        "config-06-history.png",
        "config-07-forms-en.png",
        "config-08-phone.png",
    ] {
        let len = std::fs::metadata(shots.join(f))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 1000, "screenshot {f} missing or empty");
    }
    drop(taken);
}
