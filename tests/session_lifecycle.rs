//! Session lifecycle edges: launch arguments reach the program exactly as
//! configured, a launch that fails is on record from the first try (so it
//! backs off and is reported), a conversation that cannot be resumed is
//! started fresh, and records follow the account a process really runs
//! under, even after a crash in the middle of a swap.

mod support;

use std::time::{Duration, Instant};

use claude_failover::sys::tmux::Launch;
use support::{wait_for, Harness, World};

const UP: Duration = Duration::from_secs(60);

/// The NUL-separated argv of a process, from /proc.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn log_of(w: &World) -> String {
    support::daemon_log(&w.h, 0)
}

#[test]
fn launch_arguments_reach_the_program_unchanged_even_ending_in_a_semicolon() {
    let h = Harness::new("args");
    let out = h.path().join("argv.txt");
    let tricky = [
        "Be brief;",
        ";",
        "a\\;",
        "two words",
        "{",
        "}",
        "#{pane_id}",
        "$HOME",
        "~",
        "",
        "last;",
    ];
    let mut argv = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        format!(
            "for a in \"$@\"; do printf '<%s>\\n' \"$a\"; done > {}.tmp; mv {0}.tmp {0}",
            out.display()
        ),
        "sh".to_string(),
    ];
    argv.extend(tricky.iter().map(|s| s.to_string()));
    let launch = Launch {
        name: "ccl-args-1".into(),
        cwd: h.path().to_path_buf(),
        width: 80,
        height: 24,
        env: vec![("CF_TEST_VALUE".into(), "env;".into())],
        argv,
    };
    h.tmux.new_session(&launch).expect("tmux new-session");
    let got = wait_for(Duration::from_secs(10), "the program's argv", || {
        std::fs::read_to_string(&out).ok()
    });
    let want: String = tricky.iter().map(|a| format!("<{a}>\n")).collect();
    assert_eq!(got, want);
    // The environment too, and remain-on-exit was set by the same command.
    let env = h
        .tmux
        .raw(&["show-environment", "-t", "=ccl-args-1", "CF_TEST_VALUE"])
        .unwrap();
    assert_eq!(env.stdout.trim(), "CF_TEST_VALUE=env;");
    wait_for(Duration::from_secs(10), "the dead pane kept", || {
        h.tmux
            .list_sessions()
            .ok()?
            .into_iter()
            .find(|s| s.name == "ccl-args-1" && s.pane_dead)
    });
}

#[test]
fn a_program_path_alone_is_not_split_by_the_shell() {
    let h = Harness::new("args-alone");
    let dir = h.path().join("my tools");
    std::fs::create_dir_all(&dir).unwrap();
    let marker = h.path().join("ran.txt");
    let program = dir.join("prog;");
    std::fs::write(
        &program,
        format!("#!/bin/sh\necho ran > '{}'\n", marker.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let launch = Launch {
        name: "ccl-args-2".into(),
        cwd: h.path().to_path_buf(),
        width: 80,
        height: 24,
        env: vec![],
        argv: vec![program.to_string_lossy().into_owned()],
    };
    h.tmux.new_session(&launch).expect("tmux new-session");
    wait_for(Duration::from_secs(10), "the program to run", || {
        std::fs::read_to_string(&marker).ok()
    });
}

#[test]
fn a_system_prompt_ending_in_a_semicolon_starts_the_real_claude_code() {
    let Some(mut w) = World::new("args-claude", |spec| {
        spec.pools[0].min = 1;
        spec.claude_args = vec!["--append-system-prompt".into(), "Be brief;".into()];
        spec.extra_yaml
            .push_str("lifecycle:\n  interval: 1s\n  restart_backoff: [1s, 2s]\n");
    }) else {
        return;
    };
    let _pid = w.start_daemon(&[]);
    let s = w.wait_state("ccl-auto-11", "idle", UP);
    let pid = s["pane_pid"].as_u64().unwrap() as u32;
    let argv = cmdline(pid);
    let at = argv
        .iter()
        .position(|a| a == "--append-system-prompt")
        .unwrap_or_else(|| panic!("{argv:?}"));
    assert_eq!(argv[at + 1], "Be brief;", "{argv:?}");
    assert_eq!(s["restarts"], 0, "{s}");
}

/// Issue 12.11: a `claude.env` value (a secret, with quotes, `;` and `$(…)`
/// in it) reaches Claude Code exactly, and is on no command line: not in
/// the pane process's, not in tmux's session environment (what `-e` would
/// set); it waits in a 0600 file the pane's shell reads before it execs.
#[test]
fn claude_env_values_reach_the_program_but_no_command_line() {
    let secret = "s3cr'et;$(touch /tmp/cf-pwned) \"x\"";
    let Some(mut w) = World::new("env-secret", |spec| {
        spec.pools[0].min = 1;
        spec.extra_yaml.push_str("lifecycle:\n  interval: 1s\n");
    }) else {
        return;
    };
    let quoted = serde_json::to_string(secret).unwrap();
    w.sb.edit_config(
        "  env:\n",
        &format!("  env:\n    CF_TEST_SECRET: {quoted}\n"),
    );
    let _pid = w.start_daemon(&[]);
    let s = w.wait_state("ccl-auto-11", "idle", UP);
    let pid = s["pane_pid"].as_u64().unwrap() as u32;
    assert_eq!(
        claude_failover::daemon::session_watcher::process_env(pid, "CF_TEST_SECRET").as_deref(),
        Some(secret)
    );
    let argv = cmdline(pid);
    assert!(argv.iter().all(|a| !a.contains("s3cr")), "{argv:?}");
    assert!(
        argv[0].ends_with("claude"),
        "the shell became Claude Code: {argv:?}"
    );
    let shown = std::process::Command::new("tmux")
        .args(["-L", &w.h.socket, "show-environment", "-t", "=ccl-auto-11"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("CLAUDE_FAILOVER_SESSION"), "{shown}");
    assert!(!shown.contains("s3cr"), "{shown}");
    let file = w.sb.state_dir.join("env").join("ccl-auto-11.env");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        !std::path::Path::new("/tmp/cf-pwned").exists(),
        "the value ran as a command"
    );
}

#[test]
fn a_first_launch_that_tmux_refuses_is_on_record_backs_off_and_is_reported() {
    // An argument longer than a tmux command may be (16 KiB): tmux answers
    // "command too long" and starts nothing, from the very first launch.
    let long_prompt = "x".repeat(20_000);
    let Some(mut w) = World::new("first-launch", |spec| {
        spec.pools[0].min = 1;
        spec.claude_args = vec!["--append-system-prompt".into(), long_prompt];
        spec.extra_yaml
            .push_str("lifecycle:\n  interval: 1s\n  restart_backoff: [1s, 2s]\n");
    }) else {
        return;
    };
    let _pid = w.start_daemon(&[]);
    let s = wait_for(UP, "ccl-auto-11 failed after its back-off", || {
        w.session("ccl-auto-11").filter(|s| s["state"] == "failed")
    });
    assert!(
        s["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("command too long"),
        "{s}"
    );
    let log = log_of(&w);
    assert!(log.contains("ccl-auto-11: failed to start"), "{log}");
    // It backs off (1 s, 2 s, then every 2 s): a few tries, not a loop.
    std::thread::sleep(Duration::from_secs(3));
    let tries = log_of(&w).matches("ccl-auto-11: failed to start").count();
    assert!((3..=6).contains(&tries), "{tries} failed starts:\n{log}");
}

/// claude-code-facts §6 and issue 11.13: at a conversation's first request
/// its transcript exists with metadata lines only; `--resume` on it exits
/// with "No conversation found". A session that dies then must come back
/// as a new conversation, not loop on the resume.
#[test]
fn a_session_whose_transcript_holds_only_metadata_is_relaunched_fresh() {
    let Some(mut w) = World::new("fresh-not-resumed", |spec| {
        spec.pools[0].min = 1;
        spec.extra_yaml
            .push_str("lifecycle:\n  interval: 1s\n  restart_backoff: [1s, 2s]\n");
    }) else {
        return;
    };
    let _pid = w.start_daemon(&[]);
    let s = w.wait_state("ccl-auto-11", "idle", UP);
    let old_id = s["claude_session_id"].as_str().unwrap().to_string();
    let cwd = std::path::PathBuf::from(s["cwd"].as_str().unwrap());
    let home = &w.sb.accounts[0].home;
    let transcript = claude_failover::claude::facts::transcript_path(home, &cwd, &old_id);
    // Its first request hangs: the transcript is written, with no message yet.
    w.api.set_latency(Duration::from_secs(40));
    w.type_prompt(
        "ccl-auto-11",
        "lifecycle: a first prompt that never gets its answer",
    );
    w.api
        .wait_for_request(|r| r.prompt.contains("a first prompt"), UP)
        .expect("the first request reached the API");
    // Frozen from here to its death: a Claude Code still running could
    // append the prompt's line after the strip below (seen in CI under
    // load), and the daemon would rightly resume a transcript that holds it.
    let pid = w.pane_pid("ccl-auto-11").unwrap();
    signal(pid, "-STOP");
    // A write it queued before the stop may still land (asynchronous file
    // I/O goes on in the kernel while its threads are stopped): wait until
    // the transcript has not changed for a second.
    let len = || std::fs::metadata(&transcript).map(|m| m.len()).ok();
    let mut seen = (len(), Instant::now());
    wait_for(
        UP,
        "the stopped Claude Code's transcript to stay still",
        || {
            let now = len();
            if now != seen.0 {
                seen = (now, Instant::now());
            }
            (seen.1.elapsed() >= Duration::from_secs(1)).then_some(())
        },
    );
    // If this Claude Code writes no transcript yet, write what 2.1.329
    // was seen to write at this point: metadata lines only.
    if !transcript.is_file() {
        std::fs::create_dir_all(transcript.parent().unwrap()).unwrap();
        std::fs::write(
            &transcript,
            format!("{{\"type\":\"file-history-snapshot\",\"messageId\":\"m-1\",\"snapshot\":{{}},\"isSnapshotUpdate\":false,\"sessionId\":\"{old_id}\"}}\n"),
        )
        .unwrap();
    }
    let text = std::fs::read_to_string(&transcript).unwrap_or_default();
    if claude_failover::claude::facts::transcript_is_resumable(&transcript) {
        // 2.1.329 here had already written the prompt's line (the issue saw
        // the file before it): strip it back to the metadata lines, the
        // case under test.
        let meta: String = text
            .lines()
            .filter(|l| !l.contains("\"type\":\"user\"") && !l.contains("\"type\":\"assistant\""))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&transcript, meta).unwrap();
    }
    assert!(!claude_failover::claude::facts::transcript_is_resumable(
        &transcript
    ));
    // The program dies.
    signal(pid, "-9");
    w.api.set_latency(Duration::ZERO);
    let s = wait_for(UP, "ccl-auto-11 back as a new conversation", || {
        w.session("ccl-auto-11").filter(|s| {
            s["state"] == "idle"
                && s["restarts"] == 1
                && s["claude_session_id"]
                    .as_str()
                    .is_some_and(|id| id != old_id)
        })
    });
    let log = log_of(&w);
    assert!(!log.contains(&format!("resuming {old_id}")), "{log}");
    assert!(log.contains("holds no message to resume"), "{log}");
    assert!(!log.contains("failed to start"), "{log}");
    assert_ne!(s["pane_pid"].as_u64(), Some(pid as u64));
}

fn signal(pid: u32, sig: &str) {
    assert!(std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// Issue 12.5: a `kill -9` in a swap's relaunch phase, after a session was
/// relaunched under the new account and before that was persisted. The
/// restarted daemon must show each session on the account its process
/// runs under within one lifecycle interval, and end with all on the new one.
#[test]
fn after_a_kill_in_the_relaunch_phase_records_follow_the_real_account() {
    let Some(mut w) = World::new("kill-relaunch", |spec| {
        spec.pools[0].min = 2;
        spec.extra_yaml.push_str(
            "lifecycle:\n  interval: 2s\nswap:\n  drain_timeout: 10s\n  stop_timeout: 5s\n",
        );
    }) else {
        return;
    };
    let names = ["ccl-auto-11", "ccl-auto-12"];
    let pid = w.start_daemon(&[("CLAUDE_FAILOVER_FAILPOINT", "launched-under:beta")]);
    for n in names {
        w.wait_state(n, "idle", UP);
    }
    signal(pid, "-USR1");
    let code = wait_for(UP, "the daemon to die after relaunching under beta", || {
        w.h.try_exit_status(pid)
    });
    assert_ne!(code, Some(0));
    // What the killed daemon left: at least one pane already under beta,
    // while sessions.json still says alpha.
    let book = std::fs::read_to_string(w.sb.state_dir.join("sessions.json")).unwrap();
    assert!(!book.contains("\"beta\""), "{book}");
    // The panes the killed daemon already relaunched under beta.
    let relaunched: Vec<(String, u32)> = names
        .iter()
        .filter_map(|n| {
            let pid = w.pane_pid(n)?;
            let dir =
                claude_failover::daemon::session_watcher::process_env(pid, "CLAUDE_CONFIG_DIR")?;
            dir.ends_with("/beta").then(|| (n.to_string(), pid))
        })
        .collect();
    assert!(!relaunched.is_empty(), "no pane was relaunched under beta");
    let pid = w.start_daemon(&[]);
    let up = std::time::Instant::now();
    // Answering, or gone: then say why (its log is in the dump).
    while w.status().is_none() {
        assert!(up.elapsed() < UP, "the restarted daemon never answered");
        if let Some(code) = w.h.try_exit_status(pid) {
            panic!("the restarted daemon exited ({code:?}) before answering");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let start = std::time::Instant::now();
    // Within one lifecycle interval (2 s, plus a turn of the loop).
    let settled = wait_for(
        Duration::from_secs(4),
        "records matching the processes",
        || {
            let pairs = w.recorded_and_real();
            let all = pairs.len() == 2
                && pairs
                    .iter()
                    .all(|(_, recorded, real)| real.is_none() || recorded == real);
            let one_real = pairs.iter().any(|(_, _, real)| real.is_some());
            (all && one_real).then_some(pairs)
        },
    );
    eprintln!(
        "records matched the processes {:?} after the daemon answered ({:?} after its start): {settled:?}",
        start.elapsed(),
        up.elapsed()
    );
    // Then every session idle on beta, each process under beta.
    wait_for(UP, "every session idle on beta", || {
        let s = w.status()?;
        let ok = s["active_account"] == "beta"
            && names.iter().all(|n| {
                s["sessions"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x["name"] == *n && x["account"] == "beta" && x["state"] == "idle")
                })
            });
        ok.then_some(())
    });
    for (name, recorded, real) in w.recorded_and_real() {
        assert_eq!(recorded.as_deref(), Some("beta"), "{name}");
        assert_eq!(real.as_deref(), Some("beta"), "{name}");
    }
    // A process already on the right account is adopted, not restarted.
    for (name, pid) in &relaunched {
        assert_eq!(w.pane_pid(name), Some(*pid), "{name} was restarted");
    }
    let log = support::daemon_log(&w.h, 1);
    assert!(!log.contains("while beta is active"), "{log}");
}

/// Records follow observation, and with no swap under way a session that
/// runs under another account than the active one is relaunched under the
/// active one, resuming its conversation.
#[test]
fn a_session_left_on_another_account_is_relaunched_under_the_active_one() {
    let Some(mut w) = World::new("stray-account", |spec| {
        spec.pools[0].min = 1;
        spec.extra_yaml.push_str("lifecycle:\n  interval: 1s\n");
    }) else {
        return;
    };
    let pid = w.start_daemon(&[]);
    w.wait_state("ccl-auto-11", "idle", UP);
    w.type_prompt("ccl-auto-11", "stray: remember this conversation");
    w.api
        .wait_for_request(|r| r.prompt.contains("stray: remember"), UP)
        .expect("the prompt reached the API");
    let s = wait_for(UP, "its answer", || {
        w.session("ccl-auto-11")
            .filter(|s| s["state"] == "idle" && s["claude_session_id"].is_string())
    });
    let id = s["claude_session_id"].as_str().unwrap().to_string();
    let old_pane = w.pane_pid("ccl-auto-11");
    // The daemon stops (sessions keep running under alpha) and the active
    // account is beta when it starts again.
    signal(pid, "-TERM");
    wait_for(Duration::from_secs(10), "daemon stopped", || {
        w.h.try_exit_status(pid)
    });
    std::fs::write(
        w.sb.state_dir.join("active.json"),
        r#"{"account":"beta","since":"2026-12-01T00:00:00Z","swap_id":null}"#,
    )
    .unwrap();
    let _pid = w.start_daemon(&[]);
    let s = wait_for(UP, "ccl-auto-11 idle again under beta", || {
        w.session("ccl-auto-11").filter(|s| {
            s["state"] == "idle" && s["account"] == "beta" && w.pane_pid("ccl-auto-11") != old_pane
        })
    });
    assert_eq!(s["claude_session_id"].as_str(), Some(id.as_str()), "{s}");
    let log = support::daemon_log(&w.h, 1);
    assert!(
        log.contains("runs under alpha while beta is active"),
        "{log}"
    );
    assert!(log.contains(&format!("resuming {id}")), "{log}");
    let req = {
        w.type_prompt("ccl-auto-11", "stray: still there?");
        w.api
            .wait_for_request(|r| r.prompt.contains("stray: still there"), UP)
            .expect("the second prompt reached the API")
    };
    assert_eq!(req.account.as_deref(), Some("beta"));
    assert!(req
        .messages
        .to_string()
        .contains("stray: remember this conversation"));
}
