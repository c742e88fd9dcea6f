//! Durations in config are numbers of seconds (`poll_interval_s = 0.5`),
//! typed as [`std::time::Duration`] in Rust.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = f64::deserialize(d)?;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(serde::de::Error::custom(format!(
            "expected a number of seconds ≥ 0, got {secs}"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// An optional duration: absent is `None` (`#[serde(with =
/// "crate::config::duration::option", default)]`), so a check can tell a
/// key given from one left out.
pub mod option {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}
