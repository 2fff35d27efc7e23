//! Pure decisions: each takes what was observed and `now` and returns what
//! to do, with no I/O and no clock (`scripts/check-shape.sh` checks it). The
//! roles in `daemon` are their shells.

pub mod assignment;
pub mod fleet;
pub mod poll_schedule;
pub mod pool_size;
pub mod quota;
pub mod session;
pub mod swap_plan;
