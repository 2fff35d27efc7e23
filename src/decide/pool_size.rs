//! Pure: how many sessions a pool runs. It grows (one session a turn, up to
//! `max`) while tasks wait that its free and starting sessions cannot take,
//! and shrinks (one a turn, from the highest index down, never below `min`)
//! when nothing waits and a session above `min` was idle for
//! `idle_shrink_after`. The waiting count is an input: the dispatcher reads
//! the queues.

use std::collections::HashMap;
use std::time::Instant;

use crate::config::PoolConfig;
use crate::decide::session::State;

/// A session of the pool as the dispatcher sees it.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub name: &'a str,
    pub state: State,
    /// It works on a task (or is being readied for one).
    pub assigned: bool,
}

/// One change to a pool's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resize {
    /// Start this session.
    Grow(String),
    /// Stop this idle session.
    Shrink(String),
}

/// The pool's next change, if any. `waiting`: tasks in its projects'
/// inboxes; `idle_since`: when each member became idle and free (see
/// [`track_idle`]); `paused`: dispatch is paused (a swap, or no account can
/// take work), when a pool never grows.
pub fn resize(
    pool: &PoolConfig,
    waiting: usize,
    members: &[Member],
    idle_since: &HashMap<String, Instant>,
    paused: bool,
    now: Instant,
) -> Option<Resize> {
    let free = members
        .iter()
        .filter(|s| s.state == State::Idle && !s.assigned)
        .count();
    let starting = members
        .iter()
        .filter(|s| matches!(s.state, State::Starting | State::Dead))
        .count();
    if !paused && waiting > free + starting && (members.len() as u32) < pool.max {
        return pool
            .session_names()
            .into_iter()
            .find(|n| !members.iter().any(|m| m.name == n))
            .map(Resize::Grow);
    }
    if waiting > 0 || members.len() as u32 <= pool.min {
        return None;
    }
    let names = pool.session_names();
    let index = |name: &str| names.iter().position(|n| n == name);
    members
        .iter()
        .filter(|s| index(s.name).is_some_and(|i| i as u32 >= pool.min))
        .filter(|s| s.state == State::Idle && !s.assigned)
        .filter(|s| {
            idle_since
                .get(s.name)
                .is_some_and(|t| now.saturating_duration_since(*t) >= pool.idle_shrink_after)
        })
        .max_by_key(|s| index(s.name))
        .map(|s| Resize::Shrink(s.name.to_string()))
}

/// Keeps `idle_since` current: a session that is idle and free keeps the
/// time it became so; any other forgets it.
pub fn track_idle(idle_since: &mut HashMap<String, Instant>, members: &[Member], now: Instant) {
    for s in members {
        if s.state != State::Idle || s.assigned {
            idle_since.remove(s.name);
        } else {
            idle_since.entry(s.name.to_string()).or_insert(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool() -> PoolConfig {
        PoolConfig {
            model: None,
            name: "auto".into(),
            prefix: "ccl-auto-".into(),
            start_index: 11,
            min: 1,
            max: 3,
            cwd: "/srv".into(),
            dispatch: true,
            idle_shrink_after: Duration::from_secs(300),
        }
    }

    fn m(name: &str, state: State, assigned: bool) -> Member<'_> {
        Member {
            name,
            state,
            assigned,
        }
    }

    #[test]
    fn a_pool_grows_with_the_first_free_name_while_tasks_wait_beyond_its_free_sessions() {
        let t0 = Instant::now();
        let none = HashMap::new();
        let members = [m("ccl-auto-11", State::Working, true)];
        assert_eq!(
            resize(&pool(), 1, &members, &none, false, t0),
            Some(Resize::Grow("ccl-auto-12".into()))
        );
        // A free session, or one on its way up, takes the task first.
        let members = [
            m("ccl-auto-11", State::Working, true),
            m("ccl-auto-13", State::Idle, false),
        ];
        assert_eq!(resize(&pool(), 1, &members, &none, false, t0), None);
        assert_eq!(
            resize(&pool(), 2, &members, &none, false, t0),
            Some(Resize::Grow("ccl-auto-12".into()))
        );
        let members = [
            m("ccl-auto-11", State::Working, true),
            m("ccl-auto-12", State::Starting, false),
        ];
        assert_eq!(resize(&pool(), 1, &members, &none, false, t0), None);
    }

    #[test]
    fn a_pool_never_grows_past_max_nor_during_a_pause() {
        let t0 = Instant::now();
        let none = HashMap::new();
        let busy = [
            m("ccl-auto-11", State::Working, true),
            m("ccl-auto-12", State::Working, true),
            m("ccl-auto-13", State::Working, true),
        ];
        assert_eq!(resize(&pool(), 50, &busy, &none, false, t0), None);
        assert_eq!(resize(&pool(), 50, &busy[..1], &none, true, t0), None);
    }

    #[test]
    fn a_pool_shrinks_from_the_top_after_the_idle_time_never_below_min() {
        let t0 = Instant::now();
        let members = [
            m("ccl-auto-11", State::Idle, false),
            m("ccl-auto-12", State::Idle, false),
            m("ccl-auto-13", State::Idle, false),
        ];
        let mut idle = HashMap::new();
        track_idle(&mut idle, &members, t0);
        let later = t0 + Duration::from_secs(299);
        assert_eq!(resize(&pool(), 0, &members, &idle, false, later), None);
        let later = t0 + Duration::from_secs(300);
        assert_eq!(
            resize(&pool(), 0, &members, &idle, false, later),
            Some(Resize::Shrink("ccl-auto-13".into()))
        );
        // Tasks waiting: no shrink.
        assert_eq!(resize(&pool(), 1, &members, &idle, false, later), None);
        // At min: no shrink, whatever the idle time.
        assert_eq!(resize(&pool(), 0, &members[..1], &idle, false, later), None);
        // The one at index below min is never a candidate.
        let members = [
            m("ccl-auto-11", State::Idle, false),
            m("ccl-auto-12", State::Working, true),
        ];
        assert_eq!(resize(&pool(), 0, &members, &idle, false, later), None);
    }

    #[test]
    fn idle_time_starts_over_when_a_session_works_again() {
        let t0 = Instant::now();
        let mut idle = HashMap::new();
        track_idle(&mut idle, &[m("ccl-auto-12", State::Idle, false)], t0);
        let t1 = t0 + Duration::from_secs(200);
        track_idle(&mut idle, &[m("ccl-auto-12", State::Idle, true)], t1);
        assert!(idle.is_empty());
        track_idle(&mut idle, &[m("ccl-auto-12", State::Idle, false)], t1);
        let members = [
            m("ccl-auto-11", State::Idle, false),
            m("ccl-auto-12", State::Idle, false),
        ];
        let t2 = t0 + Duration::from_secs(400);
        assert_eq!(resize(&pool(), 0, &members, &idle, false, t2), None);
        assert_eq!(
            resize(
                &pool(),
                0,
                &members,
                &idle,
                false,
                t1 + Duration::from_secs(300)
            ),
            Some(Resize::Shrink("ccl-auto-12".into()))
        );
    }
}
