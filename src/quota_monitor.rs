//! The quota monitor: polls the usage endpoint for accounts that have no
//! fresh passive reading, at most every `quota.poll_interval` per account,
//! honouring 429 and `Retry-After` with back-off. It never refreshes a
//! token: it reads the credentials file fresh each time, and a 401/403 means
//! the account needs a login (refresh tokens are single-use and belong to
//! Claude Code). Readings go to the switcher, which owns them.

use std::collections::HashMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, tick, Receiver, Sender};

use crate::account::Credentials;
use crate::claude_facts as facts;
use crate::config::{AccountConfig, Config};
use crate::quota::{self, Source};
use crate::switcher::{Request, SharedView};

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
/// Longest back-off after repeated failures, and the longest `Retry-After`
/// honoured (a larger one, up to u64::MAX seconds, is clamped to it).
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// `Retry-After` when the header is absent or not a number of seconds.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(300);

/// One poll's outcome.
#[derive(Debug)]
pub enum Poll {
    Reading(Option<quota::Window>, Option<quota::Window>),
    /// 429: wait this long.
    Throttled(Duration),
    /// 401/403: the account needs a person.
    NeedsLogin(String),
    /// Anything else: try again later.
    Failed(String),
}

impl QuotaMonitor {
    pub fn start(config: &Config, view: SharedView, switcher: Sender<Request>) -> QuotaMonitor {
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (alive, gone) = crossbeam_channel::bounded::<()>(0);
        let config = config.clone();
        let thread =
            std::thread::Builder::new()
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
                    let mut next: HashMap<String, Instant> = HashMap::new();
                    let mut failures: HashMap<String, u32> = HashMap::new();
                    loop {
                        select! {
                            recv(ticker) -> _ => {}
                            recv(stop_rx) -> _ => return,
                        }
                        let now = Instant::now();
                        let now_ms = quota::now_ms(SystemTime::now());
                        let fresh_ms = quota::fresh_for(&config.quota).as_millis() as u64;
                        for account in &config.accounts {
                            if next.get(&account.name).is_some_and(|t| *t > now) {
                                continue;
                            }
                            // A fresh passive reading makes polling pointless.
                            let last = view
                                .read()
                                .accounts
                                .iter()
                                .find(|a| a.name == account.name)
                                .and_then(|a| {
                                    (a.quota.source == Some(Source::Statusline))
                                        .then_some(a.quota.observed_at_ms)
                                        .flatten()
                                });
                            if last.is_some_and(|t| now_ms.saturating_sub(t) < fresh_ms) {
                                next.insert(
                                    account.name.clone(),
                                    later(
                                        now,
                                        Duration::from_millis(fresh_ms.saturating_sub(
                                            now_ms.saturating_sub(last.unwrap_or(0)),
                                        )),
                                    ),
                                );
                                continue;
                            }
                            let wait = match poll(&config.quota.usage_url, account) {
                                Poll::Reading(five_hour, seven_day) => {
                                    failures.remove(&account.name);
                                    let _ = switcher.send(Request::Reading {
                                        home: account.home.clone(),
                                        five_hour,
                                        seven_day,
                                        source: Source::UsageEndpoint,
                                    });
                                    config.quota.poll_interval
                                }
                                Poll::Throttled(d) => {
                                    log::warn!(
                                        "usage endpoint throttles account {}: waiting {}s",
                                        account.name,
                                        d.as_secs()
                                    );
                                    d.max(config.quota.poll_interval).min(MAX_BACKOFF)
                                }
                                Poll::NeedsLogin(why) => {
                                    let _ = switcher.send(Request::NeedsLogin {
                                        account: account.name.clone(),
                                        why,
                                    });
                                    config.quota.poll_interval
                                }
                                Poll::Failed(why) => {
                                    let n = failures.entry(account.name.clone()).or_insert(0);
                                    *n = n.saturating_add(1);
                                    let d = failure_backoff(config.quota.poll_interval, *n);
                                    log::warn!(
                                        "usage endpoint for account {}: {why}; next try in {}s",
                                        account.name,
                                        d.as_secs()
                                    );
                                    d
                                }
                            };
                            next.insert(account.name.clone(), later(now, wait));
                        }
                    }
                })
                .expect("spawn quota-monitor thread");
        QuotaMonitor { stop, gone, thread }
    }
}

/// `now + wait`, never overflowing: an `Instant` that far out is the same
/// as [`MAX_BACKOFF`] for a poll schedule.
fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait.min(MAX_BACKOFF))
        .unwrap_or(now + Duration::from_secs(1))
}

/// The pause after `n` failures in a row: the poll interval doubled per
/// failure (at most 2⁶ times), at most [`MAX_BACKOFF`]; never overflows.
pub fn failure_backoff(poll_interval: Duration, n: u32) -> Duration {
    poll_interval
        .checked_mul(2u32.saturating_pow(n.min(6)))
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF)
}

/// A 429's `Retry-After` in seconds, clamped to [`MAX_BACKOFF`]; absent, a
/// date or garbage means [`DEFAULT_RETRY_AFTER`].
pub fn retry_after(header: Option<&str>) -> Duration {
    match header.map(str::trim) {
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v
            .parse::<u64>()
            .map(|s| Duration::from_secs(s.min(MAX_BACKOFF.as_secs())))
            // More digits than a u64 holds: as large as it gets.
            .unwrap_or(MAX_BACKOFF),
        _ => DEFAULT_RETRY_AFTER,
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
                let (f, s) = quota::from_usage(&body);
                Poll::Reading(f, s)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_retry_after_is_clamped_not_overflowed() {
        assert_eq!(retry_after(Some("18446744073709551615")), MAX_BACKOFF);
        assert_eq!(retry_after(Some("99999999999999999999999")), MAX_BACKOFF);
        assert_eq!(retry_after(Some(" 120 ")), Duration::from_secs(120));
        assert_eq!(retry_after(Some("-5")), DEFAULT_RETRY_AFTER);
        assert_eq!(
            retry_after(Some("Wed, 21 Oct 2026 07:28:00 GMT")),
            DEFAULT_RETRY_AFTER
        );
        assert_eq!(retry_after(None), DEFAULT_RETRY_AFTER);
        let now = Instant::now();
        assert!(later(now, Duration::MAX) <= now + MAX_BACKOFF);
    }

    #[test]
    fn failure_backoff_never_overflows() {
        assert_eq!(
            failure_backoff(Duration::from_secs(60), 1),
            Duration::from_secs(120)
        );
        assert_eq!(
            failure_backoff(Duration::from_secs(60), u32::MAX),
            MAX_BACKOFF
        );
        assert_eq!(failure_backoff(Duration::MAX, 3), MAX_BACKOFF);
    }
}
