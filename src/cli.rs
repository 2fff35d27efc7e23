//! The command line of SPEC.md. `main` parses it, runs the command and turns
//! its outcome into the exit status; the commands themselves live in their
//! own modules.

use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Parser, Subcommand};

use crate::check;
use crate::config::Config;
use crate::hook;

/// Default config path when neither `--config` nor `$CLAUDE_FAILOVER_CONFIG` is given.
pub const DEFAULT_CONFIG: &str = "/etc/claude-failover/config.yaml";
pub const ENV_CONFIG: &str = "CLAUDE_FAILOVER_CONFIG";

#[derive(Debug, Parser)]
#[command(name = "claude-failover", version, about = "Keeps Claude Code sessions alive in tmux and fails them over between accounts")]
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
    /// Called by Claude Code as its status line: records the account's quota reading.
    Statusline,
    /// Called by Claude Code hooks: records the event for the daemon. Always exits 0.
    Hook,
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

    /// Runs the command; returns the exit status.
    pub fn run(self) -> i32 {
        match self.command {
            Command::Run => crate::daemon::run(&self.config_path()),
            Command::Hook => {
                // Never fail Claude Code: a hook that cannot record says so on
                // stderr (Claude Code shows it in verbose mode) and exits 0.
                if let Err(e) = hook::record_from_stdin("hook") {
                    eprintln!("claude-failover hook: event not recorded: {e}");
                }
                exit::OK
            }
            Command::Setup { dry_run } => match load(&self.config_path()) {
                Ok(config) => crate::setup::setup_command(&config, dry_run),
                Err(code) => code,
            },
            Command::Statusline => {
                // Claude Code shows what we print; a failure to record must
                // not break its screen.
                let (line, recorded) = hook::statusline_from_stdin();
                if let Err(e) = recorded {
                    eprintln!("claude-failover statusline: reading not recorded: {e}");
                }
                println!("{line}");
                exit::OK
            }
            Command::Check => {
                let config = match load(&self.config_path()) {
                    Ok(c) => c,
                    Err(code) => return code,
                };
                let lines = check::run_checks(&config, SystemTime::now());
                for line in &lines {
                    println!("{line}");
                }
                let failed = lines.iter().filter(|l| !l.ok).count();
                if failed == 0 {
                    println!("all {} checks passed", lines.len());
                    exit::OK
                } else {
                    println!("{failed} of {} checks failed", lines.len());
                    exit::FAILURE
                }
            }
        }
    }
}

/// Loads the config, printing the error and returning exit status 2 when it is bad.
fn load(path: &std::path::Path) -> Result<Config, i32> {
    Config::load(path).map_err(|e| {
        eprintln!("claude-failover: bad config: {e}");
        exit::BAD_CONFIG
    })
}
