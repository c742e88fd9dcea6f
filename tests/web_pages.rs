//! The cameras, clips, "read now" and system pages' API against the real
//! gateway binary, a pymodbus device, a mosquitto broker and a GStreamer
//! RTSP camera: sessions and roles on every new route, CSRF, clip files
//! with range requests and no way out of the clip directory, a probe that
//! returns the simulator's registers (and a clear, prompt error for a
//! device nobody answers for), the alarm's clip, system numbers that move
//! (the uplink's backlog grows while the platform is away) — and no
//! configured secret in any response.

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

use http::{Client, Seen};
use pages_rig::{PagesRig, ALARM_KEY, CAMERA_SECRET, PLACED_CLIP, PLACED_LEN, UPLINK_SECRET};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const TECH_PW: &str = "tech-passw0rd-pages";
const GUARD_PW: &str = "guard-passw0rd-pages";
const VIEWER_PW: &str = "viewer-passw0rd-pages";

/// Every route this part adds.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/cameras"),
    ("GET", "/api/v1/cameras/summary"),
    ("GET", "/api/v1/alarms/clips"),
    ("GET", "/api/v1/system"),
    ("GET", "/api/v1/system/logs"),
    ("POST", "/api/v1/devices/meter/probe"),
    ("GET", "/clips/cam-gate-20261127-031500123-00ab.mp4"),
];

/// A raw GET with extra headers; the body as bytes.
fn raw_get(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    extra: &str,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}");
    if let Some(c) = cookie {
        req += &format!("Cookie: eg_session={c}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[nl + 2 + size + 2..];
    }
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn web_pages_api() {
    let Some(rig) = PagesRig::start(
        "web-pages",
        &[
            ("wang", "technician", TECH_PW),
            ("li", "guard", GUARD_PW),
            ("zhao", "viewer", VIEWER_PW),
        ],
    ) else {
        return;
    };
    let seen: Seen = Default::default();
    let mut anon = Client::new(rig.web, &seen);

    // The page's new assets are open; every new route needs a session.
    for a in ["/assets/pages.js", "/assets/pages.css"] {
        assert_eq!(anon.get(a).status, 200, "{a}");
    }
    assert!(anon.get("/").body.contains("/assets/pages.js"));
    for (m, p) in ROUTES {
        let body = (*m == "POST").then(|| json!({}));
        let r = anon.send(m, p, body.as_ref(), false);
        assert_eq!(r.status, 401, "{m} {p} without a session: {}", r.body);
    }
    let (st, _, _) = raw_get(
        rig.web,
        &format!("/clips/{PLACED_CLIP}.mp4"),
        None,
        "Range: bytes=0-9\r\n",
    );
    assert_eq!(st, 401, "a range request without a session");

    let mut tech = Client::new(rig.web, &seen);
    assert_eq!(tech.login("wang", TECH_PW).status, 200);
    let mut guard = Client::new(rig.web, &seen);
    assert_eq!(guard.login("li", GUARD_PW).status, 200);
    let mut viewer = Client::new(rig.web, &seen);
    assert_eq!(viewer.login("zhao", VIEWER_PW).status, 200);

    // Roles: guards and viewers may not probe or read the system page.
    for c in [&mut guard, &mut viewer] {
        let r = c.post("/api/v1/devices/meter/probe", json!({}));
        assert_eq!(r.status, 403, "{}", r.body);
        assert_eq!(c.get("/api/v1/system").status, 403);
        assert_eq!(c.get("/api/v1/system/logs").status, 403);
        assert_eq!(
            c.get("/api/v1/cameras").status,
            200,
            "everyone sees cameras"
        );
    }
    // CSRF: a probe without the token is refused.
    let r = tech.send(
        "POST",
        "/api/v1/devices/meter/probe",
        Some(&json!({})),
        false,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("CSRF"), "{}", r.body);

    // ---- clips: whole, ranges, no traversal -----------------------------
    let bytes = pages_rig::placed_bytes();
    let cookie = guard.cookie.clone();
    let path = format!("/clips/{PLACED_CLIP}.mp4");
    let (st, h, body) = raw_get(rig.web, &path, cookie.as_deref(), "");
    assert_eq!(st, 200);
    assert_eq!(header(&h, "content-type"), Some("video/mp4"));
    assert_eq!(header(&h, "accept-ranges"), Some("bytes"));
    assert_eq!(header(&h, "cache-control"), Some("no-store"));
    assert_eq!(body, bytes, "the whole clip");
    let (st, h, body) = raw_get(
        rig.web,
        &path,
        cookie.as_deref(),
        "Range: bytes=1000-1999\r\n",
    );
    assert_eq!(st, 206);
    assert_eq!(
        header(&h, "content-range"),
        Some(format!("bytes 1000-1999/{PLACED_LEN}").as_str())
    );
    assert_eq!(header(&h, "content-length"), Some("1000"));
    assert_eq!(body, &bytes[1000..2000]);
    let (st, _, body) = raw_get(rig.web, &path, cookie.as_deref(), "Range: bytes=99990-\r\n");
    assert_eq!(st, 206);
    assert_eq!(body, &bytes[99_990..]);
    let (st, _, body) = raw_get(rig.web, &path, cookie.as_deref(), "Range: bytes=-16\r\n");
    assert_eq!(st, 206);
    assert_eq!(body, &bytes[PLACED_LEN - 16..]);
    let (st, h, _) = raw_get(
        rig.web,
        &path,
        cookie.as_deref(),
        "Range: bytes=200000-\r\n",
    );
    assert_eq!(st, 416);
    assert_eq!(
        header(&h, "content-range"),
        Some(format!("bytes */{PLACED_LEN}").as_str())
    );
    for bad in [
        "/clips/../outside.mp4",
        "/clips/..%2Foutside.mp4",
        "/clips/%2e%2e%2foutside.mp4",
        "/clips/%2E%2E%2F%2E%2E%2Fjournal%2Foutside.mp4",
        "/clips/..%5Coutside.mp4",
        "/clips/outside%00.mp4",
        "/clips/Cam-Gate.mp4",
        "/clips/cam-gate-20261127-031500123-00ab.MP4",
        "/clips/%2Fetc%2Fpasswd",
        "/clips/cam-gate-20261127-031500123-ffff.mp4",
    ] {
        let (st, _, body) = raw_get(rig.web, bad, cookie.as_deref(), "");
        assert!(
            st == 400 || st == 404,
            "{bad}: {st} {}",
            String::from_utf8_lossy(&body)
        );
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("outside-the-clip-dir") && !text.contains("root:"),
            "{bad}"
        );
    }

    // ---- read now ------------------------------------------------------
    // supply-temp = -20.5 °C (raw -205), energy = 100000 (0x0001_86A0).
    rig.set_registers(10, &[(-205i16) as u16, 0, 0x0001, 0x86A0]);
    let r = tech.post("/api/v1/devices/meter/probe", json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let p = r.json();
    assert_eq!(p["ok"], true);
    assert_eq!(p["source"], "modbus");
    let value = |p: &serde_json::Value, point: &str| -> serde_json::Value {
        p["values"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["point"] == point)
            .unwrap_or_else(|| panic!("{point} in {p}"))
            .clone()
    };
    let t = value(&p, "supply-temp");
    assert_eq!(t["value"], json!(-20.5), "{t}");
    assert_eq!(t["raw"], json!([0xFF33]), "{t}");
    assert_eq!(t["quality"], "good");
    assert_eq!(
        (t["table"].as_str(), t["address"].as_u64()),
        (Some("holding"), Some(10))
    );
    let e = value(&p, "energy");
    assert_eq!(e["value"], json!(100_000), "{e}");
    assert_eq!(e["raw"], json!([1, 0x86A0]));
    let d = value(&p, "door-7");
    assert_eq!(d["value"], json!(false));
    let reads = p["reads"].as_array().unwrap();
    assert!(
        reads.iter().any(|r| r["table"] == "holding"
            && r["start"] == 10
            && r["words"]
                .as_array()
                .is_some_and(|w| w.len() >= 4 && w[0] == 0xFF33)),
        "{reads:?}"
    );
    assert!(reads
        .iter()
        .any(|r| r["table"] == "coil" && r["bits"].is_array()));
    // The simulator changes; the next probe sees it at once.
    rig.set_registers(10, &[215]);
    let p = tech.post("/api/v1/devices/meter/probe", json!({})).json();
    assert_eq!(value(&p, "supply-temp")["value"], json!(21.5));

    // A device nobody answers for: a clear error, promptly.
    let t0 = Instant::now();
    let r = tech.post("/api/v1/devices/ghost/probe", json!({}));
    let took = t0.elapsed();
    assert!(
        r.status == 503 || r.status == 504,
        "{} {}",
        r.status,
        r.body
    );
    let err = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("offline") || err.contains("no reply"), "{err}");
    assert!(took < Duration::from_secs(5), "ghost probe took {took:?}");
    // A unit that never answers: the device's timeout, reported as such.
    let t0 = Instant::now();
    let r = tech.post("/api/v1/devices/silent/probe", json!({}));
    let took = t0.elapsed();
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["cause"]["kind"], "timeout", "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("no reply within 300 ms"),
        "{}",
        r.body
    );
    assert!(took < Duration::from_secs(3), "silent probe took {took:?}");
    // A register the device does not have: its exception code.
    let r = tech.post("/api/v1/devices/odd/probe", json!({}));
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["cause"]["kind"], "exception", "{}", r.body);
    assert_eq!(r.json()["cause"]["code"], 2, "{}", r.body);
    assert_eq!(
        tech.post("/api/v1/devices/nope/probe", json!({})).status,
        404
    );
    // Probes are audited.
    let audit = tech.get("/api/v1/audit").json();
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "device.probe" && e["target"] == "ghost" && e["ok"] == false),
        "{audit}"
    );

    // ---- cameras, and the alarm's clip ----------------------------------
    let cams = guard.get("/api/v1/cameras").json();
    let cam = &cams["cameras"][0];
    assert_eq!(cam["id"], "cam-gate");
    assert!(
        cam["clips"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == PLACED_CLIP && c["bytes"] == PLACED_LEN && c["url"] == path),
        "{cam}"
    );
    if rig.cam.is_some() {
        common::wait_for(Duration::from_secs(30), "camera online", || {
            let c = guard.get("/api/v1/cameras").json();
            (c["cameras"][0]["state"] == "online" && c["cameras"][0]["fps"].as_f64() > Some(1.0))
                .then_some(())
        });
        let c = guard.get("/api/v1/cameras").json();
        assert!(
            c["cameras"][0]["last_frame_age_s"].as_f64().unwrap() < 3.0,
            "{c}"
        );
        assert_eq!(c["summary"]["online"], 1);
        assert_eq!(
            guard.get("/api/v1/cameras/summary").json(),
            json!({"total": 1, "online": 1})
        );
        rig.set_door(true);
        let deadline = Instant::now() + Duration::from_secs(30);
        let clip = loop {
            let m = guard.get("/api/v1/alarms/clips").json();
            let first = m["clips"][ALARM_KEY]
                .as_array()
                .and_then(|l| l.first().cloned());
            match first {
                Some(c) if c["state"] == "ready" => break c,
                Some(c) if c["state"] == "failed" => panic!("the alarm's clip failed: {c}"),
                _ if Instant::now() > deadline => panic!(
                    "no ready clip within 30 s: clips {m}, cameras {}, alarms {}",
                    guard.get("/api/v1/cameras").json(),
                    guard.get("/api/v1/alarms").json()
                ),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let id = clip["id"].as_str().unwrap();
        assert_eq!(clip["camera"], "cam-gate");
        let (st, h, body) = raw_get(
            rig.web,
            &format!("/clips/{id}.mp4"),
            cookie.as_deref(),
            "Range: bytes=0-\r\n",
        );
        assert_eq!(st, 206);
        assert_eq!(&body[4..8], b"ftyp", "an MP4 file");
        assert_eq!(
            header(&h, "content-length").unwrap(),
            body.len().to_string()
        );
        // The cameras page lists it with its alarm.
        let c = guard.get("/api/v1/cameras").json();
        assert!(
            c["cameras"][0]["clips"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["id"] == id && f["alarm_key"] == ALARM_KEY),
            "{c}"
        );
        rig.set_door(false);
    } else {
        eprintln!("SKIPPED part: no GStreamer RTSP server, the alarm's clip is not recorded");
    }

    // ---- system: real numbers ------------------------------------------
    let s = tech.get("/api/v1/system").json();
    assert_eq!(s["uplink"]["connected"], true, "{s}");
    assert!(s["disk"]["total_bytes"].as_u64().unwrap() > 0);
    assert!(
        s["disk"]["free_bytes"].as_u64().unwrap() <= s["disk"]["total_bytes"].as_u64().unwrap()
    );
    assert!(s["journal"]["bytes_on_disk"].as_u64().unwrap() > 0, "{s}");
    assert!(s["version"].as_str().is_some_and(|v| !v.is_empty()));
    let backlog = |s: &serde_json::Value| -> u64 {
        s["journal"]["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == "uplink")
            .unwrap_or_else(|| panic!("uplink sink in {s}"))["backlog_events"]
            .as_u64()
            .unwrap()
    };
    // The platform goes away: events wait in the journal.
    let mut rig = rig;
    rig.broker.stop();
    common::wait_for(Duration::from_secs(15), "uplink down", || {
        (tech.get("/api/v1/system").json()["uplink"]["connected"] == false).then_some(())
    });
    let before = backlog(&tech.get("/api/v1/system").json());
    let seq_before = tech.get("/api/v1/system").json()["journal"]["last_seq"]
        .as_u64()
        .unwrap();
    for open in [true, false, true, false] {
        rig.set_door(open);
        std::thread::sleep(Duration::from_millis(400));
    }
    let s = common::wait_for(Duration::from_secs(10), "backlog grows", || {
        let s = tech.get("/api/v1/system").json();
        (backlog(&s) >= before + 4).then_some(s)
    });
    assert!(
        s["journal"]["last_seq"].as_u64().unwrap() >= seq_before + 4,
        "{s}"
    );
    assert!(
        s["journal"]["events"].as_u64().unwrap() >= backlog(&s),
        "{s}"
    );
    let dash = tech.get("/api/v1/dashboard").json();
    assert_eq!(dash["uplink"]["backlog"].as_u64(), Some(backlog(&s)));

    // Logs: the newest lines, our probes among them.
    let logs = tech.get("/api/v1/system/logs").json();
    let lines = logs["lines"].as_array().unwrap();
    assert!(!lines.is_empty() && lines.len() <= 500);
    assert!(
        lines.iter().any(|l| l["text"]
            .as_str()
            .is_some_and(|t| t.contains("read now") && t.contains("ghost"))),
        "{logs}"
    );
    assert!(
        lines.iter().all(|l| l["level"] != "DEBUG"),
        "INFO and above only"
    );

    // ---- no secret in any response --------------------------------------
    let all = seen.lock().unwrap();
    assert!(all.len() > 30, "bodies scanned: {}", all.len());
    for body in all.iter() {
        for secret in [UPLINK_SECRET, CAMERA_SECRET, TECH_PW, GUARD_PW, VIEWER_PW] {
            assert!(
                !body.contains(secret),
                "a response carried a secret: {body}"
            );
        }
    }
}
