//! Configuration: every setting comes from the environment, is parsed once into
//! [`Config`], and is checked before the server starts. An invalid setting stops start-up
//! with one line naming the variable ([`ConfigError`]'s `Display`), exit code 2.
//!
//! Parsing ([`Config::from_vars`]) is pure; the few settings that fall back to files in
//! `DATA_DIR` (the server secret and the researcher token of a local install) are read or
//! created by [`Config::resolve_secrets`], so that several processes sharing one
//! `DATA_DIR` agree on them.

use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::signing::Secret;

/// Default presigned URL lifetime.
pub const DEFAULT_URL_TTL_SECS: u64 = 900;
/// Shortest accepted presigned URL lifetime: a part must have time to upload.
pub const MIN_URL_TTL_SECS: u64 = 60;
/// Longest accepted presigned URL lifetime (12 hours): a leaked URL should not live
/// long, and clients re-sign on expiry anyway.
pub const MAX_URL_TTL_SECS: u64 = 43_200;
/// How long a request body may send nothing before the request is ended, by default.
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 60;
/// Shortest accepted `BODY_TIMEOUT_SECS`.
pub const MIN_BODY_TIMEOUT_SECS: u64 = 5;
/// Longest accepted `BODY_TIMEOUT_SECS` (an hour).
pub const MAX_BODY_TIMEOUT_SECS: u64 = 3600;
/// The levels a `LOG` directive may name on its own.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
/// Default cap on one upload through the old app's route: 2 GiB.
pub const DEFAULT_LEGACY_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Shortest accepted `RESEARCHER_TOKEN`, in bytes.
pub const MIN_RESEARCHER_TOKEN_LEN: usize = 16;
/// Default age after which the periodic janitor treats an unfinished upload as
/// abandoned (`JANITOR_MAX_AGE_SECS`): one day.
pub const DEFAULT_JANITOR_MAX_AGE_SECS: u64 = 86_400;
/// Shortest accepted `JANITOR_MAX_AGE_SECS` (one hour): a shorter age would end
/// recordings that are still being made.
pub const MIN_JANITOR_MAX_AGE_SECS: u64 = 3_600;
/// Longest accepted `JANITOR_MAX_AGE_SECS` (a year).
pub const MAX_JANITOR_MAX_AGE_SECS: u64 = 31_536_000;
/// Shortest accepted `JANITOR_INTERVAL_SECS`.
pub const MIN_JANITOR_INTERVAL_SECS: u64 = 60;
/// Longest accepted `JANITOR_INTERVAL_SECS` (a week).
pub const MAX_JANITOR_INTERVAL_SECS: u64 = 604_800;
/// File in `DATA_DIR` holding the generated server secret of a local install.
pub const SECRET_FILE: &str = ".server-secret";
/// File in `DATA_DIR` holding the generated researcher token of a local install.
pub const RESEARCHER_TOKEN_FILE: &str = ".researcher-token";

/// A setting that could not be accepted: which variable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong with it and what would be accepted.
    pub message: String,
}

impl ConfigError {
    fn new(var: &'static str, message: impl Into<String>) -> Self {
        Self {
            var,
            message: message.into(),
        }
    }
}

/// Where recordings and manifests are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageBackend {
    /// A folder on this machine (`DATA_DIR`); the server signs URLs to itself.
    Local,
    /// An S3 bucket (or any S3-compatible store).
    S3(S3Config),
}

impl StorageBackend {
    /// `local` or `s3`, as `STORAGE_BACKEND` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            StorageBackend::Local => "local",
            StorageBackend::S3(_) => "s3",
        }
    }
}

/// The S3 settings (`STORAGE_BACKEND=s3`). Credentials come from the standard AWS
/// chain, never from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `S3_BUCKET`: the bucket name.
    pub bucket: String,
    /// `S3_ENDPOINT`: a custom endpoint (MinIO, Garage, ...), as the server reaches it.
    pub endpoint: Option<String>,
    /// `S3_PUBLIC_ENDPOINT`: the endpoint browsers reach, when it differs (presigned
    /// URLs are signed for this host).
    pub public_endpoint: Option<String>,
    /// `S3_REGION`, else `AWS_REGION`; `None` leaves it to the AWS chain (profile
    /// files).
    pub region: Option<String>,
    /// `S3_KEY_PREFIX`: a folder inside the bucket under which every key lives
    /// (empty, or ending in `/`).
    pub key_prefix: String,
    /// `S3_FORCE_PATH_STYLE`: path-style URLs (`endpoint/bucket/key`). Defaults to true
    /// when a custom endpoint is set, false for AWS.
    pub force_path_style: bool,
}

/// Who may use the old app's upload route, `POST /sessions/{id}/recording`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyUploadAuth {
    /// Anyone, as the old app allowed (its clients send no token).
    Open,
    /// Only with the session's bearer token (or the researcher token).
    Token,
    /// The route answers 410 `legacy_disabled`.
    Off,
}

/// Browser origins allowed to call the API (and, for local storage, `/storage`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CorsOrigins {
    /// No cross-origin access (no CORS headers at all).
    #[default]
    None,
    /// `*`: any origin. Safe because authentication is by bearer token, not cookie.
    Any,
    /// These origins exactly (`scheme://host[:port]`).
    List(Vec<String>),
}

/// The server's configuration, loaded once at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    /// `STORAGE_BACKEND`: `local` (default) or `s3`.
    pub backend: StorageBackend,
    /// `DATA_DIR`: the local storage root, and where a local install keeps its
    /// generated secret and token. Default `data`.
    pub data_dir: PathBuf,
    /// `BIND_ADDR`: where to listen. Default `127.0.0.1:8080`; port 0 picks a free port.
    pub bind_addr: SocketAddr,
    /// `PUBLIC_URL`: how browsers reach this server, without a trailing slash. `None`
    /// means `http://{the address actually bound}`.
    pub public_url: Option<String>,
    /// `RESEARCHER_TOKEN`, if set.
    pub researcher_token: Option<String>,
    /// `SERVER_SECRET`, if set.
    pub server_secret: Option<Secret>,
    /// `WWW_DIR`: the static pages. Default `www`.
    pub www_dir: PathBuf,
    /// `URL_TTL_SECS`: presigned URL lifetime, 60..=43200 seconds, default 900.
    pub url_ttl: Duration,
    /// `BODY_TIMEOUT_SECS`: how long a request body may send nothing before the
    /// request is ended (408 `body_timeout`), 5..=3600 seconds, default 60.
    pub body_timeout: Duration,
    /// `LEGACY_UPLOAD_AUTH`: `open` (default), `token` or `off`.
    pub legacy_upload_auth: LegacyUploadAuth,
    /// `LEGACY_MAX_BYTES`: cap on one upload through the old route. Default 2 GiB.
    pub legacy_max_bytes: u64,
    /// `CORS_ORIGINS`: comma-separated origins, or `*`. Default none.
    pub cors_origins: CorsOrigins,
    /// `LOG`, else `RUST_LOG`: a tracing filter. Default `info`.
    pub log: String,
    /// `JANITOR_INTERVAL_SECS`: how often `serve` looks for abandoned uploads and
    /// salvages them (see [`crate::janitor`]). `None` (the default): never.
    pub janitor_interval: Option<Duration>,
    /// `JANITOR_MAX_AGE_SECS`: how old an unfinished upload must be before the periodic
    /// janitor treats it as abandoned. Default one day, at least one hour.
    pub janitor_max_age: Duration,
}

/// The secrets the server runs with, after falling back to `DATA_DIR` files.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// Signs session tokens, upload handles and storage URLs.
    pub server_secret: Secret,
    /// The researcher's bearer token.
    pub researcher_token: String,
    /// Where the researcher token was read from or written to, when it came from a
    /// file rather than `RESEARCHER_TOKEN` (the server then prints it at start-up).
    pub researcher_token_file: Option<PathBuf>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads settings through `var` (the environment, or a map in tests). A variable
    /// set to the empty string counts as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());

        let backend = match get("STORAGE_BACKEND").as_deref().map(str::trim) {
            None | Some("local") => StorageBackend::Local,
            Some("s3") => StorageBackend::S3(s3_config(&get)?),
            Some(other) => {
                return Err(ConfigError::new(
                    "STORAGE_BACKEND",
                    format!("{other:?} is not a backend; use `local` or `s3`"),
                ));
            }
        };

        let data_dir = PathBuf::from(get("DATA_DIR").unwrap_or_else(|| "data".to_owned()));
        let bind_addr = match get("BIND_ADDR") {
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Some(text) => text.trim().parse().map_err(|_| {
                ConfigError::new(
                    "BIND_ADDR",
                    format!("{text:?} is not an address like 127.0.0.1:8080 or [::]:8080"),
                )
            })?,
        };
        let public_url = get("PUBLIC_URL")
            .map(|u| parse_base_url("PUBLIC_URL", &u))
            .transpose()?;

        let researcher_token = get("RESEARCHER_TOKEN")
            .map(|t| check_researcher_token(&t).map(|()| t))
            .transpose()?;
        let server_secret = get("SERVER_SECRET")
            .map(|s| {
                Secret::new(s.into_bytes()).ok_or_else(|| {
                    ConfigError::new(
                        "SERVER_SECRET",
                        format!(
                            "must be at least {} bytes (e.g. 64 hex digits from `openssl rand -hex 32`)",
                            Secret::MIN_LEN
                        ),
                    )
                })
            })
            .transpose()?;
        if let StorageBackend::S3(_) = backend {
            if server_secret.is_none() {
                return Err(ConfigError::new(
                    "SERVER_SECRET",
                    "must be set with STORAGE_BACKEND=s3 (every replica must share it)",
                ));
            }
            if researcher_token.is_none() {
                return Err(ConfigError::new(
                    "RESEARCHER_TOKEN",
                    "must be set with STORAGE_BACKEND=s3 (every replica must share it)",
                ));
            }
        }

        let www_dir = PathBuf::from(get("WWW_DIR").unwrap_or_else(|| "www".to_owned()));
        let url_ttl = match get("URL_TTL_SECS") {
            None => Duration::from_secs(DEFAULT_URL_TTL_SECS),
            Some(text) => {
                let secs: u64 = text.trim().parse().map_err(|_| {
                    ConfigError::new(
                        "URL_TTL_SECS",
                        format!("{text:?} is not a number of seconds"),
                    )
                })?;
                if !(MIN_URL_TTL_SECS..=MAX_URL_TTL_SECS).contains(&secs) {
                    return Err(ConfigError::new(
                        "URL_TTL_SECS",
                        format!(
                            "{secs} is out of range; presigned URLs may live {MIN_URL_TTL_SECS} to {MAX_URL_TTL_SECS} seconds"
                        ),
                    ));
                }
                Duration::from_secs(secs)
            }
        };
        let body_timeout = match get("BODY_TIMEOUT_SECS") {
            None => Duration::from_secs(DEFAULT_BODY_TIMEOUT_SECS),
            Some(text) => seconds_in(
                "BODY_TIMEOUT_SECS",
                &text,
                MIN_BODY_TIMEOUT_SECS..=MAX_BODY_TIMEOUT_SECS,
            )?,
        };
        let legacy_upload_auth = match get("LEGACY_UPLOAD_AUTH").as_deref().map(str::trim) {
            None | Some("open") => LegacyUploadAuth::Open,
            Some("token") => LegacyUploadAuth::Token,
            Some("off") => LegacyUploadAuth::Off,
            Some(other) => {
                return Err(ConfigError::new(
                    "LEGACY_UPLOAD_AUTH",
                    format!("{other:?} is not a mode; use `open`, `token` or `off`"),
                ));
            }
        };
        let legacy_max_bytes = match get("LEGACY_MAX_BYTES") {
            None => DEFAULT_LEGACY_MAX_BYTES,
            Some(text) => match text.trim().parse::<u64>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(ConfigError::new(
                        "LEGACY_MAX_BYTES",
                        format!("{text:?} is not a positive number of bytes"),
                    ));
                }
            },
        };
        let cors_origins = match get("CORS_ORIGINS") {
            None => CorsOrigins::None,
            Some(text) => parse_cors_origins(&text)?,
        };
        let (log_var, log) = match get("LOG") {
            Some(l) => ("LOG", l),
            None => (
                "RUST_LOG",
                get("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
            ),
        };
        // A bare word that is not a level is a target name to tracing (`LOG=inf0` would
        // mean "only the target inf0" and silence every error); ask for `target=level`.
        if let Some(word) = log.split(',').map(str::trim).find(|d| {
            !d.is_empty()
                && !d.contains(['=', '['])
                && !LOG_LEVELS.contains(&d.to_ascii_lowercase().as_str())
        }) {
            return Err(ConfigError::new(
                log_var,
                format!(
                    "{word:?} is neither a level ({}) nor `target=level`; write a level such as `info`, or `{word}=debug,info` for one target's logs",
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log) {
            return Err(ConfigError::new(
                log_var,
                format!("{log:?} is not a log filter ({e}); try `info` or `server=debug,info`"),
            ));
        }

        let janitor_interval = get("JANITOR_INTERVAL_SECS")
            .map(|text| {
                seconds_in(
                    "JANITOR_INTERVAL_SECS",
                    &text,
                    MIN_JANITOR_INTERVAL_SECS..=MAX_JANITOR_INTERVAL_SECS,
                )
            })
            .transpose()?;
        let janitor_max_age = match get("JANITOR_MAX_AGE_SECS") {
            None => Duration::from_secs(DEFAULT_JANITOR_MAX_AGE_SECS),
            Some(text) => seconds_in(
                "JANITOR_MAX_AGE_SECS",
                &text,
                MIN_JANITOR_MAX_AGE_SECS..=MAX_JANITOR_MAX_AGE_SECS,
            )?,
        };

        Ok(Config {
            backend,
            data_dir,
            bind_addr,
            public_url,
            researcher_token,
            server_secret,
            www_dir,
            url_ttl,
            body_timeout,
            legacy_upload_auth,
            legacy_max_bytes,
            cors_origins,
            log,
            janitor_interval,
            janitor_max_age,
        })
    }

    /// The public URL browsers use, given the address actually bound (which differs
    /// from `bind_addr` when port 0 was asked for).
    pub fn public_url_for(&self, bound: SocketAddr) -> String {
        match &self.public_url {
            Some(url) => url.clone(),
            None => format!("http://{bound}"),
        }
    }

    /// Checks that `WWW_DIR` holds the pages: the folder exists, has `index.html` (the
    /// participant page) and `pkg/client.js` (the wasm client, built by
    /// `scripts/dev web`). `serve` calls it before listening, so that a wrong folder
    /// stops start-up with one line instead of a server whose every page is a 404.
    pub fn check_www(&self) -> Result<(), ConfigError> {
        let dir = &self.www_dir;
        let shown = || match std::env::current_dir() {
            Ok(cwd) if dir.is_relative() => {
                format!("{} (in {})", dir.display(), cwd.display())
            }
            _ => dir.display().to_string(),
        };
        if !dir.is_dir() {
            return Err(ConfigError::new(
                "WWW_DIR",
                format!(
                    "{} is not a folder; set WWW_DIR to the pages folder (`www` in the \
                     repository), or start the server from the repository root",
                    shown()
                ),
            ));
        }
        if !dir.join("index.html").is_file() {
            return Err(ConfigError::new(
                "WWW_DIR",
                format!(
                    "{} has no index.html; set WWW_DIR to the pages folder (`www` in the \
                     repository)",
                    shown()
                ),
            ));
        }
        if !dir.join("pkg").join("client.js").is_file() {
            return Err(ConfigError::new(
                "WWW_DIR",
                format!(
                    "{} has no pkg/client.js: the wasm client is not built; run scripts/dev web",
                    shown()
                ),
            ));
        }
        Ok(())
    }

    /// On the local backend, makes sure `DATA_DIR` exists and can be written, naming
    /// `DATA_DIR` when it cannot (rather than the first file the server tries to write
    /// there).
    fn check_data_dir(&self) -> Result<(), ConfigError> {
        let dir = &self.data_dir;
        fs::create_dir_all(dir).map_err(|e| {
            ConfigError::new(
                "DATA_DIR",
                format!("the folder {} cannot be created: {e}", dir.display()),
            )
        })?;
        let probe = dir.join(format!(".write-test-{}", hex::encode(random_bytes(8))));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
        {
            Ok(_) => {
                let _ = fs::remove_file(&probe);
                Ok(())
            }
            Err(e) => Err(ConfigError::new(
                "DATA_DIR",
                format!(
                    "the folder {} cannot be written: {e}; local storage keeps everything there",
                    dir.display()
                ),
            )),
        }
    }

    /// The server secret and researcher token: from the environment when set, else (a
    /// local install only) read from or created in `DATA_DIR`. Creation is atomic and
    /// never replaces an existing file, so every process sharing `DATA_DIR` ends up
    /// with the same values. On the local backend `DATA_DIR` is checked first (created
    /// if missing, and writable), and a problem with it names `DATA_DIR`.
    pub fn resolve_secrets(&self) -> Result<Secrets, ConfigError> {
        if self.backend == StorageBackend::Local {
            self.check_data_dir()?;
        }
        let server_secret = match &self.server_secret {
            Some(s) => s.clone(),
            None => {
                let path = self.data_dir.join(SECRET_FILE);
                let text = read_or_create(&path, || hex::encode(random_bytes(32)))
                    .map_err(|e| file_error("SERVER_SECRET", &path, &e))?;
                Secret::new(text.into_bytes()).ok_or_else(|| {
                    ConfigError::new(
                        "SERVER_SECRET",
                        format!(
                            "{} holds fewer than {} bytes; delete it to have a new one made",
                            path.display(),
                            Secret::MIN_LEN
                        ),
                    )
                })?
            }
        };
        let (researcher_token, researcher_token_file) = match &self.researcher_token {
            Some(t) => (t.clone(), None),
            None => {
                let path = self.data_dir.join(RESEARCHER_TOKEN_FILE);
                let token = read_or_create(&path, || hex::encode(random_bytes(24)))
                    .map_err(|e| file_error("RESEARCHER_TOKEN", &path, &e))?;
                check_researcher_token(&token).map_err(|e| {
                    ConfigError::new(
                        "RESEARCHER_TOKEN",
                        format!("{} is unusable: {}", path.display(), e.message),
                    )
                })?;
                (token, Some(path))
            }
        };
        Ok(Secrets {
            server_secret,
            researcher_token,
            researcher_token_file,
        })
    }
}

fn s3_config(get: &impl Fn(&str) -> Option<String>) -> Result<S3Config, ConfigError> {
    let bucket = get("S3_BUCKET")
        .ok_or_else(|| ConfigError::new("S3_BUCKET", "must be set with STORAGE_BACKEND=s3"))?;
    let bucket = bucket.trim().to_owned();
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && bucket.as_bytes()[0].is_ascii_alphanumeric()
        && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric();
    if !valid_bucket {
        return Err(ConfigError::new(
            "S3_BUCKET",
            format!(
                "{bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, '-' and '.')"
            ),
        ));
    }
    let endpoint = get("S3_ENDPOINT")
        .map(|u| parse_base_url("S3_ENDPOINT", &u))
        .transpose()?;
    let public_endpoint = get("S3_PUBLIC_ENDPOINT")
        .map(|u| parse_base_url("S3_PUBLIC_ENDPOINT", &u))
        .transpose()?;
    let region = match get("S3_REGION")
        .map(|r| ("S3_REGION", r))
        .or_else(|| get("AWS_REGION").map(|r| ("AWS_REGION", r)))
    {
        None => None,
        Some((var, region)) => {
            let region = region.trim().to_owned();
            if region.len() > 64
                || !region
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::new(
                    var,
                    format!("{region:?} is not a region name (e.g. eu-west-1, garage)"),
                ));
            }
            Some(region)
        }
    };
    let key_prefix = match get("S3_KEY_PREFIX") {
        None => String::new(),
        Some(text) => {
            let trimmed = text.trim().trim_matches('/');
            if trimmed.is_empty() {
                String::new()
            } else {
                shared::ObjectKey::parse(trimmed).map_err(|e| {
                    ConfigError::new(
                        "S3_KEY_PREFIX",
                        format!("{text:?} is not a key prefix: {e}"),
                    )
                })?;
                format!("{trimmed}/")
            }
        }
    };
    let force_path_style = match get("S3_FORCE_PATH_STYLE").as_deref().map(str::trim) {
        None => endpoint.is_some(),
        Some("true" | "1" | "yes") => true,
        Some("false" | "0" | "no") => false,
        Some(other) => {
            return Err(ConfigError::new(
                "S3_FORCE_PATH_STYLE",
                format!("{other:?} is not a boolean; use `true` or `false`"),
            ));
        }
    };
    Ok(S3Config {
        bucket,
        endpoint,
        public_endpoint,
        region,
        key_prefix,
        force_path_style,
    })
}

/// A whole number of seconds within `range`, or an error naming `var`.
fn seconds_in(
    var: &'static str,
    text: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    let secs: u64 = text
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(var, format!("{text:?} is not a number of seconds")))?;
    if !range.contains(&secs) {
        return Err(ConfigError::new(
            var,
            format!(
                "{secs} is out of range; use {} to {} seconds",
                range.start(),
                range.end()
            ),
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// Accepts `http(s)://host[:port][/path]` without query or fragment; returns it without
/// a trailing slash.
fn parse_base_url(var: &'static str, text: &str) -> Result<String, ConfigError> {
    let text = text.trim();
    let bad = |why: &str| {
        ConfigError::new(
            var,
            format!("{text:?} is not a base URL like https://recorder.example.org ({why})"),
        )
    };
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .ok_or_else(|| bad("it must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(bad("the host is missing"));
    }
    if text.contains(['?', '#']) || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("no query, fragment or spaces allowed"));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

fn parse_cors_origins(text: &str) -> Result<CorsOrigins, ConfigError> {
    let items: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items == ["*"] {
        return Ok(CorsOrigins::Any);
    }
    let mut origins = Vec::new();
    for item in items {
        let origin = item.trim_end_matches('/');
        let bad = || {
            ConfigError::new(
                "CORS_ORIGINS",
                format!(
                    "{item:?} is not an origin; list origins like https://study.example.org or \
                     http://localhost:3000 separated by commas, or `*` alone"
                ),
            )
        };
        let rest = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .ok_or_else(bad)?;
        if rest.is_empty()
            || !rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        {
            return Err(bad());
        }
        origins.push(origin.to_ascii_lowercase());
    }
    if origins.is_empty() {
        return Ok(CorsOrigins::None);
    }
    Ok(CorsOrigins::List(origins))
}

fn check_researcher_token(token: &str) -> Result<(), ConfigError> {
    if token.len() < MIN_RESEARCHER_TOKEN_LEN {
        return Err(ConfigError::new(
            "RESEARCHER_TOKEN",
            format!("must be at least {MIN_RESEARCHER_TOKEN_LEN} characters"),
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            "RESEARCHER_TOKEN",
            "must be printable ASCII without spaces (it travels in an HTTP header)",
        ));
    }
    Ok(())
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    rand::fill(&mut bytes[..]);
    bytes
}

fn file_error(var: &'static str, path: &Path, e: &io::Error) -> ConfigError {
    ConfigError::new(
        var,
        format!(
            "not set, and {} could not be read or created: {e}",
            path.display()
        ),
    )
}

/// Reads the first line of `path`, or, when the file does not exist, creates it with
/// `make()`'s value and returns that. The new file appears atomically and complete: it is
/// written under a temporary name and then hard-linked into place, and linking fails if
/// the name exists (create-new semantics). When two processes race, one link wins and
/// the other reads the winner's value; nobody ever sees a half-written file.
pub fn read_or_create(path: &Path, make: impl FnOnce() -> String) -> io::Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => return Ok(text.trim().to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let value = make();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("secret");
    let tmp = dir.join(format!("{name}.{}.tmp", hex::encode(random_bytes(8))));
    {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(value.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(value),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Ok(fs::read_to_string(path)?.trim().to_owned())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn err(pairs: &[(&str, &str)]) -> ConfigError {
        Config::from_vars(vars(pairs)).unwrap_err()
    }

    #[test]
    fn defaults_make_a_local_install_on_port_8080() {
        let c = Config::from_vars(vars(&[])).unwrap();
        assert_eq!(c.backend, StorageBackend::Local);
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert_eq!(c.bind_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.www_dir, PathBuf::from("www"));
        assert_eq!(c.url_ttl, Duration::from_secs(900));
        assert_eq!(c.body_timeout, Duration::from_secs(60));
        assert_eq!(c.legacy_upload_auth, LegacyUploadAuth::Open);
        assert_eq!(c.legacy_max_bytes, 2 * 1024 * 1024 * 1024);
        assert_eq!(c.cors_origins, CorsOrigins::None);
        assert_eq!(c.log, "info");
        assert_eq!(
            c.public_url_for("127.0.0.1:4321".parse().unwrap()),
            "http://127.0.0.1:4321"
        );
    }

    #[test]
    fn every_bad_value_is_refused_naming_its_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("STORAGE_BACKEND", "ftp")], "STORAGE_BACKEND"),
            (&[("BIND_ADDR", "localhost")], "BIND_ADDR"),
            (&[("PUBLIC_URL", "example.org")], "PUBLIC_URL"),
            (&[("PUBLIC_URL", "http://x/?a=1")], "PUBLIC_URL"),
            (&[("SERVER_SECRET", "short")], "SERVER_SECRET"),
            (&[("RESEARCHER_TOKEN", "short")], "RESEARCHER_TOKEN"),
            (
                &[("RESEARCHER_TOKEN", "has a space in it ok")],
                "RESEARCHER_TOKEN",
            ),
            (&[("URL_TTL_SECS", "59")], "URL_TTL_SECS"),
            (&[("URL_TTL_SECS", "43201")], "URL_TTL_SECS"),
            (&[("URL_TTL_SECS", "ten")], "URL_TTL_SECS"),
            (&[("LEGACY_UPLOAD_AUTH", "maybe")], "LEGACY_UPLOAD_AUTH"),
            (&[("LEGACY_MAX_BYTES", "0")], "LEGACY_MAX_BYTES"),
            (&[("LEGACY_MAX_BYTES", "2GB")], "LEGACY_MAX_BYTES"),
            (&[("CORS_ORIGINS", "study.example.org")], "CORS_ORIGINS"),
            (&[("CORS_ORIGINS", "https://a.org/path")], "CORS_ORIGINS"),
            (&[("LOG", "info,[[[")], "LOG"),
            (&[("RUST_LOG", "=bad=")], "RUST_LOG"),
            (&[("LOG", "nonsense")], "LOG"),
            (&[("LOG", "server=debug,inf0")], "LOG"),
            (&[("BODY_TIMEOUT_SECS", "4")], "BODY_TIMEOUT_SECS"),
            (&[("BODY_TIMEOUT_SECS", "3601")], "BODY_TIMEOUT_SECS"),
            (&[("BODY_TIMEOUT_SECS", "1m")], "BODY_TIMEOUT_SECS"),
            (&[("STORAGE_BACKEND", "s3")], "S3_BUCKET"),
        ];
        for (pairs, var) in cases {
            let e = err(pairs);
            assert_eq!(e.var, *var, "{pairs:?} gave {e}");
            assert!(e.to_string().starts_with(&format!("{var}: ")), "{e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn s3_needs_a_bucket_a_secret_and_a_researcher_token() {
        let secret = "x".repeat(32);
        let base = [
            ("STORAGE_BACKEND", "s3"),
            ("S3_BUCKET", "recordings"),
            ("SERVER_SECRET", secret.as_str()),
            ("RESEARCHER_TOKEN", "0123456789abcdef"),
        ];
        let c = Config::from_vars(vars(&base)).unwrap();
        let StorageBackend::S3(s3) = &c.backend else {
            panic!("not s3: {:?}", c.backend)
        };
        assert_eq!(s3.bucket, "recordings");
        assert_eq!(s3.region, None, "left to the AWS chain");
        assert!(!s3.force_path_style);
        assert_eq!(s3.key_prefix, "");

        assert_eq!(err(&base[..3]).var, "RESEARCHER_TOKEN");
        assert_eq!(err(&[base[0], base[1], base[3]]).var, "SERVER_SECRET");
        let mut bad_bucket = base.to_vec();
        bad_bucket[1] = ("S3_BUCKET", "Bad_Bucket");
        assert_eq!(err(&bad_bucket).var, "S3_BUCKET");
    }

    #[test]
    fn s3_endpoint_region_prefix_and_path_style_are_read() {
        let secret = "x".repeat(32);
        let mut pairs = vec![
            ("STORAGE_BACKEND", "s3"),
            ("S3_BUCKET", "rec"),
            ("SERVER_SECRET", secret.as_str()),
            ("RESEARCHER_TOKEN", "0123456789abcdef"),
            ("S3_ENDPOINT", "http://127.0.0.1:3900/"),
            ("S3_PUBLIC_ENDPOINT", "https://s3.example.org"),
            ("AWS_REGION", "garage"),
            ("S3_KEY_PREFIX", "/study-1/"),
        ];
        let c = Config::from_vars(vars(&pairs)).unwrap();
        let StorageBackend::S3(s3) = c.backend else {
            panic!()
        };
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(
            s3.public_endpoint.as_deref(),
            Some("https://s3.example.org")
        );
        assert_eq!(s3.region.as_deref(), Some("garage"));
        assert_eq!(s3.key_prefix, "study-1/");
        assert!(
            s3.force_path_style,
            "a custom endpoint defaults to path style"
        );

        pairs.push(("S3_REGION", "eu-west-1"));
        pairs.push(("S3_FORCE_PATH_STYLE", "false"));
        let StorageBackend::S3(s3) = Config::from_vars(vars(&pairs)).unwrap().backend else {
            panic!()
        };
        assert_eq!(
            s3.region.as_deref(),
            Some("eu-west-1"),
            "S3_REGION wins over AWS_REGION"
        );
        assert!(!s3.force_path_style);

        pairs.push(("S3_KEY_PREFIX", "../up"));
        let e = Config::from_vars(|n| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap_err();
        assert_eq!(e.var, "S3_KEY_PREFIX");
    }

    #[test]
    fn settings_are_parsed() {
        let c = Config::from_vars(vars(&[
            ("BIND_ADDR", "0.0.0.0:0"),
            ("PUBLIC_URL", "https://rec.example.org/"),
            ("URL_TTL_SECS", "60"),
            ("LEGACY_UPLOAD_AUTH", "token"),
            ("LEGACY_MAX_BYTES", "1000"),
            (
                "CORS_ORIGINS",
                "https://Study.example.org, http://localhost:3000",
            ),
            ("RUST_LOG", "debug"),
            ("DATA_DIR", ""),
        ]))
        .unwrap();
        assert_eq!(c.bind_addr.port(), 0);
        assert_eq!(c.public_url.as_deref(), Some("https://rec.example.org"));
        assert_eq!(c.url_ttl, Duration::from_secs(60));
        assert_eq!(c.legacy_upload_auth, LegacyUploadAuth::Token);
        assert_eq!(c.legacy_max_bytes, 1000);
        assert_eq!(
            c.cors_origins,
            CorsOrigins::List(vec![
                "https://study.example.org".into(),
                "http://localhost:3000".into()
            ])
        );
        assert_eq!(c.log, "debug");
        assert_eq!(c.data_dir, PathBuf::from("data"), "empty means unset");
        let any = Config::from_vars(vars(&[("CORS_ORIGINS", "*"), ("LOG", "warn")])).unwrap();
        assert_eq!(any.cors_origins, CorsOrigins::Any);
        assert_eq!(any.log, "warn");
    }

    #[test]
    fn a_local_install_creates_its_secrets_once_and_every_process_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested/data");
        let data_str = data.to_str().unwrap().to_owned();
        let config = Config::from_vars(vars(&[("DATA_DIR", &data_str)])).unwrap();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let c = config.clone();
                std::thread::spawn(move || c.resolve_secrets().unwrap())
            })
            .collect();
        let all: Vec<Secrets> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let token = &all[0].researcher_token;
        assert!(token.len() >= MIN_RESEARCHER_TOKEN_LEN);
        for s in &all {
            assert_eq!(&s.researcher_token, token);
            assert_eq!(
                s.server_secret.sign("t", "m"),
                all[0].server_secret.sign("t", "m")
            );
            assert_eq!(
                s.researcher_token_file.as_deref(),
                Some(data.join(RESEARCHER_TOKEN_FILE).as_path())
            );
        }
        let stored = fs::read_to_string(data.join(RESEARCHER_TOKEN_FILE)).unwrap();
        assert_eq!(stored.trim(), token);
        let mut names: Vec<_> = fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [RESEARCHER_TOKEN_FILE, SECRET_FILE],
            "no temporary files left"
        );
        // A later start reads the same values back.
        let again = config.resolve_secrets().unwrap();
        assert_eq!(&again.researcher_token, token);
    }

    #[test]
    fn a_data_dir_that_cannot_be_made_is_named_as_such() {
        for path in ["/proc/nope", "/dev/null/data"] {
            let c = Config::from_vars(vars(&[("DATA_DIR", path)])).unwrap();
            let e = c.resolve_secrets().unwrap_err();
            assert_eq!(e.var, "DATA_DIR", "{e}");
            assert!(e.message.contains(path), "{e}");
        }
    }

    #[test]
    fn www_dir_must_hold_the_pages_and_the_built_client() {
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("www");
        let config =
            |path: &Path| Config::from_vars(vars(&[("WWW_DIR", path.to_str().unwrap())])).unwrap();
        let e = config(&www).check_www().unwrap_err();
        assert_eq!(e.var, "WWW_DIR");
        assert!(e.message.contains("is not a folder"), "{e}");
        fs::create_dir_all(www.join("pkg")).unwrap();
        let e = config(&www).check_www().unwrap_err();
        assert!(e.message.contains("no index.html"), "{e}");
        fs::write(www.join("index.html"), "<h1>hi</h1>").unwrap();
        let e = config(&www).check_www().unwrap_err();
        assert!(e.message.contains("run scripts/dev web"), "{e}");
        fs::write(www.join("pkg/client.js"), "export default 1;").unwrap();
        config(&www).check_www().unwrap();
        let e = config(&dir.path().join("nope")).check_www().unwrap_err();
        assert!(!e.to_string().contains('\n'), "one line: {e}");
    }

    #[test]
    fn set_secrets_win_over_files_and_short_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data_str = dir.path().to_str().unwrap().to_owned();
        let secret = "s".repeat(40);
        let c = Config::from_vars(vars(&[
            ("DATA_DIR", &data_str),
            ("SERVER_SECRET", &secret),
            ("RESEARCHER_TOKEN", "researcher-token-1"),
        ]))
        .unwrap();
        let s = c.resolve_secrets().unwrap();
        assert_eq!(s.researcher_token, "researcher-token-1");
        assert!(s.researcher_token_file.is_none());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no files written"
        );

        fs::write(dir.path().join(SECRET_FILE), "tooshort\n").unwrap();
        let c = Config::from_vars(vars(&[("DATA_DIR", &data_str)])).unwrap();
        let e = c.resolve_secrets().unwrap_err();
        assert_eq!(e.var, "SERVER_SECRET");
        assert!(e.message.contains(SECRET_FILE), "{e}");
        assert_eq!(
            fs::read_to_string(dir.path().join(SECRET_FILE)).unwrap(),
            "tooshort\n",
            "left untouched"
        );
    }
}
