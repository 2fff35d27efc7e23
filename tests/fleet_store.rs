//! The fleet's Redis keys against a real `redis-server` (no daemon): the
//! compare-and-set claim raced by threads, the poll lease, readings newest
//! first per limit, and foreign data that must neither panic nor be taken.
//! Runs with the end-to-end suite (`scripts/test.sh` installs redis-server).

use std::sync::{Arc, Barrier};
use std::time::Duration;

use claude_failover::decide::quota::{Source, Window};
use claude_failover::store::fleet::{FleetError, FleetStore, PollLease, SharedReading};
use testkit::redis_server::RedisServer;

fn redis() -> Option<(tempfile::TempDir, RedisServer)> {
    if std::env::var_os("CLAUDE_FAILOVER_E2E").is_none() {
        eprintln!("skipped: set CLAUDE_FAILOVER_E2E=1 (scripts/test.sh does)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = RedisServer::start(dir.path());
    Some((dir, r))
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Eight machines claim from the same ranked list at the same instant:
/// every account is won by exactly one, and the rest find all taken.
#[test]
fn machines_claiming_at_once_never_win_the_same_account() {
    let Some((_dir, r)) = redis() else { return };
    for round in 0..20 {
        let accounts = names(&["beta", "gamma", "delta"]);
        let start = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|m| {
                let url = r.url();
                let accounts = accounts.clone();
                let start = start.clone();
                std::thread::spawn(move || {
                    let mut s = FleetStore::open(&url).unwrap();
                    s.ping().unwrap();
                    start.wait();
                    s.claim(&accounts, &format!("m{m}-{round}"), 0).unwrap()
                })
            })
            .collect();
        let mut won: Vec<String> = threads
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect();
        won.sort();
        assert_eq!(won, names(&["beta", "delta", "gamma"]), "round {round}");
        let mut s = FleetStore::open(&r.url()).unwrap();
        for m in 0..8 {
            s.release(&format!("m{m}-{round}"), &accounts, None)
                .unwrap();
        }
        let (_, claims) = s.fleet(&accounts).unwrap();
        assert!(claims.is_empty(), "released: {claims:?}");
    }
}

#[test]
fn a_claim_is_kept_by_its_holder_and_released_by_no_one_else() {
    let Some((_dir, r)) = redis() else { return };
    let mut s = FleetStore::open(&r.url()).unwrap();
    let a = names(&["beta"]);
    assert_eq!(s.claim(&a, "m1", 1000).unwrap().as_deref(), Some("beta"));
    assert_eq!(
        s.claim(&a, "m1", 2000).unwrap().as_deref(),
        Some("beta"),
        "its own again"
    );
    assert_eq!(s.claim(&a, "m2", 2000).unwrap(), None);
    assert_eq!(s.release("m2", &a, None).unwrap(), 0, "not m2's to release");
    let (_, claims) = s.fleet(&a).unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].machine, "m1");
    assert_eq!(s.release("m1", &a, None).unwrap(), 1);
}

#[test]
fn the_poll_lease_goes_to_one_machine_for_its_whole_ttl() {
    let Some((_dir, r)) = redis() else { return };
    let mut s = FleetStore::open(&r.url()).unwrap();
    // Long against the sleeps and round trips below, so a slow machine
    // cannot let it lapse between two steps.
    let ttl = Duration::from_secs(10);
    assert_eq!(
        s.poll_lease("alpha", "m1", ttl).unwrap(),
        PollLease::Granted
    );
    match s.poll_lease("alpha", "m2", ttl).unwrap() {
        PollLease::Held { by, for_ms } => {
            assert_eq!(by, "m1");
            assert!(for_ms <= 10_000 && for_ms > 0, "{for_ms}");
        }
        other => panic!("{other:?}"),
    }
    // Its holder takes it anew, for a whole TTL from now: two seconds on,
    // m2 finds more left than the first grant could still have (≤ 8 s).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        s.poll_lease("alpha", "m1", ttl).unwrap(),
        PollLease::Granted
    );
    match s.poll_lease("alpha", "m2", ttl).unwrap() {
        PollLease::Held { by, for_ms } => {
            assert_eq!(by, "m1");
            assert!(for_ms > 8_500, "renewed for a whole TTL: {for_ms} ms left");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.release("m2", &[], Some("alpha")).unwrap(), 0);
    assert_eq!(s.release("m1", &[], Some("alpha")).unwrap(), 1);
    assert_eq!(
        s.poll_lease("alpha", "m2", ttl).unwrap(),
        PollLease::Granted
    );
}

#[test]
fn readings_are_kept_newest_first_per_limit() {
    let Some((_dir, r)) = redis() else { return };
    let mut s = FleetStore::open(&r.url()).unwrap();
    let w = |u: f64| {
        Some(Window {
            utilization: u,
            resets_at: Some(1),
        })
    };
    let reading =
        |machine: &str, at: u64, five: Option<Window>, seven: Option<Window>| SharedReading {
            account: "alpha".into(),
            machine: machine.into(),
            source: Source::Statusline,
            observed_at_ms: at,
            five_hour: five,
            seven_day: seven,
            limits: None,
        };
    assert!(s.put_reading(&reading("m1", 200, w(20.0), w(5.0))).unwrap());
    // Older for both limits: nothing written.
    assert!(!s
        .put_reading(&reading("m2", 100, w(99.0), w(99.0)))
        .unwrap());
    // Newer for one limit only.
    assert!(s.put_reading(&reading("m2", 300, w(30.0), None)).unwrap());
    let mut got = s.readings(&names(&["alpha"])).unwrap();
    got.sort_by_key(|r| r.observed_at_ms);
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].machine.as_str(), got[0].seven_day), ("m1", w(5.0)));
    assert_eq!((got[1].machine.as_str(), got[1].five_hour), ("m2", w(30.0)));
}

/// Keys of the wrong type or with foreign values: no panic, nothing taken,
/// and an error Redis answers with is not "unreachable".
#[test]
fn foreign_data_is_skipped_and_a_wrong_type_is_an_answer_not_an_outage() {
    let Some((_dir, r)) = redis() else { return };
    r.command("SET claude-failover:reading:alpha:five_hour garbage-without-a-bar");
    r.command("SET claude-failover:reading:alpha:seven_day 5|{not json");
    r.command("SET claude-failover:claim:beta nobar");
    r.command("ZADD claude-failover:machines 99999999999999 ghost");
    r.command("SET claude-failover:machine:ghost {\"machine\":1}");
    r.command("HSET claude-failover:poll:alpha a b");
    let mut s = FleetStore::open(&r.url()).unwrap();
    assert!(s.readings(&names(&["alpha"])).unwrap().is_empty());
    let (machines, claims) = s.fleet(&names(&["alpha", "beta"])).unwrap();
    assert!(
        machines.is_empty() && claims.is_empty(),
        "{machines:?} {claims:?}"
    );
    match s.poll_lease("alpha", "m1", Duration::from_secs(5)) {
        Err(FleetError::Answered(e)) => assert!(e.contains("WRONGTYPE"), "{e}"),
        other => panic!("{other:?}"),
    }
    s.ping().expect("the link stands after an error answer");
    r.command("DEL claude-failover:machine:ghost");
    let (machines, _) = s.fleet(&names(&["alpha"])).unwrap();
    assert!(machines.is_empty());
    assert!(
        r.command("ZSCORE claude-failover:machines ghost")
            .contains("$-1")
            || r.command("ZSCORE claude-failover:machines ghost")
                .contains("_"),
        "an index entry whose lease is gone is removed"
    );
}

#[test]
fn a_server_that_is_gone_is_unreachable_within_the_deadline() {
    let Some((_dir, mut r)) = redis() else { return };
    let mut s = FleetStore::open(&r.url()).unwrap();
    s.ping().unwrap();
    r.kill();
    let t = std::time::Instant::now();
    assert!(matches!(s.ping(), Err(FleetError::Unreachable(_))));
    r.restart();
    s.ping().expect("reconnects at the next call");
    r.pause();
    let t2 = std::time::Instant::now();
    assert!(matches!(s.ping(), Err(FleetError::Unreachable(_))));
    let hung = t2.elapsed();
    r.resume();
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(
        hung < Duration::from_secs(3),
        "a hung server held a call {hung:?}"
    );
}
