//! HTTPS for the web page (`[web.tls]`): a configured certificate and key,
//! or a self-signed pair generated on first start and kept in the state
//! directory (`web-tls.crt`, `web-tls.key`, mode 0600) so browsers see the
//! same certificate after restarts. Its SHA-256 fingerprint is logged so a
//! technician can check it on first connection.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;

/// File names of the generated pair inside the state directory.
pub const SELF_SIGNED_CERT: &str = "web-tls.crt";
pub const SELF_SIGNED_KEY: &str = "web-tls.key";

/// `[web.tls]`: its presence turns HTTPS on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WebTlsConfig {
    /// PEM certificate chain. With `key`; without both, a self-signed
    /// certificate is generated on first start and kept. A relative path
    /// is relative to the directory of the configuration file.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Keep it mode 0600.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Extra names (DNS names or IP addresses) for a generated certificate,
    /// besides `estate-gateway`, `localhost` and the listen address.
    #[serde(default)]
    pub names: Vec<String>,
}

/// Why HTTPS could not be set up. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("[web.tls] needs both `cert` and `key`, or neither (self-signed)")]
    Half,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no certificate in the file")]
    NoCert(PathBuf),
    #[error("{0}: no private key in the file")]
    NoKey(PathBuf),
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("certificate and key rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The server's TLS settings, generating the self-signed pair if needed.
pub fn server_config(
    cfg: &WebTlsConfig,
    state_dir: &Path,
    listen: std::net::SocketAddr,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (cert_path, key_path) = match (&cfg.cert, &cfg.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => {
            let c = state_dir.join(SELF_SIGNED_CERT);
            let k = state_dir.join(SELF_SIGNED_KEY);
            if !(c.exists() && k.exists()) {
                generate(&c, &k, &names(cfg, listen))?;
            }
            (c, k)
        }
        _ => return Err(TlsError::Half),
    };
    let (sc, sha256) = load_pair(&cert_path, &key_path)?;
    tracing::info!(cert = %cert_path.display(), %sha256, "web server certificate");
    Ok(sc)
}

/// The server's TLS settings from a certificate chain and key in PEM, and
/// the SHA-256 fingerprint of the first certificate. The config check
/// calls it too, so a pair it accepts is one the server can use.
pub fn load_pair(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Arc<rustls::ServerConfig>, String), TlsError> {
    let cert_pem = std::fs::read(cert_path).map_err(io(cert_path))?;
    let key_pem = std::fs::read(key_path).map_err(io(key_path))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(io(cert_path))?;
    let first = certs
        .first()
        .ok_or_else(|| TlsError::NoCert(cert_path.to_path_buf()))?;
    let sha256 = fingerprint(first.as_ref());
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(io(key_path))?
        .ok_or_else(|| TlsError::NoKey(key_path.to_path_buf()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(sc), sha256))
}

fn names(cfg: &WebTlsConfig, listen: std::net::SocketAddr) -> Vec<String> {
    let mut n = vec!["estate-gateway".to_string(), "localhost".to_string()];
    if !listen.ip().is_unspecified() {
        n.push(listen.ip().to_string());
    }
    n.extend(cfg.names.iter().cloned());
    n
}

/// SHA-256 of a DER certificate, as colon-separated hex.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn generate(cert: &Path, key: &Path, names: &[String]) -> Result<(), TlsError> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    if let Some(dir) = key.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    write_private(key, ck.key_pair.serialize_pem().as_bytes())?;
    write_private(cert, ck.cert.pem().as_bytes())?;
    tracing::warn!(
        cert = %cert.display(),
        ?names,
        "generated a self-signed certificate for the web page; browsers will ask to trust it (compare the logged fingerprint)"
    );
    Ok(())
}

/// Write a file atomically with mode 0600.
fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let listen = "127.0.0.1:8443".parse().unwrap();
        server_config(&WebTlsConfig::default(), dir.path(), listen).unwrap();
        let first = std::fs::read(dir.path().join(SELF_SIGNED_CERT)).unwrap();
        server_config(&WebTlsConfig::default(), dir.path(), listen).unwrap();
        assert_eq!(
            first,
            std::fs::read(dir.path().join(SELF_SIGNED_CERT)).unwrap()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(dir.path().join(SELF_SIGNED_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o600);
        }
    }

    #[test]
    fn half_a_pair_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WebTlsConfig {
            cert: Some(dir.path().join("c.pem")),
            ..Default::default()
        };
        let r = server_config(&cfg, dir.path(), "127.0.0.1:1".parse().unwrap());
        assert!(matches!(r, Err(TlsError::Half)));
    }
}
