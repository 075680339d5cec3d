//! The closed-loop HTTP/1.1 client both load runs share: the suite's load test
//! (`tests/load.rs`) and the benchmarks' load generator (`examples/loadgen.rs`).
//!
//! It speaks just enough HTTP for the server's own answers (`Content-Length` or chunked
//! bodies, `Connection: close`) with as little work per request as possible, so that on
//! a small machine the server, not the generator, is what is measured.

#![allow(dead_code)] // Each user takes a different part of this module.

use std::ops::Range;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw HTTP/1.1 request: the request line, `Host`, `headers` (`Name: value`), a
/// `Content-Length` when there is a body or the method usually has one, and the body.
pub fn request(method: &str, host: &str, target: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for header in headers {
        head.push_str(header.trim());
        head.push_str("\r\n");
    }
    if !body.is_empty() || !matches!(method, "GET" | "HEAD") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// One answer, read whole into the caller's buffer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Whether the connection stays open.
    pub keep_alive: bool,
    /// Where the body is in the buffer (for a chunked body: from its first chunk's size
    /// line to the end, framing included).
    pub body: Range<usize>,
}

/// Writes `request` and reads one whole answer into `buf`.
pub async fn exchange(
    conn: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<Answer> {
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
    let end = if chunked {
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
                break at;
            }
        }
    } else {
        let need = head_end + length.unwrap_or(0);
        while buf.len() < need {
            read_more(conn, buf).await?;
        }
        need
    };
    Ok(Answer {
        status,
        keep_alive,
        body: head_end..end,
    })
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = conn.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
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

/// The `p`-th quantile (0..=1) of latencies in microseconds, sorted, in milliseconds;
/// 0 for none.
pub fn quantile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted_us[i]) / 1000.0
}
