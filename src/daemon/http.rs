//! The HTTP control plane on `http.listen`: a small blocking server of our
//! own on `std::net`, and the handlers, which answer from the latest
//! published status snapshot and never wait on a role thread.
//!
//! Why not tiny_http (which the API stand-in still uses): it keeps one
//! thread and two descriptors per connection with no read timeout, reads a
//! header line without a length cap, and ends its accept thread on the
//! first accept error (EMFILE); none of that can be configured. A few
//! hundred idle connections or one endless header line took the daemon down.
//!
//! The shape here, every resource bounded:
//! - one `http` thread polls (`poll(2)`) the listener and every connection
//!   whose request head is still arriving, reading without blocking into a
//!   capped buffer: request line ≤ [`Limits::max_line`], head ≤
//!   [`Limits::max_head`], body ≤ [`Limits::max_body`], the whole request
//!   within [`Limits::head_timeout`]. At most [`Limits::max_conns`]
//!   connections are held; a new one beyond that evicts the oldest, so idle
//!   connections can never lock a real client out. Accepts are deferred
//!   until a connection's first bytes arrive (`TCP_DEFER_ACCEPT`), so a
//!   client's one-segment request is answered at accept and a flood cannot
//!   evict it between its connect and its write. Accept errors (EMFILE…)
//!   are logged and backed off, never the end of the role; a listener that
//!   breaks is bound again.
//! - a fixed pool of worker threads answers complete requests (write
//!   timeout [`Limits::write_timeout`]); when every worker is busy and the
//!   queue is full, the request is answered 503 at once.
//! - every answer closes its connection (no keep-alive to hold).
//!
//! Who may ask what (docs/operations.md, "Security model"): every POST needs
//! the bearer token; on a non-loopback listen every request does. On a
//! loopback listen the `Host` header must name a loopback address or
//! `localhost` with the listening port (DNS rebinding), and a request with a
//! cross-origin `Origin` or `Sec-Fetch-Site` is refused on any listen (a web
//! page in a local browser).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::daemon::status::{self, Published};
use crate::daemon::switcher::{self, SharedView};
use crate::decide::swap_plan::{Refusal, SwapOutcome};

/// Commands the main loop answers (it owns sessions and the config).
#[derive(Debug)]
pub enum Report {
    /// As SIGHUP; the reply is the refusal, if any.
    Reload { reply: Sender<Result<(), String>> },
    /// Relaunch a managed session; the reply is `Err` for an unknown or unmanaged name.
    Restart {
        name: String,
        reply: Sender<Result<(), String>>,
    },
}

/// What the handlers may reach besides the snapshot.
#[derive(Clone)]
pub struct ControlPlane {
    pub switcher: Sender<switcher::Command>,
    pub view: SharedView,
    pub main: Sender<Report>,
    /// Every POST needs `Authorization: Bearer <token>`; on a non-loopback
    /// listen every request does.
    pub token: String,
    /// How long `POST /swap` waits for the swap to end.
    pub swap_wait: Duration,
    pub counters: Arc<crate::daemon::metrics::Counters>,
    pub notify: crate::daemon::notifier::NotifyHandle,
    /// The event stream (`GET /events`): its backlog, and the door of its thread.
    pub feed: crate::daemon::event_stream::Events,
    pub stream: Sender<crate::daemon::event_stream::NewClient>,
    /// For `GET /sessions/NAME/screen` (capture-pane: a read, bounded).
    pub tmux: crate::sys::tmux::Tmux,
    /// `/status.fleet`: the other machines as the fleet link last read them.
    pub fleet: crate::daemon::fleet::FleetHandle,
}

/// The server's bounds. [`Limits::default`] is what the daemon uses.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections held at once (request head still arriving, or queued for
    /// a worker). Also bounded by a quarter of `RLIMIT_NOFILE`.
    pub max_conns: usize,
    /// The request line and each header line.
    pub max_line: usize,
    /// The whole request head (request line and headers).
    pub max_head: usize,
    /// Header lines in one request.
    pub max_headers: usize,
    /// No endpoint takes a body: a small one is read and ignored.
    pub max_body: usize,
    /// The whole request (head and body) must arrive within this.
    pub head_timeout: Duration,
    /// Writing one answer.
    pub write_timeout: Duration,
    pub workers: usize,
    /// Complete requests waiting for a worker.
    pub queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_conns: 256,
            max_line: 8 * 1024,
            max_head: 64 * 1024,
            max_headers: 100,
            max_body: 1024,
            head_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            workers: 4,
            queue: 64,
        }
    }
}

/// What the server counted; read by tests and the log.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub accepted: AtomicU64,
    /// Held connections closed to make room for a new one.
    pub evicted: AtomicU64,
    /// Requests refused before any handler: too large, malformed, too slow.
    pub rejected: AtomicU64,
    pub accept_errors: AtomicU64,
    /// The listener was bound again after it broke.
    pub rebinds: AtomicU64,
    /// The current listening socket's descriptor (tests break it on purpose).
    pub listener_fd: std::sync::atomic::AtomicI32,
}

/// The running server. Relative order of fields is significant: `stop`
/// drops first, and its channel closing is the stop request (the poll loop
/// sees it within one slice and returns, dropping the job queue's sender, so
/// the workers return too); then `thread`, which joins the workers before it
/// ends, is joined.
pub struct Http {
    /// Nobody sends on it: dropping it stops the server.
    stop: Option<Sender<()>>,
    /// The poll loop's thread; it joins the workers when it returns.
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
    pub stats: Arc<ServerStats>,
}

/// How often the poll loop looks at the stop channel.
const POLL_SLICE: Duration = Duration::from_millis(200);
/// Longest pause after repeated accept errors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

impl Http {
    pub fn start(
        listen: SocketAddr,
        published: Published,
        wiring: ControlPlane,
    ) -> Result<Http, String> {
        Http::start_with(listen, published, wiring, Limits::default())
    }

    pub fn start_with(
        listen: SocketAddr,
        published: Published,
        wiring: ControlPlane,
        limits: Limits,
    ) -> Result<Http, String> {
        let listener = bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr().unwrap_or(listen);
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let stats = Arc::new(ServerStats::default());
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded::<Job>(limits.queue);
        let site = Arc::new(Site {
            addr,
            loopback: listen.ip().is_loopback(),
        });
        let mut workers = Vec::new();
        for i in 0..limits.workers.max(1) {
            let rx = jobs_rx.clone();
            let (published, wiring, site) = (published.clone(), wiring.clone(), site.clone());
            let write_timeout = limits.write_timeout;
            workers.push(
                std::thread::Builder::new()
                    .name(format!("http-worker-{i}"))
                    .spawn(move || work(&rx, &published, &wiring, &site, write_timeout))
                    .map_err(|e| e.to_string())?,
            );
        }
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                supervise(listener, addr, &limits, &jobs_tx, &stop_rx, &st);
                // The job queue's sender goes: the workers see it close and
                // return.
                drop(jobs_tx);
                for w in workers {
                    let _ = w.join();
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Http {
            stop: Some(stop),
            thread: Some(thread),
            addr,
            stats,
        })
    }

    /// The stop sender (dropping it stops the server) and the thread that
    /// ends once the server has stopped, for a caller that stops its roles
    /// one way (the daemon).
    pub fn into_parts(mut self) -> (Sender<()>, JoinHandle<()>) {
        let stop = self
            .stop
            .take()
            .expect("a running server has its stop sender");
        let thread = self.thread.take().expect("a running server has its thread");
        (stop, thread)
    }
}

impl Drop for Http {
    /// Stops the server and waits until its threads have ended.
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Pending connections the kernel queues before we accept them (std's
/// default is 128): a burst of connects beyond it drops SYNs, and a real
/// client caught in that waits a full second for its retransmit.
const BACKLOG: libc::c_int = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    // listen() again on a listening socket only changes its backlog
    // (capped by net.core.somaxconn).
    // SAFETY: the descriptor is valid for the listener's lifetime.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        log::warn!(
            "http: cannot raise the listen backlog: {}",
            std::io::Error::last_os_error()
        );
    }
    // The kernel hands a connection over only once its first bytes have
    // arrived (or about DEFER_ACCEPT_SECS passed, rounded up to SYN-ACK
    // retries): a real client, whose request is one segment, is read and
    // answered at accept even when it was descheduled between connect and
    // write. Held connections (a head that trickles in, or a silent one
    // after the deferral) can still be evicted by a flood.
    let secs: libc::c_int = DEFER_ACCEPT_SECS;
    // SAFETY: setsockopt on the listener's valid descriptor with a c_int
    // option value of the size given.
    if unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::addr_of!(secs).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } != 0
    {
        log::warn!(
            "http: cannot defer accepts until data arrives: {}",
            std::io::Error::last_os_error()
        );
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// How long the kernel keeps a connection that sent nothing before handing
/// it over anyway (it is then held, and closed at `head_timeout`).
const DEFER_ACCEPT_SECS: libc::c_int = 5;

/// The soft `RLIMIT_NOFILE`.
fn nofile_limit() -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    }
}

/// Where the server listens, for the Host and Origin checks.
struct Site {
    addr: SocketAddr,
    loopback: bool,
}

/// A complete request and its connection, for a worker.
struct Job {
    stream: TcpStream,
    request: Request,
}

/// Runs the accept/read loop; a panic or a broken listener is logged, backed
/// off and restarted (binding the same address again), never the end of
/// the role. Returns only at stop.
fn supervise(
    listener: TcpListener,
    addr: SocketAddr,
    limits: &Limits,
    jobs: &Sender<Job>,
    stop: &Receiver<()>,
    stats: &ServerStats,
) {
    let mut listener = Some(listener);
    let mut backoff = Duration::from_millis(100);
    while !stopped(stop) {
        let Some(l) = listener.take() else {
            match bind(addr) {
                Ok(l) => {
                    stats.rebinds.fetch_add(1, Ordering::Relaxed);
                    log::warn!("http: listening again on {addr}");
                    listener = Some(l);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    log::error!(
                        "http: cannot listen on {addr} again: {e}; retrying in {backoff:?}"
                    );
                    sleep_unless_stopped(backoff, stop);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            continue;
        };
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serve(&l, limits, jobs, stop, stats)
        }));
        match run {
            Ok(Ok(())) => return,
            Ok(Err(e)) => {
                log::error!("http: the listener on {addr} broke ({e}); binding it again");
                drop(l);
            }
            Err(_) => {
                log::error!("http: the listener loop panicked; restarting it in {backoff:?}");
                listener = Some(l);
                sleep_unless_stopped(backoff, stop);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The stop sender is gone.
fn stopped(stop: &Receiver<()>) -> bool {
    matches!(
        stop.try_recv(),
        Err(crossbeam_channel::TryRecvError::Disconnected)
    )
}

/// Sleeps `d`, or less when the stop sender goes meanwhile.
fn sleep_unless_stopped(d: Duration, stop: &Receiver<()>) {
    let _ = stop.recv_timeout(d);
}

/// A connection whose request is still arriving.
struct Held {
    stream: TcpStream,
    buf: Vec<u8>,
    since: Instant,
}

/// The poll loop. `Err` when the listener itself is broken.
fn serve(
    listener: &TcpListener,
    limits: &Limits,
    jobs: &Sender<Job>,
    stop: &Receiver<()>,
    stats: &ServerStats,
) -> std::io::Result<()> {
    stats
        .listener_fd
        .store(listener.as_raw_fd(), Ordering::SeqCst);
    // Oldest first: eviction takes the front.
    let mut held: std::collections::VecDeque<Held> = Default::default();
    // After an accept error the listener is left alone for this long
    // (growing up to MAX_ACCEPT_BACKOFF while errors repeat).
    let mut accept_pause: Option<Duration> = None;
    let mut next_pause = Duration::from_millis(10);
    let mut last_eviction_log: Option<Instant> = None;
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        if stopped(stop) {
            return Ok(());
        }
        let now = Instant::now();
        // Requests that took too long: 408, closed.
        while let Some(h) = held.front() {
            if now.duration_since(h.since) < limits.head_timeout {
                break;
            }
            let h = held.pop_front().expect("front exists");
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            refuse(h.stream, 408, "the request did not arrive in time");
        }
        let wait = held
            .front()
            .map(|h| {
                limits
                    .head_timeout
                    .saturating_sub(now.duration_since(h.since))
            })
            .unwrap_or(POLL_SLICE)
            .min(POLL_SLICE);
        fds.clear();
        fds.push(libc::pollfd {
            fd: listener.as_raw_fd(),
            events: if accept_pause.is_some() {
                0
            } else {
                libc::POLLIN
            },
            revents: 0,
        });
        for h in &held {
            fds.push(libc::pollfd {
                fd: h.stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout = match accept_pause {
            Some(b) => b.min(wait),
            None => wait,
        };
        // SAFETY: `fds` is a valid array of pollfd of the given length for
        // the duration of the call.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                timeout.as_millis().max(1) as libc::c_int,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // A listening socket reports POLLHUP only once it is shut down.
        if fds[0].revents & (libc::POLLERR | libc::POLLNVAL | libc::POLLHUP) != 0 {
            return Err(std::io::Error::other(
                "poll reports an error on the listener",
            ));
        }
        // Read what arrived, back to front so removals keep indexes valid.
        for i in (0..held.len()).rev() {
            if fds[i + 1].revents == 0 {
                continue;
            }
            match read_some(&mut held[i], limits) {
                Step::More => {}
                Step::Closed => {
                    held.remove(i);
                }
                Step::Refuse(code, why) => {
                    let h = held.remove(i).expect("index in range");
                    stats.rejected.fetch_add(1, Ordering::Relaxed);
                    log::debug!("http: refused a request with {code}: {why}");
                    refuse(h.stream, code, why);
                }
                Step::Ready(request) => {
                    let h = held.remove(i).expect("index in range");
                    dispatch(h.stream, request, jobs, limits);
                }
            }
        }
        // Accept what waits (a bounded number per turn, so reading goes on);
        // after a pause, try again whatever poll said.
        let paused = accept_pause.take().is_some();
        if paused || fds[0].revents & libc::POLLIN != 0 {
            for _ in 0..256 {
                match listener.accept() {
                    Ok((stream, _peer)) => {
                        next_pause = Duration::from_millis(10);
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        if stream.set_nonblocking(true).is_err() {
                            continue;
                        }
                        // Accepts are deferred until data arrives, so a
                        // real client's whole request is usually here:
                        // answer it without holding it, so a flood of idle
                        // connections cannot evict it before its first read.
                        let mut h = Held {
                            stream,
                            buf: Vec::new(),
                            since: Instant::now(),
                        };
                        match read_some(&mut h, limits) {
                            Step::More => {}
                            Step::Closed => continue,
                            Step::Refuse(code, why) => {
                                stats.rejected.fetch_add(1, Ordering::Relaxed);
                                refuse(h.stream, code, why);
                                continue;
                            }
                            Step::Ready(request) => {
                                dispatch(h.stream, request, jobs, limits);
                                continue;
                            }
                        }
                        make_room(&mut held, limits, jobs, stats, &mut last_eviction_log);
                        held.push_back(h);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) if is_fatal_accept_error(&e) => return Err(e),
                    Err(e) => {
                        // Out of descriptors or memory, or a connection
                        // aborted before we took it: make room, pause, go on.
                        let n = stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                        if n.is_power_of_two() || n == 0 {
                            log::warn!("http: accept failed ({e}); {} so far; pausing", n + 1);
                        }
                        if e.raw_os_error() == Some(libc::EMFILE)
                            || e.raw_os_error() == Some(libc::ENFILE)
                        {
                            held.pop_front();
                        }
                        accept_pause = Some(next_pause);
                        next_pause = (next_pause * 2).min(MAX_ACCEPT_BACKOFF);
                        break;
                    }
                }
            }
        }
    }
}

/// Closes held connections, oldest first, until one more fits: a quarter of
/// the descriptor limit at most, read fresh, since the rest of the daemon
/// needs descriptors too. A victim is read once more first: a request that
/// completed since the last poll is answered, not thrown away.
fn make_room(
    held: &mut std::collections::VecDeque<Held>,
    limits: &Limits,
    jobs: &Sender<Job>,
    stats: &ServerStats,
    last_log: &mut Option<Instant>,
) {
    let cap = limits.max_conns.min(nofile_limit() / 4).max(8);
    while held.len() >= cap {
        let Some(mut h) = held.pop_front() else {
            return;
        };
        match read_some(&mut h, limits) {
            Step::Ready(request) => dispatch(h.stream, request, jobs, limits),
            Step::Refuse(code, why) => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                refuse(h.stream, code, why);
            }
            Step::Closed => {}
            Step::More => {
                stats.evicted.fetch_add(1, Ordering::Relaxed);
                if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    *last_log = Some(Instant::now());
                    log::warn!(
                        "http: {cap} connections held open without a complete request; closing the oldest to make room"
                    );
                }
            }
        }
    }
}

/// Errors that mean the listening socket itself is unusable.
fn is_fatal_accept_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP)
    )
}

enum Step {
    More,
    Closed,
    Refuse(u16, &'static str),
    Ready(Request),
}

/// Reads what the connection has without blocking and looks for a complete
/// request; never holds more than the caps.
fn read_some(h: &mut Held, limits: &Limits) -> Step {
    let cap = limits.max_head + limits.max_body;
    let mut chunk = [0u8; 4096];
    loop {
        let room = (cap + 1).saturating_sub(h.buf.len()).min(chunk.len());
        if room == 0 {
            break;
        }
        match h.stream.read(&mut chunk[..room]) {
            Ok(0) => {
                // The peer is done sending: answer what is complete, else close.
                return match parse(&h.buf, limits) {
                    Progress::Complete(r) => Step::Ready(r),
                    Progress::Reject(code, why) => Step::Refuse(code, why),
                    Progress::Incomplete => Step::Closed,
                };
            }
            Ok(n) => h.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Step::Closed,
        }
    }
    match parse(&h.buf, limits) {
        Progress::Complete(r) => Step::Ready(r),
        Progress::Reject(code, why) => Step::Refuse(code, why),
        Progress::Incomplete => Step::More,
    }
}

/// Hands a complete request to a worker, or answers 503 when none can take it.
fn dispatch(stream: TcpStream, request: Request, jobs: &Sender<Job>, limits: &Limits) {
    if stream.set_nonblocking(false).is_err()
        || stream
            .set_write_timeout(Some(limits.write_timeout))
            .is_err()
    {
        return;
    }
    let _ = stream.set_nodelay(true);
    match jobs.try_send(Job { stream, request }) {
        Ok(()) => {}
        Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => {
            let _ = job.stream.set_nonblocking(true);
            refuse(job.stream, 503, "the daemon is busy; try again");
        }
    }
}

/// A best-effort short answer on a connection we are about to close; never
/// blocks the poll loop.
fn refuse(stream: TcpStream, code: u16, why: &str) {
    let _ = stream.set_nonblocking(true);
    let answer = json(code, &serde_json::json!({ "error": why }));
    let mut s = &stream;
    let _ = s.write(&answer.to_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// A worker: answers requests until the job queue closes.
fn work(
    jobs: &Receiver<Job>,
    published: &Published,
    wiring: &ControlPlane,
    site: &Site,
    write_timeout: Duration,
) {
    for job in jobs.iter() {
        let peer_stream = job.stream;
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            answer(&job.request, published, wiring, site)
        }));
        match run {
            Ok(Reply::Now(a)) => respond(peer_stream, &a),
            Ok(Reply::Events {
                last_id,
                since_ms,
                once,
            }) => {
                let client = crate::daemon::event_stream::NewClient {
                    stream: peer_stream,
                    last_id,
                    since_ms,
                    once,
                };
                if let Err(e) = wiring.stream.try_send(client) {
                    let c = e.into_inner();
                    respond(
                        c.stream,
                        &json(
                            503,
                            &serde_json::json!({"error": "the event stream is busy; try again"}),
                        ),
                    );
                }
            }
            Ok(Reply::Swap(query)) => {
                // The swap can take a while: answer it from its own thread so
                // /status and /healthz keep answering meanwhile; one at a time.
                let wiring = wiring.clone();
                let _ = peer_stream.set_write_timeout(Some(write_timeout));
                std::thread::spawn(move || {
                    let a = swap(&query, &wiring);
                    respond(peer_stream, &a);
                });
            }
            Err(_) => {
                log::error!(
                    "http: the handler for {} {} panicked",
                    job.request.method,
                    job.request.path()
                );
                respond(
                    peer_stream,
                    &json(500, &serde_json::json!({"error": "internal error"})),
                );
            }
        }
    }
}

/// One answer.
#[derive(Debug)]
pub struct Answer {
    pub code: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// `WWW-Authenticate: Bearer` on a 401.
    pub challenge: bool,
}

impl Answer {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n{}\r\n",
            self.code,
            reason(self.code),
            self.content_type,
            self.body.len(),
            if self.challenge {
                "WWW-Authenticate: Bearer\r\n"
            } else {
                ""
            }
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        422 => "Unprocessable Entity",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// One answer per connection, written whole at once (one segment, no
/// Nagle wait), then the connection is closed.
fn respond(stream: TcpStream, answer: &Answer) {
    let mut s = &stream;
    if let Err(e) = s.write_all(&answer.to_bytes()) {
        log::debug!("http: answer not delivered: {e}");
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

// ---- parsing (pure) -------------------------------------------------------

/// A parsed request head.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    /// The request target as sent: path and query.
    pub target: String,
    /// (lower-case name, value) in order.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }

    /// The first header of that (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Where reading a request stands.
#[derive(Debug, PartialEq)]
pub enum Progress {
    Incomplete,
    Complete(Request),
    /// Answer with this status and close.
    Reject(u16, &'static str),
}

/// Looks at the bytes received so far. Pure, so every cap is tested
/// without a socket.
pub fn parse(buf: &[u8], limits: &Limits) -> Progress {
    // Find the end of the head, checking every line's length on the way, the
    // unfinished last line included (that is the 1 GiB header line).
    let mut start = 0;
    let mut lines: Vec<&[u8]> = Vec::new();
    let head_end = loop {
        let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') else {
            let partial = buf.len() - start;
            if partial > limits.max_line {
                return too_long(lines.is_empty());
            }
            if buf.len() > limits.max_head {
                return Progress::Reject(431, "request head too large");
            }
            return Progress::Incomplete;
        };
        let mut line = &buf[start..start + nl];
        if let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        if line.len() > limits.max_line {
            return too_long(lines.is_empty());
        }
        start += nl + 1;
        if start > limits.max_head {
            return Progress::Reject(431, "request head too large");
        }
        if line.is_empty() {
            if lines.is_empty() {
                // Blank lines before the request line are tolerated (RFC 9112 §2.2).
                continue;
            }
            break start;
        }
        lines.push(line);
        if lines.len() > limits.max_headers + 1 {
            return Progress::Reject(431, "too many header lines");
        }
    };
    let Ok(request_line) = std::str::from_utf8(lines[0]) else {
        return Progress::Reject(400, "the request line is not text");
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Progress::Reject(400, "malformed request line");
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
        || !(version == "HTTP/1.1" || version == "HTTP/1.0")
    {
        return Progress::Reject(400, "malformed request line");
    }
    let mut headers = Vec::with_capacity(lines.len() - 1);
    for line in &lines[1..] {
        let Ok(line) = std::str::from_utf8(line) else {
            return Progress::Reject(400, "a header is not text");
        };
        if line.starts_with([' ', '\t']) {
            return Progress::Reject(400, "folded header lines are not accepted");
        }
        let Some((name, value)) = line.split_once(':') else {
            return Progress::Reject(400, "a header line has no colon");
        };
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Progress::Reject(400, "malformed header name");
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    if headers.iter().any(|(n, _)| n == "transfer-encoding") {
        return Progress::Reject(
            413,
            "request body of unknown length (Transfer-Encoding); no endpoint takes a body",
        );
    }
    // Content-Length: digits only (no sign, no list); every copy must agree.
    let mut length: Option<u64> = None;
    for (_, v) in headers.iter().filter(|(n, _)| n == "content-length") {
        if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Progress::Reject(400, "malformed Content-Length");
        }
        let Ok(n) = v.parse::<u64>() else {
            return Progress::Reject(400, "malformed Content-Length");
        };
        if length.is_some_and(|l| l != n) {
            return Progress::Reject(400, "conflicting Content-Length headers");
        }
        length = Some(n);
    }
    let length = length.unwrap_or(0);
    if length > limits.max_body as u64 {
        return Progress::Reject(413, "request body too large; no endpoint takes a body");
    }
    if ((buf.len() - head_end) as u64) < length {
        return Progress::Incomplete;
    }
    Progress::Complete(Request {
        method: method.to_string(),
        target: target.to_string(),
        headers,
    })
}

fn too_long(request_line: bool) -> Progress {
    if request_line {
        Progress::Reject(414, "request line too long")
    } else {
        Progress::Reject(431, "header line too long")
    }
}

// ---- who may ask (pure) ---------------------------------------------------

/// Why a request is refused before routing, if it is: the Host and Origin
/// rules and the token. `None` lets it through.
fn gate(req: &Request, site: &Site, token: &str) -> Option<Answer> {
    let host = req.header("host");
    if site.loopback && !host.is_some_and(|h| loopback_host(h, site.addr.port())) {
        return Some(json(
            403,
            &serde_json::json!({"error": format!(
                "Host {:?} is not this daemon's address: on a loopback listen only localhost, 127.0.0.1 or [::1] with port {} are answered",
                host.unwrap_or(""),
                site.addr.port()
            )}),
        ));
    }
    if let Some(origin) = req.header("origin") {
        let same = host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("http://{h}")));
        if !same {
            return Some(json(
                403,
                &serde_json::json!({"error": format!("cross-origin request refused (Origin {origin:?})")}),
            ));
        }
    }
    if let Some(site_kind) = req.header("sec-fetch-site") {
        if !(site_kind.eq_ignore_ascii_case("same-origin")
            || site_kind.eq_ignore_ascii_case("none"))
        {
            return Some(json(
                403,
                &serde_json::json!({"error": format!("cross-origin request refused (Sec-Fetch-Site {site_kind})")}),
            ));
        }
    }
    // A session's screen may show what should not leave it (a key typed,
    // a file shown): it needs the token even on loopback.
    let screen = screen_of(req.path()).is_some();
    let needs_token = req.method != "GET" || !site.loopback || screen;
    if needs_token && !authorised(req, token) {
        let wants_page = req.path() == "/"
            && req
                .header("accept")
                .is_some_and(|a| a.contains("text/html"));
        let mut a = if wants_page {
            // A browser: the page that asks for the token once and loads the
            // dashboard with it (in a header, never in the URL).
            Answer {
                code: 401,
                content_type: "text/html; charset=utf-8",
                body: crate::daemon::dashboard::TOKEN_PAGE.as_bytes().to_vec(),
                challenge: false,
            }
        } else {
            json(
                401,
                &serde_json::json!({"error": "missing or wrong bearer token (see http.token_file)"}),
            )
        };
        a.challenge = true;
        return Some(a);
    }
    None
}

/// `localhost`, an address in 127.0.0.0/8 or `[::1]`, with exactly `port`.
fn loopback_host(host: &str, port: u16) -> bool {
    let (name, p) = match host.rsplit_once(':') {
        Some((n, p)) if !n.is_empty() && !p.contains(']') => (n, p),
        _ => return false,
    };
    if p.parse::<u16>().ok() != Some(port) {
        return false;
    }
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Constant-time comparison of the bearer token (no early exit on the first
/// differing byte).
fn authorised(req: &Request, token: &str) -> bool {
    let given = req.header("authorization").unwrap_or("");
    let given = given
        .strip_prefix("Bearer ")
        .unwrap_or("")
        .trim()
        .as_bytes();
    let want = token.as_bytes();
    if want.is_empty() {
        return false;
    }
    let mut diff = given.len() ^ want.len();
    for (i, w) in want.iter().enumerate() {
        diff |= (given.get(i).copied().unwrap_or(0) ^ w) as usize;
    }
    diff == 0
}

// ---- the endpoints --------------------------------------------------------

enum Reply {
    Now(Answer),
    /// `GET /events`: the connection goes to the event stream's thread.
    Events {
        last_id: Option<u64>,
        since_ms: Option<u64>,
        once: bool,
    },
    /// `POST /swap` with this query: answered from its own thread.
    Swap(String),
}

fn answer(req: &Request, published: &Published, wiring: &ControlPlane, site: &Site) -> Reply {
    if let Some(refused) = gate(req, site, &wiring.token) {
        return Reply::Now(refused);
    }
    let path = req.path();
    let method = req.method.as_str();
    let a = match (method, path) {
        ("GET", "/") => Answer {
            code: 200,
            content_type: "text/html; charset=utf-8",
            body: crate::daemon::dashboard::PAGE.as_bytes().to_vec(),
            challenge: false,
        },
        ("GET", "/events") => {
            let q = req.query();
            return Reply::Events {
                last_id: req
                    .header("last-event-id")
                    .map(str::to_string)
                    .or_else(|| query_param(q, "last_event_id"))
                    .and_then(|v| v.trim().parse().ok()),
                since_ms: query_param(q, "since_ms").and_then(|v| v.parse().ok()),
                once: query_param(q, "once").is_some_and(|v| v == "1"),
            };
        }
        ("GET", p) if screen_of(p).is_some() => {
            let name = percent_decode(screen_of(p).unwrap_or_default());
            screen(&name, published, wiring)
        }
        ("GET", "/status") => json(200, &current(published, wiring)),
        ("GET", "/metrics") => {
            wiring
                .counters
                .set_notifications_dropped(wiring.notify.stats().dropped);
            wiring
                .counters
                .set_event_clients(wiring.feed.clients() as u64, wiring.feed.dropped());
            let body =
                crate::daemon::metrics::render(&current(published, wiring), &wiring.counters);
            Answer {
                code: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: body.into_bytes(),
                challenge: false,
            }
        }
        ("GET", "/healthz") => {
            let snapshot = current(published, wiring);
            if snapshot.health_problems.is_empty() {
                text(200, "ok\n")
            } else {
                text(503, &format!("{}\n", snapshot.health_problems.join("; ")))
            }
        }
        ("POST", "/swap") => {
            // Whether a swap is under way is the switcher's answer: its view
            // says so from before the swap starts until it ended, and a
            // request it reads meanwhile is refused as busy (409 below).
            if let Some(id) = wiring.view.read().swap_in_progress.clone() {
                json(
                    409,
                    &serde_json::json!({"error": format!("swap {id} is under way")}),
                )
            } else {
                return Reply::Swap(req.query().to_string());
            }
        }
        ("POST", "/reload") => ask_main(wiring, |reply| Report::Reload { reply }, 422),
        ("POST", p) if p.starts_with("/sessions/") && p.ends_with("/restart") => {
            let name = p
                .trim_start_matches("/sessions/")
                .trim_end_matches("/restart")
                .to_string();
            ask_main(wiring, |reply| Report::Restart { name, reply }, 404)
        }
        (_, "/status" | "/healthz" | "/metrics" | "/swap" | "/reload") => json(
            405,
            &serde_json::json!({"error": format!("{method} not allowed on {path}")}),
        ),
        _ => json(
            404,
            &serde_json::json!({"error": format!("no such endpoint: {method} {path}")}),
        ),
    };
    Reply::Now(a)
}

/// The NAME of a `/sessions/NAME/screen` path (still percent-encoded).
fn screen_of(path: &str) -> Option<&str> {
    path.strip_prefix("/sessions/")?.strip_suffix("/screen")
}

/// `GET /sessions/NAME/screen`: a managed session's visible screen as text.
fn screen(name: &str, published: &Published, wiring: &ControlPlane) -> Answer {
    let managed = status::latest(published)
        .sessions
        .iter()
        .any(|s| s.name == name);
    if !managed {
        return json(
            404,
            &serde_json::json!({"error": format!("no managed session named {name:?}")}),
        );
    }
    match wiring.tmux.capture_pane(name, 0) {
        Ok(screen) => text(200, &format!("{}\n", screen.trim_end())),
        Err(e) => json(
            503,
            &serde_json::json!({"error": format!("cannot read {name}'s screen: {e}")}),
        ),
    }
}

/// The main loop's snapshot with the switcher's own fields taken fresh from
/// its view, so an answer never lags behind a swap that just ended.
fn current(published: &Published, wiring: &ControlPlane) -> status::Status {
    let mut s = (*status::latest(published)).clone();
    let v = wiring.view.read();
    if !v.active.is_empty() {
        s.active_account = Some(v.active.clone());
    }
    s.partial_swap = v.partial_swap.is_some();
    s.swap_in_progress = v.swap_in_progress.is_some();
    for a in &mut s.accounts {
        a.read_from(v.accounts.iter().find(|x| x.name == a.name));
    }
    s.last_swap = v
        .last_swap
        .as_ref()
        .and_then(|l| serde_json::to_value(l).ok());
    s.swap_history = v
        .swap_history
        .iter()
        .filter_map(|l| serde_json::to_value(l).ok())
        .collect();
    use crate::daemon::event_stream::Kind;
    let recent = |kind: Kind, n: usize| -> Vec<serde_json::Value> {
        wiring
            .feed
            .recent(&[kind], n)
            .iter()
            .map(|e| {
                let mut d = e.data.clone();
                if let Some(o) = d.as_object_mut() {
                    o.insert(
                        "at".into(),
                        crate::sys::time::rfc3339(
                            std::time::UNIX_EPOCH + Duration::from_millis(e.at_ms),
                        )
                        .into(),
                    );
                }
                d
            })
            .collect()
    };
    s.recent = serde_json::json!({
        "notifications": recent(Kind::Notification, 20),
        "tasks_done": recent(Kind::TaskDone, 20),
        "tasks_failed": recent(Kind::TaskFailed, 20),
        "fleet": recent(Kind::Fleet, 20),
    });
    s.fleet = crate::daemon::fleet::status(&wiring.fleet);
    if let Some(p) = &v.partial_swap {
        let problem = format!("partial swap: {p}");
        if !s.health_problems.contains(&problem) {
            s.health_problems.push(problem);
        }
    }
    s
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

/// A caller's text as one log line: control characters (a newline, an
/// escape) become spaces, at most 200 characters.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect::<String>()
        .trim()
        .to_string()
}

/// `a+b%20c` → `a b c`; a broken escape is kept as it is.
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /swap?to=NAME[&reason=TEXT]`: 200 with the result, 409 while a swap
/// runs or a partial swap holds, 422 when no account can take the work.
fn swap(query: &str, wiring: &ControlPlane) -> Answer {
    let view = wiring.view.read().clone();
    if let Some(p) = &view.partial_swap {
        return json(
            409,
            &serde_json::json!({"error": format!("a partial swap holds: {p}")}),
        );
    }
    if let Some(id) = &view.swap_in_progress {
        return json(
            409,
            &serde_json::json!({"error": format!("swap {id} is under way")}),
        );
    }
    let to = query_param(query, "to").filter(|t| !t.is_empty());
    let reason = query_param(query, "reason")
        .map(|r| one_line(&r))
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "requested over HTTP".into());
    let (tx, rx) = crossbeam_channel::bounded(1);
    if wiring
        .switcher
        .send(switcher::Command::SwapNow {
            to,
            reason,
            reply: Some(tx),
        })
        .is_err()
    {
        return json(
            503,
            &serde_json::json!({"error": "the switcher is not running"}),
        );
    }
    match rx.recv_timeout(wiring.swap_wait) {
        Ok(result) => {
            let code = match (result.result, result.refusal) {
                (SwapOutcome::Done, _) => 200,
                (SwapOutcome::Refused, Some(Refusal::Busy)) => 409,
                (SwapOutcome::Refused, Some(Refusal::NoTarget) | None) => 422,
                (
                    SwapOutcome::RolledBack
                    | SwapOutcome::Partial
                    | SwapOutcome::Incomplete
                    | SwapOutcome::Failed
                    | SwapOutcome::FinishedAfterRestart
                    | SwapOutcome::RolledBackAfterRestart,
                    _,
                ) => 500,
            };
            json(code, &result)
        }
        Err(_) => json(
            504,
            &serde_json::json!({"error": "the swap did not end in time; see /status"}),
        ),
    }
}

fn ask_main(
    wiring: &ControlPlane,
    make: impl FnOnce(Sender<Result<(), String>>) -> Report,
    refused: u16,
) -> Answer {
    let (tx, rx) = crossbeam_channel::bounded(1);
    if wiring.main.send(make(tx)).is_err() {
        return json(503, &serde_json::json!({"error": "the daemon is stopping"}));
    }
    match rx.recv_timeout(CLIENT_TIMEOUT) {
        Ok(Ok(())) => json(200, &serde_json::json!({"ok": true})),
        Ok(Err(e)) => json(refused, &serde_json::json!({"error": e})),
        Err(_) => json(504, &serde_json::json!({"error": "no answer in time"})),
    }
}

fn json<T: serde::Serialize + ?Sized>(code: u16, body: &T) -> Answer {
    Answer {
        code,
        content_type: "application/json",
        body: serde_json::to_vec_pretty(body).unwrap_or_else(|_| b"{}".to_vec()),
        challenge: false,
    }
}

fn text(code: u16, body: &str) -> Answer {
    Answer {
        code,
        content_type: "text/plain; charset=utf-8",
        body: body.as_bytes().to_vec(),
        challenge: false,
    }
}

/// How long a test or command waits for an answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

// ---- the token file -------------------------------------------------------

/// Reads the control plane's token from `path`, creating it (32 random
/// bytes, hex, mode 0600) when it does not exist. Refuses a file that group
/// or others may read or write, and an empty one: one-line reasons.
pub fn ensure_token(path: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token()?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            crate::store::atomic_file::write_with_mode(
                path,
                format!("{token}\n").as_bytes(),
                0o600,
            )
            .map_err(|e| format!("cannot write http.token_file {}: {e}", path.display()))?;
            log::info!("generated the control-plane token in {}", path.display());
            Ok(token)
        }
        Err(e) => Err(format!(
            "cannot read http.token_file {}: {e}",
            path.display()
        )),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(format!(
                    "http.token_file {} has mode {mode:04o}: group and others must have no access (chmod 600 {})",
                    path.display(),
                    path.display()
                ));
            }
            read_token(path)
        }
    }
}

/// Reads an existing token file (for the command-line clients).
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read http.token_file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("http.token_file {} is empty", path.display()));
    }
    Ok(token.to_string())
}

fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom for a token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn req(method: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            target: "/swap".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn loopback() -> Site {
        Site {
            addr: "127.0.0.1:7878".parse().unwrap(),
            loopback: true,
        }
    }

    #[test]
    fn decodes_query_values() {
        assert_eq!(percent_decode("swap%20command+now"), "swap command now");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(
            query_param("to=beta&reason=a%2Fb", "reason").as_deref(),
            Some("a/b")
        );
    }

    #[test]
    fn a_reason_with_newlines_is_one_line_and_bounded() {
        let r = query_param("reason=ok%0A%5BERROR%5D%20forged%1B%5B2J", "reason").unwrap();
        assert_eq!(one_line(&r), "ok [ERROR] forged [2J");
        assert_eq!(one_line(&"x".repeat(500)).len(), 200);
    }

    #[test]
    fn a_complete_request_parses_and_a_partial_one_waits() {
        let full = b"GET /status?x=1 HTTP/1.1\r\nHost: localhost:7878\r\nX-A:  b \r\n\r\n";
        match parse(full, &limits()) {
            Progress::Complete(r) => {
                assert_eq!(
                    (r.method.as_str(), r.path(), r.query()),
                    ("GET", "/status", "x=1")
                );
                assert_eq!(r.header("x-a"), Some("b"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(&full[..20], &limits()), Progress::Incomplete);
        let with_body = b"POST /swap HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc";
        assert_eq!(parse(with_body, &limits()), Progress::Incomplete);
    }

    #[test]
    fn an_endless_request_or_header_line_is_refused_at_the_line_cap() {
        let l = limits();
        let long_target = format!("GET /{} HTTP/1.1", "a".repeat(l.max_line));
        assert!(matches!(
            parse(long_target.as_bytes(), &l),
            Progress::Reject(414, _)
        ));
        let long_header = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(l.max_line));
        assert!(matches!(
            parse(long_header.as_bytes(), &l),
            Progress::Reject(431, _)
        ));
        // Many short lines, none ending the head: refused at the head cap.
        let many = format!(
            "GET / HTTP/1.1\r\n{}",
            "X-Y: z\r\n".repeat(l.max_head / 8 + 1)
        );
        assert!(matches!(
            parse(many.as_bytes(), &l),
            Progress::Reject(431, _)
        ));
    }

    #[test]
    fn malformed_negative_or_conflicting_content_length_is_refused_with_400() {
        for cl in ["-1", "+5", "1,1", "abc", "", "99999999999999999999"] {
            let r = format!("POST /swap HTTP/1.1\r\nContent-Length: {cl}\r\n\r\n");
            assert!(
                matches!(parse(r.as_bytes(), &limits()), Progress::Reject(400, _)),
                "{cl}"
            );
        }
        let two = b"POST /swap HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 3\r\n\r\nabc";
        assert!(matches!(parse(two, &limits()), Progress::Reject(400, _)));
        let big = b"POST /swap HTTP/1.1\r\nContent-Length: 10485760\r\n\r\n";
        assert!(matches!(parse(big, &limits()), Progress::Reject(413, _)));
        let chunked = b"POST /swap HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            parse(chunked, &limits()),
            Progress::Reject(413, _)
        ));
        assert!(matches!(
            parse(b"GARBAGE\r\n\r\n", &limits()),
            Progress::Reject(400, _)
        ));
    }

    #[test]
    fn loopback_host_names_only_with_the_listening_port() {
        for ok in [
            "localhost:7878",
            "127.0.0.1:7878",
            "127.1.2.3:7878",
            "[::1]:7878",
            "LOCALHOST:7878",
        ] {
            assert!(loopback_host(ok, 7878), "{ok}");
        }
        for bad in [
            "evil.example:7878",
            "localhost",
            "localhost:80",
            "127.0.0.1",
            "10.0.0.1:7878",
            "[::1]",
            ":7878",
            "localhost.evil.example:7878",
        ] {
            assert!(!loopback_host(bad, 7878), "{bad}");
        }
    }

    #[test]
    fn without_the_token_a_post_is_refused_and_a_loopback_get_is_not() {
        let site = loopback();
        let host = ("host", "127.0.0.1:7878");
        let post = req("POST", &[host]);
        assert_eq!(gate(&post, &site, "t0k").map(|a| a.code), Some(401));
        let wrong = req("POST", &[host, ("authorization", "Bearer t0x")]);
        assert_eq!(gate(&wrong, &site, "t0k").map(|a| a.code), Some(401));
        let right = req("POST", &[host, ("authorization", "Bearer t0k")]);
        assert!(gate(&right, &site, "t0k").is_none());
        assert!(gate(&req("GET", &[host]), &site, "t0k").is_none());
    }

    #[test]
    fn a_cross_origin_browser_post_is_refused_even_with_the_token() {
        let site = loopback();
        let host = ("host", "127.0.0.1:7878");
        let auth = ("authorization", "Bearer t0k");
        let evil = req("POST", &[host, auth, ("origin", "http://evil.example")]);
        assert_eq!(gate(&evil, &site, "t0k").map(|a| a.code), Some(403));
        let null = req("POST", &[host, auth, ("origin", "null")]);
        assert_eq!(gate(&null, &site, "t0k").map(|a| a.code), Some(403));
        let fetch = req("POST", &[host, auth, ("sec-fetch-site", "cross-site")]);
        assert_eq!(gate(&fetch, &site, "t0k").map(|a| a.code), Some(403));
        let same = req("POST", &[host, auth, ("origin", "http://127.0.0.1:7878")]);
        assert!(gate(&same, &site, "t0k").is_none());
        // DNS rebinding: the right port under a foreign name.
        let rebound = req("GET", &[("host", "evil.example:7878")]);
        assert_eq!(gate(&rebound, &site, "t0k").map(|a| a.code), Some(403));
        assert_eq!(
            gate(&req("GET", &[]), &site, "t0k").map(|a| a.code),
            Some(403)
        );
    }

    #[test]
    fn on_a_non_loopback_listen_a_get_needs_the_token() {
        let site = Site {
            addr: "0.0.0.0:7878".parse().unwrap(),
            loopback: false,
        };
        let host = ("host", "agents.example:7878");
        assert_eq!(
            gate(&req("GET", &[host]), &site, "t0k").map(|a| a.code),
            Some(401)
        );
        let auth = req("GET", &[host, ("authorization", "Bearer t0k")]);
        assert!(gate(&auth, &site, "t0k").is_none());
    }

    fn wiring() -> (ControlPlane, Vec<Box<dyn std::any::Any>>) {
        let (switcher, s_rx) = crossbeam_channel::unbounded();
        let (main, m_rx) = crossbeam_channel::unbounded();
        let w = ControlPlane {
            switcher,
            view: Default::default(),
            main,
            token: "t0k".into(),
            swap_wait: Duration::from_secs(1),
            counters: Default::default(),
            notify: crate::daemon::notifier::NotifyHandle::log_only(),
            feed: Default::default(),
            stream: crossbeam_channel::bounded(1).0,
            tmux: crate::sys::tmux::Tmux::new(None, Duration::from_secs(1)),
            fleet: crate::daemon::fleet::FleetHandle::off(),
        };
        (w, vec![Box::new(s_rx), Box::new(m_rx)])
    }

    fn healthz(addr: SocketAddr) -> Option<u16> {
        let mut c = TcpStream::connect(addr).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(c, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut text = String::new();
        let _ = c.read_to_string(&mut text);
        text.split(' ').nth(1)?.parse().ok()
    }

    /// A connected pair: (our side as the server holds it, the client).
    fn held_pair(l: &TcpListener) -> (Held, TcpStream) {
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        // A plain listener (accepts not deferred): this returns at once.
        let (stream, _) = l.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        let h = Held {
            stream,
            buf: Vec::new(),
            since: Instant::now(),
        };
        (h, client)
    }

    #[test]
    fn making_room_answers_a_victim_whose_request_completed_and_evicts_one_that_did_not() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let limits = Limits {
            max_conns: 8,
            ..Limits::default()
        };
        let (jobs, job_rx) = crossbeam_channel::bounded::<Job>(8);
        let stats = ServerStats::default();
        let mut last_log = None;
        let mut held = std::collections::VecDeque::new();
        let mut clients = Vec::new();
        for _ in 0..8 {
            let (mut h, mut c) = held_pair(&l);
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x").unwrap();
            // Read the partial head, as the poll loop would have.
            let deadline = Instant::now() + Duration::from_secs(5);
            while h.buf.is_empty() {
                assert!(matches!(read_some(&mut h, &limits), Step::More));
                assert!(Instant::now() < deadline, "partial head never arrived");
            }
            held.push_back(h);
            clients.push(c);
        }
        // The oldest completes its request after its last read.
        clients[0].write_all(b"\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        make_room(&mut held, &limits, &jobs, &stats, &mut last_log);
        assert_eq!(held.len(), 7);
        assert_eq!(stats.evicted.load(Ordering::SeqCst), 0);
        let job = job_rx
            .try_recv()
            .expect("the completed request went to a worker");
        assert_eq!(job.request.path(), "/healthz");
        // The next one sent nothing more: it is the one evicted.
        held.push_back(held_pair(&l).0);
        make_room(&mut held, &limits, &jobs, &stats, &mut last_log);
        assert_eq!(held.len(), 7);
        assert_eq!(stats.evicted.load(Ordering::SeqCst), 1);
        assert!(job_rx.try_recv().is_err());
    }

    #[test]
    fn a_client_that_connects_before_a_flood_and_writes_after_it_is_answered() {
        let (w, _keep) = wiring();
        let limits = Limits {
            max_conns: 8,
            ..Limits::default()
        };
        let http = Http::start_with(
            "127.0.0.1:0".parse().unwrap(),
            Default::default(),
            w,
            limits,
        )
        .unwrap();
        let addr = http.addr;
        // Connected, then descheduled (as on a loaded machine) before it
        // writes its request.
        let mut slow = TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // Forty connections trickling heads in come after it and go beyond
        // the eight held.
        let mut flood = Vec::new();
        for _ in 0..40 {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /status HTTP/1.1\r\nHost: x").unwrap();
            flood.push(c);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while http.stats.evicted.load(Ordering::SeqCst) < 32 {
            assert!(
                Instant::now() < deadline,
                "the flood was not taken in: {:?}",
                http.stats
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Evicted, its write or read would fail (reset) or read nothing.
        let wrote = write!(slow, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        let mut text = String::new();
        let read = slow.read_to_string(&mut text);
        assert!(
            wrote.is_ok() && text.starts_with("HTTP/1.1 200"),
            "the client that wrote after the flood: {wrote:?} {read:?} {text:?} ({:?})",
            http.stats
        );
    }

    #[test]
    fn a_broken_listener_is_bound_again_instead_of_ending_the_role() {
        let (w, _keep) = wiring();
        let http = Http::start("127.0.0.1:0".parse().unwrap(), Default::default(), w).unwrap();
        assert_eq!(healthz(http.addr), Some(200));
        let fd = http.stats.listener_fd.load(Ordering::SeqCst);
        // SAFETY: shutting down the server's own listening socket, which
        // makes every accept on it fail with EINVAL.
        assert_eq!(unsafe { libc::shutdown(fd, libc::SHUT_RDWR) }, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while http.stats.rebinds.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "never bound again");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            healthz(http.addr),
            Some(200),
            "answering again on the same address"
        );
    }

    #[test]
    fn a_token_file_others_can_read_is_refused_and_a_missing_one_is_made_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/http.token");
        let token = ensure_token(&path).unwrap();
        assert_eq!(token.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ensure_token(&path).unwrap(), token, "kept, not regenerated");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ensure_token(&path).unwrap_err();
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "  \n").unwrap();
        assert!(ensure_token(&path).unwrap_err().contains("empty"));
    }
}
