//! The on-disk task queue (src/queue.rs): ordering, the settle rule, bad
//! input to failed/, exactly-once endings, attempts, the janitor, atomic
//! enqueue, and a seeded soak of claims, completions and failures.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use claude_failover::config::JanitorConfig;
use claude_failover::store::queue::{
    enqueue, last_change, parse_task, Completion, FailureRecord, Folder, Marker, Outcome, Queue,
    QueueError, TaskResult, MAX_TASK_BYTES, ORPHAN_GRACE, SETTLE,
};

fn setup() -> (tempfile::TempDir, Queue) {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("proj")).unwrap();
    let q = Queue::new("proj", dir.path().join("proj"));
    q.ensure_layout().unwrap();
    (dir, q)
}

/// Writes `inbox/<file>` directly, as an operator would.
fn put(q: &Queue, file: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let p = q.folder(Folder::Inbox).join(file);
    fs::write(&p, content).unwrap();
    p
}

/// Well after everything written so far has settled.
fn later() -> SystemTime {
    SystemTime::now() + Duration::from_secs(5)
}

/// Non-dot names in a folder, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

fn ls(q: &Queue, f: Folder) -> Vec<String> {
    names(&q.folder(f))
}

/// Every task entry of the queue (sidecars and markers not counted).
fn task_entries(q: &Queue) -> usize {
    Folder::ALL
        .iter()
        .map(|f| {
            ls(q, *f)
                .iter()
                .filter(|n| {
                    !n.ends_with(".error.json")
                        && !n.ends_with(".result.json")
                        && !n.ends_with(".dispatched")
                })
                .count()
        })
        .sum()
}

fn failure(q: &Queue, stem: &str) -> FailureRecord {
    let p = q.folder(Folder::Failed).join(format!("{stem}.error.json"));
    serde_json::from_slice(&fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn janitor_cfg() -> JanitorConfig {
    JanitorConfig {
        interval: Duration::from_secs(300),
        stale_task_after: Duration::from_secs(2 * 3600),
        stale_while_waiting: false,
        done_retention: Duration::from_secs(7 * 86_400),
        max_attempts: 3,
    }
}

fn attempts_json(q: &Queue) -> serde_json::Value {
    match fs::read(q.root().join("attempts.json")) {
        Ok(b) => serde_json::from_slice(&b).unwrap(),
        Err(_) => serde_json::json!({}),
    }
}

#[test]
fn ready_tasks_come_by_priority_then_name() {
    let (_d, q) = setup();
    put(&q, "c.md", "task c");
    put(&q, "a.md", "task a");
    put(&q, "b.md", "---\npriority: 5\n---\ntask b");
    put(&q, "d.md", "---\npriority: -1\n---\ntask d");
    put(&q, "e.md", "---\npriority: 5\nmax_attempts: 2\n---\ntask e");
    put(&q, ".hidden.md", "a temp file");
    put(&q, "notes.txt", "not a task");
    let scan = q.scan_inbox(later()).unwrap();
    let order: Vec<&str> = scan.ready.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(order, ["b", "e", "a", "c", "d"]);
    assert_eq!(scan.ready[1].max_attempts, Some(2));
    assert_eq!(scan.ready[0].priority, 5);
    assert!(scan.rejected.is_empty() && scan.not_ready.is_empty() && scan.errors.is_empty());
    assert_eq!(scan.ignored, ["notes.txt"]);
    // Nothing moved.
    assert_eq!(ls(&q, Folder::Inbox).len(), 6);
}

#[test]
fn bad_inputs_go_to_failed_with_the_reason_and_nothing_is_lost() {
    let (d, q) = setup();
    put(&q, "good.md", "a fine task");
    put(&q, "latin1.md", b"caf\xe9 au lait".as_slice());
    put(&q, "huge.md", vec![b'a'; MAX_TASK_BYTES + 1]);
    put(&q, "unterminated.md", "---\npriority: 1\nDo it\n");
    put(&q, "yaml.md", "---\npriority: [1\n---\nDo it\n");
    put(&q, "prio.md", "---\npriority: high\n---\nDo it\n");
    put(&q, "unknown.md", "---\ncolour: red\n---\nDo it\n");
    put(&q, "empty.md", "---\npriority: 1\n---\n\n");
    fs::create_dir(q.folder(Folder::Inbox).join("folder.md")).unwrap();
    fs::write(q.folder(Folder::Inbox).join("folder.md/inside.md"), "x").unwrap();
    fs::create_dir(q.folder(Folder::Inbox).join("drafts")).unwrap();
    let target = d.path().join("outside.md");
    fs::write(&target, "outside the queue").unwrap();
    std::os::unix::fs::symlink(&target, q.folder(Folder::Inbox).join("link.md")).unwrap();
    let fifo = q.folder(Folder::Inbox).join("pipe.md");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // A task already in failed/ under one of these names keeps its place.
    fs::write(q.folder(Folder::Failed).join("prio.md"), "an older failure").unwrap();

    let before = task_entries(&q);
    let scan = q.scan_inbox(later()).unwrap();
    assert_eq!(task_entries(&q), before, "every entry is still somewhere");
    assert_eq!(scan.ready.len(), 1);
    assert_eq!(scan.ready[0].name, "good");
    assert!(scan.errors.is_empty(), "{:?}", scan.errors);
    assert_eq!(ls(&q, Folder::Inbox), ["good.md"]);

    let expect = [
        ("latin1.md", "latin1", "not valid UTF-8"),
        ("huge.md", "huge", "too big"),
        ("unterminated.md", "unterminated", "no closing `---`"),
        ("yaml.md", "yaml", "broken front matter"),
        ("prio.md", "prio-2", "priority"),
        ("unknown.md", "unknown", "unknown field `colour`"),
        ("empty.md", "empty", "no prompt"),
        ("folder.md", "folder", "a folder is not a task"),
        ("drafts", "drafts", "a folder is not a task"),
        ("link.md", "link", "a symlink is not a task"),
        ("pipe.md", "pipe", "a named pipe is not a task"),
    ];
    assert_eq!(scan.rejected.len(), expect.len(), "{:#?}", scan.rejected);
    for (file, stem, reason) in expect {
        let r = scan
            .rejected
            .iter()
            .find(|r| r.file == file)
            .unwrap_or_else(|| panic!("{file} not rejected"));
        assert!(r.reason.contains(reason), "{file}: {}", r.reason);
        assert!(!r.reason.contains('\n'));
        let rec = failure(&q, stem);
        assert_eq!((rec.reason.as_str(), rec.attempts), (r.reason.as_str(), 0));
        let ext = if file.ends_with(".md") { ".md" } else { "" };
        assert_eq!(r.moved_to, format!("{stem}{ext}"));
        assert!(fs::symlink_metadata(q.folder(Folder::Failed).join(&r.moved_to)).is_ok());
    }
    assert_eq!(
        fs::read_to_string(q.folder(Folder::Failed).join("prio.md")).unwrap(),
        "an older failure"
    );
    // Moved as a link, never followed; its target is untouched.
    let link = q.folder(Folder::Failed).join("link.md");
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_link(&link).unwrap(), target);
    assert_eq!(fs::read_to_string(&target).unwrap(), "outside the queue");
    assert!(q
        .folder(Folder::Failed)
        .join("folder.md/inside.md")
        .is_file());
    let c = q.counts().unwrap();
    assert_eq!((c.inbox, c.active, c.done, c.failed), (1, 0, 0, 12));
    // A second scan has nothing more to do.
    let again = q.scan_inbox(later()).unwrap();
    assert!(again.rejected.is_empty());
}

#[test]
fn a_file_changed_100ms_ago_waits_for_the_settle_time() {
    let (_d, q) = setup();
    let p = put(&q, "fresh.md", "being written");
    let changed = last_change(&fs::metadata(&p).unwrap());
    let scan = q.scan_inbox(changed + Duration::from_millis(100)).unwrap();
    assert!(scan.ready.is_empty());
    assert_eq!(scan.not_ready, ["fresh"]);
    // A clock behind the file's change is not settled either.
    let scan = q.scan_inbox(changed - Duration::from_secs(60)).unwrap();
    assert_eq!(scan.not_ready, ["fresh"]);
    let scan = q.scan_inbox(changed + SETTLE).unwrap();
    assert_eq!(scan.ready.len(), 1);
    assert!(scan.not_ready.is_empty());
    q.claim_by_name("fresh", "s", "a", changed + SETTLE)
        .unwrap();
    // Broken files are judged only once settled too.
    let p = put(&q, "half.md", "---\npriority: 1\n");
    let changed = last_change(&fs::metadata(&p).unwrap());
    let scan = q.scan_inbox(changed + Duration::from_millis(100)).unwrap();
    assert!(scan.rejected.is_empty());
    assert_eq!(scan.not_ready, ["half"]);
}

#[test]
fn claim_and_complete_happen_exactly_once() {
    let (_d, q) = setup();
    put(
        &q,
        "fix.md",
        "---\npriority: 2\n---\n\n  Fix the login page.\n",
    );
    let now = later();
    let scan = q.scan_inbox(now).unwrap();
    assert_eq!(scan.ready[0].name, "fix");
    let task = q.claim(&scan.ready[0], "ccl-auto-11", "main", now).unwrap();
    assert_eq!(task.prompt, "Fix the login page.");
    assert_eq!(task.priority, 2);
    assert_eq!(task.marker.attempt, 1);
    assert_eq!(ls(&q, Folder::Active), ["fix.md", "fix.md.dispatched"]);
    assert!(ls(&q, Folder::Inbox).is_empty());
    // The loser of a race gets a clean error.
    assert!(matches!(
        q.claim_by_name("fix", "ccl-auto-12", "main", now),
        Err(QueueError::Gone { .. })
    ));
    let m = q.record_claude_session_id("fix", "abc-123").unwrap();
    assert_eq!(m.claude_session_id.as_deref(), Some("abc-123"));
    assert_eq!(q.read_marker("fix").unwrap(), Some(m));
    assert_eq!(q.list_active().unwrap().len(), 1);

    // An answer from another conversation is refused.
    let e = q
        .complete("fix", Some("hi"), Some("other-999"), now)
        .unwrap_err();
    assert!(
        e.to_string().contains("another") || e.to_string().contains("other-999"),
        "{e}"
    );

    let finished = now + Duration::from_secs(30);
    assert_eq!(
        q.complete("fix", Some("Done: fixed."), Some("abc-123"), finished)
            .unwrap(),
        Completion::Done { name: "fix".into() }
    );
    // A replayed Stop hook.
    assert_eq!(
        q.complete("fix", Some("Done: fixed."), Some("abc-123"), finished)
            .unwrap(),
        Completion::AlreadyDone
    );
    assert_eq!(ls(&q, Folder::Done), ["fix.md", "fix.result.json"]);
    assert!(ls(&q, Folder::Active).is_empty());
    let r: TaskResult =
        serde_json::from_slice(&fs::read(q.folder(Folder::Done).join("fix.result.json")).unwrap())
            .unwrap();
    assert_eq!(r.last_assistant_message.as_deref(), Some("Done: fixed."));
    assert_eq!(r.claude_session_id.as_deref(), Some("abc-123"));
    assert_eq!(r.account.as_deref(), Some("main"));
    assert_eq!(r.attempt, 1);
    assert_eq!(r.started_at, Some(task.marker.dispatched_at.clone()));
    assert_eq!(r.finished_at, claude_failover::sys::time::rfc3339(finished));
    // Ending it another way now is refused: it is done.
    let e = q.fail_attempt("fix", "late", 3, finished).unwrap_err();
    assert!(e.to_string().contains("in done/"), "{e}");
    assert!(q.requeue("fix").is_err());
    let e = q.complete("nope", None, None, finished).unwrap_err();
    assert!(e.to_string().contains("no such task"), "{e}");
    assert!(matches!(
        q.complete("../x", None, None, finished),
        Err(QueueError::BadName { .. })
    ));

    // The same name again later: the old done entry stays, the new one gets -2.
    put(&q, "fix.md", "again");
    q.claim_by_name("fix", "s", "main", later()).unwrap();
    assert_eq!(
        q.complete("fix", None, None, later()).unwrap(),
        Completion::Done {
            name: "fix-2".into()
        }
    );
    assert_eq!(
        ls(&q, Folder::Done),
        ["fix-2.md", "fix-2.result.json", "fix.md", "fix.result.json"]
    );
}

#[test]
fn failed_attempts_are_counted_up_to_max_attempts() {
    let (_d, q) = setup();
    put(&q, "flaky.md", "do the flaky thing");
    let now = later();
    for n in 1..=2 {
        let t = q.claim_by_name("flaky", "s1", "main", now).unwrap();
        assert_eq!(t.marker.attempt, n);
        assert_eq!(
            q.fail_attempt("flaky", &format!("boom {n}"), 3, now)
                .unwrap(),
            Outcome::Requeued {
                name: "flaky".into(),
                attempts: n
            }
        );
        assert_eq!(ls(&q, Folder::Inbox), ["flaky.md"]);
        assert!(ls(&q, Folder::Active).is_empty(), "marker removed too");
        assert_eq!(attempts_json(&q)["flaky"]["attempts"], n);
        // The scan reports the attempts made.
        assert_eq!(q.scan_inbox(now).unwrap().ready[0].attempts, n);
    }
    // Not counted: a requeue.
    q.claim_by_name("flaky", "s1", "main", now).unwrap();
    assert_eq!(q.requeue("flaky").unwrap(), "flaky");
    assert_eq!(attempts_json(&q)["flaky"]["attempts"], 2);
    let t = q.claim_by_name("flaky", "s1", "main", now).unwrap();
    assert_eq!(t.marker.attempt, 3);
    assert_eq!(
        q.fail_attempt("flaky", "boom 3", 3, now).unwrap(),
        Outcome::Failed {
            name: "flaky".into(),
            attempts: 3
        }
    );
    assert_eq!(ls(&q, Folder::Failed), ["flaky.error.json", "flaky.md"]);
    let rec = failure(&q, "flaky");
    assert_eq!(rec.attempts, 3);
    assert_eq!(rec.reason, "boom 3");
    assert_eq!(rec.earlier_reasons, ["boom 1", "boom 2"]);
    assert!(attempts_json(&q).get("flaky").is_none());
    assert!(ls(&q, Folder::Inbox).is_empty() && ls(&q, Folder::Active).is_empty());
}

#[test]
fn a_replayed_failure_is_not_counted_twice() {
    let (_d, q) = setup();
    put(&q, "t.md", "x");
    let now = later();
    q.claim_by_name("t", "s", "a", now).unwrap();
    // A crash after attempts.json was written, before the rename: simulate
    // by writing what fail_attempt writes first.
    fs::write(
        q.root().join("attempts.json"),
        r#"{"t": {"attempts": 1, "reasons": ["boom"]}}"#,
    )
    .unwrap();
    assert_eq!(
        q.fail_attempt("t", "boom", 3, now).unwrap(),
        Outcome::Requeued {
            name: "t".into(),
            attempts: 1
        }
    );
}

#[test]
fn front_matter_max_attempts_is_honoured() {
    let (_d, q) = setup();
    put(&q, "once.md", "---\nmax_attempts: 1\n---\nonly once");
    put(&q, "stubborn.md", "---\nmax_attempts: 4\n---\ntry hard");
    let now = later();
    q.claim_by_name("once", "s", "a", now).unwrap();
    assert_eq!(
        q.fail_attempt("once", "no", 3, now).unwrap(),
        Outcome::Failed {
            name: "once".into(),
            attempts: 1
        }
    );
    for n in 1..=3 {
        q.claim_by_name("stubborn", "s", "a", now).unwrap();
        assert!(matches!(
            q.fail_attempt("stubborn", "no", 2, now).unwrap(),
            Outcome::Requeued { attempts, .. } if attempts == n
        ));
    }
    q.claim_by_name("stubborn", "s", "a", now).unwrap();
    assert!(matches!(
        q.fail_attempt("stubborn", "no", 2, now).unwrap(),
        Outcome::Failed { attempts: 4, .. }
    ));
    assert_eq!(failure(&q, "stubborn").attempts, 4);
    // give_up ignores max_attempts.
    put(&q, "hopeless.md", "---\nmax_attempts: 9\n---\nx");
    q.claim_by_name("hopeless", "s", "a", later()).unwrap();
    assert!(matches!(
        q.give_up("hopeless", "refused", now).unwrap(),
        Outcome::Failed { attempts: 1, .. }
    ));
}

#[test]
fn janitor_returns_stale_tasks_removes_orphan_markers_and_archives_done() {
    let (_d, q) = setup();
    let cfg = janitor_cfg();
    put(&q, "stale.md", "x");
    put(&q, "alive.md", "y");
    put(&q, "done.md", "z");
    let t0 = later();
    q.claim_by_name("stale", "s1", "main", t0).unwrap();
    q.claim_by_name("alive", "s2", "main", t0).unwrap();
    q.claim_by_name("done", "s3", "main", t0).unwrap();
    q.complete("done", Some("ok"), None, t0).unwrap();
    let marker = |s: &str| Marker {
        session: s.into(),
        account: "main".into(),
        claude_session_id: None,
        attempt: 1,
        dispatched_at: claude_failover::sys::time::rfc3339(t0),
    };
    // A marker whose task has gone (a crash after complete's rename).
    fs::write(
        q.marker_path("ghost"),
        serde_json::to_vec(&marker("s9")).unwrap(),
    )
    .unwrap();

    // Nothing is stale yet.
    let r = q
        .janitor(t0 + Duration::from_secs(60), &cfg, &|_| false)
        .unwrap();
    assert_eq!(r.markers_removed, ["ghost"]);
    assert!(r.stale.is_empty() && r.archived.is_empty() && r.orphans_requeued.is_empty());
    assert!(r.errors.is_empty(), "{:?}", r.errors);

    let t1 = t0 + cfg.stale_task_after + Duration::from_secs(1);
    let r = q
        .janitor(t1, &cfg, &|m: &Marker| m.session == "s2")
        .unwrap();
    assert_eq!(
        r.stale,
        [(
            "stale".to_string(),
            Outcome::Requeued {
                name: "stale".into(),
                attempts: 1
            }
        )]
    );
    assert_eq!(ls(&q, Folder::Inbox), ["stale.md"]);
    assert_eq!(ls(&q, Folder::Active), ["alive.md", "alive.md.dispatched"]);
    assert!(attempts_json(&q)["stale"]["reasons"][0]
        .as_str()
        .unwrap()
        .starts_with("no sign of life for 2h"));
    // A stale task reaches failed/ through its attempts.
    for n in 2..=3 {
        q.claim_by_name("stale", "s1", "main", t1).unwrap();
        let r = q
            .janitor(t1 + cfg.stale_task_after * n, &cfg, &|m: &Marker| {
                m.session == "s2"
            })
            .unwrap();
        assert_eq!(r.stale.len(), 1);
    }
    assert_eq!(failure(&q, "stale").attempts, 3);

    // Done entries move to archive/ after the retention, both files.
    let r = q
        .janitor(
            t0 + cfg.done_retention - Duration::from_secs(1),
            &cfg,
            &|_| true,
        )
        .unwrap();
    assert!(r.archived.is_empty());
    let r = q.janitor(t0 + cfg.done_retention, &cfg, &|_| true).unwrap();
    assert_eq!(r.archived, ["done"]);
    assert!(ls(&q, Folder::Done).is_empty());
    assert_eq!(ls(&q, Folder::Archive), ["done.md", "done.result.json"]);
    // A replayed completion of an archived task is still a no-op.
    assert_eq!(
        q.complete("done", None, None, t1).unwrap(),
        Completion::AlreadyDone
    );
}

#[test]
fn a_crash_between_claim_rename_and_marker_is_repaired() {
    let (_d, q) = setup();
    put(&q, "crash.md", "x");
    // The claim's rename, and then nothing: the daemon died.
    fs::rename(
        q.task_path(Folder::Inbox, "crash"),
        q.task_path(Folder::Active, "crash"),
    )
    .unwrap();
    let claimed = last_change(&fs::metadata(q.task_path(Folder::Active, "crash")).unwrap());
    let cfg = janitor_cfg();
    let r = q
        .janitor(claimed + Duration::from_secs(1), &cfg, &|_| false)
        .unwrap();
    assert!(
        r.orphans_requeued.is_empty(),
        "too early: the claim may be under way"
    );
    let r = q.janitor(claimed + ORPHAN_GRACE, &cfg, &|_| false).unwrap();
    assert_eq!(r.orphans_requeued, ["crash"]);
    assert_eq!(ls(&q, Folder::Inbox), ["crash.md"]);
    assert!(ls(&q, Folder::Active).is_empty());
    // No attempt was counted.
    let t = q.claim_by_name("crash", "s", "a", later()).unwrap();
    assert_eq!(t.marker.attempt, 1);
}

#[test]
fn requeue_into_a_taken_name_keeps_both() {
    let (_d, q) = setup();
    put(&q, "x.md", "first");
    let now = later();
    q.claim_by_name("x", "s", "a", now).unwrap();
    q.fail_attempt("x", "boom", 3, now).unwrap();
    q.claim_by_name("x", "s", "a", now).unwrap();
    put(&q, "x.md", "second, same name");
    let scan = q.scan_inbox(later()).unwrap();
    assert_eq!(
        scan.not_ready,
        ["x"],
        "waits while a task of that name is active"
    );
    assert!(matches!(
        q.claim_by_name("x", "s2", "a", now),
        Err(QueueError::Conflict { .. })
    ));
    assert_eq!(q.requeue("x").unwrap(), "x-2");
    assert_eq!(ls(&q, Folder::Inbox), ["x-2.md", "x.md"]);
    assert_eq!(
        fs::read_to_string(q.task_path(Folder::Inbox, "x")).unwrap(),
        "second, same name"
    );
    // The attempts went with the task.
    assert_eq!(attempts_json(&q)["x-2"]["attempts"], 1);
    assert!(attempts_json(&q).get("x").is_none());
}

#[test]
fn status_json_has_sessions_and_counts() {
    let (_d, q) = setup();
    put(&q, "a.md", "x");
    put(&q, "b.md", "y");
    q.claim_by_name("b", "s", "a", later()).unwrap();
    q.write_status(&["ccl-auto-11".to_string()], later())
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(q.root().join("status.json")).unwrap()).unwrap();
    assert_eq!(v["project"], "proj");
    assert_eq!(v["sessions"][0], "ccl-auto-11");
    assert_eq!(v["queue"]["inbox"], 1);
    assert_eq!(v["queue"]["active"], 1);
    assert_eq!(v["queue"]["done"], 0);
    assert_eq!(v["queue"]["failed"], 0);
}

#[test]
fn enqueue_merges_priority_and_picks_a_free_name() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("proj");
    fs::create_dir(&project).unwrap();
    let now = SystemTime::now();
    // The layout is created on first use.
    let p = enqueue(
        &project,
        Some(7),
        b"---\nmax_attempts: 2\n---\nFix it\n",
        Some("/elsewhere/fix.md"),
        now,
    )
    .unwrap();
    assert_eq!(p, project.join(".agent-queue/inbox/fix.md"));
    let t = parse_task(&fs::read(&p).unwrap()).unwrap();
    assert_eq!((t.front.priority, t.front.max_attempts), (Some(7), Some(2)));
    assert_eq!(t.body, "Fix it\n");
    // Taken: a timestamped name from the hint.
    let p2 = enqueue(&project, None, b"Fix it again", Some("fix.md"), now).unwrap();
    let n2 = p2.file_name().unwrap().to_str().unwrap().to_string();
    assert!(n2.ends_with("-fix.md") && n2.starts_with("20"), "{n2}");
    assert_eq!(
        fs::read(&p2).unwrap(),
        b"Fix it again",
        "no priority: content verbatim"
    );
    // From stdin: a slug of the first line.
    let p3 = enqueue(
        &project,
        Some(-1),
        b"# Refactor the DB layer\n\nDetails",
        None,
        now,
    )
    .unwrap();
    let n3 = p3.file_name().unwrap().to_str().unwrap();
    assert!(n3.ends_with("-refactor-the-db-layer.md"), "{n3}");
    let q = Queue::new("proj", &project);
    let scan = q.scan_inbox(later()).unwrap();
    assert_eq!(scan.ready.len(), 3);
    assert_eq!(scan.ready[0].name, "fix");
    assert_eq!(scan.ready[2].priority, -1);
    assert!(names(q.root()).iter().all(|n| !n.starts_with(".tmp")));
}

#[test]
fn enqueue_refuses_bad_content_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("proj");
    fs::create_dir(&project).unwrap();
    let q = Queue::new("proj", &project);
    q.ensure_layout().unwrap();
    let now = SystemTime::now();
    let cases: [(&[u8], &str); 4] = [
        (b"caf\xe9", "not valid UTF-8"),
        (&[b'a'; MAX_TASK_BYTES + 1], "too big"),
        (b"---\npriority: x\n---\nhi", "broken front matter"),
        (b"   ", "no prompt"),
    ];
    for (content, reason) in cases {
        let e = enqueue(&project, None, content, Some("bad.md"), now).unwrap_err();
        assert!(e.to_string().contains(reason), "{e}");
        assert!(!e.to_string().contains('\n'));
    }
    // Exactly at the limit is fine without a priority, refused once it grows.
    let max = vec![b'a'; MAX_TASK_BYTES];
    let e = enqueue(&project, Some(1), &max, None, now).unwrap_err();
    assert!(e.to_string().contains("too big"), "{e}");
    let all: Vec<String> = fs::read_dir(q.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut all = all;
    all.sort();
    assert_eq!(all, ["active", "archive", "done", "failed", "inbox"]);
    assert!(fs::read_dir(q.folder(Folder::Inbox))
        .unwrap()
        .next()
        .is_none());
    enqueue(&project, None, &max, None, now).unwrap();
}

#[test]
fn enqueue_never_shows_a_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("proj");
    fs::create_dir(&project).unwrap();
    let q = Queue::new("proj", &project);
    q.ensure_layout().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let scanner = {
        let (q, stop) = (q.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut scans = 0;
            while !stop.load(Ordering::Relaxed) {
                // Far in the future: every file is judged, and a partial one
                // would be rejected.
                let s = q
                    .scan_inbox(SystemTime::now() + Duration::from_secs(3600))
                    .unwrap();
                assert!(s.rejected.is_empty(), "{:?}", s.rejected);
                assert!(s.errors.is_empty(), "{:?}", s.errors);
                for t in &s.ready {
                    let bytes = fs::read(&t.path).unwrap();
                    assert!(parse_task(&bytes).is_ok());
                }
                scans += 1;
            }
            scans
        })
    };
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let project = project.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    // Big enough that a torn write would be visible; same
                    // hints on purpose, so that names collide.
                    let body = format!(
                        "---\npriority: {i}\n---\nwriter {w} task {i}\n{}",
                        "x".repeat(64 * 1024)
                    );
                    let hint = (i % 3 == 0).then_some("same.md");
                    enqueue(&project, None, body.as_bytes(), hint, SystemTime::now()).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let scans = scanner.join().unwrap();
    assert!(scans > 0);
    let inbox = ls(&q, Folder::Inbox);
    assert_eq!(inbox.len(), 200, "{inbox:?}");
    let mut seen = BTreeSet::new();
    for n in &inbox {
        let t = parse_task(&fs::read(q.folder(Folder::Inbox).join(n)).unwrap()).unwrap();
        assert!(seen.insert(t.prompt().lines().next().unwrap().to_string()));
    }
    assert_eq!(seen.len(), 200);
    assert!(names(q.root()).iter().all(|n| !n.starts_with(".tmp")));
    assert!(fs::read_dir(q.root()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".tmp")));
}

/// xorshift64*: a seeded PRNG, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn soak_every_task_ends_in_exactly_one_of_done_or_failed() {
    const TASKS: usize = 2000;
    // fsync is a no-op on tmpfs: the soak tests logic, not the disk.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let q = Queue::new("soak", dir.path());
    q.ensure_layout().unwrap();
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    for i in 0..TASKS {
        let front = match rng.below(4) {
            0 => String::new(),
            1 => format!("---\npriority: {}\n---\n", rng.below(5) as i64 - 2),
            2 => format!("---\nmax_attempts: {}\n---\n", 1 + rng.below(4)),
            _ => format!(
                "---\npriority: {}\nmax_attempts: {}\n---\n",
                rng.below(3),
                1 + rng.below(3)
            ),
        };
        put(
            &q,
            &format!("task-{i:04}.md"),
            format!("{front}task number {i}\n"),
        );
    }
    let cfg = JanitorConfig {
        stale_task_after: Duration::from_secs(3600),
        ..janitor_cfg()
    };
    let mut clock = later();
    let mut active: Vec<String> = Vec::new();
    let mut completed = BTreeSet::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 10_000, "the soak does not converge");
        clock += Duration::from_secs(1);
        let scan = q.scan_inbox(clock).unwrap();
        assert!(scan.rejected.is_empty() && scan.errors.is_empty());
        if scan.ready.is_empty() && active.is_empty() && q.counts().unwrap().active == 0 {
            break;
        }
        let mut ready = scan.ready;
        let take = 1 + rng.below(60) as usize;
        for _ in 0..take.min(ready.len()) {
            let t = ready.swap_remove(rng.below(ready.len() as u64) as usize);
            let claimed = q.claim(&t, "s", "acct", clock).unwrap();
            assert_eq!(claimed.marker.attempt, t.attempts + 1);
            // A second claimer always loses.
            assert!(matches!(
                q.claim_by_name(&t.name, "s2", "acct", clock),
                Err(QueueError::Gone { .. })
            ));
            active.push(t.name);
        }
        let mut still = Vec::new();
        while !active.is_empty() {
            let name = active.swap_remove(rng.below(active.len() as u64) as usize);
            match rng.below(100) {
                0..=44 => {
                    assert_eq!(
                        q.complete(&name, Some("ok"), None, clock).unwrap(),
                        Completion::Done { name: name.clone() }
                    );
                    assert!(completed.insert(name.clone()));
                    if rng.below(3) == 0 {
                        assert_eq!(
                            q.complete(&name, None, None, clock).unwrap(),
                            Completion::AlreadyDone
                        );
                    }
                }
                45..=74 => {
                    match q
                        .fail_attempt(&name, "boom", cfg.max_attempts, clock)
                        .unwrap()
                    {
                        Outcome::Requeued { name: n, .. } | Outcome::Failed { name: n, .. } => {
                            assert_eq!(n, name)
                        }
                    }
                    assert!(q.complete(&name, None, None, clock).is_err());
                }
                75..=84 => assert_eq!(q.requeue(&name).unwrap(), name),
                85..=89 => {
                    // Crash between claim's rename and the marker.
                    fs::remove_file(q.marker_path(&name)).unwrap();
                }
                _ => still.push(name), // still working; the janitor may find it stale
            }
        }
        active = still;
        if rng.below(5) == 0 {
            clock += Duration::from_secs(if rng.below(2) == 0 { 20 } else { 3 * 3600 });
            let r = q.janitor(clock, &cfg, &|_| false).unwrap();
            assert!(r.errors.is_empty(), "{:?}", r.errors);
            for (n, _) in &r.stale {
                active.retain(|a| a != n);
            }
        }
        // Tasks returned by the janitor are no longer ours to end.
        active.retain(|n| fs::metadata(q.marker_path(n)).is_ok());
    }
    let done: BTreeSet<String> = ls(&q, Folder::Done)
        .into_iter()
        .filter_map(|n| n.strip_suffix(".md").map(str::to_string))
        .collect();
    let failed: BTreeSet<String> = ls(&q, Folder::Failed)
        .into_iter()
        .filter_map(|n| n.strip_suffix(".md").map(str::to_string))
        .collect();
    assert!(ls(&q, Folder::Inbox).is_empty() && ls(&q, Folder::Active).is_empty());
    assert!(done.is_disjoint(&failed));
    assert_eq!(done, completed);
    assert_eq!(
        done.len() + failed.len(),
        TASKS,
        "{} done + {} failed",
        done.len(),
        failed.len()
    );
    for i in 0..TASKS {
        let n = format!("task-{i:04}");
        assert!(done.contains(&n) ^ failed.contains(&n), "{n}");
        if done.contains(&n) {
            assert!(q
                .folder(Folder::Done)
                .join(format!("{n}.result.json"))
                .is_file());
        } else {
            let rec = failure(&q, &n);
            assert!((1..=4).contains(&rec.attempts), "{n}: {rec:?}");
        }
    }
    assert!(!failed.is_empty() && !done.is_empty());
    assert_eq!(attempts_json(&q), serde_json::json!({}));
    eprintln!(
        "soak: {} done, {} failed in {rounds} rounds",
        done.len(),
        failed.len()
    );
}

#[test]
fn a_task_edited_into_garbage_after_the_scan_fails_at_claim() {
    let (_d, q) = setup();
    put(&q, "t.md", "fine");
    let scan = q.scan_inbox(later()).unwrap();
    put(&q, "t.md", b"\xff\xfe".as_slice());
    let e = q.claim(&scan.ready[0], "s", "a", later()).unwrap_err();
    assert!(matches!(e, QueueError::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("not valid UTF-8"), "{e}");
    assert!(ls(&q, Folder::Active).is_empty());
    assert_eq!(ls(&q, Folder::Failed), ["t.error.json", "t.md"]);
}

#[test]
fn janitor_removes_only_delivered_enqueue_temps() {
    let (_d, q) = setup();
    // An enqueue that died after linking into inbox/, and one that died
    // before: the first temp is litter, the second is all there is.
    let delivered = q.root().join(".tmp-1-0-0");
    fs::write(&delivered, "task").unwrap();
    fs::hard_link(&delivered, q.task_path(Folder::Inbox, "t")).unwrap();
    let lone = q.root().join(".tmp-1-1-0");
    fs::write(&lone, "task").unwrap();
    let r = q.janitor(later(), &janitor_cfg(), &|_| false).unwrap();
    assert_eq!(r.temp_files_removed, 1);
    assert!(!delivered.exists() && lone.exists());
    assert_eq!(ls(&q, Folder::Inbox), ["t.md"]);
}

#[test]
fn enqueue_into_a_missing_project_folder_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("typo");
    let e = enqueue(&project, None, b"x", None, SystemTime::now()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "cannot use project folder {}: not an existing folder",
            project.display()
        )
    );
    assert!(!project.exists());
}
