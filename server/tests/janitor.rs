//! Abandoned uploads, proven with the real binary on local storage and on a real Garage
//! bucket: cancel aborts; the janitor leaves uploads younger than its age alone, changes
//! nothing on a dry run, aborts old ones (recording `aborted`) or salvages them; salvage
//! turns the stored parts of a WebM into a playable recording marked `partial` with the
//! right size. Also the periodic janitor of `serve`, in process with a shifted clock.
//!
//! `cargo test -p server --test janitor`

mod common;
mod garage;
mod reliability;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reliability::{Api, Backend, MIB, Store, text, webm_file};
use reqwest::StatusCode;
use serde_json::{Value, json};
use server::storage::StorageError;
use shared::ObjectKey;

/// Opens an upload, stores `parts`, and walks away. The start answer and part specs.
async fn abandon(
    api: &Api,
    session: &str,
    token: &str,
    problem: &str,
    parts: &[Bytes],
) -> (Value, Vec<Value>) {
    let start = api.start_upload(session, token, problem).await;
    if parts.is_empty() {
        return (start, Vec::new());
    }
    let specs = api.upload_parts(session, token, &start, parts).await;
    (start, specs)
}

/// A WebM of `size` bytes cut into a 5 MiB part and the rest.
fn two_parts(size: usize, seed: u8) -> (Vec<u8>, Vec<Bytes>) {
    let file = webm_file(size, seed);
    let all = Bytes::from(file.clone());
    (file, vec![all.slice(..5 * MIB), all.slice(5 * MIB..)])
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn abandoned_uploads_are_salvaged_or_aborted(backend: Backend) {
    let store = Store::new(backend);
    let server = store.start(&[]);
    let api = Api::new(&server);
    let (session, token) = api.create_session().await;

    // Cancel already aborts: the parts are deleted and the entry says so.
    let (cancelled, _) = abandon(
        &api,
        &session,
        &token,
        "cancel",
        &[Bytes::from(webm_file(1000, 9))],
    )
    .await;
    let cancel_key = cancelled["key"].as_str().unwrap().to_owned();
    assert!(store.uploads().await.iter().any(|(k, _)| *k == cancel_key));
    let rec = cancelled["recording_id"].as_str().unwrap();
    let (status, v) = api
        .call(
            "POST",
            &format!("/api/sessions/{session}/uploads/{rec}/abort"),
            Some(&token),
            Some(json!({"upload": cancelled["upload"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["recording"]["status"], "aborted");
    assert!(store.uploads().await.is_empty(), "the parts are gone");
    let key = ObjectKey::parse(&cancel_key).unwrap();
    assert!(matches!(
        store.storage.head(&key).await,
        Err(StorageError::NotFound { .. })
    ));

    // Two browsers went away after two parts each.
    let (file_a, parts_a) = two_parts(5 * MIB + 300_000, 1);
    let (file_b, parts_b) = two_parts(5 * MIB + 1_234, 2);
    let (a, specs_a) = abandon(&api, &session, &token, "pa", &parts_a).await;
    let (b, _) = abandon(&api, &session, &token, "pb", &parts_b).await;
    let (a_id, b_id) = (
        a["recording_id"].as_str().unwrap(),
        b["recording_id"].as_str().unwrap(),
    );
    assert_eq!(api.entry(&session, a_id).await["status"], "uploading");
    let objects = store.objects().await;
    let uploads = store.uploads().await;
    assert_eq!(uploads.len(), 2);

    // Younger than the age: left alone.
    let out = store.cli(&["janitor", "--older-than", "24h", "--salvage"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("2 uploads in progress, 0 started more than 1d 0h ago"),
        "{}",
        text(&out)
    );
    assert_eq!(store.uploads().await, uploads);
    assert_eq!(store.objects().await, objects, "nothing changed");

    // A dry run says what it would do and changes nothing.
    let out = store.cli(&["janitor", "--older-than", "0s", "--salvage", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = stdout(&out);
    assert_eq!(
        said.matches("would salvage: keep parts 1-2").count(),
        2,
        "{said}"
    );
    assert!(said.contains("nothing was changed"), "{said}");
    assert_eq!(store.uploads().await, uploads);
    assert_eq!(store.objects().await, objects, "a dry run changes nothing");

    // `salvage` by name: the stored parts become a playable recording marked partial.
    let out = store.cli(&["salvage", "--session", &session, "--recording", a_id]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("salvaged as partial: parts 1-2 of 2 stored kept"),
        "{}",
        text(&out)
    );
    let entry = api.entry(&session, a_id).await;
    assert_eq!(entry["status"], "partial", "{entry}");
    assert_eq!(entry["size"], file_a.len(), "{entry}");
    assert!(
        entry["error"]
            .as_str()
            .unwrap()
            .contains("Salvaged from an abandoned upload"),
        "{entry}"
    );
    assert_eq!(
        api.download(&session, a_id).await,
        file_a,
        "playable, byte for byte"
    );
    // Salvaging it again is refused, and changes nothing.
    let out = store.cli(&["salvage", "--session", &session, "--recording", a_id]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is partial, not uploading"),
        "{}",
        text(&out)
    );

    // The janitor with --salvage takes the other one.
    let out = store.cli(&["janitor", "--older-than", "0s", "--salvage"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("1 started more than 0s ago: 1 salvaged, 0 aborted, 0 failed"),
        "{}",
        text(&out)
    );
    let entry = api.entry(&session, b_id).await;
    assert_eq!(
        (entry["status"].as_str(), entry["size"].as_u64()),
        (Some("partial"), Some(file_b.len() as u64)),
        "{entry}"
    );
    assert_eq!(api.download(&session, b_id).await, file_b);
    assert!(store.uploads().await.is_empty());

    // The browser of `a` comes back and completes with exactly what was salvaged: the
    // recording is complete after all. One that lists more than was kept is told the
    // upload ended, and the salvaged object stays.
    let mut more = specs_a.clone();
    more.push(json!({"part_number": 3, "size": 10}));
    let (status, v) = api.complete(&session, &token, &a, &more).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("upload_ended")),
        "{v}"
    );
    assert_eq!(api.download(&session, a_id).await, file_a);
    let (status, v) = api.complete(&session, &token, &a, &specs_a).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["recording"]["status"], "complete");
    assert_eq!(v["recording"]["size"], file_a.len());

    // Without --salvage the janitor aborts, and the manifest says why.
    let (c, _) = abandon(
        &api,
        &session,
        &token,
        "pc",
        &[Bytes::from(webm_file(1000, 3))],
    )
    .await;
    let c_id = c["recording_id"].as_str().unwrap();
    let out = store.cli(&["janitor", "--older-than", "0s"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("aborted (recorded as aborted)"),
        "{}",
        text(&out)
    );
    let entry = api.entry(&session, c_id).await;
    assert_eq!(entry["status"], "aborted", "{entry}");
    assert!(
        entry["error"]
            .as_str()
            .unwrap()
            .contains("aborted by the janitor"),
        "{entry}"
    );
    assert!(store.uploads().await.is_empty());
    let key = ObjectKey::parse(c["key"].as_str().unwrap()).unwrap();
    assert!(matches!(
        store.storage.head(&key).await,
        Err(StorageError::NotFound { .. })
    ));

    // An upload whose part 1 never arrived cannot be joined: aborted, with the reason.
    let (d, _) = abandon(&api, &session, &token, "pd", &[]).await;
    let d_id = d["recording_id"].as_str().unwrap();
    let out = store.cli(&["salvage", "--session", &session, "--recording", d_id]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let entry = api.entry(&session, d_id).await;
    assert_eq!(entry["status"], "aborted", "{entry}");
    assert!(
        entry["error"].as_str().unwrap().contains("holds no part"),
        "{entry}"
    );

    let m = api.manifest(&session).await;
    let statuses: Vec<(&str, &str)> = m["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["problem_id"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("cancel", "aborted"),
            ("pa", "complete"),
            ("pb", "partial"),
            ("pc", "aborted"),
            ("pd", "aborted"),
        ]
    );
    eprintln!("{backend:?}: 2 abandoned uploads salvaged (partial), 2 aborted, 1 cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_are_salvaged_or_aborted_on_local_storage() {
    abandoned_uploads_are_salvaged_or_aborted(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_are_salvaged_or_aborted_on_garage() {
    abandoned_uploads_are_salvaged_or_aborted(Backend::Garage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_janitor_salvages_uploads_past_its_age() {
    let h = common::Harness::new(&[]);
    let (session, token) = h.create_session().await;
    let start = h.start_upload(&session, &token, "p1").await;
    let file = webm_file(5 * MIB + 4_321, 4);
    h.put_parts(
        &session,
        &token,
        &start,
        &[file[..5 * MIB].to_vec(), file[5 * MIB..].to_vec()],
    )
    .await;
    let rec = start["recording_id"].as_str().unwrap().to_owned();
    let max_age = Duration::from_secs(86_400);
    let status = |m: Value| {
        m["recordings"][0]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let manifest = || async {
        h.call(
            "GET",
            &format!("/api/sessions/{session}"),
            Some(common::RESEARCHER),
            None,
        )
        .await
        .json()
    };

    // A janitor whose clock says the upload is a minute old does nothing.
    let young = server::janitor::spawn_periodic(
        h.state.storage.clone(),
        h.state.manifests.clone(),
        Duration::from_millis(50),
        max_age,
        Arc::new(|| SystemTime::now() + Duration::from_secs(60)),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    young.abort();
    assert_eq!(status(manifest().await), "uploading");

    // One whose clock is two days on salvages it, on its first tick.
    let old = server::janitor::spawn_periodic(
        h.state.storage.clone(),
        h.state.manifests.clone(),
        Duration::from_secs(3_600),
        max_age,
        Arc::new(|| SystemTime::now() + Duration::from_secs(2 * 86_400)),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while status(manifest().await) != "partial" {
        assert!(std::time::Instant::now() < deadline, "not salvaged in 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    old.abort();
    let m = manifest().await;
    assert_eq!(m["recordings"][0]["id"], rec);
    assert_eq!(m["recordings"][0]["size"], file.len());
    assert_eq!(
        std::fs::read(h.data().join(start["key"].as_str().unwrap())).unwrap(),
        file
    );
}

#[test]
fn serve_takes_the_janitor_settings_and_refuses_bad_ones_naming_the_variable() {
    let store = Store::new(Backend::Local);
    // Accepted: the server starts (the first janitor run happens at once, on an empty
    // store).
    let server = store.start(&[
        ("JANITOR_INTERVAL_SECS", "60"),
        ("JANITOR_MAX_AGE_SECS", "3600"),
    ]);
    assert!(server.url.starts_with("http://127.0.0.1:"));
    drop(server);
    for (var, value) in [
        ("JANITOR_INTERVAL_SECS", "5"),
        ("JANITOR_INTERVAL_SECS", "hourly"),
        ("JANITOR_MAX_AGE_SECS", "60"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_recorder-server"))
            .env_clear()
            .env("DATA_DIR", store.data())
            .env(var, value)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
}
