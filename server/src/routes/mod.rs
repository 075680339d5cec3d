//! The HTTP routes: the API under `/api` ([`api`]), the old app's upload route
//! ([`legacy`]), and the extractors they share, which turn every malformed request into
//! the shared `{code, message}` error body instead of axum's plain-text rejections.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub mod api;
pub mod legacy;

/// Largest JSON body any API route accepts: 64 KiB.
pub const JSON_BODY_LIMIT: usize = 64 * 1024;

/// A JSON body, parsed with the shared error body on failure: `invalid_json` (not JSON),
/// `invalid_body` (JSON of the wrong shape, naming the field), `body_too_large`,
/// `unsupported_media_type` (no `Content-Type: application/json`).
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// Maps axum's JSON rejections onto the API's codes.
pub fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("The body is larger than the {JSON_BODY_LIMIT} bytes allowed here."),
        );
    }
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::bad_request(
            "invalid_body",
            format!("The JSON body does not fit this route: {}.", e.body_text()),
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(
            "invalid_json",
            format!("The body is not valid JSON: {}.", e.body_text()),
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send the body as JSON with `Content-Type: application/json`.",
        ),
        other => ApiError::bad_request(
            "invalid_body",
            format!("The body could not be read: {}.", other.body_text()),
        ),
    }
}

/// A query string, parsed with the shared error body (`invalid_query`) on failure.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request(
        "invalid_query",
        format!(
            "The query string is not valid here: {}.",
            rejection.body_text()
        ),
    )
}

/// The answer for any `/api/...` path that names no route.
pub async fn api_not_found() -> ApiError {
    ApiError::not_found(
        "no_such_route",
        "No API route has this path; see the README's API section.",
    )
}
