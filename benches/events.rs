//! `/events` under load (issue 16, must-show 2): `GET /status` latency
//! (median, p99) with no event client, then with 50 idle clients that read
//! and one that connects and never reads, while events flow (a config
//! reload every 50 ms). Printed figures, no timed assertions.
//!
//! Run with `cargo bench --bench events` (`scripts/bench.sh` does); the
//! sessions are the scripted fake agent (the figures are the control
//! plane's, not Claude Code's).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn status_latencies(url: &str, window: Duration) -> Vec<f64> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let mut lat = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < window {
        let t = Instant::now();
        agent
            .get(url)
            .call()
            .expect("status")
            .into_string()
            .expect("body");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(5));
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    lat
}

fn main() {
    let mut h = support::Harness::new("bench-events");
    let (sb, pid) = support::fake_agent_daemon(&mut h, 10, Duration::from_secs(120));
    let addr = sb.http_listen.clone();
    let url = format!("http://{addr}/status");
    let token =
        claude_failover::daemon::http::read_token(&sb.state_dir.join("http.token")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reloads = {
        let (addr, token, stop) = (addr.clone(), token.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = ureq::post(&format!("http://{addr}/reload"))
                    .set("Authorization", &format!("Bearer {token}"))
                    .call();
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            n
        })
    };
    let window = Duration::from_secs(8);
    let base = status_latencies(&url, window);
    // 50 clients that read everything, one that never reads.
    let mut readers = Vec::new();
    for _ in 0..50 {
        let s = TcpStream::connect(&addr).unwrap();
        (&s).write_all(format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .unwrap();
        let mut r = s.try_clone().unwrap();
        readers.push((
            s,
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut total = 0usize;
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                total
            }),
        ));
    }
    let sleeper = TcpStream::connect(&addr).unwrap();
    (&sleeper)
        .write_all(format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let loaded = status_latencies(&url, window);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reloads = reloads.join().unwrap();
    let metrics = ureq::get(&format!("http://{addr}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let gauge = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    for (s, _) in &readers {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    let received: usize = readers
        .into_iter()
        .map(|(_, t)| t.join().unwrap_or(0))
        .sum();
    println!(
        "GET /status while events flow, no event client: median {:.2} ms, p99 {:.2} ms over {} requests",
        percentile(&base, 0.5),
        percentile(&base, 0.99),
        base.len()
    );
    println!(
        "GET /status while events flow, 50 reading clients + 1 that never reads: median {:.2} ms, p99 {:.2} ms over {} requests; {reloads} reloads streamed, {} KiB delivered, clients connected {}, dropped {} (target: p99 within 2× the first)",
        percentile(&loaded, 0.5),
        percentile(&loaded, 0.99),
        loaded.len(),
        received / 1024,
        gauge("claude_failover_event_clients"),
        gauge("claude_failover_event_clients_dropped_total"),
    );
    drop(sleeper);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}
