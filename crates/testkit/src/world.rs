//! The integration tests' world (it was `tests/support/mod.rs`): a private
//! tmux server and a temp folder per test, bounded waits, the real claude
//! binary for end-to-end tests, and on failure a dump of everything needed to
//! diagnose it (daemon logs, state files, `capture-pane` of every session).
//! The tests reach it through their `tests/support/mod.rs`, which re-exports
//! it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use claude_failover::sys::tmux::Tmux;

use crate::sandbox::{self, Sandbox, SandboxSpec};
use crate::standin::{StandIn, StandInAccount, StandInOptions};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The binary under test, `claude-failover` (see [`crate::product`]: cargo
/// builds it next to the test executables before any test runs). Panics,
/// saying why, when it is not there.
pub fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| match crate::product::binary() {
        Ok(path) => path.to_string_lossy().into_owned(),
        Err(e) => panic!("the binary under test: {e}"),
    })
}

/// The repository's root (this crate is `crates/testkit` in it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where `scripts/test.sh` installs the pinned Claude Code.
fn cached_claude() -> PathBuf {
    repo_root().join(crate::demo::CACHED_CLAUDE)
}

/// The real Claude Code for end-to-end tests, or `None` when the
/// end-to-end suite is off (then the test returns early, saying so).
/// With `CLAUDE_FAILOVER_E2E=1` a missing binary is a failure, never a skip.
pub fn e2e_claude() -> Option<PathBuf> {
    let enabled = std::env::var("CLAUDE_FAILOVER_E2E")
        .map(|v| v == "1")
        .unwrap_or(false);
    if !enabled {
        eprintln!("end-to-end suite off: set CLAUDE_FAILOVER_E2E=1 (scripts/test.sh does)");
        return None;
    }
    let bin = std::env::var_os("CLAUDE_FAILOVER_CLAUDE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(cached_claude);
    assert!(
        bin.is_file(),
        "CLAUDE_FAILOVER_E2E=1 but no claude binary at {} (run scripts/test.sh, or set CLAUDE_FAILOVER_CLAUDE_BIN)",
        bin.display()
    );
    Some(bin)
}

/// Polls `probe` every 50 ms until it returns `Some`, panicking with `what`
/// after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One test's world: a temp folder and a private tmux server, torn down at
/// drop, with a diagnostic dump when the test is failing.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub socket: String,
    pub tmux: Tmux,
    logs: Vec<PathBuf>,
    state_dirs: Vec<PathBuf>,
    children: Vec<Child>,
    /// The daemons run with `log.format: json`: their logs are checked at teardown.
    pub json_logs: bool,
}

impl Harness {
    pub fn new(name: &str) -> Harness {
        let socket = format!(
            "cf-test-{}-{}-{}",
            name,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let tmux = Tmux::new(Some(socket.clone()), Duration::from_secs(10));
        Harness {
            dir: tempfile::Builder::new()
                .prefix("cf-test-")
                .tempdir()
                .expect("temp folder"),
            socket,
            tmux,
            logs: Vec::new(),
            state_dirs: Vec::new(),
            children: Vec::new(),
            json_logs: false,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Dumped on failure.
    pub fn watch_log(&mut self, path: PathBuf) {
        self.logs.push(path);
    }

    /// Listed and dumped on failure.
    pub fn watch_state_dir(&mut self, path: PathBuf) {
        self.state_dirs.push(path);
    }

    /// Starts the binary under test with `args`, output into a log file that
    /// is dumped on failure; killed at teardown.
    pub fn spawn_bin(&mut self, args: &[&str], env: &[(&str, &str)]) -> u32 {
        let log = self
            .path()
            .join(format!("daemon-{}.log", self.children.len()));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(bin());
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start claude-failover");
        let pid = child.id();
        self.children.push(child);
        self.watch_log(log);
        pid
    }

    /// Kills every process it spawned (the daemon goes away at once).
    pub fn kill_children(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `Some(exit code)` once the spawned child `pid` has exited.
    pub fn try_exit_status(&mut self, pid: u32) -> Option<Option<i32>> {
        let child = self.children.iter_mut().find(|c| c.id() == pid)?;
        child.try_wait().ok().flatten().map(|s| s.code())
    }

    fn dump(&self) {
        eprintln!("==== diagnostics (tmux -L {}) ====", self.socket);
        for log in &self.logs {
            eprintln!("---- {} ----", log.display());
            eprintln!(
                "{}",
                std::fs::read_to_string(log).unwrap_or_else(|e| format!("(unreadable: {e})"))
            );
        }
        for dir in &self.state_dirs {
            dump_tree(dir, 0);
        }
        match self.tmux.list_sessions() {
            Ok(sessions) => {
                for s in sessions {
                    eprintln!(
                        "---- capture-pane {} (pid {:?}, dead {}) ----",
                        s.name, s.pane_pid, s.pane_dead
                    );
                    eprintln!(
                        "{}",
                        self.tmux
                            .capture_pane(&s.name, 200)
                            .unwrap_or_else(|e| e.to_string())
                    );
                }
            }
            Err(e) => eprintln!("tmux list-sessions: {e}"),
        }
    }
}

fn dump_tree(dir: &Path, depth: usize) {
    if depth > 4 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            eprintln!("---- {}/ ----", p.display());
            dump_tree(&p, depth + 1);
        } else {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let cut: String = text.chars().take(4000).collect();
            eprintln!("---- {} ----\n{cut}", p.display());
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.tmux.kill_server();
        // A `tmux new-session` the daemon started just before it was killed
        // may bring the server back a moment later: kill it again.
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.tmux.kill_server();
        // Checked once everything is down (a panic here must leave nothing running).
        if !std::thread::panicking() && self.json_logs {
            // `log.format: json`: every line every daemon wrote is one
            // JSON object with the four fields (issue 16).
            for log in self.logs.iter().filter(|l| {
                l.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("daemon-"))
            }) {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let v: Result<serde_json::Value, _> = serde_json::from_str(line);
                    let ok = v.as_ref().is_ok_and(|v| {
                        ["ts", "level", "target", "msg"]
                            .iter()
                            .all(|k| v[*k].is_string())
                    });
                    if !ok {
                        self.dump();
                        panic!(
                            "{}: a line that is not a JSON log record: {line:?}",
                            log.display()
                        );
                    }
                }
            }
        }
    }
}

/// Starts Claude Code by hand (not the daemon's launch) in tmux session
/// `name` of `h`'s server, under `account`'s home, against the stand-in at
/// `api_url`, in the sandbox's first pool folder.
pub fn launch_by_hand(
    h: &Harness,
    sb: &Sandbox,
    api_url: &str,
    claude: &Path,
    name: &str,
    account: &str,
) {
    let mut env = sb.claude_env(account, api_url);
    env.push((
        claude_failover::claude::facts::ENV_SESSION.into(),
        name.into(),
    ));
    h.tmux
        .new_session(&claude_failover::sys::tmux::Launch {
            name: name.into(),
            cwd: sb.pool_dirs[0].1.clone(),
            width: 200,
            height: 50,
            env,
            argv: vec![claude.to_string_lossy().into_owned()],
        })
        .expect("start Claude Code in tmux");
}

/// The `n`th daemon's log as text, one message per line: a JSON log
/// (`log.format: json`) is read back to its messages (`[LEVEL target] msg`),
/// so tests look for what was said, not for how it was escaped.
pub fn daemon_log(h: &Harness, n: usize) -> String {
    let text =
        std::fs::read_to_string(h.path().join(format!("daemon-{n}.log"))).unwrap_or_default();
    text.lines()
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) if v["msg"].is_string() => format!(
                "[{} {}] {}",
                v["level"].as_str().unwrap_or(""),
                v["target"].as_str().unwrap_or(""),
                v["msg"].as_str().unwrap_or("")
            ),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A sandbox with the real Claude Code, the API stand-in and our hooks
/// installed: everything a daemon test needs.
pub struct World {
    pub h: Harness,
    pub sb: Sandbox,
    /// Shared by the worlds of one fleet test ([`World::join`]).
    pub api: std::sync::Arc<StandIn>,
    pub claude: PathBuf,
}

impl World {
    /// `None` when the end-to-end suite is off. `tweak` adjusts the sandbox
    /// spec (pools, extra YAML) before it is built.
    pub fn new(name: &str, tweak: impl FnOnce(&mut SandboxSpec)) -> Option<World> {
        World::build(name, tweak, None)
    }

    /// Another machine of `first`'s fleet: its own sandbox, tmux server,
    /// state folder, seat and logins (tokens tagged with `name`), the same
    /// stand-in accounts.
    pub fn join(first: &World, name: &str, tweak: impl FnOnce(&mut SandboxSpec)) -> Option<World> {
        World::build(name, tweak, Some(first.api.clone()))
    }

    fn build(
        name: &str,
        tweak: impl FnOnce(&mut SandboxSpec),
        api: Option<std::sync::Arc<StandIn>>,
    ) -> Option<World> {
        let claude = e2e_claude()?;
        let mut h = Harness::new(name);
        let mut spec = SandboxSpec {
            claude_binary: claude.to_string_lossy().into_owned(),
            tmux_socket: h.socket.clone(),
            ..SandboxSpec::default()
        };
        tweak(&mut spec);
        let api = match api {
            Some(api) => {
                if spec.token_tag.is_empty() {
                    spec.token_tag = format!("-{name}");
                }
                for n in &spec.accounts {
                    api.add_token(n, &format!("{}{}", sandbox::token_for(n), spec.token_tag))
                        .expect("the joined stand-in has the account");
                }
                api
            }
            None => std::sync::Arc::new(
                StandIn::start(StandInOptions {
                    accounts: spec
                        .accounts
                        .iter()
                        .map(|n| StandInAccount::new(n.clone(), sandbox::token_for(n)))
                        .collect(),
                    ..StandInOptions::default()
                })
                .expect("start the API stand-in"),
            ),
        };
        spec.api_base_url = api.base_url();
        let sb = Sandbox::create(&h.path().join("sandbox"), &spec).expect("build the sandbox");
        if spec.swap_mode == "live" {
            // The seat is what `setup` makes of it, as an operator's would be.
            let out = std::process::Command::new(bin())
                .args(["--config", &sb.config_path.to_string_lossy(), "setup"])
                .output()
                .expect("run setup");
            assert!(
                out.status.success(),
                "setup failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            sb.install_hooks(bin()).expect("install hooks");
        }
        h.watch_state_dir(sb.state_dir.clone());
        h.json_logs = spec.log_format == "json";
        Some(World { h, sb, api, claude })
    }

    /// Starts `claude-failover run` on this sandbox.
    pub fn start_daemon(&mut self, env: &[(&str, &str)]) -> u32 {
        let config = self.sb.config_path.to_string_lossy().into_owned();
        self.h.spawn_bin(&["--config", &config, "run"], env)
    }

    /// The control plane's bearer token: the one the daemon generated in
    /// the state folder (`http.token_file` unset), read once it exists.
    pub fn token(&self) -> String {
        let path = self
            .sb
            .state_dir
            .join(claude_failover::config::DEFAULT_TOKEN_FILE);
        wait_for(Duration::from_secs(30), "the daemon's token file", || {
            claude_failover::daemon::http::read_token(&path).ok()
        })
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        ureq::get(&format!("http://{}/status", self.sb.http_listen))
            .timeout(Duration::from_secs(2))
            .call()
            .ok()?
            .into_json()
            .ok()
    }

    /// The session's entry in `/status`.
    pub fn session(&self, name: &str) -> Option<serde_json::Value> {
        let status = self.status()?;
        status["sessions"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
    }

    /// Waits until `name` is in `state` in `/status`; returns its entry.
    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> serde_json::Value {
        wait_for(timeout, &format!("{name} to be {state}"), || {
            self.session(name).filter(|s| s["state"] == state)
        })
    }

    /// Types a prompt the way the dispatcher does: bracketed paste, pause, Enter.
    pub fn type_prompt(&self, session: &str, text: &str) {
        // SessionStart fires before the input box takes text: wait for it.
        wait_for(
            Duration::from_secs(30),
            &format!("{session}'s input prompt"),
            || {
                self.h
                    .tmux
                    .capture_pane(session, 0)
                    .ok()
                    .filter(|s| claude_failover::claude::facts::input_box_drawn(s))
                    .map(|_| ())
            },
        );
        self.h.tmux.paste(session, text).expect("paste");
        std::thread::sleep(Duration::from_millis(300));
        self.h.tmux.send_key(session, "Enter").expect("Enter");
    }

    /// Every managed session in `/status` next to the account its process
    /// really runs under (its `CLAUDE_CONFIG_DIR`, by account home; `None`
    /// when no process runs).
    pub fn recorded_and_real(&self) -> Vec<(String, Option<String>, Option<String>)> {
        let status = self.status().unwrap_or_default();
        let sessions = status["sessions"].as_array().cloned().unwrap_or_default();
        sessions
            .iter()
            .map(|s| {
                let name = s["name"].as_str().unwrap_or("").to_string();
                let real = self.pane_pid(&name).and_then(|pid| {
                    let dir = claude_failover::daemon::session_watcher::process_env(
                        pid,
                        "CLAUDE_CONFIG_DIR",
                    )?;
                    self.sb
                        .accounts
                        .iter()
                        .find(|a| a.home == Path::new(&dir))
                        .map(|a| a.name.clone())
                });
                (name, s["account"].as_str().map(String::from), real)
            })
            .collect()
    }

    /// Waits until each of `names` is `state` on `account` in `/status`.
    pub fn wait_all(&self, names: &[String], account: &str, state: &str, timeout: Duration) {
        wait_for(timeout, &format!("all {state} on {account}"), || {
            let s = self.status()?;
            let sessions = s["sessions"].as_array()?;
            names
                .iter()
                .all(|n| {
                    sessions.iter().any(|x| {
                        x["name"] == n.as_str() && x["account"] == account && x["state"] == state
                    })
                })
                .then_some(())
        });
    }

    /// `POST /swap?to=TO&reason=REASON` with the token, waited for: the
    /// swap's result (its JSON), whatever its status.
    pub fn swap_to(&self, to: &str, reason: &str) -> serde_json::Value {
        let url = format!(
            "http://{}/swap?to={to}&reason={}",
            self.sb.http_listen,
            reason.replace(' ', "+")
        );
        match ureq::post(&url)
            .set("Authorization", &format!("Bearer {}", self.token()))
            .timeout(Duration::from_secs(240))
            .call()
        {
            Ok(r) => r.into_json().expect("a JSON answer"),
            Err(ureq::Error::Status(_, r)) => r.into_json().expect("a JSON answer"),
            Err(e) => panic!("POST /swap: {e}"),
        }
    }

    /// Types a prompt into each of `names` until the stand-in sees it (a
    /// TUI that has just started may not take input yet): each then has a
    /// conversation to resume.
    pub fn give_each_a_conversation(&self, names: &[String], tag: &str) {
        for name in names {
            let p = format!("{tag}: hello from {name}");
            let answered = (0..5).any(|_| {
                self.type_prompt(name, &p);
                self.api
                    .wait_for_request(|r| r.prompt == p, Duration::from_secs(10))
                    .is_some()
            });
            assert!(answered, "{name} never took its prompt");
        }
    }

    pub fn pane_pid(&self, name: &str) -> Option<u32> {
        self.h
            .tmux
            .list_sessions()
            .ok()?
            .into_iter()
            .find(|s| s.name == name)?
            .pane_pid
    }
}

/// The daemon's resident memory, from /proc.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What the attack measured.
pub struct Report {
    pub idle: usize,
    pub line_bytes: u64,
    pub peak_rss_kb: u64,
    pub latencies: Vec<Duration>,
}

impl Report {
    pub fn p(&self, pct: usize) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l.get((l.len() * pct / 100).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }
}

/// `idle` idle and half-sent connections plus one endless header line, with
/// `/status` asked every 20 ms meanwhile; every `/status` must answer 200.
pub fn attack(addr: &str, pid: u32, idle: usize) -> Report {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    use std::io::Write;
    let a = addr.to_string();
    let liner = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(&a).expect("connect");
        let _ = c.write_all(b"GET /status HTTP/1.1\r\nX-Endless: ");
        let chunk = vec![b'a'; 1 << 20];
        let mut sent = 0u64;
        while sent < 1 << 30 {
            match c.write(&chunk) {
                Ok(n) => sent += n as u64,
                Err(_) => break,
            }
        }
        sent
    });
    let s = stop.clone();
    let a = addr.to_string();
    let opener = std::thread::spawn(move || {
        let mut held = Vec::new();
        for i in 0..idle {
            if s.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            if let Ok(mut c) =
                std::net::TcpStream::connect_timeout(&a.parse().unwrap(), Duration::from_secs(5))
            {
                if i % 2 == 0 {
                    let _ = c.write_all(b"GET /status HTTP/1.1\r\nHost: x");
                }
                held.push(c);
            }
        }
        held
    });
    let mut latencies = Vec::new();
    let mut peak = 0;
    let start = Instant::now();
    while !opener.is_finished() || latencies.len() < 100 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "attack too slow"
        );
        let t = Instant::now();
        let r = ureq::get(&format!("http://{addr}/status"))
            .timeout(Duration::from_secs(5))
            .call();
        assert!(
            r.as_ref().is_ok_and(|r| r.status() == 200),
            "/status during the attack: {:?}",
            r.map(|r| r.status())
        );
        latencies.push(t.elapsed());
        peak = peak.max(rss_kb(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let held = opener.join().unwrap();
    let line_bytes = liner.join().unwrap();
    peak = peak.max(rss_kb(pid));
    Report {
        idle: held.len(),
        line_bytes,
        peak_rss_kb: peak,
        latencies,
    }
}

/// (path, body) of every request a receiver got.
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A local HTTP receiver (a webhook or Telegram stand-in) recording every
/// request body by path; returns its base URL.
pub fn receiver() -> (String, Received) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", server.server_addr().to_ip().unwrap());
    let got = Received::default();
    let g = got.clone();
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            let mut body = String::new();
            let _ = req.as_reader().read_to_string(&mut body);
            g.lock().unwrap().push((req.url().to_string(), body));
            let _ = req.respond(tiny_http::Response::from_string("{\"ok\":true}"));
        }
    });
    (addr, got)
}

// Tasks and settings as the tests handle them.

/// `<project>/.agent-queue/<folder>`.
pub fn queue_dir(project: &Path, folder: &str) -> PathBuf {
    project.join(".agent-queue").join(folder)
}

/// Writes a task into the project's inbox, as `claude-failover enqueue` does.
pub fn enqueue_task(project: &Path, name: &str, text: &str) {
    claude_failover::store::queue::enqueue(
        project,
        None,
        text.as_bytes(),
        Some(name),
        std::time::SystemTime::now(),
    )
    .unwrap();
}

/// A done task's `result.json`.
pub fn task_result(project: &Path, name: &str) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(queue_dir(project, "done").join(format!("{name}.result.json"))).unwrap(),
    )
    .unwrap()
}

/// Waits until `name` is in done/ or failed/; returns which.
pub fn wait_task_ended(project: &Path, name: &str, timeout: Duration) -> &'static str {
    wait_for(timeout, &format!("task {name} to end"), || {
        if queue_dir(project, "done")
            .join(format!("{name}.md"))
            .is_file()
        {
            Some("done")
        } else if queue_dir(project, "failed")
            .join(format!("{name}.md"))
            .is_file()
        {
            Some("failed")
        } else {
            None
        }
    })
}

/// Exactly once: in its end folder and nowhere else.
pub fn assert_task_once(project: &Path, name: &str, ended: &str) {
    for folder in ["inbox", "active", "done", "failed"] {
        let here = queue_dir(project, folder)
            .join(format!("{name}.md"))
            .exists();
        assert_eq!(here, folder == ended, "{name} in {folder}/: {here}");
    }
}

/// Edits every account's settings.json with `edit`.
pub fn edit_settings(w: &World, edit: impl Fn(&mut serde_json::Value)) {
    for account in ["alpha", "beta"] {
        let Some(a) = w.sb.account(account) else {
            continue;
        };
        let path = a.home.join("settings.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }
}

/// Adds a hook command of the user's to every account's settings.json,
/// beside ours, as `setup` keeps them.
pub fn add_user_hook(w: &World, event: &str, command: &str) {
    edit_settings(w, |v| {
        let list = v["hooks"][event]
            .as_array_mut()
            .unwrap_or_else(|| panic!("no {event} hooks in settings.json"));
        list.push(serde_json::json!({"hooks": [{"type": "command", "command": command}]}));
    });
}
