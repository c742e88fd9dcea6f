//! The embedded site broker: rumqttd (MQTT 3.1.1) run by the gateway on
//! `[site_broker.embedded] listen`, for sites without a broker of their own.
//!
//! rumqttd checks user names and passwords against a static table (compared
//! in constant time). When accounts are configured the gateway's own client
//! logs in with a generated account that exists only in memory. rumqttd
//! offers no way to stop it: it lives as long as the process. Starting it
//! again with the same settings (the MQTT device driver restarted by a
//! configuration reload) reuses the running one; other settings on the
//! same address take effect only on a restart of the gateway.

use super::config::EmbeddedBrokerConfig;
use super::MqttError;
use crate::config::secret::Secret;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How the gateway's own client reaches the embedded broker.
#[derive(Clone, Debug)]
pub struct EmbeddedBroker {
    /// Address to connect to (loopback when the broker listens on all addresses).
    pub addr: SocketAddr,
    /// The gateway's own account, when the broker requires one.
    pub login: Option<(String, Secret)>,
}

/// The address a local client connects to for `listen`.
pub fn connect_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'))
        .collect()
}

/// Brokers started by this process, with their settings.
static RUNNING: std::sync::Mutex<Vec<(EmbeddedBrokerConfig, EmbeddedBroker)>> =
    std::sync::Mutex::new(Vec::new());

/// The broker already running on `cfg.listen`, if its settings are `cfg`'s.
fn running(cfg: &EmbeddedBrokerConfig) -> Result<Option<EmbeddedBroker>, MqttError> {
    let running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    match running.iter().find(|(c, _)| c.listen == cfg.listen) {
        Some((c, b)) if c == cfg => Ok(Some(b.clone())),
        Some(_) => Err(MqttError::Embedded(format!(
            "already running on {} with other settings; they take effect when the gateway restarts",
            cfg.listen
        ))),
        None => Ok(None),
    }
}

/// Check, without starting anything, that [`start`] would not fail on
/// `cfg`: the broker already runs with these settings, or its users'
/// password files are readable and its address free.
pub fn check(cfg: &EmbeddedBrokerConfig) -> Result<(), MqttError> {
    if running(cfg)?.is_some() {
        return Ok(());
    }
    for u in &cfg.users {
        u.password.resolve().map_err(|source| MqttError::Secret {
            what: format!("site_broker.embedded user {}", u.username),
            source,
        })?;
    }
    std::net::TcpListener::bind(cfg.listen)
        .map_err(|e| MqttError::Embedded(format!("cannot listen on {}: {e}", cfg.listen)))?;
    Ok(())
}

/// Start the broker and wait until it accepts connections (or reuse the
/// one this process runs with the same settings).
pub async fn start(cfg: &EmbeddedBrokerConfig) -> Result<EmbeddedBroker, MqttError> {
    if let Some(b) = running(cfg)? {
        tracing::info!(listen = %cfg.listen, "embedded site broker already running");
        return Ok(b);
    }
    let mut auth: HashMap<String, String> = HashMap::new();
    for u in &cfg.users {
        let pw = u.password.resolve().map_err(|source| MqttError::Secret {
            what: format!("site_broker.embedded user {}", u.username),
            source,
        })?;
        auth.insert(u.username.clone(), pw.expose().to_string());
    }
    let login = if auth.is_empty() {
        None
    } else {
        let user = format!("estate-gateway-{}", random_hex(8));
        let pw = random_hex(32);
        auth.insert(user.clone(), pw.clone());
        Some((user, Secret::new(pw)))
    };
    // Bind once here for a clear error: rumqttd only logs it in its thread.
    std::net::TcpListener::bind(cfg.listen)
        .map_err(|e| MqttError::Embedded(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = {max_conn}
max_outgoing_packet_count = 200
max_segment_size = 1048576
max_segment_count = 10

[v4.1]
name = "site-broker"
listen = "{listen}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 10000
max_payload_size = {max_payload}
max_inflight_count = 100
dynamic_filters = true
"#,
        max_conn = cfg.max_connections.max(2),
        listen = cfg.listen,
        max_payload = cfg.max_payload_bytes,
    );
    let mut config: rumqttd::Config =
        toml::from_str(&text).map_err(|e| MqttError::Embedded(e.to_string()))?;
    if !auth.is_empty() {
        if let Some(servers) = config.v4.as_mut() {
            for s in servers.values_mut() {
                s.connections.auth = Some(auth.clone());
            }
        }
    }
    std::thread::Builder::new()
        .name("site-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded site broker stopped");
            }
        })
        .map_err(|e| MqttError::Embedded(format!("cannot start its thread: {e}")))?;
    let addr = connect_addr(cfg.listen);
    for _ in 0..250 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            tracing::info!(listen = %cfg.listen, accounts = cfg.users.len(), "embedded site broker running");
            let b = EmbeddedBroker { addr, login };
            RUNNING
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((cfg.clone(), b.clone()));
            return Ok(b);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(MqttError::Embedded(format!(
        "not accepting connections on {addr} after 5 s"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_connects_over_loopback() {
        let a: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        assert_eq!(connect_addr(a), "127.0.0.1:1883".parse().unwrap());
        let a: SocketAddr = "[::]:1884".parse().unwrap();
        assert_eq!(connect_addr(a), "[::1]:1884".parse().unwrap());
        let a: SocketAddr = "192.168.1.10:1883".parse().unwrap();
        assert_eq!(connect_addr(a), a);
    }
}
