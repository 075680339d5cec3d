//! `recorder-server migrate`: copies an existing deployment's data folder into the
//! configured bucket, verified, resumable, with progress.
//!
//! ```text
//! STORAGE_BACKEND=s3 S3_BUCKET=... recorder-server migrate --from local:data [--dry-run]
//! ```
//!
//! **What is copied.** Every regular file under the folder whose path is a valid
//! [`ObjectKey`] goes to the bucket under that key (after `S3_KEY_PREFIX`): session
//! manifests byte for byte (a corrupt one too: it is data, and the server then reports it
//! on S3 exactly as it did on the folder), recordings, events and any extra file. The
//! local backend's own dot-files are not objects and stay behind: multipart uploads in
//! progress (`.uploads/`, reported), temporary files (`.tmp-*`), the generated
//! `.server-secret` and `.researcher-token` (never copied into a bucket), and the
//! `.{name}.meta.json` content-type sidecars, whose content type becomes the object's
//! `Content-Type` (an object without one gets the type the local backend would have
//! served: from its extension). Files whose names cannot be keys (spaces, a leading dot,
//! non-UTF-8, symbolic links) are **not copied and each is listed**; the summary counts
//! them and the exit code is 3, so nothing is lost silently.
//!
//! **Identity.** An object is identical to its file when its size matches and its
//! `x-amz-meta-sha256` (written by this command on every upload) equals the file's
//! SHA-256. S3 ETags cannot serve: a multipart ETag is not the MD5 of the object. An
//! object of the same size without that metadata (copied by another tool) is read back
//! and hashed; an object that differs and was not written by this command is a
//! **conflict**: reported, counted as failed and left alone unless `--overwrite`.
//! An object that carries the metadata but a different checksum is an earlier migrated
//! version of a file that has since changed, and is replaced.
//!
//! **Verification.** After every upload the object is read back from the bucket and
//! hashed, and its size and metadata are checked with a HEAD; only then is it counted
//! as copied (a read-back is used rather than a store-computed checksum because stores
//! compute full-object checksums for single PUTs only). An object that fails
//! verification is deleted, so that no later run can mistake it for a good copy.
//!
//! **Resumability.** S3 writes are atomic, so an interrupted run (Ctrl-C, `kill -9`, a
//! lost connection) never leaves a partial object under a real key, only an unfinished
//! multipart upload. A new run first aborts unfinished uploads to the keys it is about to
//! copy (they can only be an earlier run's: the server never uploads to a key that
//! already exists in the folder), then skips every object that is already identical, so
//! nothing is copied twice. An object uploaded by a run killed before its read-back is
//! skipped on the strength of its metadata; `--verify-existing` reads every skipped
//! object back as well.
//!
//! **The source** is only read, unless `--delete-source`: then each file (and its
//! sidecar) is deleted right after its object has been read back and found identical in
//! this run and the file is unchanged since it was hashed; folders left empty are
//! removed. Unfinished uploads, secrets and files that were not copied are never deleted.
//!
//! Transfers (PUTs, parts, read-backs) in flight are bounded by `--jobs`; files larger
//! than [`PART_SIZE`] go up as multipart uploads streamed from disk part by part, so
//! memory stays flat. `--limit-rate` caps the upload rate.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::{ByteStream, Length};
use futures::{StreamExt, TryStreamExt};
use indicatif::{BinaryBytes, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use shared::ObjectKey;
use shared::media::Container;
use tokio::sync::Semaphore;

use crate::config::{Config, StorageBackend};
use crate::storage::s3::S3Storage;
use crate::storage::{PartInfo, Storage};

const MIB: u64 = 1024 * 1024;

/// Transfers in flight by default (`--jobs`).
pub const DEFAULT_JOBS: usize = 4;

/// Most transfers in flight `--jobs` accepts.
pub const MAX_JOBS: usize = 64;

/// Files larger than this go up as multipart uploads, in parts of this size (larger
/// parts for files that would otherwise need more than [`shared::MAX_PARTS`]).
pub const PART_SIZE: u64 = 16 * MIB;

/// The user metadata (`x-amz-meta-sha256`) holding the hex SHA-256 of the object, set
/// by this command on every object it uploads.
pub const SHA256_METADATA: &str = "sha256";

/// Exit code when every copyable file is in the bucket but some files could not be
/// copied because their names cannot be keys (they are listed).
pub const EXIT_NOT_COPIED: u8 = 3;

/// How often the plain (not a terminal) output prints a progress line.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The arguments of `recorder-server migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// The data folder to copy, as `local:PATH` (the old app's or a local install's
    /// `DATA_DIR`).
    #[arg(long, value_name = "local:PATH", value_parser = parse_from)]
    pub from: PathBuf,
    /// Where to copy to: the bucket the S3 variables name (STORAGE_BACKEND=s3).
    #[arg(long, value_name = "s3", default_value = "s3", value_parser = ["s3"])]
    pub to: String,
    /// Transfers (uploads, parts, read-backs) in flight at once.
    #[arg(long, default_value_t = DEFAULT_JOBS, value_parser = parse_jobs)]
    pub jobs: usize,
    /// Say what would be copied, skipped or refused, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Delete each source file once its object has been read back and found identical.
    /// Never the default.
    #[arg(long)]
    pub delete_source: bool,
    /// Replace objects in the bucket that differ from their file although this command
    /// did not write them (by default such a conflict is reported and left alone).
    #[arg(long)]
    pub overwrite: bool,
    /// Also read back and hash objects that are skipped because their metadata says they
    /// are identical (a full audit of the bucket against the folder).
    #[arg(long)]
    pub verify_existing: bool,
    /// Cap the upload rate, in bytes per second (`500K`, `20M`, `1G`: binary units).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub limit_rate: Option<u64>,
}

/// Parses `--from local:PATH`.
pub fn parse_from(text: &str) -> Result<PathBuf, String> {
    match text.split_once(':') {
        Some(("local", path)) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => Err(format!(
            "{text:?} is not a source; name the data folder as local:PATH, e.g. local:data"
        )),
    }
}

fn parse_jobs(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_JOBS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?}: give a number of transfers from 1 to {MAX_JOBS}"
        )),
    }
}

/// Parses a rate such as `800K`, `20M`, `1G` or `123456` into bytes per second
/// (binary units: `1K` is 1024).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_uppercase()),
        _ => (t, ' '),
    };
    let scale: u64 = match unit {
        ' ' => 1,
        'K' => 1 << 10,
        'M' => 1 << 20,
        'G' => 1 << 30,
        _ => 0,
    };
    match digits.trim().parse::<u64>() {
        Ok(n) if n > 0 && scale > 0 => n
            .checked_mul(scale)
            .ok_or_else(|| format!("{text:?} is too large")),
        _ => Err(format!(
            "{text:?} is not a rate; give bytes per second such as 800K, 20M or 1G"
        )),
    }
}

// ---------------------------------------------------------------------------------------
// The source folder.

/// A file to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceObject {
    /// The key it goes to (before the bucket's key prefix).
    pub key: ObjectKey,
    /// The file.
    pub path: PathBuf,
    /// Its size when the folder was scanned.
    pub size: u64,
    /// The `Content-Type` the object gets: the sidecar's, else the one the local
    /// backend serves for the extension, else none.
    pub content_type: Option<String>,
    /// The content-type sidecar, if there is one (deleted with the file).
    pub sidecar: Option<PathBuf>,
}

/// A file that is not copied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotCopied {
    /// Its path relative to the folder.
    pub path: String,
    /// Why it cannot be copied.
    pub reason: String,
}

/// The local backend's own files, which are not objects and stay behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InternalFiles {
    /// Content-type sidecars (their type is carried to the objects).
    pub sidecars: usize,
    /// Temporary files of writes in progress or interrupted.
    pub temporary: usize,
    /// The generated server secret and researcher token (never copied).
    pub secrets: usize,
    /// Files of multipart uploads in progress under `.uploads/`.
    pub upload_files: usize,
    /// Multipart uploads in progress on the local server, as `key (upload id)`:
    /// recordings that were never completed. They are not migrated and never deleted.
    pub unfinished_uploads: Vec<String>,
}

/// What a scan of the folder found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// The files to copy, sorted by key.
    pub objects: Vec<SourceObject>,
    /// The files that cannot be copied, sorted by path.
    pub not_copied: Vec<NotCopied>,
    /// The backend's own files.
    pub internal: InternalFiles,
}

/// How a file in the folder is treated, from its path relative to the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Object(ObjectKey),
    /// `.{name}.meta.json`: the content type of `{dir}/{name}`.
    Sidecar {
        object: String,
    },
    Temporary,
    Secret,
    Upload,
    NotCopied(String),
}

fn classify(segments: &[&str]) -> Kind {
    let Some((name, dirs)) = segments.split_last() else {
        return Kind::NotCopied("an empty path".to_owned());
    };
    if dirs.first() == Some(&".uploads") {
        return Kind::Upload;
    }
    let secret = |base: &str| {
        *name == base
            || name
                .strip_prefix(base)
                .is_some_and(|rest| rest.starts_with('.') && rest.ends_with(".tmp"))
    };
    if dirs.is_empty()
        && (secret(crate::config::SECRET_FILE) || secret(crate::config::RESEARCHER_TOKEN_FILE))
    {
        return Kind::Secret;
    }
    if name.starts_with(".tmp-") {
        return Kind::Temporary;
    }
    if let Some(object) = name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(".meta.json"))
        .filter(|n| !n.is_empty())
    {
        let mut path = dirs.join("/");
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(object);
        return Kind::Sidecar { object: path };
    }
    match ObjectKey::parse(&segments.join("/")) {
        Ok(key) => Kind::Object(key),
        Err(e) => Kind::NotCopied(format!("its name cannot be a storage key ({e})")),
    }
}

/// The content type the local backend serves for a file without a sidecar.
fn content_type_from_extension(key: &ObjectKey) -> Option<String> {
    let (_, ext) = key.file_name().rsplit_once('.')?;
    if ext.eq_ignore_ascii_case("json") {
        return Some("application/json".to_owned());
    }
    Container::from_extension(ext).map(|c| c.default_content_type(true).to_owned())
}

/// Walks the folder (without following symbolic links) and sorts every file into
/// objects, files that cannot be copied, and the backend's own files.
pub fn scan(root: &Path) -> io::Result<Scan> {
    let meta = std::fs::metadata(root)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a folder",
            root.display()
        )));
    }
    let mut files = Vec::new();
    walk(root, &mut Vec::new(), &mut files)?;

    let mut scan = Scan::default();
    let mut sidecars: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut candidates = Vec::new();
    for file in files {
        let rel = file.segments.join("/");
        let segments: Option<Vec<&str>> = file.names.iter().map(|n| n.to_str()).collect();
        let Some(segments) = segments else {
            scan.not_copied.push(NotCopied {
                path: rel,
                reason: "its name is not valid UTF-8, so it cannot be a storage key".to_owned(),
            });
            continue;
        };
        match classify(&segments) {
            Kind::Upload => scan.internal.upload_files += 1,
            Kind::Secret => scan.internal.secrets += 1,
            Kind::Temporary => scan.internal.temporary += 1,
            Kind::Sidecar { object } => {
                scan.internal.sidecars += 1;
                sidecars.insert(object, file.path);
            }
            Kind::NotCopied(reason) => scan.not_copied.push(NotCopied { path: rel, reason }),
            Kind::Object(_) if !file.regular => scan.not_copied.push(NotCopied {
                path: rel,
                reason: "it is a symbolic link or a special file; only regular files are \
                         copied (put the file itself in its place to copy it)"
                    .to_owned(),
            }),
            Kind::Object(key) => candidates.push((key, file.path, file.size)),
        }
    }
    for (key, path, size) in candidates {
        let sidecar = sidecars.get(key.as_str()).cloned();
        let stored = sidecar.as_deref().and_then(read_sidecar);
        let content_type = stored.or_else(|| content_type_from_extension(&key));
        scan.objects.push(SourceObject {
            key,
            path,
            size,
            content_type,
            sidecar,
        });
    }
    scan.objects.sort_by(|a, b| a.key.cmp(&b.key));
    scan.not_copied.sort_by(|a, b| a.path.cmp(&b.path));
    scan.internal.unfinished_uploads = unfinished_uploads(&root.join(".uploads"));
    Ok(scan)
}

struct Found {
    names: Vec<std::ffi::OsString>,
    segments: Vec<String>,
    path: PathBuf,
    size: u64,
    regular: bool,
}

fn walk(dir: &Path, names: &mut Vec<std::ffi::OsString>, out: &mut Vec<Found>) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", dir.display())))?
        .collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        names.push(entry.file_name());
        if meta.is_dir() {
            walk(&path, names, out)?;
        } else {
            out.push(Found {
                segments: names
                    .iter()
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect(),
                names: names.clone(),
                path,
                size: meta.len(),
                regular: meta.is_file(),
            });
        }
        names.pop();
    }
    Ok(())
}

fn read_sidecar(path: &Path) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Sidecar {
        content_type: String,
    }
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice::<Sidecar>(&bytes)
        .ok()
        .map(|s| s.content_type)
        .filter(|ct| !ct.trim().is_empty())
}

/// `key (upload id)` of every multipart upload in progress in the local backend.
fn unfinished_uploads(uploads: &Path) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct UploadMeta {
        key: String,
    }
    let Ok(entries) = std::fs::read_dir(uploads) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let id = e.file_name().to_str()?.to_owned();
            if id.starts_with('.') {
                return None; // being completed or aborted
            }
            let key = std::fs::read(e.path().join("meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<UploadMeta>(&b).ok())
                .map_or_else(|| "an unknown key".to_owned(), |m| m.key);
            Some(format!("{key} (upload {id})"))
        })
        .collect();
    found.sort();
    found
}

// ---------------------------------------------------------------------------------------
// Deciding what to do with one object.

/// What the bucket holds at a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    /// Its size.
    pub size: u64,
    /// Its `x-amz-meta-sha256`, if this command wrote it.
    pub sha256: Option<String>,
}

/// What to do with one file, given what the bucket holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing there: copy.
    Copy,
    /// Identical by size and checksum metadata: skip.
    Skip,
    /// An earlier migrated version of a file that has changed since: replace it.
    Replace,
    /// Same size, no checksum metadata (another tool's copy): read it back and compare.
    Compare,
    /// A different object this command did not write: leave it (unless `--overwrite`).
    Conflict,
}

/// Decides from the file's size and SHA-256 (hex) and what the bucket holds.
pub fn decide(size: u64, sha256: &str, existing: Option<&Existing>, overwrite: bool) -> Decision {
    match existing {
        None => Decision::Copy,
        Some(e) => match &e.sha256 {
            Some(theirs) if e.size == size && theirs.eq_ignore_ascii_case(sha256) => Decision::Skip,
            Some(_) => Decision::Replace,
            None if e.size == size => Decision::Compare,
            None if overwrite => Decision::Replace,
            None => Decision::Conflict,
        },
    }
}

/// The part size for a file of `size` bytes: [`PART_SIZE`], or more (whole MiB) where
/// that would need more than [`shared::MAX_PARTS`] parts.
pub fn part_size_for(size: u64) -> u64 {
    let needed = size.div_ceil(u64::from(shared::MAX_PARTS));
    PART_SIZE.max(needed.div_ceil(MIB) * MIB)
}

// ---------------------------------------------------------------------------------------
// The run.

/// How one object ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Copied { replaced: bool },
    Skipped { read_back: bool },
    Failed(String),
    WouldCopy { replaced: bool },
    WouldSkip { read_back: bool },
}

/// The counts a run ends with.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Objects copied and verified.
    pub copied: usize,
    /// Of those, how many replaced a copy that differed from the file.
    pub replaced: usize,
    /// Bytes copied.
    pub copied_bytes: u64,
    /// Objects already in the bucket and identical.
    pub skipped: usize,
    /// Their bytes.
    pub skipped_bytes: u64,
    /// Objects that failed (copy, verification, conflict), with the reason.
    pub failed: Vec<(String, String)>,
    /// Files not copied because their names cannot be keys.
    pub not_copied: Vec<NotCopied>,
    /// Source files deleted (`--delete-source`).
    pub deleted: usize,
    /// Unfinished uploads of an earlier run aborted at the start.
    pub aborted_uploads: usize,
    /// The backend's own files, left behind.
    pub internal: InternalFiles,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// How long the run took.
    pub elapsed: Duration,
}

impl Summary {
    /// 0 when everything was copied or already there, 1 when anything failed, 3
    /// ([`EXIT_NOT_COPIED`]) when nothing failed but some files could not be copied.
    pub fn exit_code(&self) -> u8 {
        if !self.failed.is_empty() {
            1
        } else if !self.not_copied.is_empty() {
            EXIT_NOT_COPIED
        } else {
            0
        }
    }

    /// The closing report, as printed.
    pub fn report(&self, target: &str) -> String {
        let mut out = String::new();
        let (copy, skip) = if self.dry_run {
            ("would copy:", "would skip:")
        } else {
            ("copied:", "skipped:")
        };
        let _ = writeln!(out, "---");
        if self.dry_run {
            let _ = writeln!(out, "dry run: nothing was changed");
        }
        let _ = writeln!(
            out,
            "{copy:<12} {} objects, {}{}",
            self.copied,
            BinaryBytes(self.copied_bytes),
            if self.replaced > 0 {
                format!(
                    " ({} of them replacing a copy that differed from the file)",
                    self.replaced
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "{skip:<12} {} objects, {} (already in {target} and identical)",
            self.skipped,
            BinaryBytes(self.skipped_bytes)
        );
        let _ = writeln!(out, "{:<12} {}", "failed:", self.failed.len());
        for (key, reason) in &self.failed {
            let _ = writeln!(out, "  {key}: {reason}");
        }
        let _ = writeln!(
            out,
            "{:<12} {} files (their names cannot be storage keys)",
            "not copied:",
            self.not_copied.len()
        );
        for n in &self.not_copied {
            let _ = writeln!(out, "  {}: {}", n.path, n.reason);
        }
        if self.deleted > 0 {
            let _ = writeln!(out, "{:<12} {} source files", "deleted:", self.deleted);
        }
        if self.aborted_uploads > 0 {
            let _ = writeln!(
                out,
                "unfinished uploads left by an interrupted run {}: {}",
                if self.dry_run { "to abort" } else { "aborted" },
                self.aborted_uploads
            );
        }
        let i = &self.internal;
        let _ = writeln!(
            out,
            "left behind (the local backend's own files): {} content-type sidecars (carried \
             as Content-Type), {} temporary files, {} secret files, {} files of {} \
             unfinished uploads",
            i.sidecars,
            i.temporary,
            i.secrets,
            i.upload_files,
            i.unfinished_uploads.len()
        );
        for upload in &i.unfinished_uploads {
            let _ = writeln!(out, "  unfinished upload, not migrated: {upload}");
        }
        let secs = self.elapsed.as_secs_f64();
        let _ = if self.copied_bytes > 0 && !self.dry_run {
            writeln!(
                out,
                "took {secs:.1} s ({}/s)",
                BinaryBytes((self.copied_bytes as f64 / secs.max(0.001)) as u64)
            )
        } else {
            writeln!(out, "took {secs:.1} s")
        };
        let _ = match self.exit_code() {
            0 if self.dry_run => writeln!(out, "result: ok (dry run)"),
            0 => writeln!(out, "result: ok, every file is in {target}"),
            1 => writeln!(
                out,
                "result: {} objects failed (listed above); run again to retry them",
                self.failed.len()
            ),
            _ => writeln!(
                out,
                "result: {} files were not copied (listed above); rename or remove them \
                 and run again, or keep them elsewhere",
                self.not_copied.len()
            ),
        };
        out
    }
}

/// The bucket side: the backend, the transfer permits and the rate limit.
struct Target<'a> {
    s3: &'a S3Storage,
    counters: Arc<Counters>,
    jobs: usize,
    permits: Semaphore,
    limit: Option<RateLimit>,
}

/// A rate limit on uploads: each transfer of `n` bytes reserves the next `n / rate`
/// seconds and starts at the beginning of its reservation.
struct RateLimit {
    bytes_per_sec: u64,
    next: Mutex<Instant>,
}

impl RateLimit {
    async fn take(&self, bytes: u64) {
        let start = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

fn sdk_error<E: std::error::Error + 'static>(op: &str, e: E) -> String {
    format!("{op} failed: {}", DisplayErrorContext(e))
}

impl Target<'_> {
    fn full(&self, key: &ObjectKey) -> String {
        format!("{}{}", self.s3.prefix(), key)
    }

    async fn permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.permits
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<Existing>, String> {
        let out = self
            .s3
            .client()
            .head_object()
            .bucket(self.s3.bucket())
            .key(self.full(key))
            .send()
            .await;
        match out {
            Ok(out) => Ok(Some(Existing {
                size: out.content_length().unwrap_or_default().max(0) as u64,
                sha256: out
                    .metadata()
                    .and_then(|m| m.get(SHA256_METADATA))
                    .map(|s| s.trim().to_ascii_lowercase()),
            })),
            Err(e)
                if e.as_service_error().is_some_and(|s| s.is_not_found())
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 404) =>
            {
                Ok(None)
            }
            Err(e) => Err(sdk_error("HeadObject", e)),
        }
    }

    /// Reads the whole object and returns its size and hex SHA-256.
    async fn read_back(&self, key: &ObjectKey) -> Result<(u64, String), String> {
        let _permit = self.permit().await;
        self.counters.reading_back.fetch_add(1, Ordering::Relaxed);
        let result = self.read_back_counted(key).await;
        self.counters.reading_back.fetch_sub(1, Ordering::Relaxed);
        result
    }

    async fn read_back_counted(&self, key: &ObjectKey) -> Result<(u64, String), String> {
        let got = self
            .s3
            .get_range(key, None)
            .await
            .map_err(|e| format!("reading it back failed: {e}"))?;
        let mut body = got.body;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("reading it back failed: {e}"))?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((size, hex::encode(hasher.finalize())))
    }

    async fn file_body(path: &Path, offset: u64, len: u64) -> Result<ByteStream, String> {
        if len == 0 {
            return Ok(ByteStream::from_static(b""));
        }
        ByteStream::read_from()
            .path(path)
            .offset(offset)
            .length(Length::Exact(len))
            .build()
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    }

    async fn put_whole(&self, obj: &SourceObject, size: u64, sha256: &str) -> Result<(), String> {
        let _permit = self.permit().await;
        if let Some(limit) = &self.limit {
            limit.take(size).await;
        }
        let body = Self::file_body(&obj.path, 0, size).await?;
        self.s3
            .client()
            .put_object()
            .bucket(self.s3.bucket())
            .key(self.full(&obj.key))
            .content_length(size as i64)
            .set_content_type(obj.content_type.clone())
            .metadata(SHA256_METADATA, sha256)
            .body(body)
            .send()
            .await
            .map_err(|e| sdk_error("PutObject", e))?;
        Ok(())
    }

    async fn put_multipart(
        &self,
        obj: &SourceObject,
        size: u64,
        sha256: &str,
        progress: &Progress,
    ) -> Result<(), String> {
        let created = self
            .s3
            .client()
            .create_multipart_upload()
            .bucket(self.s3.bucket())
            .key(self.full(&obj.key))
            .set_content_type(obj.content_type.clone())
            .metadata(SHA256_METADATA, sha256)
            .send()
            .await
            .map_err(|e| sdk_error("CreateMultipartUpload", e))?;
        let upload_id = created
            .upload_id()
            .ok_or("the store gave no upload id")?
            .to_owned();
        let part_size = part_size_for(size);
        let count = size.div_ceil(part_size);
        let stored = AtomicU64::new(0);
        let result = async {
            let mut parts: Vec<PartInfo> = futures::stream::iter(1..=count)
                .map(|number| {
                    let (upload_id, stored) = (&upload_id, &stored);
                    async move {
                        let offset = (number - 1) * part_size;
                        let len = part_size.min(size - offset);
                        let _permit = self.permit().await;
                        if let Some(limit) = &self.limit {
                            limit.take(len).await;
                        }
                        let body = Self::file_body(&obj.path, offset, len).await?;
                        let out = self
                            .s3
                            .client()
                            .upload_part()
                            .bucket(self.s3.bucket())
                            .key(self.full(&obj.key))
                            .upload_id(upload_id)
                            .part_number(number as i32)
                            .content_length(len as i64)
                            .body(body)
                            .send()
                            .await
                            .map_err(|e| sdk_error("UploadPart", e))?;
                        let done = stored.fetch_add(1, Ordering::Relaxed) + 1;
                        progress.copied(len);
                        progress.detail(&format!(
                            "{}: part {number} of {count} stored ({done} of {count} done)",
                            obj.key
                        ));
                        Ok::<_, String>(PartInfo {
                            part_number: number as u32,
                            size: len,
                            etag: out.e_tag().unwrap_or_default().to_owned(),
                        })
                    }
                })
                .buffer_unordered(self.jobs)
                .try_collect()
                .await?;
            parts.sort_by_key(|p| p.part_number);
            self.s3
                .complete_multipart(&obj.key, &upload_id, &parts)
                .await
                .map_err(|e| format!("completing the upload failed: {e}"))?;
            Ok::<_, String>(())
        }
        .await;
        if let Err(e) = &result {
            if let Err(abort) = self.s3.abort_multipart(&obj.key, &upload_id).await {
                return Err(format!(
                    "{e}; and aborting upload {upload_id} failed too ({abort}): the next run \
                     or the bucket's lifecycle rule will"
                ));
            }
        }
        result
    }
}

/// The size and modification time of a file: what must not change between hashing
/// it and deleting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileState {
    size: u64,
    modified: Option<SystemTime>,
}

fn file_state(path: &Path) -> io::Result<FileState> {
    let meta = std::fs::metadata(path)?;
    Ok(FileState {
        size: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// Hashes a file: its state before reading, the bytes read and their hex SHA-256.
fn hash_file(path: &Path) -> io::Result<(FileState, u64, String)> {
    let state = file_state(path)?;
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0u8; MIB as usize];
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((state, size, hex::encode(hasher.finalize())))
}

/// What the run prints: a progress bar on a terminal (stderr), plain lines otherwise.
/// One line per object goes to stdout in both cases.
struct Progress {
    bar: Option<ProgressBar>,
    counters: Arc<Counters>,
    last_plain: Mutex<Instant>,
}

struct Counters {
    total: u64,
    objects: u64,
    /// Objects done with.
    settled: AtomicU64,
    /// Objects being read back right now.
    reading_back: AtomicU64,
    /// Bytes of objects settled (copied, skipped or failed) plus parts stored.
    handled: AtomicU64,
    /// Bytes uploaded.
    copied: AtomicU64,
    started: Instant,
}

impl Counters {
    fn rate(&self) -> Option<f64> {
        let secs = self.started.elapsed().as_secs_f64();
        let copied = self.copied.load(Ordering::Relaxed);
        (secs > 0.5 && copied > 0).then(|| copied as f64 / secs)
    }

    fn eta(&self) -> String {
        let left = self
            .total
            .saturating_sub(self.handled.load(Ordering::Relaxed));
        match self.rate() {
            Some(rate) if left > 0 => {
                format!(
                    "{}",
                    HumanDuration(Duration::from_secs_f64(left as f64 / rate))
                )
            }
            Some(_) => "0s".to_owned(),
            None => "-".to_owned(),
        }
    }

    fn objects_text(&self) -> String {
        let reading = self.reading_back.load(Ordering::Relaxed);
        format!(
            "{}/{} objects{}",
            self.settled.load(Ordering::Relaxed),
            self.objects,
            if reading > 0 {
                format!(", reading back {reading}")
            } else {
                String::new()
            }
        )
    }

    fn rate_text(&self) -> String {
        match self.rate() {
            Some(rate) => format!("{}/s", BinaryBytes(rate as u64)),
            None => "-/s".to_owned(),
        }
    }
}

impl Progress {
    fn new(total: u64, objects: u64) -> Self {
        let counters = Arc::new(Counters {
            total,
            objects,
            settled: AtomicU64::new(0),
            reading_back: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            copied: AtomicU64::new(0),
            started: Instant::now(),
        });
        // indicatif hides a bar whose stderr is not a terminal (it draws nothing at
        // all then), so the plain lines are ours to print in that case.
        let bar = io::stderr()
            .is_terminal()
            .then(|| ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()))
            .filter(|bar| !bar.is_hidden());
        if let Some(bar) = &bar {
            let (rate, eta, objects) = (counters.clone(), counters.clone(), counters.clone());
            let style = ProgressStyle::with_template(
                "[{bar:30}] {bytes}/{total_bytes}  {copy_rate}  ETA {copy_eta}  {objects}",
            )
            .expect("the template is valid")
            .with_key(
                "copy_rate",
                move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&rate.rate_text());
                },
            )
            .with_key(
                "copy_eta",
                move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&eta.eta());
                },
            )
            .with_key(
                "objects",
                move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&objects.objects_text());
                },
            )
            .progress_chars("=> ");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(500));
        }
        Self {
            bar,
            counters,
            last_plain: Mutex::new(Instant::now()),
        }
    }

    /// A line about one object, to stdout.
    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{text}")),
            None => println!("{text}"),
        }
    }

    /// A progress detail (a part stored): a line on stderr in plain mode only.
    fn detail(&self, text: &str) {
        if self.bar.is_none() {
            eprintln!("{text}");
        }
    }

    /// One more object is done with.
    fn settled(&self) {
        self.counters.settled.fetch_add(1, Ordering::Relaxed);
    }

    /// `bytes` were uploaded (and count as handled).
    fn copied(&self, bytes: u64) {
        self.counters.copied.fetch_add(bytes, Ordering::Relaxed);
        self.handled(bytes);
    }

    /// `bytes` were dealt with without being uploaded (skipped, failed, or the rest of
    /// an object whose parts were counted already).
    fn handled(&self, bytes: u64) {
        let handled = self.counters.handled.fetch_add(bytes, Ordering::Relaxed) + bytes;
        match &self.bar {
            Some(bar) => bar.set_position(handled),
            None => {
                let mut last = self.last_plain.lock().unwrap_or_else(|e| e.into_inner());
                if last.elapsed() >= PLAIN_PROGRESS_EVERY {
                    *last = Instant::now();
                    eprintln!("{}", self.status());
                }
            }
        }
    }

    fn status(&self) -> String {
        let c = &self.counters;
        let handled = c.handled.load(Ordering::Relaxed);
        let percent = if c.total == 0 {
            100.0
        } else {
            handled as f64 * 100.0 / c.total as f64
        };
        format!(
            "progress: {} of {} ({percent:.0}%), uploading at {}, about {} left",
            BinaryBytes(handled),
            BinaryBytes(c.total),
            c.rate_text(),
            c.eta()
        )
    }

    fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!("{}", self.status()),
        }
    }
}

/// Runs the migration of `options.from` into `s3` and returns the summary. Errors are
/// only what stops the whole run (the folder cannot be read, the bucket cannot be
/// listed); a failing object is counted in the summary and the run goes on.
pub async fn run(s3: &S3Storage, options: &MigrateArgs) -> Result<Summary, String> {
    let started = Instant::now();
    let root = options.from.clone();
    let scan = tokio::task::spawn_blocking(move || scan(&root))
        .await
        .map_err(|e| format!("scanning the folder failed: {e}"))?
        .map_err(|e| format!("cannot scan {}: {e}", options.from.display()))?;
    let total: u64 = scan.objects.iter().map(|o| o.size).sum();
    let target_name = format!("s3://{}/{}", s3.bucket(), s3.prefix());
    println!(
        "{}migrating {} ({} files, {}) to {target_name} at {} with {} transfers at once{}",
        if options.dry_run { "dry run: " } else { "" },
        options.from.display(),
        scan.objects.len(),
        BinaryBytes(total),
        s3.endpoint_name(),
        options.jobs,
        match options.limit_rate {
            Some(rate) => format!(", at most {}/s", BinaryBytes(rate)),
            None => String::new(),
        }
    );
    for n in &scan.not_copied {
        println!("not copied  {}: {}", n.path, n.reason);
    }

    let mut summary = Summary {
        dry_run: options.dry_run,
        not_copied: scan.not_copied.clone(),
        internal: scan.internal.clone(),
        ..Summary::default()
    };

    // An earlier run that was interrupted may have left multipart uploads to the keys
    // it was copying; they hold parts nobody will complete.
    let keys: HashSet<&ObjectKey> = scan.objects.iter().map(|o| &o.key).collect();
    let uploads = s3
        .list_uploads("")
        .await
        .map_err(|e| format!("cannot list the uploads in progress in {target_name}: {e}"))?;
    for upload in uploads.iter().filter(|u| keys.contains(&u.key)) {
        if options.dry_run {
            println!(
                "would abort the unfinished upload {} of {} (left by an interrupted run)",
                upload.upload_id, upload.key
            );
        } else {
            s3.abort_multipart(&upload.key, &upload.upload_id)
                .await
                .map_err(|e| {
                    format!("cannot abort the unfinished upload of {}: {e}", upload.key)
                })?;
            println!(
                "aborted the unfinished upload {} of {} (left by an interrupted run)",
                upload.upload_id, upload.key
            );
        }
        summary.aborted_uploads += 1;
    }

    let progress = Progress::new(total, scan.objects.len() as u64);
    let target = Target {
        s3,
        counters: progress.counters.clone(),
        jobs: options.jobs,
        permits: Semaphore::new(options.jobs),
        limit: options.limit_rate.map(|bytes_per_sec| RateLimit {
            bytes_per_sec,
            next: Mutex::new(Instant::now()),
        }),
    };
    let mut deleted_dirs = BTreeSet::new();
    let mut results = futures::stream::iter(&scan.objects)
        .map(|obj| {
            let (target, progress) = (&target, &progress);
            async move {
                let (outcome, size, deleted) = migrate_one(target, obj, options, progress).await;
                progress.settled();
                (obj, outcome, size, deleted)
            }
        })
        .buffer_unordered(options.jobs);
    while let Some((obj, outcome, size, deleted)) = results.next().await {
        let key = &obj.key;
        let size_text = BinaryBytes(size);
        let line = match &outcome {
            Outcome::Copied { replaced } => {
                summary.copied += 1;
                summary.copied_bytes += size;
                if *replaced {
                    summary.replaced += 1;
                }
                format!(
                    "{} {key}  ({size_text}{}){}",
                    if *replaced { "replaced" } else { "copied  " },
                    obj.content_type
                        .as_deref()
                        .map(|ct| format!(", {ct}"))
                        .unwrap_or_default(),
                    if *replaced {
                        "  (the bucket held a copy that differed from the file)"
                    } else {
                        ""
                    }
                )
            }
            Outcome::Skipped { read_back } => {
                summary.skipped += 1;
                summary.skipped_bytes += size;
                format!(
                    "skipped  {key}  ({size_text}, identical{})",
                    if *read_back { ", read back" } else { "" }
                )
            }
            Outcome::WouldCopy { replaced } => {
                summary.copied += 1;
                summary.copied_bytes += size;
                if *replaced {
                    summary.replaced += 1;
                }
                format!(
                    "would {} {key}  ({size_text}){}",
                    if *replaced { "replace" } else { "copy" },
                    if options.delete_source {
                        ", then delete the source once verified"
                    } else {
                        ""
                    }
                )
            }
            Outcome::WouldSkip { read_back } => {
                summary.skipped += 1;
                summary.skipped_bytes += size;
                format!(
                    "would skip {key}  ({size_text}, identical{}){}",
                    if *read_back { ", read back" } else { "" },
                    if options.delete_source && *read_back {
                        ", then delete the source"
                    } else {
                        ""
                    }
                )
            }
            Outcome::Failed(reason) => {
                summary.failed.push((key.to_string(), reason.clone()));
                format!("FAILED   {key}: {reason}")
            }
        };
        progress.line(&line);
        match deleted {
            Some(Ok(())) => {
                summary.deleted += 1;
                if let Some(parent) = obj.path.parent() {
                    deleted_dirs.insert(parent.to_owned());
                }
                progress.line(&format!("deleted  {} (source)", obj.path.display()));
            }
            Some(Err(e)) => {
                let reason = format!("copied and verified, but deleting the source failed: {e}");
                progress.line(&format!("FAILED   {key}: {reason}"));
                summary.failed.push((key.to_string(), reason));
            }
            None => {}
        }
    }
    drop(results);
    progress.finish();
    remove_empty_dirs(&options.from, deleted_dirs);
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Copies (or skips) one object. Returns the outcome, the size handled, and, with
/// `--delete-source`, whether the source was deleted.
async fn migrate_one(
    target: &Target<'_>,
    obj: &SourceObject,
    options: &MigrateArgs,
    progress: &Progress,
) -> (Outcome, u64, Option<Result<(), String>>) {
    let mut counted = 0u64;
    let mut size = obj.size;
    let result = async {
        let path = obj.path.clone();
        let (before, hashed_size, sha256) = tokio::task::spawn_blocking(move || hash_file(&path))
            .await
            .map_err(|e| format!("hashing failed: {e}"))?
            .map_err(|e| format!("cannot read {}: {e}", obj.path.display()))?;
        size = hashed_size;
        let existing = target.head(&obj.key).await?;
        let mut decision = decide(size, &sha256, existing.as_ref(), options.overwrite);
        let mut read_back = false;
        let must_read_back = options.verify_existing || options.delete_source;
        if decision == Decision::Compare || (decision == Decision::Skip && must_read_back) {
            let (got_size, got_sha) = target.read_back(&obj.key).await?;
            read_back = true;
            let identical = got_size == size && got_sha == sha256;
            decision = match (decision, identical) {
                (_, true) => Decision::Skip,
                // Our own copy, but its bytes do not match its checksum: replace it.
                (Decision::Skip, false) => Decision::Replace,
                (_, false) if options.overwrite => Decision::Replace,
                (_, false) => Decision::Conflict,
            };
        }
        let replaced = decision == Decision::Replace;
        match decision {
            Decision::Conflict => {
                return Err(format!(
                    "the bucket already holds a different object here that this command did \
                     not write ({} bytes, no {SHA256_METADATA} metadata); it was left alone \
                     (use --overwrite to replace it)",
                    existing.map_or(0, |e| e.size)
                ));
            }
            Decision::Skip if options.dry_run => {
                return Ok((Outcome::WouldSkip { read_back }, None));
            }
            Decision::Skip => {
                let deleted =
                    (options.delete_source && read_back).then(|| delete_source(obj, before));
                return Ok((Outcome::Skipped { read_back }, deleted));
            }
            _ if options.dry_run => return Ok((Outcome::WouldCopy { replaced }, None)),
            _ => {}
        }

        if size > PART_SIZE {
            progress.line(&format!(
                "copying  {}  ({} in {} parts)",
                obj.key,
                BinaryBytes(size),
                size.div_ceil(part_size_for(size))
            ));
            // Parts report their own bytes as they are stored.
            counted = size;
            target.put_multipart(obj, size, &sha256, progress).await?;
        } else {
            target.put_whole(obj, size, &sha256).await?;
            progress.copied(size);
            counted = size;
        }

        // Verify: the store's size and metadata, then every byte read back.
        let verified = async {
            let head = target
                .head(&obj.key)
                .await?
                .ok_or("the object is missing right after its upload")?;
            if head.size != size {
                return Err(format!("the bucket holds {} bytes, not {size}", head.size));
            }
            if head.sha256.as_deref() != Some(sha256.as_str()) {
                return Err(format!(
                    "the object's {SHA256_METADATA} metadata is {:?}, not {sha256}",
                    head.sha256
                ));
            }
            let (got_size, got_sha) = target.read_back(&obj.key).await?;
            if got_size != size || got_sha != sha256 {
                return Err(format!(
                    "read back {got_size} bytes with SHA-256 {got_sha}, expected {size} bytes \
                     with {sha256}"
                ));
            }
            Ok::<_, String>(())
        }
        .await;
        if let Err(e) = verified {
            // Never leave an unverified object that a later run could skip as identical.
            let cleanup = match target.s3.delete(&obj.key).await {
                Ok(()) => "the object was deleted".to_owned(),
                Err(d) => format!("deleting the object failed too ({d}); delete it by hand"),
            };
            return Err(format!("verification failed: {e}; {cleanup}"));
        }
        let now = file_state(&obj.path).map_err(|e| format!("cannot stat the source: {e}"))?;
        if now != before {
            return Err(
                "the file changed while it was being copied; the bucket holds the earlier \
                 version: run again to copy the new one"
                    .to_owned(),
            );
        }
        let deleted = options.delete_source.then(|| delete_source(obj, before));
        Ok((Outcome::Copied { replaced }, deleted))
    }
    .await;
    progress.handled(size.saturating_sub(counted));
    match result {
        Ok((outcome, deleted)) => (outcome, size, deleted),
        Err(reason) => (Outcome::Failed(reason), size, None),
    }
}

/// Deletes a verified file and its sidecar, if the file is still as it was hashed.
fn delete_source(obj: &SourceObject, hashed: FileState) -> Result<(), String> {
    let now = file_state(&obj.path).map_err(|e| format!("cannot stat it: {e}"))?;
    if now != hashed {
        return Err("the file changed after it was hashed; it was kept".to_owned());
    }
    std::fs::remove_file(&obj.path).map_err(|e| e.to_string())?;
    if let Some(sidecar) = &obj.sidecar {
        match std::fs::remove_file(sidecar) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("deleting {} failed: {e}", sidecar.display())),
        }
    }
    Ok(())
}

/// Removes the folders that deleting sources left empty, deepest first, up to (not
/// including) the root. A folder that still holds anything stays.
fn remove_empty_dirs(root: &Path, dirs: BTreeSet<PathBuf>) {
    let mut all = BTreeSet::new();
    for dir in dirs {
        let mut d = dir.as_path();
        while d != root && d.starts_with(root) {
            all.insert(d.to_owned());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
    }
    let mut ordered: Vec<PathBuf> = all.into_iter().collect();
    ordered.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in ordered {
        let _ = std::fs::remove_dir(&dir); // fails, as it should, when not empty
    }
}

/// The `migrate` subcommand: checks the configuration, connects to the bucket, runs,
/// prints the summary, and answers the exit code (2 for a configuration problem).
pub async fn command(config: &Config, args: &MigrateArgs) -> ExitCode {
    let StorageBackend::S3(s3) = &config.backend else {
        eprintln!(
            "recorder: STORAGE_BACKEND: migrate --to s3 needs STORAGE_BACKEND=s3 and the S3 \
             variables the server will run with"
        );
        return ExitCode::from(2);
    };
    match std::fs::metadata(&args.from) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            eprintln!("recorder: --from: {} is not a folder", args.from.display());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("recorder: --from: cannot read {}: {e}", args.from.display());
            return ExitCode::from(2);
        }
    }
    let storage = match crate::app::connect_s3(s3).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("recorder: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&storage, args).await {
        Ok(summary) => {
            let target = format!("s3://{}/{}", storage.bucket(), storage.prefix());
            print!("{}", summary.report(&target));
            ExitCode::from(summary.exit_code())
        }
        Err(e) => {
            eprintln!("recorder: migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_path(path: &str) -> Kind {
        let segments: Vec<&str> = path.split('/').collect();
        classify(&segments)
    }

    fn key(text: &str) -> ObjectKey {
        ObjectKey::parse(text).unwrap()
    }

    #[test]
    fn the_local_backends_own_files_are_recognised_and_not_copied() {
        assert_eq!(classify_path(".uploads/0123/part-00001"), Kind::Upload);
        assert_eq!(
            classify_path(".uploads/.completing-x-y/meta.json"),
            Kind::Upload
        );
        assert_eq!(classify_path(".server-secret"), Kind::Secret);
        assert_eq!(classify_path(".researcher-token"), Kind::Secret);
        assert_eq!(classify_path(".server-secret.0a1b.tmp"), Kind::Secret);
        assert_eq!(classify_path("sessions/s1/.tmp-abc"), Kind::Temporary);
        assert_eq!(
            classify_path("sessions/s1/.recording_p1_1.webm.meta.json"),
            Kind::Sidecar {
                object: "sessions/s1/recording_p1_1.webm".into()
            }
        );
        // A secret's name below the root is somebody's file, not ours.
        assert!(matches!(
            classify_path("sessions/.server-secret"),
            Kind::NotCopied(_)
        ));
    }

    #[test]
    fn valid_names_become_keys_and_others_are_reported_with_a_reason() {
        assert_eq!(
            classify_path("sessions/s1/session.json"),
            Kind::Object(key("sessions/s1/session.json"))
        );
        assert_eq!(
            classify_path("sessions/s1/extra/deep/notes.txt"),
            Kind::Object(key("sessions/s1/extra/deep/notes.txt"))
        );
        for bad in [
            "sessions/s1/my notes.txt",
            "sessions/s1/.DS_Store",
            "sessions/.trash/x",
        ] {
            match classify_path(bad) {
                Kind::NotCopied(reason) => assert!(reason.contains("storage key"), "{reason}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn content_types_follow_what_the_local_backend_serves() {
        assert_eq!(
            content_type_from_extension(&key("sessions/s/recording_p1_1.webm")).as_deref(),
            Some("video/webm")
        );
        assert_eq!(
            content_type_from_extension(&key("sessions/s/r.MP4")).as_deref(),
            Some("video/mp4")
        );
        assert_eq!(
            content_type_from_extension(&key("sessions/s/session.json")).as_deref(),
            Some("application/json")
        );
        assert_eq!(content_type_from_extension(&key("notes.txt")), None);
        assert_eq!(content_type_from_extension(&key("README")), None);
    }

    #[test]
    fn scanning_sorts_files_carries_sidecar_types_and_lists_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |rel: &str, bytes: &[u8]| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        };
        write("sessions/b/session.json", b"{}");
        write("sessions/a/recording_p1_5.webm", b"\x1a\x45\xdf\xa3");
        write(
            "sessions/a/.recording_p1_5.webm.meta.json",
            br#"{"content_type":"video/webm;codecs=vp9,opus"}"#,
        );
        write("sessions/a/my notes.txt", b"x");
        write("sessions/a/.tmp-1234", b"half");
        write(".server-secret", b"s");
        write(".uploads/0123456789abcdef0123456789abcdef/meta.json",
            br#"{"key":"sessions/a/recording_p2_9.webm","content_type":"video/webm","created":"2026-01-01T00:00:00Z"}"#);
        write(".uploads/0123456789abcdef0123456789abcdef/part-00001", b"p");
        write("empty.txt", b"");
        std::fs::create_dir_all(root.join("sessions/empty-folder")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(
            root.join("sessions/b/session.json"),
            root.join("sessions/b/link.json"),
        )
        .unwrap();

        let scan = scan(root).unwrap();
        let keys: Vec<&str> = scan.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "empty.txt",
                "sessions/a/recording_p1_5.webm",
                "sessions/b/session.json"
            ]
        );
        assert_eq!(
            scan.objects[1].content_type.as_deref(),
            Some("video/webm;codecs=vp9,opus")
        );
        assert!(scan.objects[1].sidecar.is_some());
        assert_eq!(
            scan.objects[2].content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(scan.objects[0].size, 0);
        let not: Vec<&str> = scan.not_copied.iter().map(|n| n.path.as_str()).collect();
        #[cfg(unix)]
        assert_eq!(not, ["sessions/a/my notes.txt", "sessions/b/link.json"]);
        assert_eq!(
            scan.internal,
            InternalFiles {
                sidecars: 1,
                temporary: 1,
                secrets: 1,
                upload_files: 2,
                unfinished_uploads: vec![
                    "sessions/a/recording_p2_9.webm (upload 0123456789abcdef0123456789abcdef)"
                        .into()
                ],
            }
        );
    }

    #[test]
    fn decisions_skip_identical_replace_own_versions_and_refuse_foreign_objects() {
        let ours = |size, sha: &str| Existing {
            size,
            sha256: Some(sha.to_owned()),
        };
        let foreign = |size| Existing { size, sha256: None };
        assert_eq!(decide(5, "aa", None, false), Decision::Copy);
        assert_eq!(decide(5, "aa", Some(&ours(5, "aa")), false), Decision::Skip);
        assert_eq!(
            decide(5, "aa", Some(&ours(5, "bb")), false),
            Decision::Replace
        );
        assert_eq!(
            decide(5, "aa", Some(&ours(6, "aa")), false),
            Decision::Replace
        );
        assert_eq!(decide(5, "aa", Some(&foreign(5)), false), Decision::Compare);
        assert_eq!(
            decide(5, "aa", Some(&foreign(6)), false),
            Decision::Conflict
        );
        assert_eq!(decide(5, "aa", Some(&foreign(6)), true), Decision::Replace);
    }

    #[test]
    fn parts_are_16_mib_until_ten_thousand_would_not_do() {
        assert_eq!(part_size_for(100 * MIB), 16 * MIB);
        assert_eq!((100 * MIB).div_ceil(part_size_for(100 * MIB)), 7);
        let huge = 1024 * 1024 * MIB; // 1 TiB
        let part = part_size_for(huge);
        assert!(huge.div_ceil(part) <= u64::from(shared::MAX_PARTS));
        assert_eq!(part % MIB, 0);
        assert!(part <= shared::MAX_PART_SIZE);
    }

    #[test]
    fn rates_and_sources_parse_and_bad_ones_say_what_to_give() {
        assert_eq!(parse_rate("20M"), Ok(20 * MIB));
        assert_eq!(parse_rate("800k"), Ok(800 * 1024));
        assert_eq!(parse_rate("1GiB/s"), Ok(1 << 30));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert!(parse_rate("fast").unwrap_err().contains("20M"));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("5T").is_err());
        assert_eq!(parse_from("local:data"), Ok(PathBuf::from("data")));
        assert_eq!(parse_from("local:/srv/a:b"), Ok(PathBuf::from("/srv/a:b")));
        assert!(parse_from("data").unwrap_err().contains("local:PATH"));
        assert!(parse_from("s3:bucket").is_err());
        assert_eq!(parse_jobs("4"), Ok(4));
        assert!(parse_jobs("0").is_err());
        assert!(parse_jobs("65").is_err());
    }

    #[test]
    fn the_exit_code_says_failed_before_not_copied() {
        let mut s = Summary::default();
        assert_eq!(s.exit_code(), 0);
        s.not_copied.push(NotCopied {
            path: "a b".into(),
            reason: "r".into(),
        });
        assert_eq!(s.exit_code(), EXIT_NOT_COPIED);
        s.failed.push(("k".into(), "r".into()));
        assert_eq!(s.exit_code(), 1);
        assert!(s.report("s3://b/").contains("a b: r"));
    }

    #[tokio::test]
    async fn the_rate_limit_spaces_transfers_by_their_size() {
        let limit = RateLimit {
            bytes_per_sec: 1000,
            next: Mutex::new(Instant::now()),
        };
        let start = Instant::now();
        limit.take(100).await; // starts at once, reserves 0.1 s
        limit.take(100).await; // waits for the first reservation
        limit.take(1).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(195), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}
