//! Secrets: read from a file or an environment variable, never inline, and
//! redacted by type in every `Debug`, `Display` and `Serialize`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// A secret value (password, token). Its formatting never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself: call only where it is handed to a peer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// Where a secret comes from. Exactly one of `file` or `env`, written as a
/// table: `{ file = "…" }` or `{ env = "…" }`. Any other form (a string, a
/// number, an array) is refused without repeating the value: it may be the
/// secret itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SecretSource {
    /// Path of a file holding the secret (trailing newline trimmed). Keep it
    /// readable by the service user only (mode 0600). A relative path is
    /// relative to the directory of the configuration file.
    pub file: Option<PathBuf>,
    /// Name of an environment variable holding the secret (e.g. set through
    /// systemd's `LoadCredential=` or an `EnvironmentFile=`).
    pub env: Option<String>,
}

/// The table form of [`SecretSource`], the only one accepted.
#[derive(Deserialize)]
struct SecretTable {
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    env: Option<String>,
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SecretSource, D::Error> {
        d.deserialize_map(SecretVisitor)
    }
}

/// Accepts a table only. serde's own errors for the other forms quote the
/// value (a secret written inline); these name the form alone.
struct SecretVisitor;

impl SecretVisitor {
    fn refuse<E: serde::de::Error>(&self) -> E {
        E::custom(crate::config::INLINE_SECRET_MESSAGE)
    }
}

impl<'de> serde::de::Visitor<'de> for SecretVisitor {
    type Value = SecretSource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{ file = … } or { env = … }")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<SecretSource, A::Error> {
        let t = SecretTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(SecretSource {
            file: t.file,
            env: t.env,
        })
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SecretSource, E> {
        Err(self.refuse())
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SecretSource, E> {
        Err(self.refuse())
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SecretSource, E> {
        Err(self.refuse())
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SecretSource, E> {
        Err(self.refuse())
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SecretSource, E> {
        Err(self.refuse())
    }
    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<SecretSource, E> {
        Err(self.refuse())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<SecretSource, A::Error> {
        Err(self.refuse())
    }
}

/// Why a secret could not be read. Never contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("set exactly one of `file` or `env`")]
    Ambiguous,
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("secret is empty")]
    Empty,
}

impl SecretSource {
    /// Make a relative `file` relative to `base` (the configuration file's
    /// directory).
    pub fn resolve_path(&mut self, base: &std::path::Path) {
        if let Some(f) = &mut self.file {
            crate::config::relative_to(f, base);
        }
    }

    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let raw = match (&self.file, &self.env) {
            (Some(path), None) => {
                std::fs::read_to_string(path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?
            }
            (None, Some(var)) => {
                std::env::var(var).map_err(|_| SecretError::EnvMissing(var.clone()))?
            }
            _ => return Err(SecretError::Ambiguous),
        };
        let trimmed = raw.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Secret::new(trimmed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_everywhere() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert!(!serde_json::to_string(&s).unwrap().contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn reads_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let src = SecretSource {
            file: Some(p),
            env: None,
        };
        assert_eq!(src.resolve().unwrap().expose(), "s3cret");
        let src = SecretSource {
            file: None,
            env: Some("ESTATE_GW_TEST_SURELY_UNSET".into()),
        };
        assert!(matches!(src.resolve(), Err(SecretError::EnvMissing(_))));
        assert!(matches!(
            SecretSource::default().resolve(),
            Err(SecretError::Ambiguous)
        ));
    }
}
