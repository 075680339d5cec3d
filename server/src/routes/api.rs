//! The JSON API under `/api` (the README's API section documents every route with
//! examples). Handlers only extract and answer; the work is in the plain async
//! functions below them, which take the state, validated inputs and "now".
//!
//! Every path id is parsed into its newtype by an extractor ([`SessionParam`],
//! [`RecordingParam`], [`SessionAuth`]) before anything else happens, so a bad id is a
//! 400 `invalid_id` that has touched nothing.

use std::collections::BTreeSet;
use std::time::SystemTime;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{any, get, patch, post};
use futures::StreamExt;
use serde::Deserialize;
use shared::api::{
    AbortUploadRequest, CompleteUploadRequest, CreateSessionRequest, CreateSessionResponse,
    PartSpec, PlaybackUrlResponse, PresignPartsRequest, PresignPartsResponse, PresignedPart,
    RecordingResponse, SessionListResponse, SessionTokenResponse, StartUploadRequest,
    StartUploadResponse, UpdateMetadataRequest,
};
use shared::keys;
use shared::manifest::{Change, Metadata};
use shared::{
    MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, ObjectKey, Recording, RecordingId, RecordingStatus,
    SessionId, SessionManifest,
};
use time::OffsetDateTime;

use super::{ApiJson, ApiQuery, api_not_found};
use crate::app::AppState;
use crate::auth::{
    RecordingParam, ResearcherAuth, SessionAuth, SessionParam, UploadHandle, session_token,
};
use crate::error::ApiError;
use crate::storage::{PartInfo, PresignOp, StorageError, check_part_sequence};

/// Most parts one presign call may ask for.
pub const MAX_PARTS_PER_REQUEST: u32 = 100;
/// Longest `study` or `participant` value, in bytes.
pub const MAX_METADATA_TEXT: usize = 256;
/// Most further metadata fields.
pub const MAX_METADATA_FIELDS: usize = 32;
/// Longest further field name, in bytes.
pub const MAX_METADATA_KEY: usize = 64;
/// Largest metadata object, serialised, in bytes.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;

/// The `/api` routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/sessions", post(create_session).get(list_sessions))
        .route("/api/sessions/{session_id}", get(get_session))
        .route(
            "/api/sessions/{session_id}/metadata",
            patch(update_metadata),
        )
        .route("/api/sessions/{session_id}/token", post(issue_token))
        .route("/api/sessions/{session_id}/uploads", post(start_upload))
        .route(
            "/api/sessions/{session_id}/uploads/{recording_id}/parts",
            post(presign_parts),
        )
        .route(
            "/api/sessions/{session_id}/uploads/{recording_id}/complete",
            post(complete_upload),
        )
        .route(
            "/api/sessions/{session_id}/uploads/{recording_id}/abort",
            post(abort_upload),
        )
        .route(
            "/api/sessions/{session_id}/recordings/{recording_id}/url",
            get(playback_url),
        )
        .route("/api", any(api_not_found))
        .route("/api/{*rest}", any(api_not_found))
}

fn utc(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn session_not_found(session: &SessionId) -> ApiError {
    ApiError::not_found(
        "session_not_found",
        format!("There is no session {session}."),
    )
}

// ---------------------------------------------------------------------------------------
// Sessions

/// A fresh session id: 16 random bytes, base64url (22 characters of `[A-Za-z0-9_-]`).
pub fn new_session_id() -> SessionId {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    SessionId::parse(&text).expect("base64url text is a valid session id")
}

/// Checks one change's metadata against the documented bounds (400
/// `invalid_metadata`).
pub fn check_metadata(metadata: &Metadata) -> Result<(), ApiError> {
    let bad = |msg: String| ApiError::bad_request("invalid_metadata", msg);
    for (name, value) in [
        ("study", &metadata.study),
        ("participant", &metadata.participant),
    ] {
        if value.as_ref().is_some_and(|v| v.len() > MAX_METADATA_TEXT) {
            return Err(bad(format!(
                "`metadata.{name}` must be at most {MAX_METADATA_TEXT} bytes."
            )));
        }
    }
    if metadata.extra.len() > MAX_METADATA_FIELDS {
        return Err(bad(format!(
            "The metadata has {} further fields; at most {MAX_METADATA_FIELDS} are allowed.",
            metadata.extra.len()
        )));
    }
    if let Some(k) = metadata
        .extra
        .keys()
        .find(|k| k.is_empty() || k.len() > MAX_METADATA_KEY)
    {
        return Err(bad(format!(
            "The metadata field name {k:?} must be 1 to {MAX_METADATA_KEY} bytes."
        )));
    }
    let size = metadata_size(metadata);
    if size > MAX_METADATA_BYTES {
        return Err(bad(format!(
            "The metadata is {size} bytes as JSON; at most {MAX_METADATA_BYTES} are allowed."
        )));
    }
    Ok(())
}

fn metadata_size(metadata: &Metadata) -> usize {
    serde_json::to_vec(metadata)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

/// Checks that overlaying `change` on a session's `current` metadata keeps the result
/// within the same bounds as one change (400 `metadata_too_large`), so that repeated
/// updates cannot grow it without limit. A change that does not make an oversized
/// result (kept from before these bounds) larger is let through.
pub fn check_merged_metadata(current: &Metadata, change: &Metadata) -> Result<(), ApiError> {
    let mut merged = current.clone();
    merged.merge(change);
    let too_large = |msg: String| {
        ApiError::bad_request(
            "metadata_too_large",
            format!(
                "{msg} Change existing fields instead of adding new ones, or keep longer \
                 notes elsewhere."
            ),
        )
    };
    let (fields, before) = (merged.extra.len(), current.extra.len());
    if fields > MAX_METADATA_FIELDS && fields > before {
        return Err(too_large(format!(
            "With this change the session's metadata would have {fields} further fields; \
             at most {MAX_METADATA_FIELDS} are kept per session."
        )));
    }
    let (size, before) = (metadata_size(&merged), metadata_size(current));
    if size > MAX_METADATA_BYTES && size > before {
        return Err(too_large(format!(
            "With this change the session's metadata would be {size} bytes as JSON; at most \
             {MAX_METADATA_BYTES} are kept per session."
        )));
    }
    Ok(())
}

async fn create_session(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateSessionRequest>,
) -> Result<(StatusCode, Json<CreateSessionResponse>), ApiError> {
    check_metadata(&req.metadata)?;
    let session = new_session_id();
    let manifest = state
        .manifests
        .record(
            &session,
            Change::Created {
                metadata: req.metadata,
            },
            utc(state.now()),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateSessionResponse {
            token: session_token(&state.secret, &session),
            session_id: session,
            manifest,
        }),
    ))
}

async fn get_session(
    State(state): State<AppState>,
    auth: SessionAuth,
) -> Result<Json<SessionManifest>, ApiError> {
    state
        .manifests
        .load(&auth.session)
        .await?
        .map(Json)
        .ok_or_else(|| session_not_found(&auth.session))
}

async fn update_metadata(
    State(state): State<AppState>,
    auth: SessionAuth,
    ApiJson(req): ApiJson<UpdateMetadataRequest>,
) -> Result<Json<SessionManifest>, ApiError> {
    check_metadata(&req.metadata)?;
    let current = state
        .manifests
        .load(&auth.session)
        .await?
        .ok_or_else(|| session_not_found(&auth.session))?;
    check_merged_metadata(&current.metadata, &req.metadata)?;
    let change = Change::Metadata {
        metadata: req.metadata,
    };
    Ok(Json(
        state
            .manifests
            .record(&auth.session, change, utc(state.now()))
            .await?,
    ))
}

async fn issue_token(
    State(state): State<AppState>,
    SessionParam(session): SessionParam,
    _: ResearcherAuth,
) -> Result<Json<SessionTokenResponse>, ApiError> {
    if !state.manifests.exists(&session).await? {
        return Err(session_not_found(&session));
    }
    Ok(Json(SessionTokenResponse {
        token: session_token(&state.secret, &session),
        session_id: session,
    }))
}

async fn list_sessions(
    State(state): State<AppState>,
    _: ResearcherAuth,
) -> Result<Json<SessionListResponse>, ApiError> {
    Ok(Json(SessionListResponse {
        sessions: state.manifests.list().await?,
    }))
}

// ---------------------------------------------------------------------------------------
// Uploads

/// Removes a recording id from the in-process "being opened" set when dropped.
struct Opening<'a> {
    state: &'a AppState,
    entry: (SessionId, RecordingId),
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        let mut set = self.state.opening.lock().unwrap_or_else(|e| e.into_inner());
        set.remove(&self.entry);
    }
}

/// Picks `recording_{problem}_{ms}` for the first millisecond from `now_ms` on whose id
/// is neither in the manifest nor being opened in this process, and holds it until the
/// returned guard is dropped.
fn reserve_recording_id<'a>(
    state: &'a AppState,
    session: &SessionId,
    problem: &shared::ProblemId,
    manifest: Option<&SessionManifest>,
    now_ms: u64,
) -> (RecordingId, Opening<'a>) {
    let mut set = state.opening.lock().unwrap_or_else(|e| e.into_inner());
    let mut ms = now_ms;
    loop {
        let id = keys::recording_id(problem, ms);
        let entry = (session.clone(), id.clone());
        let taken = manifest.is_some_and(|m| m.recording(&id).is_some()) || set.contains(&entry);
        if !taken {
            set.insert(entry.clone());
            return (id, Opening { state, entry });
        }
        ms += 1;
    }
}

/// Opens a multipart upload for a new recording and records it as `uploading`.
pub async fn start(
    state: &AppState,
    session: &SessionId,
    req: StartUploadRequest,
    now: SystemTime,
) -> Result<StartUploadResponse, ApiError> {
    let manifest = state
        .manifests
        .load(session)
        .await?
        .ok_or_else(|| session_not_found(session))?;
    let (recording_id, _opening) = reserve_recording_id(
        state,
        session,
        &req.problem_id,
        Some(&manifest),
        unix_ms(now),
    );
    let container = req.content_type.container();
    let key = keys::recording_key(session, &recording_id, container);
    let upload_id = state
        .storage
        .create_multipart(&key, req.content_type.as_str())
        .await?;
    let entry = Recording {
        id: recording_id.clone(),
        problem_id: Some(req.problem_id),
        key: key.clone(),
        content_type: req.content_type.as_str().to_owned(),
        size: None,
        duration_ms: None,
        started_at: Some(utc(now)),
        finished_at: None,
        status: RecordingStatus::Uploading,
        sha256: None,
        upload_id: Some(upload_id.clone()),
        error: None,
        discovered: false,
        extra: Default::default(),
    };
    state
        .manifests
        .record(session, Change::Recording { recording: entry }, utc(now))
        .await?;
    let handle = UploadHandle {
        session: session.clone(),
        recording: recording_id.clone(),
        key: key.clone(),
        upload_id,
        content_type: req.content_type,
    };
    Ok(StartUploadResponse {
        recording_id,
        key,
        upload: handle.sign(&state.secret),
        min_part_size: MIN_PART_SIZE,
        max_part_size: MAX_PART_SIZE,
        max_parts: MAX_PARTS,
        max_parts_per_request: MAX_PARTS_PER_REQUEST,
    })
}

async fn start_upload(
    State(state): State<AppState>,
    auth: SessionAuth,
    ApiJson(req): ApiJson<StartUploadRequest>,
) -> Result<(StatusCode, Json<StartUploadResponse>), ApiError> {
    let answer = start(&state, &auth.session, req, state.now()).await?;
    Ok((StatusCode::CREATED, Json(answer)))
}

/// Checks the parts a client asks to presign: 1 to [`MAX_PARTS_PER_REQUEST`] of them,
/// numbers 1..=[`MAX_PARTS`] without repeats, sizes 1..=[`MAX_PART_SIZE`]
/// (400 `invalid_parts`).
pub fn check_presign_parts(parts: &[PartSpec]) -> Result<(), ApiError> {
    let bad = |msg: String| ApiError::bad_request("invalid_parts", msg);
    if parts.is_empty() || parts.len() > MAX_PARTS_PER_REQUEST as usize {
        return Err(bad(format!(
            "Ask for 1 to {MAX_PARTS_PER_REQUEST} parts per call, not {}; split the list into several calls.",
            parts.len()
        )));
    }
    let mut seen = BTreeSet::new();
    for p in parts {
        if !(1..=MAX_PARTS).contains(&p.part_number) {
            return Err(bad(format!(
                "Part number {} is outside 1 to {MAX_PARTS}; number parts from 1.",
                p.part_number
            )));
        }
        if !(1..=MAX_PART_SIZE).contains(&p.size) {
            return Err(bad(format!(
                "Part {} has size {}; a part must be 1 to {MAX_PART_SIZE} bytes.",
                p.part_number, p.size
            )));
        }
        if !seen.insert(p.part_number) {
            return Err(bad(format!(
                "Part {} is asked for twice; list each part once.",
                p.part_number
            )));
        }
    }
    Ok(())
}

/// Presigns part uploads. Pure computation: no storage reads.
pub async fn presign(
    state: &AppState,
    handle: &UploadHandle,
    parts: &[PartSpec],
    now: SystemTime,
) -> Result<PresignPartsResponse, ApiError> {
    check_presign_parts(parts)?;
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        let op = PresignOp::UploadPart {
            key: handle.key.clone(),
            upload_id: handle.upload_id.clone(),
            part_number: p.part_number,
            size: p.size,
        };
        let request = state
            .storage
            .presign(&op, now, state.config.url_ttl)
            .await?;
        out.push(PresignedPart {
            part_number: p.part_number,
            request,
        });
    }
    Ok(PresignPartsResponse { parts: out })
}

async fn presign_parts(
    State(state): State<AppState>,
    RecordingParam(recording): RecordingParam,
    auth: SessionAuth,
    ApiJson(req): ApiJson<PresignPartsRequest>,
) -> Result<Json<PresignPartsResponse>, ApiError> {
    let handle = UploadHandle::verify(&state.secret, &req.upload, &auth.session, &recording)?;
    Ok(Json(
        presign(&state, &handle, &req.parts, state.now()).await?,
    ))
}

/// The first difference between the parts the client says it sent and the parts the
/// store holds, as a sentence; `None` when they match exactly.
pub fn parts_difference(client: &[PartSpec], stored: &[PartInfo]) -> Option<String> {
    let mut client: Vec<PartSpec> = client.to_vec();
    client.sort_by_key(|p| p.part_number);
    let mut c = client.iter().peekable();
    let mut s = stored.iter().peekable();
    loop {
        match (c.peek(), s.peek()) {
            (None, None) => return None,
            (Some(cp), None) => {
                return Some(format!(
                    "part {} is listed by the client but the store holds no such part",
                    cp.part_number
                ));
            }
            (None, Some(sp)) => {
                return Some(format!(
                    "the store holds part {} ({} bytes), which the client did not list",
                    sp.part_number, sp.size
                ));
            }
            (Some(cp), Some(sp)) if cp.part_number < sp.part_number => {
                return Some(format!(
                    "part {} is listed by the client but the store holds no such part",
                    cp.part_number
                ));
            }
            (Some(cp), Some(sp)) if cp.part_number > sp.part_number => {
                return Some(format!(
                    "the store holds part {} ({} bytes), which the client did not list",
                    sp.part_number, sp.size
                ));
            }
            (Some(cp), Some(sp)) => {
                if cp.size != sp.size {
                    return Some(format!(
                        "part {}: the client sent {} bytes, the store holds {}",
                        cp.part_number, cp.size, sp.size
                    ));
                }
                c.next();
                s.next();
            }
        }
    }
}

/// Checks a client's SHA-256: 64 lowercase hex digits (400 `invalid_sha256`).
pub fn check_sha256(sha: Option<&str>) -> Result<(), ApiError> {
    match sha {
        Some(s) if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Err(ApiError::bad_request(
                "invalid_sha256",
                "`sha256` must be 64 lowercase hexadecimal digits (the hex SHA-256 of the whole \
                 recording); send it so, or leave it out.",
            ))
        }
        _ => Ok(()),
    }
}

/// The entry for `handle`'s recording as it stands at `now` with `status`.
fn entry_for(handle: &UploadHandle, status: RecordingStatus, now: SystemTime) -> Recording {
    let file_name = handle.key.file_name();
    let problem_id = keys::parse_recording_name(file_name).and_then(|n| n.problem);
    Recording {
        id: handle.recording.clone(),
        problem_id,
        key: handle.key.clone(),
        content_type: handle.content_type.as_str().to_owned(),
        size: None,
        duration_ms: None,
        started_at: None,
        finished_at: status.is_final().then(|| utc(now)),
        status,
        sha256: None,
        upload_id: None,
        error: None,
        discovered: false,
        extra: Default::default(),
    }
}

async fn record_entry(
    state: &AppState,
    session: &SessionId,
    entry: Recording,
    now: SystemTime,
) -> Result<Recording, ApiError> {
    let id = entry.id.clone();
    let manifest = state
        .manifests
        .record(session, Change::Recording { recording: entry }, utc(now))
        .await?;
    manifest
        .recording(&id)
        .cloned()
        .ok_or_else(|| ApiError::internal(format!("recording {id} missing after it was recorded")))
}

/// The first bytes of an object (up to 16).
async fn head_bytes(state: &AppState, key: &ObjectKey) -> Result<Vec<u8>, ApiError> {
    let mut got = state.storage.get_range(key, Some(0..16)).await?;
    let mut head = Vec::with_capacity(16);
    while let Some(chunk) = got.body.next().await {
        let chunk = chunk.map_err(StorageError::backend)?;
        head.extend_from_slice(&chunk);
        if head.len() >= 16 {
            break;
        }
    }
    head.truncate(16);
    Ok(head)
}

/// Completes an upload after checking what the store holds; idempotent.
pub async fn complete(
    state: &AppState,
    handle: &UploadHandle,
    req: &CompleteUploadRequest,
    now: SystemTime,
) -> Result<Recording, ApiError> {
    check_sha256(req.sha256.as_deref())?;
    let mut listed = BTreeSet::new();
    if let Some(twice) = req.parts.iter().find(|p| !listed.insert(p.part_number)) {
        return Err(ApiError::bad_request(
            "invalid_parts",
            format!(
                "Part {} is listed twice; list each part you uploaded once, then complete again.",
                twice.part_number
            ),
        ));
    }
    let session = &handle.session;
    let stored = match state
        .storage
        .list_parts(&handle.key, &handle.upload_id)
        .await
    {
        Ok(parts) => parts,
        Err(StorageError::UploadNotFound { .. }) => {
            return complete_again(state, handle, req, now).await;
        }
        Err(e) => return Err(e.into()),
    };
    if req.parts.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_parts",
            "The complete request lists no parts. List the parts you uploaded (each one's \
             `part_number` and `size`), then complete again.",
        ));
    }
    if let Some(diff) = parts_difference(&req.parts, &stored) {
        // What to do depends on the side that lacks a part.
        let next = if diff.contains("which the client did not list") {
            "List every part you uploaded, then complete again."
        } else if diff.contains("the store holds no such part") {
            "Upload the missing parts, then complete again."
        } else {
            "Upload that part again, then complete again."
        };
        return Err(ApiError::conflict(
            "parts_mismatch",
            format!("The parts do not match what the store holds: {diff}. {next}"),
        ));
    }
    check_part_sequence(&stored)?;
    let meta = match state
        .storage
        .complete_multipart(&handle.key, &handle.upload_id, &stored)
        .await
    {
        Ok(meta) => meta,
        // Another request (a client retry) completed it meanwhile.
        Err(StorageError::UploadNotFound { .. }) => {
            return complete_again(state, handle, req, now).await;
        }
        Err(e) => return Err(e.into()),
    };
    let expected: u64 = stored.iter().map(|p| p.size).sum();
    verify_and_record(state, handle, req, meta.size, expected, now)
        .await
        .map_err(|e| {
            tracing::debug!(%session, recording = %handle.recording, "complete refused: {e}");
            e
        })
}

/// How a repeated complete differs from the one that completed `entry` (a retry sends
/// the same parts and hash; anything else must not be answered "complete").
fn repeat_difference(entry: &Recording, req: &CompleteUploadRequest) -> Option<String> {
    let listed: u64 = req.parts.iter().map(|p| p.size).sum();
    if entry.size != Some(listed) {
        return Some(format!(
            "it holds {} bytes and this request lists {listed}",
            entry.size.unwrap_or(0)
        ));
    }
    match (&entry.sha256, &req.sha256) {
        (Some(stored), Some(sent)) if stored != sent => Some(format!(
            "its SHA-256 is {stored} and this request says {sent}"
        )),
        (None, Some(_)) => Some(
            "it was completed without a SHA-256 and this request sends one, which cannot be \
             checked now"
                .to_owned(),
        ),
        _ => None,
    }
}

/// The store holds no upload any more: the recording was completed (by an earlier call
/// whose answer the client did not get), aborted, or never existed.
async fn complete_again(
    state: &AppState,
    handle: &UploadHandle,
    req: &CompleteUploadRequest,
    now: SystemTime,
) -> Result<Recording, ApiError> {
    let manifest = state.manifests.load(&handle.session).await?;
    let entry = manifest
        .as_ref()
        .and_then(|m| m.recording(&handle.recording));
    match entry.map(|e| e.status) {
        Some(RecordingStatus::Complete) => {
            let entry = entry.expect("matched above");
            return match repeat_difference(entry, req) {
                None => Ok(entry.clone()),
                Some(diff) => Err(ApiError::conflict(
                    "already_complete",
                    format!(
                        "Recording {} is already complete, but {diff}; the stored recording \
                         was kept as it is. To store other bytes, start a new upload.",
                        handle.recording
                    ),
                )),
            };
        }
        Some(RecordingStatus::Aborted | RecordingStatus::Failed) => {
            return Err(ApiError::conflict(
                "upload_ended",
                format!(
                    "Recording {} ended as {}; start a new upload.",
                    handle.recording,
                    shared::api::status_name(entry.expect("matched above").status)
                ),
            ));
        }
        // The janitor salvaged the upload while the client was away. If it kept every
        // part the client lists, the recording is in fact complete; otherwise the
        // salvaged object must not be judged (and deleted) by this client's sizes.
        Some(RecordingStatus::Partial) => {
            let expected: u64 = req.parts.iter().map(|p| p.size).sum();
            let salvaged = entry.and_then(|e| e.size);
            if salvaged != Some(expected) {
                return Err(ApiError::conflict(
                    "upload_ended",
                    format!(
                        "Recording {} was abandoned and salvaged as partial ({} bytes kept); \
                         start a new upload.",
                        handle.recording,
                        salvaged.unwrap_or(0)
                    ),
                ));
            }
        }
        _ => {}
    }
    // Completed in the store, but the manifest was not updated (the process stopped in
    // between, or a concurrent retry is about to): verify the object and record it.
    let expected: u64 = req.parts.iter().map(|p| p.size).sum();
    match state.storage.head(&handle.key).await {
        Ok(meta) => verify_and_record(state, handle, req, meta.size, expected, now).await,
        // Nothing was stored from the upload this recording started with: it was
        // aborted (perhaps by a cancel racing this complete, which records it a moment
        // later) or cleaned up.
        Err(StorageError::NotFound { .. })
            if entry.and_then(|e| e.upload_id.as_deref()) == Some(handle.upload_id.as_str()) =>
        {
            Err(ApiError::conflict(
                "upload_ended",
                format!(
                    "Recording {} was aborted (cancelled, or abandoned and cleaned up); \
                     nothing was kept. Start a new upload.",
                    handle.recording
                ),
            ))
        }
        Err(StorageError::NotFound { .. }) => Err(ApiError::not_found(
            "upload_not_found",
            format!(
                "The store has no upload {} for recording {}; it was never started. Start \
                 a new upload.",
                handle.upload_id, handle.recording
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Whether this server holds the bytes itself (the local folder, or memory in tests),
/// so that hashing a recording costs a read of the disk and no transfer. On S3 it would
/// pull every byte through the server, which the design avoids: there the client's
/// `sha256` is recorded as the client's claim, unverified.
fn hashes_locally(state: &AppState) -> bool {
    matches!(state.storage.kind(), "local" | "memory")
}

/// The SHA-256 of a stored object, as lowercase hex, read as a stream.
async fn object_sha256(state: &AppState, key: &ObjectKey) -> Result<String, ApiError> {
    use sha2::Digest;
    let mut got = state.storage.get_range(key, None).await?;
    let mut hasher = sha2::Sha256::new();
    while let Some(chunk) = got.body.next().await {
        hasher.update(chunk.map_err(StorageError::backend)?);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks the assembled object's magic bytes and size (and, where the server holds the
/// bytes, the client's SHA-256), then records the outcome.
async fn verify_and_record(
    state: &AppState,
    handle: &UploadHandle,
    req: &CompleteUploadRequest,
    size: u64,
    expected: u64,
    now: SystemTime,
) -> Result<Recording, ApiError> {
    let container = handle.content_type.container();
    let head = head_bytes(state, &handle.key).await?;
    let problem = if !container.matches_magic(&head) {
        Some((
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_media",
            format!(
                "The uploaded bytes do not start like a {} file; the object was deleted.",
                container.extension()
            ),
        ))
    } else if size != expected {
        Some((
            StatusCode::CONFLICT,
            "size_mismatch",
            format!(
                "The assembled object is {size} bytes but the parts add up to {expected}; the \
                 object was deleted."
            ),
        ))
    } else {
        match req.sha256.as_deref() {
            Some(claimed) if hashes_locally(state) => {
                let actual = object_sha256(state, &handle.key).await?;
                (actual != claimed).then(|| {
                    (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "checksum_mismatch",
                        format!(
                            "The stored bytes have SHA-256 {actual}, not the {claimed} the \
                             client sent; the object was deleted."
                        ),
                    )
                })
            }
            _ => None,
        }
    };
    if let Some((status, code, message)) = problem {
        state.storage.delete(&handle.key).await?;
        let mut entry = entry_for(handle, RecordingStatus::Failed, now);
        entry.error = Some(message.clone());
        record_entry(state, &handle.session, entry, now).await?;
        return Err(ApiError::new(status, code, message));
    }
    let mut entry = entry_for(handle, RecordingStatus::Complete, now);
    entry.size = Some(size);
    entry.sha256.clone_from(&req.sha256);
    entry.duration_ms = req.duration_ms;
    record_entry(state, &handle.session, entry, now).await
}

async fn complete_upload(
    State(state): State<AppState>,
    RecordingParam(recording): RecordingParam,
    auth: SessionAuth,
    ApiJson(req): ApiJson<CompleteUploadRequest>,
) -> Result<Json<RecordingResponse>, ApiError> {
    let handle = UploadHandle::verify(&state.secret, &req.upload, &auth.session, &recording)?;
    let recording = complete(&state, &handle, &req, state.now()).await?;
    Ok(Json(RecordingResponse { recording }))
}

/// 409 `already_complete`: the recording is kept, so it is not aborted.
fn kept(handle: &UploadHandle, status: Option<RecordingStatus>) -> ApiError {
    let how = match status {
        Some(RecordingStatus::Partial) => "was salvaged as a partial recording and is kept",
        Some(RecordingStatus::Complete) => "is complete",
        // The object is stored but the complete that stored it has not recorded it yet.
        _ => "has been completed (its upload was assembled and stored)",
    };
    ApiError::conflict(
        "already_complete",
        format!(
            "Recording {} {how}; a kept recording is not aborted.",
            handle.recording
        ),
    )
}

/// 409 `upload_ended` for an abort of a recording whose upload failed.
fn failed_not_aborted(handle: &UploadHandle, entry: &Recording) -> ApiError {
    let reason = entry
        .error
        .as_deref()
        .map(|e| format!(" ({})", e.trim_end_matches('.')))
        .unwrap_or_default();
    ApiError::conflict(
        "upload_ended",
        format!(
            "Recording {} already failed{reason}; nothing is kept and there is nothing to \
             cancel. Start a new upload.",
            handle.recording
        ),
    )
}

/// Aborts an upload (its parts are deleted) and records it as `aborted`.
///
/// Never reports success for a recording that ends up stored: a recording that is
/// complete or partial, or whose upload a racing complete has assembled (its object
/// exists), is 409 `already_complete`; while a complete is putting the object in place
/// it is 409 `upload_busy` (ask again). A failed recording is 409 `upload_ended`.
/// Aborting again answers the same `aborted` entry without recording anything.
pub async fn abort(
    state: &AppState,
    handle: &UploadHandle,
    now: SystemTime,
) -> Result<Recording, ApiError> {
    let manifest = state.manifests.load(&handle.session).await?;
    if let Some(entry) = manifest
        .as_ref()
        .and_then(|m| m.recording(&handle.recording))
    {
        match entry.status {
            RecordingStatus::Uploading => {}
            RecordingStatus::Aborted => return Ok(entry.clone()),
            RecordingStatus::Failed => return Err(failed_not_aborted(handle, entry)),
            status @ (RecordingStatus::Complete | RecordingStatus::Partial) => {
                return Err(kept(handle, Some(status)));
            }
        }
    }
    state
        .storage
        .abort_multipart(&handle.key, &handle.upload_id)
        .await?;
    // The upload is gone. If a complete got to it first, its object is stored: that
    // recording is kept and must not be reported as aborted. (The key is this
    // recording's own, so an object there can only come from its upload.)
    if state.storage.exists(&handle.key).await? {
        return Err(kept(handle, None));
    }
    let entry = entry_for(handle, RecordingStatus::Aborted, now);
    let recorded = record_entry(state, &handle.session, entry, now).await?;
    // The fold never lets `aborted` hide a later status, so whatever else was recorded
    // meanwhile shows here.
    match recorded.status {
        RecordingStatus::Aborted | RecordingStatus::Uploading => Ok(recorded),
        RecordingStatus::Failed => Err(failed_not_aborted(handle, &recorded)),
        status => Err(kept(handle, Some(status))),
    }
}

async fn abort_upload(
    State(state): State<AppState>,
    RecordingParam(recording): RecordingParam,
    auth: SessionAuth,
    ApiJson(req): ApiJson<AbortUploadRequest>,
) -> Result<Json<RecordingResponse>, ApiError> {
    let handle = UploadHandle::verify(&state.secret, &req.upload, &auth.session, &recording)?;
    let recording = abort(&state, &handle, state.now()).await?;
    Ok(Json(RecordingResponse { recording }))
}

// ---------------------------------------------------------------------------------------
// Playback

/// The query of the playback URL route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybackQuery {
    /// `true` for a download (`Content-Disposition: attachment`).
    #[serde(default)]
    pub download: bool,
}

/// A presigned GET for a stored recording.
pub async fn playback(
    state: &AppState,
    session: &SessionId,
    recording: &RecordingId,
    download: bool,
    now: SystemTime,
) -> Result<PlaybackUrlResponse, ApiError> {
    let manifest = state
        .manifests
        .load(session)
        .await?
        .ok_or_else(|| session_not_found(session))?;
    let entry = manifest.recording(recording).ok_or_else(|| {
        ApiError::not_found(
            "recording_not_found",
            format!("Session {session} has no recording {recording}."),
        )
    })?;
    if !matches!(
        entry.status,
        RecordingStatus::Complete | RecordingStatus::Partial
    ) {
        return Err(ApiError::conflict(
            "not_playable",
            format!(
                "Recording {recording} is {}; only complete or partial recordings can be played.",
                shared::api::status_name(entry.status)
            ),
        ));
    }
    let op = PresignOp::Get {
        key: entry.key.clone(),
        download_as: download.then(|| entry.key.file_name().to_owned()),
    };
    let request = state
        .storage
        .presign(&op, now, state.config.url_ttl)
        .await?;
    Ok(PlaybackUrlResponse {
        url: request.url,
        content_type: entry.content_type.clone(),
        expires_at: request.expires_at,
    })
}

async fn playback_url(
    State(state): State<AppState>,
    SessionParam(session): SessionParam,
    RecordingParam(recording): RecordingParam,
    _: ResearcherAuth,
    ApiQuery(query): ApiQuery<PlaybackQuery>,
) -> Result<Json<PlaybackUrlResponse>, ApiError> {
    Ok(Json(
        playback(&state, &session, &recording, query.download, state.now()).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: u32, size: u64) -> PartSpec {
        PartSpec {
            part_number: n,
            size,
        }
    }

    fn info(n: u32, size: u64) -> PartInfo {
        PartInfo {
            part_number: n,
            size,
            etag: format!("e{n}"),
        }
    }

    #[test]
    fn matching_parts_have_no_difference_in_any_order() {
        assert_eq!(
            parts_difference(&[spec(2, 5), spec(1, 7)], &[info(1, 7), info(2, 5)]),
            None
        );
    }

    #[test]
    fn the_first_difference_is_named() {
        let stored = [info(1, 7), info(2, 5), info(3, 1)];
        let d = parts_difference(&[spec(1, 7), spec(2, 6), spec(3, 1)], &stored).unwrap();
        assert!(
            d.contains("part 2") && d.contains("6") && d.contains("5"),
            "{d}"
        );
        let d = parts_difference(&[spec(1, 7), spec(2, 5)], &stored).unwrap();
        assert!(d.contains("holds part 3"), "{d}");
        let d =
            parts_difference(&[spec(1, 7), spec(2, 5), spec(3, 1), spec(4, 1)], &stored).unwrap();
        assert!(d.contains("part 4 is listed by the client"), "{d}");
        let d = parts_difference(&[spec(1, 7), spec(3, 1)], &stored).unwrap();
        assert!(d.contains("holds part 2"), "{d}");
    }

    #[test]
    fn presign_requests_are_bounded() {
        assert!(check_presign_parts(&[spec(1, 1), spec(10_000, MAX_PART_SIZE)]).is_ok());
        for bad in [
            vec![],
            vec![spec(0, 1)],
            vec![spec(10_001, 1)],
            vec![spec(1, 0)],
            vec![spec(1, MAX_PART_SIZE + 1)],
            vec![spec(1, 1), spec(1, 1)],
            (1..=101).map(|n| spec(n, 1)).collect(),
        ] {
            let e = check_presign_parts(&bad).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.code),
                (400, "invalid_parts"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sha256_must_be_lowercase_hex_of_64_digits() {
        assert!(check_sha256(None).is_ok());
        assert!(check_sha256(Some(&"a".repeat(64))).is_ok());
        for bad in [
            "A".repeat(64),
            "a".repeat(63),
            "g".repeat(64),
            String::new(),
        ] {
            assert_eq!(check_sha256(Some(&bad)).unwrap_err().code, "invalid_sha256");
        }
    }

    #[test]
    fn session_ids_are_long_random_and_valid() {
        let a = new_session_id();
        let b = new_session_id();
        assert!(a.as_str().len() >= 22, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn metadata_is_bounded() {
        let ok = Metadata {
            study: Some("s".repeat(MAX_METADATA_TEXT)),
            ..Metadata::default()
        };
        assert!(check_metadata(&ok).is_ok());
        let long = Metadata {
            participant: Some("p".repeat(MAX_METADATA_TEXT + 1)),
            ..Metadata::default()
        };
        assert_eq!(check_metadata(&long).unwrap_err().code, "invalid_metadata");
        let mut many = Metadata::default();
        for i in 0..=MAX_METADATA_FIELDS {
            many.extra.insert(format!("f{i}"), 1.into());
        }
        assert_eq!(check_metadata(&many).unwrap_err().code, "invalid_metadata");
        let mut big = Metadata::default();
        big.extra
            .insert("notes".into(), "x".repeat(MAX_METADATA_BYTES).into());
        assert_eq!(check_metadata(&big).unwrap_err().code, "invalid_metadata");
    }

    fn fields(prefix: &str, n: usize) -> Metadata {
        let mut m = Metadata::default();
        for i in 0..n {
            m.extra.insert(format!("{prefix}{i}"), i.into());
        }
        m
    }

    #[test]
    fn merged_metadata_is_bounded_but_an_oversized_one_may_shrink() {
        let full = fields("a", MAX_METADATA_FIELDS);
        // Overwriting existing fields is fine; one more field is not.
        assert!(check_merged_metadata(&full, &fields("a", 3)).is_ok());
        let e = check_merged_metadata(&full, &fields("b", 1)).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "metadata_too_large"));
        assert!(e.message.contains("33 further fields"), "{}", e.message);
        // Bytes add up across changes too.
        let mut half = Metadata::default();
        half.extra
            .insert("n1".into(), "x".repeat(MAX_METADATA_BYTES / 2).into());
        let mut other = Metadata::default();
        other
            .extra
            .insert("n2".into(), "y".repeat(MAX_METADATA_BYTES / 2).into());
        let e = check_merged_metadata(&half, &other).unwrap_err();
        assert_eq!(e.code, "metadata_too_large");
        // A session already over the bounds (from before them) can still be changed in
        // ways that do not grow it.
        let over = fields("a", MAX_METADATA_FIELDS + 5);
        assert!(check_merged_metadata(&over, &fields("a", 1)).is_ok());
        assert!(check_merged_metadata(&over, &fields("z", 1)).is_err());
    }
}
