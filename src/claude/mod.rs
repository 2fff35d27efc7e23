//! Everything specific to Claude Code and its version: what it writes and
//! says (`facts`), its hook payloads, the `hook` and `statusline` commands it
//! runs, its settings, account logins and the folders accounts share.

pub mod account;
pub mod facts;
pub mod hook;
pub mod hook_event;
pub mod seat;
pub mod settings;
pub mod shared_folders;
