//! Session manifests, kept correct on stores that ignore conditional writes and under
//! several writers (tabs, retries, server replicas sharing one store).
//!
//! Nothing here ever read-modify-writes one object as the only record. Every change is
//! written as its own, uniquely named event object
//! (`sessions/{id}/events/{ms:013}-{16 hex}.json`, see [`shared::keys::event_key`]), and
//! the manifest a reader sees is
//!
//! 1. the stored `session.json`, if any (any vintage, the old app's included, read by
//!    [`SessionManifest::from_stored`]),
//! 2. with every event folded in, in key order ([`SessionManifest::apply`]),
//! 3. plus "discovered" recordings: `recording_*` objects in the session folder that no
//!    entry lists (the old app's data), computed at read time and never persisted.
//!
//! After writing an event the writer re-saves `session.json` as the folded view (one
//! atomic put) for tools that read the file directly. That file is a cache: a stale one
//! (two writers racing) loses nothing, because readers always fold all events on top and
//! the fold is idempotent.
//!
//! Reads never write. A `session.json` that is not a JSON object is reported as
//! [`ManifestsError::Corrupt`] naming the session, and is never overwritten: changes to
//! that session are refused until a person repairs or moves the file.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use shared::api::{ErrorBody, SessionSummary};
use shared::keys::{self, parse_recording_name};
use shared::manifest::{Change, ManifestEvent};
use shared::{ObjectKey, Recording, RecordingStatus, SessionId, SessionManifest};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::storage::{ObjectMeta, Storage, StorageError};

/// How many objects (events, sessions) are read at once.
const READ_CONCURRENCY: usize = 16;
/// Most times one change re-saves `session.json` because events kept arriving.
const MAX_RESAVES: usize = 8;

/// Why a manifest could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestsError {
    /// The session's `session.json` is not a JSON object, or one of its event files is
    /// not an event; the file was left untouched.
    #[error("{message}")]
    Corrupt {
        /// The session.
        session: SessionId,
        /// The file that cannot be read.
        key: ObjectKey,
        /// What is wrong, naming the session.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<ManifestsError> for ApiError {
    fn from(e: ManifestsError) -> Self {
        match e {
            ManifestsError::Corrupt {
                session,
                key,
                message,
            } => {
                tracing::error!(%session, %key, "{message}");
                ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "manifest_corrupt",
                    corrupt_message(&key, &message),
                )
            }
            ManifestsError::Storage(e) => e.into(),
        }
    }
}

fn corrupt_message(key: &ObjectKey, detail: &str) -> String {
    format!(
        "The manifest cannot be read: {detail}. The file {key} was left untouched; repair or \
         move it by hand. Until then this session cannot be read and its changes are refused."
    )
}

/// Result of manifest operations.
pub type Result<T, E = ManifestsError> = std::result::Result<T, E>;

/// Everything stored for one session, as read in one pass.
#[derive(Debug)]
struct Snapshot {
    /// The stored `session.json`, parsed.
    base: Option<SessionManifest>,
    /// Every event listed, by key (key order is fold order); `None` for one that could
    /// not be read (unreadable, or deleted since it was listed).
    events: BTreeMap<ObjectKey, Option<ManifestEvent>>,
    /// Every object under the session's folder.
    objects: Vec<ObjectMeta>,
}

impl Snapshot {
    /// Base plus events: what `session.json` should hold.
    fn folded(&self, session: &SessionId) -> SessionManifest {
        let mut manifest = self
            .base
            .clone()
            .unwrap_or_else(|| SessionManifest::new(session.clone()));
        for event in self.events.values().flatten() {
            manifest.apply(event);
        }
        manifest
    }

    /// The folded manifest plus discovered recordings: what readers see.
    fn view(&self, session: &SessionId) -> SessionManifest {
        let mut manifest = self.folded(session);
        add_discovered(&mut manifest, &self.objects);
        manifest
    }
}

/// Adds an entry for every recording object directly in the session folder that no
/// entry lists.
pub fn add_discovered(manifest: &mut SessionManifest, objects: &[ObjectMeta]) {
    for object in objects {
        if object.key.segments().count() != 3 {
            continue;
        }
        let Some(name) = parse_recording_name(object.key.file_name()) else {
            continue;
        };
        if manifest
            .recordings
            .iter()
            .any(|r| r.id == name.id || r.key == object.key)
        {
            continue;
        }
        let started_at = name
            .unix_ms
            .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok());
        manifest.recordings.push(Recording {
            id: name.id,
            problem_id: name.problem,
            key: object.key.clone(),
            content_type: name.container.default_content_type(true).to_owned(),
            size: Some(object.size),
            duration_ms: None,
            started_at,
            finished_at: None,
            status: RecordingStatus::Complete,
            sha256: None,
            upload_id: None,
            error: None,
            discovered: true,
            extra: Default::default(),
        });
    }
}

/// Reads and changes session manifests in a store.
#[derive(Debug, Clone)]
pub struct Manifests {
    storage: Arc<dyn Storage>,
}

impl Manifests {
    /// Manifests kept in `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage }
    }

    /// The session's manifest as readers see it, or `None` when nothing at all is
    /// stored for the session (no `session.json`, no events, no recordings). Never
    /// writes.
    pub async fn load(&self, session: &SessionId) -> Result<Option<SessionManifest>> {
        Ok(self
            .snapshot(session)
            .await?
            .map(|snapshot| snapshot.view(session)))
    }

    /// Records one change made at `at` and returns the manifest as it now stands.
    ///
    /// The change is stored as its own event object first (that is the record); then
    /// `session.json` is re-saved as the folded view. A session whose `session.json` is
    /// corrupt is refused before anything is written.
    pub async fn record(
        &self,
        session: &SessionId,
        change: Change,
        at: OffsetDateTime,
    ) -> Result<SessionManifest> {
        self.read_base(session).await?;
        let event = ManifestEvent { at, change };
        let mut nonce = [0u8; 8];
        rand::fill(&mut nonce);
        let ms = u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let key = keys::event_key(session, ms, &hex::encode(nonce));
        let bytes = serde_json::to_vec(&event).map_err(StorageError::backend)?;
        self.storage.put(&key, Bytes::from(bytes)).await?;

        let mut snapshot = self.snapshot(session).await?.ok_or_else(|| {
            StorageError::backend(format!("event {key} was written but cannot be listed"))
        })?;
        // Several writers may re-save at once, and the last put may come from a writer
        // whose snapshot missed another's event. So each writer lists the events again
        // after its put and, if any appeared, puts the new fold: the writer whose put is
        // last then saw every event, and once writers stop the file is the whole view.
        for _ in 0..MAX_RESAVES {
            let folded = snapshot.folded(session);
            if let Err(e) = self
                .storage
                .put(
                    &keys::manifest_key(session),
                    Bytes::from(folded.to_stored()),
                )
                .await
            {
                // The event is stored, so the change is not lost; only the cached view
                // is stale until the next change.
                tracing::warn!(%session, error = %e, "could not re-save session.json");
                break;
            }
            let listed = self.storage.list(&keys::session_prefix(session)).await?;
            let new: Vec<ObjectKey> = event_keys(&listed, session)
                .into_iter()
                .filter(|k| !snapshot.events.contains_key(*k))
                .cloned()
                .collect();
            if new.is_empty() {
                break;
            }
            snapshot
                .events
                .extend(self.read_events(session, new).await?);
            snapshot.objects = listed;
        }
        let mut view = snapshot.folded(session);
        add_discovered(&mut view, &snapshot.objects);
        Ok(view)
    }

    /// Whether anything is stored for the session.
    pub async fn exists(&self, session: &SessionId) -> Result<bool> {
        Ok(!self
            .storage
            .list(&keys::session_prefix(session))
            .await?
            .is_empty())
    }

    /// A summary of every session, newest first. A session whose manifest is corrupt is
    /// listed with its `error` set instead of failing the list.
    pub async fn list(&self) -> Result<Vec<SessionSummary>> {
        let names = self.storage.list_dirs(keys::SESSIONS_PREFIX).await?;
        let sessions: Vec<SessionId> = names
            .iter()
            .filter_map(|name| match SessionId::parse(name) {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::warn!(folder = %name, error = %e, "skipping a session folder with an invalid name");
                    None
                }
            })
            .collect();
        let mut rows: Vec<(Option<OffsetDateTime>, SessionSummary)> =
            futures::stream::iter(sessions)
                .map(|session| async move {
                    match self.load(&session).await {
                        Ok(Some(m)) => Ok(Some((sort_time(&m), SessionSummary::of(&m)))),
                        Ok(None) => Ok(None),
                        Err(ManifestsError::Corrupt {
                            session,
                            key,
                            message,
                        }) => {
                            let mut summary =
                                SessionSummary::of(&SessionManifest::new(session.clone()));
                            summary.error = Some(ErrorBody {
                                code: "manifest_corrupt".to_owned(),
                                message: corrupt_message(&key, &message),
                            });
                            Ok(Some((None, summary)))
                        }
                        Err(e) => Err(e),
                    }
                })
                .buffer_unordered(READ_CONCURRENCY)
                .try_filter_map(|row| async move { Ok(row) })
                .try_collect()
                .await?;
        rows.sort_by(|(ta, a), (tb, b)| tb.cmp(ta).then_with(|| a.session_id.cmp(&b.session_id)));
        Ok(rows.into_iter().map(|(_, s)| s).collect())
    }

    /// The stored `session.json`, parsed; `None` if there is none; an error naming the
    /// session if it cannot be read.
    async fn read_base(&self, session: &SessionId) -> Result<Option<SessionManifest>> {
        match self.storage.get(&keys::manifest_key(session)).await {
            Ok(bytes) => SessionManifest::from_stored(session, &bytes)
                .map(Some)
                .map_err(|e| ManifestsError::Corrupt {
                    session: session.clone(),
                    key: keys::manifest_key(session),
                    message: e.0,
                }),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn snapshot(&self, session: &SessionId) -> Result<Option<Snapshot>> {
        let objects = self.storage.list(&keys::session_prefix(session)).await?;
        if objects.is_empty() {
            return Ok(None);
        }
        let manifest_key = keys::manifest_key(session);
        let base = if objects.iter().any(|o| o.key == manifest_key) {
            self.read_base(session).await?
        } else {
            None
        };
        let listed: Vec<ObjectKey> = event_keys(&objects, session).into_iter().cloned().collect();
        let events = self.read_events(session, listed).await?;
        Ok(Some(Snapshot {
            base,
            events: events.into_iter().collect(),
            objects,
        }))
    }

    /// Reads events, [`READ_CONCURRENCY`] at a time; one deleted since it was listed
    /// comes back as `None` and is ignored by the fold. One that is not an event is
    /// [`ManifestsError::Corrupt`]: folding without it would show (and re-save) the
    /// session without that change.
    async fn read_events(
        &self,
        session: &SessionId,
        keys: Vec<ObjectKey>,
    ) -> Result<Vec<(ObjectKey, Option<ManifestEvent>)>> {
        let read = futures::stream::iter(keys)
            .map(|key| async move {
                match self.storage.get(&key).await {
                    Ok(bytes) => match serde_json::from_slice::<ManifestEvent>(&bytes) {
                        Ok(event) => Ok((key, Some(event))),
                        Err(e) => Err(ManifestsError::Corrupt {
                            session: session.clone(),
                            message: format!(
                                "session {session}: an event file is not a manifest event ({e})"
                            ),
                            key,
                        }),
                    },
                    Err(StorageError::NotFound { .. }) => Ok((key, None)),
                    Err(e) => Err(e.into()),
                }
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(read)
    }
}

/// The keys of the session's event objects among `objects`, in order.
fn event_keys<'a>(objects: &'a [ObjectMeta], session: &SessionId) -> Vec<&'a ObjectKey> {
    let prefix = keys::events_prefix(session);
    objects
        .iter()
        .filter(|o| o.key.as_str().starts_with(&prefix) && o.key.as_str().ends_with(".json"))
        .map(|o| &o.key)
        .collect()
}

/// When a session happened, for sorting: its creation, else its first recording, else
/// its last change.
fn sort_time(m: &SessionManifest) -> Option<OffsetDateTime> {
    m.created_at
        .or_else(|| m.recordings.iter().filter_map(|r| r.started_at).min())
        .or(m.updated_at)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use shared::manifest::Metadata;
    use shared::{ProblemId, RecordingId};
    use time::macros::datetime;

    use super::*;
    use crate::signing::{Secret, UrlSigner};
    use crate::storage::local::LocalStorage;

    fn local(root: &Path) -> Arc<dyn Storage> {
        let signer = UrlSigner::new(Secret::new(vec![1u8; 32]).unwrap(), "http://127.0.0.1:1");
        Arc::new(LocalStorage::new(root.to_path_buf(), signer))
    }

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    fn entry(session: &str, n: u32, status: RecordingStatus) -> Recording {
        let id = RecordingId::parse(&format!(
            "recording_p{n}_{}",
            1_700_000_000_000u64 + n as u64
        ))
        .unwrap();
        Recording {
            key: ObjectKey::parse(&format!("sessions/{session}/{id}.webm")).unwrap(),
            id,
            problem_id: Some(ProblemId::parse(&format!("p{n}")).unwrap()),
            content_type: "video/webm".into(),
            size: Some(n as u64),
            duration_ms: None,
            started_at: None,
            finished_at: None,
            status,
            sha256: None,
            upload_id: None,
            error: None,
            discovered: false,
            extra: Default::default(),
        }
    }

    fn change(session: &str, n: u32, status: RecordingStatus) -> Change {
        Change::Recording {
            recording: entry(session, n, status),
        }
    }

    /// Every file under `root` with its bytes.
    fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
        fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    let rel = path
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    out.insert(rel, std::fs::read(&path).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, root, &mut out);
        out
    }

    const NOW: OffsetDateTime = datetime!(2026-12-03 10:00 UTC);

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn fifty_concurrent_changes_to_one_session_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let manifests = Manifests::new(local(dir.path()));
        let s = sid("busy");
        let tasks: Vec<_> = (0..50)
            .map(|n| {
                let (m, s) = (manifests.clone(), s.clone());
                tokio::spawn(async move {
                    m.record(&s, change("busy", n, RecordingStatus::Complete), NOW)
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let m = manifests.load(&s).await.unwrap().unwrap();
        assert_eq!(m.recordings.len(), 50);
        assert!(
            m.recordings
                .iter()
                .all(|r| r.status == RecordingStatus::Complete)
        );
        // The cached session.json, re-saved by the last writers, is a valid manifest
        // holding every change.
        let cached = std::fs::read(dir.path().join("sessions/busy/session.json")).unwrap();
        let cached = SessionManifest::from_stored(&s, &cached).unwrap();
        assert_eq!(cached.recordings.len(), 50);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_processes_on_one_folder_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = Manifests::new(local(dir.path()));
        let b = Manifests::new(local(dir.path()));
        let s = sid("shared");
        let mut tasks = Vec::new();
        for n in 0..40u32 {
            let m = if n % 2 == 0 { a.clone() } else { b.clone() };
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                m.record(&s, change("shared", n, RecordingStatus::Uploading), NOW)
                    .await?;
                m.record(&s, change("shared", n, RecordingStatus::Complete), NOW)
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        for m in [&a, &b] {
            let view = m.load(&s).await.unwrap().unwrap();
            assert_eq!(view.recordings.len(), 40);
            assert!(
                view.recordings
                    .iter()
                    .all(|r| r.status == RecordingStatus::Complete)
            );
        }
    }

    #[tokio::test]
    async fn a_corrupt_event_file_is_reported_and_session_json_not_rewritten_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let manifests = Manifests::new(local(dir.path()));
        let s = sid("events");
        manifests
            .record(
                &s,
                Change::Created {
                    metadata: Metadata::default(),
                },
                NOW,
            )
            .await
            .unwrap();
        let events = dir.path().join("sessions/events/events");
        let first = std::fs::read_dir(&events)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&first, b"garbage").unwrap();
        let before = tree(dir.path());

        let err = manifests.load(&s).await.unwrap_err();
        let ManifestsError::Corrupt { key, .. } = &err else {
            panic!("expected Corrupt, got {err:?}")
        };
        assert!(
            first.ends_with(key.as_str().rsplit('/').next().unwrap()),
            "{key} names the bad file"
        );
        let api = ApiError::from(err);
        assert_eq!((api.status.as_u16(), api.code), (500, "manifest_corrupt"));
        assert!(api.message.contains("untouched"), "{}", api.message);
        assert_eq!(tree(dir.path()), before, "a read writes nothing");

        // A change is refused loudly and session.json is not re-saved without the
        // unreadable event's change.
        let session_json = std::fs::read(dir.path().join("sessions/events/session.json")).unwrap();
        assert!(matches!(
            manifests
                .record(&s, change("events", 1, RecordingStatus::Complete), NOW)
                .await,
            Err(ManifestsError::Corrupt { .. })
        ));
        assert_eq!(
            std::fs::read(dir.path().join("sessions/events/session.json")).unwrap(),
            session_json
        );
        let list = manifests.list().await.unwrap();
        assert_eq!(list[0].error.as_ref().unwrap().code, "manifest_corrupt");
    }

    #[tokio::test]
    async fn a_corrupt_manifest_is_reported_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("sessions/broken");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join("session.json"),
            b"{\"session_id\": \"broken\", ",
        )
        .unwrap();
        let before = tree(dir.path());
        let manifests = Manifests::new(local(dir.path()));
        let s = sid("broken");

        let err = manifests
            .record(&s, change("broken", 1, RecordingStatus::Complete), NOW)
            .await
            .unwrap_err();
        let ManifestsError::Corrupt {
            session,
            key,
            message,
        } = &err
        else {
            panic!("expected Corrupt, got {err:?}")
        };
        assert_eq!(session, &s);
        assert_eq!(key, &keys::manifest_key(&s));
        assert!(message.contains("broken"), "{message}");
        assert!(matches!(
            manifests.load(&s).await,
            Err(ManifestsError::Corrupt { .. })
        ));
        let api = ApiError::from(err);
        assert_eq!((api.status.as_u16(), api.code), (500, "manifest_corrupt"));
        assert!(
            api.message.contains("broken") && api.message.contains("untouched"),
            "{}",
            api.message
        );
        assert_eq!(tree(dir.path()), before, "nothing written, nothing changed");

        // The list shows it with its error instead of failing.
        manifests
            .record(
                &sid("fine"),
                Change::Created {
                    metadata: Metadata::default(),
                },
                NOW,
            )
            .await
            .unwrap();
        let list = manifests.list().await.unwrap();
        assert_eq!(list.len(), 2);
        let broken = list.iter().find(|r| r.session_id == s).unwrap();
        assert_eq!(broken.error.as_ref().unwrap().code, "manifest_corrupt");
        assert!(
            list.iter()
                .any(|r| r.session_id.as_str() == "fine" && r.error.is_none())
        );
    }

    #[tokio::test]
    async fn an_old_app_folder_is_listed_and_shown_without_being_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("sessions/old1");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join("session.json"),
            br#"{"session_id": "old1", "created": 1700000000.25, "participant": "A7", "recordings": [{"file": "x"}]}"#,
        )
        .unwrap();
        std::fs::write(
            folder.join("recording_p1_1700000000000.webm"),
            [0x1A, 0x45, 0xDF, 0xA3, 1, 2, 3],
        )
        .unwrap();
        let before = tree(dir.path());
        let manifests = Manifests::new(local(dir.path()));

        let list = manifests.list().await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].session_id.as_str(), "old1");
        assert_eq!(list[0].counts.get("complete"), Some(&1));
        assert_eq!(list[0].total_bytes, 7);

        let m = manifests.load(&sid("old1")).await.unwrap().unwrap();
        assert_eq!(m.recordings.len(), 1);
        let r = &m.recordings[0];
        assert!(r.discovered);
        assert_eq!(r.status, RecordingStatus::Complete);
        assert_eq!(r.size, Some(7));
        assert_eq!(r.problem_id.as_ref().unwrap().as_str(), "p1");
        assert_eq!(r.content_type, "video/webm");
        assert_eq!(r.started_at.unwrap().unix_timestamp(), 1_700_000_000);
        assert_eq!(m.extra["participant"], "A7");

        assert_eq!(tree(dir.path()), before, "reads never write");
    }

    #[tokio::test]
    async fn a_change_to_an_old_session_keeps_its_fields_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("sessions/old2");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join("session.json"),
            br#"{"participant": "B1", "created_at": 5}"#,
        )
        .unwrap();
        std::fs::write(
            folder.join("recording_p1_1700000000000.webm"),
            b"\x1a\x45\xdf\xa3",
        )
        .unwrap();
        let manifests = Manifests::new(local(dir.path()));
        let s = sid("old2");
        let m = manifests
            .record(&s, change("old2", 2, RecordingStatus::Complete), NOW)
            .await
            .unwrap();
        assert_eq!(
            m.recordings.len(),
            2,
            "the new entry and the discovered file"
        );
        let cached: serde_json::Value =
            serde_json::from_slice(&std::fs::read(folder.join("session.json")).unwrap()).unwrap();
        assert_eq!(cached["participant"], "B1");
        assert_eq!(cached["legacy_fields"]["created_at"], 5);
        let listed = cached["recordings"].as_array().unwrap();
        assert_eq!(listed.len(), 1, "discovered entries are not persisted");
        assert!(folder.join("recording_p1_1700000000000.webm").exists());
    }

    #[tokio::test]
    async fn the_fold_of_events_wins_over_a_stale_cached_view() {
        let dir = tempfile::tempdir().unwrap();
        let manifests = Manifests::new(local(dir.path()));
        let s = sid("stale");
        manifests
            .record(&s, change("stale", 1, RecordingStatus::Uploading), NOW)
            .await
            .unwrap();
        let stale = std::fs::read(dir.path().join("sessions/stale/session.json")).unwrap();
        manifests
            .record(&s, change("stale", 1, RecordingStatus::Complete), NOW)
            .await
            .unwrap();
        manifests
            .record(
                &s,
                Change::Metadata {
                    metadata: Metadata {
                        study: Some("later".into()),
                        ..Metadata::default()
                    },
                },
                NOW,
            )
            .await
            .unwrap();
        // A slow writer puts back an old view: readers still see every change.
        std::fs::write(dir.path().join("sessions/stale/session.json"), stale).unwrap();
        let m = manifests.load(&s).await.unwrap().unwrap();
        assert_eq!(m.recordings[0].status, RecordingStatus::Complete);
        assert_eq!(m.metadata.study.as_deref(), Some("later"));
    }

    #[tokio::test]
    async fn a_session_with_nothing_stored_does_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let manifests = Manifests::new(local(dir.path()));
        assert!(manifests.load(&sid("nobody")).await.unwrap().is_none());
        assert!(!manifests.exists(&sid("nobody")).await.unwrap());
        assert!(manifests.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn sessions_are_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let manifests = Manifests::new(local(dir.path()));
        for (name, at) in [
            ("a", datetime!(2026-01-01 0:00 UTC)),
            ("b", datetime!(2026-03-01 0:00 UTC)),
            ("c", datetime!(2026-02-01 0:00 UTC)),
        ] {
            manifests
                .record(
                    &sid(name),
                    Change::Created {
                        metadata: Metadata::default(),
                    },
                    at,
                )
                .await
                .unwrap();
        }
        let order: Vec<String> = manifests
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.session_id.to_string())
            .collect();
        assert_eq!(order, ["b", "c", "a"]);
    }
}
