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

impl AccountStatus {
    /// Its quota fields from the switcher's view of it (`auth` already
    /// set): the main loop's snapshot fills them, and HTTP again from the
    /// newest view, so a reading shows as soon as the switcher holds it.
    pub fn read_from(&mut self, v: Option<&crate::daemon::switcher::AccountView>) {
        use std::time::{Duration, UNIX_EPOCH};
        let at_secs = |t: u64| crate::sys::time::rfc3339(UNIX_EPOCH + Duration::from_secs(t));
        let now_ms = crate::decide::quota::now_ms(std::time::SystemTime::now());
        let window = |w: Option<crate::decide::quota::Window>| {
            let q = &v?.quota;
            let w = w?;
            Some(serde_json::json!({
                "utilization": w.utilization,
                "resets_at": w.resets_at.map(at_secs),
                "source": q.source,
                "machine": q.machine,
                "observed_at_ms": q.observed_at_ms,
                "age_ms": q.observed_at_ms.map(|t| now_ms.saturating_sub(t)),
                "observed_at": q.observed_at_ms.map(|t| crate::sys::time::rfc3339(UNIX_EPOCH + Duration::from_millis(t))),
            }))
        };
        let auth_ok = self.auth.starts_with("ok");
        self.usable = auth_ok && v.is_none_or(|v| v.usable);
        self.reason = if auth_ok {
            v.and_then(|v| v.reason.clone())
        } else {
            Some(self.auth.clone())
        };
        self.five_hour = window(v.and_then(|v| v.quota.five_hour));
        self.seven_day = window(v.and_then(|v| v.quota.seven_day));
        self.limits = v
            .map(|v| v.quota.all_limits())
            .unwrap_or_default()
            .into_iter()
            .map(|l| {
                serde_json::json!({
                    "kind": l.kind,
                    "model": l.model,
                    "utilization": l.utilization,
                    "resets_at": l.resets_at.map(at_secs),
                    "is_active": l.is_active,
                    "severity": l.severity,
                })
            })
            .collect();
        self.blocked_pools = v.map(|v| v.blocked_pools.clone()).unwrap_or_default();
    }
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
