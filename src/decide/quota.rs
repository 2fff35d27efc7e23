//! Pure: quota readings of each account's limits — the 5-hour window, the
//! 7-day window, and the model-scoped weekly limits of the usage endpoint's
//! `limits[]` — and the pure decision of when the active account is due to
//! be left and for which.
//!
//! A model-scoped limit stops an account only for the pools whose model it
//! covers ([`covers`]). The machine runs one account at a time, so when the
//! active one is blocked for some pools the decision moves to an account
//! that serves every pool, else to one that serves more of them, else stays
//! and holds the blocked pools ([`held_pools`]: they get no new task while
//! the others go on).
//!
//! Readings come from four places, each kept with its source and time: the
//! status line (passive, from the sessions' own traffic), the usage endpoint
//! (polled only for accounts without a fresh passive reading), `StopFailure`
//! (a refused request), and the limit text on a pane (last resort). The
//! decision is a function of readings, config and `now`, so tests step the
//! clock by hand.

use std::collections::{BTreeMap, BTreeSet};
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

/// A limit's kind, as the usage endpoint's `limits[]` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// The 5-hour window.
    Session,
    /// The weekly cap on every model.
    WeeklyAll,
    /// A weekly cap on one model.
    WeeklyScoped,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Session => "session",
            LimitScope::WeeklyAll => "weekly_all",
            LimitScope::WeeklyScoped => "weekly_scoped",
        }
    }
}

/// One limit of an account: an entry of the usage endpoint's `limits[]`, or
/// one derived from its older keys (`five_hour`, `seven_day`,
/// `seven_day_opus`, `seven_day_sonnet`) or from the status line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limit {
    pub kind: LimitScope,
    /// `weekly_scoped` only: the model's display name (`Opus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Percent.
    pub utilization: f64,
    /// Unix seconds.
    pub resets_at: Option<u64>,
    /// The limit that binds now, when the endpoint says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_active: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
}

/// A pool as the decision sees it: its name and the model it runs (`None`:
/// Claude Code's default, which every model-scoped limit is taken to cover).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolModel {
    pub pool: String,
    pub model: Option<String>,
}

/// The model family a name belongs to: `Opus 4.5` → `opus`,
/// `claude-sonnet-4-5` → `sonnet`.
pub fn family(model: &str) -> String {
    model
        .to_lowercase()
        .split(|c: char| !c.is_ascii_alphabetic())
        .find(|w| !w.is_empty() && *w != "claude")
        .unwrap_or_default()
        .to_string()
}

/// Whether a weekly limit scoped to `limit_model` binds a pool running
/// `pool_model`: the family appears in the pool's model (`opus` covers
/// `opus`, `opusplan`, `claude-opus-4-5`). A pool with no model set runs
/// Claude Code's default, which may be any: covered.
pub fn covers(limit_model: &str, pool_model: Option<&str>) -> bool {
    let fam = family(limit_model);
    match pool_model {
        None => true,
        Some(m) => !fam.is_empty() && m.to_lowercase().contains(&fam),
    }
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
    /// The usage endpoint's `limits[]` as last read (the session and weekly
    /// entries for their `severity` and `is_active`; their numbers live in
    /// `five_hour`/`seven_day`, which every source updates), and the
    /// model-scoped weekly limits, which only the endpoint and a refusal
    /// naming the model tell.
    #[serde(default)]
    pub limits: Vec<Limit>,
    /// Hysteresis memory of the model-scoped limits: the families over.
    #[serde(default)]
    pub scoped_over: BTreeSet<String>,
    /// The fleet machine the newest reading came from; `None`: this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// When each part was last read (Unix ms): a status line carries the
    /// windows, the endpoint also the limits, so a shared reading is newer
    /// part by part.
    #[serde(default)]
    pub parts_ms: PartTimes,
}

/// Unix ms of the last reading of each part of an account's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PartTimes {
    pub five_hour: Option<u64>,
    pub seven_day: Option<u64>,
    pub limits: Option<u64>,
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
        self.read_limits(five_hour, seven_day, None, source, now_ms)
    }

    /// [`Self::read`] with the endpoint's `limits[]` (which replaces the last
    /// list when given).
    pub fn read_limits(
        &mut self,
        five_hour: Option<Window>,
        seven_day: Option<Window>,
        limits: Option<Vec<Limit>>,
        source: Source,
        now_ms: u64,
    ) {
        if let Some(l) = limits {
            self.limits = l;
            self.parts_ms.limits = Some(now_ms);
        }
        if five_hour.is_some() {
            self.five_hour = five_hour;
            self.parts_ms.five_hour = Some(now_ms);
        }
        if seven_day.is_some() {
            self.seven_day = seven_day;
            self.parts_ms.seven_day = Some(now_ms);
        }
        self.source = Some(source);
        self.observed_at_ms = Some(now_ms);
        self.machine = None;
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

    /// A reading another machine of the fleet took at `observed_ms` (Unix
    /// ms), kept part by part where it is newer than what this machine
    /// read. Windows taken: recorded as that machine's, with its age. Its
    /// usage-endpoint answer came with that machine's own token, so it says
    /// nothing about this machine's login (`needs_person` stays). Returns
    /// whether any part was kept.
    pub fn read_shared(
        &mut self,
        five_hour: Option<Window>,
        seven_day: Option<Window>,
        limits: Option<Vec<Limit>>,
        source: Source,
        machine: &str,
        observed_ms: u64,
    ) -> bool {
        let newer = |t: Option<u64>| t.is_none_or(|t| observed_ms > t);
        let five_hour = five_hour.filter(|_| newer(self.parts_ms.five_hour));
        let seven_day = seven_day.filter(|_| newer(self.parts_ms.seven_day));
        let limits = limits.filter(|_| newer(self.parts_ms.limits));
        if five_hour.is_none() && seven_day.is_none() {
            // The endpoint's limits alone: the windows and their source stay.
            return match limits {
                Some(l) => {
                    self.limits = l;
                    self.parts_ms.limits = Some(observed_ms);
                    true
                }
                None => false,
            };
        }
        let needs_person = self.needs_person.take();
        self.read_limits(five_hour, seven_day, limits, source, observed_ms);
        self.needs_person = needs_person;
        self.machine = Some(machine.to_string());
        true
    }

    /// A refusal by the weekly limit of one model (`model`, a display name
    /// or the refused pool's model): that limit reads full; the account
    /// stays usable for the pools of other models.
    pub fn refuse_scoped(&mut self, model: &str, source: Source, now_ms: u64) {
        let fam = family(model);
        match self.limits.iter_mut().find(|l| {
            l.kind == LimitScope::WeeklyScoped
                && l.model.as_deref().map(family) == Some(fam.clone())
        }) {
            Some(l) => l.utilization = 100.0,
            None => self.limits.push(Limit {
                kind: LimitScope::WeeklyScoped,
                model: Some(capitalised(&fam)),
                utilization: 100.0,
                resets_at: self.seven_day.and_then(|w| w.resets_at),
                is_active: Some(true),
                severity: None,
            }),
        }
        self.scoped_over.insert(fam);
        self.source = Some(source);
        self.observed_at_ms = Some(now_ms);
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
        for l in &mut self.limits {
            if l.resets_at.is_some_and(|t| t <= now_s) {
                l.utilization = 0.0;
                l.resets_at = None;
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
        for l in self.scoped() {
            let fam = family(l.model.as_deref().unwrap_or_default());
            let u = l.utilization;
            if u >= q.weekly_scoped_threshold {
                self.scoped_over.insert(fam);
            } else if u < q.weekly_scoped_threshold - q.hysteresis {
                self.scoped_over.remove(&fam);
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }

    /// The model-scoped weekly limits known (cloned: the caller may update
    /// the hysteresis memory while walking them).
    pub fn scoped(&self) -> Vec<Limit> {
        self.limits
            .iter()
            .filter(|l| l.kind == LimitScope::WeeklyScoped && l.model.is_some())
            .cloned()
            .collect()
    }

    /// Why this account must not take new work for a pool running
    /// `pool_model`, by its model-scoped limits (`None`: nothing scoped
    /// blocks it). Reads the hysteresis memory [`Self::evaluate`] updates.
    pub fn blocked_for(&self, q: &QuotaConfig, pool_model: Option<&str>) -> Option<String> {
        let why: Vec<String> = self
            .scoped()
            .into_iter()
            .filter(|l| covers(l.model.as_deref().unwrap_or_default(), pool_model))
            .filter_map(|l| {
                let model = l.model.clone().unwrap_or_default();
                let u = l.utilization;
                if u >= 100.0 {
                    Some(format!("{model} weekly limit at {u:.0}%: every {model} request is refused until it resets"))
                } else if self.scoped_over.contains(&family(&model)) {
                    Some(format!(
                        "{model} weekly limit at {u:.0}% (threshold {:.0}%, usable again below {:.0}%)",
                        q.weekly_scoped_threshold,
                        q.weekly_scoped_threshold - q.hysteresis
                    ))
                } else {
                    None
                }
            })
            .collect();
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// Whether a model-scoped limit that blocks `pool_model` is full (its
    /// requests are refused now, not merely over a threshold).
    pub fn scoped_full_for(&self, pool_model: Option<&str>) -> bool {
        self.scoped().iter().any(|l| {
            l.utilization >= 100.0 && covers(l.model.as_deref().unwrap_or_default(), pool_model)
        })
    }

    /// Every limit for display: the session and weekly windows (with the
    /// endpoint's `severity`/`is_active` when it gave them), then the
    /// model-scoped ones.
    pub fn all_limits(&self) -> Vec<Limit> {
        let meta = |kind: LimitScope| self.limits.iter().find(|l| l.kind == kind);
        let mut out = Vec::new();
        for (kind, w) in [
            (LimitScope::Session, self.five_hour),
            (LimitScope::WeeklyAll, self.seven_day),
        ] {
            if let Some(w) = w {
                out.push(Limit {
                    kind,
                    model: None,
                    utilization: w.utilization,
                    resets_at: w.resets_at,
                    is_active: meta(kind).and_then(|l| l.is_active),
                    severity: meta(kind).and_then(|l| l.severity.clone()),
                });
            }
        }
        out.extend(self.scoped());
        out
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
        for l in self.scoped() {
            if self
                .scoped_over
                .contains(&family(l.model.as_deref().unwrap_or_default()))
            {
                t.extend(l.resets_at);
            }
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

/// One account's verdict: usable at all (by its session and weekly
/// windows), its load, and the pools its model-scoped limits block.
struct Verdict {
    name: String,
    usable: Result<(), String>,
    load: f64,
    blocked: Vec<(String, String)>,
}

fn verdicts(
    accounts: &mut [(String, AccountQuota)],
    q: &QuotaConfig,
    pools: &[PoolModel],
) -> Vec<Verdict> {
    accounts
        .iter_mut()
        .map(|(n, a)| {
            let usable = a.evaluate(q);
            let blocked = pools
                .iter()
                .filter_map(|p| {
                    a.blocked_for(q, p.model.as_deref())
                        .map(|why| (p.pool.clone(), why))
                })
                .collect();
            Verdict {
                name: n.clone(),
                usable,
                load: a.load(),
                blocked,
            }
        })
        .collect()
}

/// Decides, from every account's quota (in config order), whether to leave
/// `active` and for which account. Updates each account's hysteresis memory.
/// `last_swap_ms` and `swap_cooldown` stop threshold swaps from ping-ponging;
/// a refused request swaps at once whatever the cooldown. `pools` are the
/// configured pools with their models: an account whose model-scoped limit
/// blocks some of them is left for one that serves them all (or more of
/// them); when none does, it stays and those pools are held.
pub fn decide(
    accounts: &mut [(String, AccountQuota)],
    active: &str,
    q: &QuotaConfig,
    pools: &[PoolModel],
    last_swap_ms: Option<u64>,
    now_ms: u64,
) -> Decision {
    for (_, a) in accounts.iter_mut() {
        a.pass_resets(now_ms);
    }
    let verdicts = verdicts(accounts, q, pools);
    // An account serving no pool is no target (with no pools, any usable one is).
    let serve_any = pools.len().max(1);
    let Some(act) = verdicts.iter().find(|v| v.name == active) else {
        // The active account is not configured any more: leave it.
        return pick(
            &verdicts,
            accounts,
            active,
            serve_any,
            "the active account is no longer configured".into(),
            true,
        );
    };
    let (why, bound, refused) = match &act.usable {
        Ok(()) if act.blocked.is_empty() => return Decision::Stay,
        Ok(()) => {
            // Blocked for some pools: worth a swap only to an account that
            // serves more of them; urgent when the blocking limit is full
            // (those pools' requests are refused now).
            let full = accounts.iter().any(|(n, a)| {
                n == active && pools.iter().any(|p| a.scoped_full_for(p.model.as_deref()))
            });
            let blocked: Vec<String> = act
                .blocked
                .iter()
                .map(|(p, why)| format!("{why} (pool {p})"))
                .collect();
            (blocked.join("; "), act.blocked.len(), full)
        }
        Err(why) => {
            let refused = accounts.iter().any(|(n, a)| {
                n == active
                    && (a.refused.is_some()
                        || a.needs_person.is_some()
                        || a.sessions_did_not_start.is_some()
                        || a.load() >= 100.0)
            });
            (why.clone(), serve_any, refused)
        }
    };
    if !refused {
        if let Some(last) = last_swap_ms {
            if now_ms < last + q.swap_cooldown.as_millis() as u64 {
                return Decision::Stay;
            }
        }
    }
    let decision = pick(
        &verdicts,
        accounts,
        active,
        bound,
        format!("{active}: {why}"),
        refused,
    );
    // Blocked for some pools and no account serves more: stay (the blocked
    // pools are held, see held_pools).
    match decision {
        Decision::NoAccount { .. } if act.usable.is_ok() => Decision::Stay,
        d => d,
    }
}

/// The pools the active account cannot take new work for (its model-scoped
/// limits cover their model), with why. Read after [`decide`], which updates
/// the hysteresis memory; empty when the account is unusable for every pool
/// (that is [`Decision::NoAccount`]'s pause).
pub fn held_pools(
    accounts: &[(String, AccountQuota)],
    active: &str,
    q: &QuotaConfig,
    pools: &[PoolModel],
) -> BTreeMap<String, String> {
    let Some((_, a)) = accounts.iter().find(|(n, _)| n == active) else {
        return BTreeMap::new();
    };
    pools
        .iter()
        .filter_map(|p| {
            a.blocked_for(q, p.model.as_deref())
                .map(|why| (p.pool.clone(), format!("{active}: {why}")))
        })
        .collect()
}

/// The best account other than `active` that is usable and blocked for
/// fewer than `bound` pools: fewest blocked pools first, then lowest load,
/// then config order.
fn pick(
    verdicts: &[Verdict],
    accounts: &[(String, AccountQuota)],
    active: &str,
    bound: usize,
    reason: String,
    urgent: bool,
) -> Decision {
    match best(verdicts, &[active], bound) {
        Some(to) => Decision::Swap { to, reason, urgent },
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

fn best(verdicts: &[Verdict], except: &[&str], bound: usize) -> Option<String> {
    ranked(verdicts, except, bound)
        .first()
        .map(|v| v.name.clone())
}

/// The usable accounts but those in `except` blocked for fewer than
/// `bound` pools: fewest blocked pools first, then lowest load; a stable
/// sort keeps config order among equals.
fn ranked<'a>(verdicts: &'a [Verdict], except: &[&str], bound: usize) -> Vec<&'a Verdict> {
    let mut v: Vec<&Verdict> = verdicts
        .iter()
        .filter(|v| {
            !except.contains(&v.name.as_str()) && v.usable.is_ok() && v.blocked.len() < bound
        })
        .collect();
    v.sort_by(|a, b| {
        a.blocked.len().cmp(&b.blocked.len()).then(
            a.load
                .partial_cmp(&b.load)
                .unwrap_or(std::cmp::Ordering::Equal),
        )
    });
    v
}

/// Every usable account but those in `except` that serves at least one
/// pool, best first by today's rules (fewest blocked pools, lowest load,
/// config order), each with how many pools it blocks: the candidates the
/// fleet re-sorts by how many machines run on each.
pub fn ranked_targets(
    accounts: &mut [(String, AccountQuota)],
    except: &[&str],
    q: &QuotaConfig,
    pools: &[PoolModel],
    now_ms: u64,
) -> Vec<(String, usize)> {
    for (_, a) in accounts.iter_mut() {
        a.pass_resets(now_ms);
    }
    let v = verdicts(accounts, q, pools);
    ranked(&v, except, pools.len().max(1))
        .into_iter()
        .map(|v| (v.name.clone(), v.blocked.len()))
        .collect()
}

/// The best target for a swap asked for without one (SIGUSR1, `POST /swap`):
/// a usable account other than those in `except` that serves at least one
/// pool, the one serving most, then lowest load, then config order.
pub fn best_target(
    accounts: &mut [(String, AccountQuota)],
    except: &[&str],
    q: &QuotaConfig,
    pools: &[PoolModel],
    now_ms: u64,
) -> Option<String> {
    for (_, a) in accounts.iter_mut() {
        a.pass_resets(now_ms);
    }
    let v = verdicts(accounts, q, pools);
    best(&v, except, pools.len().max(1))
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

/// Parses the usage endpoint's answer (percent, RFC 3339 resets): the
/// session and weekly windows (the old keys, else the `limits[]` entries of
/// kind `session` and `weekly_all`) and every limit (`limits[]`, else what
/// the old keys say, `seven_day_opus`/`seven_day_sonnet` as model-scoped).
pub fn from_usage(body: &serde_json::Value) -> (Option<Window>, Option<Window>, Vec<Limit>) {
    let resets = |v: Option<&serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => {
            crate::sys::time::parse_rfc3339(s).map(crate::sys::time::unix_secs)
        }
        Some(v) => v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)),
        None => None,
    };
    let w = |k: &str| {
        let x = body.get(k).filter(|v| !v.is_null())?;
        Some(Window {
            utilization: x.get("utilization")?.as_f64()?,
            resets_at: resets(x.get("resets_at")),
        })
    };
    let mut limits: Vec<Limit> = body
        .get("limits")
        .and_then(|l| l.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|l| {
                    let kind = match l.get("kind")?.as_str()? {
                        "session" => LimitScope::Session,
                        "weekly_all" => LimitScope::WeeklyAll,
                        "weekly_scoped" => LimitScope::WeeklyScoped,
                        _ => return None,
                    };
                    let model = l
                        .pointer("/scope/model/display_name")
                        .and_then(|m| m.as_str())
                        .map(str::to_string);
                    if kind == LimitScope::WeeklyScoped && model.is_none() {
                        return None;
                    }
                    Some(Limit {
                        kind,
                        model,
                        utilization: l
                            .get("percent")
                            .or_else(|| l.get("utilization"))?
                            .as_f64()?,
                        resets_at: resets(l.get("resets_at")),
                        is_active: l.get("is_active").and_then(|v| v.as_bool()),
                        severity: l
                            .get("severity")
                            .and_then(|v| v.as_str())
                            .map(str::to_string),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let from_limits = |kind: LimitScope, limits: &[Limit]| {
        limits.iter().find(|l| l.kind == kind).map(|l| Window {
            utilization: l.utilization,
            resets_at: l.resets_at,
        })
    };
    let five = w("five_hour").or_else(|| from_limits(LimitScope::Session, &limits));
    let seven = w("seven_day").or_else(|| from_limits(LimitScope::WeeklyAll, &limits));
    if body.get("limits").and_then(|l| l.as_array()).is_none() {
        // An answer of the old shape: its model keys are scoped limits.
        for (key, model) in [("seven_day_opus", "Opus"), ("seven_day_sonnet", "Sonnet")] {
            if let Some(x) = w(key) {
                limits.push(Limit {
                    kind: LimitScope::WeeklyScoped,
                    model: Some(model.into()),
                    utilization: x.utilization,
                    resets_at: x.resets_at,
                    is_active: None,
                    severity: None,
                });
            }
        }
    }
    (five, seven, limits)
}

/// `opus` → `Opus`.
fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
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
            limits_poll_interval: Duration::from_secs(900),
            five_hour_threshold: 90.0,
            seven_day_threshold: 95.0,
            weekly_scoped_threshold: 95.0,
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
    fn a_shared_reading_is_kept_part_by_part_where_it_is_newer() {
        let w = |u: f64| Window {
            utilization: u,
            resets_at: Some(9),
        };
        let mut q = AccountQuota {
            needs_person: Some("login".into()),
            ..AccountQuota::default()
        };
        // This machine's status line at t=100: the windows.
        q.read(Some(w(10.0)), Some(w(20.0)), Source::Statusline, 100);
        // Another machine's poll at t=90: older windows, but limits we lack.
        let scoped = Limit {
            kind: LimitScope::WeeklyScoped,
            model: Some("Opus".into()),
            utilization: 55.0,
            resets_at: None,
            is_active: None,
            severity: None,
        };
        assert!(q.read_shared(
            Some(w(99.0)),
            Some(w(99.0)),
            Some(vec![scoped.clone()]),
            Source::UsageEndpoint,
            "m2",
            90
        ));
        assert_eq!(q.five_hour, Some(w(10.0)), "older windows are not taken");
        assert_eq!(q.limits, vec![scoped]);
        assert_eq!(
            (q.source, q.observed_at_ms, q.machine.as_deref()),
            (Some(Source::Statusline), Some(100), None)
        );
        // Nothing newer at all: nothing kept.
        assert!(!q.read_shared(Some(w(1.0)), None, None, Source::Statusline, "m2", 95));
        // Newer windows: kept as m2's; its login says nothing of ours.
        assert!(q.read_shared(Some(w(30.0)), None, None, Source::Statusline, "m2", 150));
        assert_eq!(q.five_hour, Some(w(30.0)));
        assert_eq!(q.seven_day, Some(w(20.0)));
        assert_eq!(
            (q.observed_at_ms, q.machine.as_deref()),
            (Some(150), Some("m2"))
        );
        assert_eq!(q.needs_person.as_deref(), Some("login"));
    }

    #[test]
    fn stays_below_threshold_and_swaps_to_lowest_load_at_it() {
        let mut a = vec![
            acct("a", 50.0, 10.0),
            acct("b", 30.0, 40.0),
            acct("c", 20.0, 35.0),
        ];
        assert_eq!(decide(&mut a, "a", &q(), &[], None, 1000), Decision::Stay);
        set(&mut a, "a", 90.0, 2000);
        // b's load is 40, c's is 35: c wins.
        assert!(
            matches!(decide(&mut a, "a", &q(), &[], None, 2000), Decision::Swap { ref to, urgent: false, .. } if to == "c")
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
        match decide(&mut a, "a", &q(), &[], Some(4_000), 5_000) {
            Decision::Swap { to, reason, urgent } => {
                assert_eq!(to, "b");
                assert!(urgent);
                assert!(reason.contains("every request is refused"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        set(&mut a, "a", 99.0, 6_000);
        assert!(matches!(
            decide(&mut a, "a", &q(), &[], Some(4_000), 6_000),
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
            matches!(decide(&mut a, "a", &q(), &[], None, 0), Decision::Swap { ref to, .. } if to == "b")
        );
    }

    #[test]
    fn flapping_readings_do_not_ping_pong() {
        let mut a = vec![acct("a", 91.0, 0.0), acct("b", 10.0, 0.0)];
        let Decision::Swap { to, .. } = decide(&mut a, "a", &q(), &[], None, 1_000) else {
            panic!()
        };
        assert_eq!(to, "b");
        // b rises to the threshold soon after: the cooldown holds.
        set(&mut a, "b", 92.0, 30_000);
        set(&mut a, "a", 85.0, 30_000);
        assert_eq!(
            decide(&mut a, "b", &q(), &[], Some(1_000), 30_000),
            Decision::Stay
        );
        // After the cooldown, a at 85 % is still not usable: it was over, and
        // is usable again only below 80 %.
        let d = decide(&mut a, "b", &q(), &[], Some(1_000), 200_000);
        assert!(matches!(d, Decision::NoAccount { .. }), "{d:?}");
        // a flaps 89 → 91 → 79: usable only once under 80.
        set(&mut a, "a", 79.0, 210_000);
        assert!(
            matches!(decide(&mut a, "b", &q(), &[], Some(1_000), 210_000), Decision::Swap { ref to, .. } if to == "a")
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
            matches!(decide(&mut a, "a", &q(), &[], None, 0), Decision::Swap { ref to, .. } if to == "b")
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
        let d = decide(&mut a, "a", &q(), &[], Some(4_000), 5_000);
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
        let d = decide(&mut a, "b", &q(), &[], Some(5_000), 6_000);
        assert_eq!(
            d,
            Decision::NoAccount {
                reason: d_reason(&d),
                earliest_reset: Some(10_000)
            }
        );
        // The reset passes: a is usable again and b swaps to it.
        let d = decide(&mut a, "b", &q(), &[], Some(5_000), 10_001_000);
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
            matches!(decide(&mut a, "a", &q(), &[], None, 0), Decision::Swap { ref to, .. } if to == "c")
        );
        a[2].1.refuse(
            LimitKind::Billing,
            "credit balance is too low",
            Source::PaneText,
            0,
        );
        assert!(matches!(
            decide(&mut a, "a", &q(), &[], None, 0),
            Decision::NoAccount { .. }
        ));
    }

    #[test]
    fn weekly_threshold_counts_too() {
        let mut a = vec![acct("a", 10.0, 96.0), acct("b", 10.0, 10.0)];
        assert!(
            matches!(decide(&mut a, "a", &q(), &[], None, 0), Decision::Swap { ref to, .. } if to == "b")
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
        let (f, s, _) = from_usage(&u);
        assert_eq!(
            f,
            Some(Window {
                utilization: 24.0,
                resets_at: Some(1_767_383_999)
            })
        );
        assert_eq!(s, None);
    }

    /// The answer of the usage endpoint with a `limits` array (claude-code-facts.md §10).
    fn limits_answer(opus: f64) -> serde_json::Value {
        serde_json::json!({
            "five_hour": {"utilization": 12.0, "resets_at": "2026-01-02T19:59:59+00:00"},
            "seven_day": {"utilization": 30.0, "resets_at": "2026-01-08T00:00:00+00:00"},
            "seven_day_opus": null,
            "limits": [
                {"kind": "session", "percent": 12.0, "resets_at": "2026-01-02T19:59:59+00:00", "is_active": false, "severity": "normal"},
                {"kind": "weekly_all", "percent": 30.0, "resets_at": "2026-01-08T00:00:00+00:00", "is_active": false, "severity": "normal"},
                {"kind": "weekly_scoped", "percent": opus, "resets_at": "2026-01-07T00:00:00+00:00",
                 "is_active": opus >= 100.0, "severity": if opus >= 100.0 { "critical" } else { "normal" },
                 "scope": {"model": {"display_name": "Opus"}}},
                {"kind": "something_new", "percent": 1.0}
            ]
        })
    }

    #[test]
    fn parses_every_limit_of_the_new_old_and_limits_only_shapes() {
        let (f, s, l) = from_usage(&limits_answer(100.0));
        assert_eq!(f.unwrap().utilization, 12.0);
        assert_eq!(s.unwrap().utilization, 30.0);
        // An unknown kind is skipped, not an error.
        assert_eq!(l.len(), 3, "{l:?}");
        let scoped = &l[2];
        assert_eq!(scoped.kind, LimitScope::WeeklyScoped);
        assert_eq!(scoped.model.as_deref(), Some("Opus"));
        assert_eq!(scoped.utilization, 100.0);
        assert_eq!(scoped.is_active, Some(true));
        assert_eq!(scoped.severity.as_deref(), Some("critical"));
        assert_eq!(scoped.resets_at, Some(1_767_744_000));

        // Only `limits`: the windows come from its session and weekly_all entries.
        let mut only = limits_answer(50.0);
        let o = only.as_object_mut().unwrap();
        o.remove("five_hour");
        o.remove("seven_day");
        let (f, s, l) = from_usage(&only);
        assert_eq!(f.unwrap().utilization, 12.0);
        assert_eq!(s.unwrap().resets_at, Some(1_767_830_400));
        assert_eq!(l.len(), 3);

        // The old shape: its model keys are scoped limits.
        let old = serde_json::json!({
            "five_hour": {"utilization": 5.0, "resets_at": null},
            "seven_day": {"utilization": 6.0, "resets_at": null},
            "seven_day_opus": null,
            "seven_day_sonnet": {"utilization": 97.0, "resets_at": "2026-01-07T00:00:00+00:00"}
        });
        let (f, _, l) = from_usage(&old);
        assert_eq!(f.unwrap().utilization, 5.0);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].model.as_deref(), Some("Sonnet"));
        assert_eq!(l[0].utilization, 97.0);
    }

    #[test]
    fn a_scoped_limit_covers_the_pools_of_its_model_only() {
        assert_eq!(family("Opus 4.5"), "opus");
        assert_eq!(family("claude-sonnet-4-5"), "sonnet");
        assert!(covers("Opus", Some("opus")));
        assert!(covers("Opus", Some("claude-opus-4-5-20251101")));
        assert!(covers("Opus 4", Some("opusplan")));
        assert!(!covers("Opus", Some("sonnet")));
        assert!(!covers("Sonnet", Some("claude-opus-4-5")));
        // No model configured: Claude Code's default may be any.
        assert!(covers("Sonnet", None));
    }

    fn pools() -> Vec<PoolModel> {
        vec![
            PoolModel {
                pool: "deep".into(),
                model: Some("opus".into()),
            },
            PoolModel {
                pool: "fast".into(),
                model: Some("sonnet".into()),
            },
        ]
    }

    fn with_opus(name: &str, five: f64, opus: f64) -> (String, AccountQuota) {
        let (n, mut a) = acct(name, five, 10.0);
        let (f, s, l) = from_usage(&limits_answer(opus));
        a.read_limits(
            f.map(|w| Window {
                utilization: five,
                ..w
            }),
            s,
            Some(l),
            Source::UsageEndpoint,
            0,
        );
        (n, a)
    }

    /// Must-show 4 at the decision: an account whose Opus weekly limit is
    /// spent while its other limits are low is left for one that serves
    /// every pool; when none does, it stays, the Opus pool is held and the
    /// Sonnet pool goes on with it.
    #[test]
    fn a_spent_model_limit_moves_or_holds_only_the_pools_of_that_model() {
        let mut a = vec![with_opus("a", 12.0, 100.0), with_opus("b", 20.0, 10.0)];
        match decide(&mut a, "a", &q(), &pools(), Some(999), 1000) {
            Decision::Swap { to, reason, urgent } => {
                assert_eq!(to, "b");
                // Full: its requests are refused now, so no cooldown, no drain.
                assert!(urgent);
                assert!(reason.contains("Opus weekly limit at 100%"), "{reason}");
                assert!(reason.contains("pool deep"), "{reason}");
                assert!(!reason.contains("pool fast"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // b over its 5-hour threshold: nobody serves both pools; a stays.
        let mut a = vec![with_opus("a", 12.0, 100.0), with_opus("b", 95.0, 10.0)];
        assert_eq!(
            decide(&mut a, "a", &q(), &pools(), None, 1000),
            Decision::Stay
        );
        let held = held_pools(&a, "a", &q(), &pools());
        assert_eq!(held.keys().collect::<Vec<_>>(), vec!["deep"]);
        assert!(
            held["deep"].starts_with("a: Opus weekly limit at 100%"),
            "{held:?}"
        );
        // A machine whose pools all run Sonnet keeps using a.
        let sonnet_only = &pools()[1..];
        let mut a = vec![with_opus("a", 12.0, 100.0), with_opus("b", 20.0, 10.0)];
        assert_eq!(
            decide(&mut a, "a", &q(), sonnet_only, None, 1000),
            Decision::Stay
        );
        assert!(held_pools(&a, "a", &q(), sonnet_only).is_empty());
        // As a target: with the Opus pool around, b (serving both) wins over
        // a less loaded c whose Opus week is spent.
        let mut a = vec![
            acct("x", 95.0, 0.0),
            with_opus("b", 40.0, 10.0),
            with_opus("c", 5.0, 100.0),
        ];
        assert!(matches!(decide(&mut a, "x", &q(), &pools(), None, 1000),
            Decision::Swap { ref to, .. } if to == "b"));
        // With no account serving both, the one serving more is the target.
        let mut a = vec![acct("x", 95.0, 0.0), with_opus("c", 5.0, 100.0)];
        assert!(matches!(decide(&mut a, "x", &q(), &pools(), None, 1000),
            Decision::Swap { ref to, .. } if to == "c"));
        // An Opus-only machine: an account whose Opus week is spent serves nothing.
        let mut a = vec![acct("x", 95.0, 0.0), with_opus("c", 5.0, 100.0)];
        assert!(matches!(
            decide(&mut a, "x", &q(), &pools()[..1], None, 1000),
            Decision::NoAccount { .. }
        ));
    }

    #[test]
    fn a_scoped_limit_has_its_threshold_and_hysteresis_and_a_cooldown_when_not_full() {
        let mut a = vec![with_opus("a", 12.0, 96.0), with_opus("b", 20.0, 10.0)];
        // Over 95 but not full: a threshold swap, held by the cooldown.
        assert_eq!(
            decide(&mut a, "a", &q(), &pools(), Some(999), 1000),
            Decision::Stay
        );
        assert!(matches!(
            decide(&mut a, "a", &q(), &pools(), None, 1000),
            Decision::Swap { urgent: false, .. }
        ));
        // 90 is below the threshold but not below threshold - hysteresis: still over.
        let (f, s, l) = from_usage(&limits_answer(90.0));
        a[0].1
            .read_limits(f, s, Some(l), Source::UsageEndpoint, 2000);
        assert!(a[0].1.blocked_for(&q(), Some("opus")).is_some());
        let (f, s, l) = from_usage(&limits_answer(80.0));
        a[0].1
            .read_limits(f, s, Some(l), Source::UsageEndpoint, 3000);
        assert_eq!(
            decide(&mut a, "a", &q(), &pools(), None, 3000),
            Decision::Stay
        );
        assert!(a[0].1.blocked_for(&q(), Some("opus")).is_none());
    }

    #[test]
    fn a_refusal_naming_a_model_binds_that_model_only() {
        let mut a = vec![acct("a", 12.0, 10.0), acct("b", 95.0, 0.0)];
        a[0].1.refuse_scoped("Opus", Source::StopFailure, 500);
        assert!(a[0].1.refused.is_none());
        assert_eq!(
            decide(&mut a, "a", &q(), &pools(), None, 1000),
            Decision::Stay
        );
        assert_eq!(
            held_pools(&a, "a", &q(), &pools())
                .keys()
                .collect::<Vec<_>>(),
            vec!["deep"]
        );
        let shown = a[0].1.all_limits();
        assert_eq!(
            shown.iter().map(|l| l.kind).collect::<Vec<_>>(),
            vec![
                LimitScope::Session,
                LimitScope::WeeklyAll,
                LimitScope::WeeklyScoped
            ]
        );
        // Its reset passes: it reads 0 and binds nothing.
        a[0].1.limits[0].resets_at = Some(2);
        assert_eq!(
            decide(&mut a, "a", &q(), &pools(), None, 3000),
            Decision::Stay
        );
        assert!(held_pools(&a, "a", &q(), &pools()).is_empty());
    }
}
