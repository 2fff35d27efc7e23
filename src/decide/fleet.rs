//! Pure: what the fleet (daemons on other machines, seen through Redis)
//! changes in this machine's decisions.
//!
//! - which machines count as running on an account: those whose lease has
//!   not expired, plus those holding a fresh claim on it (a machine that is
//!   moving there right now);
//! - the order in which to try swap targets: today's order (fewest blocked
//!   pools, lowest load, config order) re-sorted, stably, by how many other
//!   machines run on each, so the first is the usable account the fewest run on.
//!
//! The shell (`daemon::fleet`) reads and writes Redis; the switcher asks
//! these functions with the view it holds and `now`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One machine's lease: which account it runs on, renewed while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineLease {
    pub machine: String,
    /// The account its sessions run on.
    pub account: String,
    /// Its managed sessions when it renewed.
    pub sessions: u32,
    /// Unix ms since it runs on `account`.
    pub since_ms: u64,
    /// Unix ms of its last renewal.
    pub renewed_ms: u64,
    /// Unix ms when the lease lapses unless renewed.
    pub expires_ms: u64,
    /// The daemon's version.
    #[serde(default)]
    pub version: String,
    /// The target of its swap under way: it counts there already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_to: Option<String>,
}

/// A machine's short claim on an account it is about to swap to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub account: String,
    pub machine: String,
    pub expires_ms: u64,
}

/// What this machine knows of the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetView {
    /// `fleet.redis` is set.
    pub enabled: bool,
    pub connected: bool,
    /// Unix ms since `connected` has its current value.
    pub since_ms: Option<u64>,
    /// The last error talking to Redis, while disconnected.
    pub error: Option<String>,
    /// Every machine's lease as last read, this one's included.
    pub machines: Vec<MachineLease>,
    pub claims: Vec<Claim>,
}

impl FleetView {
    /// The leases still in force at `now_ms`.
    pub fn live_machines(&self, now_ms: u64) -> Vec<&MachineLease> {
        self.machines
            .iter()
            .filter(|m| m.expires_ms > now_ms)
            .collect()
    }

    /// Account → the other machines (not `me`) that run on it or hold a
    /// claim on it at `now_ms`. Empty when disconnected: a stale view must
    /// not steer a machine that is on its own.
    pub fn crowd(&self, me: &str, now_ms: u64) -> BTreeMap<String, BTreeSet<String>> {
        let mut crowd: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        if !self.connected {
            return crowd;
        }
        for m in self.live_machines(now_ms) {
            if m.machine != me {
                for account in std::iter::once(&m.account).chain(&m.moving_to) {
                    crowd
                        .entry(account.clone())
                        .or_default()
                        .insert(m.machine.clone());
                }
            }
        }
        for c in &self.claims {
            if c.machine != me && c.expires_ms > now_ms {
                crowd
                    .entry(c.account.clone())
                    .or_default()
                    .insert(c.machine.clone());
            }
        }
        crowd
    }
}

/// `ranked` in today's order (best first), re-sorted stably by how many
/// other machines `crowd` puts on each: the first is the usable account
/// the fewest machines run on, ties kept in today's order.
pub fn prefer_least_crowded(
    ranked: &[String],
    crowd: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut out = ranked.to_vec();
    out.sort_by_key(|a| crowd.get(a).map_or(0, BTreeSet::len));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(machine: &str, account: &str, expires_ms: u64) -> MachineLease {
        MachineLease {
            machine: machine.into(),
            account: account.into(),
            sessions: 1,
            since_ms: 0,
            renewed_ms: 0,
            expires_ms,
            version: String::new(),
            moving_to: None,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_least_crowded_account_comes_first_and_ties_keep_todays_order() {
        let view = FleetView {
            enabled: true,
            connected: true,
            machines: vec![lease("m2", "beta", 10_000), lease("m3", "beta", 10_000)],
            claims: vec![Claim {
                account: "gamma".into(),
                machine: "m4".into(),
                expires_ms: 10_000,
            }],
            ..FleetView::default()
        };
        let crowd = view.crowd("m1", 5_000);
        assert_eq!(crowd["beta"].len(), 2);
        assert_eq!(
            prefer_least_crowded(&names(&["beta", "gamma", "delta"]), &crowd),
            names(&["delta", "gamma", "beta"])
        );
        assert_eq!(
            prefer_least_crowded(&names(&["delta", "epsilon"]), &crowd),
            names(&["delta", "epsilon"])
        );
    }

    #[test]
    fn expired_leases_and_claims_and_this_machine_do_not_count() {
        let view = FleetView {
            enabled: true,
            connected: true,
            machines: vec![
                lease("m1", "beta", 10_000),
                lease("m2", "beta", 4_000),
                lease("m3", "gamma", 5_001),
            ],
            claims: vec![
                Claim {
                    account: "beta".into(),
                    machine: "m1".into(),
                    expires_ms: 10_000,
                },
                Claim {
                    account: "delta".into(),
                    machine: "m4".into(),
                    expires_ms: 5_000,
                },
            ],
            ..FleetView::default()
        };
        let crowd = view.crowd("m1", 5_000);
        assert!(!crowd.contains_key("beta"), "{crowd:?}");
        assert!(!crowd.contains_key("delta"), "{crowd:?}");
        assert_eq!(crowd["gamma"].len(), 1);
        assert_eq!(view.live_machines(5_000).len(), 2);
    }

    #[test]
    fn a_machine_holding_a_lease_and_a_claim_on_one_account_counts_once() {
        let view = FleetView {
            enabled: true,
            connected: true,
            machines: vec![lease("m2", "beta", 10_000)],
            claims: vec![Claim {
                account: "beta".into(),
                machine: "m2".into(),
                expires_ms: 10_000,
            }],
            ..FleetView::default()
        };
        assert_eq!(view.crowd("m1", 0)["beta"].len(), 1);
    }

    #[test]
    fn a_machine_in_the_middle_of_a_swap_counts_on_its_target_already() {
        let mut m2 = lease("m2", "alpha", 10_000);
        m2.moving_to = Some("beta".into());
        let view = FleetView {
            enabled: true,
            connected: true,
            machines: vec![m2],
            ..FleetView::default()
        };
        let crowd = view.crowd("m1", 0);
        assert_eq!(crowd["beta"].len(), 1);
        assert_eq!(
            prefer_least_crowded(&names(&["beta", "gamma"]), &crowd),
            names(&["gamma", "beta"])
        );
    }

    #[test]
    fn a_disconnected_view_steers_nothing() {
        let view = FleetView {
            enabled: true,
            connected: false,
            machines: vec![lease("m2", "beta", 10_000)],
            ..FleetView::default()
        };
        assert!(view.crowd("m1", 0).is_empty());
    }
}
