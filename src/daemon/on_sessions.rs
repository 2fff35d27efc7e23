//! The main loop's work on the session watcher's reports: the book of
//! sessions follows what tmux shows, `decide::session::reconcile` says what to
//! launch or collect, and each launch is prepared here (account, folder,
//! resume, `claude.env`).

use super::*;

impl Daemon {
    pub(super) fn on_report(&mut self, report: session_watcher::Report) {
        let now = now_ms();
        let backoff = self.config.lifecycle.restart_backoff.clone();
        match report {
            session_watcher::Report::Observed(Err(e)) => {
                if self.observe_error.is_none() {
                    log::error!("tmux is unreachable: {e}");
                }
                self.observe_error = Some(e);
            }
            session_watcher::Report::Observed(Ok(list)) => {
                if self.observe_error.take().is_some() {
                    log::info!("tmux answers again");
                }
                for name in session::adopt(&mut self.book, &self.config, &list, now) {
                    log::info!("{name}: adopted (already running, no record of it)");
                }
                let running_under: Vec<(String, String)> = list
                    .iter()
                    .filter_map(|s| {
                        let account = self.account_of_home(s.config_dir.as_deref()?)?;
                        Some((s.name.clone(), account))
                    })
                    .collect();
                self.follow_accounts(&running_under, "its process");
                if self.sessions_held.is_none() {
                    self.vanished(&list, now, &backoff);
                }
                self.observed = Some(list);
                if self.sessions_held.is_none() {
                    self.reconcile(now);
                }
            }
            session_watcher::Report::Launched {
                name,
                pool,
                account,
                cwd,
                pane_pid,
                resumed,
                not_resumable,
                relaunch,
            } => {
                self.in_flight.remove(&name);
                match (&resumed, &not_resumable) {
                    (Some(id), _) => log::info!("{name}: launched under {account}, resuming {id}"),
                    (None, Some(id)) => log::warn!("{name}: launched under {account} as a new conversation: {id} holds no message to resume"),
                    (None, None) => log::info!("{name}: launched under {account}"),
                }
                let launched = session::Launched {
                    pool: &pool,
                    name: &name,
                    cwd,
                    account: &account,
                    pane_pid,
                    relaunch,
                };
                session::on_launched(&mut self.book, launched, now);
                if switcher::failpoint_set(&format!("launched-under:{account}")) {
                    // Test-only: a kill -9 after a relaunch under `account`
                    // and before it is persisted (mid-swap, say).
                    log::error!("fail point launched-under:{account} reached: aborting");
                    std::process::abort();
                }
            }
            session_watcher::Report::Died { name, last_output } => {
                self.in_flight.remove(&name);
                session::on_died(&mut self.book, &name, last_output, &backoff, now);
                self.report_failed_start(&name, now);
            }
            session_watcher::Report::Killed { name, error } => {
                self.in_flight.remove(&name);
                if self
                    .book
                    .get(&name)
                    .is_some_and(|r| r.state == State::Stopping)
                    && error.is_none()
                {
                    log::info!("{name}: stopped (pool shrinks)");
                    self.book.remove(&name);
                    return;
                }
                match error {
                    Some(e) => {
                        log::error!("{name}: could not be stopped for its relaunch: {e}");
                        session::on_kill_failed(&mut self.book, &name);
                    }
                    None => {
                        session::on_killed(&mut self.book, &name, now);
                        log::info!("{name}: stopped; it is relaunched (after its back-off, if it failed to start)")
                    }
                }
            }
            // Logged where it happened; the dispatcher's deadlines (one more
            // Enter, then the attempt) deal with a prompt that never arrived.
            session_watcher::Report::NotTyped { .. } => {}
            session_watcher::Report::Stuck {
                name,
                screen,
                shows,
            } => match session::stuck_verdict(&self.book, &name, shows) {
                session::Stuck::StartedMeanwhile => {
                    self.in_flight.remove(&name);
                    log::info!("{name}: its SessionStart came meanwhile; left running");
                }
                session::Stuck::Gone => {
                    self.in_flight.remove(&name);
                }
                session::Stuck::Relaunch => {
                    let timeout = self.config.claude.startup_timeout;
                    let why = if shows == session::StuckScreen::Blank {
                        // Hung before it drew anything (a network wait, a
                        // machine too loaded to start it in time): once.
                        format!(
                            "nothing on its screen and no SessionStart within {timeout:?}; to be relaunched once, after its back-off"
                        )
                    } else {
                        // Its SessionStart never reached us (lost on its
                        // way under load; or our hooks are gone from its
                        // settings).
                        format!(
                            "up at its prompt, but no SessionStart came within {timeout:?} (are our hooks in its settings?); to be relaunched after its back-off. Its screen: {screen}"
                        )
                    };
                    session::on_died(&mut self.book, &name, why, &backoff, now);
                    self.report_failed_start(&name, now);
                    // Still in flight until the kill's report.
                    let _ = self
                        .watcher
                        .send(session_watcher::Command::Execute(vec![Job::Kill { name }]));
                }
                session::Stuck::LeaveAlone => {
                    self.in_flight.remove(&name);
                    log::error!(
                        "{name}: no SessionStart within {:?}; left alone, its screen: {screen}",
                        self.config.claude.startup_timeout
                    );
                    self.notify.send(crate::daemon::notifier::Note::new(
                        crate::daemon::notifier::Kind::SessionFailedToStart,
                        format!(
                            "{name} is stuck before start-up (left alone, not typed into): {screen}"
                        ),
                        serde_json::json!({"session": name, "last_output": screen}),
                    ));
                    session::on_stuck(&mut self.book, &name, screen, now);
                }
            },
        }
    }

    /// Logs (and for one that gave up, notifies) a failed start or a
    /// program that ended, by the state `session::on_died` left `name` in.
    fn report_failed_start(&mut self, name: &str, now: u64) {
        if let Some(r) = self.book.get(name) {
            match r.state {
                State::Failed => {
                    log::error!(
                        "{name}: failed to start {} times in a row; retried every {}s: {}",
                        r.failed_starts,
                        r.retry_at_ms.unwrap_or(now).saturating_sub(now) / 1000,
                        r.last_error.as_deref().unwrap_or("")
                    );
                    self.notify.send(crate::daemon::notifier::Note::new(
                        crate::daemon::notifier::Kind::SessionFailedToStart,
                        format!("{name} failed to start: {}", r.last_error.as_deref().unwrap_or("")),
                        serde_json::json!({"session": name, "last_output": r.last_error, "attempts": r.failed_starts}),
                    ));
                }
                State::Backoff => log::warn!(
                    "{name}: failed to start ({} in a row), {}; retry in {}s: {}",
                    r.failed_starts,
                    r.state.as_str(),
                    r.retry_at_ms.unwrap_or(now).saturating_sub(now) / 1000,
                    r.last_error.as_deref().unwrap_or("")
                ),
                _ => log::warn!(
                    "{name}: its program ended: {}",
                    r.last_error.as_deref().unwrap_or("")
                ),
            }
        }
    }

    /// A session launched but gone from tmux before `SessionStart` exited so
    /// fast that even its pane was not kept: that is a failed start too.
    pub(super) fn vanished(&mut self, list: &[SessionInfo], now: u64, backoff: &[Duration]) {
        let present: HashSet<&str> = list.iter().map(|s| s.name.as_str()).collect();
        let gone: Vec<String> = self
            .book
            .iter()
            .filter(|(n, r)| {
                r.state == State::Starting
                    && !present.contains(n.as_str())
                    && !self.in_flight.contains(*n)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            session::on_died(
                &mut self.book,
                &name,
                "the session ended before Claude Code started (no screen kept)".into(),
                backoff,
                now,
            );
        }
    }

    pub(super) fn reconcile(&mut self, now: u64) {
        let (Some(observed), Some(active)) = (&self.observed, &self.active) else {
            return;
        };
        let actions = session::reconcile(
            &self.config,
            &self.book,
            observed,
            &self.in_flight,
            &active.name,
            now,
        );
        if actions.is_empty() {
            return;
        }
        let active = active.clone();
        let active = &active;
        let mut jobs = Vec::new();
        for action in actions {
            if let Action::Revive { name } = &action {
                log::warn!("{name}: alive though recorded dead (a stop that did not happen, or a crash after its relaunch); taken as it runs");
                if let Some(r) = self.book.get_mut(name) {
                    r.set_state(State::Idle, now);
                }
                continue;
            }
            self.in_flight.insert(action.name().to_string());
            jobs.push(match action {
                Action::Launch { name, cwd, resume } => {
                    let job = self.launch_job(&name, cwd.clone(), resume, active);
                    // On record before the first launch: one that tmux
                    // refuses is then a failed start that backs off and is
                    // reported, not a silent loop.
                    if !self.book.contains_key(&name) {
                        let pool = session::pool_of(&self.config, &name)
                            .map(|p| p.name.clone())
                            .unwrap_or_default();
                        session::on_first_launch(
                            &mut self.book,
                            &name,
                            &pool,
                            cwd,
                            &active.name,
                            now,
                        );
                    }
                    job
                }
                Action::Replace {
                    name,
                    running_under,
                } => {
                    log::warn!(
                        "{name}: runs under {running_under} while {} is active and no swap is under way; relaunching it under {}",
                        active.name,
                        active.name
                    );
                    if let Some(r) = self.book.get_mut(&name) {
                        r.failed_starts = 0;
                        r.retry_at_ms = None;
                        r.set_state(State::Dead, now);
                    }
                    Job::Kill { name }
                }
                Action::CollectDead { name, exit_status } => Job::CollectDead { name, exit_status },
                Action::Revive { .. } => continue,
                Action::ReportStuck { name } => Job::ReportStuck { name },
            });
        }
        let _ = self.watcher.send(session_watcher::Command::Execute(jobs));
    }

    /// The configured account whose home is `dir` (a process's `CLAUDE_CONFIG_DIR`).
    pub(super) fn account_of_home(&self, dir: &Path) -> Option<String> {
        self.config.account_by_home(dir).map(|a| a.name.clone())
    }

    /// Corrects records by what was observed (`how`): a session's account
    /// is the one its process runs under, whatever was recorded.
    pub(super) fn follow_accounts(&mut self, running_under: &[(String, String)], how: &str) {
        for (name, was, is) in
            session::follow_accounts(&mut self.book, running_under, &self.in_flight)
        {
            match was {
                Some(was) => log::warn!(
                    "{name}: recorded on {was}, but {how} runs under {is}: the record now says {is}"
                ),
                None => log::info!("{name}: {how} runs under {is}"),
            }
        }
    }

    /// The exact launch of SPEC.md "Sessions".
    pub(super) fn launch_job(
        &self,
        name: &str,
        cwd: PathBuf,
        resume: Option<String>,
        active: &Active,
    ) -> Job {
        let pool_config = session::pool_of(&self.config, name);
        let pool = pool_config.map(|p| p.name.clone()).unwrap_or_default();
        let env = vec![
            (
                facts::ENV_CONFIG_DIR.to_string(),
                active.home.to_string_lossy().into_owned(),
            ),
            (facts::ENV_SESSION.to_string(), name.to_string()),
            (
                facts::ENV_STATE_DIR.to_string(),
                self.config.state_dir.to_string_lossy().into_owned(),
            ),
        ];
        let mut argv = vec![self.claude_binary.to_string_lossy().into_owned()];
        argv.extend(self.config.launch_args(pool_config));
        // The operator's `claude.env` may hold secrets: never on a command
        // line (tmux's `-e` would show them in `ps` to every user). They go
        // into a 0600 file the pane's shell reads before it becomes Claude
        // Code (`exec`, same pid).
        if !self.config.claude.env.is_empty() {
            match write_env_file(&self.config.state_dir, name, &self.config.claude.env) {
                Ok(file) => {
                    let mut wrapped = vec![
                        "/bin/sh".to_string(),
                        "-c".to_string(),
                        ENV_FILE_SCRIPT.to_string(),
                        file.to_string_lossy().into_owned(),
                    ];
                    wrapped.append(&mut argv);
                    argv = wrapped;
                }
                Err(e) => {
                    // Never without claude.env (it may point Claude Code at a
                    // proxy): the start fails, and says why on its screen.
                    log::error!("{name}: cannot write its claude.env file: {e}");
                    argv = vec![
                        "/bin/sh".to_string(),
                        "-c".to_string(),
                        "echo \"claude-failover: cannot write the claude.env file: $0\" >&2; exit 1"
                            .to_string(),
                        e.to_string(),
                    ];
                }
            }
        } else {
            // No claude.env (any more): no file of old values left behind.
            let _ = std::fs::remove_file(
                self.config
                    .state_dir
                    .join("env")
                    .join(format!("{name}.env")),
            );
        }
        let resume = resume.map(|id| {
            let transcript = facts::transcript_path(&active.home, &cwd, &id);
            (id, transcript)
        });
        Job::Launch {
            launch: Launch {
                name: name.to_string(),
                cwd,
                width: self.config.tmux.width,
                height: self.config.tmux.height,
                env,
                argv,
            },
            resume,
            relaunch: self.book.contains_key(name),
            pool,
            account: active.name.clone(),
        }
    }

    /// `POST /sessions/NAME/restart`: kill it; reconcile relaunches it resumed.
    pub(super) fn restart(&mut self, name: &str) -> Result<(), String> {
        if session::pool_of(&self.config, name).is_none() {
            return Err(format!("{name} is not a managed session"));
        }
        if let Some(r) = self.book.get_mut(name) {
            // An operator's restart clears the back-off: they fixed something.
            r.failed_starts = 0;
            r.retry_at_ms = None;
            r.set_state(State::Dead, now_ms());
        }
        self.in_flight.insert(name.to_string());
        let _ = self
            .watcher
            .send(session_watcher::Command::Execute(vec![Job::Kill {
                name: name.to_string(),
            }]));
        Ok(())
    }
}

/// Reads the `claude.env` file named by `$0`, then becomes the program in
/// `"$@"` (Claude Code, with its arguments).
const ENV_FILE_SCRIPT: &str = "set -a; . \"$0\"; set +a; exec \"$@\"";

/// Writes `<state_dir>/env/<session>.env` (0600): one `NAME='value'` line
/// per variable, quoted for the shell. Names are checked by the config.
pub(super) fn write_env_file(
    state_dir: &Path,
    session: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = state_dir.join("env");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let mut text = String::new();
    for (k, v) in env {
        text.push_str(&format!("{k}='{}'\n", v.replace('\'', "'\\''")));
    }
    let path = dir.join(format!("{session}.env"));
    crate::store::atomic_file::write_with_mode(&path, text.as_bytes(), 0o600)?;
    Ok(path)
}
