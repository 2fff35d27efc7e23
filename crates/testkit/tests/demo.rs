//! The demo (`claude-failover-demo`) end to end, as a user runs it: the
//! binary with the real Claude Code. It must tell the whole story (every task done, every
//! session moved to beta, the failover time) and leave nothing behind: no
//! tmux server on its socket, no temp folder, no daemon, no Claude Code.
//! Interrupted midway with Ctrl-C (SIGINT), it must clean up just the same
//! and say it was interrupted.
//!
//! The demo runs the product binary, `claude-failover`, which it finds next
//! to itself (see `testkit::product`). `cargo test --workspace` (what
//! `scripts/test.sh` runs) builds it before any test starts; run alone
//! (`cargo test -p claude-failover-testkit --test demo`), build it first with
//! `cargo build -p claude-failover`.

use testkit::world as support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// The demo's own deadline is 4 minutes; clean-up takes seconds more.
const WHOLE_RUN: Duration = Duration::from_secs(330);
/// From start to the first session idle (a cold Claude Code start included).
const FIRST_IDLE: Duration = Duration::from_secs(120);
/// From SIGINT to the demo's exit, clean-up included.
const AFTER_SIGINT: Duration = Duration::from_secs(60);

/// A running demo whose stdout and stderr are read line by line.
struct Demo {
    child: Child,
    lines: Receiver<String>,
    out: Vec<String>,
}

impl Demo {
    fn start(claude: &Path) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_claude-failover-demo"))
            .arg("--claude")
            .arg(claude)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start claude-failover-demo");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for stream in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Demo {
            child,
            lines,
            out: Vec::new(),
        }
    }

    fn text(&self) -> String {
        self.out.join("\n")
    }

    /// Reads lines until one satisfies `pred`; panics with the output so far
    /// after `timeout`.
    fn wait_line(&mut self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = pred(&line);
                    self.out.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no line with {what} within {timeout:?}; output so far:\n{}",
                        self.text()
                    );
                }
            }
        }
    }

    /// Waits for the demo to exit (killing it after `timeout`), reads the
    /// rest of its output and returns its exit code.
    fn finish(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for the demo") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.out.push(line);
                }
                panic!(
                    "the demo did not end within {timeout:?}; output:\n{}",
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // Both readers end at EOF: the channel then disconnects.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.out.push(line);
        }
        status.code()
    }

    /// The value printed after `key` (e.g. `sandbox:`) at the start of a line.
    fn field(&self, key: &str) -> Option<String> {
        self.out.iter().find_map(|l| {
            l.trim_start()
                .strip_prefix(key)
                .map(|v| v.trim().to_string())
        })
    }
}

/// Processes whose working folder or command line is inside `root`.
fn processes_inside(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || !claude_failover::sys::process::alive(pid) {
            continue;
        }
        let cwd = std::fs::read_link(entry.path().join("cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cwd.starts_with(&root) || cmdline.contains(&root) {
            found.push(format!("pid {pid} cwd {cwd} cmd {cmdline}"));
        }
    }
    found
}

/// No tmux server on the demo's socket, no temp folder, no daemon, no
/// process working inside the folder.
fn assert_nothing_left(demo: &Demo) {
    let out = demo.text();
    let sandbox = PathBuf::from(
        demo.field("sandbox:")
            .unwrap_or_else(|| panic!("no sandbox line:\n{out}")),
    );
    let socket = demo
        .field("tmux socket:")
        .unwrap_or_else(|| panic!("no tmux socket line:\n{out}"));
    assert!(socket.starts_with("claude-failover-demo-"), "{socket}");
    assert!(
        !sandbox.exists(),
        "the temp folder {} is left behind:\n{out}",
        sandbox.display()
    );
    let ls = Command::new("tmux")
        .args(["-L", &socket, "list-sessions"])
        .output()
        .expect("run tmux");
    let said = String::from_utf8_lossy(&ls.stderr).into_owned();
    assert!(
        !ls.status.success()
            && (said.contains("no server running") || said.contains("error connecting")),
        "a tmux server still answers on {socket}: {}{said}\n{out}",
        String::from_utf8_lossy(&ls.stdout)
    );
    if let Some(pid) = demo.field("daemon pid:") {
        let pid: u32 = pid.parse().unwrap_or_else(|_| panic!("daemon pid {pid:?}"));
        assert!(
            !claude_failover::sys::process::alive(pid),
            "the daemon (pid {pid}) is still running:\n{out}"
        );
    }
    // Claude Code may take a moment to go once its tmux server is gone; the
    // demo waits for it, so this should already hold.
    let left = processes_inside(&sandbox);
    assert!(
        left.is_empty(),
        "processes left in the demo's folder: {left:#?}\n{out}"
    );
}

#[test]
fn the_demo_runs_every_task_fails_over_and_leaves_nothing_behind() {
    let Some(claude) = support::e2e_claude() else {
        return;
    };
    let mut demo = Demo::start(&claude);
    let code = demo.finish(WHOLE_RUN);
    let out = demo.text();
    assert_eq!(code, Some(0), "the demo failed:\n{out}");
    assert!(out.contains("TIMELINE") && out.contains("SUMMARY"), "{out}");
    let field = |k: &str| {
        demo.field(k)
            .unwrap_or_else(|| panic!("no {k} line:\n{out}"))
    };
    assert!(field("tasks done:").starts_with("6/6"), "{out}");
    // Live mode: the three Claude Code processes went through the swap.
    assert!(
        field("sessions moved:").starts_with(
            "3/3 from alpha to beta (live: 3 Claude Code processes kept through the swap, 0 restarted"
        ),
        "{out}"
    );
    assert!(
        field("failover time:").contains("alpha → beta, done"),
        "{out}"
    );
    assert!(field("total time:").ends_with('s'), "{out}");
    assert!(field("result:").starts_with("OK"), "{out}");
    // The story, in order: a session idle on alpha, the swap, sessions on beta.
    let at = |needle: &str| {
        out.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{out}"))
    };
    assert!(
        at(" idle on alpha") < at("SWAP    done: alpha → beta"),
        "{out}"
    );
    assert!(
        at("SWAP    done: alpha → beta") < at("SWAP    live: the seat now holds beta's login"),
        "{out}"
    );
    assert!(
        at("SWAP    done: alpha → beta") < out.rfind(" idle on beta").unwrap_or(0),
        "{out}"
    );
    assert!(out.contains("CLEAN-UP"), "{out}");
    assert_nothing_left(&demo);
}

#[test]
fn ctrl_c_midway_cleans_up_and_says_interrupted() {
    let Some(claude) = support::e2e_claude() else {
        return;
    };
    let mut demo = Demo::start(&claude);
    demo.wait_line(FIRST_IDLE, "a session idle", |l| {
        l.contains("session ") && l.contains(" idle on ")
    });
    let pid = demo.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill")
        .success());
    let code = demo.finish(AFTER_SIGINT);
    let out = demo.text();
    assert_ne!(
        code,
        Some(0),
        "an interrupted demo must not say it passed:\n{out}"
    );
    assert!(
        code.is_some(),
        "the demo should exit, not die of the signal:\n{out}"
    );
    assert!(out.contains("interrupted"), "{out}");
    assert!(!out.contains("result:          OK"), "{out}");
    assert_nothing_left(&demo);
}
