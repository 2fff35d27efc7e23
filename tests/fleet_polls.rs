//! The fleet's usage-endpoint polls over ten minutes (issue 18, must-show
//! 2): two daemons standing in for two machines, three accounts, no
//! session (so no status-line reading: every reading must come from a
//! poll). For the whole fleet the stand-in sees at most one usage request
//! per account per poll interval, and both machines still hold a fresh
//! reading of every account all along: one machine polls, both know.
//!
//! Ten minutes is long beside the rest of the suite, so `scripts/test.sh`
//! runs this binary in the background while `cargo test` runs the others,
//! with `CLAUDE_FAILOVER_FLEET_SOAK=1` (and `CLAUDE_FAILOVER_FLEET_SOAK_SECS`
//! to shorten it by hand). Without that variable it says so and returns.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{wait_for, World};
use testkit::redis_server::RedisServer;

const POLL: Duration = Duration::from_secs(5);

fn machine(first: Option<&World>, name: &str, redis: &str) -> Option<World> {
    let redis = redis.to_string();
    let machine = name.to_string();
    let tweak = move |spec: &mut testkit::sandbox::SandboxSpec| {
        spec.accounts = vec!["alpha".into(), "beta".into(), "gamma".into()];
        spec.swap_mode = "live".into();
        spec.pools[0].min = 0;
        spec.pools[0].max = 1;
        spec.quota_yaml = format!(
            "  poll_interval: {}s\n  limits_poll_interval: {}s\n",
            POLL.as_secs(),
            POLL.as_secs()
        );
        spec.extra_yaml =
            format!("fleet:\n  redis: {redis}\n  machine: {machine}\n  lease_ttl: 6s\n");
    };
    match first {
        None => World::new(name, tweak),
        Some(f) => World::join(f, name, tweak),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn two_machines_three_accounts_ten_minutes_at_most_one_usage_poll_per_account_per_interval() {
    if std::env::var_os("CLAUDE_FAILOVER_FLEET_SOAK").is_none() {
        eprintln!("set CLAUDE_FAILOVER_FLEET_SOAK=1 (scripts/test.sh runs this beside the suite)");
        return;
    }
    let secs: u64 = std::env::var("CLAUDE_FAILOVER_FLEET_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let Some(mut m1) = machine(None, "soak-m1", &redis.url()) else {
        return;
    };
    let mut m2 = machine(Some(&m1), "soak-m2", &redis.url()).unwrap();
    m1.start_daemon(&[]);
    m2.start_daemon(&[]);
    for w in [&m1, &m2] {
        wait_for(
            Duration::from_secs(30),
            "both machines in the fleet",
            || {
                let f = w.status()?["fleet"].clone();
                (f["connected"] == true && f["machines"].as_array()?.len() == 2).then_some(())
            },
        );
    }
    let start = now_ms();
    let run = Instant::now();
    let mut stalest: BTreeMap<(String, String), u64> = BTreeMap::new();
    while run.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        if run.elapsed() < 3 * POLL {
            continue;
        }
        // Every machine holds a reading of every account no older than three
        // intervals (plus two seconds of slack for a loaded machine): the fleet's one poll serves both.
        for (name, w) in [("soak-m1", &m1), ("soak-m2", &m2)] {
            let Some(s) = w.status() else { continue };
            for a in s["accounts"].as_array().into_iter().flatten() {
                let account = a["name"].as_str().unwrap_or("").to_string();
                let at = a["five_hour"]["observed_at_ms"].as_u64().unwrap_or(0);
                let age = now_ms().saturating_sub(at);
                let e = stalest.entry((name.to_string(), account)).or_default();
                *e = (*e).max(age);
            }
        }
    }
    let hits: Vec<_> = m1
        .api
        .hits()
        .into_iter()
        .filter(|h| h.path.starts_with("/api/oauth/usage"))
        .filter(|h| h.at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64 >= start)
        .collect();
    let mut report = Vec::new();
    for account in ["alpha", "beta", "gamma"] {
        let mut at: Vec<(u64, &str)> = hits
            .iter()
            .filter(|h| h.account.as_deref() == Some(account))
            .map(|h| {
                (
                    h.at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64,
                    if h.token.ends_with("-soak-m2") {
                        "m2"
                    } else {
                        "m1"
                    },
                )
            })
            .collect();
        at.sort();
        let gaps: Vec<u64> = at.windows(2).map(|w| w[1].0 - w[0].0).collect();
        let shortest = gaps.iter().copied().min().unwrap_or(u64::MAX);
        let by_m2 = at.iter().filter(|(_, m)| *m == "m2").count();
        let intervals = secs / POLL.as_secs();
        report.push(format!(
            "{account}: {} usage requests in {intervals} intervals ({} by m1, {by_m2} by m2), shortest gap {shortest} ms",
            at.len(),
            at.len() - by_m2
        ));
        assert!(
            shortest >= POLL.as_millis() as u64,
            "{account}: two usage requests {shortest} ms apart, inside one {} s poll interval: {report:?}",
            POLL.as_secs()
        );
        assert!(
            at.len() as u64 >= intervals * 2 / 3,
            "{account}: only {} polls in {intervals} intervals: {report:?}",
            at.len()
        );
    }
    assert_eq!(
        stalest.len(),
        6,
        "every machine's view of every account was read: {stalest:?}"
    );
    for ((machine, account), age) in &stalest {
        assert!(
            *age <= 3 * POLL.as_millis() as u64 + 2000,
            "{machine} went {age} ms without a reading of {account}: {report:?}"
        );
    }
    for line in &report {
        eprintln!("{line}");
    }
    eprintln!("stalest reading per machine and account (ms): {stalest:?}");
}
