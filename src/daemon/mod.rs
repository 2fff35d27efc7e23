//! `claude-failover run`: the daemon's start-up, its main loop and its stop.
//!
//! One closed [`Event`] enum of everything that can wake the daemon, one
//! `next_event` (a single `select!`), one `handle`, then the work done after
//! every turn: persist what changed, publish the status snapshot, tell
//! systemd. Role threads sit behind small handles; see docs/architecture.md.

pub mod dispatcher;
pub mod event_socket;
pub mod event_watcher;
pub mod http;
pub mod metrics;
pub mod notifier;
pub mod quota_monitor;
pub mod session_watcher;
pub mod status;
pub mod switcher;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{after, never, select, tick, Sender};
use parking_lot::RwLock;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::claude::account::Credentials;
use crate::claude::facts;
use crate::claude::hook_event::HookEvent;
use crate::commands::exit;
use crate::config::Config;
use crate::daemon::event_watcher::{Batch, EventWatcher};
use crate::daemon::http::Http;
use crate::decide::session::{self, Action, Book, State};
use crate::store::atomic_file;
use crate::sys::process;
use crate::sys::sd_notify::Systemd;
use crate::sys::tmux::{Launch, SessionInfo, Tmux};
use session_watcher::{Job, SessionWatcher};
use status::{AccountStatus, Published, SessionStatus, Status};
use switcher::{Active, SharedView, Switcher};

/// Everything that can wake the main loop.
#[derive(Debug)]
enum Event {
    Signal(i32),
    /// Hook events recorded by `claude-failover hook`.
    Hooks(Batch),
    /// The session watcher observed tmux or finished an action.
    Session(session_watcher::Report),
    /// The switcher: the active account, a swap's progress, dispatch pause.
    Switcher(switcher::Report),
    /// An HTTP command for the main loop.
    Control(crate::daemon::http::Report),
    /// The dispatcher: task assignments, pool resizing, queue counts.
    Dispatch(crate::daemon::dispatcher::Report),
    /// `lifecycle.interval` passed: reconcile fully.
    Tick,
    /// A back-off or start-up deadline is due.
    Deadline,
    /// Time to tell systemd's watchdog the loop turns.
    Watchdog,
    /// A role thread ended unexpectedly.
    RoleGone(&'static str),
}

/// How long a role thread may take to finish at stop before we leave it.
const JOIN_GRACE: Duration = Duration::from_millis(1500);
/// Every tmux call's deadline.
const TMUX_DEADLINE: Duration = Duration::from_secs(10);

/// `sessions.json`: what cannot be observed.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct SessionsFile {
    sessions: Book,
}

struct Daemon {
    config: Config,
    config_path: PathBuf,
    claude_binary: PathBuf,
    book: Book,
    observed: Option<Vec<SessionInfo>>,
    observe_error: Option<String>,
    in_flight: HashSet<String>,
    active: Option<Active>,
    published: Published,
    sd: Systemd,
    ready: bool,
    persisted: String,
    consumed: Vec<(PathBuf, crate::claude::hook::RecordedEvent)>,
    config_error: Option<String>,
    /// Shared-folder divergences found by the last check.
    shared_problems: Vec<String>,
    watcher: Sender<session_watcher::Command>,
    switcher: Sender<switcher::Command>,
    /// The switcher's published view (accounts, swaps).
    view: SharedView,
    /// The switcher holds the sessions (from `SwapStarted` until it asks for
    /// their relaunch, or the swap ends): no reconcile, no dispatch. This
    /// follows the notices in order; whether a swap is under way is the
    /// switcher's answer (`View::swap_in_progress`), not this.
    sessions_held: Option<String>,
    /// The last session snapshot sent to the switcher.
    sent_switcher: Vec<switcher::SessionSnapshot>,
    dispatcher: Sender<crate::daemon::dispatcher::Command>,
    /// The last session snapshot sent to the dispatcher.
    sent_sessions: Vec<crate::daemon::dispatcher::SessionView>,
    queues: std::collections::BTreeMap<String, crate::daemon::status::QueueCounts>,
    /// No account can take work: why.
    no_account: Option<String>,
    notify: crate::daemon::notifier::NotifyHandle,
    counters: Arc<crate::daemon::metrics::Counters>,
    /// SIGTERM came during a swap: stop once it ends, or at this deadline.
    stop_after_swap: Option<std::time::Instant>,
}

/// Runs the daemon in the foreground; returns the exit status.
pub fn run(config_path: &Path) -> i32 {
    // Signals first, before any thread exists, so none is lost or kills us.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("claude-failover: cannot register signal handlers: {e}");
            return exit::FAILURE;
        }
    };
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("claude-failover: bad config: {e}");
            return exit::BAD_CONFIG;
        }
    };
    // One daemon per state folder, before any recovery or file write there;
    // held until `run` returns.
    let _state_lock = match crate::store::state_lock::acquire(&config.state_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("claude-failover: cannot start: {e}");
            return exit::INVARIANT;
        }
    };
    // The control plane's token, made when absent; a file others may read
    // is refused before anything starts.
    let token = match crate::daemon::http::ensure_token(&config.http.token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("claude-failover: cannot start: {e}");
            return exit::INVARIANT;
        }
    };
    let claude_binary = match startup_invariants(&config) {
        Ok(b) => b,
        Err(problems) => {
            for p in problems {
                eprintln!("claude-failover: cannot start: {p}");
            }
            return exit::INVARIANT;
        }
    };
    let events_dir = config.state_dir.join(crate::claude::hook::EVENTS_DIR);
    if let Err(e) = std::fs::create_dir_all(&events_dir) {
        eprintln!(
            "claude-failover: cannot create {}: {e}",
            events_dir.display()
        );
        return exit::FAILURE;
    }
    let book = load_book(&config.state_dir.join("sessions.json"));

    // Role threads; they go into `Roles` below, whose field order is the
    // order they stop in.
    let (sig_tx, sig_rx) = crossbeam_channel::unbounded();
    let sig_handle = signals.handle();
    let sig_thread = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if sig_tx.send(s).is_err() {
                    return;
                }
            }
        })
        .expect("spawn signals thread");
    let published: Published = Arc::new(RwLock::new(Arc::new(Status::default())));
    let (active_tx, active_rx) = crossbeam_channel::unbounded();
    // Known before the switcher finishes (and removes) a journal left by a
    // crash: the dispatcher then continues the tasks it adopts.
    let swap_was_interrupted = config.state_dir.join(switcher::JOURNAL_FILE).exists();
    let (report_tx, report_rx) = crossbeam_channel::unbounded();
    let watcher = SessionWatcher::start(
        Tmux::new(config.tmux.socket.clone(), TMUX_DEADLINE),
        report_tx,
    );
    let switcher = Switcher::start(&config, active_tx, watcher.requests.clone());
    // Told to stop, it flushes what is queued for at most JOIN_GRACE.
    let notifier = crate::daemon::notifier::Notifier::start_with(
        &config.notify,
        crate::daemon::notifier::NotifierOptions {
            flush_grace: JOIN_GRACE,
            ..Default::default()
        },
    );
    let counters = Arc::new(crate::daemon::metrics::Counters::default());
    let (control_tx, control_rx) = crossbeam_channel::unbounded();
    let control_plane = crate::daemon::http::ControlPlane {
        switcher: switcher.requests.clone(),
        view: switcher.view.clone(),
        main: control_tx,
        token,
        counters: counters.clone(),
        notify: notifier.handle(),
        swap_wait: config.swap.drain_timeout
            + config.swap.stop_timeout
            + config.claude.startup_timeout
            + Duration::from_secs(30),
    };
    let http = match Http::start(config.http.listen, published.clone(), control_plane) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("claude-failover: {e}");
            return exit::FAILURE;
        }
    };
    log::info!("listening on http://{}", http.addr);
    let monitor = crate::daemon::quota_monitor::QuotaMonitor::start(
        &config,
        switcher.view.clone(),
        switcher.requests.clone(),
    );
    let (dispatch_tx, dispatch_rx) = crossbeam_channel::unbounded();
    let dispatcher = crate::daemon::dispatcher::Dispatcher::start(
        &config,
        dispatch_tx,
        watcher.requests.clone(),
        swap_was_interrupted,
    );
    // Bounded: a flood of events waits in its senders, not in memory here.
    let (events_tx, events_rx) = crossbeam_channel::bounded(256);
    let events = match EventWatcher::start(
        &config.state_dir,
        Tmux::new(config.tmux.socket.clone(), TMUX_DEADLINE),
        config.lifecycle.interval,
        events_tx,
    ) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("claude-failover: cannot watch the events folder: {e}");
            return exit::FAILURE;
        }
    };

    let mut daemon = Daemon {
        config_path: config_path.to_path_buf(),
        claude_binary,
        book,
        observed: None,
        observe_error: None,
        in_flight: HashSet::new(),
        active: None,
        published,
        sd: Systemd::from_env(),
        ready: false,
        persisted: String::new(),
        consumed: Vec::new(),
        config_error: None,
        shared_problems: Vec::new(),
        watcher: watcher.requests.clone(),
        switcher: switcher.requests.clone(),
        view: switcher.view.clone(),
        sessions_held: None,
        sent_switcher: Vec::new(),
        dispatcher: dispatcher.input.clone(),
        sent_sessions: Vec::new(),
        queues: Default::default(),
        no_account: None,
        notify: notifier.handle(),
        counters: counters.clone(),
        stop_after_swap: None,
        config,
    };
    let monitor_gone = monitor.gone.clone();
    let roles = Roles {
        http: {
            let (stop, thread) = http.into_parts();
            Role::new("http", stop, thread)
        },
        dispatcher: Role::new("dispatcher", dispatcher.input, dispatcher.thread),
        monitor: Role::new("quota monitor", monitor.stop, monitor.thread),
        switcher: Role::new("switcher", switcher.requests, switcher.thread),
        watcher: Role::new("session watcher", watcher.requests, watcher.thread),
        events: Role::new("event watcher", events.stop, events.thread),
        notifier: {
            let (stop, thread) = notifier.into_parts();
            // Its flush (JOIN_GRACE at most) plus the time to end.
            Role::new("notifier", stop, thread).grace(JOIN_GRACE + Duration::from_millis(250))
        },
        signals: Role::new("signals", CloseOnDrop(sig_handle), sig_thread),
    };
    let _ = daemon.watcher.send(session_watcher::Command::Observe);
    let watchdog = Systemd::watchdog_interval().map(tick).unwrap_or_else(never);
    let mut ticker = tick(daemon.config.lifecycle.interval);
    let mut interval = daemon.config.lifecycle.interval;
    let code = loop {
        let deadline = daemon.next_deadline().map(after).unwrap_or_else(never);
        let event = select! {
            recv(sig_rx) -> s => s.map(Event::Signal).unwrap_or(Event::RoleGone("signals")),
            recv(events_rx) -> b => b.map(Event::Hooks).unwrap_or(Event::RoleGone("event watcher")),
            recv(report_rx) -> r => r.map(Event::Session).unwrap_or(Event::RoleGone("session watcher")),
            recv(active_rx) -> a => a.map(Event::Switcher).unwrap_or(Event::RoleGone("switcher")),
            recv(control_rx) -> c => c.map(Event::Control).unwrap_or(Event::RoleGone("http")),
            recv(dispatch_rx) -> d => d.map(Event::Dispatch).unwrap_or(Event::RoleGone("dispatcher")),
            recv(monitor_gone) -> _ => Event::RoleGone("quota monitor"),
            recv(ticker) -> _ => Event::Tick,
            recv(watchdog) -> _ => Event::Watchdog,
            recv(deadline) -> _ => Event::Deadline,
        };
        if let Some(code) = daemon.handle(event) {
            break code;
        }
        if let Some(deadline) = daemon.stop_after_swap {
            if daemon.sessions_held.is_none() && daemon.view.read().swap_in_progress.is_none() {
                log::info!("the swap ended; stopping as requested");
                break exit::OK;
            }
            if std::time::Instant::now() > deadline {
                log::error!("the swap did not end in time; stopping anyway: the next start finishes or rolls it back from its journal");
                break exit::OK;
            }
        }
        daemon.after_turn();
        if daemon.config.lifecycle.interval != interval {
            interval = daemon.config.lifecycle.interval;
            ticker = tick(interval);
        }
    };

    daemon.sd.notify("STOPPING=1");
    daemon.persist();
    log::info!("stopping; tmux sessions are left running for the next start to adopt");
    // The main loop's senders to the watcher, the switcher and the
    // dispatcher go first, then each role in `Roles`' field order.
    drop(daemon);
    drop(roles);
    code
}

/// Every role thread, stopped at drop one after the other in field order.
///
/// Relative order of fields below is significant: a role stops only once
/// every sender to its channel is gone, so whoever sends to a role stops
/// before it. HTTP holds senders to the switcher and the main loop (and
/// only reads snapshots otherwise), so it stops first; the dispatcher takes
/// no new work once the main loop (already gone) sends none; the quota
/// monitor sends readings to the switcher, so it stops before it; with
/// HTTP, the monitor and the main loop gone, the switcher's channel closes
/// and it returns (finishing what it persists); the session watcher is
/// asked to type by the dispatcher and to stop sessions by the switcher, so
/// it comes after both; the event watcher feeds only the main loop; the notifier comes late so
/// that notes sent while the others stop are still delivered; the signal
/// thread is last, so a signal during stop is still caught, not fatal.
// The fields are only ever dropped, which is their use.
#[allow(dead_code)]
struct Roles {
    http: Role,
    dispatcher: Role,
    monitor: Role,
    switcher: Role,
    watcher: Role,
    events: Role,
    notifier: Role,
    signals: Role,
}

/// One role thread and what asks it to stop. The one way to stop a role:
/// drop its `stop` (its request sender, or a stop sender nobody sends on);
/// the thread's own loop sees its channel close and returns. Then the
/// thread is joined for at most `grace`, and left running if it takes
/// longer (a stuck role must not keep the daemon from exiting).
struct Role {
    name: &'static str,
    stop: Option<Box<dyn Send>>,
    thread: Option<std::thread::JoinHandle<()>>,
    grace: Duration,
}

impl Role {
    fn new(
        name: &'static str,
        stop: impl Send + 'static,
        thread: std::thread::JoinHandle<()>,
    ) -> Role {
        Role {
            name,
            stop: Some(Box::new(stop)),
            thread: Some(thread),
            grace: JOIN_GRACE,
        }
    }

    /// Joins within `grace` instead of [`JOIN_GRACE`].
    fn grace(mut self, grace: Duration) -> Role {
        self.grace = grace;
        self
    }

    /// Drops the stop sender, then joins the thread within the grace.
    fn stop_and_join(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            join_within(thread, self.name, self.grace);
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The signal thread's stop: closing the handle ends `Signals::forever`.
struct CloseOnDrop(signal_hook::iterator::Handle);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What must hold before `run` touches tmux: tmux answers, every account
/// shares the state folders through the right symlinks, the claude binary
/// exists. Returns the claude binary's path.
fn startup_invariants(config: &Config) -> Result<PathBuf, Vec<String>> {
    let mut problems = Vec::new();
    let tmux = Tmux::new(config.tmux.socket.clone(), TMUX_DEADLINE);
    if let Err(e) = tmux.version() {
        problems.push(format!("tmux does not answer `tmux -V`: {e}"));
    }
    for problem in crate::claude::shared_folders::verify(config) {
        problems.push(format!(
            "shared folders: {problem} (fix: {})",
            problem.hint()
        ));
    }
    let binary = process::which(&config.claude.binary);
    if binary.is_none() {
        problems.push(format!(
            "claude.binary `{}` is not found or not executable",
            config.claude.binary
        ));
    }
    match binary {
        Some(b) if problems.is_empty() => Ok(b),
        _ => Err(problems),
    }
}

fn load_book(path: &Path) -> Book {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Book::new(),
        Err(e) => {
            log::error!(
                "cannot read {}: {e}; rebuilding session records from tmux",
                path.display()
            );
            Book::new()
        }
        Ok(bytes) => match serde_json::from_slice::<SessionsFile>(&bytes) {
            Ok(f) => f.sessions,
            Err(e) => {
                let aside = path.with_extension(format!("json.corrupt-{}", now_ms()));
                log::error!(
                    "{} is corrupt ({e}); kept as {} and rebuilt from tmux",
                    path.display(),
                    aside.display()
                );
                let _ = std::fs::rename(path, &aside);
                Book::new()
            }
        },
    }
}

fn join_within(handle: std::thread::JoinHandle<()>, role: &str, grace: Duration) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = handle.join();
        let _ = tx.send(());
    });
    if rx.recv_timeout(grace).is_err() {
        log::warn!("the {role} thread did not stop within {grace:?}; leaving it");
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Daemon {
    /// Handles one event; `Some(code)` ends the loop.
    fn handle(&mut self, event: Event) -> Option<i32> {
        match event {
            Event::Signal(SIGTERM | SIGINT) => {
                if self.sessions_held.is_some() {
                    // A swap under way finishes first (bounded): the loop
                    // keeps turning so its relaunch can happen.
                    let n = self.book.len().max(1) as u32;
                    let bound = self.config.swap.stop_timeout * n
                        + self.config.claude.startup_timeout
                        + self.config.swap.drain_timeout;
                    log::warn!(
                        "stop requested during a swap: letting it finish first (at most {}s)",
                        bound.as_secs()
                    );
                    self.stop_after_swap = Some(std::time::Instant::now() + bound);
                    return None;
                }
                log::info!("stop requested by signal");
                return Some(exit::OK);
            }
            Event::Signal(SIGHUP) => self.reload(),
            Event::Signal(SIGUSR1) => {
                // During a swap the switcher folds it into one more run.
                log::warn!("SIGUSR1: fail-over requested");
                let _ = self.switcher.send(switcher::Command::SwapNow {
                    to: None,
                    reason: "SIGUSR1".into(),
                    reply: None,
                });
            }
            Event::Signal(other) => log::debug!("ignoring signal {other}"),
            Event::Hooks(batch) => {
                let mut exits = false;
                for (path, mut ev) in batch {
                    if !ev.verified {
                        if let Err(why) = self.replay_credible(&mut ev) {
                            log::warn!(
                                "event file {:?} from before this start not applied: {why}",
                                path.file_name().unwrap_or_default()
                            );
                            let _ = std::fs::remove_file(&path);
                            continue;
                        }
                    }
                    let hook = ev.hook.event.name();
                    if let Err(why) = self.of_its_conversation(&ev) {
                        log::warn!("{why}: ignored");
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    exits |= ev.hook.event == HookEvent::SessionEnd;
                    self.forward_quota_signal(&ev);
                    if session::apply_hook(&mut self.book, &ev) {
                        log::debug!("{}: {hook}", ev.session.as_deref().unwrap_or("?"));
                    }
                    if matches!(ev.hook.event, HookEvent::SessionStart { .. }) {
                        let under = ev.session.clone().zip(
                            ev.config_dir
                                .as_deref()
                                .and_then(|d| self.account_of_home(Path::new(d))),
                        );
                        if let Some(under) = under {
                            self.follow_accounts(&[under], "its SessionStart");
                        }
                    }
                    self.consumed.push((path, ev));
                }
                if exits {
                    // A program is ending: look at tmux now, not at the next tick.
                    let _ = self.watcher.send(session_watcher::Command::Observe);
                }
            }
            Event::Session(report) => self.on_report(report),
            Event::Switcher(notice) => self.on_switcher(notice),
            Event::Dispatch(out) => self.on_dispatch(out),
            Event::Control(crate::daemon::http::Report::Reload { reply }) => {
                self.reload();
                let _ = reply.send(match &self.config_error {
                    Some(e) => Err(e.clone()),
                    None => Ok(()),
                });
            }
            Event::Control(crate::daemon::http::Report::Restart { name, reply }) => {
                let _ = reply.send(self.restart(&name));
            }
            Event::Tick => {
                self.check_shared_folders();
                let _ = self.watcher.send(session_watcher::Command::Observe);
            }
            Event::Watchdog => self.sd.watchdog(),
            Event::Deadline => {
                let _ = self.watcher.send(session_watcher::Command::Observe);
            }
            Event::RoleGone(role) => {
                log::error!("the {role} thread ended unexpectedly; stopping");
                return Some(exit::FAILURE);
            }
        }
        None
    }

    fn on_switcher(&mut self, notice: switcher::Report) {
        match notice {
            switcher::Report::Active(active) => {
                log::info!("active account: {}", active.name);
                self.active = Some(active);
                let _ = self.watcher.send(session_watcher::Command::Observe);
            }
            switcher::Report::SwapStarted {
                id,
                from,
                to,
                reason,
            } => {
                log::warn!("swap {id} started: {from} → {to} ({reason}); sessions are the switcher's until it ends");
                self.notify.send(crate::daemon::notifier::Note::new(
                    crate::daemon::notifier::Kind::SwapStarted,
                    format!("swap {id} started: {from} → {to}: {reason}"),
                    serde_json::json!({"swap_id": id, "from": from, "to": to, "reason": reason}),
                ));
                let _ = self
                    .dispatcher
                    .send(crate::daemon::dispatcher::Command::Paused(Some(format!(
                        "swap {id} under way"
                    ))));
                self.sessions_held = Some(id);
            }
            switcher::Report::Relaunch { active, .. } => {
                let now = now_ms();
                // The switcher stopped them: they are dead, not failed starts.
                for r in self.book.values_mut() {
                    r.failed_starts = 0;
                    r.retry_at_ms = None;
                    r.pane_pid = None;
                    r.set_state(State::Dead, now);
                }
                self.active = Some(active);
                self.sessions_held = None;
                self.in_flight.clear();
                let _ = self.watcher.send(session_watcher::Command::Observe);
            }
            switcher::Report::SwapEnded(result) => {
                log::info!("swap {} ended: {}", result.id, result.result);
                use crate::daemon::notifier::Kind;
                let kind = Kind::for_swap(result.result);
                let text = format!(
                    "swap {} {} → {}: {} in {} ms{}",
                    result.id,
                    result.from,
                    result.to,
                    result.result,
                    result.duration_ms,
                    result
                        .detail
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                );
                self.notify.send(crate::daemon::notifier::Note::new(
                    kind,
                    text,
                    serde_json::to_value(&result).unwrap_or_default(),
                ));
                self.counters.record_swap(
                    result.result,
                    Some(Duration::from_millis(result.duration_ms)),
                );
                self.sessions_held = None;
                let _ = self
                    .dispatcher
                    .send(crate::daemon::dispatcher::Command::Paused(
                        self.no_account.clone(),
                    ));
                let _ = self.watcher.send(session_watcher::Command::Observe);
            }
            switcher::Report::NeedsLogin { account, why } => {
                self.notify.send(crate::daemon::notifier::Note::new(
                    crate::daemon::notifier::Kind::NeedsLogin,
                    format!("account {account} needs a person: {why}"),
                    serde_json::json!({"account": account, "why": why}),
                ));
            }
            switcher::Report::NoAccount {
                paused,
                reason,
                earliest_reset,
            } => {
                self.no_account = paused.then(|| format!("no account can take work: {reason}"));
                if self.sessions_held.is_none() {
                    let _ = self
                        .dispatcher
                        .send(crate::daemon::dispatcher::Command::Paused(
                            self.no_account.clone(),
                        ));
                }
                if paused {
                    self.notify.send(crate::daemon::notifier::Note::new(
                        crate::daemon::notifier::Kind::NoAccount,
                        format!(
                            "no account left ({reason}); dispatch paused; earliest reset {}",
                            earliest_reset
                                .map(|t| crate::sys::time::rfc3339(
                                    UNIX_EPOCH + Duration::from_secs(t)
                                ))
                                .unwrap_or_else(|| "unknown".into())
                        ),
                        serde_json::json!({"reason": reason, "earliest_reset": earliest_reset}),
                    ));
                    let when = earliest_reset
                        .map(|t| crate::sys::time::rfc3339(UNIX_EPOCH + Duration::from_secs(t)))
                        .unwrap_or_else(|| "unknown".into());
                    log::error!("no account left ({reason}); dispatch paused until {when} or a reading drops");
                } else {
                    log::info!("an account can take work again; dispatch resumes");
                }
            }
        }
    }

    fn on_dispatch(&mut self, out: crate::daemon::dispatcher::Report) {
        use crate::daemon::dispatcher::Report as Asked;
        let now = now_ms();
        match out {
            Asked::Task { session, task } => {
                if let Some(r) = self.book.get_mut(&session) {
                    r.task = task;
                }
            }
            Asked::Relocate { session, cwd } => {
                if let Some(r) = self.book.get_mut(&session) {
                    log::info!(
                        "{session}: moving to {} for its task (a fresh conversation there)",
                        cwd.display()
                    );
                    r.cwd = cwd;
                    r.claude_session_id = None;
                    r.failed_starts = 0;
                    r.set_state(State::Dead, now);
                    self.in_flight.insert(session.clone());
                    let _ = self
                        .watcher
                        .send(session_watcher::Command::Execute(vec![Job::Kill {
                            name: session,
                        }]));
                }
            }
            Asked::Grow { pool, name } => {
                if !self.book.contains_key(&name) {
                    let cwd = self
                        .config
                        .pools
                        .iter()
                        .find(|p| p.name == pool)
                        .map(|p| p.cwd.clone())
                        .unwrap_or_default();
                    self.book.insert(
                        name,
                        session::Record {
                            pool,
                            state: State::Dead,
                            since_ms: now,
                            cwd,
                            ..Default::default()
                        },
                    );
                    let _ = self.watcher.send(session_watcher::Command::Observe);
                }
            }
            Asked::Shrink { name } => {
                if let Some(r) = self.book.get_mut(&name) {
                    r.set_state(State::Stopping, now);
                    self.in_flight.insert(name.clone());
                    let _ = self
                        .watcher
                        .send(session_watcher::Command::Execute(vec![Job::Kill { name }]));
                }
            }
            Asked::Counts(c) => self.queues = c,
            Asked::Outcome {
                outcome,
                dispatch_latency,
            } => {
                if let Some(l) = dispatch_latency {
                    self.counters.observe_dispatch(l);
                } else {
                    self.counters.record_task(outcome.as_str());
                }
            }
            Asked::TaskFailed {
                project,
                task,
                reason,
            } => {
                self.notify.send(crate::daemon::notifier::Note::new(
                    crate::daemon::notifier::Kind::TaskFailed,
                    format!("task {project}/{task} failed: {reason}"),
                    serde_json::json!({"project": project, "task": task, "reason": reason}),
                ));
            }
        }
    }

    /// Whether an event file left from before this start (a crash, or hooks
    /// that ran while no daemon did) agrees with the session book: it names
    /// a session we manage, the account home that session's record says, and
    /// that session's conversation. Such a file proves nothing about who
    /// wrote it, so it is applied only where it agrees; readings from
    /// before the start are stale anyway.
    fn replay_credible(&self, ev: &mut crate::claude::hook::RecordedEvent) -> Result<(), String> {
        if ev.kind == "statusline" {
            return Err("a quota reading from before the start (stale)".into());
        }
        let name = ev.session.as_deref().ok_or("it names no session")?;
        let r = self
            .book
            .get(name)
            .ok_or_else(|| format!("{name:?} is no session of ours"))?;
        let account = ev
            .config_dir
            .as_deref()
            .and_then(|d| self.account_of_home(Path::new(d)));
        if r.account.is_some() && account != r.account {
            return Err(format!(
                "{name} runs under {}, the file says {}",
                r.account.as_deref().unwrap_or("?"),
                account.as_deref().unwrap_or("no account of ours")
            ));
        }
        let hook = ev.hook.event.name();
        if let (Some(recorded), Some(said)) = (&r.claude_session_id, &ev.hook.conversation) {
            // A SessionStart is where a new conversation begins (a /clear).
            if !matches!(ev.hook.event, HookEvent::SessionStart { .. }) && said != recorded {
                return Err(format!(
                    "{name}'s conversation is {recorded}, the file's {hook} is of {said:?}"
                ));
            }
        }
        // A Stop or StopFailure must agree with the transcript as it stands.
        let cwd = r.cwd.clone();
        crate::daemon::event_socket::borne_out(ev, Some(&cwd), Duration::ZERO)
    }

    /// A `Stop` or `StopFailure` must be of the conversation its session
    /// runs now: the event socket checked it against that conversation's
    /// transcript, and an older one's would say nothing about today's turn.
    fn of_its_conversation(&self, ev: &crate::claude::hook::RecordedEvent) -> Result<(), String> {
        if !ev.hook.event.ends_a_turn() {
            return Ok(());
        }
        let hook = ev.hook.event.name();
        let Some(name) = ev.session.as_deref() else {
            return Ok(());
        };
        let recorded = self
            .book
            .get(name)
            .and_then(|r| r.claude_session_id.as_deref());
        match (recorded, ev.hook.conversation.as_deref()) {
            (Some(now), Some(said)) if now != said => Err(format!(
                "a {hook} from {name} of conversation {said:?}, which is not its current one ({now})"
            )),
            _ => Ok(()),
        }
    }

    /// Passes quota signals in hook and status-line events to the switcher,
    /// which owns every account's readings.
    fn forward_quota_signal(&self, ev: &crate::claude::hook::RecordedEvent) {
        let Some(home) = ev.config_dir.as_ref().map(PathBuf::from) else {
            return;
        };
        if ev.hook.event == HookEvent::Statusline {
            if let Some((five_hour, seven_day)) = crate::decide::quota::from_statusline(&ev.payload)
            {
                let _ = self.switcher.send(switcher::Command::Reading {
                    home,
                    five_hour,
                    seven_day,
                    source: crate::decide::quota::Source::Statusline,
                });
            }
            return;
        }
        if let HookEvent::StopFailure { error, message } = &ev.hook.event {
            let message = message.clone();
            // The error field first; the text only when the field says nothing we know.
            let kind =
                facts::stop_failure_kind(error).or_else(|| facts::classify_limit_text(&message));
            if let Some(kind) = kind {
                let kind = match (kind, facts::classify_limit_text(&message)) {
                    // rate_limit says "refused", the text says which window.
                    (facts::LimitKind::FiveHour, Some(text_kind)) => text_kind,
                    (k, _) => k,
                };
                let _ = self.switcher.send(switcher::Command::Refusal {
                    home,
                    kind,
                    message,
                    source: crate::decide::quota::Source::StopFailure,
                });
            }
        }
    }

    fn on_report(&mut self, report: session_watcher::Report) {
        let now = now_ms();
        let backoff = self.config.lifecycle.restart_backoff.clone();
        match report {
            session_watcher::Report::Observed(Err(e)) => {
                if self.observe_error.is_none() {
                    log::error!("tmux is unreachable: {e}");
                }
                self.observe_error = Some(e);
            }
            session_watcher::Report::Observed(Ok(list)) => {
                if self.observe_error.take().is_some() {
                    log::info!("tmux answers again");
                }
                for name in session::adopt(&mut self.book, &self.config, &list, now) {
                    log::info!("{name}: adopted (already running, no record of it)");
                }
                let running_under: Vec<(String, String)> = list
                    .iter()
                    .filter_map(|s| {
                        let account = self.account_of_home(s.config_dir.as_deref()?)?;
                        Some((s.name.clone(), account))
                    })
                    .collect();
                self.follow_accounts(&running_under, "its process");
                if self.sessions_held.is_none() {
                    self.vanished(&list, now, &backoff);
                }
                self.observed = Some(list);
                if self.sessions_held.is_none() {
                    self.reconcile(now);
                }
            }
            session_watcher::Report::Launched {
                name,
                pool,
                account,
                cwd,
                pane_pid,
                resumed,
                not_resumable,
                relaunch,
            } => {
                self.in_flight.remove(&name);
                match (&resumed, &not_resumable) {
                    (Some(id), _) => log::info!("{name}: launched under {account}, resuming {id}"),
                    (None, Some(id)) => log::warn!("{name}: launched under {account} as a new conversation: {id} holds no message to resume"),
                    (None, None) => log::info!("{name}: launched under {account}"),
                }
                let launched = session::Launched {
                    pool: &pool,
                    name: &name,
                    cwd,
                    account: &account,
                    pane_pid,
                    relaunch,
                };
                session::on_launched(&mut self.book, launched, now);
                if switcher::failpoint_set(&format!("launched-under:{account}")) {
                    // Test-only: a kill -9 after a relaunch under `account`
                    // and before it is persisted (mid-swap, say).
                    log::error!("fail point launched-under:{account} reached: aborting");
                    std::process::abort();
                }
            }
            session_watcher::Report::Died { name, last_output } => {
                self.in_flight.remove(&name);
                session::on_died(&mut self.book, &name, last_output, &backoff, now);
                if let Some(r) = self.book.get(&name) {
                    match r.state {
                        State::Failed => {
                            log::error!(
                                "{name}: failed to start {} times in a row; retried every {}s: {}",
                                r.failed_starts,
                                r.retry_at_ms.unwrap_or(now).saturating_sub(now) / 1000,
                                r.last_error.as_deref().unwrap_or("")
                            );
                            self.notify.send(crate::daemon::notifier::Note::new(
                                crate::daemon::notifier::Kind::SessionFailedToStart,
                                format!("{name} failed to start: {}", r.last_error.as_deref().unwrap_or("")),
                                serde_json::json!({"session": name, "last_output": r.last_error, "attempts": r.failed_starts}),
                            ));
                        }
                        State::Backoff => log::warn!(
                            "{name}: failed to start ({} in a row), {}; retry in {}s: {}",
                            r.failed_starts,
                            r.state.as_str(),
                            r.retry_at_ms.unwrap_or(now).saturating_sub(now) / 1000,
                            r.last_error.as_deref().unwrap_or("")
                        ),
                        _ => log::warn!(
                            "{name}: its program ended: {}",
                            r.last_error.as_deref().unwrap_or("")
                        ),
                    }
                }
            }
            session_watcher::Report::Killed { name, error } => {
                self.in_flight.remove(&name);
                if self
                    .book
                    .get(&name)
                    .is_some_and(|r| r.state == State::Stopping)
                    && error.is_none()
                {
                    log::info!("{name}: stopped (pool shrinks)");
                    self.book.remove(&name);
                    return;
                }
                match error {
                    Some(e) => {
                        log::error!("{name}: restart requested but it could not be stopped: {e}")
                    }
                    None => log::info!("{name}: stopped; it is relaunched next"),
                }
            }
            // Logged where it happened; the dispatcher's deadlines (one more
            // Enter, then the attempt) deal with a prompt that never arrived.
            session_watcher::Report::NotTyped { .. } => {}
            session_watcher::Report::Stuck { name, screen } => {
                self.in_flight.remove(&name);
                log::error!(
                    "{name}: no SessionStart within {:?}; left alone, its screen: {screen}",
                    self.config.claude.startup_timeout
                );
                self.notify.send(crate::daemon::notifier::Note::new(
                    crate::daemon::notifier::Kind::SessionFailedToStart,
                    format!(
                        "{name} is stuck before start-up (left alone, not typed into): {screen}"
                    ),
                    serde_json::json!({"session": name, "last_output": screen}),
                ));
                session::on_stuck(&mut self.book, &name, screen, now);
            }
        }
    }

    /// A session launched but gone from tmux before `SessionStart` exited so
    /// fast that even its pane was not kept: that is a failed start too.
    fn vanished(&mut self, list: &[SessionInfo], now: u64, backoff: &[Duration]) {
        let present: HashSet<&str> = list.iter().map(|s| s.name.as_str()).collect();
        let gone: Vec<String> = self
            .book
            .iter()
            .filter(|(n, r)| {
                r.state == State::Starting
                    && !present.contains(n.as_str())
                    && !self.in_flight.contains(*n)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            session::on_died(
                &mut self.book,
                &name,
                "the session ended before Claude Code started (no screen kept)".into(),
                backoff,
                now,
            );
        }
    }

    fn reconcile(&mut self, now: u64) {
        let (Some(observed), Some(active)) = (&self.observed, &self.active) else {
            return;
        };
        let actions = session::reconcile(
            &self.config,
            &self.book,
            observed,
            &self.in_flight,
            &active.name,
            now,
        );
        if actions.is_empty() {
            return;
        }
        let active = active.clone();
        let active = &active;
        let mut jobs = Vec::new();
        for action in actions {
            if let Action::Revive { name } = &action {
                log::warn!("{name}: alive though recorded dead (a stop that did not happen, or a crash after its relaunch); taken as it runs");
                if let Some(r) = self.book.get_mut(name) {
                    r.set_state(State::Idle, now);
                }
                continue;
            }
            self.in_flight.insert(action.name().to_string());
            jobs.push(match action {
                Action::Launch { name, cwd, resume } => {
                    let job = self.launch_job(&name, cwd.clone(), resume, active);
                    // On record before the first launch: one that tmux
                    // refuses is then a failed start that backs off and is
                    // reported, not a silent loop.
                    if !self.book.contains_key(&name) {
                        let pool = session::pool_of(&self.config, &name)
                            .map(|p| p.name.clone())
                            .unwrap_or_default();
                        session::on_first_launch(
                            &mut self.book,
                            &name,
                            &pool,
                            cwd,
                            &active.name,
                            now,
                        );
                    }
                    job
                }
                Action::Replace {
                    name,
                    running_under,
                } => {
                    log::warn!(
                        "{name}: runs under {running_under} while {} is active and no swap is under way; relaunching it under {}",
                        active.name,
                        active.name
                    );
                    if let Some(r) = self.book.get_mut(&name) {
                        r.failed_starts = 0;
                        r.retry_at_ms = None;
                        r.set_state(State::Dead, now);
                    }
                    Job::Kill { name }
                }
                Action::CollectDead { name, exit_status } => Job::CollectDead { name, exit_status },
                Action::Revive { .. } => continue,
                Action::ReportStuck { name } => Job::ReportStuck { name },
            });
        }
        let _ = self.watcher.send(session_watcher::Command::Execute(jobs));
    }

    /// The configured account whose home is `dir` (a process's `CLAUDE_CONFIG_DIR`).
    fn account_of_home(&self, dir: &Path) -> Option<String> {
        self.config.account_by_home(dir).map(|a| a.name.clone())
    }

    /// Corrects records by what was observed (`how`): a session's account
    /// is the one its process runs under, whatever was recorded.
    fn follow_accounts(&mut self, running_under: &[(String, String)], how: &str) {
        for (name, was, is) in
            session::follow_accounts(&mut self.book, running_under, &self.in_flight)
        {
            match was {
                Some(was) => log::warn!(
                    "{name}: recorded on {was}, but {how} runs under {is}: the record now says {is}"
                ),
                None => log::info!("{name}: {how} runs under {is}"),
            }
        }
    }

    /// The exact launch of SPEC.md "Sessions".
    fn launch_job(&self, name: &str, cwd: PathBuf, resume: Option<String>, active: &Active) -> Job {
        let pool = session::pool_of(&self.config, name)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let env = vec![
            (
                facts::ENV_CONFIG_DIR.to_string(),
                active.home.to_string_lossy().into_owned(),
            ),
            (facts::ENV_SESSION.to_string(), name.to_string()),
            (
                facts::ENV_STATE_DIR.to_string(),
                self.config.state_dir.to_string_lossy().into_owned(),
            ),
        ];
        let mut argv = vec![self.claude_binary.to_string_lossy().into_owned()];
        argv.extend(self.config.claude.args.iter().cloned());
        // The operator's `claude.env` may hold secrets: never on a command
        // line (tmux's `-e` would show them in `ps` to every user). They go
        // into a 0600 file the pane's shell reads before it becomes Claude
        // Code (`exec`, same pid).
        if !self.config.claude.env.is_empty() {
            match write_env_file(&self.config.state_dir, name, &self.config.claude.env) {
                Ok(file) => {
                    let mut wrapped = vec![
                        "/bin/sh".to_string(),
                        "-c".to_string(),
                        ENV_FILE_SCRIPT.to_string(),
                        file.to_string_lossy().into_owned(),
                    ];
                    wrapped.append(&mut argv);
                    argv = wrapped;
                }
                Err(e) => {
                    // Never without claude.env (it may point Claude Code at a
                    // proxy): the start fails, and says why on its screen.
                    log::error!("{name}: cannot write its claude.env file: {e}");
                    argv = vec![
                        "/bin/sh".to_string(),
                        "-c".to_string(),
                        "echo \"claude-failover: cannot write the claude.env file: $0\" >&2; exit 1"
                            .to_string(),
                        e.to_string(),
                    ];
                }
            }
        } else {
            // No claude.env (any more): no file of old values left behind.
            let _ = std::fs::remove_file(
                self.config
                    .state_dir
                    .join("env")
                    .join(format!("{name}.env")),
            );
        }
        let resume = resume.map(|id| {
            let transcript = facts::transcript_path(&active.home, &cwd, &id);
            (id, transcript)
        });
        Job::Launch {
            launch: Launch {
                name: name.to_string(),
                cwd,
                width: self.config.tmux.width,
                height: self.config.tmux.height,
                env,
                argv,
            },
            resume,
            relaunch: self.book.contains_key(name),
            pool,
            account: active.name.clone(),
        }
    }

    /// Re-validates the shared folders: a divergence is reported (log,
    /// `/healthz`), never healed behind the operator's back.
    fn check_shared_folders(&mut self) {
        let problems: Vec<String> = crate::claude::shared_folders::verify(&self.config)
            .iter()
            .map(|p| p.to_string())
            .collect();
        for p in problems
            .iter()
            .filter(|p| !self.shared_problems.contains(p))
        {
            log::error!("shared folders diverged: {p}");
            self.notify.send(crate::daemon::notifier::Note::new(
                crate::daemon::notifier::Kind::SharedFoldersDiverged,
                format!("shared folders diverged: {p}"),
                serde_json::json!({"problem": p}),
            ));
        }
        if problems.is_empty() && !self.shared_problems.is_empty() {
            log::info!("shared folders are consistent again");
        }
        self.shared_problems = problems;
    }

    /// `POST /sessions/NAME/restart`: kill it; reconcile relaunches it resumed.
    fn restart(&mut self, name: &str) -> Result<(), String> {
        if session::pool_of(&self.config, name).is_none() {
            return Err(format!("{name} is not a managed session"));
        }
        if let Some(r) = self.book.get_mut(name) {
            // An operator's restart clears the back-off: they fixed something.
            r.failed_starts = 0;
            r.retry_at_ms = None;
            r.set_state(State::Dead, now_ms());
        }
        self.in_flight.insert(name.to_string());
        let _ = self
            .watcher
            .send(session_watcher::Command::Execute(vec![Job::Kill {
                name: name.to_string(),
            }]));
        Ok(())
    }

    /// SIGHUP: build the new config aside; refuse a bad one (and say so).
    fn reload(&mut self) {
        self.sd.reloading();
        self.reload_config();
        if let Some(e) = &self.config_error {
            self.notify.send(crate::daemon::notifier::Note::new(
                crate::daemon::notifier::Kind::ReloadRefused,
                format!("config reload refused, the running config stays: {e}"),
                serde_json::json!({"error": e}),
            ));
        } else {
            self.notify.reconfigure(self.config.notify.clone());
        }
        self.sd.notify("READY=1");
    }

    fn reload_config(&mut self) {
        match Config::load(&self.config_path) {
            Err(e) => {
                log::error!("reload refused, the running config stays: {e}");
                self.config_error = Some(e.to_string());
            }
            Ok(next)
                if next.state_dir != self.config.state_dir
                    || next.tmux.socket != self.config.tmux.socket
                    || next.http != self.config.http
                    || next.claude.binary != self.config.claude.binary =>
            {
                let e = "state_dir, tmux.socket, http.* and claude.binary cannot change on reload; restart the daemon for those".to_string();
                log::error!("reload refused, the running config stays: {e}");
                self.config_error = Some(e);
            }
            Ok(next) if !crate::claude::shared_folders::verify(&next).is_empty() => {
                let e = format!(
                    "shared folders: {}",
                    crate::claude::shared_folders::verify(&next)[0]
                );
                log::error!("reload refused, the running config stays: {e}");
                self.config_error = Some(e);
            }
            Ok(next) => {
                log::info!("config reloaded from {}", self.config_path.display());
                self.config_error = None;
                let _ = self
                    .switcher
                    .send(switcher::Command::Reconfigure(Box::new(next.clone())));
                let _ = self
                    .dispatcher
                    .send(crate::daemon::dispatcher::Command::Reconfigure(Box::new(
                        next.clone(),
                    )));
                // Sessions no longer in any pool's range are not ours to drive
                // any more: forget them (they stay running, listed as unmanaged).
                self.book
                    .retain(|n, _| session::pool_of(&next, n).is_some());
                self.config = next;
                let _ = self.watcher.send(session_watcher::Command::Observe);
            }
        }
    }

    /// The soonest back-off retry or start-up timeout.
    fn next_deadline(&self) -> Option<Duration> {
        let now = now_ms();
        let startup = self.config.claude.startup_timeout.as_millis() as u64;
        self.book
            .values()
            .filter_map(|r| match r.state {
                State::Backoff | State::Failed => r.retry_at_ms,
                State::Starting => r.launched_at_ms.map(|t| t + startup + 1),
                _ => None,
            })
            // A deadline already past has woken us once; don't spin on it.
            .filter(|&at| at > now)
            .min()
            .map(|at| Duration::from_millis(at - now))
    }

    /// Persist what changed, drop consumed event files, publish, tell systemd.
    fn after_turn(&mut self) {
        self.persist();
        // Persisted first: the dispatcher deletes each event file once it has
        // handled it too, so a crash replays an event, never loses one.
        for (path, ev) in self.consumed.drain(..) {
            if let Err(crossbeam_channel::SendError(crate::daemon::dispatcher::Command::Hook(
                path,
                _,
            ))) = self
                .dispatcher
                .send(crate::daemon::dispatcher::Command::Hook(path, Box::new(ev)))
            {
                let _ = std::fs::remove_file(path);
            }
        }
        let view: Vec<crate::daemon::dispatcher::SessionView> = self
            .book
            .iter()
            .map(|(name, r)| crate::daemon::dispatcher::SessionView {
                name: name.clone(),
                pool: r.pool.clone(),
                state: r.state,
                cwd: r.cwd.clone(),
                account: r.account.clone(),
                claude_session_id: r.claude_session_id.clone(),
            })
            .collect();
        let snapshot: Vec<switcher::SessionSnapshot> = self
            .book
            .iter()
            .map(|(name, r)| switcher::SessionSnapshot {
                name: name.clone(),
                state: r.state,
                account: r.account.clone(),
                claude_session_id: r.claude_session_id.clone(),
                cwd: r.cwd.to_string_lossy().into_owned(),
                task: r.task.clone(),
                since_ms: r.since_ms,
            })
            .collect();
        if snapshot != self.sent_switcher {
            let _ = self
                .switcher
                .send(switcher::Command::Sessions(snapshot.clone()));
            self.sent_switcher = snapshot;
        }
        if view != self.sent_sessions {
            let _ = self
                .dispatcher
                .send(crate::daemon::dispatcher::Command::Sessions(view.clone()));
            self.sent_sessions = view;
        }
        self.publish();
        if !self.ready && self.observed.is_some() && self.active.is_some() {
            self.ready = true;
            self.sd.notify("READY=1");
            log::info!("ready");
        }
    }

    fn persist(&mut self) {
        let file = SessionsFile {
            sessions: self.book.clone(),
        };
        let Ok(text) = serde_json::to_string_pretty(&file) else {
            return;
        };
        if text == self.persisted {
            return;
        }
        let path = self.config.state_dir.join("sessions.json");
        match atomic_file::write(&path, text.as_bytes()) {
            Ok(()) => self.persisted = text,
            Err(e) => log::error!("cannot write {}: {e}", path.display()),
        }
    }

    fn publish(&self) {
        let mut health = Vec::new();
        if let Some(e) = &self.observe_error {
            health.push(format!("tmux unreachable: {e}"));
        }
        health.extend(
            self.shared_problems
                .iter()
                .map(|p| format!("shared folders: {p}")),
        );
        let managed: HashSet<&str> = self.book.keys().map(String::as_str).collect();
        let unmanaged = self
            .observed
            .iter()
            .flatten()
            .filter(|s| {
                !managed.contains(s.name.as_str())
                    && session::pool_of(&self.config, &s.name).is_none()
            })
            .map(|s| s.name.clone())
            .collect();
        let view = self.view.read().clone();
        if let Some(p) = &view.partial_swap {
            health.push(format!("partial swap: {p}"));
        }
        if let Some(why) = &view.dispatch_paused {
            health.push(format!("every account exhausted: {why}"));
        }
        let accounts = self
            .config
            .accounts
            .iter()
            .map(|a| {
                let auth = match Credentials::read(&a.home) {
                    Ok(c) if c.expired(SystemTime::now()) && c.has_refresh_token => {
                        "ok (access token expired; Claude Code renews it at launch)".to_string()
                    }
                    Ok(c) if c.expired(SystemTime::now()) => "expired".to_string(),
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("unusable: {e}"),
                };
                let v = view.accounts.iter().find(|v| v.name == a.name);
                let window = |w: Option<crate::decide::quota::Window>| {
                    let q = &v?.quota;
                    let w = w?;
                    Some(serde_json::json!({
                        "utilization": w.utilization,
                        "resets_at": w.resets_at.map(|t| crate::sys::time::rfc3339(UNIX_EPOCH + Duration::from_secs(t))),
                        "source": q.source,
                        "observed_at": q.observed_at_ms.map(|t| crate::sys::time::rfc3339(UNIX_EPOCH + Duration::from_millis(t))),
                    }))
                };
                let auth_ok = auth.starts_with("ok");
                let usable = auth_ok && v.is_none_or(|v| v.usable);
                let reason = if auth_ok { v.and_then(|v| v.reason.clone()) } else { Some(auth.clone()) };
                AccountStatus {
                    name: a.name.clone(),
                    home: a.home.to_string_lossy().into_owned(),
                    usable,
                    reason,
                    five_hour: window(v.and_then(|v| v.quota.five_hour)),
                    seven_day: window(v.and_then(|v| v.quota.seven_day)),
                    auth,
                }
            })
            .collect();
        let sessions = self
            .book
            .iter()
            .map(|(name, r)| SessionStatus {
                name: name.clone(),
                pool: r.pool.clone(),
                state: r.state.as_str().to_string(),
                account: r.account.clone(),
                claude_session_id: r.claude_session_id.clone(),
                task: r.task.clone(),
                cwd: r.cwd.to_string_lossy().into_owned(),
                since: crate::sys::time::rfc3339(UNIX_EPOCH + Duration::from_millis(r.since_ms)),
                restarts: r.restarts,
                last_error: r.last_error.clone(),
                pane_pid: r.pane_pid,
            })
            .collect();
        status::publish(
            &self.published,
            Status {
                version: env!("CARGO_PKG_VERSION").to_string(),
                active_account: self.active.as_ref().map(|a| a.name.clone()),
                partial_swap: view.partial_swap.is_some(),
                swap_in_progress: view.swap_in_progress.is_some(),
                last_swap: view
                    .last_swap
                    .as_ref()
                    .and_then(|l| serde_json::to_value(l).ok()),
                accounts,
                sessions,
                unmanaged_sessions: unmanaged,
                config_error: self.config_error.clone(),
                health_problems: health,
                queues: self.queues.clone(),
            },
        );
    }
}

/// Reads the `claude.env` file named by `$0`, then becomes the program in
/// `"$@"` (Claude Code, with its arguments).
const ENV_FILE_SCRIPT: &str = "set -a; . \"$0\"; set +a; exec \"$@\"";

/// Writes `<state_dir>/env/<session>.env` (0600): one `NAME='value'` line
/// per variable, quoted for the shell. Names are checked by the config.
fn write_env_file(
    state_dir: &Path,
    session: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = state_dir.join("env");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let mut text = String::new();
    for (k, v) in env {
        text.push_str(&format!("{k}='{}'\n", v.replace('\'', "'\\''")));
    }
    let path = dir.join(format!("{session}.env"));
    crate::store::atomic_file::write_with_mode(&path, text.as_bytes(), 0o600)?;
    Ok(path)
}
