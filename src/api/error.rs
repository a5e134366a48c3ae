//! How a service error reaches a client: each domain [`ErrorKind`] gets its HTTP status
//! here, the body is the error's `{errcode, error}` JSON, a rate limit also sets
//! `Retry-After`, and internal failures are logged once and shown as a bare 500.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::Value;

use crate::{Error, ErrorKind};

/// The HTTP status of a client-visible error kind.
pub fn kind_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::WrongMethod => StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
    }
}

/// The HTTP status of an error: its kind's, or 500 for our own failures.
pub fn status(error: &Error) -> StatusCode {
    error
        .kind()
        .map_or(StatusCode::INTERNAL_SERVER_ERROR, kind_status)
}

/// The status and body a client sees; internal failures are logged here.
pub fn status_and_body(error: &Error) -> (StatusCode, Value) {
    let status = status(error);
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %error, "internal error");
    }
    (status, error.body())
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, body) = status_and_body(&self);
        // Whole seconds, rounded up, as the header's grammar requires.
        let retry_after = body
            .get("retry_after_ms")
            .and_then(Value::as_u64)
            .filter(|_| status == StatusCode::TOO_MANY_REQUESTS)
            .map(|ms| ms.div_ceil(1000).to_string());
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after.and_then(|s| http::HeaderValue::from_str(&s).ok()) {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, secs);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_status() {
        assert_eq!(status(&Error::unknown_token()), StatusCode::UNAUTHORIZED);
        assert_eq!(status(&Error::forbidden("no")), StatusCode::FORBIDDEN);
        assert_eq!(status(&Error::not_found("no")), StatusCode::NOT_FOUND);
        assert_eq!(status(&Error::bad_json("no")), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(&Error::bad_json_method("no")),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(&Error::too_large("no")),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            status(&Error::matrix(ErrorKind::Upstream, "M_UNKNOWN", "sfu")),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            status(&Error::internal("secret")),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status(&Error::Uia(Box::new(serde_json::json!({})))),
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn a_rate_limit_sets_retry_after_in_whole_seconds() {
        let response =
            Error::limit_exceeded(std::time::Duration::from_millis(1_500)).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "2");
    }

    #[test]
    fn internal_errors_are_a_bare_500() {
        let (status, body) = status_and_body(&Error::internal("secret detail"));
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["errcode"], "M_UNKNOWN");
        assert!(!body.to_string().contains("secret"));
    }
}
