//! The local-folder backend: objects are plain files under a root folder, laid out as
//! the old app laid them (`data/sessions/{id}/session.json`, ...), and the server plays
//! the bucket through its own signed `/storage/...` routes.
//!
//! ```text
//! {root}/{key}                               an object (parents created implicitly)
//! {root}/{dir}/.{name}.meta.json             its content type, when it has one
//! {root}/{dir}/.tmp-{random}                 a write in progress (renamed over {key})
//! {root}/.uploads/{upload_id}/meta.json      a multipart upload: key, content type, time
//! {root}/.uploads/{upload_id}/part-00001     one part: its bytes, then its 32-hex ETag
//! {root}/.uploads/.{state}-{upload_id}-{random}  an upload being completed or aborted
//! ```
//!
//! Names starting with a dot are the backend's own: keys cannot start a segment with a
//! dot, so they never collide with objects, and listings never show them.
//!
//! Every change is a write to a fresh temporary file in the target's folder, `fsync`,
//! `rename` over the target, then `fsync` of the folder; an upload is claimed by
//! renaming its folder away. Renames are atomic, so several server processes may share
//! one root with no lock: readers see the old object or the new one, and of two
//! concurrent completes (or a complete and an abort) of one upload exactly one wins.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::ObjectKey;
use shared::api::PresignedRequest;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::memory::{check_dir_prefix, check_part_request, check_presign, resolve_range};
use super::{
    ByteStream, GetResult, ObjectMeta, PartInfo, PresignOp, Result, Storage, StorageError,
    UploadInfo, check_part_sequence,
};
use crate::signing::UrlSigner;

/// Size of the buffer between the network and the file: large enough that each write
/// to disk is big and sequential (the body arrives in chunks of a few KiB).
const WRITE_BUFFER: usize = 1 << 20;

/// Size of the chunks a ranged read streams.
const READ_CHUNK: usize = 256 << 10;

/// The folder of multipart uploads, under the root.
const UPLOADS_DIR: &str = ".uploads";

/// An upload's metadata file, in its folder.
const UPLOAD_META: &str = "meta.json";

/// Length of the ETag trailer that ends every part file (hex of 16 bytes).
const ETAG_LEN: usize = 32;

/// How long an abort waits for a complete of the same upload that has claimed it to
/// put its object in place (normally a single rename, so milliseconds).
const ABORT_PATIENCE: Duration = Duration::from_secs(5);

/// A complete's claim older than this whose object never appeared was left by a
/// process that stopped mid-complete; an abort does not wait for it.
const STALE_COMPLETE_CLAIM: Duration = Duration::from_secs(60);

/// Objects stored as files under a root folder.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    signer: Arc<UrlSigner>,
}

/// `{root}/.uploads/{id}/meta.json`.
#[derive(Debug, Serialize, Deserialize)]
struct UploadMeta {
    key: ObjectKey,
    content_type: String,
    #[serde(with = "time::serde::rfc3339")]
    created: OffsetDateTime,
}

/// `{dir}/.{name}.meta.json`: what the file itself cannot say.
#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    content_type: String,
}

impl LocalStorage {
    /// A store rooted at `root` (created on first write), whose presigned URLs are signed
    /// by `signer`. `root` is kept as given, so [`Storage::location`] answers
    /// `data/sessions/...` for a root of `data`, as the old app did.
    pub fn new(root: PathBuf, signer: impl Into<Arc<UrlSigner>>) -> Self {
        Self {
            root,
            signer: signer.into(),
        }
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &ObjectKey) -> Result<PathBuf> {
        object_path(&self.root, key)
    }

    async fn write_object(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        max_size: u64,
        content_type: Option<&str>,
    ) -> Result<ObjectMeta> {
        let path = self.path_of(key)?;
        let dir = parent(&path);
        let (temp, file) = create_temp(key, dir, true).await?;
        let written = fill(file, body, Limit::AtMost(max_size), false).await;
        if let Err(e) = written {
            temp.remove().await;
            return Err(e);
        }
        let sidecar = sidecar_path(&path);
        let sidecar_written = match content_type {
            // The type goes first: a reader never sees the new object without it.
            Some(ct) => {
                let json = serde_json::to_vec(&Sidecar {
                    content_type: ct.to_owned(),
                })
                .map_err(StorageError::backend)?;
                let sidecar = sidecar.clone();
                blocking(move || write_file_atomic(&sidecar, &json)).await
            }
            None => Ok(()),
        };
        if let Err(e) = sidecar_written {
            temp.remove().await;
            return Err(e);
        }
        temp.commit(key, &path).await?;
        if content_type.is_none() {
            // An object written without a type must not inherit its predecessor's.
            remove_if_exists(&sidecar).await?;
        }
        sync_dir(dir.to_owned()).await?;
        self.head(key).await
    }
}

#[async_trait]
impl Storage for LocalStorage {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn location(&self, key: &ObjectKey) -> String {
        let mut path = self.root.clone();
        path.extend(key.segments());
        path.display().to_string()
    }

    async fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<ObjectMeta> {
        let size = bytes.len() as u64;
        let body = futures::stream::once(async move { Ok(bytes) }).boxed();
        self.write_object(key, body, size, None).await
    }

    async fn put_stream(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        content_type: &str,
        max_size: u64,
    ) -> Result<ObjectMeta> {
        self.write_object(key, body, max_size, Some(content_type))
            .await
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            Err(e) if is_missing(&e) => Err(not_found(key)),
            Err(e) => Err(io_error("read", &path, e)),
        }
    }

    async fn get_range(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<GetResult> {
        let path = self.path_of(key)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if is_missing(&e) => return Err(not_found(key)),
            Err(e) => return Err(io_error("open", &path, e)),
        };
        let metadata = file
            .metadata()
            .await
            .map_err(|e| io_error("stat", &path, e))?;
        if !metadata.is_file() {
            return Err(not_found(key));
        }
        let meta = object_meta(key, &metadata);
        let range = resolve_range(range, meta.size)?;
        file.seek(SeekFrom::Start(range.start))
            .await
            .map_err(|e| io_error("seek", &path, e))?;
        let body = ReaderStream::with_capacity(file.take(range.end - range.start), READ_CHUNK);
        Ok(GetResult {
            meta,
            range,
            body: body.boxed(),
        })
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(metadata) if metadata.is_file() => Ok(object_meta(key, &metadata)),
            Ok(_) => Err(not_found(key)),
            Err(e) if is_missing(&e) => Err(not_found(key)),
            Err(e) => Err(io_error("stat", &path, e)),
        }
    }

    async fn content_type(&self, key: &ObjectKey) -> Result<Option<String>> {
        self.head(key).await?;
        let sidecar = sidecar_path(&self.path_of(key)?);
        match tokio::fs::read(&sidecar).await {
            Ok(json) => match serde_json::from_slice::<Sidecar>(&json) {
                Ok(s) => Ok(Some(s.content_type)),
                Err(e) => {
                    tracing::warn!(path = %sidecar.display(), error = %e, "unreadable content-type sidecar ignored");
                    Ok(None)
                }
            },
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(io_error("read", &sidecar, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        blocking(move || list_objects(&root, &prefix)).await
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        check_dir_prefix(prefix)?;
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        blocking(move || list_folders(&root, &prefix)).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let path = self.path_of(key)?;
        let removed = remove_if_exists(&path).await?;
        remove_if_exists(&sidecar_path(&path)).await?;
        if removed {
            sync_dir(parent(&path).to_owned()).await?;
        }
        Ok(())
    }

    async fn create_multipart(&self, key: &ObjectKey, content_type: &str) -> Result<String> {
        let meta = UploadMeta {
            key: key.clone(),
            content_type: content_type.to_owned(),
            created: OffsetDateTime::now_utc(),
        };
        let uploads = self.root.join(UPLOADS_DIR);
        blocking(move || create_upload(&uploads, &meta)).await
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
        let dir = self.upload_dir(key, upload_id)?;
        read_upload_meta_async(&dir, key, upload_id).await?;
        let gone = || upload_not_found(key, upload_id);
        let (temp, file) = match create_temp(key, &dir, false).await {
            Err(StorageError::NotFound { .. }) => return Err(gone()),
            other => other?,
        };
        let etag = match fill(file, body, Limit::Exactly(size), true).await {
            Ok(etag) => etag.expect("parts are hashed"),
            Err(e) => {
                temp.remove().await;
                return Err(e);
            }
        };
        match temp.commit(key, &dir.join(part_name(part_number))).await {
            // The upload was completed or aborted while this part was arriving.
            Err(StorageError::NotFound { .. }) => return Err(gone()),
            other => other?,
        }
        sync_dir(dir).await?;
        Ok(PartInfo {
            part_number,
            size,
            etag,
        })
    }

    async fn list_parts(&self, key: &ObjectKey, upload_id: &str) -> Result<Vec<PartInfo>> {
        let dir = self.upload_dir(key, upload_id)?;
        let (key, upload_id) = (key.clone(), upload_id.to_owned());
        blocking(move || {
            read_upload_meta(&dir, &key, &upload_id)?;
            match read_parts(&dir) {
                Err(e) if is_missing(&e) => Err(upload_not_found(&key, &upload_id)),
                Err(e) => Err(io_error("list parts in", &dir, e)),
                Ok(parts) => Ok(parts.into_iter().map(|(info, _)| info).collect()),
            }
        })
        .await
    }

    async fn complete_multipart(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        parts: &[PartInfo],
    ) -> Result<ObjectMeta> {
        check_part_sequence(parts)?;
        let dir = self.upload_dir(key, upload_id)?;
        let target = self.path_of(key)?;
        let (key, upload_id, parts) = (key.clone(), upload_id.to_owned(), parts.to_vec());
        blocking(move || complete_upload(&dir, &target, &key, &upload_id, &parts)).await
    }

    async fn abort_multipart(&self, key: &ObjectKey, upload_id: &str) -> Result<()> {
        let dir = match self.upload_dir(key, upload_id) {
            Ok(dir) => dir,
            // An id that could never have been made names no upload: nothing to abort.
            Err(StorageError::UploadNotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let target = self.path_of(key)?;
        let (key, upload_id) = (key.clone(), upload_id.to_owned());
        blocking(move || {
            abort_upload(
                &dir,
                &target,
                &key,
                &upload_id,
                ABORT_PATIENCE,
                STALE_COMPLETE_CLAIM,
            )
        })
        .await
    }

    async fn list_uploads(&self, prefix: &str) -> Result<Vec<UploadInfo>> {
        let uploads = self.root.join(UPLOADS_DIR);
        let prefix = prefix.to_owned();
        blocking(move || list_upload_dirs(&uploads, &prefix)).await
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

impl LocalStorage {
    /// `{root}/.uploads/{upload_id}`, for a well-formed id only: anything else is
    /// [`StorageError::UploadNotFound`] before the filesystem is touched.
    fn upload_dir(&self, key: &ObjectKey, upload_id: &str) -> Result<PathBuf> {
        if is_upload_id(upload_id) {
            Ok(self.root.join(UPLOADS_DIR).join(upload_id))
        } else {
            Err(upload_not_found(key, upload_id))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Paths and names.

/// `{root}/{key}`, joined segment by segment, and never outside `root`.
fn object_path(root: &Path, key: &ObjectKey) -> Result<PathBuf> {
    let mut path = root.to_path_buf();
    for segment in key.segments() {
        path.push(segment);
    }
    // `ObjectKey` already refuses `..`, absolute and hidden segments; this is the second
    // lock on the same door.
    if !path.starts_with(root) || path.components().count() <= root.components().count() {
        return Err(StorageError::InvalidKey {
            key: key.to_string(),
            reason: "it resolves outside the storage root".to_owned(),
        });
    }
    Ok(path)
}

fn parent(path: &Path) -> &Path {
    path.parent().expect("object paths lie under the root")
}

fn sidecar_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .expect("object paths end in a name")
        .to_string_lossy();
    parent(path).join(format!(".{name}.meta.json"))
}

fn part_name(part_number: u32) -> String {
    format!("part-{part_number:05}")
}

fn parse_part_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("part-")?;
    if digits.len() == 5 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok().filter(|n| *n >= 1)
    } else {
        None
    }
}

/// Upload ids are 32 lowercase hex digits, as [`create_upload`] makes them.
fn is_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Whether `name` can be a segment of an [`ObjectKey`] (so not one of our dot-names).
fn is_key_segment(name: &str) -> bool {
    ObjectKey::parse(name).is_ok()
}

// ---------------------------------------------------------------------------------------
// Errors.

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

/// Whether an I/O error means "there is nothing there" (including a file where a folder
/// of the path should be, or a folder where the file should be).
fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory
    )
}

fn io_error(what: &str, path: &Path, e: io::Error) -> StorageError {
    StorageError::backend(format!("{what} {}: {e}", path.display()))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(StorageError::backend)?
}

// ---------------------------------------------------------------------------------------
// Atomic writes.

/// A temporary file that is removed unless committed, even when the future writing it
/// is dropped halfway (a client gone, a timeout).
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn path(&self) -> &Path {
        self.0.as_deref().expect("a live temp file has a path")
    }

    /// Removes the file now (errors are moot: there is nothing better to do).
    async fn remove(mut self) {
        if let Some(path) = self.0.take() {
            let _ = tokio::fs::remove_file(path).await;
        }
    }

    /// Renames the file over `target`. A missing folder is [`StorageError::NotFound`];
    /// a folder at `target` is [`StorageError::InvalidKey`].
    async fn commit(mut self, key: &ObjectKey, target: &Path) -> Result<()> {
        match tokio::fs::rename(self.path(), target).await {
            Ok(()) => {
                self.0 = None;
                Ok(())
            }
            Err(e) => {
                let err = rename_error(key, target, e);
                self.remove().await;
                Err(err)
            }
        }
    }
}

fn rename_error(key: &ObjectKey, target: &Path, e: io::Error) -> StorageError {
    match e.kind() {
        io::ErrorKind::NotFound => not_found(key),
        io::ErrorKind::IsADirectory | io::ErrorKind::DirectoryNotEmpty => {
            StorageError::InvalidKey {
                key: key.to_string(),
                reason: "a folder of other objects already has this name".to_owned(),
            }
        }
        _ => io_error("rename onto", target, e),
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || std::fs::remove_file(path))),
                Err(_) => drop(std::fs::remove_file(path)),
            }
        }
    }
}

/// Creates `{dir}/.tmp-{random}`, creating `dir` first when `create_dirs` (a missing
/// `dir` is otherwise [`StorageError::NotFound`]).
async fn create_temp(
    key: &ObjectKey,
    dir: &Path,
    create_dirs: bool,
) -> Result<(TempFile, tokio::fs::File)> {
    let path = dir.join(format!(".tmp-{}", random_hex()));
    let open = |path: PathBuf| async move {
        tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .await
    };
    let mut opened = open(path.clone()).await;
    if create_dirs && matches!(&opened, Err(e) if e.kind() == io::ErrorKind::NotFound) {
        if let Err(e) = tokio::fs::create_dir_all(dir).await {
            return Err(match e.kind() {
                io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory => {
                    StorageError::InvalidKey {
                        key: key.to_string(),
                        reason: "an object already has the name of one of its folders".to_owned(),
                    }
                }
                _ => io_error("create folder", dir, e),
            });
        }
        opened = open(path.clone()).await;
    }
    match opened {
        Ok(file) => Ok((TempFile(Some(path)), file)),
        Err(e) if is_missing(&e) => Err(not_found(key)),
        Err(e) => Err(io_error("create", &path, e)),
    }
}

/// How many bytes a body may or must have.
#[derive(Clone, Copy)]
enum Limit {
    AtMost(u64),
    Exactly(u64),
}

/// What the network side hands the disk side of [`fill`].
enum Chunk {
    Data(Bytes),
    /// The body is complete and within its limit: finish and sync the file.
    End,
}

/// How many chunks may wait between the network and the disk.
const CHUNKS_IN_FLIGHT: usize = 32;

/// Streams `body` into `file`, refusing it once it passes its limit, then syncs the file
/// once. With `etag`, also hashes the body and appends the ETag as a trailer (the
/// part-file format), and returns it.
///
/// The network side (this task) and the disk side (a blocking thread writing through a
/// large buffer, and hashing) run side by side, connected by a small bounded channel:
/// the disk sees large sequential writes, the runtime's threads never block, and memory
/// stays flat whatever the size.
async fn fill(
    file: tokio::fs::File,
    mut body: ByteStream,
    limit: Limit,
    etag: bool,
) -> Result<Option<String>> {
    let max = match limit {
        Limit::AtMost(n) | Limit::Exactly(n) => n,
    };
    let file = file.into_std().await;
    let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
    let disk = tokio::task::spawn_blocking(move || write_chunks(file, rx, etag));

    let mut size = 0u64;
    let received: Result<()> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(StorageError::backend)?;
            size += chunk.len() as u64;
            if size > max {
                return Err(StorageError::TooLarge { limit: max });
            }
            if tx.send(Chunk::Data(chunk)).await.is_err() {
                // The disk side failed; its error is the one to report.
                return Ok(());
            }
        }
        if let Limit::Exactly(expected) = limit {
            if size < expected {
                return Err(StorageError::Truncated {
                    got: size,
                    expected,
                });
            }
        }
        let _ = tx.send(Chunk::End).await;
        Ok(())
    }
    .await;
    // Without `End`, the disk side stops at once and syncs nothing.
    drop(tx);
    let written = disk.await.map_err(StorageError::backend)?;
    received?;
    written.map_err(|e| StorageError::backend(format!("write a temporary file: {e}")))
}

/// The disk side of [`fill`].
fn write_chunks(
    file: std::fs::File,
    mut rx: tokio::sync::mpsc::Receiver<Chunk>,
    etag: bool,
) -> io::Result<Option<String>> {
    let mut out = io::BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut hasher = etag.then(Sha256::new);
    loop {
        match rx.blocking_recv() {
            Some(Chunk::Data(chunk)) => {
                if let Some(hasher) = &mut hasher {
                    hasher.update(&chunk);
                }
                out.write_all(&chunk)?;
            }
            Some(Chunk::End) => break,
            None => return Err(io::Error::other("the body was abandoned")),
        }
    }
    let etag = hasher.map(|h| hex::encode(&h.finalize()[..ETAG_LEN / 2]));
    if let Some(etag) = &etag {
        out.write_all(etag.as_bytes())?;
    }
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    Ok(etag)
}

/// Writes a small file atomically (temporary file, sync, rename), blocking.
fn write_file_atomic(target: &Path, bytes: &[u8]) -> Result<()> {
    let temp = parent(target).join(format!(".tmp-{}", random_hex()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, target)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        io_error("write", target, e)
    })
}

/// Removes a file; says whether there was one.
async fn remove_if_exists(path: &Path) -> Result<bool> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(io_error("remove", path, e)),
    }
}

/// Makes the renames inside `dir` durable.
async fn sync_dir(dir: PathBuf) -> Result<()> {
    blocking(move || sync_dir_blocking(&dir)).await
}

fn sync_dir_blocking(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync folder", dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Metadata.

fn object_meta(key: &ObjectKey, metadata: &std::fs::Metadata) -> ObjectMeta {
    let modified = metadata.modified().ok();
    ObjectMeta {
        key: key.clone(),
        size: metadata.len(),
        last_modified: modified.map(OffsetDateTime::from),
        etag: Some(file_etag(metadata)),
    }
}

/// A file's ETag without reading it: its inode (a rename brings a new one), size and
/// modification time, as web servers do. It changes whenever the object is replaced.
fn file_etag(metadata: &std::fs::Metadata) -> String {
    let nanos = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(metadata);
    #[cfg(not(unix))]
    let inode = 0u64;
    format!("{inode:x}-{:x}-{nanos:x}", metadata.len())
}

// ---------------------------------------------------------------------------------------
// Listings (blocking).

/// Whether a directory entry is a folder, following symbolic links (old data folders
/// may link sessions in from elsewhere). `None` for a dangling link.
fn entry_kind(entry: &std::fs::DirEntry) -> Option<std::fs::Metadata> {
    let file_type = entry.file_type().ok()?;
    if file_type.is_symlink() {
        std::fs::metadata(entry.path()).ok()
    } else {
        entry.metadata().ok()
    }
}

/// Reads a folder, yielding the visible names (no dot-names, UTF-8, valid key
/// segments) with their metadata. A missing folder yields nothing.
fn visible_entries(dir: &Path) -> Result<Vec<(String, std::fs::Metadata)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if is_missing(&e) => return Ok(Vec::new()),
        Err(e) => return Err(io_error("list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", dir, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !is_key_segment(&name) {
            continue;
        }
        if let Some(metadata) = entry_kind(&entry) {
            out.push((name, metadata));
        }
    }
    Ok(out)
}

/// Splits a listing prefix into the folder to start from and the start of the names
/// in it: `sessions/ab` is folder `sessions/` and names starting with `ab`. `None` when
/// the folder part cannot belong to any key (then nothing matches).
fn split_prefix(prefix: &str) -> Option<(&str, &str)> {
    match prefix.rfind('/') {
        None => Some(("", prefix)),
        Some(i) => {
            let (folder, partial) = (&prefix[..=i], &prefix[i + 1..]);
            ObjectKey::parse(&folder[..i]).ok()?;
            Some((folder, partial))
        }
    }
}

fn list_objects(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>> {
    let Some((folder, partial)) = split_prefix(prefix) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut stack = vec![(root.join(folder), folder.to_owned(), Some(partial))];
    while let Some((dir, key_prefix, partial)) = stack.pop() {
        for (name, metadata) in visible_entries(&dir)? {
            if partial.is_some_and(|p| !name.starts_with(p)) {
                continue;
            }
            let key = format!("{key_prefix}{name}");
            if metadata.is_dir() {
                // The length bound also ends a walk into a symbolic-link loop.
                if key.len() < ObjectKey::MAX_LEN {
                    stack.push((dir.join(&name), format!("{key}/"), None));
                }
            } else if metadata.is_file() {
                if let Ok(key) = ObjectKey::parse(&key) {
                    out.push(object_meta(&key, &metadata));
                }
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

fn list_folders(root: &Path, prefix: &str) -> Result<Vec<String>> {
    if !prefix.is_empty() && ObjectKey::parse(&prefix[..prefix.len() - 1]).is_err() {
        return Ok(Vec::new());
    }
    let dir = root.join(prefix);
    let mut out = Vec::new();
    for (name, metadata) in visible_entries(&dir)? {
        // A folder is only a "folder" while it holds an object, as on S3: one whose
        // objects were all deleted (or that holds only our dot-files) is not shown.
        if metadata.is_dir() && holds_object(&dir.join(&name), prefix.len() + name.len())? {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

fn holds_object(dir: &Path, depth_bytes: usize) -> Result<bool> {
    let mut stack = vec![(dir.to_path_buf(), depth_bytes)];
    while let Some((dir, len)) = stack.pop() {
        for (name, metadata) in visible_entries(&dir)? {
            if metadata.is_file() {
                return Ok(true);
            }
            if metadata.is_dir() && len + name.len() < ObjectKey::MAX_LEN {
                stack.push((dir.join(&name), len + name.len() + 1));
            }
        }
    }
    Ok(false)
}

// ---------------------------------------------------------------------------------------
// Multipart uploads (blocking).

fn create_upload(uploads: &Path, meta: &UploadMeta) -> Result<String> {
    std::fs::create_dir_all(uploads).map_err(|e| io_error("create folder", uploads, e))?;
    let upload_id = random_hex();
    // The folder is filled under a dot-name and renamed into place, so no one ever sees
    // an upload without its meta.json.
    let staging = uploads.join(format!(".new-{}", random_hex()));
    let made = (|| {
        std::fs::create_dir(&staging)?;
        let mut file = std::fs::File::create(staging.join(UPLOAD_META))?;
        file.write_all(&serde_json::to_vec_pretty(meta)?)?;
        file.sync_all()?;
        sync_dir_blocking(&staging).map_err(io::Error::other)?;
        std::fs::rename(&staging, uploads.join(&upload_id))
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(io_error("create upload in", uploads, e));
    }
    sync_dir_blocking(uploads)?;
    Ok(upload_id)
}

fn parse_upload_meta(bytes: &[u8], dir: &Path) -> Result<UploadMeta> {
    serde_json::from_slice(bytes)
        .map_err(|e| StorageError::backend(format!("{} is not a valid upload: {e}", dir.display())))
}

/// Reads an upload's meta, checking it was made for `key`.
fn read_upload_meta(dir: &Path, key: &ObjectKey, upload_id: &str) -> Result<UploadMeta> {
    match std::fs::read(dir.join(UPLOAD_META)) {
        Ok(bytes) => check_upload_key(parse_upload_meta(&bytes, dir)?, key, upload_id),
        Err(e) if is_missing(&e) => Err(upload_not_found(key, upload_id)),
        Err(e) => Err(io_error("read", dir, e)),
    }
}

async fn read_upload_meta_async(
    dir: &Path,
    key: &ObjectKey,
    upload_id: &str,
) -> Result<UploadMeta> {
    match tokio::fs::read(dir.join(UPLOAD_META)).await {
        Ok(bytes) => check_upload_key(parse_upload_meta(&bytes, dir)?, key, upload_id),
        Err(e) if is_missing(&e) => Err(upload_not_found(key, upload_id)),
        Err(e) => Err(io_error("read", dir, e)),
    }
}

fn check_upload_key(meta: UploadMeta, key: &ObjectKey, upload_id: &str) -> Result<UploadMeta> {
    if &meta.key == key {
        Ok(meta)
    } else {
        Err(upload_not_found(key, upload_id))
    }
}

/// The stored parts, sorted, each with its file.
fn read_parts(dir: &Path) -> io::Result<Vec<(PartInfo, PathBuf)>> {
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(part_number) = entry.file_name().to_str().and_then(parse_part_name) else {
            continue;
        };
        let path = entry.path();
        let mut file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        if len < ETAG_LEN as u64 {
            return Err(io::Error::other(format!("{} is cut short", path.display())));
        }
        file.seek(SeekFrom::Start(len - ETAG_LEN as u64))?;
        let mut etag = String::with_capacity(ETAG_LEN);
        file.read_to_string(&mut etag)?;
        parts.push((
            PartInfo {
                part_number,
                size: len - ETAG_LEN as u64,
                etag,
            },
            path,
        ));
    }
    parts.sort_by_key(|(info, _)| info.part_number);
    Ok(parts)
}

/// Takes an upload away from everyone else by renaming its folder to a dot-name.
/// `None` if it was already gone (someone else claimed it first).
fn claim(dir: &Path, state: &str, upload_id: &str) -> Result<Option<PathBuf>> {
    let claimed = parent(dir).join(format!(".{state}-{upload_id}-{}", random_hex()));
    match std::fs::rename(dir, &claimed) {
        Ok(()) => Ok(Some(claimed)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(io_error("claim upload", dir, e)),
    }
}

/// Removes a claimed upload folder; failures are logged, not returned (the upload is
/// already gone for everyone, only disk space is at stake).
fn discard(claimed: &Path) {
    if let Err(e) = std::fs::remove_dir_all(claimed) {
        tracing::warn!(path = %claimed.display(), error = %e, "could not remove a finished upload's folder");
    }
}

/// Aborts the upload in `dir` (see [`Storage::abort_multipart`]). When the upload's
/// folder is gone because a complete claimed it, waits (up to `patience`) until that
/// complete has put the object at `target` or given the upload back, so that an `Ok`
/// means: the object exists now, or this upload will never make it. A claim older than
/// `stale_after` without its object is a crashed complete's and is not waited for.
fn abort_upload(
    dir: &Path,
    target: &Path,
    key: &ObjectKey,
    upload_id: &str,
    patience: Duration,
    stale_after: Duration,
) -> Result<()> {
    let deadline = std::time::Instant::now() + patience;
    let busy = || StorageError::UploadBusy {
        key: key.to_string(),
        upload_id: upload_id.to_owned(),
    };
    loop {
        match read_upload_meta(dir, key, upload_id) {
            Ok(_) => {
                if let Some(claimed) = claim(dir, "aborting", upload_id)? {
                    discard(&claimed);
                    return Ok(());
                }
                // Someone else claimed it between the two steps: see who, below.
            }
            Err(StorageError::UploadNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        match complete_claim_age(parent(dir), upload_id)? {
            // No complete holds it: it was aborted, or completed and cleaned up. A
            // complete that fails gives the folder back in the same rename that ends its
            // claim, so look at the folder once more before saying it is gone.
            None => match read_upload_meta(dir, key, upload_id) {
                Ok(_) => {}
                Err(StorageError::UploadNotFound { .. }) => return Ok(()),
                Err(e) => return Err(e),
            },
            // The object is in place; the claimed folder is only being removed.
            Some(_) if target.is_file() => return Ok(()),
            Some(age) if age > stale_after => return Ok(()),
            Some(_) => {}
        }
        if std::time::Instant::now() >= deadline {
            return Err(busy());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How long ago a complete claimed upload `upload_id` (the youngest such claim under
/// `uploads`), or `None` when no complete holds it.
fn complete_claim_age(uploads: &Path, upload_id: &str) -> Result<Option<Duration>> {
    let prefix = format!(".completing-{upload_id}-");
    let entries = match std::fs::read_dir(uploads) {
        Ok(entries) => entries,
        Err(e) if is_missing(&e) => return Ok(None),
        Err(e) => return Err(io_error("list", uploads, e)),
    };
    let mut youngest: Option<Duration> = None;
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", uploads, e))?;
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        // Claimed and gone since it was listed: the complete ended.
        let Ok(metadata) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        let age = SystemTime::now()
            .duration_since(changed_at(&metadata))
            .unwrap_or_default();
        youngest = Some(youngest.map_or(age, |y| y.min(age)));
    }
    Ok(youngest)
}

/// When a file's inode last changed (a rename changes it), else when it was modified.
fn changed_at(metadata: &std::fs::Metadata) -> SystemTime {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(secs), Ok(nanos)) = (
            u64::try_from(metadata.ctime()),
            u32::try_from(metadata.ctime_nsec()),
        ) {
            return SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
        }
    }
    metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

fn complete_upload(
    dir: &Path,
    target: &Path,
    key: &ObjectKey,
    upload_id: &str,
    parts: &[PartInfo],
) -> Result<ObjectMeta> {
    let meta = read_upload_meta(dir, key, upload_id)?;
    // The object is assembled while the upload is still in place, and the upload is
    // claimed only to commit it. A process killed while assembling (the long part)
    // leaves the upload as it was, so the client's retried complete finds it; claiming
    // first would leave it under a claimed name that no one ever looks at again.
    let temp = match assemble(dir, target, &meta, parts) {
        Ok(temp) => temp,
        // A concurrent complete or abort claimed the upload meanwhile.
        Err(_) if !dir.exists() => return Err(upload_not_found(key, upload_id)),
        Err(e) => return Err(e),
    };
    let Some(claimed) = claim(dir, "completing", upload_id)? else {
        let _ = std::fs::remove_file(&temp);
        return Err(upload_not_found(key, upload_id));
    };
    if let Err(e) = std::fs::rename(&temp, target) {
        let _ = std::fs::remove_file(&temp);
        // Give the upload back, so that the client can retry.
        if let Err(back) = std::fs::rename(&claimed, dir) {
            tracing::warn!(path = %claimed.display(), error = %back, "could not restore an upload after a failed complete");
        }
        return Err(rename_error(key, target, e));
    }
    discard(&claimed);
    sync_dir_blocking(parent(target))?;
    let metadata = std::fs::metadata(target).map_err(|e| io_error("stat", target, e))?;
    Ok(object_meta(key, &metadata))
}

/// Checks `parts` against the ones stored in the upload folder `dir` and concatenates
/// them into a synced temporary file beside `target` (with the target's content-type
/// sidecar in place), which it returns for the caller to rename over `target`.
fn assemble(dir: &Path, target: &Path, meta: &UploadMeta, parts: &[PartInfo]) -> Result<PathBuf> {
    let stored = read_parts(dir).map_err(|e| io_error("list parts in", dir, e))?;
    let mut files = Vec::with_capacity(parts.len());
    for given in parts {
        let Some((info, path)) = stored
            .iter()
            .find(|(info, _)| info.part_number == given.part_number)
        else {
            return Err(StorageError::InvalidPart(format!(
                "part {} was never uploaded",
                given.part_number
            )));
        };
        if info.size != given.size || info.etag != given.etag.trim_matches('"') {
            return Err(StorageError::InvalidPart(format!(
                "part {} does not match the stored part ({} bytes, ETag {})",
                given.part_number, info.size, info.etag
            )));
        }
        files.push((path, info.size));
    }

    let folder = parent(target);
    std::fs::create_dir_all(folder).map_err(|e| io_error("create folder", folder, e))?;
    let temp = folder.join(format!(".tmp-{}", random_hex()));
    let joined = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        for (path, size) in &files {
            // `io::copy` between files lets the kernel move the bytes
            // (copy_file_range on Linux), without a trip through this process.
            let copied = io::copy(&mut std::fs::File::open(path)?.take(*size), &mut out)?;
            if copied != *size {
                return Err(io::Error::other(format!("{} is cut short", path.display())));
            }
        }
        out.sync_all()
    })();
    if let Err(e) = joined {
        let _ = std::fs::remove_file(&temp);
        return Err(io_error("assemble", target, e));
    }
    let sidecar = serde_json::to_vec(&Sidecar {
        content_type: meta.content_type.clone(),
    })
    .map_err(StorageError::backend);
    if let Err(e) = sidecar.and_then(|bytes| write_file_atomic(&sidecar_path(target), &bytes)) {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(temp)
}

fn list_upload_dirs(uploads: &Path, prefix: &str) -> Result<Vec<UploadInfo>> {
    let entries = match std::fs::read_dir(uploads) {
        Ok(entries) => entries,
        Err(e) if is_missing(&e) => return Ok(Vec::new()),
        Err(e) => return Err(io_error("list", uploads, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", uploads, e))?;
        let Some(upload_id) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_upload_id(&upload_id) {
            continue;
        }
        let dir = entry.path();
        let meta = match std::fs::read(dir.join(UPLOAD_META)) {
            Ok(bytes) => parse_upload_meta(&bytes, &dir)?,
            // Completed or aborted since the folder was listed.
            Err(e) if is_missing(&e) => continue,
            Err(e) => return Err(io_error("read", &dir, e)),
        };
        if meta.key.as_str().starts_with(prefix) {
            out.push(UploadInfo {
                key: meta.key,
                upload_id,
                initiated: Some(meta.created),
            });
        }
    }
    out.sort_by(|a, b| {
        (&a.key, a.initiated, &a.upload_id).cmp(&(&b.key, b.initiated, &b.upload_id))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::Secret;

    fn signer() -> UrlSigner {
        UrlSigner::new(Secret::new(vec![5u8; 32]).unwrap(), "http://127.0.0.1:1")
    }

    fn store(root: &Path) -> LocalStorage {
        LocalStorage::new(root.to_path_buf(), signer())
    }

    fn key(text: &str) -> ObjectKey {
        ObjectKey::parse(text).unwrap()
    }

    fn chunks(parts: Vec<io::Result<Vec<u8>>>) -> ByteStream {
        futures::stream::iter(parts.into_iter().map(|r| r.map(Bytes::from))).boxed()
    }

    fn one(bytes: Vec<u8>) -> ByteStream {
        chunks(vec![Ok(bytes)])
    }

    /// Every path under `root`, dot-names included, relative and sorted.
    fn files_under(root: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                out.push(path.strip_prefix(root).unwrap().display().to_string());
                if path.is_dir() {
                    walk(root, &path, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out.sort();
        out
    }

    #[tokio::test]
    async fn objects_land_where_the_old_app_put_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let k = key("sessions/s1/session.json");
        s.put(&k, Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("sessions/s1/session.json")).unwrap(),
            b"{}"
        );
        assert_eq!(
            files_under(dir.path()),
            ["sessions", "sessions/s1", "sessions/s1/session.json"]
        );
        let relative = LocalStorage::new(PathBuf::from("data"), signer());
        assert_eq!(relative.location(&k), "data/sessions/s1/session.json");
    }

    #[tokio::test]
    async fn a_stream_over_its_limit_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let k = key("sessions/s1/r.webm");
        let body = chunks(vec![Ok(vec![1; 6]), Ok(vec![2; 6])]);
        let err = s.put_stream(&k, body, "video/webm", 10).await.unwrap_err();
        assert!(
            matches!(err, StorageError::TooLarge { limit: 10 }),
            "{err:?}"
        );
        assert_eq!(files_under(dir.path()), ["sessions", "sessions/s1"]);
    }

    #[tokio::test]
    async fn a_body_that_fails_midway_leaves_the_old_object_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let k = key("a/r.webm");
        s.put_stream(&k, one(b"old".to_vec()), "video/webm", 10)
            .await
            .unwrap();
        let body = chunks(vec![
            Ok(b"ne".to_vec()),
            Err(io::Error::other("client went away")),
        ]);
        assert!(s.put_stream(&k, body, "audio/ogg", 10).await.is_err());
        assert_eq!(s.get(&k).await.unwrap(), Bytes::from_static(b"old"));
        assert_eq!(
            s.content_type(&k).await.unwrap().as_deref(),
            Some("video/webm")
        );
        assert_eq!(
            files_under(dir.path()),
            ["a", "a/.r.webm.meta.json", "a/r.webm"]
        );
    }

    #[tokio::test]
    async fn a_write_dropped_halfway_removes_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let k = key("a/r.webm");
        // One chunk, then a body that never ends: the write is abandoned by a timeout.
        let body = futures::stream::once(async { Ok(Bytes::from_static(b"abc")) })
            .chain(futures::stream::pending())
            .boxed();
        let write = s.put_stream(&k, body, "video/webm", 100);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), write)
                .await
                .is_err()
        );
        // The removal runs on the blocking pool; give it a moment.
        for _ in 0..100 {
            if files_under(dir.path()) == ["a"] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(files_under(dir.path()), ["a"]);
    }

    #[tokio::test]
    async fn an_overwrite_is_a_rename_so_open_readers_keep_the_old_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let k = key("a/b.json");
        let first = s.put(&k, Bytes::from_static(b"first")).await.unwrap();
        let mut reader = std::fs::File::open(dir.path().join("a/b.json")).unwrap();
        let second = s.put(&k, Bytes::from_static(b"second")).await.unwrap();
        let mut old = String::new();
        reader.read_to_string(&mut old).unwrap();
        assert_eq!(old, "first");
        assert_eq!(s.get(&k).await.unwrap(), Bytes::from_static(b"second"));
        assert_ne!(first.etag, second.etag);
        assert_eq!(files_under(dir.path()), ["a", "a/b.json"]);
    }

    #[tokio::test]
    async fn a_plain_put_drops_the_content_type_of_the_object_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let k = key("a/r.webm");
        s.put_stream(&k, one(vec![1]), "video/webm", 10)
            .await
            .unwrap();
        s.put(&k, Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(s.content_type(&k).await.unwrap(), None);
        s.delete(&k).await.unwrap();
        assert_eq!(files_under(dir.path()), ["a"]);
    }

    #[tokio::test]
    async fn listings_hide_dot_names_and_names_that_are_not_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.put(&key("sessions/s1/session.json"), Bytes::new())
            .await
            .unwrap();
        s.create_multipart(&key("sessions/s1/r.webm"), "video/webm")
            .await
            .unwrap();
        std::fs::write(dir.path().join(".secret"), b"x").unwrap();
        std::fs::write(dir.path().join("sessions/s1/.tmp-0"), b"x").unwrap();
        std::fs::write(dir.path().join("sessions/s1/has space.txt"), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join("sessions/.hidden/x")).unwrap();
        std::fs::write(dir.path().join("sessions/.hidden/x/y"), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join("sessions/empty")).unwrap();
        let keys: Vec<String> = s
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key.to_string())
            .collect();
        assert_eq!(keys, ["sessions/s1/session.json"]);
        assert_eq!(s.list_dirs("sessions/").await.unwrap(), ["s1"]);
        assert_eq!(s.list_dirs("").await.unwrap(), ["sessions"]);
    }

    #[tokio::test]
    async fn malformed_upload_ids_are_refused_before_touching_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let k = key("a/r.webm");
        for bad in [
            "../../etc",
            "",
            "ABCDEF0123456789ABCDEF0123456789",
            ".uploads",
        ] {
            let err = s.put_part(&k, bad, 1, one(vec![1]), 1).await.unwrap_err();
            assert!(
                matches!(err, StorageError::UploadNotFound { .. }),
                "{bad:?}: {err:?}"
            );
            let err = s.list_parts(&k, bad).await.unwrap_err();
            assert!(
                matches!(err, StorageError::UploadNotFound { .. }),
                "{bad:?}: {err:?}"
            );
            s.abort_multipart(&k, bad).await.unwrap();
        }
        assert!(files_under(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_short_part_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let k = key("a/r.webm");
        let id = s.create_multipart(&k, "video/webm").await.unwrap();
        let err = s
            .put_part(&k, &id, 1, one(vec![1; 3]), 4)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Truncated {
                    got: 3,
                    expected: 4
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            files_under(dir.path()),
            [
                ".uploads".to_owned(),
                format!(".uploads/{id}"),
                format!(".uploads/{id}/meta.json")
            ]
        );
    }

    async fn two_part_upload(s: &LocalStorage, k: &ObjectKey, fill: u8) -> (String, Vec<PartInfo>) {
        let id = s.create_multipart(k, "video/webm").await.unwrap();
        let big = vec![fill; shared::MIN_PART_SIZE as usize];
        let p2 = s.put_part(k, &id, 2, one(vec![fill; 7]), 7).await.unwrap();
        let p1 = s
            .put_part(k, &id, 1, one(big), shared::MIN_PART_SIZE)
            .await
            .unwrap();
        (id, vec![p1, p2])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_on_one_root_complete_different_uploads_concurrently() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (store(dir.path()), store(dir.path()));
        let (ka, kb) = (key("sessions/s/a.webm"), key("sessions/s/b.webm"));
        let (ia, pa) = two_part_upload(&a, &ka, 1).await;
        let (ib, pb) = two_part_upload(&b, &kb, 2).await;
        let (ra, rb) = tokio::join!(
            a.complete_multipart(&ka, &ia, &pa),
            b.complete_multipart(&kb, &ib, &pb)
        );
        let expected = shared::MIN_PART_SIZE + 7;
        assert_eq!(ra.unwrap().size, expected);
        assert_eq!(rb.unwrap().size, expected);
        for (k, fill) in [(&ka, 1u8), (&kb, 2u8)] {
            let bytes = a.get(k).await.unwrap();
            assert!(bytes.iter().all(|b| *b == fill));
            assert_eq!(bytes.len() as u64, expected);
        }
        assert_eq!(
            files_under(dir.path()),
            [
                ".uploads",
                "sessions",
                "sessions/s",
                "sessions/s/.a.webm.meta.json",
                "sessions/s/.b.webm.meta.json",
                "sessions/s/a.webm",
                "sessions/s/b.webm"
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_two_concurrent_completes_of_one_upload_exactly_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (store(dir.path()), store(dir.path()));
        let k = key("sessions/s/a.webm");
        let (id, parts) = two_part_upload(&a, &k, 3).await;
        let (ra, rb) = tokio::join!(
            a.complete_multipart(&k, &id, &parts),
            b.complete_multipart(&k, &id, &parts)
        );
        let (won, lost): (Vec<_>, Vec<_>) = [ra, rb].into_iter().partition(|r| r.is_ok());
        assert_eq!(won.len(), 1);
        assert!(
            matches!(lost[0], Err(StorageError::UploadNotFound { .. })),
            "{lost:?}"
        );
        assert_eq!(a.head(&k).await.unwrap().size, shared::MIN_PART_SIZE + 7);
    }

    #[tokio::test]
    async fn a_refused_complete_gives_the_upload_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let k = key("sessions/s/a.webm");
        let (id, parts) = two_part_upload(&s, &k, 4).await;
        let mut wrong = parts.clone();
        wrong[1].etag = "0".repeat(32);
        let err = s.complete_multipart(&k, &id, &wrong).await.unwrap_err();
        assert!(matches!(err, StorageError::InvalidPart(_)), "{err:?}");
        let other = key("sessions/s/other.webm");
        let err = s.complete_multipart(&other, &id, &parts).await.unwrap_err();
        assert!(
            matches!(err, StorageError::UploadNotFound { .. }),
            "{err:?}"
        );
        s.abort_multipart(&other, &id).await.unwrap();
        assert_eq!(s.list_parts(&k, &id).await.unwrap(), parts);
        assert!(!s.exists_blocking(&k));
        // ETags quoted the way S3 quotes them are accepted too.
        let quoted: Vec<PartInfo> = parts
            .iter()
            .map(|p| PartInfo {
                etag: format!("\"{}\"", p.etag),
                ..p.clone()
            })
            .collect();
        s.complete_multipart(&k, &id, &quoted).await.unwrap();
        assert_eq!(
            s.content_type(&k).await.unwrap().as_deref(),
            Some("video/webm")
        );
        assert!(!dir.path().join(".uploads").join(&id).exists());
    }

    /// Claims `id` as a running complete would, and returns the claimed folder.
    fn claim_as_complete(root: &Path, id: &str) -> PathBuf {
        let dir = root.join(UPLOADS_DIR).join(id);
        claim(&dir, "completing", id).unwrap().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abort_waits_for_a_complete_under_way_and_then_leaves_its_object() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let k = key("sessions/s/a.webm");
        let (id, _) = two_part_upload(&s, &k, 5).await;
        let claimed = claim_as_complete(dir.path(), &id);
        let target = s.path_of(&k).unwrap();
        let abort = {
            let s = s.clone();
            let (k, id) = (k.clone(), id.clone());
            tokio::spawn(async move { s.abort_multipart(&k, &id).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !abort.is_finished(),
            "the abort did not wait for the complete"
        );
        // The complete puts its object in place, then removes its claim.
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, b"assembled").unwrap();
        std::fs::remove_dir_all(&claimed).unwrap();
        abort.await.unwrap().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"assembled");
    }

    #[tokio::test]
    async fn an_abort_answers_busy_while_a_complete_holds_the_upload_too_long() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let k = key("sessions/s/a.webm");
        let (id, _) = two_part_upload(&s, &k, 6).await;
        let claimed = claim_as_complete(dir.path(), &id);
        let upload = dir.path().join(UPLOADS_DIR).join(&id);
        let target = s.path_of(&k).unwrap();
        let patience = Duration::from_millis(50);
        let err =
            abort_upload(&upload, &target, &k, &id, patience, Duration::from_secs(60)).unwrap_err();
        assert!(matches!(err, StorageError::UploadBusy { .. }), "{err:?}");
        assert!(claimed.exists(), "the complete's claim is left alone");
        // A claim older than `stale_after` is a crashed complete's: not waited for.
        std::thread::sleep(Duration::from_millis(30));
        abort_upload(
            &upload,
            &target,
            &k,
            &id,
            patience,
            Duration::from_millis(10),
        )
        .unwrap();
        // A complete that failed gave the upload back: the abort takes it.
        std::fs::rename(&claimed, &upload).unwrap();
        abort_upload(&upload, &target, &k, &id, patience, Duration::from_secs(60)).unwrap();
        assert!(!upload.exists());
        assert!(s.list_uploads("").await.unwrap().is_empty());
    }

    impl LocalStorage {
        fn exists_blocking(&self, key: &ObjectKey) -> bool {
            self.path_of(key).unwrap().exists()
        }
    }

    #[test]
    fn object_paths_stay_under_the_root() {
        let root = Path::new("/srv/data");
        assert_eq!(
            object_path(root, &key("sessions/a/b.json")).unwrap(),
            Path::new("/srv/data/sessions/a/b.json")
        );
        assert!(is_upload_id(&random_hex()));
        assert!(!is_upload_id("0123456789abcdef0123456789abcdeg"));
        assert_eq!(parse_part_name("part-00012"), Some(12));
        assert_eq!(parse_part_name("part-00000"), None);
        assert_eq!(parse_part_name("part-12"), None);
        assert_eq!(split_prefix("sessions/ab"), Some(("sessions/", "ab")));
        assert_eq!(split_prefix("../x"), None);
        assert_eq!(split_prefix(""), Some(("", "")));
    }
}
