//! The hook-event watcher: notices new files in `<state_dir>/events/`
//! (inotify, plus a full rescan at start, on queue overflow and every
//! interval) and hands them to the main loop in recording order. The main
//! loop deletes a file once what it said is applied and persisted, so an
//! event is never lost to a crash, only possibly applied twice (which the
//! state machine tolerates).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{select, tick, Receiver, Sender};
use inotify::{Inotify, WatchMask};

use crate::atomic_file;
use crate::hook::RecordedEvent;

/// A batch of events, oldest first, with the file each came from.
pub type Batch = Vec<(PathBuf, RecordedEvent)>;

pub struct EventWatcher {
    /// Dropping it ends the thread.
    pub stop: Sender<()>,
    pub thread: JoinHandle<()>,
}

impl EventWatcher {
    pub fn start(
        dir: PathBuf,
        rescan: Duration,
        out: Sender<Batch>,
    ) -> std::io::Result<EventWatcher> {
        std::fs::create_dir_all(&dir)?;
        let wake = watch(&dir)?;
        let (stop, stop_rx) = crossbeam_channel::bounded(0);
        let thread = std::thread::Builder::new()
            .name("event-watcher".into())
            .spawn(move || serve(dir, rescan, wake, stop_rx, out))?;
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

fn serve(
    dir: PathBuf,
    rescan: Duration,
    wake: Receiver<()>,
    stop: Receiver<()>,
    out: Sender<Batch>,
) {
    let ticker = tick(rescan);
    let mut wake = wake;
    let mut sent: HashSet<PathBuf> = HashSet::new();
    loop {
        let batch = scan(&dir, &mut sent);
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

/// Reads every event file not yet handed over, oldest first. A file that
/// cannot be parsed is moved to `events/corrupt/` and reported, never lost.
fn scan(dir: &Path, sent: &mut HashSet<PathBuf>) -> Batch {
    let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.ends_with(".json") && !atomic_file::is_temp_name(&n)
            })
            .map(|e| e.path())
            .collect(),
        Err(e) => {
            log::warn!("cannot read {}: {e}", dir.display());
            return Vec::new();
        }
    };
    names.sort();
    // Forget files the main loop has deleted.
    let present: HashSet<PathBuf> = names.iter().cloned().collect();
    sent.retain(|p| present.contains(p));
    let mut batch = Vec::new();
    for path in names {
        if sent.contains(&path) {
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<RecordedEvent>(&b).map_err(|e| e.to_string()))
        {
            Ok(ev) => {
                sent.insert(path.clone());
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
    batch
}
