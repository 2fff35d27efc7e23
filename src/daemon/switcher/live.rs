//! The live swap (`swap.mode: live`): nothing is stopped. Under Claude
//! Code's own refresh lock in the seat, the seat's login (which Claude Code
//! may have refreshed) is kept in the outgoing account's home, the target's
//! login is written into the seat, and the flip is recorded, all before the
//! lock is let go; every running session sends its next request as the
//! target (claude-code-facts.md §8). Each phase is journalled: a `kill -9`
//! anywhere converges on restart ([`swap_plan::live_recovery`]).
//!
//! Outside a swap the seat and the active account's home are kept equal
//! ([`Accounts::sync_seat`]): a token Claude Code refreshed in the seat is
//! copied back into the home within a second (inotify on the seat, and a
//! look every few seconds), under the same lock.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Sender;

use super::{active_of, failpoint_set, Accounts, Command, Journal, Report, SwapResult};
use crate::claude::seat::{self, Login};
use crate::decide::swap_plan::{self, LiveRecovery, Phase, Refusal, SeatHolds, SwapOutcome};

/// How long a swap waits for Claude Code to finish a refresh in flight.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long a sync waits for the lock before trying again at the next turn.
const SYNC_LOCK_WAIT: Duration = Duration::from_millis(500);
/// The seat is compared with the active home at least this often (inotify
/// makes it sooner).
pub const SEAT_SYNC_EVERY: Duration = Duration::from_secs(5);

/// Watches the seat for changes of its credentials file; each one becomes a
/// [`Command::SeatChanged`]. The reader blocks, so it runs detached and ends
/// at the first event after the switcher is gone.
pub fn watch_seat(seat: &Path, switcher: Sender<Command>) {
    use inotify::{Inotify, WatchMask};
    let _ = std::fs::create_dir_all(seat);
    let mut inotify = match Inotify::init() {
        Ok(i) => i,
        Err(e) => {
            log::warn!("no inotify for the seat ({e}); its credentials are compared every {SEAT_SYNC_EVERY:?}");
            return;
        }
    };
    if let Err(e) = inotify
        .watches()
        .add(seat, WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO)
    {
        log::warn!(
            "cannot watch {} ({e}); its credentials are compared every {SEAT_SYNC_EVERY:?}",
            seat.display()
        );
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("seat-inotify".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let Ok(events) = inotify.read_events_blocking(&mut buf) else {
                    return;
                };
                let ours = events.into_iter().any(|e| {
                    e.name
                        .is_some_and(|n| n == crate::claude::facts::CREDENTIALS_FILE)
                });
                if ours && switcher.send(Command::SeatChanged).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the seat watcher: {e}");
    }
}

impl Accounts {
    fn seat(&self) -> Option<PathBuf> {
        self.config.live_seat().map(Path::to_path_buf)
    }

    fn home_of(&self, account: &str) -> Option<PathBuf> {
        self.config.account(account).map(|a| a.home.clone())
    }

    /// Live mode: makes the seat and the active account's home hold the same
    /// login, the newer winning (a refresh in the seat goes to the home; a new
    /// login in the home goes to the seat). Under the lock; a lock held by a
    /// refresh in flight is tried again at the next turn.
    pub(super) fn sync_seat(&mut self) {
        self.release_seat_lock();
        self.last_seat_sync = Instant::now();
        let (Some(seat), Some(home)) = (self.seat(), self.home_of(&self.active.name)) else {
            self.seat_dirty = false;
            return;
        };
        let lock = match seat::lock(&seat, SYNC_LOCK_WAIT) {
            Ok(l) => l,
            Err(e) => {
                log::debug!("seat sync postponed: {e}");
                return;
            }
        };
        self.seat_dirty = false;
        match seat::sync(&lock, &seat, &home) {
            Ok(seat::Synced::Same) => {}
            Ok(seat::Synced::KeptInHome) => log::info!(
                "the seat's login was refreshed: kept in {}'s home",
                self.active.name
            ),
            Ok(seat::Synced::Seated) => log::info!(
                "{}'s home holds a newer login: copied into the seat",
                self.active.name
            ),
            Ok(seat::Synced::SeatedEmpty) => {
                log::info!("the seat had no login: seated {}", self.active.name)
            }
            Err(e) => {
                log::error!("cannot sync the seat with {}'s home: {e}", self.active.name);
                self.seat_dirty = true;
            }
        }
    }

    /// Lets go of the lock a live swap kept past its answer.
    pub(super) fn release_seat_lock(&mut self) {
        self.seat_lock = None;
    }

    /// A journal entry of a live swap's phase before the seat is written:
    /// without `fsync` ([`swap_plan::live_journal_durable`] says why).
    fn enter_unflushed(&mut self, j: &mut Journal, phase: Phase) {
        debug_assert!(!swap_plan::live_journal_durable(phase));
        j.phase = phase;
        let written = crate::store::atomic_file::json_bytes(j).and_then(|b| {
            crate::store::atomic_file::write_unflushed(&self.journal_path, &b, 0o600)
        });
        if let Err(e) = written {
            log::error!("cannot write {}: {e}", self.journal_path.display());
        }
        self.entered(j);
    }

    /// One live swap, start to end (see the module doc).
    pub(super) fn live_swap(&mut self, to: &str, reason: &str) -> SwapResult {
        let started = Instant::now();
        let from = self.active.clone();
        let Some(seat) = self.seat() else {
            return self.refused(to, reason, Refusal::NoTarget, "not in live mode".into());
        };
        let Some(target_home) = self.home_of(to) else {
            return self.refused(
                to,
                reason,
                Refusal::NoTarget,
                format!("no account named {to:?}"),
            );
        };
        let target_login = match seat::read(&target_home) {
            Ok(Some(l)) if l.present() => l,
            Ok(_) => {
                let why = format!(
                    "{to} has no login in {} (run `claude-failover login {to}`); nothing was touched",
                    target_home.display()
                );
                if let Some(q) = self.quota_mut(to) {
                    q.needs_person = Some(format!("no login in {}", target_home.display()));
                }
                return self.refused(to, reason, Refusal::NoTarget, why);
            }
            Err(e) => {
                return self.refused(
                    to,
                    reason,
                    Refusal::NoTarget,
                    format!("cannot read {to}'s login: {e}; nothing was touched"),
                )
            }
        };
        self.release_seat_lock();
        // The readings are saved by the next turn (within a second), not
        // here: nothing a restart does with this swap depends on them.
        let id = format!("swap-{}", super::now_ms());
        log::warn!("swap {id} (live): {} → {to}: {reason}", from.name);
        self.moving(&id, to);
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
            mode: Some("live".into()),
        };
        self.publish();
        self.started(Report::SwapStarted {
            id: id.clone(),
            from: from.name.clone(),
            to: to.to_string(),
            reason: reason.to_string(),
        });
        self.enter_unflushed(&mut j, Phase::Checkpoint);
        let (outcome, detail) = self.live_steps(&mut j, &seat, &target_login);
        if outcome != SwapOutcome::Partial {
            let _ = std::fs::remove_file(&self.journal_path);
        }
        if outcome == SwapOutcome::Done {
            let _ = self.out.send(Report::LiveSwapped {
                id: id.clone(),
                from: from.name.clone(),
                to: to.to_string(),
                at_ms: crate::decide::quota::now_ms(started_at),
            });
        }
        let result = SwapResult {
            id,
            from: from.name.clone(),
            to: to.to_string(),
            reason: reason.to_string(),
            started_at: j.started_at.clone(),
            duration_ms: started.elapsed().as_millis() as u64,
            result: outcome,
            refusal: None,
            detail,
            changed_ids: Vec::new(),
            mode: "live",
            restarted: Vec::new(),
            phases: Vec::new(),
        };
        self.end_swap(result)
    }

    /// Lock → keep → seat → flip, the lock kept for after the answer
    /// ([`Accounts::release_seat_lock`]); on a failure after the seat was
    /// written, the outgoing login goes back into the seat.
    ///
    /// Everything that can be written ahead is written and flushed before
    /// the lock is taken ([`atomic_file::prepare`]): the seat's new
    /// content, the journal's `seat` and `flip` entries, `active.json`.
    /// Taking the lock wakes every Claude Code watching the seat, and on a
    /// busy machine each step after it waits its turn behind them; under
    /// the lock are left the renames and one folder `fsync` each for the
    /// journal, the seat and the flip.
    fn live_steps(
        &mut self,
        j: &mut Journal,
        seat_dir: &Path,
        target: &Login,
    ) -> (SwapOutcome, Option<String>) {
        use crate::store::atomic_file::{self, Prepared};
        let state_dir = self.config.state_dir.clone();
        let entry = |phase: Phase| {
            let mut e = j.clone();
            e.phase = phase;
            atomic_file::json_bytes(&e)
        };
        let prepared = (|| -> std::io::Result<[Prepared; 5]> {
            let (keep, seat, flip) = (
                entry(Phase::Keep)?,
                entry(Phase::Seat)?,
                entry(Phase::Flip)?,
            );
            let active = atomic_file::json_bytes(&super::active_file(&j.to, Some(&j.id)))?;
            let journal = self.journal_path.as_path();
            atomic_file::prepare_all([
                (journal, keep.as_slice(), 0o600, None),
                (journal, seat.as_slice(), 0o600, None),
                // The seat's temp file waits in the state folder: the seat
                // sees one rename, not a file created and written.
                (
                    &seat::credentials_path(seat_dir),
                    target.bytes.as_slice(),
                    0o600,
                    Some(state_dir.as_path()),
                ),
                (journal, flip.as_slice(), 0o600, None),
                (self.active_path.as_path(), active.as_slice(), 0o600, None),
            ])
        })();
        let [journal_keep, journal_seat, seat_file, journal_flip, active_file] = match prepared {
            Ok(p) => p,
            Err(e) => {
                return (
                    SwapOutcome::Failed,
                    Some(format!(
                        "cannot prepare the swap's files: {e}; nothing was touched"
                    )),
                )
            }
        };
        self.enter_unflushed(j, Phase::Lock);
        let lock = match seat::lock(seat_dir, LOCK_WAIT) {
            Ok(l) => l,
            Err(e) => {
                return (
                    SwapOutcome::Failed,
                    Some(format!("{e}; nothing was touched")),
                )
            }
        };
        // Written ahead like the others: under the lock, a rename only.
        j.phase = Phase::Keep;
        debug_assert!(!swap_plan::live_journal_durable(Phase::Keep));
        if let Err(e) = journal_keep.commit_unflushed() {
            log::error!("cannot write {}: {e}", self.journal_path.display());
        }
        self.entered(j);
        let outgoing = match seat::read(seat_dir) {
            Ok(l) => l,
            Err(e) => {
                return (
                    SwapOutcome::Failed,
                    Some(format!(
                        "cannot read the seat's login: {e}; nothing was touched"
                    )),
                )
            }
        };
        if let Some(out) = &outgoing {
            let kept = match self.home_of(&j.from) {
                Some(home) => match seat::read(&home) {
                    Ok(Some(h)) if h.same(out) => Ok(()),
                    _ => seat::write(&home, out, true),
                },
                // The outgoing account left the config: its login is kept
                // in the state folder rather than lost.
                None => atomic_file::write_with_mode(
                    &self
                        .config
                        .state_dir
                        .join(format!("credentials-of-{}.json", j.from)),
                    &out.bytes,
                    0o600,
                ),
            };
            if let Err(e) = kept {
                return (
                    SwapOutcome::Failed,
                    Some(format!(
                        "cannot keep the seat's login in {}'s home: {e}; nothing was touched",
                        j.from
                    )),
                );
            }
        }
        j.phase = Phase::Seat;
        debug_assert!(swap_plan::live_journal_durable(Phase::Seat));
        if let Err(e) = journal_seat.commit() {
            return (
                SwapOutcome::Failed,
                Some(format!(
                    "cannot write {}: {e}; nothing was touched",
                    self.journal_path.display()
                )),
            );
        }
        self.entered(j);
        let injected = failpoint_set(&format!("seat-write:{}", j.to));
        let written = if injected {
            Err(std::io::Error::other(format!(
                "fail point seat-write:{}",
                j.to
            )))
        } else {
            seat_file.commit()
        };
        if let Err(e) = written {
            return (
                SwapOutcome::Failed,
                Some(format!(
                    "cannot write the seat: {e}; the seat still holds {}",
                    j.from
                )),
            );
        }
        // Test-only: a crash right after the write, before the flip is
        // journalled (the one spot where only the seat's content tells).
        if failpoint_set("swap-seat-written") {
            log::error!("fail point swap-seat-written reached: aborting");
            std::process::abort();
        }
        // The flip's entry is flushed with active.json (the same folder);
        // lost, the seat's entry recovers alike.
        j.phase = Phase::Flip;
        debug_assert!(!swap_plan::live_journal_durable(Phase::Flip));
        if let Err(e) = journal_flip.commit_unflushed() {
            log::error!("cannot write {}: {e}", self.journal_path.display());
        }
        self.entered(j);
        let to = j.to.clone();
        let flipped = super::failpoint_io("write-active", &to)
            .and_then(|()| active_file.commit())
            .map_err(|e| format!("cannot write {}: {e}", self.active_path.display()))
            .and_then(|()| self.repoint_active_link(&to));
        match flipped {
            Ok(()) => {
                if let Some(a) = self.config.account(&to).cloned() {
                    self.active = active_of(&self.config, &a);
                    let _ = self.out.send(Report::Active(self.active.clone()));
                }
                self.seat_lock = Some(lock);
                (SwapOutcome::Done, None)
            }
            Err(e) => {
                let back = match &outgoing {
                    Some(out) => seat::write(seat_dir, out, false),
                    None => std::fs::remove_file(seat::credentials_path(seat_dir)),
                };
                drop(lock);
                match back {
                    Ok(()) => (
                        SwapOutcome::RolledBack,
                        Some(format!("{e}; the seat holds {} again", j.from)),
                    ),
                    Err(e2) => {
                        let why = format!(
                            "{e}; and the seat could not be given {}'s login back ({e2}): the sessions run as {} while {} is recorded active",
                            j.from, j.to, j.from
                        );
                        j.partial = Some(why.clone());
                        self.enter(j, Phase::Partial);
                        self.partial = Some(why.clone());
                        (SwapOutcome::Partial, Some(why))
                    }
                }
            }
        }
    }

    /// A live swap's journal found at start: finishes or rolls back, under
    /// the lock (a dead holder's lock, our own crashed run's, is broken).
    pub(super) fn recover_live(&mut self, j: Journal) {
        let Some(seat_dir) = self.seat() else {
            log::error!(
                "swap {} was live but the config is in restart mode now: keeping {} active; check the seat by hand",
                j.id,
                self.active.name
            );
            let _ = std::fs::remove_file(&self.journal_path);
            return;
        };
        let lock = match seat::lock(
            &seat_dir,
            crate::claude::facts::REFRESH_LOCK_STALE + LOCK_WAIT,
        ) {
            Ok(l) => l,
            Err(e) => {
                self.partial = Some(format!(
                    "live swap {} found after a restart: {e}; every swap is refused until it is resolved",
                    j.id
                ));
                log::error!("PARTIAL SWAP: {}", self.partial.as_deref().unwrap_or(""));
                return;
            }
        };
        let in_seat = seat::read(&seat_dir).ok().flatten();
        let of = |account: &str| {
            self.home_of(account)
                .and_then(|h| seat::read(&h).ok().flatten())
        };
        let holds = match &in_seat {
            Some(s) if of(&j.to).is_some_and(|t| t.same(s)) => SeatHolds::Target,
            Some(s) if of(&j.from).is_some_and(|f| f.same(s)) => SeatHolds::Outgoing,
            _ => SeatHolds::Neither,
        };
        let target_exists = self.config.account(&j.to).is_some();
        let recovery = swap_plan::live_recovery(j.phase, j.partial.is_some(), target_exists, holds);
        let (name, result) = match recovery {
            LiveRecovery::StayPartial => {
                self.partial = j.partial.clone().or_else(|| {
                    Some(format!(
                        "live swap {} ({} → {}) was interrupted while writing the seat, and the seat now holds neither account's login as kept: check {} by hand",
                        j.id,
                        j.from,
                        j.to,
                        seat::credentials_path(&seat_dir).display()
                    ))
                });
                log::error!(
                    "PARTIAL SWAP from a previous run: {}; every swap is refused until it is resolved",
                    self.partial.as_deref().unwrap_or("")
                );
                return;
            }
            LiveRecovery::FinishForward => (j.to.clone(), SwapOutcome::FinishedAfterRestart),
            LiveRecovery::RollBack => {
                // The target's login went in but the target is gone: the
                // outgoing one (kept in its home) goes back.
                if holds == SeatHolds::Target {
                    if let Some(out) = of(&j.from) {
                        if let Err(e) = seat::write(&seat_dir, &out, false) {
                            log::error!("cannot give the seat {}'s login back: {e}", j.from);
                        }
                    }
                }
                (j.from.clone(), SwapOutcome::RolledBackAfterRestart)
            }
        };
        let Some(a) = self.config.account(&name).cloned() else {
            return;
        };
        if let Err(e) = self.flip(&a.name, Some(&j.id)) {
            self.partial = Some(format!(
                "live swap {} found after a restart could not be recorded: {e}",
                j.id
            ));
            log::error!("PARTIAL SWAP: {}", self.partial.as_deref().unwrap_or(""));
            return;
        }
        self.active = active_of(&self.config, &a);
        drop(lock);
        log::warn!(
            "live swap {} ({} → {}) was interrupted at {}: {}; the seat holds {}",
            j.id,
            j.from,
            j.to,
            j.phase.as_str(),
            result.as_str().replace('_', " "),
            a.name
        );
        let _ = std::fs::remove_file(&self.journal_path);
        if result == SwapOutcome::FinishedAfterRestart {
            let _ = self.out.send(Report::LiveSwapped {
                id: j.id.clone(),
                from: j.from.clone(),
                to: j.to.clone(),
                at_ms: super::now_ms(),
            });
        }
        self.record(SwapResult::after_restart(&j, result, "live"));
    }
}
