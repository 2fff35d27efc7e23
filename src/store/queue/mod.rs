//! The task queue of one project: plain files under `<project>/.agent-queue/`,
//! moved between folders by `rename(2)`, so that an operator can read (and
//! repair) it with `ls` and `cat`. Pure file operations: no threads, no
//! caches; every function that looks at the clock takes `now`.
//!
//! ```text
//! <project>/.agent-queue/
//!   inbox/<name>.md               waiting; optional front matter: priority, max_attempts
//!   active/<name>.md              claimed (renamed here)
//!   active/<name>.md.dispatched   its marker: session, account, claude_session_id, attempt, dispatched_at
//!   done/<name>.md                finished ...
//!   done/<name>.result.json       ... with its result (written before the rename)
//!   failed/<name>.md              given up ...
//!   failed/<name>.error.json      ... with {reason, attempts, failed_at, earlier_reasons}
//!   archive/                      done entries older than janitor.done_retention
//!   attempts.json                 failed attempts of tasks still in inbox/ or active/
//!   status.json                   sessions serving this project and the queue counts
//! ```
//!
//! Rules an operator can rely on:
//!
//! - **Tasks** are the regular files of inbox/ named `*.md` (exactly that
//!   suffix). Names starting with `.` are never looked at (temp files); other
//!   regular files are left alone and reported as ignored. A folder, a
//!   symlink (never followed) or any other non-regular entry is moved to
//!   failed/ as it is, with the reason.
//! - **Settle rule**: only a finished rename or a settled file is a task.
//!   A file is settled once it has not changed for [`SETTLE`]:
//!   `now - ctime >= SETTLE`. The kernel bumps a file's ctime on every write, truncate,
//!   `touch` and rename, so this covers "size and mtime stable" and cannot be
//!   fooled by tools that set an old or future mtime (`cp -p`, `touch -d`).
//!   Writing elsewhere and renaming into inbox (what `enqueue` does) is the
//!   clean way, and is seen at once: inotify reports the rename
//!   (`IN_MOVED_TO`) and the dispatcher skips the settle time for that name.
//!   A writer's close (`IN_CLOSE_WRITE`) only wakes a scan: `touch t.md;
//!   echo text > t.md` closes twice, and `echo ONE > t.md; echo TWO >> t.md`
//!   too, and only the settle time tells the last close from the others.
//! - **Names**: a task's name (its file name without `.md`) is at most
//!   [`MAX_NAME_BYTES`] bytes, so that it fits the file system's 255 bytes
//!   with every sidecar suffix, temp prefix and `-N` a free name may need. A
//!   longer inbox file goes to failed/ under a shortened name
//!   ([`short_stem`]: its first bytes and a hash), its full name in the
//!   reason; `enqueue` refuses to create one.
//! - **Claims that fail** (a file system error, say) back off: the name is
//!   not tried again for 1 s, then 2 s, 4 s, … up to a minute, so no error
//!   can turn into a claim loop.
//! - **Bounded parsing**: front matter holds two integers, so more than
//!   [`MAX_FRONT_MATTER_BYTES`] of it is refused before any YAML is parsed.
//! - **Bad input** (not UTF-8, over 1 MiB, broken front matter, no prompt)
//!   goes to failed/ with the reason in `<name>.error.json`. Nothing is ever
//!   deleted: every move is a rename, and a name already taken in the
//!   destination gets a `-2`, `-3`, … suffix instead of being overwritten.
//! - **Order**: priority (front matter, default 0) descending, then file
//!   name (byte order).
//! - **Attempts** of a task live in `attempts.json` (`{"<name>": {"attempts":
//!   N, "reasons": [...]}}`, written atomically) while the task is in inbox/
//!   or active/; the marker carries the number of the attempt under way. When
//!   the failed attempts reach the task's `max_attempts` (else the
//!   configured default) the task goes to failed/.
//! - **Exactly once**: a task leaves active/ only by one rename, to done/,
//!   failed/ or inbox/; a replayed `complete` finds it gone and does nothing.
//!   Crash windows and who repairs them: rename to active/ before the marker
//!   is written → the next daemon returns the marker-less task to inbox at
//!   its start (the dispatcher's recovery), and the janitor does after
//!   [`ORPHAN_GRACE`] for one that appears while it runs; result/error file written before the rename → the
//!   next attempt overwrites it; marker left after the task moved on → the
//!   janitor removes it.
//!
//! The daemon is the only process that moves files out of inbox/; `enqueue`
//! (any process) only adds to it, with a no-replace hard link.

mod format;
pub use format::*;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, FileType, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::config::{JanitorConfig, ProjectConfig};
pub use crate::daemon::status::QueueCounts;
use crate::store::atomic_file;
use crate::sys::time::{parse_rfc3339, rfc3339};

/// The queue's folder inside a project.
pub const QUEUE_DIR: &str = ".agent-queue";
/// A task must not have changed for this long before it is claimed.
pub const SETTLE: Duration = Duration::from_millis(500);
/// Largest task file, in bytes (1 MiB).
pub const MAX_TASK_BYTES: usize = 1 << 20;
/// An active task without a marker (a crash between claim's rename and its
/// marker) goes back to inbox after this long.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(10);
/// Priority of a task whose front matter does not set one.
pub const DEFAULT_PRIORITY: i64 = 0;
/// Longest task name, in bytes (the file name without `.md`). The longest
/// file the queue makes of a name is the temp file of its marker,
/// `.<name>-NNNNN.md.dispatched.tmp-<pid>-<counter>`: 1 + 200 + 6 + 14 + 5
/// + 7 + 1 + 20 = 254 bytes, within the 255 of every Linux file system.
pub const MAX_NAME_BYTES: usize = 200;
/// Longest front matter, in bytes, between its `---` lines. `priority` and
/// `max_attempts` take a few dozen; the cap keeps a hostile file from
/// holding the dispatcher in the YAML parser (deep nesting parses in
/// quadratic time).
pub const MAX_FRONT_MATTER_BYTES: usize = 4096;
/// The tracked queue counts are recounted from the folders this often,
/// whatever they say, to catch changes nobody saw (see [`Queue::tracked_counts`]).
pub const RECOUNT_EVERY: Duration = Duration::from_secs(60);
/// How many bytes of a too long name [`short_stem`] keeps.
const SHORT_STEM_KEEP: usize = 100;
/// The first and the longest back-off after a failed claim.
const CLAIM_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const CLAIM_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A folder whose mtime is younger than this when it is listed is listed
/// again next time: a change in the same clock tick may not move its mtime.
const RACY: Duration = Duration::from_secs(1);

const ATTEMPTS_FILE: &str = "attempts.json";
const STATUS_FILE: &str = "status.json";
const MARKER_SUFFIX: &str = ".md.dispatched";
const RESULT_SUFFIX: &str = ".result.json";
const ERROR_SUFFIX: &str = ".error.json";
const ENQUEUE_TEMP_PREFIX: &str = ".tmp-";
/// How many earlier failure reasons attempts.json keeps per task.
const REASONS_KEPT: usize = 10;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The folders of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    Inbox,
    Active,
    Done,
    Failed,
    Archive,
}

impl Folder {
    pub const ALL: [Folder; 5] = [
        Folder::Inbox,
        Folder::Active,
        Folder::Done,
        Folder::Failed,
        Folder::Archive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Folder::Inbox => "inbox",
            Folder::Active => "active",
            Folder::Done => "done",
            Folder::Failed => "failed",
            Folder::Archive => "archive",
        }
    }
}

impl std::fmt::Display for Folder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a queue operation failed. `Display` is one line for an operator.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("`{name}` is not a task name: {why}")]
    BadName { name: String, why: &'static str },
    /// `claim` lost the race: the file left inbox/ before it could be taken.
    #[error("task {name}: no longer in inbox/ (claimed or removed by someone else)")]
    Gone { name: String },
    #[error("task {name}: not active{}", found_in(found))]
    NotActive { name: String, found: Option<Folder> },
    /// The task's content is unusable (`claim` has moved it to failed/;
    /// `enqueue` has written nothing).
    #[error("task {name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("task {name}: {reason}")]
    Conflict { name: String, reason: String },
}

fn found_in(found: &Option<Folder>) -> String {
    match found {
        Some(f) => format!(" (it is in {f}/)"),
        None => " (no such task)".to_string(),
    }
}

type Result<T> = std::result::Result<T, QueueError>;

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> QueueError {
    let path = path.to_path_buf();
    move |source| QueueError::Io {
        action,
        path,
        source,
    }
}

/// When a file last changed (its ctime): what the settle rule compares with
/// `now`.
pub fn last_change(meta: &Metadata) -> SystemTime {
    match u64::try_from(meta.ctime()) {
        Ok(secs) => {
            UNIX_EPOCH + Duration::new(secs, meta.ctime_nsec().clamp(0, 999_999_999) as u32)
        }
        Err(_) => UNIX_EPOCH,
    }
}

/// What is left of [`ORPHAN_GRACE`] for an active task without a marker,
/// from its last change (the claim's rename): zero once it is an orphan.
fn grace_left(task: &Metadata, now: SystemTime) -> Duration {
    ORPHAN_GRACE.saturating_sub(age(now, last_change(task)))
}

fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

fn not_a_task(ft: FileType) -> &'static str {
    if ft.is_symlink() {
        "a symlink is not a task"
    } else if ft.is_dir() {
        "a folder is not a task"
    } else if ft.is_fifo() {
        "a named pipe is not a task"
    } else if ft.is_socket() {
        "a socket is not a task"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device is not a task"
    } else {
        "not a regular file, so not a task"
    }
}

fn check_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.contains('/') || name.contains('\0') {
        "it contains / or NUL"
    } else if name.starts_with('.') {
        "it starts with a dot"
    } else {
        return Ok(());
    };
    Err(QueueError::BadName {
        name: name.to_string(),
        why,
    })
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        log::warn!("cannot fsync {}: {e}", dir.display());
    }
}

/// `rename(2)` plus an fsync of both folders, so the move survives a power
/// cut. Callers pick a free destination first; nothing is overwritten.
fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    let (a, b) = (to.parent(), from.parent());
    if let Some(a) = a {
        sync_dir(a);
    }
    if let Some(b) = b.filter(|b| Some(*b) != a) {
        sync_dir(b);
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// `stem`, else `stem-2`, `stem-3`, … : the first one `taken` refuses.
fn free_stem(stem: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(stem) {
        return stem.to_string();
    }
    (2u64..)
        .map(|n| format!("{stem}-{n}"))
        .find(|c| !taken(c))
        .expect("an unbounded range has a free name")
}

/// A name that fits: the first [`SHORT_STEM_KEEP`] bytes of `stem` (cut at a
/// character boundary), `-`, and 16 hex digits of a hash of the whole name
/// (FNV-1a), so two long names with the same start stay apart.
pub fn short_stem(stem: &str) -> String {
    let mut cut = SHORT_STEM_KEEP.min(stem.len());
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    let hash = stem.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    // The kept part never carries a control character (a newline would
    // reach log lines); the hash still tells the full names apart.
    let kept: String = stem[..cut]
        .chars()
        .map(|c| if c.is_control() { '-' } else { c })
        .collect();
    format!("{kept}-{hash:016x}")
}

/// Reads at most one byte over the limit, so a huge file costs nothing.
fn read_capped(path: &Path) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut buf = Vec::new();
    f.take(MAX_TASK_BYTES as u64 + 1).read_to_end(&mut buf)?;
    Ok(buf)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| QueueError::Io {
            action: "parse",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    atomic_file::write_json(path, value).map_err(io_err("write", path))
}

// ---------------------------------------------------------------------------
// The queue
// ---------------------------------------------------------------------------

/// A claimable task seen by [`Queue::scan_inbox`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFile {
    /// File name without `.md`.
    pub name: String,
    pub path: PathBuf,
    pub priority: i64,
    /// From the front matter; `None` = the configured default.
    pub max_attempts: Option<u32>,
    /// Failed attempts so far.
    pub attempts: u32,
    pub size: u64,
    pub changed_at: SystemTime,
}

/// An inbox entry moved to failed/ by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Its name in inbox/.
    pub file: String,
    /// Its name in failed/ (differs when that name was taken).
    pub moved_to: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanResult {
    /// Priority descending, then name.
    pub ready: Vec<TaskFile>,
    /// Moved to failed/ during this scan.
    pub rejected: Vec<Rejection>,
    /// Task names changed less than [`SETTLE`] ago, or sharing the name of
    /// an active task (they wait for it to end).
    pub not_ready: Vec<String>,
    /// Entries left alone: regular files not named `*.md`, names that are not UTF-8.
    pub ignored: Vec<String>,
    /// The entries of `ignored` this queue had not reported before (each is
    /// reported once while it stays in inbox/).
    pub newly_ignored: Vec<String>,
    /// Entries that could not be looked at this time (left in place).
    pub errors: Vec<String>,
}

/// What [`Queue::claim`] hands to the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveTask {
    pub name: String,
    pub path: PathBuf,
    /// The text to send: body without front matter, trimmed.
    pub prompt: String,
    pub priority: i64,
    pub max_attempts: Option<u32>,
    /// The front matter's `slash_command`.
    pub slash_command: bool,
    pub marker: Marker,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// Moved to done/ under this name.
    Done { name: String },
    /// Already in done/: a replayed completion, nothing changed.
    AlreadyDone,
}

/// Where a failed attempt sent the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Back in inbox/ under `name`, with `attempts` failed attempts so far.
    Requeued { name: String, attempts: u32 },
    /// In failed/ under `name`, after `attempts` failed attempts.
    Failed { name: String, attempts: u32 },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JanitorReport {
    /// Active tasks without a sign of life for `stale_task_after`.
    pub stale: Vec<(String, Outcome)>,
    /// Active tasks without a marker, returned to inbox (no attempt counted).
    pub orphans_requeued: Vec<String>,
    /// Markers whose task had moved on.
    pub markers_removed: Vec<String>,
    /// Done entries moved to archive/.
    pub archived: Vec<String>,
    /// attempts.json entries whose task is no longer in inbox/ or active/.
    pub attempts_pruned: Vec<String>,
    /// Leftover links of interrupted `enqueue`s whose task is in the queue.
    pub temp_files_removed: usize,
    /// What could not be done this round (retried next round).
    pub errors: Vec<String>,
}

impl JanitorReport {
    pub fn is_empty(&self) -> bool {
        *self == JanitorReport::default()
    }
}

/// `status.json`.
#[derive(Debug, Serialize)]
struct ProjectStatus<'a> {
    project: &'a str,
    updated_at: String,
    sessions: &'a [String],
    queue: QueueCounts,
}

/// The queue of one project.
///
/// Clones share one [`Book`]: what the queue has already looked at, so that
/// an idle daemon costs a few `stat`s per turn whatever the size of done/,
/// and a claim with thousands of tasks waiting reads one file. The book only
/// saves work: every entry is checked against what the disk shows (a file's
/// identity, a folder's timestamps) before it is used.
#[derive(Debug, Clone)]
pub struct Queue {
    project: String,
    project_path: PathBuf,
    root: PathBuf,
    book: Arc<Mutex<Book>>,
    /// Task files read (their content), for tests and benchmarks.
    reads: Arc<AtomicU64>,
    /// Folders listed to count them, for tests and benchmarks.
    listings: Arc<AtomicU64>,
}

impl PartialEq for Queue {
    fn eq(&self, other: &Queue) -> bool {
        (&self.project, &self.project_path) == (&other.project, &other.project_path)
    }
}

impl Eq for Queue {}

/// Identity of a file's content as far as `stat` tells: any write, truncate,
/// rename or replacement changes one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    fn of(m: &Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// What a scan needs of a valid inbox task, remembered by file name.
#[derive(Debug, Clone, Copy)]
struct Parsed {
    id: FileId,
    priority: i64,
    max_attempts: Option<u32>,
}

/// A name whose claim failed: not tried again before `retry_at`.
#[derive(Debug, Clone, Copy)]
struct ClaimFailure {
    failures: u32,
    retry_at: SystemTime,
}

/// The tracked count of one folder, valid while the folder's stamp (its
/// identity and timestamps) is the one recorded.
#[derive(Debug, Clone, Copy, Default)]
struct FolderCount {
    count: usize,
    stamp: Option<FileId>,
    /// False when the stamp was taken too close to the folder's last change
    /// (see [`RACY`]) or a change of ours could not be accounted for.
    trusted: bool,
}

/// The folders the counts cover, in [`QueueCounts`] order.
const COUNTED: [Folder; 4] = [Folder::Inbox, Folder::Active, Folder::Done, Folder::Failed];

#[derive(Debug, Default)]
struct Book {
    parsed: HashMap<String, Parsed>,
    claim_failures: HashMap<String, ClaimFailure>,
    counts: [FolderCount; 4],
    last_recount: Option<SystemTime>,
    /// The sessions and counts status.json was last written with.
    status_written: Option<(Vec<String>, [usize; 4])>,
    /// Inbox entries reported as ignored (each is reported once).
    ignored_seen: HashSet<String>,
}

fn counted_index(f: Folder) -> Option<usize> {
    COUNTED.iter().position(|c| *c == f)
}

fn dir_stamp(dir: &Path) -> Option<FileId> {
    fs::symlink_metadata(dir).ok().map(|m| FileId::of(&m))
}

/// Whether `file` counts as a task entry of folder `f` (see [`Queue::counts`]).
fn counts_in(f: Folder, file: &str) -> bool {
    match f {
        Folder::Failed => !file.ends_with(ERROR_SUFFIX),
        _ => file.ends_with(".md"),
    }
}

/// A change of ours to some counted folders: their stamps before it, so that
/// the tracked counts can take the change in without listing the folders
/// again. Dropped without [`Tracking::finish`] (an error on the way), the
/// folders it changed are listed again at the next count.
struct Tracking<'a> {
    queue: &'a Queue,
    before: Vec<(Folder, Option<FileId>)>,
}

impl Tracking<'_> {
    /// The change is over: `deltas` is what it did to each folder's count.
    fn finish(mut self, deltas: &[(Folder, isize)]) {
        let before = std::mem::take(&mut self.before);
        let mut book = self.queue.book.lock();
        for (f, pre) in before {
            let Some(i) = counted_index(f) else { continue };
            let post = dir_stamp(&self.queue.folder(f));
            let fc = &mut book.counts[i];
            let delta = deltas
                .iter()
                .filter(|(g, _)| *g == f)
                .map(|(_, d)| *d)
                .sum::<isize>();
            if pre.is_some() && fc.stamp == pre {
                fc.count = fc.count.saturating_add_signed(delta);
                fc.stamp = post;
            } else if post != pre {
                fc.trusted = false;
            }
        }
    }
}

impl Drop for Tracking<'_> {
    fn drop(&mut self) {
        if self.before.is_empty() {
            return;
        }
        let mut book = self.queue.book.lock();
        for (f, pre) in &self.before {
            let Some(i) = counted_index(*f) else { continue };
            if dir_stamp(&self.queue.folder(*f)) != *pre {
                book.counts[i].trusted = false;
            }
        }
    }
}

impl Queue {
    pub fn new(project: impl Into<String>, project_path: impl Into<PathBuf>) -> Queue {
        let project_path = project_path.into();
        let root = project_path.join(QUEUE_DIR);
        Queue {
            project: project.into(),
            project_path,
            root,
            book: Arc::default(),
            reads: Arc::default(),
            listings: Arc::default(),
        }
    }

    /// How many task files this queue (and its clones) has read so far: the
    /// cost a scan's cache saves. Instrumentation for tests and benchmarks.
    pub fn task_file_reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// How many times this queue (and its clones) has listed a folder to
    /// count it: what the tracked counts save. Instrumentation.
    pub fn folder_listings(&self) -> u64 {
        self.listings.load(Ordering::Relaxed)
    }

    fn read_task(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        read_capped(path)
    }

    /// Starts tracking a change of ours to `folders`.
    fn track(&self, folders: &[Folder]) -> Tracking<'_> {
        Tracking {
            queue: self,
            before: folders
                .iter()
                .map(|f| (*f, dir_stamp(&self.folder(*f))))
                .collect(),
        }
    }

    pub fn for_project(p: &ProjectConfig) -> Queue {
        Queue::new(p.name.clone(), p.path.clone())
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    pub fn project_path(&self) -> &Path {
        &self.project_path
    }

    /// `<project>/.agent-queue`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn folder(&self, f: Folder) -> PathBuf {
        self.root.join(f.as_str())
    }

    /// `<folder>/<name>.md`.
    pub fn task_path(&self, f: Folder, name: &str) -> PathBuf {
        self.folder(f).join(format!("{name}.md"))
    }

    /// `active/<name>.md.dispatched`.
    pub fn marker_path(&self, name: &str) -> PathBuf {
        self.folder(Folder::Active)
            .join(format!("{name}{MARKER_SUFFIX}"))
    }

    fn sidecar(&self, f: Folder, name: &str, suffix: &str) -> PathBuf {
        self.folder(f).join(format!("{name}{suffix}"))
    }

    /// Creates the queue's folders (idempotent). The project folder itself
    /// must exist: a mistyped path is an error, not a new folder.
    pub fn ensure_layout(&self) -> Result<()> {
        if !self.project_path.is_dir() {
            return Err(QueueError::Io {
                action: "use project folder",
                path: self.project_path.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "not an existing folder"),
            });
        }
        for f in Folder::ALL {
            let dir = self.folder(f);
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        Ok(())
    }

    /// The folder holding task `name`, if any.
    pub fn locate(&self, name: &str) -> Option<Folder> {
        [
            Folder::Active,
            Folder::Inbox,
            Folder::Done,
            Folder::Failed,
            Folder::Archive,
        ]
        .into_iter()
        .find(|f| exists(&self.task_path(*f, name)))
    }

    // -- attempts.json ------------------------------------------------------

    fn attempts_path(&self) -> PathBuf {
        self.root.join(ATTEMPTS_FILE)
    }

    /// A corrupt attempts.json is reported and treated as empty (the worst
    /// case is a task getting more attempts than configured).
    fn load_attempts(&self) -> Attempts {
        match read_json::<Attempts>(&self.attempts_path()) {
            Ok(a) => a.unwrap_or_default(),
            Err(e) => {
                log::warn!("project {}: {e}; counting attempts from zero", self.project);
                Attempts::new()
            }
        }
    }

    fn save_attempts(&self, a: &Attempts) -> Result<()> {
        write_json(&self.attempts_path(), a)
    }

    /// Applies `f` to attempts.json; writes only when it changed something.
    fn edit_attempts(&self, f: impl FnOnce(&mut Attempts)) -> Result<()> {
        let mut a = self.load_attempts();
        let before = a.clone();
        f(&mut a);
        if a != before {
            self.save_attempts(&a)?;
        }
        Ok(())
    }

    // -- inbox ----------------------------------------------------------------

    /// Looks at every inbox entry: claimable tasks in order, bad ones moved
    /// to failed/, unsettled ones reported.
    pub fn scan_inbox(&self, now: SystemTime) -> Result<ScanResult> {
        self.scan_inbox_with(now, &std::collections::HashSet::new())
    }

    /// As [`Queue::scan_inbox`], but the file names in `complete` (`x.md`)
    /// skip the settle time: the dispatcher saw inotify report them renamed
    /// into inbox (`IN_MOVED_TO`), which is how a complete file arrives. (A
    /// writer's close is not: see the settle rule.)
    ///
    /// Valid tasks are read once: their priority and `max_attempts` are
    /// remembered by name and file identity, so a scan of an inbox that did
    /// not change reads no file.
    pub fn scan_inbox_with(
        &self,
        now: SystemTime,
        complete: &HashSet<String>,
    ) -> Result<ScanResult> {
        let inbox = self.folder(Folder::Inbox);
        let entries = fs::read_dir(&inbox).map_err(io_err("list", &inbox))?;
        let attempts = self.load_attempts();
        // Names active now (a few): one listing instead of a stat per entry.
        let active: HashSet<String> = self
            .md_names(Folder::Active)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut out = ScanResult::default();
        let mut seen = HashSet::new();
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    out.errors
                        .push(format!("cannot list {}: {e}", inbox.display()));
                    continue;
                }
            };
            let os_name = entry.file_name();
            let Some(file) = os_name.to_str() else {
                let lossy = os_name.to_string_lossy();
                if !lossy.starts_with('.') {
                    out.ignored
                        .push(format!("{lossy} (file name is not valid UTF-8)"));
                }
                continue;
            };
            if file.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    out.errors
                        .push(format!("cannot look at {}: {e}", path.display()));
                    continue;
                }
            };
            let stem = file.strip_suffix(".md");
            let recorded = stem.and_then(|s| attempts.get(s)).map_or(0, |r| r.attempts);
            if !meta.file_type().is_file() {
                self.reject(
                    &mut out,
                    file,
                    not_a_task(meta.file_type()).into(),
                    recorded,
                    now,
                );
                continue;
            }
            let Some(name) = stem else {
                out.ignored.push(printable(file));
                continue;
            };
            if name.len() > MAX_NAME_BYTES {
                let reason = format!(
                    "file name too long: {} bytes before `.md`, the limit is {MAX_NAME_BYTES}; its name in inbox/ was `{file}`",
                    name.len()
                );
                self.reject(&mut out, file, reason, recorded, now);
                continue;
            }
            if name.chars().any(char::is_control) {
                // A newline or an escape in a name would forge or garble log
                // lines and notifications: such a name is never a task's.
                let reason = format!(
                    "file name holds control characters; its name in inbox/ was {:?}",
                    file
                );
                self.reject(&mut out, file, reason, recorded, now);
                continue;
            }
            let changed_at = last_change(&meta);
            if age(now, changed_at) < SETTLE && !complete.contains(file) {
                out.not_ready.push(name.to_string());
                continue;
            }
            if meta.len() > MAX_TASK_BYTES as u64 {
                self.reject(&mut out, file, too_big(meta.len()), recorded, now);
                continue;
            }
            let backing_off = self
                .book
                .lock()
                .claim_failures
                .get(name)
                .is_some_and(|f| now < f.retry_at);
            if backing_off || active.contains(name) {
                out.not_ready.push(name.to_string());
                continue;
            }
            let id = FileId::of(&meta);
            let known = self.book.lock().parsed.get(name).copied();
            let (priority, max_attempts) = match known {
                Some(p) if p.id == id => (p.priority, p.max_attempts),
                _ => {
                    let bytes = match self.read_task(&path) {
                        Ok(b) => b,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                            self.reject(
                                &mut out,
                                file,
                                format!("cannot read it: {e}"),
                                recorded,
                                now,
                            );
                            continue;
                        }
                        Err(e) => {
                            out.errors
                                .push(format!("cannot read {}: {e}", path.display()));
                            continue;
                        }
                    };
                    match parse_task(&bytes) {
                        Ok(t) => {
                            let p = Parsed {
                                id,
                                priority: t.priority(),
                                max_attempts: t.front.max_attempts,
                            };
                            self.book.lock().parsed.insert(name.to_string(), p);
                            (p.priority, p.max_attempts)
                        }
                        Err(reason) => {
                            self.reject(&mut out, file, reason, recorded, now);
                            continue;
                        }
                    }
                }
            };
            seen.insert(name.to_string());
            out.ready.push(TaskFile {
                name: name.to_string(),
                path,
                priority,
                max_attempts,
                attempts: recorded,
                size: meta.len(),
                changed_at,
            });
        }
        {
            let mut book = self.book.lock();
            book.parsed.retain(|n, _| seen.contains(n));
            for i in &out.ignored {
                if book.ignored_seen.insert(i.clone()) {
                    out.newly_ignored.push(i.clone());
                }
            }
            let ignored: HashSet<&String> = out.ignored.iter().collect();
            book.ignored_seen.retain(|i| ignored.contains(i));
        }
        out.ready.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        out.not_ready.sort();
        out.ignored.sort();
        out.newly_ignored.sort();
        Ok(out)
    }

    fn reject(
        &self,
        out: &mut ScanResult,
        file: &str,
        reason: String,
        attempts: u32,
        now: SystemTime,
    ) {
        let from = self.folder(Folder::Inbox).join(file);
        let (stem, ext) = match file.strip_suffix(".md") {
            Some(s) => (s, ".md"),
            None => (file, ""),
        };
        let record = FailureRecord {
            reason: reason.clone(),
            attempts,
            failed_at: rfc3339(now),
            earlier_reasons: Vec::new(),
        };
        let tracking = self.track(&[Folder::Inbox, Folder::Failed]);
        match self.move_to_failed(&from, stem, ext, &record) {
            Ok(Some(final_stem)) => {
                let inbox_delta = if ext == ".md" { -1 } else { 0 };
                tracking.finish(&[(Folder::Inbox, inbox_delta), (Folder::Failed, 1)]);
                if ext == ".md" {
                    let _ = self.edit_attempts(|a| {
                        a.remove(stem);
                    });
                }
                out.rejected.push(Rejection {
                    file: printable(file),
                    moved_to: format!("{final_stem}{ext}"),
                    reason,
                });
            }
            Ok(None) => {}
            Err(e) => out.errors.push(format!("{file}: {reason}, but {e}")),
        }
    }

    /// error.json first, then the rename. `Ok(None)`: `from` vanished.
    fn move_to_failed(
        &self,
        from: &Path,
        stem: &str,
        ext: &str,
        record: &FailureRecord,
    ) -> Result<Option<String>> {
        let failed = self.folder(Folder::Failed);
        // A name too long for the sidecars is shortened (see `short_stem`);
        // one with control characters loses them.
        let stem = if stem.len() > MAX_NAME_BYTES {
            short_stem(stem)
        } else if stem.chars().any(char::is_control) {
            let clean = sanitize(stem);
            if clean.is_empty() {
                "task".to_string()
            } else {
                clean
            }
        } else {
            stem.to_string()
        };
        // A name is taken by any entry with that stem; a stray error.json
        // (a crash before its rename) is overwritten.
        let final_stem = free_stem(&stem, |c| {
            exists(&failed.join(format!("{c}{ext}")))
                || exists(&failed.join(format!("{c}.md")))
                || exists(&failed.join(c))
        });
        let error_path = failed.join(format!("{final_stem}{ERROR_SUFFIX}"));
        write_json(&error_path, record)?;
        match rename(from, &failed.join(format!("{final_stem}{ext}"))) {
            Ok(()) => Ok(Some(final_stem)),
            Err(e) => {
                let _ = fs::remove_file(&error_path);
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(io_err("move to failed/", from)(e))
                }
            }
        }
    }

    // -- claim ---------------------------------------------------------------

    /// Takes `task` (from this loop's [`scan_inbox`](Self::scan_inbox)) out
    /// of inbox/ for `session` running under `account`: renames it into
    /// active/ (atomic: of two claimers exactly one wins, the other gets
    /// [`QueueError::Gone`]), then writes its marker. The attempt number is
    /// the task's failed attempts + 1. The file is read again after the
    /// rename: if it was edited into something invalid meanwhile it goes to
    /// failed/ and the answer is [`QueueError::Invalid`].
    pub fn claim(
        &self,
        task: &TaskFile,
        session: &str,
        account: &str,
        now: SystemTime,
    ) -> Result<ActiveTask> {
        self.claim_inner(&task.name, Some(task.attempts), session, account, now)
    }

    /// [`claim`](Self::claim) by name, reading the attempts made from
    /// attempts.json.
    pub fn claim_by_name(
        &self,
        name: &str,
        session: &str,
        account: &str,
        now: SystemTime,
    ) -> Result<ActiveTask> {
        self.claim_inner(name, None, session, account, now)
    }

    /// A claim that fails for any reason but losing the race (or the task
    /// being invalid, which moves it to failed/) backs that name off, so an
    /// error that undoes the claim cannot turn into a claim loop.
    fn claim_inner(
        &self,
        name: &str,
        attempts: Option<u32>,
        session: &str,
        account: &str,
        now: SystemTime,
    ) -> Result<ActiveTask> {
        let result = self.claim_once(name, attempts, session, account, now);
        let mut book = self.book.lock();
        match &result {
            Ok(_) | Err(QueueError::Gone { .. } | QueueError::Invalid { .. }) => {
                book.claim_failures.remove(name);
            }
            Err(_) => {
                let f = book
                    .claim_failures
                    .entry(name.to_string())
                    .or_insert(ClaimFailure {
                        failures: 0,
                        retry_at: now,
                    });
                f.failures += 1;
                f.retry_at = now + claim_backoff(f.failures);
            }
        }
        result
    }

    /// When claim `name` may be tried again after a failure (`None`: it
    /// has not failed).
    pub fn claim_retry_at(&self, name: &str) -> Option<SystemTime> {
        self.book
            .lock()
            .claim_failures
            .get(name)
            .map(|f| f.retry_at)
    }

    fn claim_once(
        &self,
        name: &str,
        attempts: Option<u32>,
        session: &str,
        account: &str,
        now: SystemTime,
    ) -> Result<ActiveTask> {
        check_name(name)?;
        let from = self.task_path(Folder::Inbox, name);
        let to = self.task_path(Folder::Active, name);
        if !exists(&from) {
            return Err(QueueError::Gone {
                name: name.to_string(),
            });
        }
        if exists(&to) {
            return Err(QueueError::Conflict {
                name: name.to_string(),
                reason: "a task of the same name is already active; it waits until that one ends"
                    .into(),
            });
        }
        let tracking = self.track(&[Folder::Inbox, Folder::Active, Folder::Failed]);
        match rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(QueueError::Gone {
                    name: name.to_string(),
                })
            }
            Err(e) => return Err(io_err("move to active/", &from)(e)),
        }
        self.book.lock().parsed.remove(name);
        let parsed = match fs::symlink_metadata(&to) {
            Ok(m) if !m.file_type().is_file() => Err(not_a_task(m.file_type()).to_string()),
            Ok(m) if m.len() > MAX_TASK_BYTES as u64 => Err(too_big(m.len())),
            Ok(_) => match self.read_task(&to) {
                Ok(bytes) => parse_task(&bytes),
                Err(e) => Err(format!("cannot read it: {e}")),
            },
            Err(e) => Err(format!("cannot look at it: {e}")),
        };
        let attempts =
            attempts.unwrap_or_else(|| self.load_attempts().get(name).map_or(0, |r| r.attempts));
        let parsed = match parsed {
            Ok(p) => p,
            Err(reason) => {
                let record = FailureRecord {
                    reason: reason.clone(),
                    attempts,
                    failed_at: rfc3339(now),
                    earlier_reasons: Vec::new(),
                };
                self.move_to_failed(&to, name, ".md", &record)?;
                tracking.finish(&[(Folder::Inbox, -1), (Folder::Failed, 1)]);
                self.edit_attempts(|a| {
                    a.remove(name);
                })?;
                return Err(QueueError::Invalid {
                    name: name.to_string(),
                    reason,
                });
            }
        };
        let marker = Marker {
            session: session.to_string(),
            account: account.to_string(),
            claude_session_id: None,
            attempt: attempts + 1,
            dispatched_at: rfc3339(now),
        };
        if let Err(e) = write_json(&self.marker_path(name), &marker) {
            // Undo, so the task is not stuck until the janitor's grace ends.
            if !exists(&from) {
                let _ = rename(&to, &from);
            }
            return Err(e);
        }
        tracking.finish(&[(Folder::Inbox, -1), (Folder::Active, 1)]);
        Ok(ActiveTask {
            name: name.to_string(),
            path: to,
            prompt: parsed.prompt().to_string(),
            priority: parsed.priority(),
            max_attempts: parsed.front.max_attempts,
            slash_command: parsed.front.slash_command.unwrap_or(false),
            marker,
        })
    }

    /// What is left of [`ORPHAN_GRACE`] for active task `name` (one with no
    /// marker) before the janitor takes it for an orphan; zero once it is
    /// one, or when it cannot be looked at.
    pub fn orphan_grace_left(&self, name: &str, now: SystemTime) -> Duration {
        fs::symlink_metadata(self.task_path(Folder::Active, name))
            .map(|m| grace_left(&m, now))
            .unwrap_or_default()
    }

    /// The marker of active task `name`; `Ok(None)` when it has none.
    pub fn read_marker(&self, name: &str) -> Result<Option<Marker>> {
        check_name(name)?;
        read_json(&self.marker_path(name))
    }

    /// Rewrites the marker of active task `name` (atomically); the rewrite
    /// also counts as a sign of life for the janitor.
    pub fn update_marker(&self, name: &str, edit: impl FnOnce(&mut Marker)) -> Result<Marker> {
        check_name(name)?;
        if !exists(&self.task_path(Folder::Active, name)) {
            return Err(self.not_active(name));
        }
        let Some(mut marker) = self.read_marker(name)? else {
            return Err(QueueError::Conflict {
                name: name.to_string(),
                reason: "active but has no marker (the janitor returns it to inbox)".into(),
            });
        };
        edit(&mut marker);
        write_json(&self.marker_path(name), &marker)?;
        Ok(marker)
    }

    /// Records the Claude Code session id seen on `UserPromptSubmit`.
    pub fn record_claude_session_id(&self, name: &str, id: &str) -> Result<Marker> {
        self.update_marker(name, |m| m.claude_session_id = Some(id.to_string()))
    }

    /// Every active task with its marker (`None`: missing or unreadable),
    /// by name. For a restarted daemon to find what its sessions were doing.
    pub fn list_active(&self) -> Result<Vec<(String, Option<Marker>)>> {
        let mut out: Vec<(String, Option<Marker>)> = self
            .md_names(Folder::Active)?
            .into_iter()
            .map(|n| {
                let m = self.read_marker(&n).ok().flatten();
                (n, m)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn not_active(&self, name: &str) -> QueueError {
        QueueError::NotActive {
            name: name.to_string(),
            found: self.locate(name),
        }
    }

    // -- endings -------------------------------------------------------------

    /// Task `name` answered: done/<name>.result.json is written first, then
    /// the task is renamed into done/, then its marker removed. A replay
    /// (the task is already in done/) is `Ok(AlreadyDone)` and changes
    /// nothing. A `claude_session_id` that contradicts the marker's is
    /// refused: that answer belongs to another conversation.
    pub fn complete(
        &self,
        name: &str,
        last_assistant_message: Option<&str>,
        claude_session_id: Option<&str>,
        now: SystemTime,
    ) -> Result<Completion> {
        check_name(name)?;
        let from = self.task_path(Folder::Active, name);
        if !exists(&from) {
            let ended = [Folder::Done, Folder::Archive]
                .into_iter()
                .any(|f| exists(&self.task_path(f, name)));
            return match self.locate(name) {
                _ if ended => {
                    remove_if_present(&self.marker_path(name))?;
                    Ok(Completion::AlreadyDone)
                }
                found => Err(QueueError::NotActive {
                    name: name.to_string(),
                    found,
                }),
            };
        }
        let marker = self.read_marker(name).ok().flatten();
        if let (Some(known), Some(given)) = (
            marker.as_ref().and_then(|m| m.claude_session_id.as_deref()),
            claude_session_id,
        ) {
            if known != given {
                return Err(QueueError::Conflict {
                    name: name.to_string(),
                    reason: format!(
                        "answer from conversation {given}, but the task runs in {known}"
                    ),
                });
            }
        }
        // A first attempt has no attempts.json entry: skip reading it (it
        // grows with the tasks that failed before).
        let mut attempts = match &marker {
            Some(m) if m.attempt <= 1 => None,
            _ => Some(self.load_attempts()),
        };
        let recorded = attempts
            .as_ref()
            .and_then(|a| a.get(name))
            .map_or(0, |r| r.attempts);
        let result = TaskResult {
            last_assistant_message: last_assistant_message.map(str::to_string),
            claude_session_id: claude_session_id
                .map(str::to_string)
                .or_else(|| marker.as_ref().and_then(|m| m.claude_session_id.clone())),
            account: marker.as_ref().map(|m| m.account.clone()),
            session: marker.as_ref().map(|m| m.session.clone()),
            attempt: marker.as_ref().map_or(recorded + 1, |m| m.attempt),
            started_at: marker.as_ref().map(|m| m.dispatched_at.clone()),
            finished_at: rfc3339(now),
        };
        let done = self.folder(Folder::Done);
        let tracking = self.track(&[Folder::Active, Folder::Done]);
        let final_name = free_stem(name, |c| exists(&done.join(format!("{c}.md"))));
        let result_path = self.sidecar(Folder::Done, &final_name, RESULT_SUFFIX);
        write_json(&result_path, &result)?;
        if let Err(e) = rename(&from, &self.task_path(Folder::Done, &final_name)) {
            let _ = fs::remove_file(&result_path);
            if e.kind() == io::ErrorKind::NotFound {
                // Someone else ended it between our look and our rename.
                return match self.locate(name) {
                    Some(Folder::Done) => Ok(Completion::AlreadyDone),
                    found => Err(QueueError::NotActive {
                        name: name.to_string(),
                        found,
                    }),
                };
            }
            return Err(io_err("move to done/", &from)(e));
        }
        remove_if_present(&self.marker_path(name))?;
        tracking.finish(&[(Folder::Active, -1), (Folder::Done, 1)]);
        if let Some(a) = attempts.as_mut() {
            if a.remove(name).is_some() {
                self.save_attempts(a)?;
            }
        }
        Ok(Completion::Done { name: final_name })
    }

    /// The attempt under way failed for `reason`. The failure is counted
    /// (idempotently: the marker's attempt number is the count), and the task
    /// goes to failed/ when the count reaches its `max_attempts` (front
    /// matter) or `max_attempts_default`, else back to inbox/.
    pub fn fail_attempt(
        &self,
        name: &str,
        reason: &str,
        max_attempts_default: u32,
        now: SystemTime,
    ) -> Result<Outcome> {
        self.end_attempt(name, reason, Some(max_attempts_default), now)
    }

    /// Gives task `name` up now, whatever its attempts and `max_attempts`
    /// (e.g. the prompt was refused for good). The attempt under way counts.
    pub fn give_up(&self, name: &str, reason: &str, now: SystemTime) -> Result<Outcome> {
        self.end_attempt(name, reason, None, now)
    }

    /// `max_attempts_default: None` = fail now.
    fn end_attempt(
        &self,
        name: &str,
        reason: &str,
        max_attempts_default: Option<u32>,
        now: SystemTime,
    ) -> Result<Outcome> {
        check_name(name)?;
        let from = self.task_path(Folder::Active, name);
        if !exists(&from) {
            return Err(self.not_active(name));
        }
        let marker = self.read_marker(name).ok().flatten();
        let tracking = self.track(&[Folder::Active, Folder::Inbox, Folder::Failed]);
        let mut attempts = self.load_attempts();
        let had_entry = attempts.contains_key(name);
        let mut record = attempts.remove(name).unwrap_or_default();
        record.attempts = match &marker {
            Some(m) => m.attempt.max(record.attempts),
            None => record.attempts + 1,
        };
        let give_up = match max_attempts_default {
            None => true,
            Some(default) => {
                let max = self
                    .read_task(&from)
                    .ok()
                    .and_then(|b| parse_task(&b).ok())
                    .and_then(|t| t.front.max_attempts)
                    .unwrap_or(default)
                    .max(1);
                record.attempts >= max
            }
        };
        if give_up {
            let failure = FailureRecord {
                reason: reason.to_string(),
                attempts: record.attempts,
                failed_at: rfc3339(now),
                earlier_reasons: record.reasons,
            };
            let final_stem = self
                .move_to_failed(&from, name, ".md", &failure)?
                .ok_or_else(|| self.not_active(name))?;
            remove_if_present(&self.marker_path(name))?;
            tracking.finish(&[(Folder::Active, -1), (Folder::Failed, 1)]);
            if had_entry {
                self.save_attempts(&attempts)?;
            }
            return Ok(Outcome::Failed {
                name: final_stem,
                attempts: failure.attempts,
            });
        }
        record.reasons.push(reason.to_string());
        if record.reasons.len() > REASONS_KEPT {
            record.reasons.drain(..record.reasons.len() - REASONS_KEPT);
        }
        let count = record.attempts;
        let inbox = self.folder(Folder::Inbox);
        let final_name = free_stem(name, |c| exists(&inbox.join(format!("{c}.md"))));
        attempts.insert(final_name.clone(), record);
        self.save_attempts(&attempts)?;
        self.move_back(name, &final_name)?;
        tracking.finish(&[(Folder::Active, -1), (Folder::Inbox, 1)]);
        Ok(Outcome::Requeued {
            name: final_name,
            attempts: count,
        })
    }

    /// Back to inbox/ without counting an attempt (the task continues
    /// elsewhere, or its dispatch was never confirmed). Returns its name in
    /// inbox/ (`name`, or `name-2`… when a new task took that name).
    pub fn requeue(&self, name: &str) -> Result<String> {
        check_name(name)?;
        if !exists(&self.task_path(Folder::Active, name)) {
            return Err(self.not_active(name));
        }
        let inbox = self.folder(Folder::Inbox);
        let tracking = self.track(&[Folder::Active, Folder::Inbox]);
        let final_name = free_stem(name, |c| exists(&inbox.join(format!("{c}.md"))));
        if final_name != name {
            self.edit_attempts(|a| {
                if let Some(r) = a.remove(name) {
                    a.insert(final_name.clone(), r);
                }
            })?;
        }
        self.move_back(name, &final_name)?;
        tracking.finish(&[(Folder::Active, -1), (Folder::Inbox, 1)]);
        Ok(final_name)
    }

    /// active/<name>.md → inbox/<final_name>.md, then the marker goes.
    fn move_back(&self, name: &str, final_name: &str) -> Result<()> {
        let from = self.task_path(Folder::Active, name);
        match rename(&from, &self.task_path(Folder::Inbox, final_name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(self.not_active(name)),
            Err(e) => return Err(io_err("move back to inbox/", &from)(e)),
        }
        remove_if_present(&self.marker_path(name))
    }

    // -- janitor ---------------------------------------------------------------

    /// One janitor round; every item is independent, and what fails is
    /// reported and retried next round.
    ///
    /// - an active task whose last sign of life (marker's `dispatched_at`,
    ///   the marker's or the task's mtime) is `stale_task_after` old, and for
    ///   which `live(marker)` is false, fails an attempt (back to inbox, or
    ///   to failed/ at `max_attempts`);
    /// - an active task without a readable marker, [`ORPHAN_GRACE`] after its
    ///   claim, goes back to inbox without counting an attempt;
    /// - a marker without its task is removed;
    /// - done entries whose `finished_at` (else mtime) is `done_retention`
    ///   old move to archive/;
    /// - attempts.json entries of tasks no longer queued are dropped;
    /// - temp files of interrupted `enqueue`s already linked into inbox/ are removed.
    pub fn janitor(
        &self,
        now: SystemTime,
        cfg: &JanitorConfig,
        live: &dyn Fn(&Marker) -> bool,
    ) -> Result<JanitorReport> {
        let mut report = JanitorReport::default();
        let active_dir = self.folder(Folder::Active);
        let mut names = Vec::new();
        let mut markers = Vec::new();
        for file in list_names(&active_dir)? {
            if let Some(n) = file.strip_suffix(MARKER_SUFFIX) {
                markers.push(n.to_string());
            } else if let Some(n) = file.strip_suffix(".md") {
                names.push(n.to_string());
            }
        }
        names.sort();
        markers.sort();
        for name in &markers {
            if !exists(&self.task_path(Folder::Active, name)) {
                match remove_if_present(&self.marker_path(name)) {
                    Ok(()) => report.markers_removed.push(name.clone()),
                    Err(e) => report.errors.push(e.to_string()),
                }
            }
        }
        for name in &names {
            if let Err(e) = self.janitor_active(name, now, cfg, live, &mut report) {
                report.errors.push(e.to_string());
            }
        }
        if let Err(e) = self.archive_done(now, cfg.done_retention, &mut report) {
            report.errors.push(e.to_string());
        }
        let queued: std::collections::BTreeSet<String> = [Folder::Inbox, Folder::Active]
            .into_iter()
            .flat_map(|f| self.md_names(f).unwrap_or_default())
            .collect();
        let mut pruned = Vec::new();
        if let Err(e) = self.edit_attempts(|a| {
            a.retain(|k, _| {
                let keep = queued.contains(k);
                if !keep {
                    pruned.push(k.clone());
                }
                keep
            })
        }) {
            report.errors.push(e.to_string());
        }
        report.attempts_pruned = pruned;
        report.temp_files_removed = self.remove_delivered_temps(&mut report.errors);
        Ok(report)
    }

    fn janitor_active(
        &self,
        name: &str,
        now: SystemTime,
        cfg: &JanitorConfig,
        live: &dyn Fn(&Marker) -> bool,
        report: &mut JanitorReport,
    ) -> Result<()> {
        let task_path = self.task_path(Folder::Active, name);
        let Ok(task_meta) = fs::symlink_metadata(&task_path) else {
            return Ok(());
        };
        let marker_path = self.marker_path(name);
        match read_json::<Marker>(&marker_path).ok().flatten() {
            None => {
                if grace_left(&task_meta, now).is_zero() {
                    let n = self.requeue(name)?;
                    report.orphans_requeued.push(n);
                }
            }
            Some(marker) => {
                let mut last_sign = parse_rfc3339(&marker.dispatched_at).unwrap_or(UNIX_EPOCH);
                for t in [
                    fs::metadata(&marker_path).and_then(|m| m.modified()).ok(),
                    task_meta.modified().ok(),
                ]
                .into_iter()
                .flatten()
                {
                    last_sign = last_sign.max(t);
                }
                if age(now, last_sign) >= cfg.stale_task_after && !live(&marker) {
                    let reason = format!(
                        "no sign of life for {} (session {}, account {}, attempt {})",
                        crate::config::format_duration(cfg.stale_task_after),
                        marker.session,
                        marker.account,
                        marker.attempt
                    );
                    let outcome = self.fail_attempt(name, &reason, cfg.max_attempts, now)?;
                    report.stale.push((name.to_string(), outcome));
                }
            }
        }
        Ok(())
    }

    fn archive_done(
        &self,
        now: SystemTime,
        retention: Duration,
        report: &mut JanitorReport,
    ) -> Result<()> {
        let done = self.folder(Folder::Done);
        let archive = self.folder(Folder::Archive);
        let tracking = self.track(&[Folder::Done]);
        let archived_before = report.archived.len();
        let mut files = list_names(&done)?;
        files.sort();
        // The tasks listed: a result's task is looked up here, not stat'ed.
        let listed: HashSet<&str> = files.iter().filter_map(|f| f.strip_suffix(".md")).collect();
        // `finished_at` is written with the result, so the result file's
        // mtime is never older than it: an entry whose files changed within
        // the retention is young whatever it says, and is not read. (A
        // result copied in later is archived a retention after the copy.)
        let recent = |path: &Path| {
            fs::symlink_metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| age(now, t) < retention)
        };
        let finished = |result_path: &Path, fallback: &Path| -> Option<SystemTime> {
            if recent(result_path) {
                return None;
            }
            read_json::<TaskResult>(result_path)
                .ok()
                .flatten()
                .and_then(|r| parse_rfc3339(&r.finished_at))
                .or_else(|| {
                    fs::symlink_metadata(fallback)
                        .and_then(|m| m.modified())
                        .ok()
                })
        };
        for file in &files {
            if let Some(name) = file.strip_suffix(".md") {
                let md = done.join(file);
                let result = done.join(format!("{name}{RESULT_SUFFIX}"));
                let Some(t) = finished(&result, &md) else {
                    continue;
                };
                if age(now, t) < retention {
                    continue;
                }
                let final_name = free_stem(name, |c| {
                    exists(&archive.join(format!("{c}.md")))
                        || exists(&archive.join(format!("{c}{RESULT_SUFFIX}")))
                });
                if let Err(e) = rename(&md, &archive.join(format!("{final_name}.md"))) {
                    report
                        .errors
                        .push(format!("cannot archive {}: {e}", md.display()));
                    continue;
                }
                if exists(&result) {
                    if let Err(e) = rename(
                        &result,
                        &archive.join(format!("{final_name}{RESULT_SUFFIX}")),
                    ) {
                        report
                            .errors
                            .push(format!("cannot archive {}: {e}", result.display()));
                    }
                }
                report.archived.push(final_name);
            } else if let Some(name) = file.strip_suffix(RESULT_SUFFIX) {
                // A result whose task is not in done/ (a crash between the
                // two renames above, or before complete's rename).
                let result = done.join(file);
                if listed.contains(name) || exists(&done.join(format!("{name}.md"))) {
                    continue;
                }
                let Some(t) = finished(&result, &result) else {
                    continue;
                };
                if age(now, t) < retention || exists(&self.task_path(Folder::Active, name)) {
                    continue;
                }
                let final_name = free_stem(name, |c| {
                    exists(&archive.join(format!("{c}{RESULT_SUFFIX}")))
                });
                match rename(
                    &result,
                    &archive.join(format!("{final_name}{RESULT_SUFFIX}")),
                ) {
                    Ok(()) => report.archived.push(format!("{final_name}{RESULT_SUFFIX}")),
                    Err(e) => report
                        .errors
                        .push(format!("cannot archive {}: {e}", result.display())),
                }
            }
        }
        let tasks_archived = report.archived[archived_before..]
            .iter()
            .filter(|n| !n.ends_with(RESULT_SUFFIX))
            .count();
        tracking.finish(&[(Folder::Done, -(tasks_archived as isize))]);
        Ok(())
    }

    fn remove_delivered_temps(&self, errors: &mut Vec<String>) -> usize {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.filter_map(|e| e.ok()) {
            if !entry
                .file_name()
                .to_str()
                .is_some_and(|f| f.starts_with(ENQUEUE_TEMP_PREFIX))
            {
                continue;
            }
            let path = entry.path();
            // Linked into inbox/ (two links): the task is safe, the temp is litter.
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.nlink() > 1) {
                match fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) => errors.push(format!("cannot remove {}: {e}", path.display())),
                }
            }
        }
        removed
    }

    // -- counts and status -------------------------------------------------------

    fn md_names(&self, f: Folder) -> Result<Vec<String>> {
        let dir = self.folder(f);
        Ok(list_names(&dir)?
            .into_iter()
            .filter_map(|n| n.strip_suffix(".md").map(str::to_string))
            .collect())
    }

    /// Tasks per folder: `*.md` entries (failed/ also counts the folders and
    /// links it received), counted from the folders now. Also resets the
    /// tracked counts (see [`Queue::tracked_counts`]).
    pub fn counts(&self) -> Result<QueueCounts> {
        self.recount(SystemTime::now())
    }

    fn recount(&self, now: SystemTime) -> Result<QueueCounts> {
        let mut fresh = [FolderCount::default(); 4];
        for (i, f) in COUNTED.into_iter().enumerate() {
            fresh[i] = self.count_folder(f, now)?;
        }
        let mut book = self.book.lock();
        book.counts = fresh;
        book.last_recount = Some(now);
        Ok(to_counts(&fresh))
    }

    /// Lists folder `f`: its count, with the stamp taken before the listing
    /// (so a change during it shows as a new stamp next time).
    fn count_folder(&self, f: Folder, now: SystemTime) -> Result<FolderCount> {
        let dir = self.folder(f);
        let stamp = dir_stamp(&dir);
        self.listings.fetch_add(1, Ordering::Relaxed);
        let count = list_names(&dir)?.iter().filter(|n| counts_in(f, n)).count();
        let trusted = stamp.is_some_and(|s| {
            let mtime = UNIX_EPOCH
                + Duration::new(
                    u64::try_from(s.mtime.0).unwrap_or(0),
                    s.mtime.1.clamp(0, 999_999_999) as u32,
                );
            age(now, mtime) >= RACY
        });
        Ok(FolderCount {
            count,
            stamp,
            trusted,
        })
    }

    /// The counts as [`Queue::counts`] gives them, at the cost of one `stat`
    /// per folder when nothing changed: a folder is listed again only when
    /// its timestamps moved for a reason other than this queue's own
    /// claims, completions, failures and requeues (which update the counts
    /// as they go), and every folder is recounted every [`RECOUNT_EVERY`].
    pub fn tracked_counts(&self, now: SystemTime) -> Result<QueueCounts> {
        let due = {
            let book = self.book.lock();
            book.last_recount
                .is_none_or(|t| age(now, t) >= RECOUNT_EVERY || now < t)
        };
        if due {
            return self.recount(now);
        }
        for (i, f) in COUNTED.into_iter().enumerate() {
            let known = self.book.lock().counts[i];
            let stamp = dir_stamp(&self.folder(f));
            if known.trusted && known.stamp.is_some() && known.stamp == stamp {
                continue;
            }
            let fresh = self.count_folder(f, now)?;
            self.book.lock().counts[i] = fresh;
        }
        Ok(to_counts(&self.book.lock().counts))
    }

    /// Writes status.json: `{project, updated_at, sessions, queue: {inbox,
    /// active, done, failed}}`, with the counts of [`Queue::counts`].
    pub fn write_status(&self, sessions: &[String], now: SystemTime) -> Result<()> {
        let counts = self.counts()?;
        self.write_status_file(sessions, counts, now)
    }

    /// As [`Queue::write_status`], with the [tracked counts](Queue::tracked_counts),
    /// and only when the sessions or the counts differ from the last write
    /// (or the file is missing): `updated_at` says when they last changed.
    /// `Ok(true)` when it wrote.
    pub fn publish_status(&self, sessions: &[String], now: SystemTime) -> Result<bool> {
        let counts = self.tracked_counts(now)?;
        let mut sessions = sessions.to_vec();
        sessions.sort();
        let key = (sessions, counts_key(&counts));
        let unchanged = self.book.lock().status_written.as_ref() == Some(&key);
        if unchanged && exists(&self.root.join(STATUS_FILE)) {
            return Ok(false);
        }
        self.write_status_file(&key.0, counts, now)?;
        self.book.lock().status_written = Some(key);
        Ok(true)
    }

    fn write_status_file(
        &self,
        sessions: &[String],
        counts: QueueCounts,
        now: SystemTime,
    ) -> Result<()> {
        let status = ProjectStatus {
            project: &self.project,
            updated_at: rfc3339(now),
            sessions,
            queue: counts,
        };
        write_json(&self.root.join(STATUS_FILE), &status)
    }

    // -- enqueue ---------------------------------------------------------------

    /// See [`enqueue`].
    pub fn enqueue(
        &self,
        priority: Option<i64>,
        content: &[u8],
        name_hint: Option<&str>,
        now: SystemTime,
    ) -> Result<PathBuf> {
        let label = name_hint.unwrap_or("from stdin").to_string();
        let invalid = |reason: String| QueueError::Invalid {
            name: label.clone(),
            reason,
        };
        if let Some(stem) = name_hint.and_then(hint_stem) {
            if stem.len() > MAX_NAME_BYTES {
                return Err(QueueError::BadName {
                    name: label.clone(),
                    why: "its name is longer than 200 bytes (without `.md`); rename the file or use `-`",
                });
            }
        }
        let parsed = parse_task(content).map_err(invalid)?;
        let bytes = match priority {
            None => content.to_vec(),
            Some(p) => {
                let front = FrontMatter {
                    priority: Some(p),
                    ..parsed.front.clone()
                };
                let mut text = String::from("---\n");
                text.push_str(
                    &serde_norway::to_string(&front)
                        .map_err(|e| invalid(one_line(&e.to_string())))?,
                );
                text.push_str("---\n");
                text.push_str(&parsed.body);
                text.into_bytes()
            }
        };
        if bytes.len() > MAX_TASK_BYTES {
            return Err(invalid(format!(
                "{} once its front matter is added",
                too_big(bytes.len() as u64)
            )));
        }
        self.ensure_layout()?;
        let tmp = self.root.join(format!(
            "{ENQUEUE_TEMP_PREFIX}{}-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed),
            now.duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        atomic_file::write(&tmp, &bytes).map_err(io_err("write", &tmp))?;
        let result = self.link_into_inbox(
            &tmp,
            name_hint.and_then(hint_stem),
            &slug(&parsed, name_hint),
            now,
        );
        let _ = fs::remove_file(&tmp);
        let path = result?;
        sync_dir(&self.folder(Folder::Inbox));
        Ok(path)
    }

    /// A name is taken when any of inbox/, active/, done/, failed/ has it.
    fn name_taken(&self, stem: &str) -> bool {
        [Folder::Inbox, Folder::Active, Folder::Done, Folder::Failed]
            .into_iter()
            .any(|f| exists(&self.task_path(f, stem)))
    }

    fn link_into_inbox(
        &self,
        tmp: &Path,
        hint: Option<String>,
        slug: &str,
        now: SystemTime,
    ) -> Result<PathBuf> {
        let stamp = stamp(now);
        let generated = (1u32..).map(|n| match n {
            1 => format!("{stamp}-{slug}"),
            n => format!("{stamp}-{slug}-{n}"),
        });
        for stem in hint.into_iter().chain(generated).take(10_000) {
            if self.name_taken(&stem) {
                continue;
            }
            let dest = self.task_path(Folder::Inbox, &stem);
            // A rename that never replaces (renameat2 RENAME_NOREPLACE): two
            // writers of the same name cannot overwrite each other, the loser
            // takes the next name, and inotify reports IN_MOVED_TO, which the
            // dispatcher takes as "complete" at once. Where the file system
            // lacks it, a hard link does the same (seen after the settle time).
            match rename_no_replace(tmp, &dest) {
                Ok(()) => return Ok(dest),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(_) => {}
            }
            match fs::hard_link(tmp, &dest) {
                Ok(()) => return Ok(dest),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    // A file system without hard links: check, then rename.
                    if exists(&dest) {
                        continue;
                    }
                    return fs::rename(tmp, &dest)
                        .map(|()| dest.clone())
                        .map_err(|_| io_err("link into inbox/", &dest)(e));
                }
            }
        }
        Err(QueueError::Conflict {
            name: slug.to_string(),
            reason: "no free file name in inbox/".into(),
        })
    }
}

/// 1 s, 2 s, 4 s, … up to [`CLAIM_BACKOFF_MAX`] after the `failures`th failure.
fn claim_backoff(failures: u32) -> Duration {
    CLAIM_BACKOFF_FIRST
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(CLAIM_BACKOFF_MAX)
}

/// `rename(from, to)` failing with `AlreadyExists` instead of replacing `to`.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both paths are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes a task into `<project_path>/.agent-queue/inbox/` atomically and
/// returns its path. `content` must be UTF-8, at most 1 MiB, with valid
/// front matter and a prompt (nothing is written otherwise); `priority`
/// is merged into its front matter. The file is written whole under
/// `.agent-queue/.tmp-…`, then renamed into inbox/ without replacing anything
/// (never a partial file there, never a replaced one). Its name: `name_hint`'s file name (as
/// `<stem>.md`) when no task has it, else `<UTC timestamp>-<slug>.md`.
pub fn enqueue(
    project_path: &Path,
    priority: Option<i64>,
    content: &[u8],
    name_hint: Option<&str>,
    now: SystemTime,
) -> Result<PathBuf> {
    let name = project_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Queue::new(name, project_path).enqueue(priority, content, name_hint, now)
}

fn to_counts(c: &[FolderCount; 4]) -> QueueCounts {
    QueueCounts {
        inbox: c[0].count,
        active: c[1].count,
        done: c[2].count,
        failed: c[3].count,
    }
}

fn counts_key(c: &QueueCounts) -> [usize; 4] {
    [c.inbox, c.active, c.done, c.failed]
}

/// `20260121T045800.123Z`: sorts in time order.
fn stamp(now: SystemTime) -> String {
    let s = rfc3339(now).replace(['-', ':'], "");
    let millis = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_millis();
    format!("{}.{millis:03}Z", s.trim_end_matches('Z'))
}

/// A file name as log lines and notifications show it: control characters
/// (a newline, an escape) escaped, so a name cannot forge or garble a line.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Letters, digits, `.`, `_`, `-`; anything else becomes `-`.
fn sanitize(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            c
        } else {
            '-'
        };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    out.trim_start_matches(['.', '-'])
        .trim_end_matches('-')
        .to_string()
}

/// The stem a FILE argument asks for: its file name without `.md` (or
/// without its extension), sanitized.
fn hint_stem(hint: &str) -> Option<String> {
    let file = Path::new(hint).file_name()?.to_str()?;
    let stem = match file.strip_suffix(".md") {
        Some(s) => s,
        None => Path::new(file).file_stem()?.to_str()?,
    };
    Some(sanitize(stem)).filter(|s| !s.is_empty())
}

/// Up to 40 lowercase characters from the hint, else the prompt's first line.
fn slug(task: &ParsedTask, hint: Option<&str>) -> String {
    let source = hint
        .and_then(hint_stem)
        .unwrap_or_else(|| task.prompt().lines().next().unwrap_or("").to_string());
    let mut out = String::new();
    for c in source.chars() {
        if out.len() >= 40 {
            break;
        }
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "task".into()
    } else {
        out
    }
}

/// UTF-8 names in `dir`, without dot-names.
fn list_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect())
}

#[cfg(test)]
mod tests;
