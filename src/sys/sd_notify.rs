//! systemd's notify protocol (`Type=notify`): datagrams to `$NOTIFY_SOCKET`.
//! Without that variable every call does nothing.
//!
//! The datagrams go out from a thread of their own, never from the caller:
//! a send on a unix datagram socket blocks while the receiver's queue is
//! full (`net.unix.max_dgram_qlen`, 10 by default), and a receiver that is
//! slow to read (systemd under load, a test that reads the socket only now
//! and then) would otherwise freeze the main loop on a watchdog ping, with
//! everything that depends on it: a swap's relaunch, hook events, status.
//! State changes (`READY=1`, `RELOADING=1`, `STOPPING=1`) are sent in order;
//! watchdog pings coalesce to at most one waiting, since a ping queued
//! behind another adds nothing.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

/// The notify socket's sender thread, if `NOTIFY_SOCKET` is set.
pub struct Systemd {
    // Relative order of fields is significant: `outbox` drops first, which
    // ends the thread once it has sent what is queued; `done` then tells
    // `Drop` it finished.
    outbox: Option<Sender<Message>>,
    ping_waiting: Arc<AtomicBool>,
    done: Option<Receiver<()>>,
    /// How long `Drop` waits for queued messages to go out.
    flush_grace: Duration,
}

enum Message {
    State(String),
    Ping,
}

impl Systemd {
    pub fn from_env() -> Systemd {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty());
        Systemd::to_socket(socket)
    }

    /// A notifier for `socket` (`None`: every call does nothing).
    pub fn to_socket(socket: Option<String>) -> Systemd {
        let ping_waiting = Arc::new(AtomicBool::new(false));
        let mut n = Systemd {
            outbox: None,
            ping_waiting: ping_waiting.clone(),
            done: None,
            flush_grace: Duration::from_millis(1500),
        };
        let Some(path) = socket else {
            return n;
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let spawned = std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || {
                serve(&path, rx, &ping_waiting);
                let _ = done_tx.send(());
            });
        match spawned {
            Ok(_) => {
                n.outbox = Some(tx);
                n.done = Some(done_rx);
            }
            Err(e) => log::warn!("sd_notify: cannot start its thread, notifications off: {e}"),
        }
        n
    }

    /// How often to ping the watchdog: half of `WATCHDOG_USEC`, when set for us.
    pub fn watchdog_interval() -> Option<std::time::Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID") {
            if pid.parse::<u32>().ok() != Some(std::process::id()) {
                return None;
            }
        }
        (usec > 0).then(|| std::time::Duration::from_micros(usec / 2))
    }

    /// `RELOADING=1` with `MONOTONIC_USEC`, as systemd's `Type=notify-reload` wants.
    pub fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// Queues `state` (e.g. `READY=1`); never blocks. Failures are logged
    /// by the sender thread, never fatal.
    pub fn notify(&self, state: &str) {
        if let Some(out) = &self.outbox {
            let _ = out.send(Message::State(state.to_string()));
        }
    }

    /// `WATCHDOG=1`; never blocks, and at most one ping waits to be sent.
    pub fn watchdog(&self) {
        let Some(out) = &self.outbox else {
            return;
        };
        if !self.ping_waiting.swap(true, Ordering::AcqRel) {
            let _ = out.send(Message::Ping);
        }
    }
}

impl Drop for Systemd {
    /// Lets queued messages (`STOPPING=1` at the end) go out, for a bounded time.
    fn drop(&mut self) {
        drop(self.outbox.take());
        if let Some(done) = self.done.take() {
            if done.recv_timeout(self.flush_grace).is_err() {
                log::warn!("sd_notify: the notify socket did not take our last messages in time");
            }
        }
    }
}

fn serve(path: &str, messages: Receiver<Message>, ping_waiting: &AtomicBool) {
    let mut warned = false;
    for m in messages {
        let state = match m {
            Message::State(s) => s,
            Message::Ping => {
                ping_waiting.store(false, Ordering::Release);
                "WATCHDOG=1".to_string()
            }
        };
        match send(path, &state) {
            Ok(()) => warned = false,
            // One warning per run of failures: a missing socket fails every ping.
            Err(e) if !warned => {
                log::warn!("sd_notify {state:?} to {path}: {e}");
                warned = true;
            }
            Err(_) => {}
        }
    }
}

/// A receiver whose queue is full (it stopped reading) makes a datagram
/// send block: bounded, so the notify thread drains its queue and stops in time.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

fn send(path: &str, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    sock.set_write_timeout(Some(SEND_TIMEOUT))?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// The cause of the red `endpoints_notifications_sd_notify_and_reloads`:
    /// a receiver that does not read filled its queue with watchdog pings
    /// and the next ping blocked the daemon's main loop in `sendto` until
    /// the swap waiting on that loop gave up.
    #[test]
    fn a_receiver_that_does_not_read_never_blocks_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let n = Systemd::to_socket(Some(path.to_string_lossy().into_owned()));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let caller = std::thread::spawn(move || {
            let t = Instant::now();
            n.notify("READY=1");
            // Far more than the socket queue holds (10 by default).
            for _ in 0..200 {
                n.watchdog();
            }
            n.reloading();
            let _ = tx.send(t.elapsed());
            n
        });
        let elapsed = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("notify/watchdog blocked on a full notify socket");
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
        // Once the receiver reads, the states come in order and the pings
        // did not pile up: READY, at most a queue's worth of pings, RELOADING.
        let n = caller.join().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got
            .last()
            .is_some_and(|m: &String| m.starts_with("RELOADING=1"))
        {
            let len = sock.recv(&mut buf).expect("RELOADING=1 never arrived");
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        assert_eq!(got[0], "READY=1");
        let pings = got.iter().filter(|m| *m == "WATCHDOG=1").count();
        assert!((1..=12).contains(&pings), "{got:?}");
        n.notify("STOPPING=1");
        drop(n);
        let len = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1", "queued states go out at drop");
    }
}
