//! The PostgreSQL proxy. One connection is one session:
//!
//! 1. **Startup.** `SSLRequest` and `GSSENCRequest` are answered `N`: inside
//!    the tunnel WireGuard already encrypts, and through SSH the channel
//!    does. A `CancelRequest` is handled (see [`crate::db::cancel`]) and the
//!    connection closed. A `StartupMessage` names the database login
//!    (`user`) and `database`.
//! 2. **Who.** Through SSH the person has logged in with key + code. Inside
//!    the tunnel the device names her: a live MFA lease from that device
//!    admits her at once; otherwise gatehouse asks for a password, which is
//!    her current TOTP code (replay and lockout rules as for SSH).
//! 3. **Policy.** The login must be allowed by a role for this target;
//!    `replication` connections are refused; `options` only when a role
//!    allows them. A refusal is a `FATAL` error psql prints, and a
//!    `db.session.refused` audit event.
//! 4. **Upstream.** The recording starts (no recording, no session), the
//!    sealed password of the login is used to log in to the server over TLS
//!    verified against the target's pinned CA, and the client is greeted
//!    with the server's parameters and gatehouse's own cancel key.
//! 5. **Relay** ([`relay`]): original bytes both ways; statements,
//!    parameters, results, COPY sizes and cancels go to the sealed recording.
//!    `max_session`, `idle_timeout` and shutdown end it with a `FATAL`.
//!
//! The password never leaves the gateway and is never logged; SQL text is
//! only in the sealed recording.

pub mod proto;
pub mod relay;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::audit;
use crate::auth::{AuthenticatedUser, CodeOutcome};
use crate::db::{cancel, who, DbGateway};
use crate::dispatch::{Connection, Stream};
use crate::policy::{Authorized, Denied};
use crate::recording::{RecordingKind, RecordingMeta};
use crate::source::Source;
use proto::{Severity, StartupPacket};

/// Time from connect to a complete login (startup packet, password).
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// The longest password message read (a TOTP code is a few digits).
const MAX_PASSWORD: usize = 1024;
/// How long a FATAL gets to reach a client before the connection is cut.
const GOODBYE: Duration = Duration::from_millis(500);

/// A refusal: what the client is told (SQLSTATE, message, hint) and what
/// the audit log records.
#[derive(Debug)]
struct Refusal {
    code: &'static str,
    message: String,
    hint: Option<String>,
    reason: String,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            hint: None,
            reason: reason.into(),
        }
    }
    fn hint(mut self, h: impl Into<String>) -> Refusal {
        self.hint = Some(h.into());
        self
    }
}

/// Serves one connection to a database target, from any door.
pub async fn serve(gw: Arc<DbGateway>, target: String, conn: Connection) {
    let Connection {
        mut stream,
        source,
        admitted,
        pre_auth,
        ..
    } = conn;
    let source_label = source.to_string();
    // Who is asking, before any byte: the SSH login, or the device's user.
    let person = match (&admitted, source.device_user()) {
        (Some(u), _) => u.name().to_string(),
        (None, Some(u)) => u.to_string(),
        (None, None) => {
            // Only the tunnel and SSH route here; a plain listener never does.
            audit::db_session_refused(
                who("-", "-", &target, "-", &source_label),
                "not through the tunnel or SSH",
            );
            return;
        }
    };
    // An administrator's lock refuses before any code is asked for.
    let device = source.device().map(|d| d.public_key_b64());
    if let Some(lock) = gw.locks.session(&person, device.as_deref(), &target) {
        let r = Refusal::new(
            "28000",
            format!("gatehouse: {}", lock.message()),
            "locked by an administrator",
        );
        audit::db_session_refused(who(&person, "-", &target, "-", &source_label), &r.reason);
        goodbye(&mut stream, &r).await;
        return;
    }
    let started = tokio::time::timeout(
        STARTUP_DEADLINE,
        login(&gw, &target, &source, &person, admitted, &mut stream),
    )
    .await;
    drop(pre_auth);
    let (user, startup) = match started {
        Ok(Ok(Some(v))) => v,
        Ok(Ok(None)) => return,
        Ok(Err((login, database, refusal))) => {
            audit::db_session_refused(
                who(&person, &login, &target, &database, &source_label),
                &refusal.reason,
            );
            goodbye(&mut stream, &refusal).await;
            return;
        }
        Err(_) => {
            let r = Refusal::new(
                "08006",
                "gatehouse: the login took too long",
                "login deadline passed",
            );
            audit::db_session_refused(who(&person, "-", &target, "-", &source_label), &r.reason);
            goodbye(&mut stream, &r).await;
            return;
        }
    };
    let login_name = startup.get("user").unwrap_or_default().to_string();
    let database = startup
        .get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&login_name)
        .to_string();
    let w = who(user.name(), &login_name, &target, &database, &source_label);
    let authorized = match authorize(&gw, &user, &target, &startup) {
        Ok(a) => a,
        Err(r) => {
            audit::db_session_refused(w, &r.reason);
            goodbye(&mut stream, &r).await;
            return;
        }
    };
    session(gw, authorized, startup, database, source, stream).await;
}

/// Sends a FATAL error and closes, without waiting on a client that does
/// not read.
async fn goodbye(stream: &mut Box<dyn Stream>, r: &Refusal) {
    let msg = proto::error(Severity::Fatal, r.code, &r.message, r.hint.as_deref());
    let _ = tokio::time::timeout(GOODBYE, async {
        let _ = stream.write_all(&msg).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

type LoginError = (String, String, Refusal);

/// The startup phase up to a known person and a startup message. None when
/// the connection ended without asking for a session (a cancel request, a
/// client that went away).
async fn login(
    gw: &DbGateway,
    target: &str,
    source: &Source,
    person: &str,
    admitted: Option<AuthenticatedUser>,
    stream: &mut Box<dyn Stream>,
) -> Result<Option<(AuthenticatedUser, proto::Startup)>, LoginError> {
    let plain = |r: Refusal| ("-".to_string(), "-".to_string(), r);
    let mut negotiations = 0;
    let startup = loop {
        let packet = match proto::read_startup(stream).await {
            Ok(p) => p,
            Err(proto::ProtoError::Closed) => return Ok(None),
            Err(e) => {
                return Err(plain(Refusal::new(
                    "08P01",
                    "gatehouse: invalid startup packet",
                    format!("protocol error: {e}"),
                )))
            }
        };
        match packet {
            StartupPacket::Ssl | StartupPacket::GssEnc => {
                // psql asks for TLS, then GSS encryption, at most once each.
                negotiations += 1;
                if negotiations > 2 || stream.write_all(b"N").await.is_err() {
                    return Ok(None);
                }
            }
            StartupPacket::Cancel { pid, secret } => {
                cancel_request(gw, target, source, person, (pid, secret)).await;
                return Ok(None);
            }
            StartupPacket::Unsupported(v) => {
                return Err(plain(Refusal::new(
                    "0A000",
                    format!(
                        "gatehouse: unsupported frontend protocol {}.{}: server supports 3.0",
                        v >> 16,
                        v & 0xffff
                    ),
                    "unsupported protocol version",
                )))
            }
            StartupPacket::Startup(s) => break s,
        }
    };
    let mut startup = startup;
    let login_name = startup.get("user").unwrap_or_default().to_string();
    let database = startup.get("database").unwrap_or(&login_name).to_string();
    let fail = |r: Refusal| (login_name.clone(), database.clone(), r);
    if login_name.is_empty() {
        return Err(fail(Refusal::new(
            "28000",
            "gatehouse: no database user name specified",
            "no user in the startup message",
        )));
    }
    // Protocol extensions (3.x, `_pq_.` options): gatehouse speaks 3.0 and
    // none of them, and says so, as the server itself would.
    let unknown: Vec<String> = startup
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if startup.minor != 0 || !unknown.is_empty() {
        startup.params.retain(|(k, _)| !k.starts_with("_pq_."));
        startup.minor = 0;
        if stream.write_all(&proto::negotiate(&unknown)).await.is_err() {
            return Ok(None);
        }
    }
    let user = match admitted {
        Some(u) => u,
        None => match gw.auth.device_lease(source) {
            Some(u) => u,
            None => code_login(gw, source, &login_name, stream)
                .await
                .map_err(fail)?,
        },
    };
    Ok(Some((user, startup)))
}

/// Asks for the person's current TOTP code as the password.
async fn code_login(
    gw: &DbGateway,
    source: &Source,
    login_name: &str,
    stream: &mut Box<dyn Stream>,
) -> Result<AuthenticatedUser, Refusal> {
    stream
        .write_all(&proto::auth_cleartext())
        .await
        .map_err(|_| Refusal::new("08006", "", "client went away at the password prompt"))?;
    let mut head = [0u8; 5];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|_| Refusal::new("08006", "", "client went away at the password prompt"))?;
    let h = proto::Header::parse(head).map_err(|_| {
        Refusal::new(
            "08P01",
            "gatehouse: invalid password message",
            "protocol error",
        )
    })?;
    if h.tag != b'p' || h.body_len > MAX_PASSWORD {
        return Err(Refusal::new(
            "08P01",
            "gatehouse: expected a password message",
            "protocol error at the password prompt",
        ));
    }
    let mut body = zeroize::Zeroizing::new(vec![0u8; h.body_len]);
    stream
        .read_exact(&mut body)
        .await
        .map_err(|_| Refusal::new("08006", "", "client went away at the password prompt"))?;
    let code: zeroize::Zeroizing<String> = zeroize::Zeroizing::new(
        String::from_utf8_lossy(proto::Cursor::new(&body).cstr().unwrap_or_default())
            .trim()
            .to_string(),
    );
    let auth = gw.auth.clone();
    let src = source.clone();
    let outcome = tokio::task::spawn_blocking(move || auth.verify_device_code(&src, &code))
        .await
        .map_err(|_| Refusal::new("XX000", "gatehouse: internal error", "code check failed"))?
        .map_err(|_| {
            Refusal::new(
                "XX000",
                "gatehouse: internal error checking the code",
                "state error while checking the code",
            )
        })?;
    let failed = format!(
        "password authentication failed for user \"{}\"",
        audit::client_name(login_name)
    );
    // Audited as the SSH server audits a code: method `db-code`.
    let label = source.to_string();
    let person = source.device_user().unwrap_or("-");
    let (result, reason, lock) = match &outcome {
        CodeOutcome::Accepted(_) => ("success", "code accepted", None),
        CodeOutcome::Wrong { lock } => ("failure", "wrong code", lock.as_ref()),
        CodeOutcome::Reused { lock } => ("failure", "reused code", lock.as_ref()),
        CodeOutcome::Locked { .. } => ("failure", "locked", None),
        CodeOutcome::NotEnrolled => ("failure", "not enrolled", None),
    };
    audit::auth_attempt(person, "db-code", "-", &label, result, reason);
    crate::anomaly::auth_attempt(person, source, result);
    if let CodeOutcome::Accepted(u) = &outcome {
        crate::anomaly::login(u.name(), u.origin());
    }
    if let Some(l) = lock {
        audit::lockout(&l.subject, l.until, &label);
    }
    match outcome {
        CodeOutcome::Accepted(u) => Ok(*u),
        CodeOutcome::Wrong { .. } => Err(Refusal::new("28P01", failed, "wrong code").hint(
            "gatehouse: the password is your current TOTP code (or log in with ssh from this device first)",
        )),
        CodeOutcome::Reused { .. } => Err(Refusal::new("28P01", failed, "reused code")
            .hint("gatehouse: that code was already used; wait for the next one")),
        CodeOutcome::Locked { .. } => Err(Refusal::new(
            "28000",
            "gatehouse: locked after too many failed attempts; try again later",
            "locked",
        )),
        CodeOutcome::NotEnrolled => Err(Refusal::new(
            "28000",
            "gatehouse: you have no TOTP code enrolled; ask an administrator",
            "not enrolled",
        )),
    }
}

/// Role, login, replication and options.
fn authorize(
    gw: &DbGateway,
    user: &AuthenticatedUser,
    target: &str,
    startup: &proto::Startup,
) -> Result<Authorized, Refusal> {
    let login_name = startup.get("user").unwrap_or_default();
    let policy = gw.policy();
    let authorized = policy.authorize(user, target, login_name).map_err(|d| {
        let reason = d.reason();
        match d {
            Denied::Login { allowed } => Refusal::new(
                "28000",
                format!(
                    "gatehouse: no role of yours allows login \"{}\" on {target}",
                    audit::client_name(login_name)
                ),
                reason,
            )
            .hint(if allowed.is_empty() {
                "no login is allowed".to_string()
            } else {
                format!("allowed: {}", allowed.join(", "))
            }),
            _ => Refusal::new(
                "28000",
                format!("gatehouse: no role of yours grants {target}"),
                reason,
            ),
        }
    })?;
    if let Some(r) = startup.get("replication") {
        if !matches!(
            r.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0"
        ) {
            return Err(Refusal::new(
                "28000",
                "gatehouse: replication connections are not allowed",
                "replication refused",
            ));
        }
    }
    if startup.get("options").is_some_and(|o| !o.trim().is_empty()) && !authorized.allow_options() {
        return Err(Refusal::new(
            "28000",
            "gatehouse: the options parameter (PGOPTIONS, -c) is not allowed by your role",
            "options refused",
        ));
    }
    // Any other startup parameter is a server setting too (the server
    // applies `search_path=...` like `-c search_path=...`): the same rule
    // as `options`, except for the ones stock clients send.
    if !authorized.allow_options() {
        if let Some((k, _)) = startup
            .params
            .iter()
            .find(|(k, _)| !PLAIN_PARAMS.contains(&k.as_str()))
        {
            return Err(Refusal::new(
                "28000",
                format!(
                    "gatehouse: the startup parameter \"{}\" is not allowed by your role",
                    audit::client_name(k)
                ),
                "options refused",
            ));
        }
    }
    Ok(authorized)
}

/// Startup parameters any client may send: who and where (`user`,
/// `database`), and the session formats libpq, JDBC (DBeaver), psycopg
/// (pgAdmin) and pgbench set. `replication` and `options` are decided above.
const PLAIN_PARAMS: &[&str] = &[
    "user",
    "database",
    "application_name",
    "fallback_application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "extra_float_digits",
    "IntervalStyle",
    "replication",
    "options",
];

/// From an authorized login to the end of the session.
async fn session(
    gw: Arc<DbGateway>,
    authorized: Authorized,
    startup: proto::Startup,
    database: String,
    source: Source,
    mut stream: Box<dyn Stream>,
) {
    let user = authorized.user().clone();
    let target = authorized.target().clone();
    let login_name = authorized.login().to_string();
    let source_label = source.to_string();
    let w = who(
        user.name(),
        &login_name,
        &target.name,
        &database,
        &source_label,
    );
    let session_id = crate::db::new_session_id();
    // The sealed password first: without it there is nothing to record.
    let state = gw.state.clone();
    let (tname, lname) = (target.name.clone(), login_name.clone());
    let password =
        match tokio::task::spawn_blocking(move || state.db_credential(&tname, &lname)).await {
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) => {
                let r = Refusal::new(
                    "28000",
                    format!(
                        "gatehouse holds no password for login \"{login_name}\" on {}",
                        target.name
                    ),
                    "no credential for the login",
                )
                .hint(format!(
                    "an administrator stores it with: gatehouse target credential {} {login_name}",
                    target.name
                ));
                audit::db_session_refused(w, &r.reason);
                goodbye(&mut stream, &r).await;
                return;
            }
            _ => {
                let r = Refusal::new(
                    "XX000",
                    "gatehouse: the stored credential cannot be read",
                    "credential unreadable",
                );
                audit::db_session_refused(w, &r.reason);
                goodbye(&mut stream, &r).await;
                return;
            }
        };
    // No recording, no session.
    let meta = RecordingMeta {
        session_id: session_id.clone(),
        user: user.name().to_string(),
        login: login_name.clone(),
        target: target.name.clone(),
        source: source_label.clone(),
        wireguard_peer: source.wireguard_peer(),
        kind: RecordingKind::Postgres {
            database: database.clone(),
        },
        record_input: authorized.record_input(),
        pty: false,
        // The startup parameters besides user and database, sealed in the
        // header: `client_encoding` above all, since the server reads the
        // statements' bytes in it.
        env: startup
            .params
            .iter()
            .filter(|(k, _)| k != "user" && k != "database")
            .cloned()
            .collect(),
    };
    let recording = match gw.recorder.start(meta).await {
        Ok(r) => r,
        Err(e) => {
            let code = if matches!(e, crate::recording::RecordingError::DiskFull { .. }) {
                "53100"
            } else {
                "58000"
            };
            let r = Refusal::new(code, format!("gatehouse: {e}"), "recording could not start");
            audit::db_session_refused(w, &r.reason);
            goodbye(&mut stream, &r).await;
            return;
        }
    };
    let params: Vec<(String, String)> = startup
        .params
        .iter()
        .filter(|(k, _)| k != "replication")
        .cloned()
        .collect();
    let began = Instant::now();
    let up = match upstream::connect(&target, &params, &password).await {
        Ok(u) => u,
        Err(e) => {
            let (code, message) = match &e {
                upstream::UpstreamError::Server { code, message, .. } => {
                    (sqlstate(code), format!("{}: {message}", target.name))
                }
                other => (
                    "08001",
                    format!("gatehouse: cannot log in to {}: {other}", target.name),
                ),
            };
            let mut r = Refusal::new(code, message, "upstream login failed");
            r.reason = format!("upstream: {e}");
            audit::db_session_refused(w, &r.reason);
            let _ = recording.finish(None, &r.reason, 0, 0).await;
            goodbye(&mut stream, &r).await;
            return;
        }
    };
    drop(password);
    let (cancel_tx, cancel_rx) = tokio::sync::mpsc::channel(4);
    let key = gw.keys.register(cancel::Entry {
        user: user.name().to_string(),
        target: target.name.clone(),
        login: login_name.clone(),
        server_pid: up.backend_pid,
        server_secret: up.backend_secret,
        session_id: session_id.clone(),
        notify: cancel_tx,
    });
    // The greeting the server gave, with gatehouse's own cancel key.
    let mut hello = BytesMut::new();
    hello.extend_from_slice(&proto::auth_ok());
    for (k, v) in &up.parameters {
        hello.extend_from_slice(&proto::parameter_status(k, v));
    }
    let (pid, secret) = key.key();
    hello.extend_from_slice(&proto::backend_key(pid, secret));
    hello.extend_from_slice(&proto::ready(b'I'));
    if stream.write_all(&hello).await.is_err() {
        let _ = recording.finish(None, "client went away", 0, 0).await;
        audit::db_session_refused(w, "client went away before the greeting");
        return;
    }
    audit::db_session_start(&session_id, w, user.admitted_by().as_str(), recording.id());
    let registration = gw.live.register(crate::db::live_info(
        &session_id,
        crate::live::SessionKind::Postgres,
        &authorized,
    ));
    registration.set_recording(recording.id());
    let limits = relay::Limits {
        live: Some(registration.live().clone()),
        max_session: authorized.max_session(),
        idle_timeout: authorized.idle_timeout(),
        shutdown: gw.shutdown.clone(),
        budget: gw.statement_budget.clone(),
    };
    let summary = relay::run(stream, up.stream, recording.clone(), limits, cancel_rx).await;
    drop(key);
    let _ = recording
        .finish(None, &summary.reason, summary.bytes_up, summary.bytes_down)
        .await;
    crate::metrics::session_ended("postgres", began.elapsed());
    audit::db_session_end(
        &session_id,
        w,
        &audit::DbSummary {
            duration_ms: began.elapsed().as_millis() as u64,
            statements: summary.statements,
            bytes_up: summary.bytes_up,
            bytes_down: summary.bytes_down,
            reason: summary.reason,
        },
    );
}

/// A server SQLSTATE passed on to the client when it looks like one.
fn sqlstate(code: &str) -> &'static str {
    // The client sees the server's message; the code is one of a few
    // well-known classes (a static str keeps `Refusal` simple).
    match code {
        "3D000" => "3D000",
        "28P01" => "28P01",
        "28000" => "28000",
        "53300" => "53300",
        "57P03" => "57P03",
        _ => "08004",
    }
}

/// A `CancelRequest`: forwarded only for a live session of the same person
/// on this target.
async fn cancel_request(
    gw: &DbGateway,
    target: &str,
    source: &Source,
    person: &str,
    key: (i32, i32),
) {
    let label = source.to_string();
    match gw.keys.check(person, target, key) {
        Ok(entry) => {
            let Some(t) = gw.policy().target(target).cloned() else {
                return;
            };
            let sent = upstream::cancel(&t, entry.server_pid, entry.server_secret)
                .await
                .is_ok();
            let _ = entry.notify.try_send(sent);
            let outcome = if sent { "forwarded" } else { "forward failed" };
            audit::db_cancel(person, target, &label, &entry.session_id, outcome);
        }
        Err(why) => audit::db_cancel(person, target, &label, "-", why.reason()),
    }
}
