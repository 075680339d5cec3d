//! A small closed-loop HTTP/1.1 load generator for the benchmarks (`scripts/dev bench`):
//! `--connections` keep-alive connections on loopback, each sending the same request
//! again as soon as the previous answer has been read, for `--duration-secs` after a
//! `--warmup-secs` that is not counted.
//!
//! ```text
//! cargo run --release -p server --example loadgen -- \
//!     --url http://127.0.0.1:8080/healthz --connections 32 --duration-secs 5
//! ```
//!
//! Prints one JSON line: requests, errors, answers by status class, requests per
//! second and latency percentiles in milliseconds. The HTTP client is the one the
//! suite's load test uses (`tests/loadgen/mod.rs`).

use std::time::{Duration, Instant};

#[path = "../tests/loadgen/mod.rs"]
mod loadgen;

use clap::Parser;
use tokio::net::TcpStream;

/// Command-line options.
#[derive(Debug, Parser)]
struct Args {
    /// `http://host:port/path?query` (plain HTTP only).
    #[arg(long)]
    url: String,
    /// The request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// A request header, `Name: value`; repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// The request body.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// A file whose bytes are the request body.
    #[arg(long)]
    body_file: Option<std::path::PathBuf>,
    /// Connections, each with one request in flight.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// How long to measure.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
    /// How long to send before measuring (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
}

/// What one connection saw while measuring.
#[derive(Debug, Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    ok: u64,
    non_2xx: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (addr, host, target) = split_url(&args.url)?;
    let body = match (&args.body, &args.body_file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) => std::fs::read(path)?,
        (None, None) => Vec::new(),
    };
    let headers: Vec<&str> = args.headers.iter().map(String::as_str).collect();
    let request = loadgen::request(&args.method, &host, &target, &headers, &body);
    let request: &'static [u8] = Box::leak(request.into_boxed_slice());

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup_secs);
    let until = measure_from + Duration::from_secs_f64(args.duration_secs);
    let tasks: Vec<_> = (0..args.connections.max(1))
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move { connection(&addr, request, measure_from, until).await })
        })
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await?;
        all.latencies_us.extend(t.latencies_us);
        all.errors += t.errors;
        all.ok += t.ok;
        all.non_2xx += t.non_2xx;
    }
    let measured = until.saturating_duration_since(measure_from).as_secs_f64();
    all.latencies_us.sort_unstable();
    let pct = |p: f64| loadgen::quantile_ms(&all.latencies_us, p);
    let requests = all.ok + all.non_2xx;
    let line = serde_json::json!({
        "url": args.url,
        "method": args.method,
        "connections": args.connections,
        "duration_s": measured,
        "requests": requests,
        "ok": all.ok,
        "non_2xx": all.non_2xx,
        "errors": all.errors,
        "rps": requests as f64 / measured,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
    });
    println!("{line}");
    Ok(())
}

/// `(host:port to connect to, Host header, request target)` of a plain-HTTP URL.
fn split_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, target) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, authority.to_owned(), target.to_owned()))
}

/// Sends `request` on one connection (reconnecting after an error or a `close`) until
/// `until`, counting the answers that end after `measure_from`.
async fn connection(addr: &str, request: &[u8], measure_from: Instant, until: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut stream: Option<TcpStream> = None;
    while Instant::now() < until {
        let conn = match stream.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream.insert(s)
                }
                Err(_) => {
                    tally.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let sent = Instant::now();
        let answer = loadgen::exchange(conn, request, &mut buf).await;
        let done = Instant::now();
        let counted = sent >= measure_from && done <= until;
        match answer {
            Ok(loadgen::Answer {
                status, keep_alive, ..
            }) => {
                if counted {
                    let us = done.duration_since(sent).as_micros();
                    tally
                        .latencies_us
                        .push(u32::try_from(us).unwrap_or(u32::MAX));
                    if (200..300).contains(&status) {
                        tally.ok += 1;
                    } else {
                        tally.non_2xx += 1;
                    }
                }
                if !keep_alive {
                    stream = None;
                }
            }
            Err(_) => {
                if counted {
                    tally.errors += 1;
                }
                stream = None;
            }
        }
    }
    tally
}
