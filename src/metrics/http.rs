//! The `/metrics` endpoint: a minimal HTTP/1.1 responder over tokio.
//!
//! One path, one method, one response per connection (`Connection:
//! close`), which is all a Prometheus scraper needs; a full HTTP stack
//! (hyper) would bring a second server framework into the daemon for a
//! request line. What bounds it:
//! - at most [`MAX_SCRAPERS`] connections are served at once; past that a
//!   connection is closed at once, without reading it;
//! - at most [`MAX_REQUEST_BYTES`] of request head are read;
//! - a connection gets [`SCRAPE_DEADLINE`] from accept to the last byte;
//! - the exposition is rendered on the blocking pool, one at a time, so a
//!   scrape never holds an async worker that logins run on.
//!
//! Nothing here reads anything but the request line: headers are skipped,
//! a body is never read, and nothing the client sent is echoed.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::live::Registry;

/// Connections served at once.
pub const MAX_SCRAPERS: usize = 4;
/// Longest request head (request line and headers) read.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time a connection gets from accept to the end of the response.
pub const SCRAPE_DEADLINE: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` on `listener` until `shutdown` becomes true. The
/// live-session gauge is computed from `registry` on each scrape.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(5);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let slots = Arc::new(Semaphore::new(MAX_SCRAPERS));
    let mut backoff = MIN_BACKOFF;
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => { backoff = MIN_BACKOFF; s }
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: accept failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        // Over the cap: closed without a byte read or written.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SCRAPE_DEADLINE, answer(stream, registry)).await;
            drop(permit);
        });
    }
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Request {
    Metrics,
    NotFound,
    MethodNotAllowed,
    Malformed,
    TooLarge,
}

/// Reads the request head (up to [`MAX_REQUEST_BYTES`]) and classifies it.
async fn read_request(stream: &mut TcpStream) -> io::Result<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if head_complete(&buf) {
            return Ok(classify(&buf));
        }
        if buf.len() >= MAX_REQUEST_BYTES {
            return Ok(Request::TooLarge);
        }
        let room = MAX_REQUEST_BYTES - buf.len();
        let want = room.min(chunk.len());
        let Some(window) = chunk.get_mut(..want) else {
            return Ok(Request::TooLarge);
        };
        let n = stream.read(window).await?;
        if n == 0 {
            return Ok(Request::Malformed);
        }
        buf.extend_from_slice(window.get(..n).unwrap_or_default());
    }
}

fn head_complete(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n")
}

/// Classifies a request head by its request line.
pub(super) fn classify(head: &[u8]) -> Request {
    let line_end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    let Some(line) = head.get(..line_end) else {
        return Request::Malformed;
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return Request::Malformed;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Malformed;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Request::Malformed;
    }
    if method != "GET" {
        return Request::MethodNotAllowed;
    }
    let path = target.split('?').next().unwrap_or(target);
    if path == "/metrics" {
        Request::Metrics
    } else {
        Request::NotFound
    }
}

/// The whole response for a request (status line, headers, body).
fn respond(status: &str, content_type: &str, extra: &str, body: &str) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

async fn answer(mut stream: TcpStream, registry: Arc<Registry>) -> io::Result<()> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let request = read_request(&mut stream).await?;
    let response = match request {
        Request::Metrics => {
            let body = tokio::task::spawn_blocking(move || super::render(&registry))
                .await
                .unwrap_or_default();
            respond(
                "200 OK",
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                "",
                &body,
            )
        }
        Request::NotFound => respond(
            "404 Not Found",
            TEXT,
            "",
            "not found: gatehouse serves only /metrics\n",
        ),
        Request::MethodNotAllowed => respond(
            "405 Method Not Allowed",
            TEXT,
            "Allow: GET\r\n",
            "method not allowed: use GET /metrics\n",
        ),
        Request::Malformed => respond("400 Bad Request", TEXT, "", "bad request\n"),
        Request::TooLarge => respond(
            "431 Request Header Fields Too Large",
            TEXT,
            "",
            "request head too large\n",
        ),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await?;
    // Take what the client still sends (bounded by the deadline), so the
    // close is a FIN and the response is not lost to a reset.
    let drain = async {
        let mut sink = [0u8; 1024];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            let n = stream.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        Ok::<(), io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    Ok(())
}
