//! The shared-folder guard of `run`: every divergence stops the daemon
//! before it touches tmux (exit 3, naming account and entry), and a link
//! removed while it runs turns `/healthz` to 503 within one interval.

mod support;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use support::{wait_for, Harness};
use testkit::sandbox::{Sandbox, SandboxSpec};

fn fake_claude(h: &Harness) -> String {
    let fake = h.path().join("fake-claude");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho '2.1.329 (Claude Code)'\nexec sleep 600\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    fake.to_string_lossy().into_owned()
}

fn sandbox(h: &Harness) -> Sandbox {
    let spec = SandboxSpec {
        claude_binary: fake_claude(h),
        tmux_socket: h.socket.clone(),
        ..SandboxSpec::default()
    };
    Sandbox::create(&h.path().join("sandbox"), &spec).unwrap()
}

fn run_once(sb: &Sandbox) -> (Option<i32>, String) {
    let out = Command::new(support::bin())
        .args(["--config", sb.config_path.to_str().unwrap(), "run"])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_divergence_kind_exits_3_naming_account_and_entry_and_starts_nothing() {
    type Break = fn(&std::path::Path, &std::path::Path);
    let cases: [(&str, Break, &str); 5] = [
        (
            "missing",
            |link, _| std::fs::remove_file(link).unwrap(),
            "found nothing",
        ),
        (
            "real folder",
            |link, _| {
                std::fs::remove_file(link).unwrap();
                std::fs::create_dir(link).unwrap();
            },
            "real folder",
        ),
        (
            "wrong target",
            |link, root| {
                std::fs::remove_file(link).unwrap();
                let other = root.join("elsewhere");
                std::fs::create_dir_all(&other).unwrap();
                symlink(&other, link).unwrap();
            },
            "elsewhere",
        ),
        (
            "dangling",
            |link, root| {
                std::fs::remove_file(link).unwrap();
                symlink(root.join("gone"), link).unwrap();
            },
            "dangling",
        ),
        (
            "a file",
            |link, _| {
                std::fs::remove_file(link).unwrap();
                std::fs::write(link, "x").unwrap();
            },
            "file",
        ),
    ];
    for (what, break_it, found) in cases {
        let h = Harness::new("guard");
        let sb = sandbox(&h);
        let link = sb.account("beta").unwrap().home.join("file-history");
        break_it(&link, &sb.root);
        let (code, err) = run_once(&sb);
        assert_eq!(code, Some(3), "{what}: {err}");
        let line = err
            .lines()
            .find(|l| l.contains("shared folders"))
            .unwrap_or_else(|| panic!("{what}: {err}"));
        assert!(
            line.contains("account beta") && line.contains("file-history"),
            "{what}: {line}"
        );
        assert!(
            line.to_lowercase().contains(found),
            "{what}: expected {found:?} in {line}"
        );
        assert!(
            h.tmux.list_sessions().unwrap().is_empty(),
            "{what}: a session was started"
        );
    }
}

#[test]
fn a_link_removed_while_running_turns_healthz_503_within_one_interval() {
    let mut h = Harness::new("guard-live");
    let spec = SandboxSpec {
        claude_binary: fake_claude(&h),
        tmux_socket: h.socket.clone(),
        extra_yaml: "lifecycle:\n  interval: 1s\n".into(),
        ..SandboxSpec::default()
    };
    let sb = Sandbox::create(&h.path().join("sandbox"), &spec).unwrap();
    h.watch_state_dir(sb.state_dir.clone());
    h.spawn_bin(&["--config", sb.config_path.to_str().unwrap(), "run"], &[]);
    let url = format!("http://{}/healthz", sb.http_listen);
    wait_for(Duration::from_secs(20), "healthz 200", || {
        ureq::get(&url).call().ok().filter(|r| r.status() == 200)
    });
    std::fs::remove_file(sb.account("alpha").unwrap().home.join("session-env")).unwrap();
    let removed = std::time::Instant::now();
    let body = wait_for(
        Duration::from_secs(10),
        "healthz 503",
        || match ureq::get(&url).call() {
            Err(ureq::Error::Status(503, r)) => r.into_string().ok(),
            _ => None,
        },
    );
    assert!(
        removed.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        removed.elapsed()
    );
    assert!(
        body.contains("account alpha")
            && body.contains("session-env")
            && body.contains("found nothing"),
        "{body}"
    );
}
