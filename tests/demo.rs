//! The README's first command: `estate-gateway demo` runs the whole product
//! on one machine (simulated devices, embedded platform broker, gateway) and
//! shows alarms arriving at the platform.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn demo_shows_alarms_arriving_at_the_platform() {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_estate-gateway"))
        .args(["demo", "--duration-s", "12"])
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "demo did not stop on time"
    );
    for want in [
        "status: online",
        "gateway.started",
        "alarm.raised",
        "fence-north/zone-",
        "gateway.stopped",
        "status: offline",
    ] {
        assert!(
            stdout.contains(want),
            "demo output lacks {want:?}:\n{stdout}"
        );
    }
    assert!(!stderr.contains("ERROR"), "errors in the demo:\n{stderr}");
}
