//! The relay of an admitted PostgreSQL session: the original bytes both
//! ways, message by message, and what the recording keeps.
//!
//! **What is decoded.** Client to server: `Query` and `Parse` (statement
//! text, recorded before the message is forwarded, so nothing runs
//! unrecorded), `Bind` (parameters), `FunctionCall` (the function's OID and
//! arguments), `Execute` and `Sync` (to pair results
//! with statements), `CopyData`/`CopyDone`/`CopyFail` (byte counts). Server
//! to client: `CommandComplete`, `ErrorResponse`, `EmptyQueryResponse`,
//! `PortalSuspended`, `ReadyForQuery`, the COPY responses and `CopyData`
//! (counted), `NoticeResponse`. Everything else (rows above all) is streamed
//! through without being buffered or kept.
//!
//! **Bounded memory.** A message is streamed through in pieces, except the
//! ones recorded whole: `Query`, `Parse`, `Bind` and `FunctionCall` up to
//! [`MAX_RECORDED`] bytes (a larger one ends the session: it could not be
//! recorded), and the server's small status messages up to
//! [`MAX_STATUS`]. One over [`SMALL`] bytes first takes its share of a
//! gateway-wide budget ([`BUDGET_KIB`]), so many sessions at once cannot
//! multiply that bound; when no share frees up within 2 s the session ends
//! with an error saying so (it never waits longer: see `BUDGET_WAIT`). At most [`MAX_PENDING`] statements in flight are
//! timed; past that their results are recorded untimed (never waiting: a
//! failed statement in a pipelined batch makes the server skip everything
//! until the batch's Sync, which the client must be able to send). A slow
//! recorder slows the session (every recording call waits for room in its
//! queue).
//!
//! **Ending.** `max_session`, `idle_timeout` (no message either way, a
//! message still streaming counts as activity) and shutdown end the session
//! with a `FATAL` the client prints, written only between two whole
//! messages; a client that does not read gets [`super::GOODBYE`] and is
//! cut. When the client ends first (Terminate, or closing its socket), the
//! server side runs on until the server closes, so the results of the
//! statements it already sent are recorded (a closed socket is answered
//! with a Terminate to the server after what was sent).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
    BufWriter,
};
use tokio::sync::{mpsc, watch, Semaphore};

use super::proto::{self, BindParam, Header, Severity};
use crate::recording::query::{CopyDirection, DbEvent, Param};
use crate::recording::{Recording, RecordingError};

/// The largest `Query`, `Parse` or `Bind` message recorded (and so
/// allowed): 16 MiB, the most one recording event holds.
pub const MAX_RECORDED: usize = crate::recording::query::MAX_EVENT_BYTES;
/// The largest server status message read whole (`CommandComplete`,
/// `ErrorResponse`, `NoticeResponse`).
pub const MAX_STATUS: usize = 1 << 20;
/// Statements that may await their results before the client must wait.
pub const MAX_PENDING: usize = 65_536;
/// Socket buffers each way.
const BUF: usize = 64 << 10;

/// What ends a session early.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_session: Duration,
    /// Zero: no idle limit.
    pub idle_timeout: Duration,
    pub shutdown: watch::Receiver<bool>,
    /// Gateway-wide budget, in KiB, for recorded messages read whole: a
    /// message over [`SMALL`] bytes waits for its share, so many sessions
    /// sending 16 MiB statements at once cannot multiply the bound.
    pub budget: Arc<Semaphore>,
    /// The session's entry in the live registry: its byte counters, and
    /// the end an administrator, a lock or a reload may request.
    pub live: Option<Arc<crate::live::Live>>,
}

/// Recorded messages up to this size need no share of the budget.
pub const SMALL: usize = 64 << 10;
/// The gateway-wide budget for larger ones: 32 MiB, in KiB (two maximal
/// statements at once; each is held about three times over while it is
/// recorded: the message, the recorded copy, its encoding).
pub const BUDGET_KIB: usize = 32 << 10;
/// How long a large message waits for its share before the session ends.
pub(crate) const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// How a session went.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub reason: String,
    pub statements: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// Why the relay stopped.
#[derive(Debug)]
enum End {
    ClientClosed,
    ClientTerminated,
    ServerClosed,
    Protocol(String),
    TooLarge(usize),
    /// The gateway-wide budget for large messages stayed exhausted.
    Busy(usize),
    Recording(RecordingError),
    Io(String),
}

impl From<RecordingError> for End {
    fn from(e: RecordingError) -> End {
        End::Recording(e)
    }
}

impl From<proto::ProtoError> for End {
    fn from(e: proto::ProtoError) -> End {
        End::Protocol(e.to_string())
    }
}

/// A statement awaiting its result, or a Sync awaiting ReadyForQuery.
#[derive(Debug)]
enum Pending {
    Simple(Instant),
    Execute(Instant),
    Sync,
}

impl Track {
    /// Tracks a statement or Sync. Past [`MAX_PENDING`] entries in flight
    /// a new one is counted but not tracked (its result is recorded
    /// untimed): never waiting here is what keeps a pipelined batch whose
    /// statement failed (the server then answers nothing until the Sync)
    /// from deadlocking, and the cap keeps memory bounded.
    fn push(&mut self, p: Pending) {
        if !matches!(p, Pending::Sync) {
            self.statements += 1;
            crate::metrics::db_statement("postgres");
        }
        if self.pending.len() < MAX_PENDING {
            self.pending.push_back(p);
        }
    }
}

#[derive(Debug, Default)]
struct Track {
    pending: VecDeque<Pending>,
    statements: u64,
    copy_in: Option<u64>,
    copy_out: Option<u64>,
}

struct Shared {
    track: Mutex<Track>,
    /// Milliseconds since `start` of the last message either way.
    last: AtomicU64,
    start: Instant,
    up: AtomicU64,
    down: AtomicU64,
    live: Option<Arc<crate::live::Live>>,
}

impl Shared {
    fn track(&self) -> MutexGuard<'_, Track> {
        self.track.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// The client's write half, shared between the server-to-client relay and
/// the code that ends the session: `partial` says a message is half
/// written, so no FATAL may follow it.
struct ClientOut<W> {
    w: Lossy<BufWriter<W>>,
    partial: bool,
}

/// The client's writer. Once a write fails (the client went away), every
/// later write is swallowed: the server side goes on, so that the results
/// of statements already sent are still read and recorded.
struct Lossy<W> {
    inner: W,
    failed: bool,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Lossy<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.failed {
            return std::task::Poll::Ready(Ok(buf.len()));
        }
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, buf) {
            std::task::Poll::Ready(Err(_)) => {
                self.failed = true;
                std::task::Poll::Ready(Ok(buf.len()))
            }
            other => other,
        }
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.failed {
            return std::task::Poll::Ready(Ok(()));
        }
        match std::pin::Pin::new(&mut self.inner).poll_flush(cx) {
            std::task::Poll::Ready(Err(_)) => {
                self.failed = true;
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.failed {
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Out<W> = Arc<tokio::sync::Mutex<ClientOut<W>>>;

/// Relays until either side ends or a limit is reached.
pub async fn run<C, S>(
    client: C,
    server: S,
    rec: Recording,
    limits: Limits,
    mut cancels: mpsc::Receiver<bool>,
) -> Summary
where
    C: AsyncRead + AsyncWrite + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (cr, cw) = tokio::io::split(client);
    let (sr, sw) = tokio::io::split(server);
    let shared = Arc::new(Shared {
        track: Mutex::new(Track::default()),
        last: AtomicU64::new(0),
        start: Instant::now(),
        up: AtomicU64::new(0),
        down: AtomicU64::new(0),
        live: limits.live.clone(),
    });
    let out: Out<_> = Arc::new(tokio::sync::Mutex::new(ClientOut {
        w: Lossy {
            inner: BufWriter::with_capacity(BUF, cw),
            failed: false,
        },
        partial: false,
    }));
    // Boxed, so that dropping them below really ends both directions.
    let mut up = Box::pin(upward(
        BufReader::with_capacity(BUF, cr),
        BufWriter::with_capacity(BUF, sw),
        rec.clone(),
        shared.clone(),
        limits.budget.clone(),
    ));
    let mut down = Box::pin(downward(
        BufReader::with_capacity(BUF, sr),
        out.clone(),
        rec.clone(),
        shared.clone(),
    ));
    let deadline = tokio::time::Instant::now() + limits.max_session;
    let mut shutdown = limits.shutdown.clone();
    let mut cancels_open = true;
    // Once the client has ended (Terminate, or closed), the server side
    // runs on until the server closes: the results of statements already
    // sent are still recorded. Limits still apply.
    let mut client_done: Option<End> = None;
    let ending: Result<End, (&'static str, String, String)> = loop {
        let idle_at = if limits.idle_timeout.is_zero() {
            None
        } else {
            let last = Duration::from_millis(shared.last.load(Ordering::Relaxed));
            Some(tokio::time::Instant::from_std(
                shared.start + last + limits.idle_timeout,
            ))
        };
        tokio::select! {
            e = &mut up, if client_done.is_none() => match e {
                End::ClientClosed | End::ClientTerminated => client_done = Some(e),
                other => break Ok(other),
            },
            e = &mut down => break Ok(client_done.take().unwrap_or(e)),
            _ = tokio::time::sleep_until(deadline) => {
                break Err(("57P01",
                    format!("gatehouse: session ended: the role's max_session ({}) is reached",
                        humantime::format_duration(limits.max_session)),
                    "max_session reached".to_string()));
            }
            _ = async {
                match idle_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                let last = Duration::from_millis(shared.last.load(Ordering::Relaxed));
                if shared.start.elapsed() >= last + limits.idle_timeout {
                    break Err(("57P05",
                        format!("gatehouse: session ended: idle for {}",
                            humantime::format_duration(limits.idle_timeout)),
                        "idle_timeout reached".to_string()));
                }
            }
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    break Err(("57P01", "gatehouse is shutting down".to_string(),
                        "gateway shutdown".to_string()));
                }
            }
            reason = async {
                match &limits.live {
                    Some(l) => l.ended().await,
                    None => std::future::pending().await,
                }
            } => {
                break Err(("57P01", format!("gatehouse: {reason}"), reason));
            }
            c = cancels.recv(), if cancels_open => {
                match c {
                    Some(forwarded) => {
                        if let Err(e) = rec.db(DbEvent::Cancel { forwarded }).await {
                            break Ok(End::Recording(e));
                        }
                    }
                    None => cancels_open = false,
                }
            }
        }
    };
    let (fatal, reason) = match ending {
        Err((code, msg, reason)) => (Some((code, msg)), reason),
        Ok(End::ClientClosed) => (None, "client closed the connection".to_string()),
        Ok(End::ClientTerminated) => (None, "client ended the session".to_string()),
        Ok(End::ServerClosed) => (None, "server closed the connection".to_string()),
        Ok(End::Protocol(e)) => (None, format!("protocol error: {e}")),
        Ok(End::TooLarge(n)) => (
            Some((
                "54000",
                format!(
                    "gatehouse: a message of {n} bytes is larger than the {} MiB gatehouse can record",
                    MAX_RECORDED >> 20
                ),
            )),
            "message too large to record".to_string(),
        ),
        Ok(End::Busy(n)) => (
            Some((
                "53200",
                format!(
                    "gatehouse: too many large statements at once on the gateway; a message of {n} bytes was not run (retry)"
                ),
            )),
            "large-statement budget exhausted".to_string(),
        ),
        Ok(End::Recording(e)) => (
            Some(("58000", format!("gatehouse: {e}"))),
            "recording failed".to_string(),
        ),
        Ok(End::Io(e)) => (None, format!("i/o error: {e}")),
    };
    // Stop both directions (dropping them releases the client's writer),
    // then say why, between two whole messages, to a client that reads.
    drop(up);
    drop(down);
    let _ = tokio::time::timeout(super::GOODBYE, async {
        let mut o = out.lock().await;
        if let Some((code, msg)) = &fatal {
            if !o.partial {
                let _ =
                    o.w.write_all(&proto::error(Severity::Fatal, code, msg, None))
                        .await;
            }
        }
        let _ = o.w.flush().await;
        let _ = o.w.shutdown().await;
    })
    .await;
    let statements = shared.track().statements;
    Summary {
        reason,
        statements,
        bytes_up: shared.up.load(Ordering::Relaxed),
        bytes_down: shared.down.load(Ordering::Relaxed),
    }
}

async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Header>, End> {
    let mut h = [0u8; 5];
    match r.read_exact(&mut h).await {
        Ok(_) => Ok(Some(Header::parse(h)?)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(End::Io(e.to_string())),
    }
}

async fn read_body<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<Vec<u8>, End> {
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .await
        .map_err(|e| End::Io(e.to_string()))?;
    Ok(body)
}

/// Copies exactly `n` bytes from `r` to `w` without holding more than the
/// reader's buffer.
async fn pass<R, W>(r: &mut R, w: &mut W, mut n: usize, shared: &Shared) -> Result<(), End>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while n > 0 {
        let buf = r.fill_buf().await.map_err(|e| End::Io(e.to_string()))?;
        if buf.is_empty() {
            return Err(End::Io("connection closed mid-message".into()));
        }
        let k = buf.len().min(n);
        let piece = buf.get(..k).unwrap_or_default();
        w.write_all(piece)
            .await
            .map_err(|e| End::Io(e.to_string()))?;
        r.consume(k);
        n -= k;
        // A message still streaming is activity, not idleness.
        shared.touch();
    }
    Ok(())
}

fn param(p: BindParam) -> Param {
    match p {
        BindParam::Null => Param::Null,
        BindParam::Text(t) => Param::Text(t),
        BindParam::Binary(b) => Param::Binary(b),
    }
}

/// Client to server.
async fn upward<R, W>(
    mut r: BufReader<R>,
    mut w: BufWriter<W>,
    rec: Recording,
    shared: Arc<Shared>,
    budget: Arc<Semaphore>,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match upward_inner(&mut r, &mut w, &rec, &shared, &budget).await {
        Ok(e) | Err(e) => e,
    }
}

async fn upward_inner<R, W>(
    r: &mut BufReader<R>,
    w: &mut BufWriter<W>,
    rec: &Recording,
    shared: &Shared,
    budget: &Arc<Semaphore>,
) -> Result<End, End>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let Some(h) = read_header(r).await? else {
            // The client closed without Terminate: end the server session
            // the same way, after what the client already sent.
            let _ = w.write_all(&proto::terminate()).await;
            let _ = w.flush().await;
            return Ok(End::ClientClosed);
        };
        shared.touch();
        shared
            .up
            .fetch_add(h.body_len as u64 + 5, Ordering::Relaxed);
        if let Some(l) = &shared.live {
            l.add_up(h.body_len + 5);
        }
        match h.tag {
            b'Q' | b'P' | b'B' | b'F' => {
                if h.body_len > MAX_RECORDED {
                    return Ok(End::TooLarge(h.body_len));
                }
                // A large message waits for its share of the gateway-wide
                // budget, held until it is recorded and forwarded.
                // It waits at most BUDGET_WAIT: a session waiting here reads
                // nothing from its client, and through `ssh -L` its channel
                // shares one connection with others; a longer wait would let
                // one person's sessions stall each other.
                let _share = if h.body_len > SMALL {
                    let kib = u32::try_from(h.body_len.div_ceil(1024)).unwrap_or(u32::MAX);
                    match tokio::time::timeout(BUDGET_WAIT, budget.clone().acquire_many_owned(kib))
                        .await
                    {
                        Ok(Ok(p)) => Some(p),
                        _ => return Ok(End::Busy(h.body_len)),
                    }
                } else {
                    None
                };
                let body = read_body(r, h.body_len).await?;
                // Recorded before it is forwarded: nothing runs unrecorded.
                match h.tag {
                    b'Q' => {
                        let text = proto::parse_query(&body)?;
                        rec.db(DbEvent::Statement {
                            text: text.to_vec(),
                            parse: None,
                        })
                        .await?;
                        shared.track().push(Pending::Simple(Instant::now()));
                    }
                    b'P' => {
                        let (name, text) = proto::parse_parse(&body)?;
                        rec.db(DbEvent::Statement {
                            text: text.to_vec(),
                            parse: Some(name),
                        })
                        .await?;
                    }
                    b'F' => {
                        // The fast-path FunctionCall (large objects, some
                        // drivers): a function by OID with arguments. Recorded
                        // as a statement naming the OID and its arguments, and
                        // timed like a simple query.
                        let (oid, args) = proto::parse_function_call(&body)?;
                        rec.db(DbEvent::Statement {
                            text: format!("/* fast-path function call */ oid {oid}").into_bytes(),
                            parse: None,
                        })
                        .await?;
                        rec.db(DbEvent::Bind {
                            statement: format!("function {oid}"),
                            portal: String::new(),
                            params: args.into_iter().map(param).collect(),
                            types: Vec::new(),
                        })
                        .await?;
                        shared.track().push(Pending::Simple(Instant::now()));
                    }
                    _ => {
                        let (portal, statement, params) = proto::parse_bind(&body)?;
                        rec.db(DbEvent::Bind {
                            statement,
                            portal,
                            params: params.into_iter().map(param).collect(),
                            types: Vec::new(),
                        })
                        .await?;
                    }
                }
                write(w, &h.bytes()).await?;
                write(w, &body).await?;
            }
            b'E' | b'S' => {
                shared.track().push(if h.tag == b'E' {
                    Pending::Execute(Instant::now())
                } else {
                    Pending::Sync
                });
                write(w, &h.bytes()).await?;
                pass(r, w, h.body_len, shared).await?;
            }
            b'd' => {
                if let Some(n) = shared.track().copy_in.as_mut() {
                    *n += h.body_len as u64;
                }
                write(w, &h.bytes()).await?;
                pass(r, w, h.body_len, shared).await?;
            }
            b'c' | b'f' => {
                let copied = shared.track().copy_in.take();
                if let Some(bytes) = copied {
                    rec.db(DbEvent::Copy {
                        direction: CopyDirection::In,
                        bytes,
                    })
                    .await?;
                }
                write(w, &h.bytes()).await?;
                pass(r, w, h.body_len, shared).await?;
            }
            b'X' => {
                write(w, &h.bytes()).await?;
                pass(r, w, h.body_len, shared).await?;
                let _ = w.flush().await;
                return Ok(End::ClientTerminated);
            }
            _ => {
                write(w, &h.bytes()).await?;
                pass(r, w, h.body_len, shared).await?;
            }
        }
        // Batch what the client pipelined; flush when it has sent all.
        if r.buffer().is_empty() {
            w.flush().await.map_err(|e| End::Io(e.to_string()))?;
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(w: &mut W, b: &[u8]) -> Result<(), End> {
    w.write_all(b).await.map_err(|e| End::Io(e.to_string()))
}

/// What a server message finished.
fn complete(shared: &Shared) -> u64 {
    let mut t = shared.track();
    let micros = match t.pending.front_mut() {
        Some(Pending::Simple(start)) => {
            // A simple query may hold several statements: each result is
            // timed from the previous one.
            let m = start.elapsed().as_micros() as u64;
            *start = Instant::now();
            m
        }
        Some(Pending::Execute(start)) => {
            let m = start.elapsed().as_micros() as u64;
            t.pending.pop_front();
            m
        }
        _ => 0,
    };
    micros
}

/// ReadyForQuery: everything up to the Sync (or simple query) it answers.
fn ready(shared: &Shared) {
    let mut t = shared.track();
    while let Some(p) = t.pending.pop_front() {
        if matches!(p, Pending::Sync | Pending::Simple(_)) {
            break;
        }
    }
    t.copy_in = None;
    t.copy_out = None;
}

/// Server to client.
async fn downward<R, W>(
    mut r: BufReader<R>,
    out: Out<W>,
    rec: Recording,
    shared: Arc<Shared>,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match downward_inner(&mut r, &out, &rec, &shared).await {
        Ok(e) | Err(e) => e,
    }
}

async fn downward_inner<R, W>(
    r: &mut BufReader<R>,
    out: &Out<W>,
    rec: &Recording,
    shared: &Shared,
) -> Result<End, End>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let Some(h) = read_header(r).await? else {
            return Ok(End::ServerClosed);
        };
        shared.touch();
        shared
            .down
            .fetch_add(h.body_len as u64 + 5, Ordering::Relaxed);
        if let Some(l) = &shared.live {
            l.add_down(h.body_len + 5);
        }
        let status = matches!(h.tag, b'C' | b'E' | b'N');
        let body = if status {
            if h.body_len > MAX_STATUS {
                return Ok(End::Protocol(format!(
                    "server status message of {} bytes",
                    h.body_len
                )));
            }
            Some(read_body(r, h.body_len).await?)
        } else {
            None
        };
        // Record first, then forward.
        match (h.tag, body.as_deref()) {
            (b'C', Some(b)) => {
                let (tag, rows) = proto::parse_command_complete(b)?;
                let micros = complete(shared);
                rec.db(DbEvent::Result {
                    tag: Some(tag),
                    rows,
                    sqlstate: None,
                    message: None,
                    micros,
                })
                .await?;
            }
            (b'E', Some(b)) => {
                let f = proto::parse_error(b)?;
                crate::metrics::db_error("postgres");
                let micros = complete(shared);
                rec.db(DbEvent::Result {
                    tag: None,
                    rows: None,
                    sqlstate: Some(f.code),
                    message: Some(f.message),
                    micros,
                })
                .await?;
            }
            (b'N', Some(b)) => {
                let f = proto::parse_error(b)?;
                rec.db(DbEvent::Notice {
                    severity: f.severity,
                    message: f.message,
                })
                .await?;
            }
            (b'I', _) | (b's', _) | (b'V', _) => {
                let micros = complete(shared);
                let tag = match h.tag {
                    b'I' => "EMPTY",
                    b's' => "SUSPENDED",
                    _ => "FUNCTION CALL",
                };
                rec.db(DbEvent::Result {
                    tag: Some(tag.to_string()),
                    rows: None,
                    sqlstate: None,
                    message: None,
                    micros,
                })
                .await?;
            }
            (b'Z', _) => ready(shared),
            (b'G', _) => shared.track().copy_in = Some(0),
            (b'H', _) => shared.track().copy_out = Some(0),
            (b'd', _) => {
                if let Some(n) = shared.track().copy_out.as_mut() {
                    *n += h.body_len as u64;
                }
            }
            (b'c', _) => {
                let copied = shared.track().copy_out.take();
                if let Some(bytes) = copied {
                    rec.db(DbEvent::Copy {
                        direction: CopyDirection::Out,
                        bytes,
                    })
                    .await?;
                }
            }
            _ => {}
        }
        let mut o = out.lock().await;
        o.partial = true;
        write(&mut o.w, &h.bytes()).await?;
        match &body {
            Some(b) => write(&mut o.w, b).await?,
            None => pass(r, &mut o.w, h.body_len, shared).await?,
        }
        o.partial = false;
        if r.buffer().is_empty() {
            o.w.flush().await.map_err(|e| End::Io(e.to_string()))?;
        }
    }
}
