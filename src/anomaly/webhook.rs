//! The anomaly webhook: each anomaly is POSTed as one JSON object to
//! `[anomaly] webhook`.
//!
//! Nothing on a login's path ever waits for it: [`Webhook::send`] only puts
//! the object in a bounded queue ([`QUEUE`]) and returns; when the queue is
//! full the anomaly is dropped from the webhook (never from the audit log)
//! and counted. One dedicated thread delivers, in order, with a timeout per
//! attempt ([`TIMEOUT`]) and at most [`RETRIES`] retries with doubling
//! backoff; a 2xx answer is a delivery.
//!
//! The client is `ureq` (blocking, on this thread of its own) with rustls
//! and the webpki root certificates: TLS is verified as usual. The URL may
//! carry a token, so it is never logged. Proxies are taken from the usual
//! environment variables, except for an `http://` (loopback-only) URL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// Anomalies waiting for delivery at most.
pub const QUEUE: usize = 256;
/// Time allowed for one delivery attempt (connect, TLS, request, answer).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Retries after a failed attempt.
pub const RETRIES: u32 = 3;
/// Wait before the first retry; doubled for each next one.
pub const BACKOFF: Duration = Duration::from_secs(1);

/// The sending side (cheap, never blocks).
pub struct Webhook {
    tx: SyncSender<Value>,
    stats: Arc<Stats>,
}

/// What happened to the anomalies given to the webhook.
#[derive(Debug, Default)]
pub struct Stats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

impl Webhook {
    /// Starts the delivery thread for `url`.
    pub fn start(url: String) -> std::io::Result<Webhook> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let stats = Arc::new(Stats::default());
        let s = stats.clone();
        std::thread::Builder::new()
            .name("anomaly-webhook".into())
            .spawn(move || deliver_loop(&url, &rx, &s, BACKOFF))?;
        Ok(Webhook { tx, stats })
    }

    /// Queues one anomaly; drops (and counts) it when the queue is full.
    pub fn send(&self, anomaly: Value) {
        match self.tx.try_send(anomaly) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // The first drop, then every 100th: a dead webhook must not
                // flood the log either.
                if dropped == 1 || dropped % 100 == 0 {
                    tracing::warn!(
                        dropped,
                        queue = QUEUE,
                        "anomaly webhook queue full: anomaly not posted (it is in the audit log)"
                    );
                }
            }
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

fn agent(url: &str) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .user_agent("gatehouse-anomaly");
    if url.starts_with("http://") {
        config = config.proxy(None);
    }
    config.build().into()
}

fn deliver_loop(url: &str, rx: &Receiver<Value>, stats: &Stats, backoff: Duration) {
    let agent = agent(url);
    while let Ok(anomaly) = rx.recv() {
        let body = anomaly.to_string();
        let rule = anomaly
            .get("rule")
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string();
        let mut wait = backoff;
        let mut attempt = 0;
        loop {
            let outcome = agent
                .post(url)
                .header("content-type", "application/json")
                .send(body.as_bytes());
            let error = match outcome {
                Ok(resp) if resp.status().is_success() => None,
                Ok(resp) => Some(format!("HTTP status {}", resp.status().as_u16())),
                Err(e) => Some(e.to_string()),
            };
            let Some(error) = error else {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                break;
            };
            if attempt >= RETRIES {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    rule = rule.as_str(),
                    attempts = attempt + 1,
                    error = error.as_str(),
                    "anomaly webhook delivery failed; giving up on this anomaly (it is in the audit log)"
                );
                break;
            }
            attempt += 1;
            std::thread::sleep(wait);
            wait = wait.saturating_mul(2);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::time::Instant;

    /// A server that answers `statuses` in turn (then 200) and returns
    /// the bodies it got.
    fn server(statuses: Vec<u16>) -> (String, Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut statuses = statuses.into_iter();
            for conn in l.incoming() {
                let mut conn = conn.unwrap();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap() == 0 {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let status = statuses.next().unwrap_or(200);
                let _ = tx.send(String::from_utf8(body).unwrap());
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        (url, rx)
    }

    #[test]
    fn a_failed_delivery_is_retried_with_backoff_then_delivered() {
        let (url, bodies) = server(vec![500, 503]);
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let stats = Arc::new(Stats::default());
        let s = stats.clone();
        std::thread::spawn(move || deliver_loop(&url, &rx, &s, Duration::from_millis(10)));
        tx.send(serde_json::json!({"rule": "new_network"})).unwrap();
        for _ in 0..3 {
            let body = bodies.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(body.contains("new_network"));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats.delivered.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn retries_are_bounded() {
        let (url, bodies) = server(vec![500; 10]);
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let stats = Arc::new(Stats::default());
        let s = stats.clone();
        std::thread::spawn(move || deliver_loop(&url, &rx, &s, Duration::from_millis(1)));
        tx.send(serde_json::json!({"rule": "x"})).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats.failed.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
        let got: Vec<String> = bodies.try_iter().collect();
        assert_eq!(got.len(), 1 + RETRIES as usize);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        // A server that accepts and never answers.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let hook = Webhook::start(url).unwrap();
        let t0 = Instant::now();
        for _ in 0..(QUEUE + 50) {
            hook.send(serde_json::json!({"rule": "x"}));
        }
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert!(hook.stats().dropped.load(Ordering::Relaxed) >= 49);
        drop(l);
    }
}
