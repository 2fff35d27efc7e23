//! `setup`: merges real folders into the shared root when that loses
//! nothing, refuses (changing nothing at all) when it would, installs the
//! hooks and the folder trust without disturbing anything else, and is
//! idempotent; `--dry-run` changes nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use claude_failover::claude::account::ClaudeJson;
use claude_failover::claude::facts;
use claude_failover::claude::settings;
use claude_failover::claude::shared_folders::verify;
use claude_failover::commands::setup::{
    hooks_installed, setup, setup_command, SetupError, SetupReport,
};
use claude_failover::config::Config;
use serde_json::{json, Value};

const BINARY: &str = "/opt/claude-failover/bin/claude-failover";

/// A temp folder holding a config (accounts `main` and `backup`, a pool and
/// a project), both homes with credentials, and the pool and project folders.
struct World {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: Config,
}

fn world() -> World {
    let dir = tempfile::Builder::new()
        .prefix("cf-setup-")
        .tempdir()
        .unwrap();
    let root = dir.path().canonicalize().unwrap();
    let text = format!(
        "\
state_dir: {r}/state
shared_root: {r}/shared
swap:
  mode: restart
accounts:
  - name: main
    home: {r}/homes/main
  - name: backup
    home: {r}/homes/backup
pools:
  - name: auto
    prefix: ccl-auto-
    start_index: 11
    cwd: {r}/work/agents
projects:
  - name: secuaas
    path: {r}/work/secuaas
    pool: auto
",
        r = root.display()
    );
    let path = root.join("config.yaml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::parse(&text, &path).expect("valid config");
    for a in &config.accounts {
        std::fs::create_dir_all(&a.home).unwrap();
        std::fs::write(
            a.home.join(facts::CREDENTIALS_FILE),
            format!("{{\"secret\":\"{}\"}}", a.name),
        )
        .unwrap();
    }
    std::fs::create_dir_all(root.join("work/agents")).unwrap();
    std::fs::create_dir_all(root.join("work/secuaas")).unwrap();
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

    fn write(&self, path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn run(&self, dry_run: bool) -> (Result<SetupReport, SetupError>, String) {
        let mut out = Vec::new();
        let result = setup(&self.config, BINARY, dry_run, &mut out);
        (result, String::from_utf8(out).unwrap())
    }

    fn run_ok(&self) -> (SetupReport, String) {
        let (result, out) = self.run(false);
        match result {
            Ok(r) => (r, out),
            Err(e) => panic!("setup failed: {e}\n{out}"),
        }
    }

    fn snapshot(&self) -> Snapshot {
        snapshot(&self.root)
    }
}

#[derive(PartialEq, Eq)]
enum Node {
    Folder {
        mode: u32,
    },
    File {
        mode: u32,
        bytes: Vec<u8>,
        mtime_ns: i128,
    },
    Symlink(PathBuf),
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Folder { mode } => write!(f, "folder {mode:o}"),
            Node::File {
                mode,
                bytes,
                mtime_ns,
            } => {
                write!(
                    f,
                    "file {mode:o} mtime {mtime_ns} {:?}",
                    String::from_utf8_lossy(bytes)
                )
            }
            Node::Symlink(t) => write!(f, "symlink to {}", t.display()),
        }
    }
}

type Snapshot = BTreeMap<PathBuf, Node>;

/// Every path under `root` with its type, mode, link target and content.
fn snapshot(root: &Path) -> Snapshot {
    let mut map = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, map: &mut Snapshot) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if meta.file_type().is_symlink() {
                map.insert(rel, Node::Symlink(std::fs::read_link(&path).unwrap()));
            } else if meta.is_dir() {
                map.insert(rel, Node::Folder { mode: meta.mode() });
                walk(root, &path, map);
            } else {
                let mtime_ns =
                    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
                map.insert(
                    rel,
                    Node::File {
                        mode: meta.mode(),
                        bytes: std::fs::read(&path).unwrap(),
                        mtime_ns,
                    },
                );
            }
        }
    }
    walk(root, root, &mut map);
    map
}

/// Fails listing every path that differs between two snapshots.
fn assert_unchanged(before: &Snapshot, after: &Snapshot, context: &str) {
    let mut diff = Vec::new();
    for (path, node) in before {
        match after.get(path) {
            None => diff.push(format!("removed {}: {node:?}", path.display())),
            Some(now) if now != node => {
                diff.push(format!("changed {}: {node:?} -> {now:?}", path.display()))
            }
            Some(_) => {}
        }
    }
    for (path, node) in after {
        if !before.contains_key(path) {
            diff.push(format!("added {}: {node:?}", path.display()));
        }
    }
    assert!(
        diff.is_empty(),
        "the tree changed:\n{}\n{context}",
        diff.join("\n")
    );
}

fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    snapshot(dir)
        .into_iter()
        .filter_map(|(p, n)| match n {
            Node::File { bytes, .. } => Some((p, bytes)),
            _ => None,
        })
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn assert_linked(w: &World) {
    assert_eq!(verify(&w.config), vec![]);
    for a in &w.config.accounts {
        for entry in facts::REQUIRED_SHARED {
            assert_eq!(
                std::fs::read_link(a.home.join(entry)).unwrap(),
                w.shared(entry),
                "{}/{entry}",
                a.name
            );
        }
    }
}

#[test]
fn merges_real_folders_of_two_accounts_into_the_shared_root() {
    let w = world();
    // What a previous setup already shared.
    w.write(&w.shared("projects/-srv-old/s0.jsonl"), b"s0\n");
    // Claude Code ran with the links missing and made real folders.
    let (main, backup) = (w.home("main"), w.home("backup"));
    w.write(&main.join("projects/-srv-a/s1.jsonl"), b"s1 by main\n");
    w.write(
        &main.join("projects/-srv-a/s1/tool-results/r1.txt"),
        b"r1\n",
    );
    w.write(&main.join("projects/common.txt"), b"same everywhere\n");
    w.write(&main.join("file-history/s1/v1"), b"v1\n");
    w.write(&backup.join("projects/-srv-a/s2.jsonl"), b"s2 by backup\n");
    w.write(&backup.join("projects/-srv-b/s3.jsonl"), b"s3 by backup\n");
    w.write(&backup.join("projects/common.txt"), b"same everywhere\n");
    w.write(&backup.join("projects/-srv-old/s0.jsonl"), b"s0\n");
    std::fs::create_dir_all(backup.join("session-env/s2")).unwrap();
    symlink("s2", backup.join("session-env/latest")).unwrap();
    // session-env in main and file-history in backup are missing entirely.
    let credentials: Vec<Vec<u8>> = w
        .config
        .accounts
        .iter()
        .map(|a| std::fs::read(a.home.join(facts::CREDENTIALS_FILE)).unwrap())
        .collect();

    let (report, out) = w.run_ok();
    assert!(!report.nothing_to_do());
    assert!(
        out.contains(&format!(
            "merge {} into {}",
            main.join("projects").display(),
            w.shared("projects").display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "link {} -> {}",
            backup.join("file-history").display(),
            w.shared("file-history").display()
        )),
        "{out}"
    );

    assert_linked(&w);
    let projects = files_under(&w.shared("projects"));
    let expected: BTreeMap<PathBuf, Vec<u8>> = [
        ("-srv-old/s0.jsonl", &b"s0\n"[..]),
        ("-srv-a/s1.jsonl", b"s1 by main\n"),
        ("-srv-a/s1/tool-results/r1.txt", b"r1\n"),
        ("common.txt", b"same everywhere\n"),
        ("-srv-a/s2.jsonl", b"s2 by backup\n"),
        ("-srv-b/s3.jsonl", b"s3 by backup\n"),
    ]
    .into_iter()
    .map(|(p, b)| (PathBuf::from(p), b.to_vec()))
    .collect();
    assert_eq!(projects, expected);
    assert_eq!(
        std::fs::read(w.shared("file-history/s1/v1")).unwrap(),
        b"v1\n"
    );
    assert!(w.shared("session-env/s2").is_dir());
    assert_eq!(
        std::fs::read_link(w.shared("session-env/latest")).unwrap(),
        PathBuf::from("s2")
    );
    // Credentials are never touched.
    for (a, before) in w.config.accounts.iter().zip(credentials) {
        assert_eq!(
            std::fs::read(a.home.join(facts::CREDENTIALS_FILE)).unwrap(),
            before
        );
    }
    // No temp files left behind anywhere.
    assert!(
        w.snapshot()
            .keys()
            .all(|p| !p.to_string_lossy().contains(".tmp-")),
        "{:#?}",
        w.snapshot().keys()
    );
}

#[test]
fn refuses_on_conflicts_listing_each_and_changes_nothing() {
    let w = world();
    let (main, backup) = (w.home("main"), w.home("backup"));
    // Fine on their own...
    w.write(&main.join("projects/-srv-a/ok.jsonl"), b"ok\n");
    w.write(&backup.join("settings.json"), br#"{"model":"opus"}"#);
    // ...but: the same transcript with different content in two accounts,
    w.write(&main.join("projects/-srv-a/s1.jsonl"), b"main's version\n");
    w.write(
        &backup.join("projects/-srv-a/s1.jsonl"),
        b"backup's version\n",
    );
    // a file where the shared root has a folder,
    w.write(&w.shared("file-history/s9/v1"), b"v1\n");
    w.write(&backup.join("file-history/s9"), b"not a folder\n");
    // and a different file against the shared root.
    w.write(&w.shared("session-env/env"), b"A=1\n");
    w.write(&main.join("session-env/env"), b"A=2\n");
    let before = w.snapshot();

    let (result, out) = w.run(false);
    let Err(SetupError::Refused(reasons)) = result else {
        panic!("expected a refusal: {result:?}\n{out}")
    };
    assert_unchanged(&before, &w.snapshot(), &out);
    assert!(
        out.starts_with("setup refused; nothing was changed"),
        "{out}"
    );
    assert_eq!(reasons.len(), 3, "{reasons:#?}");
    let expect = [
        format!(
            "conflict: {} and {} are different files",
            backup.join("projects/-srv-a/s1.jsonl").display(),
            main.join("projects/-srv-a/s1.jsonl").display()
        ),
        format!(
            "conflict: {} is a file but {} is a folder",
            backup.join("file-history/s9").display(),
            w.shared("file-history/s9").display()
        ),
        format!(
            "conflict: {} and {} are different files",
            main.join("session-env/env").display(),
            w.shared("session-env/env").display()
        ),
    ];
    for line in &expect {
        assert!(reasons.contains(line), "missing {line:?} in {reasons:#?}");
        assert!(
            out.lines().any(|l| l.trim() == line),
            "missing {line:?} in output:\n{out}"
        );
    }

    // The dry run reports the same refusal, and so does the command (exit 1).
    let (result, _) = w.run(true);
    assert!(matches!(result, Err(SetupError::Refused(_))));
    let status = setup_command(&w.config, false).unwrap_or_else(|failed| failed.code);
    assert_eq!(status, 1);
    assert_unchanged(&before, &w.snapshot(), "after setup_command");

    // Once the operator settles the conflicts, setup goes through.
    std::fs::remove_file(backup.join("projects/-srv-a/s1.jsonl")).unwrap();
    std::fs::remove_file(backup.join("file-history/s9")).unwrap();
    std::fs::remove_file(main.join("session-env/env")).unwrap();
    w.run_ok();
    assert_linked(&w);
    assert_eq!(
        std::fs::read(w.shared("projects/-srv-a/s1.jsonl")).unwrap(),
        b"main's version\n"
    );
}

#[test]
fn a_second_run_changes_nothing_and_says_so() {
    let w = world();
    w.write(&w.home("main").join("projects/-srv-a/s1.jsonl"), b"s1\n");
    let (first, _) = w.run_ok();
    assert!(!first.nothing_to_do());
    let after_first = w.snapshot();

    let (second, out) = w.run_ok();
    assert!(second.nothing_to_do(), "{second:?}");
    assert!(
        out.starts_with(
            "nothing to do: 2 accounts share projects, file-history, session-env through "
        ),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_unchanged(&after_first, &w.snapshot(), &out);
    let (dry, out) = w.run(true);
    assert!(dry.unwrap().nothing_to_do(), "{out}");
    assert_unchanged(&after_first, &w.snapshot(), &out);
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let w = world();
    w.write(&w.home("backup").join("projects/-srv-a/s1.jsonl"), b"s1\n");
    let before = w.snapshot();

    let (result, out) = w.run(true);
    let plan = result.unwrap();
    assert!(plan.dry_run);
    assert_unchanged(&before, &w.snapshot(), &out);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), plan.actions.len() + 1, "{out}");
    assert_eq!(
        lines.last().copied(),
        Some(
            format!(
                "dry run: {} actions planned, nothing changed",
                plan.actions.len()
            )
            .as_str()
        )
    );
    for wanted in [
        format!("create folder {}", w.config.shared_root.display()),
        format!("create folder {}", w.shared("projects").display()),
        format!("link {} -> {}", w.home("main").join("projects").display(), w.shared("projects").display()),
        format!(
            "merge {} into {}: move 1 entry, drop 0 identical files already there, remove the emptied folder",
            w.home("backup").join("projects").display(),
            w.shared("projects").display()
        ),
        format!(
            "install the hooks (`{}`) and status line for account main in {}",
            settings::hook_command(BINARY),
            w.home("main").join("settings.json").display()
        ),
    ] {
        assert!(lines.contains(&wanted.as_str()), "missing {wanted:?} in:\n{out}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("trust ") && l.contains("for account backup")),
        "{out}"
    );

    // The real run does exactly what the dry run announced.
    let (done, _) = w.run_ok();
    assert_eq!(done.actions, plan.actions);
    assert_linked(&w);
}

#[test]
fn hooks_join_the_users_own_and_keep_every_other_key() {
    let w = world();
    let path = w.home("main").join("settings.json");
    let user = json!({
        "model": "opus",
        "permissions": { "allow": ["Bash(ls:*)"] },
        "hooks": { "Stop": [ { "hooks": [ { "type": "command", "command": "notify-send done" } ] } ] }
    });
    w.write(
        &path,
        serde_json::to_string_pretty(&user).unwrap().as_bytes(),
    );
    let failing = hooks_installed(&w.config, BINARY);
    assert!(failing.iter().all(|l| !l.ok), "{failing:?}");
    assert!(
        failing[0].to_string().contains("missing on SessionStart"),
        "{}",
        failing[0]
    );

    w.run_ok();
    let after = read_json(&path);
    assert_eq!(after["model"], "opus");
    assert_eq!(after["permissions"], user["permissions"]);
    let ours = settings::hook_command(BINARY);
    let stop: Vec<&str> = after["hooks"]["Stop"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["hooks"].as_array().unwrap())
        .map(|h| h["command"].as_str().unwrap())
        .collect();
    assert_eq!(stop, vec!["notify-send done", ours.as_str()]);
    for event in facts::HOOK_EVENTS {
        let text = after["hooks"][event].to_string();
        assert!(text.contains(&ours), "{event}: {text}");
    }
    let lines = hooks_installed(&w.config, BINARY);
    assert!(lines.iter().all(|l| l.ok), "{lines:?}");
    assert_eq!(
        lines[0].to_string(),
        format!(
            "ok   account main: hooks: `{ours}` on all {} events",
            facts::HOOK_EVENTS.len()
        )
    );

    let bytes = std::fs::read(&path).unwrap();
    let (second, _) = w.run_ok();
    assert!(second.nothing_to_do());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // Another install path is reported by check (and replaced by setup).
    let other = hooks_installed(&w.config, "/usr/local/bin/claude-failover");
    assert!(
        other
            .iter()
            .all(|l| !l.ok && l.detail.contains("another install's hook")),
        "{other:?}"
    );
}

#[test]
fn a_settings_file_that_is_not_json_is_never_overwritten() {
    let w = world();
    let path = w.home("backup").join("settings.json");
    w.write(&path, b"{ \"model\": \"opus\", ");
    let before = w.snapshot();
    let (result, out) = w.run(false);
    let Err(SetupError::Refused(reasons)) = result else {
        panic!("{result:?}")
    };
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].starts_with(&format!(
            "account backup: {} is not valid JSON",
            path.display()
        )),
        "{out}"
    );
    assert_unchanged(&before, &w.snapshot(), "");
    let check = hooks_installed(&w.config, BINARY);
    assert!(
        !check[1].ok && check[1].detail.contains("not valid JSON"),
        "{check:?}"
    );
}

#[test]
fn trust_is_added_keeping_every_other_key() {
    let w = world();
    let path = w.home("main").join(".claude.json");
    let original = json!({
        "hasCompletedOnboarding": true,
        "lastOnboardingVersion": "2.1.329",
        "userID": "abc",
        "projects": { "/somewhere/else": { "hasTrustDialogAccepted": true, "allowedTools": ["Read"] } }
    });
    w.write(&path, serde_json::to_string(&original).unwrap().as_bytes());
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    w.run_ok();
    let after = read_json(&path);
    for key in ["hasCompletedOnboarding", "lastOnboardingVersion", "userID"] {
        assert_eq!(after[key], original[key], "{key}");
    }
    assert_eq!(
        after["projects"]["/somewhere/else"],
        original["projects"]["/somewhere/else"]
    );
    let pool = w.root.join("work/agents");
    let project = w.root.join("work/secuaas");
    for folder in [&pool, &project] {
        assert_eq!(
            after["projects"][folder.to_str().unwrap()]["hasTrustDialogAccepted"],
            true,
            "{after}"
        );
    }
    assert_eq!(
        std::fs::metadata(&path).unwrap().mode() & 0o777,
        0o600,
        "the file's mode is kept"
    );
    // backup had no .claude.json: it gets one holding only the trust.
    let backup = ClaudeJson::read(&w.home("backup")).unwrap();
    assert!(backup.trusts(&pool) && backup.trusts(&project));
    assert!(!backup.onboarding_done);

    let bytes = std::fs::read(&path).unwrap();
    assert!(w.run_ok().0.nothing_to_do());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn a_missing_home_is_refused_with_a_login_hint() {
    let w = world();
    std::fs::remove_dir_all(w.home("backup")).unwrap();
    let before = w.snapshot();
    let (result, _) = w.run(false);
    let Err(SetupError::Refused(reasons)) = result else {
        panic!("{result:?}")
    };
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("account backup: home") && reasons[0].contains("log in there first"),
        "{reasons:?}"
    );
    assert!(!w.home("backup").exists());
    assert_unchanged(&before, &w.snapshot(), "");
}

#[test]
fn a_relative_link_is_straightened_and_foreign_links_are_refused() {
    let w = world();
    std::fs::create_dir_all(w.shared("projects")).unwrap();
    symlink("../../shared/projects", w.home("main").join("projects")).unwrap();
    let (_, out) = w.run_ok();
    assert!(
        out.contains("relink") && out.contains("(was the relative link ../../shared/projects)"),
        "{out}"
    );
    assert_linked(&w);

    let elsewhere = w.root.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::remove_file(w.home("backup").join("session-env")).unwrap();
    symlink(&elsewhere, w.home("backup").join("session-env")).unwrap();
    let before = w.snapshot();
    let (result, _) = w.run(false);
    let Err(SetupError::Refused(reasons)) = result else {
        panic!("{result:?}")
    };
    assert!(
        reasons[0].starts_with("account backup: session-env: expected a symlink to"),
        "{reasons:?}"
    );
    assert!(
        reasons[0].contains("setup never replaces it"),
        "{reasons:?}"
    );
    assert_unchanged(&before, &w.snapshot(), "");
}
