//! The fakes claude-failover is tested and shown with, kept out of the
//! product: a dev-only crate (the product takes it as a dev-dependency), so
//! a release build of `claude-failover` contains no stand-in and serves no
//! made-up token. `scripts/check-no-fakes.sh` checks the release binary.
//!
//! - [`standin`]: the local Anthropic API stand-in the real Claude Code talks to;
//! - [`sandbox`]: throw-away account homes, folders and a config around it;
//! - [`world`]: the integration tests' harness (private tmux server, temp
//!   folder, the daemon under test, diagnostics on failure);
//! - [`demo`]: the demo, run by the `claude-failover-demo` binary;
//! - [`redis_server`]: a real `redis-server` for the fleet tests;
//! - [`product`]: where the `claude-failover` binary under test or under
//!   demonstration is.

pub mod browser;
pub mod demo;
pub mod product;
pub mod redis_server;
pub mod sandbox;
pub mod script;
pub mod sse;
pub mod standin;
pub mod world;
