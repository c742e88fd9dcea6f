//! Helpers for end-to-end tests: real peers on free loopback ports.
//!
//! Peers: mosquitto (MQTT broker), pymodbus (Modbus device simulator, in the
//! venv `scripts/test` creates), socat (pty pairs for RTU). When a peer is
//! missing, [`peer_or_skip`] says so loudly and the test returns early,
//! unless `REQUIRE_PEERS=1`, where it fails.
#![allow(dead_code)]

pub mod gateway;
pub mod mqtt_sub;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free TCP port on 127.0.0.1 for a peer the test starts, that no other
/// test process is handed at the same time.
///
/// Ports come from below the kernel's ephemeral range (32768 and up), so an
/// outgoing connection cannot take one between this call and the peer's
/// bind. Tests run in parallel processes, so each port is reserved by a file
/// in a shared directory; a reservation older than an hour is stale (a run
/// that ended) and is taken over.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    const FIRST: u16 = 20_000;
    const LAST: u16 = 32_000;
    const STALE: Duration = Duration::from_secs(3600);
    let dir = std::env::temp_dir().join("estate-gateway-test-ports");
    std::fs::create_dir_all(&dir).expect("create the port reservation directory");
    let random = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    };
    for _ in 0..10_000 {
        let port = FIRST + (random() % u64::from(LAST - FIRST)) as u16;
        let path = dir.join(port.to_string());
        let stale = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default() > STALE)
            .unwrap_or(false);
        if stale {
            let _ = std::fs::remove_file(&path);
        }
        let reserved = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .is_ok();
        if reserved && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{LAST}");
}

/// True when CI demands every peer (`REQUIRE_PEERS=1`).
pub fn peers_required() -> bool {
    std::env::var("REQUIRE_PEERS")
        .map(|v| v == "1")
        .unwrap_or(false)
}

/// Returns the peer, or: under `REQUIRE_PEERS=1` panics; otherwise prints a
/// loud SKIPPED line and returns `None` so the test can return.
pub fn peer_or_skip<T>(name: &str, found: Option<T>, hint: &str) -> Option<T> {
    match found {
        Some(t) => Some(t),
        None if peers_required() => {
            panic!("peer {name} is missing and REQUIRE_PEERS=1: {hint}")
        }
        None => {
            eprintln!("\n*** SKIPPED: peer {name} is missing ({hint}); run ./scripts/test to install it ***\n");
            None
        }
    }
}

/// An executable on PATH (or at an absolute path), if present.
pub fn which(cmd: &str) -> Option<PathBuf> {
    if cmd.contains('/') {
        return Path::new(cmd).exists().then(|| PathBuf::from(cmd));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(cmd))
            .find(|p| p.is_file())
    })
}

/// The Python with pymodbus: `$GATEWAY_TEST_PYTHON`, else `<repo>/.venv/bin/python`.
pub fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GATEWAY_TEST_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = repo().join(".venv/bin/python");
    p.exists().then_some(p)
}

/// Poll `f` until it returns `Some`, or panic after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = f() {
            return t;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_port(port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
