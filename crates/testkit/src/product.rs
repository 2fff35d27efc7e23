//! Where the product binary, `claude-failover`, is: the tests and the demo
//! run it as a child process (`claude-failover run`) and install it as
//! Claude Code's hook, so they need its path, and this crate cannot use
//! `env!("CARGO_BIN_EXE_claude-failover")` (cargo sets it only for the
//! integration tests of the package that owns the binary).
//!
//! The same lookup as cargo's `cargo-test-support` (`cargo_dir`): first
//! `$CLAUDE_FAILOVER_BIN`, else the folder of the running executable, one
//! level up when that is cargo's `deps/` (an integration test runs from
//! `target/<profile>/deps/`, the binaries sit in `target/<profile>/`). The
//! demo binary sits next to the product in `target/<profile>/` already.

use std::path::PathBuf;

/// Overrides where the product binary is looked for.
pub const ENV_BIN: &str = "CLAUDE_FAILOVER_BIN";
/// The product binary's file name.
pub const NAME: &str = "claude-failover";

/// The `claude-failover` binary to run, or why there is none. It must be a
/// file: a stale one cannot be told from a fresh one here, which is why
/// `cargo test --workspace` (it builds every binary before any test runs)
/// and `scripts/demo.sh` (it builds both) are the ways in.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(given) = std::env::var_os(ENV_BIN) {
        let path = PathBuf::from(given);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "${ENV_BIN} is {}, which is not a file",
                path.display()
            ))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find my own binary: {e} (set ${ENV_BIN})"))?;
    let mut dir = exe.clone();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(NAME);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no {NAME} binary at {} (next to {}): build it first \
             (`cargo build -p claude-failover`, with --release for a release build), \
             or set ${ENV_BIN} to its path",
            path.display(),
            exe.display()
        ))
    }
}
