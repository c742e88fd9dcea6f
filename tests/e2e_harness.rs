//! Checks of the end-to-end harness itself, so a scenario that fails in CI
//! points at the product, not at the test machine: the broker keeps a
//! persistent subscriber's session across a restart (the broker-outage
//! scenario relies on it), and the subscriber helper reconnects by itself.

mod common;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use common::mqtt_sub::MqttSub;
use common::{peer_or_skip, which};
use mosquitto::Mosquitto;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Publish one QoS 1 message with `mosquitto_pub`.
fn publish(port: u16, topic: &str, payload: &str) {
    let bin = which("mosquitto_pub").expect("mosquitto_pub");
    let status = Command::new(bin)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", payload])
        .stdin(Stdio::null())
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success(), "mosquitto_pub failed: {status}");
}

#[test]
fn persistent_subscriber_misses_nothing_across_a_broker_restart() {
    let Some(mut broker) = Mosquitto::start_or_skip() else {
        return;
    };
    if peer_or_skip(
        "mosquitto_pub",
        which("mosquitto_pub"),
        "apt-get install mosquitto-clients",
    )
    .is_none()
    {
        return;
    }
    let port = broker.port();
    let sub = MqttSub::persistent(port, "harness/#", "harness-persistent");
    sub.wait_subscribed(Duration::from_secs(10));
    publish(port, "harness/a", "before");
    sub.wait_for(
        Duration::from_secs(10),
        "the message before the restart",
        |m| m.text() == "before",
    );

    // The subscriber leaves (its session stays), the broker restarts, a
    // message comes while the subscriber is away: only a session the broker
    // persisted across its restart can hold it.
    sub.stop();
    broker.stop();
    broker.start();
    publish(port, "harness/b", "while-away");
    let back = MqttSub::persistent(port, "harness/#", "harness-persistent");
    back.wait_for(
        Duration::from_secs(20),
        "the message published while the subscriber was away",
        |m| m.text() == "while-away",
    );
    // The session and its subscription survived: no new SUBSCRIBE was needed.
    assert_eq!(back.subacks(), 0, "the broker lost the session");
    assert_eq!(back.connacks(), 1);
}

#[test]
fn clean_subscriber_resubscribes_after_a_broker_restart() {
    let Some(mut broker) = Mosquitto::start_or_skip() else {
        return;
    };
    if peer_or_skip(
        "mosquitto_pub",
        which("mosquitto_pub"),
        "apt-get install mosquitto-clients",
    )
    .is_none()
    {
        return;
    }
    let port = broker.port();
    let sub = MqttSub::start(port, "harness/#");
    sub.wait_subscribed(Duration::from_secs(10));
    broker.stop();
    broker.start();
    // A clean session is gone after the restart: the helper subscribes again.
    sub.wait_subacks(2, Duration::from_secs(20));
    publish(port, "harness/c", "after");
    let m = sub.wait_for(
        Duration::from_secs(10),
        "a message after the restart",
        |m| m.text() == "after",
    );
    assert_eq!(m.topic, "harness/c");
    assert!(!m.retain);
}
