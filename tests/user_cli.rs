//! `estate-gateway user …` and `journal-info`, the real binary. Run as
//! root (`sudo`, as the docs say), they act as the owner of the state
//! directory, so the running gateway (the service's user) can read the
//! accounts and open its journal; they never make the state directory or
//! the journal; a secret set only in the service's environment does not
//! stop them (`user` reads only `[journal] path`).
//!
//! The root tests stand `nobody` (65534) in for the service's user and skip
//! loudly when not run as root (they fail instead under `REQUIRE_PEERS=1`).
//! The decision itself is unit-tested in `web::auth::owner`.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Stands in for the `estate-gateway` service user.
const SERVICE: u32 = 65534;
const PW: &str = "tech-passw0rd-long";

fn root_or_skip() -> Option<()> {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    common::peer_or_skip(
        "root",
        root.then_some(()),
        "run as root: the test checks what `sudo estate-gateway user add` leaves behind",
    )
}

/// `estate-gateway user ARGS… --config CONFIG`, `stdin` as the password,
/// as `uid` (this process's user if `None`).
fn user_cmd(args: &[&str], config: &Path, stdin: &str, uid: Option<u32>) -> Output {
    let mut all = vec!["user"];
    all.extend_from_slice(args);
    cli(&all, config, stdin, uid)
}

/// `estate-gateway ARGS… --config CONFIG`, `stdin` as its input, as `uid`
/// (this process's user if `None`).
fn cli(args: &[&str], config: &Path, stdin: &str, uid: Option<u32>) -> Output {
    let mut cmd = Command::new(common::gateway::bin());
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let mut child = cmd.spawn().expect("spawn estate-gateway");
    // A command that refuses before reading its input (or never reads it)
    // may be gone already: the write then fails with a broken pipe, which
    // is fine.
    if let Err(e) = writeln!(child.stdin.take().unwrap(), "{stdin}") {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A directory tree the service user can walk into (a temp dir is 0700),
/// and a config whose journal is `<base>/state/journal`. The uplink
/// password comes from an environment variable set nowhere here.
struct Install {
    base: tempfile::TempDir,
}

impl Install {
    fn new() -> Install {
        let base = tempfile::tempdir().unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = format!(
            r#"
[site]
id = "s1"
gateway = "gw1"

[journal]
path = "{}/state/journal"

[uplink]
host = "127.0.0.1"
port = 1
username = "gw1"
password = {{ env = "ESTATE_GATEWAY_TEST_UPLINK_PASSWORD_NEVER_SET" }}
"#,
            base.path().display()
        );
        std::fs::write(base.path().join("gateway.toml"), cfg).unwrap();
        Install { base }
    }
    fn config(&self) -> PathBuf {
        self.base.path().join("gateway.toml")
    }
    fn state(&self) -> PathBuf {
        self.base.path().join("state")
    }
    fn journal(&self) -> PathBuf {
        self.state().join("journal")
    }
    /// The state directory as the package makes it: the service's, 0750.
    fn make_state(&self) {
        std::fs::create_dir(self.state()).unwrap();
        std::os::unix::fs::chown(self.state(), Some(SERVICE), Some(SERVICE)).unwrap();
        std::fs::set_permissions(self.state(), std::fs::Permissions::from_mode(0o750)).unwrap();
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn owner_and_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o777)
}

#[test]
fn user_add_as_root_leaves_what_the_service_can_use() {
    if root_or_skip().is_none() {
        return;
    }
    let install = Install::new();
    // Installed, never started: no journal directory yet.
    install.make_state();
    let out = user_cmd(
        &["add", "wang", "--role", "technician"],
        &install.config(),
        PW,
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // Only the accounts directory and file, both the service's.
    assert_eq!(names(&install.state()), ["journal"]);
    assert_eq!(names(&install.journal()), ["web-users.json"]);
    assert_eq!(
        owner_and_mode(&install.journal()),
        (SERVICE, SERVICE, 0o750)
    );
    assert_eq!(
        owner_and_mode(&install.journal().join("web-users.json")),
        (SERVICE, SERVICE, 0o600)
    );

    // The service's user reads the accounts (as the running gateway does).
    let out = user_cmd(&["list"], &install.config(), "", Some(SERVICE));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("wang\tTechnician"));

    // A second account, the file now there: still the service's.
    let out = user_cmd(
        &["add", "li", "--role", "guard"],
        &install.config(),
        "guard-passw0rd-long",
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        owner_and_mode(&install.journal().join("web-users.json")),
        (SERVICE, SERVICE, 0o600)
    );
    assert_eq!(names(&install.journal()), ["web-users.json"]);
    let out = user_cmd(&["list"], &install.config(), "", Some(SERVICE));
    assert!(String::from_utf8_lossy(&out.stdout).contains("li\tGuard"));
}

#[test]
fn user_add_as_root_does_not_make_the_state_directory() {
    if root_or_skip().is_none() {
        return;
    }
    let install = Install::new();
    let out = user_cmd(
        &["add", "wang", "--role", "technician"],
        &install.config(),
        PW,
        None,
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("does not exist yet"), "{err}");
    assert!(err.contains("install -d -o estate-gateway"), "{err}");
    assert!(!install.state().exists(), "nothing made");
    // Listing needs nothing and makes nothing.
    let out = user_cmd(&["list"], &install.config(), "", None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!install.state().exists());
}

#[test]
fn user_add_as_root_names_the_fix_for_files_root_left_behind() {
    if root_or_skip().is_none() {
        return;
    }
    let install = Install::new();
    install.make_state();
    // What an older version, run with sudo, left.
    std::fs::create_dir(install.journal()).unwrap();
    std::fs::write(
        install.journal().join("web-users.json"),
        r#"{"version":1,"users":[]}"#,
    )
    .unwrap();
    let out = user_cmd(
        &["add", "wang", "--role", "technician"],
        &install.config(),
        PW,
        None,
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    let fix = format!(
        "chown -R {SERVICE}:{SERVICE} {}",
        install.journal().display()
    );
    assert!(err.contains(&fix), "{err}");
    // Done as told, the command works and the service can read the result.
    let out = Command::new("chown")
        .arg("-R")
        .arg(format!("{SERVICE}:{SERVICE}"))
        .arg(install.journal())
        .status()
        .unwrap();
    assert!(out.success());
    let out = user_cmd(
        &["add", "wang", "--role", "technician"],
        &install.config(),
        PW,
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = user_cmd(&["list"], &install.config(), "", Some(SERVICE));
    assert!(String::from_utf8_lossy(&out.stdout).contains("wang\tTechnician"));
}

#[test]
fn user_commands_need_no_secret_and_no_valid_rest_of_the_file() {
    // Runs as anyone: the state directory is the caller's own.
    let install = Install::new();
    std::fs::create_dir(install.state()).unwrap();
    let mut cfg = std::fs::read_to_string(install.config()).unwrap();
    cfg.push_str("\n[web]\nsession_idle_s = \"not a number\"\n");
    std::fs::write(install.config(), cfg).unwrap();
    let check = common::gateway::run_cli(
        &["check-config", &install.config().display().to_string()],
        std::time::Duration::from_secs(20),
    );
    assert!(!check.status.success(), "the file is not valid to run");
    let out = user_cmd(
        &["add", "wang", "--role", "technician"],
        &install.config(),
        PW,
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = user_cmd(&["list"], &install.config(), "", None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("wang\tTechnician"));
}

/// `estate-gateway journal-info --config CONFIG` as `uid` (this process's
/// user if `None`).
fn journal_info(config: &Path, uid: Option<u32>) -> Output {
    cli(&["journal-info"], config, "", uid)
}

/// Every file and directory under `dir`, with its owner's uid.
fn owners_under(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push((p.clone(), std::fs::symlink_metadata(&p).unwrap().uid()));
        if p.is_dir() {
            out.extend(owners_under(&p));
        }
    }
    out
}

#[test]
fn journal_info_as_root_leaves_the_journal_the_services() {
    if root_or_skip().is_none() {
        return;
    }
    let install = Install::new();
    install.make_state();
    // Without a journal: refused, and none made (as root, too).
    let out = journal_info(&install.config(), None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no journal at"), "{}", stderr(&out));
    assert_eq!(names(&install.state()), Vec::<String>::new());

    // The journal directory as the running gateway makes it.
    std::fs::create_dir(install.journal()).unwrap();
    std::os::unix::fs::chown(install.journal(), Some(SERVICE), Some(SERVICE)).unwrap();
    std::fs::set_permissions(install.journal(), std::fs::Permissions::from_mode(0o750)).unwrap();
    // As root (sudo), with the uplink password set only in the service's
    // environment: it reads the journal and every file it leaves is the
    // service's.
    let out = journal_info(&install.config(), None);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["last_seq"], 0, "{info}");
    let owned = owners_under(&install.journal());
    assert!(!owned.is_empty(), "the journal's files were made");
    for (p, uid) in &owned {
        assert_eq!(*uid, SERVICE, "{} left owned by uid {uid}", p.display());
    }
    // The service's user opens it afterwards (as the gateway would).
    let out = journal_info(&install.config(), Some(SERVICE));
    assert!(out.status.success(), "{}", stderr(&out));
}
