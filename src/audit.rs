//! Audit events: every authentication attempt, lockout, login, session start
//! and end, and every refusal is one structured tracing event with target
//! `gatehouse::audit` and a field `event` naming its type.
//!
//! Under systemd the events go to journald (with `SYSLOG_IDENTIFIER=gatehouse`
//! and one `MESSAGE_ID` per event type, so `journalctl MESSAGE_ID=...` selects
//! one kind); elsewhere they are JSON lines on stderr. No secret, TOTP code or
//! private key is ever passed to these functions — they take names,
//! fingerprints, addresses and reasons only.

use tracing::info;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The tracing target of audit events.
pub const TARGET: &str = "gatehouse::audit";

// One stable journald MESSAGE_ID (128-bit, hex) per event type.
const ID_AUTH: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5a61";
const ID_LOCKOUT: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5a62";
const ID_LOGIN: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5a63";
const ID_SESSION_START: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5a64";
const ID_SESSION_END: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5a65";
const ID_SESSION_REFUSED: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5a66";
const ID_CHANNEL_REFUSED: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5a67";

/// Sets up logging: journald when started by systemd (and reachable),
/// otherwise JSON lines on stderr. `RUST_LOG` adjusts the level.
pub fn init_logging() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,russh=warn"));
    let under_systemd =
        std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some();
    if under_systemd {
        if let Ok(layer) = tracing_journald::layer() {
            let layer = layer.with_syslog_identifier("gatehouse".to_string());
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init();
            return;
        }
    }
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// An authentication attempt and its result (`success`, `partial`, `failure`).
pub fn auth_attempt(
    user: &str,
    method: &str,
    key_fp: &str,
    source: &str,
    result: &str,
    reason: &str,
) {
    info!(
        target: TARGET,
        event = "auth.attempt",
        message_id = ID_AUTH,
        user,
        method,
        key_fp,
        source,
        result,
        reason,
        "authentication {result} for {user} from {source}: {reason}"
    );
}

/// A user or source address was locked out.
pub fn lockout(subject: &str, until_unix: u64, source: &str) {
    info!(
        target: TARGET,
        event = "auth.lockout",
        message_id = ID_LOCKOUT,
        subject,
        until_unix,
        source,
        "{subject} locked out until {until_unix}"
    );
}

/// A completed two-factor login to the gateway.
pub fn login(user: &str, key_fp: &str, source: &str, admitted_by: &str) {
    info!(
        target: TARGET,
        event = "login",
        message_id = ID_LOGIN,
        user,
        key_fp,
        source,
        admitted_by,
        "{user} logged in from {source} (second factor: {admitted_by})"
    );
}

/// A relayed session to a target began.
pub fn session_start(
    session_id: &str,
    user: &str,
    login: &str,
    target: &str,
    source: &str,
    admitted_by: &str,
) {
    info!(
        target: TARGET,
        event = "session.start",
        message_id = ID_SESSION_START,
        session_id,
        user,
        login,
        target,
        source,
        admitted_by,
        "{user} started a session to {login}@{target}"
    );
}

/// What a finished session did.
#[derive(Debug, Default, Clone)]
pub struct SessionSummary {
    pub duration_ms: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub exit_status: Option<u32>,
    pub reason: String,
}

/// A relayed session ended.
pub fn session_end(session_id: &str, user: &str, login: &str, target: &str, s: &SessionSummary) {
    let exit_status = s.exit_status.map(i64::from).unwrap_or(-1);
    info!(
        target: TARGET,
        event = "session.end",
        message_id = ID_SESSION_END,
        session_id,
        user,
        login,
        target,
        duration_ms = s.duration_ms,
        bytes_up = s.bytes_up,
        bytes_down = s.bytes_down,
        exit_status,
        reason = %s.reason,
        "{user}'s session to {login}@{target} ended: {}", s.reason
    );
}

/// A session to a target was refused.
pub fn session_refused(user: &str, login: &str, target: &str, source: &str, reason: &str) {
    info!(
        target: TARGET,
        event = "session.refused",
        message_id = ID_SESSION_REFUSED,
        user,
        login,
        target,
        source,
        reason,
        "refused {user} -> {login}@{target}: {reason}"
    );
}

/// A channel or forwarding request was refused.
pub fn channel_refused(user: &str, kind: &str, host: &str, port: u32, source: &str, reason: &str) {
    info!(
        target: TARGET,
        event = "channel.refused",
        message_id = ID_CHANNEL_REFUSED,
        user,
        kind,
        host,
        port,
        source,
        reason,
        "refused {kind} for {user} to {host}:{port}: {reason}"
    );
}
