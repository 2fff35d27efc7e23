//! What an operator touches: every HTTP endpoint (with the bearer token),
//! `/metrics` through a real Prometheus parser, notifications reaching local
//! Telegram and webhook stand-ins, the sd_notify sequence, and SIGHUP
//! reloads (a bad one refused, a good one resizing a pool live).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::{receiver, wait_for, World};

const UP: Duration = Duration::from_secs(60);

fn signal(pid: u32, sig: &str) {
    assert!(std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

fn post(w: &World, path: &str, token: Option<&str>) -> (u16, String) {
    let mut r =
        ureq::post(&format!("http://{}{path}", w.sb.http_listen)).timeout(Duration::from_secs(90));
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    match r.call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{path}: {e}"),
    }
}

/// Reads the notify socket all the time, as systemd does: a receiver that
/// stops reading fills its queue (10 datagrams) and blocks the sender.
fn drain_notify(sock: UnixDatagram) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        loop {
            if let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send(msg).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

fn recv_until(sock: &std::sync::mpsc::Receiver<String>, want: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + UP;
    while Instant::now() < deadline {
        if let Ok(msg) = sock.recv_timeout(Duration::from_millis(500)) {
            seen.push(msg.clone());
            if msg.starts_with(want) {
                return;
            }
        }
    }
    panic!("no {want} on NOTIFY_SOCKET; saw {seen:?}");
}

#[test]
fn endpoints_notifications_sd_notify_and_reloads() {
    let (tg, tg_got) = receiver();
    let (hook, hook_got) = receiver();
    let Some(mut w) = World::new("control", |spec| {
        spec.accounts = vec!["alpha".into(), "beta".into()];
        spec.pools[0].min = 1;
        spec.pools[0].max = 3;
        spec.extra_yaml.push_str("lifecycle:\n  interval: 1s\n");
    }) else {
        return;
    };
    let token_file = w.h.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let tg_token = w.h.path().join("tg-token");
    std::fs::write(&tg_token, "123:ABC").unwrap();
    w.sb.edit_config(
        "http:\n",
        &format!(
            "notify:\n  telegram: {{ bot_token_file: {:?}, chat_id: \"42\", api_base: {:?} }}\n  webhook: {{ url: {:?} }}\nhttp:\n  token_file: {:?}\n",
            tg_token, tg, format!("{hook}/events"), token_file
        ),
    );
    let good = std::fs::read_to_string(&w.sb.config_path).unwrap();
    let notify_path = w.h.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let sock = drain_notify(sock);
    let pid = w.start_daemon(&[
        ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "1000000"),
    ]);
    let mut seen = Vec::new();
    recv_until(&sock, "READY=1", &mut seen);
    recv_until(&sock, "WATCHDOG=1", &mut seen);
    w.wait_state("ccl-auto-11", "idle", UP);
    let token = Some("s3cret-token");

    // Reads need no token; POSTs do, and a wrong one is refused.
    assert!(w.status().is_some());
    assert_eq!(post(&w, "/swap?to=beta", None).0, 401);
    assert_eq!(post(&w, "/swap?to=beta", Some("wrong-token!")).0, 401);
    assert_eq!(post(&w, "/reload", Some("s3cret-tokeX")).0, 401);
    // 404 for an unknown or unmanaged session; 200 for a managed one.
    assert_eq!(post(&w, "/sessions/ccl-0/restart", token).0, 404);
    assert_eq!(post(&w, "/sessions/ccl-auto-99/restart", token).0, 404);
    let before = w.pane_pid("ccl-auto-11");
    assert_eq!(post(&w, "/sessions/ccl-auto-11/restart", token).0, 200);
    wait_for(UP, "ccl-auto-11 restarted", || {
        (w.pane_pid("ccl-auto-11").is_some() && w.pane_pid("ccl-auto-11") != before).then_some(())
    });
    w.wait_state("ccl-auto-11", "idle", UP);

    // A swap: 200, and a second one while it runs is 409. A slow turn in
    // progress keeps the first one draining for a few seconds.
    w.api.set_latency(Duration::from_secs(4));
    w.type_prompt("ccl-auto-11", "control: a slow turn");
    w.wait_state("ccl-auto-11", "working", UP);
    let w2 = std::thread::scope(|scope| {
        let first = scope.spawn(|| post(&w, "/swap?to=beta&reason=control+test", token));
        wait_for(Duration::from_secs(10), "the first swap under way", || {
            w.status()
                .filter(|s| s["swap_in_progress"] == true)
                .map(|_| ())
        });
        let second = post(&w, "/swap?to=alpha", token);
        assert_eq!(second.0, 409, "{}", second.1);
        let second = second.1;
        (first.join().unwrap(), second)
    });
    assert_eq!(w2.0 .0, 200, "{}", w2.0 .1);
    w.api.set_latency(Duration::ZERO);
    assert!(w2.1.contains("under way"), "{}", w2.1);
    // No account can take the work: 422.
    let (code, body) = post(&w, "/swap?to=nobody", token);
    assert_eq!(code, 422, "{body}");

    // Notifications for the swap reached Telegram and the webhook.
    wait_for(UP, "swap notes at both receivers", || {
        let t = tg_got.lock().unwrap().iter().any(|(u, b)| {
            u == "/bot123:ABC/sendMessage"
                && b.contains("alpha → beta")
                && b.contains("\"chat_id\":\"42\"")
        });
        let h = hook_got
            .lock()
            .unwrap()
            .iter()
            .any(|(u, b)| u == "/events" && b.contains("\"kind\":\"swap_done\""));
        (t && h).then_some(())
    });

    // A bad reload (SIGHUP and POST) is refused; the old config keeps running.
    std::fs::write(
        &w.sb.config_path,
        good.replace("    max: 3\n", "    max: 3\n    colour: red\n"),
    )
    .unwrap();
    signal(pid, "-HUP");
    recv_until(&sock, "RELOADING=1", &mut seen);
    assert!(seen.last().unwrap().contains("MONOTONIC_USEC="), "{seen:?}");
    recv_until(&sock, "READY=1", &mut seen);
    let s = wait_for(UP, "config_error set", || {
        w.status().filter(|s| !s["config_error"].is_null())
    });
    assert!(
        s["config_error"].as_str().unwrap().contains("colour"),
        "{s}"
    );
    let (code, body) = post(&w, "/reload", token);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("colour"));
    wait_for(UP, "refused-reload notes", || {
        hook_got
            .lock()
            .unwrap()
            .iter()
            .any(|(_, b)| b.contains("\"kind\":\"reload_refused\""))
            .then_some(())
    });

    // A good reload grows the pool to 2 without restarting ccl-auto-11.
    let pane11 = w.pane_pid("ccl-auto-11");
    std::fs::write(
        &w.sb.config_path,
        good.replace("    min: 1\n", "    min: 2\n"),
    )
    .unwrap();
    let (code, body) = post(&w, "/reload", token);
    assert_eq!(code, 200, "{body}");
    w.wait_state("ccl-auto-12", "idle", UP);
    assert_eq!(
        w.pane_pid("ccl-auto-11"),
        pane11,
        "a reload must not restart healthy sessions"
    );
    assert!(w.status().unwrap()["config_error"].is_null());

    // Malformed and oversized requests: answered with 4xx, the daemon goes on.
    let addr = w.sb.http_listen.clone();
    for raw in [
        "GARBAGE\r\n\r\n".to_string(),
        "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        format!("POST /swap HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-token\r\nContent-Length: {}\r\n\r\n", 10 * 1024 * 1024),
        "POST /sessions/%%%/restart HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-token\r\nContent-Length: 0\r\n\r\n".to_string(),
    ]
    .iter()
    .cycle()
    .take(40)
    {
        if let Ok(mut c) = TcpStream::connect(&addr) {
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = c.write_all(raw.as_bytes());
            let mut buf = [0u8; 64];
            let _ = c.read(&mut buf);
        }
    }
    // A client that sends half a request and goes quiet must not block others.
    let _slow = TcpStream::connect(&addr).map(|mut c| c.write_all(b"GET /status HTTP/1.1\r\n"));
    assert!(w.status().is_some(), "still serving after the burst");
    match ureq::get(&format!("http://{addr}/healthz")).call() {
        Ok(r) => assert_eq!(r.status(), 200),
        Err(e) => panic!("healthz: {e}"),
    }

    // /metrics from the live daemon parses with a real Prometheus parser.
    let metrics = ureq::get(&format!("http://{addr}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("claude_failover_swaps_total{result=\"done\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("claude_failover_sessions{state=\"idle\"} 2"),
        "{metrics}"
    );

    // Stop: STOPPING=1, exit 0.
    signal(pid, "-TERM");
    recv_until(&sock, "STOPPING=1", &mut seen);
    let code = wait_for(Duration::from_secs(5), "daemon exit", || {
        w.h.try_exit_status(pid)
    });
    assert_eq!(code, Some(0));
}

#[test]
fn with_the_receiver_down_the_daemon_goes_on_and_counts_drops() {
    let Some(mut w) = World::new("control-down", |spec| {
        spec.pools[0].min = 1;
        spec.claude_args = vec!["--no-such-flag-for-claude".into()];
        spec.extra_yaml
            .push_str("lifecycle:\n  interval: 1s\n  restart_backoff: [1s]\n");
    }) else {
        return;
    };
    // Nothing listens on this port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    w.sb.notify_webhook(&format!("http://{dead}/x"));
    let _pid = w.start_daemon(&[]);
    // A session that cannot start fails every second and is notified each time.
    wait_for(UP, "ccl-auto-11 failed", || {
        w.session("ccl-auto-11").filter(|s| s["state"] == "failed")
    });
    let t = Instant::now();
    let s = wait_for(UP, "the status still answering", || w.status());
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(s["sessions"][0]["state"], "failed");
    let failed_or_dropped = wait_for(UP, "failed deliveries counted", || {
        let m = ureq::get(&format!("http://{}/metrics", w.sb.http_listen))
            .call()
            .ok()?
            .into_string()
            .ok()?;
        m.lines()
            .find(|l| l.starts_with("claude_failover_notifications_dropped_total"))
            .map(String::from)
    });
    assert!(
        failed_or_dropped.starts_with("claude_failover_notifications_dropped_total"),
        "{failed_or_dropped}"
    );
}

#[test]
fn a_failed_start_reaches_telegram_and_the_webhook() {
    let (tg, tg_got) = receiver();
    let (hook, hook_got) = receiver();
    let Some(mut w) = World::new("control-failed-start", |spec| {
        spec.pools[0].min = 1;
        spec.claude_args = vec!["--no-such-flag-for-claude".into()];
        spec.extra_yaml
            .push_str("lifecycle:\n  interval: 1s\n  restart_backoff: [1s]\n");
    }) else {
        return;
    };
    let tg_token = w.h.path().join("tg-token");
    std::fs::write(&tg_token, "777:XYZ").unwrap();
    w.sb.edit_config(
        "http:\n",
        &format!(
            "notify:\n  telegram: {{ bot_token_file: {:?}, chat_id: \"7\", api_base: {:?} }}\n  webhook: {{ url: {:?} }}\nhttp:\n",
            tg_token, tg, format!("{hook}/events")
        ),
    );
    let _pid = w.start_daemon(&[]);
    wait_for(UP, "the failed-start note at both receivers", || {
        let t = tg_got.lock().unwrap().iter().any(|(u, b)| {
            u == "/bot777:XYZ/sendMessage" && b.contains("ccl-auto-11 failed to start")
        });
        let h = hook_got.lock().unwrap().iter().any(|(_, b)| {
            b.contains("\"kind\":\"session_failed_to_start\"")
                && b.contains("no-such-flag-for-claude")
        });
        (t && h).then_some(())
    });
}
