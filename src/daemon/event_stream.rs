//! The fleet's event stream (`GET /events`, `claude-failover events`): one
//! event per change (a session's state, a task claimed, done or failed, a
//! quota reading, a swap's start, phases and end, a notification, a config
//! reload), each with an id, kept in a bounded backlog so a client that
//! reconnects with `Last-Event-ID` gets exactly what it missed.
//!
//! Two halves:
//! - [`Events`], the handle every role publishes through: a mutex held for a
//!   push, never blocking, never waiting on a client.
//! - the `event-stream` thread, which owns every connected client. A client
//!   is written without blocking from its own bounded buffer; one that reads
//!   too slowly (its buffer over [`CLIENT_BUFFER`]) or not at all is
//!   dropped and counted (`claude_failover_event_clients_dropped_total`),
//!   so no client can hold up the daemon or grow its memory. A comment ping
//!   every [`PING_EVERY`] keeps idle connections (and proxies) alive and
//!   finds dead ones.
//!
//! Nothing credential-bearing is ever published: events carry what
//! `/status` shows.

use std::collections::VecDeque;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;

/// Events kept for replay.
pub const BACKLOG: usize = 1000;
/// Unsent bytes a client may have before it is dropped.
pub const CLIENT_BUFFER: usize = 256 * 1024;
/// Clients connected at once; one more is answered 503.
pub const MAX_CLIENTS: usize = 64;
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// A client that took nothing of what waits for it this long is dropped
/// (a reader that stopped, a peer that vanished): it cannot hold a slot.
pub const STALLED_AFTER: Duration = Duration::from_secs(30);
/// A `once` client (the replay, then close) gets this long in all.
pub const ONCE_WITHIN: Duration = Duration::from_secs(30);
/// What a browser waits before reconnecting (the stream's `retry:`).
const RETRY_MS: u64 = 2000;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Session,
    TaskClaimed,
    TaskDone,
    TaskFailed,
    /// A project's queue counts changed (inbox, active, done, failed).
    Queue,
    Quota,
    SwapStarted,
    SwapPhase,
    SwapEnded,
    Notification,
    ConfigReloaded,
    /// A swap on another machine of the fleet (`fleet.redis`).
    Fleet,
    /// The fleet's live machines changed (one joined, moved, lapsed or left).
    FleetMachines,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Session => "session",
            Kind::TaskClaimed => "task_claimed",
            Kind::TaskDone => "task_done",
            Kind::TaskFailed => "task_failed",
            Kind::Queue => "queue",
            Kind::Quota => "quota",
            Kind::SwapStarted => "swap_started",
            Kind::SwapPhase => "swap_phase",
            Kind::SwapEnded => "swap_ended",
            Kind::Notification => "notification",
            Kind::ConfigReloaded => "config_reloaded",
            Kind::Fleet => "fleet",
            Kind::FleetMachines => "fleet_machines",
        }
    }
}

/// One event as clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: u64,
    pub kind: Kind,
    /// Unix milliseconds.
    pub at_ms: u64,
    pub data: Value,
}

impl Event {
    /// Its text on the stream: `id`, `event`, one `data` line (JSON has no
    /// raw newline), a blank line.
    pub fn to_sse(&self) -> String {
        let data = serde_json::json!({"id": self.id, "kind": self.kind, "at_ms": self.at_ms, "data": self.data});
        format!(
            "id: {}\nevent: {}\ndata: {}\n\n",
            self.id,
            self.kind.as_str(),
            data
        )
    }
}

struct Shared {
    backlog: Mutex<VecDeque<Arc<Event>>>,
    next_id: AtomicU64,
    /// The id before this run's first: any id below it is another run's.
    base: u64,
    /// The stream thread's wake-up (one pending is enough).
    wake: Sender<()>,
    wake_rx: Receiver<()>,
    pub clients: AtomicUsize,
    pub dropped: AtomicU64,
}

/// The publishing handle, cloned into every role.
#[derive(Clone)]
pub struct Events {
    shared: Arc<Shared>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Events {
    pub fn new() -> Events {
        let (wake, wake_rx) = bounded(1);
        // In microseconds: a restart a second later starts well above any
        // id of the run before.
        let base = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        Events {
            shared: Arc::new(Shared {
                backlog: Mutex::new(VecDeque::with_capacity(BACKLOG)),
                // Ids start at the time of the start, in ms: a client that
                // reconnects to a restarted daemon with an old id gets the
                // whole backlog instead of nothing.
                next_id: AtomicU64::new(base),
                base,
                wake,
                wake_rx,
                clients: AtomicUsize::new(0),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Records one event and wakes the stream. Never blocks on a client.
    pub fn publish(&self, kind: Kind, data: Value) {
        let at_ms = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        {
            let mut b = self.shared.backlog.lock();
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed) + 1;
            if b.len() == BACKLOG {
                b.pop_front();
            }
            b.push_back(Arc::new(Event {
                id,
                kind,
                at_ms,
                data,
            }));
        }
        let _ = self.shared.wake.try_send(());
    }

    /// The events after `id` still in the backlog (all of them for `None`
    /// or an id the backlog does not know).
    pub fn after(&self, id: Option<u64>) -> Vec<Arc<Event>> {
        self.replay(id).events
    }

    /// What a client that last saw `last_id` gets: the events after it, or
    /// every event kept when its id is not this run's or older than the
    /// backlog (`lost`: it missed events that are gone); and the newest id
    /// issued, where it goes on from.
    pub fn replay(&self, last_id: Option<u64>) -> Replay {
        let b = self.shared.backlog.lock();
        let newest = self.shared.next_id.load(Ordering::Relaxed);
        let all = || b.iter().cloned().collect::<Vec<_>>();
        let (events, lost) = match last_id {
            None => (all(), false),
            Some(id) if id == newest => (Vec::new(), false),
            // Not an id of this run (one from before a restart, or made up).
            Some(id) if id > newest || id < self.shared.base => (all(), true),
            Some(id) if b.front().is_some_and(|f| id.saturating_add(1) < f.id) => (all(), true),
            Some(id) => (b.iter().filter(|e| e.id > id).cloned().collect(), false),
        };
        Replay {
            events,
            lost,
            newest,
        }
    }

    /// The newest `n` events of `kinds` (all kinds for an empty slice), oldest first.
    pub fn recent(&self, kinds: &[Kind], n: usize) -> Vec<Arc<Event>> {
        let b = self.shared.backlog.lock();
        let mut out: Vec<Arc<Event>> = b
            .iter()
            .rev()
            .filter(|e| kinds.is_empty() || kinds.contains(&e.kind))
            .take(n)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// The oldest id still kept.
    pub fn oldest(&self) -> Option<u64> {
        self.shared.backlog.lock().front().map(|e| e.id)
    }

    pub fn clients(&self) -> usize {
        self.shared.clients.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// See [`Events::replay`].
pub struct Replay {
    pub events: Vec<Arc<Event>>,
    pub lost: bool,
    pub newest: u64,
}

/// A connection handed over by an HTTP worker, its response head not yet written.
pub struct NewClient {
    pub stream: TcpStream,
    /// `Last-Event-ID`: replay what came after it.
    pub last_id: Option<u64>,
    /// Replay the backlog's events from this time on (Unix ms).
    pub since_ms: Option<u64>,
    /// The replay only, then close (`claude-failover events` without `--follow`).
    pub once: bool,
}

/// The `event-stream` thread and its door.
pub struct Stream {
    pub clients: Sender<NewClient>,
    pub thread: JoinHandle<()>,
}

struct Client {
    stream: TcpStream,
    /// The last event id queued for it.
    cursor: u64,
    pending: Vec<u8>,
    last_write: Instant,
    /// When it last took bytes, or had none waiting: a client with bytes
    /// waiting and no progress for [`STALLED_AFTER`] is dropped.
    progress: Instant,
    opened: Instant,
    /// Close once `pending` is written.
    once: bool,
    /// Unsent bytes it may have: [`CLIENT_BUFFER`], plus its replay until
    /// that is written.
    allowance: usize,
}

impl Client {
    /// Writes what it can without blocking. `false`: gone, or too slow.
    fn flush(&mut self) -> bool {
        while !self.pending.is_empty() {
            match (&self.stream).write(&self.pending) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending.drain(..n);
                    self.last_write = Instant::now();
                    self.progress = self.last_write;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if self.pending.is_empty() {
            self.progress = Instant::now();
        }
        if self.pending.len() <= CLIENT_BUFFER {
            self.allowance = CLIENT_BUFFER;
        }
        self.pending.len() <= self.allowance
    }
}

/// Starts the thread; it ends when `stop` is dropped or sent to.
pub fn start(events: Events, stop: Receiver<()>) -> std::io::Result<Stream> {
    let (tx, rx) = bounded::<NewClient>(16);
    let thread = std::thread::Builder::new()
        .name("event-stream".into())
        .spawn(move || run(events, rx, stop))?;
    Ok(Stream {
        clients: tx,
        thread,
    })
}

fn run(events: Events, new: Receiver<NewClient>, stop: Receiver<()>) {
    let mut clients: Vec<Client> = Vec::new();
    let wake = events.shared.wake_rx.clone();
    let tick = crossbeam_channel::tick(Duration::from_millis(500));
    loop {
        select! {
            recv(stop) -> _ => break,
            recv(new) -> c => match c {
                Ok(c) => {
                    if let Some(client) = open(&events, c, clients.len()) {
                        clients.push(client);
                    }
                }
                Err(_) => break,
            },
            recv(wake) -> _ => {}
            recv(tick) -> _ => {}
        }
        let now = Instant::now();
        clients.retain_mut(|c| {
            if c.once {
                let keep = c.flush()
                    && !c.pending.is_empty()
                    && now.duration_since(c.opened) < ONCE_WITHIN;
                if !keep {
                    let _ = c.stream.shutdown(std::net::Shutdown::Both);
                }
                return keep;
            }
            if !c.pending.is_empty() && now.duration_since(c.progress) >= STALLED_AFTER {
                events.shared.dropped.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "events: dropped a client that took nothing for {}s ({} bytes unsent)",
                    STALLED_AFTER.as_secs(),
                    c.pending.len()
                );
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
                return false;
            }
            if events
                .oldest()
                .is_some_and(|o| o > c.cursor.saturating_add(1))
            {
                // It fell behind the backlog: events it never got are gone.
                // Closed (and counted), it reconnects and reads /status afresh.
                events.shared.dropped.fetch_add(1, Ordering::Relaxed);
                log::warn!("events: dropped a client that fell behind the backlog");
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
                return false;
            }
            for e in events.after(Some(c.cursor)) {
                c.pending.extend_from_slice(e.to_sse().as_bytes());
                c.cursor = e.id;
            }
            if c.pending.is_empty() && now.duration_since(c.last_write) >= PING_EVERY {
                c.pending.extend_from_slice(b": ping\n\n");
            }
            let keep = c.flush();
            if !keep {
                if c.pending.len() > c.allowance {
                    events.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "events: dropped a client that does not read ({} bytes unsent)",
                        c.pending.len()
                    );
                }
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
            }
            keep
        });
        events
            .shared
            .clients
            .store(clients.len(), Ordering::Relaxed);
    }
    events.shared.clients.store(0, Ordering::Relaxed);
}

/// The kernel's send buffer for a client, bounded too (it would grow to
/// megabytes for a client that does not read).
fn limit_send_buffer(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 64 * 1024;
    // SAFETY: a valid socket descriptor and a c_int option value of its size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Writes the response head and the replay; `None` when refused or gone.
fn open(events: &Events, c: NewClient, connected: usize) -> Option<Client> {
    let NewClient {
        stream,
        last_id,
        since_ms,
        once,
    } = c;
    if connected >= MAX_CLIENTS {
        let body = r#"{"error":"too many event clients"}"#;
        let _ = (&stream).write_all(
            format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        return None;
    }
    stream.set_nonblocking(true).ok()?;
    limit_send_buffer(&stream);
    let now = Instant::now();
    let mut client = Client {
        stream,
        cursor: 0,
        pending: format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\nX-Accel-Buffering: no\r\n\r\nretry: {RETRY_MS}\n\n"
        )
        .into_bytes(),
        last_write: now,
        progress: now,
        opened: now,
        once,
        allowance: CLIENT_BUFFER,
    };
    let replay = events.replay(last_id);
    // It goes on from the newest id issued, whatever it is replayed: a
    // fresh client nothing, one that says where it was what came after,
    // one that says since when what the backlog holds from then.
    client.cursor = replay.newest;
    match (last_id, since_ms) {
        (Some(_), _) => {
            if replay.lost {
                // Some of what it missed is gone: it should read /status again.
                let reset = serde_json::json!({
                    "id": replay.newest,
                    "kind": "reset",
                    "at_ms": SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64,
                    "data": {"reason": "events were missed (a restart, or more than the backlog keeps); read /status again"},
                });
                client
                    .pending
                    .extend_from_slice(format!("event: reset\ndata: {reset}\n\n").as_bytes());
            }
            for e in &replay.events {
                client.pending.extend_from_slice(e.to_sse().as_bytes());
            }
        }
        (None, Some(since)) => {
            for e in replay.events.iter().filter(|e| e.at_ms >= since) {
                client.pending.extend_from_slice(e.to_sse().as_bytes());
            }
        }
        (None, None) => {}
    }
    client.allowance = client.pending.len() + CLIENT_BUFFER;
    client.flush().then_some(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn after_an_id_gives_exactly_the_later_events_and_an_unknown_one_everything() {
        let ev = Events::new();
        for k in 0..5 {
            ev.publish(Kind::Session, json!({"k": k}));
        }
        let all = ev.after(None);
        assert_eq!(all.len(), 5);
        let mid = all[1].id;
        let later: Vec<u64> = ev.after(Some(mid)).iter().map(|e| e.id).collect();
        assert_eq!(later, vec![all[2].id, all[3].id, all[4].id]);
        assert!(ev.after(Some(all[4].id)).is_empty());
        // An id from before the backlog (another run): everything kept.
        assert_eq!(ev.after(Some(1)).len(), 5);
        assert!(ev.replay(Some(1)).lost);
    }

    #[test]
    fn a_replay_says_when_events_were_lost_and_where_to_go_on_from() {
        let ev = Events::new();
        let empty = ev.replay(Some(5));
        assert!(
            empty.events.is_empty() && empty.lost,
            "an id from another run"
        );
        for k in 0..BACKLOG + 5 {
            ev.publish(Kind::Session, json!({"k": k}));
        }
        let all = ev.after(None);
        let newest = all.last().unwrap().id;
        // Up to date: nothing, nothing lost.
        let r = ev.replay(Some(newest));
        assert!(r.events.is_empty() && !r.lost && r.newest == newest);
        // Newer than anything issued (a restart's ids, a clock step): unknown.
        let r = ev.replay(Some(newest + 10));
        assert!(r.lost && r.events.len() == BACKLOG);
        assert!(ev.replay(Some(u64::MAX)).lost, "no overflow");
        // Older than the backlog: everything kept, and it says so.
        let r = ev.replay(Some(all[0].id - 3));
        assert!(r.lost && r.events.len() == BACKLOG);
        // Just before the oldest kept: nothing was lost.
        let r = ev.replay(Some(all[0].id - 1));
        assert!(!r.lost && r.events.len() == BACKLOG);
    }

    #[test]
    fn the_backlog_is_bounded_and_ids_keep_rising() {
        let ev = Events::new();
        for k in 0..BACKLOG + 10 {
            ev.publish(Kind::Quota, json!({"k": k}));
        }
        let all = ev.after(None);
        assert_eq!(all.len(), BACKLOG);
        assert!(all.windows(2).all(|w| w[1].id == w[0].id + 1));
        assert_eq!(all[0].data["k"], 10);
        let recent = ev.recent(&[Kind::Quota], 3);
        assert_eq!(recent.len(), 3);
        assert_eq!(recent[2].data["k"], BACKLOG + 9);
        assert!(ev.recent(&[Kind::SwapEnded], 3).is_empty());
    }

    #[test]
    fn an_event_is_one_sse_record_with_its_id_and_kind() {
        let ev = Events::new();
        ev.publish(
            Kind::SwapPhase,
            json!({"phase": "seat", "text": "two\nlines"}),
        );
        let e = &ev.after(None)[0];
        let sse = e.to_sse();
        let lines: Vec<&str> = sse.lines().collect();
        assert_eq!(lines[0], format!("id: {}", e.id));
        assert_eq!(lines[1], "event: swap_phase");
        assert!(lines[2].starts_with("data: {"));
        let v: Value = serde_json::from_str(&lines[2]["data: ".len()..]).unwrap();
        assert_eq!(v["data"]["text"], "two\nlines");
        assert_eq!(v["kind"], "swap_phase");
        assert_eq!(lines[3], "");
        assert_eq!(lines.len(), 4);
    }

    /// A client that never reads is dropped (and counted) once its buffer
    /// is full, while one that reads gets every event in order; publishing
    /// never waits for either. Real sockets on loopback.
    fn until(cond: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(20);
        while !cond() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_client_that_never_reads_is_dropped_and_a_reader_gets_everything() {
        use std::io::{BufRead, BufReader};
        use std::net::TcpListener;
        let events = Events::new();
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let stream = start(events.clone(), stop_rx).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hand_over = |last_id| {
            let (server, _) = listener.accept().unwrap();
            stream
                .clients
                .send(NewClient {
                    stream: server,
                    last_id,
                    since_ms: None,
                    once: false,
                })
                .unwrap();
        };
        let sleeper = TcpStream::connect(addr).unwrap();
        hand_over(None);
        let reader_sock = TcpStream::connect(addr).unwrap();
        hand_over(None);
        until(|| events.clients() == 2);
        let total = 4000u64;
        let reader = std::thread::spawn(move || {
            let mut ids = Vec::new();
            for line in BufReader::new(reader_sock).lines() {
                let Ok(line) = line else { break };
                if let Some(id) = line.strip_prefix("id: ") {
                    ids.push(id.parse::<u64>().unwrap());
                    if ids.len() as u64 == total {
                        break;
                    }
                }
            }
            ids
        });
        let filler = "x".repeat(600);
        for k in 0..total {
            events.publish(Kind::Quota, serde_json::json!({"k": k, "pad": filler}));
            if k % 100 == 0 {
                // Bursts a reader keeps up with (a client gets its buffer's
                // worth, not the backlog's, at once).
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let ids = reader.join().unwrap();
        assert_eq!(ids.len() as u64, total);
        assert!(
            ids.windows(2).all(|w| w[1] == w[0] + 1),
            "in order, none missed"
        );
        until(|| events.dropped() == 1);
        assert_eq!(
            events.dropped(),
            1,
            "the client that never reads was dropped"
        );
        assert_eq!(events.clients(), 1);
        drop(sleeper);
        drop(stop_tx);
        stream.thread.join().unwrap();
    }
}
