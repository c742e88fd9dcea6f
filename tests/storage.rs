//! End-to-end: the journal on a small filesystem (an 8 MiB tmpfs) running
//! low on space, and then completely full. The gateway keeps running,
//! raises the `gateway/disk` alarm, refuses telemetry, still journals and
//! delivers alarms (in the write-ahead log alone while the store cannot be
//! written), and recovers without a restart when space returns.
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
    config_with(broker, device, journal, "")
}

/// `journal_extra`: more keys of the `[journal]` section.
fn config_with(broker: u16, device: u16, journal: &Path, journal_extra: &str) -> String {
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
{journal_extra}

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

/// Fill the filesystem of `path` completely: write until `ENOSPC`, in
/// smaller and smaller chunks down to one byte.
fn fill_completely(path: &Path) -> std::fs::File {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let mut chunk = 1 << 20;
    while chunk > 0 {
        let buf = vec![0xA5u8; chunk];
        loop {
            match f.write_all(&buf) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the filesystem: {e}"),
            }
        }
        chunk /= 2;
    }
    f
}

/// Every event on the events topic so far, by arrival.
fn events(sub: &MqttSub) -> Vec<serde_json::Value> {
    sub.json_on("/events")
}

/// Events of `kind` (and alarm key `key`, if given) among `msgs`.
fn count(msgs: &[common::mqtt_sub::Received], kind: &str, key: Option<&str>) -> usize {
    msgs.iter()
        .filter(|m| m.topic.ends_with("/events"))
        .map(|m| m.json())
        .filter(|e| e["kind"] == kind && key.is_none_or(|k| e["alarm"]["key"] == k))
        .count()
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

#[test]
fn completely_full_disk_keeps_alarms_flowing_and_recovers_without_restart() {
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
    // Events every sink has at once never reach the store (they are held
    // in memory and the WAL until the next checkpoint). A staff push
    // channel that cannot be reached holds them back, so the store must
    // keep them: checkpoints every second meet the full disk at once.
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("hook.secret");
    std::fs::write(&secret, "s3cret").unwrap();
    let unreachable = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let push = format!(
        r#"
[push]
retry_max_s = 2

[[push.channels]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:{unreachable}/alarm"
secret = {{ file = "{secret}" }}

[[push.tiers]]
name = "guards"
channels = ["hook"]

[[push.rules]]
name = "all"
tiers = ["guards"]
"#,
        secret = secret.display()
    );
    let mut gw = GatewayProc::start_with(
        "fulldisk",
        &(config_with(
            broker.port(),
            sim.tcp_port.unwrap(),
            &journal,
            "telemetry_flush_s = 1",
        ) + &push),
    );
    let started = sub.wait_json("/events", Duration::from_secs(20), "gateway.started", |e| {
        e["kind"] == "gateway.started"
    });
    let first_seq = started["seq"].as_u64().unwrap();

    // Something else takes every last byte.
    let filler: PathBuf = fs.path().join("filler");
    let file = fill_completely(&filler);
    assert_eq!(fs.free(), 0, "the filesystem is not full");
    sub.wait_json(
        "/events",
        Duration::from_secs(20),
        "gateway/disk raised",
        |e| e["kind"] == "alarm.raised" && e["alarm"]["key"] == "gateway/disk",
    );

    // Alarms keep coming while the disk is full: each reaches the broker.
    // The store soon needs a new page and fails (sled then refuses every
    // write); the WAL carries on. Five more rounds after that.
    let mut rounds = 0;
    let mut after_failure = 0;
    while after_failure < 5 {
        assert!(rounds < 60, "the store never failed on the full disk");
        if gw.log().contains("journal store cannot be written") {
            after_failure += 1;
        }
        let round = rounds;
        coil(true);
        sub.wait_until(Duration::from_secs(10), "door raised", |m| {
            count(m, "alarm.raised", Some("panel/door")) > round
        });
        coil(false);
        sub.wait_until(Duration::from_secs(10), "door cleared", |m| {
            count(m, "alarm.cleared", Some("panel/door")) > round
        });
        rounds += 1;
    }
    assert!(gw.is_running(), "the gateway died on a full disk");
    assert_eq!(fs.free(), 0, "the filesystem must still be full");
    assert!(
        !gw.log().contains("journal store reopened"),
        "reopened while the disk was full"
    );

    // Space returns: the store is reopened, checkpoints resume, the disk
    // alarm clears, without a restart.
    drop(file);
    std::fs::remove_file(&filler).unwrap();
    gw.wait_log("journal store reopened", Duration::from_secs(60));
    sub.wait_json(
        "/events",
        Duration::from_secs(20),
        "gateway/disk cleared",
        |e| e["kind"] == "alarm.cleared" && e["alarm"]["key"] == "gateway/disk",
    );
    coil(true);
    sub.wait_until(Duration::from_secs(10), "door raised after recovery", |m| {
        count(m, "alarm.raised", Some("panel/door")) > rounds
    });
    assert_eq!(gw.starts(), 1, "recovered by a restart, not in place");

    // Every event arrived in seq order, gap-free, each once.
    let got = events(&sub);
    let seqs: Vec<u64> = got
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .filter(|s| *s >= first_seq)
        .collect();
    let mut unique = seqs.clone();
    unique.dedup();
    let expect: Vec<u64> = (first_seq..=*unique.last().unwrap()).collect();
    assert_eq!(unique, expect, "events not in seq order or missing");
    let last_seen = *expect.last().unwrap();

    let exit = gw.sigterm(Duration::from_secs(15));
    assert!(exit.success(), "clean shutdown exited with {exit}");
    let info = gw.journal_info();
    assert_eq!(info["uplink_backlog"], 0, "{info}");
    assert!(info["last_seq"].as_u64().unwrap() >= last_seen, "{info}");

    // A restart finds everything and goes on after it.
    let before = info["last_seq"].as_u64().unwrap();
    gw.start();
    sub.wait_until(Duration::from_secs(20), "second gateway.started", |m| {
        count(m, "gateway.started", None) > 1
    });
    let restarted = events(&sub)
        .into_iter()
        .filter(|e| e["kind"] == "gateway.started")
        .nth(1)
        .unwrap();
    assert_eq!(
        restarted["seq"].as_u64().unwrap(),
        before + 1,
        "{restarted}"
    );
    let exit = gw.sigterm(Duration::from_secs(15));
    assert!(exit.success(), "clean shutdown exited with {exit}");
}
