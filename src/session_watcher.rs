//! The session watcher: the one thread that talks to tmux for the session
//! pools. It observes (one `list-sessions` per turn) and carries out the
//! actions the main loop decided, each tmux call with a deadline, and
//! reports back. The main loop never blocks on tmux.

use std::path::PathBuf;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::claude_facts as facts;
use crate::tmux::{Launch, SessionInfo, Tmux};

/// What the main loop asks of the watcher.
#[derive(Debug)]
pub enum Request {
    /// List the sessions now.
    Observe,
    /// Carry these out in order, then observe.
    Execute(Vec<Job>),
}

/// One action against tmux, fully specified by the main loop.
#[derive(Debug, Clone)]
pub enum Job {
    /// Start a session. `resume` = (conversation id, its transcript file):
    /// `--resume` is added only when the transcript holds a message, because
    /// a conversation that never got one (no file yet, or metadata lines
    /// alone at its first request) has nothing to resume and
    /// `claude --resume` would exit at once (claude-code-facts §6).
    Launch {
        launch: Launch,
        resume: Option<(String, PathBuf)>,
        relaunch: bool,
        pool: String,
        account: String,
    },
    /// Read the dead pane's last screen, then remove the session.
    CollectDead {
        name: String,
        exit_status: Option<i32>,
    },
    /// Read the screen of a session stuck before `SessionStart`; touch nothing.
    ReportStuck { name: String },
    /// Remove the session (an operator's restart); reconcile relaunches it.
    Kill { name: String },
}

/// What the watcher reports.
#[derive(Debug, Clone)]
pub enum Report {
    Observed(Result<Vec<SessionInfo>, String>),
    Launched {
        name: String,
        pool: String,
        account: String,
        cwd: PathBuf,
        pane_pid: Option<u32>,
        resumed: Option<String>,
        /// A conversation that was asked for but had nothing to resume:
        /// the session started fresh instead.
        not_resumable: Option<String>,
        relaunch: bool,
    },
    /// A launch that tmux refused, or a pane whose program ended.
    Died {
        name: String,
        last_output: String,
    },
    Stuck {
        name: String,
        screen: String,
    },
    Killed {
        name: String,
        error: Option<String>,
    },
}

/// How much of a dead or stuck screen is kept: the last lines that say something.
const SCREEN_LINES: usize = 12;

/// The watcher's handle. Dropping `requests` ends the thread.
pub struct SessionWatcher {
    pub requests: Sender<Request>,
    pub thread: JoinHandle<()>,
}

impl SessionWatcher {
    pub fn start(tmux: Tmux, reports: Sender<Report>) -> SessionWatcher {
        let (requests, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("session-watcher".into())
            .spawn(move || serve(tmux, rx, reports))
            .expect("spawn session-watcher thread");
        SessionWatcher { requests, thread }
    }
}

fn serve(tmux: Tmux, requests: Receiver<Request>, reports: Sender<Report>) {
    while let Ok(first) = requests.recv() {
        // Coalesce: ten Observe requests queued behind a slow call are one.
        let mut batch = vec![first];
        batch.extend(requests.try_iter());
        for req in batch
            .into_iter()
            .filter(|r| matches!(r, Request::Execute(_)))
        {
            if let Request::Execute(jobs) = req {
                for job in jobs {
                    let report = execute(&tmux, job);
                    if reports.send(report).is_err() {
                        return;
                    }
                }
            }
        }
        let observed = tmux
            .list_sessions()
            .map(with_config_dirs)
            .map_err(|e| e.to_string());
        if reports.send(Report::Observed(observed)).is_err() {
            return;
        }
    }
}

fn execute(tmux: &Tmux, job: Job) -> Report {
    match job {
        Job::Launch {
            mut launch,
            resume,
            relaunch,
            pool,
            account,
        } => {
            let name = launch.name.clone();
            // A dead pane kept by remain-on-exit still holds the name.
            if let Ok(true) = tmux.has_session(&name) {
                let _ = tmux.kill_session(&name);
            }
            let (resumed, not_resumable) = match resume {
                Some((id, transcript)) if facts::transcript_is_resumable(&transcript) => {
                    launch.argv.push("--resume".into());
                    launch.argv.push(id.clone());
                    (Some(id), None)
                }
                Some((id, _)) => (None, Some(id)),
                None => (None, None),
            };
            match tmux.new_session(&launch) {
                Ok(()) => {
                    let pane_pid = tmux
                        .list_sessions()
                        .ok()
                        .and_then(|all| all.into_iter().find(|s| s.name == name))
                        .and_then(|s| s.pane_pid);
                    Report::Launched {
                        name,
                        pool,
                        account,
                        cwd: launch.cwd,
                        pane_pid,
                        resumed,
                        not_resumable,
                        relaunch,
                    }
                }
                Err(e) => Report::Died {
                    name,
                    last_output: format!("tmux could not start it: {e}"),
                },
            }
        }
        Job::CollectDead { name, exit_status } => {
            let screen = tmux
                .capture_pane(&name, 200)
                .unwrap_or_else(|e| format!("(screen unreadable: {e})"));
            let _ = tmux.kill_session(&name);
            let status = exit_status
                .map(|s| format!(" (exit status {s})"))
                .unwrap_or_default();
            Report::Died {
                name,
                last_output: format!("{}{status}", last_lines(&screen)),
            }
        }
        Job::Kill { name } => {
            let error = match tmux.has_session(&name) {
                Ok(true) => tmux.kill_session(&name).err().map(|e| e.to_string()),
                Ok(false) => None,
                Err(e) => Some(e.to_string()),
            };
            Report::Killed { name, error }
        }
        Job::ReportStuck { name } => {
            let screen = tmux
                .capture_pane(&name, 0)
                .unwrap_or_else(|e| format!("(screen unreadable: {e})"));
            Report::Stuck {
                name,
                screen: last_lines(&screen),
            }
        }
    }
}

/// Fills in, for every live pane, the account home its process runs under:
/// records follow what the process shows, not what was meant at launch (a
/// daemon killed mid-swap may have relaunched it under another account).
fn with_config_dirs(mut list: Vec<SessionInfo>) -> Vec<SessionInfo> {
    for s in list.iter_mut().filter(|s| !s.pane_dead) {
        s.config_dir = s
            .pane_pid
            .and_then(|pid| process_env(pid, facts::ENV_CONFIG_DIR))
            .map(PathBuf::from);
    }
    list
}

/// One variable of a process's environment as it was started
/// (`/proc/<pid>/environ`); `None` when unset or unreadable.
pub fn process_env(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The last lines of a screen that hold text, joined into one line.
pub fn last_lines(screen: &str) -> String {
    let lines: Vec<&str> = screen
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Pane is dead"))
        .collect();
    let tail = &lines[lines.len().saturating_sub(SCREEN_LINES)..];
    if tail.is_empty() {
        "(no output)".to_string()
    } else {
        tail.join(" ⏎ ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_variable_of_a_process_environment() {
        struct Reaped(std::process::Child);
        impl Drop for Reaped {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let child = Reaped(
            std::process::Command::new("sleep")
                .arg("5")
                .env("CLAUDE_CONFIG_DIR", "/h/beta")
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id();
        // Right after the spawn the kernel may not show the new image's
        // environment yet: poll briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut got = process_env(pid, "CLAUDE_CONFIG_DIR");
        while got.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            got = process_env(pid, "CLAUDE_CONFIG_DIR");
        }
        assert_eq!(got.as_deref(), Some("/h/beta"));
        assert_eq!(process_env(pid, "CF_NOT_SET_ANYWHERE"), None);
        assert_eq!(process_env(u32::MAX, "CLAUDE_CONFIG_DIR"), None);
    }

    #[test]
    fn keeps_the_last_meaningful_lines() {
        let screen =
            "\n\nerror: unknown option '--bogus'\n\nPane is dead (status 1, Sat Nov 21)\n\n";
        assert_eq!(last_lines(screen), "error: unknown option '--bogus'");
        assert_eq!(last_lines("\n \n"), "(no output)");
    }
}
