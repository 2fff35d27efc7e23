//! Tasks as operators run them: agentic turns of many requests, each a tool
//! call that really changes the project folder (Bash through the real
//! Claude Code, scripted by the stand-in: `testkit::script`), and a refusal
//! in the middle of one.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use support::{
    add_user_hook, assert_task_once, enqueue_task as enqueue, task_result as result, wait_for,
    wait_task_ended, World,
};

const UP: Duration = Duration::from_secs(90);

fn wait_done(project: &Path, name: &str, timeout: Duration) {
    let ended = wait_task_ended(project, name, timeout);
    assert_eq!(ended, "done", "{name} ended in {ended}/");
}

/// Exactly once: in done/ and nowhere else.
fn assert_done_once(project: &Path, name: &str) {
    assert_task_once(project, name, "done");
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn steps(n: u32) -> Vec<String> {
    (1..=n).map(|k| format!("step-{k}")).collect()
}

/// `(asked, answered, session, state, task)` from `/status` every 100 ms
/// until stopped: the state is the daemon's at some moment between the two.
type Samples = Arc<Mutex<Vec<(SystemTime, SystemTime, String, String, Option<String>)>>>;

fn sample_status(w: &World, stop: Arc<AtomicBool>) -> (Samples, std::thread::JoinHandle<()>) {
    let samples: Samples = Arc::default();
    let url = format!("http://{}/status", w.sb.http_listen);
    let out = samples.clone();
    let thread = std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let asked = SystemTime::now();
            if let Some(v) = ureq::get(&url)
                .timeout(Duration::from_secs(2))
                .call()
                .ok()
                .and_then(|r| r.into_json::<serde_json::Value>().ok())
            {
                let answered = SystemTime::now();
                for s in v["sessions"].as_array().into_iter().flatten() {
                    out.lock().unwrap().push((
                        asked,
                        answered,
                        s["name"].as_str().unwrap_or("").to_string(),
                        s["state"].as_str().unwrap_or("").to_string(),
                        s["task"].as_str().map(String::from),
                    ));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    (samples, thread)
}

/// Must-show 1: three sessions, six tasks of eight tool steps each. Every
/// step's line lands in its task's file, in order, once; every task is done
/// once with its own final answer; and whenever `/status` was sampled
/// between a task's first and last request, its session was `working`.
#[test]
fn six_agentic_tasks_of_eight_steps_on_three_sessions_stay_working_between_steps() {
    let Some(mut w) = World::new("ag-six", |spec| {
        spec.pools[0].min = 3;
        spec.pools[0].max = 3;
    }) else {
        return;
    };
    let project = w.sb.project_dirs[0].1.clone();
    w.start_daemon(&[]);
    for name in ["ccl-auto-11", "ccl-auto-12", "ccl-auto-13"] {
        w.wait_state(name, "idle", UP);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (samples, sampler) = sample_status(&w, stop.clone());
    let tasks: Vec<String> = (1..=6).map(|i| format!("agentic-{i}")).collect();
    for (i, t) in tasks.iter().enumerate() {
        enqueue(
            &project,
            t,
            &format!(
                "Task {t}: record each step of the work in its file.\n\nSTANDIN-SCRIPT steps=8 file=out-{}.txt delay_ms=150\n",
                i + 1
            ),
        );
    }
    for t in &tasks {
        wait_done(&project, t, Duration::from_secs(300));
    }
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let samples = samples.lock().unwrap().clone();
    let requests = w.api.requests();
    for (i, t) in tasks.iter().enumerate() {
        let file = format!("out-{}.txt", i + 1);
        assert_eq!(lines(&project.join(&file)), steps(8), "{t}: {file}");
        assert_done_once(&project, t);
        let answer = result(&project, t)["last_assistant_message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(
            answer.contains(&format!("script done: 8 steps into {file}")),
            "{t}: its own final answer, got {answer:?}"
        );
        // Between its steps: from the request after step 1's tool call to
        // the one for the answer. (Not from step 1's own request: the hook
        // that makes the session `working` is handed to the daemon before
        // Claude Code sends it, but applied a moment after, which on a
        // loaded machine a sample can fall into.) A sample counts only when
        // asked and answered inside that span.
        let mine: Vec<_> = requests
            .iter()
            .filter(|r| r.script.as_deref().is_some_and(|s| s.contains(&file)))
            .collect();
        let first = mine
            .iter()
            .filter(|r| r.step == Some(2))
            .map(|r| r.at)
            .min();
        let last = mine
            .iter()
            .filter(|r| r.step == Some(9))
            .map(|r| r.at)
            .max();
        let (Some(first), Some(last)) = (first, last) else {
            panic!("{t}: no request for step 2 or for the answer: {mine:?}");
        };
        let during: Vec<_> = samples
            .iter()
            .filter(|(asked, answered, _, _, task)| {
                *asked > first
                    && *answered < last
                    && task.as_deref().is_some_and(|x| x.starts_with(t))
            })
            .collect();
        assert!(
            during.len() >= 3,
            "{t}: too few samples during its turn to judge ({})",
            during.len()
        );
        let not_working: Vec<_> = during.iter().filter(|s| s.3 != "working").collect();
        assert!(
            not_working.is_empty(),
            "{t}: not working between its steps: {not_working:?}"
        );
    }
}

/// Must-show 2: a refusal at step 3 of a running task. The swap happens,
/// the task goes on on the other account from step 3 (the refused request
/// never ran its step, so step 3 is asked for again, once answered) and
/// finishes with all eight lines.
#[test]
fn a_refusal_at_step_3_swaps_and_the_task_finishes_on_the_other_account_with_every_step() {
    let Some(mut w) = World::new("ag-refuse", |spec| {
        spec.pools[0].min = 1;
        spec.pools[0].max = 1;
    }) else {
        return;
    };
    let project = w.sb.project_dirs[0].1.clone();
    w.start_daemon(&[]);
    w.wait_state("ccl-auto-11", "idle", UP);
    enqueue(
        &project,
        "refused-mid-turn",
        "Record each step.\n\nSTANDIN-SCRIPT steps=8 file=out-r.txt delay_ms=100 refuse_at=3\n",
    );
    wait_done(&project, "refused-mid-turn", Duration::from_secs(300));
    assert_eq!(lines(&project.join("out-r.txt")), steps(8));
    assert_done_once(&project, "refused-mid-turn");
    let r = result(&project, "refused-mid-turn");
    assert_eq!(r["account"], "beta", "{r}");
    assert!(
        r["last_assistant_message"]
            .as_str()
            .is_some_and(|a| a.contains("script done: 8 steps into out-r.txt")),
        "{r}"
    );
    let mine: Vec<_> = w
        .api
        .requests()
        .into_iter()
        .filter(|r| r.script.as_deref().is_some_and(|s| s.contains("out-r.txt")))
        .collect();
    let refused: Vec<_> = mine.iter().filter(|r| r.status == 429).collect();
    assert_eq!(refused.len(), 1, "one refusal: {mine:#?}");
    assert_eq!(refused[0].step, Some(3));
    assert_eq!(refused[0].account.as_deref(), Some("alpha"));
    // Steps 1-2 answered on alpha; 3 onwards, and the answer, on beta.
    for r in mine.iter().filter(|r| r.status == 200) {
        let want = if r.step.unwrap_or(0) < 3 {
            "alpha"
        } else {
            "beta"
        };
        assert_eq!(r.account.as_deref(), Some(want), "step {:?}", r.step);
    }
    for k in 1..=9 {
        let answered = mine
            .iter()
            .filter(|r| r.status == 200 && r.step == Some(k))
            .count();
        assert_eq!(answered, 1, "step {k} answered once: {mine:#?}");
    }
}

/// Must-show 3: a step that needs a permission (in `acceptEdits` mode the
/// steps' file writes run, a network command asks). The session is
/// `waiting` within 2 s of the `Notification` hook (timed by a user's own
/// hook beside ours), the operator is told once, nothing is typed into it
/// while it waits (the prompt stays up, no further step is asked for), and
/// once a person answers the task goes on and is done with every step.
#[test]
fn a_permission_prompt_is_waiting_notified_once_never_typed_into_and_the_task_goes_on() {
    let (hook, got) = support::receiver();
    let Some(mut w) = World::new("ag-ask", |spec| {
        spec.pools[0].min = 1;
        spec.pools[0].max = 1;
        spec.claude_args = vec!["--permission-mode".into(), "acceptEdits".into()];
    }) else {
        return;
    };
    w.sb.notify_webhook(&format!("{hook}/events"));
    let stamps = w.h.path().join("notification-times");
    add_user_hook(
        &w,
        "Notification",
        &format!("date +%s%N >> {}", stamps.display()),
    );
    let project = w.sb.project_dirs[0].1.clone();
    w.start_daemon(&[]);
    w.wait_state("ccl-auto-11", "idle", UP);
    enqueue(
        &project,
        "needs-a-person",
        "Record each step.\n\nSTANDIN-SCRIPT steps=3 file=out-ask.txt ask_at=2\n",
    );
    let waiting_at = wait_for(UP, "ccl-auto-11 to be waiting", || {
        w.session("ccl-auto-11")
            .filter(|s| s["state"] == "waiting")
            .map(|_| SystemTime::now())
    });
    let fired = wait_for(
        Duration::from_secs(10),
        "the Notification hook's time",
        || {
            let text = std::fs::read_to_string(&stamps).ok()?;
            let ns: u64 = text.lines().next()?.trim().parse().ok()?;
            Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(ns))
        },
    );
    let late = waiting_at.duration_since(fired).unwrap_or_default();
    assert!(
        late <= Duration::from_secs(2),
        "waiting {late:?} after the Notification"
    );
    let screen = w.h.tmux.capture_pane("ccl-auto-11", 0).unwrap();
    assert!(screen.contains("Do you want to proceed?"), "{screen}");
    // Nothing typed into it: after a while the prompt is still up, the
    // session still waits, and the stand-in was asked for no further step.
    std::thread::sleep(Duration::from_secs(5));
    let screen = w.h.tmux.capture_pane("ccl-auto-11", 0).unwrap();
    assert!(screen.contains("Do you want to proceed?"), "{screen}");
    assert_eq!(w.session("ccl-auto-11").unwrap()["state"], "waiting");
    let asked: Vec<Option<u32>> = w
        .api
        .requests()
        .iter()
        .filter(|r| {
            r.script
                .as_deref()
                .is_some_and(|s| s.contains("out-ask.txt"))
        })
        .map(|r| r.step)
        .collect();
    assert_eq!(asked, vec![Some(1), Some(2)], "no step past the prompt");
    let notes = got
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, body)| body.contains("\"kind\":\"session_waiting\""))
        .count();
    assert_eq!(
        notes,
        1,
        "one session_waiting note: {:?}",
        got.lock().unwrap()
    );
    // A person answers (Yes): the task goes on.
    w.h.tmux.send_key("ccl-auto-11", "Enter").unwrap();
    wait_done(&project, "needs-a-person", Duration::from_secs(120));
    assert_eq!(lines(&project.join("out-ask.txt")), steps(3));
    assert_done_once(&project, "needs-a-person");
    let notes = got
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, body)| body.contains("\"kind\":\"session_waiting\""))
        .count();
    assert_eq!(notes, 1, "still one session_waiting note");
}

/// Must-show 6 of issue 14: hooks removed from settings while a session
/// works (Claude Code 2.1.329 re-reads them: its turn goes on, no hook
/// fires). The session is reported `hooks_silent` in `/status`, `/healthz`
/// answers 503 naming it, and one notification says so, within the
/// configured time (3 s here) plus a tick.
#[test]
fn a_session_whose_hooks_are_removed_while_it_works_is_reported_hooks_silent() {
    let (hook, got) = support::receiver();
    let Some(mut w) = World::new("ag-silent", |spec| {
        spec.pools[0].min = 1;
        spec.pools[0].max = 1;
        spec.extra_yaml
            .push_str("lifecycle:\n  interval: 1s\n  hooks_silent_after: 3s\n");
    }) else {
        return;
    };
    w.sb.notify_webhook(&format!("{hook}/events"));
    let project = w.sb.project_dirs[0].1.clone();
    w.start_daemon(&[]);
    w.wait_state("ccl-auto-11", "idle", UP);
    enqueue(
        &project,
        "long-turn",
        "Record each step.\n\nSTANDIN-SCRIPT steps=40 file=out-long.txt delay_ms=400\n",
    );
    w.wait_state("ccl-auto-11", "working", UP);
    // Working with its hooks heard: every tool call's PostToolUse keeps it
    // from looking silent, though the turn is longer than 3 s.
    wait_for(Duration::from_secs(30), "a few steps done", || {
        (lines(&project.join("out-long.txt")).len() >= 8).then_some(())
    });
    assert_eq!(w.session("ccl-auto-11").unwrap()["hooks_silent"], false);
    for account in ["alpha", "beta"] {
        let path = w.sb.account(account).unwrap().home.join("settings.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("hooks");
        std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }
    let removed = std::time::Instant::now();
    let s = wait_for(Duration::from_secs(30), "hooks_silent in /status", || {
        w.session("ccl-auto-11")
            .filter(|s| s["hooks_silent"] == true)
    });
    let took = removed.elapsed();
    // 3 s of silence, then the next tick (1 s here) and a margin for load.
    assert!(
        took <= Duration::from_secs(10),
        "reported after {took:?}: {s}"
    );
    let health = ureq::get(&format!("http://{}/healthz", w.sb.http_listen)).call();
    let (code, body) = match health {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("/healthz: {e}"),
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("ccl-auto-11: hooks silent"), "{body}");
    wait_for(Duration::from_secs(10), "the hooks_silent note", || {
        got.lock()
            .unwrap()
            .iter()
            .any(|(_, b)| b.contains("\"kind\":\"hooks_silent\""))
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let notes = got
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, b)| b.contains("\"kind\":\"hooks_silent\""))
        .count();
    assert_eq!(notes, 1, "one hooks_silent note");
}
