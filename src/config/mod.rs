//! The configuration contract of SPEC.md: a raw layer that serde fills from
//! YAML, and the validated [`Config`] the rest of the program uses.
//!
//! Every error names the key path and the line it came from, e.g.
//! `pools[1].start_index (line 23): must be ≥ 0`. Errors serde finds (syntax,
//! types, unknown keys) carry serde's own line; errors found afterwards get
//! theirs from [`crate::config::yaml_lines`]. A reload builds a new `Config` aside and
//! swaps it in only when it is valid.
//!
//! This module also owns the config's duration syntax ([`parse_duration`],
//! [`format_duration`]) and its defaults (SPEC.md's example values).

pub mod yaml_lines;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Percent, 0..=100.
    pub five_hour_threshold: f64,
    pub seven_day_threshold: f64,
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
    /// Never empty.
    pub restart_backoff: Vec<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SwapConfig {
    pub drain_timeout: Duration,
    pub stop_timeout: Duration,
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

/// Why a config was refused. `Display` is the one line an operator sees.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `key` is the key path (`pools[1].start_index`), `line` 1-based when known.
    #[error("{}", render_invalid(key, *line, message))]
    Invalid {
        key: String,
        line: Option<usize>,
        message: String,
    },
}

fn render_invalid(key: &str, line: Option<usize>, message: &str) -> String {
    match (key.is_empty(), line) {
        (true, Some(l)) => format!("line {l}: {message}"),
        (true, None) => message.to_string(),
        (false, Some(l)) => format!("{key} (line {l}): {message}"),
        (false, None) => format!("{key}: {message}"),
    }
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
        let home = &self.account(account?)?.home;
        Some(crate::claude::facts::transcript_path(home, cwd, id?))
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

// ---------------------------------------------------------------------------
// Raw layer: exactly the YAML shape of SPEC.md. Everything is optional here so
// that defaults, "required" and every message are decided in one place below,
// with the key path and line of the offending value.
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<String>,
    claude: Option<RawClaude>,
    tmux: Option<RawTmux>,
    shared_root: Option<String>,
    shared: Option<Vec<String>>,
    accounts: Option<Vec<RawAccount>>,
    active_link: Option<String>,
    quota: Option<RawQuota>,
    pools: Option<Vec<RawPool>>,
    projects: Option<Vec<RawProject>>,
    lifecycle: Option<RawLifecycle>,
    swap: Option<RawSwap>,
    checkpoint: Option<RawCheckpoint>,
    janitor: Option<RawJanitor>,
    http: Option<RawHttp>,
    notify: Option<RawNotify>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaude {
    binary: Option<String>,
    args: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    startup_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTmux {
    socket: Option<String>,
    width: Option<i64>,
    height: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    name: Option<String>,
    home: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    usage_url: Option<String>,
    poll_interval: Option<String>,
    five_hour_threshold: Option<f64>,
    seven_day_threshold: Option<f64>,
    hysteresis: Option<f64>,
    swap_cooldown: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: Option<String>,
    prefix: Option<String>,
    start_index: Option<i64>,
    min: Option<i64>,
    max: Option<i64>,
    cwd: Option<String>,
    dispatch: Option<bool>,
    idle_shrink_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    name: Option<String>,
    path: Option<String>,
    pool: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLifecycle {
    interval: Option<String>,
    restart_backoff: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSwap {
    drain_timeout: Option<String>,
    stop_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheckpoint {
    interval: Option<String>,
    keep: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJanitor {
    interval: Option<String>,
    stale_task_after: Option<String>,
    done_retention: Option<String>,
    max_attempts: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    telegram: Option<RawTelegram>,
    webhook: Option<RawWebhook>,
    min_level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelegram {
    bot_token_file: Option<String>,
    chat_id: Option<String>,
    api_base: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Option<String>,
}

// ---------------------------------------------------------------------------
// Defaults (SPEC.md's example values). Pool sizing is not in the example's
// defaults: one session kept alive, growth up to ten.
// ---------------------------------------------------------------------------

const DEFAULT_STATE_DIR: &str = "/var/lib/claude-failover";
const DEFAULT_BINARY: &str = "claude";
const DEFAULT_SHARED_ROOT: &str = "~/.claude-shared";
/// The folders every account must share; always first, in this order.
pub use crate::claude::facts::REQUIRED_SHARED;
const DEFAULT_USAGE_URL: &str = "https://api.anthropic.com/api/oauth/usage";
const DEFAULT_TELEGRAM_API: &str = "https://api.telegram.org";
const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
const DEFAULT_WIDTH: i64 = 200;
const DEFAULT_HEIGHT: i64 = 50;
/// tmux refuses window sizes above this (`WINDOW_MAXIMUM`).
const MAX_WINDOW_SIZE: i64 = 10_000;
const DEFAULT_POOL_MIN: i64 = 1;
const DEFAULT_POOL_MAX: i64 = 10;
/// Keeps a pool's name set small enough to compare exhaustively.
const MAX_POOL_SIZE: i64 = 1000;
const MAX_START_INDEX: i64 = 999_999_999;
const DEFAULT_MAX_ATTEMPTS: i64 = 3;
/// Environment variables the daemon sets itself on every session.
const RESERVED_ENV: [&str; 3] = [
    "CLAUDE_CONFIG_DIR",
    "CLAUDE_FAILOVER_SESSION",
    "CLAUDE_FAILOVER_STATE_DIR",
];

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
const MINUTE: u64 = 60;
/// The shortest interval or timeout accepted for the daemon's loops.
const MIN_INTERVAL: Duration = secs(1);
/// `http.token_file` when unset: in the state folder.
pub const DEFAULT_TOKEN_FILE: &str = "http.token";
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

// ---------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------

const DURATION_HINT: &str =
    "expected an integer followed by one unit of ms, s, m, h, d (e.g. 500ms, 15s, 2m, 1h, 7d)";

/// Parses a config duration: a non-negative integer followed by exactly one
/// unit of `ms`, `s`, `m`, `h` or `d` (`500ms`, `15s`, `2m`, `1h`, `7d`).
/// Anything else (`15`, `1.5s`, `-1s`, `1x`, `1h30m`, empty) is refused with
/// a message meant for an operator.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err(format!("empty duration; {DURATION_HINT}"));
    }
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    if number.is_empty() {
        return Err(format!("`{s}` is not a duration; {DURATION_HINT}"));
    }
    if unit.is_empty() {
        return Err(format!("`{s}` has no unit; {DURATION_HINT}"));
    }
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => MINUTE * 1000,
        "h" => HOUR * 1000,
        "d" => DAY * 1000,
        _ => return Err(format!("`{s}` is not a duration; {DURATION_HINT}")),
    };
    let too_large = || format!("`{s}` is too large");
    let n: u64 = number.parse().map_err(|_| too_large())?;
    let ms = n.checked_mul(unit_ms).ok_or_else(too_large)?;
    Ok(Duration::from_millis(ms))
}

/// The inverse of [`parse_duration`]: the largest unit that represents `d`
/// exactly (`120s` → `2m`, `1500ms` stays `1500ms`, zero is `0s`). Parts
/// below a millisecond cannot be written in a config and are dropped.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let units: [(&str, u128); 4] = [
        ("d", u128::from(DAY) * 1000),
        ("h", u128::from(HOUR) * 1000),
        ("m", u128::from(MINUTE) * 1000),
        ("s", 1000),
    ];
    for (unit, size) in units {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

// ---------------------------------------------------------------------------
// YAML (serde) errors
// ---------------------------------------------------------------------------

/// Turns a serde_norway error into our `key (line N): message` shape. The
/// error's text starts with the key path (`pools[0]: …`) unless the problem
/// is at the top level, and ends with ` at line L column C`, which we render
/// ourselves.
fn yaml_error(text: &str, e: &serde_norway::Error) -> ConfigError {
    let location = e.location();
    let mut line = location.as_ref().map(|l| l.line());
    let mut full = e.to_string();
    if let Some(l) = &location {
        full = full.replacen(
            &format!(" at line {} column {}", l.line(), l.column()),
            "",
            1,
        );
    }
    let (path, msg) = split_error_path(&full);

    let (key, message) = if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = expected.trim_start_matches([',', ' ']).replace('`', "");
        let message = if expected.is_empty() {
            "unknown key".to_string()
        } else {
            format!("unknown key; {expected}")
        };
        (join_key(path, name), message)
    } else if let Some(rest) = msg.strip_prefix("duplicate field `") {
        // serde points at the start of the mapping; the line that matters is
        // the second occurrence, which the text walk can find.
        let name = rest.split_once('`').map_or(rest, |(n, _)| n);
        match yaml_lines::duplicate_key(text) {
            Some((key, l)) => {
                line = Some(l);
                (key, "duplicate key".to_string())
            }
            None => (join_key(path, name), "duplicate key".to_string()),
        }
    } else if path.is_empty() && location.is_some() && !msg.starts_with("invalid type") {
        // A YAML syntax error: no key to name.
        (String::new(), format!("invalid YAML: {msg}"))
    } else {
        (path.to_string(), humanize_serde(msg))
    };
    ConfigError::Invalid { key, line, message }
}

/// Splits `pools[0].min: invalid type …` into the path and the message; a
/// prefix that does not look like a key path (e.g. `invalid type`) is part
/// of the message.
fn split_error_path(msg: &str) -> (&str, &str) {
    if let Some((path, rest)) = msg.split_once(": ") {
        let is_path = !path.is_empty()
            && path != "."
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.[]?".contains(c));
        if is_path {
            return (path, rest);
        }
    }
    ("", msg)
}

/// Replaces Rust type names in serde messages with YAML words.
fn humanize_serde(msg: &str) -> String {
    let mut out = msg.replace("unit value", "empty value");
    for (from, to) in [
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected a mapping"),
    ] {
        out = out.replace(from, to);
    }
    if let Some(i) = out.find("expected struct ") {
        out.truncate(i);
        out.push_str("expected a mapping");
    }
    out
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

// ---------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------

/// `path` made absolute against the current directory and normalised.
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        normalize(path)
    } else {
        match std::env::current_dir() {
            Ok(cwd) => normalize(&cwd.join(path)),
            Err(_) => normalize(path),
        }
    }
}

/// Resolves `.` and `..` lexically. Symlinks are deliberately not followed:
/// validation must not depend on what exists on this machine.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            // `/..` is `/`; popping at the root is a no-op, as it should be.
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Whether `a` equals `b` or one lies inside the other (both normalised).
fn nested(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

type Checked<T> = Result<T, ConfigError>;

/// Validation context: the text (for line numbers) and the config folder
/// (for relative paths).
struct Check<'a> {
    text: &'a str,
    dir: PathBuf,
}

impl Check<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            line: yaml_lines::nearest_line(self.text, key),
            message: message.into(),
        }
    }

    fn present(&self, key: &str) -> bool {
        yaml_lines::line_of(self.text, key).is_some()
    }

    fn required<'v>(&self, key: &str, value: &'v Option<String>) -> Checked<&'v str> {
        match value.as_deref() {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => Err(self.err(key, "must not be empty")),
            None => Err(self.err(key, "required")),
        }
    }

    fn duration(&self, key: &str, raw: Option<&str>, default: Duration) -> Checked<Duration> {
        match raw {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|m| self.err(key, m)),
        }
    }

    /// A duration with a floor: below it the daemon would spin (a loop
    /// turning every millisecond) or give up before anything could answer.
    fn duration_at_least(
        &self,
        key: &str,
        raw: Option<&str>,
        default: Duration,
        floor: Duration,
    ) -> Checked<Duration> {
        let d = self.duration(key, raw, default)?;
        if d.is_zero() {
            return Err(self.err(key, "must be greater than 0"));
        }
        if d < floor {
            return Err(self.err(
                key,
                format!(
                    "must be at least {} (shorter would keep the daemon busy for nothing)",
                    format_duration(floor)
                ),
            ));
        }
        Ok(d)
    }

    fn int(&self, key: &str, raw: Option<i64>, default: i64, min: i64, max: i64) -> Checked<i64> {
        let v = raw.unwrap_or(default);
        if v < min {
            return Err(self.err(key, format!("must be ≥ {min}")));
        }
        if v > max {
            return Err(self.err(key, format!("must be ≤ {max}")));
        }
        Ok(v)
    }

    fn percent(&self, key: &str, raw: Option<f64>, default: f64) -> Checked<f64> {
        let v = raw.unwrap_or(default);
        if !(0.0..=100.0).contains(&v) {
            return Err(self.err(
                key,
                format!("must be a percentage between 0 and 100, got {v}"),
            ));
        }
        Ok(v)
    }

    /// `~` and `~/…` expanded with `$HOME`, relative paths joined to the
    /// config folder, then normalised.
    fn path(&self, key: &str, raw: &str) -> Checked<PathBuf> {
        if raw.is_empty() {
            return Err(self.err(key, "must not be empty"));
        }
        let expanded = if raw == "~" || raw.starts_with("~/") {
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from)
                .ok_or_else(|| self.err(key, "cannot expand `~`: HOME is not set"))?;
            if !home.is_absolute() {
                return Err(self.err(
                    key,
                    format!(
                        "cannot expand `~`: HOME ({}) is not absolute",
                        home.display()
                    ),
                ));
            }
            match raw.strip_prefix("~/") {
                Some(rest) => home.join(rest),
                None => home,
            }
        } else if raw.starts_with('~') {
            return Err(self.err(key, "only `~` and `~/…` are expanded; write the full path"));
        } else {
            PathBuf::from(raw)
        };
        Ok(normalize(&self.dir.join(expanded)))
    }

    /// An optional path: absent or `""` is `None`.
    fn opt_path(&self, key: &str, raw: Option<&str>) -> Checked<Option<PathBuf>> {
        match raw {
            None | Some("") => Ok(None),
            Some(p) => self.path(key, p).map(Some),
        }
    }

    fn name(&self, key: &str, value: &Option<String>) -> Checked<String> {
        let v = self.required(key, value)?;
        let ok = v
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return Err(self.err(
                key,
                format!("`{v}` is not a valid name: use only a-z, 0-9, `_` and `-`"),
            ));
        }
        Ok(v.to_string())
    }

    fn http_url(&self, key: &str, url: &str) -> Checked<()> {
        if url.starts_with("http://") || url.starts_with("https://") {
            Ok(())
        } else {
            Err(self.err(key, format!("`{url}` must start with http:// or https://")))
        }
    }

    fn config(&self, raw: RawConfig, source: PathBuf) -> Checked<Config> {
        let state_dir = self.path(
            "state_dir",
            raw.state_dir.as_deref().unwrap_or(DEFAULT_STATE_DIR),
        )?;
        let claude = self.claude(raw.claude.unwrap_or_default())?;
        let tmux = self.tmux(raw.tmux.unwrap_or_default())?;
        let shared_root = self.path(
            "shared_root",
            raw.shared_root.as_deref().unwrap_or(DEFAULT_SHARED_ROOT),
        )?;
        let shared = self.shared(raw.shared)?;
        let accounts = self.accounts(raw.accounts, &shared_root)?;
        let active_link = self.opt_path("active_link", raw.active_link.as_deref())?;
        if let Some(link) = &active_link {
            self.active_link(link, &accounts, &shared_root)?;
        }
        let quota = self.quota(raw.quota.unwrap_or_default())?;
        let pools = self.pools(raw.pools.unwrap_or_default())?;
        let projects = self.projects(raw.projects.unwrap_or_default(), &pools)?;
        let lifecycle = self.lifecycle(raw.lifecycle.unwrap_or_default())?;
        let swap = self.swap(raw.swap.unwrap_or_default())?;
        let checkpoint = self.checkpoint(raw.checkpoint.unwrap_or_default())?;
        let janitor = self.janitor(raw.janitor.unwrap_or_default())?;
        let http = self.http(raw.http.unwrap_or_default(), &state_dir)?;
        let notify = self.notify(raw.notify.unwrap_or_default())?;
        Ok(Config {
            source,
            state_dir,
            claude,
            tmux,
            shared_root,
            shared,
            accounts,
            active_link,
            quota,
            pools,
            projects,
            lifecycle,
            swap,
            checkpoint,
            janitor,
            http,
            notify,
        })
    }

    fn claude(&self, raw: RawClaude) -> Checked<ClaudeConfig> {
        let key = "claude.binary";
        let binary = raw.binary.unwrap_or_else(|| DEFAULT_BINARY.to_string());
        let binary = if binary.is_empty() {
            return Err(self.err(key, "must not be empty"));
        } else if binary.contains('/') {
            self.path(key, &binary)?
                .into_os_string()
                .into_string()
                .map_err(|_| self.err(key, "the resolved path is not valid UTF-8"))?
        } else if binary.chars().any(char::is_whitespace) {
            return Err(self.err(
                key,
                format!(
                    "`{binary}` must be a program name or a path; put arguments in claude.args"
                ),
            ));
        } else {
            binary
        };

        let env = raw.env.unwrap_or_default();
        for name in env.keys() {
            let key = format!("claude.env.{name}");
            let mut chars = name.chars();
            let valid = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(self.err(
                    &key,
                    format!("`{name}` is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)"),
                ));
            }
            // Names a shell will not let a file set (the pane's shell reads
            // claude.env from one: docs/operations.md, "env/").
            const SHELL_READONLY: [&str; 8] = [
                "BASHOPTS",
                "BASH_VERSINFO",
                "EUID",
                "PPID",
                "SHELLOPTS",
                "UID",
                "IFS",
                "PS4",
            ];
            if SHELL_READONLY.contains(&name.as_str()) {
                return Err(self.err(
                    &key,
                    format!("{name} is the shell's own and cannot be set for Claude Code"),
                ));
            }
            if RESERVED_ENV.contains(&name.as_str()) {
                return Err(self.err(
                    &key,
                    format!("{name} is set by claude-failover itself and cannot be overridden"),
                ));
            }
        }

        Ok(ClaudeConfig {
            binary,
            args: raw.args.unwrap_or_default(),
            env,
            startup_timeout: self.duration_at_least(
                "claude.startup_timeout",
                raw.startup_timeout.as_deref(),
                secs(60),
                MIN_INTERVAL,
            )?,
        })
    }

    fn tmux(&self, raw: RawTmux) -> Checked<TmuxConfig> {
        let socket = match raw.socket {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => {
                let ok = s != "."
                    && s != ".."
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
                if !ok {
                    return Err(self.err(
                        "tmux.socket",
                        format!("`{s}` is not a valid socket name: use only A-Z, a-z, 0-9, `_`, `.` and `-`"),
                    ));
                }
                Some(s)
            }
        };
        let size = |key: &str, raw: Option<i64>, default: i64| -> Checked<u16> {
            let v = self.int(key, raw, default, 1, MAX_WINDOW_SIZE)?;
            u16::try_from(v).map_err(|_| self.err(key, format!("must be ≤ {MAX_WINDOW_SIZE}")))
        };
        Ok(TmuxConfig {
            socket,
            width: size("tmux.width", raw.width, DEFAULT_WIDTH)?,
            height: size("tmux.height", raw.height, DEFAULT_HEIGHT)?,
        })
    }

    fn shared(&self, raw: Option<Vec<String>>) -> Checked<Vec<String>> {
        let mut shared: Vec<String> = REQUIRED_SHARED.iter().map(|s| s.to_string()).collect();
        let Some(list) = raw else {
            return Ok(shared);
        };
        for (i, entry) in list.iter().enumerate() {
            let bad = entry.is_empty()
                || entry == "."
                || entry == ".."
                || entry.contains('/')
                || entry.contains('\0');
            if bad {
                return Err(self.err(
                    &format!("shared[{i}]"),
                    format!("`{entry}` must be a single folder name inside an account home (no `/`, not `.` or `..`)"),
                ));
            }
        }
        let missing: Vec<&str> = REQUIRED_SHARED
            .iter()
            .copied()
            .filter(|r| !list.iter().any(|e| e == r))
            .collect();
        if !missing.is_empty() {
            return Err(self.err(
                "shared",
                format!(
                    "must keep {}; missing: {}",
                    REQUIRED_SHARED.join(", "),
                    missing.join(", ")
                ),
            ));
        }
        for entry in list {
            if !shared.contains(&entry) {
                shared.push(entry);
            }
        }
        Ok(shared)
    }

    fn accounts(
        &self,
        raw: Option<Vec<RawAccount>>,
        shared_root: &Path,
    ) -> Checked<Vec<AccountConfig>> {
        let Some(raw) = raw else {
            return Err(self.err("accounts", "required: list at least one account"));
        };
        if raw.is_empty() {
            return Err(self.err("accounts", "must list at least one account"));
        }
        let mut accounts: Vec<AccountConfig> = Vec::with_capacity(raw.len());
        for (i, a) in raw.into_iter().enumerate() {
            let name_key = format!("accounts[{i}].name");
            let home_key = format!("accounts[{i}].home");
            let name = self.name(&name_key, &a.name)?;
            if let Some(j) = accounts.iter().position(|o| o.name == name) {
                return Err(self.err(
                    &name_key,
                    format!("duplicate account name `{name}` (also accounts[{j}])"),
                ));
            }
            let home = self.path(&home_key, self.required(&home_key, &a.home)?)?;
            if let Some(j) = accounts.iter().position(|o| o.home == home) {
                return Err(self.err(
                    &home_key,
                    format!(
                        "{} is also the home of accounts[{j}] (`{}`); each account needs its own",
                        home.display(),
                        accounts[j].name
                    ),
                ));
            }
            if shared_root.starts_with(&home) {
                // Point at shared_root when the operator wrote it, else at the
                // home that collides with the default.
                let key = if self.present("shared_root") {
                    "shared_root"
                } else {
                    home_key.as_str()
                };
                return Err(self.err(
                    key,
                    format!(
                        "shared_root {} must not be inside or equal to the home of account `{name}` ({})",
                        shared_root.display(),
                        home.display()
                    ),
                ));
            }
            if home.starts_with(shared_root) {
                return Err(self.err(
                    &home_key,
                    format!(
                        "{} must not be inside shared_root ({})",
                        home.display(),
                        shared_root.display()
                    ),
                ));
            }
            accounts.push(AccountConfig { name, home });
        }
        Ok(accounts)
    }

    /// The link is replaced by a symlink on every swap: it must never be (or
    /// contain, or sit inside) a folder holding real data.
    fn active_link(
        &self,
        link: &Path,
        accounts: &[AccountConfig],
        shared_root: &Path,
    ) -> Checked<()> {
        for a in accounts {
            if nested(link, &a.home) {
                return Err(self.err(
                    "active_link",
                    format!(
                        "{} overlaps the home of account `{}` ({}); it is replaced by a symlink on every swap",
                        link.display(),
                        a.name,
                        a.home.display()
                    ),
                ));
            }
        }
        if nested(link, shared_root) {
            return Err(self.err(
                "active_link",
                format!(
                    "{} overlaps shared_root ({}); it is replaced by a symlink on every swap",
                    link.display(),
                    shared_root.display()
                ),
            ));
        }
        Ok(())
    }

    fn quota(&self, raw: RawQuota) -> Checked<QuotaConfig> {
        let usage_url = raw
            .usage_url
            .unwrap_or_else(|| DEFAULT_USAGE_URL.to_string());
        self.http_url("quota.usage_url", &usage_url)?;
        Ok(QuotaConfig {
            usage_url,
            poll_interval: self.duration_at_least(
                "quota.poll_interval",
                raw.poll_interval.as_deref(),
                secs(5 * MINUTE),
                MIN_INTERVAL,
            )?,
            five_hour_threshold: self.percent(
                "quota.five_hour_threshold",
                raw.five_hour_threshold,
                90.0,
            )?,
            seven_day_threshold: self.percent(
                "quota.seven_day_threshold",
                raw.seven_day_threshold,
                95.0,
            )?,
            hysteresis: self.percent("quota.hysteresis", raw.hysteresis, 10.0)?,
            swap_cooldown: self.duration(
                "quota.swap_cooldown",
                raw.swap_cooldown.as_deref(),
                secs(2 * MINUTE),
            )?,
        })
    }

    fn pools(&self, raw: Vec<RawPool>) -> Checked<Vec<PoolConfig>> {
        let mut pools: Vec<PoolConfig> = Vec::with_capacity(raw.len());
        // Every session name claimed so far, with the pool that claims it.
        let mut claimed: std::collections::HashMap<String, usize> = Default::default();
        for (i, p) in raw.into_iter().enumerate() {
            let k = |field: &str| format!("pools[{i}].{field}");
            let name = self.name(&k("name"), &p.name)?;
            if let Some(j) = pools.iter().position(|o| o.name == name) {
                return Err(self.err(
                    &k("name"),
                    format!("duplicate pool name `{name}` (also pools[{j}])"),
                ));
            }
            let prefix = self.required(&k("prefix"), &p.prefix)?.to_string();
            if !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(self.err(
                    &k("prefix"),
                    format!("`{prefix}` may contain only A-Z, a-z, 0-9, `_` and `-` (tmux session names)"),
                ));
            }
            let start_index = self.int(&k("start_index"), p.start_index, 0, 0, MAX_START_INDEX)?;
            let min = self.int(&k("min"), p.min, DEFAULT_POOL_MIN, 0, MAX_POOL_SIZE)?;
            let max = self.int(&k("max"), p.max, DEFAULT_POOL_MAX, 1, MAX_POOL_SIZE)?;
            if min > max {
                return Err(if p.max.is_some() {
                    self.err(&k("max"), format!("must be ≥ min ({min})"))
                } else {
                    self.err(&k("min"), format!("must be ≤ max ({max}, the default)"))
                });
            }
            let cwd = self.path(&k("cwd"), self.required(&k("cwd"), &p.cwd)?)?;
            let idle_shrink_after = self.duration(
                &k("idle_shrink_after"),
                p.idle_shrink_after.as_deref(),
                secs(15 * MINUTE),
            )?;
            // The int checks above bound all three well inside u32.
            let to_u32 =
                |key: &str, v: i64| u32::try_from(v).map_err(|_| self.err(key, "out of range"));
            let pool = PoolConfig {
                name,
                prefix,
                start_index: to_u32(&k("start_index"), start_index)?,
                min: to_u32(&k("min"), min)?,
                max: to_u32(&k("max"), max)?,
                cwd,
                dispatch: p.dispatch.unwrap_or(true),
                idle_shrink_after,
            };
            // Two pools must never manage the same tmux session: `ccl-` with
            // index 10 and `ccl-1` with index 0 are both `ccl-10`.
            for session in pool.session_names() {
                if let Some(&j) = claimed.get(&session) {
                    return Err(self.err(
                        &k("prefix"),
                        format!(
                            "session `{session}` would belong to both pools[{j}] (`{}`) and this pool; change the prefix or the index range",
                            pools[j].name
                        ),
                    ));
                }
                claimed.insert(session, i);
            }
            pools.push(pool);
        }
        Ok(pools)
    }

    fn projects(&self, raw: Vec<RawProject>, pools: &[PoolConfig]) -> Checked<Vec<ProjectConfig>> {
        let mut projects: Vec<ProjectConfig> = Vec::with_capacity(raw.len());
        for (i, p) in raw.into_iter().enumerate() {
            let k = |field: &str| format!("projects[{i}].{field}");
            let name = self.name(&k("name"), &p.name)?;
            if let Some(j) = projects.iter().position(|o| o.name == name) {
                return Err(self.err(
                    &k("name"),
                    format!("duplicate project name `{name}` (also projects[{j}])"),
                ));
            }
            let path = self.path(&k("path"), self.required(&k("path"), &p.path)?)?;
            if let Some(j) = projects.iter().position(|o| o.path == path) {
                return Err(self.err(
                    &k("path"),
                    format!(
                        "{} is also the folder of projects[{j}] (`{}`); two projects would share one queue",
                        path.display(),
                        projects[j].name
                    ),
                ));
            }
            let pool = self.required(&k("pool"), &p.pool)?.to_string();
            if !pools.iter().any(|o| o.name == pool) {
                let known: Vec<&str> = pools.iter().map(|o| o.name.as_str()).collect();
                let known = if known.is_empty() {
                    "no pools are configured".to_string()
                } else {
                    format!("pools are: {}", known.join(", "))
                };
                return Err(self.err(&k("pool"), format!("unknown pool `{pool}`; {known}")));
            }
            projects.push(ProjectConfig { name, path, pool });
        }
        Ok(projects)
    }

    fn lifecycle(&self, raw: RawLifecycle) -> Checked<LifecycleConfig> {
        let interval = self.duration_at_least(
            "lifecycle.interval",
            raw.interval.as_deref(),
            secs(15),
            MIN_INTERVAL,
        )?;
        let restart_backoff = match raw.restart_backoff {
            None => vec![secs(1), secs(5), secs(30), secs(2 * MINUTE)],
            Some(steps) => {
                if steps.is_empty() {
                    return Err(self.err(
                        "lifecycle.restart_backoff",
                        "must list at least one step (e.g. [1s, 5s, 30s, 2m])",
                    ));
                }
                let mut out = Vec::with_capacity(steps.len());
                for (i, s) in steps.iter().enumerate() {
                    let key = format!("lifecycle.restart_backoff[{i}]");
                    let d = self.duration(&key, Some(s), Duration::ZERO)?;
                    // The last step is the pace of retries forever after: zero
                    // would restart a crashing session in a tight loop.
                    if i + 1 == steps.len() && d.is_zero() {
                        return Err(self.err(&key, "the last step must be greater than 0"));
                    }
                    out.push(d);
                }
                out
            }
        };
        Ok(LifecycleConfig {
            interval,
            restart_backoff,
        })
    }

    fn swap(&self, raw: RawSwap) -> Checked<SwapConfig> {
        Ok(SwapConfig {
            drain_timeout: self.duration(
                "swap.drain_timeout",
                raw.drain_timeout.as_deref(),
                secs(2 * MINUTE),
            )?,
            stop_timeout: self.duration_at_least(
                "swap.stop_timeout",
                raw.stop_timeout.as_deref(),
                secs(10),
                MIN_INTERVAL,
            )?,
        })
    }

    fn checkpoint(&self, raw: RawCheckpoint) -> Checked<CheckpointConfig> {
        Ok(CheckpointConfig {
            interval: self.duration_at_least(
                "checkpoint.interval",
                raw.interval.as_deref(),
                secs(60),
                MIN_INTERVAL,
            )?,
            keep: self.duration_at_least(
                "checkpoint.keep",
                raw.keep.as_deref(),
                secs(24 * HOUR),
                secs(MINUTE),
            )?,
        })
    }

    fn janitor(&self, raw: RawJanitor) -> Checked<JanitorConfig> {
        let interval = self.duration_at_least(
            "janitor.interval",
            raw.interval.as_deref(),
            secs(5 * MINUTE),
            MIN_INTERVAL,
        )?;
        let stale_task_after = self.duration_at_least(
            "janitor.stale_task_after",
            raw.stale_task_after.as_deref(),
            secs(2 * HOUR),
            // Low enough for a test of a silent session; below it a slow
            // answer would be taken for a hung one.
            secs(10),
        )?;
        let done_retention = self.duration(
            "janitor.done_retention",
            raw.done_retention.as_deref(),
            secs(7 * DAY),
        )?;
        let key = "janitor.max_attempts";
        let max_attempts = self.int(key, raw.max_attempts, DEFAULT_MAX_ATTEMPTS, 1, 1_000_000)?;
        Ok(JanitorConfig {
            interval,
            stale_task_after,
            done_retention,
            max_attempts: u32::try_from(max_attempts).map_err(|_| self.err(key, "out of range"))?,
        })
    }

    fn http(&self, raw: RawHttp, state_dir: &Path) -> Checked<HttpConfig> {
        let key = "http.listen";
        let text = raw.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        // `localhost` is the one name accepted: resolving names here would
        // make validation depend on this machine's resolver.
        let literal = match text.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => text.clone(),
        };
        let listen: SocketAddr = literal.parse().map_err(|_| {
            self.err(
                key,
                format!("`{text}` is not an address: expected IP:PORT, e.g. 127.0.0.1:7878 or [::1]:7878"),
            )
        })?;
        if listen.port() == 0 {
            return Err(self.err(key, "port must not be 0"));
        }
        let token_file = self.opt_path("http.token_file", raw.token_file.as_deref())?;
        // A non-loopback listen needs an explicit token file: the operator
        // chooses where the secret that remote clients carry lives.
        if token_file.is_none() && !listen.ip().is_loopback() {
            return Err(self.err(
                key,
                format!("{listen} is reachable from other machines: set http.token_file, or listen on 127.0.0.1"),
            ));
        }
        let token_file = token_file.unwrap_or_else(|| state_dir.join(DEFAULT_TOKEN_FILE));
        Ok(HttpConfig { listen, token_file })
    }

    fn notify(&self, raw: RawNotify) -> Checked<NotifyConfig> {
        let telegram = self.telegram(raw.telegram.unwrap_or_default())?;
        let webhook_url = match raw.webhook.unwrap_or_default().url {
            None => None,
            Some(u) if u.is_empty() => None,
            Some(u) => {
                self.http_url("notify.webhook.url", &u)?;
                Some(u)
            }
        };
        let min_level = match raw.min_level.as_deref() {
            None | Some("info") => Level::Info,
            Some("warn") => Level::Warn,
            Some("error") => Level::Error,
            Some(other) => {
                return Err(self.err(
                    "notify.min_level",
                    format!("`{other}` is not a level: use info, warn or error"),
                ))
            }
        };
        Ok(NotifyConfig {
            telegram,
            webhook_url,
            min_level,
        })
    }

    fn telegram(&self, raw: RawTelegram) -> Checked<Option<TelegramConfig>> {
        let api_base = raw
            .api_base
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_TELEGRAM_API.to_string());
        self.http_url("notify.telegram.api_base", &api_base)?;
        let token = raw.bot_token_file.filter(|s| !s.is_empty());
        let chat_id = raw.chat_id.filter(|s| !s.is_empty());
        match (token, chat_id) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(self.err(
                "notify.telegram.chat_id",
                "required when bot_token_file is set (set both, or neither)",
            )),
            (None, Some(_)) => Err(self.err(
                "notify.telegram.bot_token_file",
                "required when chat_id is set (set both, or neither)",
            )),
            (Some(token), Some(chat_id)) => Ok(Some(TelegramConfig {
                bot_token_file: self.path("notify.telegram.bot_token_file", &token)?,
                chat_id,
                // Callers append `/bot<token>/…`.
                api_base: api_base.trim_end_matches('/').to_string(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "accounts:\n  - name: main\n    home: /srv/acc/main\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/cf/config.yaml"))
    }

    fn invalid(text: &str) -> (String, Option<usize>, String) {
        match parse(text) {
            Err(ConfigError::Invalid { key, line, message }) => (key, line, message),
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn durations_parse() {
        let ok = [
            ("0s", 0),
            ("500ms", 500),
            ("15s", 15_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("7d", 604_800_000),
            ("015s", 15_000),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for s in [
            "",
            "15",
            "1.5s",
            "-1s",
            "+1s",
            "1x",
            "s",
            "1 s",
            " 1s",
            "1S",
            "1h30m",
            "1sec",
            "99999999999999999999d",
            "999999999999999d",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?} should be refused");
        }
        assert!(parse_duration("15").unwrap_err().contains("no unit"));
    }

    #[test]
    fn durations_format_with_the_largest_exact_unit() {
        for (ms, s) in [
            (0, "0s"),
            (1, "1ms"),
            (1500, "1500ms"),
            (15_000, "15s"),
            (90_000, "90s"),
            (120_000, "2m"),
            (3_600_000, "1h"),
            (86_400_000, "1d"),
            (90_000_000, "25h"),
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(format_duration(d), s);
            assert_eq!(parse_duration(s), Ok(d));
        }
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../x")), PathBuf::from("/x"));
        assert_eq!(normalize(Path::new("/a/b/")), PathBuf::from("/a/b"));
    }

    #[test]
    fn minimal_config_gets_the_defaults() {
        let c = parse(MINIMAL).expect("valid");
        assert_eq!(c.source, PathBuf::from("/etc/cf/config.yaml"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/claude-failover"));
        assert_eq!(c.claude.binary, "claude");
        assert_eq!(c.claude.startup_timeout, secs(60));
        assert_eq!(
            (c.tmux.socket.as_deref(), c.tmux.width, c.tmux.height),
            (None, 200, 50)
        );
        assert_eq!(c.shared, REQUIRED_SHARED);
        assert_eq!(c.active_link, None);
        assert_eq!(c.quota.usage_url, DEFAULT_USAGE_URL);
        assert_eq!(c.quota.poll_interval, secs(300));
        assert_eq!(
            (
                c.quota.five_hour_threshold,
                c.quota.seven_day_threshold,
                c.quota.hysteresis
            ),
            (90.0, 95.0, 10.0)
        );
        assert_eq!(c.quota.swap_cooldown, secs(120));
        assert!(c.pools.is_empty() && c.projects.is_empty());
        assert_eq!(c.lifecycle.interval, secs(15));
        assert_eq!(
            c.lifecycle.restart_backoff,
            [secs(1), secs(5), secs(30), secs(120)]
        );
        assert_eq!(
            (c.swap.drain_timeout, c.swap.stop_timeout),
            (secs(120), secs(10))
        );
        assert_eq!(
            (c.checkpoint.interval, c.checkpoint.keep),
            (secs(60), secs(DAY))
        );
        assert_eq!(c.janitor.interval, secs(300));
        assert_eq!(c.janitor.stale_task_after, secs(2 * HOUR));
        assert_eq!(c.janitor.done_retention, secs(7 * DAY));
        assert_eq!(c.janitor.max_attempts, 3);
        assert_eq!(
            c.http.listen,
            "127.0.0.1:7878".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.http.token_file, c.state_dir.join("http.token"));
        assert_eq!(c.notify.telegram, None);
        assert_eq!(c.notify.webhook_url, None);
        assert_eq!(c.notify.min_level, Level::Info);
    }

    #[test]
    fn pool_defaults_and_relative_paths() {
        let text = format!(
            "{MINIMAL}pools:\n  - name: auto\n    prefix: a-\n    cwd: ../agents\nprojects:\n  - name: p\n    path: ./p/\n    pool: auto\n"
        );
        let c = parse(&text).expect("valid");
        let p = &c.pools[0];
        assert_eq!((p.start_index, p.min, p.max, p.dispatch), (0, 1, 10, true));
        assert_eq!(p.idle_shrink_after, secs(15 * MINUTE));
        assert_eq!(p.cwd, PathBuf::from("/etc/agents"));
        assert_eq!(c.projects[0].path, PathBuf::from("/etc/cf/p"));
    }

    #[test]
    fn serde_errors_name_the_key_and_line() {
        let (key, line, msg) =
            invalid("accounts:\n  - name: main\n    home: /h\n    colour: red\n");
        assert_eq!((key.as_str(), line), ("accounts[0].colour", Some(4)));
        assert_eq!(msg, "unknown key; expected name or home");

        let (key, line, msg) = invalid(&format!("{MINIMAL}tmux:\n  width: wide\n"));
        assert_eq!((key.as_str(), line), ("tmux.width", Some(5)));
        assert!(msg.contains("expected an integer"), "{msg}");

        let (key, line, _) = invalid(&format!("{MINIMAL}bogus: 1\n"));
        assert_eq!((key.as_str(), line), ("bogus", Some(4)));

        let (key, line, msg) = invalid("accounts:\n  - name: a\n   home: x\n");
        assert_eq!((key.as_str(), line), ("", Some(3)));
        assert!(msg.starts_with("invalid YAML"), "{msg}");

        let (key, _, msg) = invalid("- 1\n");
        assert_eq!(key, "");
        assert!(msg.contains("expected a mapping"), "{msg}");
    }

    #[test]
    fn duplicate_keys_point_at_the_second_occurrence() {
        let (key, line, _) = invalid("accounts:\n  - name: main\n    name: other\n    home: /h\n");
        assert_eq!((key.as_str(), line), ("accounts[0].name", Some(3)));
        let (key, line, _) = invalid(&format!("{MINIMAL}claude:\n  env:\n    A: x\n    A: y\n"));
        assert_eq!((key.as_str(), line), ("claude.env.A", Some(7)));
    }

    #[test]
    fn display_is_key_line_message() {
        let e = ConfigError::Invalid {
            key: "pools[1].start_index".into(),
            line: Some(23),
            message: "must be ≥ 0".into(),
        };
        assert_eq!(e.to_string(), "pools[1].start_index (line 23): must be ≥ 0");
        let (key, line, msg) = invalid(&format!(
            "{MINIMAL}pools:\n  - name: a\n    prefix: a-\n    cwd: /x\n  - name: b\n    prefix: b-\n    cwd: /x\n    start_index: -1\n"
        ));
        assert_eq!(
            (key.as_str(), line, msg.as_str()),
            ("pools[1].start_index", Some(11), "must be ≥ 0")
        );
    }

    #[test]
    fn session_name_collisions_are_found() {
        let (key, line, msg) = invalid(&format!(
            "{MINIMAL}pools:\n  - name: a\n    prefix: ccl-\n    start_index: 5\n    cwd: /x\n  - name: b\n    prefix: ccl-1\n    cwd: /x\n"
        ));
        assert_eq!((key.as_str(), line), ("pools[1].prefix", Some(10)));
        assert!(msg.contains("`ccl-10`"), "{msg}");
    }

    #[test]
    fn localhost_listen_is_loopback() {
        let c = parse(&format!("{MINIMAL}http:\n  listen: localhost:9000\n")).expect("valid");
        assert_eq!(
            c.http.listen,
            "127.0.0.1:9000".parse::<SocketAddr>().unwrap()
        );
    }
}
