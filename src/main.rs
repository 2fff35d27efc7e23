//! Thin entry point: parse the command line, run, print why a command
//! failed (once), exit with the command's status.

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = claude_failover::commands::Cli::parse();
    let code = match cli.run() {
        Ok(code) => code,
        // Every failure is printed here, once.
        Err(failed) => {
            for line in &failed.lines {
                eprintln!("{line}");
            }
            failed.code
        }
    };
    std::process::exit(code);
}
