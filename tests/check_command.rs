//! `claude-failover check` on a prepared sandbox: passes when everything is
//! in place, and fails naming the problem (with a fix hint) for each thing
//! an operator typically gets wrong.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use support::Harness;
use testkit::sandbox::{self, Sandbox, SandboxSpec};

/// The real Claude Code when the end-to-end suite is on, else a script that
/// answers `--version` like it (check only runs `--version`).
fn claude_for_check(h: &Harness) -> String {
    if let Some(real) = support::e2e_claude() {
        return real.to_string_lossy().into_owned();
    }
    let fake = h.path().join("fake-claude");
    std::fs::write(&fake, "#!/bin/sh\necho '2.1.329 (Claude Code)'\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    fake.to_string_lossy().into_owned()
}

fn prepared(h: &Harness) -> Sandbox {
    let spec = SandboxSpec {
        claude_binary: claude_for_check(h),
        tmux_socket: h.socket.clone(),
        ..SandboxSpec::default()
    };
    let sb = Sandbox::create(&h.path().join("sandbox"), &spec).unwrap();
    sb.install_hooks(support::bin()).unwrap();
    sb
}

fn check(sb: &Sandbox) -> (i32, String) {
    let out = Command::new(support::bin())
        .args(["--config", sb.config_path.to_str().unwrap(), "check"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The one FAIL line, asserting there is exactly one.
fn only_failure(text: &str) -> String {
    let fails: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 1, "expected exactly one failure:\n{text}");
    fails[0].to_string()
}

#[test]
fn passes_on_a_prepared_sandbox() {
    let h = Harness::new("check-ok");
    let sb = prepared(&h);
    let (code, text) = check(&sb);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    for needle in [
        "ok   config",
        "ok   tmux: tmux ",
        "ok   claude binary: ",
        "ok   account alpha: token",
        "ok   account beta: trust pool auto",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(
        text.contains("all ") && text.contains(" checks passed"),
        "{text}"
    );
}

#[test]
fn fails_for_a_missing_claude_binary() {
    let h = Harness::new("check-bin");
    let mut spec = SandboxSpec {
        tmux_socket: h.socket.clone(),
        ..SandboxSpec::default()
    };
    spec.claude_binary = h
        .path()
        .join("no-such-claude")
        .to_string_lossy()
        .into_owned();
    let sb = Sandbox::create(&h.path().join("sandbox"), &spec).unwrap();
    sb.install_hooks(support::bin()).unwrap();
    let (code, text) = check(&sb);
    assert_eq!(code, 1, "{text}");
    let line = only_failure(&text);
    assert!(
        line.contains("claude binary")
            && line.contains("no-such-claude")
            && line.contains("(fix: "),
        "{line}"
    );
}

#[test]
fn fails_for_credentials_readable_by_others() {
    let h = Harness::new("check-mode");
    let sb = prepared(&h);
    let creds = sb.account("beta").unwrap().home.join(".credentials.json");
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, text) = check(&sb);
    assert_eq!(code, 1, "{text}");
    let line = only_failure(&text);
    assert!(
        line.contains("account beta: credentials mode") && line.contains("0644"),
        "{line}"
    );
    assert!(
        line.contains(&format!("chmod 600 {}", creds.display())),
        "{line}"
    );
}

#[test]
fn fails_for_an_expired_token() {
    let h = Harness::new("check-expired");
    let sb = prepared(&h);
    let alpha = sb.account("alpha").unwrap();
    sandbox::write_credentials(&alpha.home, &alpha.token, 1_600_000_000_000).unwrap();
    let (code, text) = check(&sb);
    assert_eq!(code, 1, "{text}");
    let line = only_failure(&text);
    assert!(
        line.contains("account alpha: token") && line.contains("expired at 2020-09-13T12:26:40Z"),
        "{line}"
    );
}

#[test]
fn fails_when_onboarding_was_never_done() {
    let h = Harness::new("check-onboarding");
    let sb = prepared(&h);
    let beta = sb.account("beta").unwrap();
    let trusted: Vec<PathBuf> = sb
        .pool_dirs
        .iter()
        .chain(&sb.project_dirs)
        .map(|(_, d)| d.clone())
        .collect();
    let trusted: Vec<&PathBuf> = trusted.iter().collect();
    sandbox::write_claude_json(&beta.home, false, &trusted).unwrap();
    let (code, text) = check(&sb);
    assert_eq!(code, 1, "{text}");
    let line = only_failure(&text);
    assert!(
        line.contains("account beta: onboarding") && line.contains("hasCompletedOnboarding"),
        "{line}"
    );
}

#[test]
fn fails_for_an_untrusted_pool_folder() {
    let h = Harness::new("check-trust");
    let sb = prepared(&h);
    let alpha = sb.account("alpha").unwrap();
    // Trust only the project folders, not the pool's.
    let trusted: Vec<&PathBuf> = sb.project_dirs.iter().map(|(_, d)| d).collect();
    sandbox::write_claude_json(&alpha.home, true, &trusted).unwrap();
    let (code, text) = check(&sb);
    assert_eq!(code, 1, "{text}");
    let line = only_failure(&text);
    let pool_dir = &sb.pool_dirs[0].1;
    assert!(line.contains("account alpha: trust pool auto"), "{line}");
    assert!(
        line.contains(&format!("{} is not trusted", pool_dir.display())),
        "{line}"
    );
    assert!(line.contains("claude-failover setup"), "{line}");
}

#[test]
fn fails_for_missing_credentials_and_home() {
    let h = Harness::new("check-missing");
    let sb = prepared(&h);
    std::fs::remove_file(sb.account("alpha").unwrap().home.join(".credentials.json")).unwrap();
    std::fs::remove_dir_all(&sb.account("beta").unwrap().home).unwrap();
    let (code, text) = check(&sb);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL account alpha: credentials") && l.contains("is missing")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL account beta: home") && l.contains("does not exist")),
        "{text}"
    );
}

#[test]
fn bad_config_exits_2_and_missing_config_too() {
    let h = Harness::new("check-badcfg");
    let path = h.path().join("config.yaml");
    std::fs::write(&path, "accounts: []\nbogus: 1\n").unwrap();
    let out = Command::new(support::bin())
        .args(["--config", path.to_str().unwrap(), "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus") && err.contains("line 2"), "{err}");

    let out = Command::new(support::bin())
        .args([
            "--config",
            h.path().join("absent.yaml").to_str().unwrap(),
            "check",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.yaml"));
}

#[test]
fn config_path_comes_from_the_environment() {
    let h = Harness::new("check-env");
    let sb = prepared(&h);
    let out = Command::new(support::bin())
        .arg("check")
        .env("CLAUDE_FAILOVER_CONFIG", &sb.config_path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn warns_about_settings_known_to_silence_hooks_and_an_untested_claude_version() {
    let h = Harness::new("check-silencers");
    let sb = prepared(&h);
    let settings = sb.account("beta").unwrap().home.join("settings.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&settings).unwrap()).unwrap();
    v["disableAllHooks"] = true.into();
    std::fs::write(&settings, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let (code, text) = check(&sb);
    assert_eq!(code, 1, "{text}");
    let line = only_failure(&text);
    assert!(
        line.contains("hook silencers")
            && line.contains("disableAllHooks: true")
            && line.contains(&settings.display().to_string()),
        "{line}"
    );
    // A Claude Code the suite never passed on is named, not refused.
    let other = h.path().join("other-claude");
    std::fs::write(&other, "#!/bin/sh\necho '9.9.9 (Claude Code)'\n").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = std::fs::read_to_string(&sb.config_path).unwrap();
    let binary_line = config
        .lines()
        .find(|l| l.trim_start().starts_with("binary:"))
        .unwrap()
        .to_string();
    std::fs::write(
        &sb.config_path,
        config.replace(&binary_line, &format!("  binary: {}", other.display())),
    )
    .unwrap();
    let (_, text) = check(&sb);
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok   claude binary: 9.9.9")
                && l.contains(&format!(
                    "warning: the end-to-end suite passed on {} only",
                    claude_failover::claude::facts::TESTED_VERSIONS.join(", ")
                ))),
        "{text}"
    );
}
