//! A real RTSP camera for tests: GStreamer's gst-rtsp-server (through
//! Python GI, `tests/peers/rtsp_server.py`) serving an H.264 test pattern
//! on a free loopback port, optionally with credentials. Runs under the
//! system python (`/usr/bin/python3`), which sees python3-gi.

#![allow(dead_code)]

use crate::common::{free_port, peer_or_skip, repo};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// What the test camera serves.
#[derive(Clone, Debug)]
pub struct RtspOptions {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    /// Frames between keyframes.
    pub keyint: u32,
    /// Mounts `/cam0` … `/cam{n-1}`.
    pub mounts: u32,
    /// Basic-auth credentials the server demands.
    pub credentials: Option<(String, String)>,
}

impl Default for RtspOptions {
    fn default() -> Self {
        RtspOptions {
            width: 640,
            height: 480,
            fps: 15,
            bitrate_kbps: 500,
            keyint: 15,
            mounts: 1,
            credentials: None,
        }
    }
}

/// A running test camera; killed on drop.
pub struct RtspServer {
    child: Option<Child>,
    port: u16,
    opts: RtspOptions,
}

/// The system python, if it has GStreamer's RTSP server bindings.
fn gst_python() -> Option<PathBuf> {
    let py = PathBuf::from("/usr/bin/python3");
    let ok = Command::new(&py)
        .args([
            "-c",
            "import gi; gi.require_version('GstRtspServer', '1.0'); \
             from gi.repository import GstRtspServer, Gst; Gst.init(None); \
             assert Gst.ElementFactory.find('x264enc')",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(py)
}

impl RtspServer {
    /// Start on a free port. `None` when GStreamer is missing (skipped).
    pub fn start(opts: RtspOptions) -> Option<RtspServer> {
        peer_or_skip(
            "gst-rtsp-server",
            gst_python(),
            "apt-get install gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-ugly python3-gi",
        )?;
        let mut s = RtspServer {
            child: None,
            port: free_port(),
            opts,
        };
        s.restart();
        Some(s)
    }

    /// Start again on the same port (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        let o = &self.opts;
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(repo().join("tests/peers/rtsp_server.py"))
            .args(["--port", &self.port.to_string()])
            .args(["--width", &o.width.to_string()])
            .args(["--height", &o.height.to_string()])
            .args(["--fps", &o.fps.to_string()])
            .args(["--bitrate-kbps", &o.bitrate_kbps.to_string()])
            .args(["--keyint", &o.keyint.to_string()])
            .args(["--mounts", &o.mounts.to_string()]);
        if let Some((u, p)) = &o.credentials {
            cmd.args(["--user", u, "--password", p]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn rtsp_server.py");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) if l.starts_with("READY") => {}
            other => {
                let _ = child.kill();
                panic!("rtsp_server.py did not start: {other:?}");
            }
        }
        self.child = Some(child);
    }

    /// Stop the server at once (SIGKILL): the camera "loses power".
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of mount `i` (no credentials).
    pub fn url(&self, i: u32) -> String {
        format!("rtsp://127.0.0.1:{}/cam{i}", self.port)
    }

    /// The server's process id (for CPU and memory figures).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.kill();
    }
}
