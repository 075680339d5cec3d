//! The S3 backend against a real Garage node: what the conformance suite cannot say
//! about S3 in particular (key prefixes, streaming into multipart uploads, the rules we
//! enforce because Garage does not, presigned URLs as a browser uses them, CORS, the
//! start-up check and the setup command).
//!
//! Needs `garage` (`scripts/dev setup`). One node serves the whole binary; each test
//! has its own bucket.

mod garage;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use garage::{GarageBucket, GarageNode};
use server::s3_setup;
use server::storage::s3::{S3Settings, S3Storage};
use server::storage::{ByteStream, PartInfo, PresignOp, Storage, StorageError};
use shared::ObjectKey;
use shared::api::PresignedRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;
const TTL: Duration = Duration::from_secs(600);

fn key(text: &str) -> ObjectKey {
    ObjectKey::parse(text).unwrap()
}

fn bucket() -> GarageBucket {
    GarageNode::shared().bucket()
}

/// Deterministic bytes that differ at every offset of interest.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// A stream of `data` in `chunk`-byte pieces.
fn chunked(data: Vec<u8>, chunk: usize) -> ByteStream {
    let pieces: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(pieces).boxed()
}

async fn read_all(body: ByteStream) -> Vec<u8> {
    body.map(|c| c.unwrap().to_vec()).concat().await
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Sends a presigned request as a browser would: the method, the URL, exactly the
/// headers given, and the body.
async fn send(req: &PresignedRequest, body: Vec<u8>) -> reqwest::Response {
    let mut builder = http().request(req.method.parse().unwrap(), &req.url);
    for (name, value) in &req.headers {
        builder = builder.header(name, value);
    }
    builder.body(body).send().await.unwrap()
}

#[tokio::test]
async fn keys_get_the_prefix_on_the_way_in_and_lose_it_on_the_way_out() {
    let b = bucket();
    let prefixed = b.storage_with(S3Settings {
        key_prefix: "/study-a/".into(),
        ..b.settings()
    });
    let bare = b.storage();
    let k = key("sessions/s1/session.json");
    prefixed.put(&k, Bytes::from_static(b"{}")).await.unwrap();
    bare.put(
        &key("sessions/outside/session.json"),
        Bytes::from_static(b"{}"),
    )
    .await
    .unwrap();

    assert_eq!(
        prefixed.location(&k),
        format!("s3://{}/study-a/sessions/s1/session.json", b.bucket)
    );
    assert_eq!(
        bare.get(&key("study-a/sessions/s1/session.json"))
            .await
            .unwrap(),
        Bytes::from_static(b"{}")
    );
    let listed: Vec<String> = prefixed
        .list("sessions/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key.to_string())
        .collect();
    assert_eq!(listed, ["sessions/s1/session.json"]);
    assert_eq!(prefixed.list_dirs("sessions/").await.unwrap(), ["s1"]);
    assert_eq!(bare.list_dirs("").await.unwrap(), ["sessions", "study-a"]);
}

#[tokio::test]
async fn missing_objects_and_uploads_are_reported_as_such() {
    let s = bucket().storage();
    let k = key("sessions/none/recording_p1_1.webm");
    assert!(matches!(
        s.get(&k).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        s.head(&k).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        s.content_type(&k).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        s.get_range(&k, Some(0..1)).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        s.list_parts(&k, "no-such-upload").await,
        Err(StorageError::UploadNotFound { .. })
    ));
    let body = chunked(vec![0; 10], 10);
    assert!(matches!(
        s.put_part(&k, "no-such-upload", 1, body, 10).await,
        Err(StorageError::UploadNotFound { .. })
    ));
    s.delete(&k).await.unwrap();
    s.abort_multipart(&k, "no-such-upload").await.unwrap();
}

#[tokio::test]
async fn ranges_are_cut_at_the_end_and_refused_past_it_with_the_size() {
    let s = bucket().storage();
    let k = key("sessions/r/recording_p1_1.webm");
    let data = pattern(1000, 7);
    s.put(&k, Bytes::from(data.clone())).await.unwrap();

    let got = s.get_range(&k, Some(10..20)).await.unwrap();
    assert_eq!((got.range.clone(), got.meta.size), (10..20, 1000));
    assert_eq!(read_all(got.body).await, &data[10..20]);

    let tail = s.get_range(&k, Some(990..5000)).await.unwrap();
    assert_eq!(tail.range, 990..1000);
    assert_eq!(read_all(tail.body).await, &data[990..]);

    let whole = s.get_range(&k, None).await.unwrap();
    assert_eq!((whole.range.clone(), whole.meta.size), (0..1000, 1000));
    assert_eq!(read_all(whole.body).await, data);

    for bad in [1000..1001, 5000..6000, 5..5] {
        match s.get_range(&k, Some(bad.clone())).await {
            Err(StorageError::RangeNotSatisfiable { size }) => assert_eq!(size, 1000, "{bad:?}"),
            Err(other) => panic!("{bad:?}: {other}"),
            Ok(_) => panic!("{bad:?} was served"),
        }
    }
}

#[tokio::test]
async fn a_long_stream_goes_up_as_a_multipart_upload_with_its_content_type() {
    let s = bucket().storage();
    let k = key("sessions/m/recording_p1_1.webm");
    let data = pattern(19 * MIB + 123, 3);
    let meta = s
        .put_stream(
            &k,
            chunked(data.clone(), 64 * 1024),
            "video/webm",
            100 * MIB as u64,
        )
        .await
        .unwrap();
    assert_eq!(meta.size, data.len() as u64);
    // A multipart ETag names its part count: 8 + 8 + 3 MiB.
    assert!(meta.etag.unwrap().trim_matches('"').ends_with("-3"));
    assert_eq!(s.head(&k).await.unwrap().size, data.len() as u64);
    assert_eq!(
        s.content_type(&k).await.unwrap().as_deref(),
        Some("video/webm")
    );
    let mid = s
        .get_range(&k, Some(8 * MIB as u64 - 5..8 * MIB as u64 + 5))
        .await
        .unwrap();
    assert_eq!(read_all(mid.body).await, &data[8 * MIB - 5..8 * MIB + 5]);
    assert!(s.list_uploads("").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_short_stream_is_one_object_and_plain_puts_report_no_content_type() {
    let s = bucket().storage();
    let k = key("sessions/t/recording_p1_1.ogg");
    let meta = s
        .put_stream(&k, chunked(b"OggS tiny".to_vec(), 3), "audio/ogg", 1000)
        .await
        .unwrap();
    assert_eq!(meta.size, 9);
    assert_eq!(s.get(&k).await.unwrap(), Bytes::from_static(b"OggS tiny"));
    assert_eq!(
        s.content_type(&k).await.unwrap().as_deref(),
        Some("audio/ogg")
    );

    let manifest = key("sessions/t/session.json");
    s.put(&manifest, Bytes::from_static(b"{}")).await.unwrap();
    assert_eq!(s.content_type(&manifest).await.unwrap(), None);
}

#[tokio::test]
async fn a_stream_over_its_limit_is_refused_and_leaves_nothing_behind() {
    let s = bucket().storage();
    let k = key("sessions/big/recording_p1_1.webm");
    let err = s
        .put_stream(
            &k,
            chunked(pattern(12 * MIB, 1), MIB),
            "video/webm",
            10 * MIB as u64,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::TooLarge { limit } if limit == 10 * MIB as u64),
        "{err}"
    );
    assert!(matches!(
        s.head(&k).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(s.list_uploads("").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_stream_that_fails_midway_is_aborted() {
    let s = bucket().storage();
    let k = key("sessions/broken/recording_p1_1.webm");
    let good =
        futures::stream::iter((0..9).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![1u8; MIB]))));
    let bad = futures::stream::once(async { Err(std::io::Error::other("client went away")) });
    let err = s
        .put_stream(&k, good.chain(bad).boxed(), "video/webm", u64::MAX)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("client went away"), "{err}");
    assert!(matches!(
        s.head(&k).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(s.list_uploads("").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_small_part_before_the_last_is_refused_although_garage_would_take_it() {
    let s = bucket().storage();
    let k = key("sessions/small/recording_p1_1.webm");
    let upload = s.create_multipart(&k, "video/webm").await.unwrap();
    for n in 1..=2 {
        s.put_part(&k, &upload, n, chunked(vec![n as u8; 1024], 1024), 1024)
            .await
            .unwrap();
    }
    let parts = s.list_parts(&k, &upload).await.unwrap();
    assert_eq!(parts.len(), 2);
    let err = s.complete_multipart(&k, &upload, &parts).await.unwrap_err();
    assert!(
        matches!(&err, StorageError::InvalidPart(m) if m.contains("at least")),
        "{err}"
    );
    assert!(matches!(
        s.head(&k).await,
        Err(StorageError::NotFound { .. })
    ));
    // The upload is still there to be fixed or aborted.
    assert_eq!(s.list_uploads("sessions/small/").await.unwrap().len(), 1);
    s.abort_multipart(&k, &upload).await.unwrap();
    assert!(s.list_uploads("").await.unwrap().is_empty());
}

#[tokio::test]
async fn complete_believes_the_bucket_not_the_caller() {
    let s = bucket().storage();
    let k = key("sessions/lie/recording_p1_1.webm");
    let upload = s.create_multipart(&k, "video/webm").await.unwrap();
    let part = s
        .put_part(&k, &upload, 1, chunked(pattern(1024, 9), 100), 1024)
        .await
        .unwrap();
    let claims = [
        // A 1 KiB first part claimed as 5 MiB, so that a second part would pass.
        vec![
            PartInfo {
                size: shared::MIN_PART_SIZE,
                ..part.clone()
            },
            PartInfo {
                part_number: 2,
                size: 10,
                etag: part.etag.clone(),
            },
        ],
        vec![PartInfo {
            etag: "\"0123\"".into(),
            ..part.clone()
        }],
        vec![
            PartInfo {
                part_number: 1,
                size: 1024,
                etag: part.etag.clone(),
            },
            PartInfo {
                part_number: 2,
                size: 1,
                etag: "\"x\"".into(),
            },
        ],
    ];
    for claim in claims {
        let err = s.complete_multipart(&k, &upload, &claim).await.unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidPart(_)),
            "{claim:?}: {err}"
        );
    }
    let meta = s.complete_multipart(&k, &upload, &[part]).await.unwrap();
    assert_eq!(meta.size, 1024);
    assert_eq!(s.get(&k).await.unwrap(), pattern(1024, 9));
    assert_eq!(
        s.content_type(&k).await.unwrap().as_deref(),
        Some("video/webm")
    );
}

#[tokio::test]
async fn a_part_body_longer_or_shorter_than_announced_stores_no_part() {
    let s = bucket().storage();
    let k = key("sessions/exact/recording_p1_1.webm");
    let upload = s.create_multipart(&k, "video/webm").await.unwrap();
    let long = s
        .put_part(&k, &upload, 1, chunked(vec![1; 1001], 100), 1000)
        .await;
    assert!(
        matches!(long, Err(StorageError::TooLarge { limit: 1000 })),
        "{long:?}"
    );
    let short = s
        .put_part(&k, &upload, 1, chunked(vec![1; 999], 100), 1000)
        .await;
    assert!(
        matches!(
            short,
            Err(StorageError::Truncated {
                got: 999,
                expected: 1000
            })
        ),
        "{short:?}"
    );
    assert!(s.list_parts(&k, &upload).await.unwrap().is_empty());
    let ok = s
        .put_part(&k, &upload, 1, chunked(vec![1; 1000], 100), 1000)
        .await
        .unwrap();
    assert_eq!(s.list_parts(&k, &upload).await.unwrap(), [ok]);
    s.abort_multipart(&k, &upload).await.unwrap();
}

#[tokio::test]
async fn listings_page_past_a_thousand_entries() {
    let s = bucket().storage();
    let n = 1003;
    futures::stream::iter(0..n)
        .map(|i| {
            let s = s.clone();
            async move {
                let k = key(&format!("sessions/s{i:04}/session.json"));
                s.put(&k, Bytes::from_static(b"{}")).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let listed = s.list("sessions/").await.unwrap();
    assert_eq!(listed.len(), n);
    assert!(listed.windows(2).all(|w| w[0].key < w[1].key));
    let dirs = s.list_dirs("sessions/").await.unwrap();
    assert_eq!(dirs.len(), n);
    assert_eq!(dirs[n - 1], format!("s{:04}", n - 1));
}

#[tokio::test]
async fn uploads_in_progress_are_listed_by_prefix() {
    let s = bucket().storage();
    let a = key("sessions/a/recording_p1_1.webm");
    let b = key("sessions/b/recording_p1_2.webm");
    let ua = s.create_multipart(&a, "video/webm").await.unwrap();
    let ub = s.create_multipart(&b, "video/webm").await.unwrap();
    let all = s.list_uploads("sessions/").await.unwrap();
    assert_eq!(
        all.iter()
            .map(|u| (u.key.to_string(), u.upload_id.clone()))
            .collect::<Vec<_>>(),
        [(a.to_string(), ua), (b.to_string(), ub.clone())]
    );
    assert!(all.iter().all(|u| u.initiated.is_some()));
    let only_b = s.list_uploads("sessions/b/").await.unwrap();
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].upload_id, ub);
}

/// A TCP proxy to `target` that passes everything through, except that it drops the
/// answer to the first CompleteMultipartUpload (`POST ...?uploadId=`): the store
/// completes the upload, the client sees the connection close. Returns the proxy's
/// endpoint and whether it has dropped an answer yet.
async fn proxy_losing_one_complete_answer(target: &str) -> (String, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let target = target.trim_start_matches("http://").to_owned();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let server = tokio::net::TcpStream::connect(&target).await.unwrap();
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = server.into_split();
            let armed = Arc::new(AtomicBool::new(false));
            let (arm, dropped) = (armed.clone(), flag.clone());
            let upstream = tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match client_rx.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let text = String::from_utf8_lossy(&buf[..n]);
                    if text.starts_with("POST ") && text.contains("uploadId=") {
                        arm.store(true, Ordering::SeqCst);
                    }
                    if server_tx.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match server_rx.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if armed.load(Ordering::SeqCst) && !dropped.swap(true, Ordering::SeqCst) {
                        break; // Lose this answer: close the client's connection.
                    }
                    if client_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                upstream.abort();
            });
        }
    });
    (endpoint, dropped)
}

#[tokio::test]
async fn a_complete_whose_answer_was_lost_still_completes() {
    let b = bucket();
    let (endpoint, dropped) = proxy_losing_one_complete_answer(&b.endpoint).await;
    let s = b.storage_with(S3Settings {
        endpoint: Some(endpoint),
        ..b.settings()
    });
    let k = key("sessions/lost/recording_p1_1.webm");
    let upload = s.create_multipart(&k, "video/webm").await.unwrap();
    let data = pattern(5 * MIB + 10, 6);
    for (n, piece) in [&data[..5 * MIB], &data[5 * MIB..]].into_iter().enumerate() {
        let body = chunked(piece.to_vec(), MIB);
        s.put_part(&k, &upload, n as u32 + 1, body, piece.len() as u64)
            .await
            .unwrap();
    }
    let parts = s.list_parts(&k, &upload).await.unwrap();
    let meta = s.complete_multipart(&k, &upload, &parts).await.unwrap();
    assert!(dropped.load(Ordering::SeqCst), "the proxy lost an answer");
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(s.get(&k).await.unwrap(), data);
    // A second complete of the same upload is still refused.
    assert!(matches!(
        s.complete_multipart(&k, &upload, &parts).await,
        Err(StorageError::UploadNotFound { .. })
    ));
}

// --- Presigned URLs, sent as a browser sends them -------------------------------------

fn put_op(k: &ObjectKey, content_type: &str, size: usize) -> PresignOp {
    PresignOp::Put {
        key: k.clone(),
        content_type: content_type.into(),
        size: size as u64,
    }
}

#[tokio::test]
async fn a_presigned_put_is_accepted_exactly_as_signed() {
    let s = bucket().storage();
    let k = key("sessions/p/recording_p1_1.webm");
    let body = pattern(5000, 2);
    let req = s
        .presign(
            &put_op(&k, "video/webm", body.len()),
            SystemTime::now(),
            TTL,
        )
        .await
        .unwrap();
    let answer = send(&req, body.clone()).await;
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    assert_eq!(s.get(&k).await.unwrap(), body);
    assert_eq!(
        s.content_type(&k).await.unwrap().as_deref(),
        Some("video/webm")
    );
}

#[tokio::test]
async fn a_presigned_put_refuses_another_content_type_a_tampered_signature_expiry_and_size() {
    let s = bucket().storage();
    let k = key("sessions/p/recording_p1_2.webm");
    let body = pattern(5000, 4);
    let now = SystemTime::now();
    let req = s
        .presign(&put_op(&k, "video/webm", body.len()), now, TTL)
        .await
        .unwrap();

    let mut other_type = req.clone();
    other_type
        .headers
        .insert("content-type".into(), "text/html".into());
    assert_eq!(send(&other_type, body.clone()).await.status(), 403);

    let mut tampered = req.clone();
    let at = tampered.url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if &tampered.url[at..at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    tampered.url.replace_range(at..at + 1, flipped);
    assert_eq!(send(&tampered, body.clone()).await.status(), 403);

    let old = s
        .presign(
            &put_op(&k, "video/webm", body.len()),
            now - Duration::from_secs(3600),
            TTL,
        )
        .await
        .unwrap();
    assert!(old.expires_at < time::OffsetDateTime::now_utc());
    // AWS answers 403 "Request has expired"; Garage 400 "Date is too old".
    let expired = send(&old, body.clone()).await;
    assert!(
        matches!(expired.status().as_u16(), 400 | 403),
        "{}",
        expired.status()
    );
    assert!(expired.text().await.unwrap().contains("Date is too old"));

    let mut longer = body.clone();
    longer.push(0);
    assert_eq!(send(&req, longer).await.status(), 403);
    assert_eq!(send(&req, body[..4999].to_vec()).await.status(), 403);

    assert!(matches!(
        s.head(&k).await,
        Err(StorageError::NotFound { .. })
    ));
    // And the untouched request still works.
    assert_eq!(send(&req, body).await.status(), 200);
}

#[tokio::test]
async fn a_presigned_get_serves_ranges_and_downloads() {
    let s = bucket().storage();
    let k = key("sessions/g/recording_p1_1.webm");
    let data = pattern(10_000, 5);
    s.put_stream(&k, chunked(data.clone(), 4096), "video/webm", u64::MAX)
        .await
        .unwrap();

    let play = s
        .presign(
            &PresignOp::Get {
                key: k.clone(),
                download_as: None,
            },
            SystemTime::now(),
            TTL,
        )
        .await
        .unwrap();
    assert!(play.headers.is_empty(), "{:?}", play.headers);
    let ranged = http()
        .get(&play.url)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(
        ranged.headers()["content-range"].to_str().unwrap(),
        "bytes 100-199/10000"
    );
    assert_eq!(
        ranged.headers()["content-type"].to_str().unwrap(),
        "video/webm"
    );
    assert_eq!(ranged.bytes().await.unwrap(), &data[100..200]);

    let download = s
        .presign(
            &PresignOp::Get {
                key: k.clone(),
                download_as: Some("participant-7.webm".into()),
            },
            SystemTime::now(),
            TTL,
        )
        .await
        .unwrap();
    let answer = http().get(&download.url).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers()["content-disposition"].to_str().unwrap(),
        "attachment; filename=\"participant-7.webm\""
    );
    assert_eq!(answer.bytes().await.unwrap(), data);
}

#[tokio::test]
async fn presigned_parts_uploaded_out_of_order_complete_into_the_recording() {
    let s = bucket().storage();
    let k = key("sessions/mp/recording_p1_1.webm");
    let upload = s.create_multipart(&k, "video/webm").await.unwrap();
    let sizes = [5 * MIB, 5 * MIB + 17, 1234];
    let bodies: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| pattern(*n, i as u8))
        .collect();
    let mut etags = BTreeMap::new();
    for n in [3u32, 1, 2] {
        let body = bodies[n as usize - 1].clone();
        let op = PresignOp::UploadPart {
            key: k.clone(),
            upload_id: upload.clone(),
            part_number: n,
            size: body.len() as u64,
        };
        let req = s.presign(&op, SystemTime::now(), TTL).await.unwrap();
        assert!(req.headers.is_empty(), "{:?}", req.headers);
        let answer = send(&req, body).await;
        assert_eq!(answer.status(), 200);
        etags.insert(n, answer.headers()["etag"].to_str().unwrap().to_owned());
    }
    let parts = s.list_parts(&k, &upload).await.unwrap();
    assert_eq!(
        parts.iter().map(|p| p.part_number).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for p in &parts {
        assert_eq!(
            p.etag.trim_matches('"'),
            etags[&p.part_number].trim_matches('"')
        );
        assert_eq!(p.size, sizes[p.part_number as usize - 1] as u64);
    }
    let meta = s.complete_multipart(&k, &upload, &parts).await.unwrap();
    assert_eq!(meta.size, sizes.iter().sum::<usize>() as u64);
    assert_eq!(s.get(&k).await.unwrap(), bodies.concat());
}

#[tokio::test]
async fn urls_are_signed_for_the_public_endpoint_and_work_there() {
    let b = bucket();
    // `localhost` is another name for the same node, as a proxy's name would be.
    let public = b.endpoint.replace("127.0.0.1", "localhost");
    let s = b.storage_with(S3Settings {
        public_endpoint: Some(public.clone()),
        ..b.settings()
    });
    let k = key("sessions/pub/recording_p1_1.webm");
    let req = s
        .presign(&put_op(&k, "video/webm", 3), SystemTime::now(), TTL)
        .await
        .unwrap();
    assert!(
        req.url.starts_with(&format!("{public}/{}/", b.bucket)),
        "{}",
        req.url
    );
    assert_eq!(send(&req, vec![1, 2, 3]).await.status(), 200);
    // The server's own calls still go to S3_ENDPOINT.
    assert_eq!(s.get(&k).await.unwrap(), vec![1, 2, 3]);
}

// --- The bucket set-up and the start-up check ------------------------------------------

const ORIGIN: &str = "http://127.0.0.1:18080";

async fn preflight(url: &str, origin: &str, method: &str) -> reqwest::Response {
    http()
        .request(reqwest::Method::OPTIONS, url)
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn setup_makes_the_bucket_answer_browsers_from_the_page_origin() {
    let s = bucket().storage();
    let origins = vec![ORIGIN.to_owned()];
    let before = s3_setup::self_check(&s, &origins).await;
    assert_eq!(before.problems.len(), 1, "{before:?}");
    assert!(before.problems[0].contains("no CORS rules"), "{before:?}");
    assert!(before.problems[0].contains("setup-s3"), "{before:?}");

    let done = s3_setup::apply(&s, &origins, 3).await.unwrap();
    assert!(done[0].contains("CORS rule"), "{done:?}");
    assert!(done[1].contains("lifecycle rule"), "{done:?}");
    // Applying again replaces our rules instead of piling them up.
    s3_setup::apply(&s, &origins, 3).await.unwrap();
    let after = s3_setup::self_check(&s, &origins).await;
    assert_eq!(after, s3_setup::CheckReport::default());
    let rules = s
        .client()
        .get_bucket_cors()
        .bucket(s.bucket())
        .send()
        .await
        .unwrap();
    assert_eq!(rules.cors_rules().len(), 1);

    let k = key("sessions/cors/recording_p1_1.webm");
    let req = s
        .presign(&put_op(&k, "video/webm", 4), SystemTime::now(), TTL)
        .await
        .unwrap();
    let allowed = preflight(&req.url, ORIGIN, "PUT").await;
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["access-control-allow-origin"], ORIGIN);
    // A preflight that is not a success fails the browser's request.
    let refused = preflight(&req.url, "http://evil.example", "PUT").await;
    assert_eq!(refused.status(), 403);

    // The real PUT from the page exposes the ETag the client must read.
    let mut builder = http().put(&req.url).header("origin", ORIGIN);
    for (name, value) in &req.headers {
        builder = builder.header(name, value);
    }
    let answer = builder.body(vec![1, 2, 3, 4]).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let exposed = answer.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.to_ascii_lowercase().contains("etag"), "{exposed}");
}

#[tokio::test]
async fn the_check_names_a_missing_origin_in_the_cors_rules() {
    let s = bucket().storage();
    s3_setup::apply(&s, &[ORIGIN.to_owned()], 3).await.unwrap();
    let report = s3_setup::self_check(
        &s,
        &[ORIGIN.to_owned(), "https://study.example.org".to_owned()],
    )
    .await;
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(
        report.problems[0].contains("https://study.example.org"),
        "{report:?}"
    );
}

#[tokio::test]
async fn the_check_says_which_setting_is_wrong() {
    let b = bucket();
    let check = |storage: S3Storage| async move {
        let report = s3_setup::self_check(&storage, &[ORIGIN.to_owned()]).await;
        assert_eq!(report.problems.len(), 1, "{report:?}");
        report.problems[0].clone()
    };

    let wrong_secret =
        S3Storage::with_credentials(b.settings(), &b.access_key_id, "0".repeat(64).as_str())
            .unwrap();
    let line = check(wrong_secret).await;
    assert!(line.starts_with("credentials:"), "{line}");

    let unknown_key =
        S3Storage::with_credentials(b.settings(), "GK0000000000000000000000", "x").unwrap();
    let line = check(unknown_key).await;
    assert!(line.starts_with("credentials:"), "{line}");

    let no_bucket = b.storage_with(S3Settings {
        bucket: "no-such-bucket".into(),
        ..b.settings()
    });
    let line = check(no_bucket).await;
    assert!(line.starts_with("S3_BUCKET:"), "{line}");

    let wrong_region = b.storage_with(S3Settings {
        region: Some("us-east-1".into()),
        ..b.settings()
    });
    let line = check(wrong_region).await;
    assert!(line.starts_with("S3_REGION:"), "{line}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let unreachable = b.storage_with(S3Settings {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..b.settings()
    });
    let line = check(unreachable).await;
    assert!(line.starts_with("S3_ENDPOINT:"), "{line}");
}
