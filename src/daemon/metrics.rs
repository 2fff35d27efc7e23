//! `GET /metrics`: the Prometheus text exposition format, version 0.0.4.
//!
//! Gauges come from the published [`Status`] snapshot; what a snapshot cannot
//! tell (how many swaps ended how, how long dispatches and failovers took)
//! lives in [`Counters`], which the daemon's threads update as things happen
//! and the HTTP handler only reads.
//!
//! Every family is written as one block: `# HELP`, `# TYPE`, then its
//! samples. Label values are escaped as the format asks (`\\`, `\"`, `\n`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::daemon::status::Status;
use crate::decide::session::State;
use crate::decide::swap_plan::SwapOutcome;

/// Upper bounds (seconds) of the dispatch latency histogram: from a task
/// landing in an inbox to it being typed into a session.
pub const DISPATCH_BUCKETS: [f64; 8] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Upper bounds (seconds) of the failover duration histogram.
pub const FAILOVER_BUCKETS: [f64; 9] = [1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];

/// Swap results the switcher reports: every [`SwapOutcome`], always
/// exported, 0 included.
pub const SWAP_RESULTS: [&str; SwapOutcome::ALL.len()] = {
    let mut names = [""; SwapOutcome::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = SwapOutcome::ALL[i].as_str();
        i += 1;
    }
    names
};

/// Task outcomes; always exported, 0 included.
pub const TASK_OUTCOMES: [&str; 3] = ["done", "failed", "requeued"];

/// Queue states as `/status` counts them.
const QUEUE_STATES: [&str; 4] = ["inbox", "active", "done", "failed"];

/// A histogram with fixed bucket bounds. Counts are kept per bucket and
/// made cumulative when rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `counts[i]`: observations `<= bounds[i]` and `> bounds[i-1]`;
    /// the last slot holds those above every bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, seconds: f64) {
        if !seconds.is_finite() {
            return;
        }
        let i = self
            .bounds
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// `(le, cumulative count)` for every bound, then `(+Inf, count)`.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            out.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), acc));
        }
        out
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

#[derive(Debug)]
struct Inner {
    swaps_by_result: HashMap<String, u64>,
    tasks_by_outcome: HashMap<String, u64>,
    dispatch_latency_seconds: Histogram,
    failover_duration_seconds: Histogram,
}

/// What the daemon counts as it runs; shared (behind an `Arc`) between the
/// threads that update it and the HTTP handler that renders it.
#[derive(Debug)]
pub struct Counters {
    inner: Mutex<Inner>,
    notifications_dropped: AtomicU64,
    /// The event stream's connected clients, and those dropped for not reading.
    event_clients: AtomicU64,
    event_clients_dropped: AtomicU64,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            inner: Mutex::new(Inner {
                swaps_by_result: HashMap::new(),
                tasks_by_outcome: HashMap::new(),
                dispatch_latency_seconds: Histogram::new(&DISPATCH_BUCKETS),
                failover_duration_seconds: Histogram::new(&FAILOVER_BUCKETS),
            }),
            notifications_dropped: AtomicU64::new(0),
            event_clients: AtomicU64::new(0),
            event_clients_dropped: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// One swap ended with `result` (a [`SwapOutcome`], or its name);
    /// `duration`, when given, is observed in the failover duration
    /// histogram (a refused swap that never started has none).
    pub fn record_swap(&self, result: impl AsRef<str>, duration: Option<Duration>) {
        let mut g = self.inner.lock();
        *g.swaps_by_result
            .entry(result.as_ref().to_string())
            .or_insert(0) += 1;
        if let Some(d) = duration {
            g.failover_duration_seconds.observe(d.as_secs_f64());
        }
    }

    /// One task ended with `outcome` (`done`, `failed`, `requeued`).
    pub fn record_task(&self, outcome: &str) {
        *self
            .inner
            .lock()
            .tasks_by_outcome
            .entry(outcome.to_string())
            .or_insert(0) += 1;
    }

    /// Time from a task landing in an inbox to it being typed into a session.
    pub fn observe_dispatch(&self, latency: Duration) {
        self.inner
            .lock()
            .dispatch_latency_seconds
            .observe(latency.as_secs_f64());
    }

    /// The notifier's own running total of notifications it had to drop.
    pub fn set_notifications_dropped(&self, total: u64) {
        self.notifications_dropped.store(total, Ordering::Relaxed);
    }

    /// The event stream's figures, as its thread counts them.
    pub fn set_event_clients(&self, connected: u64, dropped_total: u64) {
        self.event_clients.store(connected, Ordering::Relaxed);
        self.event_clients_dropped
            .store(dropped_total, Ordering::Relaxed);
    }

    pub fn swaps(&self, result: &str) -> u64 {
        self.inner
            .lock()
            .swaps_by_result
            .get(result)
            .copied()
            .unwrap_or(0)
    }

    pub fn tasks(&self, outcome: &str) -> u64 {
        self.inner
            .lock()
            .tasks_by_outcome
            .get(outcome)
            .copied()
            .unwrap_or(0)
    }

    pub fn notifications_dropped(&self) -> u64 {
        self.notifications_dropped.load(Ordering::Relaxed)
    }

    pub fn dispatch_latency(&self) -> Histogram {
        self.inner.lock().dispatch_latency_seconds.clone()
    }

    pub fn failover_duration(&self) -> Histogram {
        self.inner.lock().failover_duration_seconds.clone()
    }
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes `# HELP` text: backslash and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as the format writes floats (`+Inf`, `-Inf`, `NaN`).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{v}")
    }
}

/// Whether `name` matches `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Whether `name` matches `[a-zA-Z_][a-zA-Z0-9_]*` and is not reserved (`__`).
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Builds the exposition text one family at a time.
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        debug_assert!(valid_metric_name(name), "{name}");
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        debug_assert!(valid_metric_name(name), "{name}");
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                debug_assert!(valid_label_name(k), "{k}");
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label_value(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (le, n) in h.cumulative() {
            self.sample(&bucket, &[("le", &format_value(le))], n as f64);
        }
        self.sample(&format!("{name}_sum"), &[], h.sum());
        self.sample(&format!("{name}_count"), &[], h.count() as f64);
    }
}

/// Known keys first (0 when never counted), then any others in name order.
fn with_known<'a>(known: &[&'a str], counted: &'a HashMap<String, u64>) -> Vec<(&'a str, u64)> {
    let mut out: Vec<(&str, u64)> = known
        .iter()
        .map(|k| (*k, counted.get(*k).copied().unwrap_or(0)))
        .collect();
    let mut extra: Vec<(&str, u64)> = counted
        .iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    extra.sort();
    out.extend(extra);
    out
}

fn utilization(window: &Option<serde_json::Value>) -> Option<f64> {
    window
        .as_ref()?
        .get("utilization")?
        .as_f64()
        .filter(|u| u.is_finite())
}

fn bool_value(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The whole `/metrics` body.
pub fn render(status: &Status, counters: &Counters) -> String {
    let mut out = Out {
        text: String::new(),
    };

    // Sessions by state: every known state, then any the snapshot holds that
    // this build does not know (never expected, but never hidden).
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &status.sessions {
        *by_state.entry(s.state.as_str()).or_insert(0) += 1;
    }
    out.family(
        "claude_failover_sessions",
        "gauge",
        "Managed sessions by state.",
    );
    for st in State::ALL {
        let n = by_state.remove(st.as_str()).unwrap_or(0);
        out.sample(
            "claude_failover_sessions",
            &[("state", st.as_str())],
            n as f64,
        );
    }
    for (st, n) in by_state {
        out.sample("claude_failover_sessions", &[("state", st)], n as f64);
    }

    let (swaps, tasks, dispatch, failover) = {
        let g = counters.inner.lock();
        (
            with_known(&SWAP_RESULTS, &g.swaps_by_result)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<Vec<_>>(),
            with_known(&TASK_OUTCOMES, &g.tasks_by_outcome)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<Vec<_>>(),
            g.dispatch_latency_seconds.clone(),
            g.failover_duration_seconds.clone(),
        )
    };

    out.family(
        "claude_failover_swaps_total",
        "counter",
        "Account swaps by result.",
    );
    for (result, n) in &swaps {
        out.sample(
            "claude_failover_swaps_total",
            &[("result", result)],
            *n as f64,
        );
    }

    out.family(
        "claude_failover_tasks_total",
        "counter",
        "Queued tasks finished by outcome.",
    );
    for (outcome, n) in &tasks {
        out.sample(
            "claude_failover_tasks_total",
            &[("outcome", outcome)],
            *n as f64,
        );
    }

    out.family(
        "claude_failover_quota_utilization_percent",
        "gauge",
        "Last known quota utilisation per account and window, in percent.",
    );
    for a in &status.accounts {
        for (window, w) in [("five_hour", &a.five_hour), ("seven_day", &a.seven_day)] {
            if let Some(u) = utilization(w) {
                out.sample(
                    "claude_failover_quota_utilization_percent",
                    &[("account", &a.name), ("window", window)],
                    u,
                );
            }
        }
    }

    out.family(
        "claude_failover_quota_limit_utilization_percent",
        "gauge",
        "Last known utilisation of every limit per account, by kind (session, weekly_all, weekly_scoped) and model (scoped limits), in percent.",
    );
    for a in &status.accounts {
        for l in &a.limits {
            let (Some(kind), Some(u)) = (
                l.get("kind").and_then(|k| k.as_str()),
                l.get("utilization").and_then(|u| u.as_f64()),
            ) else {
                continue;
            };
            let model = l.get("model").and_then(|m| m.as_str()).unwrap_or("");
            out.sample(
                "claude_failover_quota_limit_utilization_percent",
                &[("account", &a.name), ("kind", kind), ("model", model)],
                u,
            );
        }
    }

    out.family(
        "claude_failover_pool_held",
        "gauge",
        "1 for a pool that takes no new task: the active account's limit for its model is spent.",
    );
    for pool in status.held_pools.keys() {
        out.sample("claude_failover_pool_held", &[("pool", pool)], 1.0);
    }

    out.family(
        "claude_failover_account_usable",
        "gauge",
        "1 when the account may take new work.",
    );
    for a in &status.accounts {
        out.sample(
            "claude_failover_account_usable",
            &[("account", &a.name)],
            bool_value(a.usable),
        );
    }

    out.family(
        "claude_failover_active_account",
        "gauge",
        "1 for the account managed sessions run on.",
    );
    let active = status.active_account.as_deref();
    for a in &status.accounts {
        out.sample(
            "claude_failover_active_account",
            &[("account", &a.name)],
            bool_value(active == Some(a.name.as_str())),
        );
    }
    if let Some(name) = active.filter(|n| !status.accounts.iter().any(|a| a.name == *n)) {
        out.sample("claude_failover_active_account", &[("account", name)], 1.0);
    }

    out.family(
        "claude_failover_partial_swap",
        "gauge",
        "1 while a swap left sessions split between accounts.",
    );
    out.sample(
        "claude_failover_partial_swap",
        &[],
        bool_value(status.partial_swap),
    );

    out.family(
        "claude_failover_swap_in_progress",
        "gauge",
        "1 while a swap is running.",
    );
    out.sample(
        "claude_failover_swap_in_progress",
        &[],
        bool_value(status.swap_in_progress),
    );

    out.family(
        "claude_failover_queue_tasks",
        "gauge",
        "Tasks in each project's queue by state.",
    );
    for (project, q) in &status.queues {
        for (state, n) in QUEUE_STATES
            .iter()
            .zip([q.inbox, q.active, q.done, q.failed])
        {
            out.sample(
                "claude_failover_queue_tasks",
                &[("project", project), ("state", state)],
                n as f64,
            );
        }
    }

    out.family(
        "claude_failover_notifications_dropped_total",
        "counter",
        "Notifications dropped because the notifier could not keep up or deliver.",
    );
    out.sample(
        "claude_failover_notifications_dropped_total",
        &[],
        counters.notifications_dropped() as f64,
    );

    out.family(
        "claude_failover_event_clients",
        "gauge",
        "Clients connected to GET /events.",
    );
    out.sample(
        "claude_failover_event_clients",
        &[],
        counters.event_clients.load(Ordering::Relaxed) as f64,
    );
    out.family(
        "claude_failover_event_clients_dropped_total",
        "counter",
        "Event-stream clients dropped because they did not read fast enough.",
    );
    out.sample(
        "claude_failover_event_clients_dropped_total",
        &[],
        counters.event_clients_dropped.load(Ordering::Relaxed) as f64,
    );

    out.histogram(
        "claude_failover_dispatch_latency_seconds",
        "Time from a task landing in an inbox to it being typed into a session.",
        &dispatch,
    );
    out.histogram(
        "claude_failover_failover_duration_seconds",
        "How long account swaps took.",
        &failover,
    );

    out.text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::status::{AccountStatus, SessionStatus};

    #[test]
    fn histogram_is_cumulative_with_inf() {
        let mut h = Histogram::new(&DISPATCH_BUCKETS);
        for s in [0.01, 0.05, 0.2, 3.0, 99.0] {
            h.observe(s);
        }
        h.observe(f64::NAN);
        let c = h.cumulative();
        assert_eq!(c.len(), DISPATCH_BUCKETS.len() + 1);
        assert_eq!(c[0], (0.05, 2));
        assert_eq!(c[2], (0.25, 3));
        assert_eq!(c[6], (5.0, 4));
        assert_eq!(c[8].1, 5);
        assert!(c[8].0.is_infinite());
        assert_eq!(h.count(), 5);
        assert!((h.sum() - 102.26).abs() < 1e-9);
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape_label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_label_value("plain"), "plain");
    }

    #[test]
    fn formats_values() {
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.05), "0.05");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
    }

    #[test]
    fn names_are_valid() {
        assert!(valid_metric_name("claude_failover_sessions"));
        assert!(!valid_metric_name("9x"));
        assert!(!valid_metric_name("a-b"));
        assert!(valid_label_name("le"));
        assert!(!valid_label_name("__name__"));
        let text = render(&Status::default(), &Counters::default());
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            assert!(valid_metric_name(name), "{line}");
        }
    }

    #[test]
    fn every_swap_outcome_is_exported_even_at_zero_incomplete_included() {
        let c = Counters::default();
        c.record_swap(SwapOutcome::Incomplete, Some(Duration::from_secs(1)));
        let text = render(&Status::default(), &c);
        for o in SwapOutcome::ALL {
            let n = u64::from(o == SwapOutcome::Incomplete);
            assert!(
                text.contains(&format!(
                    "claude_failover_swaps_total{{result=\"{o}\"}} {n}\n"
                )),
                "{o}"
            );
        }
        assert_eq!(c.swaps("incomplete"), 1);
    }

    #[test]
    fn renders_every_state_and_known_results() {
        let status = Status {
            active_account: Some("alice".into()),
            accounts: vec![AccountStatus {
                name: "alice".into(),
                usable: true,
                five_hour: Some(serde_json::json!({"utilization": 62.5})),
                seven_day: Some(serde_json::Value::Null),
                ..Default::default()
            }],
            sessions: vec![
                SessionStatus {
                    name: "a".into(),
                    state: "idle".into(),
                    ..Default::default()
                },
                SessionStatus {
                    name: "b".into(),
                    state: "idle".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let c = Counters::default();
        c.record_swap("done", Some(Duration::from_secs(3)));
        c.record_swap("odd", None);
        c.record_task("done");
        let text = render(&status, &c);
        for st in State::ALL {
            assert!(
                text.contains(&format!(
                    "claude_failover_sessions{{state=\"{}\"}}",
                    st.as_str()
                )),
                "{st:?}"
            );
        }
        assert!(text.contains("claude_failover_sessions{state=\"idle\"} 2\n"));
        assert!(text.contains("claude_failover_sessions{state=\"dead\"} 0\n"));
        assert!(text.contains("claude_failover_swaps_total{result=\"done\"} 1\n"));
        assert!(text.contains("claude_failover_swaps_total{result=\"refused\"} 0\n"));
        assert!(text.contains("claude_failover_swaps_total{result=\"odd\"} 1\n"));
        assert!(text.contains("claude_failover_tasks_total{outcome=\"requeued\"} 0\n"));
        assert!(text.contains(
            "claude_failover_quota_utilization_percent{account=\"alice\",window=\"five_hour\"} 62.5\n"
        ));
        assert!(!text.contains("window=\"seven_day\""));
        assert!(text.contains("claude_failover_active_account{account=\"alice\"} 1\n"));
        assert!(text.contains("claude_failover_failover_duration_seconds_bucket{le=\"2.5\"} 0\n"));
        assert!(text.contains("claude_failover_failover_duration_seconds_bucket{le=\"5\"} 1\n"));
        assert!(text.contains("claude_failover_failover_duration_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.ends_with('\n'));
    }
}
