//! Semantic checks over a parsed config. Collects every finding.

use super::secret::{Secret, SecretError, SecretSource};
use super::{Config, KeyPath};
use crate::drivers::{PointType, RegisterKind};
use std::collections::{HashMap, HashSet};

pub(super) struct Finding {
    pub key: KeyPath,
    pub message: String,
    pub warning: bool,
    /// Not a problem of the file but of the machine checking it (no GPIO
    /// here): an error for a file this machine is to run, else a warning.
    pub this_machine: bool,
    /// Not a problem of the file but of the environment checking it (a
    /// secret's variable not set in this shell; the service's environment
    /// may set it): an error for a file this machine is to run, else a
    /// warning.
    pub environment: bool,
}

impl Finding {
    pub(super) fn error(key: KeyPath, message: String) -> Finding {
        Finding {
            key,
            message,
            warning: false,
            this_machine: false,
            environment: false,
        }
    }
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn err(&mut self, key: KeyPath, message: impl Into<String>) {
        self.0.push(Finding::error(key, message.into()));
    }
    fn warn(&mut self, key: KeyPath, message: impl Into<String>) {
        self.0.push(Finding {
            warning: true,
            ..Finding::error(key, message.into())
        });
    }
    fn this_machine(&mut self, key: KeyPath, message: impl Into<String>) {
        self.0.push(Finding {
            this_machine: true,
            ..Finding::error(key, message.into())
        });
    }

    /// Read the secret at `key` as `run` will; report why it cannot be.
    /// The messages name the file or the variable, never the value.
    fn secret(&mut self, key: KeyPath, src: &SecretSource) -> Option<Secret> {
        match src.resolve() {
            Ok(s) => Some(s),
            Err(e @ SecretError::EnvMissing(_)) => {
                self.0.push(Finding {
                    environment: true,
                    ..Finding::error(key, e.to_string())
                });
                None
            }
            Err(e) => {
                self.err(key, e.to_string());
                None
            }
        }
    }

    /// `[uplink.tls]` or `[site_broker.tls]` at `key`: both of a client
    /// certificate and key or neither, and material the connection can use,
    /// built by the very function the connection uses.
    fn client_tls(&mut self, key: &KeyPath, tls: &crate::uplink::TlsConfig) {
        let half = match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => Some(("key_file", "cert_file needs key_file")),
            (None, Some(_)) => Some(("cert_file", "key_file needs cert_file")),
            _ => None,
        };
        let checked = match half {
            // The CA is still checked, alone.
            Some((at, message)) => {
                self.err(key.key(at), message);
                crate::uplink::tls::client_config(&crate::uplink::TlsConfig {
                    cert_file: None,
                    key_file: None,
                    ..tls.clone()
                })
            }
            None => crate::uplink::tls::client_config(tls),
        };
        if let Err(crate::uplink::UplinkError::Tls { path, reason }) = checked {
            // One file may serve as two (a combined certificate and key).
            let key_file = tls.key_file.as_ref() == Some(&path);
            let at = if path == tls.ca_file {
                "ca_file"
            } else if key_file && (tls.cert_file.as_ref() != Some(&path) || reason.contains("key"))
            {
                "key_file"
            } else {
                "cert_file"
            };
            self.err(key.key(at), format!("{}: {reason}", path.display()));
        }
    }

    /// `[web.tls]`: both `cert` and `key` or neither (self-signed), and
    /// a pair the web server can use, loaded as the web server loads it.
    fn web_tls(&mut self, key: &KeyPath, tls: &crate::web::tls::WebTlsConfig) {
        use crate::web::tls::TlsError;
        let (cert, pkey) = match (&tls.cert, &tls.key) {
            (Some(c), Some(k)) => (c, k),
            (None, None) => return,
            (Some(_), None) => {
                return self.err(
                    key.key("key"),
                    "`cert` needs `key` (or leave out both for a self-signed certificate)",
                )
            }
            (None, Some(_)) => {
                return self.err(
                    key.key("cert"),
                    "`key` needs `cert` (or leave out both for a self-signed certificate)",
                )
            }
        };
        if let Err(e) = crate::web::tls::load_pair(cert, pkey) {
            let at = match &e {
                TlsError::NoCert(_) => "cert",
                TlsError::Io { path, .. } if path == cert => "cert",
                _ => "key",
            };
            self.err(key.key(at), e.to_string());
        }
    }
}

/// `[a-z0-9-]{1,64}`: ids used in topics, keys and file names.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub(super) const ID_RULE: &str = "must be 1–64 characters of a-z, 0-9 and '-'";

pub(super) fn validate(c: &Config, origins: &super::profiles::Origins) -> Vec<Finding> {
    let mut f = Findings::default();
    let root = KeyPath::root();

    // [site]
    let site = root.key("site");
    if !is_valid_id(&c.site.id) {
        f.err(site.key("id"), format!("{:?} {ID_RULE}", c.site.id));
    }
    if !is_valid_id(&c.site.gateway) {
        f.err(
            site.key("gateway"),
            format!("{:?} {ID_RULE}", c.site.gateway),
        );
    }

    // [log]
    if tracing_subscriber::EnvFilter::try_new(&c.log.level).is_err() {
        f.err(
            root.key("log").key("level"),
            format!(
                "{:?} is not a valid level filter (e.g. \"info\", \"estate_gateway=debug\")",
                c.log.level
            ),
        );
    }

    // [journal]
    let j = root.key("journal");
    if c.journal.max_bytes < 1024 * 1024 {
        f.err(j.key("max_bytes"), "must be at least 1048576 (1 MiB)");
    }
    if c.journal.cache_bytes < 64 * 1024 {
        f.err(j.key("cache_bytes"), "must be at least 65536");
    }
    if c.journal.telemetry_flush.is_zero() {
        f.err(j.key("telemetry_flush_s"), "must be greater than 0");
    }

    // [push]
    for (key, message) in crate::push::config::validate(&c.push, &root.key("push")) {
        f.err(key, message);
    }

    // [uplink]
    let u = root.key("uplink");
    let up = &c.uplink;
    if up.host.trim().is_empty() {
        f.err(u.key("host"), "must not be empty");
    }
    if up.port == Some(0) {
        f.err(u.key("port"), "must be 1–65535");
    }
    if let Some(id) = &up.client_id {
        if id.is_empty() || id.len() > 128 {
            f.err(u.key("client_id"), "must be 1–128 characters");
        }
    }
    let ka = up.keepalive.as_secs_f64();
    if !(1.0..=3600.0).contains(&ka) {
        f.err(u.key("keepalive_s"), "must be between 1 and 3600 seconds");
    } else if ka > 8.0 {
        f.warn(
            u.key("keepalive_s"),
            format!("{ka} s: the platform will see a dead link only after ~{:.0} s (SP6 needs ≤ 20 s; use ≤ 8)", ka * 1.5 + 3.0),
        );
    }
    if up.heartbeat < std::time::Duration::from_secs(1) {
        f.err(u.key("heartbeat_s"), "must be at least 1 (seconds)");
    }
    if up.ack_timeout.is_zero() {
        f.err(u.key("ack_timeout_s"), "must be greater than 0");
    }
    if up.inflight == 0 || up.inflight > 1000 {
        f.err(u.key("inflight"), "must be 1–1000");
    }
    if up.telemetry_qos > 1 {
        f.err(u.key("telemetry_qos"), "must be 0 or 1");
    }
    if up.reconnect_min.is_zero() {
        f.err(u.key("reconnect_min_s"), "must be greater than 0");
    }
    if up.reconnect_max < up.reconnect_min {
        f.err(u.key("reconnect_max_s"), "must be at least reconnect_min_s");
    }
    if let Some(pw) = &up.password {
        if up.username.is_none() {
            f.err(u.key("username"), "a password needs a username");
        }
        f.secret(u.key("password"), pw);
    }
    if let Some(tls) = &up.tls {
        f.client_tls(&u.key("tls"), tls);
    }

    // [site_broker]: its secrets and TLS (the rest is checked with the
    // MQTT devices below).
    if let Some(sb) = &c.site_broker {
        let sk = root.key("site_broker");
        if let Some(pw) = &sb.password {
            f.secret(sk.key("password"), pw);
        }
        match (&sb.tls, &sb.embedded) {
            (Some(tls), None) => f.client_tls(&sk.key("tls"), tls),
            // With the embedded broker, `tls` is refused as not used.
            (_, Some(e)) => {
                for (i, u) in e.users.iter().enumerate() {
                    let key = sk.key("embedded").key("users").index(i).key("password");
                    f.secret(key, &u.password);
                }
            }
            (None, None) => {}
        }
    }

    // [telemetry]
    let t = root.key("telemetry");
    if !(c.telemetry.deadband.is_finite() && c.telemetry.deadband >= 0.0) {
        f.err(t.key("deadband"), "must be a number ≥ 0");
    }
    if c.telemetry.max_interval.is_zero() {
        f.err(t.key("max_interval_s"), "must be greater than 0");
    }
    if c.telemetry.max_points_per_message == 0 {
        f.err(t.key("max_points_per_message"), "must be at least 1");
    }
    if !(0.01..=60.0).contains(&c.telemetry.batch.as_secs_f64()) {
        f.err(
            t.key("batch_s"),
            "must be 0.01–60 seconds (0 would send a message for every change)",
        );
    }

    // [web]
    let w = root.key("web");
    if !(60..=604_800).contains(&c.web.session_idle.as_secs()) {
        f.err(
            w.key("session_idle_s"),
            "must be 60–604800 seconds (1 minute to 7 days)",
        );
    }
    if !(1..=1000).contains(&c.web.login_failures) {
        f.err(
            w.key("login_failures"),
            "must be 1–1000 failed logins before further attempts are refused",
        );
    }
    if !(1.0..=86_400.0).contains(&c.web.login_window.as_secs_f64()) {
        f.err(
            w.key("login_window_s"),
            "must be 1–86400 seconds (0 would never refuse an attempt)",
        );
    }
    if let Some(src) = &c.web.metrics_token {
        match f.secret(w.key("metrics_token"), src) {
            None => {}
            Some(t) if t.expose().chars().count() < crate::web::metrics::MIN_TOKEN_LEN => f.err(
                w.key("metrics_token"),
                format!(
                    "the token must be at least {} characters (e.g. `openssl rand -hex 16`)",
                    crate::web::metrics::MIN_TOKEN_LEN
                ),
            ),
            Some(t) if t.expose().chars().any(|ch| ch.is_whitespace() || ch.is_control()) => f.err(
                w.key("metrics_token"),
                "the token must not contain spaces or control characters (it travels in an HTTP header)",
            ),
            Some(_) => {}
        }
    }
    if let Some(tls) = &c.web.tls {
        f.web_tls(&w.key("tls"), tls);
    }
    if c.web.enabled && c.web.listen.port() < 1024 && c.web.listen.port() != 0 {
        f.warn(
            w.key("listen"),
            format!(
                "port {} is below 1024: the service runs as the unprivileged user estate-gateway without CAP_NET_BIND_SERVICE, so the web page, /healthz and /metrics would not start under it (use a port from 1024 up, e.g. 8443, and forward {} to it if needed)",
                c.web.listen.port(),
                c.web.listen.port()
            ),
        );
    }

    // [[push.channels]] secrets (read at start when pushes are on).
    if c.push.enabled {
        for (i, ch) in c.push.channels.iter().enumerate() {
            let k = root.key("push").key("channels").index(i);
            for (name, src) in [("key", &ch.key), ("secret", &ch.secret)] {
                if let Some(src) = src {
                    f.secret(k.key(name), src);
                }
            }
        }
    }

    // [[cameras]] passwords (read when an enabled camera starts).
    for (i, cam) in c.cameras.iter().enumerate() {
        if let (true, Some(pw)) = (cam.enabled, &cam.password) {
            f.secret(root.key("cameras").index(i).key("password"), pw);
        }
    }

    // [service]
    if !(0.5..=3600.0).contains(&c.service.liveness_grace.as_secs_f64()) {
        f.err(
            root.key("service").key("liveness_grace_s"),
            "must be 0.5–3600 seconds (with less, a loop a little late counts as wedged and the watchdog restarts the gateway)",
        );
    }

    // [[serial_buses]]
    let mut buses = HashSet::new();
    for (i, b) in c.serial_buses.iter().enumerate() {
        let k = root.key("serial_buses").index(i);
        if !is_valid_id(&b.id) {
            f.err(k.key("id"), format!("{:?} {ID_RULE}", b.id));
        } else if !buses.insert(b.id.as_str()) {
            f.err(k.key("id"), format!("duplicate serial bus id {:?}", b.id));
        }
        if b.path.is_empty() {
            f.err(k.key("path"), "must not be empty");
        }
        if !(300..=1_000_000).contains(&b.baud) {
            f.err(
                k.key("baud"),
                format!("{} is not a usable baud rate (300–1000000)", b.baud),
            );
        }
        if !matches!(b.data_bits, 7 | 8) {
            f.err(k.key("data_bits"), "must be 7 or 8");
        }
        if !matches!(b.stop_bits, 1 | 2) {
            f.err(k.key("stop_bits"), "must be 1 or 2");
        }
    }

    // [[devices]]
    let mut device_ids: HashMap<&str, usize> = HashMap::new();
    let mut tcp_units: HashMap<(String, u16, u8), usize> = HashMap::new();
    let mut rtu_units: HashMap<(&str, u8), usize> = HashMap::new();
    for (di, d) in c.devices.iter().enumerate() {
        let k = root.key("devices").index(di);
        if !is_valid_id(&d.id) {
            f.err(k.key("id"), format!("{:?} {ID_RULE}", d.id));
        } else if let Some(prev) = device_ids.insert(d.id.as_str(), di) {
            f.err(
                k.key("id"),
                format!("duplicate device id {:?} (also devices[{prev}])", d.id),
            );
        }
        if let Some(z) = &d.zone {
            if !is_valid_id(z) {
                f.err(k.key("zone"), format!("{z:?} {ID_RULE}"));
            }
        }
        if d.poll_interval.as_millis() < 10 {
            f.err(k.key("poll_interval_s"), "must be at least 0.01");
        }
        if d.timeout.as_millis() < 1 {
            f.err(k.key("timeout_s"), "must be at least 0.001");
        }
        if d.offline_after == 0 {
            f.err(k.key("offline_after"), "must be at least 1");
        }
        for (key, message) in crate::drivers::gpio::validate(d, &k) {
            f.err(key, message);
        }
        if let Some((key, message)) = crate::drivers::gpio::missing_hardware(d, &k) {
            f.this_machine(key, message);
        }
        if d.gpio.is_some() && (d.modbus.is_some() || d.mqtt.is_some()) {
            f.err(
                k.key("gpio"),
                format!(
                    "device {:?} has [devices.gpio] and another protocol section: a device speaks exactly one protocol",
                    d.id
                ),
            );
        }
        match (&d.modbus, &d.mqtt) {
            (None, None) if d.gpio.is_some() => {}
            (None, None) => f.err(
                k.clone(),
                format!(
                    "device {:?} has no protocol section (add [devices.modbus], [devices.mqtt] or [devices.gpio])",
                    d.id
                ),
            ),
            (Some(_), Some(_)) => f.err(
                k.key("mqtt"),
                format!(
                    "device {:?} has both [devices.modbus] and [devices.mqtt]: a device speaks exactly one protocol",
                    d.id
                ),
            ),
            (None, Some(_)) => {}
            (Some(m), None) => {
                let mk = k.key("modbus");
                match (&m.host, &m.bus) {
                    (Some(h), None) => {
                        if h.trim().is_empty() {
                            f.err(mk.key("host"), "must not be empty");
                        }
                        if m.port == 0 {
                            f.err(mk.key("port"), "must be 1–65535");
                        }
                        if let Some(prev) = tcp_units.insert((h.clone(), m.port, m.unit), di) {
                            f.err(
                                mk.key("unit"),
                                format!(
                                    "unit {} at {h}:{} is also devices[{prev}]",
                                    m.unit, m.port
                                ),
                            );
                        }
                    }
                    (None, Some(b)) => {
                        if !buses.contains(b.as_str()) {
                            f.err(mk.key("bus"), format!("no [[serial_buses]] with id {b:?}"));
                        }
                        if m.unit == 0 || m.unit > 247 {
                            f.err(mk.key("unit"), "an RTU slave's unit id must be 1–247");
                        }
                        if let Some(prev) = rtu_units.insert((b.as_str(), m.unit), di) {
                            f.err(
                                mk.key("unit"),
                                format!("unit {} on bus {b:?} is also devices[{prev}]", m.unit),
                            );
                        }
                    }
                    (Some(_), Some(_)) => f.err(
                        mk.key("bus"),
                        "set either host (Modbus TCP) or bus (Modbus RTU), not both",
                    ),
                    (None, None) => f.err(mk.clone(), "set host (Modbus TCP) or bus (Modbus RTU)"),
                }
                if !(1..=125).contains(&m.max_registers_per_read) {
                    f.err(mk.key("max_registers_per_read"), "must be 1–125");
                }
                if !(1..=2000).contains(&m.max_bits_per_read) {
                    f.err(mk.key("max_bits_per_read"), "must be 1–2000");
                }
                if m.backoff_max.is_zero() {
                    f.err(mk.key("backoff_max_s"), "must be greater than 0");
                }
            }
        }
        if let Some(m) = &d.modbus {
            // The same read planner the driver uses: a device it cannot plan
            // would never be polled.
            let points: Vec<(u32, &crate::drivers::PointConfig)> = d
                .points
                .iter()
                .enumerate()
                .filter(|(_, p)| p.register.is_some() && p.address.is_some())
                .map(|(i, p)| (i as u32, &**p))
                .collect();
            if let Err(e) = crate::drivers::modbus::plan::plan(
                &points,
                crate::drivers::modbus::plan::Limits::from_config(m),
            ) {
                f.err(k.key("modbus"), format!("cannot plan reads: {e}"));
            }
        }
        let mut point_ids = HashSet::new();
        for (pi, p) in d.points.iter().enumerate() {
            let pk = origins
                .get(di)
                .map(|o| o.point_key(di, pi))
                .unwrap_or_else(|| k.key("points").index(pi));
            if !is_valid_id(&p.id) {
                f.err(pk.key("id"), format!("{:?} {ID_RULE}", p.id));
            } else if p.id == "comm" {
                f.err(
                    pk.key("id"),
                    "\"comm\" is reserved: `{device}/comm` is the device's communication-loss alarm",
                );
            } else if !point_ids.insert(p.id.as_str()) {
                f.err(
                    pk.key("id"),
                    format!("duplicate point id {:?} in device {:?}", p.id, d.id),
                );
            }
            if let Some(z) = &p.zone {
                if !is_valid_id(z) {
                    f.err(pk.key("zone"), format!("{z:?} {ID_RULE}"));
                }
            }
            if !(p.scale.is_finite() && p.scale != 0.0) {
                f.err(pk.key("scale"), "must be a non-zero number");
            }
            if !p.offset.is_finite() {
                f.err(pk.key("offset"), "must be a number");
            }
            if let Some(db) = p.deadband {
                if !(db.is_finite() && db >= 0.0) {
                    f.err(pk.key("deadband"), "must be a number ≥ 0");
                }
            }
            if d.modbus.is_some() {
                let Some(reg) = p.register else {
                    f.err(
                        pk.clone(),
                        "a Modbus point needs `register` (coil, discrete_input, holding, input)",
                    );
                    continue;
                };
                let Some(addr) = p.address else {
                    f.err(pk.clone(), "a Modbus point needs `address`");
                    continue;
                };
                if reg.is_bit() {
                    if p.kind != PointType::Bool {
                        f.err(
                            pk.key("type"),
                            format!("a {reg:?} point is a bit: type must be \"bool\""),
                        );
                    }
                    if p.bit.is_some() {
                        f.err(
                            pk.key("bit"),
                            "`bit` applies to registers, not to coils or discrete inputs",
                        );
                    }
                } else {
                    match (p.kind, p.bit) {
                        (PointType::Bool, None) => f.err(
                            pk.key("bit"),
                            "a bool point on a register needs `bit` (0–15)",
                        ),
                        (PointType::Bool, Some(b)) if b > 15 => {
                            f.err(pk.key("bit"), "must be 0–15")
                        }
                        (_, Some(_)) if p.kind != PointType::Bool => {
                            f.err(pk.key("bit"), "`bit` is only for type \"bool\"")
                        }
                        _ => {}
                    }
                    if addr as u32 + p.kind.registers() as u32 > 65536 {
                        f.err(pk.key("address"), "value runs past register 65535");
                    }
                }
                if p.writable && matches!(reg, RegisterKind::DiscreteInput | RegisterKind::Input) {
                    f.err(
                        pk.key("writable"),
                        format!("{reg:?} registers are read-only"),
                    );
                }
            }
        }
    }

    // [site_broker], MQTT devices and their points.
    let point_key = |di: usize, pi: usize| {
        origins
            .get(di)
            .map(|o| o.point_key(di, pi))
            .unwrap_or_else(|| root.key("devices").index(di).key("points").index(pi))
    };
    for m in crate::drivers::mqtt::validate(c, &point_key) {
        if m.warning {
            f.warn(m.key, m.message);
        } else {
            f.err(m.key, m.message);
        }
    }

    // [[alarms]]
    let mut keys: HashMap<String, usize> = HashMap::new();
    let mut rules_per_point: HashMap<&str, Vec<usize>> = HashMap::new();
    for (ai, a) in c.alarms.iter().enumerate() {
        let k = root.key("alarms").index(ai);
        let found = a.point.split_once('/').and_then(|(dev, pt)| {
            c.devices
                .iter()
                .find(|d| d.id == dev)
                .and_then(|d| d.points.iter().find(|p| p.id == pt).map(|p| (d, p)))
        });
        let Some((_dev, pt)) = found else {
            f.err(
                k.key("point"),
                format!(
                    "no point {:?} (expected \"device/point\" of a configured point)",
                    a.point
                ),
            );
            continue;
        };
        rules_per_point
            .entry(a.point.as_str())
            .or_default()
            .push(ai);
        if let Some(id) = &a.id {
            if !is_valid_id(id) {
                f.err(k.key("id"), format!("{id:?} {ID_RULE}"));
            }
        }
        let n = a.equals.is_some() as u8 + a.high.is_some() as u8 + a.low.is_some() as u8;
        if n != 1 {
            f.err(k.clone(), "set exactly one of `equals`, `high` or `low`");
        }
        if let Some(v) = &a.equals {
            match v {
                toml::Value::Boolean(_) => {
                    if pt.kind != PointType::Bool {
                        f.err(
                            k.key("equals"),
                            format!("point {:?} is {:?}, not bool", a.point, pt.kind),
                        );
                    }
                }
                toml::Value::Integer(_) | toml::Value::Float(_) => {
                    if pt.kind == PointType::Bool {
                        f.err(
                            k.key("equals"),
                            format!("point {:?} is bool: use true or false", a.point),
                        );
                    }
                }
                _ => f.err(k.key("equals"), "must be true, false or a number"),
            }
        }
        if let Some((key, why)) = never_met(a, pt) {
            f.err(k.key(key), why);
        }
        if (a.high.is_some() || a.low.is_some()) && pt.kind == PointType::Bool {
            f.err(
                k.clone(),
                format!("point {:?} is bool: use `equals`, not a threshold", a.point),
            );
        }
        for (name, v) in [("high", a.high), ("low", a.low)] {
            if let Some(v) = v {
                if !v.is_finite() {
                    f.err(k.key(name), "must be a finite number");
                }
            }
        }
        if !(a.hysteresis.is_finite() && a.hysteresis >= 0.0) {
            f.err(k.key("hysteresis"), "must be a number ≥ 0");
        }
        if let Some(z) = &a.zone {
            if !is_valid_id(z) {
                f.err(k.key("zone"), format!("{z:?} {ID_RULE}"));
            }
        }
        if a.message.trim().is_empty() {
            f.err(k.key("message"), "must not be empty");
        }
        let key = match &a.id {
            Some(id) => format!("{}/{}", a.point, id),
            None => a.point.clone(),
        };
        if let Some(prev) = keys.insert(key.clone(), ai) {
            f.err(k.key("id"), format!("alarm key {key:?} is also alarms[{prev}]: give each rule on a point a distinct `id`"));
        }
    }
    for (key, message) in crate::command::validate(c)
        .into_iter()
        .chain(crate::arming::validate(c))
        .chain(crate::linkage::validate(c))
        .chain(crate::push::notify::validate(c))
        .chain(crate::cameras::config::validate(c))
        .chain(crate::alarm::validate_arming(c))
    {
        f.err(key, message);
    }
    for (point, rules) in rules_per_point {
        if rules.len() > 1 {
            for &ai in &rules {
                if c.alarms[ai].id.is_none() {
                    f.err(
                        root.key("alarms").index(ai).key("point"),
                        format!(
                            "point {point:?} has {} rules: each needs an `id`",
                            rules.len()
                        ),
                    );
                }
            }
        }
    }
    f.0
}

/// A rule on an integer point that no value of the point can meet (the
/// raw type's range, scaled): `equals = 1.5` or `-4` on a `u16`, `high =
/// 70000` on a `u16`. Such an alarm would never be raised.
fn never_met(
    a: &crate::alarm::AlarmRuleConfig,
    pt: &crate::drivers::PointConfig,
) -> Option<(&'static str, String)> {
    let (lo, hi) = pt.kind.int_range()?;
    let ends = [
        lo as f64 * pt.scale + pt.offset,
        hi as f64 * pt.scale + pt.offset,
    ];
    let (min, max) = (ends[0].min(ends[1]), ends[0].max(ends[1]));
    if !(min.is_finite() && max.is_finite()) {
        return None;
    }
    // Scaled values are rounded to the scale's decimals: compare loosely.
    let slack = 1e-9 * max.abs().max(min.abs()).max(1.0);
    let kind = format!("{:?}", pt.kind).to_lowercase();
    let takes = if (pt.scale, pt.offset) == (1.0, 0.0) {
        format!("a {kind} point takes whole numbers from {min} to {max}")
    } else {
        format!(
            "this {kind} point (scale {}, offset {}) takes values from {min} to {max}",
            pt.scale, pt.offset
        )
    };
    if let Some(v) = &a.equals {
        let x = match v {
            toml::Value::Integer(i) => *i as f64,
            toml::Value::Float(x) => *x,
            _ => return None,
        };
        let fraction = (pt.scale, pt.offset) == (1.0, 0.0) && x.fract() != 0.0;
        if fraction || x < min - slack || x > max + slack {
            return Some(("equals", format!("never met: {takes}")));
        }
    }
    if a.high.is_some_and(|h| h >= max - slack) {
        return Some(("high", format!("never met: {takes}, never more than {max}")));
    }
    if a.low.is_some_and(|l| l <= min + slack) {
        return Some(("low", format!("never met: {takes}, never less than {min}")));
    }
    None
}
