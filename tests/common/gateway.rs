//! The real `estate-gateway` binary as a child process, for end-to-end tests.
//!
//! [`GatewayProc::new`] writes the test's config into a fresh temp dir
//! (`@DIR@` in the text becomes that dir, so `[journal] path = "@DIR@/journal"`
//! keeps the journal there) and runs `estate-gateway run --config FILE`, its
//! stdout and stderr appended to `gateway.log` in the same dir. The test can
//! `kill -9` it, stop it with SIGTERM, and start it again on the same journal.
//! When a test fails, the log is copied to `tests/artifacts/` and its tail
//! printed, so a CI failure shows what the daemon did.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary Cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_estate-gateway"))
}

/// Run `estate-gateway ARGS…` to completion (no stdin), with a timeout.
pub fn run_cli(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn estate-gateway");
    let start = Instant::now();
    loop {
        match child.try_wait().expect("wait estate-gateway") {
            Some(_) => return child.wait_with_output().expect("collect output"),
            None if start.elapsed() > timeout => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "estate-gateway {args:?} did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A gateway process and its temp dir (config, journal, log).
pub struct GatewayProc {
    name: String,
    dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
    env: Vec<(String, String)>,
}

impl GatewayProc {
    /// Write `config` (with `@DIR@` replaced by the temp dir) and prepare to
    /// run; nothing is started yet. `name` labels the log in artifacts.
    pub fn new(name: &str, config: &str) -> GatewayProc {
        let dir = tempfile::Builder::new()
            .prefix(&format!("gw-{name}-"))
            .tempdir()
            .expect("temp dir");
        let text = config.replace("@DIR@", &dir.path().display().to_string());
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).expect("write config");
        let log = dir.path().join("gateway.log");
        GatewayProc {
            name: name.to_string(),
            dir,
            config: path,
            log,
            child: None,
            starts: 0,
            env: Vec::new(),
        }
    }

    /// Write the config and start the gateway.
    pub fn start_with(name: &str, config: &str) -> GatewayProc {
        let mut g = GatewayProc::new(name, config);
        g.start();
        g
    }

    /// Set an environment variable for the next starts.
    pub fn env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// The temp dir (`@DIR@`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Replace the config file's text (`@DIR@` substituted); takes effect at
    /// the next start.
    pub fn rewrite_config(&self, config: &str) {
        let text = config.replace("@DIR@", &self.dir.path().display().to_string());
        std::fs::write(&self.config, text).expect("write config");
    }

    /// Start `estate-gateway run --config FILE`. Panics if it is running.
    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "gateway {} is already running",
            self.name
        );
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open gateway log");
        writeln!(log, "===== test harness: start #{} =====", self.starts).unwrap();
        let err = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,estate_gateway=debug");
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.child = Some(cmd.spawn().expect("spawn estate-gateway run"));
    }

    /// Process id of the running gateway.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            None => false,
            Some(c) => match c.try_wait().expect("try_wait") {
                None => true,
                Some(status) => {
                    self.note(&format!("exited by itself: {status}"));
                    self.child = None;
                    false
                }
            },
        }
    }

    /// `kill -9`: the process dies at once, mid-whatever-it-was-doing.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let status = c.wait().expect("wait after SIGKILL");
            self.note(&format!("killed with SIGKILL: {status}"));
        }
    }

    /// Send SIGTERM and wait up to `timeout` for the ordered shutdown.
    /// Returns the exit status; panics if it did not exit in time.
    pub fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("gateway is not running");
        signal(c.id(), "TERM");
        let status = wait_child(&mut c, timeout).unwrap_or_else(|| {
            let _ = c.kill();
            let _ = c.wait();
            self.note("did not exit after SIGTERM: killed");
            panic!(
                "gateway {} did not exit within {timeout:?} of SIGTERM\n{}",
                self.name,
                self.log_tail(60)
            );
        });
        self.note(&format!("stopped with SIGTERM: {status}"));
        status
    }

    /// Wait up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        let status = wait_child(c, timeout)?;
        self.child = None;
        self.note(&format!("exited: {status}"));
        Some(status)
    }

    /// `kill -9`, then start again on the same config and journal.
    pub fn crash_restart(&mut self) {
        self.kill9();
        self.start();
    }

    /// Stop with SIGTERM, then start again on the same config and journal.
    pub fn restart(&mut self, timeout: Duration) {
        self.sigterm(timeout);
        self.start();
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Everything the gateway logged so far, over all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Wait until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        super::wait_for(timeout, &format!("{needle:?} in the gateway log"), || {
            self.log().contains(needle).then_some(())
        });
    }

    /// `estate-gateway journal-info --config FILE` (gateway stopped): the
    /// journal's position and backlog as JSON.
    pub fn journal_info(&self) -> serde_json::Value {
        let cfg = self.config.display().to_string();
        let out = run_cli(&["journal-info", "--config", &cfg], Duration::from_secs(30));
        assert!(
            out.status.success(),
            "journal-info failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "journal-info printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `estate-gateway check-config FILE` on this gateway's config.
    pub fn check_config(&self) -> Output {
        let cfg = self.config.display().to_string();
        run_cli(&["check-config", &cfg], Duration::from_secs(30))
    }

    fn note(&self, what: &str) {
        if let Ok(mut f) = OpenOptions::new().append(true).open(&self.log) {
            let _ = writeln!(f, "===== test harness: {what} =====");
        }
    }

    /// Copy the log to `tests/artifacts/{name}-gateway.log`.
    pub fn save_log(&self) -> Option<PathBuf> {
        let dir = super::repo().join("tests/artifacts");
        std::fs::create_dir_all(&dir).ok()?;
        let dest = dir.join(format!("{}-gateway.log", self.name));
        std::fs::copy(&self.log, &dest).ok()?;
        Some(dest)
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let saved = self.save_log();
            eprintln!(
                "\n----- gateway {} log (last 80 lines; full log: {}) -----\n{}\n-----",
                self.name,
                saved.as_deref().unwrap_or(&self.log).display(),
                self.log_tail(80)
            );
        }
    }
}

/// Send `kill -SIG pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} {pid} failed");
}

fn wait_child(c: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(s) = c.try_wait().expect("try_wait") {
            return Some(s);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A log file handle for peers the tests start (so their output lands next
/// to the gateway's).
pub fn log_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log file")
}
