//! `/storage/{key}`: the server playing the bucket for the local and memory backends.
//!
//! Those backends presign URLs to these routes (see [`crate::signing`]); a browser then
//! PUTs whole objects or multipart parts and GETs objects (with `Range`) exactly as it
//! would against S3, and cannot tell the difference:
//!
//! | request | signed op | answer |
//! |---|---|---|
//! | `PUT /storage/{key}?op=put&ct=..&len=..` | whole object | 200, `ETag` |
//! | `PUT /storage/{key}?op=part&upload=..&part=..&len=..` | one part | 200, `ETag` (the one `list_parts` gives) |
//! | `GET`/`HEAD /storage/{key}?op=get[&dl=..]` | read | 200, or 206 for `Range: bytes=..` |
//!
//! Every request must carry a valid, unexpired signature for its method and key
//! (403 `signature_mismatch`, `signature_expired`, `signature_malformed`). A PUT must
//! carry exactly the signed `Content-Type` (403 `content_type_mismatch`) and exactly the
//! signed number of bytes: more is 413 before anything is stored, fewer is 400, and in
//! both cases nothing is stored.
//!
//! A browser on another origin reads these response headers only if the app's CORS
//! layer exposes them: `ETag`, `Content-Range`, `Content-Length`, `Accept-Ranges`,
//! `Content-Disposition`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{StreamExt, TryStreamExt};
use shared::ObjectKey;
use shared::media::Container;

use crate::error::ApiError;
use crate::signing::{SignedOp, UrlError, UrlSigner};
use crate::storage::{ByteStream, Storage, StorageError};

/// Where the routes get the current time from (tests move it).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

#[derive(Clone)]
struct StorageState {
    storage: Arc<dyn Storage>,
    signer: Arc<UrlSigner>,
    clock: Clock,
}

/// The `/storage/{*key}` routes over `storage`, accepting URLs signed by `signer`,
/// with their state applied: merge the result into the app's router.
pub fn router(storage: Arc<dyn Storage>, signer: Arc<UrlSigner>) -> Router {
    router_with_clock(storage, signer, Arc::new(SystemTime::now))
}

/// [`router`] with the clock signatures are checked against.
pub fn router_with_clock(
    storage: Arc<dyn Storage>,
    signer: Arc<UrlSigner>,
    clock: Clock,
) -> Router {
    Router::new()
        // `get` answers HEAD too, without the body.
        .route("/storage/{*key}", get(read_object).put(write_object))
        // The signed length is the limit; the handlers enforce it while streaming.
        .layer(DefaultBodyLimit::disable())
        .with_state(StorageState {
            storage,
            signer,
            clock,
        })
}

/// The `{*key}` of the path, percent-decoded. A path that does not decode to UTF-8 is
/// 400 `invalid_key` with the shared error body (axum's own rejection is plain text).
struct RawKey(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RawKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(key)) => Ok(RawKey(key)),
            Err(e) => Err(ApiError::bad_request(
                "invalid_key",
                format!("The key is refused: {}.", e.body_text()),
            )),
        }
    }
}

/// "This URL expired at 2026-12-03T10:15:00Z", from Unix seconds.
fn expired_at(unix_secs: u64) -> String {
    let when = i64::try_from(unix_secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    match when {
        Some(when) => format!("This URL expired at {when}"),
        None => format!("This URL expired at {unix_secs} (Unix seconds)"),
    }
}

/// Parses the key and checks the signature for `method`.
fn authorize(
    state: &StorageState,
    method: &Method,
    raw_key: &str,
    query: &BTreeMap<String, String>,
) -> Result<(ObjectKey, SignedOp), ApiError> {
    let key = ObjectKey::parse(raw_key).map_err(|e| {
        ApiError::bad_request("invalid_key", format!("Key {raw_key:?} is refused: {e}."))
    })?;
    let op = state
        .signer
        .verify(method.as_str(), &key, query, (state.clock)())
        .map_err(|e| match e {
            UrlError::Malformed(detail) => ApiError::forbidden(
                "signature_malformed",
                format!(
                    "The URL is not a complete signed storage URL ({detail}). Use the URL \
                     exactly as the server gave it."
                ),
            ),
            UrlError::BadSignature => ApiError::forbidden(
                "signature_mismatch",
                "The signature does not match this request: the URL was changed, or it was \
                 signed for another method, key, size or content type. Ask the server for a \
                 fresh URL.",
            ),
            UrlError::Expired(at) => ApiError::forbidden(
                "signature_expired",
                format!("{}. Ask the server for a fresh URL.", expired_at(at)),
            ),
        })?;
    Ok((key, op))
}

// ---------------------------------------------------------------------------------------
// PUT.

async fn write_object(
    State(state): State<StorageState>,
    RawKey(raw_key): RawKey,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (key, op) = authorize(&state, &Method::PUT, &raw_key, &query)?;
    let size = match &op {
        SignedOp::Put { size, .. } | SignedOp::Part { size, .. } => *size,
        SignedOp::Get { .. } => unreachable!("verify only grants a PUT op to a PUT"),
    };
    if let SignedOp::Put { content_type, .. } = &op {
        let sent = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if sent != Some(content_type.as_str()) {
            return Err(ApiError::forbidden(
                "content_type_mismatch",
                format!(
                    "The request's Content-Type {sent:?} differs from the signed {content_type:?}; \
                     send exactly the headers the server returned with the URL."
                ),
            ));
        }
    }
    check_content_length(&headers, size)?;

    let (body, fault) = watch_body(body, size);
    let stored = match op {
        SignedOp::Put { content_type, .. } => state
            .storage
            .put_stream(&key, body, &content_type, size)
            .await
            .map(|meta| meta.etag),
        SignedOp::Part {
            upload_id,
            part_number,
            ..
        } => state
            .storage
            .put_part(&key, &upload_id, part_number, body, size)
            .await
            .map(|part| Some(part.etag)),
        SignedOp::Get { .. } => unreachable!("checked above"),
    };
    let etag = stored.map_err(|e| body_error(e, &fault))?;
    let mut response = StatusCode::OK.into_response();
    if let Some(etag) = etag.as_deref().and_then(quoted_etag) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// A declared `Content-Length` must be the signed size: refuse a wrong one before
/// reading a byte.
fn check_content_length(headers: &HeaderMap, size: u64) -> Result<(), ApiError> {
    let Some(declared) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(());
    };
    let declared: u64 = declared
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            ApiError::bad_request("bad_content_length", "Content-Length is not a number.")
        })?;
    if declared > size {
        Err(StorageError::TooLarge { limit: size }.into())
    } else if declared < size {
        Err(ApiError::bad_request(
            "content_length_mismatch",
            format!(
                "The body is announced as {declared} bytes but the URL was signed for {size}; \
                 nothing was stored."
            ),
        ))
    } else {
        Ok(())
    }
}

/// What went wrong with the request body itself, as opposed to the store.
#[derive(Debug, Clone)]
enum BodyFault {
    /// The body ended before the signed size.
    Short { got: u64, expected: u64 },
    /// The body could not be read (the client went away, a broken chunk).
    Broken(String),
    /// The body sent nothing for `BODY_TIMEOUT_SECS`.
    TimedOut,
}

/// Turns the request body into a [`ByteStream`] that fails when the body is shorter
/// than `expected` (so that the store never commits a short body), and records why it
/// failed, so that a client's fault is not reported as the store's.
fn watch_body(body: Body, expected: u64) -> (ByteStream, Arc<Mutex<Option<BodyFault>>>) {
    let fault = Arc::new(Mutex::new(None));
    let record = fault.clone();
    let inner = body.into_data_stream();
    let stream = futures::stream::unfold((Some(inner), 0u64), move |(inner, got)| {
        let record = record.clone();
        async move {
            let mut inner = inner?;
            let fail = |fault: BodyFault, err: std::io::Error| {
                *record.lock().unwrap_or_else(|e| e.into_inner()) = Some(fault);
                Some((Err(err), (None, got)))
            };
            match inner.next().await {
                Some(Ok(chunk)) => {
                    let got = got + chunk.len() as u64;
                    Some((Ok(chunk), (Some(inner), got)))
                }
                Some(Err(e)) => fail(
                    if ApiError::is_body_timeout(&e) {
                        BodyFault::TimedOut
                    } else {
                        BodyFault::Broken(e.to_string())
                    },
                    std::io::Error::other(e.to_string()),
                ),
                None if got < expected => fail(
                    BodyFault::Short { got, expected },
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("body ended after {got} of {expected} bytes"),
                    ),
                ),
                None => None,
            }
        }
    });
    (stream.boxed(), fault)
}

/// Maps a store error, preferring the body's own fault when there was one.
fn body_error(e: StorageError, fault: &Mutex<Option<BodyFault>>) -> ApiError {
    match fault.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        Some(BodyFault::Short { got, expected }) => {
            StorageError::Truncated { got, expected }.into()
        }
        Some(BodyFault::TimedOut) => ApiError::body_timeout(),
        Some(BodyFault::Broken(why)) => ApiError::bad_request(
            "body_interrupted",
            format!(
                "The request body could not be read to its end ({why}); nothing was stored. Send it again."
            ),
        ),
        None => e.into(),
    }
}

// ---------------------------------------------------------------------------------------
// GET and HEAD.

async fn read_object(
    State(state): State<StorageState>,
    method: Method,
    RawKey(raw_key): RawKey,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (key, op) = authorize(&state, &method, &raw_key, &query)?;
    let SignedOp::Get { download_as } = op else {
        unreachable!("verify only grants a GET op to a GET or HEAD");
    };
    let requested = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range);
    let range = match requested {
        None => None,
        Some(ByteRange::FromTo(start, end)) => Some(start..end.saturating_add(1)),
        Some(ByteRange::From(start)) => Some(start..u64::MAX),
        Some(ByteRange::Suffix(n)) => {
            let size = state.storage.head(&key).await?.size;
            Some(size.saturating_sub(n)..size)
        }
    };
    let partial = range.is_some();
    let got = match state.storage.get_range(&key, range).await {
        Ok(got) => got,
        Err(StorageError::RangeNotSatisfiable { size }) => {
            let mut response =
                ApiError::from(StorageError::RangeNotSatisfiable { size }).into_response();
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("ASCII"),
            );
            return Ok(response);
        }
        Err(e) => return Err(e.into()),
    };
    let content_type = match state.storage.content_type(&key).await {
        Ok(stored) => servable_content_type(stored.as_deref(), &key),
        Err(e) => return Err(e.into()),
    };

    let Range { start, end } = got.range;
    let mut h = HeaderMap::new();
    let value = |text: &str| HeaderValue::from_str(text).expect("built from header-safe text");
    h.insert(header::CONTENT_TYPE, value(&content_type));
    h.insert(header::CONTENT_LENGTH, value(&(end - start).to_string()));
    h.insert(header::ACCEPT_RANGES, value("bytes"));
    // The type is ours to vouch for: a browser must not guess another.
    h.insert(header::X_CONTENT_TYPE_OPTIONS, value("nosniff"));
    if let Some(etag) = got.meta.etag.as_deref().and_then(quoted_etag) {
        h.insert(header::ETAG, etag);
    }
    if let Some(modified) = got.meta.last_modified.and_then(http_date) {
        h.insert(header::LAST_MODIFIED, value(&modified));
    }
    if partial {
        let range = format!("bytes {start}-{}/{}", end.saturating_sub(1), got.meta.size);
        h.insert(header::CONTENT_RANGE, value(&range));
    }
    if let Some(name) = download_as {
        h.insert(
            header::CONTENT_DISPOSITION,
            value(&format!(
                "attachment; filename=\"{}\"",
                safe_file_name(&name)
            )),
        );
    }
    let status = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(got.body.map_err(axum::Error::new))
    };
    Ok((status, h, body).into_response())
}

/// One byte range of a `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// `bytes=a-b`: bytes `a` to `b`, inclusive.
    FromTo(u64, u64),
    /// `bytes=a-`: from `a` to the end.
    From(u64),
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

/// Parses a single-range `Range: bytes=...` header. Anything else (other units, several
/// ranges, bad syntax) is ignored and the whole object served, as HTTP allows.
fn parse_range(header: &str) -> Option<ByteRange> {
    let (unit, spec) = header.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (first, last) = spec.split_once('-')?;
    if first.trim().is_empty() {
        return number(last).map(ByteRange::Suffix);
    }
    let first = number(first)?;
    if last.trim().is_empty() {
        return Some(ByteRange::From(first));
    }
    let last = number(last)?;
    (last >= first).then_some(ByteRange::FromTo(first, last))
}

/// The `Content-Type` to answer: the stored one when it is a media type or JSON, else
/// one derived from the extension (old data has no stored type), else
/// `application/octet-stream`. Never anything a browser would run (HTML, SVG, script):
/// these routes answer from the app's own origin.
fn servable_content_type(stored: Option<&str>, key: &ObjectKey) -> String {
    if let Some(ct) = stored {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let safe = essence.starts_with("audio/")
            || essence.starts_with("video/")
            || essence == "application/json";
        if safe && HeaderValue::from_str(ct).is_ok() {
            return ct.to_owned();
        }
    }
    let ext = key.file_name().rsplit_once('.').map(|(_, ext)| ext);
    match ext {
        Some(ext) if ext.eq_ignore_ascii_case("json") => "application/json".to_owned(),
        Some(ext) => Container::from_extension(ext)
            .map(|c| c.default_content_type(true).to_owned())
            .unwrap_or_else(|| "application/octet-stream".to_owned()),
        None => "application/octet-stream".to_owned(),
    }
}

/// An ETag as S3 sends it: in double quotes.
fn quoted_etag(etag: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("\"{}\"", etag.trim_matches('"'))).ok()
}

/// A download name safe inside `filename="..."`: printable ASCII without quotes or
/// backslashes (anything else becomes `_`).
fn safe_file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(t: time::OffsetDateTime) -> Option<String> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.to_offset(time::UtcOffset::UTC).format(&format).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::Request;
    use bytes::Bytes;
    use tower::ServiceExt;

    use super::*;
    use crate::signing::Secret;
    use crate::storage::PresignOp;
    use crate::storage::local::LocalStorage;

    struct Fixture {
        _dir: tempfile::TempDir,
        storage: Arc<dyn Storage>,
        app: Router,
    }

    fn signer() -> Arc<UrlSigner> {
        Arc::new(UrlSigner::new(
            Secret::new(vec![9u8; 32]).unwrap(),
            "http://example.test",
        ))
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> =
            Arc::new(LocalStorage::new(dir.path().to_path_buf(), signer()));
        let app = router(storage.clone(), signer());
        Fixture {
            _dir: dir,
            storage,
            app,
        }
    }

    fn key(text: &str) -> ObjectKey {
        ObjectKey::parse(text).unwrap()
    }

    /// The path and query of a presigned URL (what reaches the router).
    fn sign(op: PresignOp, now: SystemTime) -> (String, BTreeMap<String, String>) {
        let req = signer().sign(&op, now, Duration::from_secs(600));
        let uri = req
            .url
            .strip_prefix("http://example.test")
            .unwrap()
            .to_owned();
        (uri, req.headers)
    }

    fn put_url(k: &str, content_type: &str, size: u64) -> (String, BTreeMap<String, String>) {
        sign(
            PresignOp::Put {
                key: key(k),
                content_type: content_type.into(),
                size,
            },
            SystemTime::now(),
        )
    }

    fn get_url(k: &str, download_as: Option<&str>) -> String {
        let op = PresignOp::Get {
            key: key(k),
            download_as: download_as.map(str::to_owned),
        };
        sign(op, SystemTime::now()).0
    }

    /// A PUT as a browser sends it: the given headers, and `Content-Length` whenever the
    /// body's length is known.
    fn put(uri: &str, headers: &BTreeMap<String, String>, body: Body) -> Request<Body> {
        let mut req = Request::put(uri);
        if let Some(len) = http_body::Body::size_hint(&body).exact() {
            req = req.header(header::CONTENT_LENGTH, len);
        }
        for (name, value) in headers {
            req = req.header(name, value);
        }
        req.body(body).unwrap()
    }

    async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        let res = app.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (parts.status, parts.headers, bytes)
    }

    async fn code_of(app: &Router, req: Request<Body>) -> (StatusCode, String) {
        let (status, _, body) = send(app, req).await;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        (status, json["code"].as_str().unwrap_or("").to_owned())
    }

    /// A body without a length, in the given chunks.
    fn chunked(chunks: Vec<&'static [u8]>) -> Body {
        Body::from_stream(futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c))),
        ))
    }

    #[tokio::test]
    async fn a_signed_put_stores_the_object_and_a_get_returns_it_with_its_type() {
        let f = fixture();
        let (uri, headers) = put_url("sessions/s/r.webm", "video/webm;codecs=vp8", 5);
        let (status, h, _) = send(&f.app, put(&uri, &headers, Body::from("hello"))).await;
        assert_eq!(status, StatusCode::OK);
        let etag = h[header::ETAG].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

        let get = Request::get(get_url("sessions/s/r.webm", None))
            .body(Body::empty())
            .unwrap();
        let (status, h, body) = send(&f.app, get).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, Bytes::from_static(b"hello"));
        assert_eq!(h[header::CONTENT_TYPE], "video/webm;codecs=vp8");
        assert_eq!(h[header::CONTENT_LENGTH], "5");
        assert_eq!(h[header::ACCEPT_RANGES], "bytes");
        assert_eq!(h[header::ETAG].to_str().unwrap(), etag);
        assert!(h.get(header::CONTENT_DISPOSITION).is_none());
    }

    #[tokio::test]
    async fn a_tampered_url_is_refused_with_signature_mismatch() {
        let f = fixture();
        let (uri, headers) = put_url("sessions/s/r.webm", "video/webm", 5);
        let tampered = uri.replace("len=5", "len=6");
        let (status, code) = code_of(&f.app, put(&tampered, &headers, Body::from("hello!"))).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "signature_mismatch")
        );
        let other_key = uri.replace("r.webm", "x.webm");
        let (status, code) = code_of(&f.app, put(&other_key, &headers, Body::from("hello"))).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "signature_mismatch")
        );
        let unsigned = uri.split_once("&sig=").unwrap().0.to_owned();
        let (status, code) = code_of(&f.app, put(&unsigned, &headers, Body::from("hello"))).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "signature_malformed")
        );
        assert!(!f.storage.exists(&key("sessions/s/r.webm")).await.unwrap());
        assert!(!f.storage.exists(&key("sessions/s/x.webm")).await.unwrap());
    }

    #[tokio::test]
    async fn an_expired_url_is_refused_with_signature_expired() {
        let f = fixture();
        let op = PresignOp::Put {
            key: key("a/r.webm"),
            content_type: "video/webm".into(),
            size: 1,
        };
        // Signed two hours ago for ten minutes.
        let (uri, headers) = sign(op, SystemTime::now() - Duration::from_secs(7200));
        let (status, code) = code_of(&f.app, put(&uri, &headers, Body::from("x"))).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "signature_expired")
        );

        // The same URL, checked by a clock still inside its validity, is accepted.
        let then = SystemTime::now() - Duration::from_secs(7100);
        let app = router_with_clock(f.storage.clone(), signer(), Arc::new(move || then));
        let (status, _) = code_of(&app, put(&uri, &headers, Body::from("x"))).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_put_with_another_content_type_is_refused() {
        let f = fixture();
        let (uri, _) = put_url("a/r.webm", "video/webm", 1);
        let wrong = BTreeMap::from([("content-type".to_owned(), "text/html".to_owned())]);
        let (status, code) = code_of(&f.app, put(&uri, &wrong, Body::from("x"))).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "content_type_mismatch")
        );
        let (status, code) = code_of(&f.app, put(&uri, &BTreeMap::new(), Body::from("x"))).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "content_type_mismatch")
        );
        assert!(!f.storage.exists(&key("a/r.webm")).await.unwrap());
    }

    #[tokio::test]
    async fn a_body_over_the_signed_size_is_413_and_stores_nothing() {
        let f = fixture();
        let (uri, headers) = put_url("a/r.webm", "video/webm", 4);
        // Announced too long: refused before reading.
        let (status, code) = code_of(&f.app, put(&uri, &headers, Body::from("hello"))).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
        );
        // Not announced: refused while streaming.
        let body = chunked(vec![b"he", b"llo"]);
        let (status, code) = code_of(&f.app, put(&uri, &headers, body)).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
        );
        assert!(!f.storage.exists(&key("a/r.webm")).await.unwrap());
        assert!(f.storage.list("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_body_under_the_signed_size_is_400_and_stores_nothing() {
        let f = fixture();
        let (uri, headers) = put_url("a/r.webm", "video/webm", 6);
        let (status, code) = code_of(&f.app, put(&uri, &headers, Body::from("hello"))).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "content_length_mismatch")
        );
        let body = chunked(vec![b"he", b"llo"]);
        let (status, code) = code_of(&f.app, put(&uri, &headers, body)).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "truncated_body")
        );
        assert!(!f.storage.exists(&key("a/r.webm")).await.unwrap());
    }

    #[tokio::test]
    async fn a_part_put_answers_the_etag_that_list_parts_gives() {
        let f = fixture();
        let k = key("sessions/s/r.webm");
        let id = f.storage.create_multipart(&k, "audio/ogg").await.unwrap();
        let part = vec![7u8; shared::MIN_PART_SIZE as usize + 1];
        let op = PresignOp::UploadPart {
            key: k.clone(),
            upload_id: id.clone(),
            part_number: 1,
            size: part.len() as u64,
        };
        let (uri, headers) = sign(op, SystemTime::now());
        let (status, h, _) = send(&f.app, put(&uri, &headers, Body::from(part))).await;
        assert_eq!(status, StatusCode::OK);
        let listed = f.storage.list_parts(&k, &id).await.unwrap();
        assert_eq!(
            h[header::ETAG].to_str().unwrap(),
            format!("\"{}\"", listed[0].etag)
        );
        f.storage
            .complete_multipart(&k, &id, &listed)
            .await
            .unwrap();
        let get = Request::head(get_url("sessions/s/r.webm", None))
            .body(Body::empty())
            .unwrap();
        let (status, h, body) = send(&f.app, get).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_empty());
        assert_eq!(h[header::CONTENT_TYPE], "audio/ogg");
        assert_eq!(
            h[header::CONTENT_LENGTH],
            (shared::MIN_PART_SIZE + 1).to_string()
        );

        // A part for an upload that is gone is 404.
        let (status, code) = code_of(
            &f.app,
            put(
                &uri,
                &headers,
                Body::from(vec![0u8; listed[0].size as usize]),
            ),
        )
        .await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::NOT_FOUND, "upload_not_found")
        );
    }

    async fn ranged(app: &Router, uri: &str, range: &str) -> (StatusCode, HeaderMap, Bytes) {
        let req = Request::get(uri)
            .header(header::RANGE, range)
            .body(Body::empty())
            .unwrap();
        send(app, req).await
    }

    #[tokio::test]
    async fn ranges_answer_206_with_exactly_those_bytes() {
        let f = fixture();
        let k = key("sessions/s/recording_p_1.webm");
        // Old data: no stored content type, so it comes from the extension.
        f.storage
            .put(&k, Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        let uri = get_url(k.as_str(), None);
        for (range, bytes, content_range) in [
            ("bytes=2-5", &b"2345"[..], "bytes 2-5/10"),
            ("bytes=7-", b"789", "bytes 7-9/10"),
            ("bytes=-3", b"789", "bytes 7-9/10"),
            ("bytes=8-100", b"89", "bytes 8-9/10"),
            ("bytes=-100", b"0123456789", "bytes 0-9/10"),
        ] {
            let (status, h, body) = ranged(&f.app, &uri, range).await;
            assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
            assert_eq!(body, Bytes::from_static(bytes), "{range}");
            assert_eq!(h[header::CONTENT_RANGE], content_range, "{range}");
            assert_eq!(
                h[header::CONTENT_LENGTH],
                bytes.len().to_string(),
                "{range}"
            );
            assert_eq!(h[header::CONTENT_TYPE], "video/webm", "{range}");
        }
        let (status, h, _) = ranged(&f.app, &uri, "bytes=10-").await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(h[header::CONTENT_RANGE], "bytes */10");
        // A header that is not a single byte range is ignored: the whole object.
        let (status, _, body) = ranged(&f.app, &uri, "bytes=0-1,4-5").await;
        assert_eq!((status, body.len()), (StatusCode::OK, 10));
    }

    #[tokio::test]
    async fn a_download_url_names_the_file_and_unknown_objects_are_404() {
        let f = fixture();
        f.storage
            .put(&key("a/notes.txt"), Bytes::from_static(b"<script>"))
            .await
            .unwrap();
        let uri = get_url("a/notes.txt", Some("p1 notes.txt"));
        let (status, h, _) = send(&f.app, Request::get(&uri).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            h[header::CONTENT_DISPOSITION],
            "attachment; filename=\"p1 notes.txt\""
        );
        assert_eq!(h[header::CONTENT_TYPE], "application/octet-stream");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");

        let missing = get_url("a/none.webm", None);
        let (status, code) =
            code_of(&f.app, Request::get(&missing).body(Body::empty()).unwrap()).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::NOT_FOUND, "not_found")
        );
        let (status, code) = code_of(
            &f.app,
            Request::get("/storage/a/.hidden?op=get")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_key")
        );
    }

    #[tokio::test]
    async fn a_large_put_streams_over_real_http_and_reads_back_by_range() {
        let f = fixture();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(axum::serve(listener, f.app.clone()).into_future());
        let base = format!("http://{addr}");

        // 12 MiB in 64 KiB chunks, sent without a declared length.
        let chunk = Bytes::from((0..=255u8).cycle().take(64 << 10).collect::<Vec<u8>>());
        let size = 12u64 << 20;
        let (uri, headers) = put_url("sessions/s/big.webm", "video/webm", size);
        let body = futures::stream::iter(
            std::iter::repeat_n(chunk.clone(), (size / chunk.len() as u64) as usize)
                .map(Ok::<_, std::io::Error>),
        );
        let client = reqwest::Client::new();
        let res = client
            .put(format!("{base}{uri}"))
            .header("content-type", &headers["content-type"])
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers().contains_key("etag"));

        let res = client
            .get(format!("{base}{}", get_url("sessions/s/big.webm", None)))
            .header("range", "bytes=65530-65541")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 206);
        assert_eq!(
            res.headers()["content-range"],
            format!("bytes 65530-65541/{size}")
        );
        let expected: Vec<u8> = chunk
            .iter()
            .chain(chunk.iter())
            .copied()
            .skip(65530)
            .take(12)
            .collect();
        assert_eq!(res.bytes().await.unwrap().to_vec(), expected);
        server.abort();
    }

    #[test]
    fn range_headers_parse_to_single_ranges_only() {
        assert_eq!(parse_range("bytes=0-0"), Some(ByteRange::FromTo(0, 0)));
        assert_eq!(parse_range("bytes=5-"), Some(ByteRange::From(5)));
        assert_eq!(parse_range("bytes=-5"), Some(ByteRange::Suffix(5)));
        for ignored in [
            "bytes=5-4",
            "items=0-1",
            "bytes=a-b",
            "bytes=0-1,2-3",
            "bytes=-",
            "0-1",
        ] {
            assert_eq!(parse_range(ignored), None, "{ignored}");
        }
    }
}
