//! `kill -9` of the real binary in the middle of its writes, again and again, on one
//! `DATA_DIR`. Every file under the folder must then be whole: each `session.json` and
//! each manifest event parses, each recording object holds exactly the bytes that were
//! uploaded, and no temporary file (`.tmp-*`) was ever renamed to a real name half
//! written. What the server acknowledged before the kill is still there after the
//! restart. A kill in the middle of a complete must not lose the recording either: the
//! client's retried complete, answered by the restarted server, stores it.
//!
//! ```text
//! cargo test -p server --test crash_manifest -- --nocapture
//! ```
//!
//! `CRASH_SEED=n` replays a run (the seed is printed).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{RESEARCHER, SECRET, Server, presigned_put, webm_bytes};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shared::SessionId;
use shared::SessionManifest;
use shared::manifest::ManifestEvent;

/// Kill-restart rounds of the manifest test.
const ROUNDS: usize = 30;
/// Concurrent writers in each round.
const WRITERS: usize = 6;

fn start_server(data: &Path) -> Server {
    Server::start(
        data,
        &[("RESEARCHER_TOKEN", RESEARCHER), ("SERVER_SECRET", SECRET)],
    )
}

/// Kills the server with SIGKILL (no handler runs, nothing is flushed) and reaps it.
fn kill_9(server: &mut Server) {
    server.child.kill().expect("SIGKILL is sent");
    server.child.wait().expect("the killed server is reaped");
}

fn seed() -> u64 {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("CRASH_SEED={seed}");
    seed
}

/// A client of one server incarnation; every call fails fast once it is dead.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(server: &Server) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: server.url.clone(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await?;
        let status = res.status();
        let bytes = res.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Calls, insisting on `want`; `None` when the server died first.
    async fn ok(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
        want: u16,
    ) -> Option<Value> {
        let (status, v) = self.call(method, path, token, body).await.ok()?;
        assert_eq!(status.as_u16(), want, "{method} {path}: {v}");
        Some(v)
    }

    async fn create_session(&self) -> Option<(String, String)> {
        let v = self
            .ok(
                "POST",
                "/api/sessions",
                "",
                Some(json!({"metadata": {"study": "crash"}})),
                201,
            )
            .await?;
        Some((
            v["session_id"].as_str()?.to_owned(),
            v["token"].as_str()?.to_owned(),
        ))
    }

    /// Presigns and PUTs `parts`; `None` when the server died first.
    async fn put_parts(
        &self,
        session: &str,
        token: &str,
        start: &Value,
        parts: &[Bytes],
    ) -> Option<Vec<Value>> {
        let rec = start["recording_id"].as_str().unwrap();
        let specs: Vec<Value> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| json!({"part_number": i + 1, "size": p.len()}))
            .collect();
        let v = self
            .ok(
                "POST",
                &format!("/api/sessions/{session}/uploads/{rec}/parts"),
                token,
                Some(json!({"upload": start["upload"], "parts": specs})),
                200,
            )
            .await?;
        for (signed, bytes) in v["parts"].as_array().unwrap().iter().zip(parts) {
            let res = presigned_put(&self.http, &signed["request"], bytes.clone())
                .send()
                .await
                .ok()?;
            assert_eq!(res.status(), StatusCode::OK);
        }
        Some(specs)
    }
}

/// What the writers were told had happened, and what they were about to store.
#[derive(Default)]
struct Ledger {
    /// Metadata fields whose PATCH was answered 200: (session, field).
    fields: BTreeSet<(String, String)>,
    /// Recordings whose complete was answered 200: (session, recording id).
    completed: BTreeSet<(String, String)>,
    /// Every recording object that may appear, with the bytes it must then hold.
    objects: BTreeMap<String, usize>,
    /// Sessions and their tokens.
    sessions: Vec<(String, String)>,
}

/// One writer: metadata changes and small uploads into the round's sessions, until the
/// server dies.
async fn writer(
    api: Api,
    ledger: Arc<Mutex<Ledger>>,
    sessions: Vec<(String, String)>,
    who: usize,
    round: usize,
) {
    for n in 0.. {
        let (session, token) = &sessions[(who + n) % sessions.len()];
        if n % 3 == 2 {
            // A small recording: start, one part, complete.
            let start = api
                .ok(
                    "POST",
                    &format!("/api/sessions/{session}/uploads"),
                    token,
                    Some(json!({"problem_id": format!("w{who}"), "content_type": "video/webm"})),
                    201,
                )
                .await;
            let Some(start) = start else { return };
            let size = 1_000 + 17 * n + who;
            ledger
                .lock()
                .unwrap()
                .objects
                .insert(start["key"].as_str().unwrap().to_owned(), size);
            let parts = [Bytes::from(webm_bytes(size))];
            let Some(specs) = api.put_parts(session, token, &start, &parts).await else {
                return;
            };
            let rec = start["recording_id"].as_str().unwrap();
            let done = api
                .ok(
                    "POST",
                    &format!("/api/sessions/{session}/uploads/{rec}/complete"),
                    token,
                    Some(json!({"upload": start["upload"], "parts": specs, "duration_ms": 10})),
                    200,
                )
                .await;
            if done.is_none() {
                return;
            }
            ledger
                .lock()
                .unwrap()
                .completed
                .insert((session.clone(), rec.to_owned()));
        } else {
            let field = format!("r{round}w{who}n{n}");
            let body = json!({"metadata": {field.clone(): "acknowledged"}});
            if api
                .ok(
                    "PATCH",
                    &format!("/api/sessions/{session}/metadata"),
                    token,
                    Some(body),
                    200,
                )
                .await
                .is_none()
            {
                return;
            }
            ledger
                .lock()
                .unwrap()
                .fields
                .insert((session.clone(), field));
        }
    }
}

/// What the folder holds, file by file, checked for wholeness.
#[derive(Debug, Default)]
struct Audit {
    manifests: usize,
    events: usize,
    objects: usize,
    temp_files: usize,
}

/// Checks every file under `data`: manifests and events parse, `object` accepts each
/// recording object (its key and bytes), sidecars and upload metadata parse. Temporary
/// files may be left behind by a kill; they never carry a real name.
fn audit(data: &Path, object: &dyn Fn(&str, &[u8])) -> Audit {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(data, &mut files);
    let mut audit = Audit::default();
    for path in files {
        let rel = path
            .strip_prefix(data)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        // A `.tmp-` file, or a `.new-` folder an upload is staged in before its rename
        // into place, is left half written by a kill and never read.
        if name.starts_with(".tmp-") || rel.split('/').any(|seg| seg.starts_with(".new-")) {
            audit.temp_files += 1;
        } else if name == "session.json" {
            let session = SessionId::parse(rel.split('/').nth(1).unwrap()).unwrap();
            SessionManifest::from_stored(&session, &bytes)
                .unwrap_or_else(|e| panic!("{rel} is not a whole manifest: {e}"));
            audit.manifests += 1;
        } else if rel.contains("/events/") {
            serde_json::from_slice::<ManifestEvent>(&bytes)
                .unwrap_or_else(|e| panic!("{rel} is not a whole event: {e}"));
            audit.events += 1;
        } else if name.starts_with("recording_") {
            object(&rel, &bytes);
            audit.objects += 1;
        } else if name.ends_with(".json") {
            // Content-type sidecars, upload metadata, anything else JSON.
            serde_json::from_slice::<Value>(&bytes)
                .unwrap_or_else(|e| panic!("{rel} is not whole JSON: {e}"));
        }
    }
    audit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_manifest_writes_never_leaves_a_half_written_file_or_loses_an_acknowledged_change()
 {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rng = StdRng::seed_from_u64(seed());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut killed_after_ms = Vec::new();
    let mut last = Audit::default();

    for round in 0..ROUNDS {
        let mut server = start_server(&data);
        let api = Api::new(&server);
        let mut sessions = Vec::new();
        for _ in 0..3 {
            sessions.push(
                api.create_session()
                    .await
                    .expect("the fresh server answers"),
            );
        }
        ledger
            .lock()
            .unwrap()
            .sessions
            .extend(sessions.iter().cloned());
        let writers: Vec<_> = (0..WRITERS)
            .map(|who| {
                tokio::spawn(writer(
                    api.clone(),
                    ledger.clone(),
                    sessions.clone(),
                    who,
                    round,
                ))
            })
            .collect();
        let delay = rng.random_range(20..400);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        kill_9(&mut server);
        killed_after_ms.push(delay);
        for w in writers {
            w.await
                .expect("a writer panicked: the server answered wrongly before the kill");
        }
        let objects = ledger.lock().unwrap().objects.clone();
        last = audit(&data, &|rel, bytes| {
            let size = objects
                .get(rel)
                .unwrap_or_else(|| panic!("{rel} was never uploaded"));
            assert_eq!(bytes.len(), *size, "{rel} has the size uploaded");
            assert!(bytes == webm_bytes(*size), "{rel} holds the bytes uploaded");
        });
    }

    // One last start on the folder: everything acknowledged is there, nothing is corrupt.
    let server = start_server(&data);
    let api = Api::new(&server);
    let list = api
        .ok("GET", "/api/sessions", RESEARCHER, None, 200)
        .await
        .unwrap();
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let rows = list["sessions"].as_array().unwrap();
    assert_eq!(rows.len(), ledger.sessions.len(), "every session is listed");
    assert!(
        rows.iter().all(|r| r["error"].is_null()),
        "no session is corrupt: {list}"
    );
    let mut manifests = BTreeMap::new();
    for (session, _) in &ledger.sessions {
        let m = api
            .ok(
                "GET",
                &format!("/api/sessions/{session}"),
                RESEARCHER,
                None,
                200,
            )
            .await
            .unwrap();
        manifests.insert(session.clone(), m);
    }
    for (session, field) in &ledger.fields {
        assert_eq!(
            manifests[session]["metadata"][field], "acknowledged",
            "the acknowledged change {field} of {session} survived"
        );
    }
    for (session, rec) in &ledger.completed {
        let entry = manifests[session]["recordings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == rec.as_str())
            .unwrap_or_else(|| panic!("the acknowledged recording {rec} is listed"));
        assert_eq!(entry["status"], "complete", "{entry}");
        let key = entry["key"].as_str().unwrap();
        assert_eq!(
            entry["size"].as_u64().unwrap() as usize,
            ledger.objects[key]
        );
    }
    println!(
        "{ROUNDS} kill -9 rounds (after {:?} ms): {} sessions, {} acknowledged metadata changes, \
         {} acknowledged recordings; on disk {} manifests, {} events, {} objects, all whole; \
         {} temporary files left behind by kills",
        killed_after_ms,
        ledger.sessions.len(),
        ledger.fields.len(),
        ledger.completed.len(),
        last.manifests,
        last.events,
        last.objects,
        last.temp_files
    );
    assert!(
        ledger.fields.len() >= ROUNDS,
        "the writers got work done between kills"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Rounds of the kill-during-complete test.
const COMPLETE_ROUNDS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_complete_loses_no_recording_the_retried_complete_stores_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rng = StdRng::seed_from_u64(seed());
    const MIB: usize = 1024 * 1024;
    // Three parts, large enough that assembling them takes a while.
    let parts: Vec<Bytes> = [12 * MIB, 12 * MIB, 3 * MIB]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut v = vec![(i as u8).wrapping_mul(31); n];
            if i == 0 {
                v[..4].copy_from_slice(&common::WEBM_MAGIC);
            }
            Bytes::from(v)
        })
        .collect();
    let whole: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let sha = sha256_hex(&whole);

    // How long an undisturbed complete takes here, to aim the kills inside it.
    let mut window_ms = 0u64;
    let mut killed_mid_complete = 0;
    for round in 0..=COMPLETE_ROUNDS {
        let mut server = start_server(&data);
        let api = Api::new(&server);
        let (session, token) = api.create_session().await.unwrap();
        let start = api
            .ok(
                "POST",
                &format!("/api/sessions/{session}/uploads"),
                &token,
                Some(json!({"problem_id": "big", "content_type": "video/webm"})),
                201,
            )
            .await
            .unwrap();
        let specs = api
            .put_parts(&session, &token, &start, &parts)
            .await
            .unwrap();
        let rec = start["recording_id"].as_str().unwrap().to_owned();
        let complete_path = format!("/api/sessions/{session}/uploads/{rec}/complete");
        let body =
            json!({"upload": start["upload"], "parts": specs, "sha256": sha, "duration_ms": 1000});
        let began = Instant::now();
        if round == 0 {
            api.ok("POST", &complete_path, &token, Some(body), 200)
                .await
                .unwrap();
            window_ms = began.elapsed().as_millis() as u64;
            println!(
                "an undisturbed complete of {} MiB takes {window_ms} ms",
                whole.len() / MIB
            );
            continue;
        }
        let call = tokio::spawn({
            let (api, token, path, body) = (
                api.clone(),
                token.clone(),
                complete_path.clone(),
                body.clone(),
            );
            async move { api.call("POST", &path, &token, Some(body)).await.ok() }
        });
        tokio::time::sleep(Duration::from_millis(
            rng.random_range(0..=window_ms.max(1)),
        ))
        .await;
        kill_9(&mut server);
        let answered = call.await.unwrap();
        if answered.is_none() {
            killed_mid_complete += 1;
        }

        // The client retries against the restarted server.
        let server = start_server(&data);
        let api = Api::new(&server);
        let (status, v) = api
            .call("POST", &complete_path, &token, Some(body))
            .await
            .unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "round {round}: the retried complete: {v}"
        );
        assert_eq!(v["recording"]["status"], "complete");
        let stored = std::fs::read(data.join(v["recording"]["key"].as_str().unwrap())).unwrap();
        assert_eq!(stored.len(), whole.len());
        assert_eq!(
            sha256_hex(&stored),
            sha,
            "round {round}: the stored object is the upload"
        );
        audit(&data, &|rel, bytes| {
            assert_eq!(sha256_hex(bytes), sha, "{rel} is whole");
        });
    }
    println!(
        "{killed_mid_complete} of {COMPLETE_ROUNDS} kills landed before the complete was answered"
    );
    assert!(
        killed_mid_complete >= 1,
        "some kills landed inside a complete"
    );
}
