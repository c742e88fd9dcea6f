//! Checks of the MQTT sections, called from the config validator: the site
//! broker, MQTT devices, and which point keys belong to which protocol.

use super::payload::{self, Path};
use crate::config::{Config, KeyPath};

/// One problem (or, with `warning`, a doubtful setting).
#[derive(Clone, Debug, PartialEq)]
pub struct MqttFinding {
    pub key: KeyPath,
    pub message: String,
    pub warning: bool,
}

fn is_loopback(addr: &std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Check `[site_broker]` and every MQTT device. `point_key(device, point)`
/// names where a point is defined (a device or its profile).
pub fn validate(c: &Config, point_key: &dyn Fn(usize, usize) -> KeyPath) -> Vec<MqttFinding> {
    let mut out = Vec::new();
    let mut err = |key: KeyPath, message: String| {
        out.push(MqttFinding {
            key,
            message,
            warning: false,
        })
    };
    let mut warnings = Vec::new();
    let root = KeyPath::root();
    let sk = root.key("site_broker");
    if let Some(sb) = &c.site_broker {
        match (&sb.host, &sb.embedded) {
            (Some(_), Some(_)) => err(
                sk.key("host"),
                "set host (an existing broker) or [site_broker.embedded], not both".into(),
            ),
            (None, None) => err(
                sk.clone(),
                "set host (an existing broker) or [site_broker.embedded]".into(),
            ),
            (Some(h), None) if h.trim().is_empty() => {
                err(sk.key("host"), "must not be empty".into())
            }
            _ => {}
        }
        if sb.port == Some(0) {
            err(sk.key("port"), "must be 1–65535".into());
        }
        if let Some(id) = &sb.client_id {
            if id.is_empty() || id.len() > 128 {
                err(sk.key("client_id"), "must be 1–128 characters".into());
            }
        }
        if !(1.0..=3600.0).contains(&sb.keepalive.as_secs_f64()) {
            err(
                sk.key("keepalive_s"),
                "must be between 1 and 3600 seconds".into(),
            );
        }
        if sb.reconnect_min.is_zero() {
            err(sk.key("reconnect_min_s"), "must be greater than 0".into());
        }
        if sb.reconnect_max < sb.reconnect_min {
            err(
                sk.key("reconnect_max_s"),
                "must be at least reconnect_min_s".into(),
            );
        }
        if sb.qos > 1 {
            err(sk.key("qos"), "must be 0 or 1".into());
        }
        // The secrets and `[site_broker.tls]` are read by the config
        // validator, as `[uplink]`'s.
        if sb.password.is_some() && sb.username.is_none() {
            err(sk.key("username"), "a password needs a username".into());
        }
        if let Some(e) = &sb.embedded {
            let ek = sk.key("embedded");
            for (name, set) in [
                ("username", sb.username.is_some()),
                ("password", sb.password.is_some()),
                ("tls", sb.tls.is_some()),
                ("port", sb.port.is_some()),
            ] {
                if set {
                    err(
                        sk.key(name),
                        "not used with [site_broker.embedded] (the gateway connects to its own broker)".into(),
                    );
                }
            }
            if !is_loopback(&e.listen) && e.users.is_empty() {
                err(
                    ek.key("listen"),
                    format!(
                        "{} is reachable from the network: add [[site_broker.embedded.users]] (authentication is required off loopback)",
                        e.listen
                    ),
                );
            }
            if e.listen.port() == 0 {
                err(ek.key("listen"), "needs a port (1–65535)".into());
            }
            if e.max_connections == 0 {
                err(ek.key("max_connections"), "must be at least 1".into());
            }
            if e.max_payload_bytes < 16 {
                err(ek.key("max_payload_bytes"), "must be at least 16".into());
            }
            let mut names = std::collections::HashSet::new();
            for (i, u) in e.users.iter().enumerate() {
                let uk = ek.key("users").index(i);
                if u.username.is_empty() {
                    err(uk.key("username"), "must not be empty".into());
                } else if !names.insert(u.username.as_str()) {
                    err(
                        uk.key("username"),
                        format!("duplicate user {:?}", u.username),
                    );
                }
            }
        }
    }

    for (di, d) in c.devices.iter().enumerate() {
        let k = root.key("devices").index(di);
        let Some(m) = &d.mqtt else {
            // Modbus (or no protocol): MQTT point tables do not belong here.
            if d.modbus.is_some() {
                for (pi, p) in d.points.iter().enumerate() {
                    if p.mqtt.is_some() {
                        err(
                            point_key(di, pi).key("mqtt"),
                            format!(
                                "[devices.points.mqtt] is for MQTT devices; device {:?} speaks Modbus (use register/address)",
                                d.id
                            ),
                        );
                    }
                }
            }
            continue;
        };
        if d.modbus.is_some() {
            // Reported by the common device checks.
            continue;
        }
        let mk = k.key("mqtt");
        if c.site_broker.is_none() {
            err(
                mk.clone(),
                format!(
                    "device {:?} speaks MQTT but there is no [site_broker]",
                    d.id
                ),
            );
        }
        if let Some(prefix) = &m.topic_prefix {
            if !payload::valid_topic(prefix) || prefix.ends_with('/') {
                err(
                    mk.key("topic_prefix"),
                    format!("{prefix:?} is not a topic (no wildcards, no trailing '/')"),
                );
            }
        }
        if let Some(t) = &m.status_topic {
            if !payload::valid_topic(t) {
                err(
                    mk.key("status_topic"),
                    format!("{t:?} is not a topic (no wildcards)"),
                );
            }
        }
        if let Err(e) = Path::parse(m.status_path.as_deref()) {
            err(mk.key("status_path"), e.to_string());
        }
        if m.online_value.eq_ignore_ascii_case(&m.offline_value) {
            err(
                mk.key("offline_value"),
                "must differ from online_value".into(),
            );
        }
        if m.status_topic.is_none() && m.silence_timeout.is_none() {
            warnings.push(MqttFinding {
                key: mk.clone(),
                message: format!(
                    "device {:?} has neither status_topic nor silence_timeout_s: its loss would go unnoticed",
                    d.id
                ),
                warning: true,
            });
        }
        if let Some(t) = &m.command_topic {
            check_template(&mut err, mk.key("command_topic"), t);
        }
        for (pi, p) in d.points.iter().enumerate() {
            let pk = point_key(di, pi);
            for (name, set) in [
                ("register", p.register.is_some()),
                ("address", p.address.is_some()),
                ("bit", p.bit.is_some()),
                ("byte_order", p.byte_order.is_some()),
                ("word_order", p.word_order.is_some()),
            ] {
                if set {
                    err(
                        pk.key(name),
                        format!(
                            "`{name}` is a Modbus key; device {:?} speaks MQTT (use [devices.points.mqtt] topic/filter/path)",
                            d.id
                        ),
                    );
                }
            }
            let Some(pm) = &p.mqtt else {
                err(
                    pk.clone(),
                    "an MQTT point needs [devices.points.mqtt] with `topic` or `filter`".into(),
                );
                continue;
            };
            let qk = pk.key("mqtt");
            match (&pm.topic, &pm.filter) {
                (Some(_), Some(_)) => {
                    err(qk.key("filter"), "set `topic` or `filter`, not both".into())
                }
                (None, None) => err(
                    qk.clone(),
                    "set `topic` (after topic_prefix) or `filter`".into(),
                ),
                (Some(t), None) => {
                    let full = match &m.topic_prefix {
                        Some(prefix) => format!("{prefix}/{t}"),
                        None => t.clone(),
                    };
                    if !payload::valid_filter(&full) {
                        err(
                            qk.key("topic"),
                            format!("{full:?} is not a valid topic filter"),
                        );
                    }
                }
                (None, Some(f)) => {
                    if !payload::valid_filter(f) {
                        err(
                            qk.key("filter"),
                            format!("{f:?} is not a valid topic filter"),
                        );
                    }
                }
            }
            if let Err(e) = Path::parse(pm.path.as_deref()) {
                err(qk.key("path"), e.to_string());
            }
            if let Some(t) = &pm.command_topic {
                check_template(&mut err, qk.key("command_topic"), t);
            }
            if p.writable && pm.command_topic.is_none() && m.command_topic.is_none() {
                err(
                    pk.key("writable"),
                    "a writable MQTT point needs a command_topic (on the point's [devices.points.mqtt] or the device's [devices.mqtt])".into(),
                );
            }
        }
    }
    out.extend(warnings);
    out
}

fn check_template(err: &mut impl FnMut(KeyPath, String), key: KeyPath, t: &str) {
    let sample = payload::command_topic(t, "device", "point");
    if !payload::valid_topic(&sample) || sample.contains(['{', '}']) {
        err(
            key,
            format!("{t:?} is not a topic template (no wildcards; placeholders {{device}} and {{point}})"),
        );
    }
}
