//! The uplink over TLS (rustls with ring) with a client certificate and a
//! user name + password, against mosquitto; certificates are generated with
//! the openssl command for each run.

mod common;
#[path = "common/mosquitto.rs"]
mod mosquitto;

use estate_gateway::app::UPLINK_SINK;
use estate_gateway::config::secret::Secret;
use estate_gateway::event::{EventKind, NewEvent, Priority};
use estate_gateway::journal::{Journal, JournalConfig};
use estate_gateway::status::GatewayStatus;
use estate_gateway::uplink::{self, TlsConfig, UplinkConfig, UplinkContext};
use mosquitto::Mosquitto;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("running sh");
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CA, server certificate for 127.0.0.1, client certificate, password file.
fn make_pki(dir: &Path) {
    sh(
        dir,
        r#"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=estate test CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj "/CN=gw-tls" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext 2>/dev/null
mosquitto_passwd -b -c passwd gw-tls 's3cret-pw'
chmod 600 passwd server.key
"#,
    );
}

fn tools_present() -> bool {
    common::which("openssl").is_some() && common::which("mosquitto_passwd").is_some()
}

fn config(port: u16, dir: &Path) -> UplinkConfig {
    UplinkConfig {
        host: "127.0.0.1".into(),
        port: Some(port),
        client_id: None,
        username: Some("gw-tls".into()),
        password: None,
        tls: Some(TlsConfig {
            ca_file: dir.join("ca.pem"),
            cert_file: Some(dir.join("client.pem")),
            key_file: Some(dir.join("client.key")),
        }),
        keepalive: Duration::from_secs(2),
        heartbeat: Duration::from_secs(15),
        end_to_end_ack: false,
        ack_timeout: Duration::from_secs(30),
        inflight: 16,
        telemetry_qos: 0,
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(500),
    }
}

fn start(
    cfg: UplinkConfig,
    password: &str,
    journal: &Journal,
) -> (
    Arc<GatewayStatus>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let status = Arc::new(GatewayStatus::new(0));
    let stop = CancellationToken::new();
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(uplink::run(
        UplinkContext {
            config: cfg,
            password: Some(Secret::new(password)),
            site: "villa-tls".into(),
            gateway: "gw-tls".into(),
            journal: journal.clone(),
            status: status.clone(),
            commands: tx,
        },
        stop.clone(),
    ));
    (status, stop, task)
}

fn broker() -> Option<Mosquitto> {
    let tools = common::peer_or_skip(
        "openssl + mosquitto_passwd",
        tools_present().then_some(()),
        "install openssl and mosquitto-clients",
    );
    tools?;
    Mosquitto::start_with_or_skip(|dir| {
        make_pki(dir);
        format!(
            "cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\nallow_anonymous false\npassword_file {d}/passwd\n",
            d = dir.display()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_over_mutual_tls_with_credentials() {
    let Some(broker) = broker() else {
        return;
    };
    let jdir = tempfile::tempdir().unwrap();
    let journal = Journal::open(
        &JournalConfig {
            path: jdir.path().join("journal"),
            fsync: false,
            ..JournalConfig::default()
        },
        "gw-tls",
        &[UPLINK_SINK],
    )
    .unwrap();
    journal
        .record(vec![NewEvent::system(
            EventKind::GatewayStarted,
            Priority::INFO,
            serde_json::json!({}),
        )])
        .await
        .unwrap();
    let (status, stop, task) = start(config(broker.port(), broker.dir()), "s3cret-pw", &journal);
    let deadline = Instant::now() + Duration::from_secs(15);
    while journal.acked_seq(UPLINK_SINK) < 1 {
        assert!(
            Instant::now() < deadline,
            "nothing delivered over TLS; broker log:\n{}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(status.uplink_connected.load(Ordering::Relaxed));
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_and_recorded_once() {
    let Some(broker) = broker() else {
        return;
    };
    let jdir = tempfile::tempdir().unwrap();
    let journal = Journal::open(
        &JournalConfig {
            path: jdir.path().join("journal"),
            fsync: false,
            ..JournalConfig::default()
        },
        "gw-tls",
        &[UPLINK_SINK],
    )
    .unwrap();
    let (status, stop, task) = start(config(broker.port(), broker.dir()), "wrong", &journal);
    // Several refused attempts (backoff 100..500 ms): one uplink.lost only.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!status.uplink_connected.load(Ordering::Relaxed));
    let events = journal.read_events(0, 100).unwrap();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(&e.payload).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["uplink.lost"], "{kinds:?}");
    let detail = String::from_utf8(events[0].payload.clone()).unwrap();
    assert!(!detail.contains("wrong"), "the password leaked: {detail}");
    stop.cancel();
    task.await.unwrap();
}
