//! What the reliability tests (`hostile.rs`, `janitor.rs`, `concurrency.rs`) share: a
//! store to run the real binary on (a temporary `DATA_DIR`, or a fresh bucket on the
//! test binary's Garage node) with a view of the same store from the test, an HTTP
//! client of the API, a raw HTTP sender that sends paths byte for byte, WebM bytes with
//! a real EBML header, and snapshots of what is stored.
#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use server::signing::{Secret, UrlSigner};
use server::storage::Storage;
use server::storage::local::LocalStorage;
use tempfile::TempDir;

pub use crate::common::Api;
use crate::common::{RESEARCHER, SECRET, Server};
use crate::garage::{GarageNode, REGION};

/// 1 MiB.
pub const MIB: usize = 1024 * 1024;

/// Which store the binary runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `STORAGE_BACKEND=local` on a temporary folder.
    Local,
    /// `STORAGE_BACKEND=s3` on a fresh bucket of the shared Garage node.
    Garage,
}

/// A store and how to run the binary on it.
pub struct Store {
    /// Which backend.
    pub backend: Backend,
    /// Holds `data/` (the `DATA_DIR`) and anything else a test puts beside it.
    pub dir: TempDir,
    /// The environment the binary runs with (besides `DATA_DIR`).
    pub vars: Vec<(String, String)>,
    /// The same store, as the test sees it.
    pub storage: Arc<dyn Storage>,
}

impl Store {
    /// A fresh, empty store.
    pub fn new(backend: Backend) -> Store {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let mut vars = vec![
            ("RESEARCHER_TOKEN".to_owned(), RESEARCHER.to_owned()),
            ("SERVER_SECRET".to_owned(), SECRET.to_owned()),
            // The AWS SDK warns about every credential source it skips; not news here.
            ("LOG".to_owned(), "warn,aws_config=error".to_owned()),
        ];
        let storage: Arc<dyn Storage> = match backend {
            Backend::Local => {
                let signer = UrlSigner::new(
                    Secret::new(SECRET.as_bytes().to_vec()).unwrap(),
                    "http://127.0.0.1:9",
                );
                Arc::new(LocalStorage::new(dir.path().join("data"), signer))
            }
            Backend::Garage => {
                let bucket = GarageNode::shared().bucket();
                vars.extend(
                    [
                        ("STORAGE_BACKEND", "s3"),
                        ("S3_BUCKET", bucket.bucket.as_str()),
                        ("S3_ENDPOINT", bucket.endpoint.as_str()),
                        ("S3_REGION", REGION),
                        ("AWS_ACCESS_KEY_ID", bucket.access_key_id.as_str()),
                        ("AWS_SECRET_ACCESS_KEY", bucket.secret_access_key.as_str()),
                        // The servers' ports are not known before they start.
                        ("CORS_ORIGINS", "*"),
                    ]
                    .map(|(k, v)| (k.to_owned(), v.to_owned())),
                );
                Arc::new(bucket.storage())
            }
        };
        let store = Store {
            backend,
            dir,
            vars,
            storage,
        };
        if backend == Backend::Garage {
            // CORS for the page origin, so that the server's start-up check is quiet.
            let out = store.cli(&["setup-s3"]);
            assert!(out.status.success(), "{}", text(&out));
        }
        store
    }

    /// The `DATA_DIR`.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars = self.vars.clone();
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        vars
    }

    /// Starts `recorder-server serve` on this store.
    pub fn start(&self, extra: &[(&str, &str)]) -> Server {
        let vars = self.env(extra);
        let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Server::start(&self.data(), &refs)
    }

    /// Runs `recorder-server ARGS` on this store and waits for it.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_recorder-server"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATA_DIR", self.data())
            .envs(self.env(&[]))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Every object in the store with its bytes (the local backend's own dot-files
    /// excluded; see [`crate::common::tree`] for those).
    pub async fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for meta in self.storage.list("").await.unwrap() {
            let bytes = self.storage.get(&meta.key).await.unwrap();
            out.insert(meta.key.to_string(), bytes.to_vec());
        }
        out
    }

    /// The uploads in progress, as `(key, upload id)`.
    pub async fn uploads(&self) -> Vec<(String, String)> {
        self.storage
            .list_uploads("")
            .await
            .unwrap()
            .into_iter()
            .map(|u| (u.key.to_string(), u.upload_id))
            .collect()
    }
}

/// A command's standard output and error, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A WebM file of exactly `size` bytes (at least 64): a real EBML header (DocType
/// `webm`), a Segment of unknown size, and a Void element filled with a pattern that
/// depends on `seed`, so two files differ.
pub fn webm_file(size: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![
        0x1A, 0x45, 0xDF, 0xA3, 0x9F, // EBML, 31 bytes
        0x42, 0x86, 0x81, 0x01, // EBMLVersion 1
        0x42, 0xF7, 0x81, 0x01, // EBMLReadVersion 1
        0x42, 0xF2, 0x81, 0x04, // EBMLMaxIDLength 4
        0x42, 0xF3, 0x81, 0x08, // EBMLMaxSizeLength 8
        0x42, 0x82, 0x84, b'w', b'e', b'b', b'm', // DocType "webm"
        0x42, 0x87, 0x81, 0x04, // DocTypeVersion 4
        0x42, 0x85, 0x81, 0x02, // DocTypeReadVersion 2
        0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, // Segment
    ];
    assert!(size >= v.len() + 16, "a WebM of {size} bytes is too small");
    // One Void element (0xEC, 8-byte size) fills the rest.
    let payload = size - v.len() - 9;
    v.push(0xEC);
    v.push(0x01);
    v.extend_from_slice(&(payload as u64).to_be_bytes()[1..]);
    v.extend((0..payload).map(|i| (i as u8).wrapping_mul(31) ^ seed));
    assert_eq!(v.len(), size);
    v
}

/// An answer to a raw request.
#[derive(Debug)]
pub struct RawAnswer {
    /// The status code (0 if the answer was not HTTP).
    pub status: u16,
    /// The header block, as text.
    pub head: String,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// The body as JSON (`Null` if not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends one HTTP/1.1 request with exactly this path (bytes, not normalised by any
/// client), these headers and this body, and reads the whole answer.
/// `Host`, `Content-Length` (unless given) and `Connection: close` are added.
pub fn raw_request(
    addr: &str,
    method: &str,
    path: &[u8],
    headers: &[(String, String)],
    body: &[u8],
) -> RawAnswer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(path);
    req.extend_from_slice(format!(" HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n").as_bytes());
    let has_length = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if !has_length {
        req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    for (k, v) in headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    // The server may answer (and close) before the whole body is read: a refused body.
    let _ = stream.write_all(&req);
    let _ = stream.write_all(body);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let Some(split) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return RawAnswer {
            status: 0,
            head: String::from_utf8_lossy(&out).into_owned(),
            body: Vec::new(),
        };
    };
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let mut body = out[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    RawAnswer { status, head, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let end = (start + size).min(data.len());
        out.extend_from_slice(&data[start..end]);
        data = &data[(end + 2).min(data.len())..];
    }
    out
}

/// Every file under `dir` with its bytes (see [`crate::common::tree`]), for folders
/// that may not exist.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    crate::common::tree(dir)
}
