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
//! second and latency percentiles in milliseconds. It speaks just enough HTTP for the
//! server's own answers (`Content-Length` or chunked bodies), with as little work per
//! request as possible, so that on a small machine the server, not the generator, is
//! what is measured.

use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let mut request = format!("{} {target} HTTP/1.1\r\nHost: {host}\r\n", args.method);
    for header in &args.headers {
        request.push_str(header.trim());
        request.push_str("\r\n");
    }
    if !body.is_empty() || !matches!(args.method.as_str(), "GET" | "HEAD") {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(&body);
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
    let pct = |p: f64| -> f64 {
        if all.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((all.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(all.latencies_us[i]) / 1000.0
    };
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
        let answer = exchange(conn, request, &mut buf).await;
        let done = Instant::now();
        let counted = sent >= measure_from && done <= until;
        match answer {
            Ok((status, keep_alive)) => {
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

/// Writes the request and reads one whole answer: `(status, whether the connection
/// stays open)`.
async fn exchange(
    conn: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<(u16, bool)> {
    conn.write_all(request).await?;
    buf.clear();
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        read_more(conn, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(invalid)?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("no status line"))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep_alive = true;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        }
    }
    if chunked {
        // Chunks: a hex size line, the bytes, CRLF; a zero size ends the body.
        let mut at = head_end;
        loop {
            let line_end = loop {
                if let Some(i) = find(&buf[at..], b"\r\n") {
                    break at + i;
                }
                read_more(conn, buf).await?;
            };
            let size_text = std::str::from_utf8(&buf[at..line_end]).map_err(invalid)?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(invalid)?;
            let need = line_end + 2 + size + 2;
            while buf.len() < need {
                read_more(conn, buf).await?;
            }
            at = need;
            if size == 0 {
                break;
            }
        }
    } else {
        let need = head_end + length.unwrap_or(0);
        while buf.len() < need {
            read_more(conn, buf).await?;
        }
    }
    Ok((status, keep_alive))
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = conn.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}
