//! `[metrics] listen`: the Prometheus endpoint, scraped by a real HTTP
//! client (Python's urllib) and parsed by the Prometheus project's own
//! Python text parser (`prometheus_client.parser`), while the stock OpenSSH
//! client logs in, fails a code and asks for a target no role grants.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::world::{stderr, World};
use common::*;
use serde_json::Value;

const TOOLS: &[&str] = &["ssh", "sshd", "ssh-keygen", "oathtool"];
/// Debian's python3, where python3-prometheus-client installs.
const PYTHON: &str = "/usr/bin/python3";

/// Every family the issue asks for, as the Python parser names them
/// (counters without `_total`), with their type.
const FAMILIES: &[(&str, &str)] = &[
    ("gatehouse_logins", "counter"),
    ("gatehouse_auth_attempts", "counter"),
    ("gatehouse_lockouts", "counter"),
    ("gatehouse_refusals", "counter"),
    ("gatehouse_live_sessions", "gauge"),
    ("gatehouse_session_duration_seconds", "histogram"),
    ("gatehouse_bytes_relayed", "counter"),
    ("gatehouse_recording_segments_sealed", "counter"),
    ("gatehouse_recorder_queue_bytes", "gauge"),
    ("gatehouse_recording_failures", "counter"),
    ("gatehouse_wireguard_peers", "gauge"),
    ("gatehouse_wireguard_handshakes", "counter"),
    ("gatehouse_wireguard_dropped", "counter"),
    ("gatehouse_wireguard_tcp_resent", "counter"),
    ("gatehouse_db_statements", "counter"),
    ("gatehouse_db_errors", "counter"),
    ("gatehouse_config_reloads", "counter"),
    ("gatehouse_locks_in_force", "gauge"),
    ("gatehouse_anomalies", "counter"),
];

/// Fetches a URL with urllib and parses a 200's body with
/// `text_string_to_metric_families`; prints JSON.
const SCRAPE: &str = r#"
import json, sys, urllib.request, urllib.error
from prometheus_client.parser import text_string_to_metric_families
url, method = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, method=method)
out = {"families": {}}
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        out["status"] = r.status
        out["content_type"] = r.headers.get("Content-Type")
        text = r.read().decode("utf-8")
    out["text"] = text
    for f in text_string_to_metric_families(text):
        out["families"][f.name] = {
            "type": f.type,
            "samples": [[s.name, s.labels, s.value] for s in f.samples],
        }
except urllib.error.HTTPError as e:
    out["status"] = e.code
    out["content_type"] = e.headers.get("Content-Type")
print(json.dumps(out))
"#;

/// Like [`require_tools`], for Debian's python3 with prometheus_client.
fn require_parser() -> bool {
    if !require_tools(TOOLS) {
        return false;
    }
    require_python_module(
        PYTHON,
        "prometheus_client.parser",
        "python3-prometheus-client",
    )
}

/// One scrape, as urllib saw it and the Prometheus parser read it.
struct Scrape {
    status: u16,
    content_type: String,
    text: String,
    families: HashMap<String, Value>,
}

impl Scrape {
    /// The value of the sample `name` whose labels are exactly `labels`
    /// (0 when absent).
    fn value(&self, family: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        let Some(f) = self.families.get(family) else {
            panic!("family {family} missing:\n{}", self.text)
        };
        f["samples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                let l = s[1].as_object().unwrap();
                s[0] == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v))
            })
            .map(|s| s[2].as_f64().unwrap())
            .unwrap_or(0.0)
    }
}

fn request(port: u16, method: &str, path: &str) -> Scrape {
    let url = format!("http://127.0.0.1:{port}{path}");
    let out = run_checked_timeout(
        Command::new(PYTHON).args(["-c", SCRAPE, &url, method]),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "scrape failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("scrape JSON");
    Scrape {
        status: v["status"].as_u64().unwrap_or(0) as u16,
        content_type: v["content_type"].as_str().unwrap_or("").to_string(),
        text: v["text"].as_str().unwrap_or("").to_string(),
        families: v["families"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn scrape(port: u16) -> Scrape {
    let s = request(port, "GET", "/metrics");
    assert_eq!(s.status, 200, "{}", s.text);
    s
}

/// The TCP ports process `pid` listens on (its sockets in LISTEN state,
/// from /proc).
fn listening_ports(pid: u32) -> Vec<u16> {
    let mut inodes = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(link) = std::fs::read_link(fd.path()) {
            let l = link.display().to_string();
            if let Some(i) = l.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.push(i.to_string());
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address, st == 0A (LISTEN), inode.
            if cols.len() > 9 && cols[3] == "0A" && inodes.iter().any(|i| i == cols[9]) {
                let port = cols[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports.sort_unstable();
    ports
}

fn with_metrics(port: u16) -> impl FnOnce(GatehouseBuilder) -> GatehouseBuilder {
    move |b| {
        b.ssh_target("web-2", 22, &[])
            .raw(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\""))
    }
}

#[test]
fn metrics_count_the_logins_and_refusals_a_real_client_causes() {
    if !require_parser() {
        return;
    }
    let port = free_port();
    let w = World::start(with_metrics(port));
    assert!(wait_for_port(port, Duration::from_secs(10)));
    let before = scrape(port);
    assert!(
        before.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        before.content_type
    );
    for (family, kind) in FAMILIES {
        let f = before
            .families
            .get(*family)
            .unwrap_or_else(|| panic!("family {family} missing:\n{}", before.text));
        assert_eq!(f["type"], *kind, "{family}");
    }

    // A wrong code: a failed login. Then three logins (the first by code,
    // the others by code or MFA lease): one session, one refused target,
    // one session left open.
    let valid = [
        totp_step(&w.secret, -1),
        totp(&w.secret),
        totp_step(&w.secret, 1),
    ];
    let wrong = (0..1_000_000u32)
        .map(|n| format!("{:06}", (n * 7919 + 123_457) % 1_000_000))
        .find(|c| !valid.contains(c))
        .unwrap();
    w.client.set_code(&wrong);
    let out = w
        .client
        .run(&["-o", "NumberOfPasswordPrompts=1", "gw", "targets"]);
    assert!(!out.status.success());
    // A good login with a session to web-1.
    w.client.set_code(&totp(&w.secret));
    let out = w
        .client
        .run_jump(&w.login, "web-1", &["echo", "metrics-hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    w.session_end();
    // A target no role grants.
    w.client.set_code(&w.next_code());
    let out = w.client.run_jump(&w.login, "web-2", &["true"]);
    assert!(!out.status.success());
    w.gw.wait_for_event_named("channel.refused", Duration::from_secs(5))
        .expect("channel.refused");

    // A session that stays open: the live gauge shows it (by kind and
    // target) while it runs.
    let dest = format!("{}@web-1", w.login);
    let _open = w.client.spawn(&["-J", "gw", &dest, "sleep", "30"]);
    let live = |s: &Scrape| {
        s.value(
            "gatehouse_live_sessions",
            "gatehouse_live_sessions",
            &[("kind", "ssh"), ("target", "web-1")],
        )
    };
    assert!(
        wait_until(Duration::from_secs(15), || live(&scrape(port)) == 1.0),
        "no live session in:\n{}",
        scrape(port).text
    );
    assert_eq!(live(&before), 0.0);

    let after = scrape(port);
    let delta = |family: &str, name: &str, labels: &[(&str, &str)]| {
        after.value(family, name, labels) - before.value(family, name, labels)
    };
    let logins = "gatehouse_logins";
    let total = "gatehouse_logins_total";
    assert_eq!(
        delta(
            logins,
            total,
            &[("result", "failed"), ("admitted_by", "none")]
        ),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(
        delta(logins, total, &[("result", "ok"), ("admitted_by", "code")])
            + delta(logins, total, &[("result", "ok"), ("admitted_by", "lease")]),
        3.0,
        "{}",
        after.text
    );
    assert!(delta(logins, total, &[("result", "ok"), ("admitted_by", "code")]) >= 1.0);
    assert_eq!(
        delta(
            "gatehouse_auth_attempts",
            "gatehouse_auth_attempts_total",
            &[("method", "keyboard-interactive"), ("result", "failure")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "gatehouse_refusals",
            "gatehouse_refusals_total",
            &[("reason", "no_role")]
        ),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(
        delta(
            "gatehouse_session_duration_seconds",
            "gatehouse_session_duration_seconds_count",
            &[("kind", "ssh")]
        ),
        1.0
    );
    assert!(
        delta(
            "gatehouse_recording_segments_sealed",
            "gatehouse_recording_segments_sealed_total",
            &[]
        ) >= 1.0
    );
    // "metrics-hello\n" came down from web-1.
    assert!(
        delta(
            "gatehouse_bytes_relayed",
            "gatehouse_bytes_relayed_total",
            &[("direction", "down")]
        ) >= 14.0,
        "{}",
        after.text
    );
    // Nothing a client chose became a label: no user, no code, no source.
    for needle in ["alice", "127.0.0.1"] {
        assert!(
            !after.text.contains(needle),
            "{needle:?} in the exposition:\n{}",
            after.text
        );
    }
    // What listens: the SSH port and the metrics port.
    let mut expected = vec![w.gw.setup().port(), port];
    expected.sort_unstable();
    assert_eq!(listening_ports(w.gw.pid()), expected);
}

#[test]
fn metrics_are_off_without_the_section() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    // The SSH listener is the only one (nothing at 9469 or anywhere else).
    assert_eq!(listening_ports(w.gw.pid()), vec![w.gw.setup().port()]);
    let stderr = w.gw.stderr();
    assert!(!stderr.contains("metrics listener"), "{stderr}");
}

/// Sends raw bytes and returns the status line of the answer (empty when
/// the connection was closed without one).
fn raw_status(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn bad_requests_get_an_error_and_idle_scrapers_never_hold_up_logins() {
    if !require_parser() {
        return;
    }
    let port = free_port();
    let mut w = World::start(with_metrics(port));
    assert!(wait_for_port(port, Duration::from_secs(10)));
    assert_eq!(request(port, "POST", "/metrics").status, 405);
    assert_eq!(request(port, "GET", "/").status, 404);
    assert_eq!(request(port, "GET", "/metrics/../etc").status, 404);
    assert!(raw_status(port, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert!(raw_status(port, huge.as_bytes()).starts_with("HTTP/1.1 431"));

    // Eight scrapers that never send a byte: four hold every slot, the
    // others are closed at once, unanswered...
    let mut idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (mut held, mut closed) = (0, 0);
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                held += 1
            }
            other => panic!("an idle scraper got {other:?}"),
        }
    }
    assert!(held <= 4 && closed >= 4, "held {held}, closed {closed}");
    // ... and a login goes through meanwhile.
    let t = Instant::now();
    let out = w
        .client
        .run(&["-o", "NumberOfPasswordPrompts=1", "gw", "targets"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(10));
    drop(idle);
    // The slots come back; the daemon still runs and serves.
    assert!(wait_until(Duration::from_secs(15), || {
        raw_status(port, b"GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200")
    }));
    assert!(w.gw.try_wait().is_none(), "gatehouse exited");
    let s = scrape(port);
    assert!(s.families.contains_key("gatehouse_logins"));
}

#[test]
fn database_statements_errors_and_session_lengths_are_counted() {
    if !common::pgworld::tools() || !require_parser() {
        return;
    }
    let port = free_port();
    let db = common::pgworld::start("Pw-metrics-app_ro-3b1d", |b, _| {
        b.raw(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\""))
    });
    assert!(wait_for_port(port, Duration::from_secs(10)));
    let before = scrape(port);
    let ok = db.psql("app_ro", "select 6*7");
    assert!(ok.status.success(), "{}", stderr(&ok));
    let bad = db.psql("app_ro", "select * from no_such_table_here");
    assert!(!bad.status.success());
    let ended = |s: &Scrape| {
        s.value(
            "gatehouse_session_duration_seconds",
            "gatehouse_session_duration_seconds_count",
            &[("kind", "postgres")],
        )
    };
    assert!(
        wait_until(Duration::from_secs(15), || ended(&scrape(port))
            - ended(&before)
            == 2.0),
        "{}",
        scrape(port).text
    );
    let after = scrape(port);
    let delta = |family: &str, name: &str| {
        let l = [("kind", "postgres")];
        after.value(family, name, &l) - before.value(family, name, &l)
    };
    assert_eq!(
        delta("gatehouse_db_statements", "gatehouse_db_statements_total"),
        2.0,
        "{}",
        after.text
    );
    assert_eq!(
        delta("gatehouse_db_errors", "gatehouse_db_errors_total"),
        1.0,
        "{}",
        after.text
    );
    // No SQL text and no database login name in the page.
    assert!(!after.text.contains("no_such_table_here"));
    assert!(!after.text.contains("app_ro"));
}
