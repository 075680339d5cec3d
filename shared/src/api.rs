//! Request and response bodies of every HTTP route. Each type's doc names its route.
//!
//! Participants authenticate with the session token from [`CreateSessionResponse`] and
//! researchers with `RESEARCHER_TOKEN`, both as `Authorization: Bearer <token>`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{ObjectKey, ProblemId, RecordingId, SessionId};
use crate::manifest::{Metadata, Recording, RecordingStatus, SessionManifest};
use crate::media::MediaType;

/// The body of every error answer: a stable machine-readable `code` (see the README's
/// error table) and a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable, snake_case, e.g. `invalid_id`, `signature_expired`.
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
}

/// `POST /api/sessions`: create a session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    /// Study and participant details to record with it.
    #[serde(default)]
    pub metadata: Metadata,
}

/// Answer to `POST /api/sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateSessionResponse {
    /// The new session.
    pub session_id: SessionId,
    /// Bearer token for this session only (keep it to rejoin the session).
    pub token: String,
    /// The manifest as created.
    pub manifest: SessionManifest,
}

/// `POST /api/sessions/{id}/token`: a researcher issues a participant token for an
/// existing session (to rejoin it from another device).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionTokenResponse {
    /// The session.
    pub session_id: SessionId,
    /// Bearer token for this session only.
    pub token: String,
}

/// `PATCH /api/sessions/{id}/metadata`: overlay study/participant details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMetadataRequest {
    /// Fields to set; fields not named stay as they are.
    pub metadata: Metadata,
}

/// `POST /api/sessions/{id}/uploads`: open an upload for one recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartUploadRequest {
    /// The problem being recorded.
    pub problem_id: ProblemId,
    /// `MediaRecorder.mimeType`, exactly.
    pub content_type: MediaType,
}

/// Answer to `POST /api/sessions/{id}/uploads`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartUploadResponse {
    /// The recording's id (used in the routes below).
    pub recording_id: RecordingId,
    /// Where the recording will be stored.
    pub key: ObjectKey,
    /// Opaque, server-signed handle of the upload; send it back with every call below.
    pub upload: String,
    /// Every part but the last must be at least this large.
    pub min_part_size: u64,
    /// No part may be larger than this.
    pub max_part_size: u64,
    /// At most this many parts.
    pub max_parts: u32,
    /// Most parts one presign call may ask for.
    pub max_parts_per_request: u32,
}

/// One part the client wants to upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartSpec {
    /// 1-based part number, at most 10,000.
    pub part_number: u32,
    /// Exact size of the part in bytes (signed: the store refuses another length).
    pub size: u64,
}

/// `POST /api/sessions/{id}/uploads/{recording_id}/parts`: presigned URLs for parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresignPartsRequest {
    /// The handle from [`StartUploadResponse::upload`].
    pub upload: String,
    /// The parts, at most `max_parts_per_request` of them.
    pub parts: Vec<PartSpec>,
}

/// A request the browser must make exactly as given: this method, this URL, these
/// headers (they were signed), nothing else that is signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresignedRequest {
    /// `PUT` or `GET`.
    pub method: String,
    /// The full URL, signature included.
    pub url: String,
    /// Headers to send with exactly these values (not including `Content-Length`,
    /// which the browser sets from the body).
    pub headers: BTreeMap<String, String>,
    /// When the signature stops being accepted.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// One presigned part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresignedPart {
    /// 1-based part number.
    pub part_number: u32,
    /// The request that uploads it.
    pub request: PresignedRequest,
}

/// Answer to `POST /api/sessions/{id}/uploads/{recording_id}/parts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresignPartsResponse {
    /// One entry per requested part, in the order asked.
    pub parts: Vec<PresignedPart>,
}

/// `POST /api/sessions/{id}/uploads/{recording_id}/complete`: finish an upload.
///
/// The server does not trust this body for what is stored: it lists the parts the
/// store holds and checks them against what the client says it sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteUploadRequest {
    /// The handle from [`StartUploadResponse::upload`].
    pub upload: String,
    /// The parts sent, numbers 1..=n, each with its size.
    pub parts: Vec<PartSpec>,
    /// Hex SHA-256 of the whole recording, computed by the client while recording.
    /// Recorded as the client's claim; only the local backend verifies it.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Duration as the recorder measured it.
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

/// `POST /api/sessions/{id}/uploads/{recording_id}/abort`: give up an upload; the
/// parts are deleted and the entry marked aborted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortUploadRequest {
    /// The handle from [`StartUploadResponse::upload`].
    pub upload: String,
}

/// Answer to complete and abort: the recording's manifest entry as it now stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingResponse {
    /// The entry.
    pub recording: Recording,
}

/// One row of `GET /api/sessions` (researchers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// The session.
    pub session_id: SessionId,
    /// When it was created, if known.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub created_at: Option<OffsetDateTime>,
    /// When it last changed, if known.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub updated_at: Option<OffsetDateTime>,
    /// Study and participant details.
    #[serde(default)]
    pub metadata: Metadata,
    /// Number of recordings by status.
    pub counts: BTreeMap<RecordingStatusName, u32>,
    /// Bytes of all recordings whose size is known.
    pub total_bytes: u64,
    /// Set when the session's manifest could not be read (it is then left untouched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// A status as a map key (`"complete"`, ...).
pub type RecordingStatusName = String;

impl SessionSummary {
    /// Summarises a manifest.
    pub fn of(manifest: &SessionManifest) -> Self {
        let mut counts = BTreeMap::new();
        let mut total_bytes = 0;
        for r in &manifest.recordings {
            *counts.entry(status_name(r.status)).or_insert(0) += 1;
            total_bytes += r.size.unwrap_or(0);
        }
        Self {
            session_id: manifest.session_id.clone(),
            created_at: manifest.created_at,
            updated_at: manifest.updated_at,
            metadata: manifest.metadata.clone(),
            counts,
            total_bytes,
            error: None,
        }
    }
}

/// The snake_case name of a status.
pub fn status_name(status: RecordingStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Answer to `GET /api/sessions` (researchers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionListResponse {
    /// Every session, newest first.
    pub sessions: Vec<SessionSummary>,
}

/// Answer to `GET /api/sessions/{id}/recordings/{recording_id}/url` (researchers):
/// a presigned GET for playback (`?download=true` for a download).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaybackUrlResponse {
    /// The URL; it supports `Range`.
    pub url: String,
    /// The recording's content type.
    pub content_type: String,
    /// When the URL stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Answer to the old app's `POST /sessions/{id}/recording`, unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyUploadResponse {
    /// Always true on success.
    pub ok: bool,
    /// Where it went: the local path or `s3://bucket/key`.
    pub path: String,
    /// Bytes stored.
    pub size: u64,
}

/// Answer to `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"`.
    pub status: String,
    /// `local` or `s3`.
    pub storage: String,
}
