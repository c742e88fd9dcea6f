//! The accept loop, for plain HTTP and HTTPS alike: each connection is
//! served by hyper's HTTP/1 connection (after a TLS handshake with
//! `[web.tls]`) under limits that a stranger on the network cannot
//! exhaust.
//!
//! - **Header timeout**: a request's head must arrive in full within
//!   [`Limits::header_timeout`]. hyper starts this timer whenever the
//!   connection waits for a request head — right after the connection
//!   opens and again after each response — so it is also the idle
//!   timeout of a kept-alive connection. It never runs while a response
//!   is being sent: the live alarm stream (SSE) is one long response and
//!   is not cut.
//! - **Body deadline**: a request's body must arrive in full within
//!   [`Limits::body_timeout`] of its head; a body sent a byte at a time
//!   fails its read, and the connection closes.
//! - **TLS handshake timeout** ([`Limits::tls_handshake`]).
//! - **Connection caps**: at most [`Limits::max_per_address`] connections
//!   from one client address and [`Limits::max_connections`] in all. A
//!   connection over either cap is closed at once (and logged, at most
//!   once a minute), so the listen backlog never fills with them: one
//!   machine holding connections open cannot keep the page, `/healthz` or
//!   `/metrics` from anybody else, nor use up the file descriptors that
//!   the journal, Modbus links and cameras share.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// How long requests in progress may finish after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What one client, and all of them together, may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest wait for a request's head, from when the connection starts
    /// waiting for it (also how long a kept-alive connection may idle).
    pub header_timeout: Duration,
    /// Longest wait for a request's whole body, from when its head has
    /// arrived.
    pub body_timeout: Duration,
    /// Longest TLS handshake.
    pub tls_handshake: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one client address.
    pub max_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            // The largest bodies are configuration files (axum refuses
            // bodies over 2 MB): seconds even on a poor Wi-Fi link.
            body_timeout: Duration::from_secs(30),
            tls_handshake: Duration::from_secs(10),
            max_connections: 256,
            // A browser opens up to 6 connections per host, plus the
            // alarm stream; a gatehouse PC may run a few browsers.
            max_per_address: 32,
        }
    }
}

/// Open connections per client address.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

/// One counted connection; uncounted when dropped.
struct Slot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    fn take(table: &Arc<PerAddress>, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut m = table.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Logs refused connections at most once a minute, with how many.
struct RefusedLog {
    last: Option<Instant>,
    since: u64,
}

impl RefusedLog {
    fn note(&mut self, peer: SocketAddr, why: &'static str, now: Instant) {
        self.since += 1;
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(60))
        {
            return;
        }
        tracing::warn!(%peer, reason = why, refused = self.since, "web connections refused (counted since the last such line)");
        self.last = Some(now);
        self.since = 0;
    }
}

/// Serve `app` on `listener` until `shutdown` (over TLS when `tls`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let per_address = Arc::new(PerAddress::default());
    let mut refused = RefusedLog {
        last: None,
        since: 0,
    };
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some.
                    tracing::warn!(error = %e, "web accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = shutdown.cancelled() => break,
        };
        while conns.try_join_next().is_some() {}
        if conns.len() >= limits.max_connections {
            refused.note(peer, "too many connections", Instant::now());
            continue;
        }
        let ip = peer.ip().to_canonical();
        let Some(slot) = PerAddress::take(&per_address, ip, limits.max_per_address) else {
            refused.note(
                peer,
                "too many connections from this address",
                Instant::now(),
            );
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let stop = shutdown.clone();
        conns.spawn(async move {
            let _slot = slot;
            match acceptor {
                None => serve_connection(tcp, peer, app, limits, stop).await,
                Some(acceptor) => {
                    let stream = tokio::select! {
                        r = tokio::time::timeout(limits.tls_handshake, acceptor.accept(tcp)) => match r {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        },
                        _ = stop.cancelled() => return,
                    };
                    serve_connection(stream, peer, app, limits, stop).await
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("web clients still connected at shutdown; closing them");
        conns.abort_all();
    }
}

/// One connection's requests, until it closes or `stop`.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let req = req.map(|body| {
            if http_body::Body::is_end_stream(&body) {
                axum::body::Body::new(body)
            } else {
                axum::body::Body::new(DeadlineBody {
                    inner: body,
                    deadline: Box::pin(tokio::time::sleep(limits.body_timeout)),
                })
            }
        });
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        // Without a timer hyper's header timeout silently does nothing.
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "web connection ended");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A request body that must arrive in full by a deadline: past it, the
/// next read fails (the handler's extractor answers 400 and hyper closes
/// the connection, since the body was not read to its end).
struct DeadlineBody {
    inner: hyper::body::Incoming,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// The error a body read past [`Limits::body_timeout`] fails with.
#[derive(Debug, thiserror::Error)]
#[error("request body not received in time")]
struct BodyTooSlow;

impl http_body::Body for DeadlineBody {
    type Data = hyper::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future as _;
        use std::task::Poll;
        let this = &mut *self;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyTooSlow.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    const SHORT: Duration = Duration::from_millis(300);

    /// `/healthz`, and `/stream`: a response that sends a chunk every
    /// 100 ms for `4 × SHORT` (like the live alarm stream, longer than
    /// the header timeout).
    fn app() -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/echo",
                post(|body: axum::body::Bytes| async move { format!("got {}", body.len()) }),
            )
            .route(
                "/stream",
                get(|| async {
                    let chunks = futures_util::stream::unfold(0u32, |i| async move {
                        if i == 12 {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((
                            Ok::<_, std::convert::Infallible>(format!("tick{i};")),
                            i + 1,
                        ))
                    });
                    axum::body::Body::from_stream(chunks)
                }),
            )
    }

    struct Server {
        addr: SocketAddr,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(limits: Limits, tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, app(), tls, limits, stop.clone()));
        Server { addr, stop, task }
    }

    impl Server {
        async fn stop(self) {
            self.stop.cancel();
            let _ = self.task.await;
        }
    }

    async fn connect_from(to: SocketAddr, from: Ipv4Addr) -> TcpStream {
        let s = TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::from((from, 0))).unwrap();
        s.connect(to).await.unwrap()
    }

    /// Read until the server closes; `None` if it has not within `within`.
    async fn read_to_close<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> Option<String> {
        let mut out = Vec::new();
        match tokio::time::timeout(within, s.read_to_end(&mut out)).await {
            Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
            Err(_) => None,
        }
    }

    /// Read until `needle` has arrived.
    async fn read_until<S: AsyncRead + Unpin>(s: &mut S, needle: &str) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&out).contains(needle) {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("response in time")
                .unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Sends `at_once`, then `trickled` a byte every 50 ms; returns what
    /// came back once the server closed, which must be within 1.5 s
    /// (`SHORT` deadlines), long before the last byte would be sent.
    async fn trickled_is_cut(addr: SocketAddr, at_once: &[u8], trickled: &[u8]) -> String {
        let t0 = Instant::now();
        let (mut r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
        let (at_once, trickled) = (at_once.to_vec(), trickled.to_vec());
        tokio::spawn(async move {
            let _ = w.write_all(&at_once).await;
            for b in trickled {
                if w.write_all(&[b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let got = read_to_close(&mut r, Duration::from_secs(5))
            .await
            .expect("a trickled request is cut");
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t0.elapsed()
        );
        got
    }

    fn short() -> Limits {
        Limits {
            header_timeout: SHORT,
            body_timeout: SHORT,
            tls_handshake: SHORT,
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_is_closed() {
        let srv = start(short(), None).await;
        let t0 = Instant::now();
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        read_to_close(&mut s, Duration::from_secs(5))
            .await
            .expect("a silent connection is closed");
        assert!(t0.elapsed() >= SHORT, "closed after {:?}", t0.elapsed());
        // A head sent a byte at a time does not extend the deadline: it is
        // cut long before it would be complete (33 bytes, 50 ms apart).
        let got = trickled_is_cut(srv.addr, b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(!got.contains(" 200 "), "{got}");
        srv.stop().await;
    }

    #[tokio::test]
    async fn a_body_must_arrive_in_full_by_its_deadline() {
        let srv = start(short(), None).await;
        // A whole body is read.
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .unwrap();
        let got = read_until(&mut s, "got 5").await;
        assert!(got.contains(" 200 "), "{got}");
        // A body that stops short is cut at the deadline.
        let t0 = Instant::now();
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        let got = read_to_close(&mut s, Duration::from_secs(5))
            .await
            .expect("a stalled body is cut");
        assert!(!got.contains(" 200 "), "{got}");
        assert!(t0.elapsed() >= SHORT, "cut after {:?}", t0.elapsed());
        // A body sent a byte at a time does not extend the deadline: 40
        // bytes, 50 ms apart, would take 2 s.
        let got = trickled_is_cut(
            srv.addr,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n",
            &[b'x'; 40],
        )
        .await;
        assert!(!got.contains("got 40"), "{got}");
        srv.stop().await;
    }

    #[tokio::test]
    async fn an_idle_kept_alive_connection_is_closed_but_a_long_response_is_not() {
        let srv = start(short(), None).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut s, "\r\n0\r\n\r\n").await;
        assert!(got.contains("tick11;"), "the whole stream: {got}");
        // Then the connection idles between requests: closed.
        read_to_close(&mut s, Duration::from_secs(5))
            .await
            .expect("an idle kept-alive connection is closed");
        srv.stop().await;
    }

    #[tokio::test]
    async fn one_address_cannot_fill_the_server() {
        let limits = Limits {
            max_per_address: 4,
            max_connections: 8,
            ..Limits::default()
        };
        let srv = start(limits, None).await;
        let hog = Ipv4Addr::new(127, 0, 0, 2);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(connect_from(srv.addr, hog).await);
        }
        // Beyond its share, the same address is closed at once …
        let mut extra = connect_from(srv.addr, hog).await;
        read_to_close(&mut extra, Duration::from_secs(2))
            .await
            .expect("a fifth connection from one address is closed");
        // … while another client loads /healthz.
        let mut s = connect_from(srv.addr, Ipv4Addr::LOCALHOST).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let r = read_to_close(&mut s, Duration::from_secs(5)).await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        // The total is capped too: four more addresses fill it.
        for i in 3..7 {
            held.push(connect_from(srv.addr, Ipv4Addr::new(127, 0, 0, i)).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut over = connect_from(srv.addr, Ipv4Addr::new(127, 0, 0, 9)).await;
        read_to_close(&mut over, Duration::from_secs(2))
            .await
            .expect("a connection over the total is closed");
        // Held connections that close give their places back.
        drop(held);
        let t0 = Instant::now();
        loop {
            let mut s = connect_from(srv.addr, Ipv4Addr::new(127, 0, 0, 9)).await;
            let _ = s
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let r = read_to_close(&mut s, Duration::from_secs(5)).await;
            if r.is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "places never freed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        srv.stop().await;
    }

    #[tokio::test]
    async fn https_handshakes_and_heads_time_out() {
        use tokio_rustls::rustls;
        let dir = tempfile::tempdir().unwrap();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let tls = crate::web::tls::server_config(&Default::default(), dir.path(), any).unwrap();
        let srv = start(short(), Some(tls)).await;

        // No handshake at all.
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        read_to_close(&mut s, Duration::from_secs(5))
            .await
            .expect("a connection without a handshake is closed");

        // A handshake, then no request: hyper's header timeout needs a
        // timer to work at all.
        let pem = std::fs::read(dir.path().join(crate::web::tls::SELF_SIGNED_CERT)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &pem[..]) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tcp = TcpStream::connect(srv.addr).await.unwrap();
        let mut s = connector.connect(name.clone(), tcp).await.unwrap();
        read_to_close(&mut s, Duration::from_secs(5))
            .await
            .expect("a TLS connection without a request is closed");

        // And served as usual.
        let tcp = TcpStream::connect(srv.addr).await.unwrap();
        let mut s = connector.connect(name, tcp).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let r = read_to_close(&mut s, Duration::from_secs(5)).await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        srv.stop().await;
    }
}
