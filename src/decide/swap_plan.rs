//! Pure: the swap's decisions, with no I/O — its phases in order, what it
//! does after each step ([`Plan::next`]), which checkpointed sessions are
//! back ([`back_under`]), what a journal found at start means
//! ([`recovery`]), how a swap ended ([`SwapOutcome`]) and the single-slot
//! queue that turns requests arriving during a swap into at most one more
//! run ([`OpQueue`]).
//!
//! The switcher (`switcher.rs`) is the shell: it writes the journal, stops
//! the sessions, flips `active.json`, fixes shared folders and tells the main
//! loop to relaunch, then hands what happened back to these functions and
//! does what they return. Keeping the decisions here lets every branch of a
//! swap be tested without tmux, files or a clock.

use serde::{Deserialize, Serialize};

use crate::decide::session::State;

/// The phases a swap passes through, in order, as recorded in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Checkpoint,
    Drain,
    Stop,
    Flip,
    Ensure,
    Relaunch,
    /// The rollback failed: sticky until an operator resolves it.
    Partial,
    /// Live mode: Claude Code's refresh lock in the seat is taken.
    Lock,
    /// Live mode: the seat's login (maybe refreshed) is kept in the outgoing home.
    Keep,
    /// Live mode: the target's login is written into the seat.
    Seat,
}

impl Phase {
    pub const ORDER: [Phase; 6] = [
        Phase::Checkpoint,
        Phase::Drain,
        Phase::Stop,
        Phase::Flip,
        Phase::Ensure,
        Phase::Relaunch,
    ];

    /// A live swap's phases, in order.
    pub const LIVE_ORDER: [Phase; 5] = [
        Phase::Checkpoint,
        Phase::Lock,
        Phase::Keep,
        Phase::Seat,
        Phase::Flip,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Checkpoint => "checkpoint",
            Phase::Drain => "drain",
            Phase::Stop => "stop",
            Phase::Flip => "flip",
            Phase::Ensure => "ensure",
            Phase::Relaunch => "relaunch",
            Phase::Partial => "partial",
            Phase::Lock => "lock",
            Phase::Keep => "keep",
            Phase::Seat => "seat",
        }
    }
}

/// How a swap ended. Serialised as the strings `/status`, the metrics and
/// the notes have always carried (`done`, `rolled_back`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwapOutcome {
    /// Every session runs under the target.
    Done,
    /// The old account is active again (a failed step was undone, or the
    /// stop could not be confirmed and nothing was flipped).
    RolledBack,
    /// The rollback failed too: sticky until an operator resolves it.
    Partial,
    /// The flip held but not every session came back.
    Incomplete,
    /// Not started: see [`Refusal`].
    Refused,
    /// Reserved for a swap that failed in a way none of the others says.
    Failed,
    /// A journal found at start was finished forward.
    FinishedAfterRestart,
    /// A journal found at start was rolled back.
    RolledBackAfterRestart,
}

impl SwapOutcome {
    /// Every outcome, in the order the metrics list them.
    pub const ALL: [SwapOutcome; 8] = [
        SwapOutcome::Done,
        SwapOutcome::RolledBack,
        SwapOutcome::Partial,
        SwapOutcome::Refused,
        SwapOutcome::Failed,
        SwapOutcome::Incomplete,
        SwapOutcome::FinishedAfterRestart,
        SwapOutcome::RolledBackAfterRestart,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            SwapOutcome::Done => "done",
            SwapOutcome::RolledBack => "rolled_back",
            SwapOutcome::Partial => "partial",
            SwapOutcome::Incomplete => "incomplete",
            SwapOutcome::Refused => "refused",
            SwapOutcome::Failed => "failed",
            SwapOutcome::FinishedAfterRestart => "finished_after_restart",
            SwapOutcome::RolledBackAfterRestart => "rolled_back_after_restart",
        }
    }
}

impl AsRef<str> for SwapOutcome {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for SwapOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a swap was refused; decides the HTTP code (409 or 422).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another swap runs, or a partial swap holds: try again later (409).
    Busy,
    /// No account can take the work, or the named one cannot (422).
    NoTarget,
}

/// What a journal found at start says about the swap it records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalFound {
    /// It cannot be read as a journal.
    Corrupt,
    Read {
        phase: Phase,
        /// The journal records a failed rollback.
        partial: bool,
        /// The swap's target is still configured.
        target_exists: bool,
    },
}

/// What to do with a journal found at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Corrupt: set it aside and keep the active account as it is.
    KeepActive,
    /// A rollback failed before the restart: every swap stays refused.
    StayPartial,
    /// The flip was under way or done: fix the target's shared folders and
    /// flip to it again; if either fails, roll back.
    FinishForward,
    /// Nothing was flipped yet (or the target is gone): back to `from`.
    RollBack,
}

/// The recovery choice for a journal found at start.
pub fn recovery(found: JournalFound) -> Recovery {
    match found {
        JournalFound::Corrupt => Recovery::KeepActive,
        JournalFound::Read { phase, partial, .. } if partial || phase == Phase::Partial => {
            Recovery::StayPartial
        }
        JournalFound::Read {
            phase,
            target_exists: true,
            ..
        } if phase >= Phase::Flip => Recovery::FinishForward,
        JournalFound::Read { .. } => Recovery::RollBack,
    }
}

/// A live swap's journal found at start: what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveRecovery {
    /// A rollback failed before the restart: every swap stays refused.
    StayPartial,
    /// The target's login is in the seat: record it as active.
    FinishForward,
    /// The seat still holds the outgoing login: the outgoing account stays.
    RollBack,
}

/// What the seat holds when a live swap's journal is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeatHolds {
    /// The same login as the target's home.
    Target,
    /// The same login as the outgoing account's home.
    Outgoing,
    /// Neither (refreshed since, or unreadable).
    Neither,
}

/// The recovery of a live swap interrupted at `phase`. Up to `keep` the
/// seat was not written; at `flip` it was (the lock was held from before the
/// write to after the flip, so nothing refreshed it in between); at `seat`
/// the atomic write is either done or not, and what the seat holds says
/// which. A seat at `seat` that matches neither home cannot be told apart
/// safely: partial, for a person.
pub fn live_recovery(
    phase: Phase,
    partial: bool,
    target_exists: bool,
    seat: SeatHolds,
) -> LiveRecovery {
    match phase {
        _ if partial || phase == Phase::Partial => LiveRecovery::StayPartial,
        Phase::Flip if target_exists => LiveRecovery::FinishForward,
        Phase::Seat if target_exists && seat == SeatHolds::Target => LiveRecovery::FinishForward,
        Phase::Seat if seat == SeatHolds::Neither => LiveRecovery::StayPartial,
        _ => LiveRecovery::RollBack,
    }
}

/// Whether a live swap's journal entry for `phase` must be on disk (file
/// and folder flushed) before the swap goes on. Before the seat is written
/// (checkpoint, lock, keep), the journal a restart finds only ever rolls
/// back to the outgoing account, which is still the active one, under the
/// lock: exactly what a restart with no journal (or a corrupt one, set
/// aside) does, so losing that entry to a power loss loses nothing, and it
/// is written without `fsync` (a crash of the daemon alone keeps it).
/// `seat` must be durable before the seat is written: only it tells a
/// restart that the seat's content may be the target's. `flip`'s entry is
/// flushed with `active.json`, in the same folder, before the lock is let
/// go; until then the `seat` entry holds, which recovers the same way.
pub fn live_journal_durable(phase: Phase) -> bool {
    !matches!(
        phase,
        Phase::Checkpoint | Phase::Lock | Phase::Keep | Phase::Flip
    )
}

/// What the recovery's finish-forward attempt ends as: finished, or (when
/// the target's folders or the flip failed) rolled back.
pub fn recovery_outcome(finished: bool) -> SwapOutcome {
    if finished {
        SwapOutcome::FinishedAfterRestart
    } else {
        SwapOutcome::RolledBackAfterRestart
    }
}

/// What the shell did last, as the plan needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Happened {
    /// The stop ended: `confirmed` when tmux lists no managed session alive.
    Stopped { confirmed: bool },
    /// The leg's target is no longer configured (only on a move-on leg).
    TargetGone,
    /// `active.json` and `active_link` were (or could not be) written.
    Flipped { ok: bool },
    /// The target's shared folders were (or could not be) made right.
    Ensured { ok: bool },
    /// The old account was (or could not be) put back.
    RolledBack { ok: bool },
    /// The relaunch was waited for: `back` of the `wanted` sessions run
    /// under the active account again; `checkpointed` counts every session
    /// the journal holds (running or not).
    Verified {
        wanted: usize,
        back: usize,
        checkpointed: usize,
    },
}

/// What the shell does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Write `active.json` and `active_link` for the leg's target.
    Flip,
    /// Make the target's shared folders right.
    Ensure,
    /// Put the old account back.
    RollBack,
    /// Tell the main loop to relaunch every session and wait for them.
    Relaunch,
    /// Not one session came back under the target: mark it as needing a
    /// person, stop the sessions again and take them to the best other
    /// usable account, or back to `from`.
    MoveOn,
    /// The first stop could not be confirmed: nothing was flipped, so there
    /// is nothing to put back or relaunch; the journal goes at once.
    GoBackUnflipped,
    /// A move-on leg could not stop the sessions: they are relaunched where
    /// they are, without waiting for them.
    RelaunchInPlace,
    /// The swap is over.
    End(SwapOutcome),
}

/// Which leg of a swap runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// From the active account to the requested target.
    First,
    /// After no session started under the first target: on to another
    /// account (`back: false`) or back to `from` (`back: true`).
    MoveOn { back: bool },
}

/// A swap's plan: where it is and the outcome so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub leg: Leg,
    /// What the swap ends as if nothing else goes wrong.
    pub outcome: Option<SwapOutcome>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan::new()
    }
}

impl Plan {
    /// A swap that has checkpointed and drained, and stops the sessions next.
    pub fn new() -> Plan {
        Plan {
            leg: Leg::First,
            outcome: None,
        }
    }

    /// The second leg: the shell stops the sessions again next.
    pub fn move_on(&mut self, back: bool) {
        self.leg = Leg::MoveOn { back };
        self.outcome = None;
    }

    /// What the shell does after `happened`.
    pub fn next(&mut self, happened: Happened) -> Step {
        match (self.leg, happened) {
            (Leg::First, Happened::Stopped { confirmed: false }) => {
                self.outcome = Some(SwapOutcome::RolledBack);
                Step::GoBackUnflipped
            }
            (Leg::MoveOn { .. }, Happened::Stopped { confirmed: false }) => {
                self.outcome = Some(SwapOutcome::Incomplete);
                Step::RelaunchInPlace
            }
            (_, Happened::Stopped { confirmed: true }) => Step::Flip,
            (_, Happened::TargetGone) => self.end(SwapOutcome::Incomplete),
            (_, Happened::Flipped { ok: true }) => Step::Ensure,
            (_, Happened::Flipped { ok: false } | Happened::Ensured { ok: false }) => {
                Step::RollBack
            }
            (leg, Happened::Ensured { ok: true }) => {
                self.outcome = Some(match leg {
                    Leg::MoveOn { back: true } => SwapOutcome::RolledBack,
                    _ => SwapOutcome::Done,
                });
                Step::Relaunch
            }
            (_, Happened::RolledBack { ok: true }) => {
                self.outcome = Some(SwapOutcome::RolledBack);
                Step::Relaunch
            }
            (_, Happened::RolledBack { ok: false }) => self.end(SwapOutcome::Partial),
            (
                leg,
                Happened::Verified {
                    wanted,
                    back,
                    checkpointed,
                },
            ) => {
                let so_far = self.outcome.unwrap_or(SwapOutcome::Done);
                if back >= wanted {
                    return self.end(so_far);
                }
                match leg {
                    // The target is at fault (a login screen, a dialog,
                    // revoked credentials), not a session.
                    Leg::First if back == 0 && so_far == SwapOutcome::Done && checkpointed > 0 => {
                        Step::MoveOn
                    }
                    // Never "done" when sessions did not come back.
                    Leg::First if so_far == SwapOutcome::Done => self.end(SwapOutcome::Incomplete),
                    Leg::First => self.end(so_far),
                    Leg::MoveOn { .. } => self.end(SwapOutcome::Incomplete),
                }
            }
        }
    }

    fn end(&mut self, outcome: SwapOutcome) -> Step {
        self.outcome = Some(outcome);
        Step::End(outcome)
    }
}

/// Where a move-on leg goes: the best other usable account, or back to
/// `from` when there is none (an exhausted account still starts sessions;
/// they wait for its reset). Returns the account and whether it is `from`.
pub fn move_on_target(best_other: Option<&str>, from: &str) -> (String, bool) {
    match best_other {
        Some(n) if n != from => (n.to_string(), false),
        _ => (from.to_string(), true),
    }
}

/// A session as the main loop last saw it: what the switcher checkpoints,
/// drains and verifies from.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSnapshot {
    pub name: String,
    pub state: State,
    pub account: Option<String>,
    pub claude_session_id: Option<String>,
    pub cwd: String,
    pub task: Option<String>,
    /// When it entered `state`, in ms since the epoch.
    pub since_ms: u64,
}

/// Whether a session in `state` ran before the swap and so is expected back.
pub fn expected_back(state: State) -> bool {
    !matches!(state, State::Failed | State::Backoff | State::Dead)
}

/// Whether a session in `state` runs (its program started and answers).
pub fn runs(state: State) -> bool {
    matches!(
        state,
        State::Idle | State::Working | State::Waiting | State::Limited
    )
}

/// Whether any session is in the middle of a turn (what a drain waits for).
pub fn any_working(now: &[SessionSnapshot]) -> bool {
    now.iter().any(|s| s.state == State::Working)
}

/// A checkpointed session as [`back_under`] needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted<'a> {
    pub name: &'a str,
    pub state: State,
    pub claude_session_id: Option<&'a str>,
}

/// Which wanted sessions are back and which still pending.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verified {
    /// Sessions expected back and not yet running under the account.
    pub pending: Vec<String>,
    /// How many are expected back (the checkpointed sessions that ran).
    pub wanted: usize,
    /// Conversations whose id changed on resume: (session, old, new).
    pub changed_ids: Vec<(String, String, String)>,
}

/// The verify check: of the checkpointed sessions that ran before the swap,
/// which run again under `account`, in a state entered at or after the swap
/// started (`started_ms`); and, once none is pending, whose conversation id
/// changed on resume.
pub fn back_under(
    checkpoint: &[Wanted<'_>],
    now: &[SessionSnapshot],
    account: &str,
    started_ms: u64,
) -> Verified {
    let wanted: Vec<&Wanted> = checkpoint
        .iter()
        .filter(|c| expected_back(c.state))
        .collect();
    let pending: Vec<String> = wanted
        .iter()
        .filter(|c| {
            !now.iter().any(|s| {
                s.name == c.name
                    && s.account.as_deref() == Some(account)
                    && runs(s.state)
                    && s.since_ms >= started_ms
            })
        })
        .map(|c| c.name.to_string())
        .collect();
    let changed_ids = if pending.is_empty() {
        wanted
            .iter()
            .filter_map(|c| {
                let s = now.iter().find(|s| s.name == c.name)?;
                match (c.claude_session_id, s.claude_session_id.as_deref()) {
                    (Some(a), Some(b)) if a != b => {
                        Some((c.name.to_string(), a.to_string(), b.to_string()))
                    }
                    _ => None,
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    Verified {
        pending,
        wanted: wanted.len(),
        changed_ids,
    }
}

/// A single-slot queue for an operation that must not overlap itself (a
/// swap): requests made while one runs collapse into one more run, carrying
/// the newest request's cause. Modelled on rust-analyzer's `op_queue.rs`.
#[derive(Debug)]
pub struct OpQueue<C> {
    requested: Option<C>,
    in_progress: bool,
    /// Requests folded into a later one since the last start.
    coalesced: usize,
}

impl<C> Default for OpQueue<C> {
    fn default() -> Self {
        OpQueue {
            requested: None,
            in_progress: false,
            coalesced: 0,
        }
    }
}

impl<C> OpQueue<C> {
    /// Asks for one run with `cause`; an earlier request not yet started is
    /// replaced (and returned, so its cause can be logged).
    pub fn request_op(&mut self, cause: C) -> Option<C> {
        let replaced = self.requested.replace(cause);
        if replaced.is_some() {
            self.coalesced += 1;
        }
        replaced
    }

    /// The cause to start a run for now, if one is requested and none runs.
    pub fn should_start_op(&mut self) -> Option<C> {
        if self.in_progress {
            return None;
        }
        let cause = self.requested.take()?;
        self.in_progress = true;
        self.coalesced = 0;
        Some(cause)
    }

    /// The run started by [`Self::should_start_op`] ended.
    pub fn op_completed(&mut self) {
        self.in_progress = false;
    }

    pub fn op_in_progress(&self) -> bool {
        self.in_progress
    }

    /// Whether a run is requested and not started yet.
    pub fn op_requested(&self) -> bool {
        self.requested.is_some()
    }

    /// How many requests were folded into the pending one.
    pub fn coalesced(&self) -> usize {
        self.coalesced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(phase: Phase, target_exists: bool) -> JournalFound {
        JournalFound::Read {
            phase,
            partial: false,
            target_exists,
        }
    }

    // --- recovery: every journal phase ---

    #[test]
    fn a_live_journal_entry_is_flushed_where_a_lost_one_would_recover_otherwise() {
        // Entries a restart rolls back from are the same as none at all.
        for phase in [Phase::Checkpoint, Phase::Lock, Phase::Keep] {
            assert!(!live_journal_durable(phase), "{phase:?}");
            for seat in [SeatHolds::Outgoing, SeatHolds::Neither] {
                assert_eq!(
                    live_recovery(phase, false, true, seat),
                    LiveRecovery::RollBack
                );
            }
        }
        assert!(live_journal_durable(Phase::Seat));
        assert!(live_journal_durable(Phase::Partial));
        // Lost, flip's entry leaves seat's, which finishes what it can tell.
        assert_eq!(
            live_recovery(Phase::Seat, false, true, SeatHolds::Target),
            live_recovery(Phase::Flip, false, true, SeatHolds::Target)
        );
    }

    #[test]
    fn a_corrupt_journal_keeps_the_active_account() {
        assert_eq!(recovery(JournalFound::Corrupt), Recovery::KeepActive);
    }

    #[test]
    fn a_journal_before_the_flip_rolls_back_whatever_the_target() {
        for phase in [Phase::Checkpoint, Phase::Drain, Phase::Stop] {
            for target_exists in [true, false] {
                assert_eq!(
                    recovery(read(phase, target_exists)),
                    Recovery::RollBack,
                    "{phase:?} target_exists={target_exists}"
                );
            }
        }
    }

    #[test]
    fn a_journal_from_the_flip_on_finishes_forward_when_the_target_exists() {
        for phase in [Phase::Flip, Phase::Ensure, Phase::Relaunch] {
            assert_eq!(
                recovery(read(phase, true)),
                Recovery::FinishForward,
                "{phase:?}"
            );
        }
    }

    #[test]
    fn a_journal_from_the_flip_on_rolls_back_when_the_target_is_gone() {
        for phase in [Phase::Flip, Phase::Ensure, Phase::Relaunch] {
            assert_eq!(
                recovery(read(phase, false)),
                Recovery::RollBack,
                "{phase:?}"
            );
        }
    }

    #[test]
    fn a_partial_journal_stays_partial() {
        for target_exists in [true, false] {
            assert_eq!(
                recovery(read(Phase::Partial, target_exists)),
                Recovery::StayPartial
            );
        }
    }

    #[test]
    fn a_journal_recording_a_failed_rollback_stays_partial_whatever_its_phase() {
        for phase in Phase::ORDER {
            let found = JournalFound::Read {
                phase,
                partial: true,
                target_exists: true,
            };
            assert_eq!(recovery(found), Recovery::StayPartial, "{phase:?}");
        }
    }

    #[test]
    fn every_journal_phase_has_a_recovery_choice() {
        // The list of phases is closed: a new one must be placed here.
        let all = [Phase::ORDER.as_slice(), &[Phase::Partial]].concat();
        assert_eq!(all.len(), 7);
        for phase in all {
            let _ = recovery(read(phase, true));
        }
    }

    #[test]
    fn a_finish_forward_that_fails_ends_rolled_back_after_restart() {
        assert_eq!(recovery_outcome(true), SwapOutcome::FinishedAfterRestart);
        assert_eq!(recovery_outcome(false), SwapOutcome::RolledBackAfterRestart);
    }

    #[test]
    fn phases_are_ordered_as_a_swap_runs_them() {
        let mut sorted = Phase::ORDER;
        sorted.sort();
        assert_eq!(sorted, Phase::ORDER);
        assert!(Phase::Relaunch < Phase::Partial);
    }

    // --- the plan ---

    fn verified(wanted: usize, back: usize) -> Happened {
        Happened::Verified {
            wanted,
            back,
            checkpointed: wanted,
        }
    }

    #[test]
    fn a_swap_where_every_step_works_is_done() {
        let mut p = Plan::new();
        assert_eq!(p.next(Happened::Stopped { confirmed: true }), Step::Flip);
        assert_eq!(p.next(Happened::Flipped { ok: true }), Step::Ensure);
        assert_eq!(p.next(Happened::Ensured { ok: true }), Step::Relaunch);
        assert_eq!(p.next(verified(2, 2)), Step::End(SwapOutcome::Done));
    }

    #[test]
    fn an_unconfirmed_stop_goes_back_with_nothing_flipped() {
        let mut p = Plan::new();
        assert_eq!(
            p.next(Happened::Stopped { confirmed: false }),
            Step::GoBackUnflipped
        );
        assert_eq!(p.outcome, Some(SwapOutcome::RolledBack));
    }

    #[test]
    fn a_failed_flip_rolls_back_and_relaunches_under_the_old_account() {
        let mut p = Plan::new();
        p.next(Happened::Stopped { confirmed: true });
        assert_eq!(p.next(Happened::Flipped { ok: false }), Step::RollBack);
        assert_eq!(p.next(Happened::RolledBack { ok: true }), Step::Relaunch);
        assert_eq!(p.next(verified(1, 1)), Step::End(SwapOutcome::RolledBack));
    }

    #[test]
    fn a_failed_ensure_rolls_back() {
        let mut p = Plan::new();
        p.next(Happened::Stopped { confirmed: true });
        p.next(Happened::Flipped { ok: true });
        assert_eq!(p.next(Happened::Ensured { ok: false }), Step::RollBack);
        assert_eq!(p.next(Happened::RolledBack { ok: true }), Step::Relaunch);
    }

    #[test]
    fn a_failed_rollback_is_partial_and_relaunches_nothing() {
        let mut p = Plan::new();
        p.next(Happened::Stopped { confirmed: true });
        p.next(Happened::Flipped { ok: false });
        assert_eq!(
            p.next(Happened::RolledBack { ok: false }),
            Step::End(SwapOutcome::Partial)
        );
    }

    #[test]
    fn a_rollback_whose_sessions_do_not_all_come_back_stays_rolled_back() {
        let mut p = Plan::new();
        p.next(Happened::Stopped { confirmed: true });
        p.next(Happened::Flipped { ok: false });
        p.next(Happened::RolledBack { ok: true });
        assert_eq!(p.next(verified(2, 0)), Step::End(SwapOutcome::RolledBack));
    }

    #[test]
    fn no_session_back_under_the_target_moves_on() {
        let mut p = Plan::new();
        p.next(Happened::Stopped { confirmed: true });
        p.next(Happened::Flipped { ok: true });
        p.next(Happened::Ensured { ok: true });
        assert_eq!(p.next(verified(3, 0)), Step::MoveOn);
    }

    #[test]
    fn some_sessions_missing_under_the_target_is_incomplete() {
        let mut p = Plan::new();
        p.next(Happened::Stopped { confirmed: true });
        p.next(Happened::Flipped { ok: true });
        p.next(Happened::Ensured { ok: true });
        assert_eq!(p.next(verified(3, 2)), Step::End(SwapOutcome::Incomplete));
    }

    #[test]
    fn no_session_back_with_an_empty_checkpoint_is_incomplete_not_a_move_on() {
        let mut p = Plan::new();
        p.next(Happened::Stopped { confirmed: true });
        p.next(Happened::Flipped { ok: true });
        p.next(Happened::Ensured { ok: true });
        let h = Happened::Verified {
            wanted: 1,
            back: 0,
            checkpointed: 0,
        };
        assert_eq!(p.next(h), Step::End(SwapOutcome::Incomplete));
    }

    #[test]
    fn a_move_on_to_another_account_that_works_is_done() {
        let mut p = Plan::new();
        p.move_on(false);
        assert_eq!(p.next(Happened::Stopped { confirmed: true }), Step::Flip);
        assert_eq!(p.next(Happened::Flipped { ok: true }), Step::Ensure);
        assert_eq!(p.next(Happened::Ensured { ok: true }), Step::Relaunch);
        assert_eq!(p.next(verified(2, 2)), Step::End(SwapOutcome::Done));
    }

    #[test]
    fn a_move_on_back_to_from_that_works_is_rolled_back() {
        let mut p = Plan::new();
        p.move_on(true);
        p.next(Happened::Stopped { confirmed: true });
        p.next(Happened::Flipped { ok: true });
        assert_eq!(p.next(Happened::Ensured { ok: true }), Step::Relaunch);
        assert_eq!(p.next(verified(2, 2)), Step::End(SwapOutcome::RolledBack));
    }

    #[test]
    fn a_move_on_that_cannot_stop_the_sessions_relaunches_them_in_place_incomplete() {
        let mut p = Plan::new();
        p.move_on(false);
        assert_eq!(
            p.next(Happened::Stopped { confirmed: false }),
            Step::RelaunchInPlace
        );
        assert_eq!(p.outcome, Some(SwapOutcome::Incomplete));
    }

    #[test]
    fn a_move_on_to_an_account_no_longer_configured_is_incomplete() {
        let mut p = Plan::new();
        p.move_on(false);
        p.next(Happened::Stopped { confirmed: true });
        assert_eq!(
            p.next(Happened::TargetGone),
            Step::End(SwapOutcome::Incomplete)
        );
    }

    #[test]
    fn a_move_on_whose_flip_fails_rolls_back_and_a_failed_rollback_is_partial() {
        let mut p = Plan::new();
        p.move_on(false);
        p.next(Happened::Stopped { confirmed: true });
        assert_eq!(p.next(Happened::Flipped { ok: false }), Step::RollBack);
        assert_eq!(
            p.next(Happened::RolledBack { ok: false }),
            Step::End(SwapOutcome::Partial)
        );
    }

    #[test]
    fn a_move_on_whose_sessions_do_not_come_back_is_incomplete_and_never_moves_again() {
        for back in [0, 1] {
            let mut p = Plan::new();
            p.move_on(false);
            p.next(Happened::Stopped { confirmed: true });
            p.next(Happened::Flipped { ok: true });
            p.next(Happened::Ensured { ok: true });
            assert_eq!(
                p.next(verified(2, back)),
                Step::End(SwapOutcome::Incomplete)
            );
        }
    }

    #[test]
    fn a_move_on_goes_to_the_best_other_account_or_back_to_from() {
        assert_eq!(
            move_on_target(Some("gamma"), "alpha"),
            ("gamma".into(), false)
        );
        assert_eq!(move_on_target(None, "alpha"), ("alpha".into(), true));
        assert_eq!(
            move_on_target(Some("alpha"), "alpha"),
            ("alpha".into(), true)
        );
    }

    // --- outcomes ---

    #[test]
    fn outcomes_serialise_to_the_strings_status_has_always_shown() {
        for o in SwapOutcome::ALL {
            assert_eq!(
                serde_json::to_value(o).unwrap(),
                serde_json::Value::String(o.as_str().into())
            );
            assert_eq!(o.to_string(), o.as_str());
        }
        assert_eq!(
            SwapOutcome::RolledBackAfterRestart.as_str(),
            "rolled_back_after_restart"
        );
    }

    // --- verify ---

    fn snap(name: &str, state: State, account: &str, since_ms: u64, id: &str) -> SessionSnapshot {
        SessionSnapshot {
            name: name.into(),
            state,
            account: Some(account.into()),
            claude_session_id: Some(id.into()),
            cwd: "/w".into(),
            task: None,
            since_ms,
        }
    }

    fn wanted<'a>(name: &'a str, state: State, id: &'a str) -> Wanted<'a> {
        Wanted {
            name,
            state,
            claude_session_id: Some(id),
        }
    }

    #[test]
    fn a_session_running_under_the_target_since_the_swap_is_back() {
        let cp = [wanted("a", State::Idle, "c1")];
        let now = [snap("a", State::Working, "beta", 1_000, "c1")];
        let v = back_under(&cp, &now, "beta", 1_000);
        assert!(v.pending.is_empty());
        assert_eq!(v.wanted, 1);
        assert!(v.changed_ids.is_empty());
    }

    #[test]
    fn a_session_in_a_state_from_before_the_swap_is_not_back() {
        // Timestamps compare as numbers: 999 ms is before 1 000 ms.
        let cp = [wanted("a", State::Idle, "c1")];
        let now = [snap("a", State::Idle, "beta", 999, "c1")];
        assert_eq!(back_under(&cp, &now, "beta", 1_000).pending, vec!["a"]);
    }

    #[test]
    fn a_session_under_another_account_or_not_running_is_not_back() {
        let cp = [
            wanted("a", State::Idle, "c1"),
            wanted("b", State::Idle, "c2"),
        ];
        let now = [
            snap("a", State::Idle, "alpha", 2_000, "c1"),
            snap("b", State::Starting, "beta", 2_000, "c2"),
        ];
        assert_eq!(back_under(&cp, &now, "beta", 1_000).pending, vec!["a", "b"]);
    }

    #[test]
    fn sessions_that_were_not_running_before_the_swap_are_not_expected_back() {
        let cp = [
            wanted("a", State::Failed, "c1"),
            wanted("b", State::Backoff, "c2"),
            wanted("c", State::Dead, "c3"),
            wanted("d", State::Starting, "c4"),
        ];
        let v = back_under(&cp, &[], "beta", 0);
        assert_eq!(v.wanted, 1);
        assert_eq!(v.pending, vec!["d"]);
    }

    #[test]
    fn a_conversation_whose_id_changed_on_resume_is_reported_once_all_are_back() {
        let cp = [
            wanted("a", State::Idle, "old"),
            wanted("b", State::Idle, "same"),
        ];
        let now = [
            snap("a", State::Idle, "beta", 5, "new"),
            snap("b", State::Idle, "beta", 5, "same"),
        ];
        let v = back_under(&cp, &now, "beta", 5);
        assert_eq!(
            v.changed_ids,
            vec![("a".into(), "old".into(), "new".into())]
        );
    }

    #[test]
    fn a_drain_waits_only_for_working_sessions() {
        assert!(!any_working(&[snap("a", State::Waiting, "x", 0, "c")]));
        assert!(any_working(&[snap("a", State::Working, "x", 0, "c")]));
    }

    // --- the operation queue ---

    #[test]
    fn ten_requests_while_one_runs_become_one_more_run_with_the_newest_cause() {
        let mut q = OpQueue::default();
        q.request_op("first".to_string());
        assert_eq!(q.should_start_op().as_deref(), Some("first"));
        for i in 0..10 {
            q.request_op(format!("again {i}"));
        }
        assert_eq!(q.coalesced(), 9);
        assert_eq!(q.should_start_op(), None, "one at a time");
        q.op_completed();
        assert_eq!(q.should_start_op().as_deref(), Some("again 9"));
        q.op_completed();
        assert_eq!(q.should_start_op(), None, "no more runs than requested");
    }

    #[test]
    fn a_request_with_nothing_running_starts_at_once() {
        let mut q = OpQueue::default();
        assert!(!q.op_in_progress());
        assert_eq!(q.request_op(1), None);
        assert!(q.op_requested());
        assert_eq!(q.should_start_op(), Some(1));
        assert!(q.op_in_progress());
        assert!(!q.op_requested());
    }

    #[test]
    fn a_replaced_request_is_handed_back_so_its_cause_can_be_logged() {
        let mut q = OpQueue::default();
        q.request_op("a");
        assert_eq!(q.request_op("b"), Some("a"));
    }
}
