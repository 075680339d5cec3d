//! The storage conformance suite: every guarantee the [`Storage`] trait documents,
//! checked through the trait alone, so that every backend (local, memory, S3 on Garage)
//! runs the same checks.
//!
//! Each check takes the store and works under a fresh random prefix, so checks can
//! share one store (one bucket) and run in any order. Use it either way:
//!
//! ```ignore
//! mod conformance;
//!
//! // One test per check, named after it (preferred: a failure names the guarantee).
//! mod on_my_backend {
//!     crate::conformance::suite!(my_backend().await);
//! }
//!
//! // Or everything in one test.
//! conformance::run_all(storage).await;
//! ```
//!
//! The expression given to `suite!` is evaluated inside each (async) test and must give
//! `(Arc<dyn Storage>, guard)`; the guard (a temporary folder, a Garage bucket) is kept
//! alive until the check ends.

#![allow(dead_code, unused_macros, unused_imports)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use server::storage::{ByteStream, PartInfo, PresignOp, Storage, StorageError};
use shared::ObjectKey;

/// One mebibyte.
pub const MIB: usize = 1024 * 1024;

/// The size of every part but the last.
pub const PART: usize = shared::MIN_PART_SIZE as usize;

/// Declares one `#[tokio::test]` per check; `$make` gives `(Arc<dyn Storage>, guard)`.
macro_rules! suite {
    ($make:expr) => {
        $crate::conformance::suite!(@checks $make;
            objects_round_trip,
            missing_objects_are_not_found,
            overwrites_replace_the_whole_object,
            empty_objects_are_objects,
            deletes_are_idempotent,
            listings_are_sorted_and_filtered_by_prefix,
            listings_show_only_objects,
            folders_are_listed_by_name_sorted,
            streams_keep_content_and_content_type,
            streams_over_their_limit_store_nothing,
            ranges_are_cut_at_the_end_and_refused_past_it,
            multipart_uploads_join_parts_in_order,
            parts_of_the_wrong_size_are_not_stored,
            completes_enforce_the_part_rules,
            completes_only_apply_to_their_own_key_and_once,
            aborts_remove_the_upload,
            uploads_are_listed_by_prefix,
            presigned_requests_carry_method_url_and_headers,
            the_old_apps_helpers_work,
        );
    };
    (@checks $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let (storage, _guard) = $make;
                let storage: std::sync::Arc<dyn server::storage::Storage> = storage;
                $crate::conformance::$check(&*storage).await;
            }
        )*
    };
}
pub(crate) use suite;

/// Runs every check, one after the other, on one store.
pub async fn run_all(storage: Arc<dyn Storage>) {
    let s = &*storage;
    objects_round_trip(s).await;
    missing_objects_are_not_found(s).await;
    overwrites_replace_the_whole_object(s).await;
    empty_objects_are_objects(s).await;
    deletes_are_idempotent(s).await;
    listings_are_sorted_and_filtered_by_prefix(s).await;
    listings_show_only_objects(s).await;
    folders_are_listed_by_name_sorted(s).await;
    streams_keep_content_and_content_type(s).await;
    streams_over_their_limit_store_nothing(s).await;
    ranges_are_cut_at_the_end_and_refused_past_it(s).await;
    multipart_uploads_join_parts_in_order(s).await;
    parts_of_the_wrong_size_are_not_stored(s).await;
    completes_enforce_the_part_rules(s).await;
    completes_only_apply_to_their_own_key_and_once(s).await;
    aborts_remove_the_upload(s).await;
    uploads_are_listed_by_prefix(s).await;
    presigned_requests_carry_method_url_and_headers(s).await;
    the_old_apps_helpers_work(s).await;
}

// ---------------------------------------------------------------------------------------
// Helpers.

/// A prefix no other check uses: `conformance/{random}/`.
pub fn fresh_prefix() -> String {
    format!("conformance/{:016x}/", rand::random::<u64>())
}

/// `{prefix}{rest}` as a key.
pub fn key(prefix: &str, rest: &str) -> ObjectKey {
    ObjectKey::parse(&format!("{prefix}{rest}")).unwrap()
}

/// Deterministic bytes that differ at every offset of interest.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[1] ^ seed)
        .collect()
}

/// A body in chunks of `chunk` bytes.
pub fn body(bytes: &[u8], chunk: usize) -> ByteStream {
    let chunks: Vec<Bytes> = bytes
        .chunks(chunk.max(1))
        .map(Bytes::copy_from_slice)
        .collect();
    futures::stream::iter(chunks.into_iter().map(Ok)).boxed()
}

/// Reads a whole stream.
pub async fn collect(mut stream: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

fn keys_of(metas: &[server::storage::ObjectMeta]) -> Vec<String> {
    metas.iter().map(|m| m.key.to_string()).collect()
}

fn rest_of<'a>(prefix: &str, keys: &'a [String]) -> Vec<&'a str> {
    keys.iter()
        .map(|k| k.strip_prefix(prefix).expect("listed under the prefix"))
        .collect()
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StorageError>) {
    assert!(
        matches!(result, Err(StorageError::NotFound { .. })),
        "expected NotFound, got {result:?}"
    );
}

#[track_caller]
fn assert_upload_not_found<T: std::fmt::Debug>(result: Result<T, StorageError>) {
    assert!(
        matches!(result, Err(StorageError::UploadNotFound { .. })),
        "expected UploadNotFound, got {result:?}"
    );
}

#[track_caller]
fn assert_invalid_part<T: std::fmt::Debug>(result: Result<T, StorageError>) {
    assert!(
        matches!(result, Err(StorageError::InvalidPart(_))),
        "expected InvalidPart, got {result:?}"
    );
}

/// Uploads one part from `bytes`.
async fn part(s: &dyn Storage, k: &ObjectKey, id: &str, n: u32, bytes: &[u8]) -> PartInfo {
    let info = s
        .put_part(k, id, n, body(bytes, 64 * 1024), bytes.len() as u64)
        .await
        .unwrap();
    assert_eq!((info.part_number, info.size), (n, bytes.len() as u64));
    assert!(!info.etag.is_empty());
    info
}

// ---------------------------------------------------------------------------------------
// Objects.

/// `put` stores bytes that `get`, `get_range`, `head` and `exists` give back.
pub async fn objects_round_trip(s: &dyn Storage) {
    let p = fresh_prefix();
    let k = key(&p, "sessions/s1/session.json");
    let bytes = Bytes::from_static(b"{\"id\":\"s1\"}");
    let put = s.put(&k, bytes.clone()).await.unwrap();
    assert_eq!(put.key, k);
    assert_eq!(put.size, bytes.len() as u64);
    assert_eq!(s.get(&k).await.unwrap(), bytes);
    let head = s.head(&k).await.unwrap();
    assert_eq!(
        (head.key.clone(), head.size),
        (k.clone(), bytes.len() as u64)
    );
    let whole = s.get_range(&k, None).await.unwrap();
    assert_eq!(whole.range, 0..bytes.len() as u64);
    assert_eq!(whole.meta.size, bytes.len() as u64);
    assert_eq!(collect(whole.body).await, bytes.to_vec());
    assert!(s.exists(&k).await.unwrap());
    assert!(s.location(&k).contains(k.as_str()), "{}", s.location(&k));
    assert!(!s.kind().is_empty());
}

/// Reading anything of a missing object is `NotFound`, including a key that is a
/// "folder" of other objects.
pub async fn missing_objects_are_not_found(s: &dyn Storage) {
    let p = fresh_prefix();
    let missing = key(&p, "nothing/here.webm");
    assert_not_found(s.get(&missing).await);
    assert_not_found(s.head(&missing).await);
    assert_not_found(s.get_range(&missing, None).await.map(|g| g.meta));
    assert_not_found(s.get_range(&missing, Some(0..1)).await.map(|g| g.meta));
    assert_not_found(s.content_type(&missing).await);
    assert!(!s.exists(&missing).await.unwrap());
    s.put(&key(&p, "folder/inside"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_not_found(s.get(&key(&p, "folder")).await);
    assert!(!s.exists(&key(&p, "folder")).await.unwrap());
}

/// A second `put` replaces the first entirely (a shorter body leaves no tail).
pub async fn overwrites_replace_the_whole_object(s: &dyn Storage) {
    let p = fresh_prefix();
    let k = key(&p, "a.json");
    s.put(&k, Bytes::from_static(b"a much longer first version"))
        .await
        .unwrap();
    let second = s.put(&k, Bytes::from_static(b"short")).await.unwrap();
    assert_eq!(second.size, 5);
    assert_eq!(s.get(&k).await.unwrap(), Bytes::from_static(b"short"));
    assert_eq!(s.head(&k).await.unwrap().size, 5);
    assert_eq!(s.list(&p).await.unwrap().len(), 1);
}

/// An empty object exists and reads back empty.
pub async fn empty_objects_are_objects(s: &dyn Storage) {
    let p = fresh_prefix();
    let k = key(&p, "empty");
    s.put(&k, Bytes::new()).await.unwrap();
    assert!(s.exists(&k).await.unwrap());
    assert_eq!(s.head(&k).await.unwrap().size, 0);
    assert!(s.get(&k).await.unwrap().is_empty());
    assert_eq!(keys_of(&s.list(&p).await.unwrap()), [k.to_string()]);
}

/// Deleting removes the object; deleting a missing object is not an error.
pub async fn deletes_are_idempotent(s: &dyn Storage) {
    let p = fresh_prefix();
    let k = key(&p, "x/y.json");
    s.put(&k, Bytes::from_static(b"1")).await.unwrap();
    s.delete(&k).await.unwrap();
    assert_not_found(s.get(&k).await);
    s.delete(&k).await.unwrap();
    s.delete(&key(&p, "never/was")).await.unwrap();
    assert!(s.list(&p).await.unwrap().is_empty());
}

/// `list` is recursive, sorted by key (bytewise), and a prefix is a plain string prefix.
pub async fn listings_are_sorted_and_filtered_by_prefix(s: &dyn Storage) {
    let p = fresh_prefix();
    for rest in ["b/2", "a/1", "a-b/3", "a/z/deep", "ab", "c"] {
        s.put(&key(&p, rest), Bytes::from(rest.as_bytes().to_vec()))
            .await
            .unwrap();
    }
    let all = s.list(&p).await.unwrap();
    let keys = keys_of(&all);
    assert_eq!(
        rest_of(&p, &keys),
        ["a-b/3", "a/1", "a/z/deep", "ab", "b/2", "c"]
    );
    for meta in &all {
        let rest = meta.key.as_str().strip_prefix(&p).unwrap();
        assert_eq!(meta.size, rest.len() as u64, "{rest}");
    }
    let keys = keys_of(&s.list(&format!("{p}a/")).await.unwrap());
    assert_eq!(rest_of(&p, &keys), ["a/1", "a/z/deep"]);
    let keys = keys_of(&s.list(&format!("{p}a")).await.unwrap());
    assert_eq!(rest_of(&p, &keys), ["a-b/3", "a/1", "a/z/deep", "ab"]);
    assert!(s.list(&format!("{p}nothing/")).await.unwrap().is_empty());
    assert!(s.list(&format!("{p}zz")).await.unwrap().is_empty());
}

/// Uploads in progress, refused streams and refused parts never show up as objects.
pub async fn listings_show_only_objects(s: &dyn Storage) {
    let p = fresh_prefix();
    let visible = key(&p, "s/session.json");
    s.put(&visible, Bytes::from_static(b"{}")).await.unwrap();
    let rec = key(&p, "s/rec.webm");
    let id = s.create_multipart(&rec, "video/webm").await.unwrap();
    part(s, &rec, &id, 1, b"some bytes").await;
    let refused = s
        .put_stream(
            &key(&p, "s/big.webm"),
            body(&[0; 100], 10),
            "video/webm",
            50,
        )
        .await;
    assert!(matches!(refused, Err(StorageError::TooLarge { limit: 50 })));
    assert_eq!(keys_of(&s.list(&p).await.unwrap()), [visible.to_string()]);
    assert_eq!(s.list_dirs(&p).await.unwrap(), ["s"]);
    s.abort_multipart(&rec, &id).await.unwrap();
}

/// `list_dirs` gives the immediate folder names under a prefix, sorted, each once.
pub async fn folders_are_listed_by_name_sorted(s: &dyn Storage) {
    let p = fresh_prefix();
    for rest in [
        "sessions/b/session.json",
        "sessions/a/x",
        "sessions/a/events/1.json",
        "sessions/a-b/x",
        "sessions/file",
        "other/y",
    ] {
        s.put(&key(&p, rest), Bytes::from_static(b"1"))
            .await
            .unwrap();
    }
    assert_eq!(
        s.list_dirs(&format!("{p}sessions/")).await.unwrap(),
        ["a", "a-b", "b"]
    );
    assert_eq!(s.list_dirs(&p).await.unwrap(), ["other", "sessions"]);
    assert_eq!(
        s.list_dirs(&format!("{p}sessions/a/")).await.unwrap(),
        ["events"]
    );
    assert!(
        s.list_dirs(&format!("{p}sessions/b/"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.list_dirs(&format!("{p}none/")).await.unwrap().is_empty());
    // A folder whose objects are all deleted is gone.
    s.delete(&key(&p, "other/y")).await.unwrap();
    assert_eq!(s.list_dirs(&p).await.unwrap(), ["sessions"]);
}

/// `put_stream` stores a body of many chunks (larger than one part) exactly, with its
/// content type.
pub async fn streams_keep_content_and_content_type(s: &dyn Storage) {
    let p = fresh_prefix();
    let k = key(&p, "s/recording_p1_1.webm");
    let bytes = pattern(PART + MIB + 17, 1);
    let meta = s
        .put_stream(
            &k,
            body(&bytes, 64 * 1024),
            "video/webm;codecs=vp8,opus",
            bytes.len() as u64,
        )
        .await
        .unwrap();
    assert_eq!(meta.size, bytes.len() as u64);
    assert_eq!(s.head(&k).await.unwrap().size, bytes.len() as u64);
    assert!(s.get(&k).await.unwrap() == bytes, "content differs");
    assert_eq!(
        s.content_type(&k).await.unwrap().as_deref(),
        Some("video/webm;codecs=vp8,opus")
    );
    // A body well under its limit is fine too.
    let small = key(&p, "s/small.ogg");
    s.put_stream(&small, body(b"OggS", 1), "audio/ogg", 1 << 30)
        .await
        .unwrap();
    assert_eq!(s.get(&small).await.unwrap(), Bytes::from_static(b"OggS"));
}

/// A stream over its limit is `TooLarge`, and nothing is stored or replaced.
pub async fn streams_over_their_limit_store_nothing(s: &dyn Storage) {
    let p = fresh_prefix();
    let k = key(&p, "r.webm");
    let result = s
        .put_stream(&k, body(&pattern(1000, 2), 100), "video/webm", 999)
        .await;
    assert!(
        matches!(result, Err(StorageError::TooLarge { limit: 999 })),
        "{result:?}"
    );
    assert!(!s.exists(&k).await.unwrap());
    assert!(s.list(&p).await.unwrap().is_empty());

    s.put_stream(&k, body(b"old", 3), "video/webm", 3)
        .await
        .unwrap();
    let result = s
        .put_stream(
            &k,
            body(&pattern(PART + 10, 3), MIB),
            "video/webm",
            PART as u64,
        )
        .await;
    assert!(
        matches!(result, Err(StorageError::TooLarge { .. })),
        "{result:?}"
    );
    assert_eq!(s.get(&k).await.unwrap(), Bytes::from_static(b"old"));
    assert_eq!(keys_of(&s.list(&p).await.unwrap()), [k.to_string()]);
    assert!(s.list_uploads(&p).await.unwrap().is_empty());
}

/// `get_range` gives exactly the bytes asked for, cut at the end; a range starting at
/// or past the end is `RangeNotSatisfiable` with the object's size.
pub async fn ranges_are_cut_at_the_end_and_refused_past_it(s: &dyn Storage) {
    let p = fresh_prefix();
    let k = key(&p, "r.webm");
    let bytes = pattern(1000, 4);
    s.put(&k, Bytes::from(bytes.clone())).await.unwrap();
    for (range, expected) in [
        (0..1, 0..1),
        (10..20, 10..20),
        (990..1000, 990..1000),
        (995..5000, 995..1000),
        (0..u64::MAX, 0..1000),
    ] {
        let got = s.get_range(&k, Some(range.clone())).await.unwrap();
        assert_eq!(got.range, expected, "{range:?}");
        assert_eq!(got.meta.size, 1000, "{range:?}");
        let body = collect(got.body).await;
        assert!(
            body == bytes[expected.start as usize..expected.end as usize],
            "{range:?}"
        );
    }
    for range in [1000..1001, 5000..6000] {
        let result = s.get_range(&k, Some(range.clone())).await.map(|g| g.range);
        assert!(
            matches!(
                result,
                Err(StorageError::RangeNotSatisfiable { size: 1000 })
            ),
            "{range:?}: {result:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Multipart uploads.

/// Parts sent out of order are listed sorted and completed in number order into one
/// object with the upload's content type; the upload then no longer exists.
pub async fn multipart_uploads_join_parts_in_order(s: &dyn Storage) {
    let p = fresh_prefix();
    let k = key(&p, "s/recording_p1_2.webm");
    let id = s
        .create_multipart(&k, "audio/webm;codecs=opus")
        .await
        .unwrap();
    let (one, two, three) = (pattern(PART, 5), pattern(PART + 3, 6), pattern(1234, 7));
    let p3 = part(s, &k, &id, 3, &three).await;
    let p1 = part(s, &k, &id, 1, &one).await;
    let p2 = part(s, &k, &id, 2, &two).await;
    let listed = s.list_parts(&k, &id).await.unwrap();
    assert_eq!(listed, [p1.clone(), p2.clone(), p3.clone()]);
    assert!(
        !s.exists(&k).await.unwrap(),
        "nothing is visible before complete"
    );

    let meta = s.complete_multipart(&k, &id, &listed).await.unwrap();
    let whole: Vec<u8> = [one, two, three].concat();
    assert_eq!(meta.size, whole.len() as u64);
    assert_eq!(meta.key, k);
    assert!(s.get(&k).await.unwrap() == whole, "content differs");
    assert_eq!(
        s.content_type(&k).await.unwrap().as_deref(),
        Some("audio/webm;codecs=opus")
    );
    // A range across the first part boundary.
    let across = s
        .get_range(&k, Some(PART as u64 - 5..PART as u64 + 5))
        .await
        .unwrap();
    assert!(collect(across.body).await == whole[PART - 5..PART + 5]);
    assert_upload_not_found(s.list_parts(&k, &id).await);
    assert!(s.list_uploads(&p).await.unwrap().is_empty());
}

/// A part body longer than its size is `TooLarge`, a shorter one `Truncated`, and
/// neither is stored; a part number can be sent again and replaces the old part.
pub async fn parts_of_the_wrong_size_are_not_stored(s: &dyn Storage) {
    let p = fresh_prefix();
    let k = key(&p, "r.webm");
    let id = s.create_multipart(&k, "video/webm").await.unwrap();
    let long = s.put_part(&k, &id, 1, body(&pattern(11, 8), 4), 10).await;
    assert!(
        matches!(long, Err(StorageError::TooLarge { limit: 10 })),
        "{long:?}"
    );
    let short = s.put_part(&k, &id, 1, body(&pattern(9, 8), 4), 10).await;
    assert!(
        matches!(
            short,
            Err(StorageError::Truncated {
                got: 9,
                expected: 10
            })
        ),
        "{short:?}"
    );
    assert!(s.list_parts(&k, &id).await.unwrap().is_empty());

    let first = part(s, &k, &id, 1, &pattern(10, 8)).await;
    let again = part(s, &k, &id, 1, &pattern(12, 9)).await;
    assert_ne!(first.etag, again.etag);
    assert_eq!(
        s.list_parts(&k, &id).await.unwrap(),
        [again.clone()].as_slice()
    );
    s.complete_multipart(&k, &id, &[again]).await.unwrap();
    assert!(s.get(&k).await.unwrap() == pattern(12, 9));
}

/// Complete refuses (with `InvalidPart`, storing nothing) a gap in the numbers, a
/// non-final part under the minimum size, an ETag or size that is not the stored one,
/// and a part never sent; the upload survives each refusal.
pub async fn completes_enforce_the_part_rules(s: &dyn Storage) {
    let p = fresh_prefix();
    let k = key(&p, "r.webm");
    let id = s.create_multipart(&k, "video/webm").await.unwrap();
    let forged_etag = "0123456789abcdef0123456789abcdef".to_owned();
    let small = part(s, &k, &id, 1, &pattern(100, 10)).await;
    let unsent = PartInfo {
        part_number: 2,
        size: 50,
        etag: forged_etag.clone(),
    };
    // Part 1 is under the minimum and is not the last.
    assert_invalid_part(
        s.complete_multipart(&k, &id, &[small.clone(), unsent.clone()])
            .await,
    );
    let big = part(s, &k, &id, 1, &pattern(PART, 13)).await;
    // Part 2 was never sent.
    assert_invalid_part(
        s.complete_multipart(&k, &id, &[big.clone(), unsent.clone()])
            .await,
    );
    let p2 = part(s, &k, &id, 2, &pattern(50, 11)).await;
    let refused: Vec<(&str, Vec<PartInfo>)> = vec![
        (
            "a gap",
            vec![
                big.clone(),
                PartInfo {
                    part_number: 3,
                    ..p2.clone()
                },
            ],
        ),
        ("not starting at 1", vec![p2.clone()]),
        ("no parts", vec![]),
        (
            "the ETag of the replaced part 1",
            vec![
                PartInfo {
                    etag: small.etag.clone(),
                    ..big.clone()
                },
                p2.clone(),
            ],
        ),
        (
            "a made-up ETag",
            vec![
                big.clone(),
                PartInfo {
                    etag: forged_etag.clone(),
                    ..p2.clone()
                },
            ],
        ),
        (
            "a wrong size",
            vec![
                big.clone(),
                PartInfo {
                    size: 49,
                    ..p2.clone()
                },
            ],
        ),
    ];
    for (what, parts) in refused {
        let result = s.complete_multipart(&k, &id, &parts).await;
        assert!(
            matches!(result, Err(StorageError::InvalidPart(_))),
            "{what}: expected InvalidPart, got {result:?}"
        );
    }
    assert!(!s.exists(&k).await.unwrap());

    // Still there, and completes with the right list.
    assert_eq!(
        s.list_parts(&k, &id).await.unwrap(),
        [big.clone(), p2.clone()]
    );
    let meta = s.complete_multipart(&k, &id, &[big, p2]).await.unwrap();
    assert_eq!(meta.size, PART as u64 + 50);
}

/// An upload completes only to the key it was made for, and only once.
pub async fn completes_only_apply_to_their_own_key_and_once(s: &dyn Storage) {
    let p = fresh_prefix();
    let k = key(&p, "mine.webm");
    let other = key(&p, "other.webm");
    let id = s.create_multipart(&k, "video/webm").await.unwrap();
    let only = part(s, &k, &id, 1, &pattern(10, 14)).await;
    assert_upload_not_found(
        s.complete_multipart(&other, &id, std::slice::from_ref(&only))
            .await,
    );
    assert_upload_not_found(s.list_parts(&other, &id).await);
    assert!(!s.exists(&other).await.unwrap());
    s.complete_multipart(&k, &id, std::slice::from_ref(&only))
        .await
        .unwrap();
    assert_upload_not_found(s.complete_multipart(&k, &id, &[only]).await);
    assert_upload_not_found(s.list_parts(&k, "0123456789abcdef0123456789abcdef").await);
}

/// Abort deletes the upload and its parts; aborting again is not an error.
pub async fn aborts_remove_the_upload(s: &dyn Storage) {
    let p = fresh_prefix();
    let k = key(&p, "r.webm");
    let id = s.create_multipart(&k, "video/webm").await.unwrap();
    let only = part(s, &k, &id, 1, &pattern(10, 15)).await;
    s.abort_multipart(&k, &id).await.unwrap();
    assert_upload_not_found(s.list_parts(&k, &id).await);
    assert_upload_not_found(s.complete_multipart(&k, &id, &[only]).await);
    let late = s.put_part(&k, &id, 2, body(b"late", 4), 4).await;
    assert!(late.is_err(), "a part for an aborted upload was accepted");
    s.abort_multipart(&k, &id).await.unwrap();
    assert!(!s.exists(&k).await.unwrap());
    assert!(s.list_uploads(&p).await.unwrap().is_empty());
    assert!(s.list(&p).await.unwrap().is_empty());
}

/// `list_uploads` shows the uploads in progress under a prefix, with their keys and
/// ids, and forgets them once completed or aborted.
pub async fn uploads_are_listed_by_prefix(s: &dyn Storage) {
    let p = fresh_prefix();
    let (a, b, c) = (
        key(&p, "s1/a.webm"),
        key(&p, "s1/b.webm"),
        key(&p, "s2/c.webm"),
    );
    let ia = s.create_multipart(&a, "video/webm").await.unwrap();
    let ib = s.create_multipart(&b, "video/webm").await.unwrap();
    let ic = s.create_multipart(&c, "video/webm").await.unwrap();
    assert!(ia != ib && ib != ic && ia != ic);
    let listed: Vec<(String, String)> = s
        .list_uploads(&format!("{p}s1/"))
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.key.to_string(), u.upload_id))
        .collect();
    assert_eq!(
        listed,
        [(a.to_string(), ia.clone()), (b.to_string(), ib.clone())]
    );
    let all = s.list_uploads(&p).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().any(|u| u.key == c && u.upload_id == ic));
    s.abort_multipart(&a, &ia).await.unwrap();
    let only = part(s, &b, &ib, 1, b"x").await;
    s.complete_multipart(&b, &ib, &[only]).await.unwrap();
    let left: Vec<String> = s
        .list_uploads(&p)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.upload_id)
        .collect();
    assert_eq!(left, std::slice::from_ref(&ic));
    s.abort_multipart(&c, &ic).await.unwrap();
}

/// Presigned requests name the right method, point at the key, carry the headers the
/// browser must send (the content type of a PUT) and expire after the ttl.
pub async fn presigned_requests_carry_method_url_and_headers(s: &dyn Storage) {
    let p = fresh_prefix();
    let k = key(&p, "s/r.webm");
    let now = SystemTime::now();
    let ttl = Duration::from_secs(900);
    let header = |req: &shared::api::PresignedRequest, name: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let expires = time::OffsetDateTime::from(now + ttl);
    let check_common = |req: &shared::api::PresignedRequest, method: &str| {
        assert_eq!(req.method, method);
        assert!(req.url.starts_with("http"), "{}", req.url);
        assert!(
            req.url.contains(k.as_str()),
            "{} does not name the key",
            req.url
        );
        let off = (req.expires_at - expires).whole_seconds().abs();
        assert!(
            off <= 60,
            "expires at {} instead of about {expires}",
            req.expires_at
        );
    };

    let put = s
        .presign(
            &PresignOp::Put {
                key: k.clone(),
                content_type: "video/webm;codecs=vp8".into(),
                size: 1234,
            },
            now,
            ttl,
        )
        .await
        .unwrap();
    check_common(&put, "PUT");
    assert_eq!(
        header(&put, "content-type").as_deref(),
        Some("video/webm;codecs=vp8")
    );

    let id = s.create_multipart(&k, "video/webm").await.unwrap();
    let part = s
        .presign(
            &PresignOp::UploadPart {
                key: k.clone(),
                upload_id: id.clone(),
                part_number: 2,
                size: shared::MIN_PART_SIZE,
            },
            now,
            ttl,
        )
        .await
        .unwrap();
    check_common(&part, "PUT");
    assert_ne!(part.url, put.url);

    let get = s
        .presign(
            &PresignOp::Get {
                key: k.clone(),
                download_as: None,
            },
            now,
            ttl,
        )
        .await
        .unwrap();
    check_common(&get, "GET");
    let download = s
        .presign(
            &PresignOp::Get {
                key: k.clone(),
                download_as: Some("p1 recording.webm".into()),
            },
            now,
            ttl,
        )
        .await
        .unwrap();
    check_common(&download, "GET");
    assert_ne!(download.url, get.url);
    s.abort_multipart(&k, &id).await.unwrap();
}

/// The old app's helpers: `write_file` reports the location, `write_json` and
/// `read_json` round-trip, `read_file` and `exists` read.
pub async fn the_old_apps_helpers_work(s: &dyn Storage) {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Doc {
        id: String,
        n: u32,
    }
    let p = fresh_prefix();
    let file = key(&p, "sessions/s1/recording_p1_3.webm");
    let location = s
        .write_file(&file, Bytes::from_static(b"\x1a\x45\xdf\xa3"))
        .await
        .unwrap();
    assert_eq!(location, s.location(&file));
    assert!(location.ends_with(file.as_str()), "{location}");
    assert_eq!(
        s.read_file(&file).await.unwrap(),
        Bytes::from_static(b"\x1a\x45\xdf\xa3")
    );
    let json = key(&p, "sessions/s1/session.json");
    let doc = Doc {
        id: "s1".into(),
        n: 3,
    };
    assert_eq!(s.write_json(&json, &doc).await.unwrap(), s.location(&json));
    assert_eq!(s.read_json::<Doc>(&json).await.unwrap(), doc);
    assert!(s.exists(&json).await.unwrap());
    assert!(!s.exists(&key(&p, "sessions/s1/none.json")).await.unwrap());
    let not_json = s.read_json::<Doc>(&file).await;
    assert!(
        matches!(not_json, Err(StorageError::Backend { .. })),
        "{not_json:?}"
    );
    assert_not_found(
        s.read_json::<Doc>(&key(&p, "sessions/s2/session.json"))
            .await,
    );
}
