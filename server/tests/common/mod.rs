//! Helpers shared by the router tests and the binary tests: an app over a temporary
//! folder driven with `oneshot`, the real binary started on port 0, raw HTTP for paths
//! that HTTP clients would normalise, multipart bodies, and folder snapshots.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use server::app::{AppState, app};
use server::config::Config;
use server::signing::UrlSigner;
use server::storage::Storage;
use server::storage::local::LocalStorage;
use tempfile::TempDir;
use tower::ServiceExt;

/// The researcher token every test server is given.
pub const RESEARCHER: &str = "researcher-token-for-tests";
/// The server secret every test server is given (so tests can sign URLs themselves).
pub const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";
/// The base URL in-process apps sign storage URLs for.
pub const BASE: &str = "http://127.0.0.1:9";

/// The first bytes of a WebM file.
pub const WEBM_MAGIC: [u8; 4] = [0x1A, 0x45, 0xDF, 0xA3];

/// `n` bytes starting with WebM magic, the rest a pattern.
pub fn webm_bytes(n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let m = n.min(4);
    v[..m].copy_from_slice(&WEBM_MAGIC[..m]);
    v
}

/// Every file under `root` (relative path → bytes).
pub fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A multipart form body: `(name, file name if a file, bytes)` in order.
pub fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----recorder-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     Content-Type: video/webm\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

// ---------------------------------------------------------------------------------------
// In-process app.

/// Controls the harness's clock: a seconds offset added to the system time, or a
/// frozen instant.
#[derive(Clone, Default)]
pub struct Offset {
    secs: Arc<AtomicU64>,
    frozen_ms: Arc<AtomicU64>,
}

impl Offset {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.secs.fetch_add(by.as_secs(), Ordering::SeqCst);
    }

    /// Stops the clock at the current instant.
    pub fn freeze(&self) {
        let now = self.now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
        self.frozen_ms
            .store(now.as_millis() as u64, Ordering::SeqCst);
    }

    /// The time by this clock.
    pub fn now(&self) -> SystemTime {
        match self.frozen_ms.load(Ordering::SeqCst) {
            0 => SystemTime::now() + Duration::from_secs(self.secs.load(Ordering::SeqCst)),
            ms => SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
        }
    }
}

/// The app over a temporary folder, driven with `oneshot`.
pub struct Harness {
    /// Holds the folder.
    pub dir: TempDir,
    /// The state the app was built from.
    pub state: AppState,
    /// How far the clock has been moved forward.
    pub offset: Offset,
}

/// An answer: status, headers and body (JSON when it parses).
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: axum::http::HeaderMap,
    /// The body.
    pub bytes: Vec<u8>,
}

impl Answer {
    /// The body as JSON (Null if not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }

    /// The error code of an error body.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_owned()
    }
}

impl Harness {
    /// Defaults plus `vars`.
    pub fn new(vars: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let www = dir.path().join("www");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), "<h1>participant</h1>").unwrap();
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        map.insert("DATA_DIR".into(), data.to_string_lossy().into_owned());
        map.insert("WWW_DIR".into(), www.to_string_lossy().into_owned());
        map.insert("RESEARCHER_TOKEN".into(), RESEARCHER.into());
        map.insert("SERVER_SECRET".into(), SECRET.into());
        for (k, v) in vars {
            map.insert((*k).into(), (*v).into());
        }
        let config = Config::from_vars(|n| map.get(n).cloned()).unwrap();
        let secrets = config.resolve_secrets().unwrap();
        let signer = Arc::new(UrlSigner::new(secrets.server_secret.clone(), BASE));
        let storage: Arc<dyn Storage> =
            Arc::new(LocalStorage::new(config.data_dir.clone(), signer.clone()));
        let offset = Offset::default();
        let shift = offset.clone();
        let state = AppState::new(config, storage, &secrets, signer)
            .with_clock(Arc::new(move || shift.now()));
        Self { dir, state, offset }
    }

    /// The data folder.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The app.
    pub fn app(&self) -> Router {
        app(self.state.clone())
    }

    /// Sends a request.
    pub async fn send(&self, req: Request<Body>) -> Answer {
        let res = self.app().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Answer {
            status,
            headers,
            bytes,
        }
    }

    /// Sends `method uri` with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(serde_json::to_vec(&v).unwrap())
            }
            None => Body::empty(),
        };
        self.send(req.body(body).unwrap()).await
    }

    /// Creates a session; returns (id, token).
    pub async fn create_session(&self) -> (String, String) {
        let a = self
            .call("POST", "/api/sessions", None, Some(serde_json::json!({})))
            .await;
        assert_eq!(
            a.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&a.bytes)
        );
        let v = a.json();
        (
            v["session_id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }

    /// Starts an upload; returns the start answer.
    pub async fn start_upload(&self, session: &str, token: &str, problem: &str) -> Value {
        let a = self
            .call(
                "POST",
                &format!("/api/sessions/{session}/uploads"),
                Some(token),
                Some(serde_json::json!({"problem_id": problem, "content_type": "video/webm;codecs=vp8,opus"})),
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&a.bytes)
        );
        a.json()
    }

    /// Presigns parts and PUTs `parts` to the returned URLs through the app's
    /// `/storage` routes.
    pub async fn put_parts(
        &self,
        session: &str,
        token: &str,
        start: &Value,
        parts: &[Vec<u8>],
    ) -> Vec<Value> {
        let rec = start["recording_id"].as_str().unwrap();
        let specs: Vec<Value> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| serde_json::json!({"part_number": i + 1, "size": p.len()}))
            .collect();
        let a = self
            .call(
                "POST",
                &format!("/api/sessions/{session}/uploads/{rec}/parts"),
                Some(token),
                Some(serde_json::json!({"upload": start["upload"], "parts": specs})),
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&a.bytes)
        );
        let signed = a.json()["parts"].as_array().unwrap().clone();
        for (p, bytes) in signed.iter().zip(parts) {
            let url = p["request"]["url"].as_str().unwrap();
            let path = url.strip_prefix(BASE).unwrap();
            let mut req = Request::builder()
                .method(p["request"]["method"].as_str().unwrap())
                .uri(path)
                .header("content-length", bytes.len());
            for (k, v) in p["request"]["headers"].as_object().unwrap() {
                req = req.header(k, v.as_str().unwrap());
            }
            let put = self
                .send(req.body(Body::from(bytes.clone())).unwrap())
                .await;
            assert_eq!(
                put.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&put.bytes)
            );
        }
        specs
    }

    /// Completes an upload with `parts` specs.
    pub async fn complete(
        &self,
        session: &str,
        token: &str,
        start: &Value,
        parts: &[Value],
    ) -> Answer {
        let rec = start["recording_id"].as_str().unwrap();
        self.call(
            "POST",
            &format!("/api/sessions/{session}/uploads/{rec}/complete"),
            Some(token),
            Some(
                serde_json::json!({"upload": start["upload"], "parts": parts, "duration_ms": 1234}),
            ),
        )
        .await
    }
}

// ---------------------------------------------------------------------------------------
// The real binary.

/// A running `recorder-server`, killed when dropped.
pub struct Server {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:PORT`, as the binary printed it.
    pub url: String,
    /// What the binary printed on stdout up to and including the listening line.
    pub banner: Vec<String>,
    /// Its `WWW_DIR`, removed when dropped.
    pages: TempDir,
}

/// A `WWW_DIR` the binary accepts at start-up: `index.html` and a stand-in for the
/// wasm client's `pkg/client.js` (the tests that need the real one are the browser
/// tests, which serve the repository's `www/`).
pub fn pages() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pkg")).unwrap();
    std::fs::write(dir.path().join("index.html"), "<h1>participant</h1>").unwrap();
    std::fs::write(dir.path().join("pkg/client.js"), "export default null;\n").unwrap();
    dir
}

impl Server {
    /// Starts the binary with a clean environment plus `vars` (BIND_ADDR defaults to
    /// 127.0.0.1:0) and waits for its listening line.
    pub fn start(data_dir: &Path, vars: &[(&str, &str)]) -> Server {
        let pages = pages();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_recorder-server"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BIND_ADDR", "127.0.0.1:0")
            .env("DATA_DIR", data_dir)
            .env("WWW_DIR", pages.path())
            .env("LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the server printed no listening line; stdout so far: {banner:?}");
                }
            };
            banner.push(line.clone());
            if let Some(rest) = line.strip_prefix("recorder listening on ") {
                let url = rest.split_whitespace().next().unwrap().to_owned();
                // Keep draining stdout so the child never blocks on a full pipe.
                std::thread::spawn(move || while rx.recv().is_ok() {});
                return Server {
                    child,
                    url,
                    banner,
                    pages,
                };
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The peak resident memory (VmHWM) of the process, in bytes.
    pub fn peak_memory(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    /// Sends `raw` bytes as one HTTP/1.1 request (nothing normalises the path) and
    /// returns the status code and body.
    pub fn raw(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr(),
            body.len()
        );
        stream.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        raw_answer(&out)
    }
}

/// The status code and body of a raw HTTP/1.1 answer (status 0 when there is none).
pub fn raw_answer(out: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(out);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The PUT of `bytes` that a presigned part `request` (`{"url", "headers"}`, as the
/// parts route answers it) describes, ready to send.
pub fn presigned_put(
    http: &reqwest::Client,
    request: &Value,
    bytes: bytes::Bytes,
) -> reqwest::RequestBuilder {
    let mut req = http.put(request["url"].as_str().unwrap()).body(bytes);
    for (k, val) in request["headers"].as_object().unwrap() {
        req = req.header(k, val.as_str().unwrap());
    }
    req
}

/// An HTTP client of one running binary: the API calls the binary tests and the
/// reliability tests make.
#[derive(Clone)]
pub struct Api {
    /// The client.
    pub http: reqwest::Client,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The `study` metadata of the sessions it creates.
    study: &'static str,
}

impl Api {
    /// A client of `server` that gives each request 60 s; its sessions are of the study
    /// `reliability`.
    pub fn new(server: &Server) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Self::with(server, http, "reliability")
    }

    /// A client of `server` through `http`; its sessions are of the study `study`.
    pub fn with(server: &Server, http: reqwest::Client, study: &'static str) -> Self {
        Self {
            http,
            base: server.url.clone(),
            study,
        }
    }

    /// `method path` with an optional bearer token and JSON body; the status and the
    /// body as JSON (`Null` if it is not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (reqwest::StatusCode, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let bytes = res.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Creates a session; `(id, token)`.
    pub async fn create_session(&self) -> (String, String) {
        let (status, v) = self
            .call(
                "POST",
                "/api/sessions",
                None,
                Some(serde_json::json!({"metadata": {"study": self.study}})),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{v}");
        (
            v["session_id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }

    /// Opens an upload of a WebM recording.
    pub async fn start_upload(&self, session: &str, token: &str, problem: &str) -> Value {
        let (status, v) = self
            .call(
                "POST",
                &format!("/api/sessions/{session}/uploads"),
                Some(token),
                Some(serde_json::json!({"problem_id": problem, "content_type": "video/webm;codecs=vp8,opus"})),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{v}");
        v
    }

    /// Presigns `parts` (numbered from 1) and PUTs each straight to its URL; returns
    /// the part specs.
    pub async fn upload_parts(
        &self,
        session: &str,
        token: &str,
        start: &Value,
        parts: &[bytes::Bytes],
    ) -> Vec<Value> {
        let rec = start["recording_id"].as_str().unwrap();
        let specs: Vec<Value> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| serde_json::json!({"part_number": i + 1, "size": p.len()}))
            .collect();
        let (status, v) = self
            .call(
                "POST",
                &format!("/api/sessions/{session}/uploads/{rec}/parts"),
                Some(token),
                Some(serde_json::json!({"upload": start["upload"], "parts": specs})),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{v}");
        for (signed, bytes) in v["parts"].as_array().unwrap().iter().zip(parts) {
            let res = presigned_put(&self.http, &signed["request"], bytes.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(
                res.status(),
                reqwest::StatusCode::OK,
                "{}",
                res.text().await.unwrap()
            );
        }
        specs
    }

    /// Completes an upload.
    pub async fn complete(
        &self,
        session: &str,
        token: &str,
        start: &Value,
        specs: &[Value],
    ) -> (reqwest::StatusCode, Value) {
        let rec = start["recording_id"].as_str().unwrap();
        self.call(
            "POST",
            &format!("/api/sessions/{session}/uploads/{rec}/complete"),
            Some(token),
            Some(
                serde_json::json!({"upload": start["upload"], "parts": specs, "duration_ms": 1000}),
            ),
        )
        .await
    }

    /// One recording of `bytes` in a single part, start to complete; the entry.
    pub async fn record(
        &self,
        session: &str,
        token: &str,
        problem: &str,
        bytes: bytes::Bytes,
    ) -> Value {
        let start = self.start_upload(session, token, problem).await;
        let specs = self.upload_parts(session, token, &start, &[bytes]).await;
        let (status, v) = self.complete(session, token, &start, &specs).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{v}");
        v["recording"].clone()
    }

    /// The session's manifest, read with the researcher token.
    pub async fn manifest(&self, session: &str) -> Value {
        let (status, v) = self
            .call(
                "GET",
                &format!("/api/sessions/{session}"),
                Some(RESEARCHER),
                None,
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{v}");
        v
    }

    /// The manifest entry of one recording.
    pub async fn entry(&self, session: &str, recording: &str) -> Value {
        let m = self.manifest(session).await;
        m["recordings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == recording)
            .cloned()
            .unwrap_or_else(|| panic!("no recording {recording} in {m}"))
    }

    /// The bytes of a stored recording, through a presigned playback URL.
    pub async fn download(&self, session: &str, recording: &str) -> bytes::Bytes {
        let (status, v) = self
            .call(
                "GET",
                &format!("/api/sessions/{session}/recordings/{recording}/url"),
                Some(RESEARCHER),
                None,
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{v}");
        let res = self
            .http
            .get(v["url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), reqwest::StatusCode::OK);
        res.bytes().await.unwrap()
    }
}
