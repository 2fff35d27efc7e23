//! The shared-folder invariant: every way an account home can diverge from
//! `shared_root` is reported naming the account and the entry, the swap's
//! `ensure_for_account` creates links only where nothing exists, and (with
//! the real Claude Code) a conversation started under one account continues
//! under another once `setup` has linked the homes.

mod support;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use claude_failover::claude::facts;
use claude_failover::claude::shared_folders::{
    check_lines, ensure_for_account, verify, EnsureError, Found, Problem,
};
use claude_failover::commands::setup;
use claude_failover::config::Config;
use support::Harness;
use testkit::sandbox::{Sandbox, SandboxSpec};
use testkit::standin::{self, StandIn, StandInAccount, StandInOptions};

/// A temp folder with a config for accounts `main` and `backup` (homes
/// created, empty) and a shared root that does not exist yet.
struct World {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: Config,
}

fn world(extra_yaml: &str) -> World {
    let dir = tempfile::Builder::new()
        .prefix("cf-shared-")
        .tempdir()
        .unwrap();
    let root = dir.path().canonicalize().unwrap();
    let text = format!(
        "state_dir: {r}/state\nshared_root: {r}/shared\nswap:\n  mode: restart\n{extra_yaml}accounts:\n  - name: main\n    home: {r}/homes/main\n  - name: backup\n    home: {r}/homes/backup\n",
        r = root.display()
    );
    let path = root.join("config.yaml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::parse(&text, &path).expect("valid config");
    for a in &config.accounts {
        std::fs::create_dir_all(&a.home).unwrap();
    }
    World {
        _dir: dir,
        root,
        config,
    }
}

impl World {
    fn home(&self, account: &str) -> PathBuf {
        self.config
            .accounts
            .iter()
            .find(|a| a.name == account)
            .unwrap()
            .home
            .clone()
    }

    fn shared(&self, entry: &str) -> PathBuf {
        self.config.shared_root.join(entry)
    }

    /// Links every account the way the swap does.
    fn link_all(&self) {
        for a in &self.config.accounts {
            ensure_for_account(&self.config, a).unwrap();
        }
        assert_eq!(verify(&self.config), vec![]);
    }
}

fn link_problem(problems: &[Problem], account: &str, entry: &str) -> Found {
    let found: Vec<&Found> = problems
        .iter()
        .filter(|p| p.account() == Some(account) && p.entry() == Some(entry))
        .filter_map(Problem::found)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one problem for {account}/{entry} in {problems:#?}"
    );
    found[0].clone()
}

#[test]
fn every_divergence_is_named_with_its_account_and_entry() {
    let w = world("");
    w.link_all();
    let elsewhere = w.root.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();

    // backup: the link removed, a real folder, a link to another folder.
    std::fs::remove_file(w.home("backup").join("projects")).unwrap();
    std::fs::remove_file(w.home("backup").join("file-history")).unwrap();
    std::fs::create_dir(w.home("backup").join("file-history")).unwrap();
    std::fs::remove_file(w.home("backup").join("session-env")).unwrap();
    symlink(&elsewhere, w.home("backup").join("session-env")).unwrap();
    // main: a dangling link, a file, a relative link that works.
    std::fs::remove_file(w.home("main").join("projects")).unwrap();
    symlink(w.root.join("gone"), w.home("main").join("projects")).unwrap();
    std::fs::remove_file(w.home("main").join("file-history")).unwrap();
    std::fs::write(w.home("main").join("file-history"), b"x").unwrap();
    std::fs::remove_file(w.home("main").join("session-env")).unwrap();
    symlink(
        "../../shared/session-env",
        w.home("main").join("session-env"),
    )
    .unwrap();
    assert!(
        w.home("main").join("session-env").is_dir(),
        "the relative link resolves"
    );

    let problems = verify(&w.config);
    assert_eq!(problems.len(), 6, "{problems:#?}");
    assert_eq!(
        link_problem(&problems, "backup", "projects"),
        Found::Missing
    );
    assert_eq!(
        link_problem(&problems, "backup", "file-history"),
        Found::RealFolder
    );
    assert_eq!(
        link_problem(&problems, "backup", "session-env"),
        Found::WrongTarget(elsewhere.clone())
    );
    assert_eq!(
        link_problem(&problems, "main", "projects"),
        Found::Dangling(w.root.join("gone"))
    );
    assert_eq!(
        link_problem(&problems, "main", "file-history"),
        Found::RealFile
    );
    assert_eq!(
        link_problem(&problems, "main", "session-env"),
        Found::RelativeTarget(PathBuf::from("../../shared/session-env"))
    );

    // What the operator reads: one line each, account, entry, expected, found.
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    let expected_projects = w.shared("projects");
    assert!(
        lines.contains(&format!(
            "account backup: file-history: expected a symlink to {}, found a real folder",
            w.shared("file-history").display()
        )),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&format!(
            "account backup: projects: expected a symlink to {}, found nothing",
            expected_projects.display()
        )),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&format!(
            "account backup: session-env: expected a symlink to {}, found a symlink to {}",
            w.shared("session-env").display(),
            elsewhere.display()
        )),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&format!(
            "account main: projects: expected a symlink to {}, found a dangling symlink to {}",
            expected_projects.display(),
            w.root.join("gone").display()
        )),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&format!(
            "account main: file-history: expected a symlink to {}, found a file",
            w.shared("file-history").display()
        )),
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| !l.contains('\n')));

    // check: one FAIL line per problem, each with the fix.
    let check = check_lines(&w.config);
    assert_eq!(check.len(), 6);
    for line in &check {
        let text = line.to_string();
        assert!(
            !line.ok && text.starts_with("FAIL shared folders: account "),
            "{text}"
        );
        assert!(
            text.ends_with("(fix: run `claude-failover setup`)"),
            "{text}"
        );
    }
}

#[test]
fn check_says_ok_once_when_every_account_shares_every_entry() {
    let w = world("shared: [projects, file-history, session-env, todos]\n");
    w.link_all();
    let lines = check_lines(&w.config);
    assert_eq!(lines.len(), 1);
    assert!(lines[0].ok);
    assert_eq!(
        lines[0].to_string(),
        format!(
            "ok   shared folders: projects, file-history, session-env, todos linked to {} in 2 accounts",
            w.config.shared_root.display()
        )
    );
}

#[test]
fn a_shared_folder_that_is_missing_or_not_a_folder_is_a_problem() {
    let w = world("");
    w.link_all();
    std::fs::remove_dir(w.shared("projects")).unwrap();
    std::fs::remove_dir(w.shared("session-env")).unwrap();
    std::fs::write(w.shared("session-env"), b"oops").unwrap();
    let problems = verify(&w.config);
    // The links spelled right and waiting for the folder are not reported on
    // top of the folder itself; the links that now resolve to a file are.
    let shared: Vec<&Problem> = problems
        .iter()
        .filter(|p| matches!(p, Problem::SharedFolder { .. }))
        .collect();
    assert_eq!(shared.len(), 2, "{problems:#?}");
    assert_eq!(
        shared[0].to_string(),
        format!(
            "shared root: projects: expected a folder at {}, found nothing",
            w.shared("projects").display()
        )
    );
    assert_eq!(
        shared[1].to_string(),
        format!(
            "shared root: session-env: expected a folder at {}, found a file",
            w.shared("session-env").display()
        )
    );
    assert!(
        problems
            .iter()
            .all(|p| p.entry() != Some("projects") || p.account().is_none()),
        "{problems:#?}"
    );

    // The swap recreates a missing shared folder, but never replaces a file.
    let err = ensure_for_account(&w.config, &w.config.accounts[0]).unwrap_err();
    assert!(err.to_string().contains("session-env"), "{err}");
    assert!(
        !w.shared("projects").exists(),
        "nothing created when anything is in the way"
    );
    std::fs::remove_file(w.shared("session-env")).unwrap();
    let created = ensure_for_account(&w.config, &w.config.accounts[0]).unwrap();
    assert_eq!(created, vec![w.shared("projects"), w.shared("session-env")]);
    assert_eq!(verify(&w.config), vec![]);
}

#[test]
fn ensure_creates_links_only_where_nothing_exists() {
    let w = world("");
    let main = w.config.accounts[0].clone();

    // Partly linked: only the missing links (and shared folders) are made.
    std::fs::create_dir_all(w.shared("projects")).unwrap();
    symlink(w.shared("projects"), main.home.join("projects")).unwrap();
    let created = ensure_for_account(&w.config, &main).unwrap();
    assert_eq!(
        created,
        vec![
            w.shared("file-history"),
            w.shared("session-env"),
            main.home.join("file-history"),
            main.home.join("session-env"),
        ]
    );
    for entry in facts::REQUIRED_SHARED {
        assert_eq!(
            std::fs::read_link(main.home.join(entry)).unwrap(),
            w.shared(entry)
        );
    }

    // A real folder with a transcript in it: refused, left exactly as it was,
    // and nothing else created for that account either.
    let backup = w.config.accounts[1].clone();
    std::fs::create_dir_all(backup.home.join("file-history/s1")).unwrap();
    std::fs::write(backup.home.join("file-history/s1/v1"), b"version 1").unwrap();
    let err = ensure_for_account(&w.config, &backup).unwrap_err();
    match &err {
        EnsureError::Problems(p) => assert_eq!(
            p,
            &vec![Problem::Link {
                account: "backup".into(),
                entry: "file-history".into(),
                expected: w.shared("file-history"),
                found: Found::RealFolder,
            }]
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains("account backup: file-history:"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(backup.home.join("file-history/s1/v1")).unwrap(),
        b"version 1"
    );
    assert!(std::fs::symlink_metadata(backup.home.join("projects")).is_err());
    assert!(std::fs::symlink_metadata(backup.home.join("session-env")).is_err());

    // A link somewhere else: refused and kept.
    std::fs::remove_dir_all(backup.home.join("file-history")).unwrap();
    let other = w.root.join("other");
    std::fs::create_dir_all(&other).unwrap();
    symlink(&other, backup.home.join("projects")).unwrap();
    let err = ensure_for_account(&w.config, &backup)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("found a symlink to {}", other.display())),
        "{err}"
    );
    assert_eq!(
        std::fs::read_link(backup.home.join("projects")).unwrap(),
        other
    );

    // A file: refused and kept.
    std::fs::remove_file(backup.home.join("projects")).unwrap();
    std::fs::write(backup.home.join("projects"), b"keep me").unwrap();
    assert!(ensure_for_account(&w.config, &backup).is_err());
    assert_eq!(
        std::fs::read(backup.home.join("projects")).unwrap(),
        b"keep me"
    );

    // Cleared by hand: linked.
    std::fs::remove_file(backup.home.join("projects")).unwrap();
    assert_eq!(ensure_for_account(&w.config, &backup).unwrap().len(), 3);
    assert_eq!(verify(&w.config), vec![]);
}

#[test]
fn a_missing_home_is_an_error_that_says_to_log_in_there() {
    let w = world("");
    std::fs::remove_dir(w.home("backup")).unwrap();
    let err = ensure_for_account(&w.config, &w.config.accounts[1]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("account backup: home: expected a folder at")
            && text.contains("found nothing"),
        "{text}"
    );
    assert!(!w.home("backup").exists(), "the home is not created");
    let lines = check_lines(&w.config);
    let fail = lines
        .iter()
        .find(|l| l.detail.contains("account backup: home"))
        .expect("a line about the home");
    assert!(
        fail.hint
            .as_deref()
            .unwrap_or("")
            .contains("log in there first"),
        "{fail}"
    );
}

#[test]
fn a_home_that_cannot_be_read_is_named() {
    let w = world("");
    let home = w.home("main");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o000)).unwrap();
    let readable_anyway = std::fs::read_dir(&home).is_ok();
    let problems = verify(&w.config);
    let err = ensure_for_account(&w.config, &w.config.accounts[0]).map(|_| ());
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    if readable_anyway {
        eprintln!("running with permission to read anything (root): the unreadable-home case cannot be staged here");
        return;
    }
    assert!(
        problems.iter().any(|p| p.account() == Some("main") && matches!(p.found(), Some(Found::Unreadable(_)))),
        "{problems:#?}"
    );
    let text = err.unwrap_err().to_string();
    assert!(
        text.contains("account main: home") && text.contains("cannot be read"),
        "{text}"
    );
}

#[test]
fn a_home_reached_through_a_symlink_into_the_shared_root_is_refused() {
    let w = world("");
    std::fs::remove_dir(w.home("backup")).unwrap();
    std::fs::create_dir_all(w.config.shared_root.join("projects")).unwrap();
    symlink(w.config.shared_root.join("projects"), w.home("backup")).unwrap();
    let err = ensure_for_account(&w.config, &w.config.accounts[1])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("account backup: home")
            && err.contains("shared_root")
            && err.contains("overlap"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(w.config.shared_root.join("projects"))
            .unwrap()
            .next()
            .is_none(),
        "nothing created"
    );
}

// ---------------------------------------------------------------------------
// The real Claude Code
// ---------------------------------------------------------------------------

const TURN: Duration = Duration::from_secs(60);

/// The real Claude Code, a sandbox whose homes are NOT linked yet (the
/// sandbox links them itself; that is undone so that `setup` is what makes
/// the accounts share their state), its config and the API stand-in.
struct E2e {
    _h: Harness,
    sb: Sandbox,
    api: StandIn,
    claude: PathBuf,
    config: Config,
}

fn e2e(name: &str) -> Option<E2e> {
    let claude = support::e2e_claude()?;
    let h = Harness::new(name);
    let spec = SandboxSpec {
        claude_binary: claude.to_string_lossy().into_owned(),
        tmux_socket: h.socket.clone(),
        ..SandboxSpec::default()
    };
    let sb = Sandbox::create(&h.path().join("sandbox"), &spec).unwrap();
    for a in &sb.accounts {
        for entry in facts::REQUIRED_SHARED {
            std::fs::remove_file(a.home.join(entry)).unwrap();
        }
    }
    let config = Config::load(&sb.config_path).unwrap();
    assert_eq!(verify(&config).len(), 6, "{:#?}", verify(&config));
    let api = StandIn::start(StandInOptions {
        accounts: sb
            .tokens()
            .into_iter()
            .map(|(n, t)| StandInAccount::new(n, t))
            .collect(),
        ..StandInOptions::default()
    })
    .unwrap();
    Some(E2e {
        _h: h,
        sb,
        api,
        claude,
        config,
    })
}

impl E2e {
    fn setup(&self) -> String {
        let mut out = Vec::new();
        let result = setup::setup(&self.config, support::bin(), false, &mut out);
        let out = String::from_utf8_lossy(&out).into_owned();
        result.unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(verify(&self.config), vec![]);
        out
    }

    /// `claude -p ARGS` in the pool folder under `account`.
    fn print(&self, account: &str, args: &[&str]) -> claude_failover::sys::process::Finished {
        let mut cmd = Command::new(&self.claude);
        cmd.arg("-p")
            .args(args)
            .current_dir(&self.sb.pool_dirs[0].1);
        for (k, v) in self.sb.claude_env(account, &self.api.base_url()) {
            cmd.env(k, v);
        }
        claude_failover::sys::process::run(&mut cmd, None, TURN).expect("claude -p finishes")
    }

    fn print_ok(&self, account: &str, args: &[&str]) -> String {
        let finished = self.print(account, args);
        assert!(
            finished.success(),
            "claude -p {args:?} under {account}: {}",
            finished.complaint()
        );
        finished.stdout
    }

    /// Starts a conversation under `account`; returns its session id.
    fn start(&self, account: &str, prompt: &str) -> String {
        let out = self.print_ok(account, &["--output-format", "json", prompt]);
        let json: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert!(
            json["result"]
                .as_str()
                .unwrap_or_default()
                .contains(&standin::answer_text(account, prompt)),
            "{json}"
        );
        json["session_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no session_id in {json}"))
            .to_string()
    }

    /// Resumes `session_id` under `account` with `prompt` and checks, through
    /// the stand-in, that the request carried that account's token and the
    /// whole earlier turn (`earlier` prompt, `earlier_account`'s answer).
    fn resume_and_check(
        &self,
        account: &str,
        session_id: &str,
        prompt: &str,
        earlier: &str,
        earlier_account: &str,
    ) {
        let out = self.print_ok(account, &["--resume", session_id, prompt]);
        assert!(
            out.contains(&standin::answer_text(account, prompt)),
            "{out}"
        );
        let request = self
            .api
            .requests_for(account)
            .into_iter()
            .find(|r| r.prompt == prompt)
            .unwrap_or_else(|| panic!("the stand-in saw no {prompt:?} under {account}'s token"));
        assert_eq!(request.token, self.sb.account(account).unwrap().token);
        // The earlier turn travels with it: the first prompt as a user
        // message and the other account's answer as an assistant message,
        // before the new prompt.
        let texts = message_texts(&request.messages);
        let answer = standin::answer_text(earlier_account, earlier);
        let first_prompt = texts
            .iter()
            .position(|(role, text)| role == "user" && text == earlier);
        let first_answer = texts
            .iter()
            .position(|(role, text)| role == "assistant" && text.contains(&answer));
        let new_prompt = texts
            .iter()
            .rposition(|(role, text)| role == "user" && text == prompt);
        assert!(
            matches!((first_prompt, first_answer, new_prompt), (Some(a), Some(b), Some(c)) if a < b && b < c),
            "the resumed request lacks the earlier turn: {texts:#?}"
        );
        assert!(
            self.api
                .requests_for(earlier_account)
                .iter()
                .all(|r| r.prompt != prompt),
            "nothing of the new turn went to {earlier_account}"
        );
    }
}

/// (role, text) of every text block of a Messages API `messages` array.
fn message_texts(messages: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in messages.as_array().into_iter().flatten() {
        let role = m["role"].as_str().unwrap_or_default().to_string();
        match &m["content"] {
            serde_json::Value::String(text) => out.push((role, text.trim().to_string())),
            serde_json::Value::Array(blocks) => {
                for b in blocks {
                    if let Some(text) = b["text"].as_str() {
                        out.push((role.clone(), text.trim().to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn a_conversation_started_under_one_account_continues_under_another() {
    let Some(w) = e2e("e2e-shared") else { return };
    w.setup();
    let session_id = w.start("alpha", "first");
    // The transcript landed in the one shared copy.
    let transcript =
        w.sb.shared_root
            .join("projects")
            .join(facts::transcript_folder_name(&w.sb.pool_dirs[0].1))
            .join(format!("{session_id}.jsonl"));
    assert!(transcript.is_file(), "{} missing", transcript.display());
    w.resume_and_check("beta", &session_id, "second", "first", "alpha");
    // Still one copy of the state: nothing real grew in either home.
    assert_eq!(verify(&w.config), vec![]);
}

#[test]
fn a_conversation_recorded_while_the_links_were_missing_is_merged_by_setup() {
    let Some(w) = e2e("e2e-split") else { return };
    // No links: Claude Code makes real folders in alpha's home.
    let session_id = w.start("alpha", "split-first");
    let alpha = &w.sb.account("alpha").unwrap().home;
    assert!(std::fs::symlink_metadata(alpha.join("projects"))
        .unwrap()
        .is_dir());
    // beta cannot see the conversation: the state has split.
    let refused = w.print("beta", &["--resume", &session_id, "split-second"]);
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(said.contains("No conversation found"), "{said}");
    let problems = verify(&w.config);
    assert!(
        problems
            .iter()
            .any(|p| p.account() == Some("alpha") && p.found() == Some(&Found::RealFolder)),
        "{problems:#?}"
    );

    // setup moves alpha's real folders into the shared root and links them.
    let out = w.setup();
    assert!(
        out.contains(&format!("merge {}", alpha.join("projects").display())),
        "{out}"
    );
    w.resume_and_check("beta", &session_id, "split-second", "split-first", "alpha");
}
