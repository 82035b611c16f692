//! GeeCache-rs: a distributed read-through cache in front of PostgreSQL.
//!
//! # Layout
//!
//! - [`groups`]: the cache groups and their deterministic rows (pure).
//! - [`singleflight`]: the in-flight table of a load (pure).
//! - [`cache`]: the byte-bounded moka cache of a node.
//! - [`source`]: the source of truth, PostgreSQL or embedded, behind the `Source` trait;
//!   `db seed`.
//! - [`actors`]: `ShardActor`, `LoaderActor`, `DbActor`: each owns one piece of state.
//! - [`http`]: the client API, ops endpoints and the peer protocol (actix-web).
//! - [`ring`]: consistent hashing with virtual nodes (pure); [`cluster`]: the current ring as
//!   the request path sees it, the seam membership changes go through.
//! - [`proto`], [`peer_client`]: the peer protocol's messages and client; [`hot`]: per-key
//!   rates that decide the hot cache.
//! - [`node`]: starting and stopping a node; [`config`] and [`cli`]: its settings;
//!   [`up`]: a local cluster of node processes.

pub mod actors;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod decode;
pub mod emf;
pub mod error;
pub mod groups;
pub mod hot;
pub mod http;
pub mod metrics;
pub mod node;
pub mod peer_client;
pub mod proto;
pub mod raft;
pub mod ring;
pub mod singleflight;
pub mod source;
pub mod up;
