//! A loopback HTTP/1.1 receiver standing in for a push vendor (WeCom,
//! DingTalk, Feishu, a webhook, an SMS gateway): records every request
//! exactly as it arrived and answers with a fixed body, optionally failing
//! the first N requests with `500`, or refusing requests whose body holds a
//! marker with a given status and body.
//!
//! Include it with `#[path = "common/http_receiver.rs"] mod http_receiver;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// Answered with 500 (one of the first `fail_first`) or refused.
    pub failed: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
    /// A query parameter, still URL-encoded.
    pub fn query(&self, key: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    }
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// A running receiver; stops accepting when dropped.
pub struct Receiver {
    pub port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    /// Listen on a free loopback port; answer `200` with `response` (JSON),
    /// the first `fail_first` requests with `500`.
    pub fn start(response: &str, fail_first: usize) -> Receiver {
        Receiver::start_with(response, fail_first, None)
    }

    /// Like [`Receiver::start`], but a request whose body contains `marker`
    /// is answered with `status` (e.g. `"400 Bad Request"`) and `body`.
    pub fn start_refusing(response: &str, marker: &str, status: &str, body: &str) -> Receiver {
        Receiver::start_with(
            response,
            0,
            Some(Refuse {
                marker: marker.into(),
                status: status.into(),
                body: body.into(),
            }),
        )
    }

    fn start_with(response: &str, fail_first: usize, refuse: Option<Refuse>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let response = response.to_string();
        {
            let requests = requests.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let requests = requests.clone();
                    let seen = seen.clone();
                    let response = response.clone();
                    let refuse = refuse.clone();
                    std::thread::spawn(move || {
                        serve(conn, requests, seen, fail_first, &response, refuse.as_ref())
                    });
                }
            });
        }
        Receiver {
            port,
            requests,
            stop,
        }
    }

    /// `http://127.0.0.1:{port}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request so far.
    pub fn all(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests answered with success.
    pub fn accepted(&self) -> Vec<Request> {
        self.all().into_iter().filter(|r| !r.failed).collect()
    }

    /// Wait until `n` requests were accepted.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let start = Instant::now();
        loop {
            let a = self.accepted();
            if a.len() >= n {
                return a;
            }
            if start.elapsed() > timeout {
                panic!(
                    "receiver on {} got {} accepted requests, wanted {n}: {:#?}",
                    self.port,
                    a.len(),
                    self.all()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Requests to refuse: body contains `marker` → `status`, `body`.
#[derive(Clone, Debug)]
struct Refuse {
    marker: String,
    status: String,
    body: String,
}

fn serve(
    conn: TcpStream,
    requests: Arc<Mutex<Vec<Request>>>,
    seen: Arc<AtomicUsize>,
    fail_first: usize,
    response: &str,
    refuse: Option<&Refuse>,
) {
    let _ = conn.set_nodelay(true);
    let mut out = conn.try_clone().expect("clone stream");
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, target) = (method.to_string(), target.to_string());
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let n = seen.fetch_add(1, Ordering::SeqCst);
        let refused = refuse.filter(|f| {
            String::from_utf8_lossy(&body).contains(&f.marker) || target.contains(&f.marker)
        });
        let failed = n < fail_first || refused.is_some();
        requests.lock().unwrap().push(Request {
            method,
            target,
            headers,
            body,
            at: Instant::now(),
            failed,
        });
        let (status, body) = if let Some(f) = refused {
            (f.status.as_str(), f.body.as_str())
        } else if failed {
            ("500 Internal Server Error", "{\"error\":\"down\"}")
        } else {
            ("200 OK", response)
        };
        let msg = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if out.write_all(msg.as_bytes()).is_err() {
            return;
        }
    }
}
