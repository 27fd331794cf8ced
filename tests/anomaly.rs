//! Unusual activity (`[anomaly]`), with real logins by the stock OpenSSH
//! client: each rule fires its `anomaly.*` audit event on the behaviour it
//! is named after (and not before), each anomaly reaches the webhook as
//! JSON, and a webhook that never answers does not slow a login.
//!
//! Source networks: the client binds to other loopback addresses
//! (`BindAddress 127.0.1.5`); 127.0.0.0/8 is all loopback, and 127.0.0.x and
//! 127.0.1.x are different /24s.
//!
//! Metrics (`gatehouse_anomalies_total{rule}`) are asserted by the metrics
//! tests, which scrape the endpoint.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use common::world::stderr;
use common::*;

const TOOLS: &[&str] = &["ssh", "sshd", "ssh-keygen"];
const WAIT: Duration = Duration::from_secs(15);

/// A gateway with `[anomaly]` (plus `extra` lines in it), alice in role web
/// granting two targets (web-1, web-2: the same sshd), and alice's client.
struct AWorld {
    _sshd: Sshd,
    gw: Gatehouse,
    secret: String,
    client: SshClient,
    login: String,
    _keys: TempDir,
    /// Where `[metrics]` serves `/metrics` (each rule also counts there).
    metrics_port: u16,
}

impl AWorld {
    /// `seed`: the contents of `anomaly.json` in the state directory
    /// before the gateway starts (a learned history).
    fn start(extra: &[&str], seed: Option<&str>) -> AWorld {
        // Failure bursts are the subject here, not lockouts.
        AWorld::start_with(extra, seed, &["max_failures = 1000"])
    }

    /// Like [`AWorld::start`] with these `[auth]` lines.
    fn start_with(extra: &[&str], seed: Option<&str>, auth: &[&str]) -> AWorld {
        let keys = tempfile::Builder::new()
            .prefix("gh-keys-")
            .tempdir()
            .expect("tempdir");
        let key = gen_ed25519(keys.path(), "alice");
        let sshd = Sshd::start(&[]);
        let login = sshd.login.clone();
        let mut section = String::from("[anomaly]\n");
        for l in extra {
            section.push_str(l);
            section.push('\n');
        }
        let metrics_port = free_port();
        let mut builder = GatehouseBuilder::new()
            .user("alice", &["web"], &[&key.public_line])
            .role("web", &["web-1", "web-2"], &[&login])
            .ssh_target("web-1", sshd.port, &[&sshd.host_public_key])
            .ssh_target("web-2", sshd.port, &[&sshd.host_public_key])
            .raw(&section)
            .raw(&format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\""));
        for line in auth {
            builder = builder.auth_line(line);
        }
        let setup = builder.build();
        sshd.set_authorized_keys(&[&setup.client_pubkey()]);
        let secret = setup.enroll("alice");
        if let Some(seed) = seed {
            let path = setup.state_dir().join("anomaly.json");
            std::fs::write(&path, seed).expect("seed anomaly.json");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("chmod anomaly.json");
        }
        let gw = setup.start();
        let client = SshClient::new(&key, "alice", &gw, &["web-1", "web-2"]);
        client.set_code(&totp(&secret));
        AWorld {
            _sshd: sshd,
            gw,
            secret,
            client,
            login,
            _keys: keys,
            metrics_port,
        }
    }

    /// `gatehouse_anomalies_total{rule="RULE"}` from a scrape of /metrics.
    fn counted(&self, rule: &str) -> u64 {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.metrics_port)) else {
            return 0;
        };
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: gh\r\nConnection: close\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let needle = format!("gatehouse_anomalies_total{{rule=\"{rule}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(needle.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or(0)
    }

    /// The rule's metric counts exactly as many anomalies as were audited.
    fn assert_counted(&self, rule: &str) {
        let audited = self.events(&format!("anomaly.{rule}")).len() as u64;
        assert!(audited > 0);
        assert!(
            wait_until(WAIT, || self.counted(rule) == audited),
            "gatehouse_anomalies_total{{rule={rule:?}}} is {}, {audited} audited",
            self.counted(rule)
        );
    }

    /// `ssh -J gw LOGIN@TARGET true` from `bind` (a loopback address).
    fn jump_from(&self, bind: &str, target: &str) -> std::process::Output {
        self.client.set_option("BindAddress", bind);
        self.client.run_jump(&self.login, target, &["true"])
    }

    fn events(&self, name: &str) -> Vec<Value> {
        self.gw.events(name)
    }

    /// Waits until `n` `login` events were audited.
    fn wait_logins(&self, n: usize) {
        assert!(
            wait_until(WAIT, || self.events("login").len() >= n),
            "expected {n} logins; stderr:\n{}",
            self.gw.stderr()
        );
    }
}

/// A local webhook receiver: answers 200 to every POST and keeps the
/// bodies, or (`answer = false`) accepts connections and never answers.
struct Hook {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    fn start(answer: bool) -> Hook {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind hook");
        let url = format!("http://{}/hook?token=test", l.local_addr().expect("addr"));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let b = bodies.clone();
        std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            for conn in l.incoming() {
                let Ok(conn) = conn else { break };
                if !answer {
                    held.push(conn);
                    continue;
                }
                if let Some(body) = serve_one(conn) {
                    b.lock().unwrap().push(body);
                }
            }
        });
        Hook { url, bodies }
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    fn wait_for(&self, event: &str) -> Value {
        let mut found = None;
        wait_until(WAIT, || {
            found = self.bodies().into_iter().find(|b| b["event"] == event);
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no {event} posted; got {:?}", self.bodies()))
    }
}

/// Reads one HTTP/1.1 POST (headers, Content-Length body), answers 200.
fn serve_one(mut conn: TcpStream) -> Option<Value> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut request_line = String::new();
    r.read_line(&mut request_line).ok()?;
    assert!(
        request_line.starts_with("POST /hook?token=test "),
        "{request_line}"
    );
    let mut len = 0usize;
    let mut json = false;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
        if lower.starts_with("content-type: application/json") {
            json = true;
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    assert!(json, "the webhook posts application/json");
    serde_json::from_slice(&body).ok()
}

fn hour_of_week(unix: u64) -> u64 {
    (unix / 3600 + 72) % 168
}

#[test]
fn a_login_from_a_network_never_seen_for_the_user_is_an_anomaly_and_is_posted() {
    if !require_tools(TOOLS) {
        return;
    }
    let hook = Hook::start(true);
    let webhook = format!("webhook = {}", toml_str(&hook.url));
    let w = AWorld::start(&[&webhook, "unusual_hour = false"], None);

    // The first login ever only learns.
    let out = w.jump_from("127.0.0.1", "web-1");
    assert!(out.status.success(), "{}", stderr(&out));
    w.wait_logins(1);
    assert!(w.events("anomaly.new_network").is_empty());

    // From 127.0.1.5: another /24.
    w.client.set_code(&totp_step(&w.secret, 1));
    let out = w.jump_from("127.0.1.5", "web-1");
    assert!(out.status.success(), "{}", stderr(&out));
    let ev =
        w.gw.wait_for_event_named("anomaly.new_network", WAIT)
            .unwrap_or_else(|| panic!("no anomaly.new_network:\n{}", w.gw.stderr()));
    w.assert_counted("new_network");
    assert_eq!(ev["user"], "alice");
    assert_eq!(ev["network"], "127.0.1.0/24");
    assert_eq!(ev["source"], "127.0.1.5");
    assert_eq!(ev["via"], "address");
    assert_eq!(ev["known_networks"], 1);
    assert_eq!(ev["message_id"], "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5f01");

    // Learned: again from there (an MFA lease) is not an anomaly.
    let out = w.jump_from("127.0.1.5", "web-1");
    assert!(out.status.success(), "{}", stderr(&out));
    w.wait_logins(3);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(w.events("anomaly.new_network").len(), 1);

    // Posted to the webhook, with the evidence and no secret.
    let body = hook.wait_for("anomaly.new_network");
    assert_eq!(body["rule"], "new_network");
    assert_eq!(body["user"], "alice");
    assert_eq!(body["source"], "127.0.1.5");
    assert_eq!(body["evidence"]["network"], "127.0.1.0/24");
    assert!(body["time_unix"].as_u64().is_some());
    let text = body.to_string();
    assert!(!text.contains(&totp_step(&w.secret, 1)) && !text.contains(&w.secret));

    // Persisted in the state directory, 0600.
    let path = w.gw.setup().state_dir().join("anomaly.json");
    assert!(wait_until(WAIT, || std::fs::read_to_string(&path)
        .is_ok_and(|t| t.contains("127.0.1.0/24"))));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_login_at_an_hour_not_seen_in_30_days_is_an_anomaly_after_the_learning_period() {
    if !require_tools(TOOLS) {
        return;
    }
    // A history learned over 20 days: every hour of the week within the last
    // 30 days except this one and the next (a login may cross the hour),
    // which were last seen 40 days ago.
    let now = unix_now();
    let (this, next) = (hour_of_week(now), (hour_of_week(now) + 1) % 168);
    let hours: serde_json::Map<String, Value> = (0..168u64)
        .map(|h| {
            let seen = if h == this || h == next {
                now - 40 * 86400
            } else {
                now - 86400
            };
            (h.to_string(), Value::from(seen))
        })
        .collect();
    let seed = serde_json::json!({
        "version": 1,
        "users": {"alice": {
            "first_seen": now - 50 * 86400,
            "networks": {"127.0.0.0/24": now - 86400},
            "hours": hours,
        }}
    });
    let w = AWorld::start(&["learning_period = \"14d\""], Some(&seed.to_string()));
    let out = w.jump_from("127.0.0.1", "web-1");
    assert!(out.status.success(), "{}", stderr(&out));
    let ev =
        w.gw.wait_for_event_named("anomaly.unusual_hour", WAIT)
            .unwrap_or_else(|| panic!("no anomaly.unusual_hour:\n{}", w.gw.stderr()));
    w.assert_counted("unusual_hour");
    assert_eq!(ev["user"], "alice");
    let how = ev["hour_of_week"].as_u64().unwrap();
    assert!(how == this || how == next, "{ev}");
    assert_eq!(ev["active_hours"], 166);
    assert!(ev["when"].as_str().unwrap().ends_with("UTC"));
    assert_eq!(ev["message_id"], "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5f02");
    // A known network is not an anomaly.
    assert!(w.events("anomaly.new_network").is_empty());

    // Now learned: another login in the same hour is usual.
    let out = w.jump_from("127.0.0.1", "web-1");
    assert!(out.status.success(), "{}", stderr(&out));
    w.wait_logins(2);
    std::thread::sleep(Duration::from_millis(300));
    let same: Vec<Value> = w
        .events("anomaly.unusual_hour")
        .into_iter()
        .filter(|e| e["hour_of_week"] == how)
        .collect();
    assert_eq!(same.len(), 1);
}

#[test]
fn a_user_still_in_the_learning_period_is_not_judged_by_the_hour() {
    if !require_tools(TOOLS) {
        return;
    }
    // First seen 3 days ago, no hour seen: inside the default 14 days.
    let now = unix_now();
    let seed = serde_json::json!({
        "version": 1,
        "users": {"alice": {
            "first_seen": now - 3 * 86400,
            "networks": {"127.0.0.0/24": now - 86400},
            "hours": {},
        }}
    });
    let w = AWorld::start(&[], Some(&seed.to_string()));
    let out = w.jump_from("127.0.0.1", "web-1");
    assert!(out.status.success(), "{}", stderr(&out));
    w.wait_logins(1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(w.events("anomaly.unusual_hour").is_empty());
}

#[test]
fn failed_logins_from_one_source_against_many_users_are_one_anomaly() {
    if !require_tools(TOOLS) {
        return;
    }
    let hook = Hook::start(true);
    let webhook = format!("webhook = {}", toml_str(&hook.url));
    let w = AWorld::start(&[&webhook, "max_failed_users = 2"], None);
    w.client.set_option("BindAddress", "127.0.0.7");
    for user in ["bob", "carol", "dave", "erin"] {
        let out = w.client.run(&["-l", user, "gw", "true"]);
        assert!(!out.status.success());
    }
    let ev =
        w.gw.wait_for_event_named("anomaly.failed_logins", WAIT)
            .unwrap_or_else(|| panic!("no anomaly.failed_logins:\n{}", w.gw.stderr()));
    w.assert_counted("failed_logins");
    assert_eq!(ev["pattern"], "one_source_many_users");
    assert_eq!(ev["source"], "127.0.0.7");
    assert_eq!(ev["distinct"], 3);
    assert_eq!(ev["limit"], 2);
    assert_eq!(ev["sample"], "bob,carol,dave");
    assert_eq!(ev["message_id"], "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5f05");
    std::thread::sleep(Duration::from_millis(300));
    // Once per burst: erin's failure is the same burst.
    assert_eq!(w.events("anomaly.failed_logins").len(), 1);
    let body = hook.wait_for("anomaly.failed_logins");
    assert_eq!(body["evidence"]["pattern"], "one_source_many_users");
    assert_eq!(body["evidence"]["distinct"], 3);
}

#[test]
fn failed_logins_still_count_once_the_source_is_locked_out() {
    if !require_tools(TOOLS) {
        return;
    }
    // The source is locked after 2 failed connections; the attacker goes on.
    let w = AWorld::start_with(&["max_failed_users = 3"], None, &["max_failures = 2"]);
    w.client.set_option("BindAddress", "127.0.0.8");
    for user in ["bob", "carol", "dave", "erin"] {
        let out = w.client.run(&["-l", user, "gw", "true"]);
        assert!(!out.status.success());
    }
    assert!(
        w.gw.wait_for_event_named("auth.lockout", WAIT).is_some(),
        "the source was locked out: {}",
        w.gw.stderr()
    );
    let ev =
        w.gw.wait_for_event_named("anomaly.failed_logins", WAIT)
            .unwrap_or_else(|| panic!("no anomaly.failed_logins:\n{}", w.gw.stderr()));
    w.assert_counted("failed_logins");
    assert_eq!(ev["pattern"], "one_source_many_users");
    assert_eq!(ev["source"], "127.0.0.8");
    assert_eq!(ev["distinct"], 4);
}

#[test]
fn failed_logins_against_one_user_from_many_sources_are_one_anomaly() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = AWorld::start(&["max_failed_sources = 2", "new_network = false"], None);
    // alice's key, a wrong code (five steps away), from three addresses.
    w.client.set_code(&totp_step(&w.secret, 5));
    for bind in ["127.0.2.1", "127.0.2.2", "127.0.2.3"] {
        let out = w.jump_from(bind, "web-1");
        assert!(!out.status.success());
    }
    let ev =
        w.gw.wait_for_event_named("anomaly.failed_logins", WAIT)
            .unwrap_or_else(|| panic!("no anomaly.failed_logins:\n{}", w.gw.stderr()));
    w.assert_counted("failed_logins");
    assert_eq!(ev["pattern"], "one_user_many_sources");
    assert_eq!(ev["user"], "alice");
    assert_eq!(ev["distinct"], 3);
    assert_eq!(ev["sample"], "127.0.2.1,127.0.2.2,127.0.2.3");
    // Never a code in the evidence.
    assert!(!w.gw.stderr().contains(&totp_step(&w.secret, 5)));
}

#[test]
fn sessions_to_more_targets_than_allowed_within_the_window_are_an_anomaly() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = AWorld::start(&["max_targets = 1", "target_window = \"10m\""], None);
    let out = w.jump_from("127.0.0.1", "web-1");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = w.jump_from("127.0.0.1", "web-1");
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        w.events("anomaly.target_spread").is_empty(),
        "one target twice is usual"
    );
    let out = w.jump_from("127.0.0.1", "web-2");
    assert!(out.status.success(), "{}", stderr(&out));
    let ev =
        w.gw.wait_for_event_named("anomaly.target_spread", WAIT)
            .unwrap_or_else(|| panic!("no anomaly.target_spread:\n{}", w.gw.stderr()));
    w.assert_counted("target_spread");
    assert_eq!(ev["user"], "alice");
    assert_eq!(ev["targets"], "web-1,web-2");
    assert_eq!(ev["distinct"], 2);
    assert_eq!(ev["window_s"], 600);
    assert_eq!(ev["message_id"], "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5f03");
}

#[test]
fn a_session_moving_more_bytes_to_the_user_than_allowed_is_one_anomaly() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = AWorld::start(&["max_bytes_down = \"256KiB\""], None);
    // A small session first: no anomaly.
    let out = w
        .client
        .run_jump(&w.login, "web-1", &["head -c 1000 /dev/zero; sleep 2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(w.events("anomaly.bulk_transfer").is_empty());
    // 4 MB towards the user, still there for the once-a-second look.
    let out = w.client.run_jump(
        &w.login,
        "web-1",
        &["head -c 4000000 /dev/zero; sleep 3; head -c 1000000 /dev/zero"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), 5_000_000);
    let ev =
        w.gw.wait_for_event_named("anomaly.bulk_transfer", WAIT)
            .unwrap_or_else(|| panic!("no anomaly.bulk_transfer:\n{}", w.gw.stderr()));
    w.assert_counted("bulk_transfer");
    assert_eq!(ev["user"], "alice");
    assert_eq!(ev["target"], "web-1");
    assert_eq!(ev["limit"], 256 * 1024);
    assert!(ev["bytes_down"].as_u64().unwrap() > 256 * 1024);
    assert_eq!(ev["message_id"], "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5f04");
    let ends = w.gw.events("session.end");
    let session = ends
        .iter()
        .find(|e| e["session_id"] == ev["session_id"])
        .unwrap_or_else(|| panic!("{ev} names no session; ends: {ends:?}"));
    assert!(session["bytes_down"].as_u64().unwrap() >= 5_000_000);
    // Once per session, though it went on moving bytes.
    assert_eq!(w.events("anomaly.bulk_transfer").len(), 1);
}

#[test]
fn a_webhook_that_never_answers_does_not_delay_logins() {
    if !require_tools(TOOLS) {
        return;
    }
    let hook = Hook::start(false);
    let webhook = format!("webhook = {}", toml_str(&hook.url));
    let w = AWorld::start(&[&webhook, "max_failed_users = 1"], None);
    let out = w.jump_from("127.0.0.1", "web-1");
    assert!(out.status.success(), "{}", stderr(&out));
    // Anomalies to post: a new network, then failure bursts from several
    // sources; the webhook hangs on the first (5 s per attempt, retried).
    // Each login or attempt that finds one takes its usual time.
    let quick = |what: &str, t: Instant| {
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "{what} took {:?}",
            t.elapsed()
        );
    };
    w.client.set_code(&totp_step(&w.secret, 1));
    let t0 = Instant::now();
    let out = w.jump_from("127.0.1.5", "web-1");
    assert!(out.status.success(), "{}", stderr(&out));
    quick("the login from a new network", t0);
    assert!(w
        .gw
        .wait_for_event_named("anomaly.new_network", WAIT)
        .is_some());
    for i in 1..=4 {
        let bind = format!("127.0.3.{i}");
        w.client.set_option("BindAddress", &bind);
        for user in ["bob", "carol"] {
            let t = Instant::now();
            let _ = w.client.run(&["-l", user, "gw", "true"]);
            quick("a failed attempt", t);
        }
    }
    for _ in 0..2 {
        let t = Instant::now();
        let out = w.jump_from("127.0.1.5", "web-1");
        assert!(out.status.success(), "{}", stderr(&out));
        quick("a login", t);
    }
    assert!(w.gw.events("anomaly.failed_logins").len() >= 4);
    // Everything above took less than one webhook timeout and its retries.
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert!(hook.bodies().is_empty());
}
