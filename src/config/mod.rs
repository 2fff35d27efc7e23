//! The configuration contract of SPEC.md: a raw layer that serde fills from
//! YAML, and the validated [`Config`] the rest of the program uses.
//!
//! Every error names the key path and the line it came from, e.g.
//! `pools[1].start_index (line 23): must be ≥ 0`. Errors serde finds (syntax,
//! types, unknown keys) carry serde's own line; errors found afterwards get
//! theirs from [`crate::config::yaml_lines`]. A reload builds a new `Config` aside and
//! swaps it in only when it is valid.
//!
//! The layers, one file each: `raw` (what serde fills), `validate` (the
//! checks, the defaults of SPEC.md, and the paths), `errors` (the one-line
//! messages), `durations` (`90s`, `1h30m`), `yaml_lines` (where a key is).

pub mod durations;
mod errors;
mod raw;
mod validate;
pub mod yaml_lines;

pub use durations::{format_duration, parse_duration};
pub use errors::ConfigError;
use errors::*;
use raw::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use validate::DEFAULT_TOKEN_FILE;
use validate::*;

use serde::Deserialize;

/// The validated configuration. Paths are absolute (`~` expanded, relative
/// paths resolved against the config file's folder).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The config file this was loaded from (absolute).
    pub source: PathBuf,
    pub state_dir: PathBuf,
    pub claude: ClaudeConfig,
    pub tmux: TmuxConfig,
    pub shared_root: PathBuf,
    /// Always contains `projects`, `file-history`, `session-env`, in that order, then extras.
    pub shared: Vec<String>,
    pub accounts: Vec<AccountConfig>,
    pub active_link: Option<PathBuf>,
    pub quota: QuotaConfig,
    pub pools: Vec<PoolConfig>,
    pub projects: Vec<ProjectConfig>,
    pub lifecycle: LifecycleConfig,
    pub swap: SwapConfig,
    pub checkpoint: CheckpointConfig,
    pub janitor: JanitorConfig,
    pub http: HttpConfig,
    pub notify: NotifyConfig,
    pub log: LogConfig,
    pub fleet: FleetConfig,
}

/// `fleet`: daemons on several machines sharing readings, usage polls and
/// who runs on which account through Redis (docs/fleet.md). Off when
/// `redis` is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// `redis://[:password@]host:port/db` or `redis+unix://`; `None`: this machine alone.
    pub redis: Option<String>,
    /// This machine's name in the fleet (default: the hostname).
    pub machine: String,
    /// How long a machine's lease (its account, its sessions) outlives its
    /// last renewal; renewed every third of it.
    pub lease_ttl: Duration,
}

/// `log`: how the daemon writes its log (stderr; journald under systemd).
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG`, when set, wins.
    pub level: log::LevelFilter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `[time LEVEL target] message`, one line each (the default).
    Text,
    /// One JSON object per line: `ts`, `level`, `target`, `msg`, and when
    /// known `session`, `account`, `swap_id`, `task`, `project`.
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClaudeConfig {
    /// A bare name looked up on PATH at launch, or an absolute path (a value
    /// containing `/` is resolved like any other path).
    pub binary: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub startup_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TmuxConfig {
    /// `tmux -L NAME`; `None` = the user's default server.
    pub socket: Option<String>,
    pub width: u16,
    pub height: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccountConfig {
    pub name: String,
    /// This account's `CLAUDE_CONFIG_DIR`.
    pub home: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuotaConfig {
    pub usage_url: String,
    pub poll_interval: Duration,
    /// An account with fresh passive readings is still polled this often:
    /// the status line does not carry the model-scoped weekly limits.
    pub limits_poll_interval: Duration,
    /// Percent, 0..=100.
    pub five_hour_threshold: f64,
    pub seven_day_threshold: f64,
    /// A model-scoped weekly limit (`weekly_scoped` in the usage answer's
    /// `limits[]`): at or above, the account takes no new work for the pools
    /// whose model it covers.
    pub weekly_scoped_threshold: f64,
    pub hysteresis: f64,
    pub swap_cooldown: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub prefix: String,
    pub start_index: u32,
    pub min: u32,
    pub max: u32,
    pub cwd: PathBuf,
    pub dispatch: bool,
    pub idle_shrink_after: Duration,
    /// `pools[].model`: the model this pool's sessions run (launched with
    /// `--model`); `None` = whatever `claude.args` says (see [`Config::pool_model`]).
    pub model: Option<String>,
}

impl PoolConfig {
    /// Every session name this pool may ever touch, in index order.
    pub fn session_names(&self) -> Vec<String> {
        (self.start_index..self.start_index + self.max)
            .map(|i| format!("{}{}", self.prefix, i))
            .collect()
    }

    /// The index of `name` when it is one of this pool's sessions.
    pub fn index_of(&self, name: &str) -> Option<u32> {
        let rest = name.strip_prefix(&self.prefix)?;
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // "011" is not how we spell index 11: only canonical decimal matches.
        if rest.len() > 1 && rest.starts_with('0') {
            return None;
        }
        let i: u32 = rest.parse().ok()?;
        (i >= self.start_index && i < self.start_index + self.max).then_some(i)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProjectConfig {
    pub name: String,
    pub path: PathBuf,
    pub pool: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleConfig {
    pub interval: Duration,
    /// A session whose transcript shows work this long after its last hook
    /// is reported `hooks_silent` (the silent-hook canary).
    pub hooks_silent_after: Duration,
    /// Never empty.
    pub restart_backoff: Vec<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SwapConfig {
    pub mode: SwapMode,
    /// Live mode: the one Claude Code config dir of every managed session
    /// (`None` in restart mode).
    pub seat: Option<PathBuf>,
    /// Live mode: a session must show the new account within this after its
    /// next request, else it is restarted under the seat.
    pub verify_timeout: Duration,
    pub drain_timeout: Duration,
    pub stop_timeout: Duration,
}

/// How a swap moves the sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapMode {
    /// Every session runs under the seat; a swap rewrites the seat's
    /// credentials and the running sessions send their next request as the
    /// new account (the default).
    Live,
    /// Each session runs under its account's home; a swap stops every
    /// session, flips and relaunches them with `--resume` (wave 1).
    Restart,
}

impl SwapMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SwapMode::Live => "live",
            SwapMode::Restart => "restart",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointConfig {
    pub interval: Duration,
    pub keep: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JanitorConfig {
    pub interval: Duration,
    pub stale_task_after: Duration,
    /// Whether a session waiting for a person (a permission prompt) counts
    /// towards `stale_task_after`; off by default, since a person may take
    /// hours and the work is not lost meanwhile.
    pub stale_while_waiting: bool,
    pub done_retention: Duration,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Always set: `<state_dir>/http.token` unless the config names one.
    /// `run` and `setup` create it (0600) when it does not exist.
    pub token_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NotifyConfig {
    /// `None` unless both `bot_token_file` and `chat_id` are set.
    pub telegram: Option<TelegramConfig>,
    /// `None` when the url is empty.
    pub webhook_url: Option<String>,
    pub min_level: Level,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TelegramConfig {
    pub bot_token_file: PathBuf,
    pub chat_id: String,
    pub api_base: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// The value of `--model X` or `--model=X` in Claude Code's arguments (the last one wins).
pub fn model_in_args(args: &[String]) -> Option<&str> {
    let mut found = None;
    for (i, a) in args.iter().enumerate() {
        if a == "--model" {
            found = args.get(i + 1).map(String::as_str).or(found);
        } else if let Some(m) = a.strip_prefix("--model=") {
            found = Some(m);
        }
    }
    found
}

impl Config {
    /// The account whose `home` is `dir` (a process's or a hook's
    /// `CLAUDE_CONFIG_DIR`): the same path first, then the same folder
    /// reached another way (a symlink, `..`).
    pub fn account_by_home(&self, dir: &std::path::Path) -> Option<&AccountConfig> {
        self.accounts.iter().find(|a| a.home == dir).or_else(|| {
            let want = dir.canonicalize().ok()?;
            self.accounts
                .iter()
                .find(|a| a.home.canonicalize().is_ok_and(|h| h == want))
        })
    }

    /// The model a pool's sessions run: `pools[].model`, else the `--model`
    /// in `claude.args`, else `None` (Claude Code's default, which every
    /// model-scoped limit is taken to cover).
    pub fn pool_model(&self, pool: &PoolConfig) -> Option<String> {
        pool.model
            .clone()
            .or_else(|| model_in_args(&self.claude.args).map(str::to_string))
    }

    /// The arguments a session of `pool` is launched with: `claude.args`,
    /// with the pool's own `model` (when set) instead of any `--model` there.
    pub fn launch_args(&self, pool: Option<&PoolConfig>) -> Vec<String> {
        let Some(model) = pool.and_then(|p| p.model.as_deref()) else {
            return self.claude.args.clone();
        };
        let mut out = Vec::with_capacity(self.claude.args.len() + 2);
        let mut args = self.claude.args.iter();
        while let Some(a) = args.next() {
            if a == "--model" {
                args.next();
            } else if !a.starts_with("--model=") {
                out.push(a.clone());
            }
        }
        out.push("--model".into());
        out.push(model.to_string());
        out
    }

    /// The seat, in live mode.
    pub fn live_seat(&self) -> Option<&Path> {
        match self.swap.mode {
            SwapMode::Live => self.swap.seat.as_deref(),
            SwapMode::Restart => None,
        }
    }

    /// The Claude Code config dir a session on `account` runs with: the
    /// seat in live mode, the account's home in restart mode.
    pub fn config_dir_of(&self, account: &str) -> Option<PathBuf> {
        match self.live_seat() {
            Some(seat) => Some(seat.to_path_buf()),
            None => self.account(account).map(|a| a.home.clone()),
        }
    }

    /// The account named `name`.
    pub fn account(&self, name: &str) -> Option<&AccountConfig> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// Where a session's conversation `id`, started in `cwd` under the
    /// account `account`, keeps its transcript.
    pub fn transcript_of(
        &self,
        account: Option<&str>,
        cwd: &Path,
        id: Option<&str>,
    ) -> Option<std::path::PathBuf> {
        let dir = self.config_dir_of(account?)?;
        Some(crate::claude::facts::transcript_path(&dir, cwd, id?))
    }

    /// Loads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses `text` as if it had been read from `path` (used to resolve
    /// relative paths and in messages).
    ///
    /// Pure apart from reading `$HOME` (for `~`) and, when `path` is
    /// relative, the current directory: nothing on disk is looked at, so a
    /// config validates the same on any machine.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_norway::from_str(text).map_err(|e| yaml_error(text, &e))?;
        // serde refuses duplicate struct fields but silently keeps the last
        // entry of a map (`claude.env`); YAML says both are errors.
        if let Some((key, line)) = yaml_lines::duplicate_key(text) {
            return Err(ConfigError::Invalid {
                key,
                line: Some(line),
                message: "duplicate key".into(),
            });
        }
        let source = absolute(path);
        let dir = source
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        Check { text, dir }.config(raw, source)
    }
}

#[cfg(test)]
mod tests;
