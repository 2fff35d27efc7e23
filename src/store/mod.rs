//! What the daemon keeps on disk: atomic writes, each project's queue,
//! checkpoints, the state folder's lock; and what the fleet shares in Redis.

pub mod atomic_file;
pub mod checkpoint;
pub mod fleet;
pub mod queue;
pub mod state_lock;
