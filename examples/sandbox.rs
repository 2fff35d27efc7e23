//! Builds a sandbox (two made-up accounts, a shared root, a pool and a
//! project) in the folder given as the first argument and prints the path of
//! its config file. `scripts/check-sandbox.sh` runs `check` on it.
//!
//!     cargo run --example sandbox -- DIR [CLAUDE_BINARY]

use claude_failover::sandbox::{Sandbox, SandboxSpec};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: sandbox DIR [CLAUDE_BINARY]");
        std::process::exit(2);
    };
    let spec = SandboxSpec {
        claude_binary: args.next().unwrap_or_else(|| "claude".into()),
        tmux_socket: format!("claude-failover-sandbox-{}", std::process::id()),
        ..SandboxSpec::default()
    };
    match Sandbox::create(std::path::Path::new(&dir), &spec) {
        Ok(sb) => println!("{}", sb.config_path.display()),
        Err(e) => {
            eprintln!("cannot build the sandbox in {dir}: {e}");
            std::process::exit(1);
        }
    }
}
