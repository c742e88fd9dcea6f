//! rustls client configuration for the uplink, with the `ring` provider.

use super::{TlsConfig, UplinkError};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::{self, pki_types, ClientConfig, RootCertStore};

/// Build the rustls client configuration from `[uplink.tls]`: trust only
/// `ca_file`; present `cert_file` + `key_file` when both are set.
pub fn client_config(cfg: &TlsConfig) -> Result<Arc<ClientConfig>, UplinkError> {
    let mut roots = RootCertStore::empty();
    let cas = read_certs(&cfg.ca_file)?;
    if cas.is_empty() {
        return Err(tls_err(&cfg.ca_file, "no certificate in file"));
    }
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| tls_err(&cfg.ca_file, &e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&cfg.ca_file, &e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            if chain.is_empty() {
                return Err(tls_err(cert, "no certificate in file"));
            }
            let key_der = read_key(key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| tls_err(key, &e.to_string()))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(p), None) | (None, Some(p)) => {
            return Err(tls_err(p, "cert_file and key_file go together"))
        }
    };
    Ok(Arc::new(config))
}

fn tls_err(path: &Path, reason: &str) -> UplinkError {
    UplinkError::Tls {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<pki_types::CertificateDer<'static>>, UplinkError> {
    let bytes = std::fs::read(path).map_err(|e| tls_err(path, &e.to_string()))?;
    rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, &e.to_string()))
}

fn read_key(path: &Path) -> Result<pki_types::PrivateKeyDer<'static>, UplinkError> {
    let bytes = std::fs::read(path).map_err(|e| tls_err(path, &e.to_string()))?;
    // The key's bytes never reach an error message.
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|e| tls_err(path, &format!("unreadable PEM: {}", e.kind())))?
        .ok_or_else(|| tls_err(path, "no private key in file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_ca_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let cfg = TlsConfig {
            ca_file: missing.clone(),
            cert_file: None,
            key_file: None,
        };
        let e = client_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a pem\n").unwrap();
        let cfg = TlsConfig {
            ca_file: empty,
            cert_file: None,
            key_file: None,
        };
        let e = client_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("no certificate"), "{e}");
    }
}
