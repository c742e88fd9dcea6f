//! `estate-gateway`: command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "estate-gateway",
    version,
    about = "Edge security gateway for villa estates: field devices → alarms → durable journal → central platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a configuration file.
    Run {
        /// Path of the TOML configuration.
        #[arg(short, long, default_value = "/etc/estate-gateway/gateway.toml")]
        config: PathBuf,
    },
    /// Check a configuration file; print every problem and exit non-zero if any.
    CheckConfig {
        /// Path of the TOML configuration.
        file: PathBuf,
    },
    /// Run a self-contained demo: simulated devices, an embedded broker
    /// standing in for the central platform, and the gateway.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration_s: Option<u64>,
    },
    /// Manage the local web page's accounts. Reads only `[journal] path`
    /// from the config. Run with sudo: as root it acts as the owner of the
    /// state directory (the service's user), so the gateway can read what
    /// it writes.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Print the journal's position and the uplink's backlog (gateway
    /// stopped). Run with sudo, it acts as the state directory's owner.
    JournalInfo {
        /// Path of the TOML configuration.
        #[arg(short, long, default_value = "/etc/estate-gateway/gateway.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Add an account. The password is prompted for on a terminal, or read
    /// (first line) from standard input otherwise.
    Add {
        /// User name: 1 to 32 letters, digits, '.', '_' or '-'.
        name: String,
        /// technician, guard or viewer.
        #[arg(long)]
        role: String,
        /// Path of the TOML configuration (the accounts live in its state
        /// directory, `[journal] path`).
        #[arg(short, long, default_value = "/etc/estate-gateway/gateway.toml")]
        config: PathBuf,
    },
    /// List the accounts (names and roles).
    List {
        #[arg(short, long, default_value = "/etc/estate-gateway/gateway.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match estate_gateway::config::load_for(
            &file,
            estate_gateway::config::Target::AnyMachine,
        ) {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: OK ({} devices, {} points, {} alarm rules)",
                    file.display(),
                    c.config.devices.len(),
                    c.points.len(),
                    c.config.alarms.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for w in errors.warnings() {
                    eprintln!("warning: {w}");
                }
                for p in &errors.0 {
                    eprintln!("error: {p}");
                }
                eprintln!("{}: {} problem(s)", file.display(), errors.0.len());
                if let Some(hint) = errors.hint() {
                    eprintln!("{hint}");
                }
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let cfg = match estate_gateway::config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    for p in &errors.0 {
                        eprintln!("error: {p}");
                    }
                    if let Some(hint) = errors.hint() {
                        eprintln!("{hint}");
                    }
                    return ExitCode::from(2);
                }
            };
            estate_gateway::logging::init(&cfg.config.log);
            for w in &cfg.warnings {
                tracing::warn!("config: {w}");
            }
            report(runtime().block_on(async {
                let trim = tokio::spawn(return_free_memory());
                let r = estate_gateway::app::run(cfg).await;
                trim.abort();
                r
            }))
        }
        Command::Demo { duration_s } => {
            estate_gateway::logging::init(&estate_gateway::config::LogConfig {
                level: "warn,rumqttd=off".into(),
                ..Default::default()
            });
            report(runtime().block_on(estate_gateway::demo::run(duration_s)))
        }
        Command::User { action } => user(action),
        Command::JournalInfo { config } => journal_info(&config),
    }
}

/// Run as root, become the owner of the state directory holding `dir`
/// (`web::auth::owner`) before touching anything in it, so what a command
/// run with sudo writes stays the service's.
fn act_as_state_owner(dir: &std::path::Path, creates: bool) -> Result<(), ExitCode> {
    use estate_gateway::web::auth::owner;
    match owner::decide(owner::euid(), &owner::look(dir), creates) {
        Ok(owner::ActAs::Caller) => Ok(()),
        Ok(owner::ActAs::Owner(o)) => owner::become_owner(o).map_err(|e| {
            eprintln!(
                "error: cannot act as the state directory's owner (uid {}, gid {}): {e}",
                o.uid, o.gid
            );
            ExitCode::FAILURE
        }),
        Err(refusal) => {
            eprintln!("error: {refusal}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// `estate-gateway journal-info`: the journal's position and the uplink's
/// backlog, as JSON, with the gateway stopped. The config is read as
/// `check-config` reads it (a secret set only in the service's
/// environment does not stop it). It never makes a journal, and run as
/// root it acts as the state directory's owner: opening the journal
/// writes to it (recovery, a checkpoint), and files left owned by root
/// would keep the gateway from opening its journal at the next start.
fn journal_info(config: &std::path::Path) -> ExitCode {
    let cfg = match estate_gateway::config::load_for(
        config,
        estate_gateway::config::Target::AnyMachine,
    ) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    let c = &cfg.config;
    if !c.journal.path.is_dir() {
        eprintln!(
            "error: no journal at {} (the gateway has not run with this config yet)",
            c.journal.path.display()
        );
        return ExitCode::FAILURE;
    }
    if let Err(code) = act_as_state_owner(&c.journal.path, false) {
        return code;
    }
    // Every sink of the configuration: opening with fewer would let the
    // journal remove events a push channel still needs.
    let mut sinks = vec![estate_gateway::app::UPLINK_SINK.to_string()];
    sinks.extend(estate_gateway::push::sinks(&c.push));
    let sinks: Vec<&str> = sinks.iter().map(String::as_str).collect();
    match estate_gateway::journal::Journal::open(&c.journal, &c.site.gateway, &sinks) {
        Ok(j) => {
            let s = j.stats();
            let acked = j.acked_seq(estate_gateway::app::UPLINK_SINK);
            println!(
                "{}",
                serde_json::json!({
                    "last_seq": s.last_seq,
                    "events": s.events,
                    "telemetry": s.telemetry,
                    "bytes_on_disk": s.bytes_on_disk,
                    "uplink_acked_seq": acked,
                    "uplink_backlog": s.last_seq.saturating_sub(acked),
                })
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `estate-gateway user …`. Reads only `[journal] path` from the config
/// (no secret is resolved), then, run as root, becomes the owner of the
/// state directory before touching it (`web::auth::owner`): the files it
/// writes are the service's. The running gateway sees a changed accounts
/// file at the next sign-in.
fn user(action: UserAction) -> ExitCode {
    use estate_gateway::web::auth::{Role, UserStore};
    let (config, creates) = match &action {
        UserAction::Add { config, .. } => (config, true),
        UserAction::List { config } => (config, false),
    };
    let dir = match estate_gateway::config::journal_path(config) {
        Ok(d) => d,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    if let Err(code) = act_as_state_owner(&dir, creates) {
        return code;
    }
    let store = match UserStore::open(&dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}{}", permission_hint(&e));
            return ExitCode::FAILURE;
        }
    };
    match action {
        UserAction::List { .. } => {
            for u in store.list() {
                println!("{}\t{:?}", u.name, u.role);
            }
            ExitCode::SUCCESS
        }
        UserAction::Add { name, role, .. } => {
            let role: Role = match role.parse() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let password = match read_password(&name) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: cannot read the password: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match store.add(&name, role, &password) {
                Ok(u) => {
                    println!("added {} ({:?})", u.name, u.role);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}{}", permission_hint(&e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// What to do when the accounts file or directory may not be touched.
fn permission_hint(e: &estate_gateway::web::auth::UserError) -> &'static str {
    match e {
        estate_gateway::web::auth::UserError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            " (the state directory is the service's: run this with sudo)"
        }
        _ => "",
    }
}

/// The password: prompted twice without echo on a terminal, else the
/// first line of standard input.
fn read_password(name: &str) -> std::io::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let ask = |prompt: &str| -> std::io::Result<String> {
        eprint!("{prompt}");
        std::io::stderr().flush()?;
        let echo = set_echo(false);
        let mut line = String::new();
        let r = stdin.lock().read_line(&mut line);
        if let Some(saved) = echo {
            restore_echo(saved);
        }
        eprintln!();
        r?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    };
    let a = ask(&format!("password for {name}: "))?;
    let b = ask("again: ")?;
    if a != b {
        return Err(std::io::Error::other("the passwords differ"));
    }
    Ok(a)
}

/// Turn terminal echo off; returns the previous settings.
fn set_echo(on: bool) -> Option<libc::termios> {
    // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed, then filled,
    // termios; failures (not a terminal) leave the terminal unchanged.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) != 0 {
            return None;
        }
        let saved = t;
        if on {
            t.c_lflag |= libc::ECHO;
        } else {
            t.c_lflag &= !libc::ECHO;
        }
        libc::tcsetattr(0, libc::TCSANOW, &t);
        Some(saved)
    }
}

fn restore_echo(saved: libc::termios) {
    // SAFETY: restores settings read by tcgetattr on the same descriptor.
    unsafe {
        libc::tcsetattr(0, libc::TCSANOW, &saved);
    }
}

/// One thread runs the gateway's tasks: the workload is I/O-bound and a
/// single-threaded scheduler is the cheapest on a Pi. Blocking work
/// (fsync) goes to tokio's blocking pool.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How often freed heap memory goes back to the kernel.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// glibc returns freed memory to the kernel only from the top of the heap;
/// memory freed below live allocations (start-up's config parsing, bursts
/// of alarms or readings queued on the bus) stays resident until reused.
/// `malloc_trim` hands those free pages back (`MADV_DONTNEED`), so the
/// resident set follows what is in use. It takes well under a millisecond
/// on the gateway's heap (docs/benchmarks.md).
async fn return_free_memory() {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free pages of the allocator's
        // own arenas; it is thread-safe.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// glibc gives each thread that allocates its own heap arena; the gateway's
/// few threads (runtime, journal committer, the store's I/O) allocate
/// little, and separate arenas only hold freed memory apart. One arena
/// keeps the resident set small on a Pi.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
