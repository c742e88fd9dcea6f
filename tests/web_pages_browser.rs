//! The cameras, clips, "read now" and system pages in a real browser:
//! Debian's headless chromium driven by Playwright
//! (`tests/browser/pages.mjs`) against the real gateway with a pymodbus
//! device, a mosquitto broker and a GStreamer RTSP camera. The door alarm
//! records a clip; a technician sees the camera's health and plays the clip
//! (the `<video>` loads it), sees the clip in the alarm console, reads a
//! device now (the simulator's value) and one nobody answers for (an
//! error), opens the system page; every page also at 375 px wide, where
//! nothing may be wider than the screen. Screenshots go to
//! `tests/artifacts/web-pages/`.

#[path = "web/browser.rs"]
mod browser;
mod common;
#[path = "web/http.rs"]
mod http;
#[path = "common/modbus_sim.rs"]
mod modbus_sim;
#[path = "common/mosquitto.rs"]
mod mosquitto;
#[path = "web/pages_rig.rs"]
mod pages_rig;
#[path = "web/peers.rs"]
#[allow(unused)]
mod peers;
#[path = "common/rtsp_server.rs"]
mod rtsp_server;

use browser::Browser;
use common::{peer_or_skip, repo};
use http::{Client, Seen};
use pages_rig::{PagesRig, ALARM_KEY};
use std::time::Duration;

const TECH_PW: &str = "tech-passw0rd-pages";

#[test]
fn browser_cameras_clips_probe_system() {
    let Some(browser) = Browser::find() else {
        return;
    };
    let Some(rig) = PagesRig::start("web-pages-browser", &[("wang", "technician", TECH_PW)]) else {
        return;
    };
    let Some(_) = peer_or_skip(
        "GStreamer RTSP server",
        rig.cam.as_ref(),
        "apt-get install gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-ugly python3-gi",
    ) else {
        return;
    };
    // A real clip of the door alarm; the door stays open (alarm active).
    let seen: Seen = Default::default();
    let mut tech = Client::new(rig.web, &seen);
    assert_eq!(tech.login("wang", TECH_PW).status, 200);
    common::wait_for(Duration::from_secs(30), "camera online", || {
        (tech.get("/api/v1/cameras").json()["cameras"][0]["state"] == "online").then_some(())
    });
    rig.set_registers(10, &[(-205i16) as u16]);
    rig.set_door(true);
    let clip = common::wait_for(Duration::from_secs(30), "the alarm's clip ready", || {
        let m = tech.get("/api/v1/alarms/clips").json();
        let c = m["clips"][ALARM_KEY].as_array()?.first()?.clone();
        (c["state"] == "ready").then_some(c)
    });
    let clip_id = clip["id"].as_str().unwrap().to_string();

    let shots = repo().join("tests/artifacts/web-pages");
    let url = format!("http://{}/", rig.web);
    let script = browser.run("pages.mjs", &[&url, "wang", TECH_PW, &clip_id], &shots);
    let expect = |step: &str, timeout: Duration| script.expect(step, timeout);
    assert_eq!(expect("DASH", Duration::from_secs(60)), "1 / 1");
    assert_eq!(
        expect("CAMERAS", Duration::from_secs(20)),
        "在线",
        "online, in Chinese"
    );
    let rs: u32 = expect("VIDEO", Duration::from_secs(30)).parse().unwrap();
    assert!(rs >= 1, "the <video> loaded the clip's metadata");
    assert_eq!(expect("ALARMCLIP", Duration::from_secs(30)), clip_id);
    assert_eq!(expect("PROBE", Duration::from_secs(20)), "-20.50 °C");
    let err = expect("PROBEERR", Duration::from_secs(20));
    assert!(err.contains("读取失败"), "{err}");
    let backlog: u64 = expect("SYSTEM", Duration::from_secs(20)).parse().unwrap();
    assert!(backlog < 1000, "{backlog}");
    for _ in 0..5 {
        let w = expect("WIDTH", Duration::from_secs(30));
        let px: u32 = w.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(px <= 375, "wider than a phone: {w}");
    }
    assert_eq!(expect("LANG", Duration::from_secs(30)), "System");
    expect("DONE", Duration::from_secs(60));
    script.finish();
    for f in [
        "p01-dashboard.png",
        "p02-cameras.png",
        "p03-clip-player.png",
        "p04-console-clip.png",
        "p05-console-player.png",
        "p06-devices-probe.png",
        "p07-system.png",
        "p08-phone-dashboard.png",
        "p09-phone-cameras.png",
        "p10-phone-console.png",
        "p11-phone-devices.png",
        "p12-phone-system.png",
        "p13-phone-player.png",
        "p14-system-en.png",
        "p15-cameras-en.png",
    ] {
        let len = std::fs::metadata(shots.join(f))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 1000, "screenshot {f} missing or empty");
    }
}
