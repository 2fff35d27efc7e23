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

use crate::config::Config;
use crate::hook::RecordedEvent;
use crate::queue::{Completion, Outcome, Queue};
use crate::session::State;
use crate::status::QueueCounts;
use crate::tmux::Tmux;

/// What the dispatcher sees of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub name: String,
    pub pool: String,
    pub state: State,
    pub cwd: PathBuf,
    pub account: Option<String>,
    pub claude_session_id: Option<String>,
}

pub enum Input {
    Sessions(Vec<SessionView>),
    /// A hook event and its file (deleted once handled).
    Hook(PathBuf, Box<RecordedEvent>),
    /// Dispatch paused (a swap, or no account can take work), with why.
    Paused(Option<String>),
    Reconfigure(Box<Config>),
}

#[derive(Debug, Clone)]
pub enum Output {
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
    /// A task finished: `done`, `failed` or `requeued`, and the time from
    /// its arrival to its confirmed submission.
    Outcome {
        outcome: &'static str,
        dispatch_latency: Option<Duration>,
    },
    /// A task failed for good (for notifications).
    TaskFailed {
        project: String,
        task: String,
        reason: String,
    },
}

pub struct Dispatcher {
    pub input: Sender<Input>,
    pub thread: JoinHandle<()>,
}

/// How long a pasted prompt may wait for its `UserPromptSubmit` before one
/// more Enter, plus [`SUBMIT_PER_MIB`] for every MiB of text (a 1 MiB paste
/// takes the TUI a while).
const SUBMIT_DEADLINE: Duration = Duration::from_secs(10);
const SUBMIT_PER_MIB: Duration = Duration::from_secs(60);
/// How long an unconfirmed prompt is given in all before the attempt counts
/// as lost: a slow user hook or a loaded machine delays `UserPromptSubmit`,
/// and a prompt that was not confirmed may still have been submitted, so it
/// is never typed again while the session could still be running it.
const SUBMIT_GIVE_UP: Duration = Duration::from_secs(120);
/// How often an unconfirmed prompt is looked for in the session's transcript.
const TRANSCRIPT_LOOK_EVERY: Duration = Duration::from_secs(2);
/// After a `Stop`, how long to wait for the transcript to say whether the
/// turn is over (a user's Stop hook may block it) before taking the Stop as
/// the end.
const FINISH_GRACE: Duration = Duration::from_secs(10);
/// The longest a Stop waits for its summary when this Claude Code writes
/// them (a user's Stop hook may run a test suite before it answers).
const FINISH_WAIT_MAX: Duration = Duration::from_secs(15 * 60);
/// After dispatch resumes without a swap (the account recovered), how long
/// before an interrupted task's session is told to continue: a swap's own
/// relaunch, if one is on its way, continues it first.
const RESUME_SETTLE: Duration = Duration::from_secs(3);
/// How long `/clear` may take to answer with `SessionStart`.
const CLEAR_DEADLINE: Duration = Duration::from_secs(15);
/// How long a relocated session may take to come back.
const RELOCATE_DEADLINE: Duration = Duration::from_secs(90);
/// What a resumed conversation is told after a swap interrupted its task.
pub const CONTINUE_PROMPT: &str = "This session was moved to another account and resumed. Continue the task you were working on from where you stopped, and finish it.";
/// What a session refused by its account is told once the account (or
/// another) can take work again without a swap.
pub const CONTINUE_AFTER_LIMIT_PROMPT: &str = "The usage limit that stopped you has passed. Continue the task you were working on from where you stopped, and finish it.";

/// How long the prompt may take to be confirmed before one more Enter.
fn submit_deadline(text: &str) -> Duration {
    SUBMIT_DEADLINE + SUBMIT_PER_MIB.mul_f64(text.len() as f64 / (1u64 << 20) as f64)
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Waiting for the session to come back in the project's folder.
    Relocating { since: Instant },
    /// `/clear` typed; waiting for `SessionStart` with source `clear`.
    Clearing { since: Instant },
    /// Prompt pasted; waiting for `UserPromptSubmit` (or its trace in the transcript).
    Typing {
        since: Instant,
        retried: bool,
        text: String,
        looked_at: Option<Instant>,
    },
    /// Submitted; waiting for `Stop`.
    Running,
    /// A `Stop` came; waiting for the transcript to say the turn is over (a
    /// user's Stop hook may have blocked it, and the turn goes on).
    /// `stops` counts the Stops not yet answered by a blocking summary;
    /// `events` keeps their event files, deleted only once the task is
    /// recorded, so a crash in between replays the Stop instead of losing it.
    Finishing {
        since: Instant,
        message: Option<String>,
        claude_session_id: Option<String>,
        transcript: Option<PathBuf>,
        account: Option<String>,
        stops: u32,
        events: Vec<PathBuf>,
    },
    /// A swap (or a refusal) interrupted it; continue after `SessionStart(resume)`,
    /// or when dispatch resumes and the session still runs under `account`.
    /// `retype` is the text that was typed but not yet confirmed when the
    /// swap began (the swap's stop may have dropped it): it is typed again
    /// rather than the continuation prompt.
    Interrupted {
        account: Option<String>,
        retype: Option<String>,
        since: Instant,
    },
}

#[derive(Debug, Clone)]
struct Assignment {
    project: String,
    /// Claimed task name (None while relocating for a not yet claimed task).
    task: Option<String>,
    prompt: String,
    phase: Phase,
    /// When the task was seen ready (for dispatch latency).
    seen_at: Instant,
    /// The turn's transcript and the offset its end-of-turn markers are
    /// read from (set when the submission is confirmed).
    transcript: Option<(PathBuf, u64)>,
}

struct Run {
    config: Config,
    tmux: Tmux,
    queues: Vec<(Queue, String)>, // (queue, pool)
    sessions: Vec<SessionView>,
    assigned: HashMap<String, Assignment>,
    /// Sessions whose conversation is fresh (no prompt since it started or cleared).
    fresh: HashSet<String>,
    /// Sessions with a `/clear` typed and not yet confirmed, since when.
    clearing: HashMap<String, Instant>,
    paused: Option<String>,
    /// When dispatch last resumed after a pause.
    unpaused_at: Option<Instant>,
    /// A swap journal was found at start.
    swap_was_interrupted: bool,
    /// Claude Code writes `stop_hook_summary` entries (seen once in this run):
    /// then a Stop is never taken as the end before its summary.
    summaries_seen: bool,
    /// When each session last showed a sign of life (any hook or status-line event).
    last_life: HashMap<String, Instant>,
    out: Sender<Output>,
    /// Names inotify reported complete, per project.
    complete: HashMap<String, HashSet<String>>,
    idle_since: HashMap<String, Instant>,
    last_janitor: Instant,
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
    pub fn start(config: &Config, out: Sender<Output>, swap_was_interrupted: bool) -> Dispatcher {
        let (input, rx) = crossbeam_channel::unbounded();
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name("dispatcher".into())
            .spawn(move || {
                let wake = watch_inboxes(&config);
                let mut run = Run::new(config, out);
                run.swap_was_interrupted = swap_was_interrupted;
                run.serve(rx, wake);
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
        let inbox = p.path.join(crate::queue::QUEUE_DIR).join("inbox");
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

impl Run {
    fn new(config: Config, out: Sender<Output>) -> Run {
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
        Run {
            tmux: Tmux::new(config.tmux.socket.clone(), Duration::from_secs(10)),
            config,
            queues,
            sessions: Vec::new(),
            assigned: HashMap::new(),
            fresh: HashSet::new(),
            clearing: HashMap::new(),
            paused: None,
            unpaused_at: None,
            swap_was_interrupted: false,
            summaries_seen: false,
            last_life: HashMap::new(),
            out,
            complete: HashMap::new(),
            idle_since: HashMap::new(),
            last_janitor: Instant::now(),
            started: Instant::now(),
            recovered: false,
            pending: Vec::new(),
            last_counts: Instant::now() - Duration::from_secs(10),
            last_checkpoint: Instant::now(),
        }
    }

    fn serve(&mut self, rx: Receiver<Input>, wake: Receiver<(String, String)>) {
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

    fn handle(&mut self, input: Input) {
        match input {
            Input::Sessions(s) => self.sessions = s,
            Input::Paused(p) => {
                if p.is_some() && self.paused.is_none() {
                    // Work under way waits for the swap and continues after it.
                    let sessions = &self.sessions;
                    for (name, a) in self.assigned.iter_mut() {
                        if matches!(a.phase, Phase::Running | Phase::Typing { .. })
                            && a.task.is_some()
                        {
                            let account = sessions
                                .iter()
                                .find(|s| &s.name == name)
                                .and_then(|s| s.account.clone());
                            let retype = match &a.phase {
                                Phase::Typing { text, .. } => Some(text.clone()),
                                _ => None,
                            };
                            a.phase = Phase::Interrupted {
                                account,
                                retype,
                                since: Instant::now(),
                            };
                        }
                    }
                }
                if p.is_none() && self.paused.is_some() {
                    self.unpaused_at = Some(Instant::now());
                }
                self.paused = p;
            }
            Input::Reconfigure(c) => {
                self.queues = c
                    .projects
                    .iter()
                    .map(|p| (Queue::for_project(p), p.pool.clone()))
                    .collect();
                self.config = *c;
            }
            Input::Hook(path, ev) => {
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

    /// Applies one hook event; true when its file must be kept (a Stop whose
    /// task is not recorded yet).
    fn on_hook(&mut self, ev: &RecordedEvent, path: &std::path::Path) -> bool {
        let Some(session) = ev.session.clone() else {
            return false;
        };

        let hook = ev.field("hook_event_name").unwrap_or("");
        let sid = ev.field("session_id").map(String::from);
        let source = ev.field("source").unwrap_or("");
        match hook {
            "SessionStart" => {
                if source == "startup" || source == "clear" {
                    self.fresh.insert(session.clone());
                }
                self.clearing.remove(&session);
                let Some(a) = self.assigned.get_mut(&session) else {
                    return false;
                };
                match (&a.phase, source) {
                    (Phase::Clearing { .. }, "clear") | (Phase::Relocating { .. }, "startup")
                        if self.paused.is_some() =>
                    {
                        // A swap is stopping the sessions: type after it.
                        a.phase = Phase::Interrupted {
                            account: account_of(&self.config, ev.config_dir.as_deref()),
                            retype: Some(a.prompt.clone()),
                            since: Instant::now(),
                        };
                    }
                    (Phase::Clearing { .. }, "clear") | (Phase::Relocating { .. }, "startup") => {
                        let text = a.prompt.clone();
                        self.type_text(&session, &text, false);
                    }
                    (Phase::Interrupted { retype, .. }, "resume") => {
                        // A prompt that went through before the stop (its
                        // event lost with it) is not typed a second time.
                        let went_through = retype.as_deref().is_some_and(|t| {
                            ev.field("transcript_path").is_some_and(|p| {
                                crate::claude_facts::find_prompt(std::path::Path::new(p), t)
                                    .is_some()
                            })
                        });
                        let text = match retype {
                            Some(t) if !went_through => t.clone(),
                            _ => CONTINUE_PROMPT.to_string(),
                        };
                        // The task now runs under the account the session resumed on.
                        let account = account_of(&self.config, ev.config_dir.as_deref());
                        if let (Some(task), Some(account)) = (a.task.clone(), account) {
                            let project = a.project.clone();
                            if let Some(q) = self.queue(&project) {
                                let _ = q.update_marker(&task, |m| m.account = account);
                            }
                        }
                        log::info!("{session}: resumed after a swap; continuing its task");
                        self.type_text(&session, &text, false);
                    }
                    (
                        Phase::Running
                        | Phase::Typing { .. }
                        | Phase::Clearing { .. }
                        | Phase::Finishing { .. },
                        "startup" | "resume",
                    ) if self.paused.is_none() => {
                        if matches!(a.phase, Phase::Finishing { .. }) {
                            // Its Stop came before the restart: the answer is there.
                            self.finish(&session);
                            return false;
                        }
                        // The program restarted under the task (it died and was
                        // relaunched): that attempt is lost.
                        self.release(
                            &session,
                            Release::Attempt(format!(
                                "session {session} restarted while working on it"
                            )),
                        );
                    }
                    (Phase::Interrupted { .. }, _) => {
                        // The conversation could not be resumed: start the task
                        // afresh without counting an attempt.
                        log::warn!("{session}: resumed as a new conversation; its task goes back to the inbox");
                        self.release(&session, Release::Requeue);
                    }
                    _ => {}
                }
            }
            "UserPromptSubmit" => {
                self.fresh.remove(&session);
                let Some(a) = self.assigned.get_mut(&session) else {
                    return false;
                };
                // Only the submission of the text we typed confirms it: a
                // late turn of an earlier prompt must not.
                // Claude Code reports a long paste wrapped in
                // `<pasted_content>`; `same_prompt` sees through that.
                let typed = match &a.phase {
                    Phase::Typing { text, .. } => Some(text.as_str()),
                    Phase::Interrupted {
                        retype: Some(text), ..
                    } => {
                        // Typed before the swap began, and it did go through.
                        if crate::claude_facts::same_prompt(text, ev.field("prompt").unwrap_or(""))
                        {
                            if let Phase::Interrupted { retype, .. } = &mut a.phase {
                                *retype = None;
                            }
                        }
                        None
                    }
                    _ => None,
                };
                let submitted = ev.field("prompt").unwrap_or("");
                if typed.is_some_and(|t| crate::claude_facts::same_prompt(t, submitted)) {
                    // The turn's markers are read from where the transcript
                    // stands now: its earlier turns are behind.
                    let transcript = ev.field("transcript_path").map(|p| {
                        let p = PathBuf::from(p);
                        let len = crate::claude_facts::transcript_len(&p);
                        (p, len)
                    });
                    self.confirm(&session, sid, transcript);
                }
            }
            "Stop" => {
                let Some(a) = self.assigned.get_mut(&session) else {
                    return false;
                };
                // Only a turn whose submission we saw (Running), or one cut by a
                // swap, answers the task: a Stop while still Typing belongs to
                // an earlier prompt. The task is done when the turn is over,
                // which the transcript tells (a user's Stop hook may block
                // the end and the turn goes on): see `check_assignments`.
                if !matches!(
                    a.phase,
                    Phase::Running | Phase::Interrupted { .. } | Phase::Finishing { .. }
                ) {
                    return false;
                }
                let (stops, mut events) = match &mut a.phase {
                    Phase::Finishing { stops, events, .. } => (*stops + 1, std::mem::take(events)),
                    _ => (1, Vec::new()),
                };
                events.push(path.to_path_buf());
                a.phase = Phase::Finishing {
                    since: Instant::now(),
                    message: ev.field("last_assistant_message").map(String::from),
                    claude_session_id: sid,
                    transcript: ev.field("transcript_path").map(PathBuf::from),
                    account: account_of(&self.config, ev.config_dir.as_deref()),
                    stops,
                    events,
                };
                self.check_finishing(&session);
                return true;
            }
            "StopFailure" => {
                let error = ev.field("error").unwrap_or("unknown");
                let message = ev.field("last_assistant_message").unwrap_or("");
                let Some(a) = self.assigned.get_mut(&session) else {
                    return false;
                };
                if crate::claude_facts::stop_failure_kind(error)
                    == Some(crate::claude_facts::LimitKind::FiveHour)
                {
                    // Refused: not an attempt; it continues after the swap,
                    // or when the account can take work again.
                    let account = account_of(&self.config, ev.config_dir.as_deref());
                    a.phase = Phase::Interrupted {
                        account,
                        retype: None,
                        since: Instant::now(),
                    };
                } else {
                    let reason = format!("{error}: {message}");
                    self.release(&session, Release::Attempt(reason));
                }
            }
            _ => {}
        }
        false
    }

    /// A session in `Finishing`: done when the transcript says the turn is
    /// over; back to `Running` when every Stop so far was answered by a
    /// blocking summary (a user's Stop hook blocked the end and the turn goes
    /// on). When the transcript says nothing: once this Claude Code is known
    /// to write summaries, a Stop is never taken as the end before its
    /// summary (a slow user hook may take minutes to block); otherwise after
    /// [`FINISH_GRACE`].
    fn check_finishing(&mut self, session: &str) {
        use crate::claude_facts::{transcript_since, turn_state_since, TurnReading, TurnState};
        let Some(a) = self.assigned.get_mut(session) else {
            return;
        };
        let Phase::Finishing {
            since, transcript, ..
        } = &a.phase
        else {
            return;
        };
        if a.transcript.is_none() {
            a.transcript = transcript.clone().map(|p| (p, 0));
        }
        let since = *since;
        let unknown = |offset| TurnReading {
            state: TurnState::Unknown,
            next: offset,
            blocks: 0,
            saw_summary: false,
        };
        let reading = match &a.transcript {
            Some((path, offset)) => transcript_since(path, *offset, 32 << 20)
                .map(|(text, start)| turn_state_since(&text, start))
                .unwrap_or_else(|_| unknown(*offset)),
            None => unknown(0),
        };
        self.summaries_seen |= reading.saw_summary;
        let Some(a) = self.assigned.get_mut(session) else {
            return;
        };
        if reading.blocks > 0 {
            if let Some((_, offset)) = a.transcript.as_mut() {
                *offset = reading.next;
            }
        }
        match reading.state {
            TurnState::Over => self.finish(session),
            _ if reading.blocks > 0 => {
                let Phase::Finishing { stops, events, .. } = &mut a.phase else {
                    return;
                };
                *stops = stops.saturating_sub(reading.blocks);
                log::info!("{session}: a Stop hook blocked the end of the turn; the task goes on");
                if *stops == 0 {
                    for f in events.drain(..) {
                        let _ = std::fs::remove_file(f);
                    }
                    a.phase = Phase::Running;
                }
            }
            _ if (!self.summaries_seen || a.transcript.is_none())
                && since.elapsed() >= FINISH_GRACE =>
            {
                self.finish(session)
            }
            _ if since.elapsed() >= FINISH_WAIT_MAX => {
                log::warn!("{session}: no end of turn in its transcript {FINISH_WAIT_MAX:?} after its Stop; taking the Stop as the end");
                self.finish(session)
            }
            _ => {}
        }
    }

    /// Records the task of a `Finishing` session as done, with the last
    /// answer of its turn and the account that answered it.
    fn finish(&mut self, session: &str) {
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
                let _ = self.out.send(Output::Outcome {
                    outcome: "done",
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
        if crate::session::pool_of(&self.config, session).is_some() && self.paused.is_none() {
            self.clearing.insert(session.to_string(), Instant::now());
            type_in(&self.tmux, session, "/clear");
        }
    }

    /// The typed prompt of `session` was submitted (seen by its
    /// `UserPromptSubmit`, or in its transcript): the task runs.
    fn confirm(&mut self, session: &str, sid: Option<String>, transcript: Option<(PathBuf, u64)>) {
        self.fresh.remove(session);
        let Some(a) = self.assigned.get_mut(session) else {
            return;
        };
        a.phase = Phase::Running;
        a.transcript = transcript;
        let latency = a.seen_at.elapsed();
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
        let _ = self.out.send(Output::Outcome {
            outcome: "submitted",
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
            let _ = self.out.send(Output::Relocate {
                session: name.to_string(),
                cwd,
            });
        }
    }

    /// Pastes `text` and presses Enter; the assignment waits for `UserPromptSubmit`.
    fn type_text(&mut self, session: &str, text: &str, retried: bool) {
        type_in(&self.tmux, session, text);
        if let Some(a) = self.assigned.get_mut(session) {
            a.phase = Phase::Typing {
                since: Instant::now(),
                retried,
                text: text.to_string(),
                looked_at: None,
            };
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
        let _ = self.out.send(Output::Task {
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
                    let _ = self.out.send(Output::Outcome {
                        outcome: "requeued",
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
                        let _ = self.out.send(Output::Outcome {
                            outcome: "requeued",
                            dispatch_latency: None,
                        });
                    }
                    Ok(Outcome::Failed { name, attempts }) => {
                        log::error!(
                            "task {}/{name}: failed after {attempts} attempts: {reason}",
                            a.project
                        );
                        let _ = self.out.send(Output::Outcome {
                            outcome: "failed",
                            dispatch_latency: None,
                        });
                        let _ = self.out.send(Output::TaskFailed {
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
        for (q, _) in &self.queues {
            let Ok(active) = q.list_active() else {
                continue;
            };
            for (name, marker) in active {
                let Some(m) = marker else {
                    continue; // the janitor returns marker-less tasks
                };
                let session = self.sessions.iter().find(|s| s.name == m.session);
                if session.is_none() || self.assigned.contains_key(&m.session) {
                    log::warn!("task {}/{name} was claimed by {} before a restart, and that session is gone; back to the inbox", q.project(), m.session);
                    let _ = q.requeue(&name);
                    continue;
                }
                let confirmed = m.claude_session_id.is_some();
                let phase = if swapping && confirmed {
                    Phase::Interrupted {
                        account: Some(m.account.clone()),
                        retype: None,
                        since: Instant::now(),
                    }
                } else if confirmed {
                    Phase::Running
                } else {
                    let text = std::fs::read(q.task_path(crate::queue::Folder::Active, &name))
                        .ok()
                        .and_then(|b| crate::queue::parse_task(&b).ok())
                        .and_then(|t| {
                            let slash = t.front.slash_command.unwrap_or(false);
                            crate::claude_facts::typed_form(t.prompt(), slash).ok()
                        });
                    let Some(text) = text else {
                        log::warn!("task {}/{name}: cannot read it back after a restart; back to the inbox", q.project());
                        let _ = q.requeue(&name);
                        continue;
                    };
                    Phase::Typing {
                        since: Instant::now(),
                        retried: true,
                        text,
                        looked_at: None,
                    }
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
            let _ = self.out.send(Output::Task {
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
        if self.last_janitor.elapsed() >= self.config.janitor.interval {
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
        let names: Vec<String> = self.assigned.keys().cloned().collect();
        for name in names {
            let Some(a) = self.assigned.get(&name).cloned() else {
                continue;
            };
            let view = self.session(&name).cloned();
            let state = view.as_ref().map(|s| s.state);
            // A session a reload took out of the pools is not dead: it goes on
            // with its task, which ends by its own Stop (or the stale-task
            // rule), never by running it a second time elsewhere.
            let released_by_reload =
                view.is_none() && crate::session::pool_of(&self.config, &name).is_none();
            let gone = !released_by_reload
                && matches!(
                    state,
                    None | Some(State::Dead | State::Backoff | State::Failed)
                );
            match &a.phase {
                // Interrupted by a swap, but the session did not come back
                // (stuck or failing under the new account): start the task
                // elsewhere rather than hold it forever.
                Phase::Interrupted { .. }
                    if matches!(state, Some(State::Failed | State::Backoff))
                        && self.paused.is_none() =>
                {
                    log::warn!(
                        "{name}: did not come back after the swap; its task goes back to the inbox"
                    );
                    self.release(&name, Release::Requeue);
                }
                // Refused, and dispatch resumed without moving the session
                // (its account, or the whole fleet's, can take work again):
                // it is still waiting on the limit screen, so tell it to go on.
                Phase::Interrupted {
                    account,
                    retype,
                    since,
                } if self.paused.is_none()
                    // Dispatch resumed after this interruption, a while ago.
                    && self
                        .unpaused_at
                        .is_some_and(|t| t > *since && t.elapsed() >= RESUME_SETTLE)
                        && matches!(state, Some(State::Limited | State::Idle))
                        && view.as_ref().and_then(|v| v.account.as_ref()) == account.as_ref() =>
                {
                    log::info!("{name}: its account can take work again; continuing its task");
                    let _ = self.tmux.send_key(&name, "Escape");
                    let text = retype
                        .clone()
                        .unwrap_or_else(|| CONTINUE_AFTER_LIMIT_PROMPT.to_string());
                    self.type_text(&name, &text, false);
                }
                Phase::Interrupted { .. } => {}
                Phase::Relocating { since } if since.elapsed() > RELOCATE_DEADLINE => {
                    log::warn!("{name}: did not come back in {} in time", a.project);
                    self.release(
                        &name,
                        Release::Attempt(format!(
                            "session {name} did not start in the project folder in time"
                        )),
                    );
                }
                Phase::Relocating { .. } => {}
                // Its Stop came before it died: the answer is there.
                Phase::Finishing { .. } if gone => self.finish(&name),
                _ if gone && self.paused.is_none() => {
                    self.release(
                        &name,
                        Release::Attempt(format!("session {name} ended while working on it")),
                    );
                }
                Phase::Finishing { .. } => self.check_finishing(&name),
                Phase::Running if self.paused.is_none() => {
                    // A task has a deadline judged by the session's signs of
                    // life: its events and its transcript. A session that
                    // shows none for `stale_task_after` (hung, or its events
                    // lost) is relaunched and the attempt counts.
                    let stale = self.config.janitor.stale_task_after;
                    let transcript_age = a
                        .transcript
                        .as_ref()
                        .and_then(|(p, _)| std::fs::metadata(p).ok()?.modified().ok())
                        .and_then(|m| m.elapsed().ok());
                    let event_age = self.last_life.get(&name).map(|t| t.elapsed());
                    let quiet = [Some(a.seen_at.elapsed()), transcript_age, event_age]
                        .into_iter()
                        .flatten()
                        .min()
                        .unwrap_or_default();
                    if quiet >= stale {
                        log::error!("{name}: no sign of life for {quiet:?} while working on its task; the attempt counts and the session is relaunched");
                        let cwd = view.as_ref().map(|v| v.cwd.clone());
                        self.lose_attempt_and_relaunch(
                            &name,
                            format!(
                                "session {name} showed no sign of life for {}s",
                                quiet.as_secs()
                            ),
                            cwd,
                        );
                    }
                }
                Phase::Clearing { since } if since.elapsed() > CLEAR_DEADLINE => {
                    log::warn!("{name}: /clear was not confirmed; its task goes back to the inbox");
                    self.release(&name, Release::Requeue);
                }
                Phase::Typing {
                    since,
                    retried,
                    text,
                    looked_at,
                } => {
                    let waited = since.elapsed();
                    let deadline = submit_deadline(text);
                    // A swap under way owns the sessions: no Enter, no give-up.
                    if waited <= deadline || self.paused.is_some() {
                        continue;
                    }
                    if !*retried {
                        // One more Enter, as some versions ignore the first.
                        log::warn!("{name}: the prompt is not confirmed after {waited:?}; pressing Enter once more");
                        let _ = self.tmux.send_key(&name, "Enter");
                        if let Some(Phase::Typing { retried, .. }) =
                            self.assigned.get_mut(&name).map(|x| &mut x.phase)
                        {
                            *retried = true;
                        }
                        continue;
                    }
                    // Not confirmed is not proof of not submitted: the
                    // transcript shows a prompt whose event is late or lost.
                    if looked_at.is_none_or(|t| t.elapsed() >= TRANSCRIPT_LOOK_EVERY) {
                        if let Some((path, at)) = self.prompt_in_transcript(view.as_ref(), text) {
                            log::warn!("{name}: its prompt is in the transcript though no UserPromptSubmit came; taking it as submitted");
                            let sid = view.as_ref().and_then(|v| v.claude_session_id.clone());
                            self.confirm(&name, sid, Some((path, at)));
                            continue;
                        }
                        if let Some(Phase::Typing { looked_at, .. }) =
                            self.assigned.get_mut(&name).map(|x| &mut x.phase)
                        {
                            *looked_at = Some(Instant::now());
                        }
                    }
                    if waited > deadline + SUBMIT_GIVE_UP {
                        // In doubt: the attempt counts, and the session is
                        // relaunched fresh so it cannot go on with the prompt
                        // while the task runs elsewhere.
                        log::error!("{name}: the prompt was never confirmed in {:?}; the attempt counts and the session is relaunched", waited);
                        let cwd = view.as_ref().map(|v| v.cwd.clone());
                        self.lose_attempt_and_relaunch(
                            &name,
                            format!("the prompt typed into {name} was never confirmed"),
                            cwd,
                        );
                    }
                }
                _ => {}
            }
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
        let at = crate::claude_facts::find_prompt(&path, text)?;
        Some((path, at))
    }

    fn free_sessions(&self, pool: &str) -> Vec<SessionView> {
        // A session whose /clear is on its way is free again once it is
        // confirmed (or after the deadline, when the next task clears anew).
        let clearing = |n: &str| {
            self.clearing
                .get(n)
                .is_some_and(|t| t.elapsed() < CLEAR_DEADLINE)
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
            if !dispatchable {
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
                let _ = self.out.send(Output::Outcome {
                    outcome: "failed",
                    dispatch_latency: None,
                });
                let _ = self.out.send(Output::TaskFailed {
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
                // Task text is typed as data, never as keystrokes.
                let typed =
                    match crate::claude_facts::typed_form(&claimed.prompt, claimed.slash_command) {
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
                                let _ = self.out.send(Output::Outcome {
                                    outcome: "failed",
                                    dispatch_latency: None,
                                });
                                let _ = self.out.send(Output::TaskFailed {
                                    project: q.project().to_string(),
                                    task: name,
                                    reason,
                                });
                            }
                            free.insert(pos.min(free.len()), s);
                            continue;
                        }
                    };
                let _ = self.out.send(Output::Task {
                    session: s.name.clone(),
                    task: Some(claimed.name.clone()),
                });
                let mut a = Assignment {
                    project: q.project().to_string(),
                    task: Some(claimed.name.clone()),
                    prompt: typed.clone(),
                    phase: Phase::Running,
                    seen_at,
                    transcript: None,
                };
                if s.cwd != q.project_path() {
                    a.phase = Phase::Relocating {
                        since: Instant::now(),
                    };
                    self.assigned.insert(s.name.clone(), a);
                    let _ = self.out.send(Output::Relocate {
                        session: s.name.clone(),
                        cwd: q.project_path().to_path_buf(),
                    });
                } else if self.fresh.contains(&s.name) {
                    self.assigned.insert(s.name.clone(), a);
                    self.type_text(&s.name, &typed, false);
                } else {
                    a.phase = Phase::Clearing {
                        since: Instant::now(),
                    };
                    self.assigned.insert(s.name.clone(), a);
                    type_in(&self.tmux, &s.name, "/clear");
                }
            }
        }
    }

    /// Grow pools while tasks wait and an account is usable; shrink idle
    /// sessions above `min` after `idle_shrink_after`.
    fn resize_pools(&mut self) {
        for pool in self.config.pools.clone() {
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
            let members: Vec<&SessionView> = self
                .sessions
                .iter()
                .filter(|s| s.pool == pool.name)
                .collect();
            let free = members
                .iter()
                .filter(|s| s.state == State::Idle && !self.assigned.contains_key(&s.name))
                .count();
            let starting = members
                .iter()
                .filter(|s| matches!(s.state, State::Starting | State::Dead))
                .count();
            if self.paused.is_none()
                && waiting > free + starting
                && (members.len() as u32) < pool.max
            {
                let taken: HashSet<&str> = members.iter().map(|s| s.name.as_str()).collect();
                if let Some(name) = pool
                    .session_names()
                    .into_iter()
                    .find(|n| !taken.contains(n.as_str()))
                {
                    log::info!(
                        "pool {}: {waiting} task(s) waiting, growing with {name}",
                        pool.name
                    );
                    let _ = self.out.send(Output::Grow {
                        pool: pool.name.clone(),
                        name,
                    });
                }
            }
            if waiting == 0 && members.len() as u32 > pool.min {
                let names = pool.session_names();
                // Shrink from the top index down, one per turn.
                if let Some(s) = members
                    .iter()
                    .filter(|s| {
                        names
                            .iter()
                            .position(|n| n == &s.name)
                            .is_some_and(|i| i as u32 >= pool.min)
                    })
                    .filter(|s| s.state == State::Idle && !self.assigned.contains_key(&s.name))
                    .filter(|s| {
                        self.idle_since
                            .get(&s.name)
                            .is_some_and(|t| t.elapsed() >= pool.idle_shrink_after)
                    })
                    .max_by_key(|s| names.iter().position(|n| n == &s.name))
                {
                    log::info!(
                        "pool {}: {} idle for {:?}, shrinking",
                        pool.name,
                        s.name,
                        pool.idle_shrink_after
                    );
                    self.idle_since.remove(&s.name);
                    let _ = self.out.send(Output::Shrink {
                        name: s.name.clone(),
                    });
                }
            }
        }
        for s in &self.sessions {
            if s.state != State::Idle || self.assigned.contains_key(&s.name) {
                self.idle_since.remove(&s.name);
            } else {
                self.idle_since
                    .entry(s.name.clone())
                    .or_insert_with(Instant::now);
            }
        }
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
            let cp = crate::checkpoint::Checkpoint {
                session: s.name.clone(),
                account: s.account.clone(),
                claude_session_id: s.claude_session_id.clone(),
                cwd: s.cwd.to_string_lossy().into_owned(),
                task: self.assigned.get(&s.name).and_then(|a| a.task.clone()),
                state: s.state.as_str().to_string(),
                last_tool_call: None,
                last_assistant_message: None,
                written_at: crate::time::rfc3339(now()),
            };
            if let Err(e) = crate::checkpoint::write(&dir, cp, transcript) {
                log::warn!("{}: checkpoint not written: {e}", s.name);
            }
        }
        crate::checkpoint::prune(&dir, self.config.checkpoint.keep, now());
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
            let live = |m: &crate::queue::Marker| self.assigned.contains_key(&m.session);
            match q.janitor(now(), &self.config.janitor, &live) {
                Ok(r) => {
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
        let _ = self.out.send(Output::Counts(counts));
    }
}

/// Types `text` into `session` the way that works with Claude Code's TUI:
/// bracketed paste, a short pause, Enter. On a thread of its own, so the
/// pause never holds up other sessions; confirmation comes by hook.
fn type_in(tmux: &Tmux, session: &str, text: &str) {
    let (tmux, session, text) = (tmux.clone(), session.to_string(), text.to_string());
    let lock = {
        let mut locks = TYPING.lock();
        locks
            .get_or_insert_with(HashMap::new)
            .entry(session.clone())
            .or_default()
            .clone()
    };
    std::thread::spawn(move || {
        // One typing at a time per session: a /clear still on its way and the
        // next prompt must not interleave their pastes.
        let _turn = lock.lock();
        // Wait (briefly) for the input prompt: a paste right after start-up can be lost.
        let ready_by = Instant::now() + Duration::from_secs(5);
        while Instant::now() < ready_by {
            match tmux.capture_pane(&session, 0) {
                Ok(screen) if screen.contains(crate::claude_facts::PROMPT_READY_MARK) => break,
                Ok(_) => std::thread::sleep(Duration::from_millis(100)),
                Err(_) => break,
            }
        }
        if let Err(e) = tmux.type_text(&session, &text, TYPE_PAUSE) {
            log::warn!("{session}: cannot type into it: {e}");
        } else if crate::switcher::failpoint_set("dispatch-typed") && text != "/clear" {
            // Test-only: a `kill -9` between the Enter and its `UserPromptSubmit`.
            log::error!("fail point dispatch-typed reached: aborting");
            std::process::abort();
        }
    });
}

/// Per-session typing locks (see [`type_in`]).
static TYPING: parking_lot::Mutex<Option<HashMap<String, std::sync::Arc<parking_lot::Mutex<()>>>>> =
    parking_lot::Mutex::new(None);

/// Between a paste and its Enter (claude-code-facts §7: "a short pause").
const TYPE_PAUSE: Duration = Duration::from_millis(150);

enum Release {
    Done,
    Requeue,
    Attempt(String),
}

/// The account whose home is `config_dir` (a hook's `CLAUDE_CONFIG_DIR`).
fn account_of(config: &Config, config_dir: Option<&str>) -> Option<String> {
    config
        .account_by_home(std::path::Path::new(config_dir?))
        .map(|a| a.name.clone())
}
