//! `GET /events` end to end (real Claude Code, real tmux, the stand-in): a
//! client sees a swap's start, each of its phases and its end, in order,
//! under one swap id; a client that reconnects with `Last-Event-ID` gets
//! exactly the events it missed (compared with a client that stayed).
//! `claude-failover events --follow` prints a swap as it happens, and its
//! `--json` lines parse.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{bin, World};
use testkit::sse::{SseClient, SseEvent};

const UP: Duration = Duration::from_secs(90);
const SOON: Duration = Duration::from_secs(30);

fn live_world(name: &str) -> Option<World> {
    World::new(name, |spec| {
        spec.swap_mode = "live".into();
        spec.quota_yaml = "  poll_interval: 2s\n  swap_cooldown: 0s\n".into();
    })
}

fn swap(w: &World, to: &str) {
    let r = w.swap_to(to, "test");
    assert_eq!(r["result"], "done", "{r}");
}

fn is_end(e: &SseEvent) -> bool {
    e.kind == "swap_ended"
}

/// The swap events of `events`, checked for order: started, the phases,
/// ended, one swap id, rising ids. Returns the phases.
fn swap_story(events: &[SseEvent]) -> Vec<String> {
    let swap: Vec<&SseEvent> = events
        .iter()
        .filter(|e| e.kind.starts_with("swap_"))
        .collect();
    assert!(swap.len() >= 3, "{events:#?}");
    assert_eq!(swap[0].kind, "swap_started", "{swap:#?}");
    assert_eq!(swap.last().unwrap().kind, "swap_ended", "{swap:#?}");
    let id = swap[0].data["data"]["swap_id"]
        .as_str()
        .unwrap()
        .to_string();
    for e in &swap[1..swap.len() - 1] {
        assert_eq!(e.kind, "swap_phase", "{swap:#?}");
        assert_eq!(e.data["data"]["swap_id"], id.as_str());
    }
    assert_eq!(swap.last().unwrap().data["data"]["id"], id.as_str());
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|p| p[1] > p[0]), "ids rise: {ids:?}");
    swap[1..swap.len() - 1]
        .iter()
        .map(|e| e.data["data"]["phase"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_swap_streams_in_order_and_a_reconnect_gets_exactly_what_it_missed() {
    let Some(mut w) = live_world("events") else {
        return;
    };
    w.start_daemon(&[]);
    w.wait_state("ccl-auto-11", "idle", UP);
    let addr = w.sb.http_listen.clone();
    let a = SseClient::connect(&addr, None, None).unwrap();
    assert!(a.head.starts_with("HTTP/1.1 200"), "{}", a.head);
    assert!(a
        .head
        .to_lowercase()
        .contains("content-type: text/event-stream"));
    let stayed = SseClient::connect(&addr, None, None).unwrap();

    swap(&w, "beta");
    let seen = a.until(SOON, is_end);
    assert_eq!(
        swap_story(&seen),
        ["checkpoint", "lock", "keep", "seat", "flip"],
        "{seen:#?}"
    );
    let ended = seen.last().unwrap();
    assert_eq!(ended.data["data"]["result"], "done");
    assert_eq!(ended.data["data"]["mode"], "live");
    // Its phases, timed.
    let phases = ended.data["data"]["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 5, "{ended:?}");
    let x = ended.id.unwrap();
    drop(a);

    // Missed by the client that left: a swap back, and a reload.
    swap(&w, "alpha");
    let r = ureq::post(&format!("http://{addr}/reload"))
        .set("Authorization", &format!("Bearer {}", w.token()))
        .call();
    assert!(r.is_ok(), "{r:?}");
    let all = stayed.until(SOON, |e| e.kind == "config_reloaded");
    let missed: Vec<(u64, String)> = all
        .iter()
        .filter(|e| e.id.unwrap() > x)
        .map(|e| (e.id.unwrap(), e.kind.clone()))
        .collect();
    assert!(missed.iter().any(|(_, k)| k == "swap_ended"), "{missed:?}");
    let y = missed.last().unwrap().0;

    let back = SseClient::connect(&addr, Some(x), None).unwrap();
    let replayed: Vec<(u64, String)> = back
        .until(SOON, |e| e.id == Some(y))
        .into_iter()
        .map(|e| (e.id.unwrap(), e.kind))
        .collect();
    assert_eq!(replayed, missed, "exactly the missed events, in order");
    // Nothing from before: the stream goes on from there.
    assert!(back
        .next(Duration::from_millis(500))
        .is_none_or(|e| e.id.unwrap() > y));

    // An id this run never issued (a client from before a restart): told
    // to read /status again, then everything kept.
    let stale = SseClient::connect(&addr, Some(1), None).unwrap();
    let first = stale.next(SOON).unwrap();
    assert_eq!(first.kind, "reset", "{first:?}");
    let second = stale.next(SOON).unwrap();
    assert!(
        second.id.unwrap() < x,
        "the backlog from its start: {second:?}"
    );

    // A session's screen needs the token, even on loopback.
    let screen = format!("http://{addr}/sessions/ccl-auto-11/screen");
    match ureq::get(&screen).call() {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("a screen without the token: {other:?}"),
    }
    // A capture is one moment of the screen (Claude Code may be redrawing
    // it): the prompt shows within a few looks.
    support::wait_for(SOON, "the session's prompt on its screen", || {
        let text = ureq::get(&screen)
            .set("Authorization", &format!("Bearer {}", w.token()))
            .call()
            .ok()?
            .into_string()
            .ok()?;
        text.contains(claude_failover::claude::facts::PROMPT_READY_MARK)
            .then_some(())
            .or_else(|| {
                std::thread::sleep(Duration::from_millis(200));
                None
            })
    });
    match ureq::get(&format!("http://{addr}/sessions/not-ours/screen"))
        .set("Authorization", &format!("Bearer {}", w.token()))
        .call()
    {
        Err(ureq::Error::Status(404, _)) => {}
        other => panic!("an unmanaged name: {other:?}"),
    }

    // The swap history in /status, newest last, with the phases.
    let s = w.status().unwrap();
    let hist = s["swap_history"].as_array().unwrap();
    assert_eq!(hist.len(), 2, "{s}");
    assert_eq!(hist[1]["to"], "alpha");
    assert!(hist[0]["phases"].as_array().is_some_and(|p| p.len() == 5));
    let m = ureq::get(&format!("http://{addr}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(m.contains("claude_failover_event_clients 3"), "{m}");
}

#[test]
fn events_follow_prints_a_swap_as_it_happens_and_json_lines_parse() {
    let Some(mut w) = live_world("events-cli") else {
        return;
    };
    w.start_daemon(&[]);
    w.wait_state("ccl-auto-11", "idle", UP);
    let config = w.sb.config_path.to_string_lossy().into_owned();
    for json in [false, true] {
        let mut args = vec!["--config", config.as_str(), "events", "--follow"];
        if json {
            args.push("--json");
        }
        let mut child = Command::new(bin())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // Connected before the swap starts: reloads (an event of their own)
        // until the follower prints one, however slow its start.
        let reload_url = format!("http://{}/reload", w.sb.http_listen);
        let end = std::time::Instant::now() + Duration::from_secs(30);
        'connected: loop {
            assert!(
                std::time::Instant::now() < end,
                "the follower printed no config_reloaded in 30 s"
            );
            let r = ureq::post(&reload_url)
                .set("Authorization", &format!("Bearer {}", w.token()))
                .timeout(Duration::from_secs(5))
                .call();
            assert!(r.is_ok(), "POST /reload: {r:?}");
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
                if line.contains("config_reloaded") {
                    break 'connected;
                }
            }
        }
        // What a follower printed of the reloads is not this test's.
        while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
        let to = if json { "alpha" } else { "beta" };
        swap(&w, to);
        let mut lines = Vec::new();
        let end = std::time::Instant::now() + SOON;
        while std::time::Instant::now() < end {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
                continue;
            };
            let done = line.contains("swap_ended");
            lines.push(line);
            if done {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let text = lines.join("\n");
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in\n{text}"))
        };
        assert!(
            at("swap_started") < at("swap_phase") && at("swap_phase") < at("swap_ended"),
            "{text}"
        );
        if json {
            for l in &lines {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
                assert!(
                    v["id"].is_u64() && v["kind"].is_string() && v["at_ms"].is_u64(),
                    "{l}"
                );
            }
        } else {
            // One readable line per event: time, kind, what.
            let ended = &lines[at("swap_ended")];
            assert!(
                ended.contains(&format!("→ {to}")) && ended.contains("done"),
                "{ended}"
            );
            assert!(
                lines.iter().all(|l| !l.trim_start().starts_with('{')),
                "{text}"
            );
        }
    }
    // Without --follow: what is kept, then it exits; --since bounds it.
    let out = Command::new(bin())
        .args(["--config", &config, "events", "--json", "--since", "10m"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let kinds: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "swap_ended").count(),
        2,
        "{text}"
    );
    let out = Command::new(bin())
        .args(["--config", &config, "events", "--since", "0s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("swap_ended"));
}
