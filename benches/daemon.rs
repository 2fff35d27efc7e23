//! Benchmarks of the daemon core, printed as figures (no timed assertions):
//!
//! - `claude-failover hook` wall time per event (median, p99; target median ≤ 5 ms);
//! - tmux processes spawned per idle reconcile turn (target 1);
//! - daemon RSS and CPU over a window with 10 idle real Claude Code sessions.
//!
//! The swap's timing, in both modes, is `benches/live_swap.rs`'s.
//!
//! Needs the pinned Claude Code (scripts/test.sh installs it). Run with
//! `CLAUDE_FAILOVER_E2E=1 cargo bench --bench daemon`; `BENCH_IDLE_SECS`
//! sets the idle window (default 300).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::World;

fn main() {
    // cargo bench passes --bench; nothing else to parse.
    // Needs no Claude Code: the pool keeps no session.
    http_abuse();
    let Some(claude) = support::e2e_claude() else {
        eprintln!("set CLAUDE_FAILOVER_E2E=1 (scripts/bench.sh does)");
        return;
    };
    println!("claude: {}", claude.display());
    hook_wall_time();
    status_throughput();
    dispatch_latency();
    idle_daemon();
}

/// The daemon under 2,000 idle and half-sent connections and a 1 GiB header
/// line, at `ulimit -n 256` (issue 12.8/12.9): peak RSS and `/status`
/// latency while it lasts.
fn http_abuse() {
    let mut h = support::Harness::new("bench-abuse");
    let mut spec = testkit::sandbox::SandboxSpec {
        claude_binary: "/bin/true".into(),
        tmux_socket: h.socket.clone(),
        ..Default::default()
    };
    spec.pools[0].min = 0;
    let sb = testkit::sandbox::Sandbox::create(&h.path().join("sandbox"), &spec).unwrap();
    let config = sb.config_path.to_string_lossy().into_owned();
    let pid = h.spawn_bin(&["--config", &config, "run"], &[]);
    let healthz = format!("http://{}/healthz", sb.http_listen);
    support::wait_for(Duration::from_secs(30), "the daemon up", || {
        ureq::get(&healthz).call().ok().map(|_| ())
    });
    let limit = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 256,
    };
    // SAFETY: prlimit on our own child with a valid struct.
    unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    let before = support::rss_kb(pid);
    let r = support::attack(&sb.http_listen, pid, 2000);
    let alive = h.try_exit_status(pid).is_none();
    println!(
        "HTTP abuse (ulimit -n 256): {} idle/half-sent connections, a header line cut after {} MiB; RSS {} kB before, {} kB peak; /status {} answers during it: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; daemon {} (target RSS < 50 MB, every /status answered, daemon running)",
        r.idle,
        r.line_bytes >> 20,
        before,
        r.peak_rss_kb,
        r.latencies.len(),
        r.p(50).as_secs_f64() * 1000.0,
        r.p(99).as_secs_f64() * 1000.0,
        r.p(100).as_secs_f64() * 1000.0,
        if alive { "still running" } else { "EXITED" }
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// `GET /status` requests per second and p99 latency on loopback with 20
/// sessions known (the scripted fake agent keeps 20 sessions cheap).
fn status_throughput() {
    let mut h = support::Harness::new("bench-status");
    let (sb, pid) = support::fake_agent_daemon(&mut h, 20, Duration::from_secs(120));
    let url = format!("http://{}/status", sb.http_listen);
    let window = Duration::from_secs(5);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(5))
                    .build();
                let mut lat = Vec::new();
                let t0 = Instant::now();
                while t0.elapsed() < window {
                    let t = Instant::now();
                    let body = agent
                        .get(&url)
                        .call()
                        .expect("status")
                        .into_string()
                        .expect("body");
                    assert!(body.contains("ccl-auto-30"));
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<f64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "GET /status with 20 sessions known, 4 clients on loopback: {:.0} requests/s, median {:.2} ms, p99 {:.2} ms",
        all.len() as f64 / window.as_secs_f64(),
        percentile(&all, 0.5),
        percentile(&all, 0.99)
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// From a task renamed into an inbox (the `enqueue` call) to its
/// `UserPromptSubmit` hook, with idle real sessions, over 100 tasks.
fn dispatch_latency() {
    let Some(mut w) = World::new("bench-dispatch", |spec| {
        spec.pools[0].min = 3;
        spec.pools[0].max = 3;
    }) else {
        return;
    };
    // A user hook beside ours stamps each UserPromptSubmit with the time.
    let stamps = w.h.path().join("ups.log");
    for a in &w.sb.accounts {
        let path = a.home.join("settings.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let cmd = format!(
            "sh -c 'printf \"%s \" $(date +%s%N) >> {0}; tr -d \"\\n\" >> {0}; echo >> {0}'",
            stamps.display()
        );
        v["hooks"]["UserPromptSubmit"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"hooks": [{"type": "command", "command": cmd}]}));
        std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }
    let pid = w.start_daemon(&[]);
    for i in 11..14 {
        w.wait_state(&format!("ccl-auto-{i}"), "idle", Duration::from_secs(120));
    }
    let project = w.sb.project_dirs[0].1.clone();
    let done = |n: &str| {
        project
            .join(".agent-queue/done")
            .join(format!("{n}.md"))
            .is_file()
    };
    let stamp_of = |text: &str| -> Option<u128> {
        let log = std::fs::read_to_string(&stamps).ok()?;
        log.lines()
            .find(|l| l.contains(text))
            .and_then(|l| l.split(' ').next()?.parse().ok())
    };
    // Warm-up: every session moves into the project's folder.
    for i in 0..6 {
        let name = format!("warm{i}");
        claude_failover::store::queue::enqueue(
            &project,
            None,
            format!("bench warm-up {i}").as_bytes(),
            Some(&name),
            std::time::SystemTime::now(),
        )
        .unwrap();
        support::wait_for(Duration::from_secs(60), "warm-up done", || {
            done(&name).then_some(())
        });
    }
    let mut ms = Vec::new();
    for i in 0..100 {
        std::thread::sleep(Duration::from_millis(600)); // sessions idle and cleared
        let name = format!("d{i:03}");
        let text = format!("bench-dispatch {i:03}");
        let t0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        claude_failover::store::queue::enqueue(
            &project,
            None,
            text.as_bytes(),
            Some(&name),
            std::time::SystemTime::now(),
        )
        .unwrap();
        let t1 = support::wait_for(Duration::from_secs(30), "UserPromptSubmit stamp", || {
            stamp_of(&text)
        });
        ms.push((t1.saturating_sub(t0)) as f64 / 1e6);
        support::wait_for(Duration::from_secs(30), "task done", || {
            done(&name).then_some(())
        });
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "dispatch latency, task renamed into inbox → UserPromptSubmit, idle real sessions: median {:.0} ms, p99 {:.0} ms over {} tasks (target median ≤ 250 ms)",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.len()
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn hook_wall_time() {
    let dir = tempfile::tempdir().unwrap();
    let payload = br#"{"session_id":"0b5e6c4e-1111-2222-3333-444455556666","transcript_path":"/x.jsonl","cwd":"/srv","hook_event_name":"UserPromptSubmit","prompt":"do the task","prompt_id":"p1","permission_mode":"default"}"#;
    let mut times = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        let mut child = Command::new(support::bin())
            .arg("hook")
            .env("CLAUDE_FAILOVER_STATE_DIR", dir.path())
            .env("CLAUDE_FAILOVER_SESSION", "ccl-auto-11")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(payload).unwrap();
        assert!(child.wait().unwrap().success());
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let written = std::fs::read_dir(dir.path().join("events"))
        .unwrap()
        .count();
    assert_eq!(written, 300, "every hook call recorded its event");
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "hook wall time per event: median {:.2} ms, p99 {:.2} ms over {} runs (target median ≤ 5 ms)",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.len()
    );
}

/// (RSS kB, utime+stime clock ticks) of `pid`.
fn proc_usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    (rss, ticks)
}

fn idle_daemon() {
    let idle_secs: u64 = std::env::var("BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let Some(mut w) = World::new("bench-idle", |spec| {
        spec.pools[0].min = 10;
        spec.pools[0].max = 10;
        spec.extra_yaml.push_str("lifecycle:\n  interval: 1s\n");
    }) else {
        return;
    };
    // Count every tmux the daemon runs through a logging wrapper first on PATH.
    let wrap = w.h.path().join("wrap");
    std::fs::create_dir_all(&wrap).unwrap();
    let log = w.h.path().join("tmux-calls.log");
    let real = support_which("tmux");
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
        log.display(),
        real
    );
    std::fs::write(wrap.join("tmux"), script).unwrap();
    std::fs::set_permissions(wrap.join("tmux"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        wrap.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let pid = w.start_daemon(&[("PATH", path.as_str())]);
    for i in 11..21 {
        w.wait_state(&format!("ccl-auto-{i}"), "idle", Duration::from_secs(120));
    }
    // Let start-up traffic settle, then measure an idle window.
    std::thread::sleep(Duration::from_secs(3));
    let calls_before = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();
    let (rss0, ticks0) = proc_usage(pid);
    let t0 = Instant::now();
    let mut rss_max = rss0;
    while t0.elapsed() < Duration::from_secs(idle_secs) {
        std::thread::sleep(Duration::from_secs(1));
        rss_max = rss_max.max(proc_usage(pid).0);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (rss1, ticks1) = proc_usage(pid);
    let calls: Vec<String> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .skip(calls_before)
        .map(String::from)
        .collect();
    let turns = calls
        .iter()
        .filter(|c| c.contains("list-sessions"))
        .count()
        .max(1);
    let hz = 100.0; // USER_HZ on Linux
    let cpu = (ticks1 - ticks0) as f64 / hz / elapsed * 100.0;
    println!(
        "idle daemon, 10 real sessions, {elapsed:.0} s: RSS {} kB at start, {} kB at end, {} kB max; CPU {cpu:.2}% of one core",
        rss0, rss1, rss_max
    );
    println!(
        "tmux processes per idle reconcile turn: {:.2}, {} calls over {} turns (target 1)",
        calls.len() as f64 / turns as f64,
        calls.len(),
        turns
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

fn support_which(name: &str) -> String {
    claude_failover::sys::process::which(name)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string())
}
