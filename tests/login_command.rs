//! `claude-failover login ACCOUNT`: runs Claude Code's login (here a
//! stand-in script in its place) in the foreground with the account's home as
//! its config dir, then says whether the home holds a login. Unknown
//! accounts, a missing binary and a login left unfinished each end in one
//! clear line, exit 1, with nothing of a token printed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::bin;

struct World {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

/// A config whose Claude Code is `script` (a shell script body).
fn world(script: &str) -> World {
    let dir = tempfile::Builder::new()
        .prefix("cf-login-")
        .tempdir()
        .unwrap();
    let root = dir.path().canonicalize().unwrap();
    let fake = root.join("claude");
    std::fs::write(&fake, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = format!(
        "state_dir: {r}/state\nswap:\n  seat: {r}/seat\naccounts:\n  - name: alpha\n    home: {r}/homes/alpha\n  - name: beta\n    home: {r}/homes/beta\nclaude:\n  binary: {r}/claude\n  env:\n    CF_TEST_MARK: here\n",
        r = root.display()
    );
    let config = root.join("config.yaml");
    std::fs::write(&config, text).unwrap();
    World {
        _dir: dir,
        root,
        config,
    }
}

fn login(w: &World, account: &str) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(["--config", &w.config.to_string_lossy(), "login", account])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SECRET: &str = "sk-ant-oat01-SECRET-ACCESS";

/// What a finished login leaves: the credentials file, written by Claude
/// Code into its config dir; and what it was called with.
fn writes_a_login() -> String {
    format!(
        r#"echo "$@" > "$CLAUDE_CONFIG_DIR/args"
pwd > "$CLAUDE_CONFIG_DIR/cwd"
echo "$CF_TEST_MARK" > "$CLAUDE_CONFIG_DIR/env"
umask 077
printf '{{"claudeAiOauth":{{"accessToken":"{SECRET}","refreshToken":"sk-ant-ort01-SECRET-REFRESH","expiresAt":4102444800000}}}}' > "$CLAUDE_CONFIG_DIR/.credentials.json""#
    )
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn a_finished_login_lands_in_the_accounts_home_and_is_reported_present() {
    let w = world(&writes_a_login());
    let home = w.root.join("homes/beta");
    assert!(!home.exists());
    let (code, out, err) = login(&w, "beta");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(read(&home.join("args")), "auth login --claudeai");
    assert_eq!(read(&home.join("cwd")), home.to_string_lossy());
    assert_eq!(
        read(&home.join("env")),
        "here",
        "claude.env reaches the login"
    );
    // The home was made private; beta's login is there, alpha's untouched.
    let mode = std::fs::metadata(&home).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(home.join(".credentials.json").exists());
    assert!(!w.root.join("homes/alpha").exists());
    assert!(out.contains("beta has a login in"), "{out}");
    assert!(
        out.contains("(new, access token expires 2100-01-01"),
        "{out}"
    );
    assert!(
        out.contains("claude-failover setup"),
        "live mode says what next: {out}"
    );
    assert!(
        !out.contains("SECRET") && !err.contains("SECRET"),
        "a token was printed"
    );
    // Again, with the same login in place: unchanged.
    let (code, out, _) = login(&w, "beta");
    assert_eq!(code, 0);
    assert!(out.contains("(unchanged"), "{out}");
}

#[test]
fn a_login_left_unfinished_fails_in_one_line_and_keeps_what_was_there() {
    let w = world("exit 0");
    let (code, out, err) = login(&w, "alpha");
    assert_eq!(code, 1, "{out}{err}");
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{err}");
    assert!(
        line.starts_with("claude-failover login: no login in ")
            && line.contains("homes/alpha")
            && line.contains("run it again"),
        "{line}"
    );
    // A login that was there before is kept when the new one is abandoned.
    let home = w.root.join("homes/alpha");
    let old = r#"{"claudeAiOauth":{"accessToken":"old","refreshToken":"old-r"}}"#;
    std::fs::write(home.join(".credentials.json"), old).unwrap();
    let (code, out, _) = login(&w, "alpha");
    assert_eq!(code, 0, "an existing login is still a login: {out}");
    assert!(out.contains("(unchanged"), "{out}");
    assert_eq!(read(&home.join(".credentials.json")), old);
}

#[test]
fn a_login_that_fails_and_leaves_the_old_one_says_so() {
    let w = world("exit 3");
    let home = w.root.join("homes/alpha");
    std::fs::create_dir_all(&home).unwrap();
    let old = r#"{"claudeAiOauth":{"accessToken":"old","refreshToken":"old-r"}}"#;
    std::fs::write(home.join(".credentials.json"), old).unwrap();
    let (code, _, err) = login(&w, "alpha");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.trim()
            .starts_with("claude-failover login: Claude Code's login ended with exit status: 3")
            && err.contains("is the one from before"),
        "{err}"
    );
    assert_eq!(read(&home.join(".credentials.json")), old, "kept");
}

#[test]
fn an_unknown_account_or_a_missing_claude_is_one_clear_line() {
    let w = world("exit 0");
    let (code, _, err) = login(&w, "gamma");
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "claude-failover login: no account named \"gamma\" (known: alpha, beta)"
    );
    assert!(!w.root.join("homes").exists(), "nothing was created");
    std::fs::remove_file(w.root.join("claude")).unwrap();
    let (code, _, err) = login(&w, "alpha");
    assert_eq!(code, 1);
    assert!(
        err.trim().starts_with("claude-failover login: cannot run ")
            && err.contains("claude.binary"),
        "{err}"
    );
}
