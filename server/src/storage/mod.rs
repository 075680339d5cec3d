//! The storage layer: one small async trait in `object_store`'s shape, with a backend
//! per file (`local.rs`, `memory.rs`, and `s3.rs` in production).
//!
//! Keys are [`ObjectKey`]s, validated before they get here, so a backend never sees a
//! key that could climb out of its root. Small objects travel as [`Bytes`], media as
//! [`ByteStream`]s so memory stays flat whatever the size.
//!
//! Presigning is part of the trait because every backend must be able to hand the
//! browser a URL to send bytes to: S3 signs for the bucket, the local and memory
//! backends sign URLs to the server's own `/storage/...` routes (see
//! [`crate::signing`]). A constraint a backend cannot sign is an error, never dropped.

use std::fmt::Debug;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Serialize, de::DeserializeOwned};
use shared::ObjectKey;
use shared::api::PresignedRequest;
use time::OffsetDateTime;

pub mod local;
pub mod memory;
pub mod part_signer;
pub mod s3;

/// A stream of body bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// What can go wrong in a backend.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object (or upload part) at that key.
    #[error("no object at {key}")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// The object exists and the call must not overwrite it.
    #[error("an object already exists at {key}")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// The key (or prefix) is not acceptable to this backend.
    #[error("invalid key {key}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// No multipart upload with that id exists for that key (never made, completed or
    /// aborted).
    #[error("no upload {upload_id} in progress for {key}")]
    UploadNotFound {
        /// The key.
        key: String,
        /// The upload id.
        upload_id: String,
    },
    /// Another request is completing this upload at this very moment (its object is
    /// being put in place), so it can be neither aborted nor completed now. Asking
    /// again in a moment gets the outcome.
    #[error("upload {upload_id} for {key} is being completed right now")]
    UploadBusy {
        /// The key.
        key: String,
        /// The upload id.
        upload_id: String,
    },
    /// The parts given to `complete_multipart` do not match what is stored, or a part
    /// number or size is out of range.
    #[error("invalid parts: {0}")]
    InvalidPart(String),
    /// A body was larger than its limit.
    #[error("body larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// A body ended before the size it announced.
    #[error("body ended after {got} of {expected} bytes")]
    Truncated {
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// The requested range lies outside the object.
    #[error("range not satisfiable for an object of {size} bytes")]
    RangeNotSatisfiable {
        /// The object's size.
        size: u64,
    },
    /// The backend cannot sign this request.
    #[error("cannot presign: {0}")]
    Presign(String),
    /// Anything else (I/O, network, the store's own errors).
    #[error("storage backend error: {source}")]
    Backend {
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StorageError {
    /// Wraps any backend error.
    pub fn backend(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StorageError::Backend {
            source: source.into(),
        }
    }
}

/// Result of storage calls.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// What a backend knows of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The key.
    pub key: ObjectKey,
    /// Size in bytes.
    pub size: u64,
    /// When it was last written, if the backend says.
    pub last_modified: Option<OffsetDateTime>,
    /// The backend's entity tag, if any.
    pub etag: Option<String>,
}

/// Part of an object, as read.
pub struct GetResult {
    /// The whole object's metadata (`size` is the full size).
    pub meta: ObjectMeta,
    /// The byte range this body covers.
    pub range: Range<u64>,
    /// The bytes of `range`.
    pub body: ByteStream,
}

/// One stored part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// 1-based part number.
    pub part_number: u32,
    /// Size in bytes.
    pub size: u64,
    /// The entity tag the store gave the part (needed to complete).
    pub etag: String,
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    /// The key it will complete to.
    pub key: ObjectKey,
    /// The store's upload id.
    pub upload_id: String,
    /// When it was created, if the store says.
    pub initiated: Option<OffsetDateTime>,
}

/// A request to presign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresignOp {
    /// A whole-object PUT of exactly `size` bytes with exactly this content type.
    Put {
        /// Where.
        key: ObjectKey,
        /// The `Content-Type` the browser must send.
        content_type: String,
        /// The exact body size.
        size: u64,
    },
    /// One part of a multipart upload, exactly `size` bytes.
    UploadPart {
        /// The upload's key.
        key: ObjectKey,
        /// The upload.
        upload_id: String,
        /// 1-based, at most 10,000.
        part_number: u32,
        /// The exact body size.
        size: u64,
    },
    /// A GET (Range works). With `download_as`, the answer carries
    /// `Content-Disposition: attachment; filename=...`.
    Get {
        /// What.
        key: ObjectKey,
        /// The file name offered for download, if a download is wanted.
        download_as: Option<String>,
    },
}

/// A storage backend. All methods are safe to call concurrently, from this and from
/// other processes sharing the same store.
#[async_trait]
pub trait Storage: Send + Sync + Debug + 'static {
    /// `local`, `memory` or `s3`.
    fn kind(&self) -> &'static str;

    /// Where an object with this key lives, as people and the old app say it: the local
    /// file path, or `s3://bucket/key`.
    fn location(&self, key: &ObjectKey) -> String;

    /// Stores `bytes` at `key`, replacing any object there. Atomic: readers see the
    /// old object or the new one, never a part. Parents are implicit.
    async fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<ObjectMeta>;

    /// Stores a stream at `key`, atomically as `put`, refusing with
    /// [`StorageError::TooLarge`] once more than `max_size` bytes arrive. On any error
    /// nothing is stored and nothing is left behind. Memory use does not grow with the
    /// body.
    async fn put_stream(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        content_type: &str,
        max_size: u64,
    ) -> Result<ObjectMeta>;

    /// The whole object. [`StorageError::NotFound`] if missing. For small objects only.
    async fn get(&self, key: &ObjectKey) -> Result<Bytes>;

    /// A byte range of the object (the whole object for `None`), streamed. A range
    /// reaching past the end is cut at the end; one starting at or past the end is
    /// [`StorageError::RangeNotSatisfiable`].
    async fn get_range(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<GetResult>;

    /// The object's metadata. [`StorageError::NotFound`] if missing.
    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta>;

    /// The content type stored with the object (by `put_stream` or the upload's
    /// `create_multipart`), or `None` when the object has none recorded (written by
    /// `put`, or by the old app). [`StorageError::NotFound`] if the object is missing.
    /// Backends that keep no content types may leave the default, which says `None`.
    async fn content_type(&self, key: &ObjectKey) -> Result<Option<String>> {
        self.head(key).await.map(|_| None)
    }

    /// Every object whose key starts with `prefix` (recursively), sorted by key.
    /// Backend-internal files (temporary files, upload parts) never appear.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// The names of the immediate "folders" under `prefix` (which ends in `/`): for
    /// `sessions/`, the session ids. Sorted.
    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>>;

    /// Deletes the object. Deleting a missing object is not an error.
    async fn delete(&self, key: &ObjectKey) -> Result<()>;

    /// Starts a multipart upload to `key` whose object will have `content_type`.
    /// Returns the upload id.
    async fn create_multipart(&self, key: &ObjectKey, content_type: &str) -> Result<String>;

    /// Stores one part from the server side (the old upload route, the local backend's
    /// `/storage` routes). The body must be exactly `size` bytes: more is
    /// [`StorageError::TooLarge`], fewer [`StorageError::Truncated`], and then no part
    /// is stored. Re-sending a part number replaces it.
    async fn put_part(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        part_number: u32,
        body: ByteStream,
        size: u64,
    ) -> Result<PartInfo>;

    /// The parts stored so far, sorted by part number.
    /// [`StorageError::UploadNotFound`] if the upload does not exist.
    async fn list_parts(&self, key: &ObjectKey, upload_id: &str) -> Result<Vec<PartInfo>>;

    /// Assembles `parts` (sorted by part number, ETags as `list_parts` gave them) into
    /// the object, atomically, and ends the upload. Part numbers must be 1..=n without
    /// gaps and every part but the last at least [`shared::MIN_PART_SIZE`] bytes, on
    /// every backend, whether or not the store itself checks.
    async fn complete_multipart(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        parts: &[PartInfo],
    ) -> Result<ObjectMeta>;

    /// Ends the upload and deletes its parts. Aborting an upload that no longer exists
    /// is not an error, whether it was aborted or completed: the caller tells the two
    /// apart by whether the object exists. A backend on which a complete is not one
    /// atomic step (the local folder) waits for a complete of this upload that is under
    /// way to end first, so that when this returns `Ok` the object either exists or
    /// never will from this upload; if that takes too long it answers
    /// [`StorageError::UploadBusy`].
    async fn abort_multipart(&self, key: &ObjectKey, upload_id: &str) -> Result<()>;

    /// Uploads in progress under `prefix`.
    async fn list_uploads(&self, prefix: &str) -> Result<Vec<UploadInfo>>;

    /// Signs `op` for a browser, valid from `now` for `ttl`. The browser must send
    /// exactly the method, URL and headers returned.
    async fn presign(
        &self,
        op: &PresignOp,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<PresignedRequest>;
}

/// The old app's storage operations, kept by name for code ported from it.
impl dyn Storage {
    /// Writes bytes and reports where they went (a local path or `s3://bucket/key`).
    pub async fn write_file(&self, key: &ObjectKey, bytes: Bytes) -> Result<String> {
        self.put(key, bytes).await?;
        Ok(self.location(key))
    }

    /// Writes a value as pretty JSON.
    pub async fn write_json<T: Serialize + Sync>(
        &self,
        key: &ObjectKey,
        value: &T,
    ) -> Result<String> {
        let bytes = serde_json::to_vec_pretty(value).map_err(StorageError::backend)?;
        self.write_file(key, Bytes::from(bytes)).await
    }

    /// Reads a whole object.
    pub async fn read_file(&self, key: &ObjectKey) -> Result<Bytes> {
        self.get(key).await
    }

    /// Reads and parses a JSON object. A parse failure is a backend error naming the key.
    pub async fn read_json<T: DeserializeOwned>(&self, key: &ObjectKey) -> Result<T> {
        let bytes = self.get(key).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::backend(format!("{key} is not valid JSON: {e}")))
    }

    /// Whether an object exists at `key`.
    pub async fn exists(&self, key: &ObjectKey) -> Result<bool> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Checks the multipart rules every backend enforces on complete: parts numbered
/// 1..=n without gaps, at most [`shared::MAX_PARTS`], every part but the last at least
/// [`shared::MIN_PART_SIZE`] bytes.
pub fn check_part_sequence(parts: &[PartInfo]) -> Result<()> {
    if parts.is_empty() {
        return Err(StorageError::InvalidPart("no parts to complete".into()));
    }
    if parts.len() > shared::MAX_PARTS as usize {
        return Err(StorageError::InvalidPart(format!(
            "{} parts; at most {} are allowed",
            parts.len(),
            shared::MAX_PARTS
        )));
    }
    for (i, part) in parts.iter().enumerate() {
        let expected = i as u32 + 1;
        if part.part_number != expected {
            return Err(StorageError::InvalidPart(format!(
                "part {} found where part {expected} was expected: parts must be numbered 1..n without gaps",
                part.part_number
            )));
        }
        let last = i + 1 == parts.len();
        if !last && part.size < shared::MIN_PART_SIZE {
            return Err(StorageError::InvalidPart(format!(
                "part {} is {} bytes; every part but the last must be at least {} bytes",
                part.part_number,
                part.size,
                shared::MIN_PART_SIZE
            )));
        }
    }
    Ok(())
}
