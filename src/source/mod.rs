//! The source of truth behind the cache: PostgreSQL, or deterministic rows in process.
//!
//! `DbActor` owns one `Source`; tests put a counting or failing source behind the same trait.

pub mod demo;
pub mod embedded;
pub mod postgres;
pub mod seed;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::cache::error::SourceError;
use crate::cache::group::Group;

pub type SourceFuture = Pin<Box<dyn Future<Output = Result<Option<Bytes>, SourceError>> + Send>>;

/// Fetches one row. `Ok(None)` means the source has no such key.
pub trait Source: Send + Sync + 'static {
    fn fetch(&self, group: Group, key: &str) -> SourceFuture;
}

pub use embedded::EmbeddedSource;
pub use postgres::PostgresSource;
