//! Every limit in the quota model, end to end (real Claude Code, real tmux,
//! the stand-in): a weekly limit scoped to one model stops an account only
//! for the pools that run that model.

mod support;

use std::time::{Duration, Instant};

use support::{assert_task_once, enqueue_task, task_result, wait_for, wait_task_ended, World};

const UP: Duration = Duration::from_secs(90);

fn inbox_has(project: &std::path::Path, name: &str) -> bool {
    support::queue_dir(project, "inbox")
        .join(format!("{name}.md"))
        .exists()
}

/// Must-show 4. Two pools: `deep` runs Opus, `fast` runs Sonnet. Account
/// alpha (active) has its Opus week spent while its session and weekly
/// limits are low; beta is over its 5-hour threshold, so no account serves
/// both pools. Then: alpha is passed over for `deep` (its task waits in the
/// inbox, no Opus request reaches alpha, the pool is reported held and
/// notified once) while `fast` still uses alpha (its task is done there).
/// When beta has room again the daemon moves to it, the account that serves
/// every pool, and the held task is done on beta. `/status`, `status` and
/// `/metrics` show every limit with its kind and model.
#[test]
fn a_spent_opus_week_passes_the_account_over_for_the_opus_pool_only() {
    let (hook, got) = support::receiver();
    let Some(mut w) = World::new("ml-scoped", |spec| {
        spec.pools = vec![
            testkit::sandbox::SandboxPool {
                name: "deep".into(),
                prefix: "ccl-deep-".into(),
                start_index: 11,
                min: 1,
                max: 1,
                model: Some("opus".into()),
            },
            testkit::sandbox::SandboxPool {
                name: "fast".into(),
                prefix: "ccl-fast-".into(),
                start_index: 21,
                min: 1,
                max: 1,
                model: Some("sonnet".into()),
            },
        ];
        spec.projects = vec![
            ("p-deep".into(), "deep".into()),
            ("p-fast".into(), "fast".into()),
        ];
        spec.quota_yaml =
            "  poll_interval: 2s\n  limits_poll_interval: 2s\n  swap_cooldown: 0s\n".into();
    }) else {
        return;
    };
    w.sb.notify_webhook(&format!("{hook}/events"));
    w.api.set_usage("alpha", 5.0, 5.0).unwrap();
    w.api.set_scoped("alpha", "Opus", Some(100.0)).unwrap();
    w.api.set_usage("beta", 95.0, 5.0).unwrap();
    let deep = w.sb.project_dirs[0].1.clone();
    let fast = w.sb.project_dirs[1].1.clone();
    w.start_daemon(&[]);
    w.wait_state("ccl-deep-11", "idle", UP);
    w.wait_state("ccl-fast-21", "idle", UP);

    // The daemon read alpha's limits and holds the Opus pool.
    let status = wait_for(Duration::from_secs(20), "deep held", || {
        w.status().filter(|s| s["held_pools"].get("deep").is_some())
    });
    let why = status["held_pools"]["deep"].as_str().unwrap().to_string();
    assert!(
        why.contains("alpha") && why.contains("Opus weekly limit"),
        "{why}"
    );
    assert!(status["held_pools"].get("fast").is_none(), "{status}");
    assert_eq!(status["active_account"], "alpha");
    let alpha = status["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "alpha")
        .unwrap()
        .clone();
    let kinds: Vec<(String, Option<String>)> = alpha["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_string(),
                l["model"].as_str().map(String::from),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("session".into(), None),
            ("weekly_all".into(), None),
            ("weekly_scoped".into(), Some("Opus".into())),
        ],
        "{alpha}"
    );
    assert!(alpha["blocked_pools"].get("deep").is_some(), "{alpha}");
    assert_eq!(alpha["usable"], true, "its other limits are low: {alpha}");

    let t0 = Instant::now();
    enqueue_task(
        &deep,
        "think-hard",
        "Plan the migration in three paragraphs.\n\nReply with one line.",
    );
    enqueue_task(
        &fast,
        "quick-one",
        "List the files you would touch.\n\nReply with one line.",
    );
    assert_eq!(wait_task_ended(&fast, "quick-one", UP), "done");
    let r = task_result(&fast, "quick-one");
    assert_eq!(
        r["account"], "alpha",
        "the Sonnet pool still uses alpha: {r}"
    );
    // The Opus task waited all along: still in the inbox, never sent.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        inbox_has(&deep, "think-hard"),
        "the held task left the inbox"
    );
    let opus_on_alpha: Vec<_> = w
        .api
        .requests_for("alpha")
        .into_iter()
        .filter(|r| r.model.contains("opus") && r.prompt.contains("migration"))
        .collect();
    assert!(
        opus_on_alpha.is_empty(),
        "an Opus task reached alpha: {opus_on_alpha:?}"
    );
    let status = w.status().unwrap();
    assert!(
        status["last_swap"].is_null(),
        "no swap while none serves both: {status}"
    );

    // `status` and `/metrics` show every limit with its kind and model.
    let table = std::process::Command::new(support::bin())
        .args(["--config", w.sb.config_path.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("pool deep holds its tasks"), "{table}");
    assert!(
        table.contains("MODEL LIMITS") && table.contains("Opus"),
        "{table}"
    );
    let metrics = ureq::get(&format!("http://{}/metrics", w.sb.http_listen))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    for line in [
        "claude_failover_quota_limit_utilization_percent{account=\"alpha\",kind=\"weekly_scoped\",model=\"Opus\"} 100",
        "claude_failover_pool_held{pool=\"deep\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }

    // beta has room again: it serves both pools, so the daemon moves to it.
    w.api.set_usage("beta", 0.0, 5.0).unwrap();
    assert_eq!(wait_task_ended(&deep, "think-hard", UP), "done");
    let r = task_result(&deep, "think-hard");
    assert_eq!(r["account"], "beta", "{r}");
    assert_task_once(&deep, "think-hard", "done");
    assert_task_once(&fast, "quick-one", "done");
    let status = w.status().unwrap();
    assert_eq!(status["active_account"], "beta");
    assert!(
        status["held_pools"]
            .as_object()
            .is_some_and(|m| m.is_empty()),
        "{status}"
    );
    let swap = &status["last_swap"];
    assert_eq!(
        (swap["from"].as_str(), swap["to"].as_str()),
        (Some("alpha"), Some("beta")),
        "{swap}"
    );
    assert!(
        swap["reason"].as_str().unwrap().contains("pool deep"),
        "{swap}"
    );
    // The Opus task's requests went to beta, with an Opus model.
    assert!(
        w.api
            .requests_for("beta")
            .iter()
            .any(|r| r.model.contains("opus") && r.prompt.contains("migration")),
        "no Opus request on beta"
    );
    // One pool_held notification, whatever the polls in between.
    let held_notes = got
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, body)| body.contains("pool_held"))
        .count();
    assert_eq!(held_notes, 1, "{:?}", got.lock().unwrap());
    eprintln!("scoped limit scenario took {:?}", t0.elapsed());
}
