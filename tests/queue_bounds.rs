//! The queue's bounds (src/queue.rs): name length, front matter size, claim
//! back-off, and what a scan, a claim and the counts cost with many tasks
//! (file reads and folder listings counted by the queue itself).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use claude_failover::store::queue::{
    enqueue, short_stem, Folder, Queue, QueueError, MAX_FRONT_MATTER_BYTES, MAX_NAME_BYTES,
    RECOUNT_EVERY,
};

fn setup() -> (tempfile::TempDir, Queue) {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("proj")).unwrap();
    let q = Queue::new("proj", dir.path().join("proj"));
    q.ensure_layout().unwrap();
    (dir, q)
}

fn put(q: &Queue, file: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let p = q.folder(Folder::Inbox).join(file);
    fs::write(&p, content).unwrap();
    p
}

/// Well after everything written so far has settled (and the folders'
/// timestamps are old enough to be trusted).
fn later() -> SystemTime {
    SystemTime::now() + Duration::from_secs(5)
}

fn ls(q: &Queue, f: Folder) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(q.folder(f))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

fn reason(q: &Queue, stem: &str) -> String {
    let p = q.folder(Folder::Failed).join(format!("{stem}.error.json"));
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .unwrap();
    v["reason"].as_str().unwrap().to_string()
}

#[test]
fn an_over_long_inbox_name_goes_to_failed_under_a_short_name_with_its_reason() {
    let (_d, q) = setup();
    let at_cap = "a".repeat(MAX_NAME_BYTES);
    let over = "b".repeat(MAX_NAME_BYTES + 1);
    let longest = "é".repeat(125); // 250 bytes of two-byte characters
    put(&q, &format!("{at_cap}.md"), "at the cap");
    put(&q, &format!("{over}.md"), "one byte over");
    put(&q, &format!("{longest}.md"), "two-byte characters");
    fs::create_dir(q.folder(Folder::Inbox).join("d".repeat(250))).unwrap();
    let scan = q.scan_inbox(later()).unwrap();
    assert_eq!(scan.ready.len(), 1);
    assert_eq!(scan.ready[0].name, at_cap);
    assert_eq!(scan.rejected.len(), 3, "{:?}", scan.rejected);
    for (name, ext) in [(&over, ".md"), (&longest, ".md"), (&"d".repeat(250), "")] {
        let short = short_stem(name);
        assert!(short.len() <= 117 && name.starts_with(short.split('-').next().unwrap()));
        let r = scan
            .rejected
            .iter()
            .find(|r| r.file == format!("{name}{ext}"))
            .unwrap();
        assert_eq!(r.moved_to, format!("{short}{ext}"));
        assert!(ls(&q, Folder::Failed).contains(&format!("{short}{ext}")));
        let why = reason(&q, &short);
        if ext == ".md" {
            assert!(
                why.starts_with(&format!(
                    "file name too long: {} bytes before `.md`, the limit is 200",
                    name.len()
                )) && why.contains(name.as_str()),
                "{why}"
            );
        } else {
            assert_eq!(why, "a folder is not a task");
        }
    }
    assert_eq!(
        fs::read_to_string(
            q.folder(Folder::Failed)
                .join(format!("{}.md", short_stem(&over)))
        )
        .unwrap(),
        "one byte over"
    );
    // Two long names with the same start stay apart.
    assert_ne!(
        short_stem(&format!("{}x", "c".repeat(240))),
        short_stem(&format!("{}y", "c".repeat(240)))
    );
}

/// The cap leaves room for every file the queue makes of a name: a task of
/// the longest name is claimed, requeued under a `-2` name, claimed again
/// (its marker's temp name is the longest), failed and retried, and done.
#[test]
fn a_task_at_the_name_cap_goes_through_every_folder() {
    let (_d, q) = setup();
    let name = "n".repeat(MAX_NAME_BYTES);
    put(&q, &format!("{name}.md"), "longest name");
    let t = q.claim_by_name(&name, "s", "acct", later()).unwrap();
    assert!(q.marker_path(&t.name).exists());
    // A new task of the same name arrives while it runs: the requeue takes `-2`.
    put(&q, &format!("{name}.md"), "same name again");
    let requeued = q.requeue(&name).unwrap();
    assert_eq!(requeued, format!("{name}-2"));
    let t = q.claim_by_name(&requeued, "s", "acct", later()).unwrap();
    assert_eq!(t.prompt, "longest name");
    q.fail_attempt(&requeued, "flaky", 3, later()).unwrap();
    q.claim_by_name(&requeued, "s", "acct", later()).unwrap();
    q.complete(&requeued, Some("ok"), None, later()).unwrap();
    assert!(ls(&q, Folder::Done).contains(&format!("{requeued}.result.json")));
    let t = q.claim_by_name(&name, "s", "acct", later()).unwrap();
    q.give_up(&t.name, "refused", later()).unwrap();
    assert_eq!(reason(&q, &name), "refused");
}

#[test]
fn enqueue_refuses_a_name_over_the_cap_and_writes_nothing() {
    let (_d, q) = setup();
    let hint = format!("{}.md", "e".repeat(300));
    let err = enqueue(q.project_path(), None, b"a prompt", Some(&hint), later()).unwrap_err();
    assert!(matches!(err, QueueError::BadName { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("longer than {MAX_NAME_BYTES} bytes")),
        "{err}"
    );
    assert!(ls(&q, Folder::Inbox).is_empty());
    // At the cap it is taken as it is.
    let hint = format!("{}.md", "e".repeat(MAX_NAME_BYTES));
    let p = enqueue(q.project_path(), None, b"a prompt", Some(&hint), later()).unwrap();
    assert_eq!(p.file_name().unwrap().to_str().unwrap(), hint);
}

/// A claim that fails after its rename (here the marker cannot be written:
/// a folder is in its way) puts the task back and backs the name off, 1 s
/// then 2 s: the rename back, which wakes the dispatcher, cannot make a loop.
#[test]
fn a_failed_claim_backs_off_instead_of_looping() {
    let (_d, q) = setup();
    put(&q, "t.md", "a task");
    let blocker = q.marker_path("t");
    fs::create_dir(&blocker).unwrap();
    fs::write(blocker.join("x"), "in the way").unwrap();
    let t0 = later();
    let task = q.scan_inbox(t0).unwrap().ready.remove(0);
    assert!(q.claim(&task, "s", "a", t0).is_err());
    assert_eq!(ls(&q, Folder::Inbox), ["t.md"], "put back");
    assert_eq!(q.claim_retry_at("t"), Some(t0 + Duration::from_secs(1)));
    let scan = q.scan_inbox(t0 + Duration::from_millis(500)).unwrap();
    assert!(scan.ready.is_empty());
    assert_eq!(scan.not_ready, ["t"]);
    let t1 = t0 + Duration::from_millis(1100);
    let task = q.scan_inbox(t1).unwrap().ready.remove(0);
    assert!(q.claim(&task, "s", "a", t1).is_err());
    assert_eq!(q.claim_retry_at("t"), Some(t1 + Duration::from_secs(2)));
    assert!(q
        .scan_inbox(t1 + Duration::from_millis(1900))
        .unwrap()
        .ready
        .is_empty());
    // Once the cause is gone, the next try succeeds and the back-off is forgotten.
    fs::remove_dir_all(&blocker).unwrap();
    let t2 = t1 + Duration::from_secs(2);
    let task = q.scan_inbox(t2).unwrap().ready.remove(0);
    q.claim(&task, "s", "a", t2).unwrap();
    assert_eq!(q.claim_retry_at("t"), None);
}

/// 1 MiB of front matter nested 500,000 deep: refused before the YAML
/// parser sees it (before the fix: minutes of quadratic parsing).
#[test]
fn a_deeply_nested_front_matter_is_refused_in_well_under_a_second() {
    let (_d, q) = setup();
    let mut text = String::from("---\npriority: ");
    let depth = ((1 << 20) - 40) / 2;
    text.push_str(&"[".repeat(depth));
    text.push_str(&"]".repeat(depth));
    text.push_str("\n---\nDo it\n");
    assert!(text.len() <= 1 << 20);
    put(&q, "nested.md", &text);
    // The same nesting within the cap: the YAML parser's worst case is bounded.
    let inner = (MAX_FRONT_MATTER_BYTES - 20) / 2;
    put(
        &q,
        "small.md",
        format!(
            "---\npriority: {}{}\n---\nDo it\n",
            "[".repeat(inner),
            "]".repeat(inner)
        ),
    );
    let t = Instant::now();
    let scan = q.scan_inbox(later()).unwrap();
    let took = t.elapsed();
    eprintln!("scan of 1 MiB and 4 KiB nested front matter: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(scan.rejected.len(), 2, "{:?}", scan.rejected);
    assert!(
        reason(&q, "nested").starts_with(&format!(
            "broken front matter: longer than {MAX_FRONT_MATTER_BYTES} bytes"
        )),
        "{}",
        reason(&q, "nested")
    );
    assert!(
        reason(&q, "small").starts_with("broken front matter"),
        "{}",
        reason(&q, "small")
    );
}

/// 10,000 waiting tasks: the first scan reads each once; after that a scan
/// and a claim read one file (the claimed one), whatever is waiting.
#[test]
fn a_claim_with_ten_thousand_waiting_reads_one_file() {
    let (_d, q) = setup();
    for i in 0..10_000 {
        put(
            &q,
            &format!("t{i:05}.md"),
            format!("---\npriority: {}\n---\ntask {i}", i % 7),
        );
    }
    let t = Instant::now();
    let scan = q.scan_inbox(later()).unwrap();
    let first = t.elapsed();
    assert_eq!(scan.ready.len(), 10_000);
    assert_eq!(q.task_file_reads(), 10_000);
    let mut per_claim = Vec::new();
    for round in 0..20 {
        let before = q.task_file_reads();
        let t = Instant::now();
        let scan = q.clone().scan_inbox(later()).unwrap();
        assert_eq!(scan.ready.len(), 10_000 - round);
        // Highest priority first, then name: 6 is the top priority.
        assert_eq!(scan.ready[0].priority, 6);
        let claimed = q.claim(&scan.ready[0], "s", "a", later()).unwrap();
        per_claim.push(t.elapsed());
        assert_eq!(
            q.task_file_reads() - before,
            1,
            "round {round}: only the claimed file is read"
        );
        assert!(claimed.prompt.starts_with("task "));
    }
    // An edited task is read again (its identity changed), the others not.
    let before = q.task_file_reads();
    put(&q, "t00000.md", "---\npriority: 99\n---\nedited");
    let scan = q.scan_inbox(later()).unwrap();
    assert_eq!(scan.ready[0].name, "t00000");
    assert_eq!(scan.ready[0].priority, 99);
    assert_eq!(q.task_file_reads() - before, 1);
    per_claim.sort();
    eprintln!(
        "10k waiting: first scan {first:?} (10,000 reads); then scan + claim median {:?} with 1 read",
        per_claim[per_claim.len() / 2]
    );
}

fn key(q: &Queue, now: SystemTime) -> [usize; 4] {
    let c = q.tracked_counts(now).unwrap();
    [c.inbox, c.active, c.done, c.failed]
}

fn exact(q: &Queue) -> [usize; 4] {
    let fresh = Queue::new("proj", q.project_path());
    let c = fresh.counts().unwrap();
    [c.inbox, c.active, c.done, c.failed]
}

/// The tracked counts equal a full count after each of the queue's own
/// moves, without listing done/ or failed/ again; a change made by someone
/// else is seen by its folder's timestamps; nothing changed costs no listing.
#[test]
fn tracked_counts_follow_every_move_without_listing_big_folders() {
    let (_d, q) = setup();
    for i in 0..2_000 {
        fs::write(q.folder(Folder::Done).join(format!("old{i}.md")), "x").unwrap();
    }
    for i in 0..5 {
        put(&q, &format!("t{i}.md"), "a task");
    }
    put(&q, "bad.md", "");
    let now = later();
    assert_eq!(key(&q, now), exact(&q));
    let listed = q.folder_listings();
    for _ in 0..100 {
        assert_eq!(key(&q, now), [6, 0, 2_000, 0]);
    }
    assert_eq!(
        q.folder_listings(),
        listed,
        "nothing changed: nothing listed"
    );
    // Our own moves: scan (bad.md to failed/), claim, complete, fail, requeue.
    q.scan_inbox(now).unwrap();
    q.claim_by_name("t0", "s", "a", now).unwrap();
    q.complete("t0", Some("ok"), None, now).unwrap();
    q.claim_by_name("t1", "s", "a", now).unwrap();
    q.give_up("t1", "no", now).unwrap();
    q.claim_by_name("t2", "s", "a", now).unwrap();
    q.fail_attempt("t2", "flaky", 3, now).unwrap();
    q.claim_by_name("t3", "s", "a", now).unwrap();
    q.requeue("t3").unwrap();
    q.claim_by_name("t4", "s", "a", now).unwrap();
    let listed = q.folder_listings();
    assert_eq!(key(&q, now), [2, 1, 2_001, 2]);
    assert_eq!(key(&q, now), exact(&q));
    assert!(
        q.folder_listings() - listed <= 2,
        "done/ and failed/ are not listed again ({} listings)",
        q.folder_listings() - listed
    );
    // Someone else's change (an operator's mv, a new task) is seen.
    fs::rename(
        q.folder(Folder::Done).join("old0.md"),
        q.folder(Folder::Archive).join("old0.md"),
    )
    .unwrap();
    put(&q, "new.md", "another");
    assert_eq!(key(&q, now), [3, 1, 2_000, 2]);
    // And everything is recounted every RECOUNT_EVERY regardless.
    let listed = q.folder_listings();
    key(&q, now + RECOUNT_EVERY);
    assert_eq!(q.folder_listings() - listed, 4);
}

#[test]
fn status_json_is_written_only_when_it_changed() {
    let (_d, q) = setup();
    put(&q, "a.md", "x");
    let status = q.root().join("status.json");
    let now = later();
    assert!(q.publish_status(&["s1".into(), "s2".into()], now).unwrap());
    let first = fs::read_to_string(&status).unwrap();
    // Same sessions (in another order) and counts: not written again.
    for _ in 0..10 {
        assert!(!q.publish_status(&["s2".into(), "s1".into()], now).unwrap());
    }
    assert_eq!(fs::read_to_string(&status).unwrap(), first);
    q.claim_by_name("a", "s1", "x", now).unwrap();
    assert!(q.publish_status(&["s1".into(), "s2".into()], now).unwrap());
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&status).unwrap()).unwrap();
    assert_eq!(
        (v["queue"]["inbox"].as_u64(), v["queue"]["active"].as_u64()),
        (Some(0), Some(1))
    );
    // A deleted status.json is written again.
    fs::remove_file(&status).unwrap();
    assert!(q.publish_status(&["s1".into(), "s2".into()], now).unwrap());
}

#[test]
fn inbox_files_not_named_md_are_reported_once_each() {
    let (_d, q) = setup();
    put(&q, "notes.txt", "not a task");
    put(&q, "task.markdown", "not a task either");
    let scan = q.scan_inbox(later()).unwrap();
    assert_eq!(scan.ignored, ["notes.txt", "task.markdown"]);
    assert_eq!(scan.newly_ignored, ["notes.txt", "task.markdown"]);
    for _ in 0..3 {
        let scan = q.scan_inbox(later()).unwrap();
        assert_eq!(scan.ignored.len(), 2, "still listed");
        assert!(scan.newly_ignored.is_empty(), "reported once");
    }
    put(&q, "more.txt", "x");
    assert_eq!(q.scan_inbox(later()).unwrap().newly_ignored, ["more.txt"]);
    // Gone and back: reported again.
    fs::remove_file(q.folder(Folder::Inbox).join("notes.txt")).unwrap();
    q.scan_inbox(later()).unwrap();
    put(&q, "notes.txt", "back");
    assert_eq!(q.scan_inbox(later()).unwrap().newly_ignored, ["notes.txt"]);
    // Untouched.
    assert!(Path::new(&q.folder(Folder::Inbox).join("task.markdown")).is_file());
}

/// Issue 12.11: a name with a newline or an escape in it would forge or
/// garble log lines; it goes to failed/ with its reason, under a clean name,
/// and what the scan reports shows it escaped.
#[test]
fn an_inbox_name_with_control_characters_fails_under_a_clean_name() {
    let (_d, q) = setup();
    put(&q, "ok\n[ERROR] forged line\u{1b}[2J.md", "a task");
    put(&q, "notes\n.txt", "not a task");
    let scan = q.scan_inbox(later()).unwrap();
    assert_eq!(scan.rejected.len(), 1, "{:?}", scan.rejected);
    let shown = &scan.rejected[0].file;
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
    assert!(shown.contains("\\n"), "{shown:?}");
    assert!(
        scan.ignored
            .iter()
            .all(|n| !n.chars().any(char::is_control)),
        "{:?}",
        scan.ignored
    );
    assert!(ls(&q, Folder::Inbox).iter().all(|n| n == "notes\n.txt"));
    let failed = ls(&q, Folder::Failed);
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed.iter().all(|n| !n.chars().any(char::is_control)),
        "{failed:?}"
    );
    let stem = failed[0]
        .trim_end_matches(".error.json")
        .trim_end_matches(".md")
        .to_string();
    let why = reason(&q, &stem);
    assert!(why.contains("control characters"), "{why}");
    // The task's text is kept.
    let md = failed.iter().find(|n| n.ends_with(".md")).unwrap();
    assert_eq!(
        fs::read_to_string(q.folder(Folder::Failed).join(md)).unwrap(),
        "a task"
    );
}
