//! The switcher: the one owner of the mutable account state — which account
//! is active, every account's quota readings, the swap under way, the last
//! swap, a sticky partial swap — and the one thread that performs swaps,
//! one at a time, journalled in `swap.journal`.
//!
//! A swap: checkpoint the sessions into the journal → drain (threshold swaps
//! wait up to `swap.drain_timeout` for working sessions to end their turn; a
//! refused request does not wait) → stop every managed session (SIGTERM,
//! kill after `swap.stop_timeout`) → flip (`active.json`, `active_link`) →
//! `ensure_for_account(target)` (on failure the flip is rolled back; if the
//! rollback fails too, a sticky partial-swap state refuses every later swap)
//! → the main loop relaunches every session with `--resume` under the target
//! → verify each came back → journal removed. A daemon restarted with a
//! journal on disk finishes or rolls back from the recorded phase.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, tick, Receiver, Sender};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::claude::facts::LimitKind;
use crate::config::Config;
use crate::daemon::event_stream::{Events, Kind as EventKind};
use crate::decide::quota::{self, AccountQuota, Decision, Source, Window};
use crate::store::atomic_file;
use crate::sys::tmux::Tmux;

mod live;

/// `<state_dir>/active.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveFile {
    pub account: String,
    /// RFC 3339.
    pub since: String,
    pub swap_id: Option<String>,
}

/// The active account as the main loop needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    pub name: String,
    pub home: PathBuf,
}

use crate::decide::swap_plan::{self, Happened, OpQueue, Plan, Recovery, Step};
pub use crate::decide::swap_plan::{Phase, Refusal, SessionSnapshot, SwapOutcome};

/// A session as the swap found it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionCheckpoint {
    pub name: String,
    pub claude_session_id: Option<String>,
    pub cwd: String,
    pub task: Option<String>,
    pub state: crate::decide::session::State,
}

/// Every tmux call's deadline (the switcher only reads: it lists sessions).
const TMUX_DEADLINE: Duration = Duration::from_secs(10);

/// The journal's file name in the state dir.
pub const JOURNAL_FILE: &str = "swap.journal";

/// `<state_dir>/swap.journal`: exists only while a swap is under way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub id: String,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub phase: Phase,
    pub started_at: String,
    pub sessions: Vec<SessionCheckpoint>,
    /// Set when the rollback failed: why.
    pub partial: Option<String>,
    /// `live` for a live swap (absent: a restart-mode swap of wave 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// How a swap ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwapResult {
    pub id: String,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub started_at: String,
    pub duration_ms: u64,
    pub result: SwapOutcome,
    /// Why it was refused (only with [`SwapOutcome::Refused`]); not shown.
    #[serde(skip)]
    pub refusal: Option<Refusal>,
    pub detail: Option<String>,
    /// Sessions whose conversation id changed on resume: (session, old, new).
    pub changed_ids: Vec<(String, String, String)>,
    /// `live` or `restart`.
    pub mode: &'static str,
    /// Live mode: sessions that did not show the new account in time after
    /// their next request and were restarted under the seat.
    pub restarted: Vec<String>,
    /// Each phase it went through, in order, with how long it took.
    pub phases: Vec<PhaseTime>,
}

impl SwapResult {
    /// A swap found interrupted in its journal at start, and ended then.
    fn after_restart(j: &Journal, result: SwapOutcome, mode: &'static str) -> SwapResult {
        SwapResult {
            id: j.id.clone(),
            from: j.from.clone(),
            to: j.to.clone(),
            reason: j.reason.clone(),
            started_at: j.started_at.clone(),
            duration_ms: 0,
            result,
            refusal: None,
            detail: Some(format!("interrupted at {}", j.phase.as_str())),
            changed_ids: Vec::new(),
            mode,
            restarted: Vec::new(),
            phases: Vec::new(),
        }
    }
}

/// One phase of a swap and its duration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseTime {
    pub phase: &'static str,
    pub ms: u64,
}

/// Swaps kept for `/status.swap_history` and the dashboard.
pub const SWAP_HISTORY: usize = 50;

/// A session whose conversation id changed on resume: (session, old, new).
pub type ChangedId = (String, String, String);

/// What others ask of the switcher.
pub enum Command {
    /// A new config was applied.
    Reconfigure(Box<Config>),
    /// A window reading for the account whose home is `home`.
    Reading {
        home: PathBuf,
        five_hour: Option<Window>,
        seven_day: Option<Window>,
        /// The usage endpoint's limits (`None` from the status line).
        limits: Option<Vec<quota::Limit>>,
        source: Source,
    },
    /// A refused request (StopFailure, pane text) under the account at `home`.
    Refusal {
        home: PathBuf,
        kind: LimitKind,
        message: String,
        source: Source,
        /// The refused session's pool model (a model-scoped refusal binds it).
        model: Option<String>,
    },
    /// The usage endpoint answered 401/403 for `account`.
    NeedsLogin { account: String, why: String },
    /// Fail over now (SIGUSR1, `POST /swap`), to `to` or the best other account.
    SwapNow {
        to: Option<String>,
        reason: String,
        reply: Option<Sender<SwapResult>>,
    },
    /// The main loop's newest view of its sessions (sent when it changes).
    Sessions(Vec<SessionSnapshot>),
    /// Several requests handled before one decision (a poll round's readings).
    Batch(Vec<Command>),
    /// Live mode: the seat's credentials file changed (inotify).
    SeatChanged,
    /// A reading another machine of the fleet shared (kept when newer).
    FleetReading(crate::store::fleet::SharedReading),
    /// Live mode: a session did not show the new account after the swap
    /// `swap_id` and was restarted under the seat.
    Restarted { swap_id: String, session: String },
}

/// A requested swap waiting in the switcher's single-slot queue: its cause.
struct SwapCause {
    to: Option<String>,
    reason: String,
    reply: Option<Sender<SwapResult>>,
}

/// What the switcher tells the main loop.
#[derive(Debug, Clone)]
pub enum Report {
    /// The active account (at start, and after every flip or rollback).
    Active(Active),
    /// A swap started: stop reconciling and dispatching; the switcher stops the sessions.
    SwapStarted {
        id: String,
        from: String,
        to: String,
        reason: String,
    },
    /// Relaunch every stopped session with `--resume` under `active`.
    Relaunch { active: Active, resume_tasks: bool },
    /// Live mode: the seat holds `to`'s login since `at_ms`; every running
    /// session is to show it by its next request (verified from its traffic).
    LiveSwapped {
        id: String,
        from: String,
        to: String,
        at_ms: u64,
    },
    /// The swap ended.
    SwapEnded(SwapResult),
    /// No account can take the work (or one can again): pause or resume dispatch.
    NoAccount {
        paused: bool,
        reason: String,
        earliest_reset: Option<u64>,
    },
    /// An account needs a person (login, billing).
    NeedsLogin { account: String, why: String },
    /// The pools the active account cannot serve (a model-scoped limit) and
    /// no other account serves with the rest: they take no new task. Sent
    /// whenever the set changes (empty: every pool takes tasks).
    Held(std::collections::BTreeMap<String, String>),
}

/// The switcher's published view for status and HTTP (read-only for others).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AccountsView {
    pub active: String,
    pub accounts: Vec<AccountView>,
    pub swap_in_progress: Option<String>,
    pub partial_swap: Option<String>,
    pub last_swap: Option<SwapResult>,
    /// The last [`SWAP_HISTORY`] swaps, newest last.
    pub swap_history: Vec<SwapResult>,
    pub dispatch_paused: Option<String>,
    /// Pools held by a model-scoped limit of the active account, with why.
    pub held_pools: std::collections::BTreeMap<String, String>,
    /// The managed sessions in the main loop's newest snapshot (the fleet
    /// lease says how many this machine runs).
    pub sessions: u32,
    /// The target of the swap under way (the fleet lease says where this
    /// machine is moving, for as long as the swap takes).
    pub moving_to: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AccountView {
    pub name: String,
    pub usable: bool,
    pub reason: Option<String>,
    pub quota: AccountQuota,
    /// The pools its model-scoped limits keep from it, with why.
    pub blocked_pools: std::collections::BTreeMap<String, String>,
}

pub type SharedView = Arc<RwLock<AccountsView>>;

pub struct Switcher {
    /// Dropping it ends the thread.
    pub requests: Sender<Command>,
    pub thread: JoinHandle<()>,
    pub view: SharedView,
}

/// The switcher thread's own state, the only mutable account state in the
/// daemon: the active account, every account's quota, the swap history.
struct Accounts {
    config: Config,
    active: Active,
    quotas: Vec<(String, AccountQuota)>,
    last_swap_ms: Option<u64>,
    last_swap: Option<SwapResult>,
    history: std::collections::VecDeque<SwapResult>,
    /// The swap under way: the phase entered last and when, and the ones before.
    phase_clock: Option<(Phase, Instant)>,
    phase_times: Vec<PhaseTime>,
    /// The fleet's event stream, and each account's quota as last published there.
    feed: Events,
    quota_published: std::collections::HashMap<String, String>,
    partial: Option<String>,
    no_account: Option<String>,
    /// Pools the active account cannot serve, as last reported.
    held: std::collections::BTreeMap<String, String>,
    tmux: Tmux,
    /// The other machines (`fleet.redis`): shared readings, claims, swap events.
    fleet: crate::daemon::fleet::FleetHandle,
    /// The session watcher's requests: it stops the sessions for a swap.
    watcher: Sender<crate::daemon::session_watcher::Command>,
    out: Sender<Report>,
    /// The newest session snapshot the main loop sent
    /// ([`Command::Sessions`]): what a swap checkpoints, drains and verifies from.
    sessions: Vec<SessionSnapshot>,
    /// The request channel. A swap reads it while it waits (drain, verify)
    /// so snapshots keep arriving; other requests read then wait in `deferred`.
    requests: Receiver<Command>,
    deferred: std::collections::VecDeque<Command>,
    /// Requested swaps (SIGUSR1) made while one runs: at most one more run.
    requested: OpQueue<SwapCause>,
    view: SharedView,
    journal_path: PathBuf,
    active_path: PathBuf,
    /// Accounts whose readings changed since they were last written to
    /// `usage/`: readings are coalesced (the newest per account) and
    /// persisted at most once a second, so a flood of events never holds a
    /// swap request up behind one fsync each.
    unsaved: std::collections::BTreeSet<String>,
    last_saved: std::time::Instant,
    /// Live mode: the seat's credentials changed (or may have): sync them
    /// with the active home at the next turn.
    seat_dirty: bool,
    last_seat_sync: std::time::Instant,
    /// Live mode: the seat's lock a swap that just ended still holds, let
    /// go once its answer is sent (the answer does not wait behind the
    /// release, which wakes every Claude Code watching the seat).
    seat_lock: Option<crate::claude::seat::SeatLock>,
}

impl Switcher {
    /// Loads (or rebuilds) the account state, finishes or rolls back a swap
    /// left by a previous run, and announces the active account on `out`
    /// before returning, so the main loop knows it at once.
    pub fn start(
        config: &Config,
        out: Sender<Report>,
        watcher: Sender<crate::daemon::session_watcher::Command>,
        feed: Events,
        fleet: crate::daemon::fleet::FleetHandle,
    ) -> Switcher {
        let active_path = config.state_dir.join("active.json");
        let journal_path = config.state_dir.join(JOURNAL_FILE);
        let active = load_or_rebuild(&active_path, config);
        let view: SharedView = Arc::new(RwLock::new(AccountsView::default()));
        let (requests, rx) = crossbeam_channel::unbounded::<Command>();
        let mut state = Accounts {
            quotas: config
                .accounts
                .iter()
                .map(|a| (a.name.clone(), load_quota(config, &a.name)))
                .collect(),
            config: config.clone(),
            active,
            last_swap_ms: None,
            last_swap: None,
            history: Default::default(),
            phase_clock: None,
            phase_times: Vec::new(),
            feed,
            quota_published: Default::default(),
            partial: None,
            no_account: None,
            held: Default::default(),
            tmux: Tmux::new(config.tmux.socket.clone(), TMUX_DEADLINE),
            fleet,
            watcher,
            out,
            sessions: Vec::new(),
            requests: rx,
            deferred: Default::default(),
            requested: OpQueue::default(),
            view: view.clone(),
            journal_path,
            active_path,
            unsaved: Default::default(),
            last_saved: std::time::Instant::now(),
            seat_dirty: true,
            last_seat_sync: std::time::Instant::now(),
            seat_lock: None,
        };
        // What a crash between a prepared write and its commit left
        // (a copy of a login among them).
        for name in [
            JOURNAL_FILE,
            "active.json",
            crate::claude::facts::CREDENTIALS_FILE,
        ] {
            atomic_file::remove_temps_of(&config.state_dir, name);
        }
        state.recover();
        state.sync_seat();
        if let Some(seat) = config.live_seat() {
            live::watch_seat(seat, requests.clone());
        }
        let _ = state.out.send(Report::Active(state.active.clone()));
        state.publish();
        let thread = std::thread::Builder::new()
            .name("switcher".into())
            .spawn(move || state.serve())
            .expect("spawn switcher thread");
        Switcher {
            requests,
            thread,
            view,
        }
    }
}

/// Reads `active.json`; a missing, corrupt or stale one (naming an account
/// no longer configured) is reported and rebuilt with the first account.
pub fn load_or_rebuild(path: &Path, config: &Config) -> Active {
    let read = std::fs::read(path)
        .ok()
        .map(|b| serde_json::from_slice::<ActiveFile>(&b));
    match read {
        Some(Ok(f)) => match config.accounts.iter().find(|a| a.name == f.account) {
            Some(a) => return active_of(config, a),
            None => log::warn!(
                "{} names account {:?}, which is not configured; using {:?}",
                path.display(),
                f.account,
                config.accounts[0].name
            ),
        },
        Some(Err(e)) => log::warn!(
            "{} is corrupt ({e}); rebuilding it with account {:?}",
            path.display(),
            config.accounts[0].name
        ),
        None => {}
    }
    let first = &config.accounts[0];
    if let Err(e) = write_active(path, &first.name, None) {
        log::error!("cannot write {}: {e}", path.display());
    }
    active_of(config, first)
}

/// The active account's name as `active.json` records it, without writing
/// anything (for `check`, `setup` and `login`): the first account when the
/// file is missing, corrupt or names an account no longer configured.
pub fn load_active_name(config: &Config) -> String {
    std::fs::read(config.state_dir.join("active.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<ActiveFile>(&b).ok())
        .map(|f| f.account)
        .filter(|a| config.account(a).is_some())
        .unwrap_or_else(|| config.accounts[0].name.clone())
}

/// The active account as sessions launch under it: its home, or in live
/// mode the seat.
pub fn active_of(config: &Config, a: &crate::config::AccountConfig) -> Active {
    Active {
        name: a.name.clone(),
        home: config
            .live_seat()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| a.home.clone()),
    }
}

fn write_active(path: &Path, account: &str, swap_id: Option<&str>) -> std::io::Result<()> {
    failpoint_io("write-active", account)?;
    atomic_file::write_json(path, &active_file(account, swap_id))
}

fn active_file(account: &str, swap_id: Option<&str>) -> ActiveFile {
    ActiveFile {
        account: account.to_string(),
        since: crate::sys::time::rfc3339(SystemTime::now()),
        swap_id: swap_id.map(String::from),
    }
}

fn usage_path(config: &Config, account: &str) -> PathBuf {
    config
        .state_dir
        .join("usage")
        .join(format!("{account}.json"))
}

fn load_quota(config: &Config, account: &str) -> AccountQuota {
    let path = usage_path(config, account);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            log::warn!(
                "{} is corrupt ({e}); starting with no reading",
                path.display()
            );
            AccountQuota::default()
        }),
        Err(_) => AccountQuota::default(),
    }
}

/// The model whose weekly limit refused a request, when the refusal is one:
/// the text names a model's weekly limit, or the refused session's model is
/// covered by a scoped limit over its threshold while the session and weekly
/// windows still have room. `None`: the refusal binds the whole account.
fn scoped_refusal(
    q: &AccountQuota,
    config: &crate::config::QuotaConfig,
    kind: LimitKind,
    message: &str,
    model: Option<&str>,
) -> Option<String> {
    if kind == LimitKind::ModelWeekly {
        return crate::claude::facts::limit_text_model(message)
            .map(str::to_string)
            .or_else(|| model.map(str::to_string));
    }
    let room = |w: Option<Window>| w.is_none_or(|w| w.utilization < 100.0);
    if kind == LimitKind::FiveHour && room(q.five_hour) && room(q.seven_day) {
        return q
            .scoped()
            .into_iter()
            .find(|l| {
                l.utilization >= config.weekly_scoped_threshold
                    && quota::covers(l.model.as_deref().unwrap_or_default(), model)
            })
            .and_then(|l| l.model);
    }
    None
}

/// Whether `CLAUDE_FAILOVER_FAILPOINT` (a comma-separated list, set only by
/// tests) names `point`.
pub(crate) fn failpoint_set(point: &str) -> bool {
    std::env::var("CLAUDE_FAILOVER_FAILPOINT")
        .is_ok_and(|v| v.split(',').any(|p| p.trim() == point))
}

/// Test-only crash points: `swap-<phase>` aborts the process as the swap
/// enters that phase (a `kill -9` at a chosen spot).
fn failpoint(phase: Phase) {
    if failpoint_set(&format!("swap-{}", phase.as_str())) {
        log::error!("fail point swap-{} reached: aborting", phase.as_str());
        std::process::abort();
    }
}

/// Test-only injected failures: `write-active:<account>` makes writing
/// `active.json` for that account fail (a failed rollback); `ensure:<account>`
/// makes the post-flip shared-folder step fail (a rollback).
fn failpoint_io(what: &str, account: &str) -> std::io::Result<()> {
    if failpoint_set(&format!("{what}:{account}")) {
        return Err(std::io::Error::other(format!(
            "fail point {what}:{account}"
        )));
    }
    Ok(())
}

fn now_ms() -> u64 {
    quota::now_ms(SystemTime::now())
}

impl Accounts {
    fn serve(mut self) {
        let ticker = tick(Duration::from_secs(1));
        let requests = self.requests.clone();
        loop {
            // Requests read while a swap waited come first, in their order.
            if self.deferred.is_empty() {
                select! {
                    recv(requests) -> r => match r {
                        Ok(r) => self.handle(r),
                        Err(_) => {
                            self.save_quotas();
                            return;
                        }
                    },
                    recv(ticker) -> _ => {}
                }
            }
            while let Some(r) = self.deferred.pop_front() {
                self.handle(r);
            }
            // Whatever else waits is handled before deciding once: a flood of
            // readings costs one decision, not one each.
            while let Ok(r) = requests.try_recv() {
                self.handle(r);
            }
            // A swap requested while another ran: one more run for all of them.
            self.run_requested();
            if self.last_saved.elapsed() >= Duration::from_secs(1) {
                self.save_quotas();
            }
            if self.seat_dirty || self.last_seat_sync.elapsed() >= live::SEAT_SYNC_EVERY {
                self.sync_seat();
            }
            // Swap requests queued behind a running swap: ten become one more
            // run at most (each later one is answered by the state it finds).
            self.decide();
            self.publish();
        }
    }

    fn quota_mut(&mut self, account: &str) -> Option<&mut AccountQuota> {
        self.quotas
            .iter_mut()
            .find(|(n, _)| n == account)
            .map(|(_, q)| q)
    }

    fn account_by_home(&self, home: &Path) -> Option<String> {
        self.config.account_by_home(home).map(|a| a.name.clone())
    }

    /// Marks `account`'s readings to be written with the next [`Self::save_quotas`].
    fn persist_quota(&mut self, account: &str) {
        self.unsaved.insert(account.to_string());
    }

    /// Writes the readings that changed since the last time.
    fn save_quotas(&mut self) {
        self.last_saved = std::time::Instant::now();
        for account in std::mem::take(&mut self.unsaved) {
            self.write_quota(&account);
        }
    }

    fn write_quota(&self, account: &str) {
        if let Some((_, q)) = self.quotas.iter().find(|(n, _)| n == account) {
            let path = usage_path(&self.config, account);
            let _ = std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")));
            if let Err(e) = atomic_file::write_json(&path, q) {
                log::warn!("cannot write {}: {e}", path.display());
            }
        }
    }

    fn handle(&mut self, req: Command) {
        let now = now_ms();
        match req {
            Command::Reconfigure(config) => {
                let mut quotas = Vec::new();
                for a in &config.accounts {
                    let q = self
                        .quotas
                        .iter()
                        .find(|(n, _)| n == &a.name)
                        .map(|(_, q)| q.clone())
                        .unwrap_or_else(|| load_quota(&config, &a.name));
                    quotas.push((a.name.clone(), q));
                }
                // A reload is the operator's word that what kept an
                // account's sessions from starting is fixed.
                for (name, q) in quotas.iter_mut() {
                    if let Some(why) = q.sessions_did_not_start.take() {
                        log::info!(
                            "account {name} is a target again after the reload (was: {why})"
                        );
                    }
                }
                self.quotas = quotas;
                self.config = *config;
                for (name, _) in self.quotas.clone() {
                    self.persist_quota(&name);
                }
                if let Some(a) = self
                    .config
                    .accounts
                    .iter()
                    .find(|a| a.name == self.active.name)
                {
                    self.active = active_of(&self.config, a);
                }
            }
            Command::Reading {
                home,
                five_hour,
                seven_day,
                limits,
                source,
            } => {
                if let Some(account) = self.account_by_home(&home) {
                    if let Some(q) = self.quota_mut(&account) {
                        q.read_limits(five_hour, seven_day, limits.clone(), source, now);
                    }
                    self.persist_quota(&account);
                    self.fleet
                        .share_reading(crate::store::fleet::SharedReading {
                            machine: self.fleet.machine().to_string(),
                            account,
                            source,
                            observed_at_ms: now,
                            five_hour,
                            seven_day,
                            limits,
                        });
                }
            }
            Command::FleetReading(r) => {
                let Some(q) = self.quota_mut(&r.account) else {
                    return;
                };
                if q.read_shared(
                    r.five_hour,
                    r.seven_day,
                    r.limits,
                    r.source,
                    &r.machine,
                    r.observed_at_ms,
                ) {
                    self.persist_quota(&r.account);
                }
            }
            Command::Refusal {
                home,
                kind,
                message,
                source,
                model,
            } => {
                if let Some(account) = self.account_by_home(&home) {
                    let q_config = self.config.quota.clone();
                    if let Some(q) = self.quota_mut(&account) {
                        match scoped_refusal(q, &q_config, kind, &message, model.as_deref()) {
                            Some(m) => {
                                log::warn!(
                                    "account {account} refused a {m} request (its {m} weekly limit): {message}"
                                );
                                q.refuse_scoped(&m, source, now);
                            }
                            None => {
                                log::warn!(
                                    "account {account} refused a request ({kind:?}): {message}"
                                );
                                q.refuse(kind, &message, source, now);
                            }
                        }
                    }
                    self.persist_quota(&account);
                }
            }
            Command::NeedsLogin { account, why } => {
                log::error!("account {account} needs login: {why}");
                let already = self
                    .quotas
                    .iter()
                    .any(|(n, q)| *n == account && q.needs_person.is_some());
                if !already {
                    let _ = self.out.send(Report::NeedsLogin {
                        account: account.clone(),
                        why: why.clone(),
                    });
                }
                if let Some(q) = self.quota_mut(&account) {
                    q.refuse(LimitKind::Login, &why, Source::UsageEndpoint, now);
                }
                self.persist_quota(&account);
            }
            Command::SwapNow { to, reason, reply } => {
                // Nothing runs while requests are handled here: it starts at once.
                self.requested.request_op(SwapCause { to, reason, reply });
                self.run_requested();
            }
            Command::Sessions(sessions) => {
                self.view.write().sessions = sessions.len() as u32;
                self.sessions = sessions;
            }
            Command::Batch(requests) => {
                for r in requests {
                    self.handle(r);
                }
            }
            Command::SeatChanged => self.seat_dirty = true,
            Command::Restarted { swap_id, session } => {
                if let Some(last) = self.last_swap.as_mut().filter(|l| l.id == swap_id) {
                    if !last.restarted.contains(&session) {
                        last.restarted.push(session);
                    }
                }
            }
        }
    }

    /// Runs the requested swap, if one waits and none runs; a request made
    /// meanwhile (they are folded into one) runs right after it.
    fn run_requested(&mut self) {
        while let Some(cause) = self.requested.should_start_op() {
            log::info!("requested swap starts: {}", cause.reason);
            let result = self.requested_swap(cause.to, cause.reason);
            self.requested.op_completed();
            if let Some(reply) = cause.reply {
                let _ = reply.send(result);
            }
            self.release_seat_lock();
        }
    }

    /// A request read while a swap runs (it waits in drain or verify):
    /// snapshots are taken at once; a swap request with someone waiting for
    /// its answer (HTTP) is refused as the swap is under way; one without
    /// (SIGUSR1) is queued for one more run; the rest wait until it ends.
    fn during_swap(&mut self, req: Command) {
        match req {
            Command::Sessions(sessions) => {
                self.view.write().sessions = sessions.len() as u32;
                self.sessions = sessions;
            }
            Command::SwapNow {
                to,
                reason,
                reply: Some(reply),
            } => {
                let id = self
                    .view
                    .read()
                    .swap_in_progress
                    .clone()
                    .unwrap_or_default();
                let _ = reply.send(self.refused(
                    to.as_deref().unwrap_or(""),
                    &reason,
                    Refusal::Busy,
                    format!("swap {id} is under way"),
                ));
            }
            // SIGUSR1 (no target, no reply) asks to fail over now, which the
            // swap under way does: one more run after it would move every
            // session off the account it just reached.
            Command::SwapNow {
                to: None,
                reason,
                reply: None,
            } => {
                let id = self
                    .view
                    .read()
                    .swap_in_progress
                    .clone()
                    .unwrap_or_default();
                log::warn!("{reason} ignored: swap {id} is under way");
            }
            // A request naming its target runs once the swap ends (ten of
            // them are one more run, the newest cause).
            Command::SwapNow {
                to: Some(to),
                reason,
                reply: None,
            } => {
                log::warn!(
                    "swap to {to} requested during a swap ({reason}): it runs once this one ends"
                );
                if let Some(was) = self.requested.request_op(SwapCause {
                    to: Some(to),
                    reason,
                    reply: None,
                }) {
                    log::info!("swap request folded into a newer one: {}", was.reason);
                }
            }
            other => self.deferred.push_back(other),
        }
    }

    /// Reads the requests that wait, without waiting (see [`Self::during_swap`]).
    fn take_waiting(&mut self) {
        while let Ok(r) = self.requests.try_recv() {
            self.during_swap(r);
        }
    }

    /// Reads requests until `deadline` or the first snapshot, whichever is first.
    fn wait_for_sessions(&mut self, deadline: Instant) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.requests.recv_timeout(left) {
                Ok(Command::Sessions(s)) => {
                    self.sessions = s;
                    self.take_waiting();
                    return;
                }
                Ok(other) => self.during_swap(other),
                // Closed: the daemon is stopping; let the swap end on its own terms.
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(left);
                    return;
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => return,
            }
        }
    }

    fn refused(&self, to: &str, reason: &str, refusal: Refusal, why: String) -> SwapResult {
        SwapResult {
            id: String::new(),
            from: self.active.name.clone(),
            to: to.to_string(),
            reason: reason.to_string(),
            started_at: crate::sys::time::rfc3339(SystemTime::now()),
            duration_ms: 0,
            result: SwapOutcome::Refused,
            refusal: Some(refusal),
            detail: Some(why),
            changed_ids: Vec::new(),
            mode: self.config.swap.mode.as_str(),
            restarted: Vec::new(),
            phases: Vec::new(),
        }
    }

    fn requested_swap(&mut self, to: Option<String>, reason: String) -> SwapResult {
        if let Some(p) = &self.partial {
            return self.refused(
                to.as_deref().unwrap_or(""),
                &reason,
                Refusal::Busy,
                format!("a partial swap holds: {p}"),
            );
        }
        let now = now_ms();
        for (_, q) in self.quotas.iter_mut() {
            q.pass_resets(now);
        }
        let target = match to {
            Some(name) => {
                if name == self.active.name {
                    return self.refused(
                        &name,
                        &reason,
                        Refusal::NoTarget,
                        format!("{name} is already the active account"),
                    );
                }
                let Some((_, q)) = self.quotas.iter_mut().find(|(n, _)| *n == name) else {
                    return self.refused(
                        &name,
                        &reason,
                        Refusal::NoTarget,
                        format!("no account named {name:?}"),
                    );
                };
                // Naming the account is the operator's word that what kept
                // its sessions from starting is fixed.
                if let Some(why) = q.sessions_did_not_start.take() {
                    log::info!("account {name} is a target again: a swap names it (was: {why})");
                }
                if let Err(why) = q.evaluate(&self.config.quota) {
                    return self.refused(
                        &name,
                        &reason,
                        Refusal::NoTarget,
                        format!("{name} cannot take the work: {why}"),
                    );
                }
                name
            }
            None => {
                let active = self.active.name.clone();
                match self.best_usable(&[&active]) {
                    Some(n) => self.fleet_target(n),
                    None => {
                        return self.refused(
                            "",
                            &reason,
                            Refusal::NoTarget,
                            "no other account can take the work".into(),
                        )
                    }
                }
            }
        };
        // A requested swap starts now but lets a turn in progress finish
        // (up to drain_timeout): only a refused request makes waiting pointless.
        self.swap(&target, &reason, false)
    }

    /// Runs the pure decision and acts on it.
    fn decide(&mut self) {
        if self.partial.is_some() {
            return;
        }
        let pools = self.pool_models();
        let decision = quota::decide(
            &mut self.quotas,
            &self.active.name,
            &self.config.quota,
            &pools,
            self.last_swap_ms,
            now_ms(),
        );
        let held = match decision {
            Decision::Stay => {
                quota::held_pools(&self.quotas, &self.active.name, &self.config.quota, &pools)
            }
            _ => Default::default(),
        };
        if held != self.held {
            for (pool, why) in &held {
                if self.held.get(pool) != Some(why) {
                    log::warn!("pool {pool} holds its tasks: {why}; no other account serves it and every other pool");
                }
            }
            for pool in self.held.keys().filter(|p| !held.contains_key(*p)) {
                log::info!("pool {pool} takes tasks again");
            }
            self.held = held.clone();
            let _ = self.out.send(Report::Held(held));
        }
        match decision {
            Decision::Stay => {
                if let Some(was) = self.no_account.take() {
                    log::info!("an account can take the work again (was: {was})");
                    let _ = self.out.send(Report::NoAccount {
                        paused: false,
                        reason: String::new(),
                        earliest_reset: None,
                    });
                }
            }
            Decision::Swap { to, reason, urgent } => {
                let to = self.fleet_target(to);
                if self.no_account.take().is_some() {
                    let _ = self.out.send(Report::NoAccount {
                        paused: false,
                        reason: String::new(),
                        earliest_reset: None,
                    });
                }
                self.swap(&to, &reason, urgent);
                self.release_seat_lock();
            }
            Decision::NoAccount {
                reason,
                earliest_reset,
            } => {
                if self.no_account.as_deref() != Some(reason.as_str()) {
                    let when = earliest_reset
                        .map(|t| {
                            crate::sys::time::rfc3339(
                                SystemTime::UNIX_EPOCH + Duration::from_secs(t),
                            )
                        })
                        .unwrap_or_else(|| "unknown".into());
                    log::error!("no account can take the work ({reason}); dispatch paused; earliest reset {when}");
                    if self.no_account.is_none() {
                        let _ = self.out.send(Report::NoAccount {
                            paused: true,
                            reason: reason.clone(),
                            earliest_reset,
                        });
                    }
                    self.no_account = Some(reason);
                }
            }
        }
    }

    fn write_journal(&self, j: &Journal) {
        if let Err(e) = atomic_file::write_json(&self.journal_path, j) {
            log::error!("cannot write {}: {e}", self.journal_path.display());
        }
    }

    fn enter(&mut self, j: &mut Journal, phase: Phase) {
        j.phase = phase;
        self.write_journal(j);
        self.entered(j);
    }

    /// The swap is in `j.phase`, its journal written: logged, timed,
    /// announced; a test's fail point for it fires here.
    fn entered(&mut self, j: &Journal) {
        let phase = j.phase;
        log::info!("swap {}: {}", j.id, phase.as_str());
        self.close_phase();
        self.phase_clock = Some((phase, Instant::now()));
        self.feed.publish(
            EventKind::SwapPhase,
            serde_json::json!({"swap_id": j.id, "from": j.from, "to": j.to, "phase": phase.as_str()}),
        );
        failpoint(phase);
    }

    /// Reports a swap's start, and says so on the event stream.
    fn started(&self, r: Report) {
        if let Report::SwapStarted {
            id,
            from,
            to,
            reason,
        } = &r
        {
            let data = serde_json::json!({"swap_id": id, "from": from, "to": to, "reason": reason, "mode": self.config.swap.mode.as_str()});
            self.fleet.swap_event("swap_started", &data);
            self.feed.publish(EventKind::SwapStarted, data);
        }
        let _ = self.out.send(r);
    }

    /// A swap that ended (or was ended after a restart): the last swap, in
    /// the history, on the event stream.
    fn record(&mut self, outcome: SwapResult) {
        self.last_swap_ms = Some(now_ms());
        if self.history.len() == SWAP_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(outcome.clone());
        let data = serde_json::to_value(&outcome).unwrap_or_default();
        self.fleet.swap_event("swap_ended", &data);
        self.feed.publish(EventKind::SwapEnded, data);
        self.last_swap = Some(outcome);
    }

    /// The phase under way ends: its time is recorded.
    fn close_phase(&mut self) {
        if let Some((p, at)) = self.phase_clock.take() {
            self.phase_times.push(PhaseTime {
                phase: p.as_str(),
                ms: at.elapsed().as_millis() as u64,
            });
        }
    }

    /// One swap, start to end. The decisions are [`Plan::next`]'s; this
    /// performs each step it returns. Blocking, except that drain and verify
    /// keep reading requests (see [`Self::during_swap`]).
    fn swap(&mut self, to: &str, reason: &str, urgent: bool) -> SwapResult {
        if self.config.live_seat().is_some() {
            return self.live_swap(to, reason);
        }
        let started = Instant::now();
        let from = self.active.clone();
        let Some(target) = self.config.account(to).cloned() else {
            return self.refused(
                to,
                reason,
                Refusal::NoTarget,
                format!("no account named {to:?}"),
            );
        };
        // Before touching any session: the target's shared folders must be
        // links (or absent: ensure creates those). Something else in place
        // means the swap would only stop everything and roll back.
        if let Some(problem) = target_folder_problem(&self.config, &target) {
            let why = format!("shared folders of {to}: {problem}; no session was touched");
            log::error!("swap to {to} refused: {why}");
            // Not a target until a fresh reading (and the next check) says otherwise.
            if let Some(q) = self.quota_mut(to) {
                q.needs_person = Some(format!("shared folders: {problem}"));
            }
            return self.refused(to, reason, Refusal::NoTarget, why);
        }
        // The readings that led here are on disk before anything is touched.
        self.save_quotas();
        let id = format!("swap-{}", now_ms());
        log::warn!("swap {id}: {} → {to}: {reason}", from.name);
        // Requests read from here on are answered as during a swap, with its id.
        self.moving(&id, to);
        // The newest snapshot of the sessions is what gets checkpointed.
        self.take_waiting();
        let started_at = SystemTime::now();
        let mut j = Journal {
            id: id.clone(),
            from: from.name.clone(),
            to: to.to_string(),
            reason: reason.to_string(),
            phase: Phase::Checkpoint,
            started_at: crate::sys::time::rfc3339(started_at),
            sessions: self.checkpoint(),
            partial: None,
            mode: None,
        };
        let started_ms = quota::now_ms(started_at);
        // Publish what led here (the reading that crossed the threshold)
        // before the swap occupies this thread. The view says a swap is
        // under way before anyone hears it started: it is the one answer.
        self.publish();
        self.started(Report::SwapStarted {
            id: id.clone(),
            from: from.name.clone(),
            to: to.to_string(),
            reason: reason.to_string(),
        });
        self.enter(&mut j, Phase::Checkpoint);

        self.enter(&mut j, Phase::Drain);
        if !urgent {
            self.drain();
        }
        self.enter(&mut j, Phase::Stop);
        let mut plan = Plan::new();
        let mut detail: Option<String> = None;
        let mut changed_ids = Vec::new();
        // The journal is removed at the end once a relaunch was asked for.
        let mut relaunched = false;
        // What the move-on leg needs: the account that started nothing, why,
        // and the leg's own description.
        let mut failed_target = String::new();
        let mut leg = String::new();
        let mut leg_why = String::new();
        // A stop that cannot be confirmed is not a stop: flipping now would
        // leave sessions running under the old account while the new one is
        // active.
        let mut step = {
            let stopped = self.stop_sessions();
            let confirmed = stopped.is_ok();
            if let Err(e) = stopped {
                detail = Some(format!("the stop could not be confirmed ({e})"));
            }
            plan.next(Happened::Stopped { confirmed })
        };
        let outcome = loop {
            let first = plan.leg == swap_plan::Leg::First;
            let leg_target = j.to.clone();
            step = match step {
                Step::Flip => {
                    self.enter(&mut j, Phase::Flip);
                    let Some(t) = self.config.account(&leg_target).cloned() else {
                        detail = Some(format!("{leg}; {leg_target} is no longer configured"));
                        step = plan.next(Happened::TargetGone);
                        continue;
                    };
                    match self.flip(&t.name, Some(&id)) {
                        Ok(()) => {
                            self.active = active_of(&self.config, &t);
                            let _ = self.out.send(Report::Active(self.active.clone()));
                            plan.next(Happened::Flipped { ok: true })
                        }
                        Err(e) => {
                            let e = format!("flip failed: {e}");
                            detail = Some(if first { e } else { format!("{leg}; {e}") });
                            plan.next(Happened::Flipped { ok: false })
                        }
                    }
                }
                Step::Ensure => {
                    self.enter(&mut j, Phase::Ensure);
                    let t = self
                        .config
                        .account(&leg_target)
                        .cloned()
                        .unwrap_or(target.clone());
                    // The injected failure is the first leg's only.
                    let injected = if first {
                        failpoint_io("ensure", &t.name).map_err(|e| e.to_string())
                    } else {
                        Ok(())
                    };
                    let ensured = injected.and_then(|()| {
                        crate::claude::shared_folders::ensure_for_account(&self.config, &t)
                            .map_err(|e| e.to_string())
                    });
                    match ensured {
                        Ok(created) => {
                            if !created.is_empty() {
                                log::info!("swap {id}: created {created:?} for {}", t.name);
                            }
                            plan.next(Happened::Ensured { ok: true })
                        }
                        Err(e) => {
                            detail = Some(if first {
                                format!("shared folders of {to}: {e}")
                            } else {
                                format!("{leg}; shared folders of {}: {e}", t.name)
                            });
                            plan.next(Happened::Ensured { ok: false })
                        }
                    }
                }
                Step::RollBack => {
                    // The first leg's rollback names the bare cause, as before.
                    let why = detail.clone().unwrap_or_default();
                    let why = if first {
                        why.strip_prefix(&format!("shared folders of {to}: "))
                            .map(str::to_string)
                            .unwrap_or(why)
                    } else {
                        why.strip_prefix(&format!("{leg}; "))
                            .map(str::to_string)
                            .unwrap_or(why)
                    };
                    let ok = self.rollback(&mut j, &from, &why);
                    plan.next(Happened::RolledBack { ok })
                }
                Step::Relaunch => {
                    self.enter(&mut j, Phase::Relaunch);
                    relaunched = true;
                    let _ = self.out.send(Report::Relaunch {
                        active: self.active.clone(),
                        resume_tasks: true,
                    });
                    let v = self.verify(&j, started_ms);
                    let back = v.wanted - v.pending.len();
                    let h = Happened::Verified {
                        wanted: v.wanted,
                        back,
                        checkpointed: j.sessions.len(),
                    };
                    let next = plan.next(h);
                    let why = format!(
                        "not back under {} in time: {}",
                        self.active.name,
                        v.pending.join(", ")
                    );
                    if v.pending.is_empty() {
                        changed_ids = v.changed_ids;
                        if !first {
                            detail = Some(format!(
                                "{leg} ({leg_why}); {failed_target} needs a person; every session on {}",
                                self.active.name
                            ));
                        }
                    } else {
                        log::error!("swap {}: {why}", j.id);
                        match next {
                            Step::MoveOn => leg_why = why,
                            _ if first => {
                                detail = Some(detail.map(|d| format!("{d}; {why}")).unwrap_or(why))
                            }
                            _ => detail = Some(format!("{leg} ({leg_why}); then {why}")),
                        }
                    }
                    next
                }
                Step::MoveOn => {
                    failed_target = j.to.clone();
                    let (next_account, back) = self.mark_and_pick(&mut j, &from, &leg_why);
                    leg = format!("no session started under {failed_target}");
                    plan.move_on(back);
                    self.started(Report::SwapStarted {
                        id: j.id.clone(),
                        from: failed_target.clone(),
                        to: next_account.clone(),
                        reason: leg.clone(),
                    });
                    j.to = next_account.clone();
                    self.enter(&mut j, Phase::Stop);
                    let stopped = self.stop_sessions();
                    if let Err(e) = &stopped {
                        detail = Some(format!(
                            "{leg} ({leg_why}); the sessions could not be stopped to move them to {next_account}: {e}"
                        ));
                    }
                    plan.next(Happened::Stopped {
                        confirmed: stopped.is_ok(),
                    })
                }
                Step::GoBackUnflipped => {
                    // Nothing was flipped: the old account never stopped being
                    // the active one, so there is nothing to put back and
                    // nothing to relaunch here (sessions that did stop come
                    // back by reconcile). The journal goes at once: a restart
                    // must not finish this swap.
                    log::error!(
                        "swap {}: {}; nothing was flipped, the swap goes back",
                        j.id,
                        detail.as_deref().unwrap_or("")
                    );
                    let _ = std::fs::remove_file(&self.journal_path);
                    break SwapOutcome::RolledBack;
                }
                Step::RelaunchInPlace => {
                    // The failed target stays active and is marked: say it loudly.
                    let _ = self.out.send(Report::Relaunch {
                        active: self.active.clone(),
                        resume_tasks: true,
                    });
                    break SwapOutcome::Incomplete;
                }
                Step::End(outcome) => break outcome,
            };
        };
        if relaunched {
            let _ = std::fs::remove_file(&self.journal_path);
        }
        let outcome = SwapResult {
            id,
            from: from.name.clone(),
            to: to.to_string(),
            reason: reason.to_string(),
            started_at: j.started_at.clone(),
            duration_ms: started.elapsed().as_millis() as u64,
            result: outcome,
            refusal: None,
            detail,
            changed_ids,
            mode: self.config.swap.mode.as_str(),
            restarted: Vec::new(),
            phases: Vec::new(),
        };
        self.end_swap(outcome)
    }

    /// A swap's end, whatever its mode: logged, recorded as the last swap,
    /// published before anyone hears of it, and reported.
    fn end_swap(&mut self, mut outcome: SwapResult) -> SwapResult {
        self.close_phase();
        outcome.phases = std::mem::take(&mut self.phase_times);
        let to = outcome.to.clone();
        match outcome.result {
            SwapOutcome::Done => log::warn!(
                "swap {}: done in {} ms, every session on {to}",
                outcome.id,
                outcome.duration_ms
            ),
            other => log::error!(
                "swap {}: {other}: {}",
                outcome.id,
                outcome.detail.as_deref().unwrap_or("")
            ),
        }
        self.record(outcome.clone());
        // A request that came while it ran is answered by its end, not lost.
        self.take_waiting();
        // The view is current before anyone hears that the swap ended.
        self.publish();
        {
            let mut v = self.view.write();
            v.swap_in_progress = None;
            v.moving_to = None;
        }
        let _ = self.out.send(Report::SwapEnded(outcome.clone()));
        outcome
    }

    /// The usable account with the lowest load, none of `except` (resets
    /// that passed are applied first); ties in config order.
    fn best_usable(&mut self, except: &[&str]) -> Option<String> {
        let pools = self.pool_models();
        quota::best_target(
            &mut self.quotas,
            except,
            &self.config.quota,
            &pools,
            now_ms(),
        )
    }

    /// A swap `id` to `to` is under way: requests read from here on are
    /// answered as during a swap; the fleet lease says where this machine moves.
    fn moving(&mut self, id: &str, to: &str) {
        {
            let mut v = self.view.write();
            v.swap_in_progress = Some(id.to_string());
            v.moving_to = Some(to.to_string());
        }
        self.fleet.renew();
    }

    /// The fleet's say in a swap target `to` chosen by today's rules: among
    /// the accounts as good as it (no more blocked pools), the one the
    /// fewest other machines run on or are moving to, claimed with a
    /// compare-and-set so two machines swapping at once spread out. With no
    /// fleet, Redis away or slow (at most `fleet::ASK_DEADLINE`), or every
    /// candidate claimed: the least crowded as this machine sees it.
    fn fleet_target(&mut self, to: String) -> String {
        if !self.fleet.view().enabled {
            return to;
        }
        let pools = self.pool_models();
        let active = self.active.name.clone();
        let ranked = quota::ranked_targets(
            &mut self.quotas,
            &[&active],
            &self.config.quota,
            &pools,
            now_ms(),
        );
        let bound = ranked.iter().find(|(n, _)| *n == to).map(|(_, b)| *b);
        let ranked: Vec<String> = ranked
            .into_iter()
            .filter(|(_, b)| bound.is_none_or(|bound| *b <= bound))
            .map(|(n, _)| n)
            .collect();
        let crowd = self.fleet.view().crowd(self.fleet.machine(), now_ms());
        let ordered = crate::decide::fleet::prefer_least_crowded(&ranked, &crowd);
        let chosen = match self.fleet.claim(&ordered) {
            crate::daemon::fleet::Claimed::Account(a) => a,
            crate::daemon::fleet::Claimed::AllTaken | crate::daemon::fleet::Claimed::Alone => {
                ordered.first().cloned().unwrap_or_else(|| to.clone())
            }
        };
        if chosen != to {
            let on = |a: &str| crowd.get(a).map_or(0, |m| m.len());
            log::info!(
                "fleet: swapping to {chosen} rather than {to}: {} other machine(s) run on or move to {to}, {} on {chosen}",
                on(&to),
                on(&chosen)
            );
        }
        chosen
    }

    /// Every configured pool with the model it runs.
    fn pool_models(&self) -> Vec<quota::PoolModel> {
        self.config
            .pools
            .iter()
            .map(|p| quota::PoolModel {
                pool: p.name.clone(),
                model: self.config.pool_model(p),
            })
            .collect()
    }

    /// No session started under the swap's target: marks it as needing a
    /// person (said once, to the operator) and picks where the sessions go:
    /// the best other usable account, or back to `from`. Returns it and
    /// whether it is `from`.
    fn mark_and_pick(&mut self, j: &mut Journal, from: &Active, why: &str) -> (String, bool) {
        let failed = j.to.clone();
        let mark = format!("no session started under it in swap {} ({why})", j.id);
        // On disk first, so a crash from here never finishes the swap onto
        // the account that starts nothing: back to the stop phase, which a
        // restart rolls back to `from`.
        self.enter(j, Phase::Stop);
        if let Some(q) = self.quota_mut(&failed) {
            q.sessions_did_not_start = Some(mark.clone());
        }
        self.persist_quota(&failed);
        // Shown at once: the sessions may be up on the next account before
        // this swap's last leg ends and publishes.
        self.publish();
        let _ = self.out.send(Report::NeedsLogin {
            account: failed.clone(),
            why: mark,
        });
        let best = self.best_usable(&[&failed, &from.name]);
        let (next, back) = swap_plan::move_on_target(best.as_deref(), &from.name);
        log::error!(
            "swap {}: no session started under {failed}, which needs a person; {} {next}",
            j.id,
            if back {
                "going back to"
            } else {
                "moving on to"
            }
        );
        (next, back)
    }

    /// Puts `from` back after a failed step; a rollback that fails too leaves
    /// the sticky partial state. Returns whether `from` is active again.
    fn rollback(&mut self, j: &mut Journal, from: &Active, why: &str) -> bool {
        log::error!("swap {}: {why}; rolling back to {}", j.id, from.name);
        match self.flip(&from.name, None) {
            Ok(()) => {
                self.active = from.clone();
                let _ = self.out.send(Report::Active(self.active.clone()));
                true
            }
            Err(e) => {
                let p = format!(
                    "swap {} {} → {}: {why}; the rollback failed too: {e}",
                    j.id, j.from, j.to
                );
                log::error!("PARTIAL SWAP: {p}. Every later swap is refused until an operator fixes the cause and removes {}", self.journal_path.display());
                j.partial = Some(p.clone());
                j.phase = Phase::Partial;
                self.write_journal(j);
                self.partial = Some(p);
                false
            }
        }
    }

    /// `active.json` and `active_link` point at `account`.
    fn flip(&self, account: &str, swap_id: Option<&str>) -> Result<(), String> {
        write_active(&self.active_path, account, swap_id)
            .map_err(|e| format!("cannot write {}: {e}", self.active_path.display()))?;
        self.repoint_active_link(account)
    }

    /// `active_link` (when configured) points at `account`'s home.
    fn repoint_active_link(&self, account: &str) -> Result<(), String> {
        if let (Some(link), Some(a)) = (&self.config.active_link, self.config.account(account)) {
            repoint(link, &a.home)
                .map_err(|e| format!("cannot repoint {}: {e}", link.display()))?;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Vec<SessionCheckpoint> {
        self.sessions
            .iter()
            .map(|s| SessionCheckpoint {
                name: s.name.clone(),
                claude_session_id: s.claude_session_id.clone(),
                cwd: s.cwd.clone(),
                task: s.task.clone(),
                state: s.state,
            })
            .collect()
    }

    /// Waits up to `drain_timeout` for working sessions to end their turn,
    /// reading each snapshot the main loop sends meanwhile.
    fn drain(&mut self) {
        let deadline = Instant::now() + self.config.swap.drain_timeout;
        while Instant::now() < deadline {
            if !swap_plan::any_working(&self.sessions) {
                return;
            }
            self.wait_for_sessions(deadline);
        }
        log::warn!("drain timeout: stopping sessions that are still working; their tasks continue after the swap");
    }

    /// SIGTERM to every managed session, kill after `stop_timeout`; all in
    /// parallel. Then confirmed: tmux must answer, and list no managed
    /// session alive. An error says why the stop is not confirmed.
    fn stop_sessions(&self) -> Result<(), String> {
        let managed_alive = |list: Vec<crate::sys::tmux::SessionInfo>| -> Vec<String> {
            list.into_iter()
                .filter(|s| !s.pane_dead)
                .map(|s| s.name)
                .filter(|n| crate::decide::session::pool_of(&self.config, n).is_some())
                .collect()
        };
        let managed = self
            .tmux
            .list_sessions()
            .map(managed_alive)
            .map_err(|e| format!("cannot list sessions to stop them: {e}"))?;
        let stop_timeout = self.config.swap.stop_timeout;
        // The session watcher stops them (it is the one tmux writer) and
        // answers when all are. Each stop ends in a kill after
        // `stop_timeout`; beside that wait it makes a few tmux calls, each
        // with its own deadline, and the sessions stop in parallel: past
        // that bound, with a margin for a loaded machine, the stop is not
        // confirmed and nothing is flipped.
        let bound = stop_timeout
            + TMUX_DEADLINE * (crate::daemon::session_watcher::STOP_TMUX_CALLS + 1)
            + Duration::from_secs(15);
        let (done, stopped) = crossbeam_channel::bounded(1);
        self.watcher
            .send(crate::daemon::session_watcher::Command::Stop {
                names: managed,
                timeout: stop_timeout,
                done,
            })
            .map_err(|_| "the session watcher is gone".to_string())?;
        match stopped.recv_timeout(bound) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(why),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err("the session watcher's stop ended without an answer".into())
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "the session watcher did not finish stopping them within {}s",
                    bound.as_secs()
                ))
            }
        }
        let left = self
            .tmux
            .list_sessions()
            .map(managed_alive)
            .map_err(|e| format!("cannot confirm the sessions stopped: {e}"))?;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("still running: {}", left.join(", ")))
        }
    }

    /// Waits until every checkpointed session runs again under the active
    /// account (bounded by the start-up timeout), reading each snapshot the
    /// main loop sends meanwhile. Returns what [`swap_plan::back_under`] found last.
    fn verify(&mut self, j: &Journal, started_ms: u64) -> swap_plan::Verified {
        let deadline = Instant::now() + self.config.claude.startup_timeout + Duration::from_secs(5);
        loop {
            let wanted: Vec<swap_plan::Wanted> = j
                .sessions
                .iter()
                .map(|c| swap_plan::Wanted {
                    name: &c.name,
                    state: c.state,
                    claude_session_id: c.claude_session_id.as_deref(),
                })
                .collect();
            let v = swap_plan::back_under(&wanted, &self.sessions, &self.active.name, started_ms);
            if v.pending.is_empty() || Instant::now() > deadline {
                return v;
            }
            self.wait_for_sessions(deadline + Duration::from_millis(1));
        }
    }

    /// Finishes or rolls back a swap a previous run left in `swap.journal`:
    /// [`swap_plan::recovery`] chooses, this performs it.
    fn recover(&mut self) {
        let Ok(bytes) = std::fs::read(&self.journal_path) else {
            return;
        };
        let read = serde_json::from_slice::<Journal>(&bytes);
        let found = match &read {
            Err(_) => swap_plan::JournalFound::Corrupt,
            Ok(j) => swap_plan::JournalFound::Read {
                phase: j.phase,
                partial: j.partial.is_some(),
                target_exists: self.config.account(&j.to).is_some(),
            },
        };
        if let Ok(j) = &read {
            if j.mode.as_deref() == Some("live") {
                let j = j.clone();
                self.recover_live(j);
                return;
            }
        }
        let j = match read {
            Ok(j) => j,
            Err(e) => {
                log::error!(
                    "{} is corrupt ({e}); keeping the active account {} as it is",
                    self.journal_path.display(),
                    self.active.name
                );
                let _ = std::fs::rename(
                    &self.journal_path,
                    self.journal_path.with_extension("journal.corrupt"),
                );
                return;
            }
        };
        let finished = match swap_plan::recovery(found) {
            Recovery::KeepActive => return,
            Recovery::StayPartial => {
                self.partial = j
                    .partial
                    .clone()
                    .or_else(|| Some(format!("swap {} left partial", j.id)));
                log::error!(
                    "PARTIAL SWAP from a previous run: {}; every swap is refused until it is resolved",
                    self.partial.as_deref().unwrap_or("")
                );
                return;
            }
            Recovery::FinishForward => self.config.account(&j.to).cloned().is_some_and(|t| {
                crate::claude::shared_folders::ensure_for_account(&self.config, &t).is_ok()
                    && self.flip(&t.name, Some(&j.id)).is_ok()
            }),
            Recovery::RollBack => false,
        };
        let result = swap_plan::recovery_outcome(finished);
        let name = if finished { &j.to } else { &j.from };
        let Some(a) = self.config.account(name).cloned() else {
            return;
        };
        if !finished {
            if let Err(e) = self.flip(&a.name, None) {
                self.partial = Some(format!(
                    "swap {} found after a restart could not be rolled back: {e}",
                    j.id
                ));
                log::error!("PARTIAL SWAP: {}", self.partial.as_deref().unwrap_or(""));
                return;
            }
        }
        self.active = active_of(&self.config, &a);
        log::warn!(
            "swap {} ({} → {}) was interrupted at {}: {}; every session runs on {}",
            j.id,
            j.from,
            j.to,
            j.phase.as_str(),
            result.as_str().replace('_', " "),
            a.name
        );
        let _ = std::fs::remove_file(&self.journal_path);
        self.record(SwapResult::after_restart(&j, result, "restart"));
    }

    fn publish(&mut self) {
        let q = self.config.quota.clone();
        let pools = self.pool_models();
        let accounts: Vec<AccountView> = self
            .quotas
            .iter_mut()
            .map(|(n, a)| {
                let verdict = a.evaluate(&q);
                AccountView {
                    name: n.clone(),
                    usable: verdict.is_ok(),
                    reason: verdict.err(),
                    blocked_pools: pools
                        .iter()
                        .filter_map(|p| {
                            a.blocked_for(&q, p.model.as_deref())
                                .map(|why| (p.pool.clone(), why))
                        })
                        .collect(),
                    quota: a.clone(),
                }
            })
            .collect();
        // A quota event for each account whose numbers or verdict changed.
        for a in &accounts {
            let key = format!(
                "{:?}|{:?}|{}|{:?}|{}",
                a.quota.five_hour.map(|w| (w.utilization * 10.0).round()),
                a.quota.seven_day.map(|w| (w.utilization * 10.0).round()),
                a.usable,
                a.reason,
                a.quota.limits.len()
            );
            if self.quota_published.get(&a.name) != Some(&key) {
                self.quota_published.insert(a.name.clone(), key);
                self.feed.publish(
                    EventKind::Quota,
                    serde_json::to_value(a).unwrap_or_default(),
                );
            }
        }
        let mut v = self.view.write();
        v.active = self.active.name.clone();
        v.accounts = accounts;
        v.partial_swap = self.partial.clone();
        v.last_swap = self.last_swap.clone();
        v.swap_history = self.history.iter().cloned().collect();
        v.dispatch_paused = self.no_account.clone();
        v.held_pools = self.held.clone();
    }
}

/// The first shared-folder entry of `account` that `ensure_for_account`
/// could not fix (anything but a right link or nothing at all).
fn target_folder_problem(
    config: &Config,
    account: &crate::config::AccountConfig,
) -> Option<String> {
    use crate::claude::shared_folders::{inspect_link, shared_path, Found};
    config.shared.iter().find_map(|entry| {
        let link = account.home.join(entry);
        match inspect_link(&link, &shared_path(config, entry)) {
            None | Some(Found::Missing) | Some(Found::RelativeTarget(_)) => None,
            Some(found) => Some(format!(
                "{}: expected a symlink to {}, found {found}",
                entry,
                shared_path(config, entry).display()
            )),
        }
    })
}

/// Points `link` at `target` atomically (a new symlink renamed over it).
/// Refuses to replace anything that is not a symlink.
pub fn repoint(link: &Path, target: &Path) -> std::io::Result<()> {
    if let Ok(meta) = std::fs::symlink_metadata(link) {
        if !meta.file_type().is_symlink() {
            return Err(std::io::Error::other(format!(
                "{} is not a symlink; not replacing it",
                link.display()
            )));
        }
    }
    let tmp = link.with_file_name(format!(
        ".{}.tmp-{}",
        link.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}
