//! `claude-failover hook` and `statusline`: the commands Claude Code runs.
//! They hand what they were given to the daemon over its event socket
//! (`<state_dir>/events.sock`), where the daemon learns from the kernel which
//! process sent it and so which session it really comes from (see
//! `event_socket`). With no daemon listening they leave it as one file in
//! `<state_dir>/events/`, for the next start to replay. They must never get
//! in Claude Code's way: they always exit 0 and return in milliseconds (the
//! hook runs on every prompt).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::claude::facts;
use crate::store::atomic_file;

/// Where events are written, under the state dir.
pub const EVENTS_DIR: &str = "events";

/// The daemon's event socket, under the state dir.
pub const SOCKET: &str = "events.sock";

/// How long a hook waits for the daemon to take its event before leaving it
/// as a file instead (which a running daemon does not take: the daemon ends
/// every connection well within this).
const SOCKET_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Most a hook reads from stdin; a larger payload is cut. Above the largest
/// payload Claude Code sends: a task may be 1 MiB (`MAX_TASK_BYTES`), and its
/// `UserPromptSubmit` and `Stop` carry it JSON-escaped (up to 6 bytes a
/// character for control characters) inside a pasted-content wrapper.
pub const MAX_PAYLOAD: u64 = 8 * crate::store::queue::MAX_TASK_BYTES as u64;

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
    /// Set by the daemon, never read from a file or a sender: the event came
    /// over the socket from a process inside the tmux session named in
    /// `session` (which, like `config_dir`, the daemon then filled in from
    /// what it observed). False for a file replayed at start.
    #[serde(skip)]
    pub verified: bool,
    /// The payload as a typed event, parsed where the event enters the
    /// daemon ([`RecordedEvent::from_json`], [`RecordedEvent::reparse`]);
    /// every role matches on this, never on a field name.
    #[serde(skip)]
    pub hook: crate::claude::hook_event::Hook,
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
    let line = match crate::decide::quota::from_statusline(&payload) {
        Some((five, seven)) => {
            let pct = |w: Option<crate::decide::quota::Window>| {
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
    /// An event as recorded (a socket line, an event file), with its payload
    /// parsed into [`RecordedEvent::hook`].
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<RecordedEvent> {
        let mut ev: RecordedEvent = serde_json::from_slice(bytes)?;
        ev.reparse();
        Ok(ev)
    }

    /// Parses the payload again, after the entry changed it (the event
    /// socket puts the transcript's answer in place of the sender's).
    pub fn reparse(&mut self) {
        self.hook = crate::claude::hook_event::parse(&self.kind, &self.payload);
    }

    /// A string field of the raw payload, for the code where events enter
    /// (the roles read [`RecordedEvent::hook`]). (`session_id`, `source`, `error`, …).
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
        payload: slim(serde_json::from_slice(raw).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(raw).into_owned())
        })),
        verified: false,
        hook: Default::default(),
    };
    let bytes = serde_json::to_vec(&event).map_err(std::io::Error::other)?;
    let socket = state_dir.join(SOCKET);
    match send(&socket, &bytes) {
        Ok(()) => Ok(socket),
        // No daemon listening (or one that did not answer in time): the file
        // waits for the next start, which replays it.
        Err(_) => write_event(&state_dir, &event),
    }
}

/// A `PostToolUse` payload carries the tool's whole input and output, on
/// every tool call: only what the daemon reads is kept (which hook, which
/// conversation, which tool).
/// How much of a payload that is no JSON is kept.
const SLIM_TEXT: usize = 4096;

fn slim(payload: serde_json::Value) -> serde_json::Value {
    // A payload cut at MAX_PAYLOAD is no JSON: only its start is worth keeping.
    if let serde_json::Value::String(text) = &payload {
        if text.len() > SLIM_TEXT {
            let mut end = SLIM_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            return serde_json::Value::String(text[..end].to_string());
        }
        return payload;
    }
    let name = payload.get("hook_event_name").and_then(|v| v.as_str());
    if !matches!(name, Some("PostToolUse" | "PostToolUseFailure")) {
        return payload;
    }
    let keep = [
        "hook_event_name",
        "session_id",
        "transcript_path",
        "tool_name",
    ];
    serde_json::Value::Object(
        keep.iter()
            .filter_map(|k| payload.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect(),
    )
}

/// Hands one event (a JSON line) to the daemon and waits for its `ok`.
pub fn send(socket: &Path, line: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_write_timeout(Some(SOCKET_DEADLINE))?;
    s.set_read_timeout(Some(SOCKET_DEADLINE))?;
    s.write_all(line)?;
    s.write_all(b"\n")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = Vec::new();
    s.take(64).read_to_end(&mut answer)?;
    if answer.starts_with(b"ok") {
        Ok(())
    } else {
        Err(std::io::Error::other("the daemon did not take the event"))
    }
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
    let path = event_path(&dir, &event.kind);
    let bytes = serde_json::to_vec(event).map_err(std::io::Error::other)?;
    atomic_file::write(&path, &bytes)?;
    Ok(path)
}

/// A new event file's path in `dir`: names sort in recording order and
/// never collide (the time, the process, a counter).
pub fn event_path(dir: &Path, kind: &str) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!(
        "{nanos:020}-{}-{seq}-{kind}.json",
        std::process::id()
    ))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
