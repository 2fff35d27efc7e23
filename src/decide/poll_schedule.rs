//! Pure: the usage-endpoint poll schedule, a function of (state, what the
//! last poll answered, the last passive reading, now).
//!
//! It decides which account is due for a `GET` of the usage endpoint: not
//! before its next due time; not while a passive status-line reading is
//! fresher than `fresh_for` (polling would only cost quota and risk a 429);
//! after a 429 not before its `Retry-After` (at least the poll interval, at
//! most [`MAX_BACKOFF`]); after failures in a row, the poll interval doubled
//! per failure. A passive reading carries the session and weekly windows
//! only, not the model-scoped weekly limits: an account with fresh passive
//! readings is still polled every `limits_every` (`quota.limits_poll_interval`).
//! It never touches the network, the disk or the clock: the
//! caller (`quota_monitor`) passes `now` in and runs the polls, so the
//! tests below step a clock by hand.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::decide::quota::Source;

/// Longest back-off after repeated failures, and the longest `Retry-After`
/// honoured (a larger one, up to u64::MAX seconds, is clamped to it).
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// `Retry-After` when the header is absent or not a number of seconds.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The two clocks a decision needs: the monotonic one for due times, the
/// wall clock (ms since the epoch) for the age of a passive reading, which
/// the switcher stamps in wall time.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub wall_ms: u64,
}

/// The newest reading the switcher holds for an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastReading {
    pub source: Option<Source>,
    pub observed_at_ms: Option<u64>,
}

/// Whether to poll an account now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Poll,
    /// Not before this.
    WaitUntil(Instant),
}

/// What one poll answered, as far as the schedule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A usage reading.
    Reading,
    /// 429, with the `Retry-After` it asked for (see [`retry_after`]).
    Throttled(Duration),
    /// 401/403 or unusable credentials: the account needs a login.
    NeedsLogin,
    /// Anything else: try again later, backing off.
    Failed,
    /// Another machine of the fleet holds this account's poll lease for
    /// this long: it polls and shares the answer; look again when it lapses.
    PolledElsewhere(Duration),
}

/// One account's place in the schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    /// Not polled before this; `None`: due now.
    next: Option<Instant>,
    /// Failed polls in a row.
    failures: u32,
    /// The last poll that gave a reading.
    read_at: Option<Instant>,
}

/// The schedule of every account, by name.
#[derive(Debug, Clone)]
pub struct Schedule {
    poll_interval: Duration,
    /// How long a passive reading makes polling pointless.
    fresh_for: Duration,
    /// How long a passive reading may stand in for the endpoint's limits.
    limits_every: Duration,
    slots: HashMap<String, Slot>,
}

impl Schedule {
    pub fn new(poll_interval: Duration, fresh_for: Duration, limits_every: Duration) -> Schedule {
        Schedule {
            poll_interval,
            fresh_for,
            limits_every,
            slots: HashMap::new(),
        }
    }

    /// Whether `account` is due at `now`, given the newest reading the
    /// switcher holds for it. Only a status-line reading counts as passive:
    /// a usage-endpoint reading is our own poll, already scheduled. A fresh
    /// passive reading postpones the poll until it goes stale, or until the
    /// endpoint's limits are `limits_every` old (at once when it never answered).
    pub fn due(&self, account: &str, now: Now, last: Option<LastReading>) -> Due {
        let read_at = self.slots.get(account).and_then(|s| s.read_at);
        if let Some(next) = self.slots.get(account).and_then(|s| s.next) {
            if next > now.at {
                return Due::WaitUntil(next);
            }
        }
        let passive = last
            .filter(|r| r.source == Some(Source::Statusline))
            .and_then(|r| r.observed_at_ms);
        let fresh_ms = u64::try_from(self.fresh_for.as_millis()).unwrap_or(u64::MAX);
        if let Some(at) = passive {
            let age = now.wall_ms.saturating_sub(at);
            let limits_due = read_at.map(|t| later(t, self.limits_every));
            if age < fresh_ms && limits_due.is_some_and(|t| t > now.at) {
                let stale = later(now.at, Duration::from_millis(fresh_ms.saturating_sub(age)));
                return Due::WaitUntil(limits_due.map_or(stale, |t| t.min(stale)));
            }
        }
        Due::Poll
    }

    /// Records what a poll of `account` at `now` answered; returns how long
    /// until the account is due again.
    pub fn after(&mut self, account: &str, outcome: Outcome, now: Instant) -> Duration {
        let slot = self.slots.entry(account.to_string()).or_default();
        let wait = match outcome {
            Outcome::Reading => {
                slot.failures = 0;
                slot.read_at = Some(now);
                self.poll_interval
            }
            Outcome::Throttled(d) => d.max(self.poll_interval).min(MAX_BACKOFF),
            Outcome::NeedsLogin => self.poll_interval,
            Outcome::PolledElsewhere(d) => d.max(Duration::from_millis(100)),
            Outcome::Failed => {
                slot.failures = slot.failures.saturating_add(1);
                failure_backoff(self.poll_interval, slot.failures)
            }
        };
        slot.next = Some(later(now, wait));
        wait
    }

    /// Failed polls in a row for `account`.
    pub fn failures(&self, account: &str) -> u32 {
        self.slots.get(account).map_or(0, |s| s.failures)
    }
}

/// `now + wait`, never overflowing: an `Instant` that far out is the same
/// as [`MAX_BACKOFF`] for a poll schedule.
pub fn later(now: Instant, wait: Duration) -> Instant {
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    /// A hand-stepped clock: both clocks advance together.
    struct Clock {
        base: Instant,
        wall_base_ms: u64,
        elapsed: Duration,
    }

    impl Clock {
        fn new() -> Clock {
            Clock {
                base: Instant::now(),
                wall_base_ms: 1_800_000_000_000,
                elapsed: Duration::ZERO,
            }
        }
        fn now(&self) -> Now {
            Now {
                at: self.base + self.elapsed,
                wall_ms: self.wall_base_ms + self.elapsed.as_millis() as u64,
            }
        }
        fn step(&mut self, d: Duration) {
            self.elapsed += d;
        }
        fn wall_ms(&self) -> u64 {
            self.now().wall_ms
        }
    }

    fn schedule() -> Schedule {
        Schedule::new(MIN, MIN, Duration::MAX)
    }

    fn statusline_at(ms: u64) -> Option<LastReading> {
        Some(LastReading {
            source: Some(Source::Statusline),
            observed_at_ms: Some(ms),
        })
    }

    #[test]
    fn an_account_never_polled_and_without_readings_is_due_at_once() {
        let c = Clock::new();
        assert_eq!(schedule().due("a", c.now(), None), Due::Poll);
    }

    #[test]
    fn a_fresh_passive_reading_postpones_the_poll_until_it_goes_stale() {
        let mut c = Clock::new();
        let mut s = schedule();
        // Polled once (the limits are known), and due again by the schedule.
        s.after("a", Outcome::Reading, c.now().at);
        c.step(MIN);
        let reading = statusline_at(c.wall_ms());
        c.step(Duration::from_secs(20));
        assert_eq!(
            s.due("a", c.now(), reading),
            Due::WaitUntil(c.now().at + Duration::from_secs(40))
        );
        c.step(Duration::from_secs(39));
        assert!(matches!(s.due("a", c.now(), reading), Due::WaitUntil(_)));
        c.step(Duration::from_secs(1));
        assert_eq!(s.due("a", c.now(), reading), Due::Poll);
    }

    #[test]
    fn a_usage_endpoint_reading_does_not_count_as_passive() {
        let c = Clock::new();
        let ours = Some(LastReading {
            source: Some(Source::UsageEndpoint),
            observed_at_ms: Some(c.wall_ms()),
        });
        assert_eq!(schedule().due("a", c.now(), ours), Due::Poll);
        let undated = Some(LastReading {
            source: Some(Source::Statusline),
            observed_at_ms: None,
        });
        assert_eq!(schedule().due("a", c.now(), undated), Due::Poll);
    }

    #[test]
    fn a_passive_reading_from_the_future_postpones_at_most_fresh_for() {
        let mut c = Clock::new();
        let mut s = schedule();
        s.after("a", Outcome::Reading, c.now().at);
        c.step(MIN);
        let ahead = statusline_at(c.wall_ms() + 3_600_000);
        assert_eq!(s.due("a", c.now(), ahead), Due::WaitUntil(c.now().at + MIN));
    }

    /// The status line carries no model-scoped limit: an account the endpoint
    /// never answered for is polled at once whatever its passive readings,
    /// and one with fresh passive readings again after `limits_every`.
    #[test]
    fn passive_readings_stand_in_for_the_limits_only_until_limits_every() {
        let mut c = Clock::new();
        let mut s = Schedule::new(MIN, MIN * 10, MIN * 3);
        let fresh = |c: &Clock| statusline_at(c.wall_ms());
        assert_eq!(s.due("a", c.now(), fresh(&c)), Due::Poll);
        s.after("a", Outcome::Reading, c.now().at);
        c.step(MIN);
        assert_eq!(
            s.due("a", c.now(), fresh(&c)),
            Due::WaitUntil(c.now().at + MIN * 2)
        );
        c.step(MIN * 2);
        assert_eq!(s.due("a", c.now(), fresh(&c)), Due::Poll);
    }

    #[test]
    fn a_reading_makes_the_next_poll_due_after_poll_interval() {
        let mut c = Clock::new();
        let mut s = schedule();
        assert_eq!(s.after("a", Outcome::Reading, c.now().at), MIN);
        c.step(MIN - Duration::from_millis(1));
        assert!(matches!(s.due("a", c.now(), None), Due::WaitUntil(_)));
        c.step(Duration::from_millis(1));
        assert_eq!(s.due("a", c.now(), None), Due::Poll);
        // Another account keeps its own schedule.
        assert_eq!(s.due("b", c.now(), None), Due::Poll);
    }

    #[test]
    fn a_429_with_retry_after_waits_that_long_within_poll_interval_and_max_backoff() {
        let mut c = Clock::new();
        let mut s = schedule();
        let ten_min = retry_after(Some("600"));
        assert_eq!(
            s.after("a", Outcome::Throttled(ten_min), c.now().at),
            ten_min
        );
        c.step(ten_min - Duration::from_secs(1));
        assert!(matches!(s.due("a", c.now(), None), Due::WaitUntil(_)));
        c.step(Duration::from_secs(1));
        assert_eq!(s.due("a", c.now(), None), Due::Poll);
        // Shorter than the poll interval: the poll interval.
        let short = retry_after(Some("5"));
        assert_eq!(s.after("a", Outcome::Throttled(short), c.now().at), MIN);
    }

    #[test]
    fn a_429_without_retry_after_waits_the_default() {
        let c = Clock::new();
        let mut s = schedule();
        for header in [
            None,
            Some("Wed, 21 Oct 2026 07:28:00 GMT"),
            Some("-5"),
            Some(""),
        ] {
            assert_eq!(retry_after(header), DEFAULT_RETRY_AFTER, "{header:?}");
            assert_eq!(
                s.after("a", Outcome::Throttled(retry_after(header)), c.now().at),
                DEFAULT_RETRY_AFTER
            );
        }
    }

    #[test]
    fn a_huge_retry_after_waits_max_backoff() {
        let mut c = Clock::new();
        let mut s = schedule();
        let huge = retry_after(Some("18446744073709551615"));
        assert_eq!(
            s.after("a", Outcome::Throttled(huge), c.now().at),
            MAX_BACKOFF
        );
        c.step(MAX_BACKOFF - Duration::from_secs(1));
        assert!(matches!(s.due("a", c.now(), None), Due::WaitUntil(_)));
        c.step(Duration::from_secs(1));
        assert_eq!(s.due("a", c.now(), None), Due::Poll);
    }

    #[test]
    fn needs_login_makes_the_next_poll_due_after_poll_interval() {
        let mut c = Clock::new();
        let mut s = schedule();
        s.after("a", Outcome::Failed, c.now().at);
        assert_eq!(s.after("a", Outcome::NeedsLogin, c.now().at), MIN);
        c.step(MIN);
        assert_eq!(s.due("a", c.now(), None), Due::Poll);
    }

    #[test]
    fn failures_back_off_doubling_and_reset_after_a_reading() {
        let c = Clock::new();
        let mut s = schedule();
        let waits: Vec<u64> = (0..8)
            .map(|_| s.after("a", Outcome::Failed, c.now().at).as_secs())
            .collect();
        // 60 s doubled per failure, at most 2⁶ times and at most an hour.
        assert_eq!(waits, [120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(s.failures("a"), 8);
        assert_eq!(s.after("a", Outcome::Reading, c.now().at), MIN);
        assert_eq!(s.failures("a"), 0);
        assert_eq!(
            s.after("a", Outcome::Failed, c.now().at),
            Duration::from_secs(120)
        );
    }

    // The next two moved here from quota_monitor.rs unchanged.
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

    #[test]
    fn the_schedule_never_overflows() {
        let now = Instant::now();
        let mut s = Schedule::new(Duration::MAX, Duration::MAX, Duration::MAX);
        for _ in 0..100 {
            assert_eq!(s.after("a", Outcome::Failed, now), MAX_BACKOFF);
        }
        assert_eq!(
            s.after("a", Outcome::Throttled(Duration::MAX), now),
            MAX_BACKOFF
        );
        s.after("b", Outcome::Reading, now);
        let passive = statusline_at(1);
        let far = Now {
            at: now,
            wall_ms: u64::MAX,
        };
        assert!(matches!(s.due("b", far, passive), Due::WaitUntil(_)));
    }

    #[test]
    fn a_poll_lease_held_elsewhere_waits_until_it_lapses_and_counts_no_failure() {
        let clock = Clock::new();
        let mut s = Schedule::new(MIN, MIN, MIN * 10);
        s.after("a", Outcome::Failed, clock.now().at);
        let wait = s.after(
            "a",
            Outcome::PolledElsewhere(Duration::from_secs(7)),
            clock.now().at,
        );
        assert_eq!(wait, Duration::from_secs(7));
        assert_eq!(
            s.failures("a"),
            1,
            "another machine polling is no failure, nor a success"
        );
        assert!(matches!(s.due("a", clock.now(), None), Due::WaitUntil(_)));
    }
}
