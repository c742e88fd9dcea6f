//! Running under systemd, for real: the gateway binary started with a
//! notify socket sends READY=1, pets the watchdog while its loops live and
//! stops petting when one wedges, and sends STOPPING=1; `/metrics` parses
//! with Prometheus' own parser; `/healthz` answers 200, then 503 naming the
//! wedged loop; the unit file passes `systemd-analyze verify`.

mod common;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use common::gateway::GatewayProc;
use common::{free_port, peer_or_skip, python, which};
use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

/// A gateway with a Modbus device nobody answers (a driver loop to watch),
/// an uplink to a broker that is not there (the uplink task retries), and
/// the web server on `web`.
fn config(web: u16, grace_s: f64) -> String {
    config_with_broker(web, grace_s, free_port())
}

fn config_with_broker(web: u16, grace_s: f64, broker: u16) -> String {
    let plc = free_port();
    format!(
        r#"
[site]
id = "svc"
gateway = "gw"

[log]
level = "info,estate_gateway=debug"
format = "text"

[journal]
path = "@DIR@/journal"
telemetry_flush_s = 0.5

[uplink]
host = "127.0.0.1"
port = {broker}
reconnect_min_s = 0.2
reconnect_max_s = 1

[web]
listen = "127.0.0.1:{web}"

[service]
liveness_grace_s = {grace_s}

[[devices]]
id = "plc-1"
poll_interval_s = 0.2
timeout_s = 0.2
modbus = {{ host = "127.0.0.1", port = {plc}, unit = 1 }}

[[devices.points]]
id = "door"
register = "coil"
address = 0
"#
    )
}

/// The service manager's end of the notify socket.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: String,
    sock: UnixDatagram,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            path: path.display().to_string(),
            _dir: dir,
            sock,
        }
    }

    /// Next datagram within `timeout`.
    fn recv(&self, timeout: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 1024];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Wait for a datagram satisfying `f`; returns every datagram read.
    fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) -> Vec<String> {
        let start = Instant::now();
        let mut seen = Vec::new();
        while start.elapsed() < timeout {
            if let Some(m) = self.recv(Duration::from_millis(200)) {
                let hit = f(&m);
                seen.push(m);
                if hit {
                    return seen;
                }
            }
        }
        panic!("no {what} within {timeout:?}; received {seen:?}");
    }

    /// Every datagram arriving within `window`.
    fn collect(&self, window: Duration) -> Vec<String> {
        let start = Instant::now();
        let mut seen = Vec::new();
        while start.elapsed() < window {
            if let Some(m) = self.recv(
                window
                    .saturating_sub(start.elapsed())
                    .max(Duration::from_millis(1)),
            ) {
                seen.push(m);
            }
        }
        seen
    }
}

/// `GET path` on 127.0.0.1:port: (status, content type, body).
fn get(port: u16, path: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect web server");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP head");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ctype, body.to_string())
}

fn start(name: &str, notify: &NotifySocket, web: u16, grace_s: f64) -> GatewayProc {
    let mut gw = GatewayProc::new(name, &config(web, grace_s));
    gw.env("NOTIFY_SOCKET", &notify.path);
    // Petted every 200 ms.
    gw.env("WATCHDOG_USEC", "400000");
    gw
}

#[test]
fn ready_watchdog_stopping_and_metrics() {
    let notify = NotifySocket::bind();
    let web = free_port();
    let mut gw = start("service-notify", &notify, web, 5.0);
    gw.start();

    let seen = notify.wait_for("READY=1", Duration::from_secs(30), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    assert!(
        !seen.iter().any(|m| m.contains("WATCHDOG=1")),
        "petting before ready: {seen:?}"
    );
    // The web server is up before READY=1.
    let (code, _, body) = get(web, "/healthz");
    assert_eq!(code, 200, "{body}");
    for name in ["journal", "alarm", "uplink", "modbus tcp:127.0.0.1:"] {
        assert!(
            body.contains(&format!("alive: {name}")),
            "{name} missing from /healthz: {body}"
        );
    }
    // Petted repeatedly.
    let mut pets = 0;
    let start = Instant::now();
    while pets < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "watchdog not petted 3 times in 10 s"
        );
        if notify.recv(Duration::from_secs(1)).as_deref() == Some("WATCHDOG=1") {
            pets += 1;
        }
    }

    // Let the poller count some failed polls, then scrape.
    gw.wait_log("poll failed", Duration::from_secs(10));
    let (code, ctype, metrics) = get(web, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    for family in [
        "estate_gateway_device_polls_total{device=\"plc-1\"}",
        "estate_gateway_device_poll_errors_total{device=\"plc-1\"}",
        "estate_gateway_device_poll_duration_seconds_count{device=\"plc-1\"}",
        "estate_gateway_journal_events ",
        "estate_gateway_journal_bytes_on_disk ",
        "estate_gateway_uplink_connected 0",
        "estate_gateway_uplink_backlog_events ",
        "estate_gateway_push_failures_total 0",
        "estate_gateway_loop_alive{loop=\"alarm\"} 1",
        "process_resident_memory_bytes ",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    check_with_prometheus_parser(&metrics);

    gw.sigterm(Duration::from_secs(20));
    let rest = notify.collect(Duration::from_millis(300));
    assert!(
        rest.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "no STOPPING=1 after SIGTERM: {rest:?}"
    );
}

/// Parse with `prometheus_client.parser` (the reference implementation of
/// the text format) and check the families and samples it sees.
fn check_with_prometheus_parser(text: &str) {
    let Some(py) = peer_or_skip(
        "python3 with prometheus_client",
        python().filter(|p| {
            Command::new(p)
                .args(["-c", "import prometheus_client"])
                .status()
                .is_ok_and(|s| s.success())
        }),
        "prometheus_client from tests/requirements.txt in .venv",
    ) else {
        return;
    };
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
fams = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
polls = fams["estate_gateway_device_polls"]
assert polls.type == "counter", polls.type
(s,) = [s for s in polls.samples if s.labels == {"device": "plc-1"}]
assert s.value > 0, s
errs = fams["estate_gateway_device_poll_errors"]
(e,) = [x for x in errs.samples if x.labels == {"device": "plc-1"}]
assert 0 < e.value <= s.value, (e, s)
lat = fams["estate_gateway_device_poll_duration_seconds"]
assert lat.type == "summary"
assert {x.name for x in lat.samples} == {"estate_gateway_device_poll_duration_seconds_sum", "estate_gateway_device_poll_duration_seconds_count"}
rss = fams["process_resident_memory_bytes"].samples[0].value
assert 1e6 < rss < 1e9, rss
alive = {x.labels["loop"]: x.value for x in fams["estate_gateway_loop_alive"].samples}
assert alive["alarm"] == 1 and alive["journal"] == 1 and alive["uplink"] == 1, alive
print(len(fams))
"#;
    let mut child = Command::new(py)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(families >= 20, "only {families} families parsed");
}

#[test]
fn a_wedged_loop_stops_the_petting_and_fails_healthz() {
    let notify = NotifySocket::bind();
    let web = free_port();
    let mut gw = start("service-wedge", &notify, web, 0.5);
    // The alarm task's heartbeat ignores its beats: it goes stale 2 s
    // (its period) + 0.5 s (grace) after start.
    gw.env("ESTATE_GATEWAY_TEST_WEDGE", "alarm");
    gw.start();

    notify.wait_for("READY=1", Duration::from_secs(30), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    notify.wait_for("WATCHDOG=1", Duration::from_secs(5), |m| m == "WATCHDOG=1");
    let seen = notify.wait_for("wedged status", Duration::from_secs(10), |m| {
        m.starts_with("STATUS=wedged: alarm")
    });
    assert!(
        !seen.last().unwrap().contains("journal") && !seen.last().unwrap().contains("uplink"),
        "only the alarm loop is wedged: {seen:?}"
    );
    // No petting for 5 watchdog intervals after the wedge.
    let after = notify.collect(Duration::from_secs(1));
    assert!(
        !after.iter().any(|m| m == "WATCHDOG=1"),
        "petted while wedged: {after:?}"
    );
    gw.wait_log(
        "main loop wedged: watchdog not petted",
        Duration::from_secs(5),
    );

    let (code, _, body) = get(web, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not alive: alarm (late by"), "{body}");
    assert!(!body.contains("not alive: journal"), "{body}");
    let (_, _, metrics) = get(web, "/metrics");
    assert!(
        metrics.contains("estate_gateway_loop_alive{loop=\"alarm\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("estate_gateway_loop_alive{loop=\"uplink\"} 1"),
        "{metrics}"
    );
    gw.sigterm(Duration::from_secs(20));
}

/// Connected to a real broker: the uplink metrics move.
#[test]
fn uplink_metrics_with_a_broker() {
    let Some(broker) = mosquitto::Mosquitto::start_or_skip() else {
        return;
    };
    let web = free_port();
    let mut gw = GatewayProc::new(
        "service-uplink",
        &config_with_broker(web, 5.0, broker.port()),
    );
    gw.start();
    assert!(
        common::wait_port(web, Duration::from_secs(30)),
        "web server not up"
    );
    let metrics = common::wait_for(Duration::from_secs(30), "uplink metrics", || {
        let (_, _, m) = get(web, "/metrics");
        let delivered = m.contains("estate_gateway_uplink_connected 1")
            && m.contains("estate_gateway_uplink_backlog_events 0")
            && !m.contains("estate_gateway_uplink_publish_duration_seconds_count 0");
        delivered.then_some(m)
    });
    // gateway.started and device.offline were delivered: publish latencies counted.
    let count: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("estate_gateway_uplink_publish_duration_seconds_count "))
        .and_then(|v| v.parse().ok())
        .expect("publish count");
    assert!(count >= 1.0, "{metrics}");
    check_with_prometheus_parser(&metrics);
    assert!(gw.sigterm(Duration::from_secs(20)).success());
}

/// A client that never finishes its request does not hold the shutdown.
#[test]
fn a_stalled_http_client_does_not_block_shutdown() {
    let web = free_port();
    let mut gw = GatewayProc::new("service-stalled-client", &config(web, 5.0));
    gw.start();
    assert!(
        common::wait_port(web, Duration::from_secs(30)),
        "web server not up"
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", web)).unwrap();
    // Headers never terminated.
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(gw.sigterm(Duration::from_secs(15)).success());
    assert!(gw.log().contains("web clients still connected at shutdown"));
    drop(s);
}

#[test]
fn without_notify_socket_runs_normally() {
    let web = free_port();
    let mut gw = GatewayProc::new("service-plain", &config(web, 5.0));
    gw.start();
    gw.wait_log("gateway running", Duration::from_secs(30));
    assert!(!gw.log().contains("service manager"), "{}", gw.log_tail(20));
    assert!(gw.sigterm(Duration::from_secs(20)).success());
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let Some(analyze) = peer_or_skip(
        "systemd-analyze",
        which("systemd-analyze"),
        "Debian package systemd",
    ) else {
        return;
    };
    let unit = std::fs::read_to_string(common::repo().join("systemd/estate-gateway.service"))
        .expect("read unit");
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "ProtectSystem=strict",
        "StateDirectory=estate-gateway",
        "ConfigurationDirectory=estate-gateway",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "SupplementaryGroups=dialout gpio",
    ] {
        assert!(unit.contains(key), "unit lacks {key:?}");
    }
    // verify checks that ExecStart= exists: point it at the test binary.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("estate-gateway.service");
    let bin = common::gateway::bin().display().to_string();
    std::fs::write(&path, unit.replace("/usr/bin/estate-gateway", &bin)).unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Unknown or misspelt keys are only warnings: fail on any.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned:\n{stderr}"
    );
}
