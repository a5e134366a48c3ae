//! The one error type of the services: a Matrix failure is a domain [`ErrorKind`] (what
//! went wrong), an errcode and a message; internal failures (storage, I/O, JSON) carry
//! their detail for the log. Services know nothing of HTTP: `api::error` maps each kind to
//! its status and writes the `{errcode, error}` body, showing internal failures to the
//! client only as `M_UNKNOWN`.

use serde_json::{json, Value};

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure a client-visible error is, in the services' terms. The HTTP layer
/// maps each to a status (`api::error::status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong: bad input, unknown parameter, unsupported option.
    Invalid,
    /// The caller is not (or no longer) known: missing, unknown or expired credentials.
    Unauthenticated,
    /// The caller is known but may not do this.
    Forbidden,
    /// The thing asked for does not exist (or the caller may not know it does).
    NotFound,
    /// The request is not supported in this form (account data with its own API).
    WrongMethod,
    /// The request clashes with the current state (taken name, already done).
    Conflict,
    /// The request or its content exceeds a size limit.
    TooLarge,
    /// The caller must slow down.
    RateLimited,
    /// A service we depend on (SFU, application service) failed or refused.
    Upstream,
    /// A service or upload we wait for did not answer in time.
    UpstreamTimeout,
}

/// Every error Myelin can produce.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A failure the client caused or must see: status, errcode and message.
    #[error("{errcode}: {message}")]
    Matrix {
        kind: ErrorKind,
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
    /// A client-visible error of the given kind and errcode.
    pub fn matrix(kind: ErrorKind, errcode: &'static str, message: impl Into<String>) -> Self {
        Error::Matrix {
            kind,
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
        Self::matrix(ErrorKind::Forbidden, "M_FORBIDDEN", message)
    }
    /// 404 `M_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::NotFound, "M_NOT_FOUND", message)
    }
    /// 400 `M_BAD_JSON`.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::Invalid, "M_BAD_JSON", message)
    }
    /// 400 `M_NOT_JSON`.
    pub fn not_json(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::Invalid, "M_NOT_JSON", message)
    }
    /// 400 `M_INVALID_PARAM`.
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::Invalid, "M_INVALID_PARAM", message)
    }
    /// 400 `M_MISSING_PARAM`.
    pub fn missing_param(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::Invalid, "M_MISSING_PARAM", message)
    }
    /// 401 `M_MISSING_TOKEN`.
    pub fn missing_token() -> Self {
        Self::matrix(
            ErrorKind::Unauthenticated,
            "M_MISSING_TOKEN",
            "Missing access token",
        )
    }
    /// 401 `M_UNKNOWN_TOKEN`.
    pub fn unknown_token() -> Self {
        Self::matrix(
            ErrorKind::Unauthenticated,
            "M_UNKNOWN_TOKEN",
            "Unknown access token",
        )
        .with_field("soft_logout", Value::Bool(false))
    }
    /// 404 `M_UNRECOGNIZED`.
    pub fn unrecognized() -> Self {
        Self::matrix(
            ErrorKind::NotFound,
            "M_UNRECOGNIZED",
            "Unrecognized request",
        )
    }
    /// 413 `M_TOO_LARGE`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::TooLarge, "M_TOO_LARGE", message)
    }
    /// 400 `M_UNKNOWN` for requests that are wrong in a way no specific code covers.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::Invalid, "M_UNKNOWN", message)
    }
    /// 400 `M_USER_IN_USE`.
    pub fn user_in_use() -> Self {
        Self::matrix(
            ErrorKind::Invalid,
            "M_USER_IN_USE",
            "Desired user ID is already taken",
        )
    }
    /// 400 `M_INVALID_USERNAME`.
    pub fn invalid_username(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::Invalid, "M_INVALID_USERNAME", message)
    }
    /// 403 `M_USER_DEACTIVATED`.
    pub fn user_deactivated() -> Self {
        Self::matrix(
            ErrorKind::Forbidden,
            "M_USER_DEACTIVATED",
            "This account has been deactivated",
        )
    }
    /// 400 `M_WEAK_PASSWORD`.
    pub fn weak_password(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::Invalid, "M_WEAK_PASSWORD", message)
    }
    /// 403 `M_GUEST_ACCESS_FORBIDDEN`.
    pub fn guest_access_forbidden(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::Forbidden, "M_GUEST_ACCESS_FORBIDDEN", message)
    }
    /// 405 `M_BAD_JSON`: account data types that have their own API.
    pub fn bad_json_method(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::WrongMethod, "M_BAD_JSON", message)
    }
    /// 429 `M_LIMIT_EXCEEDED`: try again after `retry_after` (also sent as `Retry-After`).
    pub fn limit_exceeded(retry_after: std::time::Duration) -> Self {
        let ms = u64::try_from(retry_after.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Self::matrix(
            ErrorKind::RateLimited,
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

    /// The kind of a client-visible error; `None` for internal failures.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Matrix { kind, .. } => Some(*kind),
            Error::Uia(_) => Some(ErrorKind::Unauthenticated),
            _ => None,
        }
    }

    /// The JSON body a client sees: `{errcode, error}` plus any extra fields, the UIA body,
    /// or a bare `M_UNKNOWN` for internal failures (whose detail is never shown).
    pub fn body(&self) -> Value {
        match self {
            Error::Matrix {
                errcode,
                message,
                extra,
                ..
            } => {
                let mut body = json!({ "errcode": errcode, "error": message });
                if let (Some(extra), Value::Object(map)) = (extra, &mut body) {
                    map.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                body
            }
            Error::Uia(body) => (**body).clone(),
            _ => json!({ "errcode": "M_UNKNOWN", "error": "Internal server error" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_error_body_has_errcode_and_extra_fields() {
        let err = Error::unknown_token();
        assert_eq!(err.kind(), Some(ErrorKind::Unauthenticated));
        let body = err.body();
        assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
        assert_eq!(body["soft_logout"], false);
    }

    #[test]
    fn internal_errors_hide_details() {
        let err = Error::internal("secret detail");
        assert_eq!(err.kind(), None);
        let body = err.body();
        assert_eq!(body["errcode"], "M_UNKNOWN");
        assert!(!body.to_string().contains("secret"));
    }
}
