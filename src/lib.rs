//! GeeCache-rs: a distributed read-through cache in front of PostgreSQL.
//!
//! # Layout
//!
//! A request for a key enters [`cache`] from a thin handler in [`http`] and leaves it only
//! downward: to the store, to the one [`peer`] client, or to the [`source`]. `cache/mod.rs`
//! reads top to bottom as groupcache's `Get -> load -> getFromPeer | getLocally ->
//! populateCache`.
//!
//! Modules import only from the layers below them, so there is no import cycle between
//! top-level modules (`tests/layers.rs` fails on the first import that points up):
//!
//! ```text
//! node ─ http ─ cli ─ actors ─ feed ─ cache ─ source ─ peer ─ telemetry ─ raft ─ ring ─ error ─ group ─ clock
//! ```
//!
//! - [`group`], [`clock`], [`error`]: leaves. The configured groups and key validation, the
//!   millisecond clock, the errors each boundary answers with.
//! - [`ring`]: consistent hashing with virtual nodes (pure), [`ring::MemberInfo`] and
//!   [`ring::Cluster`], the ring and purge generations the request path reads.
//! - [`raft`]: Raft storage, the membership state machine, the node that the actor and an
//!   in-process test harness drive alike, discovery. No actix.
//! - [`peer`]: the peer protocol's wire (protobuf, paths, headers, the Raft batch) and the one
//!   authenticated client used by data fetches, the Raft transport and membership calls.
//! - [`source`]: PostgreSQL (deadpool) and the embedded demo rows behind the `Source` trait.
//! - [`telemetry`]: logs, Prometheus metrics, CloudWatch EMF.
//! - [`cache`]: the read-through core, no actix: the get for clients and for peers, the load,
//!   [`cache::Core`] and the fill, the byte-bounded [`cache::store`], singleflight's
//!   [`cache::flights`] table, the [`cache::hot`] policy, and warm handoff
//!   ([`cache::handoff`], under the cache: it reads and fills the cache's stores under the
//!   cache's rules, and the read path calls it). The read path reaches its flights through
//!   the [`cache::Flights`] trait, which the loader actors implement: the actors sit above the
//!   cache and call down into it, never the reverse.
//! - [`feed`]: the change feed: the follower that applies PostgreSQL's changes to the cache,
//!   and its side in the database (the schema, the triggers, the roles).
//! - [`actors`]: one actor per file, each owning one piece of state: `ShardActor` (the stores'
//!   maintenance), `LoaderActor` (the in-flight table), `DbActor` (the source), `RaftActor`
//!   (the Raft node and the membership it applies).
//! - [`cli`]: the process side: the command line, the configuration (one struct for flags and
//!   the TOML file), `geecache up`, the cluster, secret, feed and seed tools.
//! - [`http`]: the client API, ops endpoints, the peer protocol's server side; the error
//!   table, strict decoding, the peer-secret middleware.
//! - [`node`]: the composition root: bind, start the actors and membership (bootstrap, join,
//!   leave, a frontend following the ring), serve, drain.

mod actors;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod error;
pub mod feed;
#[doc(hidden)]
pub mod fuzzing;
pub mod group;
mod http;
pub mod node;
pub mod peer;
pub mod raft;
pub mod ring;
pub mod source;
pub mod telemetry;

/// The largest request head a listener takes (431 past it).
pub use http::MAX_HEAD_BYTES;
