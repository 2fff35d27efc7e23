//! The session watcher: the one role that writes to tmux for the session
//! pools. It observes (one `list-sessions` per turn), carries out the
//! actions the main loop decided (launch, collect, kill), types what the
//! dispatcher asks into a session and stops sessions for a swap, each tmux
//! call with a deadline, and reports back. Nobody else sends keys to, starts
//! or kills a session (`.ci/run` checks it); the main loop never blocks on
//! tmux.
//!
//! Typing runs on one worker thread per session, so a paste that waits for
//! the input prompt never holds up other sessions or the observation, and
//! two typings into one session (a `/clear` and the next prompt) never
//! interleave: a session's keystrokes arrive in the order they were asked.
//! A swap's stop runs on a thread of its own and answers when every session
//! is stopped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::claude::facts;
use crate::sys::tmux::{Launch, SessionInfo, Tmux};

/// What the main loop asks of the watcher.
#[derive(Debug)]
pub enum Command {
    /// List the sessions now.
    Observe,
    /// Carry these out in order, then observe.
    Execute(Vec<Job>),
    /// Type into a session (in order with the session's earlier keystrokes).
    Keys { session: String, keys: Keys },
    /// Stop these sessions (SIGTERM, kill after `timeout`), all at
    /// once; `done` is answered when every one is stopped (or why they
    /// could not be).
    Stop {
        names: Vec<String>,
        timeout: Duration,
        done: Sender<Result<(), String>>,
    },
}

/// Keystrokes for a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Keys {
    /// The way that works with Claude Code's TUI: wait (briefly) for the
    /// input prompt, bracketed paste, a short pause, Enter.
    Text(String),
    /// One key (`Escape`, `Enter`).
    Key(&'static str),
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
    /// No `SessionStart` within the start-up timeout: `screen` is its last
    /// lines; `shows` whether the TUI is up at its prompt (the hook was
    /// lost), drew nothing, or shows a dialog meant for a person.
    Stuck {
        name: String,
        screen: String,
        shows: crate::decide::session::StuckScreen,
    },
    Killed {
        name: String,
        error: Option<String>,
    },
    /// Keystrokes that could not be delivered.
    NotTyped {
        session: String,
        error: String,
    },
}

/// How much of a dead or stuck screen is kept: the last lines that say something.
const SCREEN_LINES: usize = 12;

/// The watcher's handle. Dropping `requests` ends the thread.
pub struct SessionWatcher {
    pub requests: Sender<Command>,
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

fn serve(tmux: Tmux, requests: Receiver<Command>, reports: Sender<Report>) {
    // One typist per session, ended when this thread returns (their
    // channels close).
    let mut typists: HashMap<String, Sender<Keys>> = HashMap::new();
    while let Ok(first) = requests.recv() {
        // Coalesce: ten Observe requests queued behind a slow call are one.
        let mut batch = vec![first];
        batch.extend(requests.try_iter());
        let mut observe = false;
        for req in batch {
            match req {
                Command::Observe => observe = true,
                Command::Execute(jobs) => {
                    observe = true;
                    if !execute_all(&tmux, jobs, &reports) {
                        return;
                    }
                }
                Command::Keys { session, keys } => {
                    let typist = typists
                        .entry(session.clone())
                        .or_insert_with(|| typist_for(&tmux, &session, &reports));
                    if let Err(crossbeam_channel::SendError(keys)) = typist.send(keys) {
                        // Its thread could not start or ended: a new one.
                        let fresh = typist_for(&tmux, &session, &reports);
                        let _ = fresh.send(keys);
                        typists.insert(session, fresh);
                    }
                }
                Command::Stop {
                    names,
                    timeout,
                    done,
                } => {
                    let tmux = tmux.clone();
                    let answer = done.clone();
                    let spawned = std::thread::Builder::new()
                        .name("session-stop".into())
                        .spawn(move || {
                            stop_all(&tmux, &names, timeout);
                            let _ = answer.send(Ok(()));
                        });
                    if let Err(e) = spawned {
                        let _ = done.send(Err(format!("cannot start a thread to stop them: {e}")));
                    }
                }
            }
        }
        if !observe {
            continue;
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

/// A worker that types into `session`, one request after the other.
fn typist_for(tmux: &Tmux, session: &str, reports: &Sender<Report>) -> Sender<Keys> {
    let (tx, rx) = crossbeam_channel::unbounded::<Keys>();
    let (tmux, session, reports) = (tmux.clone(), session.to_string(), reports.clone());
    let spawned = std::thread::Builder::new()
        .name("typist".into())
        .spawn(move || {
            for keys in rx {
                if let Err(error) = type_keys(&tmux, &session, &keys) {
                    log::warn!("{session}: cannot type into it: {error}");
                    let _ = reports.send(Report::NotTyped {
                        session: session.clone(),
                        error,
                    });
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start a typist thread: {e}");
    }
    tx
}

/// Between a paste and its Enter (claude-code-facts §7: "a short pause").
const TYPE_PAUSE: Duration = Duration::from_millis(150);
/// How long a paste waits for the input prompt: a paste right after
/// start-up can be lost.
const READY_WAIT: Duration = Duration::from_secs(5);

fn type_keys(tmux: &Tmux, session: &str, keys: &Keys) -> Result<(), String> {
    match keys {
        Keys::Key(key) => tmux.send_key(session, key).map_err(|e| e.to_string()),
        Keys::Text(text) => {
            let ready_by = Instant::now() + READY_WAIT;
            loop {
                match tmux.capture_pane(session, 0) {
                    Ok(screen) if facts::input_box_drawn(&screen) => break,
                    Ok(_) if Instant::now() >= ready_by => {
                        // Said, so that a TUI whose input box looks other than
                        // `facts` knows costs a line per paste, not a silent 5 s.
                        log::warn!(
                            "{session}: no input box on its screen after {} s; typing anyway",
                            READY_WAIT.as_secs()
                        );
                        break;
                    }
                    Ok(_) => std::thread::sleep(Duration::from_millis(100)),
                    Err(_) => break,
                }
            }
            tmux.type_text(session, text, TYPE_PAUSE)
                .map_err(|e| e.to_string())?;
            if text != "/clear" && crate::daemon::switcher::failpoint_set("dispatch-typed") {
                // Test-only: a `kill -9` between the Enter and its `UserPromptSubmit`.
                log::error!("fail point dispatch-typed reached: aborting");
                std::process::abort();
            }
            Ok(())
        }
    }
}

/// Stops these sessions, all at once: SIGTERM to each pane's program (a
/// Claude Code ends on it as on `/exit`, its `SessionEnd` hooks run:
/// [`facts::STOP_SIGNAL`]), Escape and `/exit` typed into a pane whose
/// program could not be signalled (tmux named no pid, or did not answer),
/// then kill after `timeout` whatever happened. A signalled program is
/// watched by its pid every [`STOP_PID_POLL`] (ended once it is a zombie:
/// see [`crate::sys::process::alive`]); sessions typed to by one
/// `list-sessions` for all of them every [`STOP_POLL`], never one per
/// session (twenty polled each on their own are 400 tmux clients a second,
/// which on two cores slows the very exits they wait for). A signal rather
/// than typed `/exit`: nothing to type (a paste, a pause, Enter per
/// session), and nothing a dialog or a half-typed prompt could swallow. At
/// most [`STOP_TMUX_CALLS`] tmux calls in a row beside the wait, each with
/// its own deadline.
pub const STOP_TMUX_CALLS: u32 = 5;

/// How often a stop asks tmux whether sessions it typed to have ended.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How often a stop looks whether the programs it signalled have ended.
const STOP_PID_POLL: Duration = Duration::from_millis(5);

fn stop_all(tmux: &Tmux, names: &[String], timeout: Duration) {
    let alive = |t: &Tmux| -> Option<Vec<SessionInfo>> {
        t.list_sessions().ok().map(|l| {
            l.into_iter()
                .filter(|s| !s.pane_dead && names.contains(&s.name))
                .collect()
        })
    };
    // tmux not answering: no pids to signal, so every session is typed to.
    let running = alive(tmux).unwrap_or_else(|| {
        names
            .iter()
            .map(|name| SessionInfo {
                name: name.clone(),
                ..SessionInfo::default()
            })
            .collect()
    });
    if !running.is_empty() {
        let (signalled, typed_to): (Vec<&SessionInfo>, Vec<&SessionInfo>) =
            running.iter().partition(|s| {
                s.pane_pid
                    .is_some_and(|pid| crate::sys::process::signal_group(pid, facts::STOP_SIGNAL))
            });
        in_parallel(&typed_to, |s| {
            let _ = tmux.send_key(&s.name, "Escape");
            std::thread::sleep(Duration::from_millis(50));
            let _ = tmux.type_text(&s.name, "/exit", Duration::from_millis(100));
        });
        // A Claude Code is gone 30–40 ms after SIGTERM, and tmux reaps it
        // at once: its pid is the quickest sign.
        let deadline = Instant::now() + timeout;
        let mut pids: Vec<u32> = signalled.iter().filter_map(|s| s.pane_pid).collect();
        let typed_names: Vec<&str> = typed_to.iter().map(|s| s.name.as_str()).collect();
        let mut typed = !typed_names.is_empty();
        let mut listed_at = Instant::now();
        while Instant::now() < deadline && (typed || !pids.is_empty()) {
            std::thread::sleep(STOP_PID_POLL);
            pids.retain(|&pid| crate::sys::process::alive(pid));
            if typed && listed_at.elapsed() >= STOP_POLL {
                listed_at = Instant::now();
                // tmux not answering: taken as alive (the kill follows).
                typed = alive(tmux)
                    .is_none_or(|l| l.iter().any(|s| typed_names.contains(&s.name.as_str())));
            }
        }
    }
    in_parallel(names, |name| {
        let _ = tmux.kill_session(name);
    });
}

/// Runs `f` on every item in parallel, each item once: workers take them
/// from one queue, this thread among them, so a worker that cannot start
/// leaves its share to the others and an item is never skipped; one that
/// panics loses its own item, not the rest.
fn in_parallel<T: Send>(items: impl IntoIterator<Item = T>, f: impl Fn(T) + Sync) {
    let (queue, work) = crossbeam_channel::unbounded();
    let mut count = 0;
    for item in items {
        let _ = queue.send(item);
        count += 1;
    }
    drop(queue);
    let run = |work: &crossbeam_channel::Receiver<T>| work.iter().for_each(&f);
    let run = &run;
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..count)
            .filter_map(|_| {
                let work = work.clone();
                std::thread::Builder::new()
                    .name("session-job".into())
                    .spawn_scoped(scope, move || run(&work))
                    .ok()
            })
            .collect();
        run(&work);
        for h in helpers {
            let _ = h.join();
        }
    });
}

/// Carries out a batch of jobs, each reported as it ends; `false` once
/// nobody listens. Jobs for different sessions run in parallel: a restart
/// swap relaunches every session in one batch, and one after the other
/// their tmux calls queue behind the Claude Codes already starting. Two
/// jobs for one session keep their order (the batch then runs in order).
fn execute_all(tmux: &Tmux, jobs: Vec<Job>, reports: &Sender<Report>) -> bool {
    let mut names: Vec<&str> = jobs.iter().map(Job::session).collect();
    names.sort_unstable();
    names.dedup();
    if jobs.len() < 2 || names.len() < jobs.len() {
        return jobs
            .into_iter()
            .all(|job| reports.send(execute(tmux, job)).is_ok());
    }
    let unheard = std::sync::atomic::AtomicBool::new(false);
    in_parallel(jobs, |job| {
        if reports.send(execute(tmux, job)).is_err() {
            unheard.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    !unheard.into_inner()
}

impl Job {
    /// The session the job is for.
    fn session(&self) -> &str {
        match self {
            Job::Launch { launch, .. } => &launch.name,
            Job::CollectDead { name, .. } | Job::ReportStuck { name } | Job::Kill { name } => name,
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
            // A dead pane kept by remain-on-exit still holds the name. One
            // call, not a look first: a name nobody holds is an error here
            // that changes nothing.
            let _ = tmux.kill_session(&name);
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
                Ok(pane_pid) => Report::Launched {
                    name,
                    pool,
                    account,
                    cwd: launch.cwd,
                    pane_pid,
                    resumed,
                    not_resumable,
                    relaunch,
                },
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
            use crate::decide::session::StuckScreen;
            let (screen, shows) = match tmux.capture_pane(&name, 0) {
                Ok(s) if facts::input_box_drawn(&s) => (s, StuckScreen::Prompt),
                Ok(s) if s.trim().is_empty() => ("(nothing on it)".into(), StuckScreen::Blank),
                Ok(s) => (s, StuckScreen::Other),
                // Unreadable is not a dialog we saw: leave it alone.
                Err(e) => (format!("(screen unreadable: {e})"), StuckScreen::Other),
            };
            Report::Stuck {
                name,
                shows,
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

    /// A tmux server of the test's own, killed at the end.
    struct Server(Tmux);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill_server();
        }
    }

    fn server(tag: &str) -> Server {
        Server(Tmux::new(
            Some(format!("cf-unit-{tag}-{}", std::process::id())),
            Duration::from_secs(5),
        ))
    }

    fn start(tmux: &Tmux, name: &str, script: &str) {
        tmux.new_session(&crate::sys::tmux::Launch {
            name: name.into(),
            cwd: std::env::temp_dir(),
            width: 80,
            height: 24,
            env: Vec::new(),
            argv: vec!["sh".into(), "-c".into(), script.into()],
        })
        .expect("tmux starts it");
    }

    fn running(tmux: &Tmux) -> Vec<String> {
        let mut names: Vec<String> = tmux
            .list_sessions()
            .expect("tmux answers")
            .into_iter()
            .filter(|s| !s.pane_dead)
            .map(|s| s.name)
            .collect();
        names.sort();
        names
    }

    /// A tmux server stopped (SIGSTOP) until dropped: woken even when the
    /// test fails, so that its own `Server` can kill it.
    struct Stopped(String);
    impl Drop for Stopped {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &self.0])
                .status();
        }
    }

    /// Here rather than in `event_socket`, which asks the question: only
    /// this module starts tmux sessions (scripts/check-shape.sh).
    #[test]
    fn a_tmux_slow_to_answer_is_asked_again_not_taken_for_an_outsider() {
        let server = server("origin");
        let pane = server
            .0
            .new_session(&crate::sys::tmux::Launch {
                name: "ours".into(),
                cwd: std::env::temp_dir(),
                width: 80,
                height: 24,
                env: Vec::new(),
                argv: vec!["sleep".into(), "60".into()],
            })
            .expect("tmux starts it")
            .expect("tmux names the pane's pid");
        let pid = server
            .0
            .raw(&["display", "-p", "#{pid}"])
            .unwrap()
            .stdout
            .trim()
            .to_string();
        // Each call of the event socket's gives up after 300 ms; the server
        // is stopped for a second: the first asks fail, a later one is
        // answered.
        let origins = crate::daemon::event_socket::Origins::new(Tmux::new(
            server.0.socket().map(String::from),
            Duration::from_millis(300),
        ));
        let stopped = Stopped(pid);
        assert!(std::process::Command::new("kill")
            .args(["-STOP", &stopped.0])
            .status()
            .unwrap()
            .success());
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            drop(stopped);
        });
        let origin = origins.of(pane);
        waker.join().unwrap();
        assert_eq!(origin.map(|o| o.session).as_deref(), Some("ours"));
    }

    #[test]
    fn a_stop_signals_ours_waits_for_them_and_leaves_others_running() {
        let server = server("stop");
        let tmux = &server.0;
        start(tmux, "ours-1", "sleep 60");
        start(tmux, "ours-2", "sleep 60");
        start(tmux, "theirs", "sleep 60");
        let started = Instant::now();
        stop_all(
            tmux,
            &["ours-1".into(), "ours-2".into()],
            Duration::from_secs(30),
        );
        // Ended by the signal, not by the timeout (the margin is for a
        // loaded machine, not a speed figure).
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(running(tmux), vec!["theirs".to_string()]);
        let all = tmux.list_sessions().unwrap();
        assert_eq!(all.len(), 1, "our dead panes are killed too: {all:?}");
    }

    #[test]
    fn a_program_that_ignores_the_signal_is_killed_after_the_timeout() {
        let server = server("stubborn");
        let tmux = &server.0;
        // An ignored signal stays ignored across exec: sleep ignores it too.
        start(tmux, "stubborn", "trap '' TERM; sleep 60");
        start(tmux, "polite", "sleep 60");
        let started = Instant::now();
        stop_all(
            tmux,
            &["stubborn".into(), "polite".into()],
            Duration::from_secs(1),
        );
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "it waited for the stubborn one: {:?}",
            started.elapsed()
        );
        assert!(running(tmux).is_empty(), "{:?}", running(tmux));
    }

    #[test]
    fn a_stuck_screen_is_told_as_prompt_blank_or_a_dialog() {
        use crate::decide::session::StuckScreen;
        let server = server("stuck");
        let tmux = &server.0;
        let rule = facts::INPUT_BOX_RULE.to_string().repeat(40);
        let mark = facts::PROMPT_READY_MARK;
        start(tmux, "blank", "sleep 60");
        start(
            tmux,
            "dialog",
            "printf 'Do you trust the files in this folder?\\n> 1. Yes\\n'; sleep 60",
        );
        start(
            tmux,
            "prompt",
            &format!("printf 'Welcome\\n{rule}\\n{mark} \\n{rule}\\n'; sleep 60"),
        );
        // Until each pane has drawn what its program printed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !["dialog", "prompt"]
            .iter()
            .all(|n| tmux.capture_pane(n, 0).is_ok_and(|s| !s.trim().is_empty()))
        {
            assert!(Instant::now() < deadline, "the panes never drew");
            std::thread::sleep(Duration::from_millis(50));
        }
        let shows = |name: &str| match execute(tmux, Job::ReportStuck { name: name.into() }) {
            Report::Stuck { shows, screen, .. } => (shows, screen),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            shows("blank"),
            (StuckScreen::Blank, "(nothing on it)".into())
        );
        assert_eq!(shows("dialog").0, StuckScreen::Other);
        assert!(shows("dialog").1.contains("trust"));
        assert_eq!(shows("prompt").0, StuckScreen::Prompt);
        // Gone: unreadable, which is no dialog seen, so left alone.
        assert_eq!(shows("no-such-session").0, StuckScreen::Other);
    }

    #[test]
    fn keeps_the_last_meaningful_lines() {
        let screen =
            "\n\nerror: unknown option '--bogus'\n\nPane is dead (status 1, Sat Nov 21)\n\n";
        assert_eq!(last_lines(screen), "error: unknown option '--bogus'");
        assert_eq!(last_lines("\n \n"), "(no output)");
    }
}
