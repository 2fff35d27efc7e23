//! Live swap and restart swap side by side, in one run, on the real Claude
//! Code against the stand-in (issue 15, must-show 6). Printed figures, no
//! timed assertions:
//!
//! - for 1, 10 and 20 idle sessions: trigger (`POST /swap`) → the new token
//!   in force for every session (live: the seat rewritten; restart: every
//!   session relaunched and idle under the target), checked afterwards by a
//!   request from every session that must carry the target's token; beside
//!   it the time of N Claude Code cold starts launched at once (targets: live
//!   ≤ 50 ms for any N; restart ≤ 1.5× the N cold starts), each the
//!   median of `BENCH_RUNS` runs (default 3);
//! - three sessions in the middle of eight-step agentic turns: trigger → each
//!   running turn's next request carries the target's token, and how many
//!   turns were interrupted (their Claude Code stopped before the turn's
//!   final answer; target 0 in live mode).
//!
//! Run with `CLAUDE_FAILOVER_E2E=1 cargo bench --bench live_swap`
//! (`scripts/bench.sh` does).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use support::{enqueue_task, wait_for, wait_task_ended, World};

const UP: Duration = Duration::from_secs(240);

fn main() {
    if support::e2e_claude().is_none() {
        eprintln!("set CLAUDE_FAILOVER_E2E=1 (scripts/bench.sh does)");
        return;
    }
    // BENCH_SIZES=20 runs one size (default 1,10,20); BENCH_NO_TURNS skips
    // the agentic-turns part.
    let sizes: Vec<u32> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1,10,20".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    // BENCH_RUNS (default 3): each figure is the median of that many runs,
    // cold starts and swaps taken in turn so that both see the same
    // machine (one run of one Claude Code start varies 0.4–0.9 s here);
    // the ratio is of the two medians, and every run's pair is printed.
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    for n in sizes {
        let mut colds = Vec::new();
        let mut restarts = Vec::new();
        let mut lives = Vec::new();
        for _ in 0..runs {
            colds.push(cold_starts(n));
            restarts.push(idle_swap("restart", n));
            lives.push(idle_swap("live", n));
        }
        let live = median_run(&lives);
        let restart = median_run(&restarts);
        let cold = median(colds.clone());
        let every = |r: &[(Duration, bool, u64, u64, String)]| r.iter().all(|x| x.1);
        let each = |v: Vec<String>| v.join(" / ");
        println!(
            "swap of {n:>2} idle session(s), live: trigger → answer {:.1} ms (median of {runs}; runs {} ms; switcher {} ms, the seat written after {} ms of it; phases: {}), every next request as beta: {} (target ≤ 50 ms)",
            ms(live.0),
            each(lives.iter().map(|l| format!("{:.1}", ms(l.0))).collect()),
            live.2,
            live.3,
            live.4,
            every(&lives),
        );
        println!(
            "swap of {n:>2} idle session(s), restart: trigger → all relaunched on beta {:.2} s (phases: {}), every next request as beta: {}; {n} cold starts at once {:.2} s; ratio {:.2}, medians of {runs} (runs, swap/cold: {}) (target ≤ 1.5)",
            restart.0.as_secs_f64(),
            restart.4,
            every(&restarts),
            cold.as_secs_f64(),
            restart.0.as_secs_f64() / cold.as_secs_f64(),
            each(
                restarts
                    .iter()
                    .zip(&colds)
                    .map(|(r, c)| {
                        format!("{:.2}/{:.2} s [{}]", r.0.as_secs_f64(), c.as_secs_f64(), r.4)
                    })
                    .collect()
            ),
        );
    }
    if std::env::var_os("BENCH_NO_TURNS").is_some() {
        return;
    }
    for mode in ["live", "restart"] {
        let (next, interrupted, finished_first, turns) = busy_swap(mode);
        let running = turns - finished_first;
        println!(
            "swap during {turns} agentic turns, {mode}: trigger → every running turn's next request as beta {}; turns interrupted {interrupted}/{turns}{}{}",
            match next {
                Some(d) if finished_first == 0 => format!("{:.2} s", d.as_secs_f64()),
                Some(d) => format!("{:.2} s (the {running} still running)", d.as_secs_f64()),
                None => "n/a (none was still running)".into(),
            },
            if mode == "live" { " (target 0)" } else { "" },
            if finished_first > 0 {
                format!("; {finished_first} gave its final answer as alpha before the swap answered")
            } else {
                String::new()
            },
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The run whose time is the median (its phases go with it).
fn median_run<T: Clone>(runs: &[(Duration, bool, u64, u64, T)]) -> (Duration, bool, u64, u64, T) {
    let mut sorted: Vec<_> = runs.to_vec();
    sorted.sort_by_key(|r| r.0);
    sorted[sorted.len() / 2].clone()
}

fn world(name: &str, mode: &str, n: u32, extra: &str) -> World {
    World::new(name, |spec| {
        spec.swap_mode = mode.into();
        spec.pools[0].min = n;
        spec.pools[0].max = n;
        spec.quota_yaml = "  poll_interval: 2s\n  swap_cooldown: 0s\n".into();
        spec.extra_yaml = format!(
            "lifecycle:\n  interval: 2s\nswap:\n  stop_timeout: 5s\n  verify_timeout: 30s\n{extra}"
        );
    })
    .expect("CLAUDE_FAILOVER_E2E is set")
}

fn names(n: u32) -> Vec<String> {
    (11..11 + n).map(|i| format!("ccl-auto-{i}")).collect()
}

/// `n` Claude Code cold starts launched at once in tmux (restart mode's
/// homes, no daemon): launch → every one's SessionStart hook. Claude Code
/// now and then fires no SessionStart for a process that came up (seen
/// once here in ten starts at once; public reports say the same): such a
/// run is said and taken again, at most three times.
fn cold_starts(n: u32) -> Duration {
    for attempt in 1..=3 {
        match cold_start_once(n) {
            Ok(took) => return took,
            Err(missing) => println!(
                "cold starts of {n}, attempt {attempt}: no SessionStart from {missing} within {UP_COLD:?} (Claude Code fired none); taken again"
            ),
        }
    }
    panic!("three runs of {n} cold starts each lost a SessionStart");
}

/// How long one cold start run waits for every SessionStart.
const UP_COLD: Duration = Duration::from_secs(90);

fn cold_start_once(n: u32) -> Result<Duration, String> {
    let w = world("bench-cold", "restart", 0, "");
    let events = w.sb.state_dir.join("events");
    let t = Instant::now();
    for k in 0..n {
        support::launch_by_hand(
            &w.h,
            &w.sb,
            &w.api.base_url(),
            &w.claude,
            &format!("cold-{k}"),
            "alpha",
        );
    }
    // Names, not files: one session's two SessionStarts must not stand in
    // for another's missing one.
    let started = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir(&events)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .filter(|t| t.contains("SessionStart"))
                    .filter_map(|t| {
                        let v: serde_json::Value = serde_json::from_str(&t).ok()?;
                        v["session"].as_str().map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    loop {
        let seen = started();
        if seen.len() >= n as usize {
            return Ok(t.elapsed());
        }
        if t.elapsed() > UP_COLD {
            let missing: Vec<String> = (0..n)
                .map(|k| format!("cold-{k}"))
                .filter(|c| !seen.contains(c))
                .collect();
            return Err(missing.join(", "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every session's prompt `p` reached the stand-in as beta.
fn all_ask_as_beta(w: &World, names: &[String]) -> bool {
    names.iter().all(|name| {
        let p = format!("bench: after the swap, {name}");
        let answered = (0..5).find_map(|_| {
            w.type_prompt(name, &p);
            w.api
                .wait_for_request(|r| r.prompt == p, Duration::from_secs(10))
        });
        answered.is_some_and(|r| r.account.as_deref() == Some("beta"))
    })
}

/// Trigger → the new token in force for every idle session, and whether
/// every session's next request then carried it.
fn idle_swap(mode: &str, n: u32) -> (Duration, bool, u64, u64, String) {
    let mut w = world(&format!("bench-{mode}"), mode, n, "");
    let pid = w.start_daemon(&[]);
    let names = names(n);
    for name in &names {
        w.wait_state(name, "idle", UP);
    }
    // Give each a conversation, so restart mode has one to resume.
    w.give_each_a_conversation(&names, "bench");
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let answer = w.swap_to("beta", "bench");
    assert_eq!(answer["result"], "done", "{answer}");
    let took = if mode == "live" {
        // The answer comes once the seat holds beta: from then on every
        // request of every session carries beta's token.
        t.elapsed()
    } else {
        w.wait_all(&names, "beta", "idle", UP);
        t.elapsed()
    };
    let ok = all_ask_as_beta(&w, &names);
    let switcher_ms = answer["duration_ms"].as_u64().unwrap_or(0);
    // Live: the phases up to the seat's write (checkpoint, lock, keep,
    // seat): from then every request carries beta's token.
    let to_seat_ms: u64 = answer["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .take_while(|p| p["phase"] != "flip")
        .filter_map(|p| p["ms"].as_u64())
        .sum();
    // Each phase and its time, for reading where a swap's time goes.
    let phases = answer["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| format!("{} {}", p["phase"].as_str().unwrap_or("?"), p["ms"]))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(500));
    (took, ok, switcher_ms, to_seat_ms, phases)
}

/// Three sessions in eight-step turns (800 ms between steps: the five
/// steps left after step 3 outlast restart mode's 2 s drain), swapped at
/// step 3: trigger → each running turn's next request as beta (the slowest),
/// the turns whose Claude Code was stopped before their final answer, and
/// those that gave their final answer as alpha before the swap answered (a
/// slow machine; they have no next request to time, and when none is left
/// the time is `None`).
fn busy_swap(mode: &str) -> (Option<Duration>, usize, usize, usize) {
    let turns = 3u32;
    let mut w = world(
        &format!("bench-busy-{mode}"),
        mode,
        turns,
        "  drain_timeout: 2s\n",
    );
    w.start_daemon(&[]);
    let names = names(turns);
    for name in &names {
        w.wait_state(name, "idle", UP);
    }
    let project = w.sb.project_dirs[0].1.clone();
    for k in 0..turns {
        enqueue_task(
            &project,
            &format!("turn-{k}"),
            &format!("Record each step.\n\nSTANDIN-SCRIPT steps=8 file=out-{k}.txt delay_ms=800\n"),
        );
    }
    let file = |k: u32| format!("file=out-{k}.txt");
    // Every turn at step 3 or later.
    wait_for(UP, "every turn at step 3", || {
        let reqs = w.api.requests();
        (0..turns)
            .all(|k| {
                reqs.iter().any(|r| {
                    r.step.is_some_and(|s| s >= 3)
                        && r.script.as_deref().is_some_and(|s| s.contains(&file(k)))
                })
            })
            .then_some(())
    });
    let panes: BTreeMap<String, Option<u32>> =
        names.iter().map(|n| (n.clone(), w.pane_pid(n))).collect();
    let at = SystemTime::now();
    let answer = w.swap_to("beta", "bench");
    let answered = SystemTime::now();
    assert_eq!(answer["result"], "done", "{answer}");
    for k in 0..turns {
        assert_eq!(
            wait_task_ended(&project, &format!("turn-{k}"), UP),
            "done",
            "turn-{k}"
        );
    }
    // Each turn's first request as beta after the trigger, from the
    // stand-in's record. A turn with none must have given its final answer
    // as alpha before the swap answered (it ended in the drain, or during
    // the live write); one as alpha after that is a swap that did not take.
    let reqs = w.api.requests();
    let mut slowest: Option<Duration> = None;
    let mut finished_first = 0;
    for k in 0..turns {
        let of_k: Vec<&testkit::standin::RecordedRequest> = reqs
            .iter()
            .filter(|r| r.script.as_deref().is_some_and(|s| s.contains(&file(k))))
            .collect();
        if let Some(first) = of_k
            .iter()
            .find(|r| r.at >= at && r.account.as_deref() == Some("beta"))
        {
            let after = first.at.duration_since(at).unwrap_or_default();
            slowest = Some(slowest.unwrap_or_default().max(after));
            continue;
        }
        let answered_as_alpha = of_k.iter().find(|r| {
            r.step == Some(9) && r.status == 200 && r.account.as_deref() == Some("alpha")
        });
        match answered_as_alpha {
            Some(r) if r.at < answered => finished_first += 1,
            _ => panic!(
                "{mode}: turn-{k} made no request as beta after the swap and did not end as alpha before the swap answered; its requests (step, account, status): {:?}",
                of_k.iter()
                    .map(|r| (r.step, r.account.clone(), r.status))
                    .collect::<Vec<_>>()
            ),
        }
    }
    // Interrupted: its Claude Code was stopped before the turn's final
    // answer. In restart mode every process is replaced at the flip, so a
    // final answer as beta came after its process was stopped; in live mode
    // a final answer as beta came from the same process unless one was
    // replaced (pane pids compared).
    let reqs = w.api.requests();
    let restarted = panes.iter().filter(|(n, p)| w.pane_pid(n) != **p).count();
    let final_as_beta = (0..turns)
        .filter(|k| {
            reqs.iter().any(|r| {
                r.step == Some(9)
                    && r.account.as_deref() == Some("beta")
                    && r.script.as_deref().is_some_and(|s| s.contains(&file(*k)))
            })
        })
        .count();
    let interrupted = if restarted == 0 {
        0
    } else {
        final_as_beta.min(restarted)
    };
    (slowest, interrupted, finished_first, turns as usize)
}
