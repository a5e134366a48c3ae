//! The one error type: every failure becomes a Matrix `{errcode, error}` body with the
//! right HTTP status. Internal failures (storage, I/O, JSON) are logged once and shown to
//! the client only as `M_UNKNOWN`.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Value};

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error Myelin can produce.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A failure the client caused or must see: status, errcode and message.
    #[error("{errcode}: {message}")]
    Matrix {
        status: StatusCode,
        errcode: &'static str,
        message: String,
        /// Extra top-level fields merged into the error body (e.g. `soft_logout`).
        extra: Option<Box<serde_json::Map<String, Value>>>,
    },
    /// User-interactive auth is (still) needed: 401 with the UIA body.
    #[error("user-interactive authentication required")]
    Uia(Box<Value>),
    /// Storage engine failure.
    #[error("storage: {0}")]
    Storage(String),
    /// I/O failure.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Serialisation failure of our own data (a bug or a corrupt store).
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Anything else that is our fault.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// A client-visible error with the given status and errcode.
    pub fn matrix(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        Error::Matrix {
            status,
            errcode,
            message: message.into(),
            extra: None,
        }
    }

    /// Adds a top-level field to a client-visible error body.
    pub fn with_field(mut self, key: &str, value: Value) -> Self {
        if let Error::Matrix { extra, .. } = &mut self {
            extra
                .get_or_insert_with(Default::default)
                .insert(key.to_owned(), value);
        }
        self
    }

    /// 403 `M_FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::FORBIDDEN, "M_FORBIDDEN", message)
    }
    /// 404 `M_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::NOT_FOUND, "M_NOT_FOUND", message)
    }
    /// 400 `M_BAD_JSON`.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_BAD_JSON", message)
    }
    /// 400 `M_NOT_JSON`.
    pub fn not_json(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_NOT_JSON", message)
    }
    /// 400 `M_INVALID_PARAM`.
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", message)
    }
    /// 400 `M_MISSING_PARAM`.
    pub fn missing_param(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_MISSING_PARAM", message)
    }
    /// 401 `M_MISSING_TOKEN`.
    pub fn missing_token() -> Self {
        Self::matrix(
            StatusCode::UNAUTHORIZED,
            "M_MISSING_TOKEN",
            "Missing access token",
        )
    }
    /// 401 `M_UNKNOWN_TOKEN`.
    pub fn unknown_token() -> Self {
        Self::matrix(
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            "Unknown access token",
        )
        .with_field("soft_logout", Value::Bool(false))
    }
    /// 404 `M_UNRECOGNIZED`.
    pub fn unrecognized() -> Self {
        Self::matrix(
            StatusCode::NOT_FOUND,
            "M_UNRECOGNIZED",
            "Unrecognized request",
        )
    }
    /// 413 `M_TOO_LARGE`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", message)
    }
    /// 400 `M_UNKNOWN` for requests that are wrong in a way no specific code covers.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN", message)
    }
    /// 400 `M_USER_IN_USE`.
    pub fn user_in_use() -> Self {
        Self::matrix(
            StatusCode::BAD_REQUEST,
            "M_USER_IN_USE",
            "Desired user ID is already taken",
        )
    }
    /// 400 `M_INVALID_USERNAME`.
    pub fn invalid_username(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_INVALID_USERNAME", message)
    }
    /// 403 `M_USER_DEACTIVATED`.
    pub fn user_deactivated() -> Self {
        Self::matrix(
            StatusCode::FORBIDDEN,
            "M_USER_DEACTIVATED",
            "This account has been deactivated",
        )
    }
    /// 400 `M_WEAK_PASSWORD`.
    pub fn weak_password(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_WEAK_PASSWORD", message)
    }
    /// 403 `M_GUEST_ACCESS_FORBIDDEN`.
    pub fn guest_access_forbidden(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN", message)
    }
    /// 405 `M_BAD_JSON`: account data types that have their own API.
    pub fn bad_json_method(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::METHOD_NOT_ALLOWED, "M_BAD_JSON", message)
    }
    /// 429 `M_LIMIT_EXCEEDED`: try again after `retry_after` (also sent as `Retry-After`).
    pub fn limit_exceeded(retry_after: std::time::Duration) -> Self {
        let ms = u64::try_from(retry_after.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Self::matrix(
            StatusCode::TOO_MANY_REQUESTS,
            "M_LIMIT_EXCEEDED",
            "Too many requests",
        )
        .with_field("retry_after_ms", Value::from(ms))
    }
    /// 500 for our own faults; the message is logged, never shown.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    /// The errcode this error is reported with.
    pub fn errcode(&self) -> &'static str {
        match self {
            Error::Matrix { errcode, .. } => errcode,
            Error::Uia(_) => "M_FORBIDDEN",
            _ => "M_UNKNOWN",
        }
    }

    /// The HTTP status and JSON body of this error as a client sees it.
    pub fn to_status_and_body(&self) -> (StatusCode, Value) {
        match self {
            Error::Matrix {
                status,
                errcode,
                message,
                extra,
            } => {
                let mut body = json!({ "errcode": errcode, "error": message });
                if let (Some(extra), Value::Object(map)) = (extra, &mut body) {
                    map.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                (*status, body)
            }
            Error::Uia(body) => (StatusCode::UNAUTHORIZED, (**body).clone()),
            other => {
                tracing::error!(error = %other, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({ "errcode": "M_UNKNOWN", "error": "Internal server error" }),
                )
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, body) = self.to_status_and_body();
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
    fn matrix_error_body_has_errcode_and_extra_fields() {
        let (status, body) = Error::unknown_token().to_status_and_body();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
        assert_eq!(body["soft_logout"], false);
    }

    #[test]
    fn internal_errors_hide_details() {
        let (status, body) = Error::internal("secret detail").to_status_and_body();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["errcode"], "M_UNKNOWN");
        assert!(!body.to_string().contains("secret"));
    }
}
