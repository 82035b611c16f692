//! GeeCache-rs: a distributed read-through cache in front of PostgreSQL.
//!
//! # Layout
//!
//! A request for a key enters [`cache`] from a thin handler in [`http`] and leaves it only
//! downward: to the store, to the one [`peer`] client, or to the [`source`] through the
//! database actor. `cache/mod.rs` reads top to bottom as groupcache's
//! `Get -> load -> getFromPeer | getLocally -> populateCache`.
//!
//! - [`cache`]: the read-through core, no actix-web: the get for clients and for peers, the
//!   load decision, the byte-bounded [`cache::store`], singleflight's [`cache::flights`]
//!   table, the [`cache::hot`] policy, [`cache::group`]s and key validation, errors.
//! - [`ring`]: consistent hashing with virtual nodes (pure) and [`ring::Cluster`], the ring
//!   and purge generations the request path reads.
//! - [`peer`]: the peer protocol's wire (protobuf, paths, headers, the Raft batch) and the one
//!   authenticated client used by data fetches, the Raft transport and membership calls.
//! - [`source`]: PostgreSQL (deadpool) and the embedded demo rows behind the `Source` trait;
//!   `db seed`.
//! - [`actors`]: one actor per file, each owning one piece of state: `ShardActor` (the stores'
//!   maintenance), `LoaderActor` (the in-flight table), `DbActor` (the source), `RaftActor`
//!   (the Raft node and the membership it applies).
//! - [`http`]: the client API, ops endpoints, the peer protocol's server side; the error
//!   table, strict decoding, the peer-secret middleware.
//! - [`raft`]: Raft storage, the membership state machine, the node driven by the actor and by
//!   an in-process test harness, boot (bootstrap, join, leave), discovery.
//! - [`telemetry`]: Prometheus metrics and CloudWatch EMF.
//! - [`cli`]: the process side: the command line, the configuration (one struct for flags and
//!   the TOML file), `geecache up`, the cluster and secret tools.
//! - [`node`]: the composition root: bind, start the actors and membership, serve, drain.

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
