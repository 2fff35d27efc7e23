//! `claude-failover login ACCOUNT`: Claude Code's own login, in the
//! foreground, with the account's home as its config dir (the one-time step
//! per account); afterwards it says whether the home holds a login.
//!
//! The daemon never calls the OAuth endpoint itself: the login is Claude
//! Code's, the token lands in `<home>/.credentials.json` (0600) and is moved
//! from there by swaps. Nothing of it is printed.

use std::path::Path;
use std::process::Command;

use super::{exit, Failed, Outcome};
use crate::claude::{facts, seat};
use crate::config::Config;

pub fn login_command(config: &Config, account: &str) -> Outcome {
    let fail = |line: String| {
        Err(Failed::new(
            exit::FAILURE,
            format!("claude-failover login: {line}"),
        ))
    };
    let Some(a) = config.account(account) else {
        let known: Vec<&str> = config.accounts.iter().map(|a| a.name.as_str()).collect();
        return fail(format!(
            "no account named {account:?} (known: {})",
            known.join(", ")
        ));
    };
    let home = a.home.clone();
    if let Err(e) = create_private_dir(&home) {
        return fail(format!("cannot create {}: {e}", home.display()));
    }
    let before = seat::read(&home).ok().flatten();
    outln!(
        "claude-failover login: starting Claude Code's login for {account} with CLAUDE_CONFIG_DIR={} (finish it in Claude Code, then leave it with /exit)",
        home.display()
    );
    let mut cmd = Command::new(&config.claude.binary);
    cmd.args(facts::LOGIN_ARGS)
        .env(facts::ENV_CONFIG_DIR, &home)
        .current_dir(&home);
    for (k, v) in &config.claude.env {
        cmd.env(k, v);
    }
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => {
            return fail(format!(
                "cannot run {} ({e}); set claude.binary to Claude Code's path",
                config.claude.binary
            ))
        }
    };
    let after = match seat::read(&home) {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot read the login in {}: {e}", home.display())),
    };
    match after.filter(seat::Login::present) {
        Some(login) if !status.success() && before.as_ref().is_some_and(|b| b.same(&login)) => fail(format!(
            "Claude Code's login ended with {status} and the login in {} is the one from before: run it again and finish the login",
            home.display()
        )),
        Some(login) => {
            let new = !before.is_some_and(|b| b.same(&login));
            outln!(
                "claude-failover login: {account} has a login in {} ({}{})",
                seat::credentials_path(&home).display(),
                if new { "new" } else { "unchanged" },
                login
                    .expires_at
                    .map(|t| format!(", access token expires {}", crate::sys::time::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(t))))
                    .unwrap_or_default()
            );
            if config.live_seat().is_some() {
                outln!(
                    "claude-failover login: run `claude-failover setup` once every account has a login (it seats the active one); a running daemon copies a newer login of the active account into the seat by itself"
                );
            }
            Ok(exit::OK)
        }
        None => fail(format!(
            "no login in {} after Claude Code exited ({status}); run it again and finish the login before leaving",
            home.display()
        )),
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
