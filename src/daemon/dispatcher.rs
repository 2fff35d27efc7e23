//! The dispatcher: feeds queued tasks to idle sessions, exactly once each,
//! and records their results.
//!
//! It owns every project's queue on disk (claims, completions, attempts, the
//! janitor, `status.json`) and the typing of prompts. It learns of sessions
//! from the main loop's snapshots and of their turns from the hook events
//! the main loop forwards; it asks the main loop to move a session to a
//! project folder, grow a pool or shrink it. A task:
//!
//! 1. is claimed (atomic rename into `active/` plus its marker);
//! 2. gets a fresh conversation: `/clear` when the session already runs in
//!    the project's folder (confirmed by `SessionStart` with source
//!    `clear`), else the session is relaunched there;
//! 3. is pasted (bracketed paste, pause, Enter), confirmed by the
//!    `UserPromptSubmit` hook within a deadline (one retry of Enter, then the
//!    task goes back to the inbox and the session is reported);
//! 4. is done on the `Stop` hook that answers it: `done/` + `result.json`.
//!
//! A session that dies mid-task, or a `StopFailure` other than a refused
//! request, costs an attempt (then `failed/` after `max_attempts`). A refused
//! request is not an attempt: the task waits for the swap, and the resumed
//! conversation gets a continuation prompt. Hook event files are deleted
//! here, once handled, so a crash replays an event rather than losing it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, tick, Receiver, Sender};

use crate::claude::hook::RecordedEvent;
use crate::claude::hook_event::{HookEvent, StartSource};
use crate::config::Config;
use crate::daemon::session_watcher::{self, Keys};
use crate::daemon::status::QueueCounts;
use crate::decide::assignment::{
    self, Assignment, Ctx, Effect, HookSeen, Phase, Release, SessionSeen,
};
use crate::decide::session::State;
use crate::store::queue::{self, Completion, Outcome, Queue};

/// What the dispatcher sees of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub name: String,
    pub pool: String,
    pub state: State,
    pub cwd: PathBuf,
    pub account: Option<String>,
    pub claude_session_id: Option<String>,
    /// The tool of its last tool call (its checkpoint records it).
    pub last_tool: Option<String>,
}

pub enum Command {
    Sessions(Vec<SessionView>),
    /// A hook event and its file (deleted once handled).
    Hook(PathBuf, Box<RecordedEvent>),
    /// Dispatch paused (a swap, or no account can take work), with why.
    Paused(Option<String>),
    /// Pools that take no new task (the active account's limit for their
    /// model is spent), with why; the others go on.
    Held(BTreeMap<String, String>),
    /// Live mode: the account the seat holds.
    Seated(Option<String>),
    Reconfigure(Box<Config>),
}

#[derive(Debug, Clone)]
pub enum Report {
    /// The task a session works on, for status.
    Task {
        session: String,
        task: Option<String>,
    },
    /// Relaunch the session, fresh, in `cwd`.
    Relocate {
        session: String,
        cwd: PathBuf,
    },
    /// Start one more session of the pool (above `min`).
    Grow {
        pool: String,
        name: String,
    },
    /// Stop an idle session above `min`.
    Shrink {
        name: String,
    },
    Counts(BTreeMap<String, QueueCounts>),
    /// A task's submission was confirmed (with the time from its arrival),
    /// or it left its session.
    Outcome {
        outcome: TaskOutcome,
        dispatch_latency: Option<Duration>,
    },
    /// A task failed for good (for notifications).
    TaskFailed {
        project: String,
        task: String,
        reason: String,
    },
}

/// What became of a task, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOutcome {
    /// Its prompt was submitted (not an end: counted as dispatch latency).
    Submitted,
    Done,
    Failed,
    Requeued,
}

impl TaskOutcome {
    /// As `/metrics` labels it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskOutcome::Submitted => "submitted",
            TaskOutcome::Done => "done",
            TaskOutcome::Failed => "failed",
            TaskOutcome::Requeued => "requeued",
        }
    }
}

pub struct Dispatcher {
    pub input: Sender<Command>,
    pub thread: JoinHandle<()>,
}

/// The dispatcher thread's desk: every project's queue, the sessions as
/// last seen, and which session works on what. Only that thread holds it.
struct Desk {
    config: Config,
    /// The session watcher, which types for us (it is the one tmux writer).
    keys: Sender<session_watcher::Command>,
    queues: Vec<(Queue, String)>, // (queue, pool)
    sessions: Vec<SessionView>,
    assigned: HashMap<String, Assignment>,
    /// Sessions whose conversation is fresh (no prompt since it started or cleared).
    fresh: HashSet<String>,
    /// Sessions with a `/clear` typed and not yet confirmed, since when.
    clearing: HashMap<String, Instant>,
    paused: Option<String>,
    /// Pools held by a model-scoped limit: no new task, no growth.
    held: BTreeMap<String, String>,
    /// Live mode: the account the seat holds.
    seated: Option<String>,
    /// When dispatch last resumed after a pause.
    unpaused_at: Option<Instant>,
    /// A swap journal was found at start.
    swap_was_interrupted: bool,
    /// Claude Code writes `stop_hook_summary` entries (seen once in this run):
    /// then a Stop is never taken as the end before its summary.
    summaries_seen: bool,
    /// When each session last showed a sign of life (any hook or status-line event).
    last_life: HashMap<String, Instant>,
    out: Sender<Report>,
    /// The fleet's event stream: tasks claimed and done.
    feed: crate::daemon::event_stream::Events,
    /// Names inotify reported complete, per project.
    complete: HashMap<String, HashSet<String>>,
    idle_since: HashMap<String, Instant>,
    last_janitor: Instant,
    /// When the janitor runs early: a marker-less task found at start was
    /// still inside its orphan grace.
    orphan_check: Option<Instant>,
    started: Instant,
    recovered: bool,
    /// Hook events that arrived before recovery.
    pending: Vec<(PathBuf, Box<RecordedEvent>)>,
    last_counts: Instant,
    last_checkpoint: Instant,
}

impl Dispatcher {
    /// `swap_was_interrupted`: a swap journal was found at start (a crash
    /// mid-swap): the tasks adopted then continue instead of starting over.
    pub fn start(
        config: &Config,
        out: Sender<Report>,
        keys: Sender<session_watcher::Command>,
        swap_was_interrupted: bool,
        feed: crate::daemon::event_stream::Events,
    ) -> Dispatcher {
        let (input, rx) = crossbeam_channel::unbounded();
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name("dispatcher".into())
            .spawn(move || {
                let wake = watch_inboxes(&config);
                let mut desk = Desk::new(config, out, keys);
                desk.feed = feed;
                desk.swap_was_interrupted = swap_was_interrupted;
                desk.serve(rx, wake);
            })
            .expect("spawn dispatcher thread");
        Dispatcher { input, thread }
    }
}

/// inotify on every project's inbox. A detached reader (it blocks in
/// `read`); it only sends `(project, name)`. A name renamed into an inbox
/// (`IN_MOVED_TO`) is sent as it is: a finished rename is a complete task,
/// claimable at once. A writer's close (`IN_CLOSE_WRITE`) only wakes a scan
/// and is sent with an empty name: `touch t.md; echo text > t.md` closes
/// twice, so a close does not mean the file is whole, and the settle time
/// decides (see the queue's settle rule).
fn watch_inboxes(config: &Config) -> Receiver<(String, String)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let Ok(mut inotify) = inotify::Inotify::init() else {
        log::warn!("inotify unavailable: inboxes are scanned every interval");
        return rx;
    };
    let mut projects = HashMap::new();
    for p in &config.projects {
        let inbox = p.path.join(crate::store::queue::QUEUE_DIR).join("inbox");
        let _ = std::fs::create_dir_all(&inbox);
        match inotify.watches().add(
            &inbox,
            inotify::WatchMask::MOVED_TO | inotify::WatchMask::CLOSE_WRITE,
        ) {
            Ok(wd) => {
                projects.insert(wd, p.name.clone());
            }
            Err(e) => log::warn!(
                "cannot watch {}: {e}; scanned every interval",
                inbox.display()
            ),
        }
    }
    let _ = std::thread::Builder::new()
        .name("inbox-inotify".into())
        .spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                let Ok(events) = inotify.read_events_blocking(&mut buf) else {
                    return;
                };
                for e in events {
                    let project = projects.get(&e.wd).cloned().unwrap_or_default();
                    let renamed_in = e.mask.contains(inotify::EventMask::MOVED_TO);
                    let name = e
                        .name
                        .filter(|_| renamed_in)
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if tx.send((project, name)).is_err() {
                        return;
                    }
                }
            }
        });
    rx
}

fn now() -> SystemTime {
    SystemTime::now()
}

impl Desk {
    fn new(config: Config, out: Sender<Report>, keys: Sender<session_watcher::Command>) -> Desk {
        let queues = config
            .projects
            .iter()
            .map(|p| {
                let q = Queue::for_project(p);
                if let Err(e) = q.ensure_layout() {
                    log::error!("project {}: {e}", p.name);
                }
                (q, p.pool.clone())
            })
            .collect();
        Desk {
            keys,
            config,
            queues,
            sessions: Vec::new(),
            assigned: HashMap::new(),
            fresh: HashSet::new(),
            clearing: HashMap::new(),
            paused: None,
            held: BTreeMap::new(),
            seated: None,
            unpaused_at: None,
            swap_was_interrupted: false,
            feed: Default::default(),
            summaries_seen: false,
            last_life: HashMap::new(),
            out,
            complete: HashMap::new(),
            idle_since: HashMap::new(),
            last_janitor: Instant::now(),
            orphan_check: None,
            started: Instant::now(),
            recovered: false,
            pending: Vec::new(),
            last_counts: Instant::now() - Duration::from_secs(10),
            last_checkpoint: Instant::now(),
        }
    }

    fn serve(&mut self, rx: Receiver<Command>, wake: Receiver<(String, String)>) {
        let ticker = tick(Duration::from_millis(500));
        let mut wake = wake;
        loop {
            select! {
                recv(rx) -> msg => match msg {
                    Ok(input) => self.handle(input),
                    Err(_) => return,
                },
                recv(wake) -> msg => match msg {
                    Ok((project, name)) => { self.complete.entry(project).or_default().insert(name); }
                    Err(_) => wake = crossbeam_channel::never(),
                },
                recv(ticker) -> _ => {}
            }
            // Drain what else is waiting before deciding once.
            while let Ok(input) = rx.try_recv() {
                self.handle(input);
            }
            while let Ok((project, name)) = wake.try_recv() {
                self.complete.entry(project).or_default().insert(name);
            }
            self.turn();
        }
    }

    fn queue(&self, project: &str) -> Option<&Queue> {
        self.queues
            .iter()
            .map(|(q, _)| q)
            .find(|q| q.project() == project)
    }

    fn session(&self, name: &str) -> Option<&SessionView> {
        self.sessions.iter().find(|s| s.name == name)
    }

    fn handle(&mut self, input: Command) {
        match input {
            Command::Sessions(s) => self.sessions = s,
            Command::Held(pools) => self.held = pools,
            Command::Seated(account) => self.seated = account,
            Command::Paused(p) => {
                if p.is_some() && self.paused.is_none() {
                    // Work under way waits for the swap and continues after it.
                    let now = Instant::now();
                    for (name, a) in self.assigned.iter_mut() {
                        let account = self
                            .sessions
                            .iter()
                            .find(|s| &s.name == name)
                            .and_then(|s| s.account.clone());
                        assignment::interrupt(a, account, now);
                    }
                }
                if p.is_none() && self.paused.is_some() {
                    self.unpaused_at = Some(Instant::now());
                }
                self.paused = p;
            }
            Command::Reconfigure(c) => {
                self.queues = c
                    .projects
                    .iter()
                    .map(|p| (Queue::for_project(p), p.pool.clone()))
                    .collect();
                self.config = *c;
            }
            Command::Hook(path, ev) => {
                if !self.recovered {
                    // Tasks left active by a previous run are adopted first,
                    // so a replayed Stop finds its task.
                    self.pending.push((path, ev));
                    return;
                }
                if let Some(session) = &ev.session {
                    self.last_life.insert(session.clone(), Instant::now());
                }
                if !self.on_hook(&ev, &path) {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }

    /// The circumstances of a step for `session`, now.
    fn ctx<'a>(&self, session: &'a str) -> Ctx<'a> {
        Ctx {
            session,
            now: Instant::now(),
            paused: self.paused.is_some(),
            managed: crate::decide::session::pool_of(&self.config, session).is_some(),
        }
    }

    /// Hands keystrokes for `session` to the session watcher.
    fn type_keys(&self, session: &str, keys: Keys) {
        let _ = self.keys.send(session_watcher::Command::Keys {
            session: session.to_string(),
            keys,
        });
    }

    /// Applies one hook event; true when its file must be kept (a Stop whose
    /// task is not recorded yet).
    fn on_hook(&mut self, ev: &RecordedEvent, path: &std::path::Path) -> bool {
        let Some(session) = ev.session.clone() else {
            return false;
        };
        match &ev.hook.event {
            HookEvent::SessionStart { source } => {
                if matches!(source, StartSource::Startup | StartSource::Clear) {
                    self.fresh.insert(session.clone());
                }
                self.clearing.remove(&session);
            }
            HookEvent::UserPromptSubmit { .. } => {
                self.fresh.remove(&session);
            }
            _ => {}
        }
        let ctx = self.ctx(&session);
        let account = account_of(&self.config, ev.config_dir.as_deref());
        let Some(a) = self.assigned.get_mut(&session) else {
            return false;
        };
        // A prompt typed before a swap's stop that went through (its event
        // lost with the stop) is not typed a second time after the resume.
        let retype_went_through = match (&a.phase, &ev.hook.event, &ev.hook.transcript) {
            (
                Phase::Interrupted {
                    retype: Some(text), ..
                },
                HookEvent::SessionStart {
                    source: StartSource::Resume,
                },
                Some(transcript),
            ) => crate::claude::facts::find_prompt(transcript, text).is_some(),
            _ => false,
        };
        let seen = HookSeen {
            account,
            retype_went_through,
            file: path.to_path_buf(),
        };
        let effects = assignment::on_hook(a, &ev.hook, &seen, ctx);
        self.apply(&session, effects)
    }

    /// Carries out what the assignment's state machine decided for
    /// `session`; true when the hook event's file must be kept.
    fn apply(&mut self, session: &str, effects: Vec<Effect>) -> bool {
        let mut keep = false;
        for effect in effects {
            match effect {
                Effect::Type(text) => self.type_keys(session, Keys::Text(text)),
                Effect::Clear => self.type_keys(session, Keys::Text("/clear".into())),
                Effect::Escape => self.type_keys(session, Keys::Key("Escape")),
                Effect::Enter => self.type_keys(session, Keys::Key("Enter")),
                Effect::Relocate => {
                    let cwd = self
                        .assigned
                        .get(session)
                        .and_then(|a| self.queue(&a.project))
                        .map(|q| q.project_path().to_path_buf());
                    if let Some(cwd) = cwd {
                        let _ = self.out.send(Report::Relocate {
                            session: session.to_string(),
                            cwd,
                        });
                    }
                }
                Effect::MarkAccount(account) => {
                    if let Some(a) = self.assigned.get(session) {
                        if let (Some(task), Some(q)) = (&a.task, self.queue(&a.project)) {
                            let _ = q.update_marker(task, |m| m.account = account);
                        }
                    }
                }
                Effect::Confirm {
                    conversation,
                    transcript,
                    offset,
                    latency,
                } => self.confirm(session, conversation, transcript, offset, latency),
                Effect::CheckFinishing => self.check_finishing(session),
                Effect::Finish { clear_after } => self.finish(session, clear_after),
                Effect::DeleteEventFiles(files) => {
                    for f in files {
                        let _ = std::fs::remove_file(f);
                    }
                }
                Effect::KeepEventFile => keep = true,
                Effect::Release(how) => self.release(session, how),
                Effect::LoseAttemptAndRelaunch(reason) => {
                    let cwd = self.session(session).map(|v| v.cwd.clone());
                    self.lose_attempt_and_relaunch(session, reason, cwd);
                }
            }
        }
        keep
    }

    /// A session in `Finishing`: its transcript read from where the turn's
    /// markers start, and the state machine told what it says.
    fn check_finishing(&mut self, session: &str) {
        use crate::claude::facts::{transcript_since, turn_state_since, TurnReading, TurnState};
        let ctx = self.ctx(session);
        let Some(a) = self.assigned.get_mut(session) else {
            return;
        };
        let reading = assignment::finishing_source(a).map(|(path, offset)| {
            transcript_since(&path, offset, 32 << 20)
                .map(|(text, start)| turn_state_since(&text, start))
                .unwrap_or(TurnReading {
                    state: TurnState::Unknown,
                    next: offset,
                    blocks: 0,
                    saw_summary: false,
                })
        });
        self.summaries_seen |= reading.as_ref().is_some_and(|r| r.saw_summary);
        let effects = assignment::finishing(a, reading, self.summaries_seen, ctx);
        self.apply(session, effects);
    }

    /// Records the task of a `Finishing` session as done, with the last
    /// answer of its turn and the account that answered it; then starts the
    /// next task's fresh conversation when `clear_after`.
    fn finish(&mut self, session: &str, clear_after: bool) {
        let Some(a) = self.assigned.get(session).cloned() else {
            return;
        };
        let Phase::Finishing {
            message,
            claude_session_id,
            account,
            events,
            ..
        } = &a.phase
        else {
            return;
        };
        let (Some(task), Some(q)) = (a.task.clone(), self.queue(&a.project)) else {
            return;
        };
        if let Some(account) = account {
            // The account recorded is the one whose session answered, not the
            // one active when the task was claimed.
            let _ = q.update_marker(&task, |m| m.account = account.clone());
        }
        match q.complete(
            &task,
            message.as_deref(),
            claude_session_id.as_deref(),
            now(),
        ) {
            Ok(Completion::Done { name }) => {
                log::info!("{session}: task {}/{name} done", a.project);
                let first_line = message
                    .as_deref()
                    .and_then(|m| m.lines().map(str::trim).find(|l| !l.is_empty()))
                    .map(|l| l.chars().take(200).collect::<String>());
                self.feed.publish(
                    crate::daemon::event_stream::Kind::TaskDone,
                    serde_json::json!({"project": a.project, "task": name, "session": session, "account": account, "answer": first_line}),
                );
                let _ = self.out.send(Report::Outcome {
                    outcome: TaskOutcome::Done,
                    dispatch_latency: None,
                });
            }
            Ok(_) => {}
            Err(e) => log::error!(
                "{session}: task {}/{task} could not be completed: {e}",
                a.project
            ),
        }
        // Recorded: the Stop events need no replay any more.
        for f in events {
            let _ = std::fs::remove_file(f);
        }
        self.release(session, Release::Done);
        // Start the next task's fresh conversation now, not when it
        // arrives: dispatch then only has to paste. Never into a session
        // a reload took out of our hands, nor one a swap is stopping.
        self.fresh.remove(session);
        if clear_after {
            self.clearing.insert(session.to_string(), Instant::now());
            self.type_keys(session, Keys::Text("/clear".into()));
        }
    }

    /// The typed prompt of `session` was submitted (seen by its
    /// `UserPromptSubmit`, or in its transcript): the task runs, and its
    /// turn's markers are read from `offset` (None: where the transcript
    /// stands now, its earlier turns behind).
    fn confirm(
        &mut self,
        session: &str,
        sid: Option<String>,
        transcript: Option<PathBuf>,
        offset: Option<u64>,
        latency: Duration,
    ) {
        self.fresh.remove(session);
        let Some(a) = self.assigned.get_mut(session) else {
            return;
        };
        a.transcript = transcript.map(|p| {
            let at = offset.unwrap_or_else(|| crate::claude::facts::transcript_len(&p));
            (p, at)
        });
        let (task, project) = (a.task.clone(), a.project.clone());
        if let (Some(task), Some(id)) = (task, sid) {
            if let Some(q) = self.queue(&project) {
                let _ = q.record_claude_session_id(&task, &id);
            }
        }
        log::info!(
            "{session}: task submitted ({} ms after it was seen)",
            latency.as_millis()
        );
        let _ = self.out.send(Report::Outcome {
            outcome: TaskOutcome::Submitted,
            dispatch_latency: Some(latency),
        });
    }

    /// The attempt counts and the session is relaunched fresh in its folder,
    /// so what it was doing cannot finish beside the retry; until it is back,
    /// it is given nothing.
    fn lose_attempt_and_relaunch(&mut self, name: &str, reason: String, cwd: Option<PathBuf>) {
        self.release(name, Release::Attempt(reason));
        self.fresh.remove(name);
        self.clearing.insert(name.to_string(), Instant::now());
        if let Some(cwd) = cwd {
            let _ = self.out.send(Report::Relocate {
                session: name.to_string(),
                cwd,
            });
        }
    }

    fn release(&mut self, session: &str, how: Release) {
        let Some(a) = self.assigned.remove(session) else {
            return;
        };
        if let Phase::Finishing { events, .. } = &a.phase {
            for f in events {
                let _ = std::fs::remove_file(f);
            }
        }
        let _ = self.out.send(Report::Task {
            session: session.to_string(),
            task: None,
        });
        self.idle_since.insert(session.to_string(), Instant::now());
        let Some(task) = a.task else {
            return;
        };
        let Some(q) = self.queue(&a.project) else {
            return;
        };
        match how {
            Release::Done => {}
            Release::Requeue => match q.requeue(&task) {
                Ok(_) => {
                    let _ = self.out.send(Report::Outcome {
                        outcome: TaskOutcome::Requeued,
                        dispatch_latency: None,
                    });
                }
                Err(e) => log::error!(
                    "task {}/{task}: cannot go back to the inbox: {e}",
                    a.project
                ),
            },
            Release::Attempt(reason) => {
                match q.fail_attempt(&task, &reason, self.config.janitor.max_attempts, now()) {
                    Ok(Outcome::Requeued { attempts, .. }) => {
                        log::warn!("task {}/{task}: attempt {attempts} failed ({reason}); back in the inbox", a.project);
                        let _ = self.out.send(Report::Outcome {
                            outcome: TaskOutcome::Requeued,
                            dispatch_latency: None,
                        });
                    }
                    Ok(Outcome::Failed { name, attempts }) => {
                        log::error!(
                            "task {}/{name}: failed after {attempts} attempts: {reason}",
                            a.project
                        );
                        let _ = self.out.send(Report::Outcome {
                            outcome: TaskOutcome::Failed,
                            dispatch_latency: None,
                        });
                        let _ = self.out.send(Report::TaskFailed {
                            project: a.project.clone(),
                            task: name,
                            reason,
                        });
                    }
                    Err(e) => log::error!("task {}/{task}: {e}", a.project),
                }
            }
        }
    }

    /// A task in active/ with no marker at start: claimed (renamed into
    /// active/) by a daemon that ended before it wrote the marker, so no
    /// session ever had it. Back to the inbox at once, no attempt counted,
    /// once it is [`queue::ORPHAN_GRACE`] old (a younger one could be
    /// another daemon's claim under way, one with a state folder of its own
    /// serving the same project): then the janitor runs when that grace
    /// ends, not at its next round (`janitor.interval`, 5 min by default).
    /// An unreadable marker is left to the janitor's rules as before.
    fn orphan_at_start(&mut self, q: &Queue, name: &str) {
        if q.marker_path(name).exists() {
            log::error!(
                "task {}/{name}: its marker cannot be read; left in active/ for the janitor",
                q.project()
            );
            return;
        }
        let left = q.orphan_grace_left(name, now());
        if !left.is_zero() {
            let at = Instant::now() + left + Duration::from_millis(200);
            self.orphan_check = Some(self.orphan_check.map_or(at, |t| t.min(at)));
            return;
        }
        match q.requeue(name) {
            Ok(_) => log::warn!(
                "task {}/{name} was claimed before a restart but has no marker (the daemon stopped between the two steps); back to the inbox",
                q.project()
            ),
            Err(e) => log::error!(
                "task {}/{name} was claimed before a restart but has no marker, and cannot go back to the inbox: {e}",
                q.project()
            ),
        }
    }

    /// Adopts tasks left active by a previous run. A task whose submission
    /// was never confirmed may still have been submitted (the daemon can die
    /// between the Enter and its `UserPromptSubmit`): it is adopted as typed,
    /// and the events buffered since, then the transcript, decide; it goes
    /// back to the inbox only when its session is gone. Tasks adopted while a
    /// swap is under way (a crash mid-swap) are interrupted, not lost: they
    /// continue after the swap.
    fn recover(&mut self) {
        let swapping = self.paused.is_some() || self.swap_was_interrupted;
        let mut adopted = Vec::new();
        let queues = self.queues.clone();
        for (q, _) in &queues {
            let Ok(active) = q.list_active() else {
                continue;
            };
            for (name, marker) in active {
                let Some(m) = marker else {
                    self.orphan_at_start(q, &name);
                    continue;
                };
                let session = self.sessions.iter().find(|s| s.name == m.session);
                if session.is_none() || self.assigned.contains_key(&m.session) {
                    log::warn!("task {}/{name} was claimed by {} before a restart, and that session is gone; back to the inbox", q.project(), m.session);
                    let _ = q.requeue(&name);
                    continue;
                }
                let confirmed = m.claude_session_id.is_some();
                // Its typed form, read back only when its submission is in doubt.
                let text = (!confirmed)
                    .then(|| {
                        std::fs::read(q.task_path(crate::store::queue::Folder::Active, &name)).ok()
                    })
                    .flatten()
                    .and_then(|b| crate::store::queue::parse_task(&b).ok())
                    .and_then(|t| {
                        let slash = t.front.slash_command.unwrap_or(false);
                        crate::claude::facts::typed_form(t.prompt(), slash).ok()
                    });
                let Some(phase) =
                    assignment::adopted(swapping, confirmed, &m.account, text, Instant::now())
                else {
                    log::warn!(
                        "task {}/{name}: cannot read it back after a restart; back to the inbox",
                        q.project()
                    );
                    let _ = q.requeue(&name);
                    continue;
                };
                log::info!(
                    "{}: adopting its active task {}/{name} ({})",
                    m.session,
                    q.project(),
                    match phase {
                        Phase::Running => "running",
                        Phase::Interrupted { .. } => "interrupted by a swap",
                        _ => "submission not yet confirmed",
                    }
                );
                adopted.push((
                    m.session.clone(),
                    Assignment {
                        project: q.project().to_string(),
                        task: Some(name.clone()),
                        prompt: String::new(),
                        phase,
                        seen_at: Instant::now(),
                        transcript: None,
                    },
                    name,
                ));
            }
        }
        for (session, a, name) in adopted {
            self.assigned.insert(session.clone(), a);
            let _ = self.out.send(Report::Task {
                session,
                task: Some(name),
            });
        }
    }

    fn turn(&mut self) {
        if !self.recovered {
            // Wait for the first session snapshot so adoption sees states.
            if self.sessions.is_empty() && self.started.elapsed() < Duration::from_secs(5) {
                return;
            }
            self.recover();
            self.recovered = true;
            for (path, ev) in std::mem::take(&mut self.pending) {
                if !self.on_hook(&ev, &path) {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        self.check_assignments();
        if self.paused.is_none() {
            self.dispatch();
        }
        self.resize_pools();
        if self.last_checkpoint.elapsed() >= self.config.checkpoint.interval {
            self.last_checkpoint = Instant::now();
            self.checkpoints();
        }
        let orphans_due = self.orphan_check.is_some_and(|t| Instant::now() >= t);
        if orphans_due || self.last_janitor.elapsed() >= self.config.janitor.interval {
            self.orphan_check = None;
            self.last_janitor = Instant::now();
            self.janitor();
        }
        if self.last_counts.elapsed() >= Duration::from_secs(1) {
            self.last_counts = Instant::now();
            self.publish_counts();
        }
    }

    /// Deadlines, and sessions that died under a task.
    fn check_assignments(&mut self) {
        let rules = assignment::Rules {
            stale_after: self.config.janitor.stale_task_after,
            stale_while_waiting: self.config.janitor.stale_while_waiting,
            unpaused_at: self.unpaused_at,
            seated: self.seated.clone(),
        };
        let names: Vec<String> = self.assigned.keys().cloned().collect();
        for name in names {
            let ctx = self.ctx(&name);
            let view = self.session(&name).cloned();
            let Some(a) = self.assigned.get(&name) else {
                continue;
            };
            let mut seen = SessionSeen {
                state: view.as_ref().map(|s| s.state),
                account: view.as_ref().and_then(|v| v.account.clone()),
                conversation: view.as_ref().and_then(|v| v.claude_session_id.clone()),
                ..SessionSeen::default()
            };
            if matches!(a.phase, Phase::Running) {
                seen.transcript_quiet = a
                    .transcript
                    .as_ref()
                    .and_then(|(p, _)| std::fs::metadata(p).ok()?.modified().ok())
                    .and_then(|m| m.elapsed().ok());
                seen.events_quiet = self.last_life.get(&name).map(|t| t.elapsed());
            }
            if let Phase::Typing { text, .. } = &a.phase {
                if assignment::wants_transcript_look(a, ctx) {
                    seen.prompt_in_transcript = self.prompt_in_transcript(view.as_ref(), text);
                }
            }
            let Some(a) = self.assigned.get_mut(&name) else {
                continue;
            };
            let effects = assignment::on_deadline(a, &seen, &rules, ctx);
            self.apply(&name, effects);
        }
    }

    /// Where the session's current transcript holds `text` as a submitted
    /// prompt: the transcript and the offset of that prompt.
    fn prompt_in_transcript(
        &self,
        view: Option<&SessionView>,
        text: &str,
    ) -> Option<(PathBuf, u64)> {
        let v = view?;
        let path = self.config.transcript_of(
            v.account.as_deref(),
            &v.cwd,
            v.claude_session_id.as_deref(),
        )?;
        let at = crate::claude::facts::find_prompt(&path, text)?;
        Some((path, at))
    }

    fn free_sessions(&self, pool: &str) -> Vec<SessionView> {
        // A session whose /clear is on its way is free again once it is
        // confirmed (or after the deadline, when the next task clears anew).
        let clearing = |n: &str| {
            self.clearing
                .get(n)
                .is_some_and(|t| t.elapsed() < assignment::CLEAR_DEADLINE)
        };
        self.sessions
            .iter()
            .filter(|s| {
                s.pool == pool
                    && s.state == State::Idle
                    && !self.assigned.contains_key(&s.name)
                    && !clearing(&s.name)
            })
            .cloned()
            .collect()
    }

    fn dispatch(&mut self) {
        let queues: Vec<(Queue, String)> = self.queues.clone();
        for (q, pool) in queues {
            let dispatchable = self
                .config
                .pools
                .iter()
                .any(|p| p.name == pool && p.dispatch);
            if !dispatchable || self.held.contains_key(&pool) {
                continue;
            }
            let mut free = self.free_sessions(&pool);
            if free.is_empty() {
                continue;
            }
            let complete = self.complete.remove(q.project()).unwrap_or_default();
            let scan = match q.scan_inbox_with(now(), &complete) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("project {}: {e}", q.project());
                    continue;
                }
            };
            for r in &scan.rejected {
                log::error!(
                    "project {}: {} refused (now failed/{}): {}",
                    q.project(),
                    r.file,
                    r.moved_to,
                    r.reason
                );
                let _ = self.out.send(Report::Outcome {
                    outcome: TaskOutcome::Failed,
                    dispatch_latency: None,
                });
                let _ = self.out.send(Report::TaskFailed {
                    project: q.project().to_string(),
                    task: r.file.clone(),
                    reason: r.reason.clone(),
                });
            }
            for i in &scan.newly_ignored {
                log::warn!(
                    "project {}: inbox/{i} is not a task (only *.md files are); left alone",
                    q.project()
                );
            }
            // Names seen complete but not ready yet (same name active) stay known.
            for n in &scan.not_ready {
                let file = format!("{n}.md");
                if complete.contains(&file) {
                    self.complete
                        .entry(q.project().to_string())
                        .or_default()
                        .insert(file);
                }
            }
            for task in scan.ready {
                // Prefer a session already in the project's folder.
                let pos = free
                    .iter()
                    .position(|s| s.cwd == q.project_path())
                    .unwrap_or(0);
                if free.is_empty() {
                    break;
                }
                let s = free.remove(pos);
                let seen_at = Instant::now();
                let account = s.account.clone().unwrap_or_default();
                let claimed = match q.claim(&task, &s.name, &account, now()) {
                    Ok(c) => c,
                    Err(e) => {
                        log::warn!("project {}: cannot claim {}: {e}", q.project(), task.name);
                        continue;
                    }
                };
                log::info!(
                    "{}: task {}/{} (attempt {})",
                    s.name,
                    q.project(),
                    claimed.name,
                    claimed.marker.attempt
                );
                self.feed.publish(
                    crate::daemon::event_stream::Kind::TaskClaimed,
                    serde_json::json!({"project": q.project(), "task": claimed.name, "session": s.name, "account": account, "attempt": claimed.marker.attempt}),
                );
                // Task text is typed as data, never as keystrokes.
                let typed = match crate::claude::facts::typed_form(
                    &claimed.prompt,
                    claimed.slash_command,
                ) {
                    Ok(t) => t,
                    Err(reason) => {
                        log::error!(
                            "project {}: task {} refused: {reason}",
                            q.project(),
                            claimed.name
                        );
                        if let Ok(Outcome::Failed { name, .. }) =
                            q.give_up(&claimed.name, &reason, now())
                        {
                            let _ = self.out.send(Report::Outcome {
                                outcome: TaskOutcome::Failed,
                                dispatch_latency: None,
                            });
                            let _ = self.out.send(Report::TaskFailed {
                                project: q.project().to_string(),
                                task: name,
                                reason,
                            });
                        }
                        free.insert(pos.min(free.len()), s);
                        continue;
                    }
                };
                let _ = self.out.send(Report::Task {
                    session: s.name.clone(),
                    task: Some(claimed.name.clone()),
                });
                let mut a = Assignment {
                    project: q.project().to_string(),
                    task: Some(claimed.name.clone()),
                    prompt: typed,
                    phase: Phase::Running,
                    seen_at,
                    transcript: None,
                };
                let effect = assignment::begin(
                    &mut a,
                    s.cwd == q.project_path(),
                    self.fresh.contains(&s.name),
                    Instant::now(),
                );
                self.assigned.insert(s.name.clone(), a);
                self.apply(&s.name, vec![effect]);
            }
        }
    }

    /// Grow pools while tasks wait and an account is usable; shrink idle
    /// sessions above `min` after `idle_shrink_after` (see `pool_size`).
    fn resize_pools(&mut self) {
        use crate::decide::pool_size::{self, Member, Resize};
        let at = Instant::now();
        let assigned = &self.assigned;
        fn member<'a>(s: &'a SessionView, assigned: &HashMap<String, Assignment>) -> Member<'a> {
            Member {
                name: &s.name,
                state: s.state,
                assigned: assigned.contains_key(&s.name),
            }
        }
        for pool in &self.config.pools {
            if !pool.dispatch {
                continue;
            }
            let waiting: usize = self
                .queues
                .iter()
                .filter(|(_, p)| *p == pool.name)
                .filter_map(|(q, _)| q.tracked_counts(now()).ok())
                .map(|c| c.inbox)
                .sum();
            let members: Vec<Member> = self
                .sessions
                .iter()
                .filter(|s| s.pool == pool.name)
                .map(|s| member(s, assigned))
                .collect();
            let paused = self.paused.is_some() || self.held.contains_key(&pool.name);
            match pool_size::resize(pool, waiting, &members, &self.idle_since, paused, at) {
                Some(Resize::Grow(name)) => {
                    log::info!(
                        "pool {}: {waiting} task(s) waiting, growing with {name}",
                        pool.name
                    );
                    let _ = self.out.send(Report::Grow {
                        pool: pool.name.clone(),
                        name,
                    });
                }
                Some(Resize::Shrink(name)) => {
                    log::info!(
                        "pool {}: {name} idle for {:?}, shrinking",
                        pool.name,
                        pool.idle_shrink_after
                    );
                    self.idle_since.remove(&name);
                    let _ = self.out.send(Report::Shrink { name });
                }
                None => {}
            }
        }
        let members: Vec<Member> = self.sessions.iter().map(|s| member(s, assigned)).collect();
        pool_size::track_idle(&mut self.idle_since, &members, at);
    }

    /// One checkpoint per session, read from its transcript's tail; old ones pruned.
    fn checkpoints(&self) {
        let dir = self.config.state_dir.join("checkpoints");
        for s in &self.sessions {
            let transcript = self.config.transcript_of(
                s.account.as_deref(),
                &s.cwd,
                s.claude_session_id.as_deref(),
            );
            let cp = crate::store::checkpoint::Checkpoint {
                session: s.name.clone(),
                account: s.account.clone(),
                claude_session_id: s.claude_session_id.clone(),
                cwd: s.cwd.to_string_lossy().into_owned(),
                task: self.assigned.get(&s.name).and_then(|a| a.task.clone()),
                state: s.state.as_str().to_string(),
                // The transcript's tool call replaces it when its tail has one.
                last_tool_call: s
                    .last_tool
                    .clone()
                    .map(|name| serde_json::json!({"name": name})),
                last_assistant_message: None,
                written_at: crate::sys::time::rfc3339(now()),
            };
            if let Err(e) = crate::store::checkpoint::write(&dir, cp, transcript) {
                log::warn!("{}: checkpoint not written: {e}", s.name);
            }
        }
        crate::store::checkpoint::prune(&dir, self.config.checkpoint.keep, now());
    }

    fn janitor(&mut self) {
        let assigned: HashSet<String> = self
            .assigned
            .values()
            .filter_map(|a| a.task.clone())
            .collect();
        // An active task with a marker that no session works on (its Stop
        // was lost with a crash, say) goes back to the inbox at once.
        for (q, _) in &self.queues {
            for (name, marker) in q.list_active().unwrap_or_default() {
                if marker.is_some() && !assigned.contains(&name) {
                    log::warn!("project {}: task {name} is active but no session works on it; back to the inbox", q.project());
                    let _ = q.requeue(&name);
                }
            }
        }
        for (q, _) in &self.queues {
            let live = |m: &crate::store::queue::Marker| self.assigned.contains_key(&m.session);
            match q.janitor(now(), &self.config.janitor, &live) {
                Ok(r) => {
                    for name in &r.orphans_requeued {
                        log::warn!(
                            "project {}: task {name} was in active/ with no marker for {:?} (a claim cut short); back to the inbox",
                            q.project(),
                            queue::ORPHAN_GRACE
                        );
                    }
                    for (name, _) in &r.stale {
                        if !assigned.contains(name) {
                            log::warn!("project {}: task {name} had no sign of life for {:?}; back to the inbox", q.project(), self.config.janitor.stale_task_after);
                        }
                    }
                    for e in r.errors {
                        log::warn!("project {}: janitor: {e}", q.project());
                    }
                }
                Err(e) => log::warn!("project {}: janitor: {e}", q.project()),
            }
        }
    }

    fn publish_counts(&mut self) {
        let mut counts = BTreeMap::new();
        for (q, _) in &self.queues {
            // Tracked counts: a few `stat`s when nothing changed, whatever
            // the size of done/; status.json only when it changed.
            if let Ok(c) = q.tracked_counts(now()) {
                counts.insert(q.project().to_string(), c);
            }
            let serving: Vec<String> = self
                .assigned
                .iter()
                .filter(|(_, a)| a.project == q.project())
                .map(|(s, _)| s.clone())
                .collect();
            let _ = q.publish_status(&serving, now());
        }
        let _ = self.out.send(Report::Counts(counts));
    }
}

/// The account whose home is `config_dir` (a hook's `CLAUDE_CONFIG_DIR`).
fn account_of(config: &Config, config_dir: Option<&str>) -> Option<String> {
    config
        .account_by_home(std::path::Path::new(config_dir?))
        .map(|a| a.name.clone())
}
