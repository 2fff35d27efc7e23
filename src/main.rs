//! Thin entry point: parse the command line, run, print why a command
//! failed (once), exit with the command's status.

use clap::Parser;

fn main() {
    claude_failover::sys::logging::init();
    let cli = claude_failover::commands::Cli::parse();
    let code = match cli.run() {
        Ok(code) => code,
        // Every failure is printed here, once.
        Err(failed) => {
            for line in &failed.lines {
                claude_failover::sys::logging::last_words(line);
            }
            failed.code
        }
    };
    std::process::exit(code);
}
