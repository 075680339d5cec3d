//! Wiring: the shared state every handler gets, the router, and serving with graceful
//! shutdown. `main.rs` only loads the configuration and calls these; tests build an
//! [`AppState`] in code and drive [`app`] with `tower::ServiceExt::oneshot` or over a
//! real socket with [`serve`].

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use shared::api::Health;
use shared::{RecordingId, SessionId};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::config::{Config, CorsOrigins, S3Config, Secrets, StorageBackend};
use crate::manifests::Manifests;
use crate::routes;
use crate::signing::{Secret, UrlSigner};
use crate::storage::Storage;
use crate::storage::local::LocalStorage;
use crate::storage::s3::{S3Settings, S3Storage};

/// The clock handlers read "now" from; tests substitute a fixed or shifted one.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Everything a handler needs. Cheap to clone (all shared).
#[derive(Clone)]
pub struct AppState {
    /// Where recordings and manifests live.
    pub storage: Arc<dyn Storage>,
    /// Reads and changes manifests in `storage`.
    pub manifests: Manifests,
    /// The configuration the server started with.
    pub config: Arc<Config>,
    /// Signs session tokens and upload handles.
    pub secret: Arc<Secret>,
    /// Signs URLs to this server's own `/storage/...` routes (local storage).
    pub signer: Arc<UrlSigner>,
    /// The researcher's bearer token.
    pub researcher_token: Arc<str>,
    /// "Now", for signatures, ids and timestamps.
    pub clock: Clock,
    /// Recording ids being opened right now in this process, so that two uploads
    /// started in the same millisecond for the same problem never share a key.
    pub opening: Arc<Mutex<HashSet<(SessionId, RecordingId)>>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("storage", &self.storage)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over `storage`, with the system clock.
    pub fn new(
        config: Config,
        storage: Arc<dyn Storage>,
        secrets: &Secrets,
        signer: Arc<UrlSigner>,
    ) -> Self {
        Self {
            manifests: Manifests::new(storage.clone()),
            storage,
            config: Arc::new(config),
            secret: Arc::new(secrets.server_secret.clone()),
            signer,
            researcher_token: Arc::from(secrets.researcher_token.as_str()),
            clock: Arc::new(SystemTime::now),
            opening: Arc::default(),
        }
    }

    /// The same state with another clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The current time by this state's clock.
    pub fn now(&self) -> SystemTime {
        (self.clock)()
    }
}

/// Why the storage backend could not be set up; the message starts with the variable
/// to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildStorageError(pub String);

/// The storage backend the configuration names. URLs the local backend hands out are
/// signed by `signer` and point at this server's `/storage/...` routes; the S3 backend
/// takes its credentials from the standard AWS chain and makes no request here.
pub async fn build_storage(
    config: &Config,
    signer: Arc<UrlSigner>,
) -> Result<Arc<dyn Storage>, BuildStorageError> {
    match &config.backend {
        StorageBackend::Local => Ok(Arc::new(LocalStorage::new(config.data_dir.clone(), signer))),
        StorageBackend::S3(s3) => Ok(Arc::new(connect_s3(s3).await?)),
    }
}

/// The S3 backend for these settings, credentials from the standard AWS chain. Makes no
/// request (see [`crate::s3_setup::self_check`] for that).
pub async fn connect_s3(s3: &S3Config) -> Result<S3Storage, BuildStorageError> {
    let settings = S3Settings {
        bucket: s3.bucket.clone(),
        endpoint: s3.endpoint.clone(),
        public_endpoint: s3.public_endpoint.clone(),
        region: s3.region.clone(),
        force_path_style: Some(s3.force_path_style),
        key_prefix: s3.key_prefix.clone(),
    };
    S3Storage::connect(settings)
        .await
        .map_err(|e| BuildStorageError(e.to_string()))
}

/// The origins browsers load the pages from and call the store from: the public URL's
/// origin plus `CORS_ORIGINS` (`*` alone when any origin is allowed). The bucket's
/// CORS rules must admit all of them.
pub fn browser_origins(config: &Config, public_url: &str) -> Vec<String> {
    if config.cors_origins == CorsOrigins::Any {
        return vec!["*".to_owned()];
    }
    let scheme_end = public_url.find("://").map_or(0, |i| i + 3);
    let origin = match public_url[scheme_end..].find('/') {
        Some(i) => &public_url[..scheme_end + i],
        None => public_url,
    };
    let mut origins = vec![origin.to_ascii_lowercase()];
    if let CorsOrigins::List(list) = &config.cors_origins {
        for o in list {
            if !origins.contains(o) {
                origins.push(o.clone());
            }
        }
    }
    origins
}

/// The whole application: the API, the old upload route, `/storage` (when this server
/// plays the bucket), `/healthz`, and the static pages of `WWW_DIR`, with request
/// tracing and CORS for `CORS_ORIGINS`.
pub fn app(state: AppState) -> Router {
    let api = routes::api::router().layer(DefaultBodyLimit::max(routes::JSON_BODY_LIMIT));
    let legacy = routes::legacy::router().layer(DefaultBodyLimit::disable());
    let www = ServeDir::new(&state.config.www_dir);
    let cors = cors_layer(&state.config.cors_origins);
    let storage = state.storage.clone();
    let signer = state.signer.clone();
    let clock = state.clock.clone();
    let body_timeout = state.config.body_timeout;

    let mut router: Router = Router::new()
        .route("/healthz", get(healthz))
        .merge(api)
        .merge(legacy)
        .with_state(state);
    if matches!(storage.kind(), "local" | "memory") {
        router = router.merge(crate::storage_routes::router_with_clock(
            storage, signer, clock,
        ));
    }
    let router = router
        .fallback_service(www)
        .layer(axum::middleware::map_response(json_body_for_bare_errors))
        .layer(axum::middleware::map_response(close_after_refused_body))
        // A client that stops sending mid-body (a stalled network, a hostile one) must
        // not hold a connection and a temporary file forever.
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        .layer(TraceLayer::new_for_http());
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// A 413 is answered before the body is read, and the connection is then closed
/// rather than drained; saying so keeps clients from sending their next request on it.
async fn close_after_refused_body(mut res: Response) -> Response {
    if res.status() == StatusCode::PAYLOAD_TOO_LARGE {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// Errors answered by the router itself (405 for a method a route does not take) or by
/// the static files (404) carry no body; give them the shared `{code, message}` body
/// every other error has, so that clients can rely on it for every answer.
async fn json_body_for_bare_errors(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error())
        || res.headers().contains_key(header::CONTENT_TYPE)
    {
        return res;
    }
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "This path does not take this method; the `Allow` header lists those it takes.",
        ),
        StatusCode::NOT_FOUND => ("not_found", "Nothing is served at this path."),
        _ => ("bad_request", "The request was refused."),
    };
    let (mut parts, _) = res.into_parts();
    let body = serde_json::to_vec(&shared::api::ErrorBody {
        code: code.to_owned(),
        message: message.to_owned(),
    })
    .expect("error bodies serialise");
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

async fn healthz(State(state): State<AppState>) -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".to_owned(),
        storage: state.config.backend.name().to_owned(),
    })
}

fn cors_layer(origins: &CorsOrigins) -> Option<CorsLayer> {
    let allow = match origins {
        CorsOrigins::None => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(
            list.iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        ),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::OPTIONS,
            ])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::RANGE])
            .expose_headers([
                header::ETAG,
                header::CONTENT_RANGE,
                header::CONTENT_LENGTH,
                header::ACCEPT_RANGES,
                header::CONTENT_DISPOSITION,
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and lets
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_origins_are_the_public_origin_and_the_cors_list() {
        let config = Config::from_vars(|n| {
            (n == "CORS_ORIGINS").then(|| "https://study.example.org".to_owned())
        })
        .unwrap();
        assert_eq!(
            browser_origins(&config, "https://Rec.example.org/app"),
            ["https://rec.example.org", "https://study.example.org"]
        );
        let any = Config::from_vars(|n| (n == "CORS_ORIGINS").then(|| "*".to_owned())).unwrap();
        assert_eq!(browser_origins(&any, "http://127.0.0.1:8080"), ["*"]);
    }
}
