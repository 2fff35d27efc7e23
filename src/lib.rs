//! claude-failover: keeps pools of Claude Code sessions alive in tmux, feeds
//! them queued tasks, watches every account's quota and fails every managed
//! session over to the best other account when the active one runs out.
//!
//! The module map (docs/architecture.md draws it):

/// Everything specific to Claude Code and its version.
pub mod claude;
/// What an operator runs: the command line and each command.
pub mod commands;
/// The config file: the raw layer serde fills, validated into what the program uses.
pub mod config;
/// The running daemon: its main loop and one module per role thread.
pub mod daemon;
/// Pure decisions, no I/O, no clock: the roles are their shells.
pub mod decide;
/// What is kept on disk: atomic files, queues, checkpoints, the state lock.
pub mod store;
/// Adapters to the system: tmux, processes, systemd notify, time.
pub mod sys;
