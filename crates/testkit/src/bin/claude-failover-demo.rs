//! `claude-failover-demo`: a self-contained sandbox that shows sessions,
//! tasks and a live failover, then cleans up (see `testkit::demo`). It used
//! to be the `claude-failover demo` subcommand; it lives here so that the
//! product binary carries no API stand-in. `scripts/demo.sh` builds and runs
//! it.
//!
//! It runs the *product* binary as the daemon (`claude-failover --config
//! <sandbox> run`) and as Claude Code's hook, and finds it this way
//! (`testkit::product::binary`):
//!
//! 1. `$CLAUDE_FAILOVER_BIN`, when set, must name it;
//! 2. else `claude-failover` in the folder of this executable, which is
//!    where cargo puts both: `cargo build --release -p claude-failover -p
//!    claude-failover-testkit` leaves `target/release/claude-failover` next
//!    to `target/release/claude-failover-demo`.
//!
//! Without one it says so and exits 1. Both must come from the same
//! checkout: `scripts/demo.sh` builds them together.

use std::path::PathBuf;

use clap::Parser;

/// A self-contained sandbox that shows sessions, tasks and a live failover, then cleans up.
#[derive(Debug, Parser)]
#[command(name = "claude-failover-demo", version)]
struct Args {
    /// The Claude Code binary (default: `claude` on PATH, then the pinned one in .cache/).
    #[arg(long)]
    claude: Option<PathBuf>,
    /// Leave it running at the end and print how to look around.
    #[arg(long)]
    keep: bool,
    /// How many tasks to enqueue.
    #[arg(long, default_value_t = 6)]
    tasks: usize,
    /// How many sessions the pool keeps.
    #[arg(long, default_value_t = 3)]
    sessions: u32,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let args = Args::parse();
    std::process::exit(testkit::demo::demo_command(testkit::demo::DemoOptions {
        claude: args.claude,
        keep: args.keep,
        tasks: args.tasks,
        sessions: args.sessions,
    }));
}
