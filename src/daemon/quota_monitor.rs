//! The quota monitor: polls the usage endpoint for accounts that have no
//! fresh passive reading, at most every `quota.poll_interval` per account
//! (and those with one every `quota.limits_poll_interval`, for the
//! model-scoped limits the status line does not carry),
//! honouring 429 and `Retry-After` with back-off. It never refreshes a
//! token: it reads the credentials file fresh each time, and a 401/403 means
//! the account needs a login (refresh tokens are single-use and belong to
//! Claude Code). Readings go to the switcher, which owns them.
//!
//! This is the thin shell: each tick it asks the pure schedule
//! (`poll_schedule`) which account is due, polls it, and tells the schedule
//! what the poll answered.

use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, tick, Receiver, Sender};

use crate::claude::account::Credentials;
use crate::claude::facts;
use crate::config::{AccountConfig, Config};
use crate::daemon::switcher::{Command, SharedView};
pub use crate::decide::poll_schedule::{failure_backoff, retry_after, MAX_BACKOFF};
use crate::decide::poll_schedule::{Due, LastReading, Now, Outcome, Schedule};
use crate::decide::quota::{self, Source};
use crate::store::fleet::PollLease;

pub struct QuotaMonitor {
    /// Dropping it ends the thread.
    pub stop: Sender<()>,
    /// Disconnects when the thread ends, whatever the cause (a panic
    /// included): the main loop selects on it and treats it as a dead role.
    pub gone: Receiver<()>,
    pub thread: JoinHandle<()>,
}

/// How often the monitor looks at which accounts are due.
const LOOK: Duration = Duration::from_secs(1);

/// One poll's outcome.
#[derive(Debug)]
pub enum Poll {
    Reading(
        Option<quota::Window>,
        Option<quota::Window>,
        Vec<quota::Limit>,
    ),
    /// 429: wait this long.
    Throttled(Duration),
    /// 401/403: the account needs a person.
    NeedsLogin(String),
    /// Anything else: try again later.
    Failed(String),
}

impl QuotaMonitor {
    pub fn start(
        config: &Config,
        view: SharedView,
        switcher: Sender<Command>,
        fleet: crate::daemon::fleet::FleetHandle,
    ) -> QuotaMonitor {
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (alive, gone) = crossbeam_channel::bounded::<()>(0);
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name("quota-monitor".into())
            .spawn(move || {
                // Held for the thread's life; dropped on return or unwind.
                let _alive = alive;
                if std::env::var("CLAUDE_FAILOVER_FAILPOINT")
                    .is_ok_and(|v| v.split(',').any(|p| p.trim() == "quota-monitor-panic"))
                {
                    panic!("fail point quota-monitor-panic");
                }
                let ticker = tick(LOOK);
                let mut schedule = Schedule::new(
                    config.quota.poll_interval,
                    quota::fresh_for(&config.quota),
                    config.quota.limits_poll_interval,
                );
                loop {
                    select! {
                        recv(ticker) -> _ => {}
                        recv(stop_rx) -> _ => return,
                    }
                    let now = Now {
                        at: Instant::now(),
                        wall_ms: quota::now_ms(SystemTime::now()),
                    };
                    // One message per round: the switcher weighs every
                    // account read in it together (a target read a moment
                    // after the active one must not look unread and free).
                    let mut readings = Vec::new();
                    for account in &config.accounts {
                        let last = view
                            .read()
                            .accounts
                            .iter()
                            .find(|a| a.name == account.name)
                            .map(|a| LastReading {
                                source: a.quota.source,
                                observed_at_ms: a.quota.observed_at_ms,
                            });
                        if let Due::WaitUntil(_) = schedule.due(&account.name, now, last) {
                            continue;
                        }
                        // One machine of the fleet polls each account per
                        // interval and shares the answer; Redis away: alone.
                        // A machine that cannot send the request (no login,
                        // an expired token) takes no lease from one that can.
                        let lease = config.quota.poll_interval + crate::store::fleet::POLL_SLACK;
                        let can_send = Credentials::read(&account.home)
                            .is_ok_and(|c| !c.expired(SystemTime::now()));
                        if let Some(PollLease::Held { by, for_ms }) =
                            can_send.then(|| fleet.poll_lease(&account.name, lease)).flatten()
                        {
                            log::debug!("usage endpoint for account {}: machine {by} polls it this interval", account.name);
                            schedule.after(&account.name, Outcome::PolledElsewhere(Duration::from_millis(for_ms)), now.at);
                            continue;
                        }
                        let (outcome, failed) = match poll(&config.quota.usage_url, account) {
                            Poll::Reading(five_hour, seven_day, limits) => {
                                readings.push(Command::Reading {
                                    home: account.home.clone(),
                                    five_hour,
                                    seven_day,
                                    limits: Some(limits),
                                    source: Source::UsageEndpoint,
                                });
                                (Outcome::Reading, None)
                            }
                            Poll::Throttled(d) => {
                                log::warn!(
                                    "usage endpoint throttles account {}: waiting {}s",
                                    account.name,
                                    d.as_secs()
                                );
                                (Outcome::Throttled(d), None)
                            }
                            Poll::NeedsLogin(why) => {
                                let _ = switcher.send(Command::NeedsLogin {
                                    account: account.name.clone(),
                                    why,
                                });
                                (Outcome::NeedsLogin, None)
                            }
                            Poll::Failed(why) => (Outcome::Failed, Some(why)),
                        };
                        // Due again an interval after this poll ended, not after
                        // the round began: two polls of one account are never
                        // closer than the interval (on every machine of a fleet).
                        let wait = schedule.after(&account.name, outcome, Instant::now());
                        if let Some(why) = failed {
                            log::warn!(
                                "usage endpoint for account {}: {why}; next try in {}s",
                                account.name,
                                wait.as_secs()
                            );
                        }
                    }
                    if !readings.is_empty() {
                        let _ = switcher.send(Command::Batch(readings));
                    }
                }
            })
            .expect("spawn quota-monitor thread");
        QuotaMonitor { stop, gone, thread }
    }
}

/// One `GET` of the usage endpoint for `account`, with its token read fresh.
pub fn poll(url: &str, account: &AccountConfig) -> Poll {
    let creds = match Credentials::read(&account.home) {
        Ok(c) => c,
        Err(e) => return Poll::NeedsLogin(e.to_string()),
    };
    if creds.expired(SystemTime::now()) {
        if creds.has_refresh_token {
            // A standby account's access token lapses after hours unused;
            // Claude Code renews it at the next launch. Not a login problem,
            // and never ours to refresh: just no reading for now.
            return Poll::Failed(
                "its access token has expired (Claude Code renews it at the next launch); no reading until then".into(),
            );
        }
        return Poll::NeedsLogin(
            "its access token has expired and there is no refresh token".into(),
        );
    }
    let answer = ureq::get(url)
        .timeout(Duration::from_secs(15))
        .set("Authorization", &format!("Bearer {}", creds.access_token))
        .set(facts::USAGE_BETA_HEADER.0, facts::USAGE_BETA_HEADER.1)
        .call();
    match answer {
        Ok(r) => match r.into_json::<serde_json::Value>() {
            Ok(body) => {
                let (f, s, l) = quota::from_usage(&body);
                Poll::Reading(f, s, l)
            }
            Err(e) => Poll::Failed(format!("unreadable answer: {e}")),
        },
        Err(ureq::Error::Status(429, r)) => Poll::Throttled(retry_after(r.header("retry-after"))),
        Err(ureq::Error::Status(code @ (401 | 403), r)) => {
            let body = r.into_string().unwrap_or_default();
            Poll::NeedsLogin(format!(
                "usage endpoint answered {code}: {}",
                body.chars().take(200).collect::<String>()
            ))
        }
        Err(ureq::Error::Status(code, _)) => Poll::Failed(format!("HTTP {code}")),
        Err(e) => Poll::Failed(e.to_string()),
    }
}
