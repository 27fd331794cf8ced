//! Audit events: every authentication attempt, lockout, login, session start
//! and end, and every refusal is one structured tracing event with target
//! `gatehouse::audit` and a field `event` naming its type.
//!
//! Under systemd the events go to journald (with `SYSLOG_IDENTIFIER=gatehouse`
//! and one `MESSAGE_ID` per event type, so `journalctl MESSAGE_ID=...` selects
//! one kind); elsewhere they are JSON lines on stderr. No secret, TOTP code or
//! private key is ever passed to these functions — they take names,
//! fingerprints, addresses and reasons only.

use std::borrow::Cow;

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
            // No `F_` prefix: MESSAGE_ID must be journald's own field.
            let layer = layer
                .with_syslog_identifier("gatehouse".to_string())
                .with_field_prefix(None);
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

/// Longest user name written into an event: a client may send any name.
const MAX_SHOWN_NAME: usize = 64;

/// A name a client chose, bounded for the log: longer names are cut (on a
/// character boundary) and marked with their full length in bytes.
pub fn client_name(name: &str) -> Cow<'_, str> {
    if name.len() <= MAX_SHOWN_NAME {
        return Cow::Borrowed(name);
    }
    let mut end = MAX_SHOWN_NAME;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let head = name.get(..end).unwrap_or_default();
    Cow::Owned(format!("{head}...({} bytes)", name.len()))
}

/// An authentication attempt and its result (`success`, `partial`, `failure`).
/// A user name longer than 64 bytes is cut (see [`client_name`]).
pub fn auth_attempt(
    user: &str,
    method: &str,
    key_fp: &str,
    source: &str,
    result: &str,
    reason: &str,
) {
    crate::metrics::auth_attempt(method, result);
    let user = client_name(user);
    let user = user.as_ref();
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

/// Refusals caused by a running lock, aggregated per source: the first at
/// once, then at most one event per source per minute, `count` saying how
/// many refusals it stands for. `event` is `auth.attempt` like any other
/// refusal; `user` is the name in the last of them.
pub fn locked_refusals(user: &str, source: &str, subject: &str, count: u64) {
    let user = client_name(user);
    let user = user.as_ref();
    info!(
        target: TARGET,
        event = "auth.attempt",
        message_id = ID_AUTH,
        user,
        method = "-",
        key_fp = "-",
        source,
        result = "failure",
        reason = format!("{subject} is locked out").as_str(),
        count,
        "authentication failure for {user} from {source}: {subject} is locked out ({count} refusals)"
    );
}

/// A user or source was locked out (`user:NAME`, `source:ADDR`).
pub fn lockout(subject: &str, until_unix: u64, source: &str) {
    crate::metrics::lockout();
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
    crate::metrics::login("ok", admitted_by);
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
    crate::metrics::session_ended("ssh", std::time::Duration::from_millis(s.duration_ms));
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
    crate::metrics::refusal(crate::metrics::refusal_reason(reason, "upstream"));
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
    crate::metrics::refusal(crate::metrics::refusal_reason(reason, "channel"));
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

// Connection-level decisions (src/daemon.rs and the re-checks of an
// authenticated connection).
const ID_CONN_REFUSED: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5a68";
const ID_CONN_CLOSED: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5a69";

/// Connections refused before any authentication (pre-authentication caps,
/// no free file descriptor), aggregated: `count` refusals from `source`
/// since the last such event for it (at most one per source per minute).
pub fn connection_refused(source: &str, reason: &str, count: u64) {
    info!(
        target: TARGET,
        event = "connection.refused",
        message_id = ID_CONN_REFUSED,
        source,
        reason,
        count,
        "refused {count} connection(s) from {source}: {reason}"
    );
}

/// gatehouse closed an authenticated connection (`user` is `-` before
/// login): it reached `auth.max_connection_age`, or a re-check on a new
/// channel found the user gone, the key withdrawn or the user locked.
pub fn connection_closed(user: &str, source: &str, reason: &str) {
    crate::metrics::refusal("connection_closed");
    info!(
        target: TARGET,
        event = "connection.closed",
        message_id = ID_CONN_CLOSED,
        user,
        source,
        reason,
        "closed the connection of {user} from {source}: {reason}"
    );
}

// WireGuard (src/tunnel). Devices are named by their base64 public key and
// tunnel address; `endpoint` is the UDP address packets came from.
const ID_WG_HANDSHAKE: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5a71";
const ID_WG_ENDPOINT: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5a72";
const ID_WG_CONN_OPEN: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5a73";
const ID_WG_CONN_CLOSE: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5a74";
const ID_WG_SPOOFED: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5a75";
const ID_WG_CONN_REFUSED: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5a76";
const ID_WG_UNKNOWN_PEER: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5a77";

/// A WireGuard handshake with a configured device completed; `initiator`
/// is `peer` or `gateway` (gatehouse re-initiates after a restart).
pub fn wg_handshake(user: &str, public_key: &str, address: &str, endpoint: &str, initiator: &str) {
    crate::metrics::wg_handshake();
    info!(
        target: TARGET,
        event = "wg.handshake",
        message_id = ID_WG_HANDSHAKE,
        user,
        public_key,
        address,
        endpoint,
        initiator,
        "WireGuard handshake with {user}'s device {address} from {endpoint}"
    );
}

/// An authenticated packet of a device came from a new UDP endpoint (roaming).
pub fn wg_endpoint_changed(user: &str, public_key: &str, address: &str, old: &str, new: &str) {
    info!(
        target: TARGET,
        event = "wg.endpoint",
        message_id = ID_WG_ENDPOINT,
        user,
        public_key,
        address,
        old,
        new,
        "{user}'s device {address} moved from {old} to {new}"
    );
}

/// A TCP connection through the tunnel was accepted for a gatehouse service.
pub fn wg_conn_open(user: &str, public_key: &str, source: &str, port: u16) {
    info!(
        target: TARGET,
        event = "wg.conn.open",
        message_id = ID_WG_CONN_OPEN,
        user,
        public_key,
        source,
        port,
        "tunnel connection from {user}'s device {source} to port {port}"
    );
}

/// A tunnel TCP connection ended; bytes are TCP payload in each direction.
#[allow(clippy::too_many_arguments)]
pub fn wg_conn_close(
    user: &str,
    public_key: &str,
    source: &str,
    port: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: u64,
    reason: &str,
) {
    info!(
        target: TARGET,
        event = "wg.conn.close",
        message_id = ID_WG_CONN_CLOSE,
        user,
        public_key,
        source,
        port,
        bytes_in,
        bytes_out,
        duration_ms,
        reason,
        "tunnel connection from {user}'s device {source} to port {port} closed: {reason}"
    );
}

/// A device sent packets whose inner source address is not its own (one
/// peer posing as another); they were dropped. Reported for the first one
/// and then at most every few seconds, with the running count.
pub fn wg_spoofed(user: &str, public_key: &str, address: &str, claimed: &str, dropped_total: u64) {
    info!(
        target: TARGET,
        event = "wg.spoofed",
        message_id = ID_WG_SPOOFED,
        user,
        public_key,
        address,
        claimed,
        dropped_total,
        "dropped packets from {user}'s device {address} claiming to be {claimed} ({dropped_total} so far)"
    );
}

/// A tunnel connection attempt was refused (a connection cap was reached).
pub fn wg_conn_refused(user: &str, public_key: &str, source: &str, port: u16, reason: &str) {
    info!(
        target: TARGET,
        event = "wg.conn.refused",
        message_id = ID_WG_CONN_REFUSED,
        user,
        public_key,
        source,
        port,
        reason,
        "refused tunnel connection from {user}'s device {source} to port {port}: {reason}"
    );
}

/// A handshake initiation carried a key that is no configured device; it
/// got no answer. Rate limited; `count` is the number since the last report.
pub fn wg_unknown_peer(public_key: &str, endpoint: &str, count: u64) {
    info!(
        target: TARGET,
        event = "wg.unknown_peer",
        message_id = ID_WG_UNKNOWN_PEER,
        public_key,
        endpoint,
        count,
        "ignored WireGuard handshake from unknown key {public_key} at {endpoint} ({count} since last report)"
    );
}

// Recording events (src/recording): one MESSAGE_ID per type.
const ID_RECORDING_STARTED: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5b01";
const ID_RECORDING_SEGMENT: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5b02";
const ID_RECORDING_FINISHED: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5b03";
const ID_RECORDING_FAILED: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5b04";
const ID_RECORDING_REMOVED: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5b05";

/// What `recording.started` says about a new recording.
#[derive(Debug, Clone, Copy)]
pub struct RecordingStarted<'a> {
    pub recording_id: &'a str,
    pub session_id: &'a str,
    pub user: &'a str,
    pub login: &'a str,
    pub target: &'a str,
    pub source: &'a str,
    pub kind: &'a str,
    /// SHA-256 binding of `meta.json` (hex; the chain's genesis depends on
    /// it), so `recordings verify --audit` catches an edited `meta.json`.
    pub meta_sha256: &'a str,
    /// The role's `record_input` mode, and whether this channel's input is stored.
    pub record_input: &'a str,
    pub input_recorded: bool,
    /// Names (never values) of the environment variables the role allowed
    /// and that reached the target on this channel, comma-separated. They
    /// are here rather than in `session.start`, which is emitted when the
    /// jump connects to the target, before the client sends a channel's
    /// env requests; their values are in the sealed recording's header.
    pub env: &'a str,
}

/// A recording was created (its segment 0 is sealed) for a channel of a session.
pub fn recording_started(r: &RecordingStarted<'_>) {
    let RecordingStarted {
        recording_id,
        session_id,
        user,
        login,
        target,
        source,
        kind,
        meta_sha256,
        record_input,
        input_recorded,
        env,
    } = *r;
    info!(
        target: TARGET,
        event = "recording.started",
        message_id = ID_RECORDING_STARTED,
        recording_id,
        session_id,
        user,
        login,
        target,
        source,
        kind,
        meta_sha256,
        record_input,
        input_recorded,
        env,
        "recording {recording_id} started: {kind} of {user} as {login}@{target}"
    );
}

/// A recording segment was sealed: its SHA-256 and chain hash, so that
/// `gatehouse recordings verify --audit` can detect a rewritten manifest.
pub fn recording_segment(
    recording_id: &str,
    session_id: &str,
    seq: u64,
    sha256: &str,
    chain: &str,
) {
    crate::metrics::segment_sealed();
    info!(
        target: TARGET,
        event = "recording.segment",
        message_id = ID_RECORDING_SEGMENT,
        recording_id,
        session_id,
        seq,
        sha256,
        chain,
        "recording {recording_id} segment {seq} sealed (chain {chain})"
    );
}

/// A recording ended and its last segment was sealed.
pub fn recording_finished(
    recording_id: &str,
    session_id: &str,
    segments: u64,
    chain: &str,
    reason: &str,
) {
    info!(
        target: TARGET,
        event = "recording.finished",
        message_id = ID_RECORDING_FINISHED,
        recording_id,
        session_id,
        segments,
        chain,
        reason,
        "recording {recording_id} finished with {segments} segments: {reason}"
    );
}

/// A recording could not be created or written (the session is refused or ended).
pub fn recording_failed(
    recording_id: &str,
    session_id: &str,
    user: &str,
    target: &str,
    reason: &str,
) {
    crate::metrics::recording_failed();
    info!(
        target: TARGET,
        event = "recording.failed",
        message_id = ID_RECORDING_FAILED,
        recording_id,
        session_id,
        user,
        target,
        reason,
        "recording {recording_id} of {user} to {target} failed: {reason}"
    );
}

/// A recording was removed by retention.
pub fn recording_removed(
    recording_id: &str,
    user: &str,
    target: &str,
    started: &str,
    reason: &str,
) {
    info!(
        target: TARGET,
        event = "recording.removed",
        message_id = ID_RECORDING_REMOVED,
        recording_id,
        user,
        target,
        started,
        reason,
        "recording {recording_id} ({user} to {target}, started {started}) removed: {reason}"
    );
}

// Database sessions (src/db). SQL text never appears here: it is only in
// the sealed recording.
const ID_DB_SESSION_START: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5c01";
const ID_DB_SESSION_END: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5c02";
const ID_DB_SESSION_REFUSED: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5c03";
const ID_DB_CANCEL: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5c04";
const ID_DB_COMMAND_REFUSED: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5c05";

/// Who a database session is, for its audit events.
#[derive(Debug, Clone, Copy)]
pub struct DbWho<'a> {
    pub user: &'a str,
    pub login: &'a str,
    pub target: &'a str,
    pub database: &'a str,
    pub source: &'a str,
}

/// A database session began (after login, policy and the upstream login).
pub fn db_session_start(session_id: &str, who: DbWho<'_>, admitted_by: &str, recording: &str) {
    let DbWho {
        user,
        login,
        target,
        database,
        source,
    } = who;
    let user = client_name(user);
    let login = client_name(login);
    let database = client_name(database);
    info!(
        target: TARGET,
        event = "db.session.start",
        message_id = ID_DB_SESSION_START,
        session_id,
        user = %user,
        login = %login,
        target,
        database = %database,
        source,
        admitted_by,
        recording,
        "{user} started a database session to {login}@{target}/{database}"
    );
}

/// What a finished database session did.
#[derive(Debug, Default, Clone)]
pub struct DbSummary {
    pub duration_ms: u64,
    pub statements: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub reason: String,
}

/// A database session ended.
pub fn db_session_end(session_id: &str, who: DbWho<'_>, s: &DbSummary) {
    let user = client_name(who.user);
    let login = client_name(who.login);
    let target = who.target;
    info!(
        target: TARGET,
        event = "db.session.end",
        message_id = ID_DB_SESSION_END,
        session_id,
        user = %user,
        login = %login,
        target,
        duration_ms = s.duration_ms,
        statements = s.statements,
        bytes_up = s.bytes_up,
        bytes_down = s.bytes_down,
        reason = %s.reason,
        "{user}'s database session to {login}@{target} ended: {}", s.reason
    );
}

/// A database connection was refused (login, policy, upstream, recorder).
pub fn db_session_refused(who: DbWho<'_>, reason: &str) {
    crate::metrics::refusal(crate::metrics::refusal_reason(reason, "database"));
    let user = client_name(who.user);
    let login = client_name(who.login);
    let database = client_name(who.database);
    let target = who.target;
    let source = who.source;
    info!(
        target: TARGET,
        event = "db.session.refused",
        message_id = ID_DB_SESSION_REFUSED,
        user = %user,
        login = %login,
        target,
        database = %database,
        source,
        reason,
        "refused database session {user} -> {login}@{target}: {reason}"
    );
}

/// A cancel request: forwarded to the server, or ignored (with why).
pub fn db_cancel(user: &str, target: &str, source: &str, session_id: &str, outcome: &str) {
    let event = if outcome == "forwarded" {
        "db.cancel"
    } else {
        "db.cancel.ignored"
    };
    info!(
        target: TARGET,
        event,
        message_id = ID_DB_CANCEL,
        user,
        target,
        source,
        session_id,
        outcome,
        "cancel request from {user} for {target}: {outcome}"
    );
}

/// A command inside a live database session that gatehouse did not
/// forward (COM_CHANGE_USER, LOAD DATA LOCAL INFILE, a binlog or
/// replication command, a KILL of someone else's session). `command` names
/// the command (`COM_CHANGE_USER`, `LOAD DATA LOCAL`), never SQL text.
pub fn db_command_refused(session_id: &str, who: DbWho<'_>, command: &str, reason: &str) {
    crate::metrics::refusal("db_command");
    let user = client_name(who.user);
    let login = client_name(who.login);
    let target = who.target;
    let source = who.source;
    info!(
        target: TARGET,
        event = "db.command.refused",
        message_id = ID_DB_COMMAND_REFUSED,
        session_id,
        user = %user,
        login = %login,
        target,
        source,
        command,
        reason,
        "refused {command} in {user}'s database session to {login}@{target}: {reason}"
    );
}

// Configuration reloads (src/daemon/reload.rs).
const ID_CONFIG_RELOAD: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5e01";
const ID_CONFIG_RELOAD_FAILED: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5e02";

/// What a reload that was applied changed, for [`config_reload`].
#[derive(Debug, Default, Clone)]
pub struct ReloadSummary {
    pub users: usize,
    pub roles: usize,
    pub targets: usize,
    /// WireGuard devices that started and stopped working (base64 keys).
    pub devices_added: Vec<String>,
    pub devices_removed: Vec<String>,
    /// Live sessions ended because the new file no longer allows them.
    pub sessions_ended: usize,
}

/// A reload (SIGHUP or `gatehouse reload`) put a new configuration in
/// force. `by` is who asked (`SIGHUP`, `uid 1000 (alice)`).
pub fn config_reload(file: &str, by: &str, s: &ReloadSummary) {
    let devices_added = s.devices_added.join(",");
    let devices_removed = s.devices_removed.join(",");
    info!(
        target: TARGET,
        event = "config.reload",
        message_id = ID_CONFIG_RELOAD,
        result = "ok",
        file,
        by,
        users = s.users,
        roles = s.roles,
        targets = s.targets,
        devices_added = devices_added.as_str(),
        devices_removed = devices_removed.as_str(),
        sessions_ended = s.sessions_ended,
        "configuration reloaded from {file} (asked by {by}): {} users, {} roles, {} targets; {} sessions ended",
        s.users,
        s.roles,
        s.targets,
        s.sessions_ended
    );
}

/// A reload changed nothing. `reason` is `invalid` (the file has errors:
/// `errors` holds every one as `file:line:col: path: message`, one per
/// line) or `restart_required` (`fields` names the settings that changed
/// and cannot change while running; `errors` says so in words).
pub fn config_reload_failed(file: &str, by: &str, reason: &str, errors: &str, fields: &str) {
    info!(
        target: TARGET,
        event = "config.reload_failed",
        message_id = ID_CONFIG_RELOAD_FAILED,
        result = reason,
        file,
        by,
        reason,
        errors,
        fields,
        "configuration reload from {file} (asked by {by}) refused ({reason}); still running on the previous configuration"
    );
}

// Operations (src/control, src/locks): one MESSAGE_ID per type.
const ID_CONTROL_COMMAND: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5d01";
const ID_SESSION_WATCH: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5d02";
const ID_LOCK_SET: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5d03";
const ID_LOCK_LIFTED: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5d04";

/// A command on the control socket: `by` is the local user who ran it
/// (from SO_PEERCRED: `name (uid N)`), `subject` what it named (a session
/// id, a lock's subject, `-`), `result` `ok` or `refused`/`failed` with
/// `detail`.
pub fn control_command(
    command: &str,
    by: &str,
    pid: i32,
    subject: &str,
    result: &str,
    detail: &str,
) {
    let subject = client_name(subject);
    let subject = subject.as_ref();
    info!(
        target: TARGET,
        event = "control.command",
        message_id = ID_CONTROL_COMMAND,
        command,
        by,
        pid,
        subject,
        result,
        detail,
        "control: {by} ran `{command}` on {subject}: {result}"
    );
}

/// An administrator started (`action = "start"`) or stopped (`"end"`)
/// watching a live session.
pub fn session_watch(
    action: &str,
    session_id: &str,
    by: &str,
    user: &str,
    target: &str,
    announced: bool,
) {
    info!(
        target: TARGET,
        event = "session.watch",
        message_id = ID_SESSION_WATCH,
        action,
        session_id,
        by,
        user,
        target,
        announced,
        "{by} {action}s watching session {session_id} of {user} on {target}"
    );
}

/// An administrator locked a user, device or target (`until` 0: until
/// unlocked); `ended` live sessions were ended.
pub fn lock_set(subject: &str, reason: &str, until_unix: u64, by: &str, ended: usize) {
    info!(
        target: TARGET,
        event = "lock.set",
        message_id = ID_LOCK_SET,
        subject,
        reason,
        until = until_unix,
        by,
        ended,
        "{by} locked {subject}: {reason} ({ended} live sessions ended)"
    );
}

/// An administrator lifted a lock.
pub fn lock_lifted(subject: &str, by: &str) {
    info!(
        target: TARGET,
        event = "lock.lifted",
        message_id = ID_LOCK_LIFTED,
        subject,
        by,
        "{by} unlocked {subject}"
    );
}

// Unusual-activity events (src/anomaly): one MESSAGE_ID per rule, so a SIEM
// can route `anomaly.*` with `journalctl MESSAGE_ID=...`. Evidence only:
// names, addresses, networks, counts; never a code, key or password.
const ID_ANOMALY_NEW_NETWORK: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5f01";
const ID_ANOMALY_UNUSUAL_HOUR: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5f02";
const ID_ANOMALY_TARGET_SPREAD: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5f03";
const ID_ANOMALY_BULK_TRANSFER: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5f04";
const ID_ANOMALY_FAILED_LOGINS: &str = "6a2f8c1e0b7d4e5f9a3c2b1d0e4f5f05";

/// A user logged in from a network never seen for them. `network` is the
/// /24 or /48 (for a WireGuard device: of its UDP endpoint, `via` says
/// which); `known` is how many networks were learned for the user before.
pub fn anomaly_new_network(user: &str, source: &str, network: &str, via: &str, known: usize) {
    info!(
        target: TARGET,
        event = "anomaly.new_network",
        message_id = ID_ANOMALY_NEW_NETWORK,
        user,
        source,
        network,
        via,
        known_networks = known,
        "anomaly: {user} logged in from a new network {network} ({known} known)"
    );
}

/// A user logged in at an hour of the week (UTC; 0 = Monday 00:00) at which
/// they had not logged in during the last 30 days. `active_hours` is how
/// many hours of the week they did log in at in that time.
pub fn anomaly_unusual_hour(
    user: &str,
    source: &str,
    hour_of_week: u32,
    when: &str,
    active_hours: usize,
) {
    info!(
        target: TARGET,
        event = "anomaly.unusual_hour",
        message_id = ID_ANOMALY_UNUSUAL_HOUR,
        user,
        source,
        hour_of_week,
        when,
        active_hours,
        "anomaly: {user} logged in at an unusual hour ({when})"
    );
}

/// A user opened sessions to more than `limit` distinct targets within
/// `window_s` seconds; `targets` lists them (comma-separated).
pub fn anomaly_target_spread(
    user: &str,
    targets: &str,
    distinct: usize,
    limit: usize,
    window_s: u64,
) {
    info!(
        target: TARGET,
        event = "anomaly.target_spread",
        message_id = ID_ANOMALY_TARGET_SPREAD,
        user,
        targets,
        distinct,
        limit,
        window_s,
        "anomaly: {user} opened sessions to {distinct} targets within {window_s}s (limit {limit})"
    );
}

/// One session moved more than `limit` bytes towards the user.
pub fn anomaly_bulk_transfer(
    session_id: &str,
    user: &str,
    target: &str,
    source: &str,
    bytes_down: u64,
    limit: u64,
) {
    info!(
        target: TARGET,
        event = "anomaly.bulk_transfer",
        message_id = ID_ANOMALY_BULK_TRANSFER,
        session_id,
        user,
        target,
        source,
        bytes_down,
        limit,
        "anomaly: session {session_id} of {user} to {target} moved {bytes_down} bytes to the user (limit {limit})"
    );
}

/// A burst of failed logins: `pattern` is `one_user_many_sources` (then
/// `user` is the name attacked, `source` "-") or `one_source_many_users`
/// (then `source` is the attacker, `user` "-"); `sample` lists up to a few
/// of the sources or (bounded) user names, comma-separated.
pub fn anomaly_failed_logins(
    pattern: &str,
    user: &str,
    source: &str,
    distinct: usize,
    limit: usize,
    window_s: u64,
    sample: &str,
) {
    let user = client_name(user);
    let user = user.as_ref();
    info!(
        target: TARGET,
        event = "anomaly.failed_logins",
        message_id = ID_ANOMALY_FAILED_LOGINS,
        pattern,
        user,
        source,
        distinct,
        limit,
        window_s,
        sample,
        "anomaly: failed logins {pattern}: {distinct} distinct within {window_s}s (limit {limit})"
    );
}
