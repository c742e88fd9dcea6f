//! Where the gateway keeps its state (`[journal] path`: the journal, the
//! web page's accounts), read from a config file without the rest of it.

use super::{Checked, ConfigErrors, ConfigProblem};
use crate::journal::JournalConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The one key read; every other key is ignored, unchecked.
#[derive(Deserialize, Default)]
struct StateOnly {
    #[serde(default)]
    journal: JournalPathOnly,
}

#[derive(Deserialize)]
struct JournalPathOnly {
    #[serde(default = "default_journal_path")]
    path: PathBuf,
}

impl Default for JournalPathOnly {
    fn default() -> Self {
        JournalPathOnly {
            path: default_journal_path(),
        }
    }
}

fn default_journal_path() -> PathBuf {
    JournalConfig::default().path
}

/// `[journal] path` of the config file at `path` (its default when the
/// file does not set it), for commands that need only the state directory
/// (`estate-gateway user …`). Nothing else in the file is checked and no
/// secret is resolved: an `{ env = … }` secret set only in the service's
/// environment, or a problem elsewhere in the file, does not stop them.
pub fn journal_path(path: &Path) -> Result<PathBuf, ConfigErrors> {
    let problem = |line, message| {
        ConfigErrors(
            vec![ConfigProblem {
                file: path.to_path_buf(),
                line,
                key: "journal.path".into(),
                message,
            }],
            Checked::Partly,
            Vec::new(),
        )
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| problem(None, format!("cannot read the file: {e}")))?;
    match toml::from_str::<StateOnly>(&text) {
        Ok(s) => Ok(s.journal.path),
        Err(e) => {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            Err(problem(line, e.message().to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<PathBuf, ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, text).unwrap();
        journal_path(&file)
    }

    #[test]
    fn only_the_journal_path_is_read() {
        // An env secret unset here, a key unknown, a value out of range:
        // none of them matters for where the state is.
        let text = r#"
[site]
id = "s1"
gateway = "gw1"
mystery = 1

[journal]
path = "/srv/gw/journal"
max_bytes = 0

[uplink]
host = "127.0.0.1"
password = { env = "ESTATE_GATEWAY_TEST_NEVER_SET" }
"#;
        assert_eq!(read(text).unwrap(), PathBuf::from("/srv/gw/journal"));
        assert_eq!(
            read("[site]\nid = \"s1\"\n").unwrap(),
            JournalConfig::default().path
        );
    }

    #[test]
    fn an_unreadable_path_is_named() {
        let e = read("[site]\nid = \"s1\"\n\n[journal]\npath = 7\n").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("gateway.toml:5: journal.path"), "{text}");
        let e = read("[journal\n").unwrap_err();
        assert_eq!(e.0[0].line, Some(1), "{e}");
    }
}
