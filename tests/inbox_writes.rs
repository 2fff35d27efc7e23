//! How files arrive in an inbox, through the real daemon and the scripted
//! fake agent (tests/fixtures/fake-claude.py: no Claude Code behaviour is
//! involved here, only the queue's): in-place writes wait for the settle
//! time, over-long names end in failed/ with a reason instead of a claim
//! loop, and `enqueue` refuses what the queue could not hold.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{wait_for, Harness};
use testkit::sandbox::{Sandbox, SandboxPool, SandboxSpec};

/// A sandbox (one project, `demo`; a pool of two) whose sessions run the
/// fake agent, hooks installed.
fn sandbox(name: &str) -> (Harness, Sandbox) {
    assert!(
        Command::new("python3").arg("--version").output().is_ok(),
        "python3 is needed for the fake agent"
    );
    let h = Harness::new(name);
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
    (h, sb)
}

struct Daemon {
    h: Harness,
    sb: Sandbox,
    pid: u32,
    inbox: PathBuf,
}

impl Daemon {
    /// Gives a second task (or a failure) time to show, then checks there
    /// is none: `t` is the only task, done once.
    fn assert_only_task_t(&self) {
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            self.ls("done"),
            ["t.md", "t.result.json"],
            "exactly one task"
        );
        assert!(
            self.ls("failed").is_empty(),
            "nothing failed: {:?}",
            self.ls("failed")
        );
    }

    /// A daemon with two idle fake sessions and one project, `demo`.
    fn start(name: &str) -> Daemon {
        let (mut h, sb) = sandbox(name);
        h.watch_state_dir(sb.state_dir.clone());
        let config = sb.config_path.to_string_lossy().into_owned();
        let pid = h.spawn_bin(&["--config", &config, "run"], &[]);
        let inbox = sb.project_dirs[0].1.join(".agent-queue/inbox");
        let d = Daemon { h, sb, pid, inbox };
        d.wait_idle(2);
        d
    }

    fn status(&self) -> Option<serde_json::Value> {
        ureq::get(&format!("http://{}/status", self.sb.http_listen))
            .timeout(Duration::from_secs(2))
            .call()
            .ok()?
            .into_json()
            .ok()
    }

    fn wait_idle(&self, n: usize) {
        wait_for(Duration::from_secs(60), "idle sessions", || {
            let s = self.status()?;
            (s["sessions"]
                .as_array()?
                .iter()
                .filter(|x| x["state"] == "idle")
                .count()
                >= n)
                .then_some(())
        });
    }

    fn queue(&self, folder: &str) -> PathBuf {
        self.sb.project_dirs[0].1.join(".agent-queue").join(folder)
    }

    /// Non-dot names in a queue folder, sorted.
    fn ls(&self, folder: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.queue(folder))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Runs `script` with `sh` in the inbox, as an operator's shell would.
    fn shell(&self, script: &str) {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&self.inbox)
            .status()
            .unwrap()
            .success();
        assert!(ok, "{script}");
    }

    fn log(&self) -> String {
        support::daemon_log(&self.h, 0)
    }

    /// The daemon's CPU time (user + system) so far, from /proc.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap();
        // Fields after the command name (which is in parentheses).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// Waits until `name` is in done/ and nothing is left in inbox/ and
    /// active/; returns the done file's content and its answer.
    fn wait_done(&self, name: &str) -> (String, String) {
        wait_for(Duration::from_secs(30), &format!("{name} done"), || {
            let done = self.ls("done");
            (done.contains(&format!("{name}.result.json"))
                && self.ls("inbox").is_empty()
                && self.ls("active").is_empty())
            .then_some(())
        });
        let content = std::fs::read_to_string(self.queue("done").join(format!("{name}.md")))
            .expect("done file");
        let result: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.queue("done").join(format!("{name}.result.json"))).unwrap(),
        )
        .unwrap();
        let answer = result["last_assistant_message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        (content, answer)
    }
}

/// `touch t.md`, then a write a moment later: the touch's close is not a
/// finished task. Before the fix the empty file was claimed at once and went
/// to failed/ ("no prompt"), and the write then became a second task.
#[test]
fn touch_then_write_is_one_task_with_the_final_content() {
    let d = Daemon::start("touch-write");
    // The pause is well inside the settle time, and long enough for a
    // dispatcher that trusted the close to claim the empty file.
    d.shell("touch t.md; sleep 0.2; echo 'the final text' > t.md");
    let (content, answer) = d.wait_done("t");
    assert_eq!(content, "the final text\n");
    assert_eq!(answer, "FAKE-ANSWER: the final text");
    d.assert_only_task_t();
}

/// `>` then `>>`: one task with both parts. Before the fix the first close
/// ran `ONE` alone and the append ran as a second task.
#[test]
fn redirect_then_append_is_one_task_with_the_final_content() {
    let d = Daemon::start("append");
    // One line in the end (the fake agent takes a prompt per line).
    d.shell("printf 'ONE' > t.md; sleep 0.2; printf ' TWO\\n' >> t.md");
    let (content, answer) = d.wait_done("t");
    assert_eq!(content, "ONE TWO\n");
    assert_eq!(answer, "FAKE-ANSWER: ONE TWO");
    d.assert_only_task_t();
}

/// Names of 200 and 250 bytes (with `.md`) written into the inbox, and
/// 300 bytes asked of `enqueue`: each ends done or failed with a reason, or
/// is refused, and nothing loops. Before the fix a name of 225–251 bytes
/// was claimed and undone about 2000 times a second (its marker's temp name
/// was too long for the file system).
#[test]
fn over_long_names_end_done_or_failed_without_a_claim_loop() {
    let d = Daemon::start("long-names");
    let name_200 = "a".repeat(197); // 200 bytes with `.md`: within the cap
    let name_250 = "b".repeat(247); // 250 bytes with `.md`: over it
    let cpu_before = d.cpu();
    let t0 = Instant::now();
    for (name, text) in [(&name_200, "two hundred"), (&name_250, "two hundred fifty")] {
        std::fs::write(d.inbox.join(format!("{name}.md")), text).unwrap();
    }
    // A 300-byte name cannot exist on Linux (255 at most): the only way to
    // ask for one is enqueue's name hint, which refuses it.
    let err = claude_failover::store::queue::enqueue(
        &d.sb.project_dirs[0].1,
        None,
        b"three hundred",
        Some(&format!("{}.md", "c".repeat(297))),
        std::time::SystemTime::now(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("longer than 200 bytes"), "{err}");
    let (_, answer) = d.wait_done(&name_200);
    assert_eq!(answer, "FAKE-ANSWER: two hundred");
    let failed = wait_for(
        Duration::from_secs(30),
        "the 250-byte task in failed/",
        || {
            let f = d.ls("failed");
            (f.len() == 2).then_some(f)
        },
    );
    // A shortened name that fits with every suffix, and its reason.
    let short = claude_failover::store::queue::short_stem(&name_250);
    assert_eq!(
        failed,
        [format!("{short}.error.json"), format!("{short}.md")],
        "{failed:?}"
    );
    assert!(short.len() + ".error.json".len() < 160, "{short}");
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.queue("failed").join(format!("{short}.error.json"))).unwrap(),
    )
    .unwrap();
    let reason = record["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("file name too long: 247 bytes before `.md`, the limit is 200")
            && reason.contains(&name_250),
        "{reason}"
    );
    assert_eq!(
        std::fs::read_to_string(d.queue("failed").join(format!("{short}.md"))).unwrap(),
        "two hundred fifty",
        "nothing is lost"
    );
    // Then a few seconds of quiet: no claim loop in the log or on the CPU.
    std::thread::sleep(Duration::from_secs(4));
    let window = t0.elapsed();
    let cpu = d.cpu() - cpu_before;
    let log = d.log();
    let mentions = log.lines().filter(|l| l.contains(&name_250[..50])).count();
    let claims = log.lines().filter(|l| l.contains("cannot claim")).count();
    eprintln!(
        "long names: {mentions} log lines name the 250-byte task, {claims} failed claims, daemon CPU {:.1} % of a core over {:.1} s",
        100.0 * cpu.as_secs_f64() / window.as_secs_f64(),
        window.as_secs_f64()
    );
    assert!(mentions <= 3, "{mentions} log lines about it:\n{log}");
    assert_eq!(claims, 0, "{log}");
    assert!(
        cpu.as_secs_f64() < 0.15 * window.as_secs_f64(),
        "the daemon used {cpu:?} of CPU in {window:?}"
    );
}

/// `enqueue FILE` reads at most one byte over the 1 MiB cap and refuses a
/// bigger file (exit 1, one line) before writing anything; a FILE whose name
/// is over the cap is refused the same way.
#[test]
fn enqueue_refuses_over_size_files_and_over_long_names_before_writing() {
    let (h, sb) = sandbox("enqueue-caps");
    let config = sb.config_path.to_string_lossy().into_owned();
    let queue = sb.project_dirs[0].1.join(".agent-queue");
    let big = h.path().join("big.md");
    // Sparse: 1 GiB that costs nothing to make; reading it whole would.
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    let long = h.path().join(format!("{}.md", "d".repeat(240)));
    std::fs::write(&long, "a fine prompt").unwrap();
    for (file, want) in [
        (&big, "too big: 1048577 bytes"),
        (&long, "longer than 200 bytes"),
    ] {
        let t = Instant::now();
        let out = Command::new(support::bin())
            .args(["--config", &config, "enqueue", "--project", "demo"])
            .arg(file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    // Nothing written: no file anywhere in the queue (temp files included).
    fn files(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                files(&e.path(), out);
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    let mut made = Vec::new();
    files(&queue, &mut made);
    assert!(made.is_empty(), "{made:?}");
}
