//! The fleet (`fleet.redis`), end to end: two daemons on this machine stand
//! in for two machines (their own sandboxes, state folders, tmux servers,
//! seats and logins: each machine's tokens are its own), the same stand-in
//! accounts alpha, beta and gamma, a real `redis-server` between them, real
//! Claude Code in every session.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{daemon_log, wait_for, World};
use testkit::browser::Browser;
use testkit::redis_server::RedisServer;

const UP: Duration = Duration::from_secs(120);
const LEASE_TTL: Duration = Duration::from_secs(6);
/// How long the dashboard is given to show what `/status` says.
const PAGE: Duration = Duration::from_secs(30);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One machine of the fleet: `sessions` live sessions, three accounts,
/// alpha's 5-hour threshold at 50 %.
fn machine(first: Option<&World>, name: &str, redis: &str, sessions: u32) -> Option<World> {
    let redis = redis.to_string();
    let machine = name.to_string();
    let tweak = move |spec: &mut testkit::sandbox::SandboxSpec| {
        spec.accounts = vec!["alpha".into(), "beta".into(), "gamma".into()];
        spec.swap_mode = "live".into();
        spec.pools[0].min = sessions;
        spec.pools[0].max = sessions;
        spec.quota_yaml =
            "  poll_interval: 30s\n  swap_cooldown: 0s\n  five_hour_threshold: 50\n".into();
        spec.extra_yaml = format!(
            "swap:\n  verify_timeout: 30s\nfleet:\n  redis: {redis}\n  machine: {machine}\n  lease_ttl: {}s\n",
            LEASE_TTL.as_secs()
        );
    };
    let w = match first {
        None => World::new(name, tweak)?,
        Some(f) => World::join(f, name, tweak)?,
    };
    if first.is_none() {
        // Each account's windows reset at their own times: a live session's
        // reading tells which account it came from.
        w.api
            .set_resets("beta", now() + 3 * 3600, now() + 5 * 86400)
            .unwrap();
        w.api
            .set_resets("gamma", now() + 4 * 3600, now() + 6 * 86400)
            .unwrap();
    }
    Some(w)
}

fn fleet(w: &World) -> serde_json::Value {
    w.status().map(|s| s["fleet"].clone()).unwrap_or_default()
}

fn machines_seen(w: &World) -> Vec<(String, String)> {
    fleet(w)["machines"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    (
                        m["machine"].as_str().unwrap_or("").to_string(),
                        m["account"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn active(w: &World) -> String {
    w.status()
        .and_then(|s| s["active_account"].as_str().map(String::from))
        .unwrap_or_default()
}

/// Both daemons up, their session idle, each seeing the other.
/// A script for the dashboard: true when the Fleet panel is shown with
/// `state` and exactly these machines, each on its account.
fn fleet_panel_shows(state: &str, machines: &[(&str, &str)]) -> String {
    let want: Vec<String> = machines.iter().map(|(m, a)| format!("{m}={a}")).collect();
    format!(
        "(() => {{ const p = document.getElementById('fleet-panel'); \
           if (!p || p.hidden || document.getElementById('fleet-state').textContent !== {state:?}) return false; \
           const rows = [...document.querySelectorAll('#fleet-machines tr[data-machine]')] \
             .map(r => r.dataset.machine + '=' + r.querySelector('.account').textContent).sort(); \
           return JSON.stringify(rows) === {:?} }})()",
        serde_json::to_string(&want).unwrap()
    )
}

fn start_both(m1: &mut World, m2: &mut World) {
    m1.start_daemon(&[]);
    m2.start_daemon(&[]);
    for w in [&*m1, &*m2] {
        w.wait_state("ccl-auto-11", "idle", UP);
        wait_for(
            Duration::from_secs(20),
            "both machines in the fleet view",
            || (fleet(w)["connected"] == true && machines_seen(w).len() == 2).then_some(()),
        );
    }
}

/// Must-shows 1 and 3. Alpha crosses its threshold: both machines leave it
/// and end on beta and gamma, one each (the claim), each with its own login
/// of its new account. Then a status-line reading taken on machine 1 shows
/// on machine 2's `/status` within 2 s, with its source and machine.
#[test]
fn two_machines_leave_alpha_for_beta_and_gamma_one_each_and_share_what_they_read() {
    if support::e2e_claude().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let mut m1 = machine(None, "fleet-m1", &redis.url(), 1).unwrap();
    let mut m2 = machine(Some(&m1), "fleet-m2", &redis.url(), 1).unwrap();
    start_both(&mut m1, &mut m2);
    assert_eq!((active(&m1), active(&m2)), ("alpha".into(), "alpha".into()));

    // Alpha over its threshold, as machine 1's next status line says: the
    // only reading machine 2 gets of it is machine 1's (polls are 30 s apart).
    m1.api.set_usage("alpha", 70.0, 10.0).unwrap();
    m1.type_prompt("ccl-auto-11", "say over-the-threshold");
    wait_for(Duration::from_secs(60), "both machines off alpha", || {
        (active(&m1) != "alpha" && active(&m2) != "alpha").then_some(())
    });
    let mut ends = [active(&m1), active(&m2)];
    ends.sort();
    assert_eq!(
        ends,
        ["beta".to_string(), "gamma".to_string()],
        "m1 log:\n{}\nm2 log:\n{}",
        daemon_log(&m1.h, 0),
        daemon_log(&m2.h, 0)
    );
    // Each machine's view of the fleet agrees.
    for w in [&m1, &m2] {
        wait_for(
            Duration::from_secs(10),
            "the leases name the new accounts",
            || {
                let mut seen = machines_seen(w);
                seen.sort();
                (seen
                    == vec![
                        ("fleet-m1".to_string(), active(&m1)),
                        ("fleet-m2".to_string(), active(&m2)),
                    ])
                .then_some(())
            },
        );
    }

    // Each machine's event stream shows the other's swap (the events channel).
    for (w, other) in [(&m1, "fleet-m2"), (&m2, "fleet-m1")] {
        wait_for(
            Duration::from_secs(10),
            "the other machine's swap in the stream",
            || {
                let recent = w.status()?["recent"]["fleet"].clone();
                let kinds: Vec<String> = recent
                    .as_array()?
                    .iter()
                    .filter(|e| e["machine"] == other && e["from"] == "alpha")
                    .filter_map(|e| e["kind"].as_str().map(String::from))
                    .collect();
                (kinds.contains(&"swap_started".to_string())
                    && kinds.contains(&"swap_ended".to_string()))
                .then_some(())
            },
        );
    }

    // Each session's next request goes out as its machine's new account,
    // with that machine's own token (nothing credential-bearing is shared).
    for (w, tag) in [(&m1, ""), (&m2, "-fleet-m2")] {
        let account = active(w);
        let word = format!("after-fleet-swap{tag}");
        w.type_prompt("ccl-auto-11", &format!("say {word}"));
        let r = w
            .api
            .wait_for_request(|r| r.prompt.contains(&word), Duration::from_secs(60))
            .expect("the session's next request");
        assert_eq!(r.account.as_deref(), Some(account.as_str()));
        assert_eq!(r.token, format!("sk-ant-oat01-sandbox-{account}{tag}"));
        assert!(
            !std::fs::read_to_string(w.h.path().join("daemon-0.log"))
                .unwrap_or_default()
                .contains(&r.token),
            "a token reached the log"
        );
    }

    // Must-show 3: a status-line reading on machine 1, seen on machine 2.
    let account = active(&m1);
    let reading = |w: &World| -> Option<serde_json::Value> {
        let s = w.status()?;
        s["accounts"]
            .as_array()?
            .iter()
            .find(|a| a["name"] == account.as_str())
            .map(|a| a["five_hour"].clone())
    };
    let before = reading(&m1).and_then(|r| r["observed_at_ms"].as_u64());
    m1.api.set_usage(&account, 33.0, 12.0).unwrap();
    m1.type_prompt("ccl-auto-11", "say reading-for-the-fleet");
    let (observed, seen_on_m1) = wait_for(
        Duration::from_secs(60),
        "m1's new status-line reading",
        || {
            let r = reading(&m1)?;
            let at = r["observed_at_ms"].as_u64()?;
            (r["source"] == "statusline" && Some(at) != before && r["machine"].is_null())
                .then_some((at, Instant::now()))
        },
    );
    let on_m2 = wait_for(Duration::from_secs(10), "m1's reading on m2", || {
        let r = reading(&m2)?;
        (r["observed_at_ms"].as_u64() == Some(observed)).then_some((r, Instant::now()))
    });
    let late_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - on_m2.1.elapsed().as_millis() as u64
        - observed;
    assert_eq!(on_m2.0["source"], "statusline", "{}", on_m2.0);
    assert_eq!(on_m2.0["machine"], "fleet-m1", "{}", on_m2.0);
    assert!(
        late_ms <= 2000,
        "m2 showed m1's reading {late_ms} ms after m1 took it (m1's /status had it {} ms before m2's)",
        on_m2.1.duration_since(seen_on_m1).as_millis()
    );
    eprintln!("m1's reading reached m2's /status {late_ms} ms after m1 took it");
}

/// Must-shows 4 and 5. Redis killed mid-run: both daemons go on alone (a
/// swap still happens on each), `/status` says disconnected, `/healthz`
/// stays 200; Redis back: both rejoin within 10 s. Then machine 2 is
/// killed with `kill -9`: its lease expires and machine 1's view drops it
/// within the lease's TTL.
#[test]
fn redis_killed_both_go_on_alone_then_rejoin_and_a_killed_machine_drops_out_of_the_view() {
    if support::e2e_claude().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path());
    let mut m1 = machine(None, "fleet-m1", &redis.url(), 1).unwrap();
    let mut m2 = machine(Some(&m1), "fleet-m2", &redis.url(), 1).unwrap();
    start_both(&mut m1, &mut m2);
    // The dashboard's Fleet panel on machine 1, in a real Chromium, followed
    // through the outage, the rejoin and machine 2's death without a reload.
    let chromium = testkit::browser::chromium().expect(
        "the end-to-end suite needs Debian's chromium (scripts/test.sh installs it; or set CLAUDE_FAILOVER_CHROMIUM)",
    );
    let mut page = Browser::launch(
        &chromium,
        &format!("http://{}/", m1.sb.http_listen),
        1280,
        1000,
    );
    page.wait_for(
        PAGE,
        "the Fleet panel, connected, both machines on alpha",
        &fleet_panel_shows("connected", &[("fleet-m1", "alpha"), ("fleet-m2", "alpha")]),
    );
    page.eval("window.__no_reload = 7");

    redis.kill();
    page.wait_for(
        PAGE,
        "the Fleet panel says Redis is gone, and why",
        "document.getElementById('fleet-state').textContent === 'disconnected: on its own' \
         && !!document.querySelector('#fleet .why') && document.querySelector('#fleet .why').textContent.length > 0",
    );
    for w in [&m1, &m2] {
        wait_for(Duration::from_secs(10), "the fleet disconnected", || {
            (fleet(w)["connected"] == false).then_some(())
        });
        let f = fleet(w);
        assert!(f["since"].is_string(), "{f}");
        assert!(f["error"].is_string(), "{f}");
        let healthz = ureq::get(&format!("http://{}/healthz", w.sb.http_listen))
            .call()
            .map(|r| r.status())
            .unwrap_or(0);
        assert_eq!(healthz, 200, "Redis away alone is no health problem");
    }
    // Each goes on alone: a swap on each.
    for (w, to) in [(&m1, "beta"), (&m2, "gamma")] {
        let r = w.swap_to(to, "fleet outage test");
        assert_eq!(r["result"], "done", "{r}");
        assert_eq!(active(w), to);
    }
    for w in [&m1, &m2] {
        let log = daemon_log(&w.h, 0);
        assert_eq!(
            log.matches("this machine goes on alone with its own readings")
                .count(),
            1,
            "one warning per outage:\n{log}"
        );
        let notes = w.status().unwrap()["recent"]["notifications"].clone();
        assert!(notes.to_string().contains("fleet_disconnected"), "{notes}");
    }

    let back = Instant::now();
    redis.restart();
    for w in [&m1, &m2] {
        wait_for(Duration::from_secs(10), "both rejoined", || {
            (fleet(w)["connected"] == true && machines_seen(w).len() == 2).then_some(())
        });
    }
    let rejoined = back.elapsed();
    page.wait_for(
        PAGE,
        "the Fleet panel, connected again, m1 on beta and m2 on gamma",
        &fleet_panel_shows("connected", &[("fleet-m1", "beta"), ("fleet-m2", "gamma")]),
    );
    // A hung Redis (it takes connections and answers nothing): a swap is
    // held up by no more than the calls' own deadlines, and both go on alone.
    redis.pause();
    let asked = Instant::now();
    // No target named: the fleet's claim is asked, and not waited for long.
    let r = m1.swap_to("", "hung redis test");
    let took = asked.elapsed();
    assert_eq!(r["result"], "done", "{r}");
    assert!(
        // The claim's deadline (400 ms) on top of a live swap; a blocking
        // call would cost 500 ms per round trip, several of them.
        took < Duration::from_millis(2500),
        "a swap took {took:?} while Redis hung: {r}"
    );
    let log = daemon_log(&m1.h, 0);
    assert!(
        log.contains("no answer to a claim within") || log.contains("cannot claim a swap target"),
        "the claim was asked and given up on:\n{log}"
    );
    for w in [&m1, &m2] {
        wait_for(
            Duration::from_secs(10),
            "a hung Redis is seen as unreachable",
            || (fleet(w)["connected"] == false).then_some(()),
        );
    }
    let r = m1.swap_to("", "hung redis test, back");
    assert_eq!(r["result"], "done", "{r}");
    redis.resume();
    for w in [&m1, &m2] {
        wait_for(
            Duration::from_secs(10),
            "both rejoined after the hang",
            || (fleet(w)["connected"] == true && machines_seen(w).len() == 2).then_some(()),
        );
    }
    eprintln!("a swap while Redis hung took {} ms", took.as_millis());
    assert!(rejoined <= Duration::from_secs(10), "{rejoined:?}");
    let mut seen = machines_seen(&m1);
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("fleet-m1".to_string(), "beta".to_string()),
            ("fleet-m2".to_string(), "gamma".to_string())
        ]
    );
    eprintln!(
        "both machines rejoined {} ms after Redis came back",
        rejoined.as_millis()
    );

    // Must-show 5: machine 2 dies without a word.
    let last_renewal_bound = Instant::now();
    m2.h.kill_children();
    let gone = wait_for(
        LEASE_TTL + Duration::from_secs(5),
        "m2 out of m1's view",
        || (machines_seen(&m1).iter().all(|(m, _)| m != "fleet-m2")).then_some(Instant::now()),
    );
    let after = gone.duration_since(last_renewal_bound);
    page.wait_for(
        PAGE,
        "the Fleet panel without the dead machine",
        &fleet_panel_shows("connected", &[("fleet-m1", "beta")]),
    );
    assert_eq!(page.eval("window.__no_reload"), 7, "the page was reloaded");
    assert!(
        // The view drops a lease at its expiry, at most the TTL after the kill;
        // a second for this loop to ask and the answer to come on a loaded machine.
        after <= LEASE_TTL + Duration::from_secs(1),
        "m2 left m1's view {} ms after its kill; the lease is {} s",
        after.as_millis(),
        LEASE_TTL.as_secs()
    );
    eprintln!(
        "a killed machine left the view {} ms after kill -9",
        after.as_millis()
    );
}
