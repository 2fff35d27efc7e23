//! Live swap (`swap.mode: live`), end to end: real Claude Code in real tmux
//! under the seat, the stand-in as the API. A swap rewrites the seat's
//! credentials and the running Claude Code processes send their next
//! request as the new account: nothing is stopped.

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{assert_task_once, enqueue_task, task_result, wait_for, wait_task_ended, World};

const UP: Duration = Duration::from_secs(90);

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn steps(n: u32) -> Vec<String> {
    (1..=n).map(|k| format!("step-{k}")).collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A live world: `setup` made the seat; beta's windows reset at other times
/// than alpha's, so each account's readings can be told apart.
fn live_world(name: &str, sessions: u32) -> Option<World> {
    let w = World::new(name, |spec| {
        spec.swap_mode = "live".into();
        spec.pools[0].min = sessions;
        spec.pools[0].max = sessions;
        spec.quota_yaml = "  poll_interval: 2s\n  swap_cooldown: 0s\n".into();
        spec.extra_yaml = "swap:\n  verify_timeout: 20s\n".into();
    })?;
    w.api
        .set_resets("beta", now() + 3 * 3600, now() + 5 * 86400)
        .unwrap();
    Some(w)
}

fn session_names(n: u32) -> Vec<String> {
    (11..11 + n).map(|i| format!("ccl-auto-{i}")).collect()
}

/// Must-show 1: six sessions, three of them in agentic tasks of eight steps.
/// Alpha crosses its threshold once a task reached step 3; the live swap
/// follows. The later steps of every running turn reach the stand-in with
/// beta's token, no Claude Code was restarted (pane pids unchanged), no
/// turn was interrupted (no refusal, no continuation prompt), every
/// `out.txt` is complete and every task done once.
#[test]
fn six_sessions_move_live_while_three_agentic_turns_run_on() {
    let Some(mut w) = live_world("live-six", 6) else {
        return;
    };
    let project = w.sb.project_dirs[0].1.clone();
    w.start_daemon(&[]);
    let names = session_names(6);
    for n in &names {
        w.wait_state(n, "idle", UP);
    }
    let tasks = ["live-a", "live-b", "live-c"];
    for (i, t) in tasks.iter().enumerate() {
        enqueue_task(
            &project,
            t,
            &format!(
                "Task {t}: record each step of the work in its file.\n\nSTANDIN-SCRIPT steps=8 file=out-{i}.txt delay_ms=400\n"
            ),
        );
    }
    // Every turn under way (a task starts in a fresh session in the
    // project's folder: its relaunch is before this), and one at step 3:
    // then alpha's 5-hour window reads 95 %.
    wait_for(
        Duration::from_secs(120),
        "every turn under way, one at step 3",
        || {
            let r = w.api.requests_for("alpha");
            let started = (0..3).all(|i| {
                r.iter().any(|x| {
                    x.step == Some(2)
                        && x.script
                            .as_deref()
                            .is_some_and(|s| s.contains(&format!("out-{i}.txt")))
                })
            });
            (started && r.iter().any(|x| x.step == Some(3))).then_some(())
        },
    );
    let pids_before: Vec<Option<u32>> = names.iter().map(|n| w.pane_pid(n)).collect();
    assert!(pids_before.iter().all(Option::is_some), "{pids_before:?}");
    // Over the threshold, not exhausted: it stays at 95 % (a refusal would
    // be another test).
    w.api.set_steps("alpha", 0.0, 0.0).unwrap();
    w.api.set_usage("alpha", 95.0, 10.0).unwrap();
    for t in &tasks {
        assert_eq!(
            wait_task_ended(&project, t, Duration::from_secs(300)),
            "done",
            "{t}"
        );
    }
    let status = w.status().unwrap();
    let swap = &status["last_swap"];
    assert_eq!(swap["mode"], "live", "{swap}");
    assert_eq!(swap["result"], "done", "{swap}");
    assert_eq!(
        (swap["from"].as_str(), swap["to"].as_str()),
        (Some("alpha"), Some("beta"))
    );
    assert!(
        swap["restarted"].as_array().is_some_and(|r| r.is_empty()),
        "{swap}"
    );
    eprintln!("live swap took {} ms", swap["duration_ms"]);
    let pids_after: Vec<Option<u32>> = names.iter().map(|n| w.pane_pid(n)).collect();
    assert_eq!(
        pids_before, pids_after,
        "a Claude Code process was restarted"
    );
    let requests = w.api.requests();
    for (i, t) in tasks.iter().enumerate() {
        let file = format!("out-{i}.txt");
        assert_eq!(lines(&project.join(&file)), steps(8), "{t}: {file}");
        assert_task_once(&project, t, "done");
        let mine: Vec<_> = requests
            .iter()
            .filter(|r| r.script.as_deref().is_some_and(|s| s.contains(&file)))
            .collect();
        let refused: Vec<_> = mine
            .iter()
            .filter(|r| r.status != 200)
            .map(|r| (r.step, r.status, r.account.clone()))
            .collect();
        assert!(
            refused.is_empty(),
            "{t}: requests not answered: {refused:?}"
        );
        // One turn: every request of it carries the one directive prompt,
        // no continuation was typed.
        assert!(
            mine.iter().all(|r| !r.prompt.contains("Continue the task")),
            "{t}: a continuation prompt was typed"
        );
        let answer = mine
            .iter()
            .find(|r| r.step == Some(9))
            .expect("the final answer");
        assert_eq!(
            answer.account.as_deref(),
            Some("beta"),
            "{t}: its end on beta"
        );
        // One turn moved mid-way: its first steps went out as alpha, the
        // later ones as beta, and never back.
        let mut by_time = mine.clone();
        by_time.sort_by_key(|r| r.at);
        let accounts: Vec<&str> = by_time
            .iter()
            .map(|r| r.account.as_deref().unwrap_or("?"))
            .collect();
        let first_beta = accounts.iter().position(|a| *a == "beta").unwrap();
        assert!(first_beta > 0, "{t}: began on alpha: {accounts:?}");
        assert!(
            accounts[first_beta..].iter().all(|a| *a == "beta"),
            "{t}: {accounts:?}"
        );
        eprintln!(
            "{t}: steps on alpha {first_beta}, on beta {}",
            accounts.len() - first_beta
        );
        let r = task_result(&project, t);
        assert!(
            r["last_assistant_message"]
                .as_str()
                .is_some_and(|a| a.contains(&format!("script done: 8 steps into {file}"))),
            "{r}"
        );
    }
    // The sessions that made requests since are confirmed on beta by their
    // own readings; the idle ones are confirmed lazily, at their next one.
    let on_beta = status["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["account"] == "beta" && s["account_confirmed_at"].is_string())
        .count();
    assert!(on_beta >= 3, "{status}");
    // The seat holds beta's login, alpha's home its own.
    let seat = std::fs::read(w.sb.seat.join(".credentials.json")).unwrap();
    let beta = std::fs::read(w.sb.account("beta").unwrap().home.join(".credentials.json")).unwrap();
    assert_eq!(seat, beta);
}

/// Must-show 2: a refusal mid-turn. The session waits on the limit screen;
/// the live swap follows, the session gets Escape and the continuation
/// prompt, and the task finishes on beta with every step.
#[test]
fn a_refusal_mid_turn_swaps_live_and_the_task_goes_on_on_beta() {
    let Some(mut w) = live_world("live-refuse", 1) else {
        return;
    };
    let project = w.sb.project_dirs[0].1.clone();
    w.start_daemon(&[]);
    w.wait_state("ccl-auto-11", "idle", UP);
    enqueue_task(
        &project,
        "refused-live",
        "Record each step.\n\nSTANDIN-SCRIPT steps=8 file=out-r.txt delay_ms=100 refuse_at=3\n",
    );
    // Its turn under way (after the relaunch into the project's folder).
    wait_for(Duration::from_secs(120), "step 1", || {
        w.api
            .requests()
            .iter()
            .any(|r| r.step == Some(1))
            .then_some(())
    });
    let pid = w.pane_pid("ccl-auto-11");
    assert_eq!(
        wait_task_ended(&project, "refused-live", Duration::from_secs(300)),
        "done"
    );
    assert_eq!(lines(&project.join("out-r.txt")), steps(8));
    assert_task_once(&project, "refused-live", "done");
    let r = task_result(&project, "refused-live");
    assert_eq!(r["account"], "beta", "{r}");
    assert_eq!(w.pane_pid("ccl-auto-11"), pid, "the session was restarted");
    let mine: Vec<_> = w
        .api
        .requests()
        .into_iter()
        .filter(|r| r.script.as_deref().is_some_and(|s| s.contains("out-r.txt")))
        .collect();
    let refused: Vec<_> = mine.iter().filter(|r| r.status == 429).collect();
    assert_eq!(refused.len(), 1, "{mine:#?}");
    assert_eq!(refused[0].account.as_deref(), Some("alpha"));
    assert!(
        mine.iter()
            .filter(|r| r.at > refused[0].at)
            .all(|r| r.account.as_deref() == Some("beta")),
        "after the refusal every request went out as beta"
    );
    let status = w.status().unwrap();
    assert_eq!(status["last_swap"]["mode"], "live");
    assert_eq!(status["active_account"], "beta");
}

/// What the refresher helper issued: per account, every refresh token in
/// order (the last one is the only valid one), and what went wrong.
#[derive(Default)]
struct Ledger {
    issued: std::collections::BTreeMap<String, Vec<String>>,
    refreshes: usize,
    /// The seat's file changed while the helper held the lock: someone
    /// wrote without it.
    unlocked_writes: Vec<String>,
    /// The seat held a refresh token that was not its account's newest
    /// (a used one: the account would be logged out at its next refresh).
    stale_tokens: Vec<String>,
}

fn refresh_token_of(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v["claudeAiOauth"]["refreshToken"]
        .as_str()
        .map(String::from)
}

/// One refresh as Claude Code's refresher does it: take the refresh lock in
/// the seat (mkdir, owner file), read the file, rewrite it with a new access
/// and refresh token for the account it holds, release.
fn refresh_once(seat: &Path, ledger: &std::sync::Mutex<Ledger>, n: usize) {
    let lock = seat.join(".oauth_refresh.lock");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::create_dir(&lock).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the refresh lock was never free"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let owner = seat.join(".oauth_refresh.lock.owner");
    std::fs::write(&owner, format!("{} helper\n", std::process::id())).unwrap();
    let path = seat.join(".credentials.json");
    let before = std::fs::read(&path).unwrap();
    let mut l = ledger.lock().unwrap();
    let current = refresh_token_of(&before).unwrap();
    let account = l
        .issued
        .iter()
        .find(|(_, list)| list.contains(&current))
        .map(|(a, _)| a.clone());
    match account {
        None => l.stale_tokens.push(format!("unknown token {current}")),
        Some(account) => {
            if l.issued[&account].last() != Some(&current) {
                l.stale_tokens
                    .push(format!("{account}: a used refresh token in the seat"));
            }
            let refresh = format!("sk-ant-ort01-{account}-r{n}");
            let body = serde_json::json!({"claudeAiOauth": {
                "accessToken": format!("sk-ant-oat01-sandbox-{account}"),
                "refreshToken": refresh,
                "expiresAt": 4_102_444_800_000u64 + n as u64,
                "scopes": ["user:inference", "user:profile"],
                "subscriptionType": "max"}});
            l.issued.get_mut(&account).unwrap().push(refresh);
            l.refreshes += 1;
            drop(l);
            // Hold the lock a moment, as a refresh round trip does: nothing
            // else may write the file meanwhile.
            std::thread::sleep(Duration::from_millis(3));
            if std::fs::read(&path).unwrap() != before {
                ledger
                    .lock()
                    .unwrap()
                    .unlocked_writes
                    .push(format!("during refresh {n}"));
            }
            let tmp = seat.join(format!(".credentials.json.tmp-helper-{n}"));
            std::fs::write(&tmp, serde_json::to_vec(&body).unwrap()).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
    }
    let _ = std::fs::remove_file(&owner);
    std::fs::remove_dir(&lock).unwrap();
}

/// Must-show 3: the refresh race. A helper that behaves like Claude Code's
/// refresher (the lock, then a new access and refresh token for the account
/// the seat holds) runs against 200 live swaps back and forth. Afterwards
/// each account's home holds its own newest refresh token (by the helper's
/// ledger), the seat holds the active account's, no used token was ever in
/// the seat, and nothing wrote the seat while the helper held the lock.
#[test]
fn two_hundred_live_swaps_race_a_refresher_and_no_refresh_token_is_lost() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let Some(mut w) = World::new("live-race", |spec| {
        spec.swap_mode = "live".into();
        spec.pools[0].min = 0;
        spec.quota_yaml = "  poll_interval: 1h\n  swap_cooldown: 1h\n".into();
    }) else {
        return;
    };
    let seat = w.sb.seat.clone();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for a in ["alpha", "beta"] {
        let bytes = std::fs::read(w.sb.account(a).unwrap().home.join(".credentials.json")).unwrap();
        ledger
            .lock()
            .unwrap()
            .issued
            .insert(a.into(), vec![refresh_token_of(&bytes).unwrap()]);
    }
    w.start_daemon(&[]);
    wait_for(UP, "the daemon", || w.status());
    let token = w.token();
    let stop = Arc::new(AtomicBool::new(false));
    let helper = {
        let (seat, ledger, stop) = (seat.clone(), ledger.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                refresh_once(&seat, &ledger, n);
                std::thread::sleep(Duration::from_millis(1 + (n % 7) as u64));
            }
        })
    };
    let url = |to: &str| format!("http://{}/swap?to={to}&reason=race", w.sb.http_listen);
    let mut done = 0;
    for i in 0..200 {
        let to = if i % 2 == 0 { "beta" } else { "alpha" };
        let answer = ureq::post(&url(to))
            .set("Authorization", &format!("Bearer {token}"))
            .timeout(Duration::from_secs(30))
            .call();
        match answer {
            Ok(r) => {
                let v: serde_json::Value = r.into_json().unwrap();
                assert_eq!(v["result"], "done", "swap {i}: {v}");
                done += 1;
            }
            Err(e) => panic!("swap {i} to {to}: {e}"),
        }
    }
    // The last refreshes reach the homes (within a second of each).
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    helper.join().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let l = ledger.lock().unwrap();
    assert_eq!(done, 200);
    assert!(
        l.refreshes >= 200,
        "only {} refreshes raced the swaps",
        l.refreshes
    );
    assert!(l.unlocked_writes.is_empty(), "{:?}", l.unlocked_writes);
    assert!(l.stale_tokens.is_empty(), "{:?}", l.stale_tokens);
    let active = w.status().unwrap()["active_account"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(active, "alpha", "200 swaps from alpha end on alpha");
    for a in ["alpha", "beta"] {
        let home = std::fs::read(w.sb.account(a).unwrap().home.join(".credentials.json")).unwrap();
        let newest = l.issued[a].last().unwrap();
        assert_eq!(
            refresh_token_of(&home).as_ref(),
            Some(newest),
            "{a}'s home lost its newest refresh token ({} issued)",
            l.issued[a].len()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(w.sb.account(a).unwrap().home.join(".credentials.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{a}");
    }
    let in_seat = std::fs::read(seat.join(".credentials.json")).unwrap();
    assert_eq!(
        refresh_token_of(&in_seat).as_ref(),
        l.issued[&active].last()
    );
    eprintln!(
        "200 live swaps, {} refreshes (alpha {}, beta {})",
        l.refreshes,
        l.issued["alpha"].len() - 1,
        l.issued["beta"].len() - 1
    );
    // Nothing credential-bearing in the log.
    let log = support::daemon_log(&w.h, 0);
    assert!(!log.contains("sk-ant-ort01"), "a refresh token in the log");
}

fn signal(pid: u32, sig: &str) {
    assert!(std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// Must-show 4: `kill -9` of the daemon (a fail point that aborts it) at
/// each live-swap phase, with a token refreshed in the seat just before.
/// After the restart: no journal, every session on the one active account,
/// the seat holding the active account's login, and each account's home its
/// newest refresh token (by the ledger). Before the seat is written the swap
/// rolls back; once it is, it finishes.
#[test]
fn a_kill_at_each_live_swap_phase_converges_with_no_login_lost() {
    use std::sync::Mutex;
    let Some(mut w) = live_world("live-kill", 1) else {
        return;
    };
    let seat = w.sb.seat.clone();
    let ledger = Mutex::new(Ledger::default());
    for a in ["alpha", "beta"] {
        let bytes = std::fs::read(w.sb.account(a).unwrap().home.join(".credentials.json")).unwrap();
        ledger
            .lock()
            .unwrap()
            .issued
            .insert(a.into(), vec![refresh_token_of(&bytes).unwrap()]);
    }
    let mut pid = w.start_daemon(&[]);
    w.wait_state("ccl-auto-11", "idle", UP);
    let session_pid = w.pane_pid("ccl-auto-11");
    let mut on = "alpha".to_string();
    let mut n = 0;
    for phase in ["checkpoint", "lock", "keep", "seat", "seat-written", "flip"] {
        signal(pid, "-TERM");
        wait_for(Duration::from_secs(10), "daemon stopped", || {
            w.h.try_exit_status(pid)
        });
        let fp = format!("swap-{phase}");
        pid = w.start_daemon(&[("CLAUDE_FAILOVER_FAILPOINT", fp.as_str())]);
        wait_for(UP, "the daemon answering", || w.status());
        // Claude Code refreshed the active account's token in the seat just now.
        n += 1;
        refresh_once(&seat, &ledger, n);
        signal(pid, "-USR1");
        let code = wait_for(UP, &format!("the daemon to crash at {fp}"), || {
            w.h.try_exit_status(pid)
        });
        assert_ne!(code, Some(0), "{fp}: the fail point should have crashed it");
        let journal = w.sb.state_dir.join("swap.journal");
        assert!(journal.exists(), "{fp}: the crash left its journal");
        pid = w.start_daemon(&[]);
        let s = wait_for(UP, &format!("{fp}: the restarted daemon"), || {
            w.status().filter(|s| {
                s["last_swap"]["result"]
                    .as_str()
                    .is_some_and(|r| r.ends_with("after_restart"))
            })
        });
        let active = s["active_account"].as_str().unwrap().to_string();
        let other = if on == "alpha" { "beta" } else { "alpha" };
        // Until the seat is written (`seat` is the phase's start) it rolls back;
        // once it is (`seat-written`: only its content tells), it finishes.
        let forward = ["seat-written", "flip"].contains(&phase);
        let expect = if forward {
            other.to_string()
        } else {
            on.clone()
        };
        assert_eq!(active, expect, "{fp}: {s}");
        assert_eq!(
            s["last_swap"]["result"],
            if forward {
                "finished_after_restart"
            } else {
                "rolled_back_after_restart"
            },
            "{fp}"
        );
        assert!(!journal.exists(), "{fp}: journal left behind");
        assert!(
            !seat.join(".oauth_refresh.lock").exists(),
            "{fp}: the dead daemon's lock is still there"
        );
        // Within a second the seat and the active home agree; every home
        // holds its newest refresh token.
        wait_for(
            Duration::from_secs(5),
            &format!("{fp}: seat and homes settled"),
            || {
                let l = ledger.lock().unwrap();
                let seat_token =
                    refresh_token_of(&std::fs::read(seat.join(".credentials.json")).ok()?);
                let homes_ok = ["alpha", "beta"].iter().all(|a| {
                    let home =
                        std::fs::read(w.sb.account(a).unwrap().home.join(".credentials.json")).ok();
                    home.and_then(|h| refresh_token_of(&h)).as_ref() == l.issued[*a].last()
                });
                (homes_ok && seat_token.as_ref() == l.issued[&active].last()).then_some(())
            },
        );
        let l = ledger.lock().unwrap();
        assert!(l.stale_tokens.is_empty(), "{fp}: {:?}", l.stale_tokens);
        drop(l);
        assert_eq!(
            w.pane_pid("ccl-auto-11"),
            session_pid,
            "{fp}: the session was restarted"
        );
        eprintln!("{fp}: {} → {active}", on);
        on = active;
    }
}

/// Must-show 5: a session that does not pick the new login up. The test
/// launches `ccl-auto-12` by hand with alpha's home as its config dir (the
/// same Claude Code, arguments and environment the daemon gave it, but
/// outside the seat) while the daemon is stopped; the daemon adopts it. A
/// live swap to beta follows; the session's next request still goes out as
/// alpha, so `verify_timeout` after that request it is restarted under the
/// seat, the swap's result names it, and its next request goes out as beta.
/// The session in the seat is confirmed and left alone.
#[test]
fn a_session_outside_the_seat_is_restarted_verify_timeout_after_its_next_request() {
    let Some(mut w) = World::new("live-stray", |spec| {
        spec.swap_mode = "live".into();
        spec.pools[0].min = 2;
        spec.pools[0].max = 2;
        spec.quota_yaml = "  poll_interval: 2s\n  swap_cooldown: 0s\n".into();
        spec.extra_yaml = "swap:\n  verify_timeout: 4s\n".into();
    }) else {
        return;
    };
    w.api
        .set_resets("beta", now() + 3 * 3600, now() + 5 * 86400)
        .unwrap();
    let seat = w.sb.seat.clone();
    let alpha_home = w.sb.account("alpha").unwrap().home.clone();
    let pid = w.start_daemon(&[]);
    for name in session_names(2) {
        w.wait_state(&name, "idle", UP);
    }
    signal(pid, "-TERM");
    wait_for(Duration::from_secs(10), "daemon stopped", || {
        w.h.try_exit_status(pid)
    });
    // Relaunch ccl-auto-12 by hand under alpha's home, with the seat's
    // settings (hooks, status line) and trust, so only the config dir differs.
    let old = w.pane_pid("ccl-auto-12").expect("ccl-auto-12 runs");
    let argv: Vec<String> = std::fs::read(format!("/proc/{old}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let env: Vec<String> = std::fs::read(format!("/proc/{old}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .filter(|kv| !kv.starts_with("CLAUDE_CONFIG_DIR="))
        .collect();
    let cwd = std::fs::read_link(format!("/proc/{old}/cwd")).unwrap();
    for f in ["settings.json", ".claude.json"] {
        std::fs::copy(seat.join(f), alpha_home.join(f)).unwrap();
    }
    let tmux = |args: &[&str]| {
        let out = std::process::Command::new("tmux")
            .arg("-L")
            .arg(&w.h.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
    };
    tmux(&["kill-session", "-t", "=ccl-auto-12"]);
    let mut args: Vec<String> = [
        "new-session",
        "-d",
        "-s",
        "ccl-auto-12",
        "-x",
        "200",
        "-y",
        "50",
        "-c",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(cwd.to_string_lossy().into_owned());
    args.extend(["env".to_string(), "-i".to_string()]);
    args.extend(env);
    args.push(format!("CLAUDE_CONFIG_DIR={}", alpha_home.display()));
    args.extend(argv);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    tmux(&refs);
    let stray = wait_for(Duration::from_secs(10), "the hand-made session", || {
        w.pane_pid("ccl-auto-12")
    });
    let kept = w.pane_pid("ccl-auto-11").unwrap();

    w.start_daemon(&[]);
    for name in session_names(2) {
        w.wait_state(&name, "idle", UP);
    }
    let token = w.token();
    let url = format!("http://{}/swap", w.sb.http_listen);
    let swap = ureq::post(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .send_json(serde_json::json!({"to": "beta"}));
    assert!(swap.is_ok(), "{swap:?}");
    wait_for(UP, "the live swap to beta", || {
        w.status()
            .filter(|s| s["active_account"] == "beta" && s["last_swap"]["mode"] == "live")
    });
    // Both sessions make a request.
    let before = w.api.requests().len();
    w.type_prompt("ccl-auto-11", "Say hello.");
    w.type_prompt("ccl-auto-12", "Say hello.");
    let first = wait_for(Duration::from_secs(60), "the stray's request", || {
        w.api.requests()[before..]
            .iter()
            .find(|r| {
                r.path.starts_with("/v1/messages")
                    && r.prompt.contains("Say hello")
                    && r.account.as_deref() == Some("alpha")
            })
            .map(|r| r.at)
    });
    let s = wait_for(Duration::from_secs(60), "the stray restarted", || {
        w.status().filter(|s| {
            s["last_swap"]["restarted"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        })
    });
    assert_eq!(
        s["last_swap"]["restarted"],
        serde_json::json!(["ccl-auto-12"]),
        "{s}"
    );
    // Within verify_timeout (4 s) of its request, plus a tick and a margin
    // for a loaded machine.
    let took = first.elapsed().unwrap_or_default();
    assert!(
        took <= Duration::from_secs(4 + 6),
        "restarted {took:?} after its request"
    );
    let relaunched = wait_for(UP, "ccl-auto-12 back under the seat", || {
        let p = w.pane_pid("ccl-auto-12")?;
        let dir = claude_failover::daemon::session_watcher::process_env(p, "CLAUDE_CONFIG_DIR")?;
        (p != stray && Path::new(&dir) == seat).then_some(p)
    });
    assert_ne!(relaunched, stray);
    assert_eq!(
        w.pane_pid("ccl-auto-11"),
        Some(kept),
        "the seated session was restarted"
    );
    w.wait_state("ccl-auto-12", "idle", UP);
    let before = w.api.requests().len();
    w.type_prompt("ccl-auto-12", "Say hello again.");
    let account = wait_for(Duration::from_secs(60), "its next request", || {
        w.api.requests()[before..]
            .iter()
            .find(|r| r.path.starts_with("/v1/messages") && r.prompt.contains("Say hello again"))
            .map(|r| r.account.clone())
    });
    assert_eq!(account.as_deref(), Some("beta"));
    // The seated one's prompt went out as beta, with no restart.
    assert!(w
        .api
        .requests()
        .iter()
        .any(|r| r.path.starts_with("/v1/messages")
            && r.prompt.contains("Say hello.")
            && r.account.as_deref() == Some("beta")));
}
