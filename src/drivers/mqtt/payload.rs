//! Payload mapping (pure): where a point's value is inside a message and how
//! it becomes a [`Value`] of the point's type, and back for writes.
//!
//! Accepted payloads: JSON (a value found by JSON Pointer `/a/0/b` or dotted
//! path `a.0.b`), or plain text: a number, `true`/`false`, `ON`/`OFF`
//! (any case), `1`/`0`. Scale and offset apply as for Modbus points:
//! engineering value = raw × scale + offset; integers stay integers when
//! neither is set.

use crate::drivers::{PointConfig, PointType};
use crate::point::Value;

/// Why a payload gave no value for a point.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MapError {
    /// The path is not a JSON Pointer or dotted path.
    #[error("invalid path {0:?}: use a JSON Pointer (/a/b) or a dotted path (a.b)")]
    BadPath(String),
    /// The point has a path but the payload is not JSON.
    #[error("payload is not JSON ({0})")]
    NotJson(String),
    /// Nothing at the path.
    #[error("no value at {0:?}")]
    Missing(String),
    /// The payload is not valid UTF-8 text.
    #[error("payload is not text")]
    NotText,
    /// The value does not read as the point's type.
    #[error("{found} is not a {kind:?} value")]
    WrongType { found: String, kind: PointType },
    /// The value is outside the point type's range.
    #[error("{value} is out of range for {kind:?}")]
    OutOfRange { value: f64, kind: PointType },
}

/// Where a value sits in a payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Path {
    /// The whole payload.
    Whole,
    /// A JSON Pointer (RFC 6901), kept as written.
    Pointer(String),
    /// A dotted path, as the equivalent JSON Pointer.
    Dotted(String),
}

impl Path {
    /// Parse a configured path: `/…` is a JSON Pointer, anything else a
    /// dotted path (`a.b.0`); `None` is the whole payload.
    pub fn parse(s: Option<&str>) -> Result<Path, MapError> {
        let Some(s) = s else { return Ok(Path::Whole) };
        if s.is_empty() {
            return Err(MapError::BadPath(s.into()));
        }
        if s.starts_with('/') {
            // `~` must be followed by 0 or 1.
            let b = s.as_bytes();
            for (i, &c) in b.iter().enumerate() {
                if c == b'~' && !matches!(b.get(i + 1), Some(b'0') | Some(b'1')) {
                    return Err(MapError::BadPath(s.into()));
                }
            }
            return Ok(Path::Pointer(s.into()));
        }
        let mut ptr = String::with_capacity(s.len() + 1);
        for seg in s.split('.') {
            if seg.is_empty() {
                return Err(MapError::BadPath(s.into()));
            }
            ptr.push('/');
            ptr.push_str(&seg.replace('~', "~0").replace('/', "~1"));
        }
        Ok(Path::Dotted(ptr))
    }

    /// True when the payload must be parsed as JSON.
    pub fn needs_json(&self) -> bool {
        !matches!(self, Path::Whole)
    }

    fn pointer(&self) -> &str {
        match self {
            Path::Whole => "",
            Path::Pointer(p) | Path::Dotted(p) => p,
        }
    }
}

/// A raw scalar taken from a payload, before typing.
#[derive(Clone, Debug, PartialEq)]
pub enum Raw<'a> {
    Bool(bool),
    Number(f64),
    Text(&'a str),
}

impl std::fmt::Display for Raw<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Raw::Bool(b) => write!(f, "{b}"),
            Raw::Number(n) => write!(f, "{n}"),
            Raw::Text(t) => {
                let short: String = t.chars().take(40).collect();
                write!(f, "{short:?}")
            }
        }
    }
}

/// A payload parsed once for every point reading the same message.
pub enum Parsed<'a> {
    Json(serde_json::Value),
    Text(&'a str),
    /// Neither JSON nor text.
    Garbage(MapError),
}

impl<'a> Parsed<'a> {
    /// Parse `payload`; JSON only when `json` (some point has a path).
    pub fn new(payload: &'a [u8], json: bool) -> Parsed<'a> {
        if json {
            match serde_json::from_slice(payload) {
                Ok(v) => return Parsed::Json(v),
                Err(e) => {
                    // A plain-text point may share the topic.
                    if let Ok(t) = std::str::from_utf8(payload) {
                        let _ = e;
                        return Parsed::Text(t);
                    }
                    return Parsed::Garbage(MapError::NotJson(e.to_string()));
                }
            }
        }
        match std::str::from_utf8(payload) {
            Ok(t) => Parsed::Text(t),
            Err(_) => Parsed::Garbage(MapError::NotText),
        }
    }

    /// The raw scalar at `path`.
    pub fn get(&self, path: &Path) -> Result<Raw<'_>, MapError> {
        match self {
            Parsed::Garbage(e) => Err(e.clone()),
            Parsed::Text(t) => {
                if path.needs_json() {
                    let mut s: String = t.chars().take(40).collect();
                    if s.len() < t.len() {
                        s.push('…');
                    }
                    return Err(MapError::NotJson(format!("{s:?}")));
                }
                let t = t.trim();
                // A JSON string without escapes ("ON") reads as its text.
                let unquoted = t
                    .strip_prefix('"')
                    .and_then(|x| x.strip_suffix('"'))
                    .filter(|x| !x.contains(['"', '\\']));
                Ok(Raw::Text(unquoted.map(str::trim).unwrap_or(t)))
            }
            Parsed::Json(v) => {
                let v = if path.needs_json() {
                    v.pointer(path.pointer())
                        .ok_or_else(|| MapError::Missing(path.pointer().to_string()))?
                } else {
                    v
                };
                json_scalar(v)
            }
        }
    }
}

fn json_scalar(v: &serde_json::Value) -> Result<Raw<'_>, MapError> {
    use serde_json::Value as J;
    match v {
        J::Bool(b) => Ok(Raw::Bool(*b)),
        J::Number(n) => n.as_f64().map(Raw::Number).ok_or(MapError::WrongType {
            found: n.to_string(),
            kind: PointType::F32,
        }),
        J::String(s) => Ok(Raw::Text(s.trim())),
        J::Null => Err(MapError::Missing("null".into())),
        J::Array(_) => Err(MapError::WrongType {
            found: "an array".into(),
            kind: PointType::F32,
        }),
        J::Object(_) => Err(MapError::WrongType {
            found: "an object".into(),
            kind: PointType::F32,
        }),
    }
}

/// How one point's raw scalar becomes a value (and back), built once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Typing {
    pub kind: PointType,
    pub scale: f64,
    pub offset: f64,
    /// Decimal places of scaled integers (as Modbus points).
    pub decimals: u32,
}

/// Bool words: `true/false`, `on/off`, `1/0` (any case).
fn bool_word(t: &str) -> Option<bool> {
    if t.eq_ignore_ascii_case("true") || t.eq_ignore_ascii_case("on") || t == "1" {
        Some(true)
    } else if t.eq_ignore_ascii_case("false") || t.eq_ignore_ascii_case("off") || t == "0" {
        Some(false)
    } else {
        None
    }
}

fn range(kind: PointType) -> (f64, f64) {
    match kind {
        PointType::Bool => (0.0, 1.0),
        PointType::U16 => (0.0, u16::MAX as f64),
        PointType::I16 => (i16::MIN as f64, i16::MAX as f64),
        PointType::U32 => (0.0, u32::MAX as f64),
        PointType::I32 => (i32::MIN as f64, i32::MAX as f64),
        PointType::F32 => (f64::MIN, f64::MAX),
    }
}

fn round_to(v: f64, decimals: u32) -> f64 {
    let m = 10f64.powi(decimals as i32);
    let r = (v * m).round() / m;
    if r.is_finite() {
        r
    } else {
        v
    }
}

impl Typing {
    pub fn new(p: &PointConfig) -> Typing {
        Typing {
            kind: p.kind,
            scale: p.scale,
            offset: p.offset,
            decimals: crate::drivers::modbus::decode::Codec::new(p).decimals,
        }
    }

    fn identity(&self) -> bool {
        self.scale == 1.0 && self.offset == 0.0
    }

    /// The point's value from a raw scalar.
    pub fn value(&self, raw: &Raw<'_>) -> Result<Value, MapError> {
        let wrong = || MapError::WrongType {
            found: raw.to_string(),
            kind: self.kind,
        };
        if self.kind == PointType::Bool {
            return match *raw {
                Raw::Bool(b) => Ok(Value::Bool(b)),
                Raw::Number(0.0) => Ok(Value::Bool(false)),
                Raw::Number(1.0) => Ok(Value::Bool(true)),
                Raw::Number(_) => Err(wrong()),
                Raw::Text(t) => bool_word(t).map(Value::Bool).ok_or_else(wrong),
            };
        }
        let n = match *raw {
            Raw::Number(n) => n,
            Raw::Text(t) => t.parse::<f64>().map_err(|_| wrong())?,
            Raw::Bool(_) => return Err(wrong()),
        };
        if !n.is_finite() {
            return Err(wrong());
        }
        if self.kind == PointType::F32 {
            return Ok(Value::Float(n * self.scale + self.offset));
        }
        if n.fract() != 0.0 {
            return Err(wrong());
        }
        let (lo, hi) = range(self.kind);
        if n < lo || n > hi {
            return Err(MapError::OutOfRange {
                value: n,
                kind: self.kind,
            });
        }
        if self.identity() {
            Ok(Value::Int(n as i64))
        } else {
            Ok(Value::Float(round_to(
                n * self.scale + self.offset,
                self.decimals,
            )))
        }
    }

    /// The payload text for writing engineering value `v` (scale and offset
    /// undone); bools use the device's words.
    pub fn encode(&self, v: Value, words: (&str, &str)) -> Result<String, MapError> {
        let wrong = || MapError::WrongType {
            found: format!("{v:?}"),
            kind: self.kind,
        };
        if self.kind == PointType::Bool {
            return match v {
                Value::Bool(true) => Ok(words.0.to_string()),
                Value::Bool(false) => Ok(words.1.to_string()),
                _ => Err(wrong()),
            };
        }
        let x = match v {
            Value::Bool(_) => return Err(wrong()),
            Value::Int(i) => i as f64,
            Value::Float(f) => f,
        };
        let raw = (x - self.offset) / self.scale;
        if !raw.is_finite() {
            return Err(wrong());
        }
        if self.kind == PointType::F32 {
            return Ok(format_number(raw));
        }
        let r = raw.round();
        let (lo, hi) = range(self.kind);
        if (raw - r).abs() > 1e-6 * raw.abs().max(1.0) || r < lo || r > hi {
            return Err(MapError::OutOfRange {
                value: x,
                kind: self.kind,
            });
        }
        Ok(format!("{}", r as i64))
    }
}

fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// A status payload's meaning, compared without case: `Some(true)` online,
/// `Some(false)` offline, `None` neither.
pub fn status_of(raw: &Raw<'_>, online: &str, offline: &str) -> Option<bool> {
    let text;
    let t: &str = match raw {
        Raw::Text(t) => t,
        Raw::Bool(b) => {
            text = b.to_string();
            &text
        }
        Raw::Number(n) => {
            text = format_number(*n);
            &text
        }
    };
    if t.eq_ignore_ascii_case(online) {
        Some(true)
    } else if t.eq_ignore_ascii_case(offline) {
        Some(false)
    } else {
        None
    }
}

/// Does the MQTT topic filter `filter` match `topic`? (`+` one level, `#`
/// the rest; wildcards at the start do not match `$` topics.)
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Is `filter` a valid MQTT topic filter (non-empty, `#` only last and
/// alone in its level, `+` alone in its level, no NUL)?
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > 65535 || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return false;
        }
        if l.contains('+') && *l != "+" {
            return false;
        }
    }
    true
}

/// Is `topic` a valid topic to publish to (a filter without wildcards)?
pub fn valid_topic(topic: &str) -> bool {
    valid_filter(topic) && !topic.contains(['+', '#'])
}

/// Expand a command topic template.
pub fn command_topic(template: &str, device: &str, point: &str) -> String {
    template
        .replace("{device}", device)
        .replace("{point}", point)
}
