//! The real browser of the web page's tests: Debian's headless chromium
//! driven by a Playwright script (`tests/browser/*.mjs`, run with node and
//! `playwright-core`). A script reports its steps as lines on stdout
//! (`STEP rest…`, or `FAIL why`); [`Script::expect`] waits for one.

use crate::common::{peer_or_skip, repo, which};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// chromium and node, found (or the test skips loudly, failing under
/// `REQUIRE_PEERS=1`).
pub struct Browser {
    chromium: PathBuf,
    node: PathBuf,
}

impl Browser {
    pub fn find() -> Option<Browser> {
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let chromium = peer_or_skip("chromium", which(&chromium), "apt-get install chromium")?;
        let node = peer_or_skip("node", which("node"), "apt-get install nodejs")?;
        let driver = repo().join("tests/browser/node_modules/playwright-core");
        peer_or_skip(
            "playwright-core",
            driver.exists().then_some(()),
            "npm install in tests/browser (scripts/test does it)",
        )?;
        Some(Browser { chromium, node })
    }

    /// Run `tests/browser/{script}` with `args`, then the screenshot
    /// directory `shots` (emptied first).
    pub fn run(&self, script: &str, args: &[&str], shots: &Path) -> Script {
        let _ = std::fs::remove_dir_all(shots);
        let mut child = Command::new(&self.node)
            .arg(repo().join("tests/browser").join(script))
            .args(args)
            .arg(shots)
            .env("CHROMIUM", &self.chromium)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node");
        let (tx, lines) = mpsc::channel::<String>();
        let out = child.stdout.take().expect("the script's stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("browser: {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Script { child, lines }
    }
}

/// A running browser script.
pub struct Script {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Script {
    /// Wait for the line starting with `step`; returns the rest of it,
    /// trimmed. A `FAIL` line or no such line within `timeout` fails the
    /// test.
    pub fn expect(&self, step: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with("FAIL") => panic!("browser: {l}"),
                Ok(l) if l.starts_with(step) => return l[step.len()..].trim().to_string(),
                Ok(_) => {}
                Err(_) => panic!("browser did not report {step} within {timeout:?}"),
            }
        }
    }

    /// Wait for the script to end; it must end well.
    pub fn finish(mut self) {
        let status = self.child.wait().expect("wait for the browser script");
        assert!(status.success(), "browser driver exited with {status}");
    }
}
