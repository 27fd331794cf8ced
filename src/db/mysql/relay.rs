//! The command phase of a MySQL session. MySQL is half-duplex: the client
//! sends one command (sequence id 0), the server answers it, and only then
//! comes the next. So the relay is one loop:
//!
//! 1. read a whole command from the client (bounded: [`MAX_COMMAND`];
//!    large ones wait for a share of the gateway-wide budget, as for
//!    PostgreSQL);
//! 2. record it (statement text, prepared-statement parameters with their
//!    types) *before* forwarding it: nothing runs unrecorded;
//! 3. refuse what would escape the role (COM_CHANGE_USER, LOAD DATA LOCAL
//!    INFILE, binlog/replication commands, unknown commands) with an ERR,
//!    an audit event and a `refused` event; answer `KILL` itself;
//! 4. forward the original bytes and stream the answer back as it comes,
//!    reading only packet headers and the few packets that end a result
//!    (OK, EOF, ERR), to record each result's rows or error and duration.
//!    Rows are never kept.
//!
//! `max_session` and shutdown end the session at any point; `idle_timeout`
//! ends it when the client sends nothing, or stops reading what it asked
//! for, for that long.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch, Semaphore};

use super::binary::{self, Statements};
use super::packet::{frame_into, Reader, MAX_CHUNK};
use super::sql::{self, Class};
use super::upstream::UpstreamStream;
use super::{frontend, upstream, Session};
use crate::audit::{self, DbWho};
use crate::dispatch::Stream;
use crate::recording::query::{DbEvent, Param};
use crate::recording::Recording;

/// The largest command read (and recorded): what one recording event holds.
pub const MAX_COMMAND: usize = crate::recording::query::MAX_EVENT_BYTES;
const BUF: usize = 64 << 10;
/// The most of an ending packet (OK, EOF, ERR) kept to decode it.
const KEEP: usize = 4096;

// Command bytes.
const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_STATISTICS: u8 = 0x09;
const COM_PROCESS_INFO: u8 = 0x0A;
const COM_PROCESS_KILL: u8 = 0x0C;
const COM_DEBUG: u8 = 0x0D;
const COM_PING: u8 = 0x0E;
const COM_CHANGE_USER: u8 = 0x11;
const COM_BINLOG_DUMP: u8 = 0x12;
const COM_TABLE_DUMP: u8 = 0x13;
const COM_REGISTER_SLAVE: u8 = 0x15;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1A;
const COM_SET_OPTION: u8 = 0x1B;
const COM_STMT_FETCH: u8 = 0x1C;
const COM_BINLOG_DUMP_GTID: u8 = 0x1E;
const COM_RESET_CONNECTION: u8 = 0x1F;

// Server status flags.
const MORE_RESULTS: u16 = 0x0008;
const CURSOR_EXISTS: u16 = 0x0040;
const NO_BACKSLASH_ESCAPES: u16 = 0x0200;

/// Limits of a session: the same as PostgreSQL's (one budget for both).
pub use crate::db::postgres::relay::Limits;

/// What a session did, for its audit event.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub reason: String,
    pub statements: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// Why the relay stopped: the reason in the audit log and recording, and
/// an ERR for the client when one can still be sent between commands.
#[derive(Debug)]
struct End {
    reason: String,
    tell: Option<(u16, &'static str, String)>,
}

impl End {
    fn quiet(reason: impl Into<String>) -> End {
        End {
            reason: reason.into(),
            tell: None,
        }
    }
    fn tell(reason: impl Into<String>, code: u16, state: &'static str, msg: String) -> End {
        End {
            reason: reason.into(),
            tell: Some((code, state, msg)),
        }
    }
}

/// The relay's state between commands.
struct Relay<'a, CR, CW, SR, SW> {
    ctx: &'a Session,
    live: Option<Arc<crate::live::Live>>,
    client_r: BufReader<CR>,
    client_w: CW,
    server_r: SR,
    server_w: SW,
    rec: Recording,
    capabilities: u32,
    statements: Statements,
    idle: Duration,
    budget: std::sync::Arc<Semaphore>,
    summary: Summary,
    buf: Vec<u8>,
    /// Whether the server's last status said NO_BACKSLASH_ESCAPES (None:
    /// no status seen yet).
    no_backslash_escapes: Option<bool>,
}

/// Runs the command phase until either side ends or a limit is reached.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    ctx: &Session,
    client: Box<dyn Stream>,
    server: UpstreamStream,
    capabilities: u32,
    rec: Recording,
    limits: Limits,
    mut cancels: mpsc::Receiver<bool>,
) -> Summary {
    let (cr, cw) = tokio::io::split(client);
    let (sr, sw) = tokio::io::split(server);
    let live = limits.live.clone();
    let mut relay = Relay {
        ctx,
        live: limits.live.clone(),
        client_r: BufReader::with_capacity(BUF, cr),
        client_w: cw,
        server_r: sr,
        server_w: sw,
        rec,
        capabilities,
        statements: Statements::default(),
        idle: limits.idle_timeout,
        budget: limits.budget,
        summary: Summary::default(),
        buf: Vec::with_capacity(BUF),
        no_backslash_escapes: None,
    };
    let deadline = tokio::time::Instant::now() + limits.max_session;
    let mut shutdown = limits.shutdown;
    let rec = relay.rec.clone();
    let end = {
        let work = relay.serve();
        tokio::pin!(work);
        loop {
            tokio::select! {
                end = &mut work => break end,
                _ = tokio::time::sleep_until(deadline) => break End::tell(
                    "max_session reached", 1927, "70100",
                    "gatehouse: session ended: the maximum session length was reached".into()),
                _ = wait_shutdown(&mut shutdown) => break End::tell(
                    "gateway shutting down", 1927, "70100",
                    "gatehouse: session ended: the gateway is shutting down".into()),
                reason = async {
                    match &live {
                        Some(l) => l.ended().await,
                        None => std::future::pending().await,
                    }
                } => break End::tell(reason.clone(), 1927, "70100", format!("gatehouse: {reason}")),
                Some(forwarded) = cancels.recv() => {
                    if rec.db(DbEvent::Cancel { forwarded }).await.is_err() {
                        break End::quiet("recording failed");
                    }
                }
            }
        }
    };
    if let Some((code, state, msg)) = &end.tell {
        // Unsolicited, as servers do before closing (sequence id 0).
        let mut out = Vec::new();
        let mut seq = 0;
        frame_into(&mut out, &mut seq, &frontend::err(*code, state, msg));
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let _ = relay.client_w.write_all(&out).await;
            let _ = relay.client_w.flush().await;
        })
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut quit = Vec::new();
        frame_into(&mut quit, &mut 0, &[COM_QUIT]);
        let _ = relay.server_w.write_all(&quit).await;
        let _ = relay.server_w.shutdown().await;
        let _ = relay.client_w.shutdown().await;
    })
    .await;
    relay.summary.reason = end.reason;
    relay.summary
}

async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What a command's answer looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// No answer (COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA).
    None,
    /// One packet (OK, ERR, EOF or a string).
    One { record: bool },
    /// Result sets, possibly several (COM_QUERY, COM_STMT_EXECUTE).
    Results,
    /// COM_STMT_PREPARE's.
    Prepare,
    /// Rows of an open cursor (COM_STMT_FETCH).
    Fetch,
    /// Column definitions to an EOF (COM_FIELD_LIST).
    Fields,
}

impl<CR, CW, SR, SW> Relay<'_, CR, CW, SR, SW>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    async fn serve(&mut self) -> End {
        loop {
            let (payload, seq, _share) = match self.read_command().await {
                Ok(c) => c,
                Err(end) => return end,
            };
            if let Err(end) = self.command(payload, seq).await {
                return end;
            }
        }
    }

    /// Reads one command whole. Its sequence id must be 0.
    async fn read_command(
        &mut self,
    ) -> Result<(Vec<u8>, u8, Option<tokio::sync::OwnedSemaphorePermit>), End> {
        let mut head = [0u8; 4];
        let first = self.client_r.read_exact(&mut head);
        let read = if self.idle.is_zero() {
            first.await
        } else {
            match tokio::time::timeout(self.idle, first).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(End::tell(
                        "idle_timeout reached",
                        4031,
                        "HY000",
                        "gatehouse: session ended: idle for longer than the idle timeout".into(),
                    ))
                }
            }
        };
        if read.is_err() {
            return Err(End::quiet("client closed the connection"));
        }
        let [a, b, c, seq] = head;
        let mut len = usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16;
        if seq != 0 {
            return Err(End::quiet(format!(
                "protocol error: command with sequence id {seq}"
            )));
        }
        if len == 0 {
            return Err(End::quiet("protocol error: empty command"));
        }
        if len >= MAX_CHUNK {
            // A command of 16 MiB or more: more than one event can hold.
            return Err(End::tell(
                "command too large to record",
                1153,
                "08S01",
                format!(
                    "gatehouse: a command of {} MiB or more cannot be recorded (limit {} MiB); session ended",
                    MAX_CHUNK >> 20,
                    MAX_COMMAND >> 20
                ),
            ));
        }
        let share =
            if len > crate::db::postgres::relay::SMALL {
                let kib = u32::try_from(len.div_ceil(1024)).unwrap_or(u32::MAX);
                match tokio::time::timeout(
                    crate::db::postgres::relay::BUDGET_WAIT,
                    self.budget.clone().acquire_many_owned(kib),
                )
                .await
                {
                    Ok(Ok(p)) => Some(p),
                    _ => return Err(End::tell(
                        "large statements over the gateway's budget",
                        1040,
                        "HY000",
                        "gatehouse: too many large statements at once through the gateway; retry"
                            .into(),
                    )),
                }
            } else {
                None
            };
        // The body as it comes: bytes arriving are activity; a client that
        // stops mid-command is idle (and gives back its share of the
        // budget when the idle timeout ends the session).
        let mut payload = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let Some(dest) = payload.get_mut(got..) else {
                break;
            };
            let read = self.client_r.read(dest);
            let n =
                if self.idle.is_zero() {
                    read.await
                } else {
                    match tokio::time::timeout(self.idle, read).await {
                        Ok(r) => r,
                        Err(_) => return Err(End::quiet(
                            "idle_timeout reached: the client stopped in the middle of a command",
                        )),
                    }
                };
            match n {
                Ok(0) | Err(_) => return Err(End::quiet("client closed the connection")),
                Ok(n) => got += n,
            }
        }
        self.summary.bytes_up += 4 + len as u64;
        if let Some(l) = &self.live {
            l.add_up(4 + len);
        }
        len = len.min(payload.len());
        payload.truncate(len);
        Ok((payload, 1, share))
    }

    async fn record(&mut self, ev: DbEvent) -> Result<(), End> {
        self.rec
            .db(ev)
            .await
            .map_err(|e| End::quiet(format!("recording failed: {e}")))
    }

    fn who(&self) -> (String, String) {
        (self.ctx.source_label(), self.ctx.database.clone())
    }

    /// Answers a command with an ERR of gatehouse's own, records and
    /// audits the refusal; the session goes on.
    async fn refuse(
        &mut self,
        seq: u8,
        command: &str,
        code: u16,
        state: &'static str,
        message: String,
    ) -> Result<(), End> {
        self.record(DbEvent::Refused {
            command: command.to_string(),
            reason: message.clone(),
        })
        .await?;
        let (source, database) = self.who();
        audit::db_command_refused(
            &self.ctx.session_id,
            DbWho {
                user: &self.ctx.person,
                login: &self.ctx.login,
                target: &self.ctx.target,
                database: &database,
                source: &source,
            },
            command,
            &message,
        );
        self.reply(seq, &frontend::err(code, state, &message)).await
    }

    async fn reply(&mut self, seq: u8, payload: &[u8]) -> Result<(), End> {
        let mut out = Vec::with_capacity(payload.len() + 4);
        let mut seq = seq;
        frame_into(&mut out, &mut seq, payload);
        self.send_client(&out).await
    }

    async fn send_client(&mut self, bytes: &[u8]) -> Result<(), End> {
        self.summary.bytes_down += bytes.len() as u64;
        if let Some(l) = &self.live {
            l.add_down(bytes.len());
        }
        let w = async {
            self.client_w.write_all(bytes).await?;
            self.client_w.flush().await
        };
        let r = if self.idle.is_zero() {
            w.await
        } else {
            tokio::time::timeout(self.idle, w)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        };
        r.map_err(|e| {
            if e.kind() == std::io::ErrorKind::TimedOut {
                End::quiet("idle_timeout reached: the client stopped reading")
            } else {
                End::quiet("client closed the connection")
            }
        })
    }

    async fn send_server(&mut self, payload: &[u8]) -> Result<(), End> {
        let mut out = Vec::with_capacity(payload.len() + 8);
        frame_into(&mut out, &mut 0, payload);
        let r = async {
            self.server_w.write_all(&out).await?;
            self.server_w.flush().await
        };
        r.await
            .map_err(|_| End::quiet("server closed the connection"))
    }

    async fn command(&mut self, payload: Vec<u8>, seq: u8) -> Result<(), End> {
        let Some((&cmd, body)) = payload.split_first() else {
            return Err(End::quiet("protocol error: empty command"));
        };
        if cmd == COM_STMT_PREPARE {
            // As the server: a failed prepare leaves no "last statement"
            // (id 0xFFFFFFFF); a successful one names itself.
            self.statements.forget_last();
        }
        let answer = match cmd {
            COM_QUIT => return Err(End::quiet("client quit")),
            COM_QUERY => {
                self.summary.statements += 1;
                crate::metrics::db_statement("mysql");
                self.record(DbEvent::Statement {
                    text: body.to_vec(),
                    parse: None,
                })
                .await?;
                match classify(body, self.no_backslash_escapes).await {
                    Class::Plain => Answer::Results,
                    Class::Kill { connection, id } => return self.kill(seq, id, connection).await,
                    Class::KillOther => {
                        return self
                            .refuse(
                                seq,
                                "KILL",
                                1094,
                                "HY000",
                                "gatehouse: only `KILL [QUERY|CONNECTION] <id>` alone, with the connection id your client was given, is allowed".into(),
                            )
                            .await
                    }
                    Class::LoadLocal => return self.refuse_load_local(seq).await,
                    Class::Dynamic => return self.refuse_dynamic(seq).await,
                }
            }
            COM_STMT_PREPARE => {
                self.summary.statements += 1;
                crate::metrics::db_statement("mysql");
                self.record(DbEvent::Statement {
                    text: body.to_vec(),
                    parse: Some(String::new()),
                })
                .await?;
                match classify(body, self.no_backslash_escapes).await {
                    Class::Plain => Answer::Prepare,
                    Class::LoadLocal => return self.refuse_load_local(seq).await,
                    Class::Dynamic => return self.refuse_dynamic(seq).await,
                    Class::Kill { .. } | Class::KillOther => {
                        return self
                            .refuse(
                                seq,
                                "KILL",
                                1295,
                                "HY000",
                                "gatehouse: KILL cannot be prepared; send it as a plain statement".into(),
                            )
                            .await
                    }
                }
            }
            COM_STMT_EXECUTE => {
                self.summary.statements += 1;
                crate::metrics::db_statement("mysql");
                let (id, params, types) = self.statements.execute(body);
                self.record(DbEvent::Bind {
                    statement: id.to_string(),
                    portal: String::new(),
                    params,
                    types,
                })
                .await?;
                Answer::Results
            }
            COM_STMT_SEND_LONG_DATA => {
                let mut r = Reader::new(body);
                let (id, param) = (r.u32().unwrap_or(0), r.u16().unwrap_or(0));
                self.statements.long_data(id, param);
                self.record(DbEvent::Bind {
                    statement: id.to_string(),
                    // Numbered from 1, as the execute's `?N` lines are.
                    portal: format!("long data {}", u32::from(param) + 1),
                    params: vec![Param::Binary(r.rest().to_vec())],
                    types: Vec::new(),
                })
                .await?;
                Answer::None
            }
            COM_STMT_CLOSE => {
                let id = Reader::new(body).u32().unwrap_or(0);
                self.statements.closed(id);
                Answer::None
            }
            COM_STMT_RESET => {
                let id = Reader::new(body).u32().unwrap_or(0);
                self.statements.reset(id);
                Answer::One { record: false }
            }
            COM_STMT_FETCH => Answer::Fetch,
            COM_INIT_DB => {
                self.summary.statements += 1;
                crate::metrics::db_statement("mysql");
                let mut text = b"USE `".to_vec();
                text.extend_from_slice(body);
                text.push(b'`');
                self.record(DbEvent::Statement { text, parse: None }).await?;
                Answer::One { record: true }
            }
            COM_FIELD_LIST => {
                let mut text = b"/* COM_FIELD_LIST */ ".to_vec();
                text.extend_from_slice(body);
                self.record(DbEvent::Statement { text, parse: None }).await?;
                Answer::Fields
            }
            COM_PROCESS_INFO => {
                self.record(DbEvent::Statement {
                    text: b"/* COM_PROCESS_INFO */ SHOW PROCESSLIST".to_vec(),
                    parse: None,
                })
                .await?;
                Answer::Results
            }
            COM_RESET_CONNECTION => {
                self.statements.clear();
                self.record(DbEvent::Statement {
                    text: b"/* COM_RESET_CONNECTION */".to_vec(),
                    parse: None,
                })
                .await?;
                Answer::One { record: true }
            }
            COM_PING | COM_STATISTICS | COM_SET_OPTION | COM_DEBUG => Answer::One { record: false },
            COM_PROCESS_KILL => {
                let id = Reader::new(body).u32().unwrap_or(0);
                self.record(DbEvent::Statement {
                    text: format!("/* COM_PROCESS_KILL */ KILL {id}").into_bytes(),
                    parse: None,
                })
                .await?;
                return self.kill(seq, u64::from(id), true).await;
            }
            COM_CHANGE_USER => {
                return self
                    .refuse(
                        seq,
                        "COM_CHANGE_USER",
                        1227,
                        "42000",
                        "gatehouse: COM_CHANGE_USER is not allowed: it would switch the database login behind your role; connect again as the other login".into(),
                    )
                    .await
            }
            COM_BINLOG_DUMP | COM_BINLOG_DUMP_GTID | COM_TABLE_DUMP | COM_REGISTER_SLAVE => {
                return self
                    .refuse(
                        seq,
                        command_name(cmd),
                        1227,
                        "42000",
                        "gatehouse: binlog and replication commands are not allowed".into(),
                    )
                    .await
            }
            other => {
                return self
                    .refuse(
                        seq,
                        &format!("command 0x{other:02x}"),
                        1047,
                        "08S01",
                        "gatehouse: unknown or unsupported command".into(),
                    )
                    .await
            }
        };
        self.send_server(&payload).await?;
        drop(payload);
        if answer == Answer::None {
            return Ok(());
        }
        self.answer(answer).await
    }

    async fn refuse_load_local(&mut self, seq: u8) -> Result<(), End> {
        self.refuse(
            seq,
            "LOAD DATA LOCAL INFILE",
            1148,
            "42000",
            "gatehouse: LOAD DATA LOCAL INFILE is not allowed: the server could read files on your machine; load server-side files or use INSERT".into(),
        )
        .await
    }

    async fn refuse_dynamic(&mut self, seq: u8) -> Result<(), End> {
        self.refuse(
            seq,
            "dynamic SQL",
            1227,
            "42000",
            "gatehouse: PREPARE ... FROM and EXECUTE IMMEDIATE are allowed only with one literal statement text, which gatehouse can check; not with an expression or a variable".into(),
        )
        .await
    }

    /// `KILL [QUERY|CONNECTION] id`: `id` is a gatehouse connection id;
    /// only the same person's live session on this target is killed, by
    /// gatehouse, as that session's login. Anything else is answered as
    /// the server answers an unknown thread, and never reaches it.
    async fn kill(&mut self, seq: u8, id: u64, connection: bool) -> Result<(), End> {
        let ctx = self.ctx;
        let source = ctx.source_label();
        let checked = i32::try_from(id)
            .map_err(|_| crate::db::cancel::Ignored::UnknownKey)
            .and_then(|id| ctx.gw.keys.check_id(&ctx.person, &ctx.target, id));
        let entry = match checked {
            Ok(e) => e,
            Err(why) => {
                audit::db_cancel(&ctx.person, &ctx.target, &source, "-", why.reason());
                self.record(DbEvent::Refused {
                    command: "KILL".into(),
                    reason: why.reason().into(),
                })
                .await?;
                return self
                    .reply(
                        seq,
                        &frontend::err(1094, "HY000", &format!("Unknown thread id: {id}")),
                    )
                    .await;
            }
        };
        let state = ctx.gw.state.clone();
        let (t, l) = (ctx.target.clone(), entry.login.clone());
        let password = tokio::task::spawn_blocking(move || state.db_credential(&t, &l))
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten();
        let thread = u32::from_ne_bytes(entry.server_pid.to_ne_bytes());
        let result = match password {
            Some(pw) if thread != 0 => {
                upstream::kill(&ctx.ep, &entry.login, &pw, thread, connection).await
            }
            _ => Err(upstream::UpstreamError::NoCredential),
        };
        let sent = result.is_ok();
        let _ = entry.notify.try_send(sent);
        let outcome = if sent { "forwarded" } else { "forward failed" };
        audit::db_cancel(
            &ctx.person,
            &ctx.target,
            &source,
            &entry.session_id,
            outcome,
        );
        match result {
            Ok(()) => {
                self.record(DbEvent::Result {
                    tag: Some("KILL".into()),
                    rows: None,
                    sqlstate: None,
                    message: None,
                    micros: 0,
                })
                .await?;
                self.reply(
                    seq,
                    &frontend::ok(frontend::STATUS_AUTOCOMMIT, self.capabilities),
                )
                .await
            }
            Err(e) => {
                let (code, state, message) = match e {
                    upstream::UpstreamError::Server { code, message, .. } => {
                        (code, "HY000", message)
                    }
                    other => (
                        1105,
                        "HY000",
                        format!("gatehouse: the KILL failed: {other}"),
                    ),
                };
                self.reply(seq, &frontend::err(code, state, &message)).await
            }
        }
    }

    /// Streams the server's answer to the client until it is complete,
    /// then records its results.
    async fn answer(&mut self, answer: Answer) -> Result<(), End> {
        let started = Instant::now();
        let mut scan = Scan::new(
            answer,
            self.capabilities & super::packet::caps::DEPRECATE_EOF != 0,
            started,
        );
        loop {
            self.buf.clear();
            let n = match self.server_r.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => {
                    // The server went away mid-answer: pass on what came.
                    return Err(End::quiet("server closed the connection"));
                }
                Ok(n) => n,
            };
            let chunk = std::mem::take(&mut self.buf);
            let done = scan.feed(chunk.get(..n).unwrap_or_default());
            let pass = scan.cut.unwrap_or(n).min(n);
            let written = self
                .send_client(chunk.get(..pass).unwrap_or_default())
                .await;
            self.buf = chunk;
            written?;
            if scan.local_infile {
                return Err(End::quiet(
                    "the server asked for a local file (LOAD DATA LOCAL), which gatehouse never allows",
                ));
            }
            if done {
                break;
            }
        }
        if let Some((id, params)) = scan.prepared {
            self.statements.prepared(id, params);
        }
        if let Some(status) = scan.status {
            self.no_backslash_escapes = Some(status & NO_BACKSLASH_ESCAPES != 0);
        }
        let record = !matches!(answer, Answer::One { record: false } | Answer::Fetch);
        if record {
            for ev in scan.results {
                self.record(ev).await?;
            }
        }
        Ok(())
    }
}

/// [`sql::classify`], off the async workers for a large text (a hostile
/// one can take a second or two to read every way the server might).
async fn classify(text: &[u8], no_backslash_escapes: Option<bool>) -> Class {
    if text.len() <= crate::db::postgres::relay::SMALL {
        return sql::classify_in(text, no_backslash_escapes);
    }
    let owned = text.to_vec();
    tokio::task::spawn_blocking(move || sql::classify_in(&owned, no_backslash_escapes))
        .await
        .unwrap_or(Class::Dynamic)
}

fn command_name(cmd: u8) -> &'static str {
    match cmd {
        COM_BINLOG_DUMP => "COM_BINLOG_DUMP",
        COM_BINLOG_DUMP_GTID => "COM_BINLOG_DUMP_GTID",
        COM_TABLE_DUMP => "COM_TABLE_DUMP",
        COM_REGISTER_SLAVE => "COM_REGISTER_SLAVE",
        _ => "command",
    }
}

/// Where an answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// The first packet of a result (or of the answer).
    First,
    /// Column definitions left.
    Columns(u64),
    /// The EOF after column definitions (without DEPRECATE_EOF).
    ColumnsEof,
    /// Rows, to an EOF/OK or ERR.
    Rows,
    /// Packets to pass without looking (a prepare's definitions).
    Skip(u64),
    Done,
}

/// Follows an answer packet by packet, over the raw bytes as they come.
struct Scan {
    answer: Answer,
    deprecate_eof: bool,
    st: St,
    started: Instant,
    rows: u64,
    // The packet being read.
    head: [u8; 4],
    head_have: usize,
    left: usize,
    /// Whether the chunk being read continues a packet of 16 MiB or more.
    continuation: bool,
    first_len: usize,
    keep: Vec<u8>,
    results: Vec<DbEvent>,
    prepared: Option<(u32, u16)>,
    local_infile: bool,
    /// The server status of the last OK or EOF.
    status: Option<u16>,
    /// Where in the bytes last fed the client must stop getting them:
    /// the start of a LOCAL INFILE request (0xFB), which it must never see.
    cut: Option<usize>,
}

impl Scan {
    fn new(answer: Answer, deprecate_eof: bool, started: Instant) -> Scan {
        Scan {
            answer,
            deprecate_eof,
            st: match answer {
                Answer::Fetch => St::Rows,
                Answer::Fields => St::Columns(u64::MAX),
                _ => St::First,
            },
            started,
            rows: 0,
            head: [0; 4],
            head_have: 0,
            left: 0,
            continuation: false,
            first_len: 0,
            keep: Vec::new(),
            results: Vec::new(),
            prepared: None,
            local_infile: false,
            status: None,
            cut: None,
        }
    }

    /// Consumes bytes; true once the answer is complete.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        let total = data.len();
        // Where the packet being read began in `data` (None: before it).
        let mut began = None;
        while !data.is_empty() && self.st != St::Done {
            if self.head_have == 0 {
                began = Some(total - data.len());
            }
            if self.head_have < 4 {
                let take = (4 - self.head_have).min(data.len());
                let (h, rest) = data.split_at(take);
                if let Some(dst) = self.head.get_mut(self.head_have..self.head_have + take) {
                    dst.copy_from_slice(h);
                }
                self.head_have += take;
                data = rest;
                if self.head_have < 4 {
                    break;
                }
                let [a, b, c, _] = self.head;
                self.left = usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16;
                if !self.continuation {
                    self.first_len = self.left;
                    self.keep.clear();
                }
            }
            let take = self.left.min(data.len());
            let (body, rest) = data.split_at(take);
            // A LOCAL INFILE request where an answer begins: the server
            // asks for one of the client's files. The client never sees
            // it (nor the rest); the relay ends the session.
            if self.st == St::First
                && !self.continuation
                && self.keep.is_empty()
                && body.first() == Some(&0xFB)
            {
                self.local_infile = true;
                self.cut = Some(began.unwrap_or(0));
                self.st = St::Done;
                return true;
            }
            if !self.continuation && self.keep.len() < KEEP {
                let room = KEEP - self.keep.len();
                self.keep
                    .extend_from_slice(body.get(..room.min(body.len())).unwrap_or_default());
            }
            self.left -= take;
            data = rest;
            if self.left == 0 {
                // A chunk ended.
                let [a, b, c, _] = self.head;
                let chunk_len = usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16;
                let was_continuation = self.continuation;
                self.continuation = chunk_len == MAX_CHUNK;
                self.head_have = 0;
                if !was_continuation {
                    let keep = std::mem::take(&mut self.keep);
                    self.packet(self.first_len, &keep);
                    self.keep = keep;
                }
            }
        }
        self.st == St::Done
    }

    fn result(&mut self, tag: &str, rows: Option<u64>) {
        self.results.push(DbEvent::Result {
            tag: Some(tag.to_string()),
            rows,
            sqlstate: None,
            message: None,
            micros: self.started.elapsed().as_micros() as u64,
        });
    }

    fn error(&mut self, p: &[u8]) {
        crate::metrics::db_error("mysql");
        let e = super::packet::parse_err(p);
        self.results.push(DbEvent::Result {
            tag: Some(format!("ERROR {}", e.as_ref().map_or(0, |e| e.code))),
            rows: (self.rows > 0).then_some(self.rows),
            sqlstate: e.as_ref().map(|e| e.sqlstate.clone()),
            message: e.map(|e| e.message),
            micros: self.started.elapsed().as_micros() as u64,
        });
        self.st = St::Done;
    }

    /// One whole packet (`p` holds up to [`KEEP`] bytes of it).
    fn packet(&mut self, len: usize, p: &[u8]) {
        let first = p.first().copied();
        match (self.answer, self.st) {
            (_, St::Done) => {}
            (Answer::One { .. }, _) => {
                match first {
                    Some(0x00) => {
                        let (affected, status) = ok_fields(p);
                        self.status = Some(status);
                        self.result("OK", Some(affected));
                    }
                    Some(0xFF) => self.error(p),
                    _ => {}
                }
                self.st = St::Done;
            }
            (Answer::Prepare, St::First) => match first {
                Some(0x00) => {
                    let mut r = Reader::new(p.get(1..).unwrap_or_default());
                    let id = r.u32().unwrap_or(0);
                    let columns = u64::from(r.u16().unwrap_or(0));
                    let params = r.u16().unwrap_or(0);
                    self.prepared = Some((id, params));
                    self.result(&format!("PREPARE {id}"), None);
                    let eof = |n: u64| u64::from(n > 0 && !self.deprecate_eof);
                    let skip = u64::from(params) + eof(u64::from(params)) + columns + eof(columns);
                    self.st = if skip == 0 { St::Done } else { St::Skip(skip) };
                }
                Some(0xFF) => self.error(p),
                _ => self.st = St::Done,
            },
            (_, St::Skip(n)) => {
                self.st = if n <= 1 { St::Done } else { St::Skip(n - 1) };
            }
            (_, St::First) => match first {
                Some(0x00) => {
                    let (affected, status) = ok_fields(p);
                    self.status = Some(status);
                    self.result("OK", Some(affected));
                    self.next_result(status);
                }
                Some(0xFF) => self.error(p),
                Some(0xFB) => {
                    self.local_infile = true;
                    self.st = St::Done;
                }
                _ => {
                    let n = binary::lenenc(&mut Reader::new(p)).unwrap_or(0);
                    self.rows = 0;
                    self.st = if n == 0 {
                        self.after_columns()
                    } else {
                        St::Columns(n)
                    };
                }
            },
            (Answer::Fields, St::Columns(_)) => match first {
                Some(0xFE) if len < 9 => self.st = St::Done,
                Some(0xFF) => self.error(p),
                _ => {}
            },
            (_, St::Columns(n)) => {
                self.st = if n <= 1 {
                    self.after_columns()
                } else {
                    St::Columns(n - 1)
                };
            }
            (_, St::ColumnsEof) => match first {
                Some(0xFE) => {
                    let status = Reader::new(p.get(3..).unwrap_or_default())
                        .u16()
                        .unwrap_or(0);
                    self.status = Some(status);
                    if status & CURSOR_EXISTS != 0 {
                        self.result("SELECT (cursor)", None);
                        self.st = St::Done;
                    } else {
                        self.st = St::Rows;
                    }
                }
                Some(0xFF) => self.error(p),
                _ => self.st = St::Rows,
            },
            (_, St::Rows) => match first {
                Some(0xFF) => self.error(p),
                Some(0xFE) if len < 9 || (self.deprecate_eof && len < MAX_CHUNK) => {
                    let status = if self.deprecate_eof {
                        ok_fields(p).1
                    } else {
                        Reader::new(p.get(3..).unwrap_or_default())
                            .u16()
                            .unwrap_or(0)
                    };
                    self.status = Some(status);
                    if self.answer == Answer::Fetch {
                        self.st = St::Done;
                        return;
                    }
                    let tag = if status & CURSOR_EXISTS != 0 {
                        "SELECT (cursor)"
                    } else {
                        "SELECT"
                    };
                    self.result(tag, Some(self.rows));
                    self.next_result(status);
                }
                _ => self.rows += 1,
            },
        }
    }

    fn after_columns(&self) -> St {
        if self.deprecate_eof {
            St::Rows
        } else {
            St::ColumnsEof
        }
    }

    fn next_result(&mut self, status: u16) {
        self.rows = 0;
        self.st = if status & MORE_RESULTS != 0 && self.answer == Answer::Results {
            St::First
        } else {
            St::Done
        };
    }
}

/// An OK packet's (or 0xFE-headed OK's) affected rows and status flags.
fn ok_fields(p: &[u8]) -> (u64, u16) {
    let mut r = Reader::new(p.get(1..).unwrap_or_default());
    let affected = binary::lenenc(&mut r).unwrap_or(0);
    let _insert_id = binary::lenenc(&mut r);
    let status = r.u16().unwrap_or(0);
    (affected, status)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn framed(packets: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut seq = 1;
        for p in packets {
            frame_into(&mut out, &mut seq, p);
        }
        out
    }

    fn eof(status: u16) -> Vec<u8> {
        let mut p = vec![0xFE, 0, 0];
        p.extend_from_slice(&status.to_le_bytes());
        p
    }

    fn ok(affected: u8, status: u16) -> Vec<u8> {
        let mut p = vec![0x00, affected, 0];
        p.extend_from_slice(&status.to_le_bytes());
        p.extend_from_slice(&[0, 0]);
        p
    }

    #[test]
    fn two_result_sets_and_an_ok_are_followed_to_the_end_byte_by_byte() {
        let col = b"\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00\x01\x00\x00\x00\x08\x00\x00\x00\x00"
            .to_vec();
        let bytes = framed(&[
            &[1],
            &col,
            &eof(MORE_RESULTS | 2),
            b"\x011",
            b"\x012",
            &eof(MORE_RESULTS | 2),
            &[1],
            &col,
            &eof(2),
            b"\x013",
            &eof(MORE_RESULTS | 2),
            &ok(0, 2),
        ]);
        let mut s = Scan::new(Answer::Results, false, Instant::now());
        for (i, b) in bytes.iter().enumerate() {
            let done = s.feed(std::slice::from_ref(b));
            assert_eq!(done, i == bytes.len() - 1, "done at byte {i}");
        }
        let rows: Vec<_> = s
            .results
            .iter()
            .map(|e| match e {
                DbEvent::Result { tag, rows, .. } => (tag.clone().unwrap(), *rows),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("SELECT".into(), Some(2)),
                ("SELECT".into(), Some(1)),
                ("OK".into(), Some(0))
            ]
        );
    }

    #[test]
    fn a_row_starting_with_fe_is_a_row_unless_short_and_an_ok_ends_with_deprecate_eof() {
        // Without DEPRECATE_EOF only a packet under 9 bytes is an EOF.
        let mut fe_row = vec![0xFE];
        fe_row.extend_from_slice(&[0; 20]);
        let bytes = framed(&[&[1], b"coldef", &eof(2), &fe_row, b"\x01x", &eof(2)]);
        let mut s = Scan::new(Answer::Results, false, Instant::now());
        assert!(s.feed(&bytes));
        assert!(matches!(
            s.results[0],
            DbEvent::Result { rows: Some(2), .. }
        ));
        // With it: no EOF after the columns, an OK with 0xFE ends the rows.
        let mut end = vec![0xFE, 0, 0];
        end.extend_from_slice(&2u16.to_le_bytes());
        end.extend_from_slice(&[0, 0]);
        let bytes = framed(&[&[1], b"coldef", b"\x01x", b"\x01y", &end]);
        let mut s = Scan::new(Answer::Results, true, Instant::now());
        assert!(s.feed(&bytes));
        assert!(matches!(
            s.results[0],
            DbEvent::Result { rows: Some(2), .. }
        ));
    }

    #[test]
    fn an_error_mid_rows_and_a_prepare_are_recorded() {
        let mut err = vec![0xFF, 0x25, 0x05, b'#'];
        err.extend_from_slice(b"70100Query execution was interrupted");
        let bytes = framed(&[&[1], b"c", &eof(2), b"\x011", &err]);
        let mut s = Scan::new(Answer::Results, false, Instant::now());
        assert!(s.feed(&bytes));
        match &s.results[0] {
            DbEvent::Result {
                tag,
                sqlstate,
                message,
                rows,
                ..
            } => {
                assert_eq!(tag.as_deref(), Some("ERROR 1317"));
                assert_eq!(sqlstate.as_deref(), Some("70100"));
                assert_eq!(message.as_deref(), Some("Query execution was interrupted"));
                assert_eq!(*rows, Some(1));
            }
            _ => panic!(),
        }
        let mut prep = vec![0x00];
        prep.extend_from_slice(&9u32.to_le_bytes());
        prep.extend_from_slice(&1u16.to_le_bytes());
        prep.extend_from_slice(&2u16.to_le_bytes());
        prep.extend_from_slice(&[0, 0, 0]);
        let bytes = framed(&[&prep, b"p1", b"p2", &eof(2), b"c1", &eof(2)]);
        let mut s = Scan::new(Answer::Prepare, false, Instant::now());
        let (a, b) = bytes.split_at(bytes.len() - 2);
        assert!(!s.feed(a));
        assert!(s.feed(b));
        assert_eq!(s.prepared, Some((9, 2)));
    }

    #[test]
    fn a_local_infile_request_is_noticed_and_cut_before_its_header() {
        let bytes = framed(&[b"\xFB/etc/passwd"]);
        let mut s = Scan::new(Answer::Results, true, Instant::now());
        assert!(s.feed(&bytes));
        assert!(s.local_infile);
        assert_eq!(s.cut, Some(0));
        // After a first result, split across reads.
        let mut more = ok(0, MORE_RESULTS | 2);
        more[0] = 0;
        let bytes = framed(&[&more, b"\xFB/etc/passwd"]);
        let mut s = Scan::new(Answer::Results, true, Instant::now());
        let (a, b) = bytes.split_at(more.len() + 6);
        assert!(!s.feed(a));
        assert_eq!(s.cut, None);
        assert!(s.feed(b));
        assert!(s.local_infile);
        assert_eq!(
            s.cut,
            Some(0),
            "the header came earlier; nothing of the body passes"
        );
    }
}
