//! Adapters to the operating system: tmux, processes, systemd, time, the log.

pub mod logging;
pub mod process;
pub mod sd_notify;
pub mod time;
pub mod tmux;
