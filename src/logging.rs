//! Log setup: `tracing` with structured fields; journald-friendly under
//! systemd (no timestamps, `<N>` syslog priority prefixes). The newest
//! lines at INFO and above are also kept in memory ([`recent`]) for the
//! web page's system view, with the values of secret-looking fields hidden.

use crate::config::{LogConfig, LogFormat};
use serde::Serialize;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry};

/// Install the global subscriber. `RUST_LOG` wins over the config's level.
/// Lines at INFO and above are also kept in the in-memory ring of
/// [`recent`] (the web page's system view), whatever the level.
pub fn init(cfg: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&cfg.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match (cfg.format, under_journald) {
        (LogFormat::Json, _) => fmt.json().flatten_event(true).boxed(),
        (LogFormat::Auto, true) => fmt
            .with_ansi(false)
            .event_format(Journald(Format::default().without_time().with_target(true)))
            .boxed(),
        _ => fmt.boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(RingLayer(ring().clone()).with_filter(LevelFilter::INFO))
        .try_init();
}

/// Lines kept by the in-memory ring.
pub const RING_LINES: usize = 500;
/// Warnings and errors kept besides, once the ring has moved past them:
/// on a busy site the info lines (an "event recorded" per event) would
/// otherwise push the last problems out within a minute.
pub const RING_PROBLEMS: usize = 200;
/// Longest line kept (longer ones are cut).
const RING_LINE_MAX: usize = 2000;
/// Field names whose values are never kept, whatever their type (defence
/// in depth: secrets are already redacted by their type).
const HIDDEN_FIELDS: &[&str] = &[
    "password",
    "passwd",
    "token",
    "secret",
    "credential",
    "authorization",
];

/// One log line as the ring keeps it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogLine {
    pub ts: crate::event::Timestamp,
    /// `ERROR`, `WARN` or `INFO`.
    pub level: &'static str,
    pub target: &'static str,
    /// Spans (`modbus_device{device=…}`), message and fields, one line.
    pub text: String,
}

/// The newest log lines, a bounded buffer, and the warnings and errors
/// that were pushed out of it.
#[derive(Debug, Default)]
pub struct LogRing {
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    /// The newest [`RING_LINES`] lines, oldest first.
    lines: VecDeque<LogLine>,
    /// Up to [`RING_PROBLEMS`] warnings and errors older than every line
    /// of `lines`, oldest first.
    problems: VecDeque<LogLine>,
}

impl LogRing {
    fn push(&self, line: LogLine) {
        let mut g = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if g.lines.len() >= RING_LINES {
            if let Some(old) = g.lines.pop_front() {
                if matches!(old.level, "WARN" | "ERROR") {
                    if g.problems.len() >= RING_PROBLEMS {
                        g.problems.pop_front();
                    }
                    g.problems.push_back(old);
                }
            }
        }
        g.lines.push_back(line);
    }

    /// Up to `n` newest lines, oldest first: the kept warnings and errors
    /// (older than the rest), then the newest lines.
    pub fn recent(&self, n: usize) -> Vec<LogLine> {
        let g = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let all = g.problems.iter().chain(g.lines.iter());
        let len = g.problems.len() + g.lines.len();
        all.skip(len.saturating_sub(n)).cloned().collect()
    }
}

fn ring() -> &'static Arc<LogRing> {
    static RING: OnceLock<Arc<LogRing>> = OnceLock::new();
    RING.get_or_init(Default::default)
}

/// Up to `n` newest log lines at INFO and above, oldest first, with the
/// warnings and errors kept from before them (empty when [`init`] was
/// not called, as in unit tests).
pub fn recent(n: usize) -> Vec<LogLine> {
    ring().recent(n)
}

/// Whether a field's name contains one of [`HIDDEN_FIELDS`], in any case.
fn is_hidden(name: &str) -> bool {
    HIDDEN_FIELDS.iter().any(|h| {
        name.as_bytes()
            .windows(h.len())
            .any(|w| w.eq_ignore_ascii_case(h.as_bytes()))
    })
}

/// This thread's log lines at INFO and above, kept in a fresh ring while
/// the guard lives (for tests of other modules' log lines).
#[cfg(test)]
pub(crate) fn capture() -> (Arc<LogRing>, tracing::subscriber::DefaultGuard) {
    let ring = Arc::new(LogRing::default());
    let sub =
        tracing_subscriber::registry().with(RingLayer(ring.clone()).with_filter(LevelFilter::INFO));
    (ring, tracing::subscriber::set_default(sub))
}

/// Writes `name=value` pairs into one line; hides the values of
/// [`HIDDEN_FIELDS`]. The message goes in at `message_at`, before the
/// pairs, whatever the order the fields are recorded in.
struct Fields<'a> {
    out: &'a mut String,
    /// Where the message goes (the end of the span prefix).
    message_at: usize,
    /// Whether the first pair needs a space before it (an event's pairs
    /// follow its message; a span's stand alone).
    lead_space: bool,
}

impl Fields<'_> {
    /// ` name=` (or `name=` first in a span's line); false when the
    /// value is hidden (then `[redacted]` is written).
    fn name(&mut self, field: &tracing::field::Field) -> bool {
        let name = field.name();
        if self.lead_space || self.out.len() > self.message_at {
            self.out.push(' ');
        }
        self.out.push_str(name);
        self.out.push('=');
        if is_hidden(name) {
            self.out.push_str("[redacted]");
            return false;
        }
        true
    }
}

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        use fmt::Write as _;
        if field.name() == "message" {
            if self.out.len() == self.message_at {
                let _ = write!(self.out, "{value:?}");
            } else {
                self.out.insert_str(self.message_at, &format!("{value:?}"));
            }
            return;
        }
        if self.name(field) {
            let _ = write!(self.out, "{value:?}");
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        // Strings without the quotes Debug adds.
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else if self.name(field) {
            self.out.push_str(value);
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        use fmt::Write as _;
        if self.name(field) {
            let _ = write!(self.out, "{value}");
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        use fmt::Write as _;
        if self.name(field) {
            let _ = write!(self.out, "{value}");
        }
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        if self.name(field) {
            self.out.push_str(if value { "true" } else { "false" });
        }
    }
}

/// A span's fields, formatted once when it opens.
struct SpanFields(String);

/// The tracing layer that fills the ring.
struct RingLayer(Arc<LogRing>);

impl<S> Layer<S> for RingLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut out = String::new();
        let mut v = Fields {
            out: &mut out,
            message_at: 0,
            lead_space: false,
        };
        attrs.record(&mut v);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(out));
        }
    }

    fn on_event(&self, ev: &Event<'_>, ctx: Context<'_, S>) {
        let mut text = String::with_capacity(160);
        if let Some(scope) = ctx.event_scope(ev) {
            for span in scope.from_root() {
                text.push_str(span.name());
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    if !f.0.is_empty() {
                        text.push('{');
                        text.push_str(&f.0);
                        text.push('}');
                    }
                }
                text.push_str(": ");
            }
        }
        let message_at = text.len();
        ev.record(&mut Fields {
            out: &mut text,
            message_at,
            lead_space: true,
        });
        if text.len() > RING_LINE_MAX {
            let mut cut = RING_LINE_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        let m = ev.metadata();
        self.0.push(LogLine {
            ts: crate::event::Timestamp::now(),
            level: match *m.level() {
                Level::ERROR => "ERROR",
                Level::WARN => "WARN",
                Level::INFO => "INFO",
                Level::DEBUG => "DEBUG",
                Level::TRACE => "TRACE",
            },
            target: m.target(),
            text,
        });
    }
}

/// Prefixes each line with its syslog priority for journald.
struct Journald(Format<Full, ()>);

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        ev: &Event<'_>,
    ) -> fmt::Result {
        let prio = match *ev.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(w, "<{prio}>")?;
        self.0.format_event(ctx, w, ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ring(f: impl FnOnce()) -> Arc<LogRing> {
        let (ring, _guard) = capture();
        f();
        ring
    }

    #[test]
    fn keeps_info_and_above_with_spans_and_fields() {
        let ring = with_ring(|| {
            let span = tracing::info_span!("modbus_device", device = "door-panel", unit = 1);
            let _e = span.enter();
            tracing::debug!("not kept");
            tracing::warn!(error = "timeout", failures = 3, "poll failed");
            tracing::info!(late = true, n = -2, message = "message last");
        });
        let lines = ring.recent(10);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].level, "WARN");
        assert_eq!(
            lines[0].text,
            "modbus_device{device=door-panel unit=1}: poll failed error=timeout failures=3"
        );
        // A message recorded after the pairs still comes first.
        assert_eq!(
            lines[1].text,
            "modbus_device{device=door-panel unit=1}: message last late=true n=-2"
        );
    }

    #[test]
    fn secret_looking_fields_are_hidden() {
        let ring = with_ring(|| {
            tracing::warn!(setup_token = %"abc123", user = "wang", "setup");
            tracing::warn!(Authorization = "Bearer xyz789", "upper case");
            let span = tracing::info_span!("s", password = "hunter2");
            let _e = span.enter();
            tracing::info!(api_token = "t0k", "x");
        });
        let all = format!("{:?}", ring.recent(10));
        assert!(
            !all.contains("abc123")
                && !all.contains("hunter2")
                && !all.contains("t0k")
                && !all.contains("xyz789"),
            "{all}"
        );
        assert!(
            all.contains("setup_token=[redacted]") && all.contains("user=wang"),
            "{all}"
        );
    }

    #[test]
    fn problems_outlive_a_flood_of_info_lines() {
        let ring = with_ring(|| {
            tracing::warn!(n = 1, "device offline");
            tracing::info!("recorded");
            tracing::error!(n = 2, "journal commit failed");
            for i in 0..(RING_LINES * 3) {
                tracing::info!(i, "event recorded");
            }
        });
        let lines = ring.recent(usize::MAX);
        assert_eq!(lines.len(), RING_LINES + 2);
        assert_eq!(lines[0].text, "device offline n=1");
        assert_eq!(lines[1].text, "journal commit failed n=2");
        assert!(lines[2..].iter().all(|l| l.level == "INFO"));
        assert!(lines[2].text.ends_with(&format!("i={}", RING_LINES * 2)));
        // Bounded too, oldest problems out first.
        let ring = with_ring(|| {
            for i in 0..(RING_PROBLEMS + RING_LINES + 10) {
                tracing::warn!(i, "poll failed");
            }
        });
        let lines = ring.recent(usize::MAX);
        assert_eq!(lines.len(), RING_PROBLEMS + RING_LINES);
        assert!(lines[0].text.ends_with("i=10"), "{:?}", lines[0]);
        assert_eq!(ring.recent(3).len(), 3);
        assert!(ring.recent(3)[2]
            .text
            .ends_with(&format!("i={}", RING_PROBLEMS + RING_LINES + 9)));
    }

    #[test]
    fn bounded_newest_kept() {
        let ring = with_ring(|| {
            for i in 0..(RING_LINES + 20) {
                tracing::info!(i, "line");
            }
        });
        let lines = ring.recent(usize::MAX);
        assert_eq!(lines.len(), RING_LINES);
        assert!(lines
            .last()
            .unwrap()
            .text
            .ends_with(&format!("i={}", RING_LINES + 19)));
        assert_eq!(ring.recent(3).len(), 3);
    }
}
