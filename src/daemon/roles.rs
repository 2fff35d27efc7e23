//! The role threads behind their handles, and the one way to stop them.

use std::time::Duration;

/// How long a role thread may take to finish at stop before we leave it.
pub(super) const JOIN_GRACE: Duration = Duration::from_millis(1500);

/// Every role thread, stopped at drop one after the other in field order.
///
/// Relative order of fields below is significant: a role stops only once
/// every sender to its channel is gone, so whoever sends to a role stops
/// before it. HTTP holds senders to the switcher and the main loop (and
/// only reads snapshots otherwise), so it stops first; the event stream
/// (fed by HTTP with clients, published to by everyone without waiting)
/// next, closing every client; the dispatcher takes
/// no new work once the main loop (already gone) sends none; the fleet
/// link sends other machines' readings to the switcher (its stop is its own
/// channel: the switcher and the monitor still hold its handle); the quota
/// monitor sends readings to the switcher, so it stops before it; with
/// HTTP, the monitor and the main loop gone, the switcher's channel closes
/// and it returns (finishing what it persists); the session watcher is
/// asked to type by the dispatcher and to stop sessions by the switcher, so
/// it comes after both; the event watcher feeds only the main loop; the notifier comes late so
/// that notes sent while the others stop are still delivered; the signal
/// thread is last, so a signal during stop is still caught, not fatal.
// The fields are only ever dropped, which is their use.
#[allow(dead_code)]
pub(super) struct Roles {
    pub(super) http: Role,
    pub(super) event_stream: Role,
    pub(super) dispatcher: Role,
    /// `fleet.redis` set: it sends other machines' readings to the switcher.
    pub(super) fleet: Option<Role>,
    pub(super) monitor: Role,
    pub(super) switcher: Role,
    pub(super) watcher: Role,
    pub(super) events: Role,
    pub(super) notifier: Role,
    pub(super) signals: Role,
}

/// One role thread and what asks it to stop. The one way to stop a role:
/// drop its `stop` (its request sender, or a stop sender nobody sends on);
/// the thread's own loop sees its channel close and returns. Then the
/// thread is joined for at most `grace`, and left running if it takes
/// longer (a stuck role must not keep the daemon from exiting).
pub(super) struct Role {
    name: &'static str,
    stop: Option<Box<dyn Send>>,
    thread: Option<std::thread::JoinHandle<()>>,
    grace: Duration,
}

impl Role {
    pub(super) fn new(
        name: &'static str,
        stop: impl Send + 'static,
        thread: std::thread::JoinHandle<()>,
    ) -> Role {
        Role {
            name,
            stop: Some(Box::new(stop)),
            thread: Some(thread),
            grace: JOIN_GRACE,
        }
    }

    /// Joins within `grace` instead of [`JOIN_GRACE`].
    pub(super) fn grace(mut self, grace: Duration) -> Role {
        self.grace = grace;
        self
    }

    /// Drops the stop sender, then joins the thread within the grace.
    fn stop_and_join(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            join_within(thread, self.name, self.grace);
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The signal thread's stop: closing the handle ends `Signals::forever`.
pub(super) struct CloseOnDrop(pub(super) signal_hook::iterator::Handle);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn join_within(handle: std::thread::JoinHandle<()>, role: &str, grace: Duration) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = handle.join();
        let _ = tx.send(());
    });
    if rx.recv_timeout(grace).is_err() {
        log::warn!("the {role} thread did not stop within {grace:?}; leaving it");
    }
}
