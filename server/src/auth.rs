//! Who may do what.
//!
//! * **Session tokens** are stateless: `{session_id}.{hex HMAC of the id}` under the
//!   server secret (purpose `session`). Nothing is stored; every replica sharing the
//!   secret accepts them; a token names exactly one session.
//! * **The researcher token** (`RESEARCHER_TOKEN`) opens everything. It is compared in
//!   constant time.
//! * **Upload handles** bind one multipart upload to its session, recording, key, store
//!   upload id and content type: `{base64url(json)}.{hex HMAC}` (purpose `upload`).
//!   The client sends the handle back with every call, so presigning a part needs no
//!   storage read, and a client can never point the server at another key or upload.
//!
//! Both tokens travel as `Authorization: Bearer <token>`. A missing or malformed header is
//! 401 `unauthorized`; a token that is well-formed but does not grant the request is
//! 403 (`wrong_session` for a valid token of another session, `forbidden` otherwise).

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::media::MediaType;
use shared::{ObjectKey, RecordingId, SessionId};

use crate::app::AppState;
use crate::error::ApiError;
use crate::signing::Secret;

const SESSION_PURPOSE: &str = "session";
const UPLOAD_PURPOSE: &str = "upload";

/// The bearer token for one session.
pub fn session_token(secret: &Secret, session: &SessionId) -> String {
    format!(
        "{session}.{}",
        secret.sign(SESSION_PURPOSE, session.as_str())
    )
}

/// Who a request was made by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A participant holding the session's token.
    Participant,
    /// A researcher holding the researcher token.
    Researcher,
}

/// The bearer token of a request. Missing, not `Bearer`, empty or not printable ASCII is
/// 401 `unauthorized`.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("This needs `Authorization: Bearer <token>`; none was sent.")
    })?;
    let text = value.to_str().ok().and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    match text {
        Some(token) if !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(token)
        }
        _ => Err(ApiError::unauthorized(
            "The Authorization header must be `Bearer <token>`.",
        )),
    }
}

/// Compares two secrets in time that does not depend on where they differ (both are
/// hashed first, so their lengths do not leak either).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (ha, hb) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    ha.iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Decides whether `token` opens `session`: the researcher token or that session's
/// token does; a valid token of another session is 403 `wrong_session`; anything else
/// is 403 `forbidden`.
pub fn authorize_session(
    secret: &Secret,
    researcher_token: &str,
    session: &SessionId,
    token: &str,
) -> Result<Role, ApiError> {
    if constant_time_eq(token, researcher_token) {
        return Ok(Role::Researcher);
    }
    if let Some((id, sig)) = token.rsplit_once('.') {
        if secret.verify(SESSION_PURPOSE, id, sig) {
            if id == session.as_str() {
                return Ok(Role::Participant);
            }
            return Err(ApiError::forbidden(
                "wrong_session",
                format!("This token belongs to another session, not to session {session}."),
            ));
        }
    }
    Err(ApiError::forbidden(
        "forbidden",
        "This token is neither this session's token nor the researcher token.",
    ))
}

/// Decides whether `token` is the researcher token (403 `forbidden` if not).
pub fn authorize_researcher(researcher_token: &str, token: &str) -> Result<(), ApiError> {
    if constant_time_eq(token, researcher_token) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "forbidden",
            "This needs the researcher token.",
        ))
    }
}

/// Reads one named path parameter as a validated id; a bad one is 400 `invalid_id`.
pub fn path_param<T>(
    params: &RawPathParams,
    name: &str,
    parse: impl Fn(&str) -> Result<T, shared::IdError>,
) -> Result<T, ApiError> {
    let raw = params
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .ok_or_else(|| ApiError::internal(format!("route has no `{name}` parameter")))?;
    // "The path's session id may only contain ... (found '\')."
    parse(raw).map_err(|e| ApiError::bad_request("invalid_id", format!("The path's {e}.")))
}

async fn raw_params(parts: &mut Parts) -> Result<RawPathParams, ApiError> {
    RawPathParams::from_request_parts(parts, &())
        .await
        .map_err(|e| ApiError::bad_request("invalid_id", format!("The path is not valid: {e}.")))
}

/// The `{session_id}` of the path, validated (400 `invalid_id` otherwise).
#[derive(Debug, Clone)]
pub struct SessionParam(pub SessionId);

impl<S: Send + Sync> FromRequestParts<S> for SessionParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let params = raw_params(parts).await?;
        path_param(&params, "session_id", SessionId::parse).map(SessionParam)
    }
}

/// The `{recording_id}` of the path, validated (400 `invalid_id` otherwise).
#[derive(Debug, Clone)]
pub struct RecordingParam(pub RecordingId);

impl<S: Send + Sync> FromRequestParts<S> for RecordingParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let params = raw_params(parts).await?;
        path_param(&params, "recording_id", RecordingId::parse).map(RecordingParam)
    }
}

/// A request allowed to act on the session named in its path: it carries that
/// session's token or the researcher token.
#[derive(Debug, Clone)]
pub struct SessionAuth {
    /// The session of the path (validated).
    pub session: SessionId,
    /// Who is asking.
    pub role: Role,
}

impl FromRequestParts<AppState> for SessionAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let SessionParam(session) = SessionParam::from_request_parts(parts, state).await?;
        let token = bearer(&parts.headers)?;
        let role = authorize_session(&state.secret, &state.researcher_token, &session, token)?;
        Ok(SessionAuth { session, role })
    }
}

/// A request carrying the researcher token.
#[derive(Debug, Clone, Copy)]
pub struct ResearcherAuth;

impl FromRequestParts<AppState> for ResearcherAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)?;
        authorize_researcher(&state.researcher_token, token)?;
        Ok(ResearcherAuth)
    }
}

/// What an upload handle binds together. Serialised with short names to keep the
/// handle small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadHandle {
    /// The session.
    #[serde(rename = "s")]
    pub session: SessionId,
    /// The recording.
    #[serde(rename = "r")]
    pub recording: RecordingId,
    /// Where the object will be.
    #[serde(rename = "k")]
    pub key: ObjectKey,
    /// The store's multipart upload id.
    #[serde(rename = "u")]
    pub upload_id: String,
    /// The content type the upload was opened with.
    #[serde(rename = "t")]
    pub content_type: MediaType,
}

impl UploadHandle {
    /// The opaque text given to the client.
    pub fn sign(&self, secret: &Secret) -> String {
        let json = serde_json::to_vec(self).expect("handles always serialise");
        let body = URL_SAFE_NO_PAD.encode(json);
        let sig = secret.sign(UPLOAD_PURPOSE, &body);
        format!("{body}.{sig}")
    }

    /// Reads a handle back, refusing (403 `bad_upload_handle`) anything not signed by
    /// this server's secret, and checks it belongs to the session and recording of the
    /// path (403 `wrong_upload` otherwise).
    pub fn verify(
        secret: &Secret,
        text: &str,
        session: &SessionId,
        recording: &RecordingId,
    ) -> Result<UploadHandle, ApiError> {
        let bad = || {
            ApiError::forbidden(
                "bad_upload_handle",
                "The upload handle is not one this server issued (it was changed or \
                 truncated). Send the `upload` value from the start-upload answer unchanged.",
            )
        };
        let (body, sig) = text.rsplit_once('.').ok_or_else(bad)?;
        if !secret.verify(UPLOAD_PURPOSE, body, sig) {
            return Err(bad());
        }
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
        let handle: UploadHandle = serde_json::from_slice(&json).map_err(|_| bad())?;
        if &handle.session != session || &handle.recording != recording {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "wrong_upload",
                format!(
                    "This upload handle is for recording {} of session {}, not for recording \
                     {recording} of session {session}.",
                    handle.recording, handle.session
                ),
            ));
        }
        Ok(handle)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn secret() -> Secret {
        Secret::new(vec![3u8; 32]).unwrap()
    }

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    const RESEARCHER: &str = "researcher-token-0123";

    #[test]
    fn a_session_token_opens_its_session_only() {
        let token = session_token(&secret(), &sid("s1"));
        assert!(token.starts_with("s1."));
        assert_eq!(
            authorize_session(&secret(), RESEARCHER, &sid("s1"), &token).unwrap(),
            Role::Participant
        );
        let e = authorize_session(&secret(), RESEARCHER, &sid("s2"), &token).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (403, "wrong_session"));
    }

    #[test]
    fn tampered_or_foreign_tokens_are_forbidden() {
        let token = session_token(&secret(), &sid("s1"));
        let other_secret = Secret::new(vec![4u8; 32]).unwrap();
        let foreign = session_token(&other_secret, &sid("s1"));
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('0') { '1' } else { '0' });
        for bad in [
            foreign.as_str(),
            tampered.as_str(),
            "s1",
            "s1.",
            "researcher-token-012",
        ] {
            let e = authorize_session(&secret(), RESEARCHER, &sid("s1"), bad).unwrap_err();
            assert_eq!((e.status.as_u16(), e.code), (403, "forbidden"), "{bad}");
        }
    }

    #[test]
    fn the_researcher_token_opens_every_session_and_the_researcher_routes() {
        assert_eq!(
            authorize_session(&secret(), RESEARCHER, &sid("any"), RESEARCHER).unwrap(),
            Role::Researcher
        );
        assert!(authorize_researcher(RESEARCHER, RESEARCHER).is_ok());
        let token = session_token(&secret(), &sid("s1"));
        let e = authorize_researcher(RESEARCHER, &token).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (403, "forbidden"));
    }

    #[test]
    fn missing_or_malformed_authorization_is_unauthorized() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers).unwrap_err().status, 401);
        for bad in ["Basic abc", "Bearer", "Bearer ", "token abc"] {
            headers.insert(AUTHORIZATION, HeaderValue::from_static(bad));
            let e = bearer(&headers).unwrap_err();
            assert_eq!((e.status.as_u16(), e.code), (401, "unauthorized"), "{bad}");
        }
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc.def"));
        assert_eq!(bearer(&headers).unwrap(), "abc.def");
    }

    #[test]
    fn constant_time_comparison_is_equality() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
        assert!(!constant_time_eq("", "a"));
    }

    fn handle() -> UploadHandle {
        UploadHandle {
            session: sid("s1"),
            recording: RecordingId::parse("recording_p1_1").unwrap(),
            key: ObjectKey::parse("sessions/s1/recording_p1_1.webm").unwrap(),
            upload_id: "u-1".into(),
            content_type: MediaType::parse("video/webm;codecs=vp8").unwrap(),
        }
    }

    #[test]
    fn an_upload_handle_round_trips_and_binds_its_recording() {
        let h = handle();
        let text = h.sign(&secret());
        assert_eq!(
            UploadHandle::verify(&secret(), &text, &h.session, &h.recording).unwrap(),
            h
        );
        let other = RecordingId::parse("recording_p1_2").unwrap();
        let e = UploadHandle::verify(&secret(), &text, &h.session, &other).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (403, "wrong_upload"));
        let e = UploadHandle::verify(&secret(), &text, &sid("s2"), &h.recording).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (403, "wrong_upload"));
    }

    #[test]
    fn a_tampered_upload_handle_is_refused() {
        let h = handle();
        let text = h.sign(&secret());
        let (body, sig) = text.rsplit_once('.').unwrap();
        let mut forged = h.clone();
        forged.key = ObjectKey::parse("sessions/s1/other.webm").unwrap();
        let forged_body = forged.sign(&secret()).split_once('.').unwrap().0.to_owned();
        for bad in [
            format!("{forged_body}.{sig}"),
            format!("{body}.{}", "0".repeat(64)),
            body.to_owned(),
            String::new(),
            h.sign(&Secret::new(vec![9u8; 32]).unwrap()),
        ] {
            let e = UploadHandle::verify(&secret(), &bad, &h.session, &h.recording).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.code),
                (403, "bad_upload_handle"),
                "{bad}"
            );
        }
    }
}
