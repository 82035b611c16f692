//! The source of truth behind the cache: PostgreSQL, or deterministic rows in process.
//!
//! `DbActor` owns one `Source` and reports on its pool; the loaders fetch from it directly, each
//! on its own lane (for PostgreSQL, a pool of its own whose connections live on the loader's
//! thread). Tests put a counting or failing source behind the same trait.

pub mod demo;
pub mod embedded;
pub mod postgres;
pub mod values;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::error::SourceError;
use crate::group::Group;

/// One lane's pool, as `DbActor` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    pub lane: usize,
    /// The most connections the lane opens.
    pub max: usize,
    /// Open now.
    pub size: usize,
    pub idle: usize,
    pub waiting: usize,
}

pub type SourceFuture = Pin<Box<dyn Future<Output = Result<Option<Bytes>, SourceError>> + Send>>;
/// What stops a node at startup (the reason, naming the group), or nothing.
pub type PrepareFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

pub trait Source: Send + Sync + 'static {
    /// Fetches one row. `Ok(None)` means the source has no such key. `lane` is the caller's
    /// (one per loader): fetches of one lane share connections that no other thread polls.
    fn fetch(&self, lane: usize, group: Group, key: &str) -> SourceFuture;

    /// The connection pools' state, for the gauges.
    fn pools(&self) -> Vec<PoolStatus> {
        Vec::new()
    }

    /// Checks at startup that every group can be served.
    fn prepare(&self) -> PrepareFuture {
        Box::pin(async { Ok(()) })
    }
}

pub use embedded::EmbeddedSource;
pub use postgres::PostgresSource;
