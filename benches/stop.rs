//! How long the daemon takes to stop: the real binary with three idle
//! sessions, SIGTERM, and the time until the process has exited. Once with
//! the scripted fake agent (as the other benches use, so a run takes
//! seconds), and once with the real Claude Code against the API stand-in
//! when the end-to-end setup is there (`source scripts/lib.sh; export_e2e`).
//! Printed as a figure over several runs (min/median/max; target well
//! under 1 s). Run with `cargo bench --bench stop`; `BENCH_STOP_RUNS` sets
//! the number of runs (default 5).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

fn main() {
    let runs: usize = std::env::var("BENCH_STOP_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let times: Vec<Duration> = (0..runs).map(stop_once).collect();
    print_figure("stop with 3 idle sessions (fake agent)", times);
    let real: Option<Vec<Duration>> = (0..runs).map(stop_once_real).collect();
    match real {
        Some(times) => print_figure("stop with 3 idle real Claude Code sessions", times),
        None => println!(
            "stop with 3 idle real Claude Code sessions: skipped (no end-to-end setup: source scripts/lib.sh; export_e2e)"
        ),
    }
}

fn print_figure(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: min {:.0} ms, median {:.0} ms, max {:.0} ms over {} runs (target < 1000 ms)",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        times.len()
    );
}

/// SIGTERM to `pid`; the time until it exited with status 0.
fn time_the_stop(h: &mut support::Harness, pid: u32) -> Duration {
    let t0 = Instant::now();
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    // Polled every 5 ms (wait_for's 50 ms would blur the figure).
    let code = loop {
        if let Some(code) = h.try_exit_status(pid) {
            break code;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the daemon did not exit within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = t0.elapsed();
    assert_eq!(code, Some(0), "the daemon's exit code after SIGTERM");
    took
}

/// The same with the real Claude Code (None without the end-to-end setup).
fn stop_once_real(run: usize) -> Option<Duration> {
    let mut w = support::World::new(&format!("bench-stop-real-{run}"), |spec| {
        spec.pools[0].min = 3;
        spec.pools[0].max = 3;
    })?;
    let pid = w.start_daemon(&[]);
    for name in ["ccl-auto-11", "ccl-auto-12", "ccl-auto-13"] {
        w.wait_state(name, "idle", Duration::from_secs(90));
    }
    Some(time_the_stop(&mut w.h, pid))
}

/// One daemon: three idle sessions, then SIGTERM; the time until it exits.
fn stop_once(run: usize) -> Duration {
    let mut h = support::Harness::new(&format!("bench-stop-{run}"));
    let (_sb, pid) = support::fake_agent_daemon(&mut h, 3, Duration::from_secs(60));
    time_the_stop(&mut h, pid)
}
