//! The notifier: tells an operator about swaps and trouble, by Telegram
//! and/or a JSON webhook, without ever holding up the daemon.
//!
//! One thread owns the deliveries. Everyone else holds a [`NotifyHandle`]
//! (a cheap clone) whose [`NotifyHandle::send`] never blocks:
//!
//! - Notes below `notify.min_level` are ignored (not counted anywhere).
//! - Every other note is logged through `log` at its level, whatever happens
//!   to it next: the log is the notification of last resort.
//! - With no target configured, that is all.
//! - **Rate limit**, applied in `send`: at most one note per *key* per
//!   [`NotifierOptions::rate_limit`] (30 s by default). The key is the kind
//!   plus `fields["swap_id"]` when the note has one, so notes about
//!   different swaps are never merged (swap 7 failing does not hide swap 8
//!   failing), while a note repeated for the same swap, or a kind without a
//!   swap id repeated (`task_failed` ×50), is suppressed and counted
//!   `rate_limited`. A note dropped because the queue was full does not
//!   use up its key's slot.
//! - Otherwise the note goes into a bounded queue
//!   ([`NotifierOptions::queue_capacity`], 256); when that is full the note
//!   is dropped and counted `dropped`.
//!
//! On the thread each note becomes one delivery per configured target
//! (targets are read when the note is taken from the queue; a SIGHUP may
//! change them with [`NotifyHandle::reconfigure`]):
//!
//! - Telegram: `POST {api_base}/bot{token}/sendMessage` with
//!   `{"chat_id", "text"}`; the token is read from `bot_token_file` at every
//!   delivery, trimmed, and never logged (transport errors are rendered
//!   without their URL).
//! - Webhook: `POST url` with the whole note, see [`Note::to_json`].
//!
//! Each try has a timeout (5 s). Transport errors, 408, 429 and 5xx are
//! retried after a back-off (1 s, then 2 s, ...; at most 3 tries in all);
//! other 4xx answers are not retried. A delivery waiting for its retry does
//! not hold up other notes: it waits in a bounded retry list
//! ([`NotifierOptions::max_retrying`]) while later notes go out. A delivery
//! that is given up (tries exhausted, permanent error, or retry list full)
//! is counted `failed`. So a receiver that is down costs at most the queue,
//! the retry list and the counters, never memory without bound.
//!
//! The counters ([`NotifyStats`], for `/metrics`): `sent` and `failed` count
//! deliveries (one note to Telegram and a webhook counts twice), `dropped`
//! and `rate_limited` count notes.
//!
//! Shutdown: [`Notifier::shutdown`] (or dropping the [`Notifier`], or
//! dropping every sender) lets the thread flush what is queued for a
//! bounded time (the grace period; [`NotifierOptions::flush_grace`] when the
//! `Notifier` is just dropped), capping each try's timeout at that
//! deadline. Notes still queued then are counted `dropped`, deliveries still
//! waiting to retry `failed`. Notes sent after the thread ended are counted
//! `dropped`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{after, never, select, Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{Level, NotifyConfig, TelegramConfig};

/// What happened. Serialised in snake_case (`swap_done`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    SwapStarted,
    SwapDone,
    SwapFailed,
    SwapRolledBack,
    SwapPartial,
    NoAccount,
    NeedsLogin,
    SessionFailedToStart,
    /// A session waits for a person: Claude Code asks a permission.
    SessionWaiting,
    /// A session works while none of its hooks reaches the daemon.
    HooksSilent,
    /// A pool takes no new task: the active account's limit for its model
    /// is spent and no account serves it with the rest.
    PoolHeld,
    TaskFailed,
    ReloadRefused,
    SharedFoldersDiverged,
    /// The fleet's Redis is unreachable: this machine goes on alone.
    FleetDisconnected,
    /// The fleet's Redis is back.
    FleetRejoined,
}

impl Kind {
    pub const ALL: [Kind; 16] = [
        Kind::SwapStarted,
        Kind::SwapDone,
        Kind::SwapFailed,
        Kind::SwapRolledBack,
        Kind::SwapPartial,
        Kind::NoAccount,
        Kind::NeedsLogin,
        Kind::SessionFailedToStart,
        Kind::SessionWaiting,
        Kind::HooksSilent,
        Kind::PoolHeld,
        Kind::TaskFailed,
        Kind::ReloadRefused,
        Kind::SharedFoldersDiverged,
        Kind::FleetDisconnected,
        Kind::FleetRejoined,
    ];

    /// The level a note of this kind has unless told otherwise.
    pub fn default_level(self) -> Level {
        match self {
            Kind::SwapStarted | Kind::SwapDone | Kind::FleetRejoined => Level::Info,
            Kind::SwapRolledBack
            | Kind::TaskFailed
            | Kind::SessionWaiting
            | Kind::PoolHeld
            | Kind::FleetDisconnected => Level::Warn,
            Kind::SwapFailed
            | Kind::SwapPartial
            | Kind::NoAccount
            | Kind::NeedsLogin
            | Kind::SessionFailedToStart
            | Kind::HooksSilent
            | Kind::ReloadRefused
            | Kind::SharedFoldersDiverged => Level::Error,
        }
    }

    /// The note for a swap that ended with `outcome`.
    pub fn for_swap(outcome: crate::decide::swap_plan::SwapOutcome) -> Kind {
        use crate::decide::swap_plan::SwapOutcome as O;
        match outcome {
            O::Done => Kind::SwapDone,
            O::RolledBack => Kind::SwapRolledBack,
            O::Partial => Kind::SwapPartial,
            O::Incomplete
            | O::Refused
            | O::Failed
            | O::FinishedAfterRestart
            | O::RolledBackAfterRestart => Kind::SwapFailed,
        }
    }

    /// The serialised name (`swap_done`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SwapStarted => "swap_started",
            Kind::SwapDone => "swap_done",
            Kind::SwapFailed => "swap_failed",
            Kind::SwapRolledBack => "swap_rolled_back",
            Kind::SwapPartial => "swap_partial",
            Kind::NoAccount => "no_account",
            Kind::NeedsLogin => "needs_login",
            Kind::SessionFailedToStart => "session_failed_to_start",
            Kind::SessionWaiting => "session_waiting",
            Kind::HooksSilent => "hooks_silent",
            Kind::PoolHeld => "pool_held",
            Kind::TaskFailed => "task_failed",
            Kind::ReloadRefused => "reload_refused",
            Kind::SharedFoldersDiverged => "shared_folders_diverged",
            Kind::FleetDisconnected => "fleet_disconnected",
            Kind::FleetRejoined => "fleet_rejoined",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `info`, `warn` or `error`, as the config file and the webhook spell it.
pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

fn log_level(level: Level) -> log::Level {
    match level {
        Level::Info => log::Level::Info,
        Level::Warn => log::Level::Warn,
        Level::Error => log::Level::Error,
    }
}

fn level_to_u8(level: Level) -> u8 {
    match level {
        Level::Info => 0,
        Level::Warn => 1,
        Level::Error => 2,
    }
}

/// One notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub kind: Kind,
    pub level: Level,
    /// One line an operator reads.
    pub text: String,
    /// Structured details (an object; `swap_id` keys the rate limit).
    pub fields: Value,
    pub at: SystemTime,
}

impl Note {
    /// A note at the kind's default level, stamped now.
    pub fn new(kind: Kind, text: impl Into<String>, fields: Value) -> Note {
        Note {
            kind,
            level: kind.default_level(),
            text: text.into(),
            fields,
            at: SystemTime::now(),
        }
    }

    /// The same note at another level.
    pub fn with_level(mut self, level: Level) -> Note {
        self.level = level;
        self
    }

    /// The webhook body: `{"kind", "level", "text", "fields", "at"}`, `at`
    /// in RFC 3339 (UTC, seconds).
    pub fn to_json(&self) -> Value {
        json!({
            "kind": self.kind,
            "level": level_name(self.level),
            "text": self.text,
            "fields": self.fields,
            "at": crate::sys::time::rfc3339(self.at),
        })
    }

    /// The Telegram message: `[level] text`, cut to Telegram's 4096
    /// characters.
    pub fn telegram_text(&self) -> String {
        const MAX: usize = 4096;
        let s = format!("[{}] {}", level_name(self.level), self.text);
        if s.chars().count() <= MAX {
            return s;
        }
        let mut cut: String = s.chars().take(MAX - 1).collect();
        cut.push('…');
        cut
    }

    /// What the rate limit is keyed on: the kind plus `fields["swap_id"]`
    /// when present.
    fn rate_key(&self) -> (Kind, Option<String>) {
        let swap = match self.fields.get("swap_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => Some(v.to_string()),
        };
        (self.kind, swap)
    }
}

/// Counters for `/metrics`. See the module docs for what each counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NotifyStats {
    pub sent: u64,
    pub dropped: u64,
    pub failed: u64,
    pub rate_limited: u64,
}

/// Tunables; the defaults are what the daemon uses, tests shorten them.
#[derive(Debug, Clone)]
pub struct NotifierOptions {
    /// Notes waiting for the thread; beyond that `send` drops.
    pub queue_capacity: usize,
    /// Per try.
    pub timeout: Duration,
    /// Tries per delivery, the first included (at least 1).
    pub tries: u32,
    /// Wait before the second try; doubled before each further one.
    pub first_backoff: Duration,
    /// At most one note per key per this long; zero disables the limit.
    pub rate_limit: Duration,
    /// Deliveries waiting for a retry; beyond that they fail at once.
    pub max_retrying: usize,
    /// Flush time when the `Notifier` is dropped or every sender is gone.
    pub flush_grace: Duration,
}

impl Default for NotifierOptions {
    fn default() -> Self {
        NotifierOptions {
            queue_capacity: 256,
            timeout: Duration::from_secs(5),
            tries: 3,
            first_backoff: Duration::from_secs(1),
            rate_limit: Duration::from_secs(30),
            max_retrying: 256,
            flush_grace: Duration::from_secs(5),
        }
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    rate_limited: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What the handles and the thread share.
struct Shared {
    config: Mutex<Arc<NotifyConfig>>,
    min_level: AtomicU8,
    has_targets: AtomicBool,
    counters: Counters,
    rate_limit: Duration,
    /// Last accepted note per rate key.
    recent: Mutex<HashMap<(Kind, Option<String>), Instant>>,
    /// The fleet's event stream: every note is on it (`notification`).
    feed: Mutex<Option<crate::daemon::event_stream::Events>>,
}

impl Shared {
    fn new(config: &NotifyConfig, rate_limit: Duration) -> Shared {
        let shared = Shared {
            config: Mutex::new(Arc::new(config.clone())),
            min_level: AtomicU8::new(level_to_u8(config.min_level)),
            has_targets: AtomicBool::new(false),
            counters: Counters::default(),
            rate_limit,
            recent: Mutex::new(HashMap::new()),
            feed: Mutex::new(None),
        };
        shared.set_config(config.clone());
        shared
    }

    fn set_config(&self, config: NotifyConfig) {
        self.min_level
            .store(level_to_u8(config.min_level), Ordering::Relaxed);
        self.has_targets.store(
            config.telegram.is_some() || config.webhook_url.is_some(),
            Ordering::Relaxed,
        );
        *self.config.lock() = Arc::new(config);
    }

    fn config(&self) -> Arc<NotifyConfig> {
        self.config.lock().clone()
    }
}

/// The sending side: cheap to clone, `send` never blocks.
#[derive(Clone)]
pub struct NotifyHandle {
    sender: Sender<Note>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NotifyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl NotifyHandle {
    /// A handle with no thread and no target: notes are only logged.
    /// For roles started without a notifier (tests, one-shot commands).
    pub fn log_only() -> NotifyHandle {
        let (sender, _) = crossbeam_channel::bounded(1);
        let config = NotifyConfig {
            telegram: None,
            webhook_url: None,
            min_level: Level::Info,
        };
        NotifyHandle {
            sender,
            shared: Arc::new(Shared::new(&config, Duration::ZERO)),
        }
    }

    /// Every note from now on is also an event on `feed`.
    pub fn set_feed(&self, feed: crate::daemon::event_stream::Events) {
        *self.shared.feed.lock() = Some(feed);
    }

    /// Hands the note over; never blocks. See the module docs for what may
    /// happen to it instead.
    pub fn send(&self, note: Note) {
        let shared = &*self.shared;
        if level_to_u8(note.level) < shared.min_level.load(Ordering::Relaxed) {
            return;
        }
        log::log!(
            log_level(note.level),
            "notify {}: {} {}",
            note.kind,
            note.text,
            note.fields
        );
        if let Some(feed) = shared.feed.lock().as_ref() {
            feed.publish(
                crate::daemon::event_stream::Kind::Notification,
                serde_json::json!({
                    "kind": note.kind.to_string(),
                    "level": format!("{:?}", note.level).to_lowercase(),
                    "text": note.text,
                }),
            );
        }
        if !shared.has_targets.load(Ordering::Relaxed) {
            return;
        }
        let window = shared.rate_limit;
        if window.is_zero() {
            self.enqueue(note);
            return;
        }
        let key = note.rate_key();
        let now = Instant::now();
        let mut recent = shared.recent.lock();
        if recent
            .get(&key)
            .is_some_and(|t| now.saturating_duration_since(*t) < window)
        {
            Counters::add(&shared.counters.rate_limited, 1);
            log::debug!("notify {}: rate-limited", note.kind);
            return;
        }
        if self.enqueue(note) {
            if recent.len() >= 1024 {
                recent.retain(|_, t| now.saturating_duration_since(*t) < window);
            }
            recent.insert(key, now);
        }
    }

    fn enqueue(&self, note: Note) -> bool {
        match self.sender.try_send(note) {
            Ok(()) => true,
            Err(TrySendError::Full(note)) => {
                Counters::add(&self.shared.counters.dropped, 1);
                log::debug!("notify {}: queue full, dropped", note.kind);
                false
            }
            Err(TrySendError::Disconnected(note)) => {
                Counters::add(&self.shared.counters.dropped, 1);
                log::debug!("notify {}: notifier stopped, dropped", note.kind);
                false
            }
        }
    }

    pub fn stats(&self) -> NotifyStats {
        let c = &self.shared.counters;
        NotifyStats {
            sent: c.sent.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
        }
    }

    /// New targets and level (SIGHUP). Notes already queued go to the new
    /// targets; retries to a target that is gone are forgotten.
    pub fn reconfigure(&self, config: NotifyConfig) {
        self.shared.set_config(config);
    }
}

/// The notifier role: its thread and a handle.
pub struct Notifier {
    handle: NotifyHandle,
    thread: Option<JoinHandle<()>>,
    /// Tells the thread to flush for this long (`None`: `flush_grace`) and
    /// stop.
    stop: Sender<Option<Duration>>,
    /// Disconnected when the thread has ended.
    done: Receiver<()>,
}

impl Notifier {
    pub fn start(config: &NotifyConfig) -> Notifier {
        Notifier::start_with(config, NotifierOptions::default())
    }

    pub fn start_with(config: &NotifyConfig, options: NotifierOptions) -> Notifier {
        let shared = Arc::new(Shared::new(config, options.rate_limit));
        let (sender, notes) = crossbeam_channel::bounded(options.queue_capacity.max(1));
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        let worker = Worker {
            notes,
            stop: stop_rx,
            shared: shared.clone(),
            agent: ureq::AgentBuilder::new().build(),
            retrying: Vec::new(),
            last_warned: HashMap::new(),
            options,
        };
        let thread = std::thread::Builder::new()
            .name("notifier".into())
            .spawn(move || {
                let _done = done_tx;
                worker.run();
            })
            .expect("spawn the notifier thread");
        Notifier {
            handle: NotifyHandle { sender, shared },
            thread: Some(thread),
            stop,
            done,
        }
    }

    pub fn handle(&self) -> NotifyHandle {
        self.handle.clone()
    }

    pub fn stats(&self) -> NotifyStats {
        self.handle.stats()
    }

    /// The stop sender and the thread, for a caller that stops its roles
    /// one way (the daemon): dropping the sender tells the thread to flush
    /// for `flush_grace` and stop; the thread then ends on its own.
    pub fn into_parts(mut self) -> (Sender<Option<Duration>>, JoinHandle<()>) {
        let thread = self
            .thread
            .take()
            .expect("a started notifier has its thread");
        (self.stop.clone(), thread)
    }

    /// Lets the thread flush for at most `grace`, then joins it. Returns
    /// false when the thread had not ended by then (it is left to finish
    /// on its own, which it does within a try's timeout).
    pub fn shutdown(mut self, grace: Duration) -> bool {
        let _ = self.stop.try_send(Some(grace));
        let ended = matches!(
            self.done
                .recv_timeout(grace.saturating_add(Duration::from_millis(250))),
            Err(RecvTimeoutError::Disconnected)
        );
        if ended {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
        ended
    }
}

impl Drop for Notifier {
    /// Tells the thread to flush for `flush_grace` and stop; does not wait.
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop.try_send(None);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    Telegram,
    Webhook,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Telegram => "telegram",
            Target::Webhook => "webhook",
        }
    }
}

/// One note to one target.
struct Delivery {
    note: Arc<Note>,
    target: Target,
    /// Tries made so far.
    tries: u32,
    /// When the next try is due.
    due: Instant,
}

enum Outcome {
    Sent,
    /// The target is no longer configured.
    Gone,
    Retry(String),
    Permanent(String),
}

struct Worker {
    notes: Receiver<Note>,
    stop: Receiver<Option<Duration>>,
    shared: Arc<Shared>,
    agent: ureq::Agent,
    retrying: Vec<Delivery>,
    last_warned: HashMap<Target, Instant>,
    options: NotifierOptions,
}

impl Worker {
    fn run(mut self) {
        let notes = self.notes.clone();
        let stop = self.stop.clone();
        let grace = loop {
            self.retry_due(None);
            let tick = match self.next_due() {
                Some(due) => after(due.saturating_duration_since(Instant::now())),
                None => never(),
            };
            select! {
                recv(notes) -> note => match note {
                    Ok(note) => self.deliver_new(note, None),
                    Err(_) => break self.options.flush_grace,
                },
                recv(stop) -> grace => break match grace {
                    Ok(Some(g)) => g,
                    _ => self.options.flush_grace,
                },
                recv(tick) -> _ => {}
            }
        };
        let now = Instant::now();
        let deadline = now
            .checked_add(grace)
            .unwrap_or(now + Duration::from_secs(3600));
        self.flush(deadline);
    }

    fn next_due(&self) -> Option<Instant> {
        self.retrying.iter().map(|d| d.due).min()
    }

    /// Delivers what is queued and due until the queue and the retry list
    /// are empty, or `deadline`.
    fn flush(&mut self, deadline: Instant) {
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if let Ok(note) = self.notes.try_recv() {
                self.deliver_new(note, Some(deadline));
                continue;
            }
            self.retry_due(Some(deadline));
            match self.next_due() {
                None => break,
                Some(due) if due >= deadline => break,
                Some(due) => match self.notes.recv_deadline(due) {
                    Ok(note) => self.deliver_new(note, Some(deadline)),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(due.saturating_duration_since(Instant::now()))
                    }
                },
            }
        }
        let mut dropped = 0;
        while self.notes.try_recv().is_ok() {
            dropped += 1;
        }
        let failed = self.retrying.len() as u64;
        Counters::add(&self.shared.counters.dropped, dropped);
        Counters::add(&self.shared.counters.failed, failed);
        if dropped + failed > 0 {
            log::warn!(
                "notifier stopping: {dropped} notes not sent, {failed} deliveries not retried"
            );
        }
    }

    fn deliver_new(&mut self, note: Note, deadline: Option<Instant>) {
        let config = self.shared.config();
        let note = Arc::new(note);
        let mut targets = Vec::with_capacity(2);
        if config.telegram.is_some() {
            targets.push(Target::Telegram);
        }
        if config.webhook_url.is_some() {
            targets.push(Target::Webhook);
        }
        for target in targets {
            let delivery = Delivery {
                note: note.clone(),
                target,
                tries: 0,
                due: Instant::now(),
            };
            self.attempt(delivery, deadline);
        }
    }

    fn retry_due(&mut self, deadline: Option<Instant>) {
        let now = Instant::now();
        if !self.retrying.iter().any(|d| d.due <= now) {
            return;
        }
        let (mut due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retrying)
            .into_iter()
            .partition(|d| d.due <= now);
        self.retrying = rest;
        due.sort_by_key(|d| d.due);
        for delivery in due {
            self.attempt(delivery, deadline);
        }
    }

    fn attempt(&mut self, mut delivery: Delivery, deadline: Option<Instant>) {
        let mut timeout = self.options.timeout;
        if let Some(deadline) = deadline {
            timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
            if timeout < Duration::from_millis(10) {
                Counters::add(&self.shared.counters.failed, 1);
                return;
            }
        }
        delivery.tries += 1;
        let config = self.shared.config();
        let outcome = match delivery.target {
            Target::Telegram => match &config.telegram {
                Some(tg) => send_telegram(&self.agent, tg, &delivery.note, timeout),
                None => Outcome::Gone,
            },
            Target::Webhook => match &config.webhook_url {
                Some(url) => post(&self.agent, url, &delivery.note.to_json(), timeout, None),
                None => Outcome::Gone,
            },
        };
        let counters = &self.shared.counters;
        match outcome {
            Outcome::Sent => {
                Counters::add(&counters.sent, 1);
                log::debug!(
                    "notify {} sent to {}",
                    delivery.note.kind,
                    delivery.target.name()
                );
            }
            Outcome::Gone => {}
            Outcome::Permanent(why) => {
                Counters::add(&counters.failed, 1);
                self.warn(&delivery, &why);
            }
            Outcome::Retry(why) => {
                if delivery.tries >= self.options.tries.max(1) {
                    Counters::add(&counters.failed, 1);
                    self.warn(&delivery, &why);
                } else if self.retrying.len() >= self.options.max_retrying {
                    Counters::add(&counters.failed, 1);
                    self.warn(
                        &delivery,
                        &format!("{why} (too many deliveries waiting to retry)"),
                    );
                } else {
                    let backoff = self
                        .options
                        .first_backoff
                        .saturating_mul(1 << (delivery.tries - 1).min(16));
                    log::debug!(
                        "notify {} to {}: {why}; retrying in {backoff:?}",
                        delivery.note.kind,
                        delivery.target.name()
                    );
                    delivery.due = Instant::now() + backoff;
                    self.retrying.push(delivery);
                }
            }
        }
    }

    /// Logs a given-up delivery, at most once a minute per target (the rest
    /// at debug) so that a receiver that is down does not flood the log.
    fn warn(&mut self, delivery: &Delivery, why: &str) {
        let now = Instant::now();
        let quiet = self
            .last_warned
            .get(&delivery.target)
            .is_some_and(|t| now.saturating_duration_since(*t) < Duration::from_secs(60));
        let level = if quiet {
            log::Level::Debug
        } else {
            self.last_warned.insert(delivery.target, now);
            log::Level::Warn
        };
        log::log!(
            level,
            "notify {} to {} failed after {} tries: {why}",
            delivery.note.kind,
            delivery.target.name(),
            delivery.tries
        );
    }
}

fn send_telegram(
    agent: &ureq::Agent,
    tg: &TelegramConfig,
    note: &Note,
    timeout: Duration,
) -> Outcome {
    let token = match std::fs::read_to_string(&tg.bot_token_file) {
        Ok(s) => s.trim().to_string(),
        Err(e) => {
            return Outcome::Permanent(format!("cannot read {}: {e}", tg.bot_token_file.display()))
        }
    };
    if token.is_empty() {
        return Outcome::Permanent(format!("{} is empty", tg.bot_token_file.display()));
    }
    let url = format!("{}/bot{}/sendMessage", tg.api_base, token);
    let body = json!({ "chat_id": tg.chat_id, "text": note.telegram_text() });
    post(agent, &url, &body, timeout, Some(&token))
}

/// One JSON POST. Errors never contain the URL, and `secret` is blanked
/// out of them in case a message quotes it.
fn post(
    agent: &ureq::Agent,
    url: &str,
    body: &Value,
    timeout: Duration,
    secret: Option<&str>,
) -> Outcome {
    match agent.post(url).timeout(timeout).send_json(body) {
        Ok(response) => {
            // Read the answer so the connection can be reused.
            let _ = response.into_string();
            Outcome::Sent
        }
        Err(ureq::Error::Status(code, _)) if code == 408 || code == 429 || code >= 500 => {
            Outcome::Retry(format!("HTTP {code}"))
        }
        Err(ureq::Error::Status(code, _)) => Outcome::Permanent(format!("HTTP {code}")),
        Err(ureq::Error::Transport(t)) => Outcome::Retry(redact(&transport_text(&t), secret)),
    }
}

/// Like the transport error's `Display`, minus its URL.
fn transport_text(t: &ureq::Transport) -> String {
    let mut s = t.kind().to_string();
    if let Some(m) = t.message() {
        s.push_str(": ");
        s.push_str(m);
    }
    if let Some(source) = std::error::Error::source(t) {
        s.push_str(": ");
        s.push_str(&source.to_string());
    }
    s
}

fn redact(s: &str, secret: Option<&str>) -> String {
    match secret {
        Some(secret) if !secret.is_empty() => s.replace(secret, "<token>"),
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_levels() {
        assert_eq!(Kind::SwapStarted.default_level(), Level::Info);
        assert_eq!(Kind::SwapDone.default_level(), Level::Info);
        assert_eq!(Kind::SwapRolledBack.default_level(), Level::Warn);
        assert_eq!(Kind::TaskFailed.default_level(), Level::Warn);
        for k in [
            Kind::SwapFailed,
            Kind::SwapPartial,
            Kind::NoAccount,
            Kind::NeedsLogin,
            Kind::SessionFailedToStart,
            Kind::ReloadRefused,
            Kind::SharedFoldersDiverged,
        ] {
            assert_eq!(k.default_level(), Level::Error, "{k}");
        }
    }

    #[test]
    fn names_match_serde() {
        for k in Kind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), Value::from(k.as_str()));
            let back: Kind = serde_json::from_value(Value::from(k.as_str())).unwrap();
            assert_eq!(back, k);
        }
    }

    #[test]
    fn webhook_body() {
        let mut note = Note::new(Kind::SwapDone, "swapped to b", json!({"swap_id": "7"}));
        note.at = std::time::UNIX_EPOCH + Duration::from_secs(86_400);
        assert_eq!(
            note.to_json(),
            json!({
                "kind": "swap_done",
                "level": "info",
                "text": "swapped to b",
                "fields": {"swap_id": "7"},
                "at": "1970-01-02T00:00:00Z",
            })
        );
    }

    #[test]
    fn rate_key_uses_swap_id() {
        let a = Note::new(Kind::SwapDone, "", json!({"swap_id": "a"}));
        let n = Note::new(Kind::SwapDone, "", json!({"swap_id": 3}));
        let none = Note::new(Kind::TaskFailed, "", json!({}));
        let null = Note::new(Kind::TaskFailed, "", Value::Null);
        assert_eq!(a.rate_key(), (Kind::SwapDone, Some("a".into())));
        assert_eq!(n.rate_key(), (Kind::SwapDone, Some("3".into())));
        assert_eq!(none.rate_key(), (Kind::TaskFailed, None));
        assert_eq!(null.rate_key(), (Kind::TaskFailed, None));
    }

    #[test]
    fn telegram_text_is_cut() {
        let note = Note::new(Kind::TaskFailed, "x".repeat(5000), Value::Null);
        let t = note.telegram_text();
        assert!(t.starts_with("[warn] xxx"));
        assert_eq!(t.chars().count(), 4096);
        assert!(t.ends_with('…'));
    }

    #[test]
    fn redacts_secret() {
        assert_eq!(
            redact("bad /botSECRET/x", Some("SECRET")),
            "bad /bot<token>/x"
        );
        assert_eq!(redact("bad", None), "bad");
    }

    #[test]
    fn log_only_handle_never_fails() {
        let h = NotifyHandle::log_only();
        h.send(Note::new(Kind::NoAccount, "no account left", json!({})));
        assert_eq!(h.stats(), NotifyStats::default());
    }

    #[test]
    fn transport_errors_leave_the_url_out() {
        let agent = ureq::AgentBuilder::new().build();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/botSECRET/sendMessage");
        match post(
            &agent,
            &url,
            &json!({}),
            Duration::from_secs(2),
            Some("SECRET"),
        ) {
            Outcome::Retry(why) => {
                assert!(!why.contains("SECRET") && !why.contains("/bot"), "{why}")
            }
            _ => panic!("expected a retryable transport error"),
        }
    }
}
