//! Why a read could not be answered: the source's errors and the load's. Shared by every
//! waiter of one flight (they are `Clone`), never cached. `http::error` maps each to a status.

use super::group::KeyError;

/// Why a source (PostgreSQL or embedded) could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// No connection could be had (refused, pool exhausted, connect timed out).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The query ran past the statement timeout.
    #[error("database timed out: {0}")]
    Timeout(String),
    /// The database answered with an error.
    #[error("database error: {0}")]
    Query(String),
    /// The value is larger than `--max-value-bytes` (it was not read).
    #[error("value too large: {0}")]
    TooLarge(String),
}

/// Why a read failed. Cloned to every waiter of one flight; never cached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// Refused before any lookup.
    #[error(transparent)]
    BadKey(#[from] KeyError),
    #[error("not found")]
    NotFound,
    /// A peer asked this node for a key it does not own under its newer ring (its epoch).
    #[error("not the owner under epoch {0}")]
    NotOwner(u64),
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A bounded mailbox or the in-flight table is full: shed the request.
    #[error("node overloaded: {0}")]
    Overloaded(&'static str),
    /// The caller's deadline passed (the load itself goes on for the other waiters).
    #[error("timed out waiting for the load")]
    Timeout,
    /// An actor is gone (shutting down).
    #[error("node is shutting down")]
    Stopped,
}

impl LoadError {
    /// A failure to load that a stale value may stand in for (stale-if-error): the source
    /// failing, unreachable or slow, or the node shedding load. Not `NotFound`: a row that is
    /// gone is an answer.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LoadError::Source(_)
                | LoadError::Timeout
                | LoadError::Overloaded(_)
                | LoadError::Stopped
        )
    }
}
