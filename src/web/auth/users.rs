//! Accounts of the local web page: name, role, argon2id password hash and
//! language, kept in one JSON file in the state directory
//! (`<journal path>/web-users.json`, mode 0600), rewritten atomically
//! (temporary file, fsync, rename, fsync of the directory).
//!
//! There is no default account: the first technician is created with
//! `estate-gateway user add` or with the one-time setup token
//! ([`SetupToken`]).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

/// File name of the accounts file inside the state directory.
pub const USERS_FILE: &str = "web-users.json";

/// Longest user name, in bytes (names are ASCII).
pub const MAX_NAME_LEN: usize = 32;

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 10;

/// Longest password accepted (argon2 takes any length; this bounds the work
/// an unauthenticated request can ask for).
pub const MAX_PASSWORD_LEN: usize = 256;

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Commissioning and service: everything, including users and config.
    Technician,
    /// Gatehouse: watch, acknowledge and shelve alarms.
    Guard,
    /// Read only.
    Viewer,
}

impl Role {
    /// May acknowledge and shelve alarms.
    pub fn can_operate(self) -> bool {
        matches!(self, Role::Technician | Role::Guard)
    }
    /// May manage users, read the configuration and the audit log.
    pub fn can_administer(self) -> bool {
        self == Role::Technician
    }
}

impl std::str::FromStr for Role {
    type Err = UserError;
    fn from_str(s: &str) -> Result<Role, UserError> {
        match s {
            "technician" => Ok(Role::Technician),
            "guard" => Ok(Role::Guard),
            "viewer" => Ok(Role::Viewer),
            _ => Err(UserError::BadRole(s.to_string())),
        }
    }
}

/// Page language.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lang {
    /// Simplified Chinese (default).
    #[default]
    #[serde(rename = "zh-CN")]
    ZhCn,
    #[serde(rename = "en")]
    En,
}

/// One account as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// PHC string (`$argon2id$…`); never sent to a client.
    pub hash: String,
    #[serde(default)]
    pub lang: Lang,
}

/// What a client may see of an account.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
    pub lang: Lang,
}

impl From<&User> for UserInfo {
    fn from(u: &User) -> UserInfo {
        UserInfo {
            name: u.name.clone(),
            role: u.role,
            lang: u.lang,
        }
    }
}

/// Why an account operation failed. Never contains a password.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("unknown role {0:?} (technician, guard or viewer)")]
    BadRole(String),
    #[error("user name must be 1 to 32 letters, digits, '.', '_' or '-'")]
    BadName,
    #[error("password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters")]
    BadPassword,
    #[error("user {0:?} already exists")]
    Exists(String),
    #[error("no user {0:?}")]
    NotFound(String),
    #[error("the last technician cannot be removed")]
    LastTechnician,
    #[error("a technician account exists already: no setup is needed")]
    TechnicianExists,
    #[error("cannot hash password: {0}")]
    Hash(String),
    #[error("accounts file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("accounts file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Serialize, Deserialize, Default)]
struct UsersFile {
    version: u32,
    users: Vec<User>,
}

/// What identifies one version of the accounts file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    ino: u64,
}

impl Stamp {
    /// `None`: no file.
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            len: m.len(),
            modified: m.modified().ok(),
            #[cfg(unix)]
            ino: std::os::unix::fs::MetadataExt::ino(&m),
        })
    }
}

/// The accounts, in memory and on disk. The file is the truth: another
/// process (`estate-gateway user add`) may change it while the gateway
/// runs, so it is read again when it changed before a login is checked,
/// the accounts are listed, or a change is made.
#[derive(Debug)]
pub struct UserStore {
    path: PathBuf,
    users: RwLock<Vec<User>>,
    /// The file as last read or written.
    stamp: Mutex<Option<Stamp>>,
    /// Serialises read-modify-write of the file.
    write: Mutex<()>,
    /// Hash verified when the user does not exist, so a login takes as
    /// long for a wrong name as for a wrong password. Made at the first
    /// such login (on a blocking thread), not at start.
    dummy_hash: std::sync::OnceLock<String>,
}

/// A valid user name: 1–[`MAX_NAME_LEN`] of `[A-Za-z0-9._-]`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_password(pw: &str) -> bool {
    (MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&pw.chars().count())
}

/// Hash a password with argon2id (default parameters: 19 MiB, 2 passes).
pub fn hash_password(pw: &str) -> Result<String, UserError> {
    let mut salt = [0u8; 16];
    super::random_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| UserError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

fn verify_hash(hash: &str, pw: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default().verify_password(pw.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

impl UserStore {
    /// Open (or start empty) the accounts file in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<UserStore, UserError> {
        let path = state_dir.join(USERS_FILE);
        let stamp = Stamp::of(&path);
        let users = load(&path)?.unwrap_or_default();
        Ok(UserStore {
            path,
            users: RwLock::new(users),
            stamp: Mutex::new(stamp),
            write: Mutex::new(()),
            dummy_hash: std::sync::OnceLock::new(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<User>> {
        self.users.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Read the file again if it changed since it was last read or
    /// written (a `stat` otherwise). A file that cannot be read or parsed
    /// leaves the accounts in memory as they were (logged).
    fn refresh(&self) {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.refresh_locked() {
            tracing::warn!(error = %e, "accounts file changed but cannot be read; keeping the accounts known");
        }
    }

    /// [`refresh`](Self::refresh) under the write lock; errors returned.
    fn refresh_locked(&self) -> Result<(), UserError> {
        let now = Stamp::of(&self.path);
        let mut known = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if now == *known || now.is_none() {
            return Ok(());
        }
        if let Some(users) = load(&self.path)? {
            *self.users.write().unwrap_or_else(|p| p.into_inner()) = users;
        }
        *known = now;
        Ok(())
    }

    /// Every account, without hashes.
    pub fn list(&self) -> Vec<UserInfo> {
        self.refresh();
        self.read().iter().map(UserInfo::from).collect()
    }

    /// One account, without its hash.
    pub fn get(&self, name: &str) -> Option<UserInfo> {
        self.read()
            .iter()
            .find(|u| u.name == name)
            .map(UserInfo::from)
    }

    /// At least one technician exists (the file read again if another
    /// process changed it).
    pub fn has_technician(&self) -> bool {
        self.refresh();
        self.read().iter().any(|u| u.role == Role::Technician)
    }

    /// Check a password. Takes as long for an unknown name as for a known
    /// one. Blocking (argon2): call from a blocking thread.
    pub fn verify(&self, name: &str, pw: &str) -> Option<UserInfo> {
        self.refresh();
        let found = self.read().iter().find(|u| u.name == name).cloned();
        if pw.len() > MAX_PASSWORD_LEN * 4 {
            return None;
        }
        match found {
            Some(u) if verify_hash(&u.hash, pw) => Some(UserInfo::from(&u)),
            Some(_) => None,
            None => {
                let dummy = self
                    .dummy_hash
                    .get_or_init(|| hash_password("not-a-real-password").unwrap_or_default());
                let _ = verify_hash(dummy, pw);
                None
            }
        }
    }

    /// Add an account. Blocking (argon2, fsync).
    pub fn add(&self, name: &str, role: Role, pw: &str) -> Result<UserInfo, UserError> {
        self.add_if(name, role, pw, |_| Ok(()))
    }

    /// Add the first technician (setup): refused with
    /// [`UserError::TechnicianExists`] if the file, read again under the
    /// write lock, holds one already (`estate-gateway user add` may have
    /// made one meanwhile). Blocking (argon2, fsync).
    pub fn add_first_technician(&self, name: &str, pw: &str) -> Result<UserInfo, UserError> {
        self.add_if(name, Role::Technician, pw, |users| {
            if users.iter().any(|u| u.role == Role::Technician) {
                Err(UserError::TechnicianExists)
            } else {
                Ok(())
            }
        })
    }

    /// Add an account if `allowed` by the accounts as they are on disk.
    fn add_if(
        &self,
        name: &str,
        role: Role,
        pw: &str,
        allowed: impl FnOnce(&[User]) -> Result<(), UserError>,
    ) -> Result<UserInfo, UserError> {
        if !valid_name(name) {
            return Err(UserError::BadName);
        }
        if !valid_password(pw) {
            return Err(UserError::BadPassword);
        }
        let hash = hash_password(pw)?;
        self.modify(|users| {
            allowed(users)?;
            if users.iter().any(|u| u.name == name) {
                return Err(UserError::Exists(name.to_string()));
            }
            let user = User {
                name: name.to_string(),
                role,
                hash,
                lang: Lang::default(),
            };
            let info = UserInfo::from(&user);
            users.push(user);
            Ok(info)
        })
    }

    /// Remove an account; the last technician stays.
    pub fn remove(&self, name: &str) -> Result<(), UserError> {
        self.modify(|users| {
            let i = users
                .iter()
                .position(|u| u.name == name)
                .ok_or_else(|| UserError::NotFound(name.to_string()))?;
            if users[i].role == Role::Technician
                && users.iter().filter(|u| u.role == Role::Technician).count() == 1
            {
                return Err(UserError::LastTechnician);
            }
            users.remove(i);
            Ok(())
        })
    }

    /// Change a user's page language.
    pub fn set_lang(&self, name: &str, lang: Lang) -> Result<(), UserError> {
        self.modify(|users| {
            let u = users
                .iter_mut()
                .find(|u| u.name == name)
                .ok_or_else(|| UserError::NotFound(name.to_string()))?;
            u.lang = lang;
            Ok(())
        })
    }

    /// Apply `f` to a copy of the file as it is now (read again if
    /// another process changed it: its accounts are kept), write it, then
    /// publish it: a failed write leaves memory and disk as they were. A
    /// file that cannot be parsed is not overwritten.
    fn modify<T>(
        &self,
        f: impl FnOnce(&mut Vec<User>) -> Result<T, UserError>,
    ) -> Result<T, UserError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh_locked()?;
        let mut users = self.read().clone();
        let out = f(&mut users)?;
        self.save(&users)?;
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = Stamp::of(&self.path);
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = users;
        Ok(out)
    }

    fn save(&self, users: &[User]) -> Result<(), UserError> {
        let io = |source| UserError::Io {
            path: self.path.clone(),
            source,
        };
        let body = serde_json::to_vec_pretty(&UsersFile {
            version: 1,
            users: users.to_vec(),
        })
        .map_err(|source| UserError::Parse {
            path: self.path.clone(),
            source,
        })?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        // The accounts directory (`[journal] path`) only, never the state
        // directory above it: that is the service's (package, systemd).
        let mut mkdir = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut mkdir, 0o750);
        if let Err(e) = mkdir.create(dir) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(io(e));
            }
        }
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(&body).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// The accounts in the file at `path`; `None` if there is no file.
fn load(path: &Path) -> Result<Option<Vec<User>>, UserError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let f: UsersFile =
                serde_json::from_slice(&bytes).map_err(|source| UserError::Parse {
                    path: path.to_path_buf(),
                    source,
                })?;
            Ok(Some(f.users))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(UserError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// File name of the setup token, next to the accounts file (mode 0600,
/// readable by the service's user and root only): for a technician who
/// cannot see the log, e.g. with `[log] level = "error"`.
pub const SETUP_TOKEN_FILE: &str = "setup-token";

/// The one-time token that lets the first technician be created from the
/// page. Exists only while no technician does; used once. Kept in memory
/// and, when made with [`generate_in`](Self::generate_in), in a file
/// removed once the token is spent or no longer needed.
#[derive(Debug, Default)]
pub struct SetupToken {
    value: Mutex<Option<String>>,
    /// `<state>/setup-token`, if it was written.
    file: Option<PathBuf>,
}

impl SetupToken {
    /// A fresh token (32 hex digits), in memory only.
    pub fn generate() -> SetupToken {
        SetupToken {
            value: Mutex::new(Some(super::random_hex(16))),
            file: None,
        }
    }

    /// A fresh token, also written to `dir`/[`SETUP_TOKEN_FILE`] (mode
    /// 0600). A file that cannot be written is logged; the token still
    /// works.
    pub fn generate_in(dir: &Path) -> SetupToken {
        let mut t = SetupToken::generate();
        let path = dir.join(SETUP_TOKEN_FILE);
        let value = t.peek().unwrap_or_default();
        match write_private(&path, format!("{value}\n").as_bytes()) {
            Ok(()) => t.file = Some(path),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "setup token file not written")
            }
        }
        t
    }

    /// No token (a technician exists).
    pub fn none() -> SetupToken {
        SetupToken::default()
    }

    /// No token; a token file left in `dir` by an earlier start removed.
    pub fn none_in(dir: &Path) -> SetupToken {
        remove_token_file(&dir.join(SETUP_TOKEN_FILE));
        SetupToken::none()
    }

    /// Where the token was written, if it was.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    fn value(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.value.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token, to print once to the log.
    pub fn peek(&self) -> Option<String> {
        self.value().clone()
    }
    /// A token is waiting to be used.
    pub fn pending(&self) -> bool {
        self.peek().is_some()
    }
    /// Use the token: true once, for the right value.
    pub fn take(&self, given: &str) -> bool {
        let mut t = self.value();
        match t.as_deref() {
            Some(v) if super::ct_eq(v.as_bytes(), given.as_bytes()) => {
                *t = None;
                true
            }
            _ => false,
        }
    }
    /// Put back a token whose use failed (e.g. a bad password).
    pub fn restore(&self, token: String) {
        *self.value() = Some(token);
    }
    /// Setup is over (the first technician was made, here or by
    /// `estate-gateway user add`): the token is forgotten and its file
    /// removed.
    pub fn clear(&self) {
        *self.value() = None;
        if let Some(f) = &self.file {
            remove_token_file(f);
        }
    }
}

/// Write `body` to a new file at `path`, readable by its owner only.
fn write_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    remove_token_file(path);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(body)?;
    f.sync_all()
}

fn remove_token_file(path: &Path) {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(file = %path.display(), error = %e, "stale setup token file not removed")
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_persist_remove() {
        let dir = tempfile::tempdir().unwrap();
        let s = UserStore::open(dir.path()).unwrap();
        assert!(!s.has_technician());
        s.add("wang", Role::Technician, "correct horse battery")
            .unwrap();
        s.add("li", Role::Guard, "gatehouse-42!").unwrap();
        assert!(matches!(
            s.add("li", Role::Guard, "gatehouse-42!"),
            Err(UserError::Exists(_))
        ));
        assert!(s.verify("wang", "correct horse battery").is_some());
        assert!(s.verify("wang", "wrong password").is_none());
        assert!(s.verify("nobody", "correct horse battery").is_none());
        let text = std::fs::read_to_string(dir.path().join(USERS_FILE)).unwrap();
        assert!(!text.contains("correct horse battery"));
        assert!(text.contains("$argon2id$"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(USERS_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        s.set_lang("li", Lang::En).unwrap();
        let again = UserStore::open(dir.path()).unwrap();
        assert_eq!(again.get("li").unwrap().lang, Lang::En);
        assert!(again.has_technician());
        assert!(matches!(
            again.remove("wang"),
            Err(UserError::LastTechnician)
        ));
        again.remove("li").unwrap();
        assert!(again.get("li").is_none());
    }

    #[test]
    fn accounts_added_by_another_process_are_kept_and_seen() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = UserStore::open(dir.path()).unwrap();
        gateway
            .add("wang", Role::Technician, "correct horse battery")
            .unwrap();
        // `estate-gateway user add` while the gateway runs.
        let cli = UserStore::open(dir.path()).unwrap();
        cli.add("chen", Role::Guard, "gatehouse-43!").unwrap();
        // The new account signs in at once …
        assert!(gateway.verify("chen", "gatehouse-43!").is_some());
        // … and a change from the page keeps it.
        let cli2 = UserStore::open(dir.path()).unwrap();
        cli2.add("zhao", Role::Viewer, "viewer-pass-1").unwrap();
        gateway.add("li", Role::Guard, "gatehouse-42!").unwrap();
        let on_disk: Vec<String> = UserStore::open(dir.path())
            .unwrap()
            .list()
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(on_disk, ["wang", "chen", "zhao", "li"]);
        // A file broken by hand is not overwritten.
        std::fs::write(dir.path().join(USERS_FILE), "{ not json").unwrap();
        assert!(matches!(
            gateway.set_lang("li", Lang::En),
            Err(UserError::Parse { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(dir.path().join(USERS_FILE)).unwrap(),
            "{ not json"
        );
        assert!(gateway.get("li").is_some(), "the accounts known are kept");
    }

    #[test]
    fn rejects_bad_names_and_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let s = UserStore::open(dir.path()).unwrap();
        assert!(matches!(
            s.add("a b", Role::Guard, "long enough pw"),
            Err(UserError::BadName)
        ));
        assert!(matches!(
            s.add("", Role::Guard, "long enough pw"),
            Err(UserError::BadName)
        ));
        assert!(matches!(
            s.add("ok", Role::Guard, "short"),
            Err(UserError::BadPassword)
        ));
        assert!(s.list().is_empty());
    }

    #[test]
    fn first_technician_only_while_there_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = UserStore::open(dir.path()).unwrap();
        assert!(!gateway.has_technician());
        // `estate-gateway user add` while the gateway runs.
        UserStore::open(dir.path())
            .unwrap()
            .add("wang", Role::Technician, "correct horse battery")
            .unwrap();
        assert!(gateway.has_technician(), "the file is read again");
        assert!(matches!(
            gateway.add_first_technician("intruder", "long enough pw"),
            Err(UserError::TechnicianExists)
        ));
        assert!(gateway.get("intruder").is_none());
        // A guard is no technician: setup stays possible beside it.
        let other = tempfile::tempdir().unwrap();
        let s = UserStore::open(other.path()).unwrap();
        s.add("li", Role::Guard, "gatehouse-42!").unwrap();
        s.add_first_technician("wang", "correct horse battery")
            .unwrap();
        assert!(s.has_technician());
    }

    #[test]
    fn setup_token_file_is_private_and_removed_when_setup_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SETUP_TOKEN_FILE);
        let t = SetupToken::generate_in(dir.path());
        assert_eq!(t.file(), Some(path.as_path()));
        let v = t.peek().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{v}\n"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A failed use keeps it.
        assert!(t.take(&v));
        t.restore(v.clone());
        assert!(path.exists());
        t.clear();
        assert!(!t.pending());
        assert!(!t.take(&v));
        assert!(!path.exists());
        // A later start with a technician removes a file left behind.
        let _again = SetupToken::generate_in(dir.path());
        assert!(path.exists());
        let none = SetupToken::none_in(dir.path());
        assert!(!none.pending());
        assert!(!path.exists());
    }

    #[test]
    fn the_state_directory_is_not_made_for_an_account() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("state").join("journal");
        let s = UserStore::open(&missing).unwrap();
        assert!(matches!(
            s.add("wang", Role::Technician, "correct horse battery"),
            Err(UserError::Io { .. })
        ));
        assert!(!dir.path().join("state").exists());
        // The accounts directory itself is made, 0750.
        std::fs::create_dir(dir.path().join("state")).unwrap();
        s.add("wang", Role::Technician, "correct horse battery")
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&missing).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o750);
        }
    }

    #[test]
    fn setup_token_is_used_once() {
        let t = SetupToken::generate();
        let v = t.peek().unwrap();
        assert!(!t.take("wrong"));
        assert!(t.take(&v));
        assert!(!t.take(&v));
        assert!(!t.pending());
    }
}
