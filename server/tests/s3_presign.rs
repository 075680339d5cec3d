//! Presigned S3 URLs, offline: a fixed clock, made-up credentials, no network. What
//! the browser is handed must name the right host and path, sign exactly the headers it
//! will send, expire when we say, and carry no checksum parameters (which browsers do
//! not send and some stores refuse). `s3_garage.rs` sends such URLs to a real store.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use server::storage::s3::{S3Settings, S3Storage};
use server::storage::{PresignOp, Storage, StorageError};
use shared::ObjectKey;
use shared::api::PresignedRequest;
use time::OffsetDateTime;

/// 2024-12-03T16:00:00Z.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_733_241_600)
}

const TTL: Duration = Duration::from_secs(900);

fn key() -> ObjectKey {
    ObjectKey::parse("sessions/s1/recording_p1_1733241600000.webm").unwrap()
}

fn garage_like() -> S3Settings {
    S3Settings {
        key_prefix: "study".into(),
        ..S3Settings::custom("recordings", "http://127.0.0.1:3900", "garage")
    }
}

fn storage(settings: S3Settings) -> S3Storage {
    S3Storage::with_credentials(settings, "GKTESTACCESSKEY", "test-secret-key").unwrap()
}

/// The URL without its query, and the query's raw (still encoded) parameters.
fn split(url: &str) -> (&str, BTreeMap<&str, &str>) {
    let (base, query) = url.split_once('?').expect("a presigned URL has a query");
    let params = query
        .split('&')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .collect();
    (base, params)
}

fn assert_no_checksums(req: &PresignedRequest) {
    let url = req.url.to_ascii_lowercase();
    assert!(!url.contains("x-amz-checksum"), "{url}");
    assert!(!url.contains("x-amz-sdk-checksum"), "{url}");
    assert!(!url.contains("checksum"), "{url}");
    for name in req.headers.keys() {
        assert!(!name.contains("checksum"), "{name}");
    }
}

async fn presign(s: &S3Storage, op: PresignOp, ttl: Duration) -> PresignedRequest {
    s.presign(&op, now(), ttl).await.unwrap()
}

#[tokio::test]
async fn a_put_url_is_path_style_and_signs_content_type_and_length() {
    let s = storage(garage_like());
    let op = PresignOp::Put {
        key: key(),
        content_type: "video/webm;codecs=vp8,opus".into(),
        size: 1234,
    };
    let req = presign(&s, op, TTL).await;
    assert_eq!(req.method, "PUT");
    let (base, q) = split(&req.url);
    assert_eq!(
        base,
        "http://127.0.0.1:3900/recordings/study/sessions/s1/recording_p1_1733241600000.webm"
    );
    assert_eq!(q["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
    assert_eq!(
        q["X-Amz-Credential"],
        "GKTESTACCESSKEY%2F20241203%2Fgarage%2Fs3%2Faws4_request"
    );
    // Valid from a minute before `now`, for clock skew, until `now + ttl`.
    assert_eq!(q["X-Amz-Date"], "20241203T155900Z");
    assert_eq!(q["X-Amz-Expires"], "960");
    assert_eq!(
        q["X-Amz-SignedHeaders"],
        "content-length%3Bcontent-type%3Bhost"
    );
    assert_eq!(q["X-Amz-Signature"].len(), 64);
    assert_eq!(
        req.headers,
        BTreeMap::from([(
            "content-type".to_owned(),
            "video/webm;codecs=vp8,opus".to_owned()
        )])
    );
    assert_eq!(
        req.expires_at,
        OffsetDateTime::from_unix_timestamp(1_733_241_600 + 900).unwrap()
    );
    assert_no_checksums(&req);
}

#[tokio::test]
async fn a_part_url_names_the_upload_and_signs_only_the_length() {
    let s = storage(garage_like());
    let op = PresignOp::UploadPart {
        key: key(),
        upload_id: "upload-7".into(),
        part_number: 3,
        size: 5 * 1024 * 1024,
    };
    let req = presign(&s, op, TTL).await;
    assert_eq!(req.method, "PUT");
    let (_, q) = split(&req.url);
    assert_eq!(q["partNumber"], "3");
    assert_eq!(q["uploadId"], "upload-7");
    assert_eq!(q["X-Amz-SignedHeaders"], "content-length%3Bhost");
    assert!(req.headers.is_empty(), "{:?}", req.headers);
    assert_no_checksums(&req);
}

#[tokio::test]
async fn get_urls_sign_only_the_host_and_downloads_name_the_file() {
    let s = storage(garage_like());
    let play = presign(
        &s,
        PresignOp::Get {
            key: key(),
            download_as: None,
        },
        TTL,
    )
    .await;
    assert_eq!(play.method, "GET");
    let (_, q) = split(&play.url);
    assert_eq!(q["X-Amz-SignedHeaders"], "host");
    assert!(!q.contains_key("response-content-disposition"));
    assert!(play.headers.is_empty());
    assert_no_checksums(&play);

    let op = PresignOp::Get {
        key: key(),
        download_as: Some("p7 problem 1.webm".into()),
    };
    let download = presign(&s, op, TTL).await;
    let (_, q) = split(&download.url);
    assert_eq!(
        q["response-content-disposition"],
        "attachment%3B%20filename%3D%22p7%20problem%201.webm%22"
    );
    assert_eq!(q["response-content-type"], "video%2Fwebm");
    assert!(download.headers.is_empty());
    assert_no_checksums(&download);
}

#[tokio::test]
async fn urls_are_signed_for_the_public_endpoint_when_one_is_set() {
    let s = storage(S3Settings {
        public_endpoint: Some("https://media.study.example.org/".into()),
        ..garage_like()
    });
    let req = presign(
        &s,
        PresignOp::Get {
            key: key(),
            download_as: None,
        },
        TTL,
    )
    .await;
    assert!(
        req.url
            .starts_with("https://media.study.example.org/recordings/study/sessions/s1/"),
        "{}",
        req.url
    );
    // The location names the bucket, not an endpoint.
    assert_eq!(
        s.location(&key()),
        "s3://recordings/study/sessions/s1/recording_p1_1733241600000.webm"
    );
}

#[tokio::test]
async fn aws_urls_are_virtual_hosted_in_the_buckets_region() {
    let s = storage(S3Settings {
        bucket: "recordings".into(),
        region: Some("eu-west-1".into()),
        ..S3Settings::default()
    });
    let req = presign(
        &s,
        PresignOp::Get {
            key: key(),
            download_as: None,
        },
        TTL,
    )
    .await;
    let (base, q) = split(&req.url);
    assert_eq!(
        base,
        "https://recordings.s3.eu-west-1.amazonaws.com/sessions/s1/recording_p1_1733241600000.webm"
    );
    assert!(q["X-Amz-Credential"].contains("%2Feu-west-1%2Fs3%2F"));
}

#[tokio::test]
async fn validity_is_clamped_between_a_minute_and_seven_days() {
    let s = storage(garage_like());
    let get = || PresignOp::Get {
        key: key(),
        download_as: None,
    };
    let short = presign(&s, get(), Duration::from_secs(1)).await;
    assert_eq!(split(&short.url).1["X-Amz-Expires"], "120");
    assert_eq!(
        short.expires_at,
        OffsetDateTime::from_unix_timestamp(1_733_241_600 + 60).unwrap()
    );
    let long = presign(&s, get(), Duration::from_secs(30 * 24 * 3600)).await;
    assert_eq!(split(&long.url).1["X-Amz-Expires"], "604800");
    assert_eq!(
        long.expires_at,
        OffsetDateTime::from_unix_timestamp(1_733_241_600 - 60 + 604_800).unwrap()
    );
}

#[tokio::test]
async fn signing_is_a_function_of_the_clock_and_the_request() {
    let s = storage(garage_like());
    let op = || PresignOp::UploadPart {
        key: key(),
        upload_id: "u".into(),
        part_number: 1,
        size: 10,
    };
    let a = presign(&s, op(), TTL).await;
    let b = presign(&s, op(), TTL).await;
    assert_eq!(a, b);
    let later = s
        .presign(&op(), now() + Duration::from_secs(1), TTL)
        .await
        .unwrap();
    assert_ne!(
        split(&a.url).1["X-Amz-Signature"],
        split(&later.url).1["X-Amz-Signature"]
    );
    let bigger = PresignOp::UploadPart {
        key: key(),
        upload_id: "u".into(),
        part_number: 1,
        size: 11,
    };
    let bigger = presign(&s, bigger, TTL).await;
    assert_ne!(
        split(&a.url).1["X-Amz-Signature"],
        split(&bigger.url).1["X-Amz-Signature"]
    );
}

#[tokio::test]
async fn what_cannot_be_signed_safely_is_refused() {
    let s = storage(garage_like());
    let bad = [
        PresignOp::Put {
            key: key(),
            content_type: "video/webm\r\nx-evil: 1".into(),
            size: 1,
        },
        PresignOp::UploadPart {
            key: key(),
            upload_id: "u".into(),
            part_number: 0,
            size: 1,
        },
        PresignOp::UploadPart {
            key: key(),
            upload_id: "u".into(),
            part_number: 10_001,
            size: 1,
        },
        PresignOp::Get {
            key: key(),
            download_as: Some("a\"b.webm".into()),
        },
    ];
    for op in bad {
        let err = s.presign(&op, now(), TTL).await.unwrap_err();
        assert!(matches!(err, StorageError::Presign(_)), "{op:?}: {err}");
    }
}
