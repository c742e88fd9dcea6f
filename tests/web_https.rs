//! HTTPS: with `[web.tls]` and no certificate configured, the gateway
//! generates a self-signed one on first start (reused on the next), serves
//! only TLS, and marks the session cookie `Secure`. No peers needed: the
//! uplink just retries against a closed port.

mod common;
#[path = "common/modbus_sim.rs"]
#[allow(unused)]
mod modbus_sim;
#[path = "common/mosquitto.rs"]
#[allow(unused)]
mod mosquitto;
#[path = "web/peers.rs"]
#[allow(unused)]
mod peers;

use common::gateway::GatewayProc;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

const PW: &str = "tech-passw0rd-long";

fn config(web_port: u16) -> String {
    format!(
        r#"
[site]
id = "tls"
gateway = "gw"

[log]
level = "info"
format = "text"

[journal]
path = "@DIR@/journal"

[uplink]
host = "127.0.0.1"
port = {closed}
reconnect_min_s = 1
reconnect_max_s = 5

[web]
listen = "127.0.0.1:{web_port}"

[web.tls]
"#,
        closed = common::free_port()
    )
}

/// One request over TLS, trusting exactly `cert_pem`.
fn https(addr: SocketAddr, cert_pem: &[u8], req: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &cert_pem[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn https_with_a_generated_certificate() {
    let port = common::free_port();
    let mut gw = GatewayProc::new("web-https", &config(port));
    peers::add_user_cli(&gw, "wang", "technician", PW);
    gw.start();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    common::wait_for(Duration::from_secs(20), "web server", || {
        TcpStream::connect(addr).ok()
    });
    let cert_path = gw.dir().join("journal/web-tls.crt");
    let cert = std::fs::read(&cert_path).expect("generated certificate");
    gw.wait_log("web server certificate", Duration::from_secs(5));

    let health = https(
        addr,
        &cert,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let body = format!(r#"{{"name":"wang","password":"{PW}"}}"#);
    let login = https(
        addr,
        &cert,
        &format!(
            "POST /api/v1/session HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(login.starts_with("HTTP/1.1 200"), "{login}");
    let cookie = login
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }

    // Plain HTTP is not served.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = plain.read_to_end(&mut out);
    assert!(!String::from_utf8_lossy(&out).contains("200 OK"));

    // The certificate is kept across restarts.
    gw.restart(Duration::from_secs(20));
    common::wait_for(Duration::from_secs(20), "web server again", || {
        TcpStream::connect(addr).ok()
    });
    assert_eq!(std::fs::read(&cert_path).unwrap(), cert);
    let again = https(
        addr,
        &cert,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
}
