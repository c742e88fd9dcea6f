//! Edits of the configuration text (pure, no I/O): form edits applied to
//! the TOML document with `toml_edit` (comments and layout kept), the
//! JSON model the page's forms are built from, and the redaction of
//! URL-borne credentials with their restoration on the way back.
//!
//! Secrets of this product are never inline (`{file = …}` / `{env = …}`),
//! but a URL may still carry one: a camera's `rtsp://user:pass@host/…`, a
//! push endpoint's `?key=…`. Every string that looks like a URL is shown
//! redacted ([`redact_urls`]); a redacted URL sent back unchanged is
//! replaced by the original ([`restore_redacted`]), so the credentials are
//! write-only: they can be typed in, never read back.

use crate::cameras::redact::redact_url;
use serde::Deserialize;
use std::fmt;
use toml_edit::{DocumentMut, Item, Table, TableLike, Value};

/// Most edits in one request.
pub const MAX_EDITS: usize = 200;

/// Why an edit could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("{path}: not a valid key path")]
    BadPath { path: String },
    #[error("{path}: no such key or index")]
    NotFound { path: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("too many edits (at most {MAX_EDITS})")]
    TooMany,
}

impl EditError {
    /// The key path the error is about (for the page to show it at the field).
    pub fn path(&self) -> Option<&str> {
        match self {
            EditError::BadPath { path }
            | EditError::NotFound { path }
            | EditError::Invalid { path, .. } => Some(path),
            EditError::TooMany => None,
        }
    }
}

/// One form edit. Paths use the notation of configuration problems:
/// `devices[2].points[0].scale`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Edit {
    /// Set a key to a value (a JSON string, number, bool, array or
    /// object); `null` removes the key.
    Set {
        path: String,
        value: serde_json::Value,
    },
    /// Append a table (a device, point, rule, zone, …) to the array at
    /// `path` (created when missing).
    Add {
        path: String,
        value: serde_json::Value,
    },
    /// Remove a key, or an element of an array (`alarms[3]`).
    Remove { path: String },
}

impl Edit {
    fn path(&self) -> &str {
        match self {
            Edit::Set { path, .. } | Edit::Add { path, .. } | Edit::Remove { path } => path,
        }
    }
}

impl fmt::Display for Edit {
    /// A one-line summary for the history (URLs redacted).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = |v: &serde_json::Value| {
            let s = redact_urls(&v.to_string());
            if s.chars().count() > 60 {
                format!("{}…", s.chars().take(60).collect::<String>())
            } else {
                s
            }
        };
        match self {
            Edit::Set { path, value } if value.is_null() => write!(f, "remove {path}"),
            Edit::Set { path, .. } if is_secret_path(path) => write!(f, "{path} = {HIDDEN}"),
            Edit::Set { path, value } => write!(f, "{path} = {}", short(value)),
            Edit::Add { path, value } => match value.get("id").or_else(|| value.get("point")) {
                Some(id) => write!(f, "add {path} {}", short(id)),
                None => write!(f, "add {path}"),
            },
            Edit::Remove { path } => write!(f, "remove {path}"),
        }
    }
}

/// One segment of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Parse `devices[2].points[0].scale` into segments. Keys are bare TOML
/// keys (`A-Za-z0-9_-`), as every key of this configuration is.
fn parse_path(path: &str) -> Result<Vec<Seg>, EditError> {
    let bad = || EditError::BadPath {
        path: path.to_string(),
    };
    if path.is_empty() || path.len() > 256 {
        return Err(bad());
    }
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(bad());
        }
        out.push(Seg::Key(key.to_string()));
        while !rest.is_empty() {
            let close = rest.find(']').ok_or_else(bad)?;
            if !rest.starts_with('[') {
                return Err(bad());
            }
            let i: usize = rest[1..close].parse().map_err(|_| bad())?;
            out.push(Seg::Index(i));
            rest = &rest[close + 1..];
        }
    }
    Ok(out)
}

/// The table at `segs` (every segment a table key, or a key followed by
/// an index into an array of tables or an array of inline tables). With
/// `create`, missing tables (not array elements) are created.
fn table_at<'a>(
    root: &'a mut dyn TableLike,
    segs: &[Seg],
    path: &str,
    create: bool,
) -> Result<&'a mut dyn TableLike, EditError> {
    let nf = || EditError::NotFound {
        path: path.to_string(),
    };
    let mut cur = root;
    let mut i = 0;
    while i < segs.len() {
        let Seg::Key(k) = &segs[i] else {
            return Err(EditError::BadPath {
                path: path.to_string(),
            });
        };
        let indexed = matches!(segs.get(i + 1), Some(Seg::Index(_)));
        if create && !indexed && cur.get(k).is_none() {
            let mut t = Table::new();
            t.set_implicit(true);
            cur.insert(k, Item::Table(t));
        }
        let item = cur.get_mut(k).ok_or_else(nf)?;
        match segs.get(i + 1) {
            Some(Seg::Index(n)) => {
                let n = *n;
                cur = if item.is_array_of_tables() {
                    let aot = item.as_array_of_tables_mut().ok_or_else(nf)?;
                    aot.get_mut(n).ok_or_else(nf)? as &mut dyn TableLike
                } else {
                    let arr = item.as_array_mut().ok_or_else(nf)?;
                    arr.get_mut(n)
                        .and_then(Value::as_inline_table_mut)
                        .ok_or_else(nf)? as &mut dyn TableLike
                };
                i += 2;
            }
            _ => {
                cur = item.as_table_like_mut().ok_or_else(nf)?;
                i += 1;
            }
        }
    }
    Ok(cur)
}

/// A JSON value as a TOML value. `like` (the value it replaces) keeps a
/// float a float when the page sends a whole number (`scale = 2` → `2.0`).
fn to_toml(v: &serde_json::Value, like: Option<&Value>, path: &str) -> Result<Value, EditError> {
    use serde_json::Value as J;
    let invalid = |m: &str| EditError::Invalid {
        path: path.to_string(),
        message: m.to_string(),
    };
    Ok(match v {
        J::Null => return Err(invalid("null is not a TOML value")),
        J::Bool(b) => Value::from(*b),
        J::String(s) => Value::from(s.as_str()),
        J::Number(n) => {
            let wants_float = matches!(like, Some(Value::Float(_)));
            match n.as_i64() {
                Some(i) if !wants_float => Value::from(i),
                _ => {
                    let f = n.as_f64().ok_or_else(|| invalid("number out of range"))?;
                    if !f.is_finite() {
                        return Err(invalid("number out of range"));
                    }
                    Value::from(f)
                }
            }
        }
        J::Array(a) => {
            let mut arr = toml_edit::Array::new();
            for x in a {
                arr.push(to_toml(x, None, path)?);
            }
            Value::Array(arr)
        }
        J::Object(o) => {
            let mut t = toml_edit::InlineTable::new();
            for (k, x) in ordered(o) {
                if x.is_null() {
                    continue;
                }
                t.insert(k, to_toml(x, None, path)?);
            }
            Value::InlineTable(t)
        }
    })
}

/// The keys of a JSON object, identifying ones (`id`, `name`, `point`)
/// first, as a technician writes them.
fn ordered(o: &serde_json::Map<String, serde_json::Value>) -> Vec<(&String, &serde_json::Value)> {
    let rank = |k: &str| match k {
        "id" => 0,
        "name" => 1,
        "point" => 2,
        _ => 3,
    };
    let mut v: Vec<_> = o.iter().collect();
    v.sort_by_key(|(k, _)| rank(k));
    v
}

/// A JSON object as a standard table (for `[[…]]` entries): scalars and
/// arrays as `key = value`, objects as inline tables.
fn to_table(v: &serde_json::Value, path: &str) -> Result<Table, EditError> {
    let o = v.as_object().ok_or_else(|| EditError::Invalid {
        path: path.to_string(),
        message: "expected an object".into(),
    })?;
    let mut t = Table::new();
    for (k, x) in ordered(o) {
        if x.is_null() {
            continue;
        }
        t.insert(k, Item::Value(to_toml(x, None, path)?));
    }
    Ok(t)
}

/// Apply one edit to the document.
pub fn apply_edit(doc: &mut DocumentMut, e: &Edit) -> Result<(), EditError> {
    let path = e.path();
    let segs = parse_path(path)?;
    let nf = || EditError::NotFound {
        path: path.to_string(),
    };
    let root = doc.as_table_mut() as &mut dyn TableLike;
    match e {
        Edit::Set { value, .. } if value.is_null() => remove(root, &segs, path),
        Edit::Set { value, .. } => {
            let Some((Seg::Key(last), parent)) = segs.split_last() else {
                return Err(EditError::BadPath {
                    path: path.to_string(),
                });
            };
            let t = table_at(root, parent, path, false)?;
            match t.get_mut(last) {
                Some(item) if item.is_value() => {
                    let old = item.as_value_mut().ok_or_else(nf)?;
                    let decor = old.decor().clone();
                    let mut new = to_toml(value, Some(old), path)?;
                    *new.decor_mut() = decor;
                    *old = new;
                }
                Some(_) => {
                    return Err(EditError::Invalid {
                        path: path.to_string(),
                        message: "is a table: set its keys one by one".into(),
                    })
                }
                None => {
                    t.insert(last, Item::Value(to_toml(value, None, path)?));
                }
            }
            Ok(())
        }
        Edit::Add { value, .. } => {
            let Some((Seg::Key(last), parent)) = segs.split_last() else {
                return Err(EditError::BadPath {
                    path: path.to_string(),
                });
            };
            let t = table_at(root, parent, path, true)?;
            match t.get_mut(last) {
                None => {
                    let mut aot = toml_edit::ArrayOfTables::new();
                    aot.push(to_table(value, path)?);
                    t.insert(last, Item::ArrayOfTables(aot));
                }
                Some(item) if item.is_array_of_tables() => {
                    let aot = item.as_array_of_tables_mut().ok_or_else(nf)?;
                    aot.push(to_table(value, path)?);
                }
                Some(item) => {
                    let arr = item.as_array_mut().ok_or_else(|| EditError::Invalid {
                        path: path.to_string(),
                        message: "is not a list".into(),
                    })?;
                    arr.push(to_toml(value, None, path)?);
                }
            }
            Ok(())
        }
        Edit::Remove { .. } => remove(root, &segs, path),
    }
}

fn remove(root: &mut dyn TableLike, segs: &[Seg], path: &str) -> Result<(), EditError> {
    let nf = || EditError::NotFound {
        path: path.to_string(),
    };
    match segs.split_last() {
        Some((Seg::Key(k), parent)) => {
            let t = table_at(root, parent, path, false)?;
            t.remove(k).map(|_| ()).ok_or_else(nf)
        }
        Some((Seg::Index(i), parent)) => {
            let Some((Seg::Key(k), grand)) = parent.split_last() else {
                return Err(EditError::BadPath {
                    path: path.to_string(),
                });
            };
            let t = table_at(root, grand, path, false)?;
            let item = t.get_mut(k).ok_or_else(nf)?;
            if let Some(aot) = item.as_array_of_tables_mut() {
                if *i >= aot.len() {
                    return Err(nf());
                }
                aot.remove(*i);
            } else if let Some(arr) = item.as_array_mut() {
                if *i >= arr.len() {
                    return Err(nf());
                }
                arr.remove(*i);
            } else {
                return Err(nf());
            }
            Ok(())
        }
        None => Err(EditError::BadPath {
            path: path.to_string(),
        }),
    }
}

/// Apply `edits` in order to `text`; the new text. The first edit that
/// cannot be applied stops it.
pub fn apply_edits(text: &str, edits: &[Edit]) -> Result<String, EditError> {
    if edits.len() > MAX_EDITS {
        return Err(EditError::TooMany);
    }
    let mut doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| EditError::Invalid {
                path: "(file)".into(),
                message: format!("the file does not parse: {}", e.message()),
            })?;
    for e in edits {
        apply_edit(&mut doc, e)?;
    }
    Ok(doc.to_string())
}

/// Every `scheme://…` in `text` with its user info and query values
/// replaced by `***` (see [`redact_url`]). Used on everything the config
/// page sends out: raw text, model, problems, diffs, summaries.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // The scheme: letters, digits, '+', '-', '.' before "://".
        let start = rest[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |j| j + 1);
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .map_or(rest.len(), |j| i + j);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// What a hidden value shows.
pub const HIDDEN: &str = "***";

/// Whether a string at `path` sits where a secret belongs. Secrets are
/// `{file = …}` / `{env = …}` tables; a string there is a secret written
/// inline by mistake (the loader refuses it, but the file may hold it).
pub fn is_secret_path(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    let last = last.split('[').next().unwrap_or(last);
    match last {
        "password" | "secret" => true,
        // `key` is also an alarm-key pattern (linkage) and a TLS key path.
        "key" => path.starts_with("push.channels["),
        _ => false,
    }
}

/// `text` as the page may see it: secrets written inline replaced by
/// `"***"` and URL credentials redacted ([`redact_urls`]).
pub fn redact_text(text: &str) -> String {
    let hidden = match text.parse::<DocumentMut>() {
        Ok(mut doc) => {
            let mut n = 0;
            walk_strings_mut(doc.as_item_mut(), &mut String::new(), &mut |path, v| {
                if is_secret_path(path) && v.as_str() != Some(HIDDEN) {
                    let decor = v.decor().clone();
                    *v = Value::from(HIDDEN);
                    *v.decor_mut() = decor;
                    n += 1;
                }
            });
            if n > 0 {
                doc.to_string()
            } else {
                text.to_string()
            }
        }
        Err(_) => hide_inline_secrets(text),
    };
    redact_urls(&hidden)
}

/// Names whose values are hidden in text that does not parse.
const SECRET_NAMES: [&str; 4] = ["password", "secret", "key", "token"];

/// For text that does not parse: every value after `password =`,
/// `secret =`, `key =` or `token =` (bare or quoted key) replaced by
/// `"***"` — quoted, multi-line (`"""` or `'''`, its line breaks kept so
/// lines still match) or bare (a number, a word). A table value
/// (`{ file = … }`) is kept.
fn hide_inline_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while !rest.is_empty() {
        let line_end = rest.find('\n').map_or(rest.len(), |j| j + 1);
        for name in SECRET_NAMES {
            let mut from = 0;
            while let Some(k) = rest[from..line_end].find(name) {
                let i = from + k;
                from = i + name.len();
                let Some(value_at) = value_after_secret_key(rest, i, name) else {
                    continue;
                };
                let v = &rest[value_at..];
                let len = hidden_value_len(v);
                if len == 0 {
                    continue;
                }
                out.push_str(&rest[..value_at]);
                out.push_str("\"***\"");
                // Keep the line count of a multi-line value.
                out.extend(v[..len].matches('\n').map(|_| '\n'));
                rest = &rest[value_at + len..];
                continue 'scan;
            }
        }
        // No secret assignment left on this line: copy it.
        out.push_str(&rest[..line_end]);
        rest = &rest[line_end..];
    }
    out
}

/// Where the value starts when `rest[i..]` is the key `name` (bare or
/// quoted) followed by `=`.
fn value_after_secret_key(rest: &str, i: usize, name: &str) -> Option<usize> {
    let mut before = rest[..i].chars().next_back();
    let mut after = &rest[i + name.len()..];
    if let Some(q @ ('"' | '\'')) = before {
        after = after.strip_prefix(q)?;
        before = rest[..i - 1].chars().next_back();
    }
    if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return None;
    }
    let v = after
        .trim_start_matches([' ', '\t'])
        .strip_prefix('=')?
        .trim_start_matches([' ', '\t']);
    Some(rest.len() - v.len())
}

/// Length of the value at the start of `v` to hide: a (multi-line)
/// string, or a bare value up to `,`, `}`, `]`, `#` or the line's end;
/// 0 for a table or an array (not an inline secret) or nothing.
fn hidden_value_len(v: &str) -> usize {
    for q in ["\"\"\"", "'''"] {
        if let Some(body) = v.strip_prefix(q) {
            return body.find(q).map_or(v.len(), |j| 3 + j + 3);
        }
    }
    match v.chars().next() {
        Some(q @ ('"' | '\'')) => match v[1..].find([q, '\n']) {
            Some(j) if v.as_bytes()[1 + j] == b'\n' => 1 + j,
            Some(j) => 1 + j + 1,
            None => v.len(),
        },
        Some('{' | '[') | None => 0,
        Some(_) => {
            let end = v.find([',', '}', ']', '#', '\n']).unwrap_or(v.len());
            v[..end].trim_end().len()
        }
    }
}

/// Whether a string still holds a redacted credential (sent back after
/// the page showed it, but changed so it cannot be restored).
pub fn holds_redaction(s: &str) -> bool {
    s.contains("://") && s.contains("***")
}

/// Whether the value at `path` is a URL (a camera's stream, a push
/// endpoint, a link): the only keys where a redacted URL may be sent back
/// and restored.
pub fn is_url_path(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    let last = last.split('[').next().unwrap_or(last);
    last == "url" || last.ends_with("_url") || last.ends_with("_link")
}

/// `path` with each array index replaced by the entry's `id` (or `name`)
/// when it has one: `cameras[1].url` → `cameras[id=gate].url`. The same
/// entry keeps the same stable path when entries are added or moved.
fn stable_path(root: &toml::Table, path: &str) -> Option<String> {
    let segs = parse_path(path).ok()?;
    let mut out = String::new();
    let mut cur: Option<&toml::Value> = None;
    for seg in &segs {
        match seg {
            Seg::Key(k) => {
                let t = match cur {
                    None => root,
                    Some(v) => v.as_table()?,
                };
                cur = Some(t.get(k)?);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(n) => {
                let v = cur?.as_array()?.get(*n)?;
                let id = v
                    .get("id")
                    .or_else(|| v.get("name"))
                    .and_then(toml::Value::as_str);
                match id {
                    Some(id) => out.push_str(&format!("[id={id:?}]")),
                    None => out.push_str(&format!("[{n}]")),
                }
                cur = Some(v);
            }
        }
    }
    Some(out)
}

/// Replace every redacted URL in `doc` that the page sent back unchanged
/// by its original from `original` (the file it was shown from) — only on
/// a URL key ([`is_url_path`]) and only from the same key: the same key
/// path, or the same entry (by `id`/`name`) and key. A redacted value
/// anywhere else is never filled in, so credentials cannot be copied to
/// a key that is shown in clear (a device name, an alarm message).
/// Inline secrets shown as `"***"` come back only at their own path.
/// Returns the key paths still holding a redaction: a URL key whose
/// credentials must be typed in again, or a key where a redacted value
/// is refused.
pub fn restore_redacted(doc: &mut DocumentMut, original: &str) -> Vec<String> {
    // (path, stable path, value)
    let mut originals: Vec<(String, Option<String>, String)> = Vec::new();
    let mut secrets: Vec<(String, String)> = Vec::new();
    if let Ok(orig) = original.parse::<DocumentMut>() {
        let orig_tree: Option<toml::Table> = toml::from_str(original).ok();
        walk_strings_ref(orig.as_item(), &mut String::new(), &mut |path, s| {
            if is_secret_path(path) {
                secrets.push((path.to_string(), s.to_string()));
            } else if is_url_path(path) && s.contains("://") && redact_urls(s) != s {
                let stable = orig_tree.as_ref().and_then(|t| stable_path(t, path));
                originals.push((path.to_string(), stable, s.to_string()));
            }
        });
    }
    let new_tree: Option<toml::Table> = toml::from_str(&doc.to_string()).ok();
    let mut left = Vec::new();
    walk_strings_mut(doc.as_item_mut(), &mut String::new(), &mut |path, v| {
        let Some(s) = v.as_str() else { return };
        if s == HIDDEN && is_secret_path(path) {
            match secrets.iter().find(|(p, _)| p == path) {
                Some((_, o)) => {
                    let decor = v.decor().clone();
                    *v = Value::from(o.as_str());
                    *v.decor_mut() = decor;
                }
                None => left.push(path.to_string()),
            }
            return;
        }
        if !holds_redaction(s) {
            return;
        }
        if !is_url_path(path) {
            left.push(path.to_string());
            return;
        }
        let stable = new_tree.as_ref().and_then(|t| stable_path(t, path));
        let same = |(p, st, o): &&(String, Option<String>, String)| {
            redact_urls(o) == s && (p == path || (st.is_some() && *st == stable))
        };
        // The same entry first (it may have moved), then the same key path.
        let pick = originals
            .iter()
            .filter(same)
            .find(|(_, st, _)| st.is_some() && *st == stable)
            .or_else(|| originals.iter().find(same))
            .map(|(_, _, o)| o.clone());
        match pick {
            Some(o) => {
                let decor = v.decor().clone();
                *v = Value::from(o);
                *v.decor_mut() = decor;
            }
            None => left.push(path.to_string()),
        }
    });
    left
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk_strings_ref(item: &Item, path: &mut String, f: &mut dyn FnMut(&str, &str)) {
    match item {
        Item::Value(v) => walk_value_ref(v, path, f),
        Item::Table(t) => {
            for (k, i) in t.iter() {
                let mut p = child(path, k);
                walk_strings_ref(i, &mut p, f);
            }
        }
        Item::ArrayOfTables(a) => {
            for (n, t) in a.iter().enumerate() {
                for (k, i) in t.iter() {
                    let mut p = child(&format!("{path}[{n}]"), k);
                    walk_strings_ref(i, &mut p, f);
                }
            }
        }
        Item::None => {}
    }
}

fn walk_value_ref(v: &Value, path: &mut String, f: &mut dyn FnMut(&str, &str)) {
    match v {
        Value::String(s) => f(path, s.value()),
        Value::Array(a) => {
            for (n, x) in a.iter().enumerate() {
                walk_value_ref(x, &mut format!("{path}[{n}]"), f);
            }
        }
        Value::InlineTable(t) => {
            for (k, x) in t.iter() {
                walk_value_ref(x, &mut child(path, k), f);
            }
        }
        _ => {}
    }
}

fn walk_strings_mut(item: &mut Item, path: &mut String, f: &mut dyn FnMut(&str, &mut Value)) {
    match item {
        Item::Value(v) => walk_value_mut(v, path, f),
        Item::Table(t) => {
            for (k, i) in t.iter_mut() {
                let mut p = child(path, k.get());
                walk_strings_mut(i, &mut p, f);
            }
        }
        Item::ArrayOfTables(a) => {
            for (n, t) in a.iter_mut().enumerate() {
                for (k, i) in t.iter_mut() {
                    let mut p = child(&format!("{path}[{n}]"), k.get());
                    walk_strings_mut(i, &mut p, f);
                }
            }
        }
        Item::None => {}
    }
}

/// Calls `f` on every string, number, boolean and date (not only
/// strings: a secret written inline may be any of them).
fn walk_value_mut(v: &mut Value, path: &mut String, f: &mut dyn FnMut(&str, &mut Value)) {
    match v {
        Value::String(_)
        | Value::Integer(_)
        | Value::Float(_)
        | Value::Boolean(_)
        | Value::Datetime(_) => f(path, v),
        Value::Array(a) => {
            for (n, x) in a.iter_mut().enumerate() {
                walk_value_mut(x, &mut format!("{path}[{n}]"), f);
            }
        }
        Value::InlineTable(t) => {
            for (k, x) in t.iter_mut() {
                walk_value_mut(x, &mut child(path, k.get()), f);
            }
        }
    }
}

/// The document as JSON for the page's forms: tables as objects, arrays
/// of tables as arrays, inline secrets hidden and every URL redacted.
/// `None` when it does not parse.
pub fn model(text: &str) -> Option<serde_json::Value> {
    let t: toml::Table = toml::from_str(&redact_text(text)).ok()?;
    let mut v = serde_json::to_value(t).ok()?;
    redact_json(&mut v);
    Some(v)
}

fn redact_json(v: &mut serde_json::Value) {
    use serde_json::Value as J;
    match v {
        J::String(s) if s.contains("://") => *s = redact_urls(s),
        J::Array(a) => a.iter_mut().for_each(redact_json),
        J::Object(o) => o.values_mut().for_each(redact_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TEXT: &str = r#"# The villa's gateway.
[site]
id = "s" # site id

[[devices]]
id = "panel"
# polled fast
poll_interval_s = 0.5

[[devices.points]]
id = "door-1"
scale = 1.0  # raw

[[devices.points]]
id = "door-2"

[[devices]]
id = "meter"

[[devices.points]]
id = "power"

[[alarms]]
point = "panel/door-1"
priority = 2

[[cameras]]
id = "gate"
url = "rtsp://admin:pa55@10.0.0.9/stream?token=abc"

[[cameras]]
id = "yard"
url = "rtsp://admin:other@10.0.0.9/stream?token=xyz"

[arming]
zones = [{ id = "villa-1", schedule = [] }]
"#;

    fn set(path: &str, value: serde_json::Value) -> Edit {
        Edit::Set {
            path: path.into(),
            value,
        }
    }

    #[test]
    fn paths_parse() {
        assert_eq!(
            parse_path("devices[2].points[0].scale").unwrap(),
            vec![
                Seg::Key("devices".into()),
                Seg::Index(2),
                Seg::Key("points".into()),
                Seg::Index(0),
                Seg::Key("scale".into()),
            ]
        );
        for bad in ["", "a..b", "a[x]", "a[1", "a]1[", "a b", "[0]"] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn set_keeps_comments_layout_and_float_type() {
        let out = apply_edits(
            TEXT,
            &[
                set("devices[0].points[0].scale", json!(2)),
                set("devices[0].points[1].unit", json!("°C")),
                set("alarms[0].priority", json!(1)),
                set("devices[0].name", json!("Door panel")),
            ],
        )
        .unwrap();
        assert!(out.contains("scale = 2.0  # raw"), "{out}");
        assert!(out.contains("# The villa's gateway."));
        assert!(out.contains("# polled fast"));
        assert!(out.contains("id = \"s\" # site id"));
        let c: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(c["alarms"][0]["priority"].as_integer(), Some(1));
        assert_eq!(
            c["devices"][0]["points"][1]["unit"].as_str(),
            Some("°C"),
            "{out}"
        );
        assert_eq!(c["devices"][0]["name"].as_str(), Some("Door panel"));
        // Only the edited lines changed.
        assert_eq!(super::super::diff::stats(TEXT, &out), (4, 2), "{out}");
    }

    #[test]
    fn added_point_stays_with_its_device() {
        let out = apply_edits(
            TEXT,
            &[Edit::Add {
                path: "devices[0].points".into(),
                value: json!({"id": "door-3", "register": "coil", "address": 3}),
            }],
        )
        .unwrap();
        let c: toml::Table = toml::from_str(&out).unwrap();
        let pts = c["devices"][0]["points"].as_array().unwrap();
        assert_eq!(pts.len(), 3, "{out}");
        assert_eq!(pts[2]["id"].as_str(), Some("door-3"));
        assert!(
            out.contains("[[devices.points]]\nid = \"door-3\"\n"),
            "{out}"
        );
        assert_eq!(c["devices"][1]["points"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn add_and_remove_rules_and_inline_entries() {
        let out = apply_edits(
            TEXT,
            &[
                Edit::Add {
                    path: "alarms".into(),
                    value: json!({"point": "panel/door-2", "equals": true, "priority": 3, "message": "m", "id": null}),
                },
                Edit::Remove {
                    path: "alarms[0]".into(),
                },
                Edit::Add {
                    path: "arming.zones".into(),
                    value: json!({"id": "villa-2"}),
                },
                set("arming.zones[0].armed_at_start", json!(true)),
                Edit::Remove {
                    path: "devices[1]".into(),
                },
                Edit::Add {
                    path: "push.tiers".into(),
                    value: json!({"name": "guards", "channels": ["hook"]}),
                },
            ],
        )
        .unwrap();
        let c: toml::Table = toml::from_str(&out).unwrap();
        let rules = c["alarms"].as_array().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0]["point"].as_str(), Some("panel/door-2"));
        assert!(rules[0].get("id").is_none());
        let zones = c["arming"]["zones"].as_array().unwrap();
        assert_eq!(zones.len(), 2);
        assert_eq!(zones[0]["armed_at_start"].as_bool(), Some(true));
        assert_eq!(c["devices"].as_array().unwrap().len(), 1);
        assert_eq!(c["push"]["tiers"][0]["channels"][0].as_str(), Some("hook"));
        assert!(!out.contains("[push]\n"), "{out}");
    }

    #[test]
    fn bad_edits_name_their_path() {
        let e = apply_edits(TEXT, &[set("devices[9].name", json!("x"))]).unwrap_err();
        assert_eq!(e.path(), Some("devices[9].name"));
        let e = apply_edits(TEXT, &[set("devices[0].points", json!(1))]).unwrap_err();
        assert!(matches!(e, EditError::Invalid { .. }), "{e}");
        let e = apply_edits(
            TEXT,
            &[Edit::Remove {
                path: "alarms[5]".into(),
            }],
        )
        .unwrap_err();
        assert!(matches!(e, EditError::NotFound { .. }));
        let e = apply_edits(TEXT, &[set("site.id", json!(f64::MAX))]);
        assert!(e.is_ok());
        let edits: Vec<Edit> = (0..=MAX_EDITS)
            .map(|_| set("site.id", json!("a")))
            .collect();
        assert_eq!(apply_edits(TEXT, &edits).unwrap_err(), EditError::TooMany);
    }

    #[test]
    fn null_removes_a_key() {
        let out = apply_edits(TEXT, &[set("devices[0].poll_interval_s", json!(null))]).unwrap();
        assert!(!out.contains("poll_interval_s"));
    }

    #[test]
    fn urls_are_redacted_everywhere() {
        let r = redact_urls(TEXT);
        assert!(!r.contains("pa55") && !r.contains("abc") && !r.contains("other"));
        assert!(r.contains("rtsp://***@10.0.0.9/stream?token=***"), "{r}");
        assert_eq!(redact_urls("no url here"), "no url here");
        assert_eq!(
            redact_urls("error: cannot reach http://u:p@h:1/x?k=v (timeout)"),
            "error: cannot reach http://***@h:1/x?k=*** (timeout)"
        );
        let m = model(TEXT).unwrap();
        assert!(!m.to_string().contains("pa55"));
        assert_eq!(m["devices"][0]["points"][0]["id"], "door-1");
    }

    proptest::proptest! {
        #[test]
        fn url_credentials_never_survive_redaction(
            user in "[a-zA-Z0-9._~-]{1,12}",
            pass in "[a-zA-Z0-9._~!$/?#@:-]{6,16}",
            token in "[a-zA-Z0-9]{6,16}",
            scheme in "(rtsp|rtsps|http|https|mqtt)",
            around in "[ a-z=\"'(]{0,8}",
        ) {
            let text = format!(
                "{around}{scheme}://{user}:{pass}@host:554/p?token={token}&x=1{around}"
            );
            let r = redact_urls(&text);
            proptest::prop_assert!(!r.contains(&format!(":{pass}@")), "{}", r);
            proptest::prop_assert!(!r.contains(&format!("token={token}")), "{}", r);
            proptest::prop_assert_eq!(redact_urls(&r), r.clone());
        }
    }

    #[test]
    fn inline_secrets_are_hidden_and_restored() {
        let text = "[uplink]\npassword = \"hunter2\" # oops\n[[push.channels]]\nname = \"wx\"\nkey = \"k3y\"\n[[linkage]]\nkey = \"fire-*\"\n[web.tls]\nkey = \"/etc/k.pem\"\n[[cameras]]\npassword = { file = \"/etc/cam.pw\" }\n";
        let shown = redact_text(text);
        assert!(
            !shown.contains("hunter2") && !shown.contains("k3y"),
            "{shown}"
        );
        assert!(shown.contains("password = \"***\" # oops"), "{shown}");
        assert!(shown.contains("key = \"fire-*\"") && shown.contains("/etc/k.pem"));
        assert!(shown.contains("/etc/cam.pw"));
        let m = model(text).unwrap();
        assert_eq!(m["uplink"]["password"], "***");
        let mut doc: DocumentMut = shown.parse().unwrap();
        assert!(restore_redacted(&mut doc, text).is_empty());
        assert_eq!(doc.to_string(), text);

        // Text that does not parse: hidden line by line.
        let broken =
            "[uplink\npassword = \"hunter2\"\nx = { secret='s3' , a = 1 }\nmy_password = \"no\"\n";
        let shown = redact_text(broken);
        assert_eq!(
            shown,
            "[uplink\npassword = \"***\"\nx = { secret=\"***\" , a = 1 }\nmy_password = \"no\"\n"
        );
        // Multi-line strings, quoted keys, bare values.
        let broken = "[uplink\npassword = \"\"\"hun\nter2\"\"\"\n\"secret\" = 'k3y'\n'password' = 123456 # no\ntoken=abc, x = 1\nkey = { file = \"/k\" }\n";
        let shown = redact_text(broken);
        for s in ["hun", "ter2", "k3y", "123456", "abc"] {
            assert!(!shown.contains(s), "{s}: {shown}");
        }
        assert_eq!(shown.lines().count(), broken.lines().count(), "{shown}");
        assert!(
            shown.contains("# no") && shown.contains("x = 1") && shown.contains("/k"),
            "{shown}"
        );
        // Numbers and other values at secret paths in text that parses.
        let text = "[uplink]\npassword = 123456\n[[push.channels]]\nkey = 1.5\nsecret = true\n";
        let shown = redact_text(text);
        assert!(
            !shown.contains("123456") && !shown.contains("1.5") && !shown.contains("true"),
            "{shown}"
        );
        assert_eq!(model(text).unwrap()["uplink"]["password"], "***");
        assert!(is_secret_path("site_broker.embedded.users[0].password"));
        assert!(!is_secret_path("linkage[0].key"));
    }

    #[test]
    fn redacted_urls_are_restored_only_at_their_own_url_key() {
        // One camera's redacted URL is unique in this file.
        let text = TEXT.replace("admin:other@10.0.0.9", "admin:other@10.0.0.10");
        let shown = redact_urls(&text);
        let cam = "rtsp://***@10.0.0.9/stream?token=***";
        assert!(shown.contains(cam));
        // Pasted into a name, a message, a site id: refused, never filled in.
        for (from, to) in [
            (
                "id = \"panel\"",
                format!("id = \"panel\"\nname = \"{cam}\""),
            ),
            ("priority = 2", format!("priority = 2\nmessage = \"{cam}\"")),
            ("id = \"s\" # site id", format!("id = \"{cam}\" # site id")),
        ] {
            let pasted = shown.replacen(from, &to, 1);
            let mut doc: DocumentMut = pasted.parse().unwrap();
            let left = restore_redacted(&mut doc, &text);
            assert_eq!(left.len(), 1, "{left:?}");
            let out = doc.to_string();
            // Only the camera's own URL holds its password.
            assert_eq!(out.matches("pa55").count(), 1, "{out}");
        }
        // Two cameras whose URLs redact alike: each keeps its own credentials.
        let shown = redact_urls(TEXT);
        let mut doc: DocumentMut = shown.parse().unwrap();
        assert!(restore_redacted(&mut doc, TEXT).is_empty());
        let out = doc.to_string();
        assert!(out.contains("admin:pa55@") && out.contains("admin:other@"));
        // A camera inserted before the others: restored by entry id.
        let moved = shown.replacen(
            "[[cameras]]\nid = \"gate\"",
            "[[cameras]]\nid = \"new\"\nurl = \"rtsp://10.0.0.7/s\"\n\n[[cameras]]\nid = \"gate\"",
            1,
        );
        let mut doc: DocumentMut = moved.parse().unwrap();
        assert!(restore_redacted(&mut doc, TEXT).is_empty());
        let out = doc.to_string();
        let gate = out.find("id = \"gate\"").unwrap();
        assert!(out[gate..].contains("admin:pa55@"), "{out}");
        assert!(is_url_path("push.channels[0].url") && is_url_path("cameras[2].url"));
        assert!(!is_url_path("devices[0].name"));
    }

    #[test]
    fn redacted_urls_sent_back_are_restored() {
        // The page edits the redacted text and sends it back.
        let shown = redact_urls(TEXT).replace("id = \"gate\"", "id = \"gate-1\"");
        let mut doc: DocumentMut = shown.parse().unwrap();
        let left = restore_redacted(&mut doc, TEXT);
        assert!(left.is_empty(), "{left:?}");
        let out = doc.to_string();
        assert!(out.contains("rtsp://admin:pa55@10.0.0.9/stream?token=abc"));
        assert!(out.contains("rtsp://admin:other@10.0.0.9/stream?token=xyz"));
        assert!(out.contains("id = \"gate-1\""));

        // A redacted URL that was changed cannot be restored.
        let changed = redact_urls(TEXT).replace(
            "10.0.0.9/stream?token=***\"\n\n[[cameras]]",
            "10.0.0.8/stream?token=***\"\n\n[[cameras]]",
        );
        let mut doc: DocumentMut = changed.parse().unwrap();
        assert_eq!(restore_redacted(&mut doc, TEXT), vec!["cameras[0].url"]);
    }
}
