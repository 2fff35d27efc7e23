//! `claude-failover hook` and `statusline`: the commands Claude Code runs. They
//! record what they were given as one file in `<state_dir>/events/` for the
//! daemon to consume, and must never get in Claude Code's way: they always
//! exit 0 and return in milliseconds (the hook runs on every prompt).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::atomic_file;
use crate::claude_facts as facts;

/// Where events are written, under the state dir.
pub const EVENTS_DIR: &str = "events";

/// Most a hook reads from stdin; a larger payload is cut. Above the largest
/// payload Claude Code sends: a task may be 1 MiB (`MAX_TASK_BYTES`), and its
/// `UserPromptSubmit` and `Stop` carry it JSON-escaped (up to 6 bytes a
/// character for control characters) inside a pasted-content wrapper.
pub const MAX_PAYLOAD: u64 = 8 * crate::queue::MAX_TASK_BYTES as u64;

/// One recorded event, as written by `hook`/`statusline` and read by the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordedEvent {
    /// `hook` or `statusline`.
    pub kind: String,
    /// The managed session (`CLAUDE_FAILOVER_SESSION`), when Claude Code runs in one.
    pub session: Option<String>,
    /// The account home the Claude Code process runs under (`CLAUDE_CONFIG_DIR`).
    pub config_dir: Option<String>,
    /// Milliseconds since the epoch when the event was recorded.
    pub recorded_at_ms: u64,
    /// What Claude Code passed on stdin: JSON, or a string when it was not JSON.
    pub payload: serde_json::Value,
}

/// `statusline`: records the payload (its `rate_limits` are the account's
/// quota reading) and returns the short line to print, e.g.
/// `5h 42% · 7d 7%`. Never fails: a payload it cannot read prints a dash.
pub fn statusline_from_stdin() -> (String, std::io::Result<PathBuf>) {
    let mut raw = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_PAYLOAD).read_to_end(&mut raw) {
        return ("claude-failover".into(), Err(e));
    }
    let payload: serde_json::Value =
        serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null);
    let line = match crate::quota::from_statusline(&payload) {
        Some((five, seven)) => {
            let pct = |w: Option<crate::quota::Window>| {
                w.map(|w| format!("{:.0}%", w.utilization))
                    .unwrap_or_else(|| "?".into())
            };
            format!("5h {} · 7d {}", pct(five), pct(seven))
        }
        None => "5h ? · 7d ?".into(),
    };
    (line, record(&raw, "statusline"))
}

impl RecordedEvent {
    /// A string field of the payload (`session_id`, `source`, `error`, …).
    pub fn field(&self, key: &str) -> Option<&str> {
        self.payload.get(key).and_then(|v| v.as_str())
    }

    /// The hook's event name (`SessionStart`, `Stop`, …); empty for a status-line reading.
    pub fn hook_name(&self) -> &str {
        self.field("hook_event_name").unwrap_or("")
    }
}

/// Records stdin as an event. Errors are swallowed by the caller: a hook must
/// never fail Claude Code.
pub fn record_from_stdin(kind: &str) -> std::io::Result<PathBuf> {
    let mut raw = Vec::new();
    std::io::stdin().take(MAX_PAYLOAD).read_to_end(&mut raw)?;
    record(&raw, kind)
}

fn record(raw: &[u8], kind: &str) -> std::io::Result<PathBuf> {
    let state_dir = std::env::var_os(facts::ENV_STATE_DIR)
        .map(PathBuf::from)
        .ok_or_else(|| std::io::Error::other(format!("{} is not set", facts::ENV_STATE_DIR)))?;
    let event = RecordedEvent {
        kind: kind.to_string(),
        session: std::env::var(facts::ENV_SESSION).ok(),
        config_dir: std::env::var(facts::ENV_CONFIG_DIR).ok(),
        recorded_at_ms: now_ms(),
        payload: serde_json::from_slice(raw).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(raw).into_owned())
        }),
    };
    write_event(&state_dir, &event)
}

/// Writes `event` into `<state_dir>/events/` under a name that sorts in
/// recording order and never collides.
pub fn write_event(state_dir: &Path, event: &RecordedEvent) -> std::io::Result<PathBuf> {
    let dir = state_dir.join(EVENTS_DIR);
    if !dir.is_dir() {
        // Only the last level: a state dir that is gone (a removed sandbox,
        // a mistyped path) is not recreated by a hook.
        std::fs::create_dir(&dir)?;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let path = dir.join(format!(
        "{nanos:020}-{}-{}.json",
        std::process::id(),
        event.kind
    ));
    let bytes = serde_json::to_vec(event).map_err(std::io::Error::other)?;
    atomic_file::write(&path, &bytes)?;
    Ok(path)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
