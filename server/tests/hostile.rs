//! Hostile input against the real binary, over raw HTTP (paths are sent byte for byte:
//! no client normalises them), on local storage and on a real Garage bucket: one table
//! of cases over every route. Every case must be refused with its 4xx status, a stable
//! `code` and a non-empty `message`; afterwards nothing was written outside the data
//! folder (a sibling folder and a canary folder in the temp dir are unchanged) and no
//! stored byte changed (a seeded session with a complete recording, an upload in
//! progress, and everything else, compared byte for byte).
//!
//! `cargo test -p server --test hostile`

mod common;
mod garage;
mod reliability;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{RESEARCHER, SECRET, tree};
use reliability::{Api, Backend, Store, raw_request, webm_file};
use serde_json::{Value, json};
use server::auth::UploadHandle;
use server::signing::{Secret, UrlSigner};
use server::storage::PresignOp;
use shared::media::MediaType;
use shared::{ObjectKey, RecordingId, SessionId};

/// The old route's cap on the servers under test.
const LEGACY_MAX: usize = 100_000;

/// One hostile request and how it must be refused.
struct Case {
    name: String,
    method: &'static str,
    path: Vec<u8>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// Run on this backend only (the `/storage` routes exist on local storage only).
    only: Option<Backend>,
}

fn case(
    name: impl Into<String>,
    method: &'static str,
    path: impl AsRef<[u8]>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name: name.into(),
        method,
        path: path.as_ref().to_vec(),
        headers: Vec::new(),
        body: Vec::new(),
        status,
        code,
        only: None,
    }
}

impl Case {
    fn token(mut self, token: &str) -> Self {
        self.headers
            .push(("Authorization".into(), format!("Bearer {token}")));
        self
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn json(self, body: Value) -> Self {
        self.raw_json(serde_json::to_vec(&body).unwrap())
    }

    fn raw_json(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.headers
            .push(("Content-Type".into(), "application/json".into()));
        self.body = body.into();
        self
    }

    fn body(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.headers
            .push(("Content-Type".into(), content_type.into()));
        self.body = body;
        self
    }

    fn only(mut self, backend: Backend) -> Self {
        self.only = Some(backend);
        self
    }
}

/// The path and query of a URL the server signed (`http://host:port/...`).
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    rest[rest.find('/').unwrap()..].to_owned()
}

/// Replaces the value of `name` in a URL's query.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let (base, query) = url.split_once('?').unwrap();
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k == name => format!("{k}={value}"),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// Drops `name` from a URL's query.
fn without_param(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').unwrap();
    let query: Vec<&str> = query
        .split('&')
        .filter(|kv| kv.split('=').next() != Some(name))
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// Everything the table refers to, made by legitimate requests before the snapshot.
struct World {
    /// The seeded session, its token, its complete recording and the handle it was
    /// uploaded with, and an upload in progress.
    session: String,
    token: String,
    recording: Value,
    recording_upload: String,
    open: Value,
    /// Another session and its token, with an upload of its own.
    other: String,
    other_token: String,
    other_open: Value,
    /// A session whose upload holds bytes that are not media (its complete is refused
    /// and recorded as failed: the one case that writes).
    junk: String,
    junk_token: String,
    junk_open: Value,
    junk_specs: Vec<Value>,
    /// A part URL of `open` (part 1, 10 bytes) and a playback URL of `recording`.
    part_url: Option<String>,
    get_url: Option<String>,
    /// The server's base URL.
    base: String,
}

async fn seed(api: &Api, local: bool) -> World {
    let (session, token) = api.create_session().await;
    let start = api.start_upload(&session, &token, "p1").await;
    let specs = api
        .upload_parts(
            &session,
            &token,
            &start,
            &[Bytes::from(webm_file(20_000, 1))],
        )
        .await;
    let (status, done) = api.complete(&session, &token, &start, &specs).await;
    assert_eq!(status, 200, "{done}");
    let recording = done["recording"].clone();
    let open = api.start_upload(&session, &token, "p2").await;
    let (other, other_token) = api.create_session().await;
    let other_open = api.start_upload(&other, &other_token, "p1").await;
    let (junk, junk_token) = api.create_session().await;
    let junk_open = api.start_upload(&junk, &junk_token, "p1").await;
    let junk_specs = api
        .upload_parts(
            &junk,
            &junk_token,
            &junk_open,
            &[Bytes::from_static(
                b"GIF89a: this is a picture, not a recording",
            )],
        )
        .await;

    let (mut part_url, mut get_url) = (None, None);
    if local {
        let rec = open["recording_id"].as_str().unwrap();
        let (_, signed) = api
            .call(
                "POST",
                &format!("/api/sessions/{session}/uploads/{rec}/parts"),
                Some(&token),
                Some(json!({"upload": open["upload"], "parts": [{"part_number": 1, "size": 10}]})),
            )
            .await;
        part_url = Some(path_of(
            signed["parts"][0]["request"]["url"].as_str().unwrap(),
        ));
        let rid = recording["id"].as_str().unwrap();
        let (_, play) = api
            .call(
                "GET",
                &format!("/api/sessions/{session}/recordings/{rid}/url"),
                Some(RESEARCHER),
                None,
            )
            .await;
        get_url = Some(path_of(play["url"].as_str().unwrap()));
    }
    World {
        session,
        token,
        recording,
        recording_upload: start["upload"].as_str().unwrap().to_owned(),
        open,
        other,
        other_token,
        other_open,
        junk,
        junk_token,
        junk_open,
        junk_specs,
        part_url,
        get_url,
        base: api.base.clone(),
    }
}

/// A small multipart form for the old route.
fn form(problem: &[u8], file: &[u8]) -> (String, Vec<u8>) {
    common::multipart(&[
        ("problem_id", None, problem),
        ("recording", Some("r.webm"), file),
    ])
}

fn table(w: &World) -> Vec<Case> {
    let (s, t) = (w.session.as_str(), w.token.as_str());
    let rec = w.recording["id"].as_str().unwrap();
    let open_rec = w.open["recording_id"].as_str().unwrap();
    let open_upload = w.open["upload"].as_str().unwrap();
    let secret = Secret::new(SECRET.as_bytes().to_vec()).unwrap();
    let long = "a".repeat(300);
    let parts = |v: Value| json!({"upload": open_upload, "parts": v});
    let parts_path = format!("/api/sessions/{s}/uploads/{open_rec}/parts");
    let complete_path = format!("/api/sessions/{s}/uploads/{open_rec}/complete");
    let uploads_path = format!("/api/sessions/{s}/uploads");
    let webm = json!({"problem_id": "p9", "content_type": "video/webm"});

    // A handle this server would issue, for an upload the store never had.
    let unknown_handle = UploadHandle {
        session: SessionId::parse(s).unwrap(),
        recording: RecordingId::parse(open_rec).unwrap(),
        key: ObjectKey::parse(w.open["key"].as_str().unwrap()).unwrap(),
        upload_id: "0123456789abcdef0123456789abcdef".into(),
        content_type: MediaType::parse("video/webm").unwrap(),
    }
    .sign(&secret);
    let mut tampered_handle = open_upload.to_owned();
    let flip = if tampered_handle.starts_with('e') {
        "f"
    } else {
        "e"
    };
    tampered_handle.replace_range(0..1, flip);

    let mut cases = vec![
        // Traversal and bad ids, in every spelling, on every route.
        case("dot-dot", "GET", "/api/sessions/..", 400, "invalid_id").token(RESEARCHER),
        case(
            "encoded dot-dot",
            "GET",
            "/api/sessions/%2e%2e",
            400,
            "invalid_id",
        )
        .token(RESEARCHER),
        case(
            "encoded dot-dot and slash",
            "GET",
            "/api/sessions/%2E%2e%2Fetc",
            400,
            "invalid_id",
        )
        .token(RESEARCHER),
        case(
            "climb to the sibling",
            "GET",
            "/api/sessions/..%2F..%2Fsibling",
            400,
            "invalid_id",
        )
        .token(RESEARCHER),
        case(
            "encoded backslash climb",
            "POST",
            "/api/sessions/..%5c..%5csibling/uploads",
            400,
            "invalid_id",
        )
        .token(RESEARCHER)
        .json(webm.clone()),
        case(
            "raw backslash",
            "GET",
            b"/api/sessions/a\\b",
            400,
            "invalid_id",
        )
        .token(RESEARCHER),
        case("NUL", "GET", "/api/sessions/%00", 400, "invalid_id").token(RESEARCHER),
        case(
            "NUL inside",
            "GET",
            "/api/sessions/a%00b",
            400,
            "invalid_id",
        )
        .token(RESEARCHER),
        case(
            "overlong id",
            "GET",
            format!("/api/sessions/{long}"),
            400,
            "invalid_id",
        )
        .token(RESEARCHER),
        case(
            "absolute path",
            "GET",
            "/api/sessions/%2Fetc%2Fpasswd",
            400,
            "invalid_id",
        )
        .token(RESEARCHER),
        case(
            "drive path",
            "GET",
            "/api/sessions/C%3A%5Cwindows",
            400,
            "invalid_id",
        )
        .token(RESEARCHER),
        case(
            "non-ASCII, encoded",
            "GET",
            "/api/sessions/%C3%A9t%C3%A9",
            400,
            "invalid_id",
        )
        .token(RESEARCHER),
        case(
            "non-ASCII, raw bytes",
            "GET",
            "/api/sessions/\u{e9}t\u{e9}",
            400,
            "invalid_id",
        )
        .token(RESEARCHER),
        case("not UTF-8", "GET", "/api/sessions/%FF", 400, "invalid_id").token(RESEARCHER),
        case(
            "overlong UTF-8 dots",
            "GET",
            "/api/sessions/%c0%ae%c0%ae",
            400,
            "invalid_id",
        )
        .token(RESEARCHER),
        case(
            "recording id climbs",
            "GET",
            format!("/api/sessions/{s}/recordings/..%2F..%2Fsibling/url"),
            400,
            "invalid_id",
        )
        .token(RESEARCHER),
        case(
            "recording id dot-dot",
            "POST",
            format!("/api/sessions/{s}/uploads/%2e%2e/parts"),
            400,
            "invalid_id",
        )
        .token(t)
        .json(parts(json!([{"part_number": 1, "size": 1}]))),
        case(
            "recording id with NUL",
            "POST",
            format!("/api/sessions/{s}/uploads/{open_rec}%00/complete"),
            400,
            "invalid_id",
        )
        .token(t)
        .json(json!({"upload": open_upload, "parts": []})),
        case(
            "metadata of a climbing id",
            "PATCH",
            "/api/sessions/%2e%2e/metadata",
            400,
            "invalid_id",
        )
        .token(RESEARCHER)
        .json(json!({"metadata": {}})),
        case(
            "token for a climbing id",
            "POST",
            "/api/sessions/..%2F/token",
            400,
            "invalid_id",
        )
        .token(RESEARCHER),
        // Bodies.
        case(
            "malformed JSON",
            "POST",
            "/api/sessions",
            400,
            "invalid_json",
        )
        .raw_json(&b"{\"metadata\":"[..]),
        case(
            "JSON that is not UTF-8",
            "POST",
            "/api/sessions",
            400,
            "invalid_json",
        )
        .raw_json(&b"\xff\xfe{}"[..]),
        case(
            "deeply nested JSON",
            "POST",
            "/api/sessions",
            400,
            "invalid_json",
        )
        .raw_json(format!(
            "{}1{}",
            "{\"metadata\":".repeat(300),
            "}".repeat(300)
        )),
        case("huge JSON", "POST", "/api/sessions", 413, "body_too_large").raw_json(format!(
            "{{\"metadata\":{{\"study\":\"{}\"}}}}",
            "x".repeat(200_000)
        )),
        case(
            "metadata of the wrong type",
            "POST",
            "/api/sessions",
            400,
            "invalid_body",
        )
        .json(json!({"metadata": "study-1"})),
        case(
            "unknown field",
            "POST",
            "/api/sessions",
            400,
            "invalid_body",
        )
        .json(json!({"admin": true})),
        case(
            "metadata over its bounds",
            "POST",
            "/api/sessions",
            400,
            "invalid_metadata",
        )
        .json(json!({"metadata": {"study": "s".repeat(300)}})),
        case(
            "JSON sent as text",
            "POST",
            "/api/sessions",
            415,
            "unsupported_media_type",
        )
        .body("text/plain", b"{}".to_vec()),
        case(
            "JSON without a content type",
            "POST",
            "/api/sessions",
            415,
            "unsupported_media_type",
        ),
        case(
            "metadata patch with an unknown field",
            "PATCH",
            format!("/api/sessions/{s}/metadata"),
            400,
            "invalid_body",
        )
        .token(t)
        .json(json!({"metadata": {}, "replace": true})),
        case(
            "metadata patch of the wrong type",
            "PATCH",
            format!("/api/sessions/{s}/metadata"),
            400,
            "invalid_body",
        )
        .token(t)
        .json(json!({"metadata": [1, 2]})),
        case(
            "problem id of the wrong type",
            "POST",
            &uploads_path,
            400,
            "invalid_body",
        )
        .token(t)
        .json(json!({"problem_id": 5, "content_type": "video/webm"})),
        case(
            "content type that is not media",
            "POST",
            &uploads_path,
            400,
            "invalid_body",
        )
        .token(t)
        .json(json!({"problem_id": "p9", "content_type": "text/html"})),
        case(
            "problem id that climbs",
            "POST",
            &uploads_path,
            400,
            "invalid_id",
        )
        .token(t)
        .json(json!({"problem_id": "../x", "content_type": "video/webm"})),
        case(
            "start with an unknown field",
            "POST",
            &uploads_path,
            400,
            "invalid_body",
        )
        .token(t)
        .json(
            json!({"problem_id": "p9", "content_type": "video/webm", "key": "sessions/x/y.webm"}),
        ),
        // Parts.
        case("part number 0", "POST", &parts_path, 400, "invalid_parts")
            .token(t)
            .json(parts(json!([{"part_number": 0, "size": 10}]))),
        case(
            "part number 10001",
            "POST",
            &parts_path,
            400,
            "invalid_parts",
        )
        .token(t)
        .json(parts(json!([{"part_number": 10_001, "size": 10}]))),
        case("part size 0", "POST", &parts_path, 400, "invalid_parts")
            .token(t)
            .json(parts(json!([{"part_number": 1, "size": 0}]))),
        case(
            "part size over 5 GiB",
            "POST",
            &parts_path,
            400,
            "invalid_parts",
        )
        .token(t)
        .json(parts(
            json!([{"part_number": 1, "size": 5u64 * 1024 * 1024 * 1024 + 1}]),
        )),
        case(
            "101 parts at once",
            "POST",
            &parts_path,
            400,
            "invalid_parts",
        )
        .token(t)
        .json(parts(Value::Array(
            (1..=101)
                .map(|n| json!({"part_number": n, "size": 10}))
                .collect(),
        ))),
        case(
            "a part asked for twice",
            "POST",
            &parts_path,
            400,
            "invalid_parts",
        )
        .token(t)
        .json(parts(
            json!([{"part_number": 1, "size": 10}, {"part_number": 1, "size": 10}]),
        )),
        case(
            "negative part number",
            "POST",
            &parts_path,
            400,
            "invalid_body",
        )
        .token(t)
        .json(parts(json!([{"part_number": -1, "size": 10}]))),
        case("size as text", "POST", &parts_path, 400, "invalid_body")
            .token(t)
            .json(parts(json!([{"part_number": 1, "size": "big"}]))),
        case(
            "garbage upload handle",
            "POST",
            &parts_path,
            403,
            "bad_upload_handle",
        )
        .token(t)
        .json(json!({"upload": "abc", "parts": [{"part_number": 1, "size": 10}]})),
        case(
            "tampered upload handle",
            "POST",
            &parts_path,
            403,
            "bad_upload_handle",
        )
        .token(t)
        .json(json!({"upload": tampered_handle, "parts": [{"part_number": 1, "size": 10}]})),
        case(
            "another session's upload handle",
            "POST",
            &complete_path,
            403,
            "wrong_upload",
        )
        .token(t)
        .json(json!({"upload": w.other_open["upload"], "parts": [{"part_number": 1, "size": 10}]})),
        case(
            "an upload the store never had",
            "POST",
            &complete_path,
            404,
            "upload_not_found",
        )
        .token(t)
        .json(json!({"upload": unknown_handle, "parts": [{"part_number": 1, "size": 10}]})),
        case(
            "complete parts that were never sent",
            "POST",
            &complete_path,
            409,
            "parts_mismatch",
        )
        .token(t)
        .json(json!({"upload": open_upload, "parts": [{"part_number": 1, "size": 10}]})),
        case(
            "complete with a bad checksum",
            "POST",
            &complete_path,
            400,
            "invalid_sha256",
        )
        .token(t)
        .json(json!({"upload": open_upload, "parts": [], "sha256": "XYZ"})),
        case(
            "abort a complete recording",
            "POST",
            format!("/api/sessions/{s}/uploads/{rec}/abort"),
            409,
            "already_complete",
        )
        .token(t)
        .json(json!({"upload": w.recording_upload})),
        case(
            "complete a recording that is not media",
            "POST",
            format!(
                "/api/sessions/{}/uploads/{}/complete",
                w.junk,
                w.junk_open["recording_id"].as_str().unwrap()
            ),
            422,
            "not_media",
        )
        .token(&w.junk_token)
        .json(json!({"upload": w.junk_open["upload"], "parts": w.junk_specs})),
        // Tokens.
        case(
            "no token",
            "GET",
            format!("/api/sessions/{s}"),
            401,
            "unauthorized",
        ),
        case(
            "not a bearer token",
            "GET",
            format!("/api/sessions/{s}"),
            401,
            "unauthorized",
        )
        .header("Authorization", "Basic cmVzZWFyY2hlcg=="),
        case(
            "garbage token",
            "GET",
            format!("/api/sessions/{s}"),
            403,
            "forbidden",
        )
        .token("garbage"),
        case(
            "forged session token",
            "POST",
            &uploads_path,
            403,
            "forbidden",
        )
        .token(&format!("{s}.{}", "0".repeat(64)))
        .json(webm.clone()),
        case(
            "another session's token",
            "GET",
            format!("/api/sessions/{s}"),
            403,
            "wrong_session",
        )
        .token(&w.other_token),
        case(
            "another session's token on metadata",
            "PATCH",
            format!("/api/sessions/{s}/metadata"),
            403,
            "wrong_session",
        )
        .token(&w.other_token)
        .json(json!({"metadata": {"study": "taken over"}})),
        case(
            "another session's token on uploads",
            "POST",
            &uploads_path,
            403,
            "wrong_session",
        )
        .token(&w.other_token)
        .json(webm.clone()),
        case(
            "this session's token on another session",
            "POST",
            format!("/api/sessions/{}/uploads", w.other),
            403,
            "wrong_session",
        )
        .token(t)
        .json(webm.clone()),
        case(
            "session token listing sessions",
            "GET",
            "/api/sessions",
            403,
            "forbidden",
        )
        .token(t),
        case(
            "session token issuing tokens",
            "POST",
            format!("/api/sessions/{s}/token"),
            403,
            "forbidden",
        )
        .token(t),
        case(
            "session token asking for playback",
            "GET",
            format!("/api/sessions/{s}/recordings/{rec}/url"),
            403,
            "forbidden",
        )
        .token(t),
        // Other refusals.
        case(
            "bad query",
            "GET",
            format!("/api/sessions/{s}/recordings/{rec}/url?download=maybe"),
            400,
            "invalid_query",
        )
        .token(RESEARCHER),
        case(
            "play an upload in progress",
            "GET",
            format!("/api/sessions/{s}/recordings/{open_rec}/url"),
            409,
            "not_playable",
        )
        .token(RESEARCHER),
        case(
            "play a recording that is not there",
            "GET",
            format!("/api/sessions/{s}/recordings/recording_x_1/url"),
            404,
            "recording_not_found",
        )
        .token(RESEARCHER),
        case(
            "a session that is not there",
            "GET",
            "/api/sessions/nobody-here",
            404,
            "session_not_found",
        )
        .token(RESEARCHER),
        case(
            "a method the route does not take",
            "DELETE",
            format!("/api/sessions/{s}"),
            405,
            "method_not_allowed",
        )
        .token(RESEARCHER),
        case(
            "an API path that names no route",
            "GET",
            "/api/sessions/x/y/z/w",
            404,
            "no_such_route",
        )
        .token(RESEARCHER),
        case(
            "a path outside the pages",
            "GET",
            "/..%2F..%2Fetc%2Fpasswd",
            404,
            "not_found",
        ),
    ];

    // The old upload route.
    let (ct, body) = form(b"p9", b"%PDF-1.7 not a recording");
    cases.push(
        case(
            "old route: not media",
            "POST",
            format!("/sessions/{s}/recording"),
            415,
            "not_media",
        )
        .body(&ct, body),
    );
    let (ct, body) = form(b"p9", &webm_file(LEGACY_MAX + 50_000, 7));
    cases.push(
        case(
            "old route: over the cap",
            "POST",
            format!("/sessions/{s}/recording"),
            413,
            "too_large",
        )
        .body(&ct, body),
    );
    let (ct, body) = common::multipart(&[("recording", Some("r.webm"), &webm_file(1_000, 8))]);
    cases.push(
        case(
            "old route: no problem id",
            "POST",
            format!("/sessions/{s}/recording"),
            400,
            "missing_field",
        )
        .body(&ct, body),
    );
    let (ct, body) = form(b"../../sibling", &webm_file(1_000, 8));
    cases.push(
        case(
            "old route: problem id climbs",
            "POST",
            format!("/sessions/{s}/recording"),
            400,
            "invalid_id",
        )
        .body(&ct, body),
    );
    let (ct, body) = form(b"p9", &webm_file(1_000, 8));
    cases.push(
        case(
            "old route: session id climbs",
            "POST",
            "/sessions/..%2Fsibling/recording",
            400,
            "invalid_id",
        )
        .body(&ct, body.clone()),
    );
    cases.push(
        case(
            "old route: encoded dot-dot",
            "POST",
            "/sessions/%2e%2e/recording",
            400,
            "invalid_id",
        )
        .body(&ct, body),
    );
    cases.push(
        case(
            "old route: not a form",
            "POST",
            format!("/sessions/{s}/recording"),
            400,
            "invalid_multipart",
        )
        .raw_json(&b"{}"[..]),
    );
    cases.push(case(
        "old route: GET",
        "GET",
        format!("/sessions/{s}/recording"),
        405,
        "method_not_allowed",
    ));

    // The local backend's storage routes.
    if let (Some(part), Some(get)) = (&w.part_url, &w.get_url) {
        let local = Backend::Local;
        let signer = UrlSigner::new(secret.clone(), &w.base);
        let rec_key = ObjectKey::parse(w.recording["key"].as_str().unwrap()).unwrap();
        let past = SystemTime::now() - Duration::from_secs(3_600);
        let expired = signer.sign(
            &PresignOp::Get {
                key: rec_key.clone(),
                download_as: None,
            },
            past,
            Duration::from_secs(60),
        );
        let new_key = ObjectKey::parse(&format!("sessions/{s}/recording_p7_1.webm")).unwrap();
        let put = signer.sign(
            &PresignOp::Put {
                key: new_key,
                content_type: "video/webm".into(),
                size: 10,
            },
            SystemTime::now(),
            Duration::from_secs(600),
        );
        let flip = |sig_url: &str| {
            let sig = sig_url
                .rsplit("sig=")
                .next()
                .unwrap()
                .split('&')
                .next()
                .unwrap()
                .to_owned();
            let mut bad = sig.clone();
            bad.replace_range(0..1, if sig.starts_with('0') { "1" } else { "0" });
            with_param(sig_url, "sig", &bad)
        };
        let storage_cases = vec![
            case(
                "storage: dot-dot key",
                "GET",
                format!(
                    "/storage/sessions/%2e%2e/x{}",
                    &get[get.find('?').unwrap()..]
                ),
                400,
                "invalid_key",
            ),
            case(
                "storage: climb to the sibling",
                "GET",
                "/storage/..%2F..%2Fsibling%2Fcanary.txt?op=get",
                400,
                "invalid_key",
            ),
            case(
                "storage: backslash climb",
                "GET",
                "/storage/..%5c..%5csibling?op=get",
                400,
                "invalid_key",
            ),
            case(
                "storage: key not UTF-8",
                "GET",
                "/storage/%FF?op=get",
                400,
                "invalid_key",
            ),
            case(
                "storage: key with NUL",
                "GET",
                "/storage/sessions/a%00b?op=get",
                400,
                "invalid_key",
            ),
            case(
                "storage: tampered signature",
                "GET",
                flip(get),
                403,
                "signature_mismatch",
            ),
            case(
                "storage: URL for another key",
                "GET",
                get.replace(rec, "recording_p1_1"),
                403,
                "signature_mismatch",
            ),
            case(
                "storage: expiry moved",
                "GET",
                with_param(get, "exp", "99999999999"),
                403,
                "signature_mismatch",
            ),
            case(
                "storage: expired",
                "GET",
                path_of(&expired.url),
                403,
                "signature_expired",
            ),
            case(
                "storage: no signature",
                "GET",
                without_param(get, "sig"),
                403,
                "signature_malformed",
            ),
            case(
                "storage: a read URL used to write",
                "PUT",
                get.clone(),
                403,
                "signature_mismatch",
            )
            .body("video/webm", webm_file(100, 1)),
            case(
                "storage: part number changed",
                "PUT",
                with_param(part, "part", "2"),
                403,
                "signature_mismatch",
            )
            .body("application/octet-stream", webm_file(64, 2)[..10].to_vec()),
            case(
                "storage: part longer than signed",
                "PUT",
                part.clone(),
                413,
                "too_large",
            )
            .body("application/octet-stream", vec![7; 11]),
            case(
                "storage: part shorter than signed",
                "PUT",
                part.clone(),
                400,
                "content_length_mismatch",
            )
            .body("application/octet-stream", vec![7; 9]),
            case(
                "storage: wrong content type",
                "PUT",
                path_of(&put.url),
                403,
                "content_type_mismatch",
            )
            .body("text/html", vec![0x1A; 10]),
            case(
                "storage: range past the end",
                "GET",
                get.clone(),
                416,
                "range_not_satisfiable",
            )
            .header("Range", "bytes=999999-"),
            case(
                "storage: a method it does not take",
                "POST",
                get.clone(),
                405,
                "method_not_allowed",
            ),
        ];
        cases.extend(storage_cases.into_iter().map(|c| c.only(local)));
    }
    cases.push(
        case(
            "no storage routes on S3",
            "GET",
            "/storage/sessions/x/y.webm?op=get",
            404,
            "not_found",
        )
        .only(Backend::Garage),
    );
    cases
}

/// Everything outside the data folder that a traversal could reach: the folder beside
/// it, and a canary folder in the system's temp dir.
struct Canaries {
    dir: std::path::PathBuf,
    tmp: tempfile::TempDir,
}

impl Canaries {
    fn plant(store: &Store) -> Canaries {
        let sibling = store.dir.path().join("sibling");
        std::fs::create_dir_all(&sibling).unwrap();
        std::fs::write(sibling.join("canary.txt"), b"sibling canary").unwrap();
        let tmp = tempfile::Builder::new()
            .prefix("hostile-canary-")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        std::fs::write(tmp.path().join("canary.txt"), b"tmp canary").unwrap();
        Canaries {
            dir: store.dir.path().to_owned(),
            tmp,
        }
    }

    /// The bytes of everything outside `data/`, and of the temp canary folder.
    fn snapshot(&self) -> (BTreeMap<String, Vec<u8>>, BTreeMap<String, Vec<u8>>) {
        let outside = tree(&self.dir)
            .into_iter()
            .filter(|(k, _)| !k.starts_with("data/") && k != "data")
            .collect();
        (outside, tree(self.tmp.path()))
    }
}

/// Keeps what a refused request may not change: everything but the `junk` session's
/// folder and the local upload folder of its (refused, failed) complete.
fn guarded(
    all: BTreeMap<String, Vec<u8>>,
    junk: &str,
    junk_upload: &str,
) -> BTreeMap<String, Vec<u8>> {
    all.into_iter()
        .filter(|(k, _)| {
            !k.starts_with(&format!("sessions/{junk}/"))
                && !k.starts_with(&format!(".uploads/{junk_upload}/"))
        })
        .collect()
}

async fn hostile_input_is_refused_and_changes_nothing(backend: Backend) {
    let store = Store::new(backend);
    let server = store.start(&[("LEGACY_MAX_BYTES", &LEGACY_MAX.to_string())]);
    let api = Api::new(&server);
    let world = seed(&api, backend == Backend::Local).await;
    let canaries = Canaries::plant(&store);
    let junk_upload = store
        .uploads()
        .await
        .into_iter()
        .find(|(k, _)| k.starts_with(&format!("sessions/{}/", world.junk)))
        .unwrap()
        .1;

    let outside_before = canaries.snapshot();
    let files_before = tree(&store.data());
    let objects_before = store.objects().await;
    let uploads_before = store.uploads().await;
    assert!(objects_before.contains_key(world.recording["key"].as_str().unwrap()));

    let cases: Vec<Case> = table(&world)
        .into_iter()
        .filter(|c| c.only.is_none_or(|b| b == backend))
        .collect();
    let mut failures = Vec::new();
    for c in &cases {
        let answer = raw_request(&server.addr(), c.method, &c.path, &c.headers, &c.body);
        let v = answer.json();
        let code = v["code"].as_str().unwrap_or("");
        let message = v["message"].as_str().unwrap_or("");
        if answer.status != c.status || code != c.code || message.trim().is_empty() {
            failures.push(format!(
                "{}: {} {} -> {} {:?} (expected {} {})\n{}",
                c.name,
                c.method,
                String::from_utf8_lossy(&c.path),
                answer.status,
                String::from_utf8_lossy(&answer.body),
                c.status,
                c.code,
                answer.head
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Nothing outside the root, nothing changed inside it.
    assert_eq!(
        canaries.snapshot(),
        outside_before,
        "nothing written outside the data folder"
    );
    let junk = world.junk.as_str();
    assert_eq!(
        guarded(tree(&store.data()), junk, &junk_upload),
        guarded(files_before, junk, &junk_upload),
        "no file of the data folder changed, none was added"
    );
    assert_eq!(
        guarded(store.objects().await, junk, &junk_upload),
        guarded(objects_before, junk, &junk_upload),
        "no stored object changed, none was added"
    );
    let uploads_after = store.uploads().await;
    let kept: Vec<_> = uploads_before
        .into_iter()
        .filter(|(_, id)| *id != junk_upload)
        .collect();
    assert_eq!(uploads_after, kept, "uploads in progress untouched");
    // The refused recording was recorded as failed, and its bytes were not kept.
    let junk_rec = world.junk_open["recording_id"].as_str().unwrap();
    assert_eq!(api.entry(junk, junk_rec).await["status"], "failed");
    assert!(
        !store
            .objects()
            .await
            .contains_key(world.junk_open["key"].as_str().unwrap())
    );
    if backend == Backend::Garage {
        assert!(
            tree(&store.data()).is_empty(),
            "nothing written to DATA_DIR on S3"
        );
    }
    eprintln!(
        "hostile input on {backend:?}: {} cases, all refused with their status and code; nothing changed",
        cases.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_and_changes_nothing_on_local_storage() {
    hostile_input_is_refused_and_changes_nothing(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_and_changes_nothing_on_garage() {
    hostile_input_is_refused_and_changes_nothing(Backend::Garage).await;
}
