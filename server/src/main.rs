//! The `recorder-server` binary: loads the configuration from the environment and
//! serves. Everything else lives in the library (`server::app`).
//!
//! ```text
//! recorder-server            # same as `recorder-server serve`
//! recorder-server serve
//! recorder-server setup-s3   # STORAGE_BACKEND=s3: CORS and lifecycle rules on the bucket
//! recorder-server migrate --from local:data   # STORAGE_BACKEND=s3: copy a data folder in
//! recorder-server janitor --older-than 24h [--salvage] [--dry-run]   # abandoned uploads
//! recorder-server salvage --session S --recording R   # one abandoned upload -> partial
//! ```

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use server::app::{self, AppState};
use server::config::{Config, StorageBackend};
use server::signing::UrlSigner;
use tracing_subscriber::EnvFilter;

/// Records research participants in the browser, straight to object storage.
/// Configuration comes from the environment (see the README).
#[derive(Debug, Parser)]
#[command(name = "recorder-server", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API, the pages and (for local storage) the storage routes. The default.
    Serve,
    /// Prepare the S3 bucket for browsers: a CORS rule for the page origins (PUBLIC_URL
    /// and CORS_ORIGINS) and a lifecycle rule that aborts abandoned multipart uploads.
    /// Other rules on the bucket are kept.
    SetupS3 {
        /// Days after which an unfinished multipart upload is aborted.
        #[arg(long, default_value_t = server::s3_setup::DEFAULT_ABORT_AFTER_DAYS)]
        abort_after_days: i32,
    },
    /// Copy a data folder (the old app's, or a local install's DATA_DIR) into the bucket
    /// (STORAGE_BACKEND=s3): every object verified, re-runs skip what is already there,
    /// the source is kept unless --delete-source. Exit code 1 if anything failed, 3 if
    /// some files could not be copied (they are listed).
    Migrate(server::migrate::MigrateArgs),
    /// Find multipart uploads started longer ago than --older-than (browsers that went
    /// away mid-recording) and abort them, recording `aborted` in their manifests, or with
    /// --salvage keep what is playable as a `partial` recording. Exit code 1 if any
    /// upload could not be handled.
    Janitor(server::janitor::JanitorArgs),
    /// Turn one recording's abandoned upload into a playable recording marked `partial`
    /// (the stored parts that can be joined), or record why nothing could be kept. Exit
    /// code 3 when nothing could be kept.
    Salvage(server::janitor::SalvageArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("recorder: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(&config.log))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("recorder: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve(config)),
        Command::SetupS3 { abort_after_days } => {
            runtime.block_on(setup_s3(config, abort_after_days))
        }
        Command::Migrate(args) => runtime.block_on(server::migrate::command(&config, &args)),
        Command::Janitor(args) => {
            runtime.block_on(server::janitor::janitor_command(&config, &args))
        }
        Command::Salvage(args) => {
            runtime.block_on(server::janitor::salvage_command(&config, &args))
        }
    }
}

async fn setup_s3(config: Config, abort_after_days: i32) -> ExitCode {
    let StorageBackend::S3(s3) = &config.backend else {
        eprintln!("recorder: STORAGE_BACKEND: setup-s3 needs STORAGE_BACKEND=s3");
        return ExitCode::from(2);
    };
    let storage = match app::connect_s3(s3).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("recorder: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let public_url = config.public_url_for(config.bind_addr);
    let origins = app::browser_origins(&config, &public_url);
    match server::s3_setup::apply(&storage, &origins, abort_after_days).await {
        Ok(done) => {
            for line in done {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("recorder: setup-s3 failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    if let Err(e) = config.check_www() {
        eprintln!("recorder: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let secrets = match config.resolve_secrets() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("recorder: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.bind_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "recorder: BIND_ADDR: cannot listen on {}: {e}",
                config.bind_addr
            );
            return ExitCode::from(2);
        }
    };
    let bound = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("recorder: cannot read the bound address: {e}");
            return ExitCode::FAILURE;
        }
    };
    let public_url = config.public_url_for(bound);
    let signer = Arc::new(UrlSigner::new(secrets.server_secret.clone(), &public_url));
    let storage = match &config.backend {
        StorageBackend::S3(s3) => match app::connect_s3(s3).await {
            Ok(s3_storage) => {
                // Browsers cannot upload to a bucket whose CORS rules do not admit the
                // pages; say so now rather than when a participant's upload fails.
                let origins = app::browser_origins(&config, &public_url);
                let report = server::s3_setup::self_check(&s3_storage, &origins).await;
                for problem in &report.problems {
                    eprintln!("recorder: storage problem: {problem}");
                }
                for warning in &report.warnings {
                    tracing::warn!("{warning}");
                }
                Ok(Arc::new(s3_storage) as Arc<dyn server::storage::Storage>)
            }
            Err(e) => Err(e),
        },
        StorageBackend::Local => app::build_storage(&config, signer.clone()).await,
    };
    let storage = match storage {
        Ok(s) => s,
        Err(e) => {
            eprintln!("recorder: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let storage_line = match &config.backend {
        StorageBackend::Local => format!("local {}/", config.data_dir.display()),
        StorageBackend::S3(s3) => format!("s3 {}/{}", s3.bucket, s3.key_prefix),
    };
    let shutdown = shutdown_signal();
    if let Some(path) = &secrets.researcher_token_file {
        println!(
            "researcher token: {}  (from {}; set RESEARCHER_TOKEN to choose one)",
            secrets.researcher_token,
            path.display()
        );
    }
    println!(
        "recorder listening on http://{bound}  (participant page: /, researcher page: \
         /researcher.html, storage: {storage_line})"
    );
    if public_url != format!("http://{bound}") {
        println!("public URL: {public_url}");
    }
    let state = AppState::new(config, storage, &secrets, signer);
    if let Some(every) = state.config.janitor_interval {
        // Abandoned uploads are salvaged in the background (JANITOR_INTERVAL_SECS).
        server::janitor::spawn_periodic(
            state.storage.clone(),
            state.manifests.clone(),
            every,
            state.config.janitor_max_age,
            state.clock.clone(),
        );
    }
    match app::serve(listener, app::app(state), shutdown).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("recorder: the server stopped with an error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled, so a signal that arrives right after the
/// listening line (a supervisor stopping us at once) is not lost to the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {},
                        _ = term.recv() => {},
                    }
                }
                _ => std::future::pending::<()>().await,
            }
            tracing::info!("shutting down: finishing requests in flight");
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing requests in flight");
    }
}
