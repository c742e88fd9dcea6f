//! The systemd notification protocol (`sd_notify(3)`): newline-separated
//! `KEY=VALUE` datagrams sent to the unix socket named by `$NOTIFY_SOCKET`
//! (a path, or `@name` for the abstract namespace).
//!
//! Written here rather than taken from a crate: the protocol is one
//! `sendto` on a `SOCK_DGRAM` socket, and owning it keeps the watchdog
//! decisions (`$WATCHDOG_USEC`, `$WATCHDOG_PID`) next to the code that uses them.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {0:?} is not a usable socket address")]
    BadAddress(String),
    #[error("sending to NOTIFY_SOCKET {socket:?}: {source}")]
    Send {
        socket: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where notifications go.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

/// A connection to the service manager, or none when not run by systemd
/// with `Type=notify` (every send is then a no-op).
#[derive(Debug)]
pub struct Notifier {
    target: Option<(String, Target)>,
    socket: Option<UnixDatagram>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`. The variable is left in the environment (the
    /// gateway starts no child processes).
    pub fn from_env() -> Result<Notifier, NotifyError> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(s) if !s.is_empty() => Notifier::to_socket(&s),
            _ => Ok(Notifier::disabled()),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            socket: None,
        }
    }

    /// A notifier for the socket address `addr` (`/path` or `@abstract`).
    pub fn to_socket(addr: &str) -> Result<Notifier, NotifyError> {
        let target = parse_address(addr).ok_or_else(|| NotifyError::BadAddress(addr.into()))?;
        // Non-blocking: a service manager slow to read (its queue holds
        // ~10 datagrams) must never stall the gateway's runtime; a
        // notification that does not fit is dropped and logged.
        let socket = UnixDatagram::unbound()
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|source| NotifyError::Send {
                socket: addr.into(),
                source,
            })?;
        Ok(Notifier {
            target: Some((addr.to_string(), target)),
            socket: Some(socket),
        })
    }

    /// True when notifications go somewhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Send one notification (`READY=1`, `WATCHDOG=1`, `STATUS=…`, several
    /// separated by newlines).
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        let (Some((name, target)), Some(socket)) = (&self.target, &self.socket) else {
            return Ok(());
        };
        let sent = match target {
            Target::Path(p) => socket.send_to(state.as_bytes(), p),
            Target::Abstract(a) => send_abstract(socket, a, state.as_bytes()),
        };
        match sent {
            Ok(_) => Ok(()),
            Err(source) => Err(NotifyError::Send {
                socket: name.clone(),
                source,
            }),
        }
    }

    /// Send, logging a failure instead of returning it (the gateway runs on
    /// whether or not the service manager hears it).
    pub fn notify_or_log(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            tracing::warn!(error = %e, state, "service manager notification failed");
        }
    }
}

fn parse_address(addr: &str) -> Option<Target> {
    if let Some(name) = addr.strip_prefix('@') {
        (!name.is_empty()).then(|| Target::Abstract(name.as_bytes().to_vec()))
    } else if addr.starts_with('/') {
        Some(Target::Path(PathBuf::from(addr)))
    } else {
        None
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(socket: &UnixDatagram, name: &[u8], data: &[u8]) -> std::io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(data, &addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> std::io::Result<usize> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets need Linux",
    ))
}

/// The watchdog interval systemd expects petting within (`WatchdogSec=`),
/// from `$WATCHDOG_USEC`, honouring `$WATCHDOG_PID` (set for another
/// process: not ours). `None`: no watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] over given values (pure).
pub fn watchdog_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_env_rules() {
        assert_eq!(
            watchdog_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_from(None, None, 7), None);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("/run/systemd/notify"),
            Some(Target::Path("/run/systemd/notify".into()))
        );
        assert_eq!(parse_address("@sd"), Some(Target::Abstract(b"sd".to_vec())));
        assert_eq!(parse_address("@"), None);
        assert_eq!(parse_address("relative"), None);
    }

    #[test]
    fn sends_datagrams_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to_socket(path.to_str().unwrap()).unwrap();
        assert!(n.is_enabled());
        n.notify("READY=1\nSTATUS=running").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=running");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_datagrams_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("estate-gateway-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::to_socket(&format!("@{name}"))
            .unwrap()
            .notify("WATCHDOG=1")
            .unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn a_full_queue_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let _rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to_socket(path.to_str().unwrap()).unwrap();
        // Nobody reads: the queue fills, then sends fail at once.
        let failed = (0..1000)
            .filter(|_| n.notify("WATCHDOG=1").is_err())
            .count();
        assert!(failed > 0);
    }

    #[test]
    fn disabled_sends_nothing() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        n.notify("READY=1").unwrap();
    }
}
