//! The command line of SPEC.md. `main` parses it, runs the command and turns
//! its outcome into the exit status; the commands themselves live in their
//! own modules.

pub mod check;
pub mod setup;
pub mod status_table;
use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Parser, Subcommand};

use crate::claude::hook;
use crate::config::Config;

/// Default config path when neither `--config` nor `$CLAUDE_FAILOVER_CONFIG` is given.
pub const DEFAULT_CONFIG: &str = "/etc/claude-failover/config.yaml";
pub const ENV_CONFIG: &str = "CLAUDE_FAILOVER_CONFIG";

#[derive(Debug, Parser)]
#[command(
    name = "claude-failover",
    version,
    about = "Keeps Claude Code sessions alive in tmux and fails them over between accounts"
)]
pub struct Cli {
    /// The config file (default: $CLAUDE_FAILOVER_CONFIG, then /etc/claude-failover/config.yaml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon, in the foreground (systemd Type=notify).
    Run,
    /// Verify the config, tmux, the claude binary and every account; one line per check.
    Check,
    /// Create the shared root and links, merge existing folders when nothing
    /// is lost, install hooks and the status line, pre-trust folders. Idempotent.
    Setup {
        /// Print the plan, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Ask the running daemon how things stand: accounts, sessions, queues, last swap.
    Status {
        /// The raw `/status` JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a task into a project's inbox atomically.
    Enqueue {
        #[arg(long)]
        project: String,
        /// Higher runs first.
        #[arg(long)]
        priority: Option<i64>,
        /// The task file, or `-` for standard input.
        file: String,
    },
    /// Ask the running daemon to fail over now.
    Swap {
        /// The account to move to (default: the best other one).
        #[arg(long)]
        to: Option<String>,
        /// Why, for the log and notifications.
        #[arg(long)]
        reason: Option<String>,
    },
    /// The daemon's events, one line each (`GET /events`): what it keeps, or
    /// with --follow everything from now on, like `journalctl -f`.
    Events {
        /// Keep printing events as they happen.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Each event as one JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only events from this long ago on (e.g. 10m, 2h).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
    },
    /// An MCP server on stdio for Claude Code (or any MCP client): the
    /// fleet's status, swap, enqueue, task results, restart a session.
    Mcp,
    /// Claude Code's own login for one account, with that account's home as
    /// its config dir, in the foreground (once per account); then says
    /// whether the home holds a login.
    Login {
        /// The account (its `name` in the config).
        account: String,
    },
    /// Called by Claude Code as its status line: records the account's quota reading.
    Statusline,
    /// Called by Claude Code hooks: records the event for the daemon. Always exits 0.
    Hook,
}

/// `println!` for the commands: a reader that went away (`check | head`)
/// ends the command quietly with status 0 instead of a panic (101).
macro_rules! outln {
    ($($t:tt)*) => { $crate::commands::out(format_args!("{}\n", format_args!($($t)*))) };
}

// After `outln!`, which they use.
pub mod events;
pub mod login;
pub mod mcp;

/// The status a command ends with when its reader goes away: 0, or the
/// outcome it already knows (`check` with failures is still 1).
static EXIT_ON_CLOSED_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Writes to stdout; on a closed pipe exits quietly (the reader has what it
/// wanted) with [`EXIT_ON_CLOSED_PIPE`], on any other write error exits 1
/// with the reason.
pub fn out(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(text).and_then(|_| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(EXIT_ON_CLOSED_PIPE.load(std::sync::atomic::Ordering::Relaxed));
        }
        eprintln!("claude-failover: cannot write to standard output: {e}");
        std::process::exit(exit::FAILURE);
    }
}

/// Standard output for a command that must finish its work even when the
/// reader goes away: a closed pipe swallows the rest of the output.
#[derive(Default)]
pub struct StdoutUnlessClosed {
    closed: bool,
}

impl std::io::Write for StdoutUnlessClosed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        match std::io::stdout().write(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(buf.len())
            }
            other => other,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.closed {
            return Ok(());
        }
        match std::io::stdout().flush() {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            other => other,
        }
    }
}

/// Exit statuses of SPEC.md.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILURE: i32 = 1;
    pub const BAD_CONFIG: i32 = 2;
    pub const INVARIANT: i32 = 3;
}

impl Cli {
    /// The config path to use.
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .or_else(|| std::env::var_os(ENV_CONFIG).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }

    /// Runs the command: its exit status, or why it failed (printed once,
    /// by `main`).
    pub fn run(self) -> Outcome {
        let config_path = self.config_path();
        match self.command {
            Command::Run => crate::daemon::run(&self.config_path()),
            Command::Hook => {
                // Never fail Claude Code: a hook that cannot record says so on
                // stderr (Claude Code shows it in verbose mode) and exits 0.
                if let Err(e) = hook::record_from_stdin("hook") {
                    eprintln!("claude-failover hook: event not recorded: {e}");
                }
                Ok(exit::OK)
            }
            Command::Setup { dry_run } => setup::setup_command(&load(&config_path)?, dry_run),
            Command::Status { json } => status_command(&load(&config_path)?, json),
            Command::Enqueue {
                project,
                priority,
                file,
            } => enqueue_command(&load(&config_path)?, &project, priority, &file),
            Command::Events {
                follow,
                json,
                since,
            } => events::events_command(&load(&config_path)?, follow, json, since.as_deref()),
            Command::Mcp => mcp::mcp_command(&load(&config_path)?),
            Command::Login { account } => login::login_command(&load(&config_path)?, &account),
            Command::Swap { to, reason } => swap_command(&load(&config_path)?, to, reason),
            Command::Statusline => {
                // Claude Code shows what we print; a failure to record must
                // not break its screen.
                let (line, recorded) = hook::statusline_from_stdin();
                if let Err(e) = recorded {
                    eprintln!("claude-failover statusline: reading not recorded: {e}");
                }
                outln!("{line}");
                Ok(exit::OK)
            }
            Command::Check => {
                let config = load(&config_path)?;
                let lines = check::run_checks(&config, SystemTime::now());
                let failed = lines.iter().filter(|l| !l.ok).count();
                let code = if failed == 0 { exit::OK } else { exit::FAILURE };
                EXIT_ON_CLOSED_PIPE.store(code, std::sync::atomic::Ordering::Relaxed);
                for line in &lines {
                    outln!("{line}");
                }
                if failed == 0 {
                    outln!("all {} checks passed", lines.len());
                    Ok(exit::OK)
                } else {
                    outln!("{failed} of {} checks failed", lines.len());
                    Ok(exit::FAILURE)
                }
            }
        }
    }
}

/// Why a command failed: what `main` prints on stderr (one line per
/// problem, each saying which command and why) and the exit status.
#[derive(Debug)]
pub struct Failed {
    pub code: i32,
    pub lines: Vec<String>,
}

impl Failed {
    pub fn new(code: i32, line: impl Into<String>) -> Failed {
        Failed {
            code,
            lines: vec![line.into()],
        }
    }
}

/// What a command ends with: its exit status, or why it failed.
pub type Outcome = Result<i32, Failed>;

/// Loads the config; a bad one fails with exit status 2.
fn load(path: &std::path::Path) -> Result<Config, Failed> {
    Config::load(path).map_err(|e| {
        Failed::new(
            exit::BAD_CONFIG,
            format!("claude-failover: bad config: {e}"),
        )
    })
}

/// The control plane's bearer token (`http.token_file`, readable by the
/// daemon's user only).
fn token(config: &Config) -> Result<String, String> {
    crate::daemon::http::read_token(&config.http.token_file)
        .map_err(|e| format!("{e} (run this as the daemon's user, or as root)"))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The token for a read (a GET): a loopback listen answers reads without
/// it, so there `None` stands for a token this user cannot read; any other
/// listen needs it.
fn read_token(config: &Config) -> Result<Option<String>, String> {
    match token(config) {
        Ok(t) => Ok(Some(t)),
        Err(_) if config.http.listen.ip().is_loopback() => Ok(None),
        Err(e) => Err(e),
    }
}

/// `swap [--to NAME] [--reason TEXT]` through `POST /swap`.
fn swap_command(config: &Config, to: Option<String>, reason: Option<String>) -> Outcome {
    let token = match token(config) {
        Ok(t) => t,
        Err(e) => {
            return Err(Failed::new(
                exit::FAILURE,
                format!("claude-failover swap: {e}"),
            ));
        }
    };
    let mut url = format!("http://{}/swap?", config.http.listen);
    if let Some(to) = &to {
        url.push_str(&format!("to={}&", percent_encode(to)));
    }
    url.push_str(&format!(
        "reason={}",
        percent_encode(reason.as_deref().unwrap_or("swap command"))
    ));
    let mut req = ureq::post(&url).timeout(
        config.swap.drain_timeout
            + config.swap.stop_timeout
            + config.claude.startup_timeout
            + std::time::Duration::from_secs(60),
    );
    req = req.set("Authorization", &format!("Bearer {token}"));
    let (code, body) = match req.call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => {
            return Err(Failed::new(
                exit::FAILURE,
                format!(
                    "claude-failover swap: the daemon at {} is unreachable: {e}",
                    config.http.listen
                ),
            ));
        }
    };
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body.clone()));
    if code == 200 {
        outln!(
            "swap {}: {} → {} done in {} ms{}",
            v["id"].as_str().unwrap_or("?"),
            v["from"].as_str().unwrap_or("?"),
            v["to"].as_str().unwrap_or("?"),
            v["duration_ms"],
            // Where it did not go as asked (no session started under the
            // target, so it moved on): say where the sessions are.
            v["detail"]
                .as_str()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
        Ok(exit::OK)
    } else {
        let why = v["detail"]
            .as_str()
            .or(v["error"].as_str())
            .unwrap_or(&body)
            .to_string();
        Err(Failed::new(
            exit::FAILURE,
            format!(
                "claude-failover swap: {} ({code}): {why}",
                v["result"].as_str().unwrap_or("refused")
            ),
        ))
    }
}

/// `status [--json]` through `GET /status`.
fn status_command(config: &Config, json: bool) -> Outcome {
    let url = format!("http://{}/status", config.http.listen);
    let mut req = ureq::get(&url).timeout(crate::daemon::http::CLIENT_TIMEOUT);
    match read_token(config) {
        Ok(Some(t)) => req = req.set("Authorization", &format!("Bearer {t}")),
        Ok(None) => {}
        Err(e) => {
            return Err(Failed::new(
                exit::FAILURE,
                format!("claude-failover status: {e}"),
            ));
        }
    }
    let body: serde_json::Value = match req.call().map(|r| r.into_json()) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            return Err(Failed::new(
                exit::FAILURE,
                format!("claude-failover status: unreadable answer from {url}: {e}"),
            ));
        }
        Err(e) => {
            return Err(Failed::new(
                exit::FAILURE,
                format!(
                    "claude-failover status: the daemon at {} is unreachable: {e}",
                    config.http.listen
                ),
            ));
        }
    };
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    } else {
        out(format_args!(
            "{}",
            crate::commands::status_table::render(&body, SystemTime::now())
        ));
    }
    Ok(exit::OK)
}

/// `enqueue --project NAME [--priority N] FILE|-`.
fn enqueue_command(config: &Config, project: &str, priority: Option<i64>, file: &str) -> Outcome {
    use std::io::Read;
    let Some(p) = config.projects.iter().find(|p| p.name == project) else {
        let known: Vec<&str> = config.projects.iter().map(|p| p.name.as_str()).collect();
        return Err(Failed::new(
            exit::FAILURE,
            format!(
                "claude-failover enqueue: no project named {project:?} (known: {})",
                known.join(", ")
            ),
        ));
    };
    // At most one byte over the limit is read, from a file as from stdin:
    // enough to refuse a task that is too big without holding all of it.
    let cap = crate::store::queue::MAX_TASK_BYTES as u64 + 1;
    let (content, hint) = if file == "-" {
        let mut buf = Vec::new();
        if let Err(e) = std::io::stdin().take(cap).read_to_end(&mut buf) {
            return Err(Failed::new(
                exit::FAILURE,
                format!("claude-failover enqueue: cannot read standard input: {e}"),
            ));
        }
        (buf, None)
    } else {
        let read = std::fs::File::open(file).and_then(|f| {
            let mut buf = Vec::new();
            f.take(cap).read_to_end(&mut buf).map(|_| buf)
        });
        match read {
            Ok(b) => (
                b,
                std::path::Path::new(file)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned()),
            ),
            Err(e) => {
                return Err(Failed::new(
                    exit::FAILURE,
                    format!("claude-failover enqueue: cannot read {file}: {e}"),
                ));
            }
        }
    };
    match crate::store::queue::enqueue(
        &p.path,
        priority,
        &content,
        hint.as_deref(),
        SystemTime::now(),
    ) {
        Ok(path) => {
            println!("{}", path.display());
            Ok(exit::OK)
        }
        Err(e) => Err(Failed::new(
            exit::FAILURE,
            format!("claude-failover enqueue: {e}"),
        )),
    }
}
