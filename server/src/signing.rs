//! HMAC signatures made with the server secret: session tokens, upload handles, and the
//! URLs the local and memory backends hand out to the server's own `/storage/...`
//! routes (the server then "plays the bucket").
//!
//! A signed storage URL looks like
//!
//! ```text
//! {PUBLIC_URL}/storage/{key}?op=part&upload=..&part=3&len=5242880&exp=1733241600&sig=..
//! ```
//!
//! and is bound to the method, the key, the operation, the content type, the exact
//! length, the upload and part, the download name and the expiry: change any of them
//! and the signature no longer matches.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use shared::ObjectKey;
use shared::api::PresignedRequest;
use time::OffsetDateTime;

use crate::storage::PresignOp;

type HmacSha256 = Hmac<Sha256>;

/// The server secret. Every replica of one deployment must share it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Least accepted secret length, in bytes.
    pub const MIN_LEN: usize = 32;

    /// Wraps secret bytes; `None` if shorter than [`Secret::MIN_LEN`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Option<Self> {
        let bytes = bytes.into();
        (bytes.len() >= Self::MIN_LEN).then_some(Self(bytes))
    }

    /// A fresh random secret.
    pub fn random() -> Self {
        let mut bytes = vec![0u8; 32];
        rand::fill(&mut bytes[..]);
        Self(bytes)
    }

    /// Hex HMAC-SHA256 of `message` under a key derived for `purpose`, so that a
    /// signature made for one purpose is never valid for another.
    pub fn sign(&self, purpose: &str, message: &str) -> String {
        hex::encode(self.mac(purpose, message).finalize().into_bytes())
    }

    /// Checks a hex signature from [`Secret::sign`] in constant time.
    pub fn verify(&self, purpose: &str, message: &str, signature_hex: &str) -> bool {
        let Ok(sig) = hex::decode(signature_hex) else {
            return false;
        };
        self.mac(purpose, message).verify_slice(&sig).is_ok()
    }

    fn mac(&self, purpose: &str, message: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(message.as_bytes());
        mac
    }
}

/// Why a signed storage URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// A required query parameter is missing or malformed.
    #[error("the URL is not a complete signed storage URL: {0}")]
    Malformed(String),
    /// The signature does not match the request (tampered URL, other method).
    #[error("the signature does not match this request")]
    BadSignature,
    /// The signature was valid but has expired.
    #[error("the signature expired at {0} (Unix seconds); ask the server for a fresh URL")]
    Expired(u64),
}

/// The operation a verified storage URL allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedOp {
    /// PUT the whole object.
    Put {
        /// Exact content type the request must carry.
        content_type: String,
        /// Exact body length.
        size: u64,
    },
    /// PUT one part.
    Part {
        /// The upload.
        upload_id: String,
        /// The part number.
        part_number: u32,
        /// Exact body length.
        size: u64,
    },
    /// GET, optionally as a download.
    Get {
        /// The file name for `Content-Disposition`, if a download.
        download_as: Option<String>,
    },
}

/// Signs and verifies URLs to the server's own `/storage/...` routes.
#[derive(Debug, Clone)]
pub struct UrlSigner {
    secret: Secret,
    /// How browsers reach the server, without a trailing slash.
    base_url: String,
}

const URL_PURPOSE: &str = "storage-url-v1";

impl UrlSigner {
    /// A signer for URLs under `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(secret: Secret, base_url: &str) -> Self {
        Self {
            secret,
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }

    /// Signs `op` valid until `now + ttl`.
    pub fn sign(&self, op: &PresignOp, now: SystemTime, ttl: Duration) -> PresignedRequest {
        let exp = unix_secs(now + ttl);
        let (method, key, query, headers) = match op {
            PresignOp::Put {
                key,
                content_type,
                size,
            } => (
                "PUT",
                key,
                vec![
                    ("op", "put".to_owned()),
                    ("ct", content_type.clone()),
                    ("len", size.to_string()),
                ],
                BTreeMap::from([("content-type".to_owned(), content_type.clone())]),
            ),
            PresignOp::UploadPart {
                key,
                upload_id,
                part_number,
                size,
            } => (
                "PUT",
                key,
                vec![
                    ("op", "part".to_owned()),
                    ("upload", upload_id.clone()),
                    ("part", part_number.to_string()),
                    ("len", size.to_string()),
                ],
                BTreeMap::new(),
            ),
            PresignOp::Get { key, download_as } => {
                let mut q = vec![("op", "get".to_owned())];
                if let Some(name) = download_as {
                    q.push(("dl", name.clone()));
                }
                ("GET", key, q, BTreeMap::new())
            }
        };
        let mut query = query;
        query.push(("exp", exp.to_string()));
        let sig = self
            .secret
            .sign(URL_PURPOSE, &canonical(method, key.as_str(), &query));
        query.push(("sig", sig));
        let qs = query
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        PresignedRequest {
            method: method.to_owned(),
            url: format!("{}/storage/{}?{qs}", self.base_url, key.as_str()),
            headers,
            expires_at: to_offset(exp),
        }
    }

    /// Verifies a request to `/storage/{key}` with the given method and decoded query
    /// parameters at time `now`, and says what it may do.
    pub fn verify(
        &self,
        method: &str,
        key: &ObjectKey,
        query: &BTreeMap<String, String>,
        now: SystemTime,
    ) -> Result<SignedOp, UrlError> {
        let get = |name: &str| {
            query
                .get(name)
                .cloned()
                .ok_or_else(|| UrlError::Malformed(format!("missing `{name}`")))
        };
        let number = |name: &str| -> Result<u64, UrlError> {
            get(name)?
                .parse()
                .map_err(|_| UrlError::Malformed(format!("`{name}` is not a number")))
        };
        let op = get("op")?;
        let mut fields: Vec<(&str, String)> = vec![("op", op.clone())];
        let signed = match op.as_str() {
            "put" => {
                let content_type = get("ct")?;
                let size = number("len")?;
                fields.push(("ct", content_type.clone()));
                fields.push(("len", size.to_string()));
                SignedOp::Put { content_type, size }
            }
            "part" => {
                let upload_id = get("upload")?;
                let part_number = u32::try_from(number("part")?)
                    .map_err(|_| UrlError::Malformed("`part` is out of range".into()))?;
                let size = number("len")?;
                fields.push(("upload", upload_id.clone()));
                fields.push(("part", part_number.to_string()));
                fields.push(("len", size.to_string()));
                SignedOp::Part {
                    upload_id,
                    part_number,
                    size,
                }
            }
            "get" => {
                let download_as = query.get("dl").cloned();
                if let Some(name) = &download_as {
                    fields.push(("dl", name.clone()));
                }
                SignedOp::Get { download_as }
            }
            other => return Err(UrlError::Malformed(format!("unknown op `{other}`"))),
        };
        let exp = number("exp")?;
        fields.push(("exp", exp.to_string()));
        let sig = get("sig")?;
        let expected_method = if matches!(signed, SignedOp::Get { .. }) {
            // HEAD is a GET without a body, as on S3.
            if method == "HEAD" { "HEAD" } else { "GET" }
        } else {
            "PUT"
        };
        let signed_method = if expected_method == "HEAD" {
            "GET"
        } else {
            expected_method
        };
        if method != expected_method
            || !self.secret.verify(
                URL_PURPOSE,
                &canonical(signed_method, key.as_str(), &fields),
                &sig,
            )
        {
            return Err(UrlError::BadSignature);
        }
        if unix_secs(now) > exp {
            return Err(UrlError::Expired(exp));
        }
        Ok(signed)
    }
}

fn canonical(method: &str, key: &str, fields: &[(&str, String)]) -> String {
    let mut out = format!("{method}\n{key}");
    for (k, v) in fields {
        out.push('\n');
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Seconds since the Unix epoch (0 for times before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn to_offset(secs: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs as i64).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> UrlSigner {
        UrlSigner::new(Secret::new(vec![7u8; 32]).unwrap(), "http://h:1/")
    }

    fn query_of(url: &str) -> BTreeMap<String, String> {
        let qs = url.split_once('?').unwrap().1;
        qs.split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                let mut bytes = Vec::new();
                let raw = v.as_bytes();
                let mut i = 0;
                while i < raw.len() {
                    if raw[i] == b'%' {
                        bytes.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                        i += 3;
                    } else {
                        bytes.push(raw[i]);
                        i += 1;
                    }
                }
                (k.to_owned(), String::from_utf8(bytes).unwrap())
            })
            .collect()
    }

    fn key() -> ObjectKey {
        ObjectKey::parse("sessions/s/recording_p_1.webm").unwrap()
    }

    #[test]
    fn a_signed_put_verifies_and_binds_content_type_and_size() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let op = PresignOp::Put {
            key: key(),
            content_type: "video/webm;codecs=vp8,opus".into(),
            size: 42,
        };
        let req = signer().sign(&op, now, Duration::from_secs(60));
        assert!(
            req.url
                .starts_with("http://h:1/storage/sessions/s/recording_p_1.webm?")
        );
        assert_eq!(req.headers["content-type"], "video/webm;codecs=vp8,opus");
        let q = query_of(&req.url);
        assert_eq!(
            signer().verify("PUT", &key(), &q, now),
            Ok(SignedOp::Put {
                content_type: "video/webm;codecs=vp8,opus".into(),
                size: 42
            })
        );
        let mut tampered = q.clone();
        tampered.insert("len".into(), "43".into());
        assert_eq!(
            signer().verify("PUT", &key(), &tampered, now),
            Err(UrlError::BadSignature)
        );
        assert_eq!(
            signer().verify("GET", &key(), &q, now),
            Err(UrlError::BadSignature)
        );
        let other = ObjectKey::parse("sessions/s/other.webm").unwrap();
        assert_eq!(
            signer().verify("PUT", &other, &q, now),
            Err(UrlError::BadSignature)
        );
    }

    #[test]
    fn an_expired_url_is_refused_after_its_expiry_only() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let op = PresignOp::Get {
            key: key(),
            download_as: Some("a b.webm".into()),
        };
        let q = query_of(&signer().sign(&op, now, Duration::from_secs(60)).url);
        assert!(
            signer()
                .verify("GET", &key(), &q, now + Duration::from_secs(60))
                .is_ok()
        );
        assert!(signer().verify("HEAD", &key(), &q, now).is_ok());
        assert_eq!(
            signer().verify("GET", &key(), &q, now + Duration::from_secs(61)),
            Err(UrlError::Expired(1_060))
        );
    }

    #[test]
    fn a_signature_from_another_secret_is_refused() {
        let now = UNIX_EPOCH;
        let op = PresignOp::UploadPart {
            key: key(),
            upload_id: "u1".into(),
            part_number: 2,
            size: 5,
        };
        let q = query_of(&signer().sign(&op, now, Duration::from_secs(60)).url);
        let other = UrlSigner::new(Secret::new(vec![8u8; 32]).unwrap(), "http://h:1");
        assert_eq!(
            other.verify("PUT", &key(), &q, now),
            Err(UrlError::BadSignature)
        );
        assert!(signer().verify("PUT", &key(), &q, now).is_ok());
    }

    #[test]
    fn secrets_are_purpose_bound() {
        let s = Secret::new(vec![1u8; 32]).unwrap();
        let sig = s.sign("session", "abc");
        assert!(s.verify("session", "abc", &sig));
        assert!(!s.verify("upload", "abc", &sig));
        assert!(!s.verify("session", "abd", &sig));
        assert!(!s.verify("session", "abc", "zz"));
        assert!(Secret::new(vec![1u8; 31]).is_none());
    }
}
