//! The API error: every failure of every route becomes one of these, and it is turned
//! into HTTP once, here. Bodies are the shared `{code, message}`; codes are stable
//! (the README lists them). A 5xx carries no internals: its cause is logged once.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shared::api::ErrorBody;

use crate::storage::StorageError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: &'static str,
    /// A sentence a person can act on.
    pub message: String,
    /// For 5xx: the cause, logged and never sent.
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Whether `e` or any error in its `source()` chain is a `T`.
pub fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<T>() {
            return true;
        }
        next = err.source();
    }
    false
}

impl ApiError {
    /// Any status with a code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            cause: None,
        }
    }

    /// 400.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401: no or malformed credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: credentials that do not grant this.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 404.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 408 `body_timeout`: the request body sent nothing for `BODY_TIMEOUT_SECS`.
    pub fn body_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "No data arrived for too long (BODY_TIMEOUT_SECS), so the request was ended; \
             nothing was stored. Send it again.",
        )
    }

    /// Whether `e` (or an error it wraps) is the body timeout of
    /// [`tower_http::timeout::RequestBodyTimeoutLayer`].
    pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
        caused_by::<tower_http::timeout::TimeoutError>(e)
    }

    /// 409.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 500 with a cause that is logged, not sent.
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "The server failed to handle this request; the cause was logged. \
                      Try again, and tell the operator if it persists."
                .to_owned(),
            cause: Some(cause.into()),
        }
    }

    /// 503: storage could not be reached.
    pub fn unavailable(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "storage_unavailable",
            message: "Storage did not answer; nothing was lost. Try again shortly.".to_owned(),
            cause: Some(cause.into()),
        }
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

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound { key } => {
                ApiError::not_found("not_found", format!("Nothing is stored at {key}."))
            }
            StorageError::AlreadyExists { key } => ApiError::conflict(
                "already_exists",
                format!("Something is already stored at {key}; it was left as it was."),
            ),
            StorageError::InvalidKey { key, reason } => {
                ApiError::bad_request("invalid_key", format!("Key {key:?} is refused: {reason}."))
            }
            StorageError::UploadNotFound { upload_id, .. } => ApiError::not_found(
                "upload_not_found",
                format!(
                    "Upload {upload_id} is not in progress (it was completed, aborted or never \
                     started). Start a new upload."
                ),
            ),
            StorageError::UploadBusy { upload_id, .. } => ApiError::conflict(
                "upload_busy",
                format!(
                    "Upload {upload_id} is being completed by another request right now. \
                     Ask again in a moment to learn the outcome."
                ),
            ),
            StorageError::InvalidPart(msg) => ApiError::bad_request("invalid_parts", msg),
            StorageError::TooLarge { limit } => ApiError::too_large(format!(
                "The body is larger than the {limit} bytes allowed here; nothing was stored."
            )),
            StorageError::Truncated { got, expected } => ApiError::bad_request(
                "truncated_body",
                format!(
                    "The body ended after {got} of {expected} bytes; nothing was stored. Send it again."
                ),
            ),
            StorageError::RangeNotSatisfiable { size } => ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("The requested range lies outside the object of {size} bytes."),
            ),
            e @ StorageError::Presign(_) => ApiError::internal(e),
            e @ StorageError::Backend { .. } => ApiError::unavailable(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(cause) = &self.cause {
            tracing::error!(status = self.status.as_u16(), code = self.code, error = %cause, "request failed");
        }
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}
