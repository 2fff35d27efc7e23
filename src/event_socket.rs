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
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use crate::claude_facts as facts;
use crate::event_watcher::Batch;
use crate::hook::{self, RecordedEvent};
use crate::tmux::Tmux;

/// Connections handled at once; more are closed at once (the hook then
/// leaves a file, which a running daemon does not take: logged). With
/// [`MAX_LINE`] this bounds what senders can make the daemon hold; only the
/// daemon's own user can connect (the socket is 0600).
const MAX_CONNECTIONS: usize = 16;
/// A sender that says nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(10);
/// Longest line (one event) taken: above the largest hook payload.
const MAX_LINE: u64 = hook::MAX_PAYLOAD + 64 * 1024;
/// Most events handed on in one batch.
const MAX_BATCH: usize = 1000;
/// How deep the sender may sit below its pane's process.
const MAX_DEPTH: usize = 64;
/// tmux is asked again for its panes at most this often (a flood of events
/// from outside every session costs no more than that).
const REFRESH_EVERY: Duration = Duration::from_millis(250);

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
}

/// Which tmux session a process belongs to, from tmux's own list of panes.
pub struct Origins {
    tmux: Tmux,
    panes: Mutex<(Option<Instant>, HashMap<u32, String>)>,
}

impl Origins {
    pub fn new(tmux: Tmux) -> Origins {
        Origins {
            tmux,
            panes: Mutex::new((None, HashMap::new())),
        }
    }

    /// The session `pid` runs in: the first of its ancestors (itself
    /// included) that is a pane's process.
    pub fn of(&self, pid: u32) -> Option<Origin> {
        let chain = ancestors(pid);
        let find = |panes: &HashMap<u32, String>| {
            chain
                .iter()
                .find_map(|p| panes.get(p).map(|name| (*p, name.clone())))
        };
        let mut guard = self.panes.lock();
        let mut found = find(&guard.1);
        if found.is_none() && guard.0.is_none_or(|t| t.elapsed() >= REFRESH_EVERY) {
            guard.0 = Some(Instant::now());
            if let Ok(list) = self.tmux.list_sessions() {
                guard.1 = list
                    .into_iter()
                    .filter_map(|s| Some((s.pane_pid?, s.name)))
                    .collect();
            }
            found = find(&guard.1);
        }
        drop(guard);
        let (pane_pid, session) = found?;
        Some(Origin {
            session,
            pane_pid,
            config_dir: crate::session_watcher::process_env(pane_pid, facts::ENV_CONFIG_DIR),
        })
    }
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

/// The parent pid in `/proc/<pid>/stat` (the field after the name, which
/// is in parentheses and may itself hold spaces or parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
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
pub fn borne_out(ev: &mut RecordedEvent, wait: Duration) -> Result<(), String> {
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
    let cwd = ev.field("cwd").ok_or("it names no folder")?.to_string();
    let path = facts::transcript_path(Path::new(&home), Path::new(&cwd), &id);
    // Claude Code writes its transcript a moment after the hooks start:
    // wait for the entry the event speaks of, not an earlier turn's.
    let claimed = ev
        .field("last_assistant_message")
        .map(facts::canonical_prompt);
    let says = |text: &str| {
        let text = facts::canonical_prompt(text);
        claimed
            .as_deref()
            .is_none_or(|c| !text.is_empty() && c.ends_with(text.as_str()))
    };
    let deadline = Instant::now() + wait;
    loop {
        let last = facts::transcript_last_entry(&path);
        let payload = ev
            .payload
            .as_object_mut()
            .ok_or("its payload is no object")?;
        match (hook.as_str(), last) {
            ("Stop", LastEntry::Answer(text)) if says(&text) => {
                payload.insert("last_assistant_message".into(), text.into());
                return Ok(());
            }
            ("StopFailure", LastEntry::ApiError { error, text }) if says(&text) => {
                if let Some(error) = error {
                    payload.insert("error".into(), error.into());
                }
                payload.insert("last_assistant_message".into(), text.into());
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
                if shared.busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    shared.busy.fetch_sub(1, Ordering::SeqCst);
                    shared.warn(
                        "busy",
                        format!("event socket: more than {MAX_CONNECTIONS} senders at once; one refused"),
                    );
                    continue;
                }
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
        let mut reader = BufReader::new(&stream);
        let mut taken = 0usize;
        let mut batch: Batch = Vec::new();
        loop {
            let mut line = Vec::new();
            match (&mut reader)
                .take(MAX_LINE + 1)
                .read_until(b'\n', &mut line)
            {
                Ok(0) => break,
                Ok(_) if line.len() as u64 > MAX_LINE => {
                    self.warn(
                        "long",
                        "event socket: an event over the size cap; sender dropped".into(),
                    );
                    return;
                }
                Ok(_) => {}
                // Idle or gone: what was taken still goes on.
                Err(_) => break,
            }
            let Ok(mut ev) = serde_json::from_slice::<RecordedEvent>(&line) else {
                self.warn(
                    "parse",
                    "event socket: a line that is no event; skipped".into(),
                );
                continue;
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
                    continue;
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
                continue;
            }
            ev.session = Some(origin.session.clone());
            ev.config_dir = origin.config_dir.clone();
            if let Err(why) = borne_out(&mut ev, BEAR_OUT) {
                self.warn(
                    "unborne",
                    format!(
                        "event socket: a {} event from session {:?} that its transcript does not bear out ({why}): ignored",
                        kind_of(&ev),
                        origin.session
                    ),
                );
                continue;
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
            batch.push((path, ev));
            taken += 1;
            // What arrived together goes on together (a flood is one batch
            // per buffer, not one turn of the main loop per event).
            if (reader.buffer().is_empty() || batch.len() >= MAX_BATCH)
                && self.out.send(std::mem::take(&mut batch)).is_err()
            {
                return;
            }
        }
        if !batch.is_empty() && self.out.send(batch).is_err() {
            return;
        }
        let _ = (&stream).write_all(format!("ok {taken}\n").as_bytes());
    }

    /// Writes the event into `events/` (its name known as ours first).
    fn persist(&self, ev: &RecordedEvent) -> std::io::Result<PathBuf> {
        let path = hook::event_path(&self.events_dir, &ev.kind);
        self.accepted.lock().insert(path.clone(), Instant::now());
        let bytes = serde_json::to_vec(ev).map_err(std::io::Error::other)?;
        if let Err(e) = crate::atomic_file::write(&path, &bytes) {
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
