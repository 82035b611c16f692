//! Membership by Raft: the ring as a replicated state machine (tikv raft-rs).
//!
//! - [`storage`]: durable `raft::Storage` (write-ahead file, snapshots carry the membership).
//! - [`admission`]: which peers' messages reach raft-rs.
//! - [`membership`]: the state machine: members, weights, purge generations, the epoch.
//! - [`node`]: `RawNode` + storage + membership, driven by `RaftActor` or the test harness.

pub mod admission;
pub mod discovery;
pub mod membership;
pub mod node;
pub mod storage;

/// The in-process cluster for tests: the crate's own, and integration tests with the
/// `harness` feature (the test command builds with every feature).
#[cfg(any(test, feature = "harness"))]
pub mod harness;
