//! Prometheus metrics (`[metrics] listen`): the families operators scrape.
//!
//! One process-wide set of families ([`prometheus_client`], the Prometheus
//! project's own Rust client: it writes the exposition format, we do not),
//! created on first use. The hooks below are what the rest of gatehouse
//! calls, mostly from inside the `audit` functions that already mark the
//! moment; on a hot path (bytes relayed, database statements) a hook is one
//! atomic add on a counter handle taken once, never a lock or a lookup.
//!
//! Every label value is from a fixed set: a hook maps whatever it is given
//! onto that set (`other` when it does not know it). No user name, source
//! address, SQL text or other client-chosen string ever becomes a label;
//! target names come from the config and are bounded by it.
//!
//! The families are encoded on each scrape by [`http`] (`GET /metrics`),
//! which also computes the live-session gauge from [`crate::live::Registry`].

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod http;

use std::borrow::Cow;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

pub use http::{serve, MAX_REQUEST_BYTES, MAX_SCRAPERS, SCRAPE_DEADLINE};

/// A label set of one label.
type L1 = [(&'static str, Cow<'static, str>); 1];
/// A label set of two labels.
type L2 = [(&'static str, Cow<'static, str>); 2];
type Histograms = Family<L1, Histogram, fn() -> Histogram>;

/// Login results (`gatehouse_logins_total{result}`).
const LOGIN_RESULTS: &[&str] = &["ok", "failed", "refused"];
/// How a login was admitted (`none` for failed and refused ones).
const ADMITTED_BY: &[&str] = &["code", "lease", "none"];
/// Authentication methods named by `audit::auth_attempt`.
const AUTH_METHODS: &[&str] = &[
    "publickey",
    "keyboard-interactive",
    "db-code",
    "jump-publickey",
];
const AUTH_RESULTS: &[&str] = &["success", "partial", "failure"];
/// Second-factor methods: their failure is a failed login.
const SECOND_FACTOR: &[&str] = &["keyboard-interactive", "db-code"];
/// Session kinds (as in [`crate::live::SessionKind`]).
const KINDS: &[&str] = &["ssh", "postgres", "mysql"];
const DB_KINDS: &[&str] = &["postgres", "mysql"];
const RELOAD_RESULTS: &[&str] = &["ok", "invalid", "restart_required"];

/// Why something was refused: `gatehouse_refusals_total{reason}`.
pub const REFUSAL_REASONS: &[&str] = &[
    // Authentication refused while a lockout (failed attempts) is in force.
    "locked",
    // Refused by an administrator's lock (`gatehouse lock user/device/target`).
    "admin_lock",
    // Policy: no such target, no role grants it, login not allowed.
    "unknown_target",
    "no_role",
    "login_not_allowed",
    // The session's recording could not start (fail closed).
    "recording",
    // The target could not be reached or refused gatehouse.
    "upstream",
    // A channel or forwarding request (agent, tcpip-forward, subsystem...).
    "channel",
    // Pre-authentication caps and descriptor exhaustion.
    "max_startups_per_source",
    "max_startups",
    "no_descriptors",
    // A database connection refused (login, protocol, options...).
    "database",
    // A command inside a database session (COM_CHANGE_USER, LOCAL INFILE...).
    "db_command",
    // A tunnel connection over a cap.
    "tunnel_connection_cap",
    // gatehouse closed an authenticated connection (age, re-check).
    "connection_closed",
    "other",
];

/// Reasons WireGuard packets or datagrams were dropped, in the order of
/// [`WireGuardCounters::dropped`].
pub const WG_DROP_REASONS: [&str; 10] = [
    "invalid",
    "unknown_peer",
    "handshake_budget",
    "oversized",
    "spoofed",
    "not_for_gateway",
    "protocol",
    "malformed",
    "misbooked",
    "connection_cap",
];

/// Anomaly rules counted under their own name; any more are `other`.
const MAX_ANOMALY_RULES: usize = 16;

/// Session-length buckets, seconds: a second to a day.
const DURATION_BUCKETS: [f64; 12] = [
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
];

/// A family whose `# HELP`/`# TYPE` lines are written even while it has
/// no series (the encoder leaves empty families out): a scraper sees that
/// `gatehouse_live_sessions` exists, and is 0, before the first session.
#[derive(Debug)]
struct AlwaysShown<M>(M);

impl<M: EncodeMetric> EncodeMetric for AlwaysShown<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// `value` if it is one of `allowed`, else `other`: a label value never
/// comes from outside a fixed set.
fn pick(value: &str, allowed: &'static [&'static str]) -> &'static str {
    allowed
        .iter()
        .find(|a| **a == value)
        .copied()
        .unwrap_or("other")
}

fn l1(k: &'static str, v: &'static str) -> L1 {
    [(k, Cow::Borrowed(v))]
}

fn l2(k1: &'static str, v1: &'static str, k2: &'static str, v2: &'static str) -> L2 {
    [(k1, Cow::Borrowed(v1)), (k2, Cow::Borrowed(v2))]
}

/// Cumulative WireGuard counters as the tunnel keeps them (since start);
/// published every couple of seconds with [`wireguard`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireGuardCounters {
    /// Configured devices.
    pub peers: u64,
    /// Drops, in the order of [`WG_DROP_REASONS`].
    pub dropped: [u64; 10],
    /// TCP segments the tunnel sent again (loss recovery).
    pub resent: u64,
}

/// Every family, and the handles the hot paths use.
struct Metrics {
    registry: Registry,
    logins: Family<L2, Counter>,
    auth_attempts: Family<L2, Counter>,
    lockouts: Counter,
    refusals: Family<L1, Counter>,
    live_sessions: Family<L2, Gauge>,
    durations: Histograms,
    bytes_up: Counter,
    bytes_down: Counter,
    segments_sealed: Counter,
    recorder_queue: Gauge,
    recording_failures: Counter,
    wg_peers: Gauge,
    wg_handshakes: Counter,
    wg_dropped: [Counter; 10],
    wg_resent: Counter,
    wg_last: Mutex<WireGuardCounters>,
    db_statements: [Counter; 2],
    db_errors: [Counter; 2],
    reloads: Family<L1, Counter>,
    locks: Gauge,
    anomalies: Family<L1, Counter>,
    anomaly_rules: Mutex<Vec<String>>,
    /// One scrape at a time computes the live gauge and encodes.
    scrape: Mutex<()>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

fn m() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("gatehouse");
        let logins = Family::<L2, Counter>::default();
        for (res, by) in [
            ("ok", "code"),
            ("ok", "lease"),
            ("failed", "none"),
            ("refused", "none"),
        ] {
            logins.get_or_create_owned(&l2("result", res, "admitted_by", by));
        }
        r.register(
            "logins",
            "Logins to the gateway by result (ok, failed second factor, refused while locked) and how the second factor was met",
            logins.clone(),
        );
        let auth_attempts = Family::<L2, Counter>::default();
        r.register(
            "auth_attempts",
            "Authentication attempts (every audited auth.attempt) by method and result",
            AlwaysShown(auth_attempts.clone()),
        );
        let lockouts = Counter::default();
        r.register(
            "lockouts",
            "Lockouts started (a user or a source after too many failures)",
            lockouts.clone(),
        );
        let refusals = Family::<L1, Counter>::default();
        for reason in REFUSAL_REASONS {
            refusals.get_or_create_owned(&l1("reason", reason));
        }
        r.register(
            "refusals",
            "Refusals by reason (a fixed set; see the README)",
            refusals.clone(),
        );
        let live_sessions = Family::<L2, Gauge>::default();
        r.register(
            "live_sessions",
            "Live relayed sessions by kind and target, at the time of the scrape",
            AlwaysShown(live_sessions.clone()),
        );
        let durations: Histograms = Family::new_with_constructor(duration_histogram);
        for kind in KINDS {
            durations.get_or_create_owned(&l1("kind", kind));
        }
        r.register(
            "session_duration_seconds",
            "Length of ended sessions by kind",
            durations.clone(),
        );
        let bytes = Family::<L1, Counter>::default();
        let bytes_up = bytes.get_or_create_owned(&l1("direction", "up"));
        let bytes_down = bytes.get_or_create_owned(&l1("direction", "down"));
        r.register(
            "bytes_relayed",
            "Bytes relayed by live sessions: up is user to target, down is target to user",
            bytes,
        );
        let segments_sealed = Counter::default();
        r.register(
            "recording_segments_sealed",
            "Recording segments sealed (encrypted to the auditors and written)",
            segments_sealed.clone(),
        );
        let recorder_queue = Gauge::default();
        r.register(
            "recorder_queue_bytes",
            "Bytes waiting in the recorders' bounded queues, all recordings together",
            recorder_queue.clone(),
        );
        let recording_failures = Counter::default();
        r.register(
            "recording_failures",
            "Recordings that could not be created or written (their session was refused or ended)",
            recording_failures.clone(),
        );
        let wg_peers = Gauge::default();
        r.register(
            "wireguard_peers",
            "WireGuard devices configured in the running tunnel",
            wg_peers.clone(),
        );
        let wg_handshakes = Counter::default();
        r.register(
            "wireguard_handshakes",
            "WireGuard handshakes completed with configured devices",
            wg_handshakes.clone(),
        );
        let dropped = Family::<L1, Counter>::default();
        let wg_dropped =
            WG_DROP_REASONS.map(|reason| dropped.get_or_create_owned(&l1("reason", reason)));
        r.register(
            "wireguard_dropped",
            "WireGuard datagrams and tunnelled packets dropped, by reason (updated every 2 s)",
            dropped,
        );
        let wg_resent = Counter::default();
        r.register(
            "wireguard_tcp_resent",
            "TCP segments the tunnel sent again to devices (loss recovery; updated every 2 s)",
            wg_resent.clone(),
        );
        let statements = Family::<L1, Counter>::default();
        let db_statements = [
            statements.get_or_create_owned(&l1("kind", "postgres")),
            statements.get_or_create_owned(&l1("kind", "mysql")),
        ];
        r.register(
            "db_statements",
            "Database statements relayed (recorded), by kind",
            statements,
        );
        let errors = Family::<L1, Counter>::default();
        let db_errors = [
            errors.get_or_create_owned(&l1("kind", "postgres")),
            errors.get_or_create_owned(&l1("kind", "mysql")),
        ];
        r.register(
            "db_errors",
            "Error results the database servers returned to statements, by kind",
            errors,
        );
        let reloads = Family::<L1, Counter>::default();
        for res in RELOAD_RESULTS {
            reloads.get_or_create_owned(&l1("result", res));
        }
        r.register(
            "config_reloads",
            "Configuration reloads by result (ok, invalid, restart_required)",
            reloads.clone(),
        );
        let locks = Gauge::default();
        r.register(
            "locks_in_force",
            "Locks (gatehouse lock user/device/target) in force",
            locks.clone(),
        );
        let anomalies = Family::<L1, Counter>::default();
        r.register(
            "anomalies",
            "Anomaly rules that fired, by rule",
            AlwaysShown(anomalies.clone()),
        );
        Metrics {
            registry: r,
            logins,
            auth_attempts,
            lockouts,
            refusals,
            live_sessions,
            durations,
            bytes_up,
            bytes_down,
            segments_sealed,
            recorder_queue,
            recording_failures,
            wg_peers,
            wg_handshakes,
            wg_dropped,
            wg_resent,
            wg_last: Mutex::new(WireGuardCounters::default()),
            db_statements,
            db_errors,
            reloads,
            locks,
            anomalies,
            anomaly_rules: Mutex::new(Vec::new()),
            scrape: Mutex::new(()),
        }
    }
}

/// The exposition (Prometheus text format 0.0.4) of every family, with the
/// live-session gauge computed from `live` now.
pub fn render(live: &crate::live::Registry) -> String {
    let m = m();
    let _one = m.scrape.lock().unwrap_or_else(|e| e.into_inner());
    m.live_sessions.clear();
    for s in live.all() {
        let kind = s.info.kind.as_str();
        let labels: L2 = [
            ("kind", Cow::Borrowed(kind)),
            ("target", Cow::Owned(s.info.target.clone())),
        ];
        m.live_sessions.get_or_create(&labels).inc();
    }
    let mut out = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut out, &m.registry).is_err() {
        out.clear();
    }
    out
}

/// A completed two-factor login (`result` "ok") or a failed/refused one;
/// `admitted_by` is "code" or "lease" for a successful one.
pub fn login(result: &str, admitted_by: &str) {
    let labels = l2(
        "result",
        pick(result, LOGIN_RESULTS),
        "admitted_by",
        pick(admitted_by, ADMITTED_BY),
    );
    m().logins.get_or_create(&labels).inc();
}

/// One audited authentication attempt. A failed second factor (a wrong,
/// reused or unenrolled code) is also a failed login.
pub fn auth_attempt(method: &str, result: &str) {
    let method = pick(method, AUTH_METHODS);
    let result = pick(result, AUTH_RESULTS);
    let m = m();
    m.auth_attempts
        .get_or_create(&l2("method", method, "result", result))
        .inc();
    if result == "failure" && SECOND_FACTOR.contains(&method) {
        login("failed", "none");
    }
}

/// An authentication refused because a lockout or lock is in force: a
/// refused login and a `locked` refusal.
pub fn refused_while_locked() {
    login("refused", "none");
    refusal("locked");
}

/// A lockout started.
pub fn lockout() {
    m().lockouts.inc();
}

/// Something was refused, by reason: one of [`REFUSAL_REASONS`] (anything
/// else counts as `other`).
pub fn refusal(reason: &str) {
    m().refusals
        .get_or_create(&l1("reason", refusal_reason(reason, "other")))
        .inc();
}

/// The refusal reason (one of [`REFUSAL_REASONS`]) for an audited reason:
/// a reason of the set as it is, the policy's reasons by name, a recording
/// failure, an administrator's lock, else `otherwise`.
pub fn refusal_reason(audit_reason: &str, otherwise: &'static str) -> &'static str {
    match audit_reason {
        "unknown target" => "unknown_target",
        "no role grants the target" => "no_role",
        "login not allowed by any role" => "login_not_allowed",
        r if r.starts_with("recording") => "recording",
        r if r.ends_with("locked by an administrator") => "admin_lock",
        r => REFUSAL_REASONS
            .iter()
            .find(|k| **k == r)
            .copied()
            .unwrap_or(otherwise),
    }
}

/// A session ended after `duration`; `kind` is ssh, postgres or mysql.
pub fn session_ended(kind: &str, duration: Duration) {
    m().durations
        .get_or_create(&l1("kind", pick(kind, KINDS)))
        .observe(duration.as_secs_f64());
}

/// Bytes relayed from the user towards the target.
pub fn bytes_up(n: u64) {
    m().bytes_up.inc_by(n);
}

/// Bytes relayed from the target towards the user.
pub fn bytes_down(n: u64) {
    m().bytes_down.inc_by(n);
}

/// A recording segment was sealed.
pub fn segment_sealed() {
    m().segments_sealed.inc();
}

/// A recording failed (could not start, or a write failed).
pub fn recording_failed() {
    m().recording_failures.inc();
}

/// Bytes entered (`delta > 0`) or left a recorder queue.
pub fn recorder_queue(delta: i64) {
    m().recorder_queue.inc_by(delta);
}

/// A WireGuard handshake with a configured device completed.
pub fn wg_handshake() {
    m().wg_handshakes.inc();
}

/// The tunnel's cumulative counters: the drop and resend counters grow by
/// the difference since the last call, the peers gauge is set.
pub fn wireguard(now: WireGuardCounters) {
    let m = m();
    m.wg_peers.set(i64::try_from(now.peers).unwrap_or(i64::MAX));
    let mut last = m.wg_last.lock().unwrap_or_else(|e| e.into_inner());
    for ((c, new), old) in m.wg_dropped.iter().zip(now.dropped).zip(last.dropped) {
        c.inc_by(new.saturating_sub(old));
    }
    m.wg_resent.inc_by(now.resent.saturating_sub(last.resent));
    // Connections over a tunnel cap are refusals too.
    let capped = now.dropped.get(9).copied().unwrap_or(0);
    let before = last.dropped.get(9).copied().unwrap_or(0);
    if capped > before {
        m.refusals
            .get_or_create(&l1("reason", "tunnel_connection_cap"))
            .inc_by(capped - before);
    }
    *last = now;
}

fn db_index(kind: &str) -> Option<usize> {
    DB_KINDS.iter().position(|k| *k == kind)
}

/// A database statement was recorded and relayed (`kind`: postgres, mysql).
pub fn db_statement(kind: &str) {
    if let Some(c) = db_index(kind).and_then(|i| m().db_statements.get(i)) {
        c.inc();
    }
}

/// A database server answered a statement with an error.
pub fn db_error(kind: &str) {
    if let Some(c) = db_index(kind).and_then(|i| m().db_errors.get(i)) {
        c.inc();
    }
}

/// A configuration reload: result "ok", "invalid" or "restart_required".
pub fn reload(result: &str) {
    m().reloads
        .get_or_create(&l1("result", pick(result, RELOAD_RESULTS)))
        .inc();
}

/// Locks in force now.
pub fn locks_in_force(n: usize) {
    m().locks.set(i64::try_from(n).unwrap_or(i64::MAX));
}

/// An anomaly rule fired. Rule names are gatehouse's own (short, `[a-z0-9_.]`);
/// past [`MAX_ANOMALY_RULES`] distinct names, or for any other string, the
/// rule is counted as `other`.
pub fn anomaly(rule: &str) {
    let m = m();
    let name: Cow<'static, str> = {
        let mut known = m.anomaly_rules.lock().unwrap_or_else(|e| e.into_inner());
        let tidy = !rule.is_empty()
            && rule.len() <= 48
            && rule
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        if known.iter().any(|k| k == rule) {
            Cow::Owned(rule.to_string())
        } else if tidy && known.len() < MAX_ANOMALY_RULES {
            known.push(rule.to_string());
            Cow::Owned(rule.to_string())
        } else {
            Cow::Borrowed("other")
        }
    };
    m.anomalies.get_or_create(&[("rule", name)]).inc();
}

#[cfg(test)]
mod tests;
