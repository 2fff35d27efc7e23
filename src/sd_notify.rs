//! systemd's notify protocol (`Type=notify`): datagrams to `$NOTIFY_SOCKET`.
//! Without that variable every call does nothing.

use std::os::unix::net::UnixDatagram;

/// The notify socket from the environment, if any.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: Option<String>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Notifier {
            socket: std::env::var("NOTIFY_SOCKET")
                .ok()
                .filter(|s| !s.is_empty()),
        }
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

    /// Sends `state` (e.g. `READY=1`); failures are logged, never fatal.
    pub fn notify(&self, state: &str) {
        let Some(path) = &self.socket else {
            return;
        };
        if let Err(e) = send(path, state) {
            log::warn!("sd_notify {state:?} to {path}: {e}");
        }
    }
}

/// A receiver whose queue is full (it stopped reading) makes a datagram
/// send block: bounded, so the main loop that sends is never wedged by it.
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
