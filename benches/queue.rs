//! Benchmarks of the task queue, printed as figures (no timed assertions
//! beyond the targets noted):
//!
//! - idle daemon CPU with 100,000 tasks in done/ (target < 1 % of a core),
//!   with the scripted fake agent (tests/fixtures/fake-claude.py) in the
//!   sessions, since no Claude Code behaviour is involved;
//! - the cost of one janitor round over those 100,000 (amortised over
//!   `janitor.interval`, 5 min by default);
//! - a scan and a claim with 10,000 tasks waiting: file reads and time.
//!
//! Run with `cargo bench --bench queue`; `BENCH_IDLE_SECS` sets the idle
//! window (default 30).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use claude_failover::config::JanitorConfig;
use claude_failover::store::queue::{Folder, Queue};
use testkit::sandbox::{Sandbox, SandboxPool, SandboxSpec};

const DONE: usize = 100_000;

fn main() {
    idle_daemon_with_100k_done();
    claim_with_10k_waiting();
}

/// 100,000 done tasks, each with its result.json, as a queue within the
/// default 7-day retention holds them.
fn fill_done(queue_root: &Path) {
    let done = queue_root.join("done");
    std::fs::create_dir_all(&done).unwrap();
    let finished = claude_failover::sys::time::rfc3339(SystemTime::now());
    for i in 0..DONE {
        std::fs::write(done.join(format!("t{i:06}.md")), "a finished task\n").unwrap();
        std::fs::write(
            done.join(format!("t{i:06}.result.json")),
            format!(
                "{{\"last_assistant_message\":\"ok\",\"claude_session_id\":null,\"account\":\"alpha\",\"session\":\"ccl-auto-11\",\"attempt\":1,\"started_at\":null,\"finished_at\":\"{finished}\"}}\n"
            ),
        )
        .unwrap();
    }
}

/// utime + stime of `pid`, from /proc.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn idle_daemon_with_100k_done() {
    let window = Duration::from_secs(
        std::env::var("BENCH_IDLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    let mut h = support::Harness::new("bench-queue");
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-claude.py");
    let spec = SandboxSpec {
        claude_binary: fake.to_string_lossy().into_owned(),
        tmux_socket: h.socket.clone(),
        pools: vec![SandboxPool {
            name: "auto".into(),
            prefix: "ccl-auto-".into(),
            start_index: 11,
            min: 2,
            max: 2,
            model: None,
        }],
        ..SandboxSpec::default()
    };
    let sb = Sandbox::create(&h.path().join("sandbox"), &spec).unwrap();
    sb.install_hooks(support::bin()).unwrap();
    let project = sb.project_dirs[0].1.clone();
    let t = Instant::now();
    fill_done(&project.join(".agent-queue"));
    println!(
        "queue: {DONE} done tasks (+ results) written in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let config = sb.config_path.to_string_lossy().into_owned();
    let pid = h.spawn_bin(&["--config", &config, "run"], &[]);
    let url = format!("http://{}/status", sb.http_listen);
    support::wait_for(Duration::from_secs(60), "2 idle sessions", || {
        let v: serde_json::Value = ureq::get(&url).call().ok()?.into_json().ok()?;
        let idle = v["sessions"]
            .as_array()?
            .iter()
            .filter(|x| x["state"] == "idle")
            .count();
        (idle == 2 && v["queues"]["demo"]["done"] == DONE).then_some(())
    });
    // Let start-up settle, then measure.
    std::thread::sleep(Duration::from_secs(3));
    let status = project.join(".agent-queue/status.json");
    let status_mtime = || std::fs::metadata(&status).and_then(|m| m.modified()).ok();
    let (c0, m0, t0) = (cpu(pid), status_mtime(), Instant::now());
    std::thread::sleep(window);
    let (c1, m1, elapsed) = (cpu(pid), status_mtime(), t0.elapsed());
    let share = c1.saturating_sub(c0).as_secs_f64() / elapsed.as_secs_f64();
    println!(
        "idle daemon, {DONE} done tasks, 2 idle sessions: {:.2} % of a core over {:.0} s (target < 1 %); status.json rewritten during it: {}",
        100.0 * share,
        elapsed.as_secs_f64(),
        if m0 == m1 { "no" } else { "yes" }
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = h.try_exit_status(pid);

    // One janitor round over the same queue (nothing to archive: all within retention).
    let q = Queue::new("demo", &project);
    let cfg = JanitorConfig {
        interval: Duration::from_secs(300),
        stale_task_after: Duration::from_secs(2 * 3600),
        stale_while_waiting: false,
        done_retention: Duration::from_secs(7 * 86_400),
        max_attempts: 3,
    };
    let t = Instant::now();
    let report = q.janitor(SystemTime::now(), &cfg, &|_| false).unwrap();
    let round = t.elapsed();
    assert!(report.archived.is_empty());
    println!(
        "janitor round over {DONE} done tasks: {:.0} ms, i.e. {:.3} % of a core at the default 5 min interval",
        round.as_secs_f64() * 1000.0,
        100.0 * round.as_secs_f64() / 300.0
    );
    let t = Instant::now();
    q.tracked_counts(SystemTime::now()).unwrap();
    println!(
        "first (full) count of {DONE} done: {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let listed = q.folder_listings();
    let t = Instant::now();
    let n = 100;
    for _ in 0..n {
        q.tracked_counts(SystemTime::now()).unwrap();
    }
    println!(
        "tracked counts with {DONE} done, nothing changed: {:.1} µs each ({} folder listings for {n} calls; a full count lists 4)",
        t.elapsed().as_secs_f64() * 1e6 / n as f64,
        q.folder_listings() - listed
    );
}

fn claim_with_10k_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::new("bench", dir.path());
    q.ensure_layout().unwrap();
    for i in 0..10_000 {
        std::fs::write(
            q.folder(Folder::Inbox).join(format!("w{i:05}.md")),
            format!("---\npriority: {}\n---\nwaiting task {i}\n", i % 5),
        )
        .unwrap();
    }
    let later = SystemTime::now() + Duration::from_secs(5);
    let t = Instant::now();
    q.scan_inbox(later).unwrap();
    let first = t.elapsed();
    let reads0 = q.task_file_reads();
    let rounds = 50;
    let t = Instant::now();
    for _ in 0..rounds {
        let scan = q.scan_inbox(later).unwrap();
        q.claim(&scan.ready[0], "s", "a", later).unwrap();
    }
    let per = t.elapsed() / rounds;
    println!(
        "10,000 waiting: first scan {:.0} ms ({reads0} file reads); then scan + claim {:.1} ms and {:.1} file reads each",
        first.as_secs_f64() * 1000.0,
        per.as_secs_f64() * 1000.0,
        (q.task_file_reads() - reads0) as f64 / rounds as f64
    );
}
