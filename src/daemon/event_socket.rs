//! The event socket: where `claude-failover hook` and `statusline` hand
//! their events to the daemon (`<state_dir>/events.sock`, 0600).
//!
//! Why a socket and not only files: any process of the daemon's user can
//! write a file, and every agent session runs as that user. Over a socket
//! the kernel says which process is on the other end (`SO_PEERCRED`), so
//! the daemon attributes each event to the tmux session whose pane process
//! that sender descends from, and takes the account home from that pane's
//! own environment. What the sender claims (`session`, `config_dir`) is
//! never believed: an event that names another session than the one it
//! comes from is dropped and logged, and one from a process in no tmux
//! session of ours is dropped. What an event says about its own session is
//! then cross-checked by the dispatcher against that session's transcript
//! (docs/operations.md, "Security model").
//!
//! Hook events (not status-line readings) are also written to
//! `<state_dir>/events/` before they are handed on, so a crash loses none;
//! the main loop deletes each file once applied. The event watcher hands on
//! no other file written while the daemon runs.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use crate::claude::facts;
use crate::claude::hook::{self, RecordedEvent};
use crate::daemon::event_watcher::Batch;
use crate::sys::tmux::Tmux;

/// Connections handled at once; more wait in the kernel's queue until one
/// ends (each within [`CONNECTION_DEADLINE`]). With [`MAX_LINE`] this bounds
/// what senders can make the daemon hold; only the daemon's own user can
/// connect (the socket is 0600).
const MAX_CONNECTIONS: usize = 32;
/// Writing the answer may take this long.
const IDLE: Duration = Duration::from_secs(10);
/// A connection is done within this, whatever it sends (a hook sends one
/// event in milliseconds; a transcript check waits up to [`BEAR_OUT`]).
const CONNECTION_DEADLINE: Duration = Duration::from_secs(20);
/// Longest line (one event) taken: above the largest hook payload.
const MAX_LINE: u64 = hook::MAX_PAYLOAD + 64 * 1024;
/// How deep the sender may sit below its pane's process.
const MAX_DEPTH: usize = 64;
/// tmux is asked again for its panes at most this often (a flood of events
/// from outside every session costs no more than that).
const REFRESH_EVERY: Duration = Duration::from_millis(250);
/// How long a sender's origin is asked of a tmux that does not answer,
/// within the hook's own 30 s wait for its `ok`.
const ORIGIN_WAIT: Duration = Duration::from_secs(10);
/// One tmux call of that question at most (then asked again, to
/// [`ORIGIN_WAIT`]): a sender waits at most their sum.
const ORIGIN_CALL: Duration = Duration::from_secs(3);

/// Event files the socket wrote in this run (and when): handed on already,
/// so the event watcher skips them; it hands on no other file written while
/// the daemon runs.
pub type Accepted = Arc<Mutex<HashMap<PathBuf, Instant>>>;

/// Where an event really comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The tmux session whose pane process the sender descends from.
    pub session: String,
    pub pane_pid: u32,
    /// `CLAUDE_CONFIG_DIR` in that pane process's environment.
    pub config_dir: Option<String>,
    /// That process's working folder (Claude Code's, where its
    /// transcripts are filed; a tool's `cd` does not move it).
    pub cwd: Option<PathBuf>,
}

/// A pane process as last listed: its session and its start time (so a
/// pid reused by another process is not taken for the pane).
type Panes = HashMap<u32, (String, Option<u64>)>;

/// Which tmux session a process belongs to, from tmux's own list of panes.
pub struct Origins {
    tmux: Tmux,
    panes: Mutex<Panes>,
    /// When tmux was last asked (at most every [`REFRESH_EVERY`]).
    asked: Mutex<Option<Instant>>,
}

impl Origins {
    pub fn new(tmux: Tmux) -> Origins {
        Origins {
            // A call that hangs is given up on sooner than the daemon's
            // other tmux calls, so that a retry fits in the hook's wait.
            tmux: Tmux::new(
                tmux.socket().map(String::from),
                tmux.deadline().min(ORIGIN_CALL),
            ),
            panes: Mutex::new(HashMap::new()),
            asked: Mutex::new(None),
        }
    }

    /// The session `pid` runs in: the first of its ancestors (itself
    /// included) that is a pane's process, the same process tmux listed.
    pub fn of(&self, pid: u32) -> Option<Origin> {
        let chain = ancestors(pid);
        let find = |panes: &Panes| {
            chain.iter().find_map(|p| {
                let (name, started) = panes.get(p)?;
                (started.is_some() && *started == start_time(*p)).then(|| (*p, name.clone()))
            })
        };
        let mut found = find(&self.panes.lock());
        // Until tmux has answered once: a tmux slow to answer (a loaded
        // machine) must not make a hook of ours look like an outsider's, as
        // its event would be lost (a file a hook leaves while the daemon
        // runs is never applied).
        let give_up = Instant::now() + ORIGIN_WAIT;
        while found.is_none() {
            // A pane tmux has not been asked about yet (a session that just
            // started): ask, at most every REFRESH_EVERY (a sender waits its
            // turn), with no lock held that a cached answer needs.
            let due = loop {
                if Instant::now() >= give_up {
                    break false;
                }
                let wait = {
                    let mut asked = self.asked.lock();
                    match *asked {
                        Some(t) if t.elapsed() < REFRESH_EVERY => REFRESH_EVERY - t.elapsed(),
                        _ => {
                            *asked = Some(Instant::now());
                            break true;
                        }
                    }
                };
                std::thread::sleep(wait);
                // Another sender may have asked meanwhile.
                if let Some(f) = find(&self.panes.lock()) {
                    found = Some(f);
                    break false;
                }
            };
            if !due {
                break;
            }
            match self.tmux.list_sessions() {
                Ok(list) => {
                    let fresh: Panes = list
                        .into_iter()
                        .filter_map(|s| {
                            let pid = s.pane_pid?;
                            Some((pid, (s.name, start_time(pid))))
                        })
                        .collect();
                    *self.panes.lock() = fresh;
                    found = find(&self.panes.lock());
                    break;
                }
                Err(e) if Instant::now() >= give_up => {
                    log::warn!(
                        "event socket: tmux did not say which session pid {pid} runs in within {ORIGIN_WAIT:?} ({e}); its event is taken for an outsider's"
                    );
                    break;
                }
                Err(e) => log::debug!("event socket: tmux did not answer ({e}); asked again"),
            }
        }
        let (pane_pid, session) = found?;
        Some(Origin {
            session,
            pane_pid,
            config_dir: crate::daemon::session_watcher::process_env(
                pane_pid,
                facts::ENV_CONFIG_DIR,
            ),
            cwd: std::fs::read_link(format!("/proc/{pane_pid}/cwd")).ok(),
        })
    }
}

/// When process `pid` started (clock ticks since boot, `/proc/<pid>/stat`
/// field 22): with the pid, names one process for good.
fn start_time(pid: u32) -> Option<u64> {
    crate::sys::process::stat_fields(pid)?.get(19)?.parse().ok()
}

/// `pid`, its parent, and so on up to init (at most [`MAX_DEPTH`]).
fn ancestors(pid: u32) -> Vec<u32> {
    let mut chain = vec![pid];
    let mut p = pid;
    while chain.len() < MAX_DEPTH {
        match parent_of(p) {
            Some(pp) if pp > 1 && !chain.contains(&pp) => {
                chain.push(pp);
                p = pp;
            }
            _ => break,
        }
    }
    chain
}

/// The parent pid in `/proc/<pid>/stat` (field 4).
fn parent_of(pid: u32) -> Option<u32> {
    crate::sys::process::stat_fields(pid)?.get(1)?.parse().ok()
}

/// How long a `Stop` or `StopFailure` waits for its transcript to say the same.
const BEAR_OUT: Duration = Duration::from_secs(3);

/// A `Stop` or `StopFailure` counts only when its session's own transcript
/// (under the account home its pane runs with, of the conversation it
/// names) ends the way such an event says a turn ended: with the model's
/// answer, or with an API error. The answer and the error recorded are then
/// the transcript's, not the sender's. A process inside the session that
/// sends one while the turn is still at work (a tool call from the agent is
/// one) is not believed; the daemon checks that the conversation is the
/// session's current one.
pub fn borne_out(ev: &mut RecordedEvent, cwd: Option<&Path>, wait: Duration) -> Result<(), String> {
    use facts::LastEntry;
    let hook = ev.hook_name().to_string();
    if hook != "Stop" && hook != "StopFailure" {
        return Ok(());
    }
    let home = ev
        .config_dir
        .clone()
        .ok_or("its pane has no account home")?;
    let id = ev
        .field("session_id")
        .filter(|id| facts::plausible_conversation_id(id))
        .ok_or("it names no conversation")?
        .to_string();
    // The folder is Claude Code's own (its process's, or the session's
    // record), never the sender's word.
    let cwd = cwd.ok_or("its session's folder is unknown")?;
    let path = facts::transcript_path(Path::new(&home), cwd, &id);
    // Claude Code writes its transcript a moment after the hooks start:
    // wait for the entry the event speaks of, not an earlier turn's.
    let claimed = ev
        .field("last_assistant_message")
        .map(facts::canonical_prompt);
    let says = |text: &str| {
        let text = facts::canonical_prompt(text);
        match claimed.as_deref() {
            None => true,
            // A turn that ended with no text (thinking only, say).
            Some(c) if text.is_empty() || c.is_empty() => text == c,
            // The event may carry only the last block of the answer.
            Some(c) => c.ends_with(text.as_str()) || text.ends_with(c),
        }
    };
    let deadline = Instant::now() + wait;
    let mut read_at_len = None;
    let mut newest = facts::LastEntry::Nothing;
    loop {
        // Parsed again only when the transcript grew.
        let len = facts::transcript_len(&path);
        if read_at_len != Some(len) {
            read_at_len = Some(len);
            newest = facts::transcript_last_entry(&path);
        }
        let last = newest.clone();
        let payload = ev
            .payload
            .as_object_mut()
            .ok_or("its payload is no object")?;
        match (hook.as_str(), last) {
            ("Stop", LastEntry::Answer(text)) if says(&text) => {
                payload.insert("last_assistant_message".into(), text.into());
                ev.reparse();
                return Ok(());
            }
            ("StopFailure", LastEntry::ApiError { error, text }) if says(&text) => {
                // The transcript's kind of error, or none: never the sender's.
                match error {
                    Some(error) => payload.insert("error".into(), error.into()),
                    None => payload.remove("error"),
                };
                payload.insert("last_assistant_message".into(), text.into());
                ev.reparse();
                return Ok(());
            }
            (_, last) if Instant::now() >= deadline => {
                return Err(match last {
                    LastEntry::Nothing => "it has no message".into(),
                    LastEntry::User => "the model has not answered yet".into(),
                    LastEntry::ToolCall => "a tool call is running".into(),
                    LastEntry::Answer(_) if hook == "Stop" => "its last answer is another".into(),
                    LastEntry::Answer(_) => "it ends with an answer, not an error".into(),
                    LastEntry::ApiError { .. } if hook == "StopFailure" => {
                        "its last error is another".into()
                    }
                    LastEntry::ApiError { .. } => "it ends with an error, not an answer".into(),
                });
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The sending process and its user, as the kernel recorded them at connect.
fn peer(stream: &UnixStream) -> std::io::Result<(u32, u32)> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((cred.pid as u32, cred.uid))
}

/// Binds the socket (0600; a stale one from a dead daemon is replaced: the
/// state lock says none is alive) and serves it on its own thread, handing
/// each event on to `out`.
pub fn start(
    state_dir: &Path,
    origins: Origins,
    accepted: Accepted,
    out: Sender<Batch>,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = state_dir.join(hook::SOCKET);
    if path.as_os_str().len() > 100 {
        return Err(std::io::Error::other(format!(
            "{} is too long for a unix socket (at most 100 bytes): choose a shorter state_dir",
            path.display()
        )));
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let events_dir = state_dir.join(hook::EVENTS_DIR);
    let shared = Arc::new(Shared {
        origins,
        accepted,
        out,
        events_dir,
        busy: AtomicUsize::new(0),
        warned: Mutex::new(HashMap::new()),
        uid: unsafe { libc::geteuid() },
    });
    std::thread::Builder::new()
        .name("event-socket".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let stream = match conn {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of descriptors or similar: wait, go on.
                        shared.warn("accept", format!("event socket: accept failed: {e}"));
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                };
                // At the cap, the next sender waits in the kernel's queue
                // (every connection ends within its deadline) rather than
                // being refused: a refused hook's event would be lost.
                let mut said = false;
                while shared.busy.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    if !said {
                        shared.warn(
                            "busy",
                            format!("event socket: {MAX_CONNECTIONS} senders at once; the next ones wait"),
                        );
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                shared.busy.fetch_add(1, Ordering::SeqCst);
                let shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("event-sender".into())
                    .spawn({
                        let shared = shared.clone();
                        move || {
                            shared.serve(stream);
                            shared.busy.fetch_sub(1, Ordering::SeqCst);
                        }
                    });
                if spawned.is_err() {
                    shared.busy.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })?;
    Ok(())
}

/// What became of one line.
enum Taken {
    Event(PathBuf, Box<RecordedEvent>),
    Skipped,
    /// From a process in no session of ours: the connection ends.
    Outsider,
}

struct Shared {
    origins: Origins,
    accepted: Accepted,
    out: Sender<Batch>,
    events_dir: PathBuf,
    busy: AtomicUsize,
    /// Last time each kind of warning was logged (one line a minute each).
    warned: Mutex<HashMap<&'static str, Instant>>,
    uid: u32,
}

impl Shared {
    fn warn(&self, kind: &'static str, line: String) {
        let mut w = self.warned.lock();
        if w.get(kind)
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            w.insert(kind, Instant::now());
            log::warn!("{line}");
        }
    }

    fn serve(&self, stream: UnixStream) {
        let _ = stream.set_read_timeout(Some(IDLE));
        let _ = stream.set_write_timeout(Some(IDLE));
        let origin = match peer(&stream) {
            Ok((_, uid)) if uid != self.uid => {
                self.warn(
                    "uid",
                    format!("event socket: a sender of user {uid} refused"),
                );
                return;
            }
            Ok((pid, _)) => self.origins.of(pid).ok_or(pid),
            Err(e) => {
                self.warn("cred", format!("event socket: no peer credentials: {e}"));
                return;
            }
        };
        // Read by hand against one deadline for the whole connection: a
        // sender that trickles a byte now and then cannot hold its slot.
        let _ = stream.set_read_timeout(Some(Duration::from_millis(250)));
        let deadline = Instant::now() + CONNECTION_DEADLINE;
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut eof = false;
        let mut taken = 0usize;
        loop {
            // The whole lines read so far, handed on together: a flood is one
            // batch per read, not one turn of the main loop per event.
            let mut batch: Batch = Vec::new();
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                match self.take(&line, &origin) {
                    Taken::Event(path, ev) => {
                        batch.push((path, *ev));
                        taken += 1;
                    }
                    Taken::Skipped => {}
                    Taken::Outsider => {
                        let _ = (&stream).write_all(b"ok 0\n");
                        return;
                    }
                }
            }
            if !batch.is_empty() && self.out.send(batch).is_err() {
                return;
            }
            if pending.len() as u64 > MAX_LINE {
                self.warn(
                    "long",
                    "event socket: an event over the size cap; sender dropped".into(),
                );
                return;
            }
            if eof {
                break;
            }
            if Instant::now() >= deadline {
                self.warn(
                    "slow",
                    format!("event socket: a sender still sending after {CONNECTION_DEADLINE:?}; dropped"),
                );
                break;
            }
            match (&stream).read(&mut chunk) {
                Ok(0) => eof = true,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => break,
            }
        }
        let _ = (&stream).write_all(format!("ok {taken}\n").as_bytes());
    }

    /// One line: the event to hand on, or why not.
    fn take(&self, line: &[u8], origin: &Result<Origin, u32>) -> Taken {
        let Ok(mut ev) = RecordedEvent::from_json(line) else {
            self.warn(
                "parse",
                "event socket: a line that is no event; skipped".into(),
            );
            return Taken::Skipped;
        };
        let origin = match &origin {
            Ok(o) => o,
            Err(pid) => {
                self.warn(
                        "outside",
                        format!(
                            "event socket: a {} event from pid {pid}, which runs in no tmux session of ours: ignored",
                            kind_of(&ev)
                        ),
                    );
                return Taken::Outsider;
            }
        };
        if let Some(claimed) = ev.session.as_deref().filter(|c| *c != origin.session) {
            self.warn(
                    "claimed",
                    format!(
                        "event socket: a {} event claiming session {claimed:?} came from session {:?}: ignored",
                        kind_of(&ev),
                        origin.session
                    ),
                );
            return Taken::Skipped;
        }
        ev.session = Some(origin.session.clone());
        ev.config_dir = origin.config_dir.clone();
        if let Err(why) = borne_out(&mut ev, origin.cwd.as_deref(), BEAR_OUT) {
            self.warn(
                    "unborne",
                    format!(
                        "event socket: a {} event from session {:?} that its transcript does not bear out ({why}): ignored",
                        kind_of(&ev),
                        origin.session
                    ),
                );
            return Taken::Skipped;
        }
        ev.verified = true;
        let path = if ev.kind == "statusline" {
            // A reading: the newest counts, a lost one is harmless.
            PathBuf::new()
        } else {
            match self.persist(&ev) {
                Ok(p) => p,
                Err(e) => {
                    self.warn(
                        "persist",
                        format!("event socket: cannot keep an event: {e}"),
                    );
                    PathBuf::new()
                }
            }
        };
        Taken::Event(path, Box::new(ev))
    }

    /// Writes the event into `events/` (its name known as ours first).
    fn persist(&self, ev: &RecordedEvent) -> std::io::Result<PathBuf> {
        let path = hook::event_path(&self.events_dir, &ev.kind);
        self.accepted.lock().insert(path.clone(), Instant::now());
        let bytes = serde_json::to_vec(ev).map_err(std::io::Error::other)?;
        if let Err(e) = crate::store::atomic_file::write(&path, &bytes) {
            self.accepted.lock().remove(&path);
            return Err(e);
        }
        Ok(path)
    }
}

/// The event's name for a log line (its hook, else its kind), escaped.
fn kind_of(ev: &RecordedEvent) -> String {
    let name = match ev.hook_name() {
        "" => ev.kind.as_str(),
        h => h,
    };
    name.chars().take(40).flat_map(char::escape_debug).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_past_a_name_with_spaces_and_parentheses() {
        let me = std::process::id();
        let parent = parent_of(me).expect("our parent");
        assert_eq!(parent, std::os::unix::process::parent_id());
        let chain = ancestors(me);
        assert_eq!(chain[0], me);
        assert_eq!(chain.get(1), Some(&parent));
        assert_eq!(parent_of(u32::MAX), None);
    }

    #[test]
    fn peer_credentials_name_the_connecting_process() {
        let (a, b) = UnixStream::pair().unwrap();
        let (pid, uid) = peer(&a).unwrap();
        assert_eq!(pid, std::process::id());
        assert_eq!(uid, unsafe { libc::geteuid() });
        drop(b);
    }
}
