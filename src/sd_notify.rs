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
        Notifier { socket: std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty()) }
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

fn send(path: &str, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}
