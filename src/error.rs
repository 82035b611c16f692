//! Errors at the node's boundaries, and the one table that maps them to HTTP statuses.

use actix_web::http::StatusCode;

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
}

/// Why a load failed. Cloned to every waiter of one flight; never cached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("not found")]
    NotFound,
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
    /// A peer answered with an error status that is the key's answer, not a transport fault.
    #[error("peer said: {0}")]
    Peer(String),
}

/// An error the HTTP layer returns: a status, a stable code, and a reason for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> Self {
        let (status, code) = match &e {
            LoadError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            LoadError::Source(SourceError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "source_unavailable")
            }
            LoadError::Source(SourceError::Timeout(_)) => {
                (StatusCode::GATEWAY_TIMEOUT, "source_timeout")
            }
            LoadError::Source(SourceError::Query(_)) => (StatusCode::BAD_GATEWAY, "source_error"),
            LoadError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            LoadError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "load_timeout"),
            LoadError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            LoadError::Peer(_) => (StatusCode::BAD_GATEWAY, "peer_error"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl actix_web::ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        actix_web::HttpResponse::build(self.status)
            .content_type("application/json")
            .body(serde_json::json!({"error": self.code, "message": self.message}).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_load_error_maps_to_its_status() {
        let cases = [
            (LoadError::NotFound, 404),
            (SourceError::Unavailable("x".into()).into(), 503),
            (SourceError::Timeout("x".into()).into(), 504),
            (SourceError::Query("x".into()).into(), 502),
            (LoadError::Overloaded("loader"), 503),
            (LoadError::Timeout, 504),
            (LoadError::Stopped, 503),
        ];
        for (err, status) in cases {
            assert_eq!(
                ApiError::from(err.clone()).status.as_u16(),
                status,
                "{err:?}"
            );
        }
    }
}
