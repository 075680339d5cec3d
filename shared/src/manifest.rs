//! The session manifest (`sessions/{id}/session.json`) and the change events it is
//! folded from.
//!
//! A store may ignore conditional writes (Garage does), so two writers can never safely
//! read-modify-write one object. Every change is therefore written as its own small,
//! uniquely named event object (`sessions/{id}/events/...`); the manifest a reader sees
//! is the stored `session.json` (the base, possibly written by the old app) with all
//! events folded in, in key order, by [`SessionManifest::apply`]. The fold is
//! commutative where it matters: a recording's entry only moves forward in
//! [`RecordingStatus::rank`], so late or repeated events cannot undo a completion.
//! Writers re-save `session.json` as the folded view for tools that read the file
//! directly; it is a cache of the events, never their only copy.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::ids::{ObjectKey, ProblemId, RecordingId, SessionId};

/// The manifest format this crate writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Where a stored manifest could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError(pub String);

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ManifestError {}

/// Optional study and participant details given when a session is created or later.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The study this session belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub study: Option<String>,
    /// The participant's pseudonymous code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
    /// Any further fields the study page sends; kept as given.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Metadata {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.study.is_none() && self.participant.is_none() && self.extra.is_empty()
    }

    /// Overlays `other`: its set fields replace ours, ours stay where it has none.
    pub fn merge(&mut self, other: &Metadata) {
        if other.study.is_some() {
            self.study.clone_from(&other.study);
        }
        if other.participant.is_some() {
            self.participant.clone_from(&other.participant);
        }
        for (k, v) in &other.extra {
            self.extra.insert(k.clone(), v.clone());
        }
    }
}

/// Where a recording stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingStatus {
    /// Parts are arriving; not yet verified.
    Uploading,
    /// Verified and assembled: every byte the client recorded is stored.
    Complete,
    /// Salvaged from an abandoned upload: what reached storage is playable, the end may
    /// be missing.
    Partial,
    /// The upload could not be completed (the reason is in `error`).
    Failed,
    /// Cancelled by the participant or aborted by the janitor; nothing is kept.
    Aborted,
}

impl RecordingStatus {
    /// Order of precedence when two changes meet: an entry only moves to a status of
    /// equal or higher rank, so a late "uploading" or "aborted" never hides a
    /// completed recording.
    pub fn rank(self) -> u8 {
        match self {
            RecordingStatus::Uploading => 0,
            RecordingStatus::Aborted => 1,
            RecordingStatus::Failed => 2,
            RecordingStatus::Partial => 3,
            RecordingStatus::Complete => 4,
        }
    }

    /// Whether the upload is over, one way or another.
    pub fn is_final(self) -> bool {
        self != RecordingStatus::Uploading
    }
}

/// One recording of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    /// Unique within the session; the object's file name without extension.
    pub id: RecordingId,
    /// The problem during which it was recorded (absent for old files whose name does
    /// not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_id: Option<ProblemId>,
    /// Where the bytes are.
    pub key: ObjectKey,
    /// The content type the browser recorded (`MediaRecorder.mimeType`).
    pub content_type: String,
    /// Size in bytes, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Duration in milliseconds as the recorder measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// When recording started (the upload was opened).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub started_at: Option<OffsetDateTime>,
    /// When the upload reached its final status.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_at: Option<OffsetDateTime>,
    /// Where it stands.
    pub status: RecordingStatus,
    /// Hex SHA-256 of the bytes, as the client computed them while recording: the
    /// client's own claim. On S3 the server does not read media (the bytes never pass
    /// through it), so it records this unverified; on the local backend it hashes the
    /// stored file at complete and refuses a mismatch (422 `checksum_mismatch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The storage's multipart upload id while uploading (for salvage and clean-up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// Why it failed, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// True for a file found in storage that no manifest lists (data of the old app).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discovered: bool,
    /// Fields written by other versions; kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The manifest of one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionManifest {
    /// Format version ([`SCHEMA_VERSION`] when written by this crate; 0 when the stored
    /// file is the old app's and has none).
    #[serde(default)]
    pub schema_version: u32,
    /// The session.
    pub session_id: SessionId,
    /// When the session was created.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_at: Option<OffsetDateTime>,
    /// When anything last changed.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub updated_at: Option<OffsetDateTime>,
    /// Study and participant details.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
    /// The recordings, in the order they started.
    #[serde(default)]
    pub recordings: Vec<Recording>,
    /// Fields this version does not know (the old app's, a newer version's), kept as
    /// they are across rewrites. A known field whose stored value has the wrong shape is
    /// kept here too, under `legacy_fields`, rather than dropped.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One change to a session's manifest, stored as its own object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEvent {
    /// When the change was made.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What changed.
    #[serde(flatten)]
    pub change: Change,
}

/// What a [`ManifestEvent`] changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    /// The session was created.
    Created {
        /// Its initial details.
        #[serde(default)]
        metadata: Metadata,
    },
    /// A recording was added or moved on (started, completed, failed, ...).
    Recording {
        /// The entry as it now stands.
        recording: Recording,
    },
    /// Study or participant details were added or changed.
    Metadata {
        /// The fields to overlay.
        metadata: Metadata,
    },
}

const LEGACY_FIELDS: &str = "legacy_fields";

impl SessionManifest {
    /// An empty manifest for a new session.
    pub fn new(session_id: SessionId) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            session_id,
            created_at: None,
            updated_at: None,
            metadata: Metadata::default(),
            recordings: Vec::new(),
            extra: Map::new(),
        }
    }

    /// Reads a stored `session.json` of any vintage. The file must be a JSON object;
    /// anything else is an error naming the session (the caller must then refuse to
    /// write over it). Known fields of the wrong shape (the old app's) are moved under
    /// `legacy_fields` instead of failing or being dropped; recordings that cannot be
    /// read are kept there too. The session id is always the one from the key.
    pub fn from_stored(session_id: &SessionId, bytes: &[u8]) -> Result<Self, ManifestError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            ManifestError(format!(
                "session {session_id}: session.json is not valid JSON ({e})"
            ))
        })?;
        let Value::Object(mut map) = value else {
            return Err(ManifestError(format!(
                "session {session_id}: session.json is not a JSON object"
            )));
        };
        let mut legacy = match map.remove(LEGACY_FIELDS) {
            Some(Value::Object(m)) => m,
            Some(other) => Map::from_iter([(LEGACY_FIELDS.to_owned(), other)]),
            None => Map::new(),
        };
        let mut manifest = SessionManifest::new(session_id.clone());
        manifest.schema_version = take(&mut map, "schema_version", &mut legacy).unwrap_or(0);
        if let Some(stored) = map.remove("session_id") {
            if stored.as_str() != Some(session_id.as_str()) {
                legacy.insert("session_id".to_owned(), stored);
            }
        }
        manifest.created_at = take_time(&mut map, "created_at", &mut legacy);
        manifest.updated_at = take_time(&mut map, "updated_at", &mut legacy);
        manifest.metadata = take(&mut map, "metadata", &mut legacy).unwrap_or_default();
        match map.remove("recordings") {
            Some(Value::Array(items)) => {
                let mut unreadable = Vec::new();
                for item in items {
                    match serde_json::from_value::<Recording>(item.clone()) {
                        Ok(r) => manifest.recordings.push(r),
                        Err(_) => unreadable.push(item),
                    }
                }
                if !unreadable.is_empty() {
                    legacy.insert("recordings".to_owned(), Value::Array(unreadable));
                }
            }
            Some(other) => {
                legacy.insert("recordings".to_owned(), other);
            }
            None => {}
        }
        if !legacy.is_empty() {
            map.insert(LEGACY_FIELDS.to_owned(), Value::Object(legacy));
        }
        manifest.extra = map;
        Ok(manifest)
    }

    /// Serialises for storage (pretty, stable field order, trailing newline), stamping
    /// the current schema version.
    pub fn to_stored(&self) -> Vec<u8> {
        let mut copy = self.clone();
        copy.schema_version = SCHEMA_VERSION;
        let mut out = serde_json::to_vec_pretty(&copy).expect("manifests always serialise");
        out.push(b'\n');
        out
    }

    /// The recording with this id.
    pub fn recording(&self, id: &RecordingId) -> Option<&Recording> {
        self.recordings.iter().find(|r| &r.id == id)
    }

    /// Folds one change in. Recordings move only to a status of equal or higher rank;
    /// a recording already present is updated in place (keeping its position and any
    /// unknown fields the change does not carry).
    pub fn apply(&mut self, event: &ManifestEvent) {
        match &event.change {
            Change::Created { metadata } => {
                if self.created_at.is_none_or(|t| event.at < t) {
                    self.created_at = Some(event.at);
                }
                let mut merged = metadata.clone();
                merged.merge(&self.metadata);
                self.metadata = merged;
            }
            Change::Recording { recording } => {
                match self.recordings.iter_mut().find(|r| r.id == recording.id) {
                    Some(existing) => {
                        if recording.status.rank() >= existing.status.rank() {
                            let mut extra = existing.extra.clone();
                            extra.extend(recording.extra.clone());
                            let started = existing.started_at;
                            *existing = recording.clone();
                            existing.extra = extra;
                            existing.started_at = existing.started_at.or(started);
                        }
                    }
                    None => self.recordings.push(recording.clone()),
                }
            }
            Change::Metadata { metadata } => self.metadata.merge(metadata),
        }
        if self.updated_at.is_none_or(|t| event.at > t) {
            self.updated_at = Some(event.at);
        }
    }
}

fn take<T: serde::de::DeserializeOwned>(
    map: &mut Map<String, Value>,
    field: &str,
    legacy: &mut Map<String, Value>,
) -> Option<T> {
    let value = map.remove(field)?;
    match serde_json::from_value(value.clone()) {
        Ok(v) => Some(v),
        Err(_) => {
            legacy.insert(field.to_owned(), value);
            None
        }
    }
}

fn take_time(
    map: &mut Map<String, Value>,
    field: &str,
    legacy: &mut Map<String, Value>,
) -> Option<OffsetDateTime> {
    let value = map.remove(field)?;
    let parsed = value.as_str().and_then(|s| {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
    });
    if parsed.is_none() {
        legacy.insert(field.to_owned(), value);
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn sid() -> SessionId {
        SessionId::parse("s1").unwrap()
    }

    fn rec(id: &str, status: RecordingStatus) -> Recording {
        Recording {
            id: RecordingId::parse(id).unwrap(),
            problem_id: Some(ProblemId::parse("p1").unwrap()),
            key: ObjectKey::parse(&format!("sessions/s1/{id}.webm")).unwrap(),
            content_type: "video/webm".into(),
            size: None,
            duration_ms: None,
            started_at: None,
            finished_at: None,
            status,
            sha256: None,
            upload_id: None,
            error: None,
            discovered: false,
            extra: Map::new(),
        }
    }

    fn event(change: Change) -> ManifestEvent {
        ManifestEvent {
            at: datetime!(2026-12-03 10:00 UTC),
            change,
        }
    }

    #[test]
    fn unknown_fields_survive_a_rewrite() {
        let stored = br#"{"schema_version":1,"session_id":"s1","recordings":[],
            "future":{"x":1},"metadata":{"study":"a","cohort":7}}"#;
        let m = SessionManifest::from_stored(&sid(), stored).unwrap();
        let again: Value = serde_json::from_slice(&m.to_stored()).unwrap();
        assert_eq!(again["future"]["x"], 1);
        assert_eq!(again["metadata"]["cohort"], 7);
        assert_eq!(again["metadata"]["study"], "a");
    }

    #[test]
    fn old_app_manifests_of_another_shape_keep_every_field() {
        let stored = br#"{"session_id":"s1","created_at":1700000000.5,
            "recordings":[{"problem_id":"p1","path":"data/x.webm"}],"name":"Ann"}"#;
        let m = SessionManifest::from_stored(&sid(), stored).unwrap();
        assert_eq!(m.schema_version, 0);
        assert!(m.recordings.is_empty());
        let legacy = &m.extra["legacy_fields"];
        assert_eq!(legacy["created_at"], 1_700_000_000.5);
        assert_eq!(legacy["recordings"][0]["path"], "data/x.webm");
        assert_eq!(m.extra["name"], "Ann");
    }

    #[test]
    fn corrupt_manifests_are_errors_naming_the_session() {
        for bad in [&b"{\"session_id\": "[..], b"[1,2]", b"", b"null"] {
            let err = SessionManifest::from_stored(&sid(), bad).unwrap_err();
            assert!(err.0.contains("session s1"), "{err}");
        }
    }

    #[test]
    fn a_late_uploading_or_abort_never_hides_a_completion() {
        let mut m = SessionManifest::new(sid());
        m.apply(&event(Change::Recording {
            recording: rec("r1", RecordingStatus::Uploading),
        }));
        m.apply(&event(Change::Recording {
            recording: rec("r1", RecordingStatus::Complete),
        }));
        m.apply(&event(Change::Recording {
            recording: rec("r1", RecordingStatus::Aborted),
        }));
        m.apply(&event(Change::Recording {
            recording: rec("r1", RecordingStatus::Uploading),
        }));
        assert_eq!(m.recordings.len(), 1);
        assert_eq!(m.recordings[0].status, RecordingStatus::Complete);
    }

    #[test]
    fn events_round_trip_through_json() {
        let e = event(Change::Metadata {
            metadata: Metadata {
                study: Some("s".into()),
                ..Metadata::default()
            },
        });
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains("\"type\":\"metadata\""), "{text}");
        assert_eq!(serde_json::from_str::<ManifestEvent>(&text).unwrap(), e);
    }
}
