//! The Debian package: `cargo deb` (from the test build's binary, so it
//! takes seconds) produces a .deb whose file list, conffiles, control data
//! and maintainer scripts are what an install on a Pi needs.
//! `scripts/package` builds the release package the same way.

mod common;

use common::{peer_or_skip, repo, which};
use std::path::{Path, PathBuf};
use std::process::Command;

fn cargo_deb() -> Option<PathBuf> {
    which("cargo-deb").or_else(|| {
        let p = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/cargo-deb");
        p.exists().then_some(p)
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Build the .deb into `out` from the binary this test run built.
fn build_deb(cargo_deb: &Path, out: &Path) -> PathBuf {
    let bin = common::gateway::bin();
    // target/debug/estate-gateway → target
    let target_dir = bin.parent().and_then(Path::parent).expect("target dir");
    run(Command::new(cargo_deb)
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", target_dir)
        .args(["--no-build", "--profile", "dev", "--fast", "--output"])
        .arg(out));
    std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb in the output dir")
}

#[test]
fn deb_contents_and_maintainer_scripts() {
    let Some(cargo_deb) =
        peer_or_skip("cargo-deb", cargo_deb(), "cargo install cargo-deb --locked")
    else {
        return;
    };
    let Some(dpkg_deb) = peer_or_skip("dpkg-deb", which("dpkg-deb"), "Debian package dpkg") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(&cargo_deb, dir.path());

    // File list: path → mode.
    let list = run(Command::new(&dpkg_deb).arg("--contents").arg(&deb));
    let files: Vec<(&str, &str)> = list
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let mode = f.next()?;
            Some((mode, f.last()?))
        })
        .collect();
    let mode_of = |path: &str| {
        files
            .iter()
            .find(|(_, p)| p.trim_start_matches('.') == path)
            .map(|(m, _)| *m)
            .unwrap_or_else(|| panic!("{path} not in the package:\n{list}"))
    };
    assert_eq!(mode_of("/usr/bin/estate-gateway"), "-rwxr-xr-x");
    assert_eq!(
        mode_of("/lib/systemd/system/estate-gateway.service"),
        "-rw-r--r--"
    );
    // The config may name secret files: not world-readable.
    assert_eq!(mode_of("/etc/estate-gateway/gateway.toml"), "-rw-r-----");
    for doc in ["README.md", "configuration.md", "example.toml", "copyright"] {
        mode_of(&format!("/usr/share/doc/estate-gateway/{doc}"));
    }
    // The journal is state, never shipped (an upgrade must not touch it).
    assert!(
        !list.contains("/var/lib/estate-gateway"),
        "state shipped in the package:\n{list}"
    );

    // Control data and maintainer scripts.
    let ctrl = dir.path().join("control");
    run(Command::new(&dpkg_deb)
        .arg("--control")
        .arg(&deb)
        .arg(&ctrl));
    let read = |f: &str| std::fs::read_to_string(ctrl.join(f)).unwrap_or_default();
    assert_eq!(read("conffiles").trim(), "/etc/estate-gateway/gateway.toml");
    let control = read("control");
    assert!(control.contains("Package: estate-gateway"), "{control}");
    assert!(
        control.contains("Depends: ") && control.contains("passwd"),
        "{control}"
    );
    let postinst = read("postinst");
    for needle in [
        "useradd --system",
        "groupadd --system",
        "for g in dialout gpio",
        "install -d -o \"$USER\" -g \"$USER\" -m 0750 \"$STATE\"",
        // The web page's configuration editor writes the file atomically:
        // the group may create files in the directory and write the file.
        "install -d -o root -g \"$USER\" -m 0770 /etc/estate-gateway",
        "chmod 0660 \"$CONF\"",
        "STATE=/var/lib/estate-gateway",
        "enable estate-gateway.service",
        "check-config",
        "systemctl restart estate-gateway.service",
    ] {
        assert!(
            postinst.contains(needle),
            "postinst lacks {needle:?}:\n{postinst}"
        );
    }
    let postrm = read("postrm");
    assert!(postrm.contains("purge)") && postrm.contains("rm -rf /var/lib/estate-gateway"));
    assert!(
        !postrm.contains("userdel"),
        "the system user is kept (Debian policy)"
    );
    let prerm = read("prerm");
    assert!(prerm.contains("\"$1\" = remove") && prerm.contains("stop estate-gateway.service"));
    for script in ["postinst", "prerm", "postrm"] {
        let perms = run(Command::new("stat")
            .args(["-c", "%a"])
            .arg(ctrl.join(script)));
        assert_eq!(perms.trim(), "755", "{script} not executable");
        run(Command::new("sh").arg("-n").arg(ctrl.join(script)));
    }

    // The unit runs the packaged binary on the packaged config.
    let data = dir.path().join("data");
    run(Command::new(&dpkg_deb)
        .arg("--extract")
        .arg(&deb)
        .arg(&data));
    let unit =
        std::fs::read_to_string(data.join("lib/systemd/system/estate-gateway.service")).unwrap();
    assert!(unit.contains(
        "ExecStart=/usr/bin/estate-gateway run --config /etc/estate-gateway/gateway.toml"
    ));
    assert!(unit.contains("StateDirectory=estate-gateway"));
    assert!(unit.contains("User=estate-gateway"));
    assert!(unit.contains("ConfigurationDirectoryMode=0770"), "{unit}");
    assert!(
        unit.contains("ReadWritePaths=/etc/estate-gateway"),
        "{unit}"
    );

    // The shipped config is a commented template: the gateway refuses it
    // with a clear message (exit 2: systemd does not retry) until the
    // technician fills in the site.
    let out = Command::new(common::gateway::bin())
        .arg("check-config")
        .arg(data.join("etc/estate-gateway/gateway.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("site"), "{err}");
}
