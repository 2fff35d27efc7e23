//! Pure: managed sessions: their states, what the daemon remembers of each
//! (`sessions.json`), how hook events move them, and the pure reconcile that
//! decides what tmux should do.
//!
//! Level-triggered: every turn compares what should run with what tmux
//! shows and returns the actions that close the gap. Hooks and exits only
//! wake the loop early; a missed one costs a delay, never correctness.
//! Nothing here does I/O, so tests drive it with a hand-stepped clock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::claude::hook::RecordedEvent;
use crate::config::{Config, PoolConfig};
use crate::sys::tmux::SessionInfo;

/// SPEC.md's session states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Launched; no `SessionStart` yet.
    #[default]
    Starting,
    Idle,
    Working,
    /// A permission or question prompt is waiting for an answer.
    Waiting,
    /// The account refused it.
    Limited,
    Stopping,
    /// Its program ended; it will be relaunched.
    Dead,
    /// It failed to start; relaunched at `retry_at_ms`.
    Backoff,
    /// Every back-off step failed (retried at the last step's pace), or it is
    /// stuck on a screen the daemon must not type into.
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Idle => "idle",
            State::Working => "working",
            State::Waiting => "waiting",
            State::Limited => "limited",
            State::Stopping => "stopping",
            State::Dead => "dead",
            State::Backoff => "backoff",
            State::Failed => "failed",
        }
    }

    pub const ALL: [State; 9] = [
        State::Starting,
        State::Idle,
        State::Working,
        State::Waiting,
        State::Limited,
        State::Stopping,
        State::Dead,
        State::Backoff,
        State::Failed,
    ];
}

/// What the daemon remembers of one managed session: only what tmux cannot
/// tell (persisted in `sessions.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Record {
    pub pool: String,
    pub state: State,
    /// Wall-clock ms when `state` was entered.
    pub since_ms: u64,
    pub account: Option<String>,
    pub claude_session_id: Option<String>,
    pub cwd: PathBuf,
    pub task: Option<String>,
    /// Relaunches since the daemon first launched or adopted it.
    pub restarts: u32,
    /// Consecutive launches that died before `SessionStart`: the back-off step.
    pub failed_starts: u32,
    pub launched_at_ms: Option<u64>,
    /// Backoff/failed: not relaunched before this.
    pub retry_at_ms: Option<u64>,
    pub last_error: Option<String>,
    pub pane_pid: Option<u32>,
    /// Wall-clock ms of the last hook event it sent (any hook; the status
    /// line is not one): for the silent-hook canary.
    #[serde(default)]
    pub last_hook_ms: Option<u64>,
    /// The tool its last `PostToolUse` named (for checkpoints).
    #[serde(default)]
    pub last_tool: Option<String>,
    /// Live mode: a swap it has yet to show it followed.
    #[serde(default)]
    pub verify: Option<Verify>,
    /// Live mode: when its own traffic last showed its account (Unix ms).
    #[serde(default)]
    pub account_confirmed_ms: Option<u64>,
}

/// Live mode: after a swap, a session is confirmed on the target by its own
/// traffic (a status-line reading that carries the target's windows, not the
/// outgoing account's). One not confirmed within `swap.verify_timeout` after
/// its next request is restarted under the seat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verify {
    pub swap_id: String,
    /// The account it was on before the swap.
    pub from: String,
    pub to: String,
    /// When the seat was rewritten (Unix ms).
    pub since_ms: u64,
    /// Its first sign of a request after the swap (a prompt submitted, a
    /// tool call, a turn's end): the verify timeout runs from here. `None`:
    /// idle since the swap, confirmed lazily at its next request.
    pub active_ms: Option<u64>,
}

/// The two reset times that tell one account's readings from another's
/// (Unix seconds): the 5-hour and the 7-day window's.
pub type Fingerprint = (Option<u64>, Option<u64>);

/// Whether a reading's fingerprint is an account's: every reset time both
/// know is the same (within a few seconds), and at least one is known.
pub fn same_windows(reading: Fingerprint, account: Fingerprint) -> bool {
    let close = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.abs_diff(b) <= 2),
        _ => None,
    };
    let checks: Vec<bool> = [close(reading.0, account.0), close(reading.1, account.1)]
        .into_iter()
        .flatten()
        .collect();
    !checks.is_empty() && checks.iter().all(|&c| c)
}

/// Live mode: the account a session's status-line reading is credited to,
/// confirming a pending swap when the reading is no longer the outgoing
/// account's. `from_windows`/`to_windows`: the accounts' known fingerprints.
pub fn live_reading(
    r: &mut Record,
    reading: Fingerprint,
    from_windows: Option<Fingerprint>,
    to_windows: Option<Fingerprint>,
    now_ms: u64,
) -> Option<String> {
    let Some(v) = r.verify.clone() else {
        return r.account.clone();
    };
    if reading.0.is_none() && reading.1.is_none() {
        return None;
    }
    let is_from = from_windows.is_some_and(|f| same_windows(reading, f));
    let is_to = to_windows.is_some_and(|t| same_windows(reading, t));
    if is_from && !is_to {
        return Some(v.from);
    }
    r.account = Some(v.to.clone());
    r.account_confirmed_ms = Some(now_ms);
    r.verify = None;
    if is_from && is_to {
        // The two accounts' windows are alike: nothing tells whose reading
        // this is. The session is taken as moved (never restarted for
        // that), but the reading is credited to neither account.
        return None;
    }
    Some(v.to)
}

/// Live mode: the sessions whose verify timeout ran out (their first
/// request after the swap was `timeout` ago and they still show the
/// outgoing account).
pub fn unconfirmed(book: &Book, timeout: Duration, now_ms: u64) -> Vec<(String, Verify)> {
    let t = timeout.as_millis() as u64;
    book.iter()
        .filter_map(|(n, r)| {
            let v = r.verify.as_ref()?;
            let active = v.active_ms?;
            (now_ms.saturating_sub(active) >= t).then(|| (n.clone(), v.clone()))
        })
        .collect()
}

impl Record {
    pub fn set_state(&mut self, state: State, now_ms: u64) {
        if self.state != state {
            self.state = state;
            self.since_ms = now_ms;
        }
    }
}

/// Every managed session the daemon knows, by tmux name.
pub type Book = BTreeMap<String, Record>;

/// What the shell must do against tmux.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start the session (killing a dead pane of that name first). `resume`
    /// is the conversation to continue when its transcript exists.
    Launch {
        name: String,
        cwd: PathBuf,
        resume: Option<String>,
    },
    /// The pane's program ended: read its last screen, then remove the
    /// session so it can be launched again.
    CollectDead {
        name: String,
        exit_status: Option<i32>,
    },
    /// No `SessionStart` within the start-up timeout: read the screen and
    /// report it. Never typed into.
    ReportStuck { name: String },
    /// An idle session whose process runs under `running_under`, not the
    /// active account, with no swap under way (a crash mid-swap, a
    /// rollback): stop it; it is relaunched under the active account,
    /// resuming its conversation.
    Replace { name: String, running_under: String },
    /// Recorded dead, but its pane is alive: record it as running (idle)
    /// rather than relaunch what works.
    Revive { name: String },
}

impl Action {
    pub fn name(&self) -> &str {
        match self {
            Action::Launch { name, .. }
            | Action::CollectDead { name, .. }
            | Action::ReportStuck { name }
            | Action::Replace { name, .. }
            | Action::Revive { name } => name,
        }
    }
}

/// The pool a managed name belongs to, if any.
pub fn pool_of<'a>(config: &'a Config, name: &str) -> Option<&'a PoolConfig> {
    config.pools.iter().find(|p| p.index_of(name).is_some())
}

/// Decides what tmux should do now, with `active` the account sessions
/// should run under (never called while a swap is under way). `in_flight`
/// names have an action under way and are left alone this turn.
pub fn reconcile(
    config: &Config,
    book: &Book,
    observed: &[SessionInfo],
    in_flight: &HashSet<String>,
    active: &str,
    now_ms: u64,
) -> Vec<Action> {
    let seen: HashMap<&str, &SessionInfo> = observed.iter().map(|s| (s.name.as_str(), s)).collect();
    let startup_ms = config.claude.startup_timeout.as_millis() as u64;
    let mut actions = Vec::new();
    for pool in &config.pools {
        for (offset, name) in pool.session_names().into_iter().enumerate() {
            if in_flight.contains(&name) {
                continue;
            }
            let below_min = (offset as u32) < pool.min;
            let record = book.get(&name);
            // Above `min`, a session is kept alive only while it runs or the
            // daemon has it on its books (the dispatcher grows pools).
            if !below_min && !seen.contains_key(name.as_str()) && record.is_none() {
                continue;
            }
            match seen.get(name.as_str()) {
                Some(info) if info.pane_dead => actions.push(Action::CollectDead {
                    name: name.clone(),
                    exit_status: info.pane_dead_status,
                }),
                Some(_) => {
                    if let Some(r) = record {
                        let started_too_long_ago = r
                            .launched_at_ms
                            .is_some_and(|t| now_ms.saturating_sub(t) > startup_ms);
                        if r.state == State::Starting && started_too_long_ago {
                            actions.push(Action::ReportStuck { name: name.clone() });
                        }
                        // Only between turns: a turn in progress, or a
                        // question waiting for a person, finishes first.
                        let between_turns = matches!(r.state, State::Idle | State::Limited);
                        if r.state == State::Dead {
                            // Recorded dead, seen alive (a swap's stop that
                            // could not be confirmed, or a crash after the
                            // relaunch): the record follows observation.
                            actions.push(Action::Revive { name: name.clone() });
                            continue;
                        }
                        // Live mode: every session runs under the seat, and one
                        // that lags behind a swap is found by its traffic
                        // (`Verify`), not by its record.
                        let restart_mode = config.live_seat().is_none();
                        match &r.account {
                            Some(a) if a != active && between_turns && restart_mode => actions
                                .push(Action::Replace {
                                    name: name.clone(),
                                    running_under: a.clone(),
                                }),
                            _ => {}
                        }
                    }
                }
                None => {
                    let waiting = record.is_some_and(|r| {
                        matches!(r.state, State::Backoff | State::Failed)
                            && r.retry_at_ms.is_some_and(|t| now_ms < t)
                    });
                    if waiting {
                        continue;
                    }
                    let cwd = record
                        .map(|r| r.cwd.clone())
                        .filter(|c| !c.as_os_str().is_empty())
                        .unwrap_or_else(|| pool.cwd.clone());
                    actions.push(Action::Launch {
                        name: name.clone(),
                        cwd,
                        resume: record.and_then(|r| r.claude_session_id.clone()),
                    });
                }
            }
        }
    }
    actions
}

/// A launch that tmux accepted.
#[derive(Debug, Clone)]
pub struct Launched<'a> {
    pub pool: &'a str,
    pub name: &'a str,
    pub cwd: PathBuf,
    pub account: &'a str,
    pub pane_pid: Option<u32>,
    /// It ran before (a relaunch, counted in `restarts`).
    pub relaunch: bool,
}

/// Records that a session was just launched.
pub fn on_launched(book: &mut Book, l: Launched<'_>, now_ms: u64) {
    let Launched {
        pool,
        name,
        cwd,
        account,
        pane_pid,
        relaunch,
    } = l;
    let r = book.entry(name.to_string()).or_insert_with(|| Record {
        pool: pool.to_string(),
        ..Record::default()
    });
    r.pool = pool.to_string();
    r.set_state(State::Starting, now_ms);
    r.since_ms = now_ms;
    r.cwd = cwd;
    r.account = Some(account.to_string());
    r.launched_at_ms = Some(now_ms);
    r.retry_at_ms = None;
    r.pane_pid = pane_pid;
    if relaunch {
        r.restarts += 1;
    }
}

/// Records a session about to be launched for the first time, so that a
/// launch tmux refuses is a failed start like any other.
pub fn on_first_launch(
    book: &mut Book,
    name: &str,
    pool: &str,
    cwd: PathBuf,
    account: &str,
    now_ms: u64,
) {
    book.entry(name.to_string()).or_insert_with(|| Record {
        pool: pool.to_string(),
        state: State::Starting,
        since_ms: now_ms,
        cwd,
        account: Some(account.to_string()),
        launched_at_ms: Some(now_ms),
        ..Record::default()
    });
}

/// Records a launch that died (or could not start at all) with `last_output`.
/// A session that never reached `SessionStart` counts as a failed start and
/// walks the back-off steps; one that had been running is simply dead and is
/// relaunched at once.
pub fn on_died(
    book: &mut Book,
    name: &str,
    last_output: String,
    backoff: &[Duration],
    now_ms: u64,
) {
    let Some(r) = book.get_mut(name) else {
        return;
    };
    r.pane_pid = None;
    // Only a launch that never started (the `--resume` itself refused): a
    // running session whose screen shows that text lost nothing.
    let resume_refused =
        r.state == State::Starting && last_output.contains(crate::claude::facts::RESUME_NOT_FOUND);
    if let Some(id) = r.claude_session_id.take_if(|_| resume_refused) {
        // Claude Code cannot resume that conversation: start the session
        // fresh, at once. Not a failed start; the next launch has no
        // `--resume`, so this cannot repeat.
        r.last_error = Some(format!(
            "conversation {id} could not be resumed, starting a new one: {last_output}"
        ));
        r.retry_at_ms = None;
        r.set_state(State::Dead, now_ms);
        return;
    }
    r.last_error = Some(last_output);
    if r.state == State::Starting || r.state == State::Backoff || r.state == State::Failed {
        r.failed_starts += 1;
        let step = (r.failed_starts as usize)
            .min(backoff.len())
            .saturating_sub(1);
        let delay = backoff
            .get(step)
            .copied()
            .unwrap_or(Duration::from_secs(60));
        r.retry_at_ms = Some(now_ms + delay.as_millis() as u64);
        if r.failed_starts as usize > backoff.len() {
            r.set_state(State::Failed, now_ms);
        } else {
            r.set_state(State::Backoff, now_ms);
        }
    } else {
        r.failed_starts = 0;
        r.retry_at_ms = None;
        r.set_state(State::Dead, now_ms);
    }
}

/// A session that was to be stopped for its relaunch still runs (tmux did
/// not answer the kill). One recorded as a failed start waiting out its
/// back-off (`on_died` after a start-up with no `SessionStart`) goes back to
/// `Starting`, launched as long ago as it was, so the next turn finds it
/// stuck again and kills it again, rather than leave a live session on the
/// books as waiting to be launched, which nothing would ever stop or use.
/// Any other record follows what tmux shows next turn.
pub fn on_kill_failed(book: &mut Book, name: &str) {
    if let Some(r) = book.get_mut(name) {
        if matches!(r.state, State::Backoff | State::Failed) && r.retry_at_ms.is_some() {
            let since = r.since_ms;
            r.set_state(State::Starting, since);
            // Found stuck again, `on_died` counts it once more: it is the
            // same failed start.
            r.failed_starts = r.failed_starts.saturating_sub(1);
        }
    }
}

/// A session stopped for its relaunch is gone. One that a hook made live
/// meanwhile (a `SessionStart` that came after its kill was asked for) is
/// recorded dead, so that nothing is typed into a session that is no more;
/// one waiting out its back-off, or leaving the pool, stays as it is.
pub fn on_killed(book: &mut Book, name: &str, now_ms: u64) {
    if let Some(r) = book.get_mut(name) {
        if !matches!(
            r.state,
            State::Backoff | State::Failed | State::Stopping | State::Dead
        ) {
            r.pane_pid = None;
            r.set_state(State::Dead, now_ms);
        }
    }
}

/// What the screen of a session with no `SessionStart` past the start-up
/// timeout shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StuckScreen {
    /// The TUI's input box: up at its prompt, the hook was lost.
    Prompt,
    /// Nothing at all: the program never drew (hung loading, or not even
    /// started); nothing meant for a person is on it.
    Blank,
    /// Anything else: a dialog or a login screen, meant for a person.
    Other,
}

/// What to do with a session the watcher found with no `SessionStart` past
/// the start-up timeout, given what it saw on the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stuck {
    /// Its `SessionStart` came while the screen was read: it runs and may
    /// have been given work already; touch nothing.
    StartedMeanwhile,
    /// It left the book meanwhile (its pool shrank): nothing to do.
    Gone,
    /// Up at its prompt with no `SessionStart`, or a screen with nothing on
    /// it at its first failed start: nothing was typed into it, so it is
    /// killed and relaunched as a failed start, with the back-off.
    Relaunch,
    /// A dialog or a login screen: left alone, reported, not typed into.
    LeaveAlone,
}

/// The verdict on a `Stuck` report, from the book as it is now (not as it
/// was when the watcher was asked to look).
///
/// A blank screen is relaunched once: a start that hung is then tried
/// afresh, but a machine slower than `startup_timeout` at every start would
/// have each one killed before it drew; after that first relaunch it is left
/// alone (failed, still running), and its `SessionStart` makes it idle
/// whenever it comes.
pub fn stuck_verdict(book: &Book, name: &str, screen: StuckScreen) -> Stuck {
    let Some(r) = book.get(name) else {
        return Stuck::Gone;
    };
    match screen {
        _ if r.state != State::Starting => Stuck::StartedMeanwhile,
        StuckScreen::Prompt => Stuck::Relaunch,
        StuckScreen::Blank if r.failed_starts == 0 => Stuck::Relaunch,
        StuckScreen::Blank | StuckScreen::Other => Stuck::LeaveAlone,
    }
}

/// Records a session stuck before `SessionStart` (a dialog, a login screen).
pub fn on_stuck(book: &mut Book, name: &str, screen: String, now_ms: u64) {
    if let Some(r) = book.get_mut(name) {
        r.last_error = Some(format!(
            "no SessionStart within the start-up timeout; its screen: {screen}"
        ));
        r.retry_at_ms = None;
        r.set_state(State::Failed, now_ms);
    }
}

/// Adopts a running session the daemon has no record of (its state file was
/// lost): it runs, so it is treated as idle until a hook says otherwise.
pub fn adopt(
    book: &mut Book,
    config: &Config,
    observed: &[SessionInfo],
    now_ms: u64,
) -> Vec<String> {
    let mut adopted = Vec::new();
    for s in observed.iter().filter(|s| !s.pane_dead) {
        if book.contains_key(&s.name) {
            if let Some(r) = book.get_mut(&s.name) {
                r.pane_pid = s.pane_pid;
            }
            continue;
        }
        if let Some(pool) = pool_of(config, &s.name) {
            book.insert(
                s.name.clone(),
                Record {
                    pool: pool.name.clone(),
                    state: State::Idle,
                    since_ms: now_ms,
                    cwd: pool.cwd.clone(),
                    pane_pid: s.pane_pid,
                    ..Record::default()
                },
            );
            adopted.push(s.name.clone());
        }
    }
    adopted
}

/// Records follow observation: `running_under` holds (session, account)
/// for every live session whose process showed the account home it runs
/// under. A record that says otherwise is corrected; returns the
/// corrections as (session, recorded account, real account). Sessions
/// with an action in flight are left to that action.
pub fn follow_accounts(
    book: &mut Book,
    running_under: &[(String, String)],
    in_flight: &HashSet<String>,
) -> Vec<(String, Option<String>, String)> {
    let mut changed = Vec::new();
    for (name, account) in running_under {
        if in_flight.contains(name) {
            continue;
        }
        if let Some(r) = book.get_mut(name) {
            if r.account.as_deref() != Some(account.as_str()) {
                changed.push((name.clone(), r.account.clone(), account.clone()));
                r.account = Some(account.clone());
            }
        }
    }
    changed
}

/// Moves a session's state by a hook event. Returns whether it mattered.
pub fn apply_hook(book: &mut Book, event: &RecordedEvent) -> bool {
    let Some(name) = event.session.as_deref() else {
        return false;
    };
    let Some(r) = book.get_mut(name) else {
        return false;
    };
    use crate::claude::hook_event::{HookEvent, NotificationKind};
    let session_id = event.hook.conversation.as_deref();
    let at = event.recorded_at_ms;
    // An event of a conversation this session no longer runs (left over from
    // before a relaunch) must not move today's state.
    let other_conversation =
        matches!((session_id, &r.claude_session_id), (Some(a), Some(b)) if a != b);
    if event.hook.event != HookEvent::Statusline {
        // Whatever it says, a hook reached us.
        r.last_hook_ms = Some(r.last_hook_ms.unwrap_or(0).max(at));
    }
    match &event.hook.event {
        HookEvent::SessionStart { source } => {
            if let Some(id) = session_id {
                r.claude_session_id = Some(id.to_string());
            }
            r.failed_starts = 0;
            r.retry_at_ms = None;
            r.last_error = None;
            // A compaction may happen in the middle of a turn: it goes on.
            let mid_turn = matches!(source, crate::claude::hook_event::StartSource::Other(s) if s == "compact")
                && matches!(r.state, State::Working | State::Waiting);
            if !mid_turn {
                r.set_state(State::Idle, at);
            }
        }
        _ if other_conversation => return false,
        HookEvent::UserPromptSubmit { .. } => r.set_state(State::Working, at),
        // A tool ran: a permission asked for was given. (Never from idle: a
        // tool call's event may arrive after its turn's Stop.)
        HookEvent::PostToolUse { tool } => {
            if !tool.is_empty() {
                r.last_tool = Some(tool.clone());
            }
            // Only a tool call that ended after the wait began answers it
            // (hook processes may arrive out of order).
            if r.state == State::Waiting && at >= r.since_ms {
                r.set_state(State::Working, at)
            }
        }
        HookEvent::Stop { .. } => r.set_state(State::Idle, at),
        HookEvent::StopFailure { error, message } => {
            r.last_error = Some(
                format!("{error}: {message}")
                    .trim_end_matches([':', ' '])
                    .to_string(),
            );
            if error == crate::claude::facts::STOP_FAILURE_RATE_LIMIT {
                r.set_state(State::Limited, at);
            } else {
                r.set_state(State::Idle, at);
            }
        }
        HookEvent::Notification { kind } => match kind {
            // A prompt recorded before the state it would replace (a Stop
            // heard first) is over already.
            NotificationKind::PermissionPrompt if at >= r.since_ms => {
                r.set_state(State::Waiting, at)
            }
            NotificationKind::PermissionPrompt => return false,
            NotificationKind::IdlePrompt if r.state == State::Waiting => {
                r.set_state(State::Idle, at)
            }
            _ => return false,
        },
        // The process is ending (or `/clear` starts a new conversation, whose
        // SessionStart follows): tmux will tell us if it is gone.
        HookEvent::SessionEnd => return false,
        HookEvent::Statusline | HookEvent::Other(_) => return false,
    }
    true
}

/// The silent-hook canary: a session whose transcript shows work at least
/// `after_ms` past the last hook it sent has hooks that do not reach us
/// (removed, disabled, or a limit that fires none). Claude Code sends
/// `PostToolUse` after every tool call, so a turn at work is rarely silent
/// that long by itself; the daemon reports it only when the transcript
/// changed again on a later look (one slow answer or tool call is not
/// enough). Returns for how long it has been silent.
pub fn hooks_silent(
    r: &Record,
    transcript_changed_ms: Option<u64>,
    now_ms: u64,
    after_ms: u64,
) -> Option<u64> {
    // Judged only at work, and only once a hook was heard from it (a
    // session whose hooks never fire never starts: the start-up timeout
    // reports it); a relaunch starts the wait over.
    if !matches!(r.state, State::Working | State::Waiting) {
        return None;
    }
    let last = r.last_hook_ms?.max(r.launched_at_ms.unwrap_or(0));
    let changed = transcript_changed_ms?;
    (changed >= last.saturating_add(after_ms) && now_ms >= changed)
        .then(|| now_ms.saturating_sub(last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    fn config() -> Config {
        let yaml = "accounts:\n  - name: a\n    home: /h/a\npools:\n  - name: auto\n    prefix: ccl-auto-\n    start_index: 11\n    min: 2\n    max: 4\n    cwd: /srv\nlifecycle:\n  restart_backoff: [1s, 5s, 30s]\nswap:\n  mode: restart\n";
        Config::parse(yaml, std::path::Path::new("/etc/cf/config.yaml")).unwrap()
    }

    fn alive(name: &str, pid: u32) -> SessionInfo {
        SessionInfo {
            name: name.into(),
            pane_pid: Some(pid),
            pane_dead: false,
            pane_dead_status: None,
            pane_in_mode: false,
            config_dir: None,
        }
    }

    fn dead(name: &str) -> SessionInfo {
        SessionInfo {
            pane_dead: true,
            pane_dead_status: Some(1),
            ..alive(name, 1)
        }
    }

    /// `name` launched (first time, pool `auto`, account `a`) at 0 ms.
    fn launched_at_zero(book: &mut Book, name: &str) {
        on_launched(
            book,
            Launched {
                pool: "auto",
                name,
                cwd: "/srv".into(),
                account: "a",
                pane_pid: None,
                relaunch: false,
            },
            0,
        );
    }

    fn hook(session: &str, payload: serde_json::Value) -> RecordedEvent {
        let mut ev = RecordedEvent {
            kind: "hook".into(),
            session: Some(session.into()),
            config_dir: None,
            recorded_at_ms: 5,
            payload,
            verified: true,
            hook: Default::default(),
        };
        ev.reparse();
        ev
    }

    #[test]
    fn launches_up_to_min_and_never_touches_other_names() {
        let c = config();
        let observed = vec![
            alive("ccl-0", 1),
            alive("ccl-1", 2),
            alive("ccl-auto-1", 3),
            alive("ccl-auto-110", 4),
        ];
        let a = reconcile(&c, &Book::new(), &observed, &HashSet::new(), "a", 0);
        let names: Vec<&str> = a.iter().map(Action::name).collect();
        assert_eq!(names, vec!["ccl-auto-11", "ccl-auto-12"]);
        assert!(a
            .iter()
            .all(|x| matches!(x, Action::Launch { resume: None, .. })));
    }

    #[test]
    fn a_killed_session_is_relaunched_resuming_its_conversation() {
        let c = config();
        let mut book = Book::new();
        on_launched(
            &mut book,
            Launched {
                pool: "auto",
                name: "ccl-auto-12",
                cwd: "/srv".into(),
                account: "a",
                pane_pid: Some(9),
                relaunch: false,
            },
            0,
        );
        apply_hook(
            &mut book,
            &hook(
                "ccl-auto-12",
                json!({"hook_event_name": "SessionStart", "session_id": "s-1", "source": "startup"}),
            ),
        );
        assert_eq!(book["ccl-auto-12"].state, State::Idle);
        let observed = vec![alive("ccl-auto-11", 1)];
        let a = reconcile(&c, &book, &observed, &HashSet::new(), "a", 10);
        assert_eq!(
            a,
            vec![Action::Launch {
                name: "ccl-auto-12".into(),
                cwd: "/srv".into(),
                resume: Some("s-1".into())
            }]
        );
    }

    #[test]
    fn early_exits_walk_the_backoff_then_fail_at_the_last_pace() {
        let c = config();
        let steps = c.lifecycle.restart_backoff.clone();
        let mut book = Book::new();
        let mut now = 0;
        let mut launches = vec![];
        // Every launch dies at once; step the clock and count launches.
        for _ in 0..200 {
            let observed: Vec<SessionInfo> = vec![alive("ccl-auto-11", 1)];
            for action in reconcile(&c, &book, &observed, &HashSet::new(), "a", now) {
                if let Action::Launch { name, cwd, .. } = action {
                    launches.push(now);
                    on_launched(
                        &mut book,
                        Launched {
                            pool: "auto",
                            name: &name,
                            cwd,
                            account: "a",
                            pane_pid: None,
                            relaunch: true,
                        },
                        now,
                    );
                    on_died(&mut book, &name, "boom".into(), &steps, now + 100);
                }
            }
            now += 500;
        }
        // 100 s: launches at 0, then +1 s, +5 s, +30 s, then every 30 s.
        let gaps: Vec<u64> = launches.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(&gaps[..4], &[1_500, 5_500, 30_500, 30_500], "{launches:?}");
        let r = &book["ccl-auto-12"];
        assert_eq!(r.state, State::Failed);
        assert_eq!(r.last_error.as_deref(), Some("boom"));
    }

    #[test]
    fn a_first_launch_that_tmux_refuses_backs_off_instead_of_looping() {
        let c = config();
        let mut book = Book::new();
        let obs = [alive("ccl-auto-12", 2)];
        let a = reconcile(&c, &book, &obs, &HashSet::new(), "a", 0);
        assert!(matches!(&a[0], Action::Launch { name, .. } if name == "ccl-auto-11"));
        on_first_launch(&mut book, "ccl-auto-11", "auto", "/srv".into(), "a", 0);
        on_died(
            &mut book,
            "ccl-auto-11",
            "tmux could not start it: command too long".into(),
            &c.lifecycle.restart_backoff,
            10,
        );
        let r = &book["ccl-auto-11"];
        assert_eq!((r.state, r.failed_starts), (State::Backoff, 1));
        assert!(r
            .last_error
            .as_deref()
            .unwrap()
            .contains("command too long"));
        assert!(reconcile(&c, &book, &obs, &HashSet::new(), "a", 500).is_empty());
        assert_eq!(
            reconcile(&c, &book, &obs, &HashSet::new(), "a", 1_100).len(),
            1
        );
    }

    #[test]
    fn a_resume_claude_code_refuses_is_followed_by_a_fresh_start_not_a_backoff() {
        let c = config();
        let mut book = Book::new();
        let obs = [alive("ccl-auto-12", 2)];
        on_first_launch(&mut book, "ccl-auto-11", "auto", "/srv".into(), "a", 0);
        book.get_mut("ccl-auto-11").unwrap().claude_session_id = Some("s-1".into());
        assert!(matches!(
            &reconcile(&c, &book, &obs, &HashSet::new(), "a", 0)[0],
            Action::Launch { resume: Some(id), .. } if id == "s-1"
        ));
        on_died(
            &mut book,
            "ccl-auto-11",
            "No conversation found with session ID: s-1 (exit status 1)".into(),
            &c.lifecycle.restart_backoff,
            10,
        );
        let r = &book["ccl-auto-11"];
        assert_eq!((r.state, r.failed_starts), (State::Dead, 0));
        assert_eq!(r.claude_session_id, None);
        assert_eq!(
            reconcile(&c, &book, &obs, &HashSet::new(), "a", 11),
            vec![Action::Launch {
                name: "ccl-auto-11".into(),
                cwd: "/srv".into(),
                resume: None
            }]
        );
        // The same words from a fresh start are an ordinary failed start.
        on_died(
            &mut book,
            "ccl-auto-11",
            "No conversation found with session ID: s-1".into(),
            &c.lifecycle.restart_backoff,
            20,
        );
        assert_eq!(book["ccl-auto-11"].state, State::Dead);
        book.get_mut("ccl-auto-11").unwrap().state = State::Starting;
        on_died(
            &mut book,
            "ccl-auto-11",
            "No conversation found with session ID".into(),
            &c.lifecycle.restart_backoff,
            30,
        );
        assert_eq!(book["ccl-auto-11"].state, State::Backoff);
    }

    #[test]
    fn records_follow_the_account_a_process_runs_under_and_a_stray_one_is_replaced() {
        let c = config();
        let mut book = Book::new();
        for name in ["ccl-auto-11", "ccl-auto-12"] {
            on_first_launch(&mut book, name, "auto", "/srv".into(), "a", 0);
            apply_hook(
                &mut book,
                &hook(
                    name,
                    json!({"hook_event_name": "SessionStart", "session_id": name}),
                ),
            );
        }
        // A daemon killed mid-swap relaunched ccl-auto-11 under b, and its
        // record still says a; b is active now.
        let obs = [alive("ccl-auto-11", 1), alive("ccl-auto-12", 2)];
        let running = vec![
            ("ccl-auto-11".to_string(), "b".to_string()),
            ("ccl-auto-12".to_string(), "a".to_string()),
        ];
        let busy: HashSet<String> = ["ccl-auto-12".to_string()].into();
        let changed = follow_accounts(&mut book, &running, &busy);
        assert_eq!(
            changed,
            vec![("ccl-auto-11".into(), Some("a".into()), "b".into())]
        );
        assert_eq!(book["ccl-auto-11"].account.as_deref(), Some("b"));
        assert!(follow_accounts(&mut book, &running, &busy).is_empty());
        // On b, ccl-auto-12 (idle on a) is relaunched; ccl-auto-11 is left.
        assert_eq!(
            reconcile(&c, &book, &obs, &HashSet::new(), "b", 10),
            vec![Action::Replace {
                name: "ccl-auto-12".into(),
                running_under: "a".into()
            }]
        );
        // Not in the middle of a turn.
        book.get_mut("ccl-auto-12").unwrap().state = State::Working;
        assert!(reconcile(&c, &book, &obs, &HashSet::new(), "b", 10).is_empty());
    }

    #[test]
    fn dead_pane_is_collected_and_a_running_session_that_dies_restarts_at_once() {
        let c = config();
        let mut book = Book::new();
        launched_at_zero(&mut book, "ccl-auto-11");
        apply_hook(
            &mut book,
            &hook(
                "ccl-auto-11",
                json!({"hook_event_name": "SessionStart", "session_id": "s-1"}),
            ),
        );
        let a = reconcile(
            &c,
            &book,
            &[dead("ccl-auto-11"), alive("ccl-auto-12", 2)],
            &HashSet::new(),
            "a",
            10,
        );
        assert_eq!(
            a,
            vec![Action::CollectDead {
                name: "ccl-auto-11".into(),
                exit_status: Some(1)
            }]
        );
        on_died(
            &mut book,
            "ccl-auto-11",
            "bye".into(),
            &c.lifecycle.restart_backoff,
            20,
        );
        assert_eq!(book["ccl-auto-11"].state, State::Dead);
        let a = reconcile(
            &c,
            &book,
            &[alive("ccl-auto-12", 2)],
            &HashSet::new(),
            "a",
            21,
        );
        assert!(matches!(&a[0], Action::Launch { resume: Some(id), .. } if id == "s-1"));
    }

    #[test]
    fn stuck_start_is_reported_not_typed_into_and_in_flight_is_skipped() {
        let c = config();
        let mut book = Book::new();
        launched_at_zero(&mut book, "ccl-auto-11");
        let obs = [alive("ccl-auto-11", 1), alive("ccl-auto-12", 2)];
        assert!(reconcile(&c, &book, &obs, &HashSet::new(), "a", 59_000).is_empty());
        assert_eq!(
            reconcile(&c, &book, &obs, &HashSet::new(), "a", 61_000),
            vec![Action::ReportStuck {
                name: "ccl-auto-11".into()
            }]
        );
        let busy: HashSet<String> = ["ccl-auto-11".to_string()].into();
        assert!(reconcile(&c, &book, &obs, &busy, "a", 61_000).is_empty());
        on_stuck(
            &mut book,
            "ccl-auto-11",
            "Do you trust the files in this folder?".into(),
            61_000,
        );
        assert_eq!(book["ccl-auto-11"].state, State::Failed);
        assert!(reconcile(&c, &book, &obs, &HashSet::new(), "a", 99_000).is_empty());
    }

    #[test]
    fn a_stuck_start_whose_kill_failed_is_found_stuck_again_not_left_running_in_backoff() {
        let c = config();
        let mut book = Book::new();
        launched_at_zero(&mut book, "ccl-auto-11");
        let obs = [alive("ccl-auto-11", 1), alive("ccl-auto-12", 2)];
        // Up at its prompt with no SessionStart: a failed start, then killed.
        on_died(
            &mut book,
            "ccl-auto-11",
            "no SessionStart".into(),
            &c.lifecycle.restart_backoff,
            61_000,
        );
        assert_eq!(book["ccl-auto-11"].state, State::Backoff);
        // The kill failed: it still runs. As Backoff nothing would ever act on it.
        on_kill_failed(&mut book, "ccl-auto-11");
        assert_eq!(book["ccl-auto-11"].state, State::Starting);
        assert_eq!(
            reconcile(&c, &book, &obs, &HashSet::new(), "a", 62_000),
            vec![Action::ReportStuck {
                name: "ccl-auto-11".into()
            }]
        );
        // Found stuck again: the same failed start, counted once in all.
        on_died(
            &mut book,
            "ccl-auto-11",
            "no SessionStart".into(),
            &c.lifecycle.restart_backoff,
            62_000,
        );
        assert_eq!(
            (book["ccl-auto-11"].state, book["ccl-auto-11"].failed_starts),
            (State::Backoff, 1)
        );
        // Its SessionStart came after all, then the kill went through: dead,
        // not idle with nothing behind it.
        apply_hook(
            &mut book,
            &hook(
                "ccl-auto-11",
                json!({"hook_event_name": "SessionStart", "session_id": "s-9", "source": "startup"}),
            ),
        );
        assert_eq!(book["ccl-auto-11"].state, State::Idle);
        on_killed(&mut book, "ccl-auto-11", 63_000);
        assert_eq!(book["ccl-auto-11"].state, State::Dead);
        // One left alone on a dialog (failed, no retry) stays so.
        on_stuck(&mut book, "ccl-auto-11", "a dialog".into(), 64_000);
        on_kill_failed(&mut book, "ccl-auto-11");
        on_killed(&mut book, "ccl-auto-11", 64_000);
        assert_eq!(book["ccl-auto-11"].state, State::Failed);
    }

    #[test]
    fn a_stuck_report_overtaken_by_its_session_start_leaves_the_session_running() {
        let mut book = Book::new();
        launched_at_zero(&mut book, "ccl-auto-11");
        launched_at_zero(&mut book, "ccl-auto-12");
        // Still starting: the screen decides.
        assert_eq!(
            stuck_verdict(&book, "ccl-auto-11", StuckScreen::Prompt),
            Stuck::Relaunch
        );
        assert_eq!(
            stuck_verdict(&book, "ccl-auto-11", StuckScreen::Blank),
            Stuck::Relaunch
        );
        assert_eq!(
            stuck_verdict(&book, "ccl-auto-11", StuckScreen::Other),
            Stuck::LeaveAlone
        );
        // Its SessionStart arrived while the watcher read the screen, and a
        // task may have been typed in since: whatever the screen showed, the
        // session is not killed nor marked failed.
        apply_hook(
            &mut book,
            &hook(
                "ccl-auto-11",
                json!({"hook_event_name": "SessionStart", "session_id": "s-1", "source": "startup"}),
            ),
        );
        book.get_mut("ccl-auto-11").unwrap().state = State::Working;
        for screen in [StuckScreen::Prompt, StuckScreen::Blank, StuckScreen::Other] {
            assert_eq!(
                stuck_verdict(&book, "ccl-auto-11", screen),
                Stuck::StartedMeanwhile
            );
        }
        // The other one, still starting, is judged on its own.
        assert_eq!(
            stuck_verdict(&book, "ccl-auto-12", StuckScreen::Prompt),
            Stuck::Relaunch
        );
        // One that left the book meanwhile (pool shrank) is not acted on.
        assert_eq!(
            stuck_verdict(&book, "ccl-auto-13", StuckScreen::Prompt),
            Stuck::Gone
        );
        // Blank again after its relaunch: left alone (a machine slower than
        // the timeout at every start must not have each start killed); up
        // at its prompt it is still relaunched.
        book.get_mut("ccl-auto-12").unwrap().failed_starts = 1;
        assert_eq!(
            stuck_verdict(&book, "ccl-auto-12", StuckScreen::Blank),
            Stuck::LeaveAlone
        );
        assert_eq!(
            stuck_verdict(&book, "ccl-auto-12", StuckScreen::Prompt),
            Stuck::Relaunch
        );
    }

    #[test]
    fn hooks_move_states_and_stale_conversations_are_ignored() {
        let mut book = Book::new();
        launched_at_zero(&mut book, "ccl-auto-11");
        let s = "ccl-auto-11";
        apply_hook(
            &mut book,
            &hook(
                s,
                json!({"hook_event_name": "SessionStart", "session_id": "new"}),
            ),
        );
        apply_hook(
            &mut book,
            &hook(
                s,
                json!({"hook_event_name": "UserPromptSubmit", "session_id": "new"}),
            ),
        );
        assert_eq!(book[s].state, State::Working);
        assert!(!apply_hook(
            &mut book,
            &hook(s, json!({"hook_event_name": "Stop", "session_id": "old"}))
        ));
        assert_eq!(book[s].state, State::Working);
        apply_hook(
            &mut book,
            &hook(
                s,
                json!({"hook_event_name": "Notification", "session_id": "new", "notification_type": "permission_prompt"}),
            ),
        );
        assert_eq!(book[s].state, State::Waiting);
        apply_hook(
            &mut book,
            &hook(
                s,
                json!({"hook_event_name": "StopFailure", "session_id": "new", "error": "rate_limit", "last_assistant_message": "You've hit your 5-hour limit"}),
            ),
        );
        assert_eq!(book[s].state, State::Limited);
        assert!(book[s]
            .last_error
            .as_deref()
            .unwrap()
            .contains("rate_limit: You've hit"));
        assert!(!apply_hook(
            &mut book,
            &hook("ccl-0", json!({"hook_event_name": "Stop"}))
        ));
    }

    #[test]
    fn adopts_running_managed_sessions_only() {
        let c = config();
        let mut book = Book::new();
        let adopted = adopt(
            &mut book,
            &c,
            &[
                alive("ccl-auto-13", 7),
                alive("ccl-0", 8),
                dead("ccl-auto-14"),
            ],
            0,
        );
        assert_eq!(adopted, vec!["ccl-auto-13".to_string()]);
        assert_eq!(book["ccl-auto-13"].state, State::Idle);
        assert_eq!(book["ccl-auto-13"].pane_pid, Some(7));
    }

    #[test]
    fn hooks_are_silent_when_the_transcript_shows_work_long_after_the_last_hook() {
        let after = 10_000;
        let r = Record {
            state: State::Working,
            launched_at_ms: Some(1_000),
            last_hook_ms: Some(50_000),
            ..Record::default()
        };
        // Work right after a hook, or none: not silent.
        assert_eq!(hooks_silent(&r, Some(55_000), 56_000, after), None);
        assert_eq!(hooks_silent(&r, None, 90_000, after), None);
        assert_eq!(hooks_silent(&r, Some(40_000), 90_000, after), None);
        // Work 10 s past the last hook and still no hook: silent, for as long.
        assert_eq!(hooks_silent(&r, Some(60_000), 61_000, after), Some(11_000));
        // An idle session whose transcript was touched is not at work.
        let idle = Record {
            state: State::Idle,
            ..r.clone()
        };
        assert_eq!(hooks_silent(&idle, Some(60_000), 61_000, after), None);
        // Never a hook heard (a sessions.json from before the canary): not judged.
        let unheard = Record {
            last_hook_ms: None,
            ..r.clone()
        };
        assert_eq!(hooks_silent(&unheard, Some(60_000), 61_000, after), None);
        // A relaunch after the last hook starts the wait over.
        let relaunched = Record {
            launched_at_ms: Some(55_000),
            ..r.clone()
        };
        assert_eq!(hooks_silent(&relaunched, Some(60_000), 61_000, after), None);
    }

    #[test]
    fn any_hook_but_the_status_line_is_heard_and_a_tool_call_ends_a_wait() {
        let mut book = Book::new();
        book.insert(
            "ccl-0".into(),
            Record {
                state: State::Waiting,
                claude_session_id: Some("new".into()),
                ..Record::default()
            },
        );
        assert!(apply_hook(
            &mut book,
            &hook(
                "ccl-0",
                json!({"hook_event_name": "PostToolUse", "session_id": "new", "tool_name": "Bash"}),
            )
        ));
        assert_eq!(book["ccl-0"].state, State::Working);
        assert_eq!(book["ccl-0"].last_hook_ms, Some(5));
        // A permission prompt recorded before the Stop that ended the turn
        // does not make the idle session wait.
        book.get_mut("ccl-0").unwrap().state = State::Idle;
        book.get_mut("ccl-0").unwrap().since_ms = 10;
        assert!(!apply_hook(
            &mut book,
            &hook(
                "ccl-0",
                json!({"hook_event_name": "Notification", "session_id": "new", "notification_type": "permission_prompt"}),
            )
        ));
        assert_eq!(book["ccl-0"].state, State::Idle);
        // A late tool call's event after the turn's Stop leaves it idle.
        book.get_mut("ccl-0").unwrap().state = State::Idle;
        apply_hook(
            &mut book,
            &hook(
                "ccl-0",
                json!({"hook_event_name": "PostToolUse", "session_id": "new"}),
            ),
        );
        assert_eq!(book["ccl-0"].state, State::Idle);
    }

    #[test]
    fn a_compaction_in_the_middle_of_a_turn_leaves_the_session_working() {
        let mut book = Book::new();
        book.insert(
            "ccl-0".into(),
            Record {
                state: State::Working,
                claude_session_id: Some("c1".into()),
                ..Record::default()
            },
        );
        apply_hook(
            &mut book,
            &hook(
                "ccl-0",
                json!({"hook_event_name": "SessionStart", "session_id": "c1", "source": "compact"}),
            ),
        );
        assert_eq!(book["ccl-0"].state, State::Working);
        // Any other start is a fresh, idle session.
        apply_hook(
            &mut book,
            &hook(
                "ccl-0",
                json!({"hook_event_name": "SessionStart", "session_id": "c2", "source": "clear"}),
            ),
        );
        assert_eq!(book["ccl-0"].state, State::Idle);
    }

    #[test]
    fn a_live_reading_is_credited_by_its_windows_and_confirms_only_on_the_target() {
        let alpha: Fingerprint = (Some(10_000), Some(900_000));
        let beta: Fingerprint = (Some(20_000), Some(800_000));
        let pending = || Record {
            account: Some("alpha".into()),
            verify: Some(Verify {
                swap_id: "swap-1".into(),
                from: "alpha".into(),
                to: "beta".into(),
                since_ms: 1,
                active_ms: Some(2),
            }),
            ..Record::default()
        };
        // Still the outgoing account's windows: credited to it, not confirmed.
        let mut r = pending();
        assert_eq!(
            live_reading(&mut r, alpha, Some(alpha), Some(beta), 5),
            Some("alpha".into())
        );
        assert!(r.verify.is_some() && r.account_confirmed_ms.is_none());
        // A reading without windows says nothing.
        assert_eq!(
            live_reading(&mut r, (None, None), Some(alpha), Some(beta), 5),
            None
        );
        assert!(r.verify.is_some());
        // The target's windows: confirmed and credited to the target.
        assert_eq!(
            live_reading(&mut r, beta, Some(alpha), Some(beta), 7),
            Some("beta".into())
        );
        assert_eq!(
            (r.verify.is_none(), r.account_confirmed_ms),
            (true, Some(7))
        );
        assert_eq!(r.account.as_deref(), Some("beta"));
        // Confirmed: later readings are its account's.
        assert_eq!(
            live_reading(&mut r, beta, None, None, 9),
            Some("beta".into())
        );
        // Two accounts with the same windows: taken as moved (never
        // restarted for it), the reading credited to neither.
        let mut r = pending();
        assert_eq!(
            live_reading(&mut r, alpha, Some(alpha), Some(alpha), 5),
            None
        );
        assert_eq!(
            (r.verify.is_none(), r.account.as_deref()),
            (true, Some("beta"))
        );
    }
}
