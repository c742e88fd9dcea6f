//! End-to-end: a clean stop (SIGTERM) while rumqttc's request queue is full
//! still publishes the retained `status` offline with `reason: shutdown`,
//! and the broker does not publish the last will.
//!
//! The real binary, a real mosquitto, and between them a relay whose
//! gateway → broker direction the test can hold, as on a congested link.
//! The queue fills this way: the gateway drains a large backlog of events
//! (recorded while the platform was away), the relay holds the link, so no
//! PUBACK comes back and rumqttc stops taking requests once its in-flight
//! limit is reached; the platform then sends a burst of commands (they reach
//! the gateway: the broker → gateway direction still flows), whose results
//! fill the request queue until even the heartbeat is refused. The gateway
//! gets SIGTERM; the link comes back while its uplink is stopping.

mod common;
#[path = "common/events.rs"]
mod events;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use common::gateway::{signal, GatewayProc};
use common::mqtt_sub::MqttSub;
// How long the gateway lets the uplink deliver at a stop before stopping
// it (the backlog is never empty here).
use estate_gateway::app::UPLINK_GRACE;
use estate_gateway::app::UPLINK_SINK;
use estate_gateway::event::NewEvent;
use estate_gateway::journal::{Journal, JournalConfig};
use events::fire_alarm;
use mosquitto::Mosquitto;
use relay::Relay;
use std::path::Path;
use std::time::{Duration, Instant};

const ROOT: &str = "estate/v1/shutdown/gw/";
/// Events waiting when the gateway starts: more than it delivers before
/// the link is held, so the event window stays full.
const BACKLOG: u64 = 100_000;
/// Commands the platform sends while the link is held. Their results must
/// outnumber what rumqttc takes before its in-flight limit (inflight 64
/// events + 32) plus the request queue (64 + 16 + 64): 176.
const COMMANDS: usize = 250;

/// Gateway config: no devices, events only; a 10 s keepalive so that
/// neither side gives up on the link while it is held (about 6 s).
fn config(relay: u16) -> String {
    format!(
        r#"
[site]
id = "shutdown"
gateway = "gw"

[log]
level = "info,estate_gateway=debug"
format = "text"

[journal]
path = "@DIR@/journal"
fsync = false

[uplink]
host = "127.0.0.1"
port = {relay}
keepalive_s = 10
heartbeat_s = 1
reconnect_min_s = 0.2
reconnect_max_s = 1

[telemetry]
enabled = false
"#
    )
}

/// Record `n` alarms in the gateway's journal (gateway not running): the
/// backlog of an outage.
fn record_backlog(journal_dir: &Path, n: u64) {
    let cfg = JournalConfig {
        path: journal_dir.to_path_buf(),
        fsync: false,
        ..JournalConfig::default()
    };
    let journal = Journal::open(&cfg, "gw", &[UPLINK_SINK]).expect("open the gateway's journal");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for start in (0..n).step_by(1000) {
            let batch: Vec<NewEvent> = (start..(start + 1000).min(n)).map(fire_alarm).collect();
            journal.record(batch).await.expect("record the backlog");
        }
        journal.flush().await.expect("flush the journal");
    });
}

/// Publish `n` commands (QoS 1) as the platform, directly to the broker;
/// returns once the broker acknowledged them all.
fn send_commands(broker: u16, n: usize) {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let mut opts = MqttOptions::new("test-platform-cmds", "127.0.0.1", broker);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut connection) = Client::new(opts, n + 10);
    for i in 0..n {
        client
            .publish(
                format!("{ROOT}cmd/req-{i}"),
                QoS::AtLeastOnce,
                false,
                br#"{"action":"reboot"}"#.to_vec(),
            )
            .expect("queue a command");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut acked = 0;
    while acked < n {
        assert!(
            Instant::now() < deadline,
            "broker acknowledged {acked} of {n} commands"
        );
        match connection.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => panic!("platform connection failed: {e}"),
            Err(rumqttc::RecvTimeoutError::Disconnected) => panic!("platform connection gone"),
        }
    }
    let _ = client.disconnect();
}

#[test]
fn sigterm_with_a_full_request_queue_still_publishes_offline_shutdown() {
    let Some(broker) = Mosquitto::start_or_skip() else {
        return;
    };
    let broker = BrokerLog(broker);
    let relay = Relay::start(broker.port());
    let status_topic = format!("{ROOT}status");
    let watch = MqttSub::start(broker.port(), &status_topic);
    watch.wait_subscribed(Duration::from_secs(10));

    let mut gw = GatewayProc::new("uplink-shutdown", &config(relay.port()));
    // The full queue is seen in a debug line; whatever RUST_LOG the caller has.
    gw.env("RUST_LOG", "info,estate_gateway=debug");
    record_backlog(&gw.dir().join("journal"), BACKLOG);
    gw.start();
    let online = watch
        .wait_for(Duration::from_secs(20), "status online", |m| {
            m.json()["state"] == "online"
        })
        .json();
    let boot_id = online["boot_id"].as_str().unwrap_or("").to_string();
    assert!(!boot_id.is_empty(), "status without boot_id: {online}");
    // The drain is under way at full speed; then the link is held.
    std::thread::sleep(Duration::from_millis(300));
    let held_from = gw.log().len();
    relay.hold(true);
    send_commands(broker.port(), COMMANDS);
    // A heartbeat the request queue refused: the queue is full.
    common::wait_for(
        Duration::from_secs(10),
        "the request queue to be full (a heartbeat deferred)",
        || {
            gw.log()
                .get(held_from..)
                .is_some_and(|l| l.contains("publish request deferred"))
                .then_some(())
        },
    );
    assert!(
        !gw.log().contains("uplink lost"),
        "the link dropped while held; the scenario needs it up"
    );

    signal(gw.pid().expect("gateway running"), "TERM");
    gw.wait_log("shutdown requested", Duration::from_secs(5));
    // The uplink is stopped UPLINK_GRACE after this, with the queue still
    // full; its clean stop may take 2 s to make room. The link comes back
    // half a second into those 2 s.
    std::thread::sleep(UPLINK_GRACE + Duration::from_millis(500));
    relay.hold(false);
    let exit = gw
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no exit within 15 s of SIGTERM\n{}", gw.log_tail(40)));
    assert!(exit.success(), "clean shutdown exited with {exit}");

    // What the platform saw live: one offline status, the clean one.
    let offline = watch
        .wait_for(Duration::from_secs(10), "status offline", |m| {
            m.json()["state"] == "offline"
        })
        .json();
    assert_eq!(
        offline["reason"], "shutdown",
        "the offline status is the last will, not the clean shutdown's: {offline}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let offlines: Vec<serde_json::Value> = watch
        .json_on("/status")
        .into_iter()
        .filter(|v| v["state"] == "offline")
        .collect();
    assert_eq!(
        offlines.len(),
        1,
        "the broker published the last will besides: {offlines:?}"
    );
    watch.stop();

    // And what stays retained for a platform that looks later.
    let later = MqttSub::start(broker.port(), &status_topic);
    let m = later.wait_for(Duration::from_secs(10), "retained status", |_| true);
    assert!(m.retain, "status is not retained");
    let v = m.json();
    assert_eq!(v["state"], "offline", "{v}");
    assert_eq!(v["reason"], "shutdown", "retained status is the will: {v}");
    assert_eq!(v["boot_id"], boot_id.as_str(), "{v}");
    later.stop();
}

/// The broker; its log is printed when the test fails (how the gateway's
/// connection ended: DISCONNECT or closed without one).
struct BrokerLog(Mosquitto);

impl std::ops::Deref for BrokerLog {
    type Target = Mosquitto;
    fn deref(&self) -> &Mosquitto {
        &self.0
    }
}

impl Drop for BrokerLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- mosquitto log -----\n{}-----", self.0.log());
        }
    }
}

/// A TCP relay from a free loopback port to the broker. While held, what
/// the gateway sends (publishes, PINGREQ, DISCONNECT) waits in the relay
/// and the socket buffers, so the broker answers nothing; the broker's
/// packets still reach the gateway.
mod relay {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    pub struct Relay {
        port: u16,
        hold: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
    }

    impl Relay {
        pub fn start(broker: u16) -> Relay {
            let port = crate::common::free_port();
            let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the relay");
            listener.set_nonblocking(true).unwrap();
            let hold = Arc::new(AtomicBool::new(false));
            let stop = Arc::new(AtomicBool::new(false));
            {
                let hold = hold.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((gateway, _)) => {
                                gateway.set_nonblocking(false).unwrap();
                                let Ok(upstream) = TcpStream::connect(("127.0.0.1", broker)) else {
                                    continue;
                                };
                                let _ = gateway.set_nodelay(true);
                                let _ = upstream.set_nodelay(true);
                                let (g, u) = (gateway.try_clone().unwrap(), upstream.try_clone());
                                let hold = hold.clone();
                                std::thread::spawn(move || pipe(g, u.unwrap(), Some(hold)));
                                std::thread::spawn(move || pipe(upstream, gateway, None));
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(10))
                            }
                            Err(e) => panic!("relay accept: {e}"),
                        }
                    }
                });
            }
            Relay { port, hold, stop }
        }

        pub fn port(&self) -> u16 {
            self.port
        }

        /// Hold (or release) the gateway → broker direction.
        pub fn hold(&self, on: bool) {
            self.hold.store(on, Ordering::SeqCst);
        }
    }

    impl Drop for Relay {
        fn drop(&mut self) {
            self.hold.store(false, Ordering::SeqCst);
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    /// Copy `from` to `to` until `from` ends; each chunk waits while `hold`.
    /// When `to` is gone, `from` is still read to its end (and dropped), so
    /// the relay never closes a socket with unread data: that would reset
    /// the broker's side while it still answers the last publishes, before
    /// it reads the DISCONNECT behind them, a reset of the relay's making.
    fn pipe(mut from: TcpStream, mut to: TcpStream, hold: Option<Arc<AtomicBool>>) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut open = true;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            while hold.as_ref().is_some_and(|h| h.load(Ordering::SeqCst)) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if open && to.write_all(&buf[..n]).is_err() {
                open = false;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    }
}
