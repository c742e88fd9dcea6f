//! A simulated MQTT field device (tests/peers/mqtt_device.py, paho-mqtt),
//! driven over its stdin; its stdout lines are collected.
#![allow(dead_code)]

use crate::common::{peer_or_skip, python, repo, wait_for};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running simulated device.
pub struct MqttDevice {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
}

/// Connection options of a simulated device.
#[derive(Default)]
pub struct DeviceOpts<'a> {
    pub status_topic: Option<&'a str>,
    pub subscribe: Option<&'a str>,
    pub login: Option<(&'a str, &'a str)>,
}

fn has_paho(py: &std::path::Path) -> bool {
    Command::new(py)
        .args(["-c", "import paho.mqtt"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl MqttDevice {
    /// Start a device connected to `127.0.0.1:port` as `id`; waits until it
    /// is connected (and subscribed). `None`: paho-mqtt missing (loud skip).
    pub fn start_or_skip(port: u16, id: &str, o: DeviceOpts<'_>) -> Option<MqttDevice> {
        let py = peer_or_skip(
            "paho-mqtt",
            python().filter(|p| has_paho(p)),
            "pip install -r tests/requirements.txt into .venv",
        )?;
        let mut cmd = Command::new(py);
        cmd.arg(repo().join("tests/peers/mqtt_device.py")).args([
            "--port",
            &port.to_string(),
            "--client-id",
            id,
        ]);
        if let Some(t) = o.status_topic {
            cmd.args(["--status-topic", t]);
        }
        if let Some(t) = o.subscribe {
            cmd.args(["--subscribe", t]);
        }
        if let Some((u, p)) = o.login {
            cmd.args(["--username", u, "--password", p]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mqtt_device.py");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(stdout).lines() {
                    let Ok(l) = l else { break };
                    lines.lock().unwrap().push(l);
                }
            });
        }
        let stdin = child.stdin.take();
        let d = MqttDevice {
            child,
            stdin,
            lines,
        };
        d.wait_line(Duration::from_secs(10), "ready", |l| l == "ready");
        Some(d)
    }

    /// Publish `payload` on `topic` (QoS 1) and wait for the broker's PUBACK.
    pub fn publish(&mut self, topic: &str, payload: &str) {
        self.send(serde_json::json!({"topic": topic, "payload": payload}));
    }

    /// Publish raw bytes.
    pub fn publish_bytes(&mut self, topic: &str, payload: &[u8]) {
        let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
        self.send(serde_json::json!({"topic": topic, "payload_hex": hex}));
    }

    fn send(&mut self, m: serde_json::Value) {
        let n = self.count(|l| l.starts_with("sent "));
        let stdin = self.stdin.as_mut().expect("device stopped");
        writeln!(stdin, "{m}").expect("write to device");
        stdin.flush().unwrap();
        wait_for(
            Duration::from_secs(10),
            "PUBACK of the device's publish",
            || (self.count(|l| l.starts_with("sent ")) > n).then_some(()),
        );
    }

    fn count(&self, f: impl Fn(&str) -> bool) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| f(l)).count()
    }

    /// Wait for an output line matching `f`.
    pub fn wait_line(&self, timeout: Duration, what: &str, f: impl Fn(&str) -> bool) -> String {
        wait_for(timeout, what, || {
            self.lines.lock().unwrap().iter().find(|l| f(l)).cloned()
        })
    }

    /// Every output line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Die without a word (SIGKILL): the broker publishes the last will.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MqttDevice {
    fn drop(&mut self) {
        self.kill();
    }
}
