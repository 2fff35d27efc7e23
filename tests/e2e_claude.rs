//! The real Claude Code, in a private tmux server, against the project's API
//! stand-in: it answers, it shows the limit message and fires `StopFailure`
//! with `rate_limit` when the account is exhausted, `claude -p` works, and the
//! usage endpoint reports each account's numbers. These are the facts every
//! later part of the daemon stands on.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use claude_failover::claude::facts;
use claude_failover::claude::hook::{RecordedEvent, EVENTS_DIR};
use support::{wait_for, Harness};
use testkit::sandbox::{Sandbox, SandboxSpec};
use testkit::standin::{StandIn, StandInAccount, StandInOptions};

const START: Duration = Duration::from_secs(45);
const TURN: Duration = Duration::from_secs(45);

struct World {
    h: Harness,
    sb: Sandbox,
    api: StandIn,
    claude: PathBuf,
}

fn world(name: &str) -> Option<World> {
    let claude = support::e2e_claude()?;
    let mut h = Harness::new(name);
    let spec = SandboxSpec {
        claude_binary: claude.to_string_lossy().into_owned(),
        tmux_socket: h.socket.clone(),
        ..SandboxSpec::default()
    };
    let sb = Sandbox::create(&h.path().join("sandbox"), &spec).unwrap();
    sb.install_hooks(support::bin()).unwrap();
    let api = StandIn::start(StandInOptions {
        accounts: sb
            .tokens()
            .into_iter()
            .map(|(n, t)| StandInAccount::new(n, t))
            .collect(),
        ..StandInOptions::default()
    })
    .unwrap();
    h.watch_state_dir(sb.state_dir.clone());
    Some(World { h, sb, api, claude })
}

/// Every hook event recorded so far, oldest first.
fn events(state_dir: &Path) -> Vec<RecordedEvent> {
    let dir = state_dir.join(EVENTS_DIR);
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
        .collect()
}

fn hook_name(e: &RecordedEvent) -> &str {
    e.payload
        .get("hook_event_name")
        .and_then(|v| v.as_str())
        .unwrap_or("")
}

fn wait_event(w: &World, what: &str, pred: impl Fn(&RecordedEvent) -> bool) -> RecordedEvent {
    wait_for(TURN, what, || {
        events(&w.sb.state_dir).into_iter().find(|e| pred(e))
    })
}

/// Types `text` the way the daemon will: bracketed paste, a pause, Enter.
fn type_prompt(w: &World, session: &str, text: &str) {
    w.h.tmux.paste(session, text).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    w.h.tmux.send_key(session, "Enter").unwrap();
}

fn launch(w: &World, session: &str, account: &str) {
    support::launch_by_hand(&w.h, &w.sb, &w.api.base_url(), &w.claude, session, account);
}

#[test]
fn interactive_claude_answers_then_reports_the_limit() {
    let Some(w) = world("e2e-interactive") else {
        return;
    };
    let session = "ccl-auto-11";
    launch(&w, session, "alpha");

    let start = wait_event(&w, "SessionStart", |e| hook_name(e) == "SessionStart");
    assert_eq!(start.session.as_deref(), Some(session));
    assert_eq!(start.payload["source"], "startup");
    let session_id = start.payload["session_id"].as_str().unwrap().to_string();
    // The hook ran under the account we launched with.
    assert_eq!(
        start.config_dir.as_deref(),
        w.sb.account("alpha").unwrap().home.to_str()
    );

    // Give the TUI its prompt before typing: SessionStart fires before the
    // input box is drawn.
    wait_for(START, "the input prompt", || {
        w.h.tmux
            .capture_pane(session, 0)
            .ok()
            .filter(|s| s.contains('❯') || s.contains("> "))
            .map(|_| ())
    });
    type_prompt(&w, session, "e2e-first: name a colour");
    let submitted = wait_event(&w, "UserPromptSubmit", |e| {
        hook_name(e) == "UserPromptSubmit"
    });
    assert_eq!(submitted.payload["prompt"], "e2e-first: name a colour");
    let stop = wait_event(&w, "Stop", |e| hook_name(e) == "Stop");
    assert_eq!(
        stop.payload["session_id"].as_str(),
        Some(session_id.as_str())
    );
    let answer = stop.payload["last_assistant_message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        answer.contains("STANDIN-ANSWER[alpha]: e2e-first: name a colour"),
        "{answer}"
    );
    let req = w
        .api
        .requests_for("alpha")
        .into_iter()
        .find(|r| r.prompt == "e2e-first: name a colour")
        .expect("the stand-in saw the prompt under alpha's token");
    assert_eq!(req.token, w.sb.account("alpha").unwrap().token);

    // Exhausted: the TUI shows the limit text and StopFailure says rate_limit.
    w.api.exhaust("alpha").unwrap();
    type_prompt(&w, session, "e2e-second: refused");
    let failure = wait_event(&w, "StopFailure", |e| hook_name(e) == "StopFailure");
    assert_eq!(
        failure.payload["error"],
        facts::STOP_FAILURE_RATE_LIMIT,
        "{:?}",
        failure.payload
    );
    let message = failure.payload["last_assistant_message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains(facts::LIMIT_TEXT_FIVE_HOUR), "{message}");
    wait_for(TURN, "the limit text on the screen", || {
        w.h.tmux
            .capture_pane(session, 100)
            .ok()
            .filter(|s| s.contains(facts::LIMIT_TEXT_FIVE_HOUR))
            .map(|_| ())
    });
    assert!(w
        .api
        .requests_for("alpha")
        .iter()
        .any(|r| r.status == 429 && r.prompt == "e2e-second: refused"));
}

fn print_mode(w: &World, account: &str, prompt: &str) -> std::process::Output {
    let mut cmd = Command::new(&w.claude);
    cmd.args(["-p", prompt]).current_dir(&w.sb.pool_dirs[0].1);
    for (k, v) in w.sb.claude_env(account, &w.api.base_url()) {
        cmd.env(k, v);
    }
    claude_failover::sys::process::run(&mut cmd, None, TURN)
        .map(|f| std::process::Output {
            status: f.status,
            stdout: f.stdout.into_bytes(),
            stderr: f.stderr.into_bytes(),
        })
        .expect("claude -p finishes")
}

#[test]
fn print_mode_answers_and_usage_endpoint_reports_each_account() {
    let Some(w) = world("e2e-print") else { return };
    let out = print_mode(&w, "beta", "e2e-print: hello");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("STANDIN-ANSWER[beta]: e2e-print: hello"),
        "{stdout}"
    );

    // A checkpoint reads the answer back from the real transcript's tail.
    let transcripts =
        w.sb.shared_root
            .join("projects")
            .join(facts::transcript_folder_name(&w.sb.pool_dirs[0].1));
    let newest = std::fs::read_dir(&transcripts)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .expect("a transcript");
    let tail = claude_failover::store::checkpoint::read_tail(&newest).unwrap();
    let (text, _) = claude_failover::store::checkpoint::from_transcript_tail(&tail);
    assert!(text
        .unwrap_or_default()
        .contains("STANDIN-ANSWER[beta]: e2e-print: hello"));

    // Each account's own numbers, in percent, through the real endpoint shape.
    w.api.set_usage("alpha", 42.0, 7.5).unwrap();
    let (beta_5h, beta_7d) = w.api.usage("beta").unwrap();
    assert!(beta_5h > 0.0, "beta's traffic raised its five-hour window");
    for (name, five, seven) in [("alpha", 42.0, 7.5), ("beta", beta_5h, beta_7d)] {
        let token = &w.sb.account(name).unwrap().token;
        let body: serde_json::Value = ureq::get(&format!("{}/api/oauth/usage", w.api.base_url()))
            .set("Authorization", &format!("Bearer {token}"))
            .set("anthropic-beta", "oauth-2025-04-20")
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        assert_eq!(
            body["five_hour"]["utilization"].as_f64(),
            Some(five),
            "{name}: {body}"
        );
        assert_eq!(
            body["seven_day"]["utilization"].as_f64(),
            Some(seven),
            "{name}: {body}"
        );
        assert!(
            body["five_hour"]["resets_at"]
                .as_str()
                .is_some_and(|s| s.ends_with("+00:00") || s.ends_with('Z')),
            "{body}"
        );
    }

    // Exhausted in print mode: the limit line, exit 0 (claude-code-facts §2).
    w.api.exhaust("beta").unwrap();
    let out = print_mode(&w, "beta", "e2e-print: refused");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(facts::LIMIT_TEXT_FIVE_HOUR), "{stdout}");
}
