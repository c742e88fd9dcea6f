//! A small blocking HTTP/1.1 client for the web page's tests: one request
//! per connection (`Connection: close`), a cookie jar of one session
//! cookie, the CSRF header, and an SSE reader. Every response body is kept
//! so a test can scan all of them (secrets must never appear).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Every body any client received, for the secret scan.
pub type Seen = Arc<Mutex<Vec<String>>>;

/// A browser-like client: its session cookie and CSRF token.
pub struct Client {
    pub addr: SocketAddr,
    pub cookie: Option<String>,
    pub csrf: Option<String>,
    pub seen: Seen,
    /// Source address of the client's connections (`None`: the system's
    /// choice). Any of 127.0.0.0/8 stands for another machine.
    pub from: Option<IpAddr>,
}

/// A connection to `to` from `from` (another loopback address: another
/// client machine as far as the server can tell).
pub fn connect_from(to: SocketAddr, from: Option<IpAddr>) -> TcpStream {
    let Some(ip) = from else {
        return TcpStream::connect(to).expect("connect to the web server");
    };
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(ip, 0).into())
        .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    s.connect(&to.into()).expect("connect to the web server");
    s.into()
}

impl Client {
    pub fn new(addr: SocketAddr, seen: &Seen) -> Client {
        Client {
            addr,
            cookie: None,
            csrf: None,
            seen: seen.clone(),
            from: None,
        }
    }

    /// A client on another machine (source address `from`).
    pub fn from(addr: SocketAddr, seen: &Seen, from: IpAddr) -> Client {
        Client {
            from: Some(from),
            ..Client::new(addr, seen)
        }
    }

    /// Send a request. `body` as JSON when `Some`; the CSRF header is sent
    /// when `csrf` is true and the client has a token.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        csrf: bool,
    ) -> Resp {
        let mut s = connect_from(self.addr, self.from);
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        if let Some(c) = &self.cookie {
            req += &format!("Cookie: eg_session={c}\r\n");
        }
        if csrf {
            if let Some(t) = &self.csrf {
                req += &format!("X-CSRF-Token: {t}\r\n");
            }
        }
        if !body.is_empty() {
            req += &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        } else if method != "GET" {
            req += "Content-Length: 0\r\n";
        }
        req += "\r\n";
        req += &body;
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read response");
        let resp = parse(&raw);
        if let Some(set) = resp.header("set-cookie") {
            if let Some(v) = set.strip_prefix("eg_session=") {
                let v = v.split(';').next().unwrap_or("");
                self.cookie = (!v.is_empty()).then(|| v.to_string());
            }
        }
        self.seen.lock().unwrap().push(resp.body.clone());
        resp
    }

    /// Send a POST, wait for `taken_up` (the server is handling it), then
    /// hang up without reading the answer: a client that goes away
    /// mid-request.
    pub fn post_and_hang_up(&self, path: &str, body: &serde_json::Value, taken_up: impl FnOnce()) {
        let mut s = connect_from(self.addr, self.from);
        let body = body.to_string();
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        if let Some(c) = &self.cookie {
            req += &format!("Cookie: eg_session={c}\r\n");
        }
        if let Some(t) = &self.csrf {
            req += &format!("X-CSRF-Token: {t}\r\n");
        }
        req += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        // The request is complete before the hang-up (FIN after it), and
        // the server has taken it up: it is the handler, not the request,
        // that the hang-up must not cut off. (A fixed pause here was too
        // short for a loaded machine: the server had not read the request.)
        let _ = s.shutdown(std::net::Shutdown::Write);
        taken_up();
        let _ = s.shutdown(std::net::Shutdown::Both);
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.send("GET", path, None, false)
    }
    /// A state-changing request with the CSRF token.
    pub fn post(&mut self, path: &str, body: serde_json::Value) -> Resp {
        self.send("POST", path, Some(&body), true)
    }

    /// `POST /api/v1/setup`: the first technician, with the one-time token.
    pub fn setup(&mut self, token: &str, name: &str, password: &str) -> Resp {
        self.send(
            "POST",
            "/api/v1/setup",
            Some(&serde_json::json!({"token": token, "name": name, "password": password})),
            false,
        )
    }

    /// Sign in; keeps the cookie and CSRF token. Returns the response.
    pub fn login(&mut self, name: &str, password: &str) -> Resp {
        let r = self.send(
            "POST",
            "/api/v1/session",
            Some(&serde_json::json!({"name": name, "password": password})),
            false,
        );
        if r.status == 200 {
            self.csrf = r.json()["csrf"].as_str().map(str::to_string);
        }
        r
    }

    /// Open the alarm stream; its `alarms` events arrive on the receiver
    /// with the time they were read.
    pub fn alarm_stream(&self) -> std::sync::mpsc::Receiver<(Instant, serde_json::Value)> {
        let mut s = connect_from(self.addr, self.from);
        let req = format!(
            "GET /api/v1/alarms/stream HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nConnection: close\r\nCookie: eg_session={}\r\n\r\n",
            self.addr,
            self.cookie.as_deref().unwrap_or("")
        );
        s.write_all(req.as_bytes()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let seen = self.seen.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(s);
            let mut event = String::new();
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let l = line.trim_end();
                if let Some(e) = l.strip_prefix("event: ") {
                    event = e.to_string();
                } else if let Some(d) = l.strip_prefix("data: ") {
                    seen.lock().unwrap().push(d.to_string());
                    if event == "alarms" {
                        if let Ok(v) = serde_json::from_str(d) {
                            if tx.send((Instant::now(), v)).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        rx
    }
}

/// A raw HTTP/1.1 response: status, headers, body (de-chunked).
pub fn parse(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
