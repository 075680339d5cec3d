//! The real `recorder-server` binary on loopback: started with port 0 and a temporary
//! `DATA_DIR`, its URL read from what it prints, driven over HTTP with reqwest (and raw
//! TCP where an HTTP client would clean up the path first), killed on drop.

mod common;
mod garage;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{Api, RESEARCHER, SECRET, Server, tree, webm_bytes};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use server::signing::{Secret, UrlSigner};
use server::storage::PresignOp;
use shared::ObjectKey;

const MIB: usize = 1024 * 1024;

fn start(data: &Path, extra: &[(&str, &str)]) -> Server {
    let mut vars = vec![("RESEARCHER_TOKEN", RESEARCHER), ("SERVER_SECRET", SECRET)];
    vars.extend_from_slice(extra);
    Server::start(data, &vars)
}

/// One small single-part recording, start to complete; its manifest entry.
async fn record_small(api: &Api, session: &str, token: &str, problem: &str) -> Value {
    api.record(session, token, problem, Bytes::from(webm_bytes(1000)))
        .await
}

/// A client of `server` with no timeout; its sessions are of the study `bin`.
fn client(server: &Server) -> Api {
    Api::with(server, reqwest::Client::new(), "bin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_goes_straight_to_presigned_urls_and_plays_back_with_range() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    assert!(
        server.url.starts_with("http://127.0.0.1:") && !server.url.ends_with(":0"),
        "{}",
        server.url
    );
    let banner = server.banner.join("\n");
    assert!(
        banner.contains("participant page: /, researcher page: /researcher.html, storage: local"),
        "{banner}"
    );
    let api = client(&server);
    let (health_status, health) = api.call("GET", "/healthz", None, None).await;
    assert_eq!(
        (health_status, health),
        (StatusCode::OK, json!({"status": "ok", "storage": "local"}))
    );

    let (session, token) = api.create_session().await;
    let start = api.start_upload(&session, &token, "p1").await;
    let all = Bytes::from(webm_bytes(10 * MIB + 12_345));
    let parts = [
        all.slice(..5 * MIB),
        all.slice(5 * MIB..10 * MIB),
        all.slice(10 * MIB..),
    ];
    let specs = api.upload_parts(&session, &token, &start, &parts).await;
    let (status, done) = api.complete(&session, &token, &start, &specs).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["recording"]["status"], "complete");
    assert_eq!(done["recording"]["size"], all.len());

    let m = api.manifest(&session).await;
    assert_eq!(m["recordings"][0]["status"], "complete");
    assert_eq!(m["metadata"]["study"], "bin");
    let on_disk = std::fs::read(dir.path().join(start["key"].as_str().unwrap())).unwrap();
    assert_eq!(on_disk, all);

    let rec = start["recording_id"].as_str().unwrap();
    let (status, play) = api
        .call(
            "GET",
            &format!("/api/sessions/{session}/recordings/{rec}/url"),
            Some(RESEARCHER),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{play}");
    let res = api
        .http
        .get(play["url"].as_str().unwrap())
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(res.bytes().await.unwrap(), all.slice(..100));
}

/// A multipart body of `size` media bytes streamed in 64 KiB chunks, never held whole.
fn streamed_form(size: usize, problem_first: bool) -> (String, reqwest::Body) {
    let boundary = "xX-streamed-boundary-Xx";
    let problem = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"problem_id\"\r\n\r\np1\r\n"
    );
    let file_head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"recording\"; filename=\"r.webm\"\r\nContent-Type: video/webm\r\n\r\n"
    );
    let (before, after) = if problem_first {
        (
            format!("{problem}{file_head}"),
            format!("\r\n--{boundary}--\r\n"),
        )
    } else {
        (file_head, format!("\r\n{problem}--{boundary}--\r\n"))
    };
    let chunk = 64 * 1024;
    let chunks = size.div_ceil(chunk);
    let body = futures::stream::iter(
        std::iter::once(Bytes::from(before))
            .chain((0..chunks).map(move |i| {
                let n = chunk.min(size - i * chunk);
                let mut c = vec![(i % 251) as u8; n];
                if i == 0 {
                    c[..4].copy_from_slice(&common::WEBM_MAGIC);
                }
                Bytes::from(c)
            }))
            .chain(std::iter::once(Bytes::from(after)))
            .map(Ok::<_, std::io::Error>),
    );
    (
        format!("multipart/form-data; boundary={boundary}"),
        reqwest::Body::wrap_stream(body),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_route_streams_50_mb_in_either_field_order_with_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let api = client(&server);
    // Warm up (first request, first storage write) before taking the baseline.
    let (ct, body) = streamed_form(100_000, true);
    let res = api
        .http
        .post(format!("{}/sessions/warmup/recording", api.base))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let baseline = server.peak_memory();

    let size = 50 * 1000 * 1000;
    for problem_first in [true, false] {
        let (ct, body) = streamed_form(size, problem_first);
        let res = api
            .http
            .post(format!("{}/sessions/old-session/recording", api.base))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["size"], size);
        let path = v["path"].as_str().unwrap();
        assert!(path.ends_with(".webm"), "{path}");
        assert_eq!(std::fs::metadata(path).unwrap().len(), size as u64);
    }
    let growth = server.peak_memory().saturating_sub(baseline);
    eprintln!(
        "peak memory: baseline {baseline} bytes, grew by {growth} bytes for two 50 MB bodies"
    );
    assert!(
        growth < 25 * 1000 * 1000,
        "peak memory grew by {growth} bytes for 50 MB bodies"
    );
    let m = api.manifest("old-session").await;
    assert_eq!(m["recordings"].as_array().unwrap().len(), 2);
    assert!(
        m["recordings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "complete")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_holds_over_real_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[("LEGACY_MAX_BYTES", "1000000")]);
    let api = client(&server);
    let (session, token) = api.create_session().await;
    let (_other, other_token) = api.create_session().await;

    // Traversal, sent byte for byte (an HTTP client would normalise these paths).
    let before = tree(dir.path());
    let long = "a".repeat(300);
    for bad in [
        "..",
        "%2e%2e",
        "%2E%2e%2Fetc",
        "a%2Fb",
        "%2Fetc%2Fpasswd",
        "a%5Cb",
        "a\\b",
        "%00",
        "a%00b",
        &long,
        "C%3A%5Cx",
    ] {
        for path in [
            format!("/api/sessions/{bad}"),
            format!("/api/sessions/{bad}/uploads"),
            format!("/api/sessions/{session}/recordings/{bad}/url"),
            format!("/sessions/{bad}/recording"),
        ] {
            let method = if path.ends_with("uploads") || path.ends_with("recording") {
                "POST"
            } else {
                "GET"
            };
            let (status, body) = server.raw(method, &path, Some(RESEARCHER), "{}");
            assert_eq!(status, 400, "{method} {path}: {body}");
            if !bad.contains('\\') {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                assert_eq!(v["code"], "invalid_id", "{method} {path}: {body}");
            }
        }
    }
    assert_eq!(tree(dir.path()), before, "no traversal wrote anything");

    // Tokens.
    let path = format!("/api/sessions/{session}");
    assert_eq!(
        api.call("GET", &path, None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, v) = api.call("GET", &path, Some(&other_token), None).await;
    assert_eq!(
        (status, v["code"].as_str().unwrap()),
        (StatusCode::FORBIDDEN, "wrong_session")
    );
    let (status, _) = api.call("GET", "/api/sessions", Some(&token), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .call(
            "GET",
            "/api/sessions",
            Some("not-the-researcher-token"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A complete recording to sign URLs for.
    let done = record_small(&api, &session, &token, "p1").await;
    let key = done["key"].as_str().unwrap().to_owned();
    let rec = done["id"].as_str().unwrap().to_owned();
    let (_, play) = api
        .call(
            "GET",
            &format!("/api/sessions/{session}/recordings/{rec}/url?download=true"),
            Some(RESEARCHER),
            None,
        )
        .await;
    let url = play["url"].as_str().unwrap().to_owned();
    let res = api.http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains(&format!("{rec}.webm"))
    );

    // Tampered and expired signatures.
    for tampered in [
        url.replace("dl=", "dl=x"),
        url.replace("exp=", "exp=9"),
        url.replace(&rec, "recording_p1_1"),
    ] {
        let res = api.http.get(&tampered).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{tampered}");
    }
    let signer = UrlSigner::new(
        Secret::new(SECRET.as_bytes().to_vec()).unwrap(),
        &server.url,
    );
    let op = PresignOp::Get {
        key: ObjectKey::parse(&key).unwrap(),
        download_as: None,
    };
    let past = SystemTime::now() - Duration::from_secs(3600);
    let expired = signer.sign(&op, past, Duration::from_secs(60));
    let res = api.http.get(&expired.url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "signature_expired");
    let fresh = signer.sign(&op, SystemTime::now(), Duration::from_secs(60));
    assert_eq!(
        api.http.get(&fresh.url).send().await.unwrap().status(),
        StatusCode::OK,
        "the same signer, in time, works"
    );

    // Tampered upload handle.
    let start = api.start_upload(&session, &token, "p2").await;
    let rec2 = start["recording_id"].as_str().unwrap();
    let mut forged = start["upload"].as_str().unwrap().to_owned();
    forged.replace_range(0..1, if forged.starts_with('e') { "f" } else { "e" });
    let (status, v) = api
        .call(
            "POST",
            &format!("/api/sessions/{session}/uploads/{rec2}/parts"),
            Some(&token),
            Some(json!({"upload": forged, "parts": [{"part_number": 1, "size": 5}]})),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str().unwrap()),
        (StatusCode::FORBIDDEN, "bad_upload_handle")
    );

    // Not media: 422 on complete (object deleted), 415 on the old route.
    let specs = api
        .upload_parts(
            &session,
            &token,
            &start,
            &[Bytes::from_static(b"GIF89a not a video")],
        )
        .await;
    let (status, v) = api.complete(&session, &token, &start, &specs).await;
    assert_eq!(
        (status, v["code"].as_str().unwrap()),
        (StatusCode::UNPROCESSABLE_ENTITY, "not_media")
    );
    assert!(!dir.path().join(start["key"].as_str().unwrap()).exists());
    let post_form = |bytes: Vec<u8>| {
        let (ct, body) = common::multipart(&[
            ("problem_id", None, b"p9"),
            ("recording", Some("r.webm"), &bytes),
        ]);
        api.http
            .post(format!("{}/sessions/{session}/recording", api.base))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let res = post_form(b"%PDF-1.7 nope".to_vec()).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Oversize: the old route past LEGACY_MAX_BYTES, a part PUT past its signed length.
    let before = tree(dir.path());
    let res = post_form(webm_bytes(1_200_000)).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "too_large");
    assert_eq!(tree(dir.path()), before, "nothing left behind");
    let start3 = api.start_upload(&session, &token, "p3").await;
    let rec3 = start3["recording_id"].as_str().unwrap();
    let (_, signed) = api
        .call(
            "POST",
            &format!("/api/sessions/{session}/uploads/{rec3}/parts"),
            Some(&token),
            Some(json!({"upload": start3["upload"], "parts": [{"part_number": 1, "size": 10}]})),
        )
        .await;
    let res = api
        .http
        .put(signed["parts"][0]["request"]["url"].as_str().unwrap())
        .body(webm_bytes(11))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // A corrupt manifest is named and left as it is.
    let file = dir.path().join(format!("sessions/{session}/session.json"));
    std::fs::write(&file, b"\x00garbage{").unwrap();
    let (status, v) = api.call("GET", &path, Some(RESEARCHER), None).await;
    assert_eq!(
        (status, v["code"].as_str().unwrap()),
        (StatusCode::INTERNAL_SERVER_ERROR, "manifest_corrupt")
    );
    assert!(v["message"].as_str().unwrap().contains(&session), "{v}");
    let (status, _) = api
        .call(
            "PATCH",
            &format!("{path}/metadata"),
            Some(&token),
            Some(json!({"metadata": {"study": "x"}})),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(std::fs::read(&file).unwrap(), b"\x00garbage{");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_completes_in_one_session_are_all_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let api = client(&server);
    let (session, token) = api.create_session().await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (api, session, token) = (api.clone(), session.clone(), token.clone());
            tokio::spawn(
                async move { record_small(&api, &session, &token, &format!("p{i}")).await },
            )
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let m = api.manifest(&session).await;
    let recs = m["recordings"].as_array().unwrap();
    assert_eq!(recs.len(), 50);
    assert!(recs.iter().all(|r| r["status"] == "complete"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_data_dir_agree_on_secrets_and_lose_no_recording() {
    let dir = tempfile::tempdir().unwrap();
    // No SERVER_SECRET or RESEARCHER_TOKEN: both processes must settle on the same files.
    let a = Server::start(dir.path(), &[]);
    let b = Server::start(dir.path(), &[]);
    let token_line = |s: &Server| {
        s.banner
            .iter()
            .find(|l| l.starts_with("researcher token: "))
            .cloned()
            .unwrap()
    };
    assert_eq!(token_line(&a), token_line(&b));
    let researcher = token_line(&a).split_whitespace().nth(2).unwrap().to_owned();
    assert_eq!(
        std::fs::read_to_string(dir.path().join(".researcher-token"))
            .unwrap()
            .trim(),
        researcher
    );

    let (api_a, api_b) = (client(&a), client(&b));
    let (session, token) = api_a.create_session().await;
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let api = if i % 2 == 0 {
                api_a.clone()
            } else {
                api_b.clone()
            };
            let (session, token) = (session.clone(), token.clone());
            tokio::spawn(
                async move { record_small(&api, &session, &token, &format!("q{i}")).await },
            )
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for api in [&api_a, &api_b] {
        let (status, m) = api
            .call(
                "GET",
                &format!("/api/sessions/{session}"),
                Some(&researcher),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let recs = m["recordings"].as_array().unwrap();
        assert_eq!(recs.len(), 30);
        assert!(recs.iter().all(|r| r["status"] == "complete"));
    }
}

#[test]
fn invalid_configuration_stops_with_one_line_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("BIND_ADDR", "not-an-address"),
        ("URL_TTL_SECS", "5"),
        ("STORAGE_BACKEND", "floppy"),
        ("SERVER_SECRET", "short"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_recorder-server"))
            .env_clear()
            .env("DATA_DIR", dir.path())
            .env(var, value)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
}

#[test]
fn missing_pages_or_an_unusable_data_dir_stop_start_up_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let pages = common::pages();
    let no_client = tempfile::tempdir().unwrap();
    std::fs::write(no_client.path().join("index.html"), "<h1>hi</h1>").unwrap();
    let data = dir.path().to_str().unwrap();
    for (vars, var, says) in [
        (
            [("DATA_DIR", data), ("WWW_DIR", "/nonexistent/www")],
            "WWW_DIR",
            "is not a folder",
        ),
        (
            [
                ("DATA_DIR", data),
                ("WWW_DIR", no_client.path().to_str().unwrap()),
            ],
            "WWW_DIR",
            "run scripts/dev web",
        ),
        (
            [
                ("DATA_DIR", "/proc/nope"),
                ("WWW_DIR", pages.path().to_str().unwrap()),
            ],
            "DATA_DIR",
            "/proc/nope",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_recorder-server"))
            .env_clear()
            .env("BIND_ADDR", "127.0.0.1:0")
            .envs(vars)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{vars:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("recorder: invalid configuration: {var}: "))
                && stderr.contains(says),
            "{stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "nothing was announced: {:?}",
            out.stdout
        );
    }
}

/// Sends `head` and the first bytes of a body that announces more, then nothing; the
/// status, body and seconds until the server answered.
fn stall(addr: &str, head: String, first: &[u8]) -> (u16, String, f64) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = std::time::Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(first).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // The answer, not the end of the connection: the client keeps it open.
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some((_, body)) = text.split_once("\r\n\r\n") {
            if body.ends_with('}') {
                break;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let (status, body) = common::raw_answer(&out);
    (status, body, secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_is_ended_with_408_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[("BODY_TIMEOUT_SECS", "5")]);
    let api = client(&server);
    let (session, token) = api.create_session().await;
    let opened = api.start_upload(&session, &token, "p1").await;
    let rec = opened["recording_id"].as_str().unwrap();
    let (status, signed) = api
        .call(
            "POST",
            &format!("/api/sessions/{session}/uploads/{rec}/parts"),
            Some(&token),
            Some(json!({"upload": opened["upload"], "parts": [{"part_number": 1, "size": 1000}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{signed}");
    let request = &signed["parts"][0]["request"];
    let path = request["url"]
        .as_str()
        .unwrap()
        .trim_start_matches(&server.url)
        .to_owned();
    let mut headers = String::new();
    for (k, v) in request["headers"].as_object().unwrap() {
        headers.push_str(&format!("{k}: {}\r\n", v.as_str().unwrap()));
    }
    let part_head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {}\r\n{headers}Content-Length: 1000\r\n\r\n",
        server.addr()
    );
    let boundary = "stall-boundary";
    let form_head = format!(
        "POST /sessions/{session}/recording HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"problem_id\"\r\n\r\np2\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"recording\"; filename=\"r.webm\"\r\n\r\n",
        server.addr()
    );
    let addr = server.addr();
    let first = webm_bytes(10);
    let json_head = format!(
        "POST /api/sessions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n",
        server.addr()
    );
    let (part, form, json) = std::thread::scope(|s| {
        let part = s.spawn(|| stall(&addr, part_head, &first));
        let form = s.spawn(|| stall(&addr, form_head, &first));
        let json = s.spawn(|| stall(&addr, json_head, b"{\"metadata\""));
        (
            part.join().unwrap(),
            form.join().unwrap(),
            json.join().unwrap(),
        )
    });
    for (what, (status, body, secs)) in
        [("part PUT", part), ("old route", form), ("JSON body", json)]
    {
        assert_eq!(status, 408, "{what}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["code"], "body_timeout", "{what}: {v}");
        assert!(
            (4.5..20.0).contains(&secs),
            "{what}: answered after {secs} s"
        );
    }
    let left: Vec<String> = tree(dir.path())
        .into_keys()
        .filter(|k| k.contains("tmp") || k.contains("recording_p2"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let manifest = api.manifest(&session).await;
    assert_eq!(
        manifest["recordings"].as_array().unwrap().len(),
        1,
        "{manifest}"
    );
    // The server still serves: the same part, sent whole, is stored.
    let res = common::presigned_put(&api.http, request, Bytes::from(webm_bytes(1000)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_upload_in_flight_finish_then_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &[]);
    let api = client(&server);
    // An old-route upload that trickles in over about a second.
    let (ct, _) = streamed_form(0, true);
    let boundary = ct.rsplit('=').next().unwrap().to_owned();
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"problem_id\"\r\n\r\np1\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"recording\"; filename=\"r.webm\"\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let chunks: Vec<Bytes> = std::iter::once(Bytes::from(head))
        .chain((0..10).map(|_| Bytes::from(webm_bytes(10_000))))
        .chain(std::iter::once(Bytes::from(tail)))
        .collect();
    let body = futures::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, std::io::Error>(c)
    });
    let upload = api
        .http
        .post(format!("{}/sessions/s1/recording", api.base))
        .header("content-type", ct)
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let upload = tokio::spawn(upload);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(server.pid().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let res = upload.await.unwrap().unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the request in flight finished"
    );
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["size"], 100_000);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        std::net::TcpStream::connect(server.addr()).is_err(),
        "no longer listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_the_binary_prepares_the_bucket_and_uploads_go_straight_to_it() {
    let bucket = garage::GarageNode::shared().bucket();
    let dir = tempfile::tempdir().unwrap();
    let s3_vars = [
        ("STORAGE_BACKEND", "s3"),
        ("S3_BUCKET", bucket.bucket.as_str()),
        ("S3_ENDPOINT", bucket.endpoint.as_str()),
        ("S3_REGION", garage::REGION),
        ("AWS_ACCESS_KEY_ID", bucket.access_key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", bucket.secret_access_key.as_str()),
        ("CORS_ORIGINS", "http://study.example.org"),
        ("RESEARCHER_TOKEN", RESEARCHER),
        ("SERVER_SECRET", SECRET),
    ];
    let setup = Command::new(env!("CARGO_BIN_EXE_recorder-server"))
        .arg("setup-s3")
        .env_clear()
        .envs(s3_vars)
        .env("DATA_DIR", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );

    let server = Server::start(dir.path(), &s3_vars);
    let banner = server.banner.join("\n");
    assert!(
        banner.contains(&format!("storage: s3 {}/", bucket.bucket)),
        "{banner}"
    );
    let api = client(&server);
    let (_, health) = api.call("GET", "/healthz", None, None).await;
    assert_eq!(health["storage"], "s3");

    let (session, token) = api.create_session().await;
    let start = api.start_upload(&session, &token, "p1").await;
    let all = Bytes::from(webm_bytes(5 * MIB + 777));
    let specs = api
        .upload_parts(
            &session,
            &token,
            &start,
            &[all.slice(..5 * MIB), all.slice(5 * MIB..)],
        )
        .await;
    let (status, done) = api.complete(&session, &token, &start, &specs).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["recording"]["size"], all.len());
    let rec = start["recording_id"].as_str().unwrap();
    let (_, play) = api
        .call(
            "GET",
            &format!("/api/sessions/{session}/recordings/{rec}/url"),
            Some(RESEARCHER),
            None,
        )
        .await;
    let url = play["url"].as_str().unwrap();
    assert!(url.starts_with(&bucket.endpoint), "{url}");
    let res = api
        .http
        .get(url)
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(res.bytes().await.unwrap(), all.slice(..100));

    let (ct, body) = common::multipart(&[
        ("problem_id", None, b"p2"),
        ("recording", Some("r.webm"), &webm_bytes(4096)),
    ]);
    let res = api
        .http
        .post(format!("{}/sessions/{session}/recording", api.base))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    assert!(
        v["path"]
            .as_str()
            .unwrap()
            .starts_with(&format!("s3://{}/sessions/{session}/", bucket.bucket)),
        "{v}"
    );
    let m = api.manifest(&session).await;
    assert_eq!(m["recordings"].as_array().unwrap().len(), 2);
    assert!(
        tree(dir.path()).is_empty(),
        "nothing was written to DATA_DIR in s3 mode"
    );
}
