//! Concurrent writers on one store, with the real binary: two server processes share a
//! `DATA_DIR`, or a Garage bucket (which ignores conditional headers, so nothing may
//! rely on them). 50 recordings completed at once, spread over both servers, while 20
//! metadata updates land on the same session: afterwards every recording is complete
//! with its own bytes, every metadata field is there, and `session.json` as stored is
//! valid JSON holding all of it. Two tabs with one session token upload at the same
//! time, through one server or through both: both recordings are kept.
//!
//! `cargo test -p server --test concurrency`

mod common;
mod garage;
mod reliability;

use std::collections::BTreeMap;

use bytes::Bytes;
use reliability::{Api, Backend, MIB, Store, webm_file};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::{ObjectKey, SessionId, SessionManifest};

const RECORDINGS: usize = 50;
const METADATA_UPDATES: usize = 20;

/// The stored `session.json`, which must be valid JSON (a manifest object).
async fn stored_manifest(store: &Store, session: &str) -> SessionManifest {
    let key = ObjectKey::parse(&format!("sessions/{session}/session.json")).unwrap();
    let bytes = store.storage.get(&key).await.unwrap();
    let value: Value = serde_json::from_slice(&bytes).expect("session.json is valid JSON");
    assert!(value.is_object(), "{value}");
    SessionManifest::from_stored(&SessionId::parse(session).unwrap(), &bytes).unwrap()
}

async fn two_servers_on_one_store_lose_nothing(backend: Backend) {
    let store = Store::new(backend);
    let servers = [store.start(&[]), store.start(&[])];
    let apis = [Api::new(&servers[0]), Api::new(&servers[1])];
    let (session, token) = apis[0].create_session().await;

    let mut recordings = Vec::new();
    for i in 0..RECORDINGS {
        let (api, session, token) = (apis[i % 2].clone(), session.clone(), token.clone());
        recordings.push(tokio::spawn(async move {
            let bytes = webm_file(1_000 + i * 37, i as u8);
            let entry = api
                .record(
                    &session,
                    &token,
                    &format!("p{i}"),
                    Bytes::from(bytes.clone()),
                )
                .await;
            (entry["id"].as_str().unwrap().to_owned(), bytes)
        }));
    }
    let mut updates = Vec::new();
    for i in 0..METADATA_UPDATES {
        let (api, session, token) = (apis[(i + 1) % 2].clone(), session.clone(), token.clone());
        updates.push(tokio::spawn(async move {
            let (status, v) = api
                .call(
                    "PATCH",
                    &format!("/api/sessions/{session}/metadata"),
                    Some(&token),
                    Some(json!({"metadata": {format!("field_{i}"): i}})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{v}");
        }));
    }
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for t in recordings {
        let (id, bytes) = t.await.unwrap();
        expected.insert(id, bytes);
    }
    for t in updates {
        t.await.unwrap();
    }
    assert_eq!(expected.len(), RECORDINGS, "every recording got its own id");

    // Both servers see every recording complete, and every metadata field.
    for api in &apis {
        let m = api.manifest(&session).await;
        let recs = m["recordings"].as_array().unwrap();
        assert_eq!(recs.len(), RECORDINGS);
        for r in recs {
            let bytes = &expected[r["id"].as_str().unwrap()];
            assert_eq!(r["status"], "complete", "{r}");
            assert_eq!(r["size"], bytes.len(), "{r}");
        }
        for i in 0..METADATA_UPDATES {
            assert_eq!(m["metadata"][format!("field_{i}")], i, "{}", m["metadata"]);
        }
        assert_eq!(m["metadata"]["study"], "reliability");
    }
    // Each recording holds its own bytes: no two writers shared a key.
    for (id, bytes) in &expected {
        assert_eq!(apis[0].download(&session, id).await, *bytes, "{id}");
    }
    // The stored session.json is valid JSON and, once the writers are done, the whole
    // view: a tool reading the file directly misses nothing.
    let stored = stored_manifest(&store, &session).await;
    assert_eq!(stored.recordings.len(), RECORDINGS);
    assert!(
        stored
            .recordings
            .iter()
            .all(|r| r.status == shared::RecordingStatus::Complete),
        "{:?}",
        stored.recordings
    );
    assert_eq!(stored.metadata.extra.len(), METADATA_UPDATES);
    eprintln!(
        "{backend:?}: 2 servers, {RECORDINGS} concurrent completes and {METADATA_UPDATES} \
         concurrent metadata updates on one session: all kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_data_dir_lose_nothing() {
    two_servers_on_one_store_lose_nothing(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_garage_bucket_lose_nothing() {
    two_servers_on_one_store_lose_nothing(Backend::Garage).await;
}

/// One tab: starts a recording of `problem`, uploads a 5 MiB part and a tail, completes.
async fn tab(
    api: Api,
    session: String,
    token: String,
    start: Value,
    seed: u8,
) -> (String, Vec<u8>) {
    let file = webm_file(5 * MIB + 10_000 + seed as usize, seed);
    let all = Bytes::from(file.clone());
    let specs = api
        .upload_parts(
            &session,
            &token,
            &start,
            &[all.slice(..5 * MIB), all.slice(5 * MIB..)],
        )
        .await;
    let (status, v) = api.complete(&session, &token, &start, &specs).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    (start["recording_id"].as_str().unwrap().to_owned(), file)
}

async fn two_tabs_on_one_session_keep_both_recordings(backend: Backend) {
    let store = Store::new(backend);
    let servers = [store.start(&[]), store.start(&[])];
    // Each tab has its own HTTP client; both hold the same session token.
    let tabs = [
        Api::new(&servers[0]),
        Api::new(&servers[0]),
        Api::new(&servers[1]),
    ];
    let (session, token) = tabs[0].create_session().await;

    // Two tabs on one server press Record on the same problem at the same moment.
    let (a, b) = tokio::join!(
        tabs[0].start_upload(&session, &token, "p1"),
        tabs[1].start_upload(&session, &token, "p1"),
    );
    assert_ne!(a["key"], b["key"], "the same moment still gets two keys");
    // A third tab, reaching the other server, records the same problem meanwhile.
    let c = tabs[2].start_upload(&session, &token, "p1").await;
    let uploads =
        [(&tabs[0], a, 1u8), (&tabs[1], b, 2u8), (&tabs[2], c, 3u8)].map(|(api, start, seed)| {
            tokio::spawn(tab(
                api.clone(),
                session.clone(),
                token.clone(),
                start,
                seed,
            ))
        });
    let mut files = BTreeMap::new();
    for u in uploads {
        let (id, bytes) = u.await.unwrap();
        files.insert(id, bytes);
    }
    assert_eq!(files.len(), 3);
    let m = tabs[2].manifest(&session).await;
    assert_eq!(m["recordings"].as_array().unwrap().len(), 3, "{m}");
    for (id, bytes) in &files {
        let entry = tabs[0].entry(&session, id).await;
        assert_eq!(entry["status"], "complete", "{entry}");
        assert_eq!(tabs[1].download(&session, id).await, *bytes, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_on_one_session_keep_both_recordings_on_local_storage() {
    two_tabs_on_one_session_keep_both_recordings(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_on_one_session_keep_both_recordings_on_garage() {
    two_tabs_on_one_session_keep_both_recordings(Backend::Garage).await;
}
