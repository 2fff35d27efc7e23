//! The switcher: the one owner of the mutable account state (which account
//! is active, since when, by which swap). Other threads learn of it through
//! messages; nothing else writes `active.json`.
//!
//! This is the single-account core; fail-over between accounts builds on it.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use crate::atomic_file;
use crate::config::Config;

/// `<state_dir>/active.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveFile {
    pub account: String,
    /// RFC 3339.
    pub since: String,
    pub swap_id: Option<String>,
}

/// The active account as the main loop needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    pub name: String,
    pub home: PathBuf,
}

pub enum Request {
    /// A new config was applied: the active account may have been removed.
    Reconfigure(Box<Config>),
}

pub struct Switcher {
    /// Dropping it ends the thread.
    pub requests: Sender<Request>,
    pub thread: JoinHandle<()>,
}

impl Switcher {
    /// Loads (or rebuilds) the account state and announces it on `out`
    /// before returning, so the main loop knows the account at once.
    pub fn start(config: &Config, out: Sender<Active>) -> Switcher {
        let path = config.state_dir.join("active.json");
        let mut active = load_or_rebuild(&path, config);
        let _ = out.send(active.clone());
        let (requests, rx) = crossbeam_channel::unbounded::<Request>();
        let thread = std::thread::Builder::new()
            .name("switcher".into())
            .spawn(move || serve(path, &mut active, rx, out))
            .expect("spawn switcher thread");
        Switcher { requests, thread }
    }
}

fn serve(path: PathBuf, active: &mut Active, requests: Receiver<Request>, out: Sender<Active>) {
    while let Ok(req) = requests.recv() {
        match req {
            Request::Reconfigure(config) => {
                let next = load_or_rebuild(&path, &config);
                if &next != active {
                    *active = next;
                    let _ = out.send(active.clone());
                }
            }
        }
    }
}

/// Reads `active.json`; a missing, corrupt or stale one (naming an account
/// no longer configured) is reported and rebuilt with the first account.
pub fn load_or_rebuild(path: &Path, config: &Config) -> Active {
    let read = std::fs::read(path).ok().map(|b| serde_json::from_slice::<ActiveFile>(&b));
    match read {
        Some(Ok(f)) => match config.accounts.iter().find(|a| a.name == f.account) {
            Some(a) => return Active { name: a.name.clone(), home: a.home.clone() },
            None => log::warn!(
                "{} names account {:?}, which is not configured; using {:?}",
                path.display(),
                f.account,
                config.accounts[0].name
            ),
        },
        Some(Err(e)) => log::warn!(
            "{} is corrupt ({e}); rebuilding it with account {:?}",
            path.display(),
            config.accounts[0].name
        ),
        None => {}
    }
    let first = &config.accounts[0];
    let file = ActiveFile { account: first.name.clone(), since: crate::time::rfc3339(SystemTime::now()), swap_id: None };
    if let Err(e) = atomic_file::write_json(path, &file) {
        log::error!("cannot write {}: {e}", path.display());
    }
    Active { name: first.name.clone(), home: first.home.clone() }
}
