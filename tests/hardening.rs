//! A daemon nobody can knock over (issue 12): one daemon per state folder,
//! a control plane that survives idle connections and endless header lines,
//! refuses unauthenticated and cross-origin requests, a quota monitor that
//! survives a huge `Retry-After` and whose death is noticed, and commands
//! that end cleanly on a closed pipe.
//!
//! Most tests here need no Claude Code: the pool has no sessions (min 0),
//! the daemon runs everything else. The swap test is end to end.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{attack, rss_kb, wait_for, Harness, World};
use testkit::sandbox::{Sandbox, SandboxSpec};

const UP: Duration = Duration::from_secs(30);

/// A sandbox whose pool keeps no session: the daemon without Claude Code.
struct Bare {
    h: Harness,
    sb: Sandbox,
}

fn bare(name: &str, tweak: impl FnOnce(&mut SandboxSpec)) -> Bare {
    let mut h = Harness::new(name);
    let mut spec = SandboxSpec {
        claude_binary: "/bin/true".into(),
        tmux_socket: h.socket.clone(),
        ..SandboxSpec::default()
    };
    spec.pools[0].min = 0;
    tweak(&mut spec);
    let sb = Sandbox::create(&h.path().join("sandbox"), &spec).expect("sandbox");
    h.watch_state_dir(sb.state_dir.clone());
    Bare { h, sb }
}

impl Bare {
    fn start(&mut self, env: &[(&str, &str)]) -> u32 {
        let config = self.sb.config_path.to_string_lossy().into_owned();
        self.h.spawn_bin(&["--config", &config, "run"], env)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.sb.http_listen)
    }

    fn wait_healthy(&self) {
        wait_for(UP, "/healthz 200", || {
            ureq::get(&self.url("/healthz"))
                .timeout(Duration::from_secs(2))
                .call()
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        });
    }

    fn token(&self) -> String {
        let path = self.sb.state_dir.join("http.token");
        wait_for(UP, "the generated token", || {
            claude_failover::daemon::http::read_token(&path).ok()
        })
    }

    /// The daemon's combined output so far.
    fn log(&self, n: usize) -> String {
        support::daemon_log(&self.h, n)
    }

    fn wait_exit(&mut self, pid: u32, within: Duration) -> Option<i32> {
        wait_for(within, "the daemon to exit", || self.h.try_exit_status(pid))
    }
}

/// A copy of the config listening on another port.
fn config_on_another_port(config: &PathBuf, listen: &str) -> PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(config).unwrap();
    let other = text.replace(listen, &format!("127.0.0.1:{port}"));
    assert_ne!(text, other);
    let path = config.with_file_name("second.yaml");
    std::fs::write(&path, other).unwrap();
    path
}

fn code(r: Result<ureq::Response, ureq::Error>) -> u16 {
    match r {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(c, _)) => c,
        Err(e) => panic!("no answer: {e}"),
    }
}

/// Sends raw bytes and returns the status code of the answer, if any.
fn raw(addr: &str, request: &str) -> Option<u16> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    text.split(' ').nth(1)?.parse().ok()
}

#[test]
fn a_second_run_on_the_same_state_dir_exits_3_naming_the_first() {
    let mut b = bare("lock", |_| {});
    let first = b.start(&[]);
    b.wait_healthy();
    let active = b.sb.state_dir.join("active.json");
    let before = std::fs::read(&active).expect("active.json written by the first");
    let second_config = config_on_another_port(&b.sb.config_path, &b.sb.http_listen);
    let second =
        b.h.spawn_bin(&["--config", second_config.to_str().unwrap(), "run"], &[]);
    assert_eq!(b.wait_exit(second, UP), Some(3), "{}", b.log(1));
    let said = b.log(1);
    assert!(
        said.contains(&format!(
            "another claude-failover (pid {first}) holds {}",
            b.sb.state_dir.display()
        )),
        "{said}"
    );
    assert_eq!(said.lines().count(), 1, "one line: {said}");
    assert_eq!(
        std::fs::read(&active).unwrap(),
        before,
        "active.json untouched"
    );
    assert!(
        b.h.try_exit_status(first).is_none(),
        "the first keeps running"
    );
    b.wait_healthy();
}

#[test]
fn a_second_run_during_a_swap_exits_3_and_the_swap_completes_untouched() {
    let Some(mut w) = World::new("lock-swap", |spec| {
        spec.pools[0].min = 1;
        spec.extra_yaml.push_str("lifecycle:\n  interval: 1s\n");
    }) else {
        return;
    };
    let first = w.start_daemon(&[]);
    w.wait_state("ccl-auto-11", "idle", Duration::from_secs(90));
    let token = w.token();
    // A slow turn keeps the swap draining while the second daemon starts.
    w.api.set_latency(Duration::from_secs(6));
    w.type_prompt("ccl-auto-11", "lock: a slow turn");
    w.wait_state("ccl-auto-11", "working", Duration::from_secs(60));
    let journal = w.sb.state_dir.join("swap.journal");
    let second_config = config_on_another_port(&w.sb.config_path, &w.sb.http_listen);
    let (swap, second_code, journal_seen) = std::thread::scope(|scope| {
        let swap = scope.spawn(|| {
            let r = ureq::post(&format!(
                "http://{}/swap?to=beta&reason=lock+test",
                w.sb.http_listen
            ))
            .set("Authorization", &format!("Bearer {token}"))
            .timeout(Duration::from_secs(120))
            .call();
            match r {
                Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
                Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
                Err(e) => panic!("swap: {e}"),
            }
        });
        wait_for(Duration::from_secs(20), "the swap under way", || {
            (w.status()?["swap_in_progress"] == true && journal.exists()).then_some(())
        });
        let log = w.h.path().join("second-run.log");
        let mut second = std::process::Command::new(support::bin())
            .args(["--config", second_config.to_str().unwrap(), "run"])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("second run");
        // Bounded: a second daemon that does not stop is killed and fails the test.
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(s) = second.try_wait().unwrap() {
                break Some(s);
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = second.kill();
                let _ = second.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let code = status.and_then(|s| s.code());
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            said.contains(&format!("another claude-failover (pid {first}) holds")),
            "{said}"
        );
        (swap.join().unwrap(), code, journal.exists())
    });
    w.api.set_latency(Duration::ZERO);
    assert_eq!(second_code, Some(3));
    assert!(
        journal_seen || swap.0 == 200,
        "the live journal must survive the second run"
    );
    assert_eq!(swap.0, 200, "{}", swap.1);
    let s = w.status().unwrap();
    assert_eq!(s["active_account"], "beta", "{s}");
    assert_eq!(s["last_swap"]["result"], "done", "{s}");
    assert_eq!(s["partial_swap"], false, "{s}");
    let active: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.sb.state_dir.join("active.json")).unwrap())
            .unwrap();
    assert_eq!(active["account"], "beta");
    w.wait_state("ccl-auto-11", "idle", Duration::from_secs(90));
    assert_eq!(w.session("ccl-auto-11").unwrap()["account"], "beta");
    assert!(w.h.try_exit_status(first).is_none());
}

#[test]
fn without_the_token_a_post_is_refused_and_a_cross_origin_one_too() {
    let mut b = bare("auth", |_| {});
    b.start(&[]);
    b.wait_healthy();
    let token = b.token();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(b.sb.state_dir.join("http.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let addr = b.sb.http_listen.clone();
    let host = format!("Host: {addr}\r\n");
    // No token: refused.
    assert_eq!(code(ureq::post(&b.url("/reload")).call()), 401);
    // A browser-style cross-origin POST, no body, even carrying the token.
    let evil = format!(
        "POST /reload HTTP/1.1\r\n{host}Origin: http://evil.example\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    assert_eq!(raw(&addr, &evil), Some(403));
    let evil_no_token = format!(
        "POST /swap HTTP/1.1\r\n{host}Origin: http://evil.example\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(raw(&addr, &evil_no_token), Some(403));
    // DNS rebinding: a foreign name with our port.
    let port = addr.rsplit(':').next().unwrap();
    let rebound = format!("GET /status HTTP/1.1\r\nHost: evil.example:{port}\r\n\r\n");
    assert_eq!(raw(&addr, &rebound), Some(403));
    // Malformed or negative lengths: 400.
    let negative = format!("POST /reload HTTP/1.1\r\n{host}Content-Length: -1\r\n\r\n");
    assert_eq!(raw(&addr, &negative), Some(400));
    // With the token: answered; loopback reads need none.
    let ok = ureq::post(&b.url("/reload"))
        .set("Authorization", &format!("Bearer {token}"))
        .call();
    assert_eq!(code(ok), 200);
    assert_eq!(code(ureq::get(&b.url("/status")).call()), 200);
}

/// Issue 12, must-show 6: another local user (here `nobody`, run with
/// setpriv) can read neither the token nor reach the event socket, and its
/// POST is refused; the daemon goes on. Needs root to switch users: as any
/// other user the test says so and checks only what it can.
#[test]
fn another_local_user_can_neither_post_nor_read_the_token_nor_send_events() {
    let mut b = bare("other-user", |_| {});
    b.start(&[]);
    b.wait_healthy();
    let token = b.token();
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot run a command as another user; skipping that part");
        return;
    }
    // nobody must be able to reach the files' folder to be refused by their
    // modes, not by a closed parent folder.
    let mut dir = b.sb.state_dir.clone();
    loop {
        let _ = Command::new("chmod").arg("o+x").arg(&dir).status();
        if !dir.pop() || dir.as_os_str().len() <= 1 {
            break;
        }
    }
    let as_nobody = |script: &str| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["/usr/bin/python3", "-c", script])
            .output()
            .expect("setpriv");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    let token_file = b.sb.state_dir.join("http.token");
    let sock = b.sb.state_dir.join("events.sock");
    let url = b.url("/swap?to=beta");
    let script = format!(
        r#"
import os, socket, urllib.request, urllib.error
assert os.geteuid() == 65534
try:
    open({token:?}).read()
    print("token: READ")
except PermissionError:
    print("token: denied")
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect({sock:?})
    print("socket: CONNECTED")
except PermissionError:
    print("socket: denied")
try:
    urllib.request.urlopen(urllib.request.Request({url:?}, method="POST", data=b""), timeout=10)
    print("post: 200")
except urllib.error.HTTPError as e:
    print("post:", e.code)
"#,
        token = token_file.to_string_lossy(),
        sock = sock.to_string_lossy(),
        url = url,
    );
    let (exit, out, err) = as_nobody(&script);
    assert_eq!(exit, Some(0), "{out}\n{err}");
    assert_eq!(out, "token: denied\nsocket: denied\npost: 401", "{err}");
    // The daemon is still up, still on alpha, and answers its own user.
    let s: serde_json::Value = ureq::get(&b.url("/status"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(s["active_account"], "alpha");
    let ok = ureq::post(&b.url("/reload"))
        .set("Authorization", &format!("Bearer {token}"))
        .call();
    assert_eq!(code(ok), 200);
}

#[test]
fn on_a_non_loopback_listen_a_get_needs_the_token() {
    let mut b = bare("auth-wide", |spec| spec.http_listen = "0.0.0.0:0".into());
    let token_file = b.h.path().join("wide.token");
    std::fs::write(&token_file, "wide-open-sesame\n").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    b.sb.edit_config("http:\n", &format!("http:\n  token_file: {token_file:?}\n"));
    b.start(&[]);
    let port = b.sb.http_listen.rsplit(':').next().unwrap().to_string();
    let url = format!("http://127.0.0.1:{port}/status");
    wait_for(UP, "the daemon listening", || {
        TcpStream::connect(format!("127.0.0.1:{port}")).ok()
    });
    assert_eq!(code(ureq::get(&url).call()), 401);
    let with = ureq::get(&url)
        .set("Authorization", "Bearer wide-open-sesame")
        .call();
    assert_eq!(code(with), 200);
}

#[test]
fn a_token_file_others_can_read_stops_the_start_with_one_line() {
    let mut b = bare("auth-mode", |_| {});
    let path = b.sb.state_dir.join("http.token");
    std::fs::write(&path, "readable-by-all\n").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let pid = b.start(&[]);
    assert_eq!(b.wait_exit(pid, UP), Some(3));
    let said = b.log(0);
    assert!(
        said.contains("mode 0644") && said.contains("chmod 600"),
        "{said}"
    );
    assert_eq!(said.lines().count(), 1, "{said}");
}

#[test]
fn idle_connections_and_an_endless_header_line_leave_the_daemon_answering() {
    let mut b = bare("http-abuse", |_| {});
    let pid = b.start(&[]);
    b.wait_healthy();
    // The reported repro: 128 idle connections were enough at `ulimit -n 256`.
    let limit = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 256,
    };
    // SAFETY: prlimit on our own child with a valid struct.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let rss_before = rss_kb(pid);
    let addr = b.sb.http_listen.clone();
    let report = attack(&addr, pid, 2000);
    assert!(b.h.try_exit_status(pid).is_none(), "{}", b.log(0));
    println!(
        "abuse: {} idle connections opened, header line {} MiB sent before the daemon closed it; RSS {} kB before, {} kB peak; /status {} answers, p50 {:?}, p99 {:?}, max {:?}",
        report.idle,
        report.line_bytes >> 20,
        rss_before,
        report.peak_rss_kb,
        report.latencies.len(),
        report.p(50),
        report.p(99),
        report.p(100)
    );
    assert!(
        report.idle >= 1900,
        "only {} connections opened",
        report.idle
    );
    assert!(
        report.peak_rss_kb < 50 * 1024,
        "RSS {} kB",
        report.peak_rss_kb
    );
    // Every /status was answered (200, within the client's 5 s: `attack`
    // checks each). The issue asks p99 to be reported, printed above; with
    // about 100 samples p99 is the slowest one, which a loaded machine (and
    // this test's own flood threads) can stretch; nine in ten within a
    // second catches a daemon slowed by the attack.
    assert!(
        report.p(90) < Duration::from_secs(1),
        "p90 {:?}",
        report.p(90)
    );
    // And afterwards: still answering, still the same process.
    b.wait_healthy();
    assert!(b.h.try_exit_status(pid).is_none());
}

#[test]
fn a_huge_retry_after_neither_kills_the_monitor_nor_the_daemon() {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let base = format!("http://{}", server.server_addr().to_ip().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let r = tiny_http::Response::from_string("{}")
                .with_status_code(429)
                .with_header(
                    tiny_http::Header::from_bytes("Retry-After", "18446744073709551615").unwrap(),
                );
            let _ = req.respond(r);
        }
    });
    let mut b = bare("retry-after", |spec| spec.api_base_url = base.clone());
    let pid = b.start(&[]);
    b.wait_healthy();
    wait_for(UP, "both accounts polled", || {
        (hits.load(std::sync::atomic::Ordering::SeqCst) >= 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(b.h.try_exit_status(pid).is_none(), "{}", b.log(0));
    b.wait_healthy();
    let log = b.log(0);
    assert!(
        log.contains("throttles account alpha: waiting 3600s"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn the_quota_monitor_dying_is_a_dead_role() {
    let mut b = bare("monitor-gone", |_| {});
    let pid = b.start(&[("CLAUDE_FAILOVER_FAILPOINT", "quota-monitor-panic")]);
    assert_eq!(b.wait_exit(pid, UP), Some(1), "{}", b.log(0));
    let log = b.log(0);
    assert!(
        log.contains("the quota monitor thread ended unexpectedly"),
        "{log}"
    );
}

#[test]
fn check_into_a_closed_pipe_exits_cleanly() {
    let b = bare("check-pipe", |_| {});
    // A pipe whose reader is gone before the first line is written.
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: closing the read end we own.
    unsafe { libc::close(fds[0]) };
    // SAFETY: fds[1] is an open descriptor we own from here on.
    let write_end =
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    let out = std::process::Command::new(support::bin())
        .args(["--config", b.sb.config_path.to_str().unwrap(), "check"])
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    // 0 or 1 (what the checks found), never 101.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{:?} {err}",
        out.status
    );
}

#[test]
fn check_reports_a_token_file_others_can_read() {
    let b = bare("check-token", |_| {});
    let path = b.sb.state_dir.join("http.token");
    std::fs::write(&path, "readable-by-all\n").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(support::bin())
        .args(["--config", b.sb.config_path.to_str().unwrap(), "check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("http token"))
        .unwrap_or_else(|| panic!("no http token line: {text}"));
    assert!(
        line.starts_with("FAIL") && line.contains("0644") && line.contains("chmod 600"),
        "{line}"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn setup_generates_the_token_0600_once_and_dry_run_only_says_so() {
    let b = bare("setup-token", |_| {});
    let path = b.sb.state_dir.join("http.token");
    let run = |extra: &[&str]| {
        let mut args = vec!["--config", b.sb.config_path.to_str().unwrap(), "setup"];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(support::bin())
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, said) = run(&["--dry-run"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("would generate the control-plane token"),
        "{said}"
    );
    assert!(!path.exists(), "a dry run writes nothing");
    let (code, said) = run(&[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("generated the control-plane token"), "{said}");
    let token = claude_failover::daemon::http::read_token(&path).unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let (code, said) = run(&[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        !said.contains("generated the control-plane token"),
        "{said}"
    );
    assert_eq!(
        claude_failover::daemon::http::read_token(&path).unwrap(),
        token,
        "kept"
    );
}

/// Sends `n` status-line readings for `home` over the event socket, the way
/// the `statusline` command does but as fast as it can (one connection),
/// from a process in a tmux session of the daemon's server (events from
/// anywhere else are not taken); returns once the daemon took them all.
fn flood_readings(b: &Bare, home: &std::path::Path, n: usize) {
    const FLOODER: &str = r#"
import json, socket, sys, time
path, n, done = sys.argv[1], int(sys.argv[2]), sys.argv[3]
now = time.time()
s = socket.socket(socket.AF_UNIX)
s.connect(path)
lines = []
for i in range(n):
    lines.append(json.dumps({"kind": "statusline", "session": "flooder", "config_dir": None,
        "recorded_at_ms": int(now * 1000),
        "payload": {"session_id": "s", "rate_limits": {
            "five_hour": {"used_percentage": float(i % 50), "resets_at": int(now) + 3600},
            "seven_day": {"used_percentage": 5.0, "resets_at": int(now) + 86400}}}}))
    if len(lines) == 1000 or i == n - 1:
        s.sendall(("\n".join(lines) + "\n").encode())
        lines = []
s.shutdown(socket.SHUT_WR)
answer = s.recv(64).decode()
open(done, "w").write(answer)
"#;
    let script = b.h.path().join("flood.py");
    std::fs::write(&script, FLOODER).unwrap();
    let done = b.h.path().join("flood.done");
    let socket = b.sb.state_dir.join("events.sock");
    b.h.tmux
        .new_session(&claude_failover::sys::tmux::Launch {
            name: "flooder".into(),
            cwd: b.h.path().to_path_buf(),
            width: 80,
            height: 24,
            env: vec![(
                "CLAUDE_CONFIG_DIR".into(),
                home.to_string_lossy().into_owned(),
            )],
            argv: vec![
                "python3".into(),
                script.to_string_lossy().into_owned(),
                socket.to_string_lossy().into_owned(),
                n.to_string(),
                done.to_string_lossy().into_owned(),
            ],
        })
        .unwrap();
    let answer = wait_for(Duration::from_secs(120), "the flood taken", || {
        std::fs::read_to_string(&done)
            .ok()
            .filter(|t| !t.is_empty())
    });
    assert_eq!(
        answer.trim(),
        format!("ok {n}"),
        "the daemon took only part of the flood"
    );
}

#[test]
fn a_swap_requested_after_100k_events_is_answered_within_2s() {
    let mut b = bare("flood", |_| {});
    let _pid = b.start(&[]);
    b.wait_healthy();
    let token = b.token();
    let alpha = b.sb.account("alpha").unwrap().home.clone();
    flood_readings(&b, &alpha, 100_000);
    let started = std::time::Instant::now();
    let answer = ureq::post(&b.url("/swap?to=beta"))
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(Duration::from_secs(60))
        .call();
    let took = started.elapsed();
    let code = match answer {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(c, _)) => c,
        Err(e) => panic!("POST /swap: {e}"),
    };
    eprintln!("POST /swap after 100k events: {code} in {took:?}");
    assert_eq!(code, 200);
    assert!(
        took < Duration::from_secs(2),
        "POST /swap took {took:?} behind the flood"
    );
    // The readings were not lost: alpha's newest one is on disk.
    wait_for(UP, "alpha's reading persisted", || {
        std::fs::read_to_string(b.sb.state_dir.join("usage").join("alpha.json"))
            .ok()
            // The newest of the flood (the last one written says 49 %).
            .filter(|t| t.contains("statusline") && t.contains("\"utilization\": 49.0"))
    });
}
