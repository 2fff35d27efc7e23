//! The raw layer: exactly the YAML shape of SPEC.md, as serde fills it.
//! Everything is optional here so that defaults, "required" and every
//! message are decided in one place (`validate`), with the key path and
//! line of the offending value.

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) state_dir: Option<String>,
    pub(super) claude: Option<RawClaude>,
    pub(super) tmux: Option<RawTmux>,
    pub(super) shared_root: Option<String>,
    pub(super) shared: Option<Vec<String>>,
    pub(super) accounts: Option<Vec<RawAccount>>,
    pub(super) active_link: Option<String>,
    pub(super) quota: Option<RawQuota>,
    pub(super) pools: Option<Vec<RawPool>>,
    pub(super) projects: Option<Vec<RawProject>>,
    pub(super) lifecycle: Option<RawLifecycle>,
    pub(super) swap: Option<RawSwap>,
    pub(super) checkpoint: Option<RawCheckpoint>,
    pub(super) janitor: Option<RawJanitor>,
    pub(super) http: Option<RawHttp>,
    pub(super) notify: Option<RawNotify>,
    pub(super) log: Option<RawLog>,
    pub(super) fleet: Option<RawFleet>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<String>,
    pub(super) level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    pub(super) redis: Option<String>,
    pub(super) machine: Option<String>,
    pub(super) lease_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClaude {
    pub(super) binary: Option<String>,
    pub(super) args: Option<Vec<String>>,
    pub(super) env: Option<BTreeMap<String, String>>,
    pub(super) startup_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTmux {
    pub(super) socket: Option<String>,
    pub(super) width: Option<i64>,
    pub(super) height: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccount {
    pub(super) name: Option<String>,
    pub(super) home: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuota {
    pub(super) usage_url: Option<String>,
    pub(super) poll_interval: Option<String>,
    pub(super) limits_poll_interval: Option<String>,
    pub(super) five_hour_threshold: Option<f64>,
    pub(super) seven_day_threshold: Option<f64>,
    pub(super) weekly_scoped_threshold: Option<f64>,
    pub(super) hysteresis: Option<f64>,
    pub(super) swap_cooldown: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) name: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) start_index: Option<i64>,
    pub(super) min: Option<i64>,
    pub(super) max: Option<i64>,
    pub(super) cwd: Option<String>,
    pub(super) dispatch: Option<bool>,
    pub(super) idle_shrink_after: Option<String>,
    pub(super) model: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProject {
    pub(super) name: Option<String>,
    pub(super) path: Option<String>,
    pub(super) pool: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLifecycle {
    pub(super) interval: Option<String>,
    pub(super) hooks_silent_after: Option<String>,
    pub(super) restart_backoff: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSwap {
    pub(super) mode: Option<String>,
    pub(super) seat: Option<String>,
    pub(super) verify_timeout: Option<String>,
    pub(super) drain_timeout: Option<String>,
    pub(super) stop_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheckpoint {
    pub(super) interval: Option<String>,
    pub(super) keep: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJanitor {
    pub(super) interval: Option<String>,
    pub(super) stale_task_after: Option<String>,
    pub(super) stale_while_waiting: Option<bool>,
    pub(super) done_retention: Option<String>,
    pub(super) max_attempts: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) listen: Option<String>,
    pub(super) token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) telegram: Option<RawTelegram>,
    pub(super) webhook: Option<RawWebhook>,
    pub(super) min_level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelegram {
    pub(super) bot_token_file: Option<String>,
    pub(super) chat_id: Option<String>,
    pub(super) api_base: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    pub(super) url: Option<String>,
}
