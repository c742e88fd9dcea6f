//! The gateway for the cameras, clips, "read now" and system pages' tests:
//! a mosquitto broker for the platform, a pymodbus device with registers
//! and a door contact, a Modbus device nobody answers for (closed port), a
//! unit id the simulator does not answer (timeouts), a point past the
//! simulator's registers (Modbus exception 2), and a real RTSP
//! camera (GStreamer) whose clips the door alarm records. Without
//! GStreamer the camera points at a closed port (its clips are then only
//! the file the test places in the clip directory).
#![allow(dead_code)]

use crate::common::gateway::GatewayProc;
use crate::common::mqtt_sub::MqttSub;
use crate::modbus_sim::ModbusSim;
use crate::mosquitto::Mosquitto;
use crate::rtsp_server::{RtspOptions, RtspServer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const ROOT: &str = "estate/v1/pages/gw/";
/// Must never be served.
pub const UPLINK_SECRET: &str = "uplink-S3cret-pages-51e0";
pub const CAMERA_SECRET: &str = "cam-S3cret-pages-9b77";
pub const ALARM_KEY: &str = "meter/door-7";
/// A clip the test places in the clip directory (not video: its bytes
/// are a known pattern, for the range checks).
pub const PLACED_CLIP: &str = "cam-gate-20261127-031500123-00ab";
pub const PLACED_LEN: usize = 100_000;

pub fn placed_bytes() -> Vec<u8> {
    (0..PLACED_LEN as u32).map(|i| (i % 251) as u8).collect()
}

pub struct PagesRig {
    pub broker: Mosquitto,
    pub sim: ModbusSim,
    pub sub: MqttSub,
    pub cam: Option<RtspServer>,
    pub gw: GatewayProc,
    pub web: SocketAddr,
    pub clip_dir: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl PagesRig {
    /// Peers up, accounts added with the CLI, the placed clip written,
    /// gateway running. `None`: a required peer is missing (skipped loudly).
    pub fn start(name: &str, users: &[(&str, &str, &str)]) -> Option<PagesRig> {
        let broker = Mosquitto::start_or_skip()?;
        // Two ports on one datastore: the meter alone on the first; a unit
        // nobody simulates and a point past the datastore on the second.
        let sim = ModbusSim::start_tcp_ports(
            &[crate::common::free_port(), crate::common::free_port()],
            &[1],
        )?;
        let cam = RtspServer::start(RtspOptions {
            width: 320,
            height: 240,
            fps: 10,
            keyint: 10,
            credentials: Some(("gateway".into(), CAMERA_SECRET.into())),
            ..RtspOptions::default()
        });
        let cam_url = match &cam {
            Some(c) => c.url(0),
            None => format!("rtsp://127.0.0.1:{}/cam0", crate::common::free_port()),
        };
        let sub = MqttSub::start(broker.port(), &format!("{ROOT}#"));
        sub.wait_subscribed(Duration::from_secs(10));
        let web_port = crate::common::free_port();
        let dead_port = crate::common::free_port();
        let cfg = format!(
            r#"
[site]
id = "pages"
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

[clips]
path = "@DIR@/clips"
max_bytes = 104857600
min_free_bytes = 0

[[cameras]]
id = "cam-gate"
name = "Gate camera"
zone = "gate"
url = "{cam_url}"
username = "gateway"
password = {{ file = "@DIR@/cam.pw" }}
video_loss_s = 3
pre_s = 1
post_s = 2

[[devices]]
id = "meter"
zone = "plant"
category = "hvac"
poll_interval_s = 0.2
timeout_s = 0.5
offline_after = 3
[devices.modbus]
host = "127.0.0.1"
port = {sim}
unit = 1
backoff_max_s = 0.5

[[devices.points]]
id = "supply-temp"
register = "holding"
address = 10
type = "i16"
scale = 0.1
unit = "°C"

[[devices.points]]
id = "energy"
register = "holding"
address = 12
type = "u32"
unit = "kWh"

[[devices.points]]
id = "door-7"
register = "coil"
address = 7

[[alarms]]
point = "meter/door-7"
equals = true
priority = 2
message = "Plant room door forced"
latching = false
cameras = ["cam-gate"]

[[devices]]
id = "ghost"
category = "hvac"
poll_interval_s = 1
timeout_s = 0.3
offline_after = 2
[devices.modbus]
host = "127.0.0.1"
port = {dead_port}
unit = 1
backoff_max_s = 1

[[devices.points]]
id = "flow"
register = "holding"
address = 0
type = "u16"

[[devices]]
id = "silent"
category = "hvac"
poll_interval_s = 1
timeout_s = 0.3
offline_after = 2
[devices.modbus]
host = "127.0.0.1"
port = {sim2}
unit = 9
backoff_max_s = 1

[[devices.points]]
id = "flow"
register = "holding"
address = 0
type = "u16"

[[devices]]
id = "odd"
category = "hvac"
poll_interval_s = 1
timeout_s = 0.5
offline_after = 2
[devices.modbus]
host = "127.0.0.1"
port = {sim2}
unit = 1
backoff_max_s = 1

[[devices.points]]
id = "beyond"
register = "holding"
address = 300
type = "u16"
"#,
            broker = broker.port(),
            sim = sim.tcp_ports[0],
            sim2 = sim.tcp_ports[1],
        );
        let mut gw = GatewayProc::new(name, &cfg);
        std::fs::write(gw.dir().join("uplink.pw"), UPLINK_SECRET).unwrap();
        std::fs::write(gw.dir().join("cam.pw"), CAMERA_SECRET).unwrap();
        let clip_dir = gw.dir().join("clips");
        std::fs::create_dir_all(&clip_dir).unwrap();
        std::fs::write(clip_dir.join(format!("{PLACED_CLIP}.mp4")), placed_bytes()).unwrap();
        // Something outside the clip directory a traversal would reach.
        std::fs::write(gw.dir().join("outside.mp4"), "outside-the-clip-dir").unwrap();
        for (user, role, pw) in users {
            crate::peers::add_user_cli(&gw, user, role, pw);
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
        Some(PagesRig {
            broker,
            sim,
            sub,
            cam,
            gw,
            web,
            clip_dir,
            rt,
        })
    }

    pub fn set_door(&self, open: bool) {
        self.rt.block_on(self.sim.write_coil(1, 7, open));
    }

    pub fn set_registers(&self, addr: u16, words: &[u16]) {
        self.rt.block_on(self.sim.write_registers(1, addr, words));
    }
}
