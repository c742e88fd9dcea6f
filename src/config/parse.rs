//! From text to a typed [`Config`], with every syntax and type problem
//! named by line and key.
//!
//! serde stops at the first type error. To report the others as well, the
//! key-value holding the wrong value is blanked out (replaced by spaces,
//! line breaks kept, so every offset and line stays the same) and the text
//! is read again, until it reads or nothing more can be blanked. Unknown
//! keys are gathered on every pass. A missing required key or section
//! cannot be stood in for, so it ends the passes. A text read only after
//! blanking is not checked further: its values would be defaults standing
//! in for the wrong ones, and checks over them could report problems that
//! are not in the file.

use super::{Config, KeyPath, LineIndex, Seg, INLINE_SECRET_MESSAGE};
use std::collections::HashMap;
use std::ops::Range;
use toml_edit::{ImDocument, Item, TableLike, Value};

/// Most type errors reported from one file (each costs a parse of it).
const MAX_TYPE_ERRORS: usize = 50;

/// Values tried, in turn, in place of a required key's wrong value.
const STAND_INS: [&str; 5] = ["\"\"", "0", "false", "[]", "{}"];

/// A syntax or type problem, located.
pub(super) struct Located {
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

/// What reading the text gave.
pub(super) struct Parsed {
    /// The typed config: only when the text read as written.
    pub config: Option<Config>,
    /// Unknown keys, each once.
    pub unknown: Vec<KeyPath>,
    /// Syntax and type problems; with any, `config` is `None`.
    pub problems: Vec<Located>,
}

/// A key-value blanked out of the working text.
struct Blanked {
    key: String,
    /// Where it was, in the working text.
    range: Range<usize>,
    /// Its text before and after the value (`gateway = `, a comma).
    prefix: String,
    suffix: String,
    /// Stand-ins tried so far.
    tried: usize,
}

/// Read `text` into a [`Config`]; `doc` is the spanned document of `text`
/// (`None` when it does not parse).
pub(super) fn parse<'d>(
    text: &str,
    lines: &LineIndex,
    doc: impl Fn() -> Option<&'d ImDocument<String>>,
) -> Parsed {
    let mut unknown: Vec<KeyPath> = Vec::new();
    let mut problems: Vec<Located> = Vec::new();
    let mut blanked: Vec<Blanked> = Vec::new();
    // The text with wrong values blanked out, its document and lines
    // (line breaks are kept, so lines are those of `text`).
    let mut work: Option<(String, Option<ImDocument<String>>, LineIndex)> = None;
    let mut passes = 0;
    let config = loop {
        passes += 1;
        let src = work.as_ref().map_or(text, |w| w.0.as_str());
        let de = match toml::Deserializer::parse(src) {
            Ok(de) => de,
            Err(e) => {
                // Blanking keeps the syntax valid; if it did not, the type
                // errors found so far stand alone.
                if work.is_none() {
                    problems.push(syntax_problem(text, lines, &e));
                }
                break None;
            }
        };
        let read: Result<Config, toml::de::Error> =
            serde_ignored::deserialize(de, |p| unknown.push(super::ignored_path(&p)));
        let e = match read {
            Ok(c) if problems.is_empty() => break Some(c),
            Ok(_) => break None,
            Err(e) => e,
        };
        if passes > MAX_TYPE_ERRORS * (STAND_INS.len() + 1) {
            break None;
        }
        let (src, wdoc, wlines) = match &work {
            Some((t, d, l)) => (t.as_str(), d.as_ref(), l),
            None => (text, doc(), lines),
        };
        let span = e.span();
        let line = span.as_ref().map(|s| wlines.line_of(s.start));
        let at = match (&span, wdoc) {
            (Some(s), Some(d)) if !(s.is_empty() && s.start == 0) => item_at(d, src, s),
            _ => None,
        };
        if let Some(field) = missing_field(e.message()) {
            let parent = match &span {
                Some(s) if s.is_empty() && s.start == 0 => Some(KeyPath::root()),
                _ => at.map(|a| a.path),
            };
            let key = parent
                .as_ref()
                .map(|p| p.key(field).to_string())
                .unwrap_or_else(|| field.to_string());
            // A required key whose wrong value was blanked out: a value
            // of another type stands in for it, so reading goes on.
            if let Some(i) = blanked.iter().position(|b| b.key == key) {
                if stand_in(&mut work, &mut blanked, i) {
                    continue;
                }
                break None;
            }
            let what = if parent.as_ref().is_some_and(|p| p.0.is_empty()) {
                "missing (required section)"
            } else {
                "missing (required key)"
            };
            problems.push(Located {
                line: line.or(Some(1)),
                key,
                message: what.into(),
            });
            break None;
        }
        // The stand-in did not fit: try the next.
        if let Some(a) = &at {
            let k = key_of_blank(&a.path).to_string();
            if let Some(i) = blanked.iter().position(|b| b.key == k && b.tried > 0) {
                if stand_in(&mut work, &mut blanked, i) {
                    continue;
                }
                break None;
            }
        }
        let key = match (&at, wdoc) {
            (Some(a), _) => a.path.to_string(),
            (None, None) => "(syntax)".to_string(),
            (None, Some(d)) => line
                .and_then(|l| super::key_on_line(d, wlines, l))
                .map(|k| k.to_string())
                .unwrap_or_else(|| "(value)".into()),
        };
        // A secret written inline is refused without its value (see
        // `SecretSource`'s deserializer); should a parser message quote
        // it anyway, never repeat it (it would reach logs, the web page
        // and the platform).
        let message = if e.message().contains("SecretSource")
            || e.message().contains(INLINE_SECRET_MESSAGE)
        {
            INLINE_SECRET_MESSAGE.to_string()
        } else {
            first_line(e.message())
        };
        problems.push(Located { line, key, message });
        let Some(At {
            path,
            blank: Some((range, value)),
        }) = at
        else {
            break None;
        };
        if problems.len() >= MAX_TYPE_ERRORS {
            break None;
        }
        let mut w = match work.take() {
            Some((t, _, _)) => t,
            None => text.to_string(),
        };
        blanked.push(Blanked {
            key: key_of_blank(&path).to_string(),
            range: range.clone(),
            prefix: w[range.start..value.start].to_string(),
            suffix: w[value.end..range.end].to_string(),
            tried: 0,
        });
        let spaced: String = w[range.clone()]
            .chars()
            .map(|c| if c == '\n' || c == '\r' { c } else { ' ' })
            .collect();
        w.replace_range(range, &spaced);
        work = Some(reparsed(w));
    };
    let mut seen = std::collections::HashSet::new();
    unknown.retain(|k| seen.insert(k.to_string()));
    Parsed {
        config,
        unknown,
        problems,
    }
}

fn reparsed(w: String) -> (String, Option<ImDocument<String>>, LineIndex) {
    let doc = w.parse().ok();
    let lines = LineIndex::new(&w);
    (w, doc, lines)
}

/// Put the next stand-in value in place of blanked key-value `i`; `false`
/// when every stand-in was tried.
fn stand_in(
    work: &mut Option<(String, Option<ImDocument<String>>, LineIndex)>,
    blanked: &mut [Blanked],
    i: usize,
) -> bool {
    let Some((mut w, _, _)) = work.take() else {
        return false;
    };
    let b = &mut blanked[i];
    let Some(value) = STAND_INS.get(b.tried) else {
        return false;
    };
    b.tried += 1;
    // The blanked lines stay (after the value): every line keeps its number.
    let breaks = w[b.range.clone()].matches('\n').count();
    let new = format!("{}{value}{}{}", b.prefix, "\n".repeat(breaks), b.suffix);
    let (at, old_len) = (b.range.start, b.range.len());
    w.replace_range(b.range.clone(), &new);
    b.range = at..at + new.len();
    let shift = new.len() as isize - old_len as isize;
    for (j, o) in blanked.iter_mut().enumerate() {
        if j != i && o.range.start >= at + old_len {
            o.range =
                (o.range.start as isize + shift) as usize..(o.range.end as isize + shift) as usize;
        }
    }
    *work = Some(reparsed(w));
    true
}

/// The key path blanked for a problem at `path`: an array element's
/// problem blanks the whole array.
fn key_of_blank(path: &KeyPath) -> KeyPath {
    let mut p = path.clone();
    while matches!(p.0.last(), Some(Seg::Index(_))) {
        p.0.pop();
    }
    p
}

/// `X` of serde's "missing field `X`".
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|r| r.split_once('`'))
        .map(|(f, _)| f)
}

fn first_line(s: &str) -> String {
    s.trim().lines().next().unwrap_or("invalid").to_string()
}

/// A syntax error: a duplicate key is named by its key path.
fn syntax_problem(text: &str, lines: &LineIndex, e: &toml::de::Error) -> Located {
    let line = e.span().map(|s| lines.line_of(s.start));
    let message = first_line(e.message());
    match e.span() {
        Some(s) if message == "duplicate key" && text.get(s.clone()).is_some() => Located {
            line,
            key: duplicate_key(text, s),
            message: "duplicate key: set more than once in the same table (as a key, a [table] or an inline table); keep one".into(),
        },
        _ => Located {
            line,
            key: "(syntax)".into(),
            message,
        },
    }
}

/// The key a duplicate-key error at `span` is about. The spanned document
/// cannot be had (the text does not parse), so the tables are followed
/// through the headers above it.
fn duplicate_key(text: &str, span: Range<usize>) -> String {
    let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let mut headers = Headers::default();
    for l in text[..line_start].lines() {
        if let Some((inner, aot)) = header(l) {
            headers.enter(&key_segments(inner), aot);
        }
    }
    let before = &text[line_start..span.start];
    let name = unquote(text[span].trim());
    let t = before.trim_start();
    let path = if let Some(inner) = t.strip_prefix('[') {
        // `[a.b]` defined again (or `b` of an `a.b = …` / `b = { … }`).
        let mut segs = key_segments(inner.trim_start_matches('['));
        segs.push(name);
        headers.resolve(&segs, false)
    } else {
        let mut segs = match before.split_once('=') {
            // Inside an inline table: `key = { …, name = …`.
            Some((k, _)) => key_segments(k),
            // A dotted key: `modbus.name = …`.
            None => key_segments(before),
        };
        segs.push(name);
        let mut p = headers.current.clone();
        p.0.extend(segs.into_iter().map(Seg::Key));
        p
    };
    path.to_string()
}

/// `[a.b]` → ("a.b", false); `[[a.b]]` → ("a.b", true).
fn header(line: &str) -> Option<(&str, bool)> {
    let t = line.trim();
    if let Some(r) = t.strip_prefix("[[") {
        return r.split_once("]]").map(|(k, _)| (k, true));
    }
    let r = t.strip_prefix('[')?;
    r.split_once(']').map(|(k, _)| (k, false))
}

/// The tables entered by the headers read so far.
#[derive(Default)]
struct Headers {
    /// Last index of each array of tables, by its (indexed) path.
    arrays: HashMap<String, usize>,
    current: KeyPath,
}

impl Headers {
    fn enter(&mut self, segs: &[String], aot: bool) {
        self.current = self.resolve(segs, aot);
    }

    /// The indexed path of a header; `aot` adds an element to its array.
    fn resolve(&mut self, segs: &[String], aot: bool) -> KeyPath {
        let mut p = KeyPath::root();
        for (i, s) in segs.iter().enumerate() {
            p = p.key(s);
            let last = i + 1 == segs.len();
            if last && aot {
                let n = self
                    .arrays
                    .entry(p.to_string())
                    .and_modify(|n| *n += 1)
                    .or_insert(0);
                p = p.index(*n);
            } else if let Some(n) = self.arrays.get(&p.to_string()) {
                p = p.index(*n);
            }
        }
        p
    }
}

/// Segments of a dotted key (`a."b.c" . d` → a, b.c, d), unquoted.
fn key_segments(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                cur.push(c);
            }
            (None, '.') => out.push(std::mem::take(&mut cur)),
            (None, c) => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| unquote(s.trim()))
        .filter(|s| !s.is_empty())
        .collect()
}

fn unquote(s: &str) -> String {
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner.to_string();
        }
    }
    s.to_string()
}

/// The deepest key (or table) of the document holding `span`, and the text
/// range that removes its key-value (none for a `[table]`).
struct At {
    path: KeyPath,
    /// The key-value's range to blank, and its value's range within it.
    blank: Option<(Range<usize>, Range<usize>)>,
}

fn item_at(doc: &ImDocument<String>, text: &str, span: &Range<usize>) -> Option<At> {
    let mut best = None;
    if let Some(t) = doc.as_item().as_table_like() {
        walk_table(t, &KeyPath::root(), false, text, span, &mut best);
    }
    best
}

fn holds(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

fn walk_table(
    t: &dyn TableLike,
    path: &KeyPath,
    inline: bool,
    text: &str,
    span: &Range<usize>,
    best: &mut Option<At>,
) {
    for (k, item) in t.iter() {
        let here = path.key(k);
        match item {
            Item::Value(v) => {
                let key_span = t.get_key_value(k).and_then(|(kk, _)| kk.span());
                let (Some(ks), Some(vs)) = (key_span, v.span()) else {
                    continue;
                };
                let range = ks.start..vs.end;
                if holds(&range, span) {
                    *best = Some(At {
                        path: here.clone(),
                        blank: blank_range(text, range, inline).map(|b| (b, vs)),
                    });
                    walk_value(v, &here, text, span, best);
                }
            }
            Item::Table(sub) => {
                if sub.span().is_some_and(|h| holds(&h, span)) {
                    *best = Some(At {
                        path: here.clone(),
                        blank: None,
                    });
                }
                walk_table(sub, &here, false, text, span, best);
            }
            Item::ArrayOfTables(aot) => {
                for (i, sub) in aot.iter().enumerate() {
                    let p = here.index(i);
                    if sub.span().is_some_and(|h| holds(&h, span)) {
                        *best = Some(At {
                            path: p.clone(),
                            blank: None,
                        });
                    }
                    walk_table(sub, &p, false, text, span, best);
                }
            }
            Item::None => {}
        }
    }
}

fn walk_value(v: &Value, path: &KeyPath, text: &str, span: &Range<usize>, best: &mut Option<At>) {
    match v {
        Value::InlineTable(t) => walk_table(t, path, true, text, span, best),
        Value::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                if e.span().is_some_and(|s| holds(&s, span)) {
                    let p = path.index(i);
                    // Named by its element; removed as the whole key-value.
                    let blank = best.as_ref().and_then(|b| b.blank.clone());
                    *best = Some(At {
                        path: p.clone(),
                        blank,
                    });
                    walk_value(e, &p, text, span, best);
                }
            }
        }
        _ => {}
    }
}

/// The text to blank to remove the key-value `key..value`: with a dotted
/// key's leading parts, and (in an inline table) one separating comma.
fn blank_range(text: &str, range: Range<usize>, inline: bool) -> Option<Range<usize>> {
    let bytes = text.as_bytes();
    let key_part = |b: u8| b.is_ascii_alphanumeric() || b"_-.\"' \t".contains(&b);
    let mut start = range.start;
    while start > 0 && key_part(bytes[start - 1]) {
        start -= 1;
    }
    let mut end = range.end;
    if inline {
        let mut after = end;
        while after < bytes.len() && matches!(bytes[after], b' ' | b'\t') {
            after += 1;
        }
        if bytes.get(after) == Some(&b',') {
            end = after + 1;
        } else {
            let mut b = start;
            while b > 0 && matches!(bytes[b - 1], b' ' | b'\t' | b'\n' | b'\r') {
                b -= 1;
            }
            if b > 0 && bytes[b - 1] == b',' {
                start = b - 1;
            }
        }
    }
    text.is_char_boundary(start)
        .then_some(start..end)
        .filter(|r| text.is_char_boundary(r.end))
}
