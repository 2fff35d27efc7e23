//! Soak, with the scripted fake agent (tests/fixtures/fake-claude.py), fast
//! enough for hundreds of tasks: 500 tasks over 3 projects and 6 sessions
//! while sessions are killed at random and the daemon is `kill -9`'d twice.
//! Every task must end in done/ exactly once. (The end-to-end tests run the
//! real Claude Code; this one is about the bookkeeping under churn.)

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use claude_failover::store::queue;
use support::{wait_for, Harness};
use testkit::sandbox::{Sandbox, SandboxPool, SandboxSpec};

const TASKS: usize = 500;

fn count(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
                .count()
        })
        .unwrap_or(0)
}

/// A tiny deterministic PRNG (xorshift): no extra crate, same run every time.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn five_hundred_tasks_survive_random_kills_and_two_daemon_crashes() {
    if Command::new("python3").arg("--version").output().is_err() {
        panic!("python3 is needed for the fake agent");
    }
    let mut h = Harness::new("soak");
    let fake: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-claude.py");
    let spec = SandboxSpec {
        claude_binary: fake.to_string_lossy().into_owned(),
        tmux_socket: h.socket.clone(),
        pools: vec![SandboxPool {
            name: "auto".into(),
            prefix: "ccl-auto-".into(),
            start_index: 11,
            min: 6,
            max: 6,
            model: None,
        }],
        projects: vec![
            ("p1".into(), "auto".into()),
            ("p2".into(), "auto".into()),
            ("p3".into(), "auto".into()),
        ],
        // Random kills can land on the session running the same task again
        // and again (seen under load: three in a row, so the task failed
        // after its 3 attempts, as it should). The soak is about exactly
        // once, not the attempt limit (tests/real_tasks.rs covers that):
        // attempts are not the budget here.
        extra_yaml:
            "lifecycle:\n  interval: 1s\n  restart_backoff: [1s]\njanitor:\n  max_attempts: 1000\n"
                .into(),
        ..SandboxSpec::default()
    };
    let sb = Sandbox::create(&h.path().join("sandbox"), &spec).unwrap();
    sb.install_hooks(support::bin()).unwrap();
    h.watch_state_dir(sb.state_dir.clone());
    let config = sb.config_path.to_string_lossy().into_owned();
    let mut pid = h.spawn_bin(&["--config", &config, "run"], &[]);
    let url = format!("http://{}/status", sb.http_listen);
    let status = || -> Option<serde_json::Value> {
        ureq::get(&url)
            .timeout(Duration::from_secs(2))
            .call()
            .ok()?
            .into_json()
            .ok()
    };
    wait_for(Duration::from_secs(60), "six idle sessions", || {
        let s = status()?;
        (s["sessions"]
            .as_array()?
            .iter()
            .filter(|x| x["state"] == "idle")
            .count()
            == 6)
            .then_some(())
    });
    let projects: Vec<PathBuf> = sb.project_dirs.iter().map(|(_, d)| d.clone()).collect();
    for i in 0..TASKS {
        let p = &projects[i % 3];
        queue::enqueue(
            p,
            Some((i % 5) as i64),
            format!("soak task {i:03}").as_bytes(),
            Some(&format!("s{i:03}")),
            SystemTime::now(),
        )
        .unwrap();
    }
    let done = || {
        projects
            .iter()
            .map(|p| count(&p.join(".agent-queue/done"), ".md"))
            .sum::<usize>()
    };
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let started = Instant::now();
    let mut crashes = 0;
    let mut kills = 0;
    let mut last_progress = Instant::now();
    while done() < TASKS {
        assert!(
            started.elapsed() < Duration::from_secs(420),
            "only {} of {TASKS} done after 420 s",
            done()
        );
        std::thread::sleep(Duration::from_millis(700));
        let d = done();
        // Progress, for a failure's output (a stall shows where it began).
        if last_progress.elapsed() > Duration::from_secs(10) {
            last_progress = Instant::now();
            eprintln!(
                "soak: {d} done after {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
        // Two daemon crashes, at a third and at two thirds of the way.
        if (crashes == 0 && d > TASKS / 3) || (crashes == 1 && d > 2 * TASKS / 3) {
            assert!(Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap()
                .success());
            wait_for(Duration::from_secs(10), "daemon gone", || {
                h.try_exit_status(pid)
            });
            crashes += 1;
            pid = h.spawn_bin(&["--config", &config, "run"], &[]);
            continue;
        }
        // A random session killed about every other round.
        if rng.next() % 2 == 0 {
            let victim = format!("ccl-auto-{}", 11 + rng.next() % 6);
            if h.tmux.kill_session(&victim).is_ok() {
                kills += 1;
            }
        }
    }
    assert_eq!(crashes, 2, "the daemon was crashed twice");
    assert!(kills >= 5, "sessions were killed at random ({kills})");
    // Exactly once: every name in done/, nowhere else; nothing in failed/.
    for i in 0..TASKS {
        let p = &projects[i % 3];
        let name = format!("s{i:03}");
        let q = p.join(".agent-queue");
        assert!(
            q.join("done").join(format!("{name}.md")).is_file(),
            "{name} not done"
        );
        assert!(
            q.join("done").join(format!("{name}.result.json")).is_file(),
            "{name} has no result"
        );
        for folder in ["inbox", "active", "failed"] {
            assert!(
                !q.join(folder).join(format!("{name}.md")).exists(),
                "{name} also in {folder}/"
            );
        }
        let result: serde_json::Value = serde_json::from_slice(
            &std::fs::read(q.join("done").join(format!("{name}.result.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            result["last_assistant_message"],
            format!("FAKE-ANSWER: soak task {i:03}"),
            "{name}"
        );
    }
    assert_eq!(done(), TASKS, "no duplicates");
    eprintln!(
        "soak: {TASKS} tasks in {:.0} s with {kills} session kills and {crashes} daemon crashes",
        started.elapsed().as_secs_f64()
    );
}
