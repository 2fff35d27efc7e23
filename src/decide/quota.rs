//! Pure: quota readings of each account's 5-hour and 7-day windows, and the pure
//! decision of when the active account is due to be left and for which.
//!
//! Readings come from four places, each kept with its source and time: the
//! status line (passive, from the sessions' own traffic), the usage endpoint
//! (polled only for accounts without a fresh passive reading), `StopFailure`
//! (a refused request), and the limit text on a pane (last resort). The
//! decision is a function of readings, config and `now`, so tests step the
//! clock by hand.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::claude::facts::LimitKind;
use crate::config::QuotaConfig;

/// One window's reading. Utilisation in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub utilization: f64,
    /// Unix seconds.
    pub resets_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Statusline,
    UsageEndpoint,
    StopFailure,
    PaneText,
}

/// What is known of one account's quota.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AccountQuota {
    pub five_hour: Option<Window>,
    pub seven_day: Option<Window>,
    pub source: Option<Source>,
    /// Unix ms of the last reading.
    pub observed_at_ms: Option<u64>,
    /// A refusal seen, and until when it holds (Unix seconds; `None` = until
    /// a reading says otherwise).
    pub refused: Option<Refusal>,
    /// The account needs a person (login, billing): never a target.
    pub needs_person: Option<String>,
    /// No session started under this account when a swap moved them to it
    /// (a login screen, a dialog, revoked credentials): never a target until
    /// an operator says it is fixed, by a reload (SIGHUP) or by a swap that
    /// names it. Unlike `needs_person`, a usage reading does not clear it:
    /// the endpoint answering says nothing about what the sessions show.
    #[serde(default)]
    pub sessions_did_not_start: Option<String>,
    /// Hysteresis memory: this window was over its threshold.
    pub five_hour_over: bool,
    pub seven_day_over: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub kind: LimitKind,
    pub at_ms: u64,
    pub until: Option<u64>,
    pub message: String,
}

impl AccountQuota {
    /// Records a window reading (status line or usage endpoint).
    pub fn read(
        &mut self,
        five_hour: Option<Window>,
        seven_day: Option<Window>,
        source: Source,
        now_ms: u64,
    ) {
        if five_hour.is_some() {
            self.five_hour = five_hour;
        }
        if seven_day.is_some() {
            self.seven_day = seven_day;
        }
        self.source = Some(source);
        self.observed_at_ms = Some(now_ms);
        if source == Source::UsageEndpoint {
            // The endpoint answered with this account's token: it is logged in.
            self.needs_person = None;
        }
        // A reading newer than the refusal that shows room on the refused
        // window ends it (a refused request's own headers read 100 %).
        if let Some(r) = &self.refused {
            let w = match r.kind {
                LimitKind::Weekly | LimitKind::ModelWeekly => self.seven_day,
                _ => self.five_hour,
            };
            if w.is_some_and(|w| w.utilization < 100.0)
                && source != Source::StopFailure
                && now_ms > r.at_ms
            {
                self.refused = None;
            }
        }
    }

    /// Records a refusal of `kind`.
    pub fn refuse(&mut self, kind: LimitKind, message: &str, source: Source, now_ms: u64) {
        match kind {
            LimitKind::Login | LimitKind::Billing => self.needs_person = Some(message.to_string()),
            _ => {
                let until = match kind {
                    LimitKind::Weekly | LimitKind::ModelWeekly => {
                        self.seven_day.and_then(|w| w.resets_at)
                    }
                    _ => self.five_hour.and_then(|w| w.resets_at),
                }
                .filter(|&t| t * 1000 > now_ms);
                self.refused = Some(Refusal {
                    kind,
                    at_ms: now_ms,
                    until,
                    message: message.to_string(),
                });
                let full = |w: Option<Window>| {
                    Some(Window {
                        utilization: 100.0,
                        resets_at: w.and_then(|w| w.resets_at),
                    })
                };
                match kind {
                    LimitKind::Weekly | LimitKind::ModelWeekly => {
                        self.seven_day = full(self.seven_day)
                    }
                    _ => self.five_hour = full(self.five_hour),
                }
            }
        }
        self.source = Some(source);
        self.observed_at_ms = Some(now_ms);
    }

    /// Passes resets that are due: a window whose reset time is past reads 0.
    pub fn pass_resets(&mut self, now_ms: u64) {
        let now_s = now_ms / 1000;
        for w in [&mut self.five_hour, &mut self.seven_day]
            .into_iter()
            .flatten()
        {
            if w.resets_at.is_some_and(|t| t <= now_s) {
                w.utilization = 0.0;
                w.resets_at = None;
            }
        }
        if self
            .refused
            .as_ref()
            .is_some_and(|r| r.until.is_some_and(|t| t <= now_s))
        {
            self.refused = None;
        }
    }

    /// The larger of the two windows (0 when unknown).
    pub fn load(&self) -> f64 {
        let u = |w: Option<Window>| w.map(|w| w.utilization).unwrap_or(0.0);
        u(self.five_hour).max(u(self.seven_day))
    }

    /// Updates the hysteresis memory and says whether the account may take
    /// new work, with the reason when not.
    pub fn evaluate(&mut self, q: &QuotaConfig) -> Result<(), String> {
        if let Some(why) = &self.needs_person {
            return Err(format!("needs a person: {why}"));
        }
        if let Some(why) = &self.sessions_did_not_start {
            return Err(format!("needs a person: {why}"));
        }
        if let Some(r) = &self.refused {
            return Err(format!("refused a request ({:?}): {}", r.kind, r.message));
        }
        let mut reasons = Vec::new();
        for (w, threshold, over, label) in [
            (
                self.five_hour,
                q.five_hour_threshold,
                &mut self.five_hour_over,
                "5-hour",
            ),
            (
                self.seven_day,
                q.seven_day_threshold,
                &mut self.seven_day_over,
                "7-day",
            ),
        ] {
            let u = w.map(|w| w.utilization).unwrap_or(0.0);
            if u >= threshold {
                *over = true;
            } else if *over && u < threshold - q.hysteresis {
                *over = false;
            }
            if u >= 100.0 {
                // A full window refuses every request: the same as a
                // refusal, whichever of the two is heard first (a status-line
                // reading of the refused response often is).
                reasons.push(format!(
                    "{label} window at {u:.0}%: every request is refused until it resets"
                ));
            } else if *over {
                reasons.push(format!("{label} window at {u:.0}% (threshold {threshold:.0}%, usable again below {:.0}%)", threshold - q.hysteresis));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }

    /// The soonest reset among the windows that block this account.
    pub fn earliest_reset(&self) -> Option<u64> {
        let mut t: Vec<u64> = Vec::new();
        if let Some(r) = &self.refused {
            t.extend(r.until);
        }
        if self.five_hour_over {
            t.extend(self.five_hour.and_then(|w| w.resets_at));
        }
        if self.seven_day_over {
            t.extend(self.seven_day.and_then(|w| w.resets_at));
        }
        t.into_iter().min()
    }
}

/// What the switcher should do.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Stay,
    /// Swap now. `urgent` = the active account refused: don't drain.
    Swap {
        to: String,
        reason: String,
        urgent: bool,
    },
    /// The active account is due but no account can take the work.
    NoAccount {
        reason: String,
        earliest_reset: Option<u64>,
    },
}

/// Decides, from every account's quota (in config order), whether to leave
/// `active` and for which account. Updates each account's hysteresis memory.
/// `last_swap_ms` and `swap_cooldown` stop threshold swaps from ping-ponging;
/// a refused request swaps at once whatever the cooldown.
pub fn decide(
    accounts: &mut [(String, AccountQuota)],
    active: &str,
    q: &QuotaConfig,
    last_swap_ms: Option<u64>,
    now_ms: u64,
) -> Decision {
    for (_, a) in accounts.iter_mut() {
        a.pass_resets(now_ms);
    }
    let verdicts: Vec<(String, Result<(), String>, f64)> = accounts
        .iter_mut()
        .map(|(n, a)| (n.clone(), a.evaluate(q), a.load()))
        .collect();
    let Some((_, active_verdict, _)) = verdicts.iter().find(|(n, _, _)| n == active) else {
        // The active account is not configured any more: leave it.
        return pick(
            &verdicts,
            accounts,
            active,
            "the active account is no longer configured".into(),
            true,
        );
    };
    let Err(why) = active_verdict else {
        return Decision::Stay;
    };
    let refused = accounts.iter().any(|(n, a)| {
        n == active
            && (a.refused.is_some()
                || a.needs_person.is_some()
                || a.sessions_did_not_start.is_some()
                || a.load() >= 100.0)
    });
    if !refused {
        if let Some(last) = last_swap_ms {
            if now_ms < last + q.swap_cooldown.as_millis() as u64 {
                return Decision::Stay;
            }
        }
    }
    pick(
        &verdicts,
        accounts,
        active,
        format!("{active}: {why}"),
        refused,
    )
}

fn pick(
    verdicts: &[(String, Result<(), String>, f64)],
    accounts: &[(String, AccountQuota)],
    active: &str,
    reason: String,
    urgent: bool,
) -> Decision {
    // Lowest load wins; `min_by` keeps the first of equals: config order.
    let best = verdicts
        .iter()
        .filter(|(n, ok, _)| n != active && ok.is_ok())
        .min_by(|a, b| a.2.partial_cmp(&b.2).unwrap_or(std::cmp::Ordering::Equal));
    match best {
        Some((to, _, _)) => Decision::Swap {
            to: to.clone(),
            reason,
            urgent,
        },
        None => Decision::NoAccount {
            reason,
            earliest_reset: accounts
                .iter()
                .filter(|(_, a)| a.needs_person.is_none() && a.sessions_did_not_start.is_none())
                .filter_map(|(_, a)| a.earliest_reset())
                .min(),
        },
    }
}

/// A reading is fresh for this long; older ones make the account a
/// candidate for the usage endpoint.
pub fn fresh_for(q: &QuotaConfig) -> Duration {
    q.poll_interval
}

/// Parses `rate_limits` of a status-line payload (percent and Unix seconds).
pub fn from_statusline(payload: &serde_json::Value) -> Option<(Option<Window>, Option<Window>)> {
    let rl = payload.get("rate_limits")?;
    let w = |k: &str| {
        let x = rl.get(k)?;
        Some(Window {
            utilization: x.get("used_percentage")?.as_f64()?,
            resets_at: x
                .get("resets_at")
                .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64))),
        })
    };
    let (five, seven) = (w("five_hour"), w("seven_day"));
    (five.is_some() || seven.is_some()).then_some((five, seven))
}

/// Parses the usage endpoint's answer (percent, RFC 3339 resets).
pub fn from_usage(body: &serde_json::Value) -> (Option<Window>, Option<Window>) {
    let w = |k: &str| {
        let x = body.get(k).filter(|v| !v.is_null())?;
        Some(Window {
            utilization: x.get("utilization")?.as_f64()?,
            resets_at: x
                .get("resets_at")
                .and_then(|v| v.as_str())
                .and_then(crate::sys::time::parse_rfc3339)
                .map(crate::sys::time::unix_secs),
        })
    };
    (w("five_hour"), w("seven_day"))
}

/// Unix ms now.
pub fn now_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claude::facts::{classify_limit_text, LimitKind};

    fn q() -> QuotaConfig {
        QuotaConfig {
            usage_url: "http://x".into(),
            poll_interval: Duration::from_secs(300),
            five_hour_threshold: 90.0,
            seven_day_threshold: 95.0,
            hysteresis: 10.0,
            swap_cooldown: Duration::from_secs(120),
        }
    }

    fn acct(name: &str, five: f64, seven: f64) -> (String, AccountQuota) {
        let mut a = AccountQuota::default();
        a.read(
            Some(Window {
                utilization: five,
                resets_at: Some(10_000),
            }),
            Some(Window {
                utilization: seven,
                resets_at: Some(600_000),
            }),
            Source::Statusline,
            0,
        );
        (name.into(), a)
    }

    fn set(accts: &mut [(String, AccountQuota)], name: &str, five: f64, now_ms: u64) {
        let a = &mut accts.iter_mut().find(|(n, _)| n == name).unwrap().1;
        a.read(
            Some(Window {
                utilization: five,
                resets_at: Some(10_000),
            }),
            None,
            Source::Statusline,
            now_ms,
        );
    }

    #[test]
    fn stays_below_threshold_and_swaps_to_lowest_load_at_it() {
        let mut a = vec![
            acct("a", 50.0, 10.0),
            acct("b", 30.0, 40.0),
            acct("c", 20.0, 35.0),
        ];
        assert_eq!(decide(&mut a, "a", &q(), None, 1000), Decision::Stay);
        set(&mut a, "a", 90.0, 2000);
        // b's load is 40, c's is 35: c wins.
        assert!(
            matches!(decide(&mut a, "a", &q(), None, 2000), Decision::Swap { ref to, urgent: false, .. } if to == "c")
        );
    }

    /// A status-line reading of 100 % (often heard before the StopFailure of
    /// the same refused request) swaps as a refusal does: at once, no drain,
    /// no cooldown.
    #[test]
    fn a_full_window_swaps_like_a_refusal() {
        let mut a = vec![acct("a", 10.0, 0.0), acct("b", 10.0, 0.0)];
        set(&mut a, "a", 100.0, 5_000);
        // A swap a moment ago would hold a threshold swap; not this one.
        match decide(&mut a, "a", &q(), Some(4_000), 5_000) {
            Decision::Swap { to, reason, urgent } => {
                assert_eq!(to, "b");
                assert!(urgent);
                assert!(reason.contains("every request is refused"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        set(&mut a, "a", 99.0, 6_000);
        assert!(matches!(
            decide(&mut a, "a", &q(), Some(4_000), 6_000),
            Decision::Stay
        ));
    }

    #[test]
    fn ties_go_in_config_order() {
        let mut a = vec![
            acct("a", 95.0, 0.0),
            acct("b", 10.0, 0.0),
            acct("c", 10.0, 0.0),
        ];
        assert!(
            matches!(decide(&mut a, "a", &q(), None, 0), Decision::Swap { ref to, .. } if to == "b")
        );
    }

    #[test]
    fn flapping_readings_do_not_ping_pong() {
        let mut a = vec![acct("a", 91.0, 0.0), acct("b", 10.0, 0.0)];
        let Decision::Swap { to, .. } = decide(&mut a, "a", &q(), None, 1_000) else {
            panic!()
        };
        assert_eq!(to, "b");
        // b rises to the threshold soon after: the cooldown holds.
        set(&mut a, "b", 92.0, 30_000);
        set(&mut a, "a", 85.0, 30_000);
        assert_eq!(
            decide(&mut a, "b", &q(), Some(1_000), 30_000),
            Decision::Stay
        );
        // After the cooldown, a at 85 % is still not usable: it was over, and
        // is usable again only below 80 %.
        let d = decide(&mut a, "b", &q(), Some(1_000), 200_000);
        assert!(matches!(d, Decision::NoAccount { .. }), "{d:?}");
        // a flaps 89 → 91 → 79: usable only once under 80.
        set(&mut a, "a", 79.0, 210_000);
        assert!(
            matches!(decide(&mut a, "b", &q(), Some(1_000), 210_000), Decision::Swap { ref to, .. } if to == "a")
        );
    }

    #[test]
    fn two_accounts_near_their_limit_prefers_the_lower() {
        let mut a = vec![
            acct("a", 90.0, 50.0),
            acct("b", 88.0, 60.0),
            acct("c", 89.0, 20.0),
        ];
        // b: load 88; c: load 89.
        assert!(
            matches!(decide(&mut a, "a", &q(), None, 0), Decision::Swap { ref to, .. } if to == "b")
        );
    }

    #[test]
    fn a_refusal_swaps_at_once_even_in_cooldown_and_a_reset_passing_restores() {
        let mut a = vec![acct("a", 10.0, 0.0), acct("b", 40.0, 0.0)];
        a[0].1.refuse(
            LimitKind::FiveHour,
            "You've hit your 5-hour limit",
            Source::StopFailure,
            5_000,
        );
        let d = decide(&mut a, "a", &q(), Some(4_000), 5_000);
        assert!(
            matches!(d, Decision::Swap { ref to, urgent: true, .. } if to == "b"),
            "{d:?}"
        );
        // Now on b, which is refused too (its window resets later): nowhere
        // to go, and the earliest reset is a's.
        a[1].1.read(
            Some(Window {
                utilization: 99.0,
                resets_at: Some(20_000),
            }),
            None,
            Source::Statusline,
            5_500,
        );
        a[1].1
            .refuse(LimitKind::FiveHour, "limit", Source::StopFailure, 6_000);
        let d = decide(&mut a, "b", &q(), Some(5_000), 6_000);
        assert_eq!(
            d,
            Decision::NoAccount {
                reason: d_reason(&d),
                earliest_reset: Some(10_000)
            }
        );
        // The reset passes: a is usable again and b swaps to it.
        let d = decide(&mut a, "b", &q(), Some(5_000), 10_001_000);
        assert!(
            matches!(d, Decision::Swap { ref to, .. } if to == "a"),
            "{d:?}"
        );
    }

    fn d_reason(d: &Decision) -> String {
        match d {
            Decision::NoAccount { reason, .. } | Decision::Swap { reason, .. } => reason.clone(),
            Decision::Stay => String::new(),
        }
    }

    #[test]
    fn a_login_failure_on_the_target_rules_it_out() {
        let mut a = vec![
            acct("a", 95.0, 0.0),
            acct("b", 0.0, 0.0),
            acct("c", 50.0, 0.0),
        ];
        a[1].1.refuse(
            LimitKind::Login,
            "401 from the usage endpoint",
            Source::UsageEndpoint,
            0,
        );
        assert!(
            matches!(decide(&mut a, "a", &q(), None, 0), Decision::Swap { ref to, .. } if to == "c")
        );
        a[2].1.refuse(
            LimitKind::Billing,
            "credit balance is too low",
            Source::PaneText,
            0,
        );
        assert!(matches!(
            decide(&mut a, "a", &q(), None, 0),
            Decision::NoAccount { .. }
        ));
    }

    #[test]
    fn weekly_threshold_counts_too() {
        let mut a = vec![acct("a", 10.0, 96.0), acct("b", 10.0, 10.0)];
        assert!(
            matches!(decide(&mut a, "a", &q(), None, 0), Decision::Swap { ref to, .. } if to == "b")
        );
    }

    #[test]
    fn limit_texts_are_told_apart() {
        assert_eq!(
            classify_limit_text("You've hit your 5-hour limit · resets 5:36am (UTC)"),
            Some(LimitKind::FiveHour)
        );
        assert_eq!(
            classify_limit_text("Claude AI usage limit reached|1767383999"),
            Some(LimitKind::FiveHour)
        );
        assert_eq!(
            classify_limit_text("You've hit your weekly limit · resets Sep 15 at 7pm"),
            Some(LimitKind::Weekly)
        );
        assert_eq!(
            classify_limit_text("Opus weekly limit reached"),
            Some(LimitKind::ModelWeekly)
        );
        assert_eq!(
            classify_limit_text("You've hit your session limit · resets 8pm (America/New_York)"),
            Some(LimitKind::FiveHour)
        );
        assert_eq!(
            classify_limit_text("Credit balance is too low"),
            Some(LimitKind::Billing)
        );
        assert_eq!(classify_limit_text("all good"), None);
    }

    #[test]
    fn parses_statusline_and_usage_shapes() {
        let sl = serde_json::json!({"rate_limits": {"five_hour": {"used_percentage": 42.5, "resets_at": 1767383999}, "seven_day": {"used_percentage": 7}}});
        let (f, s) = from_statusline(&sl).unwrap();
        assert_eq!(
            f,
            Some(Window {
                utilization: 42.5,
                resets_at: Some(1_767_383_999)
            })
        );
        assert_eq!(s.unwrap().utilization, 7.0);
        assert!(from_statusline(&serde_json::json!({"session_id": "x"})).is_none());
        let u = serde_json::json!({"five_hour": {"utilization": 24.0, "resets_at": "2026-01-02T19:59:59.600956+00:00"}, "seven_day": null});
        let (f, s) = from_usage(&u);
        assert_eq!(
            f,
            Some(Window {
                utilization: 24.0,
                resets_at: Some(1_767_383_999)
            })
        );
        assert_eq!(s, None);
    }
}
