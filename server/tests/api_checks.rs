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

// ---------------------------------------------------------------------------------------
// Body shapes and messages

#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_refused_on_every_json_route() {
    let h = Harness::new(&[]);
    let (session, token) = h.create_session().await;
    let start = h.start_upload(&session, &token, "p1").await;
    let rec = start["recording_id"].as_str().unwrap();
    let routes = [
        ("POST", "/api/sessions".to_owned()),
        ("PATCH", format!("/api/sessions/{session}/metadata")),
        ("POST", format!("/api/sessions/{session}/uploads")),
        (
            "POST",
            format!("/api/sessions/{session}/uploads/{rec}/parts"),
        ),
        (
            "POST",
            format!("/api/sessions/{session}/uploads/{rec}/complete"),
        ),
        (
            "POST",
            format!("/api/sessions/{session}/uploads/{rec}/abort"),
        ),
    ];
    let before = common::tree(&h.data());
    for (method, path) in &routes {
        for (body, kind) in [
            (json!([]), "an array"),
            (json!([{"study": "s", "metadata": {}}]), "an array"),
            (json!("text"), "a string"),
            (json!(5), "a number"),
            (Value::Null, "null"),
        ] {
            let a = h.call(method, path, Some(&token), Some(body.clone())).await;
            assert_eq!(
                (a.status, a.code().as_str()),
                (StatusCode::BAD_REQUEST, "invalid_body"),
                "{method} {path} {body}"
            );
            assert!(
                message(&a).contains("must be a JSON object") && message(&a).contains(kind),
                "{}",
                message(&a)
            );
        }
    }
    assert_eq!(common::tree(&h.data()), before, "nothing was written");
}

#[tokio::test]
async fn json_errors_name_the_field_and_what_was_expected_in_a_sentence() {
    let h = Harness::new(&[]);
    let a = h
        .call(
            "POST",
            "/api/sessions",
            None,
            Some(json!({"metadata": {"study": 5}})),
        )
        .await;
    assert_eq!(a.code(), "invalid_body");
    let m = message(&a);
    assert!(
        m.starts_with("The JSON body does not fit this route at `metadata.study`:")
            && m.contains("expected a string"),
        "{m}"
    );
    for noise in ["Failed to deserialize", "line 1", "column"] {
        assert!(!m.contains(noise), "{m}");
    }
    let a = h
        .call("POST", "/api/sessions", None, Some(json!({"metdata": {}})))
        .await;
    assert_eq!(a.code(), "invalid_body");
    assert!(
        message(&a).contains("unknown field `metdata`"),
        "{}",
        message(&a)
    );

    let empty = axum::http::Request::builder()
        .method("POST")
        .uri("/api/sessions")
        .header("content-type", "application/json")
        .body(axum::body::Body::empty())
        .unwrap();
    let a = h.send(empty).await;
    assert_eq!(a.code(), "invalid_json");
    assert!(
        message(&a).starts_with("The body is empty"),
        "{}",
        message(&a)
    );
}

#[tokio::test]
async fn a_bad_problem_id_in_a_body_is_invalid_id_like_a_bad_id_in_a_path() {
    let h = Harness::new(&[]);
    let (session, token) = h.create_session().await;
    let a = h
        .call(
            "POST",
            &format!("/api/sessions/{session}/uploads"),
            Some(&token),
            Some(json!({"problem_id": "a\\b", "content_type": "video/webm"})),
        )
        .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_id")
    );
    assert_eq!(
        message(&a),
        "The body's problem id may only contain ASCII letters, digits, '-' and '_' (found '\\')."
    );
    // The wrong type is a wrong shape, not a bad id.
    let a = h
        .call(
            "POST",
            &format!("/api/sessions/{session}/uploads"),
            Some(&token),
            Some(json!({"problem_id": 5, "content_type": "video/webm"})),
        )
        .await;
    assert_eq!(a.code(), "invalid_body");

    let a = h
        .call("GET", "/api/sessions/a%5Cb", Some(&token), None)
        .await;
    assert_eq!(a.code(), "invalid_id");
    assert_eq!(
        message(&a),
        "The path's session id may only contain ASCII letters, digits, '-' and '_' (found '\\')."
    );
}

#[tokio::test]
async fn refusals_say_what_to_send() {
    let h = Harness::new(&[]);
    let (session, token) = h.create_session().await;

    // The old route with a JSON body.
    let a = h
        .call(
            "POST",
            &format!("/sessions/{session}/recording"),
            None,
            Some(json!({"problem_id": "p1"})),
        )
        .await;
    assert_eq!(a.code(), "invalid_multipart");
    let m = message(&a);
    assert!(
        m.contains("multipart/form-data")
            && m.contains("`recording`")
            && m.contains("`problem_id`"),
        "{m}"
    );
    assert!(!m.contains("boundary`"), "{m}");

    // A complete that lists no parts.
    let start = h.start_upload(&session, &token, "p1").await;
    h.put_parts(&session, &token, &start, &[webm_bytes(100)])
        .await;
    let a = h.complete(&session, &token, &start, &[]).await;
    assert_eq!(a.code(), "invalid_parts");
    assert!(
        message(&a).contains("List the parts you uploaded"),
        "{}",
        message(&a)
    );
    // A complete that leaves out a stored part is told to list it, not to upload it.
    let start = h.start_upload(&session, &token, "p2").await;
    let specs = h
        .put_parts(
            &session,
            &token,
            &start,
            &[webm_bytes(shared::MIN_PART_SIZE as usize), vec![1; 10]],
        )
        .await;
    let a = h.complete(&session, &token, &start, &specs[..1]).await;
    assert_eq!(a.code(), "parts_mismatch");
    assert!(
        message(&a).ends_with("List every part you uploaded, then complete again."),
        "{}",
        message(&a)
    );

    // Storage URLs: malformed and expired, as sentences.
    let key = format!("sessions/{session}/x.webm");
    let a = h
        .call("PUT", &format!("/storage/{key}?op=part"), None, None)
        .await;
    assert_eq!(a.code(), "signature_malformed");
    assert!(
        message(&a).starts_with("The URL is not a complete signed storage URL ("),
        "{}",
        message(&a)
    );
    let start = h.start_upload(&session, &token, "p3").await;
    let rec = start["recording_id"].as_str().unwrap();
    let signed = h
        .call(
            "POST",
            &format!("/api/sessions/{session}/uploads/{rec}/parts"),
            Some(&token),
            Some(json!({"upload": start["upload"], "parts": [{"part_number": 1, "size": 3}]})),
        )
        .await
        .json();
    let url = signed["parts"][0]["request"]["url"].as_str().unwrap();
    h.offset.advance(std::time::Duration::from_secs(3600));
    let put = axum::http::Request::builder()
        .method("PUT")
        .uri(url.strip_prefix(common::BASE).unwrap())
        .header("content-length", 3)
        .body(axum::body::Body::from(vec![1u8, 2, 3]))
        .unwrap();
    let a = h.send(put).await;
    assert_eq!(a.code(), "signature_expired");
    let m = message(&a);
    assert!(
        m.starts_with("This URL expired at 20") && m.ends_with("Ask the server for a fresh URL."),
        "{m}"
    );
}
