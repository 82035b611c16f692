//! The source of truth behind the cache: PostgreSQL, or deterministic rows in process.
//!
//! `DbActor` owns one `Source`; tests put a counting or failing source behind the same trait.

pub mod demo;
pub mod embedded;
pub mod feed;
pub mod postgres;
pub mod seed;
pub mod values;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::cache::error::SourceError;
use crate::cache::group::Group;

pub type SourceFuture = Pin<Box<dyn Future<Output = Result<Option<Bytes>, SourceError>> + Send>>;
/// What stops a node at startup (the reason, naming the group), or nothing.
pub type PrepareFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

pub trait Source: Send + Sync + 'static {
    /// Fetches one row. `Ok(None)` means the source has no such key.
    fn fetch(&self, group: Group, key: &str) -> SourceFuture;

    /// Checks at startup that every group can be served.
    fn prepare(&self) -> PrepareFuture {
        Box::pin(async { Ok(()) })
    }
}

pub use embedded::EmbeddedSource;
pub use postgres::PostgresSource;
