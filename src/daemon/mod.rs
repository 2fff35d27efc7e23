//! `claude-failover run`: the main loop, and one module per role thread.
//!
//! This file is the loop on one screen: the closed [`Event`] enum of
//! everything that can wake the daemon, [`Daemon::next_event`] (a single
//! `select!`, one arm per source), [`Daemon::handle`], then
//! [`Daemon::after_turn`] (persist what changed, hand hook events to the
//! dispatcher, send the typed session snapshots, publish, tell systemd).
//! The loop owns the session book; every other mutable thing has one owner
//! thread, and the loop talks to each over its channel (`Command` in,
//! `Report` out).
//!
//! The loop's own work, by cause: `on_hooks` (hook events), `on_sessions`
//! (the session watcher's reports: reconcile and launches), `on_reports`
//! (the switcher's and the dispatcher's), `reload` (SIGHUP, `POST /reload`,
//! the shared-folder check), `snapshot` (`sessions.json`, the status
//! snapshot). `start` builds it all; `roles` holds the role threads and
//! stops them in order.
//!
//! The roles: `session_watcher` (the one tmux writer), `dispatcher` (queues
//! and typing, as asked of the watcher), `switcher` (accounts and swaps),
//! `quota_monitor` (the usage endpoint), `event_socket`/`event_watcher`
//! (hook events in), `http` (the control plane), `notifier` (Telegram,
//! webhook). `status` and `metrics` are what HTTP serves.

mod on_hooks;
mod on_reports;
mod on_sessions;
mod reload;
mod roles;
mod snapshot;
mod start;

pub mod dashboard;
pub mod dispatcher;
pub mod event_socket;
pub mod event_stream;
pub mod event_watcher;
pub mod fleet;
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

use crossbeam_channel::{after, never, select, tick, Receiver, Sender};
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
use start::Started;
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
    /// follows the switcher's reports in order; whether a swap is under way is the
    /// switcher's answer (`AccountsView::swap_in_progress`), not this.
    sessions_held: Option<String>,
    /// The last session snapshot sent to the switcher.
    sent_switcher: Vec<switcher::SessionSnapshot>,
    dispatcher: Sender<crate::daemon::dispatcher::Command>,
    /// The last session snapshot sent to the dispatcher.
    sent_sessions: Vec<crate::daemon::dispatcher::SessionView>,
    queues: std::collections::BTreeMap<String, crate::daemon::status::QueueCounts>,
    /// No account can take work: why.
    no_account: Option<String>,
    /// Pools the switcher holds (see `switcher::Report::Held`), with why.
    held_pools: std::collections::BTreeMap<String, String>,
    notify: crate::daemon::notifier::NotifyHandle,
    counters: Arc<crate::daemon::metrics::Counters>,
    /// SIGTERM came during a swap: stop once it ends, or at this deadline.
    stop_after_swap: Option<std::time::Instant>,
    /// Sessions whose hooks went silent while they work, and for how long (ms).
    hooks_silent: std::collections::BTreeMap<String, u64>,
    /// Sessions that looked silent at the last look, with their transcript's
    /// time then: reported only if it changed again since.
    hooks_silent_seen: std::collections::BTreeMap<String, u64>,
    /// The fleet's event stream, and each session as last published there.
    feed: crate::daemon::event_stream::Events,
    published_sessions: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Runs the daemon in the foreground; returns the exit status.
pub fn run(config_path: &Path) -> crate::commands::Outcome {
    let Started {
        mut daemon,
        mut inputs,
        roles,
        lock,
    } = start::start(config_path)?;
    let _ = daemon.watcher.send(session_watcher::Command::Observe);
    let code = loop {
        let event = daemon.next_event(&inputs);
        if let Some(code) = daemon.handle(event) {
            break code;
        }
        if let Some(code) = daemon.stop_once_the_swap_ends() {
            break code;
        }
        daemon.after_turn();
        inputs.follow(&daemon.config);
    };
    daemon.sd.notify("STOPPING=1");
    daemon.persist();
    log::info!("stopping; tmux sessions are left running for the next start to adopt");
    // The main loop's senders to the watcher, the switcher and the
    // dispatcher go first, then each role in `Roles`' field order; the
    // state folder's lock last.
    drop(daemon);
    drop(roles);
    drop(lock);
    Ok(code)
}

/// Every source the main loop waits on. A role's channel that disconnects
/// is that role gone ([`Event::RoleGone`]).
struct Inputs {
    signals: Receiver<i32>,
    hooks: Receiver<Batch>,
    sessions: Receiver<session_watcher::Report>,
    switcher: Receiver<switcher::Report>,
    http: Receiver<crate::daemon::http::Report>,
    dispatcher: Receiver<crate::daemon::dispatcher::Report>,
    /// Disconnects when the quota monitor's thread ends, whatever the cause.
    monitor_gone: Receiver<()>,
    /// Every `lifecycle.interval` (re-armed when a reload changes it).
    ticker: Receiver<std::time::Instant>,
    interval: Duration,
    /// systemd's watchdog, when it asks for one; else never.
    watchdog: Receiver<std::time::Instant>,
}

impl Inputs {
    /// Re-arms the ticker when a reload changed the interval.
    fn follow(&mut self, config: &Config) {
        if config.lifecycle.interval != self.interval {
            self.interval = config.lifecycle.interval;
            self.ticker = tick(self.interval);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Daemon {
    /// Waits for the next thing to happen: one `select!`, one arm per source.
    fn next_event(&self, i: &Inputs) -> Event {
        let deadline = self.next_deadline().map(after).unwrap_or_else(never);
        select! {
            recv(i.signals) -> s => s.map(Event::Signal).unwrap_or(Event::RoleGone("signals")),
            recv(i.hooks) -> b => b.map(Event::Hooks).unwrap_or(Event::RoleGone("event watcher")),
            recv(i.sessions) -> r => r.map(Event::Session).unwrap_or(Event::RoleGone("session watcher")),
            recv(i.switcher) -> a => a.map(Event::Switcher).unwrap_or(Event::RoleGone("switcher")),
            recv(i.http) -> c => c.map(Event::Control).unwrap_or(Event::RoleGone("http")),
            recv(i.dispatcher) -> d => d.map(Event::Dispatch).unwrap_or(Event::RoleGone("dispatcher")),
            recv(i.monitor_gone) -> _ => Event::RoleGone("quota monitor"),
            recv(i.ticker) -> _ => Event::Tick,
            recv(i.watchdog) -> _ => Event::Watchdog,
            recv(deadline) -> _ => Event::Deadline,
        }
    }

    /// After a SIGTERM that came during a swap: the exit status once the
    /// swap ended (or its bound passed).
    fn stop_once_the_swap_ends(&self) -> Option<i32> {
        let deadline = self.stop_after_swap?;
        if self.sessions_held.is_none() && self.view.read().swap_in_progress.is_none() {
            log::info!("the swap ended; stopping as requested");
            return Some(exit::OK);
        }
        if std::time::Instant::now() > deadline {
            log::error!("the swap did not end in time; stopping anyway: the next start finishes or rolls it back from its journal");
            return Some(exit::OK);
        }
        None
    }

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
            Event::Hooks(batch) => self.on_hooks(batch),
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
                self.check_hooks_heard();
                self.restart_unconfirmed();
                let _ = self.watcher.send(session_watcher::Command::Observe);
            }
            Event::Watchdog => self.sd.watchdog(),
            Event::Deadline => {
                self.restart_unconfirmed();
                let _ = self.watcher.send(session_watcher::Command::Observe);
            }
            Event::RoleGone(role) => {
                log::error!("the {role} thread ended unexpectedly; stopping");
                return Some(exit::FAILURE);
            }
        }
        None
    }

    /// The soonest back-off retry, start-up timeout or (live mode) verify
    /// timeout.
    fn next_deadline(&self) -> Option<Duration> {
        let now = now_ms();
        let startup = self.config.claude.startup_timeout.as_millis() as u64;
        let verify = self.config.swap.verify_timeout.as_millis() as u64;
        self.book
            .values()
            .filter_map(|r| {
                let unconfirmed = r
                    .verify
                    .as_ref()
                    .and_then(|v| v.active_ms)
                    .map(|t| t + verify + 1);
                let state = match r.state {
                    State::Backoff | State::Failed => r.retry_at_ms,
                    State::Starting => r.launched_at_ms.map(|t| t + startup + 1),
                    _ => None,
                };
                state.into_iter().chain(unconfirmed).min()
            })
            // A deadline already past has woken us once; don't spin on it.
            .filter(|&at| at > now)
            .min()
            .map(|at| Duration::from_millis(at - now))
    }

    /// A `session` event on the stream for each session whose state,
    /// account, task, restarts or last error changed (and one when it goes).
    fn publish_session_changes(&mut self) {
        let mut now = std::collections::BTreeMap::new();
        for (name, r) in &self.book {
            let v = serde_json::json!({
                "name": name,
                "pool": r.pool,
                "state": r.state.as_str(),
                "account": r.account,
                "task": r.task,
                "restarts": r.restarts,
                "last_error": r.last_error,
                "since": crate::sys::time::rfc3339(UNIX_EPOCH + Duration::from_millis(r.since_ms)),
            });
            if self.published_sessions.get(name) != Some(&v) {
                self.feed
                    .publish(crate::daemon::event_stream::Kind::Session, v.clone());
            }
            now.insert(name.clone(), v);
        }
        for name in self.published_sessions.keys() {
            if !now.contains_key(name) {
                self.feed.publish(
                    crate::daemon::event_stream::Kind::Session,
                    serde_json::json!({"name": name, "state": "gone"}),
                );
            }
        }
        self.published_sessions = now;
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
                last_tool: r.last_tool.clone(),
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
        self.publish_session_changes();
        self.publish();
        if !self.ready && self.observed.is_some() && self.active.is_some() {
            self.ready = true;
            self.sd.notify("READY=1");
            log::info!("ready");
        }
    }
}
