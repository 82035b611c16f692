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
//! - [`node`]: starting and stopping a node; [`config`] and [`cli`]: its settings.

pub mod actors;
pub mod cache;
pub mod cli;
pub mod config;
pub mod decode;
pub mod error;
pub mod groups;
pub mod http;
pub mod metrics;
pub mod node;
pub mod singleflight;
pub mod source;
