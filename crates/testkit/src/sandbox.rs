//! A throw-away world for tests and the demo: account homes with made-up
//! OAuth credentials, onboarding and folder trust pre-seeded, a shared root
//! linked into every home, pool and project folders, a state dir, and a
//! config file that points Claude Code at a local API stand-in.
//!
//! Nothing here touches anything outside `root`.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use serde_json::json;

use claude_failover::claude::facts;
use claude_failover::claude::settings;
use claude_failover::store::atomic_file;

/// One made-up account.
#[derive(Debug, Clone)]
pub struct SandboxAccount {
    pub name: String,
    pub home: PathBuf,
    /// The OAuth access token Claude Code will send as `Authorization: Bearer`.
    pub token: String,
}

/// A pool in the sandbox config.
#[derive(Debug, Clone)]
pub struct SandboxPool {
    pub name: String,
    pub prefix: String,
    pub start_index: u32,
    pub min: u32,
    pub max: u32,
    /// `pools[].model` (`None`: not written).
    pub model: Option<String>,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub accounts: Vec<String>,
    pub pools: Vec<SandboxPool>,
    /// (project name, pool name)
    pub projects: Vec<(String, String)>,
    /// The claude binary (a path or a name on PATH).
    pub claude_binary: String,
    /// Extra arguments for every launch.
    pub claude_args: Vec<String>,
    /// The API the sessions talk to (the stand-in's base URL).
    pub api_base_url: String,
    /// The private tmux server (`tmux -L`).
    pub tmux_socket: String,
    pub http_listen: String,
    /// YAML appended verbatim at the end of the config (top-level sections
    /// that the defaults don't cover, e.g. `lifecycle:`).
    pub extra_yaml: String,
    /// Lines added inside the `quota:` section (indented by two spaces),
    /// e.g. `  five_hour_threshold: 50\n`.
    pub quota_yaml: String,
    /// `swap.mode`: `restart` (the default here, what most tests were
    /// written for) or `live` (sessions under the sandbox's seat).
    pub swap_mode: String,
    /// `log.format`: `json` here (every line of every sandboxed daemon's
    /// log is checked to parse, see `world::Harness`), `text` when asked.
    pub log_format: String,
    /// Appended to every account's token: a second machine's own login of
    /// the same accounts (the stand-in takes it with `add_token`).
    pub token_tag: String,
    /// Lines added inside the `http:` section (indented by two spaces),
    /// e.g. `  token_file: /x\n`.
    pub http_yaml: String,
}

impl Default for SandboxSpec {
    fn default() -> Self {
        SandboxSpec {
            accounts: vec!["alpha".into(), "beta".into()],
            pools: vec![SandboxPool {
                name: "auto".into(),
                prefix: "ccl-auto-".into(),
                start_index: 11,
                min: 2,
                max: 4,
                model: None,
            }],
            projects: vec![("demo".into(), "auto".into())],
            claude_binary: "claude".into(),
            claude_args: vec![],
            api_base_url: "http://127.0.0.1:9".into(),
            tmux_socket: "claude-failover-sandbox".into(),
            http_listen: "127.0.0.1:0".into(),
            extra_yaml: String::new(),
            quota_yaml: String::new(),
            swap_mode: "restart".into(),
            log_format: "json".into(),
            token_tag: String::new(),
            http_yaml: String::new(),
        }
    }
}

/// A built sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub root: PathBuf,
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    pub shared_root: PathBuf,
    /// `swap.seat` (live mode; created by `setup`).
    pub seat: PathBuf,
    pub accounts: Vec<SandboxAccount>,
    /// (pool name, folder)
    pub pool_dirs: Vec<(String, PathBuf)>,
    /// (project name, folder)
    pub project_dirs: Vec<(String, PathBuf)>,
    /// The daemon's HTTP address (`http.listen`).
    pub http_listen: String,
}

impl Sandbox {
    /// Builds the sandbox under `root` (created if missing).
    pub fn create(root: &Path, spec: &SandboxSpec) -> std::io::Result<Sandbox> {
        std::fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let state_dir = root.join("state");
        let shared_root = root.join("shared");
        std::fs::create_dir_all(&state_dir)?;
        for entry in facts::REQUIRED_SHARED {
            std::fs::create_dir_all(shared_root.join(entry))?;
        }
        let pool_dirs: Vec<(String, PathBuf)> = spec
            .pools
            .iter()
            .map(|p| (p.name.clone(), root.join("pools").join(&p.name)))
            .collect();
        let project_dirs: Vec<(String, PathBuf)> = spec
            .projects
            .iter()
            .map(|(name, _)| (name.clone(), root.join("projects").join(name)))
            .collect();
        for (_, dir) in pool_dirs.iter().chain(&project_dirs) {
            std::fs::create_dir_all(dir)?;
        }
        for (_, dir) in &project_dirs {
            for q in ["inbox", "active", "done", "failed", "archive"] {
                std::fs::create_dir_all(dir.join(".agent-queue").join(q))?;
            }
        }
        let trusted: Vec<&PathBuf> = pool_dirs
            .iter()
            .chain(&project_dirs)
            .map(|(_, d)| d)
            .collect();
        let mut accounts = Vec::new();
        for name in &spec.accounts {
            let home = root.join("accounts").join(name);
            std::fs::create_dir_all(&home)?;
            let token = format!("{}{}", token_for(name), spec.token_tag);
            write_credentials(&home, &token, 4_102_444_800_000)?;
            write_claude_json(&home, true, &trusted)?;
            for entry in facts::REQUIRED_SHARED {
                let link = home.join(entry);
                if std::fs::symlink_metadata(&link).is_err() {
                    symlink(shared_root.join(entry), &link)?;
                }
            }
            accounts.push(SandboxAccount {
                name: name.clone(),
                home,
                token,
            });
        }
        let mut spec = spec.clone();
        if let Some(host) = spec.http_listen.strip_suffix(":0") {
            // The config refuses port 0: pick a free port now.
            let port = std::net::TcpListener::bind((host, 0))?.local_addr()?.port();
            spec.http_listen = format!("{host}:{port}");
        }
        let seat = root.join("seat");
        let sandbox = Sandbox {
            http_listen: spec.http_listen.clone(),
            config_path: root.join("config.yaml"),
            root,
            state_dir,
            shared_root,
            seat,
            accounts,
            pool_dirs,
            project_dirs,
        };
        atomic_file::write(&sandbox.config_path, sandbox.config_yaml(&spec).as_bytes())?;
        Ok(sandbox)
    }

    /// Replaces the first `from` in the config file with `to`. Panics when
    /// the file holds no `from`: an edit that no longer applies (the
    /// sandbox's config text changed) fails its test rather than leaving it
    /// to run on the defaults it meant to change.
    pub fn edit_config(&self, from: &str, to: &str) {
        let path = &self.config_path;
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        assert!(
            text.contains(from),
            "the config edit {from:?} → {to:?} does not apply to {}:\n{text}",
            path.display()
        );
        atomic_file::write(path, text.replacen(from, to, 1).as_bytes())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Adds a webhook notifier for `url` to the config file.
    pub fn notify_webhook(&self, url: &str) {
        self.edit_config(
            "http:\n",
            &format!("notify:\n  webhook: {{ url: \"{url}\" }}\nhttp:\n"),
        );
    }

    /// The config file text for this sandbox.
    pub fn config_yaml(&self, spec: &SandboxSpec) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut y = String::new();
        y.push_str(&format!(
            "state_dir: {}\n",
            q(&self.state_dir.to_string_lossy())
        ));
        y.push_str("claude:\n");
        y.push_str(&format!("  binary: {}\n", q(&spec.claude_binary)));
        let args: Vec<String> = spec.claude_args.iter().map(|a| q(a)).collect();
        y.push_str(&format!("  args: [{}]\n", args.join(", ")));
        y.push_str("  env:\n");
        y.push_str(&format!(
            "    {}: {}\n",
            facts::ENV_BASE_URL,
            q(&spec.api_base_url)
        ));
        for (k, v) in facts::ENV_OFFLINE {
            y.push_str(&format!("    {k}: {}\n", q(v)));
        }
        y.push_str("  startup_timeout: 60s\n");
        y.push_str(&format!("tmux:\n  socket: {}\n", q(&spec.tmux_socket)));
        y.push_str(&format!(
            "shared_root: {}\n",
            q(&self.shared_root.to_string_lossy())
        ));
        y.push_str("accounts:\n");
        for a in &self.accounts {
            y.push_str(&format!(
                "  - name: {}\n    home: {}\n",
                a.name,
                q(&a.home.to_string_lossy())
            ));
        }
        if spec.pools.is_empty() {
            y.push_str("pools: []\n");
        } else {
            y.push_str("pools:\n");
        }
        for (p, (_, dir)) in spec.pools.iter().zip(&self.pool_dirs) {
            y.push_str(&format!(
                "  - name: {}\n    prefix: {}\n    start_index: {}\n    min: {}\n    max: {}\n    cwd: {}\n",
                p.name,
                q(&p.prefix),
                p.start_index,
                p.min,
                p.max,
                q(&dir.to_string_lossy())
            ));
            if let Some(m) = &p.model {
                y.push_str(&format!("    model: {}\n", q(m)));
            }
        }
        if spec.projects.is_empty() {
            y.push_str("projects: []\n");
        } else {
            y.push_str("projects:\n");
        }
        for ((name, pool), (_, dir)) in spec.projects.iter().zip(&self.project_dirs) {
            y.push_str(&format!(
                "  - name: {name}\n    path: {}\n    pool: {pool}\n",
                q(&dir.to_string_lossy())
            ));
        }
        y.push_str(&format!(
            "quota:\n  usage_url: {}\n",
            q(&format!("{}/api/oauth/usage", spec.api_base_url))
        ));
        y.push_str(&spec.quota_yaml);
        y.push_str(&format!("http:\n  listen: {}\n", q(&spec.http_listen)));
        y.push_str(&spec.http_yaml);
        y.push_str(&format!("log:\n  format: {}\n", spec.log_format));
        // `swap.mode` and `swap.seat`, inside a `swap:` section the extra
        // YAML may already open.
        let swap = format!(
            "  mode: {}\n  seat: {}\n",
            spec.swap_mode,
            q(&self.seat.to_string_lossy())
        );
        match spec
            .extra_yaml
            .find("swap:\n")
            .filter(|&i| i == 0 || spec.extra_yaml.as_bytes()[i - 1] == b'\n')
        {
            Some(i) => {
                let at = i + "swap:\n".len();
                y.push_str(&spec.extra_yaml[..at]);
                y.push_str(&swap);
                y.push_str(&spec.extra_yaml[at..]);
            }
            None => {
                y.push_str(&spec.extra_yaml);
                y.push_str("swap:\n");
                y.push_str(&swap);
            }
        }
        y
    }

    pub fn account(&self, name: &str) -> Option<&SandboxAccount> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// (name, token) of every account, for the API stand-in.
    pub fn tokens(&self) -> Vec<(String, String)> {
        self.accounts
            .iter()
            .map(|a| (a.name.clone(), a.token.clone()))
            .collect()
    }

    /// Installs our hook command (`BINARY hook`) and status line
    /// (`BINARY statusline`) in every account's `settings.json`, as `setup` does.
    pub fn install_hooks(&self, binary: &str) -> std::io::Result<()> {
        for a in &self.accounts {
            let path = a.home.join(facts::SETTINGS_JSON);
            let current = match std::fs::read(&path) {
                Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
                Err(e) => return Err(e),
            };
            let (next, _) = settings::with_hooks(&current, &settings::hook_command(binary))
                .and_then(|(v, _)| {
                    settings::with_statusline(&v, &settings::statusline_command(binary))
                })
                .map_err(std::io::Error::other)?;
            let bytes = serde_json::to_vec_pretty(&next).map_err(std::io::Error::other)?;
            atomic_file::write(&path, &bytes)?;
        }
        Ok(())
    }

    /// The environment a Claude Code process needs to run in this sandbox
    /// under `account` (used by tests that start claude themselves).
    pub fn claude_env(&self, account: &str, api_base_url: &str) -> Vec<(String, String)> {
        let mut env = vec![(facts::ENV_BASE_URL.to_string(), api_base_url.to_string())];
        env.extend(
            facts::ENV_OFFLINE
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        if let Some(a) = self.account(account) {
            env.push((
                facts::ENV_CONFIG_DIR.to_string(),
                a.home.to_string_lossy().into_owned(),
            ));
        }
        env.push((
            facts::ENV_STATE_DIR.to_string(),
            self.state_dir.to_string_lossy().into_owned(),
        ));
        env
    }
}

/// The made-up OAuth access token of sandbox account `name`.
pub fn token_for(name: &str) -> String {
    format!("sk-ant-oat01-sandbox-{name}")
}

/// Writes `.credentials.json` (mode 0600) in the shape Claude Code uses.
pub fn write_credentials(home: &Path, token: &str, expires_at_ms: u64) -> std::io::Result<()> {
    let refresh = token.replace("-oat01-", "-ort01-");
    let body = json!({
        "claudeAiOauth": {
            "accessToken": token,
            "refreshToken": refresh,
            "expiresAt": expires_at_ms,
            "scopes": ["user:inference", "user:profile", "user:sessions:claude_code"],
            "subscriptionType": "max",
            "rateLimitTier": "default_claude_max_20x"
        }
    });
    let bytes = serde_json::to_vec_pretty(&body).map_err(std::io::Error::other)?;
    atomic_file::write_with_mode(&home.join(facts::CREDENTIALS_FILE), &bytes, 0o600)
}

/// Writes `.claude.json` with onboarding done (or not) and `trusted` folders.
pub fn write_claude_json(
    home: &Path,
    onboarding_done: bool,
    trusted: &[&PathBuf],
) -> std::io::Result<()> {
    let mut projects = serde_json::Map::new();
    for dir in trusted {
        projects.insert(
            dir.to_string_lossy().into_owned(),
            json!({ facts::KEY_TRUST_ACCEPTED: true }),
        );
    }
    let mut body = serde_json::Map::new();
    if onboarding_done {
        body.insert(facts::KEY_ONBOARDING_DONE.into(), json!(true));
        body.insert(
            facts::KEY_ONBOARDING_VERSION.into(),
            json!(facts::PINNED_VERSION),
        );
    }
    body.insert(
        facts::KEY_PROJECTS.into(),
        serde_json::Value::Object(projects),
    );
    let bytes = serde_json::to_vec_pretty(&body).map_err(std::io::Error::other)?;
    atomic_file::write(&home.join(facts::CLAUDE_JSON), &bytes)
}
