//! The published status snapshot: what `GET /status` answers and
//! `/healthz` judges. The main loop builds a new one after every turn;
//! HTTP handlers only read the latest, never wait on a role thread.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;

/// `GET /status`, field for field as SPEC.md lists them.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Status {
    pub version: String,
    pub active_account: Option<String>,
    pub partial_swap: bool,
    pub swap_in_progress: bool,
    pub accounts: Vec<AccountStatus>,
    pub sessions: Vec<SessionStatus>,
    /// tmux sessions on the same server that are not ours: listed, never touched.
    pub unmanaged_sessions: Vec<String>,
    pub queues: BTreeMap<String, QueueCounts>,
    pub last_swap: Option<serde_json::Value>,
    /// The last 50 swaps, newest last, each with its phases' durations.
    pub swap_history: Vec<serde_json::Value>,
    /// Since the daemon started: the newest notifications, tasks done (with
    /// the first line of the answer) and tasks failed (with the reason).
    pub recent: serde_json::Value,
    pub config_error: Option<String>,
    /// Pools that take no new task: the active account's model-scoped limit
    /// covers their model and no account serves every pool. Pool → why.
    pub held_pools: BTreeMap<String, String>,
    /// Why `/healthz` answers 503; empty when healthy.
    pub health_problems: Vec<String>,
    /// `fleet.redis` set: `{machine, connected, since, error, machines,
    /// claims}` (docs/fleet.md); `null` on a machine alone. Redis away is
    /// no health problem: this machine goes on alone.
    pub fleet: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct AccountStatus {
    pub name: String,
    pub home: String,
    pub usable: bool,
    pub reason: Option<String>,
    pub five_hour: Option<serde_json::Value>,
    pub seven_day: Option<serde_json::Value>,
    /// Every limit: `kind` (`session`, `weekly_all`, `weekly_scoped`),
    /// `model` (scoped only), `utilization`, `resets_at`, `is_active`,
    /// `severity`.
    pub limits: Vec<serde_json::Value>,
    /// Pools this account's model-scoped limits keep from it, with why.
    pub blocked_pools: BTreeMap<String, String>,
    pub auth: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct SessionStatus {
    pub name: String,
    pub pool: String,
    pub state: String,
    pub account: Option<String>,
    pub claude_session_id: Option<String>,
    pub task: Option<String>,
    pub cwd: String,
    /// RFC 3339.
    pub since: String,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub pane_pid: Option<u32>,
    /// The silent-hook canary: its transcript shows work while none of its
    /// hooks reached the daemon for `lifecycle.hooks_silent_after`.
    pub hooks_silent: bool,
    /// Live mode: when its own traffic last showed its account (RFC 3339).
    pub account_confirmed_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub inbox: usize,
    pub active: usize,
    pub done: usize,
    pub failed: usize,
}

/// Where the latest snapshot lives.
pub type Published = Arc<RwLock<Arc<Status>>>;

pub fn publish(slot: &Published, status: Status) {
    *slot.write() = Arc::new(status);
}

pub fn latest(slot: &Published) -> Arc<Status> {
    slot.read().clone()
}
