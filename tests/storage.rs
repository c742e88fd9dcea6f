//! End-to-end: the journal on a small filesystem (an 8 MiB tmpfs) running
//! low on space. The gateway keeps running, raises the `gateway/disk` alarm,
//! refuses telemetry, still journals and delivers alarms, and clears the
//! disk alarm when space returns.
//!
//! Mounting needs root (CAP_SYS_ADMIN); without it the test skips loudly
//! (fails under `REQUIRE_PEERS=1`).

mod common;
#[path = "common/modbus_sim.rs"]
mod modbus_sim;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use common::gateway::GatewayProc;
use common::mqtt_sub::MqttSub;
use modbus_sim::ModbusSim;
use mosquitto::Mosquitto;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ROOT: &str = "estate/v1/disk/gw/";

/// A tmpfs mounted for the test; unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        common::peer_or_skip(
            "a mountable tmpfs",
            ok.then_some(()),
            "run as root (mount -t tmpfs needs CAP_SYS_ADMIN)",
        )?;
        Some(SmallFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        estate_gateway::app::disk::free_bytes(self.path()).expect("statvfs")
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn config(broker: u16, device: u16, journal: &Path) -> String {
    format!(
        r#"
[site]
id = "disk"
gateway = "gw"

[log]
level = "info,estate_gateway=debug"
format = "text"

[journal]
path = "{journal}"
min_free_bytes = 1048576

[uplink]
host = "127.0.0.1"
port = {broker}
keepalive_s = 2
heartbeat_s = 1
reconnect_min_s = 0.2
reconnect_max_s = 1

[telemetry]
enabled = true
batch_s = 0.2

[[devices]]
id = "panel"
zone = "villa-5"
category = "intrusion"
poll_interval_s = 0.1
timeout_s = 0.5
[devices.modbus]
host = "127.0.0.1"
port = {device}
unit = 1

[[devices.points]]
id = "door"
register = "coil"
address = 1

[[alarms]]
point = "panel/door"
equals = true
priority = 2
message = "Door forced"
latching = false
"#,
        journal = journal.display()
    )
}

#[test]
fn low_disk_raises_the_gateway_alarm_keeps_alarms_and_refuses_telemetry() {
    let Some(fs) = SmallFs::mount("8m") else {
        return;
    };
    let Some(broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let Some(sim) = ModbusSim::start_tcp(&[1]) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let coil = |on: bool| rt.block_on(sim.write_coil(1, 1, on));
    let sub = MqttSub::start(broker.port(), &format!("{ROOT}events"));
    sub.wait_subscribed(Duration::from_secs(10));
    let journal = fs.path().join("journal");
    let mut gw = GatewayProc::start_with(
        "disk",
        &config(broker.port(), sim.tcp_port.unwrap(), &journal),
    );
    sub.wait_json("/events", Duration::from_secs(20), "gateway.started", |e| {
        e["kind"] == "gateway.started"
    });
    // The WAL's two preallocated files are there; space is fine.
    assert!(fs.free() > 1 << 20, "free: {}", fs.free());

    // Something else fills the filesystem to 512 KiB short of full.
    let ballast: PathBuf = fs.path().join("ballast");
    let fill = fs.free() - 512 * 1024;
    std::fs::write(&ballast, vec![0u8; fill as usize]).expect("ballast");
    let raised = sub.wait_json(
        "/events",
        Duration::from_secs(20),
        "gateway/disk raised",
        |e| e["kind"] == "alarm.raised" && e["alarm"]["key"] == "gateway/disk",
    );
    assert_eq!(raised["priority"], 2, "{raised}");
    assert_eq!(raised["category"], "system");

    // Alarms are still journaled and delivered; telemetry is refused.
    coil(true);
    let door = sub.wait_json("/events", Duration::from_secs(10), "door raised", |e| {
        e["kind"] == "alarm.raised" && e["alarm"]["key"] == "panel/door"
    });
    assert!(door["seq"].as_u64() > raised["seq"].as_u64());
    gw.wait_log("telemetry not journaled", Duration::from_secs(10));
    coil(false);
    sub.wait_json("/events", Duration::from_secs(10), "door cleared", |e| {
        e["kind"] == "alarm.cleared" && e["alarm"]["key"] == "panel/door"
    });
    assert!(gw.is_running(), "the gateway died on a full disk");

    // Space returns: the disk alarm clears.
    std::fs::remove_file(&ballast).unwrap();
    sub.wait_json(
        "/events",
        Duration::from_secs(20),
        "gateway/disk cleared",
        |e| e["kind"] == "alarm.cleared" && e["alarm"]["key"] == "gateway/disk",
    );
    let exit = gw.sigterm(Duration::from_secs(15));
    assert!(exit.success(), "clean shutdown exited with {exit}");
    // Every event made it into the journal and out: nothing stuck.
    let info = gw.journal_info();
    assert_eq!(info["uplink_backlog"], 0, "{info}");
}
