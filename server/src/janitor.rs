//! Abandoned uploads: the janitor, and salvage.
//!
//! A browser that closes its tab mid-recording leaves a multipart upload open: its
//! parts sit in the store, the manifest entry stays `uploading`, and nobody completes
//! it. Two tools deal with such uploads, on every backend:
//!
//! * **Salvage** ([`salvage`], `recorder-server salvage --session S --recording R`)
//!   turns what reached the store into a playable recording marked `partial`: it keeps
//!   the stored parts 1..k that S3's rules allow to be completed (numbered without gaps,
//!   every kept part but the last at least [`shared::MIN_PART_SIZE`]; see
//!   [`usable_parts`]), completes the upload with them, checks the object starts like
//!   its container (magic bytes), and records `partial` with its size and a note saying
//!   what was kept. With nothing usable the upload is aborted and recorded `aborted`;
//!   bytes that are not media are deleted and recorded `failed`; both with the reason.
//! * **The janitor** ([`run`], `recorder-server janitor --older-than 24h [--salvage]
//!   [--dry-run]`, or periodically inside `serve` with `JANITOR_INTERVAL_SECS`) lists the
//!   uploads in progress ([`Storage::list_uploads`]) started longer ago than the age,
//!   and for each: salvages it (with `--salvage`; always in `serve`) or aborts it,
//!   recording the outcome in the manifest when the upload is a known recording's.
//!   Uploads no manifest knows are aborted without a manifest change; a recording whose
//!   manifest is corrupt is left alone and reported.
//!
//! Both are safe against a client completing at the same moment and against several
//! janitors (replicas) at once: the store lets exactly one complete or abort win (the
//! local backend claims the upload by a rename), the loser finds the upload gone and
//! reports it as handled elsewhere, and a manifest entry only moves forward
//! ([`shared::RecordingStatus::rank`]).
//!
//! The age is measured from the upload's start, so it must be longer than the longest
//! recording (the default is a day).

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use shared::keys;
use shared::manifest::Change;
use shared::media::{Container, MediaType};
use shared::{ObjectKey, Recording, RecordingId, RecordingStatus, SessionId, SessionManifest};
use time::OffsetDateTime;

use crate::app::Clock;
use crate::config::{Config, StorageBackend};
use crate::manifests::{Manifests, ManifestsError};
use crate::signing::{Secret, UrlSigner};
use crate::storage::local::LocalStorage;
use crate::storage::{PartInfo, Storage, StorageError, UploadInfo};

/// The janitor's default age (`--older-than`): a day.
pub const DEFAULT_OLDER_THAN: Duration = Duration::from_secs(86_400);

/// Parses a duration such as `90s`, `30m`, `24h`, `7d`, `2w` or `1h30m` (units `s`,
/// `m`, `h`, `d`, `w`, summed; `0` alone is zero).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("{text:?} is not a duration like 90s, 30m, 24h, 7d or 1h30m");
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() || text.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// A duration for people: `1d 2h`, `3h 5m`, `42s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m {secs}s"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// The prefix of the stored parts that can be completed into an object: parts numbered
/// 1, 2, ... without a gap, cut after the first part smaller than
/// [`shared::MIN_PART_SIZE`] (only the last part of an object may be that small) and
/// after [`shared::MAX_PARTS`]. `parts` must be sorted by part number, as
/// [`Storage::list_parts`] gives them.
pub fn usable_parts(parts: &[PartInfo]) -> &[PartInfo] {
    let mut kept = 0;
    for (i, part) in parts.iter().take(shared::MAX_PARTS as usize).enumerate() {
        if part.part_number != i as u32 + 1 || part.size == 0 {
            break;
        }
        kept = i + 1;
        if part.size < shared::MIN_PART_SIZE {
            break;
        }
    }
    &parts[..kept]
}

/// What salvage made of an abandoned upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Salvaged {
    /// Parts 1..=`parts_kept` were completed into a playable object of `size` bytes,
    /// recorded `partial`.
    Partial {
        /// The object's size.
        size: u64,
        /// How many parts were kept.
        parts_kept: usize,
        /// How many parts the store held.
        parts_stored: usize,
    },
    /// Nothing could be completed; the upload was aborted and recorded `aborted`.
    Aborted {
        /// Why, for people (also in the manifest entry's `error`).
        reason: String,
    },
    /// The completed bytes were not media; the object was deleted and recorded `failed`.
    Failed {
        /// Why, for people (also in the manifest entry's `error`).
        reason: String,
    },
}

impl std::fmt::Display for Salvaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Salvaged::Partial {
                size,
                parts_kept,
                parts_stored,
            } => write!(
                f,
                "salvaged as partial: parts 1-{parts_kept} of {parts_stored} stored kept, {size} bytes"
            ),
            Salvaged::Aborted { reason } => write!(f, "aborted: {reason}"),
            Salvaged::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// Why salvage could not run.
#[derive(Debug, thiserror::Error)]
pub enum SalvageError {
    /// No such session or recording.
    #[error("{0}")]
    NotFound(String),
    /// The recording has no upload in progress (it is complete, aborted, already
    /// salvaged, or its upload was ended by someone else meanwhile).
    #[error("{0}")]
    NotInProgress(String),
    /// The manifest could not be read or written.
    #[error(transparent)]
    Manifests(#[from] ManifestsError),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Salvages the upload of one recording (see the module docs): the recording must be
/// `uploading` with an upload id in its manifest entry. `now` stamps the manifest.
pub async fn salvage(
    storage: &dyn Storage,
    manifests: &Manifests,
    session: &SessionId,
    recording: &RecordingId,
    now: OffsetDateTime,
) -> Result<Salvaged, SalvageError> {
    let manifest = manifests
        .load(session)
        .await?
        .ok_or_else(|| SalvageError::NotFound(format!("there is no session {session}")))?;
    let entry = manifest.recording(recording).ok_or_else(|| {
        SalvageError::NotFound(format!("session {session} has no recording {recording}"))
    })?;
    let upload_id = match (entry.status, &entry.upload_id) {
        (RecordingStatus::Uploading, Some(id)) => id.clone(),
        (RecordingStatus::Uploading, None) => {
            return Err(SalvageError::NotInProgress(format!(
                "recording {recording} is uploading but its entry names no upload"
            )));
        }
        (status, _) => {
            return Err(SalvageError::NotInProgress(format!(
                "recording {recording} is {}, not uploading",
                shared::api::status_name(status)
            )));
        }
    };
    salvage_upload(storage, manifests, session, entry, &upload_id, now).await
}

/// Salvages `upload_id`, the upload of `entry`.
async fn salvage_upload(
    storage: &dyn Storage,
    manifests: &Manifests,
    session: &SessionId,
    entry: &Recording,
    upload_id: &str,
    now: OffsetDateTime,
) -> Result<Salvaged, SalvageError> {
    let key = &entry.key;
    let gone = || {
        SalvageError::NotInProgress(format!(
            "upload {upload_id} of recording {} is no longer in progress (completed or \
             aborted meanwhile)",
            entry.id
        ))
    };
    let stored = match storage.list_parts(key, upload_id).await {
        Ok(parts) => parts,
        Err(StorageError::UploadNotFound { .. }) => return Err(gone()),
        Err(e) => return Err(e.into()),
    };
    let kept = usable_parts(&stored);
    if kept.is_empty() {
        let reason = if stored.is_empty() {
            "the abandoned upload holds no part".to_owned()
        } else {
            format!(
                "the abandoned upload holds no usable part 1 (it holds parts {})",
                part_numbers(&stored)
            )
        };
        storage.abort_multipart(key, upload_id).await?;
        record(
            manifests,
            session,
            entry,
            RecordingStatus::Aborted,
            None,
            &reason,
            now,
        )
        .await?;
        return Ok(Salvaged::Aborted { reason });
    }
    let object = match storage.complete_multipart(key, upload_id, kept).await {
        Ok(meta) => meta,
        Err(StorageError::UploadNotFound { .. }) => return Err(gone()),
        Err(e) => return Err(e.into()),
    };
    let container = MediaType::parse(&entry.content_type)
        .map(|t| t.container())
        .ok()
        .or_else(|| {
            key.file_name()
                .rsplit_once('.')
                .and_then(|(_, ext)| Container::from_extension(ext))
        });
    let head = head_bytes(storage, key).await?;
    if !container.is_some_and(|c| c.matches_magic(&head)) {
        let reason = format!(
            "the abandoned upload's bytes do not start like a {} file; the object was deleted",
            container.map_or("media", |c| c.extension())
        );
        storage.delete(key).await?;
        record(
            manifests,
            session,
            entry,
            RecordingStatus::Failed,
            None,
            &reason,
            now,
        )
        .await?;
        return Ok(Salvaged::Failed { reason });
    }
    let note = if kept.len() == stored.len() {
        format!(
            "Salvaged from an abandoned upload: all {} stored parts kept ({} bytes); what \
             the browser had not yet sent is missing.",
            stored.len(),
            object.size
        )
    } else {
        format!(
            "Salvaged from an abandoned upload: parts 1-{} of the {} stored kept ({} bytes); \
             the rest could not be joined on (parts {}), and what the browser had not yet \
             sent is missing.",
            kept.len(),
            stored.len(),
            object.size,
            part_numbers(&stored[kept.len()..])
        )
    };
    record(
        manifests,
        session,
        entry,
        RecordingStatus::Partial,
        Some(object.size),
        &note,
        now,
    )
    .await?;
    Ok(Salvaged::Partial {
        size: object.size,
        parts_kept: kept.len(),
        parts_stored: stored.len(),
    })
}

/// `1, 2, 4` (at most ten, then `...`).
fn part_numbers(parts: &[PartInfo]) -> String {
    let mut out = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i == 10 {
            out.push_str(", ...");
            break;
        }
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}", p.part_number);
    }
    out
}

/// The first bytes of an object (up to 16).
async fn head_bytes(storage: &dyn Storage, key: &ObjectKey) -> Result<Vec<u8>, StorageError> {
    let mut got = storage.get_range(key, Some(0..16)).await?;
    let mut head = Vec::with_capacity(16);
    while let Some(chunk) = got.body.next().await {
        head.extend_from_slice(&chunk.map_err(StorageError::backend)?);
        if head.len() >= 16 {
            break;
        }
    }
    head.truncate(16);
    Ok(head)
}

/// Records `entry` as moved to `status`, with `note` in its `error` field.
async fn record(
    manifests: &Manifests,
    session: &SessionId,
    entry: &Recording,
    status: RecordingStatus,
    size: Option<u64>,
    note: &str,
    now: OffsetDateTime,
) -> Result<(), ManifestsError> {
    let mut next = entry.clone();
    next.status = status;
    next.size = size;
    next.finished_at = Some(now);
    next.upload_id = None;
    next.error = Some(note.to_owned());
    next.discovered = false;
    manifests
        .record(session, Change::Recording { recording: next }, now)
        .await
        .map(|_| ())
}

// ---------------------------------------------------------------------------------------
// The janitor.

/// What the janitor should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JanitorOptions {
    /// Uploads started at least this long ago are abandoned.
    pub older_than: Duration,
    /// Salvage known recordings' uploads instead of aborting them.
    pub salvage: bool,
    /// Report what would be done; change nothing.
    pub dry_run: bool,
}

/// What happened to one abandoned upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Dry run: it would be salvaged (the parts that would be kept, their bytes).
    WouldSalvage {
        /// Parts that would be kept.
        parts_kept: usize,
        /// Their bytes.
        bytes: u64,
    },
    /// Dry run: it would be aborted.
    WouldAbort,
    /// Salvaged (see [`Salvaged`]; the manifest says so).
    Salvaged(Salvaged),
    /// Aborted; `recorded` when a manifest entry was moved to `aborted`.
    Aborted {
        /// Whether the recording's manifest entry now says `aborted`.
        recorded: bool,
    },
    /// Ended by someone else (a client's complete, another janitor) while we looked.
    AlreadyEnded,
    /// Left alone: the store does not say when it started, or its manifest is corrupt.
    Skipped(String),
    /// Something failed; the upload may still be there for the next run.
    Error(String),
}

/// One upload the janitor looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// The upload's key.
    pub key: ObjectKey,
    /// The store's upload id.
    pub upload_id: String,
    /// How long ago it started.
    pub age: Option<Duration>,
    /// The recording it belongs to, when a manifest lists it with this upload.
    pub recording: Option<(SessionId, RecordingId)>,
    /// What was done.
    pub outcome: Outcome,
}

/// What one janitor run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Uploads in progress when the run started.
    pub in_progress: usize,
    /// Those old enough to be handled, with what was done to each.
    pub handled: Vec<Handled>,
}

impl Report {
    /// Whether any upload could not be handled.
    pub fn has_errors(&self) -> bool {
        self.handled
            .iter()
            .any(|h| matches!(h.outcome, Outcome::Error(_)))
    }

    /// One line per handled upload, then a summary line.
    pub fn lines(&self, options: &JanitorOptions) -> Vec<String> {
        let mut lines = Vec::new();
        let (mut salvaged, mut aborted, mut failed, mut other) = (0, 0, 0, 0);
        for h in &self.handled {
            let what = match &h.outcome {
                Outcome::WouldSalvage { parts_kept, bytes } => {
                    format!("would salvage: keep parts 1-{parts_kept}, {bytes} bytes")
                }
                Outcome::WouldAbort => "would abort".to_owned(),
                Outcome::Salvaged(s) => {
                    match s {
                        Salvaged::Partial { .. } => salvaged += 1,
                        Salvaged::Aborted { .. } => aborted += 1,
                        Salvaged::Failed { .. } => failed += 1,
                    }
                    s.to_string()
                }
                Outcome::Aborted { recorded } => {
                    aborted += 1;
                    if *recorded {
                        "aborted (recorded as aborted)".to_owned()
                    } else {
                        "aborted (no manifest lists it)".to_owned()
                    }
                }
                Outcome::AlreadyEnded => {
                    other += 1;
                    "already ended by someone else".to_owned()
                }
                Outcome::Skipped(why) => {
                    other += 1;
                    format!("skipped: {why}")
                }
                Outcome::Error(why) => {
                    failed += 1;
                    format!("error: {why}")
                }
            };
            let age = h.age.map_or("?".to_owned(), format_duration);
            lines.push(format!(
                "{}  upload {}  started {age} ago: {what}",
                h.key, h.upload_id
            ));
        }
        let old = self.handled.len();
        let age = format_duration(options.older_than);
        lines.push(if options.dry_run {
            format!(
                "dry run: {} uploads in progress, {old} started more than {age} ago; nothing was changed",
                self.in_progress
            )
        } else {
            format!(
                "{} uploads in progress, {old} started more than {age} ago: {salvaged} salvaged, \
                 {aborted} aborted, {failed} failed, {other} left",
                self.in_progress
            )
        });
        lines
    }
}

/// Finds the uploads in progress under `sessions/` started at least
/// `options.older_than` before `now` and salvages or aborts each (see the module docs).
/// Failures of single uploads are reported in the [`Report`]; only failing to list the
/// uploads is an error.
pub async fn run(
    storage: &dyn Storage,
    manifests: &Manifests,
    options: &JanitorOptions,
    now: SystemTime,
) -> Result<Report, StorageError> {
    let uploads = storage.list_uploads(keys::SESSIONS_PREFIX).await?;
    let mut report = Report {
        in_progress: uploads.len(),
        handled: Vec::new(),
    };
    let now_utc = OffsetDateTime::from(now);
    for upload in uploads {
        let age = upload
            .initiated
            .map(SystemTime::from)
            .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO));
        let Some(upload_age) = age else {
            report.handled.push(Handled {
                key: upload.key.clone(),
                upload_id: upload.upload_id.clone(),
                age,
                recording: None,
                outcome: Outcome::Skipped("the store does not say when it started".to_owned()),
            });
            continue;
        };
        if upload_age < options.older_than {
            continue;
        }
        let handled = handle(storage, manifests, options, &upload, age, now_utc).await;
        report.handled.push(handled);
    }
    Ok(report)
}

/// The manifest entry `upload` belongs to, if a manifest lists it as uploading with
/// exactly this upload id.
fn owner<'a>(manifest: &'a SessionManifest, upload: &UploadInfo) -> Option<&'a Recording> {
    let name = keys::parse_recording_name(upload.key.file_name())?;
    manifest.recording(&name.id).filter(|r| {
        r.key == upload.key
            && r.status == RecordingStatus::Uploading
            && r.upload_id.as_deref() == Some(upload.upload_id.as_str())
    })
}

async fn handle(
    storage: &dyn Storage,
    manifests: &Manifests,
    options: &JanitorOptions,
    upload: &UploadInfo,
    age: Option<Duration>,
    now: OffsetDateTime,
) -> Handled {
    let mut handled = Handled {
        key: upload.key.clone(),
        upload_id: upload.upload_id.clone(),
        age,
        recording: None,
        outcome: Outcome::WouldAbort,
    };
    let session = keys::session_of(upload.key.as_str());
    let manifest = match &session {
        Some(s) => match manifests.load(s).await {
            Ok(m) => m,
            Err(ManifestsError::Corrupt { message, .. }) => {
                handled.outcome = Outcome::Skipped(format!(
                    "the session's manifest is corrupt, so the upload is kept: {message}"
                ));
                return handled;
            }
            Err(e) => {
                handled.outcome = Outcome::Error(e.to_string());
                return handled;
            }
        },
        None => None,
    };
    let entry = manifest.as_ref().and_then(|m| owner(m, upload));
    if let (Some(s), Some(e)) = (&session, entry) {
        handled.recording = Some((s.clone(), e.id.clone()));
    }
    handled.outcome = match (entry, &session) {
        (Some(entry), Some(session)) if options.salvage => {
            if options.dry_run {
                match storage.list_parts(&upload.key, &upload.upload_id).await {
                    Ok(parts) => {
                        let kept = usable_parts(&parts);
                        if kept.is_empty() {
                            Outcome::WouldAbort
                        } else {
                            Outcome::WouldSalvage {
                                parts_kept: kept.len(),
                                bytes: kept.iter().map(|p| p.size).sum(),
                            }
                        }
                    }
                    Err(StorageError::UploadNotFound { .. }) => Outcome::AlreadyEnded,
                    Err(e) => Outcome::Error(e.to_string()),
                }
            } else {
                match salvage_upload(storage, manifests, session, entry, &upload.upload_id, now)
                    .await
                {
                    Ok(s) => Outcome::Salvaged(s),
                    Err(SalvageError::NotInProgress(_)) => Outcome::AlreadyEnded,
                    Err(e) => Outcome::Error(e.to_string()),
                }
            }
        }
        _ if options.dry_run => Outcome::WouldAbort,
        (entry, session) => {
            match storage
                .abort_multipart(&upload.key, &upload.upload_id)
                .await
            {
                Err(e) => Outcome::Error(e.to_string()),
                Ok(()) => match (entry, session) {
                    (Some(entry), Some(session)) => {
                        let reason = format!(
                            "abandoned: not completed {} after it started; aborted by the janitor",
                            age.map_or("long".to_owned(), format_duration)
                        );
                        match record(
                            manifests,
                            session,
                            entry,
                            RecordingStatus::Aborted,
                            None,
                            &reason,
                            now,
                        )
                        .await
                        {
                            Ok(()) => Outcome::Aborted { recorded: true },
                            Err(e) => Outcome::Error(format!(
                                "aborted, but the manifest could not record it: {e}"
                            )),
                        }
                    }
                    _ => Outcome::Aborted { recorded: false },
                },
            }
        }
    };
    handled
}

/// Runs the janitor every `interval` (the first run at once), salvaging uploads older
/// than `max_age`, until the runtime stops. Each run's summary is logged; a run that
/// fails is logged and the next one tries again.
pub fn spawn_periodic(
    storage: Arc<dyn Storage>,
    manifests: Manifests,
    interval: Duration,
    max_age: Duration,
    clock: Clock,
) -> tokio::task::JoinHandle<()> {
    let options = JanitorOptions {
        older_than: max_age,
        salvage: true,
        dry_run: false,
    };
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match run(storage.as_ref(), &manifests, &options, clock()).await {
                Ok(report) => {
                    let lines = report.lines(&options);
                    for line in &lines[..lines.len() - 1] {
                        tracing::info!(target: "server::janitor", "{line}");
                    }
                    if !report.handled.is_empty() {
                        tracing::info!(target: "server::janitor", "{}", lines[lines.len() - 1]);
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "server::janitor", error = %e, "could not list uploads")
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------------------
// The subcommands.

/// The arguments of `recorder-server janitor`.
#[derive(Debug, Clone, clap::Args)]
pub struct JanitorArgs {
    /// Uploads started longer ago than this are abandoned: `90s`, `30m`, `24h`, `7d`,
    /// `1h30m`. Make it longer than the longest recording.
    #[arg(long, value_name = "AGE", default_value = "24h", value_parser = parse_duration)]
    pub older_than: Duration,
    /// Salvage known recordings' uploads (keep what is playable, mark it `partial`)
    /// instead of aborting them.
    #[arg(long)]
    pub salvage: bool,
    /// Say what would be done and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The arguments of `recorder-server salvage`.
#[derive(Debug, Clone, clap::Args)]
pub struct SalvageArgs {
    /// The session.
    #[arg(long)]
    pub session: SessionId,
    /// The recording (`recording_{problem}_{ms}`) whose upload was abandoned.
    #[arg(long)]
    pub recording: RecordingId,
}

/// The store the configuration names, for the command-line tools. The local backend
/// gets a signer with a throwaway secret: these tools never presign a URL.
async fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, String> {
    match &config.backend {
        StorageBackend::Local => {
            let mut bytes = [0u8; 32];
            rand::fill(&mut bytes);
            let secret = Secret::new(bytes.to_vec()).expect("32 bytes is long enough");
            let signer = UrlSigner::new(secret, "http://127.0.0.1");
            Ok(Arc::new(LocalStorage::new(config.data_dir.clone(), signer)))
        }
        StorageBackend::S3(s3) => crate::app::connect_s3(s3)
            .await
            .map(|s| Arc::new(s) as Arc<dyn Storage>)
            .map_err(|e| e.to_string()),
    }
}

/// `recorder-server janitor`: one run, a line per upload handled, a summary. Exit code
/// 1 if any upload could not be handled or the uploads could not be listed.
pub async fn janitor_command(config: &Config, args: &JanitorArgs) -> ExitCode {
    let storage = match open_storage(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("recorder: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let manifests = Manifests::new(storage.clone());
    let options = JanitorOptions {
        older_than: args.older_than,
        salvage: args.salvage,
        dry_run: args.dry_run,
    };
    match run(storage.as_ref(), &manifests, &options, SystemTime::now()).await {
        Ok(report) => {
            for line in report.lines(&options) {
                println!("{line}");
            }
            if report.has_errors() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("recorder: janitor: cannot list the uploads in progress: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `recorder-server salvage`: salvages one recording's upload and prints what became of
/// it. Exit code 0 when it was salvaged as partial, 3 when it had to be aborted or
/// failed (recorded so in the manifest), 1 when it could not run.
pub async fn salvage_command(config: &Config, args: &SalvageArgs) -> ExitCode {
    let storage = match open_storage(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("recorder: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let manifests = Manifests::new(storage.clone());
    let now = OffsetDateTime::now_utc();
    match salvage(
        storage.as_ref(),
        &manifests,
        &args.session,
        &args.recording,
        now,
    )
    .await
    {
        Ok(outcome) => {
            println!("{}/{}: {outcome}", args.session, args.recording);
            match outcome {
                Salvaged::Partial { .. } => ExitCode::SUCCESS,
                _ => ExitCode::from(3),
            }
        }
        Err(e) => {
            eprintln!("recorder: salvage: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;
    use bytes::Bytes;
    use shared::api::StartUploadRequest;
    use shared::{MIN_PART_SIZE, ProblemId};

    fn part(n: u32, size: u64) -> PartInfo {
        PartInfo {
            part_number: n,
            size,
            etag: format!("e{n}"),
        }
    }

    #[test]
    fn durations_read_like_people_write_them() {
        for (text, secs) in [
            ("0", 0),
            ("0s", 0),
            ("90s", 90),
            ("30m", 1_800),
            ("24h", 86_400),
            ("7d", 604_800),
            ("2w", 1_209_600),
            ("1h30m", 5_400),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        for bad in [
            "",
            "h",
            "24",
            "1.5h",
            "-1h",
            "1y",
            "24 h",
            "99999999999999999999w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(format_duration(Duration::from_secs(93_784)), "1d 2h");
        assert_eq!(format_duration(Duration::from_secs(3_900)), "1h 5m");
        assert_eq!(format_duration(Duration::from_secs(42)), "42s");
    }

    #[test]
    fn usable_parts_are_contiguous_and_only_the_last_is_small() {
        let big = MIN_PART_SIZE;
        let cases: Vec<(Vec<PartInfo>, usize)> = vec![
            (vec![], 0),
            (vec![part(1, 10)], 1),
            (vec![part(1, big), part(2, 10)], 2),
            (vec![part(1, big), part(2, big), part(3, big)], 3),
            // A small part can only be the last one kept.
            (vec![part(1, 10), part(2, big)], 1),
            (vec![part(1, big), part(2, 10), part(3, 10)], 2),
            // A gap ends what can be joined.
            (vec![part(1, big), part(3, big)], 1),
            (vec![part(2, big), part(3, big)], 0),
        ];
        for (parts, kept) in cases {
            assert_eq!(usable_parts(&parts).len(), kept, "{parts:?}");
        }
    }

    fn state() -> (Arc<dyn Storage>, Manifests) {
        let signer = UrlSigner::new(Secret::new(vec![5u8; 32]).unwrap(), "http://127.0.0.1:1");
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(signer));
        let manifests = Manifests::new(storage.clone());
        (storage, manifests)
    }

    /// Opens an upload as the API does and stores `parts` (number, bytes).
    async fn abandoned(
        storage: &Arc<dyn Storage>,
        manifests: &Manifests,
        parts: &[(u32, Vec<u8>)],
    ) -> (SessionId, Recording) {
        let session = SessionId::parse("s1").unwrap();
        let req = StartUploadRequest {
            problem_id: ProblemId::parse("p1").unwrap(),
            content_type: MediaType::parse("video/webm;codecs=vp8").unwrap(),
        };
        let id = keys::recording_id(&req.problem_id, 1_700_000_000_000);
        let key = keys::recording_key(&session, &id, Container::Webm);
        let upload_id = storage
            .create_multipart(&key, req.content_type.as_str())
            .await
            .unwrap();
        for (n, bytes) in parts {
            let body = futures::stream::iter([Ok(Bytes::from(bytes.clone()))]).boxed();
            storage
                .put_part(&key, &upload_id, *n, body, bytes.len() as u64)
                .await
                .unwrap();
        }
        let entry = Recording {
            id,
            problem_id: Some(req.problem_id),
            key,
            content_type: req.content_type.as_str().to_owned(),
            size: None,
            duration_ms: None,
            started_at: Some(OffsetDateTime::now_utc()),
            finished_at: None,
            status: RecordingStatus::Uploading,
            sha256: None,
            upload_id: Some(upload_id),
            error: None,
            discovered: false,
            extra: Default::default(),
        };
        manifests
            .record(
                &session,
                Change::Recording {
                    recording: entry.clone(),
                },
                OffsetDateTime::now_utc(),
            )
            .await
            .unwrap();
        (session, entry)
    }

    fn webm(n: usize) -> Vec<u8> {
        let mut v = vec![7u8; n];
        v[..4].copy_from_slice(&[0x1A, 0x45, 0xDF, 0xA3]);
        v
    }

    async fn entry_after(
        manifests: &Manifests,
        session: &SessionId,
        id: &RecordingId,
    ) -> Recording {
        let m = manifests.load(session).await.unwrap().unwrap();
        m.recording(id).unwrap().clone()
    }

    #[tokio::test]
    async fn a_small_first_part_is_kept_alone_and_the_rest_dropped() {
        let (storage, manifests) = state();
        let (s, e) = abandoned(
            &storage,
            &manifests,
            &[(1, webm(1_000)), (2, vec![1; MIN_PART_SIZE as usize])],
        )
        .await;
        let now = OffsetDateTime::now_utc();
        let out = salvage(storage.as_ref(), &manifests, &s, &e.id, now)
            .await
            .unwrap();
        assert_eq!(
            out,
            Salvaged::Partial {
                size: 1_000,
                parts_kept: 1,
                parts_stored: 2
            }
        );
        assert_eq!(storage.head(&e.key).await.unwrap().size, 1_000);
        let after = entry_after(&manifests, &s, &e.id).await;
        assert_eq!(after.status, RecordingStatus::Partial);
        assert_eq!(after.size, Some(1_000));
        assert!(after.error.unwrap().contains("parts 1-1 of the 2"));
        assert!(after.upload_id.is_none());
        // Salvaging again is refused: nothing is in progress any more.
        let again = salvage(storage.as_ref(), &manifests, &s, &e.id, now).await;
        assert!(
            matches!(again, Err(SalvageError::NotInProgress(_))),
            "{again:?}"
        );
    }

    #[tokio::test]
    async fn without_a_part_1_the_upload_is_aborted_with_the_reason() {
        let (storage, manifests) = state();
        let (s, e) = abandoned(&storage, &manifests, &[(2, webm(10)), (3, webm(10))]).await;
        let out = salvage(
            storage.as_ref(),
            &manifests,
            &s,
            &e.id,
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
        let Salvaged::Aborted { reason } = out else {
            panic!("expected Aborted, got {out:?}")
        };
        assert!(reason.contains("parts 2, 3"), "{reason}");
        assert!(storage.list_uploads("").await.unwrap().is_empty());
        assert!(matches!(
            storage.head(&e.key).await,
            Err(StorageError::NotFound { .. })
        ));
        let after = entry_after(&manifests, &s, &e.id).await;
        assert_eq!(after.status, RecordingStatus::Aborted);
        assert_eq!(after.error.as_deref(), Some(reason.as_str()));
    }

    #[tokio::test]
    async fn bytes_that_are_not_media_are_deleted_and_recorded_failed() {
        let (storage, manifests) = state();
        let (s, e) = abandoned(&storage, &manifests, &[(1, b"GIF89a....".to_vec())]).await;
        let out = salvage(
            storage.as_ref(),
            &manifests,
            &s,
            &e.id,
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
        assert!(matches!(out, Salvaged::Failed { .. }), "{out:?}");
        assert!(matches!(
            storage.head(&e.key).await,
            Err(StorageError::NotFound { .. })
        ));
        let after = entry_after(&manifests, &s, &e.id).await;
        assert_eq!(after.status, RecordingStatus::Failed);
    }

    #[tokio::test]
    async fn the_janitor_acts_only_on_uploads_older_than_its_age() {
        let (storage, manifests) = state();
        let (s, e) = abandoned(&storage, &manifests, &[(1, webm(100))]).await;
        let stray_key = ObjectKey::parse("sessions/s1/recording_p9_1.webm").unwrap();
        storage
            .create_multipart(&stray_key, "video/webm")
            .await
            .unwrap();
        let options = |older_than, salvage, dry_run| JanitorOptions {
            older_than,
            salvage,
            dry_run,
        };
        let now = SystemTime::now();
        let young = run(
            storage.as_ref(),
            &manifests,
            &options(DEFAULT_OLDER_THAN, true, false),
            now,
        )
        .await
        .unwrap();
        assert_eq!((young.in_progress, young.handled.len()), (2, 0));

        let later = now + DEFAULT_OLDER_THAN + Duration::from_secs(1);
        let dry = run(
            storage.as_ref(),
            &manifests,
            &options(DEFAULT_OLDER_THAN, true, true),
            later,
        )
        .await
        .unwrap();
        assert_eq!(dry.handled.len(), 2);
        assert_eq!(storage.list_uploads("").await.unwrap().len(), 2, "dry run");
        assert!(
            dry.lines(&options(DEFAULT_OLDER_THAN, true, true))
                .last()
                .unwrap()
                .contains("nothing was changed")
        );

        let done = run(
            storage.as_ref(),
            &manifests,
            &options(DEFAULT_OLDER_THAN, true, false),
            later,
        )
        .await
        .unwrap();
        assert!(!done.has_errors(), "{done:?}");
        let outcomes: Vec<_> = done
            .handled
            .iter()
            .map(|h| (h.key.clone(), h.outcome.clone()))
            .collect();
        assert!(
            outcomes.contains(&(
                e.key.clone(),
                Outcome::Salvaged(Salvaged::Partial {
                    size: 100,
                    parts_kept: 1,
                    parts_stored: 1
                })
            )),
            "{outcomes:?}"
        );
        assert!(
            outcomes.contains(&(stray_key, Outcome::Aborted { recorded: false })),
            "{outcomes:?}"
        );
        assert!(storage.list_uploads("").await.unwrap().is_empty());
        assert_eq!(
            entry_after(&manifests, &s, &e.id).await.status,
            RecordingStatus::Partial
        );
    }

    #[test]
    fn the_periodic_janitor_is_off_unless_configured_and_bounded() {
        let config = Config::from_vars(|_| None).unwrap();
        assert_eq!(config.janitor_interval, None);
        assert_eq!(config.janitor_max_age, DEFAULT_OLDER_THAN);
        let vars = |interval: &'static str, age: &'static str| {
            Config::from_vars(move |n| match n {
                "JANITOR_INTERVAL_SECS" => Some(interval.to_owned()),
                "JANITOR_MAX_AGE_SECS" => Some(age.to_owned()),
                _ => None,
            })
        };
        let on = vars("600", "7200").unwrap();
        assert_eq!(on.janitor_interval, Some(Duration::from_secs(600)));
        assert_eq!(on.janitor_max_age, Duration::from_secs(7_200));
        for (interval, age, var) in [
            ("5", "7200", "JANITOR_INTERVAL_SECS"),
            ("often", "7200", "JANITOR_INTERVAL_SECS"),
            ("600", "60", "JANITOR_MAX_AGE_SECS"),
        ] {
            assert_eq!(vars(interval, age).unwrap_err().var, var);
        }
    }
}
