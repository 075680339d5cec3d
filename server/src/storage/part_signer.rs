//! Presigned UploadPart URLs, signed with `aws-sigv4` directly.
//!
//! A recorder asks for one part URL every few seconds, so this is the S3 backend's
//! hottest call. The SDK's presigner runs its whole request pipeline for every URL
//! (runtime components, interceptors, endpoint rules), about ten times the CPU of a
//! trivial request; the signature itself is a few HMACs. This module signs the same
//! request the SDK would, and only that: the object's URL comes from the SDK once
//! (a GetObject presigned for a probe key, so endpoint rules, path or virtual-host
//! style and the public endpoint are the SDK's), and the tests check that both sign
//! exactly the same URL.

use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation,
    SigningSettings, UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_http::label::{EncodingStrategy, fmt_string};
use aws_smithy_runtime_api::client::identity::Identity;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::{Result, StorageError};

/// The key the SDK presigns once to show where objects live.
pub const PROBE_KEY: &str = "recorder-url-probe";

/// Credentials this close to their expiry are fetched again before signing.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// Query values as SigV4 wants them: everything but unreserved characters encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Where the objects of the bucket live, as the SDK addresses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUrl {
    /// Everything before the (encoded) key: `https://host/bucket/` (path style) or
    /// `https://bucket.host/`.
    pub base: String,
    /// The `Host` header the browser will send (and the signature covers).
    pub host: String,
}

impl ObjectUrl {
    /// Reads the layout off a URL the SDK presigned for [`PROBE_KEY`].
    pub fn from_probe(url: &str) -> Result<ObjectUrl> {
        let bad = || StorageError::Presign(format!("unexpected presigned URL shape: {url}"));
        let without_query = url.split_once('?').map_or(url, |(u, _)| u);
        let base = without_query.strip_suffix(PROBE_KEY).ok_or_else(bad)?;
        let (_, rest) = base.split_once("://").ok_or_else(bad)?;
        let host = rest.split_once('/').map_or(rest, |(h, _)| h);
        if host.is_empty() {
            return Err(bad());
        }
        Ok(ObjectUrl {
            base: base.to_owned(),
            host: host.to_owned(),
        })
    }
}

/// Signs UploadPart URLs for one bucket.
#[derive(Debug)]
pub struct PartSigner {
    url: ObjectUrl,
    region: String,
    provider: SharedCredentialsProvider,
    cached: RwLock<Option<Credentials>>,
}

impl PartSigner {
    /// A signer for objects at `url`, in `region`, with credentials from `provider`.
    pub fn new(url: ObjectUrl, region: String, provider: SharedCredentialsProvider) -> Self {
        PartSigner {
            url,
            region,
            provider,
            cached: RwLock::new(None),
        }
    }

    /// Current credentials: the cached ones unless they expire soon.
    async fn credentials(&self, now: SystemTime) -> Result<Credentials> {
        let fresh_enough = |c: &Credentials| {
            c.expiry()
                .is_none_or(|expiry| expiry > now + REFRESH_BEFORE_EXPIRY)
        };
        if let Some(c) = self.cached.read().ok().and_then(|c| c.clone()) {
            if fresh_enough(&c) {
                return Ok(c);
            }
        }
        let c = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| StorageError::Presign(format!("no credentials to sign with: {e}")))?;
        if let Ok(mut slot) = self.cached.write() {
            *slot = Some(c.clone());
        }
        Ok(c)
    }

    /// The presigned PUT of part `part_number` (exactly `size` bytes) of `upload_id`
    /// at `full_key`, valid from `start` for `expires_in`: the URL, as the SDK's
    /// presigner would make it.
    pub async fn sign_part(
        &self,
        full_key: &str,
        upload_id: &str,
        part_number: u32,
        size: u64,
        start: SystemTime,
        expires_in: Duration,
    ) -> Result<String> {
        let credentials = self.credentials(start).await?;
        let identity = Identity::from(credentials);
        let url = format!(
            "{}{}?x-id=UploadPart&partNumber={part_number}&uploadId={}",
            self.url.base,
            fmt_string(full_key, EncodingStrategy::Greedy),
            utf8_percent_encode(upload_id, QUERY_VALUE),
        );
        // S3's signing options, as the SDK sets them for a presigned request: single
        // URI encoding, no path normalisation, an unsigned payload, the signature in
        // the query.
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(expires_in);
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(start)
            .settings(settings)
            .build()
            .map_err(|e| StorageError::Presign(e.to_string()))?
            .into();
        let size = size.to_string();
        let headers = [("host", self.url.host.as_str()), ("content-length", &size)];
        let signable = SignableRequest::new(
            "PUT",
            &url,
            headers.into_iter(),
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| StorageError::Presign(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| StorageError::Presign(e.to_string()))?
            .into_parts();
        let mut signed = url;
        for (name, value) in instructions.params() {
            signed.push('&');
            signed.push_str(name);
            signed.push('=');
            signed.extend(utf8_percent_encode(value, QUERY_VALUE));
        }
        Ok(signed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_url_is_read_off_a_probe() {
        let path = ObjectUrl::from_probe(
            "http://127.0.0.1:3900/bucket/recorder-url-probe?x-id=GetObject&X-Amz-Algorithm=A",
        )
        .unwrap();
        assert_eq!(path.base, "http://127.0.0.1:3900/bucket/");
        assert_eq!(path.host, "127.0.0.1:3900");
        let vhost =
            ObjectUrl::from_probe("https://b.s3.eu-west-1.amazonaws.com/recorder-url-probe?x=1")
                .unwrap();
        assert_eq!(vhost.base, "https://b.s3.eu-west-1.amazonaws.com/");
        assert_eq!(vhost.host, "b.s3.eu-west-1.amazonaws.com");
        assert!(ObjectUrl::from_probe("https://host/bucket/other-key?x=1").is_err());
        assert!(ObjectUrl::from_probe("recorder-url-probe").is_err());
    }
}
