//! The daemon core on the real Claude Code: pools come up and stay up,
//! sessions that die are resumed, sessions that cannot start back off and
//! are reported, the daemon stops and restarts without disturbing a single
//! session, and other people's tmux sessions are never touched.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::{wait_for, World};

const UP: Duration = Duration::from_secs(60);

fn fast_lifecycle(spec: &mut testkit::sandbox::SandboxSpec) {
    spec.extra_yaml
        .push_str("lifecycle:\n  interval: 2s\n  restart_backoff: [1s, 2s, 3s]\n");
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Waits for the daemon process `pid` to exit; returns its exit status.
fn wait_exit(w: &mut World, pid: u32, timeout: Duration) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(code) = w.h.try_exit_status(pid) {
            return code;
        }
        assert!(
            started.elapsed() < timeout,
            "daemon {pid} still running after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Manual sessions on the same server run `cat`, so a single keystroke sent
/// to them would show on their screen.
fn start_manual_sessions(w: &World) -> Vec<(String, u32)> {
    ["ccl-0", "ccl-1"]
        .iter()
        .map(|name| {
            let out =
                w.h.tmux
                    .raw(&["new-session", "-d", "-s", name, "cat"])
                    .unwrap();
            assert!(out.success(), "{}", out.complaint());
            (name.to_string(), w.pane_pid(name).unwrap())
        })
        .collect()
}

fn assert_untouched(w: &World, manual: &[(String, u32)]) {
    for (name, pid) in manual {
        assert_eq!(w.pane_pid(name), Some(*pid), "{name} was restarted");
        let screen = w.h.tmux.capture_pane(name, 100).unwrap();
        assert!(
            screen.trim().is_empty(),
            "{name} received keystrokes: {screen:?}"
        );
    }
}

#[test]
fn pools_come_up_survive_kills_and_restarts_and_leave_others_alone() {
    let Some(mut w) = World::new("core", fast_lifecycle) else {
        return;
    };
    let manual = start_manual_sessions(&w);
    let notify_path = w.h.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let pid = w.start_daemon(&[("NOTIFY_SOCKET", notify_path.to_str().unwrap())]);

    // 1. ccl-auto-11 and ccl-auto-12 come up idle with a conversation id.
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 on NOTIFY_SOCKET");
    assert_eq!(&buf[..n], b"READY=1");
    let s11 = w.wait_state("ccl-auto-11", "idle", UP);
    let s12 = w.wait_state("ccl-auto-12", "idle", UP);
    for s in [&s11, &s12] {
        assert!(
            s["claude_session_id"]
                .as_str()
                .is_some_and(|id| id.len() > 8),
            "{s}"
        );
        assert_eq!(s["account"], "alpha");
        assert_eq!(s["pool"], "auto");
    }
    let status = w.status().unwrap();
    assert_eq!(status["sessions"].as_array().unwrap().len(), 2, "{status}");
    let unmanaged: Vec<&str> = status["unmanaged_sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(unmanaged, vec!["ccl-0", "ccl-1"]);
    assert!(
        w.h.tmux
            .list_sessions()
            .unwrap()
            .iter()
            .all(|s| s.name != "ccl-auto-13"),
        "only min sessions"
    );

    // 2. A conversation on ccl-auto-12, then the session is killed: it comes
    // back resumed, and the next request carries the earlier turns.
    let id12 = s12["claude_session_id"].as_str().unwrap().to_string();
    w.type_prompt("ccl-auto-12", "core-first: remember the word heron");
    w.api
        .wait_for_request(|r| r.prompt == "core-first: remember the word heron", UP)
        .expect("first prompt reached the API");
    w.wait_state("ccl-auto-12", "idle", UP);
    let old_pid = w.pane_pid("ccl-auto-12").unwrap();
    let killed_at = Instant::now();
    w.h.tmux.kill_session("ccl-auto-12").unwrap();
    let back = wait_for(UP, "ccl-auto-12 relaunched and idle", || {
        w.session("ccl-auto-12")
            .filter(|s| s["state"] == "idle" && s["restarts"].as_u64() >= Some(1))
    });
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(2) + UP, "took {took:?}");
    assert_ne!(w.pane_pid("ccl-auto-12"), Some(old_pid));
    assert_eq!(
        back["claude_session_id"].as_str(),
        Some(id12.as_str()),
        "resumed the same conversation"
    );
    w.type_prompt("ccl-auto-12", "core-second: which word?");
    let req = w
        .api
        .wait_for_request(|r| r.prompt == "core-second: which word?", UP)
        .expect("second prompt reached the API");
    let history = req.messages.to_string();
    assert!(
        history.contains("core-first: remember the word heron"),
        "earlier turn missing: {history}"
    );
    assert!(
        history.contains("STANDIN-ANSWER[alpha]: core-first"),
        "earlier answer missing: {history}"
    );
    w.wait_state("ccl-auto-12", "idle", UP);

    // 4a. SIGTERM: exit 0 within 5 s, sessions left running.
    let pids_before: Vec<Option<u32>> = ["ccl-auto-11", "ccl-auto-12"]
        .iter()
        .map(|n| w.pane_pid(n))
        .collect();
    let t = Instant::now();
    signal(pid, "-TERM");
    assert_eq!(wait_exit(&mut w, pid, Duration::from_secs(5)), Some(0));
    assert!(t.elapsed() < Duration::from_secs(5));
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");

    // While the daemon is down, ccl-auto-11 starts a new conversation
    // (`/clear`): its hook events wait in the events folder.
    let id11 = s11["claude_session_id"].as_str().unwrap().to_string();
    w.type_prompt("ccl-auto-11", "/clear");
    wait_for(UP, "the SessionStart of /clear recorded", || {
        std::fs::read_dir(w.sb.state_dir.join("events"))
            .ok()?
            .flatten()
            .find(|e| {
                std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("\"source\":\"clear\""))
            })
    });

    // 4b. Start again: nothing relaunched, states rebuilt, the waiting events applied.
    let pid = w.start_daemon(&[]);
    let s11 = wait_for(UP, "ccl-auto-11 with its new conversation", || {
        w.session("ccl-auto-11")
            .filter(|s| s["claude_session_id"].as_str().is_some_and(|id| id != id11))
    });
    assert_eq!(s11["state"], "idle");
    assert_eq!(
        w.session("ccl-auto-12").unwrap()["claude_session_id"].as_str(),
        Some(id12.as_str())
    );
    let pids_after: Vec<Option<u32>> = ["ccl-auto-11", "ccl-auto-12"]
        .iter()
        .map(|n| w.pane_pid(n))
        .collect();
    assert_eq!(
        pids_before, pids_after,
        "a restart must not relaunch sessions"
    );

    // 4c. kill -9, start again: same.
    signal(pid, "-KILL");
    wait_exit(&mut w, pid, Duration::from_secs(5));
    let pid = w.start_daemon(&[]);
    w.wait_state("ccl-auto-11", "idle", UP);
    w.wait_state("ccl-auto-12", "idle", UP);
    std::thread::sleep(Duration::from_secs(3)); // more than one interval
    let pids_after: Vec<Option<u32>> = ["ccl-auto-11", "ccl-auto-12"]
        .iter()
        .map(|n| w.pane_pid(n))
        .collect();
    assert_eq!(
        pids_before, pids_after,
        "a restart after kill -9 must not relaunch sessions"
    );
    assert_eq!(w.session("ccl-auto-12").unwrap()["restarts"], 1);

    assert_untouched(&w, &manual);
    signal(pid, "-TERM");
    assert_eq!(wait_exit(&mut w, pid, Duration::from_secs(5)), Some(0));
}

#[test]
fn a_session_that_cannot_start_backs_off_and_is_reported_failed() {
    let Some(mut w) = World::new("backoff", |spec| {
        fast_lifecycle(spec);
        spec.claude_args = vec!["--no-such-flag-for-claude".into()];
        spec.pools[0].min = 1;
    }) else {
        return;
    };
    let pid = w.start_daemon(&[]);
    // Sample launches until three relaunches (back-off steps 1, 2, 3 s, each
    // after Claude Code's own exit on the flag and the next look at tmux,
    // which a loaded machine stretches) or its giving up.
    let started = Instant::now();
    let mut launches: Vec<(Duration, u64)> = Vec::new();
    let mut last = None;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "fewer than 3 relaunches in 90 s: {launches:?}"
        );
        if let Some(s) = w.session("ccl-auto-11") {
            let r = s["restarts"].as_u64().unwrap_or(0);
            if last != Some(r) {
                launches.push((started.elapsed(), r));
                last = Some(r);
            }
            if r >= 3 || s["state"] == "failed" {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let restarts = last.unwrap_or(0);
    assert!(
        restarts >= 3,
        "gave up after {restarts} relaunches: {launches:?}"
    );
    // Never a tight loop, however late a sample fell (a sample is never
    // early, so this holds on a loaded machine; gaps between samples do
    // not): relaunch r comes at the earliest after the back-off steps
    // before it (1, 1 + 2, 1 + 2 + 3 s…).
    for (at, r) in &launches {
        let earliest: f64 = (0..*r).map(|i| [1.0, 2.0, 3.0][(i as usize).min(2)]).sum();
        assert!(
            at.as_secs_f64() >= earliest - 0.3,
            "relaunch {r} seen at {at:?}, before its back-off allows ({earliest} s): {launches:?}"
        );
    }
    // And each wait was the back-off's own step, as the daemon says (its
    // figures, which load does not change).
    let log = testkit::world::daemon_log(&w.h, 0);
    for (n, step) in [(1, 1), (2, 2), (3, 3)] {
        let said =
            format!("ccl-auto-11: failed to start ({n} in a row), backoff; retry in {step}s");
        assert!(log.contains(&said), "no {said:?} in\n{log}");
    }
    let s = wait_for(Duration::from_secs(15), "ccl-auto-11 failed", || {
        w.session("ccl-auto-11").filter(|s| s["state"] == "failed")
    });
    let err = s["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("no-such-flag-for-claude"),
        "last_error should hold claude's own words: {err}"
    );
    signal(pid, "-TERM");
    assert_eq!(wait_exit(&mut w, pid, Duration::from_secs(5)), Some(0));
}

#[test]
fn a_session_stuck_on_the_trust_dialog_is_reported_and_never_typed_into() {
    let Some(mut w) = World::new("stuck", |spec| {
        fast_lifecycle(spec);
        spec.pools[0].min = 1;
        spec.extra_yaml.push_str("# startup_timeout is set below\n");
    }) else {
        return;
    };
    // Untrust the pool folder in the active account and shorten start-up.
    let alpha = w.sb.account("alpha").unwrap().home.clone();
    let projects: Vec<&std::path::PathBuf> = w.sb.project_dirs.iter().map(|(_, d)| d).collect();
    testkit::sandbox::write_claude_json(&alpha, true, &projects).unwrap();
    // Long enough for a cold start on a loaded machine to draw its dialog.
    w.sb.edit_config("startup_timeout: 60s", "startup_timeout: 12s");

    let pid = w.start_daemon(&[]);
    let s = wait_for(UP, "ccl-auto-11 reported failed", || {
        w.session("ccl-auto-11").filter(|s| s["state"] == "failed")
    });
    let err = s["last_error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("no SessionStart"), "{err}");
    assert!(
        err.to_lowercase().contains("trust"),
        "the screen text should name the dialog: {err}"
    );
    // Left alone: same pane, dialog still up, not relaunched over two intervals.
    let pane = w.pane_pid("ccl-auto-11");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(w.pane_pid("ccl-auto-11"), pane);
    assert_eq!(w.session("ccl-auto-11").unwrap()["restarts"], 0);
    assert_eq!(w.session("ccl-auto-11").unwrap()["state"], "failed");
    signal(pid, "-TERM");
    assert_eq!(wait_exit(&mut w, pid, Duration::from_secs(5)), Some(0));
}

/// A session that comes up but whose `SessionStart` never reaches the
/// daemon (seen here once in ten started at once under load). Simulated with the hooks
/// off for its launches (`--settings {"disableAllHooks":true}`): the
/// session is up at its prompt and no hook ever arrives. It is not left
/// `failed` for good, as a dialog is: it is killed and relaunched with the
/// back-off, and its record says why in one line.
#[test]
fn a_session_up_at_its_prompt_without_a_session_start_is_relaunched_with_back_off() {
    let Some(mut w) = World::new("lost-start", |spec| {
        fast_lifecycle(spec);
        spec.pools[0].min = 1;
        spec.claude_args.push("--settings".into());
        spec.claude_args.push(r#"{"disableAllHooks":true}"#.into());
    }) else {
        return;
    };
    // Long enough for a cold start on a loaded machine to draw its input box.
    w.sb.edit_config("startup_timeout: 60s", "startup_timeout: 12s");

    let pid = w.start_daemon(&[]);
    let first = wait_for(UP, "ccl-auto-11 launched", || w.pane_pid("ccl-auto-11"));
    // Relaunched: another Claude Code in the pane, the record says why.
    let s = wait_for(UP, "ccl-auto-11 relaunched", || {
        let s = w.session("ccl-auto-11")?;
        let relaunched = w.pane_pid("ccl-auto-11").is_some_and(|p| p != first);
        (relaunched && s["restarts"].as_u64() >= Some(1)).then_some(s)
    });
    let err = s["last_error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.contains("up at its prompt, but no SessionStart came within 12s"),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");
    // Counted as a failed start (the back-off applies), and after its
    // relaunch still waiting for a SessionStart, never taken for started.
    let book: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.sb.state_dir.join("sessions.json")).unwrap())
            .unwrap();
    let record = &book["sessions"]["ccl-auto-11"];
    assert!(record["failed_starts"].as_u64() >= Some(1), "{record}");
    assert!(
        matches!(s["state"].as_str(), Some("starting" | "backoff")),
        "{s}"
    );
    let log = testkit::world::daemon_log(&w.h, 0);
    assert!(
        log.contains("ccl-auto-11: failed to start (1 in a row), backoff; retry in"),
        "{log}"
    );
    signal(pid, "-TERM");
    assert_eq!(wait_exit(&mut w, pid, Duration::from_secs(5)), Some(0));
}
