//! The fleet role: this machine's link to the other daemons through Redis
//! (`fleet.redis`; docs/fleet.md). Two threads:
//!
//! - `fleet`: owns the command connection. Every second it renews this
//!   machine's lease (which account it runs on, how many sessions) when due
//!   or changed, reads every machine's lease and the claims into the shared
//!   [`FleetView`], and every [`CATCH_UP`] (and at once on a rejoin) reads
//!   every shared reading; it shares this machine's own readings and swap
//!   events, and answers the switcher's claims and the quota monitor's poll
//!   leases. Redis down: one warning, one notification, a retry every
//!   second; back: one line and one notification.
//! - `fleet-subscriber`: its own connection `SUBSCRIBE`d to the readings and
//!   events channels: other machines' readings go to the switcher (which
//!   keeps only what is newer than its own), their swap events to this
//!   machine's event stream.
//!
//! Nothing here blocks a caller longer than its own deadline: the switcher
//! and the quota monitor wait at most [`ASK_DEADLINE`] for an answer and
//! otherwise go on alone; shares are `try_send`s on a bounded queue.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, select, tick, Receiver, Sender};
use parking_lot::RwLock;

use crate::config::Config;
use crate::daemon::event_stream::{Events, Kind as EventKind};
use crate::daemon::notifier::{Kind as NoteKind, Note, NotifyHandle};
use crate::daemon::switcher::{self, SharedView};
use crate::decide::fleet::{FleetView, MachineLease};
use crate::decide::quota;
use crate::store::fleet::{
    FleetError, FleetEvent, FleetStore, PollLease, SharedReading, EVENTS_CHANNEL, READINGS_CHANNEL,
};

/// How long the switcher or the quota monitor waits for the fleet thread.
pub const ASK_DEADLINE: Duration = Duration::from_millis(400);
/// How often every shared reading is read again (the channel carries them
/// as they come; this catches what a reconnect missed).
const CATCH_UP: Duration = Duration::from_secs(10);
/// How often the fleet's leases and claims are read.
const LOOK: Duration = Duration::from_secs(1);
/// One account's readings go out at most this often from this machine
/// (status lines come several a second from busy sessions): the newest in
/// between waits, merged, so what the others see is at most this late.
const SHARE_EVERY: Duration = Duration::from_millis(250);

pub type SharedFleet = Arc<RwLock<FleetView>>;

enum Command {
    Share(SharedReading),
    Event(FleetEvent),
    /// Renew the lease now (the active account or the swap target changed).
    Renew,
    /// Asks carry the moment their asker stops waiting: one that comes
    /// later is not run at all (a claim nobody will use must not hold an
    /// account for [`crate::store::fleet::CLAIM_TTL`]).
    Claim {
        candidates: Vec<String>,
        until: Instant,
        reply: Sender<Result<Option<String>, FleetError>>,
    },
    PollLease {
        account: String,
        ttl: Duration,
        until: Instant,
        reply: Sender<Result<PollLease, FleetError>>,
    },
    /// This machine's poll of `account` read nothing: its lease goes, so
    /// another machine may poll at once.
    PollFailed(String),
}

/// What the fleet thread and the subscriber send the switcher through: the
/// role's stop empties it from outside, so neither thread can keep the
/// switcher's channel open (and its last save waiting) while stuck in a call.
#[derive(Clone, Default)]
struct Forward(Arc<parking_lot::Mutex<Option<Sender<switcher::Command>>>>);

impl Forward {
    fn send(&self, c: switcher::Command) {
        if let Some(tx) = self.0.lock().as_ref() {
            let _ = tx.send(c);
        }
    }
}

/// The fleet role's stop: dropping it ends both threads and lets go of the
/// switcher's sender at once.
pub struct Stop {
    _stop: Sender<()>,
    forward: Forward,
}

impl Drop for Stop {
    fn drop(&mut self) {
        self.forward.0.lock().take();
    }
}

/// What a claim on swap targets came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// This machine holds the claim on it.
    Account(String),
    /// Every candidate is claimed by another machine.
    AllTaken,
    /// No fleet, Redis unreachable or slow: decide alone.
    Alone,
}

/// The roles' way to the fleet; cheap to clone. With `fleet.redis` unset
/// every call is a no-op and the answers say "alone".
#[derive(Clone)]
pub struct FleetHandle {
    tx: Option<Sender<Command>>,
    view: SharedFleet,
    machine: String,
}

/// The fleet thread's end of the handle's channel, until [`Fleet::start`].
pub struct Inbox {
    rx: Receiver<Command>,
}

/// A handle and its inbox; `None` inbox when the fleet is off.
pub fn channel(config: &Config) -> (FleetHandle, Option<Inbox>) {
    let view = Arc::new(RwLock::new(FleetView {
        enabled: config.fleet.redis.is_some(),
        ..FleetView::default()
    }));
    if config.fleet.redis.is_none() {
        return (
            FleetHandle {
                tx: None,
                view,
                machine: config.fleet.machine.clone(),
            },
            None,
        );
    }
    let (tx, rx) = bounded(256);
    (
        FleetHandle {
            tx: Some(tx),
            view,
            machine: config.fleet.machine.clone(),
        },
        Some(Inbox { rx }),
    )
}

impl FleetHandle {
    /// A handle with no fleet (tests, commands).
    pub fn off() -> FleetHandle {
        FleetHandle {
            tx: None,
            view: Default::default(),
            machine: String::new(),
        }
    }

    pub fn machine(&self) -> &str {
        &self.machine
    }

    pub fn view(&self) -> FleetView {
        self.view.read().clone()
    }

    fn connected_tx(&self) -> Option<&Sender<Command>> {
        self.tx.as_ref().filter(|_| self.view.read().connected)
    }

    /// Shares one of this machine's own readings (never blocks).
    pub fn share_reading(&self, r: SharedReading) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Command::Share(r));
        }
    }

    /// Shares a swap event of this machine (never blocks): only what the
    /// other machines show (no free-text detail, which may name a path).
    pub fn swap_event(&self, kind: &str, data: &serde_json::Value) {
        if let Some(tx) = &self.tx {
            let mut shown = serde_json::Map::new();
            for k in [
                "swap_id",
                "id",
                "from",
                "to",
                "reason",
                "mode",
                "result",
                "duration_ms",
            ] {
                if let Some(v) = data.get(k) {
                    shown.insert(k.into(), v.clone());
                }
            }
            let _ = tx.try_send(Command::Event(FleetEvent {
                machine: self.machine.clone(),
                kind: kind.into(),
                data: shown.into(),
            }));
            let _ = tx.try_send(Command::Renew);
        }
    }

    /// Renews the lease now (never blocks).
    pub fn renew(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Command::Renew);
        }
    }

    /// This machine's poll of `account` read nothing (never blocks).
    pub fn poll_failed(&self, account: &str) {
        if let Some(tx) = self.connected_tx() {
            let _ = tx.try_send(Command::PollFailed(account.into()));
        }
    }

    /// Claims the first of `candidates` no other machine is moving to.
    pub fn claim(&self, candidates: &[String]) -> Claimed {
        let Some(tx) = self.connected_tx() else {
            return Claimed::Alone;
        };
        let (reply, answer) = bounded(1);
        let asked = tx.try_send(Command::Claim {
            candidates: candidates.to_vec(),
            until: Instant::now() + ASK_DEADLINE,
            reply,
        });
        if asked.is_err() {
            return Claimed::Alone;
        }
        match answer.recv_timeout(ASK_DEADLINE) {
            Ok(Ok(Some(a))) => Claimed::Account(a),
            Ok(Ok(None)) => Claimed::AllTaken,
            Ok(Err(e)) => {
                log::warn!("fleet: cannot claim a swap target ({e}); deciding alone");
                Claimed::Alone
            }
            Err(_) => {
                log::warn!(
                    "fleet: no answer to a claim within {} ms; deciding alone",
                    ASK_DEADLINE.as_millis()
                );
                Claimed::Alone
            }
        }
    }

    /// Whether this machine polls `account`'s usage endpoint now: `None`
    /// means on its own (no fleet, or Redis did not answer in time).
    pub fn poll_lease(&self, account: &str, ttl: Duration) -> Option<PollLease> {
        let tx = self.connected_tx()?;
        let (reply, answer) = bounded(1);
        tx.try_send(Command::PollLease {
            account: account.into(),
            ttl,
            until: Instant::now() + ASK_DEADLINE,
            reply,
        })
        .ok()?;
        answer.recv_timeout(ASK_DEADLINE).ok()?.ok()
    }
}

/// The two fleet threads.
pub struct Fleet {
    pub stop: Stop,
    pub thread: JoinHandle<()>,
}

impl Fleet {
    /// Starts the threads (only with `fleet.redis` set, i.e. an inbox).
    pub fn start(
        config: &Config,
        inbox: Inbox,
        handle: &FleetHandle,
        accounts_view: SharedView,
        switcher: Sender<switcher::Command>,
        feed: Events,
        notify: NotifyHandle,
    ) -> Result<Fleet, String> {
        let url = config.fleet.redis.clone().unwrap_or_default();
        let store = FleetStore::open(&url)?;
        let subscriber_store = FleetStore::open(&url)?;
        let (stop, stop_rx) = bounded::<()>(0);
        let forward = Forward(Arc::new(parking_lot::Mutex::new(Some(switcher))));
        let machine = config.fleet.machine.clone();
        let accounts: Vec<String> = config.accounts.iter().map(|a| a.name.clone()).collect();
        {
            let machine = machine.clone();
            let forward = forward.clone();
            let stop_rx = stop_rx.clone();
            let feed = feed.clone();
            std::thread::Builder::new()
                .name("fleet-subscriber".into())
                .spawn(move || subscribe(subscriber_store, &machine, &forward, &feed, &stop_rx))
                .map_err(|e| e.to_string())?;
        }
        let mut link = Link {
            store,
            machine,
            accounts,
            lease_ttl: config.fleet.lease_ttl,
            view: handle.view.clone(),
            accounts_view,
            switcher: forward.clone(),
            notify,
            answered: None,
            stop: stop_rx.clone(),
            lease: None,
            pending: Default::default(),
            shared_at: Default::default(),
            looked_at: None,
            renewed_at: None,
            read_all_at: None,
            retry_at: None,
            warned: false,
            feed: feed.clone(),
            members: None,
        };
        let thread = std::thread::Builder::new()
            .name("fleet".into())
            .spawn(move || {
                let ticker = tick(SHARE_EVERY);
                link.look();
                loop {
                    select! {
                        recv(inbox.rx) -> c => match c {
                            Ok(c) => link.handle(c),
                            Err(_) => break,
                        },
                        recv(ticker) -> _ => {
                            link.flush();
                            if link.looked_at.is_none_or(|t| t.elapsed() >= LOOK) {
                                link.look();
                            }
                        }
                        recv(stop_rx) -> _ => break,
                    }
                }
                link.leave();
            })
            .map_err(|e| e.to_string())?;
        Ok(Fleet {
            stop: Stop {
                _stop: stop,
                forward,
            },
            thread,
        })
    }
}

/// `url` with any password replaced, for the log and `/status`.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// `/status.fleet`: `None` on a machine alone.
pub fn status(fleet: &FleetHandle) -> Option<serde_json::Value> {
    let v = fleet.view();
    if !v.enabled {
        return None;
    }
    let now = now_ms();
    let at = |ms: u64| crate::sys::time::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(ms));
    let machines: Vec<serde_json::Value> = v
        .live_machines(now)
        .into_iter()
        .map(|m| {
            serde_json::json!({
                "machine": m.machine,
                "account": m.account,
                "sessions": m.sessions,
                "since": at(m.since_ms),
                "renewed": at(m.renewed_ms),
                "expires_in_ms": m.expires_ms.saturating_sub(now),
                "version": m.version,
                "this": m.machine == fleet.machine,
            })
        })
        .collect();
    let claims: Vec<serde_json::Value> = v
        .claims
        .iter()
        .filter(|c| c.expires_ms > now)
        .map(|c| serde_json::json!({"account": c.account, "machine": c.machine, "expires_in_ms": c.expires_ms - now}))
        .collect();
    Some(serde_json::json!({
        "machine": fleet.machine,
        "connected": v.connected,
        "since": v.since_ms.map(at),
        "error": v.error,
        "machines": machines,
        "claims": claims,
    }))
}

fn now_ms() -> u64 {
    quota::now_ms(SystemTime::now())
}

/// The fleet thread's state.
struct Link {
    store: FleetStore,
    machine: String,
    accounts: Vec<String>,
    lease_ttl: Duration,
    view: SharedFleet,
    accounts_view: SharedView,
    switcher: Forward,
    notify: NotifyHandle,
    /// The last error Redis answered with (said once until it changes).
    answered: Option<String>,
    /// Disconnects when the role stops.
    stop: Receiver<()>,
    /// The lease as last written: (account, since_ms, sessions, moving_to).
    lease: Option<(String, u64, u32, Option<String>)>,
    /// Readings waiting for their account's [`SHARE_EVERY`], merged.
    pending: std::collections::BTreeMap<String, Vec<SharedReading>>,
    shared_at: std::collections::HashMap<String, Instant>,
    looked_at: Option<Instant>,
    renewed_at: Option<Instant>,
    read_all_at: Option<Instant>,
    /// Disconnected: not before this.
    retry_at: Option<Instant>,
    /// The loss of Redis was said (once per outage).
    warned: bool,
    /// This machine's event stream, and the live machines as last published
    /// on it (each as the Fleet panel shows it): a change in the list is an
    /// event, so that a dashboard follows a machine that joins, moves or
    /// lapses (which happens in Redis or by the clock, not on this
    /// machine's stream).
    feed: Events,
    members: Option<Vec<serde_json::Value>>,
}

impl Link {
    fn handle(&mut self, c: Command) {
        match c {
            Command::Share(r) => {
                let queue = self.pending.entry(r.account.clone()).or_default();
                // An older reading every part of which the new one carries
                // is replaced; one with a part it lacks (the endpoint's
                // limits under a status line's windows) goes out too, with
                // its own time.
                queue.retain(|old| {
                    (old.five_hour.is_some() && r.five_hour.is_none())
                        || (old.seven_day.is_some() && r.seven_day.is_none())
                        || (old.limits.is_some() && r.limits.is_none())
                });
                queue.push(r);
                self.flush();
            }
            Command::Event(e) => {
                if self.usable() {
                    let answer = self.store.publish_event(&e);
                    self.outcome(answer);
                    if e.kind == "swap_ended" {
                        // Its lease names where it is now: its claims go.
                        let answer = self.store.release(&self.machine, &self.accounts, None);
                        self.outcome(answer);
                    }
                }
            }
            Command::Renew => {
                self.renewed_at = None;
                self.look();
            }
            Command::Claim {
                candidates,
                until,
                reply,
            } => {
                if Instant::now() >= until || !self.usable() {
                    return;
                }
                let answer = self.store.claim(&candidates, &self.machine, now_ms());
                if let Ok(Some(account)) = &answer {
                    if reply.send(Ok(Some(account.clone()))).is_ok() {
                        log::info!(
                            "fleet: claimed account {account} as this machine's swap target"
                        );
                    } else {
                        // The switcher gave up waiting: nobody moves there.
                        let r =
                            self.store
                                .release(&self.machine, std::slice::from_ref(account), None);
                        self.outcome(r);
                    }
                    self.outcome(answer);
                    return;
                }
                let _ = reply.send(answer.clone());
                self.outcome(answer);
            }
            Command::PollLease {
                account,
                ttl,
                until,
                reply,
            } => {
                if Instant::now() >= until || !self.usable() {
                    return;
                }
                // Answered late, the monitor has gone on alone and polls
                // anyway: the lease it holds then stands for that poll.
                let answer = self.store.poll_lease(&account, &self.machine, ttl);
                let _ = reply.send(answer.clone());
                self.outcome(answer);
            }
            Command::PollFailed(account) => {
                if self.usable() {
                    let answer = self.store.release(&self.machine, &[], Some(&account));
                    self.outcome(answer);
                }
            }
        }
    }

    /// Shares the readings whose account's [`SHARE_EVERY`] has passed.
    /// Redis away: they wait, the newest per account, until it is back.
    fn flush(&mut self) {
        if !self.usable() {
            return;
        }
        let due: Vec<String> = self
            .pending
            .keys()
            .filter(|a| {
                self.shared_at
                    .get(*a)
                    .is_none_or(|t| t.elapsed() >= SHARE_EVERY)
            })
            .cloned()
            .collect();
        for account in due {
            let Some(queue) = self.pending.remove(&account) else {
                continue;
            };
            for (i, r) in queue.iter().enumerate() {
                let answer = self.store.put_reading(r);
                if let Err(FleetError::Unreachable(_)) = &answer {
                    // Kept for the rejoin, with whatever came meanwhile.
                    let mut rest = queue[i..].to_vec();
                    rest.extend(self.pending.remove(&account).unwrap_or_default());
                    self.pending.insert(account, rest);
                    self.outcome(answer);
                    return;
                }
                self.outcome(answer);
            }
            self.shared_at.insert(account, Instant::now());
        }
    }

    /// Connected, or due to try again.
    fn usable(&self) -> bool {
        self.retry_at.is_none_or(|t| Instant::now() >= t)
    }

    /// Notes a call's outcome: unreachable disconnects (said once), an
    /// error Redis answered with is said once until it changes and leaves
    /// the link standing, a success after an outage rejoins.
    fn outcome<T>(&mut self, r: Result<T, FleetError>) -> Option<T> {
        match r {
            Ok(v) => {
                self.connected();
                Some(v)
            }
            Err(FleetError::Unreachable(e)) => {
                self.disconnected(e);
                None
            }
            Err(FleetError::Answered(e)) => {
                self.connected();
                if self.answered.as_deref() != Some(e.as_str()) {
                    log::warn!(
                        "fleet: Redis refused a call ({e}); the link stands, that call is skipped"
                    );
                    self.answered = Some(e);
                }
                None
            }
        }
    }

    fn connected(&mut self) {
        self.retry_at = None;
        let was = self.view.read().connected;
        if !was {
            {
                let mut v = self.view.write();
                v.connected = true;
                v.since_ms = Some(now_ms());
                v.error = None;
            }
            if self.warned {
                log::info!(
                    "fleet: Redis is back; this machine ({}) rejoined the fleet",
                    self.machine
                );
                self.notify.send(Note::new(
                    NoteKind::FleetRejoined,
                    format!("fleet: Redis is back; machine {} rejoined", self.machine),
                    serde_json::json!({"machine": self.machine}),
                ));
                self.warned = false;
            } else {
                log::info!("fleet: machine {} joined the fleet", self.machine);
            }
            // Everything shared while away, and our lease, at once.
            self.read_all_at = None;
            self.renewed_at = None;
        }
    }

    fn disconnected(&mut self, why: String) {
        self.retry_at = Some(Instant::now() + Duration::from_secs(1));
        let was = self.view.read().connected;
        {
            let mut v = self.view.write();
            if was || v.since_ms.is_none() {
                v.since_ms = Some(now_ms());
            }
            v.connected = false;
            v.error = Some(why.clone());
        }
        if !self.warned {
            self.warned = true;
            log::warn!("fleet: Redis unreachable ({why}); this machine goes on alone with its own readings and polls, retrying every second");
            self.notify.send(Note::new(
                NoteKind::FleetDisconnected,
                format!(
                    "fleet: Redis unreachable ({why}); machine {} goes on alone",
                    self.machine
                ),
                serde_json::json!({"machine": self.machine, "error": why}),
            ));
        }
    }

    /// The tick: renew the lease when due, read the fleet, catch up.
    fn look(&mut self) {
        self.looked_at = Some(Instant::now());
        if !self.usable() {
            return;
        }
        let (account, sessions, moving_to) = {
            let v = self.accounts_view.read();
            (v.active.clone(), v.sessions, v.moving_to.clone())
        };
        let now = now_ms();
        if !account.is_empty() {
            let since = match &self.lease {
                Some((a, since, _, _)) if *a == account => *since,
                _ => now,
            };
            let changed = self
                .lease
                .as_ref()
                .is_none_or(|(a, _, s, m)| *a != account || *s != sessions || *m != moving_to);
            let due = self
                .renewed_at
                .is_none_or(|t| t.elapsed() >= self.lease_ttl / 3);
            if changed || due {
                let lease = MachineLease {
                    machine: self.machine.clone(),
                    account: account.clone(),
                    sessions,
                    since_ms: since,
                    renewed_ms: now,
                    expires_ms: now + self.lease_ttl.as_millis() as u64,
                    version: env!("CARGO_PKG_VERSION").into(),
                    moving_to: moving_to.clone(),
                };
                let r = self.store.renew(&lease, self.lease_ttl);
                if self.outcome(r).is_none() {
                    return;
                }
                self.lease = Some((account, since, sessions, moving_to));
                self.renewed_at = Some(Instant::now());
            }
        }
        if self.stopping() {
            return;
        }
        let r = self.store.fleet(&self.accounts);
        let Some((machines, claims)) = self.outcome(r) else {
            return;
        };
        let members: Vec<serde_json::Value> = {
            let mut v = self.view.write();
            v.machines = machines;
            v.claims = claims;
            let mut live = v.live_machines(now_ms());
            // By name: Redis lists the leases by expiry, which every renewal
            // reorders.
            live.sort_by(|a, b| a.machine.cmp(&b.machine));
            live.into_iter()
                .map(|m| {
                    serde_json::json!({"machine": m.machine, "account": m.account, "sessions": m.sessions, "moving_to": m.moving_to})
                })
                .collect()
        };
        if self.members.as_ref() != Some(&members) {
            self.feed.publish(
                EventKind::FleetMachines,
                serde_json::json!({"machine": self.machine, "machines": members}),
            );
            self.members = Some(members);
        }
        if self.read_all_at.is_none_or(|t| t.elapsed() >= CATCH_UP) && !self.stopping() {
            let r = self.store.readings(&self.accounts);
            if let Some(readings) = self.outcome(r) {
                self.read_all_at = Some(Instant::now());
                let from_others: Vec<switcher::Command> = readings
                    .into_iter()
                    .filter(|r| r.machine != self.machine)
                    .map(switcher::Command::FleetReading)
                    .collect();
                if !from_others.is_empty() {
                    self.switcher.send(switcher::Command::Batch(from_others));
                }
            }
        }
    }

    /// The role is stopping: no more Redis calls but the last.
    fn stopping(&self) -> bool {
        matches!(
            self.stop.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// A clean stop: this machine's lease goes at once.
    fn leave(&mut self) {
        if self.view.read().connected {
            if let Err(e) = self.store.leave(&self.machine) {
                log::warn!(
                    "fleet: cannot remove this machine's lease ({e}); it lapses within {}s",
                    self.lease_ttl.as_secs()
                );
            }
        }
    }
}

/// The subscriber thread: other machines' readings to the switcher, their
/// swap events to this machine's event stream. After any failure it waits a
/// second (or until stopped) before it connects again.
fn subscribe(
    mut store: FleetStore,
    me: &str,
    switcher: &Forward,
    feed: &Events,
    stop: &Receiver<()>,
) {
    let stopped = || {
        matches!(
            stop.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    };
    let pause = || {
        stop.recv_timeout(Duration::from_secs(1))
            .is_err_and(|e| e.is_disconnected())
    };
    while !stopped() {
        // The fleet thread says an outage once; here only wait and retry.
        let Ok(mut conn) = store.subscriber(Duration::from_millis(500)) else {
            if pause() {
                return;
            }
            continue;
        };
        let mut ps = conn.as_pubsub();
        if ps.subscribe(&[READINGS_CHANNEL, EVENTS_CHANNEL]).is_err() {
            if pause() {
                return;
            }
            continue;
        }
        loop {
            if stopped() {
                return;
            }
            let msg = match ps.get_message() {
                Ok(m) => m,
                Err(e) if e.is_timeout() => continue,
                Err(_) => break,
            };
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            match msg.get_channel_name() {
                READINGS_CHANNEL => {
                    if let Ok(r) = serde_json::from_str::<SharedReading>(&payload) {
                        if r.machine != me {
                            switcher.send(switcher::Command::FleetReading(r));
                        }
                    }
                }
                EVENTS_CHANNEL => {
                    if let Ok(e) = serde_json::from_str::<FleetEvent>(&payload) {
                        if e.machine != me {
                            let mut data = e.data.clone();
                            if let Some(o) = data.as_object_mut() {
                                o.insert("machine".into(), e.machine.clone().into());
                                o.insert("kind".into(), e.kind.clone().into());
                            }
                            feed.publish(EventKind::Fleet, data);
                        }
                    }
                }
                _ => {}
            }
        }
        if pause() {
            return;
        }
    }
}
