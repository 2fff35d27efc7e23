//! The hook-event watcher: watches `<state_dir>/events/` (inotify, plus a
//! full rescan at start, on queue overflow and every interval). Events
//! arrive over the event socket (`event_socket`), which keeps each hook
//! event there as a file until the main loop has applied it, so an event is
//! never lost to a crash, only possibly applied twice (which the state
//! machine tolerates). This watcher hands on, oldest first and marked
//! unverified, only the files that were there when the socket began to
//! listen: those a crashed run left, and those hooks left while no daemon
//! ran. Any other file came from no hook the socket heard (a hook leaves a
//! file only when no daemon answers), so it is moved to `events/rejected/`
//! and logged, never applied.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{select, tick, Receiver, Sender};
use inotify::{Inotify, WatchMask};

use crate::claude::hook::RecordedEvent;
use crate::store::atomic_file;

/// A batch of events, oldest first, with the file each came from.
pub type Batch = Vec<(PathBuf, RecordedEvent)>;

pub struct EventWatcher {
    /// Dropping it ends the thread.
    pub stop: Sender<()>,
    pub thread: JoinHandle<()>,
}

impl EventWatcher {
    /// Starts the socket (see `event_socket`), then the watcher of the
    /// folder, which replays what is older than the socket.
    pub fn start(
        state_dir: &Path,
        tmux: crate::sys::tmux::Tmux,
        rescan: Duration,
        out: Sender<Batch>,
    ) -> std::io::Result<EventWatcher> {
        let dir = state_dir.join(crate::claude::hook::EVENTS_DIR);
        std::fs::create_dir_all(&dir)?;
        let accepted = crate::daemon::event_socket::Accepted::default();
        crate::daemon::event_socket::start(
            state_dir,
            crate::daemon::event_socket::Origins::new(tmux),
            accepted.clone(),
            out.clone(),
        )?;
        // What is in the folder once the socket listens is all there is to
        // replay: from then on a hook hands its event to the socket.
        let replay: HashSet<PathBuf> = event_files(&dir).unwrap_or_default().into_iter().collect();
        let wake = watch(&dir)?;
        let (stop, stop_rx) = crossbeam_channel::bounded(0);
        let thread = std::thread::Builder::new()
            .name("event-watcher".into())
            .spawn(move || {
                let mut seen = Seen {
                    sent: HashSet::new(),
                    accepted,
                    replay,
                };
                serve(dir, rescan, wake, stop_rx, out, &mut seen)
            })?;
        Ok(EventWatcher { stop, thread })
    }
}

/// Starts the inotify reader. It blocks in `read`, so it runs detached and
/// ends with the process; it only ever sends wake-ups.
fn watch(dir: &Path) -> std::io::Result<Receiver<()>> {
    let mut inotify = Inotify::init()?;
    inotify
        .watches()
        .add(dir, WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO)?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("event-inotify".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match inotify.read_events_blocking(&mut buf) {
                    // Overflow or not, the answer is the same: scan the folder.
                    Ok(_) => {
                        if let Err(crossbeam_channel::TrySendError::Disconnected(_)) =
                            tx.try_send(())
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        log::error!("inotify on the events folder failed, relying on rescans: {e}");
                        return;
                    }
                }
            }
        })?;
    Ok(rx)
}

/// What the watcher knows of the folder's files.
struct Seen {
    /// Handed on (replayed) and not yet deleted by the main loop.
    sent: HashSet<PathBuf>,
    /// Written by the socket: handed on already.
    accepted: crate::daemon::event_socket::Accepted,
    /// The files there when the socket began to listen, not yet handed on:
    /// the only ones replayed. Any other file came from no hook.
    replay: HashSet<PathBuf>,
}

fn serve(
    dir: PathBuf,
    rescan: Duration,
    wake: Receiver<()>,
    stop: Receiver<()>,
    out: Sender<Batch>,
    seen: &mut Seen,
) {
    let ticker = tick(rescan);
    let mut wake = wake;
    loop {
        let batch = scan(&dir, seen);
        if !batch.is_empty() && out.send(batch).is_err() {
            return;
        }
        select! {
            recv(wake) -> msg => if msg.is_err() { wake = crossbeam_channel::never(); },
            recv(ticker) -> _ => {}
            recv(stop) -> _ => return,
        }
    }
}

/// The event files in `dir` (regular `*.json`, no temp files), unsorted.
fn event_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.ends_with(".json") && !atomic_file::is_temp_name(&n)
        })
        .map(|e| e.path())
        .collect())
}

/// Most files kept in `events/rejected/`; past that a rejected file is deleted.
const MAX_REJECTED: usize = 1000;

/// Reads every replayable event file not yet handed over, oldest first. A
/// file that cannot be parsed is moved to `events/corrupt/` and reported,
/// never lost; one written while the socket listened, to `events/rejected/`.
fn scan(dir: &Path, seen: &mut Seen) -> Batch {
    let mut names = match event_files(dir) {
        Ok(n) => n,
        Err(e) => {
            log::warn!("cannot read {}: {e}", dir.display());
            return Vec::new();
        }
    };
    names.sort();
    // Forget files the main loop has deleted (a name the socket is still
    // writing is kept a while).
    let present: HashSet<PathBuf> = names.iter().cloned().collect();
    seen.sent.retain(|p| present.contains(p));
    seen.accepted
        .lock()
        .retain(|p, at| present.contains(p) || at.elapsed() < Duration::from_secs(60));
    let mut batch = Vec::new();
    let mut rejected = Vec::new();
    for path in names {
        if seen.sent.contains(&path) || seen.accepted.lock().contains_key(&path) {
            continue;
        }
        if !seen.replay.remove(&path) {
            rejected.push(path);
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| RecordedEvent::from_json(&b).map_err(|e| e.to_string()))
        {
            Ok(mut ev) => {
                ev.verified = false;
                seen.sent.insert(path.clone());
                batch.push((path, ev));
            }
            Err(e) => {
                let corrupt = dir.join("corrupt");
                let _ = std::fs::create_dir_all(&corrupt);
                let target = corrupt.join(path.file_name().unwrap_or_default());
                log::warn!(
                    "event file {} is unreadable ({e}); moved to {}",
                    path.display(),
                    target.display()
                );
                let _ = std::fs::rename(&path, &target);
            }
        }
    }
    if let Some(first) = rejected.first() {
        log::warn!(
            "{} event file(s) written into {} while the daemon listens on its socket, which no hook does: not applied, moved to rejected/ (first: {:?})",
            rejected.len(),
            dir.display(),
            first.file_name().unwrap_or_default()
        );
        let into = dir.join("rejected");
        let _ = std::fs::create_dir_all(&into);
        let kept = std::fs::read_dir(&into).map(|d| d.count()).unwrap_or(0);
        for (i, path) in rejected.iter().enumerate() {
            if kept + i < MAX_REJECTED {
                let _ = std::fs::rename(path, into.join(path.file_name().unwrap_or_default()));
            } else {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    batch
}
