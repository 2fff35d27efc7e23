//! Thin entry point: parse the command line, run, exit with the command's status.

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = claude_failover::commands::Cli::parse();
    std::process::exit(cli.run());
}
