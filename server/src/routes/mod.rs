//! The HTTP routes: the API under `/api` ([`api`]), the old app's upload route
//! ([`legacy`]), and the extractors they share, which turn every malformed request into
//! the shared `{code, message}` error body instead of axum's plain-text rejections.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

pub mod api;
pub mod legacy;

/// Largest JSON body any API route accepts: 64 KiB.
pub const JSON_BODY_LIMIT: usize = 64 * 1024;

/// A JSON body, parsed with the shared error body on failure: `invalid_json` (not JSON),
/// `invalid_body` (JSON of the wrong shape, naming the field; or not a JSON object),
/// `invalid_id` (an id inside the body that breaks the id rules), `body_too_large`,
/// `unsupported_media_type` (no `Content-Type: application/json`).
///
/// Every API body is a JSON object. The body is read as JSON first and refused unless
/// it is an object, because serde would otherwise accept an array for a struct (its
/// fields in order), so that `[]` created a session.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let value = match axum::Json::<Value>::from_request(req, state).await {
            Ok(axum::Json(value)) => value,
            Err(rejection) => return Err(json_rejection(rejection)),
        };
        if !value.is_object() {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!(
                    "The body must be a JSON object such as {{\"metadata\": {{}}}}, not {}.",
                    json_kind(&value)
                ),
            ));
        }
        serde_path_to_error::deserialize(value)
            .map(ApiJson)
            .map_err(|e| body_error(&e.path().to_string(), &e.inner().to_string()))
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The kinds of id whose rules a body's field can break, as [`shared::IdError`] names
/// them at the start of its message.
const ID_KINDS: [&str; 3] = ["session id ", "problem id ", "recording id "];

/// The answer for a body of the right syntax but the wrong shape: which field
/// (`path`, `.` for the body itself), and serde's `problem` with it.
fn body_error(path: &str, problem: &str) -> ApiError {
    let problem = problem.trim_end_matches('.');
    // An id that breaks the id rules is `invalid_id`, wherever it comes from.
    if ID_KINDS.iter().any(|kind| problem.starts_with(kind)) {
        return ApiError::bad_request("invalid_id", format!("The body's {problem}."));
    }
    let at = match path {
        "." | "" => String::new(),
        path => format!(" at `{path}`"),
    };
    ApiError::bad_request(
        "invalid_body",
        format!(
            "The JSON body does not fit this route{at}: {problem}. See the README's API section for the fields it takes."
        ),
    )
}

/// The innermost cause of an error, which is the one that says what is wrong.
fn innermost(e: &dyn std::error::Error) -> String {
    let mut e = e;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
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
            format!(
                "The JSON body does not fit this route: {}.",
                innermost(&e).trim_end_matches('.')
            ),
        ),
        JsonRejection::JsonSyntaxError(e) => {
            let cause = innermost(&e);
            let message = if cause.starts_with("EOF while parsing a value at line 1 column 0") {
                "The body is empty; send a JSON object (at least `{}`).".to_owned()
            } else {
                format!(
                    "The body is not valid JSON ({}); send a JSON object.",
                    cause.trim_end_matches('.')
                )
            };
            ApiError::bad_request("invalid_json", message)
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send the body as JSON with `Content-Type: application/json`.",
        ),
        other if ApiError::is_body_timeout(&other) => ApiError::body_timeout(),
        other => ApiError::bad_request(
            "invalid_body",
            format!("The body could not be read: {}.", innermost(&other)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_error_is_recognised_as_one() {
        let errors = [
            shared::SessionId::parse("a/b").unwrap_err(),
            shared::SessionId::parse("").unwrap_err(),
            shared::ProblemId::parse(&"p".repeat(65)).unwrap_err(),
            shared::RecordingId::parse("r.1").unwrap_err(),
        ];
        for e in errors {
            let answer = body_error("problem_id", &e.to_string());
            assert_eq!(answer.code, "invalid_id", "{e}");
        }
        let answer = body_error("problem_id", "invalid type: integer `5`, expected a string");
        assert_eq!(answer.code, "invalid_body");
        assert!(
            answer.message.contains("at `problem_id`"),
            "{}",
            answer.message
        );
    }
}
