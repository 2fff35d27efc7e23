//! Start-up: signals first, the config, the state folder's lock, the
//! token and the invariants; then every role, wired; then the main loop's
//! state. Everything that stops the start is one line on stderr and an exit
//! status.

use super::roles::{CloseOnDrop, Role, Roles, JOIN_GRACE};
use super::*;
use crate::commands::Failed;

/// What `run` needs to turn the loop: its state, its inputs, the roles (stopped
/// when dropped), and the state folder's lock (held until `run` returns).
pub(super) struct Started {
    pub(super) daemon: Daemon,
    pub(super) inputs: Inputs,
    pub(super) roles: Roles,
    pub(super) lock: crate::store::state_lock::StateLock,
}

/// Starts everything, or says why not (on stderr) and with which exit status.
pub(super) fn start(config_path: &Path) -> Result<Started, Failed> {
    // Signals first, before any thread exists, so none is lost or kills us.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1]) {
        Ok(s) => s,
        Err(e) => {
            return Err(Failed::new(
                exit::FAILURE,
                format!("claude-failover: cannot register signal handlers: {e}"),
            ));
        }
    };
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            return Err(Failed::new(
                exit::BAD_CONFIG,
                format!("claude-failover: bad config: {e}"),
            ));
        }
    };
    crate::sys::logging::configure(&config);
    // One daemon per state folder, before any recovery or file write there;
    // held until `run` returns.
    let state_lock = match crate::store::state_lock::acquire(&config.state_dir) {
        Ok(l) => l,
        Err(e) => {
            return Err(Failed::new(
                exit::INVARIANT,
                format!("claude-failover: cannot start: {e}"),
            ));
        }
    };
    // The control plane's token, made when absent; a file others may read
    // is refused before anything starts.
    let token = match crate::daemon::http::ensure_token(&config.http.token_file) {
        Ok(t) => t,
        Err(e) => {
            return Err(Failed::new(
                exit::INVARIANT,
                format!("claude-failover: cannot start: {e}"),
            ));
        }
    };
    let claude_binary = match startup_invariants(&config) {
        Ok(b) => b,
        Err(problems) => {
            return Err(Failed {
                code: exit::INVARIANT,
                lines: problems
                    .iter()
                    .map(|p| format!("claude-failover: cannot start: {p}"))
                    .collect(),
            });
        }
    };
    let events_dir = config.state_dir.join(crate::claude::hook::EVENTS_DIR);
    if let Err(e) = std::fs::create_dir_all(&events_dir) {
        return Err(Failed::new(
            exit::FAILURE,
            format!(
                "claude-failover: cannot create {}: {e}",
                events_dir.display()
            ),
        ));
    }
    let book = load_book(&config.state_dir.join("sessions.json"));

    // Role threads; they go into `Roles` below, whose field order is the
    // order they stop in.
    let (sig_tx, sig_rx) = crossbeam_channel::unbounded();
    let sig_handle = signals.handle();
    let sig_thread = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if sig_tx.send(s).is_err() {
                    return;
                }
            }
        })
        .expect("spawn signals thread");
    let published: Published = Arc::new(RwLock::new(Arc::new(Status::default())));
    let (active_tx, active_rx) = crossbeam_channel::unbounded();
    // Known before the switcher finishes (and removes) a journal left by a
    // crash: the dispatcher then continues the tasks it adopts.
    let swap_was_interrupted = config.state_dir.join(switcher::JOURNAL_FILE).exists();
    let (report_tx, report_rx) = crossbeam_channel::unbounded();
    let watcher = SessionWatcher::start(
        Tmux::new(config.tmux.socket.clone(), TMUX_DEADLINE),
        report_tx,
    );
    // The fleet's event stream (`GET /events`), published to by the roles.
    let feed = crate::daemon::event_stream::Events::new();
    let (stream_stop, stream_stop_rx) = crossbeam_channel::bounded::<()>(0);
    let stream = match crate::daemon::event_stream::start(feed.clone(), stream_stop_rx) {
        Ok(s) => s,
        Err(e) => {
            return Err(Failed::new(
                exit::FAILURE,
                format!("claude-failover: cannot start the event stream: {e}"),
            ))
        }
    };
    let (fleet_handle, fleet_inbox) = crate::daemon::fleet::channel(&config);
    let switcher = Switcher::start(
        &config,
        active_tx,
        watcher.requests.clone(),
        feed.clone(),
        fleet_handle.clone(),
    );
    // Told to stop, it flushes what is queued for at most JOIN_GRACE.
    let notifier = crate::daemon::notifier::Notifier::start_with(
        &config.notify,
        crate::daemon::notifier::NotifierOptions {
            flush_grace: JOIN_GRACE,
            ..Default::default()
        },
    );
    notifier.handle().set_feed(feed.clone());
    let fleet = match fleet_inbox {
        None => None,
        Some(inbox) => match crate::daemon::fleet::Fleet::start(
            &config,
            inbox,
            &fleet_handle,
            switcher.view.clone(),
            switcher.requests.clone(),
            feed.clone(),
            notifier.handle(),
        ) {
            Ok(f) => {
                log::info!(
                    "fleet: machine {} shares readings, polls and leases through {}",
                    config.fleet.machine,
                    crate::daemon::fleet::redacted(config.fleet.redis.as_deref().unwrap_or(""))
                );
                Some(f)
            }
            Err(e) => {
                return Err(Failed::new(
                    exit::BAD_CONFIG,
                    format!("claude-failover: cannot start the fleet link: {e}"),
                ))
            }
        },
    };
    let counters = Arc::new(crate::daemon::metrics::Counters::default());
    let (control_tx, control_rx) = crossbeam_channel::unbounded();
    let control_plane = crate::daemon::http::ControlPlane {
        switcher: switcher.requests.clone(),
        view: switcher.view.clone(),
        main: control_tx,
        token,
        counters: counters.clone(),
        notify: notifier.handle(),
        feed: feed.clone(),
        stream: stream.clients.clone(),
        tmux: Tmux::new(config.tmux.socket.clone(), TMUX_DEADLINE),
        fleet: fleet_handle.clone(),
        swap_wait: config.swap.drain_timeout
            + config.swap.stop_timeout
            + config.claude.startup_timeout
            + Duration::from_secs(30),
    };
    let http = match Http::start(config.http.listen, published.clone(), control_plane) {
        Ok(h) => h,
        Err(e) => {
            return Err(Failed::new(exit::FAILURE, format!("claude-failover: {e}")));
        }
    };
    log::info!("listening on http://{}", http.addr);
    let monitor = crate::daemon::quota_monitor::QuotaMonitor::start(
        &config,
        switcher.view.clone(),
        switcher.requests.clone(),
        fleet_handle.clone(),
    );
    let (dispatch_tx, dispatch_rx) = crossbeam_channel::unbounded();
    let dispatcher = crate::daemon::dispatcher::Dispatcher::start(
        &config,
        dispatch_tx,
        watcher.requests.clone(),
        swap_was_interrupted,
        feed.clone(),
    );
    // Bounded: a flood of events waits in its senders, not in memory here.
    let (events_tx, events_rx) = crossbeam_channel::bounded(256);
    let events = match EventWatcher::start(
        &config.state_dir,
        Tmux::new(config.tmux.socket.clone(), TMUX_DEADLINE),
        config.lifecycle.interval,
        events_tx,
    ) {
        Ok(w) => w,
        Err(e) => {
            return Err(Failed::new(
                exit::FAILURE,
                format!("claude-failover: cannot watch the events folder: {e}"),
            ));
        }
    };

    let daemon = Daemon {
        config_path: config_path.to_path_buf(),
        claude_binary,
        book,
        observed: None,
        observe_error: None,
        in_flight: HashSet::new(),
        active: None,
        published,
        sd: Systemd::from_env(),
        ready: false,
        persisted: String::new(),
        consumed: Vec::new(),
        config_error: None,
        shared_problems: Vec::new(),
        watcher: watcher.requests.clone(),
        switcher: switcher.requests.clone(),
        view: switcher.view.clone(),
        sessions_held: None,
        sent_switcher: Vec::new(),
        dispatcher: dispatcher.input.clone(),
        sent_sessions: Vec::new(),
        queues: Default::default(),
        no_account: None,
        held_pools: Default::default(),
        notify: notifier.handle(),
        counters: counters.clone(),
        stop_after_swap: None,
        hooks_silent: Default::default(),
        hooks_silent_seen: Default::default(),
        feed,
        published_sessions: Default::default(),
        config,
    };
    let roles = Roles {
        http: {
            let (stop, thread) = http.into_parts();
            Role::new("http", stop, thread)
        },
        event_stream: Role::new("event stream", (stream_stop, stream.clients), stream.thread),
        dispatcher: Role::new("dispatcher", dispatcher.input, dispatcher.thread),
        fleet: fleet.map(|f| Role::new("fleet", f.stop, f.thread)),
        monitor: Role::new("quota monitor", monitor.stop, monitor.thread),
        switcher: Role::new("switcher", switcher.requests, switcher.thread),
        watcher: Role::new("session watcher", watcher.requests, watcher.thread),
        events: Role::new("event watcher", events.stop, events.thread),
        notifier: {
            let (stop, thread) = notifier.into_parts();
            // Its flush (JOIN_GRACE at most) plus the time to end.
            Role::new("notifier", stop, thread).grace(JOIN_GRACE + Duration::from_millis(250))
        },
        signals: Role::new("signals", CloseOnDrop(sig_handle), sig_thread),
    };
    let inputs = Inputs {
        signals: sig_rx,
        hooks: events_rx,
        sessions: report_rx,
        switcher: active_rx,
        http: control_rx,
        dispatcher: dispatch_rx,
        monitor_gone: monitor.gone.clone(),
        ticker: tick(daemon.config.lifecycle.interval),
        interval: daemon.config.lifecycle.interval,
        watchdog: Systemd::watchdog_interval().map(tick).unwrap_or_else(never),
    };
    Ok(Started {
        daemon,
        inputs,
        roles,
        lock: state_lock,
    })
}

/// What must hold before `run` touches tmux: tmux answers, every account
/// shares the state folders through the right symlinks, the claude binary
/// exists. Returns the claude binary's path.
pub(super) fn startup_invariants(config: &Config) -> Result<PathBuf, Vec<String>> {
    let mut problems = Vec::new();
    let tmux = Tmux::new(config.tmux.socket.clone(), TMUX_DEADLINE);
    if let Err(e) = tmux.version() {
        problems.push(format!("tmux does not answer `tmux -V`: {e}"));
    }
    for problem in crate::claude::shared_folders::verify(config) {
        problems.push(format!(
            "shared folders: {problem} (fix: {})",
            problem.hint()
        ));
    }
    let binary = process::which(&config.claude.binary);
    if binary.is_none() {
        problems.push(format!(
            "claude.binary `{}` is not found or not executable",
            config.claude.binary
        ));
    }
    match binary {
        Some(b) if problems.is_empty() => Ok(b),
        _ => Err(problems),
    }
}

pub(super) fn load_book(path: &Path) -> Book {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Book::new(),
        Err(e) => {
            log::error!(
                "cannot read {}: {e}; rebuilding session records from tmux",
                path.display()
            );
            Book::new()
        }
        Ok(bytes) => match serde_json::from_slice::<SessionsFile>(&bytes) {
            Ok(f) => f.sessions,
            Err(e) => {
                let aside = path.with_extension(format!("json.corrupt-{}", now_ms()));
                log::error!(
                    "{} is corrupt ({e}); kept as {} and rebuilt from tmux",
                    path.display(),
                    aside.display()
                );
                let _ = std::fs::rename(path, &aside);
                Book::new()
            }
        },
    }
}
