//! Calls to the recorder's server, with the shared request and response types.
//!
//! Every call carries `Authorization: Bearer <token>`. Error answers are read as the
//! shared [`ErrorBody`] so that the page can show the server's own sentence; calls the
//! upload depends on are retried on network errors and 5xx with the same backoff as
//! the parts.

use gloo_net::http::{Request, RequestBuilder, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shared::api::{
    AbortUploadRequest, CompleteUploadRequest, CreateSessionRequest, CreateSessionResponse,
    ErrorBody, PartSpec, PlaybackUrlResponse, PresignPartsRequest, PresignPartsResponse,
    RecordingResponse, SessionListResponse, StartUploadRequest, StartUploadResponse,
};
use shared::manifest::Metadata;
use shared::{ProblemId, RecordingId, SessionId, SessionManifest};

use crate::error::ClientError;
use crate::retry::{RetryPolicy, is_transient};
use crate::web;

/// A connection to the server: where it is and the bearer token to use.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
}

impl Api {
    /// The server at `base` (e.g. `https://rec.example.org`, or empty for the page's
    /// own origin), authenticating with `token` when given.
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.is_empty()),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authorized(&self, builder: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(token) => builder.header("Authorization", &format!("Bearer {token}")),
            None => builder,
        }
    }

    async fn send<T: DeserializeOwned>(&self, request: Request) -> Result<T, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::ServerUnreachable(e.to_string()))?;
        read(response).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let request = self
            .authorized(Request::get(&self.url(path)))
            .build()
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        self.send(request).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let request = self
            .authorized(Request::post(&self.url(path)))
            .json(body)
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        self.send(request).await
    }

    /// Posts, retrying network errors and transient statuses with backoff.
    async fn post_retrying<B: Serialize, T: DeserializeOwned>(
        &self,
        policy: &RetryPolicy,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let mut attempt = 0;
        loop {
            match self.post(path, body).await {
                Err(e) if is_retryable(&e) && attempt + 1 < retry_limit(policy, &e) => {
                    if !web::online() {
                        web::wait_online().await;
                    } else {
                        web::sleep_ms(policy.backoff_ms(attempt, web::random())).await;
                        attempt += 1;
                    }
                }
                other => return other,
            }
        }
    }

    /// `POST /api/sessions`.
    pub async fn create_session(
        &self,
        metadata: Metadata,
    ) -> Result<CreateSessionResponse, ClientError> {
        self.post("/api/sessions", &CreateSessionRequest { metadata })
            .await
    }

    /// `GET /api/sessions` (researchers).
    pub async fn list_sessions(&self) -> Result<SessionListResponse, ClientError> {
        self.get("/api/sessions").await
    }

    /// `GET /api/sessions/{id}`.
    pub async fn session(&self, session: &SessionId) -> Result<SessionManifest, ClientError> {
        self.get(&format!("/api/sessions/{session}")).await
    }

    /// `GET /api/sessions/{id}/recordings/{rid}/url?download=..` (researchers).
    pub async fn recording_url(
        &self,
        session: &SessionId,
        recording: &RecordingId,
        download: bool,
    ) -> Result<PlaybackUrlResponse, ClientError> {
        self.get(&format!(
            "/api/sessions/{session}/recordings/{recording}/url?download={download}"
        ))
        .await
    }

    /// `POST /api/sessions/{id}/uploads`.
    pub async fn start_upload(
        &self,
        policy: &RetryPolicy,
        session: &SessionId,
        problem: &ProblemId,
        content_type: &str,
    ) -> Result<StartUploadResponse, ClientError> {
        let content_type = shared::media::MediaType::parse(content_type).map_err(|e| {
            ClientError::NotSupported(format!("the browser records {content_type:?}: {e}"))
        })?;
        let body = StartUploadRequest {
            problem_id: problem.clone(),
            content_type,
        };
        self.post_retrying(policy, &format!("/api/sessions/{session}/uploads"), &body)
            .await
    }

    /// `POST /api/sessions/{id}/uploads/{rid}/parts`.
    pub async fn presign_parts(
        &self,
        policy: &RetryPolicy,
        session: &SessionId,
        recording: &RecordingId,
        upload: &str,
        parts: Vec<PartSpec>,
    ) -> Result<PresignPartsResponse, ClientError> {
        let body = PresignPartsRequest {
            upload: upload.to_owned(),
            parts,
        };
        let path = format!("/api/sessions/{session}/uploads/{recording}/parts");
        self.post_retrying(policy, &path, &body).await
    }

    /// `POST /api/sessions/{id}/uploads/{rid}/complete`.
    pub async fn complete(
        &self,
        policy: &RetryPolicy,
        session: &SessionId,
        recording: &RecordingId,
        body: &CompleteUploadRequest,
    ) -> Result<RecordingResponse, ClientError> {
        let path = format!("/api/sessions/{session}/uploads/{recording}/complete");
        self.post_retrying(policy, &path, body).await
    }

    /// `POST /api/sessions/{id}/uploads/{rid}/abort`.
    pub async fn abort(
        &self,
        session: &SessionId,
        recording: &RecordingId,
        upload: &str,
    ) -> Result<RecordingResponse, ClientError> {
        let path = format!("/api/sessions/{session}/uploads/{recording}/abort");
        let body = AbortUploadRequest {
            upload: upload.to_owned(),
        };
        self.post(&path, &body).await
    }
}

/// How many attempts a call failing with `e` gets: a server that does not answer at
/// all (restarting, or out of reach while the browser thinks it is online) is waited
/// for as long as a part's store is.
fn retry_limit(policy: &RetryPolicy, e: &ClientError) -> u32 {
    match e {
        ClientError::ServerUnreachable(_) => policy.max_unreachable_attempts,
        _ => policy.max_attempts,
    }
}

/// Whether a failed server call is worth repeating.
fn is_retryable(e: &ClientError) -> bool {
    match e {
        ClientError::ServerUnreachable(_) => true,
        ClientError::Server { status, .. } => is_transient(*status),
        _ => false,
    }
}

/// Reads a 2xx answer as `T`, anything else as the server's error.
async fn read<T: DeserializeOwned>(response: Response) -> Result<T, ClientError> {
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| ClientError::ServerUnreachable(e.to_string()))?;
    if (200..300).contains(&status) {
        serde_json::from_str(&text).map_err(|e| ClientError::Server {
            status,
            code: "unexpected_answer".into(),
            message: format!("the answer could not be read ({e})"),
        })
    } else {
        Err(server_error(status, &text))
    }
}

/// The error an answer with a non-2xx `status` and body `text` stands for.
pub fn server_error(status: u16, text: &str) -> ClientError {
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(body) => ClientError::Server {
            status,
            code: body.code,
            message: body.message,
        },
        Err(_) => ClientError::Server {
            status,
            code: "http_error".into(),
            message: if text.trim().is_empty() {
                format!("HTTP {status} without explanation")
            } else {
                text.trim().chars().take(300).collect()
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_carry_the_server_code_and_sentence() {
        let e = server_error(
            409,
            r#"{"code":"upload_closed","message":"This upload is already complete."}"#,
        );
        assert_eq!(
            e,
            ClientError::Server {
                status: 409,
                code: "upload_closed".into(),
                message: "This upload is already complete.".into()
            }
        );
        let plain = server_error(502, "Bad Gateway\n");
        assert!(plain.to_string().contains("Bad Gateway"));
        assert!(server_error(500, "").to_string().contains("HTTP 500"));
    }

    #[test]
    fn only_unreachable_servers_and_transient_statuses_are_retried() {
        assert!(is_retryable(&ClientError::ServerUnreachable("x".into())));
        assert!(is_retryable(&server_error(503, "")));
        assert!(!is_retryable(&server_error(400, "")));
        assert!(!is_retryable(&ClientError::PermissionDenied));
    }

    #[test]
    fn the_base_url_loses_its_trailing_slash_and_empty_tokens_are_none() {
        let api = Api::new("http://h:1/", Some(String::new()));
        assert_eq!(api.url("/api/sessions"), "http://h:1/api/sessions");
        assert!(api.token.is_none());
    }
}
