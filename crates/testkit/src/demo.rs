//! The demo (`claude-failover-demo`, run by `scripts/demo.sh`): the whole
//! story in a minute or two on one machine, with nothing to set up and
//! nothing left behind.
//!
//! It builds a throw-away world in a temp folder (`sandbox.rs`): two made-up
//! accounts `alpha` and `beta`, a shared root, one pool of sessions and one
//! project. The local Anthropic API stand-in (`standin.rs`) runs inside this
//! process; the *real* Claude Code talks to it. A private tmux server
//! (`tmux -L claude-failover-demo-<pid>`) holds the sessions, and the daemon
//! runs as a child process (`claude-failover --config <sandbox> run`, the
//! product binary found by [`crate::product::binary`]), so what the demo
//! shows is exactly what `run` does in production.
//!
//! alpha starts at 50 % of its five-hour window with a 60 % threshold, and
//! every request adds a step chosen so that alpha crosses the threshold
//! during the first round of tasks (see [`crossing_request`]): the daemon
//! swaps while those finish, and the rest run on beta. beta climbs at half
//! the pace and never gets near the threshold. The demo enqueues the tasks
//! once every session is idle, then polls `GET /status` every 250 ms and
//! prints a timeline of what changes: sessions starting, idle and working,
//! tasks dispatched and done, alpha's quota rising, the swap, the sessions
//! resuming on beta. A summary follows; the exit status is 0 only when every
//! task is done and the swap happened. An overall deadline keeps it from
//! ever hanging.
//!
//! Clean-up is the point of a demo that starts daemons: at the end, on
//! Ctrl-C or SIGTERM (a flag checked by the polling loop), and on a panic
//! (`Drop`), it stops the daemon (SIGTERM, then SIGKILL), kills the private
//! tmux server and waits for Claude Code to exit, stops the stand-in and
//! removes the temp folder. `--keep` leaves everything running instead and
//! says how to look around and how to clean up later.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use claude_failover::claude::facts;
use claude_failover::commands::exit;
use claude_failover::store::queue;
use claude_failover::sys::process;
use claude_failover::sys::tmux::Tmux;

use crate::sandbox::{self, Sandbox, SandboxPool, SandboxSpec};
use crate::standin::{StandIn, StandInAccount, StandInOptions};

/// What `claude-failover-demo` takes from the command line.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The Claude Code binary; by default `claude` on PATH, then the pinned
    /// install that `scripts/demo.sh` puts under `.cache/`.
    pub claude: Option<PathBuf>,
    /// Leave the daemon, the tmux server and the folder running at the end.
    pub keep: bool,
    /// How many tasks to enqueue (at least 1).
    pub tasks: usize,
    /// How many sessions the pool keeps (at least 1).
    pub sessions: u32,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            claude: None,
            keep: false,
            tasks: 6,
            sessions: 3,
        }
    }
}

/// Where `scripts/demo.sh` (and `scripts/test.sh`) install the pinned Claude
/// Code, relative to the repository.
pub const CACHED_CLAUDE: &str =
    ".cache/claude-code/node_modules/@anthropic-ai/claude-code-linux-x64/claude";

/// The whole demo never takes longer than this.
const DEADLINE: Duration = Duration::from_secs(240);
/// How often `/status` is read.
const POLL: Duration = Duration::from_millis(250);
/// When every task is done but no swap came, wait this long before giving up.
const SWAP_GRACE: Duration = Duration::from_secs(30);
/// The account that runs out, and the one that takes over.
const ALPHA: &str = "alpha";
const BETA: &str = "beta";
/// Five-hour utilisation (percent) at the start, and the threshold.
const ALPHA_START: f64 = 50.0;
const BETA_START: f64 = 10.0;
const THRESHOLD: f64 = 60.0;
/// The project the tasks go to, and its pool.
const PROJECT: &str = "demo";
const POOL: &str = "demo";
const PREFIX: &str = "ccl-demo-";
/// How the stand-in paces its answers: the quota headers come with the first
/// byte after `ANSWER_LATENCY`, then the text streams for about 3.5 s (seven
/// delays between eight pieces). So the daemon reads alpha's crossing early
/// (the status line of the session being answered, or the usage endpoint
/// every 2 s) while the answer still streams, and the swap starts before the
/// session is free for its next task. It also keeps "working" on screen long
/// enough to see.
const ANSWER_LATENCY: Duration = Duration::from_millis(1000);
const TOKEN_DELAY: Duration = Duration::from_millis(500);
/// How long the daemon gets to stop after SIGTERM before SIGKILL.
const DAEMON_STOP: Duration = Duration::from_secs(10);
/// How long Claude Code gets to exit once its tmux server is gone.
const CLAUDE_EXIT: Duration = Duration::from_secs(10);

/// Runs the demo; returns the exit status (0: every task done and the
/// failover happened; 1: anything else, with the reason).
pub fn demo_command(opts: DemoOptions) -> i32 {
    if opts.tasks == 0 || opts.sessions == 0 {
        eprintln!("claude-failover demo: --tasks and --sessions must be at least 1");
        return exit::FAILURE;
    }
    let stop = Arc::new(AtomicBool::new(false));
    if let Err(e) = watch_signals(&stop) {
        eprintln!("claude-failover demo: cannot register signal handlers: {e}");
        return exit::FAILURE;
    }
    let claude = match find_claude(opts.claude.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("claude-failover demo: {e}");
            return exit::FAILURE;
        }
    };
    let claude_version = match claude_version(&claude) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("claude-failover demo: {e}");
            return exit::FAILURE;
        }
    };
    if let Err(e) = Tmux::new(None, Duration::from_secs(10)).version() {
        eprintln!(
            "claude-failover demo: tmux is needed: {e} (install it, e.g. `apt-get install tmux`)"
        );
        return exit::FAILURE;
    }
    // The product binary: the daemon and Claude Code's hooks run it.
    let exe = match crate::product::binary() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("claude-failover demo: {e}");
            return exit::FAILURE;
        }
    };

    let t0 = Instant::now();
    let socket = format!("claude-failover-demo-{}", std::process::id());
    let mut demo = match Demo::build(&opts, &claude, &exe, socket) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("claude-failover demo: {e}");
            return exit::FAILURE;
        }
    };
    demo.print_header(&claude, &claude_version);
    let timeline = Timeline { t0 };
    let outcome = match demo.start_daemon(&exe) {
        Ok(()) => demo.run(&timeline, &stop),
        Err(e) => Outcome::Failed(e),
    };
    demo.print_summary(&outcome, t0.elapsed());
    if opts.keep {
        demo.keep(&stop, matches!(outcome, Outcome::Interrupted));
    } else {
        demo.clean_up();
    }
    match outcome {
        Outcome::Passed => exit::OK,
        _ => exit::FAILURE,
    }
}

/// SIGINT and SIGTERM set `stop`, which the polling loop checks; a second
/// one while the flag is set ends the process at once (leaving things behind,
/// which the message at the first one says).
fn watch_signals(stop: &Arc<AtomicBool>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, exit::FAILURE, Arc::clone(stop))?;
        signal_hook::flag::register(sig, Arc::clone(stop))?;
    }
    Ok(())
}

/// `--claude`, else `claude` on PATH, else the pinned install under `.cache/`
/// in the current folder.
fn find_claude(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(given) = given {
        let name = given.to_string_lossy();
        return process::which(&name)
            .map(|p| p.canonicalize().unwrap_or(p))
            .ok_or_else(|| format!("--claude {name}: not found or not executable"));
    }
    if let Some(p) = process::which("claude") {
        return Ok(p);
    }
    let cached = std::env::current_dir()
        .map(|d| d.join(CACHED_CLAUDE))
        .unwrap_or_default();
    if let Some(p) = process::which(&cached.to_string_lossy()) {
        return Ok(p);
    }
    Err(format!(
        "no Claude Code found: not on PATH, not at ./{CACHED_CLAUDE}, and no --claude given. \
         Run scripts/demo.sh (it installs the pinned version into .cache/), or \
         `npm install -g {}@{}`, or pass --claude PATH",
        facts::NPM_PACKAGE,
        facts::PINNED_VERSION
    ))
}

/// `claude --version`, which also proves the binary runs here.
fn claude_version(claude: &Path) -> Result<String, String> {
    let mut cmd = Command::new(claude);
    cmd.arg("--version");
    for (k, v) in facts::ENV_OFFLINE {
        cmd.env(k, v);
    }
    let out = process::run(&mut cmd, None, Duration::from_secs(30))
        .map_err(|e| format!("{} does not run: {e}", claude.display()))?;
    if !out.success() {
        return Err(format!(
            "`{} --version` failed: {}",
            claude.display(),
            out.complaint()
        ));
    }
    Ok(out.stdout.trim().to_string())
}

/// The request (Claude Code sends one per task here) that takes alpha over
/// [`THRESHOLD`]: the second one with two sessions or more (so the timeline
/// shows the quota rising first), the first with one session, and never
/// later than half the tasks. It comes early on purpose: the stand-in counts
/// a request when it arrives, so the daemon reads the crossing (usage
/// endpoint every 2 s, status line) while the first round of tasks is still
/// being answered, and the swap starts before the sessions free up for the
/// next round: the remaining tasks run on beta. A later crossing races with
/// the dispatcher, which hands a freed session its next task at once.
pub fn crossing_request(tasks: usize, sessions: u32) -> usize {
    let sessions = sessions as usize;
    sessions
        .saturating_sub(1)
        .min(tasks.div_ceil(2))
        .clamp(1, 2)
}

/// Percent added to alpha's five-hour window per request, so that request
/// number [`crossing_request`] reaches [`THRESHOLD`] and the one before does
/// not: e.g. 3 sessions → 6.7 % a step, 57 % after the first request, 63 %
/// at the second.
pub fn alpha_step(tasks: usize, sessions: u32) -> f64 {
    (THRESHOLD - ALPHA_START) / (crossing_request(tasks, sessions) as f64 - 0.5)
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Passed,
    Failed(String),
    Interrupted,
}

/// Prints timeline lines with the time since the demo started.
struct Timeline {
    t0: Instant,
}

impl Timeline {
    fn line(&self, text: &str) {
        println!(
            "{:>8}  {text}",
            format!("+{:.1}s", self.t0.elapsed().as_secs_f64())
        );
    }
}

/// Everything the demo started, so that all of it can be taken down.
struct Demo {
    opts: DemoOptions,
    /// The product binary (`claude-failover`) the daemon and the hooks run.
    exe: PathBuf,
    /// The temp folder; `None` once removed.
    root: Option<PathBuf>,
    sandbox: Option<Sandbox>,
    api: Option<StandIn>,
    socket: String,
    tmux: Tmux,
    daemon: Option<Child>,
    daemon_pid: Option<u32>,
    /// Panes seen running Claude Code: waited for at clean-up.
    pane_pids: BTreeSet<u32>,
    /// Session → its pane's pid, as last seen; and as seen just before the
    /// swap (a live swap keeps every one).
    panes: BTreeMap<String, u32>,
    panes_before_swap: Option<BTreeMap<String, u32>>,
    cleaned: bool,
    // What the run observed, for the summary.
    last: Snapshot,
    swap: Option<SwapView>,
    /// task name → (account, session) once done.
    done: BTreeMap<String, (Option<String>, Option<String>)>,
    failed: BTreeMap<String, String>,
    /// task name → the session last seen working on it.
    task_session: BTreeMap<String, String>,
}

impl Demo {
    /// The temp folder, the stand-in, the sandbox and its config, our hooks.
    fn build(
        opts: &DemoOptions,
        claude: &Path,
        exe: &Path,
        socket: String,
    ) -> Result<Demo, String> {
        let root = make_temp_dir().map_err(|e| format!("cannot create a temp folder: {e}"))?;
        let mut demo = Demo {
            opts: opts.clone(),
            exe: exe.to_path_buf(),
            root: Some(root.clone()),
            sandbox: None,
            api: None,
            tmux: Tmux::new(Some(socket.clone()), Duration::from_secs(10)),
            socket,
            daemon: None,
            daemon_pid: None,
            pane_pids: BTreeSet::new(),
            panes: BTreeMap::new(),
            panes_before_swap: None,
            cleaned: false,
            last: Snapshot::default(),
            swap: None,
            done: BTreeMap::new(),
            failed: BTreeMap::new(),
            task_session: BTreeMap::new(),
        };
        let step = alpha_step(opts.tasks, opts.sessions);
        let api = StandIn::start(StandInOptions {
            accounts: [ALPHA, BETA]
                .iter()
                .map(|n| StandInAccount::new(*n, sandbox::token_for(n)))
                .collect(),
            five_hour_step: step,
            seven_day_step: 0.2,
            latency: ANSWER_LATENCY,
            token_delay: TOKEN_DELAY,
            port: 0,
        })
        .map_err(|e| format!("cannot start the API stand-in: {e}"))?;
        // beta climbs at half alpha's pace so it never reaches the threshold.
        let set = api
            .set_usage(ALPHA, ALPHA_START, 20.0)
            .and_then(|()| api.set_usage(BETA, BETA_START, 5.0))
            .and_then(|()| api.set_steps(BETA, step / 2.0, 0.1))
            // Each account's windows reset at their own times, as real
            // accounts' do: that is how a session shows which one it is on.
            .and_then(|()| {
                let now = SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                api.set_resets(BETA, now + 3 * 3600 + 1234, now + 5 * 86400 + 4321)
            });
        let base_url = api.base_url();
        demo.api = Some(api);
        set.map_err(|e| e.to_string())?;
        let spec = SandboxSpec {
            accounts: vec![ALPHA.into(), BETA.into()],
            pools: vec![SandboxPool {
                name: POOL.into(),
                prefix: PREFIX.into(),
                start_index: 1,
                min: opts.sessions,
                max: opts.sessions,
                model: None,
            }],
            projects: vec![(PROJECT.into(), POOL.into())],
            claude_binary: claude.to_string_lossy().into_owned(),
            claude_args: vec![],
            api_base_url: base_url,
            tmux_socket: demo.socket.clone(),
            http_listen: "127.0.0.1:0".into(),
            extra_yaml:
                "lifecycle:\n  interval: 2s\nswap:\n  drain_timeout: 20s\n  stop_timeout: 5s\n"
                    .into(),
            quota_yaml: format!(
                "  poll_interval: 2s\n  five_hour_threshold: {THRESHOLD}\n  swap_cooldown: 5s\n"
            ),
            swap_mode: "live".into(),
            // The demo shows its log's tail to a person.
            log_format: "text".into(),
            http_yaml: String::new(),
            token_tag: String::new(),
        };
        let sb = Sandbox::create(&root, &spec)
            .map_err(|e| format!("cannot build the sandbox in {}: {e}", root.display()))?;
        // The sandbox canonicalises its root; remove that path at the end.
        demo.root = Some(sb.root.clone());
        // Live mode: `setup` makes the seat (hooks, status line, trust, the
        // active account's login), as an operator's first run would.
        let out = std::process::Command::new(exe)
            .args(["--config", &sb.config_path.to_string_lossy(), "setup"])
            .output()
            .map_err(|e| format!("cannot run setup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "setup failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        demo.sandbox = Some(sb);
        Ok(demo)
    }

    fn sb(&self) -> &Sandbox {
        self.sandbox
            .as_ref()
            .expect("the sandbox is built before the run")
    }

    fn log_path(&self) -> PathBuf {
        self.sb().root.join("daemon.log")
    }

    fn project_dir(&self) -> PathBuf {
        self.sb().project_dirs[0].1.clone()
    }

    fn print_header(&self, claude: &Path, version: &str) {
        let sb = self.sb();
        let api = self.api.as_ref().map(|a| a.base_url()).unwrap_or_default();
        println!(
            "claude-failover demo: {} tasks, {} sessions, two made-up accounts",
            self.opts.tasks, self.opts.sessions
        );
        println!("  sandbox:      {}", sb.root.display());
        println!("  claude:       {} ({version})", claude.display());
        println!("  tmux socket:  {}", self.socket);
        println!("  API stand-in: {api} (in this process)");
        println!(
            "  accounts:     {ALPHA} starts at {ALPHA_START:.0}% of its 5-hour window, {BETA} at {BETA_START:.0}%; \
             threshold {THRESHOLD:.0}%, +{:.1}% per request on {ALPHA}",
            alpha_step(self.opts.tasks, self.opts.sessions)
        );
        println!("  config:       {}", sb.config_path.display());
    }

    /// `claude-failover --config <sandbox> run`, in its own process group so
    /// that a Ctrl-C in the terminal reaches the demo only: the demo stops
    /// the daemon itself, in the right order.
    fn start_daemon(&mut self, exe: &Path) -> Result<(), String> {
        let log = self.log_path();
        let out =
            File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.arg("--config")
            .arg(&self.sb().config_path)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the daemon: {e}"))?;
        self.daemon_pid = Some(child.id());
        self.daemon = Some(child);
        println!("  daemon pid:   {}", self.daemon_pid.unwrap_or(0));
        println!("  daemon log:   {}", log.display());
        println!("  status:       http://{}/status", self.sb().http_listen);
        println!();
        println!("TIMELINE");
        Ok(())
    }

    /// The polling loop: prints what changes until every task is done and
    /// the swap happened, something fails, the deadline passes or a signal
    /// asks to stop.
    fn run(&mut self, tl: &Timeline, stop: &AtomicBool) -> Outcome {
        let started = Instant::now();
        let url = format!("http://{}/status", self.sb().http_listen);
        let project_dir = self.project_dir();
        let mut enqueued = false;
        let mut daemon_up = false;
        let mut all_done_at: Option<Instant> = None;
        tl.line(&format!(
            "daemon starting (pid {})",
            self.daemon_pid.unwrap_or(0)
        ));
        loop {
            if stop.load(Ordering::SeqCst) {
                tl.line("interrupted: cleaning up (press Ctrl-C again to leave at once, leaving things behind)");
                return Outcome::Interrupted;
            }
            if started.elapsed() > DEADLINE {
                return Outcome::Failed(self.deadline_reason());
            }
            if let Some(code) = self.daemon_exited() {
                return Outcome::Failed(format!(
                    "the daemon exited ({code}) before the demo ended; its log:\n{}",
                    self.log_tail(20)
                ));
            }
            let Some(status) = get_status(&url) else {
                std::thread::sleep(POLL);
                continue;
            };
            if !daemon_up {
                daemon_up = true;
                tl.line(&format!("daemon up: {url} answers"));
            }
            let mut next = Snapshot::parse(&status, PROJECT);
            // The queue's folders (SPEC.md's layout) are the truth and are
            // read fresh; `/status.queues` can lag a turn behind (it showed
            // 2 of 6 tasks while the demo was still enqueueing), so it is
            // only the fallback.
            let on_disk = queue::Queue::new(PROJECT, &project_dir)
                .counts()
                .ok()
                .map(|c| Counts {
                    inbox: c.inbox,
                    active: c.active,
                    done: c.done,
                    failed: c.failed,
                });
            if on_disk.is_some() {
                next.queue = on_disk;
            }
            for (name, s) in &next.sessions {
                if let Some(t) = &s.task {
                    self.task_session.insert(t.clone(), name.clone());
                }
            }
            for line in describe_changes(&self.last, &next) {
                tl.line(&line);
            }
            let panes_before = self.panes.clone();
            self.note_panes();
            self.note_finished_tasks(tl, &project_dir);
            if let Some(s) = &next.last_swap {
                if self.last.last_swap.as_ref() != Some(s) {
                    if self.swap.is_none() {
                        self.panes_before_swap = Some(panes_before);
                    }
                    self.swap = Some(s.clone());
                }
            }
            self.last = next;

            if !enqueued && self.all_sessions_idle() {
                if let Err(e) = self.enqueue_tasks(&project_dir) {
                    return Outcome::Failed(format!("cannot enqueue the tasks: {e}"));
                }
                enqueued = true;
                tl.line(&format!(
                    "queue   {} tasks enqueued into project {PROJECT} ({})",
                    self.opts.tasks,
                    project_dir.join(queue::QUEUE_DIR).join("inbox").display()
                ));
            }
            if self.last.partial_swap {
                return Outcome::Failed(
                    "the swap ended partial: see /status and the daemon log".into(),
                );
            }
            if let Some(s) = &self.swap {
                if s.result != "done" {
                    return Outcome::Failed(format!(
                        "the swap ended {}: {}",
                        s.result,
                        s.detail.as_deref().unwrap_or("no detail")
                    ));
                }
            }
            let tasks = self.opts.tasks;
            if enqueued && self.done.len() + self.failed.len() >= tasks {
                if !self.failed.is_empty() {
                    let (name, why) = self.failed.iter().next().expect("not empty");
                    return Outcome::Failed(format!(
                        "{} task(s) failed, e.g. {name}: {why}",
                        self.failed.len()
                    ));
                }
                let swapped = self.swap.is_some() && !self.last.swap_in_progress;
                if swapped {
                    return Outcome::Passed;
                }
                let since = *all_done_at.get_or_insert_with(Instant::now);
                if !self.last.swap_in_progress && since.elapsed() > SWAP_GRACE {
                    let alpha = self.last.accounts.get(ALPHA).and_then(|a| a.five_hour);
                    return Outcome::Failed(format!(
                        "every task is done but no swap came within {}s ({ALPHA}'s 5-hour window at {})",
                        SWAP_GRACE.as_secs(),
                        alpha.map(|u| format!("{u:.0}%")).unwrap_or_else(|| "no reading".into())
                    ));
                }
            }
            std::thread::sleep(POLL);
        }
    }

    fn all_sessions_idle(&self) -> bool {
        let idle = self
            .last
            .sessions
            .values()
            .filter(|s| s.state == "idle")
            .count();
        idle >= self.opts.sessions as usize
    }

    fn enqueue_tasks(&self, project_dir: &Path) -> Result<(), String> {
        let width = self.opts.tasks.to_string().len();
        for i in 1..=self.opts.tasks {
            let name = format!("task-{i:0width$}");
            let prompt = format!(
                "Demo task {i} of {}: answer with one short sentence about failing over between accounts.\n",
                self.opts.tasks
            );
            queue::enqueue(
                project_dir,
                None,
                prompt.as_bytes(),
                Some(&name),
                SystemTime::now(),
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Remembers every pane pid seen, so clean-up can wait for Claude Code.
    fn note_panes(&mut self) {
        if let Ok(list) = self.tmux.list_sessions() {
            self.panes = list
                .into_iter()
                .filter_map(|s| Some((s.name, s.pane_pid?)))
                .collect();
            self.pane_pids.extend(self.panes.values().copied());
        }
    }

    /// Prints tasks that reached done/ or failed/ since the last look.
    fn note_finished_tasks(&mut self, tl: &Timeline, project_dir: &Path) {
        let q = project_dir.join(queue::QUEUE_DIR);
        for name in md_names(&q.join("done")) {
            if self.done.contains_key(&name) {
                continue;
            }
            let result: Value = std::fs::read(q.join("done").join(format!("{name}.result.json")))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            let account = result["account"].as_str().map(String::from);
            let answer = result["last_assistant_message"]
                .as_str()
                .map(|a| shorten(a, 70));
            let session = self.task_session.get(&name).cloned();
            let mut line = format!("task    {name} done");
            if let Some(a) = &account {
                line.push_str(&format!(" on {a}"));
            }
            if let Some(s) = &session {
                line.push_str(&format!(" by {s}"));
            }
            if let Some(a) = answer {
                line.push_str(&format!(": \"{a}\""));
            }
            tl.line(&line);
            self.done.insert(name, (account, session));
        }
        for name in md_names(&q.join("failed")) {
            if self.failed.contains_key(&name) {
                continue;
            }
            let error: Value = std::fs::read(q.join("failed").join(format!("{name}.error.json")))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            let reason = error["reason"]
                .as_str()
                .unwrap_or("no reason recorded")
                .to_string();
            tl.line(&format!("task    {name} FAILED: {reason}"));
            self.failed.insert(name, reason);
        }
    }

    fn daemon_exited(&mut self) -> Option<String> {
        let child = self.daemon.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.daemon = None;
                Some(status.to_string())
            }
            _ => None,
        }
    }

    /// Says what was missing when the deadline passed, with the likely cause.
    fn deadline_reason(&self) -> String {
        let tasks = self.opts.tasks;
        let mut why = format!(
            "not finished within {}s: {}/{tasks} tasks done, swap {}",
            DEADLINE.as_secs(),
            self.done.len(),
            match (&self.swap, self.last.swap_in_progress) {
                (_, true) => "under way",
                (Some(_), false) => "done",
                (None, false) => "not started",
            }
        );
        let q = self.last.queue.clone().unwrap_or_default();
        if !self.all_sessions_idle() && self.done.is_empty() {
            let stuck: Vec<String> = self
                .last
                .sessions
                .iter()
                .filter(|(_, s)| s.state != "idle")
                .map(|(n, s)| match &s.last_error {
                    Some(e) => format!("{n} {}: {}", s.state, shorten(e, 120)),
                    None => format!("{n} {}", s.state),
                })
                .collect();
            why.push_str(&format!("; sessions not all idle: {}", stuck.join("; ")));
        } else if q.inbox == tasks && q.active == 0 && q.done == 0 {
            why.push_str(
                "; no task was ever taken from the inbox (does this build have the dispatcher?)",
            );
        }
        why
    }

    fn log_tail(&self, lines: usize) -> String {
        let Ok(f) = File::open(self.log_path()) else {
            return "(no log)".into();
        };
        let all: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn print_summary(&self, outcome: &Outcome, total: Duration) {
        let tasks = self.opts.tasks;
        let mut per_account: BTreeMap<&str, usize> = BTreeMap::new();
        for (account, _) in self.done.values() {
            *per_account
                .entry(account.as_deref().unwrap_or("?"))
                .or_default() += 1;
        }
        let split: Vec<String> = per_account
            .iter()
            .map(|(a, n)| format!("{n} on {a}"))
            .collect();
        let moved = self
            .last
            .sessions
            .values()
            .filter(|s| {
                s.account.as_deref() == Some(BETA)
                    && matches!(s.state.as_str(), "idle" | "working" | "waiting")
            })
            .count();
        println!();
        println!("SUMMARY");
        println!(
            "  tasks done:      {}/{tasks}{}",
            self.done.len(),
            if split.is_empty() {
                String::new()
            } else {
                format!(" ({})", split.join(", "))
            }
        );
        let live = self.swap.as_ref().filter(|s| s.mode == "live");
        match (live, &self.panes_before_swap) {
            (Some(s), Some(before)) => {
                // Live: every session in the seat moved with it; those that
                // sent a request since show beta already.
                let kept = before
                    .iter()
                    .filter(|(n, p)| self.panes.get(*n) == Some(p))
                    .count();
                let running = self.panes.len();
                println!(
                    "  sessions moved:  {running}/{} from {ALPHA} to {BETA} (live: {kept} Claude Code processes kept through the swap, {} restarted; {moved} seen on {BETA} since)",
                    self.opts.sessions,
                    s.restarted.len()
                );
            }
            _ => println!(
                "  sessions moved:  {moved}/{} from {ALPHA} to {BETA}",
                self.opts.sessions
            ),
        }
        match &self.swap {
            Some(s) => println!(
                "  failover time:   {} ({} → {}, {}; {}: {})",
                if s.duration_ms < 1000 {
                    format!("{} ms", s.duration_ms)
                } else {
                    format!("{:.1}s", s.duration_ms as f64 / 1000.0)
                },
                s.from,
                s.to,
                s.result,
                s.id,
                s.reason
            ),
            None => println!("  failover time:   - (no swap)"),
        }
        println!("  total time:      {:.1}s", total.as_secs_f64());
        match outcome {
            Outcome::Passed => println!("  result:          OK: every task done, every session failed over from {ALPHA} to {BETA}"),
            Outcome::Interrupted => println!("  result:          interrupted"),
            Outcome::Failed(why) => {
                println!("  result:          FAILED: {why}");
                if self.sandbox.is_some() {
                    println!("  daemon log (last lines):");
                    for l in self.log_tail(15).lines() {
                        println!("    {l}");
                    }
                }
            }
        }
    }

    /// `--keep`: print how to look around and how to clean up. The stand-in
    /// lives in this process, so unless the run was interrupted the demo
    /// stays in the foreground serving it until Ctrl-C.
    fn keep(&mut self, stop: &AtomicBool, interrupted: bool) {
        self.cleaned = true; // nothing is taken down, not even by Drop
        let Some(sb) = self.sandbox.clone() else {
            return;
        };
        let pid = self
            .daemon_pid
            .map(|p| p.to_string())
            .unwrap_or_else(|| "?".into());
        println!();
        println!("KEPT (--keep): everything is still running");
        println!(
            "  attach:    tmux -L {} attach -t {PREFIX}1   (detach with Ctrl-b d)",
            self.socket
        );
        println!("  status:    curl http://{}/status", sb.http_listen);
        println!(
            "             {} --config {} status",
            self.exe.display(),
            sb.config_path.display()
        );
        println!("  log:       {}", self.log_path().display());
        println!(
            "  clean up:  kill {pid}; tmux -L {} kill-server; sleep 3; rm -rf {}",
            self.socket,
            sb.root.display()
        );
        if interrupted {
            println!("  the API stand-in has stopped with this process: new prompts will not be answered");
            return;
        }
        println!("  the API stand-in lives in this process and serves the sessions until you press Ctrl-C here");
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(POLL);
        }
        println!(
            "stand-in stopped; the daemon, the tmux server and {} are left for you",
            sb.root.display()
        );
    }

    /// Takes everything down, in the order that leaves nothing behind: the
    /// daemon first (so it relaunches nothing), then tmux and the Claude Code
    /// processes in it, then the stand-in, then the folder.
    fn clean_up(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        println!();
        println!("CLEAN-UP");
        if let Some(mut child) = self.daemon.take() {
            let pid = child.id();
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + DAEMON_STOP;
            let status = loop {
                match child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => break None,
                }
            };
            match status {
                Some(s) => println!("  daemon (pid {pid}) stopped: {s}"),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    println!(
                        "  daemon (pid {pid}) did not stop within {}s: killed",
                        DAEMON_STOP.as_secs()
                    );
                }
            }
        } else if let Some(pid) = self.daemon_pid {
            println!("  daemon (pid {pid}) had already exited");
        }
        self.note_panes();
        match self.tmux.kill_server() {
            Ok(()) => println!("  tmux server {} killed", self.socket),
            Err(e) => println!("  tmux server {}: {e}", self.socket),
        }
        let deadline = Instant::now() + CLAUDE_EXIT;
        while self
            .pane_pids
            .iter()
            .any(|p| claude_failover::sys::process::alive(*p))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let left: Vec<String> = self
            .pane_pids
            .iter()
            .filter(|p| claude_failover::sys::process::alive(**p))
            .map(|p| p.to_string())
            .collect();
        if !left.is_empty() {
            println!(
                "  Claude Code still running after {}s: pids {}",
                CLAUDE_EXIT.as_secs(),
                left.join(", ")
            );
        }
        if let Some(mut api) = self.api.take() {
            api.stop();
            println!("  API stand-in stopped");
        }
        if let Some(root) = self.root.take() {
            match remove_for_good(&root) {
                Ok(()) => println!("  {} removed", root.display()),
                Err(e) => println!("  cannot remove {}: {e}", root.display()),
            }
        }
    }
}

impl Drop for Demo {
    /// A panic or an early return must not leave a daemon running.
    fn drop(&mut self) {
        self.clean_up();
    }
}

/// `<tmp>/claude-failover-demo-<pid>-<nanos>`, new and private.
fn make_temp_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "claude-failover-demo-{}-{nanos:09}",
        std::process::id()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// Removes `root`, retrying while late writers (a hook fired by a Claude Code
/// that is exiting) are still at work, and once more if one recreated it.
fn remove_for_good(root: &Path) -> std::io::Result<()> {
    let mut last = Ok(());
    for _ in 0..20 {
        last = match std::fs::remove_dir_all(root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        if last.is_ok() {
            std::thread::sleep(Duration::from_millis(300));
            if !root.exists() {
                return Ok(());
            }
            continue;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    last
}

/// `GET /status`, or `None` while the daemon does not answer.
fn get_status(url: &str) -> Option<Value> {
    ureq::get(url)
        .timeout(Duration::from_secs(2))
        .call()
        .ok()?
        .into_json()
        .ok()
}

/// Task names (`<name>.md`) in a queue folder, sorted.
fn md_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".md")
                        .map(String::from)
                })
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The first line of `text`, at most `max` characters.
fn shorten(text: &str, max: usize) -> String {
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.chars().count() <= max {
        line.to_string()
    } else {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

// ----- what /status says, and what changed -----

/// The parts of `GET /status` the timeline follows.
#[derive(Debug, Clone, Default, PartialEq)]
struct Snapshot {
    active: Option<String>,
    swap_in_progress: bool,
    partial_swap: bool,
    sessions: BTreeMap<String, SessionView>,
    accounts: BTreeMap<String, AccountView>,
    queue: Option<Counts>,
    last_swap: Option<SwapView>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct SessionView {
    state: String,
    account: Option<String>,
    task: Option<String>,
    last_error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct AccountView {
    five_hour: Option<f64>,
    source: Option<String>,
    usable: bool,
    reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Counts {
    inbox: usize,
    active: usize,
    done: usize,
    failed: usize,
}

#[derive(Debug, Clone, PartialEq)]
struct SwapView {
    id: String,
    from: String,
    to: String,
    reason: String,
    duration_ms: u64,
    result: String,
    detail: Option<String>,
    /// `live` or `restart`.
    mode: String,
    /// Sessions restarted because they did not follow a live swap.
    restarted: Vec<String>,
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(String::from)
}

impl Snapshot {
    /// Reads the fields of SPEC.md's `/status`; anything missing is left empty.
    fn parse(v: &Value, project: &str) -> Snapshot {
        let sessions = v["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                Some((
                    s["name"].as_str()?.to_string(),
                    SessionView {
                        state: s["state"].as_str().unwrap_or("?").to_string(),
                        account: text(&s["account"]),
                        task: text(&s["task"]),
                        last_error: text(&s["last_error"]),
                    },
                ))
            })
            .collect();
        let accounts = v["accounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some((
                    a["name"].as_str()?.to_string(),
                    AccountView {
                        five_hour: a["five_hour"]["utilization"].as_f64(),
                        source: text(&a["five_hour"]["source"]),
                        usable: a["usable"].as_bool().unwrap_or(false),
                        reason: text(&a["reason"]),
                    },
                ))
            })
            .collect();
        let q = &v["queues"][project];
        let queue = q.is_object().then(|| {
            let n = |k: &str| q[k].as_u64().unwrap_or(0) as usize;
            Counts {
                inbox: n("inbox"),
                active: n("active"),
                done: n("done"),
                failed: n("failed"),
            }
        });
        let l = &v["last_swap"];
        let last_swap = l.is_object().then(|| SwapView {
            id: l["id"].as_str().unwrap_or("").to_string(),
            from: l["from"].as_str().unwrap_or("?").to_string(),
            to: l["to"].as_str().unwrap_or("?").to_string(),
            reason: l["reason"].as_str().unwrap_or("").to_string(),
            duration_ms: l["duration_ms"].as_u64().unwrap_or(0),
            result: l["result"].as_str().unwrap_or("?").to_string(),
            detail: text(&l["detail"]),
            mode: l["mode"].as_str().unwrap_or("restart").to_string(),
            restarted: l["restarted"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(String::from))
                .collect(),
        });
        Snapshot {
            active: text(&v["active_account"]),
            swap_in_progress: v["swap_in_progress"].as_bool().unwrap_or(false),
            partial_swap: v["partial_swap"].as_bool().unwrap_or(false),
            sessions,
            accounts,
            queue,
            last_swap,
        }
    }
}

/// One timeline line per thing that changed between two snapshots, in the
/// order a reader wants them: quota (the cause), the swap and the active
/// account, the queue, then the sessions.
fn describe_changes(prev: &Snapshot, next: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (name, a) in &next.accounts {
        let before = prev.accounts.get(name);
        let moved = match (before.and_then(|b| b.five_hour), a.five_hour) {
            (None, Some(_)) => true,
            (Some(x), Some(y)) => (x - y).abs() >= 0.5,
            _ => false,
        };
        if moved {
            let source = a
                .source
                .as_ref()
                .map(|s| format!(" (from the {})", source_words(s)))
                .unwrap_or_default();
            out.push(format!(
                "quota   {name}: 5-hour window at {:.0}%{source}",
                a.five_hour.unwrap_or(0.0)
            ));
        }
        match before {
            Some(b) if b.usable && !a.usable => out.push(format!(
                "quota   {name} takes no new work: {}",
                a.reason.as_deref().unwrap_or("over its threshold")
            )),
            Some(b) if !b.usable && a.usable => out.push(format!("quota   {name} is usable again")),
            _ => {}
        }
    }
    if next.swap_in_progress && !prev.swap_in_progress {
        let from = prev
            .active
            .clone()
            .or_else(|| next.active.clone())
            .unwrap_or_else(|| "?".into());
        let why = [prev, next]
            .iter()
            .find_map(|s| s.accounts.get(&from).and_then(|a| a.reason.clone()))
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        out.push(format!("SWAP    started: every session leaves {from}{why}"));
        out.push("SWAP    drain (let working sessions finish their turn), stop, flip, relaunch with --resume".into());
    }
    if next.active != prev.active {
        if let Some(a) = &next.active {
            out.push(format!("account {a} is the active account"));
        }
    }
    if let Some(s) = &next.last_swap {
        if prev.last_swap.as_ref() != Some(s) {
            let detail = s
                .detail
                .as_ref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            let took = if s.duration_ms < 1000 {
                format!("{} ms", s.duration_ms)
            } else {
                format!("{:.1}s", s.duration_ms as f64 / 1000.0)
            };
            out.push(format!(
                "SWAP    {}: {} → {} in {took}{detail}",
                s.result, s.from, s.to
            ));
        }
    }
    if let Some(s) = next.last_swap.as_ref().filter(|s| s.mode == "live") {
        if prev.last_swap.as_ref().map(|p| &p.id) != Some(&s.id) {
            out.push(format!(
                "SWAP    live: the seat now holds {}'s login; every running Claude Code sends its next request as {} (nothing stopped, working turns go on)",
                s.to, s.to
            ));
        }
        let before = prev
            .last_swap
            .as_ref()
            .filter(|p| p.id == s.id)
            .map(|p| p.restarted.len())
            .unwrap_or(0);
        for name in s.restarted.iter().skip(before) {
            out.push(format!(
                "SWAP    {name} did not follow the swap to {}: restarted under the seat",
                s.to
            ));
        }
    }
    if let Some(q) = &next.queue {
        if prev.queue.as_ref() != Some(q) && (q.inbox + q.active + q.done + q.failed) > 0 {
            out.push(format!(
                "queue   {} waiting, {} active, {} done, {} failed",
                q.inbox, q.active, q.done, q.failed
            ));
        }
    }
    for (name, s) in &next.sessions {
        let before = prev.sessions.get(name);
        if let Some(task) = &s.task {
            if before.and_then(|b| b.task.as_ref()) != Some(task) {
                out.push(format!(
                    "task    {task} dispatched to {name} ({})",
                    s.account.as_deref().unwrap_or("?")
                ));
            }
        }
        let changed = before.is_none_or(|b| b.state != s.state || b.account != s.account);
        if changed {
            out.push(format!("session {name} {}", session_words(s)));
        }
    }
    out
}

fn source_words(source: &str) -> &str {
    match source {
        "statusline" => "status line",
        "usage_endpoint" => "usage endpoint",
        "stop_failure" => "refusal",
        other => other,
    }
}

/// A session's state as a reader would say it.
fn session_words(s: &SessionView) -> String {
    let account = s.account.as_deref().unwrap_or("?");
    match s.state.as_str() {
        "starting" => match &s.task {
            Some(t) => format!("starting on {account} for {t}"),
            None => format!("starting on {account}"),
        },
        "idle" => format!("idle on {account}"),
        "working" => match &s.task {
            Some(t) => format!("working on {t} ({account})"),
            None => format!("working ({account})"),
        },
        "waiting" => format!("waiting on a prompt ({account})"),
        "limited" => format!("limited: {account} refused it"),
        "stopping" => "stopping".into(),
        "dead" => "stopped".into(),
        "backoff" | "failed" => format!(
            "{}: {}",
            s.state,
            s.last_error
                .as_deref()
                .map(|e| shorten(e, 100))
                .unwrap_or_default()
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(
        active: &str,
        swapping: bool,
        sessions: Value,
        alpha: f64,
        alpha_usable: bool,
    ) -> Snapshot {
        Snapshot::parse(
            &json!({
                "active_account": active,
                "swap_in_progress": swapping,
                "partial_swap": false,
                "sessions": sessions,
                "accounts": [
                    {"name": "alpha", "usable": alpha_usable, "reason": if alpha_usable { Value::Null } else { json!("5-hour window at 62%") },
                     "five_hour": {"utilization": alpha, "source": "statusline"}},
                    {"name": "beta", "usable": true, "reason": null, "five_hour": {"utilization": 10.0, "source": "usage_endpoint"}},
                ],
                "queues": {"demo": {"inbox": 2, "active": 1, "done": 3, "failed": 0}},
                "last_swap": null,
            }),
            "demo",
        )
    }

    #[test]
    fn alpha_crosses_early_in_the_first_round() {
        for sessions in [1u32, 2, 3, 5] {
            for tasks in [1usize, 2, 3, 6, 10] {
                let k = crossing_request(tasks, sessions);
                assert!(
                    k >= 1 && k <= sessions.max(1) as usize && k <= tasks.div_ceil(2),
                    "{tasks} tasks, {sessions} sessions: {k}"
                );
                let step = alpha_step(tasks, sessions);
                let at = |n: usize| ALPHA_START + step * n as f64;
                assert!(
                    at(k) >= THRESHOLD,
                    "{tasks}/{sessions}: {} at request {k}",
                    at(k)
                );
                assert!(
                    at(k - 1) < THRESHOLD,
                    "{tasks}/{sessions}: {} before request {k}",
                    at(k - 1)
                );
            }
        }
        assert_eq!(crossing_request(6, 3), 2);
        assert_eq!(
            crossing_request(6, 1),
            1,
            "one session: the first request crosses"
        );
        assert_eq!(crossing_request(1, 3), 1);
    }

    #[test]
    fn parses_the_status_fields_it_follows() {
        let s = status(
            "alpha",
            false,
            json!([{"name": "ccl-demo-1", "state": "working", "account": "alpha", "task": "task-1"}]),
            54.0,
            true,
        );
        assert_eq!(s.active.as_deref(), Some("alpha"));
        assert_eq!(s.sessions["ccl-demo-1"].task.as_deref(), Some("task-1"));
        assert_eq!(s.accounts["alpha"].five_hour, Some(54.0));
        assert_eq!(
            s.queue,
            Some(Counts {
                inbox: 2,
                active: 1,
                done: 3,
                failed: 0
            })
        );
        assert!(
            Snapshot::parse(&json!({}), "demo").queue.is_none(),
            "no counts: the demo counts on disk"
        );
    }

    #[test]
    fn describes_a_session_taking_a_task_and_the_quota_rising() {
        let before = status(
            "alpha",
            false,
            json!([{"name": "ccl-demo-1", "state": "idle", "account": "alpha", "task": null}]),
            50.0,
            true,
        );
        let after = status(
            "alpha",
            false,
            json!([{"name": "ccl-demo-1", "state": "working", "account": "alpha", "task": "task-1"}]),
            54.0,
            true,
        );
        let lines = describe_changes(&before, &after);
        assert!(
            lines.contains(&"task    task-1 dispatched to ccl-demo-1 (alpha)".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"session ccl-demo-1 working on task-1 (alpha)".to_string()),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("quota   alpha: 5-hour window at 54%")),
            "{lines:?}"
        );
        assert!(
            describe_changes(&after, &after).is_empty(),
            "nothing changed, nothing said"
        );
    }

    #[test]
    fn describes_the_swap_from_start_to_end() {
        let s1 = json!([{"name": "ccl-demo-1", "state": "idle", "account": "alpha"}]);
        let before = status("alpha", false, s1.clone(), 62.0, false);
        let during = status("alpha", true, s1, 62.0, false);
        let lines = describe_changes(&before, &during);
        assert!(
            lines.iter().any(|l| l
                .starts_with("SWAP    started: every session leaves alpha: 5-hour window at 62%")),
            "{lines:?}"
        );
        let mut after = status(
            "beta",
            false,
            json!([{"name": "ccl-demo-1", "state": "idle", "account": "beta"}]),
            62.0,
            false,
        );
        after.last_swap = Some(SwapView {
            id: "swap-1".into(),
            from: "alpha".into(),
            to: "beta".into(),
            reason: "alpha: 5-hour window at 62%".into(),
            duration_ms: 7300,
            result: "done".into(),
            detail: None,
            mode: "restart".into(),
            restarted: vec![],
        });
        let lines = describe_changes(&during, &after);
        assert!(
            lines.contains(&"account beta is the active account".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"SWAP    done: alpha → beta in 7.3s".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"session ccl-demo-1 idle on beta".to_string()),
            "{lines:?}"
        );
    }

    #[test]
    fn describes_a_live_swap_and_who_had_to_be_restarted() {
        let s1 = json!([{"name": "ccl-demo-1", "state": "working", "account": "alpha"}]);
        let before = status("alpha", false, s1.clone(), 62.0, false);
        let mut after = status("beta", false, s1, 62.0, false);
        let mut swap = SwapView {
            id: "swap-1".into(),
            from: "alpha".into(),
            to: "beta".into(),
            reason: "alpha: 5-hour window at 62%".into(),
            duration_ms: 45,
            result: "done".into(),
            detail: None,
            mode: "live".into(),
            restarted: vec![],
        };
        after.last_swap = Some(swap.clone());
        let lines = describe_changes(&before, &after);
        assert!(
            lines.contains(&"SWAP    done: alpha → beta in 45 ms".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with(
                "SWAP    live: the seat now holds beta's login; every running Claude Code sends its next request as beta"
            )),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l.contains("restarted")), "{lines:?}");
        let mut later = after.clone();
        swap.restarted = vec!["ccl-demo-1".into()];
        later.last_swap = Some(swap);
        let lines = describe_changes(&after, &later);
        assert_eq!(
            lines,
            vec![
                "SWAP    done: alpha → beta in 45 ms".to_string(),
                "SWAP    ccl-demo-1 did not follow the swap to beta: restarted under the seat"
                    .to_string()
            ]
        );
    }

    #[test]
    fn a_missing_claude_given_on_the_command_line_is_a_clear_error() {
        let e = find_claude(Some(Path::new("/nonexistent/claude"))).unwrap_err();
        assert!(e.contains("--claude /nonexistent/claude: not found"), "{e}");
    }

    #[test]
    fn shortens_to_the_first_line() {
        assert_eq!(shorten("\n  hello world\nsecond", 50), "hello world");
        assert_eq!(shorten("abcdef", 4), "abc…");
    }
}
