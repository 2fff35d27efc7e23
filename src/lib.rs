//! claude-failover: keeps pools of Claude Code sessions alive in tmux, feeds
//! them queued tasks, watches every account's quota and fails every managed
//! session over to the best other account when the active one runs out.

pub mod account;
pub mod assignment;
pub mod atomic_file;
pub mod check;
pub mod checkpoint;
pub mod claude_facts;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dispatcher;
pub mod event_socket;
pub mod event_watcher;
pub mod hook;
pub mod hook_event;
pub mod http;
pub mod metrics;
pub mod notifier;
pub mod poll_schedule;
pub mod pool_size;
pub mod process;
pub mod queue;
pub mod quota;
pub mod quota_monitor;
pub mod sd_notify;
pub mod session;
pub mod session_watcher;
pub mod settings;
pub mod setup;
pub mod shared_folders;
pub mod state_lock;
pub mod status;
pub mod status_table;
pub mod swap_plan;
pub mod switcher;
pub mod time;
pub mod tmux;
pub mod yaml_lines;
