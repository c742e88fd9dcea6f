//! Typed configuration: one TOML file, loaded and validated at once.
//!
//! Config structs live next to the code that uses them (`drivers`, `alarm`,
//! `journal`, `uplink`, `telemetry`); this module composes them, loads the
//! file, and reports every problem at once with file, line and key.

pub mod duration;
mod parse;
pub mod points;
mod profiles;
pub mod secret;
mod state_dir;
mod validate;

pub use points::{PointMeta, PointTable};
pub use state_dir::journal_path;
pub use validate::is_valid_id;

use crate::alarm::AlarmRuleConfig;
use crate::arming::ArmingConfig;
use crate::command::CommandsConfig;
use crate::drivers::modbus::SerialBusConfig;
use crate::drivers::{DeviceConfig, ProfileConfig};
use crate::journal::JournalConfig;
use crate::linkage::LinkageRuleConfig;
use crate::telemetry::TelemetryConfig;
use crate::uplink::UplinkConfig;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Identity of this gateway (`[site]`).
    pub site: SiteConfig,
    /// Logging (`[log]`).
    #[serde(default)]
    pub log: LogConfig,
    /// The durable event journal (`[journal]`).
    #[serde(default)]
    pub journal: JournalConfig,
    /// The central platform's broker (`[uplink]`).
    pub uplink: UplinkConfig,
    /// The site's MQTT broker for MQTT field devices (`[site_broker]`).
    #[serde(default)]
    pub site_broker: Option<crate::drivers::mqtt::SiteBrokerConfig>,
    /// Telemetry by exception (`[telemetry]`).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// RS-485 lines for Modbus RTU (`[[serial_buses]]`).
    #[serde(default)]
    pub serial_buses: Vec<SerialBusConfig>,
    /// Device profiles: point lists shared by identical devices (`[[profiles]]`).
    #[serde(default)]
    pub profiles: Vec<ProfileConfig>,
    /// Field devices (`[[devices]]`).
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// Alarm rules (`[[alarms]]`).
    #[serde(default)]
    pub alarms: Vec<AlarmRuleConfig>,
    /// Pushes to security staff (`[push]`).
    #[serde(default)]
    pub push: crate::push::PushConfig,
    /// The local web server: `/metrics`, `/healthz` (`[web]`).
    #[serde(default)]
    pub web: crate::web::WebConfig,
    /// Service supervision: main-loop liveness, watchdog (`[service]`).
    #[serde(default)]
    pub service: crate::service::ServiceConfig,
    /// What commands may do (`[commands]`): allowed actions, write targets, doors.
    #[serde(default)]
    pub commands: CommandsConfig,
    /// Zone arming and schedules (`[arming]`).
    #[serde(default)]
    pub arming: ArmingConfig,
    /// Linkage rules (`[[linkage]]`).
    #[serde(default)]
    pub linkage: Vec<LinkageRuleConfig>,
    /// RTSP cameras (`[[cameras]]`).
    #[serde(default)]
    pub cameras: Vec<crate::cameras::CameraConfig>,
    /// Where alarm clips go (`[clips]`).
    #[serde(default)]
    pub clips: crate::cameras::ClipsConfig,
}

/// Identity (`[site]`). Both ids appear in every uplink topic:
/// `estate/v1/{id}/{gateway}/`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteConfig {
    /// Site (estate) id, `[a-z0-9-]{1,64}`.
    pub id: String,
    /// This gateway's id within the site, `[a-z0-9-]{1,64}`. Event ids start with it.
    pub gateway: String,
    /// Human-readable name of the villa cluster.
    #[serde(default)]
    pub name: Option<String>,
}

/// Logging (`[log]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogConfig {
    /// Level filter in `RUST_LOG` syntax (`info`, `estate_gateway=debug`).
    /// The `RUST_LOG` environment variable, when set, wins.
    #[serde(default = "default_level")]
    pub level: String,
    /// `auto` (journald-friendly under systemd, else text), `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_level(),
            format: LogFormat::Auto,
        }
    }
}

fn default_level() -> String {
    "info".into()
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Auto,
    Text,
    Json,
}

/// One segment of a key path (`devices[2].points[0].address`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path inside the config file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> KeyPath {
        KeyPath(Vec::new())
    }
    pub fn key(&self, k: &str) -> KeyPath {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        KeyPath(v)
    }
    pub fn index(&self, i: usize) -> KeyPath {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            match s {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        if first {
            f.write_str("(top level)")?;
        }
        Ok(())
    }
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(
                f,
                "{}:{}: {}: {}",
                self.file.display(),
                l,
                self.key,
                self.message
            ),
            None => write!(f, "{}: {}: {}", self.file.display(), self.key, self.message),
        }
    }
}

/// Every problem found in a config file; also how far the file was
/// checked ([`ConfigErrors::hint`]) and the warnings
/// ([`ConfigErrors::warnings`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigProblem>, Checked, Vec<ConfigProblem>);

/// How far a file with problems was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// Every check ran: these are all the problems.
    Fully,
    /// The file could not be read, or did not read as the config's syntax
    /// and types: those problems (and unknown keys) are listed, the checks
    /// of the values did not run yet.
    Partly,
}

impl ConfigErrors {
    /// How far the file was checked.
    pub fn checked(&self) -> Checked {
        self.1
    }

    /// Non-fatal findings, as [`LoadedConfig::warnings`].
    pub fn warnings(&self) -> &[ConfigProblem] {
        &self.2
    }

    /// A line to print after the problems when checking stopped early.
    pub fn hint(&self) -> Option<&'static str> {
        (self.1 == Checked::Partly).then_some(
            "fix these, then check again: later problems are not checked yet (the values are checked once the file's syntax and types are right)",
        )
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// A loaded, validated configuration with its derived point table.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub config: Config,
    pub points: PointTable,
    /// The file it came from.
    pub path: PathBuf,
    /// Non-fatal findings (e.g. a keepalive too long for 20 s supervision).
    pub warnings: Vec<ConfigProblem>,
}

impl LoadedConfig {
    /// The configuration of a point of the point table.
    pub fn point_config(&self, meta: &PointMeta) -> &crate::drivers::PointConfig {
        &self.config.devices[meta.device_index].points[meta.point_index]
    }
}

/// What a file is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// This machine runs it (`run`, a reload, the web page's edits): what
    /// the machine lacks (GPIO) is a problem.
    ThisMachine,
    /// Any gateway (`check-config`, on a laptop or in CI as well): what
    /// this machine lacks is a warning.
    AnyMachine,
}

/// Read, parse and validate a config file to run on this machine.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    load_for(path, Target::ThisMachine)
}

/// Read, parse and validate a config file for `target`.
pub fn load_for(path: &Path, target: Target) -> Result<LoadedConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(
            vec![ConfigProblem {
                file: path.to_path_buf(),
                line: None,
                key: "(file)".into(),
                message: format!("cannot read: {e}"),
            }],
            Checked::Partly,
            Vec::new(),
        )
    })?;
    load_str_for(&text, path, target)
}

/// The problem reported for a secret written inline (its value is never
/// repeated in a message).
pub const INLINE_SECRET_MESSAGE: &str =
    "must be { file = … } or { env = … }; inline secrets are not accepted";

/// Parse and validate config text to run on this machine; `path` names it
/// in problems.
pub fn load_str(text: &str, path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    load_str_for(text, path, Target::ThisMachine)
}

/// Parse and validate config text for `target`; `path` names it in problems.
pub fn load_str_for(text: &str, path: &Path, target: Target) -> Result<LoadedConfig, ConfigErrors> {
    let lines = LineIndex::new(text);
    let problem = |line: Option<usize>, key: String, message: String| ConfigProblem {
        file: path.to_path_buf(),
        line,
        key,
        message,
    };
    // The spanned document (to name lines) is parsed only when there is
    // something to locate: a large valid file is parsed once, which keeps
    // the start-up memory peak low on a Pi.
    let doc_cell: std::cell::OnceCell<Option<toml_edit::ImDocument<String>>> =
        std::cell::OnceCell::new();
    let doc = || doc_cell.get_or_init(|| text.parse().ok()).as_ref();
    let parsed = parse::parse(text, &lines, doc);
    let mut problems: Vec<ConfigProblem> = parsed
        .unknown
        .iter()
        .map(|k| {
            problem(
                doc().and_then(|d| locate(d, &lines, k)),
                k.to_string(),
                "unknown key (misspelled, or not valid here)".into(),
            )
        })
        .collect();
    let Some(mut config) = parsed.config else {
        problems.extend(
            parsed
                .problems
                .into_iter()
                .map(|p| problem(p.line, p.key, p.message)),
        );
        problems.sort_by_key(|p| p.line.unwrap_or(0));
        return Err(ConfigErrors(problems, Checked::Partly, Vec::new()));
    };
    resolve_paths(&mut config, &config_dir(path));
    let (origins, mut findings) = profiles::expand(&mut config);
    findings.extend(validate::validate(&config, &origins));
    // A problem in a profile's point is found once per device using it.
    let mut seen = std::collections::HashSet::new();
    findings.retain(|f| seen.insert((f.key.to_string(), f.message.clone())));
    let mut warnings = Vec::new();
    for f in findings {
        let elsewhere = (f.this_machine || f.environment) && target == Target::AnyMachine;
        let message = match (elsewhere, f.environment) {
            (false, _) => f.message,
            (true, false) => format!(
                "{}: fine for a gateway that has it, but `run` refuses this file here",
                f.message
            ),
            (true, true) => format!(
                "{} in this shell: not checked; the service's environment must set it (e.g. an EnvironmentFile= drop-in), else `run` refuses this file",
                f.message
            ),
        };
        let p = problem(
            doc().and_then(|d| locate(d, &lines, &f.key)),
            f.key.to_string(),
            message,
        );
        if f.warning || elsewhere {
            warnings.push(p);
        } else {
            problems.push(p);
        }
    }
    if !problems.is_empty() {
        problems.sort_by_key(|p| p.line.unwrap_or(0));
        return Err(ConfigErrors(problems, Checked::Fully, warnings));
    }
    let points = PointTable::build(&config);
    Ok(LoadedConfig {
        config,
        points,
        path: path.to_path_buf(),
        warnings,
    })
}

/// The directory relative paths in the file at `path` are relative to:
/// the file's own directory, made absolute (a gateway started from `/`
/// and `check-config` run from anywhere read the same files).
pub fn config_dir(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new(""));
    if dir.as_os_str().is_empty() {
        std::env::current_dir().unwrap_or_default()
    } else {
        std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
    }
}

/// Make `p` relative to `base` when it is relative.
pub fn relative_to(p: &mut PathBuf, base: &Path) {
    if p.is_relative() && !p.as_os_str().is_empty() {
        *p = base.join(&*p);
    }
}

/// Make every relative path of the file (secret files, TLS files, the
/// journal and clip directories) relative to `base`, the file's directory,
/// so that checking and running read the same files whatever the working
/// directory. Every path key of the config is listed here.
fn resolve_paths(c: &mut Config, base: &Path) {
    relative_to(&mut c.journal.path, base);
    relative_to(&mut c.clips.path, base);
    if let Some(pw) = &mut c.uplink.password {
        pw.resolve_path(base);
    }
    if let Some(tls) = &mut c.uplink.tls {
        tls.resolve_paths(base);
    }
    if let Some(sb) = &mut c.site_broker {
        if let Some(pw) = &mut sb.password {
            pw.resolve_path(base);
        }
        if let Some(tls) = &mut sb.tls {
            tls.resolve_paths(base);
        }
        if let Some(e) = &mut sb.embedded {
            for u in &mut e.users {
                u.password.resolve_path(base);
            }
        }
    }
    if let Some(t) = &mut c.web.metrics_token {
        t.resolve_path(base);
    }
    if let Some(tls) = &mut c.web.tls {
        for p in [&mut tls.cert, &mut tls.key].into_iter().flatten() {
            relative_to(p, base);
        }
    }
    for ch in &mut c.push.channels {
        for s in [&mut ch.key, &mut ch.secret].into_iter().flatten() {
            s.resolve_path(base);
        }
    }
    for cam in &mut c.cameras {
        if let Some(pw) = &mut cam.password {
            pw.resolve_path(base);
        }
    }
}

/// The key path of the (deepest) key written on `line`: toml's type errors
/// carry a span but not the key, so the key is found from the line.
fn key_on_line(
    doc: &toml_edit::ImDocument<String>,
    lines: &LineIndex,
    line: usize,
) -> Option<KeyPath> {
    fn walk(
        item: &toml_edit::Item,
        path: &KeyPath,
        lines: &LineIndex,
        line: usize,
        found: &mut Option<KeyPath>,
    ) {
        if let Some(aot) = item.as_array_of_tables() {
            for i in 0..aot.len() {
                if let Some(next) = aot_item(item, i) {
                    walk(next, &path.index(i), lines, line, found);
                }
            }
        } else if let Some(table) = item.as_table_like() {
            for (k, next) in table.iter() {
                let here = path.key(k);
                let key_line = table
                    .get_key_value(k)
                    .and_then(|(kk, _)| kk.span())
                    .map(|s| lines.line_of(s.start));
                if key_line == Some(line) {
                    *found = Some(here.clone());
                }
                walk(next, &here, lines, line, found);
            }
        }
    }
    let mut found = None;
    walk(doc.as_item(), &KeyPath::root(), lines, line, &mut found);
    found
}

fn ignored_path(p: &serde_ignored::Path<'_>) -> KeyPath {
    fn walk(p: &serde_ignored::Path<'_>, out: &mut Vec<Seg>) {
        use serde_ignored::Path as P;
        match p {
            P::Root => {}
            P::Seq { parent, index } => {
                walk(parent, out);
                out.push(Seg::Index(*index));
            }
            P::Map { parent, key } => {
                walk(parent, out);
                out.push(Seg::Key(key.clone()));
            }
            P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                walk(parent, out)
            }
        }
    }
    let mut v = Vec::new();
    walk(p, &mut v);
    KeyPath(v)
}

/// Line of a key path in the document: the deepest part of the path that exists.
fn locate(doc: &toml_edit::ImDocument<String>, lines: &LineIndex, key: &KeyPath) -> Option<usize> {
    use toml_edit::Item;
    let mut item: &Item = doc.as_item();
    let mut best: Option<usize> = None;
    for seg in &key.0 {
        match seg {
            Seg::Key(k) => {
                let Some(table) = item.as_table_like() else {
                    break;
                };
                let Some((kk, next)) = table.get_key_value(k) else {
                    break;
                };
                if let Some(span) = kk.span() {
                    best = Some(lines.line_of(span.start));
                }
                item = next;
            }
            Seg::Index(i) => {
                if let Some(aot) = item.as_array_of_tables() {
                    let Some(t) = aot.get(*i) else { break };
                    if let Some(span) = t.span() {
                        best = Some(lines.line_of(span.start));
                    }
                    // Descend into the table.
                    let Some(next) = aot_item(item, *i) else {
                        break;
                    };
                    item = next;
                } else if let Some(arr) = item.as_array() {
                    let Some(v) = arr.get(*i) else { break };
                    if let Some(span) = v.span() {
                        best = Some(lines.line_of(span.start));
                    }
                    break;
                } else {
                    break;
                }
            }
        }
    }
    best
}

fn aot_item(item: &toml_edit::Item, i: usize) -> Option<&toml_edit::Item> {
    // `ArrayOfTables` exposes tables, not items; index through `Item`'s Index impl.
    item.get(i)
}

/// Byte offset → 1-based line number.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }
    fn line_of(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

#[cfg(test)]
mod tests;
