//! The one table that maps every error the node answers with to an HTTP status and a stable
//! code, and the JSON shape `{"error": code, "message": reason}` of every error answer.

use actix_web::http::StatusCode;

use crate::error::{LoadError, SourceError};

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
            LoadError::BadKey(_) => (StatusCode::BAD_REQUEST, "bad_key"),
            LoadError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            LoadError::NotOwner(_) => (StatusCode::MISDIRECTED_REQUEST, "stale_epoch"),
            LoadError::Source(SourceError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "source_unavailable")
            }
            LoadError::Source(SourceError::Timeout(_)) => {
                (StatusCode::GATEWAY_TIMEOUT, "source_timeout")
            }
            LoadError::Source(SourceError::Query(_)) => (StatusCode::BAD_GATEWAY, "source_error"),
            LoadError::Source(SourceError::TooLarge(_)) => {
                (StatusCode::BAD_GATEWAY, "value_too_large")
            }
            LoadError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            LoadError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "load_timeout"),
            LoadError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
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
            (LoadError::BadKey(crate::group::KeyError::Empty), 400),
            (LoadError::NotFound, 404),
            (LoadError::NotOwner(3), 421),
            (SourceError::Unavailable("x".into()).into(), 503),
            (SourceError::Timeout("x".into()).into(), 504),
            (SourceError::Query("x".into()).into(), 502),
            (SourceError::TooLarge("x".into()).into(), 502),
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
