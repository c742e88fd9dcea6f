//! A real mosquitto broker on a free loopback port, for uplink tests.
//!
//! The broker runs from a generated config file in its own temporary
//! directory, with persistence on (so a persistent test subscriber keeps its
//! session and queued messages across [`Mosquitto::stop`] /
//! [`Mosquitto::start`]). `stop` then `start` reuses the SAME port, for
//! outage tests. Dropping it kills the broker.
#![allow(dead_code)]

use crate::common::{free_port, peer_or_skip, wait_port, which};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running (or stopped) mosquitto.
pub struct Mosquitto {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    conf: PathBuf,
    child: Option<Child>,
}

fn find_bin() -> Option<PathBuf> {
    which("mosquitto")
        .or_else(|| which("/usr/sbin/mosquitto"))
        .or_else(|| which("/usr/local/sbin/mosquitto"))
}

impl Mosquitto {
    /// Start a broker, or `None` (loud skip; a failure under
    /// `REQUIRE_PEERS=1`) when mosquitto is not installed.
    pub fn start_or_skip() -> Option<Mosquitto> {
        Mosquitto::start_with_or_skip(|_| String::new())
    }

    /// As [`Mosquitto::start_or_skip`], with `extra` config lines for the
    /// listener (TLS files, `password_file`, `allow_anonymous false`, …).
    /// `extra` gets the broker's directory, to write those files into.
    pub fn start_with_or_skip(extra: impl FnOnce(&Path) -> String) -> Option<Mosquitto> {
        let bin = peer_or_skip(
            "mosquitto",
            find_bin(),
            "install the mosquitto package (apt-get install mosquitto)",
        )?;
        let dir = tempfile::tempdir().expect("temp dir for mosquitto");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let extra = extra(dir.path());
        write_config(&conf, dir.path(), port, &extra);
        let mut m = Mosquitto {
            bin,
            port,
            dir,
            conf,
            child: None,
        };
        m.start();
        Some(m)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The broker's directory (config, log, persistence, generated files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Start the broker (again) on the same port; waits until it accepts
    /// connections. Panics if it does not come up.
    pub fn start(&mut self) {
        if self.child.is_some() {
            return;
        }
        let mut last_err = String::new();
        // The port was just released by the previous run; retry briefly.
        for _ in 0..5 {
            let stderr = std::fs::File::create(self.dir.path().join("mosquitto.stderr"))
                .expect("mosquitto stderr file");
            let child = Command::new(&self.bin)
                .arg("-c")
                .arg(&self.conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawning mosquitto");
            self.child = Some(child);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if wait_port(self.port, Duration::from_millis(50)) {
                    return;
                }
                let exited = self
                    .child
                    .as_mut()
                    .map(|c| !matches!(c.try_wait(), Ok(None)))
                    .unwrap_or(true);
                if exited {
                    break;
                }
            }
            last_err = format!(
                "{}{}",
                std::fs::read_to_string(self.dir.path().join("mosquitto.stderr"))
                    .unwrap_or_default(),
                self.log()
            );
            self.kill();
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "mosquitto did not listen on 127.0.0.1:{} ; output:\n{last_err}",
            self.port
        );
    }

    /// Stop the broker gracefully (SIGTERM: sessions are saved) and wait
    /// until it has exited. The port stays reserved for [`Mosquitto::start`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }

    /// Freeze the broker (SIGSTOP): connections stay open but nothing is
    /// answered, as with a hung broker or a black-holed link.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Let a paused broker run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status();
        }
    }

    /// Kill the broker at once (SIGKILL): nothing is saved.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

fn write_config(conf: &Path, dir: &Path, port: u16, extra: &str) {
    let anonymous = if extra.contains("allow_anonymous") {
        ""
    } else {
        "allow_anonymous true\n"
    };
    let text = format!(
        "# generated for a test\n\
         listener {port} 127.0.0.1\n\
         {extra}\n\
         user root\n\
         {anonymous}\
         persistence true\n\
         persistence_location {dir}/\n\
         autosave_interval 1\n\
         max_queued_messages 0\n\
         max_queued_bytes 0\n\
         max_inflight_messages 0\n\
         log_dest file {dir}/mosquitto.log\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         connection_messages true\n",
        dir = dir.display()
    );
    std::fs::write(conf, text).expect("writing mosquitto.conf");
}

/// A message received by a [`Subscriber`].
#[derive(Clone, Debug)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload on {} is not JSON ({e}): {:?}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

/// A platform-side MQTT client for tests: subscribes (again after every
/// reconnect), collects messages, and can publish.
pub struct Subscriber {
    pub client: rumqttc::AsyncClient,
    rx: tokio::sync::mpsc::UnboundedReceiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Connect to the broker on `port` as `id` and subscribe to `filters`
    /// at QoS 1; returns once the broker confirmed the subscription. A
    /// `persistent` subscriber (clean session off) keeps its queued messages
    /// while it or the broker is away.
    pub async fn connect(port: u16, id: &str, filters: &[String], persistent: bool) -> Subscriber {
        use rumqttc::{Event, Incoming, MqttOptions, QoS, SubscribeFilter};
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_clean_session(!persistent);
        o.set_max_packet_size(4 << 20, 4 << 20);
        o.set_inflight(1000);
        let (client, mut el) = rumqttc::AsyncClient::new(o, 1000);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel::<()>();
        let filters: Vec<SubscribeFilter> = filters
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
            .collect();
        let sub_client = client.clone();
        let task = tokio::spawn(async move {
            let mut subscribed = Some(subscribed_tx);
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = sub_client.subscribe_many(filters.clone()).await;
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(s) = subscribed.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = tx.send(Received {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .expect("test subscriber: no SUBACK within 10 s")
            .expect("test subscriber task ended");
        Subscriber { client, rx, task }
    }

    /// The next message, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Received> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next event of `kind` on an `…/events` topic (other messages
    /// skipped), or panic after `timeout`.
    pub async fn next_event(&mut self, kind: &str, timeout: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("no {kind} event within {timeout:?}"));
            if m.topic.ends_with("/events") {
                let v = m.json();
                if v["kind"] == kind {
                    return v;
                }
            }
        }
    }

    /// The next message on a topic ending with `suffix` (others are
    /// skipped), or panic after `timeout`.
    pub async fn expect(&mut self, suffix: &str, timeout: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(m) if m.topic.ends_with(suffix) => return m,
                Some(_) => continue,
                None => panic!("no message on …{suffix} within {timeout:?}"),
            }
        }
    }

    /// Publish at QoS 1 (not retained).
    pub async fn publish(&self, topic: &str, payload: &[u8]) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .expect("test publish");
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
