//! The main loop's work on what the switcher and the dispatcher report:
//! swaps starting and ending, the active account, dispatch paused, task
//! assignments and pool resizing.

use super::*;

impl Daemon {
    pub(super) fn on_switcher(&mut self, notice: switcher::Report) {
        match notice {
            switcher::Report::Active(active) => {
                log::info!("active account: {}", active.name);
                let seated = self.config.live_seat().map(|_| active.name.clone());
                let _ = self
                    .dispatcher
                    .send(crate::daemon::dispatcher::Command::Seated(seated));
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
            switcher::Report::LiveSwapped {
                id,
                from,
                to,
                at_ms,
            } => {
                // Every running session is to show `to` by its next request.
                let mut pending = 0;
                for r in self.book.values_mut() {
                    if matches!(r.state, State::Dead | State::Failed | State::Backoff) {
                        continue;
                    }
                    r.verify = Some(session::Verify {
                        swap_id: id.clone(),
                        from: r.account.clone().unwrap_or_else(|| from.clone()),
                        to: to.clone(),
                        since_ms: at_ms,
                        active_ms: None,
                    });
                    pending += 1;
                }
                log::info!(
                    "swap {id}: the seat holds {to}; {pending} running session(s) to show it by their next request"
                );
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
            switcher::Report::Held(pools) => {
                for (pool, why) in &pools {
                    if self.held_pools.get(pool) != Some(why) {
                        self.notify.send(crate::daemon::notifier::Note::new(
                            crate::daemon::notifier::Kind::PoolHeld,
                            format!("pool {pool} holds its tasks: {why}"),
                            serde_json::json!({"pool": pool, "why": why}),
                        ));
                    }
                }
                self.held_pools = pools.clone();
                let _ = self
                    .dispatcher
                    .send(crate::daemon::dispatcher::Command::Held(pools));
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

    pub(super) fn on_dispatch(&mut self, out: crate::daemon::dispatcher::Report) {
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
            Asked::Counts(c) => {
                for (project, counts) in &c {
                    if self.queues.get(project) != Some(counts) {
                        self.feed.publish(
                            crate::daemon::event_stream::Kind::Queue,
                            serde_json::json!({"project": project, "counts": counts}),
                        );
                    }
                }
                self.queues = c;
            }
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
                self.feed.publish(
                    crate::daemon::event_stream::Kind::TaskFailed,
                    serde_json::json!({"project": project, "task": task, "reason": reason}),
                );
                self.notify.send(crate::daemon::notifier::Note::new(
                    crate::daemon::notifier::Kind::TaskFailed,
                    format!("task {project}/{task} failed: {reason}"),
                    serde_json::json!({"project": project, "task": task, "reason": reason}),
                ));
            }
        }
    }
}
