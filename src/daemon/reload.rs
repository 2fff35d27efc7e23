//! SIGHUP and `POST /reload`: a new config is built aside and swapped in
//! only when valid; and the periodic check of the shared folders.

use super::*;

impl Daemon {
    /// Re-validates the shared folders: a divergence is reported (log,
    /// `/healthz`), never healed behind the operator's back.
    pub(super) fn check_shared_folders(&mut self) {
        let problems: Vec<String> = crate::claude::shared_folders::verify(&self.config)
            .iter()
            .map(|p| p.to_string())
            .collect();
        for p in problems
            .iter()
            .filter(|p| !self.shared_problems.contains(p))
        {
            log::error!("shared folders diverged: {p}");
            self.notify.send(crate::daemon::notifier::Note::new(
                crate::daemon::notifier::Kind::SharedFoldersDiverged,
                format!("shared folders diverged: {p}"),
                serde_json::json!({"problem": p}),
            ));
        }
        if problems.is_empty() && !self.shared_problems.is_empty() {
            log::info!("shared folders are consistent again");
        }
        self.shared_problems = problems;
    }

    /// SIGHUP: build the new config aside; refuse a bad one (and say so).
    pub(super) fn reload(&mut self) {
        self.sd.reloading();
        self.reload_config();
        if let Some(e) = &self.config_error {
            self.notify.send(crate::daemon::notifier::Note::new(
                crate::daemon::notifier::Kind::ReloadRefused,
                format!("config reload refused, the running config stays: {e}"),
                serde_json::json!({"error": e}),
            ));
        } else {
            self.notify.reconfigure(self.config.notify.clone());
        }
        self.sd.notify("READY=1");
    }

    pub(super) fn reload_config(&mut self) {
        self.apply_reload();
        self.feed.publish(
            crate::daemon::event_stream::Kind::ConfigReloaded,
            serde_json::json!({"ok": self.config_error.is_none(), "error": self.config_error}),
        );
    }

    fn apply_reload(&mut self) {
        match Config::load(&self.config_path) {
            Err(e) => {
                log::error!("reload refused, the running config stays: {e}");
                self.config_error = Some(e.to_string());
            }
            Ok(next)
                if next.state_dir != self.config.state_dir
                    || next.tmux.socket != self.config.tmux.socket
                    || next.http != self.config.http
                    || next.claude.binary != self.config.claude.binary
                    || next.fleet != self.config.fleet =>
            {
                let e = "state_dir, tmux.socket, http.*, claude.binary and fleet.* cannot change on reload; restart the daemon for those".to_string();
                log::error!("reload refused, the running config stays: {e}");
                self.config_error = Some(e);
            }
            Ok(next) if !crate::claude::shared_folders::verify(&next).is_empty() => {
                let e = format!(
                    "shared folders: {}",
                    crate::claude::shared_folders::verify(&next)[0]
                );
                log::error!("reload refused, the running config stays: {e}");
                self.config_error = Some(e);
            }
            Ok(next) => {
                log::info!("config reloaded from {}", self.config_path.display());
                self.config_error = None;
                let _ = self
                    .switcher
                    .send(switcher::Command::Reconfigure(Box::new(next.clone())));
                let _ = self
                    .dispatcher
                    .send(crate::daemon::dispatcher::Command::Reconfigure(Box::new(
                        next.clone(),
                    )));
                // Sessions no longer in any pool's range are not ours to drive
                // any more: forget them (they stay running, listed as unmanaged).
                self.book
                    .retain(|n, _| session::pool_of(&next, n).is_some());
                crate::sys::logging::configure(&next);
                self.config = next;
                let _ = self.watcher.send(session_watcher::Command::Observe);
            }
        }
    }
}
