//! The old app's upload route, kept for its clients:
//! `POST /sessions/{session_id}/recording`, a multipart form with a `recording` file and
//! a `problem_id` field, in either order, answered with exactly
//! `{"ok": true, "path": ..., "size": N}`.
//!
//! Memory stays flat whatever the size. When `problem_id` comes first the file is
//! streamed straight into storage; when the file comes first it is spooled to an
//! anonymous temporary file (deleted by the OS when closed, even after a crash) and then
//! streamed into storage once the problem is known. The container is sniffed from the
//! first bytes (the old clients' content types cannot be trusted): anything but WebM,
//! MP4 or Ogg is 415 `not_media` and nothing is stored. More than `LEGACY_MAX_BYTES` is
//! 413 `too_large` and nothing is left behind.
//!
//! Who may call it is `LEGACY_UPLOAD_AUTH` (`open` as the old app, `token`, or `off`).

use std::io::SeekFrom;

use axum::Json;
use axum::Router;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use futures::StreamExt;
use shared::api::LegacyUploadResponse;
use shared::keys;
use shared::manifest::{Change, Metadata};
use shared::media::{Container, MediaType};
use shared::{ObjectKey, ProblemId, Recording, RecordingStatus, SessionId, SessionManifest};
use time::OffsetDateTime;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::app::AppState;
use crate::auth::{SessionParam, authorize_session, bearer};
use crate::config::LegacyUploadAuth;
use crate::error::ApiError;
use crate::storage::{ByteStream, StorageError};

/// Bytes needed to tell the containers apart.
const SNIFF_LEN: usize = 16;
/// Longest `problem_id` field read.
const MAX_PROBLEM_FIELD: usize = 256;
/// After refusing an upload, at most this much of the rest of the body is read and
/// thrown away so that the client, still sending, receives the answer instead of a
/// reset connection.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// The old upload route. Axum's default body limit must be disabled on it (the size cap
/// is `LEGACY_MAX_BYTES`, enforced while streaming).
pub fn router() -> Router<AppState> {
    Router::new().route("/sessions/{session_id}/recording", post(upload))
}

async fn upload(
    State(state): State<AppState>,
    SessionParam(session): SessionParam,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    match handle(state, session, headers, multipart).await {
        Ok(answer) => answer.into_response(),
        Err(e) => {
            // The rest of a refused body may be unread; the connection is then closed,
            // and the client must not send its next request on it.
            let mut res = e.into_response();
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            res
        }
    }
}

async fn handle(
    state: AppState,
    session: SessionId,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<LegacyUploadResponse>, ApiError> {
    match state.config.legacy_upload_auth {
        LegacyUploadAuth::Open => {}
        LegacyUploadAuth::Token => {
            let token = bearer(&headers)?;
            authorize_session(&state.secret, &state.researcher_token, &session, token)?;
        }
        LegacyUploadAuth::Off => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "legacy_disabled",
                "The old upload route is turned off on this server (LEGACY_UPLOAD_AUTH=off); \
                 use the /api upload routes.",
            ));
        }
    }
    let mut multipart = multipart.map_err(|e| {
        tracing::debug!("old upload route: not a multipart form: {}", e.body_text());
        ApiError::bad_request(
            "invalid_multipart",
            "Send a multipart/form-data body (`Content-Type: multipart/form-data; \
             boundary=...`) with the fields `recording` (the file) and `problem_id`.",
        )
    })?;
    if let Some(len) = content_length(&headers) {
        // The form's own framing adds a little; anything well past the cap is refused
        // before a byte is read.
        if len > state.config.legacy_max_bytes.saturating_add(64 * 1024) {
            return Err(too_large(state.config.legacy_max_bytes));
        }
    }
    let result = receive(&state, &session, &mut multipart).await;
    if result.is_err() {
        drain(&mut multipart).await;
    }
    Ok(Json(result?))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large(limit: u64) -> ApiError {
    ApiError::too_large(format!(
        "The recording is larger than the {limit} bytes this server accepts on this route \
         (LEGACY_MAX_BYTES); nothing was stored."
    ))
}

fn not_media() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "not_media",
        "The `recording` file is not a WebM, MP4 or Ogg recording; nothing was stored.",
    )
}

fn multipart_error(e: MultipartError) -> ApiError {
    if ApiError::is_body_timeout(&e) {
        return ApiError::body_timeout();
    }
    ApiError::bad_request(
        "invalid_multipart",
        format!("The multipart form could not be read: {}.", e.body_text()),
    )
}

fn missing(field: &str) -> ApiError {
    ApiError::bad_request(
        "missing_field",
        format!("The form has no `{field}` field; send `recording` (the file) and `problem_id`."),
    )
}

/// Reads and throws away what is left of the body, up to [`DRAIN_LIMIT`].
async fn drain(multipart: &mut Multipart) {
    let mut drained = 0u64;
    while let Ok(Some(mut field)) = multipart.next_field().await {
        while let Ok(Some(chunk)) = field.chunk().await {
            drained += chunk.len() as u64;
            if drained > DRAIN_LIMIT {
                return;
            }
        }
    }
}

/// A file spooled to disk because it came before `problem_id`.
struct Spooled {
    file: tokio::fs::File,
    container: Container,
    content_type: String,
}

/// What was stored.
struct Stored {
    key: ObjectKey,
    size: u64,
    content_type: String,
}

async fn receive(
    state: &AppState,
    session: &SessionId,
    multipart: &mut Multipart,
) -> Result<LegacyUploadResponse, ApiError> {
    // Refuses before a byte is stored if the session's manifest is corrupt.
    let manifest = state.manifests.load(session).await?;
    let max = state.config.legacy_max_bytes;
    let mut problem: Option<ProblemId> = None;
    let mut spooled: Option<Spooled> = None;
    let mut stored: Option<(Stored, ProblemId)> = None;

    let outcome: Result<(), ApiError> = async {
        while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
            match field.name() {
                Some("problem_id") => {
                    if problem.is_some() {
                        return Err(duplicate("problem_id"));
                    }
                    let p = read_problem(&mut field).await?;
                    if let Some(file) = spooled.take() {
                        let key = pick_key(state, session, &p, manifest.as_ref(), file.container);
                        stored = Some((store_spooled(state, key, file, max).await?, p.clone()));
                    }
                    problem = Some(p);
                }
                Some("recording") => {
                    if spooled.is_some() || stored.is_some() {
                        return Err(duplicate("recording"));
                    }
                    let content_type = field.content_type().map(str::to_owned);
                    let head = read_head(&mut field).await?;
                    let container = Container::sniff(&head).ok_or_else(not_media)?;
                    let content_type = content_type_for(content_type, container);
                    match &problem {
                        Some(p) => {
                            let key = pick_key(state, session, p, manifest.as_ref(), container);
                            let s =
                                stream_field(state, key, head, field, &content_type, max).await?;
                            stored = Some((s, p.clone()));
                        }
                        None => {
                            spooled =
                                Some(spool(head, &mut field, container, content_type, max).await?);
                        }
                    }
                }
                _ => while field.chunk().await.map_err(multipart_error)?.is_some() {},
            }
        }
        Ok(())
    }
    .await;

    if let Err(e) = outcome {
        if let Some((s, _)) = &stored {
            // The form broke after the file was stored: leave nothing behind.
            let _ = state.storage.delete(&s.key).await;
        }
        return Err(e);
    }
    let Some((stored, problem)) = stored else {
        return Err(missing(if spooled.is_some() {
            "problem_id"
        } else {
            "recording"
        }));
    };
    record(state, session, manifest.as_ref(), &stored, &problem).await?;
    Ok(LegacyUploadResponse {
        ok: true,
        path: state.storage.location(&stored.key),
        size: stored.size,
    })
}

fn duplicate(field: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_multipart",
        format!("The form has more than one `{field}` field."),
    )
}

/// The recorded content type: the part's own when it is a recording type of the sniffed
/// container, else the container's plain type.
fn content_type_for(given: Option<String>, container: Container) -> String {
    given
        .and_then(|t| MediaType::parse(&t).ok())
        .filter(|t| t.container() == container)
        .map(|t| t.as_str().to_owned())
        .unwrap_or_else(|| container.default_content_type(true).to_owned())
}

async fn read_problem(field: &mut Field<'_>) -> Result<ProblemId, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_PROBLEM_FIELD {
            break;
        }
    }
    let text = std::str::from_utf8(&bytes).unwrap_or("\u{fffd}");
    ProblemId::parse(text.trim())
        .map_err(|e| ApiError::bad_request("invalid_id", format!("problem_id: {e}.")))
}

/// Reads chunks until at least [`SNIFF_LEN`] bytes (or the whole field) are in hand.
async fn read_head(field: &mut Field<'_>) -> Result<Vec<u8>, ApiError> {
    let mut head = Vec::new();
    while head.len() < SNIFF_LEN {
        match field.chunk().await.map_err(multipart_error)? {
            Some(chunk) => head.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok(head)
}

/// The key for a new recording of `problem`: `recording_{problem}_{ms}.{ext}` for the
/// first millisecond from now whose id the session does not have yet.
fn pick_key(
    state: &AppState,
    session: &SessionId,
    problem: &ProblemId,
    manifest: Option<&SessionManifest>,
    container: Container,
) -> ObjectKey {
    let mut ms = state
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    loop {
        let id = keys::recording_id(problem, ms);
        if manifest.is_none_or(|m| m.recording(&id).is_none()) {
            return keys::recording_key(session, &id, container);
        }
        ms += 1;
    }
}

/// Streams the rest of `field` (after `head`) straight into storage. The field borrows
/// the request, so it is pumped through a small channel on this task while storage
/// consumes the other end: at most a few chunks are in memory at once.
async fn stream_field(
    state: &AppState,
    key: ObjectKey,
    head: Vec<u8>,
    mut field: Field<'_>,
    content_type: &str,
    max: u64,
) -> Result<Stored, ApiError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body: ByteStream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed();
    let pump = async move {
        if tx.send(Ok(Bytes::from(head))).await.is_err() {
            return Ok(());
        }
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    if tx.send(Ok(chunk)).await.is_err() {
                        // Storage stopped reading (it refused the body).
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    let api = multipart_error(e);
                    let _ = tx
                        .send(Err(std::io::Error::other(api.message.clone())))
                        .await;
                    return Err(api);
                }
            }
        }
    };
    let (put, pumped) = tokio::join!(
        state.storage.put_stream(&key, body, content_type, max),
        pump
    );
    pumped?;
    let meta = put.map_err(|e| storage_error(e, max))?;
    Ok(Stored {
        key,
        size: meta.size,
        content_type: content_type.to_owned(),
    })
}

fn storage_error(e: StorageError, max: u64) -> ApiError {
    match e {
        StorageError::TooLarge { .. } => too_large(max),
        other => other.into(),
    }
}

/// Writes the field to an anonymous temporary file, refusing it past `max` bytes.
async fn spool(
    head: Vec<u8>,
    field: &mut Field<'_>,
    container: Container,
    content_type: String,
    max: u64,
) -> Result<Spooled, ApiError> {
    let file = tempfile::tempfile().map_err(ApiError::internal)?;
    let mut file = tokio::fs::File::from_std(file);
    let mut size = head.len() as u64;
    if size > max {
        return Err(too_large(max));
    }
    file.write_all(&head).await.map_err(ApiError::internal)?;
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        size += chunk.len() as u64;
        if size > max {
            return Err(too_large(max));
        }
        file.write_all(&chunk).await.map_err(ApiError::internal)?;
    }
    file.flush().await.map_err(ApiError::internal)?;
    file.seek(SeekFrom::Start(0))
        .await
        .map_err(ApiError::internal)?;
    Ok(Spooled {
        file,
        container,
        content_type,
    })
}

async fn store_spooled(
    state: &AppState,
    key: ObjectKey,
    spooled: Spooled,
    max: u64,
) -> Result<Stored, ApiError> {
    let body: ByteStream = tokio_util::io::ReaderStream::new(spooled.file).boxed();
    let meta = state
        .storage
        .put_stream(&key, body, &spooled.content_type, max)
        .await
        .map_err(|e| storage_error(e, max))?;
    Ok(Stored {
        key,
        size: meta.size,
        content_type: spooled.content_type,
    })
}

/// Adds the stored recording to the manifest as complete, creating the session first if
/// it had nothing yet (old clients never called create).
async fn record(
    state: &AppState,
    session: &SessionId,
    manifest: Option<&SessionManifest>,
    stored: &Stored,
    problem: &ProblemId,
) -> Result<(), ApiError> {
    let now = OffsetDateTime::from(state.now());
    if manifest.is_none() {
        let created = Change::Created {
            metadata: Metadata::default(),
        };
        state.manifests.record(session, created, now).await?;
    }
    let id = keys::parse_recording_name(stored.key.file_name())
        .map(|n| n.id)
        .ok_or_else(|| ApiError::internal(format!("{} is not a recording name", stored.key)))?;
    let entry = Recording {
        id,
        problem_id: Some(problem.clone()),
        key: stored.key.clone(),
        content_type: stored.content_type.clone(),
        size: Some(stored.size),
        duration_ms: None,
        started_at: Some(now),
        finished_at: Some(now),
        status: RecordingStatus::Complete,
        sha256: None,
        upload_id: None,
        error: None,
        discovered: false,
        extra: Default::default(),
    };
    state
        .manifests
        .record(session, Change::Recording { recording: entry }, now)
        .await?;
    Ok(())
}
