//! A config that uses the Raspberry Pi's pins, on a machine without them
//! (or a build without the `gpio` feature): `run` refuses it with a clear
//! message and exit status 2 (systemd does not retry); `check-config`,
//! which may be checking a file for another gateway, warns and passes it.

mod common;

use common::gateway::{run_cli, GatewayProc};
use std::time::Duration;

const CONFIG: &str = r#"
[site]
id = "s"
gateway = "g"

[journal]
path = "@DIR@/journal"

[uplink]
host = "127.0.0.1"
port = 1

[web]
enabled = false

[[devices]]
id = "gw-io"
[devices.gpio]
debounce_s = 0.05

[[devices.points]]
id = "enclosure-tamper"
register = "discrete_input"
address = 17

[[devices.points]]
id = "siren"
register = "coil"
address = 27
writable = true
"#;

fn expected() -> &'static str {
    if cfg!(feature = "gpio") {
        "devices[0].gpio: no Raspberry Pi GPIO on this machine"
    } else {
        "devices[0].gpio: estate-gateway was built without GPIO support (cargo feature `gpio`)"
    }
}

fn on_a_pi() -> bool {
    std::path::Path::new("/dev/gpiomem").exists()
}

#[test]
fn gpio_config_refused_without_gpio() {
    if on_a_pi() {
        eprintln!("*** SKIPPED: this machine has GPIO; the refusal cannot be observed ***");
        return;
    }
    let mut gw = GatewayProc::new("gpio-refused", CONFIG);
    let out = gw.check_config();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let warning = err
        .lines()
        .find(|l| l.starts_with("warning: ") && l.contains(expected()))
        .unwrap_or_else(|| panic!("no warning about GPIO: {err}"));
    assert!(
        warning.contains("gateway.toml:18:"),
        "names the line: {err}"
    );
    assert!(warning.contains("`run` refuses this file here"), "{err}");

    let cfg = gw.config_path().display().to_string();
    let out = run_cli(&["run", "--config", &cfg], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(expected()), "{err}");
    // Nothing was started.
    gw.start();
    assert_eq!(
        gw.wait_exit(Duration::from_secs(30)).and_then(|s| s.code()),
        Some(2)
    );
}
