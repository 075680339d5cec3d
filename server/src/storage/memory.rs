//! The in-memory backend, for tests: every object and upload lives in one
//! `Mutex<BTreeMap>`, and presigned URLs point at the server's own `/storage/...` routes,
//! exactly as with the local backend.
//!
//! It enforces the same rules as a real store (exact part sizes, the part sequence on
//! complete, ETags checked against the stored parts), so a test that passes here does not
//! pass only because the backend is lenient.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use shared::ObjectKey;
use shared::api::PresignedRequest;
use time::OffsetDateTime;

use super::{
    ByteStream, GetResult, ObjectMeta, PartInfo, PresignOp, Result, Storage, StorageError,
    UploadInfo, check_part_sequence,
};
use crate::signing::UrlSigner;

/// A store held in memory; cheap to create, gone when dropped.
#[derive(Debug)]
pub struct MemoryStorage {
    signer: Arc<UrlSigner>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<ObjectKey, Object>,
    uploads: BTreeMap<String, Upload>,
}

#[derive(Debug, Clone)]
struct Object {
    bytes: Bytes,
    content_type: Option<String>,
    last_modified: OffsetDateTime,
    etag: String,
}

impl Object {
    fn meta(&self, key: &ObjectKey) -> ObjectMeta {
        ObjectMeta {
            key: key.clone(),
            size: self.bytes.len() as u64,
            last_modified: Some(self.last_modified),
            etag: Some(self.etag.clone()),
        }
    }
}

#[derive(Debug)]
struct Upload {
    key: ObjectKey,
    content_type: String,
    initiated: OffsetDateTime,
    parts: BTreeMap<u32, (Bytes, String)>,
}

impl MemoryStorage {
    /// An empty store whose presigned URLs are signed by `signer`.
    pub fn new(signer: impl Into<Arc<UrlSigner>>) -> Self {
        Self {
            signer: signer.into(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated (every
        // update is a single insert or remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self, key: &ObjectKey, bytes: Bytes, content_type: Option<String>) -> ObjectMeta {
        let object = Object {
            etag: etag_of(&bytes),
            bytes,
            content_type,
            last_modified: OffsetDateTime::now_utc(),
        };
        let meta = object.meta(key);
        self.state().objects.insert(key.clone(), object);
        meta
    }

    fn object(&self, key: &ObjectKey) -> Result<Object> {
        self.state()
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| not_found(key))
    }
}

/// The ETag of a body: hex of the first 16 bytes of its SHA-256.
fn etag_of(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..16])
}

fn not_found(key: &ObjectKey) -> StorageError {
    StorageError::NotFound {
        key: key.to_string(),
    }
}

fn upload_not_found(key: &ObjectKey, upload_id: &str) -> StorageError {
    StorageError::UploadNotFound {
        key: key.to_string(),
        upload_id: upload_id.to_owned(),
    }
}

/// Reads a whole stream, refusing it once more than `limit` bytes arrived.
async fn collect(mut body: ByteStream, limit: u64) -> Result<Bytes> {
    let mut out = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(StorageError::backend)?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(StorageError::TooLarge { limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// Strips the quotes S3 puts around ETags, so that quoted and bare ETags compare equal.
fn bare_etag(etag: &str) -> &str {
    etag.trim_matches('"')
}

#[async_trait]
impl Storage for MemoryStorage {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn location(&self, key: &ObjectKey) -> String {
        format!("memory://{key}")
    }

    async fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<ObjectMeta> {
        Ok(self.store(key, bytes, None))
    }

    async fn put_stream(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        content_type: &str,
        max_size: u64,
    ) -> Result<ObjectMeta> {
        let bytes = collect(body, max_size).await?;
        Ok(self.store(key, bytes, Some(content_type.to_owned())))
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        Ok(self.object(key)?.bytes)
    }

    async fn get_range(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<GetResult> {
        let object = self.object(key)?;
        let range = resolve_range(range, object.bytes.len() as u64)?;
        let body = object.bytes.slice(range.start as usize..range.end as usize);
        Ok(GetResult {
            meta: object.meta(key),
            range,
            body: futures::stream::once(async move { Ok(body) }).boxed(),
        })
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        Ok(self.object(key)?.meta(key))
    }

    async fn content_type(&self, key: &ObjectKey) -> Result<Option<String>> {
        Ok(self.object(key)?.content_type)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let state = self.state();
        Ok(state
            .objects
            .iter()
            .filter(|(key, _)| key.as_str().starts_with(prefix))
            .map(|(key, object)| object.meta(key))
            .collect())
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        check_dir_prefix(prefix)?;
        let state = self.state();
        // A set, not a dedup of the sorted keys: `a-b/x` sorts before `a/x`, yet the
        // folder `a` sorts before `a-b`.
        let dirs: BTreeSet<String> = state
            .objects
            .keys()
            .filter_map(|key| key.as_str().strip_prefix(prefix))
            .filter_map(|rest| rest.split_once('/').map(|(dir, _)| dir.to_owned()))
            .collect();
        Ok(dirs.into_iter().collect())
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.state().objects.remove(key);
        Ok(())
    }

    async fn create_multipart(&self, key: &ObjectKey, content_type: &str) -> Result<String> {
        let upload_id = format!("{:032x}", rand::random::<u128>());
        self.state().uploads.insert(
            upload_id.clone(),
            Upload {
                key: key.clone(),
                content_type: content_type.to_owned(),
                initiated: OffsetDateTime::now_utc(),
                parts: BTreeMap::new(),
            },
        );
        Ok(upload_id)
    }

    async fn put_part(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        part_number: u32,
        body: ByteStream,
        size: u64,
    ) -> Result<PartInfo> {
        check_part_request(part_number, size)?;
        // Refuse early for an unknown upload, before reading the body.
        self.list_parts(key, upload_id).await?;
        let bytes = collect(body, size).await?;
        if (bytes.len() as u64) < size {
            return Err(StorageError::Truncated {
                got: bytes.len() as u64,
                expected: size,
            });
        }
        let etag = etag_of(&bytes);
        let mut state = self.state();
        let upload = state
            .uploads
            .get_mut(upload_id)
            .filter(|u| &u.key == key)
            .ok_or_else(|| upload_not_found(key, upload_id))?;
        upload.parts.insert(part_number, (bytes, etag.clone()));
        Ok(PartInfo {
            part_number,
            size,
            etag,
        })
    }

    async fn list_parts(&self, key: &ObjectKey, upload_id: &str) -> Result<Vec<PartInfo>> {
        let state = self.state();
        let upload = state
            .uploads
            .get(upload_id)
            .filter(|u| &u.key == key)
            .ok_or_else(|| upload_not_found(key, upload_id))?;
        Ok(upload
            .parts
            .iter()
            .map(|(&part_number, (bytes, etag))| PartInfo {
                part_number,
                size: bytes.len() as u64,
                etag: etag.clone(),
            })
            .collect())
    }

    async fn complete_multipart(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        parts: &[PartInfo],
    ) -> Result<ObjectMeta> {
        check_part_sequence(parts)?;
        let (bytes, content_type) = {
            let mut state = self.state();
            let upload = state
                .uploads
                .get(upload_id)
                .filter(|u| &u.key == key)
                .ok_or_else(|| upload_not_found(key, upload_id))?;
            let mut out = BytesMut::new();
            for given in parts {
                let Some((bytes, etag)) = upload.parts.get(&given.part_number) else {
                    return Err(StorageError::InvalidPart(format!(
                        "part {} was never uploaded",
                        given.part_number
                    )));
                };
                if bytes.len() as u64 != given.size || bare_etag(&given.etag) != etag {
                    return Err(StorageError::InvalidPart(format!(
                        "part {} does not match the stored part (size {}, ETag {etag})",
                        given.part_number,
                        bytes.len()
                    )));
                }
                out.extend_from_slice(bytes);
            }
            let content_type = upload.content_type.clone();
            state.uploads.remove(upload_id);
            (out.freeze(), content_type)
        };
        Ok(self.store(key, bytes, Some(content_type)))
    }

    async fn abort_multipart(&self, key: &ObjectKey, upload_id: &str) -> Result<()> {
        let mut state = self.state();
        if state.uploads.get(upload_id).is_some_and(|u| &u.key == key) {
            state.uploads.remove(upload_id);
        }
        Ok(())
    }

    async fn list_uploads(&self, prefix: &str) -> Result<Vec<UploadInfo>> {
        let state = self.state();
        let mut uploads: Vec<UploadInfo> = state
            .uploads
            .iter()
            .filter(|(_, u)| u.key.as_str().starts_with(prefix))
            .map(|(id, u)| UploadInfo {
                key: u.key.clone(),
                upload_id: id.clone(),
                initiated: Some(u.initiated),
            })
            .collect();
        uploads.sort_by(|a, b| (&a.key, a.initiated).cmp(&(&b.key, b.initiated)));
        Ok(uploads)
    }

    async fn presign(
        &self,
        op: &PresignOp,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<PresignedRequest> {
        check_presign(op)?;
        Ok(self.signer.sign(op, now, ttl))
    }
}

// Rules the self-hosted backends (this one and the local one) share.

/// The byte range a `get_range` call serves of an object of `size` bytes: the whole
/// object for `None`, a range cut at the end, or [`StorageError::RangeNotSatisfiable`]
/// for an empty range or one starting at or past the end.
pub(crate) fn resolve_range(range: Option<Range<u64>>, size: u64) -> Result<Range<u64>> {
    match range {
        None => Ok(0..size),
        Some(r) if r.start >= size || r.start >= r.end => {
            Err(StorageError::RangeNotSatisfiable { size })
        }
        Some(r) => Ok(r.start..r.end.min(size)),
    }
}

/// Refuses a `list_dirs` prefix that is neither empty nor ends in `/`.
pub(crate) fn check_dir_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.ends_with('/') {
        Ok(())
    } else {
        Err(StorageError::InvalidKey {
            key: prefix.to_owned(),
            reason: "a folder prefix must be empty or end in '/'".to_owned(),
        })
    }
}

/// Refuses a part number or a part size outside the S3 limits.
pub(crate) fn check_part_request(part_number: u32, size: u64) -> Result<()> {
    if !(1..=shared::MAX_PARTS).contains(&part_number) {
        return Err(StorageError::InvalidPart(format!(
            "part number {part_number} is outside 1..={}",
            shared::MAX_PARTS
        )));
    }
    if size > shared::MAX_PART_SIZE {
        return Err(StorageError::InvalidPart(format!(
            "a part of {size} bytes is larger than the {} bytes allowed",
            shared::MAX_PART_SIZE
        )));
    }
    Ok(())
}

/// Refuses what a self-signed URL cannot carry safely: a part out of range, a content
/// type or download name that would not survive as an HTTP header value.
pub(crate) fn check_presign(op: &PresignOp) -> Result<()> {
    let header_safe = |s: &str| !s.is_empty() && s.bytes().all(|b| (0x20..0x7f).contains(&b));
    match op {
        PresignOp::Put { content_type, .. } if !header_safe(content_type) => {
            Err(StorageError::Presign(format!(
                "content type {content_type:?} is not printable ASCII"
            )))
        }
        PresignOp::UploadPart {
            part_number, size, ..
        } => check_part_request(*part_number, *size)
            .map_err(|e| StorageError::Presign(e.to_string())),
        PresignOp::Get {
            download_as: Some(name),
            ..
        } if !header_safe(name) || name.contains(['"', '\\']) => Err(StorageError::Presign(
            format!("download name {name:?} must be printable ASCII without quotes or backslashes"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::Secret;

    fn store() -> Arc<dyn Storage> {
        Arc::new(MemoryStorage::new(UrlSigner::new(
            Secret::new(vec![3u8; 32]).unwrap(),
            "http://127.0.0.1:1",
        )))
    }

    fn stream(bytes: Vec<u8>) -> ByteStream {
        futures::stream::once(async move { Ok(Bytes::from(bytes)) }).boxed()
    }

    #[tokio::test]
    async fn a_completed_upload_joins_its_parts_and_keeps_its_content_type() {
        let s = store();
        let key = ObjectKey::parse("sessions/a/r.webm").unwrap();
        let id = s.create_multipart(&key, "video/webm").await.unwrap();
        let big = vec![1u8; shared::MIN_PART_SIZE as usize];
        let p2 = s
            .put_part(&key, &id, 2, stream(vec![2, 3]), 2)
            .await
            .unwrap();
        let p1 = s
            .put_part(&key, &id, 1, stream(big.clone()), big.len() as u64)
            .await
            .unwrap();
        assert_eq!(
            s.list_parts(&key, &id).await.unwrap(),
            vec![p1.clone(), p2.clone()]
        );
        let meta = s.complete_multipart(&key, &id, &[p1, p2]).await.unwrap();
        assert_eq!(meta.size, big.len() as u64 + 2);
        assert_eq!(s.get(&key).await.unwrap().len() as u64, meta.size);
        assert_eq!(
            s.content_type(&key).await.unwrap().as_deref(),
            Some("video/webm")
        );
        assert!(matches!(
            s.list_parts(&key, &id).await,
            Err(StorageError::UploadNotFound { .. })
        ));
        assert_eq!(s.location(&key), "memory://sessions/a/r.webm");
    }

    #[tokio::test]
    async fn a_part_of_the_wrong_size_is_not_stored() {
        let s = store();
        let key = ObjectKey::parse("k").unwrap();
        let id = s.create_multipart(&key, "video/webm").await.unwrap();
        assert!(matches!(
            s.put_part(&key, &id, 1, stream(vec![0; 3]), 2).await,
            Err(StorageError::TooLarge { limit: 2 })
        ));
        assert!(matches!(
            s.put_part(&key, &id, 1, stream(vec![0; 1]), 2).await,
            Err(StorageError::Truncated {
                got: 1,
                expected: 2
            })
        ));
        assert!(s.list_parts(&key, &id).await.unwrap().is_empty());
    }
}
