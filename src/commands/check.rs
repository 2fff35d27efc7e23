//! `claude-failover check`: everything `run` verifies before it starts, plus
//! what each account needs to run sessions unattended. One line per check,
//! with a fix hint on each failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::claude::account::{ClaudeJson, Credentials, CredentialsError};
use crate::claude::facts;
use crate::config::{AccountConfig, Config};
use crate::sys::process;

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct CheckLine {
    pub ok: bool,
    /// What was checked, e.g. `account main: credentials`.
    pub subject: String,
    /// What was found.
    pub detail: String,
    /// How to fix it, on failure.
    pub hint: Option<String>,
}

impl CheckLine {
    pub fn pass(subject: impl Into<String>, detail: impl Into<String>) -> CheckLine {
        CheckLine {
            ok: true,
            subject: subject.into(),
            detail: detail.into(),
            hint: None,
        }
    }

    pub fn fail(
        subject: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> CheckLine {
        CheckLine {
            ok: false,
            subject: subject.into(),
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{mark} {}: {}", self.subject, self.detail)?;
        if let Some(hint) = &self.hint {
            write!(f, " (fix: {hint})")?;
        }
        Ok(())
    }
}

/// `http.token_file`: absent is fine (`run` and `setup` generate it, 0600);
/// present, it must be readable, not empty, and closed to group and others,
/// as `run` requires.
fn check_http_token(config: &Config) -> CheckLine {
    use std::os::unix::fs::PermissionsExt;
    let path = &config.http.token_file;
    let subject = "http token";
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => CheckLine::pass(
            subject,
            format!(
                "{} absent; `setup` or `run` generates it (mode 0600)",
                path.display()
            ),
        ),
        Err(e) => CheckLine::fail(
            subject,
            format!("cannot read {}: {e}", path.display()),
            "run check as the daemon's user",
        ),
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => CheckLine::fail(
            subject,
            format!(
                "{} has mode {:04o}; group and others must have no access",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
            format!("chmod 600 {}", path.display()),
        ),
        Ok(meta) => match crate::daemon::http::read_token(path) {
            Ok(_) => CheckLine::pass(
                subject,
                format!(
                    "{} (mode {:04o})",
                    path.display(),
                    meta.permissions().mode() & 0o777
                ),
            ),
            Err(e) => CheckLine::fail(
                subject,
                e,
                format!(
                    "delete {} and run setup to generate a new one",
                    path.display()
                ),
            ),
        },
    }
}

/// How long `tmux -V` and `claude --version` may take.
const PROBE_DEADLINE: Duration = Duration::from_secs(30);

/// Runs every check against `config` at `now`.
pub fn run_checks(config: &Config, now: SystemTime) -> Vec<CheckLine> {
    let mut lines = vec![CheckLine::pass(
        "config",
        config.source.display().to_string(),
    )];
    lines.push(check_tmux());
    lines.push(check_claude_binary(config));
    lines.push(check_http_token(config));
    lines.extend(crate::claude::shared_folders::check_lines(config));
    for account in &config.accounts {
        lines.extend(check_account(config, account, now));
    }
    let binary = std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if config.live_seat().is_some() {
        lines.extend(check_seat(config, &binary));
    } else {
        lines.extend(crate::commands::setup::hooks_installed(config, &binary));
    }
    lines.extend(check_hook_silencers(config));
    lines
}

/// Settings known to silence hooks: a session then looks healthy while
/// nothing reaches the daemon (a refusal included).
pub fn check_hook_silencers(config: &Config) -> Vec<CheckLine> {
    let mut found = Vec::new();
    for name in facts::HOOK_SILENCING_ENV {
        if config.claude.env.contains_key(name) {
            found.push(format!("claude.env sets {name}"));
        }
    }
    for (_, dir) in crate::commands::setup::config_dirs(config) {
        let path = dir.join(facts::SETTINGS_JSON);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        if v.get(facts::SETTINGS_DISABLE_ALL_HOOKS) == Some(&serde_json::Value::Bool(true)) {
            found.push(format!(
                "{} sets {}: true",
                path.display(),
                facts::SETTINGS_DISABLE_ALL_HOOKS
            ));
        }
        for name in facts::HOOK_SILENCING_ENV {
            if v.get("env").and_then(|e| e.get(name)).is_some() {
                found.push(format!("{} sets env.{name}", path.display()));
            }
        }
    }
    if found.is_empty() {
        return vec![CheckLine::pass(
            "hook silencers",
            "none of the settings known to silence hooks",
        )];
    }
    found
        .into_iter()
        .map(|f| {
            CheckLine::fail(
                "hook silencers",
                format!("{f}: hooks may not fire, and a limit would look healthy"),
                "remove it; the daemon learns of turns, limits and prompts from the hooks",
            )
        })
        .collect()
}

/// `tmux -V`: present and answering.
pub fn check_tmux() -> CheckLine {
    match process::run(Command::new("tmux").arg("-V"), None, PROBE_DEADLINE) {
        Ok(f) if f.success() => CheckLine::pass("tmux", f.stdout.trim().to_string()),
        Ok(f) => CheckLine::fail(
            "tmux",
            format!("`tmux -V` failed: {}", f.complaint()),
            "install tmux ≥ 3.0",
        ),
        Err(e) => CheckLine::fail(
            "tmux",
            e.to_string(),
            "install tmux ≥ 3.0 (apt-get install tmux)",
        ),
    }
}

/// The claude binary runs `--version`.
pub fn check_claude_binary(config: &Config) -> CheckLine {
    let subject = "claude binary";
    let Some(path) = process::which(&config.claude.binary) else {
        return CheckLine::fail(
            subject,
            format!("`{}` not found or not executable", config.claude.binary),
            format!(
                "install Claude Code (npm install -g {}@{}) or set claude.binary to its path",
                facts::NPM_PACKAGE,
                facts::PINNED_VERSION
            ),
        );
    };
    let mut cmd = Command::new(&path);
    cmd.arg("--version");
    for (k, v) in facts::ENV_OFFLINE {
        cmd.env(k, v);
    }
    match process::run(&mut cmd, None, PROBE_DEADLINE) {
        Ok(f) if f.success() => {
            let version = f.stdout.split_whitespace().next().unwrap_or("");
            let untested = if facts::TESTED_VERSIONS.contains(&version) {
                String::new()
            } else {
                format!(
                    "; warning: the end-to-end suite passed on {} only",
                    facts::TESTED_VERSIONS.join(", ")
                )
            };
            CheckLine::pass(
                subject,
                format!("{} ({}){untested}", f.stdout.trim(), path.display()),
            )
        }
        Ok(f) => CheckLine::fail(
            subject,
            format!("`{} --version` failed: {}", path.display(), f.complaint()),
            "reinstall Claude Code or point claude.binary at a working one",
        ),
        Err(e) => CheckLine::fail(
            subject,
            e.to_string(),
            "point claude.binary at a working Claude Code",
        ),
    }
}

/// Per account: home, credentials (present, 0600, not expired), onboarding,
/// trust of every pool and project folder.
pub fn check_account(config: &Config, account: &AccountConfig, now: SystemTime) -> Vec<CheckLine> {
    let who = format!("account {}", account.name);
    let home = &account.home;
    let login_hint = format!("log in with `claude-failover login {}`", account.name);
    if !home.is_dir() {
        return vec![CheckLine::fail(
            format!("{who}: home"),
            format!("{} does not exist or is not a folder", home.display()),
            format!("mkdir -p {} and log in there: {login_hint}", home.display()),
        )];
    }
    let mut lines = vec![CheckLine::pass(
        format!("{who}: home"),
        home.display().to_string(),
    )];

    let subject = format!("{who}: credentials");
    match Credentials::read(home) {
        Err(e @ CredentialsError::Missing { .. }) => {
            lines.push(CheckLine::fail(subject, e.to_string(), login_hint.clone()))
        }
        Err(e) => lines.push(CheckLine::fail(subject, e.to_string(), login_hint.clone())),
        Ok(c) => {
            let path = Credentials::path(home);
            if c.too_open() {
                lines.push(CheckLine::fail(
                    format!("{who}: credentials mode"),
                    format!(
                        "{} has mode {:04o}, readable by others",
                        path.display(),
                        c.mode
                    ),
                    format!("chmod 600 {}", path.display()),
                ));
            } else {
                lines.push(CheckLine::pass(
                    format!("{who}: credentials mode"),
                    format!("{:04o}", c.mode),
                ));
            }
            if c.expired(now) {
                lines.push(CheckLine::fail(
                    format!("{who}: token"),
                    format!("access token expired at {}", describe_ms(c.expires_at_ms)),
                    format!(
                        "Claude Code refreshes it when it runs; if it stays expired, {login_hint}"
                    ),
                ));
            } else {
                lines.push(CheckLine::pass(
                    format!("{who}: token"),
                    format!("valid until {}", describe_ms(c.expires_at_ms)),
                ));
            }
        }
    }

    // Live mode: a home holds only its login; the seat holds the rest.
    if config.live_seat().is_some() {
        return lines;
    }
    lines.extend(check_claude_json(config, &who, home, &login_hint));
    lines
}

/// Onboarding done and every folder trusted in the `.claude.json` of a
/// config dir (an account's home, or the seat).
fn check_claude_json(config: &Config, who: &str, home: &Path, login_hint: &str) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    match ClaudeJson::read(home) {
        Err(e) => lines.push(CheckLine::fail(
            format!("{who}: onboarding"),
            e,
            format!(
                "repair or remove {}, then {login_hint}",
                ClaudeJson::path(home).display()
            ),
        )),
        Ok(cj) => {
            if cj.onboarding_done {
                lines.push(CheckLine::pass(format!("{who}: onboarding"), "done"));
            } else {
                lines.push(CheckLine::fail(
                    format!("{who}: onboarding"),
                    format!(
                        "{} is not true in {}",
                        facts::KEY_ONBOARDING_DONE,
                        ClaudeJson::path(home).display()
                    ),
                    format!(
                        "run `CLAUDE_CONFIG_DIR={} claude` once and finish the first-run screens",
                        home.display()
                    ),
                ));
            }
            for (what, folder) in folders_to_trust(config) {
                let subject = format!("{who}: trust {what}");
                if cj.trusts(&folder) {
                    lines.push(CheckLine::pass(subject, folder.display().to_string()));
                } else {
                    lines.push(CheckLine::fail(
                        subject,
                        format!("{} is not trusted", folder.display()),
                        format!(
                            "run `claude-failover setup`, or start `CLAUDE_CONFIG_DIR={} claude` in that folder and accept the trust dialog",
                            home.display()
                        ),
                    ));
                }
            }
        }
    }
    lines
}

/// Live mode: the seat exists, holds onboarding, trust and our hooks, and a
/// login that is the active account's (the daemon keeps them equal).
pub fn check_seat(config: &Config, binary: &str) -> Vec<CheckLine> {
    let Some(seat) = config.live_seat() else {
        return Vec::new();
    };
    let who = "seat";
    let hint = "run `claude-failover setup`";
    if !seat.is_dir() {
        return vec![CheckLine::fail(
            format!("{who}: folder"),
            format!("{} does not exist", seat.display()),
            hint,
        )];
    }
    let mut lines = vec![CheckLine::pass(
        format!("{who}: folder"),
        seat.display().to_string(),
    )];
    lines.extend(crate::commands::setup::hooks_installed(config, binary));
    lines.extend(check_claude_json(config, who, seat, hint));
    let active = crate::daemon::switcher::load_active_name(config);
    let subject = format!("{who}: credentials");
    let home = config.account(&active).map(|a| a.home.clone());
    match (
        crate::claude::seat::read(seat),
        home.as_deref().map(crate::claude::seat::read),
    ) {
        (Ok(Some(s)), Some(Ok(Some(h)))) if s.same(&h) => lines.push(CheckLine::pass(
            subject,
            format!("the active account {active}'s login"),
        )),
        (Ok(Some(s)), Some(Ok(Some(h)))) => lines.push(CheckLine::fail(
            subject,
            format!(
                "the seat's login is not {active}'s ({}); the running daemon syncs them within seconds (the newer wins)",
                if s.expires_at >= h.expires_at { "the seat's is newer" } else { "the home's is newer" }
            ),
            "start the daemon, or run setup with the daemon stopped",
        )),
        (Ok(None), _) => lines.push(CheckLine::fail(
            subject,
            format!("no login in {}", seat.display()),
            hint,
        )),
        (Err(e), _) => lines.push(CheckLine::fail(subject, e.to_string(), hint)),
        (_, _) => lines.push(CheckLine::fail(
            subject,
            format!("the active account {active} has no login to compare with"),
            format!("claude-failover login {active}"),
        )),
    }
    lines
}

/// Every folder a session may be started in: pool folders and project folders.
pub fn folders_to_trust(config: &Config) -> Vec<(String, PathBuf)> {
    let pools = config
        .pools
        .iter()
        .map(|p| (format!("pool {}", p.name), p.cwd.clone()));
    let projects = config
        .projects
        .iter()
        .map(|p| (format!("project {}", p.name), p.path.clone()));
    pools.chain(projects).collect()
}

fn describe_ms(ms: Option<u64>) -> String {
    match ms {
        None => "an unknown time".to_string(),
        Some(ms) => crate::sys::time::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
    }
}
