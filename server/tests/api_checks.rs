//! What the API checks beyond the shape of a request: the client's checksum against the
//! stored bytes (local storage), metadata bounds on the merged result, bodies that are
//! not JSON objects, and error messages a person can act on. The whole app over a
//! temporary folder, driven in-process.
//!
//! `cargo test -p server --test api_checks`

mod common;

use axum::http::StatusCode;
use common::{Answer, Harness, webm_bytes};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn message(a: &Answer) -> String {
    a.json()["message"].as_str().unwrap_or("").to_owned()
}

/// The recording's entry in the manifest.
async fn entry(h: &Harness, session: &str, token: &str, recording: &Value) -> Value {
    let a = h
        .call(
            "GET",
            &format!("/api/sessions/{session}"),
            Some(token),
            None,
        )
        .await;
    a.json()["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| &r["id"] == recording)
        .cloned()
        .unwrap()
}

async fn complete_with_sha(
    h: &Harness,
    session: &str,
    token: &str,
    start: &Value,
    specs: &[Value],
    sha: &str,
) -> Answer {
    let rec = start["recording_id"].as_str().unwrap();
    h.call(
        "POST",
        &format!("/api/sessions/{session}/uploads/{rec}/complete"),
        Some(token),
        Some(json!({"upload": start["upload"], "parts": specs, "sha256": sha})),
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Checksums

#[tokio::test]
async fn a_checksum_that_does_not_match_the_stored_bytes_is_refused_and_nothing_kept() {
    let h = Harness::new(&[]);
    let (session, token) = h.create_session().await;
    let start = h.start_upload(&session, &token, "p1").await;
    let bytes = webm_bytes(3000);
    let specs = h
        .put_parts(&session, &token, &start, std::slice::from_ref(&bytes))
        .await;
    let wrong = "0".repeat(64);
    let a = complete_with_sha(&h, &session, &token, &start, &specs, &wrong).await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "checksum_mismatch")
    );
    let actual = hex::encode(Sha256::digest(&bytes));
    assert!(
        message(&a).contains(&actual) && message(&a).contains(&wrong),
        "{}",
        message(&a)
    );
    assert!(!h.data().join(start["key"].as_str().unwrap()).exists());
    let e = entry(&h, &session, &token, &start["recording_id"]).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(e["error"].as_str(), Some(message(&a).as_str()));
    assert!(e.get("sha256").is_none(), "{e}");
}

#[tokio::test]
async fn a_checksum_that_matches_is_recorded() {
    let h = Harness::new(&[]);
    let (session, token) = h.create_session().await;
    let start = h.start_upload(&session, &token, "p1").await;
    let first = webm_bytes(shared::MIN_PART_SIZE as usize);
    let second = vec![7u8; 1234];
    let specs = h
        .put_parts(&session, &token, &start, &[first.clone(), second.clone()])
        .await;
    let mut hasher = Sha256::new();
    hasher.update(&first);
    hasher.update(&second);
    let sha = hex::encode(hasher.finalize());
    let a = complete_with_sha(&h, &session, &token, &start, &specs, &sha).await;
    assert_eq!(a.status, StatusCode::OK, "{}", message(&a));
    assert_eq!(a.json()["recording"]["sha256"], sha.as_str());
}

// ---------------------------------------------------------------------------------------
// Metadata

#[tokio::test]
async fn metadata_updates_cannot_grow_a_session_past_its_bounds() {
    let h = Harness::new(&[]);
    let (session, token) = h.create_session().await;
    let path = format!("/api/sessions/{session}/metadata");
    let mut accepted = 0;
    let mut refused = None;
    for round in 0..100 {
        let fields: serde_json::Map<String, Value> = (0..32)
            .map(|i| (format!("r{round}_f{i}"), json!(i)))
            .collect();
        let a = h
            .call(
                "PATCH",
                &path,
                Some(&token),
                Some(json!({"metadata": fields})),
            )
            .await;
        if a.status == StatusCode::OK {
            accepted += 1;
        } else {
            refused = Some(a);
            break;
        }
    }
    assert_eq!(accepted, 1, "only the first 32 new fields fit");
    let a = refused.expect("a change past the bounds is refused");
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::BAD_REQUEST, "metadata_too_large")
    );
    assert!(message(&a).contains("64 further fields"), "{}", message(&a));

    // Changing fields that exist, and study/participant, still works.
    let a = h
        .call(
            "PATCH",
            &path,
            Some(&token),
            Some(json!({"metadata": {"r0_f0": "changed", "participant": "P9"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", message(&a));
    let m = a.json()["metadata"].clone();
    assert_eq!(m["r0_f0"], "changed");
    assert_eq!(m["participant"], "P9");
    assert_eq!(m.as_object().unwrap().len(), 33);
    let stored = std::fs::read(h.data().join(format!("sessions/{session}/session.json"))).unwrap();
    assert!(
        stored.len() < 16 * 1024,
        "session.json is {} bytes",
        stored.len()
    );
}
