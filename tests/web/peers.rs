//! The gateway with a pymodbus door contact and a mosquitto broker standing
//! in for the platform, shared by the web page's tests.
#![allow(dead_code)]

use crate::common::gateway::GatewayProc;
use crate::common::mqtt_sub::MqttSub;
use crate::modbus_sim::ModbusSim;
use crate::mosquitto::Mosquitto;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const ROOT: &str = "estate/v1/web/gw/";
/// The uplink password the config points at: must never be served.
pub const UPLINK_SECRET: &str = "uplink-S3cret-7f29c1";
/// Written to `metrics.token` in the gateway's directory, for a rig whose
/// `[web]` sets `metrics_token = { file = "@DIR@/metrics.token" }`.
pub const METRICS_TOKEN: &str = "metrics-5c0e91b2d7a64f38";
pub const ALARM_KEY: &str = "door-panel/door-7";

pub struct Rig {
    pub broker: Mosquitto,
    pub sim: ModbusSim,
    pub sub: MqttSub,
    pub gw: GatewayProc,
    pub web: SocketAddr,
    rt: tokio::runtime::Runtime,
}

impl Rig {
    /// Peers up, accounts added with the CLI (`users`: name, role,
    /// password) before the gateway starts, gateway running. `None`: a
    /// peer is missing (skipped loudly).
    pub fn start(name: &str, users: &[(&str, &str, &str)]) -> Option<Rig> {
        Rig::start_with(name, users, "")
    }

    /// [`Rig::start`] with more `[web]` keys (TOML lines).
    pub fn start_with(name: &str, users: &[(&str, &str, &str)], web: &str) -> Option<Rig> {
        let broker = Mosquitto::start_or_skip()?;
        let sim = ModbusSim::start_tcp(&[1])?;
        let sub = MqttSub::start(broker.port(), &format!("{ROOT}#"));
        sub.wait_subscribed(Duration::from_secs(10));
        let web_port = crate::common::free_port();
        let cfg = format!(
            r#"
[site]
id = "web"
gateway = "gw"

[log]
level = "info,estate_gateway=debug"
format = "text"

[journal]
path = "@DIR@/journal"

[uplink]
host = "127.0.0.1"
port = {broker}
username = "gw"
password = {{ file = "@DIR@/uplink.pw" }}
heartbeat_s = 1
reconnect_min_s = 0.2
reconnect_max_s = 1

[telemetry]
enabled = false

[web]
listen = "127.0.0.1:{web_port}"
login_failures = 3
login_window_s = 600
{web}

[[devices]]
id = "door-panel"
zone = "villa-3"
category = "intrusion"
poll_interval_s = 0.1
timeout_s = 0.5
offline_after = 3
[devices.modbus]
host = "127.0.0.1"
port = {sim}
unit = 1
backoff_max_s = 0.5

[[devices.points]]
id = "door-7"
register = "coil"
address = 7

[[alarms]]
point = "door-panel/door-7"
equals = true
priority = 2
message = "Door 7 forced open"
latching = false
"#,
            broker = broker.port(),
            sim = sim.tcp_port.expect("tcp sim"),
        );
        let mut gw = GatewayProc::new(name, &cfg);
        std::fs::write(gw.dir().join("uplink.pw"), UPLINK_SECRET).unwrap();
        std::fs::write(gw.dir().join("metrics.token"), METRICS_TOKEN).unwrap();
        for (user, role, pw) in users {
            add_user_cli(&gw, user, role, pw);
        }
        gw.start();
        let web = SocketAddr::from(([127, 0, 0, 1], web_port));
        crate::common::wait_for(Duration::from_secs(20), "web server", || {
            std::net::TcpStream::connect(web).ok()
        });
        sub.wait_json("/events", Duration::from_secs(20), "gateway.started", |e| {
            e["kind"] == "gateway.started"
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Some(Rig {
            broker,
            sim,
            sub,
            gw,
            web,
            rt,
        })
    }

    /// Set the door contact.
    pub fn set_door(&self, open: bool) -> Instant {
        let t = Instant::now();
        self.rt.block_on(self.sim.write_coil(1, 7, open));
        t
    }
}

/// `estate-gateway user add NAME --role ROLE` with the password on stdin.
pub fn add_user_cli(gw: &GatewayProc, name: &str, role: &str, password: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(crate::common::gateway::bin())
        .args(["user", "add", name, "--role", role, "--config"])
        .arg(gw.config_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn estate-gateway user add");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "user add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The one-time setup token from the gateway's log.
pub fn setup_token(gw: &GatewayProc) -> String {
    crate::common::wait_for(Duration::from_secs(10), "setup token in the log", || {
        let log = strip_ansi(&gw.log());
        let i = log.find("setup_token=")?;
        let rest = &log[i + "setup_token=".len()..];
        let tok: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        (tok.len() == 32).then_some(tok)
    })
}

/// The log without terminal colour sequences (`ESC [ … m`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            for d in it.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
