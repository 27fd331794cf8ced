//! The MySQL/MariaDB proxy. One connection is one session:
//!
//! 1. **Greeting.** MySQL's server speaks first, so gatehouse greets with
//!    the real server's version and capabilities (the target is known from
//!    the port or the SSH channel before any byte): the greeting of the
//!    target's last login, or of one probe when there was none yet
//!    ([`DbGateway::greetings`]; a probe per connection would let one
//!    device get the gateway's address blocked by `max_connect_errors`).
//!    The connection id is gatehouse's own ([`crate::db::cancel`]); TLS,
//!    compression, LOCAL INFILE and connection attributes are not offered.
//! 2. **Who.** Through SSH the person has logged in with key + code. Inside
//!    the tunnel the device names her: a live MFA lease from that device
//!    admits her; otherwise her password is her current TOTP code, checked
//!    through the `mysql_native_password` (or `caching_sha2_password`)
//!    scramble, so the code never crosses the wire. Same replay and lockout
//!    rules as SSH.
//! 3. **Policy.** The login (the client's user name) must be allowed by a
//!    role for this target. A refusal is ERR 1045 and a
//!    `db.session.refused` audit event.
//! 4. **Upstream.** The recording starts (no recording, no session), the
//!    sealed password logs in to the server over TLS verified against the
//!    target's pinned CA, with the client's capabilities and character set,
//!    and the client gets its OK.
//! 5. **Relay** ([`relay`]): original bytes both ways, command by command;
//!    statements, prepared-statement parameters with their types, results,
//!    kills and refusals go to the sealed recording. COM_CHANGE_USER, LOAD
//!    DATA LOCAL INFILE and binlog/replication commands are refused; `KILL`
//!    is answered by gatehouse, only for the same person's sessions.

pub mod binary;
pub mod frontend;
pub mod packet;
pub mod relay;
pub mod sql;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::audit;
use crate::auth::{AuthenticatedUser, CodeOutcome};
use crate::db::{cancel, who, DbGateway};
use crate::dispatch::{Connection, Stream};
use crate::policy::Denied;
use crate::recording::{RecordingKind, RecordingMeta};
use crate::source::Source;
use packet::{read_packet, write_packet, PacketError};
use upstream::{auth, Endpoint, ServerHello, UpstreamError};

/// Time from connect to a complete login.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// The largest handshake or auth packet read from a client.
const MAX_LOGIN_PACKET: usize = 64 << 10;
/// How long a final ERR gets to reach a client before the connection is cut.
const GOODBYE: Duration = Duration::from_millis(500);

/// A refusal: the ERR packet the client gets and the audit reason.
#[derive(Debug)]
pub struct Refusal {
    pub code: u16,
    pub sqlstate: &'static str,
    pub message: String,
    pub reason: String,
}

impl Refusal {
    pub fn new(
        code: u16,
        sqlstate: &'static str,
        message: impl Into<String>,
        reason: impl Into<String>,
    ) -> Refusal {
        Refusal {
            code,
            sqlstate,
            message: message.into(),
            reason: reason.into(),
        }
    }

    fn packet(&self) -> Vec<u8> {
        frontend::err(self.code, self.sqlstate, &self.message)
    }
}

/// Sends an ERR with sequence id `seq` and closes, without waiting on a
/// client that does not read.
async fn goodbye(stream: &mut Box<dyn Stream>, seq: u8, r: &Refusal) {
    let _ = tokio::time::timeout(GOODBYE, async {
        let mut seq = seq;
        let _ = write_packet(stream, &mut seq, &r.packet()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// The greeting to send for `target`: the cached one, else a probe's.
async fn server_hello(
    gw: &DbGateway,
    target: &str,
    ep: &Endpoint,
) -> Result<ServerHello, UpstreamError> {
    if let Some(h) = greetings(gw).get(target) {
        return Ok(h.clone());
    }
    let hello = upstream::probe(ep).await?;
    greetings(gw).insert(target.to_string(), hello.clone());
    Ok(hello)
}

fn greetings(
    gw: &DbGateway,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, ServerHello>> {
    gw.greetings.lock().unwrap_or_else(|e| e.into_inner())
}

/// A nonce as servers make them: 20 bytes in 1..=127, never `$`.
fn nonce() -> [u8; 20] {
    let mut b = [0u8; 20];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    for x in &mut b {
        *x = (*x & 0x7F).max(1);
        if *x == b'$' {
            *x = b'%';
        }
    }
    b
}

/// Serves one connection to a MySQL/MariaDB target, from any door.
pub async fn serve(gw: Arc<DbGateway>, target: String, conn: Connection) {
    let Connection {
        mut stream,
        source,
        admitted,
        pre_auth,
        ..
    } = conn;
    let source_label = source.to_string();
    let person = match (&admitted, source.device_user()) {
        (Some(u), _) => u.name().to_string(),
        (None, Some(u)) => u.to_string(),
        (None, None) => {
            audit::db_session_refused(
                who("-", "-", &target, "-", &source_label),
                "not through the tunnel or SSH",
            );
            return;
        }
    };
    // An administrator's lock refuses before the greeting: no code is
    // asked for (an ERR instead of a greeting, as a server that refuses a
    // host does).
    let device = source.device().map(|d| d.public_key_b64());
    if let Some(lock) = gw.locks.session(&person, device.as_deref(), &target) {
        let r = Refusal::new(
            3118,
            "HY000",
            format!("gatehouse: {}", lock.message()),
            "locked by an administrator".to_string(),
        );
        audit::db_session_refused(who(&person, "-", &target, "-", &source_label), &r.reason);
        goodbye(&mut stream, 0, &r).await;
        return;
    }
    let Some(ep) = gw.policy().target(&target).and_then(Endpoint::from_target) else {
        return;
    };
    let hello = match server_hello(&gw, &target, &ep).await {
        Ok(h) => h,
        Err(e) => {
            let r = Refusal::new(
                2013,
                "HY000",
                format!("gatehouse: cannot reach the database server of {target}: {e}"),
                format!("upstream: {e}"),
            );
            audit::db_session_refused(who(&person, "-", &target, "-", &source_label), &r.reason);
            goodbye(&mut stream, 0, &r).await;
            return;
        }
    };
    // The id the client knows this session by (its `KILL` names it),
    // registered now with no one's name; filled in after the login.
    let session_id = crate::db::new_session_id();
    let (cancel_tx, cancel_rx) = tokio::sync::mpsc::channel(4);
    let key = gw.keys.register(cancel::Entry {
        user: String::new(),
        target: target.clone(),
        login: String::new(),
        server_pid: 0,
        server_secret: 0,
        session_id: session_id.clone(),
        notify: cancel_tx,
    });
    let connection_id = u32::try_from(key.key().0).unwrap_or(1);
    let nonce = nonce();
    let started = tokio::time::timeout(STARTUP_DEADLINE, async {
        let mut seq = 0u8;
        if write_packet(
            &mut stream,
            &mut seq,
            &frontend::greeting(&hello, connection_id, &nonce),
        )
        .await
        .is_err()
        {
            return Ok(None);
        }
        login(&gw, &source, admitted, &mut stream, &nonce, &mut seq)
            .await
            .map(|v| v.map(|(u, r)| (u, r, seq)))
            .map_err(|(login, r)| (login, r, seq))
    })
    .await;
    drop(pre_auth);
    let (user, response, seq) = match started {
        Ok(Ok(Some(v))) => v,
        Ok(Ok(None)) => return,
        Ok(Err((login, r, seq))) => {
            audit::db_session_refused(who(&person, &login, &target, "-", &source_label), &r.reason);
            goodbye(&mut stream, seq, &r).await;
            return;
        }
        Err(_) => {
            let r = Refusal::new(
                1043,
                "08S01",
                "gatehouse: the login took too long",
                "login deadline passed",
            );
            audit::db_session_refused(who(&person, "-", &target, "-", &source_label), &r.reason);
            goodbye(&mut stream, 2, &r).await;
            return;
        }
    };
    let login_name = String::from_utf8_lossy(&response.user).into_owned();
    let database = response
        .database
        .as_deref()
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .unwrap_or_default();
    let w = who(user.name(), &login_name, &target, &database, &source_label);
    let authorized = match gw.policy().authorize(&user, &target, &login_name) {
        Ok(a) => a,
        Err(d) => {
            let reason = d.reason();
            let message = match d {
                Denied::Login { allowed } => format!(
                    "gatehouse: no role of yours allows login \"{}\" on {target} ({})",
                    audit::client_name(&login_name),
                    if allowed.is_empty() {
                        "no login is allowed".to_string()
                    } else {
                        format!("allowed: {}", allowed.join(", "))
                    }
                ),
                _ => format!("gatehouse: no role of yours grants {target}"),
            };
            let r = Refusal::new(1045, "28000", message, reason);
            audit::db_session_refused(w, &r.reason);
            goodbye(&mut stream, seq, &r).await;
            return;
        }
    };
    let ctx = Session {
        gw: gw.clone(),
        ep,
        target: target.clone(),
        person: user.name().to_string(),
        login: login_name.clone(),
        database: database.clone(),
        source,
        session_id,
    };
    session(ctx, authorized, response, stream, seq, key, cancel_rx).await;
}

type LoginError = (String, Refusal);

/// Reads the client's handshake response and admits the person: by the
/// SSH login, a device lease, or the code through the scramble. None when
/// the client went away.
async fn login(
    gw: &DbGateway,
    source: &Source,
    admitted: Option<AuthenticatedUser>,
    stream: &mut Box<dyn Stream>,
    nonce: &[u8; 20],
    seq: &mut u8,
) -> Result<Option<(AuthenticatedUser, frontend::Response)>, LoginError> {
    let plain = |r: Refusal| ("-".to_string(), r);
    let payload = match read_packet(stream, seq, MAX_LOGIN_PACKET).await {
        Ok(p) => p,
        Err(PacketError::Closed) => return Ok(None),
        Err(e) => {
            return Err(plain(Refusal::new(
                1043,
                "08S01",
                "gatehouse: bad handshake",
                format!("protocol error: {e}"),
            )))
        }
    };
    let response = frontend::parse_response(&payload).map_err(|e| {
        plain(match e {
            frontend::ResponseError::Tls => Refusal::new(
                1043,
                "08S01",
                "gatehouse: TLS is not offered here: the WireGuard tunnel or the SSH channel already encrypts this connection; connect with --ssl-mode=DISABLED (or --skip-ssl)",
                "client asked for TLS",
            ),
            frontend::ResponseError::Old => Refusal::new(
                1043,
                "08S01",
                "gatehouse: the client does not speak protocol 4.1",
                "old protocol",
            ),
            frontend::ResponseError::Malformed => Refusal::new(
                1043,
                "08S01",
                "gatehouse: bad handshake",
                "malformed handshake response",
            ),
        })
    })?;
    let login_name = String::from_utf8_lossy(&response.user).into_owned();
    let fail = |r: Refusal| (login_name.clone(), r);
    if response.user.is_empty() || std::str::from_utf8(&response.user).is_err() {
        return Err(fail(Refusal::new(
            1045,
            "28000",
            "gatehouse: no valid database user name given",
            "no user in the handshake",
        )));
    }
    let user = match admitted {
        Some(u) => u,
        None => match gw.auth.device_lease(source) {
            Some(u) => u,
            None => code_login(gw, source, &login_name, &response, stream, nonce, seq)
                .await
                .map_err(fail)?,
        },
    };
    Ok(Some((user, response)))
}

/// How the client proved the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proof {
    Native,
    CachingSha2,
}

/// The person's current TOTP code, proved by the client's scramble.
async fn code_login(
    gw: &DbGateway,
    source: &Source,
    login_name: &str,
    response: &frontend::Response,
    stream: &mut Box<dyn Stream>,
    nonce: &[u8; 20],
    seq: &mut u8,
) -> Result<AuthenticatedUser, Refusal> {
    let gone = || Refusal::new(1043, "08S01", "", "client went away at the password prompt");
    let plugin = response.plugin.as_deref().unwrap_or(auth::NATIVE);
    let (proof, answer) = match (plugin, response.auth.len()) {
        (auth::NATIVE, 20) => (Proof::Native, response.auth.clone()),
        (auth::CACHING_SHA2, 32) => (Proof::CachingSha2, response.auth.clone()),
        (_, 0) => (Proof::Native, Vec::new()),
        _ => {
            // Another plugin (ed25519, cleartext...): ask for the native
            // scramble, once.
            write_packet(stream, seq, &frontend::switch_to_native(nonce))
                .await
                .map_err(|_| gone())?;
            let answer = read_packet(stream, seq, MAX_LOGIN_PACKET)
                .await
                .map_err(|_| gone())?;
            (Proof::Native, answer)
        }
    };
    let denied = |reason: &str, hint: &str| {
        Refusal::new(
            1045,
            "28000",
            format!(
                "gatehouse: access denied for user '{}' ({hint})",
                audit::client_name(login_name)
            ),
            reason.to_string(),
        )
    };
    if answer.is_empty() {
        return Err(denied(
            "no password given",
            "using password: NO; the password is your current TOTP code, or log in with ssh from this device first",
        ));
    }
    let auth = gw.auth.clone();
    let src = source.clone();
    let nonce = *nonce;
    let answer = zeroize::Zeroizing::new(answer);
    let outcome = tokio::task::spawn_blocking(move || {
        let matches = |code: &str| {
            let expected = match proof {
                Proof::Native => auth::native_scramble(code.as_bytes(), &nonce),
                Proof::CachingSha2 => auth::caching_sha2_scramble(code.as_bytes(), &nonce),
            };
            crate::auth::totp::constant_time_eq(&expected, &answer)
        };
        auth.verify_device_proof(&src, &matches)
    })
    .await
    .map_err(|_| {
        Refusal::new(
            1105,
            "HY000",
            "gatehouse: internal error",
            "code check failed",
        )
    })?
    .map_err(|_| {
        Refusal::new(
            1105,
            "HY000",
            "gatehouse: internal error checking the code",
            "state error while checking the code",
        )
    })?;
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
        CodeOutcome::Accepted(u) => {
            if proof == Proof::CachingSha2 {
                // caching_sha2's "fast auth success"; the OK follows.
                write_packet(stream, seq, &[0x01, auth::FAST_AUTH_SUCCESS])
                    .await
                    .map_err(|_| gone())?;
            }
            Ok(*u)
        }
        CodeOutcome::Wrong { .. } => Err(denied(
            "wrong code",
            "using password: YES; the password is your current TOTP code, or log in with ssh from this device first",
        )),
        CodeOutcome::Reused { .. } => Err(denied(
            "reused code",
            "that code was already used; wait for the next one",
        )),
        CodeOutcome::Locked { .. } => Err(Refusal::new(
            1045,
            "28000",
            "gatehouse: locked after too many failed attempts; try again later",
            "locked",
        )),
        CodeOutcome::NotEnrolled => Err(Refusal::new(
            1045,
            "28000",
            "gatehouse: you have no TOTP code enrolled; ask an administrator",
            "not enrolled",
        )),
    }
}

/// Who and where a session is: what the relay needs to record, audit and
/// answer `KILL`.
#[derive(Debug, Clone)]
pub struct Session {
    pub gw: Arc<DbGateway>,
    pub ep: Endpoint,
    pub target: String,
    pub person: String,
    pub login: String,
    pub database: String,
    pub source: Source,
    pub session_id: String,
}

impl Session {
    pub fn source_label(&self) -> String {
        self.source.to_string()
    }
}

/// From an authorized login to the end of the session.
async fn session(
    ctx: Session,
    authorized: crate::policy::Authorized,
    response: frontend::Response,
    mut stream: Box<dyn Stream>,
    seq: u8,
    key: cancel::Registered,
    cancel_rx: tokio::sync::mpsc::Receiver<bool>,
) {
    let gw = ctx.gw.clone();
    let user = authorized.user().clone();
    let source_label = ctx.source_label();
    let w = who(
        user.name(),
        &ctx.login,
        &ctx.target,
        &ctx.database,
        &source_label,
    );
    let state = gw.state.clone();
    let (tname, lname) = (ctx.target.clone(), ctx.login.clone());
    let password = match tokio::task::spawn_blocking(move || state.db_credential(&tname, &lname))
        .await
    {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => {
            let r = Refusal::new(
                    1045,
                    "28000",
                    format!(
                        "gatehouse holds no password for login \"{}\" on {}; an administrator stores it with: gatehouse target credential {} {}",
                        ctx.login, ctx.target, ctx.target, ctx.login
                    ),
                    "no credential for the login",
                );
            audit::db_session_refused(w, &r.reason);
            goodbye(&mut stream, seq, &r).await;
            return;
        }
        _ => {
            let r = Refusal::new(
                1105,
                "HY000",
                "gatehouse: the stored credential cannot be read",
                "credential unreadable",
            );
            audit::db_session_refused(w, &r.reason);
            goodbye(&mut stream, seq, &r).await;
            return;
        }
    };
    let meta = RecordingMeta {
        session_id: ctx.session_id.clone(),
        user: user.name().to_string(),
        login: ctx.login.clone(),
        target: ctx.target.clone(),
        source: source_label.clone(),
        wireguard_peer: ctx.source.wireguard_peer(),
        kind: RecordingKind::Mysql {
            database: ctx.database.clone(),
        },
        record_input: authorized.record_input(),
        pty: false,
        // The client's character set (collation id): the server reads the
        // statements' bytes in it.
        env: vec![("collation_id".to_string(), response.charset.to_string())],
    };
    let recording = match gw.recorder.start(meta).await {
        Ok(r) => r,
        Err(e) => {
            let code = if matches!(e, crate::recording::RecordingError::DiskFull { .. }) {
                1021
            } else {
                1105
            };
            let r = Refusal::new(
                code,
                "HY000",
                format!("gatehouse: {e}"),
                "recording could not start",
            );
            audit::db_session_refused(w, &r.reason);
            goodbye(&mut stream, seq, &r).await;
            return;
        }
    };
    let began = Instant::now();
    let database = response
        .database
        .as_deref()
        .and_then(|d| std::str::from_utf8(d).ok())
        .filter(|d| !d.is_empty());
    let up = match upstream::connect_with_charset(
        &ctx.ep,
        &ctx.login,
        database,
        &password,
        response.capabilities,
        Some(response.charset).filter(|c| *c != 0),
    )
    .await
    {
        Ok(u) => u,
        Err(e) => {
            let r = match &e {
                UpstreamError::Server {
                    code,
                    sqlstate,
                    message,
                } => Refusal {
                    code: *code,
                    sqlstate: if sqlstate == "42000" {
                        "42000"
                    } else {
                        "28000"
                    },
                    message: format!("{}: {message}", ctx.target),
                    reason: format!("upstream: {e}"),
                },
                other => Refusal::new(
                    2013,
                    "HY000",
                    format!("gatehouse: cannot log in to {}: {other}", ctx.target),
                    format!("upstream: {e}"),
                ),
            };
            audit::db_session_refused(w, &r.reason);
            let _ = recording.finish(None, &r.reason, 0, 0).await;
            goodbye(&mut stream, seq, &r).await;
            return;
        }
    };
    drop(password);
    greetings(&gw).insert(ctx.target.clone(), up.hello.clone());
    key.update(|e| {
        e.user = user.name().to_string();
        e.login = ctx.login.clone();
        e.server_pid = i32::from_ne_bytes(up.connection_id.to_ne_bytes());
    });
    let mut seq = seq;
    let ok = frontend::ok(frontend::STATUS_AUTOCOMMIT, response.capabilities);
    if write_packet(&mut stream, &mut seq, &ok).await.is_err() {
        let _ = recording.finish(None, "client went away", 0, 0).await;
        audit::db_session_refused(w, "client went away before the OK");
        return;
    }
    audit::db_session_start(
        &ctx.session_id,
        w,
        user.admitted_by().as_str(),
        recording.id(),
    );
    let registration = gw.live.register(crate::db::live_info(
        &ctx.session_id,
        crate::live::SessionKind::Mysql,
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
    let capabilities = up.capabilities;
    let summary = relay::run(
        &ctx,
        stream,
        up.stream,
        capabilities,
        recording.clone(),
        limits,
        cancel_rx,
    )
    .await;
    drop(key);
    let _ = recording
        .finish(None, &summary.reason, summary.bytes_up, summary.bytes_down)
        .await;
    crate::metrics::session_ended("mysql", began.elapsed());
    audit::db_session_end(
        &ctx.session_id,
        who(
            user.name(),
            &ctx.login,
            &ctx.target,
            &ctx.database,
            &source_label,
        ),
        &audit::DbSummary {
            duration_ms: began.elapsed().as_millis() as u64,
            statements: summary.statements,
            bytes_up: summary.bytes_up,
            bytes_down: summary.bytes_down,
            reason: summary.reason,
        },
    );
}
