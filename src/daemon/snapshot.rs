//! What the main loop writes after every turn: `sessions.json` (only what
//! cannot be observed) and the status snapshot HTTP serves.

use super::*;

impl Daemon {
    pub(super) fn persist(&mut self) {
        let file = SessionsFile {
            sessions: self.book.clone(),
        };
        let Ok(text) = serde_json::to_string_pretty(&file) else {
            return;
        };
        if text == self.persisted {
            return;
        }
        let path = self.config.state_dir.join("sessions.json");
        match atomic_file::write(&path, text.as_bytes()) {
            Ok(()) => self.persisted = text,
            Err(e) => log::error!("cannot write {}: {e}", path.display()),
        }
    }

    pub(super) fn publish(&self) {
        let mut health = Vec::new();
        for (name, silent_ms) in &self.hooks_silent {
            health.push(format!(
                "{name}: hooks silent for {}s while its transcript shows work (removed, disabled, or a limit that fires none)",
                silent_ms / 1000
            ));
        }
        if let Some(e) = &self.observe_error {
            health.push(format!("tmux unreachable: {e}"));
        }
        health.extend(
            self.shared_problems
                .iter()
                .map(|p| format!("shared folders: {p}")),
        );
        let managed: HashSet<&str> = self.book.keys().map(String::as_str).collect();
        let unmanaged = self
            .observed
            .iter()
            .flatten()
            .filter(|s| {
                !managed.contains(s.name.as_str())
                    && session::pool_of(&self.config, &s.name).is_none()
            })
            .map(|s| s.name.clone())
            .collect();
        let view = self.view.read().clone();
        if let Some(p) = &view.partial_swap {
            health.push(format!("partial swap: {p}"));
        }
        if let Some(why) = &view.dispatch_paused {
            health.push(format!("every account exhausted: {why}"));
        }
        let accounts = self
            .config
            .accounts
            .iter()
            .map(|a| {
                let auth = match Credentials::read(&a.home) {
                    Ok(c) if c.expired(SystemTime::now()) && c.has_refresh_token => {
                        "ok (access token expired; Claude Code renews it at launch)".to_string()
                    }
                    Ok(c) if c.expired(SystemTime::now()) => "expired".to_string(),
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("unusable: {e}"),
                };
                let v = view.accounts.iter().find(|v| v.name == a.name);
                let mut status = AccountStatus {
                    name: a.name.clone(),
                    home: a.home.to_string_lossy().into_owned(),
                    auth,
                    ..AccountStatus::default()
                };
                status.read_from(v);
                status
            })
            .collect();
        let sessions = self
            .book
            .iter()
            .map(|(name, r)| SessionStatus {
                name: name.clone(),
                pool: r.pool.clone(),
                state: r.state.as_str().to_string(),
                account: r.account.clone(),
                claude_session_id: r.claude_session_id.clone(),
                task: r.task.clone(),
                cwd: r.cwd.to_string_lossy().into_owned(),
                since: crate::sys::time::rfc3339(UNIX_EPOCH + Duration::from_millis(r.since_ms)),
                restarts: r.restarts,
                last_error: r.last_error.clone(),
                pane_pid: r.pane_pid,
                hooks_silent: self.hooks_silent.contains_key(name),
                account_confirmed_at: r
                    .account_confirmed_ms
                    .map(|t| crate::sys::time::rfc3339(UNIX_EPOCH + Duration::from_millis(t))),
            })
            .collect();
        status::publish(
            &self.published,
            Status {
                version: env!("CARGO_PKG_VERSION").to_string(),
                active_account: self.active.as_ref().map(|a| a.name.clone()),
                partial_swap: view.partial_swap.is_some(),
                swap_in_progress: view.swap_in_progress.is_some(),
                last_swap: view
                    .last_swap
                    .as_ref()
                    .and_then(|l| serde_json::to_value(l).ok()),
                accounts,
                sessions,
                unmanaged_sessions: unmanaged,
                config_error: self.config_error.clone(),
                held_pools: view.held_pools.clone(),
                health_problems: health,
                queues: self.queues.clone(),
                // Filled by HTTP from the switcher's view and the event stream.
                swap_history: Vec::new(),
                recent: serde_json::Value::Null,
                fleet: None,
            },
        );
    }
}
