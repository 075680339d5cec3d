//! Abort and complete of one upload, alone and racing: the abort answer always agrees
//! with what is kept. The whole app over a temporary folder (real `LocalStorage`),
//! driven in-process, the race running both requests at once on two threads; and the
//! same race against the real binary on local storage and on a Garage bucket.
//!
//! `cargo test -p server --test abort_complete`

mod common;
mod garage;
mod reliability;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use common::{Answer, Harness, webm_bytes};
use reliability::{Api, Backend, Store, webm_file};
use serde_json::{Value, json};

fn abort_path(session: &str, start: &Value) -> String {
    let rec = start["recording_id"].as_str().unwrap();
    format!("/api/sessions/{session}/uploads/{rec}/abort")
}

async fn abort(h: &Harness, session: &str, token: &str, start: &Value) -> Answer {
    h.call(
        "POST",
        &abort_path(session, start),
        Some(token),
        Some(json!({"upload": start["upload"]})),
    )
    .await
}

/// The recording's entry in the manifest the API answers.
async fn entry(h: &Harness, session: &str, token: &str, start: &Value) -> Value {
    let a = h
        .call(
            "GET",
            &format!("/api/sessions/{session}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    a.json()["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == start["recording_id"])
        .cloned()
        .expect("the recording is listed")
}

fn event_count(h: &Harness, session: &str) -> usize {
    std::fs::read_dir(h.data().join(format!("sessions/{session}/events")))
        .unwrap()
        .count()
}

fn outcome(a: &Answer) -> (u16, String) {
    let code = match a.status {
        StatusCode::OK => a.json()["recording"]["status"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        _ => a.code(),
    };
    (a.status.as_u16(), code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_racing_complete_never_answers_aborted_for_a_kept_recording() {
    const ROUNDS: usize = 30;
    let h = Arc::new(Harness::new(&[]));
    let (session, token) = h.create_session().await;
    let (mut abort_won, mut complete_won, mut busy_answers) = (0, 0, 0);
    for round in 0..ROUNDS {
        let start = h.start_upload(&session, &token, "race").await;
        let specs = h
            .put_parts(&session, &token, &start, &[webm_bytes(256 * 1024)])
            .await;
        // A different head start each round, either way, so the two meet at every stage.
        let jitter = Duration::from_micros(rand::random_range(0..3000));
        let abort_first = round % 2 == 0;
        let complete_task = {
            let (h, session, token, start) =
                (h.clone(), session.clone(), token.clone(), start.clone());
            tokio::spawn(async move {
                if abort_first {
                    tokio::time::sleep(jitter).await;
                }
                h.complete(&session, &token, &start, &specs).await
            })
        };
        let abort_task = {
            let (h, session, token, start) =
                (h.clone(), session.clone(), token.clone(), start.clone());
            tokio::spawn(async move {
                if !abort_first {
                    tokio::time::sleep(jitter).await;
                }
                abort(&h, &session, &token, &start).await
            })
        };
        let completed = complete_task.await.unwrap();
        let mut aborted = abort_task.await.unwrap();
        // "Busy" is a promise that asking again tells the outcome.
        while outcome(&aborted) == (409, "upload_busy".into()) {
            busy_answers += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            aborted = abort(&h, &session, &token, &start).await;
        }
        let stored = h.data().join(start["key"].as_str().unwrap()).is_file();
        let status = entry(&h, &session, &token, &start).await["status"]
            .as_str()
            .unwrap()
            .to_owned();
        let seen = format!(
            "round {round}: abort {:?} {}, complete {:?} {}, manifest {status}, object stored: {stored}",
            outcome(&aborted),
            String::from_utf8_lossy(&aborted.bytes),
            outcome(&completed),
            String::from_utf8_lossy(&completed.bytes),
        );
        match (outcome(&aborted), outcome(&completed)) {
            ((200, a), (409, c)) if a == "aborted" && c == "upload_ended" => {
                assert_eq!((status.as_str(), stored), ("aborted", false), "{seen}");
                abort_won += 1;
            }
            ((409, a), (200, c)) if a == "already_complete" && c == "complete" => {
                assert_eq!((status.as_str(), stored), ("complete", true), "{seen}");
                complete_won += 1;
            }
            _ => panic!("the answers disagree: {seen}"),
        }
    }
    eprintln!(
        "{ROUNDS} rounds: abort won {abort_won}, complete won {complete_won}, \
         {busy_answers} busy answers"
    );
}

#[tokio::test]
async fn an_abort_after_the_store_completed_but_before_the_manifest_knew_is_refused() {
    let h = Harness::new(&[]);
    let (session, token) = h.create_session().await;
    let start = h.start_upload(&session, &token, "p1").await;
    let specs = h
        .put_parts(&session, &token, &start, &[webm_bytes(4000)])
        .await;
    // The store completes (as a complete whose process then stopped would leave it).
    let key = shared::ObjectKey::parse(start["key"].as_str().unwrap()).unwrap();
    let upload_id = entry(&h, &session, &token, &start).await["upload_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let parts = h.state.storage.list_parts(&key, &upload_id).await.unwrap();
    h.state
        .storage
        .complete_multipart(&key, &upload_id, &parts)
        .await
        .unwrap();

    let a = abort(&h, &session, &token, &start).await;
    assert_eq!(outcome(&a), (409, "already_complete".into()));
    assert!(
        a.json()["message"]
            .as_str()
            .unwrap()
            .contains("not aborted")
    );
    assert_eq!(
        entry(&h, &session, &token, &start).await["status"],
        "uploading"
    );
    // The client's retried complete records it.
    let c = h.complete(&session, &token, &start, &specs).await;
    assert_eq!(outcome(&c), (200, "complete".into()));
    assert!(h.data().join(key.as_str()).is_file());
}

#[tokio::test]
async fn a_repeated_abort_answers_the_same_entry_and_records_nothing() {
    let h = Harness::new(&[]);
    let (session, token) = h.create_session().await;
    let start = h.start_upload(&session, &token, "p1").await;
    h.put_parts(&session, &token, &start, &[webm_bytes(1000)])
        .await;
    let first = abort(&h, &session, &token, &start).await;
    assert_eq!(outcome(&first), (200, "aborted".into()));
    let events = event_count(&h, &session);
    h.offset.advance(Duration::from_secs(5));
    let again = abort(&h, &session, &token, &start).await;
    assert_eq!(outcome(&again), (200, "aborted".into()));
    assert_eq!(again.json()["recording"], first.json()["recording"]);
    assert_eq!(event_count(&h, &session), events, "no new event");
}

#[tokio::test]
async fn aborting_a_failed_recording_is_refused_as_ended() {
    let h = Harness::new(&[]);
    let (session, token) = h.create_session().await;
    let start = h.start_upload(&session, &token, "p1").await;
    let specs = h
        .put_parts(&session, &token, &start, &[vec![b'x'; 1000]])
        .await;
    let c = h.complete(&session, &token, &start, &specs).await;
    assert_eq!(outcome(&c), (422, "not_media".into()));
    let events = event_count(&h, &session);
    let a = abort(&h, &session, &token, &start).await;
    assert_eq!(outcome(&a), (409, "upload_ended".into()));
    let message = a.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("already failed") && message.contains("do not start like"),
        "{message}"
    );
    assert_eq!(
        entry(&h, &session, &token, &start).await["status"],
        "failed"
    );
    assert_eq!(event_count(&h, &session), events, "no new event");
}

/// The race against the real binary: `rounds` times an abort and a complete at once.
async fn abort_and_complete_race_on(backend: Backend, rounds: usize) {
    let store = Store::new(backend);
    let server = store.start(&[]);
    let api = Arc::new(Api::new(&server));
    let (session, token) = api.create_session().await;
    let (mut abort_won, mut complete_won) = (0, 0);
    for round in 0..rounds {
        let start = api.start_upload(&session, &token, "race").await;
        let part = Bytes::from(webm_file(256 * 1024, round as u8));
        let specs = api.upload_parts(&session, &token, &start, &[part]).await;
        let rec = start["recording_id"].as_str().unwrap().to_owned();
        let abort_path = format!("/api/sessions/{session}/uploads/{rec}/abort");
        let abort_body = json!({"upload": start["upload"]});
        // A different head start each round, either way.
        let jitter = Duration::from_micros(rand::random_range(0..60_000));
        let (complete_delay, abort_delay) = match round % 2 {
            0 => (jitter, Duration::ZERO),
            _ => (Duration::ZERO, jitter / 4),
        };
        let (completed, mut aborted) = tokio::join!(
            async {
                tokio::time::sleep(complete_delay).await;
                api.complete(&session, &token, &start, &specs).await
            },
            async {
                tokio::time::sleep(abort_delay).await;
                api.call("POST", &abort_path, Some(&token), Some(abort_body.clone()))
                    .await
            },
        );
        while aborted.0 == StatusCode::CONFLICT && aborted.1["code"] == "upload_busy" {
            tokio::time::sleep(Duration::from_millis(20)).await;
            aborted = api
                .call("POST", &abort_path, Some(&token), Some(abort_body.clone()))
                .await;
        }
        let key = shared::ObjectKey::parse(start["key"].as_str().unwrap()).unwrap();
        let stored = store.storage.exists(&key).await.unwrap();
        let status = api.entry(&session, &rec).await["status"].clone();
        let seen = format!(
            "{backend:?} round {round}: abort {aborted:?}, complete {completed:?}, \
             manifest {status}, object stored: {stored}"
        );
        let abort_answer = match aborted.0 {
            StatusCode::OK => aborted.1["recording"]["status"].clone(),
            _ => aborted.1["code"].clone(),
        };
        let complete_answer = match completed.0 {
            StatusCode::OK => completed.1["recording"]["status"].clone(),
            _ => completed.1["code"].clone(),
        };
        if abort_answer == "aborted" {
            assert_eq!(complete_answer, "upload_ended", "{seen}");
            assert_eq!(
                (status.as_str(), stored),
                (Some("aborted"), false),
                "{seen}"
            );
            abort_won += 1;
        } else {
            assert_eq!(abort_answer, "already_complete", "{seen}");
            assert_eq!(complete_answer, "complete", "{seen}");
            assert_eq!(
                (status.as_str(), stored),
                (Some("complete"), true),
                "{seen}"
            );
            complete_won += 1;
        }
    }
    eprintln!("{backend:?}, {rounds} rounds: abort won {abort_won}, complete won {complete_won}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_racing_complete_agrees_with_what_is_kept_on_the_real_binary_on_local_storage() {
    abort_and_complete_race_on(Backend::Local, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_racing_complete_agrees_with_what_is_kept_on_garage() {
    abort_and_complete_race_on(Backend::Garage, 20).await;
}
