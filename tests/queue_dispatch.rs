//! The dispatcher on the real Claude Code: tasks from two projects' inboxes
//! end in done/ exactly once, each with the stand-in's answer to its own
//! prompt, even when a session is killed mid-task; bad input ends in failed/
//! with the reason; pools grow under a queue and shrink back after idling.

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use claude_failover::store::queue;
use support::{enqueue_task, task_result, wait_for, wait_task_ended, World};

fn files(dir: &Path, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn q(project: &Path, folder: &str) -> std::path::PathBuf {
    project.join(".agent-queue").join(folder)
}

#[test]
fn twenty_tasks_over_two_projects_survive_a_killed_session() {
    let Some(mut w) = World::new("dispatch-20", |spec| {
        spec.pools[0].min = 3;
        spec.pools[0].max = 3;
        spec.projects = vec![("p1".into(), "auto".into()), ("p2".into(), "auto".into())];
        spec.extra_yaml
            .push_str("lifecycle:\n  interval: 2s\ncheckpoint:\n  interval: 1s\n");
    }) else {
        return;
    };
    // Slow answers so a session can be caught mid-task.
    w.api.set_latency(Duration::from_millis(1500));
    let _pid = w.start_daemon(&[]);
    for i in 11..14 {
        w.wait_state(&format!("ccl-auto-{i}"), "idle", Duration::from_secs(60));
    }
    let p1 = w.sb.project_dirs[0].1.clone();
    let p2 = w.sb.project_dirs[1].1.clone();
    let mut expected = Vec::new();
    for i in 0..20 {
        let (proj, name) = if i % 2 == 0 { (&p1, "p1") } else { (&p2, "p2") };
        let prompt = format!("task {i:02} of {name}: say the number {i}");
        queue::enqueue(
            proj,
            None,
            prompt.as_bytes(),
            Some(&format!("t{i:02}")),
            SystemTime::now(),
        )
        .unwrap();
        expected.push((proj.clone(), format!("t{i:02}"), prompt));
    }
    // Kill a session while it works on a task.
    let victim = wait_for(
        Duration::from_secs(60),
        "a session working on a task",
        || {
            let s = w.status()?;
            s["sessions"]
                .as_array()?
                .iter()
                .find(|x| x["state"] == "working" && !x["task"].is_null())
                .map(|x| x["name"].as_str().unwrap().to_string())
        },
    );
    w.h.tmux.kill_session(&victim).unwrap();

    let mut checkpoint = None;
    wait_for(Duration::from_secs(240), "all 20 tasks done", || {
        if checkpoint.is_none() {
            let dir = w.sb.state_dir.join("checkpoints");
            checkpoint = std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                (!v["task"].is_null() && v["state"] == "working").then_some(v)
            });
        }
        let done = files(&q(&p1, "done"), ".md").len() + files(&q(&p2, "done"), ".md").len();
        (done == 20).then_some(())
    });
    for (proj, name, prompt) in &expected {
        // Exactly once: in done/, nowhere else, under its own name.
        assert!(
            q(proj, "done").join(format!("{name}.md")).is_file(),
            "{name} not in done/"
        );
        for folder in ["inbox", "active", "failed"] {
            assert!(
                !q(proj, folder).join(format!("{name}.md")).exists(),
                "{name} also in {folder}/"
            );
        }
        let result: serde_json::Value = serde_json::from_slice(
            &std::fs::read(q(proj, "done").join(format!("{name}.result.json"))).unwrap(),
        )
        .unwrap();
        let answer = result["last_assistant_message"]
            .as_str()
            .unwrap_or_default();
        assert!(
            answer.contains(&format!("STANDIN-ANSWER[alpha]: {prompt}")),
            "{name}: {answer}"
        );
        assert_eq!(result["account"], "alpha");
        assert!(result["claude_session_id"].as_str().is_some());
    }
    assert_eq!(
        files(&q(&p1, "done"), ".md").len() + files(&q(&p2, "done"), ".md").len(),
        20,
        "no duplicates in done/"
    );
    // The counts in /status and status.json follow within a second or two.
    wait_for(Duration::from_secs(10), "queue counts in /status", || {
        let s = w.status()?;
        (s["queues"]["p1"]["done"] == 10 && s["queues"]["p2"]["done"] == 10).then_some(())
    });
    wait_for(Duration::from_secs(10), "status.json of p1", || {
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p1.join(".agent-queue/status.json")).ok()?)
                .ok()?;
        s.to_string().contains("\"done\":10").then_some(())
    });
    // Checkpoints: one per session, naming the task it works on.
    let cp = checkpoint.unwrap_or_else(|| {
        let dir = w.sb.state_dir.join("checkpoints");
        let all: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        panic!("no checkpoint of a working session with its task: {all:?}")
    });
    assert!(cp["claude_session_id"].as_str().is_some(), "{cp}");
    assert!(cp["task"].as_str().is_some(), "{cp}");
}

/// A daemon killed between a claim's two steps (the task renamed into
/// active/, its marker not yet written) leaves a task no session has. The
/// next daemon returns one older than the orphan grace to the inbox at its
/// start, and a younger one (it could be another daemon's claim under way)
/// when that grace ends: both are done, neither left until the janitor's
/// next round five minutes on (the soak under load took 335 s for its last
/// task that way).
#[test]
fn tasks_claimed_without_their_marker_before_a_crash_are_done_after_the_restart() {
    let Some(mut w) = World::new("dispatch-orphan", |spec| {
        spec.pools[0].min = 1;
        spec.pools[0].max = 1;
    }) else {
        return;
    };
    let p1 = w.sb.project_dirs[0].1.clone();
    let claim_cut_short = |name: &str, word: &str| {
        enqueue_task(
            &p1,
            name,
            &format!("a task caught between claim and marker:\n\nsay the word {word}"),
        );
        std::fs::rename(
            q(&p1, "inbox").join(format!("{name}.md")),
            q(&p1, "active").join(format!("{name}.md")),
        )
        .unwrap();
    };
    claim_cut_short("old", "lantern");
    std::thread::sleep(queue::ORPHAN_GRACE + Duration::from_millis(500));
    claim_cut_short("young", "harbour");
    let _pid = w.start_daemon(&[]);
    // Well within the janitor's interval (5 min).
    for name in ["old", "young"] {
        assert_eq!(wait_task_ended(&p1, name, Duration::from_secs(90)), "done");
        let result = task_result(&p1, name);
        assert_eq!(
            result["attempt"], 1,
            "no attempt was counted for it: {result}"
        );
    }
    assert!(files(&q(&p1, "active"), ".md").is_empty());
    assert!(files(&q(&p1, "inbox"), ".md").is_empty());
    let log = testkit::world::daemon_log(&w.h, 0);
    assert!(
        log.contains("task demo/old was claimed before a restart but has no marker"),
        "{log}"
    );
    assert!(
        log.contains("task young was in active/ with no marker for 10s (a claim cut short)"),
        "{log}"
    );
}

#[test]
fn bad_input_ends_in_failed_with_the_reason_and_nothing_is_lost() {
    let Some(mut w) = World::new("dispatch-bad", |spec| {
        spec.pools[0].min = 1;
        spec.pools[0].max = 1;
        spec.extra_yaml.push_str("lifecycle:\n  interval: 2s\n");
    }) else {
        return;
    };
    let _pid = w.start_daemon(&[]);
    w.wait_state("ccl-auto-11", "idle", Duration::from_secs(60));
    let p = w.sb.project_dirs[0].1.clone();
    let inbox = q(&p, "inbox");
    std::fs::write(inbox.join("latin1.md"), b"caf\xe9 au lait\n").unwrap();
    std::fs::write(inbox.join("huge.md"), vec![b'a'; 1024 * 1024 + 1]).unwrap();
    std::fs::write(
        inbox.join("broken.md"),
        "---\npriority: [unclosed\n---\nbody\n",
    )
    .unwrap();
    std::fs::write(
        inbox.join("unknown-key.md"),
        "---\ncolour: red\n---\nbody\n",
    )
    .unwrap();
    std::fs::create_dir(inbox.join("folder.md")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", inbox.join("link.md")).unwrap();
    std::fs::write(
        inbox.join("good.md"),
        "---\npriority: 5\n---\nbad-input test: the good one\n",
    )
    .unwrap();
    let cases = [
        ("latin1", "UTF-8"),
        ("huge", "1 MiB"),
        ("broken", "front matter"),
        ("unknown-key", "colour"),
        ("folder", "folder"),
        ("link", "symlink"),
    ];
    wait_for(
        Duration::from_secs(60),
        "every bad file in failed/ and the good one done",
        || {
            let failed = files(&q(&p, "failed"), ".error.json").len();
            (failed == cases.len() && q(&p, "done").join("good.md").is_file()).then_some(())
        },
    );
    for (name, reason) in cases {
        let err: serde_json::Value = serde_json::from_slice(
            &std::fs::read(q(&p, "failed").join(format!("{name}.error.json"))).unwrap(),
        )
        .unwrap();
        let why = err["reason"].as_str().unwrap_or_default();
        assert!(why.contains(reason), "{name}: {why}");
        assert!(
            std::fs::symlink_metadata(q(&p, "failed").join(format!("{name}.md"))).is_ok(),
            "{name} kept in failed/"
        );
    }
    assert!(
        files(&inbox, "").is_empty(),
        "inbox left: {:?}",
        files(&inbox, "")
    );
    // The symlink was moved, never followed: its target is untouched.
    assert!(std::fs::symlink_metadata(q(&p, "failed").join("link.md"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn a_pool_grows_under_a_queue_and_shrinks_back_after_idling() {
    let Some(mut w) = World::new("dispatch-grow", |spec| {
        spec.pools[0].min = 1;
        spec.pools[0].max = 4;
        spec.extra_yaml.push_str("lifecycle:\n  interval: 1s\n");
    }) else {
        return;
    };
    // Replace the pool's idle_shrink_after with something short.
    w.sb.edit_config("    max: 4\n", "    max: 4\n    idle_shrink_after: 3s\n");
    w.api.set_latency(Duration::from_millis(1000));
    let _pid = w.start_daemon(&[]);
    w.wait_state("ccl-auto-11", "idle", Duration::from_secs(60));
    let p = w.sb.project_dirs[0].1.clone();
    for i in 0..12 {
        queue::enqueue(
            &p,
            None,
            format!("grow {i}").as_bytes(),
            Some(&format!("g{i:02}")),
            SystemTime::now(),
        )
        .unwrap();
    }
    let mut most = 0;
    wait_for(Duration::from_secs(180), "12 tasks done", || {
        let n = w.status()?["sessions"].as_array()?.len();
        most = most.max(n);
        (files(&q(&p, "done"), ".md").len() == 12).then_some(())
    });
    assert_eq!(most, 4, "the pool grew to max while tasks waited");
    wait_for(Duration::from_secs(60), "the pool back at min", || {
        let s = w.status()?;
        let names: Vec<String> = s["sessions"]
            .as_array()?
            .iter()
            .map(|x| x["name"].as_str().unwrap_or("").to_string())
            .collect();
        (names == ["ccl-auto-11"] && w.h.tmux.list_sessions().ok()?.len() == 1).then_some(())
    });
}
