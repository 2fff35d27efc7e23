//! The dashboard (`GET /`) in a real headless Chromium, against a running
//! daemon with real Claude Code sessions (issue 16): the DOM shows both
//! accounts with their bars, every session with its state, the queue
//! counts; after a swap the test triggers, the page shows the new active
//! account and the swap in its history without a reload (read again
//! through the DevTools protocol). A screenshot is kept as a test artifact
//! (`target/dashboard.png`; `scripts/screenshot.sh` copies it into docs/).
//! On a non-loopback listen a GET without the token is 401, and the page
//! works once given the token, which never appears in a URL.

mod support;

use std::time::Duration;

use support::{enqueue_task, wait_task_ended, World};
use testkit::browser::{chromium, Browser};

const UP: Duration = Duration::from_secs(90);
const PAGE: Duration = Duration::from_secs(30);

/// Chromium, which the end-to-end suite needs (scripts/test.sh installs it).
fn browser_binary() -> Option<std::path::PathBuf> {
    support::e2e_claude()?;
    Some(chromium().expect(
        "the end-to-end suite needs Debian's chromium (scripts/test.sh installs it; or set CLAUDE_FAILOVER_CHROMIUM)",
    ))
}

#[test]
fn the_page_shows_accounts_sessions_queues_and_a_swap_without_a_reload() {
    let Some(chromium) = browser_binary() else {
        return;
    };
    let Some(mut w) = World::new("dashboard", |spec| {
        spec.swap_mode = "live".into();
        spec.pools[0].min = 2;
        spec.pools[0].max = 2;
        spec.quota_yaml = "  poll_interval: 2s\n  swap_cooldown: 0s\n".into();
    }) else {
        return;
    };
    w.start_daemon(&[]);
    for n in ["ccl-auto-11", "ccl-auto-12"] {
        w.wait_state(n, "idle", UP);
    }
    let project = w.sb.project_dirs[0].1.clone();
    enqueue_task(&project, "first", "Say hello in one line.\n\nThen stop.\n");
    assert_eq!(wait_task_ended(&project, "first", UP), "done");
    for n in ["ccl-auto-11", "ccl-auto-12"] {
        w.wait_state(n, "idle", UP);
    }

    // /status counts the task done (what the page shows next).
    support::wait_for(Duration::from_secs(20), "status: done 1", || {
        let s = w.status()?;
        let q = &s["queues"]["demo"];
        if q["done"] == 1 && q["active"] == 0 && q["inbox"] == 0 {
            return Some(());
        }
        eprintln!(
            "status queues {q}; active/ {:?}; done/ {:?}",
            std::fs::read_dir(project.join(".agent-queue/active"))
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
            std::fs::read_dir(project.join(".agent-queue/done"))
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
        std::thread::sleep(Duration::from_millis(500));
        None
    });
    let url = format!("http://{}/", w.sb.http_listen);
    let mut b = Browser::launch(&chromium, &url, 1280, 1000);
    b.wait_for(
        PAGE,
        "the active account",
        "document.getElementById('active').textContent === 'alpha'",
    );
    // Both accounts, each with a bar per limit (5-hour and weekly at least).
    let accounts = b.wait_for(
        PAGE,
        "both accounts with their bars",
        "(() => { const a = [...document.querySelectorAll('#accounts .account')]; \
           return a.length === 2 && a.every(x => x.querySelectorAll('.bar').length >= 2) \
             ? a.map(x => x.dataset.name) : null })()",
    );
    assert_eq!(accounts, serde_json::json!(["alpha", "beta"]));
    // Every session with its state, as /status says.
    let status = w.status().unwrap();
    for s in status["sessions"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let shown = b.wait_for(
            PAGE,
            &format!("{name}'s state"),
            &format!("(() => {{ const r = document.querySelector('#sessions tr[data-name=\"{name}\"]'); return r ? r.querySelector('.state').textContent : null }})()"),
        );
        assert_eq!(shown, s["state"], "{name}");
    }
    // The queue's counts, and the task done with its answer's first line.
    let shown = b.wait_for(
        PAGE,
        "the queue counts",
        "(() => { const q = document.querySelector('#queues [data-project=\"demo\"]'); \
           return q && q.querySelector('.done').textContent === 'done 1' && q.querySelector('.inbox').textContent === 'inbox 0' \
             && q.textContent.includes('first') ? q.textContent : '' })()",
    );
    assert!(
        shown.as_str().unwrap().contains("STANDIN-ANSWER"),
        "the answer's first line: {shown}"
    );
    b.wait_for(
        PAGE,
        "the live stream",
        "document.getElementById('live').textContent === 'live'",
    );

    // A swap, triggered from outside; the page follows without a reload.
    b.eval("window.__no_reload = 42");
    let swapped = w.swap_to("beta", "dashboard test");
    assert_eq!(swapped["result"], "done", "{swapped}");
    let id = swapped["id"].as_str().unwrap().to_string();
    b.wait_for(
        PAGE,
        "beta active",
        "document.getElementById('active').textContent === 'beta'",
    );
    let entry = b.wait_for(
        PAGE,
        "the swap in the history",
        &format!("(() => {{ const li = document.querySelector('#swaps li[data-id=\"{id}\"]'); return li ? li.textContent : null }})()"),
    );
    let entry = entry.as_str().unwrap();
    assert!(
        entry.contains("alpha → beta") && entry.contains("done"),
        "{entry}"
    );
    assert!(
        entry.contains("seat") && entry.contains("flip"),
        "phase timings: {entry}"
    );
    assert_eq!(b.eval("window.__no_reload"), 42, "the page was reloaded");
    // The swap's notification reached the page too.
    b.wait_for(
        PAGE,
        "the notification",
        "document.getElementById('notes').textContent.includes('swap_done')",
    );

    let png = b.screenshot();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    let artifact = support::repo_root().join("target/dashboard.png");
    std::fs::write(&artifact, &png).unwrap();
    if let Some(to) = std::env::var_os("CLAUDE_FAILOVER_SCREENSHOT") {
        std::fs::write(to, &png).unwrap();
    }

    // A phone's width: the page still shows every session.
    let mut phone = Browser::launch(&chromium, &url, 390, 844);
    phone.wait_for(
        PAGE,
        "sessions on a phone",
        "document.querySelectorAll('#sessions tr[data-name]').length === 2 \
         && document.documentElement.scrollWidth <= window.innerWidth + 1",
    );
}

#[test]
fn beyond_loopback_every_get_needs_the_token_and_the_page_asks_for_it() {
    let Some(chromium) = browser_binary() else {
        return;
    };
    // A non-loopback listen must name its token file.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("http.token");
    let Some(mut w) = World::new("dashboard-token", |spec| {
        spec.swap_mode = "live".into();
        spec.pools[0].min = 1;
        spec.pools[0].max = 1;
        spec.http_listen = "0.0.0.0:0".into();
        spec.http_yaml = format!("  token_file: \"{}\"\n", token_file.display());
    }) else {
        return;
    };
    w.start_daemon(&[]);
    let port = w.sb.http_listen.rsplit_once(':').unwrap().1.to_string();
    let base = format!("http://127.0.0.1:{port}");
    let token = support::wait_for(UP, "the daemon's token", || {
        claude_failover::daemon::http::read_token(&token_file).ok()
    });
    // Answering at all (a 401 is an answer).
    support::wait_for(UP, "the daemon answering", || {
        match ureq::get(&format!("{base}/healthz")).call() {
            Err(ureq::Error::Status(401, _)) => Some(()),
            _ => None,
        }
    });
    for path in [
        "/",
        "/status",
        "/events",
        "/metrics",
        "/sessions/ccl-auto-11/screen",
    ] {
        let r = ureq::get(&format!("{base}{path}"))
            .timeout(Duration::from_secs(5))
            .call();
        match r {
            Err(ureq::Error::Status(code, _)) => assert_eq!(code, 401, "{path}"),
            other => panic!("{path} without the token: {other:?}"),
        }
    }
    let ok = ureq::get(&format!("{base}/status"))
        .set("Authorization", &format!("Bearer {token}"))
        .call();
    assert!(ok.is_ok(), "{ok:?}");
    support::wait_for(UP, "the session idle", || {
        let s: serde_json::Value = ureq::get(&format!("{base}/status"))
            .set("Authorization", &format!("Bearer {token}"))
            .call()
            .ok()?
            .into_json()
            .ok()?;
        (s["sessions"][0]["state"] == "idle").then_some(())
    });

    let mut b = Browser::launch(&chromium, &format!("{base}/"), 1024, 768);
    b.wait_for(PAGE, "the token form", "!!document.getElementById('token')");
    // A wrong token is refused on the page.
    b.eval("document.getElementById('token').value = 'wrong'; document.getElementById('login').requestSubmit(); true");
    b.wait_for(
        PAGE,
        "the refusal",
        "document.getElementById('why').textContent.includes('refused')",
    );
    b.eval(&format!(
        "document.getElementById('token').value = '{token}'; document.getElementById('login').requestSubmit(); true"
    ));
    b.wait_for(
        PAGE,
        "the dashboard with the token",
        "(document.getElementById('active') || {}).textContent === 'alpha'",
    );
    b.wait_for(
        PAGE,
        "the session",
        "document.querySelectorAll('#sessions tr[data-name]').length === 1",
    );
    b.wait_for(
        PAGE,
        "the live stream with the token",
        "document.getElementById('live').textContent === 'live'",
    );
    let href = b.eval("location.href");
    assert!(
        !href.as_str().unwrap().contains(&token),
        "the token is in the URL: {href}"
    );
    // A control from the page (the token in a header): a swap.
    b.eval("document.getElementById('swap-to').value = 'beta'; document.getElementById('swap').click(); true");
    b.wait_for(
        PAGE,
        "beta active after the page's swap",
        "document.getElementById('active').textContent === 'beta'",
    );
}
