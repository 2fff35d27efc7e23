//! `/metrics` checked by a real Prometheus parser (Python's
//! `prometheus_client`, installed on demand into the target directory when
//! the system Python lacks it), and the `status` table rendered from sample
//! `/status` JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use claude_failover::commands::status_table;
use claude_failover::daemon::metrics::{self, Counters};
use claude_failover::daemon::status::{AccountStatus, QueueCounts, SessionStatus, Status};
use claude_failover::decide::session::State;
use claude_failover::sys::time::parse_rfc3339;
use serde_json::{json, Value};

/// Parses the exposition text and prints every family with its samples.
/// Also fails on a family seen twice or a repeated series.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1], encoding="utf-8").read()
families, seen_families, seen_series = [], set(), set()
for fam in text_string_to_metric_families(text):
    if fam.name in seen_families:
        sys.exit("family declared twice: " + fam.name)
    seen_families.add(fam.name)
    samples = []
    for s in fam.samples:
        key = (s.name, tuple(sorted(s.labels.items())))
        if key in seen_series:
            sys.exit("series repeated: %r" % (key,))
        seen_series.add(key)
        samples.append({"name": s.name, "labels": s.labels, "value": s.value})
    families.append({"name": fam.name, "type": fam.type, "samples": samples})
print(json.dumps(families))
"#;

fn python_path() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pydeps")
}

fn python(args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("python3")
        .args(args)
        .env("PYTHONPATH", python_path())
        .output()
}

/// Makes `import prometheus_client` work, installing it once if needed.
fn ensure_prometheus_client() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let probe = || python(&["-c", "import prometheus_client"]);
        match probe() {
            Err(e) => {
                return Err(format!(
                    "python3 is required for this test and could not be run: {e}"
                ))
            }
            Ok(o) if o.status.success() => return Ok(()),
            Ok(_) => {}
        }
        let target = python_path();
        let out = python(&[
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            target.to_str().ok_or("non-UTF-8 target dir")?,
            "prometheus-client",
        ])
        .map_err(|e| format!("cannot run python3 -m pip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`python3 -m pip install prometheus-client` failed (is pip installed?): {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        match probe() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "prometheus_client still not importable: {}",
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => Err(e.to_string()),
        }
    });
    if let Err(e) = ready {
        panic!("{e}");
    }
}

/// The families the real parser finds in `text`.
fn parse(text: &str) -> Vec<Value> {
    ensure_prometheus_client();
    let dir = tempfile::tempdir().unwrap();
    let (file, script) = (dir.path().join("metrics.txt"), dir.path().join("parse.py"));
    std::fs::write(&file, text).unwrap();
    std::fs::write(&script, PARSE).unwrap();
    let out = python(&[script.to_str().unwrap(), file.to_str().unwrap()]).unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text:\n{}\n---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn family<'a>(families: &'a [Value], name: &str) -> &'a Value {
    families
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no family {name} in {families:#?}"))
}

/// The value of the one sample called `name` whose labels are exactly `labels`.
fn value(families: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for f in families {
        for s in f["samples"].as_array().unwrap() {
            let got: BTreeMap<String, String> = s["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            if s["name"] == name && got == want {
                return s["value"].as_f64().unwrap();
            }
        }
    }
    panic!("no sample {name}{labels:?}");
}

fn session(name: &str, state: &str) -> SessionStatus {
    SessionStatus {
        name: name.into(),
        pool: "main".into(),
        state: state.into(),
        account: Some("alice".into()),
        since: "2026-01-06T09:00:00Z".into(),
        ..Default::default()
    }
}

fn sample_status() -> Status {
    let window = |u: f64| json!({"utilization": u, "resets_at": "2026-01-06T14:05:00Z", "source": "statusline", "observed_at": "2026-01-06T09:58:00Z"});
    let mut queues = BTreeMap::new();
    queues.insert(
        "webapp".to_string(),
        QueueCounts {
            inbox: 3,
            active: 1,
            done: 7,
            failed: 0,
        },
    );
    queues.insert(
        "api".to_string(),
        QueueCounts {
            inbox: 0,
            active: 0,
            done: 2,
            failed: 1,
        },
    );
    Status {
        version: "0.1.0".into(),
        active_account: Some("alice".into()),
        partial_swap: true,
        swap_in_progress: false,
        accounts: vec![
            AccountStatus {
                name: "alice".into(),
                usable: true,
                five_hour: Some(window(62.5)),
                seven_day: Some(window(10.0)),
                auth: "ok".into(),
                ..Default::default()
            },
            AccountStatus {
                name: "bob".into(),
                usable: false,
                reason: Some("5-hour at 95%".into()),
                five_hour: Some(window(95.0)),
                seven_day: None,
                auth: "ok".into(),
                ..Default::default()
            },
        ],
        sessions: vec![
            session("main-1", "idle"),
            session("main-2", "idle"),
            session("main-3", "working"),
            session("main-4", "failed"),
        ],
        queues,
        ..Default::default()
    }
}

fn sample_counters() -> Counters {
    let c = Counters::default();
    c.record_swap("done", Some(Duration::from_secs(3)));
    c.record_swap("done", Some(Duration::from_secs(45)));
    c.record_swap("rolled_back", Some(Duration::from_secs(400)));
    c.record_swap("refused", None);
    for o in ["done", "done", "done", "failed", "requeued"] {
        c.record_task(o);
    }
    for ms in [30, 200, 200, 7_000, 30_000] {
        c.observe_dispatch(Duration::from_millis(ms));
    }
    c.set_notifications_dropped(4);
    c
}

#[test]
fn metrics_parse_with_prometheus_client() {
    let text = metrics::render(&sample_status(), &sample_counters());
    let f = parse(&text);

    // Sessions: every state, 0 included.
    assert_eq!(family(&f, "claude_failover_sessions")["type"], "gauge");
    assert_eq!(
        family(&f, "claude_failover_sessions")["samples"]
            .as_array()
            .unwrap()
            .len(),
        State::ALL.len()
    );
    let sessions = |st: &str| value(&f, "claude_failover_sessions", &[("state", st)]);
    assert_eq!(sessions("idle"), 2.0);
    assert_eq!(sessions("working"), 1.0);
    assert_eq!(sessions("failed"), 1.0);
    assert_eq!(sessions("starting"), 0.0);
    assert_eq!(sessions("backoff"), 0.0);

    // Counters: the parser files `x_total` under family `x`.
    assert_eq!(family(&f, "claude_failover_swaps")["type"], "counter");
    assert_eq!(
        value(&f, "claude_failover_swaps_total", &[("result", "done")]),
        2.0
    );
    assert_eq!(
        value(
            &f,
            "claude_failover_swaps_total",
            &[("result", "rolled_back")]
        ),
        1.0
    );
    assert_eq!(
        value(&f, "claude_failover_swaps_total", &[("result", "refused")]),
        1.0
    );
    assert_eq!(
        value(&f, "claude_failover_swaps_total", &[("result", "partial")]),
        0.0
    );
    assert_eq!(
        value(&f, "claude_failover_swaps_total", &[("result", "failed")]),
        0.0
    );
    assert_eq!(family(&f, "claude_failover_tasks")["type"], "counter");
    assert_eq!(
        value(&f, "claude_failover_tasks_total", &[("outcome", "done")]),
        3.0
    );
    assert_eq!(
        value(&f, "claude_failover_tasks_total", &[("outcome", "failed")]),
        1.0
    );
    assert_eq!(
        value(
            &f,
            "claude_failover_tasks_total",
            &[("outcome", "requeued")]
        ),
        1.0
    );
    assert_eq!(
        family(&f, "claude_failover_notifications_dropped")["type"],
        "counter"
    );
    assert_eq!(
        value(&f, "claude_failover_notifications_dropped_total", &[]),
        4.0
    );

    // Quota: only the windows that are known.
    let util = family(&f, "claude_failover_quota_utilization_percent");
    assert_eq!(util["type"], "gauge");
    assert_eq!(util["samples"].as_array().unwrap().len(), 3);
    let u = |a: &str, w: &str| {
        value(
            &f,
            "claude_failover_quota_utilization_percent",
            &[("account", a), ("window", w)],
        )
    };
    assert_eq!(u("alice", "five_hour"), 62.5);
    assert_eq!(u("alice", "seven_day"), 10.0);
    assert_eq!(u("bob", "five_hour"), 95.0);

    assert_eq!(
        value(
            &f,
            "claude_failover_account_usable",
            &[("account", "alice")]
        ),
        1.0
    );
    assert_eq!(
        value(&f, "claude_failover_account_usable", &[("account", "bob")]),
        0.0
    );
    assert_eq!(
        value(
            &f,
            "claude_failover_active_account",
            &[("account", "alice")]
        ),
        1.0
    );
    assert_eq!(
        value(&f, "claude_failover_active_account", &[("account", "bob")]),
        0.0
    );
    assert_eq!(value(&f, "claude_failover_partial_swap", &[]), 1.0);
    assert_eq!(value(&f, "claude_failover_swap_in_progress", &[]), 0.0);

    let q = |p: &str, s: &str| {
        value(
            &f,
            "claude_failover_queue_tasks",
            &[("project", p), ("state", s)],
        )
    };
    assert_eq!(q("webapp", "inbox"), 3.0);
    assert_eq!(q("webapp", "active"), 1.0);
    assert_eq!(q("webapp", "done"), 7.0);
    assert_eq!(q("api", "failed"), 1.0);
    assert_eq!(
        family(&f, "claude_failover_queue_tasks")["samples"]
            .as_array()
            .unwrap()
            .len(),
        8
    );

    // Histograms: cumulative buckets, +Inf equal to the count.
    let d = family(&f, "claude_failover_dispatch_latency_seconds");
    assert_eq!(d["type"], "histogram");
    let bucket = |name: &str, le: &str| value(&f, &format!("{name}_bucket"), &[("le", le)]);
    let dl = "claude_failover_dispatch_latency_seconds";
    let expected = [
        ("0.05", 1.0),
        ("0.1", 1.0),
        ("0.25", 3.0),
        ("0.5", 3.0),
        ("1.0", 3.0),
        ("2.5", 3.0),
        ("5.0", 3.0),
        ("10.0", 4.0),
        ("+Inf", 5.0),
    ];
    let buckets: Vec<&Value> = d["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == format!("{dl}_bucket"))
        .collect();
    assert_eq!(buckets.len(), expected.len());
    for (b, (le, n)) in buckets.iter().zip(expected) {
        // The parser keeps `le` as written; compare numerically.
        let got_le: f64 = b["labels"]["le"]
            .as_str()
            .unwrap()
            .replace("+Inf", "inf")
            .parse()
            .unwrap();
        assert_eq!(got_le, le.replace("+Inf", "inf").parse::<f64>().unwrap());
        assert_eq!(b["value"].as_f64().unwrap(), n, "le={le}");
    }
    assert_eq!(bucket(dl, "+Inf"), value(&f, &format!("{dl}_count"), &[]));
    assert_eq!(value(&f, &format!("{dl}_count"), &[]), 5.0);
    assert!((value(&f, &format!("{dl}_sum"), &[]) - 37.43).abs() < 1e-9);

    let fo = "claude_failover_failover_duration_seconds";
    assert_eq!(family(&f, fo)["type"], "histogram");
    assert_eq!(bucket(fo, "2.5"), 0.0);
    assert_eq!(bucket(fo, "5"), 1.0);
    assert_eq!(bucket(fo, "60"), 2.0);
    assert_eq!(bucket(fo, "300"), 2.0);
    assert_eq!(bucket(fo, "+Inf"), 3.0);
    assert_eq!(value(&f, &format!("{fo}_count"), &[]), 3.0);
    assert_eq!(value(&f, &format!("{fo}_sum"), &[]), 448.0);
}

#[test]
fn empty_snapshot_still_parses() {
    let f = parse(&metrics::render(&Status::default(), &Counters::default()));
    assert_eq!(
        value(&f, "claude_failover_sessions", &[("state", "idle")]),
        0.0
    );
    assert_eq!(
        value(
            &f,
            "claude_failover_failover_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        0.0
    );
    assert_eq!(value(&f, "claude_failover_partial_swap", &[]), 0.0);
}

#[test]
fn label_escaping_round_trips() {
    // Account names cannot hold such characters; a synthetic project key and
    // an out-of-band active account exercise the escaping anyway.
    let weird = "C:\\proj \"quoted\"\nsecond line \\n {}=,";
    let mut status = sample_status();
    status.queues.insert(
        weird.to_string(),
        QueueCounts {
            inbox: 5,
            ..Default::default()
        },
    );
    status.active_account = Some(weird.to_string());
    status.sessions.push(session("x", "st\"ate\\\n"));
    let f = parse(&metrics::render(&status, &sample_counters()));
    assert_eq!(
        value(
            &f,
            "claude_failover_queue_tasks",
            &[("project", weird), ("state", "inbox")]
        ),
        5.0
    );
    assert_eq!(
        value(&f, "claude_failover_active_account", &[("account", weird)]),
        1.0
    );
    assert_eq!(
        value(
            &f,
            "claude_failover_active_account",
            &[("account", "alice")]
        ),
        0.0
    );
    assert_eq!(
        value(&f, "claude_failover_sessions", &[("state", "st\"ate\\\n")]),
        1.0
    );
}

fn sample_json() -> Value {
    json!({
        "version": "0.1.0",
        "active_account": "alice",
        "partial_swap": true,
        "swap_in_progress": false,
        "accounts": [
            {"name": "alice", "home": "/h/a", "usable": true, "reason": null, "auth": "ok",
             "five_hour": {"utilization": 62.0, "resets_at": "2026-01-06T12:13:00Z", "source": "statusline", "observed_at": "2026-01-06T09:57:00Z"},
             "seven_day": {"utilization": 10, "resets_at": "2026-01-08T14:05:00Z", "source": "statusline", "observed_at": "2026-01-06T09:57:00Z"}},
            {"name": "bob", "home": "/h/b", "usable": false, "reason": "5-hour at 95%", "auth": "ok",
             "five_hour": {"utilization": 95, "resets_at": null, "source": null, "observed_at": null},
             "seven_day": null},
            {"name": "carol"}
        ],
        "sessions": [
            {"name": "main-1", "pool": "main", "state": "idle", "account": "alice", "claude_session_id": null,
             "task": null, "cwd": "/w", "since": "2026-01-06T09:55:00Z", "restarts": 0, "last_error": null},
            {"name": "main-2", "pool": "main", "state": "backoff", "account": null, "task": "fix the flaky test",
             "since": "garbage", "restarts": 3, "last_error": format!("claude exited: {}", "x".repeat(200))},
            {"name": "main-3"}
        ],
        "queues": {"webapp": {"inbox": 3, "active": 1, "done": 12, "failed": 0}, "api": null},
        "last_swap": {"from": "bob", "to": "alice", "reason": "bob: 5-hour at 95%", "started_at": "2026-01-06T09:50:00Z",
                      "duration_ms": 12345, "result": "partial"},
        "config_error": null,
        "health_problems": ["partial swap: main-2 still on bob"],
        "unmanaged_sessions": []
    })
}

#[test]
fn status_table_shows_the_essentials() {
    let now = parse_rfc3339("2026-01-06T10:00:00Z").unwrap();
    let t = status_table::render(&sample_json(), now);
    let line = |needle: &str| {
        t.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{t}"))
            .to_string()
    };

    assert!(t.starts_with("claude-failover 0.1.0"), "{t}");
    assert!(line("claude-failover 0.1.0").contains("active account: alice"));
    assert!(line("PARTIAL SWAP").starts_with("!!!"), "{t}");
    assert!(!t.contains("CONFIG ERROR"));

    let alice = line("  alice ");
    assert!(alice.contains('*'), "{alice}");
    assert!(alice.contains("usable"), "{alice}");
    assert!(
        alice.contains("[######----]  62% resets in 2h13m (12:13 UTC)"),
        "{alice}"
    );
    assert!(
        alice.contains("[#---------]  10% resets in 2d4h (Thu 14:05 UTC)"),
        "{alice}"
    );
    assert!(alice.contains("statusline 3m ago"), "{alice}");
    let bob = line("  bob ");
    assert!(
        bob.contains("5-hour at 95%") && bob.contains("[##########]  95%") && !bob.contains('*'),
        "{bob}"
    );
    assert!(line("  carol").contains('-'));

    let m1 = line("main-1");
    assert!(m1.contains("idle") && m1.contains("5m ago"), "{m1}");
    let m2 = line("  main-2  ");
    assert!(
        m2.contains("backoff") && m2.contains("fix the flaky test") && m2.contains("garbage"),
        "{m2}"
    );
    assert!(
        m2.contains("claude exited: xxx") && m2.ends_with("..."),
        "{m2}"
    );
    assert!(!m2.contains(&"x".repeat(100)), "{m2}");
    assert!(line("main-3").contains('-'));

    let webapp = line("webapp");
    assert_eq!(
        webapp.split_whitespace().collect::<Vec<_>>(),
        ["webapp", "3", "1", "12", "0"]
    );
    assert_eq!(
        line("  api").split_whitespace().collect::<Vec<_>>(),
        ["api", "-", "-", "-", "-"]
    );

    let swap = line("bob -> alice");
    assert!(
        swap.contains("PARTIAL") && swap.contains("took 12.3s") && swap.contains("10m ago"),
        "{swap}"
    );
    assert!(line("reason:").contains("bob: 5-hour at 95%"));

    // Columns line up: every ACCOUNTS row starts its STATUS column at the
    // same offset as the header.
    let header = line("ACCOUNT  ");
    let col = header.find("STATUS").unwrap();
    assert_eq!(&alice[col..col + 6], "usable", "{t}");
    assert!(t.lines().all(|l| l.is_ascii() && l == l.trim_end()), "{t}");
}

#[test]
fn status_table_with_config_error_and_nothing_else() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_693_600);
    let v = json!({"version": null, "active_account": null, "swap_in_progress": true,
                   "config_error": "pools.main.size: must be at least 1", "last_swap": null,
                   "accounts": null, "sessions": null, "queues": null});
    let t = status_table::render(&v, now);
    assert!(t.contains("active account: none"), "{t}");
    assert!(t.contains("swap in progress"), "{t}");
    assert!(
        t.contains("CONFIG ERROR") && t.contains("pools.main.size: must be at least 1"),
        "{t}"
    );
    assert!(!t.contains("PARTIAL"), "{t}");
    assert_eq!(t.matches("(none)").count(), 4, "{t}");
}
