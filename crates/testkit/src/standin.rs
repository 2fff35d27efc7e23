//! A local stand-in for the Anthropic API.
//!
//! The daemon's whole job is to react to quota running out, which cannot be
//! tested against the real service: nobody can exhaust a real account on
//! demand, and tests must not need the internet. So the end-to-end tests (and
//! the demo, `claude-failover-demo`) point the *real* Claude Code at this
//! server through `ANTHROPIC_BASE_URL`, with made-up OAuth tokens, one per
//! fake account.
//!
//! What it speaks, as seen with Claude Code 2.1.329 (see
//! `claude-code-facts.md` §2 and §5):
//!
//! - `POST /v1/messages[?beta=true]`: a streaming (server-sent events) or
//!   plain JSON answer whose text echoes the prompt,
//!   `STANDIN-ANSWER[<account>]: <prompt>`, so a test can tell which account
//!   answered which task. Every answer carries the "unified" quota headers,
//!   and an exhausted account gets the 429 that makes Claude Code print
//!   "You've hit your 5-hour limit".
//! - `POST /v1/messages/count_tokens`: a rough count.
//! - `GET /api/oauth/usage`: the usage endpoint, utilisation in percent.
//! - Anything else: a quick 404, so a start-up probe never hangs. (Claude
//!   Code 2.1.329 was seen asking only for `/v1/messages?beta=true`, plus
//!   `HEAD /api/hello` when nonessential traffic is not disabled.)
//!
//! Control and inspection over HTTP, for a separate process (the demo, a
//! shell) that cannot call the in-process API:
//!
//! - `POST /_standin/accounts/<name>` with any of `reset`, `five_hour`,
//!   `seven_day`, `five_hour_resets_at`, `seven_day_resets_at`, `exhausted`,
//!   `five_hour_step`, `seven_day_step`, `usage_mode` (`normal|429|403`),
//!   `usage_shape` (`both|old|limits`: the usage answer's keys), `scoped`
//!   (`{"Opus": 100}`: model-scoped weekly limits in percent, `null` removes;
//!   a full one refuses that model's requests with a 429);
//!   answers the account's state. `GET` the same path, or
//!   `GET /_standin/accounts` for all of them.
//! - `GET /_standin/requests` (recorded `/v1/messages` requests),
//!   `GET /_standin/hits` (every request), `GET|POST /_standin/config`
//!   (`latency_ms`, `token_delay_ms`).
//!
//! Accounts are told apart by their token (`Authorization: Bearer …` or
//! `x-api-key`). Each has a five-hour and a seven-day window in percent that
//! grows by a fixed step per answered request and falls back to 0 when its
//! reset time passes, as the real windows do.
//!
//! It is plain threads on `tiny_http`: a few workers take requests off the
//! server, so one slow streaming answer does not hold up Claude Code's other
//! concurrent requests. Streams are written straight to the connection with
//! our own chunked framing and a flush per event, because `tiny_http`'s own
//! chunked encoder buffers 8 KiB before sending anything, which would turn a
//! slow stream into one late lump. Every answer says `Connection: close`:
//! tiny_http cannot close idle keep-alive connections when it stops, and a
//! client reusing one would hang instead of seeing the server gone.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{debug, warn};
use parking_lot::{Condvar, Mutex};
use serde_json::{json, Map, Value};

/// The start of every answer's text; the account name and prompt follow.
pub const ANSWER_PREFIX: &str = "STANDIN-ANSWER";

/// The message of the 429 body, as the real API words it.
pub const RATE_LIMIT_MESSAGE: &str =
    "This request would exceed your account's rate limit. Please try again later.";

const FIVE_HOURS: u64 = 5 * 3600;
const SEVEN_DAYS: u64 = 7 * 24 * 3600;
/// Enough workers for Claude Code's handful of concurrent requests per
/// session times a few sessions; a stream holds its worker until it ends.
const WORKERS: usize = 16;
/// Claude Code resends the whole conversation each turn; long sessions reach
/// megabytes. Anything bigger is refused rather than buffered.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// How often an idle worker looks at the stop flag (`unblock` normally wakes
/// it sooner).
const POLL: Duration = Duration::from_millis(200);
/// The status turns to `allowed_warning` from this utilisation (percent) on.
const WARNING_PERCENT: f64 = 80.0;
/// `retry-after` of a throttled usage endpoint (forced through
/// [`UsageMode::RateLimited`]).
const USAGE_RETRY_AFTER: u64 = 60;

/// A fake account: a name (echoed in answers) and the token that selects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandInAccount {
    pub name: String,
    pub token: String,
}

impl StandInAccount {
    pub fn new(name: impl Into<String>, token: impl Into<String>) -> Self {
        StandInAccount {
            name: name.into(),
            token: token.into(),
        }
    }
}

/// How the stand-in is set up; see [`StandIn::start`].
#[derive(Debug, Clone)]
pub struct StandInOptions {
    pub accounts: Vec<StandInAccount>,
    /// Percent added to the five-hour window per answered `/v1/messages`.
    pub five_hour_step: f64,
    /// Percent added to the seven-day window per answered `/v1/messages`.
    pub seven_day_step: f64,
    /// Delay before the first byte of a `/v1/messages` answer.
    pub latency: Duration,
    /// Delay between two streamed text deltas.
    pub token_delay: Duration,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
}

impl Default for StandInOptions {
    fn default() -> Self {
        StandInOptions {
            accounts: Vec::new(),
            five_hour_step: 1.0,
            seven_day_step: 0.2,
            latency: Duration::ZERO,
            token_delay: Duration::ZERO,
            port: 0,
        }
    }
}

/// What `GET /api/oauth/usage` answers for an account, so tests can exercise
/// the daemon's handling of a throttled endpoint or a token without the
/// `user:profile` scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsageMode {
    /// The real answer with the account's numbers.
    #[default]
    Normal,
    /// HTTP 429 with `retry-after`, as when the endpoint is polled too often.
    RateLimited,
    /// HTTP 403 `permission_error`, as for a token without `user:profile`.
    Forbidden,
}

impl UsageMode {
    /// Parses `normal`, `429` or `403` (the words of the HTTP control API;
    /// `rate_limited` and `forbidden` are accepted too).
    pub fn parse(text: &str) -> Option<UsageMode> {
        match text.trim().to_ascii_lowercase().as_str() {
            "normal" | "ok" | "200" => Some(UsageMode::Normal),
            "429" | "rate_limited" | "ratelimited" => Some(UsageMode::RateLimited),
            "403" | "forbidden" => Some(UsageMode::Forbidden),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UsageMode::Normal => "normal",
            UsageMode::RateLimited => "429",
            UsageMode::Forbidden => "403",
        }
    }
}

/// Which shape the usage endpoint's answer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsageShape {
    /// The old keys and the `limits` array (what the endpoint answers now).
    #[default]
    Both,
    /// The old keys only (`five_hour`, `seven_day`, `seven_day_opus`, …).
    Old,
    /// The `limits` array only.
    Limits,
}

impl UsageShape {
    pub fn parse(text: &str) -> Option<UsageShape> {
        match text.trim().to_ascii_lowercase().as_str() {
            "both" => Some(UsageShape::Both),
            "old" => Some(UsageShape::Old),
            "limits" => Some(UsageShape::Limits),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UsageShape::Both => "both",
            UsageShape::Old => "old",
            UsageShape::Limits => "limits",
        }
    }
}

/// One `/v1/messages` request as the stand-in saw it (answered or not).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// The account the token selected; `None` for an unknown or missing token.
    pub account: Option<String>,
    /// The token presented (empty if none).
    pub token: String,
    /// The request path, query included (`/v1/messages?beta=true`).
    pub path: String,
    pub stream: bool,
    /// The prompt as [`extract_prompt`] finds it.
    pub prompt: String,
    /// The request's `messages` array (`null` if absent or unparsable).
    pub messages: Value,
    /// The `model` it asked for (empty if absent).
    pub model: String,
    /// The HTTP status answered.
    pub status: u16,
    pub at: SystemTime,
    /// In a scripted turn (`crate::script`): the step this request asked
    /// for (`steps + 1` for the final answer).
    pub step: Option<u32>,
    /// The `tool_result` blocks the request carried (its last user message).
    pub tool_results: Vec<String>,
    /// The script's directive line (which scripted turn this request is of).
    pub script: Option<String>,
}

impl RecordedRequest {
    /// The shape `GET /_standin/requests` uses (`at` in Unix seconds).
    pub fn to_json(&self) -> Value {
        json!({
            "account": self.account,
            "token": self.token,
            "path": self.path,
            "stream": self.stream,
            "prompt": self.prompt,
            "messages": self.messages,
            "model": self.model,
            "status": self.status,
            "at": unix_f64(self.at),
            "step": self.step,
            "tool_results": self.tool_results,
            "script": self.script,
        })
    }
}

/// Any request the stand-in answered, whatever its path: lets a test check
/// what Claude Code asked for and that nothing went unanswered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub method: String,
    /// Path with query.
    pub path: String,
    pub account: Option<String>,
    /// The bearer token presented (made-up; empty if none): which login,
    /// which machine of a fleet test.
    pub token: String,
    pub status: u16,
    pub at: SystemTime,
}

impl Hit {
    pub fn to_json(&self) -> Value {
        json!({
            "method": self.method,
            "path": self.path,
            "account": self.account,
            "status": self.status,
            "at": unix_f64(self.at),
        })
    }
}

/// A snapshot of one account's quota state.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountState {
    pub name: String,
    /// Percent, 0..=100.
    pub five_hour: f64,
    /// Percent, 0..=100.
    pub seven_day: f64,
    /// Unix seconds.
    pub five_hour_resets_at: u64,
    /// Unix seconds.
    pub seven_day_resets_at: u64,
    pub five_hour_step: f64,
    pub seven_day_step: f64,
    pub usage_mode: UsageMode,
    pub usage_shape: UsageShape,
    /// Model-scoped weekly limits: display name → percent.
    pub scoped: std::collections::BTreeMap<String, f64>,
    /// Whether `/v1/messages` would be refused with 429 now.
    pub exhausted: bool,
    /// `/v1/messages` requests answered with 200 so far.
    pub answered: u64,
    /// `/v1/messages` requests refused with 429 so far.
    pub refused: u64,
}

impl AccountState {
    /// The shape the `/_standin/accounts` endpoints use.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "five_hour": round_to(self.five_hour, 6),
            "seven_day": round_to(self.seven_day, 6),
            "five_hour_resets_at": self.five_hour_resets_at,
            "seven_day_resets_at": self.seven_day_resets_at,
            "five_hour_step": self.five_hour_step,
            "seven_day_step": self.seven_day_step,
            "usage_mode": self.usage_mode.as_str(),
            "usage_shape": self.usage_shape.as_str(),
            "scoped": self.scoped,
            "exhausted": self.exhausted,
            "answered": self.answered,
            "refused": self.refused,
        })
    }
}

/// A control call named an account the stand-in does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownAccount(pub String);

impl fmt::Display for UnknownAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown stand-in account: {}", self.0)
    }
}

impl std::error::Error for UnknownAccount {}

/// The running stand-in. Dropping it stops the server and joins its threads.
pub struct StandIn {
    shared: Arc<Shared>,
    /// Taken on stop, which closes the listening socket.
    server: Option<Arc<tiny_http::Server>>,
    workers: Vec<JoinHandle<()>>,
    addr: SocketAddr,
    /// Dropped on stop: its receivers then wake every interruptible sleep.
    shutdown: Option<Sender<()>>,
}

impl fmt::Debug for StandIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandIn").field("addr", &self.addr).finish()
    }
}

impl StandIn {
    /// Binds 127.0.0.1 on `options.port` (0: any free port) and starts the
    /// workers.
    pub fn start(options: StandInOptions) -> io::Result<StandIn> {
        let server = tiny_http::Server::http(("127.0.0.1", options.port))
            .map_err(|e| io::Error::new(io::ErrorKind::AddrNotAvailable, e.to_string()))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("stand-in is not listening on an IP address"))?;
        let server = Arc::new(server);
        let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded::<()>(0);
        let now = now_unix();
        let accounts = options
            .accounts
            .iter()
            .map(|a| Account {
                name: a.name.clone(),
                token: a.token.clone(),
                also: Vec::new(),
                five_hour: 0.0,
                seven_day: 0.0,
                five_hour_reset: now + FIVE_HOURS,
                seven_day_reset: now + SEVEN_DAYS,
                five_hour_step: sane_step(options.five_hour_step),
                seven_day_step: sane_step(options.seven_day_step),
                usage_mode: UsageMode::Normal,
                usage_shape: UsageShape::Both,
                scoped: Default::default(),
                answered: 0,
                refused: 0,
            })
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                accounts,
                latency: options.latency,
                token_delay: options.token_delay,
                scripted_once: Default::default(),
            }),
            recorded: Mutex::new(Vec::new()),
            recorded_cv: Condvar::new(),
            hits: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            shutdown: shutdown_rx,
            counter: AtomicU64::new(0),
        });
        let mut workers = Vec::with_capacity(WORKERS);
        for i in 0..WORKERS {
            let worker_shared = Arc::clone(&shared);
            let worker_server = Arc::clone(&server);
            let spawned = thread::Builder::new()
                .name(format!("standin-{i}"))
                .spawn(move || worker(&worker_shared, &worker_server));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    // Stop the ones already running before giving up.
                    let mut partial = StandIn {
                        shared,
                        server: Some(server),
                        workers,
                        addr,
                        shutdown: Some(shutdown_tx),
                    };
                    partial.stop();
                    return Err(e);
                }
            }
        }
        debug!("stand-in listening on {addr}");
        Ok(StandIn {
            shared,
            server: Some(server),
            workers,
            addr,
            shutdown: Some(shutdown_tx),
        })
    }

    /// `http://127.0.0.1:PORT`, for `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops serving and joins the workers. Answers in flight are finished
    /// at once (no more latency or token delays) rather than cut, so no
    /// client is left waiting on a half-sent answer. Idempotent; `Drop`
    /// calls it.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shutdown.take();
        if let Some(server) = &self.server {
            for _ in 0..self.workers.len() {
                server.unblock();
            }
        }
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                warn!("stand-in worker panicked");
            }
        }
        // The workers held the other references: this closes the listener,
        // so a client now gets "connection refused" rather than silence.
        self.server.take();
        // Wake anyone in wait_for_request so they see the end promptly.
        self.shared.recorded_cv.notify_all();
    }

    // ----- recording -----

    /// Every `/v1/messages` request so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.recorded.lock().clone()
    }

    /// The `/v1/messages` requests whose token selected `account`.
    pub fn requests_for(&self, account: &str) -> Vec<RecordedRequest> {
        self.shared
            .recorded
            .lock()
            .iter()
            .filter(|r| r.account.as_deref() == Some(account))
            .cloned()
            .collect()
    }

    /// The oldest recorded request (already seen or still to come) that
    /// satisfies `pred`, waiting at most `timeout` for one to arrive.
    /// Requests are recorded when their status is decided, before the answer
    /// is sent.
    pub fn wait_for_request<F>(&self, pred: F, timeout: Duration) -> Option<RecordedRequest>
    where
        F: Fn(&RecordedRequest) -> bool,
    {
        let deadline = Instant::now() + timeout;
        let mut recorded = self.shared.recorded.lock();
        let mut checked = 0;
        loop {
            if let Some(found) = recorded[checked..].iter().find(|r| pred(r)) {
                return Some(found.clone());
            }
            checked = recorded.len();
            if self.shared.stop.load(Ordering::SeqCst) {
                return None;
            }
            if self
                .shared
                .recorded_cv
                .wait_until(&mut recorded, deadline)
                .timed_out()
            {
                return recorded[checked..].iter().find(|r| pred(r)).cloned();
            }
        }
    }

    /// Every request of any path so far, oldest first.
    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().clone()
    }

    /// Forgets recorded requests and hits.
    pub fn clear_records(&self) {
        self.shared.recorded.lock().clear();
        self.shared.hits.lock().clear();
    }

    // ----- control -----

    /// Sets both windows (percent, clamped to 0..=100).
    /// Makes `token` a second login of `account` (another machine's own,
    /// sharing the account's quota).
    pub fn add_token(&self, account: &str, token: &str) -> Result<(), UnknownAccount> {
        self.shared
            .with_account(account, |a| a.also.push(token.to_string()))
    }

    pub fn set_usage(
        &self,
        account: &str,
        five_hour: f64,
        seven_day: f64,
    ) -> Result<(), UnknownAccount> {
        self.shared.with_account(account, |a| {
            a.five_hour = clamp_percent(five_hour);
            a.seven_day = clamp_percent(seven_day);
        })
    }

    /// Sets both reset times (Unix seconds). A time in the past resets that
    /// window at the next request, as the real window would have.
    pub fn set_resets(
        &self,
        account: &str,
        five_hour_reset_unix: u64,
        seven_day_reset_unix: u64,
    ) -> Result<(), UnknownAccount> {
        self.shared.with_account(account, |a| {
            a.five_hour_reset = five_hour_reset_unix;
            a.seven_day_reset = seven_day_reset_unix;
        })
    }

    /// Sets the five-hour window to 100 %: the next `/v1/messages` gets 429.
    pub fn exhaust(&self, account: &str) -> Result<(), UnknownAccount> {
        self.shared.with_account(account, |a| a.five_hour = 100.0)
    }

    /// Both windows back to 0, reset times to now + 5 h and now + 7 d.
    pub fn reset(&self, account: &str) -> Result<(), UnknownAccount> {
        self.shared.with_account(account, |a| a.reset(now_unix()))
    }

    /// Percent added per answered request, per window.
    pub fn set_steps(
        &self,
        account: &str,
        five_hour_step: f64,
        seven_day_step: f64,
    ) -> Result<(), UnknownAccount> {
        self.shared.with_account(account, |a| {
            a.five_hour_step = sane_step(five_hour_step);
            a.seven_day_step = sane_step(seven_day_step);
        })
    }

    /// Delay before the first byte of every later `/v1/messages` answer.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.state.lock().latency = latency;
    }

    /// Delay between streamed deltas of every later answer.
    pub fn set_token_delay(&self, token_delay: Duration) {
        self.shared.state.lock().token_delay = token_delay;
    }

    /// What the usage endpoint answers for this account.
    pub fn set_usage_mode(&self, account: &str, mode: UsageMode) -> Result<(), UnknownAccount> {
        self.shared.with_account(account, |a| a.usage_mode = mode)
    }

    /// Sets (or with `None` removes) the model-scoped weekly limit of
    /// `model` (a display name, `Opus`); a full one refuses that model.
    pub fn set_scoped(
        &self,
        account: &str,
        model: &str,
        percent: Option<f64>,
    ) -> Result<(), UnknownAccount> {
        self.shared.with_account(account, |a| match percent {
            Some(p) => {
                a.scoped.insert(model.to_string(), clamp_percent(p));
            }
            None => {
                a.scoped.remove(model);
            }
        })
    }

    /// Which keys the usage endpoint answers with for this account.
    pub fn set_usage_shape(&self, account: &str, shape: UsageShape) -> Result<(), UnknownAccount> {
        self.shared.with_account(account, |a| a.usage_shape = shape)
    }

    /// `(five_hour, seven_day)` in percent.
    pub fn usage(&self, account: &str) -> Option<(f64, f64)> {
        self.account(account).map(|s| (s.five_hour, s.seven_day))
    }

    pub fn account(&self, account: &str) -> Option<AccountState> {
        let now = now_unix();
        let mut state = self.shared.state.lock();
        state.find_mut(account).map(|a| {
            a.roll(now);
            a.snapshot()
        })
    }

    pub fn accounts(&self) -> Vec<AccountState> {
        self.shared.snapshots()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop();
    }
}

// ----- the prompt and the answer -----

/// The prompt a request carries, as the answer echoes it: the last user
/// message's last text block that is not only `<system-reminder>` blocks
/// (Claude Code puts its reminders in text blocks of their own, sometimes
/// after the prompt), with those blocks removed and the rest trimmed.
/// `content` may be a string or an array of blocks; `tool_result` and other
/// non-text blocks are ignored. Any other shape gives "".
pub fn extract_prompt(request: &Value) -> String {
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return String::new();
    };
    let Some(last_user) = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    else {
        return String::new();
    };
    let texts: Vec<&str> = match last_user.get("content") {
        Some(Value::String(text)) => vec![text.as_str()],
        Some(Value::Array(blocks)) => blocks
            .iter()
            .rev()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect(),
        _ => Vec::new(),
    };
    texts
        .iter()
        .map(|t| strip_system_reminders(t))
        .find(|t| !t.is_empty())
        // 2.1.332 sends a Stop hook's feedback inside a reminder of its
        // own, after a preamble: the feedback is the turn's prompt then.
        .or_else(|| texts.iter().find_map(|t| stop_hook_feedback(t)))
        .unwrap_or_default()
}

/// `Stop hook feedback:` and what follows it, up to the reminder's end.
fn stop_hook_feedback(text: &str) -> Option<String> {
    const MARK: &str = "Stop hook feedback:";
    let from = text.find(MARK)?;
    let rest = &text[from..];
    let end = rest.find("</system-reminder>").unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
}

/// `STANDIN-ANSWER[<account>]: <prompt>`, the text every answer carries.
pub fn answer_text(account: &str, prompt: &str) -> String {
    format!("{ANSWER_PREFIX}[{account}]: {prompt}")
}

/// Removes every `<system-reminder>…</system-reminder>` and trims. An
/// unclosed tag is left as it is rather than eating the rest of the text.
fn strip_system_reminders(text: &str) -> String {
    const OPEN: &str = "<system-reminder>";
    const CLOSE: &str = "</system-reminder>";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after_open = &rest[start + OPEN.len()..];
        match after_open.find(CLOSE) {
            Some(end) => {
                out.push_str(&rest[..start]);
                rest = &after_open[end + CLOSE.len()..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out.trim().to_string()
}

/// Splits `text` into a few pieces on character boundaries, for the deltas.
fn split_pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    let pieces = (chars.len() / 10).clamp(3, 8).min(chars.len());
    let size = chars.len().div_ceil(pieces);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// About four bytes a token: enough for Claude Code's context meter.
fn rough_tokens(bytes: usize) -> u64 {
    (bytes as u64 / 4).max(1)
}

// ----- shared state -----

struct Shared {
    state: Mutex<State>,
    recorded: Mutex<Vec<RecordedRequest>>,
    recorded_cv: Condvar,
    hits: Mutex<Vec<Hit>>,
    stop: AtomicBool,
    /// Never sent on; disconnected when the `StandIn` stops.
    shutdown: Receiver<()>,
    counter: AtomicU64,
}

struct State {
    accounts: Vec<Account>,
    latency: Duration,
    token_delay: Duration,
    /// Scripted refusals and overloads already answered: (script, event).
    scripted_once: std::collections::HashSet<(String, &'static str)>,
}

impl State {
    fn find_mut(&mut self, name: &str) -> Option<&mut Account> {
        self.accounts.iter_mut().find(|a| a.name == name)
    }

    fn by_token(&mut self, token: &str) -> Option<&mut Account> {
        if token.is_empty() {
            return None;
        }
        self.accounts
            .iter_mut()
            .find(|a| a.token == token || a.also.iter().any(|t| t == token))
    }
}

struct Account {
    name: String,
    token: String,
    /// More tokens of the same account (another machine's own login).
    also: Vec<String>,
    five_hour: f64,
    seven_day: f64,
    five_hour_reset: u64,
    seven_day_reset: u64,
    five_hour_step: f64,
    seven_day_step: f64,
    usage_mode: UsageMode,
    usage_shape: UsageShape,
    /// Model-scoped weekly limits: display name (`Opus`) → percent.
    scoped: std::collections::BTreeMap<String, f64>,
    answered: u64,
    refused: u64,
}

impl Account {
    /// The model-scoped limit, full, that covers a request for `model`
    /// (`claude-opus-4-5` is covered by `Opus`): its display name.
    /// `GET /api/oauth/usage`'s answer in the account's shape.
    fn usage_answer(&self) -> Value {
        let severity = |p: f64| {
            if p >= 100.0 {
                "critical"
            } else if p >= WARNING_PERCENT {
                "warning"
            } else {
                "normal"
            }
        };
        let old_window = |p: f64, reset: u64| json!({"utilization": round_to(p, 2), "resets_at": rfc3339_utc(reset)});
        let scoped_old = |m: &str| {
            self.scoped
                .get(m)
                .map_or(Value::Null, |p| old_window(*p, self.seven_day_reset))
        };
        // The limit that binds now: the fullest.
        let mut all: Vec<(&str, Option<&str>, f64, u64)> = vec![
            ("session", None, self.five_hour, self.five_hour_reset),
            ("weekly_all", None, self.seven_day, self.seven_day_reset),
        ];
        for (m, p) in &self.scoped {
            all.push(("weekly_scoped", Some(m.as_str()), *p, self.seven_day_reset));
        }
        let top = all.iter().map(|l| l.2).fold(f64::NEG_INFINITY, f64::max);
        let limits: Vec<Value> = all
            .iter()
            .map(|(kind, model, p, reset)| {
                let mut l = json!({
                    "kind": kind,
                    "percent": round_to(*p, 2),
                    "severity": severity(*p),
                    "resets_at": rfc3339_utc(*reset),
                    "is_active": *p == top && *p > 0.0,
                });
                if let Some(m) = model {
                    l["scope"] = json!({"model": {"display_name": m}});
                }
                l
            })
            .collect();
        let mut answer = json!({});
        if self.usage_shape != UsageShape::Limits {
            answer = json!({
                "five_hour": old_window(self.five_hour, self.five_hour_reset),
                "seven_day": old_window(self.seven_day, self.seven_day_reset),
                "seven_day_opus": scoped_old("Opus"),
                "seven_day_sonnet": scoped_old("Sonnet"),
                "extra_usage": null,
            });
        }
        if self.usage_shape != UsageShape::Old {
            answer["limits"] = Value::Array(limits);
        }
        answer
    }

    fn scoped_refusing(&self, model: &str) -> Option<String> {
        let model = model.to_lowercase();
        self.scoped
            .iter()
            .find(|(m, p)| **p >= 100.0 && model.contains(&m.to_lowercase()))
            .map(|(m, _)| m.clone())
    }

    /// A window whose reset time has passed starts over, as the real one does.
    fn roll(&mut self, now: u64) {
        if now >= self.five_hour_reset {
            self.five_hour = 0.0;
            self.five_hour_reset = now + FIVE_HOURS;
        }
        if now >= self.seven_day_reset {
            self.seven_day = 0.0;
            self.scoped.clear();
            self.seven_day_reset = now + SEVEN_DAYS;
        }
    }

    fn reset(&mut self, now: u64) {
        self.five_hour = 0.0;
        self.seven_day = 0.0;
        self.scoped.clear();
        self.five_hour_reset = now + FIVE_HOURS;
        self.seven_day_reset = now + SEVEN_DAYS;
    }

    fn exhausted(&self) -> bool {
        self.five_hour >= 100.0 || self.seven_day >= 100.0
    }

    /// The window that governs: when refusing, the exhausted one (the seven-
    /// day one if both are, since it lasts longer); otherwise the fuller one.
    fn representative(&self) -> Window {
        if self.exhausted() {
            if self.seven_day >= 100.0 {
                Window::SevenDay
            } else {
                Window::FiveHour
            }
        } else if self.seven_day > self.five_hour {
            Window::SevenDay
        } else {
            Window::FiveHour
        }
    }

    fn snapshot(&self) -> AccountState {
        AccountState {
            name: self.name.clone(),
            five_hour: self.five_hour,
            seven_day: self.seven_day,
            five_hour_resets_at: self.five_hour_reset,
            seven_day_resets_at: self.seven_day_reset,
            five_hour_step: self.five_hour_step,
            seven_day_step: self.seven_day_step,
            usage_mode: self.usage_mode,
            usage_shape: self.usage_shape,
            scoped: self.scoped.clone(),
            exhausted: self.exhausted(),
            answered: self.answered,
            refused: self.refused,
        }
    }

    /// The unified quota headers. `refused` marks the 429, the only answer
    /// whose status is `rejected` (a request that fills the window to 100 %
    /// was still allowed).
    fn unified_headers(&self, refused: bool) -> Vec<(String, String)> {
        let status_of = |percent: f64| {
            if percent >= 100.0 {
                "rejected"
            } else if percent >= WARNING_PERCENT {
                "allowed_warning"
            } else {
                "allowed"
            }
        };
        let status = if refused {
            "rejected"
        } else if self.five_hour.max(self.seven_day) >= WARNING_PERCENT {
            "allowed_warning"
        } else {
            "allowed"
        };
        let rep = self.representative();
        let reset = match rep {
            Window::FiveHour => self.five_hour_reset,
            Window::SevenDay => self.seven_day_reset,
        };
        let p = "anthropic-ratelimit-unified";
        vec![
            (format!("{p}-status"), status.to_string()),
            (
                format!("{p}-5h-utilization"),
                fraction(self.five_hour).to_string(),
            ),
            (format!("{p}-5h-reset"), self.five_hour_reset.to_string()),
            (format!("{p}-5h-status"), status_of(self.five_hour).into()),
            (
                format!("{p}-7d-utilization"),
                fraction(self.seven_day).to_string(),
            ),
            (format!("{p}-7d-reset"), self.seven_day_reset.to_string()),
            (format!("{p}-7d-status"), status_of(self.seven_day).into()),
            (format!("{p}-representative-claim"), rep.claim().into()),
            (format!("{p}-reset"), reset.to_string()),
        ]
    }
}

#[derive(Clone, Copy)]
enum Window {
    FiveHour,
    SevenDay,
}

impl Window {
    fn claim(self) -> &'static str {
        match self {
            Window::FiveHour => "five_hour",
            Window::SevenDay => "seven_day",
        }
    }
}

impl Shared {
    fn with_account<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Account) -> T,
    ) -> Result<T, UnknownAccount> {
        let mut state = self.state.lock();
        match state.find_mut(name) {
            Some(a) => Ok(f(a)),
            None => Err(UnknownAccount(name.to_string())),
        }
    }

    fn snapshots(&self) -> Vec<AccountState> {
        let now = now_unix();
        let mut state = self.state.lock();
        state
            .accounts
            .iter_mut()
            .map(|a| {
                a.roll(now);
                a.snapshot()
            })
            .collect()
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps `d` unless the stand-in stops first; false if it stopped.
    fn sleep(&self, d: Duration) -> bool {
        if d.is_zero() {
            return !self.stopped();
        }
        match self.shutdown.recv_timeout(d) {
            Err(RecvTimeoutError::Timeout) => !self.stopped(),
            // Nothing is ever sent; disconnection means stop.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => false,
        }
    }

    fn next_id(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn record(&self, request: RecordedRequest) {
        self.recorded.lock().push(request);
        self.recorded_cv.notify_all();
    }
}

// ----- serving -----

fn worker(shared: &Shared, server: &tiny_http::Server) {
    serve(shared, server);
    // Requests already queued when the stop came get a quick refusal rather
    // than none: tiny_http would keep them (and their clients) waiting.
    while let Ok(Some(request)) = server.try_recv() {
        let body = json!({"type": "error", "error": {"type": "overloaded_error",
            "message": "The stand-in is stopping."}});
        let headers = [("content-type".to_string(), "application/json".to_string())];
        let _ = request.respond(make_response(503, &headers, body.to_string().into_bytes()));
    }
}

fn serve(shared: &Shared, server: &tiny_http::Server) {
    while !shared.stopped() {
        match server.recv_timeout(POLL) {
            Ok(Some(request)) => {
                // A bug in a handler must not shrink the pool: the request
                // is dropped (tiny_http then answers 500) and the worker goes on.
                let outcome = panic::catch_unwind(AssertUnwindSafe(|| handle(shared, request)));
                if outcome.is_err() {
                    warn!("stand-in handler panicked");
                }
            }
            Ok(None) => {}
            Err(e) => {
                debug!("stand-in: receive failed: {e}");
                if !shared.sleep(Duration::from_millis(50)) {
                    break;
                }
            }
        }
    }
}

/// An answer about to be sent.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
    /// Wait this long before the first byte.
    delay: Duration,
}

enum Body {
    Json(Vec<u8>),
    /// Server-sent events, each sent (and flushed) after its delay.
    Events(Vec<SseEvent>),
}

struct SseEvent {
    delay: Duration,
    text: String,
}

impl SseEvent {
    fn new(delay: Duration, name: &str, data: &Value) -> Self {
        SseEvent {
            delay,
            text: format!("event: {name}\ndata: {data}\n\n"),
        }
    }
}

impl Reply {
    fn json(status: u16, value: &Value) -> Self {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Body::Json(value.to_string().into_bytes()),
            delay: Duration::ZERO,
        }
    }

    fn error(status: u16, kind: &str, message: &str) -> Self {
        Reply::json(
            status,
            &json!({"type": "error", "error": {"type": kind, "message": message}}),
        )
    }

    fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// What a handler knows about the request besides its body.
struct Incoming<'a> {
    method: String,
    /// Path with query.
    url: String,
    /// Path without query.
    path: &'a str,
    token: String,
}

fn handle(shared: &Shared, mut request: tiny_http::Request) {
    let method = request.method().as_str().to_ascii_uppercase();
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let token = token_of(request.headers());
    let old_http = *request.http_version() < tiny_http::HTTPVersion(1, 1);

    let body = read_body(&mut request);
    let incoming = Incoming {
        method,
        url,
        path: &path,
        token,
    };
    let (reply, account) = match body {
        Ok(body) => route(shared, &incoming, &body),
        Err(reply) => (reply, None),
    };

    let hit = Hit {
        method: incoming.method.clone(),
        path: incoming.url.clone(),
        account,
        token: incoming.token.clone(),
        status: reply.status,
        at: SystemTime::now(),
    };
    debug!("stand-in: {} {} -> {}", hit.method, hit.path, hit.status);
    shared.hits.lock().push(hit);

    // When stopping, the answer goes out at once instead.
    shared.sleep(reply.delay);
    let result = match reply.body {
        Body::Events(events) if !old_http => {
            let writer = request.into_writer();
            stream_events(shared, writer, reply.status, &reply.headers, events)
        }
        Body::Events(events) => {
            // HTTP/1.0 has no chunked encoding: send the lot at once.
            let text: String = events.into_iter().map(|e| e.text).collect();
            request.respond(make_response(
                reply.status,
                &reply.headers,
                text.into_bytes(),
            ))
        }
        Body::Json(bytes) => request.respond(make_response(reply.status, &reply.headers, bytes)),
    };
    if let Err(e) = result {
        debug!("stand-in: answering {} failed: {e}", incoming.url);
    }
}

fn read_body(request: &mut tiny_http::Request) -> Result<Vec<u8>, Reply> {
    if request.body_length().is_some_and(|n| n > MAX_BODY) {
        return Err(Reply::error(
            413,
            "request_too_large",
            "Request exceeds the maximum allowed size.",
        ));
    }
    let mut body = Vec::new();
    let read = request
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body);
    match read {
        Err(e) => Err(Reply::error(
            400,
            "invalid_request_error",
            &format!("could not read the request body: {e}"),
        )),
        Ok(_) if body.len() > MAX_BODY => Err(Reply::error(
            413,
            "request_too_large",
            "Request exceeds the maximum allowed size.",
        )),
        Ok(_) => Ok(body),
    }
}

/// Picks the handler; also returns the account the token selected, for the
/// hit log.
fn route(shared: &Shared, rq: &Incoming, body: &[u8]) -> (Reply, Option<String>) {
    let account = || {
        let mut state = shared.state.lock();
        state.by_token(&rq.token).map(|a| a.name.clone())
    };
    let method = rq.method.as_str();
    let reply = match (method, rq.path) {
        ("POST", "/v1/messages") => return messages(shared, rq, body),
        ("POST", "/v1/messages/count_tokens") => return count_tokens(shared, rq, body),
        ("GET", "/api/oauth/usage") => return oauth_usage(shared, rq),
        ("GET", "/_standin/accounts") => Reply::json(
            200,
            &Value::Array(
                shared
                    .snapshots()
                    .iter()
                    .map(AccountState::to_json)
                    .collect(),
            ),
        ),
        ("GET", "/_standin/requests") => Reply::json(
            200,
            &Value::Array(
                shared
                    .recorded
                    .lock()
                    .iter()
                    .map(RecordedRequest::to_json)
                    .collect(),
            ),
        ),
        ("GET", "/_standin/hits") => Reply::json(
            200,
            &Value::Array(shared.hits.lock().iter().map(Hit::to_json).collect()),
        ),
        ("GET", "/_standin/config") => config_reply(shared),
        ("POST", "/_standin/config") => control_config(shared, body),
        (m, p) if p.starts_with("/_standin/accounts/") => {
            let name = &p["/_standin/accounts/".len()..];
            match m {
                "POST" => control_account(shared, name, body),
                "GET" => {
                    let now = now_unix();
                    let mut state = shared.state.lock();
                    match state.find_mut(name) {
                        Some(a) => {
                            a.roll(now);
                            Reply::json(200, &a.snapshot().to_json())
                        }
                        None => unknown_account(name),
                    }
                }
                _ => not_found(rq),
            }
        }
        _ => not_found(rq),
    };
    (reply, account())
}

fn not_found(rq: &Incoming) -> Reply {
    // Claude Code may probe endpoints we do not model; a fast 404 keeps its
    // start-up from hanging, and the log says what it asked for.
    debug!("stand-in: no route for {} {}", rq.method, rq.url);
    Reply::error(
        404,
        "not_found_error",
        &format!("Not found: {} {}", rq.method, rq.path),
    )
}

fn unknown_account(name: &str) -> Reply {
    Reply::error(404, "not_found_error", &format!("unknown account: {name}"))
}

fn unauthorized() -> Reply {
    Reply::error(401, "authentication_error", "invalid x-api-key")
}

/// `POST /v1/messages`.
fn messages(shared: &Shared, rq: &Incoming, body: &[u8]) -> (Reply, Option<String>) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let (stream, prompt, messages, model) = match &parsed {
        Some(v) => (
            v.get("stream").and_then(Value::as_bool).unwrap_or(false),
            extract_prompt(v),
            v.get("messages").cloned().unwrap_or(Value::Null),
            v.get("model")
                .and_then(Value::as_str)
                .unwrap_or("claude-standin")
                .to_string(),
        ),
        None => (false, String::new(), Value::Null, String::new()),
    };
    let id = shared.next_id();
    let request_id = format!("req_standin_{id:08}");
    let script = parsed.as_ref().and_then(crate::script::progress);

    let mut state = shared.state.lock();
    let latency = state.latency;
    let token_delay = state.token_delay;
    let now = now_unix();
    // A scripted refusal or overload at this step, once per script.
    let mut once = |at: Option<u32>, what: &'static str| {
        script.as_ref().is_some_and(|p| {
            !p.finished()
                && at == Some(p.next())
                && state.scripted_once.insert((p.key.clone(), what))
        })
    };
    let refuse_now = once(script.as_ref().and_then(|p| p.script.refuse_at), "refuse");
    let overload_now = once(
        script.as_ref().and_then(|p| p.script.overload_at),
        "overload",
    );
    let unauth_now = once(script.as_ref().and_then(|p| p.script.unauth_at), "unauth");
    let decided = match state.by_token(&rq.token) {
        None => Err((unauthorized(), None)),
        Some(account) => {
            let name = account.name.clone();
            account.roll(now);
            if !parsed.as_ref().is_some_and(Value::is_object) {
                Err((
                    Reply::error(
                        400,
                        "invalid_request_error",
                        "The request body is not a valid JSON object.",
                    ),
                    Some(name),
                ))
            } else if overload_now {
                Err((
                    Reply::error(529, "overloaded_error", "Overloaded"),
                    Some(name),
                ))
            } else if unauth_now {
                Err((
                    Reply::error(
                        401,
                        "authentication_error",
                        "OAuth token has expired. Please obtain a new token or refresh your existing token.",
                    ),
                    Some(name),
                ))
            } else if let Some(m) = account.scoped_refusing(&model) {
                account.refused += 1;
                let mut reply = Reply::error(
                    429,
                    "rate_limit_error",
                    &format!("{m} weekly limit reached"),
                )
                .with_header(
                    "retry-after",
                    account
                        .seven_day_reset
                        .saturating_sub(now)
                        .max(1)
                        .to_string(),
                );
                reply.headers.extend(account.unified_headers(true));
                Err((reply, Some(name)))
            } else if refuse_now || account.exhausted() {
                if refuse_now {
                    // As a real refusal: the window is full from here on.
                    account.five_hour = 100.0;
                }
                account.refused += 1;
                let rep = account.representative();
                let reset = match rep {
                    Window::FiveHour => account.five_hour_reset,
                    Window::SevenDay => account.seven_day_reset,
                };
                let mut reply = Reply::error(429, "rate_limit_error", RATE_LIMIT_MESSAGE)
                    .with_header("retry-after", reset.saturating_sub(now).max(1).to_string());
                reply.headers.extend(account.unified_headers(true));
                Err((reply, Some(name)))
            } else {
                account.five_hour = clamp_percent(account.five_hour + account.five_hour_step);
                account.seven_day = clamp_percent(account.seven_day + account.seven_day_step);
                account.answered += 1;
                Ok((name, account.unified_headers(false)))
            }
        }
    };
    drop(state);

    let (mut reply, account) = match decided {
        Err((reply, account)) => (reply, account),
        Ok((name, unified)) if script.as_ref().is_some_and(|p| !p.finished()) => {
            let p = script.as_ref().expect("a script");
            let k = p.next();
            let (tool, input) = match p.script.tools.get(k as usize - 1) {
                Some(t) => (
                    t.clone(),
                    p.script.inputs.get(&k).cloned().unwrap_or(json!({})),
                ),
                None => (
                    "Bash".to_string(),
                    json!({"command": crate::script::step_command(&p.script, k), "description": "scripted step"}),
                ),
            };
            let msg_id = format!("msg_standin_{id:08}");
            let tool_id = format!("toolu_standin_{id:08}");
            let mut reply = tool_use_reply(
                stream,
                &msg_id,
                &model,
                &tool_id,
                &tool,
                &input,
                rough_tokens(body.len()),
            );
            reply.headers.extend(unified);
            // The step's own time, after the stand-in's latency.
            reply.delay = p.script.delay;
            (reply, Some(name))
        }
        Ok((name, unified)) => {
            let text = match &script {
                Some(p) => answer_text(
                    &name,
                    &format!(
                        "script done: {} steps into {} ({})",
                        p.script.steps, p.script.file, p.key
                    ),
                ),
                None => answer_text(&name, &prompt),
            };
            let usage_in = rough_tokens(body.len());
            let usage_out = rough_tokens(text.len());
            let msg_id = format!("msg_standin_{id:08}");
            let mut reply = if stream {
                stream_reply(&msg_id, &model, &text, usage_in, usage_out, token_delay)
            } else {
                Reply::json(
                    200,
                    &json!({
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [{"type": "text", "text": text}],
                        "stop_reason": "end_turn",
                        "stop_sequence": null,
                        "usage": {"input_tokens": usage_in, "output_tokens": usage_out},
                    }),
                )
            };
            reply.headers.extend(unified);
            (reply, Some(name))
        }
    };
    reply.delay += latency;
    reply.headers.push(("request-id".into(), request_id));

    shared.record(RecordedRequest {
        account: account.clone(),
        token: rq.token.clone(),
        path: rq.url.clone(),
        stream,
        prompt,
        messages,
        model: model.clone(),
        status: reply.status,
        at: SystemTime::now(),
        step: script.as_ref().map(|p| p.next()),
        script: script.as_ref().map(|p| p.key.clone()),
        tool_results: script.map(|p| p.tool_results).unwrap_or_default(),
    });
    (reply, account)
}

/// A 200 that streams `events` as server-sent events.
fn sse_reply(events: Vec<SseEvent>) -> Reply {
    Reply {
        status: 200,
        headers: vec![
            (
                "content-type".into(),
                "text/event-stream; charset=utf-8".into(),
            ),
            ("cache-control".into(), "no-cache".into()),
        ],
        body: Body::Events(events),
        delay: Duration::ZERO,
    }
}

/// A tool call: Bash with `command`, streamed as Claude Code expects
/// (claude-code-facts §9) or as one JSON message; `stop_reason: tool_use`.
fn tool_use_reply(
    stream: bool,
    msg_id: &str,
    model: &str,
    tool_id: &str,
    tool: &str,
    input: &Value,
    usage_in: u64,
) -> Reply {
    if !stream {
        return Reply::json(
            200,
            &json!({
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "tool_use", "id": tool_id, "name": tool, "input": input}],
                "stop_reason": "tool_use",
                "stop_sequence": null,
                "usage": {"input_tokens": usage_in, "output_tokens": 20},
            }),
        );
    }
    let now = Duration::ZERO;
    let events = vec![
        SseEvent::new(
            now,
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": msg_id, "type": "message", "role": "assistant", "model": model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": usage_in, "output_tokens": 1},
                },
            }),
        ),
        SseEvent::new(
            now,
            "content_block_start",
            &json!({
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": tool_id, "name": tool, "input": {}},
            }),
        ),
        SseEvent::new(
            now,
            "content_block_delta",
            &json!({
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": input.to_string()},
            }),
        ),
        SseEvent::new(
            now,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        SseEvent::new(
            now,
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"output_tokens": 20},
            }),
        ),
        SseEvent::new(now, "message_stop", &json!({"type": "message_stop"})),
    ];
    sse_reply(events)
}

fn stream_reply(
    msg_id: &str,
    model: &str,
    text: &str,
    usage_in: u64,
    usage_out: u64,
    token_delay: Duration,
) -> Reply {
    let now = Duration::ZERO;
    let mut events = vec![
        SseEvent::new(
            now,
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {"input_tokens": usage_in, "output_tokens": 1},
                },
            }),
        ),
        SseEvent::new(now, "ping", &json!({"type": "ping"})),
        SseEvent::new(
            now,
            "content_block_start",
            &json!({
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }),
        ),
    ];
    for (i, piece) in split_pieces(text).into_iter().enumerate() {
        events.push(SseEvent::new(
            if i == 0 { now } else { token_delay },
            "content_block_delta",
            &json!({
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }),
        ));
    }
    events.push(SseEvent::new(
        now,
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(SseEvent::new(
        now,
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": usage_out},
        }),
    ));
    events.push(SseEvent::new(
        now,
        "message_stop",
        &json!({"type": "message_stop"}),
    ));
    sse_reply(events)
}

/// `POST /v1/messages/count_tokens`.
fn count_tokens(shared: &Shared, rq: &Incoming, body: &[u8]) -> (Reply, Option<String>) {
    let account = shared
        .state
        .lock()
        .by_token(&rq.token)
        .map(|a| a.name.clone());
    if account.is_none() {
        return (unauthorized(), None);
    }
    let reply = match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => {
            Reply::json(200, &json!({"input_tokens": rough_tokens(body.len())}))
        }
        _ => Reply::error(
            400,
            "invalid_request_error",
            "The request body is not a valid JSON object.",
        ),
    };
    (reply, account)
}

/// `GET /api/oauth/usage`.
fn oauth_usage(shared: &Shared, rq: &Incoming) -> (Reply, Option<String>) {
    let now = now_unix();
    let mut state = shared.state.lock();
    let Some(account) = state.by_token(&rq.token) else {
        return (
            Reply::error(401, "authentication_error", "Invalid bearer token"),
            None,
        );
    };
    account.roll(now);
    let name = Some(account.name.clone());
    let reply = match account.usage_mode {
        UsageMode::RateLimited => Reply::error(
            429,
            "rate_limit_error",
            "Rate limited. Please try again later.",
        )
        .with_header("retry-after", USAGE_RETRY_AFTER.to_string()),
        UsageMode::Forbidden => Reply::error(
            403,
            "permission_error",
            "OAuth token does not meet scope requirement user:profile",
        ),
        UsageMode::Normal => Reply::json(200, &account.usage_answer()),
    };
    (reply, name)
}

fn config_reply(shared: &Shared) -> Reply {
    let state = shared.state.lock();
    Reply::json(
        200,
        &json!({
            "latency_ms": state.latency.as_millis() as u64,
            "token_delay_ms": state.token_delay.as_millis() as u64,
        }),
    )
}

/// `POST /_standin/config` `{"latency_ms":…, "token_delay_ms":…}`.
fn control_config(shared: &Shared, body: &[u8]) -> Reply {
    let fields = match control_fields(body) {
        Ok(f) => f,
        Err(reply) => return reply,
    };
    let latency = match opt_number(&fields, "latency_ms") {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let token_delay = match opt_number(&fields, "token_delay_ms") {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    {
        let mut state = shared.state.lock();
        if let Some(ms) = latency {
            state.latency = millis(ms);
        }
        if let Some(ms) = token_delay {
            state.token_delay = millis(ms);
        }
    }
    config_reply(shared)
}

/// `POST /_standin/accounts/<name>`: every field optional; `reset` is applied
/// first, so `{"reset":true,"seven_day":50}` means "fresh, but half the week
/// used". `"exhausted": true` is [`StandIn::exhaust`]; `false` lifts
/// exhaustion by setting any full window back to 0.
fn control_account(shared: &Shared, name: &str, body: &[u8]) -> Reply {
    let fields = match control_fields(body) {
        Ok(f) => f,
        Err(reply) => return reply,
    };
    // Validate everything before changing anything, so a bad field leaves
    // the account as it was.
    let parsed = (|| -> Result<_, Reply> {
        Ok((
            opt_bool(&fields, "reset")?,
            opt_number(&fields, "five_hour")?,
            opt_number(&fields, "seven_day")?,
            opt_number(&fields, "five_hour_resets_at")?,
            opt_number(&fields, "seven_day_resets_at")?,
            opt_bool(&fields, "exhausted")?,
            opt_number(&fields, "five_hour_step")?,
            opt_number(&fields, "seven_day_step")?,
        ))
    })();
    let (reset, five_hour, seven_day, five_reset, seven_reset, exhausted, five_step, seven_step) =
        match parsed {
            Ok(p) => p,
            Err(reply) => return reply,
        };
    let usage_mode = match fields.get("usage_mode") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match UsageMode::parse(s) {
            Some(m) => Some(m),
            None => return bad_field("usage_mode", "normal, 429 or 403"),
        },
        Some(_) => return bad_field("usage_mode", "normal, 429 or 403"),
    };
    let usage_shape = match fields.get("usage_shape") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match UsageShape::parse(s) {
            Some(m) => Some(m),
            None => return bad_field("usage_shape", "both, old or limits"),
        },
        Some(_) => return bad_field("usage_shape", "both, old or limits"),
    };
    // `{"scoped": {"Opus": 100, "Sonnet": null}}`: null removes a limit.
    let mut scoped: Vec<(String, Option<f64>)> = Vec::new();
    match fields.get("scoped") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (model, v) in m {
                match v {
                    Value::Null => scoped.push((model.clone(), None)),
                    v => match v.as_f64().filter(|n| n.is_finite()) {
                        Some(n) => scoped.push((model.clone(), Some(clamp_percent(n)))),
                        None => return bad_field("scoped", "an object of model → percent or null"),
                    },
                }
            }
        }
        Some(_) => return bad_field("scoped", "an object of model → percent or null"),
    }

    let now = now_unix();
    let mut state = shared.state.lock();
    let Some(a) = state.find_mut(name) else {
        return unknown_account(name);
    };
    if reset == Some(true) {
        a.reset(now);
    }
    if let Some(v) = five_hour {
        a.five_hour = clamp_percent(v);
    }
    if let Some(v) = seven_day {
        a.seven_day = clamp_percent(v);
    }
    if let Some(v) = five_reset {
        a.five_hour_reset = unix_from_number(v);
    }
    if let Some(v) = seven_reset {
        a.seven_day_reset = unix_from_number(v);
    }
    match exhausted {
        Some(true) => a.five_hour = 100.0,
        Some(false) => {
            if a.five_hour >= 100.0 {
                a.five_hour = 0.0;
            }
            if a.seven_day >= 100.0 {
                a.seven_day = 0.0;
            }
        }
        None => {}
    }
    if let Some(v) = five_step {
        a.five_hour_step = sane_step(v);
    }
    if let Some(v) = seven_step {
        a.seven_day_step = sane_step(v);
    }
    if let Some(m) = usage_mode {
        a.usage_mode = m;
    }
    if let Some(m) = usage_shape {
        a.usage_shape = m;
    }
    for (model, v) in scoped {
        match v {
            Some(p) => {
                a.scoped.insert(model, p);
            }
            None => {
                a.scoped.remove(&model);
            }
        }
    }
    a.roll(now);
    Reply::json(200, &a.snapshot().to_json())
}

/// The control body: a JSON object; an empty body counts as `{}`.
fn control_fields(body: &[u8]) -> Result<Map<String, Value>, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Reply::error(
            400,
            "invalid_request_error",
            "expected a JSON object",
        )),
    }
}

fn opt_number(fields: &Map<String, Value>, key: &str) -> Result<Option<f64>, Reply> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) if n.is_finite() => Ok(Some(n)),
            _ => Err(bad_field(key, "a number")),
        },
    }
}

fn opt_bool(fields: &Map<String, Value>, key: &str) -> Result<Option<bool>, Reply> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad_field(key, "true or false")),
    }
}

fn bad_field(key: &str, expected: &str) -> Reply {
    Reply::error(
        400,
        "invalid_request_error",
        &format!("{key}: expected {expected}"),
    )
}

// ----- HTTP plumbing -----

fn header<'a>(headers: &'a [tiny_http::Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// The token from `Authorization: Bearer …`, else from `x-api-key`.
fn token_of(headers: &[tiny_http::Header]) -> String {
    if let Some(auth) = header(headers, "authorization") {
        let auth = auth.trim();
        if auth.len() > 7 && auth[..7].eq_ignore_ascii_case("bearer ") {
            return auth[7..].trim().to_string();
        }
    }
    header(headers, "x-api-key")
        .map(|k| k.trim().to_string())
        .unwrap_or_default()
}

fn make_response(
    status: u16,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> tiny_http::Response<io::Cursor<Vec<u8>>> {
    let mut response = tiny_http::Response::from_data(body).with_status_code(status);
    // Every answer closes its connection. tiny_http cannot close the idle
    // keep-alive connections of a stopped server, and a client that sent its
    // next request on one would wait forever; this way it gets "connection
    // refused" instead. Local connections are cheap.
    let close = [("Connection".to_string(), "close".to_string())];
    for (name, value) in headers.iter().chain(&close) {
        match tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            Ok(h) => response.add_header(h),
            Err(()) => debug!("stand-in: dropping unsendable header {name}"),
        }
    }
    response
}

/// Writes a chunked event-stream answer straight to the connection, one
/// chunk and one flush per event, so the client sees each delta when it is
/// "generated".
fn stream_events(
    shared: &Shared,
    mut writer: Box<dyn Write + Send>,
    status: u16,
    headers: &[(String, String)],
    events: Vec<SseEvent>,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        // Header values are ours, but never let one break the framing.
        if !value.contains(['\r', '\n']) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("transfer-encoding: chunked\r\nconnection: close\r\n");
    head.push_str("\r\n");
    writer.write_all(head.as_bytes())?;
    writer.flush()?;
    let mut stopping = false;
    for event in events {
        // Once stopping, the rest goes out without delays (see StandIn::stop).
        if !stopping {
            stopping = !shared.sleep(event.delay);
        }
        write!(writer, "{:x}\r\n", event.text.len())?;
        writer.write_all(event.text.as_bytes())?;
        writer.write_all(b"\r\n")?;
        writer.flush()?;
    }
    writer.write_all(b"0\r\n\r\n")?;
    writer.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        _ => "Unknown",
    }
}

// ----- numbers and time -----

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unix_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn unix_from_number(v: f64) -> u64 {
    // Finite by construction (opt_number); `as` saturates negatives to 0.
    v.max(0.0) as u64
}

fn millis(ms: f64) -> Duration {
    Duration::from_millis(ms.clamp(0.0, 3_600_000.0) as u64)
}

fn clamp_percent(v: f64) -> f64 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(0.0, 100.0)
    }
}

fn sane_step(v: f64) -> f64 {
    if v.is_finite() {
        v.max(0.0)
    } else {
        0.0
    }
}

fn round_to(v: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (v * scale).round() / scale
}

/// Percent to the header's fraction, rounded so float noise from repeated
/// steps (0.2 + 0.2 + 0.2) does not show.
fn fraction(percent: f64) -> f64 {
    round_to(percent / 100.0, 6)
}

/// Unix seconds as `2026-01-02T19:59:59.000000+00:00`, the usage endpoint's
/// shape (the calendar arithmetic is `claude_failover::sys::time`'s).
fn rfc3339_utc(unix: u64) -> String {
    let base =
        claude_failover::sys::time::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(unix));
    format!("{}.000000+00:00", base.trim_end_matches('Z'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000000+00:00");
        // 2026-01-02T19:59:59Z, the example of the facts file.
        assert_eq!(
            rfc3339_utc(1_767_383_999),
            "2026-01-02T19:59:59.000000+00:00"
        );
        assert_eq!(
            rfc3339_utc(4_102_444_800),
            "2100-01-01T00:00:00.000000+00:00"
        );
    }

    #[test]
    fn reminders_are_stripped() {
        assert_eq!(
            strip_system_reminders("<system-reminder>x</system-reminder>\n hi <system-reminder>y\nz</system-reminder> there "),
            "hi  there"
        );
        assert_eq!(
            strip_system_reminders("a <system-reminder>open"),
            "a <system-reminder>open"
        );
        assert_eq!(
            strip_system_reminders("</system-reminder>"),
            "</system-reminder>"
        );
    }

    #[test]
    fn prompt_shapes() {
        let v = json!({"messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": "ignored"},
                {"type": "text", "text": "<system-reminder>r</system-reminder>"},
                {"type": "text", "text": "the task"},
                {"type": "text", "text": "<system-reminder>late</system-reminder>"},
                {"type": "image"},
            ]},
        ]});
        assert_eq!(extract_prompt(&v), "the task");
        assert_eq!(
            extract_prompt(&json!({"messages": [{"role": "user", "content": " s "}]})),
            "s"
        );
        assert_eq!(extract_prompt(&json!({"messages": 3})), "");
        // 2.1.332: a Stop hook's feedback comes as a reminder of its own.
        let fed_back = json!({"messages": [
            {"role": "user", "content": "the task"},
            {"role": "assistant", "content": "done"},
            {"role": "user", "content": "<system-reminder>\nA hook asks this. Stop hook feedback:\nrun the tests first\n</system-reminder>\n"},
        ]});
        assert_eq!(
            extract_prompt(&fed_back),
            "Stop hook feedback:\nrun the tests first"
        );
        assert_eq!(extract_prompt(&json!([1, 2])), "");
        assert_eq!(
            extract_prompt(
                &json!({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]})
            ),
            ""
        );
    }

    #[test]
    fn pieces_cover_the_text() {
        for text in ["", "a", "héllo wörld", "STANDIN-ANSWER[a]: hello there"] {
            let pieces = split_pieces(text);
            assert!(!pieces.is_empty());
            assert_eq!(pieces.concat(), text);
        }
        assert!(split_pieces("STANDIN-ANSWER[a]: hello there").len() >= 3);
    }
}
