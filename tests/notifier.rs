//! The notifier against local receivers: a fake Telegram Bot API and a
//! webhook, both tiny_http on 127.0.0.1, port 0.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use claude_failover::config::{Level, NotifyConfig, TelegramConfig};
use claude_failover::daemon::notifier::{
    Kind, Note, Notifier, NotifierOptions, NotifyHandle, NotifyStats,
};
use parking_lot::Mutex;
use serde_json::{json, Value};

const TOKEN: &str = "123456:SECRET-token";
/// Longest any test waits for something to happen.
const WAIT: Duration = Duration::from_secs(5);

/// An HTTP receiver that records `(path, body)` and answers with the
/// scripted statuses, then 200.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<(String, Value)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(script: &[u16]) -> Receiver {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut script: VecDeque<u16> = script.iter().copied().collect();
        let (got2, stop2) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(20)) else {
                    continue;
                };
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
                got2.lock().push((req.url().to_string(), value));
                let status = script.pop_front().unwrap_or(200);
                let answer =
                    tiny_http::Response::from_string(r#"{"ok":true}"#).with_status_code(status);
                let _ = req.respond(answer);
            }
        });
        Receiver {
            port,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn got(&self) -> Vec<(String, Value)> {
        self.got.lock().clone()
    }

    /// Waits (bounded) until `n` requests came in.
    fn wait_for(&self, n: usize) -> Vec<(String, Value)> {
        let end = Instant::now() + WAIT;
        while self.got.lock().len() < n && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        let got = self.got();
        assert!(got.len() >= n, "expected {n} requests, got {got:?}");
        got
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn token_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("bot_token");
    std::fs::write(&path, format!("  {TOKEN}\n")).unwrap();
    path
}

fn webhook_only(url: String, min_level: Level) -> NotifyConfig {
    NotifyConfig {
        telegram: None,
        webhook_url: Some(url),
        min_level,
    }
}

/// Short waits so that the tests are fast.
fn quick() -> NotifierOptions {
    NotifierOptions {
        timeout: Duration::from_secs(2),
        first_backoff: Duration::from_millis(20),
        rate_limit: Duration::ZERO,
        flush_grace: Duration::from_millis(500),
        ..NotifierOptions::default()
    }
}

fn wait_stats(notifier: &Notifier, done: impl Fn(&NotifyStats) -> bool) -> NotifyStats {
    wait_stats_of(&notifier.handle(), done)
}

fn wait_stats_of(h: &NotifyHandle, done: impl Fn(&NotifyStats) -> bool) -> NotifyStats {
    let end = Instant::now() + WAIT;
    loop {
        let s = h.stats();
        if done(&s) || Instant::now() >= end {
            return s;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A port on 127.0.0.1 nothing listens on.
fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn swap_note_reaches_telegram_and_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let telegram = Receiver::start(&[]);
    let webhook = Receiver::start(&[]);
    let config = NotifyConfig {
        telegram: Some(TelegramConfig {
            bot_token_file: token_file(dir.path()),
            chat_id: "-10042".into(),
            api_base: telegram.base(),
        }),
        webhook_url: Some(format!("{}/hooks/failover", webhook.base())),
        min_level: Level::Info,
    };
    let notifier = Notifier::start_with(&config, quick());
    let fields = json!({"swap_id": "s-1", "from": "work", "to": "personal", "sessions": 3});
    notifier.handle().send(Note::new(
        Kind::SwapDone,
        "swap s-1 done: work -> personal, 3 sessions",
        fields.clone(),
    ));

    let tg = telegram.wait_for(1);
    assert_eq!(tg.len(), 1);
    assert_eq!(tg[0].0, format!("/bot{TOKEN}/sendMessage"));
    assert_eq!(tg[0].1["chat_id"], "-10042");
    let text = tg[0].1["text"].as_str().unwrap();
    assert!(
        text.contains("swap s-1 done: work -> personal, 3 sessions"),
        "{text}"
    );
    assert_eq!(tg[0].1.as_object().unwrap().len(), 2, "{:?}", tg[0].1);

    let wh = webhook.wait_for(1);
    assert_eq!(wh.len(), 1);
    assert_eq!(wh[0].0, "/hooks/failover");
    let body = &wh[0].1;
    assert_eq!(body["kind"], "swap_done");
    assert_eq!(body["level"], "info");
    assert_eq!(body["text"], "swap s-1 done: work -> personal, 3 sessions");
    assert_eq!(body["fields"], fields);
    let at = body["at"].as_str().unwrap();
    let at = claude_failover::sys::time::parse_rfc3339(at).expect("at is RFC 3339");
    let age = std::time::SystemTime::now()
        .duration_since(at)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "{age:?}");

    let s = wait_stats(&notifier, |s| s.sent == 2);
    assert_eq!(
        s,
        NotifyStats {
            sent: 2,
            dropped: 0,
            failed: 0,
            rate_limited: 0
        }
    );
    assert!(notifier.shutdown(Duration::from_secs(1)));
}

#[test]
fn min_level_filters() {
    let webhook = Receiver::start(&[]);
    let notifier = Notifier::start_with(&webhook_only(webhook.base(), Level::Warn), quick());
    let h = notifier.handle();
    h.send(Note::new(
        Kind::SwapStarted,
        "swap started",
        json!({"swap_id": "1"}),
    ));
    h.send(Note::new(
        Kind::SwapDone,
        "swap done",
        json!({"swap_id": "1"}),
    ));
    h.send(Note::new(Kind::TaskFailed, "task failed", json!({})));
    h.send(Note::new(
        Kind::SwapFailed,
        "swap failed",
        json!({"swap_id": "2"}),
    ));
    h.send(Note::new(Kind::SwapDone, "raised", json!({"swap_id": "3"})).with_level(Level::Error));
    // The flush at shutdown delivers everything that was queued.
    assert!(notifier.shutdown(Duration::from_secs(2)));
    let kinds: Vec<Value> = webhook
        .got()
        .into_iter()
        .map(|(_, b)| b["kind"].clone())
        .collect();
    assert_eq!(
        kinds,
        vec![
            json!("task_failed"),
            json!("swap_failed"),
            json!("swap_done")
        ]
    );
    assert_eq!(
        h.stats(),
        NotifyStats {
            sent: 3,
            dropped: 0,
            failed: 0,
            rate_limited: 0
        }
    );
}

#[test]
fn receiver_down_never_blocks_send() {
    let dir = tempfile::tempdir().unwrap();
    let port = dead_port();
    let config = NotifyConfig {
        telegram: Some(TelegramConfig {
            bot_token_file: token_file(dir.path()),
            chat_id: "1".into(),
            api_base: format!("http://127.0.0.1:{port}"),
        }),
        webhook_url: Some(format!("http://127.0.0.1:{port}/hook")),
        min_level: Level::Info,
    };
    let options = NotifierOptions {
        max_retrying: 16,
        ..quick()
    };
    let notifier = Notifier::start_with(&config, options);
    let h = notifier.handle();
    let t0 = Instant::now();
    for i in 0..1000 {
        h.send(Note::new(
            Kind::SwapFailed,
            format!("swap {i} failed"),
            json!({"swap_id": i}),
        ));
    }
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "1,000 sends took {took:?}"
    );

    let s = wait_stats(&notifier, |s| s.dropped + s.failed >= 100);
    assert!(s.dropped + s.failed >= 100, "{s:?}");
    assert_eq!(s.sent, 0);
    // The program goes on: more sends still return at once.
    let t1 = Instant::now();
    h.send(Note::new(Kind::NoAccount, "no account left", json!({})));
    assert!(t1.elapsed() < Duration::from_millis(50));

    let t2 = Instant::now();
    notifier.shutdown(Duration::from_millis(300));
    assert!(
        t2.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        t2.elapsed()
    );
    let s = h.stats();
    assert_eq!(s.sent, 0);
    // Every delivery is accounted for: 1,001 notes to two targets.
    assert!(
        s.dropped + s.failed > 0 && s.dropped + s.failed <= 2002,
        "{s:?}"
    );
}

#[test]
fn receiver_that_hangs_fills_the_queue_and_drops() {
    // Accepts connections (the kernel does) but never answers.
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", hang.local_addr().unwrap());
    let options = NotifierOptions {
        timeout: Duration::from_millis(200),
        tries: 1,
        queue_capacity: 8,
        ..quick()
    };
    let notifier = Notifier::start_with(&webhook_only(url, Level::Info), options);
    let h = notifier.handle();
    let t0 = Instant::now();
    for i in 0..1000 {
        h.send(Note::new(
            Kind::TaskFailed,
            format!("task {i} failed"),
            json!({"task": i}),
        ));
    }
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    let s = h.stats();
    assert!(s.dropped >= 1000 - 8 - 1, "{s:?}");
    let s = wait_stats(&notifier, |s| s.failed >= 1);
    assert!(s.failed >= 1, "{s:?}");
    let t1 = Instant::now();
    notifier.shutdown(Duration::from_millis(300));
    assert!(
        t1.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        t1.elapsed()
    );
    let s = wait_stats_of(&h, |s| s.dropped + s.failed == 1000);
    assert_eq!(s.sent, 0);
    assert_eq!(s.dropped + s.failed, 1000, "{s:?}");
    drop(hang);
}

#[test]
fn retries_until_the_third_try_succeeds() {
    let webhook = Receiver::start(&[500, 500, 200]);
    let notifier = Notifier::start_with(&webhook_only(webhook.base(), Level::Info), quick());
    let t0 = Instant::now();
    notifier.handle().send(Note::new(
        Kind::NeedsLogin,
        "account work needs a login",
        json!({"account": "work"}),
    ));
    let got = webhook.wait_for(3);
    // Back-off 20 ms then 40 ms.
    assert!(
        t0.elapsed() >= Duration::from_millis(60),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|(_, b)| *b == got[0].1));
    assert_eq!(got[0].1["kind"], "needs_login");
    let s = wait_stats(&notifier, |s| s.sent == 1);
    assert_eq!(
        s,
        NotifyStats {
            sent: 1,
            dropped: 0,
            failed: 0,
            rate_limited: 0
        }
    );
    assert!(notifier.shutdown(Duration::from_secs(1)));
    assert_eq!(webhook.got().len(), 3);
}

#[test]
fn gives_up_after_three_tries_and_at_once_on_4xx() {
    let down = Receiver::start(&[500, 503, 502, 500]);
    let notifier = Notifier::start_with(&webhook_only(down.base(), Level::Info), quick());
    notifier
        .handle()
        .send(Note::new(Kind::ReloadRefused, "reload refused", json!({})));
    let s = wait_stats(&notifier, |s| s.failed == 1);
    assert_eq!(
        s,
        NotifyStats {
            sent: 0,
            dropped: 0,
            failed: 1,
            rate_limited: 0
        }
    );
    assert_eq!(down.got().len(), 3);
    assert!(notifier.shutdown(Duration::from_secs(1)));

    let refusing = Receiver::start(&[400, 400]);
    let notifier = Notifier::start_with(&webhook_only(refusing.base(), Level::Info), quick());
    notifier
        .handle()
        .send(Note::new(Kind::ReloadRefused, "reload refused", json!({})));
    let s = wait_stats(&notifier, |s| s.failed == 1);
    assert_eq!(s.failed, 1);
    assert!(notifier.shutdown(Duration::from_secs(1)));
    assert_eq!(refusing.got().len(), 1);
}

#[test]
fn a_failing_note_does_not_hold_up_later_ones() {
    // The first try fails; while it waits for its retry (1 s back-off) the
    // next note goes out.
    let webhook = Receiver::start(&[500]);
    let options = NotifierOptions {
        first_backoff: Duration::from_secs(1),
        ..quick()
    };
    let notifier = Notifier::start_with(&webhook_only(webhook.base(), Level::Info), options);
    let h = notifier.handle();
    h.send(Note::new(
        Kind::SwapFailed,
        "first",
        json!({"swap_id": "1"}),
    ));
    h.send(Note::new(
        Kind::SwapFailed,
        "second",
        json!({"swap_id": "2"}),
    ));
    let got = webhook.wait_for(2);
    let t0 = Instant::now();
    assert_eq!(got[1].1["text"], "second");
    let got = webhook.wait_for(3);
    assert_eq!(got[2].1["text"], "first");
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert!(notifier.shutdown(Duration::from_secs(1)));
}

#[test]
fn rate_limit_per_kind_and_swap() {
    let webhook = Receiver::start(&[]);
    let options = NotifierOptions {
        rate_limit: Duration::from_millis(400),
        ..quick()
    };
    let notifier = Notifier::start_with(&webhook_only(webhook.base(), Level::Info), options);
    let h = notifier.handle();
    for i in 0..3 {
        h.send(Note::new(
            Kind::TaskFailed,
            format!("task {i} failed"),
            json!({"task": i}),
        ));
    }
    h.send(Note::new(
        Kind::SwapDone,
        "swap a done",
        json!({"swap_id": "a"}),
    ));
    h.send(Note::new(
        Kind::SwapDone,
        "swap b done",
        json!({"swap_id": "b"}),
    ));
    h.send(Note::new(
        Kind::SwapDone,
        "swap a done again",
        json!({"swap_id": "a"}),
    ));
    h.send(Note::new(
        Kind::SwapFailed,
        "swap a failed",
        json!({"swap_id": "a"}),
    ));
    assert_eq!(h.stats().rate_limited, 3);
    let got = webhook.wait_for(4);
    std::thread::sleep(Duration::from_millis(450));
    h.send(Note::new(
        Kind::TaskFailed,
        "task 9 failed",
        json!({"task": 9}),
    ));
    let got_after = webhook.wait_for(5);
    assert!(notifier.shutdown(Duration::from_secs(1)));

    let texts: Vec<&str> = got
        .iter()
        .map(|(_, b)| b["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "task 0 failed",
            "swap a done",
            "swap b done",
            "swap a failed"
        ]
    );
    assert_eq!(got_after[4].1["text"], "task 9 failed");
    assert_eq!(
        h.stats(),
        NotifyStats {
            sent: 5,
            dropped: 0,
            failed: 0,
            rate_limited: 3
        }
    );
}

#[test]
fn reconfigure_moves_the_target() {
    let first = Receiver::start(&[]);
    let second = Receiver::start(&[]);
    let notifier = Notifier::start_with(&webhook_only(first.base(), Level::Info), quick());
    let h = notifier.handle();
    h.send(Note::new(Kind::TaskFailed, "one", json!({})));
    first.wait_for(1);
    h.reconfigure(webhook_only(second.base(), Level::Error));
    h.send(Note::new(Kind::TaskFailed, "filtered now", json!({})));
    h.send(Note::new(Kind::NoAccount, "two", json!({})));
    second.wait_for(1);
    assert!(notifier.shutdown(Duration::from_secs(1)));
    assert_eq!(first.got().len(), 1);
    let got = second.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1["text"], "two");
}

#[test]
fn no_targets_and_after_shutdown() {
    let config = NotifyConfig {
        telegram: None,
        webhook_url: None,
        min_level: Level::Info,
    };
    let notifier = Notifier::start_with(&config, quick());
    let h = notifier.handle();
    h.send(Note::new(Kind::NoAccount, "logged only", json!({})));
    assert!(notifier.shutdown(Duration::from_millis(500)));
    assert_eq!(h.stats(), NotifyStats::default());

    // With a target, sends after the thread ended are dropped and counted.
    let webhook = Receiver::start(&[]);
    let notifier = Notifier::start_with(&webhook_only(webhook.base(), Level::Info), quick());
    let h = notifier.handle();
    assert!(notifier.shutdown(Duration::from_millis(500)));
    h.send(Note::new(Kind::NoAccount, "too late", json!({})));
    assert_eq!(h.stats().dropped, 1);
    assert!(webhook.got().is_empty());
}

#[test]
fn dropping_the_notifier_flushes_and_ends_the_thread() {
    let webhook = Receiver::start(&[]);
    let notifier = Notifier::start_with(&webhook_only(webhook.base(), Level::Info), quick());
    let h = notifier.handle();
    h.send(Note::new(
        Kind::SessionFailedToStart,
        "pool-3 exited",
        json!({"session": "pool-3"}),
    ));
    drop(notifier);
    webhook.wait_for(1);
    // The thread is gone soon after: later notes are dropped.
    let end = Instant::now() + WAIT;
    loop {
        h.send(Note::new(Kind::SessionFailedToStart, "later", json!({})));
        if h.stats().dropped > 0 || Instant::now() >= end {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(h.stats().dropped > 0);
    assert!(h.stats().sent >= 1);
}
