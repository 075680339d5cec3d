//! Getting a bucket ready for browsers, and checking that it is.
//!
//! Browsers upload parts straight to the bucket from the page's origin, so the bucket
//! must answer CORS preflights for that origin (PUT and GET, the `Content-Type` header)
//! and expose `ETag`, which the client reads from each part's answer. None of that can
//! be seen from the server until a participant's upload fails, so the server checks it
//! at start-up ([`self_check`]) and `recorder-server setup-s3` applies it ([`apply`]),
//! together with a lifecycle rule that aborts multipart uploads abandoned for days
//! (a closed tab leaves one behind, and its parts cost storage until aborted).
//!
//! Each problem is one line saying what to fix.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, CorsConfiguration, CorsRule,
    ExpirationStatus, LifecycleRule, LifecycleRuleFilter,
};

use crate::storage::s3::S3Storage;

/// The id of the CORS rule `setup-s3` writes (other rules on the bucket are kept).
pub const CORS_RULE_ID: &str = "recorder-browser-uploads";

/// The id of the lifecycle rule `setup-s3` writes (other rules are kept).
pub const LIFECYCLE_RULE_ID: &str = "recorder-abort-incomplete-uploads";

/// Default days after which an unfinished multipart upload is aborted.
pub const DEFAULT_ABORT_AFTER_DAYS: i32 = 7;

/// How long browsers may cache a preflight answer, in seconds.
pub const CORS_MAX_AGE_SECS: i32 = 3600;

/// Response headers the page must be able to read: `ETag` (each part's, needed to
/// complete), and the range headers for playback.
pub const EXPOSED_HEADERS: [&str; 4] = ["ETag", "Content-Length", "Content-Range", "Accept-Ranges"];

/// What the start-up check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Problems that stop browsers from uploading or the server from working; one line
    /// each, saying what to fix.
    pub problems: Vec<String>,
    /// Things worth fixing that do not stop anything.
    pub warnings: Vec<String>,
}

impl CheckReport {
    /// Whether nothing stops the server from working.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

const SETUP_HINT: &str = "run `recorder-server setup-s3` with the same environment to fix it";

/// Checks that the bucket answers with these credentials and region, and that its CORS
/// rules admit every origin in `origins` (`scheme://host[:port]`, or `*`) for PUT and
/// GET with `Content-Type`, exposing `ETag`.
pub async fn self_check(storage: &S3Storage, origins: &[String]) -> CheckReport {
    let mut report = CheckReport::default();
    let client = storage.client();
    let bucket = storage.bucket();
    if let Err(problem) = reach(storage).await {
        report.problems.push(problem);
        return report;
    }

    match client.get_bucket_cors().bucket(bucket).send().await {
        Ok(out) => {
            for origin in origins {
                if let Some(missing) = cors_gap(out.cors_rules(), origin) {
                    report.problems.push(format!(
                        "bucket {bucket}: its CORS rules do not let pages from {origin} {missing}, \
                         so browsers cannot upload; {SETUP_HINT}"
                    ));
                }
            }
        }
        Err(e) if e.code() == Some("NoSuchCORSConfiguration") || status(&e) == Some(404) => {
            report.problems.push(format!(
                "bucket {bucket} has no CORS rules, so browsers cannot upload to it; {SETUP_HINT}"
            ));
        }
        Err(e) => report.warnings.push(format!(
            "bucket {bucket}: could not read its CORS rules ({}); make sure they let {} PUT and \
             GET with any header and expose ETag",
            short(&e),
            origins.join(", ")
        )),
    }

    match client
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(out) if out.rules().iter().any(aborts_uploads) => {}
        Ok(_) => report.warnings.push(format!(
            "bucket {bucket}: no lifecycle rule aborts abandoned multipart uploads, so their \
             parts are kept (and billed) until aborted; {SETUP_HINT}"
        )),
        Err(e) if e.code() == Some("NoSuchLifecycleConfiguration") || status(&e) == Some(404) => {
            report.warnings.push(format!(
                "bucket {bucket}: no lifecycle rule aborts abandoned multipart uploads, so their \
                 parts are kept (and billed) until aborted; {SETUP_HINT}"
            ))
        }
        Err(e) => report.warnings.push(format!(
            "bucket {bucket}: could not read its lifecycle rules ({})",
            short(&e)
        )),
    }
    report
}

/// Applies the CORS rule for `origins` and the lifecycle rule that aborts multipart
/// uploads after `abort_after_days`, keeping the bucket's other rules. Returns what was
/// done, one line per step. A store that refuses lifecycle rules is reported in a line
/// and is not an error; anything else that fails is.
pub async fn apply(
    storage: &S3Storage,
    origins: &[String],
    abort_after_days: i32,
) -> Result<Vec<String>, String> {
    let client = storage.client();
    let bucket = storage.bucket();
    let mut done = Vec::new();

    reach(storage).await?;

    // CORS: our rule, replacing an older copy of it, after the bucket's other rules.
    let mut rules: Vec<CorsRule> = match client.get_bucket_cors().bucket(bucket).send().await {
        Ok(out) => out.cors_rules().to_vec(),
        Err(e) if e.code() == Some("NoSuchCORSConfiguration") || status(&e) == Some(404) => {
            Vec::new()
        }
        Err(e) => {
            return Err(format!(
                "bucket {bucket}: cannot read its CORS rules: {}",
                short(&e)
            ));
        }
    };
    rules.retain(|r| r.id() != Some(CORS_RULE_ID));
    rules.push(cors_rule(origins)?);
    let cors = CorsConfiguration::builder()
        .set_cors_rules(Some(rules))
        .build()
        .map_err(|e| e.to_string())?;
    client
        .put_bucket_cors()
        .bucket(bucket)
        .cors_configuration(cors)
        .send()
        .await
        .map_err(|e| format!("bucket {bucket}: cannot set its CORS rules: {}", short(&e)))?;
    done.push(format!(
        "bucket {bucket}: CORS rule {CORS_RULE_ID:?} lets {} GET, PUT and HEAD with any header, \
         exposing {} (preflights cached {CORS_MAX_AGE_SECS} s)",
        origins.join(", "),
        EXPOSED_HEADERS.join(", ")
    ));

    // Lifecycle: abort abandoned uploads under our prefix.
    match put_lifecycle(storage, abort_after_days).await {
        Ok(()) => done.push(format!(
            "bucket {bucket}: lifecycle rule {LIFECYCLE_RULE_ID:?} aborts multipart uploads \
             under {:?} unfinished after {abort_after_days} days",
            if storage.prefix().is_empty() {
                "the whole bucket"
            } else {
                storage.prefix()
            }
        )),
        Err(why) => done.push(format!(
            "bucket {bucket}: the store refused the lifecycle rule ({why}); abandoned uploads \
             will stay until aborted by hand (the researcher page lists them) — continuing"
        )),
    }
    Ok(done)
}

async fn put_lifecycle(storage: &S3Storage, days: i32) -> Result<(), String> {
    let client = storage.client();
    let bucket = storage.bucket();
    let mut rules: Vec<LifecycleRule> = match client
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(out) => out.rules().to_vec(),
        Err(e) if e.code() == Some("NoSuchLifecycleConfiguration") || status(&e) == Some(404) => {
            Vec::new()
        }
        Err(e) => return Err(short(&e)),
    };
    rules.retain(|r| r.id() != Some(LIFECYCLE_RULE_ID));
    let rule = LifecycleRule::builder()
        .id(LIFECYCLE_RULE_ID)
        .status(ExpirationStatus::Enabled)
        .filter(
            LifecycleRuleFilter::builder()
                .prefix(storage.prefix())
                .build(),
        )
        .abort_incomplete_multipart_upload(
            AbortIncompleteMultipartUpload::builder()
                .days_after_initiation(days)
                .build(),
        )
        .build()
        .map_err(|e| e.to_string())?;
    rules.push(rule);
    let config = BucketLifecycleConfiguration::builder()
        .set_rules(Some(rules))
        .build()
        .map_err(|e| e.to_string())?;
    client
        .put_bucket_lifecycle_configuration()
        .bucket(bucket)
        .lifecycle_configuration(config)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| short(&e))
}

fn cors_rule(origins: &[String]) -> Result<CorsRule, String> {
    if origins.is_empty() {
        return Err(
            "no origin to allow: set PUBLIC_URL (or CORS_ORIGINS) to the address \
                    participants open the pages at"
                .to_owned(),
        );
    }
    let mut rule = CorsRule::builder()
        .id(CORS_RULE_ID)
        .set_allowed_origins(Some(origins.to_vec()))
        .allowed_methods("GET")
        .allowed_methods("PUT")
        .allowed_methods("HEAD")
        .allowed_headers("*")
        .max_age_seconds(CORS_MAX_AGE_SECS);
    for header in EXPOSED_HEADERS {
        rule = rule.expose_headers(header);
    }
    rule.build().map_err(|e| e.to_string())
}

/// Whether a lifecycle rule aborts incomplete multipart uploads.
fn aborts_uploads(rule: &LifecycleRule) -> bool {
    rule.status() == &ExpirationStatus::Enabled
        && rule
            .abort_incomplete_multipart_upload()
            .and_then(|a| a.days_after_initiation())
            .is_some()
}

/// What `rules` fail to allow for `origin`, as words ("PUT", "expose ETag", ...), or
/// `None` when one rule allows it all.
pub fn cors_gap(rules: &[CorsRule], origin: &str) -> Option<String> {
    let matching: Vec<&CorsRule> = rules
        .iter()
        .filter(|r| {
            r.allowed_origins()
                .iter()
                .any(|o| origin_matches(o, origin))
        })
        .collect();
    if matching.is_empty() {
        return Some("make requests at all (the origin is not allowed)".to_owned());
    }
    // Browsers apply the first matching rule that allows the method; take the best.
    let gaps = matching.iter().map(|rule| {
        let mut missing = Vec::new();
        for method in ["PUT", "GET"] {
            if !rule
                .allowed_methods()
                .iter()
                .any(|m| m.eq_ignore_ascii_case(method))
            {
                missing.push(method.to_owned());
            }
        }
        let headers = rule.allowed_headers();
        if !headers
            .iter()
            .any(|h| h == "*" || h.eq_ignore_ascii_case("content-type"))
        {
            missing.push("send a Content-Type header".to_owned());
        }
        if !rule
            .expose_headers()
            .iter()
            .any(|h| h.eq_ignore_ascii_case("etag"))
        {
            missing.push("read the ETag header".to_owned());
        }
        missing
    });
    let best = gaps.min_by_key(Vec::len).unwrap_or_default();
    if best.is_empty() {
        None
    } else {
        Some(best.join(", "))
    }
}

/// S3 CORS origin matching: exact (case-insensitive), `*`, or one `*` wildcard.
fn origin_matches(pattern: &str, origin: &str) -> bool {
    let (pattern, origin) = (pattern.to_ascii_lowercase(), origin.to_ascii_lowercase());
    match pattern.split_once('*') {
        None => pattern == origin,
        Some((head, tail)) => {
            origin.len() >= head.len() + tail.len()
                && origin.starts_with(head)
                && origin.ends_with(tail)
        }
    }
}

fn status<E>(e: &SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// The store's error code and message, or the whole chain for a network failure.
fn short<E>(e: &SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => match status(e) {
            Some(s) => format!("HTTP {s}"),
            None => DisplayErrorContext(e).to_string(),
        },
    }
}

/// Whether a request failed because the AWS chain found no credentials (the SDK reports
/// that as a failure to send, like an unreachable endpoint).
fn lacks_credentials(e: &(dyn std::error::Error + 'static)) -> bool {
    crate::error::caused_by::<aws_credential_types::provider::error::CredentialsError>(e)
}

/// The innermost error's first line (`Connection refused (os error 111)`), rather than
/// the SDK's whole chain with its debug dump.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(inner) = last.source() {
        last = inner;
    }
    last.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Checks that the bucket answers (HeadBucket). If not, asks again with a request
/// whose error has a body (a one-key listing: HEAD answers carry no error code) and
/// says in one line what is wrong.
async fn reach(storage: &S3Storage) -> Result<(), String> {
    let client = storage.client();
    let Err(head) = client.head_bucket().bucket(storage.bucket()).send().await else {
        return Ok(());
    };
    match client
        .list_objects_v2()
        .bucket(storage.bucket())
        .max_keys(1)
        .send()
        .await
    {
        Err(e) => Err(reach_problem(storage, &e)),
        Ok(_) => Err(reach_problem(storage, &head)),
    }
}

/// One line for a bucket that does not answer: unreachable, no such bucket, wrong
/// credentials, wrong region.
fn reach_problem<E>(storage: &S3Storage, e: &SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let bucket = storage.bucket();
    let endpoint = storage.endpoint_name();
    let region = storage.region();
    let bucket_region = e
        .raw_response()
        .and_then(|r| r.headers().get("x-amz-bucket-region"))
        .map(str::to_owned);
    if let Some(actual) = bucket_region.filter(|r| r != region) {
        return format!(
            "S3_REGION: bucket {bucket} is in region {actual}, not {region}; set S3_REGION={actual}"
        );
    }
    match (status(e), e.code()) {
        (None, _) if lacks_credentials(e) => "credentials: no S3 credentials were found; set \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with a profile file) \
             for a key that may read and write the bucket"
            .to_owned(),
        (None, _) => format!(
            "S3_ENDPOINT: cannot reach {endpoint} ({}); check S3_ENDPOINT and that the store is up",
            root_cause(e)
        ),
        (_, Some("NoSuchBucket")) | (Some(404), _) => format!(
            "S3_BUCKET: there is no bucket {bucket} at {endpoint}; create it (for example \
             `garage bucket create {bucket}` or `aws s3 mb s3://{bucket}`) or fix S3_BUCKET"
        ),
        (_, Some("AuthorizationHeaderMalformed" | "InvalidRegion" | "PermanentRedirect"))
        | (Some(301), _) => format!(
            "S3_REGION: {endpoint} refused region {region} for bucket {bucket} ({}); set \
             S3_REGION to the store's region (garage for Garage, auto for R2)",
            short(e)
        ),
        (Some(400 | 401 | 403), _) => format!(
            "credentials: {endpoint} refused access to bucket {bucket} ({}); check \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the profile) and that the key may \
             read and write the bucket, and S3_REGION ({region})",
            short(e)
        ),
        _ => format!(
            "bucket {bucket} at {endpoint} did not answer as expected ({}); check S3_ENDPOINT, \
             S3_BUCKET and the store's health",
            short(e)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A credentials chain that finds nothing, as the AWS chain does with no variables.
    #[derive(Debug)]
    struct NoCredentials;

    impl aws_credential_types::provider::ProvideCredentials for NoCredentials {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            aws_credential_types::provider::future::ProvideCredentials::ready(Err(
                aws_credential_types::provider::error::CredentialsError::not_loaded(
                    "no credentials found in chain",
                ),
            ))
        }
    }

    #[tokio::test]
    async fn an_unreachable_store_or_missing_credentials_is_one_line_naming_the_fix() {
        // Nothing listens on port 1 of loopback.
        let settings = crate::storage::s3::S3Settings::custom("b", "http://127.0.0.1:1", "garage");
        let refused = S3Storage::with_credentials(settings.clone(), "k", "s").unwrap();
        let problem = reach(&refused).await.unwrap_err();
        assert!(
            problem.starts_with("S3_ENDPOINT: cannot reach"),
            "{problem}"
        );
        assert!(!problem.contains('\n') && problem.len() < 300, "{problem}");

        let provider =
            aws_credential_types::provider::SharedCredentialsProvider::new(NoCredentials);
        let anonymous = S3Storage::with_provider(settings, provider).unwrap();
        let problem = reach(&anonymous).await.unwrap_err();
        assert!(
            problem.starts_with("credentials: no S3 credentials"),
            "{problem}"
        );
        assert!(!problem.contains('\n'), "{problem}");
    }

    fn rule(origins: &[&str], methods: &[&str], headers: &[&str], expose: &[&str]) -> CorsRule {
        let mut b = CorsRule::builder();
        for o in origins {
            b = b.allowed_origins(*o);
        }
        for m in methods {
            b = b.allowed_methods(*m);
        }
        for h in headers {
            b = b.allowed_headers(*h);
        }
        for e in expose {
            b = b.expose_headers(*e);
        }
        b.build().unwrap()
    }

    #[test]
    fn the_rule_setup_writes_passes_the_check() {
        let origins = vec!["http://127.0.0.1:8080".to_owned()];
        let r = cors_rule(&origins).unwrap();
        assert_eq!(cors_gap(&[r], "http://127.0.0.1:8080"), None);
    }

    #[test]
    fn a_missing_origin_method_header_or_exposed_etag_is_named() {
        let o = "https://study.example.org";
        assert!(cors_gap(&[], o).unwrap().contains("not allowed"));
        let no_put = rule(&[o], &["GET"], &["*"], &["ETag"]);
        assert_eq!(cors_gap(&[no_put], o).unwrap(), "PUT");
        let no_etag = rule(&[o], &["GET", "PUT"], &["content-type"], &[]);
        assert_eq!(cors_gap(&[no_etag], o).unwrap(), "read the ETag header");
        let no_header = rule(&[o], &["GET", "PUT"], &["x-other"], &["etag"]);
        assert_eq!(
            cors_gap(&[no_header], o).unwrap(),
            "send a Content-Type header"
        );
        let other_origin = rule(
            &["https://other.example.org"],
            &["GET", "PUT"],
            &["*"],
            &["ETag"],
        );
        assert!(
            cors_gap(&[other_origin], o)
                .unwrap()
                .contains("not allowed")
        );
    }

    #[test]
    fn wildcard_origins_match_as_s3_matches_them() {
        assert!(origin_matches("*", "http://localhost:8080"));
        assert!(origin_matches(
            "https://*.example.org",
            "https://study.example.org"
        ));
        assert!(!origin_matches(
            "https://*.example.org",
            "https://example.com"
        ));
        assert!(origin_matches(
            "HTTP://LOCALHOST:8080",
            "http://localhost:8080"
        ));
        let any = rule(&["*"], &["GET", "PUT", "HEAD"], &["*"], &["ETag"]);
        assert_eq!(cors_gap(&[any], "http://x:1"), None);
    }

    #[test]
    fn setup_refuses_to_write_a_rule_for_no_origin() {
        assert!(cors_rule(&[]).unwrap_err().contains("PUBLIC_URL"));
    }
}
