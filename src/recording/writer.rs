//! The per-recording writer task and the [`Recording`] handle the relay
//! feeds. Data goes through a bounded queue ([`QUEUE_CAP`] chunks of at
//! most [`CHUNK`] bytes; database events, whose size the client chooses,
//! also hold a share of a [`DB_BUDGET`] of bytes while they wait, so the
//! queue never holds more than that, or one larger event, of them); the
//! task encodes events into a plaintext buffer
//! and hands it to the blocking pool to be encrypted and written, sealing a
//! segment every [`SEGMENT_INTERVAL`] of activity or [`SEGMENT_MAX`] bytes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::format::{self, code, EndInfo, Kind, Meta};
use super::query::{self, DbEvent};
use super::segment::{self, SegmentStore};
use super::sftp::{Direction, SftpOp, SftpTracker};
use super::{RecorderInner, RecordingError, RecordingMeta};
use crate::audit;

/// Largest piece of data in one queued message.
pub const CHUNK: usize = 32 * 1024;
/// Messages the queue holds: at most `QUEUE_CAP * CHUNK` bytes wait.
pub const QUEUE_CAP: usize = 32;
/// Plaintext buffered before it is handed to the blocking pool.
const FLUSH_AT: usize = 512 * 1024;
/// A segment is sealed when its plaintext reaches this.
pub const SEGMENT_MAX: u64 = 4 * 1024 * 1024;
/// ... or when it has been open this long.
pub const SEGMENT_INTERVAL: Duration = Duration::from_secs(5);
/// Bytes of database events (their [`DbEvent::payload_len`]) waiting in
/// the queue at most; an event larger than this waits until it is alone.
pub const DB_BUDGET: usize = QUEUE_CAP * CHUNK;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Output = 0,
    Stderr = 1,
    Input = 2,
}

enum Cmd {
    Data {
        stream: Stream,
        t: Duration,
        data: Bytes,
    },
    Resize {
        t: Duration,
        cols: u32,
        rows: u32,
    },
    Db {
        t: Duration,
        ev: Box<DbEvent>,
        bytes: u64,
        /// Share of the byte budget held, given back when dequeued.
        permits: u32,
    },
    Finish {
        t: Duration,
        exit_status: Option<u32>,
        reason: String,
        bytes_up: u64,
        bytes_down: u64,
        reply: oneshot::Sender<Result<(), RecordingError>>,
    },
}

/// State shared by the handles and the writer.
struct Shared {
    error: Mutex<Option<RecordingError>>,
    finished: AtomicBool,
    /// Bytes in (or about to enter) the queue, and the most there ever were.
    queued: AtomicU64,
    high_water: AtomicU64,
    /// [`DB_BUDGET`] permits of one byte each; closed when the writer ends
    /// (so that nobody waits for ever on a writer that is gone).
    db_budget: tokio::sync::Semaphore,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            error: Mutex::new(None),
            finished: AtomicBool::new(false),
            queued: AtomicU64::new(0),
            high_water: AtomicU64::new(0),
            db_budget: tokio::sync::Semaphore::new(DB_BUDGET),
        }
    }
}

impl Drop for Shared {
    /// Bytes still queued when the last handle and the writer are gone
    /// (a writer that ended with messages waiting) leave the gauge too.
    fn drop(&mut self) {
        let left = self.queued.load(Ordering::SeqCst);
        crate::metrics::recorder_queue(-i64::try_from(left).unwrap_or(i64::MAX));
    }
}

impl Shared {
    fn error(&self) -> Option<RecordingError> {
        self.error.lock().ok().and_then(|e| e.clone())
    }
    fn set_error(&self, e: RecordingError) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(e);
        }
    }
    fn closed_error(&self) -> RecordingError {
        self.error().unwrap_or(RecordingError::Closed)
    }
}

struct Handle {
    id: String,
    tx: mpsc::Sender<Cmd>,
    started: Instant,
    record_input: bool,
    sftp: bool,
    shared: Arc<Shared>,
}

/// One recording being written. Cheap to clone; every method applies
/// backpressure: it waits while the writer's bounded queue is full, so a
/// slow disk slows the session, memory never grows, nothing is dropped.
/// An `Err` means the recording failed (or already ended): the caller must
/// end the session, telling the user the error's `Display`.
///
/// When every clone is dropped without [`Recording::finish`], the writer
/// still seals what it has and records the end reason `aborted`.
#[derive(Clone)]
pub struct Recording {
    inner: Arc<Handle>,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("id", &self.inner.id)
            .finish()
    }
}

impl Recording {
    /// The recording id (the directory name under `[recordings] dir`).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    fn now(&self) -> Duration {
        self.inner.started.elapsed()
    }

    async fn send(&self, cmd: Cmd, bytes: u64) -> Result<(), RecordingError> {
        let s = &self.inner.shared;
        if let Some(e) = s.error() {
            return Err(e);
        }
        let now = s
            .queued
            .fetch_add(bytes, Ordering::SeqCst)
            .saturating_add(bytes);
        crate::metrics::recorder_queue(i64::try_from(bytes).unwrap_or(i64::MAX));
        s.high_water.fetch_max(now, Ordering::SeqCst);
        match self.inner.tx.send(cmd).await {
            Ok(()) => Ok(()),
            Err(_) => {
                s.queued.fetch_sub(bytes, Ordering::SeqCst);
                crate::metrics::recorder_queue(-i64::try_from(bytes).unwrap_or(i64::MAX));
                Err(s.closed_error())
            }
        }
    }

    /// Queues `data` in pieces of at most [`CHUNK`] bytes. The pieces share
    /// the caller's buffer (no copy): the relay hands over the `Bytes` it
    /// forwards anyway.
    async fn data(&self, stream: Stream, data: Bytes) -> Result<(), RecordingError> {
        let mut off = 0;
        while off < data.len() {
            let end = data.len().min(off + CHUNK);
            let piece = data.slice(off..end);
            off = end;
            let n = piece.len() as u64;
            let cmd = Cmd::Data {
                stream,
                t: self.now(),
                data: piece,
            };
            self.send(cmd, n).await?;
        }
        Ok(())
    }

    /// Target -> user: stdout / terminal output.
    pub async fn output(&self, data: Bytes) -> Result<(), RecordingError> {
        self.data(Stream::Output, data).await
    }

    /// Target -> user: extended data (stderr).
    pub async fn stderr(&self, data: Bytes) -> Result<(), RecordingError> {
        self.data(Stream::Stderr, data).await
    }

    /// User -> target. Stored when [`RecordingMeta::stores_input`] says so
    /// (the role's `record_input`, the kind of channel and its PTY); on an
    /// sftp channel always parsed into operations (contents never stored).
    /// Still returns Err when the recording has failed, so the caller ends
    /// the session even when input is not stored.
    pub async fn input(&self, data: Bytes) -> Result<(), RecordingError> {
        if self.inner.record_input || self.inner.sftp {
            self.data(Stream::Input, data).await
        } else {
            match self.inner.shared.error() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
    }

    /// One event of a database session (statement, bind parameters,
    /// result, COPY, cancel, notice), stored exactly (see
    /// [`super::query`]). Applies the same backpressure as
    /// [`Recording::output`]: it waits while the writer's queue is full,
    /// and while the database events already waiting hold [`DB_BUDGET`]
    /// bytes, so a client that pipelines thousands of statements is slowed
    /// to the disk's pace and memory stays bounded. Call it *before*
    /// forwarding what the event describes: on `Err` the session must end
    /// (the recording failed or has ended), except for
    /// [`RecordingError::TooLarge`] (one event over
    /// [`query::MAX_EVENT_BYTES`]), where only that statement must not run.
    pub async fn db(&self, ev: DbEvent) -> Result<(), RecordingError> {
        let s = &self.inner.shared;
        if let Some(e) = s.error() {
            return Err(e);
        }
        let len = ev.payload_len();
        if len > query::MAX_EVENT_BYTES {
            // Size only: never the statement.
            return Err(RecordingError::TooLarge {
                detail: format!(
                    "a database event of {len} bytes is over the {} bytes one recorded event may hold",
                    query::MAX_EVENT_BYTES
                ),
            });
        }
        let permits = u32::try_from(len.min(DB_BUDGET)).unwrap_or(u32::MAX);
        match s.db_budget.acquire_many(permits).await {
            // Given back by the writer when it takes the event.
            Ok(p) => p.forget(),
            Err(_) => return Err(s.closed_error()),
        }
        let cmd = Cmd::Db {
            t: self.now(),
            ev: Box::new(ev),
            bytes: len as u64,
            permits,
        };
        let r = self.send(cmd, len as u64).await;
        if r.is_err() {
            s.db_budget.add_permits(permits as usize);
        }
        r
    }

    /// The user's terminal was resized.
    pub async fn resize(&self, cols: u32, rows: u32) -> Result<(), RecordingError> {
        let cmd = Cmd::Resize {
            t: self.now(),
            cols,
            rows,
        };
        self.send(cmd, 0).await
    }

    /// Ends the recording: seals the last segment and writes the final
    /// metadata (end time, reason, bytes each way, exit status). Calling it
    /// again is a no-op; data sent after it is refused with `Closed`.
    pub async fn finish(
        &self,
        exit_status: Option<u32>,
        reason: &str,
        bytes_up: u64,
        bytes_down: u64,
    ) -> Result<(), RecordingError> {
        let s = &self.inner.shared;
        if s.finished.load(Ordering::SeqCst) {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Finish {
            t: self.now(),
            exit_status,
            reason: reason.to_string(),
            bytes_up,
            bytes_down,
            reply,
        };
        if self.inner.tx.send(cmd).await.is_err() {
            return if s.finished.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(s.closed_error())
            };
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(s.closed_error()),
        }
    }

    /// Most bytes ever waiting in this recording's queue (tests, metrics).
    pub fn queue_high_water(&self) -> u64 {
        self.inner.shared.high_water.load(Ordering::SeqCst)
    }
}

/// Starts the writer task for a recording whose segment 0 is sealed.
pub(super) fn spawn(
    recorder: Arc<RecorderInner>,
    store: SegmentStore,
    disk_meta: Meta,
    meta: &RecordingMeta,
) -> Recording {
    let (tx, rx) = mpsc::channel(QUEUE_CAP);
    let shared = Arc::new(Shared::default());
    let (cols, rows) = match &meta.kind {
        // A shell without a pty-request has no size: asciicast needs one.
        super::RecordingKind::Shell { cols, rows, .. } if *cols > 0 && *rows > 0 => (*cols, *rows),
        _ => (80, 24),
    };
    let started = Instant::now();
    let sftp = disk_meta.kind == Kind::Sftp;
    let w = Writer {
        store: Some(store),
        job: None,
        open_bytes: 0,
        spare: Vec::new(),
        pending: Vec::with_capacity(FLUSH_AT + CHUNK * 2),
        seg_started: None,
        carry: Default::default(),
        sftp: sftp.then(SftpTracker::new),
        cols,
        rows,
        last_t: Duration::ZERO,
        started,
        throttle: recorder.throttle(),
        interval: recorder.segment_interval(),
        recorder,
        shared: shared.clone(),
        meta: disk_meta,
        done: false,
    };
    let handle = Handle {
        id: w.meta.id.clone(),
        tx,
        started,
        record_input: meta.stores_input(),
        sftp,
        shared,
    };
    tokio::spawn(w.run(rx));
    Recording {
        inner: Arc::new(handle),
    }
}

/// What a blocking write hands back: the store, the emptied buffer (for
/// reuse) and the outcome.
type JobOut = (
    SegmentStore,
    Vec<u8>,
    std::io::Result<Option<segment::Sealed>>,
);
type Job = tokio::task::JoinHandle<JobOut>;

/// What woke the writer.
enum Event {
    Written(Box<Result<JobOut, tokio::task::JoinError>>),
    Deadline,
    Cmd(Option<Cmd>),
}

struct Writer {
    /// None while a blocking write holds it (see `job`).
    store: Option<SegmentStore>,
    /// The blocking write in flight, if any. The writer encodes the next
    /// events while the previous buffer is encrypted, hashed and written
    /// (two stages in parallel); at most one write is in flight, so at
    /// most two buffers of about [`FLUSH_AT`] exist per recording.
    job: Option<Job>,
    /// Plaintext handed to the open segment so far (including in flight).
    open_bytes: u64,
    /// An emptied buffer to encode into while the other one is written.
    spare: Vec<u8>,
    pending: Vec<u8>,
    /// When the current segment got its first event since the last seal.
    seg_started: Option<Instant>,
    /// Incomplete UTF-8 sequences at the end of the last chunk, per stream.
    carry: [Vec<u8>; 3],
    sftp: Option<SftpTracker>,
    cols: u32,
    rows: u32,
    last_t: Duration,
    started: Instant,
    throttle: Option<u64>,
    interval: Duration,
    recorder: Arc<RecorderInner>,
    shared: Arc<Shared>,
    meta: Meta,
    done: bool,
}

/// Pushes `[t,"code",` — the start every event line shares.
fn push_head(buf: &mut Vec<u8>, t: Duration, code: &str) {
    buf.push(b'[');
    buf.extend_from_slice(format::fmt_time(t).as_bytes());
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(code.as_bytes());
    buf.extend_from_slice(b"\",");
}

/// Pushes `[t, "code", data]\n`.
fn push_event(buf: &mut Vec<u8>, t: Duration, code: &str, data: &impl serde::Serialize) {
    push_head(buf, t, code);
    if serde_json::to_writer(&mut *buf, data).is_err() {
        buf.extend_from_slice(b"null");
    }
    buf.extend_from_slice(b"]\n");
}

/// Text that JSON can carry without bloating: few control characters
/// besides newline, carriage return, tab, escape, backspace and bell.
pub(super) fn tidy(s: &str) -> bool {
    let limit = s.len() / 32;
    let mut odd = 0usize;
    for b in s.bytes() {
        if b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t' | 0x1b | 0x08 | 0x07) {
            odd += 1;
            if odd > limit {
                return false;
            }
        }
    }
    true
}

/// Pushes `[t, "code", N]\n`, then the N bytes as they are, then `\n`:
/// binary data is stored raw inside the sealed segment (format 2). Format 1
/// stored it as base64 text, which cost a third more bytes to encrypt and
/// hash, and the encoding itself (see BENCHMARKS.md).
fn push_raw_event(buf: &mut Vec<u8>, t: Duration, code: &str, bytes: &[u8]) {
    push_head(buf, t, code);
    buf.extend_from_slice(bytes.len().to_string().as_bytes());
    buf.extend_from_slice(b"]\n");
    buf.extend_from_slice(bytes);
    buf.push(b'\n');
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        loop {
            let deadline = self.seg_started.map(|s| s + self.interval);
            let has_job = self.job.is_some();
            let event = {
                let job = self.job.as_mut();
                tokio::select! {
                    biased;
                    // A finished write is collected at once, so that a
                    // sealed segment's audit event is not held back until
                    // the next activity.
                    done = async {
                        match job {
                            Some(j) => j.await,
                            None => std::future::pending().await,
                        }
                    }, if has_job => Event::Written(Box::new(done)),
                    _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => Event::Deadline,
                    c = rx.recv() => Event::Cmd(c),
                }
            };
            let cmd = match event {
                Event::Written(done) => {
                    self.job = None;
                    if let Err(e) = self.written(*done) {
                        rx.close();
                        self.fail(e).await;
                        return;
                    }
                    continue;
                }
                Event::Deadline => {
                    if let Err(e) = self.flush(true).await {
                        // Refuse further data at once, with the reason.
                        self.shared.set_error(e.clone());
                        rx.close();
                        self.fail(e).await;
                        return;
                    }
                    continue;
                }
                Event::Cmd(c) => c,
            };
            match cmd {
                None => {
                    let t = self.started.elapsed();
                    let _ = self.close(t, None, "aborted", 0, 0).await;
                    return;
                }
                Some(Cmd::Finish {
                    t,
                    exit_status,
                    reason,
                    bytes_up,
                    bytes_down,
                    reply,
                }) => {
                    rx.close();
                    let r = self
                        .close(t, exit_status, &reason, bytes_up, bytes_down)
                        .await;
                    let _ = reply.send(r);
                    return;
                }
                Some(cmd) => {
                    if let Err(e) = self.handle(cmd).await {
                        self.shared.set_error(e.clone());
                        rx.close();
                        self.fail(e).await;
                        return;
                    }
                }
            }
        }
    }

    fn time(&mut self, t: Duration) -> Duration {
        self.last_t = self.last_t.max(t);
        self.last_t
    }

    fn mark_activity(&mut self) {
        if self.seg_started.is_none() {
            self.seg_started = Some(Instant::now());
        }
    }

    async fn handle(&mut self, cmd: Cmd) -> Result<(), RecordingError> {
        match cmd {
            Cmd::Data { stream, t, data } => {
                self.shared
                    .queued
                    .fetch_sub(data.len() as u64, Ordering::SeqCst);
                crate::metrics::recorder_queue(-i64::try_from(data.len()).unwrap_or(i64::MAX));
                let t = self.time(t);
                self.mark_activity();
                self.encode_data(stream, t, &data)?;
            }
            Cmd::Db {
                t,
                ev,
                bytes,
                permits,
            } => {
                self.shared.queued.fetch_sub(bytes, Ordering::SeqCst);
                crate::metrics::recorder_queue(-i64::try_from(bytes).unwrap_or(i64::MAX));
                self.shared.db_budget.add_permits(permits as usize);
                let t = self.time(t);
                self.mark_activity();
                push_head(&mut self.pending, t, ev.code());
                ev.write_object(&mut self.pending);
                self.pending.extend_from_slice(b"]\n");
            }
            Cmd::Resize { t, cols, rows } => {
                let t = self.time(t);
                self.mark_activity();
                self.cols = cols.max(1);
                self.rows = rows.max(1);
                push_event(
                    &mut self.pending,
                    t,
                    code::RESIZE,
                    &format!("{cols}x{rows}"),
                );
            }
            Cmd::Finish { .. } => {}
        }
        let open = self.open_bytes;
        if open.saturating_add(self.pending.len() as u64) >= SEGMENT_MAX
            || self
                .seg_started
                .is_some_and(|s| s.elapsed() >= self.interval)
        {
            self.flush(true).await?;
        } else if self.pending.len() >= FLUSH_AT {
            self.flush(false).await?;
        }
        Ok(())
    }

    fn encode_data(
        &mut self,
        stream: Stream,
        t: Duration,
        data: &[u8],
    ) -> Result<(), RecordingError> {
        if let Some(tracker) = self.sftp.as_mut() {
            let dir = match stream {
                Stream::Input => Some(Direction::Request),
                Stream::Output => Some(Direction::Reply),
                Stream::Stderr => None,
            };
            if let Some(dir) = dir {
                return match tracker.feed(dir, data) {
                    Ok(ops) => {
                        self.push_ops(t, &ops);
                        Ok(())
                    }
                    Err((ops, why)) => {
                        self.push_ops(t, &ops);
                        Err(RecordingError::Failed { detail: why })
                    }
                };
            }
        }
        self.encode_bytes(stream, t, data);
        Ok(())
    }

    fn push_ops(&mut self, t: Duration, ops: &[SftpOp]) {
        for op in ops {
            push_event(&mut self.pending, t, code::SFTP, op);
        }
    }

    /// Text when the bytes are tidy UTF-8 (an incomplete sequence at the end
    /// waits for the next chunk), raw bytes otherwise: lossless either way.
    fn encode_bytes(&mut self, stream: Stream, t: Duration, data: &[u8]) {
        let (text_code, bin_code) = match stream {
            Stream::Output => (code::OUTPUT, code::OUTPUT_BIN),
            Stream::Stderr => (code::STDERR, code::STDERR_BIN),
            Stream::Input => (code::INPUT, code::INPUT_BIN),
        };
        let idx = stream as usize;
        let carried = self
            .carry
            .get_mut(idx)
            .map(std::mem::take)
            .unwrap_or_default();
        // Only copy when a partial character is carried over.
        let joined: std::borrow::Cow<'_, [u8]> = if carried.is_empty() {
            std::borrow::Cow::Borrowed(data)
        } else {
            let mut j = carried;
            j.extend_from_slice(data);
            std::borrow::Cow::Owned(j)
        };
        let (whole, tail, text): (&[u8], &[u8], bool) = match std::str::from_utf8(&joined) {
            Ok(_) => (&joined, &[], true),
            Err(e) if e.error_len().is_none() => {
                let (a, b) = joined
                    .split_at_checked(e.valid_up_to())
                    .unwrap_or((&joined, &[]));
                (a, b, true)
            }
            Err(_) => (&joined, &[], false),
        };
        if !whole.is_empty() {
            match std::str::from_utf8(whole) {
                Ok(s) if text && tidy(s) => push_event(&mut self.pending, t, text_code, &s),
                _ => push_raw_event(&mut self.pending, t, bin_code, whole),
            }
        }
        if let Some(c) = self.carry.get_mut(idx) {
            c.extend_from_slice(tail);
        }
    }

    /// Flushes carried partial characters as raw bytes (at the end).
    fn flush_carry(&mut self, t: Duration) {
        for (idx, bin_code) in [code::OUTPUT_BIN, code::STDERR_BIN, code::INPUT_BIN]
            .iter()
            .enumerate()
        {
            let Some(c) = self.carry.get_mut(idx) else {
                continue;
            };
            if !c.is_empty() {
                let bytes = std::mem::take(c);
                push_raw_event(&mut self.pending, t, bin_code, &bytes);
            }
        }
    }

    /// Hands the pending plaintext to the blocking pool to be encrypted and
    /// written (and the segment sealed when `seal`), after collecting the
    /// previous write. Returns without waiting for this one: its outcome is
    /// collected by the next `flush` or by [`Writer::collect`], so a write
    /// error ends the session at most one buffer later. Then throttles when
    /// testing asked for it.
    async fn flush(&mut self, seal: bool) -> Result<(), RecordingError> {
        self.collect().await?;
        let Some(mut store) = self.store.take() else {
            return Err(RecordingError::Failed {
                detail: "segment store lost".into(),
            });
        };
        let buf = std::mem::replace(&mut self.pending, std::mem::take(&mut self.spare));
        let n = buf.len();
        self.open_bytes = self.open_bytes.saturating_add(n as u64);
        if seal {
            // Also when there is nothing to seal (sftp data that produced no
            // operation yet): otherwise the deadline stays in the past and
            // `run` would flush in a loop instead of reading its queue.
            self.seg_started = None;
            self.open_bytes = 0;
        }
        let (cols, rows) = (self.cols, self.rows);
        self.job = Some(tokio::task::spawn_blocking(move || {
            let mut run = || -> std::io::Result<Option<segment::Sealed>> {
                if !buf.is_empty() {
                    store.write(&buf, cols, rows)?;
                }
                if seal {
                    store.seal()
                } else {
                    Ok(None)
                }
            };
            let result = run();
            let mut buf = buf;
            buf.clear();
            (store, buf, result)
        }));
        if let Some(bps) = self.throttle {
            let secs = n as f64 / bps as f64;
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        }
        Ok(())
    }

    /// Waits for the write in flight (if any), takes the store back and
    /// reports a sealed segment or the write's error.
    async fn collect(&mut self) -> Result<(), RecordingError> {
        let Some(job) = self.job.take() else {
            return Ok(());
        };
        let done = job.await;
        self.written(done)
    }

    /// Takes back what a finished write returned; see [`Writer::collect`].
    fn written(
        &mut self,
        done: Result<JobOut, tokio::task::JoinError>,
    ) -> Result<(), RecordingError> {
        let (store, buf, result) = match done {
            Ok(x) => x,
            Err(e) => {
                return Err(RecordingError::Failed {
                    detail: format!("recording write task failed: {e}"),
                })
            }
        };
        self.store = Some(store);
        self.spare = buf;
        let sealed = result.map_err(|e| RecordingError::Failed {
            detail: format!(
                "writing {}: {e}",
                self.store
                    .as_ref()
                    .map(|s| s.dir().display().to_string())
                    .unwrap_or_default()
            ),
        })?;
        if let Some(s) = sealed {
            audit::recording_segment(
                &self.meta.id,
                &self.meta.session_id,
                s.seq,
                &s.sha256,
                &s.chain,
            );
        }
        Ok(())
    }

    fn end_events(
        &mut self,
        t: Duration,
        exit_status: Option<u32>,
        reason: &str,
        up: u64,
        down: u64,
    ) {
        let t = self.time(t);
        self.flush_carry(t);
        if let Some(mut tracker) = self.sftp.take() {
            let ops = tracker.finish();
            self.push_ops(t, &ops);
        }
        if let Some(s) = exit_status {
            push_event(&mut self.pending, t, code::EXIT, &s.to_string());
        }
        let end = serde_json::json!({
            "reason": reason,
            "exit_status": exit_status,
            "bytes_up": up,
            "bytes_down": down,
        });
        push_event(&mut self.pending, t, code::END, &end);
    }

    fn end_info(&self, exit_status: Option<u32>, reason: &str, up: u64, down: u64) -> EndInfo {
        let now = format::unix_ms(SystemTime::now());
        let (segments, final_chain) = self
            .store
            .as_ref()
            .map(|s| (s.sealed(), s.last_chain()))
            .unwrap_or_default();
        EndInfo {
            ended: format::rfc3339_ms(now),
            ended_unix_ms: now,
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            reason: reason.to_string(),
            exit_status,
            bytes_up: up,
            bytes_down: down,
            segments,
            final_chain,
        }
    }

    /// Writes `meta.json` with the end filled in (blocking; small).
    async fn write_end(&mut self, end: EndInfo) -> std::io::Result<()> {
        let mut meta = self.meta.clone();
        meta.end = Some(end);
        let dir = self
            .store
            .as_ref()
            .map(|s| s.dir().to_path_buf())
            .unwrap_or_default();
        let json = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
        tokio::task::spawn_blocking(move || segment::write_atomic(&dir, format::META_FILE, &json))
            .await
            .map_err(std::io::Error::other)?
    }

    async fn close(
        &mut self,
        t: Duration,
        exit_status: Option<u32>,
        reason: &str,
        up: u64,
        down: u64,
    ) -> Result<(), RecordingError> {
        self.end_events(t, exit_status, reason, up, down);
        let flushed = match self.flush(true).await {
            Ok(()) => self.collect().await,
            Err(e) => Err(e),
        };
        if let Err(e) = flushed {
            self.fail(e.clone()).await;
            return Err(e);
        }
        let end = self.end_info(exit_status, reason, up, down);
        let (segments, chain) = (end.segments, end.final_chain.clone());
        if let Err(e) = self.write_end(end).await {
            let e = RecordingError::Failed {
                detail: format!("cannot write the final metadata: {e}"),
            };
            self.fail(e.clone()).await;
            return Err(e);
        }
        self.done = true;
        self.shared.finished.store(true, Ordering::SeqCst);
        audit::recording_finished(
            &self.meta.id,
            &self.meta.session_id,
            segments,
            &chain,
            reason,
        );
        self.recorder.finished(&self.meta.id);
        Ok(())
    }

    /// Writing failed: keep what is sealed, drop the open segment, record
    /// why (best effort: the disk may be full), and refuse further data.
    async fn fail(&mut self, e: RecordingError) {
        self.shared.set_error(e.clone());
        self.done = true;
        // Take the store back from a write in flight; its own outcome no
        // longer matters (this recording has failed already).
        let _ = self.collect().await;
        let detail = e.detail();
        tracing::warn!(recording_id = %self.meta.id, error = %detail, "recording failed; ending the session");
        audit::recording_failed(
            &self.meta.id,
            &self.meta.session_id,
            &self.meta.user,
            &self.meta.target,
            &detail,
        );
        if let Some(store) = self.store.as_mut() {
            store.discard_open();
        }
        let end = self.end_info(None, &format!("recording failed: {detail}"), 0, 0);
        let _ = self.write_end(end).await;
        self.recorder.finished(&self.meta.id);
    }
}

impl Drop for Writer {
    /// The task was dropped without closing (the runtime is shutting
    /// down): seal what there is, synchronously, as `aborted`. (If a write
    /// was in flight at that moment, the store is inside it and the open
    /// segment is lost, as on `kill -9`; the daemon drains recordings
    /// before it stops, so this is the last resort.)
    fn drop(&mut self) {
        // Wake anyone waiting for room for a database event: there is no
        // writer any more.
        self.shared.db_budget.close();
        if self.done {
            return;
        }
        let t = self.started.elapsed();
        self.end_events(t, None, "aborted (gateway stopped)", 0, 0);
        let end = self.end_info(None, "aborted (gateway stopped)", 0, 0);
        if let Some(store) = self.store.as_mut() {
            let (cols, rows) = (self.cols, self.rows);
            if let Ok(sealed) = store
                .write(&self.pending, cols, rows)
                .and_then(|_| store.seal())
            {
                if let Some(s) = sealed {
                    audit::recording_segment(
                        &self.meta.id,
                        &self.meta.session_id,
                        s.seq,
                        &s.sha256,
                        &s.chain,
                    );
                }
                let mut meta = self.meta.clone();
                let mut end = end;
                end.segments = store.sealed();
                end.final_chain = store.last_chain();
                meta.end = Some(end);
                if let Ok(json) = serde_json::to_vec_pretty(&meta) {
                    let _ = segment::write_atomic(store.dir(), format::META_FILE, &json);
                }
            }
        }
        self.recorder.finished(&self.meta.id);
    }
}
