//! Pure: what each hook event or deadline does to a claimed task.
//!
//! A task given to a session goes through [`Phase`]s: relocating (the
//! session is relaunched in the project's folder) or clearing (`/clear`),
//! typing (pasted, waiting for its `UserPromptSubmit`), running, finishing
//! (a `Stop` came, the transcript says whether the turn is over), and
//! interrupted (a swap or a refusal stopped it; it continues after). The
//! functions here take the assignment, what was observed and `now`, change
//! the phase and return the [`Effect`]s for the dispatcher's shell to carry
//! out (typing, queue moves, relaunches). No I/O, no clock: tests step `now`
//! by hand.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::claude::facts::{self as facts, TurnReading, TurnState};
use crate::claude::hook_event::{Hook, HookEvent, StartSource};
use crate::decide::session::State;

/// How long a pasted prompt may wait for its `UserPromptSubmit` before one
/// more Enter, plus [`SUBMIT_PER_MIB`] for every MiB of text (a 1 MiB paste
/// takes the TUI a while).
pub const SUBMIT_DEADLINE: Duration = Duration::from_secs(10);
pub const SUBMIT_PER_MIB: Duration = Duration::from_secs(60);
/// How long an unconfirmed prompt is given in all before the attempt counts
/// as lost: a slow user hook or a loaded machine delays `UserPromptSubmit`,
/// and a prompt that was not confirmed may still have been submitted, so it
/// is never typed again while the session could still be running it.
pub const SUBMIT_GIVE_UP: Duration = Duration::from_secs(120);
/// How often an unconfirmed prompt is looked for in the session's transcript.
pub const TRANSCRIPT_LOOK_EVERY: Duration = Duration::from_secs(2);
/// After a `Stop`, how long to wait for the transcript to say whether the
/// turn is over (a user's Stop hook may block it) before taking the Stop as
/// the end.
pub const FINISH_GRACE: Duration = Duration::from_secs(10);
/// The longest a Stop waits for its summary when this Claude Code writes
/// them (a user's Stop hook may run a test suite before it answers).
pub const FINISH_WAIT_MAX: Duration = Duration::from_secs(15 * 60);
/// After dispatch resumes without a swap (the account recovered), how long
/// before an interrupted task's session is told to continue: a swap's own
/// relaunch, if one is on its way, continues it first.
pub const RESUME_SETTLE: Duration = Duration::from_secs(3);
/// How long `/clear` may take to answer with `SessionStart`.
pub const CLEAR_DEADLINE: Duration = Duration::from_secs(15);
/// How long a relocated session may take to come back.
pub const RELOCATE_DEADLINE: Duration = Duration::from_secs(90);
/// What a resumed conversation is told after a swap interrupted its task.
pub const CONTINUE_PROMPT: &str = "This session was moved to another account and resumed. Continue the task you were working on from where you stopped, and finish it.";
/// What a session refused by its account is told once the account (or
/// another) can take work again without a swap.
/// Live mode: typed (after Escape) into a session a refusal stopped, once the
/// seat holds another account.
pub const CONTINUE_LIVE_PROMPT: &str = "This session now runs on another account. Continue the task you were working on from where you stopped, and finish it.";

pub const CONTINUE_AFTER_LIMIT_PROMPT: &str = "The usage limit that stopped you has passed. Continue the task you were working on from where you stopped, and finish it.";

/// How long the prompt may take to be confirmed before one more Enter.
pub fn submit_deadline(text: &str) -> Duration {
    SUBMIT_DEADLINE + SUBMIT_PER_MIB.mul_f64(text.len() as f64 / (1u64 << 20) as f64)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
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

/// A session's claimed task (or the one it is relocating for).
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub project: String,
    /// Claimed task name (None while relocating for a not yet claimed task).
    pub task: Option<String>,
    /// The text to type (already in its typed form).
    pub prompt: String,
    pub phase: Phase,
    /// When the task was seen ready (for dispatch latency).
    pub seen_at: Instant,
    /// The turn's transcript and the offset its end-of-turn markers are
    /// read from (set when the submission is confirmed).
    pub transcript: Option<(PathBuf, u64)>,
}

/// How a task leaves its session.
#[derive(Debug, Clone, PartialEq)]
pub enum Release {
    /// Recorded in `done/`.
    Done,
    /// Back to the inbox, no attempt counted.
    Requeue,
    /// An attempt is lost (then `failed/` after `max_attempts`).
    Attempt(String),
}

/// What the dispatcher's shell carries out, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Paste this text and press Enter (the phase is already `Typing`).
    Type(String),
    /// Type `/clear` (the phase is already `Clearing`).
    Clear,
    /// Press Escape (leaves a limit screen) before what follows.
    Escape,
    /// Press Enter once more.
    Enter,
    /// Relaunch the session fresh in the project's folder.
    Relocate,
    /// The task now runs under this account (its marker says so).
    MarkAccount(String),
    /// The submission is confirmed (the phase is already `Running`): record
    /// the conversation, and read the turn's markers from `offset` of
    /// `transcript` (None: from where the transcript stands now).
    Confirm {
        conversation: Option<String>,
        transcript: Option<PathBuf>,
        offset: Option<u64>,
        latency: Duration,
    },
    /// Read the transcript and pass it to [`finishing`].
    CheckFinishing,
    /// Record the task done with the answer its `Finishing` phase holds;
    /// then `/clear` for the next task when `clear_after`.
    Finish {
        clear_after: bool,
    },
    /// The event files of Stops that a blocking summary answered.
    DeleteEventFiles(Vec<PathBuf>),
    /// Keep the hook event's file until the task is recorded (a crash
    /// replays the Stop).
    KeepEventFile,
    Release(Release),
    /// The attempt counts and the session is relaunched fresh in its
    /// folder, so what it was doing cannot finish beside the retry.
    LoseAttemptAndRelaunch(String),
}

/// The circumstances of one step.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub session: &'a str,
    pub now: Instant,
    /// Dispatch is paused (a swap, or no account can take work).
    pub paused: bool,
    /// The session belongs to a pool (a reload may have taken it out).
    pub managed: bool,
}

/// What the shell observed for a hook event.
#[derive(Debug, Clone, Default)]
pub struct HookSeen {
    /// The account whose home the event came from.
    pub account: Option<String>,
    /// The text to type again after a resume (an `Interrupted` phase's
    /// `retype`) is already in the resumed transcript as a prompt.
    pub retype_went_through: bool,
    /// The event's file (kept for replay by a Stop).
    pub file: PathBuf,
}

/// Sets the phase to `Typing` the text and returns the effect that types it.
fn type_text(a: &mut Assignment, text: String, retried: bool, now: Instant) -> Effect {
    a.phase = Phase::Typing {
        since: now,
        retried,
        text: text.clone(),
        looked_at: None,
    };
    Effect::Type(text)
}

/// How a just-claimed task starts: relaunched in the project's folder, typed
/// at once into a fresh conversation, or after a `/clear`.
pub fn begin(a: &mut Assignment, in_project_folder: bool, fresh: bool, now: Instant) -> Effect {
    if !in_project_folder {
        a.phase = Phase::Relocating { since: now };
        Effect::Relocate
    } else if fresh {
        type_text(a, a.prompt.clone(), false, now)
    } else {
        a.phase = Phase::Clearing { since: now };
        Effect::Clear
    }
}

/// A swap began (or no account can take work): work under way waits and
/// continues after it. `account` is the one the session runs under.
pub fn interrupt(a: &mut Assignment, account: Option<String>, now: Instant) {
    if matches!(a.phase, Phase::Running | Phase::Typing { .. }) && a.task.is_some() {
        let retype = match &a.phase {
            Phase::Typing { text, .. } => Some(text.clone()),
            _ => None,
        };
        a.phase = Phase::Interrupted {
            account,
            retype,
            since: now,
        };
    }
}

/// The phase of a task found active at start (claimed before a restart).
/// `confirmed`: its marker holds the conversation that submitted it;
/// `text`: its typed form, read back (needed only when not confirmed);
/// `swapping`: a swap is under way or was interrupted by the restart.
/// None: it cannot be read back, and goes back to the inbox.
pub fn adopted(
    swapping: bool,
    confirmed: bool,
    marker_account: &str,
    text: Option<String>,
    now: Instant,
) -> Option<Phase> {
    Some(if swapping && confirmed {
        Phase::Interrupted {
            account: Some(marker_account.to_string()),
            retype: None,
            since: now,
        }
    } else if confirmed {
        Phase::Running
    } else {
        Phase::Typing {
            since: now,
            retried: true,
            text: text?,
            looked_at: None,
        }
    })
}

/// One hook event of the assignment's session.
pub fn on_hook(a: &mut Assignment, hook: &Hook, seen: &HookSeen, ctx: Ctx) -> Vec<Effect> {
    let session = ctx.session;
    match &hook.event {
        HookEvent::SessionStart { source } => on_start(a, source, seen, ctx),
        HookEvent::UserPromptSubmit { prompt } => {
            // Only the submission of the text we typed confirms it: a late
            // turn of an earlier prompt must not.
            match &mut a.phase {
                Phase::Typing { text, .. } if facts::same_prompt(text, prompt) => {
                    a.phase = Phase::Running;
                    vec![Effect::Confirm {
                        conversation: hook.conversation.clone(),
                        transcript: hook.transcript.clone(),
                        offset: None,
                        latency: ctx.now.saturating_duration_since(a.seen_at),
                    }]
                }
                // Typed before the swap began, and it did go through.
                Phase::Interrupted { retype, .. }
                    if retype
                        .as_deref()
                        .is_some_and(|t| facts::same_prompt(t, prompt)) =>
                {
                    *retype = None;
                    Vec::new()
                }
                _ => Vec::new(),
            }
        }
        HookEvent::Stop { answer } => {
            // Only a turn whose submission we saw (Running), or one cut by a
            // swap, answers the task: a Stop while still Typing belongs to
            // an earlier prompt. The task is done when the turn is over,
            // which the transcript tells (a user's Stop hook may block the
            // end and the turn goes on): see [`finishing`].
            if !matches!(
                a.phase,
                Phase::Running | Phase::Interrupted { .. } | Phase::Finishing { .. }
            ) {
                return Vec::new();
            }
            let (stops, mut events) = match &mut a.phase {
                Phase::Finishing { stops, events, .. } => (*stops + 1, std::mem::take(events)),
                _ => (1, Vec::new()),
            };
            events.push(seen.file.clone());
            a.phase = Phase::Finishing {
                since: ctx.now,
                message: answer.clone(),
                claude_session_id: hook.conversation.clone(),
                transcript: hook.transcript.clone(),
                account: seen.account.clone(),
                stops,
                events,
            };
            vec![Effect::KeepEventFile, Effect::CheckFinishing]
        }
        HookEvent::StopFailure { error, message } => {
            if facts::stop_failure_kind(error) == Some(facts::LimitKind::FiveHour) {
                // Refused: not an attempt; it continues after the swap, or
                // when the account can take work again.
                a.phase = Phase::Interrupted {
                    account: seen.account.clone(),
                    retype: None,
                    since: ctx.now,
                };
                Vec::new()
            } else {
                log::debug!("{session}: StopFailure {error}");
                vec![Effect::Release(Release::Attempt(format!(
                    "{error}: {message}"
                )))]
            }
        }
        _ => Vec::new(),
    }
}

fn on_start(a: &mut Assignment, source: &StartSource, seen: &HookSeen, ctx: Ctx) -> Vec<Effect> {
    let session = ctx.session;
    let ready = matches!(
        (&a.phase, source),
        (Phase::Clearing { .. }, StartSource::Clear)
            | (Phase::Relocating { .. }, StartSource::Startup)
    );
    let restarted = matches!(source, StartSource::Startup | StartSource::Resume);
    match &a.phase {
        _ if ready && ctx.paused => {
            // A swap is stopping the sessions: type after it.
            a.phase = Phase::Interrupted {
                account: seen.account.clone(),
                retype: Some(a.prompt.clone()),
                since: ctx.now,
            };
            Vec::new()
        }
        _ if ready => vec![type_text(a, a.prompt.clone(), false, ctx.now)],
        Phase::Interrupted { retype, .. } if *source == StartSource::Resume => {
            // A prompt that went through before the stop (its event lost
            // with it) is not typed a second time.
            let text = match retype {
                Some(t) if !seen.retype_went_through => t.clone(),
                _ => CONTINUE_PROMPT.to_string(),
            };
            let mut effects = Vec::new();
            // The task now runs under the account the session resumed on.
            if let (Some(_), Some(account)) = (&a.task, &seen.account) {
                effects.push(Effect::MarkAccount(account.clone()));
            }
            log::info!("{session}: resumed after a swap; continuing its task");
            effects.push(type_text(a, text, false, ctx.now));
            effects
        }
        Phase::Running
        | Phase::Typing { .. }
        | Phase::Clearing { .. }
        | Phase::Finishing { .. }
            if restarted && !ctx.paused =>
        {
            if matches!(a.phase, Phase::Finishing { .. }) {
                // Its Stop came before the restart: the answer is there.
                return vec![Effect::Finish {
                    clear_after: ctx.managed && !ctx.paused,
                }];
            }
            // The program restarted under the task (it died and was
            // relaunched): that attempt is lost.
            vec![Effect::Release(Release::Attempt(format!(
                "session {session} restarted while working on it"
            )))]
        }
        Phase::Interrupted { .. } => {
            // The conversation could not be resumed: start the task afresh
            // without counting an attempt.
            log::warn!("{session}: resumed as a new conversation; its task goes back to the inbox");
            vec![Effect::Release(Release::Requeue)]
        }
        _ => Vec::new(),
    }
}

/// What the shell observed of the session for a deadline check.
#[derive(Debug, Clone, Default)]
pub struct SessionSeen {
    /// Its state (None: not in the session snapshot).
    pub state: Option<State>,
    /// The account it runs under.
    pub account: Option<String>,
    /// Its current conversation.
    pub conversation: Option<String>,
    /// How long since its transcript last changed, and since its last event
    /// (only needed while `Running`).
    pub transcript_quiet: Option<Duration>,
    pub events_quiet: Option<Duration>,
    /// Where the typed prompt was found in its transcript, when the shell
    /// looked ([`wants_transcript_look`]).
    pub prompt_in_transcript: Option<(PathBuf, u64)>,
}

/// The rules a deadline check needs from the config and the dispatcher.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `janitor.stale_task_after`.
    pub stale_after: Duration,
    /// `janitor.stale_while_waiting`: a session on a permission prompt
    /// counts towards it.
    pub stale_while_waiting: bool,
    /// When dispatch last resumed after a pause.
    pub unpaused_at: Option<Instant>,
    /// Live mode: the account the seat holds (every running session's
    /// next request goes out as it).
    pub seated: Option<String>,
}

/// Whether [`on_deadline`] wants the typed prompt looked for in the
/// transcript this turn (unconfirmed after its Enter was retried).
pub fn wants_transcript_look(a: &Assignment, ctx: Ctx) -> bool {
    match &a.phase {
        Phase::Typing {
            since,
            retried: true,
            text,
            looked_at,
        } => {
            !ctx.paused
                && ctx.now.saturating_duration_since(*since) > submit_deadline(text)
                && looked_at
                    .is_none_or(|t| ctx.now.saturating_duration_since(t) >= TRANSCRIPT_LOOK_EVERY)
        }
        _ => false,
    }
}

/// Deadlines, and a session that died under its task.
pub fn on_deadline(a: &mut Assignment, seen: &SessionSeen, rules: &Rules, ctx: Ctx) -> Vec<Effect> {
    let name = ctx.session;
    let now = ctx.now;
    let state = seen.state;
    // A session a reload took out of the pools is not dead: it goes on with
    // its task, which ends by its own Stop (or the stale-task rule), never by
    // running it a second time elsewhere.
    let released_by_reload = state.is_none() && !ctx.managed;
    let gone = !released_by_reload
        && matches!(
            state,
            None | Some(State::Dead | State::Backoff | State::Failed)
        );
    let age = |t: Instant| now.saturating_duration_since(t);
    match &mut a.phase {
        // Interrupted by a swap, but the session did not come back (stuck or
        // failing under the new account): start the task elsewhere rather
        // than hold it forever.
        Phase::Interrupted { .. }
            if matches!(state, Some(State::Failed | State::Backoff)) && !ctx.paused =>
        {
            log::warn!("{name}: did not come back after the swap; its task goes back to the inbox");
            vec![Effect::Release(Release::Requeue)]
        }
        // Live mode: refused, and the seat now holds another account. The
        // session waits on the limit screen: Escape, then go on (its next
        // request goes out as the seated account).
        Phase::Interrupted {
            account,
            retype,
            since,
        } if !ctx.paused
            && age(*since) >= RESUME_SETTLE
            && matches!(state, Some(State::Limited | State::Idle))
            && rules
                .seated
                .as_ref()
                .is_some_and(|s| account.as_ref() != Some(s)) =>
        {
            let to = rules.seated.clone().unwrap_or_default();
            log::info!("{name}: the seat holds {to} now; continuing its task there");
            let text = retype
                .clone()
                .unwrap_or_else(|| CONTINUE_LIVE_PROMPT.to_string());
            vec![
                Effect::MarkAccount(to),
                Effect::Escape,
                type_text(a, text, false, now),
            ]
        }
        // Refused, and dispatch resumed without moving the session (its
        // account, or the whole fleet's, can take work again): it is still
        // waiting on the limit screen, so tell it to go on.
        Phase::Interrupted {
            account,
            retype,
            since,
        } if !ctx.paused
            // Dispatch resumed after this interruption, a while ago.
            && rules
                .unpaused_at
                .is_some_and(|t| t > *since && age(t) >= RESUME_SETTLE)
            && matches!(state, Some(State::Limited | State::Idle))
            && seen.account.as_ref() == account.as_ref() =>
        {
            log::info!("{name}: its account can take work again; continuing its task");
            let text = retype
                .clone()
                .unwrap_or_else(|| CONTINUE_AFTER_LIMIT_PROMPT.to_string());
            vec![Effect::Escape, type_text(a, text, false, now)]
        }
        Phase::Interrupted { .. } => Vec::new(),
        Phase::Relocating { since } if age(*since) > RELOCATE_DEADLINE => {
            log::warn!("{name}: did not come back in {} in time", a.project);
            vec![Effect::Release(Release::Attempt(format!(
                "session {name} did not start in the project folder in time"
            )))]
        }
        Phase::Relocating { .. } => Vec::new(),
        // Its Stop came before it died: the answer is there.
        Phase::Finishing { .. } if gone => vec![Effect::Finish {
            clear_after: ctx.managed && !ctx.paused,
        }],
        _ if gone && !ctx.paused => vec![Effect::Release(Release::Attempt(format!(
            "session {name} ended while working on it"
        )))],
        Phase::Finishing { .. } => vec![Effect::CheckFinishing],
        // A person is asked (a permission prompt): the wait is theirs, not a
        // hang, unless the operator said otherwise.
        Phase::Running if state == Some(State::Waiting) && !rules.stale_while_waiting => Vec::new(),
        Phase::Running if !ctx.paused => {
            // A task has a deadline judged by the session's signs of life:
            // its events and its transcript. A session that shows none for
            // `stale_task_after` (hung, or its events lost) is relaunched
            // and the attempt counts.
            let quiet = [
                Some(age(a.seen_at)),
                seen.transcript_quiet,
                seen.events_quiet,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_default();
            if quiet < rules.stale_after {
                return Vec::new();
            }
            log::error!("{name}: no sign of life for {quiet:?} while working on its task; the attempt counts and the session is relaunched");
            vec![Effect::LoseAttemptAndRelaunch(format!(
                "session {name} showed no sign of life for {}s",
                quiet.as_secs()
            ))]
        }
        Phase::Running => Vec::new(),
        Phase::Clearing { since } if age(*since) > CLEAR_DEADLINE => {
            log::warn!("{name}: /clear was not confirmed; its task goes back to the inbox");
            vec![Effect::Release(Release::Requeue)]
        }
        Phase::Clearing { .. } => Vec::new(),
        Phase::Typing {
            since,
            retried,
            text,
            looked_at,
        } => {
            let waited = age(*since);
            let deadline = submit_deadline(text);
            // A swap under way owns the sessions: no Enter, no give-up. A
            // session waiting for a person gets no key either (an Enter
            // would answer its prompt).
            if waited <= deadline || ctx.paused || state == Some(State::Waiting) {
                return Vec::new();
            }
            if !*retried {
                // One more Enter, as some versions ignore the first.
                log::warn!("{name}: the prompt is not confirmed after {waited:?}; pressing Enter once more");
                *retried = true;
                return vec![Effect::Enter];
            }
            // Not confirmed is not proof of not submitted: the transcript
            // shows a prompt whose event is late or lost.
            if looked_at.is_none_or(|t| age(t) >= TRANSCRIPT_LOOK_EVERY) {
                if let Some((path, at)) = &seen.prompt_in_transcript {
                    log::warn!("{name}: its prompt is in the transcript though no UserPromptSubmit came; taking it as submitted");
                    let effect = Effect::Confirm {
                        conversation: seen.conversation.clone(),
                        transcript: Some(path.clone()),
                        offset: Some(*at),
                        latency: age(a.seen_at),
                    };
                    a.phase = Phase::Running;
                    return vec![effect];
                }
                *looked_at = Some(now);
            }
            if waited > deadline + SUBMIT_GIVE_UP {
                // In doubt: the attempt counts, and the session is relaunched
                // fresh so it cannot go on with the prompt while the task
                // runs elsewhere.
                log::error!("{name}: the prompt was never confirmed in {waited:?}; the attempt counts and the session is relaunched");
                return vec![Effect::LoseAttemptAndRelaunch(format!(
                    "the prompt typed into {name} was never confirmed"
                ))];
            }
            Vec::new()
        }
    }
}

/// Where a `Finishing` task's end-of-turn markers are read from: the
/// transcript its submission was confirmed with, or else the one its Stop
/// named, from the start.
pub fn finishing_source(a: &mut Assignment) -> Option<(PathBuf, u64)> {
    let Phase::Finishing { transcript, .. } = &a.phase else {
        return None;
    };
    if a.transcript.is_none() {
        a.transcript = transcript.clone().map(|p| (p, 0));
    }
    a.transcript.clone()
}

/// A `Finishing` task, given what its transcript says (`None`: no
/// transcript to read): done when the turn is over; back to `Running` when
/// every Stop so far was answered by a blocking summary (a user's Stop hook
/// blocked the end and the turn goes on). When the transcript says nothing:
/// once this Claude Code is known to write summaries (`summaries_seen`), a
/// Stop is never taken as the end before its summary (a slow user hook may
/// take minutes to block); otherwise after [`FINISH_GRACE`].
pub fn finishing(
    a: &mut Assignment,
    reading: Option<TurnReading>,
    summaries_seen: bool,
    ctx: Ctx,
) -> Vec<Effect> {
    let Phase::Finishing { since, .. } = &a.phase else {
        return Vec::new();
    };
    let waited = ctx.now.saturating_duration_since(*since);
    let has_transcript = reading.is_some();
    let reading = reading.unwrap_or(TurnReading {
        state: TurnState::Unknown,
        next: 0,
        blocks: 0,
        saw_summary: false,
    });
    let finish = Effect::Finish {
        clear_after: ctx.managed && !ctx.paused,
    };
    if reading.blocks > 0 {
        if let Some((_, offset)) = a.transcript.as_mut() {
            *offset = reading.next;
        }
    }
    match reading.state {
        TurnState::Over => vec![finish],
        _ if reading.blocks > 0 => {
            let Phase::Finishing { stops, events, .. } = &mut a.phase else {
                return Vec::new();
            };
            *stops = stops.saturating_sub(reading.blocks);
            log::info!(
                "{}: a Stop hook blocked the end of the turn; the task goes on",
                ctx.session
            );
            if *stops > 0 {
                return Vec::new();
            }
            let files = std::mem::take(events);
            a.phase = Phase::Running;
            vec![Effect::DeleteEventFiles(files)]
        }
        _ if (!summaries_seen || !has_transcript) && waited >= FINISH_GRACE => vec![finish],
        _ if waited >= FINISH_WAIT_MAX => {
            log::warn!(
                "{}: no end of turn in its transcript {FINISH_WAIT_MAX:?} after its Stop; taking the Stop as the end",
                ctx.session
            );
            vec![finish]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
