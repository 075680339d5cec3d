//! The S3 backend: any S3-compatible store (AWS S3, Garage, MinIO, Cloudflare R2)
//! through the official SDK.
//!
//! Browsers send media straight to the bucket through URLs signed here; the server only
//! talks to the store to create, list, complete and abort uploads and to read and write
//! manifests. Two SDK clients share one connection pool: one for the server's own
//! calls (to `S3_ENDPOINT`) and one that only signs, for the endpoint browsers reach
//! (`S3_PUBLIC_ENDPOINT`, when that differs). A signed URL is never rewritten: its host
//! is part of the signature.
//!
//! Both clients ask for checksums only where the S3 API requires one. Since
//! aws-sdk-s3 1.69 the default is to add `x-amz-checksum-*` and
//! `x-amz-sdk-checksum-algorithm` to uploads (and checksum mode to downloads); in a
//! presigned URL those become headers a browser does not send, and several
//! S3-compatible stores refuse them.
//!
//! Rules the store may not enforce, we do: the multipart part sequence and the 5 MiB
//! minimum part size (Garage enforces neither), checked against what the bucket itself
//! reports (ListParts), not what a caller claims.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedCredentialsProvider, SharedHttpClient, StalledStreamProtectionConfig,
    timeout::TimeoutConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream as SdkByteStream, DateTime as SdkDateTime, SdkBody};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use shared::ObjectKey;
use shared::api::PresignedRequest;
use time::OffsetDateTime;

use super::memory::{check_dir_prefix, check_part_request, check_presign};
use super::part_signer::{ObjectUrl, PROBE_KEY, PartSigner};
use super::{
    ByteStream, GetResult, ObjectMeta, PartInfo, PresignOp, Result, Storage, StorageError,
    UploadInfo, check_part_sequence,
};

/// Size of the parts `put_stream` uploads: comfortably above the 5 MiB S3 minimum,
/// small enough that memory stays flat (one part is buffered at a time).
pub const STREAM_PART_SIZE: usize = 8 * 1024 * 1024;

/// Shortest validity of a presigned URL.
pub const MIN_PRESIGN_TTL: Duration = Duration::from_secs(60);

/// Longest validity of a presigned URL: the SigV4 limit of 7 days.
pub const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How far before `now` a presigned URL starts to be valid, so that a store whose
/// clock runs a little behind ours still accepts it.
pub const PRESIGN_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Where the bucket is and how to address it. Credentials are not here: they come from
/// the standard AWS chain ([`S3Storage::connect`]) or are given explicitly
/// ([`S3Storage::with_credentials`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// The bucket (`S3_BUCKET`).
    pub bucket: String,
    /// A custom endpoint such as `http://127.0.0.1:3900` (`S3_ENDPOINT`); `None` for
    /// AWS S3 itself.
    pub endpoint: Option<String>,
    /// The endpoint browsers reach, when it differs from `endpoint`
    /// (`S3_PUBLIC_ENDPOINT`). Presigned URLs are signed for this host.
    pub public_endpoint: Option<String>,
    /// The store's region (`S3_REGION`, else `AWS_REGION`); Garage's is `garage`,
    /// R2's `auto`. `None` takes the AWS chain's region.
    pub region: Option<String>,
    /// Path-style addressing (`http://host/bucket/key`) rather than virtual-hosted
    /// (`http://bucket.host/key`); `None` means "when a custom endpoint is set"
    /// (`S3_FORCE_PATH_STYLE`).
    pub force_path_style: Option<bool>,
    /// A prefix put before every key in the bucket, such as `recorder/`
    /// (`S3_KEY_PREFIX`); empty for none. Slashes at either end are normalised.
    pub key_prefix: String,
}

impl From<&crate::config::S3Config> for S3Settings {
    fn from(c: &crate::config::S3Config) -> Self {
        Self {
            bucket: c.bucket.clone(),
            endpoint: c.endpoint.clone(),
            public_endpoint: c.public_endpoint.clone(),
            region: c.region.clone(),
            force_path_style: Some(c.force_path_style),
            key_prefix: c.key_prefix.clone(),
        }
    }
}

impl S3Settings {
    /// Settings for `bucket` at a custom endpoint, path-style, with no prefix.
    pub fn custom(
        bucket: impl Into<String>,
        endpoint: impl Into<String>,
        region: impl Into<String>,
    ) -> Self {
        Self {
            bucket: bucket.into(),
            endpoint: Some(endpoint.into()),
            region: Some(region.into()),
            ..Self::default()
        }
    }

    /// Whether requests use path-style addressing.
    pub fn path_style(&self) -> bool {
        self.force_path_style.unwrap_or(self.endpoint.is_some())
    }

    /// The key prefix as stored: empty, or ending in exactly one `/`.
    pub fn normalized_prefix(&self) -> String {
        let trimmed = self.key_prefix.trim_matches('/');
        if trimmed.is_empty() {
            String::new()
        } else {
            format!("{trimmed}/")
        }
    }
}

/// A bucket on an S3-compatible store.
#[derive(Clone)]
pub struct S3Storage {
    client: Client,
    presigner: Client,
    bucket: String,
    prefix: String,
    region: String,
    endpoint: Option<String>,
    credentials: SharedCredentialsProvider,
    /// Signs part URLs without the SDK's pipeline; made on first use (it needs one
    /// presigned URL from the SDK to learn where objects live).
    part_signer: Arc<tokio::sync::OnceCell<PartSigner>>,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Storage")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Why an [`S3Storage`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3SetupError {
    /// No bucket name.
    #[error("S3_BUCKET: is empty; name the bucket to store recordings in")]
    NoBucket,
    /// No region from the settings or the AWS chain.
    #[error(
        "S3_REGION: no region is set; set S3_REGION (or AWS_REGION) to the store's region \
         (for example us-east-1 on AWS, garage for Garage, auto for R2)"
    )]
    NoRegion,
    /// The AWS chain found no credentials provider at all.
    #[error(
        "credentials: none were found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
         (or AWS_PROFILE with a profile file)"
    )]
    NoCredentials,
    /// An endpoint that is not an absolute http(s) URL.
    #[error("{var}: must be an http:// or https:// URL, not {value:?}")]
    BadEndpoint {
        /// The variable.
        var: &'static str,
        /// What it held.
        value: String,
    },
}

/// The one HTTP client both SDK clients share: hyper with rustls on ring, HTTP and
/// HTTPS.
fn http_client() -> SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

fn check_endpoint(var: &'static str, value: &Option<String>) -> Result<(), S3SetupError> {
    match value {
        Some(v) if !(v.starts_with("http://") || v.starts_with("https://")) => {
            Err(S3SetupError::BadEndpoint {
                var,
                value: v.clone(),
            })
        }
        _ => Ok(()),
    }
}

impl S3Storage {
    /// Builds the backend with credentials from the standard AWS chain (environment,
    /// profile files, web identity, container and instance metadata). Makes no request:
    /// call [`crate::s3_setup::self_check`] to find out whether the bucket answers.
    pub async fn connect(settings: S3Settings) -> Result<Self, S3SetupError> {
        let http = http_client();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http.clone());
        if let Some(region) = &settings.region {
            // A configured region must stop the chain from looking for one: its last
            // resort asks the instance metadata service, a network call off this host.
            loader = loader.region(Region::new(region.clone()));
        }
        let chain = loader.load().await;
        let region = settings
            .region
            .clone()
            .or_else(|| chain.region().map(|r| r.to_string()));
        let credentials = chain
            .credentials_provider()
            .ok_or(S3SetupError::NoCredentials)?;
        Self::build(settings, region, credentials, http)
    }

    /// Builds the backend with fixed credentials (tests, and the Garage harness).
    /// Makes no request.
    pub fn with_credentials(
        settings: S3Settings,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Result<Self, S3SetupError> {
        let credentials = SharedCredentialsProvider::new(Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "recorder-static",
        ));
        let region = settings.region.clone();
        Self::build(settings, region, credentials, http_client())
    }

    /// Builds the backend with any credentials provider (tests of what a failing AWS
    /// chain looks like). Makes no request.
    #[cfg(test)]
    pub(crate) fn with_provider(
        settings: S3Settings,
        credentials: SharedCredentialsProvider,
    ) -> Result<Self, S3SetupError> {
        let region = settings.region.clone();
        Self::build(settings, region, credentials, http_client())
    }

    fn build(
        settings: S3Settings,
        region: Option<String>,
        credentials: SharedCredentialsProvider,
        http: SharedHttpClient,
    ) -> Result<Self, S3SetupError> {
        if settings.bucket.trim().is_empty() {
            return Err(S3SetupError::NoBucket);
        }
        check_endpoint("S3_ENDPOINT", &settings.endpoint)?;
        check_endpoint("S3_PUBLIC_ENDPOINT", &settings.public_endpoint)?;
        let region = region
            .filter(|r| !r.trim().is_empty())
            .ok_or(S3SetupError::NoRegion)?;
        let client_for = |endpoint: Option<&String>| {
            let mut config = aws_sdk_s3::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new(region.clone()))
                .credentials_provider(credentials.clone())
                .http_client(http.clone())
                .force_path_style(settings.path_style())
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
                // Upload bodies may come from a slow participant's connection (the old
                // upload route); only a stalled download is an error.
                .stalled_stream_protection(
                    StalledStreamProtectionConfig::enabled()
                        .upload_enabled(false)
                        .build(),
                )
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(10))
                        .build(),
                );
            if let Some(endpoint) = endpoint {
                config = config.endpoint_url(endpoint.trim_end_matches('/'));
            }
            Client::from_conf(config.build())
        };
        let client = client_for(settings.endpoint.as_ref());
        let part_signer = Arc::new(tokio::sync::OnceCell::new());
        let presigner = client_for(
            settings
                .public_endpoint
                .as_ref()
                .or(settings.endpoint.as_ref()),
        );
        Ok(Self {
            client,
            presigner,
            prefix: settings.normalized_prefix(),
            bucket: settings.bucket,
            region,
            endpoint: settings.endpoint,
            credentials,
            part_signer,
        })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix in the bucket: empty, or ending in `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The endpoint the server talks to, as people say it: the custom endpoint, or
    /// `AWS S3`.
    pub fn endpoint_name(&self) -> &str {
        self.endpoint.as_deref().unwrap_or("AWS S3")
    }

    /// The SDK client for the server's own calls (used by the setup command).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The key in the bucket: the prefix, then the key.
    fn full(&self, key: &ObjectKey) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }

    /// A key read back from the bucket, without the prefix. Objects that are not ours
    /// (outside the prefix, or keys our rules refuse) are `None`.
    fn ours(&self, full: &str) -> Option<ObjectKey> {
        let key = full.strip_prefix(&self.prefix)?;
        match ObjectKey::parse(key) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::debug!(bucket = %self.bucket, key = full, error = %e, "skipping a foreign object");
                None
            }
        }
    }

    /// Reads the stored parts of an upload, every page.
    async fn stored_parts(&self, key: &ObjectKey, upload_id: &str) -> Result<Vec<PartInfo>> {
        let mut pages = self
            .client
            .list_parts()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(upload_id)
            .into_paginator()
            .send();
        let mut parts = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_err(e, "ListParts", Some(key), Some(upload_id)))?;
            for part in page.parts() {
                parts.push(PartInfo {
                    part_number: part.part_number().unwrap_or_default().max(0) as u32,
                    size: part.size().unwrap_or_default().max(0) as u64,
                    etag: part.e_tag().unwrap_or_default().to_owned(),
                });
            }
        }
        parts.sort_by_key(|p| p.part_number);
        Ok(parts)
    }

    async fn upload_bytes_part(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        part_number: u32,
        bytes: Bytes,
    ) -> Result<PartInfo> {
        let size = bytes.len() as u64;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(upload_id)
            .part_number(part_number as i32)
            .content_length(size as i64)
            .body(SdkByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| map_err(e, "UploadPart", Some(key), Some(upload_id)))?;
        Ok(PartInfo {
            part_number,
            size,
            etag: out.e_tag().unwrap_or_default().to_owned(),
        })
    }

    async fn complete_checked(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        parts: &[PartInfo],
    ) -> Result<ObjectMeta> {
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        CompletedPart::builder()
                            .part_number(p.part_number as i32)
                            .e_tag(&p.etag)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let size: u64 = parts.iter().map(|p| p.size).sum();
        let out = match self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(upload_id)
            .multipart_upload(completed)
            .send()
            .await
            .map_err(|e| map_err(e, "CompleteMultipartUpload", Some(key), Some(upload_id)))
        {
            Ok(out) => out,
            Err(StorageError::UploadNotFound { .. }) => {
                return self
                    .completed_by_lost_answer(key, upload_id, size, parts.len())
                    .await;
            }
            Err(e) => return Err(e),
        };
        Ok(ObjectMeta {
            key: key.clone(),
            size,
            last_modified: None,
            etag: out.e_tag().map(str::to_owned),
        })
    }

    /// The upload was there a moment ago (its parts were just listed) and now is not:
    /// most likely the SDK retried a complete whose first answer was lost, and the first
    /// attempt succeeded. Accept the object if it is exactly what this complete makes (a
    /// multipart object of `parts` parts and `size` bytes); otherwise report the upload
    /// as gone.
    async fn completed_by_lost_answer(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        size: u64,
        parts: usize,
    ) -> Result<ObjectMeta> {
        let gone = || StorageError::UploadNotFound {
            key: key.to_string(),
            upload_id: upload_id.to_owned(),
        };
        let meta = match self.head(key).await {
            Ok(meta) => meta,
            Err(StorageError::NotFound { .. }) => return Err(gone()),
            Err(e) => return Err(e),
        };
        let suffix = format!("-{parts}");
        let multipart_of_n = meta
            .etag
            .as_deref()
            .is_some_and(|e| e.trim_matches('"').ends_with(&suffix));
        if meta.size == size && multipart_of_n {
            tracing::info!(key = %key, upload_id, "complete answered NoSuchUpload after a retry; the object is in place");
            Ok(meta)
        } else {
            Err(gone())
        }
    }

    /// Streams the rest of `body` into a fresh multipart upload, in parts of
    /// [`STREAM_PART_SIZE`], starting with `buffer` (the `total` bytes already read).
    /// Returns the parts; the caller completes or aborts.
    async fn stream_parts(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        mut buffer: BytesMut,
        mut body: ByteStream,
        max_size: u64,
        mut total: u64,
    ) -> Result<Vec<PartInfo>> {
        let mut parts = Vec::new();
        loop {
            while buffer.len() >= STREAM_PART_SIZE {
                let part = buffer.split_to(STREAM_PART_SIZE).freeze();
                let number = parts.len() as u32 + 1;
                parts.push(self.upload_bytes_part(key, upload_id, number, part).await?);
            }
            match body.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(StorageError::backend)?;
                    total += chunk.len() as u64;
                    if total > max_size {
                        return Err(StorageError::TooLarge { limit: max_size });
                    }
                    buffer.extend_from_slice(&chunk);
                }
                None => break,
            }
        }
        if !buffer.is_empty() {
            let number = parts.len() as u32 + 1;
            parts.push(
                self.upload_bytes_part(key, upload_id, number, buffer.freeze())
                    .await?,
            );
        }
        Ok(parts)
    }

    async fn abort_quietly(&self, key: &ObjectKey, upload_id: &str) {
        if let Err(e) = self.abort_multipart(key, upload_id).await {
            tracing::warn!(key = %key, upload_id, error = %e, "could not abort an upload after a failure; the bucket's lifecycle rule will");
        }
    }

    /// When a URL presigned at `now` for `ttl` starts to be valid, and for how long.
    fn validity(now: SystemTime, ttl: Duration) -> (SystemTime, Duration) {
        let ttl = ttl.clamp(MIN_PRESIGN_TTL, MAX_PRESIGN_TTL);
        let start = now - PRESIGN_CLOCK_SKEW;
        (start, (ttl + PRESIGN_CLOCK_SKEW).min(MAX_PRESIGN_TTL))
    }

    fn presign_config(now: SystemTime, ttl: Duration) -> Result<(PresigningConfig, SystemTime)> {
        let (start, expires_in) = Self::validity(now, ttl);
        let config = PresigningConfig::builder()
            .start_time(start)
            .expires_in(expires_in)
            .build()
            .map_err(|e| StorageError::Presign(e.to_string()))?;
        Ok((config, start + expires_in))
    }

    /// The direct part signer, made on first use.
    async fn part_signer(&self) -> Result<&PartSigner> {
        self.part_signer
            .get_or_try_init(|| async {
                let (config, _) = Self::presign_config(SystemTime::now(), MIN_PRESIGN_TTL)?;
                let probe = self
                    .presigner
                    .get_object()
                    .bucket(&self.bucket)
                    .key(PROBE_KEY)
                    .presigned(config)
                    .await
                    .map_err(|e| StorageError::Presign(DisplayErrorContext(e).to_string()))?;
                Ok(PartSigner::new(
                    ObjectUrl::from_probe(probe.uri())?,
                    self.region.clone(),
                    self.credentials.clone(),
                ))
            })
            .await
    }

    /// Presigns through the SDK's own presigner (every operation but UploadPart, and
    /// the tests' reference for that one).
    async fn presign_with_sdk(
        &self,
        op: &PresignOp,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<PresignedRequest> {
        let (config, expires) = Self::presign_config(now, ttl)?;
        let signed = match op {
            PresignOp::Put {
                key,
                content_type,
                size,
            } => self
                .presigner
                .put_object()
                .bucket(&self.bucket)
                .key(self.full(key))
                .content_type(content_type)
                .content_length(*size as i64)
                .presigned(config)
                .await
                .map_err(|e| StorageError::Presign(DisplayErrorContext(e).to_string()))?,
            PresignOp::UploadPart {
                key,
                upload_id,
                part_number,
                size,
            } => self
                .presigner
                .upload_part()
                .bucket(&self.bucket)
                .key(self.full(key))
                .upload_id(upload_id)
                .part_number(*part_number as i32)
                .content_length(*size as i64)
                .presigned(config)
                .await
                .map_err(|e| StorageError::Presign(DisplayErrorContext(e).to_string()))?,
            PresignOp::Get { key, download_as } => {
                let mut request = self
                    .presigner
                    .get_object()
                    .bucket(&self.bucket)
                    .key(self.full(key));
                if let Some(name) = download_as {
                    request = request
                        .response_content_disposition(format!("attachment; filename=\"{name}\""))
                        .response_content_type(download_content_type(name));
                }
                request
                    .presigned(config)
                    .await
                    .map_err(|e| StorageError::Presign(DisplayErrorContext(e).to_string()))?
            }
        };
        let headers = signed
            .headers()
            .filter(|(name, _)| {
                !name.eq_ignore_ascii_case("content-length") && !name.eq_ignore_ascii_case("host")
            })
            .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
            .collect();
        let expires_at = OffsetDateTime::from(expires);
        Ok(PresignedRequest {
            method: signed.method().to_owned(),
            url: signed.uri().to_owned(),
            headers,
            expires_at,
        })
    }
}

/// Content type offered with a download, from the file name's extension.
fn download_content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
    match shared::media::Container::from_extension(ext) {
        Some(container) => container.default_content_type(true),
        None if ext.eq_ignore_ascii_case("json") => "application/json",
        None => "application/octet-stream",
    }
}

/// What stores answer for "no content type given" (AWS: `binary/octet-stream`, Garage:
/// `application/octet-stream`); reported as `None`. The product never stores media
/// under these types, so nothing is lost.
fn is_default_content_type(ct: &str) -> bool {
    matches!(ct, "binary/octet-stream" | "application/octet-stream" | "")
}

fn to_offset(dt: Option<&SdkDateTime>) -> Option<OffsetDateTime> {
    let dt = dt?;
    OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(dt.secs()) * 1_000_000_000 + i128::from(dt.subsec_nanos()),
    )
    .ok()
}

/// Turns an SDK error into a [`StorageError`], naming the operation and key.
fn map_err<E>(
    err: SdkError<E>,
    op: &'static str,
    key: Option<&ObjectKey>,
    upload_id: Option<&str>,
) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().unwrap_or_default();
    let key_text = key.map(ToString::to_string).unwrap_or_default();
    match (code, status) {
        ("NoSuchUpload", _) => StorageError::UploadNotFound {
            key: key_text,
            upload_id: upload_id.unwrap_or_default().to_owned(),
        },
        ("NoSuchKey", _) => StorageError::NotFound { key: key_text },
        ("NotFound", Some(404)) | ("", Some(404)) if key.is_some() && upload_id.is_none() => {
            StorageError::NotFound { key: key_text }
        }
        ("InvalidPart" | "InvalidPartOrder" | "EntityTooSmall", _) => {
            StorageError::InvalidPart(format!(
                "{op} refused by the store: {}",
                err.message().unwrap_or(code)
            ))
        }
        // The caller knows the size; it replaces this 0.
        ("InvalidRange", _) | (_, Some(416)) => StorageError::RangeNotSatisfiable { size: 0 },
        _ => {
            let on = match (key, upload_id) {
                (Some(k), Some(u)) => format!(" on {k} (upload {u})"),
                (Some(k), None) => format!(" on {k}"),
                _ => String::new(),
            };
            StorageError::backend(format!("S3 {op}{on} failed: {}", DisplayErrorContext(&err)))
        }
    }
}

/// Parses `bytes START-END/SIZE` from a `Content-Range` header.
fn parse_content_range(value: &str) -> Option<(Range<u64>, u64)> {
    let rest = value.strip_prefix("bytes ")?;
    let (span, size) = rest.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    Some((start..end + 1, size.trim().parse().ok()?))
}

#[async_trait]
impl Storage for S3Storage {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn location(&self, key: &ObjectKey) -> String {
        format!("s3://{}/{}", self.bucket, self.full(key))
    }

    async fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<ObjectMeta> {
        let size = bytes.len() as u64;
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .content_length(size as i64)
            .body(SdkByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| map_err(e, "PutObject", Some(key), None))?;
        Ok(ObjectMeta {
            key: key.clone(),
            size,
            last_modified: None,
            etag: out.e_tag().map(str::to_owned),
        })
    }

    async fn put_stream(
        &self,
        key: &ObjectKey,
        mut body: ByteStream,
        content_type: &str,
        max_size: u64,
    ) -> Result<ObjectMeta> {
        // Read up to one part first: a body that ends before that is one PutObject.
        let mut buffer = BytesMut::new();
        let mut total = 0u64;
        let mut ended = false;
        while buffer.len() < STREAM_PART_SIZE {
            match body.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(StorageError::backend)?;
                    total += chunk.len() as u64;
                    if total > max_size {
                        return Err(StorageError::TooLarge { limit: max_size });
                    }
                    buffer.extend_from_slice(&chunk);
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
        if ended {
            let bytes = buffer.freeze();
            let size = bytes.len() as u64;
            let out = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(self.full(key))
                .content_type(content_type)
                .content_length(size as i64)
                .body(SdkByteStream::from(bytes))
                .send()
                .await
                .map_err(|e| map_err(e, "PutObject", Some(key), None))?;
            return Ok(ObjectMeta {
                key: key.clone(),
                size,
                last_modified: None,
                etag: out.e_tag().map(str::to_owned),
            });
        }
        let upload_id = self.create_multipart(key, content_type).await?;
        let result = async {
            let parts = self
                .stream_parts(key, &upload_id, buffer, body, max_size, total)
                .await?;
            self.complete_checked(key, &upload_id, &parts).await
        }
        .await;
        if result.is_err() {
            self.abort_quietly(key, &upload_id).await;
        }
        result
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map_err(|e| map_err(e, "GetObject", Some(key), None))?;
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| StorageError::backend(format!("reading {key} from S3: {e}")))?;
        Ok(bytes.into_bytes())
    }

    async fn get_range(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<GetResult> {
        if let Some(r) = &range {
            if r.start >= r.end {
                let size = self.head(key).await?.size;
                return Err(StorageError::RangeNotSatisfiable { size });
            }
        }
        let mut request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key));
        if let Some(r) = &range {
            request = request.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        let out = match request.send().await {
            Ok(out) => out,
            Err(e) => {
                return Err(match map_err(e, "GetObject", Some(key), None) {
                    StorageError::RangeNotSatisfiable { .. } => StorageError::RangeNotSatisfiable {
                        size: self.head(key).await?.size,
                    },
                    other => other,
                });
            }
        };
        let length = out.content_length().unwrap_or_default().max(0) as u64;
        let (served, size) = match out.content_range().and_then(parse_content_range) {
            Some(found) => found,
            None => (0..length, length),
        };
        let meta = ObjectMeta {
            key: key.clone(),
            size,
            last_modified: to_offset(out.last_modified()),
            etag: out.e_tag().map(str::to_owned),
        };
        let body = futures::stream::unfold(out.body, |mut body| async move {
            match body.try_next().await {
                Ok(Some(chunk)) => Some((Ok(chunk), body)),
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e)), body)),
            }
        })
        .boxed();
        Ok(GetResult {
            meta,
            range: served,
            body,
        })
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map_err(|e| map_err(e, "HeadObject", Some(key), None))?;
        Ok(ObjectMeta {
            key: key.clone(),
            size: out.content_length().unwrap_or_default().max(0) as u64,
            last_modified: to_offset(out.last_modified()),
            etag: out.e_tag().map(str::to_owned),
        })
    }

    async fn content_type(&self, key: &ObjectKey) -> Result<Option<String>> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map_err(|e| map_err(e, "HeadObject", Some(key), None))?;
        Ok(out
            .content_type()
            .filter(|ct| !is_default_content_type(ct))
            .map(str::to_owned))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}{prefix}", self.prefix))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_err(e, "ListObjectsV2", None, None))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| self.ours(k)) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key,
                    size: object.size().unwrap_or_default().max(0) as u64,
                    last_modified: to_offset(object.last_modified()),
                    etag: object.e_tag().map(str::to_owned),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        check_dir_prefix(prefix)?;
        let full = format!("{}{prefix}", self.prefix);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .delimiter("/")
            .into_paginator()
            .send();
        let mut dirs = BTreeSet::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_err(e, "ListObjectsV2", None, None))?;
            for common in page.common_prefixes() {
                let name = common
                    .prefix()
                    .and_then(|p| p.strip_prefix(&full))
                    .and_then(|p| p.strip_suffix('/'));
                if let Some(name) = name.filter(|n| !n.is_empty()) {
                    dirs.insert(name.to_owned());
                }
            }
        }
        Ok(dirs.into_iter().collect())
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map_err(|e| map_err(e, "DeleteObject", Some(key), None))
        {
            Ok(_) | Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn create_multipart(&self, key: &ObjectKey, content_type: &str) -> Result<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full(key))
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| map_err(e, "CreateMultipartUpload", Some(key), None))?;
        out.upload_id()
            .map(str::to_owned)
            .ok_or_else(|| StorageError::backend(format!("the store gave no upload id for {key}")))
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
        // Refuse an unknown upload before reading the body, as every backend does.
        self.client
            .list_parts()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(upload_id)
            .max_parts(1)
            .send()
            .await
            .map_err(|e| map_err(e, "ListParts", Some(key), Some(upload_id)))?;
        let fault = Arc::new(Mutex::new(None));
        let exact = ExactBody {
            source: Mutex::new(body),
            remaining: size,
            expected: size,
            held: None,
            fault: fault.clone(),
        };
        let result = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(upload_id)
            .part_number(part_number as i32)
            .content_length(size as i64)
            .body(SdkByteStream::new(SdkBody::from_body_1_x(exact)))
            .send()
            .await;
        if let Some(fault) = fault.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(fault);
        }
        let out = result.map_err(|e| map_err(e, "UploadPart", Some(key), Some(upload_id)))?;
        Ok(PartInfo {
            part_number,
            size,
            etag: out.e_tag().unwrap_or_default().to_owned(),
        })
    }

    async fn list_parts(&self, key: &ObjectKey, upload_id: &str) -> Result<Vec<PartInfo>> {
        self.stored_parts(key, upload_id).await
    }

    async fn complete_multipart(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        parts: &[PartInfo],
    ) -> Result<ObjectMeta> {
        check_part_sequence(parts)?;
        // Check the parts against what the bucket holds, so that the size rules are
        // enforced on real sizes even where the store does not enforce them.
        let stored: BTreeMap<u32, PartInfo> = self
            .stored_parts(key, upload_id)
            .await?
            .into_iter()
            .map(|p| (p.part_number, p))
            .collect();
        let mut checked = Vec::with_capacity(parts.len());
        for given in parts {
            let Some(found) = stored.get(&given.part_number) else {
                return Err(StorageError::InvalidPart(format!(
                    "part {} was never uploaded",
                    given.part_number
                )));
            };
            if found.size != given.size
                || found.etag.trim_matches('"') != given.etag.trim_matches('"')
            {
                return Err(StorageError::InvalidPart(format!(
                    "part {} does not match the stored part (size {}, ETag {})",
                    given.part_number, found.size, found.etag
                )));
            }
            checked.push(found.clone());
        }
        check_part_sequence(&checked)?;
        self.complete_checked(key, upload_id, &checked).await
    }

    async fn abort_multipart(&self, key: &ObjectKey, upload_id: &str) -> Result<()> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| map_err(e, "AbortMultipartUpload", Some(key), Some(upload_id)))
        {
            Ok(_) | Err(StorageError::UploadNotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list_uploads(&self, prefix: &str) -> Result<Vec<UploadInfo>> {
        let mut uploads = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut upload_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(format!("{}{prefix}", self.prefix))
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_marker.take())
                .send()
                .await
                .map_err(|e| map_err(e, "ListMultipartUploads", None, None))?;
            for upload in page.uploads() {
                let (Some(key), Some(id)) =
                    (upload.key().and_then(|k| self.ours(k)), upload.upload_id())
                else {
                    continue;
                };
                uploads.push(UploadInfo {
                    key,
                    upload_id: id.to_owned(),
                    initiated: to_offset(upload.initiated()),
                });
            }
            if !page.is_truncated().unwrap_or(false) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            upload_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && upload_marker.is_none() {
                break;
            }
        }
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
        let PresignOp::UploadPart {
            key,
            upload_id,
            part_number,
            size,
        } = op
        else {
            return self.presign_with_sdk(op, now, ttl).await;
        };
        let (start, expires_in) = Self::validity(now, ttl);
        let url = self
            .part_signer()
            .await?
            .sign_part(
                &self.full(key),
                upload_id,
                *part_number,
                *size,
                start,
                expires_in,
            )
            .await?;
        Ok(PresignedRequest {
            method: "PUT".to_owned(),
            url,
            headers: BTreeMap::new(),
            expires_at: OffsetDateTime::from(start + expires_in),
        })
    }
}

/// A part body of exactly `expected` bytes for the SDK, built from a [`ByteStream`].
/// A body that runs long or ends short fails the request (so the store keeps no part),
/// and the reason is left in `fault` for `put_part` to report.
struct ExactBody {
    /// The source; a `Mutex` only so the body is `Sync` as the SDK wants. It is only
    /// reached through `&mut self`, so it is never locked.
    source: Mutex<ByteStream>,
    remaining: u64,
    expected: u64,
    /// The last chunk, held back until the source has ended, so that a body that runs
    /// long never reaches the store complete.
    held: Option<Bytes>,
    fault: Arc<Mutex<Option<StorageError>>>,
}

impl ExactBody {
    fn fail(
        &mut self,
        error: StorageError,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        let message = error.to_string();
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        Poll::Ready(Some(Err(std::io::Error::other(message))))
    }
}

impl http_body::Body for ExactBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            let source = this.source.get_mut().unwrap_or_else(|e| e.into_inner());
            match source.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return this.fail(StorageError::backend(e)),
                Poll::Ready(Some(Ok(chunk))) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    if this.held.is_some() || chunk.len() as u64 > this.remaining {
                        return this.fail(StorageError::TooLarge {
                            limit: this.expected,
                        });
                    }
                    this.remaining -= chunk.len() as u64;
                    if this.remaining == 0 {
                        this.held = Some(chunk);
                        continue;
                    }
                    return Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
                }
                Poll::Ready(None) => {
                    if this.remaining > 0 {
                        let got = this.expected - this.remaining;
                        return this.fail(StorageError::Truncated {
                            got,
                            expected: this.expected,
                        });
                    }
                    return Poll::Ready(this.held.take().map(|c| Ok(http_body::Frame::data(c))));
                }
            }
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(
            self.remaining + self.held.as_ref().map_or(0, |c| c.len() as u64),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A URL as path and sorted query pairs: the order of query parameters carries no
    /// meaning (SigV4 signs them sorted).
    fn url_parts(url: &str) -> (String, Vec<String>) {
        let (path, query) = url.split_once('?').unwrap();
        let mut pairs: Vec<String> = query.split('&').map(str::to_owned).collect();
        pairs.sort();
        (path.to_owned(), pairs)
    }

    #[tokio::test]
    async fn part_urls_are_signed_exactly_as_the_sdk_signs_them() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let garage = S3Settings::custom("recordings", "http://127.0.0.1:3900", "garage");
        let public = S3Settings {
            public_endpoint: Some("https://s3.example.org:8443/".into()),
            key_prefix: "/studies/pilot-2/".into(),
            ..S3Settings::custom("rec", "http://10.0.0.5:3900", "auto")
        };
        let aws = S3Settings {
            bucket: "lab-recordings".into(),
            region: Some("eu-west-1".into()),
            ..S3Settings::default()
        };
        let aws_path = S3Settings {
            force_path_style: Some(true),
            ..aws.clone()
        };
        let virtual_custom = S3Settings {
            force_path_style: Some(false),
            ..S3Settings::custom("b1", "https://store.example.net", "us-east-1")
        };
        let keys = [
            "sessions/s_1/recording_p1_1790000000000.webm",
            "a/B-c_d.e/f.mp4",
        ];
        let uploads = ["2b4f0e9a", "VXBsb2FkIElE+/=~._-%20 é"];
        for settings in [garage, public, aws, aws_path, virtual_custom] {
            let storage =
                S3Storage::with_credentials(settings.clone(), "AKIDEXAMPLE", "wJalrXUtnFEMI/K7")
                    .unwrap();
            for key in keys {
                for upload_id in uploads {
                    for (part_number, size) in [(1, 5_242_880), (10_000, 1)] {
                        let op = PresignOp::UploadPart {
                            key: ObjectKey::parse(key).unwrap(),
                            upload_id: upload_id.into(),
                            part_number,
                            size,
                        };
                        let ttl = Duration::from_secs(900);
                        let ours = storage.presign(&op, now, ttl).await.unwrap();
                        let sdk = storage.presign_with_sdk(&op, now, ttl).await.unwrap();
                        assert_eq!(
                            url_parts(&ours.url),
                            url_parts(&sdk.url),
                            "{settings:?} {key} {upload_id}"
                        );
                        assert_eq!(ours.method, sdk.method);
                        assert_eq!(ours.headers, sdk.headers);
                        assert_eq!(ours.expires_at, sdk.expires_at);
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn a_part_url_changes_with_everything_it_binds() {
        let storage = S3Storage::with_credentials(
            S3Settings::custom("recordings", "http://127.0.0.1:3900", "garage"),
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7",
        )
        .unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let ttl = Duration::from_secs(900);
        let part = |key: &str, upload_id: &str, part_number, size| PresignOp::UploadPart {
            key: ObjectKey::parse(key).unwrap(),
            upload_id: upload_id.into(),
            part_number,
            size,
        };
        let signature = |url: String| url.rsplit_once("X-Amz-Signature=").unwrap().1.to_owned();
        let base = signature(
            storage
                .presign(&part("k/a.webm", "u", 1, 10), now, ttl)
                .await
                .unwrap()
                .url,
        );
        for other in [
            part("k/b.webm", "u", 1, 10),
            part("k/a.webm", "v", 1, 10),
            part("k/a.webm", "u", 2, 10),
            part("k/a.webm", "u", 1, 11),
        ] {
            let url = storage.presign(&other, now, ttl).await.unwrap().url;
            assert_ne!(signature(url), base, "{other:?}");
        }
        let later = storage
            .presign(
                &part("k/a.webm", "u", 1, 10),
                now + Duration::from_secs(1),
                ttl,
            )
            .await
            .unwrap();
        assert_ne!(signature(later.url), base);
    }

    #[test]
    fn prefix_is_normalised_to_one_trailing_slash() {
        let with = |p: &str| S3Settings {
            key_prefix: p.to_owned(),
            ..S3Settings::default()
        };
        assert_eq!(with("").normalized_prefix(), "");
        assert_eq!(with("/").normalized_prefix(), "");
        assert_eq!(with("recorder").normalized_prefix(), "recorder/");
        assert_eq!(with("/a/b/").normalized_prefix(), "a/b/");
    }

    #[test]
    fn path_style_defaults_to_on_for_custom_endpoints_only() {
        let mut s = S3Settings::default();
        assert!(!s.path_style());
        s.endpoint = Some("http://127.0.0.1:3900".into());
        assert!(s.path_style());
        s.force_path_style = Some(false);
        assert!(!s.path_style());
    }

    #[test]
    fn content_range_is_parsed_into_a_half_open_range_and_size() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0..10, 100)));
        assert_eq!(parse_content_range("bytes 5-5/6"), Some((5..6, 6)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn downloads_offer_a_content_type_from_the_extension() {
        assert_eq!(download_content_type("r.webm"), "video/webm");
        assert_eq!(download_content_type("r.MP4"), "video/mp4");
        assert_eq!(download_content_type("session.json"), "application/json");
        assert_eq!(download_content_type("notes"), "application/octet-stream");
    }

    #[test]
    fn building_refuses_missing_bucket_region_and_bad_endpoints() {
        let ok = S3Settings::custom("b", "http://127.0.0.1:1", "garage");
        assert!(S3Storage::with_credentials(ok.clone(), "k", "s").is_ok());
        let no_bucket = S3Settings {
            bucket: String::new(),
            ..ok.clone()
        };
        assert_eq!(
            S3Storage::with_credentials(no_bucket, "k", "s").unwrap_err(),
            S3SetupError::NoBucket
        );
        let no_region = S3Settings {
            region: None,
            ..ok.clone()
        };
        assert_eq!(
            S3Storage::with_credentials(no_region, "k", "s").unwrap_err(),
            S3SetupError::NoRegion
        );
        let bad = S3Settings {
            public_endpoint: Some("s3.example.org".into()),
            ..ok
        };
        assert!(matches!(
            S3Storage::with_credentials(bad, "k", "s").unwrap_err(),
            S3SetupError::BadEndpoint {
                var: "S3_PUBLIC_ENDPOINT",
                ..
            }
        ));
    }

    #[test]
    fn a_setup_error_starts_with_the_variable_to_fix() {
        for (e, var) in [
            (S3SetupError::NoBucket, "S3_BUCKET: "),
            (S3SetupError::NoRegion, "S3_REGION: "),
            (S3SetupError::NoCredentials, "credentials: "),
        ] {
            assert!(e.to_string().starts_with(var), "{e}");
        }
    }

    #[test]
    fn presign_validity_starts_early_and_is_clamped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (config, expires) = S3Storage::presign_config(now, Duration::from_secs(600)).unwrap();
        assert_eq!(config.start_time(), now - PRESIGN_CLOCK_SKEW);
        assert_eq!(expires, now + Duration::from_secs(600));
        let (_, short) = S3Storage::presign_config(now, Duration::from_secs(1)).unwrap();
        assert_eq!(short, now + MIN_PRESIGN_TTL);
        let (config, long) =
            S3Storage::presign_config(now, Duration::from_secs(30 * 24 * 3600)).unwrap();
        assert_eq!(config.expires(), MAX_PRESIGN_TTL);
        assert_eq!(long, now - PRESIGN_CLOCK_SKEW + MAX_PRESIGN_TTL);
    }
}
