//! Adapters to the operating system: tmux, processes, systemd, time.

pub mod process;
pub mod sd_notify;
pub mod time;
pub mod tmux;
