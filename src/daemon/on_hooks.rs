//! The main loop's work on hook events: which replayed files are believed,
//! which events belong to a session's current conversation, and the quota
//! signals they carry for the switcher.

use super::*;

impl Daemon {
    /// A batch of hook and status-line events: each moves its session's
    /// state and passes its quota signal on; all go to the dispatcher after
    /// the turn (once `sessions.json` is written).
    pub(super) fn on_hooks(&mut self, batch: Batch) {
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
            let credit = self.live_credit(&ev);
            self.forward_quota_signal(&ev, credit);
            let name = ev.session.clone().unwrap_or_default();
            let was = self.book.get(&name).map(|r| r.state);
            if session::apply_hook(&mut self.book, &ev) {
                log::debug!("{name}: {hook}");
            }
            if was != Some(State::Waiting)
                && self.book.get(&name).map(|r| r.state) == Some(State::Waiting)
            {
                // Once per prompt: it stays `waiting` until the turn ends.
                log::warn!("{name}: Claude Code asks a person for a permission; nothing is typed into it while it waits");
                self.notify.send(crate::daemon::notifier::Note::new(
                    crate::daemon::notifier::Kind::SessionWaiting,
                    format!("{name} waits for a person: Claude Code asks a permission (nothing is typed into it)"),
                    serde_json::json!({"session": name}),
                ));
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

    /// Whether an event file left from before this start (a crash, or hooks
    /// that ran while no daemon did) agrees with the session book: it names
    /// a session we manage, the account home that session's record says, and
    /// that session's conversation. Such a file proves nothing about who
    /// wrote it, so it is applied only where it agrees; readings from
    /// before the start are stale anyway.
    pub(super) fn replay_credible(
        &self,
        ev: &mut crate::claude::hook::RecordedEvent,
    ) -> Result<(), String> {
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
    pub(super) fn of_its_conversation(
        &self,
        ev: &crate::claude::hook::RecordedEvent,
    ) -> Result<(), String> {
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
    pub(super) fn forward_quota_signal(
        &self,
        ev: &crate::claude::hook::RecordedEvent,
        credit: Option<PathBuf>,
    ) {
        let Some(home) = credit.or_else(|| ev.config_dir.as_ref().map(PathBuf::from)) else {
            return;
        };
        if ev.hook.event == HookEvent::Statusline {
            if let Some((five_hour, seven_day)) = crate::decide::quota::from_statusline(&ev.payload)
            {
                let _ = self.switcher.send(switcher::Command::Reading {
                    home,
                    five_hour,
                    seven_day,
                    limits: None,
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
                let model = ev
                    .session
                    .as_deref()
                    .and_then(|n| crate::decide::session::pool_of(&self.config, n))
                    .and_then(|p| self.config.pool_model(p));
                let _ = self.switcher.send(switcher::Command::Refusal {
                    home,
                    kind,
                    message,
                    source: crate::decide::quota::Source::StopFailure,
                    model,
                });
            }
        }
    }

    /// Live mode: every session shares the seat, so a quota signal is
    /// credited by its session: to the account the session was last shown
    /// on, or, after a swap, to the target once its own reading carries the
    /// target's windows (which confirms it). A sign of a request after the
    /// swap starts its verify timeout. A session running outside the seat
    /// under an account's home (launched by hand, or left from restart mode)
    /// is verified the same way: its readings carry that account's windows,
    /// so it is never confirmed and is restarted under the seat. Returns the
    /// home to credit (`None`: not live, or neither the seat nor a home).
    pub(super) fn live_credit(
        &mut self,
        ev: &crate::claude::hook::RecordedEvent,
    ) -> Option<PathBuf> {
        let seat = self.config.live_seat()?.to_path_buf();
        let dir = Path::new(ev.config_dir.as_deref()?);
        if dir != seat && self.config.account_by_home(dir).is_none() {
            return None;
        }
        let name = ev.session.as_deref()?;
        let now = now_ms();
        let windows = |account: &str| -> Option<session::Fingerprint> {
            let view = self.view.read();
            let q = &view.accounts.iter().find(|a| a.name == account)?.quota;
            Some((
                q.five_hour.and_then(|w| w.resets_at),
                q.seven_day.and_then(|w| w.resets_at),
            ))
        };
        let pending = self.book.get(name)?.verify.clone();
        let outside = dir != seat;
        if outside && pending.is_none() {
            // Nothing to verify: its readings are its home's.
            return self.config.account_by_home(dir).map(|a| a.home.clone());
        }
        let (from_w, to_w) = match &pending {
            Some(v) => (windows(&v.from), windows(&v.to)),
            None => (None, None),
        };
        let r = self.book.get_mut(name)?;
        let account = match &ev.hook.event {
            HookEvent::Statusline => {
                let reading = crate::decide::quota::from_statusline(&ev.payload)?;
                let fp = (
                    reading.0.and_then(|w| w.resets_at),
                    reading.1.and_then(|w| w.resets_at),
                );
                let credited = session::live_reading(r, fp, from_w, to_w, now)?;
                if let Some(v) = pending.filter(|_| r.verify.is_none()) {
                    log::info!("{name}: confirmed on {} after swap {}", v.to, v.swap_id);
                }
                credited
            }
            event => {
                let request_sign = matches!(
                    event,
                    HookEvent::UserPromptSubmit { .. }
                        | HookEvent::PostToolUse { .. }
                        | HookEvent::Stop { .. }
                        | HookEvent::StopFailure { .. }
                );
                if let Some(v) = r.verify.as_mut() {
                    if request_sign && v.active_ms.is_none() && ev.recorded_at_ms >= v.since_ms {
                        v.active_ms = Some(ev.recorded_at_ms);
                    }
                }
                r.account.clone()?
            }
        };
        self.config.account(&account).map(|a| a.home.clone())
    }

    /// Live mode, every tick: a session whose verify timeout ran out (its
    /// next request after a swap still showed the outgoing account) is
    /// restarted under the seat, and the swap's result names it.
    pub(super) fn restart_unconfirmed(&mut self) {
        if self.config.live_seat().is_none() {
            return;
        }
        for (name, v) in session::unconfirmed(&self.book, self.config.swap.verify_timeout, now_ms())
        {
            log::error!(
                "{name}: still on {} {:?} after its first request since swap {} (to {}): restarting it under the seat",
                v.from,
                self.config.swap.verify_timeout,
                v.swap_id,
                v.to
            );
            if let Some(r) = self.book.get_mut(&name) {
                r.verify = None;
                r.account = Some(v.to.clone());
                r.last_error = Some(format!(
                    "did not follow swap {} to {}: restarted under the seat",
                    v.swap_id, v.to
                ));
            }
            let _ = self.restart(&name);
            let _ = self.switcher.send(switcher::Command::Restarted {
                swap_id: v.swap_id.clone(),
                session: name.clone(),
            });
        }
    }

    /// The silent-hook canary, every tick: a session whose transcript shows
    /// work long after its last hook is reported (status, `/healthz`, one
    /// notification) until a hook is heard again.
    pub(super) fn check_hooks_heard(&mut self) {
        let now = now_ms();
        let after = self.config.lifecycle.hooks_silent_after.as_millis() as u64;
        let mut silent = std::collections::BTreeMap::new();
        let mut seen = std::collections::BTreeMap::new();
        for (name, r) in &self.book {
            let changed = self
                .config
                .transcript_of(r.account.as_deref(), &r.cwd, r.claude_session_id.as_deref())
                .and_then(|p| std::fs::metadata(p).ok()?.modified().ok())
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64);
            let Some(for_ms) = session::hooks_silent(r, changed, now, after) else {
                continue;
            };
            let changed = changed.unwrap_or(0);
            // Reported once the transcript changed again since the last look
            // (one slow answer or tool call is not silence), and until a
            // hook is heard.
            let again = self
                .hooks_silent_seen
                .get(name)
                .is_some_and(|&before| changed > before);
            if again || self.hooks_silent.contains_key(name) {
                silent.insert(name.clone(), for_ms);
            }
            seen.insert(
                name.clone(),
                self.hooks_silent_seen.get(name).copied().unwrap_or(changed),
            );
        }
        self.hooks_silent_seen = seen;
        for (name, for_ms) in &silent {
            if !self.hooks_silent.contains_key(name) {
                let why = format!(
                    "{name}: no hook for {}s while its transcript shows work; its hooks are removed, disabled or silenced (a limit that fires none looks healthy otherwise; after an upgrade, `claude-failover setup` installs the PostToolUse hook)",
                    for_ms / 1000
                );
                log::error!("{why}");
                self.notify.send(crate::daemon::notifier::Note::new(
                    crate::daemon::notifier::Kind::HooksSilent,
                    why,
                    serde_json::json!({"session": name}),
                ));
            }
        }
        for name in self.hooks_silent.keys() {
            if !silent.contains_key(name) {
                log::info!("{name}: its hooks are heard again");
            }
        }
        self.hooks_silent = silent;
    }
}
