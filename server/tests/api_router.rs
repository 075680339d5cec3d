//! Router tests: the whole app over a temporary folder (local storage, real files),
//! driven in-process with `tower::ServiceExt::oneshot`. Every route, every rejection.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Harness, RESEARCHER, multipart, tree, webm_bytes};
use serde_json::{Value, json};

const MIB: usize = 1024 * 1024;

fn legacy_request(
    session: &str,
    content_type: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> Request<Body> {
    let mut req = Request::builder()
        .method("POST")
        .uri(format!("/sessions/{session}/recording"))
        .header("content-type", content_type)
        .header("content-length", body.len());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.body(Body::from(body)).unwrap()
}

// ---------------------------------------------------------------------------------------
// Sessions

#[tokio::test]
async fn creating_a_session_returns_a_random_id_a_token_and_the_manifest() {
    let h = Harness::new(&[]);
    let a = h
        .call(
            "POST",
            "/api/sessions",
            None,
            Some(json!({"metadata": {"study": "s1", "participant": "P7", "cohort": 2}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let v = a.json();
    let id = v["session_id"].as_str().unwrap();
    assert!(
        id.len() >= 22
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{id}"
    );
    assert!(v["token"].as_str().unwrap().starts_with(&format!("{id}.")));
    assert_eq!(v["manifest"]["metadata"]["study"], "s1");
    assert_eq!(v["manifest"]["metadata"]["cohort"], 2);
    assert!(v["manifest"]["created_at"].is_string());
    let stored: Value = serde_json::from_slice(
        &std::fs::read(h.data().join(format!("sessions/{id}/session.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(stored["metadata"]["participant"], "P7");
    assert_eq!(
        std::fs::read_dir(h.data().join(format!("sessions/{id}/events")))
            .unwrap()
            .count(),
        1
    );

    let other = h.create_session().await;
    assert_ne!(other.0, id);
}

#[tokio::test]
async fn bad_create_bodies_get_the_shared_error_body() {
    let h = Harness::new(&[]);
    let cases = [
        (
            json!({"metadata": {"study": "x".repeat(257)}}),
            400,
            "invalid_metadata",
        ),
        (json!({"metadata": {}, "extra": 1}), 400, "invalid_body"),
        (json!({"metadata": "not an object"}), 400, "invalid_body"),
    ];
    for (body, status, code) in cases {
        let a = h
            .call("POST", "/api/sessions", None, Some(body.clone()))
            .await;
        assert_eq!(
            (a.status.as_u16(), a.code().as_str()),
            (status, code),
            "{body}"
        );
        assert!(!a.json()["message"].as_str().unwrap().is_empty());
    }
    let not_json = Request::post("/api/sessions")
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    assert_eq!(h.send(not_json).await.code(), "invalid_json");
    let no_type = Request::post("/api/sessions")
        .body(Body::from("{}"))
        .unwrap();
    let a = h.send(no_type).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (415, "unsupported_media_type")
    );
    let huge = json!({"metadata": {"notes": "x".repeat(70 * 1024)}});
    let a = h.call("POST", "/api/sessions", None, Some(huge)).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (413, "body_too_large")
    );
    assert!(tree(&h.data()).is_empty(), "nothing was written");
}

#[tokio::test]
async fn a_session_is_read_with_its_own_token_or_the_researchers() {
    let h = Harness::new(&[]);
    let (id, token) = h.create_session().await;
    let (other, other_token) = h.create_session().await;
    let uri = format!("/api/sessions/{id}");

    let a = h.call("GET", &uri, Some(&token), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["session_id"], id.as_str());
    assert_eq!(
        h.call("GET", &uri, Some(RESEARCHER), None).await.status,
        StatusCode::OK
    );

    let a = h.call("GET", &uri, None, None).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (401, "unauthorized")
    );
    let a = h
        .send(
            Request::get(&uri)
                .header("authorization", "Basic abc")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (401, "unauthorized")
    );
    let a = h.call("GET", &uri, Some(&other_token), None).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (403, "wrong_session")
    );
    let mut tampered = token.clone();
    tampered.replace_range(tampered.len() - 4.., "0000");
    let a = h.call("GET", &uri, Some(&tampered), None).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (403, "forbidden"));
    let a = h
        .call("GET", &uri, Some("researcher-token-for-tesTS"), None)
        .await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (403, "forbidden"));

    let a = h
        .call("GET", "/api/sessions/nosuchsession", Some(RESEARCHER), None)
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (404, "session_not_found")
    );
    let _ = other;
}

#[tokio::test]
async fn metadata_is_merged_by_participant_or_researcher() {
    let h = Harness::new(&[]);
    let (id, token) = h.create_session().await;
    let uri = format!("/api/sessions/{id}/metadata");
    let a = h
        .call(
            "PATCH",
            &uri,
            Some(&token),
            Some(json!({"metadata": {"study": "a", "age": 9}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = h
        .call(
            "PATCH",
            &uri,
            Some(RESEARCHER),
            Some(json!({"metadata": {"participant": "P1"}})),
        )
        .await;
    let m = a.json();
    assert_eq!(m["metadata"]["study"], "a");
    assert_eq!(m["metadata"]["age"], 9);
    assert_eq!(m["metadata"]["participant"], "P1");
    let a = h
        .call(
            "PATCH",
            &uri,
            Some(&token),
            Some(json!({"metadata": {"participant": "p".repeat(300)}})),
        )
        .await;
    assert_eq!(a.code(), "invalid_metadata");
    let a = h
        .call(
            "PATCH",
            "/api/sessions/ghost/metadata",
            Some(RESEARCHER),
            Some(json!({"metadata": {}})),
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (404, "session_not_found")
    );
    assert!(!h.data().join("sessions/ghost").exists());
}

#[tokio::test]
async fn researchers_issue_tokens_for_existing_sessions_only() {
    let h = Harness::new(&[]);
    let (id, token) = h.create_session().await;
    let uri = format!("/api/sessions/{id}/token");
    let a = h.call("POST", &uri, Some(RESEARCHER), None).await;
    assert_eq!(a.status, StatusCode::OK);
    let issued = a.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(
        issued, token,
        "tokens are stateless: the same session gets the same token"
    );
    let a = h.call("POST", &uri, Some(&token), None).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (403, "forbidden"));
    let a = h.call("POST", &uri, None, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = h
        .call("POST", "/api/sessions/ghost/token", Some(RESEARCHER), None)
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (404, "session_not_found")
    );
}

#[tokio::test]
async fn researchers_list_sessions_newest_first() {
    let h = Harness::new(&[]);
    let (first, token) = h.create_session().await;
    h.offset.advance(Duration::from_secs(5));
    let (second, _) = h.create_session().await;
    let a = h.call("GET", "/api/sessions", Some(RESEARCHER), None).await;
    assert_eq!(a.status, StatusCode::OK);
    let ids: Vec<String> = a.json()["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, [second, first]);
    let a = h.call("GET", "/api/sessions", Some(&token), None).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (403, "forbidden"));
    assert_eq!(
        h.call("GET", "/api/sessions", None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

// ---------------------------------------------------------------------------------------
// Ids at the edge

#[tokio::test]
async fn traversal_in_any_spelling_is_invalid_id_and_writes_nothing() {
    let h = Harness::new(&[]);
    let (id, token) = h.create_session().await;
    let before = tree(&h.data());
    let long = "a".repeat(200);
    let spellings = [
        "..",
        "%2e%2e",
        ".%2E",
        "%2E%2E%2Fetc",
        "a%2Fb",
        "%2Fetc%2Fpasswd",
        "a%5Cb",
        "%5C..%5Cx",
        "%00",
        "a%00b",
        long.as_str(),
        "%ff",
        "a.b",
        "C%3A",
        "%20",
    ];
    for bad in spellings {
        let routes = [
            ("GET", format!("/api/sessions/{bad}"), None),
            (
                "PATCH",
                format!("/api/sessions/{bad}/metadata"),
                Some(json!({"metadata": {}})),
            ),
            ("POST", format!("/api/sessions/{bad}/token"), None),
            (
                "POST",
                format!("/api/sessions/{bad}/uploads"),
                Some(json!({"problem_id": "p1", "content_type": "video/webm"})),
            ),
            (
                "POST",
                format!("/api/sessions/{id}/uploads/{bad}/parts"),
                Some(json!({"upload": "x", "parts": []})),
            ),
            (
                "POST",
                format!("/api/sessions/{bad}/uploads/r/complete"),
                Some(json!({"upload": "x", "parts": []})),
            ),
            (
                "POST",
                format!("/api/sessions/{id}/uploads/{bad}/abort"),
                Some(json!({"upload": "x"})),
            ),
            (
                "GET",
                format!("/api/sessions/{id}/recordings/{bad}/url"),
                None,
            ),
        ];
        for (method, uri, body) in routes {
            for auth in [Some(token.as_str()), Some(RESEARCHER)] {
                let a = h.call(method, &uri, auth, body.clone()).await;
                assert_eq!(
                    (a.status.as_u16(), a.code().as_str()),
                    (400, "invalid_id"),
                    "{method} {uri}"
                );
            }
        }
        let (ct, body) = multipart(&[
            ("problem_id", None, b"p1"),
            ("recording", Some("a.webm"), &webm_bytes(100)),
        ]);
        let a = h.send(legacy_request(bad, &ct, body, None)).await;
        assert_eq!(
            (a.status.as_u16(), a.code().as_str()),
            (400, "invalid_id"),
            "legacy {bad}"
        );
    }
    let (ct, body) = multipart(&[
        ("problem_id", None, b"../p1"),
        ("recording", Some("a.webm"), &webm_bytes(100)),
    ]);
    let a = h.send(legacy_request(&id, &ct, body, None)).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (400, "invalid_id"),
        "problem_id is checked too"
    );
    let a = h
        .call(
            "POST",
            &format!("/api/sessions/{id}/uploads"),
            Some(&token),
            Some(json!({"problem_id": "../x", "content_type": "video/webm"})),
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (400, "invalid_id"),
        "an id in a body is checked like one in a path"
    );
    assert_eq!(tree(&h.data()), before, "nothing was written anywhere");
}

#[tokio::test]
async fn unknown_api_paths_and_bad_queries_get_json_errors() {
    let h = Harness::new(&[]);
    let a = h.call("GET", "/api/nothing/here", None, None).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (404, "no_such_route")
    );
    let (id, _) = h.create_session().await;
    let a = h
        .call(
            "GET",
            &format!("/api/sessions/{id}/recordings/recording_p1_1/url?download=maybe"),
            Some(RESEARCHER),
            None,
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (400, "invalid_query")
    );
}

// ---------------------------------------------------------------------------------------
// Uploads

#[tokio::test]
async fn the_whole_upload_flow_stores_verified_media_and_records_it() {
    let h = Harness::new(&[]);
    let (id, token) = h.create_session().await;
    let start = h.start_upload(&id, &token, "p1").await;
    let rec = start["recording_id"].as_str().unwrap().to_owned();
    assert!(rec.starts_with("recording_p1_"), "{rec}");
    assert_eq!(start["key"], format!("sessions/{id}/{rec}.webm"));
    assert_eq!(start["min_part_size"], 5 * MIB);
    assert_eq!(start["max_parts_per_request"], 100);

    let m = h
        .call("GET", &format!("/api/sessions/{id}"), Some(&token), None)
        .await
        .json();
    assert_eq!(m["recordings"][0]["status"], "uploading");
    assert!(m["recordings"][0]["upload_id"].is_string());

    let all = webm_bytes(5 * MIB + 300);
    let parts = vec![all[..5 * MIB].to_vec(), all[5 * MIB..].to_vec()];
    let specs = h.put_parts(&id, &token, &start, &parts).await;
    // The local backend checks the client's hash against the stored bytes.
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&all));
    let rec_uri = format!("/api/sessions/{id}/uploads/{rec}/complete");
    let body =
        json!({"upload": start["upload"], "parts": specs, "sha256": sha, "duration_ms": 4321});
    let a = h
        .call("POST", &rec_uri, Some(&token), Some(body.clone()))
        .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.bytes)
    );
    let r = &a.json()["recording"];
    assert_eq!(r["status"], "complete");
    assert_eq!(r["size"], all.len());
    assert_eq!(r["sha256"], sha.as_str());
    assert_eq!(r["duration_ms"], 4321);
    assert!(r["started_at"].is_string() && r["finished_at"].is_string());
    assert!(r.get("upload_id").is_none());
    let file = h.data().join(format!("sessions/{id}/{rec}.webm"));
    assert_eq!(std::fs::read(&file).unwrap(), all);

    // A retried complete answers the same entry.
    let again = h.call("POST", &rec_uri, Some(&token), Some(body)).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["recording"], a.json()["recording"]);
    // A repeat that differs (other sizes, another hash, a hash the first lacked) is
    // not told "complete", and the recording stays as it was.
    let other_sha = "a".repeat(64);
    for differing in [
        json!({"upload": start["upload"], "parts": [{"part_number": 1, "size": 5}], "sha256": sha}),
        json!({"upload": start["upload"], "parts": specs, "sha256": other_sha}),
    ] {
        let a = h
            .call("POST", &rec_uri, Some(&token), Some(differing))
            .await;
        assert_eq!(
            (a.status.as_u16(), a.code().as_str()),
            (409, "already_complete"),
            "{}",
            String::from_utf8_lossy(&a.bytes)
        );
    }
    // A list naming a part twice is refused as such, not as a mismatch.
    let twice = json!({"upload": start["upload"], "parts": [specs[0], specs[0], specs[1]]});
    let a = h.call("POST", &rec_uri, Some(&token), Some(twice)).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (400, "invalid_parts")
    );
    assert_eq!(std::fs::read(&file).unwrap(), all);

    // Aborting a complete recording is refused.
    let a = h
        .call(
            "POST",
            &format!("/api/sessions/{id}/uploads/{rec}/abort"),
            Some(&token),
            Some(json!({"upload": start["upload"]})),
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (409, "already_complete")
    );
    assert!(file.exists());

    // Playback for researchers only; the URL serves the bytes with Range.
    let url_uri = format!("/api/sessions/{id}/recordings/{rec}/url");
    let a = h.call("GET", &url_uri, Some(&token), None).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (403, "forbidden"));
    let a = h.call("GET", &url_uri, Some(RESEARCHER), None).await;
    assert_eq!(a.status, StatusCode::OK);
    let p = a.json();
    assert_eq!(p["content_type"], "video/webm;codecs=vp8,opus");
    let path = p["url"]
        .as_str()
        .unwrap()
        .strip_prefix(common::BASE)
        .unwrap()
        .to_owned();
    let got = h
        .send(
            Request::get(&path)
                .header("range", "bytes=10-19")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(got.bytes, all[10..20]);
    let a = h
        .call(
            "GET",
            &format!("{url_uri}?download=true"),
            Some(RESEARCHER),
            None,
        )
        .await;
    assert!(
        a.json()["url"]
            .as_str()
            .unwrap()
            .contains(&format!("dl={rec}.webm"))
    );
}

#[tokio::test]
async fn two_uploads_started_in_the_same_millisecond_get_distinct_ids() {
    let h = Harness::new(&[]);
    let (id, token) = h.create_session().await;
    h.offset.freeze();
    let starts = futures::future::join_all((0..5).map(|_| h.start_upload(&id, &token, "p1"))).await;
    let ids: std::collections::BTreeSet<String> = starts
        .iter()
        .map(|s| s["recording_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    let m = h
        .call("GET", &format!("/api/sessions/{id}"), Some(&token), None)
        .await
        .json();
    assert_eq!(m["recordings"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn starting_an_upload_needs_a_recording_content_type_and_the_sessions_token() {
    let h = Harness::new(&[]);
    let (id, token) = h.create_session().await;
    let (_, other_token) = h.create_session().await;
    let uri = format!("/api/sessions/{id}/uploads");
    let a = h
        .call(
            "POST",
            &uri,
            Some(&token),
            Some(json!({"problem_id": "p1", "content_type": "text/html"})),
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (400, "invalid_body")
    );
    assert!(a.json()["message"].as_str().unwrap().contains("text/html"));
    let a = h
        .call(
            "POST",
            &uri,
            Some(&other_token),
            Some(json!({"problem_id": "p1", "content_type": "video/webm"})),
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (403, "wrong_session")
    );
    let a = h
        .call(
            "POST",
            &uri,
            None,
            Some(json!({"problem_id": "p1", "content_type": "video/webm"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn presigning_checks_the_handle_and_the_part_bounds() {
    let h = Harness::new(&[]);
    let (id, token) = h.create_session().await;
    let start = h.start_upload(&id, &token, "p1").await;
    let other = h.start_upload(&id, &token, "p2").await;
    let rec = start["recording_id"].as_str().unwrap();
    let uri = format!("/api/sessions/{id}/uploads/{rec}/parts");
    let ok = h
        .call(
            "POST",
            &uri,
            Some(&token),
            Some(json!({"upload": start["upload"], "parts": [{"part_number": 1, "size": 10}]})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let part = &ok.json()["parts"][0];
    assert_eq!(part["part_number"], 1);
    assert_eq!(part["request"]["method"], "PUT");
    assert!(part["request"]["url"].as_str().unwrap().contains("len=10"));

    let many: Vec<Value> = (1..=101)
        .map(|n| json!({"part_number": n, "size": 1}))
        .collect();
    for parts in [
        json!([]),
        json!([{"part_number": 0, "size": 1}]),
        json!([{"part_number": 10001, "size": 1}]),
        json!([{"part_number": 1, "size": 0}]),
        json!(many),
    ] {
        let a = h
            .call(
                "POST",
                &uri,
                Some(&token),
                Some(json!({"upload": start["upload"], "parts": parts})),
            )
            .await;
        assert_eq!(
            (a.status.as_u16(), a.code().as_str()),
            (400, "invalid_parts")
        );
    }
    let handle = start["upload"].as_str().unwrap();
    let mut tampered = handle.to_owned();
    tampered.insert(3, 'x');
    let a = h
        .call(
            "POST",
            &uri,
            Some(&token),
            Some(json!({"upload": tampered, "parts": [{"part_number": 1, "size": 1}]})),
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (403, "bad_upload_handle")
    );
    let a = h
        .call(
            "POST",
            &uri,
            Some(&token),
            Some(json!({"upload": other["upload"], "parts": [{"part_number": 1, "size": 1}]})),
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (403, "wrong_upload")
    );
    // Another session's token with this session's handle.
    let (other_session, other_token) = h.create_session().await;
    let a = h
        .call(
            "POST",
            &format!("/api/sessions/{other_session}/uploads/{rec}/parts"),
            Some(&other_token),
            Some(json!({"upload": handle, "parts": [{"part_number": 1, "size": 1}]})),
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (403, "wrong_upload")
    );
}

#[tokio::test]
async fn completing_checks_stored_parts_magic_bytes_and_checksum_format() {
    let h = Harness::new(&[]);
    let (id, token) = h.create_session().await;

    // The client's list must match the store's.
    let start = h.start_upload(&id, &token, "p1").await;
    let specs = h
        .put_parts(&id, &token, &start, &[webm_bytes(5 * MIB), webm_bytes(10)])
        .await;
    let a = h.complete(&id, &token, &start, &specs[..1]).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (409, "parts_mismatch")
    );
    assert!(
        a.json()["message"].as_str().unwrap().contains("part 2"),
        "{}",
        a.json()
    );
    let wrong_size = vec![specs[0].clone(), json!({"part_number": 2, "size": 11})];
    let a = h.complete(&id, &token, &start, &wrong_size).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (409, "parts_mismatch")
    );
    let rec = start["recording_id"].as_str().unwrap();
    let a = h
        .call(
            "POST",
            &format!("/api/sessions/{id}/uploads/{rec}/complete"),
            Some(&token),
            Some(json!({"upload": start["upload"], "parts": specs, "sha256": "ABC"})),
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (400, "invalid_sha256")
    );
    assert_eq!(
        h.complete(&id, &token, &start, &specs).await.status,
        StatusCode::OK
    );

    // A part under 5 MiB before the last one breaks the multipart rules.
    let small = h.start_upload(&id, &token, "p2").await;
    let specs = h
        .put_parts(&id, &token, &small, &[webm_bytes(100), webm_bytes(100)])
        .await;
    let a = h.complete(&id, &token, &small, &specs).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (400, "invalid_parts")
    );

    // Bytes that are not the announced container are deleted and recorded as failed.
    let fake = h.start_upload(&id, &token, "p3").await;
    let specs = h
        .put_parts(&id, &token, &fake, &[b"<html>not a video</html>".to_vec()])
        .await;
    let a = h.complete(&id, &token, &fake, &specs).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (422, "not_media"));
    let key = fake["key"].as_str().unwrap();
    assert!(!h.data().join(key).exists(), "the object was deleted");
    let m = h
        .call("GET", &format!("/api/sessions/{id}"), Some(&token), None)
        .await
        .json();
    let failed = m["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == fake["recording_id"])
        .unwrap();
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"].as_str().unwrap().contains("webm"));
    let a = h.complete(&id, &token, &fake, &specs).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (409, "upload_ended")
    );
    let url = h
        .call(
            "GET",
            &format!(
                "/api/sessions/{id}/recordings/{}/url",
                fake["recording_id"].as_str().unwrap()
            ),
            Some(RESEARCHER),
            None,
        )
        .await;
    assert_eq!(
        (url.status.as_u16(), url.code().as_str()),
        (409, "not_playable")
    );
}

#[tokio::test]
async fn aborting_deletes_the_parts_and_records_it() {
    let h = Harness::new(&[]);
    let (id, token) = h.create_session().await;
    let start = h.start_upload(&id, &token, "p1").await;
    let specs = h.put_parts(&id, &token, &start, &[webm_bytes(1000)]).await;
    let rec = start["recording_id"].as_str().unwrap();
    let a = h
        .call(
            "POST",
            &format!("/api/sessions/{id}/uploads/{rec}/abort"),
            Some(&token),
            Some(json!({"upload": start["upload"]})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["recording"]["status"], "aborted");
    let a = h.complete(&id, &token, &start, &specs).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (409, "upload_ended")
    );
    assert!(!h.data().join(start["key"].as_str().unwrap()).exists());
    let a = h
        .call(
            "GET",
            &format!("/api/sessions/{id}/recordings/{rec}/url"),
            Some(RESEARCHER),
            None,
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (409, "not_playable")
    );
    let a = h
        .call(
            "GET",
            &format!("/api/sessions/{id}/recordings/recording_zz_1/url"),
            Some(RESEARCHER),
            None,
        )
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (404, "recording_not_found")
    );
}

#[tokio::test]
async fn an_expired_part_url_is_refused_by_the_storage_routes() {
    let h = Harness::new(&[("URL_TTL_SECS", "60")]);
    let (id, token) = h.create_session().await;
    let start = h.start_upload(&id, &token, "p1").await;
    let rec = start["recording_id"].as_str().unwrap();
    let a = h
        .call(
            "POST",
            &format!("/api/sessions/{id}/uploads/{rec}/parts"),
            Some(&token),
            Some(json!({"upload": start["upload"], "parts": [{"part_number": 1, "size": 4}]})),
        )
        .await;
    let url = a.json()["parts"][0]["request"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    h.offset.advance(Duration::from_secs(61));
    let put = h
        .send(
            Request::put(url.strip_prefix(common::BASE).unwrap())
                .header("content-length", 4)
                .body(Body::from(webm_bytes(4)))
                .unwrap(),
        )
        .await;
    assert_eq!(
        (put.status.as_u16(), put.code().as_str()),
        (403, "signature_expired")
    );
}

#[tokio::test]
async fn a_corrupt_manifest_is_reported_naming_the_session_and_left_untouched() {
    let h = Harness::new(&[]);
    let (id, token) = h.create_session().await;
    let file = h.data().join(format!("sessions/{id}/session.json"));
    std::fs::write(&file, b"[\"this is not a manifest\"]").unwrap();
    let before = tree(&h.data());

    let a = h
        .call("GET", &format!("/api/sessions/{id}"), Some(&token), None)
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (500, "manifest_corrupt")
    );
    let message = a.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains(&id) && message.contains("untouched"),
        "{message}"
    );

    let a = h
        .call(
            "PATCH",
            &format!("/api/sessions/{id}/metadata"),
            Some(&token),
            Some(json!({"metadata": {"study": "x"}})),
        )
        .await;
    assert_eq!(a.code(), "manifest_corrupt");
    let a = h
        .call(
            "POST",
            &format!("/api/sessions/{id}/uploads"),
            Some(&token),
            Some(json!({"problem_id": "p1", "content_type": "video/webm"})),
        )
        .await;
    assert_eq!(a.code(), "manifest_corrupt");
    let (ct, body) = multipart(&[
        ("problem_id", None, b"p1"),
        ("recording", Some("a.webm"), &webm_bytes(100)),
    ]);
    let a = h.send(legacy_request(&id, &ct, body, None)).await;
    assert_eq!(a.code(), "manifest_corrupt");

    let list = h
        .call("GET", "/api/sessions", Some(RESEARCHER), None)
        .await
        .json();
    let row = &list["sessions"][0];
    assert_eq!(row["error"]["code"], "manifest_corrupt");
    assert_eq!(
        tree(&h.data()),
        before,
        "the file and the folder are unchanged"
    );
}

#[tokio::test]
async fn an_old_app_folder_is_served_as_it_is() {
    let h = Harness::new(&[]);
    let folder = h.data().join("sessions/legacy-1");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("session.json"),
        br#"{"id": "legacy-1", "problems": ["p1"], "started": 1700000000}"#,
    )
    .unwrap();
    std::fs::write(
        folder.join("recording_p1_1700000000000.webm"),
        webm_bytes(321),
    )
    .unwrap();
    let before = tree(&h.data());

    let list = h
        .call("GET", "/api/sessions", Some(RESEARCHER), None)
        .await
        .json();
    assert_eq!(list["sessions"][0]["session_id"], "legacy-1");
    assert_eq!(list["sessions"][0]["counts"]["complete"], 1);
    let m = h
        .call("GET", "/api/sessions/legacy-1", Some(RESEARCHER), None)
        .await
        .json();
    assert_eq!(m["recordings"][0]["discovered"], true);
    assert_eq!(m["recordings"][0]["size"], 321);
    assert_eq!(m["problems"][0], "p1");
    let url = h
        .call(
            "GET",
            "/api/sessions/legacy-1/recordings/recording_p1_1700000000000/url",
            Some(RESEARCHER),
            None,
        )
        .await;
    assert_eq!(url.status, StatusCode::OK);
    assert_eq!(tree(&h.data()), before, "reading changed nothing");
}

// ---------------------------------------------------------------------------------------
// The old upload route

#[tokio::test]
async fn the_old_route_takes_the_fields_in_either_order_and_answers_as_before() {
    let h = Harness::new(&[]);
    let session = "old-client-session";
    let video = webm_bytes(200_000);
    let forms = [
        multipart(&[
            ("problem_id", None, b"p1"),
            ("recording", Some("blob"), &video),
        ]),
        multipart(&[
            ("recording", Some("blob"), &video),
            ("note", None, b"ignored"),
            ("problem_id", None, b"p2"),
        ]),
    ];
    for (ct, body) in forms {
        let a = h.send(legacy_request(session, &ct, body, None)).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&a.bytes)
        );
        let v = a.json();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["ok", "path", "size"]);
        assert_eq!(v["ok"], true);
        assert_eq!(v["size"], video.len());
        let path = std::path::PathBuf::from(v["path"].as_str().unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), video, "{path:?}");
        assert!(path.starts_with(h.data().join("sessions").join(session)));
    }
    let m = h
        .call(
            "GET",
            &format!("/api/sessions/{session}"),
            Some(RESEARCHER),
            None,
        )
        .await
        .json();
    let recs = m["recordings"].as_array().unwrap();
    assert_eq!(recs.len(), 2);
    assert!(
        recs.iter()
            .all(|r| r["status"] == "complete" && r["discovered"].is_null())
    );
    assert!(
        m["created_at"].is_string(),
        "the session was created implicitly"
    );
    let problems: Vec<&str> = recs
        .iter()
        .map(|r| r["problem_id"].as_str().unwrap())
        .collect();
    assert_eq!(problems, ["p1", "p2"]);
}

#[tokio::test]
async fn the_old_route_refuses_non_media_oversize_and_missing_fields_leaving_nothing() {
    let h = Harness::new(&[("LEGACY_MAX_BYTES", "100000")]);
    let before = tree(&h.data());
    let html = b"<html><body>not a video</body></html>".repeat(10);
    for (ct, body) in [
        multipart(&[
            ("problem_id", None, b"p1"),
            ("recording", Some("x.webm"), &html),
        ]),
        multipart(&[
            ("recording", Some("x.webm"), &html),
            ("problem_id", None, b"p1"),
        ]),
    ] {
        let a = h.send(legacy_request("s1", &ct, body, None)).await;
        assert_eq!((a.status.as_u16(), a.code().as_str()), (415, "not_media"));
    }
    let big = webm_bytes(150_000);
    for (ct, body) in [
        multipart(&[
            ("problem_id", None, b"p1"),
            ("recording", Some("x.webm"), &big),
        ]),
        multipart(&[
            ("recording", Some("x.webm"), &big),
            ("problem_id", None, b"p1"),
        ]),
    ] {
        let a = h.send(legacy_request("s1", &ct, body, None)).await;
        assert_eq!((a.status.as_u16(), a.code().as_str()), (413, "too_large"));
        assert_eq!(
            a.headers["connection"], "close",
            "the client must not reuse the connection"
        );
    }
    let (ct, body) = multipart(&[("recording", Some("x.webm"), &webm_bytes(10))]);
    let a = h.send(legacy_request("s1", &ct, body, None)).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (400, "missing_field")
    );
    let (ct, body) = multipart(&[("problem_id", None, b"p1")]);
    let a = h.send(legacy_request("s1", &ct, body, None)).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (400, "missing_field")
    );
    let a = h
        .send(legacy_request(
            "s1",
            "application/json",
            b"{}".to_vec(),
            None,
        ))
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (400, "invalid_multipart")
    );
    assert_eq!(
        tree(&h.data()),
        before,
        "nothing stored, nothing left behind"
    );
}

#[tokio::test]
async fn the_old_route_obeys_legacy_upload_auth() {
    let (ct, body) = multipart(&[
        ("problem_id", None, b"p1"),
        ("recording", Some("x.webm"), &webm_bytes(100)),
    ]);

    let off = Harness::new(&[("LEGACY_UPLOAD_AUTH", "off")]);
    let a = off
        .send(legacy_request("s1", &ct, body.clone(), None))
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (410, "legacy_disabled")
    );

    let token = Harness::new(&[("LEGACY_UPLOAD_AUTH", "token")]);
    let (id, session_token) = token.create_session().await;
    let a = token
        .send(legacy_request(&id, &ct, body.clone(), None))
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (401, "unauthorized")
    );
    let (_, other) = token.create_session().await;
    let a = token
        .send(legacy_request(&id, &ct, body.clone(), Some(&other)))
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (403, "wrong_session")
    );
    let a = token
        .send(legacy_request(&id, &ct, body.clone(), Some(&session_token)))
        .await;
    assert_eq!(a.status, StatusCode::OK);

    let open = Harness::new(&[]);
    assert_eq!(
        open.send(legacy_request("s1", &ct, body, None))
            .await
            .status,
        StatusCode::OK
    );
}

// ---------------------------------------------------------------------------------------
// Wiring

#[tokio::test]
async fn health_static_pages_and_cors_are_wired() {
    let h = Harness::new(&[("CORS_ORIGINS", "https://study.example.org")]);
    let a = h.call("GET", "/healthz", None, None).await;
    assert_eq!(a.json(), json!({"status": "ok", "storage": "local"}));
    let a = h.call("GET", "/", None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.bytes, b"<h1>participant</h1>");

    let preflight = Request::builder()
        .method("OPTIONS")
        .uri("/api/sessions")
        .header("origin", "https://study.example.org")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .body(Body::empty())
        .unwrap();
    let a = h.send(preflight).await;
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://study.example.org"
    );
    let simple = Request::get("/healthz")
        .header("origin", "https://study.example.org")
        .body(Body::empty())
        .unwrap();
    let a = h.send(simple).await;
    let exposed = a.headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("etag"), "{exposed}");
    let stranger = Request::get("/healthz")
        .header("origin", "https://evil.example")
        .body(Body::empty())
        .unwrap();
    assert!(
        h.send(stranger)
            .await
            .headers
            .get("access-control-allow-origin")
            .is_none()
    );
}
