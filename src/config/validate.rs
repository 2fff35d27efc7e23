//! Validation: the raw layer checked and turned into the [`Config`] the
//! program uses, with SPEC.md's defaults; every message names the key path
//! and its line.

use super::*;

pub(super) const DEFAULT_STATE_DIR: &str = "/var/lib/claude-failover";
pub(super) const DEFAULT_BINARY: &str = "claude";
pub(super) const DEFAULT_SHARED_ROOT: &str = "~/.claude-shared";
/// The folders every account must share; always first, in this order.
pub use crate::claude::facts::REQUIRED_SHARED;
pub(super) const DEFAULT_USAGE_URL: &str = "https://api.anthropic.com/api/oauth/usage";
pub(super) const DEFAULT_TELEGRAM_API: &str = "https://api.telegram.org";
pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
pub(super) const DEFAULT_WIDTH: i64 = 200;
pub(super) const DEFAULT_HEIGHT: i64 = 50;
/// tmux refuses window sizes above this (`WINDOW_MAXIMUM`).
pub(super) const MAX_WINDOW_SIZE: i64 = 10_000;
pub(super) const DEFAULT_POOL_MIN: i64 = 1;
pub(super) const DEFAULT_POOL_MAX: i64 = 10;
/// Keeps a pool's name set small enough to compare exhaustively.
pub(super) const MAX_POOL_SIZE: i64 = 1000;
pub(super) const MAX_START_INDEX: i64 = 999_999_999;
pub(super) const DEFAULT_MAX_ATTEMPTS: i64 = 3;
/// Environment variables the daemon sets itself on every session.
pub(super) const RESERVED_ENV: [&str; 3] = [
    "CLAUDE_CONFIG_DIR",
    "CLAUDE_FAILOVER_SESSION",
    "CLAUDE_FAILOVER_STATE_DIR",
];

pub(super) const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
pub(super) const MINUTE: u64 = 60;
/// The shortest interval or timeout accepted for the daemon's loops.
pub(super) const MIN_INTERVAL: Duration = secs(1);
/// `swap.seat` when unset (live mode).
pub const DEFAULT_SEAT: &str = "~/.claude-failover/seat";
/// `http.token_file` when unset: in the state folder.
pub const DEFAULT_TOKEN_FILE: &str = "http.token";
pub(super) const HOUR: u64 = 60 * MINUTE;
pub(super) const DAY: u64 = 24 * HOUR;

/// `path` made absolute against the current directory and normalised.
pub(super) fn absolute(path: &Path) -> PathBuf {
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
pub(super) fn normalize(path: &Path) -> PathBuf {
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
pub(super) fn nested(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

type Checked<T> = Result<T, ConfigError>;

/// Validation context: the text (for line numbers) and the config folder
/// (for relative paths).
pub(super) struct Check<'a> {
    pub(super) text: &'a str,
    pub(super) dir: PathBuf,
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

    /// A model name or alias as `claude --model` takes it (`opus`,
    /// `claude-sonnet-4-5`, `opus[1m]`).
    fn model(&self, key: &str, raw: Option<String>) -> Checked<Option<String>> {
        let Some(m) = raw else { return Ok(None) };
        if m.is_empty()
            || !m
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-[]".contains(&b))
        {
            return Err(self.err(
                key,
                format!("`{m}` is not a model name (e.g. `opus`, `sonnet`, `claude-opus-4-5`)"),
            ));
        }
        Ok(Some(m))
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

    pub(super) fn config(&self, raw: RawConfig, source: PathBuf) -> Checked<Config> {
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
        if let Some(seat) = &swap.seat {
            // The seat's credentials are rewritten on every swap: it must
            // never be (or hold, or sit in) an account's own login.
            for a in &accounts {
                if nested(seat, &a.home) {
                    return Err(self.err(
                        "swap.seat",
                        format!(
                            "{} overlaps the home of account `{}` ({}); each account's home keeps its own login, the seat holds the active one's copy",
                            seat.display(),
                            a.name,
                            a.home.display()
                        ),
                    ));
                }
            }
        }
        let checkpoint = self.checkpoint(raw.checkpoint.unwrap_or_default())?;
        let janitor = self.janitor(raw.janitor.unwrap_or_default())?;
        let http = self.http(raw.http.unwrap_or_default(), &state_dir)?;
        let notify = self.notify(raw.notify.unwrap_or_default())?;
        let log = self.log(raw.log.unwrap_or_default())?;
        let fleet = self.fleet(raw.fleet.unwrap_or_default())?;
        Ok(Config {
            log,
            fleet,
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
        let poll_interval = self.duration_at_least(
            "quota.poll_interval",
            raw.poll_interval.as_deref(),
            secs(5 * MINUTE),
            MIN_INTERVAL,
        )?;
        let limits_poll_interval = self.duration_at_least(
            "quota.limits_poll_interval",
            raw.limits_poll_interval.as_deref(),
            poll_interval.max(secs(15 * MINUTE)),
            poll_interval,
        )?;
        Ok(QuotaConfig {
            usage_url,
            poll_interval,
            limits_poll_interval,
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
            weekly_scoped_threshold: self.percent(
                "quota.weekly_scoped_threshold",
                raw.weekly_scoped_threshold,
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
                model: self.model(&k("model"), p.model)?,
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
        let hooks_silent_after = self.duration_at_least(
            "lifecycle.hooks_silent_after",
            raw.hooks_silent_after.as_deref(),
            secs(10 * MINUTE),
            MIN_INTERVAL,
        )?;
        Ok(LifecycleConfig {
            interval,
            hooks_silent_after,
            restart_backoff,
        })
    }

    fn swap(&self, raw: RawSwap) -> Checked<SwapConfig> {
        let mode = match raw.mode.as_deref() {
            None | Some("live") => SwapMode::Live,
            Some("restart") => SwapMode::Restart,
            Some(other) => {
                return Err(self.err(
                    "swap.mode",
                    format!("`{other}` is not a mode: live or restart"),
                ))
            }
        };
        let seat = match (mode, raw.seat.as_deref()) {
            (_, Some(s)) => Some(self.path("swap.seat", s)?),
            (SwapMode::Live, None) => Some(self.path("swap.seat", DEFAULT_SEAT)?),
            (SwapMode::Restart, None) => None,
        };
        Ok(SwapConfig {
            mode,
            seat,
            verify_timeout: self.duration_at_least(
                "swap.verify_timeout",
                raw.verify_timeout.as_deref(),
                secs(2 * MINUTE),
                MIN_INTERVAL,
            )?,
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

    fn log(&self, raw: RawLog) -> Checked<LogConfig> {
        let format = match raw.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(self.err(
                    "log.format",
                    format!("`{other}` is not a log format: text or json"),
                ))
            }
        };
        let level = match raw.level.as_deref() {
            None => log::LevelFilter::Info,
            Some(l) => l.parse().map_err(|_| {
                self.err(
                    "log.level",
                    format!("`{l}` is not a level: error, warn, info, debug or trace"),
                )
            })?,
        };
        Ok(LogConfig { format, level })
    }

    fn fleet(&self, raw: RawFleet) -> Checked<FleetConfig> {
        let redis = raw.redis.filter(|r| !r.trim().is_empty());
        if let Some(url) = &redis {
            if url.starts_with("rediss://") || url.starts_with("valkeys://") {
                return Err(self.err(
                    "fleet.redis",
                    "this build speaks Redis without TLS: use redis:// over a private network, or a TLS tunnel (stunnel, spiped) to a TLS-only server (docs/fleet.md)",
                ));
            }
            let schemes = ["redis://", "redis+unix://", "unix://", "valkey://"];
            if !schemes.iter().any(|s| url.starts_with(s)) {
                return Err(self.err(
                    "fleet.redis",
                    "must be a Redis URL such as redis://10.0.0.5:6379/0 or redis+unix:///run/redis.sock",
                ));
            }
            if let Err(e) = crate::store::fleet::FleetStore::open(url) {
                return Err(self.err(
                    "fleet.redis",
                    e.trim_start_matches("fleet.redis: ").to_string(),
                ));
            }
        }
        let machine = match raw.machine.filter(|m| !m.trim().is_empty()) {
            Some(m) => m,
            None => crate::sys::process::hostname(),
        };
        if machine.len() > 64
            || !machine
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(self.err(
                "fleet.machine",
                format!("`{machine}` is not a valid machine name: use only letters, digits, `.`, `_` and `-`, at most 64"),
            ));
        }
        let lease_ttl = self.duration_at_least(
            "fleet.lease_ttl",
            raw.lease_ttl.as_deref(),
            secs(15),
            secs(3),
        )?;
        Ok(FleetConfig {
            redis,
            machine,
            lease_ttl,
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
            stale_while_waiting: raw.stale_while_waiting.unwrap_or(false),
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
