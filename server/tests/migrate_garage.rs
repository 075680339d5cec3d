//! `recorder-server migrate` on a real Garage node, through the real binary: an old
//! data folder (many sessions, a 100 MiB recording, a corrupt `session.json`, empty
//! files, unexpected extra files, names no key can hold, the local backend's own files)
//! is migrated; the bucket is compared with the folder object by object; a run killed
//! in the middle of the 100 MiB upload is finished by a second run that copies nothing
//! twice; `--dry-run` changes nothing; and the server shows the same sessions and
//! manifests on the bucket as on the folder.
//!
//! Needs `garage` (`scripts/dev setup`). One node serves the whole binary; each test
//! has its own bucket.

mod common;
mod garage;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{RESEARCHER, SECRET, Server};
use futures::StreamExt;
use garage::{GarageBucket, GarageNode};
use serde_json::Value;
use server::storage::Storage;
use server::storage::s3::{S3Settings, S3Storage};
use sha2::{Digest, Sha256};
use shared::ObjectKey;

const MIB: usize = 1024 * 1024;

/// The 100 MiB recording, in the middle of the sessions so that objects are copied
/// before and after it.
const BIG: &str = "sessions/old-12/recording_p2_1733241700000.webm";

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Pseudo-random bytes (xorshift) that no store can compress or deduplicate, starting
/// with WebM magic when `webm`.
fn noise(len: usize, seed: u64, webm: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    if webm && len >= 4 {
        out[..4].copy_from_slice(&common::WEBM_MAGIC);
    }
    out
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// What the generated folder should become in the bucket.
struct OldTree {
    /// Every file that must be copied: key → (sha256, size, Content-Type).
    expected: BTreeMap<String, (String, u64, Option<String>)>,
    /// Every file that cannot be copied (relative paths as the command prints them).
    not_copied: Vec<String>,
}

/// Writes an old-layout data folder: 24 sessions of the old app, one of them with a
/// 100 MiB recording and one with a corrupt `session.json`, plus empty files, extra
/// files and folders, names no key can hold and the local backend's own files.
fn generate(root: &Path) -> OldTree {
    let mut expected = BTreeMap::new();
    let mut add = |rel: &str, bytes: &[u8], ct: Option<&str>| {
        write(root, rel, bytes);
        expected.insert(
            rel.to_owned(),
            (sha256(bytes), bytes.len() as u64, ct.map(str::to_owned)),
        );
    };
    for i in 1..=24u64 {
        let id = format!("old-{i:02}");
        let base = 1_733_241_600_000 + i * 3_600_000;
        let recordings: Vec<String> = (1..=(i % 3 + 1))
            .map(|p| format!("recording_p{p}_{}.webm", base + p * 60_000))
            .collect();
        let manifest = if i == 7 {
            // Cut off mid-write by the old app: not JSON at all.
            format!("{{\"session_id\": \"{id}\", \"recordings\": [{{\"file\": \"rec").into_bytes()
        } else {
            serde_json::to_vec_pretty(&serde_json::json!({
                "session_id": id,
                "participant": format!("P{i:03}"),
                "started": base / 1000,
                "recordings": recordings.iter().map(|r| serde_json::json!({"file": r})).collect::<Vec<_>>(),
            }))
            .unwrap()
        };
        add(
            &format!("sessions/{id}/session.json"),
            &manifest,
            Some("application/json"),
        );
        for (n, name) in recordings.iter().enumerate() {
            let size = 1000 + (i as usize * 7919 + n * 104_729) % (300 * 1024);
            add(
                &format!("sessions/{id}/{name}"),
                &noise(size, i * 10 + n as u64, true),
                Some("video/webm"),
            );
        }
    }
    add(BIG, &noise(100 * MIB, 12_345, true), Some("video/webm"));
    // Empty files.
    add(
        "sessions/old-03/recording_p9_1733241600999.webm",
        b"",
        Some("video/webm"),
    );
    add("sessions/old-03/empty.txt", b"", None);
    // Extra files and folders nobody expected.
    add(
        "sessions/old-04/notes.txt",
        b"participant asked for a break at 10:14\n",
        None,
    );
    add(
        "sessions/old-04/extra/deep/scan.bin",
        &noise(70_000, 99, false),
        None,
    );
    add("exports/summary.csv", b"session,problems\nold-01,2\n", None);
    add("README.txt", b"data of the 2025 pilot\n", None);
    // A recording with a content type recorded by the local backend.
    let sidecar_ct = "audio/webm;codecs=opus";
    add(
        "sessions/old-09/recording_p7_1733245000000.weba",
        &noise(5000, 7, true),
        Some(sidecar_ct),
    );
    write(
        root,
        "sessions/old-09/.recording_p7_1733245000000.weba.meta.json",
        format!("{{\"content_type\":\"{sidecar_ct}\"}}").as_bytes(),
    );
    // Names no key can hold: listed, never copied.
    write(root, "sessions/old-05/my notes.txt", b"a space in the name");
    write(root, "sessions/old-05/.DS_Store", b"finder");
    write(root, "sessions/.trash/old-00/session.json", b"{}");
    let mut not_copied = vec![
        "sessions/.trash/old-00/session.json".to_owned(),
        "sessions/old-05/.DS_Store".to_owned(),
        "sessions/old-05/my notes.txt".to_owned(),
    ];
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
        std::fs::write(root.join("sessions/old-06").join(name), b"latin-1 name").unwrap();
        not_copied.push("sessions/old-06/caf\u{fffd}.txt".to_owned());
    }
    // The local backend's own files: never objects.
    write(root, ".server-secret", SECRET.as_bytes());
    write(root, ".researcher-token", RESEARCHER.as_bytes());
    write(root, "sessions/old-08/.tmp-5f3a9c", b"half a write");
    let upload = ".uploads/0123456789abcdef0123456789abcdef";
    write(
        root,
        &format!("{upload}/meta.json"),
        br#"{"key":"sessions/old-02/recording_p5_1733249999000.webm","content_type":"video/webm","created":"2026-01-01T00:00:00Z"}"#,
    );
    write(
        root,
        &format!("{upload}/part-00001"),
        &noise(6 * MIB, 5, true),
    );
    not_copied.sort();
    OldTree {
        expected,
        not_copied,
    }
}

/// The environment of the binary on this bucket.
fn s3_vars(bucket: &GarageBucket) -> Vec<(&'static str, String)> {
    vec![
        ("STORAGE_BACKEND", "s3".to_owned()),
        ("S3_BUCKET", bucket.bucket.clone()),
        ("S3_ENDPOINT", bucket.endpoint.clone()),
        ("S3_REGION", garage::REGION.to_owned()),
        ("AWS_ACCESS_KEY_ID", bucket.access_key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY", bucket.secret_access_key.clone()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ("RESEARCHER_TOKEN", RESEARCHER.to_owned()),
        ("SERVER_SECRET", SECRET.to_owned()),
    ]
}

fn migrate_command(data: &Path, bucket: &GarageBucket, args: &[&str]) -> Command {
    migrate_command_with(data, bucket, args, &[])
}

fn migrate_command_with(
    data: &Path,
    bucket: &GarageBucket,
    args: &[&str],
    vars: &[(&str, &str)],
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recorder-server"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LOG", "warn")
        .envs(s3_vars(bucket))
        .envs(vars.iter().copied())
        .arg("migrate")
        .arg("--from")
        .arg(format!("local:{}", data.display()))
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Runs `migrate` to the end.
fn migrate(data: &Path, bucket: &GarageBucket, args: &[&str]) -> Run {
    let out = migrate_command(data, bucket, args).output().unwrap();
    Run::from(out)
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    /// The keys of the per-object lines starting with `verb` (`copied`, `skipped`, ...).
    fn keys(&self, verb: &str) -> Vec<String> {
        keys_of(&self.stdout, verb)
    }

    /// The number of a summary line such as `copied:      12 objects, ...`.
    fn count(&self, label: &str) -> usize {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {label:?} line in\n{}", self.stdout))
    }

    fn explain(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn keys_of(stdout: &str, verb: &str) -> Vec<String> {
    let mut keys: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(verb))
        .filter(|rest| rest.starts_with(' '))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|k| k.trim_end_matches(':').to_owned())
        .collect();
    keys.sort();
    keys
}

/// Every object in the bucket (whatever its name): key → (ETag, last modified).
async fn bucket_state(s3: &S3Storage) -> BTreeMap<String, (String, String)> {
    let mut pages = s3
        .client()
        .list_objects_v2()
        .bucket(s3.bucket())
        .into_paginator()
        .send();
    let mut out = BTreeMap::new();
    while let Some(page) = pages.next().await {
        for o in page.unwrap().contents() {
            out.insert(
                o.key().unwrap().to_owned(),
                (
                    o.e_tag().unwrap_or_default().to_owned(),
                    o.last_modified().map(|t| t.to_string()).unwrap_or_default(),
                ),
            );
        }
    }
    out
}

async fn read_all(s3: &S3Storage, key: &str) -> Vec<u8> {
    let got = s3
        .get_range(&ObjectKey::parse(key).unwrap(), None)
        .await
        .unwrap();
    got.body.map(|c| c.unwrap().to_vec()).concat().await
}

/// Checks the bucket against the folder, object by object: exactly the expected keys,
/// each with the file's bytes (SHA-256), its size, the checksum metadata and the
/// Content-Type it should have.
async fn assert_bucket_matches(s3: &S3Storage, tree: &OldTree) {
    let state = bucket_state(s3).await;
    let keys: Vec<&String> = state.keys().collect();
    let want: Vec<&String> = tree.expected.keys().collect();
    assert_eq!(keys, want, "the bucket holds exactly the copyable files");
    for (key, (sha, size, ct)) in &tree.expected {
        let head = s3
            .client()
            .head_object()
            .bucket(s3.bucket())
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(head.content_length(), Some(*size as i64), "{key}");
        assert_eq!(
            head.metadata().and_then(|m| m.get("sha256")),
            Some(sha),
            "{key}"
        );
        let stored_ct = s3
            .content_type(&ObjectKey::parse(key).unwrap())
            .await
            .unwrap();
        assert_eq!(&stored_ct, ct, "{key}");
        let bytes = read_all(s3, key).await;
        assert_eq!(bytes.len() as u64, *size, "{key}");
        assert_eq!(&sha256(&bytes), sha, "{key}: the bytes differ");
    }
}

/// Peak resident memory of a running process, in bytes (0 once it is gone).
fn peak_memory(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_folder_is_migrated_verified_resumed_after_kill_9_and_served_the_same() {
    let bucket = GarageNode::shared().bucket();
    let s3 = bucket.storage();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tree = generate(&data);
    add_sessions_of_the_new_server(&data).await;
    let tree = OldTree {
        expected: rescan_expected(&data, tree.expected),
        not_copied: tree.not_copied,
    };
    assert!(tree.expected.len() > 50, "{}", tree.expected.len());
    let source_before = common::tree(&data);

    // A dry run on the empty bucket says what it would do and changes nothing.
    let dry = migrate(&data, &bucket, &["--dry-run"]);
    assert_eq!(dry.code, Some(3), "{}", dry.explain());
    let would: Vec<String> = dry.keys("would copy");
    assert_eq!(
        would,
        tree.expected.keys().cloned().collect::<Vec<_>>(),
        "{}",
        dry.explain()
    );
    assert!(
        bucket_state(&s3).await.is_empty(),
        "a dry run wrote objects"
    );
    assert!(s3.list_uploads("").await.unwrap().is_empty());

    // The first real run, one transfer at a time in key order, is killed (SIGKILL) while
    // the 100 MiB recording is uploading: after its first part is stored, long before
    // its last, with the objects after it not started yet.
    let mut child = migrate_command(&data, &bucket, &["--jobs", "1", "--limit-rate", "32M"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout_tx = tx.clone();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = stdout_tx.send(line);
        }
        all
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no part of {BIG} was stored; output: {seen:#?}"));
        let first_part =
            line.starts_with(&format!("{BIG}: part ")) && line.contains("(1 of 7 done)");
        seen.push(line);
        if first_part {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None, "killed by a signal");
    let first_stdout = out_reader.join().unwrap();

    let big = ObjectKey::parse(BIG).unwrap();
    assert!(
        matches!(
            s3.head(&big).await,
            Err(server::storage::StorageError::NotFound { .. })
        ),
        "no partial object under the real key"
    );
    let left: Vec<String> = s3
        .list_uploads("")
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.key.to_string())
        .collect();
    assert!(
        left.contains(&BIG.to_owned()),
        "the upload in progress: {left:?}"
    );
    let after_kill = bucket_state(&s3).await;
    let copied_first = keys_of(&first_stdout, "copied");
    assert!(!copied_first.is_empty(), "{first_stdout}");
    let before_big: Vec<&String> = tree.expected.keys().filter(|k| k.as_str() < BIG).collect();
    assert_eq!(
        after_kill.keys().collect::<Vec<_>>(),
        before_big,
        "in key order, everything before the big recording and nothing after it"
    );
    for key in &copied_first {
        assert!(after_kill.contains_key(key), "{key} was reported copied");
    }

    // The second run aborts the leftover upload, skips everything already there (the
    // objects stay exactly as they were) and copies the rest, with flat memory.
    let child = migrate_command(&data, &bucket, &["--jobs", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    let mut peak = 0;
    while !waiter.is_finished() {
        peak = peak.max(peak_memory(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = Run::from(waiter.join().unwrap());
    assert_eq!(second.code, Some(3), "{}", second.explain());
    let aborted: Vec<&str> = second
        .stdout
        .lines()
        .filter(|l| l.starts_with("aborted the unfinished upload"))
        .collect();
    assert!(
        aborted.len() == 1 && aborted[0].contains(BIG),
        "{}",
        second.explain()
    );
    assert!(s3.list_uploads("").await.unwrap().is_empty());
    let skipped = second.keys("skipped");
    let copied = second.keys("copied");
    let earlier: Vec<String> = after_kill.keys().cloned().collect();
    assert_eq!(
        skipped, earlier,
        "everything copied before the kill is skipped"
    );
    for key in &copied {
        assert!(!after_kill.contains_key(key), "{key} was copied twice");
    }
    assert_eq!(skipped.len() + copied.len(), tree.expected.len());
    let from_big: Vec<String> = tree
        .expected
        .keys()
        .filter(|k| k.as_str() >= BIG)
        .cloned()
        .collect();
    assert_eq!(
        copied, from_big,
        "the big recording and everything after it"
    );
    assert_eq!(second.count("skipped:"), after_kill.len());
    assert_eq!(
        second.count("copied:"),
        tree.expected.len() - after_kill.len()
    );
    assert_eq!(second.count("failed:"), 0);
    assert_eq!(second.count("not copied:"), tree.not_copied.len());
    for path in &tree.not_copied {
        assert!(
            second.stdout.contains(&format!("  {path}: ")),
            "{path} is listed as not copied\n{}",
            second.stdout
        );
    }
    assert!(
        peak > 0 && peak < 96 * MIB as u64,
        "peak memory {} MiB while copying a 100 MiB file",
        peak / MIB as u64
    );
    let after_second = bucket_state(&s3).await;
    for (key, state) in &after_kill {
        assert_eq!(
            after_second.get(key),
            Some(state),
            "{key} was rewritten (ETag or last-modified changed)"
        );
    }
    assert_bucket_matches(&s3, &tree).await;
    assert_eq!(
        common::tree(&data),
        source_before,
        "the source is untouched without --delete-source"
    );

    // A dry run now would skip everything, and changes nothing either.
    let dry = migrate(&data, &bucket, &["--dry-run"]);
    assert_eq!(dry.code, Some(3), "{}", dry.explain());
    assert_eq!(
        dry.keys("would skip").len(),
        tree.expected.len(),
        "{}",
        dry.explain()
    );
    assert!(dry.keys("would copy").is_empty() && dry.keys("would replace").is_empty());
    assert_eq!(bucket_state(&s3).await, after_second);

    // The server on the folder and the server on the bucket show the same sessions and
    // the same manifests (the corrupt one as corrupt on both).
    let local = Server::start(
        &data,
        &[("RESEARCHER_TOKEN", RESEARCHER), ("SERVER_SECRET", SECRET)],
    );
    let on_local = sessions_and_manifests(&local.url).await;
    drop(local);
    let vars = s3_vars(&bucket);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let empty = tempfile::tempdir().unwrap();
    let remote = Server::start(empty.path(), &vars);
    let on_s3 = sessions_and_manifests(&remote.url).await;
    drop(remote);
    let sessions = on_local["list"]["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 26, "{}", on_local["list"]);
    assert!(
        sessions
            .iter()
            .any(|s| s["session_id"] == "old-07" && s["error"]["code"] == "manifest_corrupt")
    );
    assert_eq!(on_local, on_s3);
}

/// `GET /api/sessions`, then every session's manifest (status and body), as JSON.
async fn sessions_and_manifests(base: &str) -> Value {
    let http = reqwest::Client::new();
    let list: Value = http
        .get(format!("{base}/api/sessions"))
        .bearer_auth(RESEARCHER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut manifests = serde_json::Map::new();
    for s in list["sessions"].as_array().unwrap() {
        let id = s["session_id"].as_str().unwrap();
        let res = http
            .get(format!("{base}/api/sessions/{id}"))
            .bearer_auth(RESEARCHER)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        manifests.insert(
            id.to_owned(),
            serde_json::json!({"status": status, "body": body}),
        );
    }
    serde_json::json!({"list": list, "manifests": manifests})
}

/// Two sessions made by the new server on the folder (events, a recording with its
/// content-type sidecar), so the folder holds both layouts.
async fn add_sessions_of_the_new_server(data: &Path) {
    let server = Server::start(
        data,
        &[("RESEARCHER_TOKEN", RESEARCHER), ("SERVER_SECRET", SECRET)],
    );
    let http = reqwest::Client::new();
    for participant in ["N001", "N002"] {
        let created: Value = http
            .post(format!("{}/api/sessions", server.url))
            .json(&serde_json::json!({"metadata": {"study": "migration", "participant": participant}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["session_id"].as_str().unwrap();
        let token = created["token"].as_str().unwrap();
        let res = http
            .patch(format!("{}/api/sessions/{id}/metadata", server.url))
            .bearer_auth(token)
            .json(&serde_json::json!({"metadata": {"classroom": "4b"}}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
        let (ct, body) = common::multipart(&[
            ("problem_id", None, b"p1"),
            ("recording", Some("r.webm"), &noise(50_000, 3, true)),
        ]);
        let res = http
            .post(format!("{}/sessions/{id}/recording", server.url))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    }
}

/// The expected objects after the new server added its sessions: every file under
/// `sessions/` of those sessions, with the content type its sidecar or extension gives.
fn rescan_expected(
    data: &Path,
    mut expected: BTreeMap<String, (String, u64, Option<String>)>,
) -> BTreeMap<String, (String, u64, Option<String>)> {
    for (rel, bytes) in common::tree(data) {
        if expected.contains_key(&rel) || !rel.starts_with("sessions/") {
            continue;
        }
        let path = PathBuf::from(&rel);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') || rel.contains("/.") || rel.contains(' ') {
            continue;
        }
        if !rel.is_ascii() {
            continue;
        }
        let sidecar = data
            .join(path.parent().unwrap())
            .join(format!(".{name}.meta.json"));
        let ct = match std::fs::read(&sidecar) {
            Ok(json) => serde_json::from_slice::<Value>(&json).unwrap()["content_type"]
                .as_str()
                .map(str::to_owned),
            Err(_) if name.ends_with(".json") => Some("application/json".to_owned()),
            Err(_) if name.ends_with(".webm") => Some("video/webm".to_owned()),
            Err(_) => None,
        };
        expected.insert(rel, (sha256(&bytes), bytes.len() as u64, ct));
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_source_removes_only_verified_files_and_keeps_what_was_not_copied() {
    let bucket = GarageNode::shared().bucket();
    // Under a key prefix, as S3_KEY_PREFIX puts it.
    let s3 = bucket.storage_with(S3Settings {
        key_prefix: "study-1/".into(),
        ..bucket.settings()
    });
    let migrate = |data: &Path, bucket: &GarageBucket, args: &[&str]| {
        Run::from(
            migrate_command_with(data, bucket, args, &[("S3_KEY_PREFIX", "study-1")])
                .output()
                .unwrap(),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write(&data, "sessions/a/session.json", b"{\"a\": 1}");
    write(
        &data,
        "sessions/a/recording_p1_1733241600000.webm",
        &noise(20 * MIB, 1, true),
    );
    write(
        &data,
        "sessions/a/.recording_p1_1733241600000.webm.meta.json",
        br#"{"content_type":"video/webm;codecs=vp8,opus"}"#,
    );
    write(&data, "sessions/b/session.json", b"{\"b\": 2}");
    write(&data, "sessions/b/odd name.txt", b"kept");
    write(&data, ".server-secret", SECRET.as_bytes());
    write(
        &data,
        ".uploads/0123456789abcdef0123456789abcdef/meta.json",
        b"{}",
    );

    // A copy made earlier by this command is skipped, read back, and its source deleted.
    let first = migrate(&data, &bucket, &[]);
    assert_eq!(first.code, Some(3), "{}", first.explain());
    assert_eq!(first.count("copied:"), 3);
    write(&data, "sessions/c/session.json", b"{\"c\": 3}");

    let dry = migrate(&data, &bucket, &["--delete-source", "--dry-run"]);
    assert!(
        dry.stdout.contains(
            "would copy sessions/c/session.json  (8 B), then delete the source once verified"
        ),
        "{}",
        dry.explain()
    );
    assert!(data.join("sessions/a/session.json").exists());

    let run = migrate(&data, &bucket, &["--delete-source"]);
    assert_eq!(run.code, Some(3), "{}", run.explain());
    assert_eq!(run.count("copied:"), 1, "{}", run.explain());
    assert_eq!(run.count("skipped:"), 3, "{}", run.explain());
    assert!(
        run.stdout.contains(
            "skipped  sessions/a/recording_p1_1733241600000.webm  (20.00 MiB, identical, read back)"
        ),
        "{}",
        run.explain()
    );
    assert_eq!(run.count("deleted:"), 4, "{}", run.explain());
    let left: Vec<String> = common::tree(&data).into_keys().collect();
    assert_eq!(
        left,
        [
            ".server-secret",
            ".uploads/0123456789abcdef0123456789abcdef/meta.json",
            "sessions/b/odd name.txt",
        ],
        "only what was not copied (and the backend's own files) stays"
    );
    assert!(
        !data.join("sessions/a").exists(),
        "emptied folders are removed"
    );
    assert!(!data.join("sessions/c").exists());
    let stored: Vec<String> = bucket_state(&s3).await.into_keys().collect();
    assert_eq!(
        stored,
        [
            "study-1/sessions/a/recording_p1_1733241600000.webm",
            "study-1/sessions/a/session.json",
            "study-1/sessions/b/session.json",
            "study-1/sessions/c/session.json",
        ],
        "everything under the key prefix, nothing else"
    );
    for (key, want) in [
        ("sessions/a/session.json", b"{\"a\": 1}".to_vec()),
        ("sessions/c/session.json", b"{\"c\": 3}".to_vec()),
        (
            "sessions/a/recording_p1_1733241600000.webm",
            noise(20 * MIB, 1, true),
        ),
    ] {
        assert_eq!(sha256(&read_all(&s3, key).await), sha256(&want), "{key}");
    }
    assert_eq!(
        s3.content_type(&ObjectKey::parse("sessions/a/recording_p1_1733241600000.webm").unwrap())
            .await
            .unwrap()
            .as_deref(),
        Some("video/webm;codecs=vp8,opus")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_this_command_did_not_write_are_compared_and_never_replaced_unless_asked() {
    let bucket = GarageNode::shared().bucket();
    let s3 = bucket.storage();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write(&data, "sessions/s/same.txt", b"same bytes");
    write(&data, "sessions/s/different.txt", b"the folder's version");
    write(&data, "sessions/s/changed.txt", b"first version");
    // Another tool's copies: no checksum metadata.
    let key = |k: &str| ObjectKey::parse(k).unwrap();
    s3.put(
        &key("sessions/s/same.txt"),
        Bytes::from_static(b"same bytes"),
    )
    .await
    .unwrap();
    s3.put(
        &key("sessions/s/different.txt"),
        Bytes::from_static(b"the bucket's version, longer"),
    )
    .await
    .unwrap();

    let run = migrate(&data, &bucket, &[]);
    assert_eq!(run.code, Some(1), "{}", run.explain());
    assert_eq!(run.keys("copied"), ["sessions/s/changed.txt"]);
    assert!(
        run.stdout
            .contains("skipped  sessions/s/same.txt  (10 B, identical, read back)"),
        "{}",
        run.explain()
    );
    let failed = run
        .stdout
        .lines()
        .find(|l| l.starts_with("FAILED   sessions/s/different.txt"))
        .unwrap_or_else(|| panic!("{}", run.explain()));
    assert!(failed.contains("--overwrite"), "{failed}");
    assert_eq!(
        read_all(&s3, "sessions/s/different.txt").await,
        b"the bucket's version, longer"
    );

    // A file that changed after it was migrated replaces this command's own copy.
    write(&data, "sessions/s/changed.txt", b"second version");
    let run = migrate(&data, &bucket, &["--overwrite"]);
    assert_eq!(run.code, Some(0), "{}", run.explain());
    assert_eq!(
        run.keys("replaced"),
        ["sessions/s/changed.txt", "sessions/s/different.txt"]
    );
    assert_eq!(
        read_all(&s3, "sessions/s/different.txt").await,
        b"the folder's version"
    );
    assert_eq!(
        read_all(&s3, "sessions/s/changed.txt").await,
        b"second version"
    );

    // Without --overwrite, the changed file still replaces this command's own copy.
    write(&data, "sessions/s/changed.txt", b"third version");
    let run = migrate(&data, &bucket, &[]);
    assert_eq!(run.code, Some(0), "{}", run.explain());
    assert_eq!(run.keys("replaced"), ["sessions/s/changed.txt"]);
    assert_eq!(run.count("skipped:"), 2);

    // An object whose bytes no longer match its checksum metadata (damaged in the
    // store, or uploaded by a run killed before its read-back) passes for identical on
    // metadata alone; --verify-existing reads it back, finds it and replaces it.
    let good = b"third version";
    s3.client()
        .put_object()
        .bucket(s3.bucket())
        .key("sessions/s/changed.txt")
        .metadata("sha256", sha256(good))
        .body(b"THIRD VERSION".to_vec().into())
        .send()
        .await
        .unwrap();
    let trusting = migrate(&data, &bucket, &[]);
    assert_eq!(trusting.count("skipped:"), 3, "{}", trusting.explain());
    let audit = migrate(&data, &bucket, &["--dry-run", "--verify-existing"]);
    assert_eq!(audit.code, Some(0), "{}", audit.explain());
    assert_eq!(audit.keys("would replace"), ["sessions/s/changed.txt"]);
    assert!(
        audit
            .stdout
            .contains("would skip sessions/s/same.txt  (10 B, identical, read back)"),
        "{}",
        audit.explain()
    );
    assert_eq!(
        read_all(&s3, "sessions/s/changed.txt").await,
        b"THIRD VERSION"
    );
    let repair = migrate(&data, &bucket, &["--verify-existing"]);
    assert_eq!(repair.code, Some(0), "{}", repair.explain());
    assert_eq!(repair.keys("replaced"), ["sessions/s/changed.txt"]);
    assert_eq!(read_all(&s3, "sessions/s/changed.txt").await, good);
}

#[test]
fn configuration_and_arguments_are_checked_before_anything_is_read() {
    let run = |args: &[&str], vars: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_recorder-server"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(vars.iter().copied())
            .arg("migrate")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--from", "local:data"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("STORAGE_BACKEND=s3"), "{err}");
    let (code, err) = run(&["--from", "data"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("local:PATH"), "{err}");
    let s3 = [
        ("STORAGE_BACKEND", "s3"),
        ("S3_BUCKET", "recordings"),
        ("S3_ENDPOINT", "http://127.0.0.1:9"),
        ("S3_REGION", "garage"),
        ("AWS_ACCESS_KEY_ID", "k"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("RESEARCHER_TOKEN", RESEARCHER),
        ("SERVER_SECRET", SECRET),
    ];
    let (code, err) = run(&["--from", "local:/no/such/folder"], &s3);
    assert_eq!(code, Some(2));
    assert!(err.contains("/no/such/folder"), "{err}");
    let (code, err) = run(&["--from", "local:.", "--jobs", "0"], &s3);
    assert_eq!(code, Some(2));
    assert!(err.contains("--jobs"), "{err}");
}
