//! Who `estate-gateway user …` acts as.
//!
//! The accounts file lives in the gateway's state directory, which belongs
//! to the service's user (`estate-gateway`, mode 0750, made by the package
//! or by systemd's `StateDirectory=`). A technician runs the account
//! commands with `sudo`; a file written as root there is one the running
//! gateway cannot read (its accounts lost, the web page not started after a
//! restart), and a journal directory made by root is one it cannot open.
//! So, run as root, the commands first become the owner of the state
//! directory (its uid and gid; supplementary groups dropped) and touch
//! nothing before that. They never create the state directory itself.
//!
//! [`decide`] is the decision, over what `stat` found ([`Found`]), without
//! I/O; [`look`] gathers it and [`become_owner`] switches.

use std::path::{Path, PathBuf};

/// The owner of a file or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    fn of(path: &Path) -> Option<Owner> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Owner {
            uid: m.uid(),
            gid: m.gid(),
        })
    }
    fn is_root(self) -> bool {
        self.uid == 0
    }
}

/// What is on disk where the accounts live: `None` where nothing is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The accounts directory (`[journal] path`).
    pub accounts_dir: PathBuf,
    pub accounts_dir_owner: Option<Owner>,
    /// The accounts file in it (`web-users.json`).
    pub accounts_file: PathBuf,
    pub accounts_file_owner: Option<Owner>,
    /// The directory holding the accounts directory: the state directory
    /// (`/var/lib/estate-gateway` with the package).
    pub state_dir: PathBuf,
    pub state_dir_owner: Option<Owner>,
}

/// Stat the accounts directory, its file and the state directory holding it.
pub fn look(accounts_dir: &Path) -> Found {
    let accounts_file = accounts_dir.join(super::users::USERS_FILE);
    let state_dir = accounts_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Found {
        accounts_dir: accounts_dir.to_path_buf(),
        accounts_dir_owner: Owner::of(accounts_dir),
        accounts_file_owner: Owner::of(&accounts_file),
        accounts_file,
        state_dir_owner: Owner::of(&state_dir),
        state_dir,
    }
}

/// Who the command acts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActAs {
    /// The user running it (not root, or root owns the state: a gateway
    /// run as root).
    Caller,
    /// The owner of the state: switch to it before touching anything.
    Owner(Owner),
}

/// Why the command refuses to run, with what to do.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the state directory {state_dir} does not exist yet. The package makes it (owned by the service's user); \
         otherwise start the gateway once (systemd's StateDirectory= makes it), or make it yourself: \
         `install -d -o estate-gateway -g estate-gateway -m 0750 {state_dir}`. Then run this again"
    )]
    NoStateDir { state_dir: PathBuf },
    #[error(
        "{path} belongs to root, but the state directory {state_dir} to uid {}: the gateway, running as that user, \
         cannot use it (an account command run as root by an older version left it). \
         Give it back: `chown -R {}:{} {}`, then run this again",
        owner.uid, owner.uid, owner.gid, accounts_dir.display(),
        path = path.display(), state_dir = state_dir.display()
    )]
    LeftByRoot {
        path: PathBuf,
        accounts_dir: PathBuf,
        state_dir: PathBuf,
        owner: Owner,
    },
}

/// Who a command run with effective uid `euid` acts as, given `found`.
/// `creates`: the command may have to make the accounts directory (`add`);
/// a command that only reads (`list`) needs nothing when there is none.
///
/// Not root: the caller (what it may not touch, it gets refused by the
/// system). Root: the owner of the accounts directory, or, when it does
/// not exist yet, of the state directory that will hold it; root itself
/// when root owns them. The state directory is never made here.
pub fn decide(euid: u32, found: &Found, creates: bool) -> Result<ActAs, Refusal> {
    let Some(dir) = found.accounts_dir_owner else {
        return match found.state_dir_owner {
            _ if !creates => Ok(ActAs::Caller),
            None => Err(Refusal::NoStateDir {
                state_dir: found.state_dir.clone(),
            }),
            Some(_) if euid != 0 => Ok(ActAs::Caller),
            Some(state) if state.is_root() => Ok(ActAs::Caller),
            Some(state) => Ok(ActAs::Owner(state)),
        };
    };
    if euid != 0 {
        return Ok(ActAs::Caller);
    }
    // What an older version, run as root, left in a state directory of
    // another user: acting as root would keep the gateway out of it.
    let left_by_root = |path: &Path, owner: Owner| Refusal::LeftByRoot {
        path: path.to_path_buf(),
        accounts_dir: found.accounts_dir.clone(),
        state_dir: found.state_dir.clone(),
        owner,
    };
    if dir.is_root() {
        return match found.state_dir_owner {
            Some(state) if !state.is_root() => Err(left_by_root(&found.accounts_dir, state)),
            _ => Ok(ActAs::Caller),
        };
    }
    match found.accounts_file_owner {
        Some(file) if file.is_root() => Err(left_by_root(&found.accounts_file, dir)),
        _ => Ok(ActAs::Owner(dir)),
    }
}

/// Become `owner` for the rest of the process: supplementary groups
/// dropped, then its gid, then its uid (in that order: once the uid is not
/// root, the gid can no longer change). New files get the service's umask
/// (0027, as in the unit).
pub fn become_owner(owner: Owner) -> std::io::Result<()> {
    // SAFETY: plain system calls on integers and a null list; called
    // before the process starts any thread.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::setgid(owner.gid) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::setuid(owner.uid) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::umask(0o027);
        if libc::geteuid() != owner.uid || libc::getegid() != owner.gid {
            return Err(std::io::Error::other("the user did not change"));
        }
    }
    Ok(())
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: Owner = Owner { uid: 0, gid: 0 };
    const SERVICE: Owner = Owner { uid: 998, gid: 997 };

    fn found(state: Option<Owner>, dir: Option<Owner>, file: Option<Owner>) -> Found {
        Found {
            accounts_dir: "/var/lib/estate-gateway/journal".into(),
            accounts_dir_owner: dir,
            accounts_file: "/var/lib/estate-gateway/journal/web-users.json".into(),
            accounts_file_owner: file,
            state_dir: "/var/lib/estate-gateway".into(),
            state_dir_owner: state,
        }
    }

    #[test]
    fn root_becomes_the_owner_of_the_state() {
        // Installed and started: the accounts directory's owner.
        let f = found(Some(SERVICE), Some(SERVICE), Some(SERVICE));
        assert_eq!(decide(0, &f, true), Ok(ActAs::Owner(SERVICE)));
        assert_eq!(decide(0, &f, false), Ok(ActAs::Owner(SERVICE)));
        // No account yet.
        let f = found(Some(SERVICE), Some(SERVICE), None);
        assert_eq!(decide(0, &f, true), Ok(ActAs::Owner(SERVICE)));
        // Installed, never started: the state directory's owner makes the
        // accounts directory.
        let f = found(Some(SERVICE), None, None);
        assert_eq!(decide(0, &f, true), Ok(ActAs::Owner(SERVICE)));
    }

    #[test]
    fn the_state_directory_is_never_made() {
        let f = found(None, None, None);
        let refused = decide(0, &f, true).unwrap_err();
        assert!(matches!(refused, Refusal::NoStateDir { .. }));
        let text = refused.to_string();
        assert!(
            text.contains("/var/lib/estate-gateway does not exist"),
            "{text}"
        );
        assert!(text.contains("install -d -o estate-gateway"), "{text}");
        assert_eq!(decide(1000, &f, true), Err(refused));
        // Listing needs nothing: no accounts.
        assert_eq!(decide(0, &f, false), Ok(ActAs::Caller));
    }

    #[test]
    fn what_root_left_behind_is_refused_with_the_fix() {
        let f = found(Some(SERVICE), Some(ROOT), Some(ROOT));
        let text = decide(0, &f, true).unwrap_err().to_string();
        assert!(
            text.contains("chown -R 998:997 /var/lib/estate-gateway/journal"),
            "{text}"
        );
        let f = found(Some(SERVICE), Some(SERVICE), Some(ROOT));
        let text = decide(0, &f, false).unwrap_err().to_string();
        assert!(
            text.starts_with("/var/lib/estate-gateway/journal/web-users.json belongs to root"),
            "{text}"
        );
        assert!(
            text.contains("chown -R 998:997 /var/lib/estate-gateway/journal"),
            "{text}"
        );
    }

    #[test]
    fn a_gateway_run_as_root_or_by_the_caller_keeps_the_caller() {
        let f = found(Some(ROOT), Some(ROOT), Some(ROOT));
        assert_eq!(decide(0, &f, true), Ok(ActAs::Caller));
        let f = found(Some(ROOT), None, None);
        assert_eq!(decide(0, &f, true), Ok(ActAs::Caller));
        // Not root: the system decides what the caller may touch.
        let f = found(Some(SERVICE), Some(SERVICE), Some(SERVICE));
        assert_eq!(decide(998, &f, true), Ok(ActAs::Caller));
        assert_eq!(decide(1000, &f, true), Ok(ActAs::Caller));
        let f = found(Some(SERVICE), None, None);
        assert_eq!(decide(1000, &f, true), Ok(ActAs::Caller));
    }
}
