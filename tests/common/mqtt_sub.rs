//! An MQTT subscriber for end-to-end tests: standing in for the central
//! platform, it collects every message on a topic filter, with the instant
//! it arrived, into a shared list the test inspects.
//!
//! It survives broker restarts: it reconnects by itself and subscribes again
//! whenever the broker did not keep its session. With [`MqttSub::persistent`]
//! (clean session off, fixed client id) a broker that keeps sessions queues
//! QoS 1 messages for it while it is away, so none is missed in the window
//! between a broker restart and the subscriber's return.
#![allow(dead_code)]

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One message as the subscriber received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub qos: QoS,
    /// When the subscriber's connection task got it.
    pub at: Instant,
}

impl Received {
    /// The payload as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }

    /// The payload as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

#[derive(Default)]
struct Shared {
    messages: Mutex<Vec<Received>>,
    /// Connections acknowledged by the broker.
    connacks: AtomicU64,
    /// Subscriptions acknowledged by the broker.
    subacks: AtomicU64,
    stop: AtomicBool,
}

/// A running subscriber. Dropping it disconnects.
pub struct MqttSub {
    client: Client,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    filter: String,
}

impl MqttSub {
    /// Subscribe to `filter` (QoS 1) on `127.0.0.1:port` with a clean session.
    pub fn start(port: u16, filter: &str) -> MqttSub {
        let id = format!("test-sub-{:016x}", fastrand::u64(..));
        Self::spawn(port, filter, &id, true)
    }

    /// Subscribe with a persistent session (clean session off) under
    /// `client_id`: a broker that keeps sessions (persistence on) queues the
    /// QoS 1 messages published while this subscriber is disconnected.
    pub fn persistent(port: u16, filter: &str, client_id: &str) -> MqttSub {
        Self::spawn(port, filter, client_id, false)
    }

    fn spawn(port: u16, filter: &str, client_id: &str, clean: bool) -> MqttSub {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(clean);
        opts.set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut connection) = Client::new(opts, 1024);
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = shared.clone();
            let client = client.clone();
            let filter = filter.to_string();
            std::thread::Builder::new()
                .name(format!("mqtt-sub {filter}"))
                .spawn(move || {
                    while !shared.stop.load(Ordering::Relaxed) {
                        match connection.recv_timeout(Duration::from_millis(100)) {
                            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                                shared.connacks.fetch_add(1, Ordering::SeqCst);
                                // A broker that kept our session still has the
                                // subscription; otherwise subscribe (again).
                                if !ack.session_present {
                                    let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                                }
                            }
                            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                                shared.subacks.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                                let r = Received {
                                    topic: p.topic.clone(),
                                    payload: p.payload.to_vec(),
                                    retain: p.retain,
                                    qos: p.qos,
                                    at: Instant::now(),
                                };
                                shared.messages.lock().unwrap().push(r);
                            }
                            Ok(Ok(_)) => {}
                            // Broker away: rumqttc reconnects on the next
                            // poll; pace the attempts.
                            Ok(Err(_)) => std::thread::sleep(Duration::from_millis(50)),
                            // Timeout with nothing to do.
                            Err(rumqttc::RecvTimeoutError::Timeout) => {}
                            Err(rumqttc::RecvTimeoutError::Disconnected) => break,
                        }
                    }
                })
                .expect("spawn subscriber thread")
        };
        MqttSub {
            client,
            shared,
            thread: Some(thread),
            filter: filter.to_string(),
        }
    }

    /// Wait until the broker acknowledged the subscription (the first time).
    pub fn wait_subscribed(&self, timeout: Duration) -> &Self {
        self.wait_subacks(1, timeout)
    }

    /// Wait until the broker acknowledged `n` subscriptions in all (one per
    /// connection whose session the broker had not kept).
    pub fn wait_subacks(&self, n: u64, timeout: Duration) -> &Self {
        super::wait_for(
            timeout,
            &format!("{n} SUBACK(s) for {}", self.filter),
            || (self.shared.subacks.load(Ordering::SeqCst) >= n).then_some(()),
        );
        self
    }

    /// Connections the broker acknowledged so far.
    pub fn connacks(&self) -> u64 {
        self.shared.connacks.load(Ordering::SeqCst)
    }

    /// Subscriptions the broker acknowledged so far.
    pub fn subacks(&self) -> u64 {
        self.shared.subacks.load(Ordering::SeqCst)
    }

    /// A copy of every message received so far, in arrival order.
    pub fn messages(&self) -> Vec<Received> {
        self.shared.messages.lock().unwrap().clone()
    }

    /// Messages whose topic ends with `suffix` (e.g. `/events`).
    pub fn on(&self, suffix: &str) -> Vec<Received> {
        self.messages()
            .into_iter()
            .filter(|m| m.topic.ends_with(suffix))
            .collect()
    }

    /// JSON payloads of messages whose topic ends with `suffix`.
    pub fn json_on(&self, suffix: &str) -> Vec<serde_json::Value> {
        self.on(suffix).iter().map(Received::json).collect()
    }

    /// Forget what was received so far.
    pub fn clear(&self) {
        self.shared.messages.lock().unwrap().clear();
    }

    /// Wait for the first message (received at any time, also before the
    /// call) that satisfies `pred`; panic with `what` after `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Received) -> bool,
    ) -> Received {
        let start = Instant::now();
        loop {
            if let Some(m) = self
                .shared
                .messages
                .lock()
                .unwrap()
                .iter()
                .find(|m| pred(m))
            {
                return m.clone();
            }
            if start.elapsed() > timeout {
                let got: Vec<String> = self
                    .messages()
                    .iter()
                    .rev()
                    .take(20)
                    .map(|m| format!("{} {}", m.topic, m.text()))
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last messages (newest first):\n{}",
                    got.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Like [`MqttSub::wait_for`], on the JSON payloads of topic `suffix`.
    pub fn wait_json(
        &self,
        suffix: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.wait_for(timeout, what, |m| {
            m.topic.ends_with(suffix) && pred(&m.json())
        })
        .json()
    }

    /// Wait until `pred` holds over all messages received so far.
    pub fn wait_until(&self, timeout: Duration, what: &str, pred: impl Fn(&[Received]) -> bool) {
        super::wait_for(timeout, what, || {
            pred(&self.shared.messages.lock().unwrap()).then_some(())
        });
    }

    /// Disconnect and stop the connection thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.client.try_disconnect();
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MqttSub {
    fn drop(&mut self) {
        self.shutdown();
    }
}
